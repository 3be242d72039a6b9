"""The 20 bAbI question-answering tasks (Weston et al. 2015, arXiv 1502.05698) from the task files.

Shared by the automated curriculum (Graves et al. 2017, arXiv 1704.03003, Sec. 5.3: one task per
bandit arm) and SAM (Rae et al. 2016, arXiv 1610.09027, Sec. 4.3: one model trained jointly on
all 20 tasks). bAbI cannot be downloaded at run time: put the files of bAbI v1.2
(``tasks_1-20_v1-2.tar.gz`` from the Facebook bAbI page) in ``data.dir``, either the folder
``tasks_1-20_v1-2`` itself or its ``en-10k`` (10,000 training questions per task, the setting of
both papers) or ``en`` (1,000 per task) subfolder. :func:`find_babi_files` looks in
``data.dir/en-10k``, then ``data.dir/en``, then ``data.dir``, and needs one file
``qa{N}_{name}_{train,test}.txt`` per task and split (N = 1..20); anything missing or unreadable
is a :class:`~deepgen.core.errors.DataError` whose one line says what to put where.

File format (v1.2): every line is ``<sentence number> <text>``; numbering restarts at 1 with a
new story. A statement is a sentence; a question line is ``<question>\\t<answer>\\t<supporting
sentence numbers>``. Each question becomes one :class:`BabiExample`: the words of every statement
of its story so far (earlier questions left out) followed by the question's words. Words are
lowercased, with '.' and '?' as tokens of their own; an answer is one token even when it lists
several words ("n,s" in task 19, "apple,milk" in task 8).

Arrays (:func:`babi_arrays`): token ids right-padded to ``max_tokens`` with PAD (id 0, an
all-zero input vector), each example followed by the ANSWER token (id 1) at whose step the answer
is predicted as a class over the vocabulary; examples longer than ``max_tokens`` keep their last
tokens. :func:`encode_babi` turns rows of ids into one-hot inputs, targets and the loss mask.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deepgen.core.errors import ConfigError, DataError

SPLITS = ("train", "test")
BABI_TASK_NAMES = (
    "qa1_single-supporting-fact",
    "qa2_two-supporting-facts",
    "qa3_three-supporting-facts",
    "qa4_two-arg-relations",
    "qa5_three-arg-relations",
    "qa6_yes-no-questions",
    "qa7_counting",
    "qa8_lists-sets",
    "qa9_simple-negation",
    "qa10_indefinite-knowledge",
    "qa11_basic-coreference",
    "qa12_conjunction",
    "qa13_compound-coreference",
    "qa14_time-reasoning",
    "qa15_basic-deduction",
    "qa16_basic-induction",
    "qa17_positional-reasoning",
    "qa18_size-reasoning",
    "qa19_path-finding",
    "qa20_agents-motivations",
)
BABI_NUM_TASKS = len(BABI_TASK_NAMES)
BABI_PAD = "<pad>"  # id 0, an all-zero input vector
BABI_ANSWER = "<answer>"  # id 1, the query token after the question; the answer is predicted there
BABI_SUBFOLDERS = ("en-10k", "en")  # searched in this order, then data.dir itself
BABI_HINT = (
    "put the bAbI v1.2 task files (tasks_1-20_v1-2/en-10k or en, qa{N}_{name}_{train,test}.txt "
    "for N = 1..20) in data.dir; bAbI cannot be downloaded at run time"
)
_BABI_TOKEN = re.compile(r"[^\s.?]+|[.?]")


class BabiExample(NamedTuple):
    """One question: the story sentences before it, then the question, as word tokens."""

    tokens: tuple[str, ...]  # story words, question words (no ANSWER token)
    answer: str  # the answer as one token, e.g. "kitchen" or "n,s"
    question_len: int  # number of question tokens at the end of tokens


def babi_tokenize(text: str) -> list[str]:
    """Lowercased words split on whitespace, with '.' and '?' as tokens of their own."""
    return _BABI_TOKEN.findall(text.lower())


def parse_babi(text: str, *, path: str = "<text>") -> list[BabiExample]:
    """The examples of one bAbI file: one per question line, in file order."""
    examples = []
    story: list[list[str]] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        number, _, body = line.strip().partition(" ")
        if not number.isdigit():
            raise DataError(
                f"{path} line {line_number} does not start with a sentence number; {BABI_HINT}"
            )
        if int(number) == 1:
            story = []
        if "\t" in body:
            question, answer = body.split("\t")[:2]
            question_tokens = babi_tokenize(question)
            tokens = [token for sentence in story for token in sentence] + question_tokens
            examples.append(
                BabiExample(tuple(tokens), answer.strip().lower(), len(question_tokens))
            )
        else:
            story.append(babi_tokenize(body))
    return examples


def find_babi_files(data_dir: str) -> tuple[str, dict[str, dict[str, str]]]:
    """(folder, {task name: {split: path}}) of the 40 task files; one-line DataError if absent."""
    if not data_dir or not os.path.isdir(data_dir):
        raise DataError(f"data.dir={data_dir!r} is not a directory; {BABI_HINT}")
    candidates = [os.path.join(data_dir, sub) for sub in BABI_SUBFOLDERS] + [data_dir]
    folder = next(
        (path for path in candidates if glob.glob(os.path.join(glob.escape(path), "qa*_*.txt"))),
        data_dir,
    )
    files: dict[str, dict[str, str]] = {}
    for number in range(1, BABI_NUM_TASKS + 1):
        paths = {}
        for split in SPLITS:
            pattern = os.path.join(glob.escape(folder), f"qa{number}_*_{split}.txt")
            matches = sorted(glob.glob(pattern))
            if len(matches) != 1:
                found = "none" if not matches else ", ".join(os.path.basename(m) for m in matches)
                raise DataError(
                    f"data.dir={data_dir!r}: expected one file qa{number}_*_{split}.txt in "
                    f"{folder}, found {found}; {BABI_HINT}"
                )
            paths[split] = matches[0]
        name = os.path.basename(paths["train"])[: -len("_train.txt")]
        files[name] = paths
    return folder, files


def read_babi(path: str) -> list[BabiExample]:
    """The examples of one task file, or a one-line DataError."""
    try:
        with open(path, encoding="utf-8") as babi_file:
            text = babi_file.read()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(
            f"bAbI file {path} is unreadable ({type(err).__name__}); {BABI_HINT}"
        ) from err
    examples = parse_babi(text, path=path)
    if not examples:
        raise DataError(f"bAbI file {path} has no questions; {BABI_HINT}")
    return examples


def babi_vocab(examples: Sequence[BabiExample]) -> tuple[str, ...]:
    """PAD, ANSWER, then every word and answer of the examples, sorted."""
    words = {token for example in examples for token in example.tokens}
    words |= {example.answer for example in examples}
    return (BABI_PAD, BABI_ANSWER, *sorted(words))


def babi_arrays(
    examples_per_task: Sequence[Sequence[BabiExample]],
    word_ids: Mapping[str, int],
    *,
    max_tokens: int,
) -> dict[str, np.ndarray]:
    """Padded token ids of every example, tasks concatenated, with per-task offsets and counts.

    tokens (N, max_tokens): the last max_tokens of story + question + ANSWER, right-padded with
    PAD (0); lengths (N,) real tokens; answers (N,) answer ids; offsets and counts (K,).
    """
    dtype = np.uint8 if len(word_ids) <= 256 else np.int32
    rows, lengths, answers, counts = [], [], [], []
    for examples in examples_per_task:
        counts.append(len(examples))
        for example in examples:
            ids = [word_ids[token] for token in example.tokens] + [word_ids[BABI_ANSWER]]
            ids = ids[-max_tokens:]
            rows.append(ids + [0] * (max_tokens - len(ids)))
            lengths.append(len(ids))
            answers.append(word_ids[example.answer])
    counts_K = np.asarray(counts, np.int32)
    return {
        "tokens": np.asarray(rows, dtype).reshape(len(rows), max_tokens),
        "lengths": np.asarray(lengths, np.int32),
        "answers": np.asarray(answers, np.int32),
        "offsets": (np.cumsum(counts_K) - counts_K).astype(np.int32),
        "counts": counts_K,
    }


def babi_task_ids(counts_K: np.ndarray) -> np.ndarray:
    """The task index of every example of babi_arrays' concatenation: int32 (N,)."""
    counts_K = np.asarray(counts_K)
    return np.repeat(np.arange(len(counts_K), dtype=np.int32), counts_K)


