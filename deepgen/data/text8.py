"""text8 characters (space and a-z) from embedded Wikipedia text, a text8 file, or a download.

Three sources, offline unless asked otherwise:

* ``embedded``: the real English Wikipedia excerpt inside the gensim wheel (206 articles of
  MediaWiki XML), put through the text8 filter here; 3,085,829 characters, split 90/5/5 by
  position like text8.
* ``file``: ``data_dir/text8`` (the unzipped 100,000,000-character file) or
  ``data_dir/text8.zip``; the standard split is the first 90M characters for train, the next
  5M for validation and the last 5M for test.
* ``download``: fetches ``text8.zip`` from mattmahoney.net with a sha256 check, then ``file``.

Tokens are uint8 indices into ``ALPHABET`` (0 = space, 1..26 = a..z). Also: the text8 filter
(a port of Matt Mahoney's ``wikifil.pl``), random training crops, evaluation windows
(non-overlapping by default, stride 1 as in the official BFN code) and a unigram baseline in
bits per character to sanity-check reported numbers.
"""

from __future__ import annotations

import bz2
import dataclasses
import functools
import hashlib
import math
import os
import re
import zipfile

import numpy as np

from deepgen.core.errors import DataError
from deepgen.data import sources
from deepgen.data.embedded import installed_package_file

ALPHABET = " abcdefghijklmnopqrstuvwxyz"
VOCAB_SIZE = len(ALPHABET)  # K = 27
SPLITS = ("train", "validation", "test")

TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
# sha256 of text8.zip as served by TEXT8_URL and of the 100,000,000-byte text8 inside it. Neither
# was computed here (no network); both agree across many independent public projects that pin
# them, and 31,344,016 bytes is the zip size the TensorFlow word2vec tutorial checks.
TEXT8_SHA256 = "a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232"
TEXT8_CONTENT_SHA256 = "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7"
TEXT8_ZIP_BYTES = 31_344_016
TEXT8_FILE_NAME = "text8"
TEXT8_ZIP_NAME = "text8.zip"

# The standard text8 split (characters): train [0, 90M), validation [90M, 95M), test [95M, 100M).
TEXT8_NUM_CHARS = 100_000_000
TEXT8_SPLIT_CHARS = {"train": 90_000_000, "validation": 5_000_000, "test": 5_000_000}
# Any other length is split by position at these percentages.
SPLIT_PERCENT = {"train": 90, "validation": 5, "test": 5}

EMBEDDED_RELATIVE_PATH = (
    "test",
    "test_data",
    "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
)
EMBEDDED_DESCRIPTION = "embedded Wikipedia text (gensim enwiki-latest-pages-articles1 excerpt)"
_EMBEDDED_MISSING_MESSAGE = (
    "embedded text needs the gensim wheel: run `pip install --no-deps gensim` "
    "(or `make install`), or set data.dir to a folder with text8 (or text8.zip)"
)


_INVALID_TOKEN = 255
# byte value -> token index, 255 for bytes outside ALPHABET.
_BYTE_TO_TOKEN = np.full(256, _INVALID_TOKEN, dtype=np.uint8)
_BYTE_TO_TOKEN[np.frombuffer(ALPHABET.encode("ascii"), dtype=np.uint8)] = np.arange(
    VOCAB_SIZE, dtype=np.uint8
)
_TOKEN_TO_BYTE = np.frombuffer(ALPHABET.encode("ascii"), dtype=np.uint8)


@dataclasses.dataclass(frozen=True, eq=False)
class TextSplit:
    """One split of text8-style text: uint8 indices into ALPHABET, in reading order."""

    tokens_N: np.ndarray
    split: str
    source: str

    @property
    def num_tokens(self) -> int:
        """Number of characters in the split."""
        return int(self.tokens_N.shape[0])


# ----------------------------------------------------------------------------------------------
# The text8 filter (Matt Mahoney's wikifil.pl, June 2006)
# ----------------------------------------------------------------------------------------------

