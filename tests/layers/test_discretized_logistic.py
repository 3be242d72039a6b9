"""Discretised logistic likelihoods against float64 CDF differences; samplers against the likelihoods."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.layers.discretized_logistic import (
    default_min_log_scale,
    discretized_logistic_log_prob,
    discretized_mix_logistic_log_prob,
    from_bin_centres,
    mix_logistic_sample,
    pixelcnn_pp_log_prob,
    pixelcnn_pp_mean,
    pixelcnn_pp_num_params,
    pixelcnn_pp_sample,
    to_bin_centres,
)

# Compilation dominates this file's time: inputs are NumPy arrays (no eager jnp ops), and samplers
# get RBG keys (on CPU, threefry's compile time grows with the number of values drawn).
log_prob_fn = jax.jit(discretized_logistic_log_prob, static_argnames=("num_bins",))
mix_log_prob_fn = jax.jit(discretized_mix_logistic_log_prob, static_argnames=("num_bins",))
mix_sample_fn = jax.jit(mix_logistic_sample, static_argnames=("num_bins",))
pixel_log_prob_fn = jax.jit(pixelcnn_pp_log_prob, static_argnames=("num_mixtures", "num_bins"))
pixel_sample_fn = jax.jit(pixelcnn_pp_sample, static_argnames=("num_mixtures", "num_bins"))
rng_key = functools.partial(jax.random.key, impl="rbg")


def centres(k, num_bins):
    """NumPy float32 bin centres: (2k - (K - 1)) times float32(1 / (K - 1)), the ends exactly +-1."""
    n = 2 * np.asarray(k, np.int64) - (num_bins - 1)
    x = n.astype(np.float32) * np.float32(1 / (num_bins - 1))
    return np.where(np.abs(n) == num_bins - 1, np.sign(n), x).astype(np.float32)


def indices(x, num_bins):
    return np.clip(np.rint((np.asarray(x, np.float64) + 1) * (num_bins - 1) / 2), 0, num_bins - 1)


def on_grid(samples, num_bins):
    return np.array_equal(np.asarray(samples), centres(indices(samples, num_bins), num_bins))


def sigmoid(z):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def reference_log_prob(k, mean, log_scale, num_bins):
    """float64 log of the CDF difference over [x - w, x + w], edge bins open, x the k-th centre."""
    k, mean, log_scale = np.broadcast_arrays(k, mean, log_scale)
    s = np.exp(np.maximum(log_scale, default_min_log_scale(num_bins)))
    x, w = -1.0 + 2.0 * k / (num_bins - 1), 1.0 / (num_bins - 1)
    hi = np.where(k == num_bins - 1, np.inf, (x + w - mean) / s)
    lo = np.where(k == 0, -np.inf, (x - w - mean) / s)
    # Above the mean, 1 - CDF differences (the same number) keep float64 out of its own cancellation.
    p = np.where(lo > 0, sigmoid(-lo) - sigmoid(-hi), sigmoid(hi) - sigmoid(lo))
    with np.errstate(divide="ignore"):
        return np.log(p)


def reference_mix_log_prob(k, logits, means, log_scales, num_bins):
    log_pi = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    log_p = reference_log_prob(k[..., None], means, log_scales, num_bins)
    return np.log(np.sum(np.exp(log_pi + log_p), -1))


def reference_pixel_log_prob(k_BxHxWxC, params, num_mixtures, num_bins):
    """The documented layout read afresh: logits, then per channel [means, log scales, coeffs]."""
    m, c = num_mixtures, k_BxHxWxC.shape[-1]
    x = -1.0 + 2.0 * k_BxHxWxC / (num_bins - 1)
    per = 3 * m if c == 3 else 2 * m
    block = [params[..., m + per * i : m + per * (i + 1)] for i in range(c)]
    mean = [b[..., :m] for b in block]
    if c == 3:
        coeff = [np.tanh(b[..., 2 * m :]) for b in block]
        mean[1] = mean[1] + coeff[0] * x[..., 0:1]
        mean[2] = mean[2] + coeff[1] * x[..., 0:1] + coeff[2] * x[..., 1:2]
    log_p = sum(
        reference_log_prob(k_BxHxWxC[..., i : i + 1], mean[i], block[i][..., m : 2 * m], num_bins)
        for i in range(c)
    )
    logits = params[..., :m]
    log_pi = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    return np.log(np.sum(np.exp(log_p + log_pi), axis=-1))


def random_pixel_params(rng, shape, num_mixtures, num_channels, coeff_scale=2.0):
    """float32 logits, means in (-1.2, 1.2), log scales in (-5, 0), raw coefficients ~ N(0, scale^2)."""
    m = num_mixtures
    blocks = [rng.normal(size=(*shape, m))]
    for _ in range(num_channels):
        blocks += [rng.uniform(-1.2, 1.2, (*shape, m)), rng.uniform(-5.0, 0.0, (*shape, m))]
        if num_channels == 3:
            blocks.append(coeff_scale * rng.normal(size=(*shape, m)))
    return np.concatenate(blocks, axis=-1).astype(np.float32)


def all_colours(levels):
    """Every (R, G, B) index triple of a levels-level image, as a 1 x L^1.5 x L^1.5 x 3 map."""
    k = np.stack(np.meshgrid(*[np.arange(levels)] * 3, indexing="ij"), -1)
    side = round(levels**1.5)
    return k.reshape(1, side, side, 3)


def test_bin_centres_round_trip_exactly():
    @jax.jit
    def round_trips(k8, k16, x_off):
        x8, x16 = to_bin_centres(k8, 256), to_bin_centres(k16, 65536)
        back = (
            from_bin_centres(x8, 256),
            from_bin_centres(x16, 65536),
            from_bin_centres(x_off, 256),
        )
        return x8, x16, to_bin_centres(k16.astype(jnp.uint16), 65536), back

    jitter = 0.49 * (2 / 255) * np.random.default_rng(0).uniform(-1, 1, 256)  # < half a bin
    x_off = np.concatenate([centres(np.arange(256), 256) + jitter, [-3.0, 7.0]]).astype(np.float32)
    k8, k16 = np.arange(256, dtype=np.uint8), np.arange(65536, dtype=np.int32)
    out = round_trips(k8, k16, x_off)
    assert out[0].dtype == jnp.float32 and out[3][0].dtype == jnp.int32
    x8, x16, x16_from_uint16, (back8, back16, back_off) = jax.tree.map(np.asarray, out)
    np.testing.assert_array_equal(back8, np.arange(256))
    np.testing.assert_array_equal(back16, np.arange(65536))  # all 16-bit values
    np.testing.assert_array_equal(x8, centres(k8, 256))
    np.testing.assert_array_equal(x16, centres(k16, 65536))
    np.testing.assert_array_equal(x16_from_uint16, x16)
    np.testing.assert_array_equal(x8[[0, -1]], [-1.0, 1.0])
    np.testing.assert_array_equal(x8, -x8[::-1])  # the grid is symmetric
    np.testing.assert_allclose(np.diff(np.asarray(x8, np.float64)), 2 / 255, rtol=1e-5)
    some = [0, 1, 32767, 32768, 65534, 65535]
    np.testing.assert_allclose(x16[np.array(some)], -1 + 2 * np.array(some) / 65535, atol=6e-8)
    # Within (almost) half a bin of a centre maps to that bin; beyond the ends to the end bins.
    np.testing.assert_array_equal(back_off, [*range(256), 0, 255])


@pytest.mark.parametrize("num_bins", [256, 65536])
def test_probabilities_sum_to_one(num_bins):
    rng = np.random.default_rng(1)
    x_Kx1 = centres(np.arange(num_bins), num_bins)[:, None]
    # Single logistics, from far sharper than a bin (clipped) to far wider than [-1, 1].
    means = np.concatenate([rng.uniform(-1.2, 1.2, 8), [-1.0, 1.0, 0.3, 5.0]]).astype(np.float32)
    log_scales = np.concatenate([rng.uniform(-13.0, 0.0, 8), [-20.0, -20.0, 3.0, 0.0]])
    log_p = log_prob_fn(x_Kx1, means, log_scales.astype(np.float32), num_bins=num_bins)
    np.testing.assert_allclose(np.exp(np.asarray(log_p, np.float64)).sum(0), 1.0, atol=1e-5)
    # Ten-component mixtures (the WaveNet teacher's), four parameter sets.
    shape = (4, 10)
    logits, means = rng.normal(size=shape), rng.uniform(-1.1, 1.1, shape)
    log_scales = rng.uniform(-13.0, -1.0, shape)
    params = (a.astype(np.float32) for a in (logits, means, log_scales))
    mix = mix_log_prob_fn(x_Kx1, *params, num_bins=num_bins)
    np.testing.assert_allclose(np.exp(np.asarray(mix, np.float64)).sum(0), 1.0, atol=1e-5)


@pytest.mark.parametrize("num_bins", [256, 65536])
def test_matches_float64_cdf_differences(num_bins):
    rng = np.random.default_rng(2)
    k = rng.integers(0, num_bins, 200)
    k[:4] = [0, 1, num_bins - 2, num_bins - 1]
    f32 = functools.partial(
        np.asarray, dtype=np.float32
    )  # the reference sees the same float32 values
    means, log_scales = f32(rng.uniform(-1.2, 1.2, 200)), f32(rng.uniform(-4.0, 0.0, 200))
    logits, mix_means = f32(rng.normal(size=(200, 5))), f32(rng.uniform(-1.2, 1.2, (200, 5)))
    mix_log_scales = f32(rng.uniform(-4.0, 0.0, (200, 5)))
    x = centres(k, num_bins)
    got = log_prob_fn(x, means, log_scales, num_bins=num_bins)
    expected = reference_log_prob(k, means.astype(np.float64), log_scales, num_bins)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    got = mix_log_prob_fn(x, logits, mix_means, mix_log_scales, num_bins=num_bins)
    expected = reference_mix_log_prob(
        k, *(a.astype(np.float64) for a in (logits, mix_means, mix_log_scales)), num_bins
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_tails_and_sharp_logistics_stay_exact():
    """Where the float32 CDF difference underflows or cancels, the log mass still matches float64."""
    f32 = np.float32
    cases = [  # (num_bins, mean, log_scale, bins to check)
        (256, f32(-1.0), f32(-5.0), np.arange(256)),  # a sharp logistic at the left edge
        # 16-bit at the clip (~0.23 bins per scale): bins up to ~700 scales away (float64's range).
        (65536, f32(0.1234), f32(default_min_log_scale(65536)), np.arange(36730, 36890)),
        # 16-bit, a few bins per scale, near +1 where a bin is ~500 float32 ulps wide.
        (65536, f32(0.99731), f32(-11.0), np.arange(65300, 65536)),
    ]
    for num_bins, mean, log_scale, k in cases:
        got = np.asarray(log_prob_fn(centres(k, num_bins), mean, log_scale, num_bins=num_bins))
        expected = reference_log_prob(k, np.float64(mean), np.float64(log_scale), num_bins)
        valid = np.isfinite(expected) & (expected > -650)
        assert valid.sum() > 100 and expected[valid].min() < -250
        np.testing.assert_allclose(got[valid], expected[valid], rtol=1e-5, atol=1e-5)
    # The naive float32 CDF difference is 0 (log -inf) in the first case's far bins.
    x, s, w = centres(np.arange(256), 256), np.exp(f32(-5.0)), f32(1 / 255)
    naive = sigmoid((x + w + f32(1.0)) / s).astype(np.float32) - sigmoid((x - w + f32(1.0)) / s)
    assert np.sum(naive.astype(np.float32) == 0) > 100
    # A scale far wider than [-1, 1]: an interior bin holds (2 w / s) sigmoid'(0) = w / (2 s).
    got = log_prob_fn(centres([100, 127, 150], 255), f32(0.0), f32(30.0), num_bins=255)
    np.testing.assert_allclose(got, np.log(1 / 254 / 2) - 30.0, rtol=1e-6)


def test_extreme_parameters_give_finite_values_and_gradients():
    means = np.array([-50.0, -1.0, 1.0, 50.0, 1e3, 0.0], np.float32)
    log_scales = np.array([-20.0, -20.0, -7.0, 0.0, 20.0, 80.0], np.float32)
    logits = np.array([50.0, -50.0, 0.0, 0.0, 3.0, -3.0], np.float32)
    # 60 = 10 M channels for M = 6: logits, then [means, log scales, coefficients] per channel.
    params = np.concatenate([logits, *([means, log_scales, 30.0 * np.sign(means)] * 3)])
    params = np.broadcast_to(params, (1, 1, 2, 60)).astype(np.float32)

    def x_at_edges_and_middle(num_bins):
        return centres(np.array([0, 1, num_bins // 2, num_bins - 2, num_bins - 1]), num_bins)

    @jax.jit
    def values_and_grads(logits, means, log_scales, params):
        # Values at 8 and 16 bits; gradients of the 16-bit mixture and of the 8-bit RGB pixel (whose
        # log prob runs through the single-logistic one).
        x256_Nx1, x65536_N = x_at_edges_and_middle(256)[:, None], x_at_edges_and_middle(65536)
        values = [
            log_prob_fn(x256_Nx1, means, log_scales, num_bins=256),
            log_prob_fn(x65536_N[:, None], means, log_scales, num_bins=65536),
        ]
        mix = jax.value_and_grad(
            lambda *a: mix_log_prob_fn(x65536_N, *a, num_bins=65536).sum(), argnums=(0, 1, 2)
        )(*(jnp.broadcast_to(a, (5, 6)) for a in (logits, means, log_scales)))
        x = centres(np.array([[0, 255, 1], [255, 0, 128]]).reshape(1, 1, 2, 3), 256)
        pixel = jax.value_and_grad(lambda p: pixel_log_prob_fn(x, p, num_mixtures=6).sum())(params)
        return values, mix, pixel

    values, mix, pixel = values_and_grads(logits, means, log_scales, params)
    assert all(np.all(np.asarray(log_p) <= 1e-6) for log_p in values)
    for leaf in jax.tree.leaves((values, mix, pixel)):
        assert np.all(np.isfinite(np.asarray(leaf)))


@pytest.mark.parametrize("num_channels", [3, 1])
def test_pixelcnn_pp_matches_float64_reference_and_checks_shapes(num_channels):
    rng = np.random.default_rng(3)
    m, num_bins = 4, 256
    k = rng.integers(0, num_bins, (2, 3, 3, num_channels))
    k[0, 0, 0], k[0, 0, 1] = 0, num_bins - 1
    params = random_pixel_params(rng, (2, 3, 3), m, num_channels)
    got = pixel_log_prob_fn(centres(k, num_bins), params, num_mixtures=m, num_bins=num_bins)
    assert got.shape == (2, 3, 3)
    expected = reference_pixel_log_prob(k, params.astype(np.float64), m, num_bins)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    shapes = jax.ShapeDtypeStruct((1, 2, 2, num_channels), jnp.float32)
    with pytest.raises(ValueError, match="num_mixtures"):
        jax.eval_shape(
            lambda x: pixelcnn_pp_log_prob(x, jnp.zeros((1, 2, 2, 7)), num_mixtures=m), shapes
        )
    with pytest.raises(ValueError, match="channels"):
        wrong = jax.ShapeDtypeStruct((1, 2, 2, 4 - num_channels), jnp.float32)  # 3 <-> 1
        jax.eval_shape(
            lambda x: pixelcnn_pp_log_prob(x, jnp.asarray(params[:1, :2, :2]), num_mixtures=m),
            wrong,
        )


def test_pixelcnn_pp_rgb_joint_normalises():
    rng = np.random.default_rng(4)
    # All 16^3 colours of a 16-level image, three pixels' parameters with strong coupling.
    levels, m = 16, 3
    x = centres(all_colours(levels), levels)
    params = random_pixel_params(rng, (3,), m, 3, coeff_scale=3.0)
    p_3x64x64xP = np.broadcast_to(params[:, None, None], (3, 64, 64, 10 * m))
    log_p = pixel_log_prob_fn(
        np.broadcast_to(x, (3, 64, 64, 3)), p_3x64x64xP, num_mixtures=m, num_bins=levels
    )
    np.testing.assert_allclose(np.exp(np.asarray(log_p, np.float64)).sum((1, 2)), 1.0, atol=1e-5)
    # 8-bit: for fixed R, summing the joint over all 256^2 (G, B) leaves the R marginal, the
    # mixture of the R components alone; those R marginals sum to 1 over the 256 values.
    num_bins, p = 256, params[0]
    logits, means_r, log_scales_r = p[:m], p[m : 2 * m], p[2 * m : 3 * m]
    x_r = centres(np.arange(num_bins), num_bins)
    log_p_r = np.asarray(mix_log_prob_fn(x_r, logits, means_r, log_scales_r, num_bins=num_bins))
    np.testing.assert_allclose(np.exp(log_p_r.astype(np.float64)).sum(), 1.0, atol=1e-5)
    r = np.argsort(log_p_r)[[-1, -20, -60]]  # likely to fairly unlikely values of R
    g, b = np.meshgrid(np.arange(num_bins), np.arange(num_bins), indexing="ij")
    k = np.stack(np.broadcast_arrays(r[:, None, None], g, b), -1)
    params_3x256x256xP = np.broadcast_to(p, (3, 256, 256, 10 * m))
    log_p = pixel_log_prob_fn(centres(k, num_bins), params_3x256x256xP, num_mixtures=m)
    marginal = np.exp(np.asarray(log_p, np.float64)).sum(axis=(1, 2))
    np.testing.assert_allclose(marginal, np.exp(log_p_r.astype(np.float64)[r]), rtol=1e-5)


def assert_frequencies_match(samples_k, probs, num_samples):
    """Per-bin |frequency - p| within 5 binomial standard errors (+1e-6 for the float32 probs)."""
    freq = np.bincount(samples_k, minlength=len(probs)) / num_samples
    tolerance = 5 * np.sqrt(probs * (1 - probs) / num_samples) + 1e-6
    assert np.all(np.abs(freq - probs) <= tolerance), np.max(np.abs(freq - probs) / tolerance)


def test_mix_logistic_sample_matches_probabilities():
    num_samples = 200_000
    # 16 bins, three components, one narrower than a bin and one at the upper edge.
    params = np.array([[0.0, -0.5, 0.7], [-0.3, 0.42, 0.95], [-1.5, -4.0, -2.5]], np.float32)
    params_3xNx3 = np.broadcast_to(params[:, None], (3, num_samples, 3))
    samples = mix_sample_fn(rng_key(0), *params_3xNx3, num_bins=16)
    assert samples.shape == (num_samples,) and on_grid(samples, 16)
    log_p = mix_log_prob_fn(centres(np.arange(16), 16), *params, num_bins=16)
    probs = np.exp(np.asarray(log_p, np.float64))
    assert_frequencies_match(indices(samples, 16).astype(int), probs, num_samples)
    # 16-bit audio, ten components: frequencies of 64 groups of 1024 consecutive values.
    rng = np.random.default_rng(5)
    params = np.stack(
        [rng.normal(size=10), rng.uniform(-1.0, 1.0, 10), rng.uniform(-8.0, -2.0, 10)]
    ).astype(np.float32)
    params_3xNx10 = np.broadcast_to(params[:, None], (3, num_samples, 10))
    samples = mix_sample_fn(rng_key(1), *params_3xNx10, num_bins=65536)
    assert on_grid(samples, 65536)
    log_p = mix_log_prob_fn(centres(np.arange(65536), 65536), *params, num_bins=65536)
    probs = np.exp(np.asarray(log_p, np.float64)).reshape(64, 1024).sum(1)
    assert_frequencies_match(indices(samples, 65536).astype(int) // 1024, probs, num_samples)


def test_pixelcnn_pp_sample_matches_the_joint_likelihood_and_couples_channels():
    """4-level RGB: the frequencies of all 64 colours match exp(pixelcnn_pp_log_prob); plus coupling."""
    levels, m = 4, 2
    p = random_pixel_params(np.random.default_rng(6), (), m, 3, coeff_scale=3.0)
    # 8-bit, one component: raw c0 = 10 (tanh ~ 1) makes G ~ R, c1 = 0 and c2 = -10 make B ~ -G;
    # [logit | mu_R, log s_R, c0 | mu_G, log s_G, c1 | mu_B, log s_B, c2], then with no coupling.
    coupled = np.array([0.0, 0.0, -1.5, 10.0, 0.0, -7.0, 0.0, 0.0, -7.0, -10.0], np.float32)
    free = coupled * (np.arange(10) % 3 != 0)
    num_samples = 100_000

    @jax.jit
    def sample_all(p, coupled, free):
        four_levels = pixel_sample_fn(
            rng_key(2), jnp.broadcast_to(p, (4, 125, 200, 10 * m)), num_mixtures=m, num_bins=levels
        )
        one_channel = pixel_sample_fn(rng_key(3), jnp.zeros((2, 3, 3, 3 * m)), num_mixtures=m)
        params = jnp.stack(
            [jnp.broadcast_to(coupled, (50, 100, 10)), jnp.broadcast_to(free, (50, 100, 10))]
        )
        return four_levels, one_channel, pixel_sample_fn(rng_key(4), params, num_mixtures=1)

    samples, single, samples_8bit = map(np.asarray, sample_all(p, coupled, free))
    assert samples.shape == (4, 125, 200, 3) and on_grid(samples, levels)
    k = indices(samples, levels).astype(int).reshape(-1, 3)
    all_k = all_colours(levels)
    log_p = pixel_log_prob_fn(
        centres(all_k, levels),
        np.broadcast_to(p, (1, 8, 8, 10 * m)),
        num_mixtures=m,
        num_bins=levels,
    )
    probs = np.exp(np.asarray(log_p, np.float64)).reshape(-1)
    assert abs(probs.sum() - 1) < 1e-5
    assert_frequencies_match(k @ np.array([16, 4, 1]), probs, num_samples)
    assert single.shape == (2, 3, 3, 1) and on_grid(single, 256)  # one channel: B x H x W x 1

    assert on_grid(samples_8bit, 256)
    r, g, b = (samples_8bit[..., i].reshape(2, -1) for i in range(3))
    assert np.std(r[0]) > 0.2  # R spreads over [-1, 1]
    # s = e^-7 is ~0.23 bins: most samples land on the coupled mean's bin, a few on a neighbour.
    for diff in (g[0] - r[0], b[0] + g[0]):
        assert np.mean(np.abs(diff)) < 0.1 * (2 / 255) and np.max(np.abs(diff)) < 0.05
    corr = np.corrcoef(r[1], g[1])[0, 1]  # without coupling G is independent of R
    assert abs(corr) < 5 / np.sqrt(r.shape[1]) and np.max(np.abs(g[1])) < 0.02


@pytest.mark.parametrize("num_channels", [1, 3])
def test_pixelcnn_pp_mean_is_the_mean_of_the_coupled_continuous_mixture(num_channels):
    """Against a float64 Monte Carlo of the generative process (component, then R, G | R, B | R, G).

    Means within +-0.15 and scales e^-5 keep every coupled draw inside [-1, 1], so the clip never
    acts.
    """
    rng = np.random.default_rng(0)
    m, n = 3, 200_000
    num_params = pixelcnn_pp_num_params(num_channels, m)
    params = rng.normal(size=(1, 2, 1, num_params)).astype(np.float32)
    params[..., m:] = 0.0
    per_channel = 3 * m if num_channels == 3 else 2 * m
    rest = params[..., m:].reshape(1, 2, 1, num_channels, per_channel)
    rest[..., :m] = rng.uniform(-0.15, 0.15, size=rest[..., :m].shape)  # means
    rest[..., m : 2 * m] = -5.0  # log scales
    if num_channels == 3:
        rest[..., 2 * m :] = rng.normal(size=rest[..., 2 * m :].shape)  # raw coefficients
    params[..., m:] = rest.reshape(1, 2, 1, -1)
    mean = np.asarray(pixelcnn_pp_mean(jnp.asarray(params), num_mixtures=m), np.float64)

    p64 = params.astype(np.float64)[0, :, 0]  # 2 pixels x P
    weights = np.exp(p64[:, :m]) / np.exp(p64[:, :m]).sum(-1, keepdims=True)
    blocks = p64[:, m:].reshape(2, num_channels, per_channel)
    for pixel in range(2):
        component = rng.choice(m, size=n, p=weights[pixel])
        mu = blocks[pixel, :, :m][:, component]  # C x n
        scale = np.exp(blocks[pixel, :, m : 2 * m][:, component])
        u = rng.uniform(size=(num_channels, n))
        x = mu + scale * (np.log(u) - np.log1p(-u))
        if num_channels == 3:
            c = np.tanh(blocks[pixel, :, 2 * m :][:, component])
            x[1] = x[1] + c[0] * x[0]
            x[2] = x[2] + c[1] * x[0] + c[2] * x[1]
        assert np.all(np.abs(x) < 1.0)
        stderr = x.std(axis=1) / np.sqrt(n)
        np.testing.assert_array_less(np.abs(x.mean(axis=1) - mean[0, pixel, 0]), 5 * stderr + 1e-6)


def test_pixelcnn_pp_num_params_matches_the_layouts_the_likelihood_reads():
    assert pixelcnn_pp_num_params(3, 5) == 50 and pixelcnn_pp_num_params(1, 5) == 15
    with pytest.raises(ValueError, match="1 or 3 channels"):
        pixelcnn_pp_num_params(2, 5)
