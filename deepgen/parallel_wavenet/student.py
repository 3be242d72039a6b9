"""The Parallel WaveNet student: an inverse autoregressive flow (van den Oord et al.,
arXiv:1711.10433, Sec. 3; Kingma et al., arXiv:1606.04934).

z ~ Logistic(0, 1) per sample; flow k maps x^(k-1) to x^k_t = x^(k-1)_t s^k_t + mu^k_t, where
(mu^k_t, s^k_t) come from a WaveNet without skip outputs run on x^(k-1) shifted right by one, so
they depend on x^(k-1)_<t only and every t is computed in parallel. Composed (Sec. 3, Eq. 5-6):

    x_t = z_t s_tot,t + mu_tot,t,   s_tot = prod_k s^k,   mu_tot = sum_k mu^k prod_(j>k) s^j,

so p_S(x_t | z_<t) = Logistic(mu_tot,t, s_tot,t), log p_S(x) = sum_t [log Logistic(z_t; 0, 1) -
log s_tot,t], and the entropy H(P_S) = E_z[sum_t log s_tot,t] + 2T (a standard logistic's entropy is
2). The paper's student [recalled]: 4 flows of 10, 10, 10 and 30 layers, 64 units, filter size 3,
dilations 1..512. Scales are softplus of the output, clipped to [e^-9, e^7], with the output bias
of the scale at -0.3 so that the flows start with small scales (bfs18/nsynth_wavenet's choices,
[recalled]); the output kernel starts at zero [ours], so the initial student is white logistic
noise of scale softplus(-0.3)^flows and zero mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepgen.layers.causal_conv import CausalConv1D
from deepgen.parallel_wavenet.wavenet import (
    Conditioning,
    GatedResidualLayer,
    dilation_cycle,
    shift_right,
)

MIN_LOG_SCALE, MAX_LOG_SCALE = -9.0, 7.0
SCALE_BIAS = -0.3


def _output_bias(key, shape, dtype=jnp.float32):
    """Zero for the mean, SCALE_BIAS for the scale's pre-softplus."""
    return jnp.array([0.0, SCALE_BIAS], dtype)[: shape[0]]


class Flow(nn.Module):
    """One IAF flow: (mu_t, log s_t) from x_<t through gated dilated layers, no skip outputs."""

    residual_features: int = 64
    gate_features: int = 64
    kernel_size: int = 3
    dilations: Sequence[int] = dilation_cycle(10)

    def setup(self) -> None:
        self.input_conv = CausalConv1D(self.residual_features, self.kernel_size)
        self.layers = [
            GatedResidualLayer(
                self.residual_features, self.gate_features, 0, self.kernel_size, dilation
            )
            for dilation in self.dilations
        ]
        # Zero kernel: each flow starts as x -> x softplus(-0.3) + 0, so the student starts as
        # white logistic noise of scale 0.554^flows (0.094 for 4 flows, near speech's spread).
        self.out = nn.Dense(2, kernel_init=nn.initializers.zeros_init(), bias_init=_output_bias)

    def __call__(self, x_BxT: jax.Array, condition_BxTxD: jax.Array | None):
        h = self.input_conv(shift_right(x_BxT[..., None]))
        for layer in self.layers:
            h, _ = layer(h, condition_BxTxD)
        out = self.out(nn.relu(h))
        mean, raw_scale = out[..., 0], out[..., 1]
        # Clipped first so that log(softplus) and its gradient stay finite (softplus(-12) ~ 6e-6).
        log_scale = jnp.log(jax.nn.softplus(jnp.clip(raw_scale, -12.0, 12.0)))
        return mean, jnp.clip(log_scale, MIN_LOG_SCALE, MAX_LOG_SCALE)


class IAFStudent(nn.Module):
    """z_BxT (+ conditioning) -> (x, mu_tot, log s_tot), each B x T, all positions at once."""

    flow_layers: Sequence[int] = (10, 10, 10, 30)
    residual_features: int = 64
    gate_features: int = 64
    kernel_size: int = 3
    dilation_cycle_length: int = 10
    hop: int = 256
    num_speakers: int = 1
    speaker_features: int = 16

    def setup(self) -> None:
        self.conditioning = Conditioning(self.hop, self.num_speakers, self.speaker_features)
        self.flows = [
            Flow(
                self.residual_features,
                self.gate_features,
                self.kernel_size,
                dilation_cycle(layers, self.dilation_cycle_length),
            )
            for layers in self.flow_layers
        ]

    def condition(self, mel_BxFxM, speaker_B, length: int):
        """The per-sample conditioning y, as the teacher builds it."""
        return self.conditioning(mel_BxFxM, speaker_B, length)

    def from_condition(self, z_BxT: jax.Array, condition_BxTxD: jax.Array | None):
        """(x, mu_tot, log s_tot) given precomputed conditioning."""
        x = z_BxT
        mean_total = jnp.zeros_like(z_BxT)
        log_scale_total = jnp.zeros_like(z_BxT)
        for flow in self.flows:
            mean, log_scale = flow(x, condition_BxTxD)
            scale = jnp.exp(log_scale)
            x = x * scale + mean
            mean_total = mean_total * scale + mean
            log_scale_total = log_scale_total + log_scale
        return x, mean_total, log_scale_total

    def __call__(self, z_BxT: jax.Array, mel_BxFxM=None, speaker_B=None):
        return self.from_condition(z_BxT, self.condition(mel_BxFxM, speaker_B, z_BxT.shape[1]))


def logistic_log_density(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
    """log of the logistic density at x: -u - log s - 2 softplus(-u), u = (x - mean) / s."""
    u = (x - mean) * jnp.exp(-log_scale)
    return -u - log_scale - 2.0 * jax.nn.softplus(-u)


def student_log_density(z_BxT: jax.Array, log_scale_total_BxT: jax.Array) -> jax.Array:
    """log p_S(x) per sequence: sum_t log Logistic(z_t; 0, 1) - log s_tot,t (Sec. 3)."""
    zeros = jnp.zeros_like(z_BxT)
    return (logistic_log_density(z_BxT, zeros, zeros) - log_scale_total_BxT).sum(axis=-1)


def student_entropy(log_scale_total_BxT: jax.Array) -> jax.Array:
    """H(P_S) per sequence given the z that produced these scales: sum_t (log s_tot,t + 2)."""
    return (log_scale_total_BxT + 2.0).sum(axis=-1)
