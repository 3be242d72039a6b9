"""Sparse Access Memory and its dense baselines on the paper's tasks (Rae et al. 2016, Sec. 4).

One LSTM controller (deepgen.sam.model) with the memory core config.memory.kind (ntm, dam, sam,
dnc, sdnc) trains on copy, associative recall, priority sort or Omniglot one-shot sequences
under the paper's curriculum, or jointly on the 20 bAbI tasks. The algorithmic tasks and the
Omniglot episodes are generated inside the jitted step from (seed, step); the curriculum state
(the level h and the running cost) is part of the train state, so resume is exact.

The curriculum's h doubles during training while the loop compiles one step: the step holds one
branch per padded length (h rounded up to a power of two, deepgen.sam.tasks.padded_max_level)
and `lax.switch` runs the one for the current h, so a batch at h = 3 of a run capped at 10,000
costs a sequence of the length of level 4, not of level 10,000.

Units: one step is one optimiser update on train.batch_size sequences. eval.json: the paper's
`cost_bits_per_sequence` and `error_rate` on held-out sequences at the level reached,
`curriculum_level`, and for associative recall `max_generalised_length` with the table of
longer lengths it was tried at, and at each length `error_rate_floor`, the bit error rate of the
best possible answers (above zero only where items repeat, deepgen.sam.tasks.recall_floor_errors).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from ml_collections import ConfigDict

from deepgen.core import mesh as mesh_lib
from deepgen.core import metrics, plots
from deepgen.core.optim import make_optimizer
from deepgen.core.train_loop import RepeatedBatch, Unit
from deepgen.core.train_state import count_params
from deepgen.core.validate import Checker
from deepgen.sam import interface, model, tasks
from experiments.contract import Method

TASKS = (*tasks.ALGORITHMIC_KINDS, "omniglot", "babi")


class SamState(struct.PyTreeNode):
    """Step, parameters, optimiser state and the curriculum (checkpointed as a whole)."""

    step: jax.Array
    params: Any
    opt_state: Any
    curriculum: tasks.Curriculum


def memory_spec(config: ConfigDict) -> interface.MemorySpec:
    """The MemorySpec of config.memory."""
    m = config.memory
    return interface.MemorySpec(
        kind=str(m.kind),
        num_words=int(m.num_words),
        word_size=int(m.word_size),
        num_heads=int(m.num_heads),
        num_reads=int(m.num_reads),
        usage_delta=float(m.usage_delta),
        usage_discount=float(m.usage_discount),
        num_links=int(m.num_links),
        search=str(m.search),
        search_block=int(m.search_block),
    )


def task_params(config: ConfigDict) -> tasks.TaskParams:
    """The TaskParams of a generated task (config.task and config.data; not bAbI)."""
    d = config.data
    return tasks.TaskParams(
        kind=str(config.task),
        num_bits=int(d.num_bits),
        item_size=int(d.item_size),
        num_outputs=int(d.num_outputs),
        sort_inputs=int(d.sort_inputs),
        image_side=int(d.image_side),
        instances_per_class=int(d.instances_per_class),
        num_labels=int(d.num_labels),
        distinct_items=bool(d.get("distinct_items", False)),
    )


def length_buckets(initial_level: int, cap: int) -> tuple[int, ...]:
    """The padded levels a run can reach: h doubles from initial_level up to cap."""
    buckets, level = [], int(initial_level)
    while True:
        buckets.append(tasks.padded_max_level(level, max_level_cap=cap))
        if level >= cap:
            break
        level = min(2 * level, cap)
    return tuple(sorted(set(buckets)))


class SAM(Method):
    """A memory-augmented LSTM trained by RMSProp on one task family (see the module docstring)."""

    name = "sam"
    check_finite = ("loss",)

    @classmethod
    def validate(cls, config: ConfigDict) -> None:
        """One ConfigError naming the first field whose value is not allowed."""
        check = Checker(config)
        check.common()
        check.optimiser()
        check.one_of("task", TASKS)
        check.one_of("memory.kind", interface.KINDS)
        check.one_of("memory.search", interface.SEARCHES)
        check.positive(
            "memory.num_words",
            "memory.word_size",
            "memory.num_heads",
            "memory.num_reads",
            "memory.num_links",
            "memory.search_block",
            "model.hidden_size",
            "eval.num_sequences",
            "eval.batch_size",
            "sample.num_sequences",
        )
        check.in_unit_interval("memory.usage_discount")
        check.non_negative("memory.usage_delta")
        words = int(config.memory.num_words)
        check(int(config.memory.num_reads) <= words, "memory.num_reads", f"<= {words} words")
        check(int(config.memory.num_links) <= words, "memory.num_links", f"<= {words} words")
        if config.task != "babi":
            params = task_params(config)
            low = tasks.min_level(params)
            c = config.curriculum
            check(int(c.initial_level) >= low, "curriculum.initial_level", f">= {low}")
            check(
                int(c.max_level) >= int(c.initial_level),
                "curriculum.max_level",
                f">= curriculum.initial_level = {int(c.initial_level)}",
            )
            highest = tasks.max_allowed_level(params)
            if highest is not None:
                check(int(c.max_level) <= highest, "curriculum.max_level", f"<= {highest}")
            check(float(c.threshold) > 0, "curriculum.threshold", "bits per sequence > 0")
            check(0 <= float(c.decay) < 1, "curriculum.decay", "in [0, 1)")
            check.non_negative("eval.generalisation_max_error", "eval.generalisation_num_words")
            factors = tuple(config.eval.generalisation_factors)
            check(all(float(f) > 0 for f in factors), "eval.generalisation_factors", "> 0")
            if highest is not None and config.task == "associative_recall":
                longest = max([round(float(f) * int(c.max_level)) for f in factors], default=0)
                check(
                    longest <= highest,
                    "eval.generalisation_factors",
                    f"at most {highest} items at curriculum.max_level = {int(c.max_level)} "
                    f"(data.distinct_items has {highest} codes; {longest} asked)",
                )
        check(
            int(config.mesh.data) in (1, -1) and int(config.mesh.fsdp) in (1, -1),
            "mesh",
            "data=-1 (or 1) and fsdp=1 (or -1): the batch is data-parallel",
        )
        check.divisible_by_devices()

    def __init__(self, config: ConfigDict, *, mode: str = "train"):
        super().__init__(config, mode=mode)
        self.spec = memory_spec(config)
        self.babi = config.task == "babi"
        self.params_task = None if self.babi else task_params(config)
        self.omniglot = {}
        if self.babi:
            self.babi_data, self.babi_arrays = tasks.load_babi_arrays(
                config.data.dir, max_tokens=int(config.data.max_tokens) or None
            )
            vocab = len(self.babi_data.vocab)
            self.input_size = self.output_size = vocab
            self.buckets = ()
        else:
            if config.task == "omniglot":
                self.omniglot["train"] = self._omniglot("train")
                tasks.check_characters(self.omniglot["train"], int(config.curriculum.max_level))
            self.input_size = tasks.input_size(self.params_task)
            self.output_size = tasks.output_size(self.params_task)
            self.buckets = length_buckets(
                int(config.curriculum.initial_level), int(config.curriculum.max_level)
            )
        self.network = model.MemoryNetwork(
            spec=self.spec,
            hidden_size=int(config.model.hidden_size),
            output_size=self.output_size,
        )
        self.optimizer = make_optimizer(config.opt, int(config.train.num_steps))

    def _omniglot(self, split: str) -> tasks.OmniglotData:
        data = self.config.data
        return tasks.load_omniglot_data(
            split, data_dir=data.dir, params=self.params_task, source=str(data.source)
        )

    # ---- training ----------------------------------------------------------------------------

    def unit(self) -> Unit:
        """One step is one update on train.batch_size sequences."""
        return Unit("steps", 1, int(self.config.train.batch_size))

    def init_state(self, rng: jax.Array) -> SamState:
        """Fresh parameters, RMSProp state and the curriculum at curriculum.initial_level."""
        inputs = jnp.zeros((1, 2, self.input_size), jnp.float32)
        params = self.network.init(rng, inputs)
        level = 1 if self.babi else int(self.config.curriculum.initial_level)
        # bAbI has no curriculum: a constant one at level 1 keeps the state's shape.
        curriculum = tasks.initial_curriculum(level, params=self.params_task or tasks.TaskParams())
        return SamState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.optimizer.init(params),
            curriculum=curriculum,
        )

    def _scores(self, params: Any, batch: tasks.TaskBatch) -> dict[str, jax.Array]:
        """Summed cost, errors and counts of a batch, and the mean cost (the loss)."""
        logits = self.network.apply(params, batch.inputs_BxTxI)
        cost_B = tasks.cost_bits_per_sequence(logits, batch)
        real_B = (batch.mask_BxT.sum(-1) > 0).astype(jnp.float32)
        return {
            "cost_bits": jnp.sum(cost_B),
            "errors": jnp.sum(tasks.sequence_errors(logits, batch)),
            "outputs": jnp.sum(tasks.scored_outputs(batch)),
            "sequences": jnp.sum(real_B),
        }

    def _train_batch(self, rng: jax.Array, h: jax.Array, bucket: int, data: Any) -> tasks.TaskBatch:
        """A batch with levels uniform on {min_level..h}, padded to the bucket's length."""
        size = int(self.config.train.batch_size)
        if self.babi:
            return tasks.sample_babi(rng, data, batch_size=size, vocab_size=self.output_size)
        level_rng, task_rng = jax.random.split(rng)
        levels = tasks.sample_levels(level_rng, h, batch_size=size, params=self.params_task)
        levels = jnp.minimum(levels, bucket)
        return tasks.sample(
            task_rng,
            level=levels,
            batch_size=size,
            max_level=bucket,
            params=self.params_task,
            data=data,
        )

    def train_step(self, state: SamState, batch: Any, rng: jax.Array) -> tuple[SamState, dict]:
        """Draw a batch at the curriculum's h, one RMSProp update, then update the curriculum."""
        del rng  # the task stream of (seed, step) makes the data; nothing else is random
        config = self.config
        rng = tasks.train_key(int(config.seed), state.step)
        h = state.curriculum.max_level

        def loss_at(bucket: int):
            def loss_fn(params):
                scores = self._scores(params, self._train_batch(rng, h, bucket, batch))
                return scores["cost_bits"] / scores["sequences"], scores

            return loss_fn

        if self.babi:
            branch_loss = loss_at(0)
        else:
            buckets = jnp.asarray(self.buckets, jnp.int32)
            index = jnp.searchsorted(buckets, h)  # the first bucket >= h
            branches = [loss_at(bucket) for bucket in self.buckets]

            def branch_loss(params):
                return jax.lax.switch(index, branches, params)

        (loss, scores), grads = jax.value_and_grad(branch_loss, has_aux=True)(state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        curriculum = state.curriculum
        if not self.babi:
            c = config.curriculum
            curriculum = tasks.update_curriculum(
                curriculum,
                loss,
                threshold=float(c.threshold),
                decay=float(c.decay),
                max_level_cap=int(c.max_level),
            )
        metrics_out = {
            "loss": loss,
            "cost_bits_per_sequence": loss,
            "error_rate": scores["errors"] / jnp.maximum(scores["outputs"], 1.0),
            "curriculum_level": state.curriculum.max_level.astype(jnp.float32),
            "grad_norm": optax.global_norm(grads),
        }
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, curriculum=curriculum
        )
        return new_state, metrics_out

    def batches(self):
        """The device-resident data the step samples from (Omniglot, bAbI), or None."""
        if self.babi:
            return RepeatedBatch(self.babi_arrays["train"])
        if self.config.task == "omniglot":
            return RepeatedBatch(self.omniglot["train"])
        return None

    def summarize(self):
        """Means over the window, except the curriculum level, which is the last one."""

        def summarize(sums: dict, last: dict, count: int) -> dict:
            out = {k: v / count for k, v in sums.items()}
            if "curriculum_level" in last:
                out["curriculum_level"] = last["curriculum_level"]
            return out

        return summarize

    @property
    def mesh(self) -> jax.sharding.Mesh:
        """Data-parallel over every device; one device for Omniglot and bAbI.

        Those two sample their batches inside the step from the whole dataset, which is an input
        of the step that the loop would split over the devices like a batch.
        """
        if not hasattr(self, "_mesh"):
            one = self.config.task in ("omniglot", "babi")
            self._mesh = mesh_lib.make_mesh(self.config.mesh, num_devices=1 if one else None)
        return self._mesh

    def describe(self) -> list[str]:
        """The task, the memory and the controller."""
        c, s = self.config, self.spec
        shapes = jax.eval_shape(self.init_state, jax.random.key(0)).params
        memory = f"{s.kind} memory of {s.num_words} words of {s.word_size}, {s.num_heads} heads"
        if s.kind in ("sam", "sdnc"):
            memory += f", K = {s.num_reads}, {s.search} search"
        lines = [
            f"task {c.task}, {memory}, LSTM of {c.model.hidden_size} units, "
            f"{count_params(shapes):,} parameters"
        ]
        if not self.babi:
            lines.append(
                f"curriculum from level {c.curriculum.initial_level} to {c.curriculum.max_level}"
                f" (padded lengths {list(self.buckets)}), threshold {c.curriculum.threshold}"
                " bits per sequence"
            )
        return lines

    def after_train(self, workdir: str) -> dict[str, str]:
        """Curves of the cost and of the curriculum level over steps."""
        records = metrics.read_metrics(workdir)
        out = {}
        for metric in ("cost_bits_per_sequence", "curriculum_level"):
            out[metric] = plots.save_loss_curve(
                records,
                os.path.join(workdir, "samples", f"{metric}_curve.png"),
                metric=metric,
                title=f"{self.spec.kind} on {self.config.task}: {metric}",
            )
        return out

    # ---- evaluation --------------------------------------------------------------------------

    def eval_tag(self) -> str:
        """bAbI: its test split; the generated tasks: held-out sequences."""
        return "test" if self.babi else "heldout"

    def _score_batches(
        self, params: Any, batches: list[tasks.TaskBatch], *, network: Any = None
    ) -> dict[str, float]:
        """Summed scores over batches, and the per-sequence costs for the standard error."""
        network = network or self.network
        score = self.jitted(
            f"score_{network.spec.num_words}",
            functools.partial(self._scores_per_sequence, network=network),
        )
        costs, errors, outputs, predicted = [], 0.0, 0.0, []
        for batch in batches:
            cost_B, errors_B, outputs_B, real_B, predicted_BxT = jax.device_get(
                score(params, batch)
            )
            predicted.append(predicted_BxT)
            costs.append(cost_B[real_B > 0])
            errors += float(errors_B.sum())
            outputs += float(outputs_B.sum())
        cost_N = np.concatenate(costs)
        return {
            "cost_bits_per_sequence": float(cost_N.mean()),
            "cost_bits_per_sequence_stderr": float(cost_N.std(ddof=1) / math.sqrt(len(cost_N)))
            if len(cost_N) > 1
            else None,
            "error_rate": errors / max(outputs, 1.0),
            "num_sequences": len(cost_N),
            "scored_outputs": outputs,
            "predicted": predicted,
        }

    def _scores_per_sequence(self, params: Any, batch: tasks.TaskBatch, *, network: Any = None):
        logits = (network or self.network).apply(params, batch.inputs_BxTxI)
        return (
            tasks.cost_bits_per_sequence(logits, batch),
            tasks.sequence_errors(logits, batch),
            tasks.scored_outputs(batch),
            (batch.mask_BxT.sum(-1) > 0).astype(jnp.float32),
            jnp.argmax(logits, axis=-1).astype(jnp.int32),  # the label, for classification
        )

    def evaluate(self, state: SamState, *, step: int, quick: bool, progress: Any) -> dict:
        """The paper's cost and error rate on held-out sequences at the level reached."""
        config = self.config
        num = int(config.eval.num_sequences)
        batch_size = int(config.eval.batch_size)
        if quick:
            num = min(num, batch_size)
        summary: dict[str, Any] = {
            "task": config.task,
            "memory": self.spec.kind,
            "num_words": self.spec.num_words,
            "unit": "bits/sequence",
        }
        if self.babi:
            return self._evaluate_babi(state, summary, quick=quick)
        level = int(jax.device_get(state.curriculum.max_level))
        data = None
        if config.task == "omniglot":
            data = self._omniglot(str(config.eval.split))
        batches = tasks.eval_batches(
            int(config.seed),
            level=level,
            num_sequences=num,
            batch_size=batch_size,
            params=self.params_task,
            data=data,
        )
        scores = self._score_batches(state.params, batches)
        predicted = scores.pop("predicted")
        counted_per_sequence = scores["scored_outputs"] / scores["num_sequences"]
        if tasks.is_classification(self.params_task):
            chance_bits = counted_per_sequence * math.log2(level)
            baseline = {"name": f"uniform guess among the {level} labels", "bits": chance_bits}
        else:
            baseline = {"name": "uniform guess of each target bit", "bits": counted_per_sequence}
        summary.update(
            scores,
            curriculum_level=level,
            split=f"held-out sequences at level {level}"
            + (f" ({config.eval.split} characters)" if data is not None else ""),
            data_source=f"generated {config.task} sequences (eval stream of seed {config.seed})"
            if data is None
            else f"Omniglot {config.eval.split} split",
            num_examples=scores["num_sequences"],
            baseline={
                "name": baseline["name"],
                "cost_bits_per_sequence": baseline["bits"],
                "error_rate": 0.5 if not tasks.is_classification(self.params_task) else None,
            },
        )
        if config.task == "associative_recall":
            summary["error_rate_floor"] = self._recall_floor(
                batches, level, scores["scored_outputs"]
            )
            summary.update(self._generalisation(state, level, num=num, quick=quick))
        if config.task == "omniglot":
            summary["error_rate_by_instance"] = errors_by_instance(
                batches, predicted, int(config.data.instances_per_class)
            )
        return summary

    def _recall_floor(self, batches: list[tasks.TaskBatch], level: int, outputs: float) -> float:
        """The bit error rate of the best possible answers: items that repeat hide the answer."""
        errors = sum(
            float(tasks.recall_floor_errors(b, level=level, params=self.params_task).sum())
            for b in batches
        )
        return errors / max(outputs, 1.0)

    def _generalisation(self, state: SamState, level: int, *, num: int, quick: bool) -> dict:
        """Error rates at longer recall lengths; the longest answered within the allowed error."""
        config = self.config
        factors = [float(f) for f in config.eval.generalisation_factors]
        if quick:
            factors = factors[:1]
        # The parameters do not depend on N: longer sequences may read a larger memory.
        words = int(config.eval.generalisation_num_words) or self.spec.num_words
        network = self.network.clone(spec=dataclasses.replace(self.spec, num_words=words))
        table, best = [], level
        for factor in factors:
            batches = tasks.recall_generalisation_batches(
                int(config.seed),
                trained_level=level,
                factor=factor,
                num_sequences=num,
                batch_size=int(config.eval.batch_size),
                params=self.params_task,
            )
            length = max(tasks.min_level(self.params_task), round(factor * level))
            scores = self._score_batches(state.params, batches, network=network)
            del scores["predicted"]
            scores["error_rate_floor"] = self._recall_floor(
                batches, length, scores["scored_outputs"]
            )
            table.append({"items": length, "factor": factor, **scores})
            if scores["error_rate"] <= float(config.eval.generalisation_max_error):
                best = max(best, length)
        return {
            "max_generalised_length": best,
            "generalisation_num_words": words,
            "generalisation": table,
        }

    def _evaluate_babi(self, state: SamState, summary: dict, *, quick: bool) -> dict:
        """Per-task and mean error over the test questions; failed tasks have error > 5%."""
        batch_size = int(self.config.eval.batch_size)
        batches = tasks.babi_eval_batches(
            self.babi_arrays["test"], batch_size=batch_size, vocab_size=self.output_size
        )
        if quick:
            batches = batches[:2]
        score = self.jitted("score", self._scores_per_sequence)
        names = list(self.babi_data.task_names)
        wrong, count, costs = np.zeros(len(names)), np.zeros(len(names)), []
        for batch, task_B in batches:
            cost_B, errors_B, _, real_B, _ = jax.device_get(score(state.params, batch))
            real = task_B >= 0
            np.add.at(wrong, task_B[real], errors_B[real])
            np.add.at(count, task_B[real], 1)
            costs.append(cost_B[real_B > 0])
        cost_N = np.concatenate(costs)
        seen = count > 0
        error_T = np.where(seen, wrong / np.maximum(count, 1), np.nan)
        answers = self.babi_arrays["train"]["answers"]
        majority = float(np.bincount(np.asarray(answers)).max() / len(answers))
        summary.update(
            cost_bits_per_sequence=float(cost_N.mean()),
            cost_bits_per_sequence_stderr=float(cost_N.std(ddof=1) / math.sqrt(len(cost_N))),
            error_rate=float(wrong.sum() / count.sum()),
            mean_task_error=float(np.nanmean(error_T)),
            failed_tasks=int(np.sum(error_T[seen] > 0.05)),
            per_task_error={n: float(e) for n, e, s in zip(names, error_T, seen, strict=True) if s},
            split="test",
            data_source=f"bAbI task files in {self.config.data.dir}",
            num_examples=int(count.sum()),
            baseline={
                "name": "the most frequent training answer",
                "error_rate": 1.0 - majority,
            },
        )
        return summary

    # ---- samples -----------------------------------------------------------------------------

    def sample(self, state: SamState, out_dir: str, *, step: int, progress: Any) -> dict[str, str]:
        """Inputs, targets and predicted outputs of held-out sequences (PNG; bAbI: text)."""
        config = self.config
        os.makedirs(out_dir, exist_ok=True)
        num = int(config.sample.num_sequences)
        if self.babi:
            return self._sample_babi(state, out_dir, step=step, num=num)
        level = int(jax.device_get(state.curriculum.max_level))
        data = self._omniglot(str(config.eval.split)) if config.task == "omniglot" else None
        [batch] = tasks.eval_batches(
            int(config.seed) + 1,
            level=level,
            num_sequences=num,
            batch_size=num,
            params=self.params_task,
            data=data,
        )
        logits = self.jitted("logits", self.network.apply)(state.params, batch.inputs_BxTxI)
        path = os.path.join(out_dir, f"{config.task}_step{step}_level{level}.png")
        save_sequences_png(path, batch, np.asarray(logits), title=f"{self.spec.kind}, step {step}")
        return {"sequences": path}

    def _sample_babi(self, state: SamState, out_dir: str, *, step: int, num: int) -> dict:
        [(batch, task_B), *_] = tasks.babi_eval_batches(
            self.babi_arrays["test"], batch_size=num, vocab_size=self.output_size
        )
        logits = self.jitted("logits", self.network.apply)(state.params, batch.inputs_BxTxI)
        vocab = self.babi_data.vocab
        words = np.argmax(np.asarray(batch.inputs_BxTxI), -1)
        lines = []
        for b in range(num):
            mask = np.asarray(batch.mask_BxT[b]) > 0
            if not mask.any():
                continue
            t = int(np.argmax(mask))
            story = " ".join(vocab[w] for w in words[b, : t + 1] if vocab[w])
            guess = vocab[int(np.argmax(np.asarray(logits)[b, t]))]
            truth = vocab[int(np.asarray(batch.targets_BxTxO)[b, t])]
            lines.append(
                f"[{self.babi_data.task_names[task_B[b]]}] {story}\n  -> {guess} ({truth})"
            )
        path = os.path.join(out_dir, f"babi_step{step}.txt")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return {"answers": path}


