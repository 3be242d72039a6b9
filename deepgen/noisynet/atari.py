"""Atari 2600 through ale-py with the DQN preprocessing, and a frame-once replay (host side, numpy).

The preprocessing is the one the DQN line of papers (Mnih et al. 2015, "Methods"; NoisyNet,
arXiv:1706.10295, Sec. 4 follows it) and their public code (dqn_zoo, baselines, dopamine) use:
the ALE minimal action set, each agent action repeated for 4 emulator frames with the rewards
summed, the observation the pixel-wise max of the last two frames (to undo Atari flicker), the
ALE greyscale (luminance) screen resized 210x160 -> 84x84 by area averaging, the last 4 such
frames stacked (HxWx4 uint8, zeros before an episode's first frame, as dopamine), 1..30 random
no-op emulator frames after each reset, life loss as a terminal transition for training while
the episode runs on until game over, rewards clipped to their sign for the learner (raw returns
are kept for evaluation), episodes cut at 108,000 emulator frames (30 minutes), and sticky
actions off (repeat_action_probability = 0, the paper-era protocol). No FIRE-on-reset wrapper:
the DQN papers did not use one.

The resize is `area_resize` below, a numpy version of OpenCV's INTER_AREA for downscaling (each
output pixel is the mean of the input area it covers, fractional pixels weighted by overlap,
then rounded half up); cv2 is not installed, and PIL's BOX filter is not an area average for the
non-integer 2.5 and 1.9 ratios (it weights whole pixels by their centres).

`FrameReplay` stores every 84x84 frame once and rebuilds the 4-frame stacks when sampling: a
1M-transition replay of stacked (obs, next_obs) pairs would need 1M * 2 * 84*84*4 B = 56 GB;
frames stored once need 84*84 B = 7 KB per transition, 7.1 GB at the paper's 1M capacity.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from deepgen.core.errors import ConfigError
from deepgen.core.validate import Checker

FRAME_SKIP = 4
FRAME_SIZE = 84
SCREEN_HW = (210, 160)
DEFAULT_NOOP_MAX = 30
DEFAULT_MAX_EPISODE_FRAMES = 108_000
ALE_PREFIX = "ALE/"


def _ale_module():
    """ale_py, imported on first use so that importing this module never needs the emulator."""
    import ale_py

    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    return ale_py


@functools.cache
def _camel_to_rom() -> dict[str, str]:
    roms = _ale_module().roms
    return {"".join(p.capitalize() for p in rom.split("_")): rom for rom in roms.get_all_rom_ids()}


def rom_id(name: str) -> str:
    """The ale-py ROM id ("pong") of "ALE/Pong-v5", "Pong" or "pong"; ConfigError if unknown."""
    game = name[len(ALE_PREFIX) :] if name.startswith(ALE_PREFIX) else name
    game = game.split("-v")[0]
    table = _camel_to_rom()
    if game in table.values():
        return game
    if game in table:
        return table[game]
    raise ConfigError(
        f"config.env.name={name!r} is not an ALE game; use ALE/<Game>-v5 with <Game> one of "
        f"{sorted(table)[:8]}... ({len(table)} ROMs ship with ale-py)"
    )


@functools.cache
def _area_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) matrix: row i holds the overlap of input pixel k with output pixel i's interval."""
    scale = in_size / out_size
    starts = np.arange(out_size)[:, None] * scale
    ends = starts + scale
    lo = np.arange(in_size)[None, :].astype(np.float64)
    overlap = np.clip(np.minimum(ends, lo + 1) - np.maximum(starts, lo), 0.0, None)
    return overlap / scale


@functools.cache
def _area_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """_area_weights as K integer taps: indices (K, out), weights (K, out) and their denominator.

    With in/out = p/q in lowest terms every interval end is a multiple of 1/q, so every weight
    (overlap / (p/q)) is an integer multiple of 1/p.
    """
    divisor = math.gcd(in_size, out_size)
    denominator = in_size // divisor
    weights = np.rint(_area_weights(in_size, out_size) * denominator).astype(np.int64)
    num_taps = int((weights > 0).sum(axis=1).max())
    first = np.argmax(weights > 0, axis=1)
    taps_KxO = first[None, :] + np.arange(num_taps)[:, None]
    index_KxO = np.minimum(taps_KxO, in_size - 1)
    weight_KxO = np.where(taps_KxO < in_size, np.take_along_axis(weights.T, index_KxO, axis=0), 0)
    return index_KxO, weight_KxO.astype(np.int32), denominator


