"""Omniglot handwritten characters as float32 ink intensities, from the original zips or TFDS.

Omniglot (Lake, Salakhutdinov and Tenenbaum, "Human-level concept learning through probabilistic
program induction", Science 2015) holds 1,623 handwritten characters from 50 alphabets, each
drawn once by 20 different people: 32,460 black-on-white 105x105 PNGs. The original files are
the zips in https://github.com/brendenlake/omniglot (python/, MIT licence): the "background"
set ``images_background.zip`` (30 alphabets, 964 characters) and the "evaluation" set
``images_evaluation.zip`` (20 alphabets, 659 characters), plus two small subsets of the
background set, ``images_background_small1.zip`` (5 alphabets, 136 characters, 2,720 images) and
``images_background_small2.zip`` (5 alphabets, 156 characters, 3,120 images). The two small zips
share their Greek and Latin alphabets: 1,000 byte-identical images are in both.

Two sources, all offline (there is no embedded copy: no installed package ships Omniglot):

* ``zips``: a folder holding the original zips, PNGs read straight out of them (nothing is
  extracted). With ``images_background.zip`` and ``images_evaluation.zip`` (preferred when both
  pairs are there): ``train`` is the background set minus a fixed-seed 5% validation holdout of
  its images, ``validation`` that holdout and ``test`` the evaluation set. With only the two small
  zips, small1 stands in for the background set and small2 for the evaluation set, except that
  ``test`` leaves out small2's images of characters that small1 also holds (its Greek and Latin
  alphabets, which would otherwise put 1,000 training images in the test set): 2,120 images of
  Japanese (katakana), Sanskrit and Tagalog.
* ``tfds``: an ``omniglot`` dataset prepared in array_record format and read with
  ``tfds.data_source``: ``train``/``validation`` from its train split (the background set; the
  same 5% holdout rule, by the split's stored order), ``test`` from its test split (evaluation).

This is Lake et al.'s background/evaluation split (alphabets in the test set are never seen in
training), not the 24,345/8,070 split of Burda et al.'s 28x28 ``chardata.mat`` that many
generative-model papers report on. Labels are int32 character classes: the (alphabet, character)
pairs the source holds (both zips of the pair it reads; all 1,623 for TFDS) in sorted order, so
the full zips and TFDS agree; :func:`omniglot_class_names` gives the pair of each label.

Pixels: 1.0 is ink (stroke) and 0.0 background, i.e. the PNGs inverted, area-averaged from
105x105 to ``image_side`` x ``image_side`` (28 by default) exactly (each output pixel is the
mean of the input area it covers), with grey values kept; binarise them with
:func:`deepgen.data.mnist.binarize`. Decoding a zip takes about 0.4 s per 3,000 PNGs and is done
once per process: the decoded arrays are cached per (zip, size, mtime, image_side).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import zipfile
import zlib

import numpy as np

from deepgen.core.errors import ConfigError, DataError
from deepgen.data import sources
from deepgen.data.images import ImageSplit

SPLITS = ("train", "validation", "test")
NAMES = ("omniglot",)

TFDS_NAME = "omniglot"
ORIGINAL_SIDE = 105  # side of every Omniglot PNG
IMAGE_SIDE = 28  # default side after area averaging
NUM_CHARACTERS = 1623
NUM_ALPHABETS = 50

ZIPS_URL = "https://github.com/brendenlake/omniglot/tree/master/python"
BACKGROUND_ZIP = "images_background.zip"
EVALUATION_ZIP = "images_evaluation.zip"
SMALL1_ZIP = "images_background_small1.zip"
SMALL2_ZIP = "images_background_small2.zip"
# (train zip, test zip) pairs in the order the zips source prefers them.
ZIP_PAIRS = ((BACKGROUND_ZIP, EVALUATION_ZIP), (SMALL1_ZIP, SMALL2_ZIP))
ZIP_NAMES = tuple(name for pair in ZIP_PAIRS for name in pair)

# Fixed seed for the validation holdout (never change: splits would move).
SPLIT_SEED = 20231108
# Percentage of the training images held out as validation (964 of the background set's 19,280).
VALIDATION_PERCENT = 5

_ZIPS_WHAT = (
    f"the Omniglot zips ({BACKGROUND_ZIP} and {EVALUATION_ZIP}, or {SMALL1_ZIP} and {SMALL2_ZIP})"
)
_TFDS_ALTERNATIVE = f"use the Omniglot zips from {ZIPS_URL} with source='zips'"


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------


def load_omniglot(
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    image_side: int = IMAGE_SIDE,
) -> ImageSplit:
    """Loads one split of Omniglot as float32 ink intensities in [0, 1] of shape (N, side, side)."""
    _check_image_side(image_side)
    return sources.load(_image_sources(int(image_side)), split, data_dir=data_dir, source=source)


def omniglot_class_names(
    *, data_dir: str | os.PathLike | None = None, source: str = "auto"
) -> tuple[str, ...]:
    """The 'Alphabet/characterNN' name of every label the source gives, indexed by label."""
    return sources.load(_CLASS_NAME_SOURCES, "train", data_dir=data_dir, source=source)


def _check_image_side(image_side: int) -> None:
    if (
        isinstance(image_side, bool)
        or not isinstance(image_side, int | np.integer)
        or not 1 <= image_side <= ORIGINAL_SIDE
    ):
        raise ConfigError(
            f"image_side={image_side!r} is not supported; use an integer from 1 to "
            f"{ORIGINAL_SIDE} ({IMAGE_SIDE} is the usual Omniglot size)"
        )


# ----------------------------------------------------------------------------------------------
# Pixels and splits
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _area_weights(in_side: int, out_side: int) -> np.ndarray:
    """(out, in) matrix: the share of each output pixel's span that each input pixel covers."""
    scale = in_side / out_side
    starts = np.arange(out_side)[:, None] * scale
    inputs = np.arange(in_side)[None, :]
    overlap = np.minimum(starts + scale, inputs + 1) - np.maximum(starts, inputs)
    weights = np.clip(overlap, 0.0, None) / scale
    weights.flags.writeable = False
    return weights


