"""Task families for automated curriculum learning (Graves et al. 2017, arXiv 1704.03003, Sec. 5).

A task family is a set of tasks that one network trains on; the curriculum bandit picks the
task of every batch. Three families, each a :class:`TaskFamily` whose ``sample`` is one jittable
function of a traced task index (same shapes and dtypes for every task):

* ``ngram`` (Sec. 5.1): character n-gram models of orders 0..10 fitted on real text (text8-style
  Wikipedia); each generates disjoint 150-character sequences; the network predicts the last 100
  characters given the first 50. The target task is the highest order.
* ``repeat_copy`` (Sec. 5.2): the repeat copy task of the Neural Turing Machine (Graves et al.
  2014) with sequence lengths 1..13 times repeat counts 1..13, 169 tasks; target 13 x 13.
* ``babi`` (Sec. 5.3): the 20 bAbI question-answering tasks (Weston et al. 2015) read from the
  standard task files by :mod:`deepgen.data.babi`, one example per question; the target is the
  last task.

Every batch carries ``lengths_B``, the time steps tau(x) an example really occupies, by which the
paper divides its loss-based progress signals.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deepgen.core.errors import ConfigError
from deepgen.data import text8

# The bAbI data (parsing, files, vocabulary, arrays) lives in deepgen.data.babi, shared with SAM;
# these names stay importable from here.
from deepgen.data.babi import BABI_ANSWER as BABI_ANSWER
from deepgen.data.babi import BABI_NUM_TASKS as BABI_NUM_TASKS
from deepgen.data.babi import BABI_PAD as BABI_PAD
from deepgen.data.babi import BABI_SUBFOLDERS as BABI_SUBFOLDERS
from deepgen.data.babi import BABI_TASK_NAMES as BABI_TASK_NAMES
from deepgen.data.babi import BabiExample as BabiExample
from deepgen.data.babi import babi_arrays as babi_arrays
from deepgen.data.babi import babi_tokenize as babi_tokenize
from deepgen.data.babi import babi_vocab as babi_vocab
from deepgen.data.babi import encode_babi, load_babi
from deepgen.data.babi import find_babi_files as find_babi_files
from deepgen.data.babi import parse_babi as parse_babi

KINDS = ("ngram", "repeat_copy", "babi")
SPLITS = ("train", "test")
NGRAM_BASE = text8.VOCAB_SIZE  # 27 symbols: 0 = space, 1..26 = a..z
# The (n + 1)-gram keys are base-27 int64 numbers: 27^13 < 2^63 allows orders up to 12.
NGRAM_MAX_ORDER = 12


class TaskBatch(NamedTuple):
    """One batch of one task, padded to the family's seq_len T."""

    inputs_BxTxI: jax.Array  # float32 network inputs
    targets: jax.Array  # categorical: int32 (B, T); bernoulli: float32 (B, T, O)
    weights_BxT: jax.Array  # float32, 1 where the loss counts, 0 elsewhere (incl. padding)
    lengths_B: jax.Array  # float32, tau(x): time steps the example really occupies


