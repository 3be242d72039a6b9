"""Task families of the automated curriculum (n-gram text, repeat copy, bAbI): data and batches."""

from __future__ import annotations

import collections
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from deepgen.core.errors import ConfigError, DataError
from deepgen.curriculum import tasks
from deepgen.data import text8
from deepgen.data.babi import load_babi

# The bAbI writer lives with the parsing tests; test_curriculum_method.py imports it from here.
from tests.data.test_babi import DANIEL_TOKENS, write_babi

CORPUS_CHARS = 20_000
NGRAM_SEQ_LEN = 150
NGRAM_TRAIN_SEQS = 200  # 30,000 generated characters per order
NGRAM_TEST_SEQS = 20
# z-score bound for frequency checks: over at most 27 x 27 cells, P(any |z| > 5) < 729 * 5.7e-7
# < 0.001 under the normal approximation, used only where the expected count is >= 10.
Z_BOUND = 5.0
MIN_EXPECTED = 10.0


def assert_one_line(error: BaseException, *fragments: str) -> None:
    """The message is one line and mentions every fragment."""
    message = str(error)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def ngram_config(**data_overrides) -> ConfigDict:
    """A small n-gram config: the first 20,000 characters of the embedded text."""
    data = dict(
        dir="",
        source="auto",
        max_order=10,
        chars_per_task=NGRAM_TRAIN_SEQS * NGRAM_SEQ_LEN,
        test_chars_per_task=NGRAM_TEST_SEQS * NGRAM_SEQ_LEN + 7,  # remainders are dropped
        seq_len=NGRAM_SEQ_LEN,
        context_len=50,
        corpus_chars=CORPUS_CHARS,
    )
    data.update(data_overrides)
    return ConfigDict({"task": "ngram", "seed": 3, "data": data})


def jit_sample(family: tasks.TaskFamily):
    """family.sample jitted with batch_size and split static (task traced)."""
    return jax.jit(family.sample, static_argnames=("batch_size", "split"))


def z_scores(counts_C: np.ndarray, total: float, probs_C: np.ndarray) -> np.ndarray:
    """(observed - expected) / binomial sd for cells whose expected count is >= MIN_EXPECTED."""
    expected_C = total * probs_C
    keep = expected_C >= MIN_EXPECTED
    sd_C = np.sqrt(total * probs_C * (1 - probs_C))
    return (counts_C[keep] - expected_C[keep]) / sd_C[keep]


# ----------------------------------------------------------------------------------------------
# n-gram family
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_N() -> np.ndarray:
    return text8.load_text8("train").tokens_N[:CORPUS_CHARS]


@pytest.fixture(scope="module")
def ngram_family() -> tasks.TaskFamily:
    return tasks.build_family(ngram_config())


@pytest.fixture(scope="module")
def ngram_sample(ngram_family):
    return jit_sample(ngram_family)


def window_keys(sequences_SxL: np.ndarray, width: int) -> np.ndarray:
    """Base-27 keys of every width-character window inside each sequence (not across them)."""
    windows = np.lib.stride_tricks.sliding_window_view(sequences_SxL, width, axis=1)
    return (windows.astype(np.int64) @ (27 ** np.arange(width - 1, -1, -1))).reshape(-1)


def test_ngram_family_fields(ngram_family):
    family = ngram_family
    assert family.kind == "ngram" and family.likelihood == "categorical"
    assert family.task_names == tuple(f"{n}-gram" for n in range(11))
    assert family.num_tasks == 11 and family.target_task == 10
    assert (family.input_size, family.output_size, family.seq_len) == (27, 27, 149)
    assert family.unit == "character"
    assert "first 20,000 characters" in family.data_source
    assert family.train_data["sequences"].shape == (11, NGRAM_TRAIN_SEQS, NGRAM_SEQ_LEN)
    assert family.test_data["sequences"].shape == (11, NGRAM_TEST_SEQS, NGRAM_SEQ_LEN)
    assert family.train_data["sequences"].dtype == np.uint8


