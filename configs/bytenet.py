"""ByteNet (Kalchbrenner et al., "Neural Machine Translation in Linear Time", arXiv:1610.10099 v2).

The paper's text was not read here: values marked [recalled] come from the team's notes
(`shared/specs/wavenet_bytenet_vpn.md` Sec. 3, which cite the paper's Sec. 5-6 and public
reproductions); [ours] marks choices of this implementation and the CPU sizes.

Variants:
  enwik8            the character (byte) language model of Sec. 6: 30 MU blocks, d = 512, on
                    enwik8 (data.dir holding enwik8 or enwik8.zip; --config.data.source=download
                    fetches it). Without data.dir: the embedded Wikipedia XML bytes.
  wmt_en_de         the translation model of Sec. 5: 30 + 30 ReLU blocks, d = 800, English to
                    German on WMT prepared by TFDS (wmt14_translate/de-en) in data.dir, or two
                    files of aligned lines en.txt / de.txt there.
  enwik8_cpu        a 10-block, d = 64 language model on the embedded Wikipedia XML bytes (the raw
                    text that the gensim wheel ships; enwik8 itself with data.dir).
  bible_es_en_cpu   Spanish to English on the verse-aligned Bible corpus:
                    --config.data.dir=../shared/data/bible_es_en (no registry package ships a real
                    parallel corpus, so translation variants need data.dir).
  smoke, translation_smoke   seconds, for tests.

    python -m experiments.main --config=configs/bytenet.py:enwik8_cpu --workdir=runs/bytenet_lm
    python -m experiments.main --config=configs/bytenet.py:bible_es_en_cpu \
        --config.data.dir=../shared/data/bible_es_en --workdir=runs/bytenet_bible
"""

from ml_collections import ConfigDict

from configs import common


def _base(task: str) -> ConfigDict:
    config = common.base_config("bytenet", data=True, batch_size=16)
    config.data.name = task  # "enwik8" (bytes, language modelling) or "parallel" (translation)
    # Language modelling: windows of seq_len bytes, the first `context` unscored [recalled:
    # 500 and 100, the loss on the last 400].
    config.data.seq_len = 500
    config.data.context = 100
    # Translation: two files of aligned lines (or a TFDS WMT dataset) in data.dir.
    config.data.source_lang = "en"
    config.data.target_lang = "de"
    config.data.tfds_name = "wmt14_translate/de-en"
    config.data.heldout = 1000  # pairs held out for validation and for test (files only) [ours]
    config.data.max_bytes = 0  # drop longer pairs (0: keep all) [ours]
    config.data.pad_multiple = 50  # each batch padded to a multiple of 50 bytes [recalled]

    config.model = ConfigDict()
    config.model.hidden = 512  # d; residual blocks carry 2d channels [recalled]
    config.model.decoder_blocks = 30  # [recalled: 6 sets of 5]
    config.model.encoder_blocks = 0  # 0: the language model [recalled: 30 for translation]
    config.model.kernel_size = 3  # masked decoder kernel [recalled]
    config.model.encoder_kernel_size = 3  # [recalled: v2 says 3; some ports use 5]
    config.model.unit = "mu"  # "mu" (LM) or "relu" (translation) blocks [recalled]
    config.model.rates = (1, 2, 4, 8, 16)  # dilations, repeated [recalled]
    config.model.dropout = 0.1  # before the last 1x1 of the LM head [recalled]
    config.model.unfold_a = 1.2  # |t^| = a|s| + b [recalled]
    config.model.unfold_b = 0  # [recalled]

    config.train.num_steps = 500_000  # [ours: until convergence]
    config.train.log_every = 100
    config.opt.name = "adamw"
    config.opt.lr = 3e-4  # Adam [recalled]
    config.opt.weight_decay = 1e-4  # [recalled; decoupled (AdamW) here, ours]
    config.opt.schedule = "constant"  # no decay [recalled]
    config.opt.clip_norm = 0.0
    config.ckpt.every = 5000

    config.eval = ConfigDict()
    config.eval.split = "test"
    config.eval.batch_size = 32  # windows or pairs per eval batch
    config.eval.max_windows = 0  # LM windows scored (0: the whole split)
    config.eval.num_pairs = 0  # translation pairs decoded for BLEU (0: the whole split)
    config.eval.beam_size = 12  # [recalled]
    config.eval.max_length_factor = 2.0  # decode at most factor * |s| + 10 bytes [ours]

    config.sample = ConfigDict()
    config.sample.prompt_bytes = 200  # LM: held-out text that primes the sample [ours]
    config.sample.num_bytes = 1000  # LM: bytes generated after it
    config.sample.temperature = 1.0
    config.sample.num_pairs = 8  # translation: held-out sources translated (greedy and beam)
    return config


