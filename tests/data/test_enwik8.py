"""Tests for deepgen.data.enwik8: sources, split rule, download check, windows, baselines."""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import io
import math
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from loader_checks import assert_one_line_error

from deepgen.core.errors import ConfigError, DataError
from deepgen.data import enwik8, text8

EMBEDDED_NUM_BYTES = 6_089_746  # bz2 -d of the gensim excerpt: `wc -c` gives the same


def random_bytes(num_bytes: int, seed: int) -> bytes:
    """Random bytes over all 256 values."""
    return np.random.default_rng(seed).integers(0, 256, size=num_bytes, dtype=np.uint8).tobytes()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to download fails the test."""

    def fail(*args, **kwargs):
        pytest.fail(f"a download was attempted: {args} {kwargs}")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    monkeypatch.setattr(enwik8, "download_enwik8", fail)


# ----------------------------------------------------------------------------------------------
# Constants and decoding
# ----------------------------------------------------------------------------------------------


def test_vocabulary_is_the_256_byte_values_and_decode_is_utf8() -> None:
    assert enwik8.VOCAB_SIZE == 256
    assert enwik8.decode(np.frombuffer("año <b>".encode(), dtype=np.uint8)) == "año <b>"
    assert enwik8.decode(b"caf\xc3\xa9") == "café"
    assert enwik8.decode([104, 105]) == "hi"
    assert enwik8.decode(b"a\xffb") == "a\ufffdb"  # invalid UTF-8 is replaced, not an error
    assert enwik8.decode(np.array([], dtype=np.uint8)) == ""
    with pytest.raises(ValueError):
        enwik8.decode([256])
    with pytest.raises(ValueError):
        enwik8.decode(np.zeros((2, 2), dtype=np.uint8))


# ----------------------------------------------------------------------------------------------
# Embedded Wikipedia XML (raw bytes)
# ----------------------------------------------------------------------------------------------


def test_embedded_is_the_raw_xml_split_90_5_5_by_position(no_network) -> None:
    splits = {split: enwik8.load_enwik8(split) for split in enwik8.SPLITS}
    sizes = {split: data.num_tokens for split, data in splits.items()}
    assert sizes == {"train": 5_480_771, "validation": 304_487, "test": 304_488}
    assert sum(sizes.values()) == EMBEDDED_NUM_BYTES
    with bz2.open(text8._embedded_xml_path(), "rb") as xml_file:  # independently decompressed
        raw = xml_file.read()
    whole = np.concatenate([splits[split].bytes_N for split in enwik8.SPLITS])
    assert whole.tobytes() == raw  # not filtered: markup and all
    train = splits["train"].bytes_N
    assert b"<mediawiki" in train[:100].tobytes() and train[:10].tobytes() == b"<mediawiki"
    assert b"</mediawiki>" in splits["test"].bytes_N[-20:].tobytes()
    for split, data in splits.items():
        assert data.split == split and data.bytes_N.dtype == np.uint8
        assert not data.bytes_N.flags.writeable
        assert "embedded" in data.source and "6,089,746 bytes" in data.source
        assert "90%/5%/5%" in data.source and f"{split} split" in data.source
    assert "bytes 5,480,771 to 5,785,258" in splits["validation"].source
    assert enwik8.load_enwik8("test", source="embedded").source == splits["test"].source
    assert enwik8.load_enwik8("train", data_dir="").source == splits["train"].source  # embedded


def test_embedded_missing_gensim_is_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError) as caught:
        enwik8.load_enwik8("train")
    assert_one_line_error(caught.value, "pip install --no-deps gensim", "data.dir", "enwik8.zip")


# ----------------------------------------------------------------------------------------------
# The split rule
# ----------------------------------------------------------------------------------------------


def test_split_bounds_of_the_100m_file_are_the_papers() -> None:
    n = enwik8.ENWIK8_NUM_BYTES
    assert n == 100_000_000
    assert enwik8.split_bounds(n, "train") == (0, 90_000_000)
    assert enwik8.split_bounds(n, "validation") == (90_000_000, 95_000_000)
    assert enwik8.split_bounds(n, "test") == (95_000_000, 100_000_000)


@pytest.mark.parametrize(
    ("num_bytes", "expected"),
    [
        (2000, ((0, 1800), (1800, 1900), (1900, 2000))),
        (2019, ((0, 1817), (1817, 1918), (1918, 2019))),  # floor(90%), floor(95%)
        (99_999_999, ((0, 89_999_999), (89_999_999, 94_999_999), (94_999_999, 99_999_999))),
    ],
)
def test_split_bounds_of_other_lengths_are_90_5_5_percent(num_bytes: int, expected) -> None:
    assert tuple(enwik8.split_bounds(num_bytes, s) for s in enwik8.SPLITS) == expected


def test_split_bounds_rejects_unknown_split() -> None:
    with pytest.raises(ConfigError) as caught:
        enwik8.split_bounds(100, "valid")
    assert_one_line_error(caught.value, "'validation'")


# ----------------------------------------------------------------------------------------------
# enwik8 files
# ----------------------------------------------------------------------------------------------


def test_file_source_plain_and_zipped_small_enwik8(tmp_path: Path, no_network) -> None:
    data = random_bytes(4000, seed=1)
    plain_dir = tmp_path / "plain"
    zip_dir = tmp_path / "zipped"
    plain_dir.mkdir()
    zip_dir.mkdir()
    (plain_dir / "enwik8").write_bytes(data)
    (zip_dir / "enwik8.zip").write_bytes(zip_bytes({"enwik8": data}))

    expected = {"train": data[:3600], "validation": data[3600:3800], "test": data[3800:]}
    for data_dir in (plain_dir, zip_dir):
        for split in enwik8.SPLITS:
            for source in ("auto", "file"):
                loaded = enwik8.load_enwik8(split, data_dir=str(data_dir), source=source)
                assert loaded.bytes_N.tobytes() == expected[split]
                assert loaded.split == split and not loaded.bytes_N.flags.writeable
                assert str(data_dir) in loaded.source and "4,000 bytes" in loaded.source
                assert "not the standard 100,000,000 bytes: split 90%/5%/5%" in loaded.source


def test_file_source_prefers_unzipped_keeps_every_byte_and_rereads(tmp_path: Path) -> None:
    data = b"<mediawiki>\n" + bytes(range(256)) * 3 + b"\n"  # a final newline is data too
    (tmp_path / "enwik8").write_bytes(data)
    (tmp_path / "enwik8.zip").write_bytes(zip_bytes({"enwik8": b"z" * 1000}))
    loaded = enwik8.load_enwik8("test", data_dir=str(tmp_path))
    start, stop = enwik8.split_bounds(len(data), "test")
    assert loaded.bytes_N.tobytes() == data[start:] and stop == len(data) == 781
    assert str(tmp_path / "enwik8") + " (" in loaded.source

    (tmp_path / "enwik8").write_bytes(b"b" * 200)
    assert enwik8.load_enwik8("test", data_dir=str(tmp_path)).bytes_N.tobytes() == b"b" * 10


def test_zip_with_another_single_member_is_read(tmp_path: Path) -> None:
    (tmp_path / "enwik8.zip").write_bytes(zip_bytes({"data/enwik8.txt": b"x" * 100}))
    assert enwik8.load_enwik8("validation", data_dir=str(tmp_path)).bytes_N.tobytes() == b"x" * 5


def test_bad_zips_and_too_short_files_are_data_errors(tmp_path: Path) -> None:
    corrupt_dir = tmp_path / "corrupt"
    corrupt_dir.mkdir()
    (corrupt_dir / "enwik8.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError) as caught:
        enwik8.load_enwik8("train", data_dir=str(corrupt_dir))
    assert_one_line_error(caught.value, "enwik8.zip", "unreadable", enwik8.ENWIK8_URL)

    wrong_dir = tmp_path / "wrong"
    wrong_dir.mkdir()
    (wrong_dir / "enwik8.zip").write_bytes(zip_bytes({"a.txt": b"abc", "b.txt": b"def"}))
    with pytest.raises(DataError) as caught:
        enwik8.load_enwik8("train", data_dir=str(wrong_dir))
    assert_one_line_error(caught.value, "no member named enwik8", "a.txt")

    short_dir = tmp_path / "short"
    short_dir.mkdir()
    (short_dir / "enwik8").write_bytes(b"abc def")
    with pytest.raises(DataError) as caught:
        enwik8.load_enwik8("test", data_dir=str(short_dir))
    assert_one_line_error(caught.value, "only 7 bytes", "too few")


def test_missing_dir_and_empty_dir_are_data_errors(tmp_path: Path, no_network) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as caught:
        enwik8.load_enwik8("train", data_dir=str(missing))
    assert_one_line_error(caught.value, f"data.dir={missing} does not exist")

    (tmp_path / "unrelated.txt").write_text("hello")
    with pytest.raises(DataError) as caught:
        enwik8.load_enwik8("train", data_dir=str(tmp_path))
    assert_one_line_error(caught.value, "no usable enwik8 data", "enwik8.zip")
    with pytest.raises(DataError) as caught:
        enwik8.load_enwik8("train", data_dir=str(tmp_path), source="file")
    assert_one_line_error(caught.value, str(tmp_path / "enwik8"), "source='download'")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"split": "valid"}, "'validation'"),
        ({"split": "train", "source": "http"}, "'download'"),
        ({"split": "train", "source": "file"}, "data.dir"),
        ({"split": "train", "source": "download"}, "data.dir"),
    ],
)
def test_bad_options_are_config_errors(kwargs: dict, fragment: str, no_network) -> None:
    with pytest.raises(ConfigError) as caught:
        enwik8.load_enwik8(**kwargs)
    assert_one_line_error(caught.value, fragment)


# ----------------------------------------------------------------------------------------------
# Download (urlopen replaced by an in-memory fake: nothing touches the network)
# ----------------------------------------------------------------------------------------------


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def test_download_checks_the_content_and_removes_a_bad_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = zip_bytes({"enwik8": random_bytes(3000, seed=2)})
    urls = []

    def fake_urlopen(url, timeout):
        urls.append((url, timeout))
        return _FakeResponse(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as caught:
        enwik8.load_enwik8("train", data_dir=str(data_dir), source="download")
    assert_one_line_error(
        caught.value,
        "3,000 bytes",
        enwik8.ENWIK8_SHA256,
        enwik8.ENWIK8_SHA1,
        "100,000,000 bytes",
        "removed",
        enwik8.ENWIK8_URL,
    )
    assert urls == [(enwik8.ENWIK8_URL, 60.0)]
    assert list(data_dir.iterdir()) == []  # no enwik8, no zip, no .part left behind


def test_pinned_digests_are_the_published_ones() -> None:
    assert enwik8.ENWIK8_SHA256 == (
        "2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8"
    )
    assert enwik8.ENWIK8_SHA1 == "57b8363b814821dc9d47aa4d41f58733519076b2"
    assert enwik8.ENWIK8_MD5 == "a1fa5ffddb56f4953e226637dabbb36a"


def test_download_with_matching_digests_then_load_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = random_bytes(2000, seed=3)
    payload = zip_bytes({"enwik8": content})
    # Pretend this 2000-byte file is enwik8: its size and digests, and a 1000/500/500 "paper" split.
    monkeypatch.setattr(enwik8, "ENWIK8_NUM_BYTES", len(content))
    monkeypatch.setattr(enwik8, "ENWIK8_SHA256", hashlib.sha256(content).hexdigest())
    monkeypatch.setattr(enwik8, "ENWIK8_SHA1", hashlib.sha1(content).hexdigest())
    monkeypatch.setattr(
        enwik8, "ENWIK8_SPLIT_BYTES", {"train": 1000, "validation": 500, "test": 500}
    )
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _FakeResponse(payload))
    path = enwik8.download_enwik8(str(tmp_path / "new"))
    assert path == str(tmp_path / "new" / "enwik8") and Path(path).read_bytes() == content
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["enwik8", "enwik8.zip"]

    def fail(*args, **kwargs):
        pytest.fail("a verified enwik8 is already there; no download expected")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    loaded = enwik8.load_enwik8("validation", data_dir=str(tmp_path / "new"), source="download")
    assert loaded.bytes_N.tobytes() == content[1000:1500]
    assert "the paper's split 90M/5M/5M" in loaded.source


def test_unreachable_server_is_one_line_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    with pytest.raises(DataError) as caught:
        enwik8.load_enwik8("train", data_dir=str(tmp_path), source="download")
    assert_one_line_error(caught.value, "could not download", "by hand", "source='file'")
    assert list(tmp_path.iterdir()) == []


def test_download_of_a_non_zip_is_one_line_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = b"<html>503 Service Unavailable</html>"
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _FakeResponse(page))
    with pytest.raises(DataError) as caught:
        enwik8.download_enwik8(str(tmp_path))
    assert_one_line_error(caught.value, "could not be extracted", "BadZipFile", "by hand")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# Evaluation windows
# ----------------------------------------------------------------------------------------------


def test_lm_windows_hand_example() -> None:
    windows, scored = enwik8.lm_windows(np.arange(10, dtype=np.uint8), seq_len=5, context=2)
    # step 3: windows at 0 and 3 score [2, 8); the last, at 5, scores only 8 and 9.
    np.testing.assert_array_equal(windows, [[0, 1, 2, 3, 4], [3, 4, 5, 6, 7], [5, 6, 7, 8, 9]])
    np.testing.assert_array_equal(
        scored,
        [[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]],
    )
    assert windows.dtype == np.uint8 and scored.dtype == bool


@pytest.mark.parametrize(
    ("num_bytes", "seq_len", "context"),
    [
        (500, 500, 100),  # one window
        (900, 500, 100),  # exactly two: 100 + 2 * 400
        (901, 500, 100),  # one byte more: a last window scoring one byte
        (12_345, 500, 100),
        (1000, 7, 0),  # no context: plain non-overlapping chunks plus a tail
        (1000, 7, 6),  # one scored byte per window
        (64, 64, 63),
        (30_000, 256, 128),
    ],
)
def test_lm_windows_score_every_byte_after_the_context_exactly_once(
    num_bytes: int, seq_len: int, context: int
) -> None:
    data = np.random.default_rng(num_bytes).integers(0, 256, size=num_bytes, dtype=np.uint8)
    windows, scored = enwik8.lm_windows(data, seq_len=seq_len, context=context)
    step = seq_len - context
    num_windows = math.ceil((num_bytes - context) / step)
    assert windows.shape == scored.shape == (num_windows, seq_len)
    # Recover each window's start from its content, then count how often each position scores.
    starts = np.minimum(np.arange(num_windows) * step, num_bytes - seq_len)
    np.testing.assert_array_equal(windows, data[starts[:, None] + np.arange(seq_len)])
    times_scored = np.zeros(num_bytes, dtype=np.int64)
    np.add.at(times_scored, (starts[:, None] + np.arange(seq_len))[scored], 1)
    np.testing.assert_array_equal(times_scored[:context], 0)
    np.testing.assert_array_equal(times_scored[context:], 1)
    assert scored[:, :context].sum() == 0  # the context is never scored
    assert scored.sum() == num_bytes - context


def test_lm_windows_paper_protocol_on_the_embedded_test_split() -> None:
    test = enwik8.load_enwik8("test").bytes_N
    windows, scored = enwik8.lm_windows(
        test, seq_len=enwik8.PAPER_SEQ_LEN, context=enwik8.PAPER_CONTEXT
    )
    assert (enwik8.PAPER_SEQ_LEN, enwik8.PAPER_CONTEXT) == (500, 100)
    assert windows.shape == (math.ceil((304_488 - 100) / 400), 500) == (761, 500)
    assert scored.sum() == 304_488 - 100
    assert scored[:-1].sum(axis=1).tolist() == [400] * 760


def test_lm_windows_reject_bad_arguments() -> None:
    with pytest.raises(DataError, match="shorter than seq_len=500"):
        enwik8.lm_windows(np.zeros(499, dtype=np.uint8), seq_len=500, context=100)
    with pytest.raises(ValueError, match="context"):
        enwik8.lm_windows(np.zeros(100, dtype=np.uint8), seq_len=10, context=10)
    with pytest.raises(ValueError, match="context"):
        enwik8.lm_windows(np.zeros(100, dtype=np.uint8), seq_len=10, context=-1)
    with pytest.raises(ValueError, match="seq_len"):
        enwik8.lm_windows(np.zeros(100, dtype=np.uint8), seq_len=0, context=0)
    with pytest.raises(ValueError, match="byte values"):
        enwik8.lm_windows(np.full(100, 300), seq_len=10, context=2)


# ----------------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------------


def test_order0_entropy_hand_computed() -> None:
    expected = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert enwik8.order0_entropy_bits(b"aab") == pytest.approx(expected, rel=1e-12)
    assert enwik8.order0_entropy_bits(np.frombuffer(b"aab", dtype=np.uint8)) == pytest.approx(
        expected, rel=1e-12
    )
    assert enwik8.order0_entropy_bits(b"zzzz") == 0.0
    assert enwik8.order0_entropy_bits(bytes(range(256)) * 2) == pytest.approx(8.0, rel=1e-12)
    with pytest.raises(ValueError):
        enwik8.order0_entropy_bits(b"")


def test_unigram_cross_entropy_hand_computed() -> None:
    # add-one counts: 'a' 3, 'b' 2, the other 254 bytes 1 each -> total 3 + 256 = 259.
    expected = -(math.log2(3 / 259) + math.log2(2 / 259)) / 2
    assert enwik8.unigram_cross_entropy_bits(b"aab", b"ab") == pytest.approx(expected, rel=1e-12)
    assert enwik8.unigram_cross_entropy_bits(b"", b"xyz") == pytest.approx(8.0, rel=1e-12)
    with pytest.raises(ValueError):
        enwik8.unigram_cross_entropy_bits(b"aab", b"")


def test_baselines_on_the_embedded_bytes() -> None:
    train = enwik8.load_enwik8("train").bytes_N
    test = enwik8.load_enwik8("test").bytes_N
    order0 = enwik8.order0_entropy_bits(test)
    cross = enwik8.unigram_cross_entropy_bits(train, test)
    assert 4.5 < order0 < 5.5  # English XML: about 5.07 bits per byte, far below 8
    assert cross >= order0  # Gibbs: no fixed unigram beats the test bytes' own frequencies
    assert cross - order0 < 0.1  # train and test frequencies are close
