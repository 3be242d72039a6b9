"""SAM's scaling (Rae et al. 2016, arXiv 1610.09027, Fig. 1a/1b): time and memory of one forward
and backward pass of 100 steps against the number of words N, dense memories against SAM, with
the PyPI `dnc` package's SAM as the peer, side by side in one run.

Full run (writes benchmarks/results/sam/scaling.json and scaling.png; 10-25 minutes on a 2-core
CPU; the peer needs its own venv, see "The peer" below):

    python benchmarks/sam_scaling.py --peer_python /tmp/peer/bin/python \\
        --peer_dnc_path /tmp/peer_dnc2

Seconds, small sizes, for a check of the script (writes under the temp folder; batch 1, 20
steps, compiled at XLA backend optimisation level 1, so its timings are not ones to report):

    python benchmarks/sam_scaling.py --quick [--peer_python /tmp/peer/bin/python ...]

On the GPU machine, in benchmarks/gpu_check.sh (no host index, no peer: both are CPU-only here):

    timeout 300 python3 benchmarks/sam_scaling.py --labels ntm,dam,sam_exact,sam_blocked \\
        --memory_batch 8 --dense_extra 2e4 --step_sweep 10,100,200 --repeats 3 \\
        --time_budget 20 --max_call_s 20 --no_forward --memory_budget_gb 60 \\
        --out=${OUT:-/tmp}/sam_scaling.json

The issue: "time and peak memory of one forward and backward pass of 100 steps against N from
1e3 to 1e6 words, dense versus SAM (exact and host index), log-log PNG. Targets: SAM at least
100x faster than the dense memory at N = 1e6 (extrapolate the dense line from where it fits,
and say so), and memory per step flat in N. Peer: the PyPI dnc package ... deepgen's SAM faster
at every N measured, with the ratio at 1e5 reported", and "O(1) memory per step in the backward
pass ... a T-step forward and backward through SAM costs O(N + T K M), not O(N T M)".

Set-up (Supp. E): `deepgen.sam.model.MemoryNetwork`, a one-layer LSTM controller of 100 units,
word size M = 32, R = 4 read heads, K = 4 words per sparse read, T = 100 steps of 8 random input
bits, loss the sigmoid cross-entropy of 8 output logits against random target bits; batch 8 for
time, batch 1 for memory (as the paper). Parameters do not depend on N (built once per kind).

1. Time against N (--sizes, default 1e3, 1e4, 1e5, 1e6): for each memory (--labels: `ntm` and
   `dam`, the dense cores; `sam_exact`, `sam_host`, optionally `sam_blocked`: SAM with
   `MemorySpec.search` exact / host (hnswlib via callbacks) / blocked), one jitted
   `jax.value_and_grad` of the loss over the whole sequence is compiled, called once (warm-up),
   then timed up to --repeats times (fewer when a call is slow: at most --time_budget seconds
   of timed calls, at least one); reported: the median. The dense cores also run at the extra
   sizes --dense_extra (2e3, 5e3, 2e4), for their line. A configuration runs only while it is
   predicted to take at most --max_call_s per call (the last measured time of the same memory,
   scaled by N) and its compiled footprint (temp + arguments + outputs, from
   `compiled.memory_analysis()`, exact for that N) fits --memory_budget_gb; otherwise it is
   recorded as skipped, with the prediction. The dense time at the sizes not run is
   EXTRAPOLATED: a least-squares fit of log time = log c + log N (time proportional to N) over
   the measured sizes >= --fit_from (2e3), the free-exponent fit reported beside it. Host
   indices of a call are released after it (outside the timing); the all-zero base index the
   memory starts from is kept, as a training loop keeps it. For the SAM memories the forward
   pass alone is timed too (--no_forward or --quick skip it), and the optimised HLO of both
   programs is searched for copies of the whole batch of memories, f32[B, N, M]: in the entry
   computation (once per call) and in the loop bodies (once per step, an O(N M) cost per step
   whatever the search).
2. Memory against N: the compiled memory statistics (`memory_analysis()`: temp, argument,
   output, alias bytes; None where the backend gives none) at batch 1, for every memory at every
   size, also where it is not run (the compiler's figure for the dense cores at N = 1e6, not an
   extrapolation), and at batch 8 for the timed ones; and the process's peak RSS growth over
   each timed configuration (VmHWM reset through /proc/self/clear_refs; CPU only).
3. Memory per step: the compiled temp bytes of SAM (exact search) at batch 1 for T in
   --step_sweep (10, 50, 100, 200) at N = 1e4 and 1e5, and of the dense NTM at N = 1e3 and 1e4;
   a least-squares fit bytes = a + b T gives the bytes per step b, compared with K M 4 (one
   read's K words), (R K + 1) M 4 (every word one step touches) and N M 4 (one copy of the
   memory: what O(N T M) would cost per step). And the residuals JAX saves for the backward
   pass (`saved_residuals`, a private JAX function; skipped where absent) at T = 100: their
   total bytes and whether any has an axis of N words.
4. The peer, PyPI `dnc` 2.0.0b1 (ixaxaar/pytorch-dnc at HEAD cf6f682): benchmarks/
   sam_peer_runner.py run by --peer_python (a venv with torch, faiss-cpu, numpy; dnc 2.0.0b1
   installed with `pip install --no-deps --target DIR dnc==2.0.0b1` and given as
   --peer_dnc_path, or in the venv itself), one process per size, with the same N, K, heads,
   word size, controller (one-layer LSTM of 100), batch, T, bits and loss, torch and faiss at
   --peer_threads threads (default: the CPU count, what XLA uses) and OMP_WAIT_POLICY=PASSIVE
   (with the default active waiting, torch and faiss's OpenMP threads spin against each other
   on a busy 2-core machine: 100x slower). The runner's docstring says exactly what it patches
   at run time (faiss-cpu has no GPU resources; three lines of `FAISSIndex.__init__`; a stub
   for the unused dense memory that `SAM.__init__` builds at N^2 floats). A size runs while
   its predicted peak RSS (the measured ones, linear in N: the peer keeps every step's memory
   copy for its backward pass) fits --peer_memory_gb and the predicted call --max_call_s.
   Reported: the peer's median time and peak RSS, and deepgen's SAM time / peer time per size.
5. Plot (--plot, default scaling.png beside the JSON): time against N (measured, the
   extrapolated dense line dashed), memory against N, and temp bytes against T.

Targets: SAM at least 100x faster than the dense NTM (and DAM) at the largest size, against
the extrapolated dense time; per-step bytes of SAM flat in N; deepgen's SAM faster than the
peer at every size where both ran.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402
from benchmarks.sam_peer_runner import reset_peak_rss, status_bytes  # noqa: E402
from deepgen.sam import search  # noqa: E402
from deepgen.sam.interface import MemorySpec  # noqa: E402
from deepgen.sam.model import MemoryNetwork  # noqa: E402

WORD_SIZE, HEADS, K, HIDDEN, BITS = 32, 4, 4, 100, 8  # Supp. E / Supp. C
STEPS, BATCH, MEMORY_BATCH = 100, 8, 1  # Supp. E: batch 8 for speed, batch 1 for memory
SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 10_000)
DENSE_EXTRA = (2_000, 5_000, 20_000)
STEP_SWEEP = (10, 50, 100, 200)
QUICK_STEP_SWEEP = (10, 20)
# label -> (MemorySpec.kind, MemorySpec.search)
LABELS = {
    "ntm": ("ntm", "exact"),
    "dam": ("dam", "exact"),
    "sam_exact": ("sam", "exact"),
    "sam_blocked": ("sam", "blocked"),
    "sam_host": ("sam", "host"),
}
DEFAULT_LABELS = ("ntm", "dam", "sam_exact", "sam_host")
DENSE = ("ntm", "dam")
SPEEDUP_TARGET = 100.0
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "sam" / "scaling.json"
PEER_RUNNER = ROOT / "benchmarks" / "sam_peer_runner.py"
GIB = 2**30


# ---- the model and its compiled step ------------------------------------------------------


def network(label: str, num_words: int) -> MemoryNetwork:
    """The benchmark's MemoryNetwork for a memory label at N words."""
    kind, search_kind = LABELS[label]
    spec = MemorySpec(
        kind=kind,
        num_words=num_words,
        word_size=WORD_SIZE,
        num_heads=HEADS,
        num_reads=K,
        search=search_kind,
    )
    return MemoryNetwork(spec, hidden_size=HIDDEN, output_size=BITS)


