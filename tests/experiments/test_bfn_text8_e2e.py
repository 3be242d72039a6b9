"""BFN on text8-style text end to end through experiments.main (train, eval, sample)."""

import json

import pytest
from conftest import read_jsonl

from deepgen.data import text8
from experiments import main as entry

SMOKE = "--config=configs/bfn.py:text8_smoke"


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A workdir after 80 training steps."""
    workdir = tmp_path_factory.mktemp("text8") / "run"
    assert entry.run(["main", SMOKE, f"--workdir={workdir}", "--config.train.num_steps=80"]) == 0
    return workdir


def test_text8_train_eval_sample(trained):
    workdir = trained
    losses = [r["loss"] for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]
    assert losses[-1] < 0.7 * losses[0]

    eval_args = ["--mode=eval", "--config.eval.repeats=2", "--config.eval.n_steps=(0,10)"]
    assert entry.run(["main", SMOKE, f"--workdir={workdir}", *eval_args]) == 0
    report = json.loads((workdir / "eval.json").read_text())
    assert report["unit"] == "bits/char" and report["split"] == "test"
    assert report["num_windows"] == 154_292 // 16  # non-overlapping windows of 16 characters
    assert report["bits_per_char"] > 0 and report["bits_per_char_stderr"] is not None
    assert [r["n_steps"] for r in report["results"]] == [0, 10]
    assert 3.5 < report["baseline"]["bits_per_char"] < 4.76  # below log2(27)

    assert entry.run(["main", SMOKE, f"--workdir={workdir}", "--mode=sample"]) == 0
    lines = (workdir / "samples" / "samples_step80_n10.txt").read_text().splitlines()
    assert len(lines) == 8 and all(len(line) == 16 for line in lines)
    assert all(set(line) <= set(text8.ALPHABET) for line in lines)


def test_text8_rejects_a_window_longer_than_the_model(tmp_path, capsys):
    args = [SMOKE, f"--workdir={tmp_path / 'w'}", "--config.data.seq_len=32"]
    assert entry.run(["main", *args]) == 2
    assert (
        "config.data.seq_len=32 is longer than config.model.max_len=16" in capsys.readouterr().err
    )


def test_text8_infilling_keeps_the_prompt(trained):
    workdir = trained
    prompt = ["--mode=sample", "--config.sample.prompt=the cat "]
    assert entry.run(["main", SMOKE, f"--workdir={workdir}", *prompt]) == 0
    lines = (workdir / "samples" / "samples_step80_n10_prompted.txt").read_text().splitlines()
    assert len(lines) == 8 and all(line.startswith("the cat ") for line in lines)
    assert all(len(line) == 16 and set(line) <= set(text8.ALPHABET) for line in lines)
    # The second-order BFN-Solver keeps the prompt too.
    solver = [*prompt, "--config.sample.solver=ode2"]
    assert entry.run(["main", SMOKE, f"--workdir={workdir}", *solver]) == 0
    lines = (workdir / "samples" / "samples_step80_n10_ode2_prompted.txt").read_text().splitlines()
    assert len(lines) == 8 and all(line.startswith("the cat ") for line in lines)
    assert entry.run(["main", SMOKE, f"--workdir={workdir}", "--config.sample.solver=rk4"]) == 2
