"""Train-step throughput of every BFN variant: steps/s, examples/s, tokens/s, model TFLOP/s, peak memory.

    python benchmarks/bfn_throughput.py --variant=mnist --batch_size=512 --dtype=bfloat16 --record

Times the same jitted, sharded, state-donating step that `experiments.main` runs, on random
data of the variant's shape (class indices, or bin centres for CIFAR-10; the input pipeline is
not timed). Model FLOPs: 6N + 12LdT per token for the text8 transformer (the convention the
issue's targets use), XLA's own count of the compiled step for the U-Nets.
--record adds a row to the throughput table in benchmarks/RESULTS.md.
"""

import argparse
import datetime
import platform
import resource
import socket
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import apply_overrides  # noqa: E402
from configs import bfn as bfn_configs  # noqa: E402
from deepgen.bfn.model import count_params  # noqa: E402
from deepgen.bfn.transformer import model_flops_per_token  # noqa: E402
from deepgen.core import mesh as mesh_lib  # noqa: E402
from experiments.bfn.method import BFN  # noqa: E402


def peak_memory_bytes() -> tuple[int, str]:
    """Peak device memory where the backend reports it, else the process's peak RSS."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host peak RSS"


def main() -> None:
    """Parse flags, time the train step, print a table row, optionally record it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="mnist_cpu", choices=sorted(bfn_configs.VARIANTS))
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=20, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="config override a.b=value")
    parser.add_argument("--record", action="store_true", help="append a row to RESULTS.md")
    args = parser.parse_args()

    config = bfn_configs.get_config(args.variant)
    if args.batch_size:
        config.train.batch_size = args.batch_size
    if args.dtype:
        config.model.dtype = args.dtype
    apply_overrides(config, args.set)

    timing = time_train_step(config, steps=args.steps, warmup=args.warmup)
    experiment, abstract, metrics = timing["experiment"], timing["abstract"], timing["metrics"]
    steps_per_s, compile_s, xla_flops = (
        timing["steps_per_s"],
        timing["compile_s"],
        timing["xla_flops"],
    )
    peak, peak_kind = timing["peak_bytes"], timing["peak_kind"]
    batch_size = int(config.train.batch_size)

    device = jax.devices()[0]
    machine = f"{device.device_kind} x{jax.device_count()} ({jax.default_backend()}), {platform.processor() or platform.machine()}"
    params = count_params(abstract.params)
    flops_per_step, flops_kind = xla_flops, "XLA cost analysis"
    tokens = ""
    if config.data.name == "text8":
        seq_len = experiment.variable_shape[0]
        flops_per_token = model_flops_per_token(
            config.model.num_layers, config.model.width, seq_len, params
        )
        flops_per_step, flops_kind = flops_per_token * batch_size * seq_len, "6N + 12LdT"
        tokens = f" tokens/s={steps_per_s * batch_size * seq_len:,.0f}"
    tflops = flops_per_step * steps_per_s / 1e12 if flops_per_step else float("nan")
    row = (
        f"| {datetime.date.today()} | {socket.gethostname()} | {machine} | jax {jax.__version__} | "
        f"{args.variant} | {params / 1e6:.2f}M | {batch_size} | {config.model.dtype} | "
        f"{steps_per_s:.2f} | {steps_per_s * batch_size:,.0f} | {peak / 2**30:.2f} GiB ({peak_kind}) | "
        f"{compile_s:.1f} s | {tflops:.3g} ({flops_kind}) | `python benchmarks/bfn_throughput.py {' '.join(sys.argv[1:])}` |"
    )
    print(
        f"variant={args.variant} params={params:,} batch={batch_size} dtype={config.model.dtype} "
        f"steps/s={steps_per_s:.2f} examples/s={steps_per_s * batch_size:,.0f} "
        f"peak={peak / 2**30:.2f} GiB ({peak_kind}) compile={compile_s:.1f}s{tokens} "
        f"model TFLOP/s={tflops:.3g} ({flops_kind}; XLA counts {xla_flops / 1e9:,.1f} GFLOP/step) "
        f"loss={float(metrics['loss']):.4f}"
    )
    if args.record:
        record_row(ROOT / "benchmarks" / "RESULTS.md", row.replace(" --record", ""))


def time_train_step(config, *, steps: int, warmup: int, seed: int = 0) -> dict:
    """Build the variant and time its jitted, donating train step on random data of its shape."""
    experiment = BFN(config)
    mesh = experiment.mesh
    abstract = jax.eval_shape(experiment.init_state, jax.random.key(seed))
    shardings = mesh_lib.state_shardings(abstract, mesh)
    state = jax.jit(experiment.init_state, out_shardings=shardings)(jax.random.key(seed))
    batch_sharding = mesh_lib.batch_sharding(mesh)
    step_fn = jax.jit(
        experiment.train_step,
        in_shardings=(shardings, batch_sharding, mesh_lib.replicated(mesh)),
        out_shardings=(shardings, mesh_lib.replicated(mesh)),
        donate_argnums=(0,),
    )
    batch_size = int(config.train.batch_size)
    shape = (batch_size, *experiment.variable_shape)
    levels = np.random.default_rng(seed).integers(0, experiment.num_classes, shape, dtype=np.int32)
    if experiment.flow.batch_dtype == np.int32:  # class indices
        x = levels
    else:  # continuous data: bin centres in [-1, 1]
        x = ((2 * levels + 1) / experiment.num_classes - 1).astype(np.float32)
    batch = jax.device_put({"x": jnp.asarray(x)}, batch_sharding)
    rng = jax.random.key(seed + 1)

    started = time.perf_counter()
    compiled = step_fn.lower(state, batch, rng).compile()
    xla_flops = _xla_flops(compiled)
    state, metrics = step_fn(state, batch, rng)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - started
    for _ in range(warmup):
        state, metrics = step_fn(state, batch, rng)
    jax.block_until_ready(metrics)
    started = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, batch, rng)
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - started
    peak, peak_kind = peak_memory_bytes()
    return {
        "experiment": experiment,
        "abstract": abstract,
        "metrics": metrics,
        "steps_per_s": steps / seconds,
        "compile_s": compile_s,
        "xla_flops": xla_flops,
        "peak_bytes": peak,
        "peak_kind": peak_kind,
    }


def _xla_flops(compiled) -> float:
    """FLOPs of one step as XLA's cost analysis counts them (0 where the backend has none)."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return 0.0
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", 0.0))


def record_row(path: Path, row: str) -> None:
    """Insert the row at the end of the throughput table (the first table in the file)."""
    lines = path.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("|---"))
    end = header + 1
    while end < len(lines) and lines[end].startswith("| "):
        end += 1
    lines.insert(end, row)
    path.write_text("\n".join(lines) + "\n")
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