def area_downsample(ink_NxHxW: np.ndarray, image_side: int) -> np.ndarray:
    """Exact area averaging of square (N, H, H) images to (N, side, side), as float32."""
    height = ink_NxHxW.shape[1]
    if ink_NxHxW.shape[2] != height:
        raise ValueError(f"expected square images, got shape {ink_NxHxW.shape}")
    weights = _area_weights(height, image_side)
    ink = np.asarray(ink_NxHxW, dtype=np.float64)
    out = np.einsum("ih,nhw,jw->nij", weights, ink, weights, optimize=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _validation_holdout_indices(num_train: int, split: str, where: str) -> np.ndarray:
    """Sorted indices of a fixed-seed 5% validation holdout (or the 95% rest for train)."""
    num_validation = num_train * VALIDATION_PERCENT // 100
    if num_validation == 0:
        raise DataError(
            f"{where} has only {num_train} training images, too few to hold out "
            f"{VALIDATION_PERCENT}% for validation; use the full Omniglot zips"
        )
    permutation = np.random.default_rng(SPLIT_SEED).permutation(num_train)
    chosen = permutation[:num_validation] if split == "validation" else permutation[num_validation:]
    return np.sort(chosen)


def _holdout_note(split: str) -> str:
    if split == "validation":
        return f"fixed {VALIDATION_PERCENT}% validation holdout"
    return f"train minus the {VALIDATION_PERCENT}% holdout"


# ----------------------------------------------------------------------------------------------
# The original zips
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ZipContents:
    """The PNG members of one zip in name order and the character each one shows."""

    characters: tuple[str, ...]  # sorted 'Alphabet/characterNN' the zip holds
    character_index_N: np.ndarray  # int32 index into characters, per image
    members: tuple[str, ...]  # PNG member names, sorted


def _find_zip_pair(data_dir: str) -> tuple[str, str, bool]:
    """(train zip, test zip, is the small pair) in data_dir, or a DataError naming what is missing."""
    for train_name, test_name in ZIP_PAIRS:
        train_path = os.path.join(data_dir, train_name)
        test_path = os.path.join(data_dir, test_name)
        if os.path.isfile(train_path) and os.path.isfile(test_path):
            return train_path, test_path, train_name == SMALL1_ZIP
    present = [name for name in ZIP_NAMES if os.path.isfile(os.path.join(data_dir, name))]
    if present:
        missing = [name for pair in ZIP_PAIRS if set(pair) & set(present) for name in pair]
        missing = [name for name in missing if name not in present]
        raise DataError(
            f"data.dir={data_dir} has {', '.join(present)} but not {', '.join(missing)}; the "
            f"Omniglot zips come in pairs ({BACKGROUND_ZIP} with {EVALUATION_ZIP}, {SMALL1_ZIP} "
            f"with {SMALL2_ZIP}): download the missing one from {ZIPS_URL}"
        )
    raise DataError(
        f"data.dir={data_dir} has none of {', '.join(ZIP_NAMES)}; download them from {ZIPS_URL} "
        "or use source='tfds' for a prepared TFDS dataset"
    )


def _stamp(path: str) -> tuple[int, int]:
    """(size, mtime) of a file, so that a cache entry notices a rewritten zip."""
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def _zip_error(path: str, err: BaseException) -> DataError:
    return DataError(
        f"{path} is not a readable zip ({type(err).__name__}: {sources.first_line(err)}); "
        f"download it again from {ZIPS_URL}"
    )


@functools.lru_cache(maxsize=8)
def _list_zip(path: str, stamp: tuple[int, int]) -> _ZipContents:
    """The PNG members of an Omniglot zip (TOP/Alphabet/characterNN/NNNN_DD.png) and characters."""
    del stamp  # cache key only
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as err:
        raise _zip_error(path, err) from err
    members = sorted(
        name
        for name in names
        if name.lower().endswith(".png") and len(name.split("/")) == 4 and "__MACOSX" not in name
    )
    if not members:
        raise DataError(
            f"{path} holds no PNGs in the Omniglot layout TOP/Alphabet/characterNN/NNNN_DD.png; "
            f"download the zip again from {ZIPS_URL}"
        )
    member_characters = ["/".join(name.split("/")[1:3]) for name in members]
    characters = tuple(sorted(set(member_characters)))
    index_of = {character: i for i, character in enumerate(characters)}
    character_index_N = np.array([index_of[c] for c in member_characters], dtype=np.int32)
    character_index_N.flags.writeable = False
    return _ZipContents(characters, character_index_N, tuple(members))


@functools.lru_cache(maxsize=4)
def _decode_zip(path: str, stamp: tuple[int, int], image_side: int) -> np.ndarray:
    """Every PNG of the zip (member order) as read-only float32 ink (N, side, side)."""
    from PIL import Image

    contents = _list_zip(path, stamp)
    ink_NxHxW = np.empty((len(contents.members), image_side, image_side), dtype=np.float32)
    chunk = 256  # decode and downsample in chunks: 256 x 105 x 105 float64 is 22 MB
    try:
        with zipfile.ZipFile(path) as archive:
            for start in range(0, len(contents.members), chunk):
                names = contents.members[start : start + chunk]
                pixels = np.empty((len(names), ORIGINAL_SIDE, ORIGINAL_SIDE), dtype=np.uint8)
                for row, name in enumerate(names):
                    pixels[row] = _decode_png(Image, archive.read(name), f"{path} member {name}")
                ink = 1.0 - pixels.astype(np.float64) / 255.0
                ink_NxHxW[start : start + len(names)] = area_downsample(ink, image_side)
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise _zip_error(path, err) from err
    ink_NxHxW.flags.writeable = False
    return ink_NxHxW


def _decode_png(image_module, data: bytes, where: str) -> np.ndarray:
    """A 105x105 Omniglot PNG as uint8 grey levels (255 = white background)."""
    try:
        with image_module.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("L"), dtype=np.uint8)
    except (OSError, ValueError) as err:
        raise DataError(
            f"{where} is not a readable PNG ({type(err).__name__}: {sources.first_line(err)}); "
            f"download the zip again from {ZIPS_URL}"
        ) from err
    if pixels.shape != (ORIGINAL_SIDE, ORIGINAL_SIDE):
        raise DataError(
            f"{where} is {pixels.shape[1]}x{pixels.shape[0]} pixels, expected "
            f"{ORIGINAL_SIDE}x{ORIGINAL_SIDE}; download the zip again from {ZIPS_URL}"
        )
    return pixels


