"""Sparse Access Memory and its dense baselines (Rae et al. 2016, arXiv 1610.09027).

The memory is chosen with --config.memory.kind=sam|dam|ntm|sdnc|dnc and the neighbour search of
the sparse ones with --config.memory.search=exact|blocked|approx|host.

Paper facts used here, [paper] checked in its full text (notes: ../shared/specs/
noisynet_curriculum_sam.md section 3), [ours] where the paper gives no value:
  controller: one-layer LSTM of 100 units, 4 access heads, word size 32 [paper, Supp. C/E];
  K = 4 words per sparse read head [paper, Supp. C: K in {4, 8, 16} made no difference];
  usage threshold delta = 0.005 [paper]; K_L = 8 sparse links [paper, Sec. 3.5];
  RMSProp, minibatch 8 [paper, Supp. C] (8 asynchronous workers there; one learner here);
  learning rate 1e-5, the best of {1e-6, 5e-6, 1e-5, 5e-5, 1e-4} for DAM [paper, Supp. C];
  copy lengths 1-20, associative recall 3-6 items, priority sort 20 inputs -> top 16 [paper];
  curriculum: h doubles when the cost falls below a threshold, levels uniform below h [paper];
  memory size of the learning-curve runs: 128 words [ours]; dense models 64 words and sparse
  ones 2e6 in the curriculum-scaling runs [paper]; the curriculum's threshold (bits per
  sequence) and averaging decay [ours]; RMSProp decay 0.95, momentum 0.9, clipping at 10 [ours].

Variants:
  copy, associative_recall, priority_sort   the paper's learning-curve tasks (Fig. 2 / Supp. C)
  recall_scaling                            SAM with 2e6 words under the doubling curriculum
  omniglot                                  one-shot Omniglot, doubling the characters (data.dir)
  babi                                      the 20 bAbI tasks jointly (data.dir: en-10k files)
  copy_cpu, recall_cpu, sort_cpu            minutes on 2 CPU cores, the paper's effect in kind
  omniglot_cpu                              Omniglot from ../shared/data/omniglot's small zips
  smoke, babi_smoke, omniglot_smoke         seconds, for tests
"""

from ml_collections import ConfigDict

from configs import common


def _base(task: str) -> ConfigDict:
    config = common.base_config("sam", data=True, batch_size=8)
    config.task = task

    config.memory = ConfigDict()
    config.memory.kind = "sam"
    config.memory.num_words = 128  # [ours]
    config.memory.word_size = 32  # [paper]
    config.memory.num_heads = 4  # [paper]
    config.memory.num_reads = 4  # K [paper]
    config.memory.usage_delta = 0.005  # [paper]
    config.memory.usage_discount = 0.99  # DAM's lambda [ours]
    config.memory.num_links = 8  # K_L [paper]
    config.memory.search = "exact"
    config.memory.search_block = 65536

    config.model = ConfigDict()
    config.model.hidden_size = 100  # [paper]

    config.data.name = task
    config.data.num_bits = 8  # [ours: NTM's copy width]
    config.data.item_size = 3  # [NTM]
    config.data.num_outputs = 16  # [paper]
    config.data.sort_inputs = 20  # [paper]
    config.data.image_side = 20  # Omniglot [Santoro et al. 2016]
    config.data.instances_per_class = 10  # [ours]
    config.data.num_labels = 128
    config.data.max_tokens = 0  # bAbI: 0 keeps whole stories
    # Associative recall: draw a sequence's items without replacement, so that the query's value
    # occurs once and the answer is determined [ours; NTM's 18-bit items rarely repeat anyway].
    config.data.distinct_items = False

    config.curriculum = ConfigDict()
    config.curriculum.initial_level = 1
    config.curriculum.max_level = 20
    config.curriculum.threshold = 1.0  # bits per sequence [ours]
    config.curriculum.decay = 0.95  # [ours]

    config.opt.name = "rmsprop"
    config.opt.lr = 1e-5  # [paper]
    config.opt.decay = 0.95  # [ours]
    config.opt.momentum = 0.9  # [ours]
    config.opt.eps = 1e-8
    config.opt.weight_decay = 0.0
    config.opt.clip_norm = 10.0  # [ours]

    config.train.num_steps = 500_000
    config.train.log_every = 100
    config.ckpt.every = 10_000

    config.eval = ConfigDict()
    config.eval.num_sequences = 1000
    config.eval.batch_size = 100
    config.eval.split = "test"  # Omniglot characters the model never saw
    config.eval.generalisation_factors = (2.0, 5.0, 10.0)
    config.eval.generalisation_max_error = 0.01  # bit error rate that still counts as answered
    config.eval.generalisation_num_words = 0  # memory words of the longer runs; 0: training's

    config.sample = ConfigDict()
    config.sample.num_sequences = 4
    return config


