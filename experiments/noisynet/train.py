"""NoisyNet experiments on gymnax (CartPole, MinAtar): train, evaluate, plot learning curves.

Training runs `jit(vmap(train_chunk))` over config.train.num_seeds seeds, one chunk of
config.train.steps_per_chunk environment steps per call (acting and learning inside one
lax.scan, deepgen/noisynet/trainer.py). After each chunk the host logs the mean over seeds and
each seed's return to metrics.jsonl (step = environment steps per seed), checkpoints every
config.ckpt.every chunks, at the end and on SIGTERM/SIGINT, and a rerun resumes from the latest
checkpoint with the same numbers. Evaluation acts with the exploration the agent was trained
with (noise on; epsilon_eval for the baseline), as dqn_zoo does; the paper does not pin this
down. Environments named "ALE/..." go to the host loops: deepgen/noisynet/atari_loop.py for DQN
and Dueling, deepgen/noisynet/atari_a2c_loop.py for A2C.
"""

import datetime
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from deepgen.core import checkpoint, metrics
from deepgen.core.errors import ConfigError, DataError
from deepgen.core.optim import OPTIMIZERS, SCHEDULES
from deepgen.core.train_loop import _SignalFlag
from deepgen.noisynet.layers import NOISE_TYPES
from deepgen.noisynet.networks import TORSOS
from deepgen.noisynet.trainer import AGENTS, make_trainer, update_schedule

log = logging.getLogger(__name__)

GYMNAX_ENVS = {
    "CartPole-v1": "mlp",
    "Breakout-MinAtar": "minatar",
    "Asterix-MinAtar": "minatar",
    "SpaceInvaders-MinAtar": "minatar",
    "Freeway-MinAtar": "minatar",
}
CURVE_FILE = "learning_curve.png"


def _is_atari(config: ConfigDict) -> bool:
    return str(config.env.name).startswith("ALE/")


def _atari_module():
    try:
        from deepgen.noisynet import atari  # the ALE host loop, written separately
    except ImportError as error:
        raise ConfigError(
            f"'ALE/...' games need deepgen/noisynet/atari.py ({error}); "
            f"use a gymnax env: one of {sorted(GYMNAX_ENVS)}"
        ) from error
    return atari


def validate(config: ConfigDict) -> None:
    """Check values the config types cannot: one ConfigError naming the field and what is allowed."""

    def require(ok: bool, field: str, allowed: str) -> None:
        if not ok:
            value = config
            for part in field.split("."):
                value = value[part]
            raise ConfigError(f"config.{field}={value!r} is not allowed: {allowed}")

    agent, train = config.agent, config.train
    require(agent.name in AGENTS, "agent.name", f"one of {AGENTS}")
    require(agent.noise_type in NOISE_TYPES, "agent.noise_type", f"one of {NOISE_TYPES}")
    require(agent.sigma0 >= 0, "agent.sigma0", "a number >= 0 (0 = the paper's value)")
    require(0 <= agent.gamma <= 1, "agent.gamma", "in [0, 1]")
    for name in ("epsilon_start", "epsilon_end", "epsilon_eval"):
        require(0 <= agent[name] <= 1, f"agent.{name}", "in [0, 1]")
    require(agent.epsilon_decay_steps >= 0, "agent.epsilon_decay_steps", "an integer >= 0")
    require(agent.target_update_period > 0, "agent.target_update_period", "a positive integer")
    require(agent.learning_starts >= 0, "agent.learning_starts", "an integer >= 0")
    require(agent.batch_size > 0, "agent.batch_size", "a positive integer")
    require(agent.huber_delta > 0, "agent.huber_delta", "a positive number")
    require(agent.env_steps_per_update > 0, "agent.env_steps_per_update", "a positive integer")
    require(config.network.torso in TORSOS, "network.torso", f"one of {TORSOS}")
    require(config.network.head_hidden > 0, "network.head_hidden", "a positive integer")
    require(
        all(int(w) > 0 for w in config.network.torso_hidden),
        "network.torso_hidden",
        "positive layer widths",
    )
    require(config.env.num_envs > 0, "env.num_envs", "a positive integer")
    require(train.num_seeds > 0, "train.num_seeds", "a positive integer")
    require(train.steps_per_chunk > 0, "train.steps_per_chunk", "a positive integer")
    require(
        train.total_env_steps >= train.steps_per_chunk,
        "train.total_env_steps",
        f"at least train.steps_per_chunk={train.steps_per_chunk}",
    )
    require(train.log_every > 0, "train.log_every", "a positive number of chunks")
    require(config.eval.num_episodes > 0, "eval.num_episodes", "a positive integer")
    require(config.opt.name in OPTIMIZERS, "opt.name", f"one of {OPTIMIZERS}")
    require(config.opt.schedule in SCHEDULES, "opt.schedule", f"one of {SCHEDULES}")
    require(config.opt.lr > 0, "opt.lr", "a positive number")
    require(config.ckpt.every > 0, "ckpt.every", "a positive number of chunks")
    require(config.ckpt.keep > 0, "ckpt.keep", "a positive integer")
    if _is_atari(config):
        require(config.network.torso == "nature", "network.torso", "'nature' for ALE games")
        _atari_module().validate_atari(config)
        return
    require(
        config.env.name in GYMNAX_ENVS,
        "env.name",
        f"one of {sorted(GYMNAX_ENVS)} or an 'ALE/<Game>-v5' Atari game",
    )
    if config.network.torso != "mlp":
        require(
            GYMNAX_ENVS[config.env.name] == config.network.torso,
            "network.torso",
            f"'mlp' or {GYMNAX_ENVS[config.env.name]!r} for {config.env.name}",
        )
    if agent.name in ("dqn", "dueling"):
        require(
            train.steps_per_chunk % config.env.num_envs == 0,
            "train.steps_per_chunk",
            f"a multiple of env.num_envs={config.env.num_envs}",
        )
        require(
            config.replay.capacity >= max(agent.batch_size, config.env.num_envs),
            "replay.capacity",
            "at least agent.batch_size and env.num_envs",
        )
        update_schedule(int(config.env.num_envs), int(agent.env_steps_per_update))


