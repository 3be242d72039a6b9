"""The Copy task (Graves et al. 2014) with the length curriculum of the RTRL-approximation papers.

A stream reads a random string of `l` symbols, then a delimiter, then must write the string back
while its input is blank; the loss counts the output part only, in bits per character. The
curriculum (KF-RTRL, Mujika et al. 2018; OK, Benzing et al. 2019; used by SnAp, Menick et al.
2021 Sec. 5) starts at L = 1, samples each string's length uniformly in [max(1, L - spread), L],
and grows L by one when a running average of the loss falls below 0.15 bits per character; the
score is the L reached after a fixed token budget. Everything here is a pure JAX function of an
explicit rng, so episodes can be generated inside a jitted scan and replayed exactly on resume.

Input layout per time step: `num_symbols + 1` channels, one-hot symbol while reading, the last
channel for the delimiter, all zeros while writing and while idle. Episodes of a batch of streams
are synchronised: every stream starts a new string when the episode of 2L + 1 steps ends (a stream
whose string is shorter than L idles, with zero loss weight, until then).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

CURRICULUM_THRESHOLD_BITS = 0.15


class CopyEpisode(NamedTuple):
    """The strings a batch of streams is copying and the position inside the episode."""

    symbols_BxL: jax.Array  # int32 (B, max_length); only the first lengths_B[b] entries are used
    lengths_B: jax.Array  # int32 string length of each stream
    position: jax.Array  # int32 scalar: time step within the episode
    episode_len: jax.Array  # int32 scalar: 2 L + 1 for the curriculum L at the episode start


class Curriculum(NamedTuple):
    """The current curriculum length L and the running average loss (bits/char) at this L."""

    length: jax.Array  # int32 scalar
    average_bits: jax.Array  # float32 scalar


def input_size(num_symbols: int) -> int:
    """Input channels: one per symbol plus the delimiter."""
    return num_symbols + 1


def initial_curriculum(num_symbols: int) -> Curriculum:
    """L = 1 and an average that starts at the loss of uniform guessing, log2(num_symbols)."""
    return Curriculum(jnp.asarray(1, jnp.int32), jnp.asarray(math.log2(num_symbols), jnp.float32))


def update_curriculum(
    curriculum: Curriculum,
    episode_bits: jax.Array,
    *,
    num_symbols: int,
    max_length: int,
    decay: float,
    threshold: float = CURRICULUM_THRESHOLD_BITS,
) -> Curriculum:
    """Fold one episode's loss into the average; grow L by one when the average is below threshold.

    average <- decay * average + (1 - decay) * episode_bits; when average < threshold and
    L < max_length, L grows by one and the average restarts at log2(num_symbols).
    """
    average = decay * curriculum.average_bits + (1.0 - decay) * episode_bits
    grow = (average < threshold) & (curriculum.length < max_length)
    restart = jnp.asarray(math.log2(num_symbols), jnp.float32)
    return Curriculum(
        length=curriculum.length + grow.astype(jnp.int32),
        average_bits=jnp.where(grow, restart, average).astype(jnp.float32),
    )


def sample_lengths(
    rng: jax.Array, curriculum_length: jax.Array, *, batch: int, spread: int
) -> jax.Array:
    """String lengths, uniform in [max(1, L - spread), L], one per stream: int32 (B,)."""
    low = jnp.maximum(1, curriculum_length - spread)
    return jax.random.randint(rng, (batch,), low, curriculum_length + 1, dtype=jnp.int32)


def new_episode(
    rng: jax.Array,
    curriculum_length: jax.Array,
    *,
    batch: int,
    max_length: int,
    num_symbols: int,
    spread: int,
) -> CopyEpisode:
    """Fresh random strings for every stream at the curriculum length L (episode of 2L + 1 steps)."""
    rng_len, rng_sym = jax.random.split(rng)
    return CopyEpisode(
        symbols_BxL=jax.random.randint(rng_sym, (batch, max_length), 0, num_symbols, jnp.int32),
        lengths_B=sample_lengths(rng_len, curriculum_length, batch=batch, spread=spread),
        position=jnp.asarray(0, jnp.int32),
        episode_len=(2 * curriculum_length + 1).astype(jnp.int32),
    )


def episode_token(
    episode: CopyEpisode, *, num_symbols: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The current step of every stream: inputs (B, num_symbols + 1), targets (B,), weights (B,)."""
    p, lengths_B = episode.position, episode.lengths_B
    max_length = episode.symbols_BxL.shape[1]
    batch_index = jnp.arange(lengths_B.shape[0])
    read_symbol_B = episode.symbols_BxL[batch_index, jnp.clip(p, 0, max_length - 1)]
    channel_B = jnp.where(p < lengths_B, read_symbol_B, num_symbols)
    active_B = p <= lengths_B  # reading or delimiter; zeros afterwards
    x_BxI = jax.nn.one_hot(channel_B, num_symbols + 1) * active_B[:, None]
    out_index_B = jnp.clip(p - lengths_B - 1, 0, max_length - 1)
    y_B = episode.symbols_BxL[batch_index, out_index_B]
    weight_B = ((p > lengths_B) & (p <= 2 * lengths_B)).astype(jnp.float32)
    return x_BxI.astype(jnp.float32), y_B, weight_B


def advance(episode: CopyEpisode) -> tuple[CopyEpisode, jax.Array]:
    """Move one step on; also returns whether the episode has just ended (bool scalar)."""
    position = episode.position + 1
    return episode._replace(position=position), position >= episode.episode_len


def copy_example(symbols_L: np.ndarray, *, num_symbols: int) -> tuple[np.ndarray, ...]:
    """One whole example in numpy (a second, loop-free construction used by tests and demos).

    Returns inputs (2l + 1, num_symbols + 1), targets (2l + 1,) and weights (2l + 1,).
    """
    symbols_L = np.asarray(symbols_L, np.int32)
    length = len(symbols_L)
    steps = 2 * length + 1
    inputs = np.zeros((steps, num_symbols + 1), np.float32)
    inputs[np.arange(length), symbols_L] = 1.0
    inputs[length, num_symbols] = 1.0
    targets = np.zeros(steps, np.int32)
    targets[length + 1 :] = symbols_L
    weights = np.zeros(steps, np.float32)
    weights[length + 1 :] = 1.0
    return inputs, targets, weights
