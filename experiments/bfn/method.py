"""BFN on binarized MNIST, text8 and CIFAR-10: state, train step, evaluation and sampling.

Training minimises the continuous-time loss L^inf (BFN paper, Sec. 6), as the official code
does; evaluation reports the NLL bound L + L^r in the paper's unit (nats per image, bits per
character), with L the continuous-time loss or the n-step loss L^n for each configured n and
L^r the reconstruction loss, averaged over repeats with their standard error. What differs
between datasets lives in experiments/bfn/families.py.
"""

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
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from deepgen.bfn.flows import make_flow
from deepgen.bfn.model import count_params
from deepgen.core import distributed, metrics, plots
from deepgen.core import mesh as mesh_lib
from deepgen.core.errors import ConfigError
from deepgen.core.optim import make_optimizer
from deepgen.core.train_loop import Unit
from deepgen.core.train_state import TrainState, ema_decay, ema_update
from deepgen.core.validate import Checker
from deepgen.data import mnist
from experiments.bfn.families import DTYPES, family_for
from experiments.contract import Method

log = logging.getLogger(__name__)

SAMPLE_SOLVERS = ("bfn", "sde1", "sde2", "ode1", "ode2")


def validate(config: ConfigDict) -> None:
    """Check values the config types cannot: one ConfigError naming the field and what is allowed."""
    check = Checker(config)
    family = family_for(config)
    family.validate(config)
    check.common()
    check.optimiser()
    check.one_of("model.dtype", tuple(DTYPES))
    check.in_unit_interval("model.dropout")
    check.in_unit_interval("ema.decay")
    check(
        all(int(n) >= 0 for n in config.eval.n_steps), "eval.n_steps", "integers >= 0 (0 = L^inf)"
    )
    check.positive("eval.repeats", "sample.n_steps", "sample.num_images")
    check.one_of("eval.split", mnist.SPLITS)
    check.one_of(
        "sample.solver",
        SAMPLE_SOLVERS,
        " (bfn: the paper's sampler; the rest: BFN-Solver)",
    )
    check.divisible_by_devices()


def _round_up_to_devices(value: int) -> int:
    devices = jax.device_count()
    return -(-value // devices) * devices


def network_apply(model, params: Any, *inputs: jax.Array, train: bool, rng) -> jax.Array:
    """The network's raw outputs for the family's view of the input parameters and t."""
    return model.apply({"params": params}, *inputs, train=train, rngs={"dropout": rng})


def init_state(
    rng: jax.Array,
    *,
    family,
    flow,
    model,
    optimizer: optax.GradientTransformation,
) -> TrainState:
    """Fresh parameters, their EMA copy and the optimiser state."""
    inputs = family.model_inputs(
        flow.prior_inputs((1, *family.variable_shape)), jnp.zeros((1,), jnp.float32)
    )
    params = model.init({"params": rng}, *inputs, train=False)["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=optimizer.init(params),
    )


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    flow,
    optimizer: optax.GradientTransformation,
    ema: ConfigDict,
    per_example_metric: tuple[str, float],
) -> tuple[TrainState, dict]:
    """One optimiser step on the mean L^inf per variable (the official loss scale), then the EMA."""
    rng = jax.random.fold_in(rng, state.step)
    x_BxD = batch["x"]
    num_variables = math.prod(x_BxD.shape[1:])

    def loss_fn(params):
        per_example = flow.train_loss(params, x_BxD, rng, train=True)
        return jnp.mean(per_example) / num_variables

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay(state.step, decay=ema.decay, warmup=ema.warmup)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        ema_params=ema_update(state.ema_params, params, decay),
        opt_state=opt_state,
    )
    metric_name, nats_to_unit = per_example_metric
    return new_state, {
        "loss": loss,
        metric_name: loss * num_variables * nats_to_unit,
        "grad_norm": optax.tree_utils.tree_norm(grads),
    }


