"""Tests of deepgen.sam.dnc: the DNC against numpy, the SDNC's sparse links against dense ones.

Everything runs in float64. Step functions are jitted once per spec at module level and shared
by the tests (compilation dominates the run time).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.sam import dnc, memory
from deepgen.sam.interface import MemorySpec

F64 = jnp.float64
SPEC_DNC = MemorySpec(kind="dnc", num_words=6, word_size=3, num_heads=2, dtype=F64)
# Truncating SDNC (K < N, K_L < N) and an untruncated one (K = K_L = N).
SPEC_SDNC = MemorySpec(
    kind="sdnc", num_words=7, word_size=3, num_heads=2, num_reads=2, num_links=2, dtype=F64
)
SPEC_FULL = MemorySpec(
    kind="sdnc", num_words=5, word_size=3, num_heads=1, num_reads=5, num_links=5, dtype=F64
)

dnc_step = jax.jit(dnc.dnc_step, static_argnums=0)
sdnc_step = jax.jit(dnc.sdnc_step, static_argnums=0)
# Eager JAX ops compile one by one, so the tests use jitted inits and numpy arithmetic.
dnc_init = jax.jit(dnc.dnc_init, static_argnums=0)
sdnc_init = jax.jit(dnc.sdnc_init, static_argnums=0)
densify_links = jax.jit(dnc.densify_links)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


# ---- numpy references -----------------------------------------------------------------------


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def softplus(x):
    return np.log1p(np.exp(x))


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_cosine(keys_HxM, memory_NxM):
    eps = memory.NORM_EPSILON
    norms_H = np.sqrt((keys_HxM**2).sum(-1) + eps)
    norms_N = np.sqrt((memory_NxM**2).sum(-1) + eps)
    return keys_HxM @ memory_NxM.T / (norms_H[:, None] * norms_N[None, :])


def np_allocation(usage_N):
    """a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i], phi = stable ascending order, by a loop."""
    allocation_N, product = np.zeros_like(usage_N), 1.0
    for j in np.argsort(usage_N, kind="stable"):
        allocation_N[j] = (1 - usage_N[j]) * product
        product *= usage_N[j]
    return allocation_N


def np_links(links_NxN, precedence_N, w_N):
    """L[i, j] = (1 - w[i] - w[j]) L[i, j] + w[i] p[j] off the diagonal, by loops."""
    N = len(w_N)
    out_NxN = np.zeros_like(links_NxN)
    for i in range(N):
        for j in range(N):
            if i != j:
                out_NxN[i, j] = (1 - w_N[i] - w_N[j]) * links_NxN[i, j] + w_N[i] * precedence_N[j]
    return out_NxN


def top_mask(x_N, k):
    mask_N = np.zeros(x_N.shape, bool)
    mask_N[np.argsort(-x_N, kind="stable")[:k]] = True
    return mask_N & (x_N > 0)


def truncate_links(candidate_NxN, k):
    """Keep the positive entries among the k largest of their row and of their column."""
    rows = np.stack([top_mask(row, k) for row in candidate_NxN])
    cols = np.stack([top_mask(col, k) for col in candidate_NxN.T]).T
    return np.where(rows & cols, candidate_NxN, 0)


def np_dnc_step(R, M, state, x):
    """One DNC step (Graves et al. 2016, Methods) with numpy, from the raw interface x."""
    mem, u, ww, p, L, wr = (np.asarray(a) for a in state)
    sizes = [R * M, R, M, 1, M, M, R, 1, 1, 3 * R]
    kr, br, kw, bw, e, v, f, ga, gw, pi = np.split(np.asarray(x), np.cumsum(sizes)[:-1])
    kr, br, bw = kr.reshape(R, M), 1 + softplus(br), 1 + softplus(bw[0])
    e, f, ga, gw = sigmoid(e), sigmoid(f), sigmoid(ga[0]), sigmoid(gw[0])
    pi = softmax(pi.reshape(R, 3))
    u = (u + ww - u * ww) * np.prod(1 - f[:, None] * wr, axis=0)
    ww = gw * (ga * np_allocation(u) + (1 - ga) * softmax(bw * np_cosine(kw[None], mem)[0]))
    mem = mem * (1 - np.outer(ww, e)) + np.outer(ww, v)
    L_new = np_links(L, p, ww)
    p = (1 - ww.sum()) * p + ww
    forward, backward = wr @ L_new.T, wr @ L_new
    content = softmax(br[:, None] * np_cosine(kr, mem))
    wr = pi[:, :1] * backward + pi[:, 1:2] * content + pi[:, 2:] * forward
    return (mem, u, ww, p, L_new, wr), wr @ mem


def np_densify(indices, values, num_words):
    """Sparse vectors (...xC indices, values; index N empty) as dense ...xN arrays."""
    indices, values = np.asarray(indices), np.asarray(values)
    dense = np.zeros((*indices.shape[:-1], num_words + 1))
    rows = np.indices(indices.shape)[:-1]
    np.add.at(dense, (*rows, indices), values)
    return dense[..., :num_words]


def np_dense_links(links):
    """(L from the PRED rows, L from the SUCC rows) of dnc.SparseLinks."""
    pred, succ = np_densify(links.indices_2xNxL, links.values_2xNxL, links.indices_2xNxL.shape[1])
    return pred, succ.T


def random_dnc_state(rng, spec):
    N, M, R = spec.num_words, spec.word_size, spec.num_heads
    links = rng.uniform(0, 1 / N, (N, N))
    np.fill_diagonal(links, 0)
    return dnc.DncState(
        *map(
            jnp.asarray,
            (
                rng.normal(size=(N, M)),
                rng.uniform(0.05, 0.95, N),
                0.8 * rng.dirichlet(np.ones(N)),
                0.9 * rng.dirichlet(np.ones(N)),
                links,
                rng.dirichlet(np.ones(N), size=R),
            ),
        )
    )


def assert_trees_close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


# ---- 1. DNC against numpy -------------------------------------------------------------------


def test_dnc_allocation_usage_links_and_precedence_match_numpy():
    rng = np.random.default_rng(0)
    tied_N = np.array([0.4, 0.1, 0.4, 0.2, 0.7, 0.1, 0.9, 0.4])
    with_zero_N = np.array([0.3, 0.0, 0.3, 1.0, 0.5])
    N, R = 6, 2
    u, ww = rng.uniform(size=N), 0.9 * rng.dirichlet(np.ones(N))
    f, wr = rng.uniform(size=R), rng.dirichlet(np.ones(N), size=R)
    L = rng.uniform(size=(N, N)) / N
    np.fill_diagonal(L, 0)
    p = 0.7 * rng.dirichlet(np.ones(N))
    usages = (tied_N, with_zero_N, rng.uniform(size=9))

    @jax.jit
    def pieces(usages, u, ww, f, wr, L, p):
        new_L = dnc.link_update(L, p, ww)
        return (
            [dnc.allocation_weights(usage) for usage in usages],
            dnc.usage_update(u, ww, f, wr),
            new_L,
            dnc.precedence_update(p, ww),
            dnc.directional_weights(new_L, wr),
        )

    allocations, usage, new_L, precedence, (forward, backward) = jax.tree.map(
        np.asarray, pieces(usages, u, ww, f, wr, L, p)
    )
    for allocation_N, usage_N in zip(allocations, usages, strict=True):
        np.testing.assert_allclose(allocation_N, np_allocation(usage_N), atol=1e-15)
    # Ties: the lower index is allocated first (index 1 before 5, 0 before 2 before 7).
    a_N = allocations[0]
    assert a_N[1] > a_N[5] > a_N[3] > a_N[0] > a_N[2] > a_N[7] > a_N[4] > a_N[6] > 0
    np.testing.assert_allclose(a_N.sum(), 1 - np.prod(tied_N))

    psi = (1 - f[0] * wr[0]) * (1 - f[1] * wr[1])
    np.testing.assert_allclose(usage, (u + ww - u * ww) * psi, atol=1e-15)
    np.testing.assert_allclose(new_L, np_links(L, p, ww), atol=1e-15)
    np.testing.assert_allclose(precedence, (1 - ww.sum()) * p + ww, atol=1e-15)
    for h in range(R):
        for i in range(N):
            np.testing.assert_allclose(forward[h, i], sum(new_L[i, j] * wr[h, j] for j in range(N)))
            np.testing.assert_allclose(
                backward[h, i], sum(new_L[j, i] * wr[h, j] for j in range(N))
            )


def test_dnc_steps_match_numpy():
    rng = np.random.default_rng(1)
    spec = SPEC_DNC
    state = random_dnc_state(rng, spec)
    np_state = tuple(np.asarray(a) for a in state)
    for _ in range(3):
        x = rng.normal(size=dnc.dnc_interface_size(spec))
        state, reads = dnc_step(spec, state, jnp.asarray(x))
        np_state, np_reads = np_dnc_step(spec.num_heads, spec.word_size, np_state, x)
        np.testing.assert_allclose(reads, np_reads, rtol=0, atol=1e-10)
        assert_trees_close(tuple(state), np_state, atol=1e-10)


# ---- 2 and 3. SDNC links, precedence and read weights against dense computations ------------


def write_weights_dense(spec, state, x):
    """w^W_t = alpha (gamma mean_h w^R_{t-1,h} + (1 - gamma) I^U) as a dense N-vector."""
    R, M, N = spec.num_heads, spec.word_size, spec.num_words
    alpha, gamma = sigmoid(x[R * M + R + M]), sigmoid(x[R * M + R + M + 1])
    w_N = np.zeros(N)
    np.add.at(
        w_N,
        np.asarray(state.read_indices_RxC).ravel(),
        alpha * gamma * np.asarray(state.read_weights_RxC).ravel() / R,
    )
    w_N[int(state.ring.head)] += alpha * (1 - gamma)
    return w_N


@pytest.mark.parametrize("spec", [SPEC_SDNC, SPEC_FULL], ids=["truncated", "untruncated"])
def test_sdnc_links_precedence_and_read_weights_match_dense(spec):
    rng = np.random.default_rng(2)
    N, R, K, KL = spec.num_words, spec.num_heads, spec.num_reads, spec.num_links
    state = sdnc_init(spec)
    dnc_links, dnc_precedence = np.zeros((N, N)), np.zeros(N)  # the DNC's, never truncated
    truncated = False
    for _ in range(8):
        x = rng.normal(size=dnc.sdnc_interface_size(spec))
        new, reads = sdnc_step(spec, state, jnp.asarray(x))
        w_N = write_weights_dense(spec, state, x)
        old_links = np_dense_links(state.links)[0]
        old_p = np_densify(*state.precedence, N)
        candidate = np_links(old_links, old_p, w_N)
        expected = truncate_links(candidate, KL)
        truncated |= bool((candidate > 0).sum(0).max() > KL or (candidate > 0).sum(1).max() > KL)
        from_pred, from_succ = np_dense_links(new.links)
        np.testing.assert_allclose(from_pred, expected, rtol=0, atol=1e-14)
        np.testing.assert_array_equal(from_pred, from_succ)  # the two storages agree exactly
        p_full = (1 - w_N.sum()) * old_p + w_N
        p_expected = np.where(top_mask(p_full, KL), p_full, 0)
        np.testing.assert_allclose(np_densify(*new.precedence, N), p_expected, atol=1e-15)

        # Read weights: slots (backward K | content K | forward K), f = L w, b = L^T w, top K.
        modes = softmax(x[-3 * R :].reshape(R, 3))
        old_w = np_densify(state.read_indices_RxC, state.read_weights_RxC, N)
        slots = [
            np_densify(
                np.asarray(new.read_indices_RxC)[:, s], np.asarray(new.read_weights_RxC)[:, s], N
            )
            for s in (slice(0, K), slice(K, 2 * K), slice(2 * K, 3 * K))
        ]
        for h in range(R):
            backward, forward = old_w[h] @ from_pred, from_pred @ old_w[h]
            np.testing.assert_allclose(
                slots[0][h], modes[h, 0] * np.where(top_mask(backward, K), backward, 0), atol=1e-14
            )
            np.testing.assert_allclose(
                slots[2][h], modes[h, 2] * np.where(top_mask(forward, K), forward, 0), atol=1e-14
            )
        mem = np.asarray(new.memory_NxM)
        np.testing.assert_allclose(reads, sum(slots) @ mem, atol=1e-12)

        if KL == N:  # nothing truncated: the DNC's links, precedence and read rule exactly
            dnc_links = np_links(dnc_links, dnc_precedence, w_N)
            dnc_precedence = (1 - w_N.sum()) * dnc_precedence + w_N
            np.testing.assert_allclose(from_pred, dnc_links, atol=1e-14)
            np.testing.assert_allclose(np_densify(*new.precedence, N), dnc_precedence, atol=1e-15)
            strengths = softplus(x[R * spec.word_size : R * spec.word_size + R])
            queries = x[: R * spec.word_size].reshape(R, spec.word_size)
            content = softmax(strengths[:, None] * np_cosine(queries, mem))
            np.testing.assert_allclose(slots[1], modes[:, 1:2] * content, atol=1e-12)
            for h in range(R):
                np.testing.assert_allclose(
                    slots[0][h] + slots[2][h],
                    modes[h, 0] * (old_w[h] @ dnc_links) + modes[h, 2] * (dnc_links @ old_w[h]),
                    atol=1e-14,
                )
        else:
            assert (from_pred > 0).sum(0).max() <= KL and (from_pred > 0).sum(1).max() <= KL
        state = new
    assert np.abs(from_pred).sum() > 0
    np.testing.assert_array_equal(densify_links(state.links)[0], from_pred)
    assert truncated == (KL < N)


def test_sdnc_directional_weights_sum_duplicates_and_break_ties_to_the_lower_index():
    # L (N = 6, K_L = 2): L[5, 3] = L[5, 1] = 0.25 and L[4, 1] = 0.5; word 5 was written after 3
    # and 1. Reading words 5 and 4 (weights 0.5 each) gives b = L^T w with b[1] = 0.25 * 0.5 +
    # 0.5 * 0.5 (two reads land on word 1) and b[3] = 0.125; reading word 5 alone ties b[3] and
    # b[1], and K = 1 keeps the lower index. f = L w has f[5] = f[4] = 0 and no positive entry.
    N, L = 6, 2
    idx = np.full((2, N, L), N, np.int32)
    val = np.zeros((2, N, L))
    idx[dnc.PRED, 5], val[dnc.PRED, 5] = [3, 1], [0.25, 0.25]
    idx[dnc.PRED, 4], val[dnc.PRED, 4] = [1, N], [0.5, 0.0]
    idx[dnc.SUCC, 3], val[dnc.SUCC, 3] = [5, N], [0.25, 0.0]
    idx[dnc.SUCC, 1], val[dnc.SUCC, 1] = [4, 5], [0.5, 0.25]
    links = dnc.SparseLinks(jnp.asarray(idx), jnp.asarray(val))
    directional = jax.jit(dnc.sparse_directional_weights, static_argnums=3)

    read_idx, read_w = jnp.asarray([[5, 4, 0]]), jnp.asarray([[0.5, 0.5, 0.0]])
    f_idx, f, b_idx, b = (np.asarray(x) for x in directional(links, read_idx, read_w, 3))
    np.testing.assert_array_equal(b_idx, [[1, 3, N]])
    np.testing.assert_array_equal(b, [[0.375, 0.125, 0.0]])
    np.testing.assert_array_equal(f_idx, [[N, N, N]])
    np.testing.assert_array_equal(f, np.zeros((1, 3)))

    read_idx, read_w = jnp.asarray([[5, 0, 0]]), jnp.asarray([[1.0, 0.0, 0.0]])
    _, _, b_idx, b = (np.asarray(x) for x in directional(links, read_idx, read_w, 1))
    np.testing.assert_array_equal(b_idx, [[1]])
    np.testing.assert_array_equal(b, [[0.25]])


# ---- 4 and 5. gradients, and vmap over a batch with scan over time ---------------------------

B, T = 2, 3


def batched_program(core, spec):
    """jit(value_and_grad) of sum(reads * proj) + sum(final memory^2), vmap over B, scan over T."""

    def loss(states0, xs_BxTxI, proj_BxTxRxM):
        step = jax.vmap(lambda state, x: core.step(spec, state, x))
        final, reads_TxBxRxM = jax.lax.scan(step, states0, jnp.swapaxes(xs_BxTxI, 0, 1))
        total = jnp.sum(jnp.swapaxes(reads_TxBxRxM, 0, 1) * proj_BxTxRxM)
        return total + jnp.sum(final.memory_NxM**2), (final, reads_TxBxRxM)

    return jax.jit(jax.value_and_grad(loss, argnums=1, has_aux=True))


PROGRAMS = {"dnc": batched_program(dnc.DNC, SPEC_DNC), "sdnc": batched_program(dnc.SDNC, SPEC_SDNC)}


def stack(states):
    return jax.tree.map(lambda *leaves: np.stack(leaves), *states)


def central_differences(loss, x, eps=1e-6):
    flat = np.asarray(x).ravel()
    grads = np.zeros_like(flat)
    for n in range(flat.size):
        step = np.zeros_like(flat)
        step[n] = eps
        plus, minus = loss((flat + step).reshape(x.shape)), loss((flat - step).reshape(x.shape))
        grads[n] = (plus - minus) / (2 * eps)
    return grads.reshape(x.shape)


def test_dnc_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    spec = SPEC_DNC
    states0 = [random_dnc_state(rng, spec) for _ in range(B)]
    xs = rng.normal(size=(B, T, dnc.dnc_interface_size(spec)))
    proj = rng.normal(size=(B, T, spec.num_heads, spec.word_size))
    (total, _), grads = PROGRAMS["dnc"](stack(states0), jnp.asarray(xs), jnp.asarray(proj))

    def loss_loop(xs_TxI, b=0):
        state, total = states0[b], 0.0
        for t in range(T):
            state, reads = dnc_step(spec, state, jnp.asarray(xs_TxI[t]))
            total += float(np.sum(np.asarray(reads) * proj[b, t]))
        return total + float(np.sum(np.asarray(state.memory_NxM) ** 2))

    np.testing.assert_allclose(total, loss_loop(xs[0]) + loss_loop(xs[1], b=1), atol=1e-12)
    np.testing.assert_allclose(
        grads[0], central_differences(loss_loop, xs[0]), rtol=1e-6, atol=1e-8
    )


def test_sdnc_gradients_match_finite_differences_with_frozen_links():
    """No gradient flows through the links: the derivative holds L_t and p_t at their values."""
    rng = np.random.default_rng(4)
    spec = SPEC_SDNC
    size = dnc.sdnc_interface_size(spec)
    states0 = []
    for _ in range(B):
        state = sdnc_init(spec)._replace(memory_NxM=jnp.asarray(rng.normal(size=(7, 3))))
        for _ in range(4):  # build up links and temporal read weights
            state, _ = sdnc_step(spec, state, jnp.asarray(rng.normal(size=size)))
        states0.append(state)
    xs = rng.normal(size=(B, T, size))
    proj = rng.normal(size=(B, T, spec.num_heads, spec.word_size))
    (total, _), grads = PROGRAMS["sdnc"](stack(states0), jnp.asarray(xs), jnp.asarray(proj))

    recorded, state = [], states0[0]
    for x in xs[0]:
        state, _ = sdnc_step(spec, state, jnp.asarray(x))
        recorded.append((state.links, state.precedence, state.read_indices_RxC))

    frozen_step = jax.jit(
        lambda state, x, links, precedence: dnc.sdnc_step(
            spec, state, x, link_rule=lambda *_: (links, precedence)
        )
    )

    def loss_frozen(xs_TxI):
        state, total = states0[0], 0.0
        for t in range(T):
            links, precedence, read_indices = recorded[t]
            state, reads = frozen_step(state, jnp.asarray(xs_TxI[t]), links, precedence)
            # Away from ties: every discrete choice (neighbours, f and b supports) is unchanged.
            np.testing.assert_array_equal(state.read_indices_RxC, read_indices)
            total += float(np.sum(np.asarray(reads) * proj[0, t]))
        return total + float(np.sum(np.asarray(state.memory_NxM) ** 2))

    finite = central_differences(loss_frozen, xs[0])
    state, other = states0[1], 0.0
    for t in range(T):
        state, reads = sdnc_step(spec, state, jnp.asarray(xs[1, t]))
        other += float(np.sum(np.asarray(reads) * proj[1, t]))
    other += float(np.sum(np.asarray(state.memory_NxM) ** 2))
    np.testing.assert_allclose(total, loss_frozen(xs[0]) + other, atol=1e-12)
    np.testing.assert_allclose(grads[0], finite, rtol=1e-6, atol=1e-8)
    # The temporal reads take part: the backward and forward mode logits have gradients.
    R = spec.num_heads
    modes_grad = np.asarray(grads[0, -1, -3 * R :]).reshape(R, 3)
    assert np.all(np.abs(modes_grad[:, [0, 2]]) > 1e-6)


@pytest.mark.parametrize(
    ("core", "spec", "init", "step"),
    [(dnc.DNC, SPEC_DNC, dnc_init, dnc_step), (dnc.SDNC, SPEC_SDNC, sdnc_init, sdnc_step)],
    ids=["dnc", "sdnc"],
)
def test_vmap_and_scan_match_a_python_loop(core, spec, init, step):
    rng = np.random.default_rng(5)
    xs = rng.normal(size=(B, T, core.interface_size(spec)))
    proj = rng.normal(size=(B, T, spec.num_heads, spec.word_size))
    states0 = stack([init(spec)] * B)
    (_, (final, reads_TxBxRxM)), _ = PROGRAMS[spec.kind](
        states0, jnp.asarray(xs), jnp.asarray(proj)
    )
    for b in range(B):
        state = init(spec)
        for t in range(T):
            state, reads = step(spec, state, jnp.asarray(xs[b, t]))
            np.testing.assert_allclose(reads_TxBxRxM[t, b], reads, rtol=1e-12, atol=1e-12)
        assert_trees_close(state, jax.tree.map(lambda a, b=b: a[b], final), atol=1e-12)
    assert np.abs(np.asarray(reads_TxBxRxM)).max() > 0
