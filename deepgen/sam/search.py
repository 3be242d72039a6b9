"""Nearest-neighbour search of SAM's sparse reads (Rae et al. 2016, arXiv 1610.09027).

A sparse read (Sec. 3.1, Eq. 4) keeps, for each of R read queries q, the K words of the memory
(N words of size M) with the largest content weight; with a softmax over cosine similarities
these are the K words of highest cosine similarity to q. The paper finds them with an
approximate nearest-neighbour (ANN) index kept beside the memory, updated on every write,
O(log N) per query and per update (Sec. 3.3; FLANN randomized k-d trees or LSH, rebuilt every N
insertions; Supp. A argues Theta(log N) is optimal for a content-addressable memory; the Supp. E
speed benchmark used a k-d forest of 4 trees and 32 checks). The index carries no gradient: the
chosen indices are a non-differentiable function of `stop_gradient` inputs, and gradients flow
through the K gathered rows only.

`MemorySpec.search` picks one of four searches, all behind the same three functions

    state = init(spec, memory_NxM)
    indices_RxK = nearest(spec, state, memory_NxM, queries_RxM, k)   # most similar first
    state = after_write(spec, state, rows_J, memory_NxM)             # rows_J were rewritten

which work inside `jax.jit`, inside `lax.scan` over time, under `jax.vmap` over the batch and
under `jax.grad` of the surrounding computation:

- `exact`: cosine similarities to every word and `lax.top_k`; O(N M) per query, the R x N
  similarity matrix is materialised. The state is an empty placeholder.
- `blocked`: the same search over blocks of `spec.search_block` words (a `lax.scan` keeping a
  running top-k, merged with `lax.top_k` of the concatenation), so at most R x block
  similarities exist at once (N = 1e6 fits in any memory). It returns the indices of `exact`
  (up to rounding-level ties, see Ties below). Sharding: with the memory split over a mesh
  axis along N, every device runs the blocked search over its own words, the per-device
  candidates are all-gathered and merged by one more top-k (`sharded_nearest`); the cost per
  device is O(N M / devices).
- `approx`: `lax.approx_max_k` with recall target `APPROX_RECALL_TARGET` (0.95). On TPU it is the
  partial-reduce approximate top-k of Chern et al. 2022; on other backends XLA falls back to an
  exact sort and slice (then it equals `exact` up to the order of tied values).
- `host`: the paper's incremental index. A host-side HNSW graph (hnswlib, cosine space) per
  example holds the N words; `nearest` sends only the R queries to the host and `after_write`
  only the J rewritten rows (gathered on the device), so a step costs O(log N) on the host plus
  a constant device-host transfer, against O(N M) for the device searches. The state is an int32
  pair (handle, version) naming the index in a Python registry (see "Host index" below).

Ties: `exact`, `blocked` and `sharded_nearest` order equal similarities by the lower word index
first (as `lax.top_k` does); `nearest_numpy` does the same (a stable sort). `host` does so for
all-zero words (similarity 0, the ties of a fresh SAM memory), and `approx` on CPU and GPU;
other equal similarities `host` and `approx` on TPU order arbitrarily (the paper's Eq. 6 breaks
ties arbitrarily too). Cosine similarity is <q, m> / (sqrt(|q|^2 + eps) sqrt(|m|^2 + eps)) with
eps = `EPSILON`, so an all-zero word has similarity 0 to every query, never NaN; `host`
normalises without eps, so words of norm below about 1e-6 rank differently there. Rounding:
XLA's CPU kernels round a dot product or a norm differently for different numbers of words, so
similarities that tie mathematically but not bitwise can be ordered differently by `exact`
(all N words at once) and `blocked` (block by block). SAM makes such ties: its additive write
(Eq. 5) puts multiples of the same write word a_t into fresh (zero) rows, whose cosines to a
query are equal up to the last bit. Which of those words is read then depends on the search;
identical or all-zero words (bitwise ties) and words that differ beyond rounding are always
returned alike.

Host index. hnswlib's HNSW graph, one per example (`_HostIndex`): a write inserts the word's new
vector under a fresh slot and marks the old one deleted, O(log N); after N insertions the graph
is rebuilt from the live words, as the paper rebuilds its k-d trees every N insertions (O(log N)
amortised). All-zero words stay out of the graph (they would make it degenerate) and are merged
into results at similarity 0. The state is an int32 pair (handle, version) naming the index in a
Python registry; all three functions are `jax.pure_callback`s with
`vmap_method="broadcast_all"`, so under any number of `vmap`s one host call serves the whole
batch and each example uses its own index.

- `init` returns (handle, 0) of the *base* index of the memory's content: built once (O(N log N)
  on the host; an all-zero memory gives an empty graph) and shared by every `init` of identical
  content (a blake2b digest of the rows), so a model that re-creates its zero memory every
  sequence, or one `init` broadcast over the batch, builds one index. A base is never written.
- `after_write` sends only the J rewritten rows (gathered on the device: O(J M) per step). Given a
  version-0 state it first copies the base (O(size of the graph), once per sequence) into a new
  index owned by that example; later writes update the example's index in place. It returns
  (handle, version + 1).
- `nearest` sends only the R queries (O(R M) per step) and asks the example's index.

Ordering comes from data dependence alone: the next `nearest` must be given the state that
`after_write` returned, so the update runs before the query. A state whose version differs from
its index's (stale, reused, or replayed, e.g. by a `jax.checkpoint`ed step recomputed in the
backward pass, which the host search does not support) raises. Lifetime: the registry keeps the
least recently used indices until the live ones hold more than `HostConfig.max_live_words` words
(keep it above (batch + 1) * N), then evicts them (a later use raises); `release(states)` and
`release_all()` free indices at once (tests, benchmarks). HNSW parameters (`HostConfig`, set with
`configure_host`): 16 links per node, ef_construction 64, ef_search 128; a query keeps
max(ef_search, k) candidates, so while the number of non-zero words is at most ef_search it
visits the whole connected graph and returns the exact neighbours (the tests set ef_search 256
for N = 200); above that it is approximate (recall@4 in benchmarks/sam_search_speed.py).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import hashlib
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from deepgen.sam.interface import SEARCHES, MemorySpec

EPSILON = 1e-12  # added to squared norms before the square root (zero words give similarity 0)
APPROX_RECALL_TARGET = 0.95  # lax.approx_max_k's recall target of the "approx" search

SearchState = Any  # an empty int32 array (device searches) or int32 (handle, version) (host)


# ---- device searches ------------------------------------------------------------------------


def _inverse_norm(x_AxM: jax.Array) -> jax.Array:
    """1 / sqrt(|x|^2 + eps) per row (at least float32, where eps is representable)."""
    x_AxM = x_AxM.astype(jnp.promote_types(x_AxM.dtype, jnp.float32))
    return jax.lax.rsqrt(jnp.sum(jnp.square(x_AxM), axis=-1) + jnp.asarray(EPSILON, x_AxM.dtype))


def _normalised(queries_RxM: jax.Array) -> jax.Array:
    """Queries scaled to (nearly) unit norm."""
    return queries_RxM * _inverse_norm(queries_RxM)[:, None]


def _similarities(unit_queries_RxM: jax.Array, words_BxM: jax.Array) -> jax.Array:
    """Cosine similarities R x B of unit queries to raw words (the same ops in every search)."""
    dots_RxB = jnp.dot(unit_queries_RxM, words_BxM.T, precision=jax.lax.Precision.HIGHEST)
    return dots_RxB * _inverse_norm(words_BxM)[None, :]


def cosine_similarity(memory_NxM: jax.Array, queries_RxM: jax.Array) -> jax.Array:
    """Cosine similarity R x N of each query to each word (eps-regularised norms)."""
    return _similarities(_normalised(queries_RxM), memory_NxM)


def _check_k(k: int, num_words: int) -> None:
    """Raise unless 1 <= k <= N."""
    if not 1 <= k <= num_words:
        raise ValueError(f"k={k} must be between 1 and the number of words {num_words}")


def exact_nearest(memory_NxM: jax.Array, queries_RxM: jax.Array, k: int) -> jax.Array:
    """Indices R x K of the k most similar words by `lax.top_k` over all N similarities."""
    _check_k(k, memory_NxM.shape[0])
    _, indices_RxK = jax.lax.top_k(cosine_similarity(memory_NxM, queries_RxM), k)
    return indices_RxK.astype(jnp.int32)


def _merge(
    values_RxA: jax.Array, indices_RxA: jax.Array, values_RxC: jax.Array, indices_RxC: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The A best of two candidate lists; on equal values the first list wins."""
    values = jnp.concatenate([values_RxA, values_RxC], axis=1)
    indices = jnp.concatenate([indices_RxA, indices_RxC], axis=1)
    best_RxA, where_RxA = jax.lax.top_k(values, values_RxA.shape[1])
    return best_RxA, jnp.take_along_axis(indices, where_RxA, axis=1)