def _zip_class_names(split: str, data_dir: str) -> tuple[str, ...]:
    """The sorted characters of both zips of the pair in data_dir."""
    del split  # the names are the same for every split
    train_path, test_path, _ = _find_zip_pair(data_dir)
    train = _list_zip(train_path, _stamp(train_path))
    test = _list_zip(test_path, _stamp(test_path))
    return tuple(sorted(set(train.characters) | set(test.characters)))


def _load_zips(split: str, data_dir: str, *, image_side: int) -> ImageSplit:
    """One split from the background/evaluation (or small1/small2) zips in data_dir."""
    train_path, test_path, is_small = _find_zip_pair(data_dir)
    class_names = _zip_class_names(split, data_dir)
    label_of = {name: label for label, name in enumerate(class_names)}
    path = test_path if split == "test" else train_path
    contents = _list_zip(path, _stamp(path))
    ink_NxHxW = _decode_zip(path, _stamp(path), image_side)
    labels_by_index = np.array([label_of[c] for c in contents.characters], dtype=np.int32)
    labels_N = labels_by_index[contents.character_index_N]

    if split == "test":
        train_characters = set(_list_zip(train_path, _stamp(train_path)).characters)
        in_train = np.array([c in train_characters for c in contents.characters], dtype=bool)
        rows = np.flatnonzero(~in_train[contents.character_index_N])
        num_dropped = len(labels_N) - len(rows)
        num_shared = int(in_train.sum())
        part = "test"
        if num_dropped:
            part += (
                f" minus {num_dropped:,} images of {num_shared} character"
                f"{'s' * (num_shared != 1)} also in {os.path.basename(train_path)}"
            )
    else:
        rows = _validation_holdout_indices(len(labels_N), split, path)
        part = _holdout_note(split)
    if len(rows) == 0:
        raise DataError(
            f"{path} has no images of characters outside {os.path.basename(train_path)}, so "
            f"no test split is left; use {EVALUATION_ZIP} from {ZIPS_URL}"
        )
    small_note = (
        f"; the small zips stand in for background ({SMALL1_ZIP}) and evaluation ({SMALL2_ZIP})"
        if is_small
        else ""
    )
    return ImageSplit(
        images=ink_NxHxW[rows],  # fancy indexing: a private, writable copy
        labels_N=labels_N[rows],
        split=split,
        source=f"Omniglot zip {path} ({part}{small_note})",
    )


