"""A mixture of K products of Bernoullis over D binary variables (Bishop, PRML Sec. 9.3.3).

    p(x) = sum_k pi_k prod_d mu_kd^x_d (1 - mu_kd)^(1 - x_d)

parameterised by unconstrained logits, pi = softmax(a) and mu = sigmoid(b), so that plain
gradient descent on the exact negative log-likelihood trains it (PRML fits it by EM instead;
the likelihood is the same). Every quantity is computed in log space with log_sigmoid and
logsumexp, so saturated logits stay finite.
"""

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]


def init_params(rng: jax.Array, *, num_components: int, num_pixels: int) -> Params:
    """Uniform mixing weights and small random pixel logits, so that the components differ."""
    return {
        "logits_pi_K": jnp.zeros((num_components,), jnp.float32),
        "logits_mu_KxD": 0.1 * jax.random.normal(rng, (num_components, num_pixels), jnp.float32),
    }


def component_log_likelihood(params: Params, x_BxD: jax.Array) -> jax.Array:
    """log pi_k + log p(x | k) for every example and component, shape (B, K)."""
    logits_mu_KxD = params["logits_mu_KxD"]
    x_BxD = x_BxD.astype(logits_mu_KxD.dtype)
    log_mu_KxD = jax.nn.log_sigmoid(logits_mu_KxD)
    log_one_minus_mu_KxD = jax.nn.log_sigmoid(-logits_mu_KxD)
    log_px_given_k_BxK = x_BxD @ log_mu_KxD.T + (1.0 - x_BxD) @ log_one_minus_mu_KxD.T
    return jax.nn.log_softmax(params["logits_pi_K"])[None, :] + log_px_given_k_BxK


def log_likelihood(params: Params, x_BxD: jax.Array) -> jax.Array:
    """log p(x) in nats for each example, exact: logsumexp over the components, shape (B,)."""
    return jax.nn.logsumexp(component_log_likelihood(params, x_BxD), axis=-1)


def nll_loss(params: Params, *, x_BxD: jax.Array) -> jax.Array:
    """The mean negative log-likelihood in nats per example (per image)."""
    return -jnp.mean(log_likelihood(params, x_BxD))


def sample(params: Params, rng: jax.Array, num: int) -> jax.Array:
    """Ancestral samples: a component k ~ pi, then every pixel x_d ~ Bernoulli(mu_kd); (num, D)."""
    rng_k, rng_x = jax.random.split(rng)
    k_N = jax.random.categorical(rng_k, params["logits_pi_K"], shape=(num,))
    probs_NxD = jax.nn.sigmoid(params["logits_mu_KxD"][k_N])
    return jax.random.bernoulli(rng_x, probs_NxD).astype(jnp.int32)


def means(params: Params) -> tuple[jax.Array, jax.Array]:
    """(pi_K, mu_KxD): the mixing weights and the component means."""
    return jax.nn.softmax(params["logits_pi_K"]), jax.nn.sigmoid(params["logits_mu_KxD"])
