"""DQN pieces: replay ring buffer, the (double) DQN loss, independent noise keys, resampling, Q bounds."""

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


def transitions(start: int, count: int) -> Transition:
    ids = jnp.arange(start, start + count, dtype=jnp.float32)
    return Transition(
        obs=jnp.tile(ids[:, None], (1, OBS)),
        action=jnp.arange(count, dtype=jnp.int32) % 2,
        reward=ids,
        next_obs=jnp.tile(ids[:, None], (1, OBS)) + 0.5,
        discount=jnp.ones((count,)),
    )


def test_replay_ring_buffer_overwrites_the_oldest_and_samples_only_filled_slots():
    example = jax.tree.map(lambda x: x[0], transitions(0, 1))
    state = replay_init(example, capacity=5)
    state = jax.jit(replay_add)(state, transitions(0, 3))
    assert int(state.size) == 3 and int(state.position) == 3
    sample = replay_sample(state, jax.random.PRNGKey(0), 200)
    assert set(np.asarray(sample.reward).tolist()) == {0.0, 1.0, 2.0}
    np.testing.assert_array_equal(sample.next_obs[:, 0], sample.reward + 0.5)
    state = replay_add(state, transitions(3, 4))  # 3, 4 fill the end; 5, 6 overwrite 0, 1
    assert int(state.size) == 5 and int(state.position) == 2
    np.testing.assert_array_equal(state.storage.reward, [5.0, 6.0, 2.0, 3.0, 4.0])
    sample = jax.jit(replay_sample, static_argnums=2)(state, jax.random.PRNGKey(1), 300)
    assert set(np.asarray(sample.reward).tolist()) == {2.0, 3.0, 4.0, 5.0, 6.0}


def small_config(agent: str = "dqn", noisy: bool = True):
    config = noisynet_configs.get_config(f"smoke_{agent}")
    config.agent.noisy = noisy
    return config


