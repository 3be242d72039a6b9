"""A uniform experience-replay ring buffer as a pytree (DQN, Mnih et al. 2015), jittable and vmappable."""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Transition(NamedTuple):
    """One (s, a, r, s', discount) step; discount is 0.0 at termination, else 1.0 (gamma applied later)."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    discount: jax.Array


class ReplayState(NamedTuple):
    """Storage with a leading capacity axis, the next write position and the number of filled slots."""

    storage: Transition
    position: jax.Array
    size: jax.Array


def replay_init(example: Transition, capacity: int) -> ReplayState:
    """An empty buffer shaped like `example` (one transition, no batch axis)."""
    storage = jax.tree.map(
        lambda x: jnp.zeros((capacity, *jnp.shape(x)), jnp.asarray(x).dtype), example
    )
    return ReplayState(storage, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def replay_add(state: ReplayState, transitions: Transition) -> ReplayState:
    """Write a batch of transitions (leading axis B <= capacity), overwriting the oldest."""
    capacity = state.storage.reward.shape[0]
    batch = transitions.reward.shape[0]
    indices = (state.position + jnp.arange(batch)) % capacity
    storage = jax.tree.map(lambda s, t: s.at[indices].set(t), state.storage, transitions)
    return ReplayState(
        storage,
        (state.position + batch) % capacity,
        jnp.minimum(state.size + batch, capacity),
    )


def replay_sample(state: ReplayState, rng: jax.Array, batch_size: int) -> Transition:
    """batch_size transitions drawn uniformly with replacement from the filled slots."""
    indices = jax.random.randint(rng, (batch_size,), 0, jnp.maximum(state.size, 1))
    return jax.tree.map(lambda s: s[indices], state.storage)
