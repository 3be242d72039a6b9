"""Tests for deepgen.data.sources (source choice, data.dir checks, TFDS helpers) and ImageSplit.

A toy dataset declared here stands in for a real one: its loaders only record how they were
called. TFDS is replaced by a fake module, so nothing here needs tensorflow_datasets or files
beyond tmp_path.
"""

from __future__ import annotations

import hashlib
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from deepgen.core.errors import ConfigError, DataError
from deepgen.data import sources
from deepgen.data.images import ImageSplit

TOY_FILE = "toy.txt"
TOY_FILE_WHAT = f"{TOY_FILE} (the toy file)"
TOY_TFDS_WHAT = "a TFDS dataset toy/<version>/ made by `tfds build toy --file_format=array_record`"


def _recorder(name: str):
    def load(split: str, data_dir: str | None) -> tuple[str, str, str | None]:
        return name, split, data_dir

    return load


def _has_toy_file(data_dir: str) -> bool:
    return os.path.isfile(os.path.join(data_dir, TOY_FILE))


def toy_sources(*, default: str | None = "embedded", tfds_first: bool = False):
    """embedded (ignores data.dir), file (toy.txt), tfds (toy/), download (creates data.dir)."""
    detectable = {
        "file": sources.Source(_recorder("file"), TOY_FILE_WHAT, found_in=_has_toy_file),
        "tfds": sources.tfds_source("toy", _recorder("tfds")),
    }
    if tfds_first:
        detectable = dict(reversed(detectable.items()))
    return sources.DatasetSources(
        title="Toy",
        splits=("train", "test"),
        sources={
            "embedded": sources.Source(
                _recorder("embedded"), "the embedded toy", data_dir="ignored"
            ),
            **detectable,
            "download": sources.Source(_recorder("download"), "toy.zip", data_dir="created"),
        },
        default=default,
    )


TOY = toy_sources()
TOY_HOLDS = f"{TOY_FILE_WHAT} or {TOY_TFDS_WHAT}"


