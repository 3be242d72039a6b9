"""Non-causal GPT of Bayesian Flow Networks for text8 (Graves et al. 2023, arXiv 2308.07037).

The network is the nanoGPT ``GPT`` as modified by the official BFN code
(nnaisense/bayesian-flow-networks, ``networks/transformer.py``, ``networks/adapters.py`` with
``configs/text8_discrete.yaml``):

* ``TextInputAdapter``: ``Linear(K -> width)(2 theta - 1)`` + fixed sinusoidal position codes
  (``utils_model.pe_encode``, base 1000) + ``Linear(1 -> width)(2 t - 1)`` broadcast over positions.
* Embedding dropout, then ``num_layers`` pre-LayerNorm blocks with full (bidirectional) multi-head
  self-attention and a 4x MLP with the tanh-approximate GELU (BFN's copy uses
  ``F.gelu(x, approximate="tanh")``, not nanoGPT's exact ``nn.GELU()``), then a final LayerNorm.
  Every Linear and LayerNorm has a bias (``bias: True``).
* ``skip=True``: ``lm_head`` (with bias) on ``concat([ln_f(h), x_in])``, where ``x_in`` is the input
  embedding before the embedding dropout. ``output_adapter`` is null for text8, so the logits are
  the ``lm_head`` output, one row of ``K`` per position.
* nanoGPT init, applied by BFN to the adapters too: every Linear weight ~ N(0, 0.02), biases zero,
  LayerNorm scale one / bias zero, and the residual projections (``c_proj`` in attention and MLP)
  ~ N(0, 0.02 / sqrt(2 num_layers)).

Parameter names mirror the PyTorch module names (``input_adapter/inp_embedding``, ``h_{i}/attn/c_attn``,
``ln_f``, ``lm_head`` ...; a Flax ``kernel`` is the transposed PyTorch ``weight``) and the fused
``c_attn`` output keeps PyTorch's ``[q | k | v]`` layout, so an official checkpoint maps one to one.

Mixed precision: parameters are float32; ``dtype`` is the compute dtype of the block matmuls. The
input adapter, the residual stream, every LayerNorm, the attention softmax and the ``lm_head`` stay
in float32, and the logits are returned as float32.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deepgen.bfn.model import count_params
from deepgen.core.errors import ConfigError

__all__ = [
    "Transformer",
    "count_params",
    "model_flops_per_token",
    "sinusoidal_positions",
]

_LAYER_NORM_EPS = 1e-5  # nanoGPT LayerNorm (F.layer_norm with eps 1e-5).
_INIT_STD = 0.02  # nanoGPT _init_weights.
_ATTENTION_IMPLS = ("einsum", "xla", "cudnn")


def model_flops_per_token(num_layers: int, width: int, seq_len: int, num_params: int) -> float:
    """Training FLOPs per token: ``6 N + 12 L d T`` (PaLM, Chowdhery et al. 2022, appendix B).

    ``6 N`` counts the forward (2) and backward (4) multiply-adds of every parameter once per token;
    for this model every parameter but the (negligible) LayerNorms, biases and the per-example
    ``t_embedding`` sits in a per-token matmul, so ``N = count_params(params)`` is the right input.
    ``12 L d T`` is the attention score and weighted-value matmuls (``2 * 2 * d * T`` forward per
    token per layer, times 3 for training). The attention here is non-causal (full), which this
    convention counts exactly; for causal models it is an upper bound. Use it for model-FLOPs
    utilisation, i.e. divide ``tokens/s * model_flops_per_token`` by the accelerator peak.
    """
    return 6.0 * num_params + 12.0 * num_layers * width * seq_len


def sinusoidal_positions(seq_len: int, width: int, base: float = 1000.0) -> np.ndarray:
    """Fixed position codes of BFN's ``pe_encode``: float32 array of shape (seq_len, width).

    Column ``j`` holds ``sin(pos / base**(j / width))`` for even ``j`` and
    ``cos(pos / base**(j / width))`` for odd ``j``. Note the odd columns use their own index ``j``
    in the exponent (not ``j - 1`` as in "Attention is all you need"); that is the official code.
    """
    pos_T = np.arange(seq_len, dtype=np.float64)
    j_D = np.arange(width, dtype=np.float64)
    angles_TxD = pos_T[:, None] / np.power(base, j_D / width)[None, :]
    pe_TxD = np.where(j_D % 2 == 0, np.sin(angles_TxD), np.cos(angles_TxD))
    return pe_TxD.astype(np.float32)


def _dense(features: int, dtype: Any, *, std: float = _INIT_STD, name: str) -> nn.Dense:
    """Linear layer with nanoGPT init: weight ~ N(0, std), bias zero; float32 params."""
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.normal(stddev=std),
        bias_init=nn.initializers.zeros,
        name=name,
    )


def _layer_norm(name: str) -> nn.LayerNorm:
    """nanoGPT LayerNorm (scale and bias, eps 1e-5) computed in float32; feed it float32."""
    return nn.LayerNorm(
        epsilon=_LAYER_NORM_EPS, dtype=jnp.float32, param_dtype=jnp.float32, name=name
    )


def attention_weights(q_BxTxNxH: jax.Array, k_BxSxNxH: jax.Array) -> jax.Array:
    """Float32 softmax attention weights (B, N, T, S) with scale 1/sqrt(H), no mask.

    The logits accumulate in float32 (``preferred_element_type``) and the softmax runs in float32.
    """
    head_dim = q_BxTxNxH.shape[-1]
    logits_BxNxTxS = jnp.einsum(
        "btnh,bsnh->bnts", q_BxTxNxH, k_BxSxNxH, preferred_element_type=jnp.float32
    )
    logits_BxNxTxS = logits_BxNxTxS * jnp.float32(1.0 / math.sqrt(head_dim))
    return jax.nn.softmax(logits_BxNxTxS, axis=-1)


def attend(weights_BxNxTxS: jax.Array, v_BxSxNxH: jax.Array) -> jax.Array:
    """Weighted sum of values (B, T, N, H); the weights are cast to the value dtype first."""
    weights_BxNxTxS = weights_BxNxTxS.astype(v_BxSxNxH.dtype)
    return jnp.einsum("bnts,bsnh->btnh", weights_BxNxTxS, v_BxSxNxH)


def _residual_projection(
    h_BxTxF: jax.Array, width: int, *, num_layers: int, dropout: float, dtype: Any, train: bool
) -> jax.Array:
    """nanoGPT's c_proj back to the residual width (init std scaled by 1/sqrt(2L)), then dropout."""
    std = _INIT_STD / math.sqrt(2 * num_layers)
    y_BxTxD = _dense(width, dtype, std=std, name="c_proj")(h_BxTxF)
    return nn.Dropout(dropout, deterministic=not train)(y_BxTxD)


