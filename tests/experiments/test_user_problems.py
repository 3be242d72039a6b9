"""The command line as a new user meets it: each test is a problem once reproduced, now fixed.

Most run the tiny example method; what is particular to a method (NoisyNet's env steps, BFN's
sample names) is tested here or in that method's end-to-end file.
"""

import json
import signal
from pathlib import Path

import pytest
from conftest import REPO_ROOT, assert_one_line_error, read_jsonl, run_cli, signal_when

from experiments import main as entry
from experiments.contract import Method

EXAMPLE = "--config=configs/example.py:smoke"
CONFIG_FILES = sorted(
    p.stem for p in (REPO_ROOT / "configs").glob("*.py") if p.stem not in ("common", "__init__")
)


def run(workdir: Path, *extra: str, config: str = EXAMPLE) -> int:
    return entry.run(["main", config, f"--workdir={workdir}", *extra])


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("example") / "run"
    assert run(workdir) == 0
    return workdir


def test_1_a_rejected_run_writes_nothing_not_even_config_json(trained, capsys):
    before = (trained / "config.json").read_text()
    checkpoints = sorted(p.name for p in (trained / "checkpoints").iterdir())
    # A model that does not fit the checkpoint: one line, exit 2, config.json untouched.
    assert run(trained, "--config.model.num_components=8", "--config.train.num_steps=40") == 2
    assert "does not fit" in capsys.readouterr().err
    # Another method's config on this workdir.
    assert run(trained, config="--config=configs/snap.py:smoke") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a 'example' run" in err[0] and "new --workdir" in err[0]
    assert (trained / "config.json").read_text() == before
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == checkpoints


def test_2_noisynet_eval_reports_the_env_steps_of_the_checkpoint(tmp_path, capsys):
    workdir = tmp_path / "dqn"
    config = "--config=configs/noisynet.py:smoke_dqn"
    assert run(workdir, "--config.train.num_steps=512", config=config) == 0
    # Evaluate with the variant's own (larger) num_steps and another chunk size.
    assert run(workdir, "--mode=eval", "--config.train.steps_per_chunk=128", config=config) == 0
    report = json.loads((workdir / "eval.json").read_text())
    assert report["env_steps_trained"] == report["step"] == 512
    assert "after 512 env steps" in capsys.readouterr().out


def test_3_eval_and_sample_show_progress_with_an_eta_and_quick_is_documented(trained, capsys):
    assert run(trained, "--mode=eval") == 0
    err = capsys.readouterr().err
    assert "eval: " in err and "ETA" in err and "batches" in err
    assert run(trained, "--mode=sample") == 0
    assert entry.run(["main", "--help"]) == 0
    assert "--[no]quick" in capsys.readouterr().out


