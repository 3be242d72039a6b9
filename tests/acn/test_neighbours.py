"""The exact neighbour search and the code-table writes against brute force, on 1 and 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.acn import neighbours as nn_search
from deepgen.core.mesh import make_mesh

K = 5


def integer_codes(rng: np.random.Generator, num: int, dim: int = 3) -> np.ndarray:
    """Small integer codes: every distance is exact in float32 and many tie."""
    return rng.integers(-2, 3, size=(num, dim)).astype(np.float32)


def reference(queries, table, exclude, k=K):
    """A stable sort of exactly computed distances: ties go to the lower index."""
    d = ((queries[:, None, :].astype(np.float64) - table[None].astype(np.float64)) ** 2).sum(-1)
    if exclude is not None:  # an excluded index past the table (a padding row) excludes nothing
        inside = exclude < len(table)
        d[np.flatnonzero(inside), exclude[inside]] = np.inf
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), order


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    table = integer_codes(rng, 256)
    exclude = rng.permutation(256)[:24].astype(np.int32)
    queries = table[exclude] + 0.0  # each query is a row of the table: its own row must go
    return queries, table, exclude


@pytest.mark.parametrize("block_size", [256, 64, 8])
def test_blocked_search_equals_brute_force_with_ties_and_self_excluded(problem, block_size):
    queries, table, exclude = problem
    want_d, want_i = reference(queries, table, exclude)
    assert (want_d[:, :-1] == want_d[:, 1:]).any(), "the problem must contain ties"
    d, i = jax.jit(
        lambda q, t, e: nn_search.nearest_neighbours(q, t, k=K, exclude_B=e, block_size=block_size)
    )(queries, table, exclude)
    np.testing.assert_array_equal(np.asarray(i), want_i)
    np.testing.assert_array_equal(np.asarray(d), want_d.astype(np.float32))
    assert not (np.asarray(i) == exclude[:, None]).any()
    _brute_d, brute_i = nn_search.brute_force_neighbours(queries, table, k=K, exclude_B=exclude)
    np.testing.assert_array_equal(np.asarray(brute_i), want_i)


def test_padding_rows_are_never_returned():
    rng = np.random.default_rng(1)
    table = np.zeros((64, 3), np.float32)
    table[:50] = integer_codes(rng, 50)
    queries = np.zeros((4, 3), np.float32)  # the zero padding rows would be nearest
    _, i = nn_search.nearest_neighbours(queries, table, k=K, num_valid=50, block_size=16)
    assert (np.asarray(i) < 50).all()
    np.testing.assert_array_equal(np.asarray(i), reference(queries, table[:50], None)[1])


def test_fewer_candidates_than_k_fill_with_no_index():
    table = np.eye(3, dtype=np.float32)
    d, i = nn_search.nearest_neighbours(
        table, table, k=3, exclude_B=np.arange(3, dtype=np.int32), block_size=3
    )
    assert (np.asarray(i)[:, 2] == nn_search.NO_INDEX).all() and np.isinf(np.asarray(d)[:, 2]).all()


@pytest.mark.parametrize("mesh_sizes", [{"data": -1, "fsdp": 1}, {"data": 1, "fsdp": -1}])
@pytest.mark.parametrize("block_size", [32, 8])
def test_sharded_search_equals_brute_force(problem, mesh_sizes, block_size):
    queries, table, exclude = problem
    mesh = make_mesh(mesh_sizes)
    shards = mesh.devices.size
    assert shards == jax.device_count() > 1  # the table is split over the suite's fake devices
    rows, block = nn_search.padded_table_size(250, num_shards=shards, block_size=block_size)
    padded = np.zeros((rows, 3), np.float32)
    padded[:250] = table[:250]
    sharded = jax.device_put(padded, nn_search.table_sharding(mesh))
    search = jax.jit(
        lambda q, t, e: nn_search.sharded_nearest_neighbours(
            q, t, mesh=mesh, k=K, exclude_B=e, num_valid=250, block_size=block
        )
    )
    d, i = search(queries, sharded, exclude)
    want_d, want_i = reference(queries, table[:250], exclude)
    np.testing.assert_array_equal(np.asarray(i), want_i)
    np.testing.assert_array_equal(np.asarray(d), want_d.astype(np.float32))


def test_padded_table_size_gives_whole_blocks_per_shard():
    for num, shards, block in [
        (4000, 1, 1024),
        (60_000, 8, 8192),
        (10, 8, 4),
        (1_000_000, 4, 8192),
    ]:
        rows, b = nn_search.padded_table_size(num, num_shards=shards, block_size=block)
        assert rows >= num and rows % shards == 0 and (rows // shards) % b == 0 and b <= block


@pytest.mark.parametrize("num_devices_axis", [{"data": -1, "fsdp": 1}, {"data": 1, "fsdp": -1}])
def test_refresh_writes_exactly_the_batch_rows_and_gather_reads_them(num_devices_axis):
    mesh = make_mesh(num_devices_axis)
    rng = np.random.default_rng(2)
    table = rng.normal(size=(64, 4)).astype(np.float32)
    index = rng.permutation(64)[:12].astype(np.int32)
    codes = rng.normal(size=(12, 4)).astype(np.float32)
    sharded = jax.device_put(table, nn_search.table_sharding(mesh))
    new = jax.jit(lambda t, i, c: nn_search.refresh_rows(t, i, c, mesh=mesh))(sharded, index, codes)
    want = table.copy()
    want[index] = codes
    np.testing.assert_array_equal(np.asarray(new), want)
    assert new.sharding.is_equivalent_to(nn_search.table_sharding(mesh), 2)
    rows = jax.jit(lambda t, i: nn_search.gather_rows(t, i, mesh=mesh))(new, jnp.asarray(index))
    np.testing.assert_array_equal(np.asarray(rows), codes)
