"""ByteNet through the method: the paper's batches, the translation eval's numbers, user errors.

The language model's train, eval and sample through experiments.main (with resume) run in
tests/experiments/test_contract.py (bytenet:smoke); translation's here.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import jax
import numpy as np
import pytest
import sacrebleu
from conftest import assert_one_line_error

from configs import bytenet as bytenet_configs
from deepgen.bytenet import model as bytenet
from deepgen.data import enwik8
from deepgen.data import parallel_text as pt
from experiments import main as entry
from experiments.bytenet.method import ByteNetMethod
from experiments.contract import EVAL_KEYS

BIBLE = Path(__file__).resolve().parents[2].parent / "shared/data/bible_es_en"


class _Tracker:
    def advance(self, *_: object) -> None:
        pass


def no_progress(*_: object, **__: object) -> _Tracker:
    return _Tracker()


def translation_config():
    config = bytenet_configs.get_config("translation_smoke")
    config.data.dir = str(BIBLE)
    return config


def test_pair_batch_is_the_papers_padding_and_shift():
    method = ByteNetMethod(translation_config(), mode="eval")
    sources, targets = [b"Y dijo Dios", b"luz"], [b"God said", "año".encode()]
    batch = method._pair_batch(sources, targets)
    # Longest side 11 bytes + EOS -> 50 target positions; sources to ceil(1.2 * 50) = 60.
    assert batch["targets"].shape == (2, 50) and batch["source"].shape == (2, 60)
    np.testing.assert_array_equal(batch["source_length"], [12, 4])
    first = batch["targets"][0]
    np.testing.assert_array_equal(first[:9], [*(b + 3 for b in b"God said"), pt.EOS])
    assert np.all(first[9:] == pt.PAD)
    np.testing.assert_array_equal(batch["inputs"][0, :9], [pt.BOS, *first[:8]])
    assert np.all(batch["inputs"][0, 9:] == pt.PAD)
    assert pt.decode(batch["targets"][1]) == "año"


def test_translation_trains_evaluates_and_samples_through_main(tmp_path, capsys):
    """translation_smoke end to end (the runner's guarantees, resume included, are checked on
    bytenet:smoke in test_contract.py): BLEU beside copying the source, and translations."""
    workdir = tmp_path / "run"
    args = [
        "main",
        "--config=configs/bytenet.py:translation_smoke",
        f"--workdir={workdir}",
        f"--config.data.dir={BIBLE}",
    ]
    assert entry.run(args) == 0
    assert entry.run([*args, "--mode=eval"]) == 0
    report = json.loads((workdir / "eval.json").read_text())
    assert set(EVAL_KEYS) <= set(report) and report["step"] == 6

    config = translation_config()
    method = ByteNetMethod(config, mode="eval")
    data = method._split("test")
    count = int(config.eval.num_pairs)
    sources = [s.decode() for s in data.source_lines[:count]]
    references = [r.decode() for r in data.target_lines[:count]]
    assert report["num_examples"] == count and report["split"] == "test"
    expected = sacrebleu.corpus_bleu(sources, [references]).score
    assert report["copy_source_bleu"] == pytest.approx(expected)
    assert report["baseline"]["bleu"] == report["copy_source_bleu"]
    assert 0.0 <= report["bleu"] <= 100.0 and report["bits_per_char"] > 0
    # The same targets given the next pair's source: a different number, as finite.
    mismatched = report["bits_per_char_mismatched_source"]
    assert np.isfinite(mismatched) and mismatched != report["bits_per_char"]
    assert report["scored_bytes"] == sum(len(r) + 1 for r in data.target_lines[:count])
    assert [e["reference"] for e in report["examples"]] == references[:3]
    assert "BLEU" in capsys.readouterr().out

    assert entry.run([*args, "--mode=sample"]) == 0
    text = (workdir / "samples" / "step6_translations.txt").read_text()
    assert text.count("reference: ") == config.sample.num_pairs == text.count("greedy:")
    assert references[0] in text


def test_lm_eval_baseline_is_the_entropy_of_the_scored_bytes():
    config = bytenet_configs.get_config("smoke")
    method = ByteNetMethod(config, mode="eval")
    report = method.evaluate(
        method.init_state(jax.random.key(0)), step=0, quick=False, progress=no_progress
    )
    windows, scored = enwik8.lm_windows(
        method._split("test").bytes_N, seq_len=config.data.seq_len, context=config.data.context
    )
    limit = config.eval.max_windows
    scored_bytes = windows[:limit][scored[:limit]]
    assert report["scored_bytes"] == len(scored_bytes) == limit * (60 - 20)
    assert report["baseline"]["bits_per_byte"] == enwik8.order0_entropy_bits(scored_bytes)
    assert report["receptive_field"] == bytenet.receptive_field(3, (1, 2, 4))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--config.model.encoder_blocks=0",), "config.model.encoder_blocks=0"),
        (("--config.data.dir=",), "data.dir"),
        (("--config.model.unit=gru",), "config.model.unit='gru'"),
    ],
)
def test_translation_user_errors_are_one_line(tmp_path, capsys, flags, expected):
    args = ["main", "--config=configs/bytenet.py:translation_smoke", f"--workdir={tmp_path}"]
    assert entry.run([*args, *flags]) == 2
    assert_one_line_error(capsys, expected)
    with contextlib.suppress(FileNotFoundError):
        assert not any(tmp_path.iterdir())


def test_lm_context_must_leave_scored_bytes(tmp_path, capsys):
    args = ["main", "--config=configs/bytenet.py:smoke", f"--workdir={tmp_path}"]
    assert entry.run([*args, "--config.data.context=59"]) == 2
    assert_one_line_error(capsys, "config.data.context=59")
