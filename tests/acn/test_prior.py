"""The prior network's mixture, its KL estimate against the closed form, and its sampler."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from deepgen.acn import prior as prior_lib


def test_one_component_kl_estimate_averages_to_the_closed_form():
    rng = np.random.default_rng(0)
    batch, dim, draws = 4, 6, 20_000
    code = rng.normal(size=(batch, dim)).astype(np.float32)
    mean = rng.normal(size=(batch, dim)).astype(np.float32)
    log_scale = rng.uniform(-0.5, 0.7, size=(batch, dim)).astype(np.float32)
    closed = np.asarray(
        prior_lib.gaussian_kl(code_BxZ=code, prior_mean_BxZ=mean, prior_log_scale_BxZ=log_scale)
    )

    @jax.jit
    def estimates(key):
        eps = jax.random.normal(key, (draws, batch, dim))
        z = code[None] + eps
        return jax.vmap(
            lambda z_BxZ: prior_lib.kl_estimate(
                z_BxZ=z_BxZ,
                code_BxZ=code,
                logits_BxZxM=jnp.zeros((batch, dim, 1)),
                means_BxZxM=mean[..., None],
                log_scales_BxZxM=log_scale[..., None],
            )
        )(z)

    samples = np.asarray(estimates(jax.random.key(1)), np.float64)
    stderr = samples.std(axis=0) / math.sqrt(draws)
    np.testing.assert_array_less(np.abs(samples.mean(axis=0) - closed), 4 * stderr + 1e-4)
    # The closed form against an independent float64 formula.
    s2 = np.exp(2.0 * log_scale.astype(np.float64))
    want = 0.5 * np.sum((1.0 + (code - mean) ** 2) / s2 - 1.0 + np.log(s2), axis=-1)
    np.testing.assert_allclose(closed, want, rtol=1e-5)


def test_mixture_log_density_against_float64():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(3, 5))
    logits, means = rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 5, 4))
    log_scales = rng.uniform(-1.0, 0.5, size=(3, 5, 4))
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    scales = np.exp(log_scales)
    pdf = np.exp(-0.5 * ((z[..., None] - means) / scales) ** 2) / (scales * math.sqrt(2 * math.pi))
    want = np.log((weights * pdf).sum(-1)).sum(-1)
    got = prior_lib.mixture_log_density(
        *(jnp.asarray(a, jnp.float32) for a in (z, logits, means, log_scales))
    )
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_mixture_sampler_matches_the_mixture_moments():
    logits = jnp.log(jnp.array([[[0.2, 0.8]]]))
    means = jnp.array([[[-2.0, 1.0]]])
    log_scales = jnp.log(jnp.array([[[0.5, 0.3]]]))
    draws = jax.vmap(lambda k: prior_lib.sample_mixture(k, logits, means, log_scales))(
        jax.random.split(jax.random.key(0), 40_000)
    )
    x = np.asarray(draws).ravel()
    mean = 0.2 * -2.0 + 0.8 * 1.0
    var = 0.2 * (0.25 + 4.0) + 0.8 * (0.09 + 1.0) - mean**2
    assert abs(x.mean() - mean) < 4 * math.sqrt(var / x.size)
    assert abs(x.var() - var) < 0.05 * var


def test_prior_network_has_the_papers_skips():
    """3 hidden layers of tanh units: the input feeds each, all of them feed the output."""
    net = prior_lib.PriorNetwork(latent_dim=4, num_components=3, hidden_units=7)
    params = net.init(jax.random.key(0), jnp.zeros((2, 4)))["params"]
    assert params["hidden_0"]["kernel"].shape == (4, 7)
    assert params["hidden_1"]["kernel"].shape == (4 + 7, 7)
    assert params["hidden_2"]["kernel"].shape == (4 + 7, 7)
    assert params["out"]["kernel"].shape == (3 * 7, 3 * 4 * 3)
    logits, means, log_scales = net.apply({"params": params}, jnp.ones((2, 4)))
    assert logits.shape == means.shape == log_scales.shape == (2, 4, 3)
    assert (np.asarray(log_scales) >= prior_lib.MIN_LOG_SCALE).all()
