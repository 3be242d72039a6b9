"""The Kanerva Machine's cost: memory write and read against K and T, train step against the VAE's.

Full run (CPU or GPU, the same script; minutes on a free 2-core CPU, most of them spent on the
K x K Cholesky factors of kl and sample_memory at K = 2048):

    python benchmarks/kanerva_cost.py

Seconds, tiny sizes and the smoke configs, for tests of the script (writes its JSON under the temp
folder unless --out; compiles at XLA backend optimisation level 1, as the tests do, so its
timings are not ones to report):

    python benchmarks/kanerva_cost.py --quick

On the GPU machine, in benchmarks/gpu_check.sh:

    timeout 180 python3 benchmarks/kanerva_cost.py --steps 15 --out=${OUT:-/tmp}/kanerva_cost.json \
        2>&1 | grep -E "^[|]|^ratio|^device|Error|error" | tee -a "$LOG"

Two measurements in one run (Wu, Wayne, Graves and Lillicrap, arXiv:1804.01756; deepgen/kanerva):

1. Memory operations alone (deepgen/kanerva/memory.py), each jitted and vmapped over a batch of
   B episodes (--episodes, default 16) as the episode ELBO batches them, in float32 under
   `jax.default_matmul_precision("highest")` (as deepgen/kanerva/model.py calls them), with code
   size C = 100 (--code_size, the paper's), over two sweeps: memory size K in 32, 128, 512, 2048
   at episode length T = 32 (--Ks, --fixed_T), and T in 8, 32, 128, 512 at K = 32 (--Ts,
   --fixed_K). Inputs: the model's initial prior (R0 ~ N(0, 1), U0 = I, sigma_xi^2 = 1, one p(M)
   shared by the episodes), addresses W ~ N(0, 1/K) (so |w|^2 is about 1) and codes Z ~ N(0, 1).
   The operations, with their operation counts per episode as the code does them:
     write_batch       `write_batch`: the exact batch update, one T x T Cholesky of
                       Sigma_z = W U W^T + sigma^2 I; O(T^3 + T^2 K + T K^2 + T K C).
     write_sequential  `write_sequential`: T rank-1 updates in a lax.scan; O(T (K^2 + K C)).
     read              `read` of the T written addresses from q(M | X): means and variances;
                       O(T K^2 + T K C).
     kl                `matrix_normal_kl` of q(M | X) against p(M): K x K Cholesky factors and
                       triangular solves; O(K^3 + K^2 C), independent of T.
     sample_memory     `sample_memory`, the draw M ~ q(M | X) of the training bound
                       (model.num_memory_samples = 1): O(K^3 + K^2 C), independent of T.
   read, kl and sample_memory take write_batch's posterior. At each point every operation is
   compiled, called twice to warm up (the first call's output kept), then the operations take turns one call at a time for up to
   --calls rounds (fewer once --budget_s is spent, at least 3); every call is timed with
   jax.block_until_ready. Reported: median and min ms per call (of B episodes), and the empirical
   scaling exponent between successive points of a sweep, log(time ratio) / log(size ratio). An
   operation is skipped at a point, with a note, where it is predicted (from the previous point
   of its sweep, with the larger of its operation count's exponent and the last measured one) to
   take more than --max_call_s, or where the point would need more than half the free memory.
   Also reported: the largest difference between write_sequential's and write_batch's posteriors
   (the same posterior in exact arithmetic), relative to the largest entry.

2. Train step. The jitted, sharded, state-donating `KanervaMethod.train_step` that the core loop
   runs (deepgen/core/train_loop.py), for the Kanerva Machine (config `mnist_cpu`) and the VAE
   with the same encoder, z-posterior MLP and decoder and no memory (`vae_mnist_cpu`), on the
   same batch: the first batch of the Kanerva method's `batches()`, train.batch_size episodes of
   data.episode_length real binarised digits (8 x 32 = 256 images). Each is compiled, warmed up
   (--warmup steps), then the two take turns one step at a time for --steps rounds (so load from
   other processes falls on both alike). Reported: median and min ms/step, images/s and the ratio
   Kanerva Machine / VAE of the medians. --set a.b=value overrides both configs.

Prints a markdown block ready for benchmarks/RESULTS.md (date, host, machine, jax version, device
count, load average, command line) and writes everything to --out as JSON.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
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
from benchmarks._common import (  # noqa: E402
    StepRunner,
    apply_overrides,
    available_bytes,
    load_average,
    parse_sizes,
    peak_memory,
    time_interleaved,
)
from configs import kanerva as kanerva_configs  # noqa: E402
from deepgen.kanerva import memory as mem  # noqa: E402
from experiments.kanerva.method import KanervaMethod  # noqa: E402

KM_VARIANT, VAE_VARIANT = "mnist_cpu", "vae_mnist_cpu"
QUICK_KM_VARIANT, QUICK_VAE_VARIANT = "smoke", "vae_smoke"
KS, TS, FIXED_K, FIXED_T = (32, 128, 512, 2048), (8, 32, 128, 512), 32, 32
QUICK_KS, QUICK_TS, QUICK_FIXED_K, QUICK_FIXED_T = (8, 16), (4, 8), 8, 8
CODE_SIZE, EPISODES, QUICK_EPISODES = 100, 16, 4
OPS = ("write_batch", "write_sequential", "read", "kl", "sample_memory")
# Exponents of each operation's count in K and in T (the module docstring): the least growth
# assumed when predicting a point's time from the previous one.
COUNT_EXPONENT = {
    "write_batch": {"K": 2, "T": 3},
    "write_sequential": {"K": 2, "T": 1},
    "read": {"K": 2, "T": 1},
    "kl": {"K": 3, "T": 0},
    "sample_memory": {"K": 3, "T": 0},
}
NEEDS_POSTERIOR = ("read", "kl", "sample_memory")
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "kanerva_cost.json"
SEED = 0


# ---- 1. the memory operations -----------------------------------------------------------------


def _highest(fn: Callable) -> Callable:
    """fn traced under matmul precision "highest", as deepgen/kanerva/model.py calls the memory."""

    @functools.wraps(fn)
    def wrapped(*args):
        with jax.default_matmul_precision("highest"):
            return fn(*args)

    return wrapped


@_highest
def batch_write_batch(
    prior: mem.MemoryDistribution, W_BxTxK: jax.Array, Z_BxTxC: jax.Array, noise_variance: jax.Array
) -> mem.MemoryDistribution:
    """q(M | W, Z) of B episodes from one prior, by `write_batch`."""
    write = functools.partial(mem.write_batch, noise_variance=noise_variance)
    return jax.vmap(write, in_axes=(None, 0, 0))(prior, W_BxTxK, Z_BxTxC)


@_highest
def batch_write_sequential(
    prior: mem.MemoryDistribution, W_BxTxK: jax.Array, Z_BxTxC: jax.Array, noise_variance: jax.Array
) -> mem.MemoryDistribution:
    """q(M | W, Z) of B episodes from one prior, by `write_sequential`."""
    write = functools.partial(mem.write_sequential, noise_variance=noise_variance)
    return jax.vmap(write, in_axes=(None, 0, 0))(prior, W_BxTxK, Z_BxTxC)


@_highest
def batch_read(
    posterior: mem.MemoryDistribution, W_BxTxK: jax.Array, noise_variance: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(means B x T x C, variances B x T) of each episode's T addresses from its memory."""
    return jax.vmap(functools.partial(mem.read, noise_variance=noise_variance))(posterior, W_BxTxK)


