"""Data families for BFN on discrete data: what differs between binarized MNIST and text8.

A family says how to load its data, how the network reads theta and t, how to turn nats per
example into the paper's unit (nats per image for MNIST, bits per character for text8), what
baseline to print, and how to write samples. Everything else (the flow, the losses, the train
step, the evaluation protocol and the sampler) is shared in experiments/bfn/method.py.
"""

import functools
import math
import os
from collections.abc import Callable

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


def _require_discrete_flow(config: ConfigDict, num_classes: int) -> None:
    """The discrete-data fields: bfn.num_classes matches the data and beta(1) > 0."""
    if config.bfn.num_classes != num_classes:
        raise ConfigError(
            f"config.bfn.num_classes={config.bfn.num_classes!r} is not allowed: "
            f"{num_classes} for {config.data.name}"
        )
    if not config.bfn.beta1 > 0:
        raise ConfigError(
            f"config.bfn.beta1={config.bfn.beta1!r} is not allowed: a positive number"
        )


def _require_source(config: ConfigDict, sources: tuple[str, ...]) -> None:
    """config.data.source is one the family's loader knows."""
    if config.data.source not in sources:
        raise ConfigError(
            f"config.data.source={config.data.source!r} is not allowed: one of {sources}"
        )


def _epoch_batches(
    config: ConfigDict,
    num_examples: int,
    make_batch: Callable[[np.ndarray, slice, np.random.Generator], dict],
) -> EpochIterator:
    """Shuffled epochs of config.train.batch_size examples; this process makes its rows only."""
    batch_size = int(config.train.batch_size)
    return EpochIterator(
        num_examples=num_examples,
        global_batch_size=batch_size,
        make_batch=make_batch,
        seed=int(config.seed),
        process_rows=distributed.process_slice(batch_size),
    )


def _inpaint_top_half(config: ConfigDict) -> bool:
    """Whether config.sample.inpaint asks for the top halves of test images clamped ('' = no)."""
    mode = config.sample.get("inpaint", "")
    if not mode:
        return False
    if mode != "top_half":
        raise ConfigError(f"config.sample.inpaint={mode!r} is not allowed: '' or 'top_half'")
    return True


