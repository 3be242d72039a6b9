"""The Kanerva method's pieces on the smoke configs (binary and colour): a train step, a quick eval,
samples, validation."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import kanerva as configs
from deepgen.core import distributed
from deepgen.core import mesh as mesh_lib
from deepgen.core.errors import ConfigError
from deepgen.kanerva import episodes
from experiments.kanerva.method import KanervaMethod


class NoProgress:
    def __init__(self, what, total, unit="batches"):
        del what, total, unit

    def advance(self, count=1):
        del count


@functools.cache
def built(variant: str):
    """(method, fresh state, its jitted train step), jitted as the core loop jits them.

    The same shardings (and names) as deepgen.core.train_loop's make the same programs, so the
    persistent compilation cache (tests/conftest.py) shares them with the contract test's run.
    """
    config = configs.get_config(variant)
    KanervaMethod.validate(config)
    method = KanervaMethod(config, mode="train")
    shardings = method.state_shardings()
    state = jax.jit(method.init_state, out_shardings=shardings)(jax.random.key(0))
    replicated = mesh_lib.replicated(method.mesh)

    def traced_step(state, batch, rng):
        return method.train_step(state, batch, rng)

    step = jax.jit(
        traced_step,
        in_shardings=(shardings, mesh_lib.batch_sharding(method.mesh), replicated),
        out_shardings=(shardings, replicated),
        donate_argnums=(0,),
    )
    return method, state, step


@pytest.mark.parametrize("variant", ["smoke", "vae_smoke", "cifar10_smoke"])
def test_a_train_step_on_a_smoke_batch_gives_finite_metrics(variant):
    method, state, step = built(variant)
    batch = next(method.batches())
    config = method.config
    T = config.data.episode_length
    image_shape = (32, 32, 3) if variant == "cifar10_smoke" else (28, 28, 1)
    assert method.model.image_shape == image_shape
    assert batch["x"].shape == (config.train.batch_size, T, *image_shape)
    if variant == "cifar10_smoke":  # bin centres on [-1, 1], not binarised
        assert np.all(np.abs(batch["x"]) <= 1.0) and len(np.unique(batch["x"])) > 2
    batch = distributed.global_batch(batch, mesh_lib.batch_sharding(method.mesh))
    new_state, metrics = step(jax.tree.map(jnp.copy, state), batch, jax.random.key(1))
    metrics = jax.device_get(metrics)
    assert int(new_state.step) == 1
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    terms = ("reconstruction", "kl_y", "kl_z", "kl_memory")
    assert metrics["nll_bound_per_image"] == pytest.approx(sum(metrics[t] for t in terms), rel=1e-5)
    assert metrics["loss"] == pytest.approx(T * metrics["nll_bound_per_image"], rel=1e-5)
    if variant == "vae_smoke":
        assert metrics["kl_y"] == metrics["kl_memory"] == 0.0
    assert method.unit().examples_per_unit == config.train.batch_size * T


@pytest.mark.parametrize("variant", ["smoke", "vae_smoke", "cifar10_smoke"])
def test_a_quick_eval_reports_the_bound_its_terms_and_the_reading_errors(variant):
    method, state, _ = built(variant)
    report = method.evaluate(state, step=0, quick=True, progress=NoProgress)
    for key in ("split", "data_source", "num_examples", "unit", "baseline"):
        assert key in report
    terms = ("reconstruction", "kl_y", "kl_z", "kl_memory")
    for term in ("nll_bound", *terms):
        assert math.isfinite(report[f"{term}_nats_per_image"])
        assert report[f"{term}_nats_per_image_stderr"] is not None
    assert report["nll_bound_nats_per_image"] == pytest.approx(
        sum(report[f"{t}_nats_per_image"] for t in terms), rel=1e-5
    )
    assert report["unit"] == "nats/image" and report["repeats"] == 1
    assert report["num_examples"] == report["num_episodes"] * report["episode_length"]
    k = method.config.eval.read_iterations
    errors = report["iterative_reading_error"]
    assert set(errors) == {"noise", "occlusion"}
    assert all(len(v) == k + 1 and all(0.0 <= e <= 1.0 for e in v) for v in errors.values())
    # The blank image's error: the mean clean pixel (binary), half the mean |x| (colour, [-1, 1]).
    _, heldout = method._heldout(method.config.eval.split)
    x = method._episodes_for(heldout, 0)[: report["num_episodes"]]
    scale = 0.5 if variant == "cifar10_smoke" else 1.0
    assert report["blank_image_error"] == pytest.approx(scale * np.mean(np.abs(x)), rel=1e-6)
    pixel_errors = report["iterative_reading_pixel_error"]
    if variant == "cifar10_smoke":
        assert pixel_errors == {}
    else:
        assert set(pixel_errors) == {"noise", "occlusion"}
        assert all(
            len(v) == k + 1 and all(0.0 <= e <= 1.0 for e in v) for v in pixel_errors.values()
        )
    assert report["nll_bound_nats_per_episode"] == pytest.approx(
        report["episode_length"] * report["nll_bound_nats_per_image"]
    )
    by_episode = report["nll_bound_nats_per_image_by_episode"]
    assert len(by_episode) == report["num_episodes"]
    assert np.mean(by_episode) == pytest.approx(report["nll_bound_nats_per_image"])
    dims = math.prod(method.model.image_shape)
    assert report["nll_bound_bits_per_dim"] == pytest.approx(
        report["nll_bound_nats_per_image"] / (dims * math.log(2.0))
    )
    if variant == "cifar10_smoke":
        # 15% of pixels replaced by uniform colours: |u - x| / 2 averages at most 1/2 per hit.
        assert 0.0 < report["corrupted_query_error"]["noise"] < 0.15 * 0.5 + 0.02
        assert "histogram" in report["baseline"]["name"]
        assert "bits/dim" in method.format_eval(report)
    else:
        # Flipping 15% of the pixels gives queries about 15% wrong.
        assert report["corrupted_query_error"]["noise"] == pytest.approx(0.15, abs=0.02)
    assert report["baseline"]["nll_nats_per_image"] > 0
    assert "bound" in method.format_eval(report)
    if variant == "vae_smoke":
        assert "address_cosine_between_images" not in report
    else:
        assert -1.0 <= report["address_cosine_between_images"] <= 1.0
        retrieval = report["address_retrieval"]
        assert 0.0 <= retrieval["noisy_query_nearest_to_its_image"] <= 1.0
        assert retrieval["chance"] == pytest.approx(1.0 / report["episode_length"])
        # Episodes of one repeated image (the eval's shapes, so its compiled program): every
        # pairwise cosine is 1, and each query's nearest written address is the first of T tied
        # ones, so only query 0 finds its own: exactly 1 / T.
        repeated = np.repeat(x[:, :1], x.shape[1], axis=1)
        cosine, found = method._over_episodes(
            method._address_agreement, repeated, state.params, jax.random.key(0)
        )
        np.testing.assert_allclose(cosine, 1.0, rtol=1e-5)
        np.testing.assert_allclose(found, 1.0 / x.shape[1])


def test_colour_samples_are_written_as_rgb_pngs(tmp_path):
    from PIL import Image

    method, state, _ = built("cifar10_smoke")
    written = method.sample(state, str(tmp_path), step=0, progress=NoProgress)
    assert len(written) == 3
    for label, path in written.items():
        assert ": " not in label
        assert Image.open(path).mode == "RGB"


def test_an_unknown_dataset_is_refused_with_one_line_naming_the_choices():
    config = configs.get_config("smoke")
    config.data.name = "svhn"
    with pytest.raises(ConfigError, match="cifar10") as error:
        KanervaMethod.validate(config)
    assert "\n" not in str(error.value)


def test_episodes_of_few_classes_reach_the_batches_and_the_heldout_set():
    """data.classes_per_episode on the embedded digits: every episode holds T / n of n digits."""
    config = configs.get_config("smoke")  # episodes of 4
    config.data.classes_per_episode = 2
    KanervaMethod.validate(config)
    method = KanervaMethod(config, mode="train")
    assert "2 images of each of 2 classes" in method.describe()[0]
    x = next(method.batches())["x"]
    assert x.shape[:2] == (config.train.batch_size, 4)
    data, heldout = method._heldout("test")
    order = episodes.heldout_order(
        data.num_examples,
        episode_length=4,
        seed=int(config.seed),
        labels_N=data.labels_N,
        classes_per_episode=2,
    )
    np.testing.assert_array_equal(heldout, method._model_images(data)[order])
    for episode in order:
        assert sorted(np.unique(data.labels_N[episode], return_counts=True)[1]) == [2, 2]


@pytest.mark.parametrize("classes, match", [(3, "a divisor of data.episode_length"), (-1, ">= 0")])
def test_classes_per_episode_that_does_not_divide_the_episode_is_refused(classes, match):
    config = configs.get_config("smoke")
    config.data.classes_per_episode = classes
    with pytest.raises(ConfigError, match=match) as error:
        KanervaMethod.validate(config)
    assert "\n" not in str(error.value)
