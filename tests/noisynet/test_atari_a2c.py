"""A2C / NoisyNet-A2C on real Atari frames (ale-py): the host loop end to end, noise per rollout."""

import json
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_jsonl, run_cli

from configs.noisynet import get_config
from deepgen.noisynet import atari_scores
from deepgen.noisynet.a2c import Transitions
from experiments import main as entry

ale_py = pytest.importorskip("ale_py", reason="ale-py (Atari emulator) is not installed")

from deepgen.noisynet import atari, atari_a2c_loop  # noqa: E402

ALE_ERROR = ""
try:  # ROMs ship inside the wheel; a broken install should skip, not fail, these tests
    atari.AtariEnv("pong", seed=0)
except Exception as error:
    ALE_ERROR = f"ale-py cannot load the Pong ROM: {error}"
needs_ale = pytest.mark.skipif(bool(ALE_ERROR), reason=ALE_ERROR or "ale-py loads")

VARIANT = "configs/noisynet.py:atari_a2c_smoke"
COMPARED = (
    "loss",
    "policy_loss",
    "value_loss",
    "entropy",
    "value_mean",
    "grad_norm",
    "episodes",
    "mean_episode_return",
    "updates",
    "learning_rate",
)


def _main(workdir, *extra: str, mode: str = "train") -> int:
    return entry.run(
        ["main", f"--config={VARIANT}", f"--workdir={workdir}", f"--mode={mode}", *extra]
    )


def _train_records(workdir) -> list[dict]:
    return [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]


def _steps(directory) -> list[str]:
    return sorted((p.name for p in directory.iterdir() if p.name.isdigit()), key=int)


