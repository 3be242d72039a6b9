"""Dilated 1-D convolutions, causal (WaveNet, ByteNet decoder) or centred (ByteNet encoder).

WaveNet (van den Oord et al., arXiv:1609.03499, Sec. 2.1-2.2): a causal convolution left-pads the
input by (kernel_size - 1) * dilation, so output t depends only on inputs t, t - d, ...,
t - (kernel_size - 1) d. ByteNet (Kalchbrenner et al., arXiv:1610.10099, Sec. 3.3-3.4) uses the same
"masked" kernels in its decoder and centred (non-causal) dilated kernels in its encoder.

Fast generation (Paine et al., arXiv:1611.09482; used by Parallel WaveNet's teacher,
arXiv:1711.10433): each causal layer keeps a cache of its last (kernel_size - 1) * dilation inputs
(a shift buffer, oldest first); `step` reads the kernel_size taps t - (k - 1) d, ..., t from the cache
and the new input, applies the conv kernel as one matmul and shifts the new input in. Per step the
work is O(layers), and the outputs equal the full convolution's (the full conv is the test oracle).
`ring_step` keeps the same inputs in a ring buffer (slot t mod (k - 1) d) instead, so a step
touches k - 1 slots rather than shifting the whole cache: what large dilations (WaveNet's 512)
need at small batch.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Params = dict
Initializer = Callable[..., jax.Array]


def _conv1d_taps(
    taps_BxKxC: jax.Array, kernel_KxCxF: jax.Array, bias_F: jax.Array | None
) -> jax.Array:
    """sum_k taps[:, k] @ kernel[k] (+ bias): one output step of a 1-D convolution."""
    dtype = jnp.result_type(taps_BxKxC, kernel_KxCxF)
    y_BxF = jnp.einsum("bkc,kcf->bf", taps_BxKxC.astype(dtype), kernel_KxCxF.astype(dtype))
    if bias_F is not None:
        y_BxF = y_BxF + bias_F.astype(dtype)
    return y_BxF


class CausalConv1D(nn.Module):
    """Dilated 1-D conv over x_BxTxC; causal (left padding) or, with causal=False, centred."""

    features: int
    kernel_size: int
    dilation: int = 1
    use_bias: bool = True
    causal: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    param_dtype: jnp.dtype = jnp.float32

    @property
    def cache_length(self) -> int:
        """How many past inputs one output needs besides the current one: (kernel_size - 1) * dilation."""
        return (self.kernel_size - 1) * self.dilation

    @property
    def padding(self) -> tuple[int, int]:
        """(left, right) zero padding along time: all on the left if causal, else centred."""
        total = self.cache_length
        if self.causal:
            return total, 0
        return total // 2, total - total // 2

    @nn.compact
    def __call__(self, x_BxTxC: jax.Array) -> jax.Array:
        """y_BxTxF[t] = sum_k x[t - (K - 1 - k) d] @ kernel[k] + bias (causal; centred if not)."""
        in_channels = x_BxTxC.shape[-1]
        kernel_KxCxF = self.param(
            "kernel",
            self.kernel_init,
            (self.kernel_size, in_channels, self.features),
            self.param_dtype,
        )
        dtype = jnp.result_type(x_BxTxC, kernel_KxCxF)
        y_BxTxF = jax.lax.conv_general_dilated(
            x_BxTxC.astype(dtype),
            kernel_KxCxF.astype(dtype),
            window_strides=(1,),
            padding=[self.padding],
            rhs_dilation=(self.dilation,),
            dimension_numbers=("NWC", "WIO", "NWC"),
            precision=jax.lax.Precision.HIGHEST,
        )
        if self.use_bias:
            bias_F = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y_BxTxF = y_BxTxF + bias_F.astype(dtype)
        return y_BxTxF

    @nn.nowrap
    def init_cache(self, batch: int, in_channels: int, dtype: jnp.dtype = jnp.float32) -> jax.Array:
        """Zeros of shape B x (kernel_size - 1) d x C: the inputs before t = 0 (the causal padding)."""
        return jnp.zeros((batch, self.cache_length, in_channels), dtype)

    @nn.nowrap
    def step(
        self, params: Params, cache_BxLxC: jax.Array, x_BxC: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """One causal output from the cached inputs and x_BxC, with the new cache (same params as __call__)."""
        if not self.causal:
            raise ValueError("step needs causal=True: a centred conv reads future inputs")
        window_BxWxC = jnp.concatenate(
            [cache_BxLxC, x_BxC[:, None, :].astype(cache_BxLxC.dtype)], 1
        )
        taps_BxKxC = window_BxWxC[:, :: self.dilation]
        bias_F = params["bias"] if self.use_bias else None
        y_BxF = _conv1d_taps(taps_BxKxC, params["kernel"], bias_F)
        return y_BxF, window_BxWxC[:, 1:]

    @nn.nowrap
    def ring_step(
        self, params: Params, ring_BxLxC: jax.Array, t: jax.Array, x_BxC: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """`step` with a ring buffer: input t' lives in slot t' mod (k - 1) d of ring (init_cache's
        shape), so a step reads k - 1 taps and writes one slot (O(C), whatever the dilation)
        where `step` shifts the whole cache (O((k - 1) d C)). t is the position of x (traced)."""
        if not self.causal:
            raise ValueError("ring_step needs causal=True: a centred conv reads future inputs")
        length = self.cache_length
        if length == 0:
            taps_BxKxC = x_BxC[:, None, :]
        else:
            # Tap k (k = 0 .. K - 2) is input t - (K - 1 - k) d, oldest first, as in __call__.
            t = jnp.asarray(t, jnp.int32)
            back = (self.kernel_size - 1 - jnp.arange(self.kernel_size - 1)) * self.dilation
            slots = jnp.mod(t - back.astype(jnp.int32), length)
            taps_BxKxC = jnp.concatenate(
                [ring_BxLxC[:, slots], x_BxC[:, None, :].astype(ring_BxLxC.dtype)], axis=1
            )
            ring_BxLxC = jax.lax.dynamic_update_slice(
                ring_BxLxC,
                x_BxC[:, None, :].astype(ring_BxLxC.dtype),
                (jnp.int32(0), jnp.mod(t, length), jnp.int32(0)),
            )
        bias_F = params["bias"] if self.use_bias else None
        return _conv1d_taps(taps_BxKxC, params["kernel"], bias_F), ring_BxLxC


class CausalConvStack(nn.Module):
    """CausalConv1D layers with the given dilations (e.g. 1, 2, 4, ...), an activation between them."""

    features: int
    kernel_size: int
    dilations: Sequence[int] = (1, 2, 4)
    activation: Callable[[jax.Array], jax.Array] = jnp.tanh
    use_bias: bool = True
    causal: bool = True

    @nn.nowrap
    def layers(self) -> list[CausalConv1D]:
        """The unbound layer modules, one per dilation (their params live under conv_<i>)."""
        return [
            CausalConv1D(
                self.features,
                self.kernel_size,
                dilation,
                self.use_bias,
                self.causal,
                parent=None,
            )
            for dilation in self.dilations
        ]

    @property
    def receptive_field(self) -> int:
        """1 + sum_l (kernel_size - 1) d_l: how many inputs one output sees."""
        return 1 + sum((self.kernel_size - 1) * d for d in self.dilations)

    @nn.compact
    def __call__(self, x_BxTxC: jax.Array) -> jax.Array:
        """The full-sequence output y_BxTxF (no activation after the last layer)."""
        h = x_BxTxC
        for i, dilation in enumerate(self.dilations):
            h = CausalConv1D(
                self.features,
                self.kernel_size,
                dilation,
                self.use_bias,
                self.causal,
                name=f"conv_{i}",
            )(h)
            if i < len(self.dilations) - 1:
                h = self.activation(h)
        return h

    @nn.nowrap
    def init_cache(
        self, batch: int, in_channels: int, dtype: jnp.dtype = jnp.float32
    ) -> tuple[jax.Array, ...]:
        """One zero cache per layer (the first sees in_channels, the others features)."""
        channels = [in_channels] + [self.features] * (len(self.dilations) - 1)
        return tuple(
            layer.init_cache(batch, c, dtype)
            for layer, c in zip(self.layers(), channels, strict=True)
        )

    @nn.nowrap
    def step(
        self, params: Params, caches: tuple[jax.Array, ...], x_BxC: jax.Array
    ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """One output y_BxF of the stack from its per-layer caches and x_BxC, with the new caches."""
        layers = self.layers()
        h, new_caches = x_BxC, []
        for i, (layer, cache) in enumerate(zip(layers, caches, strict=True)):
            h, new_cache = layer.step(params[f"conv_{i}"], cache, h)
            new_caches.append(new_cache)
            if i < len(layers) - 1:
                h = self.activation(h)
        return h, tuple(new_caches)


def scan_steps(
    step: Callable[[Params, object, jax.Array], tuple[jax.Array, object]],
    params: Params,
    cache: object,
    x_BxTxC: jax.Array,
) -> tuple[jax.Array, object]:
    """Runs step over the time axis with lax.scan: (y_BxTxF, final cache); equals the full conv."""

    def body(carry, x_BxC):
        y_BxF, carry = step(params, carry, x_BxC)
        return carry, y_BxF

    final_cache, y_TxBxF = jax.lax.scan(body, cache, jnp.swapaxes(x_BxTxC, 0, 1))
    return jnp.swapaxes(y_TxBxF, 0, 1), final_cache
