"""A drop-in `lax.conv_general_dilated` whose kernel gradient is one GEMM per kernel offset.

For a convolution y[b, i, j, o] = sum_{p, q, c} x_pad[b, s i + p, s j + q, c] w[p, q, c, o] the
kernel gradient is dw[p, q, c, o] = sum_{b, i, j} x_pad[b, s i + p, s j + q, c] g[b, i, j, o]: for
each of the kh x kw offsets, a matrix product over the B x H' x W' positions. XLA's CPU backend
lowers that gradient as a convolution whose window is the whole image (28 x 28 for the MNIST
U-Net), which runs at well under half the speed of the forward convolution; the per-offset
products run at GEMM speed (1.38x on the MNIST U-Net's train step). The offsets run in a scan so
that one window is alive at a time: unrolled, XLA kept every window of a layer alive (4x the
temporary memory of XLA's own gradient on a stack of eight convolutions, 1.1x in the scan). The
forward pass and the input gradient stay XLA's convolutions.
A transposed convolution (`conv_transpose`) is a stride-1 convolution of the input with s - 1
zeros between its pixels; its kernel gradient (`kernel_grad_of_dilated_input`) takes each tap's
GEMM over only the outputs of the phase where that tap meets real pixels, never the zeros. (Its
forward pass as s^2 convolutions of the undilated input, one per output phase, was 1.15x faster
again on the conv VAE but deadlocked the Kanerva Machine's train step on jax 0.10.2's CPU runtime:
four independent multi-threaded Eigen convolutions in one program, zero CPU, reproducible; so the
forward pass stays XLA's convolution of the dilated input.)
Used on the CPU only (`gemm_weight_grad_default`, `default_conv_general_dilated`); GPU and TPU keep
XLA's own gradient. On this VM (2026-12-07) XLA's kernel gradient of a
VPN-sized convolution (152 x 32 x 32 x 24, 3 x 3, 24 features) took 609 ms against 120 ms by GEMMs
and 30 ms for the forward; `benchmarks/conv_kernel_grad.py` times every route.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def gemm_weight_grad_default() -> bool:
    """Whether convolutions take the per-offset GEMM kernel gradient here: on the CPU backend."""
    return jax.default_backend() == "cpu"


def default_conv_general_dilated(*args: Any, **kwargs: Any) -> jax.Array:
    """`conv_general_dilated` below on the CPU, lax's own elsewhere (chosen when traced)."""
    if gemm_weight_grad_default():
        return conv_general_dilated(*args, **kwargs)
    return lax.conv_general_dilated(*args, **kwargs)


def _is_nhwc_hwio(dimension_numbers: Any, ndim: int) -> bool:
    """Whether the dimension numbers are NHWC input, HWIO kernel, NHWC output (2-D only)."""
    if ndim != 4 or dimension_numbers is None:
        return False
    expected = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return dimension_numbers == expected
    return tuple(dimension_numbers) == _NHWC


