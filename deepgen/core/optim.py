"""Optimiser factory: gradient-norm clipping, then Adam/AdamW/SGD with a learning-rate schedule."""

import optax
from ml_collections import ConfigDict

from deepgen.core.errors import ConfigError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "warmup_cosine", "warmup_constant")


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
    raise ConfigError(f"opt.schedule={opt.schedule!r} is not one of {SCHEDULES}")


def make_optimizer(opt: ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """Build the optimiser described by opt.* (name, lr, schedule, b1, b2, eps, weight_decay, clip)."""
    schedule = learning_rate_schedule(opt, num_steps)
    if opt.name == "adamw":
        base = optax.adamw(
            schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay
        )
    elif opt.name == "adam":
        base = optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    elif opt.name == "sgd":
        base = optax.sgd(schedule, momentum=opt.get("momentum", None) or None)
    else:
        raise ConfigError(f"opt.name={opt.name!r} is not one of {OPTIMIZERS}")
    if opt.clip_norm and opt.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(opt.clip_norm), base)
    return base
