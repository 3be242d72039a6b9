"""The Robotic Pushing ("push") dataset as uint8 frame sequences with actions and states.

Finn, Goodfellow and Levine, "Unsupervised Learning for Physical Interaction through Video
Prediction" (NeurIPS 2016, arXiv 1605.07157) recorded robot arms pushing objects; Video Pixel
Networks (Kalchbrenner et al. 2016, arXiv 1610.00527, Sec. 5.2) evaluate on it with 20-frame
sequences: 2 context frames with their states and actions, the 18 future actions, and 18
generated frames. The dataset is a set of TFRecord files of ``tf.train.Example`` protos, one
Example per pushing sequence, in three splits: ``push_train`` (train), ``push_testseen`` (test
on objects seen in training) and ``push_testnovel`` (test on novel objects).

Everything here is pure Python plus numpy and PIL: TensorFlow is not needed. The module holds

* a TFRecord reader and writer (:func:`read_tfrecords`, :func:`count_tfrecords`,
  :func:`write_tfrecords`) that check the CRC-32C checksums of every record (:func:`crc32c`, a
  table-driven CRC-32C vectorised over 256-byte lanes with numpy, and :func:`masked_crc32c`);
* a protobuf wire-format codec for ``tf.train.Example`` only (:func:`encode_example`,
  :func:`decode_example`);
* :func:`load_push_sequences`, the loader, :func:`write_push_tfrecord`, which writes records in
  the dataset's layout (the tests use it; it also shows the format), and :func:`push_batches`, a
  resumable batch iterator built on :class:`deepgen.data.pipeline.EpochIterator`.

The format. Verified in Finn's loader, tensorflow/models
``research/video_prediction/prediction_input.py`` (the 2016 version with module constants; the
later version keeps the same names and numbers in ``get_google_format``):

* time step i of a sequence is the features ``move/{i}/image/encoded`` (one JPEG, decoded with
  ``tf.image.decode_jpeg(channels=3)``), ``move/{i}/commanded_pose/vec_pitch_yaw`` (the action)
  and ``move/{i}/endeffector/vec_pitch_yaw`` (the state), both float lists of
  ``STATE_DIM = 5`` (the later version: ``state_dim = action_dim = 5``);
* frames are ``ORIGINAL_WIDTH = 640`` by ``ORIGINAL_HEIGHT = 512`` RGB; the loader centre-crops
  them to ``min(512, 640) = 512`` square with ``tf.image.resize_image_with_crop_or_pad``,
  resizes them to 64x64 with ``tf.image.resize_bicubic`` and divides by 255. (The later
  version calls ``tf.image.central_crop(image, 64 / 64)``, which keeps the whole frame, and then
  ``resize_images(BICUBIC)``, i.e. squashes 640x512 to 64x64; this module follows the original
  centre crop.)

Verified in tensor2tensor ``data_generators/google_robot_pushing.py``: the files are
``push/push_train/push_train.tfrecord-{00000..00263}-of-00264`` and
``push/push_testseen/push_testseen.tfrecord-{00000..00004}-of-00005`` (likewise
``push_testnovel``, 5 shards) under ``https://storage.googleapis.com/brain-robotics-data/``;
each Example holds 6 features per time step (the 3 above and 3 others, which this module
ignores), and "features after 60 don't have any image", so records hold more time steps than
VPN uses; the first ``num_frames`` are taken. Verified in alexlee-gk/video_prediction
``datasets/google_robot_dataset.py``: 51,615 / 1,038 / 995 examples in push_train /
push_testseen / push_testnovel (another copy of that code counts 54,432 / 1,289 / 1,253 by
iterating the files; unresolved). Also verified in Finn's code: the loader reads the first
``sequence_length`` steps of each record (``prediction_train.py``: default 10, 2 context
frames). Recalled, not verified: VPN's 20-frame, 2-context setup as stated above (the paper),
and the crop offsets of ``resize_image_with_crop_or_pad``, ``(size - side) // 2``.

Differences from Finn's TensorFlow pipeline: JPEGs are decoded by PIL (libjpeg) and resized by
PIL's ``BICUBIC`` filter over the 512x512 centre crop, which low-pass filters over the whole
input support (antialiased); ``tf.image.resize_bicubic`` (2016) samples 4x4 input pixels per
output pixel without antialiasing. Pixels therefore differ slightly from Finn's; frames are kept
as uint8 (Finn divides by 255, see ``float_frames`` in :func:`push_batches`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import io
import os
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from deepgen.core.errors import ConfigError, DataError
from deepgen.data import sources
from deepgen.data.pipeline import EpochIterator

# ----------------------------------------------------------------------------------------------
# Constants of the dataset (see the module docstring for which are verified and where)
# ----------------------------------------------------------------------------------------------

SPLITS = ("train", "test_seen", "test_novel")
# File name prefix of each split's shards (verified: tensor2tensor google_robot_pushing.py).
SPLIT_PREFIXES = {
    "train": "push_train",
    "test_seen": "push_testseen",
    "test_novel": "push_testnovel",
}
NUM_SHARDS = {"train": 264, "test_seen": 5, "test_novel": 5}  # verified: as above
DOWNLOAD_URL = "https://storage.googleapis.com/brain-robotics-data/push/"
DATASET_URL = "https://sites.google.com/site/brainrobotdata/home/push-dataset"

# Feature names per time step (verified: prediction_input.py).
IMAGE_KEY = "move/{}/image/encoded"
ACTION_KEY = "move/{}/commanded_pose/vec_pitch_yaw"
STATE_KEY = "move/{}/endeffector/vec_pitch_yaw"
ORIGINAL_WIDTH, ORIGINAL_HEIGHT = 640, 512  # verified: prediction_input.py
STATE_DIM = ACTION_DIM = 5  # verified: prediction_input.py

# VPN's setup (Sec. 5.2, recalled): 20 frames of 64x64, 2 of them context.
NUM_FRAMES = 20
CONTEXT_FRAMES = 2
IMAGE_SIDE = 64  # verified: IMG_WIDTH = IMG_HEIGHT = 64 in prediction_input.py

# Records decoded per task when load_push_sequences uses threads.
_RECORDS_PER_TASK = 4


# ----------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli), as TFRecord framing uses it
# ----------------------------------------------------------------------------------------------

_CRC32C_POLY_REFLECTED = 0x82F63B78  # 0x1EDC6F41 bit-reversed
_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
_CRC_MASK_DELTA = 0xA282EAD8
_LANE_LOG2 = 8
_LANE_BYTES = 1 << _LANE_LOG2  # bytes per numpy lane; inputs shorter than 4 lanes run in Python


def _make_crc32c_table() -> np.ndarray:
    """The 256-entry table of the reflected CRC-32C byte step (register 0, one byte)."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_CRC32C_POLY_REFLECTED), table >> 1)
    table = table.astype(np.uint32)
    table.flags.writeable = False
    return table


