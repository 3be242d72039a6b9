"""Online training of sparse recurrent networks with RTRL, SnAp-n, UORO or (truncated) BPTT.

Menick et al. 2021 (arXiv 2006.07232), Sec. 2.5 of the spec note: B independent streams run one
recurrent cell each; at every time step each stream's gradient estimator (deepgen.snap) turns
the step's loss into an estimate of the gradient of the loss since the last update, and the
parameters are updated every `train.update_every` steps ("online") while the influence traces
carry on across updates; state and traces reset together when a stream's sequence ends. With
`train.online=False` the parameters are updated once per sequence, at its end, with the
gradient the estimator accumulated over the whole sequence.

Everything one time step touches lives in one pytree (`Carry`): cell and readout parameters, the
optimiser state, the B cell states and traces, the data episode (copy strings or crop starts),
the copy-task curriculum and the loss sums of the running episode. A chunk of
`train.chunk_steps` steps is one jitted `lax.scan`; between chunks the host logs, shows progress
and checkpoints the carry. Randomness comes from `fold_in(key(seed), step)`, so a run resumed
from any checkpoint replays exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from ml_collections import ConfigDict

from deepgen.core import checkpoint, metrics, plots, train_loop
from deepgen.core.errors import ConfigError, UserError
from deepgen.core.optim import OPTIMIZERS, SCHEDULES, make_optimizer
from deepgen.data import char_text, copy_task
from deepgen.snap import cells, estimators

log = logging.getLogger(__name__)

TASKS = ("copy", "charlm")
CORPORA = {"copy": ("copy",), "charlm": char_text.CORPORA}
LN2 = math.log(2.0)


# ----------------------------------------------------------------------------------------------
# Config validation
# ----------------------------------------------------------------------------------------------


def rtrl_influence_bytes(config: ConfigDict, input_size: int) -> int:
    """Bytes of the dense RTRL influence matrices of all streams: B * state_size * params * 4."""
    cell_config = cell_config_for(config, input_size)
    params, _ = cells.init_cell(cell_config, jax.random.key(0))
    num_params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
    return int(config.train.batch_size) * cells.state_size(cell_config) * num_params * 4


def validate(config: ConfigDict) -> None:
    """Check values the config types cannot: one ConfigError naming the field and what is allowed."""

    def require(ok: bool, field: str, allowed: str) -> None:
        if not ok:
            value = config
            for part in field.split("."):
                value = value[part]
            raise ConfigError(f"config.{field}={value!r} is not allowed: {allowed}")

    require(config.task in TASKS, "task", f"one of {TASKS}")
    require(
        config.data.name in CORPORA[config.task],
        "data.name",
        f"one of {CORPORA[config.task]} for task {config.task!r}",
    )
    require(config.model.cell in cells.CELL_KINDS, "model.cell", f"one of {cells.CELL_KINDS}")
    require(config.model.hidden_size > 0, "model.hidden_size", "a positive integer")
    require(0 < config.model.density <= 1, "model.density", "in (0, 1]")
    require(isinstance(config.model.mask_per_gate, bool), "model.mask_per_gate", "True or False")
    require(
        config.estimator.name in estimators.ESTIMATORS,
        "estimator.name",
        f"one of {estimators.ESTIMATORS}",
    )
    require(
        config.estimator.truncation >= (1 if config.estimator.name == "tbptt" else 0),
        "estimator.truncation",
        "the window in steps, >= 1 for tbptt (bptt uses the whole sequence)",
    )
    require(config.estimator.max_influence_gib > 0, "estimator.max_influence_gib", "positive")
    require(
        config.estimator.get("snap_block", 1) == 1
        or (config.estimator.name == "snap1" and config.estimator.snap_block > 1),
        "estimator.snap_block",
        "1, or the steps SnAp-1 folds at a time (> 1) with estimator.name=snap1",
    )
    require(config.train.batch_size > 0, "train.batch_size", "a positive integer (streams)")
    require(config.train.chunk_steps > 0, "train.chunk_steps", "a positive integer")
    require(
        config.train.num_steps > 0 and config.train.num_steps % config.train.chunk_steps == 0,
        "train.num_steps",
        f"a positive multiple of train.chunk_steps={config.train.chunk_steps}",
    )
    require(config.train.update_every > 0, "train.update_every", "a positive integer")
    require(isinstance(config.train.online, bool), "train.online", "True or False")
    require(config.train.log_every > 0, "train.log_every", "a positive number of chunks")
    require(config.ckpt.every > 0, "ckpt.every", "a positive number of chunks")
    require(config.ckpt.keep > 0, "ckpt.keep", "a positive integer")
    require(config.opt.name in OPTIMIZERS, "opt.name", f"one of {OPTIMIZERS}")
    require(config.opt.schedule in SCHEDULES, "opt.schedule", f"one of {SCHEDULES}")
    require(config.opt.lr > 0, "opt.lr", "a positive number")
    require(config.data.num_symbols >= 2, "data.num_symbols", "an integer >= 2")
    require(config.data.max_length >= 1, "data.max_length", "a positive integer")
    require(config.data.length_spread >= 0, "data.length_spread", "an integer >= 0")
    require(0 <= config.data.curriculum_decay < 1, "data.curriculum_decay", "in [0, 1)")
    require(config.data.curriculum_threshold > 0, "data.curriculum_threshold", "positive")
    require(config.data.seq_len > 0, "data.seq_len", "a positive integer")
    require(config.eval.split in char_text.SPLITS, "eval.split", f"one of {char_text.SPLITS}")
    require(config.eval.num_crops > 0, "eval.num_crops", "a positive integer")
    require(config.eval.batch_size > 0, "eval.batch_size", "a positive integer")
    require(config.eval.num_sequences > 0, "eval.num_sequences", "a positive integer")
    require(config.sample.num_chars > 0, "sample.num_chars", "a positive integer")
    require(config.sample.num_samples > 0, "sample.num_samples", "a positive integer")
    require(config.sample.temperature > 0, "sample.temperature", "a positive number")
    if config.estimator.name == "rtrl":
        input_sizes = {"copy": copy_task.input_size(config.data.num_symbols), "text8": 27}
        input_size = input_sizes.get(config.data.name, 256)  # wikitext103: at most 256 bytes
        gib = rtrl_influence_bytes(config, input_size) / 2**30
        if gib > config.estimator.max_influence_gib:
            raise ConfigError(
                f"config.estimator.name='rtrl' with model.hidden_size={config.model.hidden_size} "
                f"needs about {gib:.1f} GiB of influence matrices for "
                f"{config.train.batch_size} streams, above "
                f"estimator.max_influence_gib={config.estimator.max_influence_gib}: exact RTRL "
                "is quartic in the state size; use snap1/snap2/uoro or a smaller hidden_size"
            )


# ----------------------------------------------------------------------------------------------
# Readout, tasks and the carry
# ----------------------------------------------------------------------------------------------


def window_length(config: ConfigDict) -> int:
    """The BPTT buffer: the longest sequence for bptt, estimator.truncation for tbptt, else 0."""
    if config.estimator.name == "bptt":
        if config.task == "copy":
            return 2 * int(config.data.max_length) + 1
        return int(config.data.seq_len)
    if config.estimator.name == "tbptt":
        return int(config.estimator.truncation)
    return 0


def cell_config_for(config: ConfigDict, input_size: int) -> cells.CellConfig:
    """The CellConfig of a run."""
    return cells.CellConfig(
        kind=config.model.cell,
        input_size=int(input_size),
        hidden_size=int(config.model.hidden_size),
        density=float(config.model.density),
        mask_per_gate=bool(config.model.mask_per_gate),
    )


def init_readout(rng: jax.Array, hidden_size: int, num_classes: int) -> dict[str, jax.Array]:
    """A linear softmax readout h -> logits."""
    w_KxC = jax.random.normal(rng, (hidden_size, num_classes)) / math.sqrt(hidden_size)
    return {"w": w_KxC, "b": jnp.zeros((num_classes,))}


def readout_logits(readout: dict[str, jax.Array], h_K: jax.Array) -> jax.Array:
    """Logits of the linear readout."""
    return h_K @ readout["w"] + readout["b"]


def readout_loss(readout: dict[str, jax.Array], h_K: jax.Array, y: tuple) -> jax.Array:
    """weight * softmax cross-entropy (nats) of the target; y = (label int, weight float)."""
    label, weight = y
    logits_C = readout_logits(readout, h_K)
    return weight * (jax.nn.logsumexp(logits_C) - logits_C[label])


class Task(NamedTuple):
    """Pure functions that generate a batch of streams' data one step at a time inside jit."""

    input_size: int
    num_classes: int
    new_episode: Callable  # (rng, curriculum) -> episode
    token: Callable  # (episode, data_tokens) -> (x_BxI, y_B, weight_B)
    advance: Callable  # episode -> (episode, ended)
    initial_curriculum: Callable  # () -> Curriculum
    update_curriculum: Callable  # (curriculum, episode_bits) -> curriculum


