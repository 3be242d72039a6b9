"""Syllabus and per-task loss plots of a curriculum run, read back from its metrics.jsonl.

The train step logs the bandit's policy as `policy/<task>` and the held-out loss of every task as
`eval/<task>`; these plots are the paper's Figures of task probabilities over time and of the
loss of every task (Graves et al. 2017, Sec. 5). Repeat copy has 169 tasks: its syllabus is shown
as the paper shows it, the probability of each sequence length and of each repeat count.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np


def series(
    records: Sequence[Mapping], prefix: str, names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values (steps, tasks)) of `prefix/<name>` train records; a repeated step keeps its last."""
    by_step: dict[int, list[float]] = {}
    for record in records:
        if record.get("split") != "train" or f"{prefix}/{names[0]}" not in record:
            continue
        row = [record.get(f"{prefix}/{name}") for name in names]
        by_step[int(record["step"])] = [
            float(v) if v is not None and math.isfinite(float(v)) else np.nan for v in row
        ]
    steps = np.array(sorted(by_step), dtype=np.int64)
    values = np.array([by_step[s] for s in steps], dtype=np.float64).reshape(len(steps), len(names))
    return steps, values


def _grid_marginals(names: Sequence[str], values: np.ndarray) -> dict[str, tuple[list, np.ndarray]]:
    """Sum the probabilities of `len{l}_rep{r}` tasks over repeats (per length) and lengths."""
    pairs = [tuple(int(x) for x in re.findall(r"\d+", name)[:2]) for name in names]
    lengths = sorted({p[0] for p in pairs})
    repeats = sorted({p[1] for p in pairs})
    by_length = np.stack(
        [values[:, [p[0] == length for p in pairs]].sum(1) for length in lengths], 1
    )
    by_repeat = np.stack([values[:, [p[1] == r for p in pairs]].sum(1) for r in repeats], 1)
    return {
        "sequence length": ([f"length {n}" for n in lengths], by_length),
        "repeat count": ([f"{r} repeats" for r in repeats], by_repeat),
    }


def _figure(num_panels: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4 * num_panels, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _lines(axes, steps, values, labels, *, title: str, ylabel: str) -> None:
    import matplotlib

    colours = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.95, len(labels)))
    for column, (label, colour) in enumerate(zip(labels, colours, strict=False)):
        axes.plot(steps, values[:, column], color=colour, label=label, linewidth=1.4)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if len(labels) <= 20:
        axes.legend(fontsize=7, ncol=2 if len(labels) > 8 else 1)


def save_syllabus(
    records: Sequence[Mapping], path: str, *, names: Sequence[str], kind: str, title: str
) -> str:
    """The policy over time: one line per task, or per length and per repeat count (repeat copy)."""
    steps, values = series(records, "policy", names)
    if not len(steps):
        raise ValueError("no policy/<task> values in the train records")
    if kind == "repeat_copy":
        panels = _grid_marginals(names, values)
    else:
        panels = {"task": (list(names), values)}
    figure = _figure(len(panels))
    for index, (what, (labels, panel_values)) in enumerate(panels.items(), start=1):
        axes = figure.add_subplot(1, len(panels), index)
        _lines(axes, steps, panel_values, labels, title=f"{title}: p({what})", ylabel="probability")
    figure.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, format="png")
    return path


def save_task_losses(
    records: Sequence[Mapping], path: str, *, names: Sequence[str], kind: str, title: str, unit: str
) -> str:
    """Held-out loss of every task over time (repeat copy: averaged per length and per repeats)."""
    steps, values = series(records, "eval", names)
    keep = np.isfinite(values).all(axis=1)
    steps, values = steps[keep], values[keep]
    if not len(steps):
        raise ValueError("no finite eval/<task> values in the train records")
    if kind == "repeat_copy":
        panels = {
            what: (labels, sums / (values.shape[1] / sums.shape[1]))
            for what, (labels, sums) in _grid_marginals(names, values).items()
        }
    else:
        panels = {"task": (list(names), values)}
    figure = _figure(len(panels))
    for index, (what, (labels, panel_values)) in enumerate(panels.items(), start=1):
        axes = figure.add_subplot(1, len(panels), index)
        _lines(axes, steps, panel_values, labels, title=f"{title}: loss by {what}", ylabel=unit)
    figure.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, format="png")
    return path