@_highest
def batch_kl(posterior: mem.MemoryDistribution, prior: mem.MemoryDistribution) -> jax.Array:
    """KL(q(M | X_b) || p(M)) for each of the B episodes."""
    return jax.vmap(mem.matrix_normal_kl, in_axes=(0, None))(posterior, prior)


@_highest
def batch_sample_memory(keys_B: jax.Array, posterior: mem.MemoryDistribution) -> jax.Array:
    """One M ~ q(M | X_b) per episode, B x K x C."""
    return jax.vmap(mem.sample_memory)(keys_B, posterior)


def memory_inputs(K: int, T: int, C: int, B: int) -> dict[str, Any]:
    """The prior, W ~ N(0, 1/K), Z ~ N(0, 1), sigma_xi^2 = 1 and B keys, for one point."""
    keys = jax.random.split(jax.random.fold_in(jax.random.key(SEED), K * 100_003 + T), 4)
    R0_KxC = jax.random.normal(keys[0], (K, C), jnp.float32)
    return {
        "prior": mem.prior_memory(R0_KxC, log_sigma0_sq=jnp.zeros((), jnp.float32)),
        "W": jax.random.normal(keys[1], (B, T, K), jnp.float32) / math.sqrt(K),
        "Z": jax.random.normal(keys[2], (B, T, C), jnp.float32),
        "noise_variance": jnp.ones((), jnp.float32),
        "keys": jax.random.split(keys[3], B),
    }


