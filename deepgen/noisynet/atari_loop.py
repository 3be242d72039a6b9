"""The host-side training and evaluation loop of NoisyNet-DQN / Dueling (and their baselines) on ALE.

Acting and learning are the jitted pure pieces of deepgen/noisynet/dqn.py; the environments
(deepgen/noisynet/atari.py) and the frame-once replay live on the host in numpy. As in DQN
(Mnih et al. 2015) and NoisyNet (arXiv:1706.10295, Sec. 3.1 and 4): one optimisation step every
`agent.env_steps_per_update` agent steps once `agent.learning_starts` transitions were collected,
a new noise sample per optimisation step, independent noise per action when acting (noisy agents
act greedily, baselines epsilon-greedily), and evaluation with the noise on over
`eval.num_episodes` no-op-start episodes, each played to game over (or the frame cap).

Units: env steps are agent steps (transitions) summed over env.num_envs; frames = frame_skip x
env steps. A checkpoint holds the LearnerState (Orbax, via deepgen.core.checkpoint.Checkpointer)
and, beside it in workdir/replay/host_<env_steps>.npz, the replay and the emulators' states, so a
resumed run continues exactly; with config.replay.save_with_checkpoint=False the npz is not
written and a resumed run refills the replay (learning waits learning_starts steps again).
"""

import contextlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from deepgen.core import metrics
from deepgen.core.checkpoint import Checkpointer
from deepgen.core.errors import UserError
from deepgen.noisynet import atari_scores
from deepgen.noisynet.atari import (
    AtariVecEnv,
    FrameReplay,
    clip_reward,
    env_options,
    eval_episodes,
    rom_id,
)
from deepgen.noisynet.dqn import LearnerState, make_dqn_agent, num_learn_steps
from deepgen.noisynet.replay import Transition

log = logging.getLogger(__name__)

_ACT, _LEARN, _SAMPLE, _EVAL = 1, 2, 3, 4  # rng streams folded into the config seed
REPLAY_DIR = "replay"


class _SignalFlag:
    """Records SIGTERM/SIGINT so the loop can checkpoint before stopping."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_SignalFlag":
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


_COMPILED: dict[str, tuple] = {}  # agent-defining config -> (agent, init, act, learn), jitted


def cached_jitted_agent(cache: dict, key_parts: list, make_agent: Callable[[], Any]) -> tuple:
    """(agent, jit(init), jit(act), jit(learn) donating its state), cached under key_parts.

    Later runs in this process with the same agent-defining config (a sweep, a test) skip
    recompiling; the cache keeps the 4 newest agents.
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


def _compiled_agent(config: ConfigDict, num_actions: int) -> tuple:
    """make_dqn_agent and its jitted functions, keyed by the agent, network, optimiser and schedule."""
    schedule_steps = num_learn_steps(config) if config.opt.schedule != "constant" else None
    key_parts = [
        config.agent.to_dict(),
        config.network.to_dict(),
        config.opt.to_dict(),
        schedule_steps,
        num_actions,
    ]
    return cached_jitted_agent(_COMPILED, key_parts, lambda: make_dqn_agent(config, num_actions))


