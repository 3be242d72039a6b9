"""Convolution gradients on the CPU: XLA's own kernel gradient against deepgen's per-offset GEMMs.

`deepgen/layers/conv.py` computes a convolution's kernel gradient as one GEMM per kernel offset
on the CPU; this script times `jax.grad` of the pieces that use it, each compiled twice (XLA's
gradient and the GEMMs), the two versions alternating round by round in one process, and prints
the fastest round of each:

* one 3x3 convolution of a VPN layer's size (152 x 32 x 32 x 24 -> 24), and with dilation 4;
* one 4 x 4 stride-2 transposed convolution of the conv VAE's decoder (256 x 7 x 7 x 64 -> 32);
* the conv VAE's encoder and decoder (ACN and the Kanerva Machine) on 256 MNIST-sized images.

The transposed convolutions are also timed with the GEMMs over the zero-dilated input (column
"GEMM over zeros", how deepgen computed them before `kernel_grad_of_dilated_input`), which reads
the s^2 - 1 zeros between input pixels that the per-phase GEMMs skip.

    python benchmarks/conv_kernel_grad.py                # about a minute on 2 cores
    python benchmarks/conv_kernel_grad.py --rounds 2     # quicker

Timings are of this machine under the load it has: compare the two columns, which ran side by side.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from deepgen.layers import conv as conv_lib
from deepgen.layers import conv_vae

NHWC = ("NHWC", "HWIO", "NHWC")


def _conv_case(dilation: int) -> tuple[Callable, tuple]:
    x = jax.random.normal(jax.random.key(0), (152, 32, 32, 24))
    w = jax.random.normal(jax.random.key(1), (3, 3, 24, 24))
    pad = dilation

    def loss(w, x):
        padding = ((pad, pad), (pad, pad))
        y = conv_lib.default_conv_general_dilated(
            x, w, (1, 1), padding, rhs_dilation=(dilation,) * 2, dimension_numbers=NHWC
        )
        return jnp.sum(y**2)

    return jax.grad(loss), (w, x)


def _transposed_case() -> tuple[Callable, tuple]:
    x = jax.random.normal(jax.random.key(0), (256, 7, 7, 64))
    w = jax.random.normal(jax.random.key(1), (4, 4, 64, 32))

    def loss(w, x):
        return jnp.sum(conv_lib.conv_transpose(x, w, (2, 2), "SAME") ** 2)

    return jax.grad(loss), (w, x)


def _conv_vae_case() -> tuple[Callable, tuple]:
    x = (jax.random.uniform(jax.random.key(0), (256, 28, 28, 1)) < 0.2).astype(jnp.float32)
    encoder = conv_vae.ConvEncoder(latent_dim=100, channels=(32, 64))
    decoder = conv_vae.ConvDecoder(output_shape=(28, 28, 1), channels=(64, 32))
    params = (
        encoder.init(jax.random.key(1), x),
        decoder.init(jax.random.key(2), jnp.zeros((256, 100))),
    )

    def loss(params):
        mean, _ = encoder.apply(params[0], x)
        logits = decoder.apply(params[1], mean)
        return jnp.sum(jax.nn.softplus(logits) - x * logits)

    return jax.grad(loss), (params,)


CASES = {
    "conv 3x3, 152x32x32x24 -> 24": lambda: _conv_case(1),
    "conv 3x3 dilation 4, 152x32x32x24 -> 24": lambda: _conv_case(4),
    "transposed conv 4x4 stride 2, 256x7x7x64 -> 32": _transposed_case,
    "conv VAE encoder + decoder, 256 x 28x28": _conv_vae_case,
}


TRANSPOSED_CASES = (
    "transposed conv 4x4 stride 2, 256x7x7x64 -> 32",
    "conv VAE encoder + decoder, 256 x 28x28",
)


def _kernel_grad_over_zeros(x, g, kernel_shape, input_dilation, padding, precision, dilation):
    """The kernel gradient of a dilated input by GEMMs over the input with its zeros put in."""
    (uh, uw), zero = input_dilation, jnp.zeros((), x.dtype)
    x_dilated = jax.lax.pad(x, zero, ((0, 0, 0), (0, 0, uh - 1), (0, 0, uw - 1), (0, 0, 0)))
    return conv_lib.kernel_grad_by_gemm(
        x_dilated, g, kernel_shape, (1, 1), padding, precision, dilation
    )


def compiled(make: Callable, gemm: bool, over_zeros: bool = False) -> tuple[Callable, tuple]:
    """The case's gradient jitted with the GEMM kernel gradient on or off (chosen when traced);
    over_zeros: a dilated input's by GEMMs over its zeros, not per phase."""
    saved = conv_lib.gemm_weight_grad_default, conv_lib.kernel_grad_of_dilated_input
    conv_lib.gemm_weight_grad_default = lambda: gemm
    if over_zeros:
        conv_lib.kernel_grad_of_dilated_input = _kernel_grad_over_zeros
    try:
        fn, args = make()
        fn = jax.jit(fn)
        jax.block_until_ready(fn(*args))
    finally:
        conv_lib.gemm_weight_grad_default, conv_lib.kernel_grad_of_dilated_input = saved
    return fn, args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=3, help="timed calls per round")
    args = parser.parse_args()
    report = {}
    for name, make in CASES.items():
        versions = {"xla": compiled(make, False), "gemm": compiled(make, True)}
        if name in TRANSPOSED_CASES:
            versions["gemm_over_zeros"] = compiled(make, True, over_zeros=True)
        seconds = {key: [] for key in versions}
        for _ in range(args.rounds):
            for key, (fn, fn_args) in versions.items():
                start = time.perf_counter()
                for _ in range(args.calls):
                    out = fn(*fn_args)
                jax.block_until_ready(out)
                seconds[key].append((time.perf_counter() - start) / args.calls)
        best = {key: min(values) for key, values in seconds.items()}
        report[name] = {f"{k}_ms": round(v * 1e3, 1) for k, v in best.items()}
        report[name]["speedup"] = round(best["xla"] / best["gemm"], 2)
        over_zeros = ""
        if "gemm_over_zeros" in best:
            report[name]["speedup_over_zeros"] = round(best["gemm_over_zeros"] / best["gemm"], 2)
            over_zeros = (
                f"; GEMM over zeros {best['gemm_over_zeros'] * 1e3:.1f} ms "
                f"({best['gemm_over_zeros'] / best['gemm']:.2f}x the per-phase GEMMs)"
            )
        print(
            f"{name}: XLA {best['xla'] * 1e3:.1f} ms, GEMM {best['gemm'] * 1e3:.1f} ms "
            f"({best['xla'] / best['gemm']:.2f}x){over_zeros}",
            flush=True,
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