def enwik8() -> ConfigDict:
    """Sec. 6: the ByteNet decoder on enwik8 (paper: 1.31 bits/byte on test)."""
    config = _base("enwik8")
    return config


def wmt_en_de() -> ConfigDict:
    """Sec. 5: English to German at the paper's sizes (paper: 23.75 BLEU on newstest2014)."""
    config = _base("parallel")
    config.model.hidden = 800  # d, as the LM's d = 512; residual stream 2d = 1600 [recalled]
    config.model.decoder_blocks = 30
    config.model.encoder_blocks = 30
    config.model.unit = "relu"
    config.model.dropout = 0.0
    config.data.max_bytes = 400  # [ours]
    config.eval.split = "test"
    return config


def _cpu(config: ConfigDict, *, num_steps: int, batch_size: int) -> ConfigDict:
    config.train.num_steps = num_steps
    config.train.batch_size = batch_size
    config.train.log_every = 50
    config.opt.lr = 1e-3  # [ours: few steps]
    config.opt.schedule = "warmup_cosine"
    config.opt.warmup_steps = 100
    config.ckpt.every = 500
    return config


def enwik8_cpu() -> ConfigDict:
    """Minutes on 2 cores: 10 MU blocks of d = 96 on the embedded Wikipedia XML bytes."""
    config = _cpu(_base("enwik8"), num_steps=1500, batch_size=8)
    config.model.hidden = 96
    config.model.decoder_blocks = 10
    config.eval.split = "test"
    config.sample.num_bytes = 600
    return config


def bible_es_en_cpu() -> ConfigDict:
    """Minutes on 2 cores: Spanish to English Bible verses of up to 150 bytes, 10 + 10 ReLU blocks."""
    config = _cpu(_base("parallel"), num_steps=1800, batch_size=32)
    config.data.source_lang = "es"
    config.data.target_lang = "en"
    config.data.heldout = 500
    config.data.max_bytes = 150
    config.model.hidden = 96
    config.model.decoder_blocks = 10
    config.model.encoder_blocks = 10
    config.model.unit = "relu"
    config.model.dropout = 0.0
    config.eval.num_pairs = 0  # all 500 held-out test verses (those of at most 150 bytes)
    config.eval.batch_size = 50
    return config


def smoke() -> ConfigDict:
    """Seconds: the language model on the embedded bytes."""
    config = _cpu(_base("enwik8"), num_steps=6, batch_size=8)
    config.train.log_every = 3
    config.ckpt.every = 3
    config.data.seq_len = 60
    config.data.context = 20
    config.model.hidden = 8
    config.model.decoder_blocks = 3
    config.eval.max_windows = 8
    config.eval.batch_size = 8
    config.sample.prompt_bytes = 20
    config.sample.num_bytes = 30
    return config


def translation_smoke() -> ConfigDict:
    """Seconds: translation on the Bible corpus (data.dir defaults to ../shared/data/bible_es_en)."""
    config = bible_es_en_cpu()
    config.data.dir = "../shared/data/bible_es_en"  # relative to the repository root
    config.train.num_steps = 6
    config.train.batch_size = 8
    config.train.log_every = 3
    config.ckpt.every = 3
    config.opt.warmup_steps = 2
    config.data.heldout = 40
    config.data.max_bytes = 90
    config.model.hidden = 8
    config.model.decoder_blocks = 2
    config.model.encoder_blocks = 2
    config.eval.num_pairs = 4
    config.eval.batch_size = 4
    config.eval.beam_size = 2
    config.sample.num_pairs = 2
    return config


VARIANTS = {
    "enwik8": enwik8,
    "wmt_en_de": wmt_en_de,
    "enwik8_cpu": enwik8_cpu,
    "bible_es_en_cpu": bible_es_en_cpu,
    "smoke": smoke,
    "translation_smoke": translation_smoke,
}


def get_config(arg: str | None = None) -> ConfigDict:
    return common.select_variant(arg, VARIANTS, config_file="configs/bytenet.py")
