"""BFN on discrete data (binarized MNIST, text8): state, train and eval steps, and the modes.

Training minimises the continuous-time loss L^inf (BFN paper, Sec. 6), as the official code
does; evaluation reports the NLL bound L + L^r in the paper's unit (nats per image, bits per
character), with L the continuous-time loss or the n-step loss L^n for each configured n and
L^r the reconstruction loss, averaged over repeats with their standard error. What differs
between datasets lives in experiments/bfn/families.py.
"""

import functools
import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from deepgen.bfn.model import count_params
from deepgen.core import distributed, metrics, plots, train_loop
from deepgen.core import mesh as mesh_lib
from deepgen.core.errors import ConfigError, UserError
from deepgen.core.optim import OPTIMIZERS, SCHEDULES, make_optimizer
from deepgen.core.train_state import TrainState, ema_decay, ema_update
from deepgen.data import mnist
from experiments.bfn.families import DTYPES, family_for
from experiments.bfn.flows import make_flow

log = logging.getLogger(__name__)

SAMPLE_SOLVERS = ("bfn", "sde1", "sde2", "ode1", "ode2")


def validate(config: ConfigDict) -> None:
    """Check values the config types cannot: one ConfigError naming the field and what is allowed."""

    def require(ok: bool, field: str, allowed: str) -> None:
        if not ok:
            value = config
            for part in field.split("."):
                value = value[part]
            raise ConfigError(f"config.{field}={value!r} is not allowed: {allowed}")

    family = family_for(config)
    family.validate(config)
    require(config.model.dtype in DTYPES, "model.dtype", f"one of {tuple(DTYPES)}")
    require(0 <= config.model.dropout < 1, "model.dropout", "in [0, 1)")
    require(config.train.num_steps > 0, "train.num_steps", "a positive integer")
    require(config.train.batch_size > 0, "train.batch_size", "a positive integer")
    require(config.train.log_every > 0, "train.log_every", "a positive integer")
    require(config.opt.name in OPTIMIZERS, "opt.name", f"one of {OPTIMIZERS}")
    require(config.opt.schedule in SCHEDULES, "opt.schedule", f"one of {SCHEDULES}")
    require(config.opt.lr > 0, "opt.lr", "a positive number")
    require(0 <= config.ema.decay < 1, "ema.decay", "in [0, 1)")
    require(config.ckpt.keep > 0, "ckpt.keep", "a positive integer")
    require(
        all(int(n) >= 0 for n in config.eval.n_steps), "eval.n_steps", "integers >= 0 (0 = L^inf)"
    )
    require(config.eval.repeats > 0, "eval.repeats", "a positive integer")
    require(config.eval.split in mnist.SPLITS, "eval.split", f"one of {mnist.SPLITS}")
    require(config.sample.n_steps > 0, "sample.n_steps", "a positive integer")
    require(config.sample.num_images > 0, "sample.num_images", "a positive integer")
    require(
        config.sample.get("solver", "bfn") in SAMPLE_SOLVERS,
        "sample.solver",
        f"one of {SAMPLE_SOLVERS} (bfn: the paper's sampler; the rest: BFN-Solver)",
    )


def _check_divisible(value: int, field: str) -> None:
    devices = jax.device_count()
    if value % devices:
        raise ConfigError(
            f"config.{field}={value} must be divisible by the {devices} devices JAX sees "
            f"(JAX_NUM_CPU_DEVICES on CPU); use a multiple of {devices}"
        )


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


