"""Exact checks of the continuous and discretised Bayesian flow and their losses (BFN Sec. 4-5)."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

from deepgen.bfn import continuous

SIGMA1 = 0.001  # the 256-bin CIFAR-10 configuration
SIGMA1_16 = math.sqrt(1e-3)  # the 16-bin configuration

# Jitted (which also checks that they trace): eager dispatch of their many small ops, each compiled
# for every new shape, would otherwise dominate the test time.
log_probs_fn = jax.jit(continuous.discretised_normal_log_probs, static_argnames="num_bins")
output_params_fn = jax.jit(continuous.discretised_output_params, static_argnames="sigma1")
output_fn = jax.jit(continuous.discretised_output, static_argnames=("sigma1", "num_bins"))
recon_continuous_fn = jax.jit(
    continuous.reconstruction_loss_continuous, static_argnames=("sigma", "num_bins")
)
loss_discretised_fn = jax.jit(
    continuous.discrete_time_loss_discretised, static_argnames=("n_steps", "sigma1", "num_samples")
)


def _phi(z: float) -> float:
    """Standard normal CDF in float64, from the standard library."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _log_bin_mass64(k: int, mean: float, std: float, num_bins: int) -> float:
    """ln P(bin k) in float64 for N(mean, std), the edge bins taking the tails."""
    lo = -math.inf if k == 0 else (-1 + 2 * k / num_bins - mean) / std
    hi = math.inf if k == num_bins - 1 else (-1 + 2 * (k + 1) / num_bins - mean) / std
    upper = (2 * k + 1) / num_bins - 1 > mean  # a bin above the mean: use survival functions
    mass = _phi(-lo) - _phi(-hi) if upper else _phi(hi) - _phi(lo)
    return math.log(mass) if mass > 0 else -math.inf  # -inf: beyond float64's range


@pytest.mark.parametrize("sigma1", [SIGMA1, SIGMA1_16, 0.3])
def test_schedule_closed_forms(sigma1):
    t = np.linspace(0.0, 1.0, 11)
    beta = sigma1 ** (-2 * t) - 1
    np.testing.assert_allclose(continuous.accuracy_schedule(t, sigma1=sigma1), beta, rtol=2e-6)
    np.testing.assert_allclose(
        continuous.accuracy_rate(t, sigma1=sigma1),
        -2 * np.log(sigma1) * sigma1 ** (-2 * t),
        rtol=2e-6,
    )
    np.testing.assert_allclose(continuous.gamma(t, sigma1=sigma1), beta / (1 + beta), rtol=2e-6)
    # alpha = d beta / dt
    dbeta = jax.vmap(jax.grad(lambda t_: continuous.accuracy_schedule(t_, sigma1=sigma1)))
    np.testing.assert_allclose(
        dbeta(jnp.asarray(t, jnp.float32)), continuous.accuracy_rate(t, sigma1=sigma1), rtol=1e-5
    )


@pytest.mark.parametrize("sigma1", [SIGMA1, SIGMA1_16])
@pytest.mark.parametrize("n_steps", [1, 7, 10, 1000])
def test_discrete_time_accuracies_sum_to_beta1(sigma1, n_steps):
    i = jnp.arange(1, n_steps + 1, dtype=jnp.float32)
    alphas = continuous.step_accuracy(i, n_steps=n_steps, sigma1=sigma1)
    np.testing.assert_allclose(float(jnp.sum(alphas)), sigma1**-2 - 1, rtol=1e-5)
    # each alpha_i is the increment beta(i/n) - beta((i-1)/n)
    i64 = np.arange(1, n_steps + 1, dtype=np.float64)
    expected = sigma1 ** (-2 * i64 / n_steps) - sigma1 ** (-2 * (i64 - 1) / n_steps)
    np.testing.assert_allclose(alphas, expected, rtol=1e-5)


