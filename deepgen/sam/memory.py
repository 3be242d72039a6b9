"""The NTM, DAM and SAM memory cores of Rae et al. 2016 (SAM, arXiv 1610.09027).

SAM (Sec. 3), per example, with N words of size M, R read heads of K words each and one write head:

* Sparse read, Eq. 4: r_t = sum_{i<=K} w~^R_t(s_i) M_t(s_i), where s_1..s_K are the K words most
  cosine-similar to the query q_t (deepgen.sam.search, on stop-gradient inputs) and w~^R_t is the
  softmax of beta_t * cos(q_t, M_t(s_i)) over those K words only: the K largest entries of the
  dense content weights, renormalised.
* Sparse write, Eq. 5: w^W_t = alpha_t (gamma_t w^R_{t-1} + (1 - gamma_t) I^U_t), with scalar
  gates alpha_t, gamma_t in (0, 1). With R heads, w^R_{t-1} := (1/R) sum_h w^R_{t-1,h} [ours]:
  w^W has K*R + 1 non-zeros.
* Memory update, Eq. 8 of the supplement: M_t = (1 - R_t) * M_{t-1} + A_t with R_t = I^U_t 1^T
  (the least recently accessed word is erased) and A_t = w^W_t a_t^T.
* Usage U^(2)_T(i) = T - max{t : w^W_t(i) + w^R_t(i) > delta} (Sec. 3.3), kept in O(1) per touched
  word by the "least accessed ring": a circular doubly linked list whose head is the LRA word.
  Eq. 6 writes I^U as the argmin of U, right for U^(1); U^(2) is a time since the last access,
  so the LRA word is its argmax (the ring's head; ties as documented in ring_touch).

Within a step the write comes first (with the previous step's read weights and the LRA word
chosen from usage up to t-1), then the read of the written memory (Supp. Fig. 6, Eq. 8), then
the usage update with both. Only K*R + 1 rows are gathered or scattered per step and every
index is computed on stop-gradient values, so reverse mode through a lax.scan of T steps keeps
O(T*K*M) residuals plus the memory and its cotangent (O(N*M)), not O(N*T*M) (Sec. 3.4's
property, without the in-place roll-back).

DAM (Sec. 3.3) uses the same read and write rules with dense weights (a full softmax over N) and
the discounted usage U^(1)_T(i) = sum_t lambda^(T-t) (w^W_t(i) + w^R_t(i)), with
w^R_t(i) := sum_h w^R_{t,h}(i) [ours]. The NTM (Graves et al. 2014, Sec. 3.3) uses content,
interpolation, circular-shift and sharpening addressing with erase and add vectors.

Each core's `step` takes one example's raw controller output `interface_I` and applies its own
activations; the layouts are in the cores' docstrings and in `sam_interface` / `ntm_interface`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from deepgen.sam import search
from deepgen.sam.interface import MemoryCore, MemorySpec

# Added to squared norms in the cosine similarity, so that zero words and queries (the initial
# memory, an erased word) give similarity 0 and finite gradients instead of NaN.
NORM_EPSILON = 1e-6


def memory_dtype(spec: MemorySpec) -> jnp.dtype:
    """The memory's dtype: spec.dtype, float32 when None."""
    return jnp.dtype(jnp.float32 if spec.dtype is None else spec.dtype)


# ---------------------------------------------------------------------------------------------
# Building blocks (shared with deepgen.sam.dnc).


def _norm(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=-1) + NORM_EPSILON)


def cosine_similarity(keys_RxM: jax.Array, memory_NxM: jax.Array) -> jax.Array:
    """cos(k_r, M(i)) for every key and word, RxN; norms are sqrt(|x|^2 + NORM_EPSILON)."""
    dots_RxN = keys_RxM @ memory_NxM.T
    return dots_RxN / (_norm(keys_RxM)[:, None] * _norm(memory_NxM)[None, :])