@needs_ale
def test_train_resume_sigterm_and_eval_end_to_end(tmp_path, monkeypatch):
    """Two chunks straight through equal a rerun from the first chunk's checkpoint and a run
    stopped by SIGTERM inside the second chunk then restarted; eval through the command line."""
    straight, resumed, stopped = tmp_path / "straight", tmp_path / "resumed", tmp_path / "stopped"
    assert _main(straight) == 0
    assert _steps(straight / "checkpoints") == ["40", "80"]
    assert sorted(p.name for p in (straight / "envs").iterdir()) == ["host_40.npz", "host_80.npz"]

    assert _main(resumed) == 0
    shutil.rmtree(resumed / "checkpoints" / "80")  # the rerun resumes from env step 40
    assert _main(resumed) == 0

    step_fn = atari.AtariEnv.step
    calls = []

    def step_then_sigterm(self, action):
        calls.append(1)
        if len(calls) == 2 * 5 * 5 + 3:  # inside the 6th rollout (2 envs x 5 steps each)
            signal.raise_signal(signal.SIGTERM)
        return step_fn(self, action)

    with monkeypatch.context() as patch:
        patch.setattr(atari.AtariEnv, "step", step_then_sigterm)
        assert _main(stopped) == 128 + signal.SIGTERM
    assert _steps(stopped / "checkpoints") == ["40", "60"]  # saved after the 6th update
    assert (stopped / "envs" / "host_60.npz").exists()
    assert _main(stopped) == 0

    a, b, c = _train_records(straight), _train_records(resumed), _train_records(stopped)
    assert [r["step"] for r in a] == [r["step"] for r in c] == [40, 80]
    assert [r["step"] for r in b] == [40, 80, 80]
    for key in COMPARED:
        assert a[-1][key] == b[-1][key] == b[1][key] == c[-1][key], key
        assert a[0][key] == b[0][key] == c[0][key], key
    last = a[-1]
    assert last["updates"] == 8 and last["frames"] == 320 and last["learning_rate"] == 0.0
    assert last["episodes_total"] == 2  # 120-frame episodes: each env's first one is cut
    assert all(np.isfinite(r[k]) for r in a for k in ("loss", "entropy", "grad_norm"))
    assert (straight / "config.json").exists() and (straight / "tensorboard").is_dir()

    result = run_cli([f"--config={VARIANT}", f"--workdir={straight}", "--mode=eval"], timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads((straight / "eval.json").read_text())
    assert report["agent"] == "a2c" and report["noisy"] is True and report["game"] == "pong"
    assert report["num_episodes"] == 2 and len(report["returns"]) == 2
    assert report["env_steps_trained"] == 80 and report["updates_trained"] == 8
    assert report["mean_return"] == pytest.approx(np.mean(report["returns"]))
    stderr = np.std(report["returns"], ddof=1) / np.sqrt(2)
    assert report["mean_return_stderr"] == pytest.approx(stderr)
    assert report["human_normalized_score"] == pytest.approx(
        atari_scores.human_normalized_score("pong", report["mean_return"])
    )
    assert report["protocol_matches_reference"] is False  # 120-frame episodes
    assert "noise" in report["eval_policy"]


def _rollout_batch(obs_TxExHxWxS: np.ndarray, seed: int) -> Transitions:
    rng = np.random.default_rng(seed)
    shape = obs_TxExHxWxS.shape[:2]
    return Transitions(
        obs_TxExO=obs_TxExHxWxS,
        action_TxE=rng.integers(0, 6, shape).astype(np.int32),
        reward_TxE=np.sign(rng.normal(size=shape)).astype(np.float32),
        terminated_TxE=rng.random(shape) < 0.2,
        truncated_TxE=np.zeros(shape, bool),
        next_obs_TxExO=obs_TxExHxWxS[::-1].copy(),
        finished_return_TxE=np.zeros(shape, np.float32),
    )


@needs_ale
def test_noise_is_held_for_a_rollout_shared_with_the_learner_and_resampled(tmp_path, monkeypatch):
    config = get_config("atari_a2c_smoke")  # 8 rollouts of 2 envs x 5 steps
    compiled = atari_a2c_loop._compiled_agent
    acted, learned = [], []

    def recording(config, num_actions):
        agent, init, act, learn = compiled(config, num_actions)

        def act_recorded(params, obs, noise_key, rng):
            acted.append(np.asarray(jax.random.key_data(noise_key)))
            return act(params, obs, noise_key, rng)

        def learn_recorded(learner, batch, noise_key):
            learned.append(np.asarray(jax.random.key_data(noise_key)))
            return learn(learner, batch, noise_key)

        return agent, init, act_recorded, learn_recorded

    monkeypatch.setattr(atari_a2c_loop, "_compiled_agent", recording)
    assert atari_a2c_loop.run(config, str(tmp_path / "run"), mode="train") == 0
    assert len(learned) == 8 and len(acted) == 8 * 5
    for update, key in enumerate(learned):
        for acting_key in acted[5 * update : 5 * (update + 1)]:
            np.testing.assert_array_equal(acting_key, key)  # one sample for the whole rollout
    assert len({k.tobytes() for k in learned}) == 8  # a new sample for every rollout

    # The keys give different noise; acting (vmapped over envs) and the learner (one batch) see
    # the same sample.
    agent = atari_a2c_loop.make_atari_a2c(config, 6)
    policy, learn = jax.jit(agent.policy), jax.jit(agent.learn)
    envs = atari.AtariVecEnv("pong", num_envs=2, seed=1, noop_max=0)
    obs_ExHxWxS = envs.reset()
    for _ in range(6):
        obs_ExHxWxS = atari_a2c_loop.step_envs(envs, np.array([2, 3])).obs_ExHxWxS
    learner = jax.jit(agent.init)(jax.random.key(0), obs_ExHxWxS[:1])
    key_a, key_b = (jax.random.wrap_key_data(jnp.asarray(k)) for k in learned[:2])
    logits_a = np.asarray(policy(learner.params, obs_ExHxWxS, key_a)[0])
    per_env = jax.vmap(lambda o: policy(learner.params, o[None], key_a)[0][0])(obs_ExHxWxS)
    np.testing.assert_allclose(np.asarray(per_env), logits_a, rtol=1e-5, atol=1e-6)
    logits_b = np.asarray(policy(learner.params, obs_ExHxWxS, key_b)[0])
    assert np.abs(logits_b - logits_a).max() > 1e-4
    rng = jax.random.key(5)
    act = jax.jit(agent.act)
    np.testing.assert_array_equal(
        act(learner.params, obs_ExHxWxS, key_a, rng), act(learner.params, obs_ExHxWxS, key_a, rng)
    )

    # NoisyNet-A2C has no entropy bonus; the baseline keeps the config's coefficient.
    assert config.agent.noisy and config.agent.entropy_coef == 0.01
    assert agent.entropy_coef == 0.0
    config.agent.noisy = False
    baseline = atari_a2c_loop.make_atari_a2c(config, 6)
    assert baseline.entropy_coef == 0.01
    batch = _rollout_batch(np.stack([obs_ExHxWxS] * 5), seed=0)
    value_coef = config.agent.value_coef
    _, m = learn(learner, batch, key_a)
    np.testing.assert_allclose(m["loss"], m["policy_loss"] + value_coef * m["value_loss"], 1e-5)
    base_learner = jax.jit(baseline.init)(jax.random.key(0), obs_ExHxWxS[:1])
    _, m = jax.jit(baseline.learn)(base_learner, batch, key_a)
    expected = m["policy_loss"] + value_coef * m["value_loss"] - 0.01 * m["entropy"]
    np.testing.assert_allclose(m["loss"], expected, rtol=1e-5)
    baseline_logits = [
        jax.jit(baseline.policy)(base_learner.params, obs_ExHxWxS, k)[0] for k in (key_a, key_b)
    ]
    np.testing.assert_array_equal(*baseline_logits)  # no noise in the baseline


@needs_ale
def test_step_envs_keeps_the_last_observation_of_a_cut_episode():
    envs = atari.AtariVecEnv("pong", num_envs=2, seed=0, noop_max=0, max_episode_frames=20)
    envs.reset()
    for t in range(5):  # 5 agent steps of 4 frames: the episode is cut at frame 20
        step = atari_a2c_loop.step_envs(envs, np.zeros(2, np.int64))
        assert step.ended_E.tolist() == [t == 4] * 2
    assert step.truncated_E.all() and not step.terminal_E.any()
    # The new episode's first stack is zeros then one frame; the cut episode's last one is full.
    assert not step.obs_ExHxWxS[..., :3].any() and step.next_obs_ExHxWxS[..., :3].any()
    np.testing.assert_array_equal(step.episode_return_E, [env.episode_return for env in envs.envs])


def test_atari_configs_use_the_base_agents_optimisers():
    a2c = get_config("atari_a2c")
    assert (a2c.env.num_envs, a2c.agent.rollout_len, a2c.agent.noisy) == (16, 5, True)
    assert (a2c.opt.name, a2c.opt.lr, a2c.opt.decay, a2c.opt.schedule) == (
        "rmsprop",
        7e-4,
        0.99,
        "linear_decay",
    )
    assert a2c.opt.eps == pytest.approx(0.1 / 5**2) and not a2c.opt.centered
    dqn, dueling = get_config("atari_dqn"), get_config("atari_dueling")
    for config, lr, clip in ((dqn, 2.5e-4, 0.0), (dueling, 6.25e-5, 10.0)):
        assert (config.opt.name, config.opt.decay, config.opt.centered) == ("rmsprop", 0.95, True)
        assert (config.opt.lr, config.opt.clip_norm) == (lr, clip)
        assert config.opt.eps == pytest.approx(0.01 / 32**2)
    assert get_config("a2c_cartpole").opt.name == "adam"  # small-scale variants unchanged


@needs_ale
def test_a_chunk_that_is_not_whole_rollouts_is_refused_before_writing(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert _main(workdir, "--config.train.steps_per_chunk=33") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "train.steps_per_chunk=33" in line and "num_envs * agent.rollout_len = 10" in line
    assert not workdir.exists()
