"""Automated Curriculum Learning (Graves et al. 2017) through the one runner.

One train step of the core loop is one step of the paper's Algorithm 1 (deepgen.curriculum.
learner.train_step): the bandit lives in the train state and runs inside the jitted step, so it
is checkpointed and restored with the parameters and costs no host work between steps. The task
family's data (n-gram sequences, bAbI examples) is handed to the step as device-resident arrays
each step (RepeatedBatch), never copied again. One device: the learner is a small LSTM and the
bandit draws one task per step, so there is nothing to shard.

eval.json: per task the held-out loss (nats per scored step, with its standard error over the
eval batches) beside the best constant predictor fitted on the task's training sequences (and, for n-grams,
the generating model's own conditional entropy, the floor of any learner's loss);
`mean_target_loss`, the mean of the tasks' held-out losses; the target task's loss; and
`steps_to_target`, the first step at which the target task's held-out loss (scored every
curriculum.eval_every steps during training) fell to curriculum.target_loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from deepgen.core import mesh as mesh_lib
from deepgen.core import metrics
from deepgen.core.optim import make_optimizer
from deepgen.core.train_loop import RepeatedBatch
from deepgen.core.validate import Checker
from deepgen.curriculum import learner as learner_lib
from deepgen.curriculum import model, signals, tasks
from experiments.contract import Method
from experiments.curriculum import plots

TASKS = ("ngram", "repeat_copy", "babi")
LAST_VALUE_METRICS = ("eval_target_loss", "eval_mean_loss", "steps_to_target")


def validate(config: ConfigDict) -> None:
    """One line naming the first field whose value is not allowed."""
    check = Checker(config)
    check.one_of("task", TASKS)
    check.one_of("model.kind", model.NETWORKS)
    if config.model.kind == "snap_cell":
        check.one_of("model.cell", ("vanilla", "gru", "lstm"))
        check(0.0 < config.model.density <= 1.0, "model.density", "a number in (0, 1]")
    check.one_of("curriculum.signal", signals.POLICIES)
    check.boolean("curriculum.literal_complexity_gradient")
    check.positive(
        "model.hidden_size",
        "train.batch_size",
        "curriculum.fresh_batch_size",
        "curriculum.eval_every",
        "curriculum.eval_batch_size",
        "curriculum.reservoir_size",
        "curriculum.eta",
        "eval.batch_size",
        "eval.num_batches",
    )
    check(0.0 < config.curriculum.epsilon <= 1.0, "curriculum.epsilon", "a number in (0, 1]")
    check(config.curriculum.beta >= 0.0, "curriculum.beta", "a number >= 0")
    check(config.model.l2_weight >= 0.0, "model.l2_weight", "a number >= 0")
    signal = config.curriculum.signal
    if config.model.variational:
        check.positive("model.init_sigma", "model.kl_examples")
    check(
        signal not in signals.VARIATIONAL_SIGNALS or bool(config.model.variational),
        "curriculum.signal",
        f"{signal!r} measures the variational posterior: also set --config.model.variational=True",
    )
    check(
        signal not in signals.L2_SIGNALS or config.model.l2_weight > 0,
        "curriculum.signal",
        f"{signal!r} needs training with L + alpha/2 ||theta||^2: set --config.model.l2_weight > 0",
    )
    check(
        signal not in signals.L2_SIGNALS or not config.model.variational,
        "curriculum.signal",
        f"{signal!r} is a maximum-likelihood signal: set --config.model.variational=False",
    )


class Curriculum(Method):
    """Exp3.S over the tasks of one family, rewarding the learner's progress (one signal)."""

    name = "curriculum"

    @classmethod
    def validate(cls, config: ConfigDict) -> None:
        """See the module-level validate."""
        validate(config)

    def __init__(self, config: ConfigDict, *, mode: str = "train"):
        super().__init__(config, mode=mode)
        self.family = tasks.build_family(config)
        family = self.family
        if config.model.kind == "snap_cell":
            self.network = model.make_snap_cell_net(
                str(config.model.cell),
                input_size=family.input_size,
                hidden_size=int(config.model.hidden_size),
                output_size=family.output_size,
                density=float(config.model.density),
                rng=jax.random.fold_in(jax.random.key(int(config.seed)), 17),
            )
            apply = self.network.apply
        else:
            self.network = model.LSTMNet(
                hidden_size=int(config.model.hidden_size),
                output_size=family.output_size,
                forget_bias=float(config.model.forget_bias),
            )

            def apply(params, inputs):
                return self.network.apply({"params": params}, inputs)

        variational = bool(config.model.variational)
        self.learner = learner_lib.Learner(
            apply=apply,
            likelihood=family.likelihood,
            variational=variational,
            kl_scale=1.0 / float(config.model.kl_examples) if variational else 0.0,
            l2_weight=float(config.model.l2_weight),
        )
        self.optimizer = make_optimizer(config.opt, int(config.train.num_steps))
        cur = config.curriculum
        self.settings = learner_lib.CurriculumSettings(
            signal=str(cur.signal),
            batch_size=int(config.train.batch_size),
            fresh_batch_size=int(cur.fresh_batch_size),
            eta=float(cur.eta),
            beta=float(cur.beta),
            epsilon=float(cur.epsilon),
            reservoir_size=int(cur.reservoir_size),
            divide_by_length=bool(cur.divide_by_length),
            eval_every=int(cur.eval_every),
            eval_batch_size=int(cur.eval_batch_size),
            eval_seed=int(config.seed) + 7919,
            target_loss=float(cur.target_loss),
            complexity_gradient_sign=1.0 if cur.literal_complexity_gradient else -1.0,
        )
        self._data = jax.tree.map(jnp.asarray, (family.train_data, family.test_data))

    # ---- the contract ------------------------------------------------------------------------

    @property
    def mesh(self) -> jax.sharding.Mesh:
        """One device: one small learner and one task per step."""
        if not hasattr(self, "_mesh"):
            self._mesh = mesh_lib.make_mesh(self.config.mesh, num_devices=1)
        return self._mesh

    def init_params(self, rng: jax.Array) -> Any:
        """The network's initial weights (a posterior around them when variational)."""
        family = self.family
        if isinstance(self.network, model.SnapCellNet):
            params = self.network.init(rng)
        else:
            inputs = jnp.zeros((1, family.seq_len, family.input_size), jnp.float32)
            params = self.network.init(rng, inputs)["params"]
        if self.learner.variational:
            return model.init_posterior(params, init_sigma=float(self.config.model.init_sigma))
        return params

    def init_state(self, rng: jax.Array) -> learner_lib.CurriculumState:
        """Initial weights, optimiser, a fresh bandit and an empty held-out record."""
        return learner_lib.init_state(
            self.init_params(rng),
            self.optimizer,
            num_tasks=self.family.num_tasks,
            settings=self.settings,
        )

    def with_data(self, data: Any) -> tasks.TaskFamily:
        """The task family reading its arrays from `data` (the step's device-resident argument)."""
        train_data, test_data = data
        return dataclasses.replace(self.family, train_data=train_data, test_data=test_data)

    def train_step(self, state, batch, rng):
        """One step of Algorithm 1 (see deepgen.curriculum.learner.train_step)."""
        family = self.with_data(batch)
        return learner_lib.train_step(
            self.learner, self.optimizer, family, self.settings, state, rng
        )

    def batches(self) -> RepeatedBatch:
        """The family's arrays, already on the device, every step; the step draws its own batch."""
        return RepeatedBatch(self._data)

    def summarize(self):
        """The window mean, except the held-out scores and steps_to_target: their last value."""

        def summarize(sums: dict, last: dict, count: int) -> dict:
            return {
                k: (last[k] if k.startswith("eval/") or k in LAST_VALUE_METRICS else v / count)
                for k, v in sums.items()
            }

        return summarize

    def describe(self) -> list[str]:
        """The tasks, the learner and the signal."""
        config, family = self.config, self.family
        regime = "variational (MDL) weights" if config.model.variational else "maximum likelihood"
        network = (
            f"SnAp {config.model.cell} cell of {config.model.hidden_size} units, density "
            f"{config.model.density:g}"
            if config.model.kind == "snap_cell"
            else f"LSTM of {config.model.hidden_size} cells"
        )
        return [
            f"task family {family.kind}: {family.num_tasks} tasks, target {family.task_names[family.target_task]}; "
            f"data: {family.data_source}",
            f"{network}, {regime}; syllabus: {config.curriculum.signal}",
        ]

    def _plots(self, workdir: str, step: int) -> dict[str, str]:
        records = [r for r in metrics.read_metrics(workdir) if int(r.get("step", 0)) <= step]
        family, signal = self.family, self.config.curriculum.signal
        title = f"{family.kind}, {signal}"
        out = os.path.join(workdir, "samples")
        written = {
            "syllabus": plots.save_syllabus(
                records,
                os.path.join(out, f"syllabus_step{step}.png"),
                names=family.task_names,
                kind=family.kind,
                title=title,
            )
        }
        # No held-out score is logged before the first curriculum.eval_every steps.
        with contextlib.suppress(ValueError):
            written["task_losses"] = plots.save_task_losses(
                records,
                os.path.join(out, f"task_losses_step{step}.png"),
                names=family.task_names,
                kind=family.kind,
                title=title,
                unit=f"held-out nats per {family.unit}",
            )
        return written

    def after_train(self, workdir: str) -> dict[str, str]:
        """The syllabus and the per-task held-out losses over training (PNG)."""
        return self._plots(workdir, int(self.config.train.num_steps))

    def eval_tag(self) -> str:
        """The held-out split."""
        return "test"

    @functools.cached_property
    def _heldout(self):
        def run(params, data, seed):
            return learner_lib.heldout_losses(
                self.learner,
                self.with_data(data),
                params,
                batch_size=int(self.config.eval.batch_size),
                key=jax.random.key(seed),
            )

        return jax.jit(run)

    def evaluate(self, state, *, step: int, quick: bool, progress: Any) -> dict:
        """Held-out loss per task, their mean, the target task's, steps_to_target, a baseline."""
        config, family = self.config, self.family
        num_batches = 1 if quick else int(config.eval.num_batches)
        bar = progress("eval", num_batches, unit="batches of every task")
        losses, scored, correct = [], [], []
        for b in range(num_batches):
            loss_N, scored_N, correct_N = self._heldout(
                state.params, self._data, int(config.eval.seed) * 1000 + b
            )
            losses.append(np.asarray(loss_N, np.float64))
            scored.append(np.asarray(scored_N, np.float64))
            correct.append(np.asarray(correct_N, np.float64))
            bar.advance()
        losses_BxN, scored_BxN = np.stack(losses), np.stack(scored)
        loss_N = (losses_BxN * scored_BxN).sum(0) / scored_BxN.sum(0)
        stderr_N = (
            losses_BxN.std(0, ddof=1) / math.sqrt(num_batches)
            if num_batches > 1
            else np.full_like(loss_N, np.nan)
        )
        baseline_N = constant_predictor_losses(
            family,
            self._data,
            num_batches=num_batches,
            batch_size=int(config.eval.batch_size),
            seed=int(config.eval.seed),
        )
        per_task = {}
        for k, name in enumerate(family.task_names):
            row = {
                "loss": float(loss_N[k]),
                "stderr": _finite_or_none(stderr_N[k]),
                "baseline_loss": float(baseline_N[k]),
            }
            if "entropy_floor_nats" in family.params:
                row["entropy_floor"] = float(family.params["entropy_floor_nats"][k])
            if family.likelihood == "categorical":
                row["accuracy"] = float(np.stack(correct)[:, k].sum() / scored_BxN[:, k].sum())
            per_task[name] = row
        reached = int(state.steps_to_target)
        target = family.task_names[family.target_task]
        return {
            "split": "test",
            "data_source": family.data_source,
            "num_examples": int(num_batches * int(config.eval.batch_size) * family.num_tasks),
            "unit": f"nats per scored {family.unit}",
            "signal": str(config.curriculum.signal),
            "training": "variational" if config.model.variational else "maximum likelihood",
            "mean_target_loss": float(loss_N.mean()),
            "mean_target_loss_stderr": _finite_or_none(
                float(np.sqrt(np.nansum(stderr_N**2)) / family.num_tasks)
            ),
            "target_task": target,
            "target_task_loss": float(loss_N[family.target_task]),
            "target_loss": float(config.curriculum.target_loss),
            "steps_to_target": reached if reached >= 0 else None,
            "steps_to_target_resolution": int(config.curriculum.eval_every),
            "baseline": {
                "name": "best constant predictor per task, fitted on its training sequences",
                "mean_target_loss": float(baseline_N.mean()),
                "target_task_loss": float(baseline_N[family.target_task]),
            },
            "tasks": per_task,
            "task_counts": {
                name: int(c)
                for name, c in zip(family.task_names, np.asarray(state.task_counts_N), strict=False)
            },
        }

    def format_eval(self, report) -> str:
        """The headline numbers."""
        reached = report["steps_to_target"]
        return (
            f"{report['signal']}: mean held-out loss {report['mean_target_loss']:.4f} "
            f"(baseline {report['baseline']['mean_target_loss']:.4f}) {report['unit']}; target "
            f"task {report['target_task']} {report['target_task_loss']:.4f}; steps to target "
            f"{report['target_loss']:g}: {reached if reached is not None else 'not reached'}"
        )

    def sample(self, state, out_dir: str, *, step: int, progress: Any) -> dict[str, str]:
        """The syllabus and loss plots, and the learner's predictions on held-out sequences."""
        workdir = os.path.dirname(os.path.abspath(out_dir))
        written = self._plots(workdir, step)
        written["predictions"] = write_predictions(self, state, out_dir, step=step)
        return written


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(float(value)) else None


