"""CIFAR-10 32x32 RGB images as uint8, and the pixel <-> [-1, 1] bin-centre maps of BFN (Sec. 5).

Three sources, all offline:

* ``archive``: the original python version, ``cifar-10-python.tar.gz`` (md5-verified, members
  read straight from the tar) or its extracted ``cifar-10-batches-py/`` folder.
* ``tfds``: a ``cifar10`` dataset prepared in array_record format, read with ``tfds.data_source``.
* ``embedded``: NOT CIFAR-10 (no copy of it ships in any package) but 32x32 crops of the
  public-domain / CC0 photos inside the scikit-image wheel, for smoke tests and CPU demos.

Splits: ``test`` is the 10,000 test images; ``validation`` is the last 10% of the training images
in the source's stored order (for the archive: the last 5,000 of the 50,000, i.e. the second half
of data_batch_5), ``train`` the first 90% and ``train_full`` all of them. (The official BFN code
holds out a random 1% instead; a contiguous tail is simpler to state and to reproduce.)

The BFN maps follow the official code (nnaisense/bayesian-flow-networks, data.py and
utils_model.py): a pixel u becomes u/255 scaled to [-1, 1] and is then quantised to the centre
k_c = (2k + 1)/K - 1 of its width-2/K bin, k = min(floor(u K / 255), K - 1). With K = 256 the bin
is the pixel value itself; with K = 16 it is u // 16 (the 4 high bits).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepgen.core.errors import DataError
from deepgen.data import sources
from deepgen.data.embedded import installed_package_file
from deepgen.data.images import ImageSplit  # re-exported: callers use cifar10.ImageSplit

SPLITS = ("train", "validation", "test", "train_full")

IMAGE_SIDE = 32
NUM_CHANNELS = 3
IMAGE_SHAPE = (IMAGE_SIDE, IMAGE_SIDE, NUM_CHANNELS)
NUM_CLASSES = 10
# Percentage of the training images, taken from the end, that form the validation split.
VALIDATION_PERCENT = 10

TFDS_NAME = "cifar10"
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
# md5 of ARCHIVE_NAME as published on https://www.cs.toronto.edu/~kriz/cifar.html (and pinned by
# torchvision); the per-file md5s are torchvision's, used only to label a folder as official.
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_FOLDER = "cifar-10-batches-py"
_TFDS_ALTERNATIVE = f"use {ARCHIVE_NAME} with source='archive'"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
OFFICIAL_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}

# Embedded photos: (file in skimage/data, integer pre-shrink factor, credit). Only photographs
# whose skimage docstring states public domain or CC0; label = position in this tuple.
EMBEDDED_PHOTOS = (
    ("astronaut.png", 1, "astronaut Eileen Collins (NASA, public domain)"),
    ("chelsea.png", 1, "Chelsea the cat (Stefan van der Walt, CC0)"),
    ("coffee.png", 1, "coffee cup (Rachel Michetti, CC0)"),
    ("hubble_deep_field.jpg", 2, "Hubble eXtreme Deep Field (NASA, public domain)"),
    ("rocket.jpg", 1, "DSCOVR launch on Falcon 9 (SpaceX, public domain)"),
    ("retina.jpg", 3, "fundus photograph of a retina (Mikael Haggstrom, CC0)"),
)
EMBEDDED_TILE = 128  # side of a split tile, in pre-shrunk photo pixels
EMBEDDED_SCALES = (1, 2, 4)  # area-averaging factors applied to each tile: 16, 4 and 1 crops
EMBEDDED_SPLIT_PERIOD = 20  # tile g goes to validation if g % 20 == 10, test if g % 20 == 19
EMBEDDED_SPLIT_OFFSETS = {"validation": 10, "test": 19}
EMBEDDED_MIN_CROP_STD = 4.0  # crops flatter than this (pixel-value std) are dropped as blank
EMBEDDED_DESCRIPTION = "embedded scikit-image photos (not CIFAR-10)"

# The only globals a CIFAR-10 batch pickle may name: numpy array reconstruction, and the bytes
# constructor that protocol-2 pickles written by Python 3 use.
_ALLOWED_PICKLE_GLOBALS = frozenset(
    {
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


# ----------------------------------------------------------------------------------------------
# Pixels <-> BFN data space
# ----------------------------------------------------------------------------------------------


def _check_num_bins(num_bins: int) -> int:
    if isinstance(num_bins, bool) or int(num_bins) != num_bins or not 2 <= num_bins <= 256:
        raise ValueError(f"num_bins must be an integer in [2, 256], got {num_bins!r}")
    return int(num_bins)


def pixels_to_bins(images_uint8: np.ndarray, num_bins: int) -> np.ndarray:
    """0-based bin index min(floor(u K / 255), K - 1) of each 8-bit pixel u, as int32."""
    num_bins = _check_num_bins(num_bins)
    pixels = np.asarray(images_uint8)
    if pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got dtype {pixels.dtype}")
    return np.minimum(pixels.astype(np.int32) * num_bins // 255, num_bins - 1)


def bin_centre_values(bins: np.ndarray, num_bins: int) -> np.ndarray:
    """k_c = (2k + 1)/K - 1 in float32, the same float expression as bfn.continuous.bin_centres."""
    k = np.asarray(bins).astype(np.float32)
    return (np.float32(2.0) * k + np.float32(1.0)) / np.float32(num_bins) - np.float32(1.0)


def pixels_to_bfn(images_uint8: np.ndarray, num_bins: int) -> np.ndarray:
    """8-bit pixels to the float32 centre in [-1, 1] of their bin, as the official BFN code does."""
    return bin_centre_values(pixels_to_bins(images_uint8, num_bins), num_bins)


def bfn_to_pixels(x: Any, num_bins: int) -> np.ndarray:
    """[-1, 1] values (any array-like) to uint8: the bin of x, shown at its centre's 8-bit value.

    x is first put in its bin exactly as bfn.continuous.bin_index does (values outside [-1, 1]
    go to the edge bins), so bin centres, samples and noisy estimates all work. The bin's pixel
    is round(255 (k + 1/2) / K): u itself for K = 256 (an exact inverse of pixels_to_bfn), and
    for K = 16 a value in the middle of the bin's 16 pixel values (it maps back to the same centre).
    """
    num_bins = _check_num_bins(num_bins)
    values = np.asarray(x, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        raise ValueError("bfn_to_pixels got NaN or infinite values; check the sampler output")
    k = np.floor((values + np.float32(1.0)) * np.float32(num_bins / 2.0))
    k = np.clip(k, 0, num_bins - 1).astype(np.int64)
    return np.rint(255.0 * (k + 0.5) / num_bins).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------


def load_cifar10(split: str, *, data_dir: str | None = None, source: str = "auto") -> ImageSplit:
    """Loads one split of CIFAR-10 (or the embedded photo crops) as uint8 (N, 32, 32, 3) images.

    ``auto`` uses the embedded photos when data_dir is None or "", else the archive when
    data_dir holds ``cifar-10-python.tar.gz`` or ``cifar-10-batches-py/`` (or the batch files
    themselves), else a TFDS ``cifar10/`` folder. It never downloads.
    """
    return sources.load(CIFAR10_SOURCES, split, data_dir=data_dir, source=source)


def _train_rows(num_train: int, split: str, where: str) -> slice:
    """Rows of the training images that form split: the last 10% is validation."""
    num_validation = num_train * VALIDATION_PERCENT // 100
    if num_validation == 0:
        raise DataError(
            f"{where} has only {num_train} training images, too few to hold out "
            f"{VALIDATION_PERCENT}% for validation; use the full CIFAR-10 training set"
        )
    if split == "train_full":
        return slice(0, num_train)
    if split == "validation":
        return slice(num_train - num_validation, num_train)
    return slice(0, num_train - num_validation)


def _split_note(split: str, num_train: int) -> str:
    if split == "test":
        return "test images"
    rows = _train_rows(num_train, split, "")
    return f"{split}: training images {rows.start:,} to {rows.stop:,} of {num_train:,}"


# ----------------------------------------------------------------------------------------------
# The python archive (tar.gz or extracted folder)
# ----------------------------------------------------------------------------------------------


def _find_archive(data_dir: str) -> tuple[str, str] | None:
    """('folder', path) for extracted batches (preferred: no decompression), ('tar', path), or None."""
    for folder in (os.path.join(data_dir, ARCHIVE_FOLDER), data_dir):
        if any(os.path.isfile(os.path.join(folder, name)) for name in (*TRAIN_BATCHES, TEST_BATCH)):
            return "folder", folder
    tar_path = os.path.join(data_dir, ARCHIVE_NAME)
    if os.path.isfile(tar_path):
        return "tar", tar_path
    return None


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch but refuses every global other than numpy array rebuilding."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def _parse_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A batch pickle's checked b'data' (N x 3072 uint8: R, G, B planes) and int32 b'labels'."""
    hint = f"replace it with the file from {ARCHIVE_URL}"
    try:
        batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:  # any unpickling failure means the file is not a CIFAR-10 batch
        raise DataError(
            f"{where} is not a readable CIFAR-10 batch pickle ({type(err).__name__}: "
            f"{sources.first_line(err)}); {hint}"
        ) from err
    if not isinstance(batch, dict):
        raise DataError(f"{where} holds a {type(batch).__name__}, not a CIFAR-10 batch; {hint}")
    pixels = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if pixels is None or labels is None:
        raise DataError(f"{where} has no b'data' and b'labels' entries; {hint}")
    pixels = np.asarray(pixels)
    labels_N = np.asarray(labels)
    flat_size = IMAGE_SIDE * IMAGE_SIDE * NUM_CHANNELS
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != flat_size:
        raise DataError(
            f"{where} has data of shape {pixels.shape} and dtype {pixels.dtype}, expected "
            f"(N, {flat_size}) uint8; {hint}"
        )
    if labels_N.shape != (pixels.shape[0],) or not np.issubdtype(labels_N.dtype, np.integer):
        raise DataError(
            f"{where} has labels of shape {labels_N.shape}, expected {pixels.shape[0]} integers; "
            f"{hint}"
        )
    if labels_N.size and (labels_N.min() < 0 or labels_N.max() >= NUM_CLASSES):
        raise DataError(f"{where} has labels outside 0-9; {hint}")
    return pixels, labels_N.astype(np.int32)


