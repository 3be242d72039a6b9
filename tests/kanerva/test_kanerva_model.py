"""The Kanerva Machine model: the episode ELBO's terms and gradients, its memory KL against a dense
recomputation, recall of written codes, learning on a tiny batch, iterative reading, corruptions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deepgen.kanerva import memory as mem
from deepgen.kanerva import model as km

B, T, SIDE = 2, 4, 8
K, C, Y = 6, 5, 3


# Jitted once per model: eager Flax applies compile every op on its own, slowly.
write_episode = jax.jit(km.write_episode, static_argnames="model")
iterative_read = jax.jit(
    km.iterative_read, static_argnames=("model", "num_iterations", "sample", "binarise_feedback")
)


def small_model(**overrides) -> km.KanervaMachine:
    fields = dict(
        image_shape=(SIDE, SIDE, 1),
        code_size=C,
        memory_size=K,
        key_size=4,
        key_latent_size=Y,
        key_hidden_units=(8,),
        feature_size=16,
        posterior_hidden_units=(16,),
        encoder_channels=(4,),
        decoder_channels=(4,),
    )
    fields.update(overrides)
    return km.KanervaMachine(**fields)


def episodes(seed: int = 0, density: float = 0.3) -> jax.Array:
    """B episodes of T random binary images, each pixel 1 with probability density."""
    x = np.random.default_rng(seed).random((B, T, SIDE, SIDE, 1)) < density
    return jnp.asarray(x, jnp.float32)


@functools.cache
def initial(use_memory: bool):
    model = small_model(use_memory=use_memory)
    params = jax.jit(model.init)(jax.random.key(1), episodes()[0])
    return model, params


def deterministic(params, *, log_noise_variance: float | None = None):
    """Params whose q(y|x) and q(z|...) have std exp(-30), so every sample is the mean, and whose
    A is 10 times larger: the mean key of an untrained q(y|x) gives |w_t| of about 0.1, so W U0 W^T
    would have eigenvalues down to 1e-4 and the memory would barely move."""
    p = jax.tree.map(np.array, params)  # writable numpy copies (numpy: no op compiles)
    head = p["params"]["y_posterior_head"]
    head["kernel"][:, Y:], head["bias"][Y:] = 0.0, -30.0
    out = p["params"]["z_posterior_net"]["out"]
    out["kernel"][:, C:], out["bias"][C:] = 0.0, -30.0
    p["params"]["A_SxK"] *= 10.0
    if log_noise_variance is not None:
        p["params"]["log_noise_variance"] = np.float32(log_noise_variance)
    return jax.tree.map(jnp.asarray, p)


@functools.cache
def elbo_and_grad(use_memory: bool, num_memory_samples: int = 2):
    """The jitted (loss, metrics), grads of episode_elbo; shared by the tests (one compile each).

    Two memory samples by default: the general case of the one-sample path, for one compile."""
    model = initial(use_memory)[0]
    loss_fn = functools.partial(km.episode_elbo, model=model, num_memory_samples=num_memory_samples)
    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


@functools.partial(jax.jit, static_argnums=1)
def written_codes(params, model, x_TxHxWxC):
    """(W, Z, p(M)) of the writing inference recomputed by hand for deterministic params."""
    apply = functools.partial(model.apply, params)
    features = apply(x_TxHxWxC, method=km.KanervaMachine.encode)
    mean_y = apply(features, method=km.KanervaMachine.posterior_y)[0]
    W = apply(mean_y, method=km.KanervaMachine.address)
    R0 = params["params"]["R0_KxC"]
    U0 = jnp.exp(params["params"]["log_sigma0_sq"]) * jnp.eye(K)
    Z = apply(features, W @ R0, method=km.KanervaMachine.posterior_z)[0]
    return W, Z, mem.MemoryDistribution(R_KxC=R0, U_KxK=U0)


@pytest.mark.parametrize("use_memory,num_memory_samples", [(True, 2), (True, 0), (False, 2)])
def test_elbo_terms_and_gradients_are_finite(use_memory, num_memory_samples):
    _, params = initial(use_memory)
    (loss, metrics), grads = elbo_and_grad(use_memory, num_memory_samples)(
        params, x_BxTxHxWxC=episodes(), rng=jax.random.key(2)
    )
    assert loss.shape == ()
    terms = ("reconstruction", "kl_y", "kl_z", "kl_memory")
    for name in ("nll_bound_per_image", *terms):
        assert metrics[name].shape == () and np.isfinite(float(metrics[name])), name
        assert float(metrics[name]) >= 0.0, name
    np.testing.assert_allclose(float(loss), T * float(metrics["nll_bound_per_image"]), rtol=1e-6)
    np.testing.assert_allclose(
        float(metrics["nll_bound_per_image"]), sum(float(metrics[t]) for t in terms), rtol=1e-6
    )
    flat = jax.tree_util.tree_leaves_with_path(grads)
    for path, g in flat:
        assert np.all(np.isfinite(np.asarray(g))), jax.tree_util.keystr(path)
    grads = grads["params"]
    if use_memory:
        assert float(metrics["kl_y"]) > 0 and float(metrics["kl_memory"]) > 0
        for name in ("A_SxK", "R0_KxC", "log_sigma0_sq", "log_noise_variance"):
            assert float(jnp.max(jnp.abs(grads[name]))) > 0, name
    else:
        assert float(metrics["kl_y"]) == 0 and float(metrics["kl_memory"]) == 0
        assert set(grads) == {"encoder", "z_posterior_net", "decoder"}


def dense_matrix_normal_kl(q: mem.MemoryDistribution, p: mem.MemoryDistribution) -> float:
    """The KL between the K*C-dim Gaussians vec_row(M) ~ N(vec(R), U kron I_C), float64 numpy."""
    Rq, Uq, Rp, Up = (np.asarray(a, np.float64) for a in (q.R_KxC, q.U_KxK, p.R_KxC, p.U_KxK))
    Sq, Sp = np.kron(Uq, np.eye(C)), np.kron(Up, np.eye(C))
    d = (Rq - Rp).reshape(-1)
    return 0.5 * (
        np.trace(np.linalg.solve(Sp, Sq))
        + d @ np.linalg.solve(Sp, d)
        - d.size
        + np.linalg.slogdet(Sp)[1]
        - np.linalg.slogdet(Sq)[1]
    )


def test_elbo_memory_kl_equals_a_dense_recomputation_of_the_written_posterior():
    model, params = initial(True)
    params = deterministic(params)
    x = episodes()
    (_, metrics), _ = elbo_and_grad(True)(params, x_BxTxHxWxC=x, rng=jax.random.key(3))
    kls = []
    for episode in range(B):
        W, Z, prior = written_codes(params, model, x[episode])
        # The rank-1 (online) write: a different algorithm from the ELBO's batch write.
        posterior = mem.write_sequential(
            prior, W, Z, noise_variance=jnp.exp(params["params"]["log_noise_variance"])
        )
        kls.append(dense_matrix_normal_kl(posterior, prior))
        written = write_episode(params, model=model, x_TxHxWxC=x[episode], rng=jax.random.key(4))
        np.testing.assert_allclose(written.R_KxC, posterior.R_KxC, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(written.U_KxK, posterior.U_KxK, rtol=1e-4, atol=1e-5)
    assert min(kls) > 0.1
    np.testing.assert_allclose(float(metrics["kl_memory"]) * T, np.mean(kls), rtol=1e-4)


def test_the_analytic_memory_expectation_of_kl_z_matches_monte_carlo():
    """num_memory_samples=0 gives E_M KL(q(z) || N(w^T M, sigma_xi^2 I)) in closed form.

    The z posterior is made blind to the read-out (its read rows zeroed) so that q(z) is the same
    for every M, and deterministic so that W and Z are too; then the closed form is the mean of the
    sampled KL_z. With q's std exp(-30), KL_z = C/2 (log sigma_xi^2 + 60 - 1) plus the expectation
    of |mean_q - w^T M|^2 / (2 sigma_xi^2), which is what is compared.
    """
    _, params = initial(True)
    params = deterministic(params)
    hidden = params["params"]["z_posterior_net"]["hidden_0"]
    hidden["kernel"] = jnp.asarray(np.concatenate([hidden["kernel"][:-C], np.zeros((C, 16))]))
    x = episodes()
    constant = 0.5 * C * (float(params["params"]["log_noise_variance"]) + 59.0)
    (_, exact), _ = elbo_and_grad(True, 0)(params, x_BxTxHxWxC=x, rng=jax.random.key(0))
    sampled = [
        float(elbo_and_grad(True)(params, x_BxTxHxWxC=x, rng=jax.random.key(i))[0][1]["kl_z"])
        for i in range(100)
    ]
    quadratic = float(exact["kl_z"]) - constant
    assert quadratic > 0.05
    np.testing.assert_allclose(np.mean(sampled) - constant, quadratic, rtol=0.05)


def test_reading_the_written_addresses_recovers_the_written_codes():
    """With sigma_xi^2 = 1e-4 and T <= K, w_t^T R of q(M|X) is z_t; with sigma_xi^2 = 1 it is not."""
    model, params = initial(True)
    x = episodes()[0]
    errors = {}
    for log_noise_variance in (np.log(1e-4), 0.0):
        p = deterministic(params, log_noise_variance=log_noise_variance)
        W, Z, _ = written_codes(p, model, x)
        posterior = write_episode(p, model=model, x_TxHxWxC=x, rng=jax.random.key(5))
        read_mean, read_variance = mem.read(posterior, W, noise_variance=0.0)
        errors[log_noise_variance] = float(jnp.max(jnp.abs(read_mean - Z)) / jnp.max(jnp.abs(Z)))
        if log_noise_variance < 0:
            assert float(jnp.max(read_variance)) < 1e-3  # the memory is sure of what it stored
    assert errors[np.log(1e-4)] < 2e-2
    assert errors[0.0] > 5 * errors[np.log(1e-4)]


@pytest.mark.parametrize("use_memory", [True, False])
def test_loss_decreases_over_adam_steps_on_a_fixed_batch(use_memory):
    """Sparse images: an untrained decoder's p = 1/2 costs 44 nats an image, their entropy 21."""
    params = initial(use_memory)[1]
    x = episodes(density=0.1)
    optimizer = optax.adam(3e-2)
    update, apply_updates = jax.jit(optimizer.update), jax.jit(optax.apply_updates)
    opt_state = optimizer.init(params)
    losses = []
    for i in range(30):
        (loss, _), grads = elbo_and_grad(use_memory)(params, x_BxTxHxWxC=x, rng=jax.random.key(i))
        updates, opt_state = update(grads, opt_state)
        params = apply_updates(params, updates)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses


