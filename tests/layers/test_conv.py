"""The per-offset GEMM kernel gradient equals XLA's convolution gradient, exactly in float64."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from deepgen.layers import conv as conv_lib

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.fixture
def float64():
    """float64 for exact comparisons (thread-local; restored afterwards)."""
    with jax.enable_x64(True):
        yield


def _inputs(shape_x, shape_w, shape_g, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=s)) for s in (shape_x, shape_w, shape_g))


# (kernel, stride, padding, input height, input width): 3x3 same, the U-Net's stride-2 down-sampler,
# 1x1 skips, an asymmetric kernel and padding, an input whose size the stride does not divide.
CASES = [
    (3, 1, ((1, 1), (1, 1)), 7, 6),
    (3, 1, ((2, 2), (2, 2)), 7, 6, 2),  # dilated, as VPN's encoder and ByteNet-style stacks
    (3, 2, ((4, 3), (3, 4)), 9, 8, 3),
    (4, 2, "SAME", 7, 8),  # string padding: lax's rule (flax's nn.Conv default)
    (3, 1, "SAME", 6, 6, 2),
    (3, 2, "VALID", 7, 7),
    (3, 2, ((1, 1), (1, 1)), 8, 8),
    (3, 2, ((1, 1), (1, 1)), 7, 7),
    (1, 1, ((0, 0), (0, 0)), 5, 4),
    ((2, 3), 1, ((0, 1), (2, 0)), 6, 5),
]


@pytest.mark.parametrize("case", CASES)
def test_forward_and_both_gradients_equal_lax(float64, case):
    kernel, stride, padding, height, width = case[:5]
    dilation = (case[5],) * 2 if len(case) > 5 else None
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    batch, channels, features = 2, 3, 4
    x, w, _ = _inputs((batch, height, width, channels), (kh, kw, channels, features), (1,))

    def loss(conv, x, w):
        y = conv(x, w, (stride, stride), padding, rhs_dilation=dilation, dimension_numbers=NHWC)
        return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape))

    ours = jax.value_and_grad(lambda x, w: loss(conv_lib.conv_general_dilated, x, w), (0, 1))(x, w)
    reference = jax.value_and_grad(lambda x, w: loss(lax.conv_general_dilated, x, w), (0, 1))(x, w)
    np.testing.assert_allclose(ours[0], reference[0], rtol=1e-12)
    np.testing.assert_allclose(ours[1][0], reference[1][0], rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(ours[1][1], reference[1][1], rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("dilation", [1, 2])
def test_kernel_gradient_equals_a_direct_sum_over_positions(float64, dilation):
    """dw[p, q, c, o] = sum_{b, i, j} x_pad[b, s i + d p, s j + d q, c] g[b, i, j, o], by loops."""
    stride, d = 2, dilation
    padding = ((d, d), (d, d))
    x, w, g = _inputs((2, 5, 5, 3), (3, 3, 3, 2), (2, 3, 3, 2))
    ours = conv_lib.kernel_grad_by_gemm(x, g, w.shape, (stride, stride), padding, None, (d, d))
    x_pad = np.pad(np.asarray(x), ((0, 0), (d, d), (d, d), (0, 0)))
    expected = np.zeros(w.shape)
    for p in range(3):
        for q in range(3):
            for i in range(3):
                for j in range(3):
                    patch = x_pad[:, stride * i + d * p, stride * j + d * q, :]  # (B, C)
                    expected[p, q] += patch.T @ np.asarray(g)[:, i, j, :]
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12)


def test_other_convolutions_fall_through_to_lax(float64):
    """Input dilation and grouped convolutions are lax's own, value for value."""
    x, w, grouped_w = _inputs((1, 6, 6, 4), (3, 3, 4, 4), (3, 3, 2, 4))
    for kwargs in (
        dict(padding=((1, 1), (1, 1)), lhs_dilation=(2, 2)),
        dict(padding=((1, 1), (1, 1)), feature_group_count=2),
    ):
        padding = kwargs.pop("padding")
        w = grouped_w if "feature_group_count" in kwargs else w
        ours = conv_lib.conv_general_dilated(
            x, w, (1, 1), padding, dimension_numbers=NHWC, **kwargs
        )
        reference = lax.conv_general_dilated(
            x, w, (1, 1), padding, dimension_numbers=NHWC, **kwargs
        )
        np.testing.assert_array_equal(ours, reference)


