"""The tasks of SAM (Rae et al. 2016, arXiv 1610.09027, Sec. 4 and Supp. C/D), generated in JAX.

Every task gives batches of ``TaskBatch(inputs_BxTxI, targets_BxTxO, mask_BxT)``: the model
reads one input vector per step and emits one output vector per step; ``mask_BxT`` (float32) is 1
where the loss counts. Bit tasks have float32 0/1 targets (B, T, O) and are scored in bits per
sequence: the binary cross-entropy in bits summed over the masked outputs, averaged over
sequences (:func:`cost_bits_per_sequence`); classification tasks (Omniglot, bAbI) have int32
class ids (B, T) and are scored by cross-entropy in bits. Errors (:func:`sequence_errors`) count
masked output bits wrong when thresholded at 0.5, or wrong classes.

Algorithmic tasks (NTM definitions, Graves et al. 2014 Sec. 4, reused by SAM's Supp. C), all pure
functions of an explicit rng and the level. The paper's settings [SAM]: copy with lengths 1-20,
associative recall with 3-6 items, priority sort with 20 inputs returning the top 16
(:data:`PAPER_LEVELS`). Channel layouts, W = ``num_bits`` (8 by default [ours: NTM used 8 bits
for copy and 6 for recall; SAM's supplement gives no sizes]):

* ``copy`` (NTM Sec. 4.1), level L = sequence length, T(L) = 2L + 2. Inputs W + 2: step 0 has
  the start flag (channel W); steps 1..L the random bits; step L + 1 the stop flag (channel
  W + 1); the rest is blank while the model writes the L vectors back at steps L + 2..2L + 1
  (targets, mask 1).
* ``associative_recall`` (NTM Sec. 4.3), level L = number of items (>= 2), S = ``item_size``
  vectors per item (3, as NTM), T(L) = (L + 2)(S + 1). Inputs W + 2: each item is an item
  delimiter step (channel W) then its S vectors; then a query delimiter (channel W + 1), the S
  vectors of a copy of one item drawn uniformly from all but the last, and a second query
  delimiter; the targets are the S vectors of the item that followed the query item, at the last
  S steps (mask 1). Items are drawn independently, as NTM's, unless ``distinct_items`` [ours]:
  then the L items are L different codes of the 2^(W S), drawn without replacement, so the answer
  is always determined. With independent items the query's value occurs again among the other
  L - 2 items that have a successor with probability 1 - (1 - 2^-(W S))^(L - 2), and no answerer
  can tell which successor is meant: :func:`recall_floor_errors` gives the errors of the best
  possible answer (with 6-bit one-vector items, 5% of bits at 16 items, 31% at 160).
* ``priority_sort`` (NTM Sec. 4.5), level L = number of inputs, T(L) = L + 2 + n(L). Inputs W + 3:
  start flag (channel W) at step 0; steps 1..L hold a random vector and its priority, uniform in
  [-1, 1], in channel W + 2; the stop flag (channel W + 1) at step L + 1; then the targets are the
  n(L) highest-priority vectors, highest first. n(L) = ceil(L * num_outputs / sort_inputs) (16
  of 20 in the paper; 1 <= n(L) <= L at every curriculum level [ours: the paper sorts only 20]).

Curriculum (Sec. 4, the curriculum-scaling experiments [SAM]: "the maximum level h is doubled
when the loss falls below a threshold; levels are drawn uniformly from U(0, h)"). Implemented as:
levels uniform on {min_level, ..., h} (:func:`sample_levels`); the cost (bits per sequence) is
folded into a running average, a plain mean over the first 1/(1 - decay) batches at this h and an
exponential moving average with ``decay`` after that; once at least ``min_updates`` (by default
ceil(1/(1 - decay))) batches were seen at this h and the average is below ``threshold``, h
doubles (capped at ``max_level_cap``) and the average restarts [ours: the threshold and decay are
config fields; the paper gives neither]. The state :class:`Curriculum` is a pytree of arrays, part
of the train state. Because T is static, a batch drawn at h is padded to the level
``padded_max_level(h, max_level_cap)``: h rounded up to a power of two, at most the cap, so a
training loop that reads h on the host compiles one step per doubling instead of padding every
batch to the cap's (possibly 10,000-step) length [ours].

Data tasks:

* Omniglot one-shot sequences (Sec. 4, Omniglot [SAM], after Santoro et al. 2016, arXiv
  1605.06065): level L = characters per episode; each episode draws L distinct characters and
  ``instances_per_class`` drawings of each (10 [ours, as Santoro's 5-way 10-shot episodes];
  without replacement while the character has enough drawings), shuffled, T(L) = L *
  instances_per_class. Each character gets a label from a random permutation of 0..L-1. The input
  at step t is the image (``image_side``^2 ink intensities, 20x20 as Santoro) concatenated with
  the one-hot label (``num_labels`` channels) of step t - 1 (zeros at step 0); the target is the
  label of step t's image, int32, mask 1 at every real step. The curriculum doubles L. Santoro's
  rotation and translation augmentation is not done [ours].
* bAbI (Sec. 4, bAbI [SAM], data from :mod:`deepgen.data.babi`): one model trained jointly
  on all 20 tasks (10k questions each in en-10k); one word per step as a one-hot over the
  vocabulary (PAD all zero), the story so far then the question then an ANSWER token, at whose
  step the answer is predicted as a class over the vocabulary ("n,s" is one token). One question
  per sequence [ours: DNC-style whole stories with every question in one sequence are not built].

Randomness: training batches draw from :func:`train_key` (seed, step); :func:`eval_batches` from
a separate stream of the same seed, so held-out sequences never coincide with training draws.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deepgen.core.errors import ConfigError
from deepgen.data import babi, omniglot

ALGORITHMIC_KINDS = ("copy", "associative_recall", "priority_sort")
KINDS = (*ALGORITHMIC_KINDS, "omniglot")
# (lowest, highest) level of the paper's fixed-size experiments (Supp. C).
PAPER_LEVELS = {"copy": (1, 20), "associative_recall": (3, 6), "priority_sort": (20, 20)}
MAX_DISTINCT_ITEM_BITS = 16  # distinct recall items: a permutation of 2^(W S) codes per sequence
STREAMS = ("train", "eval")  # folded into the seed's key: independent draws per stream
OMNIGLOT_SIDE = 20  # Santoro et al. 2016 downsample Omniglot to 20x20


@dataclasses.dataclass(frozen=True)
class TaskParams:
    """Static sizes of one task (hashable, so it can be a jit static argument)."""

    kind: str = "copy"  # one of KINDS
    num_bits: int = 8  # W: bits per vector (copy, associative recall, priority sort)
    item_size: int = 3  # S: vectors per associative-recall item (NTM: 3)
    num_outputs: int = 16  # priority sort: vectors returned out of sort_inputs (paper: 16 of 20)
    sort_inputs: int = 20  # priority sort: inputs at which num_outputs are returned (paper: 20)
    image_side: int = OMNIGLOT_SIDE  # Omniglot: images are image_side x image_side
    instances_per_class: int = 10  # Omniglot: drawings of each character per episode
    num_labels: int = 128  # Omniglot: label channels and classes (the largest level allowed)
    distinct_items: bool = False  # associative recall: the items of a sequence all differ [ours]


class TaskBatch(NamedTuple):
    """One batch padded to a static T; mask 0 on padding."""

    inputs_BxTxI: jax.Array  # float32
    targets_BxTxO: jax.Array  # float32 0/1 bits (B, T, O), or int32 class ids (B, T)
    mask_BxT: jax.Array  # float32, 1 where the loss counts


class OmniglotData(NamedTuple):
    """Omniglot images of one split, flattened, and their character ids, as device arrays."""

    images_NxD: jax.Array  # float32 ink intensities in [0, 1], D = image_side ** 2
    class_ids_N: jax.Array  # int32 character id of each image (any ids, not necessarily dense)


class Curriculum(NamedTuple):
    """The curriculum's state: the highest level h and the running average cost at this h."""

    max_level: jax.Array  # int32 scalar h
    average_bits: jax.Array  # float32 scalar: running average cost (bits per sequence) at h
    num_updates: jax.Array  # int32 scalar: costs folded into the average since h last changed