def _blocked_top_k(
    memory_NxM: jax.Array, unit_queries_RxM: jax.Array, k: int, block_size: int
) -> tuple[jax.Array, jax.Array]:
    """(similarities, indices) R x K of the k best words, scanning blocks of block_size words."""
    num_words = memory_NxM.shape[0]
    block = max(1, min(block_size, num_words))
    num_full, remainder = divmod(num_words, block)
    num_queries = unit_queries_RxM.shape[0]

    def block_candidates(words_BxM: jax.Array, start: jax.Array | int):
        values_RxC, where_RxC = jax.lax.top_k(
            _similarities(unit_queries_RxM, words_BxM), min(k, words_BxM.shape[0])
        )
        return values_RxC, where_RxC.astype(jnp.int32) + start

    def step(carry, block_index):
        start = block_index * block
        words_BxM = jax.lax.dynamic_slice_in_dim(memory_NxM, start, block, axis=0)
        return _merge(*carry, *block_candidates(words_BxM, start)), None

    # -inf candidates lose to any similarity; at least k real candidates arrive (k <= N).
    best = (
        jnp.full((num_queries, k), -jnp.inf, unit_queries_RxM.dtype),
        jnp.zeros((num_queries, k), jnp.int32),
    )
    best, _ = jax.lax.scan(step, best, jnp.arange(num_full, dtype=jnp.int32))
    if remainder:
        start = num_full * block
        best = _merge(*best, *block_candidates(memory_NxM[start:], start))
    return best