_PARAMS: dict[str, Any] = {}


def parameters(label: str) -> Any:
    """The network's parameters (independent of N and of the search: built at 64 words, once)."""
    kind = LABELS[label][0]
    if kind not in _PARAMS:
        model = network("sam_exact" if kind == "sam" else label, 64)
        _PARAMS[kind] = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 2, BITS)))
    return _PARAMS[kind]


def bits(batch: int, steps: int) -> tuple[jax.Array, jax.Array]:
    """Random input and target bits, batch x steps x BITS (fixed seed)."""
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 2, (batch, steps, BITS)).astype(np.float32)
    targets = rng.integers(0, 2, (batch, steps, BITS)).astype(np.float32)
    return jnp.asarray(inputs), jnp.asarray(targets)


def loss_and_grad(model: MemoryNetwork, *, forward_only: bool = False) -> Callable:
    """jit(value_and_grad) of the mean sigmoid cross-entropy of the sequence's logits."""

    def loss(params: Any, inputs: jax.Array, targets: jax.Array) -> jax.Array:
        logits = model.apply(params, inputs)
        return jnp.mean(jnp.logaddexp(0.0, logits) - targets * logits)

    return jax.jit(loss if forward_only else jax.value_and_grad(loss))


def memory_stats(compiled: Any) -> dict:
    """The compiled executable's memory statistics in bytes (None where not reported)."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # a backend without memory statistics
        analysis = None
    names = ("temp", "argument", "output", "alias", "generated_code")
    stats: dict[str, int | None] = {}
    for name in names:
        value = getattr(analysis, f"{name}_size_in_bytes", None) if analysis else None
        stats[f"{name}_bytes"] = None if value is None else int(value)
    peak = getattr(analysis, "peak_memory_in_bytes", None) if analysis else None
    stats["peak_bytes"] = None if peak is None else int(peak)
    parts = [stats[f"{n}_bytes"] for n in ("temp", "argument", "output")]
    if all(p is not None for p in parts):
        stats["total_bytes"] = sum(parts) - (stats["alias_bytes"] or 0)
    else:
        stats["total_bytes"] = None
    return stats


def compile_step(
    label: str, num_words: int, batch: int, steps: int, *, forward_only: bool = False
) -> tuple[Any, tuple, dict]:
    """(compiled value_and_grad, its arguments, memory statistics with compile_s)."""
    params = parameters(label)
    inputs, targets = bits(batch, steps)
    started = time.perf_counter()
    step = loss_and_grad(network(label, num_words), forward_only=forward_only)
    compiled = step.lower(params, inputs, targets).compile()
    stats = memory_stats(compiled)
    stats["compile_s"] = time.perf_counter() - started
    if not forward_only:
        _STATS[(label, num_words, batch, steps)] = stats
    return compiled, (params, inputs, targets), stats


_STATS: dict[tuple[str, int, int, int], dict] = {}  # memory statistics of compiled steps


def memory_copies(compiled: Any, batch: int, num_words: int) -> dict | None:
    """Copies of a whole batch of memories (f32[B, N, M]) in the optimised HLO.

    Counted in the entry computation (once per call) and in the others (while-loop bodies: once
    per step); a copy per step makes a step cost O(N M) whatever the search.
    """
    try:
        text = compiled.as_text()
    except Exception:  # a backend without HLO text
        return None
    shape = f"[{batch},{num_words},{WORD_SIZE}]"
    counts = {"entry": 0, "loop_bodies": 0}
    where = "entry"
    for line in text.splitlines():
        if line and not line.startswith(" "):
            where = "entry" if line.startswith("ENTRY") else "loop_bodies"
        elif f"{shape}" in line.split("=", 1)[-1].split("copy(")[0] and " copy(" in line:
            counts[where] += 1
    return counts


# ---- host memory ----------------------------------------------------------------------------


def release_forks() -> None:
    """Free the host indices the last calls forked, keeping the shared base indices."""
    forks = [h for h in search.live_handles() if search.host_index(h).digest is None]
    if forks:
        search.release(np.array([[h, 0] for h in forks], np.int32))


# ---- timing ---------------------------------------------------------------------------------


def time_step(compiled: Any, args: tuple, *, host: bool, repeats: int, budget_s: float) -> dict:
    """Warm-up call, then up to `repeats` timed calls within budget_s (at least one)."""

    def call() -> float:
        started = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        elapsed = time.perf_counter() - started
        if host:
            release_forks()
        return elapsed

    first = call()
    count = max(1, min(repeats, int(budget_s // max(first, 1e-9))))
    times = [call() for _ in range(count)]
    return {"first_s": first, "times_s": times, "median_s": statistics.median(times)}


def measure(
    label: str,
    num_words: int,
    *,
    batch: int,
    steps: int,
    repeats: int,
    budget_s: float,
    max_call_s: float,
    memory_budget: float,
    previous: tuple[int, float] | None,
    forward: bool,
) -> dict:
    """Compile at batch `batch`; time it unless predicted too slow or too big."""
    rss_before = status_bytes("VmRSS")
    reset = reset_peak_rss() if jax.default_backend() == "cpu" else False
    compiled, args, stats = compile_step(label, num_words, batch, steps)
    row: dict = {"label": label, "N": num_words, "batch": batch, "steps": steps}
    row["compiled"] = stats
    row["load_average"] = _common.load_average()
    predicted = None if previous is None else previous[1] * num_words / previous[0]
    row["predicted_s"] = predicted
    if predicted is not None and predicted > max_call_s:
        row["skipped"] = (
            f"predicted {predicted:.0f} s per call (the last measured, {previous[1]:.2f} s at "
            f"N = {previous[0]:,}, times N ratio) > --max_call_s {max_call_s:.0f}"
        )
        return row
    if stats["total_bytes"] is not None and stats["total_bytes"] > memory_budget:
        row["skipped"] = (
            f"compiled footprint {stats['total_bytes'] / GIB:.1f} GiB > memory budget "
            f"{memory_budget / GIB:.1f} GiB"
        )
        return row
    host = label == "sam_host"
    row.update(time_step(compiled, args, host=host, repeats=repeats, budget_s=budget_s))
    if reset and rss_before is not None:
        peak = status_bytes("VmHWM")
        row["peak_rss_growth_bytes"] = None if peak is None else max(0, peak - rss_before)
        row["rss_before_bytes"] = rss_before
    row["memory_copies"] = memory_copies(compiled, batch, num_words)
    del compiled
    if forward and label.startswith("sam"):  # where a SAM step's time goes
        compiled, args, _ = compile_step(label, num_words, batch, steps, forward_only=True)
        timing = time_step(
            compiled, args, host=host, repeats=min(3, repeats), budget_s=budget_s / 2
        )
        row["forward_median_s"] = timing["median_s"]
        row["forward_memory_copies"] = memory_copies(compiled, batch, num_words)
        del compiled
    if host:
        search.release_all()
    return row


# ---- memory per step ------------------------------------------------------------------------


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y = a + b x."""
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)


