"""The wire log: round trips, torn tails, bit flips, resynchronisation, appending, decoding."""

from __future__ import annotations

import os
import stat
import struct
import threading
import zlib
from pathlib import Path

import pytest
import torch

from splitnn.attacker.intercept import stack_records
from splitnn.common.codec import tensor_to_proto
from splitnn.common.wirelog import (
    MAGIC,
    SYNC,
    WireLogError,
    WireLogWriter,
    read_wirelog,
)
from splitnn.proto import splitnn_pb2 as pb

FRAME_HEADER = 12  # sync marker, length, crc


def make_record(
    batch: int, *, rows: int = 3, phase: str = "eval", split: str = "attack", indices: bool = True
) -> pb.TapRecord:
    """A record whose activations encode its batch number, so decoding can be checked exactly."""
    generator = torch.Generator().manual_seed(batch)
    cut = torch.rand((rows, 500), generator=generator) * 2 - 1
    cut[:, 0] = float(batch)
    record = pb.TapRecord(
        step=pb.StepId(run="r", epoch=1, batch=batch),
        phase=phase,
        split=split,
        activations=tensor_to_proto(cut),
        labels=tensor_to_proto(torch.arange(rows, dtype=torch.int64) % 10),
        received_at=1000.0 + batch,
    )
    if indices:
        record.indices.CopyFrom(
            tensor_to_proto(torch.arange(rows, dtype=torch.int64) + 100 * batch)
        )
    return record


def write_log(path: Path, records: list[pb.TapRecord]) -> list[int]:
    """Writes a log; returns the file offset where each record's frame starts."""
    starts = []
    with WireLogWriter(path, header={"run": "r", "cut_shape": [500]}) as writer:
        for record in records:
            starts.append(path.stat().st_size)
            writer.write(record)
    return starts


def flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def batches(records: list[pb.TapRecord]) -> list[int]:
    return [r.step.batch for r in records]


def test_round_trip_keeps_header_and_every_record(tmp_path: Path) -> None:
    path = tmp_path / "wire.log"
    records = [make_record(i, rows=1 + i % 4) for i in range(20)]
    records.append(pb.TapRecord(phase="train", split="train"))  # empty tensors
    records.append(make_record(99, rows=0))

    write_log(path, records)
    log = read_wirelog(path)

    assert path.read_bytes().startswith(MAGIC)
    assert log.problem is None
    assert log.header["run"] == "r" and log.header["cut_shape"] == [500]
    assert isinstance(log.header["created_at"], float)
    assert log.records == records


@pytest.mark.parametrize("into_frame", [1, 3, 6, FRAME_HEADER, FRAME_HEADER + 1, -1])
def test_truncated_tail_keeps_complete_records(tmp_path: Path, into_frame: int) -> None:
    path = tmp_path / "wire.log"
    records = [make_record(i) for i in range(5)]
    starts = write_log(path, records)
    size = path.stat().st_size
    cut = size + into_frame if into_frame < 0 else starts[-1] + into_frame
    path.write_bytes(path.read_bytes()[:cut])

    log = read_wirelog(path)

    assert log.records == records[:4]
    assert log.problem is not None
    assert f"truncated tail at byte {starts[-1]}" in log.problem
    assert f"{cut - starts[-1]} bytes" in log.problem


def test_torn_header_frame_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "wire.log"
    write_log(path, [])
    path.write_bytes(path.read_bytes()[: len(MAGIC) + 20])

    log = read_wirelog(path)

    assert log.header == {} and log.records == []
    assert log.problem is not None and "no intact header frame" in log.problem


def test_flipped_payload_bit_skips_only_that_record(tmp_path: Path) -> None:
    path = tmp_path / "wire.log"
    records = [make_record(i) for i in range(7)]
    starts = write_log(path, records)
    flip_bit(path, starts[3] + FRAME_HEADER + 200)

    log = read_wirelog(path)

    assert batches(log.records) == [0, 1, 2, 4, 5, 6]
    assert log.problem is not None
    assert f"1 damaged region skipped: checksum mismatch at byte {starts[3]}" in log.problem
    assert log.header["run"] == "r"


