"""NoisyNet-A2C with one noise sample shared by the environments against one sample per env.

Issue 19 asks whether A3C's per-actor noise (each actor-learner thread of NoisyNet-A3C held its
own noisy parameters for its rollout; `agent.act_noise_per_env=True` here) learns as well as the
shared sample that is the default (one sample per rollout for all parallel environments), and to
keep the shared default only if it does. Each gymnax variant (configs/noisynet.py) is trained
with both settings, and as the A2C baseline (entropy bonus, no noise) for scale, with --seeds
seeds vmapped; the two noisy runs of a variant start from the same seed keys (the same initial
weights and environments), so their per-seed difference is paired.

Writes under --out_dir: results.jsonl (curves per seed, final and evaluation returns, times;
a run already there is skipped, so an interrupted study continues), table.md and curves.png.
"final" is the mean training return of the episodes in the last --final_fraction of chunks,
"eval" --eval_episodes episodes per seed with the noise on (a fresh sample per step; per
episode with per-env noise).

    python benchmarks/noisynet_a2c_noise_study.py --out_dir runs/a2c_noise
    python benchmarks/noisynet_a2c_noise_study.py --out_dir runs/a2c_noise --report_only
    python benchmarks/noisynet_a2c_noise_study.py --out_dir /tmp/q --variants a2c_cartpole \\
        --steps 20480 --seeds 2 --chunks 2 --eval_episodes 2        # seconds: a check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gymnax
import jax
import numpy as np

from benchmarks.noisynet_minatar_study import label_axes, load_results, mean_se, plot_band
from configs.noisynet import get_config
from deepgen.noisynet.trainer import make_trainer

# (label, config.agent.noisy, config.agent.act_noise_per_env)
MODES = (("shared", True, False), ("per_env", True, True), ("baseline", False, False))
DEFAULT_STEPS = {"a2c_cartpole": 500_000, "a2c_breakout": 400_000}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--variants", default="a2c_cartpole,a2c_breakout")
    parser.add_argument("--modes", default=",".join(label for label, _, _ in MODES))
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=0, help=f"env steps per seed {DEFAULT_STEPS}")
    parser.add_argument("--chunks", type=int, default=20, help="curve points per run")
    parser.add_argument("--eval_episodes", type=int, default=16, help="per seed")
    parser.add_argument("--final_fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report_only", action="store_true")
    return parser.parse_args(argv)


def study_config(variant: str, noisy: bool, per_env: bool, args: argparse.Namespace):
    """The variant with the mode's noise and the study's budget in whole rollouts per chunk."""
    config = get_config(variant)
    config.agent.noisy = noisy
    config.agent.act_noise_per_env = per_env
    total = args.steps or DEFAULT_STEPS.get(variant, int(config.train.num_steps))
    unit = int(config.env.num_envs) * int(config.agent.rollout_len)
    chunk = max(unit, round(total / args.chunks / unit) * unit)
    config.train.steps_per_chunk = chunk
    config.train.num_steps = chunk * args.chunks
    config.train.num_seeds = args.seeds
    return config


def run_one(variant: str, mode: str, args: argparse.Namespace) -> dict:
    """Train args.seeds seeds together; per-seed curves, final and evaluation returns."""
    _, noisy, per_env = next(m for m in MODES if m[0] == mode)
    config = study_config(variant, noisy, per_env, args)
    env, env_params = gymnax.make(str(config.env.name))
    trainer = make_trainer(config, env, env_params)
    wall0, cpu0 = time.time(), time.process_time()
    keys = jax.random.split(jax.random.PRNGKey(args.seed), args.seeds)
    state = jax.jit(jax.vmap(trainer.init))(keys)
    train_chunk = jax.jit(jax.vmap(trainer.train_chunk))
    steps, returns = [], []
    for _ in range(args.chunks):
        state, metrics = train_chunk(state)
        metrics = jax.device_get(metrics)
        steps.append(int(metrics["env_steps"][0]))
        returns.append(np.asarray(metrics["mean_episode_return"], np.float64))
    evaluate = jax.jit(jax.vmap(trainer.evaluate, in_axes=(0, 0, None)), static_argnums=2)
    eval_keys = jax.random.split(jax.random.PRNGKey(args.seed + 1), args.seeds)
    eval_returns = np.asarray(evaluate(state, eval_keys, args.eval_episodes), np.float64)
    returns_CxS = np.stack(returns)
    last = max(1, math.ceil(args.final_fraction * args.chunks))
    return {
        "variant": variant,
        "env": str(config.env.name),
        "mode": mode,
        "seeds": args.seeds,
        "seed": args.seed,
        "env_steps": steps,
        "mean_episode_return": returns_CxS.T.tolist(),
        "final_return_per_seed": np.nanmean(returns_CxS[-last:], axis=0).tolist(),
        "eval_return_per_seed": eval_returns.mean(axis=1).tolist(),
        "wall_s": time.time() - wall0,
        "cpu_s": time.process_time() - cpu0,
    }


def _cell(values) -> str:
    mean, se = mean_se(values)
    return f"{mean:.2f} ± {se:.2f}"


def write_table(records: list[dict], path: str) -> str:
    """One row per variant and mode; the paired per-env minus shared difference per variant."""
    lines = [
        "| variant | env steps/seed | seeds | noise | final return | eval return | wall |",
        "|---|---|---|---|---|---|---|",
    ]
    paired = []
    for variant in dict.fromkeys(r["variant"] for r in records):
        runs = {r["mode"]: r for r in records if r["variant"] == variant}
        for label, _, _ in MODES:
            r = runs.get(label)
            if r is None:
                continue
            lines.append(
                f"| {variant} ({r['env']}) | {r['env_steps'][-1]:,} | {r['seeds']} | {label} "
                f"| {_cell(r['final_return_per_seed'])} | {_cell(r['eval_return_per_seed'])} "
                f"| {r['wall_s']:.0f} s |"
            )
        if "shared" in runs and "per_env" in runs:
            diffs = {
                field: np.subtract(runs["per_env"][field], runs["shared"][field])
                for field in ("final_return_per_seed", "eval_return_per_seed")
            }
            paired.append(
                f"| {variant} | {_cell(diffs['final_return_per_seed'])} "
                f"| {_cell(diffs['eval_return_per_seed'])} |"
            )
    table = "\n".join(lines) + "\n"
    if paired:
        table += (
            "\n| variant | per-env minus shared, final (paired by seed) | the same, eval |\n"
            "|---|---|---|\n" + "\n".join(paired) + "\n"
        )
    with open(path, "w") as f:
        f.write(table)
    return table


def plot_curves(records: list[dict], path: str) -> None:
    """Mean training return vs env steps with a +-1 standard-error band, one panel per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r["variant"] for r in records))
    fig, axes = plt.subplots(1, len(variants), figsize=(5 * len(variants), 3.4), squeeze=False)
    colors = {"shared": "tab:red", "per_env": "tab:green", "baseline": "tab:blue"}
    for ax, variant in zip(axes[0], variants, strict=True):
        for r in records:
            if r["variant"] != variant:
                continue
            plot_band(ax, r, label=r["mode"], color=colors[r["mode"]], alpha=0.2)
        label_axes(ax, f"NoisyNet-A2C noise, {variant}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    results_path = os.path.join(args.out_dir, "results.jsonl")
    records = load_results(results_path)
    if not args.report_only:
        done = {(r["variant"], r["mode"]) for r in records}
        for variant in args.variants.split(","):
            for mode in args.modes.split(","):
                if (variant, mode) in done:
                    continue
                record = run_one(variant, mode, args)
                records.append(record)
                with open(results_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(
                    f"{variant} {mode}: final {_cell(record['final_return_per_seed'])}, eval "
                    f"{_cell(record['eval_return_per_seed'])}, {record['wall_s']:.0f} s",
                    flush=True,
                )
    print(write_table(records, os.path.join(args.out_dir, "table.md")))
    plot_curves(records, os.path.join(args.out_dir, "curves.png"))


if __name__ == "__main__":
    main()
