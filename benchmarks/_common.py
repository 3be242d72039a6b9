"""Set-up shared by the benchmark scripts: config overrides, the machine, the timed train step."""

import ast
import datetime
import json
import os
import platform
import resource
import shlex
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import jax
from ml_collections import ConfigDict

from configs import bfn as bfn_configs
from deepgen.core import distributed
from deepgen.core import mesh as mesh_lib
from experiments.contract import Method


def apply_overrides(config: ConfigDict, overrides: Sequence[str]) -> ConfigDict:
    """Set each a.b=value override in place (parsed to the field's type unless it is a string)."""
    for item in overrides:
        key, value = item.split("=", 1)
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = (
            value if isinstance(node[leaf], str) else type(node[leaf])(ast.literal_eval(value))
        )
    return config


def parse_config(variant: str, overrides: Sequence[str]) -> ConfigDict:
    """The BFN variant's config with --set a.b=value overrides applied."""
    return apply_overrides(bfn_configs.get_config(variant), overrides)


def steps_table(
    first_column: str, n_steps: Sequence[int], rows: Sequence[tuple[str, Sequence[str]]]
) -> list[str]:
    """Markdown lines of a table with a column per number of steps and a row per (label, cells)."""
    lines = [
        f"| {first_column} | " + " | ".join(f"n = {n}" for n in n_steps) + " |",
        "|---|" + "---|" * len(n_steps),
    ]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return lines


# ---- the machine ------------------------------------------------------------------------------


def machine_description() -> str:
    """Device kind and count, backend, host CPU and its cores (as bfn_throughput.py words it)."""
    device = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    return (
        f"{device.device_kind} x{jax.device_count()} ({jax.default_backend()}), "
        f"{cpu}, {os.cpu_count()} cores"
    )


def load_average() -> str:
    """The host's 1/5/15-minute load average (a busy CPU slows every number here)."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def available_bytes() -> int | None:
    """Free device memory where the backend reports it, else the host's MemAvailable."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_memory() -> str:
    """Peak device memory where the backend reports it, else the process's peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return f"{int(stats['peak_bytes_in_use']) / 2**30:.2f} GiB (device peak)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return f"{rss / 2**30:.2f} GiB (host peak RSS)"


# ---- the train step, timed as the core loop runs it ---------------------------------------------


class StepRunner:
    """One method's state and its compiled train step, jitted as the core loop jits it."""

    def __init__(self, label: str, method: Method, batch: dict):
        self.label = label
        mesh = method.mesh
        shardings = method.state_shardings()
        batch_sharding = mesh_lib.batch_sharding(mesh)
        replicated = mesh_lib.replicated(mesh)
        seed = int(method.config.seed)
        init_rng = jax.random.fold_in(jax.random.key(seed), 0)
        self.rng = jax.random.fold_in(jax.random.key(seed), 1)
        self.state = jax.jit(method.init_state, out_shardings=shardings)(init_rng)
        self.batch = distributed.global_batch(batch, batch_sharding)
        step = jax.jit(
            method.train_step,
            in_shardings=(shardings, batch_sharding, replicated),
            out_shardings=(shardings, replicated),
            donate_argnums=(0,),
        )
        started = time.perf_counter()
        self.compiled = step.lower(self.state, self.batch, self.rng).compile()
        self.compile_s = time.perf_counter() - started
        self.metrics: dict = {}
        self.times: list[float] = []

    def step(self) -> float:
        """One step, waited for; its wall seconds."""
        started = time.perf_counter()
        self.state, self.metrics = self.compiled(self.state, self.batch, self.rng)
        jax.block_until_ready((self.state, self.metrics))
        return time.perf_counter() - started


def time_interleaved(runners: Sequence[StepRunner], *, warmup: int, steps: int) -> None:
    """Warm every runner up, then time `steps` rounds of one step per runner, in turn."""
    for runner in runners:
        for _ in range(warmup):
            runner.step()
    for _ in range(steps):
        for runner in runners:
            runner.times.append(runner.step())


def parse_sizes(text: str | None) -> list[int] | None:
    """'4000,60_000,1e6' -> [4000, 60000, 1000000]; None stays None."""
    if not text:
        return None
    return [int(float(part.replace("_", ""))) for part in text.split(",") if part.strip()]


def compile_quickly(quick: bool, level: int = 1) -> None:
    """For --quick: XLA backend optimisation `level` (compile time dominates tiny runs).

    As tests/conftest.py sets it; it takes effect only before JAX starts its backend (so when
    run as a script), and an XLA_FLAGS that already sets the level wins. Timings of such a run
    are not ones to report.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if quick and "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level={level}".strip()


def output_path(out: str | None, *, quick: bool, default: Path, quick_name: str) -> Path:
    """--out if given; a --quick run writes under the temp folder, never over the real result."""
    if out:
        return Path(out)
    return Path(tempfile.gettempdir()) / quick_name if quick else default


def report_header(script: str, argv: Sequence[str] | None, *, quick: bool) -> dict:
    """The fields every benchmark report starts with (prints the device line as it starts)."""
    command = f"python {script}" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    print(
        f"device: {machine_description()}, jax {jax.__version__}, load average {load_average()}",
        flush=True,
    )
    return {
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "host": socket.gethostname(),
        "machine": machine_description(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "command": command,
        "quick": quick,
        "load_average_start": load_average(),
    }


def write_report(out: Path, report: dict, markdown: str) -> dict:
    """Print the markdown block, write the report as JSON to out (folders made); returns it."""
    print()
    print(markdown)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return report
