"""Maths of the gradient estimators: RTRL = BPTT, SnAp-n -> RTRL, structural SnAp-1 mask, UORO unbiasedness.

Compilation, not arithmetic, is what these tests cost, so: every cell has input 3 and hidden 4
(the eager init_cell of each kind compiles once for the file); problem data is NumPy; the
estimators compared on one problem run in one jitted program; and the exactness tests of a
(cell, density) pair read one shared run of every estimator they compare (`_estimates`).
"""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from deepgen.core.errors import ConfigError
from deepgen.snap import cells
from deepgen.snap import estimators as est_lib

NUM_CLASSES = 3
INPUT, HIDDEN = 3, 4
STEPS = 11  # two blocks of 4 and a partial block of 3 for the blocked SnAp-1 test
SPARSE = 0.5  # the density of W_h in the sparse problems (8 of 16 entries kept)


@pytest.fixture(autouse=True)
def _float64():
    """float64 for exact comparisons, for this test only."""
    with jax.enable_x64(True):
        yield


def readout_loss(readout_params, h_K, y):
    """Softmax cross-entropy of a linear readout."""
    logits = readout_params["w"] @ h_K + readout_params["b"]
    return -jax.nn.log_softmax(logits)[y]


def _problem(config, *, steps=STEPS, seed=0, masks_override=None, xs=None):
    """(params, masks, readout_params, xs, ys): init_cell's parameters, the rest NumPy float64."""
    params, masks = cells.init_cell(config, jax.random.key(seed), jnp.float64)
    params = {name: np.asarray(leaf) for name, leaf in params.items()}
    masks = {name: np.asarray(mask) for name, mask in masks.items()}
    if masks_override is not None:
        masks = {
            name: np.broadcast_to(np.asarray(m, np.float64), masks[name].shape)
            for name, m in masks_override.items()
        }
        params = {**params, **{name: params[name] * masks[name] for name in masks}}
        params["w_h"] = params["w_h"] * 1.5  # keep a diagonal/sparse recurrence from dying out
    rng = np.random.default_rng(seed + 1)
    readout_params = {
        "w": rng.standard_normal((NUM_CLASSES, config.hidden_size)),
        "b": np.zeros((NUM_CLASSES,)),
    }
    if xs is None:
        xs = rng.standard_normal((steps, config.input_size))
    ys = rng.integers(0, NUM_CLASSES, xs.shape[0])
    return params, masks, readout_params, xs, ys


def _scan(estimator, params, masks, readout_params, state, traces, xs, ys, keys, keep=None):
    """estimator.step over xs (traceable): (state, traces, (ready flags, keep(traces) per step))."""

    def body(carry, inputs):
        state, traces = carry
        x, y, key = inputs
        state, traces, _, _, ready = estimator.step(
            params, masks, readout_params, state, traces, x, y, key
        )
        return (state, traces), (ready, None if keep is None else keep(traces))

    (state, traces), per_step = jax.lax.scan(body, (state, traces), (xs, ys, keys))
    return state, traces, per_step


def _grads(traces):
    return traces["grad_cell"], traces["grad_readout"]


def _estimator_grads(estimators: dict, config, problem, extra=None) -> dict:
    """{label: (cell grads, readout grads)} of each of the estimators over the whole sequence, and
    "extra": extra(params, masks, readout_params, xs, ys) if given; one jitted program."""
    state0 = np.zeros((cells.state_size(config),))

    @jax.jit
    def run(params, masks, readout_params, xs, ys):
        keys = jax.random.split(jax.random.key(0), xs.shape[0])
        out = {}
        for label, estimator in estimators.items():
            traces = estimator.init_traces(params, masks, readout_params, state0)
            _, traces, _ = _scan(
                estimator, params, masks, readout_params, state0, traces, xs, ys, keys
            )
            out[label] = _grads(traces)
        if extra is not None:
            out["extra"] = extra(params, masks, readout_params, xs, ys)
        return out

    return jax.device_get(run(*problem))