# ----------------------------------------------------------------------------------------------
# Sizes and checks
# ----------------------------------------------------------------------------------------------


def _check_params(params: TaskParams) -> None:
    if params.kind not in KINDS:
        raise ConfigError(f"task kind={params.kind!r} is unknown; use one of {KINDS}")
    for name in ("num_bits", "item_size", "num_outputs", "sort_inputs"):
        _check_int(name, getattr(params, name), 1)
    if params.num_outputs > params.sort_inputs:
        raise ConfigError(
            f"num_outputs={params.num_outputs} exceeds sort_inputs={params.sort_inputs}; priority "
            "sort cannot return more vectors than it reads (the paper returns 16 of 20)"
        )
    if params.distinct_items and params.num_bits * params.item_size > MAX_DISTINCT_ITEM_BITS:
        raise ConfigError(
            f"distinct_items draws codes of num_bits * item_size = "
            f"{params.num_bits * params.item_size} bits without replacement, at most "
            f"{MAX_DISTINCT_ITEM_BITS}; wider items repeat rarely enough to draw independently"
        )
    if params.kind == "omniglot":
        _check_int("image_side", params.image_side, 1)
        _check_int("instances_per_class", params.instances_per_class, 1)
        _check_int("num_labels", params.num_labels, 1)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def min_level(params: TaskParams) -> int:
    """The lowest level a task allows (associative recall needs two items, others one)."""
    return 2 if params.kind == "associative_recall" else 1


def max_allowed_level(params: TaskParams) -> int | None:
    """The highest level a task allows, None if unbounded.

    Omniglot: num_labels characters; associative recall with distinct items: 2^(W S) codes.
    """
    if params.kind == "omniglot":
        return params.num_labels
    if params.kind == "associative_recall" and params.distinct_items:
        return 2 ** (params.num_bits * params.item_size)
    return None


