"""The multiplicative unit of Video Pixel Networks (Kalchbrenner et al., arXiv:1610.00527, Fig. 3).

MU(h) = g1 * tanh(g2 * h + g3 * u) with g1, g2, g3 = sigmoid of three convolutions of h and
u = tanh of a fourth: an LSTM cell with no recurrence, g2 acting as a forget gate on h, g3 as an
input gate and g1 as an output gate. Shared by ByteNet's MU blocks (1-D convolutions) and the VPN's
residual multiplicative blocks (2-D, masked in its decoder); each computes the four convolutions
as one with 4 x C outputs, laid out [g1 | g2 | g3 | u], and hands them to `multiplicative_unit`.
"""

import jax
import jax.numpy as jnp


def multiplicative_unit(h: jax.Array, pre_gates: jax.Array) -> jax.Array:
    """MU(h) from h (... x C) and the four convolutions of h (... x 4C, laid out [g1|g2|g3|u])."""
    if pre_gates.shape[-1] != 4 * h.shape[-1]:
        raise ValueError(
            f"the unit needs 4 x {h.shape[-1]} pre-gate channels, got {pre_gates.shape[-1]}"
        )
    g1, g2, g3, u = jnp.split(pre_gates, 4, axis=-1)
    g1, g2, g3 = jax.nn.sigmoid(g1), jax.nn.sigmoid(g2), jax.nn.sigmoid(g3)
    return g1 * jnp.tanh(g2 * h + g3 * jnp.tanh(u))
