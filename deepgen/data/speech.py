"""Speech for WaveNet and Parallel WaveNet: 16-bit audio, log-mel conditioning and speaker ids.

The papers: van den Oord et al., "WaveNet: A Generative Model for Raw Audio" (arXiv 1609.03499)
and "Parallel WaveNet: Fast High-Fidelity Speech Synthesis" (arXiv 1711.10433). The teacher
WaveNet models raw 16-bit audio (Parallel WaveNet: a discretised mixture of logistics over the
65,536 values) with local conditioning on log-mel frames, which the model upsamples to the
sample rate (each frame conditions ``hop_length`` samples), and global conditioning on a speaker.

What this module gives, all offline and in memory:

* :func:`read_wav`, :func:`resample`, :func:`quantize_16bit` / :func:`dequantize_16bit`.
* :func:`log_mel_spectrogram` (JAX) with :class:`MelSettings` and :func:`mel_filterbank`.
* :class:`SpeechCorpus` (int16 utterances at one rate, speaker ids) from

  - ``embedded``: one real utterance, CMU Arctic ``arctic_a0007.wav`` (4.0 s, 16 kHz, speaker
    "arctic"; CMU's free licence), read straight out of the PyPI ``pysptk`` 1.0.1 *source*
    tarball, which ``make install`` downloads (never builds) into the venv's share folder;
  - ``wav``: every ``*.wav`` under a folder, one speaker per containing folder;
  - ``ljspeech`` / ``vctk``: TFDS datasets prepared in array_record format.

  :func:`load_shared_speech` reads the project's own test speech (``../shared/data/speech``:
  Allison Smith's asterisk prompts, CC BY-SA 3.0, and LibriVox clips, public domain).
* :func:`load_speech`: one split; validation and test are held out per speaker by whole
  utterances with a fixed seed (the single embedded utterance is cut in time instead), so
  held-out audio is never trained on.
* :func:`training_iterator`: resumable random clips {"audio", "mel", "speaker"}.
* :func:`speaker_classification_examples`: balanced labelled clips for a speaker classifier (the
  frozen classifier of Parallel WaveNet's perceptual loss; the paper used a phone recogniser,
  which would need phone labels that no offline data here has).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import io
import math
import os
import sys
import tarfile
import wave
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import jax
import jax.numpy as jnp
import numpy as np

from deepgen.core.errors import ConfigError, DataError
from deepgen.data import sources
from deepgen.data.pipeline import EpochIterator

SPLITS = ("train", "validation", "test")
SOURCES = ("auto", "ljspeech", "vctk", "wav", "embedded")

DEFAULT_SAMPLE_RATE = 16000
DEFAULT_HELDOUT_FRACTION = 0.05
# Fixed seed of every split this module carves out itself (never change: splits would move).
SPLIT_SEED = 20240611

# 16-bit audio: integer v in [-32768, 32767] has bin centre v / 32768 in [-1, 1).
INT16_SCALE = 32768
INT16_MIN, INT16_MAX = -32768, 32767

# log(max(mel, MEL_FLOOR)), as Tacotron 2 / WaveGlow / HiFi-GAN (dynamic_range_compression).
MEL_FLOOR = 1e-5
LOG_MEL_FLOOR = float(np.log(np.float32(MEL_FLOOR)))
# Default hop: the power of two nearest to 16 ms (16 kHz: 256, 8 kHz: 128, 22.05 kHz: 256).
DEFAULT_HOP_SECONDS = 0.016
DEFAULT_NUM_MELS = 80
# Frames per jitted call when precomputing an utterance's mel (one compilation per setting).
_MEL_CHUNK_FRAMES = 512

# The embedded utterance: a member of the pysptk source distribution (sdist), read with tarfile.
PYSPTK_VERSION = "1.0.1"
EMBEDDED_SDIST_NAME = f"pysptk-{PYSPTK_VERSION}.tar.gz"
EMBEDDED_MEMBER = f"pysptk-{PYSPTK_VERSION}/pysptk/example_audio_data/arctic_a0007.wav"
EMBEDDED_SPEAKER = "arctic"
EMBEDDED_SDIST_DIR = os.path.join(sys.prefix, "share", "deepgen", "sdists")

# The project's shared test speech, next to the repository (absent on a user's machine).
SHARED_SPEECH_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "speech"
SHARED_SPEAKERS = {"allison_8k": "allison", "librivox_16k": "librivox"}

# The rate of the "speech" feature of each TFDS dataset (tfds 4.9: ljspeech 1.1.1, vctk mic1).
TFDS_SAMPLE_RATES = {"ljspeech": 22050, "vctk": 48000}

_CONVERT_HINT = "convert it to 16-bit PCM, e.g. `sox IN -b 16 -e signed-integer OUT.wav`"


# ----------------------------------------------------------------------------------------------
# WAV files, resampling and 16-bit quantisation
# ----------------------------------------------------------------------------------------------


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Reads a PCM WAV file: (float32 samples_N in [-1, 1), channels averaged; sample rate)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"WAV file {path} does not exist; check data.dir and the file name")
    try:
        with open(path, "rb") as wav_file:
            return _read_wav_stream(wav_file, path)
    except OSError as err:
        raise DataError(
            f"WAV file {path} cannot be read ({type(err).__name__}: {err}); check its permissions"
        ) from err


def _read_wav_stream(stream: BinaryIO, name: str) -> tuple[np.ndarray, int]:
    """Decodes 8/16/24/32-bit integer PCM from an open binary stream (name is for messages)."""
    try:
        with wave.open(stream, "rb") as wav_file:
            num_channels = wav_file.getnchannels()
            sample_width = wav_file.getsampwidth()
            rate = wav_file.getframerate()
            num_frames = wav_file.getnframes()
            raw = wav_file.readframes(num_frames)
    except (wave.Error, EOFError, ValueError) as err:
        raise DataError(
            f"WAV file {name} is not a readable integer-PCM WAV file ({type(err).__name__}: "
            f"{sources.first_line(err)}); {_CONVERT_HINT}"
        ) from err
    if rate <= 0 or num_channels <= 0:
        raise DataError(
            f"WAV file {name} has sample rate {rate} and {num_channels} channels in its header; "
            "re-export it"
        )
    frame_bytes = num_channels * sample_width
    if len(raw) < num_frames * frame_bytes:
        raise DataError(
            f"WAV file {name} is truncated ({len(raw)} of {num_frames * frame_bytes} data "
            "bytes); re-export or replace it"
        )
    if sample_width == 1:  # unsigned, 128 is zero
        values = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / np.float32(128.0)
    elif sample_width == 2:
        values = np.frombuffer(raw, "<i2").astype(np.float32) / np.float32(INT16_SCALE)
    elif sample_width == 3:  # little-endian 24-bit, sign-extended through the top byte
        triples = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        packed = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        values = ((packed << 8) >> 8).astype(np.float32) / np.float32(1 << 23)
    elif sample_width == 4:  # float32 cannot hold every 32-bit value: keep the top below 1
        values = (np.frombuffer(raw, "<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
        values = np.minimum(values, np.nextafter(np.float32(1.0), np.float32(0.0)))
    else:
        raise DataError(
            f"WAV file {name} has {8 * sample_width}-bit samples; {_CONVERT_HINT}"
        )  # pragma: no cover - the wave module rejects other widths first
    samples_N = values.reshape(num_frames, num_channels).mean(axis=1, dtype=np.float32)
    return samples_N, int(rate)


def _check_rate(option: str, rate: Any) -> int:
    """A positive integer sample rate, else a one-line ConfigError naming the option."""
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or rate <= 0:
        raise ConfigError(f"{option}={rate!r} is not a sample rate; use a positive integer in Hz")
    return int(rate)


def resample(samples_N: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """float32 samples at to_rate (scipy.signal.resample_poly); an exact copy when rates match."""
    from_rate = _check_rate("from_rate", from_rate)
    to_rate = _check_rate("to_rate", to_rate)
    samples_N = np.asarray(samples_N, dtype=np.float32)
    if from_rate == to_rate:
        return samples_N.copy()
    from scipy import signal  # imported here: ~1 s, and only needed when rates differ

    divisor = math.gcd(from_rate, to_rate)
    up, down = to_rate // divisor, from_rate // divisor
    return signal.resample_poly(samples_N, up, down, axis=-1).astype(np.float32)


def quantize_16bit(x: Any) -> Any:
    """Amplitudes to int32 16-bit values v = round(32768 x), clipped to [-32768, 32767].

    The bin centres are v / 32768, so the 65,536 bins of width 1/32768 tile [-1, 1); x >= 1 maps
    to 32767 and x <= -1 to -32768 (the end bins of a discretised logistic mixture extend to
    +-infinity, as in PixelCNN++). Works on numpy arrays and, inside jit, on JAX arrays.
    """
    xp = jnp if isinstance(x, jax.Array) else np
    scaled = xp.round(xp.asarray(x, dtype=xp.float32) * xp.float32(INT16_SCALE))
    return xp.clip(scaled, INT16_MIN, INT16_MAX).astype(xp.int32)


def dequantize_16bit(v: Any) -> Any:
    """16-bit integer values to their float32 bin centres v / 32768 (numpy or JAX)."""
    xp = jnp if isinstance(v, jax.Array) else np
    return xp.asarray(v, dtype=xp.float32) / xp.float32(INT16_SCALE)


def _to_int16(samples_N: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """float samples at from_rate to int16 16-bit values at to_rate."""
    return quantize_16bit(resample(samples_N, from_rate, to_rate)).astype(np.int16)


def _as_amplitudes(samples: Any) -> Any:
    """Integer arrays are 16-bit values (dequantised); float arrays are amplitudes, as float32."""
    dtype = samples.dtype if hasattr(samples, "dtype") else np.asarray(samples).dtype
    if jnp.issubdtype(dtype, jnp.integer):
        return dequantize_16bit(samples)
    xp = jnp if isinstance(samples, jax.Array) else np
    return xp.asarray(samples, dtype=xp.float32)


# ----------------------------------------------------------------------------------------------
# Log-mel spectrogram
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MelSettings:
    """Log-mel frames: hop_length samples per frame, Hann window of frame_length, Slaney mels.

    Frame f is centred on sample f * hop_length, i.e. it covers samples
    [f * hop - frame_length // 2, f * hop - frame_length // 2 + frame_length) of the signal
    reflect-padded by frame_length // 2 on both sides (torch.stft / librosa center=True with
    reflect padding), and it conditions the hop samples [f * hop, (f + 1) * hop). A signal of N
    samples has N // hop frames (the trailing N % hop samples get none).
    """

    sample_rate: int
    frame_length: int
    hop_length: int
    num_mels: int = DEFAULT_NUM_MELS
    fmin: float = 0.0
    fmax: float | None = None  # None: the Nyquist frequency, sample_rate / 2

    def __post_init__(self) -> None:
        _check_rate("sample_rate", self.sample_rate)
        for option in ("frame_length", "hop_length", "num_mels"):
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
                raise ConfigError(f"{option}={value!r} must be a positive integer")
        if self.hop_length > self.frame_length:
            raise ConfigError(
                f"hop_length={self.hop_length} is longer than frame_length={self.frame_length}; "
                "samples between frames would be ignored: use hop_length <= frame_length"
            )
        if not 0.0 <= self.fmin < self.upper_hz <= self.sample_rate / 2:
            raise ConfigError(
                f"mel band fmin={self.fmin}, fmax={self.fmax} is not within 0 <= fmin < fmax <= "
                f"{self.sample_rate / 2} (the Nyquist frequency of {self.sample_rate} Hz)"
            )

    @classmethod
    def for_rate(cls, sample_rate: int, **overrides: Any) -> MelSettings:
        """The defaults: hop = power of two nearest 16 ms, frame = 4 hops, 80 mels, 0 Hz-Nyquist."""
        sample_rate = _check_rate("sample_rate", sample_rate)
        hop = 2 ** round(math.log2(sample_rate * DEFAULT_HOP_SECONDS))
        fields = {"sample_rate": sample_rate, "frame_length": 4 * hop, "hop_length": hop}
        return cls(**(fields | overrides))

    @property
    def upper_hz(self) -> float:
        """fmax, with None resolved to the Nyquist frequency."""
        return float(self.sample_rate / 2 if self.fmax is None else self.fmax)

    @property
    def num_bins(self) -> int:
        """Frequency bins of the rfft of one frame."""
        return self.frame_length // 2 + 1

    def num_frames(self, num_samples: int) -> int:
        """Frames of a signal of num_samples samples: num_samples // hop_length."""
        return num_samples // self.hop_length