class Experiment:
    """The family, model, optimiser and jitted functions of one config on one mesh."""

    def __init__(self, config: ConfigDict):
        self.config = config
        self.family = family_for(config)
        self.variable_shape = self.family.variable_shape
        self.num_classes = self.family.num_classes
        self.mesh = mesh_lib.make_mesh(config.mesh)
        self.model = self.family.make_model()
        self.optimizer = make_optimizer(config.opt, int(config.train.num_steps))
        self.flow = make_flow(self.family, functools.partial(network_apply, self.model), config)
        self.init_state = functools.partial(
            init_state,
            family=self.family,
            flow=self.flow,
            model=self.model,
            optimizer=self.optimizer,
        )
        nats_to_unit = self.family.from_nats(1.0)
        self.train_step = functools.partial(
            train_step,
            flow=self.flow,
            optimizer=self.optimizer,
            ema=config.ema,
            per_example_metric=(self.family.train_metric, nats_to_unit),
        )

    def num_params(self) -> int:
        """Parameter count, computed without allocating."""
        return count_params(jax.eval_shape(self.init_state, jax.random.key(0)).params)

    def restore(self, workdir: str) -> TrainState:
        """The latest checkpoint of a workdir written by --mode=train."""
        ckpt_dir = os.path.join(workdir, "checkpoints")
        missing = f"no checkpoints in {ckpt_dir}: run --mode=train with this workdir first"
        if not os.path.isdir(ckpt_dir):
            raise UserError(missing)
        state, _, checkpointer, data_state = train_loop.build_state(
            self.config, workdir, self.init_state, self.mesh
        )
        checkpointer.close()
        if not data_state:
            raise UserError(missing)
        return state

    def eval_params(self, state: TrainState) -> Any:
        """EMA parameters (as the paper evaluates) unless config.eval.use_ema is False."""
        return state.ema_params if self.config.eval.use_ema else state.params

    def evaluate(self, params: Any, data: Any, *, repeats: int, n_steps: tuple[int, ...]) -> dict:
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
        for repeat in range(repeats):
            examples = self.family.eval_examples(data, repeat)
            num = len(examples)
            sums: dict[str, float] = {}
            for b in range(-(-num // batch_size)):
                chunk = examples[b * batch_size : (b + 1) * batch_size]
                valid = len(chunk)
                padded = np.zeros((batch_size, *chunk.shape[1:]), self.flow.batch_dtype)
                padded[:valid] = chunk
                global_x = distributed.global_batch(padded[rows], batch_sharding)
                rng = jax.random.fold_in(jax.random.fold_in(base_rng, repeat), b)
                terms = jax.device_get(terms_fn(params, global_x, rng))
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
                    "n_steps": "inf" if name == "inf" else int(name),
                    metric: float(nll.mean()),
                    "stderr": _stderr(nll),
                    "loss": float(np.mean(losses)),
                    "reconstruction": float(recon.mean()),
                    "unit": self.family.unit,
                }
            )
        results.sort(key=lambda r: -1 if r["n_steps"] == "inf" else r["n_steps"])
        return {"results": results, "repeats": repeats, "num_examples": num}

    def sample(
        self,
        params: Any,
        *,
        num_samples: int,
        n_steps: int,
        rng: jax.Array,
        known: tuple[np.ndarray, np.ndarray] | None = None,
        solver: str = "bfn",
    ) -> tuple[np.ndarray, np.ndarray]:
        """n-step samples and the t = 1 output probabilities, jitted and sharded over the batch.

        known = (mask, values), each (num_samples, *variable_shape): positions where mask is true
        are clamped to their values in every Bayesian update (infilling, inpainting).
        """
        padded = _round_up_to_devices(num_samples)
        batch_sharding = mesh_lib.batch_sharding(self.mesh)
        shape = (padded, *self.variable_shape)
        known_mask = np.zeros(shape, bool)
        known_values = np.zeros(shape, self.flow.batch_dtype)
        if known is not None:
            known_mask[:num_samples], known_values[:num_samples] = known

        def run(rng, known_mask, known_values):
            return self.flow.sample(
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


def _stderr(values: np.ndarray) -> float | None:
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def _write_config(config: ConfigDict, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def run(config: ConfigDict, workdir: str, *, mode: str) -> int:
    """Train, evaluate or sample; every user-fixable problem is raised before workdir is touched."""
    _check_divisible(int(config.train.batch_size), "train.batch_size")
    if mode == "train":
        return _run_train(config, workdir)
    if mode == "eval":
        return _run_eval(config, workdir)
    return _run_sample(config, workdir)


def _run_train(config: ConfigDict, workdir: str) -> int:
    experiment = Experiment(config)
    family = experiment.family
    train_data = family.load("train")
    validation_data = family.load("validation") if config.train.eval_every else None
    if config.train.batch_size > family.num_examples(train_data):
        raise ConfigError(
            f"config.train.batch_size={config.train.batch_size} exceeds the "
            f"{family.num_examples(train_data)} training examples of {family.describe(train_data)}"
        )
    batches = family.train_batches(train_data)
    _write_config(config, workdir)
    log.info("training data: %s", family.describe(train_data))
    log.info(
        "model: %s parameters on %d devices, mesh %s",
        f"{experiment.num_params():,}",
        jax.device_count(),
        dict(experiment.mesh.shape),
    )

    eval_fn = None
    if validation_data is not None:

        def eval_fn(state: TrainState) -> dict:
            report = experiment.evaluate(
                experiment.eval_params(state),
                validation_data,
                repeats=int(config.eval.validation_repeats),
                n_steps=(0,),
            )
            return {family.metric: report["results"][0][family.metric]}

    try:
        train_loop.train(
            config,
            workdir,
            init_state=experiment.init_state,
            train_step=experiment.train_step,
            batches=batches,
            mesh=experiment.mesh,
            eval_fn=eval_fn,
        )
    except train_loop.TrainingInterrupted as stop:
        print(
            f"interrupted at step {stop.step}: checkpoint saved in {workdir}/checkpoints; "
            "run the same command to resume",
            flush=True,
        )
        return 128 + int(stop.signum)
    except train_loop.NonFiniteLossError as error:
        print(f"error: {error}", flush=True)
        return 1
    if jax.process_index() == 0:
        curve = plots.save_loss_curve(
            metrics.read_metrics(workdir),
            os.path.join(workdir, "samples", "loss_curve.png"),
            metric="loss",
            title="BFN L^inf (nats per variable)",
        )
        print(
            f"training done: checkpoints in {workdir}/checkpoints, metrics in "
            f"{workdir}/metrics.jsonl, loss curve {curve}",
            flush=True,
        )
    return 0


def _run_eval(config: ConfigDict, workdir: str) -> int:
    experiment = Experiment(config)
    family = experiment.family
    split = config.eval.split
    eval_data = family.load(split)
    train_data = family.load("train")
    state = experiment.restore(workdir)
    step = int(jax.device_get(state.step))
    n_steps = tuple(int(n) for n in config.eval.n_steps)
    if 0 not in n_steps:
        n_steps = (0, *n_steps)
    report = experiment.evaluate(
        experiment.eval_params(state), eval_data, repeats=int(config.eval.repeats), n_steps=n_steps
    )
    continuous = next(r for r in report["results"] if r["n_steps"] == "inf")
    baseline_name, baseline = family.baseline(train_data, eval_data)
    metric = family.metric
    summary = {
        metric: continuous[metric],
        f"{metric}_stderr": continuous["stderr"],
        "unit": family.unit,
        "bound": "continuous-time L^inf + reconstruction L^r",
        "num_examples": report["num_examples"],
        family.count_name: report["num_examples"],
        "split": split,
        "data_source": family.describe(eval_data),
        "repeats": report["repeats"],
        "step": step,
        "params": "ema" if config.eval.use_ema else "raw",
        "baseline": {"name": baseline_name, metric: baseline},
        "results": report["results"],
    }
    if jax.process_index() == 0:
        path = os.path.join(workdir, "eval.json")
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
        with metrics.MetricWriter(workdir, enabled=True) as writer:
            writer.write(
                step,
                {f"{metric}_n{r['n_steps']}": r[metric] for r in report["results"]},
                split=split,
            )
        print(_table(summary, metric), flush=True)
        print(f"eval written to {path}", flush=True)
    return 0


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


def _run_sample(config: ConfigDict, workdir: str) -> int:
    experiment = Experiment(config)
    state = experiment.restore(workdir)
    step = int(jax.device_get(state.step))
    n = int(config.sample.n_steps)
    rng = jax.random.fold_in(jax.random.key(config.seed), 4)
    num_samples = int(config.sample.num_images)
    known = experiment.family.known_positions(num_samples)
    solver = config.sample.get("solver", "bfn")
    samples, probs = experiment.sample(
        experiment.eval_params(state),
        num_samples=num_samples,
        n_steps=n,
        rng=rng,
        known=known,
        solver=solver,
    )
    if jax.process_index() == 0:
        written = experiment.family.write_samples(
            samples, probs, os.path.join(workdir, "samples"), step, n
        )
        for what, path in written.items():
            print(f"{what} ({n} steps): {path}", flush=True)
    return 0