@dataclasses.dataclass(frozen=True, eq=False)
class TaskFamily:
    """A family of tasks sharing one input/output layout; ``sample`` draws a batch of one task.

    ``params`` holds the kind-specific sizes ``sample`` needs (ngram: context_len, num_chars,
    vocab; repeat_copy: max_length, max_repeats, num_bits; babi: vocab, pad_id, answer_id).
    """

    kind: str
    task_names: tuple[str, ...]
    target_task: int
    input_size: int
    output_size: int
    likelihood: str
    seq_len: int
    data_source: str
    unit: str
    train_data: Any
    test_data: Any
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        """Number of tasks (arms of the curriculum bandit)."""
        return len(self.task_names)

    @functools.cached_property
    def _device_data(self) -> dict[str, Any]:
        """train_data and test_data as jnp arrays, made once (concrete even when first traced)."""
        with jax.ensure_compile_time_eval():
            return {
                "train": jax.tree.map(jnp.asarray, self.train_data),
                "test": jax.tree.map(jnp.asarray, self.test_data),
            }

    def sample(
        self, rng: jax.Array, task: jax.Array, batch_size: int, *, split: str = "train"
    ) -> TaskBatch:
        """A batch of batch_size examples of one task (task may be traced; out of range clips)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        task = jnp.clip(jnp.asarray(task, jnp.int32), 0, self.num_tasks - 1)
        if self.kind == "repeat_copy":
            return sample_repeat_copy(
                rng,
                task,
                batch_size,
                max_length=self.params["max_length"],
                max_repeats=self.params["max_repeats"],
                num_bits=self.params["num_bits"],
            )
        data = self._device_data[split]
        if self.kind == "ngram":
            return sample_ngram(
                rng, task, batch_size, data["sequences"], context_len=self.params["context_len"]
            )
        if self.kind == "babi":
            return sample_babi(rng, task, batch_size, data, vocab_size=self.input_size)
        raise ConfigError(f"task family kind={self.kind!r} is unknown; use one of {KINDS}")


# ----------------------------------------------------------------------------------------------
# Character n-gram models (Sec. 5.1)
# ----------------------------------------------------------------------------------------------


def _check_tokens(tokens_N: np.ndarray, order: int) -> np.ndarray:
    """tokens_N as int64 after checking the alphabet and that it is longer than order."""
    tokens_N = np.asarray(tokens_N)
    if tokens_N.ndim != 1 or not np.issubdtype(tokens_N.dtype, np.integer):
        raise ValueError(
            f"tokens must be a 1-D integer array, got {tokens_N.dtype} {tokens_N.shape}"
        )
    if tokens_N.size and (tokens_N.min() < 0 or tokens_N.max() >= NGRAM_BASE):
        raise ValueError(f"tokens must lie in [0, {NGRAM_BASE})")
    if not 0 <= order <= NGRAM_MAX_ORDER:
        raise ValueError(f"order must lie in [0, {NGRAM_MAX_ORDER}], got {order}")
    if len(tokens_N) <= order:
        raise ValueError(f"{len(tokens_N)} tokens are too few for an order-{order} model")
    return tokens_N.astype(np.int64)


def ngram_keys(tokens_N: np.ndarray, order: int) -> np.ndarray:
    """Every (order + 1)-gram of the text as a base-27 int64 key, context first: (N - order,)."""
    tokens_N = _check_tokens(tokens_N, order)
    num_grams = len(tokens_N) - order
    keys_M = np.zeros(num_grams, np.int64)
    for offset in range(order + 1):
        keys_M = keys_M * NGRAM_BASE + tokens_N[offset : offset + num_grams]
    return keys_M


def ngram_sorted_keys(tokens_N: np.ndarray, order: int) -> np.ndarray:
    """The sorted (order + 1)-gram keys: the whole order-n model, one entry per corpus position."""
    return np.sort(ngram_keys(tokens_N, order))


def ngram_entropy_nats(tokens_N: np.ndarray, order: int) -> float:
    """H(next char | previous order chars) of the empirical model, contexts weighted as in the text.

    -(1/M) sum over the M positions with order chars before them of log p(char | context), with
    p the corpus counts; a floor for the per-character loss on the generated sequences (their
    contexts follow the chain's own distribution, close to but not exactly the corpus's).
    """
    keys_M = ngram_keys(tokens_N, order)
    grams_G, gram_counts_G = np.unique(keys_M, return_counts=True)
    contexts_C, context_counts_C = np.unique(keys_M // NGRAM_BASE, return_counts=True)
    context_of_gram_G = context_counts_C[np.searchsorted(contexts_C, grams_G // NGRAM_BASE)]
    log_p_G = np.log(gram_counts_G) - np.log(context_of_gram_G)
    return float(-(gram_counts_G @ log_p_G) / len(keys_M))


def sample_ngram_sequences(
    sorted_keys_M: np.ndarray,
    order: int,
    *,
    num_seqs: int,
    num_chars: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """num_seqs sequences of num_chars characters from the order-n model: uint8 (S, num_chars).

    Exact and vectorised over chains: the next character given context c is the character after
    a uniformly random occurrence of c, i.e. a uniform entry of the run of keys starting with c
    in sorted_keys_M (from ``ngram_sorted_keys``), whose last base-27 digit is the character.
    Each chain starts from the context of a random corpus position, which is dropped: every kept
    character is generated. A context with no continuation (only the corpus's last `order`
    characters, when they occur nowhere else) restarts its chain from a fresh random context and
    discards what that chain had generated, so every (n + 1)-gram of a sequence is in the corpus;
    this is rare (about once per corpus length of generated text at high orders).
    """
    context_mod = NGRAM_BASE**order
    num_keys = len(sorted_keys_M)
    sequences_SxL = np.zeros((num_seqs, num_chars), np.uint8)
    position_S = np.zeros(num_seqs, np.int64)
    context_S = sorted_keys_M[rng.integers(0, num_keys, num_seqs)] // NGRAM_BASE
    active_A = np.arange(num_seqs)
    while active_A.size:
        first_key_A = context_S[active_A] * NGRAM_BASE
        lo_A = np.searchsorted(sorted_keys_M, first_key_A, "left")
        hi_A = np.searchsorted(sorted_keys_M, first_key_A + NGRAM_BASE, "left")
        live_A = hi_A > lo_A
        if not live_A.all():
            dead_ids = active_A[~live_A]
            restart_keys = sorted_keys_M[rng.integers(0, num_keys, dead_ids.size)]
            context_S[dead_ids] = restart_keys // NGRAM_BASE
            position_S[dead_ids] = 0
        stepping, lo_A, hi_A = active_A[live_A], lo_A[live_A], hi_A[live_A]
        pick_A = lo_A + (rng.random(stepping.size) * (hi_A - lo_A)).astype(np.int64)
        key_A = sorted_keys_M[np.minimum(pick_A, hi_A - 1)]
        sequences_SxL[stepping, position_S[stepping]] = key_A % NGRAM_BASE
        position_S[stepping] += 1
        context_S[stepping] = key_A % context_mod
        active_A = active_A[position_S[active_A] < num_chars]
    return sequences_SxL


def ngram_split_rng(seed: int, order: int, split: str) -> np.random.Generator:
    """The numpy generator of one order and split: seeded by (seed, order, split index)."""
    return np.random.default_rng((seed, order, SPLITS.index(split)))


def ngram_data(
    tokens_N: np.ndarray,
    *,
    max_order: int,
    num_seqs: Mapping[str, int],
    num_chars: int,
    seed: int,
) -> dict[str, dict[str, np.ndarray]]:
    """{split: {"sequences": uint8 (max_order + 1, S_split, num_chars)}} from the fitted models."""
    sequences = {split: [] for split in num_seqs}
    for order in range(max_order + 1):
        sorted_keys_M = ngram_sorted_keys(tokens_N, order)
        for split, count in num_seqs.items():
            sequences[split].append(
                sample_ngram_sequences(
                    sorted_keys_M,
                    order,
                    num_seqs=count,
                    num_chars=num_chars,
                    rng=ngram_split_rng(seed, order, split),
                )
            )
    return {split: {"sequences": np.stack(seqs)} for split, seqs in sequences.items()}


def sample_ngram(
    rng: jax.Array,
    task: jax.Array,
    batch_size: int,
    sequences_KxSxL: jax.Array,
    *,
    context_len: int,
) -> TaskBatch:
    """Uniform (with replacement) sequences of one order: predict chars context_len.. from all before."""
    num_chars = sequences_KxSxL.shape[2]
    index_B = jax.random.randint(rng, (batch_size,), 0, sequences_KxSxL.shape[1])
    chars_BxL = sequences_KxSxL[task, index_B].astype(jnp.int32)
    inputs_BxTxI = jax.nn.one_hot(chars_BxL[:, :-1], NGRAM_BASE, dtype=jnp.float32)
    predicted_T = jnp.arange(1, num_chars)  # index of the character predicted at each step
    weights_T = (predicted_T >= context_len).astype(jnp.float32)
    return TaskBatch(
        inputs_BxTxI=inputs_BxTxI,
        targets=chars_BxL[:, 1:],
        weights_BxT=jnp.broadcast_to(weights_T, (batch_size, num_chars - 1)),
        lengths_B=jnp.full((batch_size,), num_chars, jnp.float32),
    )


def _positive(name: str, value: Any, minimum: int = 1) -> int:
    """value as an int, or a ConfigError when it is not an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def build_ngram_family(config: ml_collections.ConfigDict) -> TaskFamily:
    """The n-gram family of Sec. 5.1 from config.data (see ``build_family``)."""
    data = config.data
    max_order = _positive("data.max_order", data.max_order, 0)
    if max_order > NGRAM_MAX_ORDER:
        raise ConfigError(f"data.max_order={max_order} is too large; use at most {NGRAM_MAX_ORDER}")
    num_chars = _positive("data.seq_len", data.seq_len, 2)
    context_len = _positive("data.context_len", data.context_len)
    if context_len >= num_chars:
        raise ConfigError(
            f"data.context_len={context_len} leaves nothing to predict in data.seq_len={num_chars}; "
            "make it smaller than seq_len"
        )
    num_seqs = {
        "train": _positive("data.chars_per_task", data.chars_per_task, num_chars) // num_chars,
        "test": _positive("data.test_chars_per_task", data.test_chars_per_task, num_chars)
        // num_chars,
    }
    corpus_chars = _positive("data.corpus_chars", data.corpus_chars, 0)
    corpus = text8.load_text8("train", data_dir=data.dir or None, source=data.source)
    tokens_N = corpus.tokens_N[:corpus_chars] if corpus_chars else corpus.tokens_N
    if len(tokens_N) <= max_order + 1:
        raise ConfigError(
            f"data.corpus_chars={corpus_chars} gives {len(tokens_N)} characters, too few for "
            f"order {max_order}; raise it or set 0 for the whole split"
        )
    sequences = ngram_data(
        tokens_N, max_order=max_order, num_seqs=num_seqs, num_chars=num_chars, seed=config.seed
    )
    used = f"first {len(tokens_N):,} characters of the " if corpus_chars else ""
    return TaskFamily(
        kind="ngram",
        task_names=tuple(f"{order}-gram" for order in range(max_order + 1)),
        target_task=max_order,
        input_size=NGRAM_BASE,
        output_size=NGRAM_BASE,
        likelihood="categorical",
        seq_len=num_chars - 1,
        data_source=(
            f"character n-gram models (orders 0..{max_order}) fitted on the {used}{corpus.source}; "
            f"{num_seqs['train']:,} train and {num_seqs['test']:,} test sequences of {num_chars} "
            f"characters per order (seed {config.seed})"
        ),
        unit="character",
        train_data=sequences["train"],
        test_data=sequences["test"],
        params={
            "context_len": context_len,
            "num_chars": num_chars,
            "vocab": tuple(text8.ALPHABET),
            # H(next | n previous) of each model: the loss floor eval.json reports beside the loss
            "entropy_floor_nats": tuple(
                ngram_entropy_nats(tokens_N, order) for order in range(max_order + 1)
            ),
        },
    )


