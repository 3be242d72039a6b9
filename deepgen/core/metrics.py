"""Metric logging: a JSON-lines file and TensorBoard events per split, plus a console progress line.

``workdir/metrics.jsonl`` holds one JSON object per :meth:`MetricWriter.write` call,
``{"step": int, "split": str, <metric>: float | null, ...}``. Non-finite values (NaN, +-inf)
are written as ``null`` so that every line is strict JSON; TensorBoard gets them unchanged.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from deepgen.core.tensorboard import EventFileWriter

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_RESERVED_KEYS = ("step", "split")
_BAR_WIDTH = 20


def _drop_partial_last_line(path: str) -> None:
    """Truncate a trailing line with no newline (a write cut short by a crash) from ``path``."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        content = f.read()
        if content and not content.endswith(b"\n"):
            f.truncate(content.rfind(b"\n") + 1)


class MetricWriter:
    """Writes metrics to ``workdir/metrics.jsonl`` and ``workdir/tensorboard/{split}/``."""

    def __init__(self, workdir: str, *, enabled: bool) -> None:
        """Open the writer; ``enabled=False`` (JAX processes other than 0) creates nothing."""
        self.workdir = workdir
        self.enabled = enabled
        self._jsonl: TextIO | None = None
        self._event_writers: dict[str, EventFileWriter] = {}
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, METRICS_FILE)
        _drop_partial_last_line(path)
        # Append, so a resumed run continues the file; line buffering flushes every record.
        self._jsonl = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def write(self, step: int, metrics: Mapping[str, float], *, split: str = "train") -> None:
        """Record ``metrics`` at ``step`` for ``split`` (e.g. "train", "eval")."""
        if not self.enabled:
            return
        if self._jsonl is None:
            raise ValueError("MetricWriter is closed")
        for key in _RESERVED_KEYS:
            if key in metrics:
                raise ValueError(f"metric name {key!r} is reserved; rename the metric")
        values = {str(name): float(value) for name, value in metrics.items()}
        record: dict[str, Any] = {"step": int(step), "split": split}
        record.update({name: v if math.isfinite(v) else None for name, v in values.items()})
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        if split not in self._event_writers:
            logdir = os.path.join(self.workdir, TENSORBOARD_DIR, split)
            self._event_writers[split] = EventFileWriter(logdir)
        self._event_writers[split].add_scalars(int(step), values)

    def flush(self) -> None:
        """Flush the JSON-lines file and all event files."""
        if self._jsonl is not None:
            self._jsonl.flush()
        for writer in self._event_writers.values():
            writer.flush()

    def close(self) -> None:
        """Flush and close all files; further calls do nothing."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        for writer in self._event_writers.values():
            writer.close()
        self._event_writers.clear()

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """Read ``workdir/metrics.jsonl`` in file order (a resumed run may repeat some steps)."""
    path = os.path.join(workdir, METRICS_FILE)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):  # A final line without newline: a write cut short.
                break
            raise ValueError(f"{path}:{number}: not a JSON object: {e}") from e
    return records


def format_duration(seconds: float) -> str:
    """Format a duration compactly: ``45s``, ``5m08s``, ``2h03m`` ("?" if unknown)."""
    if not math.isfinite(seconds):
        return "?"
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    minutes = total // 60
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _format_metric(value: float) -> str:
    """Format a metric value with 4 significant digits."""
    return f"{float(value):.4g}"


def _format_rate(rate: float) -> str:
    """Format a rate: 3 significant digits below 100, else a whole number with separators."""
    return f"{rate:.3g}" if rate < 100 else f"{rate:,.0f}"


class Progress:
    """Console progress: a log line per update, or a ``\\r``-refreshed bar on a terminal."""

    def __init__(
        self,
        *,
        total_steps: int,
        start_step: int,
        examples_per_step: int,
        unit: str = "steps",
        stream: TextIO | None = None,
        use_bar: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start the rate clock at ``start_step``; ``use_bar=None`` means a bar iff a tty."""
        self.total_steps = total_steps
        self.examples_per_step = examples_per_step
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        if use_bar is None:
            isatty = getattr(self.stream, "isatty", None)
            use_bar = bool(isatty and isatty())
        self.use_bar = use_bar
        self._clock = clock
        self._last_step = start_step
        self._last_time = clock()
        self._bar_len = 0  # Length of the bar text on screen; 0 when no bar line is open.

    def mark(self, step: int) -> None:
        """Restart the rate clock at ``step`` (e.g. after the compiling first step)."""
        self._last_step = step
        self._last_time = self._clock()

    def update(self, step: int, metrics: Mapping[str, float]) -> str:
        """Show progress at ``step`` with ``metrics``; return the text shown (no \\r or \\n)."""
        now = self._clock()
        elapsed, steps_done = now - self._last_time, step - self._last_step
        self._last_time, self._last_step = now, step
        label = "step" if self.unit == "steps" else self.unit
        parts = [f"{label} {step}/{self.total_steps}"]
        parts += [f"{name} {_format_metric(value)}" for name, value in metrics.items()]
        if elapsed > 0 and steps_done > 0:
            rate = steps_done / elapsed
            remaining = max(0, self.total_steps - step)
            parts.append(f"{_format_rate(rate)} {self.unit}/s")
            if self.examples_per_step > 1:
                parts.append(f"{_format_rate(rate * self.examples_per_step)} ex/s")
            parts.append(f"ETA {format_duration(remaining / rate)}")
        text = " | ".join(parts)
        if self.use_bar:
            fraction = min(1.0, max(0.0, step / self.total_steps)) if self.total_steps > 0 else 1.0
            filled = int(fraction * _BAR_WIDTH)
            bar = "#" * filled + "." * (_BAR_WIDTH - filled)
            text = f"[{bar}] {int(fraction * 100):3d}% {text}"
            padding = " " * max(0, self._bar_len - len(text))
            self.stream.write("\r" + text + padding)
            self._bar_len = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        return text

    def close(self) -> None:
        """End an open bar line with a newline."""
        if self._bar_len:
            self.stream.write("\n")
            self.stream.flush()
            self._bar_len = 0


class TaskProgress:
    """Progress with ETA for a job of known size outside training (eval batches, sample steps).

    Lines go to stderr at most every `min_interval` seconds and at the end, so a log gets a few
    lines, not one per batch: "eval: 12/40 batches | 3.1 batches/s | ETA 9s".
    """

    def __init__(
        self,
        what: str,
        total: int,
        *,
        unit: str = "batches",
        stream: TextIO | None = None,
        min_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.unit, self.total, self.done = what, unit, max(int(total), 1), 0
        self.stream = sys.stderr if stream is None else stream
        self._clock, self._min_interval = clock, min_interval
        self._start = self._last_shown = clock()
        self.lines: list[str] = []

    def advance(self, count: int = 1) -> None:
        """Count `count` more units done; show a line when due."""
        if self.done == self.total:  # the last line was shown
            return
        self.done = min(self.done + count, self.total)
        now = self._clock()
        if self.done < self.total and now - self._last_shown < self._min_interval:
            return
        self._last_shown = now
        parts = [f"{self.what}: {self.done}/{self.total} {self.unit}"]
        elapsed = now - self._start
        if elapsed > 0 and self.done:
            rate = self.done / elapsed
            parts.append(f"{_format_rate(rate)} {self.unit}/s")
            parts.append(f"ETA {format_duration((self.total - self.done) / rate)}")
        line = " | ".join(parts)
        self.lines.append(line)
        self.stream.write(line + "\n")
        self.stream.flush()