# ----------------------------------------------------------------------------------------------
# TFDS (array_record data_source)
# ----------------------------------------------------------------------------------------------


def _tfds_label_names(data_dir: str | None) -> list[str]:
    """The TFDS label names ('Alphabet_k', k the 0-based character) of the prepared dataset."""
    import tensorflow_datasets as tfds

    return list(tfds.builder(TFDS_NAME, data_dir=data_dir).info.features["label"].names)


def _tfds_class_names(label_names: list[str], where: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Sorted 'Alphabet/characterNN' names and, per TFDS label, its index among them."""
    characters = []
    for label_name in label_names:
        alphabet, _, number = label_name.rpartition("_")
        if not alphabet or not number.isdigit():
            raise DataError(
                f"{where} has label name {label_name!r}, expected 'Alphabet_k'; "
                f"{sources.tfds_build_hint(TFDS_NAME, None, _TFDS_ALTERNATIVE)}"
            )
        characters.append(f"{alphabet}/character{int(number) + 1:02d}")
    class_names = tuple(sorted(set(characters)))
    label_of = {name: label for label, name in enumerate(class_names)}
    return class_names, np.array([label_of[c] for c in characters], dtype=np.int32)


def _tfds_names_source(split: str, data_dir: str | None) -> tuple[str, ...]:
    del split  # the names are the same for every split
    description = sources.describe_prepared_tfds(TFDS_NAME, data_dir, _TFDS_ALTERNATIVE)
    return _tfds_class_names(_tfds_label_names(data_dir), f"TFDS {description}")[0]


def _load_tfds(split: str, data_dir: str | None, *, image_side: int) -> ImageSplit:
    """Reads a split of a prepared array_record TFDS omniglot into numpy."""
    holdout = split != "test"

    def select(num_train: int, where: str) -> np.ndarray:
        return _validation_holdout_indices(num_train, split, where)

    read = sources.load_tfds_split(
        TFDS_NAME,
        "train" if holdout else "test",
        data_dir,
        select=select if holdout else None,
        alternative=_TFDS_ALTERNATIVE,
    )
    pixels = read.feature("image")
    if pixels.ndim == 4:
        pixels = pixels[..., 0]  # the PNGs are stored as grey RGB: any channel will do
    if pixels.shape[1:] != (ORIGINAL_SIDE, ORIGINAL_SIDE) or pixels.dtype != np.uint8:
        raise read.error(
            f"has images of shape {pixels.shape[1:]} and dtype {pixels.dtype}, expected "
            f"({ORIGINAL_SIDE}, {ORIGINAL_SIDE}, 3) uint8"
        )
    _, label_by_tfds_label = _tfds_class_names(
        _tfds_label_names(data_dir), f"TFDS {read.description}"
    )
    tfds_labels = read.feature("label", np.int64)
    if tfds_labels.min() < 0 or tfds_labels.max() >= len(label_by_tfds_label):
        raise read.error(f"has labels outside 0-{len(label_by_tfds_label) - 1}")
    ink_NxHxW = np.empty((len(pixels), image_side, image_side), dtype=np.float32)
    for start in range(0, len(pixels), 256):
        chunk = 1.0 - pixels[start : start + 256].astype(np.float64) / 255.0
        ink_NxHxW[start : start + len(chunk)] = area_downsample(chunk, image_side)
    part = _holdout_note(split) if holdout else "test (evaluation set)"
    return ImageSplit(
        images=ink_NxHxW,
        labels_N=label_by_tfds_label[tfds_labels],
        split=split,
        source=f"TFDS {read.description}, {part}",
    )


# ----------------------------------------------------------------------------------------------
# The sources (declared after their loaders)
# ----------------------------------------------------------------------------------------------


def _found_zips(data_dir: str) -> bool:
    return any(os.path.isfile(os.path.join(data_dir, name)) for name in ZIP_NAMES)


@functools.lru_cache(maxsize=8)
def _image_sources(image_side: int) -> sources.DatasetSources:
    """Omniglot's sources, their loaders giving image_side x image_side images."""
    return sources.DatasetSources(
        title="Omniglot",
        splits=SPLITS,
        sources={
            "zips": sources.Source(
                functools.partial(_load_zips, image_side=image_side),
                _ZIPS_WHAT,
                found_in=_found_zips,
            ),
            "tfds": sources.tfds_source(
                TFDS_NAME, functools.partial(_load_tfds, image_side=image_side)
            ),
        },
        default=None,
    )


OMNIGLOT_SOURCES = _image_sources(IMAGE_SIDE)
_CLASS_NAME_SOURCES = sources.DatasetSources(
    title="Omniglot",
    splits=SPLITS,
    sources={
        "zips": sources.Source(_zip_class_names, _ZIPS_WHAT, found_in=_found_zips),
        "tfds": sources.tfds_source(TFDS_NAME, _tfds_names_source),
    },
    default=None,
)
SOURCES = OMNIGLOT_SOURCES.choices  # ("auto", "zips", "tfds")
