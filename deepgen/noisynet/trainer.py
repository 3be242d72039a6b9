"""Fully jitted training on gymnax environments: acting, replay and learning in one lax.scan.

A Trainer is three pure functions: `init(rng)` (vmappable over seeds), `train_chunk(state)` which
runs config.train.steps_per_chunk environment steps over config.env.num_envs parallel
environments, and `evaluate(state, rng, num_episodes)` which returns the first-episode return of
num_episodes fresh environments with the agent's exploration on (noise on; epsilon_eval for the
baseline). The Trainer interface and the vmapped environment helpers are in rollout.py (shared
with a2c.py); `make_trainer` picks this module's DQN trainer or a2c.py's A2C trainer.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from deepgen.core.errors import ConfigError
from deepgen.noisynet import a2c, dqn
from deepgen.noisynet.replay import ReplayState, Transition, replay_add, replay_init, replay_sample
from deepgen.noisynet.rollout import (
    EpisodeStats,
    Trainer,
    episode_stats_init,
    episode_stats_reset_chunk,
    episode_stats_update,
    evaluate_policy,
    mean_finished_return,
    vmapped_reset,
    vmapped_step,
)

AGENTS = ("dqn", "dueling", "a2c")
EVAL_NOISE = ("sample", "mean")


class DQNTrainerState(NamedTuple):
    """Everything one seed's DQN run carries from chunk to chunk (checkpointed as a whole)."""

    learner: dqn.LearnerState
    replay: ReplayState
    env_state: Any
    obs: jax.Array
    stats: EpisodeStats
    act_key: jax.Array
    # N(0, 1) acting noise, (Z,) or (num_envs, Z), held between optimisation steps (None: baseline)
    act_noise: jax.Array | None
    learn_noise: dqn.LearnNoise | None  # for the next iteration's optimisation steps (leading U)
    rng: jax.Array
    env_steps: jax.Array
    iteration: jax.Array


def update_schedule(num_envs: int, env_steps_per_update: int) -> tuple[int, int]:
    """(updates per scan iteration, iterations between updates) for the configured replay ratio."""
    if env_steps_per_update <= num_envs:
        if num_envs % env_steps_per_update:
            raise ConfigError(
                f"config.agent.env_steps_per_update={env_steps_per_update} must divide "
                f"config.env.num_envs={num_envs} (or be a multiple of it)"
            )
        return num_envs // env_steps_per_update, 1
    if env_steps_per_update % num_envs:
        raise ConfigError(
            f"config.agent.env_steps_per_update={env_steps_per_update} must be a multiple of "
            f"config.env.num_envs={num_envs} (or divide it)"
        )
    return 1, env_steps_per_update // num_envs


