"""The teacher WaveNet of Parallel WaveNet (van den Oord et al., arXiv:1711.10433, Sec. 2 and 5),
built as the WaveNet of arXiv:1609.03499 (Secs. 2.1-2.5).

* Input: the audio shifted right by one sample (position t sees x_<t), a causal conv of the
  filter size, then L residual layers with dilations 1, 2, ..., 512 repeated (Sec. 2.1; the
  paper's teacher: 30 layers, filter size 3, 16-bit audio, Sec. 5 [recalled]).
* Each layer (Sec. 2.3-2.4, Eq. 2-3): z = tanh(W_f * x + V_f y) * sigmoid(W_g * x + V_g y) from one
  dilated causal conv with 2 x gate/2 outputs, a residual 1x1 back to the residual width added to
  the input, and a 1x1 skip output. y is the conditioning at each time step: the local log-mel
  frame of the sample's hop (upsampled by repetition, [ours]: the paper conditions on linguistic
  features and log F0, which no public corpus here has) concatenated with a learned embedding of
  the speaker id (global conditioning, Sec. 2.5).
* Output (Sec. 2.2 of arXiv:1711.10433): ReLU(sum of skips) -> 1x1 -> ReLU -> 1x1 to 3 x M numbers,
  a discretised mixture of M = 10 logistics over the 65,536 16-bit values (PixelCNN++,
  deepgen/layers/discretized_logistic.py) in place of the 2016 WaveNet's 256-way softmax.

Cached generation (`init_cache`, `step`; Paine et al., arXiv:1611.09482): every causal conv keeps its
last (k - 1) d inputs in a ring buffer (deepgen/layers/causal_conv.py `ring_step`), so one new
sample reads k - 1 slots per layer and costs O(layers), not O(receptive field); equal to the full
network's output at that position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepgen.layers.causal_conv import CausalConv1D


def dilation_cycle(num_layers: int, cycle: int = 10) -> tuple[int, ...]:
    """Dilations 1, 2, ..., 2^(cycle - 1) repeated over num_layers layers."""
    return tuple(2 ** (i % cycle) for i in range(num_layers))


def shift_right(x_BxTxC: jax.Array) -> jax.Array:
    """x[t - 1] at position t (zero at t = 0): what the network sees when predicting x[t]."""
    return jnp.pad(x_BxTxC, ((0, 0), (1, 0), (0, 0)))[:, :-1]


class GatedResidualLayer(nn.Module):
    """One dilated gated layer (Eq. 2-3): (residual out, skip out); skip_features 0: none."""

    residual_features: int
    gate_features: int
    skip_features: int
    kernel_size: int
    dilation: int

    def setup(self) -> None:
        if self.gate_features % 2:
            raise ValueError(f"gate_features={self.gate_features} must be even (tanh | sigmoid)")
        self.dilated = CausalConv1D(self.gate_features, self.kernel_size, self.dilation)
        self.condition = nn.Dense(self.gate_features, use_bias=False)
        self.residual = nn.Dense(self.residual_features)
        if self.skip_features:
            self.skip = nn.Dense(self.skip_features)

    def _finish(self, x, pre, condition):
        if condition is not None:
            pre = pre + self.condition(condition)
        f, g = jnp.split(pre, 2, axis=-1)
        z = jnp.tanh(f) * jax.nn.sigmoid(g)
        skip = self.skip(z) if self.skip_features else None
        return x + self.residual(z), skip

    def __call__(self, x_BxTxC: jax.Array, condition_BxTxD: jax.Array | None):
        return self._finish(x_BxTxC, self.dilated(x_BxTxC), condition_BxTxD)

    def step(self, ring_BxLxC: jax.Array, t, x_BxC: jax.Array, condition_BxD: jax.Array | None):
        """Position t from the conv's ring buffer of past inputs: ((residual, skip), new ring)."""
        params = self.dilated.variables["params"]
        pre, ring_BxLxC = self.dilated.ring_step(params, ring_BxLxC, t, x_BxC)
        return self._finish(x_BxC, pre, condition_BxD), ring_BxLxC


