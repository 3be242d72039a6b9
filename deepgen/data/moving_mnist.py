"""Moving MNIST: MNIST digits bouncing inside a grey canvas, generated on the fly or loaded.

The dataset of Srivastava et al. 2015, "Unsupervised Learning of Video Representations using
LSTMs" (Sec. 3, Moving MNIST), used by Video Pixel Networks (Kalchbrenner et al. 2016, Sec. 5.1):
each sequence has ``num_frames`` (20) frames of a ``canvas`` x ``canvas`` (64 x 64) canvas in
which ``num_digits`` (2) MNIST digits move in straight lines and bounce off the edges; where the
digits overlap the frame takes the elementwise maximum. Pixels are float32 in [0, 1].

Generation (:func:`bouncing_trajectories`, :func:`render`, :class:`MovingMnist`):

* each digit's top-left corner starts uniformly in [0, F]^2, F = canvas - digit_side (the free
  range), and moves at ``speed`` pixels per frame in a direction theta ~ U[0, 2 pi), with
  velocity speed * (sin theta, cos theta) in (row, column), as in Srivastava's generator;
* the straight-line position is mirror-reflected into [0, F] on each axis (a bounce flips that
  axis's velocity and keeps the distance travelled), then floored to whole pixels. Srivastava's
  released generator instead clamps a position that crosses a wall onto the wall and flips the
  velocity, so on a bounce frame it loses the overshoot; the difference is under one step at a
  wall and the reflection has a closed form (no loop over frames);
* frame 0 is the start position (Srivastava's first frame is one step after the draw: the same
  distribution, since the start is uniform).

Speed: Srivastava's generator moves the position, measured in units of the free range F, by a
step_length of 0.1 per frame, i.e. 0.1 * (64 - 28) = 3.6 pixels per frame on the standard
canvas. ``speed=None`` means that same 0.1 F (:func:`srivastava_speed`), so a smaller canvas with
rescaled digits (e.g. 32 x 32 with 14-pixel digits: 1.8 pixels per frame) moves the same way.

Sequence n of a :class:`MovingMnist` is a function of (seed, n) alone: its digits and trajectory
come from ``np.random.default_rng([seed, n])``, so a batch is regenerated from its indices and
training (:func:`training_iterator`, an :class:`~deepgen.data.pipeline.EpochIterator` over the
indices 0 .. num_sequences - 1) resumes exactly. Training sequences use only the MNIST ``train``
digits; the held-out sequences (:func:`test_sequences`) only the ``test`` digits, with the fixed
seed FIXED_TEST_SEED, so the test set is built from digits never used in training.

The standard test set of Srivastava (10,000 sequences of 20 x 64 x 64, :func:`load_moving_mnist`)
is read, never downloaded, from either of:

* ``npy``: the original ``mnist_test_seq.npy`` (uint8, time-major 20 x 10000 x 64 x 64) in data.dir;
* ``tfds``: a ``moving_mnist`` TFDS dataset prepared in array_record format.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import NamedTuple

import numpy as np

from deepgen.core.errors import ConfigError, DataError
from deepgen.data import mnist, sources
from deepgen.data.pipeline import EpochIterator

MNIST_SIDE = mnist.IMAGE_SIDE  # 28

# Srivastava et al.'s defaults.
NUM_FRAMES = 20
CANVAS = 64
NUM_DIGITS = 2
DIGIT_SIDE = MNIST_SIDE
# Displacement per frame as a fraction of the free range canvas - digit_side.
SRIVASTAVA_STEP_LENGTH = 0.1

# Training "examples": sequence indices 0 .. NUM_TRAIN_SEQUENCES - 1, each generated on the fly.
NUM_TRAIN_SEQUENCES = 10**6

# Seed of the held-out sequences of test_sequences (arXiv 1502.04681, Srivastava et al.). Never
# change it: every reported test number would then be on a different test set.
FIXED_TEST_SEED = 150204681

# Sequences rendered at once inside MovingMnist.batch (bounds the index arrays of render).
_RENDER_CHUNK = 256

# The standard test set.
SPLITS = ("test",)
TFDS_NAME = "moving_mnist"
NPY_NAME = "mnist_test_seq.npy"
NPY_URL = "http://www.cs.toronto.edu/~nitish/unsupervised_video/mnist_test_seq.npy"
STANDARD_SHAPE = (NUM_FRAMES, CANVAS, CANVAS)  # per sequence, without the channel axis
_NPY_ALTERNATIVE = f"put {NPY_NAME} from {NPY_URL} in data.dir and use source='npy'"


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int) -> int:
    """value as an int, or a one-line ConfigError unless it is an integer >= minimum."""
    is_int = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not is_int or value < minimum:
        raise ConfigError(f"{name}={value!r} is not allowed; use an integer >= {minimum}")
    return int(value)


def srivastava_speed(canvas: int = CANVAS, digit_side: int = DIGIT_SIDE) -> float:
    """Srivastava's speed in pixels per frame: 0.1 of the free range (3.6 for 64 and 28)."""
    return SRIVASTAVA_STEP_LENGTH * (canvas - digit_side)


