"""Tests for deepgen.data.cifar10: embedded photo crops, the python archive, TFDS, BFN pixel maps."""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from loader_checks import (
    assert_one_line_error,
    pretend_prepared_tfds,
    row_set,
    tfds_read_failure,
    unprepared_tfds_error,
)

from deepgen.bfn import continuous
from deepgen.core.errors import ConfigError, DataError
from deepgen.data import cifar10

# ----------------------------------------------------------------------------------------------
# Embedded photo crops
# ----------------------------------------------------------------------------------------------


def test_embedded_splits_have_expected_shapes_dtypes_and_labels() -> None:
    splits = {split: cifar10.load_cifar10(split) for split in cifar10.SPLITS}
    for split, data in splits.items():
        assert data.split == split
        assert data.images_NxHxWxC.shape == (data.num_examples, 32, 32, 3)
        assert data.images_NxHxWxC.dtype == np.uint8 and data.labels_N.dtype == np.int32
        assert data.labels_N.shape == (data.num_examples,)
        assert set(np.unique(data.labels_N)) <= set(range(len(cifar10.EMBEDDED_PHOTOS)))
        assert "not CIFAR-10" in data.description
    assert splits["train"].num_examples > 2000
    assert 100 <= splits["validation"].num_examples < splits["train"].num_examples // 10
    assert 100 <= splits["test"].num_examples < splits["train"].num_examples // 10
    # Each held-out split spans several photos; train has them all.
    assert len(np.unique(splits["test"].labels_N)) >= 3
    assert len(np.unique(splits["validation"].labels_N)) >= 3
    assert len(np.unique(splits["train"].labels_N)) == len(cifar10.EMBEDDED_PHOTOS)
    full = splits["train_full"]
    assert full.num_examples == splits["train"].num_examples + splits["validation"].num_examples
    assert row_set(full.images_NxHxWxC) == row_set(splits["train"].images_NxHxWxC) | row_set(
        splits["validation"].images_NxHxWxC
    )


def test_embedded_splits_are_distinct_disjoint_and_closed_under_mirroring() -> None:
    splits = {split: cifar10.load_cifar10(split, source="embedded") for split in cifar10.SPLITS}
    rows = {split: row_set(data.images_NxHxWxC) for split, data in splits.items()}
    for split, data in splits.items():
        assert len(rows[split]) == data.num_examples  # no repeated image
        assert row_set(data.images_NxHxWxC[:, :, ::-1]) == rows[split]  # flips stay in the split
        flat = data.images_NxHxWxC.reshape(data.num_examples, -1).astype(np.float32)
        assert flat.std(axis=1).min() >= cifar10.EMBEDDED_MIN_CROP_STD  # no blank crops
    assert not rows["train"] & rows["validation"]
    assert not rows["train"] & rows["test"]
    assert not rows["validation"] & rows["test"]


def test_embedded_build_is_deterministic_and_returns_private_copies() -> None:
    first = cifar10.load_cifar10("test")
    first.images_NxHxWxC[:] = 0  # callers may scribble on their copy
    cifar10._build_embedded.cache_clear()
    rebuilt = cifar10.load_cifar10("test")
    cached = cifar10.load_cifar10("test")
    assert rebuilt.images_NxHxWxC.any()
    np.testing.assert_array_equal(rebuilt.images_NxHxWxC, cached.images_NxHxWxC)
    np.testing.assert_array_equal(rebuilt.labels_N, cached.labels_N)
    assert rebuilt.description == cached.description


def test_embedded_crops_are_photo_pixels_and_area_averages() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    from skimage.transform import downscale_local_mean

    astronaut = skimage_data.astronaut()  # label 0; 512 = 4 tiles, so tile 0 is [0:128, 0:128]
    assert cifar10.EMBEDDED_PHOTOS[0][0] == "astronaut.png"
    tile = astronaut[:128, :128].astype(np.float64)
    expected_full_res = [
        astronaut[r : r + 32, c : c + 32] for r in range(0, 128, 32) for c in range(0, 128, 32)
    ]
    expected_by_4 = np.rint(downscale_local_mean(tile, (4, 4, 1))).astype(np.uint8)
    expected_by_2 = np.rint(downscale_local_mean(tile, (2, 2, 1))).astype(np.uint8)
    train = row_set(cifar10.load_cifar10("train").images_NxHxWxC)
    kept = [
        crop for crop in expected_full_res if crop.astype(np.float32).std() >= 4.0
    ]  # the rest are near-blank and dropped
    assert len(kept) >= 8
    assert row_set(np.stack(kept)) <= train
    assert expected_by_4.tobytes() in train
    assert expected_by_2[32:, :32].tobytes() in train
    assert expected_by_4[:, ::-1].tobytes() in train  # its mirror image