@functools.cache
def _exact_runner(kind: str):
    """The jitted mask-agnostic program of a cell kind (input 3, hidden 4, STEPS steps): problem ->
    {"bptt": the exact gradients by backpropagation, "rtrl", "tbptt": one window of STEPS steps}.

    The masks are arguments (cell_step multiplies by them; density only shapes init_cell's masks),
    so the dense and sparse problems and the mask overrides of a kind share one compilation.
    """
    config = cells.CellConfig(kind, input_size=INPUT, hidden_size=HIDDEN)
    rtrl = est_lib.make_estimator("rtrl", config, readout_loss=readout_loss)
    tbptt = est_lib.make_estimator("tbptt", config, readout_loss=readout_loss, truncation=STEPS)
    state0 = np.zeros((cells.state_size(config),))

    @jax.jit
    def run(params, masks, readout_params, xs, ys):
        keys = jax.random.split(jax.random.key(0), STEPS)
        out = {}
        for label, estimator in (("rtrl", rtrl), ("tbptt", tbptt)):
            traces = estimator.init_traces(params, masks, readout_params, state0)
            _, traces, _ = _scan(
                estimator, params, masks, readout_params, state0, traces, xs, ys, keys
            )
            out[label] = _grads(traces)
        out["bptt"], _ = est_lib.bptt_gradients(
            config, params, masks, readout_params, state0, xs, ys, readout_loss
        )
        return out

    return run


def _exact(config, problem) -> dict:
    assert (config.input_size, config.hidden_size, len(problem[3])) == (INPUT, HIDDEN, STEPS)
    return jax.device_get(_exact_runner(config.kind)(*problem))


def _relative_error(grads, reference) -> float:
    diff = sum(
        float(np.sum((np.asarray(a) - np.asarray(b)) ** 2))
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference), strict=True)
    )
    norm = sum(float(np.sum(np.asarray(b) ** 2)) for b in jax.tree.leaves(reference))
    return float(np.sqrt(diff / norm))


def _sparse_masks(config) -> dict:
    """init_cell's W_h mask at config.density, and W_x kept whole.

    The SnAp-1 fast path and its blocked fold multiply a masked weight leaf's inputs by its mask
    and skip that for a leaf whose mask is all ones: on this net they take both branches.
    """
    _, masks = cells.init_cell(config, jax.random.key(0), jnp.float64)
    return {"w_h": np.asarray(masks["w_h"]), "w_x": np.ones(masks["w_x"].shape)}


@functools.cache
def _estimates(kind: str, density: float):
    """One STEPS-step problem of a (cell, density) pair and every estimator its exactness tests
    compare: (config, problem, {label: run}), each run a dict with "grads" (cell grads, readout
    grads) over the whole sequence. Labels: "bptt", "rtrl" and "tbptt" from `_exact_runner`;
    dense: "snap2"; sparse: f"snap{S + 1}" (S = state size: every path fits); "snap1" (the
    element-wise fast path, step by step); sparse only: "snap1_general" (the gather-based SnAp-n
    code at n = 1) and "snap1_block4" (folded 4 steps at a time; its grads include the partial
    block's pending gradient). The snap1 and snap1_block4 runs also keep the influence after step
    8 and the steps' ready flags. The SnAp estimators run in one jitted program.
    """
    config = cells.CellConfig(kind, input_size=INPUT, hidden_size=HIDDEN, density=density)
    if density == 1.0:
        problem = _problem(config)
    else:  # W_h masked at `density`, W_x kept whole: see _sparse_masks
        problem = _problem(
            dataclasses.replace(config, density=1.0), masks_override=_sparse_masks(config)
        )
    masks = problem[1]

    def make(name, **kwargs):
        return est_lib.make_estimator(
            name, config, readout_loss=readout_loss, masks=masks, **kwargs
        )

    order = 2 if density == 1.0 else cells.state_size(config) + 1
    whole = {f"snap{order}": make(f"snap{order}")}
    stepwise = {"snap1": make("snap1")}
    if density < 1.0:  # masked W_h, unmasked W_x: both branches of the SnAp-1 mask handling
        whole["snap1_general"] = make("snap1", general_snap=True)
        stepwise["snap1_block4"] = make("snap1", snap_block=4)
    state0 = np.zeros((cells.state_size(config),))

    @jax.jit
    def run(params, masks, readout_params, xs, ys):
        keys = jax.random.split(jax.random.key(0), xs.shape[0])
        out = {}
        for label, estimator in whole.items():
            traces = estimator.init_traces(params, masks, readout_params, state0)
            _, traces, _ = _scan(
                estimator, params, masks, readout_params, state0, traces, xs, ys, keys
            )
            out[label] = {"grads": _grads(traces)}
        for label, estimator in stepwise.items():
            traces = estimator.init_traces(params, masks, readout_params, state0)
            _, traces, (ready, influence) = _scan(
                estimator,
                params,
                masks,
                readout_params,
                state0,
                traces,
                xs,
                ys,
                keys,
                keep=lambda traces: traces["influence"],
            )
            cell_grads = traces["grad_cell"]
            if estimator.pending_grads is not None:
                pending = estimator.pending_grads(params, masks, traces)
                cell_grads = jax.tree.map(jnp.add, cell_grads, pending)
            out[label] = {
                "grads": (cell_grads, traces["grad_readout"]),
                "influence_at_8": jax.tree.map(lambda leaf: leaf[7], influence),
                "ready": ready,
            }
        return out

    runs = jax.device_get(run(*problem))
    runs.update({label: {"grads": grads} for label, grads in _exact(config, problem).items()})
    return config, problem, runs


