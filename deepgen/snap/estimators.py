"""Interchangeable online gradient estimators for recurrent cells: BPTT, truncated BPTT, RTRL, SnAp-n, UORO.

Notation (Menick et al. 2020, arXiv 2006.07232, Section 2-3): state s_t = f_θ(s_{t-1}, x_t), influence
J_t = ds_t/dθ obeys J_t = I_t + D_t J_{t-1} with D_t = ∂s_t/∂s_{t-1} and I_t = ∂s_t/∂θ (immediate), and
dL/dθ = Σ_t (∂ℓ_t/∂s_t) J_t.
- rtrl:  dense J (S × p) via jax.jacfwd (D) and jax.jacrev (I); O(S²p) = O(k⁴) per step.
- snapN: J kept on the STRUCTURAL pattern M_N = nz(Σ_{m<N} A^m S_1) (A = structural one-step unit graph
  from the masks and `cells.cell_wiring`, S_1 = units a parameter writes in one step), computed once
  with boolean matrix products, never from current values (the value mask |I_t| > 0 of the paper's
  Appendix D snippet wrongly wipes entries whenever an input is exactly zero, e.g. one-hot inputs).
  Storage: for each kept parameter, a fixed list of K reachable state entries (K = max over units),
  stored unit-major (k, G, C, K) per parameter leaf;
  SnAp-1 on vanilla/GRU has K = 1, i.e. one number per parameter (the eligibility trace).
  SnAp-1 has its own element-wise path (`_make_snap1`), and with snap_block = L a folded form
  (`_make_snap1_blocked`) that buffers L steps and applies them to the traces with matrix
  products: the same estimate, ready every L steps.
- uoro:  Tallec & Ollivier 2018 (arXiv 1702.05043), rank-one unbiased J ≈ s̃ θ̃ᵀ with the
  variance-minimising ρ0 = sqrt(‖θ̃‖/‖D s̃‖), ρ1 = sqrt(‖νᵀI‖/‖ν‖) (+ε in numerators and denominators).
- tbptt / bptt: buffer the window's inputs and ∂ℓ_t/∂s_t, then one backward pass at the window end.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deepgen.core.errors import ConfigError
from deepgen.snap import cells
from deepgen.snap.cells import CellConfig

ESTIMATORS = ("bptt", "tbptt", "rtrl", "snap1", "snap2", "snap3", "uoro")
ReadoutLoss = Callable[[Any, jax.Array, Any], jax.Array]


class Estimator(NamedTuple):
    """A gradient estimator as pure, unbatched functions (see the module docstring and snap_interface.md)."""

    name: str
    init_traces: Callable  # (params, masks, readout_params, state_S) -> traces
    step: Callable  # (params, masks, readout_params, state_S, traces, x_I, y, rng) -> (state, traces, grads, loss, ready)
    consume: Callable  # traces -> traces with zeroed gradient accumulators
    reset: Callable  # traces -> all-zero traces
    # (params, masks, traces) -> cell gradient of steps buffered but not yet in the traces' gradient
    # (a partial window or block at the end of a sequence); None when every step's gradient is in.
    pending_grads: Callable | None = None


def scan_steps(
    estimator: Estimator,
    params,
    masks,
    readout_params,
    state_S: jax.Array,
    traces: dict,
    xs_TxI: jax.Array,
    ys_T: jax.Array,
    keys_T: jax.Array,
) -> tuple[jax.Array, dict, jax.Array]:
    """estimator.step over a sequence in one lax.scan: (final state, final traces, losses_T)."""

    def body(carry, inputs):
        state_S, traces = carry
        x_I, y, key = inputs
        state_S, traces, _, loss, _ = estimator.step(
            params, masks, readout_params, state_S, traces, x_I, y, key
        )
        return (state_S, traces), loss

    (state_S, traces), losses_T = jax.lax.scan(body, (state_S, traces), (xs_TxI, ys_T, keys_T))
    return state_S, traces, losses_T


def _zeros_like(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def _consume(traces: dict) -> dict:
    return {
        **traces,
        "grad_cell": _zeros_like(traces["grad_cell"]),
        "grad_readout": _zeros_like(traces["grad_readout"]),
    }


def _reset(traces: dict) -> dict:
    return _zeros_like(traces)


def _readout_value_and_grads(
    config: CellConfig, readout_loss: ReadoutLoss, readout_params, state_S, y
):
    """(loss, readout grads, ∂loss/∂state) at one step."""

    def loss_fn(rp, s):
        return readout_loss(rp, cells.hidden(config, s), y)

    loss, (grad_ro, delta_S) = jax.value_and_grad(loss_fn, argnums=(0, 1))(readout_params, state_S)
    return loss, grad_ro, delta_S


def _accumulate(traces: dict, grad_cell, grad_ro) -> dict:
    return {
        **traces,
        "grad_cell": jax.tree.map(jnp.add, traces["grad_cell"], grad_cell),
        "grad_readout": jax.tree.map(jnp.add, traces["grad_readout"], grad_ro),
    }


def _step_output(new_S, new_traces: dict, loss, ready=None) -> tuple:
    """A step's (state, traces, (cell grads, readout grads) so far, loss, ready); ready: True if None."""
    if ready is None:
        ready = jnp.array(True)
    return new_S, new_traces, (new_traces["grad_cell"], new_traces["grad_readout"]), loss, ready


def _base_traces(params, readout_params) -> dict:
    return {"grad_cell": _zeros_like(params), "grad_readout": _zeros_like(readout_params)}


# ----------------------------------------------------------------------------------------------- BPTT


def bptt_gradients(
    cell_config: CellConfig,
    params,
    masks,
    readout_params,
    state0_S,
    xs_TxI,
    ys_T,
    readout_loss: ReadoutLoss,
):
    """Exact gradients of the summed loss over a sequence: ((cell_grads, readout_grads), total_loss)."""

    def total_loss(p, rp):
        def body(state_S, x_and_y):
            x_I, y = x_and_y
            new_S = cells.cell_step(cell_config, p, masks, state_S, x_I)
            return new_S, readout_loss(rp, cells.hidden(cell_config, new_S), y)

        _, losses_T = jax.lax.scan(body, state0_S, (xs_TxI, ys_T))
        return jnp.sum(losses_T)

    loss, grads = jax.value_and_grad(total_loss, argnums=(0, 1))(params, readout_params)
    return grads, loss