@pytest.mark.parametrize("t", [0.05, 0.4, 0.9])
def test_flow_sample_has_mean_gamma_x_and_variance_gamma_one_minus_gamma(t):
    sigma1, num = 0.05, 65_536
    x_values = np.array([-0.9, 0.3, 1.0])
    x = jnp.asarray(np.repeat(x_values[:, None], num, 1), jnp.float32)
    mu = np.asarray(
        continuous.flow_sample(x, jnp.full((3, 1), t), sigma1=sigma1, rng=jax.random.key(0)),
        np.float64,
    )
    g = 1 - sigma1 ** (2 * t)
    var = g * (1 - g)
    np.testing.assert_allclose(mu.mean(1), g * x_values, atol=5 * math.sqrt(var / num))
    np.testing.assert_allclose(mu.var(1), var, atol=5 * var * math.sqrt(2 / num))


def test_flow_is_the_prior_at_t0():
    x = jnp.linspace(-1, 1, 5)
    np.testing.assert_array_equal(
        continuous.flow_sample(x, jnp.zeros(()), sigma1=SIGMA1, rng=jax.random.key(1)), 0.0
    )
    mu, rho = continuous.prior_params((2, 3))
    np.testing.assert_array_equal(mu, 0.0)
    np.testing.assert_array_equal(rho, 1.0)


def test_n_sequential_updates_reproduce_the_flow_at_t1():
    # rho is deterministic: rho_i = 1 + beta(i/n) = sigma1^(-2i/n); mu_n has the flow's t=1 marginal.
    sigma1, n, num = 0.2, 10, 100_000
    x_values = np.array([-0.5, 0.8])
    x = jnp.asarray(np.repeat(x_values[:, None], num, 1), jnp.float32)
    mu, rho = continuous.prior_params(x.shape)
    rng = jax.random.key(2)
    for i in range(1, n + 1):
        alpha = continuous.step_accuracy(jnp.float32(i), n_steps=n, sigma1=sigma1)
        y = continuous.sender_sample(x, alpha, jax.random.fold_in(rng, i))
        mu, rho = continuous.bayesian_update(mu, rho, y, alpha)
        np.testing.assert_allclose(rho, sigma1 ** (-2 * i / n), rtol=1e-5)
    np.testing.assert_allclose(rho, sigma1**-2, rtol=1e-5)
    flow = continuous.flow_sample(x, jnp.ones(()), sigma1=sigma1, rng=jax.random.key(3))
    g = 1 - sigma1**2
    var = g * (1 - g)
    for samples in (mu, flow):
        samples = np.asarray(samples, np.float64)
        np.testing.assert_allclose(samples.mean(1), g * x_values, atol=5 * math.sqrt(var / num))
        np.testing.assert_allclose(samples.var(1), var, atol=5 * var * math.sqrt(2 / num))


def test_bayesian_update_is_the_precision_weighted_mean():
    mu, rho = continuous.bayesian_update(jnp.array([0.5]), jnp.array([2.0]), jnp.array([-1.0]), 3.0)
    np.testing.assert_allclose(rho, [5.0])
    np.testing.assert_allclose(mu, [(2.0 * 0.5 + 3.0 * -1.0) / 5.0], rtol=1e-6)


@pytest.mark.parametrize("sigma1", [SIGMA1, SIGMA1_16, 0.3])
def test_point_losses_averaged_over_steps_equal_the_continuous_time_loss(sigma1):
    # With a fixed x_hat: E_t[-ln s1 s1^(-2t)] = (s1^-2 - 1)/2 and E_i[n alpha_i / 2] = beta(1)/2,
    # so L^n averaged over i equals L^inf for every n.
    x, x_hat = jnp.array([0.25, -1.0]), jnp.array([0.1, 0.2])
    l_inf = (sigma1**-2 - 1) / 2 * np.square(np.array([0.15, -1.2]))
    t_grid = (jnp.arange(20000) + 0.5) / 20000
    quadrature = jnp.mean(
        continuous.continuous_time_loss(x, x_hat, t_grid[:, None], sigma1=sigma1), axis=0
    )
    np.testing.assert_allclose(quadrature, l_inf, rtol=1e-4)
    for n in (1, 10, 1000):
        i = jnp.arange(1, n + 1, dtype=jnp.float32)[:, None]
        per_i = continuous.discrete_time_loss_point(x, x_hat, i, n_steps=n, sigma1=sigma1)
        np.testing.assert_allclose(jnp.mean(per_i, axis=0), l_inf, rtol=1e-4)


