"""One fused curriculum step: Exp3.S picks a task, the learner trains on it, a signal rewards it.

Graves et al. 2017 (arXiv 1704.03003), Algorithm 1: draw a task k from the bandit's policy, a
batch x from D_k, train on it, compute the learning progress nu (signals.py), divide it by the
time the sample took (its length), rescale it by the reward reservoir and update the bandit.
Everything, the extra forward passes a signal needs included, happens in one pure function that
jit compiles once for every task (a task family pads all tasks to one shape), so the bandit costs
no host work. Every `eval_every` steps the same function also scores a fixed held-out batch of
every task and records the first step at which the target task reaches `target_loss` (the
paper's "time to a satisfactory performance level").

The learner is any sequence model given as `apply(params, inputs_BxTxI) -> logits_BxTxO`; the
paper's LSTM (model.LSTMNet) is the one the configs use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from deepgen.curriculum import exp3s, model, signals
from deepgen.curriculum.tasks import TaskBatch, TaskFamily


@dataclasses.dataclass(frozen=True)
class Learner:
    """How parameters become a loss: the network, its likelihood, and the training regime."""

    apply: Callable[[Any, jax.Array], jax.Array]
    likelihood: str
    variational: bool = False
    kl_scale: float = 0.0  # 1 / S: the KL's share per training sequence (variational only)
    l2_weight: float = 0.0  # alpha of L + alpha/2 ||theta||^2 (maximum likelihood only)

    def weights(self, params: Any, noise_rng: jax.Array) -> Any:
        """The network weights of one forward pass (a posterior draw when variational)."""
        return model.sample_weights(params, noise_rng) if self.variational else params

    def point_weights(self, params: Any) -> Any:
        """The weights used for evaluation (the posterior mean when variational)."""
        return params.mean if self.variational else params

    def nll_B(self, weights: Any, batch: TaskBatch) -> jax.Array:
        """L(x, theta) of every sequence of the batch (nats), shape (B,)."""
        logits = self.apply(weights, batch.inputs_BxTxI)
        return model.sequence_nll_B(
            logits, batch.targets, batch.weights_BxT, likelihood=self.likelihood
        )

    def data_loss(self, params: Any, batch: TaskBatch, noise_rng: jax.Array) -> jax.Array:
        """The batch mean of L(x, theta) (E over one posterior draw when variational)."""
        return jnp.mean(self.nll_B(self.weights(params, noise_rng), batch))

    @property
    def regularised(self) -> bool:
        """Whether the loss has a regulariser (variational KL or a positive L2 weight)."""
        return self.variational or self.l2_weight > 0

    def regulariser(self, params: Any) -> jax.Array:
        """KL(P_phi || Q_psi) / S when variational, alpha/2 ||theta||^2 otherwise."""
        if self.variational:
            return self.kl_scale * model.complexity(params)
        return 0.5 * self.l2_weight * model.squared_norm(params)


@dataclasses.dataclass(frozen=True)
class CurriculumSettings:
    """The bandit's hyperparameters and what the step measures (paper values as defaults)."""

    signal: str = "prediction_gain"
    batch_size: int = 32
    fresh_batch_size: int = 32
    eta: float = 1e-3
    beta: float = 0.0
    epsilon: float = 0.05
    reservoir_size: int = 1000
    divide_by_length: bool = True
    eval_every: int = 100
    eval_batch_size: int = 32
    eval_seed: int = 12345
    target_loss: float = 0.0  # nats per scored step on the target task's held-out batch
    # -1: GVCG and GL2G as first-order complexity gains under descent; +1: as the paper prints
    complexity_gradient_sign: float = -1.0


class CurriculumState(struct.PyTreeNode):
    """The train state: the learner, its optimiser, the bandit and the held-out record."""

    step: jax.Array
    params: Any
    opt_state: Any
    bandit: exp3s.Exp3SState
    task_counts_N: jax.Array  # int32, how often each task was trained on
    eval_loss_N: jax.Array  # float32, held-out nats per scored step at the last eval (NaN before)
    steps_to_target: jax.Array  # int32, the first eval step at which the target was met, or -1