# Slaney's mel scale (Auditory Toolbox; librosa's default, htk=False): linear below 1 kHz at
# 200/3 Hz per mel, logarithmic above with 27 mels per factor 6.4.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_LOG_START_HZ = 1000.0
_SLANEY_LOG_START_MEL = _SLANEY_LOG_START_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel(hz: Any) -> np.ndarray:
    """Slaney mel value of frequencies in Hz (float64)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _SLANEY_HZ_PER_MEL
    logarithmic = _SLANEY_LOG_START_MEL + np.log(np.maximum(hz, 1e-10) / _SLANEY_LOG_START_HZ) / (
        _SLANEY_LOG_STEP
    )
    return np.where(hz >= _SLANEY_LOG_START_HZ, logarithmic, linear)


def mel_to_hz(mel: Any) -> np.ndarray:
    """Frequencies in Hz of Slaney mel values (float64)."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _SLANEY_HZ_PER_MEL
    logarithmic = _SLANEY_LOG_START_HZ * np.exp(_SLANEY_LOG_STEP * (mel - _SLANEY_LOG_START_MEL))
    return np.where(mel >= _SLANEY_LOG_START_MEL, logarithmic, linear)


def mel_band_edges_hz(settings: MelSettings) -> np.ndarray:
    """The num_mels + 2 corner frequencies: band m rises from edge m, peaks at m+1, ends at m+2."""
    low, high = hz_to_mel([settings.fmin, settings.upper_hz])
    return mel_to_hz(np.linspace(low, high, settings.num_mels + 2))


