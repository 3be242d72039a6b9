"""Exact K-nearest-neighbour search over the code table, in blocks and across devices.

ACN (Graves et al., arXiv:1804.02476, Sec. 3) conditions each code's prior on a code drawn
uniformly from KNN(x), the K nearest Euclidean neighbours of c(x) among the codes of every
training example, the example itself excluded (its own stale code would sit at distance ~0 and
the prior would learn to copy it). The table is refreshed with each batch's codes after the
search (Algorithm 1).

The search is exact: squared distances |q|^2 - 2 q.t + |t|^2 by one matrix product per block of
the table, `lax.top_k` per block, and a running merge (a `lax.scan` over blocks), so the memory
is O(B x block) whatever the table size. On a mesh the table is split by rows over every device;
each device searches its rows and the per-device candidates are gathered and merged. Ties go to
the lower table index everywhere (`lax.top_k` keeps the earlier of equal values, and the merge
puts earlier blocks and devices first), so every path returns the same indices as a stable
brute-force sort.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from deepgen.core.mesh import BATCH_AXES

NO_INDEX = -1  # the index of an empty slot of the result (fewer than k candidates)


def padded_table_size(num_codes: int, *, num_shards: int, block_size: int) -> tuple[int, int]:
    """(rows to allocate, rows per block): every shard holds a whole number of equal blocks."""
    per_shard = -(-num_codes // num_shards)
    block = min(block_size, per_shard)
    per_shard = -(-per_shard // block) * block
    return per_shard * num_shards, block


def squared_distances(queries_BxZ: jax.Array, table_NxZ: jax.Array) -> jax.Array:
    """|q - t|^2 for every pair by |q|^2 - 2 q.t + |t|^2, clipped at 0; shape B x N."""
    cross_BxN = jnp.dot(queries_BxZ, table_NxZ.T, precision=jax.lax.Precision.HIGHEST)
    q_B1 = jnp.sum(jnp.square(queries_BxZ), axis=-1, keepdims=True)
    t_1N = jnp.sum(jnp.square(table_NxZ), axis=-1)[None, :]
    return jnp.maximum(q_B1 - 2.0 * cross_BxN + t_1N, 0.0)


def _merge(
    dist_BxA: jax.Array, index_BxA: jax.Array, dist_BxC: jax.Array, index_BxC: jax.Array, k: int
) -> tuple[jax.Array, jax.Array]:
    """The k smallest of two candidate lists; on ties the first list (lower indices) wins."""
    dist = jnp.concatenate([dist_BxA, dist_BxC], axis=1)
    index = jnp.concatenate([index_BxA, index_BxC], axis=1)
    neg_best, where = jax.lax.top_k(-dist, k)
    return -neg_best, jnp.take_along_axis(index, where, axis=1)


def nearest_neighbours(
    queries_BxZ: jax.Array,
    table_NxZ: jax.Array,
    *,
    k: int,
    exclude_B: jax.Array | None = None,
    num_valid: int | jax.Array | None = None,
    block_size: int = 8192,
    index_offset: int | jax.Array = 0,
) -> tuple[jax.Array, jax.Array]:
    """(squared distances, table indices) of the k nearest rows, nearest first; both B x k.

    exclude_B: one table index per query never to return (the query's own row; -1 for none).
    num_valid: rows at or beyond it are padding. index_offset: the global index of row 0 (a
    shard's first row). Slots with no candidate hold distance +inf and index NO_INDEX.
    """
    num_rows, dim = table_NxZ.shape
    block = min(block_size, num_rows)
    if num_rows % block:
        raise ValueError(f"table rows {num_rows} must be a multiple of block_size {block}")
    if k > block:
        raise ValueError(f"k={k} must not exceed the block size {block}")
    num_queries = queries_BxZ.shape[0]
    exclude_B = jnp.full((num_queries,), NO_INDEX, jnp.int32) if exclude_B is None else exclude_B
    limit = num_rows + index_offset if num_valid is None else num_valid
    blocks = table_NxZ.reshape(num_rows // block, block, dim)

    def search_block(carry, inputs):
        best_dist, best_index = carry
        block_index, rows_CxZ = inputs
        index_C = index_offset + block_index * block + jnp.arange(block, dtype=jnp.int32)
        dist_BxC = squared_distances(queries_BxZ, rows_CxZ)
        invalid = (index_C[None, :] >= limit) | (index_C[None, :] == exclude_B[:, None])
        dist_BxC = jnp.where(invalid, jnp.inf, dist_BxC)
        neg_dist, where = jax.lax.top_k(-dist_BxC, k)
        block_index_BxK = jnp.where(jnp.isinf(neg_dist), NO_INDEX, index_C[where])
        return _merge(best_dist, best_index, -neg_dist, block_index_BxK, k), None

    init = (
        jnp.full((num_queries, k), jnp.inf, queries_BxZ.dtype),
        jnp.full((num_queries, k), NO_INDEX, jnp.int32),
    )
    steps = (jnp.arange(num_rows // block, dtype=jnp.int32), blocks)
    (dist_BxK, index_BxK), _ = jax.lax.scan(search_block, init, steps)
    return dist_BxK, index_BxK


def table_sharding(mesh: Mesh) -> NamedSharding:
    """The code table's rows split over every device of the mesh (the batch axes)."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, None))


def _shard_offset(local_rows: int) -> jax.Array:
    return jax.lax.axis_index(BATCH_AXES) * local_rows


def sharded_nearest_neighbours(
    queries_BxZ: jax.Array,
    table_NxZ: jax.Array,
    *,
    mesh: Mesh,
    k: int,
    exclude_B: jax.Array | None = None,
    num_valid: int,
    block_size: int = 8192,
) -> tuple[jax.Array, jax.Array]:
    """nearest_neighbours with the table's rows split over the mesh; the result is replicated."""
    num_queries = queries_BxZ.shape[0]
    if exclude_B is None:
        exclude_B = jnp.full((num_queries,), NO_INDEX, jnp.int32)

    def local(queries, table, exclude):
        dist, index = nearest_neighbours(
            queries,
            table,
            k=k,
            exclude_B=exclude,
            num_valid=num_valid,
            block_size=block_size,
            index_offset=_shard_offset(table.shape[0]),
        )
        # Candidates of every shard, shard order = row order: S x B x k -> B x (S k).
        all_dist = jax.lax.all_gather(dist, BATCH_AXES)
        all_index = jax.lax.all_gather(index, BATCH_AXES)
        all_dist = jnp.moveaxis(all_dist, 0, 1).reshape(num_queries, -1)
        all_index = jnp.moveaxis(all_index, 0, 1).reshape(num_queries, -1)
        neg_best, where = jax.lax.top_k(-all_dist, k)
        return -neg_best, jnp.take_along_axis(all_index, where, axis=1)

    rows = PartitionSpec(BATCH_AXES, None)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(), rows, PartitionSpec()),
        out_specs=(PartitionSpec(), PartitionSpec()),
        check_vma=False,
    )(queries_BxZ, table_NxZ, exclude_B)


