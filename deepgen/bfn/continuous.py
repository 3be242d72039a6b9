"""Bayesian flow, losses and NLL bounds for continuous and discretised data (BFN paper, Sec. 4-5).

Data live in [-1, 1]. Discretised data (Sec. 5) take one of K bin centres k_c = (2k - 1)/K - 1,
k = 1..K, the bins having width 2/K. Equations (Sec. 4 unless marked):
  accuracy schedule   beta(t) = sigma1^(-2t) - 1,  alpha(t) = -2 ln(sigma1) sigma1^(-2t)
  flow fraction       gamma(t) = beta(t) / (1 + beta(t)) = 1 - sigma1^(2t)
  discrete accuracies alpha_i = beta(i/n) - beta((i-1)/n) = sigma1^(-2i/n) (1 - sigma1^(2/n))
  input distribution  theta = (mu, rho),  p_I(x | theta) = N(x | mu, 1/rho),  prior (0, 1)
  sender              y ~ N(x, 1/alpha)
  Bayesian update     rho' = rho + alpha,  mu' = (rho mu + alpha y) / rho'
  Bayesian flow       mu ~ N(gamma x, gamma (1 - gamma)),  rho = 1 + beta(t) = 1/(1 - gamma)
  data estimate       x_hat = mu/gamma - sqrt((1 - gamma)/gamma) eps_hat  (noise prediction)
  output, Sec. 5      N(mu_x, sigma_x) integrated over the K bins, edge bins taking the tails:
                      mu_x = mu/gamma - s mu_eps, sigma_x = s sigma_eps, s = sqrt((1-gamma)/gamma)
  L^inf(x)            -ln(sigma1) sigma1^(-2t) ||x - x_hat||^2, t ~ U(0, 1); Sec. 5: x_hat = E[k_c]
  L^n(x), point       n alpha_i / 2 ||x - x_hat(theta_{i-1}, t_{i-1})||^2,  i ~ U{1, ..., n}
  L^n(x), Sec. 5      n E_y[ln N(y|x, 1/alpha_i) - ln sum_k p_O(k | theta_{i-1}) N(y|k_c, 1/alpha_i)]
  L^r(x), Sec. 5      -ln p_O(x | theta_1; 1); point model: -ln of N(x_hat, sigma) put into K bins
The clamps follow the official code (nnaisense/bayesian-flow-networks): x_hat is clipped to [-1, 1],
ln sigma_eps to [-10, 10] and sigma_x to [1e-3, 10]; for t < t_min = 1e-6 the output is mu_x = 0,
sigma_x = 1. Bin masses are computed in log space from the tail each bin lies in, so they keep their
relative accuracy far into the tails and the official density fallback for masses below 1e-5 is
not needed. All losses here are per data dimension: the caller sums over an example's dimensions.
"""

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr, ndtr

MIN_STD = 1e-3
MAX_STD = 10.0
LOG_STD_CLIP = 10.0
_TINY = float(jnp.finfo(jnp.float32).tiny)


def accuracy_schedule(t: jax.Array, *, sigma1: float) -> jax.Array:
    """beta(t) = sigma1^(-2t) - 1."""
    return jnp.expm1(-2.0 * jnp.log(sigma1) * jnp.asarray(t, jnp.float32))


def accuracy_rate(t: jax.Array, *, sigma1: float) -> jax.Array:
    """alpha(t) = d beta / dt = -2 ln(sigma1) sigma1^(-2t)."""
    log_sigma1 = jnp.log(sigma1)
    return -2.0 * log_sigma1 * jnp.exp(-2.0 * log_sigma1 * jnp.asarray(t, jnp.float32))


def gamma(t: jax.Array, *, sigma1: float) -> jax.Array:
    """gamma(t) = 1 - sigma1^(2t), computed with expm1 so that it stays accurate near t = 0."""
    return -jnp.expm1(2.0 * jnp.log(sigma1) * jnp.asarray(t, jnp.float32))


def step_accuracy(i: jax.Array, *, n_steps: int, sigma1: float) -> jax.Array:
    """alpha_i = sigma1^(-2i/n) (1 - sigma1^(2/n)) for i in 1..n."""
    log_sigma1 = jnp.log(sigma1)
    i = jnp.asarray(i, jnp.float32)
    return jnp.exp(-2.0 * log_sigma1 * i / n_steps) * -jnp.expm1(2.0 * log_sigma1 / n_steps)


def prior_params(shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """The prior input parameters (mu_0, rho_0) = (0, 1), each of the given shape."""
    return jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32)


