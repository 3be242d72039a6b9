"""The discretised (mixture of) logistic likelihood and its samplers, over K equally spaced bins.

Shared by ACN's colour decoders (8-bit CIFAR-10 pixels), the WaveNet teacher (16-bit audio, a
mixture of 10 logistics) and Parallel WaveNet's student (one logistic per sample). PixelCNN++
(Salimans et al., arXiv:1701.05517, Sec. 2.1, Eq. 2): a value is one of K bin centres
c_k = -1 + 2k / (K - 1) on [-1, 1]; with half bin width w = 1 / (K - 1), logistic CDF sigma and
scale s,

    P(x | mu, s) = sigma((x + w - mu) / s) - sigma((x - w - mu) / s),

where the first bin's lower edge is -inf (P = sigma((x + w - mu) / s)) and the last bin's upper edge
+inf (P = 1 - sigma((x - w - mu) / s)), so the K masses sum to 1. A mixture is
log sum_m pi_m P(x | mu_m, s_m) with pi = softmax(logits). Sampling inverts the CDFs: a component
m, then x = mu_m + s_m (log u - log(1 - u)) clipped to [-1, 1] and rounded to the nearest centre,
which lands in bin k with probability P(c_k) (up to float rounding of x). For RGB pixels (Sec. 2.2,
Eq. 3) one component generates the channels in turn, with means linear in the earlier channels:
mu_G = mu_G' + c0 x_R and mu_B = mu_B' + c1 x_R + c2 x_G (c = tanh of the raw coefficients).
Parallel WaveNet (van den Oord et al., arXiv:1711.10433, Sec. 2) uses the same likelihood over the
65536 16-bit values.

Numerics. With a = (x + w - mu) / s and b = (x - w - mu) / s (a > b), the interior mass is
evaluated through the exact identity

    sigma(a) - sigma(b) = sigma(a) sigma(-b) (1 - exp(-(a - b))),  a - b = 2 w / s,

i.e. log P = log_sigmoid(a) + log_sigmoid(-b) + log(1 - exp(-2 w / s)). No term cancels or
underflows, so no bin needs a fallback: float32 stays accurate to ~1e-6 relative in every bin, far
tails and very sharp logistics included. PixelCNN++ instead subtracts the two CDFs and, where the
difference is below 1e-5, falls back to the midpoint rule log pdf(x) - log(127.5) (127.5 = (K - 1)/2
hard-coded for K = 256): an approximation, and for K = 65536 (bin masses ~1e-5) the float32 CDF
difference itself loses up to ~1% to cancellation. The edges are placed exactly too: near +-1 a
16-bit bin is only ~500 float32 ulps wide, so x + w - mu formed in [-1, 1] units misplaces an edge
by ~1e-3 bins (up to ~1% of a sharp logistic's bin mass; the masses then sum to 1 only to ~1e-4).
Instead x is snapped to its index k and the offsets are formed in bin units,
(k +- 1/2 - (K - 1)/2) - mu (K - 1)/2, with mu (K - 1)/2 = mu 2^m - mu r exact for K a power of
two (r = 1/2), then scaled by 2 w / s.

log_scale is clipped from below at min_log_scale (zero gradient under the clip, as in PixelCNN++).
Its default -7 - log((K - 1) / 255) is PixelCNN++'s -7 at K = 256 and about -12.55 at K = 65536: in
both the bin half-width is at most e^7 / 255 ~ 4.3 scales, so one bin holds at most ~97.3% of a
logistic's mass. Computation is in float32 at least (float64 for float64 inputs).
"""

import math

import jax
import jax.numpy as jnp

# Below this log of the standardised bin width 2 w / s, log(1 - exp(-d)) = log(d) to ~1e-9.
_SMALL_LOG_WIDTH = -20.0


def default_min_log_scale(num_bins: int) -> float:
    """-7 - log((num_bins - 1) / 255): PixelCNN++'s -7 at 256 bins, the same w / s cap for any K."""
    return -7.0 - math.log((num_bins - 1) / 255.0)


