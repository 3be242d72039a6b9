"""ByteNet training throughput in characters per second beside a causal transformer of its size.

Full runs (write benchmarks/results/bytenet/throughput.json; a few minutes on a free 2-core CPU):

    python benchmarks/bytenet_throughput.py                      # enwik8_cpu: 10 MU blocks, d = 96
    python benchmarks/bytenet_throughput.py --config enwik8      # the paper's 30 blocks, d = 512

Seconds, the smoke config and two rounds of two steps, for a check of the script (writes its JSON
under the temp folder unless --out; compiles at XLA backend optimisation level 1, as the tests
do, so its timings are not ones to report):

    python benchmarks/bytenet_throughput.py --quick

On the GPU machine, in benchmarks/gpu_check.sh:

    timeout 150 python3 benchmarks/bytenet_throughput.py --config enwik8 --batch_size 16 \
        --steps 10 --repeats 3 --out=${OUT:-/tmp}/bytenet_throughput.json 2>&1 \
        | grep -E "^[|]|^ratio|^parameters|^device|Error|error"

The issue's item (Kalchbrenner et al., "Neural Machine Translation in Linear Time",
arXiv:1610.10099; deepgen/bytenet): "training throughput in characters per second beside a
transformer language model of the same parameter count in deepgen (the BFN transformer's blocks
can serve)."

The two steps are one and the same function: `ByteNetMethod.train_step`
(experiments/bytenet/method.py), built from the config in eval mode (no data loaded), jitted,
sharded and state-donating as the core loop runs it (benchmarks/_common.StepRunner). For the
transformer the method's `model` is swapped for `TransformerLM` below, so both take the same
loss (`deepgen.bytenet.losses.lm_loss`: cross-entropy of window[:, 1:] given window[:, :-1], the
first data.context positions unscored, the mean over scored bytes), the same AdamW
(`make_optimizer(config.opt, train.num_steps)`), the same dropout rate (model.dropout, ByteNet's
one dropout before the head's last 1x1; the transformer's before its head) and the same batch:
train.batch_size (--batch_size) windows of data.seq_len random bytes (the step's time does not
depend on their values), with the method's scored mask. float32 parameters and compute in both;
ByteNet's convolutions run at matmul precision "highest" (deepgen/layers/causal_conv.py), its
dense layers and the transformer at the backend's default.

The transformer: `deepgen.bfn.transformer`'s `Block` attends over all positions and takes no mask,
so it cannot serve a language model; `TransformerLM` here is a causal (GPT-2 style) pre-LayerNorm
decoder over bytes in the same nanoGPT conventions: token embedding + learned positions,
num_layers blocks of x + causal multi-head self-attention (`jax.nn.dot_product_attention` with
is_causal=True, head size 64 or near it) and x + the BFN transformer's own `MLP` (4x, tanh GELU),
a final LayerNorm, dropout, and a head over 256 bytes. Its depth and width are searched so that
its parameter count is within --tolerance (5%) of ByteNet's: widths in multiples of 64 (finer,
32, 16 then 8, only where no multiple of 64 comes within the tolerance) and 1 to 64 layers; of
the shapes within the tolerance whose width / depth lies within a factor of 2 of 64 (GPT-2
small's 768 / 12), the one closest in parameters (where none does, the one closest to 64 in
width / depth). --tf_layers and --tf_width pin either.

Timing: both steps are compiled, then --warmup steps each; then --repeats rounds in which
ByteNet makes --steps consecutive steps and then the transformer does (A B A B ...), every step
waited for. Reported per model: the median over rounds of ms/step, steps/s, characters/s fed
(batch x (seq_len - 1) inputs per step) and scored characters/s (batch x the scored targets per
window), and the ratio ByteNet / transformer of characters/s (the quotient of the two medians).

Prints a markdown block ready for benchmarks/RESULTS.md (date, host, machine, jax version, load
average, command line) and writes everything to --out as JSON.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402
from benchmarks._common import StepRunner, apply_overrides, load_average, peak_memory  # noqa: E402
from configs import bytenet as bytenet_configs  # noqa: E402
from deepgen.bfn.transformer import MLP  # noqa: E402
from deepgen.bytenet.model import count_params  # noqa: E402
from deepgen.data import enwik8  # noqa: E402
from experiments.bytenet.method import ByteNetMethod  # noqa: E402

DEFAULT_CONFIG, QUICK_CONFIG = "enwik8_cpu", "smoke"
CONFIGS = ("enwik8_cpu", "enwik8", "smoke")  # the language-model variants
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "bytenet" / "throughput.json"
STEPS, REPEATS, WARMUP = 10, 5, 2
QUICK_STEPS, QUICK_REPEATS, QUICK_WARMUP = 2, 2, 1
TOLERANCE = 0.05
HEAD_SIZE = 64  # attention head size aimed at: num_heads = width // 64
ASPECT = 64.0  # width / layers aimed at, within a factor of 2 (GPT-2 small: 768 / 12)
WIDTH_STEPS = (64, 32, 16, 8)  # width granularities tried in turn
MAX_LAYERS, MAX_WIDTH = 64, 8192
INIT_STD = 0.02  # nanoGPT
SEED = 0


# ---- the transformer language model -------------------------------------------------------------


def _dense(features: int, *, std: float = INIT_STD, name: str) -> nn.Dense:
    """nanoGPT Linear: weight ~ N(0, std), bias zero."""
    return nn.Dense(
        features,
        kernel_init=nn.initializers.normal(stddev=std),
        bias_init=nn.initializers.zeros,
        name=name,
    )


class CausalSelfAttention(nn.Module):
    """nanoGPT multi-head self-attention with a causal mask (fused [q | k | v] projection)."""

    num_heads: int
    num_layers: int

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        """Each position attends to itself and the positions before it."""
        B, T, D = x_BxTxD.shape
        N = self.num_heads
        q_BxTxD, k_BxTxD, v_BxTxD = jnp.split(_dense(3 * D, name="c_attn")(x_BxTxD), 3, axis=-1)
        y_BxTxNxH = jax.nn.dot_product_attention(
            q_BxTxD.reshape(B, T, N, D // N),
            k_BxTxD.reshape(B, T, N, D // N),
            v_BxTxD.reshape(B, T, N, D // N),
            is_causal=True,
        )
        std = INIT_STD / math.sqrt(2 * self.num_layers)
        return _dense(D, std=std, name="c_proj")(y_BxTxNxH.reshape(B, T, D))


class CausalBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)), the BFN transformer's MLP."""

    num_heads: int
    num_layers: int

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        attn = CausalSelfAttention(self.num_heads, self.num_layers, name="attn")
        x_BxTxD = x_BxTxD + attn(nn.LayerNorm(epsilon=1e-5, name="ln_1")(x_BxTxD))
        mlp = MLP(dropout=0.0, num_layers=self.num_layers, name="mlp")
        return x_BxTxD + mlp(nn.LayerNorm(epsilon=1e-5, name="ln_2")(x_BxTxD), train=False)


