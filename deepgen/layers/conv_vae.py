"""A small convolutional VAE encoder/decoder and its Gaussian/Bernoulli helpers.

Shared by ACN (Graves et al., arXiv:1804.02476, Sec. 2: the encoder mean is the code; the VAE
baseline uses KL(q(z|x) || N(0, I))) and the Kanerva Machine (Wu et al., arXiv:1804.01756, Sec. 3:
conv encoder e(x) and decoder p(x|z), Bernoulli likelihood for binary images). The VAE pieces follow
Kingma & Welling (arXiv:1312.6114): reparameterisation z = mean + exp(log_std) * eps (Sec. 2.4) and
the closed-form KL to a standard normal (Appendix B):
KL(N(m, s^2) || N(0, 1)) = 1/2 sum_z (m^2 + s^2 - 1 - 2 log s).
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepgen.layers import conv as conv_lib


class ConvEncoder(nn.Module):
    """x_BxHxWxC -> (mean_BxZ, log_std_BxZ): stride-2 convs, then a Dense head.

    unit_variance: the head gives only the mean and log_std is 0 (ACN's q(z|x) = N(c(x), I)).
    head_init_scale: the standard deviation of the head's initial outputs relative to LeCun's.
    """

    latent_dim: int
    channels: Sequence[int] = (32, 64)
    kernel_size: int = 4
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    unit_variance: bool = False
    head_init_scale: float = 1.0

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Each conv halves H and W (rounding up): 28 -> 14 -> 7, 32 -> 16 -> 8."""
        h = x_BxHxWxC
        for i, c in enumerate(self.channels):
            k = self.kernel_size
            h = self.activation(
                nn.Conv(
                    c,
                    (k, k),
                    strides=(2, 2),
                    conv_general_dilated=conv_lib.default_conv_general_dilated,
                    name=f"conv_{i}",
                )(h)
            )
        h_BxD = h.reshape(h.shape[0], -1)
        if self.unit_variance:
            init = nn.initializers.variance_scaling(self.head_init_scale**2, "fan_in", "normal")
            mean_BxZ = nn.Dense(self.latent_dim, kernel_init=init, name="head")(h_BxD)
            return mean_BxZ, jnp.zeros_like(mean_BxZ)
        out_Bx2Z = nn.Dense(2 * self.latent_dim, name="head")(h_BxD)
        mean_BxZ, log_std_BxZ = jnp.split(out_Bx2Z, 2, axis=-1)
        return mean_BxZ, log_std_BxZ


class ConvDecoder(nn.Module):
    """z_BxZ -> logits B x H x W x C (output_shape = (H, W, C)): Dense, stride-2 transposed convs, a 3x3 conv."""

    output_shape: tuple[int, int, int]
    channels: Sequence[int] = (64, 32)
    kernel_size: int = 4
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, z_BxZ: jax.Array) -> jax.Array:
        """H and W must be divisible by 2 ** len(channels); the Dense output is the smallest map."""
        height, width, out_channels = self.output_shape
        scale = 2 ** len(self.channels)
        if height % scale or width % scale:
            raise ValueError(
                f"output_shape={tuple(self.output_shape)}: H and W must be divisible by {scale} "
                f"(2 ** len(channels={tuple(self.channels)}))"
            )
        h0, w0, c0 = height // scale, width // scale, self.channels[0]
        h = self.activation(nn.Dense(h0 * w0 * c0, name="project")(z_BxZ))
        h = h.reshape(z_BxZ.shape[0], h0, w0, c0)
        k = self.kernel_size
        for i, c in enumerate(self.channels):
            h = conv_lib.ConvTranspose(
                c, (k, k), strides=(2, 2), padding="SAME", name=f"deconv_{i}"
            )(h)
            h = self.activation(h)
        return nn.Conv(
            out_channels,
            (3, 3),
            conv_general_dilated=conv_lib.default_conv_general_dilated,
            name="logits",
        )(h)


def gaussian_kl_to_standard_normal(mean_BxZ: jax.Array, log_std_BxZ: jax.Array) -> jax.Array:
    """KL(N(mean, exp(log_std)^2) || N(0, I)) in closed form, summed over the last axis: shape B."""
    return 0.5 * jnp.sum(
        jnp.square(mean_BxZ) + jnp.exp(2.0 * log_std_BxZ) - 1.0 - 2.0 * log_std_BxZ, axis=-1
    )


def reparameterize(rng: jax.Array, mean_BxZ: jax.Array, log_std_BxZ: jax.Array) -> jax.Array:
    """z = mean + exp(log_std) * eps with eps ~ N(0, I): a sample differentiable in mean and log_std."""
    dtype = jnp.result_type(mean_BxZ, log_std_BxZ)
    eps_BxZ = jax.random.normal(rng, jnp.broadcast_shapes(mean_BxZ.shape, log_std_BxZ.shape), dtype)
    return mean_BxZ + jnp.exp(log_std_BxZ) * eps_BxZ


def bernoulli_log_likelihood(logits: jax.Array, x: jax.Array) -> jax.Array:
    """Per-example sum of x log sigmoid(l) + (1 - x) log sigmoid(-l) (stable; x may be soft): shape B."""
    per_dim = x * jax.nn.log_sigmoid(logits) + (1.0 - x) * jax.nn.log_sigmoid(-logits)
    return jnp.sum(per_dim.reshape(per_dim.shape[0], -1), axis=-1)
