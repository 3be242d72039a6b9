"""One way to check config values the types cannot, with one message format for every method."""

from collections.abc import Iterable
from typing import Any

from ml_collections import ConfigDict

from deepgen.core.errors import ConfigError


def field_value(config: ConfigDict, field: str) -> Any:
    """The value at a dotted field path."""
    value = config
    for part in field.split("."):
        value = value[part]
    return value


class Checker:
    """`check(ok, field, allowed)` raises ConfigError "config.FIELD=VALUE is not allowed: ALLOWED"."""

    def __init__(self, config: ConfigDict):
        self.config = config

    def __call__(self, ok: bool, field: str, allowed: str) -> None:
        if not ok:
            value = field_value(self.config, field)
            raise ConfigError(f"config.{field}={value!r} is not allowed: {allowed}")

    def one_of(self, field: str, choices: Iterable[Any], note: str = "") -> None:
        """The field's value is one of choices."""
        choices = tuple(choices)
        # Spelled out, not a tuple's repr: a two-choice tuple reads like absl's (message, value).
        allowed = ", ".join(repr(c) for c in choices)
        self(field_value(self.config, field) in choices, field, f"one of {allowed}{note}")

    def positive(self, *fields: str) -> None:
        """Each field is a positive number."""
        for field in fields:
            self(field_value(self.config, field) > 0, field, "a positive number")

    def non_negative(self, *fields: str) -> None:
        """Each field is a number >= 0."""
        for field in fields:
            self(field_value(self.config, field) >= 0, field, "a number >= 0")

    def in_unit_interval(self, field: str, *, closed: bool = False) -> None:
        """0 <= value < 1 (or <= 1 when closed)."""
        value = field_value(self.config, field)
        ok = 0 <= value <= 1 if closed else 0 <= value < 1
        self(ok, field, "in [0, 1]" if closed else "in [0, 1)")

    def boolean(self, *fields: str) -> None:
        """Each field is True or False."""
        for field in fields:
            self(isinstance(field_value(self.config, field), bool), field, "True or False")

    def divisible_by_devices(self, field: str = "train.batch_size", unit: str = "") -> None:
        """The field's value splits evenly over the devices JAX sees (a batch sharded on them)."""
        import jax

        value, devices = field_value(self.config, field), jax.device_count()
        if value % devices:
            what = f" ({unit})" if unit else ""
            raise ConfigError(
                f"config.{field}={value}{what} must be divisible by the {devices} devices JAX "
                f"sees (JAX_NUM_CPU_DEVICES on CPU); use a multiple of {devices}"
            )

    def optimiser(self) -> None:
        """config.opt: a known optimiser and schedule and a positive learning rate."""
        from deepgen.core.optim import OPTIMIZERS, SCHEDULES

        self.one_of("opt.name", OPTIMIZERS)
        self.one_of("opt.schedule", SCHEDULES)
        self.positive("opt.lr")

    def common(self) -> None:
        """The base config's fields: train.*, ckpt.*."""
        self.positive("train.num_steps", "train.batch_size", "train.log_every", "ckpt.keep")
        self.positive("ckpt.every")
