"""Data families for BFN on discrete data: what differs between binarized MNIST and text8.

A family says how to load its data, how the network reads theta and t, how to turn nats per
example into the paper's unit (nats per image for MNIST, bits per character for text8), what
baseline to print, and how to write samples. Everything else (the flow, the losses, the train
step, the evaluation protocol and the sampler) is shared in experiments/bfn/train.py.
"""

import functools
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from deepgen.bfn import discrete
from deepgen.bfn.model import UNet
from deepgen.core import distributed, plots
from deepgen.core.errors import ConfigError
from deepgen.data import mnist
from deepgen.data.pipeline import EpochIterator

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class BinaryImages:
    """Dynamically binarised MNIST (K = 2): the official one-channel input [2 theta_1 - 1, 2t - 1]."""

    datasets = ("mnist", "binarized_mnist")
    num_classes = 2
    metric = "nll_nats_per_image"
    unit = "nats/image"
    count_name = "num_images"
    train_metric = "loss_nats_per_image"

    def __init__(self, config: ConfigDict):
        self.config = config
        self.variable_shape = (mnist.IMAGE_SIDE, mnist.IMAGE_SIDE)

    def validate(self, config: ConfigDict) -> None:
        """Fields only this family reads."""
        if config.data.source not in mnist.SOURCES:
            raise ConfigError(
                f"config.data.source={config.data.source!r} is not allowed: one of {mnist.SOURCES}"
            )

    def make_model(self) -> nn.Module:
        """The improved-diffusion U-Net with one Bernoulli logit per pixel."""
        m = self.config.model
        return UNet(
            out_channels=1,
            model_channels=m.model_channels,
            channel_mult=tuple(m.channel_mult),
            num_res_blocks=m.num_res_blocks,
            attention_resolutions=tuple(m.attention_resolutions),
            num_heads=m.num_heads,
            dropout=m.dropout,
            num_groups=m.num_groups,
            time_scale=m.time_scale,
            dtype=DTYPES[m.dtype],
        )

    def model_inputs(self, theta_BxHxWxK: jax.Array, t_B: jax.Array) -> tuple[jax.Array, ...]:
        """The official MNIST view of theta and t: channels [2 theta_1 - 1, 2t - 1], and t."""
        p1_BxHxW = theta_BxHxWxK[..., 1]
        t_BxHxW = jnp.broadcast_to(t_B[:, None, None], p1_BxHxW.shape)
        return jnp.stack([2.0 * p1_BxHxW - 1.0, 2.0 * t_BxHxW - 1.0], axis=-1), t_B

    def log_probs(self, logits_BxHxWx1: jax.Array) -> jax.Array:
        """One Bernoulli logit per pixel to log-probabilities of the two classes."""
        return discrete.binary_log_probs(logits_BxHxWx1)

    def load(self, split: str) -> mnist.ImageSplit:
        """The configured split: embedded digits, IDX files or TFDS."""
        data = self.config.data
        return mnist.load_mnist(
            split, name=data.name, data_dir=data.dir or None, source=data.source
        )

    def describe(self, data: mnist.ImageSplit) -> str:
        """Provenance and size for logs and eval.json."""
        return f"{data.source} ({data.num_examples} digits)"

    def num_examples(self, data: mnist.ImageSplit) -> int:
        """How many training examples an epoch visits."""
        return data.num_examples

    def train_batches(self, data: mnist.ImageSplit) -> EpochIterator:
        """Shuffled epochs of binarised digits, a fresh Bernoulli draw each time a digit is seen."""
        intensities = data.intensities_NxHxW

        def make_batch(indices: np.ndarray, rows: slice, rng: np.random.Generator) -> dict:
            uniform = rng.random((len(indices), *intensities.shape[1:]), dtype=np.float32)[rows]
            return {"x": (uniform < intensities[indices[rows]]).astype(np.int32)}

        return EpochIterator(
            num_examples=data.num_examples,
            global_batch_size=int(self.config.train.batch_size),
            make_batch=make_batch,
            seed=int(self.config.seed),
            process_rows=distributed.process_slice(int(self.config.train.batch_size)),
        )

    def eval_examples(self, data: mnist.ImageSplit, repeat: int) -> np.ndarray:
        """The test digits binarised afresh for each repeat (the official protocol)."""
        rng = np.random.default_rng([self.config.seed, 3, repeat])
        return mnist.binarize(data.intensities_NxHxW, rng).astype(np.int32)

    def from_nats(self, nats_per_example: float) -> float:
        """Nats per image are the paper's unit already."""
        return nats_per_example

    def baseline(self, train: mnist.ImageSplit, test: mnist.ImageSplit) -> tuple[str, float]:
        """An independent per-pixel Bernoulli fit to the training digits."""
        value = mnist.independent_bernoulli_nll_nats(
            train.intensities_NxHxW, test.intensities_NxHxW
        )
        return "independent per-pixel Bernoulli fit to the training digits", value

    def known_positions(self, num_samples: int) -> tuple[np.ndarray, np.ndarray] | None:
        """With sample.inpaint = "top_half": the top halves of binarised test digits, clamped."""
        mode = self.config.sample.get("inpaint", "")
        if not mode:
            return None
        if mode != "top_half":
            raise ConfigError(f"config.sample.inpaint={mode!r} is not allowed: '' or 'top_half'")
        test = self.load("test")
        count = min(num_samples, test.num_examples)
        digits = np.resize(self.eval_examples(test, 0)[:count], (num_samples, *self.variable_shape))
        mask = np.zeros_like(digits, dtype=bool)
        mask[:, : self.variable_shape[0] // 2] = True
        return mask, digits

    def write_samples(
        self, samples: np.ndarray, probs: np.ndarray, out_dir: str, step: int, n_steps: int
    ) -> dict[str, str]:
        """A PNG grid of the binary samples and one of p(pixel = 1) at t = 1."""
        grid = plots.save_image_grid(
            samples.astype(np.float32), os.path.join(out_dir, f"samples_step{step}_n{n_steps}.png")
        )
        mean_grid = plots.save_image_grid(
            probs[..., 1], os.path.join(out_dir, f"probabilities_step{step}_n{n_steps}.png")
        )
        return {"samples": grid, "output probabilities at t=1": mean_grid}


class Text8:
    """Characters of text8 (K = 27) in windows of seq_len; the official non-causal transformer."""

    datasets = ("text8",)
    num_classes = 27
    metric = "bits_per_char"
    unit = "bits/char"
    count_name = "num_windows"
    train_metric = "loss_bits_per_char"

    def __init__(self, config: ConfigDict):
        self.config = config
        self.variable_shape = (int(config.data.seq_len),)

    def validate(self, config: ConfigDict) -> None:
        """Fields only this family reads."""
        from deepgen.data import text8

        if config.data.source not in text8.SOURCES:
            raise ConfigError(
                f"config.data.source={config.data.source!r} is not allowed: one of {text8.SOURCES}"
            )
        if config.data.seq_len > config.model.max_len:
            raise ConfigError(
                f"config.data.seq_len={config.data.seq_len} is longer than "
                f"config.model.max_len={config.model.max_len}"
            )

    def make_model(self) -> nn.Module:
        """The non-causal GPT of the official text8 config."""
        from deepgen.bfn.transformer import Transformer

        m = self.config.model
        return Transformer(
            vocab_size=self.num_classes,
            num_layers=m.num_layers,
            num_heads=m.num_heads,
            width=m.width,
            dropout=m.dropout,
            max_len=m.max_len,
            dtype=DTYPES[m.dtype],
        )

    def model_inputs(self, theta_BxTxK: jax.Array, t_B: jax.Array) -> tuple[jax.Array, ...]:
        """The transformer reads theta and t directly (its input adapter does the rest)."""
        return theta_BxTxK, t_B

    def log_probs(self, logits_BxTxK: jax.Array) -> jax.Array:
        """A softmax over the 27 logits of each character."""
        return jax.nn.log_softmax(logits_BxTxK.astype(jnp.float32), axis=-1)

    def load(self, split: str):
        """The configured split: embedded Wikipedia text, a text8 file, or the download."""
        from deepgen.data import text8

        data = self.config.data
        return text8.load_text8(split, data_dir=data.dir or None, source=data.source)

    def describe(self, data) -> str:
        """Provenance and size for logs and eval.json."""
        return f"{data.source} ({data.num_tokens:,} characters)"

    def num_examples(self, data) -> int:
        """Training windows: one per start position."""
        return data.num_tokens - self.variable_shape[0] + 1

    def train_batches(self, data) -> EpochIterator:
        """Windows of seq_len characters at shuffled start positions (every offset per epoch)."""
        from deepgen.data import text8

        seq_len = self.variable_shape[0]
        tokens = data.tokens_N

        def make_batch(indices: np.ndarray, rows: slice, rng: np.random.Generator) -> dict:
            return {"x": text8.take_windows(tokens, indices[rows], seq_len).astype(np.int32)}

        return EpochIterator(
            num_examples=self.num_examples(data),
            global_batch_size=int(self.config.train.batch_size),
            make_batch=make_batch,
            seed=int(self.config.seed),
            process_rows=distributed.process_slice(int(self.config.train.batch_size)),
        )

    @functools.cache  # noqa: B019  (one family object per run)
    def _windows(self, data) -> np.ndarray:
        from deepgen.data import text8

        stride = int(self.config.eval.stride) or None
        return text8.eval_windows(data.tokens_N, seq_len=self.variable_shape[0], stride=stride)

    def eval_examples(self, data, repeat: int) -> np.ndarray:
        """Non-overlapping windows by default (eval.stride = 0); stride 1 is the official protocol."""
        del repeat  # the text is fixed; repeats redraw t and the flow
        return self._windows(data).astype(np.int32)

    def from_nats(self, nats_per_example: float) -> float:
        """Nats per window to bits per character."""
        return nats_per_example / self.variable_shape[0] / math.log(2.0)

    def baseline(self, train, test) -> tuple[str, float]:
        """The unigram entropy: the test text's cross-entropy under the training letter counts."""
        from deepgen.data import text8

        return "unigram model of the training text", text8.unigram_entropy_bits(
            train.tokens_N, test.tokens_N
        )

    def known_positions(self, num_samples: int) -> tuple[np.ndarray, np.ndarray] | None:
        """With sample.prompt set: every sample starts with the prompt (text infilling)."""
        from deepgen.data import text8

        prompt = self.config.sample.get("prompt", "")
        if not prompt:
            return None
        seq_len = self.variable_shape[0]
        try:
            tokens = text8.encode(prompt)
        except ValueError as error:
            raise ConfigError(
                f"config.sample.prompt={prompt!r} is not allowed: lowercase a-z and spaces only"
            ) from error
        if len(tokens) > seq_len:
            raise ConfigError(
                f"config.sample.prompt has {len(tokens)} characters; at most data.seq_len={seq_len}"
            )
        mask = np.zeros((num_samples, seq_len), bool)
        values = np.zeros((num_samples, seq_len), np.int32)
        mask[:, : len(tokens)], values[:, : len(tokens)] = True, tokens
        return mask, values

    def write_samples(
        self, samples: np.ndarray, probs: np.ndarray, out_dir: str, step: int, n_steps: int
    ) -> dict[str, str]:
        """One sampled window per line in a text file."""
        from deepgen.data import text8

        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"samples_step{step}_n{n_steps}.txt")
        with open(path, "w") as f:
            for row in samples:
                f.write(text8.decode(row) + "\n")
        return {"samples": path}


FAMILIES = {name: family for family in (BinaryImages, Text8) for name in family.datasets}


def family_for(config: ConfigDict):
    """The family that config.data.name belongs to."""
    name = config.data.name
    if name not in FAMILIES:
        raise ConfigError(f"config.data.name={name!r} is not allowed: one of {tuple(FAMILIES)}")
    return FAMILIES[name](config)