def sparse_read(
    memory_NxM: jax.Array, indices_RxK: jax.Array, queries_RxM: jax.Array, strengths_R: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Eq. 4: the read words RxM and the softmax weights RxK over the K gathered words only.

    Gradients reach only the gathered rows; the indices are not differentiated.
    """
    words_RxKxM = memory_NxM[lax.stop_gradient(indices_RxK)]
    dots_RxK = jnp.einsum("rm,rkm->rk", queries_RxM, words_RxKxM)
    similarity_RxK = dots_RxK / (_norm(queries_RxM)[:, None] * _norm(words_RxKxM))
    weights_RxK = jax.nn.softmax(strengths_R[:, None] * similarity_RxK, axis=-1)
    reads_RxM = jnp.einsum("rk,rkm->rm", weights_RxK, words_RxKxM)
    return reads_RxM, weights_RxK


def sparse_write(
    memory_NxM: jax.Array,
    *,
    write_indices_J: jax.Array,
    write_weights_J: jax.Array,
    lra_index: jax.Array,
    write_word_M: jax.Array,
) -> jax.Array:
    """Eqs. 5 and 8: erase row lra_index, then add w_j a^T at the J indices (duplicates add).

    One scatter-add whose first update is minus the LRA row's old content (the erase), then the
    writes. As one scatter, reverse mode carries the memory's cotangent through the loop in place;
    erasing with a dynamic_update_slice before the scatter made XLA copy the whole N x M
    cotangent twice per backward step (O(N M) per step; measured by benchmarks/sam_scaling.py).
    On the CPU the updates apply in order, so the erased row is exactly zero before it is written
    and the result equals dense_write_sam bit for bit when the indices are distinct; where a
    scatter's duplicate updates apply in any order (GPU atomics) it equals it to rounding.
    """
    lra_index = lax.stop_gradient(jnp.asarray(lra_index, jnp.int32))
    write_indices_J = lax.stop_gradient(write_indices_J)
    old_1xM = lax.dynamic_slice_in_dim(memory_NxM, lra_index, 1, axis=0)
    indices = jnp.concatenate([lra_index[None], write_indices_J])
    updates = jnp.concatenate([-old_1xM, write_weights_J[:, None] * write_word_M[None, :]])
    return memory_NxM.at[indices].add(updates)


def dense_write_sam(
    memory_NxM: jax.Array,
    *,
    write_weights_N: jax.Array,
    lra_index: jax.Array,
    write_word_M: jax.Array,
) -> jax.Array:
    """Eq. 8 with a dense write weighting: M (1 - I^U 1^T) + w^W a^T (O(N*M) per call)."""
    keep_N = 1 - jax.nn.one_hot(lra_index, memory_NxM.shape[0], dtype=memory_NxM.dtype)
    return memory_NxM * keep_N[:, None] + write_weights_N[:, None] * write_word_M[None, :]


class UsageRing(NamedTuple):
    """The least accessed ring of Sec. 3.3: a circular doubly linked list over the N words.

    next_N[i] and prev_N[i] are the neighbours of word i (int32); head is the least recently
    accessed word (the LRA, I^U) and tail the most recent one, next_N[tail] == head.
    """

    next_N: jax.Array
    prev_N: jax.Array
    head: jax.Array
    tail: jax.Array


def ring_init(num_words: int) -> UsageRing:
    """The ring 0, 1, ..., N-1: untouched words become the LRA in index order."""
    words_N = jnp.arange(num_words, dtype=jnp.int32)
    return UsageRing(
        next_N=(words_N + 1) % num_words,
        prev_N=(words_N - 1) % num_words,
        head=jnp.asarray(0, jnp.int32),
        tail=jnp.asarray(num_words - 1, jnp.int32),
    )


def ring_touch(
    ring: UsageRing, indices: jax.Array, weights: jax.Array, *, delta: float
) -> UsageRing:
    """Move the words accessed with total weight > delta to the back of the ring (O(J^2 + J)).

    indices and weights (any equal shapes, flattened row-major into J entries) are one step's
    accesses. The weights of duplicate indices are summed before the comparison with delta (U^(2)
    counts w^W_t(i) + w^R_t(i)). Tie rule: the touched words are moved one entry at a time in
    the order of the flattened list, a duplicate moving again at each occurrence, so the words of
    one step end at the back ordered by the position of their LAST occurrence in the list (a
    later position is more recent). The untouched words keep their order. Hence the head is the
    argmax of U^(2) (time since the last access, never-accessed words oldest), ties broken by
    ring order: never-accessed words by index, words last accessed in the same step by the
    position of their last occurrence in that step's list.
    """
    indices_J = lax.stop_gradient(jnp.asarray(indices).reshape(-1).astype(jnp.int32))
    weights_J = lax.stop_gradient(jnp.asarray(weights).reshape(-1))
    same_JxJ = indices_J[:, None] == indices_J[None, :]
    totals_J = jnp.sum(jnp.where(same_JxJ, weights_J[None, :], 0), axis=1)
    touched_J = totals_J > delta

    def move_to_back(j: jax.Array, ring: UsageRing) -> UsageRing:
        # O(1) scalar updates; when the entry is not touched every update rewrites the old value.
        next_N, prev_N, head, tail = ring
        word, touched = indices_J[j], touched_J[j]
        before, after = prev_N[word], next_N[word]
        next_N = next_N.at[before].set(jnp.where(touched, after, next_N[before]))
        prev_N = prev_N.at[after].set(jnp.where(touched, before, prev_N[after]))
        head = jnp.where(touched & (word == head), after, head)
        tail = jnp.where(touched & (word == tail), before, tail)
        next_N = next_N.at[tail].set(jnp.where(touched, word, next_N[tail]))
        prev_N = prev_N.at[word].set(jnp.where(touched, tail, prev_N[word]))
        next_N = next_N.at[word].set(jnp.where(touched, head, next_N[word]))
        prev_N = prev_N.at[head].set(jnp.where(touched, word, prev_N[head]))
        tail = jnp.where(touched, word, tail)
        return UsageRing(next_N, prev_N, head, tail)

    return lax.fori_loop(0, indices_J.shape[0], move_to_back, ring)


def ring_lra(ring: UsageRing) -> jax.Array:
    """The least recently accessed word I^U (int32 scalar): the ring's head."""
    return ring.head


# ---------------------------------------------------------------------------------------------
# SAM and DAM: one interface layout.


class SamInterface(NamedTuple):
    """SAM's and DAM's interface after activation (Sec. 3.1: p_t = (q_t, a_t, alpha_t, gamma_t))."""

    queries_RxM: jax.Array  # q_t, one per read head, raw
    strengths_R: jax.Array  # beta_t, softplus [ours: the paper does not say]
    write_word_M: jax.Array  # a_t, raw
    write_gate: jax.Array  # alpha_t, sigmoid
    interpolation_gate: jax.Array  # gamma_t, sigmoid


def sam_interface_size(spec: MemorySpec) -> int:
    """R*M + R + M + 2."""
    return spec.num_heads * spec.word_size + spec.num_heads + spec.word_size + 2


def sam_interface(spec: MemorySpec, interface_I: jax.Array) -> SamInterface:
    """Split and activate a raw interface vector: [q (R*M, head-major) | beta (R) | a (M) | alpha | gamma]."""
    R, M = spec.num_heads, spec.word_size
    if interface_I.shape != (sam_interface_size(spec),):
        raise ValueError(
            f"interface of shape {interface_I.shape}, expected ({sam_interface_size(spec)},)"
        )
    interface_I = interface_I.astype(memory_dtype(spec))
    queries_RxM = interface_I[: R * M].reshape(R, M)
    strengths_R = jax.nn.softplus(interface_I[R * M : R * M + R])
    write_word_M = interface_I[R * M + R : R * M + R + M]
    write_gate, interpolation_gate = jax.nn.sigmoid(interface_I[R * M + R + M :])
    return SamInterface(queries_RxM, strengths_R, write_word_M, write_gate, interpolation_gate)


dam_interface = sam_interface


class SamState(NamedTuple):
    """One example's SAM memory: words, the last sparse read weights, usage ring and search index."""

    memory_NxM: jax.Array
    read_indices_RxK: jax.Array  # int32, w^R_{t-1}'s non-zeros, most similar first
    read_weights_RxK: jax.Array
    ring: UsageRing
    search: Any  # deepgen.sam.search's state for spec.search


def _check_sam_spec(spec: MemorySpec) -> None:
    if not 1 <= spec.num_reads <= spec.num_words:
        raise ValueError(f"num_reads K={spec.num_reads} must be in [1, num_words={spec.num_words}]")


def sam_init(spec: MemorySpec) -> SamState:
    """Zero memory, zero read weights (so the first write goes to word 0 only) and ring 0..N-1."""
    _check_sam_spec(spec)
    memory_NxM = jnp.zeros((spec.num_words, spec.word_size), memory_dtype(spec))
    return SamState(
        memory_NxM=memory_NxM,
        read_indices_RxK=jnp.zeros((spec.num_heads, spec.num_reads), jnp.int32),
        read_weights_RxK=jnp.zeros((spec.num_heads, spec.num_reads), memory_dtype(spec)),
        ring=ring_init(spec.num_words),
        search=search.init(spec, memory_NxM),
    )


def sam_write_weights(
    state: SamState, parts: SamInterface
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Eq. 5 sparse: (indices_J, weights_J, lra_index), J = R*K + 1, the LRA word last."""
    lra_index = ring_lra(state.ring)
    num_heads = state.read_weights_RxK.shape[0]
    previous_J = parts.write_gate * parts.interpolation_gate * state.read_weights_RxK.reshape(-1)
    indices_J = jnp.concatenate([state.read_indices_RxK.reshape(-1), lra_index[None]])
    weights_J = jnp.concatenate(
        [previous_J / num_heads, (parts.write_gate * (1 - parts.interpolation_gate))[None]]
    )
    return indices_J, weights_J, lra_index


def sam_step(
    spec: MemorySpec, state: SamState, interface_I: jax.Array
) -> tuple[SamState, jax.Array]:
    """Write (Eq. 5, previous read weights, LRA from the ring), then sparse read (Eq. 4), then usage.

    Interface layout (sam_interface): [q_t: R*M head-major | beta_t: R (softplus) | a_t: M |
    alpha_t: 1 (sigmoid) | gamma_t: 1 (sigmoid)]. Usage entries are the write's (previous read
    indices head-major, then the LRA word) followed by the read's (head-major, most similar
    first); see ring_touch for the order of words touched in the same step.
    """
    _check_sam_spec(spec)
    parts = sam_interface(spec, interface_I)
    write_indices_J, write_weights_J, lra_index = sam_write_weights(state, parts)
    memory_NxM = sparse_write(
        state.memory_NxM,
        write_indices_J=write_indices_J,
        write_weights_J=write_weights_J,
        lra_index=lra_index,
        write_word_M=parts.write_word_M,
    )
    search_state = search.after_write(spec, state.search, write_indices_J, memory_NxM)
    read_indices_RxK = search.nearest(
        spec,
        search_state,
        lax.stop_gradient(memory_NxM),
        lax.stop_gradient(parts.queries_RxM),
        spec.num_reads,
    ).astype(jnp.int32)
    reads_RxM, read_weights_RxK = sparse_read(
        memory_NxM, read_indices_RxK, parts.queries_RxM, parts.strengths_R
    )
    ring = ring_touch(
        state.ring,
        jnp.concatenate([write_indices_J, read_indices_RxK.reshape(-1)]),
        jnp.concatenate([write_weights_J, read_weights_RxK.reshape(-1)]),
        delta=spec.usage_delta,
    )
    new_state = SamState(memory_NxM, read_indices_RxK, read_weights_RxK, ring, search_state)
    return new_state, reads_RxM


SAM = MemoryCore(interface_size=sam_interface_size, init=sam_init, step=sam_step)


class DamState(NamedTuple):
    """One example's DAM memory: words, the last dense weights and the discounted usage U^(1)."""

    memory_NxM: jax.Array
    read_weights_RxN: jax.Array
    write_weights_N: jax.Array
    usage_N: jax.Array


