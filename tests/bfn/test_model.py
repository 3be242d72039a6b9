"""Tests for the BFN MNIST U-Net (deepgen.bfn.model)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.bfn.model import UNet, count_params, timestep_embedding
from deepgen.core.errors import ConfigError

SMALL = dict(
    model_channels=16,
    num_groups=8,
    channel_mult=(1, 2),  # two levels: a down- and an upsampling, skips with and without a conv
    num_res_blocks=1,
    attention_resolutions=(2,),  # exercises attention at 14x14 besides the middle block
    num_heads=4,
    dropout=0.5,
)


def _torch_param_count(
    in_ch: int = 2,
    mc: int = 128,
    mult: tuple[int, ...] = (1, 2, 2),
    nrb: int = 2,
    attn_ds: tuple[int, ...] = (8, 16),
    out: int = 1,
) -> int:
    """Parameter count of the official PyTorch UNetModel + adapters, derived from its layer shapes."""
    lin = lambda i, o: i * o + o
    conv = lambda i, o, k: i * o * k * k + o
    gn = lambda c: 2 * c
    emb = 4 * mc

    def res(i: int, o: int) -> int:
        """ResBlock: in GN, conv, emb linear, out GN, zero conv, optional 1x1 skip."""
        return (
            gn(i) + conv(i, o, 3) + lin(emb, o) + gn(o) + conv(o, o, 3) + (conv(i, o, 1) * (i != o))
        )

    attn = lambda c: gn(c) + conv(c, 3 * c, 1) + conv(c, c, 1)
    n = lin(in_ch, mc) + lin(mc, emb) + lin(emb, emb) + conv(mc, mc, 3)
    chans, ch, ds = [mc], mc, 1
    for level, m in enumerate(mult):
        for _ in range(nrb):
            n += res(ch, m * mc) + (attn(m * mc) if ds in attn_ds else 0)
            ch = m * mc
            chans.append(ch)
        if level != len(mult) - 1:
            n += conv(ch, ch, 3)
            chans.append(ch)
            ds *= 2
    n += 2 * res(ch, ch) + attn(ch)
    for level, m in reversed(list(enumerate(mult))):
        for i in range(nrb + 1):
            n += res(ch + chans.pop(), m * mc)
            ch = m * mc
            n += attn(ch) if ds in attn_ds else 0
            if level and i == nrb:
                n += conv(ch, ch, 3)
                ds //= 2
    n += gn(ch) + conv(mc, mc, 3)  # U-Net head, out_channels = model_channels
    return n + lin(2 * mc, out)  # output adapter on [projected input, U-Net output]


def _inputs(seed: int, batch: int = 2, size: int = 28) -> tuple[jax.Array, jax.Array]:
    """Random BFN-style inputs [2p-1, 2t-1] and times (numpy, so nothing is compiled)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(size=(batch, size, size, 1)).astype(np.float32)
    t_B = rng.uniform(size=(batch,)).astype(np.float32)
    tt = np.broadcast_to(t_B[:, None, None, None], p.shape)
    return jnp.asarray(np.concatenate([2 * p - 1, 2 * tt - 1], axis=-1)), jnp.asarray(t_B)


def _perturb(params: dict, seed: int, scale: float = 0.05) -> dict:
    """Add Gaussian noise to every parameter, so zero-initialised layers become active."""
    rng = np.random.default_rng(seed)
    noisy = lambda p: jnp.asarray(p + scale * rng.standard_normal(p.shape).astype(np.float32))
    return jax.tree_util.tree_map(noisy, jax.device_get(params))


def _compile(fn, *example_args):
    """jit-compile fn for these argument shapes, skipping LLVM optimisation (halves compile time)."""
    lowered = jax.jit(fn).lower(*example_args)
    return lowered.compile(compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(scope="session")
def small() -> tuple[UNet, dict, dict, jax.Array, jax.Array]:
    """Small model, its init params, perturbed params and a batch of inputs."""
    model = UNet(**SMALL)
    x, t_B = _inputs(1)
    # Param shapes do not depend on the image size: init on 8x8.
    init = lambda key, x, t: model.init(key, x, t, train=False)["params"]
    args = (jax.random.key(0), x[:1, :8, :8], t_B[:1])
    params = _compile(init, *args)(*args)
    return model, params, _perturb(params, 2), x, t_B


@pytest.fixture(scope="session")
def apply_eval(small):
    """Compiled eval-mode apply of the small model; takes a dropout rng that must be ignored."""
    model, params, _, x, t_B = small
    fn = lambda p, x, t, rng: model.apply({"params": p}, x, t, train=False, rngs={"dropout": rng})
    return _compile(fn, params, x, t_B, jax.random.key(0))


@pytest.fixture(scope="session")
def train_step(small):
    """Compiled value-and-grad of a Bernoulli loss in train mode; aux is the logits."""
    model, params, _, x, t_B = small
    target = (x[..., :1] > 0).astype(jnp.float32)

    def loss(p, rng):
        """Mean sigmoid cross-entropy."""
        logits = model.apply({"params": p}, x, t_B, train=True, rngs={"dropout": rng})
        return jnp.mean(jnp.logaddexp(0.0, logits) - target * logits), logits

    return _compile(jax.value_and_grad(loss, has_aux=True), params, jax.random.key(0))


def test_paper_scale_param_count():
    """Paper config matches the official architecture exactly and the ~25M (100 MB) checkpoint."""
    x = jax.ShapeDtypeStruct((1, 28, 28, 2), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    shapes = jax.eval_shape(lambda x, t: UNet().init(jax.random.key(0), x, t, train=False), x, t)
    n = count_params(shapes["params"])
    assert n == _torch_param_count() == 24_808_961
    assert abs(n - 25e6) / 25e6 < 0.02


def test_small_param_count_matches_torch_layout(small):
    """The small config also matches the official layer layout, attention blocks included."""
    n = count_params(small[1])
    assert n == _torch_param_count(mc=16, mult=SMALL["channel_mult"], nrb=1, attn_ds=(2,))


def test_timestep_embedding():
    """Embedding is [cos, sin] with frequencies exp(-log(1e4) * i / half)."""
    emb = timestep_embedding(jnp.array([0.0, 2.0]), 8)
    assert emb.shape == (2, 8)
    np.testing.assert_allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0])
    freqs = np.exp(-np.log(1e4) * np.arange(4) / 4)
    np.testing.assert_allclose(emb[1], np.concatenate([np.cos(2 * freqs), np.sin(2 * freqs)]), 1e-6)


