"""SAM's tasks (Rae et al. 2016, Sec. 4, Supp. C/D): layouts, padding, streams and curriculum."""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.core.errors import ConfigError
from deepgen.sam import tasks
from tests.data.test_babi import DANIEL_TOKENS, write_babi

OMNIGLOT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "omniglot"
W = 4  # bits per vector in the small cases
COPY = tasks.TaskParams(kind="copy", num_bits=W)
RECALL = tasks.TaskParams(kind="associative_recall", num_bits=W, item_size=2)
SORT = tasks.TaskParams(kind="priority_sort", num_bits=W)  # 16 of 20, as the paper


def draw(seed: int, levels, *, max_level: int, params: tasks.TaskParams, data=None):
    """A jitted batch with one int32 level per sequence (the shapes eval_batches also compiles)."""
    return draw_key(jax.random.key(seed), levels, max_level=max_level, params=params, data=data)


def draw_key(key, levels, *, max_level: int, params: tasks.TaskParams, data=None):
    level_B = jnp.asarray(levels, jnp.int32)
    return tasks.sample_jit(
        key, level=level_B, batch_size=len(level_B), max_level=max_level, params=params, data=data
    )


def as_numpy(batch: tasks.TaskBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.asarray(x) for x in batch)


# ----------------------------------------------------------------------------------------------
# Plain-loop references: every step of one sequence, padded to T
# ----------------------------------------------------------------------------------------------


def copy_reference(bits_LxW: np.ndarray, steps: int):
    length, width = bits_LxW.shape
    inputs, targets, mask = np.zeros((steps, width + 2)), np.zeros((steps, width)), np.zeros(steps)
    inputs[0, width] = 1
    for t in range(length):
        inputs[1 + t, :width] = bits_LxW[t]
        targets[length + 2 + t] = bits_LxW[t]
        mask[length + 2 + t] = 1
    inputs[length + 1, width + 1] = 1
    return inputs, targets, mask


def recall_reference(items_NxSxW: np.ndarray, query: int, steps: int):
    _num_items, size, width = items_NxSxW.shape
    inputs, targets, mask = np.zeros((steps, width + 2)), np.zeros((steps, width)), np.zeros(steps)
    t = 0
    for item in items_NxSxW:
        inputs[t, width] = 1
        inputs[t + 1 : t + 1 + size, :width] = item
        t += size + 1
    inputs[t, width + 1] = 1
    inputs[t + 1 : t + 1 + size, :width] = items_NxSxW[query]
    inputs[t + size + 1, width + 1] = 1
    t += size + 2
    targets[t : t + size] = items_NxSxW[query + 1]
    mask[t : t + size] = 1
    return inputs, targets, mask


def sort_reference(bits_LxW: np.ndarray, priority_L: np.ndarray, num_out: int, steps: int):
    length, width = bits_LxW.shape
    inputs, targets, mask = np.zeros((steps, width + 3)), np.zeros((steps, width)), np.zeros(steps)
    inputs[0, width] = 1
    inputs[1 : length + 1, :width] = bits_LxW
    inputs[1 : length + 1, width + 2] = priority_L
    inputs[length + 1, width + 1] = 1
    order = np.argsort(-priority_L, kind="stable")[:num_out]
    targets[length + 2 : length + 2 + num_out] = bits_LxW[order]
    mask[length + 2 : length + 2 + num_out] = 1
    return inputs, targets, mask


def assert_rows_equal(batch, b: int, reference) -> None:
    for got, expected in zip(as_numpy(batch), reference, strict=True):
        np.testing.assert_array_equal(got[b], expected.astype(np.float32))


# ----------------------------------------------------------------------------------------------
# Hand-built smallest cases
# ----------------------------------------------------------------------------------------------