def _read_folder_members(folder: str, names: Sequence[str]) -> tuple[dict[str, bytes], str]:
    """The bytes of the named batch files and 'official'/'not official' from their md5s."""
    missing = [name for name in names if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise DataError(
            f"CIFAR-10 folder {folder} is missing {', '.join(missing)}; extract the whole "
            f"{ARCHIVE_NAME} from {ARCHIVE_URL} there"
        )
    contents = {}
    for name in names:
        with open(os.path.join(folder, name), "rb") as batch_file:
            contents[name] = batch_file.read()
    is_official = all(
        hashlib.md5(contents[name]).hexdigest() == OFFICIAL_BATCH_MD5[name] for name in names
    )
    identity = "official files, md5 verified" if is_official else "md5 differs from the official"
    return contents, f"CIFAR-10 python batches in {folder} ({identity})"


def _read_tar_members(path: str, names: Sequence[str]) -> tuple[dict[str, bytes], str]:
    """Checks the archive's md5, then reads the named members in one pass without extracting."""
    md5 = sources.file_digest(path, "md5")
    if md5 != ARCHIVE_MD5:
        raise DataError(
            f"{path} has md5 {md5}, expected {ARCHIVE_MD5} (the published CIFAR-10 python "
            f"archive); the download is incomplete or corrupt: download {ARCHIVE_URL} again"
        )
    contents: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                name = os.path.basename(member.name)
                if member.isfile() and name in names and name not in contents:
                    member_file = archive.extractfile(member)
                    if member_file is not None:
                        contents[name] = member_file.read()
    except (OSError, EOFError, tarfile.TarError, zlib.error) as err:
        raise DataError(
            f"{path} is not a readable tar.gz archive ({type(err).__name__}: {sources.first_line(err)}); "
            f"download {ARCHIVE_URL} again"
        ) from err
    missing = [name for name in names if name not in contents]
    if missing:
        raise DataError(
            f"{path} has no member {', '.join(missing)}; use the {ARCHIVE_NAME} from {ARCHIVE_URL}"
        )
    return contents, f"CIFAR-10 python archive {path} (md5 verified)"


@functools.lru_cache(maxsize=2)
def _read_archive_batches(
    kind: str, path: str, names: tuple[str, ...], stamp: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, str]:
    """Images and labels of the named batches, concatenated (read-only), and a provenance note."""
    del stamp  # cache key only: a rewritten archive is read again
    reader = _read_tar_members if kind == "tar" else _read_folder_members
    contents, note = reader(path, names)
    parsed = [
        _parse_batch(
            contents[name], f"{path} member {name}" if kind == "tar" else os.path.join(path, name)
        )
        for name in names
    ]
    labels_N = np.concatenate([labels for _, labels in parsed])
    images_NxHxWxC = np.empty((len(labels_N), *IMAGE_SHAPE), dtype=np.uint8)
    start = 0
    for rows_Nx3072, _ in parsed:  # channel-major rows -> HWC, one copy straight into place
        planes_NxCxHxW = rows_Nx3072.reshape(-1, NUM_CHANNELS, IMAGE_SIDE, IMAGE_SIDE)
        images_NxHxWxC[start : start + len(rows_Nx3072)] = planes_NxCxHxW.transpose(0, 2, 3, 1)
        start += len(rows_Nx3072)
    images_NxHxWxC.flags.writeable = False
    labels_N.flags.writeable = False
    return images_NxHxWxC, labels_N, note


def _stamp(kind: str, path: str, names: Sequence[str]) -> tuple[int, int]:
    """(total size, latest mtime) of the files read, so that a cache entry notices rewrites."""
    paths = [path] if kind == "tar" else [os.path.join(path, name) for name in names]
    stats = [os.stat(p) for p in paths if os.path.isfile(p)]
    return sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)


