"""The Kanerva Machine and its VAE baseline through the one runner: episodes, the bound, reading.

The maths is in deepgen/kanerva (the memory, the networks and the episode ELBO); the episodes in
deepgen/kanerva/episodes.py; this file wires them to the core loop (Wu, Wayne, Graves and
Lillicrap, "The Kanerva Machine: A Generative Distributed Memory", arXiv:1804.01756).

Training: one step is one optimiser step on the negative episode ELBO of train.batch_size episodes
of data.episode_length images each (grey images binarised afresh; CIFAR-10's colour images as
bin centres on [-1, 1] under a discretised logistic mixture) (model.kind="kanerva"), or on the VAE's bound over
the same episodes (model.kind="vae": the same encoder, z-posterior MLP and decoder, a N(0, I) prior
and no memory). The unit's examples are images (batch_size * episode_length per step).

Eval (`eval.json`), on the held-out episodes of eval.split (a fixed permutation of the split cut
into floor(N / T) episodes, grey ones binarised eval.repeats times with fixed seeds; colour
episodes are fixed, and the repeats redraw only the model's samples):
* `nll_bound_nats_per_image`: the negative episode ELBO per image (model.episode_elbo with
  eval.num_memory_samples draws of M), averaged over repeats, then over episodes, with its standard
  error over episodes; and its terms reconstruction, kl_y, kl_z and kl_memory (0 for the VAE);
  `nll_bound_nats_per_episode` (T times the per-image bound, the ELBO of the paper's episode)
  and `nll_bound_bits_per_dim`, the same bound in bits per sub-pixel (CIFAR-10's usual unit);
  `nll_bound_nats_per_image_by_episode`, the bound of each held-out episode in order, for paired
  comparisons between runs (the Kanerva Machine and its VAE see the same episodes).
* `iterative_reading_error`: {"noise": [...], "occlusion": [...]}, entry i the error after i
  feedback iterations (i = 0 is the first read), i = 0..eval.read_iterations. The error is the
  mean absolute difference per pixel between the read-out image (`km.decoder_mean`: Bernoulli
  probabilities, or the logistic mixture's mean) and the clean image (the first repeat's
  binarisation), in [0, 1] intensity units (colour differences on [-1, 1] are halved). The
  Kanerva Machine writes the clean episode (`write_episode`) and reads from corrupted copies of
  its images (`iterative_read`, deterministic: the posterior means and M = R); "noise" flips
  each pixel with probability eval.noise (colour: replaces it by a uniform random colour),
  "occlusion" blanks a square of about eval.occlusion of the image. Each iteration feeds back
  the most probable binary image (eval.feedback="binary", grey data; the encoder was trained on
  binary images) or the read-out image itself ("mean"; colour always). The VAE has no memory:
  its "reads" are its own reconstructions (encoder mean, decoder mean) fed back the same way,
  from the same corrupted queries. `corrupted_query_error` is the error of the queries
  themselves, `blank_image_error` that of the constant background image (a read that only fades
  towards blank lowers the error without denoising). Binary data also get
  `iterative_reading_pixel_error`: the fraction of pixels that each read's most probable binary
  image gets wrong, against the query's flipped fraction and the ink fraction (the blank image's).
* Kanerva Machine only, whether reading is addressed by content: `address_cosine_between_images`,
  the mean cosine between the read addresses w = b(mean of q(y|x))^T A of an episode's different
  images (near 1: every image is read at one address, as when q(y|x) has collapsed to the prior),
  and `address_retrieval`: the fraction of noisy queries (eval.noise) whose address is nearest, by
  cosine, to their own image's among the episode's T, against chance 1/T.
* The baseline: the independent per-pixel Bernoulli fit to the training images (colour: an
  independent 256-way histogram per sub-pixel), on the same held-out images. The VAE's `nll_bound_nats_per_image` (a run of a vae_* variant) is the
  comparison the paper makes.

Samples: denoising grids (rows: clean, corrupted, then the reads) for noise and for occlusion; and
one-shot generation: the Kanerva Machine writes a held-out episode (the top row), then draws
y ~ N(0, I), w = address(y), z ~ N(w^T M, sigma_xi^2 I) with M ~ q(M|X) and shows the decoder's
probabilities (second row) and the same after eval.read_iterations iterative reads (third row);
the VAE decodes z ~ N(0, I).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from ml_collections import ConfigDict

from deepgen.core import distributed, plots
from deepgen.core import mesh as mesh_lib
from deepgen.core.errors import ConfigError
from deepgen.core.optim import make_optimizer
from deepgen.core.train_loop import Unit
from deepgen.core.validate import Checker
from deepgen.data import cifar10, mnist, omniglot
from deepgen.data.images import ImageSplit
from deepgen.data.pipeline import EpochIterator
from deepgen.kanerva import episodes
from deepgen.kanerva import memory as mem
from deepgen.kanerva import model as km
from deepgen.layers import discretized_logistic
from experiments.contract import Method

log = logging.getLogger(__name__)

DATASETS = ("mnist", "omniglot", "cifar10")
FEEDBACK = ("mean", "binary")  # what iterative reading feeds back (binary: grey data only)
KINDS = ("kanerva", "vae")
QUICK_MAX_EPISODES = 16
TERMS = ("nll_bound", "reconstruction", "kl_y", "kl_z", "kl_memory")
ERROR_MEASURE = {
    True: "mean absolute difference per pixel between the read-out Bernoulli probabilities and "
    "the clean binarised images",
    False: "mean absolute difference per sub-pixel between the read-out image (the logistic "
    "mixture's mean) and the clean image, in [0, 1] intensity units",
}
BASELINE_NAME = {
    True: "independent per-pixel Bernoulli fit to the training images",
    False: "independent 256-way histogram per sub-pixel fit to the training images",
}


class KanervaState(struct.PyTreeNode):
    """Step, parameters and optimiser state (the memory is per episode, never kept)."""

    step: jax.Array
    params: Any
    opt_state: Any


def _stderr(values: np.ndarray) -> float | None:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def vae_iterative_reconstruction(
    params,
    *,
    model: km.KanervaMachine,
    x_query_BxHxWxC: jax.Array,
    num_iterations: int,
    binarise_feedback: bool = False,
) -> jax.Array:
    """The VAE's counterpart of iterative reading: (num_iterations + 1) x B x H x W x C.

    Each pass maps x to the decoder's mean image at the mean of q(z|x) and feeds it back.
    """
    apply = functools.partial(model.apply, params)

    def one_pass(x_BxHxWxC, _):
        features = apply(x_BxHxWxC, method=km.KanervaMachine.encode)
        mean_z, _ = apply(features, None, method=km.KanervaMachine.posterior_z)
        image = km.decoder_mean(model, apply(mean_z, method=km.KanervaMachine.decode))
        return km.feedback_query(image, binarise_feedback), image

    _, reads = jax.lax.scan(one_pass, x_query_BxHxWxC, None, length=num_iterations + 1)
    return reads


class KanervaMethod(Method):
    """The Kanerva Machine (model.kind="kanerva") or the VAE with the same networks ("vae").

    One unit of progress is one optimiser step on train.batch_size episodes.
    """

    name = "kanerva"

    @classmethod
    def validate(cls, config: ConfigDict) -> None:
        """One ConfigError naming the first field whose value is not allowed."""
        check = Checker(config)
        check.common()
        check.optimiser()
        # Two choices are spelled out: main._one_line would show a 2-tuple as "a: b".
        check.one_of("data.name", DATASETS)
        sources = {"mnist": mnist.SOURCES, "omniglot": omniglot.SOURCES, "cifar10": cifar10.SOURCES}
        check.one_of("data.source", sources[config.data.name])
        check(config.model.kind in KINDS, "model.kind", "'kanerva' or 'vae'")
        check.positive(
            "data.episode_length",
            "model.code_size",
            "model.memory_size",
            "model.key_size",
            "model.key_latent_size",
            "model.feature_size",
            "model.num_mixtures",
            "model.init_read_noise_variance",
            "model.init_memory_variance",
            "eval.repeats",
            "eval.batch_size",
            "eval.read_iterations",
            "sample.num_queries",
            "sample.num_samples",
        )
        check.non_negative(
            "model.num_memory_samples",
            "model.key_kl_warmup_steps",
            "eval.num_memory_samples",
            "data.classes_per_episode",
        )
        classes = config.data.get("classes_per_episode", 0)
        check(
            not classes or config.data.episode_length % classes == 0,
            "data.classes_per_episode",
            "0 (random episodes) or a divisor of data.episode_length",
        )
        check.boolean("model.normalize_addresses")
        check.in_unit_interval("eval.noise", closed=True)
        check.in_unit_interval("eval.occlusion", closed=True)
        check.one_of("eval.split", ("train", "validation", "test"))
        check.one_of("eval.feedback", FEEDBACK)
        check.divisible_by_devices(unit="episodes")

    def __init__(self, config: ConfigDict, *, mode: str = "train"):
        super().__init__(config, mode=mode)
        self.use_memory = config.model.kind == "kanerva"
        self.binary = config.data.name != "cifar10"  # else colour under the logistic mixture
        self.episode_length = int(config.data.episode_length)
        self.classes_per_episode = int(config.data.get("classes_per_episode", 0))
        self.train_data = self._load("train")  # eval's baseline needs it too
        needed = int(config.train.batch_size) * self.episode_length
        if mode == "train" and needed > self.train_data.num_examples:
            raise ConfigError(
                f"config.train.batch_size={config.train.batch_size} episodes of "
                f"{self.episode_length} images need {needed} images; {self.train_data.source} "
                f"has {self.train_data.num_examples}"
            )
        self.model = self._build_model()
        self.optimizer = make_optimizer(config.opt, int(config.train.num_steps))
        self._jitted: dict = {}

    def _load(self, split: str) -> ImageSplit:
        data = self.config.data
        kwargs = {"data_dir": data.dir or None, "source": data.source}
        if data.name == "omniglot":
            return omniglot.load_omniglot(split, **kwargs)
        if data.name == "cifar10":
            return cifar10.load_cifar10(split, **kwargs)
        return mnist.load_mnist(split, name=data.name, **kwargs)

    @contextlib.contextmanager
    def _episode_errors(self, split: ImageSplit):
        """Episodes that cannot be built from the split (classes_per_episode) as a ConfigError."""
        try:
            yield
        except ValueError as error:
            raise ConfigError(f"{split.source}: {error}") from error

    def _model_images(self, split: ImageSplit) -> np.ndarray:
        """Grey intensities N x H x W in [0, 1] (binarised later), or colour bin centres N x H x W x C."""
        if self.binary:
            return split.intensities_NxHxW
        centres = discretized_logistic.to_bin_centres(split.images_NxHxWxC, km.NUM_PIXEL_LEVELS)
        return np.asarray(centres, np.float32)

    def _build_model(self) -> km.KanervaMachine:
        m = self.config.model
        height, width, *channels = self.train_data.images.shape[1:]
        return km.KanervaMachine(
            image_shape=(height, width, channels[0] if channels else 1),
            code_size=int(m.code_size),
            memory_size=int(m.memory_size),
            key_size=int(m.key_size),
            key_latent_size=int(m.key_latent_size),
            key_hidden_units=tuple(m.key_hidden_units),
            feature_size=int(m.feature_size),
            posterior_hidden_units=tuple(m.posterior_hidden_units),
            encoder_channels=tuple(m.encoder_channels),
            decoder_channels=tuple(m.decoder_channels),
            likelihood="bernoulli" if self.binary else "logistic",
            num_mixtures=int(m.num_mixtures),
            normalize_addresses=bool(m.normalize_addresses),
            use_memory=self.use_memory,
            init_read_noise_variance=float(m.init_read_noise_variance),
            init_memory_variance=float(m.init_memory_variance),
        )

    # ---- training ----------------------------------------------------------------------------

    def unit(self) -> Unit:
        """One optimiser step on train.batch_size episodes; its examples are the images."""
        batch_size = int(self.config.train.batch_size)
        return Unit("steps", 1, batch_size * self.episode_length)

    def batches(self) -> EpochIterator:
        """Epochs of disjoint episodes from a fresh permutation (or episodes of few classes,
        data.classes_per_episode), binarised afresh (episodes.py)."""
        batch_size = int(self.config.train.batch_size)
        with self._episode_errors(self.train_data):
            return episodes.training_episodes(
                self._model_images(self.train_data),
                episode_length=self.episode_length,
                episodes_per_batch=batch_size,
                seed=int(self.config.seed),
                process_rows=distributed.process_slice(batch_size),
                binary=self.binary,
                labels_N=self.train_data.labels_N,
                classes_per_episode=self.classes_per_episode,
            )

    def init_state(self, rng: jax.Array) -> KanervaState:
        """Fresh parameters and optimiser state."""
        x = jnp.zeros((1, *self.model.image_shape), jnp.float32)
        params = self.model.init(rng, x)
        return KanervaState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=self.optimizer.init(params)
        )

    def train_step(
        self, state: KanervaState, batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> tuple[KanervaState, dict]:
        """One step on the negative episode ELBO (nats per episode, averaged over episodes)."""
        rng = jax.random.fold_in(rng, state.step)  # the loop passes one key; each step draws anew
        key_kl_weight = km.key_kl_weight(state.step, int(self.config.model.key_kl_warmup_steps))

        def loss_fn(params):
            loss, aux = km.episode_elbo(
                params,
                model=self.model,
                x_BxTxHxWxC=batch["x"],
                rng=rng,
                num_memory_samples=int(self.config.model.num_memory_samples),
            )
            weighted = km.training_loss(
                loss, aux, key_kl_weight=key_kl_weight, T=self.episode_length
            )
            return weighted, aux

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
        )
        metrics = {"loss": loss, **aux, "grad_norm": optax.tree_utils.tree_norm(grads)}
        if self.use_memory and int(self.config.model.key_kl_warmup_steps) > 0:
            metrics["key_kl_weight"] = key_kl_weight
        return new_state, metrics

    def describe(self) -> list[str]:
        """The data, the episodes and the model."""
        abstract = jax.eval_shape(self.init_state, jax.random.key(0))
        size = sum(x.size for x in jax.tree.leaves(abstract.params))
        m, T = self.config.model, self.episode_length
        batch_size = int(self.config.train.batch_size)
        what = (
            f"Kanerva Machine with a {m.memory_size} x {m.code_size} memory"
            if self.use_memory
            else f"VAE with {m.code_size} latents (the Kanerva Machine's networks, no memory)"
        )
        n = self.classes_per_episode
        drawn = f"{T // n} images of each of {n} classes" if n else "images drawn at random"
        return [
            f"training data: {self.train_data.source} ({self.train_data.num_examples} images); "
            f"episodes of {T} ({drawn}), {batch_size} episodes ({batch_size * T} images) per step",
            f"model: {what}, {size:,} parameters on {jax.device_count()} devices",
        ]

    # ---- evaluation --------------------------------------------------------------------------

    def eval_tag(self) -> str:
        """The split; the runner adds the data source."""
        return str(self.config.eval.split)

    @property
    def _binarise_feedback(self) -> bool:
        """Whether iterative reading feeds back binary images (eval.feedback; grey data only)."""
        return self.binary and self.config.eval.feedback == "binary"

    def _heldout(self, split: str) -> tuple[ImageSplit, np.ndarray]:
        """(the split, its held-out episodes: grey values E x T x H x W or colour E x T x H x W x C)."""
        data = self._load(split)
        if data.num_examples < self.episode_length:
            raise ConfigError(
                f"config.data.episode_length={self.episode_length} exceeds the "
                f"{data.num_examples} images of {data.source}"
            )
        with self._episode_errors(data):
            images = episodes.heldout_episodes(
                self._model_images(data),
                episode_length=self.episode_length,
                seed=int(self.config.seed),
                labels_N=data.labels_N,
                classes_per_episode=self.classes_per_episode,
            )
        return data, images

    def _episodes_for(self, heldout_ExTx: np.ndarray, repeat: int) -> np.ndarray:
        """The model's input for one repeat: a fixed binarisation (grey) or the images (colour)."""
        if self.binary:
            return episodes.binarise_episodes(
                heldout_ExTx, seed=int(self.config.seed), repeat=repeat
            )
        return heldout_ExTx

    def _over_episodes(
        self, fn: Callable, x_ExTxHxWxC: np.ndarray, params: Any, key: jax.Array
    ) -> Any:
        """fn(params, x_BxTxHxWxC, keys_B) over fixed-size batches of episodes (tail padded).

        fn must be a stable function (a method): it is jitted once per batch size. Episode i's
        key is key folded with i, so its draws do not depend on eval.batch_size.
        """
        num = len(x_ExTxHxWxC)
        devices = jax.device_count()
        batch_size = -(-min(int(self.config.eval.batch_size), num) // devices) * devices
        cache_key = (fn, batch_size)
        if cache_key not in self._jitted:

            def with_keys(params, x_BxTxHxWxC, key, start):
                index_B = start + jnp.arange(x_BxTxHxWxC.shape[0])
                keys_B = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index_B)
                return fn(params, x_BxTxHxWxC, keys_B)

            self._jitted[cache_key] = jax.jit(
                with_keys, out_shardings=mesh_lib.replicated(self.mesh)
            )
        jitted = self._jitted[cache_key]
        sharding = mesh_lib.batch_sharding(self.mesh)
        rows = distributed.process_slice(batch_size)
        outputs = []
        for start in range(0, num, batch_size):
            chunk = x_ExTxHxWxC[start : start + batch_size]
            pad = np.zeros((batch_size - len(chunk), *chunk.shape[1:]), chunk.dtype)
            x = distributed.global_batch(np.concatenate([chunk, pad])[rows], sharding)
            out = jitted(params, x, key, jnp.int32(start))
            valid = len(chunk)
            outputs.append(jax.tree.map(lambda a, n=valid: np.asarray(a)[:n], out))
        return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)

    def _episode_terms(self, params: Any, x_BxTxHxWxC: jax.Array, keys_B: jax.Array) -> dict:
        """The ELBO's terms per image for each of B episodes: {term: B}."""
        n = int(self.config.eval.num_memory_samples)

        def one(x_TxHxWxC, episode_key):
            _, metrics = km.episode_elbo(
                params,
                model=self.model,
                x_BxTxHxWxC=x_TxHxWxC[None],
                rng=episode_key,
                num_memory_samples=n,
            )
            return {
                term: metrics[f"{term}_per_image" if term == "nll_bound" else term]
                for term in TERMS
            }

        return jax.vmap(one)(x_BxTxHxWxC, keys_B)

    def _corrupted_reads(
        self, params: Any, x_TxHxWxC: jax.Array, key: jax.Array, num_queries: int | None = None
    ) -> tuple[dict, dict]:
        """({kind: corrupted queries}, {kind: reads (k + 1) x Q x H x W x C}) of one episode.

        The Kanerva Machine writes the whole clean episode, then reads from corrupted copies of
        its first num_queries images (all by default); the VAE reconstructs them iteratively.
        """
        config = self.config.eval
        key_write, key_noise, key_occlusion, key_read = jax.random.split(key, 4)
        queries_of = x_TxHxWxC[:num_queries]
        corrupt = functools.partial(km.corrupt, binary=self.binary)
        queries = {
            "noise": corrupt(key_noise, queries_of, kind="noise", amount=float(config.noise)),
            "occlusion": corrupt(
                key_occlusion, queries_of, kind="occlusion", amount=float(config.occlusion)
            ),
        }
        k = int(config.read_iterations)
        binarise = self._binarise_feedback
        if self.use_memory:
            memory = km.write_episode(params, model=self.model, x_TxHxWxC=x_TxHxWxC, rng=key_write)
            read = lambda q: km.iterative_read(
                params,
                model=self.model,
                memory=memory,
                x_query_BxHxWxC=q,
                num_iterations=k,
                rng=key_read,
                binarise_feedback=binarise,
            )
        else:
            read = lambda q: vae_iterative_reconstruction(
                params,
                model=self.model,
                x_query_BxHxWxC=q,
                num_iterations=k,
                binarise_feedback=binarise,
            )
        return queries, {kind: read(q) for kind, q in queries.items()}

    def _reading_errors(self, params: Any, x_BxTxHxWxC: jax.Array, keys_B: jax.Array) -> tuple:
        """({kind: B x (k + 1) read errors}, {kind: B query errors}, {kind: B x (k + 1) pixel
        errors of the reads' most probable binary images}: binary data; empty for colour)."""
        to_unit = 1.0 if self.binary else 0.5  # colour differences on [-1, 1] -> [0, 1] units

        def one(x_TxHxWxC, episode_key):
            queries, reads = self._corrupted_reads(params, x_TxHxWxC, episode_key)
            read_errors = {
                kind: to_unit * jnp.mean(jnp.abs(r - x_TxHxWxC[None]), axis=(1, 2, 3, 4))
                for kind, r in reads.items()
            }
            query_errors = {
                kind: to_unit * jnp.mean(jnp.abs(q - x_TxHxWxC)) for kind, q in queries.items()
            }
            pixel_errors = {}
            if self.binary:
                pixel_errors = {
                    kind: jnp.mean((r > 0.5) != (x_TxHxWxC[None] > 0.5), axis=(1, 2, 3, 4))
                    for kind, r in reads.items()
                }
            return read_errors, query_errors, pixel_errors

        return jax.vmap(one)(x_BxTxHxWxC, keys_B)

    def _address_agreement(self, params: Any, x_BxTxHxWxC: jax.Array, keys_B: jax.Array) -> tuple:
        """(B mean cosines between the addresses of an episode's different images, B fractions of
        noisy queries whose address is nearest, by cosine, to their own image's of the T written).

        Addresses as iterative reading takes them: w = b(mean of q(y|x))^T A. Cosines near 1 say
        every image is read at one address; retrieval at chance (1/T) says a query's address does
        not point at its image, whatever the memory holds.
        """
        apply = functools.partial(self.model.apply, params)

        def addresses(x_NxHxWxC):
            features = apply(x_NxHxWxC, method=km.KanervaMachine.encode)
            mean_y = apply(features, method=km.KanervaMachine.posterior_y)[0]
            w_NxK = apply(mean_y, method=km.KanervaMachine.address)
            return w_NxK / jnp.maximum(jnp.linalg.norm(w_NxK, axis=-1, keepdims=True), 1e-12)

        def one(x_TxHxWxC, episode_key):
            query = km.corrupt(
                episode_key, x_TxHxWxC, kind="noise", amount=float(self.config.eval.noise)
            )
            written_TxK, queried_TxK = addresses(x_TxHxWxC), addresses(query)
            T = written_TxK.shape[0]
            cosine_TxT = written_TxK @ written_TxK.T
            between = (jnp.sum(cosine_TxT) - jnp.trace(cosine_TxT)) / (T * (T - 1))
            nearest_T = jnp.argmax(queried_TxK @ written_TxK.T, axis=-1)
            return between, jnp.mean(nearest_T == jnp.arange(T))

        return jax.vmap(one)(x_BxTxHxWxC, keys_B)

    def evaluate(self, state: KanervaState, *, step: int, quick: bool, progress: Any) -> dict:
        """The episode bound, its terms and the iterative reading errors (module docstring).

        quick: at most QUICK_MAX_EPISODES episodes, one binarisation.
        """
        del step
        config = self.config
        seed = int(config.seed)
        split = str(config.eval.split)
        eval_data, heldout_ExTx = self._heldout(split)
        if quick:
            heldout_ExTx = heldout_ExTx[:QUICK_MAX_EPISODES]
        num_episodes, T = heldout_ExTx.shape[:2]
        repeats = 1 if quick else int(config.eval.repeats)
        tracker = progress("eval", repeats + 1, unit="passes")
        base_key = jax.random.key(seed)

        terms_R: dict[str, list] = {term: [] for term in TERMS}
        first_x = None
        for repeat in range(repeats):
            x = self._episodes_for(heldout_ExTx, repeat)
            first_x = x if first_x is None else first_x
            key = jax.random.fold_in(base_key, 2000 + repeat)
            terms = self._over_episodes(self._episode_terms, x, state.params, key)
            for term in TERMS:
                terms_R[term].append(terms[term])
            tracker.advance()
        per_episode = {t: np.mean(v, axis=0).astype(np.float64) for t, v in terms_R.items()}

        read_errors, query_errors, pixel_errors = self._over_episodes(
            self._reading_errors, first_x, state.params, jax.random.fold_in(base_key, 3000)
        )
        tracker.advance()

        report: dict[str, Any] = {}
        if self.use_memory and T > 1:  # pairs of different images need two
            cosine_E, retrieval_E = self._over_episodes(
                self._address_agreement, first_x, state.params, jax.random.fold_in(base_key, 4000)
            )
            report["address_cosine_between_images"] = float(np.mean(cosine_E))
            report["address_retrieval"] = {
                "noisy_query_nearest_to_its_image": float(np.mean(retrieval_E)),
                "chance": 1.0 / T,
            }
        for term in TERMS:
            values = per_episode[term]
            report[f"{term}_nats_per_image"] = float(values.mean())
            report[f"{term}_nats_per_image_stderr"] = _stderr(values)
        report["nll_bound_nats_per_episode"] = report["nll_bound_nats_per_image"] * T
        # Per held-out episode, in order: paired comparisons of two runs on the same episodes.
        report["nll_bound_nats_per_image_by_episode"] = [float(v) for v in per_episode["nll_bound"]]
        num_dims = int(np.prod(self.model.image_shape))
        report["nll_bound_bits_per_dim"] = report["nll_bound_nats_per_image"] / (
            num_dims * math.log(2.0)
        )
        errors = {k: np.asarray(v, np.float64) for k, v in read_errors.items()}
        m = config.model
        report.update(
            iterative_reading_error={
                k: [float(e) for e in v.mean(axis=0)] for k, v in errors.items()
            },
            iterative_reading_error_stderr={
                k: [_stderr(v[:, i]) for i in range(v.shape[1])] for k, v in errors.items()
            },
            corrupted_query_error={k: float(np.mean(v)) for k, v in query_errors.items()},
            # The fraction of pixels the reads' most probable binary images get wrong (binary
            # data): what a denoiser must bring below the corrupted query's and the blank image's.
            iterative_reading_pixel_error={
                k: [float(e) for e in np.mean(np.asarray(v, np.float64), axis=0)]
                for k, v in pixel_errors.items()
            },
            # The same measure for the constant background image (black; colour: mid-grey), which
            # knows nothing of the query: reads that drift towards a faint generic shape can beat
            # a corrupted query without denoising it, and this says whether they beat a blank.
            blank_image_error=float(
                (1.0 if self.binary else 0.5) * np.mean(np.abs(np.asarray(first_x, np.float64)))
            ),
            iterative_reading={
                "measure": ERROR_MEASURE[self.binary],
                "reader": (
                    "Kanerva Machine: write the clean episode, read with the posterior means and "
                    "M = R, feed the read-out image back"
                    if self.use_memory
                    else "VAE (no memory): the decoder mean at the mean of q(z|x), fed back"
                ),
                "noise_flip_probability": float(config.eval.noise),
                "occlusion_fraction": float(config.eval.occlusion),
                "occlusion_side_pixels": km.occlusion_side(
                    *heldout_ExTx.shape[2:4], float(config.eval.occlusion)
                ),
                "iterations": int(config.eval.read_iterations),
                "feedback": str(config.eval.feedback) if self.binary else "mean",
            },
            model=(
                f"kanerva (memory {m.memory_size} x {m.code_size})"
                if self.use_memory
                else f"vae ({m.code_size} latents)"
            ),
            episode_length=int(T),
            num_episodes=int(num_episodes),
            num_memory_samples=int(config.eval.num_memory_samples),
            repeats=repeats,
            unit="nats/image",
            split=split,
            data_source=f"{eval_data.source} ({eval_data.num_examples} images)",
            num_examples=int(num_episodes * T),
            baseline={
                "name": BASELINE_NAME[self.binary],
                "nll_nats_per_image": self._baseline_nll(heldout_ExTx),
            },
        )
        return report

    def _baseline_nll(self, heldout_ExTx: np.ndarray) -> float:
        """The baseline's NLL (nats/image) of the held-out episodes' images."""
        if self.binary:
            return mnist.independent_bernoulli_nll_nats(
                self.train_data.intensities_NxHxW, heldout_ExTx.reshape(-1, *heldout_ExTx.shape[2:])
            )
        centres = heldout_ExTx.reshape(-1, *heldout_ExTx.shape[2:])
        pixels = np.asarray(discretized_logistic.from_bin_centres(centres, km.NUM_PIXEL_LEVELS))
        return cifar10.independent_categorical_nll_nats(
            self.train_data.images_NxHxWxC, pixels.astype(np.uint8)
        )

    def format_eval(self, report: Mapping[str, Any]) -> str:
        """The bound and its terms, the reading errors and the baseline, in one line."""
        err = lambda key: (
            "" if report.get(f"{key}_stderr") is None else f" +- {report[f'{key}_stderr']:.2f}"
        )
        terms = " + ".join(
            f"{name} {report[f'{term}_nats_per_image']:.2f}"
            for term, name in (
                ("reconstruction", "reconstruction"),
                ("kl_y", "KL_y"),
                ("kl_z", "KL_z"),
                ("kl_memory", "KL_M"),
            )
        )
        reading = "; ".join(
            f"{kind} query {report['corrupted_query_error'][kind]:.3f} -> reads "
            + " ".join(f"{e:.3f}" for e in errors)
            for kind, errors in report["iterative_reading_error"].items()
        )
        if "blank_image_error" in report:
            reading += f"; a blank image {report['blank_image_error']:.3f}"
        if report.get("iterative_reading_pixel_error"):
            reading += "; pixels wrong in the reads' binary images: " + "; ".join(
                f"{kind} " + " ".join(f"{e:.3f}" for e in errors)
                for kind, errors in report["iterative_reading_pixel_error"].items()
            )
        bits = "" if self.binary else f" ({report['nll_bound_bits_per_dim']:.3f} bits/dim)"
        return (
            f"{report['model']}: bound {report['nll_bound_nats_per_image']:.2f}"
            f"{err('nll_bound_nats_per_image')}{bits} = {terms} {report['unit']} on "
            f"{report['num_episodes']} {report['split']} episodes of {report['episode_length']} "
            f"({report['repeats']} {'binarisation' if self.binary else 'repeat'}"
            f"{'s' if report['repeats'] != 1 else ''}); "
            f"reading error ({reading}); baseline "
            f"{report['baseline']['nll_nats_per_image']:.2f} ({report['baseline']['name']})"
        )

    # ---- samples -----------------------------------------------------------------------------

    def _sample_arrays(self, params: Any, x_TxHxWxC: jax.Array, key: jax.Array) -> dict:
        """The denoising rows of the first sample.num_queries images, and one-shot samples."""
        num_queries = min(int(self.config.sample.num_queries), self.episode_length)
        num_samples = int(self.config.sample.num_samples)
        key_reads, key_memory, key_y, key_z = jax.random.split(key, 4)
        queries, reads = self._corrupted_reads(params, x_TxHxWxC, key_reads, num_queries)
        apply = functools.partial(self.model.apply, params)
        C = self.model.code_size
        if not self.use_memory:
            z = jax.random.normal(key_z, (num_samples, C))
            samples = km.decoder_mean(self.model, apply(z, method=km.KanervaMachine.decode))
            return {"queries": queries, "reads": reads, "samples": samples}
        key_write, key_m = jax.random.split(key_memory)
        memory = km.write_episode(params, model=self.model, x_TxHxWxC=x_TxHxWxC, rng=key_write)
        with jax.default_matmul_precision("highest"):
            M_KxC = mem.sample_memory(key_m, memory)
            y = jax.random.normal(key_y, (num_samples, self.model.key_latent_size))
            w = apply(y, method=km.KanervaMachine.address)
            noise_variance = apply(method=km.KanervaMachine.noise_variance)
            z = w @ M_KxC + jnp.sqrt(noise_variance) * jax.random.normal(key_z, (num_samples, C))
        samples = km.decoder_mean(self.model, apply(z, method=km.KanervaMachine.decode))
        binarise = self._binarise_feedback
        cleaned = km.iterative_read(
            params,
            model=self.model,
            memory=memory,
            x_query_BxHxWxC=km.feedback_query(samples, binarise),
            num_iterations=int(self.config.eval.read_iterations) - 1,
            rng=key_reads,
            binarise_feedback=binarise,
        )[-1]
        return {"queries": queries, "reads": reads, "samples": samples, "cleaned": cleaned}

    def sample(self, state: KanervaState, out_dir: str, *, step: int, progress: Any) -> dict:
        """Denoising grids (noise, occlusion) and one-shot samples (module docstring)."""
        config = self.config
        tracker = progress("sample", 1, unit="passes")
        _, heldout_ExTx = self._heldout(str(config.eval.split))
        x = self._episodes_for(heldout_ExTx[:1], repeat=0)[0]
        key = jax.random.fold_in(jax.random.key(int(config.seed)), 4000)
        out = jax.device_get(jax.jit(self._sample_arrays)(state.params, jnp.asarray(x), key))
        tracker.advance()
        if not self.binary:  # bin centres on [-1, 1] -> intensities for the PNGs
            x, out = jax.tree.map(lambda a: (np.asarray(a) + 1.0) / 2.0, (x, out))
        if jax.process_index() != 0:
            return {}
        num_queries = min(int(config.sample.num_queries), self.episode_length)
        k = int(config.eval.read_iterations)
        reader = "reads" if self.use_memory else "VAE reconstructions"
        written = {}
        for kind, what in (
            (
                "noise",
                f"{config.eval.noise:.0%} of pixels "
                + ("flipped" if self.binary else "replaced by random colours"),
            ),
            ("occlusion", f"a square of {config.eval.occlusion:.0%} blanked"),
        ):
            rows = [x[:num_queries], out["queries"][kind], *out["reads"][kind]]
            path = os.path.join(out_dir, f"denoising_{kind}_step{step}.png")
            label = f"{kind} denoising (rows clean, {what}, {reader} 1 to {k + 1})"
            written[label] = plots.save_image_grid(np.concatenate(rows), path, num_cols=num_queries)
        num_samples = int(config.sample.num_samples)
        path = os.path.join(out_dir, f"samples_step{step}.png")
        if self.use_memory:
            episode_row = np.zeros((num_samples, *x.shape[1:]), np.float32)
            shown = min(num_samples, self.episode_length)
            episode_row[:shown] = x[:shown]
            rows = [episode_row, out["samples"], out["cleaned"]]
            label = (
                "one-shot samples (rows the written episode, samples given its memory, "
                f"after {k} iterative reads)"
            )
            written[label] = plots.save_image_grid(np.concatenate(rows), path, num_cols=num_samples)
        else:
            written["samples from N(0, I) (decoder means)"] = plots.save_image_grid(
                out["samples"], path
            )
        return written


METHOD = KanervaMethod
