"""Exp3.S and the reward reservoir against a float64 trace written out by hand (Algorithm 1)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.curriculum import exp3s

ETA, BETA, EPS = 0.3, 0.01, 0.05  # a large eta so that a short trace moves the weights visibly


def hand_trace(tasks, raw_rewards, num_tasks):
    """Algorithm 1 with plain exponentials, lists and np.quantile (no log space, no reservoir cap)."""
    w = np.zeros(num_tasks)
    history, out = [], []
    for t, (k, raw) in enumerate(zip(tasks, raw_rewards, strict=False), start=1):
        pi = (1 - EPS) * np.exp(w) / np.exp(w).sum() + EPS / num_tasks
        history.append(raw)
        q_lo, q_hi = np.quantile(history, 0.2), np.quantile(history, 0.8)
        if raw < q_lo:
            r = -1.0
        elif raw > q_hi:
            r = 1.0
        else:
            r = 2 * (raw - q_lo) / (q_hi - q_lo) - 1 if q_hi > q_lo else 1.0
        r_tilde = np.array([((r if i == k else 0.0) + BETA) / pi[i] for i in range(num_tasks)])
        alpha = 1.0 / t
        e = np.exp(w + ETA * r_tilde)
        w = np.array(
            [
                np.log((1 - alpha) * e[i] + alpha / (num_tasks - 1) * (e.sum() - e[i]))
                for i in range(num_tasks)
            ]
        )
        out.append((pi, r, w - w.max()))
    return out


@functools.partial(jax.jit, static_argnames=("eta", "beta", "epsilon"))
def _one_update(state, task, raw, rng, *, eta, beta, epsilon):
    probs = exp3s.policy(state, epsilon=epsilon)
    new_state, seen = exp3s.update(
        state, task=task, raw_reward=raw, probs_N=probs, rng=rng, eta=eta, beta=beta
    )
    return new_state, probs, seen.reward


def test_weights_and_policy_follow_the_hand_trace():
    rng = np.random.default_rng(0)
    num_tasks, steps = 4, 25
    tasks = rng.integers(0, num_tasks, steps)
    raw = rng.normal(size=steps) * (1 + tasks)  # task-dependent progress
    expected = hand_trace(tasks, raw, num_tasks)
    state = exp3s.init(num_tasks, reservoir_size=64)  # larger than the trace: nothing is dropped
    for t in range(steps):
        state, probs, reward = _one_update(
            state,
            jnp.int32(tasks[t]),
            jnp.float32(raw[t]),
            jax.random.key(t),
            eta=ETA,
            beta=BETA,
            epsilon=EPS,
        )
        pi, r, w = expected[t]
        np.testing.assert_allclose(np.asarray(probs), pi, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(float(reward), r, atol=2e-5)
        np.testing.assert_allclose(np.asarray(state.log_weights_N), w, atol=5e-5)
    assert int(state.t) == steps + 1 and int(state.count) == steps
    # The reservoir holds the RAW rewards (one public version stored the scaled ones).
    np.testing.assert_allclose(np.sort(np.asarray(state.reservoir_R[:steps])), np.sort(raw), 1e-6)


def test_first_update_mixes_fully_and_later_ones_less():
    """alpha_1 = 1: after the first update each weight is the log-mean of the OTHER arms' boosts."""
    state = exp3s.init(3, 8)
    probs = exp3s.policy(state, epsilon=EPS)
    w = exp3s.update_weights(
        state.log_weights_N,
        state.t,
        task=jnp.int32(0),
        reward=jnp.float32(1.0),
        probs_N=probs,
        eta=1.0,
        beta=0.0,
    )
    boost = 1.0 / float(probs[0])
    # arm 0 gets the mean of arms 1, 2 (unboosted: exp(0)); arms 1, 2 get (e^boost + 1) / 2.
    expected = np.array([0.0, np.log((np.exp(boost) + 1) / 2), np.log((np.exp(boost) + 1) / 2)])
    np.testing.assert_allclose(np.asarray(w), expected - expected.max(), atol=1e-5)


def fill(values, size, key):
    """Pass values through reservoir_add one by one: (reservoir, count)."""

    def body(carry, inputs):
        i, value = inputs
        return exp3s.reservoir_add(*carry, value, jax.random.fold_in(key, i)), None

    start = (jnp.full((size,), jnp.inf), jnp.int32(0))
    indices = jnp.arange(len(values))
    return jax.lax.scan(body, start, (indices, jnp.asarray(values, jnp.float32)))[0]


