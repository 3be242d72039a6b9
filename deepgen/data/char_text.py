"""Character-level language-modelling corpora for SnAp (Menick et al. 2021, Sec. 5: WikiText-103).

Two corpora, each split into train / validation / test:

* ``text8``: text8-style characters (space and a-z, 27 symbols) through
  :func:`deepgen.data.text8.load_text8`: the Wikipedia excerpt embedded in the gensim wheel by
  default, or a text8 file in ``data.dir``.
* ``wikitext103``: the raw character-level WikiText-103 files ``wiki.train.raw``,
  ``wiki.valid.raw`` and ``wiki.test.raw`` in ``data.dir``, read as bytes. The vocabulary is
  the set of byte values of the training file, plus one unknown symbol (last index) for bytes
  that only occur in the held-out files.

Training sees random crops (the paper uses crops of 128 characters); losses are reported in bits
per character.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deepgen.core.errors import ConfigError, DataError
from deepgen.data import text8

CORPORA = ("text8", "wikitext103")
SPLITS = text8.SPLITS
WIKITEXT_FILES = {
    "train": "wiki.train.raw",
    "validation": "wiki.valid.raw",
    "test": "wiki.test.raw",
}
UNKNOWN_SYMBOL = "\N{REPLACEMENT CHARACTER}"


@dataclasses.dataclass(frozen=True, eq=False)
class CharCorpus:
    """One split of a character corpus: int token ids into `symbols`, in reading order."""

    tokens_N: np.ndarray
    symbols: tuple[bytes, ...]  # the bytes each token id stands for (b"" for the unknown id)
    split: str
    source: str

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(self.symbols)

    @property
    def num_tokens(self) -> int:
        """Number of characters in the split."""
        return int(self.tokens_N.shape[0])


def nats_to_bits(nats):
    """Convert a loss in nats to bits (divide by ln 2)."""
    return nats / math.log(2.0)


def decode(tokens, symbols: tuple[bytes, ...]) -> str:
    """Token ids back to text (bytes joined, then UTF-8 with replacement; unknown ids as U+FFFD)."""
    unknown = UNKNOWN_SYMBOL.encode("utf-8")
    pieces = [symbols[int(t)] or unknown for t in np.asarray(tokens).reshape(-1)]
    return b"".join(pieces).decode("utf-8", errors="replace")


def load_char_corpus(
    name: str, split: str, *, data_dir: str = "", source: str = "auto"
) -> CharCorpus:
    """The `split` of corpus `name` (see the module docstring); one-line DataError when missing."""
    if name not in CORPORA:
        raise ConfigError(f"config.data.name={name!r} is not one of {CORPORA}")
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is not one of {SPLITS}")
    if name == "text8":
        text_split = text8.load_text8(split, data_dir=data_dir or None, source=source)
        symbols = tuple(c.encode("ascii") for c in text8.ALPHABET)
        return CharCorpus(text_split.tokens_N, symbols, split, text_split.source)
    return _load_wikitext(split, data_dir)


def _wikitext_path(data_dir: str, split: str) -> str:
    if not data_dir:
        raise DataError(
            "data.name='wikitext103' needs data.dir: a folder with wiki.train.raw, wiki.valid.raw "
            "and wiki.test.raw (the raw character-level WikiText-103 files)"
        )
    path = os.path.join(data_dir, WIKITEXT_FILES[split])
    if not os.path.isfile(path):
        raise DataError(
            f"{path} not found: data.dir must hold the raw WikiText-103 files "
            f"{', '.join(WIKITEXT_FILES.values())}"
        )
    return path


@functools.lru_cache(maxsize=4)
def _read_bytes(path: str, size: int, mtime_ns: int) -> np.ndarray:
    del size, mtime_ns  # cache key only
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DataError(f"{path} is unreadable ({type(err).__name__}: {err})") from err
    if data.size < 2:
        raise DataError(f"{path} holds {data.size} bytes; it is not a WikiText-103 file")
    data.flags.writeable = False
    return data


def _file_bytes(path: str) -> np.ndarray:
    stat = os.stat(path)
    return _read_bytes(path, stat.st_size, stat.st_mtime_ns)


def _load_wikitext(split: str, data_dir: str) -> CharCorpus:
    train_path = _wikitext_path(data_dir, "train")
    path = _wikitext_path(data_dir, split)
    present_256 = np.bincount(_file_bytes(train_path), minlength=256) > 0
    byte_values = np.flatnonzero(present_256)
    unknown_id = len(byte_values)
    byte_to_id_256 = np.full(256, unknown_id, np.int32)
    byte_to_id_256[byte_values] = np.arange(len(byte_values), dtype=np.int32)
    dtype = np.uint8 if unknown_id < 256 else np.int32
    tokens_N = byte_to_id_256[_file_bytes(path)].astype(dtype)
    symbols = (*(bytes([int(b)]) for b in byte_values), b"")
    unknown = int(np.sum(tokens_N == unknown_id)) if split != "train" else 0
    source = (
        f"WikiText-103 raw characters {path} ({len(tokens_N):,} bytes, vocabulary of "
        f"{len(symbols)} from {WIKITEXT_FILES['train']}, {unknown:,} unknown)"
    )
    return CharCorpus(tokens_N, symbols, split, source)


def crop_batch(
    tokens_N: np.ndarray, *, crop_len: int, count: int, rng: np.random.Generator | int
) -> np.ndarray:
    """count random crops of crop_len consecutive tokens (uniform start), int32 (count, crop_len)."""
    return text8.random_crops(tokens_N, seq_len=crop_len, count=count, rng=rng).astype(np.int32)


# ----------------------------------------------------------------------------------------------
# Streams of random crops inside a jitted scan
# ----------------------------------------------------------------------------------------------


class CropEpisode(NamedTuple):
    """Where each stream's current crop starts in the token array, and the step within it."""

    starts_B: jax.Array  # int32
    position: jax.Array  # int32 scalar
    episode_len: jax.Array  # int32 scalar: predictions per crop (crop of episode_len + 1 tokens)


def new_crop_episode(rng: jax.Array, *, num_tokens: int, batch: int, seq_len: int) -> CropEpisode:
    """Uniform random crop starts for every stream; each crop gives seq_len next-char targets."""
    if num_tokens < seq_len + 1:
        raise DataError(
            f"text of {num_tokens:,} characters is shorter than a crop of {seq_len + 1}; "
            "use a shorter data.seq_len"
        )
    starts_B = jax.random.randint(rng, (batch,), 0, num_tokens - seq_len, dtype=jnp.int32)
    return CropEpisode(starts_B, jnp.asarray(0, jnp.int32), jnp.asarray(seq_len, jnp.int32))


def crop_token(
    episode: CropEpisode, tokens_N: jax.Array, *, vocab_size: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Inputs one-hot (B, vocab), next-character targets (B,) and unit loss weights (B,)."""
    index_B = episode.starts_B + episode.position
    x_B = tokens_N[index_B].astype(jnp.int32)
    y_B = tokens_N[index_B + 1].astype(jnp.int32)
    x_BxV = jax.nn.one_hot(x_B, vocab_size, dtype=jnp.float32)
    return x_BxV, y_B, jnp.ones(y_B.shape, jnp.float32)


def advance(episode: CropEpisode) -> tuple[CropEpisode, jax.Array]:
    """Move one character on; also returns whether the crop has just ended (bool scalar)."""
    position = episode.position + 1
    return episode._replace(position=position), position >= episode.episode_len
