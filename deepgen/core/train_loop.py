"""The shared training loop: jit once with shardings, checkpoint, resume, log, stop cleanly.

Every method trains here. A method supplies `init_state(rng)`, a pure `train_step(state, batch,
rng) -> (state, metrics)` and either a resumable batch iterator or `batches=None` when the step
makes its own data (RL rollouts, online sequences, synthetic tasks). One call of the step
advances training by `unit.per_step` units of the method's declared unit of progress (optimiser
steps, time steps, environment steps); `config.train.num_steps`, `train.log_every`,
`ckpt.every`, checkpoint numbers, the `step` of metrics.jsonl and the progress line all count
that unit. Metrics of call k are fetched while call k+1 runs, so the host never stalls the
device (unless host hooks need them at once); a checkpoint is written only after the metrics of
its step were seen to be finite. Array-valued metrics (seeds vmapped) are logged as their mean
over finite values, and per seed for the names in `per_seed`.
"""

import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from deepgen.core import checkpoint, distributed
from deepgen.core import mesh as mesh_lib
from deepgen.core.errors import UserError
from deepgen.core.metrics import MetricWriter, Progress

log = logging.getLogger(__name__)

TrainStep = Callable[[Any, Any, jax.Array], tuple[Any, Mapping[str, jax.Array]]]
HostHook = Callable[[int, Any, Mapping[str, float]], Any]


class BatchIterator(Protocol, Iterator):
    """A resumable iterator of process-local numpy batches."""

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


class RepeatedBatch:
    """The same batch at every step: device-resident data the step samples from by itself."""

    def __init__(self, batch: Any):
        self.batch = batch

    def __iter__(self) -> "RepeatedBatch":
        return self

    def __next__(self) -> Any:
        return self.batch

    def get_state(self) -> dict:
        return {}

    def set_state(self, state: dict) -> None:
        del state


@dataclasses.dataclass(frozen=True)
class Unit:
    """The unit `train.num_steps` counts, and how far one call of the train step advances it."""

    name: str = "steps"
    per_step: int = 1
    examples_per_unit: int = 1


class NonFiniteLossError(RuntimeError):
    """A checked metric became NaN or infinite; no checkpoint was written for it."""


class TrainingInterrupted(Exception):  # noqa: N818
    """SIGTERM or SIGINT arrived; a checkpoint was saved before raising."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signum} at step {step}")
        self.signum, self.step = signum, step


class StopSignal:
    """Records SIGTERM/SIGINT instead of dying, so a loop can save first (a context manager)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def requested(self) -> bool:
        """True once any process has received a stop signal (agreed across processes)."""
        return any_process(self.signum is not None)

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def any_process(flag: bool) -> bool:
    """True if flag is true in any process."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def make_checkpointer(config: ConfigDict, workdir: str) -> checkpoint.Checkpointer:
    """The Orbax checkpointer of workdir/checkpoints, saving every config.ckpt.every units."""
    return checkpoint.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=int(config.ckpt.keep),
        save_every=int(config.ckpt.every),
        async_save=bool(config.ckpt.get("async_save", True)),
    )


def checkpoint_data(iterator_state: dict, step: int, unit: "Unit") -> dict:
    """The data item saved beside the state: the iterator's position and the units trained."""
    return {"iterator": iterator_state, "units": int(step), "unit": unit.name}


def loop_state(data_state: dict) -> dict:
    """The batch iterator's part of a checkpoint's data item (older checkpoints hold only it)."""
    return data_state.get("iterator", data_state) if "units" in data_state else data_state


def restore_state(
    checkpointer: checkpoint.Checkpointer, abstract_with_shardings: Any, step: int | None = None
) -> tuple[Any, int, dict]:
    """(state, step, iterator state) of a checkpoint, or one line saying why it does not fit."""
    step = checkpointer.latest_step() if step is None else step
    if step not in checkpointer.all_steps():
        raise UserError(
            f"no checkpoint at step {step} in {checkpointer.directory}; saved steps: "
            f"{checkpointer.all_steps()}"
        )
    try:
        state, data_state = checkpointer.restore(step, abstract_with_shardings)
    except (ValueError, KeyError, TypeError) as error:
        reason = " ".join(str(error).split())[:200]
        raise UserError(
            f"the checkpoint at step {step} in {checkpointer.directory} does not fit this "
            f"config's model or optimiser ({reason}); use a new --workdir or the config it "
            "was trained with (saved in config.json)"
        ) from error
    return state, step, loop_state(data_state)


