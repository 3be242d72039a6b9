"""Tests for deepgen.core.tensorboard and deepgen.core.metrics."""

import glob
import io
import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from deepgen.core.metrics import MetricWriter, Progress, format_duration, read_metrics
from deepgen.core.tensorboard import (
    EventFileWriter,
    crc32c,
    encode_event,
    frame_record,
    masked_crc32c,
    read_events,
)

# --------------------------------------------------------------------------- CRC32C


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0),
        (b"123456789", 0xE3069283),
        (bytes(32), 0x8A9136AA),
        (b"\xff" * 32, 0x62A8AB43),
    ],
)
def test_crc32c_known_vectors(data, expected):
    assert crc32c(data) == expected


def test_masked_crc_formula():
    crc = crc32c(b"123456789")
    expected = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32
    assert masked_crc32c(b"123456789") == expected


# --------------------------------------------------------------------------- protobuf encoding


def test_encode_event_exact_bytes():
    # Event{wall_time=2.0, step=1, summary{value{tag="a", simple_value=1.0}}}, by hand:
    #   wall_time: key (1 << 3 | 1 fixed64) = 0x09, then 2.0 as little-endian double
    #              (0x4000000000000000) = 00 00 00 00 00 00 00 40
    #   step:      key (2 << 3 | 0 varint) = 0x10, varint 1 = 0x01
    #   Value:     tag key (1 << 3 | 2) = 0x0A, length 0x01, b"a" = 0x61;
    #              simple_value key (2 << 3 | 5 fixed32) = 0x15, 1.0f LE = 00 00 80 3F
    #              -> 8 bytes
    #   Summary:   value key 0x0A, length 0x08, Value -> 10 bytes
    #   summary:   key (5 << 3 | 2) = 0x2A, length 0x0A, Summary
    expected = bytes.fromhex("09 0000000000000040 1001 2A0A 0A08 0A0161 150000803F")
    assert encode_event(wall_time=2.0, step=1, scalars={"a": 1.0}) == expected


def test_encode_event_file_version_and_multibyte_varint():
    # step 300 = 0b10_0101100 -> varint AC 02; file_version key (3 << 3 | 2) = 0x1A.
    expected = bytes.fromhex("09 0000000000000000 10AC02 1A03") + b"v:2"
    assert encode_event(wall_time=0.0, step=300, file_version="v:2") == expected


