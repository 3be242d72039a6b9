"""The DNC (Graves et al. 2016) and the sparse DNC of Rae et al. 2016 (SAM, arXiv 1610.09027).

DNC, "Hybrid computing using a neural network with dynamic external memory" (Nature 538),
Methods, one write head and R read heads over N words of size M; dense, O(N^2) per step:

* content weighting C(M, k, beta)[i] = softmax_i(beta cos(k, M[i])) (cosine with the
  eps-regularised norms of deepgen.sam.memory.cosine_similarity);
* retention psi_t = prod_h (1 - f^h_t w^{r,h}_{t-1}); usage
  u_t = (u_{t-1} + w^w_{t-1} - u_{t-1} * w^w_{t-1}) * psi_t;
* allocation: phi_t = the indices of u_t in ascending order (a stable sort: equal usages in
  index order), a_t[phi_t[j]] = (1 - u_t[phi_t[j]]) prod_{i<j} u_t[phi_t[i]];
* write weighting w^w_t = g^w (g^a a_t + (1 - g^a) C(M_{t-1}, k^w, beta^w));
* memory M_t = M_{t-1} * (1 - w^w_t e^T) + w^w_t v^T;
* links L_t[i, j] = (1 - w^w_t[i] - w^w_t[j]) L_{t-1}[i, j] + w^w_t[i] p_{t-1}[j], L_t[i, i] = 0
  (L[i, j]: word i was written after word j); precedence p_t = (1 - sum_i w^w_t[i]) p_{t-1} + w^w_t;
* forward f^h_t = L_t w^{r,h}_{t-1}, backward b^h_t = L_t^T w^{r,h}_{t-1}, content
  c^h_t = C(M_t, k^{r,h}, beta^{r,h}); read weights w^{r,h}_t = pi^h[0] b + pi^h[1] c + pi^h[2] f;
  reads r^h_t = M_t^T w^{r,h}_t.

SDNC (SAM Sec. 3.5 and Supp. B, Eqs. 17-22). The text of Supp. B could not be read here; what
follows is reconstructed from a summary of the paper (sparse forward and backward link matrices
N_t, P_t stored as N x K_L, K_L = 8, no gradient through the link matrices) and from the DNC
equations above. Marked [recalled] where it depends on my
recall of the paper and [ours] where it is our choice:

* read and write are SAM's (deepgen.sam.memory): w^W_t = alpha (gamma w^R_{t-1} + (1 - gamma)
  I^U_t) with the LRA word I^U_t from the usage ring U^(2) erased first, w^R_{t-1} the mean over
  heads of the previous read weights (as SAM in memory.py [ours]); the content weights c~ are
  the softmax over the K nearest words by cosine similarity;
* the links are the DNC's update applied to the sparse write weights and a sparse precedence,
  then truncated [recalled: "K_L largest per row and column"]: an entry of the candidate
  matrix C_t[i, j] = (1 - w^W_t[i] - w^W_t[j]) L_{t-1}[i, j] + w^W_t[i] p_{t-1}[j] (i != j)
  survives iff it is positive and among the K_L largest of its row AND among the K_L largest
  of its column (ties: the lower index) [ours: the exact rule]; it is computed as
  (1 - (w[i] + w[j])) L + w[i] p[j], so both storages round alike. With K_L = N nothing is
  truncated and L_t is the DNC's. The precedence p_t = (1 - sum w^W_t) p_{t-1} + w^W_t keeps
  its K_L largest entries [recalled];
* the forward matrix N_t = L_t and backward P_t = L_t^T give f = N_t w^R_{t-1} and
  b = P_t w^R_{t-1} [recalled: Eqs. 20-21 in spirit]; each keeps its K largest entries
  [ours: the paper's sparsification of f and b is not checked], so w^R_t =
  pi[0] b~ + pi[1] c~ + pi[2] f~ has at most 3K non-zeros per head [ours];
* the link values and the precedence carry no gradient (stop_gradient) [paper, Sec. 3.5];
  gradients do flow through w^R_{t-1} into f and b and through the gathered memory rows.

Sparse link storage [ours]: the same entry set twice, as fixed-size arrays, O(N K_L) memory:
`SparseLinks.indices_2xNxL[PRED, i]` lists word i's predecessors j (row i of L) and
`[SUCC, j]` word j's successors i (row j of L^T), with the values L[i, j] in `values_2xNxL`; an
empty slot holds index N and value 0. A step's link work touches only the rows and columns of
the K_L precedence words and the J = 3RK + 1 written words, found through the two storages.
Each word's new entries are merged into its old slots (O(K_L P), P its partners), and each
block of candidates is sized by what can be non-zero: the K_L precedence partners of each row
of L, the J written partners of the K_L precedence columns, the old slots alone of the other
columns. Ranking is by all-pairs comparisons within a group (O(G K_L^2 + K_L (K_L + J)^2)), the
row-and-column check by comparisons against the G = K_L + J groups (O(G^2 K_L + K_L J G)), no
sorts, independent of N (`sparse_link_update`). f and b sort each head's 3K K_L candidates by
index, sum equal ones and take `lax.top_k` (O(R K K_L log(K K_L))). `benchmarks/sdnc_step.py`
measures the memory core's forward pass: on one core of a 2-core CPU, about 0.6 ms per step
and sequence at N = 128 and N = 1024 alike (SAM's 0.02 ms; the dense DNC's 0.1 and 4 ms), far
from the paper's roughly 100 us per step with K_L = 8.

What tests/sam/test_dnc.py checks: the DNC (allocation with tied usages, usage, links,
precedence, directional weights, whole steps) against a numpy transcription of the Methods
equations; the SDNC's links and precedence against the dense DNC update followed by the
row-and-column top-K_L rule above (and, with K = K_L = N, against the untruncated DNC links,
precedence and read weights); f and b against dense L w and L^T w kept to their top K; the
gradients of both cores against central differences (the SDNC's with the link values held
fixed, which is what stop_gradient differentiates); vmap and scan against a Python loop. That
the rule above is the paper's Eqs. 17-22 is not checked.

Each step takes one example's raw interface vector; the layouts are in `dnc_interface` and
`sdnc_interface`. Both cores work under jit, vmap, lax.scan and grad.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from deepgen.sam import memory, search
from deepgen.sam.interface import MemoryCore, MemorySpec

NUM_MODES = 3  # read modes: backward, content, forward (Graves et al. 2016)


def _oneplus(x: jax.Array) -> jax.Array:
    """oneplus(x) = 1 + log(1 + e^x), the DNC's strength activation."""
    return 1 + jax.nn.softplus(x)