def test_copy_hand_built_layout():
    params = tasks.TaskParams(kind="copy", num_bits=2)
    assert (tasks.input_size(params), tasks.output_size(params)) == (4, 2)
    inputs, targets, mask = as_numpy(draw(1, [2], max_level=2, params=params))
    (a0, a1), (b0, b1) = inputs[0, 1, :2], inputs[0, 2, :2]
    expected_inputs = [
        [0, 0, 1, 0],  # start flag
        [a0, a1, 0, 0],
        [b0, b1, 0, 0],
        [0, 0, 0, 1],  # stop flag
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
    np.testing.assert_array_equal(inputs[0], expected_inputs)
    np.testing.assert_array_equal(targets[0], [[0, 0]] * 4 + [[a0, a1], [b0, b1]])
    np.testing.assert_array_equal(mask[0], [0, 0, 0, 0, 1, 1])
    assert inputs.dtype == targets.dtype == mask.dtype == np.float32


def test_associative_recall_hand_built_layout():
    params = tasks.TaskParams(kind="associative_recall", num_bits=2, item_size=1)
    inputs, targets, mask = as_numpy(draw(2, [2], max_level=2, params=params))
    x0, x1 = list(inputs[0, 1, :2]), list(inputs[0, 3, :2])
    # Two one-vector items; with two items the query can only be the first.
    expected_inputs = [
        [0, 0, 1, 0],  # item delimiter
        [*x0, 0, 0],
        [0, 0, 1, 0],
        [*x1, 0, 0],
        [0, 0, 0, 1],  # query delimiter
        [*x0, 0, 0],  # the query: item 0
        [0, 0, 0, 1],
        [0, 0, 0, 0],  # answer step
    ]
    np.testing.assert_array_equal(inputs[0], expected_inputs)
    np.testing.assert_array_equal(targets[0], [[0, 0]] * 7 + [x1])
    np.testing.assert_array_equal(mask[0], [0] * 7 + [1])


def test_priority_sort_hand_built_layout():
    params = tasks.TaskParams(kind="priority_sort", num_bits=2, num_outputs=1, sort_inputs=2)
    assert tasks.input_size(params) == 5 and tasks.sequence_length(2, params) == 5
    inputs, targets, mask = as_numpy(draw(3, [2], max_level=2, params=params))
    a, pa = list(inputs[0, 1, :2]), inputs[0, 1, 4]
    b, pb = list(inputs[0, 2, :2]), inputs[0, 2, 4]
    assert min(pa, pb) >= -1 and max(pa, pb) <= 1 and pa != pb
    expected_inputs = [
        [0, 0, 1, 0, 0],  # start flag
        [*a, 0, 0, pa],
        [*b, 0, 0, pb],
        [0, 0, 0, 1, 0],  # stop flag
        [0, 0, 0, 0, 0],
    ]
    np.testing.assert_array_equal(inputs[0], expected_inputs)
    np.testing.assert_array_equal(targets[0], [[0, 0]] * 4 + [a if pa > pb else b])
    np.testing.assert_array_equal(mask[0], [0, 0, 0, 0, 1])


# ----------------------------------------------------------------------------------------------
# Mixed levels in one batch against the references
# ----------------------------------------------------------------------------------------------

COPY_LEVELS = [1, 2, 5, 8, 8, 3]  # every copy batch below has this shape: B = 6, max_level = 8


def test_copy_mixed_levels_match_reference():
    batch = draw(4, COPY_LEVELS, max_level=8, params=COPY)
    steps = tasks.sequence_length(8, COPY)
    assert steps == 18 and batch.inputs_BxTxI.shape == (6, 18, W + 2)
    inputs = np.asarray(batch.inputs_BxTxI)
    for b, length in enumerate(COPY_LEVELS):
        assert_rows_equal(batch, b, copy_reference(inputs[b, 1 : length + 1, :W], steps))
    np.testing.assert_array_equal(np.asarray(batch.mask_BxT).sum(1), COPY_LEVELS)
    # The bits are fair coins: 4 batches of 6 x 8 vectors of 4 bits, sd of the mean 0.018.
    bits = np.concatenate(
        [np.asarray(draw(seed, [8] * 6, max_level=8, params=COPY)[1]) for seed in range(4)]
    )
    assert abs(bits[:, 10:].mean() - 0.5) < 0.08


def test_associative_recall_mixed_levels_match_reference():
    levels = np.random.default_rng(0).integers(2, 7, 256)
    size = RECALL.item_size
    batch = draw(5, levels, max_level=6, params=RECALL)
    steps = tasks.sequence_length(6, RECALL)
    assert steps == (6 + 2) * (size + 1) and batch.inputs_BxTxI.shape == (256, steps, W + 2)
    inputs, targets, _ = as_numpy(batch)
    query_at_6 = collections.Counter()
    for b, count in enumerate(levels):
        items = np.stack(
            [inputs[b, i * (size + 1) + 1 : (i + 1) * (size + 1), :W] for i in range(count)]
        )
        start = count * (size + 1) + 1
        query = inputs[b, start : start + size, :W]
        answer = targets[b, start + size + 1 : start + 2 * size + 1]
        # The query is a copy of an item other than the last, and the target is the next item.
        matches = [
            q
            for q in range(count - 1)
            if np.array_equal(items[q], query) and np.array_equal(items[q + 1], answer)
        ]
        assert matches, b
        assert_rows_equal(batch, b, recall_reference(items, matches[0], steps))
        if count == 6:
            query_at_6.update(matches[:1])
    # Every item but the last is queried (about 10 times each among the ~51 six-item rows).
    assert sorted(query_at_6) == [0, 1, 2, 3, 4]


def test_priority_sort_matches_argsort():
    levels = np.array([20, 20, 1, 7, 13, 20])
    batch = draw(7, levels, max_level=20, params=SORT)
    steps = tasks.sequence_length(20, SORT)
    assert steps == 20 + 2 + 16 and batch.inputs_BxTxI.shape == (6, steps, W + 3)
    inputs = np.asarray(batch.inputs_BxTxI)
    for b, length in enumerate(levels):
        bits, priority = inputs[b, 1 : length + 1, :W], inputs[b, 1 : length + 1, W + 2]
        num_out = int(tasks.num_sorted_outputs(length, SORT))
        assert num_out == int(np.ceil(length * 16 / 20))
        assert_rows_equal(batch, b, sort_reference(bits, priority, num_out, steps))
    priorities = inputs[:2, 1:21, W + 2]
    assert priorities.min() >= -1 and priorities.max() <= 1 and np.unique(priorities).size == 40
    # n(L) <= L at every level, and 16 of 20 as the paper.
    assert all(1 <= tasks.num_sorted_outputs(n, SORT) <= n for n in range(1, 200))
    assert tasks.num_sorted_outputs(20, SORT) == 16


# ----------------------------------------------------------------------------------------------
# Levels, sizes and errors
# ----------------------------------------------------------------------------------------------


def test_sizes_and_level_errors():
    assert [tasks.sequence_length(20, p) for p in (COPY, RECALL, SORT)] == [42, 66, 38]
    assert [tasks.input_size(p) for p in (COPY, RECALL, SORT)] == [W + 2, W + 2, W + 3]
    assert {tasks.output_size(p) for p in (COPY, RECALL, SORT)} == {W}
    assert [tasks.min_level(p) for p in (COPY, RECALL, SORT)] == [1, 2, 1]
    cases = [
        (dict(level=0, max_level=3, params=COPY), "0..0 lie outside 1..3"),
        (dict(level=np.array([1, 4]), max_level=3, params=COPY), "1..4 lie outside 1..3"),
        (dict(level=1, max_level=3, params=RECALL), "outside 2..3"),
        (dict(level=2, max_level=1, params=RECALL), "max_level must be an integer >= 2"),
        (dict(level=np.array([1, 2, 3]), max_level=3, params=COPY), "one per sequence (2,)"),
        (dict(level=1.5, max_level=3, params=COPY), "integers"),
        (dict(level=1, max_level=3, params=tasks.TaskParams(kind="sorting")), "copy"),
        (
            dict(
                level=1, max_level=3, params=tasks.TaskParams(kind="priority_sort", num_outputs=30)
            ),
            "num_outputs=30 exceeds sort_inputs=20",
        ),
    ]
    for kwargs, fragment in cases:
        with pytest.raises(ConfigError) as caught:
            tasks.sample(jax.random.key(0), batch_size=2, **kwargs)
        assert "\n" not in str(caught.value) and fragment in str(caught.value), str(caught.value)
    # Traced levels cannot be checked: they are clipped into min_level..max_level.
    batch = draw(9, [0, 9, 1, 1, 1, 1], max_level=8, params=COPY)
    np.testing.assert_array_equal(np.asarray(batch.mask_BxT).sum(1), [1, 8, 1, 1, 1, 1])


# ----------------------------------------------------------------------------------------------
# Streams and determinism
# ----------------------------------------------------------------------------------------------


def test_determinism_and_separate_streams():
    first = draw_key(tasks.train_key(0, 3), [8] * 6, max_level=8, params=COPY)
    again = draw_key(tasks.train_key(0, 3), [8] * 6, max_level=8, params=COPY)
    other = draw_key(tasks.train_key(0, 4), [8] * 6, max_level=8, params=COPY)
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first.inputs_BxTxI, other.inputs_BxTxI)
    evals = tasks.eval_batches(0, level=8, num_sequences=14, batch_size=6, params=COPY)
    evals_again = tasks.eval_batches(0, level=8, num_sequences=14, batch_size=6, params=COPY)
    assert len(evals) == 3
    for batch, batch_again in zip(evals, evals_again, strict=True):
        np.testing.assert_array_equal(batch.inputs_BxTxI, batch_again.inputs_BxTxI)
    # The eval stream never replays a training draw of the same seed.
    train_rows = {
        row.tobytes()
        for step in range(3)
        for row in np.asarray(
            draw_key(tasks.train_key(0, step), [8] * 6, max_level=8, params=COPY)[0]
        )
    }
    eval_rows = {row.tobytes() for batch in evals for row in np.asarray(batch.inputs_BxTxI)}
    assert len(eval_rows) == 18 and not eval_rows & train_rows
    other_seed = tasks.eval_batches(1, level=8, num_sequences=6, batch_size=6, params=COPY)
    assert not np.array_equal(other_seed[0].inputs_BxTxI, evals[0].inputs_BxTxI)
    # The last batch's extra rows are masked out: 14 sequences of 8 scored steps.
    masks = np.stack([np.asarray(batch.mask_BxT) for batch in evals])
    assert masks.sum() == 14 * 8 and not masks[2, 2:].any()