def test_missing_scikit_image_photo_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cifar10, "installed_package_file", lambda *args: None)
    monkeypatch.setattr(cifar10, "_build_embedded", cifar10._build_embedded.__wrapped__)
    with pytest.raises(DataError) as caught:
        cifar10.load_cifar10("train")
    assert_one_line_error(caught.value, "pip install scikit-image", "data.dir")


# ----------------------------------------------------------------------------------------------
# The python archive: a tiny fake with the exact pickle layout
# ----------------------------------------------------------------------------------------------

PER_BATCH = 3
NUM_TEST = 4


def _batch_rows(seed: int, num_images: int) -> tuple[np.ndarray, list[int]]:
    """Random data rows (N x 3072 uint8, R plane then G then B, each row-major) and labels."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 256, size=(num_images, 3072), dtype=np.uint8)
    return rows, [int(label) for label in rng.integers(0, 10, size=num_images)]


def write_fake_batches(folder: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    """data_batch_1..5 and test_batch as protocol-2 pickles with bytes keys, like the original."""
    folder.mkdir(parents=True)
    written = {}
    for index, name in enumerate((*cifar10.TRAIN_BATCHES, cifar10.TEST_BATCH)):
        rows, labels = _batch_rows(index, NUM_TEST if name == cifar10.TEST_BATCH else PER_BATCH)
        if name == "data_batch_1":  # image 0, row 5, column 7 has RGB (11, 22, 33)
            rows[0, [5 * 32 + 7, 1024 + 5 * 32 + 7, 2048 + 5 * 32 + 7]] = (11, 22, 33)
        batch = {
            b"batch_label": f"fake {name}".encode(),
            b"labels": labels,
            b"data": rows,
            b"filenames": [f"image_{i}.png".encode() for i in range(len(labels))],
        }
        payload = pickle.dumps(batch, protocol=2)
        if name == "data_batch_2":  # name numpy's array module as the original (numpy 1) files do
            payload = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (folder / name).write_bytes(payload)
        written[name] = (rows, labels)
    return written


def write_fake_tar(data_dir: Path, batches_parent: Path) -> Path:
    """cifar-10-python.tar.gz holding cifar-10-batches-py/ from batches_parent."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / cifar10.ARCHIVE_NAME
    with tarfile.open(path, "w:gz") as archive:
        archive.add(batches_parent / cifar10.ARCHIVE_FOLDER, arcname=cifar10.ARCHIVE_FOLDER)
    return path


def test_archive_folder_converts_channel_planes_to_hwc(tmp_path: Path) -> None:
    written = write_fake_batches(tmp_path / cifar10.ARCHIVE_FOLDER)
    train = cifar10.load_cifar10("train", data_dir=str(tmp_path), source="archive")
    validation = cifar10.load_cifar10("validation", data_dir=str(tmp_path))  # auto -> archive
    full = cifar10.load_cifar10("train_full", data_dir=str(tmp_path))
    test = cifar10.load_cifar10("test", data_dir=str(tmp_path))

    assert train.images_NxHxWxC[0, 5, 7].tolist() == [11, 22, 33]
    num_train = 5 * PER_BATCH
    # 10% of the 15 training images, rounded down: the last one is validation.
    assert (train.num_examples, validation.num_examples, full.num_examples) == (14, 1, 15)
    assert test.num_examples == NUM_TEST
    # Pixel (r, c) of channel ch is entry ch*1024 + r*32 + c of the row.
    rows, labels = written[cifar10.TEST_BATCH]
    for image, row in zip(test.images_NxHxWxC, rows, strict=True):
        for ch in range(3):
            for r, c in ((0, 0), (0, 31), (31, 0), (17, 9)):
                assert image[r, c, ch] == row[ch * 1024 + r * 32 + c]
    np.testing.assert_array_equal(test.labels_N, labels)

    all_labels = [label for name in cifar10.TRAIN_BATCHES for label in written[name][1]]
    np.testing.assert_array_equal(full.labels_N, all_labels)  # batches 1..5 in order
    np.testing.assert_array_equal(
        np.concatenate([train.images_NxHxWxC, validation.images_NxHxWxC]), full.images_NxHxWxC
    )
    np.testing.assert_array_equal(validation.labels_N, all_labels[-1:])
    for data in (train, validation, full, test):
        assert data.images_NxHxWxC.dtype == np.uint8 and data.labels_N.dtype == np.int32
        assert data.images_NxHxWxC.flags.writeable
        assert "md5 differs from the official" in data.description
    assert f"training images 14 to {num_train}" in validation.description