@pytest.mark.parametrize("order", [1, 2, 5, 10])
def test_ngram_sequences_only_contain_corpus_grams(ngram_family, corpus_N, order):
    corpus_grams = np.unique(tasks.ngram_keys(corpus_N, order))
    for data in (ngram_family.train_data, ngram_family.test_data):
        generated = window_keys(data["sequences"][order], order + 1)
        assert np.isin(generated, corpus_grams).all()
    if order == 1:  # the check has power: an order-1 chain makes 5-grams the corpus never had
        generated_5 = window_keys(ngram_family.train_data["sequences"][1], 5)
        assert not np.isin(generated_5, np.unique(tasks.ngram_keys(corpus_N, 4))).all()


def test_ngram_order1_transitions_match_corpus(ngram_family, corpus_N):
    # Each departure from a character is an independent draw from p(. | a), so given n_a visits
    # the next-character counts are multinomial(n_a, p(. | a)): binomial z-scores per cell.
    corpus_pairs = np.zeros((27, 27))
    np.add.at(corpus_pairs, (corpus_N[:-1], corpus_N[1:]), 1)
    p_next = corpus_pairs / corpus_pairs.sum(1, keepdims=True).clip(1)
    sequences = ngram_family.train_data["sequences"][1]
    generated_pairs = np.zeros((27, 27))
    np.add.at(generated_pairs, (sequences[:, :-1], sequences[:, 1:]), 1)
    checked = 0
    for a in range(27):
        visits = generated_pairs[a].sum()
        z = z_scores(generated_pairs[a], visits, p_next[a])
        assert np.all(np.abs(z) < Z_BOUND), (text8.ALPHABET[a], z)
        checked += z.size
    assert checked > 150  # most common transitions were tested


def test_ngram_order0_is_unigram(ngram_family, corpus_N):
    unigram = np.bincount(corpus_N, minlength=27) / len(corpus_N)
    generated = ngram_family.train_data["sequences"][0].reshape(-1)
    z = z_scores(np.bincount(generated, minlength=27), generated.size, unigram)
    assert z.size >= 20 and np.all(np.abs(z) < Z_BOUND), z


def test_ngram_deterministic_and_train_test_differ(ngram_family, corpus_N):
    train, test = ngram_family.train_data["sequences"], ngram_family.test_data["sequences"]
    sorted_keys = tasks.ngram_sorted_keys(corpus_N, 3)
    for split, data in (("train", train), ("test", test)):
        again = tasks.sample_ngram_sequences(
            sorted_keys,
            3,
            num_seqs=data.shape[1],
            num_chars=NGRAM_SEQ_LEN,
            rng=tasks.ngram_split_rng(3, 3, split),
        )
        np.testing.assert_array_equal(again, data[3])
    for order in range(11):
        assert not np.array_equal(train[order, :NGRAM_TEST_SEQS], test[order])
    for order in range(4):  # low orders: no held-out sequence is a training sequence
        train_rows = {row.tobytes() for row in train[order]}
        assert not any(row.tobytes() in train_rows for row in test[order])
    other_seed = tasks.sample_ngram_sequences(
        sorted_keys, 3, num_seqs=5, num_chars=20, rng=tasks.ngram_split_rng(4, 3, "train")
    )
    assert not np.array_equal(other_seed, train[3, :5, :20])


def test_ngram_dead_end_restarts_chain():
    # 'z' occurs only as the corpus's last character: its context has no continuation.
    corpus = text8.encode("ab ab abz")
    sorted_keys = tasks.ngram_sorted_keys(corpus, 1)
    sequences = tasks.sample_ngram_sequences(
        sorted_keys, 1, num_seqs=300, num_chars=8, rng=np.random.default_rng(0)
    )
    z = text8.encode("z")[0]
    assert not (sequences[:, :-1] == z).any()  # a chain that reached 'z' was started over
    assert (sequences[:, -1] == z).any()
    assert np.isin(window_keys(sequences, 2), tasks.ngram_keys(corpus, 1)).all()