def _check_geometry(
    *, num_digits: int, num_frames: int, canvas: int, digit_side: int, speed: float | None
) -> float:
    """Checks the generation parameters (one-line ConfigError); returns the speed to use."""
    _check_int("num_digits", num_digits, 1)
    _check_int("num_frames", num_frames, 1)
    _check_int("digit_side", digit_side, 1)
    _check_int("canvas", canvas, 1)
    if canvas < digit_side:
        raise ConfigError(
            f"canvas={canvas} is smaller than digit_side={digit_side}; use a canvas of at least "
            "digit_side pixels (64 for 28-pixel digits, 32 for 14)"
        )
    if speed is None:
        return srivastava_speed(canvas, digit_side)
    if isinstance(speed, bool) or not isinstance(speed, int | float | np.number):
        raise ConfigError(f"speed={speed!r} is not a number; use pixels per frame, e.g. 3.6")
    if not math.isfinite(speed) or speed < 0:
        raise ConfigError(f"speed={speed!r} is not allowed; use a finite speed >= 0 pixels/frame")
    return float(speed)


# ----------------------------------------------------------------------------------------------
# Trajectories and rendering
# ----------------------------------------------------------------------------------------------


def reflect(coordinates: np.ndarray, free: float) -> np.ndarray:
    """Folds straight-line coordinates into [0, free] by mirror reflection at 0 and free."""
    coordinates = np.asarray(coordinates, dtype=np.float64)
    if free <= 0:
        return np.zeros_like(coordinates)
    return free - np.abs(np.mod(coordinates, 2.0 * free) - free)


def _draw_motion(
    rng: np.random.Generator, num_sequences: int, num_digits: int, free: int, speed: float
) -> tuple[np.ndarray, np.ndarray]:
    """Start corners uniform in [0, free]^2; velocities speed * (sin, cos) of theta ~ U[0, 2pi)."""
    start_SxKx2 = rng.random((num_sequences, num_digits, 2)) * free
    theta_SxK = rng.random((num_sequences, num_digits)) * (2.0 * np.pi)
    velocity_SxKx2 = speed * np.stack([np.sin(theta_SxK), np.cos(theta_SxK)], axis=-1)
    return start_SxKx2, velocity_SxKx2


def _fly(
    start_SxKx2: np.ndarray, velocity_SxKx2: np.ndarray, num_frames: int, free: int
) -> np.ndarray:
    """Integer top-left corners S x K x T x 2 of bouncing straight-line motion from the start."""
    time_T = np.arange(num_frames, dtype=np.float64)
    line_SxKxTx2 = (
        start_SxKx2[:, :, None, :] + time_T[None, None, :, None] * velocity_SxKx2[:, :, None, :]
    )
    corners = np.floor(reflect(line_SxKxTx2, free))
    return np.clip(corners, 0, free).astype(np.int32)