@pytest.mark.parametrize("density", [1.0, SPARSE])
@pytest.mark.parametrize("kind", cells.CELL_KINDS)
def test_rtrl_equals_bptt_and_snap2_is_exact_when_dense(kind, density):
    """Dense k=4: every unit reaches every unit in one step, so the SnAp-2 pattern is already full."""
    config, problem, runs = _estimates(kind, density)
    reference = runs["bptt"]["grads"]
    assert _relative_error(runs["rtrl"]["grads"], reference) < 1e-6
    # one window as long as the sequence: truncated BPTT is BPTT
    assert _relative_error(runs["tbptt"]["grads"], reference) < 1e-12
    if density < 1.0:  # paths are at most S long, so SnAp-(S+1) keeps every reachable entry
        order = cells.state_size(config) + 1
        assert _relative_error(runs[f"snap{order}"]["grads"], reference) < 1e-10
    else:
        assert _relative_error(runs["snap2"]["grads"], reference) < 1e-10
        assert _relative_error(runs["snap1"]["grads"], reference) > 1e-3
        assert est_lib.snap_reach(config, problem[1], 2).all()


def test_snap_n_converges_to_rtrl_on_a_sparse_ring_by_the_diameter():
    """Ring of k=4 units (i-1 -> i, plus self loops): diameter 3, so SnAp-4 is exact; errors fall with n."""
    k = HIDDEN
    ring = np.eye(k) + np.roll(np.eye(k), 1, axis=0)
    config = cells.CellConfig("vanilla", input_size=INPUT, hidden_size=k)
    problem = _problem(config, masks_override={"w_h": ring[None], "w_x": np.ones((1, k, INPUT))})
    estimators = {
        f"snap{n}": est_lib.make_estimator(
            f"snap{n}", config, readout_loss=readout_loss, masks=problem[1]
        )
        for n in range(1, k + 1)
    }
    runs = _estimator_grads(estimators, config, problem)
    reference = _exact(config, problem)["bptt"]
    errors = [_relative_error(runs[f"snap{n}"], reference) for n in range(1, k + 1)]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-10 and errors[-2] > 1e-8, errors
    assert (
        not est_lib.snap_reach(config, problem[1], k - 1).all()
        and est_lib.snap_reach(config, problem[1], k).all()
    )


@pytest.mark.parametrize("kind,order", [("vanilla", 1), ("gru", 1), ("lstm", 2)])
def test_snap_is_exact_for_a_diagonal_recurrence(kind, order):
    """Identity recurrent masks make D_t (block-)diagonal: SnAp-1 is exact (LSTM: o-gate needs 2 steps to reach c)."""
    config = cells.CellConfig(kind, input_size=INPUT, hidden_size=HIDDEN)
    num_gates = cells.cell_wiring(kind).num_gates
    override = {
        "w_h": np.broadcast_to(np.eye(HIDDEN), (num_gates, HIDDEN, HIDDEN)),
        "w_x": np.ones((num_gates, HIDDEN, INPUT)),
    }
    problem = _problem(config, masks_override=override)
    snap = est_lib.make_estimator(
        f"snap{order}", config, readout_loss=readout_loss, masks=problem[1]
    )
    grads = _estimator_grads({"snap": snap}, config, problem)["snap"]
    assert _relative_error(grads, _exact(config, problem)["bptt"]) < 1e-10