def errors_by_instance(
    batches: list[tasks.TaskBatch], predicted: list[np.ndarray], instances: int
) -> list[dict]:
    """Label error rate at the n-th showing of a character in its episode (n = 1, 2, ...).

    The first showing can only be guessed; later ones measure one-shot learning (Santoro et al.
    2016 report these accuracies).
    """
    wrong, count = np.zeros(instances), np.zeros(instances)
    for batch, predicted_BxT in zip(batches, predicted, strict=True):
        labels = np.asarray(batch.targets_BxTxO)
        mask = np.asarray(batch.mask_BxT) > 0
        same_BxTxT = labels[:, :, None] == labels[:, None, :]
        earlier_TxT = np.tril(np.ones((labels.shape[1],) * 2, bool))
        shown_BxT = (same_BxTxT & earlier_TxT & mask[:, None, :]).sum(-1)  # 1 = first showing
        wrong_BxT = predicted_BxT != labels
        for n in range(instances):
            at = mask & (shown_BxT == n + 1)
            wrong[n] += wrong_BxT[at].sum()
            count[n] += at.sum()
    return [
        {"instance": n + 1, "error_rate": float(w / c) if c else None, "count": int(c)}
        for n, (w, c) in enumerate(zip(wrong, count, strict=True))
    ]


