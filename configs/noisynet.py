"""NoisyNet (Fortunato et al., arXiv:1706.10295): DQN, dueling double DQN and A2C, noisy or not.

Every variant is the NoisyNet agent (config.agent.noisy=True); `--config.agent.noisy=False` gives
its baseline (epsilon-greedy for DQN/Dueling, entropy bonus for A2C). The *_baseline variants are
that override spelled out for CartPole.

Variants:
  dqn_cartpole, dqn_cartpole_baseline          NoisyNet-DQN / DQN on gymnax CartPole-v1.
  dqn_cartpole_fast, dqn_cartpole_fast_baseline
                                               the same at 16 env steps per gradient step
                                               (batch 128, 64 units): about 100k env steps/s.
  dueling_cartpole, dueling_cartpole_baseline  NoisyNet-Dueling / dueling double DQN on CartPole-v1.
  a2c_cartpole, a2c_cartpole_baseline          NoisyNet-A2C / A2C on CartPole-v1.
  {dqn,dueling,a2c}_{breakout,asterix,space_invaders,freeway}
                                               gymnax MinAtar ("Breakout-MinAtar", ...).
  atari_dqn, atari_dueling, atari_a2c          ALE Atari (config.env.name, default "ALE/Pong-v5"),
                                               the paper's hyperparameters and optimisers (Nature
                                               DQN / dueling / A3C RMSProp), run on the host by
                                               experiments/noisynet/atari_dqn.py (DQN, Dueling) and
                                               experiments/noisynet/atari_a2c.py (A2C).
  smoke_dqn, smoke_dueling, smoke_a2c, smoke_atari, atari_a2c_smoke
                                               tiny, for tests.
Units: env steps are agent steps (one action; for Atari 4 frames with frame skip 4);
train.num_steps, train.steps_per_chunk, train.log_every and ckpt.every count env steps per seed
(the last three in whole chunks: one train step of the loop is one chunk);
agent.target_update_period counts optimisation steps. mesh.data=-1 spreads the vmapped seeds
over as many devices as divide train.num_seeds.
agent.sigma0 = 0 means the paper's value for the noise type (0.5 factorised, 0.017 independent).
"""

from collections.abc import Callable

from ml_collections import ConfigDict

from configs import common

MINATAR_GAMES = {
    "breakout": "Breakout-MinAtar",
    "asterix": "Asterix-MinAtar",
    "space_invaders": "SpaceInvaders-MinAtar",
    "freeway": "Freeway-MinAtar",
}


def _base(agent: str) -> ConfigDict:
    config = common.base_config("noisynet")
    del config.fsdp_min_size  # the state is split by seed, never FSDP

    config.env = ConfigDict()
    config.env.name = "CartPole-v1"
    config.env.num_envs = 8
    # ALE only (deepgen/noisynet/atari.py): standard Atari preprocessing.
    config.env.frame_skip = 4
    config.env.frame_stack = 4
    config.env.noop_max = 30
    config.env.terminal_on_life_loss = False
    config.env.sticky_action_prob = 0.0
    config.env.max_episode_frames = 108_000  # 30 minutes of emulator frames
    config.env.clip_rewards = True  # sign-clip rewards stored in the replay (returns stay raw)

    config.agent = ConfigDict()
    config.agent.name = agent
    config.agent.noisy = True
    config.agent.noise_type = "independent" if agent == "a2c" else "factorised"
    config.agent.sigma0 = 0.0
    config.agent.gamma = 0.99
    config.agent.double = agent == "dueling"
    # Acting noise, in every loop (gymnax and Atari; DQN, Dueling and A2C): one sample held between
    # optimisation steps (the paper, Sec. 3; for A2C that is one rollout, which the learner then
    # scores with the same sample). DQN and Dueling: one sample shared by the parallel
    # environments (the paper's single actor; the noise buffer of the common implementations).
    # A2C: one sample per environment, as each of NoisyNet-A3C's actor-learner threads held its
    # own (it learned at least as well as a shared sample: benchmarks/RESULTS.md, NoisyNet). False
    # shares one sample, True gives one per environment, for any agent. Evaluation draws a fresh
    # sample per action (per evaluated episode with act_noise_per_env).
    config.agent.act_noise_per_env = agent == "a2c"
    config.agent.epsilon_start = 1.0
    config.agent.epsilon_end = 0.05
    config.agent.epsilon_decay_steps = 50_000
    config.agent.epsilon_eval = 0.0
    config.agent.target_update_period = 500
    config.agent.learning_starts = 1_000
    config.agent.env_steps_per_update = 8
    config.agent.batch_size = 64
    config.agent.huber_delta = 1.0
    config.agent.rollout_len = 5
    config.agent.value_coef = 0.5
    config.agent.entropy_coef = 0.01

    config.replay = ConfigDict()
    config.replay.capacity = 50_000
    config.replay.save_with_checkpoint = True  # ALE host loop: save the replay beside checkpoints

    config.network = ConfigDict()
    config.network.torso = "mlp"
    config.network.torso_hidden = (64,)
    config.network.head_hidden = 64
    config.network.noisy_torso = True

    config.train.num_seeds = 1
    config.train.num_steps = 100_000
    config.train.steps_per_chunk = 5_000
    config.train.log_every = 1

    config.eval = ConfigDict()
    config.eval.num_episodes = 16
    # Noisy agents: "sample" evaluates with fresh noise as in training (the paper), "mean" with the
    # mean weights mu (every noise draw zero); the baselines have no noise either way.
    config.eval.noise = "sample"

    config.opt.name = "adam"
    config.opt.lr = 1e-3
    config.opt.schedule = "constant"
    config.opt.warmup_steps = 0
    config.opt.eps = 1e-8
    config.opt.weight_decay = 0.0
    config.opt.clip_norm = 10.0
    # opt.name = "rmsprop" only (deepgen/core/optim.py): eps sits inside the square root.
    config.opt.decay = 0.9
    config.opt.centered = False
    config.opt.momentum = 0.0
    config.opt.eps_in_sqrt = True

    config.ckpt.every = 10
    config.ckpt.keep = 2
    config.ckpt.async_save = False
    return config


