"""U-Net of Bayesian Flow Networks for binarized MNIST (Graves et al. 2023, arXiv 2308.07037).

The network is OpenAI's improved-diffusion ``UNetModel`` (Nichol & Dhariwal 2021) as wrapped by the
official BFN code (nnaisense/bayesian-flow-networks, ``networks/unet_improved.py`` with
``configs/mnist_discrete.yaml``): a per-pixel input projection to ``model_channels``, the U-Net
(``input_blocks`` / ``middle_block`` / ``output_blocks``, U-Net output width ``model_channels``), a
skip concat of the projected input with the U-Net output, and a per-pixel linear output adapter.
Initialisation follows PyTorch's defaults (uniform with bound 1/sqrt(fan_in) for weights and
biases) and improved-diffusion's zero-initialised last convolutions.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepgen.core.errors import ConfigError
from deepgen.core.train_state import count_params  # noqa: F401 (re-exported)
from deepgen.layers import conv as conv_lib

_GROUP_NORM_EPS = 1e-5  # PyTorch nn.GroupNorm default, used by improved-diffusion's GroupNorm32.

Initializer = Callable[..., jax.Array]


def timestep_embedding(timesteps_B: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding [cos, sin] of (fractional) timesteps, as in improved-diffusion."""
    half = dim // 2
    freqs_F = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args_BxF = timesteps_B.astype(jnp.float32)[:, None] * freqs_F[None, :]
    emb_BxD = jnp.concatenate([jnp.cos(args_BxF), jnp.sin(args_BxF)], axis=-1)
    if dim % 2:
        emb_BxD = jnp.pad(emb_BxD, ((0, 0), (0, 1)))
    return emb_BxD


def _torch_kernel_init() -> Initializer:
    """PyTorch's default Linear/Conv weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_bias_init(fan_in: int) -> Initializer:
    """PyTorch's default Linear/Conv bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        """Draw the uniform bias."""
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_dense(
    features: int, fan_in: int, dtype: Any, *, zero: bool = False, name: str
) -> nn.Dense:
    """Linear layer with PyTorch default (or zero) initialisation."""
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.zeros if zero else _torch_kernel_init(),
        bias_init=nn.initializers.zeros if zero else _torch_bias_init(fan_in),
        name=name,
    )


def torch_conv(
    features: int,
    in_channels: int,
    dtype: Any,
    *,
    kernel: int = 3,
    stride: int = 1,
    zero: bool = False,
    name: str,
) -> nn.Conv:
    """Conv with PyTorch padding (k // 2 each side) and PyTorch default (or zero) initialisation."""
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.zeros if zero else _torch_kernel_init(),
        bias_init=nn.initializers.zeros if zero else _torch_bias_init(in_channels * kernel**2),
        # The CPU's kernel gradient as GEMMs (deepgen/layers/conv.py); elsewhere XLA's own.
        conv_general_dilated=conv_lib.conv_general_dilated
        if conv_lib.gemm_weight_grad_default()
        else None,
        name=name,
    )


def _groups(channels: int, num_groups: int) -> int:
    """GroupNorm group count min(num_groups, channels); channels must divide evenly."""
    groups = min(num_groups, channels)
    if channels % groups:
        raise ConfigError(
            f"GroupNorm: {channels} channels are not divisible into {groups} groups; "
            "change model_channels, channel_mult or num_groups."
        )
    return groups


class GroupNorm32(nn.Module):
    """GroupNorm computed in float32 and cast back to the input dtype (improved-diffusion)."""

    num_groups: int

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        """Normalise over channel groups and spatial positions."""
        norm = nn.GroupNorm(
            num_groups=_groups(x_BxHxWxC.shape[-1], self.num_groups),
            epsilon=_GROUP_NORM_EPS,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
        )
        return norm(x_BxHxWxC.astype(jnp.float32)).astype(x_BxHxWxC.dtype)