def blocked_nearest(
    memory_NxM: jax.Array, queries_RxM: jax.Array, k: int, block_size: int
) -> jax.Array:
    """Indices R x K of `exact_nearest`, computed block by block (ties: lower index first)."""
    _check_k(k, memory_NxM.shape[0])
    _, indices_RxK = _blocked_top_k(memory_NxM, _normalised(queries_RxM), k, block_size)
    return indices_RxK


def approx_nearest(
    memory_NxM: jax.Array,
    queries_RxM: jax.Array,
    k: int,
    recall_target: float = APPROX_RECALL_TARGET,
) -> jax.Array:
    """Indices R x K by `lax.approx_max_k` (approximate on TPU, exact on CPU and GPU)."""
    _check_k(k, memory_NxM.shape[0])
    similarities_RxN = cosine_similarity(memory_NxM, queries_RxM)
    _, indices_RxK = jax.lax.approx_max_k(similarities_RxN, k, recall_target=recall_target)
    return indices_RxK.astype(jnp.int32)


def _shard_map(fn, mesh: Mesh, in_specs, out_specs):
    """`jax.shard_map` without the replication check (falls back to jax.experimental)."""
    if hasattr(jax, "shard_map"):
        return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map  # JAX before jax.shard_map

    return shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def sharded_nearest(
    memory_NxM: jax.Array,
    queries_RxM: jax.Array,
    k: int,
    mesh: Mesh,
    axis_name: str,
    block_size: int = 65536,
) -> jax.Array:
    """`blocked_nearest` with the words split over mesh axis axis_name; replicated R x K result.

    Each device searches its N / devices words in blocks, the per-device (similarity, index)
    candidates are all-gathered in device order (= word order) and merged by one top-k, so ties
    still go to the lower index and the result equals `exact_nearest` (up to rounding-level ties,
    see the module docstring). N must divide evenly.
    """
    num_words = memory_NxM.shape[0]
    _check_k(k, num_words)
    num_shards = mesh.shape[axis_name]
    if num_words % num_shards:
        raise ValueError(f"{num_words} words do not split evenly over {num_shards} devices")

    def local(words_LxM: jax.Array, queries: jax.Array) -> jax.Array:
        local_words = words_LxM.shape[0]
        values_RxC, indices_RxC = _blocked_top_k(
            words_LxM, _normalised(queries), min(k, local_words), block_size
        )
        indices_RxC = indices_RxC + jax.lax.axis_index(axis_name) * local_words
        all_values_SxRxC = jax.lax.all_gather(values_RxC, axis_name)
        all_indices_SxRxC = jax.lax.all_gather(indices_RxC, axis_name)
        num_queries = queries.shape[0]
        values = jnp.moveaxis(all_values_SxRxC, 0, 1).reshape(num_queries, -1)
        indices = jnp.moveaxis(all_indices_SxRxC, 0, 1).reshape(num_queries, -1)
        _, where_RxK = jax.lax.top_k(values, k)
        return jnp.take_along_axis(indices, where_RxK, axis=1)

    return _shard_map(
        local,
        mesh,
        in_specs=(PartitionSpec(axis_name, None), PartitionSpec()),
        out_specs=PartitionSpec(),
    )(memory_NxM, queries_RxM)