def test_ngram_batch_layout(ngram_family, ngram_sample):
    sequences = ngram_family.train_data["sequences"]
    shapes = set()
    for order in (0, 3, 10):
        batch = ngram_sample(jax.random.key(order), jnp.int32(order), batch_size=6)
        shapes.add(tuple((x.shape, str(x.dtype)) for x in batch))
        inputs = np.asarray(batch.inputs_BxTxI)
        chars = np.concatenate([inputs.argmax(-1), np.asarray(batch.targets)[:, -1:]], axis=1)
        np.testing.assert_array_equal(inputs.sum(-1), 1.0)  # one-hot
        np.testing.assert_array_equal(chars[:, 1:], batch.targets)
        rows = {row.tobytes() for row in sequences[order]}
        assert all(row.astype(np.uint8).tobytes() in rows for row in chars)
        weights = np.asarray(batch.weights_BxT)
        np.testing.assert_array_equal(weights.sum(1), NGRAM_SEQ_LEN - 50)
        assert not weights[:, :49].any() and weights[:, 49:].all()  # step 49 predicts char 50
        np.testing.assert_array_equal(batch.lengths_B, NGRAM_SEQ_LEN)
    assert shapes == {
        (
            ((6, 149, 27), "float32"),
            ((6, 149), "int32"),
            ((6, 149), "float32"),
            ((6,), "float32"),
        )
    }
    test_batch = ngram_sample(jax.random.key(9), jnp.int32(2), batch_size=6, split="test")
    test_rows = {row.tobytes() for row in ngram_family.test_data["sequences"][2, :, 1:]}
    assert all(row.astype(np.uint8).tobytes() in test_rows for row in np.asarray(test_batch[1]))


def test_ngram_entropy_matches_brute_force():
    text = "the cat sat on the mat and the rat ate the hat"
    tokens = text8.encode(text)
    for order in range(4):
        pairs = collections.Counter(
            (text[i : i + order], text[i + order]) for i in range(len(text) - order)
        )
        contexts = collections.Counter()
        for (context, _), count in pairs.items():
            contexts[context] += count
        total = sum(pairs.values())
        expected = -sum(
            count / total * np.log(count / contexts[context])
            for (context, _), count in pairs.items()
        )
        assert tasks.ngram_entropy_nats(tokens, order) == pytest.approx(expected, rel=1e-12)
    assert tasks.ngram_entropy_nats(tokens, 0) > tasks.ngram_entropy_nats(tokens, 1)


def test_ngram_config_errors():
    with pytest.raises(ConfigError) as caught:
        tasks.build_family(ngram_config(context_len=150))
    assert_one_line(caught.value, "data.context_len")
    with pytest.raises(ConfigError) as caught:
        tasks.build_family(ngram_config(chars_per_task=10))
    assert_one_line(caught.value, "data.chars_per_task")


# ----------------------------------------------------------------------------------------------
# Repeat copy
# ----------------------------------------------------------------------------------------------

RC_LENGTH, RC_REPEATS, RC_BITS = 4, 3, 5


def repeat_copy_config(max_length: int, max_repeats: int, num_bits: int) -> ConfigDict:
    data = dict(dir="", source="auto", max_length=max_length, max_repeats=max_repeats)
    data["num_bits"] = num_bits
    return ConfigDict({"task": "repeat_copy", "seed": 0, "data": data})


@pytest.fixture(scope="module")
def repeat_copy_family() -> tasks.TaskFamily:
    return tasks.build_family(repeat_copy_config(RC_LENGTH, RC_REPEATS, RC_BITS))