def bouncing_trajectories(
    rng: np.random.Generator,
    *,
    num_sequences: int,
    num_digits: int = NUM_DIGITS,
    num_frames: int = NUM_FRAMES,
    canvas: int = CANVAS,
    digit_side: int = DIGIT_SIDE,
    speed: float | None = None,
) -> np.ndarray:
    """Integer top-left (row, column) corners, S x num_digits x num_frames x 2 int32, in [0, F]."""
    speed = _check_geometry(
        num_digits=num_digits,
        num_frames=num_frames,
        canvas=canvas,
        digit_side=digit_side,
        speed=speed,
    )
    num_sequences = _check_int("num_sequences", num_sequences, 0)
    free = canvas - digit_side
    start_SxKx2, velocity_SxKx2 = _draw_motion(rng, num_sequences, num_digits, free, speed)
    return _fly(start_SxKx2, velocity_SxKx2, num_frames, free)


def render(digits_SxKxhxw: np.ndarray, positions_SxKxTx2: np.ndarray, canvas: int) -> np.ndarray:
    """Frames S x T x canvas x canvas x 1 float32: each digit pasted at its corner, max-combined."""
    digits = np.asarray(digits_SxKxhxw, dtype=np.float32)
    positions = np.asarray(positions_SxKxTx2)
    if digits.ndim != 4 or positions.ndim != 4 or positions.shape[-1] != 2:
        raise ValueError(
            f"need digits S x K x h x w and positions S x K x T x 2, got {digits.shape} and "
            f"{positions.shape}"
        )
    num_sequences, num_digits, height, width = digits.shape
    if positions.shape[:2] != (num_sequences, num_digits):
        raise ValueError(f"positions {positions.shape} do not match digits {digits.shape} in S x K")
    if not np.issubdtype(positions.dtype, np.integer):
        raise ValueError(f"positions must be integers, got dtype {positions.dtype}")
    num_frames = positions.shape[2]
    if positions.size and (
        positions.min() < 0
        or positions[..., 0].max() > canvas - height
        or positions[..., 1].max() > canvas - width
    ):
        raise ValueError(
            f"positions must keep {height}x{width} digits inside a {canvas}x{canvas} canvas "
            f"(corners in [0, {canvas - height}] x [0, {canvas - width}])"
        )
    frames_SxTxHxW = np.zeros((num_sequences, num_frames, canvas, canvas), dtype=np.float32)
    flat = frames_SxTxHxW.reshape(-1)
    frame_start_SxT = np.arange(num_sequences * num_frames, dtype=np.int64).reshape(
        num_sequences, num_frames
    ) * (canvas * canvas)
    patch_hxw = np.arange(height, dtype=np.int64)[:, None] * canvas + np.arange(width)[None, :]
    for k in range(num_digits):
        corner_SxT = positions[:, k, :, 0].astype(np.int64) * canvas + positions[:, k, :, 1]
        where_SxTxhxw = (frame_start_SxT + corner_SxT)[:, :, None, None] + patch_hxw
        # One digit covers each frame once, so where_ has no repeats and a plain store is exact.
        flat[where_SxTxhxw] = np.maximum(flat[where_SxTxhxw], digits[:, k, None, :, :])
    return frames_SxTxHxW[..., None]


