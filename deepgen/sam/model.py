"""The memory-augmented network of Rae et al. 2016 (SAM, arXiv 1610.09027), Supp. Fig. 6.

At each step t a one-layer LSTM reads [x_t, r_{t-1}] (the input and the R words read at the
previous step), a linear layer maps its output h_t to the memory interface p_t (for SAM
p_t = (q_t, a_t, alpha_t, gamma_t), Sec. 3.1), the memory core writes and reads, and the output
is y_t = Linear([h_t, r_t]). The core (deepgen.sam.interface: ntm, dam, sam, dnc, sdnc) is a
static choice; its state is an explicit carry, vmapped over the batch. Supp. C/E: 100 LSTM
units, 4 heads, word size 32.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepgen.sam import interface


class Carry(NamedTuple):
    """What one sequence carries from step to step, batched over B."""

    lstm: tuple[jax.Array, jax.Array]  # (c_BxH, h_BxH)
    memory: Any  # the core's state with a leading batch axis
    reads_BxRxM: jax.Array


def initial_carry(spec: interface.MemorySpec, *, batch_size: int, hidden_size: int) -> Carry:
    """The empty memory, zero LSTM state and zero reads r_0 of batch_size sequences."""
    core = interface.core(spec.kind)
    memory = jax.vmap(lambda _: core.init(spec))(jnp.arange(batch_size))
    zeros_BxH = jnp.zeros((batch_size, hidden_size), jnp.float32)
    reads_BxRxM = jnp.zeros((batch_size, spec.num_heads, spec.word_size), jnp.float32)
    return Carry((zeros_BxH, zeros_BxH), memory, reads_BxRxM)


class MemoryStep(nn.Module):
    """One time step of controller and memory for a batch: (carry, x_BxI) -> (carry, y_BxO)."""

    spec: interface.MemorySpec
    hidden_size: int
    output_size: int

    @nn.compact
    def __call__(self, carry: Carry, x_BxI: jax.Array) -> tuple[Carry, jax.Array]:
        core = interface.core(self.spec.kind)
        batch = x_BxI.shape[0]
        controller_in = jnp.concatenate([x_BxI, carry.reads_BxRxM.reshape(batch, -1)], axis=-1)
        lstm, h_BxH = nn.OptimizedLSTMCell(self.hidden_size, name="lstm")(carry.lstm, controller_in)
        interface_BxP = nn.Dense(core.interface_size(self.spec), name="interface")(h_BxH)
        step = functools.partial(core.step, self.spec)
        memory, reads_BxRxM = jax.vmap(step)(carry.memory, interface_BxP)
        reads_BxRxM = reads_BxRxM.astype(h_BxH.dtype)
        y_BxO = nn.Dense(self.output_size, name="output")(
            jnp.concatenate([h_BxH, reads_BxRxM.reshape(batch, -1)], axis=-1)
        )
        return Carry(lstm, memory, reads_BxRxM), y_BxO


class MemoryNetwork(nn.Module):
    """The controller and memory unrolled over a sequence: inputs_BxTxI -> logits_BxTxO."""

    spec: interface.MemorySpec
    hidden_size: int = 100
    output_size: int = 8

    @nn.compact
    def __call__(self, inputs_BxTxI: jax.Array) -> jax.Array:
        batch = inputs_BxTxI.shape[0]
        carry = initial_carry(self.spec, batch_size=batch, hidden_size=self.hidden_size)
        scan = nn.scan(
            MemoryStep,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=1,
            out_axes=1,
        )
        _, logits_BxTxO = scan(self.spec, self.hidden_size, self.output_size, name="step")(
            carry, inputs_BxTxI
        )
        return logits_BxTxO