@dataclasses.dataclass(frozen=True, eq=False)
class BabiData:
    """The 20 tasks read from data.dir: vocabulary and the arrays of babi_arrays per split."""

    folder: str  # where the task files were found
    variant: str  # "en-10k", "en" or "files directly in data.dir"
    task_names: tuple[str, ...]  # e.g. "qa1_single-supporting-fact", in task order
    vocab: tuple[str, ...]  # id -> word; PAD is 0 and ANSWER 1
    max_tokens: int  # T of every row
    arrays: Mapping[str, Mapping[str, np.ndarray]]  # split -> babi_arrays' dict

    @property
    def vocab_size(self) -> int:
        """Input channels and output classes: the vocabulary with PAD and ANSWER."""
        return len(self.vocab)

    @property
    def answer_id(self) -> int:
        """Id of the ANSWER token."""
        return self.vocab.index(BABI_ANSWER)

    @property
    def description(self) -> str:
        """Where the files were found and how many questions each split holds."""
        counts = {split: int(self.arrays[split]["counts"].sum()) for split in SPLITS}
        return (
            f"bAbI task files in {self.folder} ({self.variant}): {counts['train']:,} train and "
            f"{counts['test']:,} test questions, vocabulary {len(self.vocab)} (with PAD and ANSWER)"
        )