def resize_digits(digits_NxHxW: np.ndarray, digit_side: int) -> np.ndarray:
    """Digits at digit_side x digit_side, float32 in [0, 1]: block means, else PIL bilinear."""
    digits = np.asarray(digits_NxHxW, dtype=np.float32)
    digit_side = _check_int("digit_side", digit_side, 1)
    num, height, width = digits.shape
    if (height, width) == (digit_side, digit_side):
        return digits.copy()
    if height == width and height % digit_side == 0:
        factor = height // digit_side
        blocks = digits.reshape(num, digit_side, factor, digit_side, factor)
        return blocks.mean(axis=(2, 4), dtype=np.float64).astype(np.float32)
    from PIL import Image

    resized = np.empty((num, digit_side, digit_side), dtype=np.float32)
    for n in range(num):
        image = Image.fromarray(digits[n], mode="F")
        resized[n] = np.asarray(image.resize((digit_side, digit_side), Image.Resampling.BILINEAR))
    return np.clip(resized, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Sequences as a function of (seed, index)
# ----------------------------------------------------------------------------------------------


class SequencePlan(NamedTuple):
    """What a batch of sequences is made of: which digits of the split, and where they go."""

    digit_ids_BxK: np.ndarray  # int64 rows of MovingMnist.digits_Nxhxw
    positions_BxKxTx2: np.ndarray  # int32 top-left (row, column) corners


class MovingMnist:
    """The digits of one MNIST split and the generation parameters; sequence n from (seed, n).

    Sequence n draws, from ``np.random.default_rng([seed, n])``, first its num_digits digit rows
    (uniformly, with replacement) and then its start corners and directions
    (:func:`bouncing_trajectories` with one sequence).
    """

    def __init__(
        self,
        digits_NxHxW: np.ndarray,
        *,
        split: str,
        source: str = "",
        seed: int = 0,
        num_digits: int = NUM_DIGITS,
        num_frames: int = NUM_FRAMES,
        canvas: int = CANVAS,
        digit_side: int = DIGIT_SIDE,
        speed: float | None = None,
    ):
        self.speed = _check_geometry(
            num_digits=num_digits,
            num_frames=num_frames,
            canvas=canvas,
            digit_side=digit_side,
            speed=speed,
        )
        self.seed = _check_int("seed", seed, 0)
        digits_NxHxW = np.asarray(digits_NxHxW)
        if digits_NxHxW.ndim != 3 or len(digits_NxHxW) == 0:
            raise DataError(
                f"Moving MNIST needs a non-empty N x H x W array of digits, got shape "
                f"{digits_NxHxW.shape}; pass ImageSplit.intensities_NxHxW of an MNIST split"
            )
        self.digits_Nxhxw = resize_digits(digits_NxHxW, digit_side)
        self.digits_Nxhxw.flags.writeable = False
        self.split = split
        self.source = source
        self.num_digits = int(num_digits)
        self.num_frames = int(num_frames)
        self.canvas = int(canvas)
        self.digit_side = int(digit_side)

    @classmethod
    def from_mnist(
        cls,
        split: str,
        *,
        data_dir: str | None = None,
        source: str = "auto",
        seed: int = 0,
        num_digits: int = NUM_DIGITS,
        num_frames: int = NUM_FRAMES,
        canvas: int = CANVAS,
        digit_side: int = DIGIT_SIDE,
        speed: float | None = None,
    ) -> MovingMnist:
        """The digits of one split of deepgen.data.mnist.load_mnist (data_dir, source as there)."""
        digits = mnist.load_mnist(split, data_dir=data_dir, source=source)
        return cls(
            digits.intensities_NxHxW,
            split=split,
            source=digits.source,
            seed=seed,
            num_digits=num_digits,
            num_frames=num_frames,
            canvas=canvas,
            digit_side=digit_side,
            speed=speed,
        )

    @property
    def num_source_digits(self) -> int:
        """Number of digit images the sequences draw from."""
        return len(self.digits_Nxhxw)

    @property
    def frame_shape(self) -> tuple[int, int, int, int]:
        """T x H x W x 1 of one sequence."""
        return (self.num_frames, self.canvas, self.canvas, 1)

    def plan(self, sequence_indices: np.ndarray) -> SequencePlan:
        """The digit rows and corners of the given sequences (each from its own (seed, index))."""
        indices = np.asarray(sequence_indices)
        if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) or indices.size == 0):
            raise ValueError(f"need a 1-D array of sequence indices, got {indices!r}")
        if indices.size and indices.min() < 0:
            raise ValueError(f"sequence indices must be >= 0, got {int(indices.min())}")
        free = self.canvas - self.digit_side
        digit_ids, starts, velocities = [], [], []
        for index in indices.tolist():
            rng = np.random.default_rng([self.seed, index])
            digit_ids.append(rng.integers(0, self.num_source_digits, size=self.num_digits))
            start, velocity = _draw_motion(rng, 1, self.num_digits, free, self.speed)
            starts.append(start)
            velocities.append(velocity)
        if not digit_ids:
            return SequencePlan(
                np.zeros((0, self.num_digits), np.int64),
                np.zeros((0, self.num_digits, self.num_frames, 2), np.int32),
            )
        positions = _fly(np.concatenate(starts), np.concatenate(velocities), self.num_frames, free)
        return SequencePlan(np.stack(digit_ids).astype(np.int64), positions)

    def batch(self, sequence_indices: np.ndarray) -> np.ndarray:
        """The sequences with these indices: B x T x H x W x 1 float32 in [0, 1]."""
        digit_ids_BxK, positions_BxKxTx2 = self.plan(sequence_indices)
        out = np.empty((len(digit_ids_BxK), *self.frame_shape), dtype=np.float32)
        for start in range(0, len(out), _RENDER_CHUNK):
            stop = start + _RENDER_CHUNK
            out[start:stop] = render(
                self.digits_Nxhxw[digit_ids_BxK[start:stop]],
                positions_BxKxTx2[start:stop],
                self.canvas,
            )
        return out

    def sequence(self, index: int) -> np.ndarray:
        """Sequence `index` alone: T x H x W x 1 float32."""
        return self.batch(np.array([index]))[0]


