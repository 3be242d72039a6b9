"""Copy task and char-LM data for SnAp: targets, curriculum, crops and the bits unit."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.core.errors import DataError
from deepgen.data import char_text, copy_task, text8
from deepgen.snap import online as snap_online


def _run_episode(episode, num_symbols):
    @jax.jit
    def token_and_advance(episode):
        return copy_task.episode_token(episode, num_symbols=num_symbols), copy_task.advance(episode)

    rows = []
    ended = False
    while not ended:
        row, (episode, ended) = token_and_advance(episode)
        rows.append(row)
        ended = bool(ended)
    return [np.stack([np.asarray(r[i]) for r in rows], axis=1) for i in range(3)]


def test_copy_episode_matches_a_loop_free_construction():
    num_symbols, max_length = 3, 9
    new_episode = functools.partial(
        copy_task.new_episode, batch=5, max_length=max_length, num_symbols=num_symbols, spread=4
    )
    episode = jax.jit(new_episode)(jax.random.key(0), jnp.asarray(7))
    inputs_BxTxI, targets_BxT, weights_BxT = _run_episode(episode, num_symbols)
    assert inputs_BxTxI.shape == (5, 15, num_symbols + 1)  # 2 L + 1 steps for every stream
    for b in range(5):
        length = int(episode.lengths_B[b])
        assert 3 <= length <= 7
        string = np.asarray(episode.symbols_BxL[b, :length])
        x, _, w = copy_task.copy_example(string, num_symbols=num_symbols)
        steps = 2 * length + 1
        np.testing.assert_array_equal(inputs_BxTxI[b, :steps], x)
        np.testing.assert_array_equal(weights_BxT[b, :steps], w)
        # the loss counts exactly the output part, whose targets are the string itself
        np.testing.assert_array_equal(targets_BxT[b, :steps][w > 0], string)
        assert np.all(inputs_BxTxI[b, steps:] == 0) and np.all(weights_BxT[b, steps:] == 0)


def test_copy_example_layout():
    x, y, w = copy_task.copy_example(np.array([1, 0, 1]), num_symbols=2)
    np.testing.assert_array_equal(x.argmax(1)[:4], [1, 0, 1, 2])  # string, then delimiter
    assert np.all(x[4:] == 0)
    np.testing.assert_array_equal(w, [0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(y[4:], [1, 0, 1])


def test_curriculum_grows_exactly_when_the_average_falls_below_threshold():
    decay, threshold, num_symbols = 0.5, 0.15, 2
    rng = np.random.default_rng(0)
    losses = np.concatenate([rng.uniform(0.0, 0.4, 40), np.zeros(10)]).astype(np.float32)
    curriculum = copy_task.initial_curriculum(num_symbols)
    update = jax.jit(
        lambda c, bits: copy_task.update_curriculum(
            c, bits, num_symbols=num_symbols, max_length=5, decay=decay, threshold=threshold
        )
    )
    length, average = 1, 1.0  # starts at log2(2) bits
    for bits in losses:
        curriculum = update(curriculum, bits)
        average = decay * average + (1 - decay) * float(bits)
        if average < threshold and length < 5:
            length, average = length + 1, 1.0
        assert int(curriculum.length) == length
        assert float(curriculum.average_bits) == pytest.approx(average, abs=1e-6)
    assert length == 5  # grew several times, then stopped at max_length


def test_sampled_lengths_stay_in_the_window():
    lengths = copy_task.sample_lengths(jax.random.key(1), jnp.asarray(9), batch=4000, spread=5)
    assert set(np.unique(np.asarray(lengths))) == {4, 5, 6, 7, 8, 9}
    short = copy_task.sample_lengths(jax.random.key(1), jnp.asarray(2), batch=100, spread=5)
    assert set(np.unique(np.asarray(short))) == {1, 2}


def test_text8_corpus_splits_are_the_text8_splits():
    for split in ("train", "validation"):
        corpus = char_text.load_char_corpus("text8", split)
        np.testing.assert_array_equal(corpus.tokens_N, text8.load_text8(split).tokens_N)
        assert corpus.vocab_size == 27 and corpus.split == split
    assert char_text.decode(text8.encode("the cat"), corpus.symbols) == "the cat"


def test_training_crops_come_from_the_given_split():
    train = char_text.load_char_corpus("text8", "train").tokens_N
    tokens = jnp.asarray(train)
    episode = char_text.new_crop_episode(
        jax.random.key(3), num_tokens=len(train), batch=6, seq_len=12
    )
    starts = np.asarray(episode.starts_B)
    assert np.all(starts >= 0) and np.all(starts + 13 <= len(train))
    for p in range(12):
        x, y, w = char_text.crop_token(episode, tokens, vocab_size=27)
        np.testing.assert_array_equal(np.asarray(x).argmax(1), train[starts + p])
        np.testing.assert_array_equal(np.asarray(y), train[starts + p + 1])
        assert np.all(np.asarray(w) == 1)
        episode, ended = char_text.advance(episode)
        assert bool(ended) == (p == 11)


def test_bits_conversion():
    assert char_text.nats_to_bits(math.log(2.0)) == pytest.approx(1.0)
    readout = {"w": np.zeros((4, 27), np.float32), "b": np.zeros(27, np.float32)}
    readout_loss = jax.jit(snap_online.readout_loss)
    nats = readout_loss(readout, np.ones(4, np.float32), (np.int32(5), np.float32(1.0)))
    assert char_text.nats_to_bits(float(nats)) == pytest.approx(math.log2(27), rel=1e-6)
    zero = readout_loss(readout, np.ones(4, np.float32), (np.int32(5), np.float32(0.0)))
    assert float(zero) == 0.0
    sums = {
        "nats": 6 * math.log(2.0),
        "weight": 3.0,
        "updates": 2.0,
        "grad_norm": 1.0,
        "curriculum_length": 4.0,
    }
    assert snap_online.chunk_metrics(sums)["bits_per_char"] == pytest.approx(2.0)


def test_wikitext_vocabulary_comes_from_the_training_bytes(tmp_path):
    (tmp_path / "wiki.train.raw").write_bytes("ab cab é\n".encode())
    (tmp_path / "wiki.valid.raw").write_bytes(b"abz c")
    (tmp_path / "wiki.test.raw").write_bytes(b"cab")
    train = char_text.load_char_corpus("wikitext103", "train", data_dir=str(tmp_path))
    valid = char_text.load_char_corpus("wikitext103", "validation", data_dir=str(tmp_path))
    # bytes of "ab cab é\n": \n, space, a, b, c and the two UTF-8 bytes of é; plus unknown
    assert train.vocab_size == 8
    assert char_text.decode(train.tokens_N, train.symbols) == "ab cab é\n"
    assert int(valid.tokens_N[2]) == 7  # z never occurs in training: the unknown id
    assert char_text.decode(valid.tokens_N, valid.symbols) == "ab\N{REPLACEMENT CHARACTER} c"


def test_wikitext_without_files_is_a_one_line_data_error(tmp_path):
    with pytest.raises(DataError, match=r"wiki\.train\.raw"):
        char_text.load_char_corpus("wikitext103", "train", data_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"needs data\.dir"):
        char_text.load_char_corpus("wikitext103", "train", data_dir="")