def test_repeat_copy_matches_numpy_reference(repeat_copy_family):
    sample = jit_sample(repeat_copy_family)
    shapes = set()
    for task in range(repeat_copy_family.num_tasks):
        length, repeats = tasks.repeat_copy_task_params(task, max_repeats=RC_REPEATS)
        batch = sample(jax.random.key(task), jnp.int32(task), batch_size=3)
        shapes.add(tuple((x.shape, str(x.dtype)) for x in batch))
        for b in range(3):
            vectors = np.asarray(batch.inputs_BxTxI[b, :length, :RC_BITS])
            inputs, targets, weights, steps = tasks.repeat_copy_example(
                vectors, repeats, max_length=RC_LENGTH, max_repeats=RC_REPEATS
            )
            np.testing.assert_array_equal(batch.inputs_BxTxI[b], inputs)
            np.testing.assert_array_equal(batch.targets[b], targets)
            np.testing.assert_array_equal(batch.weights_BxT[b], weights)
            assert batch.lengths_B[b] == steps == length + 1 + length * repeats + 1
            assert weights.sum() == length * repeats + 1
            assert set(np.unique(vectors)) <= {0.0, 1.0}
    assert len(shapes) == 1
    steps = tasks.repeat_copy_seq_len(RC_LENGTH, RC_REPEATS)
    assert shapes.pop() == (
        ((3, steps, RC_BITS + 2), "float32"),
        ((3, steps, RC_BITS + 1), "float32"),
        ((3, steps), "float32"),
        ((3,), "float32"),
    )
    # The bits are fair coin flips: 4 x 5 x 64 draws, mean within 5 sd of 1/2.
    many = sample(jax.random.key(99), jnp.int32(repeat_copy_family.target_task), batch_size=64)
    bits = np.asarray(many.inputs_BxTxI[:, :RC_LENGTH, :RC_BITS])
    assert abs(bits.mean() - 0.5) < 5 * 0.5 / np.sqrt(bits.size)