def one_line_message(caught: pytest.ExceptionInfo) -> str:
    message = str(caught.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------------------------
# Declaration
# ----------------------------------------------------------------------------------------------


def test_declaration_gives_choices_holds_and_fallback() -> None:
    assert TOY.choices == ("auto", "embedded", "file", "tfds", "download")
    assert TOY.holds == TOY_HOLDS  # only the sources auto can find, in declaration order
    assert TOY.fallback == "the embedded toy"
    assert toy_sources(default=None).fallback == ""


def test_bad_declarations_are_rejected() -> None:
    load = _recorder("x")
    with pytest.raises(ValueError, match="'auto' is not a source name"):
        sources.DatasetSources("Toy", ("train",), {"auto": sources.Source(load, "x")})
    with pytest.raises(ValueError, match="default 'embedded'"):
        sources.DatasetSources("Toy", ("train",), {"file": sources.Source(load, "x")})
    with pytest.raises(ValueError, match="data_dir='sometimes'"):
        sources.Source(load, "x", data_dir="sometimes")


# ----------------------------------------------------------------------------------------------
# check_choice and the split / source checks
# ----------------------------------------------------------------------------------------------


def test_check_choice_message_names_the_field_and_the_allowed_values() -> None:
    sources.check_choice("name", "a", ("a", "b"))
    with pytest.raises(ConfigError) as caught:
        sources.check_choice("name", "c", ("a", "b"))
    assert one_line_message(caught) == "name='c' is not supported; use one of 'a', 'b'"


def test_bad_split_and_source_are_config_errors_listing_the_allowed_values() -> None:
    with pytest.raises(ConfigError) as caught:
        sources.load(TOY, "valid")
    assert one_line_message(caught) == "split='valid' is not supported; use one of 'train', 'test'"
    with pytest.raises(ConfigError) as caught:
        sources.load(TOY, "train", source="http")
    assert one_line_message(caught) == (
        "source='http' is not supported; use one of 'auto', 'embedded', 'file', 'tfds', 'download'"
    )


# ----------------------------------------------------------------------------------------------
# auto: which source, in which order
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data_dir", [None, ""])
def test_auto_without_data_dir_uses_the_default(data_dir: str | None) -> None:
    assert sources.load(TOY, "test", data_dir=data_dir) == ("embedded", "test", None)


def test_auto_picks_the_first_source_found_in_declaration_order(tmp_path: Path) -> None:
    (tmp_path / "toy").mkdir()
    assert sources.load(TOY, "train", data_dir=tmp_path) == ("tfds", "train", str(tmp_path))
    (tmp_path / TOY_FILE).write_text("x")
    assert sources.load(TOY, "train", data_dir=tmp_path) == ("file", "train", str(tmp_path))
    tfds_first = toy_sources(tfds_first=True)
    assert sources.load(tfds_first, "train", data_dir=tmp_path)[0] == "tfds"
    assert TOY.detect(str(tmp_path)) == "file" and TOY.detect(None) == "embedded"


def test_auto_with_nothing_usable_names_the_folder_and_what_it_should_hold(tmp_path: Path) -> None:
    (tmp_path / "unrelated.txt").write_text("x")
    with pytest.raises(DataError) as caught:
        sources.load(TOY, "train", data_dir=str(tmp_path))
    assert one_line_message(caught) == (
        f"data.dir={tmp_path} has no usable Toy data: expected {TOY_HOLDS}; put it there or fix "
        "data.dir, or leave data.dir empty to use the embedded toy"
    )


def test_auto_without_data_dir_or_default_is_data_error() -> None:
    with pytest.raises(DataError) as caught:
        sources.load(toy_sources(default=None), "train")
    assert one_line_message(caught) == (
        f"Toy has no embedded copy; set data.dir to a folder with {TOY_HOLDS}"
    )


# ----------------------------------------------------------------------------------------------
# data.dir checks and dispatch
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["auto", "file", "tfds"])
def test_missing_data_dir_is_one_line_data_error(tmp_path: Path, source: str) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(DataError) as caught:
        sources.load(TOY, "train", data_dir=str(missing), source=source)
    assert one_line_message(caught) == (
        f"data.dir={missing} does not exist; create it with {TOY_HOLDS} inside, or leave "
        "data.dir empty to use the embedded toy"
    )


def test_data_dir_that_is_a_file_is_data_error(tmp_path: Path) -> None:
    path = tmp_path / "a-file"
    path.write_text("x")
    with pytest.raises(DataError) as caught:
        sources.load(TOY, "train", data_dir=str(path), source="file")
    assert one_line_message(caught) == (
        f"data.dir={path} is a file, not a directory; point data.dir at the folder that holds "
        f"{TOY_HOLDS}"
    )


def test_require_existing_dir_without_fallback(tmp_path: Path) -> None:
    sources.require_existing_dir(str(tmp_path), "toys")
    with pytest.raises(DataError) as caught:
        sources.require_existing_dir(str(tmp_path / "x"), "toys")
    assert (
        one_line_message(caught)
        == f"data.dir={tmp_path / 'x'} does not exist; create it with toys inside"
    )


