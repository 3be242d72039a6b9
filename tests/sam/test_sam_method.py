"""SAM through the method: the eval's numbers recomputed in numpy, the curriculum's padded lengths,
every memory kind in the train step, bAbI and Omniglot end to end, and user errors.

The smoke variant's train, resume, eval and sample through experiments.main run in
tests/experiments/test_contract.py (sam:smoke).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_one_line_error

from configs import sam as sam_configs
from deepgen.sam import tasks
from experiments import main as entry
from experiments.contract import EVAL_KEYS
from experiments.sam.method import SAM, length_buckets
from tests.data.test_babi import write_babi

OMNIGLOT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "omniglot"


def smoke(**overrides) -> SAM:
    config = sam_configs.get_config("smoke")
    for field, value in overrides.items():
        section, name = field.split(".")
        config[section][name] = value
    return SAM(config, mode="train")


def test_length_buckets_are_the_powers_of_two_the_curriculum_can_reach():
    assert length_buckets(1, 20) == (1, 2, 4, 8, 16, 20)
    assert length_buckets(3, 1024) == (4, 8, 16, 32, 64, 128, 256, 512, 1024)
    assert length_buckets(6, 6) == (6,)
    assert length_buckets(20, 20) == (20,)


def test_eval_is_the_masked_cross_entropy_in_bits_recomputed_in_numpy():
    method = smoke()
    state = method.init_state(jax.random.key(1))
    report = method.evaluate(state, step=0, quick=False, progress=None)
    assert set(EVAL_KEYS) <= set(report) and report["unit"] == "bits/sequence"
    config = method.config
    level = int(config.curriculum.initial_level)
    assert report["curriculum_level"] == level

    batches = tasks.eval_batches(
        config.seed,
        level=level,
        num_sequences=config.eval.num_sequences,
        batch_size=config.eval.batch_size,
        params=method.params_task,
    )
    bits, wrong, counted = [], 0.0, 0.0
    apply = jax.jit(method.network.apply)
    for batch in batches:
        logits = np.asarray(apply(state.params, batch.inputs_BxTxI), np.float64)
        targets, mask = np.asarray(batch.targets_BxTxO), np.asarray(batch.mask_BxT)
        p = 1.0 / (1.0 + np.exp(-logits))
        nats = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
        bits.extend((nats.sum(-1) * mask).sum(-1) / math.log(2))
        wrong += (((p > 0.5) != (targets > 0.5)).sum(-1) * mask).sum()
        counted += mask.sum() * targets.shape[-1]
    assert report["num_examples"] == config.eval.num_sequences == len(bits)
    np.testing.assert_allclose(report["cost_bits_per_sequence"], np.mean(bits), rtol=1e-5)
    np.testing.assert_allclose(
        report["cost_bits_per_sequence_stderr"],
        np.std(bits, ddof=1) / math.sqrt(len(bits)),
        rtol=1e-4,
    )
    assert report["error_rate"] == pytest.approx(wrong / counted)
    # The baseline guesses every target bit with probability 1/2: one bit per scored bit.
    per_sequence = config.data.num_bits * config.data.item_size
    assert report["baseline"]["cost_bits_per_sequence"] == pytest.approx(per_sequence)
    [row] = report["generalisation"]
    assert row["items"] == 2 * level and row["num_sequences"] == config.eval.num_sequences
    # The floor: the bit error rate of the best possible answers on the same held-out sequences.
    floor = sum(
        float(tasks.recall_floor_errors(b, level=level, params=method.params_task).sum())
        for b in batches
    )
    assert report["error_rate_floor"] == pytest.approx(floor / counted)
    assert 0.0 <= row["error_rate_floor"] <= 0.5
    assert report["max_generalised_length"] >= level


def test_a_step_trains_on_the_batch_of_its_padded_length_and_the_curriculum_doubles():
    # The NTM's reads are continuous in its inputs. With SAM the train step's cost and this test's
    # recomputation differed by 2e-4 (relative) under XLA's older CPU emitters, likely a top-K
    # choice among near-tied words flipped by a last-ulp difference between the two compilations.
    method = smoke(**{"memory.kind": "ntm"})
    state = method.init_state(jax.random.key(0))
    config = method.config
    step = jax.jit(method.train_step)
    # The loss of step 0 is that of the batch drawn at h = 2, padded to level 2's length.
    rng = tasks.train_key(config.seed, 0)
    draw = jax.jit(method._train_batch, static_argnums=2)
    scores_of = jax.jit(method._scores)
    batch = draw(rng, state.curriculum.max_level, 2, None)
    assert batch.inputs_BxTxI.shape[1] == tasks.sequence_length(2, method.params_task)
    scores = scores_of(state.params, batch)
    new_state, metrics = step(state, None, jax.random.key(9))
    expected = float(scores["cost_bits"] / scores["sequences"])
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
    assert float(metrics["curriculum_level"]) == 2
    # With a threshold no cost exceeds, h doubles once min_updates costs are averaged.
    levels = []
    for _ in range(4):
        new_state, metrics = step(new_state, None, jax.random.key(9))
        levels.append(int(new_state.curriculum.max_level))
    assert levels[-1] == config.curriculum.max_level and levels[0] <= levels[-1]
    # At h = 4 the step runs the level-4 branch: its loss is that of the level-4 batch.
    at = int(new_state.step)
    batch = draw(tasks.train_key(config.seed, at), jnp.int32(4), 4, None)
    scores = scores_of(new_state.params, batch)
    _, metrics = step(new_state, None, jax.random.key(9))
    np.testing.assert_allclose(
        float(metrics["loss"]), float(scores["cost_bits"] / scores["sequences"]), rtol=1e-5
    )


@pytest.mark.parametrize("kind", ["ntm", "dam", "sam", "dnc", "sdnc"])
def test_every_memory_kind_fits_the_train_step(kind):
    """Traced, not compiled: each core's maths and gradients are tested in its own file.

    One padded length (h capped at its start), so one branch to trace.
    """
    method = smoke(**{"memory.kind": kind, "curriculum.max_level": 2})
    state = jax.eval_shape(method.init_state, jax.random.key(0))
    new_state, metrics = jax.eval_shape(method.train_step, state, None, jax.random.key(0))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert all(
        a.shape == b.shape and a.dtype == b.dtype
        for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state), strict=True)
    )
    assert {"loss", "error_rate", "curriculum_level", "grad_norm"} <= set(metrics)


def test_babi_trains_evaluates_per_task_and_writes_answers(tmp_path):
    data_dir = write_babi(tmp_path / "babi")
    workdir = tmp_path / "run"
    args = [
        "main",
        "--config=configs/sam.py:babi_smoke",
        f"--workdir={workdir}",
        f"--config.data.dir={data_dir}",
        "--config.train.num_steps=4",
        "--config.ckpt.every=4",
    ]
    assert entry.run(args) == 0
    assert entry.run([*args, "--mode=eval"]) == 0
    report = json.loads((workdir / "eval.json").read_text())
    assert report["split"] == "test" and set(EVAL_KEYS) <= set(report)
    assert len(report["per_task_error"]) == 20
    assert 0 <= report["mean_task_error"] <= 1 and 0 <= report["failed_tasks"] <= 20
    assert report["num_examples"] > 0 and 0 <= report["baseline"]["error_rate"] < 1
    assert entry.run([*args, "--mode=sample"]) == 0
    text = (workdir / "samples" / "babi_step4.txt").read_text()
    assert "->" in text and "[qa" in text


def test_babi_without_its_files_says_where_to_put_them(tmp_path, capsys):
    args = ["main", "--config=configs/sam.py:babi_smoke", f"--workdir={tmp_path / 'run'}"]
    assert entry.run(args) == 2
    assert_one_line_error(capsys, "data.dir")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.skipif(not OMNIGLOT_DIR.is_dir(), reason="../shared/data/omniglot is absent")
def test_omniglot_one_shot_trains_and_evaluates_on_unseen_characters(tmp_path):
    workdir = tmp_path / "run"
    args = [
        "main",
        "--config=configs/sam.py:omniglot_smoke",
        f"--workdir={workdir}",
        f"--config.data.dir={OMNIGLOT_DIR}",
        "--config.train.num_steps=3",
        "--config.ckpt.every=3",
    ]
    assert entry.run(args) == 0
    assert entry.run([*args, "--mode=eval"]) == 0
    report = json.loads((workdir / "eval.json").read_text())
    assert "test characters" in report["split"] and report["data_source"].startswith("Omniglot")
    level = report["curriculum_level"]
    # Chance: log2(level) bits for each of the level * instances labels of a sequence.
    config = sam_configs.get_config("omniglot_smoke")
    chance = level * config.data.instances_per_class * math.log2(level)
    assert report["baseline"]["cost_bits_per_sequence"] == pytest.approx(chance)
    assert 0 <= report["error_rate"] <= 1
    # Every scored label is the n-th showing of its character for one n in 1..instances.
    by_instance = report["error_rate_by_instance"]
    assert [row["instance"] for row in by_instance] == [1, 2]
    assert sum(row["count"] for row in by_instance) == report["scored_outputs"]
    assert by_instance[0]["count"] == level * report["num_sequences"]  # each character once


@pytest.mark.parametrize(
    "flag, fragment",
    [
        ("--config.memory.kind=lstm", "memory.kind"),
        ("--config.memory.search=kdtree", "memory.search"),
        ("--config.curriculum.max_level=1", "curriculum.max_level"),
        ("--config.memory.num_reads=99", "memory.num_reads"),
    ],
)
def test_bad_fields_exit_2_with_one_line(flag, fragment, tmp_path, capsys):
    args = ["main", "--config=configs/sam.py:smoke", f"--workdir={tmp_path / 'run'}", flag]
    assert entry.run(args) == 2
    assert_one_line_error(capsys, fragment)
    assert not (tmp_path / "run").exists()
