"""The host loop of A2C and NoisyNet-A2C on ALE Atari: N real emulators, one jitted update per rollout.

A2C is the synchronous form of A3C (Mnih et al. 2016, arXiv:1602.01783): env.num_envs emulators
(deepgen/noisynet/atari.py, with the DQN preprocessing) step in lock-step on the host for
agent.rollout_len actions each, then one jitted optimisation step learns from the whole rollout
with the n-step returns and the loss of deepgen/noisynet/a2c.py (nstep_returns, a2c_loss). The
acting policy is jitted and vmapped over the environments (one categorical sample per env). The
network is networks.ActorCritic on the Nature DQN torso; A3C's feed-forward agent had a smaller
torso (16 and 32 filters, 256 hidden units).

NoisyNet-A2C (arXiv:1706.10295, Sec. 3.1): the entropy bonus is removed (entropy_coef is forced to
0) and one noise sample, drawn from (seed, update index), is held fixed for the whole rollout: all
envs act with it, and the learner's loss and bootstrap values for that rollout use it too. The
next rollout draws a new one, so there is one sample per optimisation step, as in a2c.py's gymnax
version. Evaluation samples actions from the policy with the noise on, a fresh sample each step.

Episode ends: a life loss (env.terminal_on_life_loss) or game over bootstraps with 0; an episode
cut at env.max_episode_frames bootstraps with V of its last observation. The learner sees rewards
clipped to their sign (env.clip_rewards); logged and evaluated returns are raw.

Units and files follow atari_loop.py: env steps are agent steps summed over envs (frames = env
steps x frame_skip). Checkpoints are taken between rollouts: the A2CLearner (Orbax) and, in
workdir/envs/host_<env_steps>.npz, the emulators' states and current observations, so a resumed
run, or one stopped by SIGTERM/SIGINT, gives the same numbers as an uninterrupted one.
"""

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from deepgen.core import metrics
from deepgen.core.errors import UserError
from deepgen.core.optim import learning_rate_schedule, make_optimizer
from deepgen.core.train_loop import _SignalFlag
from deepgen.noisynet.a2c import Transitions, a2c_loss, a2c_step
from deepgen.noisynet.atari import AtariVecEnv, clip_reward, env_options, rom_id
from deepgen.noisynet.atari_loop import (
    AtariHostExperiment,
    cached_jitted_agent,
    evaluate_checkpoint,
    make_checkpointer,
    prune_host_files,
)
from deepgen.noisynet.networks import ActorCritic, make_actor_critic

log = logging.getLogger(__name__)

_INIT, _ACT, _NOISE, _EVAL = 0, 1, 2, 4  # rng streams folded into the config seed
HOST_DIR = "envs"
METRIC_NAMES = (
    "loss",
    "policy_loss",
    "value_loss",
    "entropy",
    "advantage_mean",
    "value_mean",
    "return_mean",
    "grad_norm",
)


class A2CLearner(NamedTuple):
    """What the learner carries between rollouts (the checkpointed state)."""

    params: Any
    opt_state: Any
    updates: jax.Array


class AtariA2C(NamedTuple):
    """The pure pieces of one configured Atari A2C agent (see make_atari_a2c)."""

    network: ActorCritic
    optimizer: optax.GradientTransformation
    init: Callable[[jax.Array, jax.Array], A2CLearner]
    policy: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
    act: Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]
    learn: Callable[[A2CLearner, Transitions, jax.Array], tuple[A2CLearner, dict]]
    entropy_coef: float


def num_updates(config: ConfigDict) -> int:
    """Optimisation steps in the whole run: one per rollout of num_envs x rollout_len env steps."""
    per_update = int(config.env.num_envs) * int(config.agent.rollout_len)
    return max(1, math.ceil(int(config.train.total_env_steps) / per_update))


