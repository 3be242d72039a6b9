"""RMSProp in the optimiser factory, checked against updates computed by hand in numpy."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from deepgen.core.errors import ConfigError
from deepgen.core.optim import OPTIMIZERS, learning_rate_schedule, make_optimizer

GRADS = (np.array([0.5, -2.0, 0.01]), np.array([0.3, 1.0, -0.02]))


def _opt(**overrides) -> ConfigDict:
    fields = {
        "name": "rmsprop",
        "lr": 0.1,
        "schedule": "constant",
        "warmup_steps": 0,
        "eps": 0.1,
        "decay": 0.9,
        "centered": False,
        "momentum": 0.0,
        "eps_in_sqrt": True,
        "clip_norm": 0.0,
    }
    fields.update(overrides)
    return ConfigDict(fields)


def _run(opt: ConfigDict, grads=GRADS, num_steps: int = 10) -> list[np.ndarray]:
    """Parameters after each update, starting from zeros."""
    optimizer = make_optimizer(opt, num_steps)
    params = {"w": jnp.zeros(3, jnp.float32)}
    state = optimizer.init(params)
    trajectory = []
    for grad in grads:
        updates, state = optimizer.update({"w": jnp.asarray(grad, jnp.float32)}, state, params)
        params = optax.apply_updates(params, updates)
        trajectory.append(np.asarray(params["w"], np.float64))
    return trajectory


def test_rmsprop_is_registered():
    assert "rmsprop" in OPTIMIZERS


def test_plain_rmsprop_two_updates_by_hand():
    """A3C's Eqs. 8-9: g = a g + (1 - a) d^2, theta -= lr d / sqrt(g + eps)."""
    lr, decay, eps = 0.1, 0.9, 0.1
    d1, d2 = GRADS
    nu1 = (1 - decay) * d1**2
    w1 = -lr * d1 / np.sqrt(nu1 + eps)
    nu2 = decay * nu1 + (1 - decay) * d2**2
    w2 = w1 - lr * d2 / np.sqrt(nu2 + eps)
    got = _run(_opt(lr=lr, decay=decay, eps=eps))
    np.testing.assert_allclose(got[0], w1, rtol=1e-6)
    np.testing.assert_allclose(got[1], w2, rtol=1e-6)
    # A concrete number for the first coordinate: nu = 0.1 * 0.25, step 0.1 * 0.5 / sqrt(0.125).
    assert got[0][0] == pytest.approx(-0.05 / np.sqrt(0.125), rel=1e-6)


def test_centered_rmsprop_is_the_nature_dqn_lua_update():
    """NeuralQLearner.lua: g = .95 g + .05 dw; g2 = .95 g2 + .05 dw^2; w += lr dw / sqrt(g2 - g^2 + .01)."""
    lr = 2.5e-4
    g = np.zeros(3)
    g2 = np.zeros(3)
    w = np.zeros(3)
    expected = []
    for grad in GRADS:
        dw = -grad  # the Lua code accumulates the negative gradient and adds the step
        g = 0.95 * g + 0.05 * dw
        g2 = 0.95 * g2 + 0.05 * dw * dw
        w = w + lr * dw / np.sqrt(g2 - g * g + 0.01)
        expected.append(w.copy())
    got = _run(_opt(lr=lr, decay=0.95, eps=0.01, centered=True))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_rmsprop_momentum_and_eps_outside_the_root():
    lr, decay, eps, momentum = 0.05, 0.8, 1e-3, 0.9
    nu, buffer, w = np.zeros(3), np.zeros(3), np.zeros(3)
    expected = []
    for grad in GRADS:
        nu = decay * nu + (1 - decay) * grad**2
        buffer = momentum * buffer + lr * grad / np.sqrt(nu + eps)  # TensorFlow's RMSProp
        w = w - buffer
        expected.append(w.copy())
    got = _run(_opt(lr=lr, decay=decay, eps=eps, momentum=momentum))
    np.testing.assert_allclose(got, expected, rtol=1e-5)

    nu, w = np.zeros(3), np.zeros(3)
    expected = []
    for grad in GRADS:
        nu = decay * nu + (1 - decay) * grad**2
        w = w - lr * grad / (np.sqrt(nu) + eps)  # PyTorch's placement of eps
        expected.append(w.copy())
    got = _run(_opt(lr=lr, decay=decay, eps=eps, eps_in_sqrt=False))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_eps_over_batch_squared_makes_a_mean_loss_step_like_a_summed_loss_step():
    """Gradients B times smaller with eps / B^2 give the same updates (used by configs/noisynet.py)."""
    batch = 32
    summed = _run(_opt(lr=2.5e-4, decay=0.95, eps=0.01, centered=True))
    mean = _run(
        _opt(lr=2.5e-4, decay=0.95, eps=0.01 / batch**2, centered=True),
        grads=tuple(g / batch for g in GRADS),
    )
    np.testing.assert_allclose(mean, summed, rtol=1e-4)


def test_linear_decay_schedule_reaches_zero():
    schedule = learning_rate_schedule(_opt(lr=7e-4, schedule="linear_decay"), 100)
    assert float(schedule(0)) == pytest.approx(7e-4)
    assert float(schedule(50)) == pytest.approx(3.5e-4)
    assert float(schedule(100)) == 0.0 and float(schedule(150)) == 0.0


@pytest.mark.parametrize(
    ("field", "value"), [("decay", 1.0), ("decay", -0.1), ("eps", -1e-3), ("momentum", 1.5)]
)
def test_rmsprop_rejects_bad_values_with_one_line(field, value):
    with pytest.raises(ConfigError, match=rf"opt\.{field}=") as error:
        make_optimizer(_opt(**{field: value}), 10)
    assert "\n" not in str(error.value)
