"""Pieces shared by every method's config: variant parsing, defaults, mesh presets, smoke shrinker."""

from collections.abc import Callable, Mapping

from ml_collections import ConfigDict

from deepgen.core.errors import ConfigError

MESH_PRESETS = {
    "data_parallel": {"data": -1, "fsdp": 1},
    "fsdp": {"data": 1, "fsdp": -1},
}


def select_variant(
    arg: str | None, variants: Mapping[str, Callable[[], ConfigDict]], *, config_file: str
) -> ConfigDict:
    """Build the named variant, or fail with one line that lists the allowed names."""
    if not arg:
        raise ConfigError(
            f"{config_file} needs a variant: --config={config_file}:VARIANT with VARIANT one of "
            f"{sorted(variants)}"
        )
    if arg not in variants:
        raise ConfigError(
            f"unknown variant {arg!r} in {config_file}; allowed variants: {sorted(variants)}"
        )
    config = variants[arg]()
    config.variant = arg
    return config


def base_config(
    method: str,
    *,
    data: bool = False,
    batch_size: int = 0,
    ema: bool = False,
    validation: bool = False,
) -> ConfigDict:
    """The fields every method reads, plus the optional sections a method asks for.

    Every method: method, variant, seed, train.num_steps and train.log_every (in the method's
    unit of progress), opt.*, mesh.*, ckpt.*. On request: data.* (name, dir, source),
    train.batch_size, ema.* (an EMA of the parameters) and train.eval_every (validation during
    training). No field is here that a method does not read.
    """
    config = ConfigDict()
    config.method = method
    config.variant = ""
    config.seed = 0

    if data:
        config.data = ConfigDict()
        config.data.name = ""
        config.data.dir = ""
        config.data.source = "auto"

    config.train = ConfigDict()
    config.train.num_steps = 1000
    config.train.log_every = 50
    if batch_size:
        config.train.batch_size = batch_size
    if validation:
        config.train.eval_every = 0

    config.opt = ConfigDict()
    config.opt.name = "adamw"
    config.opt.lr = 1e-4
    config.opt.schedule = "constant"
    config.opt.warmup_steps = 0
    # opt.schedule = "step_decay": lr times decay_factor from each of these steps on.
    config.opt.decay_steps = ()
    config.opt.decay_factor = 0.1
    config.opt.b1 = 0.9
    config.opt.b2 = 0.999
    config.opt.eps = 1e-8
    config.opt.weight_decay = 0.01
    config.opt.clip_norm = 0.0

    if ema:
        config.ema = ConfigDict()
        config.ema.decay = 0.9999
        config.ema.warmup = False

    config.mesh = ConfigDict(dict(MESH_PRESETS["data_parallel"]))
    config.fsdp_min_size = 2**14

    config.ckpt = ConfigDict()
    config.ckpt.every = 1000
    config.ckpt.keep = 3
    config.ckpt.async_save = True
    config.ckpt.signal_sync_every = 10
    return config


def cpu_recipe(config: ConfigDict, *, num_steps: int, batch_size: int) -> ConfigDict:
    """Train fast on a few CPU cores: a higher learning rate with warm-up and cosine decay, and an
    EMA whose decay warms up (a 0.9999 EMA would barely move in a few thousand steps)."""
    config.train.num_steps = num_steps
    config.train.batch_size = batch_size
    config.train.log_every = 25
    config.train.eval_every = 0
    config.opt.lr = 1e-3
    config.opt.schedule = "warmup_cosine"
    config.opt.warmup_steps = 100
    config.opt.b2 = 0.99
    config.ema.decay = 0.999
    config.ema.warmup = True
    return config


def shrink_for_smoke(config: ConfigDict) -> ConfigDict:
    """Make any variant tiny: a few steps, small batches, frequent logs and checkpoints."""
    config.train.num_steps = 20
    config.train.batch_size = 16
    config.train.log_every = 5
    config.train.eval_every = 0
    config.ckpt.every = 10
    config.ckpt.keep = 2
    config.ema.warmup = True
    return config
