"""The example method: a mixture of Bernoullis on binarised MNIST, and the template to copy.

Each piece of a method, at its smallest (experiments/contract.py lists the contract):
- the maths lives in deepgen/example/mixture.py as pure functions; this file only wires it up;
- `validate` rejects a bad config with one line (deepgen.core.validate.Checker), before any
  data is loaded or anything is written;
- `__init__` loads the data of the mode and builds the optimiser; `init_state` and the pure
  `train_step` are what the core loop jits; `batches` is a resumable EpochIterator whose global
  batch is the same for any number of processes and devices;
- `evaluate` returns the metric in its unit with its standard error, the split, the data
  source and a baseline on the same data; `sample` writes PNG grids; `after_train` a curve.
"""

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from deepgen.core import distributed, metrics, plots
from deepgen.core import mesh as mesh_lib
from deepgen.core.errors import ConfigError
from deepgen.core.optim import make_optimizer
from deepgen.core.train_loop import Unit
from deepgen.core.train_state import TrainState
from deepgen.core.validate import Checker
from deepgen.data import mnist
from deepgen.data.pipeline import EpochIterator
from deepgen.example import mixture
from experiments.contract import Method

log = logging.getLogger(__name__)

NUM_PIXELS = mnist.IMAGE_SIDE * mnist.IMAGE_SIDE
BASELINE_NAME = "independent per-pixel Bernoulli fit to the training digits"
QUICK_MAX_EXAMPLES = 256


