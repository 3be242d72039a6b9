"""Tests for deepgen.data.moving_mnist: trajectories, rendering, determinism and the loaders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from loader_checks import assert_one_line_error, pretend_prepared_tfds, row_set

from deepgen.core.errors import ConfigError, DataError
from deepgen.data import mnist, moving_mnist

# CPU-scale geometry: 14-pixel digits (28 pooled 2x2) on a 32x32 canvas, few frames.
SMALL = {"num_digits": 2, "num_frames": 6, "canvas": 32, "digit_side": 14}


@pytest.fixture(scope="module")
def train_moving() -> moving_mnist.MovingMnist:
    return moving_mnist.MovingMnist.from_mnist("train", seed=5, **SMALL)


@pytest.fixture(scope="module")
def test_moving() -> moving_mnist.MovingMnist:
    return moving_mnist.MovingMnist.from_mnist("test", seed=5, **SMALL)


# ----------------------------------------------------------------------------------------------
# Trajectories
# ----------------------------------------------------------------------------------------------


def _simulate_bounces(start: float, velocity: float, num_frames: int, free: float) -> list[float]:
    """Step-by-step motion that flips the velocity whenever a step crosses a wall."""
    positions = [start]
    for _ in range(num_frames - 1):
        start += velocity
        while start < 0 or start > free:
            if start < 0:
                start, velocity = -start, -velocity
            if start > free:
                start, velocity = 2 * free - start, -velocity
        positions.append(start)
    return positions


def test_reflect_folds_a_straight_line_like_step_by_step_bouncing() -> None:
    # 30 -> 34 -> 38 would leave [0, 36]: it comes back to 34, then 30 (velocity flipped).
    np.testing.assert_allclose(moving_mnist.reflect(30 + 4 * np.arange(4), 36), [30, 34, 34, 30])
    np.testing.assert_allclose(moving_mnist.reflect(np.array([-2.0, 12.0, 23.0]), 10), [2, 8, 3])
    rng = np.random.default_rng(0)
    for _ in range(50):
        free = rng.uniform(1, 40)
        start, velocity = rng.uniform(0, free), rng.uniform(-2 * free, 2 * free)
        time_T = np.arange(15)
        np.testing.assert_allclose(
            moving_mnist.reflect(start + velocity * time_T, free),
            _simulate_bounces(start, velocity, 15, free),
            atol=1e-9,
        )


def test_trajectories_stay_inside_the_canvas_and_bounce() -> None:
    speed, free = 3.6, 64 - 28
    positions = moving_mnist.bouncing_trajectories(
        np.random.default_rng(1), num_sequences=300, num_digits=2, num_frames=20
    )
    assert positions.shape == (300, 2, 20, 2) and positions.dtype == np.int32
    assert positions.min() >= 0 and positions.max() <= free
    assert positions.min() == 0 and positions.max() >= free - 1  # walls are reached

    # A reversal of an axis's motion (displacement signs + then -, or - then +) is a bounce: the
    # digit is within one step of a wall there.
    step_SxKxTx2 = np.diff(positions, axis=2)
    reversed_ = step_SxKxTx2[:, :, 1:] * step_SxKxTx2[:, :, :-1] < 0
    at_reversal = positions[:, :, 1:-1][reversed_]
    assert len(at_reversal) > 100
    assert np.all((at_reversal <= speed) | (at_reversal >= free - speed - 1))


def test_displacement_is_the_speed_away_from_walls() -> None:
    speed, free = 3.6, 36
    positions = moving_mnist.bouncing_trajectories(
        np.random.default_rng(2), num_sequences=300, num_frames=20, speed=speed
    )
    # From a corner >= speed from both walls on both axes no step can reach a wall; flooring
    # moves each axis by < 1 pixel, the Euclidean displacement by < sqrt(2).
    safe_SxKxT = np.all((positions >= speed) & (positions + 1 <= free - speed), axis=-1)
    step_length = np.linalg.norm(np.diff(positions, axis=2), axis=-1)
    single = step_length[safe_SxKxT[:, :, :-1]]
    assert len(single) > 1000
    assert np.all(np.abs(single - speed) < math.sqrt(2))
    # Flooring does not accumulate: three safe steps move 3 * speed, still within sqrt(2).
    run_safe = safe_SxKxT[:, :, :-3] & safe_SxKxT[:, :, 1:-2] & safe_SxKxT[:, :, 2:-1]
    three = np.linalg.norm(positions[:, :, 3:] - positions[:, :, :-3], axis=-1)[run_safe]
    assert len(three) > 100
    assert np.all(np.abs(three - 3 * speed) < math.sqrt(2))


def test_default_speed_is_srivastavas_tenth_of_the_free_range() -> None:
    assert moving_mnist.srivastava_speed() == pytest.approx(3.6)
    assert moving_mnist.srivastava_speed(32, 14) == pytest.approx(1.8)
    rng = np.random.default_rng(3)
    default = moving_mnist.bouncing_trajectories(rng, num_sequences=5, canvas=32, digit_side=14)
    explicit = moving_mnist.bouncing_trajectories(
        np.random.default_rng(3), num_sequences=5, canvas=32, digit_side=14, speed=1.8
    )
    np.testing.assert_array_equal(default, explicit)
    still = moving_mnist.bouncing_trajectories(rng, num_sequences=3, speed=0.0)
    assert np.all(still == still[:, :, :1])


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def test_render_places_a_digit_exactly_at_its_corner() -> None:
    digit_hxw = np.random.default_rng(4).random((5, 3)).astype(np.float32)
    positions = np.array([[[[2, 7], [0, 0], [5, 9]]]])  # S=1, K=1, T=3
    frames = moving_mnist.render(digit_hxw[None, None], positions, canvas=12)
    assert frames.shape == (1, 3, 12, 12, 1) and frames.dtype == np.float32
    for t, (row, col) in enumerate(positions[0, 0]):
        expected = np.zeros((12, 12), np.float32)
        expected[row : row + 5, col : col + 3] = digit_hxw
        np.testing.assert_array_equal(frames[0, t, :, :, 0], expected)


def test_render_combines_overlapping_digits_by_maximum() -> None:
    first = np.zeros((4, 4), np.float32)
    first[:, :2] = 0.9
    second = np.full((4, 4), 0.5, np.float32)
    positions = np.array([[[[0, 0]], [[0, 1]]]])  # S=1, K=2, T=1: second shifted one column
    frame = moving_mnist.render(np.stack([first, second])[None], positions, canvas=6)[0, 0, :, :, 0]
    expected = np.zeros((6, 6), np.float32)
    expected[:4, 1:5] = 0.5
    expected[:4, :2] = 0.9
    np.testing.assert_array_equal(frame, expected)


def test_render_rejects_corners_outside_the_canvas() -> None:
    with pytest.raises(ValueError, match="inside"):
        moving_mnist.render(np.ones((1, 1, 4, 4)), np.array([[[[3, 0]]]]), canvas=6)


def test_resize_digits_pools_integer_factors_exactly_and_else_resizes() -> None:
    digits = np.random.default_rng(5).random((3, 28, 28)).astype(np.float32)
    pooled = moving_mnist.resize_digits(digits, 14)
    np.testing.assert_allclose(
        pooled[1, 3, 4], digits[1, 6:8, 8:10].mean(), rtol=1e-6
    )  # 2x2 block mean
    resized = moving_mnist.resize_digits(digits, 20)
    assert resized.shape == (3, 20, 20) and resized.dtype == np.float32
    assert resized.min() >= 0.0 and resized.max() <= 1.0


# ----------------------------------------------------------------------------------------------
# Sequences from (seed, index)
# ----------------------------------------------------------------------------------------------


def test_sequences_are_a_function_of_seed_and_index(train_moving) -> None:
    both = train_moving.batch(np.array([3, 7]))
    assert both.shape == (2, 6, 32, 32, 1) and both.dtype == np.float32
    assert both.min() >= 0.0 and both.max() <= 1.0 and both.max() > 0.5
    np.testing.assert_array_equal(both[0], train_moving.sequence(3))
    np.testing.assert_array_equal(both[1], train_moving.batch(np.array([7]))[0])
    assert not np.array_equal(both[0], both[1])
    again = moving_mnist.MovingMnist.from_mnist("train", seed=5, **SMALL)
    np.testing.assert_array_equal(again.batch(np.array([7, 3])), both[::-1])
    other_seed = moving_mnist.MovingMnist.from_mnist("train", seed=6, **SMALL)
    assert not np.array_equal(other_seed.sequence(3), both[0])


def test_frames_are_the_max_of_the_planned_digits(train_moving) -> None:
    digit_ids, positions = train_moving.plan(np.array([11]))
    frames = train_moving.batch(np.array([11]))
    digits = train_moving.digits_Nxhxw[digit_ids[0]]
    for t in (0, 5):
        expected = np.zeros((32, 32), np.float32)
        for digit, (row, col) in zip(digits, positions[0, :, t], strict=True):
            window = expected[row : row + 14, col : col + 14]
            np.maximum(window, digit, out=window)
        np.testing.assert_array_equal(frames[0, t, :, :, 0], expected)


def test_train_and_test_sequences_use_disjoint_digits(train_moving, test_moving) -> None:
    indices = np.arange(200)
    train_ids = train_moving.plan(indices).digit_ids_BxK
    test_ids = test_moving.plan(indices).digit_ids_BxK
    assert train_moving.num_source_digits == 4000 and test_moving.num_source_digits == 500
    assert len(np.unique(test_ids)) > 200  # many different test digits are used
    full_size = moving_mnist.MovingMnist.from_mnist("test", seed=5, num_frames=2)
    used_test_digits = full_size.digits_Nxhxw[full_size.plan(indices).digit_ids_BxK.ravel()]
    test_rows = row_set(mnist.load_mnist("test").intensities_NxHxW)
    train_rows = row_set(mnist.load_mnist("train").intensities_NxHxW)
    assert row_set(used_test_digits) <= test_rows
    assert not row_set(used_test_digits) & train_rows
    assert train_ids.max() < 4000 and test_ids.max() < 500


def test_held_out_test_sequences_are_fixed_and_from_test_digits(test_moving) -> None:
    first = moving_mnist.test_sequences(3, **SMALL)
    np.testing.assert_array_equal(first, moving_mnist.test_sequences(3, **SMALL))
    fixed = moving_mnist.MovingMnist.from_mnist("test", seed=moving_mnist.FIXED_TEST_SEED, **SMALL)
    np.testing.assert_array_equal(first, fixed.batch(np.arange(3)))
    assert not np.array_equal(first, test_moving.batch(np.arange(3)))  # another seed


# ----------------------------------------------------------------------------------------------
# Training iterator
# ----------------------------------------------------------------------------------------------


def test_training_iterator_resumes_exactly(train_moving) -> None:
    def make():
        return moving_mnist.training_iterator(
            train_moving,
            global_batch_size=4,
            seed=9,
            process_rows=slice(0, 4),
            num_sequences=10,
        )

    iterator = make()
    first = [next(iterator)["x"] for _ in range(3)]  # crosses the 2-batch epoch boundary
    state = iterator.get_state()
    expected = [next(iterator)["x"] for _ in range(2)]
    resumed = make()
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(resumed)["x"], want)
    assert first[0].shape == (4, 6, 32, 32, 1)
    assert not np.array_equal(first[0], first[1])

    # Two processes' rows together are the one-process batch.
    halves = [
        next(
            moving_mnist.training_iterator(
                train_moving,
                global_batch_size=4,
                seed=9,
                process_rows=rows,
                num_sequences=10,
            )
        )["x"]
        for rows in (slice(0, 2), slice(2, 4))
    ]
    np.testing.assert_array_equal(np.concatenate(halves), first[0])


def test_training_iterator_refuses_test_digits(test_moving) -> None:
    with pytest.raises(ConfigError) as caught:
        moving_mnist.training_iterator(
            test_moving, global_batch_size=2, seed=0, process_rows=slice(0, 2)
        )
    assert_one_line_error(caught.value, "from_mnist('train'")


# ----------------------------------------------------------------------------------------------
# Configuration errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"canvas": 20, "digit_side": 28}, "canvas=20"),
        ({"num_digits": 0}, "num_digits=0"),
        ({"num_frames": 0}, "num_frames=0"),
        ({"speed": -1.0}, "speed=-1.0"),
        ({"digit_side": 2.5}, "digit_side=2.5"),
    ],
)
def test_bad_geometry_is_config_error(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        moving_mnist.bouncing_trajectories(np.random.default_rng(0), num_sequences=1, **kwargs)
    assert_one_line_error(caught.value, fragment)
    with pytest.raises(ConfigError):
        moving_mnist.MovingMnist(np.zeros((2, 28, 28)), split="train", **kwargs)


# ----------------------------------------------------------------------------------------------
# Srivastava's standard test set
# ----------------------------------------------------------------------------------------------


def _write_npy(path: Path, num_sequences: int) -> np.ndarray:
    frames_TxNxHxW = np.random.default_rng(6).integers(
        0, 256, size=(20, num_sequences, 64, 64), dtype=np.uint8
    )
    np.save(path, frames_TxNxHxW)
    return frames_TxNxHxW


def test_npy_loader_is_batch_major_intensities(tmp_path: Path) -> None:
    frames_TxNxHxW = _write_npy(tmp_path / "mnist_test_seq.npy", 3)
    data = moving_mnist.load_moving_mnist(data_dir=str(tmp_path))
    assert data.num_examples == 3 and data.split == "test"
    assert data.videos_NxTxHxWx1.shape == (3, 20, 64, 64, 1)
    assert data.videos_NxTxHxWx1.dtype == np.float32
    assert data.videos_NxTxHxWx1.min() >= 0.0 and data.videos_NxTxHxWx1.max() <= 1.0
    np.testing.assert_allclose(
        data.videos_NxTxHxWx1[..., 0],
        frames_TxNxHxW.transpose(1, 0, 2, 3) / 255.0,
        rtol=1e-6,
    )
    first_two = moving_mnist.load_moving_mnist(data_dir=tmp_path, source="npy", num_sequences=2)
    np.testing.assert_array_equal(first_two.videos_NxTxHxWx1, data.videos_NxTxHxWx1[:2])
    assert "mnist_test_seq.npy" in first_two.source


def test_missing_or_bad_npy_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        moving_mnist.load_moving_mnist(data_dir=str(tmp_path), source="npy")
    assert_one_line_error(caught.value, "mnist_test_seq.npy", str(tmp_path))
    with pytest.raises(DataError) as caught:
        moving_mnist.load_moving_mnist(data_dir=str(tmp_path))  # auto finds nothing
    assert_one_line_error(caught.value, "mnist_test_seq.npy", "moving_mnist")
    with pytest.raises(DataError) as caught:
        moving_mnist.load_moving_mnist()  # no data.dir: nothing to read
    assert_one_line_error(caught.value, "Moving MNIST", "mnist_test_seq.npy")

    np.save(tmp_path / "mnist_test_seq.npy", np.zeros((3, 20, 64, 64), np.uint8))  # batch-major
    with pytest.raises(DataError) as caught:
        moving_mnist.load_moving_mnist(data_dir=str(tmp_path))
    assert_one_line_error(caught.value, "time-major")
    (tmp_path / "mnist_test_seq.npy").write_bytes(b"not an npy file")
    with pytest.raises(DataError) as caught:
        moving_mnist.load_moving_mnist(data_dir=str(tmp_path))
    assert_one_line_error(caught.value, "not a readable .npy")


def test_tfds_moving_mnist_through_data_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tfds's moving_mnist builder imports TensorFlow, so the data source itself is faked here.
    tfds = pytest.importorskip("tensorflow_datasets")
    pretend_prepared_tfds(monkeypatch)
    (tmp_path / "moving_mnist" / "1.0.0").mkdir(parents=True)
    videos = np.random.default_rng(7).integers(0, 256, size=(3, 20, 64, 64, 1), dtype=np.uint8)

    def fake_data_source(name, *, split, data_dir, download) -> list[dict]:
        assert (name, split, data_dir, download) == ("moving_mnist", "test", str(tmp_path), False)
        return [{"image_sequence": video} for video in videos]

    monkeypatch.setattr(tfds, "data_source", fake_data_source)
    data = moving_mnist.load_moving_mnist(data_dir=str(tmp_path), num_sequences=2)  # auto -> tfds
    assert data.videos_NxTxHxWx1.shape == (2, 20, 64, 64, 1)
    np.testing.assert_allclose(data.videos_NxTxHxWx1, videos[:2] / 255.0, rtol=1e-6)
    assert data.source.startswith("TFDS moving_mnist")

    monkeypatch.setattr(
        tfds, "data_source", lambda *args, **kwargs: [{"image_sequence": videos[0, :5]}]
    )
    with pytest.raises(DataError) as caught:
        moving_mnist.load_moving_mnist(data_dir=str(tmp_path), source="tfds")
    assert_one_line_error(caught.value, "image_sequence", "tfds build moving_mnist", "npy")
