"""The training state as one pytree: step, parameters, their EMA and the optimiser state."""

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


class TrainState(struct.PyTreeNode):
    """Everything a train step reads and writes; checkpointed as a whole."""

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter pytree (arrays or jax.ShapeDtypeStruct leaves)."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def ema_decay(step: jax.Array, *, decay: float, warmup: bool) -> jax.Array:
    """The EMA decay at this step: constant, or min(decay, (1 + step) / (10 + step)) with warmup."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_params: Any, params: Any, decay: jax.Array) -> Any:
    """ema <- decay * ema + (1 - decay) * params."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