def nearest_numpy(memory_NxM: np.ndarray, queries_RxM: np.ndarray, k: int) -> np.ndarray:
    """Reference: indices R x K of the k most cosine-similar words (stable: lower index first)."""
    memory_NxM = np.asarray(memory_NxM)
    queries_RxM = np.asarray(queries_RxM)
    eps = np.asarray(EPSILON, memory_NxM.dtype)
    unit_RxM = queries_RxM / np.sqrt(np.sum(queries_RxM**2, axis=-1, keepdims=True) + eps)
    similarities_RxN = (unit_RxM @ memory_NxM.T) / np.sqrt(np.sum(memory_NxM**2, axis=-1) + eps)
    return np.argsort(-similarities_RxN, axis=-1, kind="stable")[:, :k].astype(np.int32)


# ---- host index -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HostConfig:
    """Parameters of the host HNSW indices (read when an index is built)."""

    links: int = 16  # hnswlib M: graph links per node
    ef_construction: int = 64  # candidate list while inserting or updating a word
    ef_search: int = 128  # candidate list of a query (at least k is used)
    max_live_words: int = 1 << 24  # evict least recently used indices past this many words
    seed: int = 0  # hnswlib's random seed of the level draws


def _new_hnsw(word_size: int, capacity: int, config: HostConfig) -> Any:
    """An empty hnswlib cosine index with room for capacity vectors."""
    try:
        import hnswlib
    except ImportError as error:  # pragma: no cover - a declared dependency
        raise ImportError("search='host' needs hnswlib (pip install hnswlib)") from error
    index = hnswlib.Index(space="cosine", dim=word_size)
    index.init_index(
        max_elements=capacity,
        M=config.links,
        ef_construction=config.ef_construction,
        random_seed=config.seed,
    )
    return index


