"""Cells of deepgen.snap: equations against independent forms (Flax GRUCell), masks, structure tables."""

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
    params, masks = cells.init_cell(config, jax.random.key(seed), jnp.float64)
    keys = jax.random.split(jax.random.key(seed + 100), len(params))
    noisy = {
        name: leaf + 0.3 * jax.random.normal(key, leaf.shape, leaf.dtype) * (masks.get(name, 1.0))
        for key, (name, leaf) in zip(keys, sorted(params.items()), strict=True)
    }
    return noisy, masks


def test_gru_matches_flax_reset_after_gru_cell():
    config = cells.CellConfig("gru", input_size=3, hidden_size=4)
    params, masks = _random_params(config)
    params["b_h"] = params["b_h"].at[:2].set(0.0)  # Flax has no recurrent bias on r and z
    h = jax.random.normal(jax.random.key(5), (4,), jnp.float64)
    x = jax.random.normal(jax.random.key(6), (3,), jnp.float64)
    flax_params = {}
    for g, gate in enumerate("rzn"):
        flax_params[f"i{gate}"] = {"kernel": params["w_x"][g].T, "bias": params["b"][g]}
        flax_params[f"h{gate}"] = {"kernel": params["w_h"][g].T}
    flax_params["hn"]["bias"] = params["b_h"][2]
    expected, _ = nn.GRUCell(features=4, param_dtype=jnp.float64).apply(
        {"params": flax_params}, h, x
    )
    np.testing.assert_allclose(cells.cell_step(config, params, masks, h, x), expected, rtol=1e-12)


def test_lstm_and_vanilla_match_written_out_equations():
    lstm = cells.CellConfig("lstm", input_size=3, hidden_size=4)
    params, masks = _random_params(lstm)
    state = jax.random.normal(jax.random.key(1), (8,), jnp.float64)
    x = jax.random.normal(jax.random.key(2), (3,), jnp.float64)
    h, c = state[:4], state[4:]
    pre = [params["w_x"][g] @ x + params["w_h"][g] @ h + params["b"][g] for g in range(4)]
    new_c = jax.nn.sigmoid(pre[1]) * c + jax.nn.sigmoid(pre[0]) * jnp.tanh(pre[2])
    new_h = jax.nn.sigmoid(pre[3]) * jnp.tanh(new_c)
    np.testing.assert_allclose(
        cells.cell_step(lstm, params, masks, state, x), jnp.concatenate([new_h, new_c])
    )
    assert cells.state_size(lstm) == 8 and cells.hidden(lstm, state).shape == (4,)

    vanilla = cells.CellConfig("vanilla", input_size=3, hidden_size=4)
    params, masks = _random_params(vanilla)
    expected = jnp.tanh(params["w_x"][0] @ x + params["w_h"][0] @ h + params["b"][0])
    np.testing.assert_allclose(cells.cell_step(vanilla, params, masks, h, x), expected)


@pytest.mark.parametrize("per_gate", [False, True])
def test_masks_have_the_density_and_sharing_asked_for(per_gate):
    config = cells.CellConfig(
        "gru", input_size=6, hidden_size=10, density=0.3, mask_per_gate=per_gate
    )
    params, masks = cells.init_cell(config, jax.random.key(0))
    mask_h = np.asarray(masks["w_h"])
    assert all(int(mask_h[g].sum()) == 30 for g in range(3))
    assert np.array_equal(mask_h[0], mask_h[1]) != per_gate
    assert np.all(np.asarray(params["w_h"])[mask_h == 0] == 0)
    assert cells.count_params(params, masks) == 3 * (30 + 18) + 2 * 3 * 10


def test_masked_weights_are_ignored_and_get_zero_gradient():
    config = cells.CellConfig("lstm", input_size=3, hidden_size=5, density=0.4)
    params, masks = _random_params(config)
    junk = {**params, "w_h": params["w_h"] + (1 - masks["w_h"]) * 7.0}
    state = jax.random.normal(jax.random.key(3), (10,), jnp.float64)
    x = jnp.ones((3,), jnp.float64)
    np.testing.assert_array_equal(
        cells.cell_step(config, params, masks, state, x),
        cells.cell_step(config, junk, masks, state, x),
    )
    grads = jax.grad(lambda p: jnp.sum(cells.cell_step(config, p, masks, state, x) ** 2))(params)
    assert np.all(np.asarray(grads["w_h"])[np.asarray(masks["w_h"]) == 0] == 0)


@pytest.mark.parametrize("kind", cells.CELL_KINDS)
def test_structural_wiring_matches_autodiff_jacobians_at_a_generic_point(kind):
    """The hand-written wiring tables give exactly the nonzeros of D_t and I_t at random values."""
    config = cells.CellConfig(kind, input_size=3, hidden_size=6, density=0.4, mask_per_gate=True)
    params, masks = _random_params(config, seed=1)
    size = cells.state_size(config)
    state = jax.random.normal(jax.random.key(2), (size,), jnp.float64)
    x = jax.random.normal(jax.random.key(3), (3,), jnp.float64)
    d_jac = jax.jacfwd(lambda s: cells.cell_step(config, params, masks, s, x))(state)
    np.testing.assert_array_equal(np.asarray(d_jac) != 0, structural_adjacency(config, masks))
    i_jac = jax.jacrev(lambda p: cells.cell_step(config, p, masks, state, x))(params)
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