def test_losses_use_a_squared_error():
    x, x_hat = jnp.array([0.5, -0.5]), jnp.array([0.1, 0.1])
    loss = continuous.continuous_time_loss(x, x_hat, jnp.float32(0.5), sigma1=0.1)
    np.testing.assert_allclose(loss, np.log(10.0) * 10.0 * np.array([0.16, 0.36]), rtol=1e-5)
    alpha_2 = 0.1 ** (-2 * 2 / 4) - 0.1 ** (-2 * 1 / 4)
    loss_n = continuous.discrete_time_loss_point(x, x_hat, jnp.float32(2), n_steps=4, sigma1=0.1)
    np.testing.assert_allclose(loss_n, 4 * alpha_2 / 2 * np.array([0.16, 0.36]), rtol=1e-5)


def test_data_estimate_inverts_the_flow_is_zero_before_t_min_and_clipped():
    sigma1 = SIGMA1_16
    x = jnp.array([-0.8, 0.1, 0.6])
    eps = jnp.array([0.3, -1.2, 0.7])
    t = jnp.float32(0.6)
    g = 1 - sigma1 ** (2 * 0.6)
    mu = g * x + math.sqrt(g * (1 - g)) * eps
    # with the true noise the estimate recovers x
    np.testing.assert_allclose(
        continuous.data_estimate(mu, eps, t, sigma1=sigma1), x, rtol=1e-5, atol=1e-6
    )
    early = continuous.data_estimate(mu, eps, jnp.array([0.0, 5e-7, 1e-3]), sigma1=sigma1)
    assert float(early[0]) == 0.0 and float(early[1]) == 0.0 and float(early[2]) != 0.0
    clipped = continuous.data_estimate(
        jnp.array([0.9, -0.9, 0.0]), jnp.array([-3.0, 3.0, 0.0]), t, sigma1=sigma1
    )
    np.testing.assert_allclose(clipped, [1.0, -1.0, 0.0])


def test_discretised_output_params_follow_the_noise_prediction_and_clamps():
    sigma1 = SIGMA1
    mu = jnp.array([0.3, 0.3, 0.3, 0.3])
    eps_mean = jnp.array([0.5, 0.5, 100.0, 0.5])
    eps_log_std = jnp.array([-0.2, 30.0, -0.2, -30.0])
    t = jnp.array([0.5, 0.5, 0.5, 0.999])
    mean, std = output_params_fn(mu, eps_mean, eps_log_std, t, sigma1=sigma1)
    g = 1 - sigma1 ** (2 * np.asarray(t, np.float64))
    scale = np.sqrt((1 - g) / g)
    np.testing.assert_allclose(mean, 0.3 / g - scale * np.asarray(eps_mean), rtol=1e-5)
    assert float(mean[2]) < -1.0  # the mean is not clipped
    np.testing.assert_allclose(std[0], scale[0] * np.exp(-0.2), rtol=1e-5)
    np.testing.assert_allclose(std[1], continuous.MAX_STD)  # exp clipped at e^10, then at 10
    np.testing.assert_allclose(std[3], continuous.MIN_STD)
    mean0, std0 = output_params_fn(mu, eps_mean, eps_log_std, jnp.zeros(()), sigma1=sigma1)
    np.testing.assert_array_equal(mean0, 0.0)
    np.testing.assert_array_equal(std0, 1.0)
    probs0 = output_fn(mu, eps_mean, eps_log_std, jnp.zeros(()), sigma1=sigma1, num_bins=16)
    np.testing.assert_allclose(
        probs0, jnp.exp(log_probs_fn(0.0, 1.0, num_bins=16))[None] * jnp.ones((4, 1)), rtol=1e-6
    )


