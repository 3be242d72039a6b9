"""Bayesian Flow Networks on binarized MNIST (discrete data, K = 2).

Variants:
  mnist      paper scale: the official mnist_discrete.yaml (U-Net ~25M params, batch 512,
             AdamW lr 1e-4 betas (0.9, 0.98), beta(1) = 9, EMA 0.9999, clip 5, dropout 0.5).
  mnist_cpu  the same method small enough to train in minutes on 2 CPU cores (`make demo`).
  smoke      tiny and fast, for tests.
"""

from ml_collections import ConfigDict

from configs import common


def _mnist() -> ConfigDict:
    config = common.base_config("bfn")
    config.data.name = "mnist"

    config.bfn = ConfigDict()
    config.bfn.beta1 = 9.0  # max_sqrt_beta = 3 in the official config
    config.bfn.num_classes = 2

    config.model = ConfigDict()
    config.model.model_channels = 128
    config.model.channel_mult = (1, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attention_resolutions = (8, 16)
    config.model.num_heads = 4
    config.model.dropout = 0.5
    config.model.num_groups = 32
    config.model.time_scale = 4000.0
    config.model.dtype = "float32"

    config.train.num_steps = 1_000_000
    config.train.batch_size = 512
    config.train.log_every = 100
    config.train.eval_every = 50_000

    config.opt.name = "adamw"
    config.opt.lr = 1e-4
    config.opt.b1 = 0.9
    config.opt.b2 = 0.98
    config.opt.eps = 1e-8
    config.opt.weight_decay = 0.01
    config.opt.clip_norm = 5.0

    config.ema.decay = 0.9999
    config.ema.warmup = False

    config.ckpt.every = 10_000
    config.ckpt.keep = 3

    config.eval = ConfigDict()
    config.eval.split = "test"
    config.eval.n_steps = (0, 10, 25, 50, 100, 784, 1000)  # 0 is continuous time (L^inf)
    config.eval.repeats = 2000
    config.eval.batch_size = 1000
    config.eval.num_samples = 10  # Monte Carlo sender draws in L^n
    config.eval.validation_repeats = 1
    config.eval.use_ema = True

    config.sample = ConfigDict()
    config.sample.num_images = 64
    config.sample.n_steps = 100
    return config


def _mnist_cpu() -> ConfigDict:
    config = _mnist()
    config.model.model_channels = 16
    config.model.channel_mult = (1, 2, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = ()
    config.model.num_heads = 1
    config.model.dropout = 0.0
    config.model.num_groups = 8
    config.train.num_steps = 1200
    config.train.batch_size = 64
    config.train.log_every = 25
    config.train.eval_every = 0
    config.opt.lr = 1e-3
    config.opt.schedule = "warmup_cosine"
    config.opt.warmup_steps = 100
    config.opt.b2 = 0.99
    config.ema.decay = 0.999
    config.ema.warmup = True
    config.ckpt.every = 400
    config.eval.n_steps = (0, 10, 25, 50, 100)
    config.eval.repeats = 5
    config.eval.batch_size = 250
    config.sample.n_steps = 100
    return config


def _smoke() -> ConfigDict:
    config = _mnist_cpu()
    config.model.model_channels = 8
    config.model.num_groups = 4
    config.model.channel_mult = (1, 2)
    config = common.shrink_for_smoke(config)
    config.opt.lr = 2e-3
    config.opt.warmup_steps = 2
    config.eval.n_steps = (0, 10)
    config.eval.repeats = 2
    config.eval.batch_size = 100
    config.sample.num_images = 16
    config.sample.n_steps = 10
    return config


VARIANTS = {"mnist": _mnist, "mnist_cpu": _mnist_cpu, "smoke": _smoke}


def get_config(arg: str | None = None) -> ConfigDict:
    """The named variant of the BFN config: one of mnist, mnist_cpu, smoke."""
    return common.select_variant(arg, VARIANTS, config_file="configs/bfn.py")