def make_batch(batch: int = 8, seed: int = 0) -> Transition:
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    return Transition(
        obs=jax.random.normal(k1, (batch, OBS)),
        action=jax.random.randint(k2, (batch,), 0, 2),
        reward=jax.random.uniform(k3, (batch,)),
        next_obs=jax.random.normal(k4, (batch, OBS)),
        discount=jnp.array([1.0, 0.0] * (batch // 2)),
    )


@pytest.mark.parametrize("double", [False, True])
def test_deterministic_loss_matches_a_hand_computed_huber_td_error(double):
    agent = dqn.make_dqn_agent(small_config(noisy=False), 2)
    state = agent.init(jax.random.PRNGKey(0), jnp.zeros((1, OBS)))
    target_params = jax.tree.map(lambda p: p * 1.5, state.params)
    batch = make_batch()
    noise = agent.draw_learn_noise(jax.random.PRNGKey(1), state.params)  # size 0: baseline
    loss, _ = dqn.dqn_loss(
        state.params,
        target_params=target_params,
        batch=batch,
        noise=noise,
        apply_fn=agent.network.apply,
        gamma=0.9,
        double=double,
        noisy=False,
        huber_delta=1.0,
    )

    def q(params, obs):
        return np.asarray(agent.network.apply({"params": params}, obs, use_noise=False))

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
    agent = dqn.make_dqn_agent(small_config("dueling"), 2)
    state = agent.init(jax.random.PRNGKey(0), jnp.zeros((1, OBS)))
    calls = []

    def recording_apply(variables, obs, **kwargs):
        calls.append((variables["params"], obs, kwargs["noise"]))
        return agent.network.apply(variables, obs, **kwargs)

    batch = make_batch()
    noise = agent.draw_learn_noise(jax.random.PRNGKey(5), state.params)
    size = network_noise_size(state.params, "factorised")
    assert noise.online.shape == noise.target.shape == noise.select.shape == (size,)
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
    assert len(calls) == 3
    by_role = {}
    for params, obs, sample in calls:
        is_target = params is state.target_params
        role = "target" if is_target else ("online" if obs is batch.obs else "select")
        by_role[role] = np.asarray(sample)
    np.testing.assert_array_equal(by_role["online"], noise.online)
    np.testing.assert_array_equal(by_role["target"], noise.target)
    np.testing.assert_array_equal(by_role["select"], noise.select)
    # Three separate standard-normal samples: pairwise nearly uncorrelated, unit variance.
    samples = np.stack([by_role[r] for r in ("online", "target", "select")])
    correlation = np.corrcoef(samples)
    assert np.all(np.abs(correlation[np.triu_indices(3, 1)]) < 0.2), correlation
    assert np.all(np.abs(samples.std(axis=1) - 1.0) < 0.15)
    # Same parameters and inputs, the three samples give three different Q functions.
    qs = [
        agent.network.apply({"params": state.params}, batch.next_obs, noise=sample)
        for sample in noise
    ]
    assert not np.allclose(qs[0], qs[1]) and not np.allclose(qs[1], qs[2])


def test_noisy_acting_ignores_epsilon_and_uses_per_row_noise():
    agent = dqn.make_dqn_agent(small_config(), 2)
    state = agent.init(jax.random.PRNGKey(0), jnp.zeros((1, OBS)))
    obs = jax.random.normal(jax.random.PRNGKey(1), (64, OBS))
    key = jax.random.PRNGKey(2)
    noise = agent.draw_act_noise(key, state.params, 64, per_row=True)
    actions = agent.act(state.params, obs, key, jnp.float32(1.0), noise)
    q = agent.network.apply({"params": state.params}, obs, per_example_noise=True, noise=noise)
    np.testing.assert_array_equal(actions, np.argmax(q, axis=1))
    # Without pre-drawn noise the agent draws the same rows from the key.
    np.testing.assert_array_equal(agent.act(state.params, obs, key, jnp.float32(1.0)), actions)
    same_obs = jnp.broadcast_to(obs[:1], obs.shape)  # per-row noise: one state, varied Q values
    q_rows = agent.network.apply(
        {"params": state.params}, same_obs, per_example_noise=True, noise=noise
    )
    assert np.unique(np.round(np.asarray(q_rows[:, 0]), 6)).size == 64
    # The default for the training loop: one sample shared by all rows (environments).
    shared = agent.draw_act_noise(key, state.params, 64)
    assert shared.shape == (network_noise_size(state.params, "factorised"),)
    q_shared = agent.network.apply({"params": state.params}, same_obs, noise=shared)
    np.testing.assert_allclose(q_shared, np.broadcast_to(q_shared[:1], q_shared.shape), rtol=1e-6)
    np.testing.assert_array_equal(
        agent.act(state.params, obs, key, jnp.float32(1.0), shared),
        np.argmax(agent.network.apply({"params": state.params}, obs, noise=shared), axis=1),
    )
    baseline = dqn.make_dqn_agent(small_config(noisy=False), 2)
    params = baseline.init(jax.random.PRNGKey(0), jnp.zeros((1, OBS))).params
    greedy = baseline.act(params, obs, key, jnp.float32(0.0))
    q_mean = baseline.network.apply({"params": params}, obs, use_noise=False)
    np.testing.assert_array_equal(greedy, np.argmax(q_mean, axis=1))
    random = baseline.act(params, obs, key, jnp.float32(1.0))
    assert 10 < int(random.sum()) < 54  # about half of 64 uniform picks of two actions


def test_target_network_is_copied_every_period_optimisation_steps():
    agent = dqn.make_dqn_agent(small_config(noisy=False), 2)
    state = agent.init(jax.random.PRNGKey(0), jnp.zeros((1, OBS)))
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


def test_acting_noise_is_resampled_after_every_optimisation_step_and_held_between():
    config = small_config()
    config.env.num_envs = 2
    config.train.steps_per_chunk = 2  # one iteration per chunk
    config.agent.learning_starts = 16
    config.agent.batch_size = 4
    config.agent.env_steps_per_update = 4  # one optimisation step every other iteration
    import gymnax

    env, env_params = gymnax.make("CartPole-v1")
    trainer = make_trainer(config, env, env_params)
    chunk = jax.jit(trainer.train_chunk)
    state = trainer.init(jax.random.PRNGKey(0))
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
    config = small_config("dueling")  # plain DQN: tests/noisynet/test_noisynet_e2e.py
    config.train.steps_per_chunk = 2048
    env_params_gamma = float(config.agent.gamma)
    import gymnax

    env, env_params = gymnax.make("CartPole-v1")
    trainer = make_trainer(config, env, env_params)
    state = jax.vmap(trainer.init)(jax.random.split(jax.random.PRNGKey(0), 2))
    state, metrics = jax.jit(jax.vmap(trainer.train_chunk))(state)
    q_max = np.asarray(metrics["q_max"])
    # Rewards are 1 per step: |Q| <= 1 / (1 - gamma) = 100.
    assert np.all(np.isfinite(q_max)) and np.all(q_max < 1.0 / (1.0 - env_params_gamma))
    assert np.all(np.asarray(metrics["learn_steps"]) > 100)
    assert np.all(np.asarray(metrics["episodes"]) > 0)


@pytest.mark.parametrize(
    ("variant", "obs_shape", "dtype"),
    [("dueling_breakout", (10, 10, 4), jnp.float32), ("atari_dqn", (84, 84, 4), jnp.uint8)],
)
def test_minatar_and_nature_networks_give_one_q_per_action(variant, obs_shape, dtype):
    config = noisynet_configs.get_config(variant)
    agent = dqn.make_dqn_agent(config, 6)
    state = agent.init(jax.random.PRNGKey(0), jnp.zeros((1, *obs_shape), dtype))
    obs = jnp.ones((3, *obs_shape), dtype)
    actions = agent.act(state.params, obs, jax.random.PRNGKey(1), jnp.float32(0.0))
    assert actions.shape == (3,) and actions.dtype == jnp.int32
    noisy_layers = [k for k in state.params if "sigma_w" in str(state.params[k])]
    heads = {"value_hidden", "value_out", "advantage_hidden", "advantage_out"}
    assert heads <= set(state.params) if config.agent.name == "dueling" else "q_out" in state.params
    assert "Conv_0" in state.params["torso"] and len(noisy_layers) >= 2