def test_recall_generalisation_batches():
    batches = tasks.recall_generalisation_batches(
        0, trained_level=3, num_sequences=2, batch_size=2, params=RECALL
    )
    (batch,) = batches
    size = RECALL.item_size
    assert batch.inputs_BxTxI.shape == (2, (30 + 2) * (size + 1), W + 2)
    item_flags = np.asarray(batch.inputs_BxTxI)[:, :, W].sum(1)
    np.testing.assert_array_equal(item_flags, [30, 30])
    np.testing.assert_array_equal(np.asarray(batch.mask_BxT).sum(1), [size, size])
    with pytest.raises(ConfigError, match="associative_recall"):
        tasks.recall_generalisation_batches(
            0, trained_level=3, num_sequences=2, batch_size=2, params=COPY
        )


def recall_floor_reference(batch, level: int, params: tasks.TaskParams) -> np.ndarray:
    """Per sequence: the mean Hamming distance to the answer over the matching items' successors."""
    inputs, targets, mask = as_numpy(batch)
    size, width = params.item_size, params.num_bits
    out = np.zeros(len(inputs))
    for b in range(len(inputs)):
        if mask[b].sum() == 0:
            continue
        items = [inputs[b, i * (size + 1) + 1 : (i + 1) * (size + 1), :width] for i in range(level)]
        start = level * (size + 1) + 1
        query = inputs[b, start : start + size, :width]
        answer = targets[b, start + size + 1 : start + 2 * size + 1]
        wrong = [
            (items[j + 1] != answer).sum()
            for j in range(level - 1)
            if np.array_equal(items[j], query)
        ]
        out[b] = np.mean(wrong)
    return out


