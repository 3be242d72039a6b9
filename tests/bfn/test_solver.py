"""Checks of BFN-Solver for discrete data (Xue et al. 2024, arXiv 2404.15766): deepgen.bfn.solver."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from deepgen.bfn import continuous, sampler, solver


def _mixing_net(num_classes: int, seed: int = 3):
    """A smooth network of (theta, t) that couples classes and positions (log p depends on y)."""
    w = jax.random.normal(jax.random.key(seed), (num_classes, num_classes)) / num_classes

    def log_probs_fn(theta, t_B, rng):
        log_theta = jnp.log(theta)
        logits = log_theta @ w + 0.3 * jnp.mean(log_theta, axis=1, keepdims=True)
        return jax.nn.log_softmax(logits + jnp.sin(3.0 * t_B)[:, None, None], axis=-1)

    return log_probs_fn


def _constant_net(probs_K: np.ndarray):
    """A network that ignores its input and returns the same probabilities everywhere."""
    log_p = jnp.log(jnp.asarray(probs_K, jnp.float32))
    return lambda theta, t_B, rng: jnp.broadcast_to(log_p, theta.shape)


def _oracle_net(rows_MxD: np.ndarray, num_classes: int):
    """The exact E[e_x | theta] for data uniform over the M rows: posterior weights prod_d theta."""
    onehot_MxDxK = jax.nn.one_hot(jnp.asarray(rows_MxD), num_classes)

    def log_probs_fn(theta, t_B, rng):
        log_theta = jnp.log(jnp.maximum(theta, 1e-30))  # no -inf * 0 where theta underflows
        log_w_BxM = jnp.einsum("bdk,mdk->bm", log_theta, onehot_MxDxK)
        w_BxM = jax.nn.softmax(log_w_BxM, axis=-1)
        probs = jnp.einsum("bm,mdk->bdk", w_BxM, onehot_MxDxK)
        return jnp.log(jnp.maximum(probs, 1e-30))

    return log_probs_fn


def _integrate(name, log_probs_fn, *, rng, batch, shape, num_classes, n_steps, beta1):
    fn = functools.partial(
        solver.integrate_discrete,
        log_probs_fn,
        batch_size=batch,
        variable_shape=shape,
        num_classes=num_classes,
        n_steps=n_steps,
        beta1=beta1,
        solver=name,
    )
    return np.asarray(jax.jit(lambda r: fn(rng=r))(rng), np.float64)


def test_bfn_solver_is_the_original_sampler_with_the_same_random_numbers():
    batch, dims, num_classes = 16, 12, 5
    net = _mixing_net(num_classes)
    common = dict(
        batch_size=batch, variable_shape=(dims,), num_classes=num_classes, n_steps=10, beta1=3.0
    )

    @jax.jit
    def both(rng, known_mask, known_values):
        kw = dict(rng=rng, known_mask=known_mask, known_values=known_values, **common)
        return sampler.sample_discrete(net, **kw), solver.sample_discrete(net, solver="bfn", **kw)

    values = np.random.default_rng(1).integers(0, num_classes, (batch, dims))
    for mask in (
        np.zeros((batch, dims), bool),
        np.random.default_rng(0).random((batch, dims)) < 0.4,
    ):
        original, ours = both(jax.random.key(7), mask, values)
        np.testing.assert_array_equal(ours[0], original[0])
        # theta: softmax(sum of y) here, repeated softmax(log theta + y) there (last bits differ)
        np.testing.assert_allclose(ours[1], original[1], atol=1e-5)


def test_sde1_and_bfn_are_one_update_formula():
    # A one-hot network output makes the class draw of `bfn` deterministic: both solvers then add
    # alpha_i (K e_k - 1) + sqrt(K alpha_i) eps_i with alpha_i = beta1 (2i - 1) / n^2 and the same
    # eps_i (the original sampler's sender noise), which is summed here independently in float64.
    num_classes, batch, dims, n_steps, beta1, k = 4, 8, 6, 7, 2.0, 2
    net = _constant_net(np.eye(num_classes)[k])
    rng = jax.random.key(1)
    kw = dict(rng=rng, batch=batch, shape=(dims,), num_classes=num_classes, beta1=beta1)
    y_bfn = _integrate("bfn", net, n_steps=n_steps, **kw)
    np.testing.assert_array_equal(_integrate("sde1", net, n_steps=n_steps, **kw), y_bfn)
    expected = np.zeros((batch, dims, num_classes))
    for i in range(1, n_steps + 1):
        alpha = beta1 * (2 * i - 1) / n_steps**2
        rng_sender = jax.random.split(jax.random.fold_in(rng, i), 3)[2]
        eps = np.asarray(jax.random.normal(rng_sender, expected.shape), np.float64)
        expected += alpha * (num_classes * np.eye(num_classes)[k] - 1.0)
        expected += np.sqrt(num_classes * alpha) * eps
    np.testing.assert_allclose(y_bfn, expected, atol=1e-4)


def test_first_order_sde_step_moments_match_the_closed_form():
    # One step from the prior (s = 0, t = 1): sde1 gives beta1 (K p - 1) + sqrt(K beta1) eps; bfn
    # draws k ~ p first, which adds the covariance beta1^2 K^2 (diag p - p p^T): the same mean, and
    # a variance that differs by O(delta_beta^2), so both are first-order solvers of one SDE.
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    num_classes, beta1, batch, dims = 4, 0.5, 500, 100
    net = _constant_net(probs)
    kw = dict(batch=batch, shape=(dims,), num_classes=num_classes, n_steps=1, beta1=beta1)
    n = batch * dims
    mean = beta1 * (num_classes * probs - 1.0)
    for name, extra_var in [
        ("sde1", 0.0),
        ("bfn", beta1**2 * num_classes**2 * probs * (1 - probs)),
    ]:
        y = _integrate(name, net, rng=jax.random.key(2), **kw).reshape(n, num_classes)
        var = num_classes * beta1 + extra_var
        z = (y.mean(0) - mean) / np.sqrt(var / n)
        assert np.all(np.abs(z) < 4.5), (name, z)
        np.testing.assert_allclose(y.var(0), var, rtol=0.03)


@pytest.mark.parametrize("name", solver.SOLVERS)
def test_a_network_that_knows_x_gives_the_exact_flow_of_x(name):
    # With p_hat = e_x the exponential integrators are exact for any n: y_1 ~ N(beta1 (K e_x - 1),
    # K beta1 I). For the ODE solvers this checks the start z_0 = y_t / t at t -> 0 ~ N(0, K beta1).
    num_classes, beta1, batch, dims, x = 3, 1.5, 500, 100, 1
    net = _constant_net(np.eye(num_classes)[x])
    y = _integrate(
        name,
        net,
        rng=jax.random.key(3),
        batch=batch,
        shape=(dims,),
        num_classes=num_classes,
        n_steps=3,
        beta1=beta1,
    ).reshape(-1, num_classes)
    mean = beta1 * (num_classes * np.eye(num_classes)[x] - 1.0)
    var = num_classes * beta1
    z = (y.mean(0) - mean) / np.sqrt(var / len(y))
    assert np.all(np.abs(z) < 4.5), z
    np.testing.assert_allclose(y.var(0), var, rtol=0.03)


@pytest.mark.parametrize("name", solver.SOLVERS)
def test_the_exact_denoiser_of_a_small_data_set_gives_its_rows(name):
    # Data uniform over M rows; the network is the exact posterior mean. Every solver must return
    # rows of the data set (the argmax of the logits at t = 1 and the readout sample alike), more
    # than one row over the batch, and with the first 10 positions of row 2 clamped, row 2 (up to
    # the inexactness of replacement conditioning: 90%), its clamped positions exactly.
    num_classes, dims, beta1, batch = 5, 16, 10.0, 32
    rows = np.random.default_rng(5).integers(0, num_classes, (4, dims))
    net = _oracle_net(rows, num_classes)
    kw = dict(
        batch_size=batch, variable_shape=(dims,), num_classes=num_classes, n_steps=20, beta1=beta1
    )

    @jax.jit
    def run(rng, known_mask):
        known_values = jnp.broadcast_to(jnp.asarray(rows[2]), (batch, dims))
        samples, _ = solver.sample_discrete(
            net, rng=rng, solver=name, known_mask=known_mask, known_values=known_values, **kw
        )
        y1 = solver.integrate_discrete(net, rng=rng, solver=name, **kw)
        return samples, jnp.argmax(y1, axis=-1)

    samples, y1_argmax = map(np.asarray, run(jax.random.key(4), np.zeros((batch, dims), bool)))
    match = (samples[:, None, :] == rows[None]).all(-1)
    assert match.any(1).all(), samples
    np.testing.assert_array_equal(y1_argmax, samples)
    assert match.any(0).sum() >= 2  # several rows are visited (a fresh draw per sample)
    mask = np.zeros((batch, dims), bool)
    mask[:, :10] = True
    clamped = np.asarray(run(jax.random.key(5), mask)[0])
    np.testing.assert_array_equal(clamped[:, :10], np.broadcast_to(rows[2, :10], (batch, 10)))
    assert np.mean((clamped == rows[2]).all(-1)) >= 0.9


def _order(errors: list[float]) -> np.ndarray:
    return np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))


def _errors_against_n320(integrate, names, ns, rng) -> dict[str, list[float]]:
    """RMS distance of each solver's integrate(rng, n, name) at every n to its n = 320 result."""

    def all_solvers(n):  # one compilation per n for all the solvers
        run = lambda r: [integrate(r, n, name) for name in names]
        return [np.asarray(y, np.float64) for y in jax.jit(run)(rng)]

    reference = all_solvers(320)
    runs = [all_solvers(n) for n in ns]
    return {
        name: [float(np.sqrt(np.mean((run[j] - reference[j]) ** 2))) for run in runs]
        for j, name in enumerate(names)
    }


