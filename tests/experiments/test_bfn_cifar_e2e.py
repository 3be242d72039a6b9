"""BFN on 32x32 colour images end to end through experiments.main, both output types."""

import json

import numpy as np
import pytest
from conftest import read_jsonl
from PIL import Image

from experiments import main as entry
from experiments.bfn.method import BFN

SMOKE = "--config=configs/bfn.py:cifar10_smoke"
FAST = ["--config.train.num_steps=12", "--config.ckpt.every=12"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """output type -> (workdir, command line) after 12 training steps."""
    runs = {}
    for output in ("discretised", "continuous"):
        workdir = tmp_path_factory.mktemp(output) / "run"
        args = ["main", SMOKE, f"--workdir={workdir}", f"--config.bfn.output={output}", *FAST]
        assert entry.run(args) == 0
        runs[output] = (workdir, args)
    return runs


@pytest.mark.parametrize("output", ["discretised", "continuous"])
def test_cifar10_train_eval_sample(trained, output):
    workdir, args = trained[output]
    losses = [r["loss"] for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]
    assert all(np.isfinite(losses))

    eval_args = [
        "--mode=eval",
        "--config.eval.repeats=2",
        "--config.eval.n_steps=(0,10,1000)",
        "--config.eval.num_samples=1",  # one sender draw per L^n term: the test checks units
    ]
    assert entry.run([*args, *eval_args]) == 0
    report = json.loads((workdir / "eval.json").read_text())
    assert report["unit"] == "bits/dim" and report["split"] == "test"
    assert [r["n_steps"] for r in report["results"]] == [0, 10, 1000]
    assert all(
        r["unit"] == "bits/dim" and np.isfinite(r["bits_per_dim"]) for r in report["results"]
    )
    assert report["bits_per_dim_stderr"] is not None
    # The histogram baseline of 8-bit data lies below 8 bits per dimension.
    assert 0 < report["baseline"]["bits_per_dim"] < 8

    assert entry.run([*args, "--mode=sample"]) == 0
    grid = np.asarray(Image.open(workdir / "samples" / "samples_step12_n10.png"))
    assert grid.ndim == 3 and grid.shape[-1] == 3


def test_cifar10_inpainting_keeps_the_known_top_halves(trained):
    from configs import bfn as bfn_configs

    workdir, _ = trained["discretised"]
    config = bfn_configs.get_config("cifar10_smoke")
    config.sample.inpaint = "top_half"
    experiment = BFN(config)
    state = experiment.restore(str(workdir))
    known = experiment.family.known_positions(8)
    samples, _ = experiment.draw(
        experiment.eval_params(state),
        num_samples=8,
        n_steps=5,
        rng=__import__("jax").random.key(0),
        known=known,
    )
    mask, values = known
    np.testing.assert_array_equal(samples[mask], values[mask])
    assert not np.array_equal(samples[~mask], values[~mask])  # the rest is sampled
    centres = (2 * np.arange(256) + 1) / 256 - 1
    assert np.isin(samples, centres.astype(np.float32)).all()  # samples are bin centres


def test_cifar10_rejects_bad_bins_and_outputs(tmp_path, capsys):
    for field, message in (
        ("--config.bfn.num_bins=32", "config.bfn.num_bins=32 is not allowed: 16 or 256"),
        ("--config.bfn.output=gaussian", "config.bfn.output='gaussian' is not allowed"),
    ):
        assert entry.run(["main", SMOKE, f"--workdir={tmp_path / 'w'}", field]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "w").exists()
