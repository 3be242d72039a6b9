"""Automated Curriculum Learning (Graves et al. 2017, arXiv 1704.03003): Exp3.S over tasks.

Checked against public sources: Exp3.S with eta = 1e-3, beta = 0, eps = 0.05 and alpha_t = 1/t
(the paper's Algorithm 1 as Collier and Beel's re-implementation runs it); the reward map by the
20th and 80th percentiles of a reservoir of unscaled rewards; the signal definitions; the task
grids (n-gram orders 0..10 from 1M characters each in 150-character sequences scored on their
last 100 characters; repeat copy lengths 1..13 x repeats 1..13; the 20 bAbI tasks).
RECALLED, not checked against the paper's text (its experimental details were not readable
here): one LSTM layer of 512 cells, RMSProp with momentum 0.9 and learning rate 1e-5, batch 32,
the reservoir size, the variational prior's initial sigma, the L2 weight alpha and the target
losses. Correct them once someone reads Sec. 5 and the appendix.

Variants:
  ngram, repeat_copy, babi         paper scale (sizes recalled); babi needs data.dir
  ngram_cpu, repeat_copy_cpu       minutes on 2 CPU cores, real text / the paper's task, smaller
  smoke, repeat_copy_smoke         tiny, for tests
  babi_smoke                       tiny, on bAbI task files in data.dir
The signal: --config.curriculum.signal= one of deepgen.curriculum.signals.POLICIES
(`uniform` is the baseline). The two variational signals need --config.model.variational=True,
the two L2 signals --config.model.l2_weight > 0 (the paper trains them that way).
"""

from ml_collections import ConfigDict

from configs import common


def _base(task: str) -> ConfigDict:
    config = common.base_config("curriculum", data=True, batch_size=32)
    config.task = task

    config.model = ConfigDict()
    # "lstm": the paper's learner; "snap_cell": a (sparse) cell of deepgen.snap, trained by BPTT
    config.model.kind = "lstm"
    config.model.cell = "gru"  # snap_cell only: vanilla, gru or lstm
    config.model.density = 1.0  # snap_cell only: fraction of the cell's weights kept
    config.model.hidden_size = 512  # [recalled] one LSTM layer of 512 cells
    config.model.forget_bias = 1.0  # [assumed]
    config.model.variational = False  # True: train N(mu, sigma^2) weights with the MDL loss
    config.model.init_sigma = 0.01  # [assumed] initial posterior sigma of every weight
    # [assumed] S of E L + KL / S: the number of training sequences the code length is shared by.
    config.model.kl_examples = 100_000
    config.model.l2_weight = 0.0  # alpha of L + alpha/2 ||theta||^2; the L2 signals need > 0

    config.curriculum = ConfigDict()
    config.curriculum.signal = "prediction_gain"
    config.curriculum.eta = 1e-3  # [checked] the paper's Exp3.S step size
    config.curriculum.beta = 0.0  # [checked]
    config.curriculum.epsilon = 0.05  # [checked]
    config.curriculum.reservoir_size = 10_000  # [assumed] unscaled rewards kept for the quantiles
    config.curriculum.divide_by_length = True  # [checked] progress per unit of processing time
    # GVCG and GL2G: False = the first-order complexity gains under gradient descent (the
    # negatives of the products the paper prints); True = the products as printed, which reward
    # steps that shrink the complexity (deepgen/curriculum/signals.py, benchmarks/RESULTS.md)
    config.curriculum.literal_complexity_gradient = False
    config.curriculum.fresh_batch_size = 32  # x' of SPG / TPG / MPG
    config.curriculum.eval_every = 1000  # steps between held-out scores of every task
    config.curriculum.eval_batch_size = 32
    config.curriculum.target_loss = 0.1  # nats per scored step on the target task

    config.opt.name = "rmsprop"  # [recalled]
    config.opt.lr = 1e-5  # [recalled]
    config.opt.momentum = 0.9  # [recalled]
    config.opt.decay = 0.95
    config.opt.eps = 1e-8
    config.opt.eps_in_sqrt = False
    config.opt.clip_norm = 0.0

    config.eval = ConfigDict()
    config.eval.batch_size = 64
    config.eval.num_batches = 8
    config.eval.seed = 2024

    config.train.num_steps = 500_000
    config.train.log_every = 1000
    config.ckpt.every = 10_000
    return config


def _ngram_data(config: ConfigDict) -> ConfigDict:
    config.data.name = "ngram"
    config.data.max_order = 10  # [checked] orders 0..10, 11 tasks; the target is the 10-gram
    config.data.chars_per_task = 1_000_000  # [checked]
    config.data.test_chars_per_task = 150_000
    config.data.seq_len = 150  # [checked]
    config.data.context_len = 50  # [checked] the first 50 characters are not scored
    config.data.corpus_chars = 0  # 0: the whole train split of the text
    return config


