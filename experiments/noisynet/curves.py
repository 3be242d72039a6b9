"""Learning curves of NoisyNet runs: mean episode return against env steps, with a band over seeds."""

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

SEED_PREFIX = "mean_episode_return_seed"


def learning_curve(records: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray]:
    """(env_steps_T, returns_SxT) from metrics records; a repeated step (resume) keeps the last."""
    by_step: dict[int, list[float]] = {}
    for record in records:
        if record.get("split") != "train":
            continue
        seeds = sorted(
            (k for k in record if k.startswith(SEED_PREFIX)),
            key=lambda k: int(k[len(SEED_PREFIX) :]),
        )
        if not seeds and "mean_episode_return" in record:
            seeds = ["mean_episode_return"]
        if not seeds:
            continue
        by_step[int(record["step"])] = [
            math.nan if record[k] is None else float(record[k]) for k in seeds
        ]
    steps = np.array(sorted(by_step), np.int64)
    returns = (
        np.array([by_step[s] for s in steps], np.float64).T if len(steps) else np.zeros((0, 0))
    )
    return steps, returns


def save_learning_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str, *, title: str
) -> str:
    """Mean return against env steps per label, with a band of +-1 standard error over seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, (steps, returns_SxT) in curves.items():
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(returns_SxT, axis=0)
            count = np.sum(np.isfinite(returns_SxT), axis=0)
            stderr = np.nanstd(returns_SxT, axis=0, ddof=0) / np.sqrt(np.maximum(count, 1))
        (line,) = axes.plot(
            steps, mean, linewidth=2.0, label=f"{label} ({returns_SxT.shape[0]} seeds)"
        )
        axes.fill_between(steps, mean - stderr, mean + stderr, color=line.get_color(), alpha=0.25)
    axes.set_xlabel("environment steps (per seed)")
    axes.set_ylabel("mean episode return")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, format="png")
    return path
