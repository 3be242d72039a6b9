"""Checks of the n-step BFN samplers and of conditional generation by clamping (arXiv 2308.07037)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from deepgen.bfn import continuous, sampler

SIGMA1 = 0.02
BETA1 = 9.0
NUM_BINS = 16


class _Recorder:
    """Records the t (first example) and the mu of every network call, via jax.debug.callback."""

    def __init__(self) -> None:
        self.t: list[float] = []
        self.mu: np.ndarray | None = None

    def __call__(self, mu: jax.Array, t_B: jax.Array) -> None:
        jax.debug.callback(self._record, mu, t_B, ordered=True)

    def _record(self, mu, t_B) -> None:
        self.t.append(float(np.asarray(t_B)[0]))
        self.mu = np.asarray(mu)  # the last call is the t = 1 readout

    def wrap(self, network_fn):
        """network_fn, recording every call."""

        def recorded(mu, t_B, rng):
            self(mu, t_B)
            return network_fn(mu, t_B, rng)

        return recorded


def _assert_flow_at_t1(mu_final: np.ndarray, data: np.ndarray) -> None:
    """mu ~ N(gamma_1 x, gamma_1 (1 - gamma_1)): every sender came from the data x."""
    gamma_1 = 1 - SIGMA1**2
    z = (mu_final - gamma_1 * data) / np.sqrt(gamma_1 * SIGMA1**2)
    assert abs(z.mean()) < 4 / np.sqrt(z.size)
    np.testing.assert_allclose(z.var(), 1.0, rtol=0.1)


def _data_scale(t_B: jax.Array, ndim: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(gamma, 1 - gamma, sqrt((1 - gamma)/gamma)) at t clamped to 1e-6, as the library computes them."""
    t = jnp.maximum(t_B.reshape((-1,) + (1,) * (ndim - 1)), 1e-6)
    g = continuous.gamma(t, sigma1=SIGMA1)
    one_minus_g = jnp.exp(2.0 * jnp.log(SIGMA1) * t)
    return g, one_minus_g, jnp.sqrt(one_minus_g / g)


def _exact_eps_fn(x_star: jax.Array, recorder: _Recorder):
    """The true noise of mu ~ N(gamma x*, gamma (1 - gamma)), so x_hat = x* at every t > 0."""

    def eps_fn(mu, t_B, rng):
        recorder(mu, t_B)
        g, one_minus_g, _ = _data_scale(t_B, mu.ndim)
        return (mu - g * x_star) / jnp.sqrt(g * one_minus_g)

    return eps_fn


def _one_bin_output_fn(bin_k: jax.Array, recorder: _Recorder | None = None):
    """(mu_eps, ln sigma_eps) whose output normal is N(centre of bin_k, 1e-3): all mass in that bin."""
    centres = continuous.bin_centres(NUM_BINS)[bin_k]

    def output_fn(mu, t_B, rng):
        if recorder is not None:
            recorder(mu, t_B)
        g, _, scale = _data_scale(t_B, mu.ndim)
        return (mu / g - centres) / scale, jnp.full_like(mu, -10.0)

    return output_fn


