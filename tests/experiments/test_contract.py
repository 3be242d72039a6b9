"""One contract test over every method's smoke variants, through experiments.main.

Each variant trains once (a module-scoped run shared by the tests of that variant), then: the
workdir holds what the README promises, the core training loop ran (or, for a loop that steps
external emulators, that loop with core's checkpointer), an interrupted run resumes to the
numbers of the uninterrupted one, eval writes eval.json with the shared keys and a kept copy,
sample writes files named by their step, and a bad field exits 2 without writing anything.
A method that is not listed here fails `test_every_method_has_a_smoke_variant_here`.
"""

import importlib
import json
import signal
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import read_jsonl

from deepgen.core import train_loop
from experiments import main as entry
from experiments.contract import EVAL_KEYS

# (config file, variant, runs in the core loop). Atari steps emulators in its own host loop.
# BFN's CIFAR family (the slowest smoke model: a 32x32 U-Net and a 256-bin likelihood) runs the
# same modes in test_bfn_cifar_e2e.py; its train step is BFN's, whose contract bfn:smoke checks.
SMOKE_VARIANTS = [
    ("example", "smoke", True),
    ("acn", "smoke", True),
    ("kanerva", "smoke", True),
    ("bfn", "smoke", True),
    ("bfn", "text8_smoke", True),
    ("snap", "smoke", True),
    ("snap", "charlm_smoke", True),
    ("curriculum", "smoke", True),
    ("bytenet", "smoke", True),  # translation_smoke end to end: tests/bytenet
    ("vpn", "smoke", True),  # push_smoke end to end: tests/vpn
    ("parallel_wavenet", "teacher_smoke", True),  # the student end to end: tests/parallel_wavenet
    ("sam", "smoke", True),  # bAbI and Omniglot end to end: tests/sam
    ("noisynet", "smoke_dqn", True),
    ("noisynet", "smoke_a2c", True),
    ("noisynet", "smoke_atari", False),
    ("noisynet", "atari_a2c_smoke", False),
]
PARAMS = [pytest.param(v, id=f"{v[0]}:{v[1]}") for v in SMOKE_VARIANTS]


def args_for(variant, workdir: Path, *extra: str) -> list[str]:
    method, name, _ = variant
    return ["main", f"--config=configs/{method}.py:{name}", f"--workdir={workdir}", *extra]


def train_records(workdir: Path) -> list[dict]:
    return [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]


def checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_every_method_has_a_smoke_variant_here():
    assert {v[0] for v in SMOKE_VARIANTS} == set(entry.available_methods())


@pytest.fixture(scope="session", params=PARAMS)
def trained(request, tmp_path_factory, monkeypatch_session):
    """(variant, workdir, how many times the core loop ran) after one uninterrupted run."""
    variant = request.param
    workdir = tmp_path_factory.mktemp(variant[1]) / "run"
    calls = []
    core_train = train_loop.train

    def spy(*args, **kwargs):
        calls.append(1)
        return core_train(*args, **kwargs)

    monkeypatch_session.setattr(train_loop, "train", spy)
    assert entry.run(args_for(variant, workdir)) == 0
    monkeypatch_session.setattr(train_loop, "train", core_train)
    return variant, workdir, len(calls)