def to_bin_centres(k: jax.Array, num_bins: int, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """Bin index k in [0, num_bins) -> its centre -1 + 2k / (num_bins - 1), exactly +-1 at the ends."""
    n = 2 * jnp.asarray(k).astype(jnp.int32) - (num_bins - 1)  # an integer in [-(K - 1), K - 1]
    # n times the rounded 1 / (K - 1) (what XLA makes of the division anyway) is symmetric in n but
    # can miss +-1 by an ulp at the ends (K = 42, 48, ...), so those are pinned.
    x = n.astype(dtype) * (1.0 / (num_bins - 1))
    return jnp.where(jnp.abs(n) == num_bins - 1, jnp.sign(n).astype(dtype), x)


def from_bin_centres(x: jax.Array, num_bins: int) -> jax.Array:
    """Value on [-1, 1] -> int32 index of the nearest bin centre (values outside: the end bins)."""
    k = jnp.round((jnp.asarray(x) + 1.0) * (0.5 * (num_bins - 1)))
    return jnp.clip(k, 0, num_bins - 1).astype(jnp.int32)


def _compute_dtype(*arrays: jax.Array) -> jnp.dtype:
    """At least float32 (bfloat16 cannot index 16-bit bins), float64 where the inputs are."""
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def _snap_to_grid(x: jax.Array, num_bins: int) -> jax.Array:
    """Clip to [-1, 1] and round to the nearest bin centre, keeping x's dtype."""
    return to_bin_centres(from_bin_centres(x, num_bins), num_bins, x.dtype)


def _log1mexp_neg(log_d: jax.Array) -> jax.Array:
    """log(1 - exp(-d)) for d = exp(log_d) > 0: finite, with finite gradients, for finite log_d."""
    small = log_d < _SMALL_LOG_WIDTH
    d = jnp.exp(jnp.where(small, 0.0, log_d))
    return jnp.where(small, log_d, jnp.log(-jnp.expm1(-d)))


def _edge_offsets(
    k: jax.Array, mean: jax.Array, num_bins: int, dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array]:
    """Bin k's upper and lower edges minus mean, in bins: k +- 1/2 - (K - 1)/2 - mean (K - 1)/2.

    With (K - 1)/2 = 2^m - r, mean (K - 1)/2 = mean 2^m - mean r, where mean 2^m is exact and, for K
    a power of two (r = 1/2), so is mean r; the offsets then carry one rounding relative to their
    size.
    """
    half_range = 0.5 * (num_bins - 1)
    power = 2.0 ** math.ceil(math.log2(half_range))
    mean = jnp.asarray(mean, dtype)
    scaled, remainder = mean * power, mean * (power - half_range)
    upper = (k + (1.0 - 0.5 * num_bins)).astype(dtype)  # k + 1/2 - (K - 1)/2, exact
    lower = (k - 0.5 * num_bins).astype(dtype)
    return (upper - scaled) + remainder, (lower - scaled) + remainder


def discretized_logistic_log_prob(
    x: jax.Array,
    mean: jax.Array,
    log_scale: jax.Array,
    *,
    num_bins: int,
    min_log_scale: float | None = None,
) -> jax.Array:
    """log P(x) of a logistic discretised to num_bins bins on [-1, 1]; x is snapped to a centre."""
    if min_log_scale is None:
        min_log_scale = default_min_log_scale(num_bins)
    dtype = _compute_dtype(x, mean, log_scale)
    k = from_bin_centres(x, num_bins)
    upper, lower = _edge_offsets(k, mean, num_bins, dtype)
    log_scale = jnp.maximum(log_scale, min_log_scale)
    log_width = math.log(2.0 / (num_bins - 1)) - log_scale  # log(2 w / s): one bin in scales
    bin_to_scales = jnp.exp(log_width)
    a, b = upper * bin_to_scales, lower * bin_to_scales
    lowest = jax.nn.log_sigmoid(a)  # the first bin: lower edge at -inf
    highest = jax.nn.log_sigmoid(-b)  # the last bin: upper edge at +inf
    interior = lowest + highest + _log1mexp_neg(log_width)
    return jnp.where(k == 0, lowest, jnp.where(k == num_bins - 1, highest, interior))


def discretized_mix_logistic_log_prob(
    x: jax.Array,
    logit_weights: jax.Array,
    means: jax.Array,
    log_scales: jax.Array,
    *,
    num_bins: int,
    min_log_scale: float | None = None,
) -> jax.Array:
    """log sum_m softmax(logit_weights)_m P(x | means_m, scales_m): x (...,), params (..., M)."""
    log_p_xM = discretized_logistic_log_prob(
        x[..., None], means, log_scales, num_bins=num_bins, min_log_scale=min_log_scale
    )
    log_weights_xM = jax.nn.log_softmax(logit_weights.astype(log_p_xM.dtype), axis=-1)
    return jax.nn.logsumexp(log_p_xM + log_weights_xM, axis=-1)


def _uniforms(rng: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    """U(0, 1) draws from one generator call, in [tiny, 1) so log u and log(1 - u) are finite."""
    return jax.random.uniform(rng, shape, dtype, minval=jnp.finfo(dtype).tiny, maxval=1.0)


def _component_from_uniform(u: jax.Array, logit_weights: jax.Array) -> jax.Array:
    """Inverse-CDF categorical: the count of cumulative weights pi_0 + ... + pi_m, m < M - 1, <= u."""
    cdf_xMm1 = jnp.cumsum(jax.nn.softmax(logit_weights, axis=-1)[..., :-1], axis=-1)
    return jnp.sum(u[..., None] >= cdf_xMm1, axis=-1)


def _select(a_xM: jax.Array, component: jax.Array) -> jax.Array:
    """a_xM[..., component] for a per-element component index."""
    return jnp.take_along_axis(a_xM, component[..., None], axis=-1)[..., 0]


def _logistic_from_uniform(
    u: jax.Array, mean: jax.Array, log_scale: jax.Array, num_bins: int, min_log_scale: float
) -> jax.Array:
    """Inverse-CDF sample mu + s (log u - log(1 - u)), clipped to [-1, 1], snapped to the grid."""
    s = jnp.exp(jnp.maximum(log_scale, min_log_scale))
    return _snap_to_grid(mean + s * (jnp.log(u) - jnp.log1p(-u)), num_bins)


def mix_logistic_sample(
    rng: jax.Array,
    logit_weights: jax.Array,
    means: jax.Array,
    log_scales: jax.Array,
    *,
    num_bins: int,
    min_log_scale: float | None = None,
) -> jax.Array:
    """A sample of the discretised mixture (parameters (..., M)) on the bin grid: shape (...,)."""
    if min_log_scale is None:
        min_log_scale = default_min_log_scale(num_bins)
    dtype = _compute_dtype(logit_weights, means, log_scales)
    logit_weights, means, log_scales = (
        a.astype(dtype) for a in jnp.broadcast_arrays(logit_weights, means, log_scales)
    )
    u_x2 = _uniforms(rng, (*means.shape[:-1], 2), dtype)
    component = _component_from_uniform(u_x2[..., 0], logit_weights)
    mean, log_scale = _select(means, component), _select(log_scales, component)
    return _logistic_from_uniform(u_x2[..., 1], mean, log_scale, num_bins, min_log_scale)


def _num_channels(num_params: int, num_mixtures: int) -> int:
    """C from P: 10 M for RGB (C = 3), 3 M for one channel (C = 1)."""
    if num_params == 10 * num_mixtures:
        return 3
    if num_params == 3 * num_mixtures:
        return 1
    raise ValueError(
        f"params has {num_params} channels; expected 10 * num_mixtures = {10 * num_mixtures} (RGB) "
        f"or 3 * num_mixtures = {3 * num_mixtures} (one channel)"
    )


def _split_params(
    params_BxHxWxP: jax.Array, num_mixtures: int, num_channels: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """-> logits (B, H, W, M), means and log_scales (B, H, W, C, M), tanh coefficients or None."""
    m = num_mixtures
    logits_BxHxWxM = params_BxHxWxP[..., :m]
    per_channel = 3 * m if num_channels == 3 else 2 * m
    rest_BxHxWxCxK = params_BxHxWxP[..., m:].reshape(
        *params_BxHxWxP.shape[:-1], num_channels, per_channel
    )
    means_BxHxWxCxM = rest_BxHxWxCxK[..., :m]
    log_scales_BxHxWxCxM = rest_BxHxWxCxK[..., m : 2 * m]
    coeffs_BxHxWxCxM = jnp.tanh(rest_BxHxWxCxK[..., 2 * m :]) if num_channels == 3 else None
    return logits_BxHxWxM, means_BxHxWxCxM, log_scales_BxHxWxCxM, coeffs_BxHxWxCxM


def _coupled_means(
    means_BxHxWxCxM: jax.Array, coeffs_BxHxWxCxM: jax.Array, x_BxHxWxCx1: jax.Array
) -> jax.Array:
    """mu_R, mu_G + c0 x_R, mu_B + c1 x_R + c2 x_G (x broadcast over the components)."""
    x_r, x_g = x_BxHxWxCx1[..., 0, :], x_BxHxWxCx1[..., 1, :]
    c = coeffs_BxHxWxCxM
    return jnp.stack(
        [
            means_BxHxWxCxM[..., 0, :],
            means_BxHxWxCxM[..., 1, :] + c[..., 0, :] * x_r,
            means_BxHxWxCxM[..., 2, :] + c[..., 1, :] * x_r + c[..., 2, :] * x_g,
        ],
        axis=-2,
    )


def pixelcnn_pp_log_prob(
    x_BxHxWxC: jax.Array,
    params_BxHxWxP: jax.Array,
    *,
    num_mixtures: int,
    num_bins: int = 256,
    min_log_scale: float | None = None,
) -> jax.Array:
    """Per-pixel log P(x) of PixelCNN++'s discretised logistic mixture (Eqs. 2-3): shape (B, H, W).

    x holds bin centres on [-1, 1] (snapped to the grid), C = 3 (RGB) or 1. With M = num_mixtures, params' last axis is
    PixelCNN++'s layout: [0, M) mixture logits; then for channel c = 0, 1, 2 (R, G, B) a block of
    3M starting at M + 3Mc: M means, M log scales, M raw coupling coefficients (P = 10M). The
    coefficients are tanh-squashed: block R's set is c0, G's is c1, B's is c2, and
    mu_G += c0 x_R, mu_B += c1 x_R + c2 x_G. For C = 1: [logits, means, log scales] (P = 3M).
    Within a component the channels' log probs add; then logsumexp over components.
    """
    num_channels = x_BxHxWxC.shape[-1]
    expected = _num_channels(params_BxHxWxP.shape[-1], num_mixtures)
    if num_channels != expected:
        raise ValueError(
            f"x has {num_channels} channels but params ({params_BxHxWxP.shape[-1]} = "
            f"{params_BxHxWxP.shape[-1] // num_mixtures} * num_mixtures) describe {expected}"
        )
    dtype = _compute_dtype(x_BxHxWxC, params_BxHxWxP)
    params_BxHxWxP = params_BxHxWxP.astype(dtype)
    logits, means, log_scales, coeffs = _split_params(params_BxHxWxP, num_mixtures, num_channels)
    x_BxHxWxCx1 = _snap_to_grid(x_BxHxWxC.astype(dtype), num_bins)[..., None]  # as the sampler's
    if coeffs is not None:
        means = _coupled_means(means, coeffs, x_BxHxWxCx1)
    log_p_BxHxWxCxM = discretized_logistic_log_prob(
        x_BxHxWxCx1, means, log_scales, num_bins=num_bins, min_log_scale=min_log_scale
    )
    log_joint_BxHxWxM = jnp.sum(log_p_BxHxWxCxM, axis=-2) + jax.nn.log_softmax(logits, axis=-1)
    return jax.nn.logsumexp(log_joint_BxHxWxM, axis=-1)


def pixelcnn_pp_sample(
    rng: jax.Array,
    params_BxHxWxP: jax.Array,
    *,
    num_mixtures: int,
    num_bins: int = 256,
    min_log_scale: float | None = None,
) -> jax.Array:
    """A sample (B, H, W, C) of pixelcnn_pp_log_prob's distribution: component, R, G | R, B | R, G.

    One uniform draw of 1 + C values per pixel: an inverse-CDF component, then per channel a snapped
    inverse-CDF logistic sample. G and B condition on the snapped earlier channels (PixelCNN++'s
    sampler uses the unsnapped ones), so the samples follow exactly the distribution scored above.
    """
    if min_log_scale is None:
        min_log_scale = default_min_log_scale(num_bins)
    num_channels = _num_channels(params_BxHxWxP.shape[-1], num_mixtures)
    params_BxHxWxP = params_BxHxWxP.astype(_compute_dtype(params_BxHxWxP))
    logits, means, log_scales, coeffs = _split_params(params_BxHxWxP, num_mixtures, num_channels)
    u_BxHxWx1pC = _uniforms(rng, (*logits.shape[:-1], 1 + num_channels), means.dtype)
    component_BxHxWx1 = _component_from_uniform(u_BxHxWx1pC[..., 0], logits)[..., None]
    mean_BxHxWxC = _select(means, component_BxHxWx1)
    log_scale_BxHxWxC = _select(log_scales, component_BxHxWx1)

    def channel(c: int, mean: jax.Array) -> jax.Array:
        u = u_BxHxWx1pC[..., 1 + c]
        return _logistic_from_uniform(u, mean, log_scale_BxHxWxC[..., c], num_bins, min_log_scale)

    x_r = channel(0, mean_BxHxWxC[..., 0])
    if coeffs is None:
        return x_r[..., None]
    c_BxHxWxC = _select(coeffs, component_BxHxWx1)
    x_g = channel(1, mean_BxHxWxC[..., 1] + c_BxHxWxC[..., 0] * x_r)
    x_b = channel(2, mean_BxHxWxC[..., 2] + c_BxHxWxC[..., 1] * x_r + c_BxHxWxC[..., 2] * x_g)
    return jnp.stack([x_r, x_g, x_b], axis=-1)


def pixelcnn_pp_num_params(num_channels: int, num_mixtures: int) -> int:
    """P, the parameters per pixel of pixelcnn_pp_log_prob: 10 M for RGB, 3 M for one channel."""
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels={num_channels}: the mixture is built for 1 or 3 channels")
    return num_mixtures * (10 if num_channels == 3 else 3)


def pixelcnn_pp_mean(params_BxHxWxP: jax.Array, *, num_mixtures: int) -> jax.Array:
    """The mixture's mean image (B, H, W, C) before discretisation, clipped to [-1, 1].

    Within component m, E[x_R] = mu_R, E[x_G] = mu_G + c0 E[x_R], E[x_B] = mu_B + c1 E[x_R]
    + c2 E[x_G] (the coupling is linear); these are weighted by pi. It ignores the bins and the
    clipping of the tails at +-1, so it is the mean of the continuous mixture, a display and
    feedback image rather than the exact mean of the discrete distribution.
    """
    num_channels = _num_channels(params_BxHxWxP.shape[-1], num_mixtures)
    params_BxHxWxP = params_BxHxWxP.astype(_compute_dtype(params_BxHxWxP))
    logits, means, _, coeffs = _split_params(params_BxHxWxP, num_mixtures, num_channels)
    if coeffs is not None:
        e_r = means[..., 0, :]
        e_g = means[..., 1, :] + coeffs[..., 0, :] * e_r
        e_b = means[..., 2, :] + coeffs[..., 1, :] * e_r + coeffs[..., 2, :] * e_g
        means = jnp.stack([e_r, e_g, e_b], axis=-2)
    weights_BxHxWx1xM = jax.nn.softmax(logits, axis=-1)[..., None, :]
    return jnp.clip(jnp.sum(weights_BxHxWx1xM * means, axis=-1), -1.0, 1.0)
