"""Cells of deepgen.snap: equations against independent forms (Flax GRUCell), masks, structure tables.

Every cell has input 3 and hidden 4, so that the eager parameter initialisation (init_cell) of
each kind compiles once for the file; the cell maths runs inside jit (one compile per test).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.core.errors import ConfigError
from deepgen.snap import cells
from deepgen.snap.estimators import snap_reach, structural_adjacency


@pytest.fixture(autouse=True)
def _float64():
    """float64 for exact comparisons, for this test only."""
    with jax.enable_x64(True):
        yield


def _random_params(config, seed=0):
    """init_cell's parameters plus N(0, 0.3^2) noise on every kept entry (biases too), as NumPy."""
    params, masks = cells.init_cell(config, jax.random.key(seed), jnp.float64)
    rng = np.random.default_rng(seed + 100)
    noisy = {
        name: np.asarray(leaf)
        + 0.3 * rng.standard_normal(leaf.shape) * np.asarray(masks.get(name, 1.0))
        for name, leaf in sorted(params.items())
    }
    return noisy, masks


def _normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


_cell_step = jax.jit(cells.cell_step, static_argnums=0)


def test_gru_matches_flax_reset_after_gru_cell():
    config = cells.CellConfig("gru", input_size=3, hidden_size=4)
    params, masks = _random_params(config)
    params["b_h"][:2] = 0.0  # Flax has no recurrent bias on r and z
    h, x = _normal(5, (4,)), _normal(6, (3,))
    flax_params = {}
    for g, gate in enumerate("rzn"):
        flax_params[f"i{gate}"] = {"kernel": params["w_x"][g].T, "bias": params["b"][g]}
        flax_params[f"h{gate}"] = {"kernel": params["w_h"][g].T}
    flax_params["hn"]["bias"] = params["b_h"][2]
    flax_gru = jax.jit(nn.GRUCell(features=4, param_dtype=jnp.float64).apply)
    expected, _ = flax_gru({"params": flax_params}, h, x)
    np.testing.assert_allclose(_cell_step(config, params, masks, h, x), expected, rtol=1e-12)


def test_lstm_and_vanilla_match_written_out_equations():
    """The written-out equations in NumPy (float64), the cells under jit."""
    sigmoid = lambda a: 1.0 / (1.0 + np.exp(-a))
    lstm = cells.CellConfig("lstm", input_size=3, hidden_size=4)
    params, masks = _random_params(lstm)
    state, x = _normal(1, (8,)), _normal(2, (3,))
    h, c = state[:4], state[4:]
    pre = [params["w_x"][g] @ x + params["w_h"][g] @ h + params["b"][g] for g in range(4)]
    new_c = sigmoid(pre[1]) * c + sigmoid(pre[0]) * np.tanh(pre[2])
    new_h = sigmoid(pre[3]) * np.tanh(new_c)
    np.testing.assert_allclose(
        _cell_step(lstm, params, masks, state, x), np.concatenate([new_h, new_c]), rtol=1e-12
    )
    assert cells.state_size(lstm) == 8 and cells.hidden(lstm, state).shape == (4,)

    vanilla = cells.CellConfig("vanilla", input_size=3, hidden_size=4)
    params, masks = _random_params(vanilla)
    expected = np.tanh(params["w_x"][0] @ x + params["w_h"][0] @ h + params["b"][0])
    np.testing.assert_allclose(_cell_step(vanilla, params, masks, h, x), expected, rtol=1e-12)


@pytest.mark.parametrize("per_gate", [False, True])
def test_masks_have_the_density_and_sharing_asked_for(per_gate):
    """Exactly round(d n) kept entries: 0.3 * 16 = 4.8 -> 5 of W_h, 0.3 * 12 = 3.6 -> 4 of W_x."""
    config = cells.CellConfig(
        "gru", input_size=3, hidden_size=4, density=0.3, mask_per_gate=per_gate
    )
    params, masks = cells.init_cell(config, jax.random.key(0), jnp.float64)
    mask_h, mask_x = np.asarray(masks["w_h"]), np.asarray(masks["w_x"])
    assert all(int(mask_h[g].sum()) == 5 and int(mask_x[g].sum()) == 4 for g in range(3))
    assert np.array_equal(mask_h[0], mask_h[1]) != per_gate
    assert np.array_equal(mask_x[0], mask_x[1]) != per_gate
    assert np.all(np.asarray(params["w_h"])[mask_h == 0] == 0)
    assert cells.count_params(params, masks) == 3 * (5 + 4) + 2 * 3 * 4


def test_masked_weights_are_ignored_and_get_zero_gradient():
    config = cells.CellConfig("lstm", input_size=3, hidden_size=4, density=0.4)
    params, masks = _random_params(config)
    junk = {**params, "w_h": params["w_h"] + (1 - np.asarray(masks["w_h"])) * 7.0}
    state, x = _normal(3, (8,)), np.ones((3,))

    @jax.jit
    def step_and_grads(params, junk):
        grads = jax.grad(lambda p: jnp.sum(cells.cell_step(config, p, masks, state, x) ** 2))
        return (
            cells.cell_step(config, params, masks, state, x),
            cells.cell_step(config, junk, masks, state, x),
            grads(params),
        )

    new_state, junk_state, grads = step_and_grads(params, junk)
    # The two cell steps are fused apart and may round differently (last ulp); junk would add ~7.
    np.testing.assert_allclose(new_state, junk_state, rtol=1e-13, atol=0)
    assert np.all(np.asarray(grads["w_h"])[np.asarray(masks["w_h"]) == 0] == 0)


@pytest.mark.parametrize("kind", cells.CELL_KINDS)
def test_structural_wiring_matches_autodiff_jacobians_at_a_generic_point(kind):
    """The hand-written wiring tables give exactly the nonzeros of D_t and I_t at random values."""
    config = cells.CellConfig(kind, input_size=3, hidden_size=4, density=0.4, mask_per_gate=True)
    params, masks = _random_params(config, seed=1)
    size = cells.state_size(config)
    state, x = _normal(2, (size,)), _normal(3, (3,))

    @jax.jit
    def jacobians(params, state):
        d_jac = jax.jacfwd(lambda s: cells.cell_step(config, params, masks, s, x))(state)
        i_jac = jax.jacrev(lambda p: cells.cell_step(config, p, masks, state, x))(params)
        return d_jac, i_jac

    d_jac, i_jac = jacobians(params, state)
    np.testing.assert_array_equal(np.asarray(d_jac) != 0, structural_adjacency(config, masks))
    reach1 = snap_reach(config, masks, 1)  # (G, k, S)
    for name in ("b", "w_h"):
        leaf_jac = np.asarray(i_jac[name]) != 0  # (S, G, k, ...)
        expected = np.moveaxis(reach1, 2, 0)
        if name == "w_h":
            expected = expected[..., None] & (np.asarray(masks["w_h"]) != 0)[None]
        np.testing.assert_array_equal(leaf_jac, expected)


def test_bad_config_values_raise_config_error():
    with pytest.raises(ConfigError, match="kind"):
        cells.CellConfig("rnn", 3, 4)
    with pytest.raises(ConfigError, match="density"):
        cells.CellConfig("gru", 3, 4, density=0.0)