class BFN(Method):
    """Bayesian Flow Networks: the family of the data, model, flow and optimiser of one config.

    One unit of progress is one optimiser step on train.batch_size examples.
    """

    name = "bfn"

    @classmethod
    def validate(cls, config: ConfigDict) -> None:
        """See the module-level validate."""
        validate(config)

    def __init__(self, config: ConfigDict, *, mode: str = "train"):
        super().__init__(config, mode=mode)
        self.family = family_for(config)
        if mode == "train":  # missing data is a one-line error before anything is written
            self._train_data()
        self.variable_shape = self.family.variable_shape
        self.num_classes = self.family.num_classes
        self.model = self.family.make_model()
        self.optimizer = make_optimizer(config.opt, int(config.train.num_steps))
        self.flow = make_flow(self.family, functools.partial(network_apply, self.model), config)
        self._init_state = functools.partial(
            init_state,
            family=self.family,
            flow=self.flow,
            model=self.model,
            optimizer=self.optimizer,
        )
        nats_to_unit = self.family.from_nats(1.0)
        self._train_step = functools.partial(
            train_step,
            flow=self.flow,
            optimizer=self.optimizer,
            ema=config.ema,
            per_example_metric=(self.family.train_metric, nats_to_unit),
        )

    def init_state(self, rng: jax.Array) -> TrainState:
        """Fresh parameters, their EMA copy and the optimiser state."""
        return self._init_state(rng)

    def train_step(
        self, state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> tuple[TrainState, dict]:
        """One optimiser step on the mean L^inf per variable, then the EMA."""
        return self._train_step(state, batch, rng)

    def num_params(self) -> int:
        """Parameter count, computed without allocating."""
        return count_params(jax.eval_shape(self.init_state, jax.random.key(0)).params)

    def eval_params(self, state: TrainState) -> Any:
        """EMA parameters (as the paper evaluates) unless config.eval.use_ema is False."""
        return state.ema_params if self.config.eval.use_ema else state.params

    def nll_bounds(
        self,
        params: Any,
        data: Any,
        *,
        repeats: int,
        n_steps: tuple[int, ...],
        progress: Any = None,
        max_examples: int = 0,
    ) -> dict:
        """NLL bounds in the family's unit over `repeats` passes, with standard errors."""
        config = self.config
        batch_size = _round_up_to_devices(int(config.eval.batch_size))  # the tail is masked
        batch_sharding = mesh_lib.batch_sharding(self.mesh)
        terms_fn = jax.jit(
            functools.partial(
                self.flow.nll_terms,
                n_steps=tuple(int(n) for n in n_steps),
                num_samples=int(config.eval.num_samples),
            ),
            in_shardings=(None, batch_sharding, None),
        )
        rows = distributed.process_slice(batch_size)
        base_rng = jax.random.fold_in(jax.random.key(config.seed), 2)
        per_repeat: dict[str, list[float]] = {}
        num = 0
        tracker = None
        for repeat in range(repeats):
            examples = self.family.eval_examples(data, repeat)
            if max_examples:
                examples = examples[:max_examples]
            num = len(examples)
            if tracker is None and progress is not None:
                tracker = progress("eval", repeats * -(-num // batch_size))
            sums: dict[str, float] = {}
            for b in range(-(-num // batch_size)):
                chunk = examples[b * batch_size : (b + 1) * batch_size]
                valid = len(chunk)
                padded = np.zeros((batch_size, *chunk.shape[1:]), self.flow.batch_dtype)
                padded[:valid] = chunk
                global_x = distributed.global_batch(padded[rows], batch_sharding)
                rng = jax.random.fold_in(jax.random.fold_in(base_rng, repeat), b)
                terms = jax.device_get(terms_fn(params, global_x, rng))
                if tracker is not None:
                    tracker.advance()
                for name, values in terms.items():
                    sums[name] = sums.get(name, 0.0) + float(
                        np.sum(np.asarray(values)[:valid], dtype=np.float64)
                    )
            for name, total in sums.items():
                per_repeat.setdefault(name, []).append(self.family.from_nats(total / num))
        recon = np.asarray(per_repeat.pop("recon"))
        metric = self.family.metric
        results = []
        for name, losses in per_repeat.items():
            nll = np.asarray(losses) + recon
            results.append(
                {
                    "n_steps": 0 if name == "inf" else int(name),
                    metric: float(nll.mean()),
                    "stderr": _stderr(nll),
                    "loss": float(np.mean(losses)),
                    "reconstruction": float(recon.mean()),
                    "unit": self.family.unit,
                }
            )
        results.sort(key=lambda r: r["n_steps"])
        return {"results": results, "repeats": repeats, "num_examples": num}

    def draw(
        self,
        params: Any,
        *,
        num_samples: int,
        n_steps: int,
        rng: jax.Array,
        known: tuple[np.ndarray, np.ndarray] | None = None,
        solver: str = "bfn",
        on_time: Callable[[float], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """n-step samples and the t = 1 output probabilities, jitted and sharded over the batch.

        known = (mask, values), each (num_samples, *variable_shape): positions where mask is true
        are clamped to their values in every Bayesian update (infilling, inpainting).
        on_time(t), when given, is called on the host with the time of every network call
        (a progress report; it does not change the samples).
        """
        flow = self.flow
        if on_time is not None:
            network = functools.partial(network_apply, self.model)

            def reporting_network(params, *inputs, train, rng):
                jax.debug.callback(lambda t_B: on_time(float(np.max(t_B))), inputs[-1])
                return network(params, *inputs, train=train, rng=rng)

            flow = make_flow(self.family, reporting_network, self.config)
        padded = _round_up_to_devices(num_samples)
        batch_sharding = mesh_lib.batch_sharding(self.mesh)
        shape = (padded, *self.variable_shape)
        known_mask = np.zeros(shape, bool)
        known_values = np.zeros(shape, self.flow.batch_dtype)
        if known is not None:
            known_mask[:num_samples], known_values[:num_samples] = known

        def run(rng, known_mask, known_values):
            return flow.sample(
                params,
                rng=rng,
                batch_size=padded,
                variable_shape=self.variable_shape,
                n_steps=n_steps,
                known_mask=known_mask,
                known_values=known_values,
                solver=solver,
            )

        samples, probs = jax.jit(
            run,
            in_shardings=(None, batch_sharding, batch_sharding),
            out_shardings=(batch_sharding, batch_sharding),
        )(rng, known_mask, known_values)
        if jax.process_count() > 1:  # every process gets all samples
            samples = multihost_utils.process_allgather(samples, tiled=True)
            probs = multihost_utils.process_allgather(probs, tiled=True)
        return np.asarray(samples)[:num_samples], np.asarray(probs)[:num_samples]

    # ---- the contract ------------------------------------------------------------------------

    def unit(self) -> Unit:
        """One optimiser step on train.batch_size examples."""
        return Unit("steps", 1, int(self.config.train.batch_size))

    def _train_data(self) -> Any:
        if not hasattr(self, "_train_split"):
            self._train_split = self.family.load("train")
            if self.mode == "train" and self.config.train.batch_size > self.family.num_examples(
                self._train_split
            ):
                raise ConfigError(
                    f"config.train.batch_size={self.config.train.batch_size} exceeds the "
                    f"{self.family.num_examples(self._train_split)} training examples of "
                    f"{self.family.describe(self._train_split)}"
                )
        return self._train_split

    def batches(self):
        """Shuffled epochs of the training split; the position is checkpointed."""
        return self.family.train_batches(self._train_data())

    def describe(self) -> list[str]:
        """The data and the model size."""
        return [
            f"training data: {self.family.describe(self._train_data())}",
            f"model: {self.num_params():,} parameters on {jax.device_count()} devices, "
            f"mesh {dict(self.mesh.shape)}",
        ]

    def loop_options(self) -> dict[str, Any]:
        """Validation NLL (L^inf + L^r) every train.eval_every steps when it is set."""
        config, family = self.config, self.family
        if not config.train.eval_every:
            return {}
        validation_data = family.load("validation")

        def eval_fn(state: TrainState) -> dict:
            report = self.nll_bounds(
                self.eval_params(state),
                validation_data,
                repeats=int(config.eval.validation_repeats),
                n_steps=(0,),
            )
            return {family.metric: report["results"][0][family.metric]}

        return {"eval_fn": eval_fn}

    def after_train(self, workdir: str) -> dict[str, str]:
        """The training loss curve."""
        curve = plots.save_loss_curve(
            metrics.read_metrics(workdir),
            os.path.join(workdir, "samples", "loss_curve.png"),
            metric="loss",
            title="BFN L^inf (nats per variable)",
        )
        return {"loss curve": curve}

    def eval_tag(self) -> str:
        """The split; the runner adds the data source."""
        return str(self.config.eval.split)

    def evaluate(self, state: TrainState, *, step: int, quick: bool, progress: Any) -> dict:
        """The NLL bound in the paper's unit for continuous time and each eval.n_steps.

        quick: one repeat, continuous time only, at most 8 eval batches of examples.
        """
        config, family = self.config, self.family
        split = config.eval.split
        eval_data = family.load(split)
        n_steps = (0,) if quick else tuple(int(n) for n in config.eval.n_steps)
        if 0 not in n_steps:
            n_steps = (0, *n_steps)
        repeats = 1 if quick else int(config.eval.repeats)
        max_examples = 8 * int(config.eval.batch_size) if quick else 0
        report = self.nll_bounds(
            self.eval_params(state),
            eval_data,
            repeats=repeats,
            n_steps=n_steps,
            progress=progress,
            max_examples=max_examples,
        )
        continuous = next(r for r in report["results"] if r["n_steps"] == 0)
        baseline_name, baseline = family.baseline(self._train_data(), eval_data)
        metric = family.metric
        return {
            metric: continuous[metric],
            f"{metric}_stderr": continuous["stderr"],
            "unit": family.unit,
            "bound": "continuous-time L^inf + reconstruction L^r (n_steps 0)",
            "num_examples": report["num_examples"],
            family.count_name: report["num_examples"],
            "split": split,
            "data_source": family.describe(eval_data),
            "repeats": report["repeats"],
            "params": "ema" if config.eval.use_ema else "raw",
            "baseline": {"name": baseline_name, metric: baseline},
            "results": report["results"],
        }

    def format_eval(self, summary: Mapping[str, Any]) -> str:
        """A table of the bound for each number of steps, and the baseline."""
        return _table(summary, self.family.metric)

    def sample(self, state: TrainState, out_dir: str, *, step: int, progress: Any) -> dict:
        """sample.num_images samples in sample.n_steps steps, named by step, solver, conditioning."""
        config = self.config
        n = int(config.sample.n_steps)
        rng = jax.random.fold_in(jax.random.key(config.seed), 4)
        num_samples = int(config.sample.num_images)
        known = self.family.known_positions(num_samples)
        solver = config.sample.get("solver", "bfn")
        tracker = progress("sample", n, unit="sampler steps")

        def on_time(t: float) -> None:  # step i (1-based) evaluates the network at t = (i-1)/n
            if t < 1.0:  # t = 1 is the final readout, not a step
                tracker.advance(max(0, round(t * n) + 1 - tracker.done))

        samples, probs = self.draw(
            self.eval_params(state),
            num_samples=num_samples,
            n_steps=n,
            rng=rng,
            known=known,
            solver=solver,
            on_time=on_time,
        )
        tracker.advance(n - tracker.done)
        stem = f"step{step}_n{n}" + ("" if solver == "bfn" else f"_{solver}")
        if config.sample.get("inpaint", ""):
            stem += f"_inpaint_{config.sample.inpaint}"
        if config.sample.get("prompt", ""):
            stem += "_prompted"
        if jax.process_index() != 0:
            return {}
        written = self.family.write_samples(samples, probs, out_dir, stem)
        return {f"{what} ({n} steps)": path for what, path in written.items()}


def _stderr(values: np.ndarray) -> float | None:
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def _table(summary: Mapping[str, Any], metric: str) -> str:
    unit = summary["unit"]
    lines = [
        f"BFN NLL on {summary['num_examples']} {summary['split']} examples of "
        f"{summary['data_source']}, step {summary['step']}, {summary['params']} params, "
        f"{summary['repeats']} repeats",
        f"{'n steps':>8} | {'NLL ' + unit:>16} | {'stderr':>7} | {'L':>8} | {'L^r':>8}",
    ]
    for r in summary["results"]:
        stderr = "-" if r["stderr"] is None else f"{r['stderr']:.3g}"
        lines.append(
            f"{r['n_steps']!s:>8} | {r[metric]:>16.4g} | {stderr:>7} | "
            f"{r['loss']:>8.4g} | {r['reconstruction']:>8.4g}"
        )
    baseline = summary["baseline"]
    lines.append(f"baseline, {baseline['name']}: {baseline[metric]:.4g} {unit}")
    return "\n".join(lines)


METHOD = BFN