class _HostIndex:
    """One example's HNSW graph over its non-zero words, as the paper keeps its ANN (Sec. 3.3).

    A write inserts the word's new vector under a fresh slot (an hnswlib label) and marks its
    old slot deleted (deleted nodes still route searches but are never returned): O(log N), and
    measured 5-10x cheaper than hnswlib's in-place update of a label (which re-links the word's
    two-hop neighbourhood). The graph has 2N slots; when they run out it is rebuilt from the N
    live words (O(N log N) every N insertions, O(log N) amortised: the paper rebuilds its k-d
    trees every N insertions too).

    An all-zero word has cosine similarity 0 to every query and the same distance to every
    word: in the graph (SAM's memory starts all zero) such words make HNSW's neighbour
    selection degenerate and later words unreachable. They are kept out of the graph and
    merged into each result at similarity 0, lowest index first, as the device searches order
    them.
    """

    def __init__(self, memory_NxM: np.ndarray, config: HostConfig):
        num_words, self.word_size = memory_NxM.shape
        self.num_words = num_words
        self.config = config
        self.digest: bytes | None = None  # set on a base: version 0, never written, shared
        self.version = 0
        self.rebuilds = 0
        nonzero_N = np.any(memory_NxM != 0, axis=1)
        self._reset(np.flatnonzero(nonzero_N), memory_NxM[nonzero_N])

    def _reset(self, words_W: np.ndarray, vectors_WxM: np.ndarray) -> None:
        """A new graph holding these words, word w in slot w; other words are zero."""
        self.index = _new_hnsw(self.word_size, 2 * self.num_words, self.config)
        if words_W.size:
            self.index.add_items(
                np.ascontiguousarray(vectors_WxM, np.float32), words_W, num_threads=-1
            )
        self.slot_of_word_N = np.full(self.num_words, -1, np.int64)  # -1: a zero word
        self.slot_of_word_N[words_W] = words_W
        self.word_of_slot_S = np.full(2 * self.num_words, -1, np.int64)
        self.word_of_slot_S[words_W] = words_W
        self.next_slot = self.num_words
        self.num_live = words_W.size  # non-zero words, each in one slot of the graph
        self.zero_hint = 0  # every word below it is non-zero

    def rebuild(self) -> None:
        """Rebuild the graph from the live words (frees the slots of deleted vectors)."""
        self.rebuilds += 1
        words_W = np.flatnonzero(self.slot_of_word_N >= 0)
        vectors_WxM = np.zeros((0, self.word_size), np.float32)
        if words_W.size:  # unit vectors (hnswlib normalises): the same cosines
            vectors_WxM = np.asarray(self.index.get_items(self.slot_of_word_N[words_W]))
        self._reset(words_W, vectors_WxM)

    def fork(self) -> _HostIndex:
        """An independent copy (hnswlib copies the graph and the vectors: O(words in it))."""
        twin = copy.copy(self)
        twin.index = copy.copy(self.index)
        twin.slot_of_word_N = self.slot_of_word_N.copy()
        twin.word_of_slot_S = self.word_of_slot_S.copy()
        twin.digest = None
        return twin

    def _lowest_zero_words(self, count: int) -> np.ndarray:
        """The count lowest indices of zero words (fewer if there are fewer).

        Scans from `zero_hint`, below which every word is non-zero; SAM fills its memory in
        least-recently-used order, so the hint moves forward and a scan is O(1) amortised.
        """
        found: list[int] = []
        start, chunk = self.zero_hint, 4096
        while count > 0 and start < self.num_words and len(found) < count:
            zero = np.flatnonzero(self.slot_of_word_N[start : start + chunk] < 0)
            found.extend((start + zero[: count - len(found)]).tolist())
            start += chunk
        if count > 0:
            self.zero_hint = found[0] if found else self.num_words
        return np.asarray(found, np.int64)

    def query(self, queries_RxM: np.ndarray, k: int) -> np.ndarray:
        """Word indices R x K of the k most similar words, most similar first."""
        num_queries = queries_RxM.shape[0]
        from_graph = min(k, self.num_live)
        if not from_graph:
            return np.tile(self._lowest_zero_words(k).astype(np.int32), (num_queries, 1))
        self.index.set_ef(max(self.config.ef_search, k))
        slots, distances = self.index.knn_query(
            np.ascontiguousarray(queries_RxM, np.float32), k=from_graph, num_threads=1
        )
        words = self.word_of_slot_S[slots.astype(np.int64)]
        positive = distances < 1  # cosine distance = 1 - similarity
        if from_graph == k and positive.all():
            return words.astype(np.int32)
        result_RxK = np.empty((num_queries, k), np.int32)
        for r in range(num_queries):
            zeros = self._lowest_zero_words(k - int(positive[r].sum()))
            merged = [words[r][positive[r]], zeros, words[r][~positive[r]]]
            result_RxK[r] = np.concatenate(merged)[:k]
        return result_RxK

    def update(self, rows_J: np.ndarray, words_JxM: np.ndarray) -> None:
        """Words rows_J now hold words_JxM: insert them under fresh slots, delete the old ones."""
        rows_J, first = np.unique(np.asarray(rows_J, np.int64), return_index=True)
        if rows_J.size and (rows_J[0] < 0 or rows_J[-1] >= self.num_words):
            raise IndexError(f"rows {rows_J} out of range for {self.num_words} words")
        words_JxM = np.asarray(words_JxM)[first]
        for row in rows_J:
            old = self.slot_of_word_N[row]
            if old >= 0:
                self.index.mark_deleted(int(old))
                self.word_of_slot_S[old] = -1
                self.slot_of_word_N[row] = -1
                self.num_live -= 1
        if rows_J.size:
            self.zero_hint = min(self.zero_hint, int(rows_J[0]))
        nonzero_J = np.any(words_JxM != 0, axis=1)
        rows_J, words_JxM = rows_J[nonzero_J], words_JxM[nonzero_J]
        if self.next_slot + rows_J.size > self.word_of_slot_S.size:
            self.rebuild()
        if rows_J.size:
            slots_J = self.next_slot + np.arange(rows_J.size)
            self.index.add_items(
                np.ascontiguousarray(words_JxM, np.float32), slots_J, num_threads=1
            )
            self.slot_of_word_N[rows_J] = slots_J
            self.word_of_slot_S[slots_J] = rows_J
            self.next_slot += rows_J.size
            self.num_live += rows_J.size


