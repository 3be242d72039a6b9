"""Cost per step of the SnAp/RTRL/UORO/BPTT gradient estimators against hidden size k and density d.

    nice -n 5 python benchmarks/snap_cost.py --cells=gru --sizes=16,32,64,128 --densities=1.0,0.1 \
        --out_dir=runs/snap_cost

Menick et al. 2020 (arXiv 2006.07232), Section 3 / Table 1: RTRL costs O(k^4) per step, SnAp-1 O(p) like
BPTT, SnAp-2 O(p * c) on sparse networks. For each (cell, density, k, estimator) this times one
unbatched stream: a jitted lax.scan of L steps of `estimator.step` (after two warm-up calls,
block_until_ready, median and min of --repeats, the estimators of one problem timed in turn in
each round), divided by L. "snap1_bL" is SnAp-1 folded every L steps (estimator.snap_block). BPTT is `bptt_gradients` over L steps (one
forward and one backward pass) divided by L. Memory: bytes of the estimator's traces pytree (for BPTT:
the residuals its backward pass keeps; the gradient accumulators, the size of the parameters, are not
counted), and the device's peak bytes where `memory_stats()` reports it.
Fitted exponents are log-log least squares of time against k (and against the kept parameter count p).
RTRL above --rtrl_max_size is not run; its time there is extrapolated from the fit and labelled so.
Writes snap_cost.md (the tables) and snap_cost.png (log-log plot) into --out_dir.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepgen.snap import cells  # noqa: E402
from deepgen.snap import estimators as est_lib  # noqa: E402

NUM_CLASSES = 16


def readout_loss(readout_params, h_K, y):
    """Softmax cross-entropy of a linear readout (nats)."""
    logits = readout_params["w"] @ h_K + readout_params["b"]
    return -jax.nn.log_softmax(logits)[y]


def tree_bytes(tree) -> int:
    """Bytes of all array leaves."""
    return int(
        sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(tree) if hasattr(leaf, "dtype"))
    )


def peak_device_bytes() -> int | None:
    """Peak bytes in use on device 0 where the backend reports it (GPU/TPU), else None."""
    stats = jax.devices()[0].memory_stats() or {}
    return int(stats["peak_bytes_in_use"]) if "peak_bytes_in_use" in stats else None


def make_problem(kind: str, k: int, density: float, input_size: int, steps: int):
    """Cell config, params, masks, readout params and an L-step random stream."""
    config = cells.CellConfig(kind, input_size=input_size, hidden_size=k, density=density)
    params, masks = cells.init_cell(config, jax.random.key(0))
    readout_params = {
        "w": jax.random.normal(jax.random.key(1), (NUM_CLASSES, k)) / np.sqrt(k),
        "b": jnp.zeros((NUM_CLASSES,)),
    }
    xs = jax.random.normal(jax.random.key(2), (steps, input_size))
    ys = jax.random.randint(jax.random.key(3), (steps,), 0, NUM_CLASSES)
    return config, params, masks, readout_params, xs, ys


def split_name(name: str) -> tuple[str, int]:
    """("snap1", 32) for "snap1_b32" (SnAp-1 folded every 32 steps); (name, 1) otherwise."""
    base_name, _, block = name.partition("_b")
    return base_name, int(block or 1)


def prepare_estimator(name, config, params, masks, readout_params, xs, ys):
    """(jitted call, its args, trace bytes) of L steps of the online estimator `name` ("snap1_bL": blocked)."""
    base_name, block = split_name(name)
    estimator = est_lib.make_estimator(
        base_name, config, readout_loss=readout_loss, masks=masks, snap_block=block
    )
    state0 = cells.initial_state(config)
    traces = estimator.init_traces(params, masks, readout_params, state0)
    keys = jax.random.split(jax.random.key(4), xs.shape[0])

    @jax.jit
    def run(params, masks, readout_params, state, traces, xs, ys, keys):
        state, traces, losses = est_lib.scan_steps(
            estimator, params, masks, readout_params, state, traces, xs, ys, keys
        )
        return state, traces["grad_cell"], losses

    influence = {key: value for key, value in traces.items() if not key.startswith("grad_")}
    args = (params, masks, readout_params, state0, traces, xs, ys, keys)
    return run, args, tree_bytes(influence)


def prepare_bptt(config, params, masks, readout_params, xs, ys):
    """(jitted call, its args, bytes of the backward's residuals) of BPTT over the L steps."""
    state0 = cells.initial_state(config)

    @jax.jit
    def run(params, masks, readout_params, state0, xs, ys):
        return est_lib.bptt_gradients(
            config, params, masks, readout_params, state0, xs, ys, readout_loss
        )

    def total_loss(p):
        return est_lib.bptt_gradients(
            config, p, masks, readout_params, state0, xs, ys, readout_loss
        )[1]

    _, vjp_fn = jax.vjp(total_loss, params)
    residual_bytes = tree_bytes(vjp_fn) - tree_bytes(params)
    return run, (params, masks, readout_params, state0, xs, ys), max(residual_bytes, 0)


def interleaved_seconds(calls: dict, repeats: int) -> dict:
    """{name: (median, min)} wall seconds of each call, the calls timed in turn in every round.

    Interleaving spreads this VM's slow phases over all estimators of one problem, so their
    ratios are fairer than timing each estimator's repeats back to back.
    """
    for fn, args in calls.values():
        for _ in range(2):  # the first call compiles
            jax.block_until_ready(fn(*args))
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (fn, args) in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def fit_exponent(xs, ys) -> float:
    """Slope of log y against log x (least squares)."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def human_bytes(num: float | None) -> str:
    if num is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num < 1024 or unit == "GiB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.1f} GiB"


def main() -> None:
    """Parse flags, run the sweep, print and write the tables and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="gru", help="comma list of vanilla,gru,lstm")
    parser.add_argument("--sizes", default="16,32,64,128", help="comma list of hidden sizes k")
    parser.add_argument("--densities", default="1.0,0.1", help="comma list of weight densities")
    parser.add_argument(
        "--estimators", default="bptt,snap1,snap1_b16,snap1_b32,snap2,snap3,uoro,rtrl"
    )
    parser.add_argument(
        "--rtrl_max_size", type=int, default=128, help="largest k at which RTRL is run"
    )
    parser.add_argument(
        "--snap_max_entries", type=float, default=2e8, help="skip SnAp-n above this many entries"
    )
    parser.add_argument("--input_size", type=int, default=32)
    parser.add_argument(
        "--steps", type=int, default=32, help="L: steps per timed call (the BPTT window)"
    )
    parser.add_argument(
        "--rtrl_steps", type=int, default=4, help="L for RTRL at k >= 128 (it is slow)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out_dir", default="runs/snap_cost")
    parser.add_argument(
        "--quick", action="store_true", help="about one minute: gru, k in 16,32,64, dense and d=0.1"
    )
    args = parser.parse_args()
    if args.quick:
        args.cells, args.sizes, args.densities = "gru", "16,32,64", "1.0,0.1"
        args.steps, args.repeats, args.rtrl_max_size = 16, 3, 64

    cell_kinds = args.cells.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    densities = [float(d) for d in args.densities.split(",")]
    names = args.estimators.split(",")
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}",
        flush=True,
    )

    rows = []  # dicts: cell, density, k, p, estimator, seconds, trace_bytes, peak, note
    for kind in cell_kinds:
        for density in densities:
            for k in sizes:
                config, params, masks, readout_params, xs, ys = make_problem(
                    kind, k, density, args.input_size, args.steps
                )
                kept = cells.count_params(params, masks)
                calls, steps, trace_sizes, notes = {}, {}, {}, {}
                for name in names:
                    if name == "bptt":
                        run, run_args, trace_sizes[name] = prepare_bptt(
                            config, params, masks, readout_params, xs, ys
                        )
                        calls[name], steps[name], notes[name] = (run, run_args), len(xs), ""
                        continue
                    if name == "rtrl" and k > args.rtrl_max_size:
                        continue
                    block = split_name(name)[1]
                    if len(xs) % block:  # time whole blocks only: the fold is part of the cost
                        print(f"skip {name}: --steps={len(xs)} is not a multiple of {block}")
                        continue
                    if name.startswith("snap"):
                        structure = est_lib.snap_structure(
                            config, masks, int(split_name(name)[0][4:])
                        )
                        if est_lib.snap_trace_size(structure, params) > args.snap_max_entries:
                            print(
                                f"skip {name} {kind} d={density} k={k}: too many entries",
                                flush=True,
                            )
                            continue
                    run_xs, run_ys, notes[name] = xs, ys, ""
                    if name == "rtrl" and k >= 128:
                        run_xs, run_ys = xs[: args.rtrl_steps], ys[: args.rtrl_steps]
                        notes[name] = f"L={args.rtrl_steps}"
                    run, run_args, trace_sizes[name] = prepare_estimator(
                        name, config, params, masks, readout_params, run_xs, run_ys
                    )
                    calls[name], steps[name] = (run, run_args), len(run_xs)
                timings = interleaved_seconds(calls, args.repeats)
                for name, (median, fastest) in timings.items():
                    row = dict(
                        cell=kind,
                        density=density,
                        k=k,
                        p=kept,
                        estimator=name,
                        seconds=median / steps[name],
                        fastest=fastest / steps[name],
                        trace_bytes=trace_sizes[name],
                        peak=peak_device_bytes(),
                        note=notes[name],
                    )
                    rows.append(row)
                    print(
                        f"{kind:7s} d={density:<4} k={k:<4} p={kept:<8d} {name:10s} "
                        f"{row['seconds'] * 1e3:9.3f} ms/step  traces {human_bytes(trace_sizes[name])}",
                        flush=True,
                    )

    report = build_report(rows, cell_kinds, densities, sizes, names, args)
    print(report)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "snap_cost.md").write_text(report + "\n")
    plot(rows, cell_kinds, densities, names, out_dir / "snap_cost.png")
    print(f"wrote {out_dir / 'snap_cost.md'} and {out_dir / 'snap_cost.png'}")