def test_small_forward_shape_dtype_finite(small, apply_eval):
    """Eval forward returns finite float32 logits, one per pixel."""
    _, _, pparams, x, t_B = small
    out = apply_eval(pparams, x, t_B, jax.random.key(0))
    assert out.shape == (2, 28, 28, 1)
    assert out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))


def test_dropout(small, apply_eval, train_step):
    """Train mode with different dropout rngs differs; eval mode ignores the rng."""
    _, _, pparams, x, t_B = small
    (_, a), _ = train_step(pparams, jax.random.key(10))
    (_, b), _ = train_step(pparams, jax.random.key(11))
    assert not np.allclose(a, b)
    c = apply_eval(pparams, x, t_B, jax.random.key(10))
    d = apply_eval(pparams, x, t_B, jax.random.key(11))
    np.testing.assert_array_equal(c, d)
    assert not np.allclose(a, c)


def test_init_zero_convs_and_skip(small, apply_eval):
    """At init the U-Net output is zero, so only the skip path acts: t has no effect, x does."""
    _, params, _, x, t_B = small
    base = apply_eval(params, x, t_B, jax.random.key(0))
    np.testing.assert_array_equal(base, apply_eval(params, x, t_B * 0.5, jax.random.key(0)))
    assert not np.allclose(base, apply_eval(params, -x, t_B, jax.random.key(0)))


def test_t_dependence_after_perturbation(small, apply_eval):
    """With non-zero last convs, the output depends on t through the time embedding."""
    _, _, pparams, x, t_B = small
    a = apply_eval(pparams, x, t_B, jax.random.key(0))
    b = apply_eval(pparams, x, t_B * 0.5, jax.random.key(0))
    assert not np.allclose(a, b, atol=1e-4)


def test_bf16_close_to_fp32(small, apply_eval):
    """bfloat16 compute gives finite float32 output close to the float32 model."""
    _, _, pparams, x, t_B = small
    ref = apply_eval(pparams, x, t_B, jax.random.key(0))
    model16 = UNet(**SMALL, dtype=jnp.bfloat16)
    out = _compile(lambda p: model16.apply({"params": p}, x, t_B, train=False), pparams)(pparams)
    assert out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
    assert rel < 5e-2, rel


def test_jit_grad(small, train_step):
    """jit(grad) in train mode: finite grads that reach every parameter; zero convs learn at init."""
    _, params, pparams, _, _ = small
    (value, _), grads = train_step(pparams, jax.random.key(3))
    assert bool(jnp.isfinite(value))
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(grads))
    assert all(np.all(np.isfinite(g)) for _, g in leaves)
    assert not [jax.tree_util.keystr(k) for k, g in leaves if not np.any(g != 0)]
    _, grads0 = train_step(params, jax.random.key(3))
    assert float(jnp.abs(grads0["out_conv"]["kernel"]).max()) > 0
    # ... while the zero head blocks all gradient into the torso (improved-diffusion's design).
    assert float(jnp.abs(grads0["middle_block_0"]["out_conv"]["kernel"]).max()) == 0


@pytest.mark.parametrize("size", [8, 32])
def test_other_sizes(size):
    """8x8 and 32x32 inputs go through the three-level U-Net (shapes only, via eval_shape)."""
    model = UNet(model_channels=8, num_groups=4, num_res_blocks=1, out_channels=3)
    x, t_B = _inputs(0, batch=1, size=size)
    out, _ = jax.eval_shape(lambda: model.init_with_output(jax.random.key(1), x, t_B, train=False))
    assert out.shape == (1, size, size, 3)
    assert out.dtype == jnp.float32


def test_config_errors():
    """Indivisible image sizes and GroupNorm channel counts are reported as ConfigError."""
    x, t_B = _inputs(0, batch=1, size=10)
    with pytest.raises(ConfigError, match="divisible by 4"):
        jax.eval_shape(
            lambda: UNet(model_channels=8, num_groups=4).init(
                jax.random.key(0), x, t_B, train=False
            )
        )
    x, t_B = _inputs(0, batch=1, size=8)
    with pytest.raises(ConfigError, match="GroupNorm"):
        jax.eval_shape(
            lambda: UNet(model_channels=12, num_groups=8).init(
                jax.random.key(0), x, t_B, train=False
            )
        )