def save_sequences_png(path: str, batch: tasks.TaskBatch, logits: np.ndarray, *, title: str) -> str:
    """One column per sequence: input, target and predicted output over time (as the NTM paper)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inputs = np.asarray(batch.inputs_BxTxI)
    targets = np.asarray(batch.targets_BxTxO)
    mask = np.asarray(batch.mask_BxT)
    classes = targets.ndim == 2
    if classes:  # one-hot the labels and the predicted label
        num = logits.shape[-1]
        targets = np.eye(num)[targets] * mask[..., None]
        predicted = np.eye(num)[logits.argmax(-1)] * mask[..., None]
    else:
        predicted = (1.0 / (1.0 + np.exp(-logits))) * mask[..., None]
    count = inputs.shape[0]
    fig, axes = plt.subplots(3, count, figsize=(3 * count, 6), squeeze=False)
    for b in range(count):
        real = int(np.max(np.nonzero(inputs[b].any(-1) | (mask[b] > 0))[0], initial=0)) + 1
        for row, (name, array) in enumerate(
            (("input", inputs[b]), ("target", targets[b]), ("output", predicted[b]))
        ):
            ax = axes[row, b]
            ax.imshow(array[:real].T, aspect="auto", cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if b == 0:
                ax.set_ylabel(name)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


METHOD = SAM