def test_archive_tar_is_read_without_extracting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake_batches(tmp_path / "src" / cifar10.ARCHIVE_FOLDER)
    data_dir = tmp_path / "data"
    tar_path = write_fake_tar(data_dir, tmp_path / "src")
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", hashlib.md5(tar_path.read_bytes()).hexdigest())

    from_tar = {s: cifar10.load_cifar10(s, data_dir=str(data_dir)) for s in ("train", "test")}
    from_folder = {
        s: cifar10.load_cifar10(s, data_dir=str(tmp_path / "src"), source="archive")
        for s in ("train", "test")
    }
    assert sorted(os.listdir(data_dir)) == [cifar10.ARCHIVE_NAME]  # nothing extracted
    for split in from_tar:
        np.testing.assert_array_equal(
            from_tar[split].images_NxHxWxC, from_folder[split].images_NxHxWxC
        )
        np.testing.assert_array_equal(from_tar[split].labels_N, from_folder[split].labels_N)
        assert "md5 verified" in from_tar[split].description
    assert from_tar["train"].images_NxHxWxC[0, 5, 7].tolist() == [11, 22, 33]


def test_archive_md5_mismatch_is_one_line_data_error(tmp_path: Path) -> None:
    write_fake_batches(tmp_path / "src" / cifar10.ARCHIVE_FOLDER)
    tar_path = write_fake_tar(tmp_path / "data", tmp_path / "src")
    with pytest.raises(DataError) as caught:
        cifar10.load_cifar10("test", data_dir=str(tmp_path / "data"), source="archive")
    actual_md5 = hashlib.md5(tar_path.read_bytes()).hexdigest()
    assert_one_line_error(caught.value, str(tar_path), actual_md5, cifar10.ARCHIVE_MD5, "download")


def test_archive_missing_batch_names_it(tmp_path: Path) -> None:
    write_fake_batches(tmp_path / cifar10.ARCHIVE_FOLDER)
    (tmp_path / cifar10.ARCHIVE_FOLDER / "data_batch_3").unlink()
    with pytest.raises(DataError) as caught:
        cifar10.load_cifar10("train", data_dir=str(tmp_path))
    assert_one_line_error(caught.value, "data_batch_3", cifar10.ARCHIVE_URL)
    assert cifar10.load_cifar10("test", data_dir=str(tmp_path)).num_examples == NUM_TEST


def test_tar_missing_member_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_batches(tmp_path / "src" / cifar10.ARCHIVE_FOLDER)
    (tmp_path / "src" / cifar10.ARCHIVE_FOLDER / cifar10.TEST_BATCH).unlink()
    tar_path = write_fake_tar(tmp_path / "data", tmp_path / "src")
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", hashlib.md5(tar_path.read_bytes()).hexdigest())
    with pytest.raises(DataError) as caught:
        cifar10.load_cifar10("test", data_dir=str(tmp_path / "data"))
    assert_one_line_error(caught.value, str(tar_path), cifar10.TEST_BATCH)


class _RunsCode:
    """A pickle that would call a function on load."""

    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (pickle.dumps({b"data": _RunsCode()}, protocol=2), "not allowed"),
        (b"not a pickle at all", "not a readable CIFAR-10 batch"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), "(N, 3072)"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}), "0-9"),
        (pickle.dumps([1, 2, 3]), "not a CIFAR-10 batch"),
    ],
)
def test_bad_batch_files_are_data_errors(tmp_path: Path, payload: bytes, fragment: str) -> None:
    write_fake_batches(tmp_path / cifar10.ARCHIVE_FOLDER)
    (tmp_path / cifar10.ARCHIVE_FOLDER / cifar10.TEST_BATCH).write_bytes(payload)
    with pytest.raises(DataError) as caught:
        cifar10.load_cifar10("test", data_dir=str(tmp_path))
    assert_one_line_error(caught.value, cifar10.TEST_BATCH, fragment)


# ----------------------------------------------------------------------------------------------
# Option and location errors
# ----------------------------------------------------------------------------------------------


def test_missing_data_dir_is_one_line_data_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    for source in ("auto", "archive", "tfds"):
        with pytest.raises(DataError) as caught:
            cifar10.load_cifar10("train", data_dir=str(missing), source=source)
        assert_one_line_error(caught.value, f"data.dir={missing}", "does not exist")


