"""DQN, double/dueling DQN and their NoisyNet versions as pure functions (arXiv:1706.10295, Sec. 3.1).

NoisyNet-DQN acts greedily on the noisy Q (no epsilon-greedy) and minimises
E[(r + gamma max_b Q(y, b, eps'; zeta^-) - Q(x, a, eps; zeta))^2] (Huber here, as in DQN), with
independent noise samples eps (online), eps' (target) and, for the double-Q target
b* = argmax_b Q(y, b, eps''; zeta), a third one eps'' (Sec. 3.1, NoisyNet-Dueling). One noise sample
is shared by the minibatch and a new one is drawn at every optimisation step. The baseline uses
the mean weights and epsilon-greedy acting. Noise enters as pre-drawn N(0, 1) arrays (LearnNoise;
for acting one sample shared by a seed's parallel environments, as the single actor of the paper
and the usual implementations whose noise buffer is shared by the batch, or one per environment
with agent.act_noise_per_env), so a training loop can draw it ahead of use: drawn in the same XLA
computation, the normal transform would be recomputed inside every p x q loop.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from deepgen.core.optim import make_optimizer
from deepgen.noisynet.networks import QNetwork, make_q_network, network_noise_size
from deepgen.noisynet.replay import Transition


class LearnerState(NamedTuple):
    """Online and target parameters, optimiser state and the number of optimisation steps done."""

    params: Any
    target_params: Any
    opt_state: Any
    learn_steps: jax.Array


class LearnNoise(NamedTuple):
    """Independent N(0, 1) samples for one optimisation step: online Q, target Q, double-Q selection."""

    online: jax.Array
    target: jax.Array
    select: jax.Array


def draw_learn_noise(rng: jax.Array, size: int, leading: tuple[int, ...] = ()) -> LearnNoise:
    """The three samples of one (or `leading` many) optimisation steps, from one normal draw."""
    draws = jax.random.normal(rng, (*leading, 3, size))
    return LearnNoise(draws[..., 0, :], draws[..., 1, :], draws[..., 2, :])


def q_values(
    apply_fn: Callable,
    params: Any,
    obs: jax.Array,
    noise: jax.Array | None,
    *,
    noisy: bool,
    per_example_noise: bool = False,
) -> jax.Array:
    """Q(obs) with the pre-drawn noise sample (noisy) or with the deterministic weights."""
    if not noisy:
        return apply_fn({"params": params}, obs, use_noise=False)
    return apply_fn(
        {"params": params}, obs, use_noise=True, per_example_noise=per_example_noise, noise=noise
    )


def select_action(
    params: Any,
    obs_BxO: jax.Array,
    rng: jax.Array,
    *,
    apply_fn: Callable,
    epsilon: jax.Array | float,
    noisy: bool,
    noise: jax.Array | None = None,
) -> jax.Array:
    """Greedy on the noisy Q (noise (Z,): one sample for all rows; (B, Z): one per row), else epsilon-greedy."""
    if noisy:
        if noise is None:
            raise ValueError(
                "noisy acting needs noise: one N(0, 1) sample (Z,) or one per row (B, Z)"
            )
        per_row = noise.ndim == 2
        q_BxA = q_values(apply_fn, params, obs_BxO, noise, noisy=True, per_example_noise=per_row)
        return jnp.argmax(q_BxA, axis=-1).astype(jnp.int32)
    q_BxA = q_values(apply_fn, params, obs_BxO, None, noisy=False)
    key_explore, key_action = jax.random.split(rng)
    batch, num_actions = q_BxA.shape
    explore_B = jax.random.uniform(key_explore, (batch,)) < epsilon
    random_B = jax.random.randint(key_action, (batch,), 0, num_actions)
    return jnp.where(explore_B, random_B, jnp.argmax(q_BxA, axis=-1)).astype(jnp.int32)


def dqn_loss(
    params: Any,
    *,
    target_params: Any,
    batch: Transition,
    noise: LearnNoise | None,
    apply_fn: Callable,
    gamma: float,
    double: bool,
    noisy: bool,
    huber_delta: float,
) -> tuple[jax.Array, dict]:
    """Mean Huber TD error of the (double) DQN target; aux holds the Q statistics (noise: None if not noisy)."""
    online, target, select = (None, None, None) if noise is None else noise
    q_tm1_BxA = q_values(apply_fn, params, batch.obs, online, noisy=noisy)
    q_t_target_BxA = q_values(apply_fn, target_params, batch.next_obs, target, noisy=noisy)
    if double:
        q_t_select_BxA = q_values(apply_fn, params, batch.next_obs, select, noisy=noisy)
        best_B = jnp.argmax(q_t_select_BxA, axis=-1)
    else:
        best_B = jnp.argmax(q_t_target_BxA, axis=-1)
    bootstrap_B = jnp.take_along_axis(q_t_target_BxA, best_B[:, None], axis=-1)[:, 0]
    target_B = jax.lax.stop_gradient(
        batch.reward + gamma * batch.discount * bootstrap_B.astype(jnp.float32)
    )
    q_taken_B = jnp.take_along_axis(q_tm1_BxA, batch.action[:, None].astype(jnp.int32), -1)[:, 0]
    td_B = target_B - q_taken_B
    loss = jnp.mean(optax.huber_loss(td_B, delta=huber_delta))
    return loss, {"q_mean": jnp.mean(q_taken_B), "q_max": jnp.max(jnp.abs(q_tm1_BxA))}


def learn_step(
    state: LearnerState,
    batch: Transition,
    noise: LearnNoise | None,
    *,
    apply_fn: Callable,
    optimizer: optax.GradientTransformation,
    gamma: float,
    double: bool,
    noisy: bool,
    huber_delta: float,
    target_update_period: int,
) -> tuple[LearnerState, dict]:
    """One optimisation step with its (fresh, independent) noise; copies the target every period steps."""
    (loss, aux), grads = jax.value_and_grad(dqn_loss, has_aux=True)(
        state.params,
        target_params=state.target_params,
        batch=batch,
        noise=noise,
        apply_fn=apply_fn,
        gamma=gamma,
        double=double,
        noisy=noisy,
        huber_delta=huber_delta,
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    learn_steps = state.learn_steps + 1
    copy = learn_steps % target_update_period == 0
    target_params = jax.tree.map(
        lambda online, target: jnp.where(copy, online, target), params, state.target_params
    )
    metrics = {"loss": loss, "grad_norm": optax.tree_utils.tree_norm(grads), **aux}
    return LearnerState(params, target_params, opt_state, learn_steps), metrics


def linear_epsilon(env_step: jax.Array, *, start: float, end: float, decay_steps: int) -> jax.Array:
    """Epsilon decayed linearly from start to end over decay_steps environment steps."""
    fraction = jnp.clip(jnp.asarray(env_step, jnp.float32) / max(decay_steps, 1), 0.0, 1.0)
    return start + fraction * (end - start)


class DQNAgent(NamedTuple):
    """The pure pieces of one configured DQN-family agent (see make_dqn_agent).

    act(params, obs, rng, epsilon, noise=None) and learn(state, batch, rng) draw their noise from
    rng; learn_with_noise and act's `noise` take it pre-drawn (draw_learn_noise, draw_act_noise).
    """

    network: QNetwork
    optimizer: optax.GradientTransformation
    init: Callable[[jax.Array, jax.Array], LearnerState]
    act: Callable[..., jax.Array]
    learn: Callable[[LearnerState, Transition, jax.Array], tuple[LearnerState, dict]]
    learn_with_noise: Callable[[LearnerState, Transition, LearnNoise], tuple[LearnerState, dict]]
    draw_learn_noise: Callable[..., LearnNoise]
    draw_act_noise: Callable[[jax.Array, Any, int], jax.Array]
    epsilon: Callable[[jax.Array], jax.Array]


def num_learn_steps(config: ConfigDict) -> int:
    """Optimisation steps in a whole run (for learning-rate schedules)."""
    return max(int(config.train.num_steps) // int(config.agent.env_steps_per_update), 1)


def make_dqn_agent(config: ConfigDict, num_actions: int) -> DQNAgent:
    """DQN ("dqn", double-Q if agent.double) or dueling double DQN ("dueling"), noisy or not."""
    agent = config.agent
    network = make_q_network(config, num_actions)
    optimizer = make_optimizer(config.opt, num_learn_steps(config))
    noisy = bool(agent.noisy)
    double = bool(agent.double) or agent.name == "dueling"

    def init(rng: jax.Array, obs_example_1xO: jax.Array) -> LearnerState:
        key_params, key_noise = jax.random.split(rng)
        params = network.init({"params": key_params, "noise": key_noise}, obs_example_1xO)["params"]
        return LearnerState(
            params=params,
            target_params=jax.tree.map(jnp.copy, params),
            opt_state=optimizer.init(params),
            learn_steps=jnp.zeros((), jnp.int32),
        )

    def noise_size(params: Any) -> int:
        return network_noise_size(params, agent.noise_type) if noisy else 0

    def draw_act_noise(
        rng: jax.Array, params: Any, num_rows: int, per_row: bool | None = None
    ) -> jax.Array | None:
        """Acting noise: (num_rows, Z) if per_row (default agent.act_noise_per_env), else (Z,)."""
        if not noisy:
            return None
        per_row = bool(agent.get("act_noise_per_env", False)) if per_row is None else per_row
        shape = (num_rows, noise_size(params)) if per_row else (noise_size(params),)
        return jax.random.normal(rng, shape)

    def draw_learner_noise(
        rng: jax.Array, params: Any, leading: tuple[int, ...] = ()
    ) -> LearnNoise | None:
        return draw_learn_noise(rng, noise_size(params), leading) if noisy else None

    def act(
        params: Any,
        obs_BxO: jax.Array,
        rng: jax.Array,
        epsilon: jax.Array,
        noise: jax.Array | None = None,
    ) -> jax.Array:
        if noisy and noise is None:  # a fresh sample for every row (evaluation, host loops)
            noise = draw_act_noise(rng, params, obs_BxO.shape[0], per_row=True)
        return select_action(
            params, obs_BxO, rng, apply_fn=network.apply, epsilon=epsilon, noisy=noisy, noise=noise
        )

    def learn(state: LearnerState, batch: Transition, rng: jax.Array) -> tuple[LearnerState, dict]:
        return learn_with_noise(state, batch, draw_learner_noise(rng, state.params))

    def learn_with_noise(
        state: LearnerState, batch: Transition, noise: LearnNoise | None
    ) -> tuple[LearnerState, dict]:
        return learn_step(
            state,
            batch,
            noise,
            apply_fn=network.apply,
            optimizer=optimizer,
            gamma=float(agent.gamma),
            double=double,
            noisy=noisy,
            huber_delta=float(agent.huber_delta),
            target_update_period=int(agent.target_update_period),
        )

    def epsilon(env_step: jax.Array) -> jax.Array:
        return linear_epsilon(
            env_step,
            start=float(agent.epsilon_start),
            end=float(agent.epsilon_end),
            decay_steps=int(agent.epsilon_decay_steps),
        )

    return DQNAgent(
        network,
        optimizer,
        init,
        act,
        learn,
        learn_with_noise,
        draw_learner_noise,
        draw_act_noise,
        epsilon,
    )