def _check_max_level(max_level: Any, params: TaskParams) -> int:
    """max_level as an int after checking it against the task's bounds."""
    _check_params(params)
    low = min_level(params)
    max_level = _check_int("max_level", max_level, low)
    high = max_allowed_level(params)
    if high is not None and max_level > high:
        if params.kind == "omniglot":
            raise ConfigError(
                f"max_level={max_level} exceeds num_labels={high}; raise num_labels to at least "
                "the largest number of characters per episode"
            )
        raise ConfigError(
            f"max_level={max_level} exceeds the {high} distinct items of num_bits * item_size = "
            f"{params.num_bits * params.item_size} bits; widen the items or lower the level"
        )
    return max_level


def input_size(params: TaskParams) -> int:
    """Input channels I of a task (see the module docstring for the layout)."""
    _check_params(params)
    if params.kind == "omniglot":
        return params.image_side**2 + params.num_labels
    return params.num_bits + (3 if params.kind == "priority_sort" else 2)


def output_size(params: TaskParams) -> int:
    """Output channels O: bits per vector, or classes (Omniglot: num_labels)."""
    _check_params(params)
    return params.num_labels if params.kind == "omniglot" else params.num_bits


def is_classification(params: TaskParams) -> bool:
    """Whether targets are int32 class ids (B, T) rather than float32 bits (B, T, O)."""
    return params.kind == "omniglot"


def num_sorted_outputs(level: Any, params: TaskParams) -> Any:
    """Priority sort's n(L) = ceil(L * num_outputs / sort_inputs): 16 at the paper's L = 20."""
    return (level * params.num_outputs + params.sort_inputs - 1) // params.sort_inputs


def sequence_length(max_level: int, params: TaskParams) -> int:
    """The static padded T of a batch whose levels are at most max_level."""
    max_level = _check_max_level(max_level, params)
    if params.kind == "copy":
        return 2 * max_level + 2
    if params.kind == "associative_recall":
        return (max_level + 2) * (params.item_size + 1)
    if params.kind == "priority_sort":
        return max_level + 2 + num_sorted_outputs(max_level, params)
    return max_level * params.instances_per_class


def _levels(level: Any, *, batch_size: int, max_level: int, params: TaskParams) -> jax.Array:
    """level (scalar or (B,)) as int32 (B,); concrete values are checked, traced ones clipped."""
    _check_int("batch_size", batch_size, 1)
    low = min_level(params)
    level_B = jnp.asarray(level)
    if level_B.ndim == 0:
        level_B = jnp.broadcast_to(level_B, (batch_size,))
    if level_B.shape != (batch_size,):
        raise ConfigError(
            f"level has shape {tuple(level_B.shape)}; give one level or one per sequence "
            f"({batch_size},)"
        )
    try:
        values = np.asarray(level)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        values = None
    if values is not None:
        if not np.issubdtype(values.dtype, np.integer):
            raise ConfigError(f"levels must be integers, got dtype {values.dtype}")
        if values.size and (values.min() < low or values.max() > max_level):
            raise ConfigError(
                f"levels {values.min()}..{values.max()} lie outside {low}..{max_level} for "
                f"{params.kind}; draw levels in that range or raise max_level"
            )
    return jnp.clip(level_B.astype(jnp.int32), low, max_level)


# ----------------------------------------------------------------------------------------------
# Algorithmic tasks (NTM Sec. 4; SAM Supp. C)
# ----------------------------------------------------------------------------------------------


def _gather_rows(rows_BxNxW: jax.Array, index_BxT: jax.Array) -> jax.Array:
    """rows_BxNxW[b, index_BxT[b, t]] for every (b, t): (B, T, W)."""
    return jnp.take_along_axis(rows_BxNxW, index_BxT[..., None], axis=1)


def _flag(condition_BxT: jax.Array) -> jax.Array:
    return condition_BxT[..., None].astype(jnp.float32)


def _copy(rng: jax.Array, level_B: jax.Array, max_level: int, params: TaskParams) -> TaskBatch:
    batch_size, width = level_B.shape[0], params.num_bits
    steps = sequence_length(max_level, params)
    bits_BxLxW = jax.random.bernoulli(rng, 0.5, (batch_size, max_level, width)).astype(jnp.float32)
    t_BxT = jnp.broadcast_to(jnp.arange(steps), (batch_size, steps))
    length_Bx1 = level_B[:, None]
    read_BxT = (t_BxT >= 1) & (t_BxT <= length_Bx1)
    write_BxT = (t_BxT >= length_Bx1 + 2) & (t_BxT <= 2 * length_Bx1 + 1)
    read_bits = _gather_rows(bits_BxLxW, jnp.clip(t_BxT - 1, 0, max_level - 1))
    write_bits = _gather_rows(bits_BxLxW, jnp.clip(t_BxT - length_Bx1 - 2, 0, max_level - 1))
    inputs_BxTxI = jnp.concatenate(
        [read_bits * _flag(read_BxT), _flag(t_BxT == 0), _flag(t_BxT == length_Bx1 + 1)], axis=-1
    )
    return TaskBatch(inputs_BxTxI, write_bits * _flag(write_BxT), write_BxT.astype(jnp.float32))


