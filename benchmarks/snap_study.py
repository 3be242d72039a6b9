"""SnAp study: online truncated BPTT, UORO, SnAp-1, SnAp-2 and RTRL at an equal token budget.

Menick et al. 2021 (arXiv 2006.07232) claim (a) SnAp-1 is far better than UORO at similar cost
and (b) on highly sparse networks online SnAp-2 learns at least as fast as BPTT. This script
trains every (task, cell, density, estimator) combination of a small grid with the same online
loop as experiments.main (experiments/snap/train.py), then writes under --out:

  results.jsonl   one record per run (final metric, mean training loss, wall time, curve)
  table.md        the results table and which claims held at this scale
  curves.png      loss against tokens, one panel per task x cell x density

Usage (one core; about 16 CPU minutes per seed for the whole grid at the defaults below):
  taskset -c 0 nice -n 5 .venv/bin/python benchmarks/snap_study.py --out runs/snap_study \
      --copy-tokens 196608 --charlm-tokens 131072 --seeds 0,1,2
A run already in results.jsonl is skipped, so an interrupted study continues where it stopped.
The grid splits over cores with --tasks/--cells/--densities (one process per core, each with
its own --out); concatenate their results.jsonl files into one folder and render the table and
curves with the same token flags plus --report-only. Table cells are mean ± standard error over
--seeds; the claims are judged on paired differences over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

from configs import snap as snap_configs
from deepgen.snap.online import chunk_metrics
from experiments.snap import method as snap_method

TASKS = ("copy", "charlm")
CELLS = ("gru", "lstm")
DENSITIES = (1.0, 0.25, 0.1)
ESTIMATORS = ("tbptt", "uoro", "snap1", "snap2", "rtrl")


def run_key(task: str, cell: str, density: float, estimator: str, seed: int) -> str:
    """A run's name in results.jsonl."""
    return f"{task}/{cell}/d{density:g}/{estimator}/s{seed}"