class ResBlock(nn.Module):
    """improved-diffusion ResBlock: GN-SiLU-conv, + time projection, GN-SiLU-dropout-zero conv."""

    out_channels: int
    dropout: float
    num_groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array, emb_BxE: jax.Array, *, train: bool) -> jax.Array:
        """Apply the block conditioned on the time embedding."""
        in_ch = x_BxHxWxC.shape[-1]
        out_ch = self.out_channels
        h_BxHxWxD = nn.silu(GroupNorm32(self.num_groups, name="in_norm")(x_BxHxWxC))
        h_BxHxWxD = torch_conv(out_ch, in_ch, self.dtype, name="in_conv")(h_BxHxWxD)
        emb_out_BxD = torch_dense(out_ch, emb_BxE.shape[-1], self.dtype, name="emb_proj")(
            nn.silu(emb_BxE)
        )
        h_BxHxWxD = h_BxHxWxD + emb_out_BxD[:, None, None, :].astype(h_BxHxWxD.dtype)
        h_BxHxWxD = nn.silu(GroupNorm32(self.num_groups, name="out_norm")(h_BxHxWxD))
        h_BxHxWxD = nn.Dropout(self.dropout, deterministic=not train)(h_BxHxWxD)
        h_BxHxWxD = torch_conv(out_ch, out_ch, self.dtype, zero=True, name="out_conv")(h_BxHxWxD)
        if in_ch == out_ch:
            skip_BxHxWxD = x_BxHxWxC
        else:
            skip_BxHxWxD = torch_conv(out_ch, in_ch, self.dtype, kernel=1, name="skip")(x_BxHxWxC)
        return skip_BxHxWxD + h_BxHxWxD


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions with GroupNorm and a residual."""

    num_heads: int
    num_groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        """Attend across all spatial positions; the output projection is zero-initialised."""
        B, H, W, C = x_BxHxWxC.shape
        if C % self.num_heads:
            raise ConfigError(
                f"attention: {C} channels are not divisible by {self.num_heads} heads."
            )
        head_dim = C // self.num_heads
        x_BxTxC = x_BxHxWxC.reshape(B, H * W, C)
        h_BxTxC = GroupNorm32(self.num_groups, name="norm")(x_BxTxC)
        qkv_BxTx3C = torch_dense(3 * C, C, self.dtype, name="qkv")(h_BxTxC)
        # Head-major channel layout (each head holds its own q, k, v), as in improved-diffusion.
        qkv_BxTxNx3K = qkv_BxTx3C.reshape(B, H * W, self.num_heads, 3 * head_dim)
        q_BxTxNxK, k_BxTxNxK, v_BxTxNxK = jnp.split(qkv_BxTxNx3K, 3, axis=-1)
        scale = head_dim**-0.25  # scale q and k separately: more stable in low precision
        logits_BxNxTxS = jnp.einsum("btnk,bsnk->bnts", q_BxTxNxK * scale, k_BxTxNxK * scale)
        weights_BxNxTxS = jax.nn.softmax(logits_BxNxTxS.astype(jnp.float32), axis=-1)
        weights_BxNxTxS = weights_BxNxTxS.astype(v_BxTxNxK.dtype)
        a_BxTxNxK = jnp.einsum("bnts,bsnk->btnk", weights_BxNxTxS, v_BxTxNxK)
        a_BxTxC = a_BxTxNxK.reshape(B, H * W, C)
        out_BxTxC = torch_dense(C, C, self.dtype, zero=True, name="proj_out")(a_BxTxC)
        return (x_BxTxC + out_BxTxC).reshape(B, H, W, C)


class Downsample(nn.Module):
    """3x3 stride-2 convolution with padding 1 (conv_resample=True)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        """Halve the spatial size (rounding up, as PyTorch does with padding 1)."""
        C = x_BxHxWxC.shape[-1]
        return torch_conv(C, C, self.dtype, stride=2, name="conv")(x_BxHxWxC)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 convolution (conv_resample=True)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        """Double the spatial size."""
        C = x_BxHxWxC.shape[-1]
        up_Bx2Hx2WxC = jnp.repeat(jnp.repeat(x_BxHxWxC, 2, axis=1), 2, axis=2)
        return torch_conv(C, C, self.dtype, name="conv")(up_Bx2Hx2WxC)


