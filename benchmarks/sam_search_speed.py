"""SAM's neighbour searches: time per sparse read and per write against the number of words N.

Full run (writes benchmarks/results/sam/search_speed.json; a few minutes on a free 2-core CPU,
most of them building the host HNSW index at N = 1e5):

    python benchmarks/sam_search_speed.py
    python benchmarks/sam_search_speed.py --with_1e6     # adds N = 1e6 (host build: minutes)

Seconds, small sizes, for a check of the script (writes under the temp folder; compiled at XLA
backend optimisation level 1, so its timings are not ones to report):

    python benchmarks/sam_search_speed.py --quick

What is timed (Rae et al. 2016, arXiv 1610.09027, Sec. 3.3 and Supp. E: word size 32, 4 heads,
K = 4, batch 1; deepgen/sam/search.py):

1. One sparse read: `search.nearest(spec, state, memory, queries, K)` jitted, under `jax.vmap`
   over a batch of 1 (as the SAM model calls it), R = 4 queries, K = 4, on a memory of N random
   N(0, 1) words of size M = 32 (a full memory: the hard case for an ANN index), for each search
   of `MemorySpec.search`: exact (`lax.top_k`), blocked (blocks of --block words), approx
   (`lax.approx_max_k`) and host (hnswlib HNSW via `jax.pure_callback`). Each is compiled, called
   --warmup times, then --repeats times, each call waited for; reported: median microseconds
   per read (R queries) and the ratio host / exact.
2. One write: SAM's write touches J = R K + 1 = 17 words per step (the read words and the least
   recently used one). A jitted `memory.at[rows].set(words)` followed by `search.after_write`
   (memory donated, so the scatter is in place), on the host state chained from call to call
   (the first call copies the shared base index; it is in the warm-up). Reported: median
   microseconds per step, the same write without after_write (what the device searches pay),
   and the host's update cost per written row = (difference) / J. The graph is rebuilt from the
   live words after N insertions (none happen in the timed calls): one rebuild is timed and its
   share per written row (rebuild time / N) reported.
3. Per SAM step (one write of J rows and one read): exact = read; host = read + write's update
   (+ J x the rebuild share); the ratio host / exact.
4. Host recall@K against `nearest_numpy` on the memory after the timed writes, over --recall
   queries, and the host index build time (`search.init`: hashing the memory and building HNSW
   from its rows; the SAM model's all-zero initial memory builds an empty graph instead).
"""

from __future__ import annotations

import argparse
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
from deepgen.sam import search  # noqa: E402
from deepgen.sam.interface import MemorySpec  # noqa: E402

WORD_SIZE, HEADS, K = 32, 4, 4  # Supp. E: word size 32, 4 heads; Supp. C: K = 4
ROWS_PER_WRITE = HEADS * K + 1  # the previous read words and the LRA word (Eq. 5)
SIZES = (1_000, 10_000, 100_000)
SIZE_1E6 = 1_000_000
QUICK_SIZES = (1_000, 10_000)
SEARCHES = ("exact", "blocked", "approx", "host")
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "sam" / "search_speed.json"


def median_us(call: Callable[[], object], *, warmup: int, repeats: int) -> float:
    """Median wall microseconds of call() (its result waited for), after warmup calls."""
    for _ in range(warmup):
        jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - started)
    return 1e6 * statistics.median(times)


