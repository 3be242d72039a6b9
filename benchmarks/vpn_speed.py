"""VPN speed: training frames per second, and seconds per generated frame, cached against naive.

Full run (writes benchmarks/results/vpn/speed.json; minutes on a free 2-core CPU, most of them in
the naive sampler, which reruns the whole decoder for each of the frame's 4,096 pixels):

    python benchmarks/vpn_speed.py                           # moving_mnist_cpu's model at 64 x 64
    python benchmarks/vpn_speed.py --config moving_mnist     # the paper's sizes (a GPU's job)

Seconds, the smoke model at 12 x 12, for a check of the script (writes under the temp folder;
compiled at XLA backend optimisation level 1, so its timings are not ones to report):

    python benchmarks/vpn_speed.py --quick

On the GPU machine, in benchmarks/gpu_check.sh:

    timeout 240 python3 benchmarks/vpn_speed.py --config moving_mnist --naive_pixels 256 \
        --out=${OUT:-/tmp}/vpn_speed.json

The issue's performance items (Kalchbrenner et al., "Video Pixel Networks", arXiv:1610.00527;
deepgen/vpn): "training frames per second on the CPU, sampling time per generated frame, cached
against naive in one run (cached at least 10x faster at 64 x 64)".

1. Training: the method's jitted train_step (experiments/vpn/method.py: the loss of frames 1 ..
   T - 1 given the true past, RMSProp) on --batch sequences of the config's T frames at the
   config's canvas (--side overrides it), random Moving MNIST of the embedded digits. Compiled,
   warmed up, then --train_steps steps timed; frames per second = batch x (T - 1) / step time
   (each step scores T - 1 frames).
2. Sampling one frame at --side x --side (64, the paper's), batch 1, after 2 context frames:
   `deepgen.vpn.sampling.generate` with cached=True (each masked conv reads a k x k window of its
   buffer and writes one pixel) and cached=False (the decoder over the whole frame for every
   pixel), both one jitted `lax.scan` over the pixels, with the same parameters and noise.
   The cached run is timed in full (fastest of --repeats). The naive one runs the first
   --naive_pixels pixels (0: all of them) and the time is scaled to the frame by pixels /
   naive_pixels, which is exact in kind: every naive pixel step does the same work (the whole
   frame's decoder); the encoder and ConvLSTM's one pass per frame is timed separately and added
   to both. The report says which was measured and which scaled. With --naive_pixels 0 the
   naive frame is timed in full and the samples are compared with the cached ones.
Parameters are random (a step's time does not depend on their values).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402
from benchmarks._common import peak_memory  # noqa: E402
from configs import vpn as vpn_configs  # noqa: E402
from deepgen.data import moving_mnist  # noqa: E402
from deepgen.vpn import sampling  # noqa: E402
from deepgen.vpn.model import VideoPixelNetwork  # noqa: E402
from experiments.vpn.method import VPNMethod, count_params  # noqa: E402

DEFAULT_CONFIG, QUICK_CONFIG = "moving_mnist_cpu", "smoke"
CONFIGS = ("moving_mnist_cpu", "moving_mnist", "moving_mnist_baseline", "smoke")
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "vpn" / "speed.json"
SPEEDUP_BOUND = 10.0
CONTEXT = 2


def _timed(fn, *args, repeats: int = 1) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best, out


def training_speed(config, *, batch: int, steps: int) -> dict:
    """Frames per second of the method's train step on generated Moving MNIST."""
    config.train.batch_size = batch
    method = VPNMethod(config, mode="eval")  # builds no iterator; the batch is made here
    moving = method._moving("train")
    frames = moving.batch(np.arange(batch))
    state = method.init_state(jax.random.key(0))
    step = jax.jit(method.train_step, donate_argnums=0)
    key = jax.random.key(1)
    batch_dict = {"frames": jnp.asarray(frames)}
    state, _ = step(state, batch_dict, key)  # compile and warm up
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch_dict, key)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    scored = batch * (frames.shape[1] - 1)
    return {
        "batch": batch,
        "frames_per_sequence": int(frames.shape[1]),
        "side": int(frames.shape[2]),
        "seconds_per_step": seconds,
        "frames_per_second": scored / seconds,
        "num_params": count_params(state.params),
    }


