"""BFN end to end through experiments.main: outputs, validation, real test data, conditioning.

The loop's guarantees (resume, signals, devices, processes, FSDP) are tested once on the example
method (tests/core/test_loop_guarantees.py) and every method's contract in test_contract.py.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_MNIST, assert_one_line_error, read_jsonl

from experiments import main as entry
from experiments.bfn.method import BFN

SMOKE = "--config=configs/bfn.py:smoke"


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """The smoke variant's 20 steps with validation every 10, on the fake devices, in this process.

    (Its own step count: test_contract.py's bfn:smoke run compiles the same train step, which the
    persistent compilation cache then shares between the two files.)
    """
    workdir = tmp_path_factory.mktemp("reference")
    assert entry.run(["main", SMOKE, f"--workdir={workdir}", "--config.train.eval_every=10"]) == 0
    return workdir


def test_train_eval_sample_write_every_output_and_the_loss_goes_down(reference_run):
    workdir = reference_run
    records = read_jsonl(workdir / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["split"] == "train" and "loss" in r]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0]
    assert any(r["split"] == "timing" and r["compile_seconds"] > 0 for r in records)
    validation = [r for r in records if r["split"] == "validation"]
    assert [r["step"] for r in validation] == [10, 20]
    assert all(0 < r["nll_nats_per_image"] < 5000 for r in validation)
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["num_steps"] == 20 and config["variant"] == "smoke"
    assert list((workdir / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "10",
        "20",
    ]
    assert (workdir / "samples" / "loss_curve.png").stat().st_size > 0

    assert entry.run(["main", SMOKE, f"--workdir={workdir}", "--mode=eval"]) == 0
    report = json.loads((workdir / "eval.json").read_text())
    assert report["split"] == "test" and report["num_images"] == 500 and report["step"] == 20
    assert report["nll_nats_per_image"] > 0 and report["nll_nats_per_image_stderr"] > 0
    assert [r["n_steps"] for r in report["results"]] == [0, 10]  # 0 is continuous time
    assert 150 < report["baseline"]["nll_nats_per_image"] < 260 and report["unit"] == "nats/image"

    assert entry.run(["main", SMOKE, f"--workdir={workdir}", "--mode=sample"]) == 0
    assert (workdir / "samples" / "samples_step20_n10.png").stat().st_size > 0
    assert (workdir / "samples" / "probabilities_step20_n10.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([SMOKE, "--config.opt.name=adagrad"], "config.opt.name='adagrad' is not allowed"),
        (
            [SMOKE, "--config.data.dir=/nonexistent/mnist"],
            "data.dir=/nonexistent/mnist does not exist",
        ),
        ([SMOKE, "--config.sample.solver=rk4"], "config.sample.solver='rk4' is not allowed"),
    ],
)
def test_user_errors_exit_2_with_one_line_and_write_nothing(args, expected, tmp_path, capsys):
    workdir = tmp_path / "never"
    assert entry.run(["main", *args, f"--workdir={workdir}"]) == 2
    assert_one_line_error(capsys, expected)
    assert not workdir.exists()


def test_eval_uses_the_real_test_set_when_data_dir_has_it(reference_run, tmp_path):
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(reason=f"real MNIST test files not found in {SHARED_MNIST}")
    args = ["main", SMOKE, f"--workdir={reference_run}", "--mode=eval", "--quick"]
    assert entry.run([*args, f"--config.data.dir={SHARED_MNIST}"]) == 0
    report = json.loads((reference_run / "eval.json").read_text())
    # --quick: 8 batches of eval.batch_size = 100, more than the 500 embedded test digits
    assert report["split"] == "test" and report["num_images"] == 8 * 100
    assert "t10k" in report["data_source"] and "10000 digits" in report["data_source"]
    # The embedded test digits' eval of the same step is kept beside it, not overwritten.
    assert entry.run(args) == 0
    kept = [json.loads(p.read_text()) for p in (reference_run / "evals").glob("*_step20.json")]
    sources = {r["data_source"].split()[0] for r in kept}
    assert {"embedded"} < sources and any("t10k" in r["data_source"] for r in kept)


def test_a_checkpoint_from_another_model_gives_one_line_and_stays_untouched(reference_run, capsys):
    before = sorted(p.name for p in (reference_run / "checkpoints").iterdir())
    args = [SMOKE, f"--workdir={reference_run}", "--mode=eval", "--config.model.model_channels=16"]
    assert entry.run(["main", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit this config" in err[0], err
    assert sorted(p.name for p in (reference_run / "checkpoints").iterdir()) == before


def test_outputs_are_named_by_step_solver_and_conditioning_and_inpainting_keeps_the_top_halves(
    reference_run, monkeypatch
):
    workdir = reference_run
    base = ["main", SMOKE, f"--workdir={workdir}"]
    drawn = []  # (known, (samples, probabilities)) of every BFN.draw, on their way to the PNGs
    draw = BFN.draw

    def spy(self, *args, **kwargs):
        out = draw(self, *args, **kwargs)
        drawn.append((kwargs["known"], out))
        return out

    monkeypatch.setattr(BFN, "draw", spy)
    # One sampling run names all three: an earlier step, a BFN-Solver and the conditioning. (The
    # paper's sampler keeps known positions too: test_bfn_text8_e2e.py's prompt, same flow.)
    solver, inpaint = "--config.sample.solver=ode2", "--config.sample.inpaint=top_half"
    assert entry.run([*base, "--mode=sample", "--step=10", solver, inpaint]) == 0
    written = {p.name for p in (workdir / "samples").iterdir()}
    assert "samples_step10_n10_ode2_inpaint_top_half.png" in written
    [((mask, digits), (samples, probs))] = drawn
    assert mask[:, :14].all() and not mask[:, 14:].any()
    np.testing.assert_array_equal(samples[:, :14], digits[:, :14])
    assert samples.shape == (16, 28, 28) and probs.shape == (16, 28, 28, 2)
    assert entry.run([*base, "--mode=eval", "--step=10", "--quick"]) == 0
    assert json.loads((workdir / "eval.json").read_text())["step"] == 10
    kept = sorted(p.name for p in (workdir / "evals").iterdir())
    assert any(name.startswith("eval_test_embedded") for name in kept)
    assert any(name.endswith("_quick_step10.json") for name in kept)
