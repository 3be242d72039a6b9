"""Tests for deepgen.data.omniglot: the real small zips, synthetic full zips and mocked TFDS."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from loader_checks import (
    assert_one_line_error,
    pretend_prepared_tfds,
    row_set,
    tfds_read_failure,
    unprepared_tfds_error,
)
from PIL import Image

from deepgen.core.errors import ConfigError, DataError
from deepgen.data import omniglot
from deepgen.data.images import ImageSplit

REAL_OMNIGLOT_DIR = Path(__file__).resolve().parents[2].parent / "shared/data/omniglot"
SMALL1_SIZE, SMALL2_SIZE = 2720, 3120
SHARED_ALPHABETS = ("Greek", "Latin")  # in both small zips, byte for byte
SMALL2_ONLY_ALPHABETS = ("Japanese_(katakana)", "Sanskrit", "Tagalog")


def png_bytes(pixels_HxW: np.ndarray) -> bytes:
    """A 1-bit PNG like Omniglot's (True = white background) from a boolean array."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels_HxW, dtype=bool)).save(buffer, format="PNG")
    return buffer.getvalue()


def square_png(position: int) -> bytes:
    """White 105x105 with a black 15x15 square in cell `position` of the 7x7 grid of cells."""
    pixels = np.ones((105, 105), dtype=bool)
    row, col = divmod(position, 7)
    pixels[15 * row : 15 * row + 15, 15 * col : 15 * col + 15] = False
    return png_bytes(pixels)


def square_ink(position: int, side: int = 28) -> np.ndarray:
    """The expected ink of square_png(position) at side x side: 1 on the square's cell, 0 else."""
    cell = side // 7
    ink = np.zeros((side, side), dtype=np.float32)
    row, col = divmod(position, 7)
    ink[cell * row : cell * row + cell, cell * col : cell * col + cell] = 1.0
    return ink


def write_omniglot_zip(path: Path, characters: dict[str, int], first_position: int = 0) -> dict:
    """A zip in the Omniglot layout: 'Alphabet/characterNN' -> number of drawers.

    Image k (in member order) gets square position first_position + k; returns member -> position.
    """
    top = path.stem
    positions = {}
    position = first_position
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top}/", b"")
        for character_number, character in enumerate(sorted(characters)):
            for drawer in range(1, characters[character] + 1):
                member = f"{top}/{character}/{character_number + 1:04d}_{drawer:02d}.png"
                archive.writestr(member, square_png(position))
                positions[member] = position
                position += 1
    return positions


def independent_ink(png: bytes) -> np.ndarray:
    """An Omniglot PNG as ink at 28x28, by the spec: invert, upsample x4, mean over 15x15 blocks."""
    with Image.open(io.BytesIO(png)) as image:
        ink = 1.0 - np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    upsampled = np.repeat(np.repeat(ink, 4, axis=0), 4, axis=1)
    return upsampled.reshape(28, 15, 28, 15).mean(axis=(1, 3)).astype(np.float32)


def assert_ink_images(data: ImageSplit, side: int = 28) -> None:
    """float32 (N, side, side) in [0, 1] and int32 labels."""
    assert data.intensities_NxHxW.shape == (data.num_examples, side, side)
    assert data.intensities_NxHxW.dtype == np.float32 and data.labels_N.dtype == np.int32
    assert data.intensities_NxHxW.min() >= 0.0 and data.intensities_NxHxW.max() <= 1.0


# ----------------------------------------------------------------------------------------------
# The real small zips (../shared/data/omniglot)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real() -> dict[str, ImageSplit]:
    """Every split of the real small zips, decoded once for the module."""
    if not (REAL_OMNIGLOT_DIR / omniglot.SMALL1_ZIP).exists():
        pytest.skip(reason=f"real Omniglot small zips not found at {REAL_OMNIGLOT_DIR}")
    return {
        split: omniglot.load_omniglot(split, data_dir=REAL_OMNIGLOT_DIR)
        for split in omniglot.SPLITS
    }


@pytest.fixture(scope="module")
def real_names(real: dict[str, ImageSplit]) -> tuple[str, ...]:
    return omniglot.omniglot_class_names(data_dir=REAL_OMNIGLOT_DIR)


