"""Tests for deepgen.data.robot_push: CRC-32C, TFRecord framing, the Example codec and the loader."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from loader_checks import assert_one_line_error

from deepgen.core.errors import ConfigError, DataError
from deepgen.data import robot_push
from deepgen.data.robot_push import (
    PushData,
    count_tfrecords,
    crc32c,
    decode_example,
    encode_example,
    load_push_sequences,
    masked_crc32c,
    push_batches,
    read_tfrecords,
    write_push_tfrecord,
    write_tfrecords,
)

# 2 sequences of 20 frames, 80 rows x 96 columns: the centre crop is columns 8..88.
NUM_SEQUENCES, NUM_STEPS, HEIGHT, WIDTH = 2, 20, 80, 96
CROP_LEFT = (WIDTH - HEIGHT) // 2


# ----------------------------------------------------------------------------------------------
# CRC-32C and TFRecord framing
# ----------------------------------------------------------------------------------------------


def test_crc32c_known_vectors() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC catalogue's check value
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
    assert crc32c(b"\xff" * 32) == 0x62A8AB43  # RFC 3720 B.4: 32 bytes of 0xff
    assert crc32c(bytes(range(32))) == 0x46DD794E  # RFC 3720 B.4: incrementing bytes


@pytest.mark.parametrize("size", [1023, 1024, 1025, 4096, 5000, 70_001])
def test_crc32c_numpy_lanes_match_the_byte_loop(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    byte_loop = robot_push._crc_register(0xFFFFFFFF, data) ^ 0xFFFFFFFF
    assert crc32c(data) == byte_loop
    assert crc32c(memoryview(data)) == byte_loop


def test_masked_crc32c_rotates_and_adds_the_delta() -> None:
    crc = 0xE3069283
    bits = f"{crc:032b}"
    rotated_right_15 = int(bits[-15:] + bits[:-15], 2)
    assert masked_crc32c(b"123456789") == (rotated_right_15 + 0xA282EAD8) % 2**32


def test_tfrecords_round_trip_and_framing(tmp_path: Path) -> None:
    records = [b"", b"a", os.urandom(3000)]
    path = tmp_path / "records.tfrecord"
    assert write_tfrecords(path, records) == 3
    raw = path.read_bytes()
    assert struct.unpack("<Q", raw[:8])[0] == 0
    assert struct.unpack("<I", raw[8:12])[0] == masked_crc32c(raw[:8])
    assert struct.unpack("<I", raw[12:16])[0] == masked_crc32c(b"")
    assert len(raw) == sum(16 + len(record) for record in records)
    assert list(read_tfrecords(path)) == records
    assert count_tfrecords(path) == 3


def test_corrupted_record_raises_data_error_naming_the_record(tmp_path: Path) -> None:
    path = tmp_path / "records.tfrecord"
    write_tfrecords(path, [b"first record", b"second record", b"third record"])
    raw = bytearray(path.read_bytes())
    second_start = 16 + len(b"first record")
    raw[second_start + 12 + 3] ^= 0x01  # a byte of the second record's data
    path.write_bytes(bytes(raw))
    reader = read_tfrecords(path)
    assert next(reader) == b"first record"
    with pytest.raises(DataError) as caught:
        next(reader)
    assert_one_line_error(caught.value, str(path), "record 1", "data checksum")
    assert count_tfrecords(path) == 3  # headers only: still intact

    raw[second_start] ^= 0x01  # now the second record's length too
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"record 1 .*length checksum"):
        count_tfrecords(path)

    write_tfrecords(path, [b"first record", b"second record", b"third record"])
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"record 2 .*truncated"):
        list(read_tfrecords(path))
    with pytest.raises(DataError, match=r"record 2 .*truncated"):
        count_tfrecords(path)


def test_missing_tfrecord_file_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot be read"):
        list(read_tfrecords(tmp_path / "absent.tfrecord"))


# ----------------------------------------------------------------------------------------------
# tf.train.Example codec
# ----------------------------------------------------------------------------------------------

INT64_EXTREMES = [0, 1, -1, 300, -300, 2**63 - 1, -(2**63)]


def example_features() -> dict:
    return {
        "image/encoded": [b"\x00\xffjpeg", b""],
        "move/0/commanded_pose/vec_pitch_yaw": np.array([0.5, -1.25, 3e-8, 1e30, 0.0], np.float32),
        "ints": np.array(INT64_EXTREMES, dtype=np.int64),
        "empty_floats": np.zeros(0, np.float32),
        "unicode/κλειδί": [b"value"],
    }


def test_example_round_trip() -> None:
    decoded = decode_example(encode_example(example_features()))
    assert decoded.keys() == example_features().keys()
    assert decoded["image/encoded"] == [b"\x00\xffjpeg", b""]
    floats = decoded["move/0/commanded_pose/vec_pitch_yaw"]
    assert floats.dtype == np.float32
    np.testing.assert_array_equal(floats, example_features()[floats_key()])
    assert decoded["ints"].dtype == np.int64
    assert decoded["ints"].tolist() == INT64_EXTREMES
    assert decoded["empty_floats"].shape == (0,)
    assert decoded["unicode/κλειδί"] == [b"value"]


def floats_key() -> str:
    return "move/0/commanded_pose/vec_pitch_yaw"


def _delimited(number: int, payload: bytes) -> bytes:
    return robot_push._varint(number << 3 | 2) + robot_push._varint(len(payload)) + payload


def _example_with(key: str, feature: bytes) -> bytes:
    return _delimited(1, _delimited(1, _delimited(1, key.encode()) + _delimited(2, feature)))


def test_unpacked_and_packed_lists_decode_the_same() -> None:
    values = np.array([1.5, -2.0, 0.25], np.float32)
    packed = _delimited(2, _delimited(1, values.astype("<f4").tobytes()))
    unpacked = _delimited(2, b"".join(b"\x0d" + struct.pack("<f", v) for v in values))
    for feature in (packed, unpacked):
        np.testing.assert_array_equal(decode_example(_example_with("x", feature))["x"], values)

    ints = [7, -3, 2**40]
    as_varint = [robot_push._varint(v % 2**64) for v in ints]
    packed_ints = _delimited(3, _delimited(1, b"".join(as_varint)))
    unpacked_ints = _delimited(3, b"".join(b"\x08" + v for v in as_varint))
    for feature in (packed_ints, unpacked_ints):
        assert decode_example(_example_with("y", feature))["y"].tolist() == ints


def test_unknown_fields_are_skipped_and_garbage_is_rejected() -> None:
    extra = b"\x10\x05" + b"\x19" + bytes(8) + b"\x25" + bytes(4)  # varint, fixed64, fixed32
    data = extra + _example_with("k", _delimited(1, _delimited(1, b"v")))
    assert decode_example(data) == {"k": [b"v"]}
    with pytest.raises(ValueError):
        decode_example(b"\x0a\x05\x0a")  # a Features message running past the end
    with pytest.raises(ValueError):
        decode_example(b"\x0b")  # wire type 3 (groups) is not supported


def test_codec_matches_the_tf_example_proto() -> None:
    """Cross-check with the generated tf.train.Example copy that tensorflow-datasets ships."""
    example_pb2 = pytest.importorskip("tensorflow_datasets.proto.tf_example_generated_pb2")
    parsed = example_pb2.Example.FromString(encode_example(example_features()))
    feature = parsed.features.feature
    assert list(feature["image/encoded"].bytes_list.value) == [b"\x00\xffjpeg", b""]
    np.testing.assert_array_equal(
        np.array(feature[floats_key()].float_list.value, np.float32),
        example_features()[floats_key()],
    )
    assert list(feature["ints"].int64_list.value) == INT64_EXTREMES

    built = example_pb2.Example()
    built.features.feature["b"].bytes_list.value.extend([b"one", b"two"])
    built.features.feature["f"].float_list.value.extend([0.5, -7.0])
    built.features.feature["i"].int64_list.value.extend(INT64_EXTREMES)
    decoded = decode_example(built.SerializeToString())
    assert decoded["b"] == [b"one", b"two"]
    assert decoded["f"].tolist() == [0.5, -7.0]
    assert decoded["i"].tolist() == INT64_EXTREMES


# ----------------------------------------------------------------------------------------------
# The push dataset
# ----------------------------------------------------------------------------------------------


def quadrant_colours(n: int, t: int) -> np.ndarray:
    """(4, 3) uint8 colours, in [60, 240), of the crop's quadrants TL, TR, BL, BR in frame (n, t)."""
    q, c = np.arange(4)[:, None], np.arange(3)[None, :]
    return ((9 * t + 50 * n + 37 * q + 61 * c) % 180 + 60).astype(np.uint8)


