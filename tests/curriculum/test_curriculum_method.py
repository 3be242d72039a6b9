"""The curriculum method end to end through experiments.main, and the mistakes a user can make.

The n-gram smoke variant (prediction gain) runs in the contract test (tests/experiments/
test_contract.py), which also interrupts and resumes it and compares every leaf of the final state
with an uninterrupted run's: the bandit's weights, step counter and reward reservoir are leaves of
the train state, so that test is the check that the bandit survives resume exactly. Here: repeat
copy with variational weights and the gradient variational complexity gain (the other likelihood,
the other training regime), its eval.json and samples; and the one-line errors.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from configs import curriculum as curriculum_configs
from experiments import main as entry
from experiments.curriculum.method import Curriculum

CONFIG = "--config=configs/curriculum.py:repeat_copy_smoke"
VARIATIONAL = ["--config.model.variational=True"]
GVCG = ["--config.curriculum.signal=gradient_variational_complexity_gain"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("curriculum") / "rc"
    args = ["main", CONFIG, f"--workdir={workdir}", *VARIATIONAL, *GVCG]
    assert entry.run(args) == 0
    return workdir, args


def test_variational_repeat_copy_trains_evaluates_and_samples(trained, capsys):
    workdir, args = trained
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert train[-1]["step"] == 20
    assert all(r["regulariser"] > 0 for r in train)  # KL(P || Q) / S is in the loss
    # 6 tasks (lengths 1..3 x repeats 1..2); the policy is a distribution over them
    policy = [v for k, v in train[-1].items() if k.startswith("policy/")]
    assert len(policy) == 6 and sum(policy) == pytest.approx(1.0, abs=1e-5)
    assert min(policy) >= 0.05 / 6 - 1e-7

    assert entry.run([*args, "--mode=eval"]) == 0
    report = json.loads((workdir / "eval.json").read_text())
    assert report["signal"] == "gradient_variational_complexity_gain"
    assert report["training"] == "variational"
    assert report["target_task"] == "len3_rep2" and report["unit"] == "nats per scored output step"
    assert set(report["tasks"]) == {f"len{n}_rep{r}" for n in (1, 2, 3) for r in (1, 2)}
    losses = [row["loss"] for row in report["tasks"].values()]
    assert report["mean_target_loss"] == pytest.approx(sum(losses) / 6)
    assert report["steps_to_target"] is None or 0 < report["steps_to_target"] <= 20
    assert sum(report["task_counts"].values()) == 20
    # 5 bits of every output step at chance cost 5 log 2 nats: the baseline is about that
    assert 0.5 < report["baseline"]["mean_target_loss"] < 5 * 0.7

    assert entry.run([*args, "--mode=sample"]) == 0
    written = dict(
        line.split(": ", 1) for line in capsys.readouterr().out.splitlines() if ": /" in line
    )
    assert {"syllabus", "task_losses", "predictions"} <= set(written)
    assert "bit errors" in Path(written["predictions"]).read_text()


@pytest.mark.parametrize(
    "extra,expected",
    [
        (GVCG, "--config.model.variational=True"),
        (["--config.curriculum.signal=l2_gain"], "model.l2_weight > 0"),
        (["--config.curriculum.signal=fastest"], "config.curriculum.signal='fastest'"),
        (["--config.curriculum.epsilon=0"], "config.curriculum.epsilon=0"),
    ],
)
def test_bad_curriculum_configs_exit_2_with_one_line(extra, expected, tmp_path, capsys):
    workdir = tmp_path / "never"
    assert entry.run(["main", CONFIG, f"--workdir={workdir}", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not workdir.exists()


def test_babi_without_its_files_says_where_to_put_them(tmp_path, capsys):
    workdir = tmp_path / "never"
    args = ["main", "--config=configs/curriculum.py:babi", f"--workdir={workdir}"]
    assert entry.run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.dir" in err[0] and "bAbI" in err[0], err
    assert not workdir.exists()


def test_a_sparse_snap_cell_is_a_second_learner_and_stays_sparse(tmp_path):
    """model.kind=snap_cell: the SnAp GRU at density 0.5 trains under the bandit; pruned weights
    stay exactly zero after training."""
    workdir = tmp_path / "snap"
    sparse = ["--config.model.kind=snap_cell", "--config.model.density=0.5"]
    args = ["main", "--config=configs/curriculum.py:smoke", f"--workdir={workdir}", *sparse]
    assert entry.run([*args, "--config.train.num_steps=10"]) == 0
    config = curriculum_configs.get_config("smoke")
    config.model.kind, config.model.density, config.train.num_steps = "snap_cell", 0.5, 10
    method = Curriculum(config, mode="eval")
    params = method.restore(str(workdir)).params["cell"]
    for name in ("w_x", "w_h"):
        mask = np.asarray(method.network.masks[name])
        assert 0.3 < mask.mean() < 0.7
        assert np.all(np.asarray(params[name])[mask == 0] == 0.0)
        assert np.any(np.asarray(params[name])[mask == 1] != 0.0)


def test_babi_from_task_files_trains_evaluates_and_samples(tmp_path):
    """The 20 bAbI tasks from files in the real format (written here: no bAbI copy is shipped)."""
    from test_curriculum_tasks import write_babi

    data_dir = write_babi(tmp_path / "babi")
    workdir = tmp_path / "run"
    args = [
        "main",
        "--config=configs/curriculum.py:babi_smoke",
        f"--workdir={workdir}",
        f"--config.data.dir={data_dir}",
    ]
    assert entry.run([*args, "--config.train.num_steps=10"]) == 0
    assert entry.run([*args, "--config.train.num_steps=10", "--mode=eval"]) == 0
    report = json.loads((workdir / "eval.json").read_text())
    assert len(report["tasks"]) == 20 and report["unit"] == "nats per scored answer"
    assert all(0 <= row["accuracy"] <= 1 for row in report["tasks"].values())
    assert entry.run([*args, "--config.train.num_steps=10", "--mode=sample"]) == 0
    text = (workdir / "samples" / "predictions_step10.txt").read_text()
    assert "<answer>" in text and "target   :" in text
