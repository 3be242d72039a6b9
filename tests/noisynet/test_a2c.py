"""A2C / NoisyNet-A2C: n-step returns, the loss, noise held per rollout, learning on CartPole."""

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.noisynet import get_config
from deepgen.core.errors import ConfigError
from deepgen.noisynet import a2c
from deepgen.noisynet.networks import make_actor_critic, network_noise_size
from deepgen.noisynet.trainer import make_trainer


def _loop_returns(reward, terminated, truncated, next_value, gamma):
    """The n-step returns by an explicit backward loop over time, one env at a time."""
    steps, envs = reward.shape
    out = np.zeros((steps, envs))
    for e in range(envs):
        following = next_value[-1, e]
        for t in reversed(range(steps)):
            if terminated[t, e]:
                following = reward[t, e]
            elif truncated[t, e] or t == steps - 1:
                following = reward[t, e] + gamma * next_value[t, e]
            else:
                following = reward[t, e] + gamma * following
            out[t, e] = following
    return out


def test_nstep_returns_hand_computed_with_episode_ends():
    gamma = 0.9
    # env 0 terminates at t=1; env 1 is truncated at t=2; env 2 is both at t=3 (terminal wins).
    reward = np.array([[1, 1, 1], [2, 1, 1], [3, 1, 1], [4, 1, 5]], np.float32)
    terminated = np.zeros((4, 3), bool)
    truncated = np.zeros((4, 3), bool)
    terminated[1, 0] = True
    truncated[2, 1] = True
    terminated[3, 2] = truncated[3, 2] = True
    next_value = np.array([[10, 5, 1], [20, 6, 1], [30, 7, 1], [40, 8, 99]], np.float32)
    returns = a2c.nstep_returns(
        reward_TxE=reward,
        terminated_TxE=terminated,
        truncated_TxE=truncated,
        next_value_TxE=next_value,
        gamma=gamma,
    )
    r0_3 = 4 + 0.9 * 40
    r0 = [1 + 0.9 * 2, 2, 3 + 0.9 * r0_3, r0_3]
    r1_2 = 1 + 0.9 * 7  # truncated: bootstrap from V of the true next state
    r1_3 = 1 + 0.9 * 8
    r1 = [1 + 0.9 * (1 + 0.9 * r1_2), 1 + 0.9 * r1_2, r1_2, r1_3]
    r2 = [1 + 0.9 * (1 + 0.9 * (1 + 0.9 * 5)), 1 + 0.9 * (1 + 0.9 * 5), 1 + 0.9 * 5, 5]
    np.testing.assert_allclose(np.asarray(returns), np.array([r0, r1, r2]).T, rtol=1e-6)


def test_nstep_returns_match_a_loop_on_random_rollouts():
    rng = np.random.default_rng(0)
    shape = (16, 7)
    reward = rng.normal(size=shape).astype(np.float32)
    terminated = rng.random(shape) < 0.15
    truncated = rng.random(shape) < 0.1
    next_value = rng.normal(size=shape).astype(np.float32)
    returns = a2c.nstep_returns(
        reward_TxE=reward,
        terminated_TxE=terminated,
        truncated_TxE=truncated,
        next_value_TxE=next_value,
        gamma=0.97,
    )
    expected = _loop_returns(reward, terminated, truncated, next_value, 0.97)
    np.testing.assert_allclose(np.asarray(returns), expected, rtol=1e-5, atol=1e-5)


def test_a2c_loss_terms_and_entropy_gradient_closed_form():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 3)).astype(np.float32)
    value = rng.normal(size=(6,)).astype(np.float32)
    action = np.array([0, 2, 1, 1, 0, 2], np.int32)
    ret = rng.normal(size=(6,)).astype(np.float32)

    @jax.jit
    def loss(logits, entropy_coef):
        return a2c.a2c_loss(
            logits_NxA=logits,
            value_N=value,
            action_N=action,
            return_N=ret,
            value_coef=0.5,
            entropy_coef=entropy_coef,
        )

    total, m = loss(logits, 0.01)
    z = np.asarray(logits, np.float64)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    p = np.exp(logp)
    adv = np.asarray(ret) - np.asarray(value)
    policy_loss = -np.mean(logp[np.arange(6), np.asarray(action)] * adv)
    value_loss = 0.5 * np.mean(adv**2)
    entropy_n = -(p * logp).sum(-1)
    np.testing.assert_allclose(float(m["policy_loss"]), policy_loss, rtol=1e-5)
    np.testing.assert_allclose(float(m["value_loss"]), value_loss, rtol=1e-5)
    np.testing.assert_allclose(float(m["entropy"]), entropy_n.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        float(total), policy_loss + 0.5 * value_loss - 0.01 * entropy_n.mean(), rtol=1e-5
    )
    # The entropy bonus changes the gradient by -c dH/dz, with dH/dz_k = -p_k (log p_k + H).
    grad = jax.jit(jax.grad(lambda z, c: loss(z, c)[0]))
    grad0, grad1 = grad(logits, 0.0), grad(logits, 0.3)
    entropy_grad = -p * (logp + entropy_n[:, None]) / 6
    np.testing.assert_allclose(np.asarray(grad1 - grad0), -0.3 * entropy_grad, atol=1e-6)
    assert np.abs(np.asarray(grad1 - grad0)).max() > 1e-3