def test_quantiles_match_numpy_and_rescale_is_clipped():
    values = np.array([0.3, -1.2, 2.5, 0.7, 0.71, 5.0, -0.1], np.float32)
    buffer, count = fill(values, 16, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(buffer[:7]), np.sort(values))  # kept in order
    lo, hi = exp3s.reservoir_quantiles(buffer, count)
    np.testing.assert_allclose([float(lo), float(hi)], np.quantile(values, [0.2, 0.8]), rtol=1e-6)
    # Quantiles are not rounded up (one public version applied ceil to them).
    assert float(lo) != np.ceil(float(lo))
    scaled = exp3s.rescale(jnp.asarray([-5.0, float(lo), float(hi), 9.0, (lo + hi) / 2]), lo, hi)
    np.testing.assert_allclose(np.asarray(scaled), [-1, -1, 1, 1, 0], atol=1e-6)


def test_a_full_reservoir_stays_sorted_and_its_quantiles_are_numpys():
    """Replacements keep the order, ties and negatives included; quantiles equal np.quantile's."""
    values = np.round(np.random.default_rng(1).normal(size=300), 1)  # many ties
    buffer, count = jax.jit(fill, static_argnums=1)(values, 40, jax.random.key(3))
    kept = np.asarray(buffer)
    assert int(count) == 300 and np.all(np.isfinite(kept)) and np.all(np.diff(kept) >= 0)
    assert set(kept.tolist()) <= set(values.astype(np.float32).tolist())
    lo, hi = exp3s.reservoir_quantiles(buffer, count)
    np.testing.assert_allclose([float(lo), float(hi)], np.quantile(kept, [0.2, 0.8]), rtol=1e-6)


def test_reservoir_keeps_a_uniform_sample():
    """Algorithm R: after n values, each is in a buffer of size R with probability R / n."""
    size, n, trials = 5, 20, 4000

    def included(key):
        buffer, _ = fill(np.arange(n), size, key)
        return jnp.zeros(n).at[buffer.astype(jnp.int32)].add(1.0)

    inclusion = jax.jit(jax.vmap(included))(jax.random.split(jax.random.key(0), trials)).mean(0)
    standard_error = np.sqrt(0.25 * 0.75 / trials)
    np.testing.assert_allclose(np.asarray(inclusion), size / n, atol=4.5 * standard_error)


def test_policy_floor_and_convergence_to_a_rewarding_arm():
    """pi >= eps / N always; a constantly best arm reaches about 1 - eps + eps / N."""
    num_tasks, epsilon = 5, 0.05
    state = exp3s.init(num_tasks, 256)

    def body(carry, key):
        state = carry
        probs = exp3s.policy(state, epsilon=epsilon)
        task = jax.random.categorical(key, jnp.log(probs))
        raw = jnp.where(task == 2, 1.0, 0.0) + 0.01 * jax.random.normal(jax.random.fold_in(key, 1))
        state, _ = exp3s.update(
            state,
            task=task,
            raw_reward=raw,
            probs_N=probs,
            rng=jax.random.fold_in(key, 2),
            eta=0.05,
            beta=0.0,
        )
        return state, probs.min()

    state, minima = jax.jit(
        lambda s: jax.lax.scan(body, s, jax.random.split(jax.random.key(1), 3000))
    )(state)
    probs = np.asarray(exp3s.policy(state, epsilon=epsilon))
    assert np.all(np.asarray(minima) >= epsilon / num_tasks - 1e-7)
    assert probs[2] == pytest.approx(1 - epsilon + epsilon / num_tasks, abs=0.02)
    assert np.all(np.isfinite(np.asarray(state.log_weights_N)))


def test_tasks_are_sampled_not_argmaxed():
    """The syllabus is stochastic: draws from pi follow pi (one public version took the argmax)."""
    state = exp3s.init(3, 8)._replace(log_weights_N=jnp.asarray([0.0, -0.5, -1.0]))
    probs = exp3s.policy(state, epsilon=0.05)
    draws = jax.random.categorical(jax.random.key(0), jnp.log(probs), shape=(20000,))
    frequencies = np.bincount(np.asarray(draws), minlength=3) / 20000
    np.testing.assert_allclose(frequencies, np.asarray(probs), atol=0.015)
