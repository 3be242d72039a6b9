"""Decoding ByteNet: cached and naive step functions, greedy, sampling and beam search (Sec. 3-5).

Every decoder here drives a step function ``step(carry, token_B, position) -> (logits_BxV,
carry)``, the logits of the byte after ``token_B`` at ``position``. Two step functions give the
same logits:

* `cached_step`: the model's per-layer caches (deepgen.bytenet.model.ByteNet.step); each byte
  costs the same at any position, so decoding is linear in the output length (the paper's title).
* `naive_step`: writes the token into a buffer of all inputs and reruns the whole decoder over
  it, reading the output at ``position``: quadratic time, the oracle of the tests.

Beam search follows Sec. 5 of the paper (recalled in the team's notes): beams of 12 scored by
their total log-likelihood with no length normalisation, and only hypotheses that emitted EOS are
candidates. Since every extension lowers a total log-likelihood, the search stops once the best
live hypothesis scores below the worst of the `beam` finished ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from deepgen.bytenet.model import ByteNet

Carry = Any
StepFn = Callable[[Carry, jax.Array, jax.Array], tuple[jax.Array, Carry]]
NEG_INF = -1e30  # finite, so that differences of "impossible" scores stay NaN-free


def _source_at(encoded_BxSxC: jax.Array, position: jax.Array) -> jax.Array:
    """The encoder output at position, zeros past its end (the decoder unfolds past |t^|)."""
    length = encoded_BxSxC.shape[1]
    row = jax.lax.dynamic_index_in_dim(
        encoded_BxSxC, jnp.minimum(position, length - 1), axis=1, keepdims=False
    )
    return jnp.where(position < length, row, jnp.zeros_like(row))


def cached_step(model: ByteNet, params: Any) -> StepFn:
    """A step decoding with the per-layer caches; carry = (caches, encoded or None)."""

    def step(carry, token_B, position):
        caches, encoded = carry
        source = None if encoded is None else _source_at(encoded, position)
        logits, caches = model.apply(params, caches, token_B, source, method=ByteNet.step)
        return logits, (caches, encoded)

    return step


def init_cached_carry(model: ByteNet, batch: int, encoded_BxSxC: jax.Array | None) -> Carry:
    """The carry of `cached_step` for a batch of `batch` sequences."""
    return (model.init_cache(batch), encoded_BxSxC)


def naive_step(model: ByteNet, params: Any) -> StepFn:
    """A step that reruns the decoder over all max_len input positions (carry = inputs, encoded)."""

    def step(carry, token_B, position):
        inputs_BxL, encoded = carry
        inputs_BxL = jax.lax.dynamic_update_index_in_dim(inputs_BxL, token_B, position, axis=1)
        logits_BxLxV = model.apply(params, inputs_BxL, encoded)
        logits = jax.lax.dynamic_index_in_dim(logits_BxLxV, position, axis=1, keepdims=False)
        return logits, (inputs_BxL, encoded)

    return step


def init_naive_carry(batch: int, max_len: int, encoded_BxSxC: jax.Array | None) -> Carry:
    """The carry of `naive_step`: an all-zero input buffer of max_len positions."""
    return (jnp.zeros((batch, max_len), jnp.int32), encoded_BxSxC)


def greedy(
    step: StepFn, carry: Carry, *, batch: int, max_len: int, bos: int, eos: int, pad: int = 0
) -> jax.Array:
    """The argmax byte at each position, B x max_len; PAD after a sequence's EOS."""

    def body(state, position):
        carry, token_B, done_B = state
        logits, carry = step(carry, token_B, position)
        next_B = jnp.argmax(logits, -1).astype(jnp.int32)
        out_B = jnp.where(done_B, pad, next_B)
        return (carry, next_B, done_B | (next_B == eos)), out_B

    start = (carry, jnp.full((batch,), bos, jnp.int32), jnp.zeros((batch,), bool))
    _, out_LxB = jax.lax.scan(body, start, jnp.arange(max_len))
    return out_LxB.T


def sample(
    step: StepFn,
    carry: Carry,
    prompt_BxP: jax.Array,
    *,
    num_steps: int,
    rng: jax.Array,
    temperature: float = 1.0,
) -> jax.Array:
    """Feeds the prompt through the step, then samples num_steps bytes: B x num_steps."""
    prompt_len = prompt_BxP.shape[1]

    def feed(carry, inputs):
        token_B, position = inputs
        logits, carry = step(carry, token_B, position)
        return carry, logits

    carry, logits_PxBxV = jax.lax.scan(
        feed, carry, (prompt_BxP.T.astype(jnp.int32), jnp.arange(prompt_len))
    )

    def body(state, inputs):
        carry, logits = state
        key, position = inputs
        token_B = jax.random.categorical(key, logits / temperature).astype(jnp.int32)
        logits, carry = step(carry, token_B, position)
        return (carry, logits), token_B

    keys = jax.random.split(rng, num_steps)
    positions = prompt_len + jnp.arange(num_steps)
    _, out_NxB = jax.lax.scan(body, (carry, logits_PxBxV[-1]), (keys, positions))
    return out_NxB.T


