"""Atari (ale-py) preprocessing, frame-once replay, reference scores and the DQN host loop.

Frames come from the real emulator (Pong, Breakout ROMs shipped in the ale-py wheel). The
preprocessing is checked against a second, bare ALEInterface stepped with the same actions. The
host loop (experiments/noisynet/atari_dqn.py) runs through the one runner: three short runs
(straight, resumed, stopped by SIGTERM) are trained once for the module and shared by the tests.
"""

import json
import math
import signal
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import read_jsonl

from configs.noisynet import get_config
from deepgen.core import metrics
from deepgen.core.errors import ConfigError
from deepgen.noisynet import atari_scores
from experiments import main as entry
from experiments import runner

ale_py = pytest.importorskip("ale_py", reason="ale-py (Atari emulator) is not installed")

from atari_test_support import ALE_ERROR, needs_ale, signal_on_call  # noqa: E402

from deepgen.noisynet import atari  # noqa: E402
from experiments.noisynet import atari_dqn  # noqa: E402
from experiments.noisynet.atari import AtariDQN  # noqa: E402


def _bare_ale(game: str) -> "ale_py.ALEInterface":
    ale = ale_py.ALEInterface()
    ale.setInt("random_seed", 123)
    ale.setFloat("repeat_action_probability", 0.0)
    ale.setInt("frame_skip", 1)
    ale.loadROM(ale_py.roms.get_rom_path(game))
    return ale


def test_area_resize_is_the_exact_area_average():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (210, 160)).astype(np.uint8)
    # 210 -> 84 is x2/5 and 160 -> 84 is x21/40: replicate pixels, then average whole blocks.
    fine = np.repeat(np.repeat(frame.astype(np.float64), 2, axis=0), 21, axis=1)
    exact = fine.reshape(84, 5, 84, 40).mean(axis=(1, 3))
    np.testing.assert_array_equal(atari.area_resize(frame), np.floor(exact + 0.5))
    square = rng.integers(0, 256, (168, 168)).astype(np.uint8)
    block = square.reshape(84, 2, 84, 2).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_array_equal(atari.area_resize(square), np.floor(block + 0.5))


def test_reward_clipping_is_the_sign():
    np.testing.assert_array_equal(
        atari.clip_reward(np.array([-7.0, -0.5, 0.0, 0.25, 1.0, 400.0])), [-1, -1, 0, 1, 1, 1]
    )


@needs_ale
def test_observation_is_84x84x4_uint8_and_one_step_is_four_frames():
    env = atari.AtariEnv("ALE/Pong-v5", seed=3)
    obs = env.reset()
    assert obs.shape == (84, 84, 4) and obs.dtype == np.uint8
    assert np.all(obs[..., :3] == 0) and obs[..., 3].any()  # zeros before the first frame
    assert 1 <= env.noops_taken <= 30
    assert env.ale.getEpisodeFrameNumber() == env.noops_taken
    for action in (0, 2, 3, 1):
        before = env.ale.getFrameNumber()
        previous = obs
        obs = env.step(action).obs
        assert env.ale.getFrameNumber() - before == 4
        np.testing.assert_array_equal(obs[..., :3], previous[..., 1:])


@needs_ale
@pytest.mark.parametrize("game", ["pong", "breakout"])
def test_max_pool_of_the_last_two_frames_matches_a_second_emulator(game):
    env = atari.AtariEnv(game, seed=11)
    env.reset()
    bare = _bare_ale(game)
    bare.reset_game()
    for _ in range(env.noops_taken):
        bare.act(ale_py.Action.NOOP)
    actions = np.random.default_rng(1).integers(0, env.num_actions, 40)
    pooling_mattered = False
    for action in actions:
        obs = env.step(int(action)).obs
        screens = []
        for _ in range(4):
            bare.act(env.action_set[int(action)])
            screens.append(bare.getScreenGrayscale())
        pooled = np.maximum(screens[-2], screens[-1])
        np.testing.assert_array_equal(obs[..., -1], atari.area_resize(pooled))
        pooling_mattered |= not np.array_equal(pooled, screens[-1])
    assert pooling_mattered  # the check can tell max-pooling from taking the last frame


