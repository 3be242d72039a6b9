"""VDM U-Net of Bayesian Flow Networks for CIFAR-10 (Graves et al. 2023, arXiv 2308.07037, Sec. 7.2).

The official BFN code (nnaisense/bayesian-flow-networks, ``networks/unet_vdm.py`` with
``configs/cifar10_*.yaml``) uses the U-Net of Variational Diffusion Models (Kingma et al. 2021, as
ported by addtt/variational-diffusion-models): ``embedding_dim`` channels everywhere, ``n_blocks``
residual blocks down and ``n_blocks + 1`` up with no downsampling (every block works at 32x32),
one attention block in the middle, Fourier features of the input (sin and cos of 2 pi 2^n x for
n in 5, 6), and time entering through a sinusoidal embedding of (t + 0.001) * 1000 followed by a
two-layer SiLU MLP of width 4 * embedding_dim. BFN's wrapper feeds the input mean mu (3 channels),
concatenates the input with the last hidden layer (3 + embedding_dim channels) and projects each
pixel with one linear layer to ``out_channels`` x ``out_per_channel`` outputs: 1 per subpixel for
the continuous (point estimate) model, 2 (mu_eps, ln sigma_eps) for the discretised model.
Initialisation follows PyTorch's defaults and VDM's zero-initialised projections. At paper scale
(128 channels, 32 blocks, discretised output) it has 31.4M parameters, as the official checkpoints.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepgen.bfn.model import GroupNorm32, torch_conv, torch_dense

_TIME_OFFSET = 0.001
_TIME_SCALE = 1000.0


def vdm_timestep_embedding(t_B: jax.Array, dim: int, max_timescale: float = 10_000.0) -> jax.Array:
    """[sin, cos] of (t + 0.001) * 1000 at dim/2 timescales log-spaced from 1 to max_timescale."""
    half = dim // 2
    inv_timescales_F = jnp.exp(-jnp.linspace(0.0, math.log(max_timescale), half, dtype=jnp.float32))
    args_BxF = ((t_B.astype(jnp.float32) + _TIME_OFFSET) * _TIME_SCALE)[:, None] * inv_timescales_F
    return jnp.concatenate([jnp.sin(args_BxF), jnp.cos(args_BxF)], axis=-1)


def fourier_features(x_BxHxWxC: jax.Array, exponents: tuple[float, ...]) -> jax.Array:
    """[sin(2 pi 2^n x) for each n and channel, then cos(...)], shape (B, H, W, 2 * F * C)."""
    freqs_F = 2.0 * math.pi * jnp.exp2(jnp.asarray(exponents, jnp.float32))
    # (B, H, W, F, C) flattened frequency-major, as the reference flattens (F, C) after (B,).
    args = (x_BxHxWxC.astype(jnp.float32)[..., None, :] * freqs_F[:, None]).reshape(
        *x_BxHxWxC.shape[:-1], -1
    )
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class VDMResBlock(nn.Module):
    """GN-SiLU-conv, + zero-initialised projection of the condition, GN-SiLU-dropout-zero conv."""

    out_channels: int
    dropout: float
    num_groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array, cond_BxE: jax.Array, *, train: bool) -> jax.Array:
        """x + block(x), with a 1x1 convolution on the skip path when the width changes."""
        in_ch, out_ch = x_BxHxWxC.shape[-1], self.out_channels
        h = nn.silu(GroupNorm32(self.num_groups, name="norm1")(x_BxHxWxC))
        h = torch_conv(out_ch, in_ch, self.dtype, name="conv1")(h)
        cond_proj = nn.Dense(
            out_ch,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.zeros,
            name="cond_proj",
        )
        h = h + cond_proj(cond_BxE)[:, None, None, :].astype(h.dtype)
        h = nn.silu(GroupNorm32(self.num_groups, name="norm2")(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = torch_conv(out_ch, out_ch, self.dtype, zero=True, name="conv2")(h)
        if in_ch != out_ch:
            x_BxHxWxC = torch_conv(out_ch, in_ch, self.dtype, kernel=1, name="skip_conv")(x_BxHxWxC)
        return x_BxHxWxC + h


class VDMAttention(nn.Module):
    """Self-attention over all pixels: GN, 1x1 qkv conv, softmax in float32, zero 1x1 out conv."""

    num_heads: int
    num_groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        """x + attention(x)."""
        B, H, W, C = x_BxHxWxC.shape
        N = self.num_heads
        h = GroupNorm32(self.num_groups, name="norm")(x_BxHxWxC)
        qkv = torch_conv(3 * C, C, self.dtype, kernel=1, name="qkv")(h).reshape(B, H * W, 3 * C)
        # Reference layout: channels [q | k | v], each of N heads a contiguous block of C/N.
        q_BxTxNxD, k_BxTxNxD, v_BxTxNxD = (
            part.reshape(B, H * W, N, C // N) for part in jnp.split(qkv, 3, axis=-1)
        )
        logits_BxNxTxS = jnp.einsum(
            "btnd,bsnd->bnts", q_BxTxNxD, k_BxTxNxD, preferred_element_type=jnp.float32
        ) * jnp.float32(1.0 / math.sqrt(C // N))
        weights = jax.nn.softmax(logits_BxNxTxS, axis=-1).astype(v_BxTxNxD.dtype)
        out = jnp.einsum("bnts,bsnd->btnd", weights, v_BxTxNxD).reshape(B, H, W, C)
        return x_BxHxWxC + torch_conv(C, C, self.dtype, kernel=1, zero=True, name="proj_out")(out)


class UNetVDM(nn.Module):
    """The BFN CIFAR-10 network: mu (B, H, W, C) and t (B,) to (B, H, W, C, out_per_channel)."""

    out_per_channel: int = 2
    embedding_dim: int = 128
    num_blocks: int = 32
    num_heads: int = 1
    dropout: float = 0.1
    num_groups: int = 32
    fourier_exponents: tuple[float, ...] = (5.0, 6.0)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, mu_BxHxWxC: jax.Array, t_B: jax.Array, *, train: bool) -> jax.Array:
        """Per-subpixel outputs; float32 (the losses read them in full precision)."""
        B, H, W, C = mu_BxHxWxC.shape
        D = self.embedding_dim
        emb_BxD = vdm_timestep_embedding(t_B, D)
        cond = nn.silu(torch_dense(4 * D, D, self.dtype, name="cond_in")(emb_BxD))
        cond = nn.silu(torch_dense(4 * D, 4 * D, self.dtype, name="cond_out")(cond))

        x = mu_BxHxWxC.astype(jnp.float32)
        if self.fourier_exponents:
            x = jnp.concatenate([x, fourier_features(x, self.fourier_exponents)], axis=-1)
        h = torch_conv(D, x.shape[-1], self.dtype, name="conv_in")(x.astype(self.dtype))

        def block(name: str) -> VDMResBlock:
            return VDMResBlock(D, self.dropout, self.num_groups, self.dtype, name=name)

        skips = []
        for i in range(self.num_blocks):
            skips.append(h)
            h = block(f"down_{i}")(h, cond, train=train)
        skips.append(h)
        h = block("mid_1")(h, cond, train=train)
        h = VDMAttention(self.num_heads, self.num_groups, self.dtype, name="mid_attn")(h)
        h = block("mid_2")(h, cond, train=train)
        for i in range(self.num_blocks + 1):
            h = block(f"up_{i}")(jnp.concatenate([h, skips.pop()], axis=-1), cond, train=train)

        h = nn.silu(GroupNorm32(self.num_groups, name="out_norm")(h))
        h = torch_conv(D, D, self.dtype, zero=True, name="conv_out")(h)
        h = jnp.concatenate([mu_BxHxWxC.astype(h.dtype), h], axis=-1)
        out = torch_dense(C * self.out_per_channel, D + C, jnp.float32, name="output_adapter")(
            h.astype(jnp.float32)
        )
        return out.reshape(B, H, W, C, self.out_per_channel)