def _value_masked_snap1(config, params, masks, readout_params, xs, ys):
    """The paper's Appendix D snippet: dense J, then J *= (|I_t| > 0) from the CURRENT values.

    Traceable (called inside jit): (grads, the value masks of every step stacked along axis 0).
    """

    def one_step(carry, x_and_y):
        state, influence, grads = carry
        x, y = x_and_y
        d = jax.jacfwd(cells.cell_step, argnums=3)(config, params, masks, state, x)
        imm = jax.jacrev(cells.cell_step, argnums=1)(config, params, masks, state, x)
        value_mask = jax.tree.map(lambda i: jnp.abs(i) > 0, imm)
        influence = jax.tree.map(
            lambda i, j, m: (i + jnp.tensordot(d, j, axes=1)) * m, imm, influence, value_mask
        )
        state = cells.cell_step(config, params, masks, state, x)
        delta = jax.grad(lambda s: readout_loss(readout_params, cells.hidden(config, s), y))(state)
        grads = jax.tree.map(lambda g, j: g + jnp.tensordot(delta, j, axes=1), grads, influence)
        return (state, influence, grads), value_mask

    state = jnp.zeros((cells.state_size(config),))
    influence = jax.tree.map(lambda p: jnp.zeros(state.shape + p.shape), params)
    grads = jax.tree.map(jnp.zeros_like, params)
    (_, _, grads), value_masks = jax.lax.scan(one_step, (state, influence, grads), (xs, ys))
    return grads, value_masks


@pytest.mark.parametrize("kind", cells.CELL_KINDS)
def test_fast_snap1_equals_the_general_snap_n_code_at_n_1(kind):
    """The element-wise SnAp-1 path and the gather-based SnAp-n path agree (float64, 11 steps).

    On the sparse net only: its masked W_h and whole W_x take both branches of the fast path's
    mask handling (at density 1 every weight takes the unmasked one).
    """
    _, _, runs = _estimates(kind, SPARSE)
    fast, general = runs["snap1"]["grads"], runs["snap1_general"]["grads"]
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(general), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert any(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(fast[0]))


@pytest.mark.parametrize("kind", cells.CELL_KINDS)
def test_blocked_snap1_folds_to_the_step_by_step_estimate(kind):
    """Block 4 over 11 steps: traces equal at the block ends, gradients equal with the partial block.

    On the sparse net only: its masked W_h and whole W_x take both branches of the fold's mask
    handling (at density 1 every weight takes the unmasked one).
    """
    _, _, runs = _estimates(kind, SPARSE)
    stepwise, blocked = runs["snap1"], runs["snap1_block4"]
    assert blocked["ready"].tolist() == [t % 4 == 3 for t in range(STEPS)]
    assert stepwise["ready"].all()
    for key in ("influence_at_8", "grads"):
        for want, got in zip(
            jax.tree.leaves(stepwise[key]), jax.tree.leaves(blocked[key]), strict=True
        ):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
    assert any(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(blocked["grads"][0]))


def test_snap_block_is_for_snap1_only():
    config = cells.CellConfig("gru", input_size=3, hidden_size=5)
    with pytest.raises(ConfigError, match="snap1 estimator only"):
        est_lib.make_estimator("snap2", config, readout_loss=readout_loss, snap_block=4)
    with pytest.raises(ConfigError, match="snap_block must be >= 1"):
        est_lib.make_estimator("snap1", config, readout_loss=readout_loss, snap_block=0)


def test_snap1_mask_is_structural_not_value_based():
    """One-hot inputs: I_t for W_x[:, j] is exactly 0 whenever symbol j is off, yet J keeps decaying values."""
    k, num_symbols = HIDDEN, INPUT
    config = cells.CellConfig("vanilla", input_size=num_symbols, hidden_size=k)
    xs = np.eye(num_symbols)[[0, 1, 2, 0, 1, 2, 2, 1, 0, 0, 2]]  # STEPS symbols
    override = {"w_h": np.eye(k)[None], "w_x": np.ones((1, k, num_symbols))}
    problem = _problem(config, xs=xs, masks_override=override)
    snap1 = est_lib.make_estimator("snap1", config, readout_loss=readout_loss, masks=problem[1])
    runs = _estimator_grads(
        {"snap1": snap1}, config, problem, extra=functools.partial(_value_masked_snap1, config)
    )
    reference, ours = _exact(config, problem)["bptt"], runs["snap1"]
    value_based, value_masks = runs["extra"]
    assert _relative_error(ours, reference) < 1e-10  # diagonal recurrence: SnAp-1 is exact
    value_error = _relative_error((value_based, ours[1]), reference)
    assert value_error > 1e-2, value_error
    reach = np.moveaxis(est_lib.snap_reach(config, problem[1], 1), 2, 0)  # (S, G, k)
    value_masks_w_x = np.asarray(value_masks["w_x"])  # (T, S, G, k, I)
    structural = np.broadcast_to(reach[..., None], value_masks_w_x.shape[1:])  # W_x[g,u,j] -> u
    for value_mask in value_masks_w_x:  # a strict subset: it drops W_x[:, j] whenever x_j = 0
        assert np.all(value_mask <= structural) and np.any(value_mask != structural)


