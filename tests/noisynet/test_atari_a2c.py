"""A2C / NoisyNet-A2C on real Atari frames (ale-py): the host loop end to end, noise per rollout.

The runs go through `experiments.main` in this process (NoisyNet.for_config picks the host loop,
experiments/noisynet/atari_a2c.py); three short runs (straight, rerun from the first chunk,
stopped by SIGTERM) are trained once for the module and shared by the tests.
"""

import json
import shutil
import signal
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_jsonl

from configs.noisynet import get_config
from deepgen.noisynet import a2c, atari_scores
from deepgen.noisynet.a2c import Transitions
from experiments import main as entry

ale_py = pytest.importorskip("ale_py", reason="ale-py (Atari emulator) is not installed")

from atari_test_support import ALE_ERROR, needs_ale, signal_on_call  # noqa: E402

from deepgen.noisynet import atari  # noqa: E402
from experiments.noisynet import atari_a2c  # noqa: E402
from experiments.noisynet.atari import AtariA2C  # noqa: E402

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


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Two chunks straight through (recording the noise keys of acting and learning); a rerun
    from the first chunk's checkpoint; a run stopped by SIGTERM inside the second chunk, then
    restarted."""
    if ALE_ERROR:
        pytest.skip(reason=f"ale-py cannot run Atari here: {ALE_ERROR}")
    root = tmp_path_factory.mktemp("atari_a2c")
    straight, resumed, stopped = root / "straight", root / "resumed", root / "stopped"
    out = SimpleNamespace(straight=straight, resumed=resumed, stopped=stopped, status={})
    compiled = atari_a2c._compiled_agent
    out.acted, out.learned = [], []

    def recording(config, num_actions):
        agent, init, act, learn = compiled(config, num_actions)

        def act_recorded(params, obs, noise, rng):
            out.acted.append(np.asarray(noise))
            return act(params, obs, noise, rng)

        def learn_recorded(learner, batch, noise):
            out.learned.append(np.asarray(noise))
            return learn(learner, batch, noise)

        return agent, init, act_recorded, learn_recorded

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(atari_a2c, "_compiled_agent", recording)
        out.status["straight"] = _main(straight)
    out.straight_checkpoints = _steps(straight / "checkpoints")
    out.straight_host_files = sorted(p.name for p in (straight / "envs").iterdir())

    out.status["resumed_first"] = _main(resumed)
    shutil.rmtree(resumed / "checkpoints" / "80")  # the rerun resumes from env step 40
    out.status["resumed"] = _main(resumed)

    # inside the 6th rollout (2 envs x 5 steps each)
    step_then_sigterm = signal_on_call(atari.AtariEnv.step, 2 * 5 * 5 + 3, signal.SIGTERM)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(atari.AtariEnv, "step", step_then_sigterm)
        out.status["stopped_first"] = _main(stopped)
    out.stopped_checkpoints = _steps(stopped / "checkpoints")
    out.stopped_host_files = sorted(p.name for p in (stopped / "envs").iterdir())
    out.status["stopped"] = _main(stopped)
    return out


@needs_ale
def test_resume_and_sigterm_give_the_numbers_of_an_uninterrupted_run(trained):
    status = trained.status
    assert status["straight"] == status["resumed_first"] == status["resumed"] == 0
    assert status["stopped_first"] == 128 + signal.SIGTERM and status["stopped"] == 0
    assert trained.straight_checkpoints == ["40", "80"]
    assert trained.straight_host_files == ["host_40.npz", "host_80.npz"]
    assert trained.stopped_checkpoints == ["40", "60"]  # saved after the 6th update
    assert trained.stopped_host_files == ["host_40.npz", "host_60.npz"]

    a, b, c = (_train_records(w) for w in (trained.straight, trained.resumed, trained.stopped))
    assert [r["step"] for r in a] == [r["step"] for r in c] == [40, 80]
    assert [r["step"] for r in b] == [40, 80, 80]
    for key in COMPARED:
        assert a[-1][key] == b[-1][key] == b[1][key] == c[-1][key], key
        assert a[0][key] == b[0][key] == c[0][key], key
    last = a[-1]
    assert last["updates"] == 8 and last["frames"] == 320 and last["learning_rate"] == 0.0
    assert last["episodes_total"] == 2  # 120-frame episodes: each env's first one is cut
    assert all(np.isfinite(r[k]) for r in a for k in ("loss", "entropy", "grad_norm"))
    assert (trained.straight / "config.json").exists()
    assert (trained.straight / "tensorboard").is_dir()


@needs_ale
def test_eval_through_the_command_line(trained, capsys):
    """Evaluated with other train.* values than trained with: the checkpoint's 80 env steps are
    reported; the printed standard error is eval.json's."""
    overrides = ["--config.train.steps_per_chunk=20", "--config.train.num_steps=200"]
    overrides += ["--config.train.log_every=20", "--config.ckpt.every=20"]
    assert _main(trained.straight, *overrides, mode="eval") == 0
    line = capsys.readouterr().out.splitlines()[0]
    report = json.loads((trained.straight / "eval.json").read_text())
    assert report["agent"] == "a2c" and report["noisy"] is True and report["game"] == "pong"
    assert report["num_episodes"] == 2 and len(report["returns"]) == 2
    assert report["env_steps_trained"] == 80 and report["updates_trained"] == 8
    assert "after 80 env steps (320 frames)" in line
    assert report["mean_return"] == pytest.approx(np.mean(report["returns"]))
    stderr = np.std(report["returns"], ddof=1) / np.sqrt(2)
    assert report["mean_return_stderr"] == pytest.approx(stderr)
    assert f"(stderr {report['mean_return_stderr']:.2f})" in line and "nan" not in line
    assert report["human_normalized_score"] == pytest.approx(
        atari_scores.human_normalized_score("pong", report["mean_return"])
    )
    assert report["protocol_matches_reference"] is False  # 120-frame episodes
    assert "noise" in report["eval_policy"]
    assert report["baseline"]["num_episodes"] == 2
    assert report["eval_noise"] == "sample"
    assert _main(trained.straight, *overrides, "--config.eval.noise=mean", mode="eval") == 0
    report = json.loads((trained.straight / "eval.json").read_text())
    assert report["eval_noise"] == "mean" and "mean weights" in report["eval_policy"]


