"""Curriculum signals against uniform task sampling, over seeds, on the CPU (Graves et al. 2017).

Runs `python -m experiments.main` for every (signal, seed) of one `_cpu` variant of
configs/curriculum.py (train, then --mode=eval), then compares the paper's measure: the steps
until the target task's held-out loss reaches curriculum.target_loss (scored every
curriculum.eval_every steps during training). A run that never reaches it counts as
train.num_steps and is flagged. Also the final held-out loss of the target task and the mean over
all tasks. Writes summary.json, summary.md and two plots (the target task's held-out loss against
steps per signal, mean over seeds; the syllabus of seed 0 for each signal) under --out.
Finished runs are kept and skipped on a rerun, so an interrupted study resumes.

    python benchmarks/curriculum_study.py --variant repeat_copy_cpu --seeds 0 1 2
    python benchmarks/curriculum_study.py --variant ngram_cpu --seeds 0 1 2
    python benchmarks/curriculum_study.py --variant smoke --seeds 0 --signals uniform \
        prediction_gain --out /tmp/study   # a smoke check, seconds
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402
from experiments.curriculum import plots  # noqa: E402

DEFAULT_SIGNALS = (
    "uniform",
    "prediction_gain",
    "gradient_prediction_gain",
    "self_prediction_gain",
    "target_prediction_gain",
    "mean_prediction_gain",
)


def run_one(variant: str, signal: str, seed: int, workdir: Path, extra: list[str]) -> dict:
    """Train and evaluate one (signal, seed); returns its eval.json (kept from an earlier run)."""
    report_path = workdir / "eval.json"
    if report_path.exists():
        return json.loads(report_path.read_text())
    base = [
        sys.executable,
        "-m",
        "experiments.main",
        f"--config=configs/curriculum.py:{variant}",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        f"--config.curriculum.signal={signal}",
        *extra,
    ]
    started = time.perf_counter()
    for mode in ("train", "eval"):
        done = subprocess.run(
            [*base, f"--mode={mode}"], cwd=ROOT, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{signal} seed {seed} {mode} failed:\n{done.stderr[-2000:]}")
    report = json.loads(report_path.read_text())
    print(
        f"  {signal:>26s} seed {seed}: steps_to_target {report['steps_to_target']}, "
        f"target loss {report['target_task_loss']:.4f} ({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    return report


def target_curve(workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, target task held-out loss) from the run's train records."""
    records = [
        json.loads(line)
        for line in (workdir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    by_step = {}
    for record in records:
        value = record.get("eval_target_loss")
        if record.get("split") == "train" and value is not None and math.isfinite(value):
            by_step[int(record["step"])] = float(value)
    steps = np.array(sorted(by_step))
    return steps, np.array([by_step[s] for s in steps])


def mean_and_stderr(values: list[float]) -> tuple[float, float | None]:
    array = np.asarray(values, np.float64)
    stderr = float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else None
    return float(array.mean()), stderr


def summarise(
    variant: str, signals: list[str], seeds: list[int], reports: dict, num_steps: int
) -> dict:
    """Per signal: steps to target (mean, stderr, ratio to uniform, runs that never got there)."""
    rows = {}
    for signal in signals:
        steps, reached, target_losses, mean_losses = [], 0, [], []
        for seed in seeds:
            report = reports[(signal, seed)]
            hit = report["steps_to_target"]
            reached += hit is not None
            steps.append(hit if hit is not None else num_steps)
            target_losses.append(report["target_task_loss"])
            mean_losses.append(report["mean_target_loss"])
        steps_mean, steps_stderr = mean_and_stderr(steps)
        rows[signal] = {
            "steps_to_target": steps,
            "steps_to_target_mean": steps_mean,
            "steps_to_target_stderr": steps_stderr,
            "runs_reaching_target": reached,
            "target_task_loss_mean": mean_and_stderr(target_losses)[0],
            "target_task_loss_stderr": mean_and_stderr(target_losses)[1],
            "mean_task_loss_mean": mean_and_stderr(mean_losses)[0],
        }
    if "uniform" in rows:
        base = rows["uniform"]["steps_to_target_mean"]
        for row in rows.values():
            row["speedup_vs_uniform"] = base / row["steps_to_target_mean"]
    first = reports[(signals[0], seeds[0])]
    return {
        "variant": variant,
        "seeds": seeds,
        "num_steps": num_steps,
        "target_task": first["target_task"],
        "target_loss": first["target_loss"],
        "unit": first["unit"],
        "eval_resolution_steps": first["steps_to_target_resolution"],
        "data_source": first["data_source"],
        "machine": _common.machine_description(),
        "signals": rows,
    }


def markdown(summary: dict) -> str:
    lines = [
        f"{summary['variant']}: steps until the target task {summary['target_task']} reaches "
        f"{summary['target_loss']:g} {summary['unit']} (held-out, scored every "
        f"{summary['eval_resolution_steps']} steps; a run that never does counts as "
        f"{summary['num_steps']}), seeds {summary['seeds']}",
        "",
        "| signal | steps to target (mean ± se) | reached | speed-up vs uniform | final target loss |",
        "|---|---|---|---|---|",
    ]
    for signal, row in summary["signals"].items():
        se = row["steps_to_target_stderr"]
        se_text = f" ± {se:.0f}" if se is not None else ""
        tse = row["target_task_loss_stderr"]
        tse_text = f" ± {tse:.4f}" if tse is not None else ""
        lines.append(
            f"| {signal} | {row['steps_to_target_mean']:.0f}{se_text} | "
            f"{row['runs_reaching_target']}/{len(summary['seeds'])} | "
            f"{row.get('speedup_vs_uniform', float('nan')):.2f}x | "
            f"{row['target_task_loss_mean']:.4f}{tse_text} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: dict, runs: Path, out: Path, signals: list[str], seeds: list[int]) -> list[str]:
    """The target task's held-out loss against steps (mean over seeds), and seed 0's syllabi."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for signal in signals:
        curves = [target_curve(runs / f"{signal}_seed{seed}") for seed in seeds]
        length = min(len(c[0]) for c in curves)
        steps = curves[0][0][:length]
        values = np.mean([c[1][:length] for c in curves], axis=0)
        axes.plot(
            steps,
            values,
            label=signal,
            linewidth=2.0 if signal == "uniform" else 1.3,
            color="black" if signal == "uniform" else None,
        )
    axes.axhline(summary["target_loss"], color="grey", linestyle=":", label="target loss")
    axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel(f"target task held-out loss ({summary['unit']})")
    axes.set_title(f"{summary['variant']}: {summary['target_task']}, mean of {len(seeds)} seeds")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    curve_path = out / "target_loss.png"
    figure.savefig(curve_path, format="png")
    written = [str(curve_path)]
    for signal in signals:
        if signal == "uniform":
            continue
        workdir = runs / f"{signal}_seed{seeds[0]}"
        config = json.loads((workdir / "config.json").read_text())
        names = tuple(json.loads((workdir / "eval.json").read_text())["tasks"])
        records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if x]
        written.append(
            plots.save_syllabus(
                records,
                str(out / f"syllabus_{signal}.png"),
                names=names,
                kind=config["task"],
                title=f"{summary['variant']}, {signal}, seed {seeds[0]}",
            )
        )
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="repeat_copy_cpu")
    parser.add_argument("--signals", nargs="+", default=list(DEFAULT_SIGNALS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=1, help="runs at the same time")
    parser.add_argument(
        "--out", default=None, help="default benchmarks/results/curriculum/<variant>"
    )
    parser.add_argument(
        "--runs", default=None, help="workdirs; default runs/curriculum_study/<variant>"
    )
    parser.add_argument("--set", nargs="*", default=[], help="extra --config.X=Y overrides")
    args = parser.parse_args()
    out = Path(args.out or ROOT / "benchmarks" / "results" / "curriculum" / args.variant)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs or ROOT / "runs" / "curriculum_study" / args.variant)
    extra = [s if s.startswith("--") else f"--config.{s}" for s in args.set]
    from configs import curriculum

    config = curriculum.get_config(args.variant)
    num_steps = int(config.train.num_steps)
    for override in extra:
        if override.startswith("--config.train.num_steps="):
            num_steps = int(override.split("=", 1)[1])
    jobs = [(signal, seed) for seed in args.seeds for signal in args.signals]
    print(f"{len(jobs)} runs of {args.variant} ({num_steps} steps each) in {runs}", flush=True)
    reports = {}
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        futures = {
            pool.submit(
                run_one, args.variant, signal, seed, runs / f"{signal}_seed{seed}", extra
            ): (signal, seed)
            for signal, seed in jobs
        }
        for future in concurrent.futures.as_completed(futures):
            reports[futures[future]] = future.result()
    summary = summarise(args.variant, args.signals, args.seeds, reports, num_steps)
    summary["runs"] = str(runs)
    summary["plots"] = plot(summary, runs, out, args.signals, args.seeds)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown(summary)
    (out / "summary.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