_config = HostConfig()
_lock = threading.RLock()
_registry: collections.OrderedDict[int, _HostIndex] = collections.OrderedDict()  # LRU first
_bases: dict[bytes, int] = {}  # memory digest -> handle of its base index
_next_handle = 1


def configure_host(**changes: Any) -> HostConfig:
    """Change HostConfig fields for indices built from now on; returns the previous config."""
    global _config
    previous = _config
    _config = dataclasses.replace(_config, **changes)
    return previous


def host_config() -> HostConfig:
    """The HostConfig that new host indices get."""
    return _config


def live_handles() -> list[int]:
    """Handles of the live host indices, least recently used first."""
    with _lock:
        return list(_registry)


def release(states_x2: Any) -> None:
    """Free the host indices of these (..., 2) states (handle, version); unknown ones pass."""
    states_x2 = np.asarray(states_x2, np.int64)
    if states_x2.shape[-1:] != (2,):
        raise ValueError(f"states must have a last axis of 2 (handle, version): {states_x2.shape}")
    with _lock:
        for handle in states_x2[..., 0].reshape(-1).tolist():
            index = _registry.pop(handle, None)
            if index is not None and index.digest is not None:
                _bases.pop(index.digest, None)


def release_all() -> None:
    """Free every host index."""
    with _lock:
        _registry.clear()
        _bases.clear()


def host_index(handle: int) -> _HostIndex:
    """The live host index of a handle, marked as used (raises if released or evicted)."""
    with _lock:
        if handle not in _registry:
            raise KeyError(
                f"host index {handle} was released or evicted: raise "
                "HostConfig.max_live_words above (batch + 1) * N, or keep fewer states alive"
            )
        _registry.move_to_end(handle)
        return _registry[handle]


def _register(index: _HostIndex) -> int:
    """A new handle for an index; evicts least recently used indices past max_live_words."""
    global _next_handle
    with _lock:
        live_words = sum(other.num_words for other in _registry.values())
        while _registry and live_words + index.num_words > _config.max_live_words:
            _, evicted = _registry.popitem(last=False)
            live_words -= evicted.num_words
            if evicted.digest is not None:
                _bases.pop(evicted.digest, None)
        handle = _next_handle
        _next_handle = 1 if _next_handle >= np.iinfo(np.int32).max else _next_handle + 1
        _registry[handle] = index
        if index.digest is not None:
            _bases[index.digest] = handle
        return handle


def _base_handle(memory_NxM: np.ndarray) -> int:
    """The handle of the base index of this memory content, built on first sight."""
    memory_NxM = np.ascontiguousarray(memory_NxM)
    digest = f"{memory_NxM.shape}{memory_NxM.dtype}".encode()
    if memory_NxM.any():  # an all-zero memory (SAM's initial one) needs no hash
        digest += hashlib.blake2b(memory_NxM.tobytes(), digest_size=16).digest()
    with _lock:
        handle = _bases.get(digest)
        if handle is not None:
            host_index(handle)  # mark as used
            return handle
    index = _HostIndex(memory_NxM, _config)
    index.digest = digest
    return _register(index)


def _checked_index(state_2: np.ndarray) -> _HostIndex:
    """The index of a state, raising if the state's version is not the index's."""
    handle, version = (int(v) for v in state_2)
    index = host_index(handle)
    if index.version != version:
        raise RuntimeError(
            f"host index {handle} is at version {index.version} but was given a state of "
            f"version {version}: pass the state returned by the latest after_write (a stale, "
            "reused or replayed state, e.g. under jax.checkpoint, is not supported)"
        )
    return index


