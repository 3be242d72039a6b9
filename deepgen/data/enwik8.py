"""enwik8 bytes for byte-level language modelling (ByteNet, Kalchbrenner et al. 2016, Sec. 6).

enwik8 is the first 100,000,000 bytes of an English Wikipedia XML dump (the Hutter Prize file):
raw UTF-8 MediaWiki XML, markup included. Tokens are the byte values themselves (0..255,
``VOCAB_SIZE = 256``); enwik8 uses 205 of them, and the unused ids change no bits-per-byte.

Three sources, offline unless asked otherwise:

* ``embedded`` (the default without data.dir): the raw bytes, unfiltered, of the English
  Wikipedia excerpt inside the gensim wheel (the same file :mod:`deepgen.data.text8` filters):
  6,089,746 bytes of MediaWiki XML, split 90%/5%/5% by position.
* ``file``: ``data_dir/enwik8`` (the 100,000,000-byte file) or ``data_dir/enwik8.zip`` (member
  ``enwik8``). The paper's split is the first 90,000,000 bytes for train, the next 5,000,000 for
  validation and the last 5,000,000 for test; a file of any other length is split 90%/5%/5% by
  position, and the split's ``source`` says so.
* ``download``: fetches ``enwik8.zip`` from mattmahoney.net, extracts ``enwik8`` and checks its
  size, sha256 and SHA-1 (the content, not the zip), then reads it as ``file``.

The paper's evaluation protocol (:func:`lm_windows`): windows of 500 bytes whose first 100 are
context only and whose last 400 are predicted, so that every byte after the first 100 of a split
is scored exactly once. Baselines: :func:`order0_entropy_bits`, the order-0 entropy of the same
bytes a model has to beat, and :func:`unigram_cross_entropy_bits`, a train-fitted unigram model.
"""

from __future__ import annotations

import bz2
import dataclasses
import functools
import hashlib
import math
import os
import zipfile

import numpy as np

from deepgen.core.errors import DataError
from deepgen.data import sources, text8
from deepgen.data.embedded import installed_package_file

VOCAB_SIZE = 256
SPLITS = ("train", "validation", "test")

ENWIK8_URL = "http://mattmahoney.net/dc/enwik8.zip"
ENWIK8_FILE_NAME = "enwik8"
ENWIK8_ZIP_NAME = "enwik8.zip"
ENWIK8_NUM_BYTES = 100_000_000
# Digests of the 100,000,000-byte enwik8 file itself (not of enwik8.zip, which mirrors repack).
# None was computed here (no network). The sha256 is pinned identically by several independent
# public projects; the SHA-1 and MD5 are the values Matt Mahoney publishes for enwik8. The
# download checks the size, the sha256 and the SHA-1; the MD5 is kept for reference.
ENWIK8_SHA256 = "2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8"
ENWIK8_SHA1 = "57b8363b814821dc9d47aa4d41f58733519076b2"
ENWIK8_MD5 = "a1fa5ffddb56f4953e226637dabbb36a"

# The paper's split of the 100M-byte file: train [0, 90M), validation [90M, 95M), test [95M, 100M).
ENWIK8_SPLIT_BYTES = {"train": 90_000_000, "validation": 5_000_000, "test": 5_000_000}
# Any other length is split by position at these percentages (as text8.SPLIT_PERCENT).
SPLIT_PERCENT = text8.SPLIT_PERCENT

# The paper's evaluation windows: 500 bytes, the first 100 context only, the last 400 scored.
PAPER_SEQ_LEN = 500
PAPER_CONTEXT = 100

EMBEDDED_RELATIVE_PATH = text8.EMBEDDED_RELATIVE_PATH
EMBEDDED_DESCRIPTION = (
    "embedded Wikipedia XML (gensim enwiki-latest-pages-articles1 excerpt, raw bytes)"
)
_EMBEDDED_MISSING_MESSAGE = (
    "embedded Wikipedia bytes need the gensim wheel: run `pip install --no-deps gensim` "
    "(or `make install`), or set data.dir to a folder with enwik8 (or enwik8.zip)"
)

_CHUNK_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True, eq=False)
class ByteSplit:
    """One split of a byte stream: uint8 byte values (read-only), in file order."""

    bytes_N: np.ndarray
    split: str
    source: str  # where the bytes come from, how many, and the split rule

    @property
    def num_tokens(self) -> int:
        """Number of bytes in the split."""
        return int(self.bytes_N.shape[0])


