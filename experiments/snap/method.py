"""SnAp / RTRL / UORO / BPTT on the Copy task and character LM, declared for the one runner.

Menick et al. 2021 (arXiv 2006.07232). One train step is one chunk of `train.chunk_steps` time
steps of every stream (deepgen/snap/online.py: `run_chunk`, a jitted lax.scan of online steps);
`train.num_steps`, `train.log_every` and `ckpt.every` count time steps. Evaluation reports bits
per character on held-out crops (char LM) or the copy length reached and the exact-copy
fraction (Copy); sampling writes text continuations or copy attempts.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from deepgen.core import mesh as mesh_lib
from deepgen.core import metrics, plots
from deepgen.core.errors import ConfigError, UserError
from deepgen.core.optim import make_optimizer
from deepgen.core.train_loop import RepeatedBatch, Unit
from deepgen.core.validate import Checker
from deepgen.data import char_text, copy_task
from deepgen.snap import cells, estimators
from deepgen.snap.online import (
    LN2,
    Carry,
    Model,
    cell_config_for,
    chunk_metrics,
    init_carry,
    make_task,
    readout_logits,
    readout_loss,
    rtrl_influence_bytes,
    run_chunk,
    sequence_log_probs,
    window_length,
)
from experiments.contract import Method

TASKS = ("copy", "charlm")
CORPORA = {"copy": ("copy",), "charlm": char_text.CORPORA}


def validate(config: ConfigDict) -> None:
    """Check values the config types cannot: one ConfigError naming the field and what is allowed."""

    require = Checker(config)
    require.common()
    require.optimiser()
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
    require(config.data.num_symbols >= 2, "data.num_symbols", "an integer >= 2")
    require(config.data.max_length >= 1, "data.max_length", "a positive integer")
    require(config.data.length_spread >= 0, "data.length_spread", "an integer >= 0")
    require(0 <= config.data.curriculum_decay < 1, "data.curriculum_decay", "in [0, 1)")
    require(config.data.curriculum_threshold > 0, "data.curriculum_threshold", "positive")
    require(config.data.seq_len > 0, "data.seq_len", "a positive integer")
    require(config.eval.split in char_text.SPLITS, "eval.split", f"one of {char_text.SPLITS}")
    require(config.eval.num_crops > 0, "eval.num_crops", "a positive integer")
    require(config.eval.full_pass_streams > 0, "eval.full_pass_streams", "a positive integer")
    require(
        config.eval.full_pass_chars >= 0, "eval.full_pass_chars", "0 (all) or a positive integer"
    )
    require(config.eval.batch_size > 0, "eval.batch_size", "a positive integer")
    require(config.eval.num_sequences > 0, "eval.num_sequences", "a positive integer")
    require(config.sample.num_chars > 0, "sample.num_chars", "a positive integer")
    require(config.sample.num_samples > 0, "sample.num_samples", "a positive integer")
    require(config.sample.temperature > 0, "sample.temperature", "a positive number")
    require(
        int(config.mesh.data) in (1, -1) and int(config.mesh.fsdp) in (1, -1),
        "mesh",
        "data=1 (or -1) and fsdp=1 (or -1): SnAp's streams run on one device",
    )
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


class SnAp(Method):
    """One config: data, cell, estimator, optimiser; one train step = one chunk of time steps."""

    name = "snap"
    check_finite = ("loss",)

    @classmethod
    def validate(cls, config: ConfigDict) -> None:
        """See the module-level validate."""
        validate(config)

    def __init__(self, config: ConfigDict, *, mode: str = "train"):
        super().__init__(config, mode=mode)
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
        if self.corpus is not None and mode == "train":
            self.data_tokens = jnp.asarray(self.corpus.tokens_N)
        else:
            self.data_tokens = jnp.zeros((1,), jnp.uint8)
        self.step_rng_data = jax.random.key_data(jax.random.fold_in(jax.random.key(config.seed), 1))
        self._chunk_fns: dict[int, Any] = {}

    def init_carry(self) -> Carry:
        """A fresh carry from the config's seed, jitted (for studies and tests outside the loop)."""
        return jax.jit(self.init_state)(self.init_rng)

    def chunk_fn(self, num_steps: int):
        """The jitted chunk of num_steps time steps (carry donated), made once per length."""
        if num_steps not in self._chunk_fns:
            self._chunk_fns[num_steps] = jax.jit(
                functools.partial(run_chunk, self.model, num_steps), donate_argnums=(0,)
            )
        return self._chunk_fns[num_steps]

    def _load(self, split: str) -> char_text.CharCorpus:
        data = self.config.data
        return char_text.load_char_corpus(data.name, split, data_dir=data.dir, source=data.source)

    # ---- the contract ------------------------------------------------------------------------

    @property
    def mesh(self) -> jax.sharding.Mesh:
        """One device: the streams and their traces are not sharded."""
        if not hasattr(self, "_mesh"):
            self._mesh = mesh_lib.make_mesh(self.config.mesh, num_devices=1)
        return self._mesh

    def unit(self) -> Unit:
        """A train step is one chunk of train.chunk_steps time steps of train.batch_size streams."""
        return Unit(
            "time_steps", int(self.config.train.chunk_steps), int(self.config.train.batch_size)
        )

    def init_state(self, rng: jax.Array) -> Carry:
        """A fresh carry (parameters, optimiser, streams, traces, first episode)."""
        return init_carry(self.model, self.masks, self.initial_params, rng)

    def train_step(self, carry: Carry, batch: Mapping, rng: jax.Array) -> tuple[Carry, dict]:
        """train.chunk_steps online time steps; the chunk's summed metrics."""
        return run_chunk(
            self.model,
            int(self.config.train.chunk_steps),
            carry,
            batch["masks"],
            batch["tokens"],
            jax.random.key_data(rng),
        )

    def batches(self):
        """The same device-resident corpus and masks every step: the step draws its own crops."""
        return RepeatedBatch({"tokens": self.data_tokens, "masks": self.masks})

    def summarize(self):
        """Bits per weighted character over the whole logged window (sums, not means of means)."""

        def summarize(sums: dict, last: dict, count: int) -> dict:
            window = {k: (last[k] if k == "curriculum_length" else v) for k, v in sums.items()}
            return chunk_metrics(window)

        return summarize

    def describe(self) -> list[str]:
        """The data, cell, estimator and update schedule."""
        config = self.config
        lines = [f"training data: {self.corpus.source}"] if self.corpus is not None else []
        schedule = (
            f"online every {config.train.update_every} steps"
            if config.train.online
            else "per-sequence"
        )
        lines.append(
            f"{config.model.cell} cell, {config.model.hidden_size} units, density "
            f"{config.model.density:.3g}, estimator {config.estimator.name}, {schedule} updates"
        )
        return lines

    def after_train(self, workdir: str) -> dict[str, str]:
        """The curve of bits per char (char LM) or of the curriculum length (Copy)."""
        config = self.config
        metric = "curriculum_length" if config.task == "copy" else "bits_per_char"
        curve = plots.save_loss_curve(
            metrics.read_metrics(workdir),
            os.path.join(workdir, "samples", f"{metric}_curve.png"),
            metric=metric,
            title=f"{config.estimator.name} {config.model.cell} on {config.task}: {metric}",
        )
        return {"curve": curve}

    def eval_tag(self) -> str:
        """The split (char LM) or "copy"."""
        return "copy" if self.config.task == "copy" else str(self.config.eval.split)

    def evaluate(self, carry: Carry, *, step: int, quick: bool, progress: Any) -> dict:
        """Bits per char of held-out crops, or the copy length reached and the exact fraction."""
        config = self.config
        num_sequences = int(config.eval.num_sequences)
        num_crops = int(config.eval.num_crops)
        if quick:  # one eval batch of crops, at most 32 copy strings
            num_sequences = min(num_sequences, 32)
            num_crops = min(num_crops, int(config.eval.batch_size))
        summary: dict[str, Any] = {
            "tokens_trained": step * int(config.train.batch_size),
            "estimator": config.estimator.name,
            "cell": config.model.cell,
            "hidden_size": int(config.model.hidden_size),
            "density": float(config.model.density),
            "online": bool(config.train.online),
            "unit": "bits/char",
        }
        if config.task == "copy":
            length = int(jax.device_get(carry.curriculum.length))
            rng = jax.random.fold_in(jax.random.key(config.seed), 5)
            strings, predicted, bits = copy_predictions(self, carry, length, num_sequences, rng)
            exact = float(np.mean(np.all(strings == predicted, axis=1)))
            summary.update(
                copy_length_reached=length,
                copy_bits_per_char_at_length=bits,
                copy_exact_fraction=exact,
                num_sequences=num_sequences,
                num_examples=num_sequences,
                split="fresh random strings",
                data_source=f"copy task, {config.data.num_symbols} symbols",
                baseline={"name": "uniform guess of each bit", "bits_per_char": 1.0},
            )
        else:
            corpus = self._load(config.eval.split)
            report = evaluate_charlm(self, carry, corpus, progress, num_crops=num_crops)
            full_chars = int(config.eval.full_pass_chars)
            if quick:
                full_chars = min(full_chars or corpus.num_tokens, 4096)
            report.update(
                evaluate_charlm_full_pass(
                    self,
                    carry,
                    corpus,
                    streams=int(config.eval.full_pass_streams),
                    max_chars=full_chars,
                )
            )
            unigram = _unigram_bits(
                self._load("train").tokens_N, corpus.tokens_N, len(self.symbols)
            )
            summary.update(
                report,
                num_examples=report["num_crops"],
                baseline={"name": "unigram of the training text", "bits_per_char": unigram},
            )
        return summary

    def sample(self, carry: Carry, out_dir: str, *, step: int, progress: Any) -> dict[str, str]:
        """Copy attempts at the reached length, or text continuations of sample.prompt."""
        config = self.config
        rng = jax.random.fold_in(jax.random.key(config.seed), 4)
        num = int(config.sample.num_samples)
        os.makedirs(out_dir, exist_ok=True)
        if config.task == "copy":
            length = int(jax.device_get(carry.curriculum.length))
            strings, predicted, bits = copy_predictions(self, carry, length, num, rng)
            lines = [f"copy task at curriculum length {length} (step {step}), {bits:.3f} bits/char"]
            for source, copy in zip(strings, predicted, strict=True):
                ok = "ok" if np.array_equal(source, copy) else "wrong"
                lines.append(
                    f"input {''.join(map(str, source))} | output {''.join(map(str, copy))} | {ok}"
                )
            path = os.path.join(out_dir, f"copy_step{step}.txt")
        else:
            byte_of = {s: i for i, s in enumerate(self.symbols) if s}
            prompt = config.sample.prompt or " "
            unknown = [c for c in prompt.encode("utf-8") if bytes([c]) not in byte_of]
            if unknown:
                raise UserError(
                    f"config.sample.prompt={prompt!r} has characters outside the vocabulary "
                    f"({bytes(unknown)!r}); use characters of the training text"
                )
            prompt_ids = np.asarray([byte_of[bytes([c])] for c in prompt.encode("utf-8")], np.int32)
            tokens = sample_text(
                self,
                carry,
                prompt_ids=jnp.asarray(prompt_ids),
                num_chars=int(config.sample.num_chars),
                num=num,
                rng=rng,
            )
            lines = [prompt + char_text.decode(row, self.symbols) for row in tokens]
            temperature = float(config.sample.temperature)
            suffix = "" if temperature == 1.0 else f"_t{temperature:g}"
            path = os.path.join(out_dir, f"samples_step{step}{suffix}.txt")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return {"samples": path}


