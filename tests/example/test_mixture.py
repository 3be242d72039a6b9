"""The mixture of Bernoullis against independent float64 computations (PRML Sec. 9.3.3)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from deepgen.example import mixture

log_likelihood = jax.jit(mixture.log_likelihood)  # one compile per dtype instead of one per op


def random_params(seed: int, num_components: int, num_pixels: int, scale: float = 2.0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "logits_pi_K": scale * rng.standard_normal(num_components),
        "logits_mu_KxD": scale * rng.standard_normal((num_components, num_pixels)),
    }


def brute_force_log_likelihood(params: dict, x_BxD: np.ndarray) -> np.ndarray:
    """log sum_k pi_k prod_d mu^x (1 - mu)^(1 - x), by plain products in float64."""
    a = np.asarray(params["logits_pi_K"], np.float64)
    pi_K = np.exp(a - a.max()) / np.exp(a - a.max()).sum()
    mu_KxD = 1.0 / (1.0 + np.exp(-np.asarray(params["logits_mu_KxD"], np.float64)))
    x = np.asarray(x_BxD, np.float64)[:, None, :]
    p_BxK = np.prod(np.where(x == 1, mu_KxD[None], 1.0 - mu_KxD[None]), axis=-1)
    return np.log(p_BxK @ pi_K)


def all_binary_images(num_pixels: int) -> np.ndarray:
    return np.array(list(itertools.product([0, 1], repeat=num_pixels)), np.int32)


def test_log_likelihood_equals_brute_force_float64():
    params = random_params(0, num_components=5, num_pixels=30)
    x_BxD = np.random.default_rng(1).integers(0, 2, (16, 30)).astype(np.int32)
    with jax.enable_x64(True):
        got = np.asarray(log_likelihood(jax.tree.map(jnp.asarray, params), x_BxD))
    np.testing.assert_allclose(got, brute_force_log_likelihood(params, x_BxD), rtol=1e-12)


def test_float32_matches_float64_and_stays_finite_with_saturated_logits():
    params = random_params(2, num_components=8, num_pixels=784, scale=1.0)
    params["logits_mu_KxD"][:, :100] = 40.0  # sigmoid rounds to 1 in float32
    x_BxD = np.random.default_rng(3).integers(0, 2, (8, 784)).astype(np.int32)
    x_BxD[0, :100] = 0
    with jax.enable_x64(True):
        exact = np.asarray(log_likelihood(jax.tree.map(jnp.asarray, params), x_BxD))
    params32 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
    got = np.asarray(log_likelihood(params32, x_BxD))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, exact, rtol=1e-5)


def test_one_component_is_the_independent_bernoulli():
    params = random_params(4, num_components=1, num_pixels=50)
    x_BxD = np.random.default_rng(5).integers(0, 2, (10, 50)).astype(np.int32)
    mu_D = 1.0 / (1.0 + np.exp(-params["logits_mu_KxD"][0]))
    expected = np.sum(x_BxD * np.log(mu_D) + (1 - x_BxD) * np.log1p(-mu_D), axis=-1)
    with jax.enable_x64(True):
        got = np.asarray(log_likelihood(jax.tree.map(jnp.asarray, params), x_BxD))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_probabilities_of_all_binary_images_sum_to_one():
    params = random_params(6, num_components=3, num_pixels=4)
    with jax.enable_x64(True):
        ll = log_likelihood(jax.tree.map(jnp.asarray, params), all_binary_images(4))
        total = float(jnp.sum(jnp.exp(ll)))
    np.testing.assert_allclose(total, 1.0, rtol=1e-13)


def test_gradient_matches_central_finite_differences():
    params = random_params(7, num_components=3, num_pixels=5, scale=1.0)
    x_BxD = np.random.default_rng(8).integers(0, 2, (6, 5)).astype(np.int32)
    eps = 1e-6
    loss = jax.jit(lambda p: mixture.nll_loss(p, x_BxD=x_BxD))
    with jax.enable_x64(True):
        params = jax.tree.map(jnp.asarray, params)
        grads = jax.grad(loss)(params)
        for name, value in params.items():
            flat = np.asarray(value).ravel()
            numeric = np.empty_like(flat)
            for i in range(flat.size):
                shifted = []
                for sign in (1.0, -1.0):
                    moved = flat.copy()
                    moved[i] += sign * eps
                    trial = {**params, name: jnp.asarray(moved.reshape(value.shape))}
                    shifted.append(float(loss(trial)))
                numeric[i] = (shifted[0] - shifted[1]) / (2 * eps)
            np.testing.assert_allclose(np.asarray(grads[name]).ravel(), numeric, atol=1e-8)


def test_sample_frequencies_match_the_model_probabilities():
    params = jax.tree.map(jnp.asarray, random_params(9, num_components=3, num_pixels=2, scale=1.0))
    num = 200_000
    x_NxD = np.asarray(jax.jit(mixture.sample, static_argnums=2)(params, jax.random.key(0), num))
    assert x_NxD.shape == (num, 2) and set(np.unique(x_NxD)) <= {0, 1}
    images = all_binary_images(2)
    counts = np.bincount(2 * x_NxD[:, 0] + x_NxD[:, 1], minlength=4)  # the order of images
    expected = num * np.exp(np.asarray(log_likelihood(params, images), np.float64))
    chi_square = float(np.sum((counts - expected) ** 2 / expected))
    # 3 degrees of freedom: P(chi2 > 16.3) = 0.001.
    assert chi_square < 16.3, (counts, expected)


def test_init_params_shapes_and_distinct_components():
    params = mixture.init_params(jax.random.key(0), num_components=4, num_pixels=10)
    assert params["logits_pi_K"].shape == (4,)
    assert params["logits_mu_KxD"].shape == (4, 10)
    assert np.all(np.abs(np.asarray(params["logits_mu_KxD"])) < 1.0)
    assert len({tuple(np.asarray(row).round(6)) for row in params["logits_mu_KxD"]}) == 4