def _smoke(noisy: bool, **overrides):
    config = get_config("smoke_a2c")
    config.agent.noisy = noisy
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


class _ProbeNetwork:
    """The actor-critic, plus a report of its logits at a fixed observation with the same noise."""

    def __init__(self, inner, probe_obs_1xO, records):
        self.inner, self.probe_obs_1xO, self.records = inner, probe_obs_1xO, records

    def init(self, rngs, obs):
        return self.inner.init(rngs, obs)

    def apply(self, params, obs_BxO, *, noise):
        probe_logits, _ = self.inner.apply(params, self.probe_obs_1xO, noise=noise)
        jax.debug.callback(
            lambda batch, logits: self.records.append((int(batch), np.asarray(logits))),
            obs_BxO.shape[0],
            probe_logits[0],
            ordered=True,
        )
        return self.inner.apply(params, obs_BxO, noise=noise)


def test_noisy_a2c_holds_one_noise_sample_per_rollout_and_learner_uses_it():
    env, env_params = gymnax.make("CartPole-v1")
    config = _smoke(True, **{"agent.act_noise_per_env": False})  # the shared sample
    num_envs, rollout_len = config.env.num_envs, config.agent.rollout_len
    num_updates = 3
    config.train.steps_per_chunk = num_envs * rollout_len * num_updates
    records = []
    probe_obs = jnp.asarray([[0.01, -0.02, 0.03, 0.04]], jnp.float32)
    network = _ProbeNetwork(make_actor_critic(config, 2), probe_obs, records)
    trainer = a2c.make_a2c_trainer(config, env, env_params, network=network)
    state = jax.jit(trainer.init)(jax.random.PRNGKey(3))
    state, metrics = jax.jit(trainer.train_chunk)(state)
    jax.effects_barrier()
    # No entropy bonus in NoisyNet-A2C, although the config's entropy_coef is not 0.
    assert config.agent.entropy_coef > 0
    np.testing.assert_allclose(
        float(metrics["loss"]),
        float(metrics["policy_loss"] + config.agent.value_coef * metrics["value_loss"]),
        rtol=1e-5,
    )

    # Per update: rollout_len acting calls (batch num_envs), then the bootstrap and loss forwards
    # (batch num_envs * rollout_len) with the rollout's noise sample.
    per_update = rollout_len + 2
    assert len(records) == num_updates * per_update
    samples = []
    for u in range(num_updates):
        group = records[u * per_update : (u + 1) * per_update]
        sizes = [batch for batch, _ in group]
        assert sizes == [num_envs] * rollout_len + [num_envs * rollout_len] * 2
        for _, logits in group[1:]:
            np.testing.assert_array_equal(logits, group[0][1])
        samples.append(group[0][1])
    for u in range(1, num_updates):
        assert np.abs(samples[u] - samples[u - 1]).max() > 1e-4
    # The baseline network ignores the noise key: same logits whatever the key.
    base = make_actor_critic(_smoke(False), 2)
    base_params = jax.jit(base.init)({"params": jax.random.PRNGKey(0)}, probe_obs)
    base_apply = jax.jit(base.apply)
    out = [
        base_apply(base_params, probe_obs, rngs={"noise": jax.random.PRNGKey(k)})[0] for k in (1, 2)
    ]
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(out[1]))


