"""PNG output: image grids (Pillow) and loss curves (matplotlib, Agg canvas, no pyplot state)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

_GRID_GREY = 128


def _ensure_parent(path: str) -> None:
    """Create the parent directory of ``path`` if it has one."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """Map floats in [0, 1], bools, {0, 1} ints or 0..255 ints to uint8 in 0..255."""
    if images.dtype == np.uint8:
        return images
    if images.dtype == np.bool_:
        return images.astype(np.uint8) * 255
    if np.issubdtype(images.dtype, np.integer):
        if images.size and images.max() <= 1:
            return (images.clip(0, 1) * 255).astype(np.uint8)
        return images.clip(0, 255).astype(np.uint8)
    if np.issubdtype(images.dtype, np.floating):
        scaled = np.nan_to_num(images.astype(np.float32), nan=0.0).clip(0.0, 1.0) * 255.0
        return np.round(scaled).astype(np.uint8)
    raise ValueError(f"images must be float, bool or integer, got dtype {images.dtype}")


def save_image_grid(
    images: np.ndarray,
    path: str,
    *,
    num_cols: int | None = None,
    scale: int = 2,
    pad: int = 1,
) -> str:
    """Tile images (N,H,W) or (N,H,W,C), C in {1,3}, into a grey-lined grid PNG; return path.

    ``pad`` grey pixels separate neighbouring tiles (not the outer border); the whole grid is
    then upscaled by ``scale`` with nearest-neighbour, so the final image is
    ``(rows*H + (rows-1)*pad) * scale`` by ``(cols*W + (cols-1)*pad) * scale``.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"images must have shape (N,H,W) or (N,H,W,C) with C in {{1,3}}, got {images.shape}"
        )
    num, height, width, channels = images.shape
    if num == 0:
        raise ValueError("images is empty: nothing to tile")
    if scale < 1 or pad < 0:
        raise ValueError(f"need scale >= 1 and pad >= 0, got scale={scale}, pad={pad}")
    if num_cols is not None and num_cols < 1:
        raise ValueError(f"num_cols must be positive, got {num_cols}")
    cols = min(num, num_cols or math.ceil(math.sqrt(num)))
    rows = math.ceil(num / cols)
    pixels = _to_uint8(images)
    grid = np.full(
        (rows * height + (rows - 1) * pad, cols * width + (cols - 1) * pad, channels),
        _GRID_GREY,
        dtype=np.uint8,
    )
    for index in range(num):
        row, col = divmod(index, cols)
        top, left = row * (height + pad), col * (width + pad)
        grid[top : top + height, left : left + width] = pixels[index]
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    image = Image.fromarray(grid[..., 0] if channels == 1 else grid)
    path = os.fspath(path)
    _ensure_parent(path)
    image.save(path, format="PNG")
    return path


def _ema(values: np.ndarray) -> np.ndarray:
    """Bias-corrected exponential moving average, span about 5% of the points (at least 1)."""
    span = max(1, len(values) // 20)
    decay = 1.0 - 2.0 / (span + 1.0)
    out = np.empty_like(values)
    average = 0.0
    for i, value in enumerate(values):
        average = decay * average + (1.0 - decay) * value
        out[i] = average / (1.0 - decay ** (i + 1)) if decay > 0 else average
    return out


def save_loss_curve(
    records: Sequence[Mapping],
    path: str,
    *,
    metric: str = "loss",
    split: str = "train",
    title: str | None = None,
) -> str:
    """Plot ``metric`` against step for ``split`` records (from read_metrics) to a PNG; return path.

    Null or non-finite values are skipped; when a step repeats (a resumed run) the last record
    wins. The y axis is logarithmic if all values are positive and span more than a decade.
    """
    by_step: dict[int, float] = {}
    for record in records:
        value = record.get(metric)
        if record.get("split") != split or value is None or not math.isfinite(value):
            continue
        by_step[int(record["step"])] = float(value)
    if not by_step:
        raise ValueError(f"no {metric!r} values for split {split!r} in {len(records)} records")
    steps = np.array(sorted(by_step))
    values = np.array([by_step[s] for s in steps], dtype=np.float64)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    marker = "o" if len(steps) < 30 else None
    axes.plot(steps, values, color="tab:blue", alpha=0.35, marker=marker, label=metric)
    axes.plot(steps, _ema(values), color="tab:blue", linewidth=2.0, label=f"{metric} (EMA)")
    if values.min() > 0 and values.max() / values.min() > 10:
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel(metric)
    axes.set_title(title if title is not None else f"{metric} ({split})")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = os.fspath(path)
    _ensure_parent(path)
    figure.savefig(path, format="png")
    return path


def save_pca_scatter(
    points_NxD: np.ndarray, labels_N: np.ndarray, path: str, *, title: str = ""
) -> str:
    """Scatter the first two principal components of the points, coloured by label; return path.

    Labels below 0 (unlabelled) are drawn grey. The explained variance of each axis is in its label.
    """
    points = np.asarray(points_NxD, np.float64)
    centred = points - points.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ vt[:2].T
    explained = np.square(singular) / max(np.square(singular).sum(), 1e-300)

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 5.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    labels_N = np.asarray(labels_N)[: len(points)]
    classes = sorted(set(labels_N[labels_N >= 0].tolist()))
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "viridis"]
    unlabelled = labels_N < 0
    if unlabelled.any():
        axes.scatter(*projected[unlabelled].T, s=4, color="grey", alpha=0.5)
    for i, label in enumerate(classes):
        chosen = labels_N == label
        colour = cmap(i % 10) if len(classes) <= 10 else cmap(i / max(len(classes) - 1, 1))
        axes.scatter(*projected[chosen].T, s=4, color=colour, alpha=0.7, label=str(label))
    if 0 < len(classes) <= 10:
        axes.legend(markerscale=3, fontsize=8, loc="best")
    axes.set_xlabel(f"PC 1 ({100 * explained[0]:.1f}% of the variance)")
    axes.set_ylabel(
        f"PC 2 ({100 * explained[1]:.1f}% of the variance)" if len(explained) > 1 else ""
    )
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    path = os.fspath(path)
    _ensure_parent(path)
    figure.savefig(path, format="png")
    return path
