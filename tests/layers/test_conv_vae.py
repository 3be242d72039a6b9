"""ConvEncoder/ConvDecoder shapes; KL, reparameterisation and Bernoulli likelihood against second forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.layers.conv_vae import (
    ConvDecoder,
    ConvEncoder,
    bernoulli_log_likelihood,
    gaussian_kl_to_standard_normal,
    reparameterize,
)

LATENT = 8


def vae_forward(image_shape, x, rng, params=None):
    """x -> (mean, log_std) -> z -> logits and the ELBO; params = (encoder's, decoder's) or fresh ones."""
    encoder, decoder = ConvEncoder(LATENT), ConvDecoder(image_shape)
    if params is None:
        params = (
            encoder.init(jax.random.fold_in(rng, 0), x),
            decoder.init(jax.random.fold_in(rng, 2), jnp.zeros((1, LATENT))),
        )
    mean, log_std = encoder.apply(params[0], x)
    z = reparameterize(jax.random.fold_in(rng, 1), mean, log_std)
    logits = decoder.apply(params[1], z)
    elbo = bernoulli_log_likelihood(logits, x) - gaussian_kl_to_standard_normal(mean, log_std)
    return mean, log_std, logits, elbo


@pytest.mark.parametrize("image_shape", [(28, 28, 1), (32, 32, 3)])
def test_encoder_decoder_shapes_round_trip(image_shape):
    x = jax.ShapeDtypeStruct((3, *image_shape), jnp.float32)
    mean, log_std, logits, elbo = jax.eval_shape(
        lambda x: vae_forward(image_shape, x, jax.random.key(0)), x
    )
    assert mean.shape == log_std.shape == (3, LATENT)
    assert logits.shape == x.shape
    assert elbo.shape == (3,)


def test_vae_forward_is_finite_and_decoder_checks_its_shape():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((2, 28, 28, 1)) > 0.5, jnp.float32)
    shapes = (
        jax.eval_shape(ConvEncoder(LATENT).init, jax.random.key(0), x),
        jax.eval_shape(ConvDecoder((28, 28, 1)).init, jax.random.key(0), jnp.zeros((1, LATENT))),
    )
    params = jax.tree.map(
        lambda s: jnp.asarray(0.05 * rng.normal(size=s.shape), jnp.float32), shapes
    )
    outputs = jax.jit(lambda x: vae_forward((28, 28, 1), x, jax.random.key(0), params))(x)
    assert all(np.all(np.isfinite(np.asarray(o))) for o in outputs)
    assert np.all(np.asarray(outputs[3]) < 0)  # a log-likelihood bound of binary data
    with pytest.raises(ValueError, match="divisible by 4"):
        jax.eval_shape(ConvDecoder((30, 30, 1)).init, jax.random.key(0), jnp.zeros((1, LATENT)))


kl_fn = jax.jit(gaussian_kl_to_standard_normal)
log_likelihood_fn = jax.jit(bernoulli_log_likelihood)


def test_kl_closed_form_matches_float64_formula_and_is_zero_at_the_prior():
    rng = np.random.default_rng(0)
    mean, log_std = rng.normal(size=(5, 3)), 0.5 * rng.normal(size=(5, 3))
    with jax.enable_x64(True):
        kl = np.asarray(kl_fn(jnp.asarray(mean), jnp.asarray(log_std)))
        zero = np.asarray(kl_fn(jnp.zeros((5, 3)), jnp.zeros((5, 3))))
    std = np.exp(log_std)
    # KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2, m2 = 0, s2 = 1.
    expected = np.sum(-np.log(std) + (std**2 + mean**2) / 2 - 0.5, axis=-1)
    np.testing.assert_allclose(kl, expected, rtol=1e-13)
    np.testing.assert_array_equal(zero, np.zeros(5))


def test_kl_closed_form_matches_monte_carlo():
    rng = np.random.default_rng(1)
    mean, log_std = np.array([0.5, -1.0, 0.2, 0.0]), np.array([-0.3, 0.4, 0.0, -1.0])
    num_samples = 200_000
    z = mean + np.exp(log_std) * rng.normal(size=(num_samples, 4))
    log_q = np.sum(-0.5 * ((z - mean) / np.exp(log_std)) ** 2 - log_std, axis=-1)
    log_p = np.sum(-0.5 * z**2, axis=-1)  # the shared -1/2 log(2 pi) terms cancel
    samples = log_q - log_p
    standard_error = samples.std() / np.sqrt(num_samples)
    kl = float(
        kl_fn(jnp.asarray(mean[None], jnp.float32), jnp.asarray(log_std[None], jnp.float32))[0]
    )
    assert abs(samples.mean() - kl) < 3 * standard_error
    assert standard_error < 0.01 * kl  # the check has power


def test_bernoulli_log_likelihood_matches_naive_form_and_is_stable():
    rng = np.random.default_rng(2)
    logits = rng.uniform(-6.0, 6.0, size=(3, 4, 4, 2))
    binary = (rng.random(logits.shape) > 0.5).astype(np.float64)
    soft = rng.random(logits.shape)
    p = 1.0 / (1.0 + np.exp(-logits))
    with jax.enable_x64(True):
        for x in (binary, soft):
            got = np.asarray(log_likelihood_fn(jnp.asarray(logits), jnp.asarray(x)))
            naive = np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=(1, 2, 3))
            np.testing.assert_allclose(got, naive, rtol=1e-12)
    extreme = jnp.array([[100.0, -100.0, 100.0, -100.0]])
    x = jnp.array([[1.0, 0.0, 0.0, 1.0]])
    value_and_grad = jax.jit(
        jax.value_and_grad(lambda logits: bernoulli_log_likelihood(logits, x).sum())
    )
    value, grad = value_and_grad(extreme)
    np.testing.assert_allclose(value, -200.0, rtol=1e-6)  # the right pairs cost ~0, the wrong ~100
    np.testing.assert_allclose(grad, [[0.0, 0.0, -1.0, 1.0]], atol=1e-6)


def test_reparameterize_has_the_right_moments_and_gradients():
    mean, log_std = jnp.array([1.0, -2.0, 0.0]), jnp.array([0.0, -1.0, 0.5])
    num_samples = 100_000
    key = jax.random.key(3)

    @jax.jit
    def samples_and_jacobians(mean, log_std):
        shape = (num_samples, 3)
        z = reparameterize(key, jnp.broadcast_to(mean, shape), jnp.broadcast_to(log_std, shape))
        jacobians = jax.jacrev(lambda m, s: reparameterize(key, m, s), argnums=(0, 1))(
            mean, log_std
        )
        return z, reparameterize(key, mean, log_std), jacobians

    z, z_single, (d_mean, d_log_std) = samples_and_jacobians(mean, log_std)
    z = np.asarray(z)
    std = np.exp(np.asarray(log_std))
    assert np.all(np.abs(z.mean(0) - np.asarray(mean)) < 4 * std / np.sqrt(num_samples))
    np.testing.assert_allclose(z.std(0), std, rtol=0.01)
    eps = (np.asarray(z_single) - np.asarray(mean)) / std
    np.testing.assert_allclose(d_mean, np.eye(3))
    np.testing.assert_allclose(d_log_std, np.diag(std * eps), rtol=1e-6)