def gather_rows(table_NxZ: jax.Array, index_B: jax.Array, *, mesh: Mesh) -> jax.Array:
    """table[index] with the rows split over the mesh: each device gives its own rows, summed."""

    def local(table, index):
        local_rows = table.shape[0]
        local_index = index - _shard_offset(local_rows)
        mine = (local_index >= 0) & (local_index < local_rows)
        rows = table[jnp.clip(local_index, 0, local_rows - 1)]
        return jax.lax.psum(jnp.where(mine[:, None], rows, 0.0), BATCH_AXES)

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(BATCH_AXES, None), PartitionSpec()),
        out_specs=PartitionSpec(),
        check_vma=False,
    )(table_NxZ, index_B)


def refresh_rows(
    table_NxZ: jax.Array, index_B: jax.Array, codes_BxZ: jax.Array, *, mesh: Mesh
) -> jax.Array:
    """table with rows index set to codes (indices distinct); each device writes only its rows."""

    def local(table, index, codes):
        local_rows = table.shape[0]
        local_index = index - _shard_offset(local_rows)
        mine = (local_index >= 0) & (local_index < local_rows)
        # Rows owned elsewhere go to an out-of-range slot, which mode="drop" ignores.
        return table.at[jnp.where(mine, local_index, local_rows)].set(
            codes.astype(table.dtype), mode="drop"
        )

    rows = PartitionSpec(BATCH_AXES, None)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(rows, PartitionSpec(), PartitionSpec()),
        out_specs=rows,
        check_vma=False,
    )(table_NxZ, index_B, codes_BxZ)


@functools.partial(jax.jit, static_argnames=("k",))
def brute_force_neighbours(
    queries_BxZ: jax.Array, table_NxZ: jax.Array, *, k: int, exclude_B: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """The reference: all distances at once and a stable sort (ties to the lower index)."""
    dist_BxN = squared_distances(queries_BxZ, table_NxZ)
    if exclude_B is not None:
        columns = jnp.arange(table_NxZ.shape[0])[None, :]
        dist_BxN = jnp.where(columns == exclude_B[:, None], jnp.inf, dist_BxN)
    order = jnp.argsort(dist_BxN, axis=1, stable=True)[:, :k]
    return jnp.take_along_axis(dist_BxN, order, axis=1), order.astype(jnp.int32)