def make_sequences() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames with black side bands outside the centre crop and a 2x2 colour grid inside it."""
    frames = np.zeros((NUM_SEQUENCES, NUM_STEPS, HEIGHT, WIDTH, 3), dtype=np.uint8)
    half = HEIGHT // 2
    for n in range(NUM_SEQUENCES):
        for t in range(NUM_STEPS):
            colours = quadrant_colours(n, t)
            for q in range(4):
                rows = slice(half * (q // 2), half * (q // 2 + 1))
                left = CROP_LEFT + half * (q % 2)
                frames[n, t, rows, left : left + half] = colours[q]
    rng = np.random.default_rng(0)
    actions = rng.normal(size=(NUM_SEQUENCES, NUM_STEPS, 5)).astype(np.float32)
    states = rng.normal(size=(NUM_SEQUENCES, NUM_STEPS, 5)).astype(np.float32)
    return frames, actions, states


@pytest.fixture(scope="module")
def push_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data.dir laid out as the download: push/push_train/push_train.tfrecord-0000k-of-00002."""
    root = tmp_path_factory.mktemp("push_data")
    folder = root / "push" / "push_train"
    folder.mkdir(parents=True)
    frames, actions, states = make_sequences()
    for k in range(2):
        path = folder / f"push_train.tfrecord-{k:05d}-of-00002"
        assert (
            write_push_tfrecord(path, frames[k : k + 1], actions[k : k + 1], states[k : k + 1]) == 1
        )
    return root


