"""What the Atari host loops (atari_dqn.py, atari_a2c.py) share, declared for the one runner.

The emulators (deepgen/noisynet/atari.py) step on the host in numpy; acting and learning are
jitted pure functions. Everything else comes from deepgen.core, as for every other method: the
runner restores the checkpoint (`train_loop.build_state`), writes config.json, eval.json and the
exit statuses; `HostRun` below gives a host loop core's metrics (MetricWriter, Progress),
finite-loss check (NonFiniteLossError, keeping the last good checkpoint), checkpoints
(`checkpointer.save(step, state, checkpoint_data(...))` every ckpt.every env steps and at the
end) and stopping on SIGTERM/SIGINT (StopSignal, a checkpoint, then TrainingInterrupted).

Units: env steps are agent steps summed over env.num_envs (frames = frame_skip x env steps);
train.num_steps, train.steps_per_chunk, train.log_every, ckpt.every and checkpoint numbers count
them. One chunk is the loop's unit of progress: metrics are checked at every chunk's end and
logged every train.log_every env steps (the mean over that window). A checkpoint holds the
learner state (Orbax) and, in its data item, the loop's JSON counters; the host arrays (replay,
emulator states, current observations) go beside it in workdir/<host_dir>/host_<env_steps>.npz,
pruned with the checkpoints. A signal stops the loop after the env step or rollout in progress
with a checkpoint there, so a resumed run gives the same numbers as an uninterrupted one.

Evaluation plays eval.num_episodes fresh episodes (1..noop_max no-op starts, to game over or
env.max_episode_frames) in parallel, one per emulator, and reports the mean raw return, its
standard error (null with one episode), the human-normalised score and a random-policy baseline.
`--mode=sample` draws the learning curve (mean episode return against env steps) from
metrics.jsonl.
"""

from __future__ import annotations

import abc
import json
import math
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import numpy as np
from ml_collections import ConfigDict

from deepgen.core import mesh as mesh_lib
from deepgen.core import metrics, train_loop
from deepgen.core.errors import ConfigError, DataError
from deepgen.core.train_loop import Unit
from deepgen.core.validate import Checker
from deepgen.noisynet import atari_scores
from deepgen.noisynet.atari import AtariVecEnv, env_options, eval_episodes, rom_id, validate_atari
from deepgen.noisynet.trainer import eval_noise
from experiments.contract import Method
from experiments.noisynet.checks import check_noise_and_discount
from experiments.noisynet.curves import learning_curve, save_learning_curves

EVAL_STREAM = 4  # rng stream of evaluation (emulator seeds, action keys) folded into the seed
QUICK_EPISODES = 5  # --quick plays at most this many episodes
CHECKED = ("loss", "grad_norm")  # learner metrics that must stay finite
REFERENCE_FRAMES = 108_000  # the reference scores' episode cap


def cached_jitted_agent(cache: dict, key_parts: list, make_agent: Callable[[], Any]) -> tuple:
    """(agent, jit(init), jit(act), jit(learn) donating its state), cached under key_parts.

    Later runs in this process with the same agent-defining config (a sweep, a test, eval after
    train) skip recompiling; the cache keeps the 4 newest agents.
    """
    key = json.dumps(key_parts, sort_keys=True, default=str)
    if key not in cache:
        if len(cache) >= 4:
            cache.pop(next(iter(cache)))
        agent = make_agent()
        cache[key] = (
            agent,
            jax.jit(agent.init),
            jax.jit(agent.act),
            jax.jit(agent.learn, donate_argnums=0),
        )
    return cache[key]


_INIT_STATES: dict[tuple, Callable[[jax.Array], Any]] = {}


def shared_init_state(
    jitted_init: Callable[[jax.Array, np.ndarray], Any], obs_example: np.ndarray
) -> Callable[[jax.Array], Any]:
    """`rng -> jitted_init(rng, obs_example)`, one function object per (init, example shape).

    The runner jits init_state anew each run; handing it the same function object lets a later
    run in this process (a resume, eval after train, a test) reuse the compiled initialiser.
    """
    key = (jitted_init, obs_example.shape, str(obs_example.dtype))
    if key not in _INIT_STATES:
        if len(_INIT_STATES) >= 8:
            _INIT_STATES.pop(next(iter(_INIT_STATES)))
        _INIT_STATES[key] = lambda rng: jitted_init(rng, obs_example)
    return _INIT_STATES[key]


