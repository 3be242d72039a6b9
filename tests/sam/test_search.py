"""deepgen.sam.search: every search returns the exact cosine neighbours (numpy reference) on small
memories, inside jit, scan, vmap and grad; the host HNSW index follows the memory's writes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from deepgen.sam import search
from deepgen.sam.interface import MemorySpec


@pytest.fixture(autouse=True)
def _fresh_host_registry():
    """Every test starts and ends with no host index; ef_search covers the whole small graph."""
    search.release_all()
    previous = search.configure_host(ef_search=256)
    yield
    search.configure_host(**vars(previous))
    search.release_all()


def _memory(rng: np.random.Generator, num_words: int, word_size: int, dtype) -> np.ndarray:
    """Random N(0, 1) words with a few all-zero words."""
    memory = rng.standard_normal((num_words, word_size)).astype(dtype)
    memory[rng.choice(num_words, 5, replace=False)] = 0
    return memory


def _device_searches(memory, queries, k):
    """Indices of every device search (blocked at several block sizes) on one memory."""
    results = {}
    for kind, block in [("exact", 0), ("approx", 0)] + [("blocked", b) for b in (1, 7, 157)]:
        spec = MemorySpec(search=kind, search_block=block or 65536)
        fn = jax.jit(lambda m, q, spec=spec: search.nearest(spec, search.init(spec, m), m, q, k))
        results[f"{kind}{block or ''}"] = np.asarray(fn(memory, queries))
    return results


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_searches_equal_numpy_reference(dtype):
    rng = np.random.default_rng(0)
    memory = _memory(rng, 157, 12, dtype)
    queries = rng.standard_normal((5, 12)).astype(dtype)
    with jax.enable_x64(dtype == np.float64):
        results = _device_searches(jnp.asarray(memory), jnp.asarray(queries), 4)
    expected = search.nearest_numpy(memory, queries, 4)
    assert expected.shape == (5, 4)
    for name, indices in results.items():
        assert indices.dtype == np.int32, name
        np.testing.assert_array_equal(indices, expected, err_msg=name)


def test_ties_go_to_the_lower_index():
    # Two non-zero words and 40 zero words: the other two neighbours are tied zero words (and a
    # zero query ties everything); exact, blocked and the reference all take the lowest indices.
    rng = np.random.default_rng(1)
    memory = np.zeros((42, 6), np.float32)
    memory[[30, 11]] = rng.standard_normal((2, 6))
    queries = np.concatenate([memory[[30, 11]] + 0.01, np.zeros((1, 6))]).astype(np.float32)
    expected = search.nearest_numpy(memory, queries, 4)
    np.testing.assert_array_equal(expected[:, 2:], [[0, 1], [0, 1], [2, 3]])
    for kind, block in [("exact", 1), ("blocked", 5), ("blocked", 16)]:
        spec = MemorySpec(search=kind, search_block=block)
        fn = jax.jit(lambda m, q, spec=spec: search.nearest(spec, search.init(spec, m), m, q, 4))
        np.testing.assert_array_equal(fn(memory, queries), expected)


def test_gradients_through_gathered_rows_equal_exact():
    rng = np.random.default_rng(5)
    memory = jnp.asarray(_memory(rng, 50, 6, np.float32))
    queries = jnp.asarray(rng.standard_normal((3, 6)), jnp.float32)

    def grads(kind):
        spec = MemorySpec(search=kind, search_block=16)

        def loss(memory_NxM, queries_RxM):
            state = search.init(spec, memory_NxM)
            indices_RxK = search.nearest(spec, state, memory_NxM, queries_RxM, 4)
            reads_RxKxM = memory_NxM[indices_RxK]
            return jnp.sum(jax.nn.softmax(jnp.sum(reads_RxKxM * queries_RxM[:, None], -1)) ** 2)

        return jax.jit(jax.grad(loss, argnums=(0, 1)))(memory, queries)

    exact_memory, exact_queries = grads("exact")
    touched = np.unique(search.nearest_numpy(memory, queries, 4))
    assert (np.abs(exact_memory).sum(1) > 0).sum() == touched.size  # only the read words
    for kind in ("blocked", "approx", "host"):
        for got, expected in zip(grads(kind), (exact_memory, exact_queries), strict=True):
            np.testing.assert_array_equal(got, expected, err_msg=kind)


@pytest.mark.parametrize("num_devices", [1, 2])
def test_sharded_nearest_equals_exact(num_devices):
    if jax.device_count() < num_devices:
        pytest.skip(reason=f"needs {num_devices} devices")
    rng = np.random.default_rng(2)
    memory = jnp.asarray(_memory(rng, 256, 8, np.float32))
    queries = jnp.asarray(rng.standard_normal((3, 8)), jnp.float32)
    mesh = Mesh(np.array(jax.devices()[:num_devices]), ("words",))
    sharded = jax.jit(
        functools.partial(search.sharded_nearest, k=5, mesh=mesh, axis_name="words", block_size=24)
    )
    np.testing.assert_array_equal(
        sharded(memory, queries), search.exact_nearest(memory, queries, 5)
    )


def _scan_reads(spec, memory_NxM, queries_TxRxM, rows_TxJ, words_TxJxM, scale, k):
    """init, then per step: write rows (scaled words), after_write, nearest, gather the reads."""

    def step(carry, inputs):
        memory, state = carry
        queries_RxM, rows_J, words_JxM = inputs
        memory = memory.at[rows_J].set(scale * words_JxM)
        state = search.after_write(spec, state, rows_J, memory)
        indices_RxK = search.nearest(spec, state, memory, queries_RxM, k)
        return (memory, state), (indices_RxK, jnp.sum(memory[indices_RxK] * queries_RxM[:, None]))

    carry = (memory_NxM, search.init(spec, memory_NxM))
    (memory_NxM, state), (indices_TxRxK, reads_T) = jax.lax.scan(
        step, carry, (queries_TxRxM, rows_TxJ, words_TxJxM)
    )
    return jnp.sum(reads_T), (indices_TxRxK, memory_NxM, state)


def _write_sequence(rng, batch, steps, num_words, word_size, heads, rows_per_write):
    """Batched queries, written rows (random, repeats allowed) and new words (a fifth zero)."""
    words = rng.standard_normal((batch, steps, rows_per_write, word_size))
    words *= rng.random((batch, steps, rows_per_write, 1)) > 0.2
    return (
        jnp.asarray(rng.standard_normal((batch, steps, heads, word_size)), jnp.float32),
        jnp.asarray(rng.integers(0, num_words, (batch, steps, rows_per_write)), jnp.int32),
        jnp.asarray(words, jnp.float32),
    )


def test_host_follows_writes_under_jit_scan_vmap_and_grad():
    N, M, R, K, B, T, J = 200, 16, 4, 4, 3, 12, 5
    rng = np.random.default_rng(3)
    memories = jnp.asarray(np.stack([_memory(rng, N, M, np.float32) for _ in range(B)]))
    inputs = _write_sequence(rng, B, T, N, M, R, J)

    def run(kind):
        """(gradients wrt memories and scale, (indices, final memories, final states))."""
        spec = MemorySpec(num_words=N, word_size=M, search=kind)
        batched = jax.vmap(functools.partial(_scan_reads, spec, k=K), in_axes=(0, 0, 0, 0, None))

        def total(memories, scale):
            losses, outputs = batched(memories, *inputs, scale)
            return jnp.sum(losses), outputs

        grad_fn = jax.jit(jax.grad(total, argnums=(0, 1), has_aux=True))
        return grad_fn(memories, 1.5)

    exact_grads, (exact_indices, final_memory, _) = run("exact")
    host_grads, (host_indices, _, host_states) = run("host")
    np.testing.assert_array_equal(host_indices, exact_indices)
    for b in range(B):  # the last read of each example against the reference on its memory
        expected = search.nearest_numpy(
            np.asarray(final_memory[b]), np.asarray(inputs[0][b, -1]), K
        )
        np.testing.assert_array_equal(host_indices[b, -1], expected)
    for host, exact in zip(host_grads, exact_grads, strict=True):
        np.testing.assert_array_equal(host, exact)
    assert np.abs(exact_grads[1]) > 0
    states = np.asarray(host_states)
    assert states.shape == (B, 2) and (states[:, 1] == T).all()
    assert len(set(states[:, 0])) == B  # each example has its own index


def test_host_shared_init_forks_per_example_and_rejects_stale_states():
    # As the SAM model does: one init of a zero memory broadcast over the batch, twice; more
    # writes than words, so the graph is rebuilt.
    N, M, R, K, B, T, J = 64, 8, 2, 3, 2, 40, 3
    rng = np.random.default_rng(4)
    spec = MemorySpec(num_words=N, word_size=M, search="host")
    exact = MemorySpec(num_words=N, word_size=M, search="exact")

    def reads(spec):
        """The jitted batched scan from one zero memory (not batched) for every example."""

        def one(queries, rows, words):
            memory = jnp.zeros((N, M), jnp.float32)
            return _scan_reads(spec, memory, queries, rows, words, 1.0, K)[1]

        return jax.jit(jax.vmap(one))

    host_reads, exact_reads = reads(spec), reads(exact)
    for _ in range(2):
        # Early on few words are written, so zero words (similarity 0, tied) are read: the host
        # index orders them lowest index first, as the exact search does.
        inputs = _write_sequence(rng, B, T, N, M, R, J)
        host_indices, _, states = host_reads(*inputs)
        np.testing.assert_array_equal(host_indices, exact_reads(*inputs)[0])
    assert len(search.live_handles()) == 1 + 2 * B  # one zero-memory base and B forks per run
    # T J = 120 writes, about 96 non-zero, into the 64 free slots of 2N: one rebuild each.
    assert [search.host_index(int(h)).rebuilds for h in states[:, 0]] == [1] * B
    query = jax.jit(lambda state, memory, q: search.nearest(spec, state, memory, q, K))
    stale = np.asarray(states[0]) - np.array([0, 1], np.int32)
    with pytest.raises(Exception, match="version"):
        np.asarray(query(stale, jnp.zeros((N, M)), inputs[0][0, 0]))
    search.release(states)
    released = set(np.asarray(states)[:, 0].tolist())
    assert len(search.live_handles()) == 1 + B and not released & set(search.live_handles())