def _make_tbptt(name: str, config: CellConfig, readout_loss: ReadoutLoss, window: int) -> Estimator:
    """Truncated BPTT over consecutive windows of `window` steps; the state carries across windows."""

    def init_traces(params, masks, readout_params, state_S):
        return {
            **_base_traces(params, readout_params),
            "state0": jnp.zeros_like(state_S),
            "xs": jnp.zeros((window, config.input_size), state_S.dtype),
            "deltas": jnp.zeros((window, state_S.shape[0]), state_S.dtype),
            "count": jnp.zeros((), jnp.int32),
        }

    def step(params, masks, readout_params, state_S, traces, x_I, y, rng):
        del rng
        count = traces["count"]
        state0 = jnp.where(count == 0, state_S, traces["state0"])
        xs = traces["xs"].at[count].set(x_I)
        new_S = cells.cell_step(config, params, masks, state_S, x_I)
        loss, grad_ro, delta_S = _readout_value_and_grads(
            config, readout_loss, readout_params, new_S, y
        )
        deltas = traces["deltas"].at[count].set(delta_S)
        ready = count + 1 == window

        def window_grads():
            def states_fn(p):
                def body(s, x):
                    s = cells.cell_step(config, p, masks, s, x)
                    return s, s

                return jax.lax.scan(body, state0, xs)[1]

            _, vjp = jax.vjp(states_fn, params)
            return vjp(deltas)[0]

        grad_cell = jax.lax.cond(ready, window_grads, lambda: _zeros_like(params))
        new_traces = _accumulate(traces, grad_cell, grad_ro)
        new_traces.update(
            state0=state0,
            xs=xs,
            deltas=deltas,
            count=jnp.where(ready, 0, count + 1).astype(jnp.int32),
        )
        return _step_output(new_S, new_traces, loss, ready)

    def pending_grads(params, masks, traces):
        return truncated_window_grads(config, params, masks, traces)

    return Estimator(name, init_traces, step, _consume, _reset, pending_grads)


def truncated_window_grads(config: CellConfig, params, masks, traces: dict):
    """Cell gradient of the partial window (truncated) BPTT holds in its buffer, one stream.

    At the end of a sequence the window may be incomplete (copy strings have any length); its
    gradient is the vjp of the buffered steps with the cotangents of the steps not yet taken set
    to zero (those steps then influence nothing).
    """
    window = traces["xs"].shape[0]
    valid_T = (jnp.arange(window) < traces["count"]).astype(traces["deltas"].dtype)

    def states_fn(p):
        def body(state_S, x_I):
            state_S = cells.cell_step(config, p, masks, state_S, x_I)
            return state_S, state_S

        return jax.lax.scan(body, traces["state0"], traces["xs"])[1]

    _, vjp = jax.vjp(states_fn, params)
    return vjp(traces["deltas"] * valid_T[:, None])[0]


# ----------------------------------------------------------------------------------------------- RTRL


def _make_rtrl(config: CellConfig, readout_loss: ReadoutLoss) -> Estimator:
    """Exact RTRL with a dense influence matrix per parameter leaf, shape (S, *leaf.shape)."""

    def init_traces(params, masks, readout_params, state_S):
        influence = jax.tree.map(lambda p: jnp.zeros(state_S.shape + p.shape, p.dtype), params)
        return {**_base_traces(params, readout_params), "influence": influence}

    def step(params, masks, readout_params, state_S, traces, x_I, y, rng):
        del rng
        new_S = cells.cell_step(config, params, masks, state_S, x_I)
        d_SxS = jax.jacfwd(lambda s: cells.cell_step(config, params, masks, s, x_I))(state_S)
        immediate = jax.jacrev(lambda p: cells.cell_step(config, p, masks, state_S, x_I))(params)
        influence = jax.tree.map(
            lambda i, j: i + jnp.tensordot(d_SxS, j, axes=1), immediate, traces["influence"]
        )
        loss, grad_ro, delta_S = _readout_value_and_grads(
            config, readout_loss, readout_params, new_S, y
        )
        grad_cell = jax.tree.map(lambda j: jnp.tensordot(delta_S, j, axes=1), influence)
        new_traces = _accumulate({**traces, "influence": influence}, grad_cell, grad_ro)
        return _step_output(new_S, new_traces, loss)

    return Estimator("rtrl", init_traces, step, _consume, _reset)


# ----------------------------------------------------------------------------------------------- SnAp


class SnapStructure(NamedTuple):
    """Static (numpy) SnAp-n pattern. S = state size, K = max kept state entries per parameter group.

    reach[g, u, s]: parameters of gate g of unit u reach state entry s within n steps (M_n, by group).
    entries[u, a]: the a-th state entry kept for unit u's parameters (padded with 0 where ~entry_valid).
    gate_keep[g, u, a]: entry a is in gate g's own pattern (LSTM o-gate parameters reach fewer entries).
    self_pos[b, u, a]: entry a is component b of unit u itself (where the immediate Jacobian lands).
    columns[name]: (cols (G,k,C), valid (G,k,C)) for masked weight leaves (kept columns per row), or
      absent for leaves stored whole (dense leaves, and every leaf at SnAp-1, where a trace entry per
      stored weight is as cheap as the forward pass and gathers would cost more than they save).
    """

    n: int
    reach: np.ndarray
    entries: np.ndarray
    entry_valid: np.ndarray
    gate_keep: np.ndarray
    self_pos: np.ndarray
    columns: dict


def structural_adjacency(config: CellConfig, masks) -> np.ndarray:
    """A[s_out, s_in] = 1 where state entry s_out at t can depend on s_in at t-1 (from structure only)."""
    wiring = cells.cell_wiring(config.kind)
    k = config.hidden_size
    num_states = wiring.num_components * k
    mask_h = np.asarray(masks["w_h"]) != 0  # (G, k, k)
    adjacency = np.zeros((num_states, num_states), bool)
    eye = np.eye(k, dtype=bool)
    for b_out in range(wiring.num_components):
        for b_in in range(wiring.num_components):
            if wiring.elementwise_deps[b_out, b_in]:
                adjacency[b_out * k : (b_out + 1) * k, b_in * k : (b_in + 1) * k] |= eye
        for g in range(wiring.num_gates):
            if wiring.gate_writes[b_out, g]:
                adjacency[b_out * k : (b_out + 1) * k, :k] |= mask_h[g]
    return adjacency