def test_per_env_noise_gives_each_environment_its_own_sample_for_acting_and_learning():
    """agent.act_noise_per_env: A3C's actor-learners, each with its own noise sample per rollout.
    The grouped evaluation (each env's rows as one batch under its sample) equals the layers'
    per-row noise path with every row given its env's sample; one sample for all envs gives the
    shared-noise network; the trainer acts, learns and evaluates with it."""
    config = _smoke(True)  # A2C's default: agent.act_noise_per_env=True
    assert config.agent.act_noise_per_env
    num_envs, rollout_len = config.env.num_envs, config.agent.rollout_len
    network = make_actor_critic(config, 2)
    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    obs_NxO = jax.random.normal(keys[0], (rollout_len * num_envs, 4))
    obs_NxO = obs_NxO.at[1:num_envs].set(obs_NxO[0])  # every env sees the same state at t = 0
    params = network.init({"params": keys[1], "noise": keys[2]}, obs_NxO[:1])
    noise_ExZ = jax.random.normal(keys[3], (num_envs, network_noise_size(params, "independent")))
    per_env = a2c.per_env_noise_policy(a2c._policy_fn(network))

    @jax.jit
    def outputs(params, obs_NxO, noise_ExZ):
        grouped = per_env(params, obs_NxO, noise_ExZ)
        rows_noise = jnp.tile(noise_ExZ, (rollout_len, 1))  # row t * E + e: env e's sample
        per_row = network.apply(params, obs_NxO, per_example_noise=True, noise=rows_noise)
        one = per_env(params, obs_NxO, jnp.broadcast_to(noise_ExZ[0], noise_ExZ.shape))
        shared = network.apply(params, obs_NxO, noise=noise_ExZ[0])
        return grouped, per_row, one, shared

    grouped, per_row, one, shared = jax.tree.map(np.asarray, outputs(params, obs_NxO, noise_ExZ))
    for a, b in ((grouped, per_row), (one, shared)):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    logits_t0 = grouped[0][:num_envs]  # the same state, each env's own sample
    assert (
        min(np.abs(logits_t0[i] - logits_t0[j]).max() for i, j in [(0, 1), (1, 2), (2, 3)]) > 1e-4
    )

    env, env_params = gymnax.make("CartPole-v1")
    trainer = a2c.make_a2c_trainer(config, env, env_params)
    state = jax.jit(trainer.init)(jax.random.PRNGKey(3))
    state, metrics = jax.jit(trainer.train_chunk)(state)
    assert np.isfinite(float(metrics["loss"])) and int(metrics["env_steps"]) == 256
    evaluation = jax.jit(trainer.evaluate, static_argnums=2)(state, jax.random.PRNGKey(1), 2)
    assert evaluation.shape == (2,) and np.all(np.asarray(evaluation) > 0)


def test_steps_per_chunk_must_be_a_multiple_of_the_rollout():
    env, env_params = gymnax.make("CartPole-v1")
    config = _smoke(False, **{"train.steps_per_chunk": 33})
    with pytest.raises(ConfigError, match="steps_per_chunk"):
        make_trainer(config, env, env_params)


def test_a2c_learns_cartpole():
    """Baseline A2C (a2c_cartpole_baseline) lifts CartPole's return from ~22 (random) above 100."""
    env, env_params = gymnax.make("CartPole-v1")
    config = get_config("a2c_cartpole_baseline")
    config.train.steps_per_chunk = 16 * 20 * 32
    trainer = make_trainer(config, env, env_params)
    state = jax.jit(trainer.init)(jax.random.PRNGKey(0))
    train_chunk = jax.jit(trainer.train_chunk)
    returns = []
    for _ in range(13):
        state, metrics = train_chunk(state)
        returns.append(float(metrics["mean_episode_return"]))
    assert int(metrics["env_steps"]) == 13 * 16 * 20 * 32
    assert returns[0] < 40
    assert np.mean(returns[-2:]) > 100, returns
    # The baseline's loss carries the entropy bonus: loss = policy + c_v value - c_H entropy.
    np.testing.assert_allclose(
        float(metrics["loss"]),
        float(
            metrics["policy_loss"]
            + config.agent.value_coef * metrics["value_loss"]
            - config.agent.entropy_coef * metrics["entropy"]
        ),
        rtol=1e-4,
        atol=1e-6,
    )
    evaluation = jax.jit(trainer.evaluate, static_argnums=2)(state, jax.random.PRNGKey(1), 8)
    assert evaluation.shape == (8,) and float(evaluation.mean()) > 60
