"""ByteNet's training losses: byte cross-entropy on the scored positions (Sec. 5-6).

Language modelling (Sec. 6, recalled): windows of 500 bytes whose first 100 are context only; the
loss is the mean negative log-likelihood of the last 400. Translation (Sec. 5): the negative
log-likelihood of every target byte and the EOS after it, given the source and the earlier
target bytes; padding is not scored. Both in nats per scored byte.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from deepgen.bytenet.model import ByteNet, unfolded_lengths


def cross_entropy(
    *, logits_BxTxV: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(sum of weights * -log p(target), sum of weights), in nats, float32."""
    log_probs = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32))
    nll_BxT = -jnp.take_along_axis(log_probs, targets_BxT[..., None].astype(jnp.int32), -1)[..., 0]
    weights_BxT = weights_BxT.astype(jnp.float32)
    return jnp.sum(nll_BxT * weights_BxT), jnp.sum(weights_BxT)


def lm_loss(
    params: Any,
    *,
    model: ByteNet,
    window_BxL: jax.Array,
    scored_BxL: jax.Array,
    dropout_rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(summed nats, scored bytes) of window[:, 1:] given window[:, :-1]; scored marks targets."""
    inputs, targets = window_BxL[:, :-1].astype(jnp.int32), window_BxL[:, 1:]
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    logits = model.apply(params, inputs, deterministic=dropout_rng is None, rngs=rngs)
    return cross_entropy(logits_BxTxV=logits, targets_BxT=targets, weights_BxT=scored_BxL[:, 1:])


def translation_loss(
    params: Any,
    *,
    model: ByteNet,
    source_BxS: jax.Array,
    source_length_B: jax.Array,
    inputs_BxT: jax.Array,
    targets_BxT: jax.Array,
    unfold_a: float,
    unfold_b: int,
    pad: int,
    dropout_rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(summed nats, target bytes) of the targets (EOS included, PAD not) given the source.

    The encoder reads source_BxS (PAD beyond each source); its output is zero from
    |t^| = a |s| + b on (dynamic unfolding, Eq. 2), |s| = source_length_B.
    """
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    unfolded_B = unfolded_lengths(source_length_B, a=unfold_a, b=unfold_b)

    def forward(module: ByteNet) -> jax.Array:
        encoded = module.encode(source_BxS.astype(jnp.int32), unfolded_B)
        return module(inputs_BxT.astype(jnp.int32), encoded, deterministic=dropout_rng is None)

    logits = model.apply(params, method=forward, rngs=rngs)
    return cross_entropy(
        logits_BxTxV=logits, targets_BxT=targets_BxT, weights_BxT=targets_BxT != pad
    )