def test_dir_without_cifar_data_is_data_error(tmp_path: Path) -> None:
    (tmp_path / "unrelated.txt").write_text("hello")
    with pytest.raises(DataError) as caught:
        cifar10.load_cifar10("train", data_dir=str(tmp_path))
    assert_one_line_error(caught.value, cifar10.ARCHIVE_NAME, cifar10.ARCHIVE_FOLDER, "<version>")
    with pytest.raises(DataError) as caught:
        cifar10.load_cifar10("train", data_dir=str(tmp_path), source="archive")
    assert_one_line_error(caught.value, cifar10.ARCHIVE_NAME, "source='tfds'")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"split": "valid"}, "'train_full'"),
        ({"split": "train", "source": "http"}, "'archive'"),
        ({"split": "train", "source": "archive"}, "data.dir"),
    ],
)
def test_bad_options_are_config_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        cifar10.load_cifar10(**kwargs)
    assert_one_line_error(caught.value, fragment)


# ----------------------------------------------------------------------------------------------
# TFDS data_source (mocked: no TensorFlow, no files, no network)
# ----------------------------------------------------------------------------------------------


def _fake_examples(split: str) -> list[dict]:
    """Deterministic examples in the TFDS cifar10 feature layout (id, image HxWx3, label)."""
    num_examples = {"train": 30, "test": 7}[split]
    rng = np.random.default_rng(len(split))
    images = rng.integers(0, 256, size=(num_examples, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=num_examples)
    return [
        {"id": f"{split}_{i}", "image": image, "label": np.int64(label)}
        for i, (image, label) in enumerate(zip(images, labels, strict=True))
    ]


def _fake_as_data_source(builder, split, **unused_kwargs) -> list[dict]:
    assert builder.name == "cifar10"
    return _fake_examples(split)


def test_tfds_cifar10_through_data_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    pretend_prepared_tfds(monkeypatch)
    (tmp_path / "cifar10" / "3.0.2").mkdir(parents=True)
    with tfds.testing.mock_data(as_data_source_fn=_fake_as_data_source):
        train = cifar10.load_cifar10("train", data_dir=str(tmp_path), source="tfds")
        validation = cifar10.load_cifar10("validation", data_dir=str(tmp_path))  # auto -> tfds
        test = cifar10.load_cifar10("test", data_dir=str(tmp_path))

    expected_train, expected_test = _fake_examples("train"), _fake_examples("test")
    assert (train.num_examples, validation.num_examples, test.num_examples) == (27, 3, 7)
    np.testing.assert_array_equal(
        validation.images_NxHxWxC, np.stack([e["image"] for e in expected_train[-3:]])
    )
    np.testing.assert_array_equal(
        train.images_NxHxWxC, np.stack([e["image"] for e in expected_train[:27]])
    )
    np.testing.assert_array_equal(test.labels_N, [e["label"] for e in expected_test])
    for data in (train, validation, test):
        assert data.images_NxHxWxC.dtype == np.uint8 and data.labels_N.dtype == np.int32
        assert data.description.startswith("TFDS cifar10")


def test_tfds_real_array_record_source_with_mocked_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    pretend_prepared_tfds(monkeypatch)
    policy = tfds.testing.MockPolicy.USE_CODE
    with tfds.testing.mock_data(num_examples=20, policy=policy):
        train = cifar10.load_cifar10("train", data_dir=str(tmp_path), source="tfds")
        test = cifar10.load_cifar10("test", data_dir=str(tmp_path), source="tfds")
    assert train.images_NxHxWxC.shape == (18, 32, 32, 3)
    assert test.images_NxHxWxC.shape == (20, 32, 32, 3)
    assert train.images_NxHxWxC.dtype == np.uint8
    assert np.all((train.labels_N >= 0) & (train.labels_N < 10))


def test_unprepared_tfds_dir_gives_build_hint(tmp_path: Path) -> None:
    error = unprepared_tfds_error(  # auto -> tfds, not prepared
        tmp_path / "cifar10", lambda: cifar10.load_cifar10("test", data_dir=str(tmp_path))
    )
    assert_one_line_error(
        error,
        f"tfds build cifar10 --data_dir={tmp_path} --file_format=array_record",
        "not prepared",
    )


def test_tfds_read_failure_is_one_line_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = tfds_read_failure(
        monkeypatch, lambda: cifar10.load_cifar10("test", data_dir=str(tmp_path), source="tfds")
    )
    assert_one_line_error(error, "tfds build cifar10", "TFRECORD")


# ----------------------------------------------------------------------------------------------
# Pixels <-> BFN data space
# ----------------------------------------------------------------------------------------------

ALL_PIXELS = np.arange(256, dtype=np.uint8)


def _official_bins(pixels: np.ndarray, num_bins: int) -> np.ndarray:
    """The official float chain: u/255 -> 2x - 1 -> floor((x/2 + 1/2) K), clamped (float32)."""
    x = np.float32(2.0) * (pixels.astype(np.float32) / np.float32(255.0)) - np.float32(1.0)
    k = np.floor((x / np.float32(2.0) + np.float32(0.5)) * np.float32(num_bins))
    return np.clip(k, 0, num_bins - 1).astype(np.int32)


def test_256_bins_put_every_pixel_on_its_own_bin_centre() -> None:
    x = cifar10.pixels_to_bfn(ALL_PIXELS, 256)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, np.asarray(continuous.bin_centres(256)))  # bit-exact
    np.testing.assert_array_equal(np.asarray(continuous.quantise(jnp.asarray(x), 256)), x)
    np.testing.assert_array_equal(np.asarray(continuous.bin_index(jnp.asarray(x), 256)), ALL_PIXELS)
    np.testing.assert_array_equal(_official_bins(ALL_PIXELS, 256), ALL_PIXELS)
    assert x.min() == -1 + 1 / 256 and x.max() == 1 - 1 / 256
    np.testing.assert_array_equal(cifar10.bfn_to_pixels(x, 256), ALL_PIXELS)


