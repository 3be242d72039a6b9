"""Optimiser factory: gradient-norm clipping, then Adam/AdamW/SGD/RMSProp with a learning-rate schedule.

RMSProp (opt.name = "rmsprop") keeps the mean square nu = decay nu + (1 - decay) g^2 from nu = 0 and
steps by lr g / sqrt(nu + eps): eps is added INSIDE the square root (optax's eps_in_sqrt=True),
the convention of A3C (Mnih et al. 2016, Eq. 9) and of DeepMind's DQN code. With opt.centered the
denominator is sqrt(nu - mu^2 + eps), mu = decay mu + (1 - decay) g, which is exactly the RMSProp
of the Nature DQN Lua code (decay 0.95 for both averages, eps 0.01: its "min squared gradient").
opt.momentum > 0 adds heavy-ball momentum on the scaled step, m = momentum m + lr g / sqrt(...),
as TensorFlow's RMSProp does; opt.eps_in_sqrt = False gives PyTorch's lr g / (sqrt(nu) + eps).
eps is in squared-gradient units: a loss averaged over a batch of B instead of summed (as the DQN
Lua code did) has gradients B times smaller, and eps / B^2 gives exactly the summed-loss updates.
"""

import optax
from ml_collections import ConfigDict

from deepgen.core.errors import ConfigError

OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop")
SCHEDULES = ("constant", "warmup_cosine", "warmup_constant", "linear_decay", "step_decay")


def learning_rate_schedule(opt: ConfigDict, num_steps: int) -> optax.Schedule:
    """The opt.schedule learning rate as a function of the step."""
    lr, warmup = float(opt.lr), int(opt.get("warmup_steps", 0))
    if opt.schedule == "constant":
        return optax.constant_schedule(lr)
    if opt.schedule == "warmup_constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)],
            [max(warmup, 1)],
        )
    if opt.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, max(warmup, 1), max(num_steps, warmup + 1), end_value=0.0
        )
    if opt.schedule == "linear_decay":
        return optax.linear_schedule(lr, 0.0, max(num_steps, 1))
    if opt.schedule == "step_decay":
        # lr times decay_factor per boundary in opt.decay_steps reached (from that step on).
        boundaries = [int(b) for b in opt.get("decay_steps", ())]
        factor = float(opt.get("decay_factor", 0.1))
        if (
            not boundaries
            or any(b <= 0 for b in boundaries)
            or boundaries != sorted(set(boundaries))
        ):
            raise ConfigError(
                f"opt.decay_steps={tuple(boundaries)} must be increasing positive steps for "
                "opt.schedule='step_decay', e.g. (10000, 20000)"
            )
        if not 0.0 < factor <= 1.0:
            raise ConfigError(f"opt.decay_factor={factor!r} must lie in (0, 1]")
        return optax.piecewise_constant_schedule(lr, {b: factor for b in boundaries})
    raise ConfigError(f"opt.schedule={opt.schedule!r} is not one of {SCHEDULES}")


def rmsprop(opt: ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """RMSProp from opt.decay, opt.eps, opt.centered, opt.momentum and opt.eps_in_sqrt."""
    decay = float(opt.get("decay", 0.9))
    eps = float(opt.eps)
    momentum = float(opt.get("momentum", 0.0) or 0.0)
    if not 0.0 <= decay < 1.0:
        raise ConfigError(f"opt.decay={decay!r} is not allowed: RMSProp needs 0 <= decay < 1")
    if eps < 0.0:
        raise ConfigError(f"opt.eps={eps!r} is not allowed: a number >= 0")
    if not 0.0 <= momentum < 1.0:
        raise ConfigError(f"opt.momentum={momentum!r} is not allowed: 0 (none) <= momentum < 1")
    return optax.rmsprop(
        schedule,
        decay=decay,
        eps=eps,
        eps_in_sqrt=bool(opt.get("eps_in_sqrt", True)),
        centered=bool(opt.get("centered", False)),
        momentum=momentum or None,
    )


def make_optimizer(opt: ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """Build the optimiser described by opt.* (name, lr, schedule, its own fields, clip_norm)."""
    schedule = learning_rate_schedule(opt, num_steps)
    if opt.name == "adamw":
        base = optax.adamw(
            schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay
        )
    elif opt.name == "adam":
        base = optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    elif opt.name == "sgd":
        base = optax.sgd(schedule, momentum=opt.get("momentum", None) or None)
    elif opt.name == "rmsprop":
        base = rmsprop(opt, schedule)
    else:
        raise ConfigError(f"opt.name={opt.name!r} is not one of {OPTIMIZERS}")
    if opt.clip_norm and opt.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(opt.clip_norm), base)
    return base