def _host_init(memories_xNxM: np.ndarray) -> np.ndarray:
    """Host callback of `init` over any leading batch axes: base states (handle, 0)."""
    batch_shape = memories_xNxM.shape[:-2]
    memories = np.asarray(memories_xNxM).reshape(-1, *memories_xNxM.shape[-2:])
    handles = [_base_handle(memory_NxM) for memory_NxM in memories]
    states = np.stack([np.array([handle, 0], np.int32) for handle in handles])
    return states.reshape(*batch_shape, 2)


def _host_nearest(states_x2: np.ndarray, queries_xRxM: np.ndarray, k: int) -> np.ndarray:
    """Host callback of `nearest` over any leading batch axes."""
    batch_shape = states_x2.shape[:-1]
    states = np.asarray(states_x2).reshape(-1, 2)
    queries = np.asarray(queries_xRxM).reshape(states.shape[0], *queries_xRxM.shape[-2:])
    labels = [_checked_index(state).query(q, k) for state, q in zip(states, queries, strict=True)]
    return np.stack(labels).reshape(*batch_shape, queries.shape[1], k)


def _host_update(states_x2: np.ndarray, rows_xJ: np.ndarray, words_xJxM: np.ndarray) -> np.ndarray:
    """Host callback of `after_write` over any leading batch axes; returns the new states."""
    states = np.array(states_x2, np.int32).reshape(-1, 2)
    rows = np.asarray(rows_xJ).reshape(states.shape[0], -1)
    words = np.asarray(words_xJxM).reshape(states.shape[0], rows.shape[1], -1)
    for state, rows_J, words_JxM in zip(states, rows, words, strict=True):
        index = _checked_index(state)
        if index.version == 0:  # a shared base: the example gets its own copy
            index = index.fork()
            state[0] = _register(index)
        index.update(rows_J, words_JxM)
        index.version += 1
        state[1] = index.version
    return states.reshape(states_x2.shape)


# ---- the interface --------------------------------------------------------------------------


def _check_search(spec: MemorySpec) -> str:
    """spec.search, checked against SEARCHES."""
    if spec.search not in SEARCHES:
        raise ValueError(f"search {spec.search!r} is not one of {SEARCHES}")
    return spec.search


def init(spec: MemorySpec, memory_NxM: jax.Array) -> SearchState:
    """Search state of a memory: an empty array, or (host) a new index's (handle, version)."""
    if _check_search(spec) == "host":
        return jax.pure_callback(
            _host_init,
            jax.ShapeDtypeStruct((2,), jnp.int32),
            jax.lax.stop_gradient(memory_NxM),
            vmap_method="broadcast_all",
        )
    return jnp.zeros((0,), jnp.int32)


def nearest(
    spec: MemorySpec,
    search_state: SearchState,
    memory_NxM: jax.Array,
    queries_RxM: jax.Array,
    k: int,
) -> jax.Array:
    """Indices R x K (int32) of the k words most cosine-similar to each query, best first."""
    search = _check_search(spec)
    memory_NxM = jax.lax.stop_gradient(memory_NxM)
    queries_RxM = jax.lax.stop_gradient(queries_RxM)
    if search == "exact":
        return exact_nearest(memory_NxM, queries_RxM, k)
    if search == "blocked":
        return blocked_nearest(memory_NxM, queries_RxM, k, spec.search_block)
    if search == "approx":
        return approx_nearest(memory_NxM, queries_RxM, k)
    _check_k(k, memory_NxM.shape[0])
    # Only the queries travel to the host: O(R M) per step whatever N.
    return jax.pure_callback(
        functools.partial(_host_nearest, k=k),
        jax.ShapeDtypeStruct((queries_RxM.shape[0], k), jnp.int32),
        search_state,
        queries_RxM,
        vmap_method="broadcast_all",
    )


def after_write(
    spec: MemorySpec, search_state: SearchState, rows_J: jax.Array, memory_NxM: jax.Array
) -> SearchState:
    """The state after words rows_J of the memory changed (host: those rows re-indexed)."""
    if _check_search(spec) != "host":
        return search_state
    rows_J = jnp.asarray(rows_J, jnp.int32)
    # Gather the J new words on the device: O(J M) per step travels to the host, not O(N M).
    words_JxM = jax.lax.stop_gradient(memory_NxM)[rows_J]
    return jax.pure_callback(
        _host_update,
        jax.ShapeDtypeStruct((2,), jnp.int32),
        search_state,
        rows_J,
        words_JxM,
        vmap_method="broadcast_all",
    )
