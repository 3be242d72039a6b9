"""Tests of deepgen.data.speech: WAV reading, resampling, 16-bit bins, log-mels, corpora, clips."""

import io
import math
import tarfile
import wave
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.core.errors import ConfigError, DataError
from deepgen.data import sources, speech
from tests.data.loader_checks import assert_one_line_error, tfds_read_failure

SHARED_SPEECH = Path(__file__).resolve().parents[2].parent / "shared/data/speech"
RATE = 8000
SETTINGS_8K = speech.MelSettings.for_rate(RATE)  # frame 512, hop 128, 80 mels, 0-4000 Hz


def _wav_bytes(frames: bytes, *, rate: int, width: int, channels: int = 1) -> bytes:
    """A WAV file's bytes written by the stdlib wave module."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav_file:
        wav_file.setnchannels(channels)
        wav_file.setsampwidth(width)
        wav_file.setframerate(rate)
        wav_file.writeframes(frames)
    return buffer.getvalue()


def _write_wav(path: Path, values: np.ndarray, rate: int = RATE) -> Path:
    """Writes int16 values (N, or N x channels) as a 16-bit PCM WAV file."""
    values = np.asarray(values, dtype="<i2")
    channels = 1 if values.ndim == 1 else values.shape[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_wav_bytes(values.tobytes(), rate=rate, width=2, channels=channels))
    return path


def _tone(frequency: float, rate: int, num_samples: int, amplitude: float = 0.5) -> np.ndarray:
    """A float32 sine."""
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(num_samples) / rate)).astype(
        np.float32
    )


def _synthetic_corpus(lengths: tuple[int, ...] = (9000, 20000, 6400, 12345)) -> speech.SpeechCorpus:
    """Noisy chirps, alternately of speaker 0 and 1, at 8 kHz."""
    rng = np.random.default_rng(0)
    utterances = []
    for i, length in enumerate(lengths):
        t = np.arange(length) / RATE
        chirp = 0.4 * np.sin(2 * np.pi * (200 + 300 * i + 400 * t) * t)
        noisy = chirp + 0.05 * rng.standard_normal(length)
        utterances.append(speech.quantize_16bit(noisy).astype(np.int16))
    return speech.SpeechCorpus(
        utterances=tuple(utterances),
        speaker_ids=np.arange(len(lengths), dtype=np.int32) % 2,
        names=tuple(f"u{i}" for i in range(len(lengths))),
        speakers=("a", "b"),
        sample_rate=RATE,
        source="synthetic",
    )


def _find_clip(corpus: speech.SpeechCorpus, clip: np.ndarray) -> tuple[int, int] | None:
    """(utterance, start) of the first place clip occurs in corpus, or None."""
    for u, utterance in enumerate(corpus.utterances):
        candidates = np.flatnonzero(utterance[: len(utterance) - len(clip) + 1] == clip[0])
        for start in candidates:
            if np.array_equal(utterance[start : start + len(clip)], clip):
                return u, int(start)
    return None


# ----------------------------------------------------------------------------------------------
# WAV files
# ----------------------------------------------------------------------------------------------


def test_read_wav_16bit_mono_round_trip(tmp_path: Path) -> None:
    values = np.array([0, 1, -1, 32767, -32768, 1000, -12345], dtype=np.int16)
    samples, rate = speech.read_wav(_write_wav(tmp_path / "x.wav", values))
    assert rate == RATE and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, values / 32768.0)
    np.testing.assert_array_equal(speech.quantize_16bit(samples), values)


def test_read_wav_averages_stereo_channels(tmp_path: Path) -> None:
    left = np.array([100, -200, 32767, 0], dtype=np.int16)
    right = np.array([300, 200, 32767, -32768], dtype=np.int16)
    samples, _ = speech.read_wav(_write_wav(tmp_path / "s.wav", np.stack([left, right], 1)))
    np.testing.assert_allclose(samples, (left / 32768.0 + right / 32768.0) / 2, rtol=0, atol=1e-7)


_INT32_TOP_BELOW_ONE = float(np.nextafter(np.float32(1), np.float32(0)))


@pytest.mark.parametrize(
    ("width", "raw", "expected"),
    [
        (1, bytes([128, 0, 255, 192]), [0.0, -1.0, 127 / 128, 0.5]),  # unsigned, 128 is zero
        (  # -2^23, 2^23 - 1, -1, 2^22 as little-endian 24-bit
            3,
            b"\x00\x00\x80" + b"\xff\xff\x7f" + b"\xff\xff\xff" + b"\x00\x00\x40",
            [-1.0, (2**23 - 1) / 2**23, -1 / 2**23, 0.5],
        ),
        (
            4,
            np.array([-(2**31), 2**31 - 1, 2**30], "<i4").tobytes(),
            [-1, _INT32_TOP_BELOW_ONE, 0.5],
        ),
    ],
)
def test_read_wav_other_integer_widths(
    tmp_path: Path, width: int, raw: bytes, expected: list[float]
) -> None:
    path = tmp_path / f"w{width}.wav"
    path.write_bytes(_wav_bytes(raw, rate=16000, width=width))
    samples, rate = speech.read_wav(path)
    assert rate == 16000 and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, np.asarray(expected, np.float32))
    assert np.all(samples >= -1.0) and np.all(samples < 1.0)


def test_unreadable_and_missing_wav_are_one_line_data_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(DataError) as caught:
        speech.read_wav(bad)
    assert_one_line_error(caught.value, str(bad), "16-bit PCM")
    with pytest.raises(DataError) as caught:
        speech.read_wav(tmp_path / "none.wav")
    assert_one_line_error(caught.value, "does not exist")


# ----------------------------------------------------------------------------------------------
# Resampling and 16-bit bins
# ----------------------------------------------------------------------------------------------


def test_resample_is_identity_at_equal_rates() -> None:
    samples = np.random.default_rng(1).uniform(-1, 1, 1001).astype(np.float32)
    same = speech.resample(samples, 16000, 16000)
    np.testing.assert_array_equal(same, samples)
    assert same is not samples


def test_resample_keeps_a_tone_and_the_length_ratio() -> None:
    tone = _tone(440.0, 16000, 16000)
    down = speech.resample(tone, 16000, 8000)
    assert down.shape == (8000,) and down.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(down))
    assert np.fft.rfftfreq(8000, 1 / 8000)[np.argmax(spectrum)] == pytest.approx(440.0, abs=1.0)
    assert speech.resample(tone[:4410], 22050, 16000).shape == (math.ceil(4410 * 320 / 441),)
    with pytest.raises(ConfigError, match="to_rate=0"):
        speech.resample(tone, 16000, 0)


def test_quantize_round_trip_and_clipping() -> None:
    values = np.arange(-32768, 32768, dtype=np.int32)
    centres = speech.dequantize_16bit(values)
    assert centres.dtype == np.float32 and centres.min() == -1.0 and centres.max() < 1.0
    np.testing.assert_array_equal(speech.quantize_16bit(centres), values)
    clipped = speech.quantize_16bit(np.array([-3.0, -1.0, 1.0, 2.0, 0.49 / 32768, 0.51 / 32768]))
    np.testing.assert_array_equal(clipped, [-32768, -32768, 32767, 32767, 0, 1])
    assert clipped.dtype == np.int32
    on_device = speech.quantize_16bit(jnp.asarray([1.5, -0.5]))
    np.testing.assert_array_equal(np.asarray(on_device), [32767, -16384])


# ----------------------------------------------------------------------------------------------
# Log-mel spectrogram
# ----------------------------------------------------------------------------------------------


def test_filterbank_rows_are_nonnegative_nonempty_and_centres_increase() -> None:
    for settings in (SETTINGS_8K, speech.MelSettings.for_rate(16000)):
        filterbank = speech.mel_filterbank(settings)
        assert filterbank.shape == (80, settings.frame_length // 2 + 1)
        assert np.all(filterbank >= 0) and np.all(filterbank.sum(axis=1) > 0)
        edges = speech.mel_band_edges_hz(settings)
        assert np.all(np.diff(edges) > 0) and edges[0] == 0.0
        assert edges[-1] == pytest.approx(settings.sample_rate / 2)
        np.testing.assert_allclose(speech.mel_to_hz(speech.hz_to_mel(edges)), edges, rtol=1e-12)


def test_filterbank_equals_librosa_reference_values() -> None:
    """Values of librosa 0.11.0 filters.mel(sr=16000, n_fft=1024, n_mels=80) (Slaney, norm)."""
    filterbank = speech.mel_filterbank(speech.MelSettings.for_rate(16000))
    rows = [0, 10, 40, 79]
    np.testing.assert_array_equal(filterbank[rows].argmax(axis=1), [2, 26, 110, 493])
    np.testing.assert_allclose(
        filterbank[rows].max(axis=1), [0.02253456, 0.02441513, 0.01444418, 0.00333063], rtol=1e-5
    )
    np.testing.assert_allclose(
        filterbank.sum(axis=1)[[0, 40, 79]], [0.06234454, 0.06395814, 0.0639746], rtol=1e-5
    )


def test_filterbank_matches_installed_librosa() -> None:
    librosa = pytest.importorskip("librosa")
    for settings in (SETTINGS_8K, speech.MelSettings.for_rate(16000, fmin=125.0, fmax=7600.0)):
        reference = librosa.filters.mel(
            sr=settings.sample_rate,
            n_fft=settings.frame_length,
            n_mels=settings.num_mels,
            fmin=settings.fmin,
            fmax=settings.fmax,
        )
        np.testing.assert_allclose(speech.mel_filterbank(settings), reference, atol=1e-7)


@pytest.mark.parametrize("frequency", [1000.0, 3000.0])
def test_a_tone_peaks_in_the_mel_band_that_holds_its_frequency(frequency: float) -> None:
    log_mel = speech.log_mel_spectrogram(_tone(frequency, 16000, 8192)[None], sample_rate=16000)
    assert log_mel.shape == (1, 32, 80)
    peak = int(np.argmax(np.asarray(log_mel[0, 4:-4]).mean(axis=0)))
    edges = speech.mel_band_edges_hz(speech.MelSettings.for_rate(16000))
    assert edges[peak] < frequency < edges[peak + 2]  # inside the band's triangle
    assert abs(peak - int(np.argmin(np.abs(edges[1:-1] - frequency)))) <= 1


def test_frame_count_is_samples_over_hop_and_frames_match_numpy() -> None:
    samples = np.random.default_rng(2).uniform(-0.5, 0.5, (2, 1400)).astype(np.float32)
    for length in (127, 128, 1400):
        log_mel = speech.log_mel_with(SETTINGS_8K, samples[:, :length])
        assert log_mel.shape == (2, length // 128, 80) and log_mel.dtype == jnp.float32
    # A direct numpy reference: frame f is samples [f hop - 256, f hop + 256) of the reflect-
    # padded signal, periodic Hann window, magnitude rfft, Slaney filterbank, log(max(., 1e-5)).
    padded = np.pad(samples[1].astype(np.float64), 256, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(512) / 512)
    filterbank = speech.mel_filterbank(SETTINGS_8K).astype(np.float64)
    frames = np.stack([padded[f * 128 : f * 128 + 512] for f in range(1400 // 128)])
    expected = np.log(np.maximum(np.abs(np.fft.rfft(frames * window)) @ filterbank.T, 1e-5))
    np.testing.assert_allclose(np.asarray(log_mel[1]), expected, atol=2e-4)
    as_values = speech.log_mel_with(SETTINGS_8K, speech.quantize_16bit(samples))
    np.testing.assert_allclose(np.asarray(as_values), np.asarray(log_mel), atol=2e-3)


def test_utterance_mel_in_chunks_equals_the_batched_mel() -> None:
    samples = np.random.default_rng(3).uniform(-0.5, 0.5, 128 * 600 + 77).astype(np.float32)
    chunked = speech.utterance_log_mel(samples, SETTINGS_8K)  # 600 frames: two chunks
    assert chunked.shape == (600, 80) and chunked.dtype == np.float32
    whole = np.asarray(speech.log_mel_with(SETTINGS_8K, samples[None])[0])
    np.testing.assert_allclose(chunked, whole, atol=1e-4)
    assert speech.utterance_log_mel(samples[:100], SETTINGS_8K).shape == (0, 80)


def test_mel_defaults_and_bad_settings() -> None:
    assert (SETTINGS_8K.frame_length, SETTINGS_8K.hop_length, SETTINGS_8K.upper_hz) == (
        512,
        128,
        4000.0,
    )
    at_16k = speech.MelSettings.for_rate(16000)
    assert (at_16k.frame_length, at_16k.hop_length, at_16k.num_mels) == (1024, 256, 80)
    assert speech.MelSettings.for_rate(22050).hop_length == 256
    with pytest.raises(ConfigError, match="Nyquist"):
        speech.MelSettings.for_rate(8000, fmax=5000.0)
    with pytest.raises(ConfigError, match="hop_length=600"):
        speech.MelSettings(sample_rate=8000, frame_length=512, hop_length=600)


# ----------------------------------------------------------------------------------------------
# Corpora and splits
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_corpus() -> speech.SpeechCorpus:
    if not SHARED_SPEECH.is_dir():
        pytest.skip(
            reason=f"{SHARED_SPEECH} is absent (it exists only on the project's build machines)"
        )
    return speech.load_shared_speech(SHARED_SPEECH, sample_rate=RATE)


def test_shared_speech_loads_two_speakers_at_8k(shared_corpus: speech.SpeechCorpus) -> None:
    corpus = shared_corpus
    assert corpus.speakers == ("allison", "librivox") and corpus.sample_rate == RATE
    assert np.bincount(corpus.speaker_ids).tolist() == [96, 5]
    assert all(u.dtype == np.int16 for u in corpus.utterances)
    assert 375 < corpus.duration_s < 390
    librivox = corpus.names.index("librivox_16k/sense_and_sensibility_01_austen_64kb-0870")
    assert len(corpus.utterances[librivox]) == 113600 // 2  # 16 kHz file resampled to 8 kHz
    assert np.abs(corpus.utterances[librivox]).max() > 3000  # real speech, not silence


def test_heldout_splits_share_no_utterance(shared_corpus: speech.SpeechCorpus) -> None:
    splits = {name: speech.split_corpus(shared_corpus, name) for name in speech.SPLITS}
    names = {name: set(split.names) for name, split in splits.items()}
    assert not names["train"] & names["validation"] and not names["train"] & names["test"]
    assert not names["validation"] & names["test"]
    assert set().union(*names.values()) == set(shared_corpus.names)
    for split in ("validation", "test"):  # ceil(5% of 96) and the minimum of one of 5
        assert np.bincount(splits[split].speaker_ids, minlength=2).tolist() == [5, 1]
        assert splits[split].speakers == shared_corpus.speakers
    again = speech.split_corpus(shared_corpus, "validation")
    assert again.names == splits["validation"].names  # the fixed seed


def test_load_speech_from_a_wav_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    for speaker in ("alice", "bob"):
        for i in range(4):
            _write_wav(tmp_path / speaker / f"{i}.wav", rng.integers(-9000, 9000, 800 + i))
    _write_wav(tmp_path / "loose.wav", rng.integers(-9000, 9000, 1600), rate=16000)
    every = speech.load_wav_folder(tmp_path, sample_rate=RATE)
    assert every.speakers == ("alice", "bob", "default") and every.num_utterances == 9
    assert len(every.utterances[every.names.index("loose")]) == 800
    train = speech.load_speech("train", data_dir=tmp_path, sample_rate=RATE)  # auto -> wav
    test = speech.load_speech("test", data_dir=str(tmp_path), source="wav", sample_rate=RATE)
    assert train.num_utterances == 5 and test.num_utterances == 2  # 1 of each 4; "default": 0
    assert not set(train.names) & set(test.names)
    assert "WAV files in" in train.source and "train split" in train.source


def test_folder_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        speech.load_wav_folder(tmp_path / "absent")
    assert_one_line_error(caught.value, "does not exist")
    with pytest.raises(DataError) as caught:
        speech.load_wav_folder(tmp_path)
    assert_one_line_error(caught.value, "no *.wav files")
    with pytest.raises(DataError) as caught:
        speech.load_speech("train", data_dir=tmp_path)
    assert_one_line_error(caught.value, "no usable speech data")
    with pytest.raises(DataError) as caught:
        speech.load_shared_speech(tmp_path)
    assert_one_line_error(caught.value, "allison_8k/", "librivox_16k/")
    _write_wav(tmp_path / "one" / "a.wav", np.zeros(10))
    with pytest.raises(DataError) as caught:
        speech.load_speech("validation", data_dir=tmp_path, sample_rate=RATE)
    assert_one_line_error(caught.value, "too few utterances", "split='train'")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"split": "dev"}, "split='dev'"),
        ({"source": "flac"}, "source='flac'"),
        ({"sample_rate": 0}, "sample_rate=0"),
        ({"heldout_fraction": 0.5}, "heldout_fraction=0.5"),
        ({"source": "wav"}, "needs data.dir"),
    ],
)
def test_bad_options_are_config_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        speech.load_speech(**({"split": "train"} | kwargs))
    assert_one_line_error(caught.value, fragment)


# ----------------------------------------------------------------------------------------------
# The embedded utterance (pysptk source tarball)
# ----------------------------------------------------------------------------------------------


def test_embedded_arctic_utterance_and_its_time_splits() -> None:
    if not Path(speech.embedded_sdist_path()).is_file():
        pytest.skip(
            reason=f"no {speech.embedded_sdist_path()}; run `{speech.embedded_install_command()}`"
        )
    corpus = speech.load_embedded()
    assert corpus.speakers == ("arctic",) and corpus.sample_rate == 16000
    assert corpus.utterances[0].shape == (64000,) and np.abs(corpus.utterances[0]).max() > 3000
    parts = [speech.load_speech(split).utterances[0] for split in speech.SPLITS]
    assert [len(p) for p in parts] == [57600, 3200, 3200]
    np.testing.assert_array_equal(np.concatenate(parts), corpus.utterances[0])
    assert len(speech.load_embedded(sample_rate=RATE).utterances[0]) == 32000


def test_embedded_reads_the_wav_out_of_a_tarball(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = np.arange(-4000, 4000, 10, dtype="<i2")
    wav_data = _wav_bytes(values.tobytes(), rate=16000, width=2)
    with tarfile.open(tmp_path / speech.EMBEDDED_SDIST_NAME, "w:gz") as archive:
        info = tarfile.TarInfo(speech.EMBEDDED_MEMBER)
        info.size = len(wav_data)
        archive.addfile(info, io.BytesIO(wav_data))
    monkeypatch.setattr(speech, "EMBEDDED_SDIST_DIR", str(tmp_path))
    corpus = speech.load_embedded()
    np.testing.assert_array_equal(corpus.utterances[0], values)
    assert "arctic_a0007" in corpus.source


def test_missing_embedded_tarball_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(speech, "EMBEDDED_SDIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as caught:
        speech.load_speech("train")
    assert_one_line_error(
        caught.value,
        f"pip download --no-deps --no-binary pysptk --dest {tmp_path / 'nowhere'} pysptk==1.0.1",
        "make install",
    )


# ----------------------------------------------------------------------------------------------
# TFDS ljspeech / vctk (mocked data sources; no TensorFlow, files or network)
# ----------------------------------------------------------------------------------------------


def _fake_load_tfds_split(name, split, data_dir, *, select=None, alternative=""):
    """sources.load_tfds_split on 10 examples in the TFDS ljspeech / vctk feature layout."""
    assert split == "train" and "source='wav'" in alternative
    rng = np.random.default_rng(5)
    examples = []
    for i in range(10):
        example = {
            "id": f"p{225 + i % 2}_{i:03d}".encode(),
            "speech": rng.integers(-999, 999, 2205 + i),
        }
        if name == "vctk":
            example["speaker"] = np.int64(i % 2)
        examples.append(example)
    indices = range(10) if select is None else select(10, "where")
    return sources.TfdsSplit([examples[i] for i in indices], f"{name}:mock", split, 10, "hint")


def test_tfds_ljspeech_and_vctk_examples_become_corpora(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(speech, "_tensorflow_available", lambda: True)
    monkeypatch.setattr(sources, "load_tfds_split", _fake_load_tfds_split)
    (tmp_path / "ljspeech").mkdir()
    lj_train = speech.load_speech("train", data_dir=tmp_path)  # auto -> ljspeech
    lj_test = speech.load_speech("test", data_dir=tmp_path, source="ljspeech")
    vctk = speech.load_speech("validation", data_dir=tmp_path, source="vctk", sample_rate=RATE)
    assert lj_train.speakers == ("ljspeech",) and lj_train.num_utterances == 8
    assert lj_test.num_utterances == 1 and lj_train.source.startswith("TFDS ljspeech:mock")
    assert not set(lj_train.names) & set(lj_test.names)
    for name, utterance in zip(lj_train.names, lj_train.utterances, strict=True):
        source_length = 2205 + int(name.split("_")[1])  # at 22,050 Hz, resampled to 16 kHz
        assert len(utterance) == math.ceil(source_length * 320 / 441)
        assert utterance.dtype == np.int16
    assert vctk.speakers == ("p225", "p226") and vctk.num_utterances == 2  # 1 of 5 per speaker
    assert sorted(vctk.speaker_ids.tolist()) == [0, 1] and vctk.sample_rate == RATE


def test_tfds_without_tensorflow_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(speech, "_tensorflow_available", lambda: False)
    (tmp_path / "vctk").mkdir()
    with pytest.raises(DataError) as caught:
        speech.load_speech("train", data_dir=tmp_path)  # auto -> vctk
    assert_one_line_error(
        caught.value,
        "pip install tensorflow",
        f"tfds build vctk --data_dir={tmp_path} --file_format=array_record",
        "source='wav'",
    )


def test_tfds_read_failure_is_one_line_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(speech, "_tensorflow_available", lambda: True)
    # Any failure of the data source (here: the mock's NotImplementedError, or without TensorFlow
    # the Audio feature's import) is one line with the ways to get the data.
    error = tfds_read_failure(
        monkeypatch, lambda: speech.load_speech("train", data_dir=tmp_path, source="ljspeech")
    )
    assert_one_line_error(error, "could not be read", "tfds build ljspeech", "source='wav'")


# ----------------------------------------------------------------------------------------------
# Training clips and speaker classification
# ----------------------------------------------------------------------------------------------


def test_iterator_batches_resume_exactly_and_split_across_processes() -> None:
    corpus = _synthetic_corpus()
    make = lambda rows=None: speech.training_iterator(
        corpus, clip_length=2560, global_batch_size=4, seed=7, process_rows=rows
    )
    iterator = make()
    batches = [next(iterator) for _ in range(5)]  # 47945 // 2560 = 18 clips: 4 batches an epoch
    assert iterator.get_state() == {"epoch": 1, "batch": 1, "seed": 7}
    batch = batches[0]
    assert batch["audio"].shape == (4, 2560) and batch["audio"].dtype == np.int32
    assert batch["mel"].shape == (4, 20, 80) and batch["mel"].dtype == np.float32
    assert batch["speaker"].dtype == np.int32
    resumed = make()
    resumed.set_state({"epoch": 0, "batch": 3, "seed": 7})
    for expected in batches[3:]:
        got = next(resumed)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])
    halves = [next(make(rows)) for rows in (slice(0, 2), slice(2, 4))]
    for key in batch:
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), batch[key])


def test_clip_audio_and_mel_are_aligned() -> None:
    corpus = _synthetic_corpus()
    iterator = speech.training_iterator(corpus, clip_length=2560, global_batch_size=4, seed=3)
    batch = next(iterator)
    for audio, mel, speaker in zip(batch["audio"], batch["mel"], batch["speaker"], strict=True):
        # The clip is a hop-aligned piece of an utterance of its speaker.
        found = _find_clip(corpus, audio)
        assert found is not None and found[1] % 128 == 0
        assert corpus.speaker_ids[found[0]] == speaker
        # Recomputed from the clip alone, frames 2 .. 17 see only clip samples (frame f spans
        # [128 f - 256, 128 f + 256)); the two edge frames at each end differ by their padding
        # (reflection at the clip's edges here, the utterance's neighbouring samples in mel).
        direct = np.asarray(speech.log_mel_with(SETTINGS_8K, audio[None])[0])
        np.testing.assert_allclose(direct[2:18], mel[2:18], atol=2e-3)
        start_frame = found[1] // 128
        whole = speech.utterance_log_mel(corpus.utterances[found[0]], SETTINGS_8K)
        np.testing.assert_array_equal(mel, whole[start_frame : start_frame + 20])


def test_lookahead_frames_continue_the_utterance_then_pad_with_silence() -> None:
    corpus = _synthetic_corpus((2560,))
    iterator = speech.training_iterator(
        corpus, clip_length=2560, global_batch_size=2, seed=0, lookahead=3
    )
    batch = next(iterator)
    whole = speech.utterance_log_mel(corpus.utterances[0], SETTINGS_8K)
    assert batch["mel"].shape == (2, 23, 80)
    np.testing.assert_array_equal(batch["mel"][0, :20], whole)
    np.testing.assert_array_equal(batch["mel"][0, 20:], speech.LOG_MEL_FLOOR)
    longer = speech.training_iterator(
        _synthetic_corpus(), clip_length=1280, global_batch_size=2, seed=0, lookahead=3
    )
    assert next(longer)["mel"].shape == (2, 13, 80)


def test_iterator_rejects_bad_clips() -> None:
    corpus = _synthetic_corpus()
    with pytest.raises(ConfigError, match="multiple of hop_length=128"):
        speech.training_iterator(corpus, clip_length=1000, global_batch_size=2, seed=0)
    with pytest.raises(DataError, match="shorter clip_length"):
        speech.training_iterator(corpus, clip_length=128 * 200, global_batch_size=2, seed=0)
    with pytest.raises(ConfigError, match="16000 Hz"):
        speech.training_iterator(
            corpus,
            clip_length=2560,
            global_batch_size=2,
            seed=0,
            mel=speech.MelSettings.for_rate(16000),
        )


def test_speaker_classification_examples_are_balanced_clips() -> None:
    corpus = _synthetic_corpus()
    clips, labels = speech.speaker_classification_examples(
        corpus, clip_length=1000, num_per_speaker=6, seed=1
    )
    assert clips.shape == (12, 1000) and clips.dtype == np.int32
    np.testing.assert_array_equal(labels, [0] * 6 + [1] * 6)
    for clip, label in zip(clips, labels, strict=True):
        found = _find_clip(corpus, clip)
        assert found is not None and corpus.speaker_ids[found[0]] == label
    again, _ = speech.speaker_classification_examples(
        corpus, clip_length=1000, num_per_speaker=6, seed=1
    )
    np.testing.assert_array_equal(again, clips)
    with pytest.raises(DataError, match="speaker 'a'"):
        speech.speaker_classification_examples(corpus, clip_length=15000, num_per_speaker=1, seed=0)
