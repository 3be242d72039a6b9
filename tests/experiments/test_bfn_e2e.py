"""BFN end to end through experiments.main: outputs, resume, devices, processes, signals, errors."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import REPO_ROOT, SHARED_MNIST, read_jsonl, run_cli, train_losses

from configs import bfn as bfn_configs
from deepgen.core import checkpoint
from deepgen.core import mesh as mesh_lib
from experiments import main as entry
from experiments.bfn.method import BFN

SMOKE = "--config=configs/bfn.py:smoke"
# A constant learning rate, so that a run stopped at step N and resumed with a larger
# num_steps follows the same schedule as an uninterrupted run.
DETERMINISTIC = [
    "--config.opt.schedule=constant",
    "--config.train.log_every=1",
    "--config.ckpt.every=6",
]
NUM_STEPS = 12


def train_args(workdir: Path, num_steps: int = NUM_STEPS, *extra: str) -> list[str]:
    return [
        SMOKE,
        f"--workdir={workdir}",
        f"--config.train.num_steps={num_steps}",
        *DETERMINISTIC,
        *extra,
    ]


def restore_params(workdir: Path, step: int | None = None):
    experiment = BFN(bfn_configs.get_config("smoke"))
    if step is None:
        return jax.device_get(experiment.restore(str(workdir)).params)
    abstract = jax.eval_shape(experiment.init_state, jax.random.key(0))
    target = checkpoint.abstract_with_shardings(
        abstract, mesh_lib.state_shardings(abstract, experiment.mesh)
    )
    ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), max_to_keep=3, save_every=6)
    state, _ = ckpt.restore(step, target)
    ckpt.close()
    return jax.device_get(state.params)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """12 smoke steps on the 8 fake devices, in this process."""
    workdir = tmp_path_factory.mktemp("reference")
    assert entry.run(["main", *train_args(workdir)]) == 0
    return workdir


def test_train_eval_sample_write_every_output_and_the_loss_goes_down(tmp_path):
    workdir = tmp_path / "run"
    args = ["--config.train.num_steps=40", "--config.train.eval_every=20"]
    assert entry.run(["main", SMOKE, f"--workdir={workdir}", *args]) == 0
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
    assert [r["n_steps"] for r in report["results"]] == ["inf", 10]
    assert 150 < report["baseline"]["nll_nats_per_image"] < 260 and report["unit"] == "nats/image"

    assert entry.run(["main", SMOKE, f"--workdir={workdir}", "--mode=sample"]) == 0
    assert (workdir / "samples" / "samples_step40_n10.png").stat().st_size > 0
    assert (workdir / "samples" / "probabilities_step40_n10.png").stat().st_size > 0


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(reference_run, tmp_path):
    workdir = tmp_path / "resumed"
    assert entry.run(["main", *train_args(workdir, NUM_STEPS // 2)]) == 0
    assert entry.run(["main", *train_args(workdir, NUM_STEPS)]) == 0
    ours, reference = restore_params(workdir), restore_params(reference_run)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(a, b)
    # The reference saved step 6 asynchronously and then kept training on donated buffers:
    # its step-6 checkpoint must still equal the resumed run's.
    for a, b in zip(
        jax.tree.leaves(restore_params(workdir, step=NUM_STEPS // 2)),
        jax.tree.leaves(restore_params(reference_run, step=NUM_STEPS // 2)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert train_losses(workdir) == train_losses(reference_run)


def test_one_device_gives_the_same_losses_as_eight(reference_run, tmp_path):
    result = run_cli(train_args(tmp_path / "one"), env={"JAX_NUM_CPU_DEVICES": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "on 1 devices" in result.stderr
    ours, reference = train_losses(tmp_path / "one"), train_losses(reference_run)
    assert sorted(ours) == sorted(reference)
    np.testing.assert_allclose(
        [ours[s] for s in sorted(ours)], [reference[s] for s in sorted(reference)], rtol=1e-4
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_same_losses_as_one(reference_run, tmp_path):
    workdir, port = tmp_path / "multi", free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "experiments.main",
                *train_args(workdir),
                "--distributed",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=REPO_ROOT,
            env={**os.environ, "JAX_NUM_CPU_DEVICES": "2"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "on 4 devices" in outputs[0][1]
    ours, reference = train_losses(workdir), train_losses(reference_run)
    assert sorted(ours) == sorted(reference)  # only process 0 wrote metrics, once per step
    np.testing.assert_allclose(
        [ours[s] for s in sorted(ours)], [reference[s] for s in sorted(reference)], rtol=1e-4
    )


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path):
    workdir = tmp_path / "killed"
    args = [
        SMOKE,
        f"--workdir={workdir}",
        "--config.train.num_steps=100000",
        "--config.ckpt.every=100000",
        "--config.train.log_every=1",
        "--config.ckpt.signal_sync_every=1",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.main", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 240
    for line in proc.stdout:
        if line.startswith("step 3/"):
            proc.send_signal(signal.SIGTERM)
            break
        assert time.time() < deadline, "training never reached step 3"
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, rest[-2000:]
    assert "checkpoint saved" in rest
    steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(steps) == 1 and steps[0] >= 3
    saved = steps[0]
    result = run_cli(
        [*args[:2], f"--config.train.num_steps={saved + 2}", "--config.train.log_every=1"]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"at step {saved}" in result.stderr
    assert max(train_losses(workdir)) == saved + 2


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([SMOKE.replace("smoke", "nope")], "unknown variant 'nope'"),
        ([SMOKE, "--config.train.nope=3"], "unknown config field 'train.nope'"),
        ([SMOKE, "--config.train.num_steps=abc"], "config.train.num_steps=abc"),
        ([SMOKE, "--config.opt.name=adagrad"], "config.opt.name='adagrad' is not allowed"),
        (
            [SMOKE, "--config.data.dir=/nonexistent/mnist"],
            "data.dir=/nonexistent/mnist does not exist",
        ),
        (["--config=configs/nope.py:smoke"], "config file 'configs/nope.py' not found"),
    ],
)
def test_user_errors_exit_2_with_one_line_and_write_nothing(args, expected, tmp_path, capsys):
    workdir = tmp_path / "never"
    assert entry.run(["main", *args, f"--workdir={workdir}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not workdir.exists()


def test_the_process_exit_status_is_2(tmp_path):
    result = run_cli([SMOKE, f"--workdir={tmp_path / 'w'}", "--config.data.dir=/nonexistent"])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr


def test_eval_uses_the_real_test_set_when_data_dir_has_it(reference_run, tmp_path):
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(reason=f"real MNIST test files not found in {SHARED_MNIST}")
    result = run_cli(
        [
            SMOKE,
            f"--workdir={reference_run}",
            "--mode=eval",
            f"--config.data.dir={SHARED_MNIST}",
            "--config.eval.n_steps=(0,)",
            "--config.eval.batch_size=1000",
        ]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((reference_run / "eval.json").read_text())
    assert report["num_images"] == 10000 and report["split"] == "test"
    assert "t10k" in report["data_source"]


def test_fsdp_gives_the_same_losses_as_data_parallel(reference_run, tmp_path):
    workdir = tmp_path / "fsdp"
    fsdp = ["--config.mesh.data=1", "--config.mesh.fsdp=-1", "--config.fsdp_min_size=64"]
    assert entry.run(["main", *train_args(workdir), *fsdp]) == 0
    experiment = BFN(bfn_configs.get_config("smoke"))
    abstract = jax.eval_shape(experiment.init_state, jax.random.key(0))
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": -1})
    specs = [
        s.spec for s in jax.tree.leaves(mesh_lib.state_shardings(abstract, mesh, fsdp_min_size=64))
    ]
    assert any("fsdp" in spec for spec in specs)  # parameters and Adam moments really are split
    ours, reference = train_losses(workdir), train_losses(reference_run)
    assert sorted(ours) == sorted(reference)
    np.testing.assert_allclose(
        [ours[s] for s in sorted(ours)], [reference[s] for s in sorted(reference)], rtol=1e-4
    )


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