def _uniform(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Known values for the clamping tests: float32 draws from U(-1, 1)."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32)


def _noise_eps_fn(mu, t_B, rng):
    """A network that ignores its input: eps_hat ~ N(0, I)."""
    return jax.random.normal(rng, mu.shape)


def _noise_output_fn(mu, t_B, rng):
    """A network that ignores its input: mu_eps ~ N(0, I), sigma_eps = 1."""
    return jax.random.normal(rng, mu.shape), jnp.zeros_like(mu)


def _echo_log_probs_fn(theta, t_B, rng):
    """The output distribution is the input distribution (independent across positions)."""
    return jnp.log(theta)


def test_continuous_sampler_runs_n_updates_then_a_t1_readout_and_converges():
    # With the exact noise the estimate is x* at every t > 0 (and 0 at t = 0), so the n senders are
    # y_1 ~ N(0, 1/alpha_1), y_i ~ N(x*, 1/alpha_i): mu_n = sum_i alpha_i y_i / rho_n has mean
    # (beta(1) - alpha_1) x* / rho_n and variance gamma(1) (1 - gamma(1)). A skipped update would
    # leave rho_n short of sigma1^-2, and the variance off by a factor of ~2.
    n_steps, batch, dims = 10, 1000, 20
    x_star = np.linspace(0.2, 0.9, dims, dtype=np.float32)
    recorder = _Recorder()
    x_hat = jax.jit(
        lambda r: sampler.sample_continuous(
            _exact_eps_fn(x_star, recorder),
            rng=r,
            batch_size=batch,
            variable_shape=(dims,),
            n_steps=n_steps,
            sigma1=SIGMA1,
        )
    )(jax.random.key(0))
    jax.block_until_ready(x_hat)
    np.testing.assert_allclose(recorder.t, [*(np.arange(n_steps) / n_steps), 1.0], atol=1e-7)
    assert x_hat.shape == (batch, dims)
    np.testing.assert_allclose(x_hat, np.broadcast_to(x_star, (batch, dims)), atol=1e-3)

    rho_n = SIGMA1**-2.0
    alpha_1 = SIGMA1 ** (-2.0 / n_steps) * (1 - SIGMA1 ** (2.0 / n_steps))
    gamma_1 = 1 - SIGMA1**2
    residual = recorder.mu - (rho_n - 1 - alpha_1) / rho_n * np.asarray(x_star)
    std = np.sqrt(gamma_1 * SIGMA1**2)
    assert abs(residual.mean()) < 4 * std / np.sqrt(residual.size)
    np.testing.assert_allclose(residual.var(), std**2, rtol=0.05)


def test_discretised_sampler_runs_n_updates_then_returns_the_mode_bin():
    n_steps, batch, dims = 8, 4, 2 * NUM_BINS
    bin_k = np.arange(dims) % NUM_BINS
    recorder = _Recorder()

    @jax.jit
    def run(rng):
        samples, probs = sampler.sample_discretised(
            _one_bin_output_fn(bin_k, recorder),
            rng=rng,
            batch_size=batch,
            variable_shape=(dims,),
            n_steps=n_steps,
            sigma1=SIGMA1,
            num_bins=NUM_BINS,
        )
        return samples, probs, continuous.bin_centres(NUM_BINS)

    samples, probs, centres = jax.tree.map(np.asarray, run(jax.random.key(1)))
    np.testing.assert_allclose(recorder.t, [*(np.arange(n_steps) / n_steps), 1.0], atol=1e-7)
    assert samples.shape == (batch, dims) and probs.shape == (batch, dims, NUM_BINS)
    np.testing.assert_array_equal(samples, np.broadcast_to(centres[bin_k], samples.shape))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.min(np.take_along_axis(probs, bin_k[None, :, None], -1)) > 0.999

    # ... and they are continuous.discretised_output of the final mu at t = 1
    def readout(mu):
        eps_mean, eps_log_std = _one_bin_output_fn(bin_k)(mu, jnp.ones((batch,)), None)
        return continuous.discretised_output(
            mu, eps_mean, eps_log_std, 1.0, sigma1=SIGMA1, num_bins=NUM_BINS
        )

    np.testing.assert_allclose(probs, jax.jit(readout)(recorder.mu), atol=1e-6)


def test_continuous_clamping_fixes_known_positions_and_leaves_the_rest_alone():
    batch, dims = 8, 500
    mask = np.random.default_rng(10).random((batch, dims)) < 0.5
    values = _uniform(11, (batch, dims))
    recorder = _Recorder()

    @jax.jit
    def run(rng, known_mask, known_values):
        return sampler.sample_continuous(
            recorder.wrap(_noise_eps_fn),
            rng=rng,
            batch_size=batch,
            variable_shape=(dims,),
            n_steps=6,
            sigma1=SIGMA1,
            known_mask=known_mask,
            known_values=known_values,
        )

    clamped = np.asarray(run(jax.random.key(0), mask, values))
    jax.effects_barrier()
    mu_final = recorder.mu
    free = np.asarray(run(jax.random.key(0), None, None))
    free_other_seed = np.asarray(run(jax.random.key(1), None, None))
    m = np.asarray(mask)
    np.testing.assert_array_equal(clamped[m], np.asarray(values)[m])
    # a network that treats positions independently sees the same unknown positions, same draws
    np.testing.assert_array_equal(clamped[~m], free[~m])
    assert np.mean(free[~m] != free_other_seed[~m]) > 0.9  # (x_hat is clipped to [-1, 1])
    # every sender at a known position came from its value: mu_n follows the flow at t = 1
    _assert_flow_at_t1(mu_final[m], np.asarray(values)[m])


def test_discretised_clamping_fixes_known_positions_and_sends_their_bin_centres():
    batch, dims = 8, 500
    mask = np.random.default_rng(20).random((batch, dims)) < 0.5
    values = _uniform(21, (batch, dims))
    recorder = _Recorder()

    @jax.jit
    def run(rng, known_mask):
        return sampler.sample_discretised(
            recorder.wrap(_noise_output_fn),
            rng=rng,
            batch_size=batch,
            variable_shape=(dims,),
            n_steps=6,
            sigma1=SIGMA1,
            num_bins=NUM_BINS,
            known_mask=known_mask,
            known_values=values,
        )

    clamped, probs = run(jax.random.key(0), mask)
    jax.effects_barrier()
    mu_final = recorder.mu
    # (an all-false mask is the unclamped sampler, and shares the compilation)
    no_mask = np.zeros_like(mask)
    free = np.asarray(run(jax.random.key(0), no_mask)[0])
    free_other_seed = np.asarray(run(jax.random.key(1), no_mask)[0])
    clamped, m, v = np.asarray(clamped), np.asarray(mask), np.asarray(values)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(clamped[m], v[m])  # the values as given, not their bin centres
    np.testing.assert_array_equal(clamped[~m], free[~m])
    assert np.isin(free, np.asarray(continuous.bin_centres(NUM_BINS))).all()
    assert np.mean(free[~m] != free_other_seed[~m]) > 0.5
    # the senders at known positions used the bin centre (up to 1/16 away from the raw value)
    _assert_flow_at_t1(mu_final[m], np.asarray(continuous.quantise(values, NUM_BINS))[m])


def test_discrete_clamping_fixes_known_positions_and_leaves_the_rest_alone():
    batch, dims, num_classes = 8, 64, 3
    mask = np.random.default_rng(30).random((batch, dims)) < 0.5
    values = np.random.default_rng(31).integers(0, num_classes, (batch, dims))

    @functools.partial(jax.jit, static_argnums=0)
    def run(log_probs_fn, rng, known_mask, known_values):
        return sampler.sample_discrete(
            log_probs_fn,
            rng=rng,
            batch_size=batch,
            variable_shape=(dims,),
            num_classes=num_classes,
            n_steps=10,
            beta1=BETA1,
            known_mask=known_mask,
            known_values=known_values,
        )[0]

    m, v = np.asarray(mask), np.asarray(values)
    clamped = np.asarray(run(_echo_log_probs_fn, jax.random.key(0), mask, values))
    free = np.asarray(run(_echo_log_probs_fn, jax.random.key(0), None, None))
    free_other_seed = np.asarray(run(_echo_log_probs_fn, jax.random.key(1), None, None))
    np.testing.assert_array_equal(clamped[m], v[m])
    np.testing.assert_array_equal(clamped[~m], free[~m])
    assert np.mean(free[~m] != free_other_seed[~m]) > 0.4

    # a confident network: its class at every unknown position, whatever the mask says
    def confident(theta, t_B, rng):
        return jnp.log(jnp.broadcast_to(jnp.array([1e-6, 1e-6, 1 - 2e-6]), theta.shape))

    np.testing.assert_array_equal(
        run(confident, jax.random.key(2), mask, values), np.where(m, v, 2)
    )


def test_discrete_clamping_concentrates_theta_on_the_known_class():
    # The echoing network makes the final probabilities theta_n. At known positions all n senders
    # are N(alpha_i (K e_x - 1), alpha_i K I), so theta_n is the t = 1 flow of the known class.
    batch, dims, num_classes, beta1 = 8, 2000, 4, 4.0
    mask = np.arange(dims)[None, :] % 2 == 0  # broadcast over the batch
    values = np.arange(dims) % num_classes
    samples, theta = sampler.sample_discrete(
        _echo_log_probs_fn,
        rng=jax.random.key(40),
        batch_size=batch,
        variable_shape=(dims,),
        num_classes=num_classes,
        n_steps=20,
        beta1=beta1,
        known_mask=mask,
        known_values=values,
    )
    m = np.broadcast_to(np.asarray(mask), (batch, dims))
    v = np.broadcast_to(np.asarray(values), (batch, dims))
    np.testing.assert_array_equal(np.asarray(samples)[m], v[m])
    theta_known = np.asarray(theta, np.float64)[m]
    onehot = np.eye(num_classes)[v[m]]
    assert np.mean(np.sum(theta_known * onehot, -1)) > 0.97
    assert np.mean(np.argmax(theta_known, -1) == v[m]) > 0.98
    log_theta = np.log(theta_known)
    centred = log_theta - log_theta.mean(-1, keepdims=True)
    expected = beta1 * num_classes * (onehot - 1.0 / num_classes)
    np.testing.assert_allclose((centred - expected).mean(0), 0.0, atol=0.15)
    np.testing.assert_allclose(
        (centred - expected).var(0), beta1 * num_classes * (1 - 1 / num_classes), rtol=0.05
    )


def test_clamping_needs_both_mask_and_values():
    with pytest.raises(ValueError, match="together"):
        sampler.sample_continuous(
            _noise_eps_fn,
            rng=jax.random.key(0),
            batch_size=1,
            variable_shape=(2,),
            n_steps=2,
            sigma1=SIGMA1,
            known_mask=jnp.array([True, False]),
        )


def _mixing(x: jax.Array) -> jax.Array:
    """Couples the variables of each example (but never two examples)."""
    return x + 0.5 * jnp.mean(x, axis=tuple(range(1, x.ndim)), keepdims=True)


@pytest.mark.parametrize("kind", ["discrete", "continuous", "discretised"])
def test_sampler_jits_with_the_batch_sharded_over_devices(kind):
    batch, variable_shape = 2 * jax.device_count(), (3, 4)
    shape = (batch, *variable_shape)
    mask = np.random.default_rng(50).random(shape) < 0.3
    common = dict(batch_size=batch, variable_shape=variable_shape, n_steps=5, known_mask=mask)
    if kind == "discrete":
        run = lambda r: sampler.sample_discrete(
            lambda theta, t_B, rng: jax.nn.log_softmax(_mixing(jnp.log(theta)), -1),
            rng=r,
            num_classes=3,
            beta1=BETA1,
            known_values=np.random.default_rng(51).integers(0, 3, shape),
            **common,
        )
    elif kind == "continuous":
        run = lambda r: sampler.sample_continuous(
            lambda mu, t_B, rng: _mixing(mu) + 0.1 * _noise_eps_fn(mu, t_B, rng),
            rng=r,
            sigma1=SIGMA1,
            known_values=_uniform(52, shape),
            **common,
        )
    else:
        run = lambda r: sampler.sample_discretised(
            lambda mu, t_B, rng: (_mixing(mu), 0.1 * _noise_output_fn(mu, t_B, rng)[0]),
            rng=r,
            sigma1=SIGMA1,
            num_bins=NUM_BINS,
            known_values=_uniform(53, shape),
            **common,
        )
    sharding = NamedSharding(Mesh(jax.devices(), ("data",)), P("data"))
    out_shardings = sharding if kind == "continuous" else (sharding, sharding)
    rng = jax.random.key(54)
    sharded = jax.jit(run, out_shardings=out_shardings)(rng)
    plain = jax.jit(run)(rng)
    for leaf in jax.tree.leaves(sharded):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
    np.testing.assert_array_equal(jax.tree.leaves(sharded)[0], jax.tree.leaves(plain)[0])
    if kind != "continuous":  # the probabilities may differ in the last bits (another fusion)
        np.testing.assert_allclose(sharded[1], plain[1], rtol=1e-4, atol=1e-7)