def make_task(config: ConfigDict, *, num_tokens: int = 0, vocab_size: int = 0) -> Task:
    """The copy task, or the char LM over a token array of num_tokens and vocab_size ids."""
    batch = int(config.train.batch_size)
    if config.task == "copy":
        num_symbols = int(config.data.num_symbols)
        return Task(
            input_size=copy_task.input_size(num_symbols),
            num_classes=num_symbols,
            new_episode=lambda rng, curriculum: copy_task.new_episode(
                rng,
                curriculum.length,
                batch=batch,
                max_length=int(config.data.max_length),
                num_symbols=num_symbols,
                spread=int(config.data.length_spread),
            ),
            token=lambda episode, _: copy_task.episode_token(episode, num_symbols=num_symbols),
            advance=copy_task.advance,
            initial_curriculum=lambda: copy_task.initial_curriculum(num_symbols),
            update_curriculum=functools.partial(
                copy_task.update_curriculum,
                num_symbols=num_symbols,
                max_length=int(config.data.max_length),
                decay=float(config.data.curriculum_decay),
                threshold=float(config.data.curriculum_threshold),
            ),
        )
    seq_len = int(config.data.seq_len)
    return Task(
        input_size=vocab_size,
        num_classes=vocab_size,
        new_episode=lambda rng, _: char_text.new_crop_episode(
            rng, num_tokens=num_tokens, batch=batch, seq_len=seq_len
        ),
        token=lambda episode, tokens: char_text.crop_token(episode, tokens, vocab_size=vocab_size),
        advance=char_text.advance,
        initial_curriculum=lambda: copy_task.Curriculum(
            jnp.asarray(0, jnp.int32), jnp.asarray(0.0, jnp.float32)
        ),
        update_curriculum=lambda curriculum, _: curriculum,
    )


