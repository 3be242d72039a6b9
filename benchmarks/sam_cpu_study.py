"""SAM against the dense memories over seeds on the CPU (Rae et al. 2016, Fig. 2 in kind).

Runs `python -m experiments.main` (train, then --mode=eval) for every (variant, memory kind,
seed), then writes, per variant, the curves of the cost (bits per sequence) and of the curriculum
level against steps, one line per seed (PNG), and a table of the held-out cost, error rate and
level reached, mean and standard error over seeds (summary.json, summary.md). For associative
recall the table adds the longest recall length answered (the eval's max_generalised_length,
tried at eval.generalisation_factors times the level reached). Finished runs are kept and
skipped on a rerun, so an interrupted study resumes.

    python benchmarks/sam_cpu_study.py --variants copy_cpu recall_cpu --kinds sam ntm \
        --seeds 0 1 2
    python benchmarks/sam_cpu_study.py --variants recall_cpu --kinds sam ntm --seeds 0 1 2 \
        --kind_seeds ntm=0,1
    python benchmarks/sam_cpu_study.py --variants smoke --kinds sam --seeds 0 --out /tmp/s
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "sam" / "cpu_study"
DEFAULT_RUNS = Path(tempfile.gettempdir()) / "sam_cpu_study_runs"


def run_one(variant: str, kind: str, seed: int, runs: Path, extra: list[str]) -> Path:
    """Train and evaluate one run (skipped when its eval.json exists); its workdir."""
    workdir = runs / f"{variant}_{kind}_seed{seed}"
    if (workdir / "eval.json").exists():
        return workdir
    args = [
        f"--config=configs/sam.py:{variant}",
        f"--workdir={workdir}",
        f"--config.memory.kind={kind}",
        f"--config.seed={seed}",
        *extra,
    ]
    for mode in ("train", "eval"):
        command = [sys.executable, "-m", "experiments.main", *args, f"--mode={mode}"]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return workdir


def curve(workdir: Path, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a logged training metric."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("split") == "train" and metric in r]
    return np.array([r["step"] for r in rows]), np.array([r[metric] for r in rows])


def mean_stderr(values: list[float]) -> tuple[float, float | None]:
    """The mean and its standard error (None for one value)."""
    array = np.asarray(values, np.float64)
    stderr = float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else None
    return float(array.mean()), stderr


def plot_variant(variant: str, runs: dict, path: Path) -> None:
    """Cost and curriculum level against steps, one line per (kind, seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (kind, seeds) in enumerate(runs.items()):
        for number, workdir in enumerate(seeds.values()):
            for ax, metric in zip(
                axes, ("cost_bits_per_sequence", "curriculum_level"), strict=True
            ):
                steps, values = curve(workdir, metric)
                label = kind if number == 0 else None
                ax.plot(steps, values, color=colours[index % len(colours)], alpha=0.7, label=label)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("training cost (bits per sequence)")
    axes[1].set_ylabel("curriculum level h")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend()
    fig.suptitle(f"{variant}: one line per seed")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["copy_cpu", "recall_cpu"])
    parser.add_argument("--kinds", nargs="+", default=["sam", "ntm"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="plots and tables")
    parser.add_argument("--runs", default=str(DEFAULT_RUNS), help="the runs' workdirs")
    parser.add_argument("--set", nargs="*", default=[], help="extra --config.X=Y flags")
    parser.add_argument(
        "--kind_seeds",
        nargs="*",
        default=[],
        help="KIND=S1,S2 runs KIND for these seeds instead of --seeds (e.g. ntm=0,1)",
    )
    args = parser.parse_args(argv)
    seeds_of = {kind: list(args.seeds) for kind in args.kinds}
    for item in args.kind_seeds:
        kind, _, seeds = item.partition("=")
        if kind not in seeds_of or not seeds:
            parser.error(f"--kind_seeds {item!r}: use KIND=S1,S2 with KIND one of {args.kinds}")
        seeds_of[kind] = [int(s) for s in seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    jobs = [(v, k, s) for v in args.variants for k in args.kinds for s in seeds_of[k]]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {job: pool.submit(run_one, *job, Path(args.runs), list(args.set)) for job in jobs}
        workdirs = {job: future.result() for job, future in futures.items()}

    report = _common.report_header("benchmarks/sam_cpu_study.py", argv, quick=False)
    report.update(wall_seconds=round(time.time() - started, 1), variants={})
    lines = [
        "| variant | memory | seeds | held-out cost (bits/seq) | error rate | level reached |"
        " longest recall answered |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in args.variants:
        runs = {k: {s: workdirs[(variant, k, s)] for s in seeds_of[k]} for k in args.kinds}
        plot = out / f"{variant}_curves.png"
        plot_variant(variant, runs, plot)
        table = {}
        for kind, seeds in runs.items():
            evals = [json.loads((w / "eval.json").read_text()) for w in seeds.values()]
            row = {
                "cost_bits_per_sequence": mean_stderr([e["cost_bits_per_sequence"] for e in evals]),
                "error_rate": mean_stderr([e["error_rate"] for e in evals]),
                "curriculum_level": [e["curriculum_level"] for e in evals],
                "baseline_cost": evals[0]["baseline"]["cost_bits_per_sequence"],
            }
            if "max_generalised_length" in evals[0]:
                row["max_generalised_length"] = [e["max_generalised_length"] for e in evals]
                row["generalisation"] = [e["generalisation"] for e in evals]
            table[kind] = row
            cost, cost_se = row["cost_bits_per_sequence"]
            error, error_se = row["error_rate"]
            longest = row.get("max_generalised_length", "")
            lines.append(
                f"| {variant} | {kind} | {len(evals)} | {cost:.3g} ± {cost_se or 0:.2g} | "
                f"{error:.3g} ± {error_se or 0:.2g} | {row['curriculum_level']} | {longest} |"
            )
        report["variants"][variant] = {"plot": str(plot), "table": table}
    markdown = "\n".join(lines) + "\n"
    _common.write_report(out / "summary.json", report, markdown)
    (out / "summary.md").write_text(markdown)
    return report


if __name__ == "__main__":
    main()
