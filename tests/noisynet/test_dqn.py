"""DQN pieces: replay ring buffer, the (double) DQN loss, independent noise keys, resampling, Q bounds.

Agents are initialised and applied through jitted functions made once per agent (`_agent`), the
replay through module-level jitted functions, and inputs are NumPy: op-by-op (eager) JAX would
compile every operation at every shape.
"""

import functools

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import noisynet as noisynet_configs
from deepgen.noisynet import dqn
from deepgen.noisynet.networks import network_noise_size
from deepgen.noisynet.replay import Transition, replay_add, replay_init, replay_sample
from deepgen.noisynet.trainer import make_trainer

OBS = 4

_replay_init = jax.jit(replay_init, static_argnums=1)
_replay_add = jax.jit(replay_add)
_replay_sample = jax.jit(replay_sample, static_argnums=2)


def transitions(start: int, count: int) -> Transition:
    ids = np.arange(start, start + count, dtype=np.float32)
    return Transition(
        obs=np.tile(ids[:, None], (1, OBS)),
        action=np.arange(count, dtype=np.int32) % 2,
        reward=ids,
        next_obs=np.tile(ids[:, None], (1, OBS)) + 0.5,
        discount=np.ones((count,), np.float32),
    )


def test_replay_ring_buffer_overwrites_the_oldest_and_samples_only_filled_slots():
    example = jax.tree.map(lambda x: x[0], transitions(0, 1))
    state = _replay_init(example, 5)
    state = _replay_add(state, transitions(0, 3))
    assert int(state.size) == 3 and int(state.position) == 3
    sample = _replay_sample(state, jax.random.PRNGKey(0), 300)
    assert set(np.asarray(sample.reward).tolist()) == {0.0, 1.0, 2.0}
    np.testing.assert_array_equal(sample.next_obs[:, 0], sample.reward + 0.5)
    state = _replay_add(state, transitions(3, 4))  # 3, 4 fill the end; 5, 6 overwrite 0, 1
    assert int(state.size) == 5 and int(state.position) == 2
    np.testing.assert_array_equal(state.storage.reward, [5.0, 6.0, 2.0, 3.0, 4.0])
    sample = _replay_sample(state, jax.random.PRNGKey(1), 300)
    assert set(np.asarray(sample.reward).tolist()) == {2.0, 3.0, 4.0, 5.0, 6.0}


def small_config(agent: str = "dqn", noisy: bool = True):
    config = noisynet_configs.get_config(f"smoke_{agent}")
    config.agent.noisy = noisy
    return config


@functools.cache
def _agent(agent: str = "dqn", noisy: bool = True):
    """(agent, jitted init(seed) -> LearnerState, jitted network.apply) of a smoke config (2
    actions, CartPole-sized observations)."""
    built = dqn.make_dqn_agent(small_config(agent, noisy), 2)
    init = jax.jit(lambda seed: built.init(jax.random.PRNGKey(seed), jnp.zeros((1, OBS))))
    apply = jax.jit(built.network.apply, static_argnames=("use_noise", "per_example_noise"))
    return built, init, apply