class Carry(struct.PyTreeNode):
    """Everything a time step reads and writes; checkpointed as a whole."""

    step: jax.Array  # time steps done by every stream
    params: Any  # cell parameters
    readout: Any  # readout parameters
    opt_state: Any
    state_BxS: jax.Array
    traces: Any  # estimator traces, leading axis B
    episode: Any
    curriculum: copy_task.Curriculum
    since_update: jax.Array  # steps since the last parameter update
    episode_nats: jax.Array  # summed weighted loss of the running episode (all streams)
    episode_weight: jax.Array  # summed loss weights of the running episode


def _select(flag: jax.Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b), on_true, on_false)


def _run_once_if(flag: jax.Array, body: Any, state: Any) -> Any:
    """body(0, state) if flag else state, as a loop run once or never.

    XLA keeps a loop's carry in place, so the step that does not update pays nothing, where a
    select (or a cond) over the streams' p-sized traces read and wrote them all every step. The
    body must change every part of the state it reads, or XLA hoists the work out of the loop.
    """
    return jax.lax.fori_loop(0, flag.astype(jnp.int32), body, state)


def _zeros_like(tree: Any) -> Any:
    return jax.tree.map(jnp.zeros_like, tree)


def _stream_mean(tree: Any) -> Any:
    """Mean over the leading stream axis, as a (B,) @ (B, n) product per leaf.

    XLA CPU ran jnp.mean over a leading axis as a slow library reduction: 6.5 ms per step for
    the 16 x 65k numbers of a 128-unit LSTM's W_h, most of a training step.
    """

    def mean(leaf: jax.Array) -> jax.Array:
        return jnp.tensordot(jnp.full(leaf.shape[:1], 1.0 / leaf.shape[0], leaf.dtype), leaf, 1)

    return jax.tree.map(mean, tree)


def trace_axes(traces: Any) -> Any:
    """vmap axes of a stream batch of traces: 0, except the step counter of buffering estimators.

    (Truncated) BPTT and blocked SnAp-1 count the steps in their buffer. Streams start their
    sequences together, so the counter is the same in every stream; keeping it unbatched keeps the
    estimator's branch on a full buffer a real branch under vmap instead of a select that would
    run the buffer's backward pass or fold every step.
    """
    if isinstance(traces, dict) and "count" in traces:
        return {key: (None if key == "count" else 0) for key in traces}
    return 0


# ----------------------------------------------------------------------------------------------
# The online step, the chunk and evaluation (pure)
# ----------------------------------------------------------------------------------------------


class Model(NamedTuple):
    """The static pieces of a run that the pure functions close over."""

    cell_config: cells.CellConfig
    estimator: Any
    optimizer: optax.GradientTransformation
    task: Task
    batch: int
    online: bool
    update_every: int


def init_carry(model: Model, masks: Any, params: Any, rng: jax.Array) -> Carry:
    """A fresh carry around initial cell parameters (from cells.init_cell, with `masks`)."""
    _, rng_readout, rng_episode = jax.random.split(rng, 3)
    readout = init_readout(rng_readout, model.cell_config.hidden_size, model.task.num_classes)
    state_S = cells.initial_state(model.cell_config)
    state_BxS = jnp.broadcast_to(state_S, (model.batch, *state_S.shape))
    axes = trace_axes(model.estimator.init_traces(params, masks, readout, state_S))
    traces = jax.vmap(
        lambda s: model.estimator.init_traces(params, masks, readout, s), out_axes=axes
    )(state_BxS)
    curriculum = model.task.initial_curriculum()
    zero = jnp.zeros((), jnp.float32)
    return Carry(
        step=jnp.zeros((), jnp.int32),
        params=params,
        readout=readout,
        opt_state=model.optimizer.init((params, readout)),
        state_BxS=state_BxS,
        traces=traces,
        episode=model.task.new_episode(rng_episode, curriculum),
        curriculum=curriculum,
        since_update=jnp.zeros((), jnp.int32),
        episode_nats=zero,
        episode_weight=zero,
    )


