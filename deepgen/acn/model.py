"""The Associative Compression Network and its VAE baseline: encoder, prior, decoders, losses.

Graves et al., arXiv:1804.02476. The encoder gives the code c(x), the mean of q(z|x) = N(c, I)
(Sec. 3: "a unit variance, diagonal Gaussian for all encoding distributions"). The loss per image
(Eq. 3) is

    L_ACN(x) = E_{c_hat ~ KNN(x)} KL(q(z|x) || p(z|c_hat)) - E_{z ~ q(z|x)} log r(x|z),

and the VAE baseline replaces p(z|c_hat) by N(0, I) (closed-form KL |c|^2 / 2 with unit
variance). The decoder r(x|z) is feedforward (transposed convolutions) or a gated PixelCNN
conditioned on z, through a bias per block ("vector") or, as PixelVAE does, through a feature
map made from z by the feedforward decoder's layers ("map"); the PixelCNN is the "powerful
decoder" whose codes the paper claims a VAE lets collapse,
with a Bernoulli likelihood for binary images or the discretised logistic mixture of
PixelCNN++ (with its RGB coupling) for 8-bit colour.

The KL and the reconstruction are the two lines of the compression ledger: in nats per image,
their sum is the cost of sending an image given its neighbour's code (Sec. 4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepgen.acn import prior as prior_lib
from deepgen.layers import conv_vae, discretized_logistic
from deepgen.layers.masked_conv import GatedPixelCNN

DECODERS = ("feedforward", "pixelcnn")
CONDITIONINGS = ("vector", "map")
LIKELIHOODS = ("bernoulli", "logistic")
NUM_PIXEL_LEVELS = 256

# (code_BxZ, rng) -> c_hat_BxZ: the neighbour code that conditions the prior (stop-gradient).
NeighbourCodeFn = Callable[[jax.Array, jax.Array], jax.Array]


def decoder_channels(likelihood: str, image_channels: int, num_mixtures: int) -> int:
    """Outputs per pixel: one logit per channel (Bernoulli) or the PixelCNN++ mixture parameters."""
    if likelihood == "bernoulli":
        return image_channels
    return discretized_logistic.pixelcnn_pp_num_params(image_channels, num_mixtures)


class ACNModel(nn.Module):
    """Encoder, prior network (ACN; none for the VAE) and decoder of one image shape."""

    image_shape: tuple[int, int, int]
    latent_dim: int
    use_prior_network: bool = True
    decoder: str = "feedforward"
    likelihood: str = "bernoulli"
    encoder_channels: Sequence[int] = (32, 64)
    decoder_channels: Sequence[int] = (64, 32)
    pixelcnn_layers: int = 5
    pixelcnn_features: int = 32
    num_mixtures: int = 5
    prior_components: int = 3
    prior_hidden_units: int = 512
    code_init_scale: float = 1.0
    pixelcnn_conditioning: str = "vector"

    def setup(self):
        self.encoder = conv_vae.ConvEncoder(
            self.latent_dim,
            tuple(self.encoder_channels),
            unit_variance=True,
            head_init_scale=self.code_init_scale,
        )
        if self.use_prior_network:
            self.prior_network = prior_lib.PriorNetwork(
                self.latent_dim, self.prior_components, self.prior_hidden_units
            )
        out = decoder_channels(self.likelihood, self.image_shape[-1], self.num_mixtures)
        if self.decoder == "feedforward":
            height, width, _ = self.image_shape
            self.decoder_net = conv_vae.ConvDecoder(
                (height, width, out), tuple(self.decoder_channels)
            )
        else:
            self.decoder_net = GatedPixelCNN(self.pixelcnn_layers, self.pixelcnn_features, out)
            if self.pixelcnn_conditioning == "map":
                height, width, _ = self.image_shape
                self.condition_net = conv_vae.ConvDecoder(
                    (height, width, self.pixelcnn_features), tuple(self.decoder_channels)
                )

    def encode(self, x_BxHxWxC: jax.Array) -> jax.Array:
        """The code c(x), the mean of q(z|x) = N(c, I); shape B x Z."""
        return self.encoder(x_BxHxWxC)[0]

    def prior(self, code_hat_BxZ: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(logits, means, log_scales) of p(z | c_hat), each B x Z x M."""
        return self.prior_network(code_hat_BxZ)

    def decode(self, x_BxHxWxC: jax.Array, z_BxZ: jax.Array) -> jax.Array:
        """Per-pixel likelihood parameters; the PixelCNN reads x only at earlier pixels."""
        if self.decoder == "feedforward":
            return self.decoder_net(z_BxZ)
        if self.pixelcnn_conditioning == "map":
            # PixelVAE-style: z becomes a feature map by the feedforward decoder's layers, and
            # conditions every position of the PixelCNN (it depends on z only, never on x).
            return self.decoder_net(x_BxHxWxC, self.condition_net(z_BxZ))
        return self.decoder_net(x_BxHxWxC, z_BxZ)

    def __call__(self, x_BxHxWxC: jax.Array, z_BxZ: jax.Array) -> jax.Array:
        """Touches every submodule (for init): decoder output given x and z."""
        code = self.encode(x_BxHxWxC)
        if self.use_prior_network:
            self.prior(code)
        return self.decode(x_BxHxWxC, z_BxZ)


