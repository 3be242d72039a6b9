"""BFN against the official PyTorch code, side by side: train steps/s and peak memory per model.

    python benchmarks/bfn_vs_official.py --official PATH/bayesian-flow-networks \
        --official_python PATH/python-with-torch [--models mnist,cifar10,text8] \
        [--dtype float32] [--rounds 2] [--steps 8] [--out results.json] [--record]

The official code (github.com/nnaisense/bayesian-flow-networks, a checkout given by path, not
vendored) and deepgen train the three models of the paper (Graves et al. 2023, arXiv
2308.07037, Sec. 6): the MNIST U-Net, the CIFAR-10 VDM U-Net (256 bins, discretised) and the
text8 transformer, each at its official config, with the official optimiser (AdamW), gradient
clipping at 5 and the EMA of the weights, at the same batch. The official step is train.py's
(forward, backward, clip_grad_norm_, AdamW step, zero_grad, update_ema, loss.item()); deepgen's
is the jitted, donating step of `experiments.main` (benchmarks/bfn_throughput.py). Random data
of each dataset's shape and type; the input pipelines are not timed.

Each (round, model, implementation) is a fresh child process, the two implementations
alternating first and second from round to round, so both see the same machine in the same
run. Steps/s is measured over --steps steps after --warmup steps (compilation included in the
warm-up for deepgen); the table reports the median over rounds and the ratio deepgen/official.
Peak memory is the device's peak where the backend reports it (GPU), else the child's peak RSS
(VmHWM), runtime included. Model GFLOP/s is the FLOPs of deepgen's step (XLA's count of the unoptimised step;
the same model on both sides: the parameter counts agree) times each side's steps/s; beside it,
the best float32 2048^3 matmul rate of each framework in the same child, the machine's practical
ceiling. The official side needs torch and numpy (and pyyaml); `--official_python`
names an interpreter that has them, so deepgen's environment stays free of torch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# model: the official config file, deepgen's variant, the default batch, the data's kind.
MODELS = {
    "mnist": ("configs/mnist_discrete.yaml", "mnist", 16, "binary"),
    "cifar10": ("configs/cifar10_discretized_256bins.yaml", "cifar10_256d", 4, "bins256"),
    "text8": ("configs/text8_discrete.yaml", "text8", 4, "text8"),
}


SGEMM_SIZE = 2048


def _gflops_of(matmul, repeats: int = 5) -> float:
    """GFLOP/s of a SGEMM_SIZE^3 float32 matmul (the best of repeats, after one warm-up call)."""
    matmul()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        matmul()
        best = min(best, time.perf_counter() - started)
    return 2 * SGEMM_SIZE**3 / best / 1e9


def torch_sgemm_gflops(device: str) -> float:
    """PyTorch's float32 matmul rate on the device (a plain mm; nothing fused after it)."""
    import torch

    a = torch.randn(SGEMM_SIZE, SGEMM_SIZE, device=device)

    def matmul():
        torch.mm(a, a)
        if device == "cuda":
            torch.cuda.synchronize()

    return _gflops_of(matmul)


