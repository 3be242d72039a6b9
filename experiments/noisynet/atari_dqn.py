"""NoisyNet-DQN / Dueling (and their baselines) on ALE Atari: the host loop, for the one runner.

Acting and learning are the jitted pure pieces of deepgen/noisynet/dqn.py; the environments and
the frame-once replay (deepgen/noisynet/atari.py) live on the host in numpy. As in DQN (Mnih et
al. 2015) and NoisyNet (arXiv:1706.10295, Sec. 3.1 and 4): one optimisation step every
`agent.env_steps_per_update` agent steps once `agent.learning_starts` transitions were
collected, a new noise sample per optimisation step, and evaluation with the noise on over
`eval.num_episodes` no-op-start episodes, each played to game over (or the frame cap). Noisy
agents act greedily, baselines epsilon-greedily. Acting noise has the meaning it has in the
gymnax loop (deepgen/noisynet/trainer.py) and in both A2C loops: "between optimisation steps, the
agent acts according to a fixed set of parameters" (the paper, Sec. 3): the sample drawn from
(seed, optimisation step) is held until the next optimisation step, shared by the emulators or
one per emulator (agent.act_noise_per_env); before learning starts every agent step draws a new
one. Evaluation draws a fresh sample per action and emulator.

Checkpoints (atari_host.py) hold the LearnerState and, in workdir/replay/host_<env_steps>.npz,
the replay and the emulators' states, so a resumed run continues exactly; with
config.replay.save_with_checkpoint=False the npz is not written and a resumed run refills the
replay (learning waits learning_starts env steps again).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from deepgen.core.errors import ConfigError
from deepgen.core.validate import Checker
from deepgen.noisynet.atari import FrameReplay, clip_reward
from deepgen.noisynet.dqn import LearnerState, make_dqn_agent, num_learn_steps
from deepgen.noisynet.replay import Transition
from deepgen.noisynet.trainer import eval_noise
from experiments.noisynet.atari_host import (
    AtariHostMethod,
    HostRun,
    cached_jitted_agent,
    shared_init_state,
)
from experiments.noisynet.checks import check_dqn_learner

log = logging.getLogger(__name__)

_ACT, _LEARN, _SAMPLE, _NOISE = 1, 2, 3, 4  # rng streams folded into the config seed

_COMPILED: dict[str, tuple] = {}  # agent-defining config -> (agent, init, act, learn), jitted


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


class AtariDQN(AtariHostMethod):
    """NoisyNet-DQN, NoisyNet-Dueling, DQN or dueling double DQN on one ALE game."""

    host_dir = "replay"
    count_name = "learn_steps_in_window"
    metric_names = ("loss", "q_mean", "grad_norm")
    shown = ("mean_episode_return", "loss")

    @classmethod
    def validate_loop(cls, config: ConfigDict, check: Checker) -> None:
        """Exploration, learner and replay fields; whole agent steps per chunk."""
        agent = config.agent
        check(agent.name in ("dqn", "dueling"), "agent.name", "'dqn' or 'dueling' here")
        check_dqn_learner(check)
        num_envs, stack = int(config.env.num_envs), int(config.env.frame_stack)
        check(
            int(config.replay.capacity) // num_envs > stack + 1,
            "replay.capacity",
            f"more than {(stack + 1) * num_envs} frames",
        )
        chunk = int(config.train.steps_per_chunk)
        check(
            chunk % num_envs == 0,
            "train.steps_per_chunk",
            f"a positive multiple of env.num_envs={num_envs} (agent steps summed over envs)",
        )

    def __init__(self, config: ConfigDict, *, mode: str):
        super().__init__(config, mode=mode)
        self.agent, self._init, self.act, self.learn = _compiled_agent(config, self.num_actions)
        self.init_state = shared_init_state(self._init, self.obs_example)  # compiled once
        num_envs, draw = self.num_envs, self.agent.draw_act_noise
        self._draw_act_noise = jax.jit(lambda key, params: draw(key, params, num_envs))
        self._held_noise: tuple[tuple, Any] | None = None  # (key identity, acting noise)

    def agent_label(self) -> str:
        name = {"dqn": "DQN", "dueling": "Dueling"}[self.config.agent.name]
        return f"NoisyNet-{name}" if self.noisy else name

    def describe(self) -> list[str]:
        capacity = int(self.config.replay.capacity)
        return [
            f"ALE {self.game}: {self.num_actions} actions, {self.num_envs} envs, replay "
            f"{capacity} frames ({capacity * 84 * 84 / 1e9:.2f} GB host memory)"
        ]

    def epsilon(self, env_steps: int) -> float:
        """The baseline's exploration rate; 0 for noisy agents (they ignore it)."""
        return 0.0 if self.noisy else float(self.agent.epsilon(env_steps))

    def acting_noise_key(self, step: int, learn_steps: int, learning: bool) -> jax.Array:
        """The key of the acting noise at agent step `step`: held between optimisation steps."""
        held, warm_up = jax.random.split(self.stream(_NOISE))
        if learning:  # one sample from (seed, optimisation step) until the next one
            return jax.random.fold_in(held, learn_steps)
        return jax.random.fold_in(warm_up, step)  # before learning: a new sample every step

    def acting_noise(
        self, params: Any, step: int, learn_steps: int, learning: bool
    ) -> jax.Array | None:
        """The training policy's noise, (Z,) or (num_envs, Z); None for the baseline.

        Drawn again only when its key changes (after an optimisation step, or every step before
        learning starts), so holding it costs no draw.
        """
        if not self.noisy:
            return None
        ident = (learning, learn_steps if learning else step)
        if self._held_noise is None or self._held_noise[0] != ident:
            key = self.acting_noise_key(step, learn_steps, learning)
            self._held_noise = (ident, self._draw_act_noise(key, params))
        return self._held_noise[1]

    def eval_actions(self, params: Any, obs_ExHxWxS: np.ndarray, key: jax.Array) -> np.ndarray:
        epsilon = np.float32(self.config.agent.get("epsilon_eval", 0.0))
        if self.noisy and eval_noise(self.config) == "mean":  # zero draws: mu alone
            if not hasattr(self, "_zero_noise"):
                shape = self.agent.draw_act_noise(key, params, 1, per_row=False).shape
                self._zero_noise = np.zeros(shape, np.float32)
            return np.asarray(self.act(params, obs_ExHxWxS, key, epsilon, self._zero_noise))
        return np.asarray(self.act(params, obs_ExHxWxS, key, epsilon))

    def eval_policy(self) -> str:
        if self.noisy and eval_noise(self.config) == "mean":
            return "greedy on the Q of the mean weights (eval.noise=mean)"
        if self.noisy:
            return "greedy on the noisy Q, fresh noise per action"
        return f"epsilon-greedy on Q, epsilon={float(self.config.agent.get('epsilon_eval', 0.0))}"

    def eval_extra(self, state: LearnerState) -> dict:
        return {"learn_steps_trained": int(jax.device_get(state.learn_steps))}

    def check_saved_host(self, saved: Any) -> None:
        """The saved replay ring has the size this config's replay.capacity and env.num_envs give."""
        if "replay/per_env" not in saved.files:
            return
        per_env = int(self.config.replay.capacity) // int(self.config.env.num_envs)
        if int(saved["replay/per_env"]) != per_env:
            raise ConfigError(
                f"config.replay.capacity={self.config.replay.capacity} does not fit the run being "
                f"resumed (its saved replay holds {int(saved['replay/per_env'])} frames per "
                "emulator): keep replay.capacity and env.num_envs, or use a new --workdir"
            )

    def _train(self, workdir: str, built: tuple) -> LearnerState:
        """Step the emulators, fill the replay and learn, from the restored `built`."""
        config = self.config
        num_envs = self.num_envs
        per_update = int(config.agent.env_steps_per_update)
        learning_starts = int(config.agent.learning_starts)
        batch_size = int(config.agent.batch_size)
        clip = bool(config.env.get("clip_rewards", True))
        save_replay = bool(config.replay.get("save_with_checkpoint", True))
        replay = FrameReplay(
            int(config.replay.capacity), num_envs=num_envs, frame_stack=self.options["frame_stack"]
        )
        envs = self.make_envs(num_envs=num_envs, stream=_ACT)
        host: dict[str, Any] = {"obs": None, "starts": np.ones(num_envs, bool)}

        def host_arrays() -> dict[str, np.ndarray]:
            arrays = {f"replay/{k}": v for k, v in replay.get_state().items()}
            arrays.update(envs.get_state())
            arrays["obs"], arrays["starts"] = host["obs"], host["starts"]
            return arrays

        fresh = {"episodes": 0, "learn_origin": learning_starts, "learn_base": 0}
        run = HostRun(
            self,
            workdir,
            built,
            fresh_loop=fresh,
            host_arrays=host_arrays if save_replay else None,
            record_extra=lambda: {
                "learn_steps": learn_steps,
                "epsilon": self.epsilon(run.step),
                "replay_size": len(replay),
            },
        )
        loop = run.loop
        saved = self.load_host(workdir, run.step) if run.step else None
        if saved is not None:
            replay.set_state({k[len("replay/") :]: v for k, v in saved.items() if "replay/" in k})
            envs.set_state({k: v for k, v in saved.items() if k.startswith("env")})
            host["obs"], host["starts"] = saved["obs"], saved["starts"]
            log.info(
                "resumed at env step %d with the saved replay (%d frames)", run.step, len(replay)
            )
        else:
            host["obs"] = envs.reset()
            if run.step:
                loop["learn_origin"] = run.step + learning_starts
                loop["learn_base"] = int(jax.device_get(run.state.learn_steps))
                log.info("resumed at env step %d without a saved replay: refilling it", run.step)
        learn_steps = int(jax.device_get(run.state.learn_steps))
        first_learn = True
        act_base, learn_base = self.stream(_ACT), self.stream(_LEARN)
        with run:
            while not run.done:
                step, learner = run.step, run.state
                learning = step >= int(loop["learn_origin"])
                actions = np.asarray(
                    self.act(
                        learner.params,
                        host["obs"],
                        jax.random.fold_in(act_base, step),
                        np.float32(self.epsilon(step)),
                        self.acting_noise(learner.params, step, learn_steps, learning),
                    )
                )
                out = envs.step(actions)
                rewards = clip_reward(out.reward) if clip else out.reward
                replay.add(host["obs"][..., -1], actions, rewards, out.terminal, host["starts"])
                host["obs"], host["starts"] = out.obs, out.episode_over
                step += num_envs
                loop["episodes"] += len(out.episode_returns)
                loop["window"]["returns"].extend(float(r) for r in out.episode_returns)

                due = (
                    int(loop["learn_base"]) + max(0, step - int(loop["learn_origin"])) // per_update
                )
                while learn_steps < due and replay.can_sample():
                    sample_rng = np.random.default_rng([int(config.seed), _SAMPLE, learn_steps])
                    batch = replay.sample(batch_size, sample_rng)
                    started = time.perf_counter()
                    learner, learn_metrics = self.learn(
                        learner, Transition(*batch), jax.random.fold_in(learn_base, learn_steps)
                    )
                    if first_learn:
                        jax.block_until_ready(learn_metrics)
                        run.timing(step, time.perf_counter() - started)
                        first_learn = False
                    run.add(learn_metrics)
                    learn_steps += 1
                run.advance(learner, step)
        return run.state