_CRC_TABLE = _make_crc32c_table()
_CRC_TABLE_LIST = [int(value) for value in _CRC_TABLE]


def _crc_register(register: int, data: bytes | memoryview) -> int:
    """The raw (no pre/post inversion) CRC-32C register after feeding data, byte by byte."""
    table = _CRC_TABLE_LIST
    for byte in data:
        register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


def _apply_columns(columns: Sequence[int], register: int) -> int:
    """A GF(2)-linear map on 32-bit registers (its images of the 32 unit vectors) at register."""
    out = 0
    for bit, column in enumerate(columns):
        if register >> bit & 1:
            out ^= column
    return out


@functools.lru_cache(maxsize=64)
def _zeros_operator(log2_bytes: int) -> tuple[int, ...]:
    """Columns of the map 'feed 2**log2_bytes zero bytes' on the raw register."""
    if log2_bytes == 0:
        return tuple(_crc_register(1 << bit, b"\0") for bit in range(32))
    half = _zeros_operator(log2_bytes - 1)
    return tuple(_apply_columns(half, column) for column in half)


@functools.lru_cache(maxsize=64)
def _zeros_tables(log2_bytes: int) -> np.ndarray:
    """(4, 256) uint32 tables: the zeros operator on each byte of a register, for numpy lanes."""
    columns = np.array(_zeros_operator(log2_bytes), dtype=np.uint32).reshape(4, 8)
    values = np.arange(256)
    tables = np.zeros((4, 256), dtype=np.uint32)
    for bit in range(8):
        tables ^= np.where((values >> bit) & 1, columns[:, bit : bit + 1], 0).astype(np.uint32)
    tables.flags.writeable = False
    return tables


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli, reflected 0x82F63B78, init and xor-out 0xFFFFFFFF) of data."""
    view = memoryview(data).cast("B")
    num_bytes = len(view)
    if num_bytes < 4 * _LANE_BYTES:
        return _crc_register(_MASK32, view) ^ _MASK32
    # Initial register 0xFFFFFFFF == register 0 with the first 4 bytes inverted. Leading zero
    # bytes leave register 0 unchanged, so the data is zero-padded in front to a power-of-two
    # number of 256-byte lanes; each lane's register is computed in lockstep with numpy and the
    # lanes are merged pairwise: crc(A + B) = zeros_operator(len(B))(crc(A)) ^ crc(B).
    num_lanes = 1 << (-(-num_bytes // _LANE_BYTES) - 1).bit_length()
    padded = np.zeros(num_lanes * _LANE_BYTES, dtype=np.uint8)
    start = len(padded) - num_bytes
    padded[start:] = np.frombuffer(view, dtype=np.uint8)
    padded[start : start + 4] ^= 0xFF
    columns_LxK = np.ascontiguousarray(padded.reshape(num_lanes, _LANE_BYTES).T)
    register_K = np.zeros(num_lanes, dtype=np.uint32)
    for byte_K in columns_LxK:
        register_K = _CRC_TABLE[(register_K ^ byte_K) & 0xFF] ^ (register_K >> 8)
    log2_bytes = _LANE_LOG2
    while len(register_K) > 1:
        tables = _zeros_tables(log2_bytes)
        left, right = register_K[0::2], register_K[1::2]
        register_K = (
            tables[0][left & 0xFF]
            ^ tables[1][(left >> 8) & 0xFF]
            ^ tables[2][(left >> 16) & 0xFF]
            ^ tables[3][left >> 24]
            ^ right
        )
        log2_bytes += 1
    return int(register_K[0]) ^ _MASK32


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's masked CRC-32C: rotate right by 15 bits and add 0xa282ead8 (mod 2**32)."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & _MASK32) + _CRC_MASK_DELTA) & _MASK32


# ----------------------------------------------------------------------------------------------
# TFRecord files: uint64 length | uint32 masked crc(length) | data | uint32 masked crc(data)
# ----------------------------------------------------------------------------------------------

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_HEADER_BYTES = _LENGTH.size + _CRC.size


def _record_error(path: str, index: int, offset: int, problem: str) -> DataError:
    return DataError(
        f"TFRecord file {path} record {index} (at byte {offset}) {problem}; the file is damaged "
        "or not a TFRecord file"
    )


def _open_error(path: str, err: OSError) -> DataError:
    return DataError(
        f"TFRecord file {path} cannot be read ({type(err).__name__}: {sources.first_line(err)})"
    )


def _read_header(handle, path: str, index: int, offset: int, verify: bool) -> int | None:
    """The data length of the record at offset (None at the end of the file)."""
    header = handle.read(_HEADER_BYTES)
    if not header:
        return None
    if len(header) < _HEADER_BYTES:
        raise _record_error(path, index, offset, f"is truncated ({len(header)}-byte header)")
    length_bytes = header[: _LENGTH.size]
    if verify and masked_crc32c(length_bytes) != _CRC.unpack(header[_LENGTH.size :])[0]:
        raise _record_error(path, index, offset, "has a bad length checksum")
    return _LENGTH.unpack(length_bytes)[0]


def read_tfrecords(path: str | os.PathLike, *, verify: bool = True) -> Iterator[bytes]:
    """Yields the records of a TFRecord file; DataError naming the record on a bad checksum."""
    path = os.fspath(path)
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed by the with below; open errors first)
    except OSError as err:
        raise _open_error(path, err) from err
    with handle:
        index = 0
        while True:
            offset = handle.tell()
            length = _read_header(handle, path, index, offset, verify)
            if length is None:
                return
            data = handle.read(length)
            footer = handle.read(_CRC.size)
            if len(data) < length or len(footer) < _CRC.size:
                raise _record_error(path, index, offset, f"is truncated ({length}-byte record)")
            if verify and masked_crc32c(data) != _CRC.unpack(footer)[0]:
                raise _record_error(path, index, offset, "has a bad data checksum")
            yield data
            index += 1


def count_tfrecords(path: str | os.PathLike) -> int:
    """The number of records in a TFRecord file, from the headers only (length CRCs checked)."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        handle = open(path, "rb")  # noqa: SIM115 (closed by the with below; open errors first)
    except OSError as err:
        raise _open_error(path, err) from err
    with handle:
        index = 0
        while True:
            offset = handle.tell()
            length = _read_header(handle, path, index, offset, verify=True)
            if length is None:
                return index
            end = offset + _HEADER_BYTES + length + _CRC.size
            if end > size:
                raise _record_error(path, index, offset, f"is truncated ({length}-byte record)")
            handle.seek(end)
            index += 1


