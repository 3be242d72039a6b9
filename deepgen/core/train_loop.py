"""The shared training loop: jit once with shardings, checkpoint, resume, log, stop cleanly.

A method supplies `init_state(rng) -> TrainState`, a pure `train_step(state, batch, rng) ->
(state, metrics)` and a resumable batch iterator; this loop does the rest. Metrics of step s are
fetched while step s+1 runs, so the host never stalls the device; a checkpoint is written only
after the metrics of its step were seen to be finite.
"""

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import jax
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from deepgen.core import checkpoint, distributed
from deepgen.core import mesh as mesh_lib
from deepgen.core.errors import UserError
from deepgen.core.metrics import MetricWriter, Progress
from deepgen.core.train_state import TrainState

log = logging.getLogger(__name__)

TrainStep = Callable[[TrainState, Any, jax.Array], tuple[TrainState, Mapping[str, jax.Array]]]


class BatchIterator(Protocol, Iterator):
    """A resumable iterator of process-local numpy batches."""

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN or infinite; no checkpoint was written for it."""


class TrainingInterrupted(Exception):  # noqa: N818
    """SIGTERM or SIGINT arrived; a checkpoint was saved before raising."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signum} at step {step}")
        self.signum, self.step = signum, step


class _SignalFlag:
    """Records SIGTERM/SIGINT instead of dying, so the loop can save first."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_SignalFlag":
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _any_process(flag: bool) -> bool:
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def build_state(
    config: ConfigDict, workdir: str, init_state: Callable[[jax.Array], TrainState], mesh
) -> tuple[TrainState, Any, checkpoint.Checkpointer, dict]:
    """Restore the latest checkpoint in workdir, or initialise; returns state, shardings, ckpt, data."""
    init_rng = jax.random.fold_in(jax.random.key(config.seed), 0)
    abstract = jax.eval_shape(init_state, init_rng)
    shardings = mesh_lib.state_shardings(
        abstract, mesh, fsdp_min_size=config.get("fsdp_min_size", 2**14)
    )
    checkpointer = checkpoint.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.ckpt.keep,
        save_every=config.ckpt.every,
        async_save=config.ckpt.get("async_save", True),
    )
    latest = checkpointer.latest_step()
    if latest is not None:
        target = checkpoint.abstract_with_shardings(abstract, shardings)
        try:
            state, data_state = checkpointer.restore(None, target)
        except (ValueError, KeyError, TypeError) as error:
            checkpointer.close()
            reason = " ".join(str(error).split())[:200]
            raise UserError(
                f"the checkpoint at step {latest} in {checkpointer.directory} does not fit this "
                f"config's model or optimiser ({reason}); use a new --workdir or the config it "
                "was trained with (saved in config.json)"
            ) from error
        log.info("restored %s at step %d", checkpointer.directory, int(state.step))
        return state, shardings, checkpointer, data_state
    state = jax.jit(init_state, out_shardings=shardings)(init_rng)
    return state, shardings, checkpointer, {}


def train(
    config: ConfigDict,
    workdir: str,
    *,
    init_state: Callable[[jax.Array], TrainState],
    train_step: TrainStep,
    batches: BatchIterator,
    mesh,
    eval_fn: Callable[[TrainState], Mapping[str, float]] | None = None,
) -> TrainState:
    """Train to config.train.num_steps, resuming from workdir/checkpoints when present."""
    state, shardings, checkpointer, data_state = build_state(config, workdir, init_state, mesh)
    if data_state:
        batches.set_state(data_state)
    is_primary = jax.process_index() == 0
    writer = MetricWriter(workdir, enabled=is_primary)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    replicated = mesh_lib.replicated(mesh)
    step_rng = jax.random.fold_in(jax.random.key(config.seed), 1)

    traces = [0]

    def traced_step(state, batch, rng):
        traces[0] += 1
        return train_step(state, batch, rng)

    jitted_step = jax.jit(
        traced_step,
        in_shardings=(shardings, batch_sharding, replicated),
        out_shardings=(shardings, replicated),
        donate_argnums=(0,),
    )

    num_steps = int(config.train.num_steps)
    log_every = max(int(config.train.log_every), 1)
    eval_every = int(config.train.get("eval_every", 0))
    sync_every = max(int(config.ckpt.get("signal_sync_every", 10)), 1)
    step = int(jax.device_get(state.step))
    start_step = step
    progress = Progress(
        total_steps=num_steps,
        start_step=step,
        examples_per_step=int(config.train.batch_size),
        use_bar=None if is_primary else False,
        stream=None if is_primary else open(os.devnull, "w"),  # noqa: SIM115
    )
    sums: dict[str, float] = {}
    count = 0
    pending: tuple[int, Any] | None = None
    last_good_ckpt = checkpointer.latest_step()

    def consume(pending_step: int, metrics: Mapping[str, Any]) -> None:
        """Fetch a step's metrics, stop on non-finite values, log every log_every steps."""
        nonlocal count, sums
        values = {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}
        bad = [k for k in ("loss", "grad_norm") if k in values and not np.isfinite(values[k])]
        if bad:
            where = (
                f"the last good checkpoint (step {last_good_ckpt}) in {checkpointer.directory} "
                "is kept"
                if last_good_ckpt is not None
                else "no checkpoint was written"
            )
            raise NonFiniteLossError(
                f"{bad[0]} is {values[bad[0]]} at step {pending_step}: training stopped and {where}; "
                "lower opt.lr or opt.clip_norm, or check the data"
            )
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        if pending_step % log_every == 0 or pending_step == num_steps:
            means = {k: v / count for k, v in sums.items()}
            writer.write(pending_step, means, split="train")
            progress.update(pending_step, means)
            sums, count = {}, 0

    def save(at_step: int) -> None:
        nonlocal last_good_ckpt
        checkpointer.save(at_step, state, batches.get_state())
        last_good_ckpt = at_step

    try:
        with _SignalFlag() as stop:
            while step < num_steps:
                if step % sync_every == 0 and _any_process(stop.signum is not None):
                    if pending is not None:
                        consume(*pending)
                        pending = None
                    save(step)
                    checkpointer.wait()
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM, step)
                batch = distributed.global_batch(next(batches), batch_sharding)
                started = time.perf_counter()
                state, metrics = jitted_step(state, batch, step_rng)
                step += 1
                if step == start_step + 1:
                    jax.block_until_ready(metrics)
                    compile_s = time.perf_counter() - started
                    log.info("first train step (compile + run) took %.1f s", compile_s)
                    writer.write(step, {"compile_seconds": compile_s}, split="timing")
                    progress.mark(step)
                if traces[0] > 1:
                    raise RuntimeError(
                        f"train_step was traced {traces[0]} times: a batch shape, dtype or "
                        "sharding changed between steps"
                    )
                if pending is not None:
                    consume(*pending)
                pending = (step, metrics)
                if checkpointer.should_save(step) or step == num_steps:
                    consume(*pending)
                    pending = None
                    save(step)
                if eval_fn is not None and eval_every > 0 and step % eval_every == 0:
                    writer.write(step, eval_fn(state), split="validation")
            if pending is not None:
                consume(*pending)
            if step not in checkpointer.all_steps() and step > start_step:
                save(step)
    finally:
        checkpointer.close()
        progress.close()
        writer.close()
    return state
