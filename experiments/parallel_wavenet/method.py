"""Parallel WaveNet through the one runner: the teacher WaveNet, the speaker classifier, the student.

The models and losses are in deepgen/parallel_wavenet (van den Oord et al., arXiv:1711.10433, and
the WaveNet of arXiv:1609.03499); the speech in deepgen/data/speech.py. Audio is 16-bit: value v
is the bin centre -1 + 2 (v + 32768) / 65535 of the discretised logistic's 65,536 bins.

model.kind="teacher": random clips of data.clip_length samples with their log-mel frames and
speaker ids; the loss is the NLL of every sample given the past (nats per sample). Eval:
`nll_bits_per_sample` on held-out clips beside `baseline_bits_per_sample`, the same output
distribution (a discretised mixture of 10 logistics) fitted to the training samples with no
context (order 0); `samples_per_second` of cached generation at batch 1.

model.kind="classifier": the same clips labelled with their speaker; cross-entropy. It is the
frozen network of the student's perceptual loss. Eval: held-out accuracy beside chance.

model.kind="student": the IAF distilled from the teacher in config.teacher_workdir (and, with
distill.perceptual_weight > 0, the classifier in config.classifier_workdir). The loss per sample is
KL(P_S || P_T) estimated with distill.num_samples draws per step (deepgen/parallel_wavenet/
losses.py), minus gamma times the KL to the teacher given another clip's conditioning (the
contrastive loss), plus the power and perceptual losses with their weights. Eval:
`kl_nats_per_sample` to the teacher on held-out conditioning, the power loss,
`samples_per_second` of the student (parallel) and of the teacher (cached) at batch 1.

Samples: WAV files resynthesised from held-out log-mel frames (teacher or student), the real clip
beside them, and spectrogram PNGs of each.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import wave
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from ml_collections import ConfigDict

from deepgen.core import distributed, metrics, plots
from deepgen.core.errors import ConfigError, DataError
from deepgen.core.optim import make_optimizer
from deepgen.core.train_loop import Unit
from deepgen.core.train_state import count_params
from deepgen.core.validate import Checker
from deepgen.data import speech
from deepgen.layers.discretized_logistic import (
    discretized_mix_logistic_log_prob,
    to_bin_centres,
)
from deepgen.parallel_wavenet import generation, losses
from deepgen.parallel_wavenet.classifier import SpeakerClassifier
from deepgen.parallel_wavenet.student import IAFStudent
from deepgen.parallel_wavenet.wavenet import WaveNet, dilation_cycle
from experiments.contract import Method

log = logging.getLogger(__name__)

KINDS = ("teacher", "student", "classifier")
NUM_BINS = losses.NUM_BINS
QUICK_CLIPS = 4
ORDER0_FIT_SAMPLES = 200_000


class WaveState(struct.PyTreeNode):
    """Step, trained parameters, optimiser state and the frozen networks a student needs."""

    step: jax.Array
    params: Any
    opt_state: Any
    frozen: Any = None


def to_unit(audio_int: Any) -> jax.Array:
    """16-bit values (int) -> the discretised logistic's bin centres in [-1, 1]."""
    return to_bin_centres(jnp.asarray(audio_int, jnp.int32) + 32768, NUM_BINS)  # int16 would wrap


