"""ACN's decoders, losses and train step: causality, the VAE's closed form, the table refresh."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import acn as acn_configs
from deepgen.acn import model as acn_model
from experiments.acn.method import ACN, ACNState, VAEState

SHARED_OMNIGLOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "omniglot"


def small_model(**overrides) -> acn_model.ACNModel:
    fields = dict(
        image_shape=(6, 6, 1),
        latent_dim=3,
        decoder="pixelcnn",
        encoder_channels=(4,),
        decoder_channels=(4,),
        pixelcnn_layers=3,
        pixelcnn_features=8,
        prior_components=2,
        prior_hidden_units=8,
    )
    fields.update(overrides)
    return acn_model.ACNModel(**fields)


@pytest.mark.parametrize(
    "likelihood,channels,conditioning",
    [("bernoulli", 1, "vector"), ("logistic", 3, "vector"), ("bernoulli", 1, "map")],
)
def test_pixelcnn_decoder_output_ignores_the_current_and_later_pixels(
    likelihood, channels, conditioning
):
    """d out[i] / d x[j] is exactly zero for every pixel j at or after i in raster order."""
    model = small_model(
        image_shape=(8, 8, channels),
        likelihood=likelihood,
        num_mixtures=2,
        pixelcnn_conditioning=conditioning,
    )
    x = jax.random.uniform(jax.random.key(0), (1, 8, 8, channels))
    z = jnp.ones((1, 3))
    params = model.init(jax.random.key(1), x, z)
    decode = lambda x_: model.apply(params, x_, z, method=acn_model.ACNModel.decode)
    jacobian = jax.jit(jax.jacrev(lambda x_: decode(x_)[0].sum(-1)))(x)  # H x W x 1 x H x W x C
    jacobian = np.asarray(jacobian).reshape(64, 64, channels)
    after_or_at = np.triu(np.ones((64, 64), bool))  # [i, j]: j >= i in raster order
    assert (jacobian[after_or_at] == 0.0).all()
    # ... and the output does see earlier pixels (the test is not vacuous).
    assert np.abs(jacobian[~after_or_at]).sum() > 0


def test_vae_ledger_uses_the_closed_form_kl_and_acn_the_estimate():
    model = small_model(use_prior_network=False, decoder="feedforward", decoder_channels=(4,))
    x = (jax.random.uniform(jax.random.key(0), (5, 6, 6, 1)) < 0.3).astype(jnp.float32)
    params = model.init(jax.random.key(1), x, jnp.zeros((5, 3)))
    kl, recon, code = acn_model.ledger_terms(
        params, model=model, x_BxHxWxC=x, rng=jax.random.key(2), code_hat_BxZ=None
    )
    np.testing.assert_allclose(np.asarray(kl), 0.5 * np.sum(np.asarray(code) ** 2, -1), rtol=1e-6)
    loss, aux = acn_model.acn_loss(
        params, model=model, x_BxHxWxC=x, rng=jax.random.key(3), neighbour_code_fn=None
    )
    np.testing.assert_allclose(float(loss), float(aux["kl"] + aux["reconstruction"]), rtol=1e-6)
    assert float(jnp.min(recon)) > 0


@pytest.fixture(scope="module", params=["smoke", "vae_smoke"])
def method(request):
    config = acn_configs.get_config(request.param)
    return ACN(config, mode="train")


def test_train_step_refreshes_exactly_the_batch_rows_with_the_pre_step_codes(method):
    state = jax.jit(method.init_state)(jax.random.key(0))
    batch = next(method.batches())
    new_state, metrics = jax.jit(method.train_step)(state, batch, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"])) and int(new_state.step) == 1
    if not method.is_acn:
        assert type(new_state) is VAEState
        return
    assert isinstance(new_state, ACNState)
    codes = method.model.apply(state.params, batch["x"], method=acn_model.ACNModel.encode)
    old, new = np.asarray(state.code_table), np.asarray(new_state.code_table)
    touched = np.zeros(len(old), bool)
    touched[batch["index"]] = True
    np.testing.assert_allclose(new[batch["index"]], np.asarray(codes), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(new[~touched], old[~touched])
    assert new_state.code_table.sharding.is_equivalent_to(method.state_shardings().code_table, 2)
    # The prior network learns (its gradient is not cut by the stop-gradient on the table).
    moved = jax.tree.map(
        lambda a, b: float(jnp.abs(a - b).max()),
        state.params["params"]["prior_network"],
        new_state.params["params"]["prior_network"],
    )
    assert max(jax.tree.leaves(moved)) > 0


@pytest.mark.parametrize("data_name", ["omniglot", "cifar10"])
def test_omniglot_and_colour_images_train_and_sample(data_name):
    """Omniglot from the zips; CIFAR-10's stand-in photos with the PixelCNN++ likelihood.

    The PixelCNN sampling loop runs in the contract test (the smoke variant's decoder).
    """
    config = acn_configs.get_config("smoke")
    config.data.name = data_name
    config.model.decoder = "feedforward"
    config.model.num_mixtures = 2
    if data_name == "omniglot":
        if not SHARED_OMNIGLOT.is_dir():
            pytest.skip(reason=f"no Omniglot zips at {SHARED_OMNIGLOT}")
        config.data.dir = str(SHARED_OMNIGLOT)
    method = ACN(config, mode="train")
    state = jax.jit(method.init_state)(jax.random.key(0))
    batch = next(method.batches())
    _, metrics = jax.jit(method.train_step)(state, batch, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["kl"]) > -50
    x, mean = jax.jit(
        lambda p, z, key: acn_model.sample_images(p, model=method.model, z_BxZ=z, rng=key)
    )(state.params, jnp.zeros((2, 4)), jax.random.key(2))
    height, width, channels = method.model.image_shape
    assert x.shape == mean.shape == (2, height, width, channels)
    if data_name == "cifar10":  # samples lie on the 256-level grid of [-1, 1]
        levels = np.asarray(x) * 127.5 + 127.5
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    else:
        assert set(np.unique(np.asarray(x))) <= {0.0, 1.0}
