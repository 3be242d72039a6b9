"""ByteNet (Kalchbrenner et al., "Neural Machine Translation in Linear Time", arXiv:1610.10099 v2).

Sec. 3 and Fig. 3 of v2 (layer normalisation, no sub-batch BN):

* Residual blocks of 2d channels in and out (Fig. 3). The ReLU block (translation):
  LN -> ReLU -> 1x1 (2d -> d) -> LN -> ReLU -> 1xk dilated (d -> d) -> LN -> ReLU -> 1x1 (d -> 2d),
  plus the input. The multiplicative-unit block (language modelling): LN -> ReLU -> 1x1 (2d -> d)
  -> LN -> MU (1x1) -> MU (1xk dilated) -> LN -> ReLU -> 1x1 (d -> 2d), plus the input, where
  MU(h) = g1 * tanh(g2 * h + g3 * u), g_i = sigmoid(conv_i(h)), u = tanh(conv_4(h)) (the VPN's
  unit, arXiv:1610.00527 Eq. 9; the four convolutions are one conv with 4d outputs here).
* Dilations 1, 2, 4, 8, 16 repeated in sets of five; kernel 3. The decoder's convolutions are
  masked (causal: left padding), the encoder's centred. Receptive field of the decoder:
  1 + sum_blocks (k - 1) r (373 for 30 blocks of k = 3; the paper's text says 315).
* The decoder is stacked on the encoder position by position (Sec. 3.1): decoder position i gets
  the encoder output at i plus the embedding of target byte i - 1 (the paper does not say add or
  concatenate; added here [ours]). Dynamic unfolding (Eq. 2): the encoder emits |t^| = a|s| + b
  positions; past them the decoder gets zeros as its source input (`source_mask`).
* Output: 1x1 -> ReLU -> dropout (the LM, 0.1) -> 1x1 -> logits over bytes.

Generation caches (`init_cache`, `step`): each causal dilated conv keeps its last (k - 1) r inputs
(deepgen.layers.causal_conv), so one new byte costs O(layers) whatever its position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepgen.core.train_state import count_params  # noqa: F401 (re-exported)
from deepgen.layers.causal_conv import CausalConv1D
from deepgen.layers.multiplicative import multiplicative_unit

UNITS = ("relu", "mu")
Cache = tuple[jax.Array, ...]


def dilation_schedule(num_blocks: int, rates: Sequence[int] = (1, 2, 4, 8, 16)) -> tuple[int, ...]:
    """The dilation of each residual block: rates repeated, cut to num_blocks (Sec. 3.4)."""
    return tuple(rates[i % len(rates)] for i in range(num_blocks))


def receptive_field(kernel_size: int, dilations: Sequence[int]) -> int:
    """1 + sum_l (kernel_size - 1) d_l: how many input positions one decoder output sees."""
    return 1 + sum((kernel_size - 1) * d for d in dilations)


def unfolded_length(source_length: int, *, a: float = 1.2, b: int = 0) -> int:
    """|t^| = ceil(a |s| + b) (Eq. 2) with a and b at their decimal values (1.2 * 5 is 6, not 7)."""
    if source_length < 0:
        raise ValueError(f"source_length must be >= 0, got {source_length}")
    return max(0, math.ceil(Fraction(str(a)) * int(source_length) + Fraction(str(b))))


def unfolded_lengths(source_lengths_B: jax.Array, *, a: float, b: int) -> jax.Array:
    """unfolded_length for a batch of lengths (int32; a |s| rounded to 4 decimals, not exact)."""
    scaled = jnp.round(a * source_lengths_B.astype(jnp.float32), 4)
    return (jnp.ceil(scaled) + b).astype(jnp.int32)


def zero_caches(batch: int, hidden: int, kernel_size: int, dilations: Sequence[int]) -> Cache:
    """Per block, B x (k - 1) r x d zeros: its dilated conv's inputs before position 0."""
    return tuple(jnp.zeros((batch, (kernel_size - 1) * r, hidden)) for r in dilations)


def source_mask(unfolded_B: jax.Array, length: int) -> jax.Array:
    """B x length x 1: 1 where position < |t^| (the encoder's output is used), else 0."""
    return (jnp.arange(length)[None, :] < unfolded_B[:, None])[..., None].astype(jnp.float32)