def test_flax_conv_with_the_hook_trains_like_the_plain_conv(float64):
    """nn.Conv(conv_general_dilated=...) (how deepgen.bfn wires it): same output and gradients."""
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, 6, 3)))

    def make(hook):
        return nn.Conv(
            5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), conv_general_dilated=hook
        )

    params = make(None).init(jax.random.key(0), x)
    grads = []
    for hook in (None, conv_lib.conv_general_dilated):
        module = make(hook)
        grads.append(jax.grad(lambda p, module=module: jnp.sum(module.apply(p, x) ** 3))(params))
    for ours, reference in zip(jax.tree.leaves(grads[1]), jax.tree.leaves(grads[0]), strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-11, atol=1e-11)


def test_the_kernel_gradient_keeps_one_window_alive():
    """Temporary memory of a stack's gradient within 1.5x of XLA's own (unrolled offsets: 4x)."""
    x = jnp.ones((4, 16, 16, 32))
    kernels = [jnp.full((3, 3, 32, 32), 0.01) for _ in range(6)]

    def temp_bytes(conv):
        def loss(kernels, x):
            for w in kernels:
                x = jnp.tanh(conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC))
            return jnp.sum(x**2)

        compiled = jax.jit(jax.grad(loss)).lower(kernels, x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes(conv_lib.conv_general_dilated) <= 1.5 * temp_bytes(lax.conv_general_dilated)


@pytest.mark.parametrize(
    "kernel, stride, padding",
    [
        (4, 2, "SAME"),
        (3, 2, "SAME"),
        (3, 1, "VALID"),
        (5, 3, "SAME"),
        (4, 2, "VALID"),
        (1, 2, "SAME"),
    ],
)
def test_transposed_convolution_and_both_gradients_equal_lax(float64, kernel, stride, padding):
    x, w, _ = _inputs((2, 5, 4, 3), (kernel, kernel, 3, 4), (1,))

    def loss(conv, x, w):
        y = conv(x, w)
        return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape))

    def reference_conv(x, w):
        return lax.conv_transpose(x, w, (stride, stride), padding, dimension_numbers=NHWC)

    def our_conv(x, w):
        return conv_lib.conv_transpose(x, w, (stride, stride), padding)

    assert our_conv(x, w).shape == reference_conv(x, w).shape
    ours = jax.value_and_grad(lambda x, w: loss(our_conv, x, w), (0, 1))(x, w)
    reference = jax.value_and_grad(lambda x, w: loss(reference_conv, x, w), (0, 1))(x, w)
    np.testing.assert_allclose(ours[0], reference[0], rtol=1e-12)
    for got, expected in zip(ours[1], reference[1], strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize(
    "input_dilation, kernel_dilation, padding",
    [
        ((2, 3), (1, 1), ((1, 0), (3, 2))),
        ((2, 2), (2, 1), ((2, 3), (0, 1))),
        ((3, 2), (1, 2), ((-1, 2), (1, -1))),
    ],
)
def test_the_kernel_gradient_of_a_dilated_input_reads_only_real_pixels_and_equals_lax(
    float64, input_dilation, kernel_dilation, padding
):
    """Input and kernel dilation, uneven and negative padding: the per-phase GEMMs equal lax."""
    x, w, _ = _inputs((2, 5, 4, 3), (3, 2, 3, 4), (1,), seed=5)

    def loss(conv, x, w):
        y = conv(
            x,
            w,
            (1, 1),
            padding,
            lhs_dilation=input_dilation,
            rhs_dilation=kernel_dilation,
            dimension_numbers=NHWC,
        )
        return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape))

    ours = jax.value_and_grad(lambda x, w: loss(conv_lib.conv_general_dilated, x, w), (0, 1))(x, w)
    reference = jax.value_and_grad(lambda x, w: loss(lax.conv_general_dilated, x, w), (0, 1))(x, w)
    np.testing.assert_allclose(ours[0], reference[0], rtol=1e-12)
    for got, expected in zip(ours[1], reference[1], strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-11)


def test_the_transposed_conv_module_is_flax_s_with_the_same_parameters(float64):
    """Same parameter tree and initial values as nn.ConvTranspose, same outputs and gradients."""
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 4, 4, 3)))
    ours = conv_lib.ConvTranspose(5, (4, 4), strides=(2, 2), padding="SAME")
    flax_module = nn.ConvTranspose(5, (4, 4), strides=(2, 2), padding="SAME")
    params = flax_module.init(jax.random.key(0), x)
    our_params = ours.init(jax.random.key(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(our_params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(our_params), strict=True):
        np.testing.assert_array_equal(a, b)
    grads = [
        jax.value_and_grad(lambda p, m=m: jnp.sum(m.apply(p, x) ** 3))(params)
        for m in (flax_module, ours)
    ]
    np.testing.assert_allclose(grads[1][0], grads[0][0], rtol=1e-12)
    for got, expected in zip(
        jax.tree.leaves(grads[1][1]), jax.tree.leaves(grads[0][1]), strict=True
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-11)