def make_batch(batch: int = 8, seed: int = 0) -> Transition:
    rng = np.random.default_rng(seed)
    return Transition(
        obs=rng.standard_normal((batch, OBS)).astype(np.float32),
        action=rng.integers(0, 2, batch).astype(np.int32),
        reward=rng.uniform(size=batch).astype(np.float32),
        next_obs=rng.standard_normal((batch, OBS)).astype(np.float32),
        discount=np.array([1.0, 0.0] * (batch // 2), np.float32),
    )


@pytest.mark.parametrize("double", [False, True])
def test_deterministic_loss_matches_a_hand_computed_huber_td_error(double):
    agent, init, apply = _agent(noisy=False)
    state = init(0)
    target_params = jax.tree.map(lambda p: np.asarray(p) * 1.5, state.params)
    batch = make_batch()
    noise = agent.draw_learn_noise(jax.random.PRNGKey(1), state.params)  # size 0: baseline
    loss_fn = functools.partial(
        dqn.dqn_loss,
        apply_fn=agent.network.apply,
        gamma=0.9,
        double=double,
        noisy=False,
        huber_delta=1.0,
    )
    loss, _ = jax.jit(loss_fn)(state.params, target_params=target_params, batch=batch, noise=noise)

    def q(params, obs):
        return np.asarray(apply({"params": params}, obs, use_noise=False))

    q_tm1, q_t_target, q_t_online = (
        q(state.params, batch.obs),
        q(target_params, batch.next_obs),
        q(state.params, batch.next_obs),
    )
    best = (q_t_online if double else q_t_target).argmax(axis=1)
    rows = np.arange(len(best))
    target = np.asarray(batch.reward) + 0.9 * np.asarray(batch.discount) * q_t_target[rows, best]
    td = target - q_tm1[rows, np.asarray(batch.action)]
    huber = np.where(np.abs(td) <= 1.0, 0.5 * td**2, np.abs(td) - 0.5)
    np.testing.assert_allclose(float(loss), huber.mean(), rtol=1e-5)


def test_online_target_and_selection_noise_are_independent_draws():
    """learn_step traced once (jit) with an apply that records, at trace time, which parameters
    and inputs each of its three forward passes reads; the samples come back as outputs."""
    agent, init, apply = _agent("dueling")
    state = init(0)
    batch = make_batch()
    noise = jax.jit(agent.draw_learn_noise)(jax.random.PRNGKey(5), state.params)
    size = network_noise_size(state.params, "factorised")
    assert noise.online.shape == noise.target.shape == noise.select.shape == (size,)
    roles = []

    @jax.jit
    def samples_seen(state, batch, noise):
        samples = []

        def recording_apply(variables, obs, **kwargs):
            is_target = variables["params"] is state.target_params
            roles.append("target" if is_target else ("online" if obs is batch.obs else "select"))
            samples.append(kwargs["noise"])
            return agent.network.apply(variables, obs, **kwargs)

        dqn.learn_step(
            state,
            batch,
            noise,
            apply_fn=recording_apply,
            optimizer=agent.optimizer,
            gamma=0.99,
            double=True,
            noisy=True,
            huber_delta=1.0,
            target_update_period=100,
        )
        return samples

    seen = samples_seen(state, batch, noise)
    assert len(roles) == len(seen) == 3
    by_role = {role: np.asarray(sample) for role, sample in zip(roles, seen, strict=True)}
    np.testing.assert_array_equal(by_role["online"], noise.online)
    np.testing.assert_array_equal(by_role["target"], noise.target)
    np.testing.assert_array_equal(by_role["select"], noise.select)
    # Three separate standard-normal samples: pairwise nearly uncorrelated, unit variance.
    samples = np.stack([by_role[r] for r in ("online", "target", "select")])
    correlation = np.corrcoef(samples)
    assert np.all(np.abs(correlation[np.triu_indices(3, 1)]) < 0.2), correlation
    assert np.all(np.abs(samples.std(axis=1) - 1.0) < 0.15)
    # Same parameters and inputs, the three samples give three different Q functions.
    qs = [apply({"params": state.params}, batch.next_obs, noise=sample) for sample in noise]
    assert not np.allclose(qs[0], qs[1]) and not np.allclose(qs[1], qs[2])


def test_noisy_acting_ignores_epsilon_and_uses_per_row_noise():
    agent, init, _ = _agent()
    baseline, baseline_init, _ = _agent(noisy=False)
    obs = np.random.default_rng(1).standard_normal((64, OBS)).astype(np.float32)
    key = jax.random.PRNGKey(2)

    @jax.jit
    def acting(params, baseline_params, obs, key):
        """Every action and Q value the checks below compare, in one compilation."""
        q = functools.partial(agent.network.apply, {"params": params})
        one = jnp.float32(1.0)
        noise = agent.draw_act_noise(key, params, 64, per_row=True)
        shared = agent.draw_act_noise(key, params, 64)
        same_obs = jnp.broadcast_to(obs[:1], obs.shape)  # per-row noise: one state, varied Q
        return {
            "actions": agent.act(params, obs, key, one, noise),
            "q": q(obs, per_example_noise=True, noise=noise),
            "actions_own_draw": agent.act(params, obs, key, one),
            "q_rows": q(same_obs, per_example_noise=True, noise=noise),
            "shared": shared,
            "q_shared": q(same_obs, noise=shared),
            "actions_shared": agent.act(params, obs, key, one, shared),
            "q_obs_shared": q(obs, noise=shared),
            "greedy": baseline.act(baseline_params, obs, key, jnp.float32(0.0)),
            "q_mean": baseline.network.apply({"params": baseline_params}, obs, use_noise=False),
            "random": baseline.act(baseline_params, obs, key, one),
        }

    out = jax.device_get(acting(init(0).params, baseline_init(0).params, obs, key))
    np.testing.assert_array_equal(out["actions"], np.argmax(out["q"], axis=1))
    # Without pre-drawn noise the agent draws the same rows from the key.
    np.testing.assert_array_equal(out["actions_own_draw"], out["actions"])
    assert np.unique(np.round(out["q_rows"][:, 0], 6)).size == 64
    # The default for the training loop: one sample shared by all rows (environments).
    assert out["shared"].shape == (network_noise_size(init(0).params, "factorised"),)
    q_shared = out["q_shared"]
    np.testing.assert_allclose(q_shared, np.broadcast_to(q_shared[:1], q_shared.shape), rtol=1e-6)
    np.testing.assert_array_equal(out["actions_shared"], np.argmax(out["q_obs_shared"], axis=1))
    np.testing.assert_array_equal(out["greedy"], np.argmax(out["q_mean"], axis=1))
    assert 10 < int(out["random"].sum()) < 54  # about half of 64 uniform picks of two actions


def test_target_network_is_copied_every_period_optimisation_steps():
    agent, init, _ = _agent(noisy=False)
    state = init(0)
    period = 3
    learn = jax.jit(
        lambda s, b, k: dqn.learn_step(
            s,
            b,
            k,
            apply_fn=agent.network.apply,
            optimizer=optax.sgd(0.1),
            gamma=0.99,
            double=False,
            noisy=False,
            huber_delta=1.0,
            target_update_period=period,
        )
    )
    initial = state.target_params
    for step in range(1, 7):
        noise = agent.draw_learn_noise(jax.random.PRNGKey(step), state.params)
        state, _ = learn(state, make_batch(seed=step), noise)
        same = jax.tree.map(np.array_equal, state.params, state.target_params)
        assert all(jax.tree.leaves(same)) == (step % period == 0)
        if step < period:
            assert all(jax.tree.leaves(jax.tree.map(np.array_equal, initial, state.target_params)))


@functools.cache
def _one_iteration_trainer():
    """Noisy dueling double DQN on CartPole, one iteration (2 envs, one step each) per chunk:
    (config, jitted init, jitted train_chunk), compiled once for the two tests below."""
    config = small_config("dueling")
    config.env.num_envs = 2
    config.train.steps_per_chunk = 2  # one iteration per chunk
    config.agent.learning_starts = 16
    config.agent.batch_size = 4
    config.agent.env_steps_per_update = 4  # one optimisation step every other iteration
    env, env_params = gymnax.make("CartPole-v1")
    trainer = make_trainer(config, env, env_params)
    return config, jax.jit(trainer.init), jax.jit(trainer.train_chunk)


def test_acting_noise_is_resampled_after_every_optimisation_step_and_held_between():
    config, init, chunk = _one_iteration_trainer()
    state = init(jax.random.PRNGKey(0))
    act_keys, act_noises, learn_steps, warm = [], [], [], []
    for _ in range(16):
        state, metrics = chunk(state)
        act_keys.append(tuple(np.asarray(state.act_key).tolist()))
        act_noises.append(np.asarray(state.act_noise))
        learn_steps.append(int(metrics["learn_steps"]))
        warm.append(int(state.replay.size) >= config.agent.learning_starts)
    assert chunk._cache_size() == 1  # no retrace between chunks
    held = 0
    for i in range(1, 16):
        learned = learn_steps[i] > learn_steps[i - 1]
        # A new key after each optimisation step (and at every step before learning starts).
        assert (act_keys[i] != act_keys[i - 1]) == (learned or not warm[i])
        # The drawn noise itself is held in the carry and replaced exactly then.
        changed = not np.array_equal(act_noises[i], act_noises[i - 1])
        assert changed == (learned or not warm[i])
        held += warm[i] and not learned
    assert learn_steps[-1] >= 3 and held >= 3


def test_q_values_stay_bounded_on_cartpole():
    """Noisy dueling double DQN (plain DQN: tests/noisynet/test_noisynet_e2e.py), two seeds of
    2048 env steps each, run as 1024 one-iteration chunks: every optimisation step's max |Q| over
    its batch stays finite and below 1 / (1 - gamma)."""
    config, init, chunk = _one_iteration_trainer()
    bound = 1.0 / (1.0 - float(config.agent.gamma))  # rewards are 1 per step: |Q| <= 100
    for seed in range(2):
        state = init(jax.random.PRNGKey(seed))
        per_chunk = []
        for _ in range(2048 // 2):
            state, metrics = chunk(state)
            per_chunk.append(metrics)
        per_chunk = jax.device_get(per_chunk)
        learn_steps = np.array([0] + [m["learn_steps"] for m in per_chunk])
        learned = np.diff(learn_steps) > 0  # q_max is NaN for a chunk without an update
        q_max = np.array([m["q_max"] for m in per_chunk])[learned]
        assert np.all(np.isfinite(q_max)) and np.all(q_max < bound), q_max.max()
        assert learn_steps[-1] > 100
        assert sum(int(m["episodes"]) for m in per_chunk) > 0


@pytest.mark.parametrize(
    ("variant", "obs_shape", "dtype"),
    [("dueling_breakout", (10, 10, 4), jnp.float32), ("atari_dqn", (84, 84, 4), jnp.uint8)],
)
def test_minatar_and_nature_networks_give_one_q_per_action(variant, obs_shape, dtype):
    """Shapes and parameter names only: traced (jax.eval_shape), not compiled."""
    config = noisynet_configs.get_config(variant)
    agent = dqn.make_dqn_agent(config, 6)
    example = jax.ShapeDtypeStruct((1, *obs_shape), dtype)
    state = jax.eval_shape(agent.init, jax.random.PRNGKey(0), example)
    obs = jax.ShapeDtypeStruct((3, *obs_shape), dtype)
    actions = jax.eval_shape(agent.act, state.params, obs, jax.random.PRNGKey(1), jnp.float32(0))
    assert actions.shape == (3,) and actions.dtype == jnp.int32
    noisy_layers = [k for k in state.params if "sigma_w" in str(state.params[k])]
    heads = {"value_hidden", "value_out", "advantage_hidden", "advantage_out"}
    assert heads <= set(state.params) if config.agent.name == "dueling" else "q_out" in state.params
    assert "Conv_0" in state.params["torso"] and len(noisy_layers) >= 2
