"""Sampling audio from the teacher WaveNet, one sample at a time (arXiv:1609.03499, Sec. 2).

Both paths are one jitted `lax.scan` over time with the same per-step keys, and give the same
samples (the oracle of the fast path, as in the public WaveNet ports' tests):

* cached (Paine et al., arXiv:1611.09482): `WaveNet.step` with per-layer caches of past inputs,
  O(layers) per sample;
* naive: the whole network over the window of positions t - receptive_field .. t (from 0 while
  t is inside the first window), O(receptive field x layers) per sample: what the
  network's definition computes, recomputed for every sample.

Each sample draws from the discretised mixture of logistics of its step
(deepgen/layers/discretized_logistic.mix_logistic_sample) with key fold_in(rng, t).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from deepgen.layers.discretized_logistic import mix_logistic_sample
from deepgen.parallel_wavenet.wavenet import WaveNet, split_mixture


def _sample(rng: jax.Array, params_Bx3M: jax.Array, t, num_bins: int) -> jax.Array:
    logits, means, log_scales = split_mixture(params_Bx3M)
    return mix_logistic_sample(
        jax.random.fold_in(rng, t), logits, means, log_scales, num_bins=num_bins
    )


def generate(
    model: WaveNet,
    params,
    condition_BxTxD: jax.Array | None,
    rng: jax.Array,
    *,
    num_samples: int,
    batch: int,
    num_bins: int = 65536,
    cached: bool = True,
) -> jax.Array:
    """num_samples samples per sequence, B x T in [-1, 1] on the num_bins grid."""
    variables = {"params": params}
    dtype = jnp.float32 if condition_BxTxD is None else condition_BxTxD.dtype
    if condition_BxTxD is not None and condition_BxTxD.shape[:2] != (batch, num_samples):
        raise ValueError(
            f"conditioning {condition_BxTxD.shape} does not cover batch {batch} x {num_samples}"
        )
    if cached:
        caches = model.apply(variables, batch, dtype, method=WaveNet.init_cache)
        conditions = None if condition_BxTxD is None else jnp.swapaxes(condition_BxTxD, 0, 1)

        def step(carry, inputs):
            caches, previous = carry
            t, condition = inputs
            out, caches = model.apply(variables, caches, previous, condition, method=WaveNet.step)
            x = _sample(rng, out, t, num_bins)
            return (caches, x), x

        start = (caches, jnp.zeros((batch,), dtype))
        _, audio_TxB = jax.lax.scan(step, start, (jnp.arange(num_samples), conditions))
        return jnp.swapaxes(audio_TxB, 0, 1)

    window = min(model.receptive_field + 1, num_samples)  # x[t - rf] .. x[t - 1] and position t
    buffer = jnp.zeros((batch, num_samples), dtype)

    def naive(buffer, t):
        start = jnp.maximum(t - window + 1, 0)
        audio = jax.lax.dynamic_slice(buffer, (0, start), (batch, window))
        condition = None
        if condition_BxTxD is not None:
            depth = condition_BxTxD.shape[-1]
            condition = jax.lax.dynamic_slice(
                condition_BxTxD, (0, start, 0), (batch, window, depth)
            )
        out = model.apply(variables, audio, condition, method=WaveNet.from_condition)
        x = _sample(rng, out[:, t - start], t, num_bins)
        return buffer.at[:, t].set(x), None

    buffer, _ = jax.lax.scan(naive, buffer, jnp.arange(num_samples))
    return buffer