@pytest.fixture(scope="session")
def monkeypatch_session():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_training_writes_the_workdir_contract_through_the_shared_loop(trained):
    variant, workdir, core_loop_calls = trained
    assert core_loop_calls == (1 if variant[2] else 0)
    config = json.loads((workdir / "config.json").read_text())
    assert config["method"] == variant[0] and config["variant"] == variant[1]
    records = train_records(workdir)
    num_steps = config["train"]["num_steps"]
    assert records and records[-1]["step"] == num_steps
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r and r["loss"] is not None)
    assert list((workdir / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert checkpoint_steps(workdir)[-1] == num_steps
    assert all(
        s % config["ckpt"]["every"] == 0 or s == num_steps for s in checkpoint_steps(workdir)
    )


def test_an_interrupted_run_resumes_to_the_numbers_of_an_uninterrupted_one(
    trained, tmp_path, monkeypatch
):
    variant, reference, _ = trained
    workdir = tmp_path / "interrupted"
    checks = []

    def requested(self):  # the SIGTERM handler's flag, set at the second stop check
        checks.append(1)
        if len(checks) == 2:
            self.signum = signal.SIGTERM
        return self.signum is not None

    monkeypatch.setattr(train_loop.StopSignal, "requested", requested)
    sync = "--config.ckpt.signal_sync_every=1"
    assert entry.run(args_for(variant, workdir, sync)) == 128 + signal.SIGTERM
    stopped_at = checkpoint_steps(workdir)
    assert len(stopped_at) >= 1
    monkeypatch.undo()
    assert entry.run(args_for(variant, workdir, sync)) == 0
    # The final states are equal, leaf for leaf.
    ours_state, theirs_state = restore(variant, workdir), restore(variant, reference)
    for a, b in zip(jax.tree.leaves(ours_state), jax.tree.leaves(theirs_state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Every logged window that starts after the stop repeats the uninterrupted run's numbers.
    config = json.loads((reference / "config.json").read_text())
    log_every = config["train"]["log_every"]
    ours, theirs = train_records(workdir), train_records(reference)
    theirs_by_step = {r["step"]: r for r in theirs}
    resumed = [r for r in ours if r["step"] - log_every >= stopped_at[-1]]
    assert [r["step"] for r in resumed] == [
        s for s in sorted(theirs_by_step) if s - log_every >= stopped_at[-1]
    ]
    for record in resumed:
        reference_record = theirs_by_step[record["step"]]
        for key, value in record.items():
            timing = key.endswith(("_per_sec", "_seconds", "/s")) or key in ("time", "wall_time")
            if not timing and isinstance(value, float):
                assert value == reference_record[key] or (
                    np.isnan(value) and np.isnan(reference_record[key])
                ), key


def restore(variant, workdir: Path):
    """The latest checkpoint's state, restored by the method's own class."""
    config = importlib.import_module(f"configs.{variant[0]}").get_config(variant[1])
    method = entry.load_method(variant[0]).for_config(config)
    return jax.device_get(method(config, mode="eval").restore(str(workdir)))


def test_eval_writes_the_shared_keys_and_keeps_a_copy_per_step(trained):
    variant, workdir, _ = trained
    assert entry.run(args_for(variant, workdir, "--mode=eval", "--quick")) == 0
    report = json.loads((workdir / "eval.json").read_text())
    assert set(EVAL_KEYS) <= set(report), set(EVAL_KEYS) - set(report)
    config = json.loads((workdir / "config.json").read_text())
    assert report["step"] == config["train"]["num_steps"] and report["quick"] is True
    kept = workdir / "evals" / f"eval_{report['tag']}_step{report['step']}.json"
    assert json.loads(kept.read_text()) == report
    assert report["num_examples"] > 0 and report["baseline"]


def test_sample_writes_files_named_by_their_step(trained, capsys):
    variant, workdir, _ = trained
    step = checkpoint_steps(workdir)[-1]
    assert entry.run(args_for(variant, workdir, "--mode=sample", f"--step={step}")) == 0
    written = [
        line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if ": /" in line
    ]
    assert written and all(Path(p).stat().st_size > 0 and f"step{step}" in p for p in written)


def test_a_bad_field_exits_2_and_writes_nothing(trained, tmp_path, capsys):
    variant, _, _ = trained
    workdir = tmp_path / "never"
    assert entry.run(args_for(variant, workdir, "--config.train.no_such_field=1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown config field 'train.no_such_field'" in err[0]
    assert not workdir.exists()
    assert entry.run(args_for(variant, workdir, "--config.train.num_steps=-4")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.train.num_steps=-4" in err[0]
    assert not workdir.exists()