def test_real_small_zips_shapes_range_and_sparse_ink(real: dict[str, ImageSplit]) -> None:
    holdout = SMALL1_SIZE * omniglot.VALIDATION_PERCENT // 100
    sizes = {split: data.num_examples for split, data in real.items()}
    assert sizes == {"train": SMALL1_SIZE - holdout, "validation": holdout, "test": 2120}
    for split, data in real.items():
        assert_ink_images(data)
        assert data.split == split
        ink = data.intensities_NxHxW
        assert ink.min() == 0.0 and ink.max() == 1.0  # background and solid strokes
        assert 0.03 < ink.mean() < 0.2  # strokes are sparse: ink, not background, is 1
        assert np.all(ink.mean(axis=(1, 2)) > 0.0)  # every character has some ink
        assert len(np.unique(ink)) > 2  # grey values kept at the strokes' edges


def test_real_labels_are_global_sorted_characters(
    real: dict[str, ImageSplit], real_names: tuple[str, ...]
) -> None:
    assert len(real_names) == 136 + 156 - 50 and list(real_names) == sorted(real_names)
    all_labels = np.concatenate([data.labels_N for data in real.values()])
    np.testing.assert_array_equal(np.unique(all_labels), np.arange(len(real_names)))
    test_alphabets = {real_names[label].split("/")[0] for label in real["test"].labels_N}
    assert test_alphabets == set(SMALL2_ONLY_ALPHABETS)
    train_alphabets = {real_names[label].split("/")[0] for label in real["train"].labels_N}
    assert train_alphabets == {"Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"}


def test_real_pixels_and_labels_match_an_independent_decode(
    real: dict[str, ImageSplit], real_names: tuple[str, ...]
) -> None:
    parts = {
        omniglot.SMALL1_ZIP: (real["train"], real["validation"]),
        omniglot.SMALL2_ZIP: (real["test"],),
    }
    rng = np.random.default_rng(0)
    for zip_name, splits in parts.items():
        images_NxD = np.concatenate(
            [d.intensities_NxHxW.reshape(d.num_examples, -1) for d in splits]
        )
        labels_N = np.concatenate([d.labels_N for d in splits])
        with zipfile.ZipFile(REAL_OMNIGLOT_DIR / zip_name) as archive:
            members = sorted(n for n in archive.namelist() if n.endswith(".png"))
            for member in rng.choice(members, size=30, replace=False):
                character = "/".join(member.split("/")[1:3])
                if zip_name == omniglot.SMALL2_ZIP and character.startswith(SHARED_ALPHABETS):
                    continue  # left out of test: small1 holds the same images
                ink = independent_ink(archive.read(member)).reshape(-1)
                matches = np.abs(images_NxD - ink).max(axis=1) < 1e-6
                assert matches.any(), member
                assert real_names.index(character) in labels_N[matches], member


def test_real_train_validation_split_small1_and_test_is_small2(
    real: dict[str, ImageSplit],
) -> None:
    train, validation, test = (row_set(real[s].intensities_NxHxW) for s in omniglot.SPLITS)
    assert not train & validation
    assert not (train | validation) & test  # the Greek and Latin duplicates are left out
    assert real["train"].num_examples + real["validation"].num_examples == SMALL1_SIZE
    for split in ("train", "validation"):
        assert omniglot.SMALL1_ZIP in real[split].source
    assert "train minus" in real["train"].source and "holdout" in real["validation"].source
    assert omniglot.SMALL2_ZIP in real["test"].source
    assert "minus 1,000 images" in real["test"].source
    assert all("stand in" in data.source for data in real.values())


def test_real_holdout_is_fixed_and_loads_are_cached_private_copies(
    real: dict[str, ImageSplit],
) -> None:
    # Pinned: a changed seed or rule would move images between train and validation.
    holdout = omniglot._validation_holdout_indices(SMALL1_SIZE, "validation", "")
    assert holdout[:5].tolist() == [5, 44, 56, 59, 72] and len(holdout) == 136
    rest = omniglot._validation_holdout_indices(SMALL1_SIZE, "train", "")
    np.testing.assert_array_equal(np.sort(np.concatenate([holdout, rest])), np.arange(SMALL1_SIZE))

    hits = omniglot._decode_zip.cache_info().hits
    again = omniglot.load_omniglot("validation", data_dir=str(REAL_OMNIGLOT_DIR), source="zips")
    assert omniglot._decode_zip.cache_info().hits == hits + 1  # not decoded again
    np.testing.assert_array_equal(again.intensities_NxHxW, real["validation"].intensities_NxHxW)
    np.testing.assert_array_equal(again.labels_N, real["validation"].labels_N)
    again.intensities_NxHxW[:] = 0.0  # callers may scribble on their copy
    third = omniglot.load_omniglot("validation", data_dir=str(REAL_OMNIGLOT_DIR))
    np.testing.assert_array_equal(third.intensities_NxHxW, real["validation"].intensities_NxHxW)