def step_sweep(label: str, num_words: int, steps_list: Sequence[int], batch: int) -> dict:
    """Compiled temp bytes against T at N words; the fit temp = a + b T."""
    temps = []
    for steps in steps_list:
        stats = _STATS.get((label, num_words, batch, steps))
        if stats is None:
            _, _, stats = compile_step(label, num_words, batch, steps)
        temps.append(stats["temp_bytes"])
    row: dict = {"label": label, "N": num_words, "batch": batch, "T": list(steps_list)}
    row["temp_bytes"] = temps
    if all(t is not None for t in temps) and len(temps) >= 2:
        a, b = fit_line(steps_list, temps)
        row["fit_intercept_bytes"], row["bytes_per_step"] = a, b
        # Per example: the bytes of one step over its reads, its touched rows, its memory.
        row["per_step_over_KM4"] = b / (batch * K * WORD_SIZE * 4)
        row["per_step_over_touched_rows"] = b / (batch * (HEADS * K + 1) * WORD_SIZE * 4)
        row["per_step_over_NM4"] = b / (batch * num_words * WORD_SIZE * 4)
    print(f"step sweep {label} N={num_words:,}: {row}", flush=True)
    return row


def residual_check(label: str, num_words: int, steps: int) -> dict | None:
    """What jax saves for the backward pass at batch 1: total bytes, any N-sized residual."""
    try:
        from jax._src.ad_checkpoint import saved_residuals
    except ImportError:  # a JAX without it
        return None
    model = network(label, num_words)
    params = parameters(label)
    inputs, targets = bits(1, steps)

    def loss(params: Any) -> jax.Array:
        logits = model.apply(params, inputs)
        return jnp.mean(jnp.logaddexp(0.0, logits) - targets * logits)

    try:
        residuals = saved_residuals(loss, params)
    except Exception as error:  # a private function: its signature may change
        return {"label": label, "N": num_words, "error": repr(error)}
    avals = [aval for aval, _ in residuals]
    sizes = [int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in avals]
    with_n = [a for a in avals if num_words in a.shape]
    largest = sorted(zip(sizes, avals, strict=True), key=lambda p: -p[0])[:3]
    return {
        "label": label,
        "N": num_words,
        "T": steps,
        "count": len(avals),
        "total_bytes": int(sum(sizes)),
        "largest": [f"{a.dtype}{list(a.shape)}" for _, a in largest],
        "with_N_axis": [f"{a.dtype}{list(a.shape)}" for a in with_n],
        "with_N_axis_bytes": int(
            sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in with_n)
        ),
    }