def _write_config(config: ConfigDict, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


class Experiment:
    """The environment, the Trainer and the jitted, seed-vmapped functions for one config."""

    def __init__(self, config: ConfigDict):
        import gymnax

        self.config = config
        self.env, self.env_params = gymnax.make(config.env.name)
        self.trainer = make_trainer(config, self.env, self.env_params)
        self.num_seeds = int(config.train.num_seeds)
        self.num_chunks = int(config.train.total_env_steps) // int(config.train.steps_per_chunk)
        self.init = jax.jit(jax.vmap(self.trainer.init))
        self.train_chunk = jax.jit(jax.vmap(self.trainer.train_chunk), donate_argnums=0)

    def seed_keys(self, stream: int) -> jax.Array:
        """One key per seed for the given purpose (0 = init, 1 = evaluation)."""
        base = jax.random.fold_in(jax.random.PRNGKey(int(self.config.seed)), stream)
        return jax.random.split(base, self.num_seeds)

    def checkpointer(self, workdir: str) -> checkpoint.Checkpointer:
        return checkpoint.Checkpointer(
            os.path.join(workdir, "checkpoints"),
            max_to_keep=int(self.config.ckpt.keep),
            save_every=int(self.config.ckpt.every),
            async_save=bool(self.config.ckpt.async_save),
        )

    def restore(self, ckpt: checkpoint.Checkpointer) -> tuple[Any, int]:
        """The latest checkpointed state and its chunk index."""
        abstract = jax.eval_shape(self.init, self.seed_keys(0))
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = checkpoint.abstract_with_shardings(
            abstract, jax.tree.map(lambda _: device, abstract)
        )
        try:
            state, data = ckpt.restore(None, target)
        except (ValueError, KeyError, TypeError) as error:
            reason = " ".join(str(error).split())[:200]
            raise ConfigError(
                f"the checkpoint in {ckpt.directory} does not fit this config ({reason}); use a "
                "new --workdir or the config it was trained with (saved in config.json)"
            ) from error
        return state, int(data.get("chunk", ckpt.latest_step()))


def _chunk_record(values: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Mean over seeds of each metric, plus each seed's mean episode return."""
    record = {}
    for name, per_seed in values.items():
        per_seed = np.asarray(per_seed, np.float64)
        finite = per_seed[np.isfinite(per_seed)]
        record[name] = float(finite.mean()) if finite.size else math.nan
    for seed, value in enumerate(np.asarray(values["mean_episode_return"], np.float64)):
        record[f"return_seed{seed}"] = float(value)
    return record


def run(config: ConfigDict, workdir: str, *, mode: str) -> int:
    """Train, evaluate or plot; user-fixable problems are raised before workdir is touched."""
    if _is_atari(config) and config.agent.name == "a2c":
        from deepgen.noisynet import atari_a2c_loop  # validate() checked that ale-py imports

        return atari_a2c_loop.run(config, workdir, mode=mode)
    if _is_atari(config):
        return _atari_module().run_atari(config, workdir, mode=mode)
    if mode == "train":
        return _run_train(config, workdir)
    if mode == "eval":
        return _run_eval(config, workdir)
    return _run_sample(config, workdir)


def _run_train(config: ConfigDict, workdir: str) -> int:
    experiment = Experiment(config)
    _write_config(config, workdir)
    ckpt = experiment.checkpointer(workdir)
    num_chunks = experiment.num_chunks
    steps_per_chunk = int(config.train.steps_per_chunk)
    if ckpt.latest_step() is not None:
        state, chunk = experiment.restore(ckpt)
        log.info("restored chunk %d from %s", chunk, ckpt.directory)
    else:
        state, chunk = experiment.init(experiment.seed_keys(0)), 0
    writer = metrics.MetricWriter(workdir, enabled=True)
    progress = metrics.Progress(
        total_steps=num_chunks * steps_per_chunk,
        start_step=chunk * steps_per_chunk,
        examples_per_step=experiment.num_seeds,
    )
    log_every = int(config.train.log_every)
    started = time.perf_counter()
    last_record: dict[str, float] = {}
    try:
        with _SignalFlag() as stop:
            while chunk < num_chunks:
                if stop.signum is not None:
                    ckpt.save(chunk, state, {"chunk": chunk})
                    ckpt.wait()
                    print(
                        f"interrupted at chunk {chunk}: checkpoint saved in {ckpt.directory}; "
                        "run the same command to resume",
                        flush=True,
                    )
                    return 128 + int(stop.signum)
                chunk_started = time.perf_counter()
                state, chunk_metrics = experiment.train_chunk(state)
                values = jax.device_get(chunk_metrics)
                chunk += 1
                env_steps = chunk * steps_per_chunk
                if chunk == 1:
                    seconds = time.perf_counter() - chunk_started
                    writer.write(env_steps, {"first_chunk_seconds": seconds}, split="timing")
                    progress.mark(env_steps)
                loss = np.asarray(values["loss"], np.float64)
                if np.any(np.isinf(loss)) or (
                    np.all(np.isnan(loss)) and values["learn_steps"].max()
                ):
                    last = ckpt.latest_step()
                    print(
                        f"error: loss is not finite at chunk {chunk}: training stopped; the last "
                        f"good checkpoint (chunk {last}) is kept; lower opt.lr",
                        flush=True,
                    )
                    return 1
                last_record = _chunk_record(values)
                writer.write(env_steps, last_record, split="train")
                if chunk % log_every == 0 or chunk == num_chunks:
                    shown = ("mean_episode_return", "episodes", "loss", "q_mean")
                    progress.update(
                        env_steps, {k: last_record[k] for k in shown if k in last_record}
                    )
                if ckpt.should_save(chunk) or chunk == num_chunks:
                    ckpt.save(chunk, state, {"chunk": chunk})
    finally:
        ckpt.close()
        progress.close()
        writer.close()
    seconds = time.perf_counter() - started
    final = last_record.get("mean_episode_return", math.nan)
    print(
        f"training done in {seconds:.1f} s: {config.agent.name} noisy={bool(config.agent.noisy)} "
        f"on {config.env.name}, mean return of the last chunk {final:.1f} over "
        f"{experiment.num_seeds} seeds; checkpoints in {workdir}/checkpoints",
        flush=True,
    )
    return 0


def _stderr(values: np.ndarray) -> float | None:
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def _run_eval(config: ConfigDict, workdir: str) -> int:
    experiment = Experiment(config)
    ckpt = experiment.checkpointer(workdir)
    if ckpt.latest_step() is None:
        ckpt.close()
        raise DataError(f"no checkpoint in {workdir}/checkpoints: run --mode=train first")
    try:
        state, chunk = experiment.restore(ckpt)
    finally:
        ckpt.close()
    num_episodes = int(config.eval.num_episodes)
    started = time.perf_counter()
    returns_SxN = np.asarray(
        jax.jit(jax.vmap(lambda s, k: experiment.trainer.evaluate(s, k, num_episodes)))(
            state, experiment.seed_keys(1)
        ),
        np.float64,
    )
    seconds = time.perf_counter() - started
    per_seed = returns_SxN.mean(axis=1)
    over_seeds = experiment.num_seeds > 1
    summary = {
        "mean_return": float(returns_SxN.mean()),
        "mean_return_stderr": _stderr(per_seed) if over_seeds else _stderr(returns_SxN[0]),
        "stderr_over": "seeds" if over_seeds else "episodes",
        "per_seed_mean_return": per_seed.tolist(),
        "num_episodes": int(returns_SxN.size),
        "episodes_per_seed": num_episodes,
        "num_seeds": experiment.num_seeds,
        "env": config.env.name,
        "agent": config.agent.name,
        "noisy": bool(config.agent.noisy),
        "exploration": "noise on" if config.agent.noisy else f"epsilon {config.agent.epsilon_eval}",
        "env_steps_trained": chunk * int(config.train.steps_per_chunk),
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "eval_seconds": seconds,
    }
    path = os.path.join(workdir, "eval.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    with metrics.MetricWriter(workdir, enabled=True) as writer:
        writer.write(
            summary["env_steps_trained"], {"mean_return": summary["mean_return"]}, split="eval"
        )
    stderr = summary["mean_return_stderr"]
    print(
        f"{config.agent.name} noisy={summary['noisy']} on {config.env.name} after "
        f"{summary['env_steps_trained']} env steps: mean return {summary['mean_return']:.2f}"
        f" +- {stderr if stderr is None else round(stderr, 2)} ({summary['stderr_over']}), "
        f"{summary['num_episodes']} episodes over {summary['num_seeds']} seeds",
        flush=True,
    )
    print(f"eval written to {path}", flush=True)
    return 0


def learning_curve(records: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray]:
    """(env_steps_T, returns_SxT) from metrics records; a repeated step (resume) keeps the last."""
    by_step: dict[int, list[float]] = {}
    for record in records:
        if record.get("split") != "train" or "return_seed0" not in record:
            continue
        seeds = sorted(
            (k for k in record if k.startswith("return_seed")), key=lambda k: int(k[11:])
        )
        by_step[int(record["step"])] = [
            math.nan if record[k] is None else float(record[k]) for k in seeds
        ]
    steps = np.array(sorted(by_step), np.int64)
    returns = (
        np.array([by_step[s] for s in steps], np.float64).T if len(steps) else np.zeros((0, 0))
    )
    return steps, returns


def save_learning_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str, *, title: str
) -> str:
    """Mean return against env steps per label, with a band of +-1 standard error over seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, (steps, returns_SxT) in curves.items():
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(returns_SxT, axis=0)
            count = np.sum(np.isfinite(returns_SxT), axis=0)
            stderr = np.nanstd(returns_SxT, axis=0, ddof=0) / np.sqrt(np.maximum(count, 1))
        (line,) = axes.plot(
            steps, mean, linewidth=2.0, label=f"{label} ({returns_SxT.shape[0]} seeds)"
        )
        axes.fill_between(steps, mean - stderr, mean + stderr, color=line.get_color(), alpha=0.25)
    axes.set_xlabel("environment steps (per seed)")
    axes.set_ylabel("mean episode return")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _run_sample(config: ConfigDict, workdir: str) -> int:
    path = os.path.join(workdir, metrics.METRICS_FILE)
    if not os.path.exists(path):
        raise DataError(f"no {path}: run --mode=train with this --workdir first")
    steps, returns = learning_curve(metrics.read_metrics(workdir))
    if not len(steps):
        raise DataError(f"{path} has no training returns yet: train for at least one chunk")
    label = f"{'NoisyNet-' if config.agent.noisy else ''}{config.agent.name}"
    out = save_learning_curves(
        {label: (steps, returns)},
        os.path.join(workdir, "samples", CURVE_FILE),
        title=f"{label} on {config.env.name}",
    )
    print(f"learning curve: {out}", flush=True)
    return 0
