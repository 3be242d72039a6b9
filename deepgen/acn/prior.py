"""ACN's prior network p(z | c_hat) and the coding cost it implies.

Graves et al., arXiv:1804.02476, Sec. 3 and Appendix: "The prior network was an MLP with three
hidden layers each containing 512 tanh units, and skip connections from the input to all hidden
layers and all hiddens to the output layer" (quoted from the paper). Its output is a mixture of
Gaussians for every latent dimension,

    p(z | c_hat) = prod_d sum_m pi_dm N(z_d; mu_dm, sigma_dm^2),

(the mixture form is recalled from the paper, the number of components m is a config field).
With a mixture there is no closed-form KL, so the coding cost of Eq. 3 is estimated with the
posterior sample that the reconstruction term uses:

    KL(q(z|x) || p(z|c_hat)) ~= log q(z|x) - log p(z|c_hat),   z ~ q(z|x) = N(c(x), I).

The estimate is unbiased for the KL; with one component its mean equals the closed form
(`gaussian_kl`), which the tests check.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

LOG_2PI = math.log(2.0 * math.pi)
MIN_LOG_SCALE = -7.0  # sigma >= 9e-4: keeps log p finite when a component collapses


class PriorNetwork(nn.Module):
    """c_hat_BxZ -> (logits, means, log_scales), each B x Z x M: a per-dimension Gaussian mixture."""

    latent_dim: int
    num_components: int = 3
    hidden_units: int = 512
    num_hidden_layers: int = 3

    @nn.compact
    def __call__(self, code_BxZ: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Skips: the input feeds every hidden layer; every hidden layer feeds the output."""
        hiddens = []
        h = code_BxZ
        for layer in range(self.num_hidden_layers):
            inputs = code_BxZ if layer == 0 else jnp.concatenate([code_BxZ, h], axis=-1)
            h = jnp.tanh(nn.Dense(self.hidden_units, name=f"hidden_{layer}")(inputs))
            hiddens.append(h)
        z, m = self.latent_dim, self.num_components
        out = nn.Dense(3 * z * m, name="out")(jnp.concatenate(hiddens, axis=-1))
        logits, means, log_scales = jnp.split(out.reshape(-1, z, 3 * m), 3, axis=-1)
        return logits, means, jnp.maximum(log_scales, MIN_LOG_SCALE)


def gaussian_log_density(z: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
    """log N(z; mean, exp(log_scale)^2) elementwise."""
    return -0.5 * (jnp.square((z - mean) * jnp.exp(-log_scale)) + LOG_2PI) - log_scale


def mixture_log_density(
    z_BxZ: jax.Array, logits_BxZxM: jax.Array, means_BxZxM: jax.Array, log_scales_BxZxM: jax.Array
) -> jax.Array:
    """log p(z) under the per-dimension mixture, summed over dimensions; shape B."""
    per_component = jax.nn.log_softmax(logits_BxZxM, axis=-1) + gaussian_log_density(
        z_BxZ[..., None], means_BxZxM, log_scales_BxZxM
    )
    return jnp.sum(jax.nn.logsumexp(per_component, axis=-1), axis=-1)


def posterior_log_density(z_BxZ: jax.Array, code_BxZ: jax.Array) -> jax.Array:
    """log q(z|x) = log N(z; c, I), summed over dimensions; shape B."""
    return jnp.sum(gaussian_log_density(z_BxZ, code_BxZ, jnp.zeros_like(code_BxZ)), axis=-1)


def kl_estimate(
    *,
    z_BxZ: jax.Array,
    code_BxZ: jax.Array,
    logits_BxZxM: jax.Array,
    means_BxZxM: jax.Array,
    log_scales_BxZxM: jax.Array,
) -> jax.Array:
    """log q(z|x) - log p(z|c_hat) for a posterior sample z: the one-sample KL estimate; shape B."""
    return posterior_log_density(z_BxZ, code_BxZ) - mixture_log_density(
        z_BxZ, logits_BxZxM, means_BxZxM, log_scales_BxZxM
    )


def gaussian_kl(
    *, code_BxZ: jax.Array, prior_mean_BxZ: jax.Array, prior_log_scale_BxZ: jax.Array
) -> jax.Array:
    """KL(N(c, I) || N(mu, sigma^2)) in closed form, summed over dimensions; shape B."""
    variance_ratio = jnp.exp(-2.0 * prior_log_scale_BxZ)
    return 0.5 * jnp.sum(
        variance_ratio * (1.0 + jnp.square(code_BxZ - prior_mean_BxZ))
        - 1.0
        + 2.0 * prior_log_scale_BxZ,
        axis=-1,
    )


def sample_mixture(
    rng: jax.Array, logits_BxZxM: jax.Array, means_BxZxM: jax.Array, log_scales_BxZxM: jax.Array
) -> jax.Array:
    """z ~ p(z | c_hat): a component per dimension, then its Gaussian; shape B x Z."""
    rng_component, rng_noise = jax.random.split(rng)
    component_BxZ = jax.random.categorical(rng_component, logits_BxZxM, axis=-1)
    pick = lambda a: jnp.take_along_axis(a, component_BxZ[..., None], axis=-1)[..., 0]
    noise = jax.random.normal(rng_noise, component_BxZ.shape, means_BxZxM.dtype)
    return pick(means_BxZxM) + jnp.exp(pick(log_scales_BxZxM)) * noise