class Beams(NamedTuple):
    """The result of beam_search: hypotheses best first."""

    tokens_BxKxL: jax.Array  # bytes, EOS included, PAD after
    scores_BxK: jax.Array  # total log-likelihood (NEG_INF for an empty slot)
    finished_B: jax.Array  # whether any hypothesis emitted EOS within max_len
    steps: jax.Array  # decoding steps taken (the search stops early when it can)


def _gather_beams(tree: Any, indices_BxK: jax.Array, batch: int, beam: int) -> Any:
    """Reorders leaves with a leading B * K axis: row b * K + k becomes b * K + indices[b, k]."""
    flat = (jnp.arange(batch)[:, None] * beam + indices_BxK).reshape(-1)
    return jax.tree_util.tree_map(lambda x: x[flat], tree)


def beam_search(
    step: StepFn,
    carry: Carry,
    *,
    batch: int,
    beam: int,
    max_len: int,
    bos: int,
    eos: int,
    pad: int = 0,
) -> Beams:
    """Beam search over total log-likelihood, EOS-terminated hypotheses only (see module doc).

    carry holds batch * beam rows (each example repeated beam times, beams of an example
    adjacent). A row that never emits EOS within max_len falls back to its live hypotheses
    (finished_B False).
    """
    K = beam

    def expand(state):
        t, carry, tokens, seqs, alive, fin_seqs, fin_scores = state
        logits, carry = step(carry, tokens, t)
        log_probs_BxKxV = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch, K, -1)
        vocab = log_probs_BxKxV.shape[-1]
        candidates = (alive[..., None] + log_probs_BxKxV).reshape(batch, K * vocab)
        top_scores, top_index = jax.lax.top_k(candidates, 2 * K)
        from_beam, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        cand_seqs = jnp.take_along_axis(seqs, from_beam[..., None], axis=1)
        cand_seqs = cand_seqs.at[:, :, t].set(token)
        is_eos = (token == eos) & (top_scores > NEG_INF / 2)
        # Finished: the best K of the old finished and the new EOS hypotheses.
        pool_scores = jnp.concatenate([fin_scores, jnp.where(is_eos, top_scores, NEG_INF)], 1)
        pool_seqs = jnp.concatenate([fin_seqs, cand_seqs], 1)
        fin_scores, keep = jax.lax.top_k(pool_scores, K)
        fin_seqs = jnp.take_along_axis(pool_seqs, keep[..., None], axis=1)
        # Alive: the best K hypotheses that did not emit EOS.
        alive, pick = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_scores), K)
        seqs = jnp.take_along_axis(cand_seqs, pick[..., None], axis=1)
        carry = _gather_beams(carry, jnp.take_along_axis(from_beam, pick, 1), batch, K)
        tokens = jnp.take_along_axis(token, pick, 1).reshape(-1)
        return t + 1, carry, tokens, seqs, alive, fin_seqs, fin_scores

    def not_done(state):
        t, _, _, _, alive, _, fin_scores = state
        # No extension of a live hypothesis can beat the worst of K finished ones.
        can_improve = jnp.max(alive, 1) > jnp.min(fin_scores, 1)
        return (t < max_len) & jnp.any(can_improve)

    alive = jnp.full((batch, K), NEG_INF).at[:, 0].set(0.0)
    seqs = jnp.full((batch, K, max_len), pad, jnp.int32)
    state = (
        jnp.asarray(0, jnp.int32),
        carry,
        jnp.full((batch * K,), bos, jnp.int32),
        seqs,
        alive,
        seqs,
        jnp.full((batch, K), NEG_INF),
    )
    steps, _, _, seqs, alive, fin_seqs, fin_scores = jax.lax.while_loop(not_done, expand, state)
    finished_B = fin_scores[:, 0] > NEG_INF / 2
    tokens = jnp.where(finished_B[:, None, None], fin_seqs, seqs)
    scores = jnp.where(finished_B[:, None], fin_scores, alive)
    return Beams(tokens, scores, finished_B, steps)


def repeat_for_beams(tree: Any, beam: int) -> Any:
    """Each row of every leaf repeated beam times (adjacent), for a beam_search carry."""
    return jax.tree_util.tree_map(lambda x: jnp.repeat(x, beam, axis=0), tree)
