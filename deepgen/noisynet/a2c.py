"""Advantage actor-critic with parallel environments (A2C) and NoisyNet-A2C, fully jitted.

A2C is the synchronous form of A3C (Mnih et al. 2016, arXiv:1602.01783): A3C's asynchronous
Hogwild updates from many actor-learner threads have no place in a jitted program, so here
`num_envs` gymnax environments step in lock-step (vmap) and one gradient step follows each
rollout of `rollout_len` steps. Kept from A3C: n-step bootstrapped returns
R_t = r_t + gamma R_{t+1} (bootstrapped with V at the rollout's end), the advantage R_t - V(s_t),
the policy-gradient and value losses, the entropy bonus and global gradient-norm clipping.
A3C used shared RMSProp: the gymnax configs use Adam, the Atari variant A3C's RMSProp (config.opt,
with opt.clip_norm as the gradient clipping). `make_atari_a2c` is the learner of the Atari host
loop (experiments/noisynet/atari_a2c.py): the same losses on uint8 frame stacks stepped by real
emulators on the host.

NoisyNet-A2C (Fortunato et al. 2018, arXiv:1706.10295, Sec. 3.1, NoisyNet-A3C): the dense layers
of deepgen.noisynet.networks.ActorCritic are noisy (independent Gaussian noise in the paper's A3C
setting, config.agent.noise_type), the entropy bonus is removed (entropy_coef forced to 0), and the
noise is held fixed for a whole rollout, so that the n-step return is consistent; it is
resampled before the next rollout, i.e. once per optimisation step (the paper: "between
optimisation steps, the agent acts according to a fixed set of parameters"). With
agent.act_noise_per_env (A2C's default in configs/noisynet.py) each environment holds its own
sample for the rollout, as each of A3C's actor-learner threads held its own parameters
(`per_env_noise_policy`); without it one sample is shared by all of them. Either way the learner's loss and bootstrap values
for a transition use the sample it was acted with. Evaluation acts with noise on, a fresh
sample each step (one per evaluation episode with agent.act_noise_per_env).

Episode ends follow gymnax 1.0: a terminated step bootstraps with 0, a truncated (time-limit)
step bootstraps with V of the true next state, info["final_observation"].
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from deepgen.core.errors import ConfigError
from deepgen.core.optim import make_optimizer
from deepgen.noisynet.networks import ActorCritic, make_actor_critic, network_noise_size
from deepgen.noisynet.rollout import Trainer, evaluate_policy, vmapped_reset, vmapped_step

# (params, obs_BxO, noise: a pre-drawn N(0, 1) sample or None) -> (logits_BxA, value_B)
PolicyFn = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


class Runner(NamedTuple):
    """The parallel environments between rollouts."""

    env_state: Any
    obs_ExO: jax.Array
    episode_return_E: jax.Array


class Transitions(NamedTuple):
    """One rollout, time-major: leading axes T (rollout_len) and E (num_envs)."""

    obs_TxExO: jax.Array
    action_TxE: jax.Array
    reward_TxE: jax.Array
    terminated_TxE: jax.Array
    truncated_TxE: jax.Array
    next_obs_TxExO: jax.Array  # the true next state s'_t, also where the env auto-reset
    finished_return_TxE: jax.Array  # the episode's return where it ended at this step, else 0


class A2CState(NamedTuple):
    """Everything one seed's agent carries between chunks; vmappable over seeds."""

    params: Any
    opt_state: Any
    runner: Runner
    rng: jax.Array
    noise_key: jax.Array  # the noise sample of the latest rollout
    env_steps: jax.Array
    updates: jax.Array


def num_updates(config: ConfigDict) -> int:
    """Optimisation steps in the whole run: one per rollout of num_envs x rollout_len env steps."""
    per_update = int(config.env.num_envs) * int(config.agent.rollout_len)
    return max(1, math.ceil(int(config.train.num_steps) / per_update))


def nstep_returns(
    *,
    reward_TxE: jax.Array,
    terminated_TxE: jax.Array,
    truncated_TxE: jax.Array,
    next_value_TxE: jax.Array,
    gamma: float,
) -> jax.Array:
    """R_t = r_t + gamma (1 - term_t) [V(s'_t) if the episode ended at t or t = T-1, else R_{t+1}]."""
    ended_TxE = jnp.logical_or(terminated_TxE, truncated_TxE)
    continuing_TxE = 1.0 - terminated_TxE.astype(jnp.float32)

    def backward(next_return_E, inputs):
        reward_E, continuing_E, ended_E, next_value_E = inputs
        follow_E = jnp.where(ended_E, next_value_E, next_return_E)
        return_E = reward_E + gamma * continuing_E * follow_E
        return return_E, return_E

    _, returns_TxE = jax.lax.scan(
        backward,
        next_value_TxE[-1],
        (reward_TxE.astype(jnp.float32), continuing_TxE, ended_TxE, next_value_TxE),
        reverse=True,
    )
    return returns_TxE


