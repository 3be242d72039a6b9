"""The NTM, DAM and SAM memory cores (deepgen.sam.memory) against numpy and against each other.

SAM with K = N against DAM, the sparse write against the dense one, the least accessed ring
against a brute-force U^(2), SAM's gradients against finite differences, the NTM's addressing and
DAM's usage U^(1) against numpy, batching against a loop, and the backward pass's memory.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.sam import interface, memory, search
from deepgen.sam.interface import MemorySpec

EPS = memory.NORM_EPSILON


def np_cosine(keys_RxM: np.ndarray, memory_NxM: np.ndarray) -> np.ndarray:
    key_norms = np.sqrt((keys_RxM**2).sum(-1) + EPS)
    word_norms = np.sqrt((memory_NxM**2).sum(-1) + EPS)
    return keys_RxM @ memory_NxM.T / (key_norms[:, None] * word_norms[None, :])


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_softplus(x):
    return np.log1p(np.exp(x))


def sam_state_with(spec: MemorySpec, memory_NxM: jax.Array, **fields) -> memory.SamState:
    state = memory.SAM.init(spec)
    return state._replace(memory_NxM=memory_NxM, search=search.init(spec, memory_NxM), **fields)


def ring_order(ring: memory.UsageRing) -> list[int]:
    """The words from head (LRA) to tail, checking that prev mirrors next."""
    next_N, prev_N = np.asarray(ring.next_N), np.asarray(ring.prev_N)
    order, word = [], int(ring.head)
    for _ in range(len(next_N)):
        order.append(word)
        assert prev_N[next_N[word]] == word
        word = int(next_N[word])
    assert word == int(ring.head) and order[-1] == int(ring.tail)
    return order


def ring_from_order(order: list[int]) -> memory.UsageRing:
    """The ring whose words from head to tail are `order`."""
    next_N, prev_N = np.zeros(len(order), np.int32), np.zeros(len(order), np.int32)
    for position, word in enumerate(order):
        next_N[word] = order[(position + 1) % len(order)]
        prev_N[word] = order[position - 1]
    return memory.UsageRing(
        *map(jnp.asarray, (next_N, prev_N, np.int32(order[0]), np.int32(order[-1])))
    )


def test_sam_with_k_equal_to_n_reads_and_writes_as_dam():
    with jax.enable_x64(True):
        N, M, R = 7, 4, 2
        sam_spec = MemorySpec("sam", N, M, R, num_reads=N, search="exact", dtype=jnp.float64)
        dam_spec = MemorySpec("dam", N, M, R, dtype=jnp.float64)
        rng = np.random.default_rng(0)
        memory_NxM = jnp.asarray(rng.normal(size=(N, M)))
        previous_RxN = np_softmax(rng.normal(size=(R, N)))
        permutation_RxN = np.stack([rng.permutation(N) for _ in range(R)])
        ring = ring_from_order([3, 4, 5, 6, 0, 1, 2])
        sam_state = sam_state_with(
            sam_spec,
            memory_NxM,
            read_indices_RxK=jnp.asarray(permutation_RxN, jnp.int32),
            read_weights_RxK=jnp.asarray(np.take_along_axis(previous_RxN, permutation_RxN, 1)),
            ring=ring,
        )
        dam_state = memory.DAM.init(dam_spec)._replace(
            memory_NxM=memory_NxM, read_weights_RxN=jnp.asarray(previous_RxN)
        )
        sam_step = jax.jit(memory.SAM.step, static_argnums=0)
        dam_step = jax.jit(memory.DAM.step, static_argnums=0)
        for t in range(3):
            lra = int(memory.ring_lra(sam_state.ring))
            assert t > 0 or lra == 3  # the ring above starts at word 3
            # Give DAM the same LRA word: its usage's unique argmin.
            dam_state = dam_state._replace(usage_N=1 - jax.nn.one_hot(lra, N, dtype=jnp.float64))
            interface_I = jnp.asarray(rng.normal(size=memory.sam_interface_size(sam_spec)))
            sam_state, sam_reads_RxM = sam_step(sam_spec, sam_state, interface_I)
            dam_state, dam_reads_RxM = dam_step(dam_spec, dam_state, interface_I)
            np.testing.assert_allclose(sam_state.memory_NxM, dam_state.memory_NxM, atol=1e-12)
            np.testing.assert_allclose(sam_reads_RxM, dam_reads_RxM, atol=1e-12)
            dense_RxN = np.zeros((R, N))
            np.put_along_axis(
                dense_RxN, np.asarray(sam_state.read_indices_RxK), sam_state.read_weights_RxK, 1
            )
            np.testing.assert_allclose(dense_RxN, dam_state.read_weights_RxN, atol=1e-12)


def test_sparse_write_equals_the_dense_write_with_the_same_weights():
    with jax.enable_x64(True):
        N, M = 9, 4
        rng = np.random.default_rng(1)
        memory_NxM = rng.normal(size=(N, M))

        @jax.jit
        def both(indices_J, weights_J, lra_index, write_word_M):
            sparse_NxM = memory.sparse_write(
                jnp.asarray(memory_NxM),
                write_indices_J=indices_J,
                write_weights_J=weights_J,
                lra_index=lra_index,
                write_word_M=write_word_M,
            )
            dense_NxM = memory.dense_write_sam(
                jnp.asarray(memory_NxM),
                write_weights_N=jnp.zeros(N).at[indices_J].add(weights_J),
                lra_index=lra_index,
                write_word_M=write_word_M,
            )
            return sparse_NxM, dense_NxM

        def written(indices_J, weights_J, lra_index, write_word_M):
            arguments = (np.asarray(indices_J, np.int32), weights_J, lra_index, write_word_M)
            return tuple(map(np.asarray, both(*arguments)))

        # Distinct indices, the LRA word among them: bit-for-bit.
        weights_J, word_M = rng.uniform(size=6), rng.normal(size=M)
        sparse, dense = written([6, 2, 0, 4, 1, 8], weights_J, 2, word_M)
        np.testing.assert_array_equal(sparse, dense)
        np.testing.assert_array_equal(sparse[[3, 5, 7]], memory_NxM[[3, 5, 7]])
        np.testing.assert_array_equal(sparse[2], weights_J[1] * word_M)  # erased, then written
        np.testing.assert_array_equal(sparse[6], memory_NxM[6] + weights_J[0] * word_M)
        # Duplicates, dyadic weights and word (every sum exact): bit-for-bit; duplicates add.
        dyadic_J, dyadic_M = (
            np.asarray([0.25, 0.125, 0.5, 0.0625, 0.75, 0.5]),
            np.asarray([0.5, -1.25, 2.0, 0.375]),
        )
        sparse, dense = written([5, 1, 5, 5, 8, 1], dyadic_J, 5, dyadic_M)
        np.testing.assert_array_equal(sparse, dense)
        np.testing.assert_array_equal(sparse[5], 0.8125 * dyadic_M)
        np.testing.assert_array_equal(sparse[1], memory_NxM[1] + 0.625 * dyadic_M)
        # Duplicates with random weights: equal up to the rounding of (w1 + w2) a vs w1 a + w2 a.
        sparse, dense = written([3, 3, 7, 0, 7, 3], rng.uniform(size=6), 7, word_M)
        np.testing.assert_allclose(sparse, dense, rtol=0, atol=1e-15)
        assert np.all(sparse[7] != memory_NxM[7])


def test_usage_ring_head_is_the_argmax_of_u2_with_the_documented_ties():
    N, J, delta = 10, 6, 0.005
    touch = jax.jit(lambda ring, i, w: memory.ring_touch(ring, i, w, delta=delta))
    rng = np.random.default_rng(2)
    summed_over_delta = 0  # duplicates individually <= delta whose sum exceeds it
    for _ in range(3):
        ring = memory.ring_init(N)
        last_step = np.full(N, -1)  # -1: never accessed
        last_position = np.arange(N)  # never-accessed words tie-break by index
        assert ring_order(ring) == list(range(N))
        for t in range(40):
            indices_J = rng.integers(0, N // 2 if t % 3 else N, size=J)
            weights_J = rng.choice([0.0007, 0.003, 0.3], size=J, p=[0.3, 0.4, 0.3])
            # Brute force from the definition of U^(2): total weight per word this step.
            totals = collections.defaultdict(float)
            last_seen = {}
            for position, (word, weight) in enumerate(zip(indices_J, weights_J, strict=True)):
                totals[word] += weight
                last_seen[word] = position
            for word, total in totals.items():
                if total > delta:
                    last_step[word], last_position[word] = t, last_seen[word]
                    summed_over_delta += bool(weights_J[indices_J == word].max() <= delta)
            ring = touch(ring, jnp.asarray(indices_J, jnp.int32), jnp.asarray(weights_J))
            u2_N = t - last_step  # time since the last access, never accessed = oldest
            expected = sorted(range(N), key=lambda i: (last_step[i], last_position[i]))
            assert ring_order(ring) == expected
            head = int(memory.ring_lra(ring))
            assert head == expected[0] and u2_N[head] == u2_N.max()
    assert summed_over_delta > 0


def sam_rollout(spec: MemorySpec, interfaces_TxI: jax.Array, memory_NxM: jax.Array):
    def step(state, interface_I):
        state, reads_RxM = memory.SAM.step(spec, state, interface_I)
        return state, (reads_RxM, state.read_indices_RxK, memory.ring_lra(state.ring))

    state, (reads_TxRxM, indices_TxRxK, lra_T) = jax.lax.scan(
        step, sam_state_with(spec, memory_NxM), interfaces_TxI
    )
    return state, reads_TxRxM, indices_TxRxK, lra_T


def test_sam_gradients_equal_central_finite_differences():
    with jax.enable_x64(True):
        N, M, R, K, T = 12, 5, 2, 3, 4
        spec = MemorySpec("sam", N, M, R, K, search="exact", dtype=jnp.float64)
        P = memory.sam_interface_size(spec)
        rng = np.random.default_rng(3)
        read_cost_TxRxM = jnp.asarray(rng.normal(size=(T, R, M)))
        memory_cost_NxM = jnp.asarray(rng.normal(size=(N, M)))

        def loss(x):
            interfaces_TxI = x[: T * P].reshape(T, P)
            state, reads_TxRxM, indices_TxRxK, lra_T = sam_rollout(
                spec, interfaces_TxI, x[T * P :].reshape(N, M)
            )
            value = jnp.sum(reads_TxRxM * read_cost_TxRxM)
            value = value + jnp.sum(state.memory_NxM * memory_cost_NxM)
            return value, (indices_TxRxK, lra_T)

        x = jnp.asarray(np.concatenate([rng.normal(size=T * P), rng.normal(size=N * M)]))
        gradient = jax.jit(jax.grad(lambda x: loss(x)[0]))(x)
        eps = 1e-6
        steps_DxD = eps * jnp.eye(x.size)
        values, (indices, lras) = jax.jit(jax.vmap(loss))(
            jnp.concatenate([x + steps_DxD, x - steps_DxD])
        )
        # Every perturbed input reads the same words and erases the same ones (no ties crossed).
        assert np.all(indices == indices[0]) and np.all(lras == lras[0])
        assert len(np.unique(np.asarray(lras[0]))) == T
        finite_differences = (values[: x.size] - values[x.size :]) / (2 * eps)
        np.testing.assert_allclose(gradient, finite_differences, rtol=1e-6, atol=1e-8)
        # Gradients reach the initial memory only through the words read or kept.
        assert np.abs(np.asarray(gradient[T * P :])).max() > 0.1


def np_shift(weights_N: np.ndarray, shifts_S: np.ndarray) -> np.ndarray:
    """Graves et al. 2014 Eq. 8: w~(i) = sum_j w(j) s(i - j mod N), s over offsets -S//2.."""
    N, S = len(weights_N), len(shifts_S)
    s_N = np.zeros(N)
    for k in range(S):
        s_N[(k - S // 2) % N] += shifts_S[k]
    return np.array([sum(weights_N[j] * s_N[(i - j) % N] for j in range(N)) for i in range(N)])


def np_address(memory_NxM, key, strength, gate, shift, sharpening, previous_N):
    content = np_softmax(strength * np_cosine(key[None], memory_NxM)[0])
    gated = gate * content + (1 - gate) * previous_N
    powered = np_shift(gated, shift) ** sharpening
    return powered / powered.sum()


def test_ntm_addressing_and_one_step_against_numpy():
    with jax.enable_x64(True):
        N, M, R, S = 8, 3, 2, 3
        spec = MemorySpec("ntm", N, M, R, num_shifts=S, dtype=jnp.float64)
        rng = np.random.default_rng(4)
        memory_NxM = rng.normal(size=(N, M))
        keys_HxM, strengths_H = rng.normal(size=(R, M)), rng.uniform(0.5, 5, size=R)
        gates_H, sharpening_H = rng.uniform(size=R), rng.uniform(1, 3, size=R)
        shifts_HxS, previous_HxN = (
            np_softmax(rng.normal(size=(R, S))),
            np_softmax(rng.normal(size=(R, N))),
        )

        @jax.jit
        def pieces(
            memory_NxM, keys_HxM, strengths_H, previous_HxN, gates_H, shifts_HxS, sharpening_H
        ):
            content = memory.ntm_content_weights(keys_HxM, strengths_H, memory_NxM)
            gated = memory.ntm_interpolate(content, previous_HxN, gates_H)
            shifted = memory.ntm_shift(gated, shifts_HxS)
            return content, gated, shifted, memory.ntm_sharpen(shifted, sharpening_H)

        content, gated, shifted, sharpened = map(
            np.asarray,
            pieces(
                memory_NxM, keys_HxM, strengths_H, previous_HxN, gates_H, shifts_HxS, sharpening_H
            ),
        )
        np.testing.assert_allclose(
            content, np_softmax(strengths_H[:, None] * np_cosine(keys_HxM, memory_NxM)), rtol=1e-13
        )
        np.testing.assert_allclose(
            gated, gates_H[:, None] * content + (1 - gates_H[:, None]) * previous_HxN, rtol=1e-13
        )
        expected_shifted = [np_shift(g, s) for g, s in zip(gated, shifts_HxS, strict=True)]
        np.testing.assert_allclose(shifted, expected_shifted, rtol=1e-13)
        powered = shifted ** sharpening_H[:, None]
        np.testing.assert_allclose(sharpened, powered / powered.sum(-1, keepdims=True), rtol=1e-13)
        # Offset +1 (the last of S=3) moves a focus on word 2 to word 3, offset -1 to word 1.
        focus_2xN = np.eye(N)[[2, 2]]
        moved_2xN = memory.ntm_shift(jnp.asarray(focus_2xN), jnp.asarray([[0.0, 0, 1], [1, 0, 0]]))
        np.testing.assert_array_equal(moved_2xN, np.eye(N)[[3, 1]])

        # One full step from a non-empty memory and non-trivial previous weights.
        interface_I = rng.normal(size=memory.ntm_interface_size(spec))
        state = memory.NTM.init(spec)._replace(
            memory_NxM=jnp.asarray(memory_NxM),
            read_weights_RxN=jnp.asarray(previous_HxN),
            write_weights_N=jnp.asarray(np_softmax(rng.normal(size=N))),
        )
        new_state, reads_RxM = jax.jit(memory.NTM.step, static_argnums=0)(
            spec, state, jnp.asarray(interface_I)
        )
        B = M + 3 + S
        heads = interface_I[: (R + 1) * B].reshape(R + 1, B)

        def head_weights(raw, mem, previous_N):
            return np_address(
                mem, raw[:M], np_softplus(raw[M]), np_sigmoid(raw[M + 1]),
                np_softmax(raw[M + 2 : M + 2 + S]), 1 + np_softplus(raw[M + 2 + S]), previous_N,
            )  # fmt: skip

        erase_M = np_sigmoid(interface_I[(R + 1) * B : (R + 1) * B + M])
        add_M = interface_I[(R + 1) * B + M :]
        write_N = head_weights(heads[R], memory_NxM, np.asarray(state.write_weights_N))
        written_NxM = memory_NxM * (1 - np.outer(write_N, erase_M)) + np.outer(write_N, add_M)
        read_RxN = np.stack(
            [head_weights(heads[h], written_NxM, previous_HxN[h]) for h in range(R)]
        )
        np.testing.assert_allclose(new_state.write_weights_N, write_N, rtol=1e-12)
        np.testing.assert_allclose(new_state.memory_NxM, written_NxM, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(new_state.read_weights_RxN, read_RxN, rtol=1e-12)
        np.testing.assert_allclose(reads_RxM, read_RxN @ written_NxM, rtol=1e-12)


def test_dam_matches_numpy_and_its_usage_is_the_discounted_sum_of_weights():
    with jax.enable_x64(True):
        N, M, R, T, discount = 8, 3, 2, 6, 0.9
        spec = MemorySpec("dam", N, M, R, usage_discount=discount, dtype=jnp.float64)
        rng = np.random.default_rng(5)
        interfaces_TxI = rng.normal(size=(T, memory.sam_interface_size(spec)))
        step = jax.jit(memory.DAM.step, static_argnums=0)
        state = memory.DAM.init(spec)
        memory_NxM, previous_RxN = np.zeros((N, M)), np.zeros((R, N))
        usage_N = np.zeros(N)  # recomputed from the definition at each step
        history = []  # (w^W_t, sum_h w^R_t) for t = 1..T
        for t in range(T):
            raw = interfaces_TxI[t]
            queries_RxM = raw[: R * M].reshape(R, M)
            strengths_R = np_softplus(raw[R * M : R * M + R])
            word_M = raw[R * M + R : R * M + R + M]
            alpha, gamma = np_sigmoid(raw[-2:])
            lra = int(np.argmin(usage_N))
            assert t > 0 or lra == 0  # zero usage: the tie goes to the lowest index
            write_N = alpha * (gamma * previous_RxN.mean(0) + (1 - gamma) * np.eye(N)[lra])
            memory_NxM = memory_NxM.copy()
            memory_NxM[lra] = 0
            memory_NxM = memory_NxM + np.outer(write_N, word_M)
            previous_RxN = np_softmax(strengths_R[:, None] * np_cosine(queries_RxM, memory_NxM))
            history.append((write_N, previous_RxN.sum(0)))
            usage_N = sum(
                discount ** (t - s) * (write_s + read_s)
                for s, (write_s, read_s) in enumerate(history)
            )
            state, reads_RxM = step(spec, state, jnp.asarray(raw))
            np.testing.assert_allclose(state.write_weights_N, write_N, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(state.memory_NxM, memory_NxM, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(reads_RxM, previous_RxN @ memory_NxM, rtol=1e-12)
            np.testing.assert_allclose(state.usage_N, usage_N, rtol=1e-12)


CORES = {
    "ntm": (memory.NTM, MemorySpec("ntm", 6, 3, 2, dtype=jnp.float64)),
    "dam": (memory.DAM, MemorySpec("dam", 6, 3, 2, dtype=jnp.float64)),
    "sam": (memory.SAM, MemorySpec("sam", 6, 3, 2, 2, search="exact", dtype=jnp.float64)),
}


@pytest.mark.parametrize("kind", sorted(CORES))
def test_vmap_over_the_batch_and_scan_over_time_equal_a_loop(kind):
    with jax.enable_x64(True):
        core, spec = CORES[kind]
        B, T = 3, 5
        interfaces_BxTxI = jnp.asarray(
            np.random.default_rng(6).normal(size=(B, T, core.interface_size(spec)))
        )

        @jax.jit
        def batched(interfaces_BxTxI):
            states = jax.vmap(lambda _: core.init(spec))(jnp.arange(B))
            step = jax.vmap(lambda state, i: core.step(spec, state, i))
            states, reads_TxBxRxM = jax.lax.scan(step, states, interfaces_BxTxI.swapaxes(0, 1))
            return states.memory_NxM, reads_TxBxRxM.swapaxes(0, 1)

        memory_BxNxM, reads_BxTxRxM = batched(interfaces_BxTxI)
        step = jax.jit(core.step, static_argnums=0)
        for b in range(B):
            state = core.init(spec)
            for t in range(T):
                state, reads_RxM = step(spec, state, interfaces_BxTxI[b, t])
                np.testing.assert_allclose(reads_BxTxRxM[b, t], reads_RxM, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(memory_BxNxM[b], state.memory_NxM, rtol=1e-12, atol=1e-14)
        assert np.abs(np.asarray(reads_BxTxRxM)).max() > 1e-3


def test_sam_backward_pass_memory_does_not_grow_with_n_times_t():
    N, M, R, K = 8192, 16, 2, 4
    spec = MemorySpec("sam", N, M, R, K, search="exact")
    P = memory.sam_interface_size(spec)

    def temp_bytes(T: int) -> int | None:
        def loss(interfaces_TxI, memory_NxM):
            state, reads_TxRxM, _, _ = sam_rollout(spec, interfaces_TxI, memory_NxM)
            return jnp.sum(reads_TxRxM**2) + jnp.sum(state.memory_NxM**2)

        grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
        compiled = grad_fn.lower(
            jax.ShapeDtypeStruct((T, P), jnp.float32), jax.ShapeDtypeStruct((N, M), jnp.float32)
        ).compile()
        analysis = compiled.memory_analysis()
        return None if analysis is None else analysis.temp_size_in_bytes

    short, long = temp_bytes(10), temp_bytes(80)
    if short is None or long is None:
        pytest.skip(reason="memory_analysis() is not available on this backend")
    word_bytes = N * M * 4
    # O(N*T*M) residuals would add word_bytes per step: 70 * 512 KiB = 35 MiB here.
    assert long - short < 0.05 * word_bytes * 70, (short, long)
    assert long < 4 * word_bytes, (short, long)


def test_the_backward_pass_does_not_copy_the_memory_per_step():
    """XLA keeps the memory's cotangent in place through the reverse loop (O(K M) per step).

    An erase written as a dynamic_update_slice before the scatter made XLA copy the N x M
    cotangent twice per backward step; only the initial zeros may be copied, outside the loop.
    """
    spec = MemorySpec(kind="sam", num_words=4099, word_size=8, num_heads=2, num_reads=2)
    core = interface.core("sam")

    def loss(interface_TxP):
        _, reads = jax.lax.scan(lambda s, p: core.step(spec, s, p), core.init(spec), interface_TxP)
        return jnp.sum(reads**2)

    inputs = jnp.ones((6, core.interface_size(spec)), jnp.float32)
    text = jax.jit(jax.grad(loss)).lower(inputs).compile().as_text()
    copies = [line for line in text.splitlines() if "= f32[4099,8]" in line and " copy(" in line]
    assert len(copies) <= 1, copies