def needed_bytes(K: int, T: int, C: int, B: int) -> int:
    """A generous guess of one point's float32 working set: 8 copies of U, Sigma_z, W, Z, R."""
    return 4 * 8 * B * (K * K + T * T + (T + K) * (K + C))


def point_skip_reasons(
    K: int,
    T: int,
    args: argparse.Namespace,
    history: dict[str, list[tuple[int, float, float | None]]],
    axis: str,
) -> dict[str, str | None]:
    """Per operation: why it is not run at (K, T) (memory, or predicted too slow), or None.

    history[op]: (size along `axis`, median s, exponent from the point before) of the points of
    this sweep measured so far.
    """
    reasons: dict[str, str | None] = {}
    free = available_bytes()
    need = needed_bytes(K, T, args.code_size, args.episodes)
    for op in OPS:
        reasons[op] = None
        if free is not None and need > 0.5 * free:
            reasons[op] = (
                f"skipped: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available"
            )
            continue
        if not history.get(op):
            continue
        size = K if axis == "K" else T
        prev_size, prev_s, prev_exponent = history[op][-1]
        exponent = max(COUNT_EXPONENT[op][axis], prev_exponent or 0.0)
        predicted = prev_s * (size / prev_size) ** exponent
        if predicted > args.max_call_s:
            reasons[op] = (
                f"skipped: predicted {predicted:.1f} s per call (from {axis} = {prev_size}, "
                f"exponent {exponent:.1f}), over --max_call_s={args.max_call_s:g}"
            )
    if reasons["write_batch"]:
        for op in NEEDS_POSTERIOR:
            reasons[op] = reasons[op] or "skipped: needs write_batch's posterior"
    return reasons


