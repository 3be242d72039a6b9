"""SnAp / RTRL / UORO / BPTT with online updates on the Copy task and character-level LM.

Menick et al., "Practical Real Time Recurrent Learning with a Sparse Approximation" (ICLR 2021,
arXiv 2006.07232). Sizes and learning rates of the paper-scale variants are RECALLED, not
verified against the PDF (the spec note could not read its Sections 4-5): one recurrent layer of
128 units, 16 streams, Adam 1e-3, crops of 128 characters, copy curriculum from L = 1 with the
0.15 bits/char threshold. Correct them once someone reads the paper's tables.

Variants:
  copy_gru, copy_lstm          paper scale (recalled), Copy task curriculum, SnAp-1 online
  charlm_gru, charlm_lstm      paper scale (recalled), char LM on 128-character crops, SnAp-1
  copy_gru_cpu, copy_lstm_cpu  small: learns a few copy lengths in a minute or two on a CPU
  charlm_gru_cpu, charlm_lstm_cpu  small char LM on the embedded Wikipedia text
  smoke                        tiny, for tests (Copy task)
  charlm_smoke                 tiny, for tests (char LM)

Units: train.num_steps, train.chunk_steps, train.update_every, train.log_every and ckpt.every
count time steps of every stream (one time step = train.batch_size tokens); one train step of
the loop is one chunk of train.chunk_steps time steps, so the last two are multiples of it.
"""

from ml_collections import ConfigDict

from configs import common


def _base(task: str, cell: str) -> ConfigDict:
    config = common.base_config("snap", data=True, batch_size=16)
    config.task = task

    config.model = ConfigDict()
    config.model.cell = cell
    config.model.hidden_size = 128
    config.model.density = 1.0  # fraction of recurrent weights kept by the fixed random mask
    config.model.mask_per_gate = False  # True: an independent mask per gate matrix

    config.estimator = ConfigDict()
    config.estimator.name = "snap1"
    config.estimator.truncation = 16  # tbptt window in steps; bptt uses the whole sequence
    config.estimator.max_influence_gib = 4.0  # RTRL refuses influence matrices larger than this
    # snap1 only: fold this many steps at a time into the traces (the same estimate, computed with
    # matrix products; the weights then change only at block ends). 1 = step by step.
    config.estimator.snap_block = 1

    config.train.online = True
    config.train.update_every = 1
    config.train.batch_size = 16  # independent streams

    config.opt.name = "adam"
    config.opt.lr = 1e-3
    config.opt.weight_decay = 0.0
    config.opt.clip_norm = 1.0

    config.data.num_symbols = 2
    config.data.max_length = 256
    config.data.length_spread = 5
    config.data.curriculum_threshold = 0.15
    config.data.curriculum_decay = 0.9
    config.data.seq_len = 128

    config.eval = ConfigDict()
    config.eval.split = "validation"
    config.eval.num_crops = 256
    config.eval.batch_size = 64
    config.eval.num_sequences = 256  # copy: fresh strings of the reached length
    # char LM: also the whole split read in order with the state carried (0 = all of it), cut
    # into this many contiguous streams read in parallel
    config.eval.full_pass_chars = 0
    config.eval.full_pass_streams = 16

    config.sample = ConfigDict()
    config.sample.num_chars = 400
    config.sample.num_samples = 4
    config.sample.temperature = 1.0
    config.sample.prompt = "the "

    config.ckpt.keep = 3

    if task == "copy":
        config.data.name = "copy"
        config.train.chunk_steps = 256
        config.train.num_steps = 2_048_000  # a whole number of 256-step chunks
    else:
        config.data.name = "text8"
        config.train.chunk_steps = 128
        config.train.num_steps = 1_024_000  # a whole number of 128-step chunks
    return _every_chunks(config, log=1, ckpt=50)


def _every_chunks(config: ConfigDict, *, log: int, ckpt: int) -> ConfigDict:
    """Log every `log` chunks and checkpoint every `ckpt` chunks (both count time steps)."""
    config.train.log_every = log * config.train.chunk_steps
    config.ckpt.every = ckpt * config.train.chunk_steps
    return config


def _cpu(config: ConfigDict) -> ConfigDict:
    config.model.hidden_size = 32
    config.train.batch_size = 16
    config.opt.lr = 3e-3
    config.data.max_length = 64
    config.eval.num_crops = 128
    if config.task == "copy":
        config.train.chunk_steps = 128
        config.train.num_steps = 4096
    else:
        config.train.chunk_steps = 128
        config.train.num_steps = 3072
    return _every_chunks(config, log=1, ckpt=20)


def _smoke() -> ConfigDict:
    config = _cpu(_base("copy", "gru"))
    config.model.hidden_size = 8
    config.train.batch_size = 4
    config.train.chunk_steps = 16
    config.train.num_steps = 64
    config.opt.lr = 1e-2
    config.data.max_length = 16
    config.eval.num_sequences = 8
    config.eval.num_crops = 8
    config.eval.batch_size = 8
    config.eval.full_pass_chars = 2048
    config.eval.full_pass_streams = 4
    config.ckpt.keep = 2
    config.sample.num_samples = 2
    config.sample.num_chars = 40
    return _every_chunks(config, log=1, ckpt=2)


def _charlm_smoke() -> ConfigDict:
    config = _smoke()
    config.task = "charlm"
    config.data.name = "text8"
    config.data.seq_len = 16
    config.train.chunk_steps = 16
    return _every_chunks(config, log=1, ckpt=2)


VARIANTS = {
    "copy_gru": lambda: _base("copy", "gru"),
    "copy_lstm": lambda: _base("copy", "lstm"),
    "charlm_gru": lambda: _base("charlm", "gru"),
    "charlm_lstm": lambda: _base("charlm", "lstm"),
    "copy_gru_cpu": lambda: _cpu(_base("copy", "gru")),
    "copy_lstm_cpu": lambda: _cpu(_base("copy", "lstm")),
    "charlm_gru_cpu": lambda: _cpu(_base("charlm", "gru")),
    "charlm_lstm_cpu": lambda: _cpu(_base("charlm", "lstm")),
    "smoke": _smoke,
    "charlm_smoke": _charlm_smoke,
}


def get_config(arg: str | None = None) -> ConfigDict:
    """The named variant of the SnAp config (see the module docstring)."""
    return common.select_variant(arg, VARIANTS, config_file="configs/snap.py")