def copy() -> ConfigDict:
    config = _base("copy")
    config.curriculum.initial_level = 20  # lengths 1-20 from the start [paper]
    config.curriculum.max_level = 20
    return config


def associative_recall() -> ConfigDict:
    config = _base("associative_recall")
    config.curriculum.initial_level = 6  # 3-6 items [paper]; levels drawn from 2..6 here
    config.curriculum.max_level = 6
    return config


def priority_sort() -> ConfigDict:
    config = _base("priority_sort")
    config.curriculum.initial_level = 20  # 20 inputs, top 16 [paper]
    config.curriculum.max_level = 20
    return config


def recall_scaling() -> ConfigDict:
    """Curriculum scaling: SAM with 2e6 words passes 4,000-step recall sequences [paper]."""
    config = _base("associative_recall")
    config.memory.num_words = 2_000_000  # [paper]
    config.memory.search = "blocked"
    config.curriculum.initial_level = 2
    config.curriculum.max_level = 1024  # 1,024 items of 3 vectors: 4,104 steps
    config.train.batch_size = 8  # [ours]; 8 x 2e6 x 32 float32 words: 2 GiB of memories
    return config


def omniglot() -> ConfigDict:
    config = _base("omniglot")
    config.curriculum.initial_level = 2
    config.curriculum.max_level = 128
    config.curriculum.threshold = 5.0  # [ours]
    config.memory.word_size = 32
    config.data.source = "zips"
    return config


def babi() -> ConfigDict:
    config = _base("babi")
    config.opt.lr = 1e-4  # [ours]
    config.train.batch_size = 32  # [ours]
    config.eval.batch_size = 256
    return config


def _cpu(config: ConfigDict, *, num_steps: int) -> ConfigDict:
    """Small memories and a fast learning rate: minutes on 2 cores.

    128 words for every memory kind. SAM writes to the least recently accessed word, and each of
    its R heads touches K words per read (4 x 4 = 16 per step here). With 32 words SAM copied
    16-item sequences with 9% of bits wrong after 10,000 steps (3 seeds), with 128 words 0.5%
    (seed 0): we read it as the LRA word being, with 32 words, often one still holding an item.
    """
    config.memory.num_words = 128
    config.memory.word_size = 16
    config.memory.num_heads = 4  # as the paper; with 2, SAM learnt copy on 1 seed of 3 here
    config.model.hidden_size = 100
    config.opt.lr = 1e-3
    config.opt.clip_norm = 10.0
    config.train.batch_size = 16
    config.train.num_steps = num_steps
    config.train.log_every = 50
    config.ckpt.every = 500
    config.eval.num_sequences = 500
    config.eval.batch_size = 100
    return config


def copy_cpu() -> ConfigDict:
    config = _cpu(_base("copy"), num_steps=10_000)
    config.data.num_bits = 6
    config.curriculum.initial_level = 2
    config.curriculum.max_level = 16
    return config


