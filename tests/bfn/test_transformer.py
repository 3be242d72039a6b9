"""Tests for BFN's non-causal text8 GPT (deepgen.bfn.transformer)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.bfn.transformer import (
    Transformer,
    count_params,
    model_flops_per_token,
    sinusoidal_positions,
)
from deepgen.core.errors import ConfigError

K, T, B = 27, 16, 2
SMALL = dict(vocab_size=K, num_layers=2, num_heads=4, width=32, max_len=T)


def _torch_param_count(K: int = 27, L: int = 24, D: int = 768) -> int:
    """Parameter count of the official GPT + TextInputAdapter (bias=True, skip=True)."""
    lin = lambda i, o: i * o + o
    ln = 2 * D
    block = ln + lin(D, 3 * D) + lin(D, D) + ln + lin(D, 4 * D) + lin(4 * D, D)
    adapter = lin(K, D) + lin(1, D)  # the position table is a buffer, not a parameter
    return adapter + L * block + ln + lin(2 * D, K)


def _reference_forward(p: dict, theta: np.ndarray, t: np.ndarray, num_heads: int) -> np.ndarray:
    """NumPy transcription of the official PyTorch forward (eval mode), float64.

    Follows networks/adapters.py TextInputAdapter and networks/transformer.py GPT line by line;
    ``x @ kernel + bias`` is PyTorch's ``F.linear(x, weight, bias)`` with ``weight = kernel.T``.
    """
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
    lin = lambda x, q: x @ q["kernel"] + q["bias"]

    def layer_norm(x, q):
        """F.layer_norm with eps 1e-5."""
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * q["scale"] + q["bias"]

    def gelu_tanh(x):
        """F.gelu(x, approximate='tanh')."""
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    Bn, Tn, _ = theta.shape
    D = p["ln_f"]["scale"].shape[0]
    # pe_encode: pe[:, 0::2] = sin(pos / 1000**(arange(0, D, 2) / D)),
    #            pe[:, 1::2] = cos(pos / 1000**(arange(1, D, 2) / D)).
    pos = np.arange(Tn)[:, None]
    pe = np.zeros((Tn, D))
    pe[:, 0::2] = np.sin(pos / np.power(1000.0, np.arange(0, D, 2) / D))
    pe[:, 1::2] = np.cos(pos / np.power(1000.0, np.arange(1, D, 2) / D))
    ad = p["input_adapter"]
    t_emb = lin((2 * t - 1)[:, None], ad["t_embedding"])[:, None, :]
    x_in = lin(2 * theta - 1, ad["inp_embedding"]) + pe[None] + t_emb
    x = x_in
    nh, hs = num_heads, D // num_heads
    for i in range(len([k for k in p if k.startswith("h_")])):
        blk = p[f"h_{i}"]
        qkv = lin(layer_norm(x, blk["ln_1"]), blk["attn"]["c_attn"])
        q, k, v = np.split(qkv, 3, axis=-1)
        q, k, v = (a.reshape(Bn, Tn, nh, hs).transpose(0, 2, 1, 3) for a in (q, k, v))
        att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)
        att = np.exp(att - att.max(-1, keepdims=True))
        att = att / att.sum(-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(Bn, Tn, D)
        x = x + lin(y, blk["attn"]["c_proj"])
        h = gelu_tanh(lin(layer_norm(x, blk["ln_2"]), blk["mlp"]["c_fc"]))
        x = x + lin(h, blk["mlp"]["c_proj"])
    x = layer_norm(x, p["ln_f"])
    return lin(np.concatenate([x, x_in], -1), p["lm_head"])


def _inputs(seed: int, batch: int = B, length: int = T) -> tuple[jax.Array, jax.Array]:
    """Random simplex theta (B, T, K) and times t (B,)."""
    rng = np.random.default_rng(seed)
    logits = 2.0 * rng.standard_normal((batch, length, K))
    theta = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    t_B = rng.uniform(size=(batch,))
    return jnp.asarray(theta, jnp.float32), jnp.asarray(t_B, jnp.float32)


def _compile(fn, *example_args):
    """jit-compile fn for these argument shapes, skipping LLVM optimisation (faster compile)."""
    lowered = jax.jit(fn).lower(*example_args)
    return lowered.compile(compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(scope="session")
def small() -> tuple[dict, jax.Array, jax.Array]:
    """Init params of the small model and a batch of inputs."""
    theta, t_B = _inputs(1)
    init = lambda key, x, t: Transformer(**SMALL).init(key, x, t, train=False)["params"]
    args = (jax.random.key(0), theta, t_B)
    return _compile(init, *args)(*args), theta, t_B


def _apply_fn(**overrides):
    """Eval-mode apply of the small model with config overrides: (params, theta, t) -> logits."""
    model = Transformer(**{**SMALL, **overrides})
    return lambda p, x, t: model.apply({"params": p}, x, t, train=False)


@pytest.fixture(scope="session")
def apply_eval(small):
    """Compiled float32 einsum-path eval apply."""
    params, theta, t_B = small
    return _compile(_apply_fn(), params, theta, t_B)


def test_paper_scale_param_count():
    """Paper config: exactly the official layer layout, ~170M params (~682 MB fp32 checkpoint)."""
    x = jax.ShapeDtypeStruct((1, 256, 27), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    shapes = jax.eval_shape(
        lambda x, t: Transformer().init_with_output(jax.random.key(0), x, t, train=False), x, t
    )
    out, variables = shapes
    assert out.shape == (1, 256, 27) and out.dtype == jnp.float32
    assert set(variables) == {"params"}  # the position table is a constant, not a variable
    n = count_params(variables["params"])
    assert n == _torch_param_count() == 170_175_003
    assert abs(n - 170e6) / 170e6 < 0.03
    # fp32 weights: 680.7 MB (681.5 MB with the 256x768 pe buffer) vs the ~682 MB checkpoint.
    assert abs(4 * n / 1e6 - 682) / 682 < 0.005
    leaves = jax.tree_util.tree_leaves(variables["params"])
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)
    bf16 = jax.eval_shape(
        lambda x, t: Transformer(dtype=jnp.bfloat16).init(jax.random.key(0), x, t, train=False),
        x,
        t,
    )
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(bf16))


def test_small_param_count_and_names(small):
    """The small config matches the official layout; parameter names mirror the PyTorch modules."""
    params = small[0]
    assert count_params(params) == _torch_param_count(K=K, L=2, D=32)
    assert set(params) == {"input_adapter", "h_0", "h_1", "ln_f", "lm_head"}
    assert set(params["h_0"]) == {"ln_1", "attn", "ln_2", "mlp"}
    assert params["lm_head"]["kernel"].shape == (64, K)  # skip: concat of two width-32 vectors
    assert params["lm_head"]["bias"].shape == (K,)


def test_init_distribution():
    """nanoGPT init: N(0, 0.02) weights, scaled N(0, 0.02/sqrt(2L)) c_proj, zero biases, LN ones."""
    model = Transformer(vocab_size=K, num_layers=4, num_heads=4, width=64, max_len=4)
    theta, t_B = _inputs(0, batch=1, length=4)
    init = lambda key: model.init(key, theta, t_B, train=False)["params"]
    params = jax.device_get(_compile(init, jax.random.key(3))(jax.random.key(3)))
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
    scaled = 0.02 / math.sqrt(2 * 4)
    proj = np.concatenate([v.ravel() for k, v in flat.items() if "c_proj" in k and "kernel" in k])
    other = np.concatenate(
        [v.ravel() for k, v in flat.items() if "c_proj" not in k and "kernel" in k]
    )
    assert abs(proj.std() / scaled - 1) < 0.05 and abs(proj.mean()) < 0.1 * scaled
    assert abs(other.std() / 0.02 - 1) < 0.05 and abs(other.mean()) < 0.002
    assert abs(params["input_adapter"]["inp_embedding"]["kernel"].std() / 0.02 - 1) < 0.1
    for k, v in flat.items():
        if k.endswith("['bias']"):
            np.testing.assert_array_equal(v, 0, err_msg=k)
        if k.endswith("['scale']"):
            np.testing.assert_array_equal(v, 1, err_msg=k)


def test_sinusoidal_positions():
    """pe_encode: sin at even columns, cos at odd columns, exponent j / D with base 1000."""
    pe = sinusoidal_positions(256, 8)
    assert pe.shape == (256, 8) and pe.dtype == np.float32
    np.testing.assert_allclose(pe[0], [0, 1, 0, 1, 0, 1, 0, 1])
    pos = 5.0
    expect = [
        np.sin(pos),
        np.cos(pos / 1000 ** (1 / 8)),
        np.sin(pos / 1000 ** (2 / 8)),
        np.cos(pos / 1000 ** (3 / 8)),
    ]
    np.testing.assert_allclose(pe[5, :4], expect, rtol=1e-6)


def test_matches_reference_forward(small, apply_eval):
    """The einsum forward equals a NumPy transcription of the official PyTorch code."""
    params, theta, t_B = small
    params = _perturb(params, 5)  # break the zero biases / unit LN scales
    out = apply_eval(params, theta, t_B)
    ref = _reference_forward(jax.device_get(params), np.asarray(theta), np.asarray(t_B), 4)
    # Tight enough to tell the tanh GELU from the exact one (max difference ~2e-5 here).
    np.testing.assert_allclose(out, ref, rtol=0, atol=3e-6)


def _perturb(params: dict, seed: int, scale: float = 0.05) -> dict:
    """Add Gaussian noise to every parameter (biases and LayerNorm params become non-trivial)."""
    rng = np.random.default_rng(seed)
    noisy = lambda p: jnp.asarray(p + scale * rng.standard_normal(p.shape).astype(np.float32))
    return jax.tree_util.tree_map(noisy, jax.device_get(params))


def test_forward_shape_dtype_finite(small, apply_eval):
    """Eval forward returns finite float32 logits (B, T, K)."""
    params, theta, t_B = small
    out = apply_eval(params, theta, t_B)
    assert out.shape == (B, T, K) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))


def test_non_causal(small, apply_eval):
    """Changing the LAST position's input changes the FIRST position's output."""
    params, theta, t_B = small
    base = apply_eval(params, theta, t_B)
    theta2 = theta.at[:, -1].set(jnp.roll(theta[:, -1], 3, axis=-1))
    out = apply_eval(params, theta2, t_B)
    assert np.abs(out[:, 0] - base[:, 0]).max() > 1e-5


def test_t_dependence(small, apply_eval):
    """The output depends on t (through t_embedding) at every position."""
    params, theta, t_B = small
    a = apply_eval(params, theta, t_B)
    b = apply_eval(params, theta, 1.0 - t_B)
    assert np.all(np.abs(a - b).max(axis=-1) > 1e-5)


def test_positions_matter(small, apply_eval):
    """Swapping two positions' inputs does not just swap the outputs (position codes are used)."""
    params, theta, t_B = small
    base = apply_eval(params, theta, t_B)
    perm = np.arange(T)
    perm[[2, 9]] = [9, 2]
    out = apply_eval(params, theta[:, perm], t_B)
    assert np.abs(out[:, perm] - base).max() > 1e-4
    # Identical inputs at all positions still give position-dependent outputs.
    flat = jnp.full_like(theta, 1.0 / K)
    uniform = apply_eval(params, flat, t_B)
    assert np.abs(uniform[:, 0] - uniform[:, 1]).max() > 1e-5


