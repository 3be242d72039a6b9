"""The VPN's losses in the paper's units (Kalchbrenner et al., arXiv:1610.00527, Sec. 5).

Moving MNIST (Sec. 5.1): following Srivastava et al., grey values z in [0, 1] are targets of a
Bernoulli per pixel, H(z, y) = -sum_i z_i log y_i + (1 - z_i) log(1 - y_i), in nats per frame; its
floor is the targets' own entropy H(z, z) (86.3 nats per frame on the standard test set). Robotic
Pushing (Sec. 5.2): a 256-way categorical per colour channel, in nats per dimension.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy


def soft_bernoulli_cross_entropy(*, logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise -z log sigmoid(l) - (1 - z) log sigmoid(-l) = softplus(l) - z l."""
    return jax.nn.softplus(logits) - targets * logits


def soft_target_entropy(*, targets: jax.Array) -> jax.Array:
    """Elementwise H(z, z) = -z log z - (1 - z) log(1 - z), 0 at z in {0, 1}."""
    return -xlogy(targets, targets) - xlogy(1.0 - targets, 1.0 - targets)


def categorical_nll(*, logits: jax.Array, values: jax.Array) -> jax.Array:
    """Elementwise -log softmax(logits)[value]; logits ... x K, values ... (integers)."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, values[..., None].astype(jnp.int32), axis=-1)[..., 0]


def frame_nats(*, logits: jax.Array, frames: jax.Array) -> jax.Array:
    """Nats of each frame: logits B x F x H x W x C x K, frames B x F x H x W x C -> B x F.

    K = 1: soft-target Bernoulli cross-entropy of grey values in [0, 1]; K > 1: categorical NLL of
    intensities frames * (K - 1) rounded to integers.
    """
    num_values = logits.shape[-1]
    if num_values == 1:
        per_dim = soft_bernoulli_cross_entropy(logits=logits[..., 0], targets=frames)
    else:
        values = jnp.round(frames * (num_values - 1)).astype(jnp.int32)
        per_dim = categorical_nll(logits=logits, values=values)
    return per_dim.sum(axis=(2, 3, 4))


def copy_last_frame_nats(
    *, last_frame: jax.Array, frames: jax.Array, marginal: float, smoothing: float
) -> jax.Array:
    """Nats of each grey frame (B x F x H x W x C) predicted as (1 - s) last_frame + s marginal."""
    probs = (1.0 - smoothing) * last_frame[:, None] + smoothing * marginal
    per_dim = -xlogy(frames, probs) - xlogy(1.0 - frames, 1.0 - probs)
    return per_dim.sum(axis=(2, 3, 4))
