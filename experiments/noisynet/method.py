"""NoisyNet on gymnax (CartPole, MinAtar), declared for the one runner; Atari goes to its host loop.

Fortunato et al. 2018 (arXiv 1706.10295). One train step is `jit(vmap(train_chunk))` over
config.train.num_seeds seeds: config.train.steps_per_chunk environment steps of acting and
learning inside one lax.scan (deepgen/noisynet/trainer.py, a2c.py). `train.num_steps`,
`train.log_every` and `ckpt.every` count env steps per seed; metrics hold the mean over seeds
and each seed's mean episode return. With mesh.data=-1 the seeds are spread over as many
devices as divide train.num_seeds. Evaluation acts with the exploration the agent was trained
with (noise on; epsilon_eval for the baseline), as dqn_zoo does; the paper does not pin this
down. Environments named "ALE/..." are stepped on the host (experiments/noisynet/atari.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from deepgen.core import mesh as mesh_lib
from deepgen.core import metrics
from deepgen.core.errors import DataError
from deepgen.core.train_loop import Unit
from deepgen.core.validate import Checker
from deepgen.noisynet.networks import TORSOS
from deepgen.noisynet.trainer import AGENTS, EVAL_NOISE, eval_noise, make_trainer, update_schedule
from experiments.contract import Method
from experiments.noisynet.checks import check_dqn_learner, check_noise_and_discount
from experiments.noisynet.curves import learning_curve, save_learning_curves

GYMNAX_ENVS = {
    "CartPole-v1": "mlp",
    "Breakout-MinAtar": "minatar",
    "Asterix-MinAtar": "minatar",
    "SpaceInvaders-MinAtar": "minatar",
    "Freeway-MinAtar": "minatar",
}


def is_atari(config: ConfigDict) -> bool:
    """ALE games run in the host loop."""
    return str(config.env.name).startswith("ALE/")


def validate_agent(config: ConfigDict) -> None:
    """The fields gymnax and Atari share: agent, network, env.num_envs, train, eval, opt."""
    check = Checker(config)
    train = config.train
    check.one_of("agent.name", AGENTS)
    check.one_of("eval.noise", EVAL_NOISE)
    check_noise_and_discount(check)
    check_dqn_learner(check)
    check.positive(
        "network.head_hidden",
        "env.num_envs",
        "train.num_seeds",
        "train.steps_per_chunk",
        "eval.num_episodes",
        "ckpt.keep",
    )
    check.one_of("network.torso", TORSOS)
    check(
        all(int(w) > 0 for w in config.network.torso_hidden),
        "network.torso_hidden",
        "positive layer widths",
    )
    check(
        train.num_steps >= train.steps_per_chunk,
        "train.num_steps",
        f"at least train.steps_per_chunk={train.steps_per_chunk} env steps",
    )
    check.optimiser()


def validate(config: ConfigDict) -> None:
    """Check values the config types cannot: one ConfigError naming the field and what is allowed."""
    validate_agent(config)
    check = Checker(config)
    agent, train = config.agent, config.train
    check(
        config.env.name in GYMNAX_ENVS,
        "env.name",
        f"one of {sorted(GYMNAX_ENVS)} or an 'ALE/<Game>-v5' Atari game",
    )
    if config.network.torso != "mlp":
        check(
            GYMNAX_ENVS[config.env.name] == config.network.torso,
            "network.torso",
            f"'mlp' or {GYMNAX_ENVS[config.env.name]!r} for {config.env.name}",
        )
    if agent.name in ("dqn", "dueling"):
        check(
            train.steps_per_chunk % config.env.num_envs == 0,
            "train.steps_per_chunk",
            f"a multiple of env.num_envs={config.env.num_envs}",
        )
        check(
            config.replay.capacity >= max(agent.batch_size, config.env.num_envs),
            "replay.capacity",
            "at least agent.batch_size and env.num_envs",
        )
        update_schedule(int(config.env.num_envs), int(agent.env_steps_per_update))


def _updates_done(state: Any) -> jax.Array:
    """Optimisation steps taken so far (DQN learner steps, or A2C updates)."""
    return state.learner.learn_steps if hasattr(state, "learner") else state.updates


def _stderr(values: np.ndarray) -> float | None:
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


class NoisyNet(Method):
    """The environment, the Trainer and the seed-vmapped functions for one gymnax config."""

    name = "noisynet"
    check_finite = ("loss", "grad_norm")  # NaN is fine in a chunk without updates
    per_seed = ("mean_episode_return",)

    @classmethod
    def for_config(cls, config: ConfigDict) -> type[Method]:
        """The host loops for ALE games, this class for gymnax."""
        if is_atari(config):
            from experiments.noisynet.atari import AtariA2C, AtariDQN

            return AtariA2C if config.agent.name == "a2c" else AtariDQN
        return cls

    @classmethod
    def validate(cls, config: ConfigDict) -> None:
        """See the module-level validate."""
        if is_atari(config):
            cls.for_config(config).validate(config)
            return
        validate(config)

    def __init__(self, config: ConfigDict, *, mode: str = "train"):
        import gymnax

        super().__init__(config, mode=mode)
        self.env, self.env_params = gymnax.make(config.env.name)
        self.trainer = make_trainer(config, self.env, self.env_params)
        self.num_seeds = int(config.train.num_seeds)

    @property
    def mesh(self) -> jax.sharding.Mesh:
        """A data axis over as many devices as divide the number of seeds (mesh.data=-1)."""
        if not hasattr(self, "_mesh"):
            devices = math.gcd(self.num_seeds, jax.device_count())
            if int(self.config.mesh.data) != -1:
                devices = int(self.config.mesh.data) * int(self.config.mesh.fsdp)
            self._mesh = mesh_lib.make_mesh(self.config.mesh, num_devices=devices)
        return self._mesh

    def state_shardings(self) -> Any:
        """Every leaf split by seed over the data axis."""
        abstract = jax.eval_shape(self.init_state, jax.random.key(0))
        return mesh_lib.leading_axis_shardings(abstract, self.mesh)

    def unit(self) -> Unit:
        """One chunk of train.steps_per_chunk env steps per seed."""
        return Unit("env_steps", int(self.config.train.steps_per_chunk), self.num_seeds)

    def seed_keys(self, stream: int) -> jax.Array:
        """One key per seed for the given purpose (0 = init, 1 = evaluation)."""
        base = jax.random.fold_in(jax.random.PRNGKey(int(self.config.seed)), stream)
        return jax.random.split(base, self.num_seeds)

    def init_state(self, rng: jax.Array) -> Any:
        """Each seed's trainer state (seed keys from config.seed, as before the one loop)."""
        del rng
        return jax.vmap(self.trainer.init)(self.seed_keys(0))

    def train_step(self, state: Any, batch: None, rng: jax.Array) -> tuple[Any, dict]:
        """One chunk for every seed; `updates` counts this chunk's optimisation steps."""
        del batch, rng  # each seed's state carries its own key
        before = _updates_done(state)
        state, chunk_metrics = jax.vmap(self.trainer.train_chunk)(state)
        chunk_metrics["updates"] = (_updates_done(state) - before).astype(jnp.float32)
        return state, chunk_metrics

    def describe(self) -> list[str]:
        """The agent and environment."""
        config = self.config
        return [
            f"{config.agent.name} noisy={bool(config.agent.noisy)} on {config.env.name}, "
            f"{self.num_seeds} seeds on {self.mesh.devices.size} devices"
        ]

    def after_train(self, workdir: str) -> dict[str, str]:
        """The learning curve."""
        return {"learning curve": self._curve(workdir, os.path.join(workdir, "samples"), None)}

    def eval_tag(self) -> str:
        """Fresh episodes of the training environment."""
        return "episodes"

    def evaluate(self, state: Any, *, step: int, quick: bool, progress: Any) -> dict:
        """Mean episode return over eval.num_episodes per seed, with its standard error."""
        config = self.config
        num_episodes = 2 if quick else int(config.eval.num_episodes)
        tracker = progress("eval", self.num_seeds * num_episodes, unit="episodes")
        returns_SxN = np.asarray(
            jax.jit(jax.vmap(lambda s, k: self.trainer.evaluate(s, k, num_episodes)))(
                state, self.seed_keys(1)
            ),
            np.float64,
        )
        tracker.advance(returns_SxN.size)
        per_seed = returns_SxN.mean(axis=1)
        over_seeds = self.num_seeds > 1
        random_policy = self._random_policy_returns(num_episodes)
        return {
            "mean_return": float(returns_SxN.mean()),
            "mean_return_stderr": _stderr(per_seed) if over_seeds else _stderr(returns_SxN[0]),
            "stderr_over": "seeds" if over_seeds else "episodes",
            "per_seed_mean_return": per_seed.tolist(),
            "num_episodes": int(returns_SxN.size),
            "num_examples": int(returns_SxN.size),
            "episodes_per_seed": num_episodes,
            "num_seeds": self.num_seeds,
            "split": "fresh episodes",
            "data_source": f"gymnax {config.env.name}",
            "unit": "episode return",
            "env": config.env.name,
            "agent": config.agent.name,
            "noisy": bool(config.agent.noisy),
            "exploration": "noise on"
            if config.agent.noisy
            else f"epsilon {config.agent.epsilon_eval}",
            "eval_noise": eval_noise(config) if config.agent.noisy else "none (no noisy layers)",
            "env_steps_trained": step,
            "baseline": {"name": "uniformly random actions", "mean_return": random_policy},
        }

    def _random_policy_returns(self, num_episodes: int) -> float:
        """Mean return of uniformly random actions over num_episodes fresh episodes."""
        from deepgen.noisynet.trainer import evaluate_policy

        num_actions = self.env.action_space(self.env_params).n

        def policy(obs_NxO, key):
            return jax.random.randint(key, obs_NxO.shape[:1], 0, num_actions)

        rng = jax.random.fold_in(jax.random.key(int(self.config.seed)), 7)
        returns = jax.jit(
            lambda k: evaluate_policy(self.env, self.env_params, policy, k, num_episodes)
        )(rng)
        return float(np.mean(np.asarray(returns, np.float64)))

    def format_eval(self, summary: Mapping[str, Any]) -> str:
        """One line: the mean return, its standard error and what it is over."""
        stderr = summary["mean_return_stderr"]
        shown = "n/a" if stderr is None else f"{stderr:.2f}"
        return (
            f"{summary['agent']} noisy={summary['noisy']} on {summary['env']} after "
            f"{summary['env_steps_trained']} env steps: mean return {summary['mean_return']:.2f}"
            f" +- {shown} ({summary['stderr_over']}), {summary['num_episodes']} episodes over "
            f"{summary['num_seeds']} seeds; random actions: "
            f"{summary['baseline']['mean_return']:.2f}"
        )

    def _curve(self, workdir: str, out_dir: str, step: int | None) -> str:
        path = os.path.join(workdir, metrics.METRICS_FILE)
        if not os.path.exists(path):
            raise DataError(f"no {path}: run --mode=train with this --workdir first")
        steps, returns = learning_curve(metrics.read_metrics(workdir))
        if not len(steps):
            raise DataError(f"{path} has no training returns yet: train for at least one chunk")
        if step is not None:
            keep = steps <= step
            steps, returns = steps[keep], returns[:, keep]
        config = self.config
        label = f"{'NoisyNet-' if config.agent.noisy else ''}{config.agent.name}"
        name = "learning_curve.png" if step is None else f"learning_curve_step{step}.png"
        return save_learning_curves(
            {label: (steps, returns)},
            os.path.join(out_dir, name),
            title=f"{label} on {config.env.name}",
        )

    def sample(self, state: Any, out_dir: str, *, step: int, progress: Any) -> dict[str, str]:
        """The learning curve up to the checkpoint's step (return against env steps per seed)."""
        workdir = os.path.dirname(out_dir)
        return {"learning curve": self._curve(workdir, out_dir, step)}


METHOD = NoisyNet