def test_written_records_have_the_dataset_layout(push_dir: Path) -> None:
    path = push_dir / "push" / "push_train" / "push_train.tfrecord-00000-of-00002"
    (record,) = read_tfrecords(path)
    features = decode_example(record)
    assert len(features) == 3 * NUM_STEPS
    assert features["move/19/image/encoded"][0][:2] == b"\xff\xd8"  # a JPEG
    assert features["move/0/commanded_pose/vec_pitch_yaw"].shape == (5,)
    assert features["move/0/endeffector/vec_pitch_yaw"].shape == (5,)


def test_load_push_sequences_crops_resizes_and_keeps_actions(push_dir: Path) -> None:
    data = load_push_sequences(push_dir, "train", image_side=16)
    _, actions, states = make_sequences()
    assert isinstance(data, PushData)
    assert data.frames_NxTxHxWx3.shape == (NUM_SEQUENCES, NUM_STEPS, 16, 16, 3)
    assert data.frames_NxTxHxWx3.dtype == np.uint8
    assert data.actions_NxTxA.dtype == data.states_NxTxS.dtype == np.float32
    np.testing.assert_array_equal(data.actions_NxTxA, actions)
    np.testing.assert_array_equal(data.states_NxTxS, states)
    assert "push_train.tfrecord-00000-of-00002" in data.source
    assert "push_train.tfrecord-00001-of-00002" in data.source
    # 80x80 crop -> 16x16 is a factor 5; bicubic reaches 2 output pixels (10 input pixels) on
    # each side, so output pixels 0-5 and 10-15 see one quadrant only. With a wrong crop the
    # black side bands would darken columns 0 and 15.
    blocks = {0: (slice(0, 6), slice(0, 6)), 1: (slice(0, 6), slice(10, 16))}
    blocks |= {2: (slice(10, 16), slice(0, 6)), 3: (slice(10, 16), slice(10, 16))}
    for n in range(NUM_SEQUENCES):
        for t in range(NUM_STEPS):
            for q, (rows, cols) in blocks.items():
                got = data.frames_NxTxHxWx3[n, t, rows, cols].astype(int)
                expected = quadrant_colours(n, t)[q].astype(int)
                assert np.abs(got - expected).max() <= 3, (n, t, q)