def _stored_entries(traces) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(traces["influence"]))


def test_snap1_stores_one_number_per_parameter():
    for kind, per_param in [("vanilla", 1), ("gru", 1), ("lstm", 2)]:
        config = cells.CellConfig(kind, input_size=INPUT, hidden_size=HIDDEN)
        params, masks = cells.init_cell(config, jax.random.key(0), jnp.float64)
        estimator = est_lib.make_estimator("snap1", config, readout_loss=readout_loss, masks=masks)
        traces = jax.eval_shape(  # the shapes init_traces gives, without running it
            estimator.init_traces,
            params,
            masks,
            {"w": jnp.zeros((2, HIDDEN))},
            cells.initial_state(config),
        )
        stored = _stored_entries(traces)
        assert stored == per_param * cells.count_params(params)
        assert stored == est_lib.snap_trace_size(est_lib.snap_structure(config, masks, 1), params)
    sparse = cells.CellConfig("gru", input_size=3, hidden_size=16, density=0.1)
    params, masks = cells.init_cell(sparse, jax.random.key(0))
    snap1_size = est_lib.snap_trace_size(est_lib.snap_structure(sparse, masks, 1), params)
    assert snap1_size == cells.count_params(params)  # one per stored (dense-shaped) parameter
    structure = est_lib.snap_structure(sparse, masks, 2)  # kept columns only, K entries each
    rtrl_entries = cells.state_size(sparse) * cells.count_params(params)
    assert est_lib.snap_trace_size(structure, params) < rtrl_entries / 4


def test_snap_masks_match_the_snapjax_unit_test_vectors():
    """The 3-unit graph of the spec (§2.1): W[i, j] = edge j -> i; columns = the nonzeros of W in row order."""
    w = np.array([[1, 1, 1], [0, 1, 0], [1, 0, 1]])
    config = cells.CellConfig("vanilla", input_size=1, hidden_size=3)
    masks = {"w_h": w[None], "w_x": np.ones((1, 3, 1))}
    rows, _ = np.nonzero(w)
    expected = {
        1: [[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 1]],
        2: [[1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0], [1, 1, 1, 0, 1, 1]],
        3: [[1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0], [1, 1, 1, 1, 1, 1]],
        4: [[1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0], [1, 1, 1, 1, 1, 1]],
    }
    for n, table in expected.items():
        reach = est_lib.snap_reach(config, masks, n)[0]  # (unit u of the parameter, state entry)
        np.testing.assert_array_equal(reach[rows].T, np.array(table, bool), err_msg=f"n={n}")
    diagonal = {"w_h": np.eye(100)[None], "w_x": np.ones((1, 100, 1))}
    big = cells.CellConfig("vanilla", input_size=1, hidden_size=100)
    np.testing.assert_array_equal(est_lib.snap_reach(big, diagonal, 7)[0], np.eye(100, dtype=bool))


