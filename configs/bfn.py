"""Bayesian Flow Networks on binarized MNIST (discrete data, K = 2).

Variants:
  mnist       paper scale: the official mnist_discrete.yaml (U-Net ~25M params, batch 512,
              AdamW lr 1e-4 betas (0.9, 0.98), beta(1) = 9, EMA 0.9999, clip 5, dropout 0.5).
  mnist_cpu   the same method small enough to train in minutes on 2 CPU cores (`make demo`).
  smoke       tiny and fast, for tests.
  text8       paper scale: the official text8_discrete.yaml (non-causal GPT, 24 layers, width
              768, 12 heads, 170M params, beta(1) = 0.5625, sequences of 256, batch 416 (8 GPUs
              in the paper), AdamW lr 1e-4 betas (0.9, 0.98), EMA 0.9999, clip 5).
  text8_cpu   a small transformer on the embedded Wikipedia text, minutes on 2 CPU cores.
  text8_smoke tiny and fast, for tests.
  cifar10_256d, cifar10_256c, cifar10_16d, cifar10_16c
              paper scale: the official cifar10_{discretized,continuous}_{256,16}bins.yaml (VDM
              U-Net, 128 channels, 32 blocks without downsampling, 31M params; sigma1 = 0.001 for
              256 bins and sqrt(1e-3) for 16; batch 32; AdamW lr 2e-4 betas (0.9, 0.99); EMA
              0.9999; clip 5; dropout 0.1). d = discretised output, c = continuous output.
  cifar10_256d_cpu, cifar10_256c_cpu, cifar10_16d_cpu, cifar10_16c_cpu
              the same with a small U-Net, minutes on 2 CPU cores.
  cifar10_smoke tiny and fast, for tests.

Mixed precision is one switch: --config.model.dtype=bfloat16 computes the network in bf16 while
parameters, optimiser state and every loss stay in float32.
"""

import functools

from ml_collections import ConfigDict

from configs import common


def _official_optimisation(config: ConfigDict) -> None:
    """AdamW lr 1e-4, betas (0.9, 0.98), weight decay 0.01, clip 5, EMA 0.9999 (MNIST and text8)."""
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


def _mnist() -> ConfigDict:
    config = common.base_config("bfn", data=True, batch_size=64, ema=True, validation=True)
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

    _official_optimisation(config)

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
    config.sample.solver = "bfn"  # BFN-Solver (Xue et al. 2024): "sde1", "sde2", "ode1", "ode2"
    config.sample.inpaint = ""  # "top_half": keep the top halves of test digits, sample the bottom
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
    config = common.cpu_recipe(config, num_steps=1200, batch_size=64)
    config.ckpt.every = 400
    config.eval.n_steps = (0, 10, 25, 50, 100, 1000)
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


def _text8() -> ConfigDict:
    config = common.base_config("bfn", data=True, batch_size=64, ema=True, validation=True)
    config.data.name = "text8"
    config.data.seq_len = 256

    config.bfn = ConfigDict()
    config.bfn.beta1 = 0.75**2  # max_sqrt_beta = 0.75 in the official config
    config.bfn.num_classes = 27

    config.model = ConfigDict()
    config.model.num_layers = 24
    config.model.num_heads = 12
    config.model.width = 768
    config.model.dropout = 0.0
    config.model.max_len = 256
    config.model.dtype = "bfloat16"  # the paper trained with fp16 mixed precision
    # "einsum" (any backend, attention dropout), "xla" or "cudnn" (fused, GPU; no dropout).
    config.model.attention_impl = "einsum"

    config.train.num_steps = 10_000_000
    config.train.batch_size = 416
    config.train.log_every = 100
    config.train.eval_every = 100_000

    _official_optimisation(config)

    config.eval = ConfigDict()
    config.eval.split = "test"
    config.eval.n_steps = (0, 10, 25, 50, 100, 1000)
    config.eval.repeats = 1
    config.eval.batch_size = 256
    config.eval.num_samples = 10
    config.eval.validation_repeats = 1
    config.eval.use_ema = True
    config.eval.stride = 0  # 0: non-overlapping windows; 1: every offset (the official code)

    config.sample = ConfigDict()
    config.sample.num_images = 8  # sequences
    config.sample.n_steps = 100
    config.sample.solver = "bfn"  # BFN-Solver (Xue et al. 2024): "sde1", "sde2", "ode1", "ode2"
    config.sample.prompt = ""  # a text8-style prefix every sample starts with (infilling)
    return config


def _text8_cpu() -> ConfigDict:
    config = _text8()
    config.data.seq_len = 64
    config.model.num_layers = 4
    config.model.num_heads = 4
    config.model.width = 128
    config.model.max_len = 64
    config.model.dtype = "float32"
    config = common.cpu_recipe(config, num_steps=1500, batch_size=64)
    config.ckpt.every = 500
    config.eval.n_steps = (0, 10, 25, 50, 100, 1000)
    config.eval.repeats = 3
    config.eval.batch_size = 256
    config.sample.num_images = 8
    return config