def snap_reach(config: CellConfig, masks, n: int) -> np.ndarray:
    """reach[g, u, s]: a parameter of gate g, unit u can influence state entry s within n steps."""
    if n < 1:
        raise ConfigError(f"SnAp order n must be >= 1, got {n}")
    wiring = cells.cell_wiring(config.kind)
    k = config.hidden_size
    num_states = wiring.num_components * k
    written = np.zeros((num_states, wiring.num_gates, k), bool)  # S_1: one-step writes per (g, u)
    for b in range(wiring.num_components):
        for g in range(wiring.num_gates):
            if wiring.gate_writes[b, g]:
                written[b * k + np.arange(k), g, np.arange(k)] = True
    adjacency = structural_adjacency(config, masks).astype(np.float32)
    reach = written.reshape(num_states, -1)
    for _ in range(n - 1):  # boolean product via float matmul (exact for these small counts)
        reach = reach | ((adjacency @ reach.astype(np.float32)) > 0)
    return reach.reshape(num_states, wiring.num_gates, k).transpose(1, 2, 0)


def snap_structure(config: CellConfig, masks, n: int) -> SnapStructure:
    """The static SnAp-n storage layout for these (concrete) masks."""
    wiring = cells.cell_wiring(config.kind)
    k = config.hidden_size
    reach = snap_reach(config, masks, n)
    unit_reach = reach.any(axis=0)  # (k, S)
    width = int(unit_reach.sum(axis=1).max())
    entries = np.zeros((k, width), np.int32)
    entry_valid = np.zeros((k, width), bool)
    for u in range(k):
        kept = np.flatnonzero(unit_reach[u])
        entries[u, : kept.size] = kept
        entry_valid[u, : kept.size] = True
    gate_keep = np.take_along_axis(
        reach, np.broadcast_to(entries, (*reach.shape[:2], width)), axis=2
    )
    gate_keep &= entry_valid[None]
    self_pos = np.stack(
        [
            (entries == b * k + np.arange(k)[:, None]) & entry_valid
            for b in range(wiring.num_components)
        ]
    )
    columns = {}
    for name in ("w_x", "w_h"):
        mask = np.asarray(masks[name]) != 0
        if mask.all() or width <= wiring.num_components:
            continue  # SnAp-1: dense element-wise traces beat gathering the kept columns
        num_cols = max(1, int(mask.sum(axis=2).max()))
        cols = np.zeros((*mask.shape[:2], num_cols), np.int32)
        valid = np.zeros((*mask.shape[:2], num_cols), bool)
        for g in range(mask.shape[0]):
            for u in range(mask.shape[1]):
                kept = np.flatnonzero(mask[g, u])
                cols[g, u, : kept.size] = kept
                valid[g, u, : kept.size] = True
        columns[name] = (cols, valid)
    return SnapStructure(n, reach, entries, entry_valid, gate_keep, self_pos, columns)


def _as_rows(leaf: jax.Array) -> jax.Array:
    """A parameter leaf as (G, k, C): biases (G, k) get one column."""
    return leaf[..., None] if leaf.ndim == 2 else leaf


def _gather_columns(structure: SnapStructure, name: str, leaf_GxKxC: jax.Array) -> jax.Array:
    if name not in structure.columns:
        return leaf_GxKxC
    cols, _ = structure.columns[name]
    return jnp.take_along_axis(leaf_GxKxC, jnp.asarray(cols), axis=2)


def _scatter_columns(
    structure: SnapStructure, name: str, values_GxKxC: jax.Array, leaf: jax.Array
) -> jax.Array:
    """Kept-column values back to the leaf's dense shape (zeros elsewhere)."""
    if name not in structure.columns:
        return values_GxKxC.reshape(leaf.shape)
    cols, valid = structure.columns[name]
    gates, units = cols.shape[:2]
    dense = jnp.zeros(leaf.shape, values_GxKxC.dtype)
    g_idx = np.arange(gates)[:, None, None]
    u_idx = np.arange(units)[None, :, None]
    return dense.at[g_idx, u_idx, jnp.asarray(cols)].add(
        values_GxKxC * jnp.asarray(valid, values_GxKxC.dtype)
    )


def snap_trace_size(structure: SnapStructure, params) -> int:
    """Number of stored influence entries for these params."""
    width = structure.entries.shape[1]
    total = 0
    for name, leaf in params.items():
        rows = leaf.shape if leaf.ndim == 3 else (*leaf.shape, 1)
        cols = structure.columns[name][0].shape[2] if name in structure.columns else rows[2]
        total += rows[0] * rows[1] * cols * width
    return total