def write_wav(path: str, audio_unit: np.ndarray, sample_rate: int) -> str:
    """A 16-bit mono WAV of samples in [-1, 1]."""
    values = np.clip(np.round((np.asarray(audio_unit) + 1.0) * 32767.5 - 32768), -32768, 32767)
    with wave.open(path, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(values.astype("<i2").tobytes())
    return path


def _stderr(values: np.ndarray) -> float | None:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


class ParallelWaveNetMethod(Method):
    """The teacher, the classifier or the student (model.kind)."""

    name = "parallel_wavenet"

    @classmethod
    def validate(cls, config: ConfigDict) -> None:
        """One ConfigError naming the first field whose value is not allowed."""
        check = Checker(config)
        check.common()
        check.optimiser()
        check.one_of("model.kind", KINDS)
        check.one_of("data.source", speech.SOURCES)
        check.positive(
            "data.sample_rate",
            "data.clip_length",
            "data.hop_length",
            "data.frame_length",
            "data.num_mels",
            "teacher.residual_features",
            "teacher.gate_features",
            "teacher.skip_features",
            "teacher.num_layers",
            "teacher.dilation_cycle",
            "teacher.num_mixtures",
            "teacher.kernel_size",
            "student.residual_features",
            "student.gate_features",
            "student.kernel_size",
            "student.dilation_cycle",
            "classifier.features",
            "distill.num_samples",
            "eval.clip_length",
            "eval.batch_size",
            "eval.generate_samples",
            "eval.order0_steps",
            "sample.num_clips",
            "sample.num_samples",
        )
        check.non_negative(
            "distill.power_weight",
            "distill.perceptual_weight",
            "distill.contrastive_gamma",
            "eval.num_clips",
        )
        check.in_unit_interval("data.heldout_fraction")
        hop = int(config.data.hop_length)
        for field in ("data.clip_length", "eval.clip_length"):
            length = int(
                config.data.clip_length if field == "data.clip_length" else config.eval.clip_length
            )
            check(length % hop == 0, field, f"a multiple of data.hop_length = {hop}")
        check(
            int(config.data.frame_length) >= hop,
            "data.frame_length",
            f">= data.hop_length = {hop}",
        )
        check(int(config.teacher.gate_features) % 2 == 0, "teacher.gate_features", "an even number")
        check(int(config.student.gate_features) % 2 == 0, "student.gate_features", "an even number")
        layers = tuple(config.student.flow_layers)
        check(
            len(layers) > 0 and all(int(n) > 0 for n in layers),
            "student.flow_layers",
            "positive layer counts, one per flow",
        )
        check.divisible_by_devices()

    def __init__(self, config: ConfigDict, *, mode: str = "train"):
        super().__init__(config, mode=mode)
        self.kind = str(config.model.kind)
        data = config.data
        self.mel = speech.MelSettings(
            sample_rate=int(data.sample_rate),
            frame_length=int(data.frame_length),
            hop_length=int(data.hop_length),
            num_mels=int(data.num_mels),
        )
        self._corpora: dict[str, speech.SpeechCorpus] = {}
        self.speakers = self._corpus("train").speakers
        self.teacher = self._teacher_model(config)
        s = config.student
        self.student = IAFStudent(
            flow_layers=tuple(int(n) for n in s.flow_layers),
            residual_features=int(s.residual_features),
            gate_features=int(s.gate_features),
            kernel_size=int(s.kernel_size),
            dilation_cycle_length=int(s.dilation_cycle),
            hop=self.mel.hop_length,
            num_speakers=len(self.speakers),
            speaker_features=int(config.teacher.speaker_features),
        )
        c = config.classifier
        self.classifier = SpeakerClassifier(
            num_speakers=max(len(self.speakers), 2),
            features=int(c.features),
            dilations=tuple(int(d) for d in c.dilations),
        )
        self.optimizer = make_optimizer(config.opt, int(config.train.num_steps))
        self._frozen: dict[str, Any] | None = None
        if self.kind == "student":  # restored here, outside any trace of init_state
            self.frozen()

    def _teacher_model(self, config: ConfigDict) -> WaveNet:
        t = config.teacher
        return WaveNet(
            residual_features=int(t.residual_features),
            gate_features=int(t.gate_features),
            skip_features=int(t.skip_features),
            kernel_size=int(t.kernel_size),
            dilations=dilation_cycle(int(t.num_layers), int(t.dilation_cycle)),
            num_mixtures=int(t.num_mixtures),
            hop=int(config.data.hop_length),
            num_speakers=len(self.speakers),
            speaker_features=int(t.speaker_features),
        )

    # ---- data --------------------------------------------------------------------------------

    def _corpus(self, split: str) -> speech.SpeechCorpus:
        if split not in self._corpora:
            data = self.config.data
            self._corpora[split] = speech.load_speech(
                split,
                data_dir=data.dir or None,
                source=str(data.source),
                sample_rate=int(data.sample_rate),
                heldout_fraction=float(data.heldout_fraction),
            )
        return self._corpora[split]

    def batches(self):
        """Random clips with their log-mel frames and speakers (speech.training_iterator)."""
        config = self.config
        batch = int(config.train.batch_size)
        corpus = self._corpus("train")
        clip = int(config.data.clip_length)
        if corpus.lengths.max() < clip:
            raise DataError(
                f"{corpus.source} has no utterance of data.clip_length={clip} samples; use "
                "shorter clips"
            )
        return speech.training_iterator(
            corpus,
            clip_length=clip,
            global_batch_size=batch,
            seed=int(config.seed),
            process_rows=distributed.process_slice(batch),
            mel=self.mel,
        )

    def _heldout_clips(self, quick: bool) -> dict[str, np.ndarray]:
        """Consecutive non-overlapping clips of the eval split's utterances, mel sliced per clip."""
        config = self.config
        corpus = self._corpus(str(config.eval.split))
        length, hop = int(config.eval.clip_length), self.mel.hop_length
        limit = QUICK_CLIPS if quick else int(config.eval.num_clips)
        audio, mel, speakers = [], [], []
        for utterance, speaker in zip(corpus.utterances, corpus.speaker_ids, strict=True):
            frames = speech.utterance_log_mel(utterance, self.mel)
            for start in range(0, len(utterance) - length + 1, length):
                audio.append(np.asarray(utterance[start : start + length], np.int32))
                mel.append(frames[start // hop : (start + length) // hop])
                speakers.append(int(speaker))
                if limit and len(audio) >= limit:
                    break
            if limit and len(audio) >= limit:
                break
        if not audio:
            raise DataError(
                f"{corpus.source} has no {config.eval.split} utterance of eval.clip_length="
                f"{length} samples; use shorter clips"
            )
        return {
            "audio": np.stack(audio),
            "mel": np.stack(mel).astype(np.float32),
            "speaker": np.asarray(speakers, np.int32),
            "source": corpus.source,
            "split": str(config.eval.split),
        }

    # ---- state -------------------------------------------------------------------------------

    def unit(self) -> Unit:
        """One optimiser step on train.batch_size clips."""
        return Unit("steps", 1, int(self.config.train.batch_size))

    def _dummy(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        hop = self.mel.hop_length
        return (
            jnp.zeros((1, 2 * hop), jnp.float32),
            jnp.zeros((1, 2, self.mel.num_mels), jnp.float32),
            jnp.zeros((1,), jnp.int32),
        )

    def _restore_frozen(self, which: str) -> Any:
        """The parameters of the teacher or classifier trained in config.<which>_workdir."""
        workdir = str(self.config[f"{which}_workdir"])
        path = os.path.join(workdir, "config.json")
        if not os.path.isfile(path):
            raise DataError(
                f"{which}_workdir={workdir} has no config.json: train the {which} there first "
                f"(--config=configs/parallel_wavenet.py:{which}_cpu --workdir={workdir})"
            )
        with open(path) as f:
            other = ConfigDict(json.load(f))
        if other.model.kind != which:
            raise ConfigError(
                f"{which}_workdir={workdir} holds a {other.model.kind}, not a {which}"
            )
        for field in ("sample_rate", "hop_length", "frame_length", "num_mels"):
            if int(other.data[field]) != int(self.config.data[field]):
                raise ConfigError(
                    f"the {which} in {workdir} has data.{field}={other.data[field]}, this run "
                    f"{self.config.data[field]}: use the same audio settings"
                )
        method = ParallelWaveNetMethod(other, mode="eval")
        if method.speakers != self.speakers:
            raise ConfigError(
                f"the {which} in {workdir} knows speakers {method.speakers}, this data "
                f"{self.speakers}: train both on the same data"
            )
        if which == "teacher":
            self.teacher = method.teacher  # the teacher's sizes come from its own config
        else:
            self.classifier = method.classifier
        return method.restore(workdir).params

    def frozen(self) -> dict[str, Any]:
        """The frozen teacher (and classifier) of a student, restored once."""
        if self._frozen is None:
            perceptual = float(self.config.distill.perceptual_weight) > 0
            for which in ("teacher", "classifier") if perceptual else ("teacher",):
                if not self.config[f"{which}_workdir"]:
                    why = " (or set distill.perceptual_weight=0)" if which == "classifier" else ""
                    raise ConfigError(
                        f"{which}_workdir is not set: a student needs the workdir of a trained "
                        f"{which}, --config.{which}_workdir=DIR{why}"
                    )
            frozen = {"teacher": self._restore_frozen("teacher")}
            if float(self.config.distill.perceptual_weight) > 0:
                frozen["classifier"] = self._restore_frozen("classifier")
            self._frozen = frozen
        return self._frozen

    def init_state(self, rng: jax.Array) -> WaveState:
        """Fresh parameters and optimiser state (a student also holds its frozen networks)."""
        audio, mel, speaker = self._dummy()
        frozen = None
        if self.kind == "teacher":
            params = self.teacher.init(rng, audio, mel, speaker)["params"]
        elif self.kind == "classifier":
            params = self.classifier.init(rng, audio)["params"]
        else:
            params = self.student.init(rng, audio, mel, speaker)["params"]
            frozen = self.frozen()
        return WaveState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.optimizer.init(params),
            frozen=frozen,
        )

    # ---- losses ------------------------------------------------------------------------------

    def teacher_nats(self, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        """-log P(x_t | x_<t, c) per sample: B x T nats."""
        audio = to_unit(batch["audio"])
        out = self.teacher.apply({"params": params}, audio, batch["mel"], batch["speaker"])
        return losses.teacher_nll(params_BxTx3M=out, audio_BxT=audio)

    def distillation_terms(
        self, params: Any, frozen: Any, batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> dict[str, jax.Array]:
        """The student's loss terms per clip (B,): KL, cross-entropy and entropy in nats per
        sample, the power and perceptual losses per clip, and the weighted total."""
        distill = self.config.distill
        mel, speaker = batch["mel"], batch["speaker"]
        real = to_unit(batch["audio"])
        batch_size, length = real.shape
        z_rng, draws_rng = jax.random.split(rng)
        z = jax.random.logistic(z_rng, (batch_size, length))
        x, mean_total, log_scale_total = self.student.apply({"params": params}, z, mel, speaker)
        teacher_out = self.teacher.apply({"params": frozen["teacher"]}, x, mel, speaker)
        noise = jax.random.logistic(draws_rng, (int(distill.num_samples), batch_size, length))
        kl, cross_entropy, entropy = losses.distillation_kl(
            mean_total_BxT=mean_total,
            log_scale_total_BxT=log_scale_total,
            teacher_params_BxTx3M=teacher_out,
            noise_NxBxT=noise,
        )
        terms = {
            "kl": kl.mean(axis=-1),
            "cross_entropy": cross_entropy.mean(axis=-1),
            "entropy": entropy.mean(axis=-1),
        }
        total = terms["kl"]
        gamma = float(distill.contrastive_gamma)
        if gamma > 0:
            mismatched = self.teacher.apply(
                {"params": frozen["teacher"]},
                x,
                jnp.roll(mel, 1, axis=0),
                jnp.roll(speaker, 1, axis=0),
            )
            other_kl, _, _ = losses.distillation_kl(
                mean_total_BxT=mean_total,
                log_scale_total_BxT=log_scale_total,
                teacher_params_BxTx3M=mismatched,
                noise_NxBxT=noise,
            )
            terms["mismatched_kl"] = other_kl.mean(axis=-1)
            total = losses.contrastive_kl(
                matched_kl_BxT=kl, mismatched_kl_BxT=other_kl, gamma=gamma
            ).mean(axis=-1)
        terms["power"] = losses.power_loss(
            generated_BxT=x,
            real_BxT=real,
            frame_length=int(self.config.data.frame_length),
            hop_length=self.mel.hop_length,
            exponent=float(distill.power_exponent),
        )
        total = total + float(distill.power_weight) * terms["power"]
        if float(distill.perceptual_weight) > 0:
            classify = lambda audio: self.classifier.apply({"params": frozen["classifier"]}, audio)[
                1
            ]
            terms["perceptual"] = losses.perceptual_loss(
                generated_features=classify(x), real_features=classify(real)
            )
            total = total + float(distill.perceptual_weight) * terms["perceptual"]
        terms["loss"] = total
        terms["student_std"] = jnp.broadcast_to(x.std(), (batch_size,))
        return terms

    def train_step(
        self, state: WaveState, batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> tuple[WaveState, dict]:
        """One optimiser step of the teacher, the classifier or the student."""
        rng = jax.random.fold_in(rng, state.step)

        def loss_fn(params):
            if self.kind == "teacher":
                nats = self.teacher_nats(params, batch).mean()
                return nats, {"nats_per_sample": nats, "bits_per_sample": nats / math.log(2.0)}
            if self.kind == "classifier":
                logits, _ = self.classifier.apply({"params": params}, to_unit(batch["audio"]))
                labels = batch["speaker"]
                nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                accuracy = (jnp.argmax(logits, axis=-1) == labels).mean()
                return nll, {"accuracy": accuracy}
            terms = self.distillation_terms(params, state.frozen, batch, rng)
            means = {k: v.mean() for k, v in terms.items()}
            return means.pop("loss"), means

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
        )
        return new_state, {"loss": loss, "grad_norm": optax.tree_utils.tree_norm(grads), **aux}

    def describe(self) -> list[str]:
        """The data and the model."""
        abstract = jax.eval_shape(self.init_state, jax.random.key(0))
        corpus = self._corpus("train")
        what = {
            "teacher": f"teacher WaveNet, {len(self.teacher.dilations)} layers, receptive field "
            f"{self.teacher.receptive_field} samples",
            "classifier": f"speaker classifier over {len(self.speakers)} speakers",
            "student": f"IAF student of flows {tuple(self.student.flow_layers)}",
        }[self.kind]
        return [
            f"training data: {corpus.source} ({corpus.duration_s:.1f} s at "
            f"{corpus.sample_rate} Hz, speakers {list(self.speakers)})",
            f"model: {what}, {count_params(abstract.params):,} parameters on "
            f"{jax.device_count()} devices",
        ]

    # ---- evaluation --------------------------------------------------------------------------

    def eval_tag(self) -> str:
        """The split."""
        return str(self.config.eval.split)

    def _batched(self, clips: Mapping[str, np.ndarray], fn: Any, progress: Any) -> np.ndarray:
        """fn over fixed-size batches of the clips (padded), concatenated: one row per clip."""
        batch = int(self.config.eval.batch_size)
        num = len(clips["audio"])
        tracker = progress("eval", -(-num // batch), unit="batches")
        out = []
        for start in range(0, num, batch):
            chunk = {k: clips[k][start : start + batch] for k in ("audio", "mel", "speaker")}
            pad = batch - len(chunk["audio"])
            chunk = {k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for k, v in chunk.items()}
            out.append(np.asarray(jax.device_get(fn(chunk)))[: batch - pad])
            tracker.advance()
        return np.concatenate(out).astype(np.float64)

    def _order0_bits(self, heldout_audio: np.ndarray) -> dict:
        """The teacher's output distribution with no context, fitted to training samples."""
        corpus = self._corpus("train")
        rng = np.random.default_rng(0)
        pool = np.concatenate(corpus.utterances)
        train = to_unit(rng.choice(pool, size=min(ORDER0_FIT_SAMPLES, len(pool)), replace=False))
        num_mixtures = int(self.config.teacher.num_mixtures)
        spread = jnp.linspace(-0.5, 0.5, num_mixtures)
        params = {
            "logits": jnp.zeros(num_mixtures),
            "means": spread * float(jnp.std(train)),
            "log_scales": jnp.full(num_mixtures, jnp.log(jnp.std(train) + 1e-4) - 1.0),
        }

        def nats(p, x):
            return -discretized_mix_logistic_log_prob(
                x, p["logits"], p["means"], p["log_scales"], num_bins=NUM_BINS
            ).mean()

        optimizer = optax.adam(0.02)
        opt_state = optimizer.init(params)

        @jax.jit
        def fit_step(p, s):
            value, grads = jax.value_and_grad(nats)(p, train)
            updates, s = optimizer.update(grads, s, p)
            return optax.apply_updates(p, updates), s, value

        for _ in range(int(self.config.eval.order0_steps)):
            params, opt_state, _ = fit_step(params, opt_state)
        heldout = float(nats(params, to_unit(heldout_audio.reshape(-1))))
        return {
            "name": "the same discretised mixture of logistics with no context (order 0), "
            f"fitted to {len(train):,} training samples ({self.config.eval.order0_steps} Adam "
            "steps)",
            "bits_per_sample": heldout / math.log(2.0),
        }

    def _teacher_speed(self, params: Any, clips: Mapping[str, np.ndarray]) -> float:
        """Samples per second of cached teacher generation at batch 1 (compiled first)."""
        count = int(self.config.eval.generate_samples)
        hop = self.mel.hop_length
        frames = -(-count // hop)
        mel = jnp.asarray(np.resize(clips["mel"][0], (frames, self.mel.num_mels))[None])
        speaker = jnp.asarray(clips["speaker"][:1])
        teacher = self.teacher

        def run(params, mel, speaker, key):
            condition = teacher.apply(
                {"params": params}, mel, speaker, count, method=WaveNet.condition
            )
            return generation.generate(teacher, params, condition, key, num_samples=count, batch=1)

        fn = self.jitted(f"teacher_generate_{count}", run)
        key = jax.random.key(0)
        jax.block_until_ready(fn(params, mel, speaker, key))
        start = time.perf_counter()
        jax.block_until_ready(fn(params, mel, speaker, key))
        return count / (time.perf_counter() - start)

    def _student_speed(self, params: Any, clips: Mapping[str, np.ndarray]) -> float:
        """Samples per second of the student at batch 1 on one held-out clip (compiled first)."""
        student = self.student
        fn = self.jitted(
            "student_one",
            lambda p, z, m, s: student.apply({"params": p}, z, m, s)[0],
        )
        length = clips["audio"].shape[1]
        z = jax.random.logistic(jax.random.key(0), (1, length))
        args = (params, z, jnp.asarray(clips["mel"][:1]), jnp.asarray(clips["speaker"][:1]))
        jax.block_until_ready(fn(*args))
        start = time.perf_counter()
        repeats = 3
        for _ in range(repeats):
            jax.block_until_ready(fn(*args))
        return repeats * length / (time.perf_counter() - start)

    def evaluate(self, state: WaveState, *, step: int, quick: bool, progress: Any) -> dict:
        """The kind's held-out numbers (module docstring)."""
        del step
        clips = self._heldout_clips(quick)
        common = {
            "split": clips["split"],
            "data_source": clips["source"],
            "num_examples": len(clips["audio"]),
            "clip_samples": int(clips["audio"].shape[1]),
            "sample_rate": self.mel.sample_rate,
        }
        if self.kind == "teacher":
            fn = self.jitted("teacher_nats", lambda p, b: self.teacher_nats(p, b).mean(axis=-1))
            nats_N = self._batched(clips, lambda b: fn(state.params, b), progress)
            bits_N = nats_N / math.log(2.0)
            return {
                "nll_bits_per_sample": float(bits_N.mean()),
                "nll_bits_per_sample_stderr": _stderr(bits_N),
                "receptive_field": self.teacher.receptive_field,
                "samples_per_second": self._teacher_speed(state.params, clips),
                "unit": "bits/sample",
                **common,
                "baseline": self._order0_bits(clips["audio"]),
            }
        if self.kind == "classifier":
            fn = self.jitted(
                "classify",
                lambda p, b: (
                    jnp.argmax(
                        self.classifier.apply({"params": p}, to_unit(b["audio"]))[0], axis=-1
                    )
                    == b["speaker"]
                ),
            )
            correct_N = self._batched(clips, lambda b: fn(state.params, b), progress)
            counts = np.bincount(clips["speaker"], minlength=len(self.speakers))
            return {
                "accuracy": float(correct_N.mean()),
                "accuracy_stderr": _stderr(correct_N),
                "task": f"speaker identification over {list(self.speakers)}",
                "unit": "accuracy",
                **common,
                "baseline": {
                    "name": "always the most frequent held-out speaker",
                    "accuracy": float(counts.max() / counts.sum()),
                },
            }
        frozen = state.frozen
        key = jax.random.key(int(self.config.seed) + 7000)
        fn = self.jitted(
            "student_terms",
            lambda p, b: jnp.stack(
                [self.distillation_terms(p, frozen, b, key)[k] for k in ("kl", "power", "entropy")],
                axis=-1,
            ),
        )
        rows = self._batched(clips, lambda b: fn(state.params, b), progress)
        # The baseline: the same student at initialisation (the runner's first state), same clips.
        initial = self.init_state(jax.random.key(int(self.config.seed))).params
        initial_rows = self._batched(clips, lambda b: fn(initial, b), progress)
        teacher_speed = self._teacher_speed(frozen["teacher"], clips)
        student_speed = self._student_speed(state.params, clips)
        return {
            "kl_nats_per_sample": float(rows[:, 0].mean()),
            "kl_nats_per_sample_stderr": _stderr(rows[:, 0]),
            "power_loss": float(rows[:, 1].mean()),
            "student_entropy_nats_per_sample": float(rows[:, 2].mean()),
            "samples_per_second": student_speed,
            "teacher_samples_per_second": teacher_speed,
            "speedup_over_teacher": student_speed / teacher_speed,
            "distill_draws_per_step": int(self.config.distill.num_samples),
            "unit": "nats/sample",
            **common,
            "baseline": {
                "name": "the same student at initialisation (seed of the run), the same clips",
                "kl_nats_per_sample": float(initial_rows[:, 0].mean()),
                "power_loss": float(initial_rows[:, 1].mean()),
            },
        }

    def after_train(self, workdir: str) -> dict[str, str]:
        """The training curve: the teacher's NLL, the classifier's loss or the student's KL."""
        metric = {"teacher": "bits_per_sample", "classifier": "loss", "student": "kl"}[self.kind]
        title = {
            "teacher": "teacher WaveNet: NLL (bits per sample)",
            "classifier": "speaker classifier: cross-entropy",
            "student": "student: KL(P_S || P_T) (nats per sample)",
        }[self.kind]
        curve = plots.save_loss_curve(
            metrics.read_metrics(workdir),
            os.path.join(workdir, "samples", f"{self.kind}_curve.png"),
            metric=metric,
            title=title,
        )
        return {f"{self.kind} training curve": curve}

    def format_eval(self, report: Mapping[str, Any]) -> str:
        """The kind's number beside its baseline, in one line."""
        if self.kind == "teacher":
            return (
                f"{report['nll_bits_per_sample']:.3f} bits/sample on {report['num_examples']} "
                f"{report['split']} clips; order-0 {report['baseline']['bits_per_sample']:.3f}; "
                f"cached generation {report['samples_per_second']:.0f} samples/s"
            )
        if self.kind == "classifier":
            return (
                f"speaker accuracy {report['accuracy']:.3f} on {report['num_examples']} clips "
                f"(majority {report['baseline']['accuracy']:.3f})"
            )
        return (
            f"KL to the teacher {report['kl_nats_per_sample']:.3f} nats/sample, power loss "
            f"{report['power_loss']:.4g}; student {report['samples_per_second']:.0f} samples/s, "
            f"teacher (cached) {report['teacher_samples_per_second']:.0f}"
        )

    # ---- samples -----------------------------------------------------------------------------

    def sample(self, state: WaveState, out_dir: str, *, step: int, progress: Any) -> dict:
        """WAVs resynthesised from held-out log-mel frames, the real clips, spectrogram PNGs."""
        config = self.config
        clips = self._heldout_clips(quick=False)
        count = min(int(config.sample.num_clips), len(clips["audio"]))
        hop = self.mel.hop_length
        length = min(int(config.sample.num_samples), clips["audio"].shape[1]) // hop * hop
        mel = jnp.asarray(clips["mel"][:count, : length // hop])
        speaker = jnp.asarray(clips["speaker"][:count])
        real = np.asarray(to_unit(clips["audio"][:count, :length]))
        key = jax.random.fold_in(jax.random.key(int(config.seed)), 6000)
        tracker = progress("sample", 1, unit="passes")
        if self.kind == "classifier":
            logits, _ = self.classifier.apply({"params": state.params}, jnp.asarray(real))
            guesses = np.asarray(jnp.argmax(logits, axis=-1))
            lines = [
                f"clip {n}: speaker {self.speakers[clips['speaker'][n]]}, guessed "
                f"{self.speakers[guesses[n]] if guesses[n] < len(self.speakers) else guesses[n]}"
                for n in range(count)
            ]
            tracker.advance()
            if jax.process_index() != 0:
                return {}
            os.makedirs(out_dir, exist_ok=True)
            path = os.path.join(out_dir, f"step{step}_speakers.txt")
            with open(path, "w") as f:
                f.write("\n".join(lines) + "\n")
            return {"speaker guesses on held-out clips": path}
        if self.kind == "teacher":
            teacher = self.teacher

            def run(params, mel, speaker, key):
                condition = teacher.apply(
                    {"params": params}, mel, speaker, length, method=WaveNet.condition
                )
                return generation.generate(
                    teacher, params, condition, key, num_samples=length, batch=count
                )

            generated = self.jitted(f"sample_teacher_{count}_{length}", run)(
                state.params, mel, speaker, key
            )
        else:
            z = jax.random.logistic(key, (count, length))
            generated = self.student.apply({"params": state.params}, z, mel, speaker)[0]
        generated = np.clip(np.asarray(jax.device_get(generated)), -1.0, 1.0)
        tracker.advance()
        if jax.process_index() != 0:
            return {}
        os.makedirs(out_dir, exist_ok=True)
        written = {}
        rate = self.mel.sample_rate
        for n in range(count):
            name = self.speakers[int(clips["speaker"][n])]
            for what, audio in (("generated", generated[n]), ("real", real[n])):
                stem = os.path.join(out_dir, f"step{step}_{self.kind}_{what}_{n}_{name}")
                written[f"{what} clip {n} ({name}) wav"] = write_wav(stem + ".wav", audio, rate)
                written[f"{what} clip {n} ({name}) spectrogram"] = self._spectrogram_png(
                    audio, stem + ".png"
                )
        return written

    def _spectrogram_png(self, audio: np.ndarray, path: str) -> str:
        """The log-mel spectrogram of a clip as a PNG (time across, low frequencies at the bottom)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        log_mel = np.asarray(speech.log_mel_with(self.mel, np.asarray(audio, np.float32)[None]))[0]
        figure, axis = plt.subplots(figsize=(6, 2.5))
        axis.imshow(log_mel.T, origin="lower", aspect="auto", cmap="magma", vmin=-11.5, vmax=2.0)
        axis.set_xlabel(f"frame ({self.mel.hop_length} samples)")
        axis.set_ylabel("mel band")
        figure.tight_layout()
        figure.savefig(path, dpi=80)
        plt.close(figure)
        return path


METHOD = ParallelWaveNetMethod
