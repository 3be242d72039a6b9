"""XLA compile time of smoke models under different XLA_FLAGS, each set in a fresh process.

The test suite spends most of its time compiling (session 12: XLA backend compiles were 680 s
of the 1,075 s its tests summed, tracing and lowering another 200 s), so the flags that
tests/conftest.py sets are chosen with this script. For each flag set it starts one process per
repeat that compiles, for each method, the jitted `init_state` and `train_step` of the smoke
variant (no persistent cache), then runs the step 5 times; it prints the seconds of each compile
and the milliseconds per step, and the total compile seconds per flag set.

    python benchmarks/compile_flags.py                       # the default comparison, 2 repeats
    python benchmarks/compile_flags.py --methods bfn sam --repeats 1 \\
        --flags "--xla_backend_optimization_level=1" \\
                "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false"

Timings are of this machine under the load it has: compare flag sets run side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FLAGS = (
    "--xla_backend_optimization_level=1",
    "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false",
    "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false"
    " --xla_llvm_disable_expensive_passes=true",
)


def measure(methods: list[str]) -> dict[str, dict[str, float]]:
    """In this process: compile seconds of init and train step, and seconds per step."""
    import importlib

    import jax

    from experiments import main as entry

    results = {}
    for name in methods:
        config = importlib.import_module(f"configs.{name}").get_config("smoke")
        method = entry.load_method(name).for_config(config)(config, mode="train")
        rng = jax.random.key(0)
        start = time.perf_counter()
        init = jax.jit(method.init_state).lower(rng).compile()
        init_seconds = time.perf_counter() - start
        state = init(rng)
        batches = method.batches()
        batch = next(iter(batches)) if batches is not None else None
        lowered = jax.jit(method.train_step).lower(state, batch, rng)
        start = time.perf_counter()
        step = lowered.compile()
        step_seconds = time.perf_counter() - start
        jax.block_until_ready(step(state, batch, rng))
        start = time.perf_counter()
        for _ in range(5):
            out = step(state, batch, rng)
        jax.block_until_ready(out)
        results[name] = {
            "init_compile_s": init_seconds,
            "step_compile_s": step_seconds,
            "step_ms": (time.perf_counter() - start) / 5 * 1000,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["bfn", "sam", "acn", "vpn"])
    parser.add_argument("--flags", nargs="+", default=list(DEFAULT_FLAGS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--devices", type=int, default=2, help="JAX_NUM_CPU_DEVICES")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(measure(args.methods)))
        return
    for flags in args.flags:
        for repeat in range(args.repeats):
            env = {
                **os.environ,
                "XLA_FLAGS": flags,
                "JAX_PLATFORMS": "cpu",
                "JAX_NUM_CPU_DEVICES": str(args.devices),
                "JAX_ENABLE_COMPILATION_CACHE": "false",
                "PYTHONPATH": str(REPO_ROOT),
            }
            command = [sys.executable, __file__, "--_child", "--methods", *args.methods]
            done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
            if done.returncode != 0:
                print(f"{flags!r}: failed: {done.stderr.strip().splitlines()[-1:]}")
                break
            results = json.loads(done.stdout.strip().splitlines()[-1])
            parts = " | ".join(
                f"{name} init {r['init_compile_s']:.2f} s step {r['step_compile_s']:.2f} s "
                f"run {r['step_ms']:.1f} ms"
                for name, r in results.items()
            )
            total = sum(r["init_compile_s"] + r["step_compile_s"] for r in results.values())
            print(f"{flags!r} repeat {repeat}: compile total {total:.2f} s | {parts}", flush=True)


if __name__ == "__main__":
    main()