@needs_ale
def test_sample_draws_the_learning_curve_the_readme_promises(trained, capsys):
    assert _main(trained.straight, mode="sample") == 0
    curve = trained.straight / "samples" / "learning_curve_step80.png"
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"learning curve: {curve}" in capsys.readouterr().out


@needs_ale
def test_a_non_finite_loss_stops_with_status_1_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch, capsys
):
    compiled = atari_a2c._compiled_agent

    def nan_after_4_updates(config, num_actions):
        agent, init, act, learn = compiled(config, num_actions)

        def learn_nan(learner, batch, noise_key):
            learner, metrics = learn(learner, batch, noise_key)
            if int(learner.updates) > 4:
                metrics = {**metrics, "loss": jnp.float32(jnp.nan)}
            return learner, metrics

        return agent, init, act, learn_nan

    monkeypatch.setattr(atari_a2c, "_compiled_agent", nan_after_4_updates)
    workdir = tmp_path / "run"
    assert _main(workdir) == 1
    out = capsys.readouterr().out
    assert "error: loss is nan at env step 80" in out and "checkpoint (env step 40)" in out
    assert _steps(workdir / "checkpoints") == ["40"]
    assert [r["step"] for r in _train_records(workdir)] == [40]


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
def test_noise_is_held_for_a_rollout_shared_with_the_learner_and_resampled(trained):
    config = get_config("atari_a2c_smoke")  # 8 rollouts of 2 envs x 5 steps
    learned, acted = trained.learned, trained.acted
    assert len(learned) == 8 and len(acted) == 8 * 5
    assert not config.agent.act_noise_per_env and learned[0].ndim == 1  # one shared sample
    for update, noise in enumerate(learned):
        for acting_noise in acted[5 * update : 5 * (update + 1)]:
            np.testing.assert_array_equal(acting_noise, noise)  # one sample for the whole rollout
    assert len({n.tobytes() for n in learned}) == 8  # a new sample for every rollout

    # Different samples give different logits; acting (vmapped over envs) and the learner (one
    # batch) see the same sample.
    agent, init, act, learn = atari_a2c._compiled_agent(config, 6)  # compiled by the runs

    @jax.jit
    def logits(params, obs_ExHxWxS, noise_a, noise_b):
        """Sample a's logits for the batch and env by env (vmapped), and sample b's."""
        per_env = jax.vmap(lambda o: agent.policy(params, o[None], noise_a)[0][0])(obs_ExHxWxS)
        batch_a, batch_b = (agent.policy(params, obs_ExHxWxS, n)[0] for n in (noise_a, noise_b))
        return batch_a, per_env, batch_b

    envs = atari.AtariVecEnv("pong", num_envs=2, seed=1, noop_max=0)
    obs_ExHxWxS = envs.reset()
    for _ in range(6):
        obs_ExHxWxS = atari.step_envs(envs, np.array([2, 3])).obs_ExHxWxS
    learner = init(jax.random.key(0), obs_ExHxWxS[:1])
    noise_a, noise_b = (jnp.asarray(n) for n in learned[:2])
    logits_a, per_env, logits_b = map(
        np.asarray, logits(learner.params, obs_ExHxWxS, noise_a, noise_b)
    )
    np.testing.assert_allclose(per_env, logits_a, rtol=1e-5, atol=1e-6)
    assert np.abs(logits_b - logits_a).max() > 1e-4
    rng = jax.random.key(5)
    np.testing.assert_array_equal(
        act(learner.params, obs_ExHxWxS, noise_a, rng),
        act(learner.params, obs_ExHxWxS, noise_a, rng),
    )

    # NoisyNet-A2C has no entropy bonus; the baseline keeps the config's coefficient.
    assert config.agent.noisy and config.agent.entropy_coef == 0.01
    assert agent.entropy_coef == 0.0
    config.agent.noisy = False
    baseline = a2c.make_atari_a2c(config, 6)
    assert baseline.entropy_coef == 0.01
    batch = _rollout_batch(np.stack([obs_ExHxWxS] * 5), seed=0)
    value_coef = config.agent.value_coef
    _, m = learn(learner, batch, noise_a)  # donates learner: not used below
    np.testing.assert_allclose(m["loss"], m["policy_loss"] + value_coef * m["value_loss"], 1e-5)

    @jax.jit
    def baseline_learn_and_logits(obs_ExHxWxS, batch):
        """One compilation: the baseline's init, one learn step, its logits under two keys."""
        base_learner = baseline.init(jax.random.key(0), obs_ExHxWxS[:1])
        assert baseline.draw_noise(jax.random.key(1), base_learner.params, 2) is None
        _, m = baseline.learn(base_learner, batch, None)
        keys = (jax.random.key(1), jax.random.key(2))
        apply = baseline.network.apply
        return m, [apply(base_learner.params, obs_ExHxWxS, rngs={"noise": k})[0] for k in keys]

    m, baseline_logits = baseline_learn_and_logits(obs_ExHxWxS, batch)
    expected = m["policy_loss"] + value_coef * m["value_loss"] - 0.01 * m["entropy"]
    np.testing.assert_allclose(m["loss"], expected, rtol=1e-5)
    np.testing.assert_array_equal(*baseline_logits)  # no noise in the baseline