@functools.lru_cache(maxsize=16)
def _filterbank(settings: MelSettings) -> np.ndarray:
    """Cached read-only filterbank_MxK of settings."""
    edges = mel_band_edges_hz(settings)
    bin_hz = np.fft.rfftfreq(settings.frame_length, d=1.0 / settings.sample_rate)
    rising = (bin_hz[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    falling = (edges[2:, None] - bin_hz[None, :]) / np.diff(edges)[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # Slaney norm: equal area per band
    filterbank_MxK = weights.astype(np.float32)
    filterbank_MxK.flags.writeable = False
    return filterbank_MxK


def mel_filterbank(settings: MelSettings) -> np.ndarray:
    """Slaney-style filterbank num_mels x (frame_length // 2 + 1), as librosa.filters.mel.

    Triangles on the Slaney mel scale between mel_band_edges_hz, each scaled to unit area in Hz
    (norm="slaney"), float32; the same numbers as librosa.filters.mel(htk=False, norm="slaney").
    """
    return _filterbank(settings).copy()


def hann_window(frame_length: int) -> np.ndarray:
    """The periodic Hann window 0.5 - 0.5 cos(2 pi n / W) (torch.hann_window, scipy 'hann')."""
    n = np.arange(frame_length, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / frame_length)).astype(np.float32)


def _log_mel_of_frames(frames_xW: jax.Array, settings: MelSettings) -> jax.Array:
    """log(max(mel filterbank . |rfft(Hann * frame)|, 1e-5)) of every frame: ... x num_mels."""
    window_W = jnp.asarray(hann_window(settings.frame_length))
    filterbank_MxK = jnp.asarray(_filterbank(settings))
    magnitude_xK = jnp.abs(jnp.fft.rfft(frames_xW * window_W, axis=-1))
    # HIGHEST: float32 products on every backend (GPUs and TPUs default to TF32 / bfloat16).
    mel_xM = jnp.einsum(
        "...k,mk->...m", magnitude_xK, filterbank_MxK, precision=jax.lax.Precision.HIGHEST
    )
    return jnp.log(jnp.maximum(mel_xM, MEL_FLOOR))


_frames_log_mel = jax.jit(_log_mel_of_frames, static_argnames=("settings",))


def _frame_starts(num_frames: int, settings: MelSettings) -> np.ndarray:
    """Index of every frame's samples in the padded signal: num_frames x frame_length."""
    return (np.arange(num_frames) * settings.hop_length)[:, None] + np.arange(
        settings.frame_length
    )[None, :]


@functools.partial(jax.jit, static_argnames=("settings",))
def _log_mel_jit(samples_BxN: jax.Array, settings: MelSettings) -> jax.Array:
    """Reflect-pads, frames and transforms a batch of equal-length signals."""
    half = settings.frame_length // 2
    padded_BxP = jnp.pad(samples_BxN, ((0, 0), (half, half)), mode="reflect")
    frame_index_FxW = _frame_starts(settings.num_frames(samples_BxN.shape[-1]), settings)
    return _log_mel_of_frames(padded_BxP[:, frame_index_FxW], settings)


def log_mel_spectrogram(
    samples_BxN: Any,
    *,
    sample_rate: int,
    frame_length: int | None = None,
    hop_length: int | None = None,
    num_mels: int = DEFAULT_NUM_MELS,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> jax.Array:
    """Log-mel frames B x (N // hop) x num_mels of float amplitudes (or 16-bit integer values).

    frame_length and hop_length default to MelSettings.for_rate(sample_rate); see MelSettings
    for the frame alignment. Magnitude (not power) spectra, as Tacotron 2 / WaveGlow / HiFi-GAN.
    """
    defaults = MelSettings.for_rate(sample_rate)
    settings = MelSettings(
        sample_rate=sample_rate,
        frame_length=defaults.frame_length if frame_length is None else frame_length,
        hop_length=defaults.hop_length if hop_length is None else hop_length,
        num_mels=num_mels,
        fmin=fmin,
        fmax=fmax,
    )
    return log_mel_with(settings, samples_BxN)


def log_mel_with(settings: MelSettings, samples_BxN: Any) -> jax.Array:
    """log_mel_spectrogram with a MelSettings: B x (N // hop) x num_mels (any leading axes)."""
    samples = _as_amplitudes(samples_BxN)
    leading, num_samples = samples.shape[:-1], samples.shape[-1]
    num_frames = settings.num_frames(num_samples)
    if num_frames == 0:
        return jnp.zeros((*leading, 0, settings.num_mels), jnp.float32)
    flat_BxN = jnp.reshape(jnp.asarray(samples), (-1, num_samples))
    log_mel = _log_mel_jit(flat_BxN, settings)
    return jnp.reshape(log_mel, (*leading, num_frames, settings.num_mels))


def utterance_log_mel(samples_N: Any, settings: MelSettings) -> np.ndarray:
    """The log-mel frames (N // hop) x num_mels of one utterance, as numpy.

    The same numbers as log_mel_with(settings, samples_N[None])[0], computed in fixed chunks of
    frames so that utterances of any length share one compilation.
    """
    samples_N = np.asarray(_as_amplitudes(np.asarray(samples_N)), dtype=np.float32)
    num_frames = settings.num_frames(samples_N.shape[0])
    log_mel_FxM = np.empty((num_frames, settings.num_mels), np.float32)
    if num_frames == 0:
        return log_mel_FxM
    half = settings.frame_length // 2
    padded_P = np.pad(samples_N, (half, half), mode="reflect")
    chunk_index_CxW = _frame_starts(_MEL_CHUNK_FRAMES, settings)
    for first in range(0, num_frames, _MEL_CHUNK_FRAMES):
        count = min(_MEL_CHUNK_FRAMES, num_frames - first)
        index_CxW = np.minimum(chunk_index_CxW + first * settings.hop_length, len(padded_P) - 1)
        chunk = _frames_log_mel(jnp.asarray(padded_P[index_CxW]), settings)
        log_mel_FxM[first : first + count] = np.asarray(chunk)[:count]
    return log_mel_FxM


# ----------------------------------------------------------------------------------------------
# Corpora
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class SpeechCorpus:
    """Utterances (int16 16-bit values at sample_rate), their speaker ids, names, and provenance.

    speakers: every speaker's name; speaker_ids index it. Held-out splits keep the full list,
    so an id means the same speaker in every split.
    """

    utterances: tuple[np.ndarray, ...]
    speaker_ids: np.ndarray  # int32, one per utterance
    names: tuple[str, ...]
    speakers: tuple[str, ...]
    sample_rate: int
    source: str

    def __post_init__(self) -> None:
        if not len(self.utterances) == len(self.speaker_ids) == len(self.names):
            raise ValueError(
                f"{len(self.utterances)} utterances, {len(self.speaker_ids)} speaker ids and "
                f"{len(self.names)} names: need one of each per utterance"
            )
        ids = np.asarray(self.speaker_ids)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.speakers)):
            raise ValueError(f"speaker ids must lie in [0, {len(self.speakers)})")

    @property
    def num_utterances(self) -> int:
        """How many utterances there are."""
        return len(self.utterances)

    @property
    def lengths(self) -> np.ndarray:
        """Samples per utterance, int64."""
        return np.array([len(u) for u in self.utterances], dtype=np.int64)

    @property
    def num_samples(self) -> int:
        """Samples in all utterances together."""
        return int(self.lengths.sum())

    @property
    def duration_s(self) -> float:
        """Seconds of audio in all utterances together."""
        return self.num_samples / self.sample_rate

    def subset(self, indices: Sequence[int], note: str) -> SpeechCorpus:
        """The utterances at indices (same speakers list), with note appended to source."""
        rows = [int(i) for i in indices]
        return SpeechCorpus(
            utterances=tuple(self.utterances[i] for i in rows),
            speaker_ids=np.asarray(self.speaker_ids, np.int32)[rows],
            names=tuple(self.names[i] for i in rows),
            speakers=self.speakers,
            sample_rate=self.sample_rate,
            source=f"{self.source}, {note}" if note else self.source,
        )


def _build_corpus(
    items: Sequence[tuple[str, str, np.ndarray]], sample_rate: int, source: str
) -> SpeechCorpus:
    """A corpus of (speaker name, utterance name, int16 samples) items; ids by sorted name."""
    speakers = tuple(sorted({speaker for speaker, _, _ in items}))
    id_of = {speaker: i for i, speaker in enumerate(speakers)}
    return SpeechCorpus(
        utterances=tuple(samples for _, _, samples in items),
        speaker_ids=np.array([id_of[speaker] for speaker, _, _ in items], dtype=np.int32),
        names=tuple(name for _, name, _ in items),
        speakers=speakers,
        sample_rate=sample_rate,
        source=source,
    )


def _wav_files(data_dir: str) -> Iterator[Path]:
    """Every *.wav (any case) under data_dir, recursively, in sorted order."""
    for path in sorted(Path(data_dir).rglob("*")):
        if path.suffix.lower() == ".wav" and path.is_file():
            yield path


def _has_wav_files(data_dir: str) -> bool:
    """Whether data_dir holds any *.wav file (at any depth)."""
    return any(p.suffix.lower() == ".wav" and p.is_file() for p in Path(data_dir).rglob("*"))


def _read_utterance(path: Path | str, sample_rate: int) -> np.ndarray:
    """One WAV file as int16 values at sample_rate; empty files are a DataError."""
    samples_N, rate = read_wav(path)
    if samples_N.size == 0:
        raise DataError(f"WAV file {path} has no samples; remove it or replace it")
    return _to_int16(samples_N, rate, sample_rate)


def load_wav_folder(
    data_dir: str | os.PathLike,
    *,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    speaker_names: Mapping[str, str] | None = None,
) -> SpeechCorpus:
    """Every *.wav under data_dir (recursively), resampled to sample_rate.

    The speaker of a file is the name of the folder that contains it (files directly in data_dir:
    "default"), renamed through speaker_names when it is a key there. Folders of the same name at
    different depths are one speaker. Utterance names are paths relative to data_dir.
    """
    sample_rate = _check_rate("sample_rate", sample_rate)
    data_dir = os.fspath(data_dir)
    sources.require_existing_dir(data_dir, "*.wav files (one subfolder per speaker)")
    root = Path(data_dir)
    items = []
    for path in _wav_files(data_dir):
        folder = path.parent.name if path.parent != root else "default"
        speaker = (speaker_names or {}).get(folder, folder)
        name = path.relative_to(root).with_suffix("").as_posix()
        items.append((speaker, name, _read_utterance(path, sample_rate)))
    if not items:
        raise DataError(
            f"data.dir={data_dir} has no *.wav files; put 16-bit PCM WAV files there (one "
            "subfolder per speaker) or leave data.dir empty to use the embedded utterance"
        )
    return _build_corpus(items, sample_rate, f"WAV files in {data_dir} at {sample_rate} Hz")


def load_shared_speech(
    shared_dir: str | os.PathLike | None = None, *, sample_rate: int = DEFAULT_SAMPLE_RATE
) -> SpeechCorpus:
    """The project's shared test speech: allison_8k/ as speaker "allison", librivox_16k/ "librivox".

    shared_dir defaults to ../shared/data/speech next to the repository. allison_8k holds 8 kHz
    audio: at 16 kHz it has nothing above 4 kHz.
    """
    shared_dir = os.fspath(SHARED_SPEECH_DIR if shared_dir is None else shared_dir)
    missing = [
        name for name in SHARED_SPEAKERS if not os.path.isdir(os.path.join(shared_dir, name))
    ]
    if missing:
        raise DataError(
            f"shared speech folder {shared_dir} lacks {', '.join(m + '/' for m in missing)}; it "
            "exists only on the project's build machines: use load_wav_folder or load_embedded"
        )
    corpus = load_wav_folder(shared_dir, sample_rate=sample_rate, speaker_names=SHARED_SPEAKERS)
    return dataclasses.replace(corpus, source=f"shared speech {shared_dir} at {sample_rate} Hz")


def embedded_sdist_path() -> str:
    """Where the embedded utterance's pysptk source tarball is expected."""
    return os.path.join(EMBEDDED_SDIST_DIR, EMBEDDED_SDIST_NAME)


def embedded_install_command() -> str:
    """The exact command that puts the pysptk source tarball where load_embedded reads it."""
    return (
        f"{sys.executable} -m pip download --no-deps --no-binary pysptk --dest "
        f"{EMBEDDED_SDIST_DIR} pysptk=={PYSPTK_VERSION}"
    )


@functools.lru_cache(maxsize=2)
def _read_embedded(path: str) -> tuple[np.ndarray, int]:
    """The arctic utterance's float samples and rate, read once per process from the tarball."""
    hint = f"run `{embedded_install_command()}` (or `make install`)"
    try:
        with tarfile.open(path, "r:gz") as archive:
            member = archive.extractfile(EMBEDDED_MEMBER)
            if member is None:
                raise KeyError(EMBEDDED_MEMBER)
            data = member.read()
    except KeyError as err:
        raise DataError(
            f"pysptk source tarball {path} has no {EMBEDDED_MEMBER}; delete it and {hint}"
        ) from err
    except (OSError, EOFError, tarfile.TarError) as err:
        raise DataError(
            f"pysptk source tarball {path} is unreadable ({type(err).__name__}: "
            f"{sources.first_line(err)}); delete it and {hint}"
        ) from err
    samples_N, rate = _read_wav_stream(io.BytesIO(data), f"{path}:{EMBEDDED_MEMBER}")
    samples_N.flags.writeable = False
    return samples_N, rate


def load_embedded(*, sample_rate: int = DEFAULT_SAMPLE_RATE) -> SpeechCorpus:
    """The embedded utterance: CMU Arctic arctic_a0007.wav (4.0 s, speaker "arctic")."""
    sample_rate = _check_rate("sample_rate", sample_rate)
    path = embedded_sdist_path()
    if not os.path.isfile(path):
        raise DataError(
            f"the embedded speech (CMU Arctic arctic_a0007.wav) is read from the pysptk "
            f"{PYSPTK_VERSION} source tarball, not found at {path}; run "
            f"`{embedded_install_command()}` (or `make install`), or set data.dir to a folder "
            "of WAV files"
        )
    samples_N, rate = _read_embedded(path)
    utterance = _to_int16(samples_N, rate, sample_rate)
    source = f"embedded CMU Arctic arctic_a0007.wav ({EMBEDDED_SDIST_NAME}) at {sample_rate} Hz"
    return _build_corpus([(EMBEDDED_SPEAKER, "arctic_a0007", utterance)], sample_rate, source)


# ----------------------------------------------------------------------------------------------
# Held-out splits
# ----------------------------------------------------------------------------------------------


def _check_fraction(heldout_fraction: Any) -> float:
    """A held-out fraction in [0, 0.5), else a one-line ConfigError."""
    if not isinstance(heldout_fraction, float | int) or not 0.0 <= heldout_fraction < 0.5:
        raise ConfigError(
            f"heldout_fraction={heldout_fraction!r} must lie in [0, 0.5): the share of each "
            "speaker's utterances held out for validation, and again for test"
        )
    return float(heldout_fraction)


def heldout_indices(
    speaker_ids_U: np.ndarray, split: str, *, heldout_fraction: float, seed: int
) -> np.ndarray:
    """Sorted utterance indices of split, carved per speaker by whole utterances.

    Each speaker with n utterances gives k = min(ceil(fraction n), (n - 1) // 2) randomly chosen
    (fixed seed) utterances to validation, k others to test and the rest to train, so a speaker
    with fewer than 3 utterances is train only.
    """
    sources.check_choice("split", split, SPLITS)
    fraction = _check_fraction(heldout_fraction)
    rng = np.random.default_rng(int(seed))
    speaker_ids_U = np.asarray(speaker_ids_U)
    chosen = []
    for speaker in np.unique(speaker_ids_U):
        mine = rng.permutation(np.flatnonzero(speaker_ids_U == speaker))
        count = min(math.ceil(fraction * len(mine)), (len(mine) - 1) // 2)
        parts = {
            "validation": mine[:count],
            "test": mine[count : 2 * count],
            "train": mine[2 * count :],
        }
        chosen.append(parts[split])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def split_corpus(
    corpus: SpeechCorpus,
    split: str,
    *,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    seed: int = SPLIT_SEED,
) -> SpeechCorpus:
    """One split of a corpus by whole utterances per speaker (heldout_indices); never empty."""
    rows = heldout_indices(corpus.speaker_ids, split, heldout_fraction=heldout_fraction, seed=seed)
    if rows.size == 0:
        raise DataError(
            f"{corpus.source} has too few utterances to hold out a {split} split (a speaker needs "
            f"at least 3, and heldout_fraction={heldout_fraction} must be > 0); add utterances "
            "or use split='train'"
        )
    return corpus.subset(rows, f"{split} split (seed {seed}, {heldout_fraction:g} held out)")


def _split_in_time(corpus: SpeechCorpus, split: str, heldout_fraction: float) -> SpeechCorpus:
    """A single-utterance corpus cut in time: train, then validation, then test at the end."""
    fraction = _check_fraction(heldout_fraction)
    if fraction == 0.0 and split != "train":
        raise DataError(
            f"heldout_fraction=0 leaves no {split} split of {corpus.source}; use a fraction > 0"
        )
    (utterance,) = corpus.utterances
    total = len(utterance)
    cuts = [0, round(total * (1 - 2 * fraction)), round(total * (1 - fraction)), total]
    start, stop = {name: (cuts[i], cuts[i + 1]) for i, name in enumerate(SPLITS)}[split]
    return dataclasses.replace(
        corpus,
        utterances=(utterance[start:stop].copy(),),
        names=(f"{corpus.names[0]}[{start}:{stop}]",),
        source=f"{corpus.source}, {split} part samples [{start}, {stop}) of {total}",
    )


# ----------------------------------------------------------------------------------------------
# TFDS ljspeech and vctk (array_record data_source)
# ----------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    """A TFDS string feature (bytes, str or 0-d array) as str."""
    value = value.item() if isinstance(value, np.ndarray) else value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


_TFDS_ALTERNATIVE = "export its audio as WAV files and use source='wav'"


def _tensorflow_available() -> bool:
    """Whether TensorFlow is importable (TFDS audio features need it even to be read)."""
    return importlib.util.find_spec("tensorflow") is not None


def _load_tfds(
    split: str,
    data_dir: str | None,
    *,
    name: str,
    sample_rate: int,
    heldout_fraction: float,
    seed: int,
) -> SpeechCorpus:
    """ljspeech (one speaker) or vctk (speaker feature) from the TFDS train split, held out here.

    ljspeech carves its split before reading, so only that split is read; vctk reads every
    example (the whole corpus is held in memory) to carve per speaker.
    """
    single_speaker = name == "ljspeech"
    if not _tensorflow_available():
        hint = sources.tfds_build_hint(name, data_dir, _TFDS_ALTERNATIVE)
        raise DataError(
            f"reading TFDS {name} needs TensorFlow, which is not installed (the Audio feature of "
            f"tensorflow-datasets imports it): run `pip install tensorflow`; {hint}"
        )

    def select(num_examples: int, where: str) -> np.ndarray:
        del where
        return heldout_indices(
            np.zeros(num_examples, np.int32), split, heldout_fraction=heldout_fraction, seed=seed
        )

    read = sources.load_tfds_split(
        name,
        "train",
        data_dir,
        select=select if single_speaker else None,
        alternative=_TFDS_ALTERNATIVE,
    )
    items = []
    for index, example in enumerate(read.examples):
        try:
            speech = np.asarray(example["speech"])
            utterance_id = _text(example.get("id", f"{name}_{index}"))
            speaker = name if single_speaker else _vctk_speaker_name(example, utterance_id)
        except (KeyError, TypeError, ValueError) as err:
            raise read.error(
                f"has no usable 'speech'/'speaker' features ({type(err).__name__}: "
                f"{sources.first_line(err)})"
            ) from err
        if speech.ndim != 1 or speech.size == 0:
            raise read.error(f"has a 'speech' feature of shape {speech.shape}, expected (N,)")
        if not np.issubdtype(speech.dtype, np.integer):
            raise read.error(f"has a 'speech' feature of dtype {speech.dtype}, expected int16")
        utterance = _to_int16(dequantize_16bit(speech), TFDS_SAMPLE_RATES[name], sample_rate)
        items.append((speaker, utterance_id, utterance))
    corpus = _build_corpus(items, sample_rate, f"TFDS {read.description} at {sample_rate} Hz")
    if single_speaker:
        return dataclasses.replace(
            corpus,
            source=f"{corpus.source}, {split} split (seed {seed}, {heldout_fraction:g} held out)",
        )
    return split_corpus(corpus, split, heldout_fraction=heldout_fraction, seed=seed)


def _vctk_speaker_name(example: Mapping[str, Any], utterance_id: str) -> str:
    """A VCTK speaker's name: the id's prefix ("p225" of "p225_001"), else "speaker<label>"."""
    label = int(np.asarray(example["speaker"]))
    prefix = utterance_id.split("_")[0]
    return prefix if "_" in utterance_id and prefix else f"speaker{label:03d}"


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------


def load_speech(
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    seed: int = SPLIT_SEED,
) -> SpeechCorpus:
    """One split of speech at sample_rate from the embedded utterance, WAV files or TFDS.

    source="auto": the embedded utterance without data_dir; with one, data_dir/ljspeech or
    data_dir/vctk (prepared TFDS) when present, else its *.wav files. validation and test hold
    out heldout_fraction of each speaker's utterances each (split_corpus).
    """
    sources.check_choice("split", split, SPLITS)
    sources.check_choice("source", source, SOURCES)
    sample_rate = _check_rate("sample_rate", sample_rate)
    _check_fraction(heldout_fraction)
    options = {"sample_rate": sample_rate, "heldout_fraction": heldout_fraction, "seed": seed}

    def load_wav(split: str, data_dir: str | None) -> SpeechCorpus:
        corpus = load_wav_folder(str(data_dir), sample_rate=sample_rate)
        return split_corpus(corpus, split, heldout_fraction=heldout_fraction, seed=seed)

    def load_embedded_split(split: str) -> SpeechCorpus:
        return _split_in_time(load_embedded(sample_rate=sample_rate), split, heldout_fraction)

    def tfds(name: str) -> sources.Source:
        return sources.tfds_source(name, functools.partial(_load_tfds, name=name, **options))

    dataset = sources.DatasetSources(
        title="speech",
        splits=SPLITS,
        sources={
            "ljspeech": tfds("ljspeech"),
            "vctk": tfds("vctk"),
            "wav": sources.Source(
                load_wav, "*.wav files (one subfolder per speaker)", found_in=_has_wav_files
            ),
            "embedded": sources.embedded_source(
                load_embedded_split, "the embedded CMU Arctic utterance"
            ),
        },
    )
    return sources.load(dataset, split, data_dir=data_dir, source=source)


# ----------------------------------------------------------------------------------------------
# Training clips and speaker-classification clips
# ----------------------------------------------------------------------------------------------


def _check_positive(option: str, value: Any, minimum: int = 1) -> int:
    """An integer >= minimum, else a one-line ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{option}={value!r} must be an integer >= {minimum}")
    return int(value)


def training_iterator(
    corpus: SpeechCorpus,
    *,
    clip_length: int,
    global_batch_size: int,
    seed: int,
    process_rows: slice | None = None,
    mel: MelSettings | None = None,
    lookahead: int = 0,
) -> EpochIterator:
    """A resumable iterator of random clips: {"audio", "mel", "speaker"} (this process's rows).

    audio: B x clip_length int32 16-bit values; mel: B x (clip_length / hop + lookahead) x
    num_mels float32; speaker: B int32. An utterance is drawn with probability proportional to
    its length (among those of at least clip_length samples), then a start at a multiple of hop
    uniformly, so mel frame j of a clip is frame k + j of its utterance, precomputed once, and
    conditions clip samples [j hop, (j + 1) hop). The lookahead frames after the clip continue
    the utterance; past its last frame they are LOG_MEL_FLOOR (silence). Batch b of epoch e is
    a function of (seed, e, b) only; an epoch is the corpus's length in clips (at least a batch).
    """
    settings = MelSettings.for_rate(corpus.sample_rate) if mel is None else mel
    if settings.sample_rate != corpus.sample_rate:
        raise ConfigError(
            f"mel settings are for {settings.sample_rate} Hz but the corpus is at "
            f"{corpus.sample_rate} Hz; build MelSettings.for_rate({corpus.sample_rate})"
        )
    hop = settings.hop_length
    clip_length = _check_positive("clip_length", clip_length, hop)
    if clip_length % hop:
        raise ConfigError(
            f"clip_length={clip_length} is not a multiple of hop_length={hop}; use e.g. "
            f"{clip_length - clip_length % hop}"
        )
    global_batch_size = _check_positive("global_batch_size", global_batch_size)
    lookahead = _check_positive("lookahead", lookahead, 0)
    clip_frames = clip_length // hop
    frames_U = corpus.lengths // hop
    eligible = np.flatnonzero(frames_U >= clip_frames)
    if eligible.size == 0:
        raise DataError(
            f"no utterance of {corpus.source} has clip_length={clip_length} samples (the longest "
            f"has {int(corpus.lengths.max(initial=0))}); use a shorter clip_length"
        )
    utterances = [np.asarray(corpus.utterances[u]) for u in eligible]
    log_mels = [utterance_log_mel(utterance, settings) for utterance in utterances]
    speaker_ids = np.asarray(corpus.speaker_ids, np.int32)[eligible]
    lengths = corpus.lengths[eligible]
    probabilities = lengths / lengths.sum()
    max_start_frames = frames_U[eligible] - clip_frames
    mel_frames = clip_frames + lookahead

    def make_batch(indices: np.ndarray, rows: slice, rng: np.random.Generator) -> dict:
        batch = len(indices)  # draws for the whole global batch, then keeps this process's rows
        chosen = rng.choice(len(utterances), size=batch, p=probabilities)
        start_frames = rng.integers(0, max_start_frames[chosen] + 1)
        chosen, start_frames = chosen[rows], start_frames[rows]
        audio_BxL = np.empty((len(chosen), clip_length), np.int32)
        mel_BxFxM = np.full((len(chosen), mel_frames, settings.num_mels), LOG_MEL_FLOOR, np.float32)
        for row, (u, k) in enumerate(zip(chosen, start_frames, strict=True)):
            audio_BxL[row] = utterances[u][k * hop : k * hop + clip_length]
            frames = log_mels[u][k : k + mel_frames]
            mel_BxFxM[row, : len(frames)] = frames
        return {"audio": audio_BxL, "mel": mel_BxFxM, "speaker": speaker_ids[chosen]}

    return EpochIterator(
        num_examples=max(int(lengths.sum()) // clip_length, global_batch_size),
        global_batch_size=global_batch_size,
        make_batch=make_batch,
        seed=int(seed),
        process_rows=slice(None) if process_rows is None else process_rows,
        shuffle=False,  # the examples are drawn from the per-batch generator, not by index
    )


def speaker_classification_examples(
    corpus: SpeechCorpus, *, clip_length: int, num_per_speaker: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Balanced labelled clips: (audio_NxL int32 16-bit values, labels_N int32 speaker ids).

    num_per_speaker clips of each speaker, grouped by speaker id in order: an utterance of the
    speaker drawn with probability proportional to its length (among those of at least
    clip_length samples), then a uniformly random start. Every speaker needs one such utterance.
    """
    clip_length = _check_positive("clip_length", clip_length)
    num_per_speaker = _check_positive("num_per_speaker", num_per_speaker)
    rng = np.random.default_rng(int(seed))
    lengths_U = corpus.lengths
    speaker_ids_U = np.asarray(corpus.speaker_ids)
    clips, labels = [], []
    for speaker, speaker_name in enumerate(corpus.speakers):
        mine = np.flatnonzero((speaker_ids_U == speaker) & (lengths_U >= clip_length))
        if mine.size == 0:
            raise DataError(
                f"speaker {speaker_name!r} of {corpus.source} has no utterance of clip_length="
                f"{clip_length} samples; use a shorter clip_length or drop the speaker"
            )
        weights = lengths_U[mine] / lengths_U[mine].sum()
        chosen = rng.choice(mine, size=num_per_speaker, p=weights)
        starts = rng.integers(0, lengths_U[chosen] - clip_length + 1)
        for u, start in zip(chosen, starts, strict=True):
            clips.append(corpus.utterances[u][start : start + clip_length])
        labels.append(np.full(num_per_speaker, speaker, np.int32))
    return np.stack(clips).astype(np.int32), np.concatenate(labels)
