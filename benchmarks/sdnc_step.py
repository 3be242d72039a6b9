"""The sparse DNC's cost per step against SAM's and the dense DNC's, and against N (Rae et al.
2016, arXiv 1610.09027, Sec. 3.5: the SDNC's links cost O(K_L) per step, not the DNC's O(N^2)).

    python benchmarks/sdnc_step.py                  # writes benchmarks/results/sam/sdnc_step.json
    python benchmarks/sdnc_step.py --quick          # seconds: a check of the script (temp folder)

What is timed, side by side in one process (float32, `deepgen.sam.model.MemoryNetwork`: LSTM of
100 units, word size 16, 4 heads, K = 4, K_L = 8 as `copy_cpu`; batch 16, T = 36 steps of 8
random bits, the mean sigmoid cross-entropy as the loss):

1. The train step's work: one jitted `jax.value_and_grad` of the loss over the sequence, and the
   forward pass alone, at N = 128 (copy_cpu's memory) for sam, sdnc, dnc and ntm.
2. The memory core alone against N: `core.step` vmapped over the batch and scanned over T,
   forward only, on random interface vectors, for sam and sdnc at each of --sizes and for dnc
   up to --dnc_max_words (its N x N links: 4 GiB at N = 8192 and batch 16).

Each program is compiled, called once, then called --repeats times; reported: the median
milliseconds per call and per step (per call / T), and each core's ratio to SAM at the same N.
Run it on an otherwise idle machine (pin it with taskset to compare single cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402
from deepgen.sam import interface  # noqa: E402
from deepgen.sam.model import MemoryNetwork  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "sam" / "sdnc_step.json"
BITS, HIDDEN, WORD_SIZE, HEADS, K, K_L = 8, 100, 16, 4, 4, 8


def spec(kind: str, num_words: int) -> interface.MemorySpec:
    """copy_cpu's memory sizes for a kind at N words."""
    return interface.MemorySpec(
        kind=kind,
        num_words=num_words,
        word_size=WORD_SIZE,
        num_heads=HEADS,
        num_reads=K,
        num_links=K_L,
    )


def median_ms(function, args: tuple, repeats: int) -> float:
    """Compile and call once, then the median of `repeats` waited-for calls, in milliseconds."""
    jax.block_until_ready(function(*args))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def train_step_ms(kind: str, num_words: int, batch: int, steps: int, repeats: int) -> dict:
    """Forward-and-backward and forward-only milliseconds of the whole network over T steps."""
    model = MemoryNetwork(spec(kind, num_words), hidden_size=HIDDEN, output_size=BITS)
    rng = np.random.default_rng(0)
    inputs = jnp.asarray(rng.integers(0, 2, (batch, steps, BITS)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 2, (batch, steps, BITS)), jnp.float32)
    params = jax.jit(model.init)(jax.random.key(0), inputs)

    def loss(params, inputs, targets):
        logits = model.apply(params, inputs)
        return jnp.mean(jnp.logaddexp(0.0, logits) - targets * logits)

    args = (params, inputs, targets)
    return {
        "grad_ms": median_ms(jax.jit(jax.value_and_grad(loss)), args, repeats),
        "forward_ms": median_ms(jax.jit(loss), args, repeats),
    }


def core_ms(kind: str, num_words: int, batch: int, steps: int, repeats: int) -> float:
    """Forward milliseconds of the memory core alone: vmap over the batch, scan over T."""
    memory_spec = spec(kind, num_words)
    core = interface.core(kind)
    size = core.interface_size(memory_spec)
    interfaces = jax.random.normal(jax.random.key(1), (steps, batch, size))

    @jax.jit
    def run(interfaces):
        states = jax.vmap(lambda _: core.init(memory_spec))(jnp.arange(batch))
        step = jax.vmap(lambda state, x: core.step(memory_spec, state, x))
        _, reads = jax.lax.scan(step, states, interfaces)
        return reads

    return median_ms(run, (interfaces,), repeats)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="128,1024,8192,65536", help="N for the core sweep")
    parser.add_argument("--dnc_max_words", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=36)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a check of the script")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    sizes = [int(float(n)) for n in args.sizes.split(",")]
    if args.quick:
        sizes, args.batch, args.steps, args.repeats = [32, 64], 2, 6, 1
    out = Path(
        args.out or (Path(tempfile.gettempdir()) / "sdnc_step.json" if args.quick else DEFAULT_OUT)
    )

    report = {
        "machine": _common.machine_description(),
        "load_average_at_start": _common.load_average(),
        "batch": args.batch,
        "steps": args.steps,
        "train_step": {},
        "core": [],
    }
    train_words = min(128, max(sizes))
    for kind in ("sam", "sdnc", "dnc", "ntm"):
        row = train_step_ms(kind, train_words, args.batch, args.steps, args.repeats)
        report["train_step"][kind] = row
        print(
            f"N={train_words} {kind}: grad {row['grad_ms']:.1f} ms, forward {row['forward_ms']:.1f} ms"
        )
    for num_words in sizes:
        row = {"num_words": num_words}
        for kind in ("sam", "sdnc", "dnc"):
            if kind == "dnc" and num_words > args.dnc_max_words:
                continue
            row[f"{kind}_ms"] = core_ms(kind, num_words, args.batch, args.steps, args.repeats)
        for kind in ("sdnc", "dnc"):
            if f"{kind}_ms" in row:
                row[f"{kind}_over_sam"] = row[f"{kind}_ms"] / row["sam_ms"]
        report["core"].append(row)
        print(
            f"N={num_words} core forward: "
            + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if k != "num_words")
        )
    report["load_average_at_end"] = _common.load_average()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