def a2c_loss(
    *,
    logits_NxA: jax.Array,
    value_N: jax.Array,
    action_N: jax.Array,
    return_N: jax.Array,
    value_coef: float,
    entropy_coef: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """-mean(log pi(a|s) A) + value_coef mean((R - V)^2)/2 - entropy_coef mean(H), A = R - V held fixed."""
    log_probs_NxA = jax.nn.log_softmax(logits_NxA)
    log_prob_N = jnp.take_along_axis(log_probs_NxA, action_N[:, None], axis=-1)[:, 0]
    advantage_N = jax.lax.stop_gradient(return_N - value_N)
    policy_loss = -jnp.mean(log_prob_N * advantage_N)
    value_loss = 0.5 * jnp.mean(jnp.square(return_N - value_N))
    entropy = -jnp.mean(jnp.sum(jnp.exp(log_probs_NxA) * log_probs_NxA, axis=-1))
    loss = policy_loss + value_coef * value_loss - entropy_coef * entropy
    metrics = {
        "loss": loss,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "advantage_mean": jnp.mean(advantage_N),
    }
    return loss, metrics


def rollout_loss(
    policy: Callable,
    params: Any,
    batch: Transitions,
    return_TxE: jax.Array,
    noise: Any,
    *,
    value_coef: float,
    entropy_coef: float,
) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
    """a2c_loss of the policy on a rollout's transitions: (loss, its metrics, value_N)."""
    obs_NxO = batch.obs_TxExO.reshape((-1, *batch.obs_TxExO.shape[2:]))
    logits_NxA, value_N = policy(params, obs_NxO, noise)
    loss, metrics = a2c_loss(
        logits_NxA=logits_NxA,
        value_N=value_N,
        action_N=batch.action_TxE.reshape(-1),
        return_N=return_TxE.reshape(-1),
        value_coef=value_coef,
        entropy_coef=entropy_coef,
    )
    return loss, metrics, value_N


def a2c_step(
    params: Any,
    opt_state: Any,
    batch: Transitions,
    noise: Any,
    *,
    policy: Callable,
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    gamma: float,
) -> tuple[Any, Any, Any, dict, jax.Array]:
    """One A2C optimisation step on a rollout: (params, opt_state, grads, loss aux, returns).

    The n-step returns bootstrap from the critic at the next observations, evaluated with the
    rollout's noise (`noise`: whatever `policy` and `loss_fn` take as their noise argument).
    """
    rollout_len, num_envs = batch.action_TxE.shape
    next_obs_NxO = batch.next_obs_TxExO.reshape((-1, *batch.next_obs_TxExO.shape[2:]))
    _, next_value_N = policy(params, next_obs_NxO, noise)
    return_TxE = nstep_returns(
        reward_TxE=batch.reward_TxE,
        terminated_TxE=batch.terminated_TxE,
        truncated_TxE=batch.truncated_TxE,
        next_value_TxE=jax.lax.stop_gradient(next_value_N).reshape((rollout_len, num_envs)),
        gamma=gamma,
    )
    grads, aux = jax.grad(loss_fn, has_aux=True)(params, batch, return_TxE, noise)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, grads, aux, return_TxE


def _policy_fn(network: Any) -> PolicyFn:
    """Apply the actor-critic network with a pre-drawn noise sample; bool frames become floats."""

    def policy(params, obs_BxO, noise):
        if obs_BxO.dtype == jnp.bool_:
            obs_BxO = obs_BxO.astype(jnp.float32)
        return network.apply(params, obs_BxO, noise=noise)

    return policy


def draw_rollout_noise(
    noise_key: jax.Array,
    params: Any,
    noise_type: str,
    noisy: bool,
    num_envs: int | None = None,
) -> jax.Array | None:
    """The rollout's N(0, 1) noise: one sample (Z,), or one per env (num_envs, Z); None: baseline.

    Drawing it once per rollout instead of once per forward pass saves rollout_len + 1 draws, each
    with a fixed cost far above these small layers on a CPU.
    """
    if not noisy:
        return None
    size = network_noise_size(params, noise_type)
    return jax.random.normal(noise_key, (size,) if num_envs is None else (num_envs, size))


def per_env_noise_policy(policy: Callable) -> Callable:
    """`policy` with one noise sample per environment: (params, obs_NxO, noise_E) -> outputs.

    noise_E holds E samples (an (E, Z) draw); the N = T * E rows are in (time, env) order, as a
    flattened rollout and a batch of env observations (T = 1) are; env e's rows are evaluated
    with noise_E[e], each env's rows as one batch sharing its sample.
    """

    def policy_per_env(params: Any, obs_NxO: jax.Array, noise_E: Any):
        rows, num_envs = obs_NxO.shape[0], noise_E.shape[0]
        if rows % num_envs:
            raise ValueError(f"{rows} observation rows are not whole steps of {num_envs} envs")
        obs_TxExO = obs_NxO.reshape(rows // num_envs, num_envs, *obs_NxO.shape[1:])
        logits_ExTxA, value_ExT = jax.vmap(
            lambda obs_TxO, noise: policy(params, obs_TxO, noise), in_axes=(1, 0)
        )(obs_TxExO, noise_E)
        return jnp.swapaxes(logits_ExTxA, 0, 1).reshape(rows, -1), value_ExT.T.reshape(rows)

    return policy_per_env


def rollout(
    params: Any,
    runner: Runner,
    noise: jax.Array | None,
    rng: jax.Array,
    *,
    policy: PolicyFn,
    env: Any,
    env_params: Any,
    rollout_len: int,
) -> tuple[Runner, Transitions]:
    """Step all environments rollout_len times with one fixed noise sample (lax.scan over time)."""

    def step(runner: Runner, step_rng: jax.Array):
        act_rng, env_rng = jax.random.split(step_rng)
        logits_ExA, _ = policy(params, runner.obs_ExO, noise)
        action_E = jax.random.categorical(act_rng, logits_ExA)
        obs_ExO, env_state, reward_E, terminated_E, truncated_E, info = vmapped_step(
            env, env_params, env_rng, runner.env_state, action_E
        )
        reward_E = reward_E.astype(jnp.float32)
        ended_E = jnp.logical_or(terminated_E, truncated_E)
        episode_return_E = runner.episode_return_E + reward_E
        transition = Transitions(
            obs_TxExO=runner.obs_ExO,
            action_TxE=action_E,
            reward_TxE=reward_E,
            terminated_TxE=terminated_E,
            truncated_TxE=truncated_E,
            next_obs_TxExO=info["final_observation"],
            finished_return_TxE=jnp.where(ended_E, episode_return_E, 0.0),
        )
        runner = Runner(env_state, obs_ExO, jnp.where(ended_E, 0.0, episode_return_E))
        return runner, transition

    return jax.lax.scan(step, runner, jax.random.split(rng, rollout_len))


def make_a2c_trainer(
    config: ConfigDict, env: Any, env_params: Any, *, network: Any = None
) -> Trainer:
    """A2C / NoisyNet-A2C (config.agent.noisy) on a gymnax env; network defaults to N1's actor-critic."""
    num_envs = int(config.env.num_envs)
    rollout_len = int(config.agent.rollout_len)
    steps_per_update = num_envs * rollout_len
    steps_per_chunk = int(config.train.steps_per_chunk)
    if num_envs <= 0 or rollout_len <= 0:
        raise ConfigError("config.env.num_envs and config.agent.rollout_len must be positive")
    if steps_per_chunk <= 0 or steps_per_chunk % steps_per_update:
        raise ConfigError(
            f"config.train.steps_per_chunk={steps_per_chunk} must be a positive multiple of "
            f"env.num_envs * agent.rollout_len = {steps_per_update}"
        )
    updates_per_chunk = steps_per_chunk // steps_per_update
    total_updates = num_updates(config)
    noisy = bool(config.agent.noisy)
    noise_type = str(config.agent.noise_type)
    per_env = noisy and bool(config.agent.get("act_noise_per_env", False))
    gamma = float(config.agent.gamma)
    value_coef = float(config.agent.value_coef)
    entropy_coef = 0.0 if noisy else float(config.agent.entropy_coef)
    num_actions = int(env.action_space(env_params).n)
    if network is None:
        network = make_actor_critic(config, num_actions)
    shared_policy = _policy_fn(network)
    policy = per_env_noise_policy(shared_policy) if per_env else shared_policy
    optimizer = make_optimizer(config.opt, total_updates)

    def init(rng: jax.Array) -> A2CState:
        rng, params_rng, noise_rng, env_rng = jax.random.split(rng, 4)
        obs_ExO, env_state = vmapped_reset(env, env_params, env_rng, num_envs)
        init_obs = obs_ExO[:1].astype(jnp.float32) if obs_ExO.dtype == jnp.bool_ else obs_ExO[:1]
        params = network.init({"params": params_rng, "noise": noise_rng}, init_obs)
        runner = Runner(env_state, obs_ExO, jnp.zeros((num_envs,), jnp.float32))
        return A2CState(
            params=params,
            opt_state=optimizer.init(params),
            runner=runner,
            rng=rng,
            noise_key=noise_rng,
            env_steps=jnp.zeros((), jnp.int32),
            updates=jnp.zeros((), jnp.int32),
        )

    def loss_fn(params, batch: Transitions, return_TxE, noise):
        loss, metrics, _ = rollout_loss(
            policy,
            params,
            batch,
            return_TxE,
            noise,
            value_coef=value_coef,
            entropy_coef=entropy_coef,
        )
        return loss, metrics

    def update(state: A2CState, _):
        rng, noise_key, rollout_rng = jax.random.split(state.rng, 3)
        noise = draw_rollout_noise(
            noise_key, state.params, noise_type, noisy, num_envs if per_env else None
        )
        runner, batch = rollout(
            state.params,
            state.runner,
            noise,
            rollout_rng,
            policy=policy,
            env=env,
            env_params=env_params,
            rollout_len=rollout_len,
        )
        params, opt_state, grads, metrics, _ = a2c_step(
            state.params,
            state.opt_state,
            batch,
            noise,
            policy=policy,
            loss_fn=loss_fn,
            optimizer=optimizer,
            gamma=gamma,
        )
        ended_TxE = jnp.logical_or(batch.terminated_TxE, batch.truncated_TxE)
        metrics = {
            **metrics,
            "grad_norm": optax.tree.norm(grads),
            "episodes": jnp.sum(ended_TxE, dtype=jnp.int32),
            "return_sum": jnp.sum(batch.finished_return_TxE),
        }
        state = A2CState(
            params=params,
            opt_state=opt_state,
            runner=runner,
            rng=rng,
            noise_key=noise_key,
            env_steps=state.env_steps + steps_per_update,
            updates=state.updates + 1,
        )
        return state, metrics

    def train_chunk(state: A2CState) -> tuple[A2CState, dict[str, jax.Array]]:
        state, per_update = jax.lax.scan(update, state, length=updates_per_chunk)
        episodes = jnp.sum(per_update.pop("episodes"))
        return_sum = jnp.sum(per_update.pop("return_sum"))
        metrics = {name: jnp.mean(values) for name, values in per_update.items()}
        metrics["env_steps"] = state.env_steps
        metrics["episodes"] = episodes
        metrics["mean_episode_return"] = jnp.where(
            episodes > 0, return_sum / jnp.maximum(episodes, 1), jnp.nan
        )
        return state, metrics

    mean_weights = noisy and str(config.get("eval", {}).get("noise", "sample")) == "mean"

    def evaluate(state: A2CState, rng: jax.Array, num_episodes: int) -> jax.Array:
        def act(obs_NxO: jax.Array, key: jax.Array) -> jax.Array:
            noise_key, act_key = jax.random.split(key)
            episodes = obs_NxO.shape[0]
            noise = draw_rollout_noise(
                noise_key, state.params, noise_type, noisy, episodes if per_env else None
            )
            if mean_weights:  # every draw zero: the layers compute with mu alone
                noise = jnp.zeros_like(noise)
            logits_NxA, _ = policy(state.params, obs_NxO, noise)
            return jax.random.categorical(act_key, logits_NxA)

        return evaluate_policy(env, env_params, act, rng, num_episodes)

    return Trainer(init=init, train_chunk=train_chunk, evaluate=evaluate)


class A2CLearner(NamedTuple):
    """What the Atari A2C learner carries between rollouts (the checkpointed state)."""

    params: Any
    opt_state: Any
    updates: jax.Array


class AtariA2CAgent(NamedTuple):
    """The pure pieces of one configured Atari A2C agent (see make_atari_a2c)."""

    network: ActorCritic
    optimizer: optax.GradientTransformation
    init: Callable[[jax.Array, jax.Array], A2CLearner]
    draw_noise: Callable[[jax.Array, Any, int], jax.Array | None]
    policy: Callable[[Any, jax.Array, Any], tuple[jax.Array, jax.Array]]
    act: Callable[[Any, jax.Array, Any, jax.Array], jax.Array]
    act_mean_weights: Callable[[Any, jax.Array, jax.Array], jax.Array]
    learn: Callable[[A2CLearner, Transitions, Any], tuple[A2CLearner, dict]]
    entropy_coef: float


def make_atari_a2c(config: ConfigDict, num_actions: int) -> AtariA2CAgent:
    """A2C, or NoisyNet-A2C when config.agent.noisy, for uint8 BxHxWxS Atari frame stacks.

    The noise of a rollout is drawn once, by `draw_noise(noise_key, params, num_envs)`: one
    N(0, 1) sample (Z,), or with agent.act_noise_per_env one per env (num_envs, Z) (None for the
    baseline). It is held for the whole rollout: acting, the learner's loss and its bootstrap
    values all take it (one sample per optimisation step), and `policy` expects rows in (time,
    env) order when it is per env. Drawn once instead of at every forward pass: the Nature head's
    independent noise is 1.6M normals per sample, and a rollout makes rollout_len + 2 passes.
    """
    network = make_actor_critic(config, num_actions)
    optimizer = make_optimizer(config.opt, num_updates(config))
    gamma = float(config.agent.gamma)
    value_coef = float(config.agent.value_coef)
    noisy = bool(config.agent.noisy)
    noise_type = str(config.agent.noise_type)
    entropy_coef = 0.0 if noisy else float(config.agent.entropy_coef)
    per_env = noisy and bool(config.agent.get("act_noise_per_env", False))

    def draw_noise(noise_key: jax.Array, params: Any, num_envs: int) -> jax.Array | None:
        """The rollout's noise: (Z,), or (num_envs, Z) per env; None without noisy layers."""
        return draw_rollout_noise(
            noise_key, params, noise_type, noisy, num_envs if per_env else None
        )

    def shared_policy(
        params: Any, obs_BxHxWxS: jax.Array, noise: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        """(logits_BxA, value_B) with one pre-drawn noise sample (Z,) for the batch."""
        return network.apply(params, obs_BxHxWxS, noise=noise)

    def policy(
        params: Any, obs_BxHxWxS: jax.Array, noise: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        """(logits_BxA, value_B) under the rollout's noise: shared, or env e's own per row."""
        if not per_env:
            return shared_policy(params, obs_BxHxWxS, noise)
        return per_env_noise_policy(shared_policy)(params, obs_BxHxWxS, noise)

    def init(rng: jax.Array, obs_example_1xHxWxS: jax.Array) -> A2CLearner:
        params_key, noise_key = jax.random.split(rng)
        params = network.init({"params": params_key, "noise": noise_key}, obs_example_1xHxWxS)
        return A2CLearner(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    def act(
        params: Any, obs_ExHxWxS: jax.Array, noise: jax.Array | None, rng: jax.Array
    ) -> jax.Array:
        def one_env(obs_HxWxS: jax.Array, key: jax.Array, env_noise: Any) -> jax.Array:
            logits_1xA, _ = shared_policy(params, obs_HxWxS[None], env_noise)
            return jax.random.categorical(key, logits_1xA[0])

        keys_E = jax.random.split(rng, obs_ExHxWxS.shape[0])
        noise_axis = 0 if per_env else None  # env e acts with its own sample
        actions_E = jax.vmap(one_env, in_axes=(0, 0, noise_axis))(obs_ExHxWxS, keys_E, noise)
        return actions_E.astype(jnp.int32)

    def act_mean_weights(params: Any, obs_ExHxWxS: jax.Array, rng: jax.Array) -> jax.Array:
        """Actions sampled from the policy of the mean weights mu (no noise)."""
        logits_ExA, _ = network.apply(params, obs_ExHxWxS, use_noise=False)
        keys_E = jax.random.split(rng, obs_ExHxWxS.shape[0])
        return jax.vmap(jax.random.categorical)(keys_E, logits_ExA).astype(jnp.int32)

    def loss_fn(params: Any, batch: Transitions, return_TxE: jax.Array, noise: Any):
        loss, aux, value_N = rollout_loss(
            policy,
            params,
            batch,
            return_TxE,
            noise,
            value_coef=value_coef,
            entropy_coef=entropy_coef,
        )
        return loss, {**aux, "value_mean": jnp.mean(value_N)}

    def learn(learner: A2CLearner, batch: Transitions, noise: Any) -> tuple[A2CLearner, dict]:
        params, opt_state, grads, aux, return_TxE = a2c_step(
            learner.params,
            learner.opt_state,
            batch,
            noise,
            policy=policy,
            loss_fn=loss_fn,
            optimizer=optimizer,
            gamma=gamma,
        )
        aux = {**aux, "grad_norm": optax.tree.norm(grads), "return_mean": jnp.mean(return_TxE)}
        return A2CLearner(params, opt_state, learner.updates + 1), aux

    return AtariA2CAgent(
        network,
        optimizer,
        init,
        draw_noise,
        policy,
        act,
        act_mean_weights,
        learn,
        entropy_coef,
    )
