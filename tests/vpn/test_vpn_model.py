"""The VPN's maths: what each prediction may depend on, cached generation, the losses' identities.

Dependencies are checked by exact Jacobians in float64 on tiny models: a prediction for pixel
(i, j, c) of frame t has exactly zero derivative with respect to that pixel, any later pixel or
channel of frame t, and any later frame, and a non-zero one with respect to the pixels the masks
let through. Cached generation is checked against naive generation with the same noise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.layers.multiplicative import multiplicative_unit
from deepgen.vpn import losses, sampling
from deepgen.vpn import model as vpn

B, T, H, W = 2, 4, 5, 4


def tiny(channels: int = 1, num_values: int = 1, condition: int = 0, **overrides):
    fields = dict(
        image_channels=channels,
        num_values=num_values,
        channels=24,
        hidden=6,
        encoder_dilations=(1, 2),
        decoder_blocks=2,
        lstm_features=4,
        condition_features=condition,
    )
    return vpn.VideoPixelNetwork(**(fields | overrides))


def init64(model, frames, conditions=None):
    params = model.init(jax.random.key(1), frames, conditions)["params"]
    return jax.tree.map(lambda p: p.astype(jnp.float64), params)


def video(channels: int, key: int = 0):
    return jax.random.uniform(jax.random.key(key), (B, T, H, W, channels), jnp.float64)


def raster_later(i: int, j: int, c: int, pixel: tuple[int, int], channel: int) -> bool:
    """Whether input (i, j, c) comes at or after output (pixel, channel) in the VPN's order."""
    return (i, j) > pixel or ((i, j) == pixel and c >= channel)


@pytest.mark.parametrize(("channels", "num_values", "condition"), [(1, 1, 0), (3, 4, 3)])
def test_a_prediction_sees_only_earlier_pixels_channels_and_frames(channels, num_values, condition):
    with jax.enable_x64(True):
        model = tiny(channels, num_values, condition)
        frames = video(channels)
        conditions = None
        if condition:
            conditions = jax.random.normal(jax.random.key(2), (B, T, condition), jnp.float64)
        params = init64(model, frames, conditions)
        pixel, frame_t = (2, 1), 2  # output index frame_t - 1

        def logits_at(frames):
            out = model.apply({"params": params}, frames, conditions)
            return out[0, frame_t - 1, pixel[0], pixel[1]].sum(axis=-1)  # C

        jacobian = np.abs(np.asarray(jax.jacrev(logits_at)(frames)))  # C x B x T x H x W x C
        for c in range(channels):
            d = jacobian[c]
            assert d[1].max() == 0.0  # other sequences of the batch
            assert d[0, frame_t + 1 :].max() == 0.0  # later frames
            current = d[0, frame_t]
            for i in range(H):
                for j in range(W):
                    for cc in range(channels):
                        if raster_later(i, j, cc, pixel, c):
                            assert current[i, j, cc] == 0.0, (c, i, j, cc)
            # ... and it does see its neighbours above and to the left, its earlier channels, and
            # every pixel of the previous frames (through the encoder and the ConvLSTM).
            assert current[pixel[0], pixel[1] - 1].min() > 0 and current[1, 1].min() > 0
            assert all(current[pixel[0], pixel[1], cc] > 0 for cc in range(c))
            assert d[0, :frame_t].min() > 0


def test_conditions_reach_only_later_frames():
    with jax.enable_x64(True):
        model = tiny(1, 1, condition=3)
        frames = video(1)
        conditions = jax.random.normal(jax.random.key(2), (B, T, 3), jnp.float64)
        params = init64(model, frames, conditions)
        grads = jax.jacrev(
            lambda cond: model.apply({"params": params}, frames, cond)[0].sum(axis=(1, 2, 3, 4))
        )(conditions)  # (T - 1) outputs x B x T x A
        grads = np.abs(np.asarray(grads))[:, 0]
        for out in range(T - 1):  # output `out` is frame out + 1: conditions 0 .. out enter it
            assert grads[out, : out + 1].min() > 0
            assert grads[out, out + 1 :].max() == 0.0