def _make_snap(config: CellConfig, readout_loss: ReadoutLoss, n: int, masks) -> Estimator:
    """SnAp-n with the structural pattern; the layout is built from concrete masks once."""
    cache: dict[str, SnapStructure] = {}
    if masks is not None:
        cache["structure"] = snap_structure(config, masks, n)
    wiring = cells.cell_wiring(config.kind)
    k = config.hidden_size

    def get_structure(masks_now) -> SnapStructure:
        if "structure" not in cache:
            try:
                cache["structure"] = snap_structure(config, masks_now, n)
            except (
                jax.errors.TracerArrayConversionError,
                jax.errors.ConcretizationTypeError,
            ) as err:
                raise ConfigError(
                    f"snap{n} needs concrete masks to build its pattern: pass masks= to "
                    "make_estimator or call init_traces outside jit"
                ) from err
        return cache["structure"]

    def init_traces(params, masks, readout_params, state_S):
        structure = get_structure(masks)
        width = structure.entries.shape[1]
        influence = {}
        for name, leaf in params.items():
            rows = _gather_columns(structure, name, _as_rows(leaf))
            gates, units, cols = rows.shape  # stored unit-major: (k, G, C, K)
            influence[name] = jnp.zeros((units, gates, cols, width), leaf.dtype)
        return {**_base_traces(params, readout_params), "influence": influence}

    def local_jacobian(params, masks, state_S, x_I, structure):
        """D_t restricted to each unit's kept entries: (k, K, K), from the cell's rec/element-wise split."""
        rec_GxK = cells.recurrent_preactivation(config, params, masks, state_S)

        def update(rec, s):
            return cells.cell_update(config, params, masks, rec, s, x_I)

        _, linear = jax.linearize(update, rec_GxK, state_S)
        gates, comps = wiring.num_gates, wiring.num_components
        gate_tangents = jnp.broadcast_to(
            jnp.eye(gates, dtype=rec_GxK.dtype)[:, :, None], (gates, gates, k)
        )
        d_new_d_rec_GxS = jax.vmap(lambda t: linear(t, jnp.zeros_like(state_S)))(gate_tangents)
        comp_tangents = jnp.repeat(jnp.eye(comps, dtype=state_S.dtype), k, axis=1)  # (B, S)
        d_new_d_elem_BxS = jax.vmap(lambda t: linear(jnp.zeros_like(rec_GxK), t))(comp_tangents)
        entries = jnp.asarray(structure.entries)
        comp_of, unit_of = entries // k, entries % k
        weights_GxKxK = params["w_h"] * masks["w_h"]
        rec_term = (
            jnp.einsum(
                "gua,guac->uac",
                d_new_d_rec_GxS[:, entries],
                weights_GxKxK[:, unit_of[:, :, None], unit_of[:, None, :]],
            )
            * (comp_of == 0)[:, None, :]
        )
        same_unit = unit_of[:, :, None] == unit_of[:, None, :]
        elem_term = jnp.where(
            same_unit, d_new_d_elem_BxS[comp_of[:, None, :], entries[:, :, None]], 0.0
        )
        valid = jnp.asarray(structure.entry_valid, state_S.dtype)
        return (rec_term + elem_term) * valid[:, :, None] * valid[:, None, :]

    def step(params, masks, readout_params, state_S, traces, x_I, y, rng):
        del rng
        structure = get_structure(masks)
        width = structure.entries.shape[1]
        new_S, vjp = jax.vjp(lambda p: cells.cell_step(config, p, masks, state_S, x_I), params)
        comp_cotangents = jnp.repeat(jnp.eye(wiring.num_components, dtype=state_S.dtype), k, axis=1)
        immediate_by_comp = [vjp(c)[0] for c in comp_cotangents]  # I_t[(b, u), θ] for θ of unit u
        d_local_KxKxK = local_jacobian(params, masks, state_S, x_I, structure)
        self_pos = jnp.asarray(structure.self_pos, state_S.dtype)  # (B, k, K)
        gate_keep = jnp.asarray(structure.gate_keep, state_S.dtype)  # (G, k, K)
        loss, grad_ro, delta_S = _readout_value_and_grads(
            config, readout_loss, readout_params, new_S, y
        )
        delta_local = delta_S[jnp.asarray(structure.entries)] * jnp.asarray(
            structure.entry_valid, state_S.dtype
        )
        influence, grad_cell = {}, {}
        for name, leaf in params.items():
            old = traces["influence"][name]  # (k, G, C, K): unit-major, so D's blocks batch cleanly
            if width == 1:
                carried = old * d_local_KxKxK[:, None, None, :, 0]
            elif width <= 4:  # tiny blocks (LSTM SnAp-1): unrolled multiply-adds
                carried = sum(
                    d_local_KxKxK[:, None, None, :, b] * old[..., b : b + 1] for b in range(width)
                )
            else:
                carried = jnp.einsum("uab,ugcb->ugca", d_local_KxKxK, old)
            immediate = sum(
                jnp.swapaxes(_gather_columns(structure, name, _as_rows(imm[name])), 0, 1)[..., None]
                * self_pos[b][:, None, None, :]
                for b, imm in enumerate(immediate_by_comp)
            )
            keep = jnp.swapaxes(gate_keep, 0, 1)[:, :, None, :]
            if name in structure.columns:
                col_valid = jnp.asarray(structure.columns[name][1], state_S.dtype)
                keep = keep * jnp.swapaxes(col_valid, 0, 1)[..., None]
            new = (carried + immediate) * keep
            influence[name] = new
            if width <= 4:
                grad_UxGxC = sum(new[..., a] * delta_local[:, None, None, a] for a in range(width))
            else:
                grad_UxGxC = jnp.einsum("ugca,ua->ugc", new, delta_local)
            grad_rows = jnp.swapaxes(grad_UxGxC, 0, 1)
            grad_cell[name] = _scatter_columns(structure, name, grad_rows, leaf)
        new_traces = _accumulate({**traces, "influence": influence}, grad_cell, grad_ro)
        return _step_output(new_S, new_traces, loss)

    estimator = Estimator(f"snap{n}", init_traces, step, _consume, _reset)
    return estimator


class _Snap1Rows(NamedTuple):
    """One step's row coefficients of SnAp-1 (R = G·k rows, B = state components per unit)."""

    d_rows_BxBxR: jax.Array  # D_t with keep: ∂s_t[b, u] / ∂s_{t-1}[b', u] on the rows of unit u
    sens_inp_BxR: jax.Array  # ∂s_t[b, u] / ∂(input preactivation of row (g, u)), with keep
    sens_rec_BxR: jax.Array  # ∂s_t[b, u] / ∂(recurrent preactivation of row (g, u)), with keep
    delta_BxR: jax.Array  # ∂ℓ_t / ∂s_t[b, u], tiled over the gates


_SNAP1_LEAVES = {"w_x": ("inp", "x"), "b": ("inp", None), "w_h": ("rec", "h"), "b_h": ("rec", None)}


def _snap1_forward(config, readout_loss, params, masks, readout_params, state_S, x_I, y):
    """(preactivations (inp, rec), new state, loss, readout grads, ∂loss/∂new state) of one step."""
    inp_GxK = cells.input_preactivation(config, params, masks, x_I)
    rec_GxK = cells.recurrent_preactivation(config, params, masks, state_S)
    new_S = cells.elementwise_update(config, inp_GxK, rec_GxK, state_S)
    loss, grad_ro, delta_S = _readout_value_and_grads(
        config, readout_loss, readout_params, new_S, y
    )
    return (inp_GxK, rec_GxK), new_S, loss, grad_ro, delta_S