def dam_init(spec: MemorySpec) -> DamState:
    """Zero memory, weights and usage (so the first LRA word is word 0)."""
    dtype = memory_dtype(spec)
    N = spec.num_words
    return DamState(
        memory_NxM=jnp.zeros((N, spec.word_size), dtype),
        read_weights_RxN=jnp.zeros((spec.num_heads, N), dtype),
        write_weights_N=jnp.zeros((N,), dtype),
        usage_N=jnp.zeros((N,), dtype),
    )


def dense_read(
    memory_NxM: jax.Array, queries_RxM: jax.Array, strengths_R: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The content read over all N words: reads RxM and weights softmax(beta cos(q, M)) RxN."""
    weights_RxN = jax.nn.softmax(
        strengths_R[:, None] * cosine_similarity(queries_RxM, memory_NxM), axis=-1
    )
    return weights_RxN @ memory_NxM, weights_RxN


def dam_step(
    spec: MemorySpec, state: DamState, interface_I: jax.Array
) -> tuple[DamState, jax.Array]:
    """SAM's rules with dense weights: write, read over all N, then U^(1) (all O(N*M) per step).

    Interface layout: SAM's (sam_interface). I^U is the argmin of U^(1)_{t-1}, ties to the
    lowest index; U^(1)_t = lambda U^(1)_{t-1} + w^W_t + sum_h w^R_{t,h}, lambda =
    spec.usage_discount.
    """
    parts = dam_interface(spec, interface_I)
    lra_index = jnp.argmin(state.usage_N).astype(jnp.int32)
    previous_N = jnp.mean(state.read_weights_RxN, axis=0)
    lra_N = jax.nn.one_hot(lra_index, spec.num_words, dtype=previous_N.dtype)
    write_weights_N = parts.write_gate * (
        parts.interpolation_gate * previous_N + (1 - parts.interpolation_gate) * lra_N
    )
    memory_NxM = dense_write_sam(
        state.memory_NxM,
        write_weights_N=write_weights_N,
        lra_index=lra_index,
        write_word_M=parts.write_word_M,
    )
    reads_RxM, read_weights_RxN = dense_read(memory_NxM, parts.queries_RxM, parts.strengths_R)
    usage_N = (
        spec.usage_discount * state.usage_N + write_weights_N + jnp.sum(read_weights_RxN, axis=0)
    )
    return DamState(memory_NxM, read_weights_RxN, write_weights_N, usage_N), reads_RxM


DAM = MemoryCore(interface_size=sam_interface_size, init=dam_init, step=dam_step)


# ---------------------------------------------------------------------------------------------
# NTM (Graves et al. 2014, Sec. 3.3).


class NtmHead(NamedTuple):
    """One NTM head's addressing parameters after activation (leading head axis H when stacked)."""

    key_M: jax.Array  # k, raw
    strength: jax.Array  # beta >= 0, softplus
    gate: jax.Array  # g in (0, 1), sigmoid
    shift_S: jax.Array  # s, softmax over offsets -(S//2) .. S-1-S//2
    sharpening: jax.Array  # gamma >= 1, 1 + softplus


class NtmInterface(NamedTuple):
    """The NTM's interface after activation."""

    read: NtmHead  # fields with a leading axis R
    write: NtmHead
    erase_M: jax.Array  # e, sigmoid
    add_M: jax.Array  # a, raw


def _ntm_head_size(spec: MemorySpec) -> int:
    return spec.word_size + 3 + spec.num_shifts


def ntm_interface_size(spec: MemorySpec) -> int:
    """(R + 1) * (M + 3 + S) + 2 * M."""
    return (spec.num_heads + 1) * _ntm_head_size(spec) + 2 * spec.word_size


def _ntm_head(spec: MemorySpec, raw_HxB: jax.Array) -> NtmHead:
    M, S = spec.word_size, spec.num_shifts
    return NtmHead(
        key_M=raw_HxB[:, :M],
        strength=jax.nn.softplus(raw_HxB[:, M]),
        gate=jax.nn.sigmoid(raw_HxB[:, M + 1]),
        shift_S=jax.nn.softmax(raw_HxB[:, M + 2 : M + 2 + S], axis=-1),
        sharpening=1 + jax.nn.softplus(raw_HxB[:, M + 2 + S]),
    )


def ntm_interface(spec: MemorySpec, interface_I: jax.Array) -> NtmInterface:
    """Split and activate: R read heads, then the write head, each [k (M) | beta | g | s (S) |
    gamma], then e (M) and a (M)."""
    if interface_I.shape != (ntm_interface_size(spec),):
        raise ValueError(
            f"interface of shape {interface_I.shape}, expected ({ntm_interface_size(spec)},)"
        )
    interface_I = interface_I.astype(memory_dtype(spec))
    R, M, B = spec.num_heads, spec.word_size, _ntm_head_size(spec)
    heads = _ntm_head(spec, interface_I[: (R + 1) * B].reshape(R + 1, B))
    read = NtmHead(*(field[:R] for field in heads))
    write = NtmHead(*(field[R] for field in heads))
    erase_M = jax.nn.sigmoid(interface_I[(R + 1) * B : (R + 1) * B + M])
    add_M = interface_I[(R + 1) * B + M :]
    return NtmInterface(read, write, erase_M, add_M)


def ntm_content_weights(
    keys_HxM: jax.Array, strengths_H: jax.Array, memory_NxM: jax.Array
) -> jax.Array:
    """w^c = softmax_i(beta K[k, M(i)]) with cosine K (NTM Eqs. 5-6), HxN."""
    return jax.nn.softmax(strengths_H[:, None] * cosine_similarity(keys_HxM, memory_NxM), axis=-1)


def ntm_interpolate(
    content_HxN: jax.Array, previous_HxN: jax.Array, gates_H: jax.Array
) -> jax.Array:
    """w^g = g w^c + (1 - g) w_{t-1} (NTM Eq. 7)."""
    return gates_H[:, None] * content_HxN + (1 - gates_H[:, None]) * previous_HxN


def ntm_shift(weights_HxN: jax.Array, shifts_HxS: jax.Array) -> jax.Array:
    """Circular convolution w~(i) = sum_o s(o) w(i - o), offsets o = k - S//2 (NTM Eq. 8)."""
    num_shifts = shifts_HxS.shape[-1]
    shifted_HxN = jnp.zeros_like(weights_HxN)
    for k in range(num_shifts):
        shifted_HxN = shifted_HxN + shifts_HxS[:, k, None] * jnp.roll(
            weights_HxN, k - num_shifts // 2, axis=-1
        )
    return shifted_HxN


def ntm_sharpen(weights_HxN: jax.Array, sharpening_H: jax.Array) -> jax.Array:
    """w^gamma / sum_j w(j)^gamma (NTM Eq. 9), normalised in log space; weights below tiny count as tiny.

    As a softmax of gamma log w, no power underflows to an all-zero row (0 / 0 = NaN once gamma
    is large and the largest weight small, which stopped NTM runs on recall_cpu at step 5,754).
    """
    tiny = jnp.finfo(weights_HxN.dtype).tiny
    return jax.nn.softmax(sharpening_H[:, None] * jnp.log(jnp.maximum(weights_HxN, tiny)), axis=-1)


def ntm_address(memory_NxM: jax.Array, head: NtmHead, previous_HxN: jax.Array) -> jax.Array:
    """Content, interpolation, shift and sharpening for H stacked heads, HxN."""
    content_HxN = ntm_content_weights(head.key_M, head.strength, memory_NxM)
    gated_HxN = ntm_interpolate(content_HxN, previous_HxN, head.gate)
    return ntm_sharpen(ntm_shift(gated_HxN, head.shift_S), head.sharpening)


class NtmState(NamedTuple):
    """One example's NTM memory and the previous step's read and write weights."""

    memory_NxM: jax.Array
    read_weights_RxN: jax.Array
    write_weights_N: jax.Array


def ntm_init(spec: MemorySpec) -> NtmState:
    """Zero memory; every head's previous weights one-hot on word 0 [ours: the paper learns them]."""
    dtype = memory_dtype(spec)
    N = spec.num_words
    first_N = jax.nn.one_hot(0, N, dtype=dtype)
    return NtmState(
        memory_NxM=jnp.zeros((N, spec.word_size), dtype),
        read_weights_RxN=jnp.tile(first_N, (spec.num_heads, 1)),
        write_weights_N=first_N,
    )


def ntm_step(
    spec: MemorySpec, state: NtmState, interface_I: jax.Array
) -> tuple[NtmState, jax.Array]:
    """Address and write (erase, add), then address and read the written memory [ours: order].

    Interface layout (ntm_interface), with B = M + 3 + S: R read heads then the write head, each
    [k: M | beta: 1 (softplus) | g: 1 (sigmoid) | s: S (softmax) | gamma: 1 (1 + softplus)],
    then [e: M (sigmoid) | a: M (raw)]; size (R + 1) B + 2M. M_t = M_{t-1} (1 - w^W e^T) + w^W a^T.
    """
    parts = ntm_interface(spec, interface_I)
    write_head = NtmHead(*(field[None] for field in parts.write))
    write_weights_N = ntm_address(state.memory_NxM, write_head, state.write_weights_N[None])[0]
    memory_NxM = state.memory_NxM * (1 - write_weights_N[:, None] * parts.erase_M[None, :])
    memory_NxM = memory_NxM + write_weights_N[:, None] * parts.add_M[None, :]
    read_weights_RxN = ntm_address(memory_NxM, parts.read, state.read_weights_RxN)
    reads_RxM = read_weights_RxN @ memory_NxM
    return NtmState(memory_NxM, read_weights_RxN, write_weights_N), reads_RxM


NTM = MemoryCore(interface_size=ntm_interface_size, init=ntm_init, step=ntm_step)
