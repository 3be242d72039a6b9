"""What per-env noise costs NoisyNet-A2C on Atari: one update (its noise draw, rollout_len acting
steps and the learner) with one sample shared by the emulators against one sample per emulator.

`make_atari_a2c` at the `atari_a2c` variant's sizes (Nature torso, 512-unit noisy heads with
independent noise: 1.6M normals per sample), 16 emulators of 84 x 84 x 4 uint8 frames (random
frames: the cost does not depend on their content), each piece jitted and timed on its own after
a warm-up call; the median of --repeats calls.

    python benchmarks/noisynet_a2c_noise_cost.py
    python benchmarks/noisynet_a2c_noise_cost.py --repeats 2 --head_hidden 32      # seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

from configs.noisynet import get_config
from deepgen.noisynet import a2c


def _median_ms(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def measure(per_env: bool, args: argparse.Namespace) -> dict:
    """Milliseconds of the noise draw, one acting step, the learner, and one whole update."""
    config = get_config("atari_a2c")
    config.agent.act_noise_per_env = per_env
    if args.head_hidden:
        config.network.head_hidden = args.head_hidden
    agent = a2c.make_atari_a2c(config, 6)
    envs, steps = int(config.env.num_envs), int(config.agent.rollout_len)
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (envs, 84, 84, 4), dtype=np.uint8)
    batch = a2c.Transitions(
        obs_TxExO=np.stack([obs] * steps),
        action_TxE=rng.integers(0, 6, (steps, envs)).astype(np.int32),
        reward_TxE=np.zeros((steps, envs), np.float32),
        terminated_TxE=np.zeros((steps, envs), bool),
        truncated_TxE=np.zeros((steps, envs), bool),
        next_obs_TxExO=np.stack([obs] * steps),
        finished_return_TxE=np.zeros((steps, envs), np.float32),
    )
    learner = jax.jit(agent.init)(jax.random.key(0), obs[:1])
    draw = jax.jit(agent.draw_noise, static_argnums=2)
    act, learn = jax.jit(agent.act), jax.jit(agent.learn)
    key = jax.random.key(1)
    noise = draw(key, learner.params, envs)
    out = {
        "draw": _median_ms(lambda: draw(key, learner.params, envs), args.repeats),
        "act": _median_ms(lambda: act(learner.params, obs, noise, key), args.repeats),
        "learn": _median_ms(lambda: learn(learner, batch, noise)[1], args.repeats),
    }
    out["update"] = out["draw"] + steps * out["act"] + out["learn"]
    out["noise_numbers"] = int(np.prod(noise.shape))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--head_hidden", type=int, default=0, help="0: the variant's 512")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, load {os.getloadavg()}")
    print("| noise | normals per rollout | draw ms | act ms (one step) | learn ms | update ms |")
    print("|---|---|---|---|---|---|")
    rows = {}
    for per_env in (False, True):
        r = rows[per_env] = measure(per_env, args)
        label = "per env" if per_env else "shared"
        print(
            f"| {label} | {r['noise_numbers']:,} | {r['draw']:.1f} | {r['act']:.1f} "
            f"| {r['learn']:.1f} | {r['update']:.1f} |",
            flush=True,
        )
    print(
        f"ratio per env / shared, one update: {rows[True]['update'] / rows[False]['update']:.2f}x"
    )


if __name__ == "__main__":
    main()