@needs_ale
def test_no_op_starts_are_random_per_seed_and_at_most_30():
    counts = []
    for seed in range(8):
        env = atari.AtariEnv("pong", seed=seed)
        env.reset()
        counts.append(env.noops_taken)
        env.reset()
        counts.append(env.noops_taken)
    assert all(1 <= c <= 30 for c in counts)
    assert len(set(counts)) > 3
    assert atari.AtariEnv("pong", seed=5).reset().tobytes() == (
        atari.AtariEnv("pong", seed=5).reset().tobytes()
    )
    env = atari.AtariEnv("pong", seed=0, noop_max=0)
    env.reset()
    assert env.noops_taken == 0 and env.ale.getEpisodeFrameNumber() == 0


def _play_breakout(terminal_on_life_loss: bool) -> list[tuple[bool, bool, int, int]]:
    env = atari.AtariEnv("breakout", seed=2, terminal_on_life_loss=terminal_on_life_loss)
    env.reset()
    rng = np.random.default_rng(0)
    steps = []
    while True:
        result = env.step(int(rng.integers(env.num_actions)))
        steps.append(
            (result.terminal, result.game_over, env.ale.lives(), env.ale.getEpisodeFrameNumber())
        )
        if result.game_over:
            return steps


@needs_ale
def test_life_loss_is_terminal_for_training_but_the_episode_goes_on():
    with_loss = _play_breakout(True)
    without = _play_breakout(False)
    assert [s[1:] for s in with_loss] == [s[1:] for s in without]  # same game either way
    lives = [5] + [s[2] for s in with_loss]
    lost = [i for i in range(len(with_loss)) if lives[i + 1] < lives[i]]
    assert len(lost) == 5  # Breakout: 5 lives
    assert [i for i, s in enumerate(with_loss) if s[0]] == lost
    assert [i for i, s in enumerate(without) if s[0]] == [len(without) - 1]
    assert [i for i, s in enumerate(with_loss) if s[1]] == [len(with_loss) - 1]
    frames = [s[3] for s in with_loss]
    steps = np.diff(frames)
    assert np.all(steps[:-1] == 4) and 1 <= steps[-1] <= 4  # no reset at a lost life