def write_tfrecords(path: str | os.PathLike, records: Iterable[bytes]) -> int:
    """Writes records to a TFRecord file (overwriting it); returns how many were written."""
    count = 0
    with open(path, "wb") as handle:
        for record in records:
            length_bytes = _LENGTH.pack(len(record))
            handle.write(length_bytes)
            handle.write(_CRC.pack(masked_crc32c(length_bytes)))
            handle.write(record)
            handle.write(_CRC.pack(masked_crc32c(record)))
            count += 1
    return count


# ----------------------------------------------------------------------------------------------
# tf.train.Example in protobuf wire format
#   Example  {1: Features}
#   Features {1: repeated FeatureEntry {1: key string, 2: value Feature}}   (map<string, Feature>)
#   Feature  oneof {1: BytesList {1: repeated bytes},
#                   2: FloatList {1: repeated float (packed or not)},
#                   3: Int64List {1: repeated int64 varint (packed or not)}}
# ----------------------------------------------------------------------------------------------

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5

# A decoded feature: a BytesList as a list of bytes, a FloatList as float32, an Int64List as int64.
FeatureValue = list[bytes] | np.ndarray


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it) of the base-128 varint at pos."""
    value = shift = 0
    while True:
        if pos >= end:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, a, b) per field: (value, 0) for varints, else payload [a, b)."""
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _read_varint(buf, pos, end)
            yield number, wire_type, value, 0
            continue
        if wire_type == _LENGTH_DELIMITED:
            size, pos = _read_varint(buf, pos, end)
        elif wire_type == _FIXED64:
            size = 8
        elif wire_type == _FIXED32:
            size = 4
        else:
            raise ValueError(f"unsupported wire type {wire_type} (field {number})")
        if pos + size > end:
            raise ValueError(f"field {number} runs past the end of its message")
        yield number, wire_type, pos, pos + size
        pos += size
    if pos != end:
        raise ValueError("a field runs past the end of its message")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _decode_list(buf: bytes, start: int, end: int, kind: int) -> FeatureValue:
    """The values of a BytesList (kind 1), FloatList (2) or Int64List (3) message."""
    if kind == 1:
        return [buf[a:b] for number, wire, a, b in _fields(buf, start, end) if number == 1]
    chunks: list[np.ndarray] = []
    for number, wire, a, b in _fields(buf, start, end):
        if number != 1:
            continue
        if kind == 2 and wire in (_LENGTH_DELIMITED, _FIXED32):  # packed, or one float
            if (b - a) % 4:
                raise ValueError(f"packed float list of {b - a} bytes, not a multiple of 4")
            chunks.append(np.frombuffer(buf, dtype="<f4", count=(b - a) // 4, offset=a))
        elif kind == 3 and wire == _VARINT:  # one int64
            chunks.append(np.array([_signed64(a)], dtype=np.int64))
        elif kind == 3 and wire == _LENGTH_DELIMITED:  # packed
            values, pos = [], a
            while pos < b:
                value, pos = _read_varint(buf, pos, b)
                values.append(_signed64(value))
            chunks.append(np.array(values, dtype=np.int64))
        else:
            raise ValueError(f"wire type {wire} in a {'float' if kind == 2 else 'int64'} list")
    dtype = np.float32 if kind == 2 else np.int64
    return np.concatenate(chunks).astype(dtype) if chunks else np.zeros(0, dtype=dtype)


def _decode_feature(buf: bytes, start: int, end: int) -> FeatureValue:
    """A Feature's value; a repeated kind merges (concatenates), another kind replaces it."""
    value: FeatureValue = []
    value_kind = 0
    for number, wire, a, b in _fields(buf, start, end):
        if number not in (1, 2, 3):
            continue
        if wire != _LENGTH_DELIMITED:
            raise ValueError(f"Feature field {number} has wire type {wire}, expected 2")
        part = _decode_list(buf, a, b, number)
        if number == value_kind and number == 1:
            value = [*value, *part]
        elif number == value_kind:
            value = np.concatenate([value, part])
        else:
            value, value_kind = part, number
    return value


def _decode_features(buf: bytes, start: int, end: int, out: dict[str, FeatureValue]) -> None:
    """Adds the entries of a Features message to out (later entries win, as in protobuf maps)."""
    for number, wire, a, b in _fields(buf, start, end):
        if number != 1:
            continue
        if wire != _LENGTH_DELIMITED:
            raise ValueError(f"Features field 1 has wire type {wire}, expected 2")
        key, value = "", []
        for entry_number, entry_wire, c, d in _fields(buf, a, b):
            if entry_number == 1 and entry_wire == _LENGTH_DELIMITED:
                key = buf[c:d].decode("utf-8")
            elif entry_number == 2 and entry_wire == _LENGTH_DELIMITED:
                value = _decode_feature(buf, c, d)
        out[key] = value


def decode_example(data: bytes | bytearray | memoryview) -> dict[str, FeatureValue]:
    """A serialized tf.train.Example as {key: list of bytes | float32 array | int64 array}."""
    buf = bytes(data)
    features: dict[str, FeatureValue] = {}
    for number, wire, a, b in _fields(buf, 0, len(buf)):
        if number == 1:
            if wire != _LENGTH_DELIMITED:
                raise ValueError(f"Example field 1 has wire type {wire}, expected 2")
            _decode_features(buf, a, b, features)
    return features


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _encode_feature(key: str, value) -> bytes:
    """A Feature message: bytes-likes -> BytesList, floats -> FloatList, ints/bools -> Int64List."""
    if isinstance(value, bytes | bytearray | memoryview):
        value = [value]
    if (
        isinstance(value, list | tuple)
        and value
        and isinstance(value[0], bytes | bytearray | memoryview)
    ):
        if not all(isinstance(item, bytes | bytearray | memoryview) for item in value):
            raise TypeError(f"feature {key!r} mixes bytes with other values")
        return _delimited(1, b"".join(_delimited(1, bytes(item)) for item in value))
    array = np.asarray(value)
    if array.ndim > 1:
        array = array.reshape(-1)
    if array.dtype.kind == "f" or array.size == 0:
        return _delimited(2, _delimited(1, array.astype("<f4").reshape(-1).tobytes()))
    if array.dtype.kind in "iub":
        if array.dtype.kind == "u" and array.size and int(array.max()) >= 1 << 63:
            raise ValueError(f"feature {key!r} has values beyond the int64 range")
        packed = b"".join(_varint(int(item) & _MASK64) for item in array.reshape(-1).tolist())
        return _delimited(3, _delimited(1, packed))
    raise TypeError(f"feature {key!r} has values of type {array.dtype}; use bytes, floats or ints")


def encode_example(features: Mapping[str, object]) -> bytes:
    """A serialized tf.train.Example: bytes -> BytesList, floats -> FloatList, ints -> Int64List."""
    entries = b"".join(
        _delimited(1, _delimited(1, key.encode("utf-8")) + _delimited(2, _encode_feature(key, v)))
        for key, v in features.items()
    )
    return _delimited(1, entries)


# ----------------------------------------------------------------------------------------------
# The push dataset
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class PushData:
    """Pushing sequences: uint8 RGB frames, float32 actions and states, and where they came from."""

    frames_NxTxHxWx3: np.ndarray
    actions_NxTxA: np.ndarray
    states_NxTxS: np.ndarray
    source: str

    def __post_init__(self) -> None:
        frames = self.frames_NxTxHxWx3
        if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be uint8 (N, T, H, W, 3), got {frames.dtype} {frames.shape}"
            )
        for name in ("actions_NxTxA", "states_NxTxS"):
            array = getattr(self, name)
            if array.ndim != 3 or array.shape[:2] != frames.shape[:2]:
                raise ValueError(
                    f"{name} has shape {array.shape}, expected {frames.shape[:2]} + (dim,)"
                )

    @property
    def num_sequences(self) -> int:
        """N, the number of sequences."""
        return int(self.frames_NxTxHxWx3.shape[0])

    @property
    def num_frames(self) -> int:
        """T, the number of time steps per sequence."""
        return int(self.frames_NxTxHxWx3.shape[1])


def _placement_hint(split: str) -> str:
    prefix = SPLIT_PREFIXES[split]
    return (
        f"set data.dir to a folder holding {prefix}*.tfrecord files (or the dataset's "
        f"{prefix}.tfrecord-NNNNN-of-{NUM_SHARDS[split]:05d} shards) directly, in push/, in "
        f"{prefix}/ or in push/{prefix}/; they are at {DOWNLOAD_URL}{prefix}/ (see {DATASET_URL})"
    )


def find_push_files(data_dir: str | os.PathLike, split: str) -> list[str]:
    """The sorted files of a split: the first of data_dir, push/, prefix/, push/prefix/ holding any."""
    sources.check_choice("split", split, SPLITS)
    data_dir = os.fspath(data_dir) if data_dir is not None else ""
    if not data_dir:
        raise DataError(f"data.dir is not set; {_placement_hint(split)}")
    if not os.path.isdir(data_dir):
        problem = "is a file, not a folder" if os.path.exists(data_dir) else "does not exist"
        raise DataError(f"data.dir={data_dir} {problem}; {_placement_hint(split)}")
    prefix = SPLIT_PREFIXES[split]
    for folder in (
        data_dir,
        os.path.join(data_dir, "push"),
        os.path.join(data_dir, prefix),
        os.path.join(data_dir, "push", prefix),
    ):
        if not os.path.isdir(folder):
            continue
        files = sorted(
            os.path.join(folder, name)
            for name in os.listdir(folder)
            if name.startswith(prefix)
            and not name.endswith(".part")
            and os.path.isfile(os.path.join(folder, name))
        )
        if files:
            return files
    raise DataError(f"data.dir={data_dir} has no {prefix}* files; {_placement_hint(split)}")


def _check_positive_int(name: str, value: object, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"{name}={value!r} is not supported; use a positive integer")


def square_frame(image, image_side: int) -> np.ndarray:
    """A PIL image centre-cropped to a square and resized (PIL BICUBIC) to uint8 (side, side, 3)."""
    from PIL import Image

    width, height = image.size
    side = min(width, height)
    # Offsets as tf.image.resize_image_with_crop_or_pad: (size - side) // 2 (recalled; exact for
    # 640x512, where the margin, 64 per side, is even).
    left, top = (width - side) // 2, (height - side) // 2
    # Crop first: resize(box=...) would let the filter reach pixels outside the box.
    square = image.convert("RGB").crop((left, top, left + side, top + side))
    resized = square.resize((image_side, image_side), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)


def _decode_frame(data: bytes, image_side: int, where: str) -> np.ndarray:
    """One encoded (JPEG or PNG) frame as a uint8 (side, side, 3) square."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return square_frame(image, image_side)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(
            f"{where} is not a readable image ({type(err).__name__}: {sources.first_line(err)}); "
            f"download the file again from {DOWNLOAD_URL}"
        ) from err


def _float_step(features: dict, key: str, where: str) -> np.ndarray:
    value = features.get(key)
    if not isinstance(value, np.ndarray) or value.dtype != np.float32:
        problem = "has no feature" if value is None else "has a non-float feature"
        raise DataError(f"{where} {problem} {key}; it is not a push dataset record")
    return value


def _parse_sequence(
    record: bytes, num_frames: int, image_side: int, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames TxHxWx3 uint8, actions TxA, states TxS) of the first num_frames steps of a record."""
    try:
        features = decode_example(record)
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(
            f"{where} is not a tf.train.Example ({err}); download the file again from "
            f"{DOWNLOAD_URL}"
        ) from err
    num_steps = 0
    while IMAGE_KEY.format(num_steps) in features:
        num_steps += 1
    if num_steps < num_frames:
        if num_steps == 0:
            raise DataError(
                f"{where} has no feature {IMAGE_KEY.format(0)}; it is not a push dataset record"
            )
        raise DataError(
            f"{where} has {num_steps} time steps ({IMAGE_KEY.format('i')} for i < {num_steps}), "
            f"fewer than num_frames={num_frames}; lower num_frames"
        )
    frames, actions, states = [], [], []
    for step in range(num_frames):
        encoded = features[IMAGE_KEY.format(step)]
        if not isinstance(encoded, list) or len(encoded) != 1:
            raise DataError(f"{where} feature {IMAGE_KEY.format(step)} is not one encoded image")
        frames.append(_decode_frame(encoded[0], image_side, f"{where} step {step} image"))
        actions.append(_float_step(features, ACTION_KEY.format(step), where))
        states.append(_float_step(features, STATE_KEY.format(step), where))
    for name, rows in (("action", actions), ("state", states)):
        if len({len(row) for row in rows}) != 1:
            raise DataError(f"{where} has {name}s of different sizes across time steps")
    return np.stack(frames), np.stack(actions), np.stack(states)


def _describe_files(files: Sequence[str]) -> str:
    folder = os.path.dirname(files[0])
    names = [os.path.basename(path) for path in files]
    shown = ", ".join(names) if len(names) <= 3 else f"{names[0]} ... {names[-1]}"
    return f"{len(files)} file{'s' * (len(files) != 1)} in {folder} ({shown})"


def load_push_sequences(
    data_dir: str | os.PathLike,
    split: str,
    *,
    num_frames: int = NUM_FRAMES,
    image_side: int = IMAGE_SIDE,
    max_sequences: int | None = None,
    num_threads: int = 1,
) -> PushData:
    """The first num_frames steps of each sequence of a split, frames cropped and resized."""
    sources.check_choice("split", split, SPLITS)
    _check_positive_int("num_frames", num_frames)
    _check_positive_int("image_side", image_side)
    _check_positive_int("max_sequences", max_sequences, allow_none=True)
    _check_positive_int("num_threads", num_threads)
    files = find_push_files(data_dir, split)
    to_read: list[str] = []
    total = 0
    for path in files:
        if max_sequences is not None and total >= max_sequences:
            break
        total += count_tfrecords(path)
        to_read.append(path)
    num = total if max_sequences is None else min(total, int(max_sequences))
    if num == 0:
        raise DataError(f"{_describe_files(files)} hold no records; {_placement_hint(split)}")

    frames_NxTxHxWx3 = np.empty((num, num_frames, image_side, image_side, 3), dtype=np.uint8)
    actions: list[np.ndarray] = []
    states: list[np.ndarray] = []

    def records() -> Iterator[tuple[bytes, str]]:
        read = 0
        for path in to_read:
            for index, record in enumerate(read_tfrecords(path)):
                if read == num:
                    return
                yield record, f"{path} record {index}"
                read += 1

    def parse(item: tuple[bytes, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _parse_sequence(item[0], num_frames, image_side, item[1])

    def store(parsed: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        for frames_TxHxWx3, action_TxA, state_TxS in parsed:
            frames_NxTxHxWx3[len(actions)] = frames_TxHxWx3
            actions.append(action_TxA)
            states.append(state_TxS)

    # Threads overlap JPEG decoding and resizing (PIL releases the GIL) across records.
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_threads) as pool:
        pending: list[tuple[bytes, str]] = []
        for item in records():
            pending.append(item)
            if len(pending) == num_threads * _RECORDS_PER_TASK:
                store(pool.map(parse, pending))
                pending = []
        store(pool.map(parse, pending))
    if len(actions) != num:
        raise DataError(
            f"{_describe_files(to_read)} hold {len(actions)} records, not the {num} their headers "
            "count; the files changed while being read"
        )
    for name, rows in (("action", actions), ("state", states)):
        sizes = sorted({row.shape[1] for row in rows})
        if len(sizes) != 1:
            raise DataError(f"the {split} records have {name}s of sizes {sizes}; expected one size")
    limit = f", the first {num:,}" if max_sequences is not None else ""
    return PushData(
        frames_NxTxHxWx3=frames_NxTxHxWx3,
        actions_NxTxA=np.stack(actions).astype(np.float32),
        states_NxTxS=np.stack(states).astype(np.float32),
        source=(
            f"push dataset {split} ({SPLIT_PREFIXES[split]}): {num:,} sequences{limit}, first "
            f"{num_frames} of their frames centre-cropped and resized to {image_side}x{image_side} "
            f"(PIL bicubic), from {_describe_files(to_read)}"
        ),
    )


def write_push_tfrecord(
    path: str | os.PathLike,
    frames_NxTxHxWx3: np.ndarray,
    actions_NxTxA: np.ndarray,
    states_NxTxS: np.ndarray,
    *,
    quality: int = 95,
) -> int:
    """Writes sequences as push-dataset records with JPEG frames of any size; returns N (tests)."""
    # One tf.train.Example per sequence with, for every step i, move/{i}/image/encoded (one
    # JPEG, 4:4:4 chroma, at the given quality), move/{i}/commanded_pose/vec_pitch_yaw (the
    # action) and move/{i}/endeffector/vec_pitch_yaw (the state) as float lists. The real records
    # hold 640x512 frames, 5-float actions and states, and 3 more features per step (names not
    # verified) that load_push_sequences ignores and this writer leaves out.
    from PIL import Image

    frames = np.asarray(frames_NxTxHxWx3)
    actions = np.asarray(actions_NxTxA, dtype=np.float32)
    states = np.asarray(states_NxTxS, dtype=np.float32)
    if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (N, T, H, W, 3), got {frames.dtype} {frames.shape}")
    for name, array in (("actions", actions), ("states", states)):
        if array.ndim != 3 or array.shape[:2] != frames.shape[:2]:
            raise ValueError(
                f"{name} has shape {array.shape}, expected {frames.shape[:2]} + (dim,)"
            )

    def jpeg(frame_HxWx3: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(frame_HxWx3, mode="RGB").save(
            buffer, format="JPEG", quality=int(quality), subsampling=0
        )
        return buffer.getvalue()

    def example(n: int) -> bytes:
        features: dict[str, object] = {}
        for step in range(frames.shape[1]):
            features[IMAGE_KEY.format(step)] = [jpeg(frames[n, step])]
            features[ACTION_KEY.format(step)] = actions[n, step]
            features[STATE_KEY.format(step)] = states[n, step]
        return encode_example(features)

    return write_tfrecords(path, (example(n) for n in range(frames.shape[0])))


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------


def push_batches(
    data: PushData,
    *,
    batch_size: int,
    seed: int,
    process_rows: slice | None = None,
    shuffle: bool = True,
    float_frames: bool = False,
) -> EpochIterator:
    """A resumable iterator of {"frames", "actions", "states"} batches of whole sequences."""
    # frames: uint8 (B, T, H, W, 3), or float32 in [0, 1] (divided by 255, as Finn's loader does)
    # with float_frames; actions and states: float32 (B, T, dim). process_rows: this process's
    # rows of the global batch (default: all of it). get_state/set_state resume it exactly.
    rows_of_process = slice(None) if process_rows is None else process_rows

    def make_batch(indices: np.ndarray, rows: slice, rng: np.random.Generator) -> dict:
        del rng  # no per-batch randomness: the order is the iterator's permutation
        chosen = indices[rows]
        frames = data.frames_NxTxHxWx3[chosen]
        if float_frames:
            frames = frames.astype(np.float32) / np.float32(255.0)
        return {
            "frames": frames,
            "actions": data.actions_NxTxA[chosen],
            "states": data.states_NxTxS[chosen],
        }

    return EpochIterator(
        num_examples=data.num_sequences,
        global_batch_size=int(batch_size),
        make_batch=make_batch,
        seed=int(seed),
        process_rows=rows_of_process,
        shuffle=shuffle,
    )