def test_per_env_noise_gives_each_env_its_own_sample_drawn_once_per_rollout():
    """agent.act_noise_per_env on Atari (A2C's default): draw_noise gives one sample per env;
    acting and the learner's rows give env e the e-th (small 36 x 36 frames: the Nature torso
    still ends at 1 x 1)."""
    config = get_config("atari_a2c")
    assert config.agent.act_noise_per_env
    config.network.head_hidden = 32
    num_envs, rollout_len = 2, config.agent.rollout_len
    agent = a2c.make_atari_a2c(config, 6)
    config.agent.act_noise_per_env = False
    shared = a2c.make_atari_a2c(config, 6)
    rng = np.random.default_rng(0)
    obs_NxHxWxS = rng.integers(0, 256, (rollout_len * num_envs, 36, 36, 4), dtype=np.uint8)
    obs_NxHxWxS[1] = obs_NxHxWxS[0]  # both envs see the same frames at t = 0

    @jax.jit
    def outputs(obs_NxHxWxS, noise_key, act_rng):
        params = agent.init(jax.random.key(0), obs_NxHxWxS[:1]).params
        noise_ExZ = agent.draw_noise(noise_key, params, num_envs)
        rows = agent.policy(params, obs_NxHxWxS, noise_ExZ)
        by_env = [shared.policy(params, obs_NxHxWxS[e::num_envs], noise_ExZ[e]) for e in (0, 1)]
        actions = agent.act(params, obs_NxHxWxS[:num_envs], noise_ExZ, act_rng)
        act_keys = jax.random.split(act_rng, num_envs)
        expected = [
            jax.random.categorical(
                act_keys[e], shared.policy(params, obs_NxHxWxS[e : e + 1], noise_ExZ[e])[0][0]
            )
            for e in (0, 1)
        ]
        return noise_ExZ.shape, rows, by_env, actions, jnp.stack(expected)

    shape, rows, by_env, actions, expected = outputs(
        obs_NxHxWxS, jax.random.key(3), jax.random.key(4)
    )
    # independent noise of the heads: (64 + 1) x 32 hidden, (32 + 1) x 6 policy, (32 + 1) x 1 value
    assert tuple(shape) == (num_envs, 65 * 32 + 33 * 6 + 33)
    for e in range(num_envs):
        for got, want in zip(rows, by_env[e], strict=True):
            np.testing.assert_allclose(np.asarray(got)[e::num_envs], want, rtol=1e-5, atol=1e-6)
    logits = np.asarray(rows[0])
    assert np.abs(logits[0] - logits[1]).max() > 1e-4  # the same frames, each env's own sample
    np.testing.assert_array_equal(np.asarray(actions), np.asarray(expected))


@needs_ale
def test_step_envs_keeps_the_last_observation_of_a_cut_episode():
    envs = atari.AtariVecEnv("pong", num_envs=2, seed=0, noop_max=0, max_episode_frames=20)
    envs.reset()
    for t in range(5):  # 5 agent steps of 4 frames: the episode is cut at frame 20
        step = atari.step_envs(envs, np.zeros(2, np.int64))
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
    assert entry.load_method("noisynet").for_config(get_config("atari_a2c_smoke")) is AtariA2C
    workdir = tmp_path / "run"
    assert _main(workdir, "--config.train.steps_per_chunk=33") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "train.steps_per_chunk=33" in line and "num_envs * agent.rollout_len = 10" in line
    assert not workdir.exists()
