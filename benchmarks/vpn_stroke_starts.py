"""Why a trained Moving MNIST VPN's samples lose their digits: its teacher-forced probability of
"on" at the pixels where a stroke starts, against the pixels that continue one.

A Moving MNIST frame is drawn in raster order; a stroke's first pixel (an "on" pixel whose causal
neighbours, the three above it and the one to its left, are all off) can only be predicted from
the ConvLSTM's context, while every later pixel of the stroke also sees the stroke so far. The
script restores a run's latest checkpoint, scores the first predicted frame of held-out
sequences given the true past (as the eval does), and prints the mean p(on) at stroke starts, at
continuations and at off pixels ("on": grey value > 0.5), and the expected number of on pixels.

    python benchmarks/vpn_stroke_starts.py --workdir runs/vpn_cpu --config moving_mnist_cpu
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

from configs import vpn as vpn_configs
from deepgen.core.checkpoint import Checkpointer
from experiments.vpn.method import VPNMethod


def stroke_starts(on_NxHxW: np.ndarray) -> np.ndarray:
    """On pixels with no on pixel above (j - 1 .. j + 1) or to the left: raster-order starts."""
    up = np.pad(on_NxHxW, ((0, 0), (1, 0), (1, 1)))[:, :-1, :]
    above = up[:, :, :-2] | up[:, :, 1:-1] | up[:, :, 2:]
    left = np.pad(on_NxHxW, ((0, 0), (0, 0), (1, 0)))[:, :, :-1]
    return on_NxHxW & ~above & ~left


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a run of configs/vpn.py (Moving MNIST)")
    parser.add_argument("--config", default="moving_mnist_cpu", help="its variant")
    parser.add_argument("--sequences", type=int, default=64, help="held-out sequences scored")
    args = parser.parse_args(argv)
    config = vpn_configs.get_config(args.config)
    method = VPNMethod(config, mode="eval")
    abstract = jax.eval_shape(method.init_state, jax.random.key(0))
    checkpoints = Checkpointer(
        os.path.join(args.workdir, "checkpoints"), max_to_keep=1, save_every=1, async_save=False
    )
    state, _ = checkpoints.restore(None, abstract)
    frames = method._heldout(False)[0]["frames"][: args.sequences].astype(np.float32)
    logits = jax.jit(lambda p, f: method.model.apply({"params": p}, f))(state.params, frames)
    t = int(config.data.context_frames)  # the first predicted frame; logits index t - 1
    prob = np.asarray(jax.nn.sigmoid(logits[:, t - 1, ..., 0, 0]))
    truth = frames[:, t, ..., 0]
    on = truth > 0.5
    start = stroke_starts(on)
    continuation = on & ~start
    print(f"checkpoint step {int(state.step)}, {len(frames)} held-out sequences, frame {t}")
    print(
        f"on pixels per frame {on.sum((1, 2)).mean():.1f}, of them stroke starts "
        f"{start.sum((1, 2)).mean():.2f}"
    )
    print(
        f"mean p(on): stroke starts {prob[start].mean():.3f}, continuations "
        f"{prob[continuation].mean():.3f}, off pixels {prob[~on].mean():.4f}"
    )
    print(
        f"expected on pixels (teacher forced) {prob.sum((1, 2)).mean():.1f}, "
        f"the truth's grey sum {truth.sum((1, 2)).mean():.1f}"
    )


if __name__ == "__main__":
    main()
