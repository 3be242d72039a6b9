"""Exact checks of the discrete-data Bayesian flow, its losses and the sampler (BFN Sec. 6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.bfn import discrete, sampler

BETA1 = 9.0


def test_schedule_closed_forms():
    t = jnp.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(discrete.accuracy_schedule(t, beta1=BETA1), BETA1 * t**2)
    np.testing.assert_allclose(discrete.accuracy_rate(t, beta1=BETA1), 2 * BETA1 * t)


@pytest.mark.parametrize("n_steps", [1, 7, 10, 784])
def test_discrete_time_accuracies_sum_to_beta1(n_steps):
    i = jnp.arange(1, n_steps + 1, dtype=jnp.float32)
    alphas = discrete.step_accuracy(i, n_steps=n_steps, beta1=BETA1)
    np.testing.assert_allclose(float(jnp.sum(alphas)), BETA1, rtol=1e-5)
    # each alpha_i is the increment beta(i/n) - beta((i-1)/n)
    expected = discrete.accuracy_schedule(i / n_steps, beta1=BETA1) - discrete.accuracy_schedule(
        (i - 1) / n_steps, beta1=BETA1
    )
    np.testing.assert_allclose(alphas, expected, rtol=2e-4, atol=1e-6)  # float32 cancellation


@pytest.mark.parametrize("num_classes", [2, 5])
def test_flow_logits_have_the_closed_form_mean_and_variance(num_classes):
    # theta = softmax(y) with y ~ N(beta (K e_x - 1), beta K I); log theta - mean(log theta)
    # recovers y - mean(y), whose mean and variance are known in closed form.
    t = 0.6
    beta = BETA1 * t**2
    num = 200_000
    x = jnp.zeros((num,), jnp.int32)
    onehot = jax.nn.one_hot(x, num_classes)
    theta = discrete.flow_sample(onehot, jnp.full((num,), t), beta1=BETA1, rng=jax.random.key(0))
    assert np.allclose(np.asarray(theta.sum(-1)), 1.0, atol=1e-5)
    log_theta = np.log(np.asarray(theta, np.float64))
    centred = log_theta - log_theta.mean(-1, keepdims=True)
    mean_y = beta * (num_classes * np.eye(num_classes)[0] - 1)
    centring = np.eye(num_classes) - 1.0 / num_classes
    expected_mean = centring @ mean_y
    expected_cov = beta * num_classes * centring @ centring.T
    np.testing.assert_allclose(centred.mean(0), expected_mean, atol=0.05)
    np.testing.assert_allclose(np.cov(centred.T), expected_cov, rtol=0.02, atol=0.05)


def test_flow_is_uniform_at_t0_and_concentrates_with_t():
    onehot = jax.nn.one_hot(jnp.zeros((4096,), jnp.int32), 3)
    theta0 = discrete.flow_sample(onehot, jnp.zeros((4096,)), beta1=BETA1, rng=jax.random.key(1))
    np.testing.assert_allclose(theta0, 1.0 / 3.0, atol=1e-7)
    entropies = []
    for t in (0.2, 0.5, 1.0):
        theta = discrete.flow_sample(
            onehot, jnp.full((4096,), t), beta1=BETA1, rng=jax.random.key(2)
        )
        entropies.append(float(-jnp.mean(jnp.sum(theta * jnp.log(theta + 1e-30), -1))))
    assert entropies[0] > entropies[1] > entropies[2]


def test_n_sequential_updates_reproduce_the_flow_at_t1():
    # Updating the prior with the n senders y_i ~ N(alpha_i (K e_x - 1), alpha_i K I) multiplies
    # theta by exp(sum_i y_i), and sum_i y_i ~ N(beta(1) (K e_x - 1), beta(1) K I): the flow at t=1.
    num, num_classes, n = 100_000, 3, 20
    onehot = jax.nn.one_hot(jnp.full((num,), 2), num_classes)
    theta = discrete.prior_theta((num,), num_classes)
    rng = jax.random.key(3)
    for i in range(1, n + 1):
        alpha = discrete.step_accuracy(jnp.float32(i), n_steps=n, beta1=BETA1)
        y = discrete.sender_sample(onehot, alpha, jax.random.fold_in(rng, i))
        theta = discrete.bayesian_update(theta, y)
    flow = discrete.flow_sample(onehot, jnp.ones((num,)), beta1=BETA1, rng=jax.random.key(4))
    for probs in (theta, flow):
        log_theta = np.log(np.asarray(probs, np.float64))
        centred = log_theta - log_theta.mean(-1, keepdims=True)
        mean_y = BETA1 * (num_classes * np.eye(num_classes)[2] - 1)
        np.testing.assert_allclose(centred.mean(0), mean_y - mean_y.mean(), atol=0.06)
        np.testing.assert_allclose(centred.var(0), BETA1 * num_classes * (2 / 3), rtol=0.03)


def test_discrete_time_loss_matches_the_explicit_gaussian_mixture():
    # A second computation straight from Eq. 195: ln N(y | m_x, aK) - ln sum_k p_k N(y | m_k, aK).
    num_classes, n_steps, i = 4, 10, 3
    rng = jax.random.key(5)
    x = jax.nn.one_hot(jnp.array([0, 3, 1]), num_classes)
    log_probs = jax.nn.log_softmax(jax.random.normal(jax.random.key(6), (3, num_classes)))
    ours = discrete.discrete_time_loss(
        x, log_probs, jnp.float32(i), n_steps=n_steps, beta1=BETA1, rng=rng, num_samples=7
    )
    alpha = BETA1 * (2 * i - 1) / n_steps**2
    rngs = jax.random.split(rng, 7)
    y = np.stack([np.asarray(discrete.sender_sample(x, alpha, r)) for r in rngs]).astype(np.float64)
    var = alpha * num_classes
    means = alpha * (num_classes * np.eye(num_classes) - 1)  # row k: mean for class k

    def log_normal(y_, m_):
        return -0.5 * np.sum((y_ - m_) ** 2, -1) / var - 0.5 * num_classes * np.log(2 * np.pi * var)

    xs = np.asarray(x, np.float64)
    log_sender = log_normal(y, xs @ means)
    comps = np.stack([log_normal(y, means[k]) for k in range(num_classes)], -1)
    log_receiver = np.log(np.sum(np.exp(np.asarray(log_probs, np.float64)) * np.exp(comps), -1))
    expected = n_steps * np.mean(log_sender - log_receiver, 0)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


def test_discrete_time_loss_approaches_continuous_time_loss():
    # With a fixed output distribution p, L^inf = E_t[K beta1 t ||e_x - p||^2] = K beta1 ||e_x - p||^2 / 2,
    # and L^n averaged over all i -> L^inf as n grows (L^n is exactly computed over i here).
    num_classes = 3
    x = jax.nn.one_hot(jnp.array([1]), num_classes)
    probs = jnp.array([[0.2, 0.5, 0.3]])
    l_inf = num_classes * BETA1 * float(jnp.sum((x - probs) ** 2)) / 2
    t_grid = (jnp.arange(20000) + 0.5) / 20000

    @jax.jit
    def quadrature_and_l_n():  # one compilation: op-by-op dispatch would compile every op
        l_inf_quadrature = jnp.mean(
            discrete.continuous_time_loss(
                jnp.repeat(x, 20000, 0), jnp.repeat(probs, 20000, 0), t_grid, beta1=BETA1
            )
        )
        l_n = []
        for n in (5, 50, 500):
            i = jnp.arange(1, n + 1, dtype=jnp.float32)
            per_i = jax.vmap(
                lambda i_, n=n: discrete.discrete_time_loss(
                    x,
                    jnp.log(probs),
                    i_,
                    n_steps=n,
                    beta1=BETA1,
                    rng=jax.random.fold_in(jax.random.key(7), i_.astype(jnp.int32)),
                    num_samples=4000,
                )
            )(i)
            l_n.append(jnp.mean(per_i))
        return l_inf_quadrature, l_n

    l_inf_quadrature, l_n = quadrature_and_l_n()
    np.testing.assert_allclose(float(l_inf_quadrature), l_inf, rtol=1e-4)
    gaps = [abs(float(value) - l_inf) for value in l_n]
    assert gaps[2] < gaps[0]
    assert gaps[2] < 0.03 * l_inf


def test_continuous_time_loss_uses_a_squared_norm():
    x = jax.nn.one_hot(jnp.array([0]), 2)
    probs = jnp.array([[0.25, 0.75]])
    loss = discrete.continuous_time_loss(x, probs, jnp.array([0.5]), beta1=BETA1)
    np.testing.assert_allclose(loss, 2 * BETA1 * 0.5 * (0.75**2 + 0.75**2), rtol=1e-6)


def test_reconstruction_loss_and_binary_log_probs():
    logits = jnp.array([[0.3], [-2.0]])
    log_probs = discrete.binary_log_probs(logits)
    np.testing.assert_allclose(jnp.exp(log_probs).sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(jnp.exp(log_probs[:, 1]), jax.nn.sigmoid(logits[:, 0]), rtol=1e-6)
    x = jax.nn.one_hot(jnp.array([1, 0]), 2)
    np.testing.assert_allclose(
        discrete.reconstruction_loss(x, log_probs), [-log_probs[0, 1], -log_probs[1, 0]], rtol=1e-6
    )


def test_sampler_runs_exactly_n_updates_then_a_t1_readout():
    seen_t = []

    def record(t):
        seen_t.append(float(np.asarray(t)[0]))

    def log_probs_fn(theta, t_B, rng):
        jax.debug.callback(record, t_B, ordered=True)
        return jnp.log(theta)  # the output distribution is the input distribution

    n_steps = 6
    samples, probs = jax.jit(
        lambda r: sampler.sample_discrete(
            log_probs_fn,
            rng=r,
            batch_size=2,
            variable_shape=(3,),
            num_classes=2,
            n_steps=n_steps,
            beta1=BETA1,
        )
    )(jax.random.key(0))
    jax.block_until_ready(samples)
    np.testing.assert_allclose(seen_t, [*(np.arange(n_steps) / n_steps), 1.0], atol=1e-7)
    assert samples.shape == (2, 3) and probs.shape == (2, 3, 2)
    np.testing.assert_array_equal(samples, np.argmax(np.asarray(probs), -1))


def test_sampler_recovers_a_confident_network():
    # A network that always predicts class 1 makes every sender sample point at class 1.
    def log_probs_fn(theta, t_B, rng):
        return jnp.log(jnp.broadcast_to(jnp.array([1e-6, 1 - 1e-6]), theta.shape))

    samples, _ = sampler.sample_discrete(
        log_probs_fn,
        rng=jax.random.key(1),
        batch_size=4,
        variable_shape=(5,),
        num_classes=2,
        n_steps=10,
        beta1=BETA1,
    )
    np.testing.assert_array_equal(samples, 1)
