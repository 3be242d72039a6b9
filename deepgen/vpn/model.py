"""Video Pixel Networks (Kalchbrenner et al., arXiv:1610.00527, ICML 2017), Secs. 3-4.

The video's joint distribution is factorised over frames, pixels in raster order and colour
channels (Sec. 3, Eq. 1): p(x) = prod_t prod_{i,j} prod_c p(x_{t,i,j,c} | x_<), where x_< is every
pixel of frames < t, the pixels before (i, j) in frame t, and the earlier channels of (i, j).

* Multiplicative unit (Fig. 3): MU(h) = g1 * tanh(g2 * h + g3 * u), deepgen/layers/multiplicative.
* Residual multiplicative block (Fig. 2): 2c channels -> 1x1 conv to c -> MU (3x3) -> MU (3x3) ->
  1x1 conv to 2c, plus the input (`ResidualBlock`; unit "relu" is Table 2's ReLU ablation, a 3x3
  conv and ReLU in place of each MU).
* Resolution-preserving encoder (Sec. 4.1): a 3x3 conv to 2c channels then 8 blocks with dilation
  rates 1, 2, 4, 8, 1, 2, 4, 8 (the same rate inside a block), no pooling or striding; applied to
  every frame independently.
* ConvLSTM (Sec. 4.2) over the encoded frames; its output after frame t is the context of frame
  t + 1. An action-conditional model (Robotic Pushing, Sec. 5.2) also feeds the step's condition
  vector (action, known state), tiled over the pixels, into the ConvLSTM [ours: where the paper
  enters actions and states is recalled, not checked].
* Decoder (Sec. 4.3): PixelCNN masked blocks with no dilation. The current frame enters only
  through the first conv, masked 'A' over raster order and colour groups; a 1x1 conv of the
  context (which depends only on earlier frames) is added to it and, by default
  (`context_every_unit`), to the gates of every unit of every block, as the conditional "PixelCNN
  decoders" the paper cites (van den Oord et al. 2016, arXiv:1606.05328) condition every gated
  layer [ours: that VPN conditions every layer is read from that citation, not checked in the
  paper's text]; every later conv (the blocks' 1x1 and 3x3 convs and the output head) is masked
  'B'. So each feature at (i, j) depends on
  frame t's pixels before (i, j) only (and on channels of (i, j) of an earlier colour group), and
  the residual paths and the MU's g2 * h cannot leak the current pixel (the fault of both public
  ports; see the research notes). Stacked masked 3x3 convs keep PixelCNN's blind spot (pixels
  above and to the right beyond the kernels' diagonal reach), as the paper's decoder does
  [recalled: it builds on the PixelCNN of van den Oord et al. 2016]. With `pixel_dependencies=False` the frame is not an input at
  all: the paper's baseline (Table 1, 110.1 nats), whose pixels are independent given the past.
* Output: per channel, one Bernoulli logit (Moving MNIST, grey values as soft targets, Sec. 5.1)
  or `num_values` categorical logits (Robotic Pushing, 256 intensities, Sec. 5.2).

Cached generation (`PixelDecoder.at`, deepgen/vpn/sampling.py) follows Fast PixelCNN++ (Ramachandran
et al., arXiv:1704.06001): each masked kxk conv keeps its whole input map as a buffer; at (i, j) a
layer reads its k x k window and writes its output at (i, j) only, so a pixel costs O(layers), not
O(layers x pixels). The windows read only positions already written, as the masks demand.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deepgen.layers import conv as conv_lib
from deepgen.layers.masked_conv import pixelcnn_mask
from deepgen.layers.multiplicative import multiplicative_unit

UNITS = ("mu", "relu")


def _conv(x_BxHxWxC: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
    """Stride-1 'same' convolution (cross-correlation) with zero padding and a dilation."""
    pad = dilation * (kernel.shape[0] // 2)
    dtype = jnp.result_type(x_BxHxWxC, kernel)
    return conv_lib.default_conv_general_dilated(  # GEMM kernel gradient on CPU
        x_BxHxWxC.astype(dtype),
        kernel.astype(dtype),
        window_strides=(1, 1),
        padding=((pad, pad), (pad, pad)),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def window_at(buffer_BxHpxWpxC: jax.Array, i: jax.Array, j: jax.Array, size: int) -> jax.Array:
    """The size x size window of a buffer padded by size // 2 whose centre is pixel (i, j)."""
    batch, _, _, channels = buffer_BxHpxWpxC.shape
    return jax.lax.dynamic_slice(buffer_BxHpxWpxC, (0, i, j, 0), (batch, size, size, channels))