def _snap1_unit_coefficients(config, params, masks, inp_GxK, rec_GxK, state_S):
    """Per unit: D (B, B, k) and ∂s/∂(input, recurrent preactivations) (B, G, k), before keep.

    One vjp of the element-wise update per state component; D adds the self-connection's path
    through the recurrent preactivations (W_h[g, u, u]). Written without tiny dots (XLA CPU runs
    them as library calls far slower than these few flops).
    """
    wiring = cells.cell_wiring(config.kind)
    k, comps, gates = config.hidden_size, wiring.num_components, wiring.num_gates
    _, vjp = jax.vjp(
        lambda i, r, s: cells.elementwise_update(config, i, r, s), inp_GxK, rec_GxK, state_S
    )
    component_ones_BxS = jnp.repeat(jnp.eye(comps, dtype=state_S.dtype), k, axis=1)
    sens_inp_BxGxK, sens_rec_BxGxK, sens_state_BxS = jax.vmap(vjp)(component_ones_BxS)
    diag_GxK = jnp.diagonal(params["w_h"], axis1=1, axis2=2) * jnp.diagonal(
        masks["w_h"], axis1=1, axis2=2
    )
    through_h_BxK = sum(sens_rec_BxGxK[:, g] * diag_GxK[g] for g in range(gates))
    d_BxBxK = sens_state_BxS.reshape(comps, comps, k).at[:, 0].add(through_h_BxK)
    return d_BxBxK, sens_inp_BxGxK, sens_rec_BxGxK


def _snap1_rows(config, keep_rows_BxR, params, masks, inp_GxK, rec_GxK, state_S, delta_S):
    """SnAp-1 row coefficients of one step (the unit coefficients tiled over gates, with keep)."""
    wiring = cells.cell_wiring(config.kind)
    k, comps, gates = config.hidden_size, wiring.num_components, wiring.num_gates
    d_BxBxK, sens_inp_BxGxK, sens_rec_BxGxK = _snap1_unit_coefficients(
        config, params, masks, inp_GxK, rec_GxK, state_S
    )
    keep_BxR = jnp.asarray(keep_rows_BxR, state_S.dtype)
    return _Snap1Rows(
        d_rows_BxBxR=jnp.tile(d_BxBxK, (1, 1, gates)) * keep_BxR[:, None, :],
        sens_inp_BxR=sens_inp_BxGxK.reshape(comps, gates * k) * keep_BxR,
        sens_rec_BxR=sens_rec_BxGxK.reshape(comps, gates * k) * keep_BxR,
        delta_BxR=jnp.tile(delta_S.reshape(comps, k), (1, gates)),
    )


def _unmasked_leaves(masks) -> set:
    """Leaves whose concrete mask is all ones (their mask multiply can be skipped); none if traced."""
    if masks is None or any(isinstance(m, jax.core.Tracer) for m in masks.values()):
        return set()
    return {name for name, m in masks.items() if np.all(np.asarray(m) != 0)}


def _snap1_layout(config: CellConfig):
    """(components, gates, k, keep_rows_BxR): keep[b, (g, u)] says whether gate g writes component b."""
    wiring = cells.cell_wiring(config.kind)
    k = config.hidden_size
    keep_rows_BxR = np.repeat(np.asarray(wiring.gate_writes, np.float32), k, axis=1)
    return wiring.num_components, wiring.num_gates, k, keep_rows_BxR


def _snap1_init_traces(config: CellConfig):
    comps, gates, k, _ = _snap1_layout(config)

    def init_traces(params, masks, readout_params, state_S):
        influence = {
            name: jnp.zeros((comps * gates * k, *leaf.shape[2:]), leaf.dtype)
            for name, leaf in params.items()
        }
        return {**_base_traces(params, readout_params), "influence": influence}

    return init_traces