def test_sequences(
    num_sequences: int,
    *,
    seed: int = FIXED_TEST_SEED,
    data_dir: str | None = None,
    source: str = "auto",
    num_digits: int = NUM_DIGITS,
    num_frames: int = NUM_FRAMES,
    canvas: int = CANVAS,
    digit_side: int = DIGIT_SIDE,
    speed: float | None = None,
) -> np.ndarray:
    """The fixed held-out sequences 0 .. num_sequences - 1, N x T x H x W x 1, from test digits.

    Always seed FIXED_TEST_SEED unless a study needs another fixed set; data_dir and source pick
    the MNIST digits as in deepgen.data.mnist.load_mnist.
    """
    num_sequences = _check_int("num_sequences", num_sequences, 1)
    moving = MovingMnist.from_mnist(
        "test",
        data_dir=data_dir,
        source=source,
        seed=seed,
        num_digits=num_digits,
        num_frames=num_frames,
        canvas=canvas,
        digit_side=digit_side,
        speed=speed,
    )
    return moving.batch(np.arange(num_sequences))


test_sequences.__test__ = False  # not a pytest test, even when imported into a test module


def training_iterator(
    moving: MovingMnist,
    *,
    global_batch_size: int,
    seed: int,
    process_rows: slice,
    num_sequences: int = NUM_TRAIN_SEQUENCES,
    shuffle: bool = True,
) -> EpochIterator:
    """A resumable iterator of {"x": B x T x H x W x 1} (this process's rows) over sequence indices.

    The examples are the indices 0 .. num_sequences - 1 of `moving` (its own seed fixes their
    content); `seed` fixes the epoch order. Each process renders only its rows of the global batch.
    """
    if moving.split == "test":
        raise ConfigError(
            "training_iterator got Moving MNIST built from MNIST test digits; build the training "
            "sequences with MovingMnist.from_mnist('train', ...)"
        )
    num_sequences = _check_int("num_sequences", num_sequences, 1)
    global_batch_size = _check_int("global_batch_size", global_batch_size, 1)

    def make_batch(indices: np.ndarray, rows: slice, rng: np.random.Generator) -> dict:
        del rng  # a sequence is a function of its index alone
        return {"x": moving.batch(indices[rows])}

    return EpochIterator(
        num_examples=num_sequences,
        global_batch_size=global_batch_size,
        make_batch=make_batch,
        seed=int(seed),
        process_rows=process_rows,
        shuffle=shuffle,
    )


# ----------------------------------------------------------------------------------------------
# The standard test set of Srivastava et al. (mnist_test_seq.npy or TFDS moving_mnist)
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class VideoSplit:
    """Sequences N x T x H x W x 1 float32 in [0, 1], and where they came from."""

    videos_NxTxHxWx1: np.ndarray
    split: str
    source: str

    @property
    def num_examples(self) -> int:
        """Number of sequences."""
        return int(self.videos_NxTxHxWx1.shape[0])


def _to_intensities(videos_uint8: np.ndarray) -> np.ndarray:
    """uint8 N x T x H x W (any strides, e.g. a memmap view) to float32 N x T x H x W x 1 / 255."""
    out = np.empty((*videos_uint8.shape, 1), dtype=np.float32)
    out[..., 0] = videos_uint8
    out *= np.float32(1.0 / 255.0)
    return out