def test_second_order_ode_solver_converges_at_order_two():
    # A network whose output depends on y and t: self-convergence against n = 320 with the same
    # start z_0 (same rng). Halving the step should halve ode1's error and quarter ode2's.
    num_classes, beta1 = 4, 2.0
    net = _mixing_net(num_classes, seed=11)
    errors = _errors_against_n320(
        lambda r, n, name: solver.integrate_discrete(
            net,
            rng=r,
            batch_size=4,
            variable_shape=(8,),
            num_classes=num_classes,
            n_steps=n,
            beta1=beta1,
            solver=name,
        ),
        ("ode1", "ode2"),
        [5, 10, 20],
        jax.random.key(9),
    )
    order1, order2 = _order(errors["ode1"]), _order(errors["ode2"])
    assert np.all(np.abs(order1 - 1.0) < 0.25), (errors, order1)
    assert np.all(np.abs(order2 - 2.0) < 0.35), (errors, order2)
    assert all(e2 < e1 for e1, e2 in zip(errors["ode1"], errors["ode2"], strict=True))


def test_second_order_sde_mean_update_converges_at_order_two():
    # p_hat(t) = softmax(a + b t) (time only): E[y_1] = int_0^1 alpha(t) (K p_hat(t) - 1) dt,
    # computed by 64-point Gauss-Legendre quadrature in float64; the solvers' means use the update
    # that integrate_discrete runs, with the previous output's slope for sde2.
    a, b, beta1 = np.array([0.3, -0.5, 1.0]), np.array([-2.0, 1.5, 0.4]), 1.7
    num_classes = len(a)

    def p_hat(t):
        logits = a + b * np.asarray(t)[..., None]
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    nodes, weights = np.polynomial.legendre.leggauss(64)
    ts = 0.5 * (nodes + 1.0)
    exact = 0.5 * np.sum(
        weights[:, None] * 2.0 * beta1 * ts[:, None] * (num_classes * p_hat(ts) - 1.0), axis=0
    )
    errors = {"sde1": [], "sde2": []}
    ns = [5, 10, 20, 40]
    for n in ns:
        grid = np.arange(n + 1) / n
        for name in errors:
            y = jnp.zeros(num_classes)
            for i in range(1, n + 1):
                s, t = grid[i - 1], grid[i]
                p_s = jnp.asarray(p_hat(s), jnp.float32)
                slope = 0.0 * p_s
                if name == "sde2" and i > 1:
                    slope = (p_s - jnp.asarray(p_hat(grid[i - 2]), jnp.float32)) / (s - grid[i - 2])
                y = solver.sde_mean_update(y, p_s, slope, s=s, t=t, beta1=beta1)
            errors[name].append(float(np.max(np.abs(np.asarray(y, np.float64) - exact))))
    order1, order2 = _order(errors["sde1"]), _order(errors["sde2"])
    assert np.all(np.abs(order1 - 1.0) < 0.2), (errors, order1)
    assert np.all(np.abs(order2 - 2.0) < 0.3), (errors, order2)