def test_file_digest_matches_hashlib(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 5000  # over one read chunk
    path = tmp_path / "data.bin"
    path.write_bytes(payload)
    assert sources.file_digest(str(path), "md5") == hashlib.md5(payload).hexdigest()
    assert sources.file_digest(str(path), "sha256") == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("source", ["file", "download"])
def test_sources_that_need_data_dir_say_so(source: str) -> None:
    what = TOY.sources[source].what
    with pytest.raises(ConfigError) as caught:
        sources.load(TOY, "train", source=source)
    assert one_line_message(caught) == (
        f"source={source!r} needs data.dir set to a folder with {what}; set data.dir or use "
        "source='auto'"
    )


def test_each_source_gets_data_dir_as_it_declares(tmp_path: Path) -> None:
    missing = str(tmp_path / "made-by-the-loader")
    # ignored: never checked, never passed on.
    assert sources.load(TOY, "train", data_dir=missing, source="embedded") == (
        "embedded",
        "train",
        None,
    )
    # created: not checked (the loader makes it), passed on.
    assert sources.load(TOY, "test", data_dir=missing, source="download") == (
        "download",
        "test",
        missing,
    )
    # optional: may be unset; a set one is checked and passed on as a str.
    assert sources.load(TOY, "train", source="tfds") == ("tfds", "train", None)
    assert sources.load(TOY, "train", data_dir=tmp_path, source="tfds") == (
        "tfds",
        "train",
        str(tmp_path),
    )
    # required: checked and passed on even when auto would not find the files.
    assert sources.load(TOY, "test", data_dir=tmp_path, source="file") == (
        "file",
        "test",
        str(tmp_path),
    )


# ----------------------------------------------------------------------------------------------
# TFDS helpers (a fake tensorflow_datasets module)
# ----------------------------------------------------------------------------------------------


class _BatchReader(list):
    """A data source with a batch read, like tfds's ArrayRecordDataSource."""

    batch_reads = 0

    def __getitems__(self, indices):
        type(self).batch_reads += 1
        return [self[i] for i in indices]


class _BrokenBatchReader(list):
    def __getitems__(self, indices):
        raise TypeError("no batch read here")


def _examples(num: int) -> list[dict]:
    return [{"image": np.full((2, 2), i, np.uint8), "label": np.int64(i % 3)} for i in range(num)]


def fake_tfds(monkeypatch: pytest.MonkeyPatch, data_source=None, *, prepared=True, error=None):
    """Installs a fake tensorflow_datasets; returns the list of data_source calls it saw."""
    calls = []

    def data_source_fn(name, *, split, data_dir, download):
        calls.append((name, split, data_dir, download))
        if error is not None:
            raise error
        return data_source

    builder = types.SimpleNamespace(
        is_prepared=lambda: prepared, version="1.2.3", data_dir="/looked/here/toy/1.2.3"
    )
    module = types.SimpleNamespace(
        data_source=data_source_fn, builder=lambda name, data_dir: builder
    )
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)
    return calls


def test_tfds_build_hint_text() -> None:
    assert sources.tfds_build_hint("toy", "/d") == (
        "prepare it with `tfds build toy --data_dir=/d --file_format=array_record` on a machine "
        "with TensorFlow and copy it over"
    )
    assert sources.tfds_build_hint("toy", None, "use toy.zip").endswith(
        "--data_dir=DIR --file_format=array_record` on a machine with TensorFlow and copy it "
        "over, or use toy.zip"
    )


