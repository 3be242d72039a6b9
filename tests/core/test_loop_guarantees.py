"""The core loop's guarantees, tested once on the tiny example method through experiments.main.

Resume equals an uninterrupted run, SIGTERM saves a checkpoint that resumes, one device gives
the numbers of several, two processes (jax.distributed on localhost) the numbers of one, and
FSDP the numbers of data parallelism. Every method trains in this loop (tests/experiments/
test_contract.py), so these hold for all of them.
"""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import REPO_ROOT, run_cli, signal_when, train_losses

from configs import example as example_configs
from deepgen.core import mesh as mesh_lib
from experiments import main as entry
from experiments.example.method import Example

EXAMPLE = "--config=configs/example.py:smoke"
NUM_STEPS = 12


def train_args(workdir: Path, num_steps: int = NUM_STEPS, *extra: str) -> list[str]:
    return [
        EXAMPLE,
        f"--workdir={workdir}",
        f"--config.train.num_steps={num_steps}",
        "--config.train.log_every=1",
        "--config.ckpt.every=6",
        *extra,
    ]


def params_of(workdir: Path):
    return jax.device_get(Example(example_configs.get_config("smoke")).restore(str(workdir)).params)


def assert_same_losses(workdir: Path, reference: Path) -> None:
    ours, theirs = train_losses(workdir), train_losses(reference)
    assert sorted(ours) == sorted(theirs) == list(range(1, NUM_STEPS + 1))
    np.testing.assert_allclose(
        [ours[s] for s in sorted(ours)], [theirs[s] for s in sorted(theirs)], rtol=1e-5
    )


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """12 steps on the fake devices of tests/conftest.py, in this process."""
    workdir = tmp_path_factory.mktemp("reference")
    assert entry.run(["main", *train_args(workdir)]) == 0
    return workdir


def test_resume_gives_the_parameters_and_losses_of_an_uninterrupted_run(reference_run, tmp_path):
    workdir = tmp_path / "resumed"
    assert entry.run(["main", *train_args(workdir, NUM_STEPS // 2)]) == 0
    assert entry.run(["main", *train_args(workdir)]) == 0
    for a, b in zip(
        jax.tree.leaves(params_of(workdir)), jax.tree.leaves(params_of(reference_run)), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert train_losses(workdir) == train_losses(reference_run)


def test_one_device_gives_the_losses_of_several(reference_run, tmp_path):
    result = run_cli(train_args(tmp_path / "one"), env={"JAX_NUM_CPU_DEVICES": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "on 1 devices" in result.stderr
    assert_same_losses(tmp_path / "one", reference_run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_losses_of_one(reference_run, tmp_path):
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
    assert_same_losses(workdir, reference_run)  # only process 0 wrote metrics, once per step


def test_fsdp_gives_the_losses_of_data_parallelism(reference_run, tmp_path):
    workdir = tmp_path / "fsdp"
    fsdp = ["--config.mesh.data=1", "--config.mesh.fsdp=-1", "--config.fsdp_min_size=64"]
    assert entry.run(["main", *train_args(workdir), *fsdp]) == 0
    method = Example(example_configs.get_config("smoke"))
    abstract = jax.eval_shape(method.init_state, jax.random.key(0))
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": -1})
    specs = [
        s.spec for s in jax.tree.leaves(mesh_lib.state_shardings(abstract, mesh, fsdp_min_size=64))
    ]
    assert any("fsdp" in spec for spec in specs)  # parameters and Adam moments really are split
    assert_same_losses(workdir, reference_run)


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path):
    workdir = tmp_path / "killed"
    args = [
        EXAMPLE,
        f"--workdir={workdir}",
        "--config.train.num_steps=1000000",
        "--config.ckpt.every=1000000",
        "--config.train.log_every=1",
        "--config.ckpt.signal_sync_every=1",
    ]
    status, rest = signal_when(args, "step 3/", signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, rest[-2000:]
    assert "checkpoint saved" in rest and "Traceback" not in rest
    steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(steps) == 1 and steps[0] >= 3
    saved = steps[0]
    result = run_cli([*args[:2], f"--config.train.num_steps={saved + 2}"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"at step {saved}" in result.stderr
    assert max(train_losses(workdir)) == saved + 2