class _BlockSettings(nn.Module):
    """The settings a transformer block and its self-attention share."""

    num_heads: int
    dropout: float
    num_layers: int
    attention_impl: str = "einsum"
    dtype: Any = jnp.float32


class SelfAttention(_BlockSettings):
    """nanoGPT multi-head self-attention without a mask (``is_causal=False``)."""

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, *, train: bool) -> jax.Array:
        """Attend over all positions; returns the (dropped-out) output projection in ``dtype``."""
        B, T, D = x_BxTxD.shape
        N = self.num_heads
        H = D // N
        qkv_BxTx3D = _dense(3 * D, self.dtype, name="c_attn")(x_BxTxD)
        # PyTorch layout: [q (all heads) | k | v], each head a contiguous block of H channels.
        q_BxTxD, k_BxTxD, v_BxTxD = jnp.split(qkv_BxTx3D, 3, axis=-1)
        q_BxTxNxH = q_BxTxD.reshape(B, T, N, H)
        k_BxTxNxH = k_BxTxD.reshape(B, T, N, H)
        v_BxTxNxH = v_BxTxD.reshape(B, T, N, H)
        if self.attention_impl == "einsum":
            weights_BxNxTxS = attention_weights(q_BxTxNxH, k_BxTxNxH)
            # SDPA's dropout_p: dropout on the attention weights (train mode only).
            weights_BxNxTxS = nn.Dropout(self.dropout, deterministic=not train)(weights_BxNxTxS)
            y_BxTxNxH = attend(weights_BxNxTxS, v_BxTxNxH)
        else:
            if train and self.dropout > 0.0:
                raise ConfigError(
                    f"attention_impl={self.attention_impl!r} has no attention dropout; use "
                    "attention_impl='einsum' when training with dropout > 0."
                )
            y_BxTxNxH = jax.nn.dot_product_attention(
                q_BxTxNxH, k_BxTxNxH, v_BxTxNxH, implementation=self.attention_impl
            )
        return _residual_projection(
            y_BxTxNxH.reshape(B, T, D),
            D,
            num_layers=self.num_layers,
            dropout=self.dropout,
            dtype=self.dtype,
            train=train,
        )


class MLP(nn.Module):
    """nanoGPT MLP: Linear(D -> 4D), tanh-approximate GELU, Linear(4D -> D), dropout."""

    dropout: float
    num_layers: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, *, train: bool) -> jax.Array:
        """Apply the position-wise MLP; returns ``dtype``."""
        D = x_BxTxD.shape[-1]
        h_BxTxF = _dense(4 * D, self.dtype, name="c_fc")(x_BxTxD)
        h_BxTxF = nn.gelu(h_BxTxF, approximate=True)
        return _residual_projection(
            h_BxTxF,
            D,
            num_layers=self.num_layers,
            dropout=self.dropout,
            dtype=self.dtype,
            train=train,
        )


class Block(_BlockSettings):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, *, train: bool) -> jax.Array:
        """Apply the block to the float32 residual stream."""
        h_BxTxD = _layer_norm("ln_1")(x_BxTxD).astype(self.dtype)
        attn = SelfAttention(
            self.num_heads,
            self.dropout,
            self.num_layers,
            self.attention_impl,
            self.dtype,
            name="attn",
        )
        x_BxTxD = x_BxTxD + attn(h_BxTxD, train=train).astype(jnp.float32)
        h_BxTxD = _layer_norm("ln_2")(x_BxTxD).astype(self.dtype)
        mlp = MLP(self.dropout, self.num_layers, self.dtype, name="mlp")
        return x_BxTxD + mlp(h_BxTxD, train=train).astype(jnp.float32)