def make_config(
    args: argparse.Namespace, task: str, cell: str, density: float, estimator: str, seed: int
):
    """The config of one run: the CPU variant with the study's sizes and seed (init, mask, data)."""
    config = snap_configs.get_config(f"{task}_{cell}_cpu")
    config.unlock()
    config.seed = seed
    config.model.hidden_size = args.hidden
    config.model.density = density
    config.estimator.name = estimator
    config.estimator.truncation = args.truncation
    config.train.batch_size = args.streams
    config.train.chunk_steps = args.chunk
    tokens = args.copy_tokens if task == "copy" else args.charlm_tokens
    steps = tokens // args.streams
    config.train.num_steps = max(args.chunk, steps // args.chunk * args.chunk)
    config.opt.lr = args.lr
    config.data.seq_len = 128
    config.eval.num_crops = args.eval_crops
    config.eval.batch_size = args.eval_crops
    config.lock()
    return config


def affordable(args: argparse.Namespace, cell: str, estimator: str, density: float) -> bool:
    """Exact RTRL (dense influence, cost independent of density) only for the GRU at
    --rtrl-density; SnAp-2 only on sparse nets (on a dense net its pattern is full: it is RTRL)."""
    if estimator == "rtrl":
        return cell == "gru" and density == args.rtrl_density
    if estimator == "snap2":
        return density < 1.0
    return True


# Estimators whose compiled chunk has the same shapes at every density (masks are arguments):
# one compilation serves all densities of a (task, cell).
SHAPE_FREE = ("tbptt", "uoro", "rtrl")
_CHUNK_CACHE: dict[tuple, object] = {}


def train_one(args, task, cell, density, estimator, seed) -> dict:
    """Train one configuration in this process; returns its record."""
    config = make_config(args, task, cell, density, estimator, seed)
    snap_method.validate(config)
    experiment = snap_method.SnAp(config)
    chunk = int(config.train.chunk_steps)
    cache_key = (task, cell, estimator)
    if estimator in SHAPE_FREE and cache_key in _CHUNK_CACHE:
        chunk_fn = _CHUNK_CACHE[cache_key]
    else:
        chunk_fn = experiment.chunk_fn(chunk)
        _CHUNK_CACHE[cache_key] = chunk_fn
    started = time.perf_counter()
    started_cpu = time.process_time()
    carry = experiment.init_carry()
    curve = []
    compile_s = None
    num_chunks = int(config.train.num_steps) // chunk
    for index in range(num_chunks):
        carry, sums = chunk_fn(
            carry, experiment.masks, experiment.data_tokens, experiment.step_rng_data
        )
        values = {k: float(v) for k, v in jax.device_get(sums).items()}
        if compile_s is None:
            compile_s = time.process_time() - started_cpu
        logged = chunk_metrics(values)
        tokens = (index + 1) * chunk * experiment.model.batch
        curve.append((tokens, logged["bits_per_char"], logged.get("curriculum_length", 0.0)))
        if not math.isfinite(logged["bits_per_char"]):
            break
    wall_s = time.perf_counter() - started
    cpu_s = time.process_time() - started_cpu
    record = {
        "key": run_key(task, cell, density, estimator, seed),
        "seed": seed,
        "task": task,
        "cell": cell,
        "density": density,
        "estimator": estimator,
        "hidden": args.hidden,
        "streams": args.streams,
        "tokens": curve[-1][0],
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "compile_s": compile_s,
        "mean_train_bits": float(np.mean([c[1] for c in curve])),
        "final_train_bits": float(np.mean([c[1] for c in curve[-max(1, len(curve) // 10) :]])),
        "curve": curve,
        "finite": all(math.isfinite(c[1]) for c in curve),
    }
    if task == "copy":
        record["copy_length_reached"] = int(jax.device_get(carry.curriculum.length))
    else:
        corpus = experiment._load("validation")
        report = snap_method.evaluate_charlm(experiment, carry, corpus)
        record["valid_bits_per_char"] = report["bits_per_char"]
        record["valid_stderr"] = report["bits_per_char_stderr"]
    return record


def load_results(path: str) -> dict[str, dict]:
    """Records of results.jsonl by key (the last one wins; records before seeds count as seed 0)."""
    if not os.path.exists(path):
        return {}
    records = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                record.setdefault("seed", 0)
                key = run_key(
                    record["task"],
                    record["cell"],
                    record["density"],
                    record["estimator"],
                    record["seed"],
                )
                records[key] = {**record, "key": key}
    return records


def group(records: dict[str, dict]) -> dict[tuple, list[dict]]:
    """Records by (task, cell, density, estimator), sorted by seed."""
    groups: dict[tuple, list[dict]] = {}
    for record in records.values():
        cell_key = (record["task"], record["cell"], record["density"], record["estimator"])
        groups.setdefault(cell_key, []).append(record)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in groups.items()}


def _metric(record: dict) -> float:
    """The run's score: copy length reached (higher is better) or -bits/char (higher is better)."""
    if record["task"] == "copy":
        return float(record["copy_length_reached"])
    return -float(record["valid_bits_per_char"])


def _score(record: dict) -> float:
    """The run's score in its own units: copy length L or validation bits/char."""
    return float(
        record["copy_length_reached" if record["task"] == "copy" else "valid_bits_per_char"]
    )


def mean_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    values = np.asarray(values, dtype=np.float64)
    stderr = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return float(values.mean()), float(stderr)


def _format(runs: list[dict] | None) -> str:
    """A table cell: mean +- standard error over seeds of the score, and mean CPU seconds."""
    if not runs:
        return "-"
    mean, stderr = mean_stderr([_score(r) for r in runs])
    cpu = np.mean([r["cpu_s"] for r in runs])
    if runs[0]["task"] == "copy":
        return f"L={mean:.1f} ± {stderr:.1f} ({cpu:.0f}s)"
    return f"{mean:.3f} ± {stderr:.3f} ({cpu:.0f}s)"


def _paired(a: list[dict], b: list[dict], value) -> tuple[float, float, int, int]:
    """Mean and standard error over shared seeds of value(a) - value(b), the number of seeds where
    it is positive, and the number of shared seeds."""
    b_by_seed = {r["seed"]: r for r in b}
    diffs = [value(r) - value(b_by_seed[r["seed"]]) for r in a if r["seed"] in b_by_seed]
    if not diffs:
        return math.nan, math.nan, 0, 0
    mean, stderr = mean_stderr(diffs)
    return mean, stderr, sum(d > 0 for d in diffs), len(diffs)


def claims(records: dict[str, dict]) -> list[str]:
    """Verdicts on the paper's claims (a) and (b) at this scale, from paired differences over seeds:
    a setting counts for a claim when the mean paired difference is positive."""
    groups = group(records)
    lines = []
    wins, total, cost_ratios, details = 0, 0, [], []
    for task in TASKS:
        for cell in CELLS:
            for density in DENSITIES:
                snap1 = groups.get((task, cell, density, "snap1"))
                uoro = groups.get((task, cell, density, "uoro"))
                if not snap1 or not uoro:
                    continue
                mean, stderr, seed_wins, n = _paired(snap1, uoro, _metric)
                if n == 0:
                    continue
                total += 1
                wins += mean > 0
                cost_ratios.append(
                    np.mean([r["cpu_s"] for r in snap1]) / np.mean([r["cpu_s"] for r in uoro])
                )
                details.append(
                    f"{task}/{cell}/d{density:g} {mean:+.3g} ± {stderr:.2g} ({seed_wins}/{n} seeds)"
                )
    if total:
        held = "HELD" if wins == total else ("partly held" if wins > total / 2 else "NOT held")
        lines.append(
            f"- (a) SnAp-1 better than UORO at similar cost: {held}: SnAp-1 better on the mean "
            f"over seeds in {wins}/{total} settings; SnAp-1/UORO CPU-time ratio median "
            f"{np.median(cost_ratios):.2f}. Paired SnAp-1 - UORO (L, or UORO's bits/char - "
            "SnAp-1's), mean ± standard error: " + "; ".join(details) + "."
        )
    wins, strict, total, details = 0, 0, 0, []
    for task in TASKS:
        for cell in CELLS:
            snap2 = groups.get((task, cell, 0.1, "snap2"))
            bptt = groups.get((task, cell, 0.1, "tbptt"))
            if not snap2 or not bptt:
                continue
            final, final_se, final_wins, n = _paired(snap2, bptt, _metric)
            speed, speed_se, _, _ = _paired(bptt, snap2, lambda r: r["mean_train_bits"])
            if n == 0:
                continue
            total += 1
            # "at least as fast" at an equal token budget: a final score no worse on the mean over
            # seeds (copy: the same or a longer L; LM: within 0.01 bits/char) and a mean training
            # loss no worse (within 0.01 bits/char); strictly better when the final score is
            # better by more than one standard error of the paired difference.
            as_good = final >= (0.0 if task == "copy" else -0.01)
            faster = speed >= -0.01
            wins += as_good and faster
            strict += final > max(final_se, 0.0 if task == "copy" else 0.01)
            details.append(
                f"{task}/{cell}: SnAp-2 {_format(snap2)} vs truncated BPTT {_format(bptt)}; paired "
                f"final score {final:+.3g} ± {final_se:.2g} ({final_wins}/{n} seeds), mean train "
                f"bits BPTT - SnAp-2 {speed:+.3f} ± {speed_se:.3f}"
            )
    if total:
        held = "HELD" if wins == total else ("partly held" if wins else "NOT held")
        lines.append(
            f"- (b) 90%-sparse online SnAp-2 learns at least as fast as truncated BPTT: {held} "
            f"(at least as good in {wins}/{total}, final score better by more than a standard "
            f"error in {strict}/{total}): " + "; ".join(details) + "."
        )
    return lines


def write_table(records: dict[str, dict], out: str, args: argparse.Namespace) -> str:
    """table.md: one row per task x cell x density, one column per estimator."""
    groups = group(records)
    seeds = sorted({r["seed"] for r in records.values()})
    lines = [
        f"SnAp study: hidden {args.hidden}, {args.streams} streams, online updates every step "
        f"(truncated BPTT: every {args.truncation}-step window), Adam lr {args.lr}; copy: "
        f"{args.copy_tokens:,} tokens, score = curriculum length L reached; char LM (embedded "
        f"Wikipedia text8): {args.charlm_tokens:,} tokens, score = validation bits/char on "
        f"{args.eval_crops} crops of 128. Seeds {seeds}: mean ± standard error over seeds (the "
        "seed sets the initial weights, the sparsity mask and the data order). In brackets: mean "
        "CPU seconds of a run (compilation included; one compilation serves all densities and "
        "seeds of tbptt, uoro and rtrl) on one core. Exact RTRL (dense influence) runs for the "
        f"GRU at density {args.rtrl_density:g} only; SnAp-2 on a dense net is RTRL and is not "
        "repeated.",
        "",
        "| task | cell | density | " + " | ".join(ESTIMATORS) + " |",
        "|---|---|---|" + "---|" * len(ESTIMATORS),
    ]
    for task in TASKS:
        for cell in CELLS:
            for density in DENSITIES:
                cells_text = [_format(groups.get((task, cell, density, e))) for e in ESTIMATORS]
                if all(c == "-" for c in cells_text):
                    continue
                lines.append(f"| {task} | {cell} | {density:g} | " + " | ".join(cells_text) + " |")
    lines += ["", "Claims of the paper at this scale:", *claims(records)]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    return text


def write_curves(records: dict[str, dict], out: str) -> str:
    """curves.png: training bits/char (per chunk, mean over seeds) against tokens per panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    panels = [(t, c, d) for t in TASKS for c in CELLS for d in DENSITIES]
    groups = group(records)
    panels = [p for p in panels if any((*p, e) in groups for e in ESTIMATORS)]
    cols = len(DENSITIES)
    rows = max(1, math.ceil(len(panels) / cols))
    figure = Figure(figsize=(4.2 * cols, 3.2 * rows), dpi=90)
    FigureCanvasAgg(figure)
    colors = dict(
        zip(ESTIMATORS, ("tab:gray", "tab:red", "tab:blue", "tab:green", "black"), strict=True)
    )
    for index, (task, cell, density) in enumerate(panels):
        axes = figure.add_subplot(rows, cols, index + 1)
        for estimator in ESTIMATORS:
            runs = groups.get((task, cell, density, estimator))
            if not runs:
                continue
            length = min(len(r["curve"]) for r in runs)
            tokens = [c[0] for c in runs[0]["curve"][:length]]
            column = 2 if task == "copy" else 1
            values = np.mean([[c[column] for c in r["curve"][:length]] for r in runs], axis=0)
            axes.plot(tokens, values, label=estimator, color=colors[estimator])
        axes.set_title(f"{task} {cell} density {density:g}", fontsize=9)
        axes.set_xlabel("tokens", fontsize=8)
        axes.set_ylabel("curriculum L" if task == "copy" else "train bits/char", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(True, alpha=0.3)
    handles = [
        Line2D([], [], color=colors[e], label=e)
        for e in ESTIMATORS
        if any(r["estimator"] == e for r in records.values())
    ]
    figure.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / rows))
    path = os.path.join(out, "curves.png")
    figure.savefig(path, format="png")
    return path


def main(argv: list[str] | None = None) -> None:
    """Run the grid (skipping runs already recorded), then write table.md and curves.png."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--truncation", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--copy-tokens", type=int, default=196_608)
    parser.add_argument("--charlm-tokens", type=int, default=131_072)
    parser.add_argument("--eval-crops", type=int, default=64)
    parser.add_argument("--rtrl-density", type=float, default=0.1)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--densities", default=",".join(map(str, DENSITIES)))
    parser.add_argument("--estimators", default=",".join(ESTIMATORS))
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, each a full grid")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, "results.jsonl")
    records = load_results(results_path)
    if not args.report_only:
        grid = [
            (task, cell, density, estimator, seed)
            for seed in (int(s) for s in args.seeds.split(","))
            for task in args.tasks.split(",")
            for cell in args.cells.split(",")
            for density in (float(d) for d in args.densities.split(","))
            for estimator in args.estimators.split(",")
        ]
        for task, cell, density, estimator, seed in grid:
            key = run_key(task, cell, density, estimator, seed)
            if key in records or not affordable(args, cell, estimator, density):
                continue
            record = train_one(args, task, cell, density, estimator, seed)
            records[key] = record
            with open(results_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(
                f"{key}: {_format([record])} compile {record['compile_s']:.1f}s "
                f"mean train bits {record['mean_train_bits']:.3f}",
                flush=True,
            )
    print(write_table(records, args.out, args))
    print(f"curves: {write_curves(records, args.out)}")


if __name__ == "__main__":
    main()
