"""The Kanerva Machine (Wu, Wayne, Graves and Lillicrap, arXiv:1804.01756): networks, episode ELBO.

The generative model, reading and writing inference models of the paper's Fig. 1 and the episode
ELBO of its Sec. 3, as reconstructed in `shared/specs/acn_kanerva.md` Sec. 2.2. The paper's text was
not read, so every equation and size below is recalled [R] or my choice [D], not quoted:

* [R] Generative model: p(M) = MN(R0, sigma0^2 I_K, I_C) with learned R0 and sigma0^2; a key
  y_t ~ N(0, I); an address w_t^T = b(y_t)^T A with a learned key network b and address matrix A
  (S x K); a read z_t | y_t, M ~ N(w_t^T M, sigma_xi^2 I_C) with learned sigma_xi^2; and the
  decoder p(x_t | z_t) (Bernoulli, binary images).
* [R] Reading inference: q(y_t | x_t) = N(mu_y(e(x_t)), diag sigma_y^2) from the encoder e, and
  q(z_t | x_t, y_t, M) a diagonal Gaussian from an MLP on [e(x_t), w_t^T M], "top-down memory
  and bottom-up perception" (quoted from the abstract).
* [R] Writing inference: encoder-only posteriors for y and z, then the exact Bayesian update of
  M given (W, Z) (`memory.write_batch`), giving q(M | X).
* [R] ELBO per episode X = x_{1:T}:
  E_q(M|X) sum_t E[log p(x_t|z_t)] - sum_t KL(q(y_t|x_t) || p(y_t))
  - sum_t E[KL(q(z_t|x_t,y_t,M) || p(z_t|y_t,M))] - KL(q(M|X) || p(M)).
* [D] The code written for x_t is a sample of q(z_t | x_t, y_t, M) with M fixed at the prior mean
  R0: the read-inference network before the episode is written, so a function of x_t (and of
  learned parameters) only, as an encoder-only posterior must be. It reuses the read network, so
  no write head is trained through the memory alone and the codes written and read live in one
  space; a separate encoder-only head would be the other reading of the notes.
* [D] Sizes: the paper's Omniglot run used C = 100 and K = 32 [R]; S, the key size, the MLP widths
  and the initial scales here are mine.
* [D] Initial scales: A ~ N(0, 1 / (S K)), so |w|^2 is about |b(y)|^2 / S, of order one;
  R0 ~ truncated N(0, 1) (the DKM code's initialiser); sigma0^2 = sigma_xi^2 = 1, so that before
  training the read prior of z is a unit-scale Gaussian, like the VAE's N(0, I).

Likelihoods: Bernoulli for binary images (Omniglot, MNIST); for colour (CIFAR-10) PixelCNN++'s
discretised logistic mixture over 256 levels per channel with the RGB coupling
(`deepgen.layers.discretized_logistic`), images as bin centres on [-1, 1]; the paper's CIFAR
likelihood is recalled only as "continuous or 256-way pixels", so this choice is [D]. use_memory=False is the VAE baseline with the same encoder, decoder and
z-posterior MLP (fed e(x) alone) and a N(0, I) prior over z; it has no keys and no memory.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepgen.kanerva import memory as mem
from deepgen.layers import conv_vae, discretized_logistic

LIKELIHOODS = ("bernoulli", "logistic")
NUM_PIXEL_LEVELS = 256
# sigma_xi^2 >= 1e-4: Sigma_z = W U W^T + sigma_xi^2 I must stay well conditioned in float32.
MIN_LOG_NOISE_VARIANCE = math.log(1e-4)
CORRUPTIONS = ("noise", "occlusion")


class MLP(nn.Module):
    """Dense layers with an activation between them (none after the last)."""

    hidden_units: Sequence[int]
    out_features: int

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        """h_BxD -> B x out_features."""
        for i, units in enumerate(self.hidden_units):
            h = nn.relu(nn.Dense(units, name=f"hidden_{i}")(h))
        return nn.Dense(self.out_features, name="out")(h)


class KanervaMachine(nn.Module):
    """Encoder, key posterior, addressing, memory prior, read inference and decoder of the KM."""

    image_shape: tuple[int, int, int]
    code_size: int = 100
    memory_size: int = 32
    key_size: int = 32
    key_latent_size: int = 32
    key_hidden_units: Sequence[int] = (64,)
    feature_size: int = 256
    posterior_hidden_units: Sequence[int] = (256,)
    encoder_channels: Sequence[int] = (32, 64)
    decoder_channels: Sequence[int] = (64, 32)
    likelihood: str = "bernoulli"
    num_mixtures: int = 5  # logistics per pixel (likelihood "logistic" only)
    normalize_addresses: bool = False
    use_memory: bool = True
    init_read_noise_variance: float = 1.0  # sigma_xi^2 at initialisation
    init_memory_variance: float = 1.0  # sigma0^2 (U0 = sigma0^2 I) at initialisation

    def setup(self):
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood={self.likelihood!r}: only {LIKELIHOODS} are built")
        self.encoder = conv_vae.ConvEncoder(
            self.feature_size, tuple(self.encoder_channels), unit_variance=True
        )
        self.z_posterior_net = MLP(tuple(self.posterior_hidden_units), 2 * self.code_size)
        height, width, channels = self.image_shape
        outputs = channels
        if self.likelihood == "logistic":
            outputs = discretized_logistic.pixelcnn_pp_num_params(channels, self.num_mixtures)
        self.decoder = conv_vae.ConvDecoder((height, width, outputs), tuple(self.decoder_channels))
        if not self.use_memory:
            return
        K, C, S = self.memory_size, self.code_size, self.key_size
        self.y_posterior_head = nn.Dense(2 * self.key_latent_size)
        self.key_net = MLP(tuple(self.key_hidden_units), S)
        self.A_SxK = self.param("A_SxK", nn.initializers.normal(1.0 / math.sqrt(S * K)), (S, K))
        self.R0_KxC = self.param("R0_KxC", nn.initializers.truncated_normal(1.0), (K, C))
        self.log_sigma0_sq = self.param(
            "log_sigma0_sq", nn.initializers.constant(math.log(self.init_memory_variance)), ()
        )
        self.log_noise_variance = self.param(
            "log_noise_variance",
            nn.initializers.constant(math.log(self.init_read_noise_variance)),
            (),
        )

    def encode(self, x_BxHxWxC: jax.Array) -> jax.Array:
        """The features e(x): a ReLU of the conv encoder's Dense head; B x feature_size."""
        return nn.relu(self.encoder(x_BxHxWxC)[0])

    def posterior_y(self, features_BxF: jax.Array) -> tuple[jax.Array, jax.Array]:
        """q(y | x): (mean, log_std), each B x key_latent_size."""
        mean_BxY, log_std_BxY = jnp.split(self.y_posterior_head(features_BxF), 2, axis=-1)
        return mean_BxY, log_std_BxY

    def address(self, y_BxY: jax.Array) -> jax.Array:
        """w^T = b(y)^T A; B x K."""
        return mem.addressing_weights(
            self.key_net(y_BxY), self.A_SxK, normalize=self.normalize_addresses
        )

    def prior_memory(self) -> mem.MemoryDistribution:
        """p(M) = MN(R0, sigma0^2 I, I)."""
        return mem.prior_memory(self.R0_KxC, log_sigma0_sq=self.log_sigma0_sq)

    def noise_variance(self) -> jax.Array:
        """sigma_xi^2, the read noise variance, floored at exp(MIN_LOG_NOISE_VARIANCE); a scalar."""
        return jnp.exp(jnp.maximum(self.log_noise_variance, MIN_LOG_NOISE_VARIANCE))

    def posterior_z(
        self, features_BxF: jax.Array, read_mean_BxC: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        """q(z | x, y, M): (mean, log_std), each B x C, from an MLP on [e(x), w^T M].

        read_mean_BxC None (the VAE, use_memory=False): the MLP sees e(x) alone.
        """
        if (read_mean_BxC is None) == self.use_memory:
            raise ValueError("posterior_z: give read_mean_BxC exactly when use_memory is set")
        h = features_BxF
        if read_mean_BxC is not None:
            h = jnp.concatenate([features_BxF, read_mean_BxC], axis=-1)
        mean_BxC, log_std_BxC = jnp.split(self.z_posterior_net(h), 2, axis=-1)
        return mean_BxC, log_std_BxC

    def decode(self, z_BxC: jax.Array) -> jax.Array:
        """p(x | z)'s parameters: Bernoulli logits (B x H x W x C) or the mixture's (B x H x W x P)."""
        return self.decoder(z_BxC)

    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        """Touches every submodule and parameter (for init): logits of the mean code."""
        features = self.encode(x_BxHxWxC)
        read_mean = None
        if self.use_memory:
            w_BxK = self.address(self.posterior_y(features)[0])
            read_mean = w_BxK @ self.prior_memory().R_KxC
            self.noise_variance()
        return self.decode(self.posterior_z(features, read_mean)[0])


def _memory_parameters(params, model: KanervaMachine) -> tuple[mem.MemoryDistribution, jax.Array]:
    """(p(M), sigma_xi^2) from the parameters."""
    prior = model.apply(params, method=KanervaMachine.prior_memory)
    return prior, model.apply(params, method=KanervaMachine.noise_variance)


def _write(
    params, *, model: KanervaMachine, features_BxTxF: jax.Array, rng: jax.Array
) -> tuple[tuple[jax.Array, jax.Array], jax.Array, mem.MemoryDistribution]:
    """The writing inference for B episodes: ((mean_y, log_std_y), W_BxTxK, q(M|X) batched over B).

    y_t ~ q(y|x_t) and z_t ~ q(z|x_t, y_t, M = R0) (the module docstring says why), both
    reparameterised; then the exact batch update of p(M) with (W, Z) per episode.
    """
    B, T, F = features_BxTxF.shape
    apply = functools.partial(model.apply, params)
    features_NxF = features_BxTxF.reshape(B * T, F)
    rng_y, rng_z = jax.random.split(rng)
    mean_y, log_std_y = apply(features_NxF, method=KanervaMachine.posterior_y)
    y_NxY = conv_vae.reparameterize(rng_y, mean_y, log_std_y)
    W_NxK = apply(y_NxY, method=KanervaMachine.address)
    prior, noise_variance = _memory_parameters(params, model)
    with jax.default_matmul_precision("highest"):
        prior_read_NxC = W_NxK @ prior.R_KxC
    z_NxC = conv_vae.reparameterize(
        rng_z, *apply(features_NxF, prior_read_NxC, method=KanervaMachine.posterior_z)
    )
    W_BxTxK = W_NxK.reshape(B, T, -1)
    write = functools.partial(mem.write_batch, noise_variance=noise_variance)
    with jax.default_matmul_precision("highest"):
        posterior = jax.vmap(write, in_axes=(None, 0, 0))(prior, W_BxTxK, z_NxC.reshape(B, T, -1))
    return (mean_y, log_std_y), W_BxTxK, posterior


def write_episode(
    params, *, model: KanervaMachine, x_TxHxWxC: jax.Array, rng: jax.Array
) -> mem.MemoryDistribution:
    """q(M | X) for one episode: the writing inference, with y and z sampled as in training."""
    features = model.apply(params, x_TxHxWxC, method=KanervaMachine.encode)
    _, _, posterior = _write(params, model=model, features_BxTxF=features[None], rng=rng)
    return jax.tree.map(lambda a: a[0], posterior)


def _reconstruction(model: KanervaMachine, out: jax.Array, x: jax.Array) -> jax.Array:
    """-log p(x | z) in nats per image, from the decoder's output; shape B."""
    if model.likelihood == "bernoulli":
        return -conv_vae.bernoulli_log_likelihood(out, x)
    per_pixel_BxHxW = discretized_logistic.pixelcnn_pp_log_prob(
        x, out, num_mixtures=model.num_mixtures, num_bins=NUM_PIXEL_LEVELS
    )
    return -jnp.sum(per_pixel_BxHxW.reshape(per_pixel_BxHxW.shape[0], -1), axis=-1)


def decoder_mean(model: KanervaMachine, out: jax.Array) -> jax.Array:
    """The image p(x | z) expects, in the data's units: Bernoulli probabilities in [0, 1], or the
    logistic mixture's (continuous) mean on [-1, 1]; the query fed back by iterative reading."""
    if model.likelihood == "bernoulli":
        return jax.nn.sigmoid(out)
    return discretized_logistic.pixelcnn_pp_mean(out, num_mixtures=model.num_mixtures)


def episode_elbo(
    params,
    *,
    model: KanervaMachine,
    x_BxTxHxWxC: jax.Array,
    rng: jax.Array,
    num_memory_samples: int = 1,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The negative episode ELBO, averaged over the B episodes (nats per episode), and its parts.

    Per episode: sum_t [-log p(x_t|z_t) + KL_y,t + KL_z,t] + KL(q(M|X) || p(M)), one sample of y
    and z per image, KL_y and KL_z in closed form. The metrics are per image (divided by T):
    nll_bound_per_image, reconstruction, kl_y, kl_z, kl_memory, and the learned variances.

    num_memory_samples >= 1: that many M ~ q(M|X) per episode, each giving its own z posterior,
    z sample and KL_z against N(w^T M, sigma_xi^2 I); the M-dependent terms are averaged (the
    paper's form, recalled). 0: no sample; q(z|...) reads the posterior mean w^T R and KL_z is its
    exact expectation over M ~ q(M|X), KL(q || N(w^T R, sigma_xi^2 I)) + C w^T U w / (2 sigma_xi^2)
    (V = I makes the C columns of w^T M independent with variance w^T U w): also a bound, of the
    same model with a q(z) that conditions on q(M|X) instead of a draw, and with less variance.
    The y_t and the written z_t are samples, so q(M|X) is a mixture over them and KL_memory is that
    of the sampled component: still a bound, looser by the mean KL from component to mixture.
    use_memory=False: the VAE, -log p(x_t|z_t) + KL(q(z_t|x_t) || N(0, I)) summed over the
    episode, so its loss is in the same units; kl_y and kl_memory are 0.
    """
    if num_memory_samples < 0:
        raise ValueError(f"num_memory_samples={num_memory_samples} must be >= 0")
    B, T = x_BxTxHxWxC.shape[:2]
    x_NxHxWxC = x_BxTxHxWxC.reshape(B * T, *x_BxTxHxWxC.shape[2:])
    apply = functools.partial(model.apply, params)
    features_NxF = apply(x_NxHxWxC, method=KanervaMachine.encode)
    zero = jnp.zeros((), features_NxF.dtype)

    if not model.use_memory:
        mean_z, log_std_z = apply(features_NxF, None, method=KanervaMachine.posterior_z)
        z_NxC = conv_vae.reparameterize(rng, mean_z, log_std_z)
        logits = apply(z_NxC, method=KanervaMachine.decode)
        recon_N = _reconstruction(model, logits, x_NxHxWxC)
        kl_z_N = conv_vae.gaussian_kl_to_standard_normal(mean_z, log_std_z)
        per_image = dict(
            reconstruction=jnp.mean(recon_N), kl_y=zero, kl_z=jnp.mean(kl_z_N), kl_memory=zero
        )
        return _loss_and_metrics(per_image, T)

    rng_write, rng_memory, rng_z = jax.random.split(rng, 3)
    (mean_y, log_std_y), W_BxTxK, posterior = _write(
        params, model=model, features_BxTxF=features_NxF.reshape(B, T, -1), rng=rng_write
    )
    prior, noise_variance = _memory_parameters(params, model)
    with jax.default_matmul_precision("highest"):
        kl_memory_B = jax.vmap(mem.matrix_normal_kl, in_axes=(0, None))(posterior, prior)
        if num_memory_samples == 0:
            read_mean_BxTxC, wUw_BxT = jax.vmap(functools.partial(mem.read, noise_variance=0.0))(
                posterior, W_BxTxK
            )
            read_SxBxTxC = read_mean_BxTxC[None]
        else:
            keys = jax.random.split(rng_memory, (num_memory_samples, B))
            M_SxBxKxC = jax.vmap(jax.vmap(mem.sample_memory), in_axes=(0, None))(keys, posterior)
            read_SxBxTxC = jnp.einsum("btk,sbkc->sbtc", W_BxTxK, M_SxBxKxC)
    # J = S * B * T reads: every image once per memory sample (once in all for the mean).
    num_samples = read_SxBxTxC.shape[0]
    read_JxC = read_SxBxTxC.reshape(-1, model.code_size)
    features_JxF = jnp.tile(features_NxF, (num_samples, 1))
    mean_z, log_std_z = apply(features_JxF, read_JxC, method=KanervaMachine.posterior_z)
    z_JxC = conv_vae.reparameterize(rng_z, mean_z, log_std_z)
    logits = apply(z_JxC, method=KanervaMachine.decode)
    recon_J = _reconstruction(model, logits, jnp.tile(x_NxHxWxC, (num_samples, 1, 1, 1)))
    log_noise_variance = jnp.log(noise_variance)
    kl_z_J = mem.gaussian_kl_diag(mean_z, 2.0 * log_std_z, read_JxC, log_noise_variance)
    if num_memory_samples == 0:
        kl_z_J = kl_z_J + 0.5 * model.code_size * wUw_BxT.reshape(-1) / noise_variance
    kl_y_N = conv_vae.gaussian_kl_to_standard_normal(mean_y, log_std_y)
    per_image = dict(
        reconstruction=jnp.mean(recon_J),
        kl_y=jnp.mean(kl_y_N),
        kl_z=jnp.mean(kl_z_J),
        kl_memory=jnp.mean(kl_memory_B) / T,
    )
    loss, metrics = _loss_and_metrics(per_image, T)
    metrics["read_noise_variance"] = noise_variance
    metrics["memory_prior_variance"] = prior.U_KxK[0, 0]
    return loss, metrics


def key_kl_weight(step: jax.Array, warmup_steps: int) -> jax.Array:
    """The weight of KL_y in the training loss at a step: (step + 1) / warmup_steps, at most 1.

    [D] A warm-up of the key KL alone (not in the paper as recalled; KL warm-up is the usual VAE
    device, Bowman et al. 2016). Without it q(y|x) collapses to the prior early on random and
    few-class Omniglot episodes (KL_y 0.9 nats per image by step 250): every image is then
    written and read at an address that does not depend on it, which the training bound does not
    punish (an image is read at the address it was written at) but iterative reading does (a query
    reads the one address b(0)^T A, whatever it shows). Measured on 4-class Omniglot episodes
    (benchmarks/RESULTS.md): a 500-step warm-up delays the collapse but does not prevent it once
    the weight is 1 (KL_y 0.31 at step 1,000); the bound does not pay for content addressing here.
    """
    if warmup_steps <= 0:
        return jnp.ones((), jnp.float32)
    return jnp.minimum(1.0, (step + 1).astype(jnp.float32) / warmup_steps)


def training_loss(
    loss: jax.Array, metrics: dict[str, jax.Array], *, key_kl_weight: jax.Array, T: int
) -> jax.Array:
    """The episode loss with KL_y weighted: loss - T (1 - weight) kl_y (metrics per image)."""
    return loss - T * (1.0 - key_kl_weight) * metrics["kl_y"]


def _loss_and_metrics(per_image: dict[str, jax.Array], T: int) -> tuple[jax.Array, dict]:
    """(nats per episode, metrics per image) from the per-image means of the four terms."""
    bound = sum(per_image.values())
    return T * bound, {"nll_bound_per_image": bound, **per_image}


def iterative_read(
    params,
    *,
    model: KanervaMachine,
    memory: mem.MemoryDistribution,
    x_query_BxHxWxC: jax.Array,
    num_iterations: int,
    rng: jax.Array,
    sample: bool = False,
    binarise_feedback: bool = False,
) -> jax.Array:
    """Reconstructions from reading one memory with B queries, fed back num_iterations times.

    Each read: y from q(y|x), w = address(y), z from q(z|x, y, M) with the read-out w^T M, and
    the image p(x|z) expects (`decoder_mean`: Bernoulli probabilities, or the logistic mixture's
    mean), which is the next query (mean-field: the encoder takes soft inputs, and the means carry
    no sampling noise). binarise_feedback (Bernoulli only): feed back the most probable binary
    image (probabilities > 1/2) instead, an input like the binary images the encoder was trained
    on; the returned reads are still the probabilities. sample=False: the means of q(y|x)
    and q(z|...) and M = the memory's mean R (a deterministic clean-up); True: y, z and one M per
    call are sampled. Returns (num_iterations + 1) x B x H x W x C in the data's units: the first
    read's reconstruction, then one per feedback.
    """
    if not model.use_memory:
        raise ValueError("iterative_read needs use_memory=True")
    if binarise_feedback and model.likelihood != "bernoulli":
        raise ValueError("binarise_feedback needs the Bernoulli likelihood (binary images)")
    rng_memory, rng_reads = jax.random.split(rng)
    if sample:
        with jax.default_matmul_precision("highest"):
            M_KxC = mem.sample_memory(rng_memory, memory)
    else:
        M_KxC = memory.R_KxC
    apply = functools.partial(model.apply, params)

    def one_read(x_BxHxWxC, key):
        rng_y, rng_z = jax.random.split(key)
        features = apply(x_BxHxWxC, method=KanervaMachine.encode)
        mean_y, log_std_y = apply(features, method=KanervaMachine.posterior_y)
        y = conv_vae.reparameterize(rng_y, mean_y, log_std_y) if sample else mean_y
        w_BxK = apply(y, method=KanervaMachine.address)
        with jax.default_matmul_precision("highest"):
            read_BxC = w_BxK @ M_KxC
        mean_z, log_std_z = apply(features, read_BxC, method=KanervaMachine.posterior_z)
        z = conv_vae.reparameterize(rng_z, mean_z, log_std_z) if sample else mean_z
        image = decoder_mean(model, apply(z, method=KanervaMachine.decode))
        return feedback_query(image, binarise_feedback), image

    _, reads = jax.lax.scan(
        one_read, x_query_BxHxWxC, jax.random.split(rng_reads, num_iterations + 1)
    )
    return reads


def feedback_query(image: jax.Array, binarise: bool) -> jax.Array:
    """The next query of iterative reading: the read-out image, or its most probable binary image."""
    return (image > 0.5).astype(image.dtype) if binarise else image


def occlusion_side(height: int, width: int, amount: float) -> int:
    """The side of the square patch covering about a fraction amount of an H x W image."""
    return max(0, min(height, width, round(math.sqrt(amount * height * width))))


def corrupt(
    rng: jax.Array, x: jax.Array, *, kind: str, amount: float, binary: bool = True
) -> jax.Array:
    """Corrupted queries for x (... x H x W x C: binary {0, 1}, or colour on [-1, 1]).

    "noise": each pixel (all its channels together) is hit with probability amount: a binary
    pixel is flipped, x -> 1 - x (salt-and-pepper); a colour pixel becomes a uniform random colour
    on [-1, 1]^C. "occlusion": a square patch of side `occlusion_side(H, W, amount)` at a uniformly
    random position per image is set to 0 (black for binary images, mid-grey on [-1, 1]); amount
    must be a Python number there (the side is static).
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"kind={kind!r} not in {CORRUPTIONS}")
    *batch, height, width, _ = x.shape
    if kind == "noise":
        hit = jax.random.bernoulli(rng, amount, (*batch, height, width, 1))
        if binary:
            return jnp.where(hit, 1.0 - x, x)
        value_key = jax.random.fold_in(rng, 1)
        value = jax.random.uniform(value_key, x.shape, x.dtype, minval=-1.0, maxval=1.0)
        return jnp.where(hit, value, x)
    side = occlusion_side(height, width, amount)
    rng_row, rng_col = jax.random.split(rng)
    top = jax.random.randint(rng_row, (*batch, 1, 1, 1), 0, height - side + 1)
    left = jax.random.randint(rng_col, (*batch, 1, 1, 1), 0, width - side + 1)
    rows = jnp.arange(height)[:, None, None]
    cols = jnp.arange(width)[None, :, None]
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return jnp.where(inside, jnp.zeros((), x.dtype), x)