def test_uoro_is_unbiased_with_error_falling_like_one_over_sqrt_n():
    config = cells.CellConfig("gru", input_size=INPUT, hidden_size=HIDDEN)
    problem = _problem(config, seed=3)
    params, masks, readout_params, xs, ys = problem
    estimator = est_lib.make_estimator("uoro", config, readout_loss=readout_loss)
    state0 = np.zeros((cells.state_size(config),))
    total = 4096

    @jax.jit
    def all_estimates(seeds):
        def one(seed):
            traces = estimator.init_traces(params, masks, readout_params, state0)
            keys = jax.random.split(jax.random.key(seed), xs.shape[0])
            _, traces, _ = _scan(
                estimator, params, masks, readout_params, state0, traces, xs, ys, keys
            )
            return ravel_pytree(traces["grad_cell"])[0]

        return jax.vmap(one)(seeds)

    est_flat = np.asarray(all_estimates(jnp.arange(total)))
    ref_flat = ravel_pytree(_exact(config, problem)["bptt"][0])[0]
    sizes = np.array([16, 64, 256, 1024])
    rms = []
    for n in sizes:
        means = est_flat.reshape(total // n, n, -1).mean(axis=1)
        rms.append(float(np.sqrt(np.mean(np.sum((means - ref_flat) ** 2, axis=1)))))
    slope = np.polyfit(np.log(sizes), np.log(rms), 1)[0]
    print("uoro", slope, rms, rms[-1] / float(np.linalg.norm(ref_flat)))
    assert -0.7 < slope < -0.3, (slope, rms)
    assert rms[-1] / float(np.linalg.norm(ref_flat)) < 0.2, rms


@pytest.mark.parametrize("name", ["rtrl", "snap1", "uoro"])
def test_consume_keeps_influence_and_reset_zeroes_it(name):
    """With fixed params, grads of two halves (consume in between) add up to the whole-sequence grads."""
    config = cells.CellConfig("gru", input_size=INPUT, hidden_size=HIDDEN)
    params, masks, readout_params, xs, ys = _problem(config, steps=8)
    estimator = est_lib.make_estimator(name, config, readout_loss=readout_loss, masks=masks)
    state0 = np.zeros((cells.state_size(config),))

    @jax.jit
    def halves(params, masks, readout_params, xs, ys):
        """The whole sequence; its first half; the second half after consume or after reset."""
        keys = jax.random.split(jax.random.key(0), 8)
        run = functools.partial(_scan, estimator, params, masks, readout_params)
        traces0 = estimator.init_traces(params, masks, readout_params, state0)
        _, whole, _ = run(state0, traces0, xs, ys, keys)
        state, first, _ = run(state0, traces0, xs[:4], ys[:4], keys[:4])
        consumed, reset = estimator.consume(first), estimator.reset(first)
        second = run(state, consumed, xs[4:], ys[4:], keys[4:])[1]
        restarted = run(state, reset, xs[4:], ys[4:], keys[4:])[1]
        return whole, first, consumed, second, reset, restarted

    whole, first, consumed, second, reset, restarted = jax.device_get(
        halves(params, masks, readout_params, xs, ys)
    )
    accumulators = jax.tree.leaves(_grads(consumed))
    assert all(np.all(np.asarray(leaf) == 0) for leaf in accumulators)
    influence_key = "s_tilde" if name == "uoro" else "influence"
    jax.tree.map(np.testing.assert_array_equal, consumed[influence_key], first[influence_key])
    assert any(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(consumed[influence_key]))
    halves_sum = jax.tree.map(np.add, _grads(first), _grads(second))
    assert _relative_error(halves_sum, _grads(whole)) < 1e-10
    # dropping the influence changes the second half's grads
    assert _relative_error(_grads(restarted), _grads(second)) > 1e-3
    assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(reset))


def test_tbptt_is_ready_only_at_window_ends():
    config = cells.CellConfig("vanilla", input_size=INPUT, hidden_size=HIDDEN)
    params, masks, readout_params, xs, ys = _problem(config, steps=6)
    estimator = est_lib.make_estimator("tbptt", config, readout_loss=readout_loss, truncation=3)
    state0 = np.zeros((cells.state_size(config),))

    @jax.jit
    def readies(params, masks, readout_params, xs, ys):
        traces = estimator.init_traces(params, masks, readout_params, state0)
        keys = jax.random.split(jax.random.key(0), xs.shape[0])
        return _scan(estimator, params, masks, readout_params, state0, traces, xs, ys, keys)[2]

    ready = readies(params, masks, readout_params, xs, ys)[0].tolist()
    assert ready == [False, False, True, False, False, True]


def test_unknown_estimator_or_missing_window_raises_config_error():
    config = cells.CellConfig("gru", input_size=2, hidden_size=3)
    with pytest.raises(ConfigError, match="estimator"):
        est_lib.make_estimator("kfrtrl", config, readout_loss=readout_loss)
    with pytest.raises(ConfigError, match="truncation"):
        est_lib.make_estimator("tbptt", config, readout_loss=readout_loss)


def test_snap_pattern_needs_concrete_masks():
    config = cells.CellConfig("gru", input_size=INPUT, hidden_size=HIDDEN, density=0.5)
    params, masks = cells.init_cell(config, jax.random.key(0), jnp.float64)
    estimator = est_lib.make_estimator("snap2", config, readout_loss=readout_loss)
    state = np.zeros((cells.state_size(config),))
    with pytest.raises(ConfigError, match="concrete masks"):
        jax.jit(estimator.init_traces)(params, masks, {}, state)
    traces = estimator.init_traces(params, masks, {}, state)  # eager: builds and caches the pattern
    assert (
        traces["influence"]["w_h"].shape[-1]
        == est_lib.snap_structure(config, masks, 2).entries.shape[1]
    )
