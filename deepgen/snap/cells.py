"""Recurrent cells as pure functions for RTRL / SnAp / UORO / BPTT (Menick et al. 2020, arXiv 2006.07232).

Three cells, all unbatched (callers vmap):
  vanilla: h' = tanh(W_x x + (W_h ⊙ M_h) h + b)
  gru:     reset-after GRU (Engel 2016 / cuDNN / PyTorch form), gates [r, z, n]:
             r = σ(W_xr x + b_xr + U_r h + b_hr),  z = σ(W_xz x + b_xz + U_z h + b_hz),
             n = tanh(W_xn x + b_xn + r ⊙ (U_n h + b_hn)),  h' = (1 - z) ⊙ n + z ⊙ h
  lstm:    gates [i, f, g, o]; c' = f ⊙ c + i ⊙ g, h' = o ⊙ tanh(c'); state = [h, c].

Why the reset-after GRU (SnAp paper, Section on GRU; snapjax `GRU` docstring): SnAp-1 keeps only the
influence-matrix entries that are nonzero after ONE step. In the reset-after form the row U_g[i, :]
enters only the preactivation of unit i, and every later operation is element-wise, so each
parameter writes exactly one unit in one step and SnAp-1 stores one number per parameter. In the
original (Cho 2014, reset-before) GRU, n = tanh(W x + U_n (r ⊙ h)) routes r_i through U_n[:, i] into
every unit k in the same step, so the one-step Jacobian of a U_r parameter is dense in the units
and the SnAp-1 pattern is no longer diagonal per unit.

Every cell is split in three: `recurrent_preactivation` (the only place where one unit reads other
units: rec_GxK = (W_h ⊙ M_h) h (+ b_h)), `input_preactivation` (inp_GxK = (W_x ⊙ M_x) x + b) and
`elementwise_update` (the new state from inp, rec and the old state, element-wise in the units).
The estimators use that split to build the one-step state Jacobian D_t cheaply (SnAp-1 writes its
immediate Jacobian as d(state)/d(preactivation) times the layer input), and the structural sparsity
patterns come from `cell_wiring` plus the masks, never from values.

Sparsity: `density < 1` draws fixed random masks for W_x and W_h once (exactly round(d·n) kept
entries per matrix), shared by all gates (default; keeps the unit graph at density d) or drawn
per gate (`mask_per_gate=True`; the union over gates is then denser, 1-(1-d)^G).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deepgen.core.errors import ConfigError

CELL_KINDS = ("vanilla", "gru", "lstm")
_NUM_GATES = {"vanilla": 1, "gru": 3, "lstm": 4}
_NUM_COMPONENTS = {"vanilla": 1, "gru": 1, "lstm": 2}  # state = concat of components, each (k,)


@dataclasses.dataclass(frozen=True)
class CellConfig:
    """Static description of a recurrent cell (hashable, so it can be a jit static argument)."""

    kind: str
    input_size: int
    hidden_size: int
    density: float = 1.0
    mask_per_gate: bool = False

    def __post_init__(self) -> None:
        if self.kind not in CELL_KINDS:
            raise ConfigError(f"cell kind must be one of {CELL_KINDS}, got {self.kind!r}")
        if self.input_size < 1 or self.hidden_size < 1:
            raise ConfigError("cell input_size and hidden_size must be positive integers")
        if not 0.0 < self.density <= 1.0:
            raise ConfigError(f"cell density must be in (0, 1], got {self.density}")


class CellWiring(NamedTuple):
    """Structural one-step wiring of a cell inside one unit (B = state components, G = gates).

    gate_writes[b, g]: a parameter of gate g of unit u can change state component b of unit u in one
      step (through that gate's element-wise path).
    elementwise_deps[b, b2]: component b of unit u at t depends on component b2 of the same unit at
      t-1 through the element-wise part (not through the recurrent matmul).
    The recurrent matmul reads component 0 (h) only.
    """

    num_gates: int
    num_components: int
    gate_writes: np.ndarray
    elementwise_deps: np.ndarray


def cell_wiring(kind: str) -> CellWiring:
    """The per-unit structural wiring of `kind` (hand-derived from the equations in the module docstring)."""
    if kind == "vanilla":
        return CellWiring(1, 1, np.ones((1, 1), bool), np.zeros((1, 1), bool))
    if kind == "gru":  # h' = (1-z) n + z h: every gate writes h; h' reads h element-wise.
        return CellWiring(3, 1, np.ones((1, 3), bool), np.ones((1, 1), bool))
    if kind == "lstm":  # components [h, c]; gates [i, f, g, o]; o writes h only.
        gate_writes = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
        elementwise_deps = np.array([[0, 1], [0, 1]], bool)  # h' <- c (via c'), c' <- c (via f c)
        return CellWiring(4, 2, gate_writes, elementwise_deps)
    raise ConfigError(f"cell kind must be one of {CELL_KINDS}, got {kind!r}")


def state_size(config: CellConfig) -> int:
    """k for vanilla/gru, 2k for lstm ([h, c])."""
    return _NUM_COMPONENTS[config.kind] * config.hidden_size


def initial_state(config: CellConfig, dtype=jnp.float32) -> jax.Array:
    """Zero state, shape (state_size,)."""
    return jnp.zeros((state_size(config),), dtype)


def hidden(config: CellConfig, state_S: jax.Array) -> jax.Array:
    """The part of the state a readout sees (h, the first k entries)."""
    return state_S[..., : config.hidden_size]


def _random_mask(rng: np.random.Generator, shape: tuple[int, int], density: float) -> np.ndarray:
    """Exactly round(density * size) ones at uniformly random positions."""
    size = shape[0] * shape[1]
    keep = max(1, round(density * size))
    flat = np.zeros(size, bool)
    flat[rng.permutation(size)[:keep]] = True
    return flat.reshape(shape)


def init_cell(
    config: CellConfig, rng: jax.Array, dtype=jnp.float32
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Random parameters (already masked) and fixed masks {w_x, w_h} (float 0/1, same shapes as the weights).

    Params: w_x (G,k,I), w_h (G,k,k), b (G,k); the GRU also has b_h (G,k) (b_hn sits inside r ⊙ (.)).
    Weights are N(0, 1/fan_in_kept) with fan_in_kept = density * fan_in; LSTM forget bias starts at 1.
    """
    num_gates, k, num_in = _NUM_GATES[config.kind], config.hidden_size, config.input_size
    mask_seed = int(jax.random.randint(jax.random.fold_in(rng, 7), (), 0, 2**31 - 1))
    mask_rng = np.random.default_rng(mask_seed)
    mask_gates = num_gates if config.mask_per_gate else 1
    if config.density < 1.0:
        mask_x = np.stack(
            [_random_mask(mask_rng, (k, num_in), config.density) for _ in range(mask_gates)]
        )
        mask_h = np.stack(
            [_random_mask(mask_rng, (k, k), config.density) for _ in range(mask_gates)]
        )
    else:
        mask_x, mask_h = np.ones((1, k, num_in), bool), np.ones((1, k, k), bool)
    masks = {
        "w_x": jnp.asarray(np.broadcast_to(mask_x, (num_gates, k, num_in)), dtype),
        "w_h": jnp.asarray(np.broadcast_to(mask_h, (num_gates, k, k)), dtype),
    }
    key_x, key_h = jax.random.split(rng)
    fan_x = max(1.0, config.density * num_in)
    fan_h = max(1.0, config.density * k)
    params = {
        "w_x": jax.random.normal(key_x, (num_gates, k, num_in), dtype)
        / np.sqrt(fan_x)
        * masks["w_x"],
        "w_h": jax.random.normal(key_h, (num_gates, k, k), dtype) / np.sqrt(fan_h) * masks["w_h"],
        "b": jnp.zeros((num_gates, k), dtype),
    }
    if config.kind == "lstm":
        params["b"] = params["b"].at[1].set(1.0)
    if config.kind == "gru":
        params["b_h"] = jnp.zeros((num_gates, k), dtype)
    return params, masks


def recurrent_preactivation(
    config: CellConfig, params: dict, masks: dict, state_S: jax.Array
) -> jax.Array:
    """rec_GxK = (W_h ⊙ M_h) h (+ b_h for the GRU): the only cross-unit read of a step."""
    h_K = hidden(config, state_S)
    rec_GxK = jnp.einsum("gkj,j->gk", params["w_h"] * masks["w_h"], h_K)
    if config.kind == "gru":
        rec_GxK = rec_GxK + params["b_h"]
    return rec_GxK


def input_preactivation(config: CellConfig, params: dict, masks: dict, x_I: jax.Array) -> jax.Array:
    """inp_GxK = (W_x ⊙ M_x) x + b: the input's contribution to every gate."""
    return jnp.einsum("gki,i->gk", params["w_x"] * masks["w_x"], x_I) + params["b"]


def elementwise_update(
    config: CellConfig, inp_GxK: jax.Array, rec_GxK: jax.Array, state_S: jax.Array
) -> jax.Array:
    """The new state from both preactivations; unit u of the output reads only unit u of each input."""
    k = config.hidden_size
    if config.kind == "vanilla":
        return jnp.tanh(inp_GxK[0] + rec_GxK[0])
    if config.kind == "gru":
        h_K = state_S[:k]
        r_K = jax.nn.sigmoid(inp_GxK[0] + rec_GxK[0])
        z_K = jax.nn.sigmoid(inp_GxK[1] + rec_GxK[1])
        n_K = jnp.tanh(inp_GxK[2] + r_K * rec_GxK[2])
        return (1.0 - z_K) * n_K + z_K * h_K
    c_K = state_S[k:]
    pre_GxK = inp_GxK + rec_GxK
    i_K, f_K, o_K = (
        jax.nn.sigmoid(pre_GxK[0]),
        jax.nn.sigmoid(pre_GxK[1]),
        jax.nn.sigmoid(pre_GxK[3]),
    )
    g_K = jnp.tanh(pre_GxK[2])
    new_c_K = f_K * c_K + i_K * g_K
    return jnp.concatenate([o_K * jnp.tanh(new_c_K), new_c_K])


def cell_update(
    config: CellConfig,
    params: dict,
    masks: dict,
    rec_GxK: jax.Array,
    state_S: jax.Array,
    x_I: jax.Array,
) -> jax.Array:
    """The new state given the recurrent preactivation; element-wise in the units (reads state only per unit)."""
    inp_GxK = input_preactivation(config, params, masks, x_I)
    return elementwise_update(config, inp_GxK, rec_GxK, state_S)


def cell_step(
    config: CellConfig, params: dict, masks: dict, state_S: jax.Array, x_I: jax.Array
) -> jax.Array:
    """One step of the cell, unbatched: state_S (state_size,), x_I (input_size,) -> new state_S."""
    rec_GxK = recurrent_preactivation(config, params, masks, state_S)
    return cell_update(config, params, masks, rec_GxK, state_S, x_I)


def count_params(params: dict, masks: dict | None = None) -> int:
    """Number of parameter entries; with masks, only the kept (structurally nonzero) ones."""
    total = 0
    for name, leaf in params.items():
        if masks is not None and name in masks:
            total += int(np.count_nonzero(np.asarray(masks[name])))
        else:
            total += int(np.size(leaf))
    return total