class AtariHostExperiment:
    """What the DQN and A2C host loops share: seeded environments and restoring a checkpoint.

    Subclasses set config, game, options, agent, base_key and obs_example; the training run's
    config is saved in its workdir's config.json.
    """

    restore_hint = "use the agent.*, network.*, opt.* and env.frame_stack of the training run"

    def make_envs(self, *, num_envs: int, stream: int, **overrides: Any) -> AtariVecEnv:
        """Environments seeded from (config seed, stream)."""
        seed = int(np.random.SeedSequence([int(self.config.seed), stream]).generate_state(1)[0])
        return AtariVecEnv(self.game, num_envs=num_envs, seed=seed, **{**self.options, **overrides})

    def restore(self, checkpointer: Checkpointer, step: int) -> tuple[Any, dict]:
        """The learner state and the loop dict saved at step."""
        abstract = jax.eval_shape(self.agent.init, self.base_key, self.obs_example)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract
        )
        try:
            return checkpointer.restore(step, abstract)
        except (ValueError, KeyError, TypeError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise UserError(
                f"the checkpoint at env step {step} does not fit this config's agent/network "
                f"({self.restore_hint}): {first_line[:200]}"
            ) from None


class AtariExperiment(AtariHostExperiment):
    """The agent, its jitted act/learn functions and the environment settings of one config."""

    def __init__(self, config: ConfigDict):
        self.config = config
        self.game = rom_id(config.env.name)
        self.options = env_options(config)
        self.num_envs = int(config.env.num_envs)
        probe = AtariVecEnv(self.game, num_envs=1, seed=0, **self.options)
        self.num_actions = probe.num_actions
        self.agent, self._init, self.act, self.learn = _compiled_agent(config, self.num_actions)
        self.noisy = bool(config.agent.noisy)
        self.base_key = jax.random.key(int(config.seed))
        stack = self.options["frame_stack"]
        self.obs_example = np.zeros((1, 84, 84, stack), np.uint8)

    def init_learner(self) -> LearnerState:
        """Fresh parameters from the config seed."""
        return self._init(self.base_key, self.obs_example)

    def epsilon(self, env_steps: int) -> float:
        """The baseline's exploration rate; 0 for noisy agents (they ignore it)."""
        return 0.0 if self.noisy else float(self.agent.epsilon(env_steps))


def run(config: ConfigDict, workdir: str, *, mode: str) -> int:
    """Train (resuming from workdir) or evaluate; returns the exit status."""
    if mode == "train":
        return _train(config, workdir)
    if mode == "eval":
        return _evaluate(config, workdir)
    raise UserError(f"--mode={mode} is not available for ALE runs: use --mode=train or --mode=eval")


def make_checkpointer(config: ConfigDict, workdir: str) -> Checkpointer:
    """The learner's Orbax checkpointer in workdir/checkpoints (shared by the Atari host loops)."""
    return Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=int(config.ckpt.keep),
        save_every=int(config.ckpt.every),
        async_save=bool(config.ckpt.get("async_save", False)),
    )