def _make_snap1(config: CellConfig, readout_loss: ReadoutLoss, masks) -> Estimator:
    """SnAp-1 as row-scaled element-wise work on parameter-shaped traces: no vjp through the weights.

    At n = 1 a parameter of gate g, unit u keeps only the state entries of unit u itself (h_u, and
    c_u for the LSTM), so the influence of leaf θ is stored as (B·G·k, C) (B = state components
    per unit, rows ordered (b, g, u), C = columns; biases have no C). With a = d s_t / d inp and r = d s_t / d rec (one vjp
    of the element-wise update per component), the immediate Jacobian is an outer product with the
    layer input: I[b, (g,u), c] = a[b, g, u] x_c for W_x, r[b, g, u] h_c for W_h, a for b, r for b_h.
    The one-step Jacobian restricted to unit u is the B x B block
    D[b, b', u] = ∂s_t[b, u]/∂s_{t-1}[b', u] (element-wise part) + [b' = h] Σ_g r[b, g, u] W_h[g, u, u],
    and J_t = keep ⊙ (D J_{t-1} + I_t), where keep[b, g] says whether gate g writes component b in
    one step (structure only: the LSTM's o gate does not write c). keep, D and a/r are folded into
    per-row coefficients, so the work on the p-sized arrays is a few multiply-adds per stored
    entry, in two loops: the gradient accumulation (written on the old traces) and the in-place
    trace update. Memory traffic per step is then about 5 passes over p numbers for vanilla/GRU
    (BPTT: about 4) and 9-10 for the LSTM, whose two components double the traces.
    Equal to `_make_snap` at n = 1 (tested). Weight masks that are all ones in the concrete `masks`
    given here are skipped in the step (one pass less); without them every mask is applied.
    """
    unmasked_leaves = _unmasked_leaves(masks)
    comps, gates, k, keep_rows_BxR = _snap1_layout(config)
    rows = gates * k

    def step(params, masks, readout_params, state_S, traces, x_I, y, rng):
        del rng
        dtype = state_S.dtype
        (inp_GxK, rec_GxK), new_S, loss, grad_ro, delta_S = _snap1_forward(
            config, readout_loss, params, masks, readout_params, state_S, x_I, y
        )
        step_rows = _snap1_rows(
            config, keep_rows_BxR, params, masks, inp_GxK, rec_GxK, state_S, delta_S
        )
        d_rows_BxBxR = step_rows.d_rows_BxBxR
        sens_rows = {"inp": step_rows.sens_inp_BxR, "rec": step_rows.sens_rec_BxR}
        # The gradient of step t is Σ_b δ_b ⊙ J_t[b] = Σ_b' (Σ_b δ_b D[b, b']) ⊙ J_{t-1}[b'] + Σ_b δ_b I_t[b]:
        # written on the old traces, the accumulation needs no materialised J_t.
        delta_rows_BxR = step_rows.delta_BxR
        # (B <= 2: explicit multiply-adds, not tiny dots or reductions, which XLA CPU runs slowly)
        grad_d_rows_BxR = jnp.stack(
            [
                sum(delta_rows_BxR[b] * d_rows_BxBxR[b, c] for b in range(comps))
                for c in range(comps)
            ]
        )
        grad_sens_rows = {
            kind: sum(delta_rows_BxR[b] * rows_BxR[b] for b in range(comps))
            for kind, rows_BxR in sens_rows.items()
        }
        layer_inputs = {"x": x_I, "h": cells.hidden(config, state_S)}
        influence, grad_cell = {}, {}
        for name, leaf in params.items():
            sens_kind, input_kind = _SNAP1_LEAVES[name]
            old_BxRxC = [traces["influence"][name][b * rows : (b + 1) * rows] for b in range(comps)]
            column = (lambda a: a[:, None]) if input_kind else (lambda a: a)
            if input_kind:
                inputs = layer_inputs[input_kind]
                if name not in unmasked_leaves:
                    inputs = masks[name].reshape(rows, -1) * inputs

                def immediate(rows_R, inputs=inputs):
                    return rows_R[:, None] * inputs
            else:

                def immediate(rows_R):
                    return rows_R

            grad_rows = immediate(grad_sens_rows[sens_kind]) + sum(
                column(grad_d_rows_BxR[b_in]) * old_BxRxC[b_in] for b_in in range(comps)
            )
            accumulated = traces["grad_cell"][name] + grad_rows.reshape(leaf.shape)
            # Both loops read the old traces; a (zero) data dependency on the accumulator orders
            # the accumulation first, so XLA updates the traces in place instead of copying them.
            after_accumulation = jnp.zeros((), dtype) * accumulated.reshape(-1)[0]
            new_rows = [
                sum(column(d_rows_BxBxR[b, b_in]) * old_BxRxC[b_in] for b_in in range(comps))
                + immediate(sens_rows[sens_kind][b])
                + after_accumulation
                for b in range(comps)
            ]
            influence[name] = new_rows[0] if comps == 1 else jnp.concatenate(new_rows)
            grad_cell[name] = accumulated
        new_traces = {**traces, "influence": influence, "grad_cell": grad_cell}
        new_traces["grad_readout"] = jax.tree.map(jnp.add, traces["grad_readout"], grad_ro)
        return _step_output(new_S, new_traces, loss)

    return Estimator("snap1", _snap1_init_traces(config), step, _consume, _reset)