def prune_host_files(directory: str, keep_steps: Sequence[int]) -> None:
    """Delete host_<step>.npz files in directory whose step is not in keep_steps."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if name.startswith("host_") and name.endswith(".npz"):
            step = name[len("host_") : -len(".npz")]
            if not step.isdigit() or int(step) not in keep_steps:
                os.remove(os.path.join(directory, name))


def stderr_of(values: np.ndarray) -> float | None:
    """Standard error of the mean; None for fewer than two values (printed as such too)."""
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def empty_window() -> dict:
    """Accumulators of one logging window (JSON-able: saved with a mid-window checkpoint)."""
    return {"returns": [], "sums": {}, "count": 0}


class AtariHostMethod(Method):
    """The parts of the DQN and A2C host loops that do not depend on the agent.

    A subclass sets `host_dir`, `count_name` (its optimisation steps in a window), `metric_names`
    (learner metrics logged as window means) and `shown` (on the progress line), and provides
    `_init` (the jitted `init(rng, obs_example)`), `_train`, `eval_actions` and `agent_label`.
    """

    name = "noisynet"
    host_dir: ClassVar[str] = "host"
    count_name: ClassVar[str] = "updates_in_window"
    metric_names: ClassVar[Sequence[str]] = ("loss", "grad_norm")
    shown: ClassVar[Sequence[str]] = ("mean_episode_return", "loss")

    @classmethod
    def validate(cls, config: ConfigDict) -> None:
        """The whole Atari validation: shared agent fields, the ALE fields, then the loop's."""
        validate_atari(config)
        check = Checker(config)
        check_noise_and_discount(check)
        check(config.network.torso == "nature", "network.torso", "'nature' for ALE games")
        check.positive("network.head_hidden", "train.steps_per_chunk", "ckpt.keep")
        check.optimiser()
        cls.validate_loop(config, check)
        chunk = int(config.train.steps_per_chunk)
        for field in ("train.num_steps", "train.log_every", "ckpt.every"):
            section, name = field.split(".")
            value = int(config[section][name])
            check(
                value > 0 and value % chunk == 0,
                field,
                f"a positive multiple of train.steps_per_chunk={chunk} env steps",
            )
        mesh_lib.mesh_shape(config.mesh, 1)  # one device: the learner is small, the host is busy

    @classmethod
    def validate_loop(cls, config: ConfigDict, check: Checker) -> None:
        """The host loop's own fields (before the chunk multiples, which depend on them)."""

    def __init__(self, config: ConfigDict, *, mode: str):
        super().__init__(config, mode=mode)
        self.game = rom_id(config.env.name)
        self.options = env_options(config)
        self.num_envs = int(config.env.num_envs)
        self.num_actions = AtariVecEnv(self.game, num_envs=1, seed=0, **self.options).num_actions
        self.noisy = bool(config.agent.noisy)
        self.base_key = jax.random.key(int(config.seed))
        self.obs_example = np.zeros((1, 84, 84, self.options["frame_stack"]), np.uint8)

    # ---- what the runner asks for ------------------------------------------------------------

    def init_state(self, rng: jax.Array) -> Any:
        """Fresh learner state from the config seed (the runner passes the rng)."""
        return shared_init_state(self._init, self.obs_example)(rng)

    def unit(self) -> Unit:
        """Env steps (summed over envs); one train step of the loop is one chunk."""
        return Unit("env_steps", int(self.config.train.steps_per_chunk), 1)

    @property
    def mesh(self) -> jax.sharding.Mesh:
        """One device: acting batches are a few frames, the emulators are the bottleneck."""
        if not hasattr(self, "_mesh"):
            self._mesh = mesh_lib.make_mesh(self.config.mesh, num_devices=1)
        return self._mesh

    def train(self, workdir: str, built: tuple) -> Any:
        """Run the host loop from the restored `built`; its checkpointer is closed at the end."""
        checkpointer = built[3]
        try:
            return self._train(workdir, built)
        finally:
            checkpointer.close()

    @abc.abstractmethod
    def _train(self, workdir: str, built: tuple) -> Any:
        """The host loop: act, step the emulators and learn, advancing a HostRun to the end."""

    @abc.abstractmethod
    def agent_label(self) -> str:
        """How runs of this config are named in curves and eval lines (NoisyNet-DQN, A2C...)."""

    def make_envs(self, *, num_envs: int, stream: int, **overrides: Any) -> AtariVecEnv:
        """Environments seeded from (config seed, stream)."""
        seed = int(np.random.SeedSequence([int(self.config.seed), stream]).generate_state(1)[0])
        return AtariVecEnv(self.game, num_envs=num_envs, seed=seed, **{**self.options, **overrides})

    def stream(self, stream: int) -> jax.Array:
        """The base key of one rng stream."""
        return jax.random.fold_in(self.base_key, stream)

    # ---- host files beside the checkpoints ---------------------------------------------------

    def host_path(self, workdir: str, step: int) -> str:
        """The host arrays saved with the checkpoint of env step `step`."""
        return os.path.join(workdir, self.host_dir, f"host_{step}.npz")

    def save_host(self, workdir: str, step: int, arrays: Mapping[str, np.ndarray]) -> None:
        """One npz, written atomically."""
        path = self.host_path(workdir, step)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    def check_resume(self, workdir: str, built: tuple) -> None:
        """The host file of the checkpoint to resume holds this config's number of emulators."""
        step = built[1]
        path = self.host_path(workdir, step)
        if not step or not os.path.exists(path):
            return
        num_envs = int(self.config.env.num_envs)
        with np.load(path) as saved:
            saved_envs = saved["obs"].shape[0]
            self.check_saved_host(saved)
        if saved_envs != num_envs:
            raise ConfigError(
                f"config.env.num_envs={num_envs} does not fit the run being resumed ({saved_envs} "
                "emulators were saved with its checkpoint): keep env.num_envs, or use a new --workdir"
            )

    def check_saved_host(self, saved: Any) -> None:
        """More checks of a saved host file against the config (the DQN replay's size)."""

    def load_host(self, workdir: str, step: int) -> dict[str, np.ndarray] | None:
        """The arrays saved at `step`, or None when there is no file."""
        path = self.host_path(workdir, step)
        if not os.path.exists(path):
            return None
        with np.load(path) as saved:
            return {k: saved[k] for k in saved}

    # ---- evaluation ----------------------------------------------------------------------------

    @abc.abstractmethod
    def eval_actions(self, params: Any, obs_ExHxWxS: np.ndarray, key: jax.Array) -> np.ndarray:
        """The evaluation policy's actions for a batch of observations."""

    def play(
        self,
        choose: Callable[[np.ndarray, int], np.ndarray],
        num_episodes: int,
        tracker: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw returns of num_episodes episodes played in parallel (one per emulator, no life-loss
        terminals) with `choose(obs, step) -> actions`, and whether each was cut."""
        envs = self.make_envs(
            num_envs=num_episodes, stream=EVAL_STREAM, terminal_on_life_loss=False
        )
        obs = envs.reset()
        returns = np.full(num_episodes, np.nan)
        truncated = np.zeros(num_episodes, bool)
        step = 0
        while np.isnan(returns).any():
            actions = choose(obs, step)
            for i, env in enumerate(envs.envs):
                if not np.isnan(returns[i]):
                    continue
                result = env.step(int(actions[i]))
                obs[i] = result.obs
                if result.game_over or result.truncated:
                    returns[i], truncated[i] = env.episode_return, result.truncated
                    tracker.advance(1)
            step += 1
        return returns, truncated

    def protocol_matches_reference(self) -> bool:
        """Episodes, no-op starts and sticky actions as in the reference scores' protocol."""
        return (
            self.options["max_episode_frames"] >= REFERENCE_FRAMES
            and self.options["noop_max"] == 30
            and self.options["repeat_action_probability"] == 0.0
        )

    def random_baseline(self, num_episodes: int, progress: Any) -> dict:
        """The random policy's mean return: published for the reference protocol, else measured
        here on the same emulator seeds as the agent's evaluation episodes."""
        if self.protocol_matches_reference() and atari_scores.has_reference_scores(self.game):
            random_score, _ = atari_scores.reference_scores(self.game)
            return {
                "policy": "uniform random actions",
                "mean_return": random_score,
                "source": "published random-agent score (deepgen/noisynet/atari_scores.py: the "
                "DQN-era table, 1..30 no-op starts, 108,000-frame episodes)",
            }
        rng = np.random.default_rng([int(self.config.seed), EVAL_STREAM])
        returns, _ = self.play(
            lambda obs, step: rng.integers(0, self.num_actions, len(obs)),
            num_episodes,
            progress("random baseline", num_episodes, unit="episodes"),
        )
        return {
            "policy": "uniform random actions",
            "mean_return": float(np.mean(returns)),
            "mean_return_stderr": stderr_of(returns),
            "num_episodes": num_episodes,
            "source": "measured here: the same number of episodes, emulator seeds and protocol "
            "as the agent's evaluation",
        }

    @abc.abstractmethod
    def eval_policy(self) -> str:
        """How the evaluated agent acts."""

    def eval_tag(self) -> str:
        """Fresh no-op-start episodes: the only split an RL agent is evaluated on here."""
        return "fresh_episodes"

    def eval_extra(self, state: Any) -> dict:
        """Fields a subclass adds to the eval dict."""
        return {}

    def evaluate(self, state: Any, *, step: int, quick: bool, progress: Any) -> dict:
        """eval.num_episodes fresh episodes with the trained policy (noise on); `step` is the
        checkpoint's env steps (whatever this config's train.* says)."""
        num_episodes = eval_episodes(self.config)
        if quick:
            num_episodes = min(num_episodes, QUICK_EPISODES)
        base = self.stream(EVAL_STREAM)
        started = time.monotonic()
        returns, truncated = self.play(
            lambda obs, t: self.eval_actions(state.params, obs, jax.random.fold_in(base, t)),
            num_episodes,
            progress("eval", num_episodes, unit="episodes"),
        )
        seconds = time.monotonic() - started
        mean, stderr = float(np.mean(returns)), stderr_of(returns)
        report = {
            "split": "fresh episodes (1..noop_max no-op starts)",
            "data_source": f"ale-py ROM {self.game!r} ({self.config.env.name})",
            "num_examples": num_episodes,
            "unit": "raw game score per episode (unclipped)",
            "mean_return": mean,
            "mean_return_stderr": stderr,
            "num_episodes": num_episodes,
            "num_seeds": 1,
            "returns": [float(r) for r in returns],
            "episodes_truncated": int(np.sum(truncated)),
            "env": self.config.env.name,
            "game": self.game,
            "agent": self.config.agent.name,
            "noisy": self.noisy,
            "frames_trained": int(step) * self.options["frame_skip"],
            "protocol_matches_reference": self.protocol_matches_reference(),
            "protocol": (
                f"1..{self.options['noop_max']} no-op frames at start, episodes to game over or "
                f"{self.options['max_episode_frames']} frames, raw (unclipped) returns"
            ),
            "eval_policy": self.eval_policy(),
            "eval_noise": eval_noise(self.config) if self.noisy else "none (no noisy layers)",
            "eval_seconds": seconds,
            "human_normalized_score": None,
            "human_normalized_score_stderr": None,
        }
        if atari_scores.has_reference_scores(self.game):
            random_score, human_score = atari_scores.reference_scores(self.game)
            scale = 100.0 / abs(human_score - random_score)
            report["human_normalized_score"] = atari_scores.human_normalized_score(self.game, mean)
            report["human_normalized_score_stderr"] = None if stderr is None else stderr * scale
            report["reference_scores"] = {"random": random_score, "human": human_score}
        report["baseline"] = self.random_baseline(num_episodes, progress)
        report.update(self.eval_extra(state))
        return report

    def format_eval(self, report: Mapping[str, Any]) -> str:
        """One line; a missing standard error (one episode) is shown as such, as in eval.json."""
        stderr = report["mean_return_stderr"]
        shown_stderr = "none: 1 episode" if stderr is None else f"{stderr:.2f}"
        hns = report.get("human_normalized_score")
        shown_hns = "n/a (no reference scores)" if hns is None else f"{hns:.1f}%"
        baseline = report["baseline"]
        where = "published" if baseline["source"].startswith("published") else "measured"
        env_steps = report.get("env_steps_trained", report.get("step"))
        line = (
            f"{report['game']} {self.agent_label()}: mean raw return {report['mean_return']:.2f} "
            f"(stderr {shown_stderr}) over {report['num_episodes']} episodes, human-normalised "
            f"{shown_hns}, random policy {baseline['mean_return']:.2f} ({where}); after "
            f"{env_steps} env steps ({report['frames_trained']} frames)"
        )
        if not report["protocol_matches_reference"]:
            line += (
                f"; not the reference protocol: {report['episodes_truncated']} of "
                f"{report['num_episodes']} episodes cut at {self.options['max_episode_frames']} "
                "frames"
            )
        return line

    # ---- samples: the learning curve ---------------------------------------------------------

    def sample(self, state: Any, out_dir: str, *, step: int, progress: Any) -> dict[str, str]:
        """The learning curve up to the checkpoint's env step, from metrics.jsonl."""
        del state, progress  # drawn from the logged returns
        workdir = os.path.dirname(os.path.abspath(out_dir))
        path = os.path.join(workdir, metrics.METRICS_FILE)
        if not os.path.exists(path):
            raise DataError(f"no {path}: run --mode=train with this --workdir first")
        records = [
            r
            for r in metrics.read_metrics(workdir)
            if r.get("split") == "train" and int(r["step"]) <= int(step)
        ]
        steps, returns = learning_curve(records)
        ended = np.isfinite(returns).any(axis=0)  # windows in which an episode ended
        steps, returns = steps[ended], returns[:, ended]
        if not len(steps):
            raise DataError(
                f"{path} has no episode returns up to env step {step}: train until episodes "
                "end (env.max_episode_frames caps them)"
            )
        label = self.agent_label()
        out = save_learning_curves(
            {label: (steps, returns)},
            os.path.join(out_dir, f"learning_curve_step{step}.png"),
            title=f"{label} on {self.config.env.name}",
        )
        return {"learning curve": out}


class HostRun:
    """deepgen.core's side of an Atari host loop, used as `with HostRun(...) as run:`.

    It holds the learner state, the env step and the loop's JSON counters (`loop`, saved in the
    checkpoint's data item); the loop calls `add` with each learn step's device metrics and
    `advance` after each env step (DQN) or rollout (A2C). It does not close the checkpointer
    (the method's `train` does, in a finally).
    """

    def __init__(
        self,
        method: AtariHostMethod,
        workdir: str,
        built: tuple,
        *,
        fresh_loop: dict,
        host_arrays: Callable[[], Mapping[str, np.ndarray]] | None,
        record_extra: Callable[[], Mapping[str, float]],
    ):
        state, step, _, self.checkpointer, iterator_state = built
        self.method, self.workdir = method, workdir
        self.state, self.step = state, int(step)
        self.loop = dict(iterator_state) if iterator_state else dict(fresh_loop)
        self.loop.setdefault("window", empty_window())
        self.host_arrays, self.record_extra = host_arrays, record_extra
        config = method.config
        self.unit = method.unit()
        self.total = int(config.train.num_steps)
        self.log_every = int(config.train.log_every)
        self.pending: list[Any] = []
        self.last_good = self.checkpointer.latest_step()
        self.primary = jax.process_index() == 0
        self.stop = train_loop.StopSignal()

    def __enter__(self) -> HostRun:
        self.writer = metrics.MetricWriter(self.workdir, enabled=self.primary)
        self.progress = metrics.Progress(
            total_steps=self.total,
            start_step=self.step,
            examples_per_step=self.unit.examples_per_unit,
            unit=self.unit.name,
        )
        self.window_start = (time.monotonic(), self.step)
        self.stop.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.__exit__(*exc)
        self.progress.close()
        self.writer.close()

    @property
    def done(self) -> bool:
        """train.num_steps reached."""
        return self.step >= self.total

    def add(self, learn_metrics: Any) -> None:
        """Keep a learn step's device metrics; fetched in batches so the host rarely waits."""
        self.pending.append(learn_metrics)
        if len(self.pending) >= 256:  # bounded device buffers
            self._merge()

    def timing(self, step: int, seconds: float) -> None:
        """Log the first learn step's compile-and-run time (split "timing", as the core loop)."""
        self.writer.write(step, {"compile_seconds": seconds}, split="timing")

    def _merge(self) -> None:
        window = self.loop["window"]
        for values in jax.device_get(self.pending):
            for name, value in values.items():
                window["sums"][name] = window["sums"].get(name, 0.0) + float(value)
        window["count"] = int(window["count"]) + len(self.pending)
        self.pending = []

    def _check_finite(self) -> None:
        window = self.loop["window"]
        count = int(window["count"])
        for name in CHECKED:
            value = window["sums"].get(name, 0.0)
            if count and not math.isfinite(value):
                where = (
                    f"the last good checkpoint (env step {self.last_good}) in "
                    f"{self.checkpointer.directory} is kept"
                    if self.last_good is not None
                    else "no checkpoint was written"
                )
                raise train_loop.NonFiniteLossError(
                    f"{name} is {value / count} at env step {self.step}: training stopped and "
                    f"{where}; lower opt.lr or opt.clip_norm"
                )

    def _write_record(self) -> None:
        window = self.loop["window"]
        count, returns = int(window["count"]), window["returns"]
        record = {
            "episodes": len(returns),
            "mean_episode_return": float(np.mean(returns)) if returns else math.nan,
            self.method.count_name: count,
        }
        for name in self.method.metric_names:
            record[name] = window["sums"].get(name, math.nan) / count if count else math.nan
        started, start_step = self.window_start
        now = time.monotonic()
        record.update(self.record_extra())
        record.update(
            env_steps=self.step,
            frames=self.step * self.method.options["frame_skip"],
            episodes_total=int(self.loop["episodes"]),
            env_steps_per_sec=(self.step - start_step) / max(now - started, 1e-9),
        )
        self.writer.write(self.step, record, split="train")
        self.progress.update(self.step, {k: record[k] for k in self.method.shown})
        self.loop["window"] = empty_window()
        self.window_start = (now, self.step)

    def save(self) -> None:
        """Checkpoint the learner with the loop's counters, and the host arrays beside it."""
        if self.host_arrays is not None:
            self.method.save_host(self.workdir, self.step, self.host_arrays())
        data = train_loop.checkpoint_data(self.loop, self.step, self.unit)
        self.checkpointer.save(self.step, self.state, data)
        self.checkpointer.wait()
        prune_host_files(
            os.path.dirname(self.method.host_path(self.workdir, 0)), self.checkpointer.all_steps()
        )
        self.last_good = self.step

    def advance(self, state: Any, step: int) -> None:
        """After an env step or rollout: check, log and save at chunk ends; stop on a signal."""
        self.state, self.step = state, int(step)
        if self.step % self.unit.per_step == 0 or self.done:
            self._merge()
            self._check_finite()
            if self.step % self.log_every == 0 or self.done:
                self._write_record()
            if self.checkpointer.should_save(self.step) or self.done:
                self.save()
        if not self.done and self.stop.requested():  # at the end: finished, as the core loop
            self._merge()
            self._check_finite()
            self.save()
            raise train_loop.TrainingInterrupted(self.stop.signum or signal.SIGTERM, self.step)