# wikifil.pl works on bytes: its case folding, \d and /i are ASCII only. Python's str versions
# are Unicode-aware, so every pattern uses re.ASCII and case folding is an ASCII-only table.
_A = re.ASCII
_I = re.ASCII | re.IGNORECASE
# Rules applied, in order, to the visible text of an article (wikifil's "remove any text not
# normally visible" block, after its XML-tag removal).
_MARKUP_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"&amp;", _A), "&"),  # decode the XML escapes
    (re.compile(r"&lt;", _A), "<"),
    (re.compile(r"&gt;", _A), ">"),
    (re.compile(r"<ref[^<]*</ref>", _A), ""),  # references <ref...> ... </ref>
    (re.compile(r"<[^>]*>", _A), ""),  # xhtml tags
    (re.compile(r"\[http:[^\] ]*", _A), "["),  # external URL, keep its visible label
    (re.compile(r"\|thumb", _I), ""),  # image options, keep the caption
    (re.compile(r"\|left", _I), ""),
    (re.compile(r"\|right", _I), ""),
    (re.compile(r"\|[0-9]+px", _I), ""),
    (re.compile(r"\[\[image:[^\[\]]*\|", _I), ""),
    (re.compile(r"\[\[category:([^|\]]*)[^\]]*\]\]", _I), r"[[\1]]"),  # category name only
    (re.compile(r"\[\[[a-z\-]*:[^\]]*\]\]", _A), ""),  # interlanguage links ([[de:...]])
    (re.compile(r"\[\[[^|\]]*\|", _A), "[["),  # [[target|label]] -> label
    (re.compile(r"\{\{[^}]*\}\}", _A), ""),  # {{templates}} (innermost level only)
    (re.compile(r"\{[^}]*\}", _A), ""),  # {| tables |} and other braces
    (re.compile(r"\[", _A), ""),
    (re.compile(r"\]", _A), ""),
    (re.compile(r"&[^;]*;", _A), " "),  # remaining entities (&nbsp; ...)
)
_FIRST_XML_TAG = re.compile(r"<.*>", _A)  # wikifil's `s/<.*>//`: first '<' to last '>' on a line
_DIGIT = re.compile(r"[0-9]", _A)
_DIGIT_WORDS = (" zero ", " one ", " two ", " three ", " four ")
_DIGIT_WORDS += (" five ", " six ", " seven ", " eight ", " nine ")
_NOT_LETTER_RUN = re.compile(r"[^a-z]+", _A)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", ALPHABET[1:])
_TEXT_OPEN = re.compile(r"<text ", _A)
_REDIRECT = re.compile(r"#redirect", _I)
_MEDIAWIKI_HINT = re.compile(r"<mediawiki[\s>]|<text ", _A)


def _letters_and_spaces(text: str) -> str:
    """wikifil's last step: lowercase A-Z, spell digits, other runs -> one space, drop the last."""
    text = f" {text} ".translate(_ASCII_LOWER)
    text = _DIGIT.sub(lambda match: _DIGIT_WORDS[ord(match.group()) - ord("0")], text)
    return _NOT_LETTER_RUN.sub(" ", text)[:-1]


def _strip_markup(text: str) -> str:
    """Applies wikifil's markup rules (entities, refs, tags, links, templates, tables, URLs)."""
    for pattern, replacement in _MARKUP_RULES:
        text = pattern.sub(replacement, text)
    return text


def _wikifil_xml(xml: str) -> str:
    """wikifil.pl on a MediaWiki XML dump: reads records that end in '>', keeps <text> bodies."""
    pieces = []
    in_text = False
    start = 0
    while start < len(xml):
        end = xml.find(">", start)
        end = len(xml) if end < 0 else end + 1
        record = xml[start:end]
        start = end
        if _TEXT_OPEN.search(record):
            in_text = True
        if _REDIRECT.search(record):
            in_text = False
        if not in_text:
            continue
        if "</text>" in record:
            in_text = False
        record = _FIRST_XML_TAG.sub("", record, count=1)
        pieces.append(_letters_and_spaces(_strip_markup(record)))
    return "".join(pieces)