def time_step(
    model: Model, masks: Any, base_rng: jax.Array, carry: Carry, data_tokens: jax.Array
) -> tuple[Carry, dict[str, jax.Array]]:
    """One step of every stream: estimator step, maybe an update, and episode bookkeeping."""
    rng = jax.random.fold_in(base_rng, carry.step)
    rng_est, rng_episode = jax.random.split(rng)
    x_BxI, y_B, weight_B = model.task.token(carry.episode, data_tokens)
    rngs_B = jax.random.split(rng_est, model.batch)
    estimator = model.estimator
    axes = trace_axes(carry.traces)
    step_fn = functools.partial(estimator.step, carry.params, masks, carry.readout)
    state_BxS, traces, grads, loss_B, ready_B = jax.vmap(
        step_fn, in_axes=(0, axes, 0, 0, 0), out_axes=(0, axes, 0, 0, 0)
    )(carry.state_BxS, carry.traces, x_BxI, (y_B, weight_B), rngs_B)
    episode, ended = model.task.advance(carry.episode)
    since_update = carry.since_update + 1
    window_full = (since_update >= model.update_every) & jnp.all(ready_B)
    do_update = ended | (window_full if model.online else False)
    consume = jax.vmap(estimator.consume, in_axes=(axes,), out_axes=axes)

    def apply_update(_, loop):
        """The optimisation step on the streams' mean gradient, and the consumed accumulators."""
        params, readout, opt_state, traces, grads, _ = loop
        cell_grads, readout_grads = _stream_mean(grads)
        if estimator.pending_grads is not None:  # the end of a sequence closes a partial buffer
            flush = jax.vmap(
                functools.partial(estimator.pending_grads, params, masks), in_axes=(axes,)
            )
            pending = jax.lax.cond(
                ended & (traces["count"] > 0),
                lambda: _stream_mean(flush(traces)),
                lambda: _zeros_like(cell_grads),
            )
            cell_grads = jax.tree.map(jnp.add, cell_grads, pending)
        mean_grads = (cell_grads, readout_grads)
        updates, opt_state = model.optimizer.update(mean_grads, opt_state, (params, readout))
        params, readout = optax.apply_updates((params, readout), updates)
        grad_norm = optax.tree_utils.tree_norm(mean_grads).astype(jnp.float32)
        return params, readout, opt_state, consume(traces), _zeros_like(grads), grad_norm

    params, readout, opt_state, traces, _, grad_norm = _run_once_if(
        do_update,
        apply_update,
        (carry.params, carry.readout, carry.opt_state, traces, grads, jnp.zeros((), jnp.float32)),
    )
    since_update = jnp.where(do_update, 0, since_update)

    step_nats = jnp.sum(loss_B)
    step_weight = jnp.sum(weight_B)
    episode_nats = carry.episode_nats + step_nats
    episode_weight = carry.episode_weight + step_weight
    episode_bits = episode_nats / jnp.maximum(episode_weight, 1.0) / LN2
    curriculum = _select(
        ended, model.task.update_curriculum(carry.curriculum, episode_bits), carry.curriculum
    )
    fresh_state = jnp.broadcast_to(cells.initial_state(model.cell_config), state_BxS.shape)
    new_carry = Carry(
        step=carry.step + 1,
        params=params,
        readout=readout,
        opt_state=opt_state,
        state_BxS=jnp.where(ended, fresh_state, state_BxS),
        traces=_run_once_if(
            ended,
            lambda _, traces: jax.vmap(estimator.reset, in_axes=(axes,), out_axes=axes)(traces),
            traces,
        ),
        episode=_select(ended, model.task.new_episode(rng_episode, curriculum), episode),
        curriculum=curriculum,
        since_update=since_update,
        episode_nats=jnp.where(ended, 0.0, episode_nats),
        episode_weight=jnp.where(ended, 0.0, episode_weight),
    )
    step_metrics = {
        "nats": step_nats,
        "weight": step_weight,
        "updates": do_update.astype(jnp.float32),
        "grad_norm": grad_norm,
    }
    return new_carry, step_metrics


