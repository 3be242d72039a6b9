"""Aligned parallel text for character-level translation (ByteNet, Kalchbrenner et al. 2016).

Two sources, each giving train / validation / test pairs of UTF-8 lines:

* ``files`` (found in a data.dir that holds both files): ``data_dir/<source_lang>.txt`` and
  ``data_dir/<target_lang>.txt``, each optionally gzipped (``.txt.gz``; the plain file is
  preferred), one sentence per line, line i of one the translation of line i of the other.
  ``../shared/data/bible_es_en`` (``es.txt.gz``, ``en.txt.gz``: 31,077 verse-aligned pairs of the
  public-domain Reina-Valera 1909 and World English Bible) is such a folder. Pairs with an empty
  side are dropped (and counted). The files have no split, so one is made: a seeded permutation
  of the pair indices (``np.random.default_rng(seed)``, the same in every process) whose first
  ``heldout`` pairs are ``test``, the next ``heldout`` ``validation`` and the rest ``train``;
  each split keeps corpus order. A corpus may repeat a pair word for word (the Bible repeats
  "Yahweh spoke to Moses, saying," dozens of times), so train also loses every pair equal to a
  held-out one: no test or validation pair is ever in train, by index or by content.
* ``tfds``: WMT prepared by TFDS (``wmt14_translate/de-en`` by default, the paper's
  English-German task; ``wmt15_translate/de-en`` through ``tfds_name``), read with
  ``tfds.data_source``; the features are the language codes ('de', 'en') and the splits are
  TFDS's own (validation newstest2013, test newstest2014 for WMT14).

There is no embedded default: no registry package ships a real parallel corpus, so loading
without data.dir is a one-line DataError that says what to put in it.

Tokens are bytes shared by source and target: ``PAD = 0``, ``BOS = 1`` (the go symbol fed to
the decoder before the first target byte), ``EOS = 2`` and byte b -> b + 3 (``VOCAB_SIZE =
259``). The paper pads each sentence to the next multiple of 50 (:func:`padded_length`); the decoder's
unfolding bound ``a |s| + b`` (Eq. 2) is ``deepgen.bytenet.model.unfolded_length``.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import re
from collections.abc import Sequence

import numpy as np

from deepgen.core.errors import ConfigError, DataError
from deepgen.data import sources

SPLITS = ("train", "validation", "test")

PAD = 0
BOS = 1
EOS = 2
BYTE_OFFSET = 3  # byte b is token b + BYTE_OFFSET
VOCAB_SIZE = 256 + BYTE_OFFSET  # 259

PAPER_LENGTH_MULTIPLE = 50  # sentences are padded to the next multiple of 50 bytes

TFDS_NAME = "wmt14_translate/de-en"
EXAMPLE_DIR = "../shared/data/bible_es_en"
DEFAULT_HELDOUT = 1000

_LANG_CODE = re.compile(r"[A-Za-z0-9_-]+")
_UTF8_BOM = b"\xef\xbb\xbf"


@dataclasses.dataclass(frozen=True, eq=False)
class ParallelSplit:
    """One split of aligned sentence pairs: UTF-8 bytes without newlines, source then target."""

    source_lines: tuple[bytes, ...]
    target_lines: tuple[bytes, ...]
    split: str
    source: str  # where the pairs come from, how many, and the held-out rule
    source_lang: str
    target_lang: str

    @property
    def num_pairs(self) -> int:
        """Number of sentence pairs."""
        return len(self.source_lines)


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------


def load_parallel(
    split: str,
    *,
    data_dir: str | None = None,
    source: str = "auto",
    source_lang: str,
    target_lang: str,
    heldout: int = DEFAULT_HELDOUT,
    seed: int = 0,
    tfds_name: str = TFDS_NAME,
) -> ParallelSplit:
    """Loads one split of aligned source_lang -> target_lang pairs (see the module docstring).

    ``auto`` uses the two text files when data_dir holds them, else a prepared TFDS dataset
    tfds_name in data_dir; without data_dir it is a one-line DataError. heldout and seed shape
    the split of the files source only; TFDS has its own splits.
    """
    dataset = parallel_sources(
        source_lang=source_lang,
        target_lang=target_lang,
        heldout=heldout,
        seed=seed,
        tfds_name=tfds_name,
    )
    return sources.load(dataset, split, data_dir=data_dir, source=source)


def parallel_sources(
    *,
    source_lang: str,
    target_lang: str,
    heldout: int = DEFAULT_HELDOUT,
    seed: int = 0,
    tfds_name: str = TFDS_NAME,
) -> sources.DatasetSources:
    """The sources of a language pair: 'files' (two aligned text files) and 'tfds'; no default."""
    for option, lang in (("source_lang", source_lang), ("target_lang", target_lang)):
        if not isinstance(lang, str) or not _LANG_CODE.fullmatch(lang):
            raise ConfigError(
                f"{option}={lang!r} is not a language code; use letters, digits, '-' or '_' "
                "(e.g. 'en', 'de', 'es')"
            )
    if source_lang == target_lang:
        raise ConfigError(f"source_lang and target_lang are both {source_lang!r}; pick two")
    if isinstance(heldout, bool) or int(heldout) != heldout or heldout < 1:
        raise ConfigError(f"heldout={heldout!r} must be a positive integer")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ConfigError(f"seed={seed!r} must be a non-negative integer")
    langs = (source_lang, target_lang)

    def load_files(split: str, data_dir: str | None) -> ParallelSplit:
        return _load_files(split, str(data_dir), langs, int(heldout), int(seed))

    def load_tfds(split: str, data_dir: str | None) -> ParallelSplit:
        return _load_tfds(split, data_dir, langs, tfds_name)

    return sources.DatasetSources(
        title=f"{source_lang}-{target_lang} parallel text",
        splits=SPLITS,
        sources={
            "files": sources.Source(
                load_files,
                f"{source_lang}.txt[.gz] and {target_lang}.txt[.gz] (aligned lines, one sentence "
                f"per line, e.g. {EXAMPLE_DIR})",
                found_in=lambda data_dir: all(_find_text_file(data_dir, lang) for lang in langs),
            ),
            "tfds": sources.tfds_source(tfds_name, load_tfds),
        },
        default=None,
    )


SOURCES = ("auto", "files", "tfds")


# ----------------------------------------------------------------------------------------------
# Aligned text files
# ----------------------------------------------------------------------------------------------


def _find_text_file(data_dir: str, lang: str) -> str | None:
    """data_dir/<lang>.txt, else data_dir/<lang>.txt.gz, else None."""
    for file_name in (f"{lang}.txt", f"{lang}.txt.gz"):
        candidate = os.path.join(data_dir, file_name)
        if os.path.isfile(candidate):
            return candidate
    return None


@functools.lru_cache(maxsize=4)
def _read_lines(path: str, size: int, mtime_ns: int) -> tuple[bytes, ...]:
    """The lines of a UTF-8 text file, plain or gzipped (cached per path, size and mtime).

    Newlines are removed (with a '\\r' before them), and so are a leading byte-order mark and
    the empty line after a final newline.
    """
    del size, mtime_ns  # cache key only: a rewritten file is read again
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as text_file:
                data = text_file.read()
        else:
            with open(path, "rb") as text_file:
                data = text_file.read()
    except (OSError, EOFError) as err:
        raise DataError(
            f"parallel text file {path} is unreadable ({type(err).__name__}: "
            f"{sources.first_line(err)}); check the file"
        ) from err
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_number = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"parallel text file {path} is not UTF-8: byte 0x{data[err.start]:02X} at offset "
            f"{err.start:,} (line {line_number:,}); convert it with `iconv -t UTF-8`"
        ) from err
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return tuple(line[:-1] if line.endswith(b"\r") else line for line in lines)


def _stat_key(path: str) -> tuple[str, int, int]:
    stat = os.stat(path)
    return path, stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=4)
def _read_pairs(
    source_key: tuple[str, int, int], target_key: tuple[str, int, int]
) -> tuple[tuple[bytes, ...], tuple[bytes, ...], int]:
    """Aligned (source lines, target lines) without pairs with an empty side, and how many went."""
    source_lines = _read_lines(*source_key)
    target_lines = _read_lines(*target_key)
    if len(source_lines) != len(target_lines):
        raise DataError(
            f"parallel text files are not aligned: {source_key[0]} has {len(source_lines):,} "
            f"lines and {target_key[0]} has {len(target_lines):,}; line i of one must translate "
            "line i of the other"
        )
    kept = [
        (source, target)
        for source, target in zip(source_lines, target_lines, strict=True)
        if source.strip() and target.strip()
    ]
    dropped = len(source_lines) - len(kept)
    return tuple(s for s, _ in kept), tuple(t for _, t in kept), dropped


def heldout_indices(num_pairs: int, *, heldout: int, seed: int) -> dict[str, np.ndarray]:
    """Pair indices of each split: a seeded permutation, first heldout test, next validation.

    The rest is train; each split's indices are sorted (corpus order). The same seed gives the
    same split in every process (np.random.default_rng(seed)).
    """
    if num_pairs <= 2 * heldout:
        raise DataError(
            f"{num_pairs:,} sentence pairs are too few to hold out {heldout:,} for test and "
            f"{heldout:,} for validation; use a smaller heldout or a larger corpus"
        )
    permutation_N = np.random.default_rng(seed).permutation(num_pairs)
    return {
        "test": np.sort(permutation_N[:heldout]),
        "validation": np.sort(permutation_N[heldout : 2 * heldout]),
        "train": np.sort(permutation_N[2 * heldout :]),
    }


def _load_files(
    split: str, data_dir: str, langs: tuple[str, str], heldout: int, seed: int
) -> ParallelSplit:
    """One split of data_dir/<source_lang>.txt[.gz] and data_dir/<target_lang>.txt[.gz]."""
    paths = [_find_text_file(data_dir, lang) for lang in langs]
    missing = [
        os.path.join(data_dir, f"{lang}.txt[.gz]")
        for lang, path in zip(langs, paths, strict=True)
        if path is None
    ]
    if missing:
        raise DataError(
            f"data.dir={data_dir} has no {' or '.join(missing)}; put the aligned files "
            f"{langs[0]}.txt[.gz] and {langs[1]}.txt[.gz] there (one sentence per line, "
            f"e.g. {EXAMPLE_DIR})"
        )
    try:
        keys = [_stat_key(path) for path in paths]
    except OSError as err:
        raise DataError(f"parallel text file {err.filename} vanished; check data.dir") from err
    source_lines, target_lines, dropped = _read_pairs(*keys)
    all_indices = heldout_indices(len(source_lines), heldout=heldout, seed=seed)
    indices = all_indices[split]
    note = ""
    if split == "train":  # a corpus may repeat a pair: keep held-out pairs out of train by content
        held_out = {
            (source_lines[i], target_lines[i])
            for i in np.concatenate([all_indices["test"], all_indices["validation"]])
        }
        kept = [i for i in indices if (source_lines[i], target_lines[i]) not in held_out]
        note = f", {len(indices) - len(kept):,} repeats of a held-out pair removed"
        indices = kept
    description = (
        f"parallel text {paths[0]} and {paths[1]} ({len(source_lines):,} aligned pairs, "
        f"{dropped:,} with an empty side dropped), {split} split of {len(indices):,} pairs "
        f"(held out: {heldout:,} test and {heldout:,} validation pairs by a seed-{seed} "
        f"permutation{note})"
    )
    return ParallelSplit(
        source_lines=tuple(source_lines[i] for i in indices),
        target_lines=tuple(target_lines[i] for i in indices),
        split=split,
        source=description,
        source_lang=langs[0],
        target_lang=langs[1],
    )


# ----------------------------------------------------------------------------------------------
# TFDS (WMT)
# ----------------------------------------------------------------------------------------------


def _as_utf8(value) -> bytes:
    """A TFDS text feature (bytes, numpy bytes or str) as UTF-8 bytes."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bytes | np.bytes_):
        return bytes(value)
    raise TypeError(f"expected text, got {type(value).__name__}")


