"""NoisyNet against its baseline for DQN, Dueling and A2C on gymnax MinAtar games, seeds vmapped.

The comparison of Fortunato et al. 2018 (arXiv:1706.10295, Sec. 4, Table 1, Fig. 2) at CPU scale:
each agent (configs/noisynet.py:{dqn,dueling,a2c}_<game>) runs once with noisy layers and once
as its baseline (epsilon-greedy for DQN/Dueling, entropy bonus for A2C), with --seeds seeds
trained together under one jax.vmap. For DQN/Dueling the variants' schedules (learning start,
epsilon decay, target period), sized for millions of steps, are scaled to --dqn_steps
(see study_config). Writes under --out_dir:

  results.jsonl     one record per (agent, game, noisy) run: curves per seed, final returns, times
  curves.png        mean training return vs env steps with a +-1 standard-error band over seeds,
                    NoisyNet against baseline, one panel per agent x game
  table.md          final mean return (episodes finished in the last --final_fraction of training)
                    and evaluation return (noise on), mean +- standard error over seeds

Usage (one core, as recorded in benchmarks/RESULTS.md):
  XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 0 nice -n 5 \
      .venv/bin/python benchmarks/noisynet_minatar_study.py --out_dir runs/noisynet_minatar
  .venv/bin/python benchmarks/noisynet_minatar_study.py --out_dir runs/noisynet_minatar --report_only
A run already in results.jsonl is skipped, so an interrupted study continues where it stopped.
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

from configs.noisynet import MINATAR_GAMES, get_config
from deepgen.noisynet.trainer import make_trainer

AGENTS = ("dqn", "dueling", "a2c")
LABELS = {"dqn": "DQN", "dueling": "Dueling", "a2c": "A2C"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--games", default="breakout,asterix", help=f"of {sorted(MINATAR_GAMES)}")
    parser.add_argument("--agents", default="a2c,dqn,dueling")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--dqn_steps", type=int, default=150_000, help="env steps, DQN/Dueling")
    parser.add_argument("--a2c_steps", type=int, default=600_000, help="env steps, A2C")
    parser.add_argument("--chunks", type=int, default=15, help="curve points per run")
    parser.add_argument("--replay_capacity", type=int, default=50_000)
    parser.add_argument("--dqn_env_steps_per_update", type=int, default=8)
    parser.add_argument("--eval_episodes", type=int, default=8, help="per seed")
    parser.add_argument("--final_fraction", type=float, default=0.2)
    parser.add_argument("--report_only", action="store_true")
    return parser.parse_args(argv)


def study_config(agent: str, game: str, noisy: bool, args: argparse.Namespace):
    """The MinAtar variant at the study's budget: total steps, chunk size, replay size."""
    config = get_config(f"{agent}_{game}")
    config.agent.noisy = noisy
    total = args.a2c_steps if agent == "a2c" else args.dqn_steps
    unit = config.env.num_envs * (config.agent.rollout_len if agent == "a2c" else 1)
    chunk = max(unit, round(total / args.chunks / unit) * unit)
    config.train.steps_per_chunk = chunk
    config.train.num_steps = chunk * args.chunks
    config.train.num_seeds = args.seeds
    if agent != "a2c":
        # The MinAtar variants' schedules assume millions of steps; scale them to this budget:
        # epsilon reaches its end value at half of training (as in the spec's CPU demo, Sec. 1.8).
        config.replay.capacity = min(int(config.replay.capacity), args.replay_capacity)
        config.agent.env_steps_per_update = args.dqn_env_steps_per_update
        config.agent.learning_starts = min(int(config.agent.learning_starts), total // 20)
        config.agent.epsilon_decay_steps = total // 2
        config.agent.target_update_period = max(1, total // 10 // args.dqn_env_steps_per_update)
    return config


def run_one(agent: str, game: str, noisy: bool, args: argparse.Namespace, seed: int) -> dict:
    """Train args.seeds seeds together; return per-seed curves, final and evaluation returns."""
    config = study_config(agent, game, noisy, args)
    env, env_params = gymnax.make(MINATAR_GAMES[game])
    trainer = make_trainer(config, env, env_params)
    wall0, cpu0 = time.time(), time.process_time()
    keys = jax.random.split(jax.random.PRNGKey(seed), args.seeds)
    state = jax.jit(jax.vmap(trainer.init))(keys)
    train_chunk = jax.jit(jax.vmap(trainer.train_chunk))
    steps, returns, losses = [], [], []
    for _ in range(args.chunks):
        state, metrics = train_chunk(state)
        metrics = jax.device_get(metrics)
        steps.append(int(metrics["env_steps"][0]))
        returns.append(np.asarray(metrics["mean_episode_return"], np.float64))
        losses.append(np.asarray(metrics["loss"], np.float64))
    evaluate = jax.jit(jax.vmap(trainer.evaluate, in_axes=(0, 0, None)), static_argnums=2)
    eval_keys = jax.random.split(jax.random.PRNGKey(seed + 1), args.seeds)
    eval_returns = np.asarray(evaluate(state, eval_keys, args.eval_episodes), np.float64)
    returns_CxS = np.stack(returns)
    last = max(1, math.ceil(args.final_fraction * args.chunks))
    final_S = np.nanmean(returns_CxS[-last:], axis=0)
    return {
        "agent": agent,
        "game": game,
        "noisy": noisy,
        "seeds": args.seeds,
        "env_steps": steps,
        "steps_per_chunk": int(config.train.steps_per_chunk),
        "mean_episode_return": returns_CxS.T.tolist(),
        "loss": np.stack(losses).T.tolist(),
        "final_return_per_seed": final_S.tolist(),
        "eval_return_per_seed": eval_returns.mean(axis=1).tolist(),
        "wall_s": time.time() - wall0,
        "cpu_s": time.process_time() - cpu0,
    }


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error over seeds, ignoring nan."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    se = values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else math.nan
    return float(values.mean()), float(se)


def load_results(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_table(records: list[dict], path: str) -> str:
    """The markdown table: one row per agent x game, baseline against NoisyNet."""
    by_key = {(r["agent"], r["game"], r["noisy"]): r for r in records}
    lines = [
        "| agent | game | env steps/seed | seeds | baseline final | NoisyNet final "
        "| baseline eval | NoisyNet eval |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for agent in AGENTS:
        for game in MINATAR_GAMES:
            pair = [by_key.get((agent, game, noisy)) for noisy in (False, True)]
            if not any(pair):
                continue
            ref = next(r for r in pair if r)
            cells = []
            for field in ("final_return_per_seed", "eval_return_per_seed"):
                for r in pair:
                    mean, se = mean_se(r[field]) if r else (math.nan, math.nan)
                    cells.append(f"{mean:.2f} ± {se:.2f}" if r else "not run")
            lines.append(
                f"| {LABELS[agent]} | {MINATAR_GAMES[game]} | {ref['env_steps'][-1]:,} "
                f"| {ref['seeds']} | " + " | ".join(cells) + " |"
            )
    table = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(table)
    return table


def plot_band(ax, record: dict, *, label: str, color: str, alpha: float = 0.25) -> None:
    """A record's mean training return against env steps, with a +-1 standard-error band."""
    steps = np.asarray(record["env_steps"])
    returns_SxC = np.asarray(record["mean_episode_return"], np.float64)
    count = np.isfinite(returns_SxC).sum(axis=0)
    mean = np.nanmean(returns_SxC, axis=0)
    se = np.nanstd(returns_SxC, axis=0, ddof=1) / np.sqrt(np.maximum(count, 1))
    ax.plot(steps, mean, color=color, label=f"{label} ({record['seeds']} seeds)")
    ax.fill_between(steps, mean - se, mean + se, color=color, alpha=alpha)


def label_axes(ax, title: str) -> None:
    """Title, env-steps and return labels, grid and legend of one curves panel."""
    ax.set_title(title)
    ax.set_xlabel("env steps per seed")
    ax.set_ylabel("mean episode return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_curves(records: list[dict], path: str) -> None:
    """Mean return vs env steps with a +-1 SE band, one panel per agent x game."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agents = [a for a in AGENTS if any(r["agent"] == a for r in records)]
    games = [g for g in MINATAR_GAMES if any(r["game"] == g for r in records)]
    fig, axes = plt.subplots(
        len(agents), len(games), figsize=(4.5 * len(games), 3.2 * len(agents)), squeeze=False
    )
    for i, agent in enumerate(agents):
        for j, game in enumerate(games):
            ax = axes[i][j]
            for r in records:
                if r["agent"] != agent or r["game"] != game:
                    continue
                label = "NoisyNet" if r["noisy"] else "baseline"
                plot_band(ax, r, label=label, color="tab:red" if r["noisy"] else "tab:blue")
            label_axes(ax, f"{LABELS[agent]} on {MINATAR_GAMES[game]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    results_path = os.path.join(args.out_dir, "results.jsonl")
    games = [g.strip() for g in args.games.split(",") if g.strip()]
    agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    for game in games:
        if game not in MINATAR_GAMES:
            raise SystemExit(f"--games: {game!r} is not one of {sorted(MINATAR_GAMES)}")
    for agent in agents:
        if agent not in AGENTS:
            raise SystemExit(f"--agents: {agent!r} is not one of {AGENTS}")
    if not args.report_only:
        done = {(r["agent"], r["game"], r["noisy"]) for r in load_results(results_path)}
        for game in games:
            for agent in agents:
                for noisy in (False, True):
                    if (agent, game, noisy) in done:
                        continue
                    record = run_one(agent, game, noisy, args, seed=0)
                    with open(results_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    final, se = mean_se(record["final_return_per_seed"])
                    print(
                        f"{agent:8s} {game:15s} noisy={noisy!s:5s} final {final:7.2f} ± {se:5.2f}"
                        f"  eval {mean_se(record['eval_return_per_seed'])[0]:7.2f}"
                        f"  {record['wall_s']:6.1f} s wall {record['cpu_s']:6.1f} s cpu",
                        flush=True,
                    )
    records = load_results(results_path)
    if not records:
        raise SystemExit(f"no results in {results_path}")
    plot_curves(records, os.path.join(args.out_dir, "curves.png"))
    print(write_table(records, os.path.join(args.out_dir, "table.md")))


if __name__ == "__main__":
    main()
