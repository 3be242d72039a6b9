"""BFN end to end through experiments.main: outputs, validation, real test data, conditioning.

The loop's guarantees (resume, signals, devices, processes, FSDP) are tested once on the example
method (tests/core/test_loop_guarantees.py) and every method's contract in test_contract.py.
"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import SHARED_MNIST, assert_one_line_error, read_jsonl

from configs import bfn as bfn_configs
from experiments import main as entry
from experiments.bfn.method import BFN

SMOKE = "--config=configs/bfn.py:smoke"


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """40 smoke steps with validation every 20, on the 8 fake devices, in this process."""
    workdir = tmp_path_factory.mktemp("reference")
    args = ["--config.train.num_steps=40", "--config.train.eval_every=20"]
    assert entry.run(["main", SMOKE, f"--workdir={workdir}", *args]) == 0
    return workdir


def test_train_eval_sample_write_every_output_and_the_loss_goes_down(reference_run):
    workdir = reference_run
    records = read_jsonl(workdir / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["split"] == "train" and "loss" in r]
    assert len(losses) == 8 and losses[-1] < 0.7 * losses[0]
    assert any(r["split"] == "timing" and r["compile_seconds"] > 0 for r in records)
    validation = [r for r in records if r["split"] == "validation"]
    assert [r["step"] for r in validation] == [20, 40]
    assert all(0 < r["nll_nats_per_image"] < 5000 for r in validation)
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["num_steps"] == 40 and config["variant"] == "smoke"
    assert list((workdir / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "30",
        "40",
    ]
    assert (workdir / "samples" / "loss_curve.png").stat().st_size > 0

    assert entry.run(["main", SMOKE, f"--workdir={workdir}", "--mode=eval"]) == 0
    report = json.loads((workdir / "eval.json").read_text())
    assert report["split"] == "test" and report["num_images"] == 500 and report["step"] == 40
    assert report["nll_nats_per_image"] > 0 and report["nll_nats_per_image_stderr"] > 0
    assert [r["n_steps"] for r in report["results"]] == [0, 10]  # 0 is continuous time
    assert 150 < report["baseline"]["nll_nats_per_image"] < 260 and report["unit"] == "nats/image"

    assert entry.run(["main", SMOKE, f"--workdir={workdir}", "--mode=sample"]) == 0
    assert (workdir / "samples" / "samples_step40_n10.png").stat().st_size > 0
    assert (workdir / "samples" / "probabilities_step40_n10.png").stat().st_size > 0


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
    assert (
        entry.run([*args, f"--config.data.dir={SHARED_MNIST}", "--config.eval.batch_size=256"]) == 0
    )
    report = json.loads((reference_run / "eval.json").read_text())
    assert report["split"] == "test" and report["num_images"] == 8 * 256  # --quick: 8 batches
    assert "t10k" in report["data_source"] and "10000 digits" in report["data_source"]
    # The embedded test digits' eval of the same step is kept beside it, not overwritten.
    assert entry.run(args) == 0
    kept = [json.loads(p.read_text()) for p in (reference_run / "evals").glob("*_step40.json")]
    sources = {r["data_source"].split()[0] for r in kept}
    assert {"embedded"} < sources and any("t10k" in r["data_source"] for r in kept)


def test_a_checkpoint_from_another_model_gives_one_line_and_stays_untouched(reference_run, capsys):
    before = sorted(p.name for p in (reference_run / "checkpoints").iterdir())
    args = [SMOKE, f"--workdir={reference_run}", "--mode=eval", "--config.model.model_channels=16"]
    assert entry.run(["main", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit this config" in err[0], err
    assert sorted(p.name for p in (reference_run / "checkpoints").iterdir()) == before


def test_inpainting_keeps_the_known_top_halves(reference_run):
    config = bfn_configs.get_config("smoke")
    config.sample.inpaint = "top_half"
    experiment = BFN(config)
    mask, digits = experiment.family.known_positions(8)
    assert mask[:, :14].all() and not mask[:, 14:].any()
    state = experiment.restore(str(reference_run))
    samples, probs = experiment.draw(
        state.ema_params, num_samples=8, n_steps=5, rng=jax.random.key(0), known=(mask, digits)
    )
    np.testing.assert_array_equal(samples[:, :14], digits[:, :14])
    assert samples.shape == (8, 28, 28) and probs.shape == (8, 28, 28, 2)


def test_outputs_are_named_by_step_solver_and_conditioning_and_kept(reference_run):
    workdir = reference_run
    base = ["main", SMOKE, f"--workdir={workdir}"]
    assert entry.run([*base, "--mode=sample", "--config.sample.solver=ode2"]) == 0
    assert entry.run([*base, "--mode=sample", "--step=30", "--config.sample.inpaint=top_half"]) == 0
    samples = {p.name for p in (workdir / "samples").iterdir()}
    assert {"samples_step40_n10_ode2.png", "samples_step30_n10_inpaint_top_half.png"} <= samples
    assert entry.run([*base, "--mode=eval", "--step=30", "--quick"]) == 0
    assert json.loads((workdir / "eval.json").read_text())["step"] == 30
    kept = sorted(p.name for p in (workdir / "evals").iterdir())
    assert any(name.startswith("eval_test_embedded") for name in kept)
    assert any(name.endswith("_quick_step30.json") for name in kept)