def _associative_recall(
    rng: jax.Array, level_B: jax.Array, max_level: int, params: TaskParams
) -> TaskBatch:
    batch_size, width, size = level_B.shape[0], params.num_bits, params.item_size
    steps = sequence_length(max_level, params)
    rng_bits, rng_query = jax.random.split(rng)
    # Items flattened to (B, max_level * S, W): vector r of item i is row i * S + r.
    if params.distinct_items:
        item_bits = width * size
        codes_BxL = jax.vmap(lambda key: jax.random.permutation(key, 2**item_bits)[:max_level])(
            jax.random.split(rng_bits, batch_size)
        )
        bits_BxLxD = (codes_BxL[..., None] >> jnp.arange(item_bits)) & 1
        vectors_BxVxW = bits_BxLxD.reshape(batch_size, max_level * size, width).astype(jnp.float32)
    else:
        vectors = jax.random.bernoulli(rng_bits, 0.5, (batch_size, max_level * size, width))
        vectors_BxVxW = vectors.astype(jnp.float32)
    # The query item: uniform over all items but the last.
    uniform_B = jax.random.uniform(rng_query, (batch_size,))
    query_B = jnp.minimum((uniform_B * (level_B - 1)).astype(jnp.int32), level_B - 2)
    t_BxT = jnp.broadcast_to(jnp.arange(steps), (batch_size, steps))
    items_end_Bx1 = (level_B * (size + 1))[:, None]  # first query delimiter
    item_BxT, offset_BxT = t_BxT // (size + 1), t_BxT % (size + 1)
    in_items = t_BxT < items_end_Bx1
    item_bits_BxT = in_items & (offset_BxT > 0)
    query_row = t_BxT - items_end_Bx1 - 1  # vector index within the query item
    query_bits_BxT = (query_row >= 0) & (query_row < size)
    answer_row = t_BxT - items_end_Bx1 - size - 2
    answer_BxT = (answer_row >= 0) & (answer_row < size)
    query_Bx1 = query_B[:, None]
    source_BxT = jnp.where(
        in_items,
        item_BxT * size + offset_BxT - 1,
        jnp.where(
            query_bits_BxT, query_Bx1 * size + query_row, (query_Bx1 + 1) * size + answer_row
        ),
    )
    rows = _gather_rows(vectors_BxVxW, jnp.clip(source_BxT, 0, max_level * size - 1))
    query_delimiter = (t_BxT == items_end_Bx1) | (t_BxT == items_end_Bx1 + size + 1)
    inputs_BxTxI = jnp.concatenate(
        [
            rows * _flag(item_bits_BxT | query_bits_BxT),
            _flag(in_items & (offset_BxT == 0)),
            _flag(query_delimiter),
        ],
        axis=-1,
    )
    return TaskBatch(inputs_BxTxI, rows * _flag(answer_BxT), answer_BxT.astype(jnp.float32))


def _priority_sort(
    rng: jax.Array, level_B: jax.Array, max_level: int, params: TaskParams
) -> TaskBatch:
    batch_size, width = level_B.shape[0], params.num_bits
    steps = sequence_length(max_level, params)
    rng_bits, rng_priority = jax.random.split(rng)
    bits = jax.random.bernoulli(rng_bits, 0.5, (batch_size, max_level, width))
    bits_BxLxW = bits.astype(jnp.float32)
    priority_BxL = jax.random.uniform(rng_priority, (batch_size, max_level), minval=-1, maxval=1)
    valid_BxL = jnp.arange(max_level)[None, :] < level_B[:, None]
    # Highest priority first; the vectors past the level sort last.
    order_BxL = jnp.argsort(jnp.where(valid_BxL, -priority_BxL, jnp.inf), axis=1)
    t_BxT = jnp.broadcast_to(jnp.arange(steps), (batch_size, steps))
    length_Bx1 = level_B[:, None]
    read_BxT = (t_BxT >= 1) & (t_BxT <= length_Bx1)
    rank_BxT = t_BxT - length_Bx1 - 2
    write_BxT = (rank_BxT >= 0) & (rank_BxT < num_sorted_outputs(length_Bx1, params))
    read_index = jnp.clip(t_BxT - 1, 0, max_level - 1)
    read_bits = _gather_rows(bits_BxLxW, read_index)
    read_priority = jnp.take_along_axis(priority_BxL, read_index, axis=1)
    sorted_index = jnp.take_along_axis(order_BxL, jnp.clip(rank_BxT, 0, max_level - 1), axis=1)
    inputs_BxTxI = jnp.concatenate(
        [
            read_bits * _flag(read_BxT),
            _flag(t_BxT == 0),
            _flag(t_BxT == length_Bx1 + 1),
            (read_priority * read_BxT)[..., None],
        ],
        axis=-1,
    )
    targets_BxTxO = _gather_rows(bits_BxLxW, sorted_index) * _flag(write_BxT)
    return TaskBatch(inputs_BxTxI, targets_BxTxO, write_BxT.astype(jnp.float32))