def _cartpole_value(agent: str, noisy: bool) -> ConfigDict:
    """Tuned for NoisyNet-DQN to end above a return of 400 in 500k steps (about a minute, 2 CPU cores).

    Four vmapped seeds of a sweep ended at 500, 500, 375 and 500 (eval, noise on); a target period
    of 250 and 250k steps left seeds collapsing late (benchmarks/RESULTS.md).
    """
    config = _base(agent)
    config.agent.noisy = noisy
    config.agent.double = True  # the plain max target over-estimates and collapses on CartPole
    config.agent.target_update_period = 500
    config.agent.env_steps_per_update = 4
    config.network.torso_hidden = (128,)
    config.network.head_hidden = 128
    config.opt.lr = 5e-4
    config.opt.schedule = "warmup_cosine"
    config.train.num_steps = 500_000
    config.train.steps_per_chunk = 10_000
    return config


def _cartpole_fast(noisy: bool) -> ConfigDict:
    """NoisyNet-DQN on CartPole at about 100k env steps/s on 2 CPU cores (benchmarks/RESULTS.md).

    16 env steps per gradient step of batch 128 (each transition is sampled 8 times, as at 4 per
    batch-64 step) and a 64-unit network: a quarter of dqn_cartpole's learner work per env step.
    2M env steps (125k gradient steps). Three runs of 4 vmapped seeds (config.seed 0, 1, 2) ended
    at 400 or more in 10 of 12 seeds (eval, noise on; benchmarks/RESULTS.md).
    """
    config = _cartpole_value("dqn", noisy)
    config.env.num_envs = 16
    config.agent.env_steps_per_update = 16
    config.agent.batch_size = 128
    config.network.torso_hidden = (64,)
    config.network.head_hidden = 64
    config.train.num_steps = 2_000_000
    config.train.steps_per_chunk = 40_000
    return config


def _a2c_cartpole(noisy: bool) -> ConfigDict:
    config = _base("a2c")
    config.agent.noisy = noisy
    config.env.num_envs = 16
    config.agent.rollout_len = 20
    config.network.torso_hidden = (64,)
    config.opt.lr = 7e-4
    config.opt.eps = 1e-5
    config.opt.clip_norm = 0.5
    config.train.num_steps = 500_000
    config.train.steps_per_chunk = 16 * 20 * 32
    return config


