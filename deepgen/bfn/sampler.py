"""The n-step BFN sampler for discrete data (BFN paper, Algorithm 9), as one lax.scan.

For i = 1..n: t = (i-1)/n, k ~ p_O(. | theta; t), y ~ N(alpha_i (K e_k - 1), alpha_i K I),
theta <- Bayesian update; then one readout of p_O at t = 1 whose mode is the sample. (The
official code skipped the n-th update until May 2024; here the scan runs all n.)
"""

import jax
import jax.numpy as jnp

from deepgen.bfn import discrete


def sample_discrete(
    log_probs_fn: discrete.LogProbsFn,
    *,
    rng: jax.Array,
    batch_size: int,
    variable_shape: tuple[int, ...],
    num_classes: int,
    n_steps: int,
    beta1: float,
) -> tuple[jax.Array, jax.Array]:
    """Returns (samples of shape (batch_size, *variable_shape), final probabilities ...xK)."""
    theta_BxDxK = discrete.prior_theta((batch_size, *variable_shape), num_classes)

    def update(theta: jax.Array, i: jax.Array) -> tuple[jax.Array, None]:
        rng_net, rng_class, rng_sender = jax.random.split(jax.random.fold_in(rng, i), 3)
        t_B = jnp.full((batch_size,), (i - 1) / n_steps, jnp.float32)
        log_probs = log_probs_fn(theta, t_B, rng_net)
        k = jax.random.categorical(rng_class, log_probs, axis=-1)
        alpha = discrete.step_accuracy(i, n_steps=n_steps, beta1=beta1)
        y = discrete.sender_sample(jax.nn.one_hot(k, num_classes), alpha, rng_sender)
        return discrete.bayesian_update(theta, y), None

    steps = jnp.arange(1, n_steps + 1, dtype=jnp.float32)
    theta_BxDxK, _ = jax.lax.scan(update, theta_BxDxK, steps)
    t_final = jnp.ones((batch_size,), jnp.float32)
    rng_final = jax.random.fold_in(rng, n_steps + 1)
    probs = jnp.exp(log_probs_fn(theta_BxDxK, t_final, rng_final))
    return jnp.argmax(probs, axis=-1), probs