def text8_filter(text: str, *, mediawiki_xml: bool | None = None) -> str:
    """Turns Wikipedia text into text8 characters the way Matt Mahoney's wikifil.pl does.

    The recipe: strip wiki markup (XML escapes decoded, ``<ref>...</ref>`` and other tags
    removed, ``[[target|label]]`` -> ``label``, ``[[Category:Name]]`` -> ``Name``, image options
    dropped but captions kept, interlanguage links, ``{{templates}}``, ``{| tables |}``,
    ``[http:... label]`` URLs and ``&entities;`` removed), fold A-Z to a-z, spell each digit as
    a word ("42" -> " four two "), turn every other run of characters (punctuation, newlines,
    non-ASCII letters such as "é") into one space. Like wikifil, the result starts with a space
    (text8 does too) and never ends with one; text without letters or digits gives "".

    With ``mediawiki_xml`` (detected from ``<mediawiki`` or ``<text `` when None) the input is
    a dump and only the bodies of ``<text ...>`` elements are kept, pages whose text contains
    ``#REDIRECT`` are skipped, and the file is processed in wikifil's records (pieces ending in
    '>'), so its greedy one-per-record ``<...>`` removal applies as in the original. Otherwise
    the whole input is one article body in wiki markup (plain prose passes through the markup
    rules unchanged, except that ``<...>``, ``{...}``, ``[http:...`` and ``&...;`` spans vanish).

    Known limits, kept for fidelity: nested ``{{...{{...}}...}}`` templates lose only their
    innermost level, and ``[https:...`` links are not recognised as URLs (wikifil predates them).
    """
    if mediawiki_xml is None:
        mediawiki_xml = bool(_MEDIAWIKI_HINT.search(text))
    if mediawiki_xml:
        return _wikifil_xml(text)
    return _letters_and_spaces(_strip_markup(text))


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------


def _describe_bad_char(char: str, position: int) -> str:
    return f"{char!r} (U+{ord(char):04X}) at position {position}"


def encode(text: str) -> np.ndarray:
    """text8 characters to uint8 tokens (space -> 0, a..z -> 1..26); ValueError on others."""
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"encode accepts only {ALPHABET!r}, got {_describe_bad_char(text[err.start], err.start)}; "
            "run text8_filter first"
        ) from None
    tokens_N = _BYTE_TO_TOKEN[np.frombuffer(data, dtype=np.uint8)]
    bad = np.flatnonzero(tokens_N == _INVALID_TOKEN)
    if bad.size:
        position = int(bad[0])
        raise ValueError(
            f"encode accepts only {ALPHABET!r}, got {_describe_bad_char(text[position], position)}; "
            "run text8_filter first"
        )
    return tokens_N


def _valid_tokens(tokens: np.ndarray) -> bool:
    """True when every token is an integer index into ALPHABET (an empty array is valid)."""
    return not tokens.size or (
        np.issubdtype(tokens.dtype, np.integer) and tokens.min() >= 0 and tokens.max() < VOCAB_SIZE
    )


def decode(tokens) -> str:
    """uint8/int tokens (any 1-D array-like, e.g. a jax array) back to text8 characters."""
    tokens_N = np.asarray(tokens)
    if tokens_N.ndim != 1:
        raise ValueError(f"decode expects a 1-D token sequence, got shape {tokens_N.shape}")
    if not _valid_tokens(tokens_N):
        raise ValueError(
            f"decode expects integer tokens in [0, {VOCAB_SIZE}), got dtype {tokens_N.dtype} "
            f"with range [{tokens_N.min()}, {tokens_N.max()}]"
        )
    return _TOKEN_TO_BYTE[tokens_N.astype(np.intp)].tobytes().decode("ascii")


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------


def load_text8(split: str, *, data_dir: str | None = None, source: str = "auto") -> TextSplit:
    """Loads one split of text8 (or the embedded Wikipedia excerpt) as uint8 tokens.

    ``auto`` uses the embedded text when data_dir is None or "", else ``data_dir/text8`` or
    ``data_dir/text8.zip`` (the unzipped file preferred); it never downloads. The returned
    tokens are a read-only view shared between calls.
    """
    return sources.load(TEXT8_SOURCES, split, data_dir=data_dir, source=source)