def build_state(
    config: ConfigDict,
    workdir: str,
    init_state: Callable[[jax.Array], Any],
    mesh,
    *,
    shardings: Any = None,
    step: int | None = None,
    must_exist: bool = False,
) -> tuple[Any, int, Any, checkpoint.Checkpointer, dict]:
    """Restore a checkpoint of workdir (the latest unless `step`), or initialise.

    Returns (state, step, shardings, checkpointer, iterator state). `shardings` defaults to
    data-parallel replication (or FSDP) of every leaf; a method that shards another way (seeds
    along the data axis) passes its own. The checkpointer is open: close it when done.
    """
    init_rng = jax.random.fold_in(jax.random.key(config.seed), 0)
    abstract = jax.eval_shape(init_state, init_rng)
    if shardings is None:
        shardings = mesh_lib.state_shardings(
            abstract, mesh, fsdp_min_size=config.get("fsdp_min_size", 2**14)
        )
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if must_exist and not os.path.isdir(ckpt_dir):
        raise UserError(f"no checkpoints in {ckpt_dir}: run --mode=train with this workdir first")
    checkpointer = make_checkpointer(config, workdir)
    try:
        if checkpointer.latest_step() is None:
            if must_exist:
                raise UserError(
                    f"no checkpoints in {ckpt_dir}: run --mode=train with this workdir first"
                )
            state = jax.jit(init_state, out_shardings=shardings)(init_rng)
            return state, 0, shardings, checkpointer, {}
        target = checkpoint.abstract_with_shardings(abstract, shardings)
        state, step, data_state = restore_state(checkpointer, target, step)
    except BaseException:
        checkpointer.close()
        raise
    log.info("restored %s at step %d", checkpointer.directory, step)
    return state, step, shardings, checkpointer, data_state


def _finite_or_idle(name: str, values: Mapping[str, np.ndarray]) -> bool:
    """NaN is allowed where the step made no update (an `updates` metric of 0); inf never is."""
    value = np.asarray(values[name], np.float64)
    if np.any(np.isinf(value)):
        return False
    nan = np.isnan(value)
    if "updates" in values:
        nan &= np.broadcast_to(np.asarray(values["updates"]) > 0, nan.shape)
    return not np.any(nan)


def scalar_metrics(values: Mapping[str, np.ndarray], per_seed: Sequence[str]) -> dict[str, float]:
    """Mean over finite values of each metric (seeds vmapped), and each seed's value for per_seed."""
    record = {}
    for name, value in values.items():
        value = np.asarray(value, np.float64)
        finite = value[np.isfinite(value)]
        record[name] = float(finite.mean()) if finite.size else float("nan")
        if name in per_seed and value.ndim == 1:
            for seed, v in enumerate(value):
                record[f"{name}_seed{seed}"] = float(v)
    return record


def mean_over_window(sums: Mapping[str, float], last: Mapping[str, float], count: int) -> dict:
    """The default logged metrics: the mean of each metric over the logged window."""
    del last
    return {k: v / count for k, v in sums.items()}