def test_iterative_read_returns_one_reconstruction_per_read_in_the_unit_interval():
    model, params = initial(True)
    x = episodes()[0]
    posterior = write_episode(params, model=model, x_TxHxWxC=x, rng=jax.random.key(6))
    queries = km.corrupt(jax.random.key(7), x, kind="noise", amount=0.1)
    read = functools.partial(
        iterative_read, params, model=model, memory=posterior, rng=jax.random.key(8)
    )
    reads = read(x_query_BxHxWxC=queries, num_iterations=3)
    assert reads.shape == (4, T, SIDE, SIDE, 1)
    assert float(jnp.min(reads)) >= 0.0 and float(jnp.max(reads)) <= 1.0
    # The reads iterate one deterministic map, each output being the next query.
    restarted = read(x_query_BxHxWxC=reads[1], num_iterations=3)
    np.testing.assert_allclose(restarted[:2], reads[2:], rtol=1e-5, atol=1e-6)
    # Binary feedback: the reads are still probabilities, and each next query is the read's
    # most probable binary image.
    binary_reads = read(x_query_BxHxWxC=queries, num_iterations=2, binarise_feedback=True)
    np.testing.assert_allclose(binary_reads[0], reads[0], rtol=1e-6)
    restarted = read(x_query_BxHxWxC=(binary_reads[0] > 0.5).astype(jnp.float32), num_iterations=0)
    np.testing.assert_allclose(restarted[0], binary_reads[1], rtol=1e-5, atol=1e-6)


