"""The SnAp online loop: traces across updates and resets, online vs per-sequence, CLI.

An interrupted run resuming to the numbers of an uninterrupted one is tested, for the smoke
variants, by tests/experiments/test_contract.py.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_jsonl

from configs import snap as snap_configs
from deepgen.snap import cells, estimators
from deepgen.snap import online as snap_online
from experiments import main as entry
from experiments.snap.method import SnAp, validate

SMOKE = "--config=configs/snap.py:smoke"


def _config(variant="smoke", **overrides):
    config = snap_configs.get_config(variant)
    config.unlock()
    for path, value in overrides.items():
        node = config
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    config.lock()
    validate(config)
    return config


def _leaves_equal(a, b) -> bool:
    return all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_traces_persist_across_online_updates_and_reset_with_the_state():
    config = _config("charlm_smoke", **{"data.seq_len": 3})  # crops of 3 predictions, SnAp-1
    experiment = SnAp(config)
    model, masks = experiment.model, experiment.masks
    base_rng = jax.random.wrap_key_data(experiment.step_rng_data)
    estimator_step = jax.vmap(model.estimator.step, in_axes=(None, None, None, 0, 0, 0, 0, 0))

    @jax.jit
    def step_and_by_hand(carry):
        """The online time step, and the estimator step alone (no update, no reset) from the
        same carry."""
        x, y, w = model.task.token(carry.episode, experiment.data_tokens)
        rngs = jax.random.split(jax.random.key(0), model.batch)  # SnAp-1 uses no randomness
        by_hand = estimator_step(
            carry.params, masks, carry.readout, carry.state_BxS, carry.traces, x, (y, w), rngs
        )
        return snap_online.time_step(model, masks, base_rng, carry, experiment.data_tokens), by_hand

    carry = experiment.init_carry()
    for t in range(2):  # two online updates inside the first episode
        (new_carry, step_metrics), (state, traces, _, _, _) = step_and_by_hand(carry)
        assert float(step_metrics["updates"]) == 1.0
        assert not _leaves_equal(new_carry.params, carry.params)
        # influence traces carry on across the update; only the gradient accumulator is consumed
        assert _leaves_equal(new_carry.traces["influence"], traces["influence"])
        assert sum(np.abs(leaf).sum() for leaf in jax.tree.leaves(traces["influence"])) > 0
        assert all(not np.any(g) for g in jax.tree.leaves(new_carry.traces["grad_cell"]))
        np.testing.assert_array_equal(new_carry.state_BxS, state)
        assert int(new_carry.episode.position) == t + 1
        carry = new_carry
    (carry, step_metrics), _ = step_and_by_hand(carry)  # the episode ends
    assert float(step_metrics["updates"]) == 1.0 and int(carry.episode.position) == 0
    assert all(not np.any(leaf) for leaf in jax.tree.leaves(carry.traces))
    assert not np.any(carry.state_BxS)


def _train_chunks(config, num_chunks):
    experiment = SnAp(config)
    chunk_fn = experiment.chunk_fn(int(config.train.chunk_steps))
    carry = experiment.init_carry()
    for _ in range(num_chunks):
        carry, sums = chunk_fn(
            carry, experiment.masks, experiment.data_tokens, experiment.step_rng_data
        )
    return carry, sums


def test_online_with_a_huge_update_interval_equals_per_sequence_updates():
    online, online_sums = _train_chunks(_config(**{"train.update_every": 10**9}), 2)
    offline, offline_sums = _train_chunks(_config(**{"train.online": False}), 2)
    assert _leaves_equal((online.params, online.readout), (offline.params, offline.readout))
    assert online_sums["updates"] == offline_sums["updates"] < 16  # one per 3-step+ episode


@pytest.mark.parametrize("name", ["bptt", "tbptt"])
def test_end_of_sequence_closes_the_partial_bptt_window(name):
    """Steps of (truncated) BPTT plus the end-of-sequence flush give exact BPTT gradients."""
    # the smoke copy model's shapes (GRU, 3 inputs, 8 units, 2 classes), here at density 0.6
    config = cells.CellConfig("gru", input_size=3, hidden_size=8, density=0.6)
    params, masks = cells.init_cell(config, jax.random.key(0))
    readout = snap_online.init_readout(jax.random.key(1), 8, 2)
    window = 16 if name == "bptt" else 8  # bptt: one window longer than the sequence
    if name == "bptt":  # as main sizes it: the longest copy sequence, so one window covers it
        copy = _config(**{"estimator.name": "bptt"})
        assert snap_online.window_length(copy) == 2 * copy.data.max_length + 1
    estimator = estimators.make_estimator(
        name, config, readout_loss=snap_online.readout_loss, truncation=window
    )
    steps = 11  # one full window of 8, then 3 steps left open at the end of the sequence
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((steps, 3)).astype(np.float32)
    ys = (
        rng.integers(0, 2, steps).astype(np.int32),
        np.linspace(0.5, 1.5, steps, dtype=np.float32),
    )
    state0 = np.zeros((cells.state_size(config),), np.float32)

    def bptt(state, xs, ys):
        return estimators.bptt_gradients(
            config, params, masks, readout, state, xs, ys, snap_online.readout_loss
        )[0]

    @jax.jit
    def ours_and_exact(params, masks, readout, xs, ys):
        """The estimator stepped over the sequence, then flushed; and the exact gradients."""

        def body(carry, x_and_y):
            state, traces = carry
            state, traces, _, _, _ = estimator.step(
                params, masks, readout, state, traces, *x_and_y, None
            )
            return (state, traces), None

        traces = estimator.init_traces(params, masks, readout, state0)
        (_, traces), _ = jax.lax.scan(body, (state0, traces), (xs, ys))
        pending = estimators.truncated_window_grads(config, params, masks, traces)
        ours = (jax.tree.map(jnp.add, traces["grad_cell"], pending), traces["grad_readout"])
        if name == "bptt":  # one window covers the whole sequence: exact BPTT
            return ours, bptt(state0, xs, ys)
        # two windows: BPTT of the first 8 steps plus BPTT of the last 3 from the carried state
        state8 = jax.lax.scan(
            lambda s, x: (cells.cell_step(config, params, masks, s, x),) * 2, state0, xs[:8]
        )[0]
        first = bptt(state0, xs[:8], (ys[0][:8], ys[1][:8]))
        rest = bptt(state8, xs[8:], (ys[0][8:], ys[1][8:]))
        return ours, jax.tree.map(jnp.add, first, rest)

    ours, exact = ours_and_exact(params, masks, readout, xs, ys)
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(exact), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


# One per estimator code path: bptt is tbptt's code with one window of the longest sequence
# (window_length; test_end_of_sequence_closes_the_partial_bptt_window[bptt]); snap2 and snap3 are
# the one SnAp-n code, which trains, evaluates and samples through main in
# test_charlm_trains_evaluates_and_samples (snap2 on a sparse net); blocked snap1 is below.
@pytest.mark.parametrize("name", ["tbptt", "rtrl", "snap1", "uoro"])
def test_every_estimator_trains_evaluates_and_samples_through_main(tmp_path, name):
    workdir = tmp_path / name
    args = [
        "main",
        SMOKE,
        f"--workdir={workdir}",
        f"--config.estimator.name={name}",
        "--config.estimator.truncation=4",
    ]
    assert entry.run(args) == 0
    records = read_jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "train"] == [16, 32, 48, 64]
    assert entry.run([*args, "--mode=eval"]) == 0
    report = json.loads((workdir / "eval.json").read_text())
    assert report["tokens_trained"] == 64 * 4 and report["estimator"] == name
    assert report["copy_length_reached"] >= 1 and 0 <= report["copy_exact_fraction"] <= 1
    assert np.isfinite(report["copy_bits_per_char_at_length"])
    assert entry.run([*args, "--mode=sample"]) == 0
    lines = (workdir / "samples" / "copy_step64.txt").read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith("input ")


@pytest.fixture(scope="module")
def blocked(tmp_path_factory):
    """(args, workdir) of SnAp-1 folded 4 steps at a time (snap_block=4): two chunks through main."""
    workdir = tmp_path_factory.mktemp("blocked") / "run"
    args = ["main", SMOKE, f"--workdir={workdir}", "--config.estimator.snap_block=4"]
    args.append("--config.train.num_steps=32")
    assert entry.run(args) == 0
    return args, workdir


def test_blocked_snap1_trains_and_evaluates_through_main(blocked):
    args, workdir = blocked
    train = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in train] == [16, 32]
    assert all(np.isfinite(r["bits_per_char"]) and r["updates"] > 0 for r in train)
    assert entry.run([*args, "--mode=eval"]) == 0
    report = json.loads((workdir / "eval.json").read_text())
    assert report["estimator"] == "snap1" and report["copy_length_reached"] >= 1


def test_blocked_snap1_trains_like_step_by_step_snap1_updating_every_block(blocked):
    """snap_block = 4 (updates at block ends and sequence ends) = SnAp-1 with update_every = 4.

    The blocked run is main's (the loop draws the init and step keys SnAp's own chunk function
    is given); the step-by-step run is SnAp's chunk function for as many chunks.
    """
    _, workdir = blocked
    two_chunks = {"train.num_steps": 32}
    final = SnAp(_config(**two_chunks, **{"estimator.snap_block": 4}), mode="eval").restore(
        str(workdir)
    )
    assert int(final.step) == 32
    stepwise, stepwise_sums = _train_chunks(_config(**two_chunks, **{"train.update_every": 4}), 2)
    last = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"][-1]
    assert last["updates"] == float(stepwise_sums["updates"]) > 0
    for got, want in zip(
        jax.tree.leaves((final.params, final.readout)),
        jax.tree.leaves((stepwise.params, stepwise.readout)),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)
    stepwise_bits = snap_online.chunk_metrics(jax.device_get(stepwise_sums))["bits_per_char"]
    np.testing.assert_allclose(last["bits_per_char"], stepwise_bits, rtol=1e-4)


def test_charlm_trains_evaluates_and_samples(tmp_path):
    workdir = tmp_path / "lm"
    args = [
        "main",
        "--config=configs/snap.py:charlm_smoke",
        f"--workdir={workdir}",
        "--config.model.density=0.5",
        "--config.estimator.name=snap2",
        "--config.train.num_steps=128",
    ]
    assert entry.run(args) == 0
    bits = [
        r["bits_per_char"] for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"
    ]
    assert bits[-1] < bits[0]
    assert entry.run([*args, "--mode=eval"]) == 0
    report = json.loads((workdir / "eval.json").read_text())
    assert report["split"] == "validation" and report["num_chars"] == 8 * 16
    assert report["tokens_trained"] == 128 * 4
    assert 0 < report["bits_per_char"] < 6 and report["bits_per_char_stderr"] > 0
    # the whole split read in order: 4 streams of (2048 - 1) // 4 characters each
    assert report["full_pass_num_chars"] == 4 * 511 and report["full_pass_streams"] == 4
    assert 0 < report["bits_per_char_full_pass"] < 6
    assert entry.run([*args, "--mode=sample"]) == 0
    lines = (workdir / "samples" / "samples_step128.txt").read_text().splitlines()
    assert len(lines) == 2 and all(line.startswith("the ") and len(line) == 44 for line in lines)


def test_config_errors_are_one_line(tmp_path, capsys):
    base = ["main", SMOKE, f"--workdir={tmp_path / 'w'}"]
    assert entry.run([*base, "--config.estimator.name=rtrl", "--config.model.hidden_size=512"]) == 2
    err = capsys.readouterr().err
    assert "GiB of influence matrices" in err and err.count("\n") == 1
    assert entry.run([*base, "--config.model.cell=rnn"]) == 2
    assert "one of ('vanilla', 'gru', 'lstm')" in capsys.readouterr().err
    assert entry.run([*base, "--config.task=charlm"]) == 2  # data.name is still 'copy'
    assert "data.name" in capsys.readouterr().err
    assert (
        entry.run([*base, "--config.estimator.name=uoro", "--config.estimator.snap_block=8"]) == 2
    )
    assert "estimator.snap_block" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_full_pass_evaluation_carries_the_state_through_each_stream():
    """bits_per_char_full_pass = the mean of -log2 p over a step-by-step read of each stream."""
    from types import SimpleNamespace

    from deepgen.data import char_text
    from deepgen.snap import cells
    from deepgen.snap.online import init_readout, readout_logits
    from experiments.snap.method import evaluate_charlm_full_pass

    vocab, streams = 5, 3
    cell_config = cells.CellConfig("gru", vocab, 6, density=0.5)
    params, masks = cells.init_cell(cell_config, jax.random.key(0))
    readout = init_readout(jax.random.key(1), 6, vocab)
    tokens = np.random.default_rng(0).integers(0, vocab, 40).astype(np.uint8)
    corpus = char_text.CharCorpus(tokens, tuple(bytes([97 + i]) for i in range(vocab)), "x", "y")
    experiment = SimpleNamespace(symbols=corpus.symbols, cell_config=cell_config, masks=masks)
    carry = SimpleNamespace(params=params, readout=readout)
    report = evaluate_charlm_full_pass(experiment, carry, corpus, streams=streams)
    piece = (len(tokens) - 1) // streams
    nats = []
    for s in range(streams):
        state = cells.initial_state(cell_config)
        for t in range(s * piece, (s + 1) * piece):
            x = jax.nn.one_hot(tokens[t], vocab)
            state = cells.cell_step(cell_config, params, masks, state, x)
            logits = readout_logits(readout, cells.hidden(cell_config, state))
            nats.append(-float(jax.nn.log_softmax(logits)[tokens[t + 1]]))
    assert report["full_pass_num_chars"] == streams * piece == len(nats)
    assert report["bits_per_char_full_pass"] == pytest.approx(np.mean(nats) / np.log(2), rel=1e-5)