def make_atari_a2c(config: ConfigDict, num_actions: int) -> AtariA2C:
    """A2C, or NoisyNet-A2C when config.agent.noisy, for uint8 BxHxWxS Atari frame stacks."""
    network = make_actor_critic(config, num_actions)
    optimizer = make_optimizer(config.opt, num_updates(config))
    gamma = float(config.agent.gamma)
    value_coef = float(config.agent.value_coef)
    entropy_coef = 0.0 if bool(config.agent.noisy) else float(config.agent.entropy_coef)

    def policy(
        params: Any, obs_BxHxWxS: jax.Array, noise_key: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """(logits_BxA, value_B) with the noise sample of noise_key shared by the batch."""
        return network.apply(params, obs_BxHxWxS, rngs={"noise": noise_key})

    def init(rng: jax.Array, obs_example_1xHxWxS: jax.Array) -> A2CLearner:
        params_key, noise_key = jax.random.split(rng)
        params = network.init({"params": params_key, "noise": noise_key}, obs_example_1xHxWxS)
        return A2CLearner(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    def act(params: Any, obs_ExHxWxS: jax.Array, noise_key: jax.Array, rng: jax.Array) -> jax.Array:
        def one_env(obs_HxWxS: jax.Array, key: jax.Array) -> jax.Array:
            logits_1xA, _ = policy(params, obs_HxWxS[None], noise_key)
            return jax.random.categorical(key, logits_1xA[0])

        keys_E = jax.random.split(rng, obs_ExHxWxS.shape[0])
        return jax.vmap(one_env)(obs_ExHxWxS, keys_E).astype(jnp.int32)

    def loss_fn(params: Any, batch: Transitions, return_TxE: jax.Array, noise_key: jax.Array):
        obs_NxHxWxS = batch.obs_TxExO.reshape((-1, *batch.obs_TxExO.shape[2:]))
        logits_NxA, value_N = policy(params, obs_NxHxWxS, noise_key)
        loss, aux = a2c_loss(
            logits_NxA=logits_NxA,
            value_N=value_N,
            action_N=batch.action_TxE.reshape(-1),
            return_N=return_TxE.reshape(-1),
            value_coef=value_coef,
            entropy_coef=entropy_coef,
        )
        return loss, {**aux, "value_mean": jnp.mean(value_N)}

    def learn(
        learner: A2CLearner, batch: Transitions, noise_key: jax.Array
    ) -> tuple[A2CLearner, dict]:
        params, opt_state, grads, aux, return_TxE = a2c_step(
            learner.params,
            learner.opt_state,
            batch,
            noise_key,
            policy=policy,
            loss_fn=loss_fn,
            optimizer=optimizer,
            gamma=gamma,
        )
        aux = {**aux, "grad_norm": optax.tree.norm(grads), "return_mean": jnp.mean(return_TxE)}
        return A2CLearner(params, opt_state, learner.updates + 1), aux

    return AtariA2C(network, optimizer, init, policy, act, learn, entropy_coef)


_COMPILED: dict[str, tuple] = {}  # agent-defining config -> (agent, jitted init, act, learn)


def _compiled_agent(config: ConfigDict, num_actions: int) -> tuple:
    """make_atari_a2c and its jitted functions, shared by the runs of one process (tests, sweeps)."""
    key_parts = [
        config.agent.to_dict(),
        config.network.to_dict(),
        config.opt.to_dict(),
        num_updates(config),
        num_actions,
    ]
    return cached_jitted_agent(_COMPILED, key_parts, lambda: make_atari_a2c(config, num_actions))


class EnvStep(NamedTuple):
    """One agent step of every env (host numpy); ended episodes were reset."""

    obs_ExHxWxS: np.ndarray  # after the step: a new episode's first observation where one ended
    next_obs_ExHxWxS: np.ndarray  # the true next observation (an ended episode's last one)
    reward_E: np.ndarray  # raw score change
    terminal_E: np.ndarray  # game over, or a life lost with terminal_on_life_loss
    truncated_E: np.ndarray  # cut at max_episode_frames without game over
    ended_E: np.ndarray  # game over or truncated
    episode_return_E: np.ndarray  # raw return of the episode that ended here, else 0


def step_envs(envs: AtariVecEnv, actions_E: np.ndarray) -> EnvStep:
    """Step each env with its action; keep an ended episode's last observation, then reset it."""
    num_envs = envs.num_envs
    obs, next_obs = [], []
    reward = np.zeros(num_envs, np.float32)
    terminal = np.zeros(num_envs, bool)
    truncated = np.zeros(num_envs, bool)
    ended = np.zeros(num_envs, bool)
    episode_return = np.zeros(num_envs, np.float32)
    for i, env in enumerate(envs.envs):
        result = env.step(int(actions_E[i]))
        next_obs.append(result.obs)
        reward[i], terminal[i], truncated[i] = result.reward, result.terminal, result.truncated
        if result.game_over or result.truncated:
            ended[i], episode_return[i] = True, env.episode_return
            obs.append(env.reset())
        else:
            obs.append(result.obs)
    return EnvStep(
        np.stack(obs), np.stack(next_obs), reward, terminal, truncated, ended, episode_return
    )


class AtariA2CExperiment(AtariHostExperiment):
    """The agent, its jitted functions and the environment settings of one config."""

    def __init__(self, config: ConfigDict):
        self.config = config
        self.game = rom_id(config.env.name)
        self.options = env_options(config)
        self.num_envs = int(config.env.num_envs)
        self.rollout_len = int(config.agent.rollout_len)
        self.num_actions = AtariVecEnv(self.game, num_envs=1, seed=0, **self.options).num_actions
        self.agent, self._init, self.act, self.learn = _compiled_agent(config, self.num_actions)
        self.noisy = bool(config.agent.noisy)
        self.base_key = jax.random.key(int(config.seed))
        self.obs_example = np.zeros((1, 84, 84, self.options["frame_stack"]), np.uint8)

    def init_learner(self) -> A2CLearner:
        """Fresh parameters from the config seed."""
        return self._init(jax.random.fold_in(self.base_key, _INIT), self.obs_example)

    def stream(self, stream: int) -> jax.Array:
        """The base key of one rng stream."""
        return jax.random.fold_in(self.base_key, stream)

    def noise_key(self, update: int) -> jax.Array:
        """The noise sample held for the rollout before optimisation step `update`."""
        return jax.random.fold_in(self.stream(_NOISE), update)


def collect_rollout(
    experiment: AtariA2CExperiment,
    envs: AtariVecEnv,
    params: Any,
    obs_ExHxWxS: np.ndarray,
    noise_key: jax.Array,
    first_env_step: int,
    *,
    clip: bool,
) -> tuple[Transitions, np.ndarray, list[float]]:
    """rollout_len steps of every env under one noise sample: (batch, next obs, ended returns)."""
    rollout_len, num_envs = experiment.rollout_len, envs.num_envs
    shape = (rollout_len, num_envs)
    obs_TxE = np.empty((*shape, *obs_ExHxWxS.shape[1:]), np.uint8)
    next_obs_TxE = np.empty_like(obs_TxE)
    action_TxE = np.empty(shape, np.int32)
    reward_TxE = np.empty(shape, np.float32)
    terminal_TxE = np.empty(shape, bool)
    truncated_TxE = np.empty(shape, bool)
    finished_TxE = np.zeros(shape, np.float32)
    finished: list[float] = []
    act_base = experiment.stream(_ACT)
    for t in range(rollout_len):
        act_key = jax.random.fold_in(act_base, first_env_step + t * num_envs)
        actions_E = np.asarray(experiment.act(params, obs_ExHxWxS, noise_key, act_key))
        step = step_envs(envs, actions_E)
        obs_TxE[t], next_obs_TxE[t], action_TxE[t] = obs_ExHxWxS, step.next_obs_ExHxWxS, actions_E
        reward_TxE[t] = clip_reward(step.reward_E) if clip else step.reward_E
        terminal_TxE[t], truncated_TxE[t] = step.terminal_E, step.truncated_E
        finished_TxE[t] = step.episode_return_E
        finished.extend(float(r) for r in step.episode_return_E[step.ended_E])
        obs_ExHxWxS = step.obs_ExHxWxS
    batch = Transitions(
        obs_TxExO=obs_TxE,
        action_TxE=action_TxE,
        reward_TxE=reward_TxE,
        terminated_TxE=terminal_TxE,
        truncated_TxE=truncated_TxE,
        next_obs_TxExO=next_obs_TxE,
        finished_return_TxE=finished_TxE,
    )
    return batch, obs_ExHxWxS, finished


def run(config: ConfigDict, workdir: str, *, mode: str) -> int:
    """Train (resuming from workdir) or evaluate; returns the exit status."""
    if mode == "train":
        return _train(config, workdir)
    if mode == "eval":
        return _evaluate(config, workdir)
    raise UserError(f"--mode={mode} is not available for ALE runs: use --mode=train or --mode=eval")


def _host_path(workdir: str, step: int) -> str:
    return os.path.join(workdir, HOST_DIR, f"host_{step}.npz")


def _save_host(workdir: str, step: int, envs: AtariVecEnv, obs_ExHxWxS: np.ndarray) -> None:
    """Emulator states and current observations: one npz, written atomically."""
    path = _host_path(workdir, step)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, obs=obs_ExHxWxS, **envs.get_state())
    os.replace(tmp, path)


def _prune_host(workdir: str, keep_steps: list[int]) -> None:
    prune_host_files(os.path.join(workdir, HOST_DIR), keep_steps)


def _empty_chunk() -> dict:
    """Per-chunk accumulators (JSON-able, saved with a mid-chunk checkpoint)."""
    return {"returns": [], "sums": {}, "count": 0}


def _merge(chunk: dict, pending: list[dict]) -> None:
    """Fold fetched learner metrics into the chunk's running sums, in update order."""
    for values in jax.device_get(pending):
        for name, value in values.items():
            chunk["sums"][name] = chunk["sums"].get(name, 0.0) + float(value)
    chunk["count"] = int(chunk["count"]) + len(pending)


def _train(config: ConfigDict, workdir: str) -> int:
    experiment = AtariA2CExperiment(config)
    num_envs, rollout_len = experiment.num_envs, experiment.rollout_len
    per_update = num_envs * rollout_len
    total = int(config.train.total_env_steps)
    per_chunk = int(config.train.steps_per_chunk)
    frame_skip = experiment.options["frame_skip"]
    clip = bool(config.env.get("clip_rewards", True))
    log_every = max(int(config.train.get("log_every", 1)), 1)
    schedule = learning_rate_schedule(config.opt, num_updates(config))
    envs = experiment.make_envs(num_envs=num_envs, stream=_ACT)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    checkpointer = make_checkpointer(config, workdir)
    log.info(
        "ALE %s: %d actions, %d envs x %d steps per update, %s",
        experiment.game,
        experiment.num_actions,
        num_envs,
        rollout_len,
        "NoisyNet-A2C (no entropy bonus)" if experiment.noisy else "A2C (entropy bonus)",
    )

    latest = checkpointer.latest_step()
    if latest is None:
        learner = experiment.init_learner()
        loop = {"env_steps": 0, "episodes": 0, "chunk": _empty_chunk()}
        obs_ExHxWxS = envs.reset()
    else:
        learner, loop = experiment.restore(checkpointer, latest)
        host = _host_path(workdir, latest)
        if os.path.exists(host):
            with np.load(host) as saved:
                envs.set_state({k: saved[k] for k in saved if k.startswith("env")})
                obs_ExHxWxS = saved["obs"]
            log.info("resumed at env step %d with the saved emulator states", latest)
        else:
            obs_ExHxWxS = envs.reset()
            log.info("resumed at env step %d without %s: new episodes", latest, host)
    updates = int(jax.device_get(learner.updates))

    def save(step: int) -> None:
        _save_host(workdir, step, envs, obs_ExHxWxS)
        checkpointer.save(step, learner, loop)
        checkpointer.wait()
        _prune_host(workdir, checkpointer.all_steps())

    progress = metrics.Progress(
        total_steps=total, start_step=int(loop["env_steps"]), examples_per_step=1
    )
    writer = metrics.MetricWriter(workdir, enabled=jax.process_index() == 0)
    pending: list[dict] = []
    first_update = True
    chunk_start_time, chunk_start_steps = time.monotonic(), int(loop["env_steps"])
    try:
        with _SignalFlag() as stop:
            while loop["env_steps"] < total:
                env_steps = int(loop["env_steps"])
                noise_key = experiment.noise_key(updates)
                batch, obs_ExHxWxS, finished = collect_rollout(
                    experiment, envs, learner.params, obs_ExHxWxS, noise_key, env_steps, clip=clip
                )
                loop["chunk"]["returns"].extend(finished)
                loop["episodes"] += len(finished)
                started = time.perf_counter()
                learner, learn_metrics = experiment.learn(learner, batch, noise_key)
                if first_update:
                    jax.block_until_ready(learn_metrics)
                    seconds = time.perf_counter() - started
                    writer.write(env_steps, {"first_update_seconds": seconds}, split="timing")
                    first_update = False
                pending.append(learn_metrics)
                updates += 1
                loop["env_steps"] = env_steps = env_steps + per_update
                if len(pending) >= 256:  # fold into host sums: bounded device buffers
                    _merge(loop["chunk"], pending)
                    pending = []

                if env_steps % per_chunk == 0 or env_steps >= total:
                    _merge(loop["chunk"], pending)
                    pending = []
                    record = _chunk_record(loop["chunk"])
                    record.update(
                        env_steps=env_steps,
                        frames=env_steps * frame_skip,
                        episodes_total=loop["episodes"],
                        updates=updates,
                        learning_rate=float(schedule(updates)),
                        env_steps_per_sec=(env_steps - chunk_start_steps)
                        / max(time.monotonic() - chunk_start_time, 1e-9),
                    )
                    if not math.isfinite(record["loss"]):
                        print(
                            f"error: non-finite loss at env step {env_steps}; the last good "
                            f"checkpoint in {workdir}/checkpoints is kept; lower opt.lr",
                            flush=True,
                        )
                        return 1
                    writer.write(env_steps, record, split="train")
                    chunks_done = math.ceil(env_steps / per_chunk)
                    if chunks_done % log_every == 0 or env_steps >= total:
                        shown = ("mean_episode_return", "loss", "entropy")
                        progress.update(env_steps, {k: record[k] for k in shown})
                    loop["chunk"] = _empty_chunk()
                    chunk_start_time, chunk_start_steps = time.monotonic(), env_steps
                    if checkpointer.should_save(chunks_done) or env_steps >= total:
                        save(env_steps)
                if stop.signum is not None:
                    _merge(loop["chunk"], pending)
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
        f"training done: {loop['env_steps']} env steps ({loop['env_steps'] * frame_skip} "
        f"frames), {updates} updates; checkpoints in {workdir}/checkpoints, metrics in "
        f"{workdir}/metrics.jsonl",
        flush=True,
    )
    return 0


