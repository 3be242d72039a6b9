"""Maths of the gradient estimators: RTRL = BPTT, SnAp-n -> RTRL, structural SnAp-1 mask, UORO unbiasedness."""

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


@pytest.fixture(autouse=True)
def _float64():
    """float64 for exact comparisons, for this test only."""
    with jax.enable_x64(True):
        yield


def readout_loss(readout_params, h_K, y):
    """Softmax cross-entropy of a linear readout."""
    logits = readout_params["w"] @ h_K + readout_params["b"]
    return -jax.nn.log_softmax(logits)[y]


def _problem(config, *, steps=8, seed=0, masks_override=None, xs=None):
    params, masks = cells.init_cell(config, jax.random.key(seed), jnp.float64)
    if masks_override is not None:
        masks = {
            name: jnp.broadcast_to(jnp.asarray(m, jnp.float64), masks[name].shape)
            for name, m in masks_override.items()
        }
        params = {**params, **{name: params[name] * masks[name] for name in masks}}
        params["w_h"] = params["w_h"] * 1.5  # keep a diagonal/sparse recurrence from dying out
    k = config.hidden_size
    readout_params = {
        "w": jax.random.normal(jax.random.key(seed + 1), (NUM_CLASSES, k), jnp.float64),
        "b": jnp.zeros((NUM_CLASSES,), jnp.float64),
    }
    if xs is None:
        xs = jax.random.normal(jax.random.key(seed + 2), (steps, config.input_size), jnp.float64)
    ys = jax.random.randint(jax.random.key(seed + 3), (xs.shape[0],), 0, NUM_CLASSES)
    return params, masks, readout_params, xs, ys


@functools.cache
def _scanner(estimator):
    """A jitted scan of estimator.step over a sequence, compiled once per estimator and shape."""

    @jax.jit
    def scan(params, masks, readout_params, state, traces, xs, ys, keys):
        state, traces, _ = est_lib.scan_steps(
            estimator, params, masks, readout_params, state, traces, xs, ys, keys
        )
        return state, traces, (traces["grad_cell"], traces["grad_readout"])

    return scan


def _run(estimator, params, masks, readout_params, xs, ys, *, state0, traces=None, keys=None):
    """Run the estimator over the sequence in one jitted scan; returns (state, traces, grads)."""
    if traces is None:
        traces = estimator.init_traces(params, masks, readout_params, state0)
    if keys is None:
        keys = jax.random.split(jax.random.key(0), xs.shape[0])
    return _scanner(estimator)(params, masks, readout_params, state0, traces, xs, ys, keys)


def _reference(config, params, masks, readout_params, xs, ys):
    state0 = cells.initial_state(config, jnp.float64)
    grads, _ = est_lib.bptt_gradients(
        config, params, masks, readout_params, state0, xs, ys, readout_loss
    )
    return grads


def _relative_error(grads, reference) -> float:
    diff = sum(
        float(jnp.sum((a - b) ** 2))
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference), strict=True)
    )
    norm = sum(float(jnp.sum(b**2)) for b in jax.tree.leaves(reference))
    return float(np.sqrt(diff / norm))


def _estimate(name, config, params, masks, readout_params, xs, ys, **kwargs):
    estimator = est_lib.make_estimator(
        name, config, readout_loss=readout_loss, masks=masks, **kwargs
    )
    state0 = cells.initial_state(config, jnp.float64)
    return _run(estimator, params, masks, readout_params, xs, ys, state0=state0)[2]


@pytest.mark.parametrize("density", [1.0, 0.5])
@pytest.mark.parametrize("kind", cells.CELL_KINDS)
def test_rtrl_equals_bptt_and_snap2_is_exact_when_dense(kind, density):
    """Dense k=4: every unit reaches every unit in one step, so the SnAp-2 pattern is already full."""
    config = cells.CellConfig(kind, input_size=3, hidden_size=4, density=density)
    problem = _problem(config, steps=10)
    reference = _reference(config, *problem)
    assert _relative_error(_estimate("rtrl", config, *problem), reference) < 1e-6
    if density < 1.0:  # paths are at most S long, so SnAp-(S+1) keeps every reachable entry
        order = cells.state_size(config) + 1
        assert _relative_error(_estimate(f"snap{order}", config, *problem), reference) < 1e-10
    else:
        assert (
            _relative_error(_estimate("tbptt", config, *problem, truncation=10), reference) < 1e-12
        )
        assert _relative_error(_estimate("snap2", config, *problem), reference) < 1e-10
        assert _relative_error(_estimate("snap1", config, *problem), reference) > 1e-3
        assert est_lib.snap_reach(config, problem[1], 2).all()