def log_likelihood(model: ACNModel, out_BxHxWxP: jax.Array, x_BxHxWxC: jax.Array) -> jax.Array:
    """log r(x|z) in nats per image from the decoder's output; shape B."""
    if model.likelihood == "bernoulli":
        return conv_vae.bernoulli_log_likelihood(out_BxHxWxP, x_BxHxWxC)
    per_pixel_BxHxW = discretized_logistic.pixelcnn_pp_log_prob(
        x_BxHxWxC, out_BxHxWxP, num_mixtures=model.num_mixtures, num_bins=NUM_PIXEL_LEVELS
    )
    return jnp.sum(per_pixel_BxHxW.reshape(per_pixel_BxHxW.shape[0], -1), axis=-1)


def ledger_terms(
    params,
    *,
    model: ACNModel,
    x_BxHxWxC: jax.Array,
    rng: jax.Array,
    code_hat_BxZ: jax.Array | None,
    code_BxZ: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(coding cost, reconstruction cost, code) per image: KL and -log r(x|z), both B, in nats.

    code_hat_BxZ None: the VAE's N(0, I) prior, closed form. Otherwise the one-sample estimate
    log q(z|x) - log p(z|c_hat) with the z that the reconstruction uses. code_BxZ: c(x) when
    the caller has it already.
    """
    if code_BxZ is None:
        code_BxZ = model.apply(params, x_BxHxWxC, method=ACNModel.encode)
    z_BxZ = code_BxZ + jax.random.normal(rng, code_BxZ.shape, code_BxZ.dtype)
    if code_hat_BxZ is None:
        kl_B = 0.5 * jnp.sum(jnp.square(code_BxZ), axis=-1)
    else:
        logits, means, log_scales = model.apply(params, code_hat_BxZ, method=ACNModel.prior)
        kl_B = prior_lib.kl_estimate(
            z_BxZ=z_BxZ,
            code_BxZ=code_BxZ,
            logits_BxZxM=logits,
            means_BxZxM=means,
            log_scales_BxZxM=log_scales,
        )
    out = model.apply(params, x_BxHxWxC, z_BxZ, method=ACNModel.decode)
    return kl_B, -log_likelihood(model, out, x_BxHxWxC), code_BxZ


def acn_loss(
    params,
    *,
    model: ACNModel,
    x_BxHxWxC: jax.Array,
    rng: jax.Array,
    neighbour_code_fn: NeighbourCodeFn | None,
) -> tuple[jax.Array, dict]:
    """The mean of Eq. 3 over the batch (nats per image) and its parts; VAE if no neighbour_code_fn.

    neighbour_code_fn(code, rng) searches the table with the stop-gradient code and returns the
    drawn neighbour's code c_hat; the auxiliary output carries the codes for the table refresh.
    """
    rng_neighbour, rng_z = jax.random.split(rng)
    code_BxZ = model.apply(params, x_BxHxWxC, method=ACNModel.encode)
    code_hat = None
    if neighbour_code_fn is not None:
        code_hat = jax.lax.stop_gradient(
            neighbour_code_fn(jax.lax.stop_gradient(code_BxZ), rng_neighbour)
        )
    kl_B, recon_B, code_BxZ = ledger_terms(
        params,
        model=model,
        x_BxHxWxC=x_BxHxWxC,
        rng=rng_z,
        code_hat_BxZ=code_hat,
        code_BxZ=code_BxZ,
    )
    kl, recon = jnp.mean(kl_B), jnp.mean(recon_B)
    return kl + recon, {"kl": kl, "reconstruction": recon, "code": code_BxZ}


def sample_images(
    params, *, model: ACNModel, z_BxZ: jax.Array, rng: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(x ~ r(x|z), the decoder's mean image) in the data's units ({0,1} or [-1,1] bin centres).

    Feedforward: every pixel at once. PixelCNN: pixel by pixel in raster order in one fori_loop,
    each step re-running the decoder on the image so far (the naive sampler); the mean image is
    that of the last step's per-pixel distributions.
    """
    height, width, channels = model.image_shape
    batch = z_BxZ.shape[0]

    def draw(out_BxHxWxP, key):
        if model.likelihood == "bernoulli":
            probs = jax.nn.sigmoid(out_BxHxWxP)
            return jax.random.bernoulli(key, probs).astype(jnp.float32), probs
        x = discretized_logistic.pixelcnn_pp_sample(
            key, out_BxHxWxP, num_mixtures=model.num_mixtures, num_bins=NUM_PIXEL_LEVELS
        )
        return x, x

    decode = lambda x: model.apply(params, x, z_BxZ, method=ACNModel.decode)
    empty = jnp.zeros((batch, height, width, channels), jnp.float32)
    if model.decoder == "feedforward":
        return draw(decode(empty), rng)

    def one_pixel(position, x):
        row, col = position // width, position % width
        pixel_out = jax.lax.dynamic_slice_in_dim(
            jax.lax.dynamic_slice_in_dim(decode(x), row, 1, axis=1), col, 1, axis=2
        )
        value, _ = draw(pixel_out, jax.random.fold_in(rng, position))
        return jax.lax.dynamic_update_slice(x, value, (0, row, col, 0))

    x = jax.lax.fori_loop(0, height * width, one_pixel, empty)
    return x, draw(decode(x), rng)[1]
