"""The online training step of SnAp / RTRL / UORO / BPTT streams, as pure functions.

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
`train.chunk_steps` steps is one jitted `lax.scan` (one train step of experiments/snap/method.py).
Randomness comes from `fold_in(key(seed), step)`, so a run resumed from any checkpoint replays
exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct
from ml_collections import ConfigDict

from deepgen.data import char_text, copy_task
from deepgen.snap import cells

LN2 = math.log(2.0)


def rtrl_influence_bytes(config: ConfigDict, input_size: int) -> int:
    """Bytes of the dense RTRL influence matrices of all streams: B * state_size * params * 4."""
    cell_config = cell_config_for(config, input_size)
    params, _ = cells.init_cell(cell_config, jax.random.key(0))
    num_params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
    return int(config.train.batch_size) * cells.state_size(cell_config) * num_params * 4


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