def test_4_help_and_listing_variants_and_fields(capsys):
    assert entry.run(["main", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "--config" in out and "--mode" in out and "--step" in out
    assert entry.run(["main", "--list=configs/bfn.py"]) == 0
    out = capsys.readouterr().out
    assert "mnist_cpu" in out and "text8_smoke" in out and "cifar10_256d" in out
    assert entry.run(["main", "--list=configs/example.py:smoke"]) == 0
    out = capsys.readouterr().out
    assert "--config.model.num_components" in out and "--config.train.num_steps" in out
    assert entry.run(["main", "--list=configs/nope.py"]) == 2


def test_5_outputs_are_named_by_what_made_them_and_kept(trained):
    assert run(trained, "--mode=eval", "--config.eval.split=validation") == 0
    assert run(trained, "--mode=eval", "--config.eval.split=test") == 0
    latest = json.loads((trained / "eval.json").read_text())
    assert latest["split"] == "test"
    kept = {json.loads(p.read_text())["split"] for p in (trained / "evals").glob("*.json")}
    assert {"validation", "test"} <= kept
    assert run(trained, "--mode=sample", "--step=10") == 0
    assert run(trained, "--mode=sample") == 0
    names = {p.name for p in (trained / "samples").iterdir()}
    assert {"samples_step10.png", "samples_step20.png"} <= names


@pytest.mark.parametrize("config_file", CONFIG_FILES)
def test_6_generic_fields_exist_in_every_variant_and_mean_the_same(config_file):
    module = __import__(f"configs.{config_file}", fromlist=["VARIANTS"])
    generic = ("seed", "train.num_steps", "train.log_every", "mesh.data", "mesh.fsdp", "ckpt.every")
    for name in module.VARIANTS:
        config = module.get_config(name)
        for field in generic:
            node = config
            for part in field.split("."):
                assert part in node, f"{config_file}:{name} has no {field}"
                node = node[part]


def test_6_noisynet_takes_the_generic_num_steps_and_mesh(tmp_path):
    workdir = tmp_path / "dqn"
    config = "--config=configs/noisynet.py:smoke_dqn"
    assert run(workdir, "--config.train.num_steps=512", "--config.mesh.data=-1", config=config) == 0
    steps = [r["step"] for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]
    assert steps == [256, 512]


@pytest.mark.parametrize("config_file", CONFIG_FILES)
def test_7_every_variant_of_every_method_can_sample(config_file):
    module = __import__(f"configs.{config_file}", fromlist=["VARIANTS"])
    for name in module.VARIANTS:
        config = module.get_config(name)
        method = entry.load_method(config.method).for_config(config)
        method.validate(config)
        assert method.sample is not Method.sample and method.evaluate is not Method.evaluate, name


@pytest.mark.parametrize("when", ["compiling", "evaluating"])
def test_8_ctrl_c_anywhere_ends_with_one_line(trained, tmp_path, when):
    if when == "compiling":  # SAM's step (two padded lengths) takes seconds to compile
        # (Many steps: with a warm compile cache the signal lands in training, never after it.)
        args = ["--config=configs/sam.py:smoke", f"--workdir={tmp_path / 'w'}"]
        args.append("--config.train.num_steps=1000000")
        marker = "curriculum from level"
    else:
        args = [EXAMPLE, f"--workdir={trained}", "--mode=eval", "--config.eval.repeats=100000"]
        marker = "restored"
    status, rest = signal_when(args, marker, signal.SIGINT)
    assert status == 130, rest[-2000:]
    assert "Traceback" not in rest, rest
    assert rest.strip().splitlines()[-1].startswith("interrupted"), rest


def test_9_a_changed_rerun_is_announced_and_recorded_and_steps_can_be_chosen(trained, capsys):
    before = (trained / "config.json").read_text()
    # Nothing left to train: said, and nothing rewritten.
    assert run(trained, "--config.train.num_steps=10") == 0
    assert "nothing to train" in capsys.readouterr().out
    assert (trained / "config.json").read_text() == before
    # Training on with a change: announced, recorded, config.json updated.
    assert run(trained, "--config.train.num_steps=30", "--config.train.log_every=10") == 0
    out = capsys.readouterr().out
    assert "config changed" in out and "train.num_steps: 20 -> 30" in out
    changes = read_jsonl(trained / "config_changes.jsonl")
    assert changes[-1]["resumed_at"] == 20
    assert {c["field"] for c in changes[-1]["changes"]} == {"train.num_steps", "train.log_every"}
    assert json.loads((trained / "config.json").read_text())["train"]["num_steps"] == 30
    # Any saved checkpoint can be evaluated or sampled; an unsaved one is a one-line error.
    assert run(trained, "--mode=eval", "--step=20", "--quick") == 0
    assert json.loads((trained / "eval.json").read_text())["step"] == 20
    assert run(trained, "--mode=eval", "--step=7") == 2
    assert "no checkpoint at step 7" in capsys.readouterr().err


def test_10_boolean_flag_errors_show_no_python_tuple(tmp_path, capsys):
    assert run(tmp_path / "w", "--config.ckpt.async_save=maybe") == 2
    err = capsys.readouterr().err.strip()
    assert "('" not in err and "maybe" in err and len(err.splitlines()) == 1


def test_10_the_process_exit_status_is_2_with_one_line(tmp_path):
    result = run_cli([EXAMPLE, f"--workdir={tmp_path / 'w'}", "--config.data.dir=/nonexistent"])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([EXAMPLE.replace("smoke", "nope")], "unknown variant 'nope'"),
        ([EXAMPLE, "--config.train.nope=3"], "unknown config field 'train.nope'"),
        ([EXAMPLE, "--config.train.num_steps=abc"], "config.train.num_steps=abc"),
        ([EXAMPLE, "--config.opt.name=adagrad"], "config.opt.name='adagrad' is not allowed"),
        (["--config=configs/nope.py:smoke"], "config file 'configs/nope.py' not found"),
        ([EXAMPLE, "--config.train.log_every=0"], "config.train.log_every=0"),
    ],
)
def test_user_errors_exit_2_with_one_line_and_write_nothing(args, expected, tmp_path, capsys):
    workdir = tmp_path / "never"
    assert entry.run(["main", *args, f"--workdir={workdir}"]) == 2
    assert_one_line_error(capsys, expected)
    assert not workdir.exists()