# ----------------------------------------------------------------------------------------------
# Public entry point and splits
# ----------------------------------------------------------------------------------------------


def load_enwik8(split: str, *, data_dir: str | None = None, source: str = "auto") -> ByteSplit:
    """Loads one split of enwik8 (or the embedded Wikipedia XML) as uint8 bytes.

    ``auto`` uses the embedded bytes when data_dir is None or "", else ``data_dir/enwik8`` or
    ``data_dir/enwik8.zip`` (the unzipped file preferred); it never downloads. The returned
    bytes are a read-only view shared between calls.
    """
    return sources.load(ENWIK8_SOURCES, split, data_dir=data_dir, source=source)


def split_bounds(num_bytes: int, split: str) -> tuple[int, int]:
    """[start, stop) of a split: 90M/5M/5M for the 100M-byte enwik8, else 90%/5%/5% by position."""
    sources.check_choice("split", split, SPLITS)
    if num_bytes == ENWIK8_NUM_BYTES:
        train_stop = ENWIK8_SPLIT_BYTES["train"]
        validation_stop = train_stop + ENWIK8_SPLIT_BYTES["validation"]
    else:
        train_stop = num_bytes * SPLIT_PERCENT["train"] // 100
        validation_stop = num_bytes * (SPLIT_PERCENT["train"] + SPLIT_PERCENT["validation"]) // 100
    bounds = {
        "train": (0, train_stop),
        "validation": (train_stop, validation_stop),
        "test": (validation_stop, num_bytes),
    }
    return bounds[split]


def _split_rule(num_bytes: int) -> str:
    if num_bytes == ENWIK8_NUM_BYTES:
        return "the paper's split 90M/5M/5M"
    return f"not the standard {ENWIK8_NUM_BYTES:,} bytes: split 90%/5%/5% by position"


def _make_split(bytes_N: np.ndarray, split: str, description: str) -> ByteSplit:
    start, stop = split_bounds(len(bytes_N), split)
    return ByteSplit(
        bytes_N=bytes_N[start:stop],
        split=split,
        source=f"{description}, {split} split (bytes {start:,} to {stop:,})",
    )


def _require_splittable(num_bytes: int, what: str) -> None:
    """DataError unless all three splits of num_bytes bytes are non-empty."""
    if min(stop - start for start, stop in (split_bounds(num_bytes, s) for s in SPLITS)) == 0:
        raise DataError(
            f"{what} has only {num_bytes} bytes, too few to split 90%/5%/5%; "
            f"use the enwik8 from {ENWIK8_URL}"
        )


# ----------------------------------------------------------------------------------------------
# Embedded Wikipedia excerpt (gensim wheel), raw
# ----------------------------------------------------------------------------------------------


def _embedded_xml_path() -> str:
    """Finds the enwiki excerpt inside the installed gensim package without importing gensim."""
    path = installed_package_file("gensim", *EMBEDDED_RELATIVE_PATH)
    if path is None:
        raise DataError(_EMBEDDED_MISSING_MESSAGE)
    return path


@functools.lru_cache(maxsize=2)
def _read_embedded_bytes(path: str) -> np.ndarray:
    """Decompresses the excerpt once per process: its raw bytes, read-only."""
    try:
        with bz2.open(path, "rb") as xml_file:
            data = xml_file.read()
    except (OSError, EOFError, ValueError) as err:
        raise DataError(
            f"embedded Wikipedia file {path} is unreadable ({type(err).__name__}); "
            "reinstall it with `pip install --no-deps --force-reinstall gensim`"
        ) from err
    _require_splittable(len(data), f"embedded Wikipedia file {path}")
    bytes_N = np.frombuffer(data, dtype=np.uint8)
    bytes_N.flags.writeable = False
    return bytes_N


def _load_embedded(split: str) -> ByteSplit:
    """The embedded excerpt's raw XML bytes, split 90/5/5 by position."""
    bytes_N = _read_embedded_bytes(_embedded_xml_path())
    description = f"{EMBEDDED_DESCRIPTION}, {len(bytes_N):,} bytes, split 90%/5%/5% by position"
    return _make_split(bytes_N, split, description)


# ----------------------------------------------------------------------------------------------
# enwik8 files
# ----------------------------------------------------------------------------------------------