def time_size(num_words: int, *, block: int, warmup: int, repeats: int, recall: int) -> dict:
    """Every search's read time, the write times and the host recall at one memory size."""
    rng = np.random.default_rng(num_words)
    memory = jnp.asarray(rng.standard_normal((1, num_words, WORD_SIZE)), jnp.float32)
    queries = jnp.asarray(rng.standard_normal((1, HEADS, WORD_SIZE)), jnp.float32)
    result: dict = {"N": num_words}

    def spec_of(kind: str) -> MemorySpec:
        return MemorySpec(num_words=num_words, word_size=WORD_SIZE, search=kind, search_block=block)

    states = {}
    for kind in SEARCHES:
        spec = spec_of(kind)
        init = jax.jit(jax.vmap(lambda m, spec=spec: search.init(spec, m)))
        started = time.perf_counter()
        states[kind] = jax.block_until_ready(init(memory))
        if kind == "host":
            result["host_build_s"] = time.perf_counter() - started
        read = (
            jax.jit(jax.vmap(lambda s, m, q, spec=spec: search.nearest(spec, s, m, q, K)))
            .lower(states[kind], memory, queries)
            .compile()
        )
        result[f"{kind}_read_us"] = median_us(
            lambda read=read, kind=kind: read(states[kind], memory, queries),
            warmup=warmup,
            repeats=repeats,
        )

    # Writes of J rows: the scatter alone (device searches) and with the host update.
    host_spec = spec_of("host")
    writes = [
        (
            jnp.asarray(rng.choice(num_words, (1, ROWS_PER_WRITE), replace=False), jnp.int32),
            jnp.asarray(rng.standard_normal((1, ROWS_PER_WRITE, WORD_SIZE)), jnp.float32),
        )
        for _ in range(warmup + repeats)
    ]

    def write_only(memory_NxM, rows_J, words_JxM):
        return memory_NxM.at[rows_J].set(words_JxM)

    def write_and_update(memory_NxM, state, rows_J, words_JxM):
        memory_NxM = memory_NxM.at[rows_J].set(words_JxM)
        return memory_NxM, search.after_write(host_spec, state, rows_J, memory_NxM)

    scatter = jax.jit(jax.vmap(write_only), donate_argnums=0)
    update = jax.jit(jax.vmap(write_and_update), donate_argnums=0)
    carry = {"memory": memory + 0, "state": states["host"], "step": 0}

    def scatter_call():
        rows, words = writes[carry["step"] % len(writes)]
        carry["step"] += 1
        carry["memory"] = scatter(carry["memory"], rows, words)
        return carry["memory"]

    result["write_only_us"] = median_us(scatter_call, warmup=warmup, repeats=repeats)
    carry["memory"], carry["step"] = memory + 0, 0

    def update_call():
        rows, words = writes[carry["step"]]
        carry["step"] += 1
        carry["memory"], carry["state"] = update(carry["memory"], carry["state"], rows, words)
        return carry["state"]

    result["host_write_us"] = median_us(update_call, warmup=warmup, repeats=repeats)
    result["host_update_per_row_us"] = max(
        0.0, (result["host_write_us"] - result["write_only_us"]) / ROWS_PER_WRITE
    )

    # Recall of the host index on the written memory, against the numpy reference.
    probes = jnp.asarray(rng.standard_normal((recall // HEADS, 1, HEADS, WORD_SIZE)), jnp.float32)
    read = jax.jit(jax.vmap(lambda s, m, q: search.nearest(host_spec, s, m, q, K)))
    final = np.asarray(carry["memory"][0])
    hits = 0
    for probe in probes:
        got = np.asarray(read(carry["state"], carry["memory"], probe))[0]
        expected = search.nearest_numpy(final, np.asarray(probe[0]), K)
        hits += sum(len(set(g) & set(e)) for g, e in zip(got, expected, strict=True))
    result["host_recall"] = hits / (len(probes) * HEADS * K)
    # The graph is rebuilt from the live words after every N insertions (none in the timed calls).
    index = search.host_index(int(np.asarray(carry["state"])[0, 0]))
    started = time.perf_counter()
    index.rebuild()
    result["host_rebuild_s"] = time.perf_counter() - started
    result["host_rebuild_per_row_us"] = 1e6 * result["host_rebuild_s"] / num_words
    result["host_over_exact_read"] = result["host_read_us"] / result["exact_read_us"]
    host_step = result["host_read_us"] + result["host_write_us"] - result["write_only_us"]
    host_step += ROWS_PER_WRITE * result["host_rebuild_per_row_us"]
    result["host_over_exact_step"] = host_step / result["exact_read_us"]
    search.release_all()
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="comma-separated N (default 1e3,1e4,1e5)")
    parser.add_argument("--with_1e6", action="store_true", help="add N = 1e6")
    parser.add_argument("--block", type=int, default=MemorySpec().search_block)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--recall", type=int, default=64, help="queries for the host recall")
    parser.add_argument("--ef_search", type=int, default=None, help="host HNSW (HostConfig)")
    parser.add_argument("--ef_construction", type=int, default=None, help="host HNSW")
    parser.add_argument("--links", type=int, default=None, help="host HNSW links per node")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    _common.compile_quickly(args.quick)
    sizes = _common.parse_sizes(args.sizes) or list(QUICK_SIZES if args.quick else SIZES)
    if args.with_1e6 and SIZE_1E6 not in sizes:
        sizes.append(SIZE_1E6)
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    repeats = args.repeats or (10 if args.quick else 50)
    out = _common.output_path(
        args.out, quick=args.quick, default=DEFAULT_OUT, quick_name="sam_search_speed.json"
    )
    report = _common.report_header("benchmarks/sam_search_speed.py", argv, quick=args.quick)
    host_changes = {
        name: getattr(args, name)
        for name in ("ef_search", "ef_construction", "links")
        if getattr(args, name) is not None
    }
    search.configure_host(**host_changes)
    config = search.host_config()
    report["settings"] = {
        "sizes": sizes,
        "word_size": WORD_SIZE,
        "heads": HEADS,
        "K": K,
        "batch": 1,
        "rows_per_write": ROWS_PER_WRITE,
        "block": args.block,
        "warmup": warmup,
        "repeats": repeats,
        "recall_queries": args.recall,
        "approx_recall_target": search.APPROX_RECALL_TARGET,
        "host": vars(config),
    }
    rows = []
    for num_words in sizes:
        row = time_size(
            num_words, block=args.block, warmup=warmup, repeats=repeats, recall=args.recall
        )
        rows.append(row)
        print(row, flush=True)
    report["results"] = rows
    report["load_average_end"] = _common.load_average()
    report["peak_memory"] = _common.peak_memory()

    header = (
        "| N | exact read | blocked read | approx read | host read | host / exact read | "
        "write (17 rows) | host write | host update / row | host / exact per step | "
        "host recall@4 | host build | host rebuild (per row) |"
    )
    lines = [header, "|---" * header.count(" | ") + "|---|"]
    for r in rows:
        lines.append(
            f"| {r['N']:,} | {r['exact_read_us']:.0f} us | {r['blocked_read_us']:.0f} us | "
            f"{r['approx_read_us']:.0f} us | {r['host_read_us']:.0f} us | "
            f"{r['host_over_exact_read']:.2f} | {r['write_only_us']:.0f} us | "
            f"{r['host_write_us']:.0f} us | {r['host_update_per_row_us']:.0f} us | "
            f"{r['host_over_exact_step']:.2f} | {r['host_recall']:.3f} | "
            f"{r['host_build_s']:.2f} s | {r['host_rebuild_s']:.2f} s "
            f"({r['host_rebuild_per_row_us']:.0f} us) |"
        )
    markdown = "\n".join(
        [
            f"{report['date']}, {report['machine']}, jax {report['jax']}, load "
            f"{report['load_average_start']}: `{report['command']}`",
            "",
            f"Medians of {repeats} calls, batch 1, M = {WORD_SIZE}, R = {HEADS}, K = {K}, "
            f"blocks of {args.block}; HNSW links {config.links}, ef_construction "
            f"{config.ef_construction}, ef_search {config.ef_search}.",
            "",
            *lines,
        ]
    )
    return _common.write_report(out, report, markdown)


if __name__ == "__main__":
    main()