def build_report(rows, cell_kinds, densities, sizes, names, args) -> str:
    """Markdown: the measurements, the fitted exponents, SnAp-1/BPTT ratios, SnAp-2 vs RTRL."""
    lines = [
        f"device: {jax.devices()[0].device_kind}; L = {args.steps} steps per timed call; "
        f"median of {args.repeats}; float32; one unbatched stream",
        "",
        "| cell | density | k | kept params | estimator | ms / step (median) | min | traces | device peak | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {r['density']} | {r['k']} | {r['p']} | {r['estimator']} | "
            f"{r['seconds'] * 1e3:.3f} | {r['fastest'] * 1e3:.3f} | {human_bytes(r['trace_bytes'])} | {human_bytes(r['peak'])} | {r['note']} |"
        )
    lines += ["", "Fitted exponents (log-log least squares): time ∝ k^a, time ∝ p^b", ""]
    lines += [
        "| cell | density | estimator | sizes | a (vs k) | b (vs kept p) | a from min times "
        "| a, largest 3 sizes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fits = {}
    for kind in cell_kinds:
        for density in densities:
            for name in names:
                sel = [
                    r
                    for r in rows
                    if (r["cell"], r["density"], r["estimator"]) == (kind, density, name)
                ]
                if len(sel) < 2:
                    continue
                ks = [r["k"] for r in sel]
                a = fit_exponent(ks, [r["seconds"] for r in sel])
                b = fit_exponent([r["p"] for r in sel], [r["seconds"] for r in sel])
                a_min = fit_exponent(ks, [r["fastest"] for r in sel])
                tail = sel[-3:]
                a_tail = fit_exponent([r["k"] for r in tail], [r["seconds"] for r in tail])
                fits[(kind, density, name)] = (a, sel)
                lines.append(
                    f"| {kind} | {density} | {name} | {','.join(map(str, ks))} | {a:.2f} | {b:.2f} "
                    f"| {a_min:.2f} | {a_tail:.2f} |"
                )
    lines += ["", "SnAp-1 / BPTT time per step (BPTT = one L-step forward+backward / L)", ""]
    lines += [
        "| cell | density | k | estimator | ratio (median) | ratio (min) |",
        "|---|---|---|---|---|---|",
    ]
    index = {(r["cell"], r["density"], r["k"], r["estimator"]): r for r in rows}
    snap1_names = [name for name in names if split_name(name)[0] == "snap1"]
    for kind in cell_kinds:
        for density in densities:
            for k in sizes:
                bptt = index.get((kind, density, k, "bptt"))
                for name in snap1_names:
                    snap1 = index.get((kind, density, k, name))
                    if snap1 and bptt:
                        lines.append(
                            f"| {kind} | {density} | {k} | {name} "
                            f"| {snap1['seconds'] / bptt['seconds']:.2f} "
                            f"| {snap1['fastest'] / bptt['fastest']:.2f} |"
                        )
    lines += [
        "",
        "SnAp-2 vs RTRL (RTRL beyond --rtrl_max_size: extrapolated from its fitted k-exponent)",
        "",
    ]
    lines += [
        "| cell | density | k | snap2 ms | rtrl ms | rtrl/snap2 | rtrl traces |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in cell_kinds:
        for density in densities:
            for k in sizes:
                snap2 = index.get((kind, density, k, "snap2"))
                if snap2 is None:
                    continue
                rtrl = index.get((kind, density, k, "rtrl"))
                if rtrl is not None:
                    rtrl_ms, label = rtrl["seconds"] * 1e3, "measured"
                    rtrl_bytes = human_bytes(rtrl["trace_bytes"])
                elif (kind, density, "rtrl") in fits:
                    a, sel = fits[(kind, density, "rtrl")]
                    last = sel[-1]
                    rtrl_ms = last["seconds"] * 1e3 * (k / last["k"]) ** a
                    label = f"EXTRAPOLATED from k={last['k']} with a={a:.2f}"
                    entries = cells.state_size(
                        cells.CellConfig(kind, args.input_size, k)
                    ) * snap2_params(kind, k, args)
                    rtrl_bytes = human_bytes(4 * entries) + " (computed)"
                else:
                    continue
                lines.append(
                    f"| {kind} | {density} | {k} | {snap2['seconds'] * 1e3:.3f} | {rtrl_ms:.3f} ({label}) | "
                    f"{rtrl_ms / (snap2['seconds'] * 1e3):.1f} | {rtrl_bytes} |"
                )
    return "\n".join(lines)


def snap2_params(kind: str, k: int, args) -> int:
    """Dense-stored parameter count (what exact RTRL's influence matrix spans)."""
    config = cells.CellConfig(kind, input_size=args.input_size, hidden_size=k)
    params, _ = jax.eval_shape(lambda: cells.init_cell(config, jax.random.key(0)))
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def plot(rows, cell_kinds, densities, names, path: Path) -> None:
    """Log-log time per step against k, one panel per (cell, density)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(c, d) for c in cell_kinds for d in densities]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (kind, density) in zip(axes[0], panels, strict=True):
        for name in names:
            sel = [
                r
                for r in rows
                if (r["cell"], r["density"], r["estimator"]) == (kind, density, name)
            ]
            if sel:
                ax.loglog(
                    [r["k"] for r in sel], [r["seconds"] * 1e3 for r in sel], "o-", label=name
                )
        ax.set_title(f"{kind}, density {density}")
        ax.set_xlabel("hidden size k")
        ax.set_ylabel("ms per step")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