def test_bf16_close_to_fp32(small, apply_eval):
    """bfloat16 compute gives finite float32 logits close to the float32 model."""
    params, theta, t_B = small
    params = _perturb(params, 6)
    ref = apply_eval(params, theta, t_B)
    out = _compile(_apply_fn(dtype=jnp.bfloat16), params, theta, t_B)(params, theta, t_B)
    assert out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
    assert 0 < rel < 2e-2, rel


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dot_product_attention_matches_einsum(small, dtype):
    """jax.nn.dot_product_attention (implementation='xla') agrees with the einsum path."""
    params, theta, t_B = small
    params = _perturb(params, 7)
    a = _compile(_apply_fn(dtype=dtype), params, theta, t_B)(params, theta, t_B)
    b = _compile(_apply_fn(dtype=dtype, attention_impl="xla"), params, theta, t_B)(
        params, theta, t_B
    )
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
    assert rel < tol, rel


def test_jit_grad(small):
    """jit(grad) of a cross-entropy loss: finite and non-zero for every parameter."""
    params, theta, t_B = small
    target = jnp.argmax(theta, axis=-1)

    def loss(p):
        """Mean categorical cross-entropy of the logits against argmax(theta)."""
        logits = Transformer(**SMALL).apply({"params": p}, theta, t_B, train=True)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, target[..., None], axis=-1))

    value, grads = _compile(jax.value_and_grad(loss), params)(params)
    assert bool(jnp.isfinite(value))
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(grads))
    assert all(np.all(np.isfinite(g)) for _, g in leaves)
    assert not [jax.tree_util.keystr(k) for k, g in leaves if not np.any(g != 0)]