def test_encode_event_parses_with_protobuf_library():
    """Cross-check against the real protobuf runtime, if installed, with a dynamic Event type."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="ev.proto", package="t", syntax="proto3")
    value = proto.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=field.TYPE_STRING)
    value.field.add(name="simple_value", number=2, type=field.TYPE_FLOAT)
    summary = proto.message_type.add(name="Summary")
    summary.field.add(
        name="value",
        number=1,
        type=field.TYPE_MESSAGE,
        type_name=".t.Value",
        label=field.LABEL_REPEATED,
    )
    event = proto.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=field.TYPE_DOUBLE)
    event.field.add(name="step", number=2, type=field.TYPE_INT64)
    event.field.add(name="file_version", number=3, type=field.TYPE_STRING)
    event.field.add(name="summary", number=5, type=field.TYPE_MESSAGE, type_name=".t.Summary")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    Event = message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))

    data = encode_event(wall_time=12.5, step=-7, scalars={"loss": 0.25, "acc/top1": 0.5})
    message = Event()
    message.ParseFromString(data)
    assert (message.wall_time, message.step) == (12.5, -7)
    assert [(v.tag, v.simple_value) for v in message.summary.value] == [
        ("loss", 0.25),
        ("acc/top1", 0.5),
    ]
    assert message.SerializeToString() == data


def test_frame_record_layout():
    record = frame_record(b"abc")
    assert record[:8] == struct.pack("<Q", 3)
    assert record[8:12] == struct.pack("<I", masked_crc32c(struct.pack("<Q", 3)))
    assert record[12:15] == b"abc"
    assert record[15:] == struct.pack("<I", masked_crc32c(b"abc"))


# --------------------------------------------------------------------------- event files


def test_event_file_round_trip(tmp_path):
    writer = EventFileWriter(str(tmp_path))
    written = {0: {"loss": 1.1, "lr": 3e-4}, 10: {"loss": 0.7}, 20: {"loss": 0.123456789}}
    for step, scalars in written.items():
        writer.add_scalars(step, scalars, wall_time=100.0 + step)
    writer.close()

    (path,) = glob.glob(str(tmp_path / "events.out.tfevents.*.deepgen"))
    name = os.path.basename(path).split(".")
    assert name[3].isdigit() and name[-2] == str(os.getpid())
    events = read_events(path)
    assert events[0]["file_version"] == "brain.Event:2"
    assert "scalars" not in events[0]
    assert [e["step"] for e in events[1:]] == [0, 10, 20]
    for event, (step, scalars) in zip(events[1:], written.items(), strict=True):
        assert event["wall_time"] == 100.0 + step
        assert event["scalars"].keys() == scalars.keys()
        for tag, value in scalars.items():
            assert event["scalars"][tag] == float(np.float32(value))


def test_two_writers_in_same_second_do_not_clobber(tmp_path):
    with EventFileWriter(str(tmp_path)) as first, EventFileWriter(str(tmp_path)) as second:
        first.add_scalars(1, {"a": 1.0})
        second.add_scalars(2, {"a": 2.0})
    assert first.path != second.path
    assert read_events(first.path)[1]["step"] == 1
    assert read_events(second.path)[1]["step"] == 2


@pytest.mark.parametrize("where", ["length", "length_crc", "data", "data_crc"])
def test_read_events_detects_corruption(tmp_path, where):
    with EventFileWriter(str(tmp_path)) as writer:
        writer.add_scalars(5, {"loss": 0.5})
    data = bytearray(Path(writer.path).read_bytes())
    first_len = struct.unpack("<Q", data[:8])[0]
    second = 12 + first_len + 4  # Offset of the second record (the scalar event).
    second_len = struct.unpack("<Q", data[second : second + 8])[0]
    offset = {
        "length": second,
        "length_crc": second + 9,
        "data": second + 12 + second_len // 2,
        "data_crc": second + 12 + second_len + 1,
    }[where]
    data[offset] ^= 0x01
    Path(writer.path).write_bytes(data)
    with pytest.raises(ValueError, match="CRC mismatch"):
        read_events(writer.path)


def test_read_events_rejects_truncated_file(tmp_path):
    with EventFileWriter(str(tmp_path)) as writer:
        writer.add_scalars(5, {"loss": 0.5})
    data = Path(writer.path).read_bytes()
    Path(writer.path).write_bytes(data[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_events(writer.path)


# --------------------------------------------------------------------------- MetricWriter


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
    workdir = str(tmp_path / "run")
    with MetricWriter(workdir, enabled=True) as writer:
        writer.write(1, {"loss": 2.5, "lr": np.float32(0.001)})
        writer.write(2, {"loss": float("nan"), "grad_norm": float("inf")})
        writer.write(2, {"loss": 1.5}, split="eval")

    lines = Path(workdir, "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "split": "train", "loss": 2.5, "lr": pytest.approx(0.001)},
        {"step": 2, "split": "train", "loss": None, "grad_norm": None},
        {"step": 2, "split": "eval", "loss": 1.5},
    ]
    assert "NaN" not in lines[1] and "null" in lines[1]
    assert read_metrics(workdir)[2] == {"step": 2, "split": "eval", "loss": 1.5}

    (train_file,) = glob.glob(os.path.join(workdir, "tensorboard", "train", "events.out.*"))
    (eval_file,) = glob.glob(os.path.join(workdir, "tensorboard", "eval", "events.out.*"))
    train_events = read_events(train_file)[1:]
    assert [e["step"] for e in train_events] == [1, 2]
    assert train_events[0]["scalars"]["loss"] == 2.5
    assert math.isnan(train_events[1]["scalars"]["loss"])  # TensorBoard keeps NaN as is.
    assert read_events(eval_file)[1]["scalars"] == {"loss": 1.5}


def test_metric_writer_appends_on_resume(tmp_path):
    with MetricWriter(str(tmp_path), enabled=True) as writer:
        writer.write(1, {"loss": 3.0})
        writer.write(2, {"loss": 2.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "spl')  # A line cut short by a crash is dropped on resume.
    with MetricWriter(str(tmp_path), enabled=True) as writer:
        writer.write(3, {"loss": 1.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(str(tmp_path))] == [
        (1, 3.0),
        (2, 2.0),
        (3, 1.0),
    ]


def test_read_metrics_tolerates_partial_final_line_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "split": "train"}\n{"step": 2')
    assert read_metrics(str(tmp_path)) == [{"step": 1, "split": "train"}]
    path.write_text('{"step": 1\n{"step": 2, "split": "train"}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:1"):
        read_metrics(str(tmp_path))


def test_metric_writer_disabled_creates_nothing(tmp_path):
    workdir = tmp_path / "run"
    with MetricWriter(str(workdir), enabled=False) as writer:
        writer.write(1, {"loss": 1.0})
        writer.write(1, {"loss": 1.0}, split="eval")
        writer.flush()
    assert not workdir.exists()
    assert list(tmp_path.iterdir()) == []


def test_metric_writer_rejects_reserved_names(tmp_path):
    with MetricWriter(str(tmp_path), enabled=True) as writer, pytest.raises(ValueError):
        writer.write(1, {"step": 1.0})


# --------------------------------------------------------------------------- Progress


class FakeClock:
    """A clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fake_progress(
    total_steps: int, examples_per_step: int, *, use_bar: bool
) -> tuple[Progress, FakeClock, io.StringIO]:
    """A Progress from step 0 on a fake clock, writing to a string; (progress, clock, stream)."""
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress(
        total_steps=total_steps,
        start_step=0,
        examples_per_step=examples_per_step,
        stream=stream,
        use_bar=use_bar,
        clock=clock,
    )
    return progress, clock, stream


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45.4, "45s"), (59.6, "1m00s"), (308, "5m08s"), (7380, "2h03m"), (-3, "0s")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_format_duration_unknown():
    assert format_duration(math.inf) == "?"