def write_at(buffer_BxHpxWpxC: jax.Array, value_BxC: jax.Array, i, j, pad: int) -> jax.Array:
    """The buffer (padded by pad) with pixel (i, j) set to value."""
    update = value_BxC[:, None, None, :].astype(buffer_BxHpxWpxC.dtype)
    return jax.lax.dynamic_update_slice(buffer_BxHpxWpxC, update, (0, i + pad, j + pad, 0))


class Conv(nn.Module):
    """A kxk conv, plain and dilated or PixelCNN-masked, that can also run at one pixel (`at`).

    gate_repeats tiles the mask along the outputs, so that each of a MU's four gates (outputs laid
    out [g1|g2|g3|u]) has the channel groups of its input h.
    """

    in_features: int
    features: int
    kernel_size: int = 3
    dilation: int = 1
    mask_type: str | None = None
    channel_groups: int = 1
    gate_repeats: int = 1

    def setup(self) -> None:
        k = self.kernel_size
        if k % 2 != 1:
            raise ValueError(f"kernel_size={k} must be odd")
        shape = (k, k, self.in_features, self.features)
        self.kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        self.bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))

    def mask(self) -> np.ndarray | None:
        """The 0/1 mask (None for a plain conv)."""
        if self.mask_type is None:
            return None
        per_gate = self.features // self.gate_repeats
        mask = pixelcnn_mask(
            (self.kernel_size, self.kernel_size),
            self.in_features,
            per_gate,
            self.mask_type,
            self.channel_groups,
        )
        return np.tile(mask, (1, 1, 1, self.gate_repeats))

    def _kernel(self) -> jax.Array:
        mask = self.mask()
        return self.kernel if mask is None else self.kernel * mask

    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        return _conv(x_BxHxWxC, self._kernel(), self.dilation) + self.bias

    def at(self, window_BxKxKxC: jax.Array) -> jax.Array:
        """The output at the window's centre (no dilation), B x features."""
        if self.dilation != 1:
            raise ValueError("a dilated conv has no single-pixel step here (the decoder has none)")
        out = jnp.einsum(
            "bhwc,hwcd->bd", window_BxKxKxC, self._kernel().astype(window_BxKxKxC.dtype)
        )
        return out + self.bias


