"""n-step BFN samplers (BFN paper, Graves et al. 2023, arXiv 2308.07037, the sample-generation algorithms of Secs. 4-6).

Each sampler is one lax.scan over i = 1..n with t = (i-1)/n: the network reads the input parameters
theta at time t, a sample is drawn from its output distribution, y ~ sender(sample, alpha_i) and
theta <- Bayesian update; then one readout at t = 1 gives the returned sample.
  continuous (Alg. 3)   x_hat = data_estimate(mu, eps_hat, t) (a point mass), y ~ N(x_hat, 1/alpha_i)
  discretised (Alg. 6)  k ~ p_O(. | theta; t) over K bins, y ~ N(k_c, 1/alpha_i); readout: mode bin centre
  discrete (Alg. 9)     k ~ p_O(. | theta; t), y ~ N(alpha_i (K e_k - 1), alpha_i K I); readout: argmax
(The official code skipped the n-th update until May 2024; here the scan runs all n.)

Conditional generation by clamping (infilling for text, inpainting for images): every sampler takes
an optional known_mask and known_values, both broadcastable to (batch_size, *variable_shape). At
known positions the sender sample of every step is drawn from the known value instead of from the
network's sample, so theta there follows the Bayesian flow of the known data, exactly as in training,
and the network conditions on it; the returned sample equals the known value there. This is the BFN
analogue of replacement-based diffusion inpainting. Unknown positions are sampled as without a mask,
with the same random numbers, so a network that treats positions independently gives them unchanged.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from deepgen.bfn import continuous, discrete

# (mu_BxD, t_B, rng) -> eps_hat_BxD, the predicted noise of the continuous (point-estimate) model.
EpsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
# (mu_BxD, t_B, rng) -> (eps_mean_BxD, eps_log_std_BxD), the discretised model's output.
OutputFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
Known = tuple[jax.Array, jax.Array] | None


def _known(
    known_mask: jax.Array | None,
    known_values: jax.Array | None,
    shape: tuple[int, ...],
    dtype: jnp.dtype,
) -> Known:
    """(mask, values) broadcast to shape, or None when nothing is clamped."""
    if known_mask is None and known_values is None:
        return None
    if known_mask is None or known_values is None:
        raise ValueError("known_mask and known_values must be given together")
    mask = jnp.broadcast_to(jnp.asarray(known_mask, jnp.bool_), shape)
    return mask, jnp.broadcast_to(jnp.asarray(known_values, dtype), shape)


def _clamp(x: jax.Array, known: Known) -> jax.Array:
    """x with the known values put in at the known positions."""
    return x if known is None else jnp.where(known[0], known[1], x)


def sample_discrete(
    log_probs_fn: discrete.LogProbsFn,
    *,
    rng: jax.Array,
    batch_size: int,
    variable_shape: tuple[int, ...],
    num_classes: int,
    n_steps: int,
    beta1: float,
    known_mask: jax.Array | None = None,
    known_values: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Returns (samples of shape (batch_size, *variable_shape), final probabilities ...xK).

    known_values are class indices in [0, K); the samples equal them where known_mask is true, while
    the probabilities are the network's t = 1 output everywhere (known positions included).
    """
    shape = (batch_size, *variable_shape)
    known = _known(known_mask, known_values, shape, jnp.int32)
    theta_BxDxK = discrete.prior_theta(shape, num_classes)

    def update(theta: jax.Array, i: jax.Array) -> tuple[jax.Array, None]:
        rng_net, rng_class, rng_sender = jax.random.split(jax.random.fold_in(rng, i), 3)
        t_B = jnp.full((batch_size,), (i - 1) / n_steps, jnp.float32)
        log_probs = log_probs_fn(theta, t_B, rng_net)
        k = _clamp(jax.random.categorical(rng_class, log_probs, axis=-1), known)
        alpha = discrete.step_accuracy(i, n_steps=n_steps, beta1=beta1)
        y = discrete.sender_sample(jax.nn.one_hot(k, num_classes), alpha, rng_sender)
        return discrete.bayesian_update(theta, y), None

    steps = jnp.arange(1, n_steps + 1, dtype=jnp.float32)
    theta_BxDxK, _ = jax.lax.scan(update, theta_BxDxK, steps)
    t_final = jnp.ones((batch_size,), jnp.float32)
    rng_final = jax.random.fold_in(rng, n_steps + 1)
    probs = jnp.exp(log_probs_fn(theta_BxDxK, t_final, rng_final))
    return _clamp(jnp.argmax(probs, axis=-1), known), probs