def _minatar(agent: str, game: str) -> ConfigDict:
    config = _base(agent)
    config.env.name = MINATAR_GAMES[game]
    config.network.torso = "minatar"
    config.network.torso_hidden = ()
    config.network.head_hidden = 128
    if agent == "a2c":
        config.env.num_envs = 16
        config.agent.rollout_len = 20
        config.opt.lr = 2.5e-4
        config.opt.eps = 1e-5
        config.opt.clip_norm = 0.5
        config.train.steps_per_chunk = 16 * 20 * 64
    else:
        # MinAtar DQN settings (Young & Tian 2019) with Adam and more parallel environments.
        config.agent.batch_size = 32
        config.agent.learning_starts = 5_000
        config.agent.epsilon_end = 0.1
        config.agent.epsilon_decay_steps = 100_000
        config.agent.target_update_period = 1_000
        config.agent.env_steps_per_update = 4
        config.replay.capacity = 100_000
        config.opt.lr = 2.5e-4
        config.train.steps_per_chunk = 20_000
    config.train.num_steps = 1_000_000
    config.ckpt.every = 5
    return config


def _atari(agent: str) -> ConfigDict:
    """The paper's Atari settings with its base agents' optimisers (DQN: Mnih et al. 2015;
    Dueling: Wang et al. 2016; A3C: Mnih et al. 2016, run as A2C)."""
    config = _base(agent)
    config.env.name = "ALE/Pong-v5"
    config.env.num_envs = 1
    config.env.terminal_on_life_loss = True
    config.network.torso = "nature"
    config.network.torso_hidden = ()
    config.network.head_hidden = 512
    config.train.num_steps = 50_000_000  # 200M frames
    config.train.steps_per_chunk = 250_000  # 1M frames per logged chunk
    config.eval.num_episodes = 30
    config.opt.name = "rmsprop"
    config.opt.schedule = "constant"
    if agent == "a2c":
        # A3C: 16 actor-learners [recalled], t_max = 5 actions per update, entropy weight 0.01 for
        # the baseline [recalled] (NoisyNet-A2C drops it). Optimiser, from the A3C authors (V. Mnih,
        # e-mail quoted on github.com/muupan/async-rl/wiki): RMSProp of Eqs. 8-9 (eps inside the
        # root, not centred), lr 7e-4 decayed linearly to 0, eps 0.1, alpha 0.99, the value
        # gradient d(R - V)^2 times 0.5 (value_coef 1 with a2c_loss's 0.5 (R - V)^2), no loss
        # clipping. A3C summed each thread's gradients over its t_max steps; a2c_loss averages
        # over the rollout, so gradients are t_max times smaller and eps / t_max^2 keeps the
        # paper's step (deepgen/core/optim.py). The averaging over 16 envs cannot be undone.
        config.env.num_envs = 16
        config.agent.rollout_len = 5
        config.agent.entropy_coef = 0.01
        config.agent.value_coef = 1.0
        config.opt.lr = 7e-4
        config.opt.schedule = "linear_decay"
        config.opt.decay = 0.99
        config.opt.eps = 0.1 / config.agent.rollout_len**2
        config.opt.clip_norm = 40.0  # a loose safety rail (not in the A3C paper)
        config.train.steps_per_chunk = 16 * 5 * 3125  # 1M frames
        config.ckpt.every = 1
        return config
    config.agent.batch_size = 32
    config.agent.gamma = 0.99
    config.agent.learning_starts = 50_000
    config.agent.env_steps_per_update = 4
    config.agent.target_update_period = 2_500  # 10k agent steps = 40k frames
    config.agent.epsilon_start = 1.0
    config.agent.epsilon_end = 0.1
    config.agent.epsilon_decay_steps = 250_000  # 1M frames
    config.agent.epsilon_eval = 0.05  # Nature DQN evaluation; NoisyNet ignores epsilon
    config.replay.capacity = 1_000_000
    # Nature DQN (Mnih et al. 2015, Methods; its NeuralQLearner.lua): centred RMSProp, lr 2.5e-4,
    # gradient and squared-gradient momentum 0.95, min squared gradient 0.01 inside the root, TD
    # errors clipped to [-1, 1] (the Huber loss) and no gradient-norm clipping. The Lua code summed
    # the loss over the 32 transitions; dqn.py averages it, so eps = 0.01 / 32^2 (as dqn_zoo).
    # Dueling (Wang et al. 2016): "the optimizers and hyper-parameters" of double DQN (van Hasselt
    # et al., i.e. DQN's), lr 6.25e-5 and gradient norms clipped to 10 [lr and clip recalled].
    config.opt.decay = 0.95
    config.opt.centered = True
    config.opt.eps = 0.01 / config.agent.batch_size**2  # keep in step with agent.batch_size
    config.opt.lr = 6.25e-5 if agent == "dueling" else 2.5e-4
    config.opt.clip_norm = 10.0 if agent == "dueling" else 0.0
    config.ckpt.every = 4
    return config