def test_describe_prepared_tfds(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tfds(monkeypatch)
    assert sources.describe_prepared_tfds("toy", "/d") == "toy:1.2.3 in /d"
    assert sources.describe_prepared_tfds("toy", None) == "toy:1.2.3 in the default TFDS data_dir"
    fake_tfds(monkeypatch, prepared=False)
    with pytest.raises(DataError) as caught:
        sources.describe_prepared_tfds("toy", "/d", alternative="use toy.zip")
    assert one_line_message(caught) == (
        "TFDS dataset toy is not prepared in /d (looked for /looked/here/toy/1.2.3); "
        f"{sources.tfds_build_hint('toy', '/d', 'use toy.zip')}"
    )


@pytest.mark.parametrize("reader", [_BatchReader, _BrokenBatchReader, list])
def test_read_tfds_examples_with_and_without_batch_reads(reader) -> None:
    examples = _examples(5)
    assert sources.read_tfds_examples(reader(examples), np.array([4, 0, 2])) == [
        examples[4],
        examples[0],
        examples[2],
    ]


def test_load_tfds_split_reads_the_selected_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    examples = _examples(6)
    calls = fake_tfds(monkeypatch, _BatchReader(examples))
    seen = []

    def select(num_examples: int, where: str) -> range:
        seen.append((num_examples, where))
        return range(1, 4)

    read = sources.load_tfds_split("toy", "train", "/d", select=select)
    assert calls == [("toy", "train", "/d", False)]  # never downloads
    assert seen == [(6, "TFDS toy:1.2.3 in /d split train")]
    assert read.examples == examples[1:4] and read.num_source == 6
    assert (read.description, read.tfds_split) == ("toy:1.2.3 in /d", "train")
    np.testing.assert_array_equal(
        read.feature("image"), np.stack([e["image"] for e in examples[1:4]])
    )
    labels = read.feature("label", np.int32)
    assert labels.dtype == np.int32 and labels.tolist() == [1, 2, 0]
    assert len(sources.load_tfds_split("toy", "test", None).examples) == 6  # all by default


def test_load_tfds_split_failures_are_one_line_data_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    hint = sources.tfds_build_hint("toy", "/d")
    fake_tfds(monkeypatch, error=NotImplementedError("TFRECORD is not supported.\n\t* details"))
    with pytest.raises(DataError) as caught:
        sources.load_tfds_split("toy", "test", "/d")
    assert one_line_message(caught) == (
        f"TFDS toy:1.2.3 in /d split test could not be read (NotImplementedError: TFRECORD is "
        f"not supported.); {hint}"
    )

    fake_tfds(monkeypatch, [])
    with pytest.raises(DataError) as caught:
        sources.load_tfds_split("toy", "test", "/d")
    assert one_line_message(caught) == f"TFDS toy:1.2.3 in /d split test has no examples; {hint}"

    def refuse(num_examples: int, where: str):
        raise DataError(f"{where} is too small")

    fake_tfds(monkeypatch, _examples(2))
    with pytest.raises(DataError) as caught:
        sources.load_tfds_split("toy", "train", "/d", select=refuse)
    assert one_line_message(caught) == "TFDS toy:1.2.3 in /d split train is too small"

    read = sources.load_tfds_split("toy", "train", "/d")
    with pytest.raises(DataError) as caught:
        read.feature("pixels")
    assert one_line_message(caught).startswith(
        "TFDS toy:1.2.3 in /d split train has no usable 'pixels' feature (KeyError"
    )


def test_tfds_source_detects_the_dataset_folder(tmp_path: Path) -> None:
    source = sources.tfds_source("toy", _recorder("tfds"))
    assert source.data_dir == "optional" and source.what == TOY_TFDS_WHAT
    assert not source.found_in(str(tmp_path))
    (tmp_path / "toy").mkdir()
    assert source.found_in(str(tmp_path))


# ----------------------------------------------------------------------------------------------
# ImageSplit
# ----------------------------------------------------------------------------------------------


def test_image_split_names_each_layout() -> None:
    grey = ImageSplit(np.zeros((3, 4, 4), np.float32), np.zeros(3, np.int32), "test", "here")
    colour = ImageSplit(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, np.int32), "train", "there")
    assert grey.num_examples == 3 and colour.num_examples == 2
    assert grey.intensities_NxHxW is grey.images and colour.images_NxHxWxC is colour.images
    assert colour.description == colour.source == "there"
    with pytest.raises(AttributeError, match="images_NxHxWxC needs 4-D images"):
        _ = grey.images_NxHxWxC
    assert not hasattr(colour, "intensities_NxHxW")


def test_image_split_rejects_mismatched_arrays() -> None:
    with pytest.raises(ValueError, match="labels_N"):
        ImageSplit(np.zeros((3, 4, 4)), np.zeros(2, np.int32), "test", "here")
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        ImageSplit(np.zeros((3, 4)), np.zeros(3, np.int32), "test", "here")