def sample_continuous(
    eps_fn: EpsFn,
    *,
    rng: jax.Array,
    batch_size: int,
    variable_shape: tuple[int, ...],
    n_steps: int,
    sigma1: float,
    known_mask: jax.Array | None = None,
    known_values: jax.Array | None = None,
) -> jax.Array:
    """Returns x_hat at t = 1, shape (batch_size, *variable_shape), in [-1, 1] except known values."""
    shape = (batch_size, *variable_shape)
    known = _known(known_mask, known_values, shape, jnp.float32)

    def estimate(mu: jax.Array, t: jax.Array, rng_net: jax.Array) -> jax.Array:
        """x_hat(theta, t): the network's noise prediction turned into a clipped data estimate."""
        eps_hat = eps_fn(mu, jnp.full((batch_size,), t, jnp.float32), rng_net)
        return continuous.data_estimate(mu, eps_hat, t, sigma1=sigma1)

    def update(
        carry: tuple[jax.Array, jax.Array], i: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], None]:
        mu, rho = carry
        rng_net, rng_sender = jax.random.split(jax.random.fold_in(rng, i), 2)
        x_hat = _clamp(estimate(mu, (i - 1).astype(jnp.float32) / n_steps, rng_net), known)
        alpha = continuous.step_accuracy(i, n_steps=n_steps, sigma1=sigma1)
        y = continuous.sender_sample(x_hat, alpha, rng_sender)
        return continuous.bayesian_update(mu, rho, y, alpha), None

    steps = jnp.arange(1, n_steps + 1, dtype=jnp.int32)
    (mu, _), _ = jax.lax.scan(update, continuous.prior_params(shape), steps)
    x_hat = estimate(mu, jnp.float32(1.0), jax.random.fold_in(rng, n_steps + 1))
    return _clamp(x_hat, known)


def sample_discretised(
    output_fn: OutputFn,
    *,
    rng: jax.Array,
    batch_size: int,
    variable_shape: tuple[int, ...],
    n_steps: int,
    sigma1: float,
    num_bins: int,
    known_mask: jax.Array | None = None,
    known_values: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Returns (mode bin centres of shape (batch_size, *variable_shape), final probabilities ...xK).

    The probabilities are continuous.discretised_output at t = 1. known_values are data in [-1, 1]:
    the sender uses the centre of their bin, and the samples equal them exactly where known_mask is
    true (the probabilities stay the network's output there).
    """
    shape = (batch_size, *variable_shape)
    known = _known(known_mask, known_values, shape, jnp.float32)
    known_centres = None if known is None else (known[0], continuous.quantise(known[1], num_bins))
    centres_K = continuous.bin_centres(num_bins)

    def log_probs(mu: jax.Array, t: jax.Array, rng_net: jax.Array) -> jax.Array:
        """ln p_O(k | theta; t), the log of continuous.discretised_output, shape ...xK."""
        eps_mean, eps_log_std = output_fn(mu, jnp.full((batch_size,), t, jnp.float32), rng_net)
        mean, std = continuous.discretised_output_params(
            mu, eps_mean, eps_log_std, t, sigma1=sigma1
        )
        return continuous.discretised_normal_log_probs(mean, std, num_bins=num_bins)

    def update(
        carry: tuple[jax.Array, jax.Array], i: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], None]:
        mu, rho = carry
        rng_net, rng_bin, rng_sender = jax.random.split(jax.random.fold_in(rng, i), 3)
        log_p = log_probs(mu, (i - 1).astype(jnp.float32) / n_steps, rng_net)
        k = jax.random.categorical(rng_bin, log_p, axis=-1)
        k_c = _clamp(centres_K[k], known_centres)
        alpha = continuous.step_accuracy(i, n_steps=n_steps, sigma1=sigma1)
        y = continuous.sender_sample(k_c, alpha, rng_sender)
        return continuous.bayesian_update(mu, rho, y, alpha), None

    steps = jnp.arange(1, n_steps + 1, dtype=jnp.int32)
    (mu, _), _ = jax.lax.scan(update, continuous.prior_params(shape), steps)
    probs = jnp.exp(log_probs(mu, jnp.float32(1.0), jax.random.fold_in(rng, n_steps + 1)))
    return _clamp(centres_K[jnp.argmax(probs, axis=-1)], known), probs
