"""ACN and its VAE baseline through the one runner: training, the compression ledger, daydreams.

The maths is in deepgen/acn (the model and losses, the prior network, the exact blocked search);
this file wires it to the data and the core loop. The ACN state carries the code table of every
training example (Algorithm 1 of arXiv:1804.02476: initialised N(0, I), each row replaced by the
example's code when its batch is seen, after the search), split by rows over the mesh, so it is
checkpointed and restored with the parameters. The batch carries each example's table index.

Eval (`eval.json`) is the compression ledger of the eval split in nats per image, averaged over
eval.repeats draws (binarisation, neighbour, z): the coding cost (KL), the reconstruction cost and
their sum, the upper bound. With eval.neighbours_from="self" the split is sent on its own, in the
paper's order of latent proximity: the first code under the unconditional prior N(0, I), every
other under p(z | c_hat) with c_hat drawn from its K nearest codes in the split (itself excluded);
"train" conditions every code on the training codes instead. Beside it: the K-nearest-neighbour
classification accuracy of the split's codes against the training codes (Table 3 of the paper),
and the same classifier on raw pixels as the baseline.
"""

from __future__ import annotations

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

from deepgen.acn import model as acn_model
from deepgen.acn import neighbours as nn_search
from deepgen.acn import prior as prior_lib
from deepgen.core import distributed, plots
from deepgen.core import mesh as mesh_lib
from deepgen.core.errors import ConfigError
from deepgen.core.optim import make_optimizer
from deepgen.core.validate import Checker
from deepgen.data import cifar10, mnist, omniglot
from deepgen.data.images import ImageSplit
from deepgen.data.pipeline import EpochIterator
from deepgen.layers import discretized_logistic
from experiments.contract import Method

log = logging.getLogger(__name__)

DATASETS = ("mnist", "binarized_mnist", "omniglot", "cifar10")
KINDS = ("acn", "vae")
NEIGHBOURS_FROM = ("self", "train")
QUICK_MAX_EXAMPLES = 256


class VAEState(struct.PyTreeNode):
    """Step, parameters and optimiser state (the VAE baseline)."""

    step: jax.Array
    params: Any
    opt_state: Any


class ACNState(VAEState):
    """The VAE's state plus the code table: one row per training example (and padding rows)."""

    code_table: jax.Array


def _binary(name: str) -> bool:
    return name != "cifar10"