def _top_half_known(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask, values) that clamp the top half of the rows of each image in values."""
    mask = np.zeros_like(values, dtype=bool)
    mask[:, : values.shape[1] // 2] = True
    return mask, values


class BinaryImages:
    """Dynamically binarised MNIST (K = 2): the official one-channel input [2 theta_1 - 1, 2t - 1]."""

    datasets = ("mnist", "binarized_mnist")
    data_type = "discrete"
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
        _require_discrete_flow(config, self.num_classes)
        _require_source(config, mnist.SOURCES)

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

        return _epoch_batches(self.config, data.num_examples, make_batch)

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
        if not _inpaint_top_half(self.config):
            return None
        test = self.load("test")
        count = min(num_samples, test.num_examples)
        digits = np.resize(self.eval_examples(test, 0)[:count], (num_samples, *self.variable_shape))
        return _top_half_known(digits)

    def write_samples(
        self, samples: np.ndarray, probs: np.ndarray, out_dir: str, stem: str
    ) -> dict[str, str]:
        """A PNG grid of the binary samples and one of p(pixel = 1) at t = 1."""
        grid = plots.save_image_grid(
            samples.astype(np.float32), os.path.join(out_dir, f"samples_{stem}.png")
        )
        mean_grid = plots.save_image_grid(
            probs[..., 1], os.path.join(out_dir, f"probabilities_{stem}.png")
        )
        return {"samples": grid, "output probabilities at t=1": mean_grid}


class Text8:
    """Characters of text8 (K = 27) in windows of seq_len; the official non-causal transformer."""

    datasets = ("text8",)
    data_type = "discrete"
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

        _require_discrete_flow(config, self.num_classes)
        _require_source(config, text8.SOURCES)
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
            attention_impl=m.get("attention_impl", "einsum"),
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

        return _epoch_batches(self.config, self.num_examples(data), make_batch)

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
        self, samples: np.ndarray, probs: np.ndarray, out_dir: str, stem: str
    ) -> dict[str, str]:
        """One sampled window per line in a text file."""
        from deepgen.data import text8

        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"samples_{stem}.txt")
        with open(path, "w") as f:
            for row in samples:
                f.write(text8.decode(row) + "\n")
        return {"samples": path}


class ColourImages:
    """CIFAR-10 (32x32x3) as continuous or discretised data in [-1, 1] with K bins (Secs. 4-5, 7.2).

    bfn.output = "discretised": the network gives (mu_eps, ln sigma_eps) per subpixel and p_O is
    a discretised normal; "continuous": it predicts the noise and p_O is a point mass. Pixels are
    quantised to bfn.num_bins levels (256: the 8-bit data itself; 16: 4-bit data) and mapped to the
    bin centres, as the official data pipeline does, so both report a discrete NLL in bits/dim.
    """

    datasets = ("cifar10",)
    metric = "bits_per_dim"
    unit = "bits/dim"
    count_name = "num_images"
    train_metric = "loss_bits_per_dim"
    outputs = ("discretised", "continuous")

    def __init__(self, config: ConfigDict):
        from deepgen.data import cifar10

        self.config = config
        self.variable_shape = cifar10.IMAGE_SHAPE
        self.data_type = config.bfn.get("output", "discretised")
        self.num_bins = int(config.bfn.get("num_bins", 256))
        self.num_classes = self.num_bins
        self._bins: dict[int, tuple[object, np.ndarray]] = {}

    def validate(self, config: ConfigDict) -> None:
        """Fields only this family reads."""
        from deepgen.data import cifar10

        if self.data_type not in self.outputs:
            raise ConfigError(
                f"config.bfn.output={self.data_type!r} is not allowed: one of {self.outputs}"
            )
        if self.num_bins not in (16, 256):
            raise ConfigError(f"config.bfn.num_bins={self.num_bins!r} is not allowed: 16 or 256")
        if not 0 < config.bfn.sigma1 < 1:
            raise ConfigError(f"config.bfn.sigma1={config.bfn.sigma1!r} is not allowed: in (0, 1)")
        _require_source(config, cifar10.SOURCES)
        if config.model.embedding_dim % config.model.num_groups:
            raise ConfigError(
                f"config.model.embedding_dim={config.model.embedding_dim} is not divisible by "
                f"config.model.num_groups={config.model.num_groups}"
            )

    def make_model(self) -> nn.Module:
        """The VDM U-Net of the official CIFAR-10 configs."""
        from deepgen.bfn.unet_vdm import UNetVDM

        m = self.config.model
        return UNetVDM(
            out_per_channel=2 if self.data_type == "discretised" else 1,
            embedding_dim=m.embedding_dim,
            num_blocks=m.num_blocks,
            num_heads=m.num_heads,
            dropout=m.dropout,
            num_groups=m.num_groups,
            fourier_exponents=tuple(float(e) for e in m.fourier_exponents),
            dtype=DTYPES[m.dtype],
        )

    def model_inputs(self, mu_BxHxWxC: jax.Array, t_B: jax.Array) -> tuple[jax.Array, ...]:
        """The network reads the input mean mu and t (rho is a function of t)."""
        return mu_BxHxWxC, t_B

    def load(self, split: str):
        """The configured split: the CIFAR-10 archive, TFDS, or the embedded photos."""
        from deepgen.data import cifar10

        data = self.config.data
        return cifar10.load_cifar10(split, data_dir=data.dir or None, source=data.source)

    def describe(self, data) -> str:
        """Provenance and size for logs and eval.json."""
        return f"{data.description} ({len(data.images_NxHxWxC):,} images)"

    def num_examples(self, data) -> int:
        """Training images."""
        return len(data.images_NxHxWxC)

    def _as_bins(self, data) -> np.ndarray:
        """The images as bin centres in [-1, 1], float32, computed once per loaded split."""
        from deepgen.data import cifar10

        cached = self._bins.get(id(data))
        if cached is None or cached[0] is not data:
            bins = cifar10.pixels_to_bfn(data.images_NxHxWxC, self.num_bins)
            cached = self._bins[id(data)] = (data, np.asarray(bins, np.float32))
        return cached[1]

    def train_batches(self, data) -> EpochIterator:
        """Shuffled epochs of images as bin centres in [-1, 1] (no flips, as the paper)."""
        images = self._as_bins(data)

        def make_batch(indices: np.ndarray, rows: slice, rng: np.random.Generator) -> dict:
            return {"x": images[indices[rows]]}

        return _epoch_batches(self.config, len(images), make_batch)

    def eval_examples(self, data, repeat: int) -> np.ndarray:
        """The test images; repeats redraw t and the flow."""
        del repeat
        return self._as_bins(data)

    def from_nats(self, nats_per_example: float) -> float:
        """Nats per image to bits per dimension (3072 dimensions)."""
        return nats_per_example / math.prod(self.variable_shape) / math.log(2.0)

    def baseline(self, train, test) -> tuple[str, float]:
        """An independent histogram over the K levels of every subpixel, fit to the training set."""
        counts = np.bincount(self._level(train).ravel(), minlength=self.num_bins) + 1.0
        log2_p = np.log2(counts / counts.sum())
        return (
            f"one histogram over the {self.num_bins} levels, fit to the training subpixels",
            float(-np.mean(log2_p[self._level(test).ravel()])),
        )

    def _level(self, data) -> np.ndarray:
        from deepgen.bfn import continuous

        return np.asarray(continuous.bin_index(self._as_bins(data), self.num_bins))

    def known_positions(self, num_samples: int) -> tuple[np.ndarray, np.ndarray] | None:
        """With sample.inpaint = "top_half": the top halves of test images, clamped."""
        if not _inpaint_top_half(self.config):
            return None
        images = self._as_bins(self.load("test"))
        return _top_half_known(np.resize(images[:num_samples], (num_samples, *self.variable_shape)))

    def write_samples(
        self, samples: np.ndarray, probs: np.ndarray, out_dir: str, stem: str
    ) -> dict[str, str]:
        """A PNG grid of the samples (bin centres mapped back to 8-bit colours)."""
        from deepgen.data import cifar10

        pixels = cifar10.bfn_to_pixels(samples, self.num_bins)
        path = plots.save_image_grid(
            pixels.astype(np.float32) / 255.0,
            os.path.join(out_dir, f"samples_{stem}.png"),
        )
        return {"samples": path}


FAMILIES = {
    name: family for family in (BinaryImages, Text8, ColourImages) for name in family.datasets
}


def family_for(config: ConfigDict):
    """The family that config.data.name belongs to."""
    name = config.data.name
    if name not in FAMILIES:
        raise ConfigError(f"config.data.name={name!r} is not allowed: one of {tuple(FAMILIES)}")
    return FAMILIES[name](config)