_ALGORITHMIC = {
    "copy": _copy,
    "associative_recall": _associative_recall,
    "priority_sort": _priority_sort,
}


# ----------------------------------------------------------------------------------------------
# Omniglot one-shot episodes (SAM Sec. 4; Santoro et al. 2016)
# ----------------------------------------------------------------------------------------------


def _omniglot_episode(
    rng: jax.Array,
    level: jax.Array,
    images_NxD: jax.Array,
    class_ids_N: jax.Array,
    *,
    max_level: int,
    params: TaskParams,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One episode: inputs (T, D + num_labels), int32 labels (T,), mask (T,)."""
    instances = params.instances_per_class
    num_images = class_ids_N.shape[0]
    rng_order, rng_class, rng_shuffle, rng_label = jax.random.split(rng, 4)
    # Images grouped by character, in random order within each character.
    within_N = jax.random.uniform(rng_order, (num_images,))
    order_N = jnp.lexsort((within_N, class_ids_N))
    sorted_ids_N = class_ids_N[order_N]
    position_N = jnp.arange(num_images)
    first_N = jnp.concatenate([jnp.ones(1, bool), sorted_ids_N[1:] != sorted_ids_N[:-1]])
    # Start of the next character's run after each position (num_images after the last).
    next_first_N = jax.lax.cummin(jnp.where(first_N, position_N, num_images), reverse=True)
    next_first_N = jnp.concatenate([next_first_N[1:], jnp.full(1, num_images)])
    # max_level distinct characters in random order: the run starts with the largest scores.
    score_N = jnp.where(first_N, jax.random.uniform(rng_class, (num_images,)), -1.0)
    _, start_K = jax.lax.top_k(score_N, max_level)
    count_K = next_first_N[start_K] - start_K
    # Drawing j of character k: without replacement while the character has enough drawings.
    slot_KxJ = start_K[:, None] + jnp.arange(instances)[None, :] % count_K[:, None]
    image_S = order_N[slot_KxJ].reshape(-1)
    class_S = jnp.repeat(jnp.arange(max_level), instances)
    # Shuffle the level * instances real slots into the first steps; the others pad the end.
    real_S = class_S < level
    shuffle_S = jax.random.uniform(rng_shuffle, class_S.shape) + jnp.where(real_S, 0.0, 2.0)
    step_slot_T = jnp.argsort(shuffle_S)
    # Labels: a random permutation of 0..level-1 over the episode's characters.
    label_key_K = jax.random.uniform(rng_label, (max_level,))
    label_key_K = label_key_K + jnp.where(jnp.arange(max_level) < level, 0.0, 2.0)
    label_K = jnp.argsort(jnp.argsort(label_key_K)).astype(jnp.int32)
    valid_T = real_S[step_slot_T]
    labels_T = jnp.where(valid_T, label_K[class_S[step_slot_T]], 0)
    pixels_TxD = images_NxD[image_S[step_slot_T]] * valid_T[:, None]
    previous_T = jnp.concatenate([jnp.full(1, -1, jnp.int32), labels_T[:-1]])
    previous_T = jnp.where(valid_T, previous_T, -1)  # one_hot(-1) is all zeros
    previous_TxL = jax.nn.one_hot(previous_T, params.num_labels, dtype=jnp.float32)
    inputs_TxI = jnp.concatenate([pixels_TxD.astype(jnp.float32), previous_TxL], axis=-1)
    return inputs_TxI, labels_T, valid_T.astype(jnp.float32)


def _omniglot(
    rng: jax.Array,
    level_B: jax.Array,
    max_level: int,
    params: TaskParams,
    data: OmniglotData | None,
) -> TaskBatch:
    if data is None:
        raise ConfigError(
            "the omniglot task needs data=OmniglotData(...); load it with load_omniglot_data"
        )
    images_NxD = jnp.reshape(data.images_NxD, (data.images_NxD.shape[0], -1))
    if images_NxD.shape[1] != params.image_side**2:
        raise ConfigError(
            f"Omniglot images have {images_NxD.shape[1]} pixels, but image_side="
            f"{params.image_side} needs {params.image_side**2}; load them with that image_side"
        )
    # Traced data cannot be checked here: the caller checks with omniglot_num_characters.
    with contextlib.suppress(
        jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError
    ):
        check_characters(data, max_level)
    episode = jax.vmap(
        lambda key, level: _omniglot_episode(
            key,
            level,
            images_NxD,
            jnp.asarray(data.class_ids_N, jnp.int32),
            max_level=max_level,
            params=params,
        )
    )
    rng_B = jax.random.split(rng, level_B.shape[0])
    return TaskBatch(*episode(rng_B, level_B))


def load_omniglot_data(
    split: str,
    *,
    data_dir: str | os.PathLike | None,
    params: TaskParams,
    source: str = "auto",
) -> OmniglotData:
    """One Omniglot split via deepgen.data.omniglot, flattened to device arrays of image_side^2."""
    _check_params(params)
    images = omniglot.load_omniglot(
        split, data_dir=data_dir, source=source, image_side=params.image_side
    )
    pixels = images.intensities_NxHxW
    return OmniglotData(
        images_NxD=jnp.asarray(pixels.reshape(len(pixels), -1), jnp.float32),
        class_ids_N=jnp.asarray(images.labels_N, jnp.int32),
    )


def omniglot_num_characters(data: OmniglotData) -> int:
    """Distinct characters in the data: the largest level it can give."""
    return len(np.unique(np.asarray(data.class_ids_N)))


def check_characters(data: OmniglotData, max_level: int) -> None:
    num_characters = omniglot_num_characters(data)
    if num_characters < max_level:
        raise ConfigError(
            f"max_level={max_level} characters per episode, but the images hold only "
            f"{num_characters} characters; lower max_level or use a larger split"
        )


# ----------------------------------------------------------------------------------------------
# Sampling and held-out evaluation
# ----------------------------------------------------------------------------------------------


def sample(
    rng: jax.Array,
    *,
    level: Any,
    batch_size: int,
    max_level: int,
    params: TaskParams,
    data: OmniglotData | None = None,
) -> TaskBatch:
    """A batch at level (scalar or int32 per sequence), padded to sequence_length(max_level).

    Jit it with batch_size, max_level and params static (level, rng and data may be traced):
    one compilation per max_level. Concrete levels outside min_level..max_level are a
    ConfigError; traced ones are clipped into that range. ``data`` is needed for Omniglot only.
    """
    max_level = _check_max_level(max_level, params)
    level_B = _levels(level, batch_size=batch_size, max_level=max_level, params=params)
    if params.kind == "omniglot":
        return _omniglot(rng, level_B, max_level, params, data)
    return _ALGORITHMIC[params.kind](rng, level_B, max_level, params)


def task_key(seed: int, stream: str) -> jax.Array:
    """The key of one stream ("train" or "eval") of a seed."""
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
    return jax.random.fold_in(jax.random.key(seed), STREAMS.index(stream))


def train_key(seed: int, step: Any) -> jax.Array:
    """The key of training step `step` (may be traced): the train stream folded with the step."""
    return jax.random.fold_in(task_key(seed, "train"), step)


# sample jitted with batch_size, max_level and params static; eval_batches uses it.
sample_jit = jax.jit(sample, static_argnames=("batch_size", "max_level", "params"))


def eval_batches(
    seed: int,
    *,
    level: int,
    num_sequences: int,
    batch_size: int,
    params: TaskParams,
    data: OmniglotData | None = None,
) -> list[TaskBatch]:
    """Held-out batches at one level, deterministic from seed (the eval stream, not training's).

    ceil(num_sequences / batch_size) batches of batch_size; the rows after num_sequences in the
    last batch have mask 0, so sums over every batch cover exactly num_sequences sequences.
    """
    max_level = _check_max_level(level, params)
    _check_int("num_sequences", num_sequences, 1)
    _check_int("batch_size", batch_size, 1)
    if params.kind == "omniglot" and data is not None:
        check_characters(data, max_level)
    key = task_key(seed, "eval")
    batches = []
    for index in range(math.ceil(num_sequences / batch_size)):
        batch = sample_jit(
            jax.random.fold_in(key, index),
            level=jnp.full((batch_size,), max_level, jnp.int32),
            batch_size=batch_size,
            max_level=max_level,
            params=params,
            data=data,
        )
        keep_B = jnp.arange(batch_size) < num_sequences - index * batch_size
        batches.append(batch._replace(mask_BxT=batch.mask_BxT * keep_B[:, None]))
    return batches


def recall_generalisation_batches(
    seed: int,
    *,
    trained_level: int,
    factor: float = 10.0,
    num_sequences: int,
    batch_size: int,
    params: TaskParams,
) -> list[TaskBatch]:
    """Associative recall at round(factor * trained_level) items: train short, test long."""
    if params.kind != "associative_recall":
        raise ConfigError(
            f"recall_generalisation_batches is for associative_recall, not {params.kind}"
        )
    _check_int("trained_level", trained_level, min_level(params))
    if not factor > 0:
        raise ConfigError(f"factor must be positive, got {factor!r}")
    level = max(min_level(params), round(factor * trained_level))
    return eval_batches(
        seed, level=level, num_sequences=num_sequences, batch_size=batch_size, params=params
    )


# ----------------------------------------------------------------------------------------------
# Curriculum (SAM Sec. 4, curriculum scaling)
# ----------------------------------------------------------------------------------------------


def initial_curriculum(initial_level: int, *, params: TaskParams) -> Curriculum:
    """h = initial_level and an empty running average."""
    _check_max_level(initial_level, params)
    return Curriculum(
        max_level=jnp.asarray(initial_level, jnp.int32),
        average_bits=jnp.zeros((), jnp.float32),
        num_updates=jnp.zeros((), jnp.int32),
    )


def default_min_updates(decay: float) -> int:
    """Batches seen at one h before it may double: one averaging window, ceil(1 / (1 - decay))."""
    return math.ceil(1.0 / (1.0 - decay) - 1e-9)


def update_curriculum(
    curriculum: Curriculum,
    cost_bits_per_sequence: jax.Array,
    *,
    threshold: float,
    decay: float,
    max_level_cap: int,
    min_updates: int | None = None,
) -> Curriculum:
    """Fold one batch's cost into the average; double h when the average is below threshold.

    average += (cost - average) * max(1 - decay, 1 / n) for the n-th cost at this h (a plain mean
    until n reaches 1 / (1 - decay), then an exponential moving average); when n >= min_updates,
    the average < threshold and h < max_level_cap, h becomes min(2 h, max_level_cap) and the
    average and n restart at 0. Jittable (threshold, decay and the cap are Python numbers).
    """
    if not 0.0 <= decay < 1.0:
        raise ConfigError(f"decay must lie in [0, 1), got {decay!r}")
    _check_int("max_level_cap", max_level_cap, 1)
    min_updates = default_min_updates(decay) if min_updates is None else min_updates
    _check_int("min_updates", min_updates, 1)
    num_updates = curriculum.num_updates + 1
    rate = jnp.maximum(1.0 - decay, 1.0 / num_updates.astype(jnp.float32))
    cost = jnp.asarray(cost_bits_per_sequence, jnp.float32)
    average = curriculum.average_bits + rate * (cost - curriculum.average_bits)
    double = (
        (num_updates >= min_updates)
        & (average < threshold)
        & (curriculum.max_level < max_level_cap)
    )
    return Curriculum(
        max_level=jnp.where(
            double, jnp.minimum(2 * curriculum.max_level, max_level_cap), curriculum.max_level
        ).astype(jnp.int32),
        average_bits=jnp.where(double, 0.0, average).astype(jnp.float32),
        num_updates=jnp.where(double, 0, num_updates).astype(jnp.int32),
    )


def sample_levels(
    rng: jax.Array, max_level: jax.Array, *, batch_size: int, params: TaskParams
) -> jax.Array:
    """Levels uniform on {min_level, ..., h}, one per sequence: int32 (B,)."""
    low = min_level(params)
    high = jnp.maximum(jnp.asarray(max_level, jnp.int32), low)
    return jax.random.randint(rng, (batch_size,), low, high + 1, dtype=jnp.int32)


def padded_max_level(max_level: int, *, max_level_cap: int) -> int:
    """The static max_level to pad a batch drawn at h to: h rounded up to a power of two, capped."""
    max_level = _check_int("max_level", int(max_level), 1)
    max_level_cap = _check_int("max_level_cap", max_level_cap, max_level)
    return min(1 << (max_level - 1).bit_length(), max_level_cap)


# ----------------------------------------------------------------------------------------------
# bAbI (SAM Sec. 4; data from deepgen.data.babi)
# ----------------------------------------------------------------------------------------------


def load_babi_arrays(
    data_dir: str, *, max_tokens: int | None = None
) -> tuple[babi.BabiData, dict[str, dict[str, jax.Array]]]:
    """The 20 tasks from data_dir and their train/test arrays on the device.

    max_tokens None keeps every question's whole story (T = the longest example).
    """
    data = babi.load_babi(data_dir, max_tokens=max_tokens)
    arrays = {
        split: {name: jnp.asarray(array) for name, array in data.arrays[split].items()}
        for split in babi.SPLITS
    }
    return data, arrays


def sample_babi(
    rng: jax.Array, arrays: Mapping[str, jax.Array], *, batch_size: int, vocab_size: int
) -> TaskBatch:
    """Questions uniform over all 20 tasks (joint training), one word per step.

    targets_BxTxO is int32 (B, T): the answer id at the ANSWER step, where the mask is 1.
    """
    num_examples = arrays["tokens"].shape[0]
    index_B = jax.random.randint(rng, (batch_size,), 0, num_examples)
    return TaskBatch(
        *babi.encode_babi(
            arrays["tokens"][index_B],
            arrays["lengths"][index_B],
            arrays["answers"][index_B],
            vocab_size=vocab_size,
        )
    )


def babi_eval_batches(
    arrays: Mapping[str, Any], *, batch_size: int, vocab_size: int
) -> list[tuple[TaskBatch, np.ndarray]]:
    """Every question of a split once, in order, as (batch, task index per row) pairs.

    The last batch is padded with rows of mask 0 and task index -1, so per-task error rates are
    sums over rows with that task index.
    """
    _check_int("batch_size", batch_size, 1)
    tokens = np.asarray(arrays["tokens"])
    task_N = babi.babi_task_ids(np.asarray(arrays["counts"]))
    num_examples = len(tokens)
    batches = []
    for start in range(0, num_examples, batch_size):
        index_B = np.arange(start, start + batch_size)
        real_B = index_B < num_examples
        index_B = np.where(real_B, index_B, 0)
        inputs, targets, mask = babi.encode_babi(
            tokens[index_B],
            np.asarray(arrays["lengths"])[index_B],
            np.asarray(arrays["answers"])[index_B],
            vocab_size=vocab_size,
        )
        batch = TaskBatch(inputs, targets, mask * jnp.asarray(real_B, jnp.float32)[:, None])
        batches.append((batch, np.where(real_B, task_N[index_B], -1).astype(np.int32)))
    return batches


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------


def cost_bits_per_sequence(logits: jax.Array, batch: TaskBatch) -> jax.Array:
    """Per-sequence cost in bits (B,): masked binary (or categorical) cross-entropy, summed.

    logits: (B, T, O). Bit targets: sigmoid cross-entropy summed over the O bits; class targets:
    softmax cross-entropy. Average over real sequences for the paper's bits per sequence.
    """
    logits = logits.astype(jnp.float32)
    if jnp.issubdtype(batch.targets_BxTxO.dtype, jnp.integer):
        log_p = jax.nn.log_softmax(logits, axis=-1)
        nats_BxT = -jnp.take_along_axis(log_p, batch.targets_BxTxO[..., None], axis=-1)[..., 0]
    else:
        targets = batch.targets_BxTxO
        nats_BxT = jnp.sum(jax.nn.softplus(logits) - logits * targets, axis=-1)
    return jnp.sum(nats_BxT * batch.mask_BxT, axis=1) / math.log(2.0)


def sequence_errors(logits: jax.Array, batch: TaskBatch) -> jax.Array:
    """Per-sequence errors (B,): masked bits wrong at threshold 0.5, or wrong classes."""
    if jnp.issubdtype(batch.targets_BxTxO.dtype, jnp.integer):
        wrong_BxT = (jnp.argmax(logits, axis=-1) != batch.targets_BxTxO).astype(jnp.float32)
    else:
        predicted = (logits > 0).astype(jnp.float32)
        wrong_BxT = jnp.sum(predicted != batch.targets_BxTxO, axis=-1).astype(jnp.float32)
    return jnp.sum(wrong_BxT * batch.mask_BxT, axis=1)


def recall_floor_errors(batch: TaskBatch, *, level: int, params: TaskParams) -> jax.Array:
    """Per-sequence expected bit errors (B,) of the best possible answer to associative recall.

    The answerer knows the rule but not which of the items equal to the query was copied (the
    query is uniform over items 0..L-2, so each match with a successor is equally likely); it
    answers with one of their successors at random and errs where that successor's bits differ
    from the target's. Zero when the query's value is unique; zero on padded (mask 0) sequences.
    Every sequence of the batch must have ``level`` items (as :func:`eval_batches` draws them).
    """
    if params.kind != "associative_recall":
        raise ConfigError(f"recall_floor_errors is for associative_recall, not {params.kind}")
    level = _check_max_level(level, params)
    size, width = params.item_size, params.num_bits
    inputs_BxTxW = jnp.asarray(batch.inputs_BxTxI)[..., :width]
    batch_size, items_end = inputs_BxTxW.shape[0], level * (size + 1)
    # Item i's vectors are steps i (S + 1) + 1 .. i (S + 1) + S; the query's follow items_end.
    items_BxLxD = inputs_BxTxW[:, :items_end].reshape(batch_size, level, size + 1, width)
    items_BxLxD = items_BxLxD[:, :, 1:].reshape(batch_size, level, size * width)
    query_BxD = inputs_BxTxW[:, items_end + 1 : items_end + 1 + size].reshape(batch_size, -1)
    answer_start = items_end + size + 2
    answer_BxD = jnp.asarray(batch.targets_BxTxO)[:, answer_start : answer_start + size]
    answer_BxD = answer_BxD.reshape(batch_size, -1)
    match_BxJ = jnp.all(items_BxLxD[:, :-1] == query_BxD[:, None], axis=-1)
    wrong_BxJ = jnp.sum(items_BxLxD[:, 1:] != answer_BxD[:, None], axis=-1)
    matches_B = jnp.maximum(jnp.sum(match_BxJ, axis=1), 1)
    expected_B = jnp.sum(match_BxJ * wrong_BxJ, axis=1) / matches_B
    return expected_B * (jnp.sum(jnp.asarray(batch.mask_BxT), axis=1) > 0)


def scored_outputs(batch: TaskBatch) -> jax.Array:
    """Per-sequence number of scored outputs (B,): masked bits, or masked class steps."""
    per_step = 1 if batch.targets_BxTxO.ndim == 2 else batch.targets_BxTxO.shape[-1]
    return jnp.sum(batch.mask_BxT, axis=1) * per_step