def run_chunk(
    model: Model,
    num_steps: int,
    carry: Carry,
    masks: Any,
    data_tokens: jax.Array,
    base_rng_data: jax.Array,
) -> tuple[Carry, dict[str, jax.Array]]:
    """num_steps time steps as one lax.scan; returns the carry and the chunk's summed metrics."""
    base_rng = jax.random.wrap_key_data(base_rng_data)

    def body(carry, _):
        return time_step(model, masks, base_rng, carry, data_tokens)

    carry, per_step = jax.lax.scan(body, carry, length=num_steps)
    sums = {name: jnp.sum(values) for name, values in per_step.items()}
    sums["curriculum_length"] = carry.curriculum.length.astype(jnp.float32)
    return carry, sums


def chunk_metrics(sums: dict[str, float]) -> dict[str, float]:
    """Loggable metrics of one chunk's sums (bits per weighted character, updates, ...)."""
    weight = max(sums["weight"], 1.0)
    updates = max(sums["updates"], 1.0)
    logged = {
        "loss": sums["nats"] / weight,
        "bits_per_char": sums["nats"] / weight / LN2,
        "updates": sums["updates"],
        "grad_norm": sums["grad_norm"] / updates,
    }
    if sums["curriculum_length"] > 0:  # the copy task's curriculum (0 for the char LM)
        logged["curriculum_length"] = sums["curriculum_length"]
    return logged


def sequence_log_probs(
    cell_config: cells.CellConfig,
    params: Any,
    masks: Any,
    readout: Any,
    inputs_TxI: jax.Array,
) -> jax.Array:
    """Log-probabilities (T, C) of the readout at every step of one stream from a zero state."""

    def body(state_S, x_I):
        state_S = cells.cell_step(cell_config, params, masks, state_S, x_I)
        logits = readout_logits(readout, cells.hidden(cell_config, state_S))
        return state_S, jax.nn.log_softmax(logits)

    _, log_probs_TxC = jax.lax.scan(body, cells.initial_state(cell_config), inputs_TxI)
    return log_probs_TxC


# ----------------------------------------------------------------------------------------------
# The host side: data, checkpoints, the chunk loop and the modes
# ----------------------------------------------------------------------------------------------


class Experiment:
    """One config: data, cell, estimator, optimiser and the jitted chunk function."""

    def __init__(self, config: ConfigDict, *, need_train_data: bool = True):
        self.config = config
        self.corpus = None
        if config.task == "charlm":
            self.corpus = self._load("train")
            self.symbols = self.corpus.symbols
            task = make_task(
                config, num_tokens=self.corpus.num_tokens, vocab_size=len(self.symbols)
            )
        else:
            self.symbols = None
            task = make_task(config)
        self.cell_config = cell_config_for(config, task.input_size)
        self.init_rng = jax.random.fold_in(jax.random.key(config.seed), 0)
        self.initial_params, self.masks = cells.init_cell(
            self.cell_config, jax.random.split(self.init_rng, 3)[0]
        )
        estimator = estimators.make_estimator(
            config.estimator.name,
            self.cell_config,
            readout_loss=readout_loss,
            truncation=window_length(config),
            masks=self.masks,
            snap_block=int(config.estimator.get("snap_block", 1)),
        )
        self.model = Model(
            cell_config=self.cell_config,
            estimator=estimator,
            optimizer=make_optimizer(config.opt, int(config.train.num_steps)),
            task=task,
            batch=int(config.train.batch_size),
            online=bool(config.train.online),
            update_every=int(config.train.update_every),
        )
        if self.corpus is not None and need_train_data:
            self.data_tokens = jnp.asarray(self.corpus.tokens_N)
        else:
            self.data_tokens = jnp.zeros((1,), jnp.uint8)
        self.step_rng_data = jax.random.key_data(jax.random.fold_in(jax.random.key(config.seed), 1))
        self.device = jax.local_devices()[0]
        self._chunk_fns: dict[int, Any] = {}

    def _load(self, split: str) -> char_text.CharCorpus:
        data = self.config.data
        return char_text.load_char_corpus(data.name, split, data_dir=data.dir, source=data.source)

    def init_carry(self) -> Carry:
        """A fresh carry (parameters, optimiser, streams, traces, first episode)."""
        return jax.jit(functools.partial(init_carry, self.model))(
            self.masks, self.initial_params, self.init_rng
        )

    def chunk_fn(self, num_steps: int):
        """The jitted chunk of num_steps time steps (carry donated), made once per length."""
        if num_steps not in self._chunk_fns:
            self._chunk_fns[num_steps] = jax.jit(
                functools.partial(run_chunk, self.model, num_steps), donate_argnums=(0,)
            )
        return self._chunk_fns[num_steps]

    def checkpointer(self, workdir: str) -> checkpoint.Checkpointer:
        """The Orbax checkpointer of workdir/checkpoints (ckpt.every counts chunks)."""
        chunk = int(self.config.train.chunk_steps)
        return checkpoint.Checkpointer(
            os.path.join(workdir, "checkpoints"),
            max_to_keep=int(self.config.ckpt.keep),
            save_every=int(self.config.ckpt.every) * chunk,
            async_save=bool(self.config.ckpt.get("async_save", True)),
        )

    def restore_or_init(self, ckpt: checkpoint.Checkpointer) -> Carry:
        """The latest checkpoint's carry, or a fresh one."""
        latest = ckpt.latest_step()
        if latest is None:
            return self.init_carry()
        abstract = jax.eval_shape(
            functools.partial(init_carry, self.model),
            self.masks,
            self.initial_params,
            self.init_rng,
        )
        sharding = jax.sharding.SingleDeviceSharding(self.device)
        shardings = jax.tree.map(lambda _: sharding, abstract)
        target = checkpoint.abstract_with_shardings(abstract, shardings)
        try:
            carry, _ = ckpt.restore(None, target)
        except (ValueError, KeyError, TypeError) as error:
            reason = " ".join(str(error).split())[:200]
            raise UserError(
                f"the checkpoint at step {latest} in {ckpt.directory} does not fit this config "
                f"({reason}); use a new --workdir or the config it was trained with (config.json)"
            ) from error
        return carry

    def restore(self, workdir: str) -> Carry:
        """The latest checkpoint of a workdir written by --mode=train."""
        ckpt_dir = os.path.join(workdir, "checkpoints")
        ckpt = self.checkpointer(workdir) if os.path.isdir(ckpt_dir) else None
        if ckpt is None or ckpt.latest_step() is None:
            if ckpt is not None:
                ckpt.close()
            raise UserError(
                f"no checkpoints in {ckpt_dir}: run --mode=train with this workdir first"
            )
        try:
            return self.restore_or_init(ckpt)
        finally:
            ckpt.close()