def _unigram_bits(train_N: np.ndarray, test_N: np.ndarray, vocab: int) -> float:
    """Bits per char of the test text under the add-one unigram of the training text."""
    counts = np.bincount(np.asarray(train_N, np.int64), minlength=vocab).astype(np.float64) + 1.0
    log2p = np.log2(counts / counts.sum())
    return float(-log2p[np.asarray(test_N, np.int64)].mean())


def evaluate_charlm(
    experiment: SnAp,
    carry: Carry,
    corpus: char_text.CharCorpus,
    progress: Any = None,
    *,
    num_crops: int | None = None,
) -> dict:
    """Bits per character of random crops of the split (eval.num_crops), with the standard error."""
    config = experiment.config
    seq_len = int(config.data.seq_len)
    num_crops = int(config.eval.num_crops) if num_crops is None else num_crops
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
    tracker = progress("eval", -(-num_crops // batch)) if progress is not None else None
    for start in range(0, num_crops, batch):
        part = crops_NxL[start : start + batch]
        padded = np.concatenate([part, np.repeat(part[-1:], batch - len(part), axis=0)])
        bits_N.append(np.asarray(crop_bits(carry.params, carry.readout, padded))[: len(part)])
        if tracker is not None:
            tracker.advance()
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


def evaluate_charlm_full_pass(
    experiment: SnAp,
    carry: Carry,
    corpus: char_text.CharCorpus,
    *,
    streams: int,
    max_chars: int = 0,
) -> dict:
    """Bits per character of the whole split read in order, the state carried throughout.

    The usual language-model protocol, beside the random crops of evaluate_charlm (which start
    every crop from a zero state): the split (its first max_chars characters when > 0) is cut
    into `streams` contiguous pieces read in parallel, each from one zero state to its end, so
    only `streams` characters of the split are predicted without context. Every character after
    the first of each piece is scored once.
    """
    tokens_N = np.asarray(corpus.tokens_N)
    if max_chars > 0:
        tokens_N = tokens_N[:max_chars]
    piece = (len(tokens_N) - 1) // streams
    if piece < 1:
        raise UserError(
            f"config.eval.full_pass_streams={streams} is too many for {len(tokens_N)} characters "
            "of the split; lower it"
        )
    inputs_SxL = tokens_N[: streams * piece].reshape(streams, piece)
    targets_SxL = tokens_N[1 : streams * piece + 1].reshape(streams, piece)
    vocab, cell_config = len(experiment.symbols), experiment.cell_config

    @jax.jit
    def stream_nats(params, readout, inputs_SxL, targets_SxL):
        def one(inputs_L, targets_L):
            x_LxV = jax.nn.one_hot(inputs_L, vocab, dtype=jnp.float32)
            log_probs_LxC = sequence_log_probs(
                cell_config, params, experiment.masks, readout, x_LxV
            )
            return -jnp.take_along_axis(log_probs_LxC, targets_L[:, None], axis=-1)[:, 0]

        return jax.vmap(one)(inputs_SxL, targets_SxL)

    nats_SxL = np.asarray(
        stream_nats(carry.params, carry.readout, jnp.asarray(inputs_SxL), jnp.asarray(targets_SxL)),
        np.float64,
    )
    return {
        "bits_per_char_full_pass": float(nats_SxL.mean() / LN2),
        "full_pass_num_chars": int(nats_SxL.size),
        "full_pass_streams": streams,
    }


def copy_predictions(
    experiment: SnAp, carry: Carry, length: int, num: int, rng: jax.Array
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


def sample_text(
    experiment: SnAp, carry: Carry, *, prompt_ids: np.ndarray, num_chars: int, num: int, rng
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


METHOD = SnAp