def constant_predictor_losses(
    family: tasks.TaskFamily, data: Any, *, num_batches: int, batch_size: int, seed: int
) -> np.ndarray:
    """Per task, held-out nats per scored step of the best constant predictor of its targets."""
    train_data, test_data = data

    @jax.jit
    def per_task(task, key):
        fam = dataclasses.replace(family, train_data=train_data, test_data=test_data)
        fit_keys = jax.random.split(jax.random.fold_in(key, 0), num_batches)
        test_keys = jax.random.split(jax.random.fold_in(key, 1), num_batches)
        train = jax.vmap(lambda k: fam.sample(k, task, batch_size))(fit_keys)
        test = jax.vmap(lambda k: fam.sample(k, task, batch_size, split="test"))(test_keys)
        w_train, w_test = train.weights_BxT, test.weights_BxT
        if family.likelihood == "categorical":
            counts_O = (
                jnp.zeros((family.output_size,)).at[train.targets.ravel()].add(w_train.ravel())
            )
            log_p_O = jnp.log((counts_O + 0.5) / jnp.sum(counts_O + 0.5))
            nll = -log_p_O[test.targets]
        else:
            weight = w_train[..., None]
            rate_O = (jnp.sum(train.targets * weight, axis=(0, 1, 2)) + 0.5) / (
                jnp.sum(weight, axis=(0, 1, 2)) + 1.0
            )
            y = test.targets
            nll = -jnp.sum(y * jnp.log(rate_O) + (1 - y) * jnp.log1p(-rate_O), axis=-1)
        return jnp.sum(nll * w_test) / jnp.sum(w_test)

    key = jax.random.key(seed + 1)
    return np.array(
        [float(per_task(jnp.int32(k), jax.random.fold_in(key, k))) for k in range(family.num_tasks)]
    )


