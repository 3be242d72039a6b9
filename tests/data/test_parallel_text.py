"""Tests for deepgen.data.parallel_text: aligned files, the held-out split, TFDS errors, tokens."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from loader_checks import assert_one_line_error

from deepgen.core.errors import ConfigError, DataError
from deepgen.data import parallel_text as pt
from deepgen.data import sources

REAL_BIBLE_DIR = Path(__file__).resolve().parents[2].parent / "shared/data/bible_es_en"
BIBLE_NUM_PAIRS = 31_077  # neither file has an empty line, so no pair is dropped

ES_EN = {"source_lang": "es", "target_lang": "en"}


def write_lines(path: Path, lines: list[str], *, newline: str = "\n") -> Path:
    """Writes lines (each followed by newline), gzipped when the name ends in .gz."""
    data = "".join(line + newline for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


# ----------------------------------------------------------------------------------------------
# Tokens
# ----------------------------------------------------------------------------------------------


def test_token_ids() -> None:
    assert (pt.PAD, pt.BOS, pt.EOS, pt.VOCAB_SIZE) == (0, 1, 2, 259)


def test_encode_decode_round_trip_on_non_ascii_text() -> None:
    text = "año, ¿qué?"
    tokens = pt.encode(text.encode("utf-8"), add_eos=True)
    assert tokens.dtype == np.int32
    # a=0x61, ñ=0xC3 0xB1, o=0x6F, ','=0x2C, ' '=0x20, ¿=0xC2 0xBF, ... each + 3, then EOS.
    assert tokens.tolist() == [100, 198, 180, 114, 47, 35, 197, 194, 116, 120, 198, 172, 66, 2]
    assert pt.decode(tokens) == text
    assert pt.encode(text, add_eos=False).tolist() == tokens[:-1].tolist()
    assert pt.decode(pt.encode(b"", add_eos=True)) == ""
    assert pt.encode(b"\x00\xff", add_eos=False).tolist() == [3, 258]


def test_decode_stops_at_eos_and_skips_pad_and_bos() -> None:
    hi = [ord("h") + 3, ord("i") + 3]
    assert pt.decode([pt.BOS, *hi, pt.EOS, ord("x") + 3, pt.EOS]) == "hi"
    assert pt.decode([*hi, pt.PAD, pt.PAD]) == "hi"
    assert pt.decode(np.array([0xC3 + 3, pt.EOS])) == "\ufffd"  # a cut UTF-8 sequence
    for bad in ([259], [-1], [[3, 4]], [3.5]):
        with pytest.raises(ValueError):
            pt.decode(bad)


def test_pad_batch() -> None:
    batch = pt.pad_batch([b"ab", b"", "é".encode()], length=4, add_eos=True)
    np.testing.assert_array_equal(
        batch, [[100, 101, 2, 0], [2, 0, 0, 0], [0xC3 + 3, 0xA9 + 3, 2, 0]]
    )
    assert batch.dtype == np.int32
    np.testing.assert_array_equal(
        pt.pad_batch([b"abc"], length=3, add_eos=False), [[100, 101, 102]]
    )
    with pytest.raises(ValueError, match="line 0 has 4 tokens"):
        pt.pad_batch([b"abc"], length=3, add_eos=True)


@pytest.mark.parametrize(
    ("n", "multiple", "expected"),
    [
        (0, 50, 0),
        (1, 50, 50),
        (49, 50, 50),
        (50, 50, 50),
        (51, 50, 100),
        (117, 50, 150),
        (601, 50, 650),
        (9, 8, 16),
        (16, 8, 16),
    ],
)
def test_padded_length(n: int, multiple: int, expected: int) -> None:
    assert pt.padded_length(n, multiple) == expected


def test_padded_length_defaults_to_the_papers_50() -> None:
    assert pt.padded_length(73) == 100
    with pytest.raises(ValueError):
        pt.padded_length(-1)


# ----------------------------------------------------------------------------------------------
# The held-out split
# ----------------------------------------------------------------------------------------------


def test_heldout_split_is_disjoint_complete_and_seeded() -> None:
    indices = pt.heldout_indices(100, heldout=10, seed=0)
    sets = {split: set(idx.tolist()) for split, idx in indices.items()}
    assert {split: len(s) for split, s in sets.items()} == {
        "test": 10,
        "validation": 10,
        "train": 80,
    }
    assert sets["train"].isdisjoint(sets["test"]) and sets["train"].isdisjoint(sets["validation"])
    assert sets["test"].isdisjoint(sets["validation"])
    assert sets["train"] | sets["test"] | sets["validation"] == set(range(100))
    for idx in indices.values():
        assert np.all(np.diff(idx) > 0)  # corpus order
    again = pt.heldout_indices(100, heldout=10, seed=0)
    for split in pt.SPLITS:
        np.testing.assert_array_equal(indices[split], again[split])
    assert not np.array_equal(indices["test"], pt.heldout_indices(100, heldout=10, seed=1)["test"])
    # Pinned: np.random.default_rng(0).permutation(20) is the same in every process.
    assert {k: v.tolist() for k, v in pt.heldout_indices(20, heldout=3, seed=0).items()} == {
        "test": [4, 6, 19],
        "validation": [2, 13, 16],
        "train": [0, 1, 3, 5, 7, 8, 9, 10, 11, 12, 14, 15, 17, 18],
    }
    with pytest.raises(DataError) as caught:
        pt.heldout_indices(20, heldout=10, seed=0)
    assert_one_line_error(caught.value, "20 sentence pairs are too few", "smaller heldout")


# ----------------------------------------------------------------------------------------------
# The real Spanish-English Bible (../shared/data/bible_es_en)
# ----------------------------------------------------------------------------------------------


def test_real_bible_files() -> None:
    if not (REAL_BIBLE_DIR / "es.txt.gz").exists():
        pytest.skip(reason=f"the Spanish-English Bible files are not at {REAL_BIBLE_DIR}")
    splits = {
        split: pt.load_parallel(split, data_dir=str(REAL_BIBLE_DIR), **ES_EN) for split in pt.SPLITS
    }
    assert {s: d.num_pairs for s, d in splits.items()} == {
        "train": BIBLE_NUM_PAIRS - 2000 - 70,
        "validation": 1000,
        "test": 1000,
    }
    train = splits["train"]
    assert train.source_lines[0].decode().startswith("EN el principio crió Dios")
    assert train.target_lines[0].decode().startswith("In the beginning, God created")
    assert (train.source_lang, train.target_lang, train.split) == ("es", "en", "train")
    assert "31,077 aligned pairs, 0 with an empty side dropped" in train.source
    assert "es.txt.gz" in train.source and "en.txt.gz" in train.source
    assert "1,000 test and 1,000 validation pairs by a seed-0 permutation" in train.source
    # The Bible repeats some verse pairs word for word (one "Yahweh spoke to Moses, saying,"
    # pair 19 times): with seed 0 the 70 train copies of held-out pairs are removed.
    assert "70 repeats of a held-out pair removed" in train.source
    train_pairs = set(zip(train.source_lines, train.target_lines, strict=True))
    for split in ("validation", "test"):
        held = splits[split]
        assert not train_pairs & set(zip(held.source_lines, held.target_lines, strict=True))
    assert all(b"\n" not in line for line in train.source_lines + train.target_lines)
    # auto and files agree, and another seed holds out other verses.
    files = pt.load_parallel("test", data_dir=str(REAL_BIBLE_DIR), source="files", **ES_EN)
    assert files.source_lines == splits["test"].source_lines
    other = pt.load_parallel("test", data_dir=str(REAL_BIBLE_DIR), seed=1, **ES_EN)
    assert other.source_lines != splits["test"].source_lines
    reverse = pt.load_parallel(
        "test", data_dir=str(REAL_BIBLE_DIR), source_lang="en", target_lang="es"
    )
    assert reverse.source_lines == splits["test"].target_lines


# ----------------------------------------------------------------------------------------------
# Aligned files in tmp_path
# ----------------------------------------------------------------------------------------------

SPANISH = [f"frase número {i}, ¿sí?" for i in range(12)]
ENGLISH = [f"sentence number {i}, yes?" for i in range(12)]


@pytest.mark.parametrize(("es_name", "en_name"), [("es.txt", "en.txt.gz"), ("es.txt.gz", "en.txt")])
def test_plain_and_gzipped_files_with_empty_lines_dropped(
    tmp_path: Path, es_name: str, en_name: str
) -> None:
    spanish = [*SPANISH[:3], "", *SPANISH[3:6], "solo", *SPANISH[6:]]
    english = [*ENGLISH[:3], "only", *ENGLISH[3:6], "  ", *ENGLISH[6:]]
    write_lines(tmp_path / es_name, spanish, newline="\r\n")  # Windows line ends too
    write_lines(tmp_path / en_name, english)
    splits = {
        split: pt.load_parallel(split, data_dir=str(tmp_path), heldout=2, seed=5, **ES_EN)
        for split in pt.SPLITS
    }
    expected = pt.heldout_indices(12, heldout=2, seed=5)
    for split, data in splits.items():
        assert data.source_lines == tuple(SPANISH[i].encode() for i in expected[split])
        assert data.target_lines == tuple(ENGLISH[i].encode() for i in expected[split])
        assert "12 aligned pairs, 2 with an empty side dropped" in data.source
        assert str(tmp_path / es_name) in data.source and str(tmp_path / en_name) in data.source
    assert splits["train"].num_pairs == 8


def test_repeated_pairs_of_held_out_pairs_are_removed_from_train(tmp_path: Path) -> None:
    spanish = [("sí" if i % 3 == 0 else f"frase {i}") for i in range(12)]  # 0, 3, 6, 9 repeat
    english = [("yes" if i % 3 == 0 else f"sentence {i}") for i in range(12)]
    write_lines(tmp_path / "es.txt", spanish)
    write_lines(tmp_path / "en.txt", english)
    # seed 0: test [2, 9], validation [4, 7], train [0, 1, 3, 5, 6, 8, 10, 11] by index.
    load = {
        split: pt.load_parallel(split, data_dir=str(tmp_path), heldout=2, **ES_EN)
        for split in pt.SPLITS
    }
    assert load["test"].source_lines == (b"frase 2", "sí".encode())
    assert load["validation"].target_lines == (b"sentence 4", b"sentence 7")
    assert load["train"].source_lines == (
        b"frase 1",
        b"frase 5",
        b"frase 8",
        b"frase 10",
        b"frase 11",
    )
    assert "train split of 5 pairs" in load["train"].source
    assert "3 repeats of a held-out pair removed" in load["train"].source
    assert "repeats" not in load["test"].source


def test_plain_file_preferred_and_rewritten_file_read_again(tmp_path: Path) -> None:
    write_lines(tmp_path / "es.txt", SPANISH[:5])
    write_lines(tmp_path / "es.txt.gz", ["ignorado"] * 5)
    write_lines(tmp_path / "en.txt", ENGLISH[:5])
    test = pt.load_parallel("test", data_dir=str(tmp_path), heldout=1, **ES_EN)
    index = pt.heldout_indices(5, heldout=1, seed=0)["test"][0]
    assert test.source_lines == (SPANISH[index].encode(),)
    write_lines(tmp_path / "es.txt", [line.upper() for line in SPANISH[:5]])
    test = pt.load_parallel("test", data_dir=str(tmp_path), heldout=1, **ES_EN)
    assert test.source_lines == (SPANISH[index].upper().encode(),)


def test_mismatched_line_counts_are_data_error(tmp_path: Path) -> None:
    write_lines(tmp_path / "es.txt", SPANISH[:5])
    write_lines(tmp_path / "en.txt.gz", ENGLISH[:4])
    with pytest.raises(DataError) as caught:
        pt.load_parallel("train", data_dir=str(tmp_path), heldout=1, **ES_EN)
    assert_one_line_error(
        caught.value,
        f"{tmp_path / 'es.txt'} has 5 lines",
        f"{tmp_path / 'en.txt.gz'} has 4",
        "not aligned",
    )


def test_non_utf8_file_is_data_error(tmp_path: Path) -> None:
    (tmp_path / "es.txt").write_bytes("a\nniño\n".encode("latin-1"))
    write_lines(tmp_path / "en.txt", ["a", "child"])
    with pytest.raises(DataError) as caught:
        pt.load_parallel("train", data_dir=str(tmp_path), heldout=1, **ES_EN)
    assert_one_line_error(caught.value, "not UTF-8", "0xF1", "line 2", "iconv")


def test_missing_files_and_missing_data_dir(tmp_path: Path) -> None:
    write_lines(tmp_path / "es.txt", SPANISH)
    with pytest.raises(DataError) as caught:
        pt.load_parallel("train", data_dir=str(tmp_path), source="files", **ES_EN)
    assert_one_line_error(caught.value, f"has no {tmp_path / 'en.txt[.gz]'}", "bible_es_en")
    with pytest.raises(DataError) as caught:  # auto finds neither the files nor TFDS
        pt.load_parallel("train", data_dir=str(tmp_path), **ES_EN)
    assert_one_line_error(caught.value, "no usable es-en parallel text", "en.txt[.gz]")
    with pytest.raises(DataError) as caught:
        pt.load_parallel("train", data_dir=str(tmp_path / "nope"), **ES_EN)
    assert_one_line_error(caught.value, f"data.dir={tmp_path / 'nope'} does not exist")

    for data_dir in (None, ""):
        with pytest.raises(DataError) as caught:
            pt.load_parallel("train", data_dir=data_dir, **ES_EN)
        assert_one_line_error(
            caught.value, "no embedded copy", "set data.dir", "es.txt[.gz]", "en.txt[.gz]"
        )
        assert "../shared/data/bible_es_en" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        pt.load_parallel("train", source="files", **ES_EN)
    assert_one_line_error(caught.value, "source='files' needs data.dir")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"split": "valid", **ES_EN}, "'validation'"),
        ({"split": "train", "source": "embedded", **ES_EN}, "'files'"),
        ({"split": "train", "source_lang": "es", "target_lang": "es"}, "both 'es'"),
        ({"split": "train", "source_lang": "../es", "target_lang": "en"}, "source_lang="),
        ({"split": "train", "heldout": 0, **ES_EN}, "heldout=0"),
        ({"split": "train", "seed": -1, **ES_EN}, "seed=-1"),
    ],
)
def test_bad_options_are_config_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        pt.load_parallel(**kwargs)
    assert_one_line_error(caught.value, fragment)


def test_filter_by_length(tmp_path: Path) -> None:
    split = pt.ParallelSplit(
        source_lines=(b"abc", b"abcd", b"a", b"abcdef"),
        target_lines=(b"xyz", b"x", b"wxyz", b"x"),
        split="train",
        source="four pairs",
        source_lang="es",
        target_lang="en",
    )
    short = pt.filter_by_length(split, 4)  # 3 bytes + EOS fit, 4 bytes + EOS do not
    assert short.source_lines == (b"abc",) and short.target_lines == (b"xyz",)
    assert (short.split, short.source_lang, short.target_lang) == ("train", "es", "en")
    assert (
        short.source
        == "four pairs; kept 1 of 4 pairs whose source and target with EOS fit in 4 tokens"
    )
    assert pt.filter_by_length(split, 7).num_pairs == 4
    pt.pad_batch(short.source_lines, length=4, add_eos=True)  # what the filter guarantees


# ----------------------------------------------------------------------------------------------
# TFDS (WMT): only the errors and the conversion, no TFDS data exists here
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tfds_name", ["wmt14_translate/de-en", "wmt15_translate/de-en"])
def test_missing_tfds_dataset_says_how_to_prepare_it(tmp_path: Path, tfds_name: str) -> None:
    pytest.importorskip("tensorflow_datasets")
    (tmp_path / tfds_name).mkdir(parents=True)  # auto picks tfds, nothing is prepared
    with pytest.raises(DataError) as caught:
        pt.load_parallel(
            "test", data_dir=str(tmp_path), source_lang="de", target_lang="en", tfds_name=tfds_name
        )
    assert_one_line_error(
        caught.value,
        f"TFDS dataset {tfds_name}",
        f"tfds build {tfds_name} --data_dir={tmp_path} --file_format=array_record",
        "de.txt[.gz] and en.txt[.gz]",
        "source='files'",
    )


def test_tfds_examples_become_utf8_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    examples = [
        {"de": "Grüß Gott", "en": b"Hello"},
        {"de": np.bytes_(b"Danke"), "en": np.array(b"Thanks")},
        {"de": b"", "en": b"dropped"},
    ]
    calls = []

    def fake_load_tfds_split(name, split, data_dir, **kwargs):
        calls.append((name, split, data_dir))
        return sources.TfdsSplit(examples, f"{name}:mock in {data_dir}", split, 3, "hint")

    monkeypatch.setattr(sources, "load_tfds_split", fake_load_tfds_split)
    data = pt.load_parallel(
        "validation", data_dir=str(tmp_path), source="tfds", source_lang="de", target_lang="en"
    )
    assert calls == [("wmt14_translate/de-en", "validation", str(tmp_path))]
    assert data.source_lines == ("Grüß Gott".encode(), b"Danke")
    assert data.target_lines == (b"Hello", b"Thanks")
    assert data.source == (
        f"TFDS wmt14_translate/de-en:mock in {tmp_path} split validation "
        "(2 pairs, 1 with an empty side dropped; TFDS's own split)"
    )
    with pytest.raises(DataError) as caught:
        pt.load_parallel(
            "test", data_dir=str(tmp_path), source="tfds", source_lang="fr", target_lang="en"
        )
    assert_one_line_error(caught.value, "no usable 'fr' text feature", "features: de, en", "hint")