class Unit(nn.Module):
    """MU (Fig. 3) or, for Table 2's ablation, ReLU of a conv; c channels in and out.

    With context_features > 0 a 1x1 conv of a context map (the ConvLSTM's output, which depends
    on earlier frames only) is added to the conv's pre-activations: every gate of the unit is
    conditioned, as in the conditional PixelCNN decoders (van den Oord et al. 2016) that VPN uses.
    """

    features: int
    unit: str = "mu"
    kernel_size: int = 3
    dilation: int = 1
    mask_type: str | None = None
    channel_groups: int = 1
    context_features: int = 0

    def setup(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unit={self.unit!r} is not one of {UNITS}")
        repeats = 4 if self.unit == "mu" else 1
        self.conv = Conv(
            self.features,
            repeats * self.features,
            self.kernel_size,
            self.dilation,
            self.mask_type,
            self.channel_groups,
            gate_repeats=repeats,
        )
        if self.context_features:
            self.context = Conv(self.context_features, repeats * self.features, 1)

    def _combine(self, h: jax.Array, pre: jax.Array) -> jax.Array:
        return multiplicative_unit(h, pre) if self.unit == "mu" else nn.relu(pre)

    def __call__(self, h_BxHxWxC: jax.Array, context_BxHxWxF: jax.Array | None = None) -> jax.Array:
        pre = self.conv(h_BxHxWxC)
        if self.context_features:
            pre = pre + self.context(context_BxHxWxF)
        return self._combine(h_BxHxWxC, pre)

    def at(self, window_BxKxKxC: jax.Array, context_BxF: jax.Array | None = None) -> jax.Array:
        """The unit at the window's centre pixel, B x C."""
        r = self.kernel_size // 2
        pre = self.conv.at(window_BxKxKxC)
        if self.context_features:
            pre = pre + self.context.at(context_BxF[:, None, None, :])
        return self._combine(window_BxKxKxC[:, r, r], pre)


class ResidualBlock(nn.Module):
    """Fig. 2: 2c -> 1x1 -> c -> unit (3x3) -> unit (3x3) -> 1x1 -> 2c, plus the input."""

    channels: int  # 2c
    hidden: int  # c
    unit: str = "mu"
    kernel_size: int = 3
    dilation: int = 1
    mask_type: str | None = None
    channel_groups: int = 1
    context_features: int = 0  # > 0: both units' gates conditioned on a context map (decoder)

    def setup(self) -> None:
        pointwise = dict(
            kernel_size=1, mask_type=self.mask_type, channel_groups=self.channel_groups
        )
        spatial = dict(
            unit=self.unit,
            kernel_size=self.kernel_size,
            dilation=self.dilation,
            mask_type=self.mask_type,
            channel_groups=self.channel_groups,
            context_features=self.context_features,
        )
        self.reduce = Conv(self.channels, self.hidden, **pointwise)
        self.unit_1 = Unit(self.hidden, **spatial)
        self.unit_2 = Unit(self.hidden, **spatial)
        self.expand = Conv(self.hidden, self.channels, **pointwise)

    def __call__(self, h_BxHxWxC: jax.Array, context_BxHxWxF: jax.Array | None = None) -> jax.Array:
        m = self.unit_1(self.reduce(h_BxHxWxC), context_BxHxWxF)
        return h_BxHxWxC + self.expand(self.unit_2(m, context_BxHxWxF))

    def at(
        self,
        h_BxC: jax.Array,
        buffers: tuple[jax.Array, jax.Array],
        i,
        j,
        context_BxF: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """The block at pixel (i, j) given its two units' input buffers; the updated buffers."""
        k, r = self.kernel_size, self.kernel_size // 2
        into_1, into_2 = buffers
        a_BxC = self.reduce.at(h_BxC[:, None, None, :])
        into_1 = write_at(into_1, a_BxC, i, j, r)
        m_BxC = self.unit_1.at(window_at(into_1, i, j, k), context_BxF)
        into_2 = write_at(into_2, m_BxC, i, j, r)
        m_BxC = self.unit_2.at(window_at(into_2, i, j, k), context_BxF)
        return h_BxC + self.expand.at(m_BxC[:, None, None, :]), (into_1, into_2)


class ConvLSTM(nn.Module):
    """A convolutional LSTM (Shi et al., 2015, without peepholes): gates = conv([x, h])."""

    in_features: int
    features: int
    kernel_size: int = 3

    def setup(self) -> None:
        self.gates = Conv(self.in_features + self.features, 4 * self.features, self.kernel_size)

    def initial_state(self, batch: int, height: int, width: int, dtype=jnp.float32):
        """Zero (cell, hidden) maps."""
        zeros = jnp.zeros((batch, height, width, self.features), dtype)
        return zeros, zeros

    def __call__(self, state, x_BxHxWxC: jax.Array):
        """One step: ((cell, hidden), input) -> ((cell, hidden), hidden)."""
        cell, hidden = state
        pre = self.gates(jnp.concatenate([x_BxHxWxC, hidden.astype(x_BxHxWxC.dtype)], axis=-1))
        i, f, o, g = jnp.split(pre, 4, axis=-1)
        cell = jax.nn.sigmoid(f) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
        hidden = jax.nn.sigmoid(o) * jnp.tanh(cell)
        return (cell, hidden), hidden


class PixelDecoder(nn.Module):
    """Masked blocks over one frame given its context map: B x H x W x C x K logits."""

    image_channels: int
    num_values: int  # 1: a Bernoulli logit per channel; K > 1: K categorical logits
    channels: int
    hidden: int
    num_blocks: int
    context_features: int
    unit: str = "mu"
    kernel_size: int = 3
    first_kernel_size: int = 3
    pixel_dependencies: bool = True
    context_every_unit: bool = True  # False: the context enters the decoder's input only

    def setup(self) -> None:
        groups = self.image_channels
        if self.pixel_dependencies:
            self.frame_in = Conv(
                self.image_channels,
                self.channels,
                self.first_kernel_size,
                mask_type="A",
                channel_groups=groups,
            )
        self.context_in = Conv(self.context_features, self.channels, 1)
        self.blocks = [
            ResidualBlock(
                self.channels,
                self.hidden,
                self.unit,
                self.kernel_size,
                1,
                mask_type="B",
                channel_groups=groups,
                context_features=self.context_features if self.context_every_unit else 0,
            )
            for _ in range(self.num_blocks)
        ]
        self.head = Conv(
            self.channels,
            self.image_channels * self.num_values,
            1,
            mask_type="B",
            channel_groups=groups,
        )

    def __call__(self, frame_BxHxWxC: jax.Array, context_BxHxWxD: jax.Array) -> jax.Array:
        h = self.context_in(context_BxHxWxD)
        if self.pixel_dependencies:
            h = h + self.frame_in(frame_BxHxWxC)
        for block in self.blocks:
            h = block(h, context_BxHxWxD)
        logits = self.head(nn.relu(h))
        return logits.reshape(*logits.shape[:-1], self.image_channels, self.num_values)

    def init_buffers(self, batch: int, height: int, width: int, dtype=jnp.float32):
        """Zero input buffers of every block's two units, padded by kernel_size // 2."""
        r = self.kernel_size // 2
        zeros = jnp.zeros((batch, height + 2 * r, width + 2 * r, self.hidden), dtype)
        return tuple((zeros, zeros) for _ in range(self.num_blocks))

    def at(
        self,
        frame_padded_BxHpxWpxC: jax.Array,
        context_BxD: jax.Array,
        buffers: tuple,
        i: jax.Array,
        j: jax.Array,
    ) -> tuple[jax.Array, tuple]:
        """The logits of pixel (i, j), B x C x K, from the frame (padded by first_kernel_size // 2)
        and the buffers; the buffers with (i, j) written. Equal to __call__'s logits at (i, j)."""
        h = self.context_in.at(context_BxD[:, None, None, :])
        if self.pixel_dependencies:
            window = window_at(frame_padded_BxHpxWpxC, i, j, self.first_kernel_size)
            h = h + self.frame_in.at(window)
        new_buffers = []
        for block, block_buffers in zip(self.blocks, buffers, strict=True):
            h, block_buffers = block.at(h, block_buffers, i, j, context_BxD)
            new_buffers.append(block_buffers)
        logits = self.head.at(nn.relu(h)[:, None, None, :])
        return logits.reshape(-1, self.image_channels, self.num_values), tuple(new_buffers)


class VideoPixelNetwork(nn.Module):
    """Encoder, ConvLSTM and decoder; `__call__` gives the logits of frames 1..T-1 (teacher forced)."""

    image_channels: int = 1
    num_values: int = 1
    channels: int = 256  # 2c
    hidden: int = 128  # c
    encoder_dilations: Sequence[int] = (1, 2, 4, 8, 1, 2, 4, 8)
    decoder_blocks: int = 12
    lstm_features: int = 256
    unit: str = "mu"
    kernel_size: int = 3
    first_kernel_size: int = 3
    pixel_dependencies: bool = True
    condition_features: int = 0
    context_every_unit: bool = True

    def setup(self) -> None:
        k = self.kernel_size
        self.encoder_in = Conv(self.image_channels, self.channels, k)
        self.encoder_blocks = [
            ResidualBlock(self.channels, self.hidden, self.unit, k, dilation)
            for dilation in self.encoder_dilations
        ]
        self.lstm = ConvLSTM(self.channels + self.condition_features, self.lstm_features, k)
        self.decoder = PixelDecoder(
            self.image_channels,
            self.num_values,
            self.channels,
            self.hidden,
            self.decoder_blocks,
            self.lstm_features,
            self.unit,
            k,
            self.first_kernel_size,
            self.pixel_dependencies,
            self.context_every_unit,
        )

    def encode(self, frames_NxHxWxC: jax.Array) -> jax.Array:
        """The resolution-preserving encoder on independent frames: N x H x W x 2c."""
        h = self.encoder_in(frames_NxHxWxC)
        for block in self.encoder_blocks:
            h = block(h)
        return h

    def lstm_input(self, encoded_BxHxWxD: jax.Array, condition_BxA: jax.Array | None) -> jax.Array:
        """The ConvLSTM's input: the encoded frame with the condition tiled over the pixels."""
        if self.condition_features == 0:
            return encoded_BxHxWxD
        if condition_BxA is None or condition_BxA.shape[-1] != self.condition_features:
            got = None if condition_BxA is None else condition_BxA.shape
            raise ValueError(f"the model needs a condition of {self.condition_features}, got {got}")
        batch, height, width, _ = encoded_BxHxWxD.shape
        tiled = jnp.broadcast_to(
            condition_BxA[:, None, None, :].astype(encoded_BxHxWxD.dtype),
            (batch, height, width, self.condition_features),
        )
        return jnp.concatenate([encoded_BxHxWxD, tiled], axis=-1)

    def lstm_step(self, state, encoded_BxHxWxD, condition_BxA=None):
        """One ConvLSTM step on an encoded frame: (state, hidden)."""
        return self.lstm(state, self.lstm_input(encoded_BxHxWxD, condition_BxA))

    def initial_state(self, batch: int, height: int, width: int, dtype=jnp.float32):
        """The ConvLSTM's zero state."""
        return self.lstm.initial_state(batch, height, width, dtype)

    def contexts(
        self, frames_BxTxHxWxC: jax.Array, conditions_BxTxA: jax.Array | None = None
    ) -> jax.Array:
        """The ConvLSTM outputs after frames 0..T-1 (context of frames 1..T): B x T x H x W x F."""
        batch, time, height, width, channels = frames_BxTxHxWxC.shape
        encoded = self.encode(frames_BxTxHxWxC.reshape(batch * time, height, width, channels))
        encoded_TxBxHxWxD = jnp.swapaxes(encoded.reshape(batch, time, *encoded.shape[1:]), 0, 1)
        conditions = None if conditions_BxTxA is None else jnp.swapaxes(conditions_BxTxA, 0, 1)
        state = self.initial_state(batch, height, width, encoded.dtype)
        outputs = []
        for t in range(time):  # T is small and static; a Python loop keeps Flax's setup simple
            condition = None if conditions is None else conditions[t]
            state, hidden = self.lstm_step(state, encoded_TxBxHxWxD[t], condition)
            outputs.append(hidden)
        return jnp.stack(outputs, axis=1)

    def decode(self, frames_NxHxWxC: jax.Array, contexts_NxHxWxF: jax.Array) -> jax.Array:
        """The decoder on independent (frame, context) pairs: N x H x W x C x K logits."""
        return self.decoder(frames_NxHxWxC, contexts_NxHxWxF)

    def decode_at(self, frame_padded, context_BxF, buffers, i, j):
        """The decoder's cached step at pixel (i, j) (see PixelDecoder.at)."""
        return self.decoder.at(frame_padded, context_BxF, buffers, i, j)

    def init_buffers(self, batch: int, height: int, width: int, dtype=jnp.float32):
        """The decoder's zero buffers for cached generation."""
        return self.decoder.init_buffers(batch, height, width, dtype)

    def __call__(
        self, frames_BxTxHxWxC: jax.Array, conditions_BxTxA: jax.Array | None = None
    ) -> jax.Array:
        """Logits of frames 1..T-1, each given the frames before it: B x (T-1) x H x W x C x K."""
        batch, time, height, width, channels = frames_BxTxHxWxC.shape
        if time < 2:
            raise ValueError(f"a video needs at least 2 frames, got {time}")
        conditions = None if conditions_BxTxA is None else conditions_BxTxA[:, : time - 1]
        contexts = self.contexts(frames_BxTxHxWxC[:, :-1], conditions)
        n = batch * (time - 1)
        logits = self.decode(
            frames_BxTxHxWxC[:, 1:].reshape(n, height, width, channels),
            contexts.reshape(n, height, width, -1),
        )
        return logits.reshape(batch, time - 1, *logits.shape[1:])