def decode(family: tasks.TaskFamily, ids: np.ndarray) -> str:
    """Characters (n-gram) or words (bAbI) of token ids."""
    vocab = family.params["vocab"]
    separator = " " if family.kind == "babi" else ""
    return separator.join(str(vocab[int(i)]) for i in ids)


def write_predictions(method: Curriculum, state, out_dir: str, *, step: int) -> str:
    """Held-out sequences of the target task with the learner's most probable outputs (text)."""
    family = method.family
    config = method.config
    batch = jax.jit(
        lambda data: method.with_data(data).sample(
            jax.random.key(int(config.eval.seed)), family.target_task, 4, split="test"
        )
    )(method._data)
    weights = method.learner.point_weights(state.params)
    logits = np.asarray(method.learner.apply(weights, batch.inputs_BxTxI))
    targets, scored = np.asarray(batch.targets), np.asarray(batch.weights_BxT) > 0
    lines = [f"{family.kind} at step {step}, target task {family.task_names[family.target_task]}"]
    for b in range(logits.shape[0]):
        if family.likelihood == "categorical":
            predicted = logits[b].argmax(-1)
            lines.append(f"example {b}")
            if family.kind == "babi":  # the story and question the answer is predicted from
                inputs_TxI = np.asarray(batch.inputs_BxTxI[b])
                words = inputs_TxI.argmax(-1)[inputs_TxI.sum(-1) > 0]
                lines.append("  input    : " + decode(family, words))
            lines.append("  target   : " + decode(family, targets[b][scored[b]]))
            lines.append("  predicted: " + decode(family, predicted[scored[b]]))
        else:
            predicted = (logits[b] > 0).astype(int)[scored[b]]
            truth = targets[b].astype(int)[scored[b]]
            lines.append(
                f"example {b}: {int(scored[b].sum())} output steps, bit errors "
                f"{int((predicted != truth).sum())} of {truth.size}"
            )
            for row_t, row_p in zip(truth.T, predicted.T, strict=False):
                lines.append(
                    "  target "
                    + "".join(map(str, row_t))
                    + "  predicted "
                    + "".join(map(str, row_p))
                )
    path = os.path.join(out_dir, f"predictions_step{step}.txt")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


METHOD = Curriculum