def init_state(
    params: Any,
    optimizer: optax.GradientTransformation,
    *,
    num_tasks: int,
    settings: CurriculumSettings,
) -> CurriculumState:
    """A fresh state around initial parameters."""
    return CurriculumState(
        step=jnp.asarray(0, jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        bandit=exp3s.init(num_tasks, settings.reservoir_size),
        task_counts_N=jnp.zeros((num_tasks,), jnp.int32),
        eval_loss_N=jnp.full((num_tasks,), jnp.nan, jnp.float32),
        steps_to_target=jnp.asarray(-1, jnp.int32),
    )


def heldout_losses(
    learner: Learner,
    family: TaskFamily,
    params: Any,
    *,
    batch_size: int,
    key: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per task: held-out nats per scored step, scored steps, and correct argmax predictions."""
    weights = learner.point_weights(params)

    def one(task):
        batch = family.sample(jax.random.fold_in(key, task), task, batch_size, split="test")
        logits = learner.apply(weights, batch.inputs_BxTxI)
        nll_B = model.sequence_nll_B(
            logits, batch.targets, batch.weights_BxT, likelihood=learner.likelihood
        )
        scored = jnp.sum(batch.weights_BxT)
        if learner.likelihood == "categorical":
            correct = jnp.sum(model.correct_B(logits, batch.targets, batch.weights_BxT))
        else:
            correct = jnp.asarray(jnp.nan, jnp.float32)
        return jnp.sum(nll_B) / scored, scored, correct

    return jax.lax.map(one, jnp.arange(family.num_tasks, dtype=jnp.int32))


def _fresh_task(kind: str, task: jax.Array, rng: jax.Array, family: TaskFamily) -> jax.Array:
    if kind == "same":
        return task
    if kind == "target":
        return jnp.asarray(family.target_task, jnp.int32)
    return jax.random.randint(rng, (), 0, family.num_tasks, dtype=jnp.int32)


def raw_signal(
    learner: Learner,
    family: TaskFamily,
    settings: CurriculumSettings,
    *,
    params: Any,
    new_params: Any,
    task: jax.Array,
    batch: TaskBatch,
    loss_before: jax.Array,
    loss_grads: Any,
    noise_rng: jax.Array,
    fresh_rng: jax.Array,
    complexity_grads: Any = None,
) -> jax.Array:
    """The learning progress nu of settings.signal for one update (before length division).

    complexity_grads, the gradient of KL(P_phi || Q_psi), is computed here when not given (the
    train step passes the regulariser's gradient divided by kl_scale, which is the same).
    """
    name = settings.signal
    if name == "prediction_gain":
        loss_after = learner.data_loss(new_params, batch, noise_rng)
        return signals.prediction_gain(loss_before=loss_before, loss_after=loss_after)
    if name in signals.FRESH_BATCH_TASK:
        task_rng, batch_rng = jax.random.split(fresh_rng)
        fresh_task = _fresh_task(signals.FRESH_BATCH_TASK[name], task, task_rng, family)
        fresh = family.sample(batch_rng, fresh_task, settings.fresh_batch_size)
        return signals.prediction_gain(
            loss_before=learner.data_loss(params, fresh, noise_rng),
            loss_after=learner.data_loss(new_params, fresh, noise_rng),
        )
    if name == "gradient_prediction_gain":
        return signals.gradient_prediction_gain(loss_grads=loss_grads)
    if name == "variational_complexity_gain":
        return signals.variational_complexity_gain(
            complexity_before=model.complexity(params),
            complexity_after=model.complexity(new_params),
        )
    if name == "gradient_variational_complexity_gain":
        if complexity_grads is None:
            complexity_grads = jax.grad(model.complexity)(params)
        return signals.gradient_variational_complexity_gain(
            complexity_grads=complexity_grads,
            loss_grads=loss_grads,
            sign=settings.complexity_gradient_sign,
        )
    if name == "l2_gain":
        return signals.l2_gain(params_before=params, params_after=new_params)
    if name == "gradient_l2_gain":
        return signals.gradient_l2_gain(
            params=params, loss_grads=loss_grads, sign=settings.complexity_gradient_sign
        )
    if name == "uniform":
        return jnp.asarray(0.0, jnp.float32)
    raise ValueError(f"signal {name!r} is not one of {signals.POLICIES}")


def train_step(
    learner: Learner,
    optimizer: optax.GradientTransformation,
    family: TaskFamily,
    settings: CurriculumSettings,
    state: CurriculumState,
    rng: jax.Array,
) -> tuple[CurriculumState, dict[str, jax.Array]]:
    """Draw a task, train on a batch of it, reward the bandit with the signal, evaluate sometimes."""
    rng = jax.random.fold_in(rng, state.step)
    task_rng, batch_rng, noise_rng, fresh_rng, reservoir_rng = jax.random.split(rng, 5)
    num_tasks = family.num_tasks
    uniform = settings.signal == "uniform"
    if uniform:
        probs_N = jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32)
    else:
        probs_N = exp3s.policy(state.bandit, epsilon=settings.epsilon)
    task = jax.random.categorical(task_rng, jnp.log(probs_N)).astype(jnp.int32)
    batch = family.sample(batch_rng, task, settings.batch_size)

    params = state.params
    loss_before, loss_grads = jax.value_and_grad(learner.data_loss)(params, batch, noise_rng)
    if learner.regularised:
        regulariser, regulariser_grads = jax.value_and_grad(learner.regulariser)(params)
        grads = jax.tree.map(jnp.add, loss_grads, regulariser_grads)
    else:
        regulariser, regulariser_grads, grads = jnp.zeros((), jnp.float32), None, loss_grads
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    new_params = optax.apply_updates(params, updates)

    nu = raw_signal(
        learner,
        family,
        settings,
        params=params,
        new_params=new_params,
        task=task,
        batch=batch,
        loss_before=loss_before,
        loss_grads=loss_grads,
        noise_rng=noise_rng,
        fresh_rng=fresh_rng,
        complexity_grads=(
            jax.tree.map(lambda g: g / learner.kl_scale, regulariser_grads)
            if learner.variational and learner.kl_scale > 0
            else None
        ),
    )
    mean_length = jnp.mean(batch.lengths_B)
    progress = nu / mean_length if settings.divide_by_length else nu
    if uniform:
        bandit = state.bandit
        reward = q_low = q_high = jnp.asarray(0.0, jnp.float32)
    else:
        bandit, seen = exp3s.update(
            state.bandit,
            task=task,
            raw_reward=progress,
            probs_N=probs_N,
            rng=reservoir_rng,
            eta=settings.eta,
            beta=settings.beta,
        )
        reward, q_low, q_high = seen

    step = state.step + 1
    evaluate_now = (step % settings.eval_every) == 0

    def run_eval(_):
        return heldout_losses(
            learner,
            family,
            new_params,
            batch_size=settings.eval_batch_size,
            key=jax.random.key(settings.eval_seed),
        )[0]

    eval_loss_N = jax.lax.cond(evaluate_now, run_eval, lambda _: state.eval_loss_N, None)
    reached = evaluate_now & (eval_loss_N[family.target_task] <= settings.target_loss)
    steps_to_target = jnp.where(
        (state.steps_to_target < 0) & reached, step, state.steps_to_target
    ).astype(jnp.int32)

    new_state = CurriculumState(
        step=step,
        params=new_params,
        opt_state=opt_state,
        bandit=bandit,
        task_counts_N=state.task_counts_N.at[task].add(1),
        eval_loss_N=eval_loss_N,
        steps_to_target=steps_to_target,
    )
    scored = jnp.maximum(jnp.sum(batch.weights_BxT), 1.0)
    metrics = {
        "loss": loss_before * settings.batch_size / scored,
        "grad_norm": jnp.sqrt(model.squared_norm(grads)),
        "regulariser": regulariser,
        "signal": progress,
        "reward": reward,
        "reward_q_low": q_low,
        "reward_q_high": q_high,
        "policy_entropy": -jnp.sum(probs_N * jnp.log(probs_N)),
        "target_prob": probs_N[family.target_task],
        "eval_target_loss": eval_loss_N[family.target_task],
        "eval_mean_loss": jnp.mean(eval_loss_N),
        "steps_to_target": steps_to_target.astype(jnp.float32),
    }
    for k, name in enumerate(family.task_names):
        metrics[f"policy/{name}"] = probs_N[k]
        metrics[f"eval/{name}"] = eval_loss_N[k]
    return new_state, metrics