def train(
    config: ConfigDict,
    workdir: str,
    *,
    init_state: Callable[[jax.Array], Any],
    train_step: TrainStep,
    batches: BatchIterator | None,
    mesh,
    unit: Unit = Unit(),
    shardings: Any = None,
    eval_fn: Callable[[Any], Mapping[str, float]] | None = None,
    host_hooks: Sequence[HostHook] = (),
    summarize: Callable[[dict, dict, int], dict] = mean_over_window,
    per_seed: Sequence[str] = (),
    check_finite: Sequence[str] = ("loss", "grad_norm"),
    built: tuple | None = None,
) -> Any:
    """Train to config.train.num_steps units, resuming from workdir/checkpoints when present.

    `built` is the result of `build_state` when the caller restored already (the runner does,
    so that nothing is written before the checkpoint is known to fit).
    """
    if built is None:
        built = build_state(config, workdir, init_state, mesh, shardings=shardings)
    state, step, shardings, checkpointer, data_state = built
    if data_state and batches is not None:
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

    if batches is None:
        jitted = jax.jit(
            lambda state, rng: traced_step(state, None, rng),
            in_shardings=(shardings, replicated),
            out_shardings=(shardings, replicated),
            donate_argnums=(0,),
        )

        def call_step(state):
            return jitted(state, step_rng)

    else:
        jitted = jax.jit(
            traced_step,
            in_shardings=(shardings, batch_sharding, replicated),
            out_shardings=(shardings, replicated),
            donate_argnums=(0,),
        )

        def call_step(state):
            batch = next(batches)
            if not all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(batch)):
                batch = distributed.global_batch(batch, batch_sharding)
            return jitted(state, batch, step_rng)

    per = int(unit.per_step)
    num_steps = int(config.train.num_steps)
    log_every = max(int(config.train.log_every), per)
    eval_every = int(config.train.get("eval_every", 0))
    sync_every = max(int(config.ckpt.get("signal_sync_every", 10)), 1) * per
    start_step = step
    progress = Progress(
        total_steps=num_steps,
        start_step=step,
        examples_per_step=int(unit.examples_per_unit),
        unit=unit.name,
        use_bar=None if is_primary else False,
        stream=None if is_primary else open(os.devnull, "w"),  # noqa: SIM115
    )
    sums: dict[str, float] = {}
    count = 0
    pending: tuple[int, Any] | None = None
    last_good_ckpt = checkpointer.latest_step()

    def consume(pending_step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Fetch a step's metrics, stop on non-finite values, log every log_every units."""
        nonlocal count, sums
        raw = {k: np.asarray(v) for k, v in jax.device_get(dict(metrics)).items()}
        bad = [k for k in check_finite if k in raw and not _finite_or_idle(k, raw)]
        if bad:
            where = (
                f"the last good checkpoint (step {last_good_ckpt}) in {checkpointer.directory} "
                "is kept"
                if last_good_ckpt is not None
                else "no checkpoint was written"
            )
            shown = raw[bad[0]] if raw[bad[0]].ndim == 0 else raw[bad[0]].tolist()
            raise NonFiniteLossError(
                f"{bad[0]} is {shown} at step {pending_step}: training stopped and {where}; "
                "lower opt.lr or opt.clip_norm, or check the data"
            )
        values = scalar_metrics(raw, per_seed)
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        if pending_step % log_every == 0 or pending_step == num_steps:
            logged = summarize(sums, values, count)
            shown = {  # per-task and per-seed values go to metrics.jsonl only
                k: v
                for k, v in logged.items()
                if "_seed" not in k and "/" not in k and k != unit.name
            }
            if unit.name != "steps":
                logged[unit.name] = float(pending_step)
            writer.write(pending_step, logged, split="train")
            progress.update(pending_step, shown)
            sums, count = {}, 0
        return values

    def save(at_step: int) -> None:
        nonlocal last_good_ckpt
        iterator = batches.get_state() if batches is not None else {}
        checkpointer.save(
            at_step, state, {"iterator": iterator, "units": at_step, "unit": unit.name}
        )
        last_good_ckpt = at_step

    try:
        with StopSignal() as stop:
            while step < num_steps:
                if step % sync_every == 0 and stop.requested():
                    if pending is not None:
                        consume(*pending)
                        pending = None
                    save(step)
                    checkpointer.wait()
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM, step)
                started = time.perf_counter()
                state, metrics = call_step(state)
                step += per
                if step == start_step + per:
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
                if host_hooks:
                    values = consume(*pending)
                    pending = None
                    for hook in host_hooks:
                        state = hook(step, state, values)
                if checkpointer.should_save(step) or step == num_steps:
                    if pending is not None:
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
