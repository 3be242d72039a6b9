"""ByteNet's maths: cached decoding equals naive decoding, causality, the receptive field, the
multiplicative unit, dynamic unfolding, exact beam search on a tiny vocabulary, the losses, BLEU."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.bytenet import decoding, losses
from deepgen.bytenet import model as bytenet
from experiments.bytenet.method import _bleu

BOS, EOS = 1, 2


def make_lm(vocab: int = 12, blocks: int = 4, unit: str = "mu") -> tuple:
    net = bytenet.ByteNet(vocab_size=vocab, hidden=6, decoder_blocks=blocks, unit=unit)
    params = net.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    return net, params


def make_translator(vocab: int = 12, source_len: int = 16) -> tuple:
    net = bytenet.ByteNet(
        vocab_size=vocab, hidden=6, decoder_blocks=3, encoder_blocks=2, unit="relu"
    )

    def forward(module):
        encoded = module.encode(jnp.zeros((1, source_len), jnp.int32), jnp.full((1,), source_len))
        return module(jnp.zeros((1, 4), jnp.int32), encoded)

    params = net.init(jax.random.key(1), method=forward)
    return net, params


def embedded_decoder(net: bytenet.ByteNet, params, x_BxTxC: jax.Array) -> jax.Array:
    """The decoder's logits from input embeddings (for gradient probes)."""
    return net.apply(params, x_BxTxC, method=lambda m, x: m._head(m.decoder(x), True))


@functools.cache
def translator_setup():
    net, params = make_translator()
    source = jax.random.randint(jax.random.key(2), (3, 16), 3, 12)
    unfolded = jnp.array([16, 9, 12])
    encoded = net.apply(params, source, unfolded, method=bytenet.ByteNet.encode)
    return net, params, encoded


# ---- cached decoding equals naive decoding ---------------------------------------------------


def test_cached_steps_equal_the_full_decoder():
    """The MU decoder here; the ReLU decoder's steps are checked by the translation tests."""
    net, params = make_lm(unit="mu")
    tokens = jax.random.randint(jax.random.key(3), (2, 30), 0, 12)
    full = net.apply(params, tokens)
    step = decoding.cached_step(net, params)

    @jax.jit
    def stepped(tokens_BxT):
        def body(carry, inputs):
            logits, carry = step(carry, *inputs)
            return carry, logits

        carry = decoding.init_cached_carry(net, 2, None)
        _, logits_TxBxV = jax.lax.scan(body, carry, (tokens_BxT.T, jnp.arange(30)))
        return jnp.swapaxes(logits_TxBxV, 0, 1)

    np.testing.assert_allclose(stepped(tokens), full, atol=2e-5, rtol=1e-5)


def test_greedy_cached_equals_naive_token_for_token():
    net, params, encoded = translator_setup()
    max_len = 24
    cached, naive = decoding.cached_step(net, params), decoding.naive_step(net, params)
    # eos outside the vocabulary: every row decodes all max_len positions.
    run = lambda step, carry: decoding.greedy(
        step, carry, batch=3, max_len=max_len, bos=BOS, eos=99
    )
    fast = jax.jit(run, static_argnums=0)(cached, decoding.init_cached_carry(net, 3, encoded))
    slow = jax.jit(run, static_argnums=0)(naive, decoding.init_naive_carry(3, max_len, encoded))
    np.testing.assert_array_equal(fast, slow)
    assert len(np.unique(np.asarray(fast))) > 2  # not a constant sequence


def test_beam_search_cached_equals_naive_token_for_token():
    net, params, encoded = translator_setup()
    beam, max_len = 4, 20
    encoded_K = decoding.repeat_for_beams(encoded, beam)
    run = lambda step, carry: decoding.beam_search(
        step, carry, batch=3, beam=beam, max_len=max_len, bos=BOS, eos=EOS
    )
    cached, naive = decoding.cached_step(net, params), decoding.naive_step(net, params)
    fast = jax.jit(run, static_argnums=0)(cached, decoding.init_cached_carry(net, 12, encoded_K))
    slow = jax.jit(run, static_argnums=0)(naive, decoding.init_naive_carry(12, max_len, encoded_K))
    np.testing.assert_array_equal(fast.tokens_BxKxL, slow.tokens_BxKxL)
    np.testing.assert_allclose(fast.scores_BxK, slow.scores_BxK, atol=1e-4)
    assert np.all(np.diff(np.asarray(fast.scores_BxK), axis=1) <= 0)  # best first