def test_recall_floor_errors_against_a_loop_and_the_repeat_probability():
    # 2 vectors of 2 bits: 16 item values, so queries often repeat among 7 items.
    params = tasks.TaskParams(kind="associative_recall", num_bits=2, item_size=2)
    level, count = 7, 4000
    (batch,) = tasks.eval_batches(
        0, level=level, num_sequences=count - 3, batch_size=count, params=params
    )
    floor_B = np.asarray(tasks.recall_floor_errors(batch, level=level, params=params))
    reference_B = recall_floor_reference(batch, level, params)
    np.testing.assert_allclose(floor_B, reference_B, rtol=0, atol=1e-6)
    assert (floor_B[-3:] == 0).all() and (floor_B[:-3] > 0).any()
    # The query's value recurs among the other L - 2 items that have a successor with probability
    # 1 - (1 - 1/16)^(L - 2); a recurrence costs bits unless the successors agree.
    inputs = np.asarray(batch.inputs_BxTxI)[: count - 3, :, :2]
    items = inputs[:, : level * 3].reshape(-1, level, 3, 2)[:, :, 1:].reshape(-1, level, 4)
    query = inputs[:, level * 3 + 1 : level * 3 + 3].reshape(-1, 4)
    repeats = (items[:, :-1] == query[:, None]).all(-1).sum(-1) > 1
    expected = 1 - (1 - 1 / 16) ** (level - 2)
    assert abs(repeats.mean() - expected) < 5 * math.sqrt(expected * (1 - expected) / len(repeats))
    assert (floor_B[: count - 3][~repeats] == 0).all()
    with pytest.raises(ConfigError, match="associative_recall"):
        tasks.recall_floor_errors(batch, level=level, params=COPY)