# ---------------------------------------------------------------------------------------------
# DNC (dense).


class DncInterface(NamedTuple):
    """The DNC interface after activation (Graves et al. 2016, Methods)."""

    read_keys_RxM: jax.Array  # k^r, raw
    read_strengths_R: jax.Array  # beta^r, oneplus
    write_key_M: jax.Array  # k^w, raw
    write_strength: jax.Array  # beta^w, oneplus
    erase_M: jax.Array  # e, sigmoid
    write_vector_M: jax.Array  # v, raw
    free_gates_R: jax.Array  # f, sigmoid
    allocation_gate: jax.Array  # g^a, sigmoid
    write_gate: jax.Array  # g^w, sigmoid
    read_modes_Rx3: jax.Array  # pi, softmax over (backward, content, forward)


def dnc_interface_size(spec: MemorySpec) -> int:
    """R*M + 3M + 5R + 3."""
    R, M = spec.num_heads, spec.word_size
    return R * M + 3 * M + 5 * R + 3


def _checked(spec: MemorySpec, interface_I: jax.Array, size: int) -> jax.Array:
    """The interface cast to the memory dtype, after a shape check."""
    if interface_I.shape != (size,):
        raise ValueError(f"interface of shape {interface_I.shape}, expected ({size},)")
    return interface_I.astype(memory.memory_dtype(spec))


def dnc_interface(spec: MemorySpec, interface_I: jax.Array) -> DncInterface:
    """Split and activate [k^r (R*M, head-major) | beta^r (R) | k^w (M) | beta^w | e (M) |
    v (M) | f (R) | g^a | g^w | pi (3R, head-major: b, c, f per head)]."""
    R, M = spec.num_heads, spec.word_size
    x = _checked(spec, interface_I, dnc_interface_size(spec))
    sizes = (R * M, R, M, 1, M, M, R, 1, 1, NUM_MODES * R)
    starts = [sum(sizes[:n]) for n in range(len(sizes))]
    k_r, beta_r, k_w, beta_w, e, v, f, g_a, g_w, pi = (
        x[s : s + n] for s, n in zip(starts, sizes, strict=True)
    )
    return DncInterface(
        read_keys_RxM=k_r.reshape(R, M),
        read_strengths_R=_oneplus(beta_r),
        write_key_M=k_w,
        write_strength=_oneplus(beta_w[0]),
        erase_M=jax.nn.sigmoid(e),
        write_vector_M=v,
        free_gates_R=jax.nn.sigmoid(f),
        allocation_gate=jax.nn.sigmoid(g_a[0]),
        write_gate=jax.nn.sigmoid(g_w[0]),
        read_modes_Rx3=jax.nn.softmax(pi.reshape(R, NUM_MODES), axis=-1),
    )


class DncState(NamedTuple):
    """One example's DNC memory and the previous step's weightings."""

    memory_NxM: jax.Array
    usage_N: jax.Array  # u_{t-1}
    write_weights_N: jax.Array  # w^w_{t-1}
    precedence_N: jax.Array  # p_{t-1}
    links_NxN: jax.Array  # L_{t-1}
    read_weights_RxN: jax.Array  # w^r_{t-1}


def dnc_init(spec: MemorySpec) -> DncState:
    """Zero memory, usage, weightings, precedence and links."""
    dtype = memory.memory_dtype(spec)
    N, M, R = spec.num_words, spec.word_size, spec.num_heads
    return DncState(
        memory_NxM=jnp.zeros((N, M), dtype),
        usage_N=jnp.zeros((N,), dtype),
        write_weights_N=jnp.zeros((N,), dtype),
        precedence_N=jnp.zeros((N,), dtype),
        links_NxN=jnp.zeros((N, N), dtype),
        read_weights_RxN=jnp.zeros((R, N), dtype),
    )


