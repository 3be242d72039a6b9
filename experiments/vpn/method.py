"""Video Pixel Networks through the one runner: Moving MNIST and action-conditional Robotic Pushing.

The model, losses and samplers are in deepgen/vpn (Kalchbrenner et al., arXiv:1610.00527); the data
in deepgen/data/moving_mnist.py and deepgen/data/robot_push.py.

data.name="moving_mnist" (Sec. 5.1). Training: sequences of two bouncing digits generated on the fly
from the MNIST train digits, sequence n a function of (seed, n), so batches resume exactly. The loss
is the soft-target Bernoulli cross-entropy of every frame from train.first_scored_frame on, each
given the true frames before it, per pixel (the gradient's scale; the unit is nats per frame).
Eval: `nats_per_frame` of frames data.context_frames .. T - 1 (the paper's 10 predicted frames) of
held-out sequences built from MNIST test digits (or Srivastava's standard test set with
data.test_set="standard", read from data.test_dir, else data.dir), its standard error over sequences, the floor H(z, z) of the same
targets (`entropy_floor_nats_per_frame`; 86.3 on the standard set), and
`baseline_nats_per_frame`: each predicted frame as the last context frame smoothed towards the mean
pixel, (1 - s) z_last + s m, with s and m fitted on training sequences.

data.name="robot_push" (Sec. 5.2): RGB frames, 256 values per channel; the ConvLSTM also takes each
step's action, and the robot's state while it is known (the context frames). Eval:
`nats_per_dimension` of the generated frames' positions given the true past (Table 3's unit), beside
the train split's marginal distribution of intensities as the baseline.

Samples: future frames generated pixel by pixel with the cached decoder after the context frames of
held-out sequences, as a PNG strip (context | truth | samples per sequence) and a GIF.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from ml_collections import ConfigDict
from PIL import Image

from deepgen.core import distributed
from deepgen.core.errors import DataError
from deepgen.core.optim import make_optimizer
from deepgen.core.plots import save_image_grid
from deepgen.core.train_loop import Unit
from deepgen.core.train_state import count_params
from deepgen.core.validate import Checker, field_value
from deepgen.data import moving_mnist, robot_push
from deepgen.data.pipeline import EpochIterator
from deepgen.vpn import losses, sampling
from deepgen.vpn import model as vpn
from experiments.contract import Method

log = logging.getLogger(__name__)

DATASETS = ("moving_mnist", "robot_push")
TEST_SETS = ("generated", "standard")
PUSH_SPLITS = robot_push.SPLITS
QUICK_SEQUENCES = 8
HELDOUT_BINARISE_STREAM = 1_000_033  # np.random.default_rng([test seed, this]) binarises inputs
BASELINE_FIT_SEQUENCES = 64
# Smoothing weights s tried for the copy baseline: near 0 (copy) to near 1 (the mean pixel alone).
SMOOTHING_GRID = np.concatenate([np.geomspace(1e-4, 0.5, 30), np.linspace(0.55, 0.99, 12)])


class VPNState(struct.PyTreeNode):
    """Step, parameters and optimiser state."""

    step: jax.Array
    params: Any
    opt_state: Any


class VPNMethod(Method):
    """The VPN on Moving MNIST (soft-target Bernoulli) or Robotic Pushing (256-way, actions)."""

    name = "vpn"

    @classmethod
    def validate(cls, config: ConfigDict) -> None:
        """One ConfigError naming the first field whose value is not allowed."""
        check = Checker(config)
        check.common()
        check.optimiser()
        check.one_of("data.name", DATASETS)
        check.one_of("model.unit", vpn.UNITS)
        check.boolean("model.pixel_dependencies")
        check.boolean("model.context_every_unit")
        check.boolean("data.binarize_inputs")
        check.positive(
            "model.channels",
            "model.hidden",
            "model.decoder_blocks",
            "model.lstm_features",
            "model.kernel_size",
            "model.first_kernel_size",
            "data.num_frames",
            "data.context_frames",
            "eval.batch_size",
            "sample.num_sequences",
        )
        check.non_negative("eval.num_sequences")
        for field in ("model.kernel_size", "model.first_kernel_size"):
            check(int(field_value(config, field)) % 2 == 1, field, "an odd number")
        dilations = tuple(config.model.encoder_dilations)
        check(all(int(d) >= 1 for d in dilations), "model.encoder_dilations", "dilations >= 1")
        frames = int(config.data.num_frames)
        check(
            int(config.data.context_frames) < frames,
            "data.context_frames",
            f"< data.num_frames = {frames}",
        )
        check(
            1 <= int(config.train.first_scored_frame) < frames,
            "train.first_scored_frame",
            f"1 .. data.num_frames - 1 = {frames - 1}",
        )
        if config.data.name == "moving_mnist":
            check.positive("data.canvas", "data.digit_side", "data.num_digits")
            check(
                config.data.digit_side <= config.data.canvas,
                "data.digit_side",
                f"<= data.canvas = {config.data.canvas}",
            )
            check.one_of("data.test_set", TEST_SETS)
            check.non_negative("data.speed")
            if config.data.test_set == "standard":
                standard = (moving_mnist.NUM_FRAMES, moving_mnist.CANVAS)
                check(
                    (int(config.data.num_frames), int(config.data.canvas)) == standard,
                    "data.test_set",
                    f"'generated' unless data.num_frames, data.canvas = {standard} (the standard "
                    "sequences' size)",
                )
                check(
                    bool(config.data.test_dir or config.data.dir),
                    "data.test_dir",
                    f"a folder holding {moving_mnist.NPY_NAME} or TFDS moving_mnist (or data.dir)",
                )
        else:
            check.positive("data.image_side")
            check(
                not config.data.binarize_inputs,
                "data.binarize_inputs",
                "False for robot_push (its frames are 256-way colour values)",
            )
            check.one_of("eval.split", PUSH_SPLITS)
        check.divisible_by_devices()

    def __init__(self, config: ConfigDict, *, mode: str = "train"):
        super().__init__(config, mode=mode)
        self.mnist = config.data.name == "moving_mnist"
        self.binarize_inputs = self.mnist and bool(config.data.binarize_inputs)
        m = config.model
        channels = 1 if self.mnist else 3
        self.model = vpn.VideoPixelNetwork(
            image_channels=channels,
            num_values=1 if self.mnist else 256,
            channels=int(m.channels),
            hidden=int(m.hidden),
            encoder_dilations=tuple(int(d) for d in m.encoder_dilations),
            decoder_blocks=int(m.decoder_blocks),
            lstm_features=int(m.lstm_features),
            unit=str(m.unit),
            kernel_size=int(m.kernel_size),
            first_kernel_size=int(m.first_kernel_size),
            pixel_dependencies=bool(m.pixel_dependencies),
            context_every_unit=bool(m.context_every_unit),
            condition_features=0
            if self.mnist
            else robot_push.ACTION_DIM + robot_push.STATE_DIM + 1,
        )
        self.optimizer = make_optimizer(config.opt, int(config.train.num_steps))
        self._cache: dict[str, Any] = {}
        if mode == "train":
            self._train_source()

    # ---- data --------------------------------------------------------------------------------

    def _moving(self, split: str) -> moving_mnist.MovingMnist:
        key = f"moving_{split}"
        if key not in self._cache:
            data = self.config.data
            self._cache[key] = moving_mnist.MovingMnist.from_mnist(
                split,
                data_dir=data.dir or None,
                source=str(data.source),
                seed=int(self.config.seed) if split == "train" else moving_mnist.FIXED_TEST_SEED,
                num_digits=int(data.num_digits),
                num_frames=int(data.num_frames),
                canvas=int(data.canvas),
                digit_side=int(data.digit_side),
                speed=float(data.speed) or None,
            )
        return self._cache[key]

    def _push(self, split: str, limit: int | None = None) -> robot_push.PushData:
        key = f"push_{split}_{limit}"
        if key not in self._cache:
            data = self.config.data
            self._cache[key] = robot_push.load_push_sequences(
                data.dir,
                split,
                num_frames=int(data.num_frames),
                image_side=int(data.image_side),
                max_sequences=limit,
            )
        return self._cache[key]

    def _train_source(self) -> str:
        if self.mnist:
            moving = self._moving("train")
            return (
                f"Moving MNIST generated from {moving.num_source_digits:,} train digits of "
                f"{moving.source}"
            )
        push = self._push("train", int(self.config.data.max_train_sequences) or None)
        if push.num_sequences < int(self.config.train.batch_size):
            raise DataError(
                f"{push.source} has {push.num_sequences} sequences, fewer than "
                f"train.batch_size={self.config.train.batch_size}"
            )
        return f"{push.source} ({push.num_sequences:,} sequences)"

    def _conditions(self, push_batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """Per step: the action, the state while it is known (context frames) and that flag."""
        actions, states = push_batch["actions"], push_batch["states"]
        known = (np.arange(actions.shape[1]) < int(self.config.data.context_frames)).astype(
            np.float32
        )
        known_BxTx1 = np.broadcast_to(known[None, :, None], (*actions.shape[:2], 1))
        return np.concatenate([actions, states * known_BxTx1, known_BxTx1], axis=-1).astype(
            np.float32
        )

    def _video_batch(self, push_batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        frames = np.asarray(push_batch["frames"])
        if frames.dtype == np.uint8:
            frames = frames.astype(np.float32) / 255.0
        return {"frames": frames.astype(np.float32), "conditions": self._conditions(push_batch)}

    def batches(self) -> EpochIterator:
        """Moving MNIST generated from (seed, index), or epochs of pushing sequences."""
        config = self.config
        batch = int(config.train.batch_size)
        rows = distributed.process_slice(batch)
        if self.mnist:
            inner = moving_mnist.training_iterator(
                self._moving("train"),
                global_batch_size=batch,
                seed=int(config.seed),
                process_rows=rows,
            )
            return _Renamed(inner, lambda b: {"frames": b["x"]})
        push = self._push("train", int(config.data.max_train_sequences) or None)
        inner = robot_push.push_batches(
            push, batch_size=batch, seed=int(config.seed), process_rows=rows, float_frames=True
        )
        return _Renamed(inner, self._video_batch)

    def _heldout(self, quick: bool) -> tuple[dict[str, np.ndarray], str, str]:
        """Held-out videos (and conditions), their split name and source."""
        config = self.config
        limit = QUICK_SEQUENCES if quick else int(config.eval.num_sequences)
        if self.mnist:
            if config.data.test_set == "standard":
                split = moving_mnist.load_moving_mnist(
                    "test",
                    data_dir=config.data.test_dir or config.data.dir,
                    num_sequences=limit or None,
                )
                return self._with_inputs(split.videos_NxTxHxWx1), "standard test", split.source
            moving = self._moving("test")
            count = limit or int(config.eval.num_sequences) or 1000
            what = (
                f"Moving MNIST from {moving.num_source_digits} test digits of {moving.source}, "
                f"seed {moving_mnist.FIXED_TEST_SEED}"
            )
            return self._with_inputs(moving.batch(np.arange(count))), "held-out test digits", what
        split = str(config.eval.split)
        push = self._push(split, limit or None)
        batch = {"frames": push.frames_NxTxHxWx3, "actions": push.actions_NxTxA}
        batch["states"] = push.states_NxTxS
        return self._video_batch(batch), split, push.source

    def _with_inputs(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """Held-out videos; with data.binarize_inputs also the binary frames the network sees.

        The binarisation is drawn once from a fixed generator, so every eval and sample of a run
        sees the same binary inputs (the targets stay the grey frames).
        """
        videos = {"frames": frames}
        if self.binarize_inputs:
            rng = np.random.default_rng([moving_mnist.FIXED_TEST_SEED, HELDOUT_BINARISE_STREAM])
            videos["inputs"] = (rng.random(frames.shape, dtype=np.float32) < frames).astype(
                np.float32
            )
        return videos

    # ---- training ----------------------------------------------------------------------------

    def unit(self) -> Unit:
        """One optimiser step on train.batch_size videos."""
        return Unit("steps", 1, int(self.config.train.batch_size))

    def init_state(self, rng: jax.Array) -> VPNState:
        """Fresh parameters and optimiser state."""
        side = 8
        frames = jnp.zeros((1, 2, side, side, self.model.image_channels), jnp.float32)
        conditions = None
        if self.model.condition_features:
            conditions = jnp.zeros((1, 2, self.model.condition_features), jnp.float32)
        params = self.model.init(rng, frames, conditions)["params"]
        return VPNState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=self.optimizer.init(params)
        )

    def frame_nats(self, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        """Nats of frames 1 .. T - 1 of each video given the true past: B x (T - 1).

        The network sees batch["inputs"] when given (binary frames), and is scored against the
        grey batch["frames"].
        """
        inputs = batch.get("inputs", batch["frames"])
        logits = self.model.apply({"params": params}, inputs, batch.get("conditions"))
        return losses.frame_nats(logits=logits, frames=batch["frames"][:, 1:])

    def train_step(
        self, state: VPNState, batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> tuple[VPNState, dict]:
        """One step on the mean nats per scored dimension (binary inputs drawn from rng if set)."""
        if self.binarize_inputs:
            frames = batch["frames"]
            step_rng = jax.random.fold_in(rng, state.step)
            binary = jax.random.uniform(step_rng, frames.shape, frames.dtype) < frames
            batch = {**batch, "inputs": binary.astype(frames.dtype)}
        first = int(self.config.train.first_scored_frame)
        dims = math.prod(batch["frames"].shape[2:])

        def loss_fn(params):
            nats_BxF = self.frame_nats(params, batch)[:, first - 1 :]
            return nats_BxF.mean() / dims, nats_BxF.mean()

        (loss, per_frame), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
        )
        return new_state, {
            "loss": loss,
            "nats_per_frame": per_frame,
            "grad_norm": optax.tree_utils.tree_norm(grads),
        }

    def describe(self) -> list[str]:
        """The data and the model."""
        abstract = jax.eval_shape(self.init_state, jax.random.key(0))
        m = self.model
        return [
            f"training data: {self._train_source()}",
            f"model: VPN, {len(m.encoder_dilations)} encoder blocks (dilations "
            f"{tuple(m.encoder_dilations)}), ConvLSTM {m.lstm_features}, {m.decoder_blocks} "
            f"masked decoder blocks, {m.unit} units, 2c = {m.channels}, "
            f"{count_params(abstract.params):,} parameters on {jax.device_count()} devices",
        ]

    # ---- evaluation --------------------------------------------------------------------------

    def eval_tag(self) -> str:
        """The held-out set."""
        if self.mnist:
            return f"moving_mnist_{self.config.data.test_set}"
        return str(self.config.eval.split)

    def _heldout_frame_nats(
        self, params: Any, videos: Mapping[str, np.ndarray], progress
    ) -> np.ndarray:
        """N x (T - 1) nats of each held-out frame given its true past, in fixed-size batches."""
        batch = int(self.config.eval.batch_size)
        num = len(videos["frames"])
        tracker = progress("eval", -(-num // batch), unit="batches")
        fn = self.jitted("frame_nats", self.frame_nats)
        out = []
        for start in range(0, num, batch):
            chunk = {k: v[start : start + batch] for k, v in videos.items()}
            pad = batch - len(chunk["frames"])  # one compiled shape
            chunk = {k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for k, v in chunk.items()}
            out.append(np.asarray(jax.device_get(fn(params, chunk)))[: batch - pad])
            tracker.advance()
        return np.concatenate(out).astype(np.float64)

    def _copy_baseline(self, frames_NxTxHxWx1: np.ndarray) -> dict:
        """The smoothed copy-last-frame baseline, (s, m) fitted on training sequences."""
        context = int(self.config.data.context_frames)
        train = self._moving("train").batch(np.arange(BASELINE_FIT_SEQUENCES))
        marginal = float(np.clip(train.mean(), 1e-6, 1 - 1e-6))

        def nats(frames, smoothing):
            per_frame = losses.copy_last_frame_nats(
                last_frame=jnp.asarray(frames[:, context - 1]),
                frames=jnp.asarray(frames[:, context:]),
                marginal=marginal,
                smoothing=float(smoothing),
            )
            return np.asarray(per_frame, np.float64).mean(axis=1)

        fitted = [nats(train, s).mean() for s in SMOOTHING_GRID]
        smoothing = float(SMOOTHING_GRID[int(np.argmin(fitted))])
        per_sequence = nats(frames_NxTxHxWx1, smoothing)
        return {
            "name": "copy the last context frame, smoothed towards the mean pixel",
            "nats_per_frame": float(per_sequence.mean()),
            "nats_per_frame_stderr": _stderr(per_sequence),
            "smoothing": smoothing,
            "mean_pixel": marginal,
            "fitted_on": f"{BASELINE_FIT_SEQUENCES} training sequences",
        }

    def evaluate(self, state: VPNState, *, step: int, quick: bool, progress: Any) -> dict:
        """nats_per_frame (Moving MNIST) or nats_per_dimension (pushing); module docstring."""
        del step
        videos, split, source = self._heldout(quick)
        context = int(self.config.data.context_frames)
        nats_NxF = self._heldout_frame_nats(state.params, videos, progress)[:, context - 1 :]
        per_sequence = nats_NxF.mean(axis=1)
        frames = videos["frames"]
        num, num_frames = frames.shape[:2]
        common = {
            "split": split,
            "data_source": source,
            "num_examples": int(num),
            "scored_frames": f"{context} .. {num_frames - 1} of each sequence, given the true past",
        }
        if not self.mnist:
            dims = math.prod(frames.shape[2:])
            per_dim = per_sequence / dims
            histogram = self._train_histogram()
            values = np.round(frames[:, context:] * 255).astype(np.int64)
            baseline = float(-np.log(histogram[values]).mean())
            return {
                "nats_per_dimension": float(per_dim.mean()),
                "nats_per_dimension_stderr": _stderr(per_dim),
                "unit": "nats/dimension",
                **common,
                "baseline": {
                    "name": "the train split's marginal distribution of intensities",
                    "nats_per_dimension": baseline,
                },
            }
        targets = jnp.asarray(frames[:, context:])
        floor_N = np.asarray(
            losses.soft_target_entropy(targets=targets).sum(axis=(2, 3, 4)).mean(axis=1),
            np.float64,
        )
        baseline = self._copy_baseline(frames)
        return {
            "nats_per_frame": float(per_sequence.mean()),
            "nats_per_frame_stderr": _stderr(per_sequence),
            "entropy_floor_nats_per_frame": float(floor_N.mean()),
            "gap_to_floor_nats_per_frame": float((per_sequence - floor_N).mean()),
            "baseline_nats_per_frame": baseline["nats_per_frame"],
            "per_frame_nats": [float(v) for v in nats_NxF.mean(axis=0)],
            "unit": "nats/frame",
            **common,
            "baseline": baseline,
        }

    def _train_histogram(self) -> np.ndarray:
        frames = self._push("train", int(self.config.data.max_train_sequences) or None)
        counts = np.bincount(frames.frames_NxTxHxWx3.reshape(-1), minlength=256) + 1.0
        return counts / counts.sum()

    def format_eval(self, report: Mapping[str, Any]) -> str:
        """The paper's number beside its floor and baseline, in one line."""
        if not self.mnist:
            return (
                f"{report['nats_per_dimension']:.4f} nats/dimension on {report['num_examples']} "
                f"{report['split']} sequences; intensity marginal "
                f"{report['baseline']['nats_per_dimension']:.4f}"
            )
        return (
            f"{report['nats_per_frame']:.2f} +- {report['nats_per_frame_stderr'] or 0:.2f} "
            f"nats/frame on {report['num_examples']} {report['split']} sequences; floor "
            f"{report['entropy_floor_nats_per_frame']:.2f}, copy-last-frame baseline "
            f"{report['baseline_nats_per_frame']:.2f}"
        )

    # ---- samples -----------------------------------------------------------------------------

    def _sample_fn(self) -> Any:
        model = self.model

        def run(params, context_frames, noise, conditions):
            return sampling.generate(model, params, context_frames, noise, conditions, cached=True)

        return self.jitted("sample", run)

    def sample(self, state: VPNState, out_dir: str, *, step: int, progress: Any) -> dict:
        """Future frames of held-out sequences: a PNG strip and a GIF (truth beside samples)."""
        config = self.config
        count = int(config.sample.num_sequences)
        videos, split, _ = self._heldout(quick=False)
        videos = {k: v[:count] for k, v in videos.items()}
        frames = videos["frames"]
        count = len(frames)
        context = int(config.data.context_frames)
        num_future = frames.shape[1] - context
        tracker = progress("sample", 1, unit="passes")
        key = jax.random.fold_in(jax.random.key(int(config.seed)), 5000)
        noise = sampling.draw_noise(
            key, (count, num_future, *frames.shape[2:]), self.model.num_values
        )
        context_inputs = videos.get("inputs", frames)[:, :context]
        generated = np.asarray(
            jax.device_get(
                self._sample_fn()(state.params, context_inputs, noise, videos.get("conditions"))
            )
        )
        tracker.advance()
        if jax.process_index() != 0:
            return {}
        os.makedirs(out_dir, exist_ok=True)
        strip_path = os.path.join(out_dir, f"step{step}_strips.png")
        shown_context = frames[:, max(0, context - num_future) : context]
        rows = []
        for n in range(count):
            rows += [shown_context[n], frames[n, context:], generated[n]]
        width = max(len(r) for r in rows)
        tiles = [np.pad(r, [(0, width - len(r))] + [(0, 0)] * 3) for r in rows]
        save_image_grid(np.concatenate(tiles), strip_path, num_cols=width, scale=2)
        gif_path = os.path.join(out_dir, f"step{step}_video.gif")
        _save_gif(frames[:, context:], generated, gif_path)
        return {
            f"strips of {split} sequences (rows per sequence = context, truth, sample)": strip_path,
            "truth (top) and samples (bottom), animated": gif_path,
        }


def _stderr(values: np.ndarray) -> float | None:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def _save_gif(truth_NxFxHxWxC: np.ndarray, sample_NxFxHxWxC: np.ndarray, path: str) -> None:
    """One GIF frame per time step: the truths side by side over the samples, upscaled 2x."""
    frames = []
    for t in range(truth_NxFxHxWxC.shape[1]):
        top = np.concatenate(list(truth_NxFxHxWxC[:, t]), axis=1)
        bottom = np.concatenate(list(sample_NxFxHxWxC[:, t]), axis=1)
        image = np.round(np.clip(np.concatenate([top, bottom], axis=0), 0, 1) * 255)
        image = image.astype(np.uint8).repeat(2, axis=0).repeat(2, axis=1)
        frames.append(Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=200, loop=0)


class _Renamed:
    """A resumable iterator whose batches pass through a function (state passes through)."""

    def __init__(self, inner: Any, convert: Any):
        self._inner, self._convert = inner, convert

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return self._convert(next(self._inner))

    def get_state(self) -> dict:
        return self._inner.get_state()

    def set_state(self, state: dict) -> None:
        self._inner.set_state(state)


METHOD = VPNMethod
