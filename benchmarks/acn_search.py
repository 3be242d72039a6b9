"""ACN's cost: its train step against the VAE's, and the exact neighbour search against table size.

Full run (CPU or GPU, the same script; minutes on a free 2-core CPU, most of them spent on the
brute-force reference and the 4M-code table):

    python benchmarks/acn_search.py

Seconds, tiny sizes, for tests of the script (writes its JSON under the temp folder unless --out):

    python benchmarks/acn_search.py --quick

On the GPU machine, in benchmarks/gpu_check.sh:

    timeout 300 python3 benchmarks/acn_search.py --out=${OUT:-/tmp}/acn_search.json 2>&1 \
        | grep -E "^[|]|^target|^device|Error|error" | tee -a "$LOG"

Two measurements in one run (Graves et al., arXiv:1804.02476; deepgen/acn):

1. Train step. The jitted, sharded, state-donating `ACN.train_step` that the core loop runs
   (deepgen/core/train_loop.py), for ACN (config `mnist_cpu`) and for the VAE with the same
   encoder and decoder (`vae_mnist_cpu`: no prior network, no code table). The ACN table is given
   N codes (--train_sizes, default 60,000 and 1,000,000) by overriding the method's table
   geometry before the state is made; the batch is real binarised digits (the first batch of
   `ACN.batches()`, 64 images) with table indices replaced by 64 distinct random ints in [0, N).
   Each runner is compiled, warmed up (--warmup steps), then the runners take turns one step at a
   time for --steps rounds (so load from other processes falls on all of them alike); every step
   is timed with jax.block_until_ready. Reported: median and min ms/step and the ratio
   ACN / VAE of the medians per table size. The issue's target: ACN at most 1.3x the VAE's step
   time at 60,000 codes.

2. Neighbour search alone. `deepgen.acn.neighbours.nearest_neighbours` (the blocked exact
   search, jitted; the table padded to whole blocks as the method pads it) against
   `brute_force_neighbours` (all B x N squared distances and a stable argsort), k = 5 neighbours
   of 64 queries of dimension 16 (mnist_cpu's K, batch and latent size), each query excluding one
   distinct table row (self-exclusion), for tables of 4,000 to 4,000,000 random N(0, I) codes
   (--sizes). A size is skipped, with a note, where the call would not fit in memory or is
   predicted (from the previous size) to take more than --max_call_s. Reported: median ms per
   call, queries/s, microseconds per query per million codes, the blocked search's speed-up over
   brute force and whether both return the same indices.

Prints a markdown block ready for benchmarks/RESULTS.md (date, host, machine, jax version, device
count, load average, command line) and writes everything to --out as JSON.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402
from benchmarks._common import (  # noqa: E402
    StepRunner,
    available_bytes,
    load_average,
    parse_sizes,
    peak_memory,
    time_interleaved,
)
from configs import acn as acn_configs  # noqa: E402
from deepgen.acn import neighbours as nn_search  # noqa: E402
from deepgen.core import distributed  # noqa: E402
from experiments.acn.method import ACN  # noqa: E402

ACN_VARIANT, VAE_VARIANT = "mnist_cpu", "vae_mnist_cpu"
TRAIN_SIZES = (60_000, 1_000_000)
SEARCH_SIZES = (4_000, 60_000, 250_000, 1_000_000, 4_000_000)
QUICK_TRAIN_SIZES = (4_000, 20_000)
QUICK_SEARCH_SIZES = (4_000, 20_000)
TARGET_SIZE, TARGET_RATIO = 60_000, 1.3
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "acn_search.json"
SEED = 0


# ---- 1. the train step ------------------------------------------------------------------------


def build_method(variant: str, block_size: int | None) -> ACN:
    """The runner's method object for a config variant (--block_size overrides the search's)."""
    config = acn_configs.get_config(variant)
    if block_size:
        config.model.search_block_size = int(block_size)
    ACN.validate(config)
    return ACN(config)


def with_table_size(method: ACN, num_codes: int) -> ACN:
    """A copy of the ACN method whose code table holds num_codes codes (padded to whole blocks)."""
    method = copy.copy(method)
    method.num_codes = num_codes
    method.table_rows, method.block_size = nn_search.padded_table_size(
        num_codes,
        num_shards=jax.device_count(),
        block_size=int(method.config.model.search_block_size),
    )
    return method


def train_step_benchmark(args, sizes: Sequence[int]) -> tuple[list[dict], dict]:
    """(a row per table size, the settings): median ms/step of ACN and the VAE, and their ratio."""
    acn = build_method(ACN_VARIANT, args.block_size)
    vae = build_method(VAE_VARIANT, args.block_size)
    batch_size = int(acn.config.train.batch_size)
    base_batch = next(acn.batches())
    rows = distributed.process_slice(batch_size)
    rng = np.random.default_rng(SEED)

    print(f"compiling the VAE ({VAE_VARIANT}) train step", flush=True)
    runners = [StepRunner("vae", vae, base_batch)]
    geometry = {}
    for num_codes in sizes:
        sized = with_table_size(acn, num_codes)
        index = rng.choice(num_codes, size=batch_size, replace=False).astype(np.int32)
        batch = {"x": base_batch["x"], "index": index[rows]}
        geometry[num_codes] = (sized.table_rows, sized.block_size)
        print(
            f"compiling the ACN ({ACN_VARIANT}) train step, {num_codes:,} codes "
            f"({sized.table_rows:,} rows, blocks of {sized.block_size:,})",
            flush=True,
        )
        runners.append(StepRunner(f"acn {num_codes}", sized, batch))
    print(
        f"timing: {args.warmup} warm-up steps each, then {args.steps} rounds of one step per "
        f"runner",
        flush=True,
    )
    time_interleaved(runners, warmup=args.warmup, steps=args.steps)

    vae_runner = runners[0]
    vae_ms = 1e3 * statistics.median(vae_runner.times)
    results = []
    for num_codes, runner in zip(sizes, runners[1:], strict=True):
        acn_ms = 1e3 * statistics.median(runner.times)
        table_rows, block = geometry[num_codes]
        results.append(
            {
                "num_codes": num_codes,
                "table_rows": table_rows,
                "block_size": block,
                "num_blocks_per_device": table_rows // jax.device_count() // block,
                "vae_ms_median": vae_ms,
                "vae_ms_min": 1e3 * min(vae_runner.times),
                "acn_ms_median": acn_ms,
                "acn_ms_min": 1e3 * min(runner.times),
                "ratio_median": acn_ms / vae_ms,
                "vae_compile_s": vae_runner.compile_s,
                "acn_compile_s": runner.compile_s,
                "acn_loss_last": float(runner.metrics["loss"]),
                "vae_loss_last": float(vae_runner.metrics["loss"]),
                "acn_ms_all": [1e3 * t for t in runner.times],
            }
        )
    settings = {
        "acn_variant": ACN_VARIANT,
        "vae_variant": VAE_VARIANT,
        "batch_size": batch_size,
        "latent_dim": int(acn.config.model.latent_dim),
        "num_neighbours": int(acn.config.model.num_neighbours),
        "search_block_size": int(acn.config.model.search_block_size),
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "vae_ms_all": [1e3 * t for t in vae_runner.times],
    }
    return results, settings


def target_verdict(train_rows: Sequence[dict]) -> dict:
    """Whether ACN's step is at most TARGET_RATIO x the VAE's at TARGET_SIZE codes."""
    row = next((r for r in train_rows if r["num_codes"] == TARGET_SIZE), None)
    if row is None:
        return {
            "checked": False,
            "text": f"target (ACN <= {TARGET_RATIO}x VAE at {TARGET_SIZE:,} codes): not checked, "
            f"{TARGET_SIZE:,} codes not among the train-step sizes",
        }
    holds = row["ratio_median"] <= TARGET_RATIO
    return {
        "checked": True,
        "holds": holds,
        "ratio": row["ratio_median"],
        "text": f"target (ACN <= {TARGET_RATIO}x VAE at {TARGET_SIZE:,} codes): "
        f"{'HOLDS' if holds else 'DOES NOT HOLD'} ({row['ratio_median']:.2f}x: "
        f"{row['acn_ms_median']:.2f} vs {row['vae_ms_median']:.2f} ms/step)",
    }


# ---- 2. the search alone ----------------------------------------------------------------------


def time_calls(call: Callable[[], object], *, max_calls: int, budget_s: float, min_calls: int = 3):
    """(median s, min s, first call s incl. compile, calls, output): warm-up 2, then timed calls.

    Timed calls stop at max_calls, or once budget_s is spent and min_calls were made.
    """
    started = time.perf_counter()
    out = jax.block_until_ready(call())
    first_s = time.perf_counter() - started
    for _ in range(2):
        jax.block_until_ready(call())
    times: list[float] = []
    while len(times) < max_calls and (len(times) < min_calls or sum(times) < budget_s):
        started = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times), first_s, len(times), out


def skip_reason(
    num_codes: int, need_bytes: int, previous: tuple[int, float] | None, max_call_s: float
) -> str | None:
    """Why a size is not run (memory, or a call predicted slower than max_call_s), or None."""
    free = available_bytes()
    if free is not None and need_bytes > 0.5 * free:
        return f"skipped: needs ~{need_bytes / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available"
    if previous is not None:
        prev_codes, prev_s = previous
        predicted = prev_s * num_codes / prev_codes
        if predicted > max_call_s:
            return (
                f"skipped: predicted {predicted:.1f} s per call (from {prev_codes:,} codes), "
                f"over --max_call_s={max_call_s:g}"
            )
    return None


def search_benchmark(args, sizes: Sequence[int]) -> tuple[list[dict], dict]:
    """(a row per size and search, the settings): queries/s of the blocked and brute-force search."""
    config = acn_configs.get_config(ACN_VARIANT)
    block_size = int(args.block_size or config.model.search_block_size)
    k = int(config.model.num_neighbours)
    num_queries = int(config.train.batch_size)
    dim = int(config.model.latent_dim)
    key = jax.random.key(SEED)
    queries = jax.random.normal(jax.random.fold_in(key, 1), (num_queries, dim))
    rng = np.random.default_rng(SEED)

    results = []
    previous: dict[str, tuple[int, float] | None] = {"blocked": None, "brute force": None}
    for num_codes in sorted(sizes):
        rows, block = nn_search.padded_table_size(num_codes, num_shards=1, block_size=block_size)
        table_bytes = rows * dim * 4
        # Blocked: the padded and the unpadded table, and B x block distances per step.
        # Brute force: B x N distances, the argsort's keys, indices and scratch (~6 words each).
        needs = {
            "blocked": 3 * table_bytes + 8 * num_queries * block * 4,
            "brute force": table_bytes + 6 * num_queries * num_codes * 4,
        }
        reasons = {
            name: skip_reason(num_codes, need, previous[name], args.max_call_s)
            for name, need in needs.items()
        }
        base = {"num_codes": num_codes, "table_rows": rows, "block_size": block, "k": k}
        if all(reasons.values()):
            for name, reason in reasons.items():
                print(f"search {name:11s} {num_codes:>10,} codes: {reason}", flush=True)
                results.append({**base, "search": name, "note": reason})
            continue

        table = jax.random.normal(jax.random.fold_in(key, num_codes), (num_codes, dim))
        exclude = jnp.asarray(rng.choice(num_codes, size=num_queries, replace=False), jnp.int32)
        calls = {}
        if reasons["blocked"] is None:
            padded = jnp.zeros((rows, dim), jnp.float32).at[:num_codes].set(table)
            blocked = jax.jit(
                functools.partial(
                    nn_search.nearest_neighbours, k=k, num_valid=num_codes, block_size=block
                )
            )
            calls["blocked"] = functools.partial(blocked, queries, padded, exclude_B=exclude)
        if reasons["brute force"] is None:
            calls["brute force"] = functools.partial(
                nn_search.brute_force_neighbours, queries, table, k=k, exclude_B=exclude
            )

        outputs = {}
        timed = {}
        for name in ("blocked", "brute force"):
            if name not in calls:
                print(f"search {name:11s} {num_codes:>10,} codes: {reasons[name]}", flush=True)
                continue
            median_s, min_s, first_s, num_calls, out = time_calls(
                calls[name], max_calls=args.search_calls, budget_s=args.search_budget_s
            )
            outputs[name] = out
            timed[name] = (median_s, min_s, first_s, num_calls)
            previous[name] = (num_codes, median_s)
            print(
                f"search {name:11s} {num_codes:>10,} codes: {1e3 * median_s:10.3f} ms/call "
                f"({num_queries / median_s:,.0f} queries/s, median of {num_calls})",
                flush=True,
            )
        same = None
        if len(outputs) == 2:
            same = bool(
                np.array_equal(
                    np.asarray(outputs["blocked"][1]), np.asarray(outputs["brute force"][1])
                )
            )
        for name in ("blocked", "brute force"):
            if name not in timed:
                results.append({**base, "search": name, "note": reasons[name]})
                continue
            median_s, min_s, first_s, num_calls = timed[name]
            us_per_query = 1e6 * median_s / num_queries
            speed_up = None
            if name == "blocked" and "brute force" in timed:
                speed_up = timed["brute force"][0] / median_s
            results.append(
                {
                    **base,
                    "search": name,
                    "ms_per_call_median": 1e3 * median_s,
                    "ms_per_call_min": 1e3 * min_s,
                    "first_call_s": first_s,
                    "timed_calls": num_calls,
                    "queries_per_s": num_queries / median_s,
                    "us_per_query_per_million_codes": us_per_query / (num_codes / 1e6),
                    "speed_up_over_brute_force": speed_up,
                    "same_indices_as_brute_force": same,
                    "note": "",
                }
            )
        del table, calls, outputs
    settings = {
        "k": k,
        "num_queries": num_queries,
        "dim": dim,
        "block_size": block_size,
        "exclude": "one distinct table row per query",
        "max_call_s": args.max_call_s,
        "search_calls": args.search_calls,
        "search_budget_s": args.search_budget_s,
    }
    return results, settings


# ---- the report -------------------------------------------------------------------------------


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(report: dict) -> str:
    """The block for benchmarks/RESULTS.md."""
    lines = [
        "## ACN train step and neighbour search (`benchmarks/acn_search.py`)",
        "",
        f"{report['date']}, host {report['host']}, {report['machine']}, jax {report['jax']}, "
        f"{report['device_count']} device(s), load average {report['load_average_start']} "
        f"at start and {report['load_average_end']} at the end; peak memory "
        f"{report['peak_memory']}. Command: `{report['command']}`",
    ]
    if report.get("train_step"):
        s = report["train_step_settings"]
        lines += [
            "",
            f"Train step, {s['acn_variant']} (ACN) against {s['vae_variant']} (the VAE with the "
            f"same networks), batch {s['batch_size']} of real binarised digits, latent "
            f"{s['latent_dim']}, K = {s['num_neighbours']}, search block size "
            f"{s['search_block_size']} (config model.search_block_size); {s['warmup_steps']} "
            f"warm-up steps after compiling, then {s['timed_steps']} steps each, taken in turns:",
            "",
            "| codes | table rows | block | blocks / device | VAE ms/step (median) "
            "| ACN ms/step (median) | ACN / VAE | VAE min | ACN min | ACN compile |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report["train_step"]:
            lines.append(
                f"| {r['num_codes']:,} | {r['table_rows']:,} | {r['block_size']:,} "
                f"| {r['num_blocks_per_device']} | {r['vae_ms_median']:.2f} "
                f"| {r['acn_ms_median']:.2f} | **{r['ratio_median']:.2f}x** "
                f"| {r['vae_ms_min']:.2f} | {r['acn_ms_min']:.2f} | {r['acn_compile_s']:.1f} s |"
            )
        lines += ["", report["target"]["text"]]
    if report.get("search"):
        s = report["search_settings"]
        lines += [
            "",
            f"Neighbour search alone: k = {s['k']} of {s['num_queries']} queries of dimension "
            f"{s['dim']}, {s['exclude']} excluded, N(0, I) table; blocked = "
            f"`nearest_neighbours` (jitted, blocks of up to {s['block_size']:,} rows), brute force "
            "= `brute_force_neighbours` (B x N distances and a stable argsort):",
            "",
            "| codes | search | ms / call (median) | queries/s | us / query / M codes "
            "| speed-up over brute force | same indices | note |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in report["search"]:
            if "ms_per_call_median" not in r:
                lines.append(
                    f"| {r['num_codes']:,} | {r['search']} | - | - | - | - | - | {r['note']} |"
                )
                continue
            same = r["same_indices_as_brute_force"]
            lines.append(
                f"| {r['num_codes']:,} | {r['search']} | {r['ms_per_call_median']:.3f} "
                f"| {r['queries_per_s']:,.0f} | {r['us_per_query_per_million_codes']:.1f} "
                f"| {_num(r['speed_up_over_brute_force'], '.1f')}"
                f"{'x' if r['speed_up_over_brute_force'] is not None else ''} "
                f"| {'-' if same is None else ('yes' if same else 'NO')} | {r['note']} |"
            )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and a few steps")
    parser.add_argument("--out", default=None, help=f"JSON path (default {DEFAULT_OUT})")
    parser.add_argument(
        "--sizes", default=None, help="comma list of table sizes for the search alone"
    )
    parser.add_argument(
        "--train_sizes", default=None, help="comma list of table sizes for the train step"
    )
    parser.add_argument(
        "--block_size", type=int, default=None, help="override config model.search_block_size"
    )
    parser.add_argument("--parts", default="train,search", help="train, search or both")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps after compiling")
    parser.add_argument(
        "--search_calls", type=int, default=20, help="most timed calls per search and size"
    )
    parser.add_argument(
        "--search_budget_s", type=float, default=10.0, help="stop timing a search after this"
    )
    parser.add_argument(
        "--max_call_s",
        type=float,
        default=10.0,
        help="skip a size whose call is predicted slower than this",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = args.steps or 3
        args.warmup = min(args.warmup, 1)
        args.search_calls = min(args.search_calls, 3)
    args.steps = args.steps or 30
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the parts asked for, print the markdown block, write the JSON; returns the report."""
    args = parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",")}
    train_sizes = parse_sizes(args.train_sizes) or list(
        QUICK_TRAIN_SIZES if args.quick else TRAIN_SIZES
    )
    search_sizes = parse_sizes(args.sizes) or list(
        QUICK_SEARCH_SIZES if args.quick else SEARCH_SIZES
    )
    out = _common.output_path(
        args.out, quick=args.quick, default=DEFAULT_OUT, quick_name="acn_search_quick.json"
    )
    report: dict = _common.report_header("benchmarks/acn_search.py", argv, quick=args.quick)
    if "train" in parts:
        report["train_step"], report["train_step_settings"] = train_step_benchmark(
            args, train_sizes
        )
        report["target"] = target_verdict(report["train_step"])
        print(report["target"]["text"], flush=True)
    if "search" in parts:
        report["search"], report["search_settings"] = search_benchmark(args, search_sizes)
    report["load_average_end"] = load_average()
    report["peak_memory"] = peak_memory()

    return _common.write_report(out, report, markdown(report))


if __name__ == "__main__":
    main()
