"""The VPN through the method: the eval's numbers recomputed independently, Robotic Pushing end to
end on a tiny file in the dataset's format, the standard test set, and user errors.

Moving MNIST's train, eval and sample through experiments.main (with resume) run in
tests/experiments/test_contract.py (vpn:smoke).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import assert_one_line_error, read_jsonl

from configs import vpn as vpn_configs
from deepgen.data import moving_mnist, robot_push
from experiments import main as entry
from experiments.contract import EVAL_KEYS
from experiments.vpn.method import VPNMethod


class _Tracker:
    def advance(self, *_: object) -> None:
        pass


def no_progress(*_: object, **__: object) -> _Tracker:
    return _Tracker()


def entropy_nats(z: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = -(z * np.log(z)) - (1 - z) * np.log(1 - z)
    return np.nan_to_num(terms)


def test_moving_mnist_eval_is_the_soft_target_cross_entropy_beside_its_floor_and_baseline():
    config = vpn_configs.get_config("smoke")
    method = VPNMethod(config, mode="eval")
    state = method.init_state(jax.random.key(0))
    report = method.evaluate(state, step=0, quick=False, progress=no_progress)
    assert set(EVAL_KEYS) <= set(report) and report["unit"] == "nats/frame"

    context, count = config.data.context_frames, config.eval.num_sequences
    frames = moving_mnist.test_sequences(
        count,
        num_digits=config.data.num_digits,
        num_frames=config.data.num_frames,
        canvas=config.data.canvas,
        digit_side=config.data.digit_side,
    ).astype(np.float64)
    assert report["num_examples"] == count
    # The model's probabilities, scored here in numpy (frames context .. T-1, given the past).
    logits = np.asarray(method.model.apply({"params": state.params}, frames.astype(np.float32)))
    p = 1.0 / (1.0 + np.exp(-logits[:, context - 1 :, ..., 0].astype(np.float64)))
    z = frames[:, context:]
    nats_N = -(z * np.log(p) + (1 - z) * np.log(1 - p)).sum(axis=(2, 3, 4)).mean(axis=1)
    assert report["nats_per_frame"] == pytest.approx(nats_N.mean(), rel=1e-5)
    assert report["nats_per_frame_stderr"] == pytest.approx(
        nats_N.std(ddof=1) / math.sqrt(count), rel=1e-4
    )
    floor = entropy_nats(z).sum(axis=(2, 3, 4)).mean()
    assert report["entropy_floor_nats_per_frame"] == pytest.approx(floor, rel=1e-5)
    assert report["nats_per_frame"] > floor  # Gibbs: no model goes below the targets' entropy

    baseline = report["baseline"]
    s, m = baseline["smoothing"], baseline["mean_pixel"]
    y = (1 - s) * frames[:, context - 1 : context] + s * m
    copy = -(z * np.log(y) + (1 - z) * np.log(1 - y)).sum(axis=(2, 3, 4)).mean()
    assert report["baseline_nats_per_frame"] == pytest.approx(copy, rel=1e-5)
    assert report["baseline_nats_per_frame"] > floor and 0 < s < 1 and 0 < m < 1


def test_binary_inputs_are_bernoulli_draws_of_the_grey_frames_scored_against_the_grey_values():
    config = vpn_configs.get_config("smoke")
    config.data.binarize_inputs = True
    method = VPNMethod(config, mode="eval")
    state = method.init_state(jax.random.key(0))
    report = method.evaluate(state, step=0, quick=False, progress=no_progress)
    videos, _, _ = method._heldout(quick=False)
    frames, inputs = videos["frames"].astype(np.float64), videos["inputs"]
    # The held-out inputs: binary, on where the frame is 1, off where it is 0, and on as often as
    # the grey values say (a Bernoulli draw per pixel; 5 standard errors).
    assert set(np.unique(inputs)) <= {0.0, 1.0}
    assert np.all(inputs[frames == 1.0] == 1.0) and np.all(inputs[frames == 0.0] == 0.0)
    grey = (frames > 0) & (frames < 1)
    draws, probs = inputs[grey], frames[grey]
    spread = math.sqrt(float(np.sum(probs * (1 - probs))))
    assert abs(float(draws.sum() - probs.sum())) < 5 * spread
    # The model sees the binary frames; the targets and the floor stay the grey ones.
    context = config.data.context_frames
    logits = np.asarray(method.model.apply({"params": state.params}, inputs))
    p = 1.0 / (1.0 + np.exp(-logits[:, context - 1 :, ..., 0].astype(np.float64)))
    z = frames[:, context:]
    nats = -(z * np.log(p) + (1 - z) * np.log(1 - p)).sum(axis=(2, 3, 4)).mean()
    assert report["nats_per_frame"] == pytest.approx(nats, rel=1e-5)
    assert report["entropy_floor_nats_per_frame"] == pytest.approx(
        entropy_nats(z).sum(axis=(2, 3, 4)).mean(), rel=1e-5
    )

    # Training: a fresh draw every step; on frames already binary the draw is the frame itself,
    # so the step is the grey-input step exactly.
    grey_method = VPNMethod(vpn_configs.get_config("smoke"), mode="eval")
    rng = jax.random.key(3)
    batch = {"frames": jax.numpy.asarray(frames[:2].astype(np.float32))}
    step = jax.jit(method.train_step)
    loss_0 = float(step(state, batch, rng)[1]["loss"])
    loss_1 = float(step(state.replace(step=state.step + 1), batch, rng)[1]["loss"])
    assert loss_0 != loss_1
    assert loss_0 != float(jax.jit(grey_method.train_step)(state, batch, rng)[1]["loss"])
    binary = {"frames": jax.numpy.asarray(inputs[:2])}
    assert float(step(state, binary, rng)[1]["loss"]) == pytest.approx(
        float(jax.jit(grey_method.train_step)(state, binary, rng)[1]["loss"]), rel=1e-6
    )


def test_the_standard_test_set_is_read_from_its_npy_file(tmp_path):
    rng = np.random.default_rng(0)
    standard = rng.integers(0, 256, (20, 3, 64, 64), dtype=np.uint8)  # time-major, as published
    np.save(tmp_path / moving_mnist.NPY_NAME, standard)
    config = vpn_configs.get_config("smoke")
    config.data.num_frames, config.data.context_frames = 20, 10
    config.data.canvas, config.data.digit_side = 64, 28
    config.data.test_set, config.data.test_dir = "standard", str(tmp_path)
    config.eval.num_sequences = 0
    method = VPNMethod(config, mode="eval")
    report = method.evaluate(
        method.init_state(jax.random.key(0)), step=0, quick=False, progress=no_progress
    )
    assert report["num_examples"] == 3 and report["split"] == "standard test"
    assert moving_mnist.NPY_NAME in report["data_source"]
    z = standard.transpose(1, 0, 2, 3)[:, 10:].astype(np.float64) / 255.0
    floor = entropy_nats(z).sum(axis=(2, 3)).mean()
    assert report["entropy_floor_nats_per_frame"] == pytest.approx(floor, rel=1e-5)


def write_push_data(folder: Path, *, frames: int = 5) -> None:
    rng = np.random.default_rng(1)
    for name, count in (("push_train.tfrecord", 8), ("push_testseen.tfrecord", 2)):
        # Smooth colour fields (JPEG keeps them): a horizontal ramp per channel, moving per frame.
        ramp = np.linspace(0, 255, 20)[None, None, None, :, None]
        shift = rng.integers(0, 60, (count, frames, 1, 1, 3))
        video = ((ramp + shift) % 256).astype(np.uint8)
        video = np.broadcast_to(video, (count, frames, 16, 20, 3)).copy()
        actions = rng.normal(size=(count, frames, robot_push.ACTION_DIM)).astype(np.float32)
        states = rng.normal(size=(count, frames, robot_push.STATE_DIM)).astype(np.float32)
        robot_push.write_push_tfrecord(folder / name, video, actions, states)


def test_robot_pushing_trains_evaluates_and_samples_through_main(tmp_path, capsys):
    data = tmp_path / "push"
    data.mkdir()
    write_push_data(data)
    workdir = tmp_path / "run"
    args = [
        "main",
        "--config=configs/vpn.py:push_smoke",
        f"--workdir={workdir}",
        f"--config.data.dir={data}",
    ]
    assert entry.run(args) == 0
    losses = [r["loss"] for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert entry.run([*args, "--mode=eval"]) == 0
    report = json.loads((workdir / "eval.json").read_text())
    assert set(EVAL_KEYS) <= set(report) and report["unit"] == "nats/dimension"
    assert report["split"] == "test_seen" and report["num_examples"] == 2
    assert 0 < report["nats_per_dimension"] < 2 * math.log(256)
    assert 0 < report["baseline"]["nats_per_dimension"] < 2 * math.log(256)
    assert entry.run([*args, "--mode=sample"]) == 0
    samples = workdir / "samples"
    assert (samples / "step4_strips.png").stat().st_size > 0
    assert (samples / "step4_video.gif").stat().st_size > 0
    capsys.readouterr()


def test_the_push_model_sees_actions_and_only_the_context_states():
    config = vpn_configs.get_config("push_smoke")
    config.data.dir = "unused"
    method = VPNMethod(config, mode="eval")
    batch = {
        "frames": np.zeros((1, 4, 8, 8, 3), np.uint8),
        "actions": np.arange(20, dtype=np.float32).reshape(1, 4, 5),
        "states": np.ones((1, 4, 5), np.float32),
    }
    conditions = method._video_batch(batch)["conditions"][0]
    np.testing.assert_array_equal(conditions[:, :5], batch["actions"][0])
    np.testing.assert_array_equal(conditions[:, 5:10], [[1] * 5, [1] * 5, [0] * 5, [0] * 5])
    np.testing.assert_array_equal(conditions[:, 10], [1, 1, 0, 0])


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--config=configs/vpn.py:push_smoke"], "data.dir"),
        (
            ["--config=configs/vpn.py:push_smoke", "--config.data.binarize_inputs=True"],
            "data.binarize_inputs",
        ),
        (["--config=configs/vpn.py:smoke", "--config.data.test_set=standard"], "data.test_set"),
        (["--config=configs/vpn.py:smoke", "--config.model.kernel_size=4"], "model.kernel_size"),
        (
            ["--config=configs/vpn.py:smoke", "--config.data.context_frames=4"],
            "data.context_frames",
        ),
    ],
)
def test_bad_configs_exit_2_with_one_line(tmp_path, capsys, extra, expected):
    assert entry.run(["main", *extra, f"--workdir={tmp_path / 'run'}"]) == 2
    assert_one_line_error(capsys, expected)
    assert not (tmp_path / "run").exists()


def test_a_push_folder_without_the_records_exits_2_saying_where_they_go(tmp_path, capsys):
    args = ["main", "--config=configs/vpn.py:push_smoke", f"--workdir={tmp_path / 'run'}"]
    assert entry.run([*args, f"--config.data.dir={tmp_path}"]) == 2
    assert_one_line_error(capsys, "push_train")
