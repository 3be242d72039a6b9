"""BFN on binarized MNIST: state, train and eval steps, and the train / eval / sample modes.

Training minimises the continuous-time loss L^inf (BFN paper, Sec. 6), as the official code
does; evaluation reports the NLL bound L + L^r in nats per image, with L the continuous-time
loss or the n-step loss L^n for each configured n and L^r the reconstruction loss, averaged over
repeats of the dynamically binarised test set.
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

from deepgen.bfn import discrete, sampler
from deepgen.bfn.model import UNet, count_params
from deepgen.core import distributed, metrics, plots, train_loop
from deepgen.core import mesh as mesh_lib
from deepgen.core.errors import ConfigError, UserError
from deepgen.core.optim import OPTIMIZERS, SCHEDULES, make_optimizer
from deepgen.core.train_state import TrainState, ema_decay, ema_update
from deepgen.data import mnist
from deepgen.data.pipeline import EpochIterator

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DATASETS = ("mnist", "binarized_mnist")


def validate(config: ConfigDict) -> None:
    """Check values the config types cannot: one ConfigError naming the field and what is allowed."""

    def require(ok: bool, field: str, allowed: str) -> None:
        if not ok:
            value = config
            for part in field.split("."):
                value = value[part]
            raise ConfigError(f"config.{field}={value!r} is not allowed: {allowed}")

    require(config.data.name in DATASETS, "data.name", f"one of {DATASETS}")
    require(config.data.source in mnist.SOURCES, "data.source", f"one of {mnist.SOURCES}")
    require(config.bfn.num_classes == 2, "bfn.num_classes", "2 for binarized MNIST")
    require(config.bfn.beta1 > 0, "bfn.beta1", "a positive number")
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


def make_model(config: ConfigDict) -> UNet:
    """The U-Net described by config.model, with one Bernoulli logit per pixel."""
    m = config.model
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


def network_log_probs(
    model: UNet, params: Any, theta_BxHxWxK: jax.Array, t_B: jax.Array, *, train: bool, rng
) -> jax.Array:
    """log p_O(. | theta; t) per pixel: the net sees [2 theta_1 - 1, 2t - 1] (official MNIST input)."""
    p1_BxHxW = theta_BxHxWxK[..., 1]
    t_BxHxW = jnp.broadcast_to(t_B[:, None, None], p1_BxHxW.shape)
    inputs_BxHxWx2 = jnp.stack([2.0 * p1_BxHxW - 1.0, 2.0 * t_BxHxW - 1.0], axis=-1)
    logits_BxHxWx1 = model.apply(
        {"params": params}, inputs_BxHxWx2, t_B, train=train, rngs={"dropout": rng}
    )
    return discrete.binary_log_probs(logits_BxHxWx1)


def init_state(
    rng: jax.Array, *, model: UNet, optimizer: optax.GradientTransformation, image_shape
) -> TrainState:
    """Fresh parameters, their EMA copy and the optimiser state."""
    inputs = jnp.zeros((1, *image_shape, 2), jnp.float32)
    params = model.init({"params": rng}, inputs, jnp.zeros((1,), jnp.float32), train=False)[
        "params"
    ]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=optimizer.init(params),
    )


def continuous_time_loss(
    params: Any, images_BxHxW: jax.Array, rng: jax.Array, *, model: UNet, beta1: float, train: bool
) -> jax.Array:
    """L^inf per image (nats, summed over pixels) for one draw of t and theta per image."""
    rng_t, rng_flow, rng_net = jax.random.split(rng, 3)
    x_BxHxWxK = jax.nn.one_hot(images_BxHxW, 2, dtype=jnp.float32)
    t_B = jax.random.uniform(rng_t, (images_BxHxW.shape[0],), jnp.float32)
    theta = discrete.flow_sample(x_BxHxWxK, t_B[:, None, None], beta1=beta1, rng=rng_flow)
    log_probs = network_log_probs(model, params, theta, t_B, train=train, rng=rng_net)
    loss_BxHxW = discrete.continuous_time_loss(
        x_BxHxWxK, jnp.exp(log_probs), t_B[:, None, None], beta1=beta1
    )
    return jnp.sum(loss_BxHxW, axis=(1, 2))


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    model: UNet,
    optimizer: optax.GradientTransformation,
    beta1: float,
    ema: ConfigDict,
) -> tuple[TrainState, dict]:
    """One AdamW step on the mean L^inf per pixel (the official loss scale), then the EMA."""
    rng = jax.random.fold_in(rng, state.step)
    images = batch["image"]
    num_pixels = math.prod(images.shape[1:])

    def loss_fn(params):
        per_image = continuous_time_loss(params, images, rng, model=model, beta1=beta1, train=True)
        return jnp.mean(per_image) / num_pixels

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
    return new_state, {
        "loss": loss,
        "loss_nats_per_image": loss * num_pixels,
        "grad_norm": optax.tree_utils.tree_norm(grads),
    }


def nll_terms(
    params: Any,
    images_BxHxW: jax.Array,
    rng: jax.Array,
    *,
    model: UNet,
    beta1: float,
    n_steps: tuple[int, ...],
    num_samples: int,
) -> dict[str, jax.Array]:
    """Per-image loss terms in nats: L^inf or L^n for each n (0 means L^inf), and L^r."""
    x_BxHxWxK = jax.nn.one_hot(images_BxHxW, 2, dtype=jnp.float32)
    batch = images_BxHxW.shape[0]
    terms = {}
    for n in n_steps:
        rng_n = jax.random.fold_in(rng, n)
        if n == 0:
            terms["inf"] = continuous_time_loss(
                params, images_BxHxW, rng_n, model=model, beta1=beta1, train=False
            )
            continue
        rng_i, rng_flow, rng_y = jax.random.split(rng_n, 3)
        i_B = jax.random.randint(rng_i, (batch,), 1, n + 1).astype(jnp.float32)
        t_B = (i_B - 1.0) / n
        theta = discrete.flow_sample(x_BxHxWxK, t_B[:, None, None], beta1=beta1, rng=rng_flow)
        log_probs = network_log_probs(model, params, theta, t_B, train=False, rng=rng_flow)
        loss = discrete.discrete_time_loss(
            x_BxHxWxK,
            log_probs,
            i_B[:, None, None],
            n_steps=n,
            beta1=beta1,
            rng=rng_y,
            num_samples=num_samples,
        )
        terms[str(n)] = jnp.sum(loss, axis=(1, 2))
    rng_r = jax.random.fold_in(rng, 2**31 - 1)  # distinct from every n
    t1_B = jnp.ones((batch,), jnp.float32)
    theta1 = discrete.flow_sample(x_BxHxWxK, t1_B[:, None, None], beta1=beta1, rng=rng_r)
    log_probs1 = network_log_probs(model, params, theta1, t1_B, train=False, rng=rng_r)
    terms["recon"] = jnp.sum(discrete.reconstruction_loss(x_BxHxWxK, log_probs1), axis=(1, 2))
    return terms


def load_split(config: ConfigDict, split: str) -> mnist.ImageSplit:
    """The configured MNIST split (embedded digits, IDX files or TFDS)."""
    return mnist.load_mnist(
        split, name=config.data.name, data_dir=config.data.dir or None, source=config.data.source
    )


def make_batches(config: ConfigDict, images: mnist.ImageSplit) -> EpochIterator:
    """Shuffled epochs of dynamically binarised digits (a fresh Bernoulli draw every epoch)."""
    intensities = images.intensities_NxHxW

    def make_batch(indices: np.ndarray, rows: slice, rng: np.random.Generator) -> dict:
        uniform = rng.random((len(indices), *intensities.shape[1:]), dtype=np.float32)[rows]
        return {"image": (uniform < intensities[indices[rows]]).astype(np.int32)}

    return EpochIterator(
        num_examples=images.num_examples,
        global_batch_size=int(config.train.batch_size),
        make_batch=make_batch,
        seed=int(config.seed),
        process_rows=distributed.process_slice(int(config.train.batch_size)),
    )


class Experiment:
    """The model, optimiser and jitted functions of one config on one mesh."""

    def __init__(self, config: ConfigDict, image_shape: tuple[int, int]):
        self.config = config
        self.image_shape = image_shape
        self.mesh = mesh_lib.make_mesh(config.mesh)
        self.model = make_model(config)
        self.optimizer = make_optimizer(config.opt, int(config.train.num_steps))
        self.beta1 = float(config.bfn.beta1)
        self.init_state = functools.partial(
            init_state, model=self.model, optimizer=self.optimizer, image_shape=image_shape
        )
        self.train_step = functools.partial(
            train_step, model=self.model, optimizer=self.optimizer, beta1=self.beta1, ema=config.ema
        )

    def restore(self, workdir: str) -> TrainState:
        """The latest checkpoint of a workdir written by --mode=train."""
        ckpt_dir = os.path.join(workdir, "checkpoints")
        if not os.path.isdir(ckpt_dir):
            raise UserError(
                f"no checkpoints in {ckpt_dir}: run --mode=train with this workdir first"
            )
        state, _, checkpointer, data_state = train_loop.build_state(
            self.config, workdir, self.init_state, self.mesh
        )
        checkpointer.close()
        if not data_state:
            raise UserError(
                f"no checkpoints in {ckpt_dir}: run --mode=train with this workdir first"
            )
        return state

    def eval_params(self, state: TrainState) -> Any:
        """EMA parameters (as the paper evaluates) unless config.eval.use_ema is False."""
        return state.ema_params if self.config.eval.use_ema else state.params

    def evaluate(
        self, params: Any, images: mnist.ImageSplit, *, repeats: int, n_steps: tuple[int, ...]
    ) -> dict:
        """NLL bounds in nats per image over `repeats` fresh binarisations, with standard errors."""
        config = self.config
        batch_size = _round_up_to_devices(int(config.eval.batch_size))  # the tail is masked
        batch_sharding = mesh_lib.batch_sharding(self.mesh)
        terms_fn = jax.jit(
            functools.partial(
                nll_terms,
                model=self.model,
                beta1=self.beta1,
                n_steps=tuple(int(n) for n in n_steps),
                num_samples=int(config.eval.num_samples),
            ),
            in_shardings=(None, batch_sharding, None),
        )
        rows = distributed.process_slice(batch_size)
        num = images.num_examples
        num_batches = -(-num // batch_size)
        base_rng = jax.random.fold_in(jax.random.key(config.seed), 2)
        per_repeat: dict[str, list[float]] = {}
        for repeat in range(repeats):
            binary = mnist.binarize(
                images.intensities_NxHxW, np.random.default_rng([config.seed, 3, repeat])
            ).astype(np.int32)
            sums: dict[str, float] = {}
            for b in range(num_batches):
                chunk = binary[b * batch_size : (b + 1) * batch_size]
                valid = len(chunk)
                padded = np.zeros((batch_size, *chunk.shape[1:]), np.int32)
                padded[:valid] = chunk
                global_images = distributed.global_batch(padded[rows], batch_sharding)
                rng = jax.random.fold_in(jax.random.fold_in(base_rng, repeat), b)
                terms = jax.device_get(terms_fn(params, global_images, rng))
                for name, values in terms.items():
                    sums[name] = sums.get(name, 0.0) + float(
                        np.sum(np.asarray(values)[:valid], dtype=np.float64)
                    )
            for name, total in sums.items():
                per_repeat.setdefault(name, []).append(total / num)
        recon = np.asarray(per_repeat.pop("recon"))
        results = []
        for name, losses in per_repeat.items():
            nll = np.asarray(losses) + recon
            results.append(
                {
                    "n_steps": "inf" if name == "inf" else int(name),
                    "nll_nats_per_image": float(nll.mean()),
                    "stderr": _stderr(nll),
                    "loss_nats_per_image": float(np.mean(losses)),
                    "reconstruction_nats_per_image": float(recon.mean()),
                    "nll_nats_per_pixel": float(nll.mean()) / math.prod(self.image_shape),
                    "unit": "nats/image",
                }
            )
        results.sort(key=lambda r: -1 if r["n_steps"] == "inf" else r["n_steps"])
        return {"results": results, "repeats": repeats, "num_images": num}

    def sample(
        self, params: Any, *, num_images: int, n_steps: int, rng: jax.Array
    ) -> tuple[np.ndarray, np.ndarray]:
        """n-step samples (binary images) and the t = 1 output probabilities, jitted and sharded."""
        padded_images = _round_up_to_devices(num_images)
        batch_sharding = mesh_lib.batch_sharding(self.mesh)

        def log_probs_fn(theta, t_B, rng_net):
            return network_log_probs(self.model, params, theta, t_B, train=False, rng=rng_net)

        def run(rng):
            samples, probs = sampler.sample_discrete(
                log_probs_fn,
                rng=rng,
                batch_size=padded_images,
                variable_shape=self.image_shape,
                num_classes=2,
                n_steps=n_steps,
                beta1=self.beta1,
            )
            return samples, probs[..., 1]

        samples, probs = jax.jit(run, out_shardings=(batch_sharding, batch_sharding))(rng)
        gather = (  # multi-host: every process gets all samples
            multihost_utils.process_allgather
            if jax.process_count() > 1
            else (lambda x, tiled=True: x)
        )
        samples, probs = (
            np.asarray(gather(samples, tiled=True)),
            np.asarray(gather(probs, tiled=True)),
        )
        return samples[:num_images], probs[:num_images]


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
    train_images = load_split(config, "train")
    validation_images = load_split(config, "validation") if config.train.eval_every else None
    image_shape = tuple(train_images.intensities_NxHxW.shape[1:])
    if config.train.batch_size > train_images.num_examples:
        raise ConfigError(
            f"config.train.batch_size={config.train.batch_size} exceeds the {train_images.num_examples} training digits of {train_images.source}"
        )
    experiment = Experiment(config, image_shape)
    _write_config(config, workdir)
    log.info("training data: %s (%d digits)", train_images.source, train_images.num_examples)
    log.info(
        "model: %s parameters on %d devices, mesh %s",
        f"{count_params(jax.eval_shape(experiment.init_state, jax.random.key(0)).params):,}",
        jax.device_count(),
        dict(experiment.mesh.shape),
    )

    eval_fn = None
    if validation_images is not None:

        def eval_fn(state: TrainState) -> dict:
            report = experiment.evaluate(
                experiment.eval_params(state),
                validation_images,
                repeats=int(config.eval.validation_repeats),
                n_steps=(0,),
            )
            return {"nll_nats_per_image": report["results"][0]["nll_nats_per_image"]}

    try:
        train_loop.train(
            config,
            workdir,
            init_state=experiment.init_state,
            train_step=experiment.train_step,
            batches=make_batches(config, train_images),
            mesh=experiment.mesh,
            eval_fn=eval_fn,
        )
    except train_loop.TrainingInterrupted as stop:
        print(
            f"interrupted at step {stop.step}: checkpoint saved in {workdir}/checkpoints; run the same command to resume",
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
            title="BFN L^inf (nats per pixel)",
        )
        print(
            f"training done: checkpoints in {workdir}/checkpoints, metrics in {workdir}/metrics.jsonl, loss curve {curve}",
            flush=True,
        )
    return 0


def _run_eval(config: ConfigDict, workdir: str) -> int:
    split = config.eval.split
    test_images = load_split(config, split)
    train_images = load_split(config, "train")
    experiment = Experiment(config, tuple(test_images.intensities_NxHxW.shape[1:]))
    state = experiment.restore(workdir)
    step = int(jax.device_get(state.step))
    n_steps = tuple(int(n) for n in config.eval.n_steps)
    if 0 not in n_steps:
        n_steps = (0, *n_steps)
    report = experiment.evaluate(
        experiment.eval_params(state),
        test_images,
        repeats=int(config.eval.repeats),
        n_steps=n_steps,
    )
    continuous = next(r for r in report["results"] if r["n_steps"] == "inf")
    baseline = mnist.independent_bernoulli_nll_nats(
        train_images.intensities_NxHxW, test_images.intensities_NxHxW
    )
    summary = {
        "nll_nats_per_image": continuous["nll_nats_per_image"],
        "nll_nats_per_image_stderr": continuous["stderr"],
        "bound": "continuous-time L^inf + reconstruction L^r",
        "num_images": report["num_images"],
        "split": split,
        "data_source": test_images.source,
        "repeats": report["repeats"],
        "step": step,
        "params": "ema" if config.eval.use_ema else "raw",
        "baseline_independent_bernoulli_nats_per_image": baseline,
        "results": report["results"],
    }
    if jax.process_index() == 0:
        path = os.path.join(workdir, "eval.json")
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
        metrics.MetricWriter(workdir, enabled=True).write(
            step,
            {
                f"nll_nats_per_image_n{r['n_steps']}": r["nll_nats_per_image"]
                for r in report["results"]
            },
            split=split,
        )
        print(_table(summary), flush=True)
        print(f"eval written to {path}", flush=True)
    return 0


def _table(summary: Mapping[str, Any]) -> str:
    lines = [
        f"BFN NLL on {summary['num_images']} {summary['split']} digits ({summary['data_source']}), step {summary['step']}, {summary['params']} params, {summary['repeats']} repeats",
        f"{'n steps':>8} | {'NLL nats/image':>15} | {'stderr':>7} | {'L nats':>8} | {'L^r nats':>8}",
    ]
    for r in summary["results"]:
        stderr = "-" if r["stderr"] is None else f"{r['stderr']:.2f}"
        lines.append(
            f"{r['n_steps']!s:>8} | {r['nll_nats_per_image']:>15.2f} | {stderr:>7} | {r['loss_nats_per_image']:>8.2f} | {r['reconstruction_nats_per_image']:>8.2f}"
        )
    lines.append(
        f"independent per-pixel Bernoulli baseline fit to the training digits: {summary['baseline_independent_bernoulli_nats_per_image']:.2f} nats/image"
    )
    return "\n".join(lines)


def _run_sample(config: ConfigDict, workdir: str) -> int:
    experiment = Experiment(config, (mnist.IMAGE_SIDE, mnist.IMAGE_SIDE))
    state = experiment.restore(workdir)
    step = int(jax.device_get(state.step))
    n = int(config.sample.n_steps)
    rng = jax.random.fold_in(jax.random.key(config.seed), 4)
    samples, probs = experiment.sample(
        experiment.eval_params(state), num_images=int(config.sample.num_images), n_steps=n, rng=rng
    )
    if jax.process_index() == 0:
        out = os.path.join(workdir, "samples")
        grid = plots.save_image_grid(
            samples.astype(np.float32), os.path.join(out, f"samples_step{step}_n{n}.png")
        )
        mean_grid = plots.save_image_grid(
            probs, os.path.join(out, f"probabilities_step{step}_n{n}.png")
        )
        print(f"samples ({n} steps): {grid}\noutput probabilities at t=1: {mean_grid}", flush=True)
    return 0
