"""The NoisyNet paper's headline metric on a list of Atari games: mean and median human-normalised
score per agent (Fortunato et al. 2018, arXiv:1706.10295, Table 1), from one run per game and seed.

Each run is `python -m experiments.main --config=configs/noisynet.py:atari_<agent>` with the game,
the seed, noisy or not, and the study's budget given as --config overrides, in its own workdir
(OUT/<game>/<label>/seed<S>), followed by its `--mode=eval` (eval.num_episodes no-op-start
episodes to game over, the noise on). A run whose eval.json exists is not run again, so an
interrupted suite continues where it stopped; --jobs runs go at once, each single-threaded.

The aggregation is the paper's: a run's score is its evaluation's mean raw return; a game's
score for an agent is the mean over its seeds; its human-normalised score (HNS) is
100 (score - random) / (human - random) with the DQN-era reference scores
(deepgen/noisynet/atari_scores.py); an agent's mean and median are over the games. Writes
OUT/suite.json (every run's numbers) and OUT/table.md (Table 1's format, then per game the raw
scores and HNS of every agent).

The paper trains for 200M frames; a short budget is for checking the pipeline and seeing the
first learning, not for the paper's numbers. Budget scaling (--steps agent steps per run, 4
frames each): replay capacity min(1M, steps), learning starts at steps / 10, epsilon decays over
steps / 4, the target network is copied every steps / 50 agent steps; the rest is the variant's.

    python benchmarks/noisynet_atari_suite.py --out_dir runs/atari_suite --steps 50000 \\
        --games breakout,boxing,freeway,space_invaders,asterix --agents dqn,noisy_dqn --jobs 2
    python benchmarks/noisynet_atari_suite.py --out_dir runs/atari_suite --report_only
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepgen.noisynet import atari_scores  # noqa: E402

# label -> (variant of configs/noisynet.py, agent.noisy, table name)
AGENTS = {
    "dqn": ("atari_dqn", False, "DQN"),
    "noisy_dqn": ("atari_dqn", True, "NoisyNet-DQN"),
    "dueling": ("atari_dueling", False, "Dueling"),
    "noisy_dueling": ("atari_dueling", True, "NoisyNet-Dueling"),
    "a2c": ("atari_a2c", False, "A2C"),
    "noisy_a2c": ("atari_a2c", True, "NoisyNet-A2C"),
}
DEFAULT_GAMES = "breakout,boxing,freeway,space_invaders,asterix"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--games", default=DEFAULT_GAMES, help="ale-py ROM ids, comma-separated")
    parser.add_argument("--agents", default="dqn,noisy_dqn", help=f"of {sorted(AGENTS)}")
    parser.add_argument("--seeds", default="0", help="comma-separated config seeds")
    parser.add_argument("--steps", type=int, default=50_000, help="agent steps per run")
    parser.add_argument("--eval_episodes", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument(
        "--set", nargs="*", default=[], help="more --config overrides for every run (a.b=v)"
    )
    parser.add_argument("--report_only", action="store_true")
    return parser.parse_args(argv)


def rom_name(game: str) -> str:
    """The ALE/<Name>-v5 id of a ROM id (space_invaders -> SpaceInvaders)."""
    return "ALE/" + "".join(part.capitalize() for part in game.split("_")) + "-v5"


def overrides(label: str, game: str, seed: int, args: argparse.Namespace) -> list[str]:
    """The --config flags of one run: game, seed, noise and the scaled budget."""
    _, noisy, _ = AGENTS[label]
    steps = int(args.steps)
    flags = {
        "env.name": rom_name(game),
        "seed": seed,
        "agent.noisy": noisy,
        "train.num_steps": steps,
        "train.steps_per_chunk": max(1, steps // 10),
        "train.log_every": max(1, steps // 10),
        "ckpt.every": steps,
        "eval.num_episodes": int(args.eval_episodes),
    }
    if not AGENTS[label][0].endswith("a2c"):
        flags.update(
            {
                "replay.capacity": min(1_000_000, steps),
                "agent.learning_starts": max(1, steps // 10),
                "agent.epsilon_decay_steps": max(1, steps // 4),
                "agent.target_update_period": max(1, steps // 50 // 4),
            }
        )
    else:
        rollout = 16 * 5  # atari_a2c: 16 emulators x 5 steps per update
        flags["train.steps_per_chunk"] = max(rollout, steps // 10 // rollout * rollout)
        flags["train.num_steps"] = flags["train.steps_per_chunk"] * 10
        flags["train.log_every"] = flags["train.steps_per_chunk"]
        flags["ckpt.every"] = flags["train.num_steps"]
    cli = [f"--config.{key}={value}" for key, value in flags.items()]
    return cli + [f"--config.{item}" for item in args.set]


def workdir(args: argparse.Namespace, game: str, label: str, seed: int) -> Path:
    return Path(args.out_dir) / game / label / f"seed{seed}"


def run_one(args: argparse.Namespace, game: str, label: str, seed: int) -> dict:
    """Train then evaluate one (game, agent, seed) in subprocesses; its eval.json as a dict."""
    work = workdir(args, game, label, seed)
    eval_path = work / "eval.json"
    if not eval_path.exists():
        work.mkdir(parents=True, exist_ok=True)
        variant = AGENTS[label][0]
        base = [sys.executable, "-m", "experiments.main", f"--config=configs/noisynet.py:{variant}"]
        env = {**os.environ, "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
        env["OMP_NUM_THREADS"] = "1"
        started = time.time()
        for mode in ("train", "eval"):
            cmd = [
                *base,
                f"--workdir={work}",
                f"--mode={mode}",
                *overrides(label, game, seed, args),
            ]
            with open(work / f"{mode}.log", "w") as log:
                status = subprocess.run(
                    cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
                )
            if status.returncode != 0:
                raise RuntimeError(
                    f"{game} {label} seed {seed}: {mode} failed, see {work}/{mode}.log"
                )
        (work / "wall_seconds.txt").write_text(f"{time.time() - started:.1f}\n")
        print(f"{game} {label} seed {seed}: done in {time.time() - started:.0f} s", flush=True)
    return json.loads(eval_path.read_text())


def summarise(args: argparse.Namespace, results: dict) -> dict:
    """Per game and agent: mean raw score over seeds and its HNS; per agent: mean, median HNS."""
    games, labels = args.games.split(","), args.agents.split(",")
    per_game: dict[str, dict[str, dict]] = {}
    for game in games:
        random_score, human_score = atari_scores.reference_scores(game)
        per_game[game] = {"random": random_score, "human": human_score}
        for label in labels:
            runs = [results.get((game, label, seed)) for seed in map(int, args.seeds.split(","))]
            runs = [r for r in runs if r is not None]
            if not runs:
                continue
            scores = [r["mean_return"] for r in runs]
            score = statistics.fmean(scores)
            per_game[game][label] = {
                "score": score,
                "score_per_seed": scores,
                "hns": atari_scores.human_normalized_score(game, score),
                "frames_trained": runs[0]["frames_trained"],
                "episodes_per_seed": runs[0]["num_episodes"],
            }
    per_agent = {}
    for label in labels:
        hns = [per_game[g][label]["hns"] for g in games if label in per_game[g]]
        if hns:
            per_agent[label] = {
                "games": len(hns),
                "mean_hns": statistics.fmean(hns),
                "median_hns": statistics.median(hns),
            }
    return {"per_game": per_game, "per_agent": per_agent}


def table(args: argparse.Namespace, summary: dict) -> str:
    """Table 1's format (mean and median HNS per agent), then raw scores and HNS per game."""
    labels = [label for label in args.agents.split(",") if label in summary["per_agent"]]
    lines = ["| agent | games | mean HNS (%) | median HNS (%) |", "|---|---|---|---|"]
    for label in labels:
        row = summary["per_agent"][label]
        lines.append(
            f"| {AGENTS[label][2]} | {row['games']} | {row['mean_hns']:.1f} "
            f"| {row['median_hns']:.1f} |"
        )
    head = " | ".join(f"{AGENTS[label][2]} score (HNS %)" for label in labels)
    lines += ["", f"| game | random | human | {head} |", "|---|---|---|" + "---|" * len(labels)]
    for game, row in summary["per_game"].items():
        cells = []
        for label in labels:
            entry = row.get(label)
            if entry is None:
                cells.append("not run")
                continue
            seeds = len(entry["score_per_seed"])
            spread = ""
            if seeds > 1:
                sd = statistics.stdev(entry["score_per_seed"])
                spread = f" ± {sd / math.sqrt(seeds):.1f}"
            cells.append(f"{entry['score']:.1f}{spread} ({entry['hns']:.1f})")
        lines.append(
            f"| {game} | {row['random']:g} | {row['human']:g} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for label in args.agents.split(","):
        if label not in AGENTS:
            raise SystemExit(f"--agents: {label!r} is not one of {sorted(AGENTS)}")
    for game in args.games.split(","):
        if not atari_scores.has_reference_scores(game):
            raise SystemExit(f"--games: {game!r} has no reference scores (a ROM id like 'pong')")
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    jobs = [
        (game, label, seed)
        for seed in map(int, args.seeds.split(","))
        for game in args.games.split(",")
        for label in args.agents.split(",")
    ]
    results = {}
    if args.report_only:
        for job in jobs:
            path = workdir(args, *job) / "eval.json"
            if path.exists():
                results[job] = json.loads(path.read_text())
    else:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for job, report in zip(jobs, pool.map(lambda j: run_one(args, *j), jobs), strict=True):
                results[job] = report
    summary = summarise(args, results)
    summary["command"] = " ".join(sys.argv)
    summary["steps_per_run"] = args.steps
    summary["runs"] = {f"{g}/{a}/seed{s}": r["mean_return"] for (g, a, s), r in results.items()}
    (Path(args.out_dir) / "suite.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = table(args, summary)
    (Path(args.out_dir) / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
