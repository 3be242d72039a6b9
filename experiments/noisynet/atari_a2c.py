"""A2C and NoisyNet-A2C on ALE Atari: N real emulators, one jitted update per rollout.

A2C is the synchronous form of A3C (Mnih et al. 2016, arXiv:1602.01783): env.num_envs emulators
(deepgen/noisynet/atari.py, with the DQN preprocessing) step in lock-step on the host for
agent.rollout_len actions each, then one jitted optimisation step learns from the whole rollout
with the n-step returns and the loss of deepgen/noisynet/a2c.py (make_atari_a2c). The acting
policy is jitted and vmapped over the environments (one categorical sample per env). The network
is networks.ActorCritic on the Nature DQN torso; A3C's feed-forward agent had a smaller torso (16
and 32 filters, 256 hidden units).

NoisyNet-A2C (arXiv:1706.10295, Sec. 3.1): the entropy bonus is removed (entropy_coef is forced
to 0) and the noise, drawn once per rollout from (seed, update index), is held fixed for the
whole rollout: one sample per env by default (agent.act_noise_per_env, as each of A3C's
actor-learner threads held its own), or one shared by all envs; the learner's loss and bootstrap
values for that rollout use the same samples. The next rollout draws new ones, so there is one
draw per optimisation step, as in a2c.py's gymnax version. Evaluation samples actions from the
policy with the noise on, a fresh draw each step (one per evaluated episode when per env).

Episode ends: a life loss (env.terminal_on_life_loss) or game over bootstraps with 0; an episode
cut at env.max_episode_frames bootstraps with V of its last observation. The learner sees rewards
clipped to their sign (env.clip_rewards); logged and evaluated returns are raw.

Checkpoints (atari_host.py) are taken between rollouts: the A2CLearner and, in
workdir/envs/host_<env_steps>.npz, the emulators' states and current observations, so a resumed
run, or one stopped by SIGTERM/SIGINT, gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from deepgen.core.optim import learning_rate_schedule
from deepgen.core.validate import Checker
from deepgen.noisynet.a2c import A2CLearner, Transitions, make_atari_a2c, num_updates
from deepgen.noisynet.atari import AtariVecEnv, clip_reward, step_envs
from deepgen.noisynet.trainer import eval_noise
from experiments.noisynet.atari_host import (
    AtariHostMethod,
    HostRun,
    cached_jitted_agent,
    shared_init_state,
)

log = logging.getLogger(__name__)

_ACT, _NOISE = 1, 2  # rng streams folded into the config seed (0: the runner's init)

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


class AtariA2C(AtariHostMethod):
    """A2C or NoisyNet-A2C (config.agent.noisy) on one ALE game."""

    host_dir = "envs"
    count_name = "updates_in_window"
    metric_names = (
        "loss",
        "policy_loss",
        "value_loss",
        "entropy",
        "advantage_mean",
        "value_mean",
        "return_mean",
        "grad_norm",
    )
    shown = ("mean_episode_return", "loss", "entropy")

    @classmethod
    def validate_loop(cls, config: ConfigDict, check: Checker) -> None:
        """Whole rollouts per chunk; non-negative loss weights."""
        agent = config.agent
        check(agent.name == "a2c", "agent.name", "'a2c' here")
        check(int(agent.rollout_len) >= 1, "agent.rollout_len", "an integer >= 1")
        per_update = int(config.env.num_envs) * int(agent.rollout_len)
        chunk = int(config.train.steps_per_chunk)
        check(
            chunk > 0 and chunk % per_update == 0,
            "train.steps_per_chunk",
            f"a positive multiple of env.num_envs * agent.rollout_len = {per_update}",
        )
        check.non_negative("agent.value_coef", "agent.entropy_coef")

    def __init__(self, config: ConfigDict, *, mode: str):
        super().__init__(config, mode=mode)
        self.rollout_len = int(config.agent.rollout_len)
        self.agent, self._init, self.act, self.learn = _compiled_agent(config, self.num_actions)
        self.draw_noise = jax.jit(self.agent.draw_noise, static_argnums=2)
        self.init_state = shared_init_state(self._init, self.obs_example)  # compiled once

    def agent_label(self) -> str:
        return "NoisyNet-A2C" if self.noisy else "A2C"

    def describe(self) -> list[str]:
        bonus = "no entropy bonus" if self.noisy else "entropy bonus"
        return [
            f"ALE {self.game}: {self.num_actions} actions, {self.num_envs} envs x "
            f"{self.rollout_len} steps per update, {self.agent_label()} ({bonus})"
        ]

    def noise_key(self, update: int) -> jax.Array:
        """The noise sample held for the rollout before optimisation step `update`."""
        return jax.random.fold_in(self.stream(_NOISE), update)

    def eval_actions(self, params: Any, obs_ExHxWxS: np.ndarray, key: jax.Array) -> np.ndarray:
        noise_key, act_key = jax.random.split(key)
        if self.noisy and eval_noise(self.config) == "mean":
            if not hasattr(self, "_act_mean_weights"):
                self._act_mean_weights = jax.jit(self.agent.act_mean_weights)
            return np.asarray(self._act_mean_weights(params, obs_ExHxWxS, act_key))
        noise = self.draw_noise(noise_key, params, len(obs_ExHxWxS))
        return np.asarray(self.act(params, obs_ExHxWxS, noise, act_key))

    def eval_policy(self) -> str:
        policy = "actions sampled from the policy"
        if self.noisy and eval_noise(self.config) == "mean":
            return f"{policy} of the mean weights (eval.noise=mean)"
        return f"{policy}, a fresh noise sample per step" if self.noisy else policy

    def eval_extra(self, state: A2CLearner) -> dict:
        return {"updates_trained": int(jax.device_get(state.updates))}

    def collect_rollout(
        self,
        envs: AtariVecEnv,
        params: Any,
        obs_ExHxWxS: np.ndarray,
        noise: Any,
        first_env_step: int,
        *,
        clip: bool,
    ) -> tuple[Transitions, np.ndarray, list[float]]:
        """rollout_len steps of every env under the rollout's noise: (batch, next obs, returns)."""
        rollout_len, num_envs = self.rollout_len, envs.num_envs
        shape = (rollout_len, num_envs)
        obs_TxE = np.empty((*shape, *obs_ExHxWxS.shape[1:]), np.uint8)
        next_obs_TxE = np.empty_like(obs_TxE)
        action_TxE = np.empty(shape, np.int32)
        reward_TxE = np.empty(shape, np.float32)
        terminal_TxE = np.empty(shape, bool)
        truncated_TxE = np.empty(shape, bool)
        finished_TxE = np.zeros(shape, np.float32)
        finished: list[float] = []
        act_base = self.stream(_ACT)
        for t in range(rollout_len):
            act_key = jax.random.fold_in(act_base, first_env_step + t * num_envs)
            actions_E = np.asarray(self.act(params, obs_ExHxWxS, noise, act_key))
            step = step_envs(envs, actions_E)
            obs_TxE[t], next_obs_TxE[t], action_TxE[t] = (
                obs_ExHxWxS,
                step.next_obs_ExHxWxS,
                actions_E,
            )
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

    def _train(self, workdir: str, built: tuple) -> A2CLearner:
        """Roll out the emulators and learn from each rollout, from the restored `built`."""
        config = self.config
        per_update = self.num_envs * self.rollout_len
        clip = bool(config.env.get("clip_rewards", True))
        schedule = learning_rate_schedule(config.opt, num_updates(config))
        envs = self.make_envs(num_envs=self.num_envs, stream=_ACT)
        host: dict[str, Any] = {"obs": None}
        counters = {"updates": 0}

        def host_arrays() -> dict[str, np.ndarray]:
            return {"obs": host["obs"], **envs.get_state()}

        run = HostRun(
            self,
            workdir,
            built,
            fresh_loop={"episodes": 0},
            host_arrays=host_arrays,
            record_extra=lambda: {
                "updates": counters["updates"],
                "learning_rate": float(schedule(counters["updates"])),
            },
        )
        saved = self.load_host(workdir, run.step) if run.step else None
        if saved is not None:
            envs.set_state({k: v for k, v in saved.items() if k.startswith("env")})
            host["obs"] = saved["obs"]
            log.info("resumed at env step %d with the saved emulator states", run.step)
        else:
            host["obs"] = envs.reset()
            if run.step:
                log.info("resumed at env step %d without saved emulators: new episodes", run.step)
        counters["updates"] = int(jax.device_get(run.state.updates))
        first_update = True
        with run:
            while not run.done:
                step, learner = run.step, run.state
                noise = self.draw_noise(
                    self.noise_key(counters["updates"]), learner.params, self.num_envs
                )
                batch, host["obs"], finished = self.collect_rollout(
                    envs, learner.params, host["obs"], noise, step, clip=clip
                )
                run.loop["window"]["returns"].extend(finished)
                run.loop["episodes"] += len(finished)
                started = time.perf_counter()
                learner, learn_metrics = self.learn(learner, batch, noise)
                if first_update:
                    jax.block_until_ready(learn_metrics)
                    run.timing(step + per_update, time.perf_counter() - started)
                    first_update = False
                run.add(learn_metrics)
                counters["updates"] += 1
                run.advance(learner, step + per_update)
        return run.state