def _load_archive(split: str, data_dir: str) -> ImageSplit:
    """One split from cifar-10-python.tar.gz or its extracted folder."""
    found = _find_archive(data_dir)
    if found is None:
        raise DataError(
            f"data.dir={data_dir} has neither {ARCHIVE_NAME} nor {ARCHIVE_FOLDER}/; download "
            f"{ARCHIVE_URL} into it, or use source='tfds' for a prepared TFDS dataset"
        )
    kind, path = found
    names = (TEST_BATCH,) if split == "test" else TRAIN_BATCHES
    images_NxHxWxC, labels_N, note = _read_archive_batches(
        kind, path, names, _stamp(kind, path, names)
    )
    rows = slice(None) if split == "test" else _train_rows(len(labels_N), split, note)
    return ImageSplit(
        images=images_NxHxWxC[rows].copy(),
        labels_N=labels_N[rows].copy(),
        split=split,
        source=f"{note}, {_split_note(split, len(labels_N))}",
    )


# ----------------------------------------------------------------------------------------------
# TFDS (array_record data_source)
# ----------------------------------------------------------------------------------------------


def _load_tfds(split: str, data_dir: str | None) -> ImageSplit:
    """Reads a split of a prepared array_record TFDS cifar10 into numpy."""

    def select(num_train: int, where: str) -> range:
        rows = _train_rows(num_train, split, where)
        return range(rows.start, rows.stop)

    read = sources.load_tfds_split(
        TFDS_NAME,
        "test" if split == "test" else "train",
        data_dir,
        select=None if split == "test" else select,
        alternative=_TFDS_ALTERNATIVE,
    )
    images_NxHxWxC = read.feature("image")
    if images_NxHxWxC.shape[1:] != IMAGE_SHAPE or images_NxHxWxC.dtype != np.uint8:
        raise read.error(
            f"has images of shape {images_NxHxWxC.shape[1:]} and dtype {images_NxHxWxC.dtype}, "
            f"expected {IMAGE_SHAPE} uint8"
        )
    return ImageSplit(
        images=images_NxHxWxC,
        labels_N=read.feature("label", np.int32),
        split=split,
        source=f"TFDS {read.description}, {_split_note(split, read.num_source)}",
    )


