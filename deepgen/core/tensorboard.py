"""TensorBoard event files written and read in pure Python, without TensorFlow or tensorboard.

An event file is a sequence of TFRecords, each holding one hand-encoded ``tensorflow.Event``
protobuf. Only the fields needed for scalar summaries are encoded:

- ``Event``: ``wall_time = 1`` (double), ``step = 2`` (int64), ``file_version = 3`` (string),
  ``summary = 5`` (Summary).
- ``Summary``: ``value = 1`` (repeated Value).
- ``Value``: ``tag = 1`` (string), ``simple_value = 2`` (float).
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any, BinaryIO

FILE_VERSION = "brain.Event:2"
_MASK_DELTA = 0xA282EAD8
_UINT32 = 0xFFFFFFFF
_UINT64 = 0xFFFFFFFFFFFFFFFF
_FLOAT32_MAX = 3.4028234663852886e38

# Protobuf wire types.
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


def _make_crc32c_table() -> tuple[int, ...]:
    """Build the 256-entry table for the reflected Castagnoli polynomial 0x82F63B78."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _make_crc32c_table()


def crc32c(data: bytes) -> int:
    """Return the CRC32C (Castagnoli) checksum of ``data``."""
    crc = _UINT32
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _UINT32


def masked_crc32c(data: bytes) -> int:
    """Return the TFRecord masked CRC32C of ``data``."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _UINT32


# --------------------------------------------------------------------------- protobuf encoding


def _varint(value: int) -> bytes:
    """Encode a non-negative integer (or an int64, as two's complement) as a protobuf varint."""
    value &= _UINT64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    """Encode a field key."""
    return _varint((field << 3) | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
    """Encode a length-delimited field (string, bytes or sub-message)."""
    return _key(field, _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _to_float32(value: float) -> float:
    """Clamp finite values beyond the float32 range to +-inf, as a float32 cast would."""
    if math.isfinite(value) and abs(value) > _FLOAT32_MAX:
        return math.copysign(math.inf, value)
    return value


def _encode_value(tag: str, simple_value: float) -> bytes:
    """Encode a ``Summary.Value`` holding a scalar."""
    packed = struct.pack("<f", _to_float32(float(simple_value)))
    return _length_delimited(1, tag.encode("utf-8")) + _key(2, _FIXED32) + packed


def encode_event(
    *,
    wall_time: float,
    step: int,
    file_version: str | None = None,
    scalars: Mapping[str, float] | None = None,
) -> bytes:
    """Encode an ``Event`` protobuf; wall_time and step are always written, in field order."""
    out = _key(1, _FIXED64) + struct.pack("<d", float(wall_time))
    out += _key(2, _VARINT) + _varint(int(step))
    if file_version is not None:
        out += _length_delimited(3, file_version.encode("utf-8"))
    if scalars is not None:
        summary = b"".join(
            _length_delimited(1, _encode_value(tag, value)) for tag, value in scalars.items()
        )
        out += _length_delimited(5, summary)
    return out


def frame_record(data: bytes) -> bytes:
    """Frame ``data`` as a TFRecord: length, masked CRC of length, data, masked CRC of data."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


# --------------------------------------------------------------------------- protobuf decoding


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a varint at ``pos``; return (value, new position)."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint in event protobuf")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint too long in event protobuf")


def _iter_fields(buf: bytes):
    """Yield (field number, wire type, value) for each field of a protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire_type == _FIXED64:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire_type == _FIXED32:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        if pos > len(buf):
            raise ValueError("truncated field in event protobuf")
        yield field, wire_type, value


def _decode_summary(buf: bytes) -> dict[str, float]:
    """Decode the scalar values of a ``Summary``; non-scalar values are skipped."""
    scalars: dict[str, float] = {}
    for field, wire_type, value_buf in _iter_fields(buf):
        if field != 1 or wire_type != _LENGTH_DELIMITED:
            continue
        tag, simple_value = None, None
        for vfield, vwire, value in _iter_fields(value_buf):
            if vfield == 1 and vwire == _LENGTH_DELIMITED:
                tag = value.decode("utf-8")
            elif vfield == 2 and vwire == _FIXED32:
                simple_value = struct.unpack("<f", value)[0]
        if tag is not None and simple_value is not None:
            scalars[tag] = simple_value
    return scalars


def decode_event(buf: bytes) -> dict[str, Any]:
    """Decode an ``Event`` into {"wall_time", "step"} plus "file_version" and/or "scalars"."""
    event: dict[str, Any] = {"wall_time": 0.0, "step": 0}
    for field, wire_type, value in _iter_fields(buf):
        if field == 1 and wire_type == _FIXED64:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif field == 2 and wire_type == _VARINT:
            event["step"] = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 3 and wire_type == _LENGTH_DELIMITED:
            event["file_version"] = value.decode("utf-8")
        elif field == 5 and wire_type == _LENGTH_DELIMITED:
            event.setdefault("scalars", {}).update(_decode_summary(value))
    return event


# --------------------------------------------------------------------------- files


class EventFileWriter:
    """Appends scalar summaries to a new TensorBoard event file in ``logdir``."""

    def __init__(self, logdir: str) -> None:
        """Create ``logdir/events.out.tfevents.{time}.{host}.{pid}.deepgen``; write the header."""
        os.makedirs(logdir, exist_ok=True)
        base = os.path.join(
            logdir,
            f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.deepgen",
        )
        # Two writers in one process and second (e.g. a quick resume) would share a name: the
        # later one gets a numeric suffix rather than truncating the earlier file.
        self.path = base
        suffix = 0
        while True:
            try:
                self._file: BinaryIO | None = open(self.path, "xb")  # noqa: SIM115
                break
            except FileExistsError:
                suffix += 1
                self.path = f"{base}.{suffix}"
        self._write(encode_event(wall_time=time.time(), step=0, file_version=FILE_VERSION))
        self.flush()

    def _write(self, data: bytes) -> None:
        """Write one framed record."""
        if self._file is None:
            raise ValueError(f"event file {self.path} is closed")
        self._file.write(frame_record(data))

    def add_scalars(
        self, step: int, scalars: Mapping[str, float], wall_time: float | None = None
    ) -> None:
        """Write one event holding a scalar summary per (tag, value) in ``scalars``."""
        if not scalars:
            return
        values = {str(tag): float(value) for tag, value in scalars.items()}
        wall_time = time.time() if wall_time is None else wall_time
        self._write(encode_event(wall_time=wall_time, step=step, scalars=values))

    def flush(self) -> None:
        """Flush buffered events to disk."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Flush and close the file; further calls do nothing."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> EventFileWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_events(path: str) -> list[dict[str, Any]]:
    """Read all events of an event file, checking both CRCs of every record (ValueError if bad)."""
    with open(path, "rb") as f:
        data = f.read()
    events = []
    pos = 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError(f"{path}: truncated record header at byte {pos}")
        length_bytes = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        if length_crc != masked_crc32c(length_bytes):
            raise ValueError(f"{path}: length CRC mismatch in record at byte {pos}")
        start, end = pos + 12, pos + 12 + length
        if end + 4 > len(data):
            raise ValueError(f"{path}: truncated record at byte {pos}")
        payload = data[start:end]
        (data_crc,) = struct.unpack("<I", data[end : end + 4])
        if data_crc != masked_crc32c(payload):
            raise ValueError(f"{path}: data CRC mismatch in record at byte {pos}")
        events.append(decode_event(payload))
        pos = end + 4
    return events