def test_snap_n_converges_to_rtrl_on_a_sparse_ring_by_the_diameter():
    """Ring of k=5 units (i-1 -> i, plus self loops): diameter 4, so SnAp-5 is exact; errors fall with n."""
    k = 5
    ring = np.eye(k) + np.roll(np.eye(k), 1, axis=0)
    config = cells.CellConfig("vanilla", input_size=2, hidden_size=k)
    problem = _problem(
        config, steps=10, masks_override={"w_h": ring[None], "w_x": np.ones((1, k, 2))}
    )
    reference = _reference(config, *problem)
    errors = [
        _relative_error(_estimate(f"snap{n}", config, *problem), reference) for n in range(1, 6)
    ]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-10 and errors[-2] > 1e-8, errors
    assert (
        not est_lib.snap_reach(config, problem[1], 4).all()
        and est_lib.snap_reach(config, problem[1], 5).all()
    )


@pytest.mark.parametrize("kind,order", [("vanilla", 1), ("gru", 1), ("lstm", 2)])
def test_snap_is_exact_for_a_diagonal_recurrence(kind, order):
    """Identity recurrent masks make D_t (block-)diagonal: SnAp-1 is exact (LSTM: o-gate needs 2 steps to reach c)."""
    config = cells.CellConfig(kind, input_size=3, hidden_size=4)
    num_gates = cells.cell_wiring(kind).num_gates
    override = {
        "w_h": np.broadcast_to(np.eye(4), (num_gates, 4, 4)),
        "w_x": np.ones((num_gates, 4, 3)),
    }
    problem = _problem(config, steps=10, masks_override=override)
    reference = _reference(config, *problem)
    assert _relative_error(_estimate(f"snap{order}", config, *problem), reference) < 1e-10


def _value_masked_snap1(config, params, masks, readout_params, xs, ys):
    """The paper's Appendix D snippet: dense J, then J *= (|I_t| > 0) from the CURRENT values."""

    @jax.jit
    def one_step(state, influence, grads, x, y):
        d = jax.jacfwd(cells.cell_step, argnums=3)(config, params, masks, state, x)
        imm = jax.jacrev(cells.cell_step, argnums=1)(config, params, masks, state, x)
        value_mask = jax.tree.map(lambda i: jnp.abs(i) > 0, imm)
        influence = jax.tree.map(
            lambda i, j, m: (i + jnp.tensordot(d, j, axes=1)) * m, imm, influence, value_mask
        )
        state = cells.cell_step(config, params, masks, state, x)
        delta = jax.grad(lambda s: readout_loss(readout_params, cells.hidden(config, s), y))(state)
        grads = jax.tree.map(lambda g, j: g + jnp.tensordot(delta, j, axes=1), grads, influence)
        return state, influence, grads, value_mask

    state = cells.initial_state(config, jnp.float64)
    influence = jax.tree.map(lambda p: jnp.zeros(state.shape + p.shape), params)
    grads = jax.tree.map(jnp.zeros_like, params)
    value_masks = []
    for x, y in zip(xs, ys, strict=True):
        state, influence, grads, value_mask = one_step(state, influence, grads, x, y)
        value_masks.append(jax.tree.map(np.asarray, value_mask))
    return grads, value_masks


@pytest.mark.parametrize("kind", cells.CELL_KINDS)
@pytest.mark.parametrize("density", [1.0, 0.4])
def test_fast_snap1_equals_the_general_snap_n_code_at_n_1(kind, density):
    """The element-wise SnAp-1 path and the gather-based SnAp-n path agree (float64, 12 steps)."""
    config = cells.CellConfig(kind, input_size=3, hidden_size=5, density=density)
    params, masks, readout_params, xs, ys = _problem(config, steps=12)
    grads = []
    for general in (False, True):
        estimator = est_lib.make_estimator(
            "snap1", config, readout_loss=readout_loss, masks=masks, general_snap=general
        )
        state = cells.initial_state(config, jnp.float64)
        traces = estimator.init_traces(params, masks, readout_params, state)
        for t in range(xs.shape[0]):
            state, traces, step_grads, _, _ = estimator.step(
                params, masks, readout_params, state, traces, xs[t], ys[t], jax.random.key(t)
            )
        grads.append(step_grads)
    for fast, general in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(fast, general, rtol=1e-10, atol=1e-12)
    assert any(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(grads[0][0]))


