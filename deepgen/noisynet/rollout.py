"""What the jitted gymnax agents share: the Trainer interface, vmapped environments, episode stats.

deepgen/noisynet/trainer.py (DQN, Dueling) and deepgen/noisynet/a2c.py (A2C) both build on these;
neither imports the other's trainer, so trainer.make_trainer can dispatch to both without an
import cycle. gymnax `step` resets finished environments itself; the true last observation of an
episode comes from info["final_observation"], and episode returns are tracked in the carry.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class Trainer(NamedTuple):
    """The pure functions every jitted gymnax agent provides.

    `init(rng)` (vmappable over seeds), `train_chunk(state)` running config.train.steps_per_chunk
    env steps over config.env.num_envs environments, and `evaluate(state, rng, num_episodes)`
    returning the first-episode return of num_episodes fresh environments, exploration on.
    """

    init: Callable[[jax.Array], Any]
    train_chunk: Callable[[Any], tuple[Any, dict[str, jax.Array]]]
    evaluate: Callable[[Any, jax.Array, int], jax.Array]


class EpisodeStats(NamedTuple):
    """Running return per environment, plus sums over episodes finished in the current chunk."""

    running_return_N: jax.Array
    finished_return_sum: jax.Array
    finished_count: jax.Array


def episode_stats_init(num_envs: int) -> EpisodeStats:
    """No running returns and nothing finished."""
    return EpisodeStats(
        jnp.zeros((num_envs,), jnp.float32), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
    )


def episode_stats_update(
    stats: EpisodeStats, reward_N: jax.Array, done_N: jax.Array
) -> EpisodeStats:
    """Add this step's rewards; close and count the episodes that ended at this step."""
    running = stats.running_return_N + reward_N.astype(jnp.float32)
    return EpisodeStats(
        jnp.where(done_N, 0.0, running),
        stats.finished_return_sum + jnp.sum(jnp.where(done_N, running, 0.0)),
        stats.finished_count + jnp.sum(done_N.astype(jnp.int32)),
    )


def episode_stats_reset_chunk(stats: EpisodeStats) -> EpisodeStats:
    """Keep the running returns, zero the per-chunk sums."""
    return EpisodeStats(
        stats.running_return_N,
        jnp.zeros_like(stats.finished_return_sum),
        jnp.zeros_like(stats.finished_count),
    )


def mean_finished_return(stats: EpisodeStats) -> jax.Array:
    """Mean return of the episodes finished in this chunk, nan if none."""
    count = stats.finished_count
    return jnp.where(count > 0, stats.finished_return_sum / jnp.maximum(count, 1), jnp.nan)


def vmapped_reset(env, env_params, rng: jax.Array, num_envs: int) -> tuple[jax.Array, Any]:
    """Reset num_envs environments; returns (obs_NxO, env_state)."""
    return jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(rng, num_envs), env_params)


def vmapped_step(env, env_params, rng: jax.Array, env_state: Any, action_N: jax.Array):
    """Step num_envs environments (auto-reset); returns gymnax's six outputs with a leading N."""
    keys = jax.random.split(rng, action_N.shape[0])
    return jax.vmap(env.step, in_axes=(0, 0, 0, None))(keys, env_state, action_N, env_params)


def evaluate_policy(
    env,
    env_params,
    policy_fn: Callable[[jax.Array, jax.Array], jax.Array],
    rng: jax.Array,
    num_episodes: int,
) -> jax.Array:
    """First-episode return of num_episodes environments run for the episode step limit."""
    key_reset, key_run = jax.random.split(rng)
    obs, env_state = vmapped_reset(env, env_params, key_reset, num_episodes)
    max_steps = int(env_params.max_steps_in_episode)

    def body(carry, key):
        obs, env_state, returns_N, active_N = carry
        key_act, key_step = jax.random.split(key)
        action_N = policy_fn(obs, key_act)
        obs, env_state, reward_N, terminated_N, truncated_N, _ = vmapped_step(
            env, env_params, key_step, env_state, action_N
        )
        returns_N = returns_N + jnp.where(active_N, reward_N.astype(jnp.float32), 0.0)
        active_N = active_N & ~(terminated_N | truncated_N)
        return (obs, env_state, returns_N, active_N), None

    init = (
        obs,
        env_state,
        jnp.zeros((num_episodes,), jnp.float32),
        jnp.ones((num_episodes,), bool),
    )
    (_, _, returns_N, _), _ = jax.lax.scan(body, init, jax.random.split(key_run, max_steps))
    return returns_N