# ----------------------------------------------------------------------------------------------
# Repeat copy (Sec. 5.2)
# ----------------------------------------------------------------------------------------------


def repeat_copy_seq_len(max_length: int, max_repeats: int) -> int:
    """T: l inputs, a delimiter step, l * r outputs and an end step at the largest l and r."""
    return max_length + 2 + max_length * max_repeats


def repeat_copy_task_index(length: int, repeats: int, *, max_repeats: int) -> int:
    """Task index k = (length - 1) * max_repeats + (repeats - 1)."""
    return (length - 1) * max_repeats + (repeats - 1)


def repeat_copy_task_params(task: int, *, max_repeats: int) -> tuple[int, int]:
    """(length, repeats) of task index k."""
    return task // max_repeats + 1, task % max_repeats + 1


def repeat_copy_example(
    vectors_LxW: np.ndarray, repeats: int, *, max_length: int, max_repeats: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One padded example in numpy with plain loops: (inputs_TxI, targets_TxO, weights_T, length).

    Input channels W + 2 (bits, delimiter, repeat count r / max_repeats), output channels W + 1
    (bits, end marker); a reference for the jitted generator.
    """
    vectors_LxW = np.asarray(vectors_LxW, np.float32)
    length, num_bits = vectors_LxW.shape
    steps = repeat_copy_seq_len(max_length, max_repeats)
    inputs_TxI = np.zeros((steps, num_bits + 2), np.float32)
    targets_TxO = np.zeros((steps, num_bits + 1), np.float32)
    weights_T = np.zeros(steps, np.float32)
    for t in range(length):
        inputs_TxI[t, :num_bits] = vectors_LxW[t]
    inputs_TxI[length, num_bits] = 1.0
    inputs_TxI[length, num_bits + 1] = repeats / max_repeats
    t = length + 1
    for _ in range(repeats):
        for vector_W in vectors_LxW:
            targets_TxO[t, :num_bits] = vector_W
            weights_T[t] = 1.0
            t += 1
    targets_TxO[t, num_bits] = 1.0
    weights_T[t] = 1.0
    return inputs_TxI, targets_TxO, weights_T, t + 1


def sample_repeat_copy(
    rng: jax.Array,
    task: jax.Array,
    batch_size: int,
    *,
    max_length: int,
    max_repeats: int,
    num_bits: int,
) -> TaskBatch:
    """A batch of one (length, repeats) task; Bernoulli(0.5) vectors drawn from rng on the device."""
    steps = repeat_copy_seq_len(max_length, max_repeats)
    length = task // max_repeats + 1
    repeats = task % max_repeats + 1
    bits_BxLxW = jax.random.bernoulli(rng, 0.5, (batch_size, max_length, num_bits))
    bits_BxLxW = bits_BxLxW.astype(jnp.float32)
    t_T = jnp.arange(steps)
    read_T = (t_T < length).astype(jnp.float32)
    delimiter_T = (t_T == length).astype(jnp.float32)
    read_bits_BxTxW = bits_BxLxW[:, jnp.minimum(t_T, max_length - 1)] * read_T[:, None]
    control_Tx2 = jnp.stack([delimiter_T, delimiter_T * repeats / max_repeats], axis=-1)
    inputs_BxTxI = jnp.concatenate(
        [read_bits_BxTxW, jnp.broadcast_to(control_Tx2, (batch_size, steps, 2))], axis=-1
    )
    last_output = length + length * repeats
    write_T = (t_T > length) & (t_T <= last_output)
    source_T = jnp.where(write_T, (t_T - length - 1) % length, 0)
    write_bits_BxTxW = bits_BxLxW[:, source_T] * write_T[:, None].astype(jnp.float32)
    end_T = t_T == last_output + 1
    end_BxTx1 = jnp.broadcast_to(end_T[:, None].astype(jnp.float32), (batch_size, steps, 1))
    weights_T = (write_T | end_T).astype(jnp.float32)
    return TaskBatch(
        inputs_BxTxI=inputs_BxTxI,
        targets=jnp.concatenate([write_bits_BxTxW, end_BxTx1], axis=-1),
        weights_BxT=jnp.broadcast_to(weights_T, (batch_size, steps)),
        lengths_B=jnp.full((batch_size,), last_output + 2, jnp.float32),
    )


def build_repeat_copy_family(config: ml_collections.ConfigDict) -> TaskFamily:
    """The repeat copy family of Sec. 5.2 from config.data (see ``build_family``)."""
    max_length = _positive("data.max_length", config.data.max_length)
    max_repeats = _positive("data.max_repeats", config.data.max_repeats)
    num_bits = _positive("data.num_bits", config.data.num_bits)
    names = tuple(
        f"len{length}_rep{repeats}"
        for length in range(1, max_length + 1)
        for repeats in range(1, max_repeats + 1)
    )
    return TaskFamily(
        kind="repeat_copy",
        task_names=names,
        target_task=len(names) - 1,
        input_size=num_bits + 2,
        output_size=num_bits + 1,
        likelihood="bernoulli",
        seq_len=repeat_copy_seq_len(max_length, max_repeats),
        data_source=(
            f"synthetic: random {num_bits}-bit vectors drawn on the device from the batch rng "
            "(the test split uses the same generator; evaluation uses fixed seeds)"
        ),
        unit="output step",
        train_data=None,
        test_data=None,
        params={"max_length": max_length, "max_repeats": max_repeats, "num_bits": num_bits},
    )


# ----------------------------------------------------------------------------------------------
# bAbI (Sec. 5.3)
# ----------------------------------------------------------------------------------------------


def sample_babi(
    rng: jax.Array,
    task: jax.Array,
    batch_size: int,
    data: Mapping[str, jax.Array],
    *,
    vocab_size: int,
) -> TaskBatch:
    """Uniform (with replacement) questions of one task; the answer is scored at the ANSWER step."""
    index_B = data["offsets"][task] + jax.random.randint(
        rng, (batch_size,), 0, data["counts"][task]
    )
    lengths_B = data["lengths"][index_B]
    inputs_BxTxI, targets_BxT, weights_BxT = encode_babi(
        data["tokens"][index_B], lengths_B, data["answers"][index_B], vocab_size=vocab_size
    )
    return TaskBatch(
        inputs_BxTxI=inputs_BxTxI,
        targets=targets_BxT,
        weights_BxT=weights_BxT,
        lengths_B=lengths_B.astype(jnp.float32),
    )


def build_babi_family(config: ml_collections.ConfigDict) -> TaskFamily:
    """The 20-task bAbI family of Sec. 5.3 from the files in config.data.dir."""
    max_tokens = _positive("data.max_tokens", config.data.max_tokens, 2)
    babi = load_babi(config.data.dir, max_tokens=max_tokens)
    return TaskFamily(
        kind="babi",
        task_names=babi.task_names,
        target_task=len(babi.task_names) - 1,
        input_size=babi.vocab_size,
        output_size=babi.vocab_size,
        likelihood="categorical",
        seq_len=max_tokens,
        data_source=babi.description,
        unit="answer",
        train_data=babi.arrays["train"],
        test_data=babi.arrays["test"],
        params={"vocab": babi.vocab, "pad_id": 0, "answer_id": babi.answer_id},
    )


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------

_BUILDERS = {
    "ngram": build_ngram_family,
    "repeat_copy": build_repeat_copy_family,
    "babi": build_babi_family,
}


def build_family(config: ml_collections.ConfigDict) -> TaskFamily:
    """The task family named by config.task ("ngram", "repeat_copy" or "babi")."""
    if config.task not in _BUILDERS:
        raise ConfigError(f"task={config.task!r} is not a task family; use one of {KINDS}")
    return _BUILDERS[config.task](config)