def _relative_difference(a: jax.Array, b: jax.Array) -> float:
    """max |a - b| / max |a|, in float64."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a64 - b64)) / max(np.max(np.abs(a64)), 1e-30))


def time_point(
    K: int, T: int, args: argparse.Namespace, reasons: dict[str, str | None]
) -> dict[str, dict]:
    """op -> timing row at (K, T): compile, 2 warm-up calls each, then calls taken in turns."""
    C, B = args.code_size, args.episodes
    x = memory_inputs(K, T, C, B)
    write_args = (x["prior"], x["W"], x["Z"], x["noise_variance"])
    compiled: dict[str, Callable] = {}
    calls: dict[str, tuple] = {}
    compile_s: dict[str, float] = {}
    outputs: dict[str, Any] = {}

    def add(op: str, fn: Callable, fn_args: tuple) -> None:
        """Compile op, call it twice (its first output kept) to warm it up."""
        started = time.perf_counter()
        compiled[op] = jax.jit(fn).lower(*fn_args).compile()
        compile_s[op] = time.perf_counter() - started
        calls[op] = fn_args
        outputs[op] = jax.block_until_ready(compiled[op](*fn_args))
        jax.block_until_ready(compiled[op](*fn_args))

    if not reasons["write_batch"]:
        add("write_batch", batch_write_batch, write_args)
        posterior = outputs["write_batch"]
        for op, fn, fn_args in (
            ("read", batch_read, (posterior, x["W"], x["noise_variance"])),
            ("kl", batch_kl, (posterior, x["prior"])),
            ("sample_memory", batch_sample_memory, (x["keys"], posterior)),
        ):
            if not reasons[op]:
                add(op, fn, fn_args)
    if not reasons["write_sequential"]:
        add("write_sequential", batch_write_sequential, write_args)
    times: dict[str, list[float]] = {op: [] for op in calls}
    spent, rounds = 0.0, 0
    while calls and (rounds < 3 or (rounds < args.calls and spent < args.budget_s)):
        rounds += 1
        for op, fn_args in calls.items():
            started = time.perf_counter()
            jax.block_until_ready(compiled[op](*fn_args))
            elapsed = time.perf_counter() - started
            times[op].append(elapsed)
            spent += elapsed

    agreement = {}
    if "write_batch" in outputs and "write_sequential" in outputs:
        batch_out, seq_out = outputs["write_batch"], outputs["write_sequential"]
        agreement = {
            "R": _relative_difference(batch_out.R_KxC, seq_out.R_KxC),
            "U": _relative_difference(batch_out.U_KxK, seq_out.U_KxK),
        }
    rows = {}
    for op in OPS:
        base = {"K": K, "T": T, "op": op}
        if op not in calls:
            rows[op] = {**base, "note": reasons[op]}
            continue
        rows[op] = {
            **base,
            "ms_per_call_median": 1e3 * statistics.median(times[op]),
            "ms_per_call_min": 1e3 * min(times[op]),
            "us_per_episode_median": 1e6 * statistics.median(times[op]) / B,
            "compile_s": compile_s[op],
            "timed_calls": len(times[op]),
            "note": "",
        }
        if op == "write_sequential" and agreement:
            rows[op]["relative_difference_from_write_batch"] = agreement
    return rows


def memory_benchmark(args: argparse.Namespace) -> tuple[list[dict], dict, dict]:
    """(a row per point and operation, the sweeps with their exponents, the settings)."""
    sweeps = {
        "K": [(K, args.fixed_T) for K in sorted(args.Ks)],
        "T": [(args.fixed_K, T) for T in sorted(args.Ts)],
    }
    measured: dict[tuple[int, int], dict[str, dict]] = {}
    scaling: dict[str, list[dict]] = {}
    for axis, points in sweeps.items():
        history: dict[str, list[tuple[int, float, float | None]]] = {op: [] for op in OPS}
        scaling[axis] = []
        for K, T in points:
            size = K if axis == "K" else T
            if (K, T) not in measured:
                reasons = point_skip_reasons(K, T, args, history, axis)
                measured[(K, T)] = time_point(K, T, args, reasons)
                for op in OPS:
                    row = measured[(K, T)][op]
                    timing = (
                        f"{row['ms_per_call_median']:10.3f} ms/call (median of "
                        f"{row['timed_calls']})"
                        if "ms_per_call_median" in row
                        else row["note"]
                    )
                    print(f"memory K={K:>5} T={T:>4} {op:16s} {timing}", flush=True)
            entry: dict[str, Any] = {"K": K, "T": T, "size": size}
            for op in OPS:
                row = measured[(K, T)][op]
                exponent = None
                if "ms_per_call_median" in row:
                    seconds = row["ms_per_call_median"] / 1e3
                    if history[op]:
                        prev_size, prev_s, _ = history[op][-1]
                        exponent = math.log(seconds / prev_s) / math.log(size / prev_size)
                    history[op].append((size, seconds, exponent))
                entry[op] = {
                    "ms_per_call_median": row.get("ms_per_call_median"),
                    "exponent_from_previous": exponent,
                }
            scaling[axis].append(entry)
    rows = [row for point in measured.values() for row in point.values()]
    settings = {
        "code_size": args.code_size,
        "episodes": args.episodes,
        "Ks": sorted(args.Ks),
        "Ts": sorted(args.Ts),
        "fixed_K": args.fixed_K,
        "fixed_T": args.fixed_T,
        "dtype": "float32",
        "matmul_precision": "highest",
        "inputs": "R0 ~ N(0, 1), U0 = I, sigma_xi^2 = 1, W ~ N(0, 1/K), Z ~ N(0, 1)",
        "calls": args.calls,
        "budget_s": args.budget_s,
        "max_call_s": args.max_call_s,
    }
    return rows, scaling, settings


# ---- 2. the train step ------------------------------------------------------------------------


def build_method(variant: str, overrides: Sequence[str]) -> KanervaMethod:
    """The runner's method object for a config variant, with --set overrides applied."""
    config = apply_overrides(kanerva_configs.get_config(variant), overrides)
    KanervaMethod.validate(config)
    return KanervaMethod(config)