class UNet(nn.Module):
    """improved-diffusion U-Net as BFN uses it for MNIST (project_input=True, skip=True).

    inputs (B, H, W, in) -> Linear to model_channels -> U-Net (out width model_channels) ->
    concat [projected input, U-Net output] -> Linear to ``out_channels`` per pixel.
    """

    out_channels: int = 1  # per-pixel outputs (1 Bernoulli logit for binarized MNIST)
    model_channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = (8, 16)  # downsample factors ds
    num_heads: int = 4
    dropout: float = 0.5
    num_groups: int = 32  # GroupNorm groups: min(num_groups, channels), must divide channels
    time_scale: float = 4000.0  # t is multiplied by this before the sinusoidal embedding
    dtype: Any = jnp.float32  # compute dtype of the U-Net torso; params are always float32

    @nn.compact
    def __call__(self, inputs_BxHxWxC: jax.Array, t_B: jax.Array, *, train: bool) -> jax.Array:
        """Return float32 per-pixel outputs of shape (B, H, W, out_channels)."""
        B, H, W, in_ch = inputs_BxHxWxC.shape
        factor = 2 ** (len(self.channel_mult) - 1)
        if H % factor or W % factor:
            raise ConfigError(
                f"UNet: image size {H}x{W} must be divisible by {factor} "
                f"for channel_mult {tuple(self.channel_mult)}."
            )
        mc = self.model_channels
        emb_dim = 4 * mc
        t_B = jnp.broadcast_to(jnp.asarray(t_B, jnp.float32), (B,))

        # Input adapter side (float32): per-pixel projection to model_channels.
        x_BxHxWxM = torch_dense(mc, in_ch, jnp.float32, name="input_projection")(
            inputs_BxHxWxC.astype(jnp.float32)
        )

        # Time embedding (float32): sinusoid(t * time_scale) -> Linear -> SiLU -> Linear.
        emb_BxM = timestep_embedding(t_B * self.time_scale, mc)
        emb_BxE = torch_dense(emb_dim, mc, jnp.float32, name="time_embed_0")(emb_BxM)
        emb_BxE = torch_dense(emb_dim, emb_dim, jnp.float32, name="time_embed_1")(nn.silu(emb_BxE))

        def res(out_ch: int, name: str) -> ResBlock:
            """ResBlock with this model's settings."""
            return ResBlock(out_ch, self.dropout, self.num_groups, self.dtype, name=name)

        def attn(name: str) -> AttentionBlock:
            """AttentionBlock with this model's settings."""
            return AttentionBlock(self.num_heads, self.num_groups, self.dtype, name=name)

        # Down path: input_blocks.
        h = torch_conv(mc, mc, self.dtype, name="input_blocks_0")(x_BxHxWxM.astype(self.dtype))
        hs = [h]
        ds, idx = 1, 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = res(mult * mc, f"input_blocks_{idx}_res")(h, emb_BxE, train=train)
                if ds in self.attention_resolutions:
                    h = attn(f"input_blocks_{idx}_attn")(h)
                hs.append(h)
                idx += 1
            if level != len(self.channel_mult) - 1:
                h = Downsample(self.dtype, name=f"input_blocks_{idx}_down")(h)
                hs.append(h)
                idx += 1
                ds *= 2

        # Middle block: ResBlock - Attention - ResBlock (always has attention).
        ch = h.shape[-1]
        h = res(ch, "middle_block_0")(h, emb_BxE, train=train)
        h = attn("middle_block_1")(h)
        h = res(ch, "middle_block_2")(h, emb_BxE, train=train)

        # Up path: output_blocks, num_res_blocks + 1 per level, concatenating skips.
        idx = 0
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, hs.pop()], axis=-1)
                h = res(mult * mc, f"output_blocks_{idx}_res")(h, emb_BxE, train=train)
                if ds in self.attention_resolutions:
                    h = attn(f"output_blocks_{idx}_attn")(h)
                if level and i == self.num_res_blocks:
                    h = Upsample(self.dtype, name=f"output_blocks_{idx}_up")(h)
                    ds //= 2
                idx += 1

        # U-Net head (float32): GN - SiLU - zero conv to model_channels (config out_channels=128).
        h_BxHxWxD = nn.silu(GroupNorm32(self.num_groups, name="out_norm")(h.astype(jnp.float32)))
        u_BxHxWxM = torch_conv(mc, h_BxHxWxD.shape[-1], jnp.float32, zero=True, name="out_conv")(
            h_BxHxWxD
        )

        # skip=True: concat the projected input with the U-Net output, then the output adapter.
        cat_BxHxWx2M = jnp.concatenate([x_BxHxWxM, u_BxHxWxM], axis=-1)
        out_BxHxWxO = torch_dense(self.out_channels, 2 * mc, jnp.float32, name="output_projection")(
            cat_BxHxWx2M
        )
        return out_BxHxWxO.astype(jnp.float32)