def area_resize(
    frame_HxW: np.ndarray, out_hw: tuple[int, int] = (FRAME_SIZE, FRAME_SIZE)
) -> np.ndarray:
    """Downscale a uint8 image by area averaging (OpenCV INTER_AREA semantics); not for upscaling.

    Exact integer arithmetic: separable sums over the few input rows and columns each output
    pixel overlaps, one division at the end, rounded half up.
    """
    row_index, row_weight, row_denominator = _area_taps(frame_HxW.shape[0], out_hw[0])
    col_index, col_weight, col_denominator = _area_taps(frame_HxW.shape[1], out_hw[1])
    frame = frame_HxW.astype(np.int32)
    rows_OxW = np.sum(frame[row_index] * row_weight[..., None], axis=0)
    total_OxO = np.sum(rows_OxW[:, col_index] * col_weight[None, :, :], axis=1)
    denominator = row_denominator * col_denominator
    return ((2 * total_OxO + denominator) // (2 * denominator)).astype(np.uint8)


def clip_reward(reward: np.ndarray | float) -> np.ndarray:
    """Reward clipped to its sign, as the DQN learner sees it."""
    return np.sign(np.asarray(reward, np.float32))


class StepResult(NamedTuple):
    """One agent step of one environment."""

    obs: np.ndarray  # HxWxS uint8 stacked frames after the step
    reward: float  # raw game score change over the skipped frames
    terminal: bool  # game over, or a life lost when terminal_on_life_loss (training signal)
    game_over: bool  # the game ended
    truncated: bool  # the episode hit max_episode_frames without game over


class AtariEnv:
    """One ALE game with the DQN preprocessing; reset() then step(action index) repeatedly."""

    def __init__(
        self,
        game: str,
        *,
        seed: int,
        noop_max: int = DEFAULT_NOOP_MAX,
        frame_skip: int = FRAME_SKIP,
        frame_stack: int = 4,
        max_episode_frames: int = DEFAULT_MAX_EPISODE_FRAMES,
        terminal_on_life_loss: bool = True,
        repeat_action_probability: float = 0.0,
    ):
        ale_py = _ale_module()
        self.game = rom_id(game)
        self.noop_max = int(noop_max)
        self.frame_skip = int(frame_skip)
        self.frame_stack = int(frame_stack)
        self.max_episode_frames = int(max_episode_frames)
        self.terminal_on_life_loss = bool(terminal_on_life_loss)
        np_seed, ale_seed = np.random.SeedSequence(seed).generate_state(2)
        self._rng = np.random.default_rng(int(np_seed))
        self.ale = ale_py.ALEInterface()
        self.ale.setInt("random_seed", int(ale_seed % 2**31))
        self.ale.setFloat("repeat_action_probability", float(repeat_action_probability))
        self.ale.setInt("frame_skip", 1)
        self.ale.loadROM(ale_py.roms.get_rom_path(self.game))
        self.action_set = list(self.ale.getMinimalActionSet())
        self._noop = ale_py.Action.NOOP
        self._screens_2xHxW = np.zeros((2, *SCREEN_HW), np.uint8)  # the last two emulator frames
        self._stack_HxWxS = np.zeros((FRAME_SIZE, FRAME_SIZE, self.frame_stack), np.uint8)
        self._lives = 0
        self.noops_taken = 0
        self.episode_return = 0.0

    @property
    def num_actions(self) -> int:
        """Size of the game's minimal action set."""
        return len(self.action_set)

    def _grab(self) -> None:
        self._screens_2xHxW[0] = self._screens_2xHxW[1]
        self.ale.getScreenGrayscale(self._screens_2xHxW[1])

    def _push_frame(self) -> np.ndarray:
        pooled = np.maximum(self._screens_2xHxW[0], self._screens_2xHxW[1])
        self._stack_HxWxS[..., :-1] = self._stack_HxWxS[..., 1:]
        self._stack_HxWxS[..., -1] = area_resize(pooled)
        return self._stack_HxWxS.copy()

    def reset(self) -> np.ndarray:
        """Start a new game with 1..noop_max no-op frames; the stack is zeros then the first frame."""
        self.ale.reset_game()
        self.ale.getScreenGrayscale(self._screens_2xHxW[1])
        self._screens_2xHxW[0] = self._screens_2xHxW[1]
        self.noops_taken = int(self._rng.integers(1, self.noop_max + 1)) if self.noop_max > 0 else 0
        for _ in range(self.noops_taken):
            self.ale.act(self._noop)
            if self.ale.game_over(with_truncation=False):
                self.ale.reset_game()
            self._grab()
        self._lives = self.ale.lives()
        self.episode_return = 0.0
        self._stack_HxWxS[:] = 0
        return self._push_frame()

    def step(self, action: int) -> StepResult:
        """Repeat action_set[action] for frame_skip frames (fewer if the game ends)."""
        ale_action = self.action_set[int(action)]
        reward = 0.0
        for _ in range(self.frame_skip):
            reward += self.ale.act(ale_action)
            self._grab()
            if self.ale.game_over(with_truncation=False):
                break
        game_over = self.ale.game_over(with_truncation=False)
        lives = self.ale.lives()
        life_lost = lives < self._lives
        self._lives = lives
        self.episode_return += reward
        truncated = not game_over and self.ale.getEpisodeFrameNumber() >= self.max_episode_frames
        terminal = game_over or (self.terminal_on_life_loss and life_lost)
        return StepResult(self._push_frame(), float(reward), bool(terminal), game_over, truncated)

    def get_state(self) -> dict[str, np.ndarray]:
        """Everything needed to continue this environment exactly (emulator, rng, frames)."""
        serialized = self.ale.cloneState(include_rng=True).serialize()
        return {
            "ale": np.frombuffer(serialized, np.uint8).copy(),
            "rng": np.frombuffer(json.dumps(self._rng.bit_generator.state).encode(), np.uint8),
            "screens": self._screens_2xHxW.copy(),
            "stack": self._stack_HxWxS.copy(),
            "scalars": np.array([self._lives, self.noops_taken, self.episode_return], np.float64),
        }

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Inverse of get_state (same game)."""
        ale_py = _ale_module()
        self.ale.restoreState(ale_py.ALEState(np.asarray(state["ale"], np.uint8).tobytes()))
        self._rng.bit_generator.state = json.loads(np.asarray(state["rng"], np.uint8).tobytes())
        self._screens_2xHxW[:] = state["screens"]
        self._stack_HxWxS[:] = state["stack"]
        lives, noops, episode_return = (float(v) for v in state["scalars"])
        self._lives, self.noops_taken, self.episode_return = int(lives), int(noops), episode_return


class VecStep(NamedTuple):
    """One agent step of N environments; finished episodes were reset, so obs starts a new one."""

    obs: np.ndarray  # NxHxWxS uint8
    reward: np.ndarray  # N float32, raw
    terminal: np.ndarray  # N bool, training terminal (life loss or game over)
    episode_over: np.ndarray  # N bool, game over or truncation: obs is a fresh episode's first
    episode_returns: list[float]  # raw returns of the episodes that ended in this step


class AtariVecEnv:
    """N independent AtariEnvs stepped in a loop, reset automatically at game over or truncation."""

    def __init__(self, game: str, *, num_envs: int, seed: int, **env_kwargs: Any):
        seeds = np.random.SeedSequence(seed).generate_state(num_envs)
        self.envs = [AtariEnv(game, seed=int(s), **env_kwargs) for s in seeds]
        self.num_actions = self.envs[0].num_actions

    @property
    def num_envs(self) -> int:
        """Number of environments."""
        return len(self.envs)

    def reset(self) -> np.ndarray:
        """Reset every environment; NxHxWxS."""
        return np.stack([env.reset() for env in self.envs])

    def step(self, actions_N: Sequence[int]) -> VecStep:
        """Step every environment with its action."""
        obs, rewards, terminals, overs, returns = [], [], [], [], []
        for env, action in zip(self.envs, actions_N, strict=True):
            result = env.step(int(action))
            over = result.game_over or result.truncated
            if over:
                returns.append(env.episode_return)
                obs.append(env.reset())
            else:
                obs.append(result.obs)
            rewards.append(result.reward)
            terminals.append(result.terminal)
            overs.append(over)
        return VecStep(
            np.stack(obs),
            np.asarray(rewards, np.float32),
            np.asarray(terminals, bool),
            np.asarray(overs, bool),
            returns,
        )

    def get_state(self) -> dict[str, np.ndarray]:
        """States of all environments, keyed env{i}/{name}."""
        return {
            f"env{i}/{k}": v for i, env in enumerate(self.envs) for k, v in env.get_state().items()
        }

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Inverse of get_state."""
        for i, env in enumerate(self.envs):
            prefix = f"env{i}/"
            env.set_state({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


class EnvStep(NamedTuple):
    """One agent step of every env, keeping an ended episode's true last observation."""

    obs_ExHxWxS: np.ndarray  # after the step: a new episode's first observation where one ended
    next_obs_ExHxWxS: np.ndarray  # the true next observation (an ended episode's last one)
    reward_E: np.ndarray  # raw score change
    terminal_E: np.ndarray  # game over, or a life lost with terminal_on_life_loss
    truncated_E: np.ndarray  # cut at max_episode_frames without game over
    ended_E: np.ndarray  # game over or truncated
    episode_return_E: np.ndarray  # raw return of the episode that ended here, else 0


def step_envs(envs: AtariVecEnv, actions_E: np.ndarray) -> EnvStep:
    """Step each env with its action; keep an ended episode's last observation, then reset it.

    (AtariVecEnv.step drops that last observation; an actor-critic bootstraps a cut episode
    from it.)
    """
    num_envs = envs.num_envs
    obs, next_obs = [], []
    reward = np.zeros(num_envs, np.float32)
    terminal = np.zeros(num_envs, bool)
    truncated = np.zeros(num_envs, bool)
    ended = np.zeros(num_envs, bool)
    episode_return = np.zeros(num_envs, np.float32)
    for i, env in enumerate(envs.envs):
        result = env.step(int(actions_E[i]))
        next_obs.append(result.obs)
        reward[i], terminal[i], truncated[i] = result.reward, result.terminal, result.truncated
        if result.game_over or result.truncated:
            ended[i], episode_return[i] = True, env.episode_return
            obs.append(env.reset())
        else:
            obs.append(result.obs)
    return EnvStep(
        np.stack(obs), np.stack(next_obs), reward, terminal, truncated, ended, episode_return
    )


class FrameBatch(NamedTuple):
    """A sampled minibatch: stacked frames rebuilt from single stored frames."""

    obs: np.ndarray  # BxHxWxS uint8
    action: np.ndarray  # B int32
    reward: np.ndarray  # B float32 (as stored: clipped for training)
    next_obs: np.ndarray  # BxHxWxS uint8
    discount: np.ndarray  # B float32: 0 at a terminal transition, else 1


class FrameReplay:
    """Uniform replay storing each frame once per environment, as a ring of capacity // num_envs.

    Slot j of env e holds the newest frame of obs_j, the action and (clipped) reward that followed,
    whether that transition was terminal, and whether obs_j began an episode. Transition j can be
    sampled once obs_{j+1} is stored, unless an episode was truncated between them (not terminal,
    but obs_{j+1} starts a new episode): those are never sampled. Frames before an episode start
    are zeros in the rebuilt stack, exactly as the environment stacks them.
    """

    _ARRAYS = ("frames", "actions", "rewards", "terminals", "starts")

    def __init__(self, capacity: int, *, num_envs: int, frame_stack: int = 4):
        if capacity // num_envs <= frame_stack + 1:
            raise ConfigError(
                f"config.replay.capacity={capacity} is too small for {num_envs} envs: "
                f"need more than {(frame_stack + 1) * num_envs}"
            )
        self.num_envs = num_envs
        self.frame_stack = frame_stack
        self.per_env = capacity // num_envs
        shape = (num_envs, self.per_env)
        self.frames = np.zeros((*shape, FRAME_SIZE, FRAME_SIZE), np.uint8)
        self.actions = np.zeros(shape, np.int32)
        self.rewards = np.zeros(shape, np.float32)
        self.terminals = np.zeros(shape, bool)
        self.starts = np.zeros(shape, bool)
        self.written = 0  # transitions added per env (every env gets one per add)

    @property
    def capacity(self) -> int:
        """Frames held in total."""
        return self.per_env * self.num_envs

    @property
    def nbytes(self) -> int:
        """Host memory used by the stored arrays."""
        arrays = (self.frames, self.actions, self.rewards, self.terminals, self.starts)
        return sum(a.nbytes for a in arrays)

    def __len__(self) -> int:
        return min(self.written, self.per_env) * self.num_envs

    def add(
        self,
        frames_NxHxW: np.ndarray,
        actions_N: np.ndarray,
        rewards_N: np.ndarray,
        terminals_N: np.ndarray,
        starts_N: np.ndarray,
    ) -> None:
        """Store one agent step of every env: the newest frame of obs_t and what followed it."""
        slot = self.written % self.per_env
        self.frames[:, slot] = frames_NxHxW
        self.actions[:, slot] = actions_N
        self.rewards[:, slot] = rewards_N
        self.terminals[:, slot] = terminals_N
        self.starts[:, slot] = starts_N
        self.written += 1

    def _index_range(self) -> tuple[int, int]:
        """Inclusive range of logical indices whose stacks and successors are both stored."""
        oldest = max(0, self.written - self.per_env)
        lowest = oldest + self.frame_stack - 1 if oldest > 0 else 0
        return lowest, self.written - 2

    def _valid(self, env_B: np.ndarray, index_B: np.ndarray) -> np.ndarray:
        slot = index_B % self.per_env
        next_slot = (index_B + 1) % self.per_env
        return self.terminals[env_B, slot] | ~self.starts[env_B, next_slot]

    def _stacks(self, env_B: np.ndarray, index_B: np.ndarray) -> np.ndarray:
        """BxHxWxS stacks ending at logical index_B, zeroed before the latest episode start."""
        offsets = np.arange(-self.frame_stack + 1, 1)
        logical_BxS = np.maximum(index_B[:, None] + offsets[None, :], 0)
        slots_BxS = logical_BxS % self.per_env
        env_BxS = env_B[:, None]
        starts_BxS = self.starts[env_BxS, slots_BxS]
        positions = np.arange(self.frame_stack)[None, :]
        last_start_B = np.max(np.where(starts_BxS, positions, -1), axis=1)
        keep_BxS = positions >= last_start_B[:, None]
        frames_BxSxHxW = self.frames[env_BxS, slots_BxS] * keep_BxS[..., None, None]
        return np.ascontiguousarray(np.moveaxis(frames_BxSxHxW, 1, -1))

    def can_sample(self) -> bool:
        """True once at least one transition can be sampled."""
        lowest, highest = self._index_range()
        return highest >= lowest

    def sample(self, batch_size: int, rng: np.random.Generator) -> FrameBatch:
        """Uniform over valid transitions of all envs (rejection sampling of the rare invalid ones)."""
        lowest, highest = self._index_range()
        if highest < lowest:
            raise ValueError("replay holds no complete transition yet")
        env_B = np.empty(batch_size, np.int64)
        index_B = np.empty(batch_size, np.int64)
        filled = 0
        while filled < batch_size:
            need = batch_size - filled
            env_try = rng.integers(0, self.num_envs, need)
            index_try = rng.integers(lowest, highest + 1, need)
            ok = self._valid(env_try, index_try)
            take = int(ok.sum())
            env_B[filled : filled + take] = env_try[ok]
            index_B[filled : filled + take] = index_try[ok]
            filled += take
        slot_B = index_B % self.per_env
        return FrameBatch(
            obs=self._stacks(env_B, index_B),
            action=self.actions[env_B, slot_B],
            reward=self.rewards[env_B, slot_B],
            next_obs=self._stacks(env_B, index_B + 1),
            discount=(~self.terminals[env_B, slot_B]).astype(np.float32),
        )

    def get_state(self) -> dict[str, np.ndarray]:
        """The filled part of the stored arrays (for np.savez), and the ring size."""
        filled = min(self.written, self.per_env)
        state = {name: getattr(self, name)[:, :filled] for name in self._ARRAYS}
        state["written"] = np.asarray(self.written, np.int64)
        state["per_env"] = np.asarray(self.per_env, np.int64)
        return state

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Inverse of get_state; the ring must have the size it was saved with."""
        if int(state["per_env"]) != self.per_env or state["frames"].shape[0] != self.num_envs:
            raise ConfigError(
                f"the saved replay holds {int(state['per_env'])} frames for each of "
                f"{state['frames'].shape[0]} envs, this config {self.per_env} for {self.num_envs}: "
                "keep config.replay.capacity and config.env.num_envs of the run being resumed"
            )
        for name in self._ARRAYS:
            filled = state[name].shape[1]
            getattr(self, name)[:, :filled] = state[name]
        self.written = int(state["written"])


def env_options(config: Any) -> dict[str, Any]:
    """AtariEnv keyword arguments from config.env (defaults where a field is absent)."""
    env = config.env
    return {
        "noop_max": int(env.get("noop_max", DEFAULT_NOOP_MAX)),
        "frame_skip": int(env.get("frame_skip", FRAME_SKIP)),
        "repeat_action_probability": float(env.get("sticky_action_prob", 0.0)),
        "frame_stack": int(env.get("frame_stack", 4)),
        "max_episode_frames": int(env.get("max_episode_frames", DEFAULT_MAX_EPISODE_FRAMES)),
        "terminal_on_life_loss": bool(env.get("terminal_on_life_loss", True)),
    }


def validate_atari(config: Any) -> None:
    """ConfigErrors for the ALE environment fields and what every Atari host loop needs.

    The loops' own fields (replay, rollouts, chunks) are checked by their Method classes in
    experiments/noisynet/atari_dqn.py and atari_a2c.py.
    """
    try:
        _ale_module()
    except ImportError as error:
        raise ConfigError(f"config.env.name={config.env.name!r} needs ale-py: {error}") from None
    rom_id(config.env.name)
    options = env_options(config)
    check = Checker(config)
    check(options["frame_skip"] >= 2, "env.frame_skip", "an integer >= 2")
    sticky = options["repeat_action_probability"]
    check(0.0 <= sticky < 1.0, "env.sticky_action_prob", "in [0, 1) (0: the paper era)")
    check(
        config.agent.name in ("dqn", "dueling", "a2c"),
        "agent.name",
        "'dqn', 'dueling' or 'a2c' for ALE games",
    )
    check(
        int(config.train.num_seeds) == 1, "train.num_seeds", "1 for ALE: one run per --config.seed"
    )
    check(options["noop_max"] >= 0, "env.noop_max", "an integer >= 0")
    check(options["frame_stack"] >= 1, "env.frame_stack", "an integer >= 1")
    check(
        options["max_episode_frames"] > options["frame_skip"] + options["noop_max"],
        "env.max_episode_frames",
        f"more than {options['frame_skip'] + options['noop_max']} (noop_max + one agent step)",
    )
    check(int(config.env.num_envs) >= 1, "env.num_envs", "an integer >= 1")
    check(eval_episodes(config) > 0, "eval.num_episodes", "an integer > 0")
    check(int(config.train.num_steps) > 0, "train.num_steps", "> 0")


def eval_episodes(config: Any) -> int:
    """Evaluation episodes: config.eval.num_episodes (or train.eval_episodes in older configs)."""
    if "eval" in config and "num_episodes" in config.eval:
        return int(config.eval.num_episodes)
    return int(config.train.get("eval_episodes", 30))