def test_distinct_recall_items_are_a_uniform_draw_without_replacement():
    # 3 bits, one vector per item: 8 codes, so 8 items are a permutation of them.
    params = tasks.TaskParams(
        kind="associative_recall", num_bits=3, item_size=1, distinct_items=True
    )
    assert tasks.max_allowed_level(params) == 8
    levels = np.array([8] * 300 + [5] * 300)
    batch = draw(3, levels, max_level=8, params=params)
    inputs = as_numpy(batch)[0]
    steps = tasks.sequence_length(8, params)
    first = collections.Counter()
    for b, count in enumerate(levels):
        rows = inputs[b, 1 : count * 2 : 2, :3]
        codes = rows @ np.array([1, 2, 4])
        assert len(set(codes)) == count, (b, codes)
        start = count * 2 + 1
        query = int(np.flatnonzero((rows == inputs[b, start, :3]).all(-1))[0])
        assert_rows_equal(batch, b, recall_reference(rows[:, None], query, steps))
        first[int(codes[0])] += 1
    # The first item is uniform over the 8 codes (600 draws: 75 expected, sd 8.1).
    assert sorted(first) == list(range(8)) and max(abs(n - 75) for n in first.values()) < 5 * 8.1
    (held_out,) = tasks.eval_batches(1, level=8, num_sequences=50, batch_size=50, params=params)
    assert float(tasks.recall_floor_errors(held_out, level=8, params=params).sum()) == 0.0
    with pytest.raises(ConfigError, match="exceeds the 8 distinct items"):
        tasks.sample(jax.random.key(0), level=9, batch_size=2, max_level=9, params=params)
    wide = dataclasses.replace(params, num_bits=9, item_size=2)
    with pytest.raises(ConfigError, match="at most 16"):
        tasks.sample(jax.random.key(0), level=2, batch_size=2, max_level=2, params=wide)


# ----------------------------------------------------------------------------------------------
# Curriculum
# ----------------------------------------------------------------------------------------------