def _text8_smoke() -> ConfigDict:
    config = _text8_cpu()
    config.data.seq_len = 16
    config.model.num_layers = 1
    config.model.num_heads = 2
    config.model.width = 16
    config.model.max_len = 16
    config = common.shrink_for_smoke(config)
    config.opt.lr = 1e-2
    config.opt.warmup_steps = 2
    config.eval.n_steps = (0, 10)
    config.eval.repeats = 2
    config.sample.num_images = 8
    config.sample.n_steps = 10
    return config


def _cifar10(num_bins: int, output: str) -> ConfigDict:
    config = common.base_config("bfn", data=True, batch_size=64, ema=True, validation=True)
    config.data.name = "cifar10"

    config.bfn = ConfigDict()
    config.bfn.output = output  # "discretised" or "continuous"
    config.bfn.num_bins = num_bins
    # min_variance sigma1^2 = 1e-6 (256 bins) or 1e-3 (16 bins) in the official configs.
    config.bfn.sigma1 = 0.001 if num_bins == 256 else 1e-3**0.5

    config.model = ConfigDict()
    config.model.embedding_dim = 128
    config.model.num_blocks = 32
    config.model.num_heads = 1
    config.model.dropout = 0.1
    config.model.num_groups = 32
    config.model.fourier_exponents = (5.0, 6.0)
    config.model.dtype = "float32"

    config.train.num_steps = 1_000_000
    config.train.batch_size = 32
    config.train.log_every = 100
    config.train.eval_every = 50_000

    config.opt.name = "adamw"
    config.opt.lr = 2e-4
    config.opt.b1 = 0.9
    config.opt.b2 = 0.99
    config.opt.eps = 1e-8
    config.opt.weight_decay = 0.01
    config.opt.clip_norm = 5.0
    config.ema.decay = 0.9999
    config.ema.warmup = False
    config.ckpt.every = 10_000
    config.ckpt.keep = 3

    config.eval = ConfigDict()
    config.eval.split = "test"
    config.eval.n_steps = (0, 10, 25, 50, 100, 1000)
    config.eval.repeats = 100  # val_repeats of the official configs
    config.eval.batch_size = 100
    config.eval.num_samples = 10
    config.eval.validation_repeats = 1
    config.eval.use_ema = True

    config.sample = ConfigDict()
    config.sample.num_images = 64
    config.sample.n_steps = 100
    config.sample.solver = "bfn"  # BFN-Solver (Xue et al. 2024): "sde1", "sde2", "ode1", "ode2"
    config.sample.inpaint = ""  # "top_half": keep the top halves of test images, sample the bottom
    return config


def _cifar10_cpu(num_bins: int, output: str) -> ConfigDict:
    config = _cifar10(num_bins, output)
    config.model.embedding_dim = 32
    config.model.num_blocks = 2
    config.model.num_groups = 8
    config.model.dropout = 0.0
    config = common.cpu_recipe(config, num_steps=800, batch_size=32)
    config.ckpt.every = 400
    config.eval.n_steps = (0, 10, 25, 50, 100, 1000)
    config.eval.repeats = 3
    config.eval.batch_size = 64
    config.sample.num_images = 16
    config.sample.n_steps = 100
    return config


def _cifar10_smoke() -> ConfigDict:
    config = _cifar10_cpu(256, "discretised")
    config.model.embedding_dim = 8
    config.model.num_blocks = 1
    config.model.num_groups = 4
    config.model.fourier_exponents = (5.0,)
    config = common.shrink_for_smoke(config)
    config.opt.warmup_steps = 2
    config.eval.n_steps = (0, 10)
    config.eval.repeats = 2
    config.eval.batch_size = 16
    config.sample.num_images = 8
    config.sample.n_steps = 10
    return config


VARIANTS = {
    "mnist": _mnist,
    "mnist_cpu": _mnist_cpu,
    "smoke": _smoke,
    "text8": _text8,
    "text8_cpu": _text8_cpu,
    "text8_smoke": _text8_smoke,
    "cifar10_smoke": _cifar10_smoke,
}
for _bins in (256, 16):
    for _code, _output in (("d", "discretised"), ("c", "continuous")):
        VARIANTS[f"cifar10_{_bins}{_code}"] = functools.partial(_cifar10, _bins, _output)
        VARIANTS[f"cifar10_{_bins}{_code}_cpu"] = functools.partial(_cifar10_cpu, _bins, _output)


def get_config(arg: str | None = None) -> ConfigDict:
    """The named variant of the BFN config (see the module docstring)."""
    return common.select_variant(arg, VARIANTS, config_file="configs/bfn.py")