def test_time_grid_and_arguments():
    np.testing.assert_allclose(solver.time_grid(4), [0.0, 0.25, 0.5, 0.75, 1.0])
    net = _constant_net(np.array([0.5, 0.5]))
    common = dict(
        rng=jax.random.key(0), batch_size=1, variable_shape=(2,), num_classes=2, beta1=1.0
    )
    with pytest.raises(ValueError, match="solver"):
        solver.sample_discrete(net, n_steps=2, solver="euler", **common)
    with pytest.raises(ValueError, match="n_steps"):
        solver.sample_discrete(net, n_steps=0, **common)
    with pytest.raises(ValueError, match="together"):
        solver.sample_discrete(net, n_steps=2, known_mask=np.ones((1, 2), bool), **common)


def test_solver_jits_with_the_batch_sharded_over_devices():
    batch, num_classes = 2 * jax.device_count(), 3
    net = _mixing_net(num_classes)
    run = lambda r: solver.sample_discrete(
        net,
        rng=r,
        batch_size=batch,
        variable_shape=(5,),
        num_classes=num_classes,
        n_steps=6,
        beta1=2.0,
        solver="sde2",
    )
    sharding = NamedSharding(Mesh(jax.devices(), ("data",)), P("data"))
    sharded = jax.jit(run, out_shardings=(sharding, sharding))(jax.random.key(1))
    plain = jax.jit(run)(jax.random.key(1))
    assert sharded[0].sharding.is_equivalent_to(sharding, 2)
    np.testing.assert_array_equal(sharded[0], plain[0])
    np.testing.assert_allclose(sharded[1], plain[1], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Continuous data (BFN Sec. 4): DPM-Solver++-type updates in mu
# ----------------------------------------------------------------------------------------------

SIGMA1 = 0.05


def _smooth_eps_fn(mu, t_B, rng):
    """A noise prediction that couples the variables of each example."""
    return jnp.tanh(2.0 * mu + 0.3 * jnp.mean(mu, axis=1, keepdims=True)) + 0.1 * t_B[:, None]


def _x_hat_of(eps_fn):
    """The clipped data estimate the original sampler forms from eps_fn."""
    return lambda mu, t_B, rng: continuous.data_estimate(
        mu, eps_fn(mu, t_B, rng), t_B[:, None], sigma1=SIGMA1
    )


def test_continuous_sde1_is_the_original_sampler_with_the_same_noise():
    batch, dims = 16, 10
    common = dict(batch_size=batch, variable_shape=(dims,), n_steps=10, sigma1=SIGMA1)

    @jax.jit
    def both(rng, known_mask, known_values):
        kw = dict(rng=rng, known_mask=known_mask, known_values=known_values, **common)
        original = sampler.sample_continuous(_smooth_eps_fn, **kw)
        return original, solver.sample_continuous(_x_hat_of(_smooth_eps_fn), solver="sde1", **kw)

    values = np.random.default_rng(1).uniform(-1, 1, (batch, dims)).astype(np.float32)
    for mask in (
        np.zeros((batch, dims), bool),
        np.random.default_rng(0).random((batch, dims)) < 0.4,
    ):
        original, ours = both(jax.random.key(3), mask, values)
        np.testing.assert_allclose(ours, original, atol=2e-5)
        np.testing.assert_array_equal(np.asarray(ours)[mask], values[mask])


@pytest.mark.parametrize("name", solver.CONTINUOUS_SOLVERS)
def test_continuous_solvers_give_the_exact_flow_of_a_known_point(name):
    # x_hat = x* everywhere: mu_1 ~ N(gamma_1 x*, gamma_1 (1 - gamma_1)) for any n (the ODE start
    # w_0 = mu / sigma at t -> 0 ~ N(0, I) included).
    sigma1, batch, dims = 0.3, 1000, 50
    x_star = np.linspace(-0.9, 0.9, dims).astype(np.float32)
    mu = jax.jit(
        lambda r: solver.integrate_continuous(
            lambda mu, t_B, rng: jnp.broadcast_to(x_star, mu.shape),
            rng=r,
            batch_size=batch,
            variable_shape=(dims,),
            n_steps=4,
            sigma1=sigma1,
            solver=name,
        )
    )(jax.random.key(4))
    gamma_1 = 1.0 - sigma1**2
    z = (np.asarray(mu, np.float64) - gamma_1 * x_star) / np.sqrt(gamma_1 * (1 - gamma_1))
    assert np.all(np.abs(z.mean(0)) < 4.5 / np.sqrt(batch))
    np.testing.assert_allclose(z.var(), 1.0, rtol=0.03)


def test_continuous_second_order_ode_solver_has_the_smaller_error():
    # Self-convergence against n = 320 (same start w_0). ode1 is first order. ode2 has about half
    # its error but is also first order on the uniform t grid: the first step starts at zero SNR,
    # where sqrt(beta(t)) ~ sqrt(t) is not smooth in t, and its local error is O(beta(t_1)) = O(1/n).
    w = jax.random.normal(jax.random.key(2), (8, 8)) / np.sqrt(8.0)
    x_hat_fn = lambda mu, t_B, rng: jnp.tanh(mu @ w + 0.5 * t_B[:, None] - 0.2)
    errors = _errors_against_n320(
        lambda r, n, name: solver.integrate_continuous(
            x_hat_fn,
            rng=r,
            batch_size=4,
            variable_shape=(8,),
            n_steps=n,
            sigma1=SIGMA1,
            solver=name,
        ),
        ("ode1", "ode2"),
        [5, 10, 20],
        jax.random.key(0),
    )
    assert np.all(np.abs(_order(errors["ode1"]) - 1.0) < 0.25), errors
    assert all(e2 < 0.75 * e1 for e1, e2 in zip(errors["ode1"], errors["ode2"], strict=True)), (
        errors
    )