def _make_snap1_blocked(
    config: CellConfig, readout_loss: ReadoutLoss, masks, block: int
) -> Estimator:
    """SnAp-1 folded into its traces every `block` steps with batched work: the same estimate.

    Within a block the weights are fixed, so the per-row recursion J_t = D_t J_{t-1} + c_t ⊗ in_t
    (see `_make_snap1`; D_t is B x B per row, c_t the row coefficients, in_t = x_t, h_{t-1} or 1)
    unrolls over steps 1..L of the block to
        J_L = P J_0 + Σ_s e_s ⊗ in_s,   e_s = D_L ... D_{s+1} c_s,   P = D_L ... D_1,
        Σ_t δ_tᵀ J_t = Λ J_0 + Σ_s (λ_sᵀ c_s) in_s,   λ_s = δ_s + D_{s+1}ᵀ λ_{s+1},   Λ = λ_1ᵀ D_1.
    A step runs only the cell's forward and the readout and writes one buffer row (the
    preactivations, the state, δ_t and x_t). Every L steps the unit coefficients of all L steps
    are computed at once; a reverse scan over L gives λ_s and the products D_L ... D_s per unit,
    once per set of components a gate writes (O(L·k·B²) per set), then e_s, λ_sᵀ c_s, P and Λ per
    row; and the p-sized traces and gradient are read and written once, the Σ_s being one
    (rows x L) @ (L x C) product per leaf. The fold runs in a loop that runs once at a block end:
    XLA keeps a while loop's carry in place, where a lax.cond copied the traces on every step.
    The gradient is ready (and the weights may change) only at block ends: `ready` says when;
    `pending_grads` gives the gradient of a partial block at the end of a sequence.
    """
    unmasked_leaves = _unmasked_leaves(masks)
    comps, gates, k, _ = _snap1_layout(config)
    rows = gates * k
    base_init = _snap1_init_traces(config)
    keep_BxG = np.asarray(cells.cell_wiring(config.kind).gate_writes, bool)
    patterns = sorted({tuple(int(v) for v in column) for column in keep_BxG.T})
    pattern_of_gate = np.array([patterns.index(tuple(int(v) for v in col)) for col in keep_BxG.T])

    state_size = cells.state_size(config)
    # One buffer row per step (one write per step): [inp (G·k), rec (G·k), s_{t-1}, δ_t, x_t].
    row_sizes = {"inp": rows, "rec": rows, "state": state_size, "delta": state_size}
    row_sizes["x"] = config.input_size
    row_offsets = dict(zip(row_sizes, np.cumsum([0, *row_sizes.values()])[:-1], strict=True))

    def unpack(buffer_LxW):
        parts = {
            name: buffer_LxW[:, row_offsets[name] : row_offsets[name] + size]
            for name, size in row_sizes.items()
        }
        parts["inp"] = parts["inp"].reshape(block, gates, k)
        parts["rec"] = parts["rec"].reshape(block, gates, k)
        return parts

    def init_traces(params, masks, readout_params, state_S):
        return {
            **base_init(params, masks, readout_params, state_S),
            "buffer": jnp.zeros((block, sum(row_sizes.values())), state_S.dtype),
            "count": jnp.zeros((), jnp.int32),
        }

    def fold(params, masks, traces, num_valid, with_traces: bool):
        """(grad increment, new influence or None) of the first num_valid buffered steps."""
        buffer = unpack(traces["buffer"])
        dtype = traces["buffer"].dtype
        valid_L = (jnp.arange(block) < num_valid).astype(dtype)
        eye_BxB = jnp.eye(comps, dtype=dtype)

        def unit_coefficients(inp_GxK, rec_GxK, state_S):
            return _snap1_unit_coefficients(config, params, masks, inp_GxK, rec_GxK, state_S)

        d_LxBxBxK, sens_inp_LxBxGxK, sens_rec_LxBxGxK = jax.vmap(unit_coefficients)(
            buffer["inp"], buffer["rec"], buffer["state"]
        )
        # Steps not taken: D = I, c = 0, δ = 0, so they change nothing.
        d_LxBxBxK = jnp.where(valid_L[:, None, None, None] > 0, d_LxBxBxK, eye_BxB[:, :, None])
        keep_LxBxGx1 = (
            (jnp.asarray(keep_BxG, dtype)[None, :, :, None]) * valid_L[:, None, None, None]
        )
        coeffs = {"inp": sens_inp_LxBxGxK * keep_LxBxGx1, "rec": sens_rec_LxBxGxK * keep_LxBxGx1}
        delta_LxBxK = buffer["delta"].reshape(block, comps, k) * valid_L[:, None, None]

        # The recursion runs per unit, once per distinct set of components a gate writes (the
        # LSTM's o gate does not write c; every other gate writes all): U = patterns x k entries
        # instead of G x k rows. B x B algebra as explicit multiply-adds (B <= 2): no tiny dots or
        # reductions, which XLA CPU runs as library calls far slower than these few flops.
        span = range(comps)
        d_LxBxBxU = jnp.concatenate(
            [d_LxBxBxK * jnp.asarray(pattern, dtype)[:, None, None] for pattern in patterns],
            axis=-1,
        )
        delta_LxBxU = jnp.tile(delta_LxBxK, (1, 1, len(patterns)))

        def backward(carry, step_in):
            lam_next_d_BxU, to_end_BxBxU = carry  # λ_{s+1}ᵀ D_{s+1};  D_L ... D_{s+1}
            d_BxBxU, delta_BxU = step_in
            lam_BxU = delta_BxU + lam_next_d_BxU
            new_carry = (
                jnp.stack([sum(lam_BxU[b] * d_BxBxU[b, c] for b in span) for c in span]),
                jnp.stack(
                    [
                        jnp.stack(
                            [sum(to_end_BxBxU[b, c] * d_BxBxU[c, e] for c in span) for e in span]
                        )
                        for b in span
                    ]
                ),
            )
            return new_carry, (lam_BxU, to_end_BxBxU)

        units = len(patterns) * k
        init = (
            jnp.zeros((comps, units), dtype),
            jnp.broadcast_to(eye_BxB[:, :, None], (comps, comps, units)),
        )
        (lam_d_BxU, to_end_BxBxU), (lam_LxBxU, to_end_LxBxBxU) = jax.lax.scan(
            backward, init, (d_LxBxBxU, delta_LxBxU), reverse=True
        )

        def per_gate(x_U):  # (..., U) -> (..., G, k): each gate reads its pattern's units
            return x_U.reshape(*x_U.shape[:-1], len(patterns), k)[..., pattern_of_gate, :]

        lam_LxBxGxK, to_end_LxBxBxGxK = per_gate(lam_LxBxU), per_gate(to_end_LxBxBxU)
        grad_LxR = {
            kind: sum(lam_LxBxGxK[:, b] * c[:, b] for b in span).reshape(block, rows)
            for kind, c in coeffs.items()
        }
        to_end_LxBxR = {
            kind: jnp.stack(
                [sum(to_end_LxBxBxGxK[:, b, c] * cf[:, c] for c in span) for b in span], axis=1
            ).reshape(block, comps, rows)
            for kind, cf in coeffs.items()
        }
        lam_d_BxR = per_gate(lam_d_BxU).reshape(comps, rows)  # Λ = λ_1ᵀ D_1
        to_end_BxBxR = per_gate(to_end_BxBxU).reshape(comps, comps, rows)  # P = D_L ... D_1

        layer_inputs = {"x": buffer["x"], "h": cells.hidden(config, buffer["state"])}
        grad_cell, influence = {}, {}
        for name, leaf in params.items():
            sens_kind, input_kind = _SNAP1_LEAVES[name]
            old_BxRxC = [traces["influence"][name][b * rows : (b + 1) * rows] for b in range(comps)]
            column = (lambda a: a[:, None]) if input_kind else (lambda a: a)
            # Rows (L, n·R) for n = [the gradient, then the B trace components if wanted].
            stacked = [grad_LxR[sens_kind][:, None]]
            if with_traces:
                stacked.append(to_end_LxBxR[sens_kind])
            coeffs_LxNR = jnp.concatenate(stacked, axis=1).reshape(block, -1)
            if input_kind:
                summed_NRxC = coeffs_LxNR.T @ layer_inputs[input_kind]
                summed = summed_NRxC.reshape(-1, rows, summed_NRxC.shape[-1])
                if name not in unmasked_leaves:
                    summed = summed * masks[name].reshape(rows, -1)
            else:
                summed = jnp.sum(coeffs_LxNR, axis=0).reshape(-1, rows)
            grad_rows = summed[0] + sum(
                column(lam_d_BxR[b_in]) * old_BxRxC[b_in] for b_in in range(comps)
            )
            grad_cell[name] = grad_rows.reshape(leaf.shape)
            if with_traces:
                new_rows = [
                    sum(column(to_end_BxBxR[b, b_in]) * old_BxRxC[b_in] for b_in in range(comps))
                    + summed[1 + b]
                    for b in range(comps)
                ]
                influence[name] = new_rows[0] if comps == 1 else jnp.concatenate(new_rows)
        return grad_cell, (influence if with_traces else None)

    def step(params, masks, readout_params, state_S, traces, x_I, y, rng):
        del rng
        (inp_GxK, rec_GxK), new_S, loss, grad_ro, delta_S = _snap1_forward(
            config, readout_loss, params, masks, readout_params, state_S, x_I, y
        )
        count = traces["count"]
        row_W = jnp.concatenate([inp_GxK.reshape(-1), rec_GxK.reshape(-1), state_S, delta_S, x_I])
        buffer = jax.lax.dynamic_update_index_in_dim(traces["buffer"], row_W, count, 0)
        ready = count + 1 == block
        filled = {**traces, "buffer": buffer}

        def fold_once(_, current):
            grad_add, influence = fold(params, masks, current, block, with_traces=True)
            grad_cell = jax.tree.map(jnp.add, current["grad_cell"], grad_add)
            buffer = _zeros_like(
                current["buffer"]
            )  # folded in; zeroing it also makes it loop-variant
            return {**current, "buffer": buffer, "influence": influence, "grad_cell": grad_cell}

        # A loop run once at a block end and never otherwise: XLA updates a while loop's carry in
        # place, where a lax.cond copied the p-sized traces on every step. The fold reads only the
        # carry, and changes all of it, or XLA would hoist the work out of the loop to every step.
        filled = jax.lax.fori_loop(0, ready.astype(jnp.int32), fold_once, filled)
        influence, grad_cell = filled["influence"], filled["grad_cell"]
        new_traces = {
            **filled,
            "influence": influence,
            "grad_cell": grad_cell,
            "grad_readout": jax.tree.map(jnp.add, traces["grad_readout"], grad_ro),
            "count": jnp.where(ready, 0, count + 1).astype(jnp.int32),
        }
        return _step_output(new_S, new_traces, loss, ready)

    def pending_grads(params, masks, traces):
        """Cell gradient of the steps buffered since the last block end (zero if none)."""
        return fold(params, masks, traces, traces["count"], with_traces=False)[0]

    return Estimator("snap1", init_traces, step, _consume, _reset, pending_grads)