def recall_cpu() -> ConfigDict:
    config = _cpu(_base("associative_recall"), num_steps=20_000)
    # One 6-bit vector per item, all items of a sequence different (64 codes), 2-6 items (the
    # paper's 3-6 under the doubling curriculum from 2); answered at 2, 4 and 10 times the level
    # reached, 12, 24 and 60 items. With independent items (sessions 11-12: 6 bits, trained to 16
    # items) the query's value recurred in 21% of 16-item and 92% of 160-item sequences: the best
    # possible answers erred on 5.8% and 31% of bits, which is what SAM and the NTM measured.
    # With distinct 8-bit items trained to 16, SAM had not learnt recall after 20,000 steps.
    config.data.num_bits = 6
    config.data.item_size = 1
    config.data.distinct_items = True
    config.curriculum.initial_level = 2
    config.curriculum.max_level = 6
    # 10,000 steps at 1e-3, then 1e-4: the lower rate takes the held-out errors to zero [ours].
    config.opt.schedule = "step_decay"
    config.opt.decay_steps = (10_000,)
    config.opt.decay_factor = 0.1
    config.eval.generalisation_factors = (2.0, 4.0, 10.0)
    # 60 items (124 steps) need room beyond the words that 16 reads a step keep fresh.
    config.eval.generalisation_num_words = 4096
    return config


def sort_cpu() -> ConfigDict:
    config = _cpu(_base("priority_sort"), num_steps=10_000)
    config.data.num_bits = 6
    config.curriculum.initial_level = 2
    config.curriculum.max_level = 16
    config.curriculum.threshold = 4.0
    return config


def omniglot_cpu() -> ConfigDict:
    config = _cpu(_base("omniglot"), num_steps=2000)
    config.data.dir = "../shared/data/omniglot"
    config.data.source = "zips"
    config.data.num_labels = 16
    config.curriculum.initial_level = 2
    config.curriculum.max_level = 16
    config.curriculum.threshold = 5.0
    return config


def _smoke(config: ConfigDict) -> ConfigDict:
    config.memory.num_words = 16
    config.memory.word_size = 8
    config.memory.num_heads = 2
    config.memory.num_reads = 2
    config.memory.num_links = 2
    config.model.hidden_size = 16
    config.opt.lr = 1e-3
    config.train.batch_size = 8
    config.train.num_steps = 20
    config.train.log_every = 5
    config.ckpt.every = 10
    config.ckpt.keep = 2
    config.eval.num_sequences = 16
    config.eval.batch_size = 8
    config.eval.generalisation_factors = (2.0,)
    config.sample.num_sequences = 2
    return config


def smoke() -> ConfigDict:
    config = _smoke(_base("associative_recall"))
    config.data.num_bits = 4
    config.data.item_size = 1
    config.curriculum.initial_level = 2
    config.curriculum.max_level = 4
    config.curriculum.threshold = 1e3  # doubles as soon as the average is formed
    config.curriculum.decay = 0.5
    return config


def omniglot_smoke() -> ConfigDict:
    config = _smoke(omniglot_cpu())
    config.data.num_labels = 4
    config.data.instances_per_class = 2
    config.curriculum.initial_level = 2  # one padded length: one compilation of the step
    config.curriculum.max_level = 2
    return config


def babi_smoke() -> ConfigDict:
    config = _smoke(_base("babi"))
    return config


VARIANTS = {
    "copy": copy,
    "associative_recall": associative_recall,
    "priority_sort": priority_sort,
    "recall_scaling": recall_scaling,
    "omniglot": omniglot,
    "babi": babi,
    "copy_cpu": copy_cpu,
    "recall_cpu": recall_cpu,
    "sort_cpu": sort_cpu,
    "omniglot_cpu": omniglot_cpu,
    "smoke": smoke,
    "omniglot_smoke": omniglot_smoke,
    "babi_smoke": babi_smoke,
}


def get_config(arg: str | None = None) -> ConfigDict:
    return common.select_variant(arg, VARIANTS, config_file="configs/sam.py")
