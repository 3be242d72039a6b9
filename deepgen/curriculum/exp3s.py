"""Exp3.S over the tasks of a curriculum, with the reward rescaling of Graves et al. 2017.

Graves, Bellemare, Menick, Munos and Kavukcuoglu, "Automated Curriculum Learning for Neural
Networks" (arXiv 1704.03003), Sec. 2 and Algorithm 1; Exp3.S is Auer et al. (2002):

    pi_t(i)  = (1 - eps) exp(w_i) / sum_j exp(w_j) + eps / N
    r~_i     = (r 1[a_t = i] + beta) / pi_t(i)
    w_i     <- log[(1 - alpha_t) exp(w_i + eta r~_i)
                   + alpha_t / (N - 1) sum_{j != i} exp(w_j + eta r~_j)],   alpha_t = 1 / t

with w_1 = 0, eta = 1e-3, beta = 0, eps = 0.05 (the values of the paper's experiments, as the
public re-implementation of Collier and Beel uses them). The raw learning progress is first put
into a reservoir of past unscaled rewards and mapped to [-1, 1] by the reservoir's 20th and 80th
percentiles: -1 below q_lo, +1 above q_hi, linear in between.

Everything is a pure function of an explicit pytree state (a fixed-size reservoir kept sorted,
plus a counter: Vitter's Algorithm R), so the bandit runs inside the jitted train step and is checkpointed with
it. The update is computed in log space; after each update the weights are shifted so that their
maximum is 0, which leaves the policy and every later update unchanged (both are invariant to a
common shift) and keeps float32 weights from growing without bound.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

QUANTILE_LOW = 0.2
QUANTILE_HIGH = 0.8


class Exp3SState(NamedTuple):
    """The bandit: log-weights, the time step t (1 at the first update) and the reward reservoir."""

    log_weights_N: jax.Array  # float32 (N,), max-normalised w
    t: jax.Array  # int32 scalar, the number of the next update (alpha_t = 1 / t)
    reservoir_R: jax.Array  # float32 (R,), unscaled past rewards, sorted; +inf where not filled
    count: jax.Array  # int32 scalar, rewards seen so far


def init(num_tasks: int, reservoir_size: int) -> Exp3SState:
    """w = 0 for every task, t = 1, an empty reservoir."""
    if num_tasks < 2:
        raise ValueError(f"Exp3.S needs at least 2 tasks, got {num_tasks}")
    return Exp3SState(
        log_weights_N=jnp.zeros((num_tasks,), jnp.float32),
        t=jnp.asarray(1, jnp.int32),
        reservoir_R=jnp.full((reservoir_size,), jnp.inf, jnp.float32),
        count=jnp.asarray(0, jnp.int32),
    )


def policy(state: Exp3SState, *, epsilon: float) -> jax.Array:
    """pi_t: the softmax of w mixed with epsilon-uniform exploration, shape (N,)."""
    num_tasks = state.log_weights_N.shape[0]
    return (1.0 - epsilon) * jax.nn.softmax(state.log_weights_N) + epsilon / num_tasks


def reservoir_add(
    reservoir_R: jax.Array, count: jax.Array, value: jax.Array, rng: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Algorithm R on a reservoir kept SORTED: a uniform sample of every value seen, size R.

    The filled part (the first min(count, R) entries) is in ascending order and the rest is +inf.
    While there is room the value is inserted in order; afterwards a uniform draw j in [0, count]
    replaces the j-th kept value (in sorted order, which is as uniform a choice as any) when
    j < R. Insert and remove are O(R) shifts, so the percentiles are read off by index instead of
    sorting the reservoir at every update.
    """
    size = reservoir_R.shape[0]
    index_R = jnp.arange(size)
    slot = jax.random.randint(rng, (), 0, jnp.maximum(count + 1, 1))
    full = count >= size
    replace = full & (slot < size)
    # Remove the replaced entry (full reservoir), shifting the larger ones down; +inf at the end.
    shifted_R = jnp.concatenate([reservoir_R[1:], jnp.full((1,), jnp.inf, reservoir_R.dtype)])
    removed_R = jnp.where(index_R >= slot, shifted_R, reservoir_R)
    base_R = jnp.where(replace, removed_R, reservoir_R)
    # Insert in order: the last entry (+inf when there is room or after a removal) drops out.
    position = jnp.searchsorted(base_R, value, side="right")
    previous_R = jnp.concatenate([base_R[:1], base_R[:-1]])
    inserted_R = jnp.where(
        index_R < position, base_R, jnp.where(index_R == position, value, previous_R)
    )
    updated_R = jnp.where(full & ~replace, reservoir_R, inserted_R)
    return updated_R, count + 1