# ----------------------------------------------------------------------------------------------- UORO


def _global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree)))


def _make_uoro(config: CellConfig, readout_loss: ReadoutLoss, epsilon: float) -> Estimator:
    """UORO (Tallec & Ollivier 2018, Alg. 1): J_t ≈ s̃_t θ̃_tᵀ, unbiased; ν is Rademacher."""

    def init_traces(params, masks, readout_params, state_S):
        return {
            **_base_traces(params, readout_params),
            "s_tilde": jnp.zeros_like(state_S),
            "theta_tilde": _zeros_like(params),
        }

    def step(params, masks, readout_params, state_S, traces, x_I, y, rng):
        s_tilde, theta_tilde = traces["s_tilde"], traces["theta_tilde"]
        new_S, d_s_tilde = jax.jvp(
            lambda s: cells.cell_step(config, params, masks, s, x_I), (state_S,), (s_tilde,)
        )
        _, vjp = jax.vjp(lambda p: cells.cell_step(config, p, masks, state_S, x_I), params)
        nu_S = jax.random.rademacher(rng, state_S.shape, state_S.dtype)
        nu_immediate = vjp(nu_S)[0]
        rho0 = jnp.sqrt(
            (_global_norm(theta_tilde) + epsilon) / (jnp.linalg.norm(d_s_tilde) + epsilon)
        )
        rho1 = jnp.sqrt((_global_norm(nu_immediate) + epsilon) / (jnp.linalg.norm(nu_S) + epsilon))
        new_s_tilde = rho0 * d_s_tilde + rho1 * nu_S
        new_theta_tilde = jax.tree.map(lambda t, b: t / rho0 + b / rho1, theta_tilde, nu_immediate)
        loss, grad_ro, delta_S = _readout_value_and_grads(
            config, readout_loss, readout_params, new_S, y
        )
        scale = jnp.dot(delta_S, new_s_tilde)
        grad_cell = jax.tree.map(lambda t: scale * t, new_theta_tilde)
        new_traces = _accumulate(
            {**traces, "s_tilde": new_s_tilde, "theta_tilde": new_theta_tilde}, grad_cell, grad_ro
        )
        return _step_output(new_S, new_traces, loss)

    return Estimator("uoro", init_traces, step, _consume, _reset)


# ----------------------------------------------------------------------------------------------- factory


def make_estimator(
    name: str,
    cell_config: CellConfig,
    *,
    readout_loss: ReadoutLoss,
    truncation: int = 0,
    masks=None,
    uoro_epsilon: float = 1e-7,
    general_snap: bool = False,
    snap_block: int = 1,
) -> Estimator:
    """Build the estimator `name` (one of ESTIMATORS, or "snapN" for any N >= 1).

    snap1 uses the element-wise fast path unless `general_snap` (the gather-based SnAp-n code at n=1);
    with snap_block = L > 1 it folds L steps at a time into its traces (the same estimate, ready
    every L steps, so the weights can change only every L steps).
    """
    if snap_block < 1:
        raise ConfigError(f"snap_block must be >= 1 (steps folded at a time), got {snap_block}")
    if snap_block > 1 and (name != "snap1" or general_snap):
        raise ConfigError(
            f"snap_block={snap_block} is for the snap1 estimator only (got {name!r}); set it to 1"
        )
    if name in ("bptt", "tbptt"):
        if truncation < 1:
            raise ConfigError(
                f"estimator {name!r} needs truncation >= 1 (the window length in steps)"
            )
        return _make_tbptt(name, cell_config, readout_loss, truncation)
    if name == "rtrl":
        return _make_rtrl(cell_config, readout_loss)
    if name == "uoro":
        return _make_uoro(cell_config, readout_loss, uoro_epsilon)
    match = re.fullmatch(r"snap([1-9][0-9]*)", name)
    if match and int(match.group(1)) == 1 and not general_snap:
        if snap_block > 1:
            return _make_snap1_blocked(cell_config, readout_loss, masks, snap_block)
        return _make_snap1(cell_config, readout_loss, masks)
    if match:
        return _make_snap(cell_config, readout_loss, int(match.group(1)), masks)
    raise ConfigError(f"estimator must be one of {ESTIMATORS} (or snapN), got {name!r}")
