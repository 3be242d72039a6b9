"""MaskedConv2D and the gated PixelCNN: exact raster-order receptive fields, a naive oracle, conditioning."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.layers.masked_conv import (
    GatedPixelCNN,
    GatedPixelCNNBlock,
    MaskedConv2D,
    pixelcnn_mask,
)


def normal_params(module, *example_args, seed: int = 0, dtype=jnp.float32, scale: float = 1.0):
    """N(0, scale^2) params of the module's shapes: nothing compiled, no weight accidentally zero."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), *example_args)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), dtype), shapes)


def normal(shape, seed: int = 1, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def pixel_jacobian(apply_fn, x_HxWxC) -> np.ndarray:
    """J[i, j, o, i', j', c] = d out[0, i, j, o] / d x[0, i', j', c] (forward mode, one compilation)."""
    return np.asarray(jax.jit(jax.jacfwd(lambda x: apply_fn(x[None])[0]))(x_HxWxC))


def pixel_dependence(apply_fn, x_HxWxC) -> np.ndarray:
    """dep[i, j, i', j'] = True where some output channel at (i, j) depends on some channel at (i', j')."""
    return np.abs(pixel_jacobian(apply_fn, x_HxWxC)).sum(axis=(2, 5)) > 0


def raster_index(height: int, width: int):
    """(i, j, i', j') index grids of shape H x W x H x W."""
    return np.meshgrid(
        np.arange(height), np.arange(width), np.arange(height), np.arange(width), indexing="ij"
    )


def naive_masked_conv(x, kernel, mask, bias) -> np.ndarray:
    """y[b, i, j] = bias + sum_{di, dj} x[b, i + di - kh//2, j + dj - kw//2] @ (kernel * mask)[di, dj]."""
    x, w = np.asarray(x, np.float64), np.asarray(kernel, np.float64) * mask
    batch, height, width, _ = x.shape
    kh, kw = w.shape[:2]
    y = np.zeros((batch, height, width, w.shape[-1])) + np.asarray(bias, np.float64)
    for i in range(height):
        for j in range(width):
            for di in range(kh):
                for dj in range(kw):
                    ii, jj = i + di - kh // 2, j + dj - kw // 2
                    if 0 <= ii < height and 0 <= jj < width:
                        y[:, i, j] += x[:, ii, jj] @ w[di, dj]
    return y


def test_masks_follow_raster_and_channel_order():
    a = pixelcnn_mask((3, 3), 1, 1, "A")[..., 0, 0]
    b = pixelcnn_mask((3, 3), 1, 1, "B")[..., 0, 0]
    np.testing.assert_array_equal(a, [[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(b, [[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    rgb_a = pixelcnn_mask((3, 3), 3, 6, "A", channel_groups=3)[1, 1]
    rgb_b = pixelcnn_mask((3, 3), 3, 6, "B", channel_groups=3)[1, 1]
    groups_out = np.arange(6) // 2
    np.testing.assert_array_equal(rgb_a, np.arange(3)[:, None] < groups_out[None, :])
    np.testing.assert_array_equal(rgb_b, np.arange(3)[:, None] <= groups_out[None, :])
    # 128 channels in 3 colour groups (the VPN's c = 128): groups of 43, 43 and 42, in order.
    uneven = pixelcnn_mask((1, 1), 3, 128, "B", channel_groups=3)[0, 0]
    np.testing.assert_array_equal(uneven.sum(axis=1), [128, 85, 42])
    with pytest.raises(ValueError, match="channel_groups"):
        pixelcnn_mask((3, 3), 3, 2, "A", channel_groups=3)
    with pytest.raises(ValueError, match="mask_type"):
        pixelcnn_mask((3, 3), 1, 1, "C")


@pytest.mark.parametrize(("mask_type", "kernel_size"), [("A", 5), ("B", 3), ("A", (3, 4))])
def test_masked_conv_receptive_field_is_exactly_the_masked_window(mask_type, kernel_size):
    height, width, channels = 5, 6, 2
    layer = MaskedConv2D(3, kernel_size, mask_type)
    x = normal((height, width, channels))
    params = normal_params(layer, x[None])
    dep = pixel_dependence(lambda x: layer.apply({"params": params}, x), x)
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    i, j, ii, jj = raster_index(height, width)
    in_window = (ii - i >= -(kh // 2)) & (ii - i <= kh - 1 - kh // 2)
    in_window &= (jj - j >= -(kw // 2)) & (jj - j <= kw - 1 - kw // 2)
    before = (ii < i) | ((ii == i) & (jj < j))
    if mask_type == "B":
        before |= (ii == i) & (jj == j)
    np.testing.assert_array_equal(dep, in_window & before)


def test_channel_groups_connect_colours_in_order():
    """Centre tap: output group g sees input channels < g (A) or <= g (B); A then B keeps < g."""
    x = normal((4, 4, 3))
    layer_a = MaskedConv2D(6, 3, "A", channel_groups=3)
    layer_b = MaskedConv2D(6, 3, "B", channel_groups=3)
    params_a, params_b = normal_params(layer_a, x[None]), normal_params(layer_b, x[None], seed=1)
    apply_a = lambda x: layer_a.apply({"params": params_a}, x)
    apply_b = lambda x: layer_b.apply({"params": params_b}, x)
    groups_out = np.arange(6) // 2
    strictly_lower = np.arange(3)[None, :] < groups_out[:, None]  # out x in
    for apply, allowed in [
        (apply_a, strictly_lower),
        (apply_b, np.arange(3)[None, :] <= groups_out[:, None]),
        (lambda x: apply_b(jnp.tanh(apply_a(x))[..., ::2]), strictly_lower),
    ]:
        jac = pixel_jacobian(apply, x)
        centre = np.abs(jac[2, 2, :, 2, 2, :]) > 0  # out channel x in channel
        np.testing.assert_array_equal(centre, allowed)
        assert np.all(np.abs(jac[2, 2, :, 1, 1, :]) > 0)  # an earlier pixel: every channel
        assert np.all(jac[2, 2, :, 2, 3, :] == 0)  # a later pixel: none


@pytest.mark.parametrize(
    ("mask_type", "kernel_size", "channel_groups"), [("A", 3, 1), ("B", (5, 3), 1), ("B", 3, 2)]
)
def test_masked_conv_equals_naive_masked_sum(mask_type, kernel_size, channel_groups):
    with jax.enable_x64(True):
        layer = MaskedConv2D(4, kernel_size, mask_type, channel_groups=channel_groups)
        x = normal((2, 5, 6, 2), dtype=jnp.float64)
        params = normal_params(layer, x, dtype=jnp.float64)
        y = jax.jit(lambda x: layer.apply({"params": params}, x))(x)
        assert y.dtype == jnp.float64
        mask = pixelcnn_mask(params["kernel"].shape[:2], 2, 4, mask_type, channel_groups)
        expected = naive_masked_conv(x, params["kernel"], mask, params["bias"])
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_gated_pixelcnn_has_no_blind_spot_and_no_leak():
    """8x8 image, 4 blocks of 3x3: (i, j) sees exactly rows i-4..i-1 (columns j-4..j+4) and row i left of j."""
    height = width = 8
    model = GatedPixelCNN(
        num_layers=4, features=8, logits_per_pixel=2, kernel_size=3, head_activation=nn.elu
    )
    x, cond = normal((height, width, 2)), normal((1, 3), seed=2)
    params = normal_params(model, x[None], cond, scale=0.3)
    dep = pixel_dependence(lambda x: model.apply({"params": params}, x, cond), x)
    radius = model.receptive_radius
    assert radius == 4
    i, j, ii, jj = raster_index(height, width)
    above = (ii < i) & (ii >= i - radius) & (np.abs(jj - j) <= radius)
    left = (ii == i) & (jj < j) & (jj >= j - radius)
    expected = above | left
    assert expected[7, 7, 3, 3] and not expected[7, 7, 2, 7] and not expected[4, 0, 3, 7]
    np.testing.assert_array_equal(dep, expected)


def test_gated_pixelcnn_default_relu_head_never_sees_current_or_later_pixels():
    height = width = 6
    model = GatedPixelCNN(num_layers=3, features=4, logits_per_pixel=1, first_kernel_size=5)
    x = normal((height, width, 1))
    params = normal_params(model, x[None], scale=0.5)
    dep = pixel_dependence(lambda x: model.apply({"params": params}, x), x)
    assert model.receptive_radius == 2 + 2
    i, j, ii, jj = raster_index(height, width)
    strictly_before = (ii < i) | ((ii == i) & (jj < j))
    assert not np.any(dep & ~strictly_before)
    assert dep[5, 5].sum() > 10


def test_conditioning_changes_every_output():
    model = GatedPixelCNN(num_layers=2, features=4, logits_per_pixel=1, head_activation=nn.elu)
    x = normal((2, 5, 5, 1))
    cond_vector, cond_map = normal((2, 3), seed=2), normal((2, 5, 5, 3), seed=3)
    params = normal_params(model, x, cond_vector, scale=0.5)
    apply = jax.jit(lambda x, c: model.apply({"params": params}, x, c))
    base = np.asarray(apply(x, cond_vector))
    assert base.shape == (2, 5, 5, 1)
    assert np.all(np.asarray(apply(x, cond_vector + 1.0)) != base)
    with_map = np.asarray(apply(x, cond_map))
    changed_map = np.asarray(apply(x, cond_map.at[:, 2, 2].add(1.0)))
    assert np.all(changed_map[:, 2, 2] != with_map[:, 2, 2])
    assert np.all(changed_map[:, :2] == with_map[:, :2])  # the map enters per pixel, then causally
    unconditioned = jax.jit(lambda x: model.apply({"params": params}, x))(x)
    assert np.all(np.asarray(unconditioned) != base)


def test_gated_block_residual_and_checks():
    block = GatedPixelCNNBlock(4, 3, "B")
    v, h = normal((1, 4, 4, 4)), normal((1, 4, 4, 4), seed=2)
    params = normal_params(block, v, h)
    params["horizontal_out"] = jax.tree.map(jnp.zeros_like, params["horizontal_out"])
    v_out, h_out = jax.jit(lambda v, h: block.apply({"params": params}, v, h))(v, h)
    np.testing.assert_array_equal(h_out, h)  # the horizontal residual connection
    assert v_out.shape == v.shape
    first = GatedPixelCNNBlock(4, 3, "A")
    params_a = normal_params(first, v[..., :1], h[..., :1])
    params_a["horizontal_out"] = jax.tree.map(jnp.zeros_like, params_a["horizontal_out"])
    _, h_first = jax.jit(lambda v, h: first.apply({"params": params_a}, v, h))(
        v[..., :1], h[..., :1]
    )
    assert np.all(np.asarray(h_first) == 0)  # no residual from the raw image in block A
    with pytest.raises(ValueError, match="odd"):
        GatedPixelCNNBlock(4, 2).init(jax.random.key(0), v, h)