def test_occlusion_sets_exactly_one_square_patch_per_image():
    x = jnp.ones((5, 12, 12, 1))
    side = km.occlusion_side(12, 12, 0.25)
    assert side == 6
    out = np.asarray(km.corrupt(jax.random.key(0), x, kind="occlusion", amount=0.25))
    corners = set()
    for image in out[..., 0]:
        rows, cols = np.nonzero(image == 0)
        assert rows.size == side * side
        assert rows.max() - rows.min() + 1 == side and cols.max() - cols.min() + 1 == side
        assert set(np.unique(image)) == {0.0, 1.0}
        corners.add((rows.min(), cols.min()))
    assert len(corners) > 1  # random positions


def test_noise_flips_about_the_requested_fraction_of_pixels():
    x = jnp.asarray(np.random.default_rng(1).random((50, 12, 12, 1)) < 0.3, jnp.float32)
    out = km.corrupt(jax.random.key(2), x, kind="noise", amount=0.1)
    changed = np.asarray(out != x)
    np.testing.assert_array_equal(np.asarray(out)[changed], 1.0 - np.asarray(x)[changed])
    assert abs(changed.mean() - 0.1) < 0.015


def test_the_key_kl_warmup_weighs_only_kl_y_and_reaches_the_bound():
    """Weight (step + 1) / N, 1 from step N - 1 on (and always at N = 0); only KL_y is scaled."""
    weights = [float(km.key_kl_weight(jnp.asarray(s, jnp.int32), 4)) for s in range(6)]
    assert weights == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert float(km.key_kl_weight(jnp.asarray(7, jnp.int32), 0)) == 1.0
    (loss, metrics), _ = elbo_and_grad(True)(
        initial(True)[1], x_BxTxHxWxC=episodes(), rng=jax.random.key(3)
    )
    parts = metrics["reconstruction"] + metrics["kl_z"] + metrics["kl_memory"]
    weighted = km.training_loss(loss, metrics, key_kl_weight=jnp.asarray(0.25), T=T)
    np.testing.assert_allclose(weighted, T * (parts + 0.25 * metrics["kl_y"]), rtol=1e-5)
    np.testing.assert_allclose(
        km.training_loss(loss, metrics, key_kl_weight=jnp.asarray(1.0), T=T), loss, rtol=1e-6
    )