def test_beam_search_is_exact_when_the_beam_holds_every_hypothesis():
    """Vocabulary {PAD, BOS, EOS}, max_len 4: 15 EOS-terminated hypotheses; beam 12 keeps every
    live prefix (at most 8) and its top 2K = 24 candidates hold every extension, so the beams
    are the exact 12 best sequences by total log-likelihood (found here by enumeration)."""
    net, params = make_lm(vocab=3, blocks=2)
    max_len, beam = 4, 12
    step = decoding.cached_step(net, params)
    beams = decoding.beam_search(
        step,
        decoding.init_cached_carry(net, beam, None),
        batch=1,
        beam=beam,
        max_len=max_len,
        bos=BOS,
        eos=EOS,
    )
    sequences = [
        (*prefix, EOS)
        for n in range(1, max_len + 1)
        for prefix in itertools.product((0, 1), repeat=n - 1)
    ]
    # One forward pass over all of them, right-padded (the decoder is causal).
    inputs = np.array([(BOS, *seq[:-1]) + (0,) * (max_len - len(seq)) for seq in sequences])
    log_probs = np.asarray(jax.nn.log_softmax(net.apply(params, inputs)), np.float64)
    scored = [
        (sum(log_probs[i, t, s] for t, s in enumerate(seq)), seq) for i, seq in enumerate(sequences)
    ]
    scored.sort(key=lambda item: -item[0])
    np.testing.assert_allclose(beams.scores_BxK[0], [s for s, _ in scored[:beam]], atol=1e-5)
    for k, (_, seq) in enumerate(scored[:beam]):
        got = np.asarray(beams.tokens_BxKxL[0, k])
        np.testing.assert_array_equal(got[: len(seq)], seq)
        assert np.all(got[len(seq) :] == 0)
    assert bool(beams.finished_B[0])


# ---- causality and the receptive field ---------------------------------------------------------


def input_gradient(net, params, t: int, length: int) -> np.ndarray:
    """|d sum(logits[t]) / d input embedding|, summed over channels: one value per position."""
    x = jax.random.normal(jax.random.key(4), (1, length, 2 * net.hidden))
    grad = jax.jit(jax.grad(lambda x: embedded_decoder(net, params, x)[0, t].sum()))(x)
    return np.abs(np.asarray(grad[0])).sum(-1)


@pytest.mark.parametrize("unit", ["mu", "relu"])
def test_decoder_is_causal_and_its_receptive_field_matches_the_formula(unit):
    net, params = make_lm(unit=unit, blocks=7)  # dilations 1 2 4 8 16 1 2
    field = bytenet.receptive_field(3, (1, 2, 4, 8, 16, 1, 2))
    assert net.receptive_field == field == 1 + 2 * 34
    length, t = 100, 80
    grad = input_gradient(net, params, t, length)
    assert np.all(grad[t + 1 :] == 0.0)  # exactly zero at and after the target byte t + 1
    assert np.all(grad[t - field + 1 : t + 1] > 0)  # every input in the field is seen
    assert np.all(grad[: t - field + 1] == 0.0)  # nothing beyond it


def test_paper_decoder_receptive_field():
    """30 blocks of kernel 3, dilations 1..16 six times: 373 (the paper's text says 315)."""
    assert bytenet.receptive_field(3, bytenet.dilation_schedule(30)) == 373


