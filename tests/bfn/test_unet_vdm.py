"""The VDM U-Net of the BFN CIFAR-10 experiments: size, features, shapes, precision switch."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from deepgen.bfn.model import count_params
from deepgen.bfn.unet_vdm import UNetVDM, fourier_features, vdm_timestep_embedding


def _vdm_param_count(d: int, blocks: int, channels: int, outputs: int, exponents: int) -> int:
    """Parameter count of the reference UNetVDM, written out block by block."""
    norm = 2 * d
    res = (9 * d * d + d) + 4 * d * d + (9 * d * d + d) + 2 * norm  # conv1, cond, conv2, norms
    up = (9 * 2 * d * d + d) + 4 * d * d + (9 * d * d + d) + (2 * d * d + d) + 2 * 2 * d + norm
    attention = norm + (d * 3 * d + 3 * d) + (d * d + d)
    cond = (d * 4 * d + 4 * d) + (4 * d * 4 * d + 4 * d)
    inputs = channels * (1 + 2 * exponents)
    conv_in = 9 * inputs * d + d
    out = norm + (9 * d * d + d) + (d + channels) * channels * outputs + channels * outputs
    return (blocks + 2) * res + (blocks + 1) * up + attention + cond + conv_in + out


def test_paper_scale_parameter_count_matches_the_reference_layout():
    for outputs in (2, 1):
        model = UNetVDM(out_per_channel=outputs)
        shapes = jax.eval_shape(
            lambda m=model: m.init(
                jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,)), train=False
            )
        )
        assert count_params(shapes) == _vdm_param_count(128, 32, 3, outputs, 2)
    assert count_params(shapes) == 30_722_188  # continuous output; discretised adds 396


def test_fourier_features_are_sin_and_cos_of_2pi_2n_x():
    x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3), minval=-1, maxval=1)
    features = fourier_features(x, (5.0, 6.0))
    assert features.shape == (2, 4, 4, 12)
    args = np.concatenate([2 * math.pi * 2**n * np.asarray(x) for n in (5, 6)], axis=-1)
    np.testing.assert_allclose(features[..., :6], np.sin(args), atol=2e-4)
    np.testing.assert_allclose(features[..., 6:], np.cos(args), atol=2e-4)


def test_time_embedding_reads_t_plus_a_thousandth_times_a_thousand():
    t = jnp.array([0.0, 0.5])
    emb = vdm_timestep_embedding(t, 8)
    inv_timescales = np.exp(-np.linspace(0, math.log(10_000), 4))
    args = ((np.asarray(t) + 0.001) * 1000)[:, None] * inv_timescales
    np.testing.assert_allclose(emb, np.concatenate([np.sin(args), np.cos(args)], -1), atol=2e-4)


def _compile(fn, *example_args):
    """jit-compile fn for these argument shapes, skipping LLVM optimisation (faster to compile)."""
    lowered = jax.jit(fn).lower(*example_args)
    return lowered.compile(compiler_options={"xla_backend_optimization_level": 0})


def test_output_shape_zero_init_and_bf16_switch():
    mu = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    t = jnp.array([0.1, 0.9])
    # One block down and two up: every kind of layer. (Compiled whole: op-by-op dispatch would
    # compile every op.)
    small = dict(embedding_dim=16, num_blocks=1, num_groups=4)
    model = UNetVDM(out_per_channel=2, **small)
    variables = _compile(lambda k: model.init(k, mu, t, train=False), jax.random.key(0))(
        jax.random.key(0)
    )
    apply = _compile(lambda v: model.apply(v, mu, t, train=False), variables)
    out = apply(variables)
    assert out.shape == (2, 8, 8, 3, 2) and out.dtype == jnp.float32
    # The zero-initialised last convolution makes the initial output a per-pixel linear map of mu.
    kernel = variables["params"]["output_adapter"]["kernel"][:3]
    bias = variables["params"]["output_adapter"]["bias"]
    np.testing.assert_allclose(out.reshape(2, 8, 8, 6), mu @ kernel + bias, rtol=1e-5, atol=1e-6)
    # bf16 compute keeps float32 parameters and float32 outputs, close to the float32 result.
    params = jax.tree.map(lambda p: p + 0.01, variables["params"])  # move off the zero init
    full = apply({"params": params})
    half_model = UNetVDM(out_per_channel=2, dtype=jnp.bfloat16, **small)
    half = _compile(lambda p: half_model.apply({"params": p}, mu, t, train=False), params)(params)
    assert half.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    np.testing.assert_allclose(half, full, rtol=0.1, atol=0.1)