# ---- the peer -------------------------------------------------------------------------------


def run_peer(args: argparse.Namespace, num_words: int, batch: int, steps: int) -> dict:
    """benchmarks/sam_peer_runner.py at N words in the peer's interpreter; its JSON line."""
    command = [
        args.peer_python,
        str(PEER_RUNNER),
        f"--words={num_words}",
        f"--batch={batch}",
        f"--steps={steps}",
        f"--threads={args.peer_threads}",
        f"--repeats={args.repeats}",
        f"--max_seconds={args.time_budget}",
    ]
    if args.peer_dnc_path:
        command.append(f"--dnc_path={args.peer_dnc_path}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    row: dict = {"N": num_words, "command": " ".join(command), "load_average": None}
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=args.peer_timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        row["skipped"] = f"the peer process ran past --peer_timeout {args.peer_timeout} s"
        return row
    row["wall_s"] = time.perf_counter() - started
    row["load_average"] = _common.load_average()
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        row["skipped"] = f"the peer failed (exit {done.returncode}): " + " / ".join(tail)
        return row
    row.update(json.loads(lines[-1]))
    return row


def peer_prediction(measured: list[dict], num_words: int) -> tuple[float | None, float | None]:
    """Predicted (peak RSS bytes, seconds per call) at N from the measured peer sizes."""
    if not measured:
        return None, None
    last = measured[-1]
    seconds = last["median_s"] * num_words / last["N"]
    if len(measured) >= 2:  # linear in N through the last two sizes
        before = measured[-2]
        slope = (last["peak_rss_bytes"] - before["peak_rss_bytes"]) / (last["N"] - before["N"])
        rss = last["peak_rss_bytes"] + slope * (num_words - last["N"])
    else:
        rss = last["peak_rss_bytes"] * num_words / last["N"]
    return rss, seconds


# ---- summary --------------------------------------------------------------------------------


def dense_fit(rows: list[dict], label: str, fit_from: int) -> dict | None:
    """Fits of the measured dense times: time = c N (the one used) and time = c N^e."""
    points = [(r["N"], r["median_s"]) for r in rows if r["label"] == label and "median_s" in r]
    used = [p for p in points if p[0] >= fit_from]
    if len(used) < 2:
        used = points
    if not used:
        return None
    log_n = np.log([p[0] for p in used])
    log_t = np.log([p[1] for p in used])
    log_c1 = float(np.mean(log_t - log_n))  # least squares with the slope fixed at 1
    fit = {"label": label, "points": used, "proportional_c": math.exp(log_c1)}
    fit["free_exponent"], fit["free_c"] = None, None
    if len(used) >= 2:
        exponent, log_c = np.polyfit(log_n, log_t, 1)
        fit["free_exponent"], fit["free_c"] = float(exponent), math.exp(float(log_c))
    return fit


def time_at(rows: list[dict], fits: dict, label: str, num_words: int) -> tuple[float | None, str]:
    """(seconds, 'measured' | 'extrapolated' | 'none') of a memory at N."""
    for r in rows:
        if r["label"] == label and r["N"] == num_words and "median_s" in r:
            return r["median_s"], "measured"
    fit = fits.get(label)
    if fit is not None and label in DENSE and num_words > max(p[0] for p in fit["points"]):
        return fit["proportional_c"] * num_words, "extrapolated"
    return None, "none"


def summarise(report: dict, sizes: list[int], labels: list[str], fit_from: int) -> dict:
    """Fits, extrapolations, ratios and target verdicts (into report['summary'])."""
    rows = report["timed"]
    fits = {label: dense_fit(rows, label, fit_from) for label in labels if label in DENSE}
    fits = {k: v for k, v in fits.items() if v is not None}
    table = []
    for n in sizes:
        entry: dict = {"N": n}
        for label in labels:
            seconds, source = time_at(rows, fits, label, n)
            entry[label] = {"s": seconds, "source": source}
        peer = next((p for p in report["peer"] if p.get("N") == n and "median_s" in p), None)
        entry["peer"] = {"s": peer["median_s"] if peer else None}
        for sam in (x for x in labels if x.startswith("sam")):
            sam_s = entry[sam]["s"]
            for dense in (x for x in labels if x in DENSE):
                dense_s = entry[dense]["s"]
                if sam_s and dense_s:
                    entry[f"{dense}_over_{sam}"] = dense_s / sam_s
            if sam_s and peer:
                entry[f"{sam}_over_peer"] = sam_s / peer["median_s"]
        table.append(entry)
    summary: dict = {"fits": fits, "table": table}
    largest = table[-1]
    speedups = {
        key: value for key, value in largest.items() if "_over_sam" in key and value is not None
    }
    sams = [x for x in labels if x.startswith("sam") and largest[x]["s"]]
    best_sam = min(sams, key=lambda x: largest[x]["s"]) if sams else None
    summary["speed_target"] = {
        "N": largest["N"],
        "best_sam": best_sam,
        "dense_sources": {d: largest[d]["source"] for d in labels if d in DENSE},
        "speedups": speedups,
        "met": {
            d: (largest.get(f"{d}_over_{best_sam}") or 0) >= SPEEDUP_TARGET
            for d in labels
            if d in DENSE and best_sam
        },
    }
    compared = [e for e in table if e["peer"]["s"]]
    summary["peer_target"] = {
        "sizes": [e["N"] for e in compared],
        "faster_at_every_size": {
            sam: all((e.get(f"{sam}_over_peer") or math.inf) < 1 for e in compared)
            for sam in labels
            if sam.startswith("sam")
        },
        "best_sam_faster_at_every_size": bool(compared)
        and all(
            min(e.get(f"{s}_over_peer") or math.inf for s in labels if s.startswith("sam")) < 1
            for e in compared
        ),
        "at_1e5": next(
            (
                {k: v for k, v in e.items() if k.endswith("_over_peer")}
                | {"peer_s": e["peer"]["s"]}
                for e in compared
                if e["N"] == 100_000
            ),
            None,
        ),
    }
    sweeps = {(s["label"], s["N"]): s for s in report["step_sweep"]}
    sam_sweeps = [s for (label, _), s in sweeps.items() if label == "sam_exact"]
    if len(sam_sweeps) >= 2 and all("bytes_per_step" in s for s in sam_sweeps):
        low, high = sorted(sam_sweeps, key=lambda s: s["N"])[:: len(sam_sweeps) - 1]
        summary["memory_target"] = {
            "sam_per_step_bytes": [[s["N"], s["bytes_per_step"]] for s in sam_sweeps],
            "growth_over_N_growth": (high["bytes_per_step"] / low["bytes_per_step"])
            / (high["N"] / low["N"]),
            "met": high["bytes_per_step"] < 2 * low["bytes_per_step"],
        }
    return summary


# ---- report ---------------------------------------------------------------------------------


def _seconds(value: float | None, source: str = "measured") -> str:
    if value is None:
        return "-"
    text = f"{value * 1e3:.0f} ms" if value < 1 else f"{value:.2f} s"
    return f"~{text} (extrap.)" if source == "extrapolated" else text


def _bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def markdown_report(report: dict, labels: list[str]) -> str:
    """The markdown block: time table, memory table, per-step bytes, targets."""
    summary = report["summary"]
    settings = report["settings"]
    lines = [
        f"{report['date']}, {report['machine']}, jax {report['jax']}, load "
        f"{report['load_average_start']} -> {report['load_average_end']}: `{report['command']}`",
        "",
        f"One forward and backward pass of T = {settings['steps']} steps, batch "
        f"{settings['batch']} (memory: batch {settings['memory_batch']}), LSTM {HIDDEN}, "
        f"M = {WORD_SIZE}, R = {HEADS}, K = {K}; medians; extrapolated dense times: "
        "time proportional to N, least squares in log-log over the measured sizes >= "
        f"{settings['fit_from']:,}.",
        "",
    ]
    ratios = [
        (f"{d}_over_{s}", f"{d.upper()} / {s}")
        for s in labels
        if s.startswith("sam")
        for d in labels
        if d in DENSE
    ]
    peers = [(f"{s}_over_peer", f"{s} / peer") for s in labels if s.startswith("sam")]
    header = ["N", *labels, "peer", *(t for _, t in ratios), *(t for _, t in peers)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in summary["table"]:
        cells = [f"{e['N']:,}"]
        cells += [_seconds(e[x]["s"], e[x]["source"]) for x in labels]
        cells.append(_seconds(e["peer"]["s"]))
        for key, _ in ratios + peers:
            value = e.get(key)
            extrap = any(e[d]["source"] == "extrapolated" for d in DENSE if d in key and d in e)
            cells.append("-" if value is None else f"{'~' if extrap else ''}{value:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    for label, fit in summary["fits"].items():
        lines.append(
            f"\n{label} fit over N = {', '.join(f'{p[0]:,}' for p in fit['points'])}: time = "
            f"{fit['proportional_c']:.3g} s x N (used); free exponent "
            + ("-" if fit["free_exponent"] is None else f"{fit['free_exponent']:.2f}")
        )
    split = [r for r in report["timed"] if "forward_median_s" in r]
    if split:
        lines += [
            "",
            "Where SAM's time goes: forward alone against forward + backward, and the copies of "
            "the whole memory batch (f32[B, N, M]) in the optimised HLO: in the entry computation "
            "(once per call) / in loop bodies (once per step).",
            "",
            "| memory | N | forward | forward + backward | backward share | copies, fwd + bwd "
            "| copies, fwd |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in split:
            copies = r.get("memory_copies") or {}
            forward_copies = r.get("forward_memory_copies") or {}
            lines.append(
                f"| {r['label']} | {r['N']:,} | {_seconds(r['forward_median_s'])} | "
                f"{_seconds(r['median_s'])} | {1 - r['forward_median_s'] / r['median_s']:.0%} | "
                f"{copies.get('entry', '-')} / {copies.get('loop_bodies', '-')} | "
                f"{forward_copies.get('entry', '-')} / {forward_copies.get('loop_bodies', '-')} |"
            )
    skipped = [
        f"{r['label']} at N = {r['N']:,}: {r['skipped']}" for r in report["timed"] if "skipped" in r
    ]
    skipped += [f"peer at N = {p['N']:,}: {p['skipped']}" for p in report["peer"] if "skipped" in p]
    if report.get("peer_not_run"):
        skipped.append(f"peer: {report['peer_not_run']}")
    if skipped:
        lines += ["", "Not run:", *(f"- {s}" for s in skipped)]

    # Memory against N.
    lines += [
        "",
        f"Memory: compiled temp bytes at batch {settings['memory_batch']} (the compiler's "
        f"figure, also where not run); peak RSS growth over the timed batch-{settings['batch']} "
        "configuration (0 B: it fitted in memory the process already held; peer: its process's "
        "peak RSS over the timed calls).",
        "",
    ]
    header = ["N", *(f"{x} temp" for x in labels), *(f"{x} RSS" for x in labels), "peer RSS"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    memory = {(r["label"], r["N"]): r for r in report["memory"]}
    timed = {(r["label"], r["N"]): r for r in report["timed"]}
    for n in sorted({r["N"] for r in report["memory"]}):
        cells = [f"{n:,}"]
        cells += [
            _bytes(memory.get((x, n), {}).get("compiled", {}).get("temp_bytes")) for x in labels
        ]
        cells += [_bytes(timed.get((x, n), {}).get("peak_rss_growth_bytes")) for x in labels]
        peer = next((p for p in report["peer"] if p.get("N") == n), {})
        cells.append(_bytes(peer.get("peak_rss_bytes")))
        lines.append("| " + " | ".join(cells) + " |")

    # Memory per step.
    lines += [
        "",
        f"Compiled temp bytes against T (batch B = {settings['memory_batch']}); fit temp = a + "
        "b T.",
        "",
        "| memory | N | "
        + " | ".join(f"T = {t}" for t in settings["step_sweep"])
        + " | b per step | b / (B K M 4) | b / (B (R K + 1) M 4) | b / (B N M 4) |",
        "|" + "---|" * (len(settings["step_sweep"]) + 6),
    ]
    for s in report["step_sweep"]:
        cells = [s["label"], f"{s['N']:,}", *(_bytes(t) for t in s["temp_bytes"])]
        if "bytes_per_step" in s:
            cells += [
                _bytes(s["bytes_per_step"]),
                f"{s['per_step_over_KM4']:.3g}",
                f"{s['per_step_over_touched_rows']:.3g}",
                f"{s['per_step_over_NM4']:.3g}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    for r in report["residuals"]:
        if r and "total_bytes" in r:
            lines.append(
                f"\nresiduals saved for the backward pass, {r['label']} N = {r['N']:,}, "
                f"T = {r['T']}, batch 1: {r['count']} arrays, {_bytes(r['total_bytes'])}; "
                f"largest {', '.join(r['largest'])}; with an axis of N words: "
                f"{len(r['with_N_axis'])} ({_bytes(r['with_N_axis_bytes'])})"
            )

    # Targets.
    speed = summary["speed_target"]
    lines.append("")
    for dense, met in speed["met"].items():
        value = speed["speedups"].get(f"{dense}_over_{speed['best_sam']}")
        lines.append(
            f"target: {speed['best_sam']} >= {SPEEDUP_TARGET:.0f}x faster than {dense} at "
            f"N = {speed['N']:,} ({speed['dense_sources'][dense]} {dense} time): "
            f"{'no ratio' if value is None else f'{value:.0f}x'}: {'met' if met else 'NOT met'}"
        )
    peer = summary["peer_target"]
    if peer["sizes"]:
        lines.append(
            f"target: deepgen's SAM faster than the peer at every size both ran "
            f"({', '.join(f'{n:,}' for n in peer['sizes'])}): "
            + ", ".join(
                f"{s} {'yes' if v else 'no'}" for s, v in peer["faster_at_every_size"].items()
            )
            + "; the faster search: "
            + ("met" if peer["best_sam_faster_at_every_size"] else "NOT met")
        )
        if peer["at_1e5"]:
            lines.append(
                "ratio at N = 100,000 (deepgen / peer): "
                + ", ".join(
                    f"{k.removesuffix('_over_peer')} {v:.3g}"
                    for k, v in peer["at_1e5"].items()
                    if k != "peer_s"
                )
            )
    if "memory_target" in summary:
        m = summary["memory_target"]
        lines.append(
            "target: SAM's bytes per step flat in N: "
            + ", ".join(f"N = {n:,}: {_bytes(b)}" for n, b in m["sam_per_step_bytes"])
            + f": {'met' if m['met'] else 'NOT met'}"
        )
    return "\n".join(lines)


def plot(report: dict, labels: list[str], path: Path) -> str | None:
    """Time and memory against N, temp bytes against T (log-log); the PNG's path."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    summary = report["summary"]
    figure = Figure(figsize=(17, 5), dpi=100)
    FigureCanvasAgg(figure)
    time_axes, memory_axes, step_axes = figure.subplots(1, 3)
    colours = {"ntm": "C3", "dam": "C1", "sam_exact": "C0", "sam_blocked": "C4", "sam_host": "C2"}
    for label in labels:
        points = sorted(
            (r["N"], r["median_s"])
            for r in report["timed"]
            if r["label"] == label and "median_s" in r
        )
        if points:
            xs, ys = zip(*points, strict=True)
            time_axes.plot(xs, ys, "o-", color=colours[label], label=f"{label} (measured)")
        fit = summary["fits"].get(label)
        if fit and points:
            top = max(e["N"] for e in summary["table"])
            xs = np.geomspace(points[-1][0], top, 20)
            time_axes.plot(
                xs,
                fit["proportional_c"] * xs,
                "--",
                color=colours[label],
                label=f"{label} extrapolated (time ~ N)",
            )
    peer = sorted((p["N"], p["median_s"]) for p in report["peer"] if "median_s" in p)
    if peer:
        xs, ys = zip(*peer, strict=True)
        time_axes.plot(xs, ys, "s-", color="k", label="peer: PyPI dnc SAM (torch)")
    time_axes.set(
        xscale="log",
        yscale="log",
        xlabel="words N",
        ylabel="seconds per forward + backward",
        title=f"T = {report['settings']['steps']}, batch {report['settings']['batch']}",
    )
    for label in labels:
        points = sorted(
            (r["N"], r["compiled"]["temp_bytes"])
            for r in report["memory"]
            if r["label"] == label and r["compiled"]["temp_bytes"]
        )
        if points:
            xs, ys = zip(*points, strict=True)
            memory_axes.plot(
                xs, ys, "o-", color=colours[label], label=f"{label} compiled temp (every N)"
            )
        rss = sorted(
            (r["N"], r["peak_rss_growth_bytes"])
            for r in report["timed"]
            if r["label"] == label and r.get("peak_rss_growth_bytes")
        )
        if rss:
            xs, ys = zip(*rss, strict=True)
            memory_axes.plot(xs, ys, "x:", color=colours[label], label=f"{label} peak RSS growth")
    peer_rss = sorted((p["N"], p["peak_rss_bytes"]) for p in report["peer"] if "median_s" in p)
    if peer_rss:
        xs, ys = zip(*peer_rss, strict=True)
        memory_axes.plot(xs, ys, "s:", color="k", label="peer peak RSS")
    memory_axes.set(
        xscale="log",
        yscale="log",
        xlabel="words N",
        ylabel="bytes",
        title=f"temp: batch {report['settings']['memory_batch']}; "
        f"RSS: batch {report['settings']['batch']}",
    )
    for s in report["step_sweep"]:
        step_axes.plot(
            s["T"],
            s["temp_bytes"],
            "o-",
            color=colours[s["label"]],
            alpha=1.0 if s["N"] == max(x["N"] for x in report["step_sweep"]) else 0.5,
            label=f"{s['label']} N = {s['N']:,}: {_bytes(s.get('bytes_per_step'))} / step",
        )
    step_axes.set(
        xscale="log",
        yscale="log",
        xlabel="steps T",
        ylabel="compiled temp bytes",
        title=f"batch {report['settings']['memory_batch']}",
    )
    for axes in (time_axes, memory_axes, step_axes):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7)
    figure.suptitle("Rae et al. 2016 Fig. 1 set-up: deepgen dense memories, SAM and the peer")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return str(path)


# ---- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="comma-separated N (1e3,1e4,1e5,1e6)")
    parser.add_argument("--dense_extra", default=None, help="extra N for ntm/dam (2e3,5e3,2e4)")
    parser.add_argument("--labels", default=",".join(DEFAULT_LABELS), help=f"of {list(LABELS)}")
    parser.add_argument("--batch", type=int, default=None, help=f"for time ({BATCH})")
    parser.add_argument("--memory_batch", type=int, default=None, help=f"({MEMORY_BATCH})")
    parser.add_argument("--steps", type=int, default=None, help=f"T ({STEPS})")
    parser.add_argument("--step_sweep", default=None, help="T of the memory-per-step fit")
    parser.add_argument("--sweep_sizes", default=None, help="N of SAM's sweep (1e4,1e5)")
    parser.add_argument("--dense_sweep_sizes", default=None, help="N of NTM's sweep (1e3,1e4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls, at most (5)")
    parser.add_argument("--time_budget", type=float, default=60.0, help="timed s per config")
    parser.add_argument("--max_call_s", type=float, default=60.0, help="predicted s per call")
    parser.add_argument("--memory_budget_gb", type=float, default=10.0, help="compiled GiB")
    parser.add_argument("--fit_from", type=int, default=2_000, help="dense fit from this N")
    parser.add_argument("--peer_python", default=None, help="interpreter with torch + faiss")
    parser.add_argument("--peer_dnc_path", default=None, help="folder holding dnc 2.0.0b1")
    parser.add_argument("--peer_sizes", default=None, help="N for the peer (--sizes)")
    parser.add_argument("--peer_threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--peer_memory_gb", type=float, default=14.0, help="predicted peak RSS")
    parser.add_argument("--peer_timeout", type=float, default=900.0)
    parser.add_argument(
        "--no_forward",
        dest="forward",
        action="store_const",
        const=False,
        default=None,
        help="skip timing SAM's forward pass alone (skipped with --quick)",
    )
    parser.add_argument("--plot", default=None, help="PNG path (scaling.png beside --out)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    _common.compile_quickly(args.quick)
    quick = args.quick
    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    unknown = [x for x in labels if x not in LABELS]
    if unknown:
        parser.error(f"unknown labels {unknown}; known: {list(LABELS)}")
    sizes = sorted(_common.parse_sizes(args.sizes) or (QUICK_SIZES if quick else SIZES))
    extra = _common.parse_sizes(args.dense_extra)
    extra = sorted(extra if extra is not None else (() if quick else DENSE_EXTRA))
    batch = args.batch or (1 if quick else BATCH)
    memory_batch = args.memory_batch or MEMORY_BATCH
    steps = args.steps or (20 if quick else STEPS)
    steps_list = _common.parse_sizes(args.step_sweep) or list(
        QUICK_STEP_SWEEP if quick else STEP_SWEEP
    )
    sweep_sizes = _common.parse_sizes(args.sweep_sizes) or (
        [10_000] if quick else [10_000, 100_000]
    )
    dense_sweep_sizes = _common.parse_sizes(args.dense_sweep_sizes) or (
        [1_000] if quick else [1_000, 10_000]
    )
    repeats = args.repeats or (2 if quick else 5)
    args.forward = not quick if args.forward is None else args.forward
    args.repeats = repeats
    peer_sizes = _common.parse_sizes(args.peer_sizes) or (sizes[:1] if quick else sizes)
    out = _common.output_path(
        args.out, quick=quick, default=DEFAULT_OUT, quick_name="sam_scaling.json"
    )
    plot_path = (
        Path(args.plot)
        if args.plot
        else out.with_name("scaling.png" if out == DEFAULT_OUT else out.stem + ".png")
    )
    report = _common.report_header("benchmarks/sam_scaling.py", argv, quick=quick)
    available = _common.available_bytes()
    memory_budget = args.memory_budget_gb * GIB
    if available is not None:
        memory_budget = min(memory_budget, 0.8 * available)
    report["settings"] = {
        "sizes": sizes,
        "dense_extra": extra,
        "labels": labels,
        "batch": batch,
        "memory_batch": memory_batch,
        "steps": steps,
        "step_sweep": steps_list,
        "sweep_sizes": sweep_sizes,
        "dense_sweep_sizes": dense_sweep_sizes,
        "word_size": WORD_SIZE,
        "heads": HEADS,
        "K": K,
        "hidden": HIDDEN,
        "bits": BITS,
        "repeats": repeats,
        "time_budget_s": args.time_budget,
        "max_call_s": args.max_call_s,
        "memory_budget_bytes": memory_budget,
        "fit_from": args.fit_from,
        "host": vars(search.host_config()),
        "peer_python": args.peer_python,
        "peer_dnc_path": args.peer_dnc_path,
        "peer_sizes": peer_sizes,
        "peer_threads": args.peer_threads,
        "peer_memory_budget_bytes": args.peer_memory_gb * GIB,
        "xla_threads": os.cpu_count(),
    }
    report["timed"], report["memory"], report["peer"] = [], [], []
    report["step_sweep"], report["residuals"], report["load_averages"] = [], [], []
    peer_ok = bool(args.peer_python) and Path(args.peer_python).exists()
    if not peer_ok:
        report["peer_not_run"] = (
            "no --peer_python given"
            if not args.peer_python
            else f"--peer_python {args.peer_python} does not exist"
        )
    for label in labels:  # JAX's start-up and the parameters, before any RSS is measured
        parameters(label)
    last_time: dict[str, tuple[int, float]] = {}
    for n in sorted(set(sizes) | set(extra)):
        run_labels = labels if n in sizes else [x for x in labels if x in DENSE]
        for label in run_labels:
            if memory_batch != batch:
                _, _, stats = compile_step(label, n, memory_batch, steps)
                report["memory"].append({"label": label, "N": n, "compiled": stats})
            row = measure(
                label,
                n,
                batch=batch,
                steps=steps,
                repeats=repeats,
                budget_s=args.time_budget,
                max_call_s=args.max_call_s,
                memory_budget=memory_budget,
                previous=last_time.get(label),
                forward=args.forward,
            )
            if memory_batch == batch:
                report["memory"].append({"label": label, "N": n, "compiled": row["compiled"]})
            if "median_s" in row:
                last_time[label] = (n, row["median_s"])
            report["timed"].append(row)
            report["load_averages"].append(row["load_average"])
            print(
                f"{label} N={n:,}: "
                + (
                    f"{row['median_s']:.3f} s (of {len(row['times_s'])})"
                    if "median_s" in row
                    else f"skipped: {row['skipped']}"
                )
                + f", temp {_bytes(row['compiled']['temp_bytes'])}, load {row['load_average']}",
                flush=True,
            )
        if peer_ok and n in peer_sizes:
            measured = [p for p in report["peer"] if "median_s" in p]
            rss, seconds = peer_prediction(measured, n)
            limit = args.peer_memory_gb * GIB
            available = _common.available_bytes()
            if available is not None:
                limit = min(limit, 0.85 * available)
            if rss is not None and rss > limit:
                report["peer"].append(
                    {
                        "N": n,
                        "skipped": f"predicted peak RSS {rss / GIB:.1f} GiB (linear in N from the "
                        f"measured sizes: the peer keeps every step's copy of the memory for its "
                        f"backward pass) > {limit / GIB:.1f} GiB",
                        "predicted_peak_rss_bytes": rss,
                        "predicted_s": seconds,
                    }
                )
            elif seconds is not None and seconds > args.max_call_s:
                report["peer"].append(
                    {
                        "N": n,
                        "skipped": f"predicted {seconds:.0f} s per call > --max_call_s",
                        "predicted_s": seconds,
                    }
                )
            else:
                report["peer"].append(run_peer(args, n, batch, steps))
            p = report["peer"][-1]
            print(
                f"peer N={n:,}: "
                + (f"{p['median_s']:.3f} s" if "median_s" in p else f"skipped: {p['skipped']}"),
                flush=True,
            )

    # Memory per step (batch memory_batch): SAM exact and the dense NTM.
    for label, sweep in (("sam_exact", sweep_sizes), ("ntm", dense_sweep_sizes)):
        for n in sweep:
            report["step_sweep"].append(step_sweep(label, n, steps_list, memory_batch))
    report["residuals"] = [
        residual_check("sam_exact", max(sweep_sizes), steps),
        residual_check("ntm", min(dense_sweep_sizes), steps),
    ]
    report["load_average_end"] = _common.load_average()
    report["peak_memory"] = _common.peak_memory()
    report["summary"] = summarise(report, sizes, labels, args.fit_from)
    report["plot"] = plot(report, labels, plot_path)
    return _common.write_report(out, report, markdown_report(report, labels))


if __name__ == "__main__":
    main()