# ----------------------------------------------------------------------------------------------
# Synthetic zips: the full background/evaluation convention, inversion and area averaging
# ----------------------------------------------------------------------------------------------

BACKGROUND_CHARACTERS = {  # 20 images, so that 5% is one validation image
    "Beta/character01": 5,
    "Beta/character02": 5,
    "Alpha/character01": 5,
    "Alpha/character02": 5,
}
EVALUATION_CHARACTERS = {"Gamma/character01": 2, "Aleph/character01": 1}


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """images_background.zip and images_evaluation.zip, and decoy small zips the loader skips."""
    folder = tmp_path_factory.mktemp("omniglot_full")
    write_omniglot_zip(folder / omniglot.BACKGROUND_ZIP, BACKGROUND_CHARACTERS)
    write_omniglot_zip(folder / omniglot.EVALUATION_ZIP, EVALUATION_CHARACTERS, 20)
    write_omniglot_zip(folder / omniglot.SMALL1_ZIP, {"Decoy/character01": 20}, 30)
    write_omniglot_zip(folder / omniglot.SMALL2_ZIP, {"Decoy/character01": 2}, 30)
    return folder


def test_full_zips_give_background_train_and_evaluation_test(full_dir: Path) -> None:
    splits = {s: omniglot.load_omniglot(s, data_dir=full_dir) for s in omniglot.SPLITS}
    names = omniglot.omniglot_class_names(data_dir=full_dir)
    assert names == (
        "Aleph/character01",
        "Alpha/character01",
        "Alpha/character02",
        "Beta/character01",
        "Beta/character02",
        "Gamma/character01",
    )
    assert {s: d.num_examples for s, d in splits.items()} == {
        "train": 19,
        "validation": 1,
        "test": 3,
    }
    for data in splits.values():
        assert_ink_images(data)
        assert "small" not in data.source
    assert omniglot.BACKGROUND_ZIP in splits["train"].source
    assert omniglot.BACKGROUND_ZIP in splits["validation"].source
    assert omniglot.EVALUATION_ZIP in splits["test"].source
    assert "minus" not in splits["test"].source  # the alphabets are disjoint: nothing dropped
    # Members in name order: Alpha/character01 first (positions 0-4), then Alpha/character02, ...
    background_order = sorted(BACKGROUND_CHARACTERS)
    train_and_validation = np.concatenate(
        [splits["train"].intensities_NxHxW, splits["validation"].intensities_NxHxW]
    )
    labels = np.concatenate([splits["train"].labels_N, splits["validation"].labels_N])
    for image, label in zip(train_and_validation, labels, strict=True):
        position = int(np.argmax(image[::4, ::4]))  # the 4x4 cell that holds the ink
        np.testing.assert_array_equal(image, square_ink(position))  # inverted, exactly averaged
        assert names[label] == background_order[position // 5]
    assert sorted(int(np.argmax(image[::4, ::4])) for image in train_and_validation) == list(
        range(20)
    )
    np.testing.assert_array_equal(splits["validation"].intensities_NxHxW[0], square_ink(1))
    test_positions = [int(np.argmax(image[::4, ::4])) for image in splits["test"].intensities_NxHxW]
    assert test_positions == [20, 21, 22]
    assert [names[label] for label in splits["test"].labels_N] == [
        "Aleph/character01",
        "Gamma/character01",
        "Gamma/character01",
    ]


def test_black_square_on_white_is_full_ink_at_any_side(full_dir: Path) -> None:
    validation = omniglot.load_omniglot("validation", data_dir=full_dir, image_side=14)
    np.testing.assert_array_equal(validation.intensities_NxHxW[0], square_ink(1, side=14))
    full = omniglot.load_omniglot("validation", data_dir=full_dir, image_side=105)
    assert full.intensities_NxHxW.shape == (1, 105, 105)
    assert full.intensities_NxHxW[0, :15, 15:30].min() == 1.0
    assert full.intensities_NxHxW.sum() == 15 * 15


def test_area_downsample_is_exact_area_averaging() -> None:
    rng = np.random.default_rng(1)
    images = rng.random((3, 105, 105))
    expected = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2).reshape(3, 28, 15, 28, 15)
    np.testing.assert_allclose(
        omniglot.area_downsample(images, 28), expected.mean(axis=(2, 4)), atol=1e-6
    )
    # 105 -> 21 is 5x5 block means, and grey values survive
    np.testing.assert_allclose(
        omniglot.area_downsample(images, 21),
        images.reshape(3, 21, 5, 21, 5).mean(axis=(2, 4)),
        atol=1e-6,
    )


