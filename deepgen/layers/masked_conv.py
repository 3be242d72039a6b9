"""Masked convolutions and the gated PixelCNN (decoder of ACN, building block of VPN).

PixelCNN (van den Oord et al., arXiv:1601.06759, Sec. 3.4, Fig. 2): a 2-D convolution whose kernel
is zeroed at and after the centre in raster order, so output pixel (i, j) sees only input pixels
before (i, j). Mask 'A' (first layer) also zeroes the centre; mask 'B' (later layers) keeps it. With
channel groups (e.g. R, G, B) the centre tap connects input group g_in to output group g_out only if
g_in < g_out (mask A) or g_in <= g_out (mask B); channel k of C is in group k * G // C (contiguous
groups, equal when G divides C).

Gated PixelCNN (van den Oord et al., arXiv:1606.05328, Sec. 2.1-2.3, Fig. 2, Eqs. 2 and 4): a
vertical stack (rows above, full kernel width) and a horizontal stack (the current row, pixels to the
left) remove the blind spot of masked 3x3 stacks. Each stack is gated, y = tanh(W_f * x + V_f h) *
sigmoid(W_g * x + V_g h), with an optional conditioning h (a vector, or a map that must not depend
on the current image); the vertical pre-activations reach the horizontal stack through a 1x1 conv,
and the horizontal stack has a residual connection. Here the vertical kernel covers rows i - r .. i
(the current row is zeroed in the first block), so vertical features at row i depend only on rows
< i and can feed the horizontal stack at the same position. After L blocks with radius r = k // 2,
output (i, j) sees rows i - L r .. i - 1 at columns j - L r .. j + L r, and row i at columns
j - L r .. j - 1 (with a first kernel of radius r0, replace L r by r0 + (L - 1) r).
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

MASK_TYPES = ("A", "B")
Initializer = Callable[..., jax.Array]


def _check_mask_type(mask_type: str) -> None:
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type={mask_type!r} is not one of {MASK_TYPES}")


def channel_group_of(channels: int, channel_groups: int) -> np.ndarray:
    """Channel k's group, k * groups // channels: contiguous, sizes differing by at most one."""
    return np.arange(channels) * channel_groups // channels


def pixelcnn_mask(
    kernel_shape: tuple[int, int],
    in_channels: int,
    out_channels: int,
    mask_type: str,
    channel_groups: int = 1,
) -> np.ndarray:
    """The kh x kw x C_in x C_out 0/1 raster-order mask of a PixelCNN conv (centre at (kh//2, kw//2))."""
    _check_mask_type(mask_type)
    if min(in_channels, out_channels) < channel_groups:
        raise ValueError(
            f"channel_groups={channel_groups} needs at least that many channels, got "
            f"in_channels={in_channels} and out_channels={out_channels}"
        )
    kh, kw = kernel_shape
    ci, cj = kh // 2, kw // 2
    mask = np.zeros((kh, kw, in_channels, out_channels), np.float32)
    mask[:ci] = 1.0
    mask[ci, :cj] = 1.0
    group_in = channel_group_of(in_channels, channel_groups)
    group_out = channel_group_of(out_channels, channel_groups)
    if mask_type == "A":
        mask[ci, cj] = group_in[:, None] < group_out[None, :]
    else:
        mask[ci, cj] = group_in[:, None] <= group_out[None, :]
    return mask


def _conv2d(
    x_BxHxWxC: jax.Array, kernel: jax.Array, padding: tuple[tuple[int, int], tuple[int, int]]
) -> jax.Array:
    """Stride-1 2-D convolution (cross-correlation) with explicit zero padding."""
    dtype = jnp.result_type(x_BxHxWxC, kernel)
    return jax.lax.conv_general_dilated(
        x_BxHxWxC.astype(dtype),
        kernel.astype(dtype),
        window_strides=(1, 1),
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )


def _kernel_shape(kernel_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(kernel_size, int):
        return kernel_size, kernel_size
    return tuple(kernel_size)


class MaskedConv2D(nn.Module):
    """A PixelCNN masked conv over x_BxHxWxC: output (i, j) sees inputs before (i, j) (and at it, mask 'B')."""

    features: int
    kernel_size: int | tuple[int, int]
    mask_type: str
    use_bias: bool = True
    channel_groups: int = 1
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        """y[b, i, j] = sum over the masked kernel window centred on (i, j), zero padded; shape B x H x W x F."""
        kh, kw = _kernel_shape(self.kernel_size)
        in_channels = x_BxHxWxC.shape[-1]
        mask = pixelcnn_mask(
            (kh, kw), in_channels, self.features, self.mask_type, self.channel_groups
        )
        kernel = self.param("kernel", self.kernel_init, mask.shape, self.param_dtype)
        padding = ((kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2))
        y_BxHxWxF = _conv2d(x_BxHxWxC, kernel * mask, padding)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y_BxHxWxF = y_BxHxWxF + bias.astype(y_BxHxWxF.dtype)
        return y_BxHxWxF


def gate(pre_BxHxWx2F: jax.Array) -> jax.Array:
    """tanh(first half) * sigmoid(second half) along the channels (Eq. 2)."""
    f, g = jnp.split(pre_BxHxWx2F, 2, axis=-1)
    return jnp.tanh(f) * jax.nn.sigmoid(g)


class GatedPixelCNNBlock(nn.Module):
    """One gated block: (v, h[, cond]) -> (v, h); mask 'A' for the first block (no centre, no residual)."""

    features: int
    kernel_size: int = 3
    mask_type: str = "B"

    @nn.compact
    def __call__(
        self,
        v_BxHxWxC: jax.Array,
        h_BxHxWxC: jax.Array,
        cond: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """cond is B x D (a vector per image) or B x H x W x D (a map independent of the image)."""
        _check_mask_type(self.mask_type)
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size={self.kernel_size} must be odd")
        k, r, f2 = self.kernel_size, self.kernel_size // 2, 2 * self.features
        first = self.mask_type == "A"
        lecun = nn.initializers.lecun_normal()

        # Vertical stack: rows i - r .. i, columns j - r .. j + r; the current row is zeroed in block A.
        v_kernel = self.param("vertical_kernel", lecun, (r + 1, k, v_BxHxWxC.shape[-1], f2))
        v_mask = np.ones((r + 1, k, 1, 1), np.float32)
        if first:
            v_mask[r] = 0.0
        v_pre = _conv2d(v_BxHxWxC, v_kernel * v_mask, ((r, 0), (r, r)))
        v_pre = v_pre + self.param("vertical_bias", nn.initializers.zeros_init(), (f2,))

        # Horizontal stack: row i, columns j - r .. j; the current pixel is zeroed in block A.
        h_kernel = self.param("horizontal_kernel", lecun, (1, r + 1, h_BxHxWxC.shape[-1], f2))
        h_mask = np.ones((1, r + 1, 1, 1), np.float32)
        if first:
            h_mask[:, r] = 0.0
        h_pre = _conv2d(h_BxHxWxC, h_kernel * h_mask, ((0, 0), (r, 0)))
        h_pre = h_pre + nn.Dense(f2, name="vertical_to_horizontal")(v_pre)

        if cond is not None:
            v_cond = nn.Dense(f2, use_bias=False, name="vertical_cond")(cond)
            h_cond = nn.Dense(f2, use_bias=False, name="horizontal_cond")(cond)
            if cond.ndim == 2:
                v_cond, h_cond = v_cond[:, None, None, :], h_cond[:, None, None, :]
            v_pre, h_pre = v_pre + v_cond, h_pre + h_cond

        v_out = gate(v_pre)
        h_out = nn.Dense(self.features, name="horizontal_out")(gate(h_pre))
        if not first:
            if h_BxHxWxC.shape[-1] != self.features:
                raise ValueError(
                    f"the residual needs {self.features} input channels, got {h_BxHxWxC.shape[-1]}"
                )
            h_out = h_out + h_BxHxWxC
        return v_out, h_out


class GatedPixelCNN(nn.Module):
    """Image x_BxHxWxC (+ cond) -> logits B x H x W x logits_per_pixel, each from strictly earlier pixels."""

    num_layers: int
    features: int
    logits_per_pixel: int
    kernel_size: int = 3
    first_kernel_size: int | None = None
    head_features: int | None = None
    head_activation: Callable[[jax.Array], jax.Array] = nn.relu

    @property
    def receptive_radius(self) -> int:
        """How many rows above (and columns either side) output (i, j) sees: r0 + (L - 1) r."""
        first = self.first_kernel_size or self.kernel_size
        return first // 2 + (self.num_layers - 1) * (self.kernel_size // 2)

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array, cond: jax.Array | None = None) -> jax.Array:
        """Per-pixel logits; cond is B x D or B x H x W x D (see GatedPixelCNNBlock)."""
        if self.num_layers < 1:
            raise ValueError(f"num_layers={self.num_layers} must be >= 1")
        v = h = x_BxHxWxC
        for layer in range(self.num_layers):
            first = layer == 0
            v, h = GatedPixelCNNBlock(
                self.features,
                (self.first_kernel_size or self.kernel_size) if first else self.kernel_size,
                "A" if first else "B",
                name=f"block_{layer}",
            )(v, h, cond)
        out = nn.Dense(self.head_features or self.features, name="head_hidden")(
            self.head_activation(h)
        )
        return nn.Dense(self.logits_per_pixel, name="head_logits")(self.head_activation(out))
