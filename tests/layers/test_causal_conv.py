"""CausalConv1D and CausalConvStack: causality, a naive loop oracle, cached steps = the full conv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.layers.causal_conv import CausalConv1D, CausalConvStack, scan_steps

B, T, C, F = 2, 12, 3, 4


@pytest.fixture
def float64():
    """float64 for exact comparisons (thread-local; restored afterwards)."""
    with jax.enable_x64(True):
        yield


def random_params(module, in_channels: int, dtype=jnp.float32, seed: int = 0):
    """N(0, 1) params of the module's shapes (no weight or bias accidentally zero; nothing compiled)."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, T, in_channels)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), dtype), shapes["params"])


def random_inputs(dtype=jnp.float32, seed: int = 7):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, C)), dtype)


def jitted_apply(module, params):
    return jax.jit(lambda x: module.apply({"params": params}, x))


def naive_conv(x, kernel, bias, dilation: int, left_pad: int) -> np.ndarray:
    """y[:, t] = bias + sum_k x[:, t - left_pad + k d] @ kernel[k], zero outside 0..T-1."""
    x, kernel, bias = (np.asarray(a, np.float64) for a in (x, kernel, bias))
    batch, length, _ = x.shape
    y = np.zeros((batch, length, kernel.shape[-1])) + bias
    for t in range(length):
        for k in range(kernel.shape[0]):
            s = t - left_pad + k * dilation
            if 0 <= s < length:
                y[:, t] += x[:, s] @ kernel[k]
    return y


def input_dependence(apply_fn, x_BxTxC) -> np.ndarray:
    """dep[t, s] = True where some output channel at t has a nonzero gradient w.r.t. input s."""
    jac = jax.jit(jax.jacrev(lambda x: apply_fn(x)[0]))(x_BxTxC[:1])  # T x F x 1 x T x C
    return np.asarray(jnp.abs(jac).sum(axis=(1, 2, 4)) > 0)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize(("kernel_size", "dilation"), [(2, 1), (3, 2), (2, 4)])
def test_single_layer_is_causal(kernel_size, dilation):
    layer = CausalConv1D(F, kernel_size, dilation)
    params = random_params(layer, C, jnp.float64)
    apply = jitted_apply(layer, params)
    x = random_inputs(jnp.float64)
    y = np.asarray(apply(x))
    for t in (0, 5, T - 1):
        y_perturbed = np.asarray(apply(x + 1.0 * (np.arange(T) == t)[None, :, None]))
        np.testing.assert_array_equal(y_perturbed[:, :t], y[:, :t])
        assert np.all(y_perturbed[:, t] != y[:, t])
    taps = {
        (t, t - k * dilation) for t in range(T) for k in range(kernel_size) if t >= k * dilation
    }
    expected = np.zeros((T, T), bool)
    for t, s in taps:
        expected[t, s] = True
    np.testing.assert_array_equal(input_dependence(apply, x), expected)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("kernel_size", [2, 3])
def test_stack_receptive_field_is_exactly_the_causal_window(kernel_size):
    stack = CausalConvStack(F, kernel_size, dilations=(1, 2, 4))
    params = random_params(stack, C, jnp.float64)
    apply = jitted_apply(stack, params)
    dep = input_dependence(apply, random_inputs(jnp.float64))
    field = stack.receptive_field
    assert field == 1 + (kernel_size - 1) * 7
    t, s = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    np.testing.assert_array_equal(dep, (s <= t) & (s > t - field))


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("dilation", [1, 2, 4])
def test_causal_conv_equals_naive_loop(kernel_size, dilation):
    layer = CausalConv1D(F, kernel_size, dilation)
    params = random_params(layer, C, jnp.float64)
    x = random_inputs(jnp.float64)
    y = jitted_apply(layer, params)(x)
    expected = naive_conv(
        x, params["kernel"], params["bias"], dilation, (kernel_size - 1) * dilation
    )
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize(("kernel_size", "dilation"), [(3, 1), (3, 2), (2, 3), (5, 2)])
def test_centred_conv_equals_naive_symmetric_sum(kernel_size, dilation):
    layer = CausalConv1D(F, kernel_size, dilation, causal=False)
    params = random_params(layer, C, jnp.float64)
    x = random_inputs(jnp.float64)
    y = jitted_apply(layer, params)(x)
    left = (kernel_size - 1) * dilation // 2
    expected = naive_conv(x, params["kernel"], params["bias"], dilation, left)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    if kernel_size % 2 == 1:  # odd kernels are symmetric: output t sees t - r d ... t + r d
        dep = input_dependence(jitted_apply(layer, params), x)
        assert dep[T // 2].sum() == kernel_size and dep[T // 2, T // 2 + left]
    with pytest.raises(ValueError, match="causal"):
        layer.step(params, layer.init_cache(B, C), x[:, 0])


def test_no_bias_layer_has_no_bias():
    layer = CausalConv1D(F, 2, 2, use_bias=False)
    params = random_params(layer, C)
    assert set(params) == {"kernel"}
    x = random_inputs()
    y_steps, _ = scan_steps(layer.step, params, layer.init_cache(B, C), x)
    np.testing.assert_allclose(y_steps, jitted_apply(layer, params)(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_cached_steps_equal_full_conv_single_layer(kernel_size):
    layer = CausalConv1D(F, kernel_size, dilation=2)
    params = random_params(layer, C)
    x = random_inputs()
    cache = layer.init_cache(B, C)
    assert cache.shape == (B, (kernel_size - 1) * 2, C)
    y_steps, final_cache = jax.jit(scan_steps, static_argnums=0)(layer.step, params, cache, x)
    np.testing.assert_allclose(y_steps, jitted_apply(layer, params)(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(final_cache, x[:, T - cache.shape[1] :])


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_cached_steps_equal_full_conv_stack_traced_once(kernel_size):
    stack = CausalConvStack(F, kernel_size, dilations=(1, 2, 4))
    params = random_params(stack, C)
    x = random_inputs()
    y_full = jitted_apply(stack, params)(x)
    traces = []

    def counted_step(params, caches, x_BxC):
        traces.append(1)  # runs only while tracing
        return stack.step(params, caches, x_BxC)

    step = jax.jit(counted_step)
    caches = stack.init_cache(B, C)
    assert [c.shape for c in caches] == [
        (B, (kernel_size - 1) * d, c) for d, c in [(1, C), (2, F), (4, F)]
    ]
    for t in range(T):
        y_t, caches = step(params, caches, x[:, t])
        np.testing.assert_allclose(y_t, y_full[:, t], rtol=1e-5, atol=1e-5)
    assert len(traces) == 1


@pytest.mark.parametrize(("kernel_size", "dilation"), [(2, 1), (3, 2), (3, 5), (1, 4)])
def test_ring_buffer_steps_equal_full_conv(kernel_size, dilation):
    layer = CausalConv1D(F, kernel_size, dilation=dilation)
    params = random_params(layer, C)
    x = random_inputs()

    def body(ring, inputs):
        t, x_BxC = inputs
        y, ring = layer.ring_step(params, ring, t, x_BxC)
        return ring, y

    _, y_TxBxF = jax.jit(lambda x: jax.lax.scan(
        body, layer.init_cache(B, C), (jnp.arange(T), jnp.swapaxes(x, 0, 1))
    ))(x)  # fmt: skip
    np.testing.assert_allclose(
        jnp.swapaxes(y_TxBxF, 0, 1), jitted_apply(layer, params)(x), rtol=1e-5, atol=1e-5
    )