def _xla_conv(x, w, strides, padding, dilation, input_dilation, precision):
    return lax.conv_general_dilated(
        x,
        w,
        strides,
        padding,
        lhs_dilation=input_dilation,
        rhs_dilation=dilation,
        dimension_numbers=_NHWC,
        precision=precision,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv_nhwc(x_BxHxWxC, w_KxKxCxO, strides, padding, dilation, input_dilation, precision):
    return _xla_conv(x_BxHxWxC, w_KxKxCxO, strides, padding, dilation, input_dilation, precision)


def _conv_nhwc_fwd(x_BxHxWxC, w_KxKxCxO, strides, padding, dilation, input_dilation, precision):
    y = _xla_conv(x_BxHxWxC, w_KxKxCxO, strides, padding, dilation, input_dilation, precision)
    return y, (x_BxHxWxC, w_KxKxCxO)


def _conv_nhwc_bwd(strides, padding, dilation, input_dilation, precision, residuals, g_BxHoxWoxO):
    x_BxHxWxC, w_KxKxCxO = residuals
    _, input_vjp = jax.vjp(
        lambda x: _xla_conv(x, w_KxKxCxO, strides, padding, dilation, input_dilation, precision),
        x_BxHxWxC,
    )
    (dx_BxHxWxC,) = input_vjp(g_BxHoxWoxO)
    if tuple(input_dilation) != (1, 1) and tuple(strides) == (1, 1):
        dw_KxKxCxO = kernel_grad_of_dilated_input(
            x_BxHxWxC, g_BxHoxWoxO, w_KxKxCxO.shape, input_dilation, padding, precision, dilation
        )
        return dx_BxHxWxC, dw_KxKxCxO.astype(w_KxKxCxO.dtype)
    # An input dilated by s is the input with s - 1 zeros between its pixels; the padding applies
    # to that dilated input, as in lax.
    (uh, uw), zero = input_dilation, jnp.zeros((), x_BxHxWxC.dtype)
    x_dilated = lax.pad(x_BxHxWxC, zero, ((0, 0, 0), (0, 0, uh - 1), (0, 0, uw - 1), (0, 0, 0)))
    dw_KxKxCxO = kernel_grad_by_gemm(
        x_dilated, g_BxHoxWoxO, w_KxKxCxO.shape, strides, padding, precision, dilation
    ).astype(w_KxKxCxO.dtype)
    return dx_BxHxWxC, dw_KxKxCxO


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def kernel_grad_by_gemm(
    x_BxHxWxC: jax.Array,
    g_BxHoxWoxO: jax.Array,
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    precision: Any = None,
    dilation: Sequence[int] = (1, 1),
) -> jax.Array:
    """The kernel gradient of an NHWC/HWIO convolution as kh x kw GEMMs, accumulated in at
    least float32 (kernel dilation d: offset (p, q) reads the input from (d p, d q))."""
    kh, kw, _, _ = kernel_shape
    sh, sw = strides
    dh, dw = dilation
    (top, bottom), (left, right) = padding
    _, ho, wo, _ = g_BxHoxWoxO.shape
    zero = jnp.zeros((), x_BxHxWxC.dtype)  # lax.pad: negative padding crops, as in lax's conv
    x_pad = lax.pad(x_BxHxWxC, zero, ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
    batch, channels = x_pad.shape[0], x_pad.shape[3]
    accumulate = jnp.promote_types(jnp.result_type(x_BxHxWxC, g_BxHoxWoxO), jnp.float32)
    # (O, B H' W'): the cotangent's rows, shared by every offset (XLA reads it transposed).
    g_OxN = g_BxHoxWoxO.reshape(-1, g_BxHoxWoxO.shape[-1]).T
    span = (batch, sh * (ho - 1) + 1, sw * (wo - 1) + 1, channels)

    def offset_grad(_, offset):
        # One window alive at a time: unrolled, XLA keeps all kh x kw windows of a layer alive.
        zero = jnp.zeros((), offset.dtype)
        window = lax.dynamic_slice(x_pad, (zero, offset[0], offset[1], zero), span)[
            :, ::sh, ::sw, :
        ]
        dw_OxC = jnp.dot(
            g_OxN,
            window.reshape(-1, channels),
            precision=precision,
            preferred_element_type=accumulate,
        )
        return None, dw_OxC.T

    offsets = jnp.array([(dh * p, dw * q) for p in range(kh) for q in range(kw)], jnp.int32)
    _, dw_KKxCxO = lax.scan(offset_grad, None, offsets)
    return dw_KKxCxO.reshape(kh, kw, *dw_KKxCxO.shape[1:])


def _dilated_input_phases(
    size: int, out_size: int, kernel: int, dilation: int, input_dilation: int, pad_before: int
) -> tuple[int, list[int], list[int], tuple[int, int]]:
    """One spatial axis of a stride-1 convolution of an input dilated by u (a transposed conv):
    (n, phase per kernel tap, first input row per tap, (pad before, pad after) of the input).

    Tap p reads the dilated, padded input at i + d p, a real input row m = (i + d p - pad) / u
    only where u divides i + d p - pad: the outputs i = phase + u k, k < n = ceil(out_size / u),
    which read rows m = first + k (rows outside [0, size) are the zero padding returned).
    """
    u = input_dilation
    count = -(-out_size // u)
    phases = [(pad_before - dilation * p) % u for p in range(kernel)]
    firsts = [(phase + dilation * p - pad_before) // u for p, phase in enumerate(phases)]
    before = max(0, -min(firsts))
    after = max(0, max(firsts) + count - size)
    return count, phases, [first + before for first in firsts], (before, after)


def kernel_grad_of_dilated_input(
    x_BxHxWxC: jax.Array,
    g_BxHoxWoxO: jax.Array,
    kernel_shape: Sequence[int],
    input_dilation: Sequence[int],
    padding: Sequence[tuple[int, int]],
    precision: Any = None,
    dilation: Sequence[int] = (1, 1),
) -> jax.Array:
    """The kernel gradient of a stride-1 convolution of an input dilated by (uh, uw) (a transposed
    convolution of stride (uh, uw)) as kh x kw GEMMs over only the B H' W' / (uh uw) output
    positions each tap meets a real input pixel at (the zeros between pixels are never read)."""
    kh, kw, _, _ = kernel_shape
    batch, height, width, channels = x_BxHxWxC.shape
    _, ho, wo, features = g_BxHoxWoxO.shape
    (uh, uw), (dh, dw) = input_dilation, dilation
    (top, _), (left, _) = padding
    nh, phase_h, first_h, pad_h = _dilated_input_phases(height, ho, kh, dh, uh, top)
    nw, phase_w, first_w, pad_w = _dilated_input_phases(width, wo, kw, dw, uw, left)
    zero = jnp.zeros((), x_BxHxWxC.dtype)
    x_pad = lax.pad(x_BxHxWxC, zero, ((0, 0, 0), (*pad_h, 0), (*pad_w, 0), (0, 0, 0)))
    # The cotangent by phase: (uh, uw, O, B nh nw), output (phase + u k) at k (zeros past H', W').
    g_pad = lax.pad(
        g_BxHoxWoxO,
        jnp.zeros((), g_BxHoxWoxO.dtype),
        ((0, 0, 0), (0, uh * nh - ho, 0), (0, uw * nw - wo, 0), (0, 0, 0)),
    )
    g_phases = g_pad.reshape(batch, nh, uh, nw, uw, features).transpose(2, 4, 5, 0, 1, 3)
    g_phases = g_phases.reshape(uh, uw, features, batch * nh * nw)
    accumulate = jnp.promote_types(jnp.result_type(x_BxHxWxC, g_BxHoxWoxO), jnp.float32)

    def tap_grad(_, tap):
        phase_row, phase_col, first_row, first_col = tap
        zero = jnp.zeros((), tap.dtype)
        window = lax.dynamic_slice(
            x_pad, (zero, first_row, first_col, zero), (batch, nh, nw, channels)
        )
        g_OxN = lax.dynamic_index_in_dim(
            lax.dynamic_index_in_dim(g_phases, phase_row, 0, keepdims=False),
            phase_col,
            0,
            keepdims=False,
        )
        dw_OxC = jnp.dot(
            g_OxN,
            window.reshape(-1, channels),
            precision=precision,
            preferred_element_type=accumulate,
        )
        return None, dw_OxC.T

    taps = jnp.array(
        [(phase_h[p], phase_w[q], first_h[p], first_w[q]) for p in range(kh) for q in range(kw)],
        jnp.int32,
    )
    _, dw_KKxCxO = lax.scan(tap_grad, None, taps)
    return dw_KKxCxO.reshape(kh, kw, *dw_KKxCxO.shape[1:])


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`lax.conv_general_dilated` with the per-offset GEMM kernel gradient for plain 2-D NHWC/HWIO
    convolutions (any kernel size, stride, padding, kernel and input dilation); anything else
    (grouped, other layouts, a preferred element type) is lax's."""
    plain = (
        _is_nhwc_hwio(dimension_numbers, lhs.ndim)
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
    )
    if not plain:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    strides = tuple(int(s) for s in window_strides)
    dilation = tuple(int(d) for d in (rhs_dilation or (1, 1)))
    input_dilation = tuple(int(d) for d in (lhs_dilation or (1, 1)))
    if isinstance(padding, str):  # "SAME", "VALID", ...: lax's own rule, on the dilated shapes
        window = tuple(d * (k - 1) + 1 for d, k in zip(dilation, rhs.shape[:2], strict=True))
        dilated = tuple(
            u * (n - 1) + 1 for u, n in zip(input_dilation, lhs.shape[1:3], strict=True)
        )
        padding = lax.padtype_to_pads(dilated, window, strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv_nhwc(lhs, rhs, strides, pads, dilation, input_dilation, precision)


def conv_transpose_padding(kernel: int, stride: int, padding: str) -> tuple[int, int]:
    """lax.conv_transpose's padding of one spatial axis for 'SAME' or 'VALID' (its own rule)."""
    if padding == "SAME":
        total = kernel + stride - 2
        before = kernel - 1 if stride > kernel - 1 else -(-total // 2)
    elif padding == "VALID":
        total = kernel + stride - 2 + max(kernel - stride, 0)
        before = kernel - 1
    else:
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    return before, total - before


def conv_transpose(
    x_BxHxWxC: jax.Array,
    w_KxKxCxO: jax.Array,
    strides: Sequence[int],
    padding: str,
    *,
    precision: Any = None,
) -> jax.Array:
    """`lax.conv_transpose(x, w, strides, padding)` (NHWC, HWIO, kernel not flipped) with the
    kernel gradient of `default_conv_general_dilated`."""
    pads = tuple(
        conv_transpose_padding(int(k), int(s), padding)
        for k, s in zip(w_KxKxCxO.shape[:2], strides, strict=True)
    )
    return default_conv_general_dilated(
        x_BxHxWxC,
        w_KxKxCxO,
        (1, 1),
        pads,
        lhs_dilation=tuple(int(s) for s in strides),
        dimension_numbers=_NHWC,
        precision=precision,
    )


class ConvTranspose(nn.Module):
    """flax's nn.ConvTranspose (2-D, NHWC, same parameters, names and initialisers) on
    `conv_transpose`: the CPU takes the GEMM kernel gradient."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: str = "SAME"

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        """The transposed convolution plus a bias."""
        shape = (*self.kernel_size, x_BxHxWxC.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        dtype = jnp.result_type(x_BxHxWxC, kernel)
        y = conv_transpose(
            x_BxHxWxC.astype(dtype), kernel.astype(dtype), self.strides, self.padding
        )
        return y + bias