def jax_sgemm_gflops() -> float:
    """JAX's float32 matmul rate on the default device (a plain jitted a @ a; a reduction fused
    after the dot halves XLA:CPU's rate, so none is)."""
    import jax

    a = jax.numpy.ones((SGEMM_SIZE, SGEMM_SIZE), jax.numpy.float32)
    matmul = jax.jit(lambda a: a @ a)
    return _gflops_of(lambda: matmul(a).block_until_ready())


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _as_number(value):
    """YAML 1.1 reads '1e-4' as a string (OmegaConf does not); numbers back to numbers."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, list):
        return [_as_number(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_number(v) for k, v in value.items()}
    return value


def official_child(args: argparse.Namespace) -> dict:
    """One timing of the official train step (train.py's loop body), in this process."""
    import copy

    import torch
    import yaml

    sys.path.insert(0, args.official)
    import model as official_model  # the checkout's modules
    import networks
    import probability
    from networks import adapters

    config_file, _, _, kind = MODELS[args.model]
    with open(os.path.join(args.official, config_file)) as f:
        cfg = _as_number(yaml.safe_load(f))

    def make(module, spec, **extra):
        """utils_train.make_from_cfg."""
        if spec is None:
            return None
        return getattr(module, spec["class_name"])(**spec["parameters"], **extra)

    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = cfg["model"]
    data_adapters = {
        "input_adapter": make(adapters, spec["input_adapter"]),
        "output_adapter": make(adapters, spec.get("output_adapter")),
    }
    net = make(networks, spec["net"], data_adapters=data_adapters)
    flow = make(official_model, spec["bayesian_flow"])
    factory = make(probability, spec["distribution_factory"])
    loss_fn = make(official_model, spec["loss"], bayesian_flow=flow, distribution_factory=factory)
    bfn = official_model.BFN(net=net, bayesian_flow=flow, loss=loss_fn)
    optimizer_cfg = dict(cfg["optimizer"])
    if "weight_decay" in optimizer_cfg and hasattr(bfn.net, "get_optim_groups"):
        params = bfn.net.get_optim_groups(optimizer_cfg["weight_decay"])
    else:
        params = bfn.net.parameters()
    optimizer = torch.optim.AdamW(params=params, **optimizer_cfg)
    ema = copy.deepcopy(bfn).to(device)
    bfn = bfn.to(device)
    bfn.train()
    training = cfg["training"]

    generator = torch.Generator().manual_seed(args.seed)
    batch = int(args.batch)
    if kind == "binary":
        data = torch.randint(0, 2, (batch, 28, 28, 1), generator=generator).int()
    elif kind == "bins256":
        levels = torch.randint(0, 256, (batch, 32, 32, 3), generator=generator)
        data = (2 * levels + 1).float() / 256 - 1
    else:
        data = torch.randint(0, 27, (batch, int(cfg["data"]["seq_len"])), generator=generator)
    data = data.to(device)
    autocast = args.dtype == "bfloat16"

    def step() -> float:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            loss = bfn(data)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bfn.parameters(), training["grad_clip_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # utils_train.update_ema
            decay = training["ema_decay"]
            for ema_param, param in zip(ema.parameters(), bfn.parameters(), strict=True):
                ema_param.sub_((1 - decay) * (ema_param - param))
        return loss.item()

    started = time.perf_counter()
    for _ in range(args.warmup):
        loss = step()
    warmup_s = time.perf_counter() - started
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    if device == "cuda":
        peak, peak_kind = torch.cuda.max_memory_allocated(), "device peak"
    else:
        peak, peak_kind = peak_rss_bytes(), "peak RSS"
    sgemm = torch_sgemm_gflops(device)
    return {
        "sgemm_gflops": sgemm,
        "steps_per_s": args.steps / seconds,
        "warmup_s": warmup_s,
        "peak_bytes": peak,
        "peak_kind": peak_kind,
        "loss": loss,
        "params": sum(p.numel() for p in bfn.net.parameters()),
        "threads": torch.get_num_threads(),
        "version": f"torch {torch.__version__}",
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else platform.processor() or platform.machine(),
    }


def deepgen_child(args: argparse.Namespace) -> dict:
    """One timing of deepgen's jitted train step at the official config, in this process."""
    sys.path.insert(0, str(ROOT))
    import jax

    from benchmarks.bfn_throughput import time_train_step
    from configs import bfn as bfn_configs
    from deepgen.bfn.model import count_params

    _, variant, _, _ = MODELS[args.model]
    config = bfn_configs.get_config(variant)
    config.train.batch_size = int(args.batch)
    config.model.dtype = args.dtype
    started = time.perf_counter()
    timing = time_train_step(config, steps=args.steps, warmup=args.warmup, seed=args.seed)
    total_s = time.perf_counter() - started
    device = jax.devices()[0]
    sgemm = jax_sgemm_gflops()
    return {
        "sgemm_gflops": sgemm,
        "xla_flops": model_flops(config, seed=args.seed),
        "steps_per_s": timing["steps_per_s"],
        "warmup_s": total_s - args.steps / timing["steps_per_s"],
        "compile_s": timing["compile_s"],
        "peak_bytes": timing["peak_bytes"] if device.platform != "cpu" else peak_rss_bytes(),
        "peak_kind": "device peak" if device.platform != "cpu" else "peak RSS",
        "loss": float(timing["metrics"]["loss"]),
        "params": count_params(timing["abstract"].params),
        "version": f"jax {jax.__version__}",
        "device": f"{device.device_kind} ({device.platform})",
    }


def model_flops(config, *, seed: int = 0) -> float:
    """FLOPs of one train step by XLA's count of the unoptimised step, traced with XLA's own conv
    gradients: the compiled step's count takes a loop body once, and the kernel gradient of
    deepgen/layers/conv.py is a loop over kernel offsets."""
    import jax
    import numpy as np

    from deepgen.layers import conv as conv_lib
    from experiments.bfn.method import BFN

    default = conv_lib.gemm_weight_grad_default
    conv_lib.gemm_weight_grad_default = lambda: False
    try:
        experiment = BFN(config)
        state = jax.eval_shape(experiment.init_state, jax.random.key(seed))
        shape = (int(config.train.batch_size), *experiment.variable_shape)
        dtype = np.int32 if experiment.flow.batch_dtype == np.int32 else np.float32
        batch = {"x": jax.ShapeDtypeStruct(shape, dtype)}
        lowered = jax.jit(experiment.train_step).lower(state, batch, jax.random.key(seed))
        analysis = lowered.cost_analysis()
    finally:
        conv_lib.gemm_weight_grad_default = default
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", 0.0))


def run_child(args: argparse.Namespace, implementation: str, model: str, batch: int) -> dict:
    """Run one timing in a fresh process and return its record."""
    python = args.official_python if implementation == "official" else sys.executable
    command = [
        python,
        os.path.abspath(__file__),
        "--child",
        implementation,
        "--model",
        model,
        "--batch",
        str(batch),
        "--dtype",
        args.dtype,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--seed",
        str(args.seed),
        "--official",
        args.official,
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=str(ROOT), check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise SystemExit(f"{implementation} {model} failed (exit {done.returncode}):\n{tail}")
    return json.loads(lines[-1][len("RESULT ") :])


def table(results: list[dict], args: argparse.Namespace) -> str:
    """Markdown: per model, median steps/s and peak memory of each side, and the ratio."""
    lines = [
        "| model | batch | dtype | official steps/s | deepgen steps/s | deepgen / official | "
        "official peak | deepgen peak | model GFLOP/s official / deepgen | sgemm GFLOP/s "
        "torch / jax | rounds | per-round ratios |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in dict.fromkeys(r["model"] for r in results):
        runs = [r for r in results if r["model"] == model]
        by_side = {
            side: [r for r in runs if r["implementation"] == side]
            for side in ("official", "deepgen")
        }
        if not all(by_side.values()):
            continue
        median = {s: statistics.median(r["steps_per_s"] for r in v) for s, v in by_side.items()}
        peak = {s: max(r["peak_bytes"] for r in v) / 2**30 for s, v in by_side.items()}
        rounds = sorted({r["round"] for r in runs})
        per_round = []
        for index in rounds:
            pair = {r["implementation"]: r["steps_per_s"] for r in runs if r["round"] == index}
            if len(pair) == 2:
                per_round.append(f"{pair['deepgen'] / pair['official']:.2f}")
        flops = statistics.median(r["xla_flops"] for r in by_side["deepgen"]) / 1e9
        sgemm = {s: max(r["sgemm_gflops"] for r in v) for s, v in by_side.items()}
        lines.append(
            f"| {model} | {runs[0]['batch']} | {args.dtype} | {median['official']:.3f} | "
            f"{median['deepgen']:.3f} | **{median['deepgen'] / median['official']:.2f}x** | "
            f"{peak['official']:.2f} GiB | {peak['deepgen']:.2f} GiB | "
            f"{flops * median['official']:.0f} / {flops * median['deepgen']:.0f} | "
            f"{sgemm['official']:.0f} / {sgemm['deepgen']:.0f} | {len(rounds)} | "
            f"{', '.join(per_round)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parent: run the rounds of child timings and print (optionally record) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="checkout of the official BFN code")
    parser.add_argument("--official_python", default=sys.executable, help="python with torch")
    parser.add_argument("--models", default="mnist,cifar10,text8", help=f"of {sorted(MODELS)}")
    parser.add_argument(
        "--batch", default="", help="model=batch,... (default mnist=16,cifar10=4,text8=4)"
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per child")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="write every child's record here (JSON)")
    parser.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    parser.add_argument("--child", choices=("official", "deepgen"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(args.official, "model.py")):
        raise SystemExit(
            f"--official {args.official}: not a checkout of nnaisense/bayesian-flow-networks"
        )

    if args.child:
        record = (official_child if args.child == "official" else deepgen_child)(args)
        print("RESULT " + json.dumps(record), flush=True)
        return

    batches = {m: default for m, (_, _, default, _) in MODELS.items()}
    for item in filter(None, args.batch.split(",")):
        name, value = item.split("=")
        batches[name] = int(value)
    models = args.models.split(",")
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    results = []
    for index in range(args.rounds):
        for model in models:
            order = ("official", "deepgen") if index % 2 == 0 else ("deepgen", "official")
            for implementation in order:
                record = run_child(args, implementation, model, batches[model])
                record.update(
                    round=index, model=model, implementation=implementation, batch=batches[model]
                )
                results.append(record)
                print(
                    f"round {index} {model} {implementation}: {record['steps_per_s']:.3f} steps/s, "
                    f"peak {record['peak_bytes'] / 2**30:.2f} GiB, loss {record['loss']:.3f}, "
                    f"{record['version']}",
                    flush=True,
                )
    text = table(results, args)
    machine = f"{platform.node()}, {results[0]['device']} / {results[1]['device']}"
    heading = (
        f"{datetime.date.today()}, {machine}; {results[0]['version']} and "
        f"{results[1]['version']}; `python benchmarks/bfn_vs_official.py "
        f"--models {args.models} --dtype {args.dtype} --rounds {args.rounds} --steps {args.steps}`"
    )
    print(heading)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps({"heading": heading, "runs": results}, indent=1))
    if args.record:
        path = ROOT / "benchmarks" / "RESULTS.md"
        path.write_text(path.read_text() + f"\n{heading}\n\n{text}\n")


if __name__ == "__main__":
    main()