def test_the_baseline_without_pixel_dependencies_ignores_the_current_frame():
    with jax.enable_x64(True):
        model = tiny(pixel_dependencies=False)
        frames = video(1)
        params = init64(model, frames)
        d = jax.jacrev(lambda x: model.apply({"params": params}, x)[0, 1].sum())(frames)
        d = np.abs(np.asarray(d))[0]
        assert d[2:].max() == 0.0 and d[:2].min() > 0


def test_the_encoder_preserves_resolution_with_the_dilated_receptive_field():
    with jax.enable_x64(True):
        model = tiny(encoder_dilations=(1, 2, 4))
        frames = video(1)
        params = init64(model, frames)
        side = 35
        image = jax.random.uniform(jax.random.key(3), (1, side, side, 1), jnp.float64)

        def centre(image):
            encoded = model.apply({"params": params}, image, method=vpn.VideoPixelNetwork.encode)
            return encoded, encoded[0, side // 2, side // 2].sum()

        encoded, _ = centre(image)
        assert encoded.shape == (1, side, side, 24)
        d = np.abs(np.asarray(jax.grad(lambda x: centre(x)[1])(image)))[0, ..., 0]
        rows, cols = np.nonzero(d)
        # First conv radius 1, then each block's two 3x3 units of dilation r: 1 + 2 (1 + 2 + 4).
        radius = 1 + 2 * (1 + 2 + 4)
        assert rows.min() == cols.min() == side // 2 - radius
        assert rows.max() == cols.max() == side // 2 + radius


@pytest.mark.parametrize(
    ("channels", "num_values", "every_unit"), [(1, 1, True), (3, 5, True), (1, 1, False)]
)
def test_the_single_pixel_step_equals_the_whole_frame_decoder(channels, num_values, every_unit):
    """Also with the context entering the decoder's input only (model.context_every_unit=False)."""
    with jax.enable_x64(True):
        model = tiny(channels, num_values, first_kernel_size=5, context_every_unit=every_unit)
        frames = video(channels)
        params = init64(model, frames)
        variables = {"params": params}
        frame = frames[:, 1]
        context = jax.random.normal(jax.random.key(4), (B, H, W, 4), jnp.float64)
        full = model.apply(variables, frame, context, method=vpn.VideoPixelNetwork.decode)
        r0 = 2
        padded = jnp.pad(frame, ((0, 0), (r0, r0), (r0, r0), (0, 0)))
        buffers = model.apply(variables, B, H, W, jnp.float64, method=model.init_buffers)
        step = jax.jit(
            lambda buffers, i, j: model.apply(
                variables, padded, context[:, i, j], buffers, i, j, method=model.decode_at
            )
        )
        for i in range(H):  # raster order, as generation visits the pixels
            for j in range(W):
                logits, buffers = step(buffers, i, j)
                np.testing.assert_allclose(logits, full[:, i, j], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("channels", "num_values", "condition"), [(1, 1, 0), (3, 4, 2)])
def test_cached_generation_equals_naive_generation(channels, num_values, condition):
    with jax.enable_x64(True):
        model = tiny(channels, num_values, condition)
        frames = video(channels)
        conditions = None
        if condition:
            conditions = jax.random.normal(jax.random.key(2), (B, T, condition), jnp.float64)
        params = init64(model, frames, conditions)
        noise = sampling.draw_noise(jax.random.key(5), (B, 2, H, W, channels), num_values)
        noise = noise.astype(jnp.float64)

        def run(cached):
            fn = lambda p, c, n, a: sampling.generate(model, p, c, n, a, cached=cached)
            return np.asarray(jax.jit(fn)(params, frames[:, :2], noise, conditions))

        cached, naive = run(True), run(False)
        np.testing.assert_array_equal(cached, naive)
        assert cached.shape == (B, 2, H, W, channels)
        levels = np.unique(cached)
        assert len(levels) > 1 and set(np.round(levels * (max(num_values, 2) - 1))) <= set(
            range(max(num_values, 2))
        )


def test_samples_follow_the_models_probabilities():
    """With all noise below (above) every logit each sampled pixel is 1 (0); the draws' mean over
    many noise samples matches sigmoid(logit) for a constant logit."""
    logits = jnp.full((4000, 1), 0.7)
    noise = jax.random.logistic(jax.random.key(0), (4000, 1))
    mean = float(sampling.pixel_values(logits, noise).mean())
    assert abs(mean - float(jax.nn.sigmoid(0.7))) < 4 * np.sqrt(0.25 / 4000)
    categorical = jnp.log(jnp.array([[0.2, 0.5, 0.3]]))
    draws = sampling.pixel_values(
        jnp.broadcast_to(categorical, (20000, 3)),
        sampling.draw_noise(jax.random.key(1), (20000,), 3),
    )
    frequencies = np.bincount(np.asarray(draws * 2).round().astype(int), minlength=3) / 20000
    np.testing.assert_allclose(frequencies, [0.2, 0.5, 0.3], atol=0.015)


def test_the_multiplicative_unit_is_the_papers_formula():
    rng = np.random.default_rng(0)
    h, pre = rng.normal(size=(3, 5)), rng.normal(size=(3, 20))
    g1, g2, g3, u = np.split(pre, 4, axis=-1)
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))
    expected = sig(g1) * np.tanh(sig(g2) * h + sig(g3) * np.tanh(u))
    np.testing.assert_allclose(
        multiplicative_unit(jnp.asarray(h), jnp.asarray(pre)), expected, 1e-5
    )


