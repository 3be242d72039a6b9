"""Generating future frames from a VPN pixel by pixel and channel by channel (arXiv:1610.00527, Sec. 3).

The context frames run through the encoder and the ConvLSTM once; then each new frame is filled
in raster order, channel by channel, from the decoder given the ConvLSTM's context, and is encoded
and fed to the ConvLSTM before the next one. All of it is one `lax.scan` over frames with an inner
`lax.scan` over pixels.

Two decoders, equal given the same noise: `cached=True` runs the decoder's single-pixel step
(`PixelDecoder.at`: each masked conv reads a window of its input buffer and writes one pixel, in
the manner of Fast PixelCNN++, Ramachandran et al., arXiv:1704.06001), so a pixel costs
O(layers); `cached=False` reruns the decoder on the whole frame for every pixel and channel, which
is what the model's definition says and costs O(layers x pixels) per pixel.

Noise is an input, so that samples are a deterministic function of it: one logistic sample per
channel for a Bernoulli output (the pixel is 1 when the logit exceeds it, probability
sigmoid(logit)) and K Gumbel samples for a K-way categorical (argmax of logits plus noise).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from deepgen.vpn.model import VideoPixelNetwork


def draw_noise(rng: jax.Array, shape: tuple[int, ...], num_values: int) -> jax.Array:
    """Noise of shape (..., C, K): logistic when K == 1, Gumbel otherwise."""
    full_shape = (*shape, num_values)
    if num_values == 1:
        return jax.random.logistic(rng, full_shape)
    return jax.random.gumbel(rng, full_shape)


def pixel_values(logits_xK: jax.Array, noise_xK: jax.Array) -> jax.Array:
    """The sampled intensity in [0, 1]: 1[logit > noise] (K = 1) or argmax(l + g) / (K - 1)."""
    num_values = logits_xK.shape[-1]
    if num_values == 1:
        return (logits_xK[..., 0] > noise_xK[..., 0]).astype(logits_xK.dtype)
    index = jnp.argmax(logits_xK + noise_xK, axis=-1)
    return index.astype(logits_xK.dtype) / (num_values - 1)


def _fill_cached(model, variables, context_BxHxWxF, noise_BxHxWxCxK):
    batch, height, width, channels, _ = noise_BxHxWxCxK.shape
    dtype = context_BxHxWxF.dtype
    r0 = model.first_kernel_size // 2
    frame_padded = jnp.zeros((batch, height + 2 * r0, width + 2 * r0, channels), dtype)
    buffers = model.apply(
        variables, batch, height, width, dtype, method=VideoPixelNetwork.init_buffers
    )

    def pixel(carry, position):
        frame_padded, buffers = carry
        i, j = position // width, position % width
        context_BxF = context_BxHxWxF[:, i, j]
        noise_BxCxK = noise_BxHxWxCxK[:, i, j]
        for c in range(channels):  # channel c's features never depend on channel c itself
            logits_BxCxK, written = model.apply(
                variables, frame_padded, context_BxF, buffers, i, j,
                method=VideoPixelNetwork.decode_at,
            )  # fmt: skip
            value_B = pixel_values(logits_BxCxK[:, c], noise_BxCxK[:, c])
            frame_padded = frame_padded.at[:, i + r0, j + r0, c].set(value_B)
        return (frame_padded, written), None

    (frame_padded, _), _ = jax.lax.scan(pixel, (frame_padded, buffers), jnp.arange(height * width))
    return frame_padded[:, r0 : r0 + height, r0 : r0 + width]


def _fill_naive(model, variables, context_BxHxWxF, noise_BxHxWxCxK):
    batch, height, width, channels, _ = noise_BxHxWxCxK.shape
    frame = jnp.zeros((batch, height, width, channels), context_BxHxWxF.dtype)

    def pixel(frame, position):
        i, j = position // width, position % width
        for c in range(channels):
            logits = model.apply(
                variables, frame, context_BxHxWxF, method=VideoPixelNetwork.decode
            )  # B x H x W x C x K, the whole frame for one pixel
            value_B = pixel_values(logits[:, i, j, c], noise_BxHxWxCxK[:, i, j, c])
            frame = frame.at[:, i, j, c].set(value_B)
        return frame, None

    frame, _ = jax.lax.scan(pixel, frame, jnp.arange(height * width))
    return frame


def _fill_independent(model, variables, context_BxHxWxF, noise_BxHxWxCxK):
    """The baseline without pixel dependencies: every pixel at once."""
    batch, height, width, channels, _ = noise_BxHxWxCxK.shape
    blank = jnp.zeros((batch, height, width, channels), context_BxHxWxF.dtype)
    logits = model.apply(variables, blank, context_BxHxWxF, method=VideoPixelNetwork.decode)
    return pixel_values(logits, noise_BxHxWxCxK)


def generate(
    model: VideoPixelNetwork,
    params,
    context_frames_BxTxHxWxC: jax.Array,
    noise_BxFxHxWxCxK: jax.Array,
    conditions_BxSxA: jax.Array | None = None,
    *,
    cached: bool = True,
) -> jax.Array:
    """F future frames after T context frames (B x F x H x W x C, intensities in [0, 1]).

    conditions (action-conditional models): one vector per step for steps 0 .. T + F - 2 at
    least (step t's condition enters the ConvLSTM with frame t).
    """
    variables = {"params": params}
    batch, num_context, height, width, channels = context_frames_BxTxHxWxC.shape
    num_future = noise_BxFxHxWxCxK.shape[1]
    if noise_BxFxHxWxCxK.shape[:-1] != (batch, num_future, height, width, channels):
        raise ValueError(
            f"noise {noise_BxFxHxWxCxK.shape} does not match context frames "
            f"{context_frames_BxTxHxWxC.shape}"
        )
    conditions_SxBxA = None
    if model.condition_features:
        needed = num_context + num_future - 1
        if conditions_BxSxA is None or conditions_BxSxA.shape[1] < needed:
            got = None if conditions_BxSxA is None else conditions_BxSxA.shape
            raise ValueError(f"an action-conditional model needs {needed} conditions, got {got}")
        padded = jnp.pad(conditions_BxSxA[:, :needed], ((0, 0), (0, 1), (0, 0)))
        conditions_SxBxA = jnp.swapaxes(padded, 0, 1)

    def call(method, *args):
        return model.apply(variables, *args, method=method)

    encoded = call(
        VideoPixelNetwork.encode,
        context_frames_BxTxHxWxC.reshape(batch * num_context, height, width, channels),
    ).reshape(batch, num_context, height, width, -1)
    state = call(VideoPixelNetwork.initial_state, batch, height, width, encoded.dtype)
    hidden = None
    for t in range(num_context):
        condition = None if conditions_SxBxA is None else conditions_SxBxA[t]
        state, hidden = call(VideoPixelNetwork.lstm_step, state, encoded[:, t], condition)

    if not model.pixel_dependencies:
        fill = _fill_independent
    else:
        fill = _fill_cached if cached else _fill_naive

    def next_frame(carry, inputs):
        state, hidden = carry
        noise_BxHxWxCxK, condition = inputs
        frame = fill(model, variables, hidden, noise_BxHxWxCxK)
        encoded = call(VideoPixelNetwork.encode, frame)
        state, hidden = call(VideoPixelNetwork.lstm_step, state, encoded, condition)
        return (state, hidden), frame

    future_conditions = None if conditions_SxBxA is None else conditions_SxBxA[num_context:]
    _, frames_FxBxHxWxC = jax.lax.scan(
        next_frame, (state, hidden), (jnp.swapaxes(noise_BxFxHxWxCxK, 0, 1), future_conditions)
    )
    return jnp.swapaxes(frames_FxBxHxWxC, 0, 1)