def _write_config(config: ConfigDict, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def train(config: ConfigDict, workdir: str, *, experiment: Experiment | None = None) -> Carry:
    """Train to config.train.num_steps, resuming from workdir/checkpoints; returns the carry."""
    experiment = experiment or Experiment(config)
    model = experiment.model
    chunk = int(config.train.chunk_steps)
    num_steps = int(config.train.num_steps)
    log_every = int(config.train.log_every)
    ckpt = experiment.checkpointer(workdir)
    try:
        carry = experiment.restore_or_init(ckpt)
    except UserError:
        ckpt.close()
        raise
    writer = metrics.MetricWriter(workdir, enabled=True)
    step = int(jax.device_get(carry.step))
    start_step = step
    progress = metrics.Progress(
        total_steps=num_steps, start_step=step, examples_per_step=model.batch
    )
    chunk_fn = experiment.chunk_fn(chunk)
    last_good = ckpt.latest_step()
    sums: dict[str, float] = {}
    chunks_in_sums = 0

    def save(at_step: int) -> None:
        nonlocal last_good
        ckpt.save(at_step, carry, {"step": at_step})
        last_good = at_step

    try:
        with train_loop._SignalFlag() as stop:
            while step < num_steps:
                if stop.signum is not None:
                    save(step)
                    ckpt.wait()
                    raise train_loop.TrainingInterrupted(stop.signum, step)
                started = time.perf_counter()
                carry, chunk_sums = chunk_fn(
                    carry, experiment.masks, experiment.data_tokens, experiment.step_rng_data
                )
                values = {k: float(v) for k, v in jax.device_get(chunk_sums).items()}
                step += chunk
                if step == start_step + chunk:
                    seconds = time.perf_counter() - started
                    log.info("first chunk (compile + run) took %.1f s", seconds)
                    writer.write(step, {"compile_seconds": seconds}, split="timing")
                    progress.mark(step)
                if not math.isfinite(values["nats"]):
                    where = (
                        f"the last good checkpoint (step {last_good}) is kept"
                        if last_good is not None
                        else "no checkpoint was written"
                    )
                    raise train_loop.NonFiniteLossError(
                        f"loss is {values['nats']} in the chunk ending at step {step}: training "
                        f"stopped and {where}; lower opt.lr or set opt.clip_norm"
                    )
                for key, value in values.items():
                    sums[key] = value if key == "curriculum_length" else sums.get(key, 0.0) + value
                chunks_in_sums += 1
                if (step // chunk) % log_every == 0 or step == num_steps:
                    logged = chunk_metrics(sums)
                    logged["tokens"] = float(step * model.batch)
                    writer.write(step, logged, split="train")
                    progress.update(step, logged)
                    sums, chunks_in_sums = {}, 0
                if ckpt.should_save(step) or step == num_steps:
                    save(step)
            if step > start_step and step not in ckpt.all_steps():
                save(step)
    finally:
        ckpt.close()
        progress.close()
        writer.close()
    return carry


def run(config: ConfigDict, workdir: str, *, mode: str) -> int:
    """Train, evaluate or sample; user-fixable problems are raised before workdir is touched."""
    if mode == "train":
        return _run_train(config, workdir)
    if mode == "eval":
        return _run_eval(config, workdir)
    return _run_sample(config, workdir)


def _run_train(config: ConfigDict, workdir: str) -> int:
    experiment = Experiment(config)
    _write_config(config, workdir)
    if experiment.corpus is not None:
        log.info("training data: %s", experiment.corpus.source)
    log.info(
        "%s cell, %d units, density %.3g, estimator %s, %s updates",
        config.model.cell,
        config.model.hidden_size,
        config.model.density,
        config.estimator.name,
        f"online every {config.train.update_every} steps"
        if config.train.online
        else "per-sequence",
    )
    try:
        train(config, workdir, experiment=experiment)
    except train_loop.TrainingInterrupted as stop:
        print(
            f"interrupted at step {stop.step}: checkpoint saved in {workdir}/checkpoints; "
            "run the same command to resume",
            flush=True,
        )
        return 128 + int(stop.signum)
    except train_loop.NonFiniteLossError as error:
        print(f"error: {error}", flush=True)
        return 1
    metric = "curriculum_length" if config.task == "copy" else "bits_per_char"
    curve = plots.save_loss_curve(
        metrics.read_metrics(workdir),
        os.path.join(workdir, "samples", f"{metric}_curve.png"),
        metric=metric,
        title=f"{config.estimator.name} {config.model.cell} on {config.task}: {metric}",
    )
    print(
        f"training done: checkpoints in {workdir}/checkpoints, metrics in "
        f"{workdir}/metrics.jsonl, curve {curve}",
        flush=True,
    )
    return 0


def evaluate_charlm(experiment: Experiment, carry: Carry, corpus: char_text.CharCorpus) -> dict:
    """Bits per character of eval.num_crops random crops of the split, with the standard error."""
    config = experiment.config
    seq_len = int(config.data.seq_len)
    num_crops = int(config.eval.num_crops)
    rng = np.random.default_rng([int(config.seed), 3])
    crops_NxL = char_text.crop_batch(
        corpus.tokens_N, crop_len=seq_len + 1, count=num_crops, rng=rng
    )
    vocab = len(experiment.symbols)
    cell_config = experiment.cell_config

    @jax.jit
    def crop_bits(params, readout, crops_BxL):
        inputs_BxTxV = jax.nn.one_hot(crops_BxL[:, :-1], vocab, dtype=jnp.float32)
        log_probs_BxTxC = jax.vmap(
            lambda x: sequence_log_probs(cell_config, params, experiment.masks, readout, x)
        )(inputs_BxTxV)
        targets_BxT = crops_BxL[:, 1:]
        picked = jnp.take_along_axis(log_probs_BxTxC, targets_BxT[..., None], axis=-1)[..., 0]
        return -jnp.mean(picked, axis=1) / LN2

    batch = int(config.eval.batch_size)
    bits_N = []
    for start in range(0, num_crops, batch):
        part = crops_NxL[start : start + batch]
        padded = np.concatenate([part, np.repeat(part[-1:], batch - len(part), axis=0)])
        bits_N.append(np.asarray(crop_bits(carry.params, carry.readout, padded))[: len(part)])
    bits = np.concatenate(bits_N).astype(np.float64)
    stderr = float(np.std(bits, ddof=1) / math.sqrt(len(bits))) if len(bits) > 1 else None
    return {
        "bits_per_char": float(bits.mean()),
        "bits_per_char_stderr": stderr,
        "num_chars": int(num_crops * seq_len),
        "num_crops": num_crops,
        "seq_len": seq_len,
        "split": corpus.split,
        "data_source": corpus.source,
    }


def copy_predictions(
    experiment: Experiment, carry: Carry, length: int, num: int, rng: jax.Array
) -> tuple[np.ndarray, np.ndarray, float]:
    """num fresh strings of `length`: (strings, predicted copies, bits/char of the copies)."""
    num_symbols = int(experiment.config.data.num_symbols)
    strings_NxL = np.asarray(jax.random.randint(rng, (num, length), 0, num_symbols))
    examples = [copy_task.copy_example(s, num_symbols=num_symbols) for s in strings_NxL]
    inputs_NxTxI = jnp.asarray(np.stack([e[0] for e in examples]))
    log_probs_NxTxC = jax.jit(
        jax.vmap(
            lambda x: sequence_log_probs(
                experiment.cell_config, carry.params, experiment.masks, carry.readout, x
            )
        )
    )(inputs_NxTxI)
    out_NxLxC = np.asarray(log_probs_NxTxC)[:, length + 1 :]
    picked = np.take_along_axis(out_NxLxC, strings_NxL[..., None], axis=-1)[..., 0]
    bits = float(-picked.mean() / LN2)
    return strings_NxL, out_NxLxC.argmax(-1), bits


def _run_eval(config: ConfigDict, workdir: str) -> int:
    experiment = Experiment(config, need_train_data=False)
    corpus = experiment._load(config.eval.split) if config.task == "charlm" else None
    carry = experiment.restore(workdir)
    step = int(jax.device_get(carry.step))
    summary: dict[str, Any] = {
        "step": step,
        "tokens_trained": step * int(config.train.batch_size),
        "estimator": config.estimator.name,
        "cell": config.model.cell,
        "hidden_size": int(config.model.hidden_size),
        "density": float(config.model.density),
        "online": bool(config.train.online),
    }
    if config.task == "copy":
        length = int(jax.device_get(carry.curriculum.length))
        rng = jax.random.fold_in(jax.random.key(config.seed), 5)
        strings, predicted, bits = copy_predictions(
            experiment, carry, length, int(config.eval.num_sequences), rng
        )
        summary.update(
            copy_length_reached=length,
            copy_bits_per_char_at_length=bits,
            copy_exact_fraction=float(np.mean(np.all(strings == predicted, axis=1))),
            num_sequences=int(config.eval.num_sequences),
            unit="bits/char",
        )
    else:
        summary.update(evaluate_charlm(experiment, carry, corpus), unit="bits/char")
    path = os.path.join(workdir, "eval.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    with metrics.MetricWriter(workdir, enabled=True) as writer:
        key = "copy_length_reached" if config.task == "copy" else "bits_per_char"
        writer.write(step, {key: summary[key]}, split="eval")
    print(json.dumps(summary), flush=True)
    print(f"eval written to {path}", flush=True)
    return 0


def sample_text(
    experiment: Experiment, carry: Carry, *, prompt_ids: np.ndarray, num_chars: int, num: int, rng
) -> np.ndarray:
    """num continuations of the prompt, num_chars ids each, sampled at sample.temperature."""
    cell_config, masks = experiment.cell_config, experiment.masks
    vocab = len(experiment.symbols)
    temperature = float(experiment.config.sample.temperature)

    def one(rng):
        def feed(state_S, token):
            x = jax.nn.one_hot(token, vocab, dtype=jnp.float32)
            return cells.cell_step(cell_config, carry.params, masks, state_S, x), None

        state_S, _ = jax.lax.scan(feed, cells.initial_state(cell_config), prompt_ids[:-1])

        def body(inner, key):
            state_S, token = inner
            x = jax.nn.one_hot(token, vocab, dtype=jnp.float32)
            state_S = cells.cell_step(cell_config, carry.params, masks, state_S, x)
            logits = readout_logits(carry.readout, cells.hidden(cell_config, state_S))
            token = jax.random.categorical(key, logits / temperature)
            return (state_S, token), token

        _, tokens = jax.lax.scan(body, (state_S, prompt_ids[-1]), jax.random.split(rng, num_chars))
        return tokens

    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(rng, num)))


def _run_sample(config: ConfigDict, workdir: str) -> int:
    experiment = Experiment(config, need_train_data=False)
    carry = experiment.restore(workdir)
    step = int(jax.device_get(carry.step))
    rng = jax.random.fold_in(jax.random.key(config.seed), 4)
    num = int(config.sample.num_samples)
    out_dir = os.path.join(workdir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    if config.task == "copy":
        length = int(jax.device_get(carry.curriculum.length))
        strings, predicted, bits = copy_predictions(experiment, carry, length, num, rng)
        lines = [f"copy task at curriculum length {length} (step {step}), {bits:.3f} bits/char"]
        for source, copy in zip(strings, predicted, strict=True):
            ok = "ok" if np.array_equal(source, copy) else "wrong"
            lines.append(
                f"input {''.join(map(str, source))} | output {''.join(map(str, copy))} | {ok}"
            )
        path = os.path.join(out_dir, f"copy_step{step}.txt")
    else:
        byte_of = {s: i for i, s in enumerate(experiment.symbols) if s}
        prompt = config.sample.prompt or " "
        unknown = [c for c in prompt.encode("utf-8") if bytes([c]) not in byte_of]
        if unknown:
            raise UserError(
                f"config.sample.prompt={prompt!r} has characters outside the vocabulary "
                f"({bytes(unknown)!r}); use characters of the training text"
            )
        prompt_ids = np.asarray([byte_of[bytes([c])] for c in prompt.encode("utf-8")], np.int32)
        tokens = sample_text(
            experiment,
            carry,
            prompt_ids=jnp.asarray(prompt_ids),
            num_chars=int(config.sample.num_chars),
            num=num,
            rng=rng,
        )
        lines = [prompt + char_text.decode(row, experiment.symbols) for row in tokens]
        path = os.path.join(out_dir, f"samples_step{step}.txt")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"samples: {path}", flush=True)
    return 0