def reference_curriculum(costs, *, h, threshold, decay, cap, min_updates):
    """The rule in plain Python: h after each cost."""
    average, count, history = 0.0, 0, []
    for cost in costs:
        count += 1
        average += (cost - average) * max(1 - decay, 1 / count)
        if count >= min_updates and average < threshold and h < cap:
            h, average, count = min(2 * h, cap), 0.0, 0
        history.append(h)
    return history


def test_curriculum_doubles_below_threshold_and_caps():
    assert tasks.default_min_updates(0.75) == 4 and tasks.default_min_updates(0.0) == 1
    rng = np.random.default_rng(0)
    costs = np.concatenate([rng.uniform(0.5, 3.0, 30), rng.uniform(0.0, 1.2, 60)]).astype(
        np.float32
    )
    update = jax.jit(
        functools.partial(tasks.update_curriculum, threshold=1.0, decay=0.75, max_level_cap=20)
    )
    state = tasks.initial_curriculum(3, params=COPY)
    assert all(leaf.shape == () for leaf in jax.tree.leaves(state))
    history = []
    for cost in costs:
        state = update(state, cost)
        history.append(int(state.max_level))
    expected = reference_curriculum(
        costs.tolist(), h=3, threshold=1.0, decay=0.75, cap=20, min_updates=4
    )
    assert history == expected
    assert history[-1] == 20 and {3, 6, 12, 20} == set(history)  # doubled, then capped
    # A doubling resets the average; no doubling before min_updates costs at one h.
    state = tasks.initial_curriculum(4, params=COPY)
    for step in range(3):
        state = update(state, jnp.float32(0.0))
        assert int(state.max_level) == 4 and int(state.num_updates) == step + 1
    state = update(state, jnp.float32(0.0))
    assert (int(state.max_level), float(state.average_bits), int(state.num_updates)) == (8, 0, 0)
    # Above the threshold nothing moves however long it runs.
    state = tasks.initial_curriculum(4, params=COPY)
    for _ in range(10):
        state = update(state, jnp.float32(5.0))
    assert int(state.max_level) == 4 and float(state.average_bits) == pytest.approx(5.0)
    with pytest.raises(ConfigError, match="decay"):
        tasks.update_curriculum(state, 1.0, threshold=1.0, decay=1.0, max_level_cap=8)


def test_curriculum_levels_uniform_and_padding():
    levels = np.asarray(
        jax.jit(functools.partial(tasks.sample_levels, batch_size=6000, params=RECALL))(
            jax.random.key(10), jnp.int32(7)
        )
    )
    assert levels.dtype == np.int32 and levels.min() >= 2 and levels.max() <= 7
    counts = np.bincount(levels, minlength=8)[2:]
    assert (counts > 0).all()  # every level 2..7 is reachable
    # Uniform: 1000 expected per level, sd about 29.
    assert np.abs(counts - 1000).max() < 150
    assert [tasks.padded_max_level(h, max_level_cap=20) for h in (1, 3, 4, 5, 9, 17, 20)] == [
        1,
        4,
        4,
        8,
        16,
        20,
        20,
    ]
    # A batch drawn at h, padded to the rounded level, passes sample's checks.
    state = tasks.initial_curriculum(5, params=COPY)
    padded = tasks.padded_max_level(int(state.max_level), max_level_cap=20)
    assert padded == 8
    level_B = tasks.sample_levels(jax.random.key(11), state.max_level, batch_size=6, params=COPY)
    assert int(level_B.max()) <= 5
    batch = draw(12, level_B, max_level=padded, params=COPY)
    assert batch.inputs_BxTxI.shape[1] == tasks.sequence_length(8, COPY)
    np.testing.assert_array_equal(np.asarray(batch.mask_BxT).sum(1), np.asarray(level_B))


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------


@jax.jit
def scores(logits, batch):
    return (
        tasks.cost_bits_per_sequence(logits, batch),
        tasks.sequence_errors(logits, batch),
        tasks.scored_outputs(batch),
    )