class ACN(Method):
    """An ACN (model.kind="acn") or the VAE with the same networks (model.kind="vae").

    One unit of progress is one optimiser step on train.batch_size images.
    """

    name = "acn"

    @classmethod
    def validate(cls, config: ConfigDict) -> None:
        """One ConfigError naming the first field whose value is not allowed."""
        check = Checker(config)
        check.common()
        check.optimiser()
        check.one_of("data.name", DATASETS)
        check.one_of("model.kind", KINDS)
        check.one_of("model.decoder", acn_model.DECODERS)
        check.one_of("model.pixelcnn_conditioning", acn_model.CONDITIONINGS)
        check.positive(
            "model.latent_dim",
            "model.num_neighbours",
            "model.search_block_size",
            "model.prior_components",
            "model.prior_hidden_units",
            "model.pixelcnn_layers",
            "model.pixelcnn_features",
            "model.num_mixtures",
            "eval.repeats",
            "eval.batch_size",
            "eval.knn_k",
            "sample.num_chains",
            "sample.daydream_steps",
        )
        check.one_of("eval.neighbours_from", NEIGHBOURS_FROM)
        check.one_of("eval.split", ("train", "validation", "test"))
        check(
            config.model.search_block_size >= config.model.num_neighbours,
            "model.search_block_size",
            f"at least model.num_neighbours={config.model.num_neighbours}",
        )
        check.divisible_by_devices()

    def __init__(self, config: ConfigDict, *, mode: str = "train"):
        super().__init__(config, mode=mode)
        self.is_acn = config.model.kind == "acn"
        self.binary = _binary(config.data.name)
        self.train_data = self._load("train")
        self.num_codes = self.train_data.num_examples
        if self.is_acn and self.num_codes <= config.model.num_neighbours:
            raise ConfigError(
                f"config.model.num_neighbours={config.model.num_neighbours} needs more than that "
                f"many training images; {self.train_data.source} has {self.num_codes}"
            )
        if mode == "train" and config.train.batch_size > self.num_codes:
            raise ConfigError(
                f"config.train.batch_size={config.train.batch_size} exceeds the "
                f"{self.num_codes} training images of {self.train_data.source}"
            )
        self.table_rows, self.block_size = nn_search.padded_table_size(
            self.num_codes,
            num_shards=jax.device_count(),
            block_size=int(config.model.search_block_size),
        )
        if self.block_size < config.model.num_neighbours:
            raise ConfigError(
                f"config.model.num_neighbours={config.model.num_neighbours} exceeds the "
                f"{self.block_size} codes per device of the table's search blocks; use fewer "
                "neighbours or fewer devices"
            )
        self.model = self._build_model()
        self.optimizer = make_optimizer(config.opt, int(config.train.num_steps))

    def _load(self, split: str) -> ImageSplit:
        data = self.config.data
        kwargs = {"data_dir": data.dir or None, "source": data.source}
        if data.name == "cifar10":
            return cifar10.load_cifar10(split, **kwargs)
        if data.name == "omniglot":
            return omniglot.load_omniglot(split, **kwargs)
        return mnist.load_mnist(split, name=data.name, **kwargs)

    def _build_model(self) -> acn_model.ACNModel:
        m = self.config.model
        images = self.train_data.images
        shape = (*images.shape[1:3], images.shape[3] if images.ndim == 4 else 1)
        return acn_model.ACNModel(
            image_shape=shape,
            latent_dim=int(m.latent_dim),
            use_prior_network=self.is_acn,
            decoder=m.decoder,
            likelihood="bernoulli" if self.binary else "logistic",
            encoder_channels=tuple(m.encoder_channels),
            decoder_channels=tuple(m.decoder_channels),
            pixelcnn_layers=int(m.pixelcnn_layers),
            pixelcnn_features=int(m.pixelcnn_features),
            num_mixtures=int(m.num_mixtures),
            prior_components=int(m.prior_components),
            prior_hidden_units=int(m.prior_hidden_units),
            code_init_scale=float(m.code_init_scale),
            pixelcnn_conditioning=m.pixelcnn_conditioning,
        )

    # ---- data --------------------------------------------------------------------------------

    def images(self, split: ImageSplit, rng: np.random.Generator, rows=slice(None)) -> np.ndarray:
        """The model's input x_NxHxWxC: a fresh binarisation ({0, 1}) or 8-bit bin centres."""
        if self.binary:
            intensities = split.intensities_NxHxW
            uniform = rng.random(intensities.shape, dtype=np.float32)[rows]
            return (uniform < intensities[rows]).astype(np.float32)[..., None]
        return np.asarray(
            discretized_logistic.to_bin_centres(split.images_NxHxWxC[rows], 256), np.float32
        )

    def batches(self) -> EpochIterator:
        """Shuffled epochs of images with their table indices; binary images binarised afresh."""
        batch_size = int(self.config.train.batch_size)
        data = self.train_data

        def make_batch(indices: np.ndarray, rows: slice, rng: np.random.Generator) -> dict:
            # Draw for the whole global batch, keep this process's rows.
            if self.binary:
                intensities = data.intensities_NxHxW[indices]
                uniform = rng.random(intensities.shape, dtype=np.float32)
                x = (uniform < intensities).astype(np.float32)[rows][..., None]
            else:
                x = self.images(data, rng, indices[rows])
            return {"x": x, "index": indices[rows].astype(np.int32)}

        return EpochIterator(
            num_examples=self.num_codes,
            global_batch_size=batch_size,
            make_batch=make_batch,
            seed=int(self.config.seed),
            process_rows=distributed.process_slice(batch_size),
        )

    # ---- training ----------------------------------------------------------------------------

    def init_state(self, rng: jax.Array) -> VAEState:
        """Fresh parameters and optimiser state; for ACN the table's rows drawn from N(0, I)."""
        rng_params, rng_table = jax.random.split(rng)
        height, width, channels = self.model.image_shape
        x = jnp.zeros((1, height, width, channels), jnp.float32)
        z = jnp.zeros((1, self.model.latent_dim), jnp.float32)
        params = self.model.init(rng_params, x, z)
        state = {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": self.optimizer.init(params),
        }
        if not self.is_acn:
            return VAEState(**state)
        table = jax.random.normal(rng_table, (self.table_rows, self.model.latent_dim))
        valid = (jnp.arange(self.table_rows) < self.num_codes)[:, None]
        return ACNState(**state, code_table=jnp.where(valid, table, 0.0))

    def state_shardings(self) -> Any:
        """Parameters replicated (or FSDP); the code table's rows split over every device."""
        abstract = jax.eval_shape(self.init_state, jax.random.key(0))
        shardings = mesh_lib.state_shardings(
            abstract, self.mesh, fsdp_min_size=self.config.get("fsdp_min_size", 2**14)
        )
        if self.is_acn:
            shardings = shardings.replace(code_table=nn_search.table_sharding(self.mesh))
        return shardings

    def neighbour_code_fn(
        self, table: jax.Array, exclude_B: jax.Array | None, *, num_valid: int
    ) -> acn_model.NeighbourCodeFn:
        """c_hat: the code of a neighbour drawn uniformly from the K nearest rows of table."""
        k = int(self.config.model.num_neighbours)

        def draw(code_BxZ: jax.Array, rng: jax.Array) -> jax.Array:
            _, index_BxK = nn_search.sharded_nearest_neighbours(
                code_BxZ,
                table,
                mesh=self.mesh,
                k=k,
                exclude_B=exclude_B,
                num_valid=num_valid,
                block_size=self.block_size,
            )
            choice_B = jax.random.randint(rng, (code_BxZ.shape[0], 1), 0, k)
            chosen_B = jnp.take_along_axis(index_BxK, choice_B, axis=1)[:, 0]
            return nn_search.gather_rows(table, chosen_B, mesh=self.mesh)

        return draw

    def train_step(
        self, state: VAEState, batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> tuple[VAEState, dict]:
        """One step on Eq. 3 (or the VAE loss); ACN then writes the batch's codes into the table."""
        rng = jax.random.fold_in(rng, state.step)  # the loop passes one key; each step draws anew
        neighbour_fn = None
        if self.is_acn:
            neighbour_fn = self.neighbour_code_fn(
                state.code_table, batch["index"], num_valid=self.num_codes
            )
        loss_fn = lambda p: acn_model.acn_loss(
            p, model=self.model, x_BxHxWxC=batch["x"], rng=rng, neighbour_code_fn=neighbour_fn
        )
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
        )
        if self.is_acn:
            table = nn_search.refresh_rows(
                state.code_table, batch["index"], aux["code"], mesh=self.mesh
            )
            new_state = new_state.replace(code_table=table)
        metrics = {
            "loss": loss,
            "kl": aux["kl"],
            "reconstruction": aux["reconstruction"],
            "grad_norm": optax.tree_utils.tree_norm(grads),
        }
        return new_state, metrics

    def describe(self) -> list[str]:
        """The data, the model and the table."""
        abstract = jax.eval_shape(self.init_state, jax.random.key(0))
        size = sum(x.size for x in jax.tree.leaves(abstract.params))
        lines = [
            f"training data: {self.train_data.source} ({self.num_codes} images)",
            f"model: {self.config.model.kind} with a {self.config.model.decoder} decoder, "
            f"{size:,} parameters on {jax.device_count()} devices",
        ]
        if self.is_acn:
            lines.append(
                f"code table: {self.num_codes} codes of {self.model.latent_dim} dims "
                f"({self.table_rows} rows with padding, blocks of {self.block_size})"
            )
        return lines

    # ---- evaluation --------------------------------------------------------------------------

    def eval_tag(self) -> str:
        """The split; the runner adds the data source."""
        return str(self.config.eval.split)

    def _batched(
        self,
        fn: Callable,
        arrays: tuple[np.ndarray, ...],
        extra: Any = (),
        static: tuple = (),
    ) -> list[np.ndarray]:
        """fn(static, start, extra, *batch) over fixed-size batches (tail padded), concatenated.

        fn must be a stable function (a method): it is jitted once per batch size and static.
        """
        num = len(arrays[0])
        devices = jax.device_count()
        batch_size = -(-min(int(self.config.eval.batch_size), num) // devices) * devices
        sharding = mesh_lib.batch_sharding(self.mesh)
        if not hasattr(self, "_jitted"):
            self._jitted = {}
        key = (fn, batch_size, static)
        if key not in self._jitted:
            self._jitted[key] = jax.jit(
                functools.partial(fn, static), out_shardings=mesh_lib.replicated(self.mesh)
            )
        jitted = self._jitted[key]
        outputs = []
        rows = distributed.process_slice(batch_size)
        for start in range(0, num, batch_size):
            chunk = [a[start : start + batch_size] for a in arrays]
            padded = [
                np.concatenate([c, np.zeros((batch_size - len(c), *c.shape[1:]), c.dtype)])
                for c in chunk
            ]
            inputs = distributed.global_batch(tuple(p[rows] for p in padded), sharding)
            out = jitted(start, extra, *inputs)
            outputs.append([np.asarray(o)[: len(chunk[0])] for o in out])
        return [np.concatenate(parts) for parts in zip(*outputs, strict=True)]

    def _encode(self, static: tuple, start: int, params: Any, x_BxHxWxC: jax.Array):
        del static, start
        return (self.model.apply(params, x_BxHxWxC, method=acn_model.ACNModel.encode),)

    def encode_all(self, params: Any, x_NxHxWxC: np.ndarray) -> np.ndarray:
        """The codes c(x) of every image, N x Z."""
        return self._batched(self._encode, (x_NxHxWxC,), params)[0]

    def _search(self, static: tuple, start: int, table_NxZ: jax.Array, queries_BxZ: jax.Array):
        k, exclude_self = static
        exclude = start + jnp.arange(queries_BxZ.shape[0], dtype=jnp.int32)
        num_valid = table_NxZ.shape[0]
        rows, block = nn_search.padded_table_size(
            num_valid, num_shards=1, block_size=int(self.config.model.search_block_size)
        )
        padded = jnp.zeros((rows, table_NxZ.shape[1]), jnp.float32).at[:num_valid].set(table_NxZ)
        _, index = nn_search.nearest_neighbours(
            queries_BxZ.astype(jnp.float32),
            padded,
            k=k,
            exclude_B=exclude if exclude_self else None,
            num_valid=num_valid,
            block_size=block,
        )
        return (index,)

    def nearest(
        self, queries: np.ndarray, table: np.ndarray, *, k: int, exclude_self: bool
    ) -> np.ndarray:
        """Indices of the k nearest rows of table for every query (the query's own row excluded)."""
        table = jnp.asarray(table, jnp.float32)
        return self._batched(self._search, (queries,), table, static=(k, exclude_self))[0]

    def _ledger(self, static: tuple, start: int, extra: tuple, x_BxHxWxC, code_hat_BxZ):
        del static
        params, key = extra
        kl, recon, _ = acn_model.ledger_terms(
            params,
            model=self.model,
            x_BxHxWxC=x_BxHxWxC,
            rng=jax.random.fold_in(key, start),
            code_hat_BxZ=code_hat_BxZ if self.is_acn else None,
        )
        return kl, recon

    def evaluate(self, state: VAEState, *, step: int, quick: bool, progress: Any) -> dict:
        """The compression ledger and the K-NN accuracy of the codes (module docstring)."""
        del step
        config = self.config
        split = str(config.eval.split)
        eval_data = self._load(split)
        num = (
            eval_data.num_examples if not quick else min(eval_data.num_examples, QUICK_MAX_EXAMPLES)
        )
        repeats = 1 if quick else int(config.eval.repeats)
        k = int(config.model.num_neighbours)
        from_self = config.eval.neighbours_from == "self"
        # Row i of the eval split is training row i when the split is "train": exclude it too.
        own_row = from_self or split == "train"
        tracker = progress("eval", repeats + 1, unit="passes")

        train_x = self.images(self.train_data, np.random.default_rng([int(config.seed), 5]))
        train_codes = self.encode_all(state.params, train_x)
        kl_RxN, recon_RxN, first_code = [], [], []
        for repeat in range(repeats):
            rng = np.random.default_rng([int(config.seed), 6, repeat])
            x = self.images(eval_data, rng, slice(0, num))
            codes = self.encode_all(state.params, x)
            key = jax.random.fold_in(jax.random.key(int(config.seed)), 1000 + repeat)
            if self.is_acn:
                table = codes if from_self else train_codes
                index_NxK = self.nearest(codes, table, k=k, exclude_self=own_row)
                choice = np.random.default_rng([int(config.seed), 7, repeat]).integers(0, k, num)
                code_hat = table[index_NxK[np.arange(num), choice]]
            else:
                code_hat = np.zeros_like(codes)
            kl, recon = self._batched(self._ledger, (x, code_hat), (state.params, key))
            kl_RxN.append(kl)
            recon_RxN.append(recon)
            first_code.append(0.5 * float(np.sum(np.square(codes[0]))))
            tracker.advance()

        kl_N = np.mean(kl_RxN, axis=0).astype(np.float64)
        recon_N = np.mean(recon_RxN, axis=0).astype(np.float64)
        if self.is_acn and from_self:
            # The first code of the ordering goes under the unconditional prior N(0, I).
            kl_N[0] = float(np.mean(first_code))
        total_N = kl_N + recon_N

        labels = eval_data.labels_N[:num]
        same = split == "train"
        knn = self.knn_accuracy(codes, labels, train_codes, exclude_self=same)
        pixel_knn = self.knn_accuracy(
            x.reshape(num, -1), labels, train_x.reshape(len(train_x), -1), exclude_self=same
        )
        tracker.advance()
        stderr = lambda v: float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None
        return {
            "nll_upper_bound_nats_per_image": float(total_N.mean()),
            "nll_upper_bound_nats_per_image_stderr": stderr(total_N),
            "kl_nats_per_image": float(kl_N.mean()),
            "kl_nats_per_image_stderr": stderr(kl_N),
            "reconstruction_nats_per_image": float(recon_N.mean()),
            "reconstruction_nats_per_image_stderr": stderr(recon_N),
            "first_code_nats": float(kl_N[0]) if self.is_acn and from_self else None,
            "knn_accuracy": knn[0],
            "knn_accuracy_stderr": knn[1],
            "knn_k": int(config.eval.knn_k),
            "model": f"{config.model.kind} ({config.model.decoder} decoder)",
            "neighbours_from": config.eval.neighbours_from if self.is_acn else None,
            "unit": "nats/image",
            "split": split,
            "data_source": f"{eval_data.source} ({eval_data.num_examples} images)",
            "num_examples": num,
            "repeats": repeats,
            "baseline": self._baseline(eval_data, num, pixel_knn),
        }

    def knn_accuracy(
        self, queries: np.ndarray, labels: np.ndarray, table: np.ndarray, *, exclude_self: bool
    ) -> tuple[float | None, float | None]:
        """(accuracy, standard error) of a majority vote of the eval.knn_k nearest training rows.

        exclude_self: query i is training row i (eval on the train split), never its own vote.
        """
        train_labels = self.train_data.labels_N
        if (labels < 0).any() or (train_labels < 0).any():
            return None, None
        k = int(self.config.eval.knn_k)
        index_NxK = self.nearest(queries.astype(np.float32), table, k=k, exclude_self=exclude_self)
        votes = np.zeros((len(queries), int(train_labels.max()) + 1))
        # One vote per neighbour; nearer neighbours break ties (a weight below one vote).
        weights = 1.0 + 1e-3 * (k - np.arange(k)) / k
        np.add.at(votes, (np.arange(len(queries))[:, None], train_labels[index_NxK]), weights)
        accuracy = float(np.mean(votes.argmax(axis=1) == labels))
        return accuracy, math.sqrt(accuracy * (1.0 - accuracy) / len(queries))

    def _baseline(self, eval_data: ImageSplit, num: int, pixel_knn: tuple) -> dict:
        if self.binary:
            nll = mnist.independent_bernoulli_nll_nats(
                self.train_data.intensities_NxHxW, eval_data.intensities_NxHxW[:num]
            )
            name = "independent per-pixel Bernoulli fit to the training images"
        else:
            nll = float(np.prod(eval_data.images.shape[1:]) * math.log(256))
            name = "uniform over the 256 levels of every sub-pixel"
        return {
            "name": name,
            "nll_nats_per_image": nll,
            "knn_name": f"{self.config.eval.knn_k}-NN on raw pixels",
            "knn_accuracy": pixel_knn[0],
        }

    def format_eval(self, report: Mapping[str, Any]) -> str:
        """The ledger in one line, the K-NN accuracy and the baselines."""
        err = lambda key: (
            "" if report.get(f"{key}_stderr") is None else f" +- {report[f'{key}_stderr']:.2f}"
        )
        knn = report["knn_accuracy"]
        knn_text = "" if knn is None else f"; {report['knn_k']}-NN accuracy {knn:.4f}"
        base = report["baseline"]
        return (
            f"{report['model']}: upper bound {report['nll_upper_bound_nats_per_image']:.2f}"
            f"{err('nll_upper_bound_nats_per_image')} = KL "
            f"{report['kl_nats_per_image']:.2f}{err('kl_nats_per_image')} + reconstruction "
            f"{report['reconstruction_nats_per_image']:.2f}"
            f"{err('reconstruction_nats_per_image')} {report['unit']} on "
            f"{report['num_examples']} {report['split']} images{knn_text}; baselines: "
            f"{base['nll_nats_per_image']:.2f} nats ({base['name']})"
            + (
                ""
                if base["knn_accuracy"] is None
                else f", {base['knn_accuracy']:.4f} ({base['knn_name']})"
            )
        )

    # ---- samples -----------------------------------------------------------------------------

    def sample(self, state: VAEState, out_dir: str, *, step: int, progress: Any) -> dict:
        """Daydream strips (ACN) or prior samples (VAE), reconstructions, and the PCA of the codes."""
        config = self.config
        num_chains = int(config.sample.num_chains)
        steps = int(config.sample.daydream_steps)
        tracker = progress("sample", steps + 1, unit="decoder passes")
        eval_data = self._load(str(config.eval.split))
        start = self.images(eval_data, np.random.default_rng([int(config.seed), 8]))
        params = state.params
        sample_fn = jax.jit(
            lambda z, key: acn_model.sample_images(params, model=self.model, z_BxZ=z, rng=key)
        )
        key = jax.random.fold_in(jax.random.key(int(config.seed)), 9)
        x = start[:num_chains]
        frames = [x]
        if self.is_acn:
            table = np.asarray(jax.device_get(state.code_table))[: self.num_codes]
            for t in range(steps):
                key_choice, key_prior, key_x = jax.random.split(jax.random.fold_in(key, t), 3)
                code = self.encode_all(params, x)
                index = self.nearest(
                    code, table, k=int(config.model.num_neighbours), exclude_self=False
                )
                choice = np.asarray(
                    jax.random.randint(key_choice, (num_chains,), 0, index.shape[1])
                )
                code_hat = table[index[np.arange(num_chains), choice]]
                prior_params = self.model.apply(params, code_hat, method=acn_model.ACNModel.prior)
                z = prior_lib.sample_mixture(key_prior, *prior_params)
                x, _ = sample_fn(z, key_x)
                x = np.asarray(x)
                frames.append(x)
                tracker.advance()
            strip_name, strip_what = (
                "daydream",
                "daydreams (a chain per row, from the real image at left)",
            )
        else:
            z = jax.random.normal(key, (num_chains * steps, self.model.latent_dim))
            x, _ = sample_fn(z, jax.random.fold_in(key, 1))
            frames = [start[:num_chains], *np.split(np.asarray(x), steps)]
            tracker.advance(steps)
            strip_name, strip_what = "prior_samples", "samples from N(0, I) (real images at left)"
        strip_NxHxWxC = np.stack(frames, axis=1).reshape(-1, *frames[0].shape[1:])

        codes = self.encode_all(params, start)
        recon_z = jnp.asarray(codes[:num_chains])
        _, recon_mean = sample_fn(recon_z, jax.random.fold_in(key, 2))
        tracker.advance()
        if jax.process_index() != 0:
            return {}
        to_unit = (lambda a: a) if self.binary else (lambda a: (np.asarray(a) + 1.0) / 2.0)
        return {
            strip_what: plots.save_image_grid(
                to_unit(strip_NxHxWxC),
                os.path.join(out_dir, f"{strip_name}_step{step}.png"),
                num_cols=steps + 1,
            ),
            "reconstructions (top row input, bottom row decoder mean at z = c(x))": plots.save_image_grid(
                to_unit(np.concatenate([start[:num_chains], np.asarray(recon_mean)])),
                os.path.join(out_dir, f"reconstructions_step{step}.png"),
                num_cols=num_chains,
            ),
            "codes, first two principal components": plots.save_pca_scatter(
                codes,
                eval_data.labels_N,
                os.path.join(out_dir, f"code_pca_step{step}.png"),
                title=f"{config.model.kind} codes of {len(codes)} {config.eval.split} images",
            ),
        }


METHOD = ACN