class TextInputAdapter(nn.Module):
    """BFN ``TextInputAdapter`` (``learn_pos_embedding=False``), computed in float32.

    ``Linear(K -> width)(2 theta - 1) + pe_encode(T, width) + Linear(1 -> width)(2 t - 1)``.
    """

    width: int
    max_len: int

    @nn.compact
    def __call__(self, theta_BxTxK: jax.Array, t_B: jax.Array) -> jax.Array:
        """Return the float32 input embedding of shape (B, T, width)."""
        T = theta_BxTxK.shape[1]
        theta_BxTxK = theta_BxTxK.astype(jnp.float32)
        inp_BxTxD = _dense(self.width, jnp.float32, name="inp_embedding")(2.0 * theta_BxTxK - 1.0)
        # The official buffer has max_len rows and is added whole (so T must equal max_len there);
        # we take the first T rows, which is the same thing for T == max_len.
        pos_TxD = jnp.asarray(sinusoidal_positions(self.max_len, self.width)[:T])
        t_Bx1 = (2.0 * t_B.astype(jnp.float32) - 1.0)[:, None]
        t_BxD = _dense(self.width, jnp.float32, name="t_embedding")(t_Bx1)
        return inp_BxTxD + pos_TxD[None, :, :] + t_BxD[:, None, :]


class Transformer(nn.Module):
    """BFN's non-causal GPT for text8 (``bias=True``, ``skip=True``, no output adapter).

    ``theta`` (B, T, K) class probabilities and ``t`` (B,) -> float32 logits (B, T, K).
    ``attention_impl``: ``"einsum"`` (own einsum + float32 softmax, supports attention dropout),
    ``"xla"`` or ``"cudnn"`` (``jax.nn.dot_product_attention`` with that implementation; cuDNN is
    flash attention on NVIDIA GPUs and needs a bfloat16/float16 ``dtype``). The two non-einsum
    paths have no attention-weight dropout, so they reject ``train=True`` with ``dropout > 0``.
    """

    vocab_size: int = 27
    num_layers: int = 24
    num_heads: int = 12
    width: int = 768
    dropout: float = 0.0
    max_len: int = 256  # rows of the fixed position table (the config's seq_len)
    dtype: Any = jnp.float32  # compute dtype of the block matmuls; params are always float32
    attention_impl: str = "einsum"

    def _check(self, theta_BxTxK: jax.Array, t_B: jax.Array) -> None:
        """Raise ConfigError for settings or input shapes the network cannot take."""
        if self.width % self.num_heads:
            raise ConfigError(
                f"Transformer: width {self.width} is not divisible by num_heads {self.num_heads}."
            )
        if self.attention_impl not in _ATTENTION_IMPLS:
            raise ConfigError(
                f"Transformer: attention_impl {self.attention_impl!r} is not one of "
                f"{_ATTENTION_IMPLS}."
            )
        if theta_BxTxK.ndim != 3 or theta_BxTxK.shape[-1] != self.vocab_size:
            raise ConfigError(
                f"Transformer: theta must have shape (B, T, {self.vocab_size}); "
                f"got {tuple(theta_BxTxK.shape)}."
            )
        if theta_BxTxK.shape[1] > self.max_len:
            raise ConfigError(
                f"Transformer: sequence length {theta_BxTxK.shape[1]} exceeds max_len "
                f"{self.max_len}; raise max_len (the data's seq_len)."
            )
        if t_B.shape != (theta_BxTxK.shape[0],):
            raise ConfigError(
                f"Transformer: t must have shape ({theta_BxTxK.shape[0]},); got {tuple(t_B.shape)}."
            )

    @nn.compact
    def __call__(self, theta_BxTxK: jax.Array, t_B: jax.Array, *, train: bool) -> jax.Array:
        """Return float32 logits of shape (B, T, vocab_size)."""
        t_B = jnp.asarray(t_B)
        self._check(theta_BxTxK, t_B)
        x_in_BxTxD = TextInputAdapter(self.width, self.max_len, name="input_adapter")(
            theta_BxTxK, t_B
        )
        x_BxTxD = nn.Dropout(self.dropout, deterministic=not train)(x_in_BxTxD)
        for i in range(self.num_layers):
            block = Block(
                self.num_heads,
                self.dropout,
                self.num_layers,
                self.attention_impl,
                self.dtype,
                name=f"h_{i}",
            )
            x_BxTxD = block(x_BxTxD, train=train)
        h_BxTxD = _layer_norm("ln_f")(x_BxTxD)
        # skip=True: concat [final hidden, input embedding] (in that order) before lm_head.
        cat_BxTx2D = jnp.concatenate([h_BxTxD, x_in_BxTxD], axis=-1)
        logits_BxTxK = _dense(self.vocab_size, jnp.float32, name="lm_head")(cat_BxTx2D)
        return logits_BxTxK.astype(jnp.float32)