def content_weights(
    keys_HxM: jax.Array, strengths_H: jax.Array, memory_NxM: jax.Array
) -> jax.Array:
    """C(M, k, beta) = softmax_i(beta cos(k, M[i])) per key, HxN."""
    similarity_HxN = memory.cosine_similarity(keys_HxM, memory_NxM)
    return jax.nn.softmax(strengths_H[:, None] * similarity_HxN, axis=-1)


def usage_update(
    usage_N: jax.Array,
    write_weights_N: jax.Array,
    free_gates_R: jax.Array,
    read_weights_RxN: jax.Array,
) -> jax.Array:
    """u_t = (u + w^w - u w^w) psi with psi = prod_h (1 - f_h w^{r,h}), all of step t-1."""
    retention_N = jnp.prod(1 - free_gates_R[:, None] * read_weights_RxN, axis=0)
    return (usage_N + write_weights_N - usage_N * write_weights_N) * retention_N


def allocation_weights(usage_N: jax.Array) -> jax.Array:
    """a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i], phi the stable ascending sort of u."""
    order_N = jnp.argsort(lax.stop_gradient(usage_N), stable=True)
    sorted_N = usage_N[order_N]
    before_N = jnp.concatenate([jnp.ones((1,), usage_N.dtype), jnp.cumprod(sorted_N)[:-1]])
    return jnp.zeros_like(usage_N).at[order_N].set((1 - sorted_N) * before_N)


def precedence_update(precedence_N: jax.Array, write_weights_N: jax.Array) -> jax.Array:
    """p_t = (1 - sum_i w^w_t[i]) p_{t-1} + w^w_t."""
    return (1 - jnp.sum(write_weights_N)) * precedence_N + write_weights_N


def link_update(
    links_NxN: jax.Array, precedence_N: jax.Array, write_weights_N: jax.Array
) -> jax.Array:
    """L_t[i, j] = (1 - w[i] - w[j]) L_{t-1}[i, j] + w[i] p_{t-1}[j], zero diagonal."""
    w_N = write_weights_N
    links_NxN = (1 - w_N[:, None] - w_N[None, :]) * links_NxN + w_N[:, None] * precedence_N[None, :]
    return links_NxN * (1 - jnp.eye(links_NxN.shape[0], dtype=links_NxN.dtype))


