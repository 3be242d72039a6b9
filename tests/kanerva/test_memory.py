"""Kanerva memory: the write against brute-force Gaussian conditioning, the exact matrix-normal KL,
reads and their samples, and gradients through both."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.kanerva import memory as mem


@pytest.fixture
def float64():
    """float64 for exact comparisons, for the requesting test only."""
    with jax.enable_x64(True):
        yield


def random_psd(rng: np.random.Generator, k: int) -> np.ndarray:
    a = rng.normal(size=(k, k))
    return a @ a.T / k + 0.3 * np.eye(k)


def random_problem(seed: int, *, k: int, c: int, t: int):
    """A prior MN(R0, U0, I) with a full PSD U0, addresses W and codes Z, all float64 numpy."""
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(k, c)),
        random_psd(rng, k),
        rng.normal(size=(t, k)),
        rng.normal(size=(t, c)),
    )


def as_memory(R, U) -> mem.MemoryDistribution:
    return mem.MemoryDistribution(R_KxC=jnp.asarray(R), U_KxK=jnp.asarray(U))


def dense_gaussian_kl(mq, Sq, mp, Sp) -> float:
    """KL(N(mq, Sq) || N(mp, Sp)) by dense float64 linear algebra."""
    n = mq.size
    d = mq - mp
    return 0.5 * (
        np.trace(np.linalg.solve(Sp, Sq))
        + d @ np.linalg.solve(Sp, d)
        - n
        + np.linalg.slogdet(Sp)[1]
        - np.linalg.slogdet(Sq)[1]
    )


def dense_log_density(x_NxD, m_D, S_DxD) -> np.ndarray:
    L = np.linalg.cholesky(S_DxD)
    y = np.linalg.solve(L, (x_NxD - m_D).T)
    return -0.5 * (np.sum(y**2, 0) + 2 * np.sum(np.log(np.diag(L))) + m_D.size * np.log(2 * np.pi))


def test_sequential_writes_equal_the_batch_write_for_more_writes_than_rows(float64):
    R0, U0, W, Z = random_problem(0, k=5, c=3, t=9)
    batch = mem.write_batch(as_memory(R0, U0), jnp.asarray(W), jnp.asarray(Z), noise_variance=0.3)
    seq = mem.write_sequential(
        as_memory(R0, U0), jnp.asarray(W), jnp.asarray(Z), noise_variance=0.3
    )
    assert batch.R_KxC.dtype == jnp.float64
    np.testing.assert_allclose(seq.R_KxC, batch.R_KxC, rtol=0, atol=1e-10)
    np.testing.assert_allclose(seq.U_KxK, batch.U_KxK, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(batch.U_KxK, batch.U_KxK.T)


def test_write_is_the_exact_conditional_of_the_vectorised_gaussian(float64):
    """vec_row(M) ~ N(vec R0, U0 kron I_C); vec_row(Z) = (W kron I_C) vec_row(M) + noise."""
    K, C, T, noise = 4, 3, 5, 0.2
    R0, U0, W, Z = random_problem(1, k=K, c=C, t=T)
    post = mem.write_batch(as_memory(R0, U0), jnp.asarray(W), jnp.asarray(Z), noise_variance=noise)

    prior_cov = np.kron(U0, np.eye(C))  # row-major vec: index k * C + c
    H = np.kron(W, np.eye(C))  # Z[t, c] = sum_k W[t, k] M[k, c]
    obs_cov = H @ prior_cov @ H.T + noise * np.eye(T * C)
    gain = prior_cov @ H.T @ np.linalg.inv(obs_cov)
    mean = R0.reshape(-1) + gain @ (Z.reshape(-1) - H @ R0.reshape(-1))
    cov = prior_cov - gain @ H @ prior_cov
    np.testing.assert_allclose(post.R_KxC, mean.reshape(K, C), rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.kron(post.U_KxK, np.eye(C)), cov, rtol=0, atol=1e-10)

    # The marginal likelihood of the episode is the same Gaussian's density at vec(Z) ...
    log_p = mem.log_marginal_likelihood(
        as_memory(R0, U0), jnp.asarray(W), jnp.asarray(Z), noise_variance=noise
    )
    expected = dense_log_density(Z.reshape(1, -1), H @ R0.reshape(-1), obs_cov)[0]
    np.testing.assert_allclose(log_p, expected, rtol=1e-12)
    # ... and, by the chain rule, the sum of one-step reads from the memory written so far.
    memory, chain = as_memory(R0, U0), 0.0
    for t in range(T):
        w, z = jnp.asarray(W[t : t + 1]), jnp.asarray(Z[t : t + 1])
        chain += mem.log_marginal_likelihood(memory, w, z, noise_variance=noise)
        memory = mem.write_batch(memory, w, z, noise_variance=noise)
    np.testing.assert_allclose(chain, expected, rtol=1e-12)


def test_write_matches_the_information_form(float64):
    R0, U0, W, Z = random_problem(2, k=6, c=4, t=8)
    noise = 0.5
    post = mem.write_batch(as_memory(R0, U0), jnp.asarray(W), jnp.asarray(Z), noise_variance=noise)
    precision = np.linalg.inv(U0) + W.T @ W / noise
    U_T = np.linalg.inv(precision)
    np.testing.assert_allclose(post.U_KxK, U_T, rtol=0, atol=1e-10)
    R_T = U_T @ (np.linalg.solve(U0, R0) + W.T @ Z / noise)
    np.testing.assert_allclose(post.R_KxC, R_T, rtol=0, atol=1e-10)


def test_matrix_normal_kl_equals_the_dense_kl_and_a_monte_carlo_estimate(float64):
    K, C = 4, 3
    R0, U0, W, Z = random_problem(3, k=K, c=C, t=3)
    p = as_memory(R0, U0)
    q = mem.write_batch(p, jnp.asarray(W), jnp.asarray(Z), noise_variance=0.4)
    kl = float(mem.matrix_normal_kl(q, p))
    Rq, Uq = np.asarray(q.R_KxC), np.asarray(q.U_KxK)
    mq, Sq = Rq.reshape(-1), np.kron(Uq, np.eye(C))
    mp, Sp = R0.reshape(-1), np.kron(U0, np.eye(C))
    np.testing.assert_allclose(kl, dense_gaussian_kl(mq, Sq, mp, Sp), rtol=1e-10)
    # The reverse direction is a different number, and KL(p || p) = 0.
    np.testing.assert_allclose(
        mem.matrix_normal_kl(p, q), dense_gaussian_kl(mp, Sp, mq, Sq), rtol=1e-10
    )
    assert abs(float(mem.matrix_normal_kl(p, p))) < 1e-12

    num_samples = 20_000
    rngs = jax.random.split(jax.random.key(0), num_samples)
    M = np.asarray(jax.vmap(mem.sample_memory, in_axes=(0, None))(rngs, q)).reshape(num_samples, -1)
    log_ratio = dense_log_density(M, mq, Sq) - dense_log_density(M, mp, Sp)
    standard_error = log_ratio.std() / np.sqrt(num_samples)
    assert abs(log_ratio.mean() - kl) < 4 * standard_error
    assert standard_error < 0.05 * kl  # the check has power


def test_the_bounds_memory_terms_are_the_episodes_joint_gaussian_code_length(float64):
    """KL(q(M) || p(M)) - sum_t E_q(M) log N(z_t; w_t^T M, s^2 I) = -log p(Z | W) for q = p(M|W, Z).

    The exact write makes the bound tight: what the memory saves is what a joint Gaussian model
    of the episode's codes saves over coding them one by one. With codes independent across the
    episode (random images) the best such model is the product of marginals: nothing to store.
    """
    K, C, T, noise = 5, 4, 7, 0.3
    R0, U0, W, Z = random_problem(6, k=K, c=C, t=T)
    prior = as_memory(R0, U0)
    W, Z = jnp.asarray(W), jnp.asarray(Z)

    def code_length(q: mem.MemoryDistribution) -> jax.Array:
        # E_q(M) log N(z; w^T M, s^2 I) = log N(z; w^T R, s^2 I) - C w^T U w / (2 s^2), per read.
        read_mean, read_var = mem.read(q, W, noise_variance=0.0)
        expected_log_lik = jnp.sum(
            -0.5 * jnp.sum(jnp.square(Z - read_mean), axis=-1) / noise
            - 0.5 * C * jnp.log(2 * jnp.pi * noise)
            - 0.5 * C * read_var / noise
        )
        return mem.matrix_normal_kl(q, prior) - expected_log_lik

    post = mem.write_batch(prior, W, Z, noise_variance=noise)
    log_p = mem.log_marginal_likelihood(prior, W, Z, noise_variance=noise)
    np.testing.assert_allclose(code_length(post), -log_p, rtol=1e-12)
    # Any other memory distribution codes the episode longer: the bound is tight only there.
    moved = mem.MemoryDistribution(R_KxC=post.R_KxC + 0.1, U_KxK=post.U_KxK)
    assert code_length(moved) > -log_p + 1e-3
    assert code_length(mem.MemoryDistribution(post.R_KxC, 1.5 * post.U_KxK)) > -log_p + 1e-3


def test_reading_back_a_written_code_returns_it_and_shrinks_the_variance():
    """float32: T <= K random addresses, small noise: the posterior read is the written code."""
    K, C, T, noise = 16, 8, 4, 1e-4
    rng = np.random.default_rng(4)
    W = jnp.asarray(rng.normal(size=(T, K)), jnp.float32)
    Z = jnp.asarray(rng.normal(size=(T, C)), jnp.float32)
    prior = mem.prior_memory(jnp.zeros((K, C), jnp.float32), log_sigma0_sq=0.0)
    post = mem.write_batch(prior, W, Z, noise_variance=noise)
    mean, variance = mem.read(post, W, noise_variance=noise)
    _, prior_variance = mem.read(prior, W, noise_variance=noise)
    assert mean.dtype == jnp.float32 and variance.shape == (T,)
    assert float(jnp.linalg.norm(mean - Z) / jnp.linalg.norm(Z)) < 1e-3
    assert float(jnp.max(variance / prior_variance)) < 1e-3
    assert float(jnp.min(variance)) >= noise
    # One address at a time gives the same numbers.
    mean_0, variance_0 = mem.read(post, W[0], noise_variance=noise)
    np.testing.assert_allclose(mean_0, mean[0], rtol=0, atol=1e-5)
    # The posterior w^T U w (~noise here) carries float32 cancellation error ~1e-7 |w|^2.
    np.testing.assert_allclose(variance_0, variance[0], rtol=0, atol=1e-5)


def test_read_sample_has_the_joint_read_covariance():
    K, C, T, noise = 4, 5, 3, 0.3
    R0, U0, W, _ = random_problem(5, k=K, c=C, t=T)
    memory = as_memory(R0.astype(np.float32), U0.astype(np.float32))
    W32 = jnp.asarray(W, jnp.float32)
    rngs = jax.random.split(jax.random.key(1), 4000)
    samples = jax.vmap(lambda r: mem.read_sample(r, memory, W32, noise_variance=noise))(rngs)
    # Each column of each draw is one sample of the T reads: N(W R[:, c], W U W^T + noise I).
    centred = np.asarray(samples, np.float64) - (W @ R0)[None]
    draws = centred.transpose(0, 2, 1).reshape(-1, T)  # (num_draws * C) x T
    n = draws.shape[0]
    empirical = draws.T @ draws / n
    expected = W @ U0 @ W.T + noise * np.eye(T)
    standard_error = np.sqrt((np.outer(np.diag(expected), np.diag(expected)) + expected**2) / n)
    assert np.all(np.abs(empirical - expected) < 5 * standard_error)
    assert np.all(np.abs(draws.mean(0)) < 5 * np.sqrt(np.diag(expected) / n))


def test_gradients_through_the_write_and_kl_match_finite_differences(float64):
    K, C, T = 4, 3, 5
    rng = np.random.default_rng(6)
    theta = {
        "R0": rng.normal(size=(K, C)),
        "L0": 0.3 * rng.normal(size=(K, K)),
        "W": rng.normal(size=(T, K)),
        "Z": rng.normal(size=(T, C)),
        "log_noise": np.array(np.log(0.3)),
    }
    G = rng.normal(size=(K, C))

    def loss(theta):
        prior = mem.prior_memory(theta["R0"], U0_cholesky_param_KxK=theta["L0"])
        post = mem.write_batch(
            prior, theta["W"], theta["Z"], noise_variance=jnp.exp(theta["log_noise"])
        )
        return mem.matrix_normal_kl(post, prior) + jnp.sum(G * post.R_KxC) + jnp.sum(post.U_KxK)

    theta = jax.tree.map(jnp.asarray, theta)
    grad = jax.jit(jax.grad(loss))(theta)
    loss = jax.jit(loss)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad))
    h = 1e-5
    for seed in range(3):
        keys = jax.random.split(jax.random.key(seed), len(theta))
        direction = {
            name: jax.random.normal(key, value.shape, value.dtype)
            for key, (name, value) in zip(keys, theta.items(), strict=True)
        }
        plus = {name: theta[name] + h * direction[name] for name in theta}
        minus = {name: theta[name] - h * direction[name] for name in theta}
        finite_difference = (loss(plus) - loss(minus)) / (2 * h)
        analytic = sum(jnp.sum(grad[name] * direction[name]) for name in theta)
        np.testing.assert_allclose(analytic, finite_difference, rtol=1e-7)


def test_prior_parameterisations_and_normalised_addresses(float64):
    R0 = jnp.zeros((3, 2))
    diagonal = mem.prior_memory(R0, log_sigma0_sq=np.log(0.5))
    np.testing.assert_allclose(diagonal.U_KxK, 0.5 * np.eye(3), rtol=1e-14)
    identity = mem.prior_memory(R0, U0_cholesky_param_KxK=jnp.zeros((3, 3)))
    np.testing.assert_allclose(identity.U_KxK, np.eye(3), rtol=1e-14)
    with pytest.raises(ValueError, match="exactly one"):
        mem.prior_memory(R0)

    rng = np.random.default_rng(7)
    A, keys = jnp.asarray(rng.normal(size=(6, 3))), jnp.asarray(rng.normal(size=(2, 6)))
    np.testing.assert_allclose(mem.addressing_weights(keys, A), keys @ A, rtol=1e-14)
    unit = A / jnp.linalg.norm(A, axis=0)
    np.testing.assert_allclose(
        mem.addressing_weights(keys, A, normalize=True), keys @ unit, rtol=1e-12
    )

    # The diagonal Gaussian KL against the dense formula, and zero at equal arguments.
    mq, lq, mp, lp = (rng.normal(size=(2, 4)) for _ in range(4))
    kl = mem.gaussian_kl_diag(*map(jnp.asarray, (mq, lq, mp, lp)))
    expected = [
        dense_gaussian_kl(mq[i], np.diag(np.exp(lq[i])), mp[i], np.diag(np.exp(lp[i])))
        for i in range(2)
    ]
    np.testing.assert_allclose(kl, expected, rtol=1e-12)
    np.testing.assert_allclose(mem.gaussian_kl_diag(mq, lq, mq, lq), 0.0, atol=1e-15)
