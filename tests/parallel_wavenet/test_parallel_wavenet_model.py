"""Parallel WaveNet's maths on tiny float64 networks: the teacher's causality and receptive field,
cached generation against naive, the 16-bit mixture's normalisation, the IAF's triangular Jacobian
and log-determinant, its entropy, and the distillation KL estimator against a brute-force KL."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.layers.discretized_logistic import discretized_mix_logistic_log_prob
from deepgen.parallel_wavenet import generation, losses
from deepgen.parallel_wavenet.student import (
    IAFStudent,
    logistic_log_density,
    student_entropy,
    student_log_density,
)
from deepgen.parallel_wavenet.wavenet import WaveNet, split_mixture

B, T, HOP, MELS = 2, 48, 4, 3


def teacher(**overrides) -> WaveNet:
    fields = dict(
        residual_features=6,
        gate_features=6,
        skip_features=5,
        kernel_size=3,
        dilations=(1, 2, 4, 1, 2, 4),
        num_mixtures=3,
        hop=HOP,
        num_speakers=3,
        speaker_features=2,
    )
    return WaveNet(**(fields | overrides))


def student() -> IAFStudent:
    return IAFStudent(
        flow_layers=(2, 3),
        residual_features=5,
        gate_features=6,
        kernel_size=3,
        dilation_cycle_length=2,
        hop=HOP,
        num_speakers=3,
        speaker_features=2,
    )


def conditioning(length: int = T):
    mel = jax.random.normal(jax.random.key(1), (B, -(-length // HOP), MELS), jnp.float64)
    return mel, jnp.array([0, 2])


def float64_params(model, *args):
    """Initial parameters in float64, jittered (the student's output kernels start at zero, which
    would make every flow a constant affine map and the dependence tests trivial)."""
    params = model.init(jax.random.key(2), *args)["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(11), len(leaves))
    jittered = [
        p.astype(jnp.float64) + 0.2 * jax.random.normal(k, p.shape, jnp.float64)
        for p, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(tree, jittered)


@pytest.mark.parametrize("kernel_size", [3])  # k = 2 runs in the generation test below
def test_the_teacher_is_causal_with_the_receptive_field_of_its_formula(kernel_size):
    with jax.enable_x64(True):
        model = teacher(kernel_size=kernel_size, dilations=(1, 2, 4, 8))
        mel, speaker = conditioning()
        audio = jax.random.uniform(jax.random.key(0), (B, T), jnp.float64, -1, 1)
        params = float64_params(model, audio, mel, speaker)
        t = T - 1
        grad = jax.grad(lambda a: model.apply({"params": params}, a, mel, speaker)[0, t].sum())(
            audio
        )
        seen = np.nonzero(np.asarray(grad[0]))[0]
        assert seen.max() == t - 1  # never x_t itself or later
        assert t - seen.min() == model.receptive_field == (kernel_size - 1) * (1 + 15) + 1
        assert np.all(np.asarray(grad[1]) == 0.0)


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_cached_generation_equals_naive_generation_sample_for_sample(kernel_size):
    with jax.enable_x64(True):
        model = teacher(kernel_size=kernel_size)
        mel, speaker = conditioning()
        params = float64_params(model, jnp.zeros((B, T)), mel, speaker)
        condition = model.apply({"params": params}, mel, speaker, T, method=WaveNet.condition)

        def run(cached):
            return jax.jit(
                lambda p, c: generation.generate(
                    model, p, c, jax.random.key(3), num_samples=T, batch=B, cached=cached
                )
            )(params, condition)

        cached, naive = np.asarray(run(True)), np.asarray(run(False))
        np.testing.assert_array_equal(cached, naive)
        assert len(np.unique(cached)) > T // 2  # real samples, not a constant
        assert model.receptive_field < T  # the naive window slides


def test_the_16_bit_mixture_sums_to_one_over_all_65536_values():
    with jax.enable_x64(True):
        model = teacher()
        mel, speaker = conditioning()
        params = float64_params(model, jnp.zeros((B, T)), mel, speaker)
        audio = jax.random.uniform(jax.random.key(4), (B, T), jnp.float64, -0.3, 0.3)
        out = model.apply({"params": params}, audio, mel, speaker)[0, 7]
        logits, means, log_scales = split_mixture(out)
        values = -1.0 + 2.0 * jnp.arange(65536, dtype=jnp.float64) / 65535.0
        log_p = discretized_mix_logistic_log_prob(values, logits, means, log_scales, num_bins=65536)
        assert float(jnp.exp(jax.nn.logsumexp(log_p))) == pytest.approx(1.0, abs=1e-9)


def test_the_students_jacobian_is_triangular_with_the_log_determinant_of_its_scales():
    """dx_t/dz_t' = 0 for t' > t (the output at t ignores later noise), and log|det dx/dz| =
    sum_t log s_tot,t, so log p_S(x) = log p(z) - log|det| as student_log_density says."""
    with jax.enable_x64(True):
        model = student()
        mel, speaker = conditioning(16)
        z = jax.random.logistic(jax.random.key(5), (B, 16), jnp.float64)
        params = float64_params(model, z, mel, speaker)
        x_of = lambda z: model.apply({"params": params}, z, mel, speaker)[0]
        jacobian = np.asarray(jax.jacfwd(x_of)(z))[0, :, 0, :]  # d x[0, t] / d z[0, t']
        assert np.all(np.triu(jacobian, k=1) == 0.0)
        assert np.all(np.abs(np.diag(jacobian, k=-1)) > 0)  # x_t does depend on z_(t-1)
        _, mean_total, log_scale_total = model.apply({"params": params}, z, mel, speaker)
        np.testing.assert_allclose(np.diag(jacobian), np.exp(log_scale_total[0]), rtol=1e-12)
        sign, logdet = np.linalg.slogdet(jacobian)
        assert sign > 0 and logdet == pytest.approx(float(log_scale_total[0].sum()), rel=1e-12)
        x = x_of(z)
        np.testing.assert_allclose(x, z * jnp.exp(log_scale_total) + mean_total, rtol=1e-12)
        zeros = jnp.zeros_like(z)
        expected = logistic_log_density(z, zeros, zeros).sum(axis=-1) - logdet
        assert float(student_log_density(z, log_scale_total)[0]) == pytest.approx(
            float(expected[0]), rel=1e-12
        )


def test_the_closed_form_entropy_matches_monte_carlo():
    with jax.enable_x64(True):
        model = student()
        num, length = 4000, 8
        mel, speaker = conditioning(length)
        mel, speaker = jnp.repeat(mel[:1], num, axis=0), jnp.zeros((num,), jnp.int32)
        z = jax.random.logistic(jax.random.key(6), (num, length), jnp.float64)
        params = float64_params(model, z[:2], mel[:2], speaker[:2])
        _, _, log_scale_total = model.apply({"params": params}, z, mel, speaker)
        monte_carlo = -student_log_density(z, log_scale_total)  # -log p_S(x) for x ~ P_S
        closed = student_entropy(log_scale_total)
        error = float(monte_carlo.std() / np.sqrt(num))
        assert float(monte_carlo.mean()) == pytest.approx(float(closed.mean()), abs=4 * error)


def test_the_distillation_kl_estimate_is_unbiased_for_the_brute_force_kl():
    """Mean of the paper's estimator (N draws per step) over many student samples against
    E_x~P_S[log p_S(x) - log p_T(x)] with both exact log-densities, on one conditioning."""
    with jax.enable_x64(True):
        num, length = 2000, 6
        t_model = teacher(dilations=(1, 2))
        s_model = student().clone(flow_layers=(1, 2))
        mel, speaker = conditioning(length)
        mel, speaker = jnp.repeat(mel[:1], num, axis=0), jnp.zeros((num,), jnp.int32)
        z = jax.random.logistic(jax.random.key(7), (num, length), jnp.float64)
        s_params = float64_params(s_model, z[:2], mel[:2], speaker[:2])
        t_params = float64_params(t_model, z[:2], mel[:2], speaker[:2])
        x, mean_total, log_scale_total = s_model.apply({"params": s_params}, z, mel, speaker)
        teacher_out = t_model.apply({"params": t_params}, x, mel, speaker)
        noise = jax.random.logistic(jax.random.key(8), (4, num, length), jnp.float64)
        kl, _, _ = losses.distillation_kl(
            mean_total_BxT=mean_total,
            log_scale_total_BxT=log_scale_total,
            teacher_params_BxTx3M=teacher_out,
            noise_NxBxT=noise,
        )
        estimator = kl.sum(axis=-1)
        log_q = student_log_density(z, log_scale_total)
        log_p = losses.mixture_log_density(x, teacher_out).sum(axis=-1)
        brute = log_q - log_p
        error = float(jnp.sqrt(estimator.var() / num + brute.var() / num))
        assert float(estimator.mean()) == pytest.approx(float(brute.mean()), abs=4 * error)
        assert float(brute.mean()) > 0


def test_the_kl_vanishes_when_the_teacher_is_the_students_own_logistic():
    """A one-component teacher whose parameters are the student's (mu_tot, log s_tot): KL = 0
    up to the draws' noise, which cancels exactly in expectation."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        mean, log_scale = jnp.asarray(rng.normal(size=(5, 7))), jnp.asarray(rng.normal(size=(5, 7)))
        params = jnp.stack([jnp.zeros_like(mean), mean, log_scale], axis=-1)
        noise = jax.random.logistic(jax.random.key(9), (20000, 5, 7), jnp.float64)
        kl, _, entropy = losses.distillation_kl(
            mean_total_BxT=mean,
            log_scale_total_BxT=log_scale,
            teacher_params_BxTx3M=params,
            noise_NxBxT=noise,
        )
        np.testing.assert_allclose(entropy, log_scale + 2.0)
        assert float(jnp.abs(kl).max()) < 0.05 and abs(float(kl.mean())) < 0.005