def test_dropout(small, apply_eval):
    """dropout > 0: train mode depends on the rng, eval mode ignores it; dropout 0 needs no rng."""
    params, theta, t_B = small
    model = Transformer(**SMALL, dropout=0.1)

    def both(p, rng):
        """(train-mode logits, eval-mode logits) with the same dropout rng."""
        fn = lambda train: model.apply(
            {"params": p}, theta, t_B, train=train, rngs={"dropout": rng}
        )
        return fn(True), fn(False)

    both = _compile(both, params, jax.random.key(0))
    (a, c), (b, d) = both(params, jax.random.key(1)), both(params, jax.random.key(2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(c, d)
    np.testing.assert_allclose(c, apply_eval(params, theta, t_B), rtol=1e-6, atol=1e-6)
    # With dropout 0 the train-mode forward is deterministic and draws no rng.
    out = Transformer(**SMALL).apply({"params": params}, theta[:1, :4], t_B[:1], train=True)
    assert out.shape == (1, 4, K)


def test_model_flops_per_token():
    """6N + 12 L d T for the paper config (about 1.08 GFLOPs per token)."""
    n = _torch_param_count()
    flops = model_flops_per_token(24, 768, 256, n)
    assert flops == 6 * 170_175_003 + 12 * 24 * 768 * 256 == 1_077_673_122


def test_config_errors():
    """Bad head counts, shapes, lengths and attention options are ConfigErrors."""
    theta, t_B = _inputs(0, batch=1, length=4)

    def init(x=theta, t=t_B, train=False, **kw):
        """eval_shape of init with SMALL overridden by kw."""
        model = Transformer(**{**SMALL, **kw})
        return jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, train=train))

    with pytest.raises(ConfigError, match="divisible"):
        init(num_heads=5)
    with pytest.raises(ConfigError, match="theta must have shape"):
        init(x=theta[..., :5])
    with pytest.raises(ConfigError, match="exceeds max_len"):
        init(max_len=3)
    with pytest.raises(ConfigError, match="t must have shape"):
        init(t=jnp.zeros((2,)))
    with pytest.raises(ConfigError, match="attention_impl"):
        init(attention_impl="flash")
    with pytest.raises(ConfigError, match="no attention dropout"):
        init(train=True, dropout=0.1, attention_impl="xla")