def test_repeat_copy_reference_layout():
    vectors = np.array([[1, 0], [0, 1]], np.float32)
    inputs, targets, weights, steps = tasks.repeat_copy_example(
        vectors, 2, max_length=3, max_repeats=4
    )
    assert inputs.shape == (3 + 2 + 12, 4) and targets.shape == (17, 3) and steps == 8
    np.testing.assert_array_equal(inputs[:3], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0.5]])
    assert not inputs[3:].any()
    np.testing.assert_array_equal(
        targets[:8], [[0, 0, 0]] * 3 + [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    )
    np.testing.assert_array_equal(weights, [0, 0, 0, 1, 1, 1, 1, 1] + [0] * 9)


def test_repeat_copy_task_mapping():
    family = tasks.build_family(repeat_copy_config(13, 13, 8))
    assert family.num_tasks == 169 and family.seq_len == 184
    assert (family.input_size, family.output_size, family.likelihood) == (10, 9, "bernoulli")
    assert family.train_data is None and family.test_data is None
    assert family.unit == "output step"
    assert family.task_names[family.target_task] == "len13_rep13"
    for task, name in enumerate(family.task_names):
        length, repeats = tasks.repeat_copy_task_params(task, max_repeats=13)
        assert name == f"len{length}_rep{repeats}"
        assert tasks.repeat_copy_task_index(length, repeats, max_repeats=13) == task
    shapes = jax.eval_shape(lambda task: family.sample(jax.random.key(0), task, 2), jnp.int32(0))
    assert shapes.inputs_BxTxI.shape == (2, 184, 10) and shapes.targets.shape == (2, 184, 9)


# ----------------------------------------------------------------------------------------------
# bAbI
# ----------------------------------------------------------------------------------------------


def babi_config(data_dir: Path | str, max_tokens: int = 32) -> ConfigDict:
    data = dict(dir=str(data_dir), source="auto", max_tokens=max_tokens)
    return ConfigDict({"task": "babi", "seed": 0, "data": data})


@pytest.fixture(scope="module")
def babi_dir(tmp_path_factory) -> Path:
    return write_babi(tmp_path_factory.mktemp("babi"))


@pytest.fixture(scope="module")
def babi_family(babi_dir) -> tasks.TaskFamily:
    return tasks.build_family(babi_config(babi_dir))


def decode_row(family: tasks.TaskFamily, ids) -> list[str]:
    vocab = family.params["vocab"]
    return [vocab[i] for i in np.asarray(ids) if i != 0]


def test_babi_family_fields_and_tokens(babi_family, babi_dir):
    """The family wraps deepgen.data.babi (whose parsing tests are in tests/data/test_babi.py)."""
    family = babi_family
    assert family.task_names == tasks.BABI_TASK_NAMES and family.target_task == 19
    vocab = family.params["vocab"]
    assert vocab[:2] == ("<pad>", "<answer>") and list(vocab[2:]) == sorted(vocab[2:])
    assert family.params["answer_id"] == 1 and family.params["pad_id"] == 0
    assert family.input_size == family.output_size == len(vocab)
    assert (family.seq_len, family.unit, family.likelihood) == (32, "answer", "categorical")
    data = load_babi(str(babi_dir), max_tokens=32)
    assert data.vocab == vocab and family.data_source == data.description
    for split, arrays in (("train", family.train_data), ("test", family.test_data)):
        for name, array in data.arrays[split].items():
            np.testing.assert_array_equal(arrays[name], array)
    assert decode_row(family, family.train_data["tokens"][1]) == DANIEL_TOKENS


def test_babi_batch(babi_family):
    sample = jit_sample(babi_family)
    data = babi_family.train_data
    vocab_size = babi_family.input_size
    for task in (0, 18):
        batch = sample(jax.random.key(task), jnp.int32(task), batch_size=8)
        assert batch.inputs_BxTxI.shape == (8, 32, vocab_size)
        assert batch.targets.shape == (8, 32) and batch.targets.dtype == jnp.int32
        start, count = data["offsets"][task], data["counts"][task]
        rows = {data["tokens"][i].tobytes(): i for i in range(start, start + count)}
        inputs = np.asarray(batch.inputs_BxTxI)
        for b in range(8):
            length = int(batch.lengths_B[b])
            tokens = np.where(inputs[b].sum(-1) > 0, inputs[b].argmax(-1), 0)
            assert not inputs[b, length:].any()  # PAD is an all-zero vector
            index = rows[tokens.astype(data["tokens"].dtype).tobytes()]  # a question of this task
            assert length == data["lengths"][index]
            assert tokens[length - 1] == babi_family.params["answer_id"]
            expected_weights = np.zeros(32)
            expected_weights[length - 1] = 1
            np.testing.assert_array_equal(batch.weights_BxT[b], expected_weights)
            assert batch.targets[b, length - 1] == data["answers"][index]
            assert np.asarray(batch.targets[b]).sum() == data["answers"][index]
    test_batch = sample(jax.random.key(5), jnp.int32(1), batch_size=4, split="test")
    test_tokens = np.asarray(test_batch.inputs_BxTxI).argmax(-1)
    assert babi_family.params["vocab"][test_tokens[0, 3]] == "blue"


def test_babi_family_reports_data_errors(tmp_path, babi_dir):
    # The longest question (qa19: 11 words) plus ANSWER must fit.
    with pytest.raises(ConfigError) as caught:
        tasks.build_family(babi_config(babi_dir, max_tokens=11))
    assert_one_line(caught.value, "data.max_tokens=11", "12 tokens")
    with pytest.raises(ConfigError) as caught:
        tasks.build_family(babi_config(babi_dir, max_tokens=1))
    assert_one_line(caught.value, "data.max_tokens", ">= 2")
    with pytest.raises(DataError) as caught:
        tasks.build_family(babi_config(tmp_path / "absent"))
    assert_one_line(caught.value, "data.dir", "bAbI v1.2", "cannot be downloaded")


def test_babi_prefers_en_10k(tmp_path):
    write_babi(tmp_path / "en")
    write_babi(tmp_path / "en-10k")
    family = tasks.build_family(babi_config(tmp_path))
    assert "(en-10k)" in family.data_source


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------


def test_build_family_dispatch(ngram_family, repeat_copy_family, babi_family):
    assert [f.kind for f in (ngram_family, repeat_copy_family, babi_family)] == list(tasks.KINDS)
    with pytest.raises(ConfigError) as caught:
        tasks.build_family(ConfigDict({"task": "sorting", "seed": 0, "data": {}}))
    assert_one_line(caught.value, "sorting", "ngram")