def _find_text8_file(data_dir: str) -> str | None:
    """data_dir/text8, else data_dir/text8.zip, else None."""
    for file_name in (TEXT8_FILE_NAME, TEXT8_ZIP_NAME):
        candidate = os.path.join(data_dir, file_name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _split_bounds(num_tokens: int, split: str) -> tuple[int, int]:
    """[start, stop) of a split: 90M/5M/5M for the 100M-character text8, else 90%/5%/5%."""
    if num_tokens == TEXT8_NUM_CHARS:
        sizes = TEXT8_SPLIT_CHARS
        train_stop = sizes["train"]
        validation_stop = train_stop + sizes["validation"]
    else:
        train_stop = num_tokens * SPLIT_PERCENT["train"] // 100
        validation_stop = num_tokens * (SPLIT_PERCENT["train"] + SPLIT_PERCENT["validation"]) // 100
    bounds = {
        "train": (0, train_stop),
        "validation": (train_stop, validation_stop),
        "test": (validation_stop, num_tokens),
    }
    return bounds[split]


def _make_split(tokens_N: np.ndarray, split: str, description: str) -> TextSplit:
    start, stop = _split_bounds(len(tokens_N), split)
    return TextSplit(
        tokens_N=tokens_N[start:stop],
        split=split,
        source=f"{description}, {split} split (characters {start:,} to {stop:,})",
    )


# ----------------------------------------------------------------------------------------------
# Embedded Wikipedia excerpt (gensim wheel)
# ----------------------------------------------------------------------------------------------


def _embedded_xml_path() -> str:
    """Finds the enwiki excerpt inside the installed gensim package without importing gensim."""
    path = installed_package_file("gensim", *EMBEDDED_RELATIVE_PATH)
    if path is None:
        raise DataError(_EMBEDDED_MISSING_MESSAGE)
    return path


@functools.lru_cache(maxsize=2)
def _read_embedded_tokens(path: str) -> np.ndarray:
    """Decompresses, text8-filters and encodes the excerpt once per process (read-only)."""
    try:
        with bz2.open(path, "rb") as xml_file:
            xml = xml_file.read().decode("utf-8", errors="replace")
    except (OSError, EOFError, ValueError) as err:
        raise DataError(
            f"embedded Wikipedia file {path} is unreadable ({type(err).__name__}); "
            "reinstall it with `pip install --no-deps --force-reinstall gensim`"
        ) from err
    tokens_N = encode(text8_filter(xml, mediawiki_xml=True))
    if len(tokens_N) < 1000:
        raise DataError(
            f"embedded Wikipedia file {path} gave only {len(tokens_N)} characters of text; "
            "reinstall it with `pip install --no-deps --force-reinstall gensim`"
        )
    tokens_N.flags.writeable = False
    return tokens_N


def _load_embedded(split: str) -> TextSplit:
    """The embedded excerpt, text8-filtered, split 90/5/5 by position."""
    tokens_N = _read_embedded_tokens(_embedded_xml_path())
    description = (
        f"{EMBEDDED_DESCRIPTION}, {len(tokens_N):,} characters after the text8 filter, "
        "split 90%/5%/5%"
    )
    return _make_split(tokens_N, split, description)


# ----------------------------------------------------------------------------------------------
# text8 files
# ----------------------------------------------------------------------------------------------


def _read_text8_bytes(path: str) -> bytes:
    """The raw bytes of a text8 file, or of the text8 member of a zip."""
    try:
        if not path.endswith(".zip"):
            with open(path, "rb") as text_file:
                return text_file.read()
        with zipfile.ZipFile(path) as archive:
            return archive.read(sources.zip_member(archive, path, TEXT8_FILE_NAME, TEXT8_URL))
    except FileNotFoundError as err:
        raise DataError(f"text8 file {path} does not exist; check data.dir") from err
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise DataError(
            f"text8 file {path} is unreadable ({type(err).__name__}: {err}); re-download it "
            f"from {TEXT8_URL}"
        ) from err


@functools.lru_cache(maxsize=2)
def _read_file_tokens(path: str, size: int, mtime_ns: int) -> tuple[np.ndarray, str]:
    """Tokens of a text8 file (cached per path, size and mtime) and a provenance note."""
    del size, mtime_ns  # cache key only: a rewritten file is read again
    data = _read_text8_bytes(path)
    if data.endswith(b"\n"):  # tolerate a text editor's final newline
        data = data[:-1]
    tokens_N = _BYTE_TO_TOKEN[np.frombuffer(data, dtype=np.uint8)]
    bad = np.flatnonzero(tokens_N == _INVALID_TOKEN)
    if bad.size:
        offset = int(bad[0])
        raise DataError(
            f"text8 file {path} is not text8-like: byte 0x{data[offset]:02X} "
            f"({chr(data[offset])!r}) at offset {offset:,} is outside {ALPHABET!r} "
            f"({bad.size:,} such bytes); use the text8 from {TEXT8_URL} or text8_filter your text"
        )
    num_tokens = len(tokens_N)
    if num_tokens == TEXT8_NUM_CHARS:
        is_official = hashlib.sha256(data).hexdigest() == TEXT8_CONTENT_SHA256
        identity = "official text8, sha256 verified" if is_official else "sha256 differs from text8"
        note = f"{identity}, standard split 90M/5M/5M"
    else:
        note = (
            f"{num_tokens:,} characters, not the standard {TEXT8_NUM_CHARS:,}: "
            "split 90%/5%/5% by position"
        )
    split_sizes = [stop - start for start, stop in (_split_bounds(num_tokens, s) for s in SPLITS)]
    if min(split_sizes) == 0:
        raise DataError(
            f"text8 file {path} has only {num_tokens} characters, too few to split 90%/5%/5%; "
            f"use the text8 from {TEXT8_URL}"
        )
    tokens_N.flags.writeable = False
    return tokens_N, note


def _load_from_dir(split: str, data_dir: str) -> TextSplit:
    """One split of data_dir/text8 or data_dir/text8.zip."""
    path = _find_text8_file(data_dir)
    if path is None:
        raise DataError(
            f"data.dir={data_dir} has no text8 data: expected "
            f"{os.path.join(data_dir, TEXT8_FILE_NAME)} (the unzipped 100,000,000-character "
            f"file) or {os.path.join(data_dir, TEXT8_ZIP_NAME)} from {TEXT8_URL}; put it there, "
            "use source='download', or leave data.dir empty for the embedded text"
        )
    return _load_file(split, path)


def _load_file(split: str, path: str) -> TextSplit:
    """One split of a text8 file or zip."""
    try:
        stat = os.stat(path)
    except OSError as err:
        raise DataError(f"text8 file {path} does not exist; check data.dir") from err
    tokens_N, note = _read_file_tokens(path, stat.st_size, stat.st_mtime_ns)
    return _make_split(tokens_N, split, f"text8 file {path} ({note})")


# ----------------------------------------------------------------------------------------------
# Download (real network; never called by auto or file)
# ----------------------------------------------------------------------------------------------


def _load_download(split: str, data_dir: str) -> TextSplit:
    """One split of text8.zip, downloaded into data_dir first unless a verified copy is there."""
    return _load_file(split, download_text8(data_dir))


def download_text8(data_dir: str) -> str:
    """Downloads text8.zip from TEXT8_URL into data_dir (created if needed); returns its path.

    Verifies the sha256 against TEXT8_SHA256 and keeps a verified zip that is already there
    (no network then). The download goes to ``text8.zip.part`` and is renamed only after the
    check passes, so a failed or interrupted download leaves no ``text8.zip`` behind. Raises a
    one-line DataError when the server cannot be reached (60 s socket timeout) or the bytes do
    not match, with what to do by hand.
    """
    data_dir = sources.writable_dir(data_dir)
    path = os.path.join(data_dir, TEXT8_ZIP_NAME)
    if os.path.isfile(path) and sources.file_digest(path, "sha256") == TEXT8_SHA256:
        return path
    manual_hint = f"download {TEXT8_URL} by hand into {data_dir} and use source='file'"
    num_bytes, sha256 = sources.download(TEXT8_URL, path, manual_hint)
    if sha256 != TEXT8_SHA256:
        sources.remove_quietly(path)
        raise DataError(
            f"downloaded {TEXT8_URL} has sha256 {sha256} and {num_bytes:,} bytes, "
            f"expected {TEXT8_SHA256} and {TEXT8_ZIP_BYTES:,} bytes; {manual_hint}"
        )
    return path


# ----------------------------------------------------------------------------------------------
# Training crops and evaluation windows
# ----------------------------------------------------------------------------------------------


def _check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _require_one_window(num_tokens: int, seq_len: int) -> None:
    if num_tokens < seq_len:
        raise DataError(
            f"text of {num_tokens:,} characters is shorter than seq_len={seq_len}; "
            "use a longer split or a shorter seq_len"
        )


def crop_starts(
    num_tokens: int, seq_len: int, rng: np.random.Generator | int, count: int
) -> np.ndarray:
    """count uniform start offsets in [0, num_tokens - seq_len] (int64); rng may be a seed."""
    seq_len = _check_positive("seq_len", seq_len)
    count = _check_positive("count", count)
    _require_one_window(num_tokens, seq_len)
    rng = np.random.default_rng(rng)
    return rng.integers(0, num_tokens - seq_len + 1, size=count, dtype=np.int64)


def take_windows(tokens_N: np.ndarray, starts: np.ndarray, seq_len: int) -> np.ndarray:
    """The windows tokens_N[s : s + seq_len] for each start s, stacked: (count, seq_len)."""
    seq_len = _check_positive("seq_len", seq_len)
    tokens_N = np.asarray(tokens_N)
    starts_C = np.asarray(starts, dtype=np.int64).reshape(-1)
    if starts_C.size and (starts_C.min() < 0 or starts_C.max() > len(tokens_N) - seq_len):
        raise ValueError(
            f"window starts must lie in [0, {len(tokens_N) - seq_len}] for {len(tokens_N)} "
            f"tokens and seq_len={seq_len}, got [{starts_C.min()}, {starts_C.max()}]"
        )
    return tokens_N[starts_C[:, None] + np.arange(seq_len, dtype=np.int64)]


def random_crops(
    tokens_N: np.ndarray, *, seq_len: int, count: int, rng: np.random.Generator | int
) -> np.ndarray:
    """count random training windows of seq_len tokens (uniform start, with replacement)."""
    starts_C = crop_starts(len(tokens_N), seq_len, rng, count)
    return take_windows(tokens_N, starts_C, seq_len)


def eval_windows(tokens_N: np.ndarray, *, seq_len: int, stride: int | None = None) -> np.ndarray:
    """Evaluation windows of seq_len tokens starting every `stride` characters: (W, seq_len).

    The default stride = seq_len gives non-overlapping chunks and drops a tail shorter than
    seq_len (the D3PM / MD4 protocol: 5M // 256 = 19,531 windows on the text8 test split).
    stride=1 gives every window, len - seq_len + 1 of them, as the official BFN test code does.
    The result is a read-only strided view of tokens_N: no copy, even for stride 1.
    """
    seq_len = _check_positive("seq_len", seq_len)
    stride = seq_len if stride is None else _check_positive("stride", stride)
    tokens_N = np.asarray(tokens_N)
    if tokens_N.ndim != 1:
        raise ValueError(f"eval_windows expects a 1-D token sequence, got shape {tokens_N.shape}")
    _require_one_window(len(tokens_N), seq_len)
    return np.lib.stride_tricks.sliding_window_view(tokens_N, seq_len)[::stride]


# ----------------------------------------------------------------------------------------------
# Unigram baseline
# ----------------------------------------------------------------------------------------------


def unigram_entropy_bits(train_tokens_N: np.ndarray, test_tokens_M: np.ndarray) -> float:
    """Bits per character of the test tokens under the train unigram frequencies (add-one).

    p(k) = (count_train(k) + 1) / (N + 27); returns -mean log2 p(test token). Any real
    model should beat this; it is below log2(27) = 4.75 bits (uniform) on English text.
    """
    train = np.asarray(train_tokens_N).reshape(-1)
    test = np.asarray(test_tokens_M).reshape(-1)
    if test.size == 0:
        raise ValueError("unigram_entropy_bits needs at least one test token")
    for name, tokens in (("train", train), ("test", test)):
        if not _valid_tokens(tokens):
            raise ValueError(
                f"{name} tokens must be integers in [0, {VOCAB_SIZE}), got dtype {tokens.dtype}"
            )
    counts_K = np.bincount(train, minlength=VOCAB_SIZE).astype(np.float64) + 1.0
    log2_probability_K = np.log2(counts_K) - math.log2(counts_K.sum())
    test_counts_K = np.bincount(test, minlength=VOCAB_SIZE).astype(np.float64)
    return float(-(test_counts_K @ log2_probability_K) / test.size)


# ----------------------------------------------------------------------------------------------
# The sources (declared after their loaders)
# ----------------------------------------------------------------------------------------------

TEXT8_SOURCES = sources.DatasetSources(
    title="text8",
    splits=SPLITS,
    sources={
        "embedded": sources.embedded_source(_load_embedded, f"the {EMBEDDED_DESCRIPTION}"),
        "file": sources.Source(
            _load_from_dir,
            f"{TEXT8_FILE_NAME} or {TEXT8_ZIP_NAME} (from {TEXT8_URL})",
            found_in=lambda data_dir: _find_text8_file(data_dir) is not None,
        ),
        "download": sources.Source(
            _load_download, f"{TEXT8_ZIP_NAME}, downloaded from {TEXT8_URL}", data_dir="created"
        ),
    },
)
SOURCES = TEXT8_SOURCES.choices  # ("auto", "embedded", "file", "download")