def test_small_zips_leave_out_test_characters_also_in_train(tmp_path: Path) -> None:
    write_omniglot_zip(tmp_path / omniglot.SMALL1_ZIP, {"Greek/character01": 20})
    write_omniglot_zip(
        tmp_path / omniglot.SMALL2_ZIP, {"Greek/character01": 2, "Tagalog/character01": 3}, 20
    )
    test = omniglot.load_omniglot("test", data_dir=tmp_path)
    assert test.num_examples == 3 and test.labels_N.tolist() == [1, 1, 1]
    assert "minus 2 images of 1 character also in images_background_small1.zip" in test.source
    assert omniglot.omniglot_class_names(data_dir=tmp_path, source="zips") == (
        "Greek/character01",
        "Tagalog/character01",
    )


# ----------------------------------------------------------------------------------------------
# Option, location and file errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"split": "valid"}, "'validation'"),
        ({"split": "train", "source": "embedded"}, "'zips'"),
        ({"split": "train", "source": "zips"}, "data.dir"),
        ({"split": "train", "image_side": 0}, "image_side=0"),
        ({"split": "train", "image_side": 106}, "105"),
        ({"split": "train", "image_side": 28.0}, "28.0"),
        ({"split": "train", "image_side": True}, "True"),
    ],
)
def test_bad_options_are_config_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        omniglot.load_omniglot(**kwargs)
    assert_one_line_error(caught.value, fragment)


def test_no_data_dir_says_there_is_no_embedded_copy() -> None:
    for data_dir in (None, ""):
        with pytest.raises(DataError) as caught:
            omniglot.load_omniglot("train", data_dir=data_dir)
        assert_one_line_error(caught.value, "no embedded copy", "data.dir", "images_background.zip")


def test_missing_data_dir_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    for source in omniglot.SOURCES:
        with pytest.raises(DataError) as caught:
            omniglot.load_omniglot("train", data_dir=missing, source=source)
        assert_one_line_error(caught.value, f"data.dir={missing}", "does not exist")


def test_dir_without_omniglot_data_is_data_error(tmp_path: Path) -> None:
    (tmp_path / "unrelated.txt").write_text("hello")
    with pytest.raises(DataError) as caught:
        omniglot.load_omniglot("train", data_dir=tmp_path)
    assert_one_line_error(
        caught.value, str(tmp_path), "no usable Omniglot data", omniglot.SMALL1_ZIP, "<version>"
    )
    with pytest.raises(DataError) as caught:
        omniglot.load_omniglot("test", data_dir=tmp_path, source="zips")
    assert_one_line_error(caught.value, "has none of", omniglot.BACKGROUND_ZIP, "source='tfds'")


def test_lone_zip_names_its_missing_partner(tmp_path: Path) -> None:
    write_omniglot_zip(tmp_path / omniglot.SMALL1_ZIP, {"Greek/character01": 20})
    with pytest.raises(DataError) as caught:
        omniglot.load_omniglot("train", data_dir=tmp_path)
    assert_one_line_error(caught.value, f"but not {omniglot.SMALL2_ZIP}", "github.com")


def test_corrupt_zip_is_one_line_data_error(tmp_path: Path) -> None:
    for name in (omniglot.BACKGROUND_ZIP, omniglot.EVALUATION_ZIP):
        (tmp_path / name).write_bytes(b"not a zip\nat all")
    with pytest.raises(DataError) as caught:
        omniglot.load_omniglot("train", data_dir=tmp_path)
    assert_one_line_error(caught.value, "not a readable zip", omniglot.BACKGROUND_ZIP)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"\x89PNG but truncated", "not a readable PNG"),
        (png_bytes(np.ones((28, 28), dtype=bool)), "28x28 pixels, expected 105x105"),
    ],
)
def test_bad_png_names_the_member(tmp_path: Path, payload: bytes, fragment: str) -> None:
    write_omniglot_zip(tmp_path / omniglot.SMALL2_ZIP, {"Tagalog/character01": 1})
    with zipfile.ZipFile(tmp_path / omniglot.SMALL1_ZIP, "w") as archive:
        for drawer in range(1, 21):
            png = payload if drawer == 7 else square_png(0)
            archive.writestr(
                f"images_background_small1/Greek/character01/0001_{drawer:02d}.png", png
            )
    with pytest.raises(DataError) as caught:
        omniglot.load_omniglot("train", data_dir=tmp_path)
    assert_one_line_error(caught.value, fragment, "Greek/character01/0001_07.png")


# ----------------------------------------------------------------------------------------------
# TFDS data_source (mocked: no TensorFlow, no files, no network)
# ----------------------------------------------------------------------------------------------