def sampling_speed(model: VideoPixelNetwork, *, side: int, naive_pixels: int, repeats: int) -> dict:
    """Seconds per generated frame at side x side, cached and naive (see the module docstring)."""
    moving = moving_mnist.MovingMnist.from_mnist(
        "test", seed=moving_mnist.FIXED_TEST_SEED, canvas=side, num_frames=CONTEXT,
        digit_side=min(28, side),
    )  # fmt: skip
    context = jnp.asarray(moving.batch(np.arange(1)))
    params = model.init(jax.random.key(0), context)["params"]
    noise = sampling.draw_noise(jax.random.key(2), (1, 1, side, side, 1), model.num_values)
    pixels = side * side

    cached_fn = jax.jit(lambda p, c, n: sampling.generate(model, p, c, n, cached=True))
    cached_fn(params, context, noise).block_until_ready()  # compile
    cached_s, cached = _timed(cached_fn, params, context, noise, repeats=repeats)

    # The per-frame work outside the pixel loop (encoder, ConvLSTM, context): both pay it once.
    def frame_overhead(p, c):
        hidden = model.apply({"params": p}, c, method=VideoPixelNetwork.contexts)[:, -1]
        return model.apply({"params": p}, c[:, -1], method=VideoPixelNetwork.encode), hidden

    overhead_fn = jax.jit(frame_overhead)
    jax.block_until_ready(overhead_fn(params, context))
    overhead_s, _ = _timed(overhead_fn, params, context, repeats=repeats)

    measured = pixels if naive_pixels <= 0 else min(naive_pixels, pixels)

    def naive_prefix(p, c, n):
        hidden = model.apply({"params": p}, c, method=VideoPixelNetwork.contexts)[:, -1]
        frame = jnp.zeros((1, side, side, 1), c.dtype)

        def pixel(frame, position):
            i, j = position // side, position % side
            logits = model.apply({"params": p}, frame, hidden, method=VideoPixelNetwork.decode)
            value = sampling.pixel_values(logits[:, i, j, 0], n[:, 0, i, j, 0])
            return frame.at[:, i, j, 0].set(value), None

        frame, _ = jax.lax.scan(pixel, frame, jnp.arange(measured))
        return frame

    if measured == pixels:
        naive_fn = jax.jit(lambda p, c, n: sampling.generate(model, p, c, n, cached=False))
    else:
        naive_fn = jax.jit(naive_prefix)
    jax.block_until_ready(naive_fn(params, context, noise))  # compile (and a first run)
    naive_run_s, naive = _timed(naive_fn, params, context, noise, repeats=1)
    if measured == pixels:
        naive_s = naive_run_s
        same = bool(np.array_equal(np.asarray(naive), np.asarray(cached)))
    else:
        naive_s = overhead_s + (naive_run_s - overhead_s) * pixels / measured
        same = None
    return {
        "side": side,
        "pixels": pixels,
        "cached_seconds_per_frame": cached_s,
        "naive_seconds_per_frame": naive_s,
        "naive_pixels_measured": measured,
        "naive_scaled": measured != pixels,
        "per_frame_overhead_seconds": overhead_s,
        "speedup": naive_s / cached_s,
        "cached_equals_naive": same,
        "mean_cached_pixel": float(np.asarray(cached).mean()),
    }


def build_model(config) -> VideoPixelNetwork:
    """The Moving MNIST model of the config, as experiments/vpn/method.py builds it."""
    return VPNMethod(config, mode="eval").model


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, choices=CONFIGS)
    parser.add_argument("--side", type=int, default=None, help="sampling frame side (64)")
    parser.add_argument("--batch", type=int, default=None, help="training batch (the config's)")
    parser.add_argument("--train_steps", type=int, default=None)
    parser.add_argument("--naive_pixels", type=int, default=None, help="0: the whole frame")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    _common.compile_quickly(args.quick)
    name = args.config or (QUICK_CONFIG if args.quick else DEFAULT_CONFIG)
    side = args.side or (12 if args.quick else 64)
    steps = args.train_steps or (2 if args.quick else 5)
    naive_pixels = args.naive_pixels if args.naive_pixels is not None else 0
    out = _common.output_path(
        args.out, quick=args.quick, default=DEFAULT_OUT, quick_name="vpn_speed.json"
    )
    report = _common.report_header("benchmarks/vpn_speed.py", argv, quick=args.quick)
    config = vpn_configs.get_config(name)
    batch = args.batch or int(config.train.batch_size)
    train = training_speed(config, batch=batch, steps=steps)
    train_64 = None
    if int(config.data.canvas) != side:
        config_64 = vpn_configs.get_config(name)
        config_64.data.canvas, config_64.data.digit_side = side, min(28, side)
        train_64 = training_speed(config_64, batch=batch, steps=steps)
    sample = sampling_speed(
        build_model(vpn_configs.get_config(name)),
        side=side,
        naive_pixels=naive_pixels,
        repeats=args.repeats,
    )
    report |= {
        "settings": {"config": name, "side": side, "batch": batch, "train_steps": steps},
        "training": train,
        "training_at_side": train_64,
        "sampling": sample,
        "target": f"cached >= {SPEEDUP_BOUND:g}x naive per frame at {side} x {side}",
        "target_met": sample["speedup"] >= SPEEDUP_BOUND,
        "peak_memory": peak_memory(),
    }
    rows = [
        f"| training, {name} at {train['side']}x{train['side']}, batch {batch} | "
        f"{train['frames_per_second']:.1f} frames/s ({train['seconds_per_step']:.3f} s/step) |"
    ]
    if train_64:
        rows.append(
            f"| training, {name}'s model at {side}x{side}, batch {batch} | "
            f"{train_64['frames_per_second']:.1f} frames/s |"
        )
    scaled = (
        f" (first {sample['naive_pixels_measured']} pixels timed, scaled)"
        if sample["naive_scaled"]
        else ""
    )
    rows += [
        f"| sampling {side}x{side}, cached | {sample['cached_seconds_per_frame']:.3f} s/frame |",
        f"| sampling {side}x{side}, naive{scaled} | {sample['naive_seconds_per_frame']:.3f} s/frame |",
        f"| cached speedup | {sample['speedup']:.1f}x |",
        f"| cached frame equals naive frame (same noise) | {sample['cached_equals_naive']} |",
    ]
    markdown = "\n".join(
        [
            f"{report['date']}, {report['machine']}, jax {report['jax']}, load "
            f"{report['load_average_start']}: `{report['command']}`",
            "",
            "| what | number |",
            "|---|---|",
            *rows,
            "",
            f"target: {report['target']}: {'met' if report['target_met'] else 'NOT met'}",
        ]
    )
    return _common.write_report(out, report, markdown)


if __name__ == "__main__":
    main()
