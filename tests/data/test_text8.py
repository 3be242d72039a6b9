"""Tests for deepgen.data.text8: the wikifil filter, encoding, sources, windows and the baseline."""

from __future__ import annotations

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
from deepgen.data import text8

EMBEDDED_NUM_CHARS = 3_085_829  # wikifil.pl (perl) gives the same 3,085,829 characters


def random_text(num_chars: int, seed: int) -> str:
    """Random characters of ALPHABET."""
    rng = np.random.default_rng(seed)
    return text8.decode(rng.integers(0, text8.VOCAB_SIZE, size=num_chars))


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to download fails the test."""

    def fail(*args, **kwargs):
        pytest.fail(f"a download was attempted: {args} {kwargs}")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    monkeypatch.setattr(text8, "download_text8", fail)


# ----------------------------------------------------------------------------------------------
# The text8 filter
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", " hello world"),
        ("It's 42°C   (really).", " it s four two c really"),
        ("In 1999 and 2006", " in one nine nine nine and two zero zero six"),
        ("a\n\n\t  b\r\n", " a b"),
        ("MiXeD CaSe", " mixed case"),
        ("Café naïve", " caf na ve"),  # non-ASCII letters become spaces, as in wikifil
        ("\u212a", ""),  # the Kelvin sign is not folded to 'k': wikifil's case folding is ASCII
        ("", ""),
        ("!!! ... ???", ""),
        ("[[Paris|the capital]] of [[France]]", " the capital of france"),
        ("x{{cite web|url=y}}z", " xz"),
        ("a<ref name=n>Smith, p. 2</ref>b", " ab"),
        ("<b>bold</b> text", " bold text"),
        ("see [http://example.com the site]", " see the site"),
        ("AT&amp;T &nbsp;x", " at x"),
        ("[[Image:Cup.jpg|thumb|left|200px|A cup]] [[de:Kaffee]]", " a cup"),
        ("[[Category:Hot drinks|Coffee]]", " hot drinks"),
        ('{| class="wikitable"\n| a || b\n|} after', " after"),
    ],
)
def test_filter_hand_examples(text: str, expected: str) -> None:
    assert text8.text8_filter(text) == expected


MEDIAWIKI_XML = """<mediawiki>
  <page>
    <title>Test</title>
    <text xml:space="preserve">'''Café''' au [[Paris|lait]] costs 3.50&amp;nbsp;€ in 1999.\