class MultiplicativeUnit(nn.Module):
    """MU(h) = sigmoid(g1) * tanh(sigmoid(g2) * h + sigmoid(g3) * tanh(u)); g1..g3, u convs of h."""

    features: int
    kernel_size: int = 1
    dilation: int = 1
    causal: bool = True

    def setup(self) -> None:
        self.gates = CausalConv1D(
            4 * self.features, self.kernel_size, self.dilation, causal=self.causal
        )

    def __call__(self, h_BxTxC: jax.Array) -> jax.Array:
        if h_BxTxC.ndim == 2:  # one position (pointwise unit in a cached step)
            return self(h_BxTxC[:, None])[:, 0]
        return multiplicative_unit(h_BxTxC, self.gates(h_BxTxC))

    def step(self, cache_BxLxC: jax.Array, h_BxC: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One causal output from the cached inputs; the new cache."""
        pre, cache_BxLxC = self.gates.step(self.gates.variables["params"], cache_BxLxC, h_BxC)
        return multiplicative_unit(h_BxC, pre), cache_BxLxC


class ResidualBlock(nn.Module):
    """One residual block of Fig. 3 (unit "relu" or "mu"), 2d channels in and out."""

    hidden: int  # d
    kernel_size: int = 3
    dilation: int = 1
    unit: str = "relu"
    causal: bool = True

    def setup(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unit={self.unit!r} is not one of {UNITS}")
        self.norm_in = nn.LayerNorm(name="norm_in")
        self.reduce = nn.Dense(self.hidden, name="reduce")
        self.norm_mid = nn.LayerNorm(name="norm_mid")
        if self.unit == "relu":
            self.conv = CausalConv1D(
                self.hidden, self.kernel_size, self.dilation, causal=self.causal, name="conv"
            )
        else:
            self.mu_pointwise = MultiplicativeUnit(self.hidden, 1, 1, name="mu_pointwise")
            self.mu_dilated = MultiplicativeUnit(
                self.hidden, self.kernel_size, self.dilation, self.causal, name="mu_dilated"
            )
        self.norm_out = nn.LayerNorm(name="norm_out")
        self.expand = nn.Dense(2 * self.hidden, name="expand")

    def _before_conv(self, x: jax.Array) -> jax.Array:
        h = self.norm_mid(self.reduce(nn.relu(self.norm_in(x))))
        return nn.relu(h) if self.unit == "relu" else self.mu_pointwise(h)

    def _after_conv(self, x: jax.Array, h: jax.Array) -> jax.Array:
        return x + self.expand(nn.relu(self.norm_out(h)))

    def __call__(self, x_BxTxC: jax.Array) -> jax.Array:
        h = self._before_conv(x_BxTxC)
        h = self.conv(h) if self.unit == "relu" else self.mu_dilated(h)
        return self._after_conv(x_BxTxC, h)

    def step(self, cache_BxLxD: jax.Array, x_BxC: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The block's output at one new position from its conv cache; the new cache."""
        h = self._before_conv(x_BxC)
        if self.unit == "relu":
            h, cache_BxLxD = self.conv.step(self.conv.variables["params"], cache_BxLxD, h)
        else:
            h, cache_BxLxD = self.mu_dilated.step(cache_BxLxD, h)
        return self._after_conv(x_BxC, h), cache_BxLxD


class ResidualStack(nn.Module):
    """Residual blocks with the given dilations (a decoder if causal, else an encoder)."""

    hidden: int
    dilations: Sequence[int]
    kernel_size: int = 3
    unit: str = "relu"
    causal: bool = True

    def setup(self) -> None:
        self.blocks = [
            ResidualBlock(
                self.hidden, self.kernel_size, r, self.unit, self.causal, name=f"block_{i}"
            )
            for i, r in enumerate(self.dilations)
        ]

    def __call__(self, x_BxTxC: jax.Array) -> jax.Array:
        for block in self.blocks:
            x_BxTxC = block(x_BxTxC)
        return x_BxTxC

    def step(self, caches: Cache, x_BxC: jax.Array) -> tuple[jax.Array, Cache]:
        new_caches = []
        for block, cache in zip(self.blocks, caches, strict=True):
            x_BxC, cache = block.step(cache, x_BxC)
            new_caches.append(cache)
        return x_BxC, tuple(new_caches)

    @nn.nowrap
    def init_cache(self, batch: int) -> Cache:
        """The blocks' zero caches (see zero_caches)."""
        return zero_caches(batch, self.hidden, self.kernel_size, self.dilations)


class ByteNet(nn.Module):
    """The ByteNet decoder over bytes, stacked on an encoder when encoder_blocks > 0 (Sec. 3).

    With encoder_blocks = 0 it is the character language model of Sec. 6 (MU blocks); with an
    encoder, the translation model of Sec. 5 (ReLU blocks). `__call__` runs the whole sequence
    (training, naive decoding); `encode` once per source, then `step` once per target byte.
    """

    vocab_size: int
    hidden: int  # d; residual blocks carry 2d channels
    decoder_blocks: int = 5
    encoder_blocks: int = 0
    kernel_size: int = 3
    encoder_kernel_size: int = 3
    unit: str = "mu"
    rates: Sequence[int] = (1, 2, 4, 8, 16)
    dropout: float = 0.0

    @property
    def decoder_dilations(self) -> tuple[int, ...]:
        return dilation_schedule(self.decoder_blocks, self.rates)

    @property
    def receptive_field(self) -> int:
        """Target positions one decoder output sees, itself included."""
        return receptive_field(self.kernel_size, self.decoder_dilations)

    def setup(self) -> None:
        width = 2 * self.hidden
        self.target_embed = nn.Embed(self.vocab_size, width, name="target_embed")
        self.decoder = ResidualStack(
            self.hidden, self.decoder_dilations, self.kernel_size, self.unit, True, name="decoder"
        )
        if self.encoder_blocks:
            self.source_embed = nn.Embed(self.vocab_size, width, name="source_embed")
            self.encoder = ResidualStack(
                self.hidden,
                dilation_schedule(self.encoder_blocks, self.rates),
                self.encoder_kernel_size,
                self.unit,
                False,
                name="encoder",
            )
        self.head_hidden = nn.Dense(width, name="head_hidden")
        self.head_dropout = nn.Dropout(self.dropout)
        self.head_out = nn.Dense(self.vocab_size, name="head_out")

    def _head(self, h: jax.Array, deterministic: bool) -> jax.Array:
        h = self.head_dropout(nn.relu(self.head_hidden(h)), deterministic=deterministic)
        return self.head_out(h)

    def encode(self, source_BxS: jax.Array, unfolded_B: jax.Array) -> jax.Array:
        """The source representation, B x S x 2d, zero at positions >= |t^| (Eq. 2).

        source_BxS must already be padded (with PAD) to at least max |t^| positions: the
        encoder is centred, so it reads the whole padded source at every position.
        """
        h = self.encoder(self.source_embed(source_BxS))
        return h * source_mask(unfolded_B, source_BxS.shape[1])

    def _decoder_input(self, inputs_BxT: jax.Array, encoded_BxSxC: jax.Array | None) -> jax.Array:
        x = self.target_embed(inputs_BxT)
        if encoded_BxSxC is None:
            return x
        length = inputs_BxT.shape[1]
        source_len = encoded_BxSxC.shape[1]
        if source_len >= length:
            return x + encoded_BxSxC[:, :length]
        return x + jnp.pad(encoded_BxSxC, ((0, 0), (0, length - source_len), (0, 0)))

    def __call__(
        self,
        inputs_BxT: jax.Array,
        encoded_BxSxC: jax.Array | None = None,
        *,
        deterministic: bool = True,
    ) -> jax.Array:
        """Logits B x T x V of target byte t given inputs[:t + 1] (inputs = targets shifted right)."""
        h = self.decoder(self._decoder_input(inputs_BxT, encoded_BxSxC))
        return self._head(h, deterministic)

    def step(
        self, caches: Cache, token_B: jax.Array, source_BxC: jax.Array | None = None
    ) -> tuple[jax.Array, Cache]:
        """Logits B x V of the next byte after token_B, and the new caches (eval: no dropout).

        source_BxC is the encoder output at this position (zeros past |t^|), None for the LM.
        """
        x = self.target_embed(token_B)
        if source_BxC is not None:
            x = x + source_BxC
        h, caches = self.decoder.step(caches, x)
        return self._head(h, True), caches

    @nn.nowrap
    def init_cache(self, batch: int) -> Cache:
        """The decoder's per-block caches at position 0 (the zero left padding)."""
        return zero_caches(batch, self.hidden, self.kernel_size, self.decoder_dilations)