def test_load_fewer_frames_and_sequences(push_dir: Path) -> None:
    data = load_push_sequences(push_dir, "train", num_frames=3, image_side=8, max_sequences=1)
    assert data.frames_NxTxHxWx3.shape == (1, 3, 8, 8, 3)
    np.testing.assert_array_equal(data.actions_NxTxA, make_sequences()[1][:1, :3])
    assert "00001" not in data.source


def test_records_shorter_than_num_frames_raise_data_error(push_dir: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_push_sequences(push_dir, "train", num_frames=21, image_side=8)
    assert_one_line_error(caught.value, "record 0", "20 time steps", "num_frames=21")


def test_flat_folder_and_tfrecord_suffix(tmp_path: Path) -> None:
    frames, actions, states = make_sequences()
    write_push_tfrecord(tmp_path / "push_testnovel.tfrecord", frames, actions, states)
    data = load_push_sequences(tmp_path, "test_novel", num_frames=2, image_side=4)
    assert data.num_sequences == 2 and data.num_frames == 2


def test_missing_data_raises_one_line_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_push_sequences(tmp_path / "nowhere", "train")
    assert_one_line_error(caught.value, "does not exist", "set data.dir", "push_train*.tfrecord")
    with pytest.raises(DataError) as caught:
        load_push_sequences(tmp_path, "test_seen")
    assert_one_line_error(caught.value, "no push_testseen* files", "set data.dir")
    with pytest.raises(DataError, match="not set"):
        load_push_sequences("", "train")


def test_wrong_split_and_sizes_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="split='test'"):
        load_push_sequences(tmp_path, "test")
    with pytest.raises(ConfigError, match="image_side"):
        load_push_sequences(tmp_path, "train", image_side=0)


def test_non_push_records_raise_data_error(tmp_path: Path) -> None:
    write_tfrecords(tmp_path / "push_train-0", [encode_example({"other": [1, 2]})])
    with pytest.raises(DataError, match="not a push dataset record"):
        load_push_sequences(tmp_path, "train")
    write_tfrecords(tmp_path / "push_train-0", [b"\x0b"])
    with pytest.raises(DataError, match=r"record 0 is not a tf\.train\.Example"):
        load_push_sequences(tmp_path, "train")


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------


def small_push_data(num: int = 7) -> PushData:
    rng = np.random.default_rng(1)
    return PushData(
        frames_NxTxHxWx3=rng.integers(0, 256, (num, 3, 4, 4, 3), dtype=np.uint8),
        actions_NxTxA=rng.normal(size=(num, 3, 5)).astype(np.float32),
        states_NxTxS=rng.normal(size=(num, 3, 5)).astype(np.float32),
        source="synthetic",
    )


def test_batches_resume_from_saved_state() -> None:
    data = small_push_data()
    batches = push_batches(data, batch_size=3, seed=5)
    first = next(batches)
    state = batches.get_state()
    expected = [next(batches) for _ in range(3)]  # crosses into the second epoch
    resumed = push_batches(data, batch_size=3, seed=5)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in ("frames", "actions", "states"):
            np.testing.assert_array_equal(got[key], want[key])
    assert first["frames"].shape == (3, 3, 4, 4, 3) and first["frames"].dtype == np.uint8
    assert first["actions"].shape == first["states"].shape == (3, 3, 5)


def test_batches_float_frames_and_process_rows() -> None:
    data = small_push_data()
    whole = next(push_batches(data, batch_size=4, seed=2, float_frames=True))
    part = next(push_batches(data, batch_size=4, seed=2, process_rows=slice(2, 4)))
    assert whole["frames"].dtype == np.float32 and whole["frames"].max() <= 1.0
    np.testing.assert_allclose(whole["frames"][2:4], part["frames"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(whole["actions"][2:4], part["actions"])