# TFDS label -> name, in TFDS's (not sorted) order; the loader relabels by sorted character.
FAKE_TFDS_LABEL_NAMES = ["Beta_0", "Alpha_1", "Alpha_0", "Gamma_0"]


def _fake_examples(split: str) -> list[dict]:
    """Examples in the TFDS omniglot layout: grey RGB 105x105 squares and TFDS labels."""
    num_examples = {"train": 40, "test": 6}[split]
    examples = []
    for i in range(num_examples):
        position = i % 49
        grey = np.asarray(Image.open(io.BytesIO(square_png(position))).convert("L"))
        label = 3 if split == "test" else i % 3
        examples.append(
            {
                "image": np.repeat(grey[..., None], 3, axis=-1),
                "label": np.int64(label),
                "alphabet": np.int64(0),
                "alphabet_char_id": np.int64(0),
            }
        )
    return examples


def _fake_as_data_source(builder, split, **unused_kwargs) -> list[dict]:
    assert builder.name == "omniglot"
    return _fake_examples(split)


def test_tfds_omniglot_through_data_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    pretend_prepared_tfds(monkeypatch)
    monkeypatch.setattr(omniglot, "_tfds_label_names", lambda data_dir: FAKE_TFDS_LABEL_NAMES)
    (tmp_path / "omniglot" / "3.0.0").mkdir(parents=True)
    with tfds.testing.mock_data(as_data_source_fn=_fake_as_data_source):
        train = omniglot.load_omniglot("train", data_dir=tmp_path, source="tfds")
        validation = omniglot.load_omniglot("validation", data_dir=tmp_path)  # auto -> tfds
        test = omniglot.load_omniglot("test", data_dir=tmp_path)
        names = omniglot.omniglot_class_names(data_dir=tmp_path)

    assert names == (
        "Alpha/character01",
        "Alpha/character02",
        "Beta/character01",
        "Gamma/character01",
    )
    assert (train.num_examples, validation.num_examples, test.num_examples) == (38, 2, 6)
    holdout = [20, 22]  # the fixed 5% of 40
    for row, index in enumerate(holdout):
        np.testing.assert_array_equal(validation.intensities_NxHxW[row], square_ink(index))
    tfds_to_sorted = {0: 2, 1: 1, 2: 0, 3: 3}  # Beta_0, Alpha_1, Alpha_0, Gamma_0
    assert validation.labels_N.tolist() == [tfds_to_sorted[i % 3] for i in holdout]
    assert test.labels_N.tolist() == [3] * 6
    np.testing.assert_array_equal(test.intensities_NxHxW[5], square_ink(5))
    for data in (train, validation, test):
        assert_ink_images(data)
        assert data.source.startswith("TFDS omniglot")
    assert not row_set(train.intensities_NxHxW) & row_set(validation.intensities_NxHxW)
    assert "holdout" in validation.source and "evaluation" in test.source


def test_tfds_real_array_record_source_with_mocked_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    pretend_prepared_tfds(monkeypatch)
    label_names = [f"Alphabet{i // 30:02d}_{i % 30}" for i in range(omniglot.NUM_CHARACTERS)]
    monkeypatch.setattr(omniglot, "_tfds_label_names", lambda data_dir: label_names)
    policy = tfds.testing.MockPolicy.USE_CODE
    with tfds.testing.mock_data(num_examples=20, policy=policy):
        train = omniglot.load_omniglot("train", data_dir=tmp_path, source="tfds", image_side=21)
        test = omniglot.load_omniglot("test", data_dir=tmp_path, source="tfds")
    assert train.intensities_NxHxW.shape == (19, 21, 21)
    assert test.intensities_NxHxW.shape == (20, 28, 28)
    assert_ink_images(test)
    assert np.all((test.labels_N >= 0) & (test.labels_N < omniglot.NUM_CHARACTERS))


def test_unprepared_tfds_dir_gives_build_hint(tmp_path: Path) -> None:
    error = unprepared_tfds_error(  # auto -> tfds, not prepared
        tmp_path / "omniglot", lambda: omniglot.load_omniglot("test", data_dir=tmp_path)
    )
    assert_one_line_error(
        error,
        f"tfds build omniglot --data_dir={tmp_path} --file_format=array_record",
        "not prepared",
        "source='zips'",
    )


def test_tfds_read_failure_is_one_line_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = tfds_read_failure(
        monkeypatch, lambda: omniglot.load_omniglot("test", data_dir=tmp_path, source="tfds")
    )
    assert_one_line_error(error, "tfds build omniglot", "TFRECORD")