def _repeat_copy_data(config: ConfigDict, *, max_length: int, max_repeats: int) -> ConfigDict:
    config.data.name = "repeat_copy"
    config.data.max_length = max_length
    config.data.max_repeats = max_repeats
    config.data.num_bits = 8  # [recalled] the NTM's 8-bit vectors
    return config


def ngram() -> ConfigDict:
    config = _ngram_data(_base("ngram"))
    config.curriculum.target_loss = 1.3  # [assumed] nats per character on the 10-gram task
    return config


def repeat_copy() -> ConfigDict:
    return _repeat_copy_data(_base("repeat_copy"), max_length=13, max_repeats=13)  # [checked]


def babi() -> ConfigDict:
    config = _base("babi")
    config.data.name = "babi"
    config.data.max_tokens = 400  # stories longer than this keep their last 400 words
    config.curriculum.target_loss = 0.05  # [assumed] nats per answer on the last task
    return config


def _cpu(config: ConfigDict, *, num_steps: int, hidden: int, lr: float) -> ConfigDict:
    config.model.hidden_size = hidden
    config.opt.name = "adam"
    config.opt.lr = lr
    config.opt.b1, config.opt.b2, config.opt.eps = 0.9, 0.999, 1e-8
    config.opt.clip_norm = 1.0
    config.curriculum.eta = 1e-2  # the bandit must move within a few thousand steps
    config.curriculum.reservoir_size = 1000
    config.train.num_steps = num_steps
    config.train.batch_size = 16
    config.train.log_every = 50
    config.curriculum.fresh_batch_size = 16
    config.curriculum.eval_batch_size = 16
    config.ckpt.every = 500
    config.eval.num_batches = 4
    return config


def ngram_cpu() -> ConfigDict:
    config = _cpu(_ngram_data(_base("ngram")), num_steps=2000, hidden=128, lr=3e-3)
    config.data.chars_per_task = 150_000
    config.data.test_chars_per_task = 30_000
    config.curriculum.eval_every = 50
    config.curriculum.target_loss = 1.8
    return config


def repeat_copy_cpu() -> ConfigDict:
    config = _repeat_copy_data(_base("repeat_copy"), max_length=5, max_repeats=5)
    config = _cpu(config, num_steps=15_000, hidden=128, lr=3e-3)
    config.train.log_every = 250
    config.ckpt.every = 5000
    config.curriculum.eval_every = 100
    config.curriculum.target_loss = 0.1
    return config


def _smoke(config: ConfigDict) -> ConfigDict:
    config.model.hidden_size = 16
    config.train.num_steps = 20
    config.train.batch_size = 8
    config.train.log_every = 5
    config.curriculum.fresh_batch_size = 8
    config.curriculum.eval_every = 5
    config.curriculum.eval_batch_size = 8
    config.curriculum.reservoir_size = 64
    config.eval.batch_size = 8
    config.eval.num_batches = 2
    config.ckpt.every = 10
    config.ckpt.keep = 2
    return config


def smoke() -> ConfigDict:
    config = _cpu(_ngram_data(_base("ngram")), num_steps=20, hidden=16, lr=3e-3)
    config.data.max_order = 3
    config.data.corpus_chars = 20_000
    config.data.chars_per_task = 3_000
    config.data.test_chars_per_task = 1_500
    config.data.seq_len = 30
    config.data.context_len = 10
    config.curriculum.target_loss = 3.0
    return _smoke(config)


def repeat_copy_smoke() -> ConfigDict:
    config = _repeat_copy_data(_base("repeat_copy"), max_length=3, max_repeats=2)
    config = _cpu(config, num_steps=20, hidden=16, lr=3e-3)
    config.data.num_bits = 4
    return _smoke(config)


def babi_smoke() -> ConfigDict:
    config = _cpu(babi(), num_steps=20, hidden=16, lr=3e-3)
    config.data.max_tokens = 64
    return _smoke(config)


VARIANTS = {
    "ngram": ngram,
    "repeat_copy": repeat_copy,
    "babi": babi,
    "ngram_cpu": ngram_cpu,
    "repeat_copy_cpu": repeat_copy_cpu,
    "smoke": smoke,
    "repeat_copy_smoke": repeat_copy_smoke,
    "babi_smoke": babi_smoke,
}


def get_config(arg: str | None = None) -> ConfigDict:
    return common.select_variant(arg, VARIANTS, config_file="configs/curriculum.py")