def _load_tfds(
    split: str, data_dir: str | None, langs: tuple[str, str], tfds_name: str
) -> ParallelSplit:
    """One split of a prepared array_record TFDS translation dataset (e.g. WMT14 de-en)."""
    alternative = (
        f"put aligned {langs[0]}.txt[.gz] and {langs[1]}.txt[.gz] in data.dir and use "
        "source='files'"
    )
    read = sources.load_tfds_split(tfds_name, split, data_dir, alternative=alternative)
    columns = []
    for lang in langs:
        try:
            columns.append([_as_utf8(example[lang]) for example in read.examples])
        except (KeyError, TypeError) as err:
            features = ", ".join(sorted(read.examples[0])) if read.examples else "none"
            raise read.error(
                f"has no usable {lang!r} text feature ({type(err).__name__}: "
                f"{sources.first_line(err)}; features: {features})"
            ) from err
    kept = [(s, t) for s, t in zip(*columns, strict=True) if s.strip() and t.strip()]
    dropped = len(columns[0]) - len(kept)
    return ParallelSplit(
        source_lines=tuple(s for s, _ in kept),
        target_lines=tuple(t for _, t in kept),
        split=split,
        source=(
            f"TFDS {read.description} split {split} ({len(kept):,} pairs, {dropped:,} with an "
            "empty side dropped; TFDS's own split)"
        ),
        source_lang=langs[0],
        target_lang=langs[1],
    )


