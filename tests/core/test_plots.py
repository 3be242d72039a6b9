"""Tests for deepgen.core.plots."""

import numpy as np
import pytest
from PIL import Image

from deepgen.core.plots import save_image_grid, save_loss_curve


def test_image_grid_size_for_ten_mnist_digits(tmp_path):
    images = np.random.default_rng(0).random((10, 28, 28), dtype=np.float32)
    path = save_image_grid(images, str(tmp_path / "sub" / "grid.png"), scale=2, pad=1)
    # N=10 -> ceil(sqrt(10)) = 4 columns, ceil(10/4) = 3 rows; 1-pixel lines between tiles only,
    # then x2: width (4*28 + 3*1) * 2 = 230, height (3*28 + 2*1) * 2 = 172.
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (230, 172)
        assert image.mode == "L"
        pixels = np.asarray(image)
    assert (pixels[:, 56:58] == 128).all()  # The grey line after the first column.
    assert (pixels[-56:, -56:] == 128).all()  # Empty cells 11 and 12 stay grey.
    expected = np.round(images[0] * 255).astype(np.uint8).repeat(2, 0).repeat(2, 1)
    np.testing.assert_array_equal(pixels[:56, :56], expected)


@pytest.mark.parametrize(
    ("images", "mode"),
    [
        (np.zeros((3, 5, 5, 3), np.uint8), "RGB"),
        (np.ones((3, 5, 5, 1), np.int32), "L"),
        (np.zeros((3, 5, 5), bool), "L"),
    ],
)
def test_image_grid_dtypes_and_channels(tmp_path, images, mode):
    path = save_image_grid(images, str(tmp_path / "g.png"), num_cols=3, scale=1, pad=0)
    with Image.open(path) as image:
        assert image.size == (15, 5)
        assert image.mode == mode
        if images.dtype == np.int32:  # {0, 1} integers map to 0 / 255.
            assert np.asarray(image).min() == 255


def test_image_grid_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        save_image_grid(np.zeros((2, 4, 4, 2)), str(tmp_path / "g.png"))
    with pytest.raises(ValueError, match="empty"):
        save_image_grid(np.zeros((0, 4, 4)), str(tmp_path / "g.png"))


def _records():
    records = [{"step": s, "split": "train", "loss": 10.0 * 0.9**s} for s in range(0, 100, 5)]
    records.append({"step": 50, "split": "train", "loss": None})  # A NaN logged as null.
    records.append({"step": 50, "split": "eval", "loss": 0.5, "accuracy": 0.9})
    return records


@pytest.mark.parametrize(("metric", "split"), [("loss", "train"), ("accuracy", "eval")])
def test_loss_curve_png(tmp_path, metric, split):
    path = save_loss_curve(
        _records(), str(tmp_path / "plots" / "loss.png"), metric=metric, split=split
    )
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > 100 and image.size[1] > 100


def test_loss_curve_without_values_raises(tmp_path):
    with pytest.raises(ValueError, match="no 'loss' values for split 'train'"):
        save_loss_curve([], str(tmp_path / "loss.png"))
    with pytest.raises(ValueError, match="'accuracy'"):
        save_loss_curve(_records(), str(tmp_path / "loss.png"), metric="accuracy")
    assert not (tmp_path / "loss.png").exists()