def _chunk_record(chunk: dict) -> dict:
    """Scalars of one chunk: episodes finished, their mean raw return, mean learner metrics."""
    count = int(chunk["count"])
    returns = chunk["returns"]
    record = {
        "episodes": len(returns),
        "mean_episode_return": float(np.mean(returns)) if returns else math.nan,
        "updates_in_chunk": count,
    }
    for name in METRIC_NAMES:
        record[name] = chunk["sums"].get(name, math.nan) / count if count else math.nan
    return record


def evaluate_returns(
    experiment: AtariA2CExperiment, params: Any, num_episodes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Raw returns of num_episodes parallel episodes (fresh noise each step) and which were cut."""
    envs = experiment.make_envs(num_envs=num_episodes, stream=_EVAL, terminal_on_life_loss=False)
    obs_ExHxWxS = envs.reset()
    returns = np.full(num_episodes, np.nan)
    truncated = np.zeros(num_episodes, bool)
    base = experiment.stream(_EVAL)
    step = 0
    while np.isnan(returns).any():
        noise_key, act_key = jax.random.split(jax.random.fold_in(base, step))
        actions = np.asarray(experiment.act(params, obs_ExHxWxS, noise_key, act_key))
        for i, env in enumerate(envs.envs):
            if not np.isnan(returns[i]):
                continue
            result = env.step(int(actions[i]))
            obs_ExHxWxS[i] = result.obs
            if result.game_over or result.truncated:
                returns[i], truncated[i] = env.episode_return, result.truncated
        step += 1
    return returns, truncated


def _evaluate(config: ConfigDict, workdir: str) -> int:
    """Play eval.num_episodes episodes with the trained policy; write eval.json."""

    def extra_fields(experiment: AtariA2CExperiment, learner: Any) -> dict:
        policy = "actions sampled from the policy"
        return {
            "eval_policy": f"{policy}, a fresh noise sample per step"
            if experiment.noisy
            else policy,
            "updates_trained": int(jax.device_get(learner.updates)),
        }

    return evaluate_checkpoint(
        config, workdir, AtariA2CExperiment, evaluate_returns, extra_fields=extra_fields
    )
