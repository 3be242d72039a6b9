"""The shared train loop on a tiny regression: non-finite stop, retrace guard, resume."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from deepgen.core import checkpoint, train_loop
from deepgen.core import mesh as mesh_lib
from deepgen.core.metrics import read_metrics
from deepgen.core.train_state import TrainState

OPT = optax.sgd(0.1)


def init_state(rng):
    params = {"w": jax.random.normal(rng, (4,))}
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, ema_params=params, opt_state=OPT.init(params)
    )


def make_train_step(nan_at_step: int | None = None):
    def train_step(state, batch, rng):
        def loss_fn(params):
            return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        if nan_at_step is not None:
            loss = jnp.where(state.step + 1 == nan_at_step, jnp.nan, loss)
        updates, opt_state = OPT.update(grads, state.opt_state)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(
            step=state.step + 1, params=params, ema_params=params, opt_state=opt_state
        )
        return new, {"loss": loss, "grad_norm": optax.tree_utils.tree_norm(grads)}

    return train_step


class Batches:
    """Resumable synthetic regression batches; `odd_shape_at` changes the batch shape once."""

    def __init__(self, odd_shape_at: int | None = None):
        self.position, self.odd_shape_at = 0, odd_shape_at

    def __next__(self):
        rng = np.random.default_rng(self.position)
        self.position += 1
        rows = 16 if self.position == self.odd_shape_at else 8
        x = rng.normal(size=(rows, 4)).astype(np.float32)
        return {"x": x, "y": x @ np.arange(4, dtype=np.float32)}

    def __iter__(self):
        return self

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def config(num_steps=6):
    c = common.base_config("test")
    c.train.num_steps, c.train.batch_size, c.train.log_every = num_steps, 8, 1
    c.ckpt.every, c.ckpt.keep, c.ckpt.async_save = 2, 5, False
    return c


def train(workdir, *, steps=6, nan_at_step=None, odd_shape_at=None):
    mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1})
    return train_loop.train(
        config(steps),
        str(workdir),
        init_state=init_state,
        train_step=make_train_step(nan_at_step),
        batches=Batches(odd_shape_at),
        mesh=mesh,
    )


def test_training_converges_and_logs_every_step(tmp_path):
    state = train(tmp_path, steps=40)
    np.testing.assert_allclose(jax.device_get(state.params["w"]), np.arange(4), atol=0.05)
    steps = [r["step"] for r in read_metrics(str(tmp_path)) if r["split"] == "train"]
    assert steps == list(range(1, 41))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(train_loop.NonFiniteLossError, match=r"loss is nan at step 5.*step 4.*kept"):
        train(tmp_path, nan_at_step=5)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=5, save_every=2)
    assert ckpt.all_steps() == [2, 4]
    abstract = jax.eval_shape(init_state, jax.random.key(0))
    mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1})
    restored, data_state = ckpt.restore(
        None, checkpoint.abstract_with_shardings(abstract, mesh_lib.state_shardings(abstract, mesh))
    )
    ckpt.close()
    assert int(restored.step) == 4
    assert data_state == {"iterator": {"position": 4}, "units": 4, "unit": "steps"}
    assert np.all(np.isfinite(jax.device_get(restored.params["w"])))


def test_a_changed_batch_shape_trips_the_retrace_guard(tmp_path):
    with pytest.raises(RuntimeError, match="traced 2 times"):
        train(tmp_path, odd_shape_at=3)


def test_resume_continues_from_the_checkpoint_and_its_data_position(tmp_path):
    reference = jax.device_get(train(tmp_path / "a", steps=6).params["w"])
    train(tmp_path / "b", steps=4)
    resumed = jax.device_get(train(tmp_path / "b", steps=6).params["w"])
    np.testing.assert_array_equal(resumed, reference)


def seeded_state(rng):
    """Two 'seeds' of a counter whose loss is NaN until it has made an update."""
    del rng
    return {"count": jnp.zeros((2,), jnp.float32), "updates": jnp.zeros((), jnp.int32)}


def seeded_step(state, batch, rng):
    """Makes its own data (batch is None); every third call makes no update and reports NaN."""
    assert batch is None
    updating = (state["updates"] % 3) != 2
    count = state["count"] + jnp.array([1.0, 2.0])
    loss_S = jnp.where(updating, count, jnp.nan)
    new = {"count": count, "updates": state["updates"] + 1}
    return new, {"loss": loss_S, "updates": updating.astype(jnp.float32) * jnp.ones((2,))}


def test_generated_batches_units_per_seed_metrics_hooks_and_idle_nan(tmp_path):
    c = config(num_steps=12)
    c.train.log_every, c.ckpt.every = 4, 8
    seen = []

    def hook(step, state, values):
        seen.append((step, values["loss"]))
        return state

    state = train_loop.train(
        c,
        str(tmp_path),
        init_state=seeded_state,
        train_step=seeded_step,
        batches=None,
        mesh=mesh_lib.make_mesh({"data": -1, "fsdp": 1}),
        unit=train_loop.Unit("env_steps", 2, 1),
        per_seed=("loss",),
        host_hooks=(hook,),
    )
    assert jax.device_get(state["count"]).tolist() == [6.0, 12.0]
    records = [r for r in read_metrics(str(tmp_path)) if r["split"] == "train"]
    # Steps count env steps (2 per call); log_every and ckpt.every too.
    assert [r["step"] for r in records] == [4, 8, 12] and records[-1]["env_steps"] == 12
    assert "loss_seed0" in records[0] and "loss_seed1" in records[0]
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=5, save_every=8)
    assert ckpt.all_steps() == [8, 12]
    ckpt.close()
    # The hook saw every call's fetched metrics, in order; NaN on idle calls did not stop training.
    assert [s for s, _ in seen] == [2, 4, 6, 8, 10, 12]
    assert np.isnan(seen[2][1]) and np.isfinite(seen[0][1])


def test_nan_where_an_update_was_made_stops_training(tmp_path):
    def step(state, batch, rng):
        new, metrics = seeded_step(state, batch, rng)
        return new, {**metrics, "loss": jnp.full((2,), jnp.nan)}

    c = config(num_steps=6)
    with pytest.raises(train_loop.NonFiniteLossError, match=r"loss is \[nan, nan\] at step 1"):
        train_loop.train(
            c,
            str(tmp_path),
            init_state=seeded_state,
            train_step=step,
            batches=None,
            mesh=mesh_lib.make_mesh({"data": -1, "fsdp": 1}),
        )


def test_a_ctrl_c_inside_the_wait_for_saves_arrives_after_it_without_a_traceback(tmp_path, caplog):
    """Orbax logs a traceback when an interrupt lands inside its wait; the checkpointer holds
    the interrupt until the wait and the close are done, then raises it as Python would."""
    import signal

    checkpointer = checkpoint.Checkpointer(
        str(tmp_path / "checkpoints"), max_to_keep=1, save_every=1, async_save=False
    )
    manager, calls = checkpointer._manager, []
    wait, close = manager.wait_until_finished, manager.close

    def wait_then_ctrl_c():
        signal.raise_signal(signal.SIGINT)  # the user presses Ctrl-C inside orbax's wait
        calls.append("wait")
        return wait()

    manager.wait_until_finished = wait_then_ctrl_c
    manager.close = lambda: (calls.append("close"), close())[1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        checkpointer.close()
    assert calls[:2] == ["wait", "close"]  # both finished before the interrupt was raised
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler given back
    assert "Traceback" not in caplog.text and "failed" not in caplog.text
