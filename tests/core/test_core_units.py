"""Mesh, sharding, optimiser, EMA and batch-iterator behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec
from ml_collections import ConfigDict

from deepgen.core import mesh as mesh_lib
from deepgen.core.errors import ConfigError
from deepgen.core.optim import learning_rate_schedule, make_optimizer
from deepgen.core.train_state import ema_decay, ema_update
from deepgen.data.pipeline import EpochIterator


def test_the_suite_runs_on_a_mesh_of_fake_devices():
    assert jax.device_count() == 2  # tests/conftest.py


@pytest.mark.parametrize(
    ("sizes", "on_eight", "on_two"),
    [
        ({"data": -1, "fsdp": 1}, (8, 1), (2, 1)),
        ({"data": 1, "fsdp": -1}, (1, 8), (1, 2)),
        ({"data": 2, "fsdp": -1}, (2, 4), (2, 1)),
    ],
)
def test_mesh_shape_resolves_minus_one(sizes, on_eight, on_two):
    assert mesh_lib.mesh_shape(sizes, 8) == on_eight
    assert dict(mesh_lib.make_mesh(sizes).shape) == dict(  # the suite's 2 devices
        zip(mesh_lib.MESH_AXES, on_two, strict=True)
    )


@pytest.mark.parametrize(
    "sizes", [{"data": 3, "fsdp": -1}, {"data": -1, "fsdp": -1}, {"data": 2, "fsdp": 2}]
)
def test_mesh_shape_rejects_what_does_not_fit(sizes):
    with pytest.raises(ConfigError, match="mesh"):
        mesh_lib.mesh_shape(sizes, 8)


def test_fsdp_splits_the_largest_divisible_axis_and_keeps_small_arrays_whole():
    assert mesh_lib.fsdp_spec((3, 64, 16), 8, min_size=0) == PartitionSpec(None, "fsdp", None)
    assert mesh_lib.fsdp_spec((3, 5), 8, min_size=0) == PartitionSpec()
    assert mesh_lib.fsdp_spec((64, 64), 8, min_size=10_000) == PartitionSpec()
    assert mesh_lib.fsdp_spec((64, 64), 1, min_size=0) == PartitionSpec()
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": -1})
    tree = {
        "w": jax.ShapeDtypeStruct((128, 256), jnp.float32),
        "b": jax.ShapeDtypeStruct((7,), jnp.float32),
    }
    shardings = mesh_lib.state_shardings(tree, mesh, fsdp_min_size=0)
    assert (
        shardings["w"].spec == PartitionSpec(None, "fsdp")
        and shardings["b"].spec == PartitionSpec()
    )


def _opt_config(**overrides) -> ConfigDict:
    config = ConfigDict(
        {
            "name": "adamw",
            "lr": 1e-3,
            "schedule": "constant",
            "warmup_steps": 0,
            "b1": 0.9,
            "b2": 0.98,
            "eps": 1e-8,
            "weight_decay": 0.01,
            "clip_norm": 5.0,
        }
    )
    config.update(overrides)
    return config


def test_learning_rate_schedules():
    assert float(learning_rate_schedule(_opt_config(), 100)(50)) == pytest.approx(1e-3)
    cosine = learning_rate_schedule(_opt_config(schedule="warmup_cosine", warmup_steps=10), 110)
    assert (
        float(cosine(0)) == 0.0
        and float(cosine(10)) == pytest.approx(1e-3)
        and float(cosine(110)) == pytest.approx(0.0)
    )
    warm = learning_rate_schedule(_opt_config(schedule="warmup_constant", warmup_steps=4), 100)
    assert float(warm(2)) == pytest.approx(5e-4) and float(warm(50)) == pytest.approx(1e-3)
    step = learning_rate_schedule(
        _opt_config(schedule="step_decay", decay_steps=(10, 20), decay_factor=0.5), 30
    )
    assert [float(step(i)) for i in (0, 9, 10, 19, 20, 29)] == pytest.approx(
        [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4]
    )
    for bad in [dict(decay_steps=()), dict(decay_steps=(20, 10)), dict(decay_factor=0.0)]:
        fields = {"schedule": "step_decay", "decay_steps": (10,), **bad}
        with pytest.raises(ConfigError, match=r"opt\.decay_"):
            learning_rate_schedule(_opt_config(**fields), 30)
    with pytest.raises(ConfigError, match=r"opt\.schedule"):
        learning_rate_schedule(_opt_config(schedule="bogus"), 10)


def test_gradient_clipping_bounds_the_update_norm():
    params = {"w": jnp.zeros(4)}
    grads = {"w": jnp.array([30.0, 40.0, 0.0, 0.0])}  # norm 50, clipped to 5
    sgd = make_optimizer(_opt_config(name="sgd", lr=1.0, clip_norm=5.0), 10)
    updates, _ = sgd.update(grads, sgd.init(params), params)
    np.testing.assert_allclose(optax.tree_utils.tree_norm(updates), 5.0, rtol=1e-6)
    with pytest.raises(ConfigError, match=r"opt\.name"):
        make_optimizer(_opt_config(name="adagrad"), 10)


def test_ema():
    assert float(ema_decay(jnp.int32(0), decay=0.9999, warmup=True)) == pytest.approx(0.1)
    assert float(ema_decay(jnp.int32(10**7), decay=0.9999, warmup=True)) == pytest.approx(0.9999)
    assert float(ema_decay(jnp.int32(0), decay=0.9999, warmup=False)) == pytest.approx(0.9999)
    ema = ema_update({"w": jnp.ones(3)}, {"w": jnp.zeros(3)}, jnp.float32(0.75))
    np.testing.assert_allclose(ema["w"], 0.75)


def _iterator(rows: slice, num=10, batch=4) -> EpochIterator:
    def make_batch(indices, rows_, rng):
        noise = rng.random(len(indices))
        return {"index": indices[rows_], "noise": noise[rows_]}

    return EpochIterator(
        num_examples=num, global_batch_size=batch, make_batch=make_batch, seed=3, process_rows=rows
    )


def test_iterator_visits_each_example_once_per_epoch_and_reshuffles():
    it = _iterator(slice(0, 4))
    epoch0 = np.concatenate([next(it)["index"] for _ in range(2)])
    epoch1 = np.concatenate([next(it)["index"] for _ in range(2)])
    assert len(set(epoch0)) == 8 and len(set(epoch1)) == 8 and not np.array_equal(epoch0, epoch1)
    assert it.get_state()["epoch"] == 2


def test_iterator_resumes_exactly_and_process_slices_tile_the_global_batch():
    full = _iterator(slice(0, 4))
    expected = [next(full) for _ in range(7)]
    resumed = _iterator(slice(0, 4))
    for _ in range(3):
        next(resumed)
    state = resumed.get_state()
    fresh = _iterator(slice(0, 4))
    fresh.set_state(state)
    for want in expected[3:]:
        got = next(fresh)
        np.testing.assert_array_equal(got["index"], want["index"])
        np.testing.assert_array_equal(got["noise"], want["noise"])
    halves = [_iterator(slice(0, 2)), _iterator(slice(2, 4))]
    for want in expected:
        parts = [next(h) for h in halves]
        np.testing.assert_array_equal(np.concatenate([p["index"] for p in parts]), want["index"])
        np.testing.assert_array_equal(np.concatenate([p["noise"] for p in parts]), want["noise"])