def _sender_noise(shape: tuple[int, ...], alpha: jax.Array, rng: jax.Array) -> jax.Array:
    """y - x for y ~ N(x, 1/alpha): standard normal draws scaled by 1/sqrt(alpha)."""
    return jax.random.normal(rng, shape, jnp.float32) / jnp.sqrt(jnp.asarray(alpha, jnp.float32))


def sender_sample(x: jax.Array, alpha: jax.Array, rng: jax.Array) -> jax.Array:
    """y ~ N(x, 1/alpha); alpha broadcasts against x."""
    return x + _sender_noise(x.shape, alpha, rng)


def bayesian_update(
    mu: jax.Array, rho: jax.Array, y: jax.Array, alpha: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(mu', rho') with rho' = rho + alpha and mu' = (rho mu + alpha y) / rho'."""
    rho_new = rho + alpha
    return (rho * mu + alpha * y) / rho_new, rho_new


def flow_sample(x: jax.Array, t: jax.Array, *, sigma1: float, rng: jax.Array) -> jax.Array:
    """mu ~ p_F(mu | x; t) = N(gamma x, gamma (1 - gamma)); t broadcasts against x."""
    t = jnp.asarray(t, jnp.float32)
    g = gamma(t, sigma1=sigma1)
    one_minus_g = jnp.exp(2.0 * jnp.log(sigma1) * t)
    eps = jax.random.normal(rng, x.shape, jnp.float32)
    return g * x + jnp.sqrt(g * one_minus_g) * eps


def _noise_to_data_scale(t: jax.Array, *, sigma1: float, t_min: float) -> tuple[jax.Array, ...]:
    """(gamma, sqrt((1 - gamma)/gamma), t < t_min), with t clamped to t_min inside gamma."""
    t = jnp.asarray(t, jnp.float32)
    t_safe = jnp.maximum(t, t_min)
    g = gamma(t_safe, sigma1=sigma1)
    scale = jnp.sqrt(jnp.exp(2.0 * jnp.log(sigma1) * t_safe) / g)
    return g, scale, t < t_min


def data_estimate(
    mu: jax.Array, eps_hat: jax.Array, t: jax.Array, *, sigma1: float, t_min: float = 1e-6
) -> jax.Array:
    """x_hat = mu/gamma - sqrt((1-gamma)/gamma) eps_hat clipped to [-1, 1], and 0 where t < t_min."""
    g, scale, early = _noise_to_data_scale(t, sigma1=sigma1, t_min=t_min)
    x_hat = mu / g - scale * eps_hat
    return jnp.clip(jnp.where(early, 0.0, x_hat), -1.0, 1.0)


def discretised_output_params(
    mu: jax.Array,
    eps_mean: jax.Array,
    eps_log_std: jax.Array,
    t: jax.Array,
    *,
    sigma1: float,
    t_min: float = 1e-6,
) -> tuple[jax.Array, jax.Array]:
    """(mu_x, sigma_x) of the Sec. 5 output normal; mu_x is not clipped, sigma_x is in [1e-3, 10]."""
    g, scale, early = _noise_to_data_scale(t, sigma1=sigma1, t_min=t_min)
    mean = jnp.where(early, 0.0, mu / g - scale * eps_mean)
    std = jnp.where(early, 1.0, scale * jnp.exp(jnp.clip(eps_log_std, -LOG_STD_CLIP, LOG_STD_CLIP)))
    return mean, jnp.clip(std, MIN_STD, MAX_STD)


def bin_centres(num_bins: int) -> jax.Array:
    """k_c = (2k - 1)/K - 1 for k = 1..K, shape (K,)."""
    return _centre(jnp.arange(num_bins), num_bins)


def _centre(k: jax.Array, num_bins: int) -> jax.Array:
    """Centre of the 0-based bin k (one float expression everywhere, so centres compare equal)."""
    return (2.0 * k + 1.0) / num_bins - 1.0


def bin_index(x: jax.Array, num_bins: int) -> jax.Array:
    """0-based index of the width-2/K bin that holds x; values outside [-1, 1] go to the edge bins."""
    k = jnp.floor((jnp.asarray(x, jnp.float32) + 1.0) * (num_bins / 2.0))
    return jnp.clip(k, 0, num_bins - 1).astype(jnp.int32)


def quantise(x: jax.Array, num_bins: int) -> jax.Array:
    """Map data in [-1, 1] to the centre of its bin (the nearest bin centre)."""
    return _centre(bin_index(x, num_bins), num_bins)


def _log1mexp(d: jax.Array) -> jax.Array:
    """ln(1 - e^d) for d < 0, accurate at both ends and with finite gradients in both branches."""
    near_zero = d > -jnp.log(2.0)
    d_near = jnp.where(near_zero, d, -1.0)
    d_far = jnp.where(near_zero, -1.0, d)
    return jnp.where(near_zero, jnp.log(-jnp.expm1(d_near)), jnp.log1p(-jnp.exp(d_far)))


def _log_bin_mass(k: jax.Array, mean: jax.Array, std: jax.Array, num_bins: int) -> jax.Array:
    """ln P(bin k) for N(mean, std) over K bins on [-1, 1] whose edge bins take the tails.

    A bin whose centre lies above the mean is reflected about the mean, so that every mass is
    ln(Phi(b) - Phi(a)) = ln Phi(b) + ln(1 - Phi(a)/Phi(b)) with a < 0: both terms are accurate in
    the lower tail, where log_ndtr keeps its relative precision. An open side (the tail of an edge
    bin) is masked rather than set to an infinite edge, which keeps the gradients finite.
    """
    z_lo = (2.0 * k / num_bins - 1.0 - mean) / std
    z_hi = (2.0 * (k + 1) / num_bins - 1.0 - mean) / std
    open_lo = k == 0
    open_hi = k == num_bins - 1
    upper = _centre(k, num_bins) > mean
    a = jnp.where(upper, -z_hi, z_lo)
    b = jnp.where(upper, -z_lo, z_hi)
    open_a = jnp.where(upper, open_hi, open_lo)
    open_b = jnp.where(upper, open_lo, open_hi)
    log_phi_b = jnp.where(open_b, 0.0, log_ndtr(b))
    ratio = jnp.minimum(log_ndtr(a) - log_phi_b, -1e-30)
    return log_phi_b + jnp.where(open_a, 0.0, _log1mexp(ratio))


def discretised_normal_log_probs(mean: jax.Array, std: jax.Array, *, num_bins: int) -> jax.Array:
    """ln p(k) of N(mean, std) discretised into K bins on [-1, 1] (tails to the edge bins), ...xK."""
    mean_x1 = jnp.asarray(mean, jnp.float32)[..., None]
    std_x1 = jnp.asarray(std, jnp.float32)[..., None]
    return _log_bin_mass(jnp.arange(num_bins), mean_x1, std_x1, num_bins)


def discretised_output(
    mu: jax.Array,
    eps_mean: jax.Array,
    eps_log_std: jax.Array,
    t: jax.Array,
    *,
    sigma1: float,
    num_bins: int,
    t_min: float = 1e-6,
) -> jax.Array:
    """p_O(k | theta; t) of Sec. 5 from the network's (mu_eps, ln sigma_eps), shape ...xK."""
    mean, std = discretised_output_params(mu, eps_mean, eps_log_std, t, sigma1=sigma1, t_min=t_min)
    return jnp.exp(discretised_normal_log_probs(mean, std, num_bins=num_bins))


def discretised_mean(probs_xK: jax.Array) -> jax.Array:
    """E[k_c] = sum_k p_k k_c, the point estimate that L^inf uses for discretised data."""
    return jnp.sum(probs_xK * bin_centres(probs_xK.shape[-1]), axis=-1)


def discretised_normal_mean(mean: jax.Array, std: jax.Array, *, num_bins: int) -> jax.Array:
    """E[k_c] of N(mean, std) discretised into K bins (tails to the edge bins), without the masses.

    Summation by parts: sum_k k_c P(k) = k_c(K) - (2/K) sum_{j=1}^{K-1} Phi((e_j - mean)/std) with
    e_j = 2j/K - 1 the inner bin edges, so one normal CDF per edge replaces the K log-masses; it
    equals discretised_mean(discretised_output(...)) and is what L^inf needs (Sec. 5).
    """
    mean_x1 = jnp.asarray(mean, jnp.float32)[..., None]
    std_x1 = jnp.asarray(std, jnp.float32)[..., None]
    edges_E = 2.0 * jnp.arange(1, num_bins, dtype=jnp.float32) / num_bins - 1.0
    cdf_sum = jnp.sum(ndtr((edges_E - mean_x1) / std_x1), axis=-1)
    return _centre(jnp.float32(num_bins - 1), num_bins) - (2.0 / num_bins) * cdf_sum


def discretised_log_prob(x: jax.Array, probs_xK: jax.Array) -> jax.Array:
    """ln p(bin of x); masses are exact down to float32 underflow, floored at its smallest normal."""
    k_x1 = bin_index(x, probs_xK.shape[-1])[..., None]
    prob = jnp.take_along_axis(probs_xK, k_x1, axis=-1)[..., 0]
    return jnp.log(jnp.maximum(prob, _TINY))


def continuous_time_loss(
    x: jax.Array, x_hat: jax.Array, t: jax.Array, *, sigma1: float
) -> jax.Array:
    """L^inf per dimension: -ln(sigma1) sigma1^(-2t) (x - x_hat)^2, a squared error; t broadcasts."""
    log_sigma1 = jnp.log(sigma1)
    weight = -log_sigma1 * jnp.exp(-2.0 * log_sigma1 * jnp.asarray(t, jnp.float32))
    return weight * jnp.square(x - x_hat)


def discrete_time_loss_point(
    x: jax.Array, x_hat: jax.Array, i: jax.Array, *, n_steps: int, sigma1: float
) -> jax.Array:
    """n-step L^n per dimension at step i for a point estimate x_hat: n alpha_i / 2 (x - x_hat)^2."""
    alpha = step_accuracy(i, n_steps=n_steps, sigma1=sigma1)
    return n_steps * alpha / 2.0 * jnp.square(x - x_hat)


def discrete_time_loss_discretised(
    x: jax.Array,
    probs_xK: jax.Array,
    i: jax.Array,
    *,
    n_steps: int,
    sigma1: float,
    rng: jax.Array,
    num_samples: int = 10,
) -> jax.Array:
    """n-step L^n per dimension at step i (broadcasting against x), a Monte Carlo estimate.

    The sender N(x, 1/alpha) and the receiver components N(k_c, 1/alpha) share one variance, so the
    normalisers cancel: ln N(y | x) - ln sum_k p_k N(y | k_c) = -alpha/2 (y - x)^2
    - logsumexp_k(ln p_k - alpha/2 (y - k_c)^2). It is averaged over the draws of
    sender_sample(x, alpha, r) for r in jax.random.split(rng, num_samples), with y - k_c formed as
    (y - x) + (x - k_c) so that quantised x loses no precision at large alpha.
    """
    num_bins = probs_xK.shape[-1]
    alpha = jnp.broadcast_to(step_accuracy(i, n_steps=n_steps, sigma1=sigma1), x.shape)
    rngs = jax.random.split(rng, num_samples)
    noise_S = jax.vmap(lambda r: _sender_noise(x.shape, alpha, r))(rngs)
    offsets_xK = x[..., None] - bin_centres(num_bins)
    log_sender = -0.5 * alpha * jnp.square(noise_S)
    log_receiver = jax.nn.logsumexp(
        -0.5 * alpha[..., None] * jnp.square(noise_S[..., None] + offsets_xK), axis=-1, b=probs_xK
    )
    return n_steps * jnp.mean(log_sender - log_receiver, axis=0)


def reconstruction_loss_discretised(x: jax.Array, probs_xK: jax.Array) -> jax.Array:
    """L^r per dimension for discretised data from the K masses: -ln p_O(x | theta_1; 1).

    Masses below float32's smallest normal are floored there (at most 87.3 nats); the training
    and evaluation path uses reconstruction_loss_discretised_exact, which has no floor.
    """
    return -discretised_log_prob(x, probs_xK)


def reconstruction_loss_discretised_exact(
    x: jax.Array, mean: jax.Array, std: jax.Array, *, num_bins: int
) -> jax.Array:
    """L^r per dimension for discretised data from the output normal's (mean, std): no floor.

    -ln P(bin of x) in log space (_log_bin_mass: log_ndtr of the nearer tail), exact far into the
    tails where the bin's mass underflows float32, like reconstruction_loss_continuous.
    """
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.broadcast_to(jnp.asarray(std, jnp.float32), mean.shape)
    return -_log_bin_mass(bin_index(x, num_bins), mean, std, num_bins)


def reconstruction_loss_continuous(
    x: jax.Array, x_hat: jax.Array, *, sigma: float, num_bins: int
) -> jax.Array:
    """L^r per dimension for a point-estimate model: -ln of N(x_hat, sigma) discretised into K bins.

    As in the official code, which uses sigma = sigma1 with 256 bins, and sigma = 0.7 sigma1 with 16
    bins (the sigma1^2 = 1e-3 configuration); only the mass of the bin holding x is computed.
    """
    x_hat = jnp.asarray(x_hat, jnp.float32)
    std = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x_hat.shape)
    return -_log_bin_mass(bin_index(x, num_bins), x_hat, std, num_bins)