def _write_config(config: ConfigDict, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def _host_path(workdir: str, step: int) -> str:
    return os.path.join(workdir, REPLAY_DIR, f"host_{step}.npz")


def _save_host(workdir: str, step: int, replay: FrameReplay, envs: AtariVecEnv, loop: dict) -> str:
    """Replay, emulator states, current observations: one npz, written atomically."""
    path = _host_path(workdir, step)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arrays = {f"replay/{k}": v for k, v in replay.get_state().items()}
    arrays.update(envs.get_state())
    arrays["obs"] = loop["obs"]
    arrays["starts"] = loop["starts"]
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def _prune_host(workdir: str, keep_steps: list[int]) -> None:
    prune_host_files(os.path.join(workdir, REPLAY_DIR), keep_steps)


def prune_host_files(directory: str, keep_steps: list[int]) -> None:
    """Delete host_<step>.npz files in directory whose step is not in keep_steps."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if name.startswith("host_") and name.endswith(".npz"):
            step = name[len("host_") : -len(".npz")]
            if not step.isdigit() or int(step) not in keep_steps:
                os.remove(os.path.join(directory, name))


def _train(config: ConfigDict, workdir: str) -> int:
    experiment = AtariExperiment(config)
    num_envs = experiment.num_envs
    total = int(config.train.total_env_steps)
    per_chunk = int(config.train.steps_per_chunk)
    per_update = int(config.agent.env_steps_per_update)
    learning_starts = int(config.agent.learning_starts)
    batch_size = int(config.agent.batch_size)
    clip = bool(config.env.get("clip_rewards", True))
    save_replay = bool(config.replay.get("save_with_checkpoint", True))
    log_every = max(int(config.train.get("log_every", 1)), 1)
    replay = FrameReplay(
        int(config.replay.capacity),
        num_envs=num_envs,
        frame_stack=experiment.options["frame_stack"],
    )
    envs = experiment.make_envs(num_envs=num_envs, stream=_ACT)
    _write_config(config, workdir)
    checkpointer = make_checkpointer(config, workdir)
    log.info(
        "ALE %s: %d actions, %d envs, replay %d frames (%.2f GB host memory)",
        experiment.game,
        experiment.num_actions,
        num_envs,
        replay.capacity,
        replay.nbytes / 1e9,
    )

    latest = checkpointer.latest_step()
    loop: dict[str, Any]
    if latest is None:
        learner = experiment.init_learner()
        loop = {
            "env_steps": 0,
            "episodes": 0,
            "learn_origin": learning_starts,
            "learn_base": 0,
            "chunk": _empty_chunk(),
            "obs": envs.reset(),
            "starts": np.ones(num_envs, bool),
        }
    else:
        learner, data = experiment.restore(checkpointer, latest)
        loop = dict(data)
        host = _host_path(workdir, latest)
        if os.path.exists(host):
            with np.load(host) as saved:
                replay.set_state(
                    {k[len("replay/") :]: saved[k] for k in saved if k.startswith("replay/")}
                )
                envs.set_state({k: saved[k] for k in saved if k.startswith("env")})
                loop["obs"], loop["starts"] = saved["obs"], saved["starts"]
            log.info(
                "resumed at env step %d with the saved replay (%d frames)", latest, len(replay)
            )
        else:
            loop["obs"], loop["starts"] = envs.reset(), np.ones(num_envs, bool)
            loop["learn_origin"] = int(loop["env_steps"]) + learning_starts
            loop["learn_base"] = int(jax.device_get(learner.learn_steps))
            log.info("resumed at env step %d without a saved replay: refilling it", latest)
    learn_steps = int(jax.device_get(learner.learn_steps))

    def save(step: int) -> None:
        data = {
            k: loop[k] for k in ("env_steps", "episodes", "learn_origin", "learn_base", "chunk")
        }
        if save_replay:
            _save_host(workdir, step, replay, envs, loop)
        checkpointer.save(step, learner, data)
        checkpointer.wait()
        _prune_host(workdir, checkpointer.all_steps())

    progress = metrics.Progress(
        total_steps=total, start_step=int(loop["env_steps"]), examples_per_step=1
    )
    writer = metrics.MetricWriter(workdir, enabled=jax.process_index() == 0)
    chunks_done = int(loop["env_steps"]) // per_chunk
    pending: list[dict] = []  # device metrics of this chunk's learn steps
    chunk_start_time, chunk_start_steps = time.monotonic(), int(loop["env_steps"])
    act_base = jax.random.fold_in(experiment.base_key, _ACT)
    learn_base = jax.random.fold_in(experiment.base_key, _LEARN)
    try:
        with _SignalFlag() as stop:
            while loop["env_steps"] < total:
                env_steps = int(loop["env_steps"])
                act_key = jax.random.fold_in(act_base, env_steps)
                actions = np.asarray(
                    experiment.act(
                        learner.params,
                        loop["obs"],
                        act_key,
                        np.float32(experiment.epsilon(env_steps)),
                    )
                )
                step = envs.step(actions)
                rewards = clip_reward(step.reward) if clip else step.reward
                replay.add(loop["obs"][..., -1], actions, rewards, step.terminal, loop["starts"])
                loop["obs"], loop["starts"] = step.obs, step.episode_over
                loop["env_steps"] = env_steps = env_steps + num_envs
                loop["episodes"] += len(step.episode_returns)
                loop["chunk"]["returns"].extend(float(r) for r in step.episode_returns)

                due = (
                    int(loop["learn_base"])
                    + max(0, env_steps - int(loop["learn_origin"])) // per_update
                )
                while learn_steps < due and replay.can_sample():
                    sample_rng = np.random.default_rng([int(config.seed), _SAMPLE, learn_steps])
                    batch = replay.sample(batch_size, sample_rng)
                    learn_key = jax.random.fold_in(learn_base, learn_steps)
                    learner, learn_metrics = experiment.learn(
                        learner, Transition(*batch), learn_key
                    )
                    pending.append(learn_metrics)
                    learn_steps += 1
                if len(pending) >= 512:  # fold into host sums: bounded device buffers
                    loop["chunk"]["loss_sums"] = _merge_pending(loop["chunk"], pending)
                    pending = []

                chunk_end = env_steps // per_chunk > chunks_done or env_steps >= total
                if chunk_end:
                    chunks_done = env_steps // per_chunk
                    record = _finish_chunk(loop["chunk"], pending)
                    record.update(
                        env_steps=env_steps,
                        frames=env_steps * experiment.options["frame_skip"],
                        episodes_total=loop["episodes"],
                        learn_steps=learn_steps,
                        epsilon=experiment.epsilon(env_steps),
                        replay_size=len(replay),
                        env_steps_per_sec=(env_steps - chunk_start_steps)
                        / max(time.monotonic() - chunk_start_time, 1e-9),
                    )
                    if not math.isfinite(record["loss"]) and record["learn_steps_in_chunk"] > 0:
                        print(
                            f"error: non-finite loss at env step {env_steps}; the last good "
                            f"checkpoint in {workdir}/checkpoints is kept",
                            flush=True,
                        )
                        return 1
                    writer.write(env_steps, record, split="train")
                    if chunks_done % log_every == 0 or env_steps >= total:
                        progress.update(
                            env_steps,
                            {
                                "return": record["mean_episode_return"],
                                "loss": record["loss"],
                            },
                        )
                    loop["chunk"], pending = _empty_chunk(), []
                    chunk_start_time, chunk_start_steps = time.monotonic(), env_steps
                    if checkpointer.should_save(chunks_done) or env_steps >= total:
                        save(env_steps)
                if stop.signum is not None:
                    loop["chunk"]["loss_sums"] = _merge_pending(loop["chunk"], pending)
                    pending = []
                    save(env_steps)
                    print(
                        f"interrupted at env step {env_steps}: checkpoint saved in "
                        f"{workdir}/checkpoints; run the same command to resume",
                        flush=True,
                    )
                    return 128 + int(stop.signum)
    finally:
        progress.close()
        writer.close()
        checkpointer.close()
    print(
        f"training done: {loop['env_steps']} env steps "
        f"({loop['env_steps'] * experiment.options['frame_skip']} frames), checkpoints in "
        f"{workdir}/checkpoints, metrics in {workdir}/metrics.jsonl",
        flush=True,
    )
    return 0


def _empty_chunk() -> dict:
    """Per-chunk accumulators (JSON-able, saved with a mid-chunk checkpoint)."""
    return {"returns": [], "loss_sums": {}, "learn_count": 0}


def _merge_pending(chunk: dict, pending: list[dict]) -> dict:
    """Fold fetched learn metrics into the chunk's running sums."""
    sums = dict(chunk["loss_sums"])
    for values in jax.device_get(pending):
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + float(value)
    chunk["learn_count"] = int(chunk["learn_count"]) + len(pending)
    return sums


def _finish_chunk(chunk: dict, pending: list[dict]) -> dict:
    """Scalars of one chunk: episodes finished, their mean raw return, mean learn metrics."""
    sums = _merge_pending(chunk, pending)
    count = int(chunk["learn_count"])
    returns = chunk["returns"]
    record = {
        "episodes": len(returns),
        "mean_episode_return": float(np.mean(returns)) if returns else math.nan,
        "learn_steps_in_chunk": count,
    }
    for name in ("loss", "q_mean", "grad_norm"):
        record[name] = sums.get(name, math.nan) / count if count else math.nan
    return record


def _evaluate(config: ConfigDict, workdir: str) -> int:
    """Play eval.num_episodes no-op-start episodes with the noise on; write eval.json."""
    return evaluate_checkpoint(config, workdir, AtariExperiment, evaluate_returns)


def evaluate_checkpoint(
    config: ConfigDict,
    workdir: str,
    make_experiment: Callable[[ConfigDict], Any],
    play: Callable[[Any, Any, int], tuple[np.ndarray, np.ndarray]],
    extra_fields: Callable[[Any, Any], dict] | None = None,
) -> int:
    """Restore the newest checkpoint, play eval.num_episodes episodes, write eval.json.

    Shared by the DQN and A2C host loops: `make_experiment(config)` has .restore(checkpointer,
    step) -> (learner, loop state with "env_steps"); `play(experiment, params, n)` returns the raw
    returns and whether each episode was cut; `extra_fields(experiment, learner)` adds fields.
    """
    ckpt_dir = os.path.join(workdir, "checkpoints")
    missing = f"no checkpoints in {ckpt_dir}: run --mode=train with this workdir first"
    if not os.path.isdir(ckpt_dir):
        raise UserError(missing)
    experiment = make_experiment(config)
    checkpointer = make_checkpointer(config, workdir)
    latest = checkpointer.latest_step()
    if latest is None:
        checkpointer.close()
        raise UserError(missing)
    learner, loop = experiment.restore(checkpointer, latest)
    checkpointer.close()
    num_episodes = eval_episodes(config)
    start = time.monotonic()
    returns, truncated = play(experiment, learner.params, num_episodes)
    seconds = time.monotonic() - start
    summary = eval_summary(
        config, experiment, returns, env_steps=int(loop["env_steps"]), truncated=truncated
    )
    if extra_fields is not None:
        summary.update(extra_fields(experiment, learner))
    summary["time"] = seconds
    path = os.path.join(workdir, "eval.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    with metrics.MetricWriter(workdir, enabled=jax.process_index() == 0) as writer:
        writer.write(
            summary["env_steps_trained"],
            {
                "mean_return": summary["mean_return"],
                "human_normalized_score": summary["human_normalized_score"],
            },
            split="eval",
        )
    hns = summary["human_normalized_score"]
    print(
        f"{experiment.game}: mean raw return {summary['mean_return']:.2f} "
        f"(stderr {summary['mean_return_stderr'] or math.nan:.2f}) over {num_episodes} episodes, "
        f"human-normalised {hns:.1f}%"
        + ("" if summary["protocol_matches_reference"] else " (not the reference protocol)")
        + f" after {summary['frames_trained']} frames, {summary['episodes_truncated']} "
        f"episodes cut at {experiment.options['max_episode_frames']} frames; eval written to {path}",
        flush=True,
    )
    return 0


def evaluate_returns(
    experiment: AtariExperiment, params: Any, num_episodes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Raw returns of num_episodes episodes played in parallel, one per environment, noise on,
    and whether each was cut at env.max_episode_frames."""
    envs = experiment.make_envs(num_envs=num_episodes, stream=_EVAL, terminal_on_life_loss=False)
    obs = envs.reset()
    returns = np.full(num_episodes, np.nan)
    truncated = np.zeros(num_episodes, bool)
    epsilon = np.float32(experiment.config.agent.get("epsilon_eval", 0.0))
    base = jax.random.fold_in(experiment.base_key, _EVAL)
    step = 0
    while np.isnan(returns).any():
        actions = np.asarray(experiment.act(params, obs, jax.random.fold_in(base, step), epsilon))
        for i, env in enumerate(envs.envs):
            if not np.isnan(returns[i]):
                continue
            result = env.step(int(actions[i]))
            obs[i] = result.obs
            if result.game_over or result.truncated:
                returns[i], truncated[i] = env.episode_return, result.truncated
        step += 1
    return returns, truncated


def eval_summary(
    config: ConfigDict,
    experiment: AtariExperiment,
    returns: np.ndarray,
    *,
    env_steps: int,
    truncated: np.ndarray | None = None,
) -> dict:
    """The eval.json fields: mean raw return, its standard error and the human-normalised score.

    `protocol_matches_reference` is False when the episodes were shorter (max_episode_frames),
    the no-op starts or sticky actions differed from the reference scores' protocol: the
    human-normalised score is then not comparable with the papers'.
    """
    mean = float(np.mean(returns))
    stderr = float(np.std(returns, ddof=1) / math.sqrt(len(returns))) if len(returns) > 1 else None
    summary = {
        "mean_return": mean,
        "mean_return_stderr": stderr,
        "num_episodes": len(returns),
        "num_seeds": 1,
        "env": config.env.name,
        "game": experiment.game,
        "agent": config.agent.name,
        "noisy": bool(config.agent.noisy),
        "env_steps_trained": env_steps,
        "frames_trained": env_steps * experiment.options["frame_skip"],
        "returns": [float(r) for r in returns],
        "episodes_truncated": int(np.sum(truncated)) if truncated is not None else None,
        "protocol_matches_reference": (
            experiment.options["max_episode_frames"] >= 108_000
            and experiment.options["noop_max"] == 30
            and experiment.options.get("repeat_action_probability", 0.0) == 0.0
        ),
        "eval_policy": (
            "greedy on the noisy Q, fresh noise per action"
            if experiment.noisy
            else f"epsilon-greedy on Q, epsilon={float(config.agent.get('epsilon_eval', 0.0))}"
        ),
        "protocol": (
            f"1..{experiment.options['noop_max']} no-op frames at start, episodes to game over "
            f"or {experiment.options['max_episode_frames']} frames, raw (unclipped) returns"
        ),
    }
    if atari_scores.has_reference_scores(experiment.game):
        random_score, human_score = atari_scores.reference_scores(experiment.game)
        scale = 100.0 / (human_score - random_score)
        summary["human_normalized_score"] = atari_scores.human_normalized_score(
            experiment.game, mean
        )
        summary["human_normalized_score_stderr"] = None if stderr is None else stderr * abs(scale)
        summary["reference_scores"] = {"random": random_score, "human": human_score}
    else:
        summary["human_normalized_score"] = math.nan
        summary["human_normalized_score_stderr"] = None
    return summary