def reservoir_quantiles(
    reservoir_R: jax.Array,
    count: jax.Array,
    *,
    low: float = QUANTILE_LOW,
    high: float = QUANTILE_HIGH,
) -> tuple[jax.Array, jax.Array]:
    """The low and high percentiles of the filled, sorted reservoir (numpy's linear rule)."""
    size = reservoir_R.shape[0]
    filled = jnp.maximum(jnp.minimum(count, size), 1)

    def quantile(q: float) -> jax.Array:
        position = q * (filled - 1).astype(jnp.float32)
        below = jnp.floor(position).astype(jnp.int32)
        above = jnp.minimum(below + 1, filled - 1)
        fraction = position - below
        return reservoir_R[below] + fraction * (reservoir_R[above] - reservoir_R[below])

    return quantile(low), quantile(high)


def rescale(raw: jax.Array, q_low: jax.Array, q_high: jax.Array) -> jax.Array:
    """The paper's map to [-1, 1]: -1 below q_lo, +1 at or above q_hi, linear in between."""
    width = jnp.where(q_high > q_low, q_high - q_low, 1.0)
    linear = 2.0 * (raw - q_low) / width - 1.0
    return jnp.where(raw < q_low, -1.0, jnp.where(raw >= q_high, 1.0, linear))


def update_weights(
    log_weights_N: jax.Array,
    t: jax.Array,
    *,
    task: jax.Array,
    reward: jax.Array,
    probs_N: jax.Array,
    eta: float,
    beta: float,
) -> jax.Array:
    """The Exp3.S weight update for a scaled reward of the drawn task (max-normalised result)."""
    num_tasks = log_weights_N.shape[0]
    chosen_N = jnp.arange(num_tasks) == task
    reward_estimate_N = (jnp.where(chosen_N, reward, 0.0) + beta) / probs_N
    boosted_N = log_weights_N + eta * reward_estimate_N
    alpha = 1.0 / t.astype(jnp.float32)
    others_NxN = jnp.where(jnp.eye(num_tasks, dtype=bool), -jnp.inf, boosted_N[None, :])
    log_others_N = jax.nn.logsumexp(others_NxN, axis=1)
    new_N = jnp.logaddexp(
        jnp.log1p(-alpha) + boosted_N, jnp.log(alpha / (num_tasks - 1)) + log_others_N
    )
    return new_N - jnp.max(new_N)


class Exp3SUpdate(NamedTuple):
    """What one update saw: the rescaled reward and the reservoir's quantiles."""

    reward: jax.Array
    q_low: jax.Array
    q_high: jax.Array


def update(
    state: Exp3SState,
    *,
    task: jax.Array,
    raw_reward: jax.Array,
    probs_N: jax.Array,
    rng: jax.Array,
    eta: float,
    beta: float,
) -> tuple[Exp3SState, Exp3SUpdate]:
    """Add the raw reward to the reservoir, rescale it by the quantiles, update w; t <- t + 1.

    probs_N is the policy the task was drawn from (the importance weights use it).
    """
    raw_reward = jnp.asarray(raw_reward, jnp.float32)
    reservoir_R, count = reservoir_add(state.reservoir_R, state.count, raw_reward, rng)
    q_low, q_high = reservoir_quantiles(reservoir_R, count)
    reward = rescale(raw_reward, q_low, q_high)
    log_weights_N = update_weights(
        state.log_weights_N, state.t, task=task, reward=reward, probs_N=probs_N, eta=eta, beta=beta
    )
    new_state = Exp3SState(log_weights_N, state.t + 1, reservoir_R, count)
    return new_state, Exp3SUpdate(reward, q_low, q_high)