class TransformerLM(nn.Module):
    """A causal transformer over bytes, called as ByteNet is: (inputs_BxT, deterministic)."""

    vocab_size: int
    width: int
    num_layers: int
    num_heads: int
    max_len: int  # rows of the learned position table: the inputs of a window, seq_len - 1
    dropout: float = 0.0

    @nn.compact
    def __call__(self, inputs_BxT: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Logits B x T x V of the byte after each input, given the inputs up to it."""
        T = inputs_BxT.shape[1]
        init = nn.initializers.normal(stddev=INIT_STD)
        x_BxTxD = nn.Embed(self.vocab_size, self.width, embedding_init=init, name="wte")(inputs_BxT)
        pos_PxD = self.param("wpe", init, (self.max_len, self.width))
        x_BxTxD = x_BxTxD + pos_PxD[None, :T]
        for i in range(self.num_layers):
            x_BxTxD = CausalBlock(self.num_heads, self.num_layers, name=f"h_{i}")(x_BxTxD)
        h_BxTxD = nn.LayerNorm(epsilon=1e-5, name="ln_f")(x_BxTxD)
        h_BxTxD = nn.Dropout(self.dropout)(h_BxTxD, deterministic=deterministic)
        return _dense(self.vocab_size, name="head")(h_BxTxD)


def num_heads_for(width: int) -> int:
    """width // 64 heads (at least one), lowered until it divides the width."""
    heads = max(1, width // HEAD_SIZE)
    while width % heads:
        heads -= 1
    return heads


def transformer_param_count(*, layers: int, width: int, vocab: int, max_len: int) -> int:
    """TransformerLM's parameters: L (12 D^2 + 13 D) + D (2 V + P + 2) + V."""
    block = 12 * width * width + 13 * width
    return layers * block + width * (2 * vocab + max_len + 2) + vocab


def transformer_shape(
    target: int,
    *,
    vocab: int,
    max_len: int,
    tolerance: float = TOLERANCE,
    layers: int | None = None,
    width: int | None = None,
) -> tuple[int, int]:
    """(layers, width) of a TransformerLM within tolerance of target parameters (module doc)."""
    for step in WIDTH_STEPS:
        candidates = []
        for L in [layers] if layers else range(1, MAX_LAYERS + 1):
            for D in [width] if width else range(step, MAX_WIDTH + 1, step):
                count = transformer_param_count(layers=L, width=D, vocab=vocab, max_len=max_len)
                error = count / target - 1.0
                if abs(error) <= tolerance:
                    off_aspect = abs(math.log(D / (ASPECT * L)))
                    if off_aspect <= math.log(2.0):  # width / layers in [32, 128]: closest count
                        candidates.append((0, abs(error), L, D))
                    else:  # no shape in the band: the closest width / layers to 64
                        candidates.append((1, off_aspect, L, D))
        if candidates:
            _, _, L, D = min(candidates)
            return L, D
        if width:
            break
    raise SystemExit(
        f"no transformer of layers={layers or '1..64'}, width={width or 'any'} has "
        f"{target:,} parameters within {100 * tolerance:g}%"
    )


# ---- the runners --------------------------------------------------------------------------------


def random_batch(config: Any, batch: int) -> dict[str, np.ndarray]:
    """train.batch_size windows of random bytes and the method's scored mask (first context off)."""
    seq_len, context = int(config.data.seq_len), int(config.data.context)
    windows = np.random.default_rng(SEED).integers(0, 256, size=(batch, seq_len))
    scored = np.broadcast_to(np.arange(seq_len) >= context, windows.shape)
    return {"window": windows.astype(np.int32), "scored": scored.astype(np.float32)}


def _params_of(method: ByteNetMethod) -> int:
    return count_params(jax.eval_shape(method.init_state, jax.random.key(0)).params)


def build_runners(args: argparse.Namespace) -> tuple[list[StepRunner], dict[str, Any]]:
    """The ByteNet and transformer StepRunners (compiled) and the settings."""
    config = apply_overrides(bytenet_configs.get_config(args.config), args.set)
    if config.data.name != "enwik8" or int(config.model.encoder_blocks):
        raise SystemExit(f"--config={args.config} is not a byte language model")
    if args.batch_size:
        config.train.batch_size = args.batch_size
    batch = int(config.train.batch_size)
    if batch % jax.device_count():
        raise SystemExit(f"batch {batch} is not a multiple of the {jax.device_count()} devices")
    seq_len = int(config.data.seq_len)
    bytenet = ByteNetMethod(config, mode="eval")
    bytenet_params = _params_of(bytenet)
    layers, width = transformer_shape(
        bytenet_params,
        vocab=enwik8.VOCAB_SIZE,
        max_len=seq_len - 1,
        tolerance=args.tolerance,
        layers=args.tf_layers,
        width=args.tf_width,
    )
    transformer = ByteNetMethod(config, mode="eval")
    transformer.model = TransformerLM(
        vocab_size=enwik8.VOCAB_SIZE,
        width=width,
        num_layers=layers,
        num_heads=num_heads_for(width),
        max_len=seq_len - 1,
        dropout=float(config.model.dropout),
    )
    transformer_params = _params_of(transformer)
    expected = transformer_param_count(
        layers=layers, width=width, vocab=enwik8.VOCAB_SIZE, max_len=seq_len - 1
    )
    if transformer_params != expected:
        raise AssertionError(f"TransformerLM has {transformer_params:,}, not {expected:,}")
    m = config.model
    print(
        f"parameters: ByteNet {bytenet_params:,} ({m.decoder_blocks} {m.unit} blocks, d = "
        f"{m.hidden}); transformer {transformer_params:,} ({layers} layers, width {width}, "
        f"{num_heads_for(width)} heads), {100 * (transformer_params / bytenet_params - 1):+.2f}%",
        flush=True,
    )
    data = random_batch(config, batch)
    runners = []
    for label, method in (("bytenet", bytenet), ("transformer", transformer)):
        runners.append(StepRunner(label, method, data))
        print(f"compiled {label} in {runners[-1].compile_s:.1f} s", flush=True)
    scored_per_window = int(data["scored"][0, 1:].sum())
    settings = {
        "config": args.config,
        "overrides": list(args.set),
        "batch_size": batch,
        "seq_len": seq_len,
        "context": int(config.data.context),
        "chars_fed_per_step": batch * (seq_len - 1),
        "chars_scored_per_step": batch * scored_per_window,
        "optimizer": str(config.opt.name),
        "dropout": float(m.dropout),
        "dtype": "float32",
        "bytenet": {
            "num_params": bytenet_params,
            "hidden": int(m.hidden),
            "decoder_blocks": int(m.decoder_blocks),
            "unit": str(m.unit),
            "kernel_size": int(m.kernel_size),
            "receptive_field": bytenet.model.receptive_field,
        },
        "transformer": {
            "num_params": transformer_params,
            "num_layers": layers,
            "width": width,
            "num_heads": num_heads_for(width),
            "max_len": seq_len - 1,
            "attention": "jax.nn.dot_product_attention(is_causal=True), default implementation",
        },
        "param_ratio_transformer_to_bytenet": transformer_params / bytenet_params,
        "tolerance": args.tolerance,
        "steps_per_round": args.steps,
        "repeats": args.repeats,
        "warmup_steps": args.warmup,
        "device_count": jax.device_count(),
    }
    return runners, settings


def time_rounds(runners: Sequence[StepRunner], args: argparse.Namespace) -> dict[str, list[float]]:
    """Warm up, then rounds of --steps steps per runner in turn: label -> s/step per round."""
    for runner in runners:
        for _ in range(args.warmup):
            runner.step()
    per_round: dict[str, list[float]] = {r.label: [] for r in runners}
    for round_index in range(args.repeats):
        for runner in runners:
            started = time.perf_counter()
            for _ in range(args.steps):
                runner.step()
            per_round[runner.label].append((time.perf_counter() - started) / args.steps)
        cells = ", ".join(f"{k} {1e3 * v[-1]:.2f} ms/step" for k, v in per_round.items())
        print(
            f"round {round_index + 1}/{args.repeats}: {cells}, load average {load_average()}",
            flush=True,
        )
    return per_round


def summarize(
    runners: Sequence[StepRunner], per_round: dict[str, list[float]], settings: dict[str, Any]
) -> dict[str, Any]:
    """Per model: medians, steps/s, characters/s; the ratio ByteNet / transformer."""
    rows = {}
    for runner in runners:
        seconds = per_round[runner.label]
        median_s = statistics.median(seconds)
        loss = float(runner.metrics["loss"])
        rows[runner.label] = {
            "num_params": settings[runner.label]["num_params"],
            "ms_per_step_median": 1e3 * median_s,
            "ms_per_step_min": 1e3 * min(seconds),
            "ms_per_step_per_round": [1e3 * s for s in seconds],
            "steps_per_s": 1.0 / median_s,
            "chars_per_s": settings["chars_fed_per_step"] / median_s,
            "scored_chars_per_s": settings["chars_scored_per_step"] / median_s,
            "compile_s": runner.compile_s,
            "last_loss": loss,
            "loss_finite": math.isfinite(loss),
        }
    b, t = rows["bytenet"], rows["transformer"]
    ratios = [
        tt / bb for bb, tt in zip(per_round["bytenet"], per_round["transformer"], strict=True)
    ]
    return {
        **rows,
        "ratio_bytenet_to_transformer_chars_per_s": b["chars_per_s"] / t["chars_per_s"],
        "ratio_per_round": ratios,
    }


# ---- the report ---------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    """The block for benchmarks/RESULTS.md."""
    s, r = report["settings"], report["results"]
    bn, tf = s["bytenet"], s["transformer"]
    lines = [
        "## ByteNet training throughput against a causal transformer "
        "(`benchmarks/bytenet_throughput.py`)",
        "",
        f"{report['date']}, host {report['host']}, {report['machine']}, jax {report['jax']}, "
        f"load average {report['load_average_start']} at start and "
        f"{report['load_average_end']} at the end; peak memory {report['peak_memory']}. "
        f"Command: `{report['command']}`",
        "",
        f"Config {s['config']}: batch {s['batch_size']} windows of {s['seq_len']} random bytes "
        f"({s['chars_fed_per_step']:,} characters fed and {s['chars_scored_per_step']:,} scored "
        f"per step, the first {s['context']} of each window unscored), {s['optimizer']}, dropout "
        f"{s['dropout']:g}, {s['dtype']}; both through `ByteNetMethod.train_step` (jitted, "
        f"donated, on {s['device_count']} device(s)). {s['warmup_steps']} warm-up steps, then "
        f"{s['repeats']} rounds of {s['steps_per_round']} steps each, in turn; medians over "
        "rounds.",
        "",
        "| model | parameters | shape | ms/step | steps/s | chars/s (fed) | chars/s (scored) "
        "| compile | last loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    shapes = {
        "bytenet": f"{bn['decoder_blocks']} {bn['unit']} blocks, d = {bn['hidden']}",
        "transformer": f"{tf['num_layers']} layers, width {tf['width']}, {tf['num_heads']} heads",
    }
    for label, name in (("bytenet", "ByteNet"), ("transformer", "causal transformer")):
        row = r[label]
        lines.append(
            f"| {name} | {row['num_params']:,} | {shapes[label]} | "
            f"{row['ms_per_step_median']:.2f} | {row['steps_per_s']:.2f} | "
            f"{row['chars_per_s']:,.0f} | {row['scored_chars_per_s']:,.0f} | "
            f"{row['compile_s']:.1f} s | {row['last_loss']:.3f} |"
        )
    lines += [
        "",
        report["ratio_text"],
        f"Parameters: transformer / ByteNet = {s['param_ratio_transformer_to_bytenet']:.4f} "
        f"(tolerance {100 * s['tolerance']:g}%).",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; --quick uses the smoke config and a couple of steps."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke config, a couple of steps")
    parser.add_argument(
        "--config",
        default=None,
        choices=CONFIGS,
        help=f"configs/bytenet.py variant (default {DEFAULT_CONFIG}; --quick: {QUICK_CONFIG})",
    )
    parser.add_argument("--out", default=None, help=f"JSON path (default {DEFAULT_OUT})")
    parser.add_argument("--batch_size", type=int, default=None, help="train.batch_size override")
    parser.add_argument("--steps", type=int, default=None, help=f"steps per round ({STEPS})")
    parser.add_argument("--repeats", type=int, default=None, help=f"rounds ({REPEATS})")
    parser.add_argument("--warmup", type=int, default=None, help=f"warm-up steps ({WARMUP})")
    parser.add_argument("--tf_layers", type=int, default=None, help="pin the transformer depth")
    parser.add_argument("--tf_width", type=int, default=None, help="pin the transformer width")
    parser.add_argument(
        "--tolerance", type=float, default=TOLERANCE, help="relative parameter mismatch allowed"
    )
    parser.add_argument(
        "--set", action="append", default=[], help="a.b=value override of the config"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.config = args.config or (QUICK_CONFIG if quick else DEFAULT_CONFIG)
    args.steps = args.steps or (QUICK_STEPS if quick else STEPS)
    args.repeats = args.repeats or (QUICK_REPEATS if quick else REPEATS)
    args.warmup = (QUICK_WARMUP if quick else WARMUP) if args.warmup is None else args.warmup
    if min(args.steps, args.repeats) < 1 or args.warmup < 0:
        parser.error("--steps and --repeats must be positive, --warmup non-negative")
    for name in ("batch_size", "tf_layers", "tf_width"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be positive")
    if not 0 < args.tolerance < 1:
        parser.error("--tolerance must lie in (0, 1)")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Compile both steps, time them in turns, print the markdown block, write the JSON."""
    started = time.perf_counter()
    args = parse_args(argv)
    _common.compile_quickly(args.quick)
    out = _common.output_path(
        args.out, quick=args.quick, default=DEFAULT_OUT, quick_name="bytenet_throughput_quick.json"
    )
    report: dict[str, Any] = _common.report_header(
        "benchmarks/bytenet_throughput.py", argv, quick=args.quick
    )
    runners, report["settings"] = build_runners(args)
    per_round = time_rounds(runners, args)
    report["results"] = summarize(runners, per_round, report["settings"])
    r = report["results"]
    report["ratio_text"] = (
        f"ratio ByteNet / transformer (characters/s, medians): "
        f"{r['ratio_bytenet_to_transformer_chars_per_s']:.3f} "
        f"({r['bytenet']['chars_per_s']:,.0f} vs {r['transformer']['chars_per_s']:,.0f} chars/s)"
    )
    print(report["ratio_text"], flush=True)
    report["load_average_end"] = load_average()
    report["peak_memory"] = peak_memory()
    report["wall_s"] = time.perf_counter() - started
    return _common.write_report(out, report, markdown(report))


if __name__ == "__main__":
    main()