def _load_npy(split: str, data_dir: str, limit: int | None) -> VideoSplit:
    """The first `limit` (default all) sequences of mnist_test_seq.npy, time-major on disk."""
    del split  # only "test"
    path = os.path.join(data_dir, NPY_NAME)
    if not os.path.isfile(path):
        raise DataError(
            f"data.dir={data_dir} has no {NPY_NAME}; download it from {NPY_URL} into data.dir"
        )
    try:
        frames_TxNxHxW = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(
            f"{path} is not a readable .npy file ({type(err).__name__}: "
            f"{sources.first_line(err)}); download it again from {NPY_URL}"
        ) from err
    shape = frames_TxNxHxW.shape
    if (
        frames_TxNxHxW.dtype != np.uint8
        or len(shape) != 4
        or (shape[0], *shape[2:]) != STANDARD_SHAPE
        or shape[1] == 0
    ):
        raise DataError(
            f"{path} holds {frames_TxNxHxW.dtype} of shape {shape}, expected time-major uint8 "
            f"({NUM_FRAMES}, N, {CANVAS}, {CANVAS}); download it again from {NPY_URL}"
        )
    num = shape[1] if limit is None else min(limit, shape[1])
    videos = _to_intensities(frames_TxNxHxW[:, :num].transpose(1, 0, 2, 3))
    return VideoSplit(
        videos_NxTxHxWx1=videos,
        split="test",
        source=f"{path} (sequences 0 to {num:,} of {shape[1]:,})",
    )


def _load_tfds(split: str, data_dir: str | None, limit: int | None) -> VideoSplit:
    """The first `limit` (default all) sequences of a prepared TFDS moving_mnist test split."""
    read = sources.load_tfds_split(
        TFDS_NAME,
        split,
        data_dir,
        select=None if limit is None else lambda num, where: range(min(limit, num)),
        alternative=_NPY_ALTERNATIVE,
    )
    videos = read.feature("image_sequence")
    if videos.dtype != np.uint8 or videos.shape[1:] != (*STANDARD_SHAPE, 1):
        raise read.error(
            f"has image_sequence of shape {videos.shape[1:]} and dtype {videos.dtype}, expected "
            f"{(*STANDARD_SHAPE, 1)} uint8"
        )
    return VideoSplit(
        videos_NxTxHxWx1=_to_intensities(videos[..., 0]),
        split=split,
        source=f"TFDS {read.description}, sequences 0 to {len(videos):,} of {read.num_source:,}",
    )


def _dataset_sources(limit: int | None) -> sources.DatasetSources:
    """The sources of the standard test set, reading at most `limit` sequences."""
    return sources.DatasetSources(
        title="Moving MNIST",
        splits=SPLITS,
        sources={
            "npy": sources.Source(
                functools.partial(_load_npy, limit=limit),
                f"{NPY_NAME} (from {NPY_URL})",
                found_in=lambda data_dir: os.path.isfile(os.path.join(data_dir, NPY_NAME)),
            ),
            "tfds": sources.tfds_source(TFDS_NAME, functools.partial(_load_tfds, limit=limit)),
        },
        default=None,
    )


MOVING_MNIST_SOURCES = _dataset_sources(None)
SOURCES = MOVING_MNIST_SOURCES.choices  # ("auto", "npy", "tfds")


def load_moving_mnist(
    split: str = "test",
    *,
    data_dir: str | None = None,
    source: str = "auto",
    num_sequences: int | None = None,
) -> VideoSplit:
    """Srivastava's standard test sequences (the first num_sequences; all 10,000 by default).

    ``auto`` reads data.dir/mnist_test_seq.npy when it is there, else a TFDS moving_mnist/
    folder; without data.dir there is nothing to read (no embedded copy, no download): use
    :func:`test_sequences` for generated held-out sequences instead.
    """
    if num_sequences is not None:
        num_sequences = _check_int("num_sequences", num_sequences, 1)
    return sources.load(_dataset_sources(num_sequences), split, data_dir=data_dir, source=source)