def _find_enwik8_file(data_dir: str) -> str | None:
    """data_dir/enwik8, else data_dir/enwik8.zip, else None."""
    for file_name in (ENWIK8_FILE_NAME, ENWIK8_ZIP_NAME):
        candidate = os.path.join(data_dir, file_name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _read_enwik8_bytes(path: str) -> np.ndarray:
    """The bytes of an enwik8 file, or of the enwik8 member of a zip (uint8)."""
    try:
        if not path.endswith(".zip"):
            return np.fromfile(path, dtype=np.uint8)
        with zipfile.ZipFile(path) as archive:
            return np.frombuffer(
                archive.read(sources.zip_member(archive, path, ENWIK8_FILE_NAME, ENWIK8_URL)),
                dtype=np.uint8,
            )
    except FileNotFoundError as err:
        raise DataError(f"enwik8 file {path} does not exist; check data.dir") from err
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise DataError(
            f"enwik8 file {path} is unreadable ({type(err).__name__}: {sources.first_line(err)}); "
            f"re-download it from {ENWIK8_URL}"
        ) from err


@functools.lru_cache(maxsize=2)
def _read_file_bytes(path: str, size: int, mtime_ns: int) -> tuple[np.ndarray, str]:
    """Bytes of an enwik8 file (cached per path, size and mtime) and a provenance note."""
    del size, mtime_ns  # cache key only: a rewritten file is read again
    bytes_N = _read_enwik8_bytes(path)
    num_bytes = len(bytes_N)
    _require_splittable(num_bytes, f"enwik8 file {path}")
    if num_bytes == ENWIK8_NUM_BYTES:
        is_official = hashlib.sha256(bytes_N).hexdigest() == ENWIK8_SHA256
        identity = (
            "official enwik8, sha256 verified" if is_official else "sha256 differs from enwik8"
        )
        note = f"{identity}, {num_bytes:,} bytes, {_split_rule(num_bytes)}"
    else:
        note = f"{num_bytes:,} bytes, {_split_rule(num_bytes)}"
    bytes_N.flags.writeable = False
    return bytes_N, note


def _load_file(split: str, path: str) -> ByteSplit:
    """One split of an enwik8 file or zip."""
    try:
        stat = os.stat(path)
    except OSError as err:
        raise DataError(f"enwik8 file {path} does not exist; check data.dir") from err
    bytes_N, note = _read_file_bytes(path, stat.st_size, stat.st_mtime_ns)
    return _make_split(bytes_N, split, f"enwik8 file {path} ({note})")


def _load_from_dir(split: str, data_dir: str) -> ByteSplit:
    """One split of data_dir/enwik8 or data_dir/enwik8.zip."""
    path = _find_enwik8_file(data_dir)
    if path is None:
        raise DataError(
            f"data.dir={data_dir} has no enwik8 data: expected "
            f"{os.path.join(data_dir, ENWIK8_FILE_NAME)} (the unzipped 100,000,000-byte file) "
            f"or {os.path.join(data_dir, ENWIK8_ZIP_NAME)} from {ENWIK8_URL}; put it there, "
            "use source='download', or leave data.dir empty for the embedded bytes"
        )
    return _load_file(split, path)


# ----------------------------------------------------------------------------------------------
# Download (real network; never called by auto or file)
# ----------------------------------------------------------------------------------------------


def _load_download(split: str, data_dir: str) -> ByteSplit:
    """One split of enwik8, downloaded and verified into data_dir first unless already there."""
    return _load_file(split, download_enwik8(data_dir))


def _content_digests(path: str) -> tuple[int, str, str]:
    """(size, sha256, sha1) of a file, read in chunks."""
    sha256, sha1, size = hashlib.sha256(), hashlib.sha1(), 0
    with open(path, "rb") as data_file:
        for chunk in iter(lambda: data_file.read(_CHUNK_BYTES), b""):
            sha256.update(chunk)
            sha1.update(chunk)
            size += len(chunk)
    return size, sha256.hexdigest(), sha1.hexdigest()


@functools.lru_cache(maxsize=4)
def _verified_digests(path: str, size: int, mtime_ns: int) -> tuple[int, str, str]:
    """_content_digests, cached per path, size and mtime."""
    del size, mtime_ns  # cache key only
    return _content_digests(path)


def _is_verified_enwik8(path: str) -> bool:
    """Whether path is a file with enwik8's size, sha256 and SHA-1."""
    try:
        stat = os.stat(path)
    except OSError:
        return False
    if stat.st_size != ENWIK8_NUM_BYTES:
        return False
    _, sha256, sha1 = _verified_digests(path, stat.st_size, stat.st_mtime_ns)
    return sha256 == ENWIK8_SHA256 and sha1 == ENWIK8_SHA1


def download_enwik8(data_dir: str) -> str:
    """Downloads enwik8.zip into data_dir (created if needed), extracts and verifies enwik8.

    Returns the path of ``data_dir/enwik8``. A verified enwik8 already there is kept (no
    network then). The zip goes to ``enwik8.zip.part`` and the extracted file to
    ``enwik8.part``; the extracted content must have ENWIK8_NUM_BYTES bytes, ENWIK8_SHA256 and
    ENWIK8_SHA1 (the zip's own hash is not checked: mirrors repack it). On a mismatch the
    extracted file and the zip are removed and a one-line DataError says what to do by hand;
    so is an unreachable server (60 s socket timeout).
    """
    data_dir = sources.writable_dir(data_dir)
    path = os.path.join(data_dir, ENWIK8_FILE_NAME)
    if _is_verified_enwik8(path):
        return path

    zip_path = os.path.join(data_dir, ENWIK8_ZIP_NAME)
    manual_hint = (
        f"download {ENWIK8_URL} by hand, unzip enwik8 into {data_dir} and use source='file'"
    )
    sources.download(ENWIK8_URL, zip_path, manual_hint)

    partial_path = path + ".part"
    try:
        with zipfile.ZipFile(zip_path) as archive:
            member = sources.zip_member(archive, zip_path, ENWIK8_FILE_NAME, ENWIK8_URL)
            with archive.open(member) as member_file, open(partial_path, "wb") as out_file:
                for chunk in iter(lambda: member_file.read(_CHUNK_BYTES), b""):
                    out_file.write(chunk)
    except DataError:
        sources.remove_quietly(partial_path)
        sources.remove_quietly(zip_path)
        raise
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        sources.remove_quietly(partial_path)
        sources.remove_quietly(zip_path)
        raise DataError(
            f"downloaded {zip_path} could not be extracted ({type(err).__name__}: "
            f"{sources.first_line(err)}); {manual_hint}"
        ) from err

    size, sha256, sha1 = _content_digests(partial_path)
    if (size, sha256, sha1) != (ENWIK8_NUM_BYTES, ENWIK8_SHA256, ENWIK8_SHA1):
        sources.remove_quietly(partial_path)
        sources.remove_quietly(zip_path)
        raise DataError(
            f"enwik8 extracted from {ENWIK8_URL} has {size:,} bytes, sha256 {sha256} and SHA-1 "
            f"{sha1}, expected {ENWIK8_NUM_BYTES:,} bytes, sha256 {ENWIK8_SHA256} and SHA-1 "
            f"{ENWIK8_SHA1}; removed it; {manual_hint}"
        )
    os.replace(partial_path, path)
    return path


# ----------------------------------------------------------------------------------------------
# Evaluation windows (the paper's protocol)
# ----------------------------------------------------------------------------------------------


def _as_bytes(bytes_N) -> np.ndarray:
    """A 1-D uint8 array of byte values from bytes, a uint8 array or integers in [0, 256)."""
    if isinstance(bytes_N, bytes | bytearray | memoryview):
        return np.frombuffer(bytes_N, dtype=np.uint8)
    array = np.asarray(bytes_N)
    if array.ndim != 1:
        raise ValueError(f"expected a 1-D byte sequence, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if array.size and (
        not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() >= VOCAB_SIZE
    ):
        raise ValueError(f"expected byte values in [0, {VOCAB_SIZE}), got dtype {array.dtype}")
    return array.astype(np.uint8)


def lm_windows(bytes_N, *, seq_len: int, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation windows that score every byte at position >= context exactly once.

    Window k covers bytes [k * step, k * step + seq_len) with step = seq_len - context; its
    first `context` bytes are context only and its last `step` bytes are scored (the paper:
    seq_len=500, context=100, 400 scored). When N - context is not a multiple of step, one last
    window ends at the last byte and scores only the bytes no earlier window scored. Returns
    ``(windows_WxL, scored_WxL)``: uint8 windows (a copy) and a bool mask of scored positions.
    The scored positions tile [context, N) exactly once; bytes before `context` are never scored.
    """
    data_N = _as_bytes(bytes_N)
    if isinstance(seq_len, bool) or int(seq_len) != seq_len or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if isinstance(context, bool) or int(context) != context or not 0 <= context < seq_len:
        raise ValueError(f"context must be an integer in [0, seq_len={seq_len}), got {context!r}")
    seq_len, context = int(seq_len), int(context)
    num_bytes = len(data_N)
    if num_bytes < seq_len:
        raise DataError(
            f"text of {num_bytes:,} bytes is shorter than seq_len={seq_len}; "
            "use a longer split or a shorter seq_len"
        )
    step = seq_len - context
    num_full = (num_bytes - seq_len) // step + 1
    starts_W = np.arange(num_full, dtype=np.int64) * step
    scored_WxL = np.zeros((num_full, seq_len), dtype=bool)
    scored_WxL[:, context:] = True
    covered_stop = (num_full - 1) * step + seq_len  # one past the last byte scored so far
    if covered_stop < num_bytes:
        last_start = num_bytes - seq_len
        last_scored_L = np.arange(seq_len) >= covered_stop - last_start
        starts_W = np.append(starts_W, last_start)
        scored_WxL = np.concatenate([scored_WxL, last_scored_L[None]], axis=0)
    windows_WxL = data_N[starts_W[:, None] + np.arange(seq_len, dtype=np.int64)]
    return windows_WxL, scored_WxL


# ----------------------------------------------------------------------------------------------
# Baselines in bits per byte
# ----------------------------------------------------------------------------------------------


def order0_entropy_bits(bytes_N) -> float:
    """Order-0 entropy of the bytes, -sum_b p(b) log2 p(b) with p their own frequencies (bits).

    The "order-0 byte entropy of the same text" a model must beat: what an ideal code that
    knows these bytes' frequencies, and nothing else, spends per byte.
    """
    data_N = _as_bytes(bytes_N)
    if data_N.size == 0:
        raise ValueError("order0_entropy_bits needs at least one byte")
    counts = np.bincount(data_N, minlength=VOCAB_SIZE).astype(np.float64)
    p = counts[counts > 0] / data_N.size
    return float(-(p * np.log2(p)).sum())


def unigram_cross_entropy_bits(train_bytes_N, test_bytes_M) -> float:
    """Bits per byte of the test bytes under the add-one-smoothed train byte frequencies.

    p(b) = (count_train(b) + 1) / (N + 256) over all 256 byte values; returns
    -mean log2 p(test byte). With no training bytes this is uniform: 8 bits.
    """
    train = _as_bytes(train_bytes_N)
    test = _as_bytes(test_bytes_M)
    if test.size == 0:
        raise ValueError("unigram_cross_entropy_bits needs at least one test byte")
    counts_K = np.bincount(train, minlength=VOCAB_SIZE).astype(np.float64) + 1.0
    log2_probability_K = np.log2(counts_K) - math.log2(counts_K.sum())
    test_counts_K = np.bincount(test, minlength=VOCAB_SIZE).astype(np.float64)
    return float(-(test_counts_K @ log2_probability_K) / test.size)


def decode(bytes_N) -> str:
    """Byte values (bytes, uint8 array or ints in [0, 256)) to text: UTF-8, errors replaced."""
    return _as_bytes(bytes_N).tobytes().decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------------------------
# The sources (declared after their loaders)
# ----------------------------------------------------------------------------------------------

ENWIK8_SOURCES = sources.DatasetSources(
    title="enwik8",
    splits=SPLITS,
    sources={
        "embedded": sources.embedded_source(_load_embedded, f"the {EMBEDDED_DESCRIPTION}"),
        "file": sources.Source(
            _load_from_dir,
            f"{ENWIK8_FILE_NAME} or {ENWIK8_ZIP_NAME} (from {ENWIK8_URL})",
            found_in=lambda data_dir: _find_enwik8_file(data_dir) is not None,
        ),
        "download": sources.Source(
            _load_download,
            f"{ENWIK8_ZIP_NAME}, downloaded from {ENWIK8_URL}",
            data_dir="created",
        ),
    },
)
SOURCES = ENWIK8_SOURCES.choices  # ("auto", "embedded", "file", "download")