def train_step_benchmark(args: argparse.Namespace) -> tuple[dict, dict]:
    """(the timings, the settings): median ms/step of the Kanerva Machine and the VAE, the ratio."""
    km_variant, vae_variant = (
        (QUICK_KM_VARIANT, QUICK_VAE_VARIANT) if args.quick else (KM_VARIANT, VAE_VARIANT)
    )
    km = build_method(km_variant, args.set)
    vae = build_method(vae_variant, args.set)
    episodes = int(km.config.train.batch_size)
    T = int(km.config.data.episode_length)
    if (episodes, T) != (int(vae.config.train.batch_size), int(vae.config.data.episode_length)):
        raise ValueError(f"{km_variant} and {vae_variant} differ in batch size or episode length")
    batch = next(km.batches())

    print(f"compiling the VAE ({vae_variant}) train step", flush=True)
    vae_runner = StepRunner("vae", vae, batch)
    print(f"compiling the Kanerva Machine ({km_variant}) train step", flush=True)
    km_runner = StepRunner("kanerva", km, batch)
    print(
        f"timing: {args.warmup} warm-up steps each, then {args.steps} rounds of one step per "
        "runner",
        flush=True,
    )
    time_interleaved([vae_runner, km_runner], warmup=args.warmup, steps=args.steps)

    images = episodes * T
    result: dict[str, Any] = {}
    for name, runner in (("vae", vae_runner), ("kanerva", km_runner)):
        median_s = statistics.median(runner.times)
        result[name] = {
            "ms_per_step_median": 1e3 * median_s,
            "ms_per_step_min": 1e3 * min(runner.times),
            "images_per_s": images / median_s,
            "compile_s": runner.compile_s,
            "loss_last": float(runner.metrics["loss"]),
            "ms_all": [1e3 * t for t in runner.times],
        }
    result["ratio_median"] = (
        result["kanerva"]["ms_per_step_median"] / result["vae"]["ms_per_step_median"]
    )
    m = km.config.model
    settings = {
        "kanerva_variant": km_variant,
        "vae_variant": vae_variant,
        "overrides": list(args.set),
        "episodes_per_step": episodes,
        "episode_length": T,
        "images_per_step": images,
        "memory_size": int(m.memory_size),
        "code_size": int(m.code_size),
        "num_memory_samples": int(m.num_memory_samples),
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
    }
    return result, settings


# ---- the report -------------------------------------------------------------------------------


def _cell(op_entry: dict) -> str:
    ms = op_entry["ms_per_call_median"]
    if ms is None:
        return "skipped"
    exponent = op_entry["exponent_from_previous"]
    return f"{ms:.3f}" + ("" if exponent is None else f" ({exponent:+.2f})")