def load_babi(data_dir: str, *, max_tokens: int | None) -> BabiData:
    """Reads the 40 task files under data_dir; max_tokens None keeps the longest example whole.

    The vocabulary covers both splits, so that test questions never hold unknown words. A
    max_tokens that cannot hold the longest question plus the ANSWER token is a ConfigError.
    """
    folder, files = find_babi_files(data_dir)
    examples = {split: [read_babi(paths[split]) for paths in files.values()] for split in SPLITS}
    every = [e for split in SPLITS for task in examples[split] for e in task]
    vocab = babi_vocab(every)
    word_ids = {word: index for index, word in enumerate(vocab)}
    if max_tokens is None:
        max_tokens = max(len(e.tokens) for e in every) + 1
    question_len = max(e.question_len for e in every)
    if question_len + 1 > max_tokens:
        raise ConfigError(
            f"data.max_tokens={max_tokens} cannot hold the longest question plus the ANSWER token "
            f"({question_len + 1} tokens); raise it"
        )
    arrays = {
        split: babi_arrays(examples[split], word_ids, max_tokens=max_tokens) for split in SPLITS
    }
    variant = os.path.basename(os.path.normpath(folder))
    variant = variant if variant in BABI_SUBFOLDERS else "files directly in data.dir"
    return BabiData(
        folder=folder,
        variant=variant,
        task_names=tuple(files),
        vocab=vocab,
        max_tokens=int(max_tokens),
        arrays=arrays,
    )


def encode_babi(
    tokens_BxT: jax.Array, lengths_B: jax.Array, answers_B: jax.Array, *, vocab_size: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One-hot inputs (PAD all zero), int32 targets (the answer at the ANSWER step, else 0), mask.

    Returns inputs_BxTxI float32 (I = vocab_size), targets_BxT int32 and mask_BxT float32 (1 at
    the last real step, the ANSWER token, where the answer is predicted).
    """
    tokens_BxT = jnp.asarray(tokens_BxT).astype(jnp.int32)
    steps = tokens_BxT.shape[1]
    answer_step_BxT = jnp.arange(steps)[None, :] == (jnp.asarray(lengths_B) - 1)[:, None]
    inputs_BxTxI = jax.nn.one_hot(tokens_BxT, vocab_size, dtype=jnp.float32)
    inputs_BxTxI = inputs_BxTxI * (tokens_BxT > 0)[..., None].astype(jnp.float32)
    targets_BxT = jnp.where(answer_step_BxT, jnp.asarray(answers_B)[:, None], 0)
    return inputs_BxTxI, targets_BxT.astype(jnp.int32), answer_step_BxT.astype(jnp.float32)