def test_16_bins_use_the_top_four_bits_like_the_official_code() -> None:
    bins = cifar10.pixels_to_bins(ALL_PIXELS, 16)
    np.testing.assert_array_equal(bins, ALL_PIXELS // 16)
    np.testing.assert_array_equal(bins, _official_bins(ALL_PIXELS, 16))
    x = cifar10.pixels_to_bfn(ALL_PIXELS, 16)
    centres = np.asarray(continuous.bin_centres(16))
    np.testing.assert_array_equal(x, centres[ALL_PIXELS // 16])
    np.testing.assert_array_equal(np.asarray(continuous.quantise(jnp.asarray(x), 16)), x)

    shown = cifar10.bfn_to_pixels(x, 16)
    np.testing.assert_array_equal(shown // 16, ALL_PIXELS // 16)  # same bin, one grey per bin
    assert len(np.unique(shown)) == 16
    np.testing.assert_array_equal(
        cifar10.pixels_to_bfn(cifar10.bfn_to_pixels(centres, 16), 16), centres
    )


@pytest.mark.parametrize("num_bins", [16, 256])
def test_bfn_to_pixels_snaps_any_value_to_its_bin(num_bins: int) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    x = cifar10.pixels_to_bfn(images, num_bins)
    assert x.shape == images.shape
    jitter = rng.uniform(-0.49, 0.49, size=x.shape).astype(np.float32) * (2.0 / num_bins)
    np.testing.assert_array_equal(
        cifar10.bfn_to_pixels(jnp.asarray(x + jitter), num_bins),
        cifar10.bfn_to_pixels(x, num_bins),
    )
    edges = cifar10.bfn_to_pixels(np.array([-3.0, -1.0, 1.0, 7.5]), num_bins)
    assert edges.dtype == np.uint8
    assert edges.tolist() == [edges[0], edges[0], edges[-1], edges[-1]]
    assert edges[0] < 16 and edges[-1] > 239


def test_pixel_map_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        cifar10.pixels_to_bfn(np.arange(4, dtype=np.float32), 256)
    with pytest.raises(ValueError, match="num_bins"):
        cifar10.pixels_to_bfn(ALL_PIXELS, 1)
    with pytest.raises(ValueError, match="NaN"):
        cifar10.bfn_to_pixels(np.array([0.0, np.nan]), 16)


def test_independent_categorical_baseline_equals_a_brute_force_count() -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(7, 2, 2, 3), dtype=np.uint8)
    train[:, 0, 0, 0] = 5  # one sub-pixel always 5 in training
    test = rng.integers(0, 256, size=(4, 2, 2, 3), dtype=np.uint8)
    test[0, 0, 0, 0] = 5
    expected = 0.0
    for image in test:
        for index in np.ndindex(*image.shape):
            count = np.sum(train[(slice(None), *index)] == image[index])
            expected -= np.log((count + 0.5) / (len(train) + 0.5 * 256))
    got = cifar10.independent_categorical_nll_nats(train, test)
    assert got == pytest.approx(expected / len(test), rel=1e-12)
    with pytest.raises(ValueError, match="uint8"):
        cifar10.independent_categorical_nll_nats(train.astype(np.float32), test)