@pytest.mark.parametrize("kind", cells.CELL_KINDS)
@pytest.mark.parametrize("density", [1.0, 0.4])
def test_blocked_snap1_folds_to_the_step_by_step_estimate(kind, density):
    """Block 4 over 11 steps: traces equal at the block ends, gradients equal with the partial block."""
    config = cells.CellConfig(kind, input_size=3, hidden_size=5, density=density)
    params, masks, readout_params, xs, ys = _problem(config, steps=11)
    runs = {}
    for block in (1, 4):
        estimator = est_lib.make_estimator(
            "snap1", config, readout_loss=readout_loss, masks=masks, snap_block=block
        )
        state = cells.initial_state(config, jnp.float64)
        traces = estimator.init_traces(params, masks, readout_params, state)
        influence_at_8, readies = None, []
        for t in range(xs.shape[0]):
            state, traces, step_grads, _, ready = estimator.step(
                params, masks, readout_params, state, traces, xs[t], ys[t], None
            )
            readies.append(bool(ready))
            if t == 7:
                influence_at_8 = traces["influence"]
        cell_grads = step_grads[0]
        if estimator.pending_grads is not None:
            cell_grads = jax.tree.map(
                jnp.add, cell_grads, estimator.pending_grads(params, masks, traces)
            )
        runs[block] = (influence_at_8, cell_grads, step_grads[1], readies)
    assert runs[4][3] == [t % 4 == 3 for t in range(11)] and all(runs[1][3])
    for want, got in zip(jax.tree.leaves(runs[1][:3]), jax.tree.leaves(runs[4][:3]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
    assert any(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(runs[4][1]))


def test_snap_block_is_for_snap1_only():
    config = cells.CellConfig("gru", input_size=3, hidden_size=5)
    with pytest.raises(ConfigError, match="snap1 estimator only"):
        est_lib.make_estimator("snap2", config, readout_loss=readout_loss, snap_block=4)
    with pytest.raises(ConfigError, match="snap_block must be >= 1"):
        est_lib.make_estimator("snap1", config, readout_loss=readout_loss, snap_block=0)


def test_snap1_mask_is_structural_not_value_based():
    """One-hot inputs: I_t for W_x[:, j] is exactly 0 whenever symbol j is off, yet J keeps decaying values."""
    k, num_symbols = 3, 3
    config = cells.CellConfig("vanilla", input_size=num_symbols, hidden_size=k)
    xs = jnp.eye(num_symbols, dtype=jnp.float64)[jnp.array([0, 1, 2, 0, 1, 2, 2, 1])]
    override = {"w_h": np.eye(k)[None], "w_x": np.ones((1, k, num_symbols))}
    problem = _problem(config, xs=xs, masks_override=override)
    reference = _reference(config, *problem)
    ours = _estimate("snap1", config, *problem)
    value_based, value_masks = _value_masked_snap1(config, *problem[:3], xs, problem[4])
    assert _relative_error(ours, reference) < 1e-10  # diagonal recurrence: SnAp-1 is exact
    value_error = _relative_error((value_based, ours[1]), reference)
    assert value_error > 1e-2, value_error
    reach = np.moveaxis(est_lib.snap_reach(config, problem[1], 1), 2, 0)  # (S, G, k)
    structural = np.broadcast_to(reach[..., None], value_masks[0]["w_x"].shape)  # W_x[g,u,j] -> u
    for value_mask in value_masks:  # a strict subset: it drops W_x[:, j] whenever x_j = 0
        assert np.all(value_mask["w_x"] <= structural) and np.any(value_mask["w_x"] != structural)


def test_snap1_stores_one_number_per_parameter():
    for kind, per_param in [("vanilla", 1), ("gru", 1), ("lstm", 2)]:
        config = cells.CellConfig(kind, input_size=3, hidden_size=6)
        params, masks = cells.init_cell(config, jax.random.key(0), jnp.float64)
        estimator = est_lib.make_estimator("snap1", config, readout_loss=readout_loss, masks=masks)
        traces = estimator.init_traces(
            params, masks, {"w": jnp.zeros((2, 6))}, cells.initial_state(config)
        )
        stored = sum(leaf.size for leaf in jax.tree.leaves(traces["influence"]))
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
    config = cells.CellConfig("gru", input_size=2, hidden_size=3)
    params, masks, readout_params, xs, ys = _problem(config, steps=6, seed=3)
    reference = _reference(config, params, masks, readout_params, xs, ys)[0]
    estimator = est_lib.make_estimator("uoro", config, readout_loss=readout_loss)
    state0 = cells.initial_state(config, jnp.float64)
    total = 4096

    @jax.jit
    def all_estimates(seeds):
        def one(seed):
            return _run_unjitted(estimator, params, masks, readout_params, xs, ys, seed, state0)

        return jax.vmap(one)(seeds)

    flat = ravel_pytree
    estimates = all_estimates(jnp.arange(total))[0]
    ref_flat = flat(reference)[0]
    est_flat = jax.vmap(lambda g: flat(g)[0])(estimates)
    sizes = np.array([16, 64, 256, 1024])
    rms = []
    for n in sizes:
        means = est_flat.reshape(total // n, n, -1).mean(axis=1)
        rms.append(float(jnp.sqrt(jnp.mean(jnp.sum((means - ref_flat) ** 2, axis=1)))))
    slope = np.polyfit(np.log(sizes), np.log(rms), 1)[0]
    assert -0.7 < slope < -0.3, (slope, rms)
    assert rms[-1] / float(jnp.linalg.norm(ref_flat)) < 0.2, rms


def _run_unjitted(estimator, params, masks, readout_params, xs, ys, seed, state0):
    traces = estimator.init_traces(params, masks, readout_params, state0)
    keys = jax.random.split(jax.random.key(seed), xs.shape[0])
    _, traces, _ = est_lib.scan_steps(
        estimator, params, masks, readout_params, state0, traces, xs, ys, keys
    )
    return traces["grad_cell"], traces["grad_readout"]


@pytest.mark.parametrize("name", ["rtrl", "snap1", "uoro"])
def test_consume_keeps_influence_and_reset_zeroes_it(name):
    """With fixed params, grads of two halves (consume in between) add up to the whole-sequence grads."""
    config = cells.CellConfig("gru", input_size=2, hidden_size=3)
    params, masks, readout_params, xs, ys = _problem(config, steps=8)
    estimator = est_lib.make_estimator(name, config, readout_loss=readout_loss, masks=masks)
    state0 = cells.initial_state(config, jnp.float64)
    keys = jax.random.split(jax.random.key(0), 8)
    _, _, whole = _run(estimator, params, masks, readout_params, xs, ys, state0=state0, keys=keys)
    state, traces, first = _run(
        estimator, params, masks, readout_params, xs[:4], ys[:4], state0=state0, keys=keys[:4]
    )
    consumed = estimator.consume(traces)
    accumulators = jax.tree.leaves((consumed["grad_cell"], consumed["grad_readout"]))
    assert all(np.all(np.asarray(leaf) == 0) for leaf in accumulators)
    influence_key = "s_tilde" if name == "uoro" else "influence"
    jax.tree.map(np.testing.assert_array_equal, consumed[influence_key], traces[influence_key])
    assert any(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(consumed[influence_key]))

    def second_half_grads(traces_at_half):
        return _run(
            estimator,
            params,
            masks,
            readout_params,
            xs[4:],
            ys[4:],
            state0=state,
            traces=traces_at_half,
            keys=keys[4:],
        )[2]

    second = second_half_grads(consumed)
    assert _relative_error(jax.tree.map(jnp.add, first, second), whole) < 1e-10
    restarted = second_half_grads(estimator.reset(traces))
    assert (
        _relative_error(restarted, second) > 1e-3
    )  # dropping the influence changes the second half's grads
    assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(estimator.reset(traces)))


def test_tbptt_is_ready_only_at_window_ends():
    config = cells.CellConfig("vanilla", input_size=2, hidden_size=3)
    params, masks, readout_params, xs, ys = _problem(config, steps=6)
    estimator = est_lib.make_estimator("tbptt", config, readout_loss=readout_loss, truncation=3)
    state = cells.initial_state(config, jnp.float64)
    traces = estimator.init_traces(params, masks, readout_params, state)
    ready = []
    for x, y in zip(xs, ys, strict=True):
        state, traces, _, _, is_ready = estimator.step(
            params, masks, readout_params, state, traces, x, y, None
        )
        ready.append(bool(is_ready))
    assert ready == [False, False, True, False, False, True]


def test_unknown_estimator_or_missing_window_raises_config_error():
    config = cells.CellConfig("gru", input_size=2, hidden_size=3)
    with pytest.raises(ConfigError, match="estimator"):
        est_lib.make_estimator("kfrtrl", config, readout_loss=readout_loss)
    with pytest.raises(ConfigError, match="truncation"):
        est_lib.make_estimator("tbptt", config, readout_loss=readout_loss)


def test_snap_pattern_needs_concrete_masks():
    config = cells.CellConfig("gru", input_size=2, hidden_size=3, density=0.5)
    params, masks = cells.init_cell(config, jax.random.key(0))
    estimator = est_lib.make_estimator("snap2", config, readout_loss=readout_loss)
    state = cells.initial_state(config)
    with pytest.raises(ConfigError, match="concrete masks"):
        jax.jit(estimator.init_traces)(params, masks, {}, state)
    traces = estimator.init_traces(params, masks, {}, state)  # eager: builds and caches the pattern
    assert (
        traces["influence"]["w_h"].shape[-1]
        == est_lib.snap_structure(config, masks, 2).entries.shape[1]
    )