&lt;ref&gt;Smith, p. 2&lt;/ref&gt; See [[Category:Drinks|C]] and [http://example.com the site].
{{Infobox|x=1}} {| class="wikitable"
| a || b
|} [[Image:Cup.jpg|thumb|left|200px|A cup of coffee]] [[de:Milchkaffee]] &lt;b&gt;Bold&lt;/b&gt;</text>
  </page>
  <page>
    <title>Old</title>
    <text xml:space="preserve">#REDIRECT [[Test]]</text>
  </page>
  <page>
    <title>Second Title</title>
    <text xml:space="preserve">Second   page!!  OK</text>
  </page>
</mediawiki>
"""
# What perl wikifil.pl prints for MEDIAWIKI_XML (checked by running the script).
MEDIAWIKI_EXPECTED = (
    " caf au lait costs three five zero in one nine nine nine see drinks and the site"
    " a cup of coffee bold second page ok"
)


def test_filter_mediawiki_xml_keeps_only_article_text_like_wikifil() -> None:
    assert text8.text8_filter(MEDIAWIKI_XML) == MEDIAWIKI_EXPECTED  # detected from <mediawiki
    assert text8.text8_filter(MEDIAWIKI_XML, mediawiki_xml=True) == MEDIAWIKI_EXPECTED
    # Titles, redirects and XML outside <text> are gone; without the XML mode they are not.
    assert "title" not in MEDIAWIKI_EXPECTED and "test" not in MEDIAWIKI_EXPECTED
    as_wikitext = text8.text8_filter(MEDIAWIKI_XML, mediawiki_xml=False)
    assert "redirect" in as_wikitext


def test_filter_output_is_always_text8_characters() -> None:
    rng = np.random.default_rng(0)
    noise = "".join(chr(c) for c in rng.integers(1, 0x3000, size=5000))
    filtered = text8.text8_filter(noise + " {{ [[ <ref> &amp; 0123456789 ")
    assert set(filtered) <= set(text8.ALPHABET)
    assert "  " not in filtered and not filtered.endswith(" ")


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------


def test_alphabet_is_space_then_a_to_z() -> None:
    assert text8.ALPHABET == " abcdefghijklmnopqrstuvwxyz" and text8.VOCAB_SIZE == 27


def test_encode_decode_round_trip() -> None:
    text = " the quick brown fox jumps over the lazy dog "
    tokens = text8.encode(text)
    assert tokens.dtype == np.uint8 and tokens.shape == (len(text),)
    assert tokens[:3].tolist() == [0, 20, 8]  # ' ', 't', 'h'
    assert text8.decode(tokens) == text
    assert text8.decode(tokens.astype(np.int32).tolist()) == text
    assert text8.decode(np.arange(27)) == text8.ALPHABET
    assert text8.encode("").shape == (0,) and text8.decode([]) == ""


@pytest.mark.parametrize("bad", ["Abc", "a_b", "caf\u00e9", "a\nb", "42"])
def test_encode_rejects_characters_outside_the_alphabet(bad: str) -> None:
    with pytest.raises(ValueError, match="text8_filter"):
        text8.encode(bad)


@pytest.mark.parametrize("bad", [[27], [-1], np.zeros((2, 3), dtype=np.uint8), [0.5]])
def test_decode_rejects_bad_tokens(bad) -> None:
    with pytest.raises(ValueError):
        text8.decode(bad)


# ----------------------------------------------------------------------------------------------
# Embedded Wikipedia excerpt
# ----------------------------------------------------------------------------------------------


def test_embedded_splits_are_90_5_5_contiguous_and_text8_characters() -> None:
    splits = {split: text8.load_text8(split) for split in text8.SPLITS}
    sizes = {split: data.num_tokens for split, data in splits.items()}
    assert sum(sizes.values()) == EMBEDDED_NUM_CHARS
    for split, percent in (("train", 90), ("validation", 5), ("test", 5)):
        assert abs(sizes[split] - EMBEDDED_NUM_CHARS * percent / 100) <= 1, sizes
    whole = text8._read_embedded_tokens(text8._embedded_xml_path())
    np.testing.assert_array_equal(
        np.concatenate([splits[split].tokens_N for split in text8.SPLITS]), whole
    )
    for split, data in splits.items():
        assert data.split == split and data.tokens_N.dtype == np.uint8
        assert data.tokens_N.max() < text8.VOCAB_SIZE
        assert not data.tokens_N.flags.writeable
        assert "embedded" in data.source and f"{split} split" in data.source
    assert text8.decode(splits["train"].tokens_N[:28]) == " anarchism is a political ph"
    assert text8.load_text8("test", source="embedded").source == splits["test"].source


def test_embedded_text_has_english_statistics() -> None:
    train = text8.load_text8("train").tokens_N
    counts = np.bincount(train, minlength=27)
    assert counts.argmax() == 0  # space, then 'e'
    assert counts[1:].argmax() + 1 == text8.ALPHABET.index("e")
    assert np.all(counts > 0)
    words = text8.decode(train[:200_000]).split()
    assert max(set(words), key=words.count) == "the"


def test_embedded_missing_gensim_is_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError) as caught:
        text8.load_text8("train")
    assert_one_line_error(caught.value, "pip install --no-deps gensim", "data.dir", "text8.zip")


# ----------------------------------------------------------------------------------------------
# text8 files
# ----------------------------------------------------------------------------------------------


def test_file_source_plain_and_zipped_small_text8(tmp_path: Path, no_network) -> None:
    text = random_text(2000, seed=1)
    plain_dir = tmp_path / "plain"
    zip_dir = tmp_path / "zipped"
    plain_dir.mkdir()
    zip_dir.mkdir()
    (plain_dir / "text8").write_text(text)
    write_zip(zip_dir / "text8.zip", {"text8": text.encode()})

    tokens = text8.encode(text)
    expected = {"train": tokens[:1800], "validation": tokens[1800:1900], "test": tokens[1900:]}
    for data_dir in (plain_dir, zip_dir):
        for split in text8.SPLITS:
            for source in ("auto", "file"):
                data = text8.load_text8(split, data_dir=str(data_dir), source=source)
                np.testing.assert_array_equal(data.tokens_N, expected[split])
                assert data.split == split
                assert str(data_dir) in data.source and "90%/5%/5%" in data.source
                assert "2,000 characters" in data.source


def test_file_source_prefers_unzipped_and_tolerates_final_newline(tmp_path: Path) -> None:
    text = random_text(400, seed=2)
    (tmp_path / "text8").write_text(text + "\n")
    write_zip(tmp_path / "text8.zip", {"text8": random_text(400, seed=3).encode()})
    data = text8.load_text8("train", data_dir=str(tmp_path))
    assert text8.decode(data.tokens_N) == text[:360]
    assert str(tmp_path / "text8") + " (" in data.source


def test_file_rewritten_on_disk_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "text8"
    path.write_text("a" * 100)
    assert text8.decode(text8.load_text8("test", data_dir=str(tmp_path)).tokens_N) == "a" * 5
    path.write_text("b" * 200)
    assert text8.decode(text8.load_text8("test", data_dir=str(tmp_path)).tokens_N) == "b" * 10


def test_standard_text8_length_uses_the_90m_5m_5m_split() -> None:
    n = text8.TEXT8_NUM_CHARS
    assert text8._split_bounds(n, "train") == (0, 90_000_000)
    assert text8._split_bounds(n, "validation") == (90_000_000, 95_000_000)
    assert text8._split_bounds(n, "test") == (95_000_000, 100_000_000)


def test_non_text8_file_is_data_error(tmp_path: Path) -> None:
    (tmp_path / "text8").write_text("this is Not text8 at all")
    with pytest.raises(DataError) as caught:
        text8.load_text8("train", data_dir=str(tmp_path))
    assert_one_line_error(caught.value, str(tmp_path / "text8"), "'N'", "offset 8", "text8-like")


def test_binary_and_bad_zip_files_are_data_errors(tmp_path: Path) -> None:
    binary_dir = tmp_path / "binary"
    binary_dir.mkdir()
    (binary_dir / "text8").write_bytes(b"abc\x00\n\xff" * 10)
    with pytest.raises(DataError) as caught:
        text8.load_text8("train", data_dir=str(binary_dir), source="file")
    assert_one_line_error(caught.value, "0x00", "text8-like")

    corrupt_dir = tmp_path / "corrupt"
    corrupt_dir.mkdir()
    (corrupt_dir / "text8.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError) as caught:
        text8.load_text8("train", data_dir=str(corrupt_dir))
    assert_one_line_error(caught.value, "text8.zip", "unreadable")

    wrong_dir = tmp_path / "wrong"
    wrong_dir.mkdir()
    write_zip(wrong_dir / "text8.zip", {"a.txt": b"abc", "b.txt": b"def"})
    with pytest.raises(DataError) as caught:
        text8.load_text8("train", data_dir=str(wrong_dir))
    assert_one_line_error(caught.value, "no member named text8", "a.txt")


def test_too_short_file_is_data_error(tmp_path: Path) -> None:
    (tmp_path / "text8").write_text("abc def")
    with pytest.raises(DataError) as caught:
        text8.load_text8("test", data_dir=str(tmp_path))
    assert_one_line_error(caught.value, "too few", "7 characters")


def test_missing_dir_and_empty_dir_are_data_errors(tmp_path: Path, no_network) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as caught:
        text8.load_text8("train", data_dir=str(missing))
    assert_one_line_error(caught.value, f"data.dir={missing} does not exist")

    (tmp_path / "unrelated.txt").write_text("hello")
    with pytest.raises(DataError) as caught:
        text8.load_text8("train", data_dir=str(tmp_path), source="file")
    assert_one_line_error(caught.value, str(tmp_path / "text8"), "text8.zip", "source='download'")

    with pytest.raises(DataError) as caught:
        text8.load_text8("train", data_dir=str(tmp_path / "unrelated.txt"))
    assert_one_line_error(caught.value, "is a file, not a directory")


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
        text8.load_text8(**kwargs)
    assert_one_line_error(caught.value, fragment)


def test_empty_data_dir_means_embedded(no_network) -> None:
    assert "embedded" in text8.load_text8("validation", data_dir="").source


# ----------------------------------------------------------------------------------------------
# Download (urlopen replaced by an in-memory fake: nothing touches the network)
# ----------------------------------------------------------------------------------------------


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _fake_zip_bytes(text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("text8", text.encode())
    return buffer.getvalue()


def test_download_checks_sha256_and_leaves_nothing_on_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = _fake_zip_bytes(random_text(300, seed=4))
    urls = []

    def fake_urlopen(url, timeout):
        urls.append((url, timeout))
        return _FakeResponse(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(DataError) as caught:
        text8.download_text8(str(tmp_path / "data"))
    assert_one_line_error(caught.value, "sha256", text8.TEXT8_SHA256, text8.TEXT8_URL)
    assert urls == [(text8.TEXT8_URL, 60.0)]
    assert list((tmp_path / "data").iterdir()) == []


def test_download_then_load_and_no_second_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = random_text(1000, seed=5)
    payload = _fake_zip_bytes(text)
    monkeypatch.setattr(text8, "TEXT8_SHA256", hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _FakeResponse(payload))
    path = text8.download_text8(str(tmp_path))
    assert path == str(tmp_path / "text8.zip") and Path(path).read_bytes() == payload

    def fail(*args, **kwargs):
        pytest.fail("a verified text8.zip is already there; no download expected")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    data = text8.load_text8("validation", data_dir=str(tmp_path), source="download")
    assert text8.decode(data.tokens_N) == text[900:950]


def test_unreachable_server_is_one_line_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    with pytest.raises(DataError) as caught:
        text8.load_text8("train", data_dir=str(tmp_path), source="download")
    assert_one_line_error(caught.value, "could not download", "by hand", "source='file'")
    assert not (tmp_path / "text8.zip.part").exists()


# ----------------------------------------------------------------------------------------------
# Crops and evaluation windows
# ----------------------------------------------------------------------------------------------


def test_eval_windows_non_overlapping_and_stride_one() -> None:
    tokens = np.arange(1000) % 27
    chunks = text8.eval_windows(tokens, seq_len=256)
    assert chunks.shape == (3, 256)  # 1000 // 256, the 232-character tail is dropped
    np.testing.assert_array_equal(chunks.reshape(-1), tokens[:768])
    every = text8.eval_windows(tokens, seq_len=256, stride=1)
    assert every.shape == (1000 - 256 + 1, 256)
    np.testing.assert_array_equal(every[17], tokens[17:273])
    assert text8.eval_windows(tokens, seq_len=256, stride=100).shape == (8, 256)
    assert not every.flags.writeable  # a view, not a 745 x 256 copy
    assert np.shares_memory(every, tokens)


def test_eval_windows_counts_on_embedded_test_split() -> None:
    test = text8.load_text8("test").tokens_N
    assert text8.eval_windows(test, seq_len=256).shape == (len(test) // 256, 256)
    assert text8.eval_windows(test, seq_len=256, stride=1).shape == (len(test) - 255, 256)


def test_windows_reject_bad_arguments() -> None:
    with pytest.raises(DataError, match="shorter than seq_len=256"):
        text8.eval_windows(np.zeros(100, dtype=np.uint8), seq_len=256)
    with pytest.raises(ValueError, match="stride"):
        text8.eval_windows(np.zeros(100, dtype=np.uint8), seq_len=10, stride=0)
    with pytest.raises(DataError):
        text8.crop_starts(10, 11, 0, 1)
    with pytest.raises(ValueError, match="window starts"):
        text8.take_windows(np.zeros(10, dtype=np.uint8), np.array([3]), 8)


def test_random_crops_are_in_bounds_seeded_and_cover_both_ends() -> None:
    tokens = np.arange(300, dtype=np.int64)
    crops = text8.random_crops(tokens, seq_len=32, count=64, rng=7)
    assert crops.shape == (64, 32)
    np.testing.assert_array_equal(np.diff(crops, axis=1), 1)  # contiguous windows of the text
    assert crops.min() >= 0 and crops.max() <= 299
    np.testing.assert_array_equal(
        crops, text8.random_crops(tokens, seq_len=32, count=64, rng=np.random.default_rng(7))
    )
    assert not np.array_equal(crops, text8.random_crops(tokens, seq_len=32, count=64, rng=8))

    starts = text8.crop_starts(10, 8, np.random.default_rng(0), 1000)
    assert starts.dtype == np.int64 and set(starts.tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(
        text8.take_windows(tokens, starts[:5], 8), tokens[starts[:5, None] + np.arange(8)]
    )


# ----------------------------------------------------------------------------------------------
# Unigram baseline
# ----------------------------------------------------------------------------------------------


def test_unigram_entropy_on_hand_computed_example() -> None:
    train = np.array([0, 0, 1])
    test = np.array([0, 1, 2])
    # add-one counts: space 3, 'a' 2, the other 25 letters 1 each -> total 30.
    expected = -(math.log2(3 / 30) + math.log2(2 / 30) + math.log2(1 / 30)) / 3
    assert text8.unigram_entropy_bits(train, test) == pytest.approx(expected, rel=1e-12)
    # With no training data the add-one distribution is uniform: log2(27) bits.
    assert text8.unigram_entropy_bits(np.array([], dtype=np.uint8), test) == pytest.approx(
        math.log2(27)
    )
    with pytest.raises(ValueError):
        text8.unigram_entropy_bits(train, np.array([], dtype=np.uint8))
    with pytest.raises(ValueError):
        text8.unigram_entropy_bits(train, np.array([27]))


def test_unigram_entropy_of_embedded_text_is_below_uniform() -> None:
    train = text8.load_text8("train").tokens_N
    test = text8.load_text8("test").tokens_N
    bits = text8.unigram_entropy_bits(train, test)
    assert 3.9 < bits < math.log2(27)  # English letters+space: about 4.1 bits