def test_the_power_loss_is_zero_for_the_same_audio_and_sees_a_louder_copy():
    audio = jax.random.normal(jax.random.key(10), (2, 4096)) * 0.1
    same = losses.power_loss(generated_BxT=audio, real_BxT=audio, frame_length=256, hop_length=64)
    louder = losses.power_loss(
        generated_BxT=3 * audio, real_BxT=audio, frame_length=256, hop_length=64
    )
    np.testing.assert_allclose(same, 0.0)
    # White noise of std 0.1: E|X| per bin ~ 0.1 sqrt(pi) / 2 after the window normalisation.
    magnitude = losses.stft_magnitude(audio, frame_length=256, hop_length=64).mean()
    assert float(magnitude) == pytest.approx(0.1 * np.sqrt(np.pi) / 2, rel=0.05)
    assert np.all(np.asarray(louder) > 0)


def test_the_style_loss_compares_gram_matrices():
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.normal(size=(2, 10, 3)))
    assert float(losses.perceptual_loss(generated_features=[a], real_features=[a]).max()) == 0.0
    shuffled = a[:, ::-1]  # the same features in another order: the same Gram matrix
    np.testing.assert_allclose(
        losses.perceptual_loss(generated_features=[shuffled], real_features=[a]), 0.0, atol=1e-10
    )
    manual = np.einsum("btc,btd->bcd", np.asarray(a), np.asarray(a)) / 10
    np.testing.assert_allclose(losses.gram(a), manual, rtol=1e-6)