def test_costs_and_errors():
    batch = draw(13, COPY_LEVELS, max_level=8, params=COPY)
    targets, mask = np.asarray(batch.targets_BxTxO), np.asarray(batch.mask_BxT)
    logits = np.random.default_rng(1).normal(size=targets.shape).astype(np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    bce_bits = -(targets * np.log2(p) + (1 - targets) * np.log2(1 - p))
    cost, errors, scored = scores(jnp.asarray(logits), batch)
    np.testing.assert_allclose(cost, (bce_bits.sum(-1) * mask).sum(1), rtol=1e-5)
    np.testing.assert_array_equal(errors, (((logits > 0) != targets).sum(-1) * mask).sum(1))
    np.testing.assert_array_equal(scored, np.array(COPY_LEVELS) * W)
    # Zero logits cost one bit per scored output bit; confident right logits make no errors.
    np.testing.assert_allclose(scores(jnp.zeros_like(logits), batch)[0], scored, rtol=1e-6)
    perfect = jnp.asarray(np.where(targets > 0, 20.0, -20.0), jnp.float32)
    assert float(scores(perfect, batch)[1].sum()) == 0
    # Classes: cross-entropy in bits and wrong argmax at the masked steps only.
    classes = tasks.TaskBatch(
        jnp.zeros((1, 3, 1)), jnp.asarray([[1, 0, 2]], jnp.int32), jnp.asarray([[1.0, 0.0, 1.0]])
    )
    probs = jnp.asarray([[[0.25, 0.5, 0.25], [0.1, 0.1, 0.8], [0.5, 0.25, 0.25]]])
    cost, errors, scored = scores(jnp.log(probs), classes)
    np.testing.assert_allclose(cost, [1 + 2], rtol=1e-5)  # -log2(0.5) - log2(0.25)
    np.testing.assert_array_equal(errors, [1])
    np.testing.assert_array_equal(scored, [2])


# ----------------------------------------------------------------------------------------------
# Omniglot one-shot episodes
# ----------------------------------------------------------------------------------------------

OMNIGLOT = tasks.TaskParams(kind="omniglot", instances_per_class=3, num_labels=8)


@pytest.fixture(scope="module")
def omniglot_data() -> tasks.OmniglotData:
    if not (OMNIGLOT_DIR / "images_background_small1.zip").exists():
        pytest.skip(reason=f"the small Omniglot zips are not in {OMNIGLOT_DIR}")
    return tasks.load_omniglot_data("train", data_dir=OMNIGLOT_DIR, params=OMNIGLOT)


def test_omniglot_episodes(omniglot_data):
    data = omniglot_data
    pixels = 20 * 20
    assert data.images_NxD.shape[1] == pixels and tasks.input_size(OMNIGLOT) == pixels + 8
    assert tasks.is_classification(OMNIGLOT) and tasks.output_size(OMNIGLOT) == 8
    class_of_image = {
        row.tobytes(): int(c)
        for row, c in zip(np.asarray(data.images_NxD), np.asarray(data.class_ids_N), strict=True)
    }
    levels = np.array([5, 2, 5, 5, 4, 5, 3, 5])
    batch = draw(14, levels, max_level=5, params=OMNIGLOT, data=data)
    inputs, labels, mask = as_numpy(batch)
    assert inputs.shape == (8, 15, pixels + 8) and labels.dtype == np.int32
    first_labels = []
    for b, level in enumerate(levels):
        real = level * 3
        np.testing.assert_array_equal(mask[b], np.arange(15) < real)
        assert not inputs[b, real:].any() and not labels[b, real:].any()
        # The label input at step t is the one-hot target of step t - 1 (zeros at step 0).
        one_hot = inputs[b, :real, pixels:]
        assert not one_hot[0].any()
        np.testing.assert_array_equal(one_hot[1:].argmax(-1), labels[b, : real - 1])
        np.testing.assert_array_equal(one_hot[1:].sum(-1), np.ones(real - 1))
        # level characters, 3 distinct drawings each, one label each: a permutation of 0..level-1.
        characters = [class_of_image[row.tobytes()] for row in inputs[b, :real, :pixels]]
        assert len({row.tobytes() for row in inputs[b, :real, :pixels]}) == real
        counts = collections.Counter(characters)
        assert len(counts) == level and set(counts.values()) == {3}
        label_of = {c: int(label) for c, label in zip(characters, labels[b], strict=False)}
        assert sorted(label_of.values()) == list(range(level))
        assert all(label_of[c] == label for c, label in zip(characters, labels[b], strict=False))
        first_labels.append(int(labels[b, 0]))
    # Labels are permuted per episode: the first image's label is not always the same.
    assert len(set(first_labels)) > 1
    evals = tasks.eval_batches(
        0, level=5, num_sequences=8, batch_size=8, params=OMNIGLOT, data=data
    )
    assert evals[0].inputs_BxTxI.shape == (8, 15, pixels + 8)
    np.testing.assert_array_equal(np.asarray(evals[0].mask_BxT), np.ones((8, 15)))
    with pytest.raises(ConfigError, match="num_labels=8"):
        tasks.sample(
            jax.random.key(0), level=9, batch_size=1, max_level=9, params=OMNIGLOT, data=data
        )
    with pytest.raises(ConfigError, match="OmniglotData"):
        tasks.sample(jax.random.key(0), level=2, batch_size=1, max_level=2, params=OMNIGLOT)


# ----------------------------------------------------------------------------------------------
# bAbI (joint over the 20 tasks)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def babi(tmp_path_factory):
    return tasks.load_babi_arrays(str(write_babi(tmp_path_factory.mktemp("babi"))))


def test_babi_sampling_and_eval(babi):
    data, arrays = babi
    train = arrays["train"]
    assert data.max_tokens == 28 and train["tokens"].shape == (22, 28)  # whole stories kept
    batch = jax.jit(
        functools.partial(tasks.sample_babi, batch_size=256, vocab_size=data.vocab_size)
    )(jax.random.key(15), train)
    inputs, targets, mask = as_numpy(batch)
    assert inputs.shape == (256, 28, data.vocab_size) and targets.shape == (256, 28)
    # Tasks 2-18 and 20 share one story and question (their answers differ): token rows map to
    # the set of questions they can be.
    rows = collections.defaultdict(set)
    for i, row in enumerate(np.asarray(train["tokens"], np.int32)):
        rows[row.tobytes()].add(i)
    drawn = set()
    for b in range(256):
        tokens = np.where(inputs[b].sum(-1) > 0, inputs[b].argmax(-1), 0).astype(np.int32)
        candidates = rows[tokens.tobytes()]  # a real question
        length = int(train["lengths"][min(candidates)])
        assert tokens[length - 1] == data.answer_id and not inputs[b, length:].any()
        np.testing.assert_array_equal(mask[b], np.arange(28) == length - 1)
        answer = int(targets[b, length - 1])
        assert targets[b].sum() == answer
        assert any(train["answers"][i] == answer for i in candidates)
        drawn.add((tokens.tobytes(), answer))
    # Joint training: questions are drawn from all tasks; the 22 training questions are 6
    # distinct (story + question, answer) pairs, and 256 uniform draws see every one.
    assert len(drawn) == 6
    assert [data.vocab[i] for i in np.asarray(train["tokens"][1]) if i] == DANIEL_TOKENS
    # Evaluation: every test question once, with its task index; padded rows masked out.
    test = arrays["test"]
    evals = tasks.babi_eval_batches(test, batch_size=8, vocab_size=data.vocab_size)
    assert len(evals) == 3
    task_ids = np.concatenate([ids for _, ids in evals])
    np.testing.assert_array_equal(task_ids[:20], np.arange(20))
    np.testing.assert_array_equal(task_ids[20:], [-1] * 4)
    masks = np.concatenate([np.asarray(batch.mask_BxT) for batch, _ in evals])
    np.testing.assert_array_equal(masks.sum(1), [1] * 20 + [0] * 4)
    answers = np.concatenate([np.asarray(batch.targets_BxTxO).sum(1) for batch, _ in evals])
    np.testing.assert_array_equal(answers[:20], np.asarray(test["answers"]))