# ----------------------------------------------------------------------------------------------
# Byte tokens
# ----------------------------------------------------------------------------------------------


def encode(line: bytes | str, *, add_eos: bool) -> np.ndarray:
    """A line (UTF-8 bytes; a str is UTF-8 encoded) to int32 tokens byte + 3, then EOS if asked."""
    data = line.encode("utf-8") if isinstance(line, str) else bytes(line)
    tokens_T = np.frombuffer(data, dtype=np.uint8).astype(np.int32) + BYTE_OFFSET
    if add_eos:
        tokens_T = np.append(tokens_T, np.int32(EOS))
    return tokens_T


def decode(tokens) -> str:
    """Tokens back to text: stops at the first EOS, skips PAD and BOS, UTF-8 errors replaced."""
    tokens_T = np.asarray(tokens)
    if tokens_T.ndim != 1:
        raise ValueError(f"decode expects a 1-D token sequence, got shape {tokens_T.shape}")
    if tokens_T.size and (
        not np.issubdtype(tokens_T.dtype, np.integer)
        or tokens_T.min() < 0
        or tokens_T.max() >= VOCAB_SIZE
    ):
        raise ValueError(
            f"decode expects integer tokens in [0, {VOCAB_SIZE}), got dtype {tokens_T.dtype}"
        )
    eos = np.flatnonzero(tokens_T == EOS)
    if eos.size:
        tokens_T = tokens_T[: eos[0]]
    byte_tokens = tokens_T[tokens_T >= BYTE_OFFSET] - BYTE_OFFSET
    return byte_tokens.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def pad_batch(lines: Sequence[bytes], *, length: int, add_eos: bool) -> np.ndarray:
    """Encoded lines in an int32 (B, length) array, PAD-filled; ValueError if one is too long."""
    batch_BxT = np.full((len(lines), length), PAD, dtype=np.int32)
    for row, line in enumerate(lines):
        tokens_T = encode(line, add_eos=add_eos)
        if len(tokens_T) > length:
            raise ValueError(
                f"line {row} has {len(tokens_T)} tokens (with EOS: {add_eos}), more than "
                f"length={length}; use a larger length or filter_by_length"
            )
        batch_BxT[row, : len(tokens_T)] = tokens_T
    return batch_BxT


def padded_length(n: int, multiple: int = PAPER_LENGTH_MULTIPLE) -> int:
    """The smallest multiple of `multiple` that is >= n (the paper pads to multiples of 50)."""
    if n < 0 or multiple < 1:
        raise ValueError(f"need n >= 0 and multiple >= 1, got n={n}, multiple={multiple}")
    return -(-n // multiple) * multiple


def filter_by_length(split: ParallelSplit, max_bytes: int) -> ParallelSplit:
    """The pairs whose source and target, each with its EOS, fit in max_bytes tokens."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    kept = [
        (s, t)
        for s, t in zip(split.source_lines, split.target_lines, strict=True)
        if len(s) + 1 <= max_bytes and len(t) + 1 <= max_bytes
    ]
    return dataclasses.replace(
        split,
        source_lines=tuple(s for s, _ in kept),
        target_lines=tuple(t for _, t in kept),
        source=(
            f"{split.source}; kept {len(kept):,} of {split.num_pairs:,} pairs whose source and "
            f"target with EOS fit in {max_bytes} tokens"
        ),
    )
