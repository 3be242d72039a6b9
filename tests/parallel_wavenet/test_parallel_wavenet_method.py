"""Parallel WaveNet through experiments.main: the student distilled from a teacher and a classifier
trained first (teacher_smoke's own contract, resume included, is checked in test_contract.py),
the teacher's eval recomputed, the WAV outputs, and user errors."""

from __future__ import annotations

import json
import math
import wave
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import assert_one_line_error, read_jsonl

from configs import parallel_wavenet as pw_configs
from experiments import main as entry
from experiments.contract import EVAL_KEYS
from experiments.parallel_wavenet.method import ParallelWaveNetMethod, to_unit


class _Tracker:
    def advance(self, *_: object) -> None:
        pass


def no_progress(*_: object, **__: object) -> _Tracker:
    return _Tracker()


def run(variant: str, workdir: Path, *extra: str) -> int:
    return entry.run(
        [
            "main",
            f"--config=configs/parallel_wavenet.py:{variant}",
            f"--workdir={workdir}",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def teacher_and_classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("pw")
    assert run("teacher_smoke", root / "teacher") == 0
    assert run("classifier_smoke", root / "classifier") == 0
    return root / "teacher", root / "classifier"


def test_the_student_distils_trains_evaluates_and_writes_wavs(teacher_and_classifier, tmp_path):
    teacher_dir, classifier_dir = teacher_and_classifier
    workdir = tmp_path / "student"
    args = (
        f"--config.teacher_workdir={teacher_dir}",
        f"--config.classifier_workdir={classifier_dir}",
        "--config.distill.perceptual_weight=0.01",
    )
    assert run("student_smoke", workdir, *args) == 0
    records = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]
    for key in ("kl", "cross_entropy", "entropy", "power", "perceptual", "mismatched_kl"):
        assert all(math.isfinite(r[key]) for r in records), key
    assert (workdir / "samples" / "student_curve.png").stat().st_size > 0

    assert run("student_smoke", workdir, *args, "--mode=eval") == 0
    report = json.loads((workdir / "eval.json").read_text())
    assert set(EVAL_KEYS) <= set(report) and report["unit"] == "nats/sample"
    assert math.isfinite(report["kl_nats_per_sample"]) and report["kl_nats_per_sample_stderr"]
    assert math.isfinite(report["baseline"]["kl_nats_per_sample"])
    assert report["samples_per_second"] > 0 and report["teacher_samples_per_second"] > 0
    assert report["speedup_over_teacher"] == pytest.approx(
        report["samples_per_second"] / report["teacher_samples_per_second"]
    )

    assert run("student_smoke", workdir, *args, "--mode=sample") == 0
    wavs = sorted((workdir / "samples").glob("step4_student_*.wav"))
    assert [w.name.split("_")[2] for w in wavs] == ["generated", "real"]
    with wave.open(str(wavs[0])) as f:
        assert f.getframerate() == 16000 and f.getsampwidth() == 2 and f.getnframes() == 128
    assert len(list((workdir / "samples").glob("step4_student_*.png"))) == 2


def test_the_teacher_eval_is_the_nll_of_held_out_clips_beside_order_zero():
    config = pw_configs.get_config("teacher_smoke")
    method = ParallelWaveNetMethod(config, mode="eval")
    state = method.init_state(jax.random.key(0))
    report = method.evaluate(state, step=0, quick=False, progress=no_progress)
    clips = method._heldout_clips(quick=False)
    assert report["num_examples"] == len(clips["audio"]) == config.eval.num_clips
    nats = np.asarray(method.teacher_nats(state.params, clips), np.float64)
    assert nats.shape == clips["audio"].shape
    assert report["nll_bits_per_sample"] == pytest.approx(nats.mean() / math.log(2), rel=1e-5)
    # A fitted 16-bit marginal of speech: far below the 16 bits of a uniform distribution.
    assert 0 < report["baseline"]["bits_per_sample"] < 16
    assert report["receptive_field"] == method.teacher.receptive_field


@pytest.mark.parametrize(
    ("variant", "extra", "expected"),
    [
        ("student_smoke", [], "teacher_workdir"),
        ("teacher_smoke", ["--config.data.clip_length=100"], "data.clip_length"),
        ("teacher_smoke", ["--config.teacher.gate_features=5"], "teacher.gate_features"),
        ("student_cpu", ["--config.teacher_workdir=x"], "classifier_workdir"),
    ],
)
def test_bad_configs_exit_2_with_one_line(tmp_path, capsys, variant, extra, expected):
    if variant == "student_cpu":
        extra = [*extra, "--config.classifier_workdir="]
    assert run(variant, tmp_path / "run", *extra) == 2
    assert_one_line_error(capsys, expected)
    assert not (tmp_path / "run").exists()


def test_a_student_without_a_trained_teacher_says_how_to_train_one(tmp_path, capsys):
    assert run("student_smoke", tmp_path / "run", f"--config.teacher_workdir={tmp_path}") == 2
    assert_one_line_error(capsys, "train the teacher there first")


def test_a_teacher_of_other_audio_settings_is_refused(teacher_and_classifier, tmp_path, capsys):
    teacher_dir, _ = teacher_and_classifier
    extra = (f"--config.teacher_workdir={teacher_dir}", "--config.data.num_mels=6")
    assert run("student_smoke", tmp_path / "run", *extra) == 2
    assert_one_line_error(capsys, "data.num_mels")


def test_16_bit_values_map_to_the_bin_centres_whatever_their_integer_type():
    values = np.array([-32768, -1, 0, 5, 32767], np.int16)  # int16 + 32768 would wrap
    expected = -1.0 + 2.0 * (values.astype(np.int64) + 32768) / 65535.0
    np.testing.assert_allclose(to_unit(values), expected, rtol=1e-6)
    np.testing.assert_allclose(to_unit(values.astype(np.int32)), expected, rtol=1e-6)