# ----------------------------------------------------------------------------------------------
# Embedded photo crops (scikit-image wheel)
# ----------------------------------------------------------------------------------------------


def _read_photo(file_name: str) -> np.ndarray:
    """An RGB photo shipped in skimage/data, decoded with Pillow without importing skimage."""
    path = installed_package_file("skimage", "data", file_name)
    if path is None:
        raise DataError(
            f"embedded photos need scikit-image's data file {file_name}: run "
            "`pip install scikit-image` (or `make install`), or set data.dir to a folder with "
            f"{ARCHIVE_NAME}"
        )
    from PIL import Image

    try:
        with Image.open(path) as image:
            photo = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except OSError as err:
        raise DataError(
            f"embedded photo {path} is unreadable ({type(err).__name__}); reinstall it with "
            "`pip install --force-reinstall scikit-image`"
        ) from err
    return photo


def _area_downsample(image_HxWxC: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks (exact area averaging); H and W must divide by factor."""
    height, width, channels = image_HxWxC.shape
    blocks = image_HxWxC.reshape(height // factor, factor, width // factor, factor, channels)
    return blocks.mean(axis=(1, 3), dtype=np.float64)


def _photo_crops(photo: np.ndarray, shrink: int) -> tuple[np.ndarray, np.ndarray]:
    """All 32x32 crops of one photo at every scale, with the tile (row-major) each lies in.

    The photo is pre-shrunk by `shrink`, its centred grid of 128x128 tiles is kept and every tile
    is area-averaged by 1, 2 and 4 and cut into 32x32 crops (16 + 4 + 1 per tile); one rounding
    to uint8 at the end, so each crop is an exact area average of the original photo.
    """
    tile = EMBEDDED_TILE * shrink  # in original pixels
    rows, cols = photo.shape[0] // tile, photo.shape[1] // tile
    top = (photo.shape[0] - rows * tile) // 2
    left = (photo.shape[1] - cols * tile) // 2
    area = photo[top : top + rows * tile, left : left + cols * tile].astype(np.float64)
    crops, tiles = [], []
    for scale in EMBEDDED_SCALES:
        scaled = _area_downsample(area, shrink * scale)
        per_tile = EMBEDDED_TILE // scale // IMAGE_SIDE  # crops along one side of a tile
        grid = scaled.reshape(rows * per_tile, IMAGE_SIDE, cols * per_tile, IMAGE_SIDE, -1)
        crops.append(grid.transpose(0, 2, 1, 3, 4).reshape(-1, *IMAGE_SHAPE))
        crop_rows, crop_cols = np.divmod(
            np.arange(rows * per_tile * cols * per_tile), cols * per_tile
        )
        tiles.append((crop_rows // per_tile) * cols + crop_cols // per_tile)
    images = np.rint(np.concatenate(crops)).astype(np.uint8)
    return images, np.concatenate(tiles)


@functools.lru_cache(maxsize=1)
def _build_embedded() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, photo labels and split names of every embedded crop (read-only, built once)."""
    all_images, all_labels, all_tiles = [], [], []
    tile_offset = 0
    for label, (file_name, shrink, _) in enumerate(EMBEDDED_PHOTOS):
        images, tiles = _photo_crops(_read_photo(file_name), shrink)
        all_images += [images, images[:, :, ::-1]]  # each crop and its horizontal mirror
        all_tiles += [tiles + tile_offset] * 2
        all_labels.append(np.full(2 * len(images), label, dtype=np.int32))
        tile_offset += int(tiles.max()) + 1
    images_NxHxWxC = np.concatenate(all_images)
    tiles_N = np.concatenate(all_tiles)
    labels_N = np.concatenate(all_labels)

    flat_NxD = images_NxHxWxC.reshape(len(images_NxHxWxC), -1)
    keep = flat_NxD.std(axis=1, dtype=np.float32) >= EMBEDDED_MIN_CROP_STD
    seen: set[bytes] = set()
    for row in np.flatnonzero(keep):  # drop exact repeats, keeping the first
        key = flat_NxD[row].tobytes()
        keep[row] = key not in seen
        seen.add(key)
    order = np.flatnonzero(keep)
    order = order[np.argsort(tiles_N[order], kind="stable")]  # group by tile, keep crop order

    split_of_tile = np.full(tile_offset, "train", dtype=object)
    for split, offset in EMBEDDED_SPLIT_OFFSETS.items():
        split_of_tile[offset::EMBEDDED_SPLIT_PERIOD] = split
    images_NxHxWxC = np.ascontiguousarray(images_NxHxWxC[order])
    labels_N = labels_N[order]
    splits_N = split_of_tile[tiles_N[order]].astype(str)
    for array in (images_NxHxWxC, labels_N, splits_N):
        array.flags.writeable = False
    return images_NxHxWxC, labels_N, splits_N


def _load_embedded(split: str) -> ImageSplit:
    """32x32 crops of six public-domain / CC0 photos, split by disjoint photo tiles.

    Each photo (pre-shrunk so its short side is 300-512 px) is cut into a centred grid of
    128x128 tiles; each tile gives 21 crops (16 at full resolution, 4 area-averaged by 2, 1 by
    4) and their mirror images; near-blank crops (std < 4 grey levels, e.g. the retina's black
    surround) and exact duplicates are dropped. Whole tiles go to a split: every 20th tile
    (g % 20 == 10) to validation, every 20th (g % 20 == 19) to test, the rest to train, where
    g counts tiles photo by photo. So no photo pixel is shared between splits, and a test crop is
    never a rescaled, flipped or overlapping copy of a train crop, while the 67 tiles spread each
    split over several photos. Labels are the photo index (0-5), not CIFAR-10 classes.
    """
    images_NxHxWxC, labels_N, splits_N = _build_embedded()
    wanted = ("train", "validation") if split == "train_full" else (split,)
    rows = np.isin(splits_N, wanted)
    credits = "; ".join(credit for _, _, credit in EMBEDDED_PHOTOS)
    return ImageSplit(
        images=images_NxHxWxC[rows].copy(),
        labels_N=labels_N[rows].copy(),
        split=split,
        source=(
            f"{EMBEDDED_DESCRIPTION}: {int(rows.sum()):,} of {len(labels_N):,} 32x32 crops at "
            f"3 scales plus mirror images, {split} tiles; photos: {credits}"
        ),
    )


# ----------------------------------------------------------------------------------------------
# The sources (declared after their loaders)
# ----------------------------------------------------------------------------------------------

CIFAR10_SOURCES = sources.DatasetSources(
    title="CIFAR-10",
    splits=SPLITS,
    sources={
        "embedded": sources.embedded_source(_load_embedded, f"the {EMBEDDED_DESCRIPTION}"),
        "archive": sources.Source(
            _load_archive,
            f"{ARCHIVE_NAME} (from {ARCHIVE_URL}) or its extracted {ARCHIVE_FOLDER}/",
            found_in=lambda data_dir: _find_archive(data_dir) is not None,
        ),
        "tfds": sources.tfds_source(TFDS_NAME, _load_tfds),
    },
)
SOURCES = CIFAR10_SOURCES.choices  # ("auto", "embedded", "archive", "tfds")


def independent_categorical_nll_nats(
    train_images_NxHxWxC: np.ndarray, test_images_MxHxWxC: np.ndarray, *, prior_count: float = 0.5
) -> float:
    """NLL (nats/image) of uint8 test images under independent per-sub-pixel 256-way histograms.

    Each (row, column, channel) gets its own categorical over the 256 levels, fit to the training
    images with prior_count added to every level (0.5: Krichevsky-Trofimov), so no level has
    probability 0. A baseline in the units of a likelihood over 256 levels per sub-pixel.
    """
    train = np.asarray(train_images_NxHxWxC)
    test = np.asarray(test_images_MxHxWxC)
    if train.dtype != np.uint8 or test.dtype != np.uint8:
        raise ValueError(f"need uint8 images, got {train.dtype} and {test.dtype}")
    if train.shape[1:] != test.shape[1:] or len(train) == 0 or len(test) == 0:
        raise ValueError(f"need non-empty images of one size, got {train.shape} and {test.shape}")
    flat_train = train.reshape(len(train), -1).astype(np.int64)
    flat_test = test.reshape(len(test), -1).astype(np.int64)
    num_positions = flat_train.shape[1]
    offsets = np.arange(num_positions) * 256
    counts = np.bincount((flat_train + offsets).ravel(), minlength=num_positions * 256)
    counts = counts.reshape(num_positions, 256).astype(np.float64) + prior_count
    log_probs = np.log(counts) - np.log(counts.sum(axis=1, keepdims=True))
    picked = log_probs[np.arange(num_positions)[None, :], flat_test]
    return float(-picked.sum(axis=1).mean())
