"""BFN on 32x32 colour images end to end through experiments.main, both output types."""

import json

import numpy as np
import pytest
from conftest import read_jsonl
from PIL import Image

from experiments import main as entry
from experiments.bfn.method import BFN

SMOKE = "--config=configs/bfn.py:cifar10_smoke"
# A few steps (each runs the 32x32 U-Net on 16 images): the tests check finite losses and outputs.
FAST = ["--config.train.num_steps=6", "--config.ckpt.every=6"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """output type -> (workdir, command line) after 6 training steps."""
    runs = {}
    for output in ("discretised", "continuous"):
        workdir = tmp_path_factory.mktemp(output) / "run"
        args = ["main", SMOKE, f"--workdir={workdir}", f"--config.bfn.output={output}", *FAST]
        assert entry.run(args) == 0
        runs[output] = (workdir, args)
    return runs


@pytest.mark.parametrize("output", ["discretised", "continuous"])
def test_cifar10_train_eval_sample(trained, output, monkeypatch):
    workdir, args = trained[output]
    losses = [r["loss"] for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]
    assert len(losses) == 2 and all(np.isfinite(losses))  # logged at steps 5 and 6

    # Each n compiles its own loss: both runs check L^inf and one L^n through the runner (the
    # sums over steps, any n, are checked in tests/bfn/test_continuous.py and test_discrete.py);
    # a third n cost a compilation of the 32x32 U-Net's loss from a cold cache.
    n_steps = (0, 10)
    eval_args = [
        "--mode=eval",
        "--config.eval.repeats=2",
        f"--config.eval.n_steps=({','.join(map(str, n_steps))})",
        "--config.eval.num_samples=1",  # one sender draw per L^n term: the test checks units
    ]
    assert entry.run([*args, *eval_args]) == 0
    report = json.loads((workdir / "eval.json").read_text())
    assert report["unit"] == "bits/dim" and report["split"] == "test"
    assert [r["n_steps"] for r in report["results"]] == list(n_steps)
    assert all(
        r["unit"] == "bits/dim" and np.isfinite(r["bits_per_dim"]) for r in report["results"]
    )
    assert report["bits_per_dim_stderr"] is not None
    # The histogram baseline of 8-bit data lies below 8 bits per dimension.
    assert 0 < report["baseline"]["bits_per_dim"] < 8

    # The discretised model samples with the top halves of test images known (inpainting); the
    # samples are caught on their way to the PNG grid. Two sampler steps (each computes and draws
    # from 256-bin distributions for every subpixel) make the same checks as ten.
    drawn = []
    draw = BFN.draw

    def spy(self, *args, **kwargs):
        out = draw(self, *args, **kwargs)
        drawn.append((kwargs["known"], out))
        return out

    monkeypatch.setattr(BFN, "draw", spy)
    inpaint = output == "discretised"
    sample_args = ["--config.sample.n_steps=2"]
    sample_args += ["--config.sample.inpaint=top_half"] if inpaint else []
    assert entry.run([*args, "--mode=sample", *sample_args]) == 0
    name = "samples_step6_n2" + ("_inpaint_top_half" if inpaint else "") + ".png"
    grid = np.asarray(Image.open(workdir / "samples" / name))
    assert grid.ndim == 3 and grid.shape[-1] == 3
    [(known, (samples, _))] = drawn
    assert samples.shape == (8, 32, 32, 3)
    if inpaint:
        mask, values = known
        assert mask[:, :16].all() and not mask[:, 16:].any()
        np.testing.assert_array_equal(samples[mask], values[mask])
        assert not np.array_equal(samples[~mask], values[~mask])  # the rest is sampled
        centres = (2 * np.arange(256) + 1) / 256 - 1
        assert np.isin(samples, centres.astype(np.float32)).all()  # samples are bin centres
    else:
        assert known is None


def test_cifar10_rejects_bad_bins_and_outputs(tmp_path, capsys):
    for field, message in (
        ("--config.bfn.num_bins=32", "config.bfn.num_bins=32 is not allowed: 16 or 256"),
        ("--config.bfn.output=gaussian", "config.bfn.output='gaussian' is not allowed"),
    ):
        assert entry.run(["main", SMOKE, f"--workdir={tmp_path / 'w'}", field]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "w").exists()