def directional_weights(
    links_NxN: jax.Array, read_weights_RxN: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(forward f = L w, backward b = L^T w) for each head's previous read weights, RxN each."""
    return read_weights_RxN @ links_NxN.T, read_weights_RxN @ links_NxN


def dnc_step(
    spec: MemorySpec, state: DncState, interface_I: jax.Array
) -> tuple[DncState, jax.Array]:
    """Usage and allocation, write, links, then read the written memory (Graves et al. 2016).

    Interface layout (dnc_interface), size R*M + 3M + 5R + 3: [read keys: R*M head-major |
    read strengths: R (oneplus) | write key: M | write strength: 1 (oneplus) | erase: M
    (sigmoid) | write vector: M | free gates: R (sigmoid) | allocation gate: 1 (sigmoid) |
    write gate: 1 (sigmoid) | read modes: 3R (softmax per head over backward, content,
    forward)].
    """
    parts = dnc_interface(spec, interface_I)
    usage_N = usage_update(
        state.usage_N, state.write_weights_N, parts.free_gates_R, state.read_weights_RxN
    )
    write_content_N = content_weights(
        parts.write_key_M[None], parts.write_strength[None], state.memory_NxM
    )[0]
    write_weights_N = parts.write_gate * (
        parts.allocation_gate * allocation_weights(usage_N)
        + (1 - parts.allocation_gate) * write_content_N
    )
    memory_NxM = state.memory_NxM * (1 - write_weights_N[:, None] * parts.erase_M[None, :])
    memory_NxM = memory_NxM + write_weights_N[:, None] * parts.write_vector_M[None, :]
    links_NxN = link_update(state.links_NxN, state.precedence_N, write_weights_N)
    precedence_N = precedence_update(state.precedence_N, write_weights_N)
    forward_RxN, backward_RxN = directional_weights(links_NxN, state.read_weights_RxN)
    read_content_RxN = content_weights(parts.read_keys_RxM, parts.read_strengths_R, memory_NxM)
    modes_Rx3 = parts.read_modes_Rx3
    read_weights_RxN = (
        modes_Rx3[:, 0:1] * backward_RxN
        + modes_Rx3[:, 1:2] * read_content_RxN
        + modes_Rx3[:, 2:3] * forward_RxN
    )
    reads_RxM = read_weights_RxN @ memory_NxM
    new_state = DncState(
        memory_NxM, usage_N, write_weights_N, precedence_N, links_NxN, read_weights_RxN
    )
    return new_state, reads_RxM


# The step is rematerialised in the backward pass: reverse mode then keeps only the carry per
# step (its N x N links among it) instead of four more N x N residuals, which made the dense
# DNC's backward pass 8x its forward on the CPU; remat makes the train step 1.5x faster
# (copy_cpu's sizes, batch 16, one core).
DNC = MemoryCore(
    interface_size=dnc_interface_size,
    init=dnc_init,
    step=jax.checkpoint(dnc_step, static_argnums=(0,)),
)


# ---------------------------------------------------------------------------------------------
# Sparse building blocks: fixed-size index lists with sentinel N for an empty slot.


def _combine(
    indices_C: jax.Array, values_C: jax.Array, sentinel: int
) -> tuple[jax.Array, jax.Array]:
    """Sum the values of equal indices into their first slot; the other slots become (sentinel, 0)."""
    same_CxC = indices_C[:, None] == indices_C[None, :]
    positions_C = jnp.arange(indices_C.shape[0])
    earlier_C = jnp.any(same_CxC & (positions_C[None, :] < positions_C[:, None]), axis=1)
    first_C = ~earlier_C & (indices_C != sentinel)
    sums_C = jnp.sum(jnp.where(same_CxC, values_C[None, :], 0), axis=1)
    return jnp.where(first_C, indices_C, sentinel), jnp.where(first_C, sums_C, 0)


def _rank(indices_C: jax.Array, values_C: jax.Array, valid_C: jax.Array) -> jax.Array:
    """Each entry's rank among the valid ones: larger value first, ties to the lower index."""
    ahead_CxC = (values_C[None, :] > values_C[:, None]) | (
        (values_C[None, :] == values_C[:, None]) & (indices_C[None, :] < indices_C[:, None])
    )
    return jnp.sum(ahead_CxC & valid_C[None, :], axis=1)


def _top_mask(indices_C: jax.Array, values_C: jax.Array, valid_C: jax.Array, k: int) -> jax.Array:
    """True at the k largest valid entries (distinct indices; ties to the lower index)."""
    return valid_C & (_rank(indices_C, values_C, valid_C) < k)


def _lookup(keys: jax.Array, table_T: jax.Array, values_T: jax.Array) -> jax.Array:
    """The value of each key in a table of unique indices (0 when absent)."""
    return jnp.sum(jnp.where(keys[..., None] == table_T, values_T, 0), axis=-1)


def _position(keys: jax.Array, table_T: jax.Array, sentinel: int) -> tuple[jax.Array, jax.Array]:
    """(position of each key in the table, whether found); sentinel keys are never found.

    The table's non-sentinel entries are unique, so a found key matches once and its position
    is a sum (an argmax's variadic reduce is several times slower on the CPU); the position of
    a key not found is 0.
    """
    same = (keys[..., None] == table_T) & (keys != sentinel)[..., None]
    position = jnp.sum(jnp.where(same, jnp.arange(table_T.shape[-1], dtype=jnp.int32), 0), -1)
    return position, jnp.any(same, axis=-1)


def _compact(
    indices_C: jax.Array, values_C: jax.Array, keep_C: jax.Array, k: int, sentinel: int
) -> tuple[jax.Array, jax.Array]:
    """The k largest kept entries (distinct indices), largest first, padded with (sentinel, 0)."""
    rank_C = _rank(indices_C, values_C, keep_C)
    slot_C = jnp.where(keep_C & (rank_C < k), rank_C, k)
    out_indices_k = jnp.full((k,), sentinel, indices_C.dtype).at[slot_C].set(indices_C, mode="drop")
    out_values_k = jnp.zeros((k,), values_C.dtype).at[slot_C].set(values_C, mode="drop")
    return out_indices_k, out_values_k


PRED, SUCC = 0, 1  # the two storages of SparseLinks: rows of L and rows of L^T


class SparseLinks(NamedTuple):
    """The SDNC's temporal links L (N x N, at most K_L entries per row and column), stored twice.

    [PRED, i] lists the words j written before i with L[i, j] (row i of L); [SUCC, j] the words
    i written after j with L[i, j] (row j of L^T). Same entries and values; empty slot (N, 0).
    """

    indices_2xNxL: jax.Array  # int32
    values_2xNxL: jax.Array


class SparsePrecedence(NamedTuple):
    """The sparse precedence p (its K_L largest entries); empty slot (N, 0)."""

    indices_L: jax.Array
    values_L: jax.Array


def sparse_links_init(num_words: int, num_links: int, dtype: Any) -> SparseLinks:
    """No links: every slot empty."""
    return SparseLinks(
        jnp.full((2, num_words, num_links), num_words, jnp.int32),
        jnp.zeros((2, num_words, num_links), dtype),
    )


def sparse_precedence_init(num_words: int, num_links: int, dtype: Any) -> SparsePrecedence:
    """p_0 = 0: every slot empty."""
    return SparsePrecedence(
        jnp.full((num_links,), num_words, jnp.int32), jnp.zeros((num_links,), dtype)
    )


def densify_links(links: SparseLinks) -> tuple[jax.Array, jax.Array]:
    """(L from the PRED rows, L from the SUCC rows), NxN each: O(N^2), for tests only."""
    _, N, _ = links.indices_2xNxL.shape
    rows_NxL = jnp.broadcast_to(jnp.arange(N)[:, None], links.indices_2xNxL.shape[1:])
    zeros_NxN = jnp.zeros((N, N), links.values_2xNxL.dtype)
    indices, values = links.indices_2xNxL, links.values_2xNxL
    from_pred = zeros_NxN.at[rows_NxL, indices[PRED]].add(values[PRED], mode="drop")
    from_succ = zeros_NxN.at[indices[SUCC], rows_NxL].add(values[SUCC], mode="drop")
    return from_pred, from_succ


def sparse_precedence_update(
    precedence: SparsePrecedence,
    write_indices_J: jax.Array,
    write_weights_J: jax.Array,
    *,
    num_words: int,
) -> SparsePrecedence:
    """p_t = (1 - sum w^W) p_{t-1} + w^W, keeping its K_L largest positive entries."""
    (num_links,) = precedence.indices_L.shape
    indices_C, values_C = _combine(
        jnp.concatenate([precedence.indices_L, write_indices_J.astype(jnp.int32)]),
        jnp.concatenate([(1 - jnp.sum(write_weights_J)) * precedence.values_L, write_weights_J]),
        num_words,
    )
    keep_C = (values_C > 0) & (indices_C != num_words)
    return SparsePrecedence(*_compact(indices_C, values_C, keep_C, num_links, num_words))


def _merge_new(
    old_idx_gxL: jax.Array,
    old_val_gxL: jax.Array,
    new_idx_gxP: jax.Array,
    new_val_gxP: jax.Array,
    sentinel: int,
) -> tuple[jax.Array, jax.Array]:
    """Each group's candidates: old slots plus new entries, a new entry added into its old slot.

    Within a group the old indices are distinct and so are the new ones, so an index occurs at
    most twice and its value is old + new, rounded as one addition. O(L P) per group.
    """
    match_gxLxP = (old_idx_gxL[:, :, None] == new_idx_gxP[:, None, :]) & (
        new_idx_gxP[:, None, :] != sentinel
    )
    merged_val_gxL = old_val_gxL + jnp.sum(jnp.where(match_gxLxP, new_val_gxP[:, None, :], 0), -1)
    absorbed_gxP = jnp.any(match_gxLxP, axis=1)
    return (
        jnp.concatenate([old_idx_gxL, jnp.where(absorbed_gxP, sentinel, new_idx_gxP)], axis=-1),
        jnp.concatenate([merged_val_gxL, jnp.where(absorbed_gxP, 0, new_val_gxP)], axis=-1),
    )


def sparse_link_update(
    links: SparseLinks,
    precedence: SparsePrecedence,
    write_indices_J: jax.Array,
    write_weights_J: jax.Array,
) -> SparseLinks:
    """The DNC's link update on sparse links, truncated to K_L entries per row and column.

    Candidate C[i, j] = (1 - w[i] - w[j]) L[i, j] + w[i] p[j] (i != j, w the write weights with
    duplicate indices summed, p = p_{t-1}); an entry survives iff it is positive and among the
    K_L largest of its row and of its column (ties: lower index). Only the rows and columns of
    the G = K_L + J words U = (precedence words) + (written words) change. Storage PRED holds
    the rows of L: row u gains w[u] p[j] for the K_L precedence words j. Storage SUCC holds the
    columns: column u gains p[u] w[i] for the J written words i, which is non-zero only for
    the K_L precedence words u; the other columns only decay. Each group u is rebuilt from its
    old slots plus its new entries, an entry kept iff it passes its own group's top-K_L and,
    when its partner x is in U too, x's group's in the other storage; the other storage's row
    x (x not in U) has its slot for u updated in place. Work O(G K_L (K_L + G) + K_L J (K_L + J)),
    independent of N.
    """
    _, N, L = links.indices_2xNxL.shape
    sentinel = N
    written_J, w_J = _combine(write_indices_J.astype(jnp.int32), write_weights_J, sentinel)
    prec_L, p_L = precedence
    _, written_in_prec_J = _position(written_J, prec_L, sentinel)
    # Groups: the precedence words first (the only columns with new entries), then the rest.
    groups_G = jnp.concatenate([prec_L, jnp.where(written_in_prec_J, sentinel, written_J)])
    w_G = _lookup(groups_G, written_J, w_J)
    old_idx_2xGxL = links.indices_2xNxL.at[:, groups_G].get(mode="fill", fill_value=sentinel)
    old_val_2xGxL = links.values_2xNxL.at[:, groups_G].get(mode="fill", fill_value=0)
    # 1 - (w[i] + w[j]): the same rounding in both storages (the sum commutes exactly).
    old_w_2xGxL = _lookup(old_idx_2xGxL, written_J, w_J)
    decayed_2xGxL = (1 - (w_G[None, :, None] + old_w_2xGxL)) * old_val_2xGxL

    def new_entries(group_ids_g, group_x_g, partners_P, partner_y_P):
        """New entries x(u) y(partner) of groups u, self-links and zeros left empty."""
        val_gxP = group_x_g[:, None] * partner_y_P[None, :]
        empty_gxP = (partners_P[None, :] == group_ids_g[:, None]) | (val_gxP == 0)
        idx_gxP = jnp.where(empty_gxP, sentinel, partners_P[None, :])
        return idx_gxP, jnp.where(empty_gxP, 0, val_gxP)

    # Blocks (storage, first group, candidates): PRED over all G groups with the K_L
    # precedence partners; SUCC over the K_L precedence groups with the J written partners;
    # SUCC over the other J groups with their old slots only.
    pred = _merge_new(
        old_idx_2xGxL[PRED], decayed_2xGxL[PRED], *new_entries(groups_G, w_G, prec_L, p_L), sentinel
    )
    succ_prec = _merge_new(
        old_idx_2xGxL[SUCC, :L],
        decayed_2xGxL[SUCC, :L],
        *new_entries(prec_L, p_L, written_J, w_J),
        sentinel,
    )
    succ_rest = (old_idx_2xGxL[SUCC, L:], decayed_2xGxL[SUCC, L:])
    blocks = [(PRED, 0, *pred), (SUCC, 0, *succ_prec), (SUCC, L, *succ_rest)]

    top = jax.vmap(lambda i, v, m: _top_mask(i, v, m, L))
    keeps = [top(idx, val, (val > 0) & (idx != sentinel)) for _, _, idx, val in blocks]
    # kept_2xGxG[d, g, h]: group g of storage d keeps an entry whose partner is group h.
    kept_rows = [
        jnp.any((idx_gxA[:, :, None] == groups_G[None, None, :]) & keep_gxA[:, :, None], axis=1)
        for (_, _, idx_gxA, _), keep_gxA in zip(blocks, keeps, strict=True)
    ]
    kept_2xGxG = jnp.stack([kept_rows[0], jnp.concatenate(kept_rows[1:])])

    at_parts, index_parts, value_parts = [], [], []
    compact = jax.vmap(lambda i, v, m: _compact(i, v, m, L, sentinel))
    for (d, first, idx_gxA, val_gxA), keep_gxA in zip(blocks, keeps, strict=True):
        g = idx_gxA.shape[0]
        group_g = groups_G[first : first + g]
        # An entry whose partner x is also a group must survive x's group in the other storage.
        other_of_gxA, partner_in_groups_gxA = _position(idx_gxA, groups_G, sentinel)
        kept_there_gxA = kept_2xGxG[1 - d, other_of_gxA, first + jnp.arange(g)[:, None]]
        final_gxA = keep_gxA & (~partner_in_groups_gxA | kept_there_gxA)
        # Rebuilt rows: storage d, row u.
        rebuilt_idx_gxL, rebuilt_val_gxL = compact(idx_gxA, val_gxA, final_gxA)
        at_parts.append((jnp.full((g * L,), d), jnp.repeat(group_g, L), jnp.tile(jnp.arange(L), g)))
        index_parts.append(rebuilt_idx_gxL.reshape(-1))
        value_parts.append(rebuilt_val_gxL.reshape(-1))
        # In-place slots: storage 1 - d, row x (partner not in U), the slot holding u.
        other_rows_gxAxL = (
            links.indices_2xNxL[1 - d].at[idx_gxA].get(mode="fill", fill_value=sentinel)
        )
        group_gxA = jnp.broadcast_to(group_g[:, None], idx_gxA.shape)
        slot_gxA, found_gxA = _position(group_gxA, other_rows_gxAxL, sentinel)
        in_place_gxA = found_gxA & ~partner_in_groups_gxA & (idx_gxA != sentinel)
        at_parts.append(
            (
                jnp.full((idx_gxA.size,), 1 - d),
                jnp.where(in_place_gxA, idx_gxA, N).reshape(-1),
                slot_gxA.reshape(-1),
            )
        )
        index_parts.append(jnp.where(final_gxA, group_gxA, sentinel).reshape(-1))
        value_parts.append(jnp.where(final_gxA, val_gxA, 0).reshape(-1))
    at = tuple(jnp.concatenate(column) for column in zip(*at_parts, strict=True))
    return SparseLinks(
        links.indices_2xNxL.at[at].set(jnp.concatenate(index_parts), mode="drop"),
        links.values_2xNxL.at[at].set(jnp.concatenate(value_parts), mode="drop"),
    )


def sparse_temporal_update(
    links: SparseLinks,
    precedence: SparsePrecedence,
    write_indices_J: jax.Array,
    write_weights_J: jax.Array,
) -> tuple[SparseLinks, SparsePrecedence]:
    """(L_t, p_t) from (L_{t-1}, p_{t-1}) and the sparse write weights, without gradients."""
    links, precedence, write_indices_J, write_weights_J = lax.stop_gradient(
        (links, precedence, write_indices_J, write_weights_J)
    )
    num_words = links.indices_2xNxL.shape[1]
    return (
        sparse_link_update(links, precedence, write_indices_J, write_weights_J),
        sparse_precedence_update(precedence, write_indices_J, write_weights_J, num_words=num_words),
    )


def _sum_duplicates_top_k(
    indices_D: jax.Array, values_D: jax.Array, k: int, sentinel: int
) -> tuple[jax.Array, jax.Array]:
    """The k largest positive sums of equal indices, largest first (ties: lower index); O(D log D).

    Sorted by index, equal indices form runs summed by a scatter-add; top_k then breaks ties
    by position, which is index order. Empty slots are (sentinel, 0).
    """
    sorted_idx_D, sorted_val_D = lax.sort((indices_D, values_D), num_keys=1)
    run_start_D = jnp.concatenate([jnp.ones((1,), bool), sorted_idx_D[1:] != sorted_idx_D[:-1]])
    run_D = jnp.cumsum(run_start_D) - 1
    sums_D = jnp.zeros_like(sorted_val_D).at[run_D].add(sorted_val_D)
    run_idx_D = jnp.full_like(sorted_idx_D, sentinel).at[run_D].set(sorted_idx_D)
    valid_D = (sums_D > 0) & (run_idx_D != sentinel)
    top_val_k, top_pos_k = lax.top_k(jnp.where(valid_D, sums_D, -jnp.inf), k)
    found_k = top_val_k > -jnp.inf
    return jnp.where(found_k, run_idx_D[top_pos_k], sentinel), jnp.where(found_k, top_val_k, 0)


def sparse_directional_weights(
    links: SparseLinks, read_indices_RxC: jax.Array, read_weights_RxC: jax.Array, k: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The K largest entries of f = L w and b = L^T w per head: (f indices, f, b indices, b).

    w are the previous sparse read weights (duplicate indices add); O(R C K_L log(C K_L)) work.
    Gradients flow to read_weights_RxC, not to the link values; empty slots are (N, 0).
    """
    _, N, _ = links.indices_2xNxL.shape
    R = read_indices_RxC.shape[0]
    idx_2xRxCxL = links.indices_2xNxL.at[:, read_indices_RxC].get(mode="fill", fill_value=N)
    val_2xRxCxL = (
        lax.stop_gradient(links.values_2xNxL).at[:, read_indices_RxC].get(mode="fill", fill_value=0)
    )
    contrib_2xRxCxL = val_2xRxCxL * read_weights_RxC[None, :, :, None]
    idx_XxK, val_XxK = jax.vmap(lambda i, v: _sum_duplicates_top_k(i, v, k, N))(
        idx_2xRxCxL.reshape(2 * R, -1), contrib_2xRxCxL.reshape(2 * R, -1)
    )
    idx_2xRxK, val_2xRxK = idx_XxK.reshape(2, R, k), val_XxK.reshape(2, R, k)
    return idx_2xRxK[SUCC], val_2xRxK[SUCC], idx_2xRxK[PRED], val_2xRxK[PRED]


# ---------------------------------------------------------------------------------------------
# SDNC.


class SdncInterface(NamedTuple):
    """The SDNC interface after activation: SAM's (Sec. 3.1) plus the DNC's read modes."""

    queries_RxM: jax.Array  # q, raw
    strengths_R: jax.Array  # beta, softplus (as SAM in memory.py)
    write_word_M: jax.Array  # a, raw
    write_gate: jax.Array  # alpha, sigmoid
    interpolation_gate: jax.Array  # gamma, sigmoid
    read_modes_Rx3: jax.Array  # pi, softmax over (backward, content, forward)


def sdnc_interface_size(spec: MemorySpec) -> int:
    """SAM's R*M + R + M + 2, plus 3R read modes."""
    return memory.sam_interface_size(spec) + NUM_MODES * spec.num_heads


def sdnc_interface(spec: MemorySpec, interface_I: jax.Array) -> SdncInterface:
    """Split and activate [q (R*M, head-major) | beta (R) | a (M) | alpha | gamma | pi (3R,
    head-major: b, c, f per head)]."""
    x = _checked(spec, interface_I, sdnc_interface_size(spec))
    sam_size = memory.sam_interface_size(spec)
    sam = memory.sam_interface(spec, x[:sam_size])
    modes_Rx3 = jax.nn.softmax(x[sam_size:].reshape(spec.num_heads, NUM_MODES), axis=-1)
    return SdncInterface(*sam, read_modes_Rx3=modes_Rx3)


class SdncState(NamedTuple):
    """One example's SDNC memory: SAM's state with 3K read slots per head, links and precedence."""

    memory_NxM: jax.Array
    read_indices_RxC: jax.Array  # int32, C = 3K slots: backward K, content K, forward K
    read_weights_RxC: jax.Array  # w^R_{t-1} (zero in unused slots, whose index is 0)
    ring: memory.UsageRing
    search: Any  # deepgen.sam.search's state for spec.search
    links: SparseLinks
    precedence: SparsePrecedence


LinkRule = Callable[
    [SparseLinks, SparsePrecedence, jax.Array, jax.Array], tuple[SparseLinks, SparsePrecedence]
]


def _check_sdnc_spec(spec: MemorySpec) -> None:
    if not 1 <= spec.num_reads <= spec.num_words:
        raise ValueError(f"num_reads K={spec.num_reads} must be in [1, num_words={spec.num_words}]")
    if not 1 <= spec.num_links <= spec.num_words:
        raise ValueError(
            f"num_links K_L={spec.num_links} must be in [1, num_words={spec.num_words}]"
        )


def sdnc_init(spec: MemorySpec) -> SdncState:
    """Zero memory and read weights, ring 0..N-1, no links, zero precedence."""
    _check_sdnc_spec(spec)
    dtype = memory.memory_dtype(spec)
    N, R, C = spec.num_words, spec.num_heads, NUM_MODES * spec.num_reads
    memory_NxM = jnp.zeros((N, spec.word_size), dtype)
    return SdncState(
        memory_NxM=memory_NxM,
        read_indices_RxC=jnp.zeros((R, C), jnp.int32),
        read_weights_RxC=jnp.zeros((R, C), dtype),
        ring=memory.ring_init(N),
        search=search.init(spec, memory_NxM),
        links=sparse_links_init(N, spec.num_links, dtype),
        precedence=sparse_precedence_init(N, spec.num_links, dtype),
    )


def sdnc_step(
    spec: MemorySpec,
    state: SdncState,
    interface_I: jax.Array,
    *,
    link_rule: LinkRule = sparse_temporal_update,
) -> tuple[SdncState, jax.Array]:
    """SAM's write, the sparse link update, then the mixed sparse read of the written memory.

    Interface layout (sdnc_interface), size R*M + R + M + 2 + 3R: [queries: R*M head-major |
    strengths: R (softplus) | write word: M | write gate alpha: 1 (sigmoid) | interpolation
    gate gamma: 1 (sigmoid) | read modes: 3R (softmax per head over backward, content,
    forward)]. Order: w^W_t from w^R_{t-1} and the LRA word (Eq. 5), the write (Eq. 8), the
    links and precedence (`link_rule`, sparse_temporal_update; tests pass a frozen rule),
    f and b from L_t and w^R_{t-1}, the K nearest words of each query in M_t, w^R_t, the reads,
    then the usage ring touched by w^W_t and w^R_t (U^(2), delta = spec.usage_delta).
    """
    _check_sdnc_spec(spec)
    parts = sdnc_interface(spec, interface_I)
    N, R, K = spec.num_words, spec.num_heads, spec.num_reads
    lra_index = memory.ring_lra(state.ring)
    previous_J = parts.write_gate * parts.interpolation_gate * state.read_weights_RxC.reshape(-1)
    write_indices_J = jnp.concatenate([state.read_indices_RxC.reshape(-1), lra_index[None]])
    write_weights_J = jnp.concatenate(
        [previous_J / R, (parts.write_gate * (1 - parts.interpolation_gate))[None]]
    )
    memory_NxM = memory.sparse_write(
        state.memory_NxM,
        write_indices_J=write_indices_J,
        write_weights_J=write_weights_J,
        lra_index=lra_index,
        write_word_M=parts.write_word_M,
    )
    search_state = search.after_write(spec, state.search, write_indices_J, memory_NxM)
    links, precedence = link_rule(state.links, state.precedence, write_indices_J, write_weights_J)
    forward_idx, forward, backward_idx, backward = sparse_directional_weights(
        links, state.read_indices_RxC, state.read_weights_RxC, K
    )
    content_idx = search.nearest(
        spec,
        search_state,
        lax.stop_gradient(memory_NxM),
        lax.stop_gradient(parts.queries_RxM),
        K,
    ).astype(jnp.int32)
    _, content = memory.sparse_read(memory_NxM, content_idx, parts.queries_RxM, parts.strengths_R)
    modes_Rx3 = parts.read_modes_Rx3
    read_indices_RxC = jnp.concatenate([backward_idx, content_idx, forward_idx], axis=1)
    read_indices_RxC = jnp.where(read_indices_RxC == N, 0, read_indices_RxC)
    read_weights_RxC = jnp.concatenate(
        [modes_Rx3[:, 0:1] * backward, modes_Rx3[:, 1:2] * content, modes_Rx3[:, 2:3] * forward],
        axis=1,
    )
    words_RxCxM = memory_NxM[read_indices_RxC]
    reads_RxM = jnp.einsum("rc,rcm->rm", read_weights_RxC, words_RxCxM)
    ring = memory.ring_touch(
        state.ring,
        jnp.concatenate([write_indices_J, read_indices_RxC.reshape(-1)]),
        jnp.concatenate([write_weights_J, read_weights_RxC.reshape(-1)]),
        delta=spec.usage_delta,
    )
    new_state = SdncState(
        memory_NxM, read_indices_RxC, read_weights_RxC, ring, search_state, links, precedence
    )
    return new_state, reads_RxM


SDNC = MemoryCore(interface_size=sdnc_interface_size, init=sdnc_init, step=sdnc_step)