@pytest.mark.parametrize("num_bins", [16, 256])
def test_discretised_probabilities_sum_to_one_and_edge_bins_take_the_tails(num_bins):
    means = np.array([-50.0, -5.0, -1.0, -0.3, 0.0, 0.47, 1.0, 5.0, 50.0], np.float32)
    stds = np.array([1e-3, 1e-2, 0.1, 1.0, 10.0], np.float32)
    mean_MxS, std_MxS = np.meshgrid(means, stds, indexing="ij")
    probs = np.asarray(jnp.exp(log_probs_fn(mean_MxS, std_MxS, num_bins=num_bins)))
    assert probs.shape == (*mean_MxS.shape, num_bins)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=2e-6)
    # independent closed form: CDF differences over the edges, with CDF(-1) = 0 and CDF(1) = 1
    edges = np.linspace(-1.0, 1.0, num_bins + 1, dtype=np.float32)
    cdf = np.array(jax.jit(norm.cdf)((edges - mean_MxS[..., None]) / std_MxS[..., None]))
    cdf[..., 0], cdf[..., -1] = 0.0, 1.0
    np.testing.assert_allclose(probs, cdf[..., 1:] - cdf[..., :-1], atol=2e-6)
    # far outside [-1, 1] the whole mass sits in an edge bin
    np.testing.assert_allclose(probs[0, :, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(probs[-1, :, -1], 1.0, atol=1e-6)
    centres = continuous.bin_centres(num_bins)
    np.testing.assert_allclose(continuous.discretised_mean(probs[0]), centres[0], atol=1e-6)


def test_discretised_log_probs_are_accurate_far_into_the_tails():
    # float32 CDF differences underflow here; the log-space masses keep their relative accuracy.
    for mean, std, num_bins in ((0.0, 0.05, 16), (0.37, 1e-3, 256), (-0.9, 0.02, 256)):
        ours = np.asarray(log_probs_fn(mean, std, num_bins=num_bins), np.float64)
        for k in range(num_bins):
            expected = _log_bin_mass64(k, mean, std, num_bins)
            if expected == -math.inf:  # beyond float64's own range
                assert ours[k] < -700
                continue
            np.testing.assert_allclose(ours[k], expected, rtol=2e-5, atol=2e-6, err_msg=f"bin {k}")


def test_discretised_masses_have_finite_gradients():
    def loss(mean, std):
        log_probs = continuous.discretised_normal_log_probs(mean, std, num_bins=16)
        probs = jnp.exp(log_probs)
        return jnp.sum(log_probs[..., 3]) + jnp.sum(continuous.discretised_mean(probs))

    means = jnp.array([-20.0, -1.0, 0.0, 0.3, 1.0, 20.0])
    grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
    for std in (1e-3, 1.0, 10.0):
        grads = grad_fn(means, jnp.full_like(means, std))
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_bin_centres_and_quantise():
    np.testing.assert_allclose(continuous.bin_centres(4), [-0.75, -0.25, 0.25, 0.75])
    centres = continuous.bin_centres(256)
    np.testing.assert_allclose(centres, (2 * np.arange(1, 257) - 1) / 256 - 1, atol=1e-7)
    np.testing.assert_array_equal(continuous.quantise(centres, 256), centres)
    x = jnp.array([-1.5, -1.0, -0.51, -0.49, 0.0, 0.74, 1.0, 2.0])
    np.testing.assert_allclose(
        continuous.quantise(x, 4), [-0.75, -0.75, -0.75, -0.25, 0.25, 0.75, 0.75, 0.75]
    )


def test_reconstruction_losses():
    centres = np.asarray(continuous.bin_centres(16))
    probs = np.random.default_rng(0).dirichlet(np.ones(16), size=3).astype(np.float32)
    k = np.array([0, 7, 15])
    np.testing.assert_allclose(
        continuous.reconstruction_loss_discretised(centres[k], probs),
        -np.log(probs[np.arange(3), k]),
        rtol=1e-6,
    )
    # the point-estimate model: discretised N(x_hat, sigma) evaluated at x, in float64 as reference;
    # the last two are off by one bin and by 3 bins, where the mass is tiny
    sigma = 0.7 * SIGMA1_16
    k = np.array([0, 3, 3, 12, 15, 9])
    x_hat = np.array([-0.97, -0.57, -0.45, 0.55, 1.0, 0.0], np.float32)
    ours = recon_continuous_fn(centres[k], x_hat, sigma=sigma, num_bins=16)
    expected = [
        -_log_bin_mass64(int(k_), float(m), sigma, 16) for k_, m in zip(k, x_hat, strict=True)
    ]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    full = log_probs_fn(x_hat, np.full_like(x_hat, sigma), num_bins=16)
    np.testing.assert_allclose(ours, -np.asarray(full)[np.arange(6), k], rtol=1e-6)


@pytest.mark.parametrize(("sigma1", "n_steps", "i"), [(SIGMA1_16, 10, 3), (SIGMA1, 10, 10)])
def test_discretised_discrete_time_loss_matches_the_explicit_gaussian_mixture(sigma1, n_steps, i):
    # A second computation straight from the definition with explicit normal pdfs in float64:
    # ln N(y | x, 1/alpha) - ln sum_k p_k N(y | k_c, 1/alpha), on the same sender draws.
    num_bins, num_samples = 16, 7
    rng = jax.random.key(5)
    centres = continuous.bin_centres(num_bins)
    x = centres[jnp.array([0, 6, 9, 15])]
    probs = np.random.default_rng(1).dirichlet(np.full(num_bins, 0.5), size=4).astype(np.float32)
    ours = loss_discretised_fn(
        x, probs, jnp.float32(i), n_steps=n_steps, sigma1=sigma1, rng=rng, num_samples=num_samples
    )
    alpha = continuous.step_accuracy(jnp.float32(i), n_steps=n_steps, sigma1=sigma1)
    rngs = jax.random.split(rng, num_samples)
    y = np.stack([np.asarray(continuous.sender_sample(x, alpha, r)) for r in rngs]).astype(
        np.float64
    )
    a = float(alpha)

    def pdf(y_, m_):
        return np.sqrt(a / (2 * np.pi)) * np.exp(-0.5 * a * (y_ - m_) ** 2)

    xs, cs = np.asarray(x, np.float64), np.asarray(centres, np.float64)
    mixture = np.sum(np.asarray(probs, np.float64) * pdf(y[..., None], cs), -1)
    expected = n_steps * np.mean(np.log(pdf(y, xs)) - np.log(mixture), 0)
    np.testing.assert_allclose(ours, expected, rtol=2e-3, atol=2e-3)


def test_discretised_discrete_time_loss_approaches_continuous_time_loss():
    # With a fixed output distribution p, L^inf = E_t[-ln s1 s1^(-2t) (x - E_p[k_c])^2]
    # = (s1^-2 - 1)/2 (x - E_p[k_c])^2. L^n (exact in y by Gauss-Hermite quadrature, exact over i)
    # approaches it as n grows, and the Monte Carlo estimator agrees with the quadrature.
    sigma1, num_bins = 0.1, 16
    probs = jnp.exp(log_probs_fn(0.2, 0.3, num_bins=num_bins))
    probs64 = np.asarray(probs, np.float64)
    centres = np.asarray(continuous.bin_centres(num_bins), np.float64)
    x = float(continuous.bin_centres(num_bins)[4])
    l_inf = (sigma1**-2 - 1) / 2 * (x - float(continuous.discretised_mean(probs))) ** 2
    nodes, weights = np.polynomial.hermite.hermgauss(60)

    def exact_l_n(n):
        a = sigma1 ** (-2 * np.arange(1, n + 1) / n) * (1 - sigma1 ** (2 / n))
        y = x + np.sqrt(2 / a)[:, None] * nodes

        def log_pdf(y_, m_, a_):
            return 0.5 * np.log(a_ / (2 * np.pi)) - 0.5 * a_ * (y_ - m_) ** 2

        mixture = np.sum(probs64 * np.exp(log_pdf(y[..., None], centres, a[:, None, None])), -1)
        integrand = log_pdf(y, x, a[:, None]) - np.log(mixture)
        return n * np.mean(integrand @ weights) / np.sqrt(np.pi)

    gaps = [abs(exact_l_n(n) - l_inf) for n in (1, 16, 256, 2048)]
    assert all(g1 < g0 for g0, g1 in itertools.pairwise(gaps))
    assert gaps[-1] < 0.01 * l_inf
    # the Monte Carlo estimator over all i = 1..n and 2000 draws each
    n, num = 20, 2000
    i = jnp.arange(1, n + 1, dtype=jnp.float32)[:, None]
    per_draw = loss_discretised_fn(
        jnp.full((n, num), x),
        jnp.broadcast_to(probs, (n, num, num_bins)),
        i,
        n_steps=n,
        sigma1=sigma1,
        rng=jax.random.key(7),
        num_samples=1,
    )
    per_draw = np.asarray(per_draw, np.float64)
    std_err = per_draw.std() / math.sqrt(per_draw.size)
    np.testing.assert_allclose(per_draw.mean(), exact_l_n(n), atol=5 * std_err)


@pytest.mark.parametrize("num_bins", [16, 256])
def test_discretised_mean_by_parts_equals_the_mean_of_the_bin_masses(num_bins):
    keys = jax.random.split(jax.random.key(7), 2)
    mean = 1.5 * jax.random.normal(keys[0], (500,))
    std = jnp.exp(jax.random.uniform(keys[1], (500,), minval=-7.0, maxval=1.0))

    def by_parts(m):
        return continuous.discretised_normal_mean(m, std, num_bins=num_bins)

    def of_masses(m):
        probs = jnp.exp(continuous.discretised_normal_log_probs(m, std, num_bins=num_bins))
        return continuous.discretised_mean(probs)

    @jax.jit
    def both():  # one compilation: op-by-op dispatch would compile every op
        return [(f(mean), jax.grad(lambda m, f=f: f(m).sum())(mean)) for f in (by_parts, of_masses)]

    (mean_by_parts, grad_by_parts), (mean_masses, grad_masses) = both()
    np.testing.assert_allclose(mean_by_parts, mean_masses, atol=2e-5)
    np.testing.assert_allclose(grad_by_parts, grad_masses, atol=1e-3)


def test_discretised_reconstruction_loss_has_no_float32_floor():
    """L^r of discretised data is exact where the bin's mass underflows float32 (Sec. 5).

    Reference: float64 scipy log_ndtr of the nearer tail, ln(Phi(b) - Phi(a)) = ln Phi(b) +
    ln(1 - exp(ln Phi(a) - ln Phi(b))), for bins hundreds of standard deviations from the mean.
    The mass-based form floors at float32's smallest normal (87.3 nats); the exact one does not.
    """
    from scipy.special import log_ndtr

    num_bins = 256
    mean = np.array([0.0, 0.37, -0.9, 0.5, 0.999], np.float32)
    std = np.array([1e-3, 1e-3, 0.02, 0.05, 0.01], np.float32)
    x = np.array([0.5, -0.2, 0.9, -1.0, -0.999], np.float32)  # far from each mean
    ours = np.asarray(
        jax.jit(continuous.reconstruction_loss_discretised_exact, static_argnames="num_bins")(
            x, mean, std, num_bins=num_bins
        ),
        np.float64,
    )
    k = np.asarray(continuous.bin_index(x, num_bins))
    lo = np.where(k == 0, -np.inf, (2.0 * k / num_bins - 1 - mean.astype(np.float64)) / std)
    hi = np.where(
        k == num_bins - 1, np.inf, (2.0 * (k + 1) / num_bins - 1 - mean.astype(np.float64)) / std
    )
    upper = (2 * k + 1) / num_bins - 1 > mean  # use the survival side above the mean
    a, b = np.where(upper, -hi, lo), np.where(upper, -lo, hi)
    log_b = log_ndtr(b)
    expected = -(log_b + np.log1p(-np.exp(log_ndtr(a) - log_b)))
    assert np.all(expected > 87.4)  # every case lies beyond the float32 floor
    np.testing.assert_allclose(ours, expected, rtol=1e-5)
    floored = continuous.reconstruction_loss_discretised(
        x, jnp.exp(continuous.discretised_normal_log_probs(mean, std, num_bins=num_bins))
    )
    np.testing.assert_allclose(np.asarray(floored), -np.log(np.finfo(np.float32).tiny), rtol=1e-6)
    grads = jax.grad(
        lambda m, s: jnp.sum(
            continuous.reconstruction_loss_discretised_exact(x, m, s, num_bins=num_bins)
        ),
        argnums=(0, 1),
    )(jnp.asarray(mean), jnp.asarray(std))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
