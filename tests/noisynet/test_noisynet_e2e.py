"""NoisyNet end to end through experiments.main: train, eval, sample, config errors."""

import json

import numpy as np
import pytest
from conftest import read_jsonl

from configs import noisynet as noisynet_configs
from experiments import main as entry
from experiments.noisynet.method import NoisyNet

EVAL_FIELDS = {
    "mean_return",
    "mean_return_stderr",
    "num_episodes",
    "num_seeds",
    "env",
    "agent",
    "noisy",
    "env_steps_trained",
    "time",
}


def train_records(workdir) -> list[dict]:
    return [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]


def run_modes(variant: str, workdir, *extra: str, modes=("train", "eval", "sample")) -> None:
    for mode in modes:
        args = ["main", f"--config=configs/noisynet.py:{variant}", f"--workdir={workdir}"]
        assert entry.run([*args, f"--mode={mode}", *extra]) == 0, mode


def check_outputs(workdir, *, agent: str, noisy: bool, env_steps: int, seeds: int = 2) -> None:
    summary = json.loads((workdir / "eval.json").read_text())
    assert set(summary) >= EVAL_FIELDS
    assert summary["agent"] == agent and summary["noisy"] is noisy
    assert summary["env_steps_trained"] == env_steps and summary["num_seeds"] == seeds
    assert summary["num_episodes"] == 2 * seeds and summary["env"] == "CartPole-v1"
    assert 1 <= summary["mean_return"] <= 500 and summary["mean_return_stderr"] >= 0
    assert (workdir / "samples" / "learning_curve.png").stat().st_size > 1000
    assert (workdir / "samples" / f"learning_curve_step{env_steps}.png").stat().st_size > 1000
    records = train_records(workdir)
    assert [r["step"] for r in records] == [256, 512, 768, 1024]
    assert all(f"mean_episode_return_seed{s}" in records[-1] for s in range(seeds))
    assert json.loads((workdir / "config.json").read_text())["agent"]["noisy"] is noisy


def test_noisy_dqn_trains_evaluates_and_plots(tmp_path):
    """A resumed run repeating the numbers of an uninterrupted one is the contract's test
    (tests/experiments/test_contract.py, noisynet:smoke_dqn: every logged number and the state)."""
    workdir = tmp_path / "dqn"
    run_modes("smoke_dqn", workdir)
    check_outputs(workdir, agent="dqn", noisy=True, env_steps=1024)
    records = train_records(workdir)
    # Rewards are 1 per step, so |Q| stays below 1 / (1 - gamma) = 100 on a healthy run.
    assert all(np.isfinite(r["q_max"]) and r["q_max"] < 100 for r in records[1:])
    assert records[-1]["learn_steps"] > 200
    checkpoints = sorted(
        int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()
    )
    assert checkpoints == [512, 1024]  # numbered by env steps, like the metrics


@pytest.mark.parametrize(
    ("variant", "agent", "noisy", "extra"),
    [
        ("smoke_dueling", "dueling", False, ("--config.agent.noisy=False",)),
        ("smoke_a2c", "a2c", True, ()),
    ],
)
def test_other_agent_families_run_through_every_mode(tmp_path, variant, agent, noisy, extra):
    workdir = tmp_path / variant
    run_modes(variant, workdir, *extra)
    check_outputs(workdir, agent=agent, noisy=noisy, env_steps=1024)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("--config.agent.noise_type=gaussian", "agent.noise_type"),
        ("--config.env.name=Pong-misc", "env.name"),
        ("--config.agent.name=ppo", "agent.name"),
        ("--config.train.steps_per_chunk=255", "train.steps_per_chunk"),
    ],
)
def test_bad_values_end_with_one_line_naming_the_field(tmp_path, capsys, override, field):
    workdir = tmp_path / "bad"
    args = ["main", "--config=configs/noisynet.py:smoke_dqn", f"--workdir={workdir}", override]
    assert entry.run(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"config.{field}" in error
    assert not workdir.exists()


def test_every_variant_builds_and_validates():
    """Each named config passes validation; the fast CartPole variant is 16 env steps per update."""
    for name in noisynet_configs.VARIANTS:
        NoisyNet.validate(noisynet_configs.get_config(name))
    fast = noisynet_configs.get_config("dqn_cartpole_fast")
    assert fast.agent.env_steps_per_update == fast.env.num_envs == 16
    assert fast.agent.batch_size == 128 and fast.agent.noisy
    assert not noisynet_configs.get_config("dqn_cartpole_fast_baseline").agent.noisy


@pytest.mark.parametrize("variant", ["smoke_dqn", "smoke_a2c"])
def test_eval_noise_mean_is_the_network_of_its_mean_weights(variant):
    """eval.noise=mean returns exactly what fresh-noise evaluation returns once every sigma is 0."""
    import jax

    from deepgen.noisynet.trainer import make_trainer

    config = noisynet_configs.get_config(variant)
    config.agent.noisy = True
    NoisyNet.validate(config)
    method = NoisyNet(config, mode="eval")
    state = jax.jit(method.trainer.init)(jax.random.key(0))

    def zero_sigmas(tree):
        return jax.tree_util.tree_map_with_path(
            lambda path, x: x * 0 if "sigma" in jax.tree_util.keystr(path) else x, tree
        )

    if variant == "smoke_dqn":
        no_sigma = state._replace(learner=zero_sigmas(state.learner))
    else:
        no_sigma = state._replace(params=zero_sigmas(state.params))
    mean_config = noisynet_configs.get_config(variant)
    mean_config.agent.noisy = True
    mean_config.eval.noise = "mean"
    mean_trainer = make_trainer(mean_config, method.env, method.env_params)
    key = jax.random.key(3)
    by_mean = jax.jit(lambda s: mean_trainer.evaluate(s, key, 3))(state)
    by_zero_sigma = jax.jit(lambda s: method.trainer.evaluate(s, key, 3))(no_sigma)
    by_noise = jax.jit(lambda s: method.trainer.evaluate(s, key, 3))(state)
    np.testing.assert_array_equal(np.asarray(by_mean), np.asarray(by_zero_sigma))
    assert by_noise.shape == by_mean.shape