def test_encoder_sees_the_whole_source_and_the_decoder_output_depends_on_later_source():
    net, params = make_translator(source_len=16)
    source = jax.random.normal(jax.random.key(5), (1, 16, 12))

    def first_output(source_onehot):
        embedded = source_onehot @ params["params"]["source_embed"]["embedding"]
        encoded = net.apply(params, embedded, method=lambda m, x: m.encoder(x))
        logits = net.apply(params, jnp.zeros((1, 16), jnp.int32), encoded)
        return logits[0, 0].sum()

    grad = np.abs(np.asarray(jax.grad(first_output)(source)[0])).sum(-1)
    # Encoder field: 1 + 2 (1 + 2) = 7 positions centred on 0 -> source positions 0..3 reach
    # target position 0; a causal encoder would see position 0 only.
    assert np.all(grad[:4] > 0) and np.all(grad[4:] == 0)


# ---- units and unfolding ------------------------------------------------------------------------


def test_multiplicative_unit_formula():
    mu = bytenet.MultiplicativeUnit(features=5, kernel_size=3, dilation=2)
    h = jax.random.normal(jax.random.key(6), (2, 11, 5))
    params = mu.init(jax.random.key(7), h)
    kernel = params["params"]["gates"]["kernel"]  # 3 x 5 x 20
    bias = params["params"]["gates"]["bias"]
    padded = np.pad(np.asarray(h, np.float64), ((0, 0), (4, 0), (0, 0)))
    expected = np.zeros((2, 11, 5))
    for t in range(11):
        pre = sum(padded[:, t + 2 * k] @ np.asarray(kernel[k], np.float64) for k in range(3))
        pre = pre + np.asarray(bias, np.float64)
        g1, g2, g3, u = np.split(pre, 4, -1)
        sig = lambda z: 1 / (1 + np.exp(-z))
        expected[:, t] = sig(g1) * np.tanh(sig(g2) * np.asarray(h[:, t]) + sig(g3) * np.tanh(u))
    np.testing.assert_allclose(mu.apply(params, h), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("source_length", "a", "b", "expected"),
    [
        (50, 1.2, 0, 60),
        (5, 1.2, 0, 6),  # exactly 6: the float product 6.000000000000001 would round up to 7
        (7, 1.2, 0, 9),  # ceil(8.4)
        (1, 1.2, 0, 2),
        (0, 1.2, 0, 0),
        (100, 1.2, 0, 120),
        (10, 1.1, 0, 11),
        (10, 1.5, 3, 18),
        (3, 1.5, 1, 6),  # ceil(5.5)
    ],
)
def test_dynamic_unfolding_bound(source_length, a, b, expected):
    assert bytenet.unfolded_length(source_length, a=a, b=b) == expected
    batch = bytenet.unfolded_lengths(jnp.asarray([source_length]), a=a, b=b)
    assert int(batch[0]) == expected


def test_encoder_output_is_zero_from_the_unfolded_length_on():
    _, _, encoded = translator_setup()
    for row, bound in enumerate((16, 9, 12)):
        assert np.all(np.asarray(encoded[row, bound:]) == 0.0)
        assert np.all(np.abs(np.asarray(encoded[row, :bound])).sum(-1) > 0)
    # Decoding past the encoder's positions adds zeros, as the training forward does.
    past = decoding._source_at(encoded, jnp.asarray(40))
    assert np.all(np.asarray(past) == 0.0)


# ---- losses and BLEU ----------------------------------------------------------------------------


def test_lm_loss_scores_only_the_marked_targets():
    net, params = make_lm()
    window = jax.random.randint(jax.random.key(8), (2, 10), 0, 12)
    scored = jnp.zeros((2, 10)).at[:, 6:].set(1.0)
    total, count = losses.lm_loss(params, model=net, window_BxL=window, scored_BxL=scored)
    log_probs = np.asarray(jax.nn.log_softmax(net.apply(params, window[:, :-1])), np.float64)
    expected = -sum(log_probs[b, t - 1, int(window[b, t])] for b in range(2) for t in range(6, 10))
    assert float(count) == 8
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)


def test_bleu_of_the_references_against_themselves_is_100_and_copying_scores_less():
    references = [
        "In the beginning, God created the heavens and the earth.",
        "God said, “Let there be light.”",
    ]
    assert _bleu(references, references) == pytest.approx(100.0)
    copied = ["EN el principio crió Dios los cielos y la tierra.", "Y dijo Dios: Sea la luz."]
    assert _bleu(copied, references) < 10.0