@needs_ale
def test_episodes_are_cut_at_max_episode_frames():
    env = atari.AtariEnv("pong", seed=0, max_episode_frames=120)
    env.reset()
    results = [env.step(0) for _ in range((120 - env.noops_taken + 3) // 4)]
    assert [r.truncated for r in results] == [False] * (len(results) - 1) + [True]
    assert not results[-1].terminal and not results[-1].game_over


@needs_ale
def test_saved_state_continues_exactly_in_another_instance():
    env = atari.AtariEnv("breakout", seed=4)
    env.reset()
    for action in (1, 2, 2, 3, 1):
        env.step(action)
    state = env.get_state()
    actions = np.random.default_rng(3).integers(0, 4, 60)
    first = [env.step(int(a)) for a in actions] + [env.reset()]
    other = atari.AtariEnv("breakout", seed=99)
    other.reset()
    other.set_state(state)
    second = [other.step(int(a)) for a in actions] + [other.reset()]
    for a, b in zip(first[:-1], second[:-1], strict=True):
        np.testing.assert_array_equal(a.obs, b.obs)
        assert a[1:] == b[1:]
    np.testing.assert_array_equal(first[-1], second[-1])  # same no-op draw after the restore


@needs_ale
def test_replay_rebuilds_exactly_the_stacks_the_agent_saw():
    """Small ring (wraps), short episodes (truncation and game over): every sample is a real one."""
    num_envs, steps = 2, 700
    envs = atari.AtariVecEnv("breakout", num_envs=num_envs, seed=0, max_episode_frames=400)
    replay = atari.FrameReplay(2 * 300, num_envs=num_envs)
    obs = envs.reset()
    starts = np.ones(num_envs, bool)
    rng = np.random.default_rng(0)
    real = set()
    history = []
    for _ in range(steps):
        actions = rng.integers(0, envs.num_actions, num_envs)
        out = envs.step(actions)
        rewards = atari.clip_reward(out.reward)
        replay.add(obs[..., -1], actions, rewards, out.terminal, starts)
        history.append((obs, actions, rewards, out.terminal, out.episode_over, out.obs))
        starts, obs = out.episode_over, out.obs
    truncated = terminal = 0
    for obs_t, actions, rewards, terminals, overs, next_obs in history:
        for e in range(num_envs):
            if overs[e] and not terminals[e]:
                truncated += 1  # its successor was never stored: must not be sampled
                continue
            terminal += int(terminals[e])
            nxt = b"" if terminals[e] else next_obs[e].tobytes()
            real.add((obs_t[e].tobytes(), int(actions[e]), float(rewards[e]), nxt))
    assert truncated > 0 and terminal > 0
    batch = replay.sample(512, np.random.default_rng(1))
    assert batch.obs.shape == (512, 84, 84, 4) and batch.obs.dtype == np.uint8
    seen_terminal = 0
    for i in range(512):
        done = batch.discount[i] == 0.0
        seen_terminal += int(done)
        nxt = b"" if done else batch.next_obs[i].tobytes()
        key = (batch.obs[i].tobytes(), int(batch.action[i]), float(batch.reward[i]), nxt)
        assert key in real
    assert seen_terminal > 0


def test_replay_memory_is_one_frame_per_transition():
    replay = atari.FrameReplay(1_000_000, num_envs=4)  # np.zeros: pages are not touched
    assert replay.capacity == 1_000_000
    assert replay.frames.nbytes == 1_000_000 * 84 * 84
    assert replay.nbytes < 1.01 * 84 * 84 * 1_000_000 + 10 * 1_000_000


def test_human_normalized_score_formula():
    assert len(atari_scores.ATARI_57) == 57
    for game in ("pong", "ALE/Pong-v5", "Pong"):
        random_score, human_score = atari_scores.reference_scores(game)
        assert atari_scores.human_normalized_score(game, random_score) == 0.0
        assert atari_scores.human_normalized_score(game, human_score) == pytest.approx(100.0)
        middle = (random_score + human_score) / 2
        assert atari_scores.human_normalized_score(game, middle) == pytest.approx(50.0)
    # Negative scores on both ends (Double Dunk): still 0 at random and 100 at human.
    assert atari_scores.human_normalized_score("ALE/DoubleDunk-v5", -16.4) == pytest.approx(100.0)
    assert math.isnan(atari_scores.human_normalized_score("breakout", math.nan))
    with pytest.raises(ConfigError):
        atari_scores.reference_scores("ALE/Tetris-v5")


@needs_ale
def test_every_reference_game_has_a_rom():
    for game in atari_scores.ATARI_57:
        camel = "".join(part.capitalize() for part in game.split("_"))
        assert atari.rom_id(f"ALE/{camel}-v5") == game
    with pytest.raises(ConfigError, match="not an ALE game"):
        atari.rom_id("ALE/NoSuchGame-v5")


def _tiny_config(total_chunks: int):
    """smoke_atari (its network and learner: head_hidden 16, batch 4, target copied every 4
    optimisation steps) in chunks of 48 env steps, learning from step 24."""
    config = get_config("smoke_atari")
    assert (config.network.head_hidden, config.agent.batch_size) == (16, 4)
    assert config.agent.target_update_period == 4
    config.env.name = "ALE/Pong-v5"
    config.env.max_episode_frames = 240
    config.env.terminal_on_life_loss = True
    config.agent.learning_starts = 24
    config.replay.capacity = 200
    config.train.steps_per_chunk = 48
    config.train.num_steps = 48 * total_chunks
    config.train.log_every = 48
    config.eval.num_episodes = 1  # the act batch of training: no second compile
    config.ckpt.every = 48
    return config


def _run(config, workdir, mode: str = "train", **kwargs) -> int:
    """What `python -m experiments.main` does after parsing (validate, then the runner)."""
    AtariDQN.validate(config)
    return runner.run(AtariDQN, config, str(workdir), mode=mode, **kwargs)


def _train_records(workdir) -> list[dict]:
    return [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Two chunks straight through; one chunk then a restart; a run stopped by SIGTERM in the
    middle of the second chunk then restarted."""
    if ALE_ERROR:
        pytest.skip(reason=f"ale-py cannot run Atari here: {ALE_ERROR}")
    root = tmp_path_factory.mktemp("atari_dqn")
    straight, resumed, stopped = root / "straight", root / "resumed", root / "stopped"
    status = {}
    events = []  # the straight run's ("act", noise bytes) and ("learn", None), in order
    compiled = atari_dqn._compiled_agent

    def recording(config, num_actions):
        agent, init, act, learn = compiled(config, num_actions)

        def act_recorded(params, obs, rng, epsilon, noise=None):
            if noise is not None:  # training acts with its held noise; evaluation passes none
                events.append(("act", np.asarray(noise).tobytes()))
            return act(params, obs, rng, epsilon, noise)

        def learn_recorded(learner, batch, rng):
            events.append(("learn", None))
            return learn(learner, batch, rng)

        return agent, init, act_recorded, learn_recorded

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(atari_dqn, "_compiled_agent", recording)
        status["straight"] = _run(_tiny_config(2), straight)
    status["resumed_first"] = _run(_tiny_config(1), resumed)
    status["resumed"] = _run(_tiny_config(2), resumed)

    step_then_sigterm = signal_on_call(atari.AtariVecEnv.step, 70, signal.SIGTERM)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(atari.AtariVecEnv, "step", step_then_sigterm)
        status["stopped_first"] = _run(_tiny_config(2), stopped)
    status["stopped_host_files"] = sorted(p.name for p in (stopped / "replay").iterdir())
    status["stopped"] = _run(_tiny_config(2), stopped)
    return SimpleNamespace(
        straight=straight, resumed=resumed, stopped=stopped, status=status, events=events
    )


@needs_ale
def test_resume_and_sigterm_give_the_numbers_of_an_uninterrupted_run(trained):
    status = trained.status
    assert status["straight"] == status["resumed_first"] == status["resumed"] == 0
    assert status["stopped_first"] == 128 + signal.SIGTERM
    assert "host_70.npz" in status["stopped_host_files"]  # saved where the signal arrived
    assert status["stopped"] == 0
    a, b, c = (_train_records(w) for w in (trained.straight, trained.resumed, trained.stopped))
    assert [r["step"] for r in a] == [r["step"] for r in b] == [r["step"] for r in c] == [48, 96]
    assert a[-1]["learn_steps"] == (96 - 24) // 4
    for key in ("loss", "q_mean", "grad_norm", "learn_steps", "replay_size", "episodes"):
        assert a[-1][key] == b[-1][key] == c[-1][key], key
    replay_files = sorted(p.name for p in (trained.resumed / "replay").iterdir())
    assert replay_files == ["host_48.npz", "host_96.npz"]
    checkpoints = sorted(int(p.name) for p in (trained.stopped / "checkpoints").iterdir())
    assert checkpoints == [70, 96]  # numbered by env steps; ckpt.keep=2
    assert json.loads((trained.straight / "config.json").read_text())["train"]["num_steps"] == 96


@needs_ale
def test_acting_noise_is_held_between_optimisation_steps_as_in_the_gymnax_loop(trained):
    """The paper's meaning (Sec. 3), as trainer.py's: one sample until the next optimisation step;
    before learning starts (24 agent steps here) a new sample every step."""
    acts = [noise for kind, noise in trained.events if kind == "act"]
    assert len(acts) == 96  # one emulator, every agent step acted with a drawn sample
    warm_up, learning = acts[:24], trained.events[25:]
    assert len(set(warm_up)) == 24 and trained.events[24] == ("act", acts[24])
    assert acts[24] not in warm_up  # learning starts: the first held sample
    held, previous, changes, learns = 0, acts[24], 0, 0
    for kind, noise in learning:
        if kind == "learn":
            learns += 1
            continue
        changed = noise != previous
        assert changed == (learns > 0), "noise changes exactly after an optimisation step"
        changes, held = changes + changed, held + (not changed)
        previous, learns = noise, 0
    assert changes >= 15 and held >= 40  # (96 - 24) / 4 learn steps, 3 held steps after each


@needs_ale
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, monkeypatch, capsys):
    step_then_sigint = signal_on_call(atari.AtariVecEnv.step, 10, signal.SIGINT)
    monkeypatch.setattr(atari.AtariVecEnv, "step", step_then_sigint)
    assert _run(_tiny_config(1), tmp_path) == 128 + signal.SIGINT
    assert "interrupted at env_steps 10" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10"]
    assert (tmp_path / "replay" / "host_10.npz").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler given back


@needs_ale
def test_eval_reports_the_env_steps_of_the_checkpoint_not_of_the_config(trained, capsys):
    """Trained with steps_per_chunk=48 and num_steps=96, evaluated with the variant's own
    128 and 256: the report says 96 env steps (384 frames), in eval.json and on stdout."""
    config = _tiny_config(2)
    config.train.steps_per_chunk = config.train.log_every = config.ckpt.every = 128
    config.train.num_steps = 256
    assert _run(config, trained.straight, mode="eval") == 0
    line = capsys.readouterr().out.splitlines()[0]
    report = json.loads((trained.straight / "eval.json").read_text())
    assert report["num_episodes"] == 1 and report["env_steps_trained"] == 96
    assert report["step"] == 96 and report["frames_trained"] == 4 * 96
    assert "after 96 env steps (384 frames)" in line
    assert report["episodes_truncated"] == 1  # 240-frame episodes: Pong is not over by then
    assert report["protocol_matches_reference"] is False
    assert report["mean_return"] == report["returns"][0]
    assert report["human_normalized_score"] == pytest.approx(
        atari_scores.human_normalized_score("pong", report["mean_return"])
    )
    assert report["learn_steps_trained"] == (96 - 24) // 4
    baseline = report["baseline"]
    assert baseline["source"].startswith("measured") and baseline["num_episodes"] == 1
    for key in ("split", "data_source", "num_examples", "unit"):
        assert report[key], key
    assert {c["field"] for c in report["config_changes"]} >= {"train.num_steps"}
    # One episode: no standard error, and the printed line says the same as eval.json.
    assert report["mean_return_stderr"] is None and "nan" not in line
    assert "stderr none: 1 episode" in line
    assert list((trained.straight / "evals").glob("eval_fresh_episodes_*_step96.json"))

    assert _run(_tiny_config(2), trained.straight, mode="eval", step=48) == 0
    report = json.loads((trained.straight / "eval.json").read_text())
    assert report["env_steps_trained"] == 48 and report["learn_steps_trained"] == (48 - 24) // 4
    assert report["eval_noise"] == "sample"

    # eval.noise=mean: greedy on the Q of the mean weights, said so in eval.json
    config = _tiny_config(2)
    config.eval.noise = "mean"
    assert _run(config, trained.straight, mode="eval", step=48) == 0
    report = json.loads((trained.straight / "eval.json").read_text())
    assert report["eval_noise"] == "mean" and "mean weights" in report["eval_policy"]


@needs_ale
def test_sample_draws_the_learning_curve(trained, capsys):
    assert _run(_tiny_config(2), trained.straight, mode="sample") == 0
    curve = trained.straight / "samples" / "learning_curve_step96.png"
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(curve) in capsys.readouterr().out


def _summary(config, returns: np.ndarray, *, step: int = 10) -> dict:
    """AtariDQN.evaluate with the episodes' returns given (the emulators are not stepped)."""
    method = AtariDQN(config, mode="eval")
    method.play = lambda choose, num_episodes, tracker: (returns, np.zeros(len(returns), bool))
    state = SimpleNamespace(params=None, learn_steps=np.int32(3))
    report = method.evaluate(state, step=step, quick=False, progress=metrics.TaskProgress)
    return {**report, "step": step}


@needs_ale
def test_eval_summary_statistics_and_the_printed_line_agree():
    config = _tiny_config(1)
    config.eval.num_episodes = 4
    returns = np.array([-21.0, -19.0, -20.0, -16.0])
    summary = _summary(config, returns)
    assert summary["mean_return"] == -19.0 and summary["num_episodes"] == 4
    stderr = np.std(returns, ddof=1) / 2.0
    assert summary["mean_return_stderr"] == pytest.approx(stderr)
    assert summary["human_normalized_score"] == pytest.approx(100 * (-19.0 + 20.7) / 35.3)
    assert summary["human_normalized_score_stderr"] == pytest.approx(100 * stderr / 35.3)
    assert summary["protocol_matches_reference"] is False  # max_episode_frames=240
    assert summary["baseline"]["mean_return"] == -19.0  # measured with the same (stubbed) play
    line = AtariDQN(config, mode="eval").format_eval(summary)
    assert f"stderr {stderr:.2f})" in line and "after 10 env steps (40 frames)" in line

    # The reference protocol: the published random-agent score is the baseline.
    config.env.max_episode_frames = 108_000
    summary = _summary(config, returns[:1])
    assert summary["protocol_matches_reference"] is True
    assert (
        summary["mean_return_stderr"] is None and summary["human_normalized_score_stderr"] is None
    )
    assert summary["baseline"]["mean_return"] == -20.7
    assert summary["baseline"]["source"].startswith("published")
    line = AtariDQN(config, mode="eval").format_eval(summary)
    assert "stderr none: 1 episode" in line and "nan" not in line and "published" in line
    json.dumps(summary, allow_nan=False)  # strict JSON: no NaN anywhere


@needs_ale
def test_the_cli_picks_the_host_loop_and_rejects_an_unknown_game_before_writing(tmp_path, capsys):
    assert entry.load_method("noisynet").for_config(_tiny_config(1)) is AtariDQN
    workdir = tmp_path / "run"
    args = ["main", "--config=configs/noisynet.py:smoke_atari", f"--workdir={workdir}"]
    assert entry.run([*args, "--config.env.name=ALE/NoSuchGame-v5"]) == 2
    assert "not an ALE game" in capsys.readouterr().err.strip().splitlines()[-1]
    assert entry.run([*args, "--config.train.num_steps=200"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "train.num_steps=200" in line and "multiple of train.steps_per_chunk=128" in line
    assert not workdir.exists()


@needs_ale
def test_a_resume_whose_replay_does_not_fit_writes_nothing(trained, capsys):
    config_json = (trained.straight / "config.json").read_text()
    bigger = _tiny_config(3)
    bigger.replay.capacity = 400
    with pytest.raises(ConfigError, match=r"replay\.capacity=400 does not fit"):  # main: exit 2
        _run(bigger, trained.straight)
    assert (trained.straight / "config.json").read_text() == config_json
    assert not (trained.straight / "config_changes.jsonl").exists()
