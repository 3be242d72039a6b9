"""NoisyNet throughput: environment steps per second of the full jitted training loop.

Measures acting + replay + learning (DQN) or rollouts + updates (A2C) on gymnax CartPole-v1,
`jit(vmap(train_chunk))` over 1, 4, 16, 64 seeds, NoisyNet against its baseline, on the current
JAX backend. The replay ratio (environment steps per gradient step) is printed with the table.

    nice -n 5 .venv/bin/python benchmarks/noisynet_throughput.py --seeds=1,4,16,64
"""

import argparse
import datetime
import math
import os
import platform
import time

import gymnax
import jax
import numpy as np

from configs import noisynet as noisynet_configs
from deepgen.noisynet.trainer import make_trainer

TARGET_STEPS_PER_S = 100_000
TARGET_RATIO = 1.5


def measure(
    variant: str,
    noisy: bool,
    seeds: int,
    chunks: int,
    steps_per_chunk: int,
    *,
    num_envs: int = 0,
    env_steps_per_update: int = 0,
) -> dict:
    """Env steps/s (summed over seeds) of `chunks` train chunks after one compiling chunk."""
    config = noisynet_configs.get_config(variant)
    config.agent.noisy = noisy
    if num_envs and config.agent.name != "a2c":
        config.env.num_envs = num_envs
    if env_steps_per_update and config.agent.name != "a2c":
        config.agent.env_steps_per_update = env_steps_per_update
    config.train.num_seeds = seeds
    if config.agent.name == "a2c":
        unit = config.env.num_envs * config.agent.rollout_len
        steps_per_chunk = max(unit, steps_per_chunk // unit * unit)
    config.train.steps_per_chunk = steps_per_chunk
    config.agent.learning_starts = 0  # learn from the first steps: time the steady state
    env, env_params = gymnax.make(config.env.name)
    trainer = make_trainer(config, env, env_params)
    state = jax.jit(jax.vmap(trainer.init))(jax.random.split(jax.random.PRNGKey(0), seeds))
    chunk = jax.jit(jax.vmap(trainer.train_chunk), donate_argnums=0)
    started = time.perf_counter()
    state, metrics = chunk(state)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - started
    fastest = math.inf
    for _ in range(chunks):  # the fastest chunk: the machine may be shared
        started = time.perf_counter()
        state, metrics = chunk(state)
        jax.block_until_ready(metrics)
        fastest = min(fastest, time.perf_counter() - started)
    per_update = None
    if config.agent.name != "a2c":
        per_update = int(config.agent.env_steps_per_update)
    else:
        per_update = int(config.env.num_envs * config.agent.rollout_len)
    return {
        "variant": variant,
        "noisy": noisy,
        "seeds": seeds,
        "steps_per_s": seeds * steps_per_chunk / fastest,
        "compile_s": compile_s,
        "env_steps_per_update": per_update,
        "num_envs": int(config.env.num_envs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,4,16,64")
    parser.add_argument("--variants", default="dqn_cartpole,a2c_cartpole")
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--steps-per-chunk", type=int, default=4096)
    parser.add_argument("--out", default="benchmarks/noisynet_throughput.md")
    parser.add_argument("--dqn-num-envs", type=int, default=0, help="0: the variant's")
    parser.add_argument(
        "--dqn-env-steps-per-update", type=int, default=0, help="replay ratio; 0: the variant's"
    )
    args = parser.parse_args()
    seeds_list = [int(s) for s in args.seeds.split(",")]
    rows = []
    for variant in args.variants.split(","):
        for seeds in seeds_list:
            pair = {}
            for noisy in (True, False):
                result = measure(
                    variant,
                    noisy,
                    seeds,
                    args.chunks,
                    args.steps_per_chunk,
                    num_envs=args.dqn_num_envs,
                    env_steps_per_update=args.dqn_env_steps_per_update,
                )
                pair[noisy] = result
                print(
                    f"{variant:14s} noisy={noisy!s:5s} seeds={seeds:3d} "
                    f"{result['steps_per_s']:>12,.0f} env steps/s (compile {result['compile_s']:.1f} s)",
                    flush=True,
                )
            rows.append((variant, seeds, pair[True], pair[False]))
    device = jax.devices()[0]
    header = (
        f"NoisyNet throughput, {datetime.date.today()}, backend {jax.default_backend()} "
        f"({device.device_kind}, {os.cpu_count()} CPUs visible, {platform.node()}), jax {jax.__version__}; "
        f"fastest of {args.chunks} timed chunks of {args.steps_per_chunk} env steps per seed after a "
        "compiling one; learning from the first step."
    )
    lines = [
        header,
        "",
        "| variant | env steps / gradient step | seeds | NoisyNet env steps/s | baseline env steps/s | noisy / baseline cost |",
        "|---|---|---|---|---|---|",
    ]
    for variant, seeds, noisy, base in rows:
        cost = base["steps_per_s"] / noisy["steps_per_s"]
        lines.append(
            f"| {variant} | {noisy['env_steps_per_update']} ({noisy['num_envs']} envs) | {seeds} | "
            f"{noisy['steps_per_s']:,.0f} | {base['steps_per_s']:,.0f} | {cost:.2f}x |"
        )
    dqn_rows = [r for r in rows if r[0].startswith("dqn")]
    if dqn_rows:
        best = max(max(n["steps_per_s"], b["steps_per_s"]) for _, _, n, b in dqn_rows)
        worst_cost = max(b["steps_per_s"] / n["steps_per_s"] for _, _, n, b in dqn_rows)
        lines += [
            "",
            f"DQN best: {best:,.0f} env steps/s "
            f"({'meets' if best >= TARGET_STEPS_PER_S else 'below'} the {TARGET_STEPS_PER_S:,} target); "
            f"worst noisy/baseline cost {worst_cost:.2f}x "
            f"({'within' if worst_cost <= TARGET_RATIO else 'above'} the {TARGET_RATIO}x target).",
        ]
    text = "\n".join(lines)
    print(text)
    with open(args.out, "w") as f:
        f.write(text + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