@pytest.mark.parametrize("field_byte", [4, 6, 7])  # length: low byte, high bytes (over the cap)
def test_flipped_length_bit_resyncs_at_next_frame(tmp_path: Path, field_byte: int) -> None:
    path = tmp_path / "wire.log"
    records = [make_record(i) for i in range(6)]
    starts = write_log(path, records)
    flip_bit(path, starts[2] + field_byte)

    log = read_wirelog(path)

    assert batches(log.records) == [0, 1, 3, 4, 5]
    assert log.problem is not None and f"at byte {starts[2]}" in log.problem


def test_length_pointing_past_the_end_is_damage_not_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "wire.log"
    records = [make_record(i) for i in range(4)]
    starts = write_log(path, records)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, starts[1] + 4, len(data))  # plausible length, beyond the file
    path.write_bytes(bytes(data))

    log = read_wirelog(path)

    assert batches(log.records) == [0, 2, 3]
    assert log.problem is not None and "truncated" not in log.problem


def test_flipped_sync_marker_and_garbage_between_frames(tmp_path: Path) -> None:
    path = tmp_path / "wire.log"
    records = [make_record(i) for i in range(5)]
    starts = write_log(path, records)
    flip_bit(path, starts[1])
    data = path.read_bytes()
    path.write_bytes(data[: starts[3]] + b"junk" + SYNC + b"more junk" + data[starts[3] :])

    log = read_wirelog(path)

    assert batches(log.records) == [0, 2, 3, 4]
    assert log.problem is not None and "2 damaged regions skipped" in log.problem


def test_appending_keeps_old_records_and_header(tmp_path: Path) -> None:
    path = tmp_path / "wire.log"
    write_log(path, [make_record(i) for i in range(3)])

    with WireLogWriter(path, header={"run": "other"}) as writer:
        writer.write(make_record(3))
    log = read_wirelog(path)

    assert batches(log.records) == [0, 1, 2, 3]
    assert log.header["run"] == "r"
    assert log.problem is None


def test_appending_after_a_torn_tail_cuts_it_off(tmp_path: Path) -> None:
    path = tmp_path / "wire.log"
    starts = write_log(path, [make_record(i) for i in range(3)])
    path.write_bytes(path.read_bytes()[: starts[2] + 30])

    with WireLogWriter(path, header={"run": "r"}) as writer:
        writer.write(make_record(7))
    log = read_wirelog(path)

    assert batches(log.records) == [0, 1, 7]
    assert log.problem is None


def test_new_writer_on_an_empty_file_writes_magic_and_header(tmp_path: Path) -> None:
    path = tmp_path / "wire.log"
    path.touch()

    with WireLogWriter(path, header={"run": "r"}) as writer:
        writer.write(make_record(0))

    log = read_wirelog(path)
    assert log.header["run"] == "r" and batches(log.records) == [0] and log.problem is None