class Conditioning(nn.Module):
    """y_t = [mel frame t // hop, speaker embedding]: B x T x (num_mels + speaker_features)."""

    hop: int
    num_speakers: int
    speaker_features: int

    def setup(self) -> None:
        if self.num_speakers > 1:
            self.speakers = nn.Embed(self.num_speakers, self.speaker_features)

    def __call__(
        self, mel_BxFxM: jax.Array | None, speaker_B: jax.Array | None, length: int
    ) -> jax.Array | None:
        parts = []
        if mel_BxFxM is not None:
            frames_needed = -(-length // self.hop)
            if mel_BxFxM.shape[1] < frames_needed:
                raise ValueError(
                    f"{length} samples need {frames_needed} mel frames of hop {self.hop}, got "
                    f"{mel_BxFxM.shape[1]}"
                )
            parts.append(jnp.repeat(mel_BxFxM, self.hop, axis=1)[:, :length])
        if self.num_speakers > 1:
            if speaker_B is None:
                raise ValueError(f"a model of {self.num_speakers} speakers needs speaker ids")
            embedded = self.speakers(speaker_B)
            parts.append(
                jnp.broadcast_to(embedded[:, None], (len(embedded), length, embedded.shape[-1]))
            )
        if not parts:
            return None
        dtype = jnp.result_type(*parts)
        return jnp.concatenate([p.astype(dtype) for p in parts], axis=-1)


class WaveNet(nn.Module):
    """x_BxT in [-1, 1] (+ conditioning) -> B x T x 3M mixture parameters of x[t] given x[<t]."""

    residual_features: int = 512
    gate_features: int = 512
    skip_features: int = 256
    kernel_size: int = 3
    dilations: Sequence[int] = dilation_cycle(30)
    num_mixtures: int = 10
    hop: int = 256
    num_speakers: int = 1
    speaker_features: int = 16

    def setup(self) -> None:
        self.conditioning = Conditioning(self.hop, self.num_speakers, self.speaker_features)
        self.input_conv = CausalConv1D(self.residual_features, self.kernel_size)
        self.layers = [
            GatedResidualLayer(
                self.residual_features,
                self.gate_features,
                self.skip_features,
                self.kernel_size,
                dilation,
            )
            for dilation in self.dilations
        ]
        self.head_hidden = nn.Dense(self.skip_features)
        self.head_out = nn.Dense(3 * self.num_mixtures)

    @property
    def receptive_field(self) -> int:
        """Past samples one prediction sees: (k - 1) (1 + sum of dilations) + 1 (the shift)."""
        return (self.kernel_size - 1) * (1 + sum(self.dilations)) + 1

    def condition(self, mel_BxFxM, speaker_B, length: int):
        """The per-sample conditioning y (None for an unconditional model)."""
        return self.conditioning(mel_BxFxM, speaker_B, length)

    def _head(self, skips: list[jax.Array]) -> jax.Array:
        total = sum(skips[1:], skips[0])
        return self.head_out(nn.relu(self.head_hidden(nn.relu(total))))

    def from_condition(self, audio_BxT: jax.Array, condition_BxTxD: jax.Array | None) -> jax.Array:
        """Mixture parameters B x T x 3M given precomputed conditioning."""
        h = self.input_conv(shift_right(audio_BxT[..., None]))
        skips = []
        for layer in self.layers:
            h, skip = layer(h, condition_BxTxD)
            skips.append(skip)
        return self._head(skips)

    def __call__(
        self,
        audio_BxT: jax.Array,
        mel_BxFxM: jax.Array | None = None,
        speaker_B: jax.Array | None = None,
    ) -> jax.Array:
        condition = self.condition(mel_BxFxM, speaker_B, audio_BxT.shape[1])
        return self.from_condition(audio_BxT, condition)

    def init_cache(self, batch: int, dtype=jnp.float32) -> tuple[Any, ...]:
        """(position 0, zero ring buffers of the input conv and of each layer): the padding."""
        first = jnp.zeros((batch, self.kernel_size - 1, 1), dtype)
        return (
            jnp.zeros((), jnp.int32),
            first,
            tuple(
                jnp.zeros((batch, (self.kernel_size - 1) * d, self.residual_features), dtype)
                for d in self.dilations
            ),
        )

    def step(self, caches, previous_B: jax.Array, condition_BxD: jax.Array | None):
        """Parameters B x 3M of the next sample given the previous one: (params, new caches)."""
        t, first, layer_rings = caches
        h, first = self.input_conv.ring_step(
            self.input_conv.variables["params"],
            first,
            t,
            previous_B[:, None].astype(first.dtype),
        )
        skips, new_rings = [], []
        for layer, ring in zip(self.layers, layer_rings, strict=True):
            (h, skip), ring = layer.step(ring, t, h, condition_BxD)
            skips.append(skip)
            new_rings.append(ring)
        return self._head(skips), (t + 1, first, tuple(new_rings))


def split_mixture(params_xP: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(logit weights, means, log scales), each (..., M), from (..., 3M)."""
    return tuple(jnp.split(params_xP, 3, axis=-1))