def markdown(report: dict) -> str:
    """The block for benchmarks/RESULTS.md."""
    lines = [
        "## Kanerva Machine memory and train step (`benchmarks/kanerva_cost.py`)",
        "",
        f"{report['date']}, host {report['host']}, {report['machine']}, jax {report['jax']}, "
        f"{report['device_count']} device(s), load average {report['load_average_start']} "
        f"at start and {report['load_average_end']} at the end; peak memory "
        f"{report['peak_memory']}. Command: `{report['command']}`",
    ]
    if report.get("memory"):
        s = report["memory_settings"]
        lines += [
            "",
            f"Memory operations alone, one jitted call on B = {s['episodes']} episodes (vmapped), "
            f"C = {s['code_size']}, {s['dtype']}, matmul precision {s['matmul_precision']}; "
            f"{s['inputs']}; median ms per call after 2 warm-up calls, the operations taken in "
            f"turns for up to {s['calls']} rounds. In parentheses: the scaling exponent from the "
            "previous column, log(time ratio) / log(size ratio).",
        ]
        for axis, fixed in (("K", f"T = {s['fixed_T']}"), ("T", f"K = {s['fixed_K']}")):
            entries = report["memory_scaling"][axis]
            lines += [
                "",
                f"| ms / call, {fixed} | "
                + " | ".join(f"{axis} = {e['size']:,}" for e in entries)
                + " |",
                "|---|" + "---|" * len(entries),
            ]
            lines += [f"| {op} | " + " | ".join(_cell(e[op]) for e in entries) + " |" for op in OPS]
        notes = [r for r in report["memory"] if r["note"]]
        if notes:
            lines += [""] + [f"- K = {r['K']}, T = {r['T']}, {r['op']}: {r['note']}" for r in notes]
        agreement = [
            (r["K"], r["T"], r["relative_difference_from_write_batch"])
            for r in report["memory"]
            if "relative_difference_from_write_batch" in r
        ]
        if agreement:
            worst_R = max(agreement, key=lambda a: a[2]["R"])
            worst_U = max(agreement, key=lambda a: a[2]["U"])
            lines += [
                "",
                "write_sequential against write_batch (the same posterior in exact arithmetic): "
                f"largest difference relative to the largest entry {worst_R[2]['R']:.1e} in R "
                f"(K = {worst_R[0]}, T = {worst_R[1]}) and {worst_U[2]['U']:.1e} in U "
                f"(K = {worst_U[0]}, T = {worst_U[1]}).",
            ]
    if report.get("train_step"):
        s, r = report["train_step_settings"], report["train_step"]
        overrides = f", overrides {', '.join(s['overrides'])}" if s["overrides"] else ""
        lines += [
            "",
            f"Train step, {s['kanerva_variant']} (the Kanerva Machine, memory "
            f"{s['memory_size']} x {s['code_size']}, {s['num_memory_samples']} memory sample(s)) "
            f"against {s['vae_variant']} (the same networks, no memory){overrides}: the same "
            f"batch of {s['episodes_per_step']} episodes of {s['episode_length']} real binarised "
            f"digits ({s['images_per_step']} images); {s['warmup_steps']} warm-up steps after "
            f"compiling, then {s['timed_steps']} steps each, taken in turns:",
            "",
            "| model | ms/step (median) | ms/step (min) | images/s | compile | last loss |",
            "|---|---|---|---|---|---|",
        ]
        for name, label in (("vae", "VAE"), ("kanerva", "Kanerva Machine")):
            row = r[name]
            lines.append(
                f"| {label} | {row['ms_per_step_median']:.2f} | {row['ms_per_step_min']:.2f} "
                f"| {row['images_per_s']:,.0f} | {row['compile_s']:.1f} s "
                f"| {row['loss_last']:.1f} |"
            )
        lines += ["", report["ratio_text"]]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; --quick shrinks the sizes and the steps."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and a few steps")
    parser.add_argument("--out", default=None, help=f"JSON path (default {DEFAULT_OUT})")
    parser.add_argument("--parts", default="memory,train", help="memory, train or both")
    parser.add_argument("--Ks", default=None, help=f"comma list of memory sizes (default {KS})")
    parser.add_argument("--Ts", default=None, help=f"comma list of episode lengths (default {TS})")
    parser.add_argument("--fixed_K", type=int, default=None, help=f"K of the T sweep ({FIXED_K})")
    parser.add_argument("--fixed_T", type=int, default=None, help=f"T of the K sweep ({FIXED_T})")
    parser.add_argument("--code_size", type=int, default=CODE_SIZE, help="C, a memory row")
    parser.add_argument(
        "--episodes", type=int, default=None, help=f"B, episodes per call (default {EPISODES})"
    )
    parser.add_argument("--calls", type=int, default=20, help="most timed calls per operation")
    parser.add_argument(
        "--budget_s", type=float, default=10.0, help="stop timing a point after this"
    )
    parser.add_argument(
        "--max_call_s",
        type=float,
        default=30.0,
        help="skip an operation whose call is predicted slower than this",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps after compiling")
    parser.add_argument(
        "--set", action="append", default=[], help="a.b=value override of both train configs"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.Ks = parse_sizes(args.Ks) or list(QUICK_KS if quick else KS)
    args.Ts = parse_sizes(args.Ts) or list(QUICK_TS if quick else TS)
    args.fixed_K = args.fixed_K or (QUICK_FIXED_K if quick else FIXED_K)
    args.fixed_T = args.fixed_T or (QUICK_FIXED_T if quick else FIXED_T)
    args.episodes = args.episodes or (QUICK_EPISODES if quick else EPISODES)
    if quick:
        args.steps = args.steps or 3
        args.warmup = min(args.warmup, 1)
        args.calls = min(args.calls, 3)
    args.steps = args.steps or 30
    if args.steps < 1 or args.warmup < 0 or args.calls < 3:
        parser.error("--steps must be at least 1, --warmup at least 0 and --calls at least 3")
    if min(args.Ks + args.Ts + [args.fixed_K, args.fixed_T, args.code_size, args.episodes]) < 1:
        parser.error("sizes must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the parts asked for, print the markdown block, write the JSON; returns the report."""
    args = parse_args(argv)
    _common.compile_quickly(args.quick)
    parts = {p.strip() for p in args.parts.split(",")}
    out = _common.output_path(
        args.out, quick=args.quick, default=DEFAULT_OUT, quick_name="kanerva_cost_quick.json"
    )
    report: dict = _common.report_header("benchmarks/kanerva_cost.py", argv, quick=args.quick)
    if "memory" in parts:
        report["memory"], report["memory_scaling"], report["memory_settings"] = memory_benchmark(
            args
        )
    if "train" in parts:
        report["train_step"], report["train_step_settings"] = train_step_benchmark(args)
        r = report["train_step"]
        report["ratio_text"] = (
            f"ratio Kanerva Machine / VAE (medians): {r['ratio_median']:.2f}x "
            f"({r['kanerva']['ms_per_step_median']:.2f} vs {r['vae']['ms_per_step_median']:.2f} "
            "ms/step)"
        )
        print(report["ratio_text"], flush=True)
    report["load_average_end"] = load_average()
    report["peak_memory"] = peak_memory()

    return _common.write_report(out, report, markdown(report))


if __name__ == "__main__":
    main()
