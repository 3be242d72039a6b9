"""Bayesian flow, losses and NLL bounds for discrete data (BFN paper, Sec. 6, discrete data).

K classes per variable; class probabilities live on the last axis. Equations:
  accuracy schedule   beta(t) = beta(1) t^2,  alpha(t) = 2 beta(1) t
  discrete accuracies alpha_i = beta(1) (2i - 1) / n^2
  sender              y ~ N(alpha (K e_x - 1), alpha K I)
  Bayesian update     theta' = e^y theta / sum_k e^{y_k} theta_k
  Bayesian flow       theta = softmax(y),  y ~ N(beta(t) (K e_x - 1), beta(t) K I)
  L^inf(x)            K beta(1) t ||e_x - e_hat(theta, t)||^2,  t ~ U(0, 1)
  L^n(x)              n E_i E_y [ln p_S(y | x) - ln p_R(y | theta_{i-1})]
  L^r(x)              -ln p_O(x | theta_1)
All losses here are per variable (summed over classes, not over variables): the caller sums
over the variables of an example to get nats per example.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

# (theta_...xK, t_B, rng) -> log p_O(k | theta; t), shape ...xK.
LogProbsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def accuracy_schedule(t: jax.Array, *, beta1: float) -> jax.Array:
    """beta(t) = beta(1) t^2."""
    return beta1 * jnp.square(t)


def accuracy_rate(t: jax.Array, *, beta1: float) -> jax.Array:
    """alpha(t) = d beta / dt = 2 beta(1) t."""
    return 2.0 * beta1 * t


def step_accuracy(i: jax.Array, *, n_steps: int, beta1: float) -> jax.Array:
    """alpha_i = beta(i/n) - beta((i-1)/n) = beta(1) (2i - 1) / n^2 for i in 1..n."""
    return beta1 * (2.0 * i - 1.0) / (n_steps**2)


def prior_theta(shape: tuple[int, ...], num_classes: int) -> jax.Array:
    """The uniform prior theta_0 = 1/K, shape (*shape, K)."""
    return jnp.full((*shape, num_classes), 1.0 / num_classes, jnp.float32)


def sender_sample(x_onehot_xK: jax.Array, alpha: jax.Array, rng: jax.Array) -> jax.Array:
    """y ~ N(alpha (K e_x - 1), alpha K I); alpha broadcasts against x_onehot_xK[..., 0]."""
    num_classes = x_onehot_xK.shape[-1]
    alpha_x1 = jnp.asarray(alpha, jnp.float32)[..., None]
    mean = alpha_x1 * (num_classes * x_onehot_xK - 1.0)
    std = jnp.sqrt(alpha_x1 * num_classes)
    return mean + std * jax.random.normal(rng, x_onehot_xK.shape, jnp.float32)


def bayesian_update(theta_xK: jax.Array, y_xK: jax.Array) -> jax.Array:
    """theta' proportional to e^y theta, computed in log space."""
    return jax.nn.softmax(jnp.log(theta_xK) + y_xK, axis=-1)


def flow_sample(x_onehot_xK: jax.Array, t: jax.Array, *, beta1: float, rng: jax.Array) -> jax.Array:
    """theta ~ p_F(theta | x; t): the sender at accuracy beta(t) applied to the prior in one update."""
    beta = accuracy_schedule(jnp.asarray(t, jnp.float32), beta1=beta1)
    y_xK = sender_sample(x_onehot_xK, beta, rng)
    return jax.nn.softmax(y_xK, axis=-1)


def continuous_time_loss(
    x_onehot_xK: jax.Array, probs_xK: jax.Array, t: jax.Array, *, beta1: float
) -> jax.Array:
    """L^inf per variable: K beta(1) t ||e_x - e_hat||^2 (a squared norm, summed over classes)."""
    num_classes = x_onehot_xK.shape[-1]
    squared_error = jnp.sum(jnp.square(x_onehot_xK - probs_xK), axis=-1)
    return num_classes * beta1 * jnp.asarray(t, jnp.float32) * squared_error


def discrete_time_loss(
    x_onehot_xK: jax.Array,
    log_probs_xK: jax.Array,
    i: jax.Array,
    *,
    n_steps: int,
    beta1: float,
    rng: jax.Array,
    num_samples: int = 10,
) -> jax.Array:
    """n-step L^n per variable at step i, a Monte Carlo estimate over num_samples sender draws.

    The sender N(alpha (K e_x - 1), alpha K I) and every receiver component share one isotropic
    variance, so ln N(y | m_x) - ln sum_k p_k N(y | m_k) = y_x - logsumexp_k(ln p_k + y_k): the
    Gaussian normalisers and the terms in ||y||^2 cancel exactly.
    """
    alpha = step_accuracy(jnp.asarray(i, jnp.float32), n_steps=n_steps, beta1=beta1)
    rngs = jax.random.split(rng, num_samples)
    y_SxK = jax.vmap(lambda r: sender_sample(x_onehot_xK, alpha, r))(rngs)
    log_sender = jnp.sum(y_SxK * x_onehot_xK, axis=-1)
    log_receiver = jax.nn.logsumexp(log_probs_xK + y_SxK, axis=-1)
    return n_steps * jnp.mean(log_sender - log_receiver, axis=0)


def reconstruction_loss(x_onehot_xK: jax.Array, log_probs_xK: jax.Array) -> jax.Array:
    """L^r per variable: -ln p_O(x | theta_1; 1)."""
    return -jnp.sum(x_onehot_xK * log_probs_xK, axis=-1)


def binary_log_probs(logits_x1: jax.Array) -> jax.Array:
    """Turn one Bernoulli logit per variable into log-probabilities of the two classes."""
    logits = logits_x1.astype(jnp.float32)
    return jnp.concatenate([jax.nn.log_sigmoid(-logits), jax.nn.log_sigmoid(logits)], axis=-1)