def make_dqn_trainer(config: ConfigDict, env, env_params) -> Trainer:
    """DQN / dueling double DQN, noisy or epsilon-greedy, as a Trainer."""
    num_actions = int(env.action_space(env_params).n)
    agent = dqn.make_dqn_agent(config, num_actions)
    num_envs = int(config.env.num_envs)
    noisy = bool(config.agent.noisy)
    batch_size = int(config.agent.batch_size)
    learning_starts = max(int(config.agent.learning_starts), batch_size)
    updates_per_iteration, learn_every = update_schedule(
        num_envs, int(config.agent.env_steps_per_update)
    )
    iterations = int(config.train.steps_per_chunk) // num_envs

    def init(rng: jax.Array) -> DQNTrainerState:
        key_net, key_env, key_act, key_run, key_noise = jax.random.split(rng, 5)
        obs, env_state = vmapped_reset(env, env_params, key_env, num_envs)
        learner = agent.init(key_net, obs[:1])
        key_act_noise, key_learn_noise = jax.random.split(key_noise)
        example = Transition(
            obs[0],
            jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.float32),
            obs[0],
            jnp.zeros((), jnp.float32),
        )
        return DQNTrainerState(
            learner=learner,
            replay=replay_init(example, int(config.replay.capacity)),
            env_state=env_state,
            obs=obs,
            stats=episode_stats_init(num_envs),
            act_key=key_act,
            act_noise=agent.draw_act_noise(key_act_noise, learner.params, num_envs),
            learn_noise=agent.draw_learn_noise(
                key_learn_noise, learner.params, (updates_per_iteration,)
            ),
            rng=key_run,
            env_steps=jnp.zeros((), jnp.int32),
            iteration=jnp.zeros((), jnp.int32),
        )

    def learn_updates(
        learner: dqn.LearnerState, replay: ReplayState, rng: jax.Array, noise: dqn.LearnNoise
    ):
        """The iteration's optimisation steps, then the noise for the next ones (drawn ahead)."""

        def one(learner, key_and_noise):
            key, step_noise = key_and_noise
            batch = replay_sample(replay, key, batch_size)
            return agent.learn_with_noise(learner, batch, step_noise)

        key_steps, key_noise = jax.random.split(rng)
        keys = jax.random.split(key_steps, updates_per_iteration)
        learner, metrics = jax.lax.scan(one, learner, (keys, noise))
        next_noise = agent.draw_learn_noise(key_noise, learner.params, (updates_per_iteration,))
        return learner, jax.tree.map(jnp.sum, metrics), next_noise

    metric_names = ("loss", "grad_norm", "q_mean", "q_max")

    def iteration_step(carry, _):
        state, sums = carry
        rng, key_next_act, key_step, key_learn = jax.random.split(state.rng, 4)
        epsilon = agent.epsilon(state.env_steps)
        action_N = agent.act(
            state.learner.params,
            state.obs,
            state.act_key,
            epsilon,
            state.act_noise if noisy else None,
        )
        next_obs, env_state, reward_N, terminated_N, truncated_N, info = vmapped_step(
            env, env_params, key_step, state.env_state, action_N
        )
        transitions = Transition(
            obs=state.obs,
            action=action_N,
            reward=reward_N.astype(jnp.float32),
            next_obs=info["final_observation"],
            discount=1.0 - terminated_N.astype(jnp.float32),
        )
        replay = replay_add(state.replay, transitions)
        stats = episode_stats_update(state.stats, reward_N, terminated_N | truncated_N)
        warm = replay.size >= learning_starts
        learn_now = warm & (state.iteration % learn_every == 0)
        zeros = {name: jnp.zeros((), jnp.float32) for name in metric_names}
        learner, learn_metrics, learn_noise = jax.lax.cond(
            learn_now,
            lambda: learn_updates(state.learner, replay, key_learn, state.learn_noise),
            lambda: (state.learner, zeros, state.learn_noise),
        )
        # Noisy acting keeps one noise sample between optimisation steps (Sec. 3); before learning
        # starts, and for epsilon-greedy, every step gets a fresh key (and noisy acting new noise).
        refresh = learn_now | ~warm | (not noisy)
        act_key = jnp.where(refresh, key_next_act, state.act_key)
        act_noise = state.act_noise
        if noisy:
            act_noise = jax.lax.cond(
                refresh,
                lambda: agent.draw_act_noise(key_next_act, learner.params, num_envs),
                lambda: state.act_noise,
            )
        sums = {
            **{name: sums[name] + learn_metrics[name] for name in metric_names},
            "updates": sums["updates"] + jnp.where(learn_now, updates_per_iteration, 0),
            "epsilon": sums["epsilon"] + epsilon,
        }
        new_state = DQNTrainerState(
            learner=learner,
            replay=replay,
            env_state=env_state,
            obs=next_obs,
            stats=stats,
            act_key=act_key,
            act_noise=act_noise,
            learn_noise=learn_noise,
            rng=rng,
            env_steps=state.env_steps + num_envs,
            iteration=state.iteration + 1,
        )
        return (new_state, sums), None

    def train_chunk(state: DQNTrainerState) -> tuple[DQNTrainerState, dict[str, jax.Array]]:
        state = state._replace(stats=episode_stats_reset_chunk(state.stats))
        sums = {name: jnp.zeros((), jnp.float32) for name in metric_names}
        sums["updates"] = jnp.zeros((), jnp.int32)
        sums["epsilon"] = jnp.zeros((), jnp.float32)
        (state, sums), _ = jax.lax.scan(iteration_step, (state, sums), None, length=iterations)
        updates = sums["updates"]
        per_update = {
            name: jnp.where(updates > 0, sums[name] / jnp.maximum(updates, 1), jnp.nan)
            for name in metric_names
        }
        metrics = {
            "env_steps": state.env_steps,
            "episodes": state.stats.finished_count,
            "mean_episode_return": mean_finished_return(state.stats),
            "learn_steps": state.learner.learn_steps,
            **per_update,
        }
        if not noisy:
            metrics["epsilon"] = sums["epsilon"] / iterations
        return state, metrics

    def evaluate(state: DQNTrainerState, rng: jax.Array, num_episodes: int) -> jax.Array:
        epsilon = jnp.asarray(float(config.agent.epsilon_eval), jnp.float32)
        mean_weights = noisy and eval_noise(config) == "mean"

        def policy(obs_NxO, key):
            params = state.learner.params
            noise = None
            if mean_weights:  # every draw zero: the layers compute with mu alone
                noise = jnp.zeros_like(agent.draw_act_noise(key, params, 1, per_row=False))
            return agent.act(params, obs_NxO, key, epsilon, noise)

        return evaluate_policy(env, env_params, policy, rng, num_episodes)

    return Trainer(init, train_chunk, evaluate)


def eval_noise(config: ConfigDict) -> str:
    """config.eval.noise: "sample" (fresh noise, the paper's evaluation) or "mean" (mu alone)."""
    return str(config.get("eval", {}).get("noise", "sample"))


def make_trainer(config: ConfigDict, env, env_params) -> Trainer:
    """The Trainer for config.agent.name: "dqn", "dueling" (dueling double DQN) or "a2c"."""
    name = config.agent.name
    if name in ("dqn", "dueling"):
        return make_dqn_trainer(config, env, env_params)
    if name == "a2c":
        return a2c.make_a2c_trainer(config, env, env_params)
    raise ConfigError(f"config.agent.name={name!r} is not one of {AGENTS}")