def test_the_soft_target_loss_at_the_targets_is_their_entropy_and_no_lower():
    with jax.enable_x64(True):
        z = jnp.asarray(np.random.default_rng(0).uniform(0.01, 0.99, (6, 7)))
        at_targets = losses.soft_bernoulli_cross_entropy(logits=jnp.log(z / (1 - z)), targets=z)
        entropy = losses.soft_target_entropy(targets=z)
        np.testing.assert_allclose(at_targets, entropy, rtol=1e-12)
        other = losses.soft_bernoulli_cross_entropy(logits=jnp.zeros_like(z), targets=z)
        assert bool(jnp.all(other >= entropy))
        np.testing.assert_allclose(other, np.log(2.0), rtol=1e-12)  # a fair coin: log 2 each
        assert float(losses.soft_target_entropy(targets=jnp.array([0.0, 1.0])).sum()) == 0.0


def test_frame_nats_sum_each_frames_pixels_in_both_output_kinds():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        frames = jnp.asarray(rng.integers(0, 4, (2, 3, 4, 5, 3)) / 3.0)
        logits = jnp.asarray(rng.normal(size=(2, 3, 4, 5, 3, 4)))
        values = np.asarray(jnp.round(frames * 3)).astype(int)
        log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1))
        expected = -np.take_along_axis(log_probs, values[..., None], -1)[..., 0].sum((2, 3, 4))
        np.testing.assert_allclose(losses.frame_nats(logits=logits, frames=frames), expected)
        grey = jnp.asarray(rng.uniform(size=(2, 3, 4, 5, 1)))
        bern = jnp.asarray(rng.normal(size=(2, 3, 4, 5, 1, 1)))
        p = 1 / (1 + np.exp(-np.asarray(bern[..., 0])))
        manual = -(grey * np.log(p) + (1 - grey) * np.log(1 - p)).sum((2, 3, 4))
        np.testing.assert_allclose(losses.frame_nats(logits=bern, frames=grey), manual)


def test_the_copy_baseline_is_the_cross_entropy_of_the_smoothed_last_frame():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        last = rng.uniform(size=(2, 3, 3, 1))
        frames = rng.uniform(size=(2, 2, 3, 3, 1))
        out = losses.copy_last_frame_nats(
            last_frame=jnp.asarray(last), frames=jnp.asarray(frames), marginal=0.1, smoothing=0.2
        )
        y = 0.8 * last[:, None] + 0.2 * 0.1
        manual = -(frames * np.log(y) + (1 - frames) * np.log(1 - y)).sum((2, 3, 4))
        np.testing.assert_allclose(out, manual)