class Example(Method):
    """A mixture of model.num_components products of Bernoullis, trained by Adam on the exact NLL.

    One unit of progress is one optimiser step on train.batch_size digits.
    """

    name = "example"

    @classmethod
    def validate(cls, config: ConfigDict) -> None:
        """One ConfigError naming the first field whose value is not allowed."""
        check = Checker(config)
        check.common()
        check.optimiser()
        check.one_of("data.name", mnist.NAMES)
        check.one_of("data.source", mnist.SOURCES)
        check.positive("model.num_components", "eval.repeats", "eval.batch_size")
        check.one_of("eval.split", mnist.SPLITS)
        check.positive("sample.num_images")
        check.divisible_by_devices()

    def __init__(self, config: ConfigDict, *, mode: str = "train"):
        super().__init__(config, mode=mode)
        self.train_data = self._load("train")  # eval's baseline needs it too
        if mode == "train" and config.train.batch_size > self.train_data.num_examples:
            raise ConfigError(
                f"config.train.batch_size={config.train.batch_size} exceeds the "
                f"{self.train_data.num_examples} training digits of {self.train_data.source}"
            )
        self.optimizer = make_optimizer(config.opt, int(config.train.num_steps))

    def _load(self, split: str) -> mnist.ImageSplit:
        data = self.config.data
        return mnist.load_mnist(
            split, name=data.name, data_dir=data.dir or None, source=data.source
        )

    # ---- training ----------------------------------------------------------------------------

    def unit(self) -> Unit:
        """One optimiser step on train.batch_size digits."""
        return Unit("steps", 1, int(self.config.train.batch_size))

    def init_state(self, rng: jax.Array) -> TrainState:
        """Fresh parameters and Adam state; no EMA here, so ema_params mirrors params."""
        params = mixture.init_params(
            rng, num_components=int(self.config.model.num_components), num_pixels=NUM_PIXELS
        )
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            ema_params=jax.tree.map(jnp.copy, params),
            opt_state=self.optimizer.init(params),
        )

    def train_step(
        self, state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> tuple[TrainState, dict]:
        """One Adam step on the mean NLL (nats per image) of the batch; deterministic, so no rng."""
        del rng
        loss, grads = jax.value_and_grad(lambda p: mixture.nll_loss(p, x_BxD=batch["x"]))(
            state.params
        )
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            step=state.step + 1, params=params, ema_params=params, opt_state=opt_state
        )
        return new_state, {"loss": loss, "grad_norm": optax.tree_utils.tree_norm(grads)}

    def batches(self) -> EpochIterator:
        """Shuffled epochs of digits, binarised afresh each time a digit is seen."""
        intensities_NxD = self.train_data.intensities_NxHxW.reshape(-1, NUM_PIXELS)
        batch_size = int(self.config.train.batch_size)

        def make_batch(indices: np.ndarray, rows: slice, rng: np.random.Generator) -> dict:
            # Draw for the whole global batch, keep this process's rows: the same global batch
            # for any number of processes.
            uniform_BxD = rng.random((len(indices), NUM_PIXELS), dtype=np.float32)[rows]
            return {"x": (uniform_BxD < intensities_NxD[indices[rows]]).astype(np.int32)}

        return EpochIterator(
            num_examples=self.train_data.num_examples,
            global_batch_size=batch_size,
            make_batch=make_batch,
            seed=int(self.config.seed),
            process_rows=distributed.process_slice(batch_size),
        )

    def describe(self) -> list[str]:
        """The data and the model size."""
        k = int(self.config.model.num_components)
        return [
            f"training data: {self.train_data.source} ({self.train_data.num_examples} digits)",
            f"model: mixture of {k} Bernoulli products, {k * (NUM_PIXELS + 1):,} parameters on "
            f"{jax.device_count()} devices",
        ]

    def after_train(self, workdir: str) -> dict[str, str]:
        """The training loss curve."""
        curve = plots.save_loss_curve(
            metrics.read_metrics(workdir),
            os.path.join(workdir, "samples", "loss_curve.png"),
            metric="loss",
            title="mixture of Bernoullis: NLL (nats/image)",
        )
        return {"loss curve": curve}

    # ---- evaluation and samples --------------------------------------------------------------

    def eval_tag(self) -> str:
        """The split; the runner adds the data source."""
        return str(self.config.eval.split)

    def evaluate(self, state: TrainState, *, step: int, quick: bool, progress: Any) -> dict:
        """The exact NLL of the eval split, averaged over eval.repeats dynamic binarisations.

        quick: one binarisation of at most 256 digits.
        """
        del step
        config = self.config
        split = config.eval.split
        eval_data = self._load(split)
        intensities_NxD = eval_data.intensities_NxHxW.reshape(-1, NUM_PIXELS)
        if quick:
            intensities_NxD = intensities_NxD[:QUICK_MAX_EXAMPLES]
        repeats = 1 if quick else int(config.eval.repeats)
        num = len(intensities_NxD)
        devices = jax.device_count()
        batch_size = -(-int(config.eval.batch_size) // devices) * devices  # the tail is masked
        num_batches = -(-num // batch_size)
        batch_sharding = mesh_lib.batch_sharding(self.mesh)
        rows = distributed.process_slice(batch_size)
        total_ll = jax.jit(
            lambda params, x_BxD, w_B: jnp.sum(mixture.log_likelihood(params, x_BxD) * w_B),
            in_shardings=(None, batch_sharding, batch_sharding),
        )
        tracker = progress("eval", repeats * num_batches)
        nll_per_repeat = []
        for repeat in range(repeats):
            rng = np.random.default_rng([int(config.seed), 3, repeat])
            x_NxD = mnist.binarize(intensities_NxD, rng).astype(np.int32)
            total = 0.0
            for b in range(num_batches):
                chunk = x_NxD[b * batch_size : (b + 1) * batch_size]
                x_BxD = np.zeros((batch_size, NUM_PIXELS), np.int32)
                w_B = np.zeros((batch_size,), np.float32)
                x_BxD[: len(chunk)], w_B[: len(chunk)] = chunk, 1.0
                x_global, w_global = distributed.global_batch(
                    (x_BxD[rows], w_B[rows]), batch_sharding
                )
                total += float(total_ll(state.params, x_global, w_global))
                tracker.advance()
            nll_per_repeat.append(-total / num)
        nll = np.asarray(nll_per_repeat, np.float64)
        stderr = float(nll.std(ddof=1) / math.sqrt(repeats)) if repeats > 1 else None
        baseline = mnist.independent_bernoulli_nll_nats(
            self.train_data.intensities_NxHxW, eval_data.intensities_NxHxW[:num]
        )
        return {
            "nll_nats_per_image": float(nll.mean()),
            "nll_nats_per_image_stderr": stderr,
            "unit": "nats/image",
            "split": split,
            "data_source": f"{eval_data.source} ({eval_data.num_examples} digits)",
            "num_examples": num,
            "repeats": repeats,
            "baseline": {"name": BASELINE_NAME, "nll_nats_per_image": baseline},
        }

    def format_eval(self, summary: Mapping[str, Any]) -> str:
        """One line: the NLL with its standard error, and the baseline."""
        stderr = summary["nll_nats_per_image_stderr"]
        error = "" if stderr is None else f" +- {stderr:.2f}"
        return (
            f"example NLL {summary['nll_nats_per_image']:.2f}{error} {summary['unit']} on "
            f"{summary['num_examples']} {summary['split']} digits ({summary['repeats']} "
            f"binarisation{'s' if summary['repeats'] != 1 else ''}) at step {summary['step']}; baseline "
            f"{summary['baseline']['nll_nats_per_image']:.2f} ({summary['baseline']['name']})"
        )

    def sample(self, state: TrainState, out_dir: str, *, step: int, progress: Any) -> dict:
        """A grid of sample.num_images ancestral samples and one of the component means."""
        num = int(self.config.sample.num_images)
        tracker = progress("sample", 1, unit="sampling runs")
        rng = jax.random.fold_in(jax.random.key(self.config.seed), 4)
        params = jax.device_get(state.params)
        x_NxD = np.asarray(jax.jit(mixture.sample, static_argnums=2)(params, rng, num))
        pi_K, mu_KxD = (np.asarray(a) for a in mixture.means(params))
        tracker.advance()
        if jax.process_index() != 0:
            return {}
        side = mnist.IMAGE_SIDE
        order = np.argsort(-pi_K)  # the heaviest components first
        return {
            "samples": plots.save_image_grid(
                x_NxD.reshape(num, side, side).astype(np.float32),
                os.path.join(out_dir, f"samples_step{step}.png"),
            ),
            "component means (by weight)": plots.save_image_grid(
                mu_KxD[order].reshape(-1, side, side),
                os.path.join(out_dir, f"means_step{step}.png"),
            ),
        }


METHOD = Example