def test_concurrent_writes_give_whole_frames(tmp_path: Path) -> None:
    path = tmp_path / "wire.log"
    with WireLogWriter(path, header={}) as writer:

        def write_ten(first: int) -> None:
            for batch in range(first, first + 10):
                writer.write(make_record(batch))

        threads = [threading.Thread(target=write_ten, args=(10 * k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    log = read_wirelog(path)
    assert sorted(batches(log.records)) == list(range(40)) and log.problem is None


def test_wrong_magic_and_missing_file_raise(tmp_path: Path) -> None:
    path = tmp_path / "not-a-log"
    path.write_bytes(b"hello, this is not a wire log")

    with pytest.raises(WireLogError, match="wrong file magic"):
        read_wirelog(path)
    with pytest.raises(WireLogError, match="wrong file magic"):
        WireLogWriter(path, header={})
    with pytest.raises(WireLogError, match="no wire log"):
        read_wirelog(tmp_path / "missing")


def test_writer_rejects_writes_after_close_and_bad_headers(tmp_path: Path) -> None:
    writer = WireLogWriter(tmp_path / "wire.log", header={})
    writer.close()
    writer.close()

    with pytest.raises(WireLogError, match="closed"):
        writer.write(make_record(0))
    with pytest.raises(WireLogError, match="JSON"):
        WireLogWriter(tmp_path / "other.log", header={"bad": object()})


def test_stack_records_filters_and_decodes(tmp_path: Path) -> None:
    records = [
        make_record(0, rows=2, phase="train", split="train"),
        make_record(1, rows=3, phase="eval", split="attack"),
        make_record(2, rows=4, phase="eval", split="val"),
        make_record(3, rows=5, phase="eval", split="attack"),
    ]

    cut, indices = stack_records(records, phase="eval", split="attack")
    everything, _ = stack_records(records)
    none, no_indices = stack_records(records, split="test")

    assert cut.dtype == torch.float32 and cut.shape == (8, 500)
    assert indices.dtype == torch.int64
    assert indices.tolist() == [100, 101, 102, 300, 301, 302, 303, 304]
    assert cut[:, 0].tolist() == [1.0] * 3 + [3.0] * 5
    assert torch.equal(cut[3:, 1:], make_record_cut(3, rows=5)[:, 1:])
    assert everything.shape == (14, 500)
    assert none.shape == (0, 500) and no_indices.shape == (0,)


def make_record_cut(batch: int, *, rows: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch)
    return torch.rand((rows, 500), generator=generator) * 2 - 1


def test_stack_records_rejects_bad_records() -> None:
    without = make_record(4, indices=False)
    wrong_shape = make_record(5)
    wrong_shape.activations.CopyFrom(tensor_to_proto(torch.zeros(3, 400)))
    wrong_dtype = make_record(6)
    wrong_dtype.activations.CopyFrom(tensor_to_proto(torch.zeros(3, 500, dtype=torch.int64)))
    short_indices = make_record(7)
    short_indices.indices.CopyFrom(tensor_to_proto(torch.arange(2)))

    with pytest.raises(ValueError, match=r"r/epoch=1/batch=4 .* no sample indices"):
        stack_records([make_record(0), without])
    with pytest.raises(ValueError, match=r"batch=5.*shape"):
        stack_records([wrong_shape])
    with pytest.raises(ValueError, match=r"batch=6.*not floating point"):
        stack_records([wrong_dtype])
    with pytest.raises(ValueError, match=r"batch=7.*shape"):
        stack_records([short_indices])
    assert stack_records([without], phase="train")[0].shape == (0, 500)


def test_float64_activations_are_converted() -> None:
    record = make_record(0)
    record.activations.CopyFrom(tensor_to_proto(torch.full((3, 500), 0.25, dtype=torch.float64)))

    cut, _ = stack_records([record])

    assert cut.dtype == torch.float32 and torch.all(cut == 0.25)


def frame(payload: bytes) -> bytes:
    """One frame as the writer lays it out: sync marker, length, CRC-32, payload."""
    return SYNC + struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def test_a_header_nested_past_the_stack_limit_is_damage_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "wire.log"
    depth = 100_000
    nested = b'{"run": ' + b"[" * depth + b"]" * depth + b"}"
    record = make_record(3)
    path.write_bytes(MAGIC + frame(nested) + frame(record.SerializeToString()))

    log = read_wirelog(path)

    assert log.header == {} and log.records == [record]
    assert log.problem is not None and "no intact header frame" in log.problem


def test_writer_refuses_a_symlink_and_leaves_its_target_alone(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_bytes(b"not yours")
    target.chmod(0o644)
    link = tmp_path / "wire.log"
    link.symlink_to(target)

    with pytest.raises(WireLogError, match="symbolic link"):
        WireLogWriter(link, header={})

    assert target.read_bytes() == b"not yours"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_writer_creates_the_log_private_and_narrows_an_open_one(tmp_path: Path) -> None:
    fresh, existing = tmp_path / "fresh.log", tmp_path / "existing.log"
    write_log(existing, [make_record(0)])
    existing.chmod(0o666)

    for path in (fresh, existing):
        with WireLogWriter(path, header={"run": "r"}) as writer:
            writer.write(make_record(1))

    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert stat.S_IMODE(existing.stat().st_mode) == 0o600
    assert batches(read_wirelog(existing).records) == [0, 1]


def test_writer_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "wire.log"
    os.mkfifo(fifo)

    with pytest.raises(WireLogError, match="not a regular file"):
        WireLogWriter(fifo, header={})