def test_progress_line_mode_rates_and_eta():
    progress, clock, stream = _fake_progress(5000, 512, use_bar=False)
    clock.now += 30.0  # The first, compiling step: excluded from the rate by mark().
    progress.mark(1)
    clock.now += 95.92  # 1199 steps in 95.92 s = 12.5 steps/s.
    text = progress.update(1200, {"loss": 0.123456, "acc": 0.5})
    assert text == "step 1200/5000 | loss 0.1235 | acc 0.5 | 12.5 steps/s | 6,400 ex/s | ETA 5m04s"
    assert stream.getvalue() == text + "\n"

    clock.now += 10.0  # Next interval only: 200 steps in 10 s.
    text = progress.update(1400, {"loss": 0.1})
    assert text == "step 1400/5000 | loss 0.1 | 20 steps/s | 10,240 ex/s | ETA 3m00s"
    progress.close()
    assert stream.getvalue().count("\n") == 2


def test_progress_without_elapsed_time_omits_rates():
    clock = FakeClock()
    progress = Progress(
        total_steps=10, start_step=0, examples_per_step=1, stream=io.StringIO(), clock=clock
    )
    assert progress.update(0, {}) == "step 0/10"


def test_progress_bar_mode():
    progress, clock, stream = _fake_progress(100, 8, use_bar=True)
    clock.now += 5.0
    first = progress.update(25, {"loss": 1.0})
    assert (
        first == "[#####...............]  25% step 25/100 | loss 1 | 5 steps/s | 40 ex/s | ETA 15s"
    )
    clock.now += 1.0
    second = progress.update(30, {})
    assert second.startswith("[######..............]  30% step 30/100 | 5 steps/s")
    progress.close()
    padding = " " * (len(first) - len(second))
    assert stream.getvalue() == "\r" + first + "\r" + second + padding + "\n"


def test_progress_defaults_to_bar_only_on_a_tty():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert Progress(total_steps=1, start_step=0, examples_per_step=1, stream=Tty()).use_bar
    assert not Progress(
        total_steps=1, start_step=0, examples_per_step=1, stream=io.StringIO()
    ).use_bar