def _smoke(agent: str) -> ConfigDict:
    config = _base(agent)
    config.env.num_envs = 4
    config.network.torso_hidden = (16,)
    config.network.head_hidden = 16
    config.agent.batch_size = 16
    config.agent.learning_starts = 64
    config.agent.env_steps_per_update = 4
    config.agent.target_update_period = 20
    config.agent.rollout_len = 8
    config.replay.capacity = 1_000
    config.train.num_seeds = 2
    config.train.num_steps = 1_024
    config.train.steps_per_chunk = 256
    config.eval.num_episodes = 2  # as --quick: the full and quick evals share one compilation
    config.ckpt.every = 2
    return config


def _smoke_atari() -> ConfigDict:
    config = _atari("dqn")
    # network and learner as in tests/noisynet/test_atari.py's runs: one compilation serves both
    config.network.head_hidden = 16
    config.agent.batch_size = 4
    config.agent.learning_starts = 64
    config.agent.target_update_period = 4
    config.replay.capacity = 2_000
    config.env.max_episode_frames = 400
    config.train.num_seeds = 1
    config.train.num_steps = 256
    config.train.steps_per_chunk = 128
    config.eval.num_episodes = 1
    config.ckpt.every = 1
    return config


def _atari_a2c_smoke() -> ConfigDict:
    """A few hundred frames of NoisyNet-A2C on real Pong with 2 envs (for tests): the shared
    sample, whose path the tests follow through the host loop (the per-env default is tested on
    the agent's functions)."""
    config = _atari("a2c")
    config.agent.act_noise_per_env = False
    config.env.num_envs = 2
    config.env.max_episode_frames = 120  # each env ends (is cut) one episode while training
    config.network.head_hidden = 32
    config.train.num_steps = 80  # 320 frames
    config.train.steps_per_chunk = 40  # 4 updates of 2 envs x 5 steps
    config.eval.num_episodes = 2
    config.ckpt.every = 1
    return config


VARIANTS = {
    "dqn_cartpole": lambda: _cartpole_value("dqn", True),
    "dqn_cartpole_baseline": lambda: _cartpole_value("dqn", False),
    "dqn_cartpole_fast": lambda: _cartpole_fast(True),
    "dqn_cartpole_fast_baseline": lambda: _cartpole_fast(False),
    "dueling_cartpole": lambda: _cartpole_value("dueling", True),
    "dueling_cartpole_baseline": lambda: _cartpole_value("dueling", False),
    "a2c_cartpole": lambda: _a2c_cartpole(True),
    "a2c_cartpole_baseline": lambda: _a2c_cartpole(False),
    **{
        f"{agent}_{game}": (lambda agent=agent, game=game: _minatar(agent, game))
        for agent in ("dqn", "dueling", "a2c")
        for game in MINATAR_GAMES
    },
    "atari_dqn": lambda: _atari("dqn"),
    "atari_dueling": lambda: _atari("dueling"),
    "atari_a2c": lambda: _atari("a2c"),
    "atari_a2c_smoke": _atari_a2c_smoke,
    "smoke_dqn": lambda: _smoke("dqn"),
    "smoke_dueling": lambda: _smoke("dueling"),
    "smoke_a2c": lambda: _smoke("a2c"),
    "smoke_atari": _smoke_atari,
}


def _chunks_to_env_steps(make: Callable[[], ConfigDict]) -> Callable[[], ConfigDict]:
    """The variants above give train.log_every and ckpt.every in chunks; the loop counts env steps."""

    def variant() -> ConfigDict:
        config = make()
        config.train.log_every *= config.train.steps_per_chunk
        config.ckpt.every *= config.train.steps_per_chunk
        return config

    return variant


VARIANTS = {name: _chunks_to_env_steps(make) for name, make in VARIANTS.items()}


def get_config(arg: str | None = None) -> ConfigDict:
    """The named variant of the NoisyNet config (see the module docstring)."""
    return common.select_variant(arg, VARIANTS, config_file="configs/noisynet.py")
