"""Sampling speed of BFN: samples/s against the number of steps, for the original sampler and BFN-Solver.

    python benchmarks/bfn_sampling.py --variant=text8_cpu --n_steps=10,25,50,100,1000 \
        --solver=bfn,ode2 --batch_size=64 [--workdir=runs/text8_cpu] [--out=sampling.md]

Each (solver, n) is one jitted call that runs the whole sampler (one lax.scan of n steps and the
t = 1 readout, n + 1 network calls), sharded over the batch like `--mode=sample`; it is timed after
a compile-and-warm-up call as the median of --repeats calls. Parameters are random (the speed
does not depend on them) unless --workdir names a trained run. Solvers: "bfn" is the data type's
original sampler (deepgen/bfn/flows.py); sde1, sde2, ode1, ode2 are BFN-Solver
(deepgen/bfn/solver.py; for continuous data sde1 is the original update itself, and for
discretised data the solvers follow the output's mean, which gives the samples' mean rather
than the original's bin draws). Prints a markdown table and writes it to --out
when given; nothing is recorded in RESULTS.md.
"""

import argparse
import datetime
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import parse_config, steps_table  # noqa: E402
from configs import bfn as bfn_configs  # noqa: E402
from deepgen.bfn import continuous  # noqa: E402
from deepgen.bfn import solver as bfn_solver  # noqa: E402
from deepgen.bfn.flows import DiscreteFlow  # noqa: E402
from deepgen.core import mesh as mesh_lib  # noqa: E402
from deepgen.core.errors import UserError  # noqa: E402
from experiments.bfn.method import BFN  # noqa: E402

SOLVERS = ("bfn", *bfn_solver.SOLVERS[1:])


def make_sampler(experiment: BFN, name: str, n_steps: int, batch_size: int):
    """A jitted (params, rng) -> samples for one solver and number of steps, batch-sharded."""
    flow = experiment.flow
    shape = (batch_size, *experiment.variable_shape)
    known_mask = np.zeros(shape, bool)
    known_values = np.zeros(shape, flow.batch_dtype)

    def run(params, rng):
        common = dict(
            rng=rng,
            batch_size=batch_size,
            variable_shape=experiment.variable_shape,
            n_steps=n_steps,
        )
        if name == "bfn":
            samples, _ = flow.sample(
                params, known_mask=known_mask, known_values=known_values, **common
            )
            return samples
        if isinstance(flow, DiscreteFlow):
            return bfn_solver.sample_discrete(
                lambda theta, t_B, r: flow.log_probs(params, theta, t_B, train=False, rng=r),
                num_classes=flow.num_classes,
                beta1=flow.beta1,
                solver=name,
                **common,
            )[0]
        if flow.discretised:  # the solvers move mu with the output's mean E[k_c] as x_hat
            x_hat_fn = lambda mu, t_B, r: continuous.discretised_mean(
                flow.probs(params, mu, t_B, train=False, rng=r)
            )
        else:
            x_hat_fn = lambda mu, t_B, r: flow.x_hat(params, mu, t_B, train=False, rng=r)
        return bfn_solver.sample_continuous(x_hat_fn, sigma1=flow.sigma1, solver=name, **common)

    return jax.jit(run, out_shardings=mesh_lib.batch_sharding(experiment.mesh))


def main() -> None:
    """Parse flags, time every (solver, n), print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="text8_cpu", choices=sorted(bfn_configs.VARIANTS))
    parser.add_argument("--set", action="append", default=[], help="config override a.b=value")
    parser.add_argument("--n_steps", default="10,25,50,100,1000")
    parser.add_argument("--solver", default="bfn,ode2", help=f"comma-separated, from {SOLVERS}")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16"))
    parser.add_argument("--workdir", default="", help="restore this run's parameters (optional)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per cell (median)")
    parser.add_argument("--out", default="", help="also write the markdown table here")
    args = parser.parse_args()

    solvers = [s for s in args.solver.split(",") if s]
    n_steps = [int(n) for n in args.n_steps.split(",") if n]
    config = parse_config(args.variant, args.set)
    if args.dtype:
        config.model.dtype = args.dtype
    experiment = BFN(config)
    for name in solvers:
        if name not in SOLVERS:
            parser.error(f"--solver: {name!r} is not one of {SOLVERS}")
    devices = jax.device_count()
    if args.batch_size % devices:
        parser.error(f"--batch_size={args.batch_size} must be divisible by the {devices} devices")
    if args.workdir:
        try:
            params = experiment.eval_params(experiment.restore(args.workdir))
        except UserError as error:
            sys.exit(f"error: {error}")
    else:
        params = jax.jit(experiment.init_state)(jax.random.key(0)).params

    device = jax.devices()[0]
    machine = f"{device.device_kind} x{devices} ({jax.default_backend()}), {platform.machine()}"
    rows = {}
    for name in solvers:
        for n in n_steps:
            run = make_sampler(experiment, name, n, args.batch_size)
            started = time.perf_counter()
            jax.block_until_ready(run(params, jax.random.key(0)))
            compile_s = time.perf_counter() - started
            times = []
            for r in range(args.repeats):
                started = time.perf_counter()
                jax.block_until_ready(run(params, jax.random.key(r + 1)))
                times.append(time.perf_counter() - started)
            seconds = statistics.median(times)
            rows[name, n] = (args.batch_size / seconds, (n + 1) / seconds, seconds, compile_s)
            print(
                f"{name:>4} n={n:<5} {args.batch_size / seconds:10.2f} samples/s "
                f"{(n + 1) / seconds:9.1f} network calls/s  {seconds:.3f} s/call "
                f"(first call {compile_s:.1f} s)",
                flush=True,
            )

    lines = [
        f"## BFN sampling speed, `{args.variant}` {' '.join(args.set)} ({datetime.date.today()})",
        "",
        f"{machine}, {socket.gethostname()}, jax {jax.__version__}, batch {args.batch_size}, "
        f"dtype {config.model.dtype}, {experiment.num_params():,} params "
        f"({'restored from ' + args.workdir if args.workdir else 'random init'}); "
        f"samples/s = batch / median of {args.repeats} calls after warm-up "
        "(each call: n steps + the t = 1 readout).",
        "",
    ]
    table_rows = [
        (f"{name} ({unit})", [f"{rows[name, n][column]:.3g}" for n in n_steps])
        for column, unit in enumerate(("samples/s", "network calls/s"))
        for name in solvers
    ]
    lines += steps_table("solver", n_steps, table_rows)
    lines += ["", f"Command: `python benchmarks/bfn_sampling.py {' '.join(sys.argv[1:])}`", ""]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
