"""NoisyDense: Sec. 3.2 initial values, noise statistics, the factorised shortcut, rng handling.

The layer is initialised and applied through jitted functions made once per layer shape
(`_layer`): op-by-op (eager) Flax would compile every operation of every call shape.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.noisynet.layers import NoisyDense, signed_sqrt

P, Q = 7, 5
ROWS = P  # every input batch has P rows (the probes' identity input too): one compilation each


@functools.cache
def _layer(noise_type: str, p: int = P, q: int = Q):
    """(layer, jitted init(seed) -> params, jitted layer.apply) for a p -> q NoisyDense."""
    layer = NoisyDense(q, noise_type=noise_type)

    @jax.jit
    def init(seed):
        keys = {"params": jax.random.PRNGKey(seed), "noise": jax.random.PRNGKey(seed + 1)}
        return layer.init(keys, jnp.zeros((1, p)))["params"]

    return layer, init, jax.jit(layer.apply, static_argnames=("use_noise", "per_example_noise"))


def init_params(noise_type: str, p: int = P, q: int = Q, seed: int = 0):
    layer, init, _ = _layer(noise_type, p, q)
    return layer, init(seed)


def apply(noise_type: str, params, x, **kwargs):
    """The p -> q layer (p, q from params) applied under jit."""
    p, q = params["mu_w"].shape
    return _layer(noise_type, p, q)[2]({"params": params}, x, **kwargs)


def probe_noise(noise_type: str, key: jax.Array, *, p: int = P, q: int = Q):
    """(eps_w_PxQ, eps_b_Q) the layer draws with `key`: mu = 0, sigma = 1, identity / zero inputs."""
    ones = {
        "mu_w": jnp.zeros((p, q)),
        "sigma_w": jnp.ones((p, q)),
        "mu_b": jnp.zeros((q,)),
        "sigma_b": jnp.ones((q,)),
    }
    no_bias_noise = {**ones, "sigma_b": jnp.zeros((q,))}
    eps_w = apply(noise_type, no_bias_noise, jnp.eye(p), rngs={"noise": key})
    eps_b = apply(noise_type, ones, jnp.zeros((p, p)), rngs={"noise": key})[0]
    return eps_w, eps_b


@functools.cache
def _probe_many(noise_type: str):
    """probe_noise of every key, vmapped and jitted."""
    return jax.jit(jax.vmap(functools.partial(probe_noise, noise_type)))


@pytest.mark.parametrize(
    ("noise_type", "bound", "sigma"),
    [
        ("factorised", 1 / math.sqrt(64), 0.5 / math.sqrt(64)),
        ("independent", math.sqrt(3 / 64), 0.017),
    ],
)
def test_initial_values_follow_section_3_2(noise_type, bound, sigma):
    _, params = init_params(noise_type, p=64, q=300)
    for name in ("mu_w", "mu_b"):
        mu = np.asarray(params[name])
        assert np.all(np.abs(mu) <= bound)
        assert np.abs(mu).max() > 0.95 * bound  # uniform over the whole range, not a narrower one
    assert abs(np.asarray(params["mu_w"]).std() - bound / math.sqrt(3)) < 0.02 * bound
    np.testing.assert_allclose(params["sigma_w"], np.full((64, 300), sigma), rtol=1e-6)
    np.testing.assert_allclose(params["sigma_b"], np.full((300,), sigma), rtol=1e-6)


def test_independent_noise_is_standard_normal_per_weight():
    keys = jax.random.split(jax.random.PRNGKey(3), 4000)
    eps_w, eps_b = _probe_many("independent")(keys)
    for eps in (np.asarray(eps_w), np.asarray(eps_b)):
        assert abs(eps.mean()) < 0.02
        assert abs(eps.var() - 1.0) < 0.03
    # Different weights are uncorrelated.
    corr = np.corrcoef(np.asarray(eps_w)[:, 0, 0], np.asarray(eps_w)[:, 1, 0])[0, 1]
    assert abs(corr) < 0.06


def test_factorised_noise_is_a_product_of_signed_square_roots():
    keys = jax.random.split(jax.random.PRNGKey(4), 4000)
    eps_w, eps_b = _probe_many("factorised")(keys)
    eps_w, eps_b = np.asarray(eps_w, np.float64), np.asarray(eps_b, np.float64)
    # eps_b = f(eps_out): E f(x)^2 = E|x| = sqrt(2/pi); eps_w = f(eps_in) f(eps_out): var 2/pi.
    assert abs(eps_b.mean()) < 0.03 and abs(eps_b.var() - math.sqrt(2 / math.pi)) < 0.03
    assert abs(eps_w.mean()) < 0.02 and abs(eps_w.var() - 2 / math.pi) < 0.03
    # Rank one per key, with eps_w[i, j] = f(eps_in[i]) * eps_b[j] (Eqs. 10-11).
    f_in = eps_w[:, :, 0] / eps_b[:, None, 0]
    np.testing.assert_allclose(eps_w, f_in[:, :, None] * eps_b[:, None, :], rtol=1e-4, atol=1e-6)
    # f(eps_in) are signed square roots of standard normals: f_in^2 * sign ~ N(0, 1).
    raw_in = np.sign(f_in) * f_in**2
    assert abs(raw_in.mean()) < 0.03 and abs(raw_in.var() - 1.0) < 0.05


@pytest.mark.parametrize("noise_type", ["factorised", "independent"])
def test_noisy_output_equals_the_explicit_noisy_weight_matrix(noise_type):
    _, params = init_params(noise_type, seed=5)
    key = jax.random.PRNGKey(11)
    x = np.random.default_rng(12).standard_normal((ROWS, P)).astype(np.float32)
    eps_w, eps_b = probe_noise(noise_type, key)
    weight = params["mu_w"] + params["sigma_w"] * eps_w
    bias = params["mu_b"] + params["sigma_b"] * eps_b
    expected = np.asarray(x, np.float64) @ np.asarray(weight, np.float64) + np.asarray(bias)
    got = apply(noise_type, params, x, rngs={"noise": key})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _entry_values_of_shape(hlo_text: str, shape: str) -> list[str]:
    """Non-parameter instructions of the compiled ENTRY computation whose result is f32[shape]."""
    entry = hlo_text[hlo_text.index("\nENTRY") :]
    entry = entry[: entry.index("\n}")]
    return [
        line.strip()
        for line in entry.splitlines()
        if f"= f32[{shape}]" in line and " parameter(" not in line
    ]


def test_factorised_path_never_forms_the_p_by_q_noise_matrix():
    """Per-example: no p x q array at all; shared: the only p x q value is mu + sigma * noise, fused."""
    layer, params = init_params("factorised")
    x = jnp.ones((3, P))
    per_example = jax.make_jaxpr(
        lambda p, k: layer.apply({"params": p}, x, per_example_noise=True, rngs={"noise": k})
    )(params, jax.random.PRNGKey(0))
    shapes = [v.aval.shape for eqn in per_example.jaxpr.eqns for v in eqn.outvars]
    assert (P, Q) not in shapes and (3, P, Q) not in shapes

    def shared(p, k):
        return layer.apply({"params": p}, x, rngs={"noise": k})

    hlo = jax.jit(shared).lower(params, jax.random.PRNGKey(0)).compile().as_text()
    values = _entry_values_of_shape(hlo, f"{P},{Q}")
    assert len(values) <= 1, values  # at most the noisy weights, never a separate noise matrix
    assert all(" fusion(" in v for v in values), values
    jaxpr_independent = jax.make_jaxpr(
        lambda p, k: init_params("independent")[0].apply({"params": p}, x, rngs={"noise": k})
    )(init_params("independent")[1], jax.random.PRNGKey(0))
    assert (P, Q) in [v.aval.shape for e in jaxpr_independent.jaxpr.eqns for v in e.outvars]


@pytest.mark.parametrize("noise_type", ["factorised", "independent"])
def test_keys_decide_the_noise_and_use_noise_false_gives_the_mean_weights(noise_type):
    _, params = init_params(noise_type)
    x = np.random.default_rng(1).standard_normal((ROWS, P)).astype(np.float32)

    def noisy(seed):
        return apply(noise_type, params, x, rngs={"noise": jax.random.PRNGKey(seed)})

    np.testing.assert_array_equal(noisy(7), noisy(7))
    assert not np.allclose(noisy(7), noisy(8))
    mean = apply(noise_type, params, x, use_noise=False)
    np.testing.assert_allclose(mean, x @ params["mu_w"] + params["mu_b"], rtol=1e-6)
    # Averaged over many noise draws the output tends to the mean-weight output.
    draws = jax.jit(jax.vmap(lambda k: apply(noise_type, params, x, rngs={"noise": k})))(
        jax.random.split(jax.random.PRNGKey(2), 3000)
    )
    np.testing.assert_allclose(np.mean(draws, axis=0), mean, atol=0.05)


@pytest.mark.parametrize("noise_type", ["factorised", "independent"])
def test_per_example_noise_draws_one_sample_per_row(noise_type):
    _, params = init_params(noise_type)
    x = np.ones((ROWS, P), np.float32)
    key = {"noise": jax.random.PRNGKey(3)}
    shared = apply(noise_type, params, x, rngs=key)
    np.testing.assert_allclose(shared, np.broadcast_to(shared[0], shared.shape), rtol=1e-6)
    per_row = apply(noise_type, params, x, per_example_noise=True, rngs=key)
    assert len({tuple(np.round(np.asarray(r), 5)) for r in per_row}) == ROWS


def test_signed_sqrt():
    x = np.array([-4.0, -0.25, 0.0, 0.25, 9.0], np.float32)
    np.testing.assert_allclose(jax.jit(signed_sqrt)(x), [-2.0, -0.5, 0.0, 0.5, 3.0])


@pytest.mark.parametrize("noise_type", ["factorised", "independent"])
def test_pre_drawn_noise_gives_the_explicit_noisy_weights_and_a_wrong_shape_is_refused(noise_type):
    _, params = init_params(noise_type)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((ROWS, P)).astype(np.float32)
    size = P + Q if noise_type == "factorised" else (P + 1) * Q
    noise = rng.standard_normal((size,)).astype(np.float32)
    if noise_type == "factorised":
        f = np.sign(noise) * np.sqrt(np.abs(noise))  # signed_sqrt, written out
        eps_w, eps_b = np.outer(f[:P], f[P:]), f[P:]
    else:
        eps = np.asarray(noise).reshape(P + 1, Q)
        eps_w, eps_b = eps[:P], eps[P]
    weights = np.asarray(params["mu_w"]) + np.asarray(params["sigma_w"]) * eps_w
    bias = np.asarray(params["mu_b"]) + np.asarray(params["sigma_b"]) * eps_b
    out = apply(noise_type, params, x, noise=noise)  # no rng needed
    np.testing.assert_allclose(out, np.asarray(x) @ weights + bias, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pre-drawn noise has shape"):
        apply(noise_type, params, x, noise=noise[:-1])


@pytest.mark.parametrize("dueling", [False, True])
def test_a_noisy_q_network_pass_makes_one_normal_draw(dueling):
    """All noisy layers of a forward pass share one draw (each draw has a fixed cost on CPU)."""
    from deepgen.noisynet.networks import QNetwork

    net = QNetwork(3, "mlp", (16, 16), 8, dueling=dueling, noisy=True)
    obs = jnp.ones((4, 6))
    rngs = {"params": jax.random.PRNGKey(0), "noise": jax.random.PRNGKey(1)}
    params = jax.eval_shape(net.init, rngs, obs)  # shapes are all make_jaxpr needs
    for per_example in (False, True):
        jaxpr = jax.make_jaxpr(
            lambda p, k, pe=per_example: net.apply(p, obs, per_example_noise=pe, rngs={"noise": k})
        )(params, jax.random.PRNGKey(2))
        text = str(jaxpr)
        assert text.count("random_bits") == 1 or text.count("threefry2x32") == 1, text
