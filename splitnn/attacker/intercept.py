"""The victim's cut tensors as the colluding server received them: from a wire log or live."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from splitnn.common import exits
from splitnn.common.codec import tensor_from_proto
from splitnn.common.credentials import Credentials, open_channel
from splitnn.common.datasets import Subset
from splitnn.common.models import CUT_SHAPE
from splitnn.common.wirelog import read_wirelog
from splitnn.proto import splitnn_pb2 as pb
from splitnn.proto import splitnn_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)


class InterceptError(exits.Failed):
    """Nothing usable was intercepted, or it does not match the data set."""


class TapUnreachable(exits.Unreachable):
    """The collusion-mode server did not answer within the connect timeout."""


@dataclass(frozen=True)
class Intercepted:
    """activations: float32 [N,500] as received; indices: int64 [N], which images they were;
    labels: int64 [N], the labels the data holder sent with them (None if any batch had none)."""

    activations: torch.Tensor
    indices: torch.Tensor
    run: str
    source: str
    problem: str | None = None
    labels: torch.Tensor | None = None


@dataclass(frozen=True)
class Received:
    """Labelled cut tensors as received, whichever images they were (no indices needed).

    activations: float32 [N,500]; labels: int64 [N], sent by the data holder in the clear.
    """

    activations: torch.Tensor
    labels: torch.Tensor
    run: str
    splits: tuple[str, ...]


def stack_records(
    records: Iterable[pb.TapRecord], *, phase: str | None = None, split: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selects records and concatenates their tensors, e.g. the attack slice's eval batches.

    Args:
        records: records as read from a wire log.
        phase: keep only records of this phase ("train" or "eval"); None keeps all.
        split: keep only records of this split ("train", "val", "test", "attack", ...).

    Returns:
        activations float32 [N, 500] (float16/float64 wire tensors are converted) and the sample
        indices int64 [N], in record order. N is 0 when nothing matches.

    Raises:
        ValueError: a selected record has no indices, or a tensor of the wrong dtype or shape,
            or non-finite activations; the message names the record's step.
    """
    activations: list[torch.Tensor] = [torch.empty((0, *CUT_SHAPE))]
    indices: list[torch.Tensor] = [torch.empty(0, dtype=torch.int64)]
    for record in records:
        if (phase is not None and record.phase != phase) or (
            split is not None and record.split != split
        ):
            continue
        cut, index = _decode_record(record)
        activations.append(cut)
        indices.append(index)
    return torch.cat(activations), torch.cat(indices)


def _where(record: pb.TapRecord) -> str:
    step = f"{record.step.run}/epoch={record.step.epoch}/batch={record.step.batch}"
    return f"record {step} ({record.phase}, {record.split})"


def _decode_cut(record: pb.TapRecord) -> torch.Tensor:
    where = _where(record)
    wire_dtype = record.activations.dtype
    if wire_dtype not in ("float16", "float32", "float64"):
        raise ValueError(f"{where}: activations of dtype {wire_dtype!r}, not floating point")
    try:
        cut = tensor_from_proto(record.activations, shape=(None, *CUT_SHAPE), finite=True)
    except ValueError as error:  # CodecError is a ValueError
        raise ValueError(f"{where}: {error}") from error
    return cut.to(torch.float32)


def _decode_labels(record: pb.TapRecord, rows: int) -> torch.Tensor | None:
    """The record's labels int64 [rows], or None if the data holder sent none (the live tap
    forwards an absent label tensor as an empty message)."""
    if not record.HasField("labels") or record.labels.ByteSize() == 0:
        return None
    try:
        return tensor_from_proto(record.labels, dtype="int64", shape=(rows,))
    except ValueError as error:
        raise ValueError(f"{_where(record)}: {error}") from error


def stack_labels(records: Iterable[pb.TapRecord]) -> torch.Tensor | None:
    """The labels of `records` in record order, int64 [N]; None if any record carries none."""
    labels: list[torch.Tensor] = [torch.empty(0, dtype=torch.int64)]
    for record in records:
        rows = int(record.activations.shape[0]) if record.activations.shape else 0
        found = _decode_labels(record, rows)
        if found is None:
            return None
        labels.append(found)
    return torch.cat(labels)


def _decode_record(record: pb.TapRecord) -> tuple[torch.Tensor, torch.Tensor]:
    where = _where(record)
    if not record.HasField("indices"):
        raise ValueError(
            f"{where} carries no sample indices: an attack is scored against the true images "
            "only when the victim runs as an evaluation harness (splitnn-client --send-indices)"
        )
    cut = _decode_cut(record)
    try:
        index = tensor_from_proto(record.indices, dtype="int64", shape=(cut.shape[0],))
    except ValueError as error:  # CodecError is a ValueError
        raise ValueError(f"{where}: {error}") from error
    return cut, index


def _select(
    records: Iterable[pb.TapRecord], *, split: str, run: str | None, source: str
) -> Intercepted:
    chosen = [r for r in records if r.split == split and (run is None or r.step.run == run)]
    if not chosen:
        raise InterceptError(f"no intercepted batches of split {split!r} in {source}")
    last_run = chosen[-1].step.run  # a log may hold several runs: the latest one by default
    chosen = [r for r in chosen if r.step.run == last_run]
    try:
        activations, indices = stack_records(chosen)
        labels = stack_labels(chosen)
    except ValueError as error:
        raise InterceptError(str(error)) from None
    # If the split went over the wire more than once, keep each image's latest tensor.
    latest: dict[int, int] = {int(i): row for row, i in enumerate(indices)}
    rows = torch.tensor(sorted(latest.values()), dtype=torch.long)
    return Intercepted(
        activations[rows],
        indices[rows],
        last_run,
        source,
        labels=None if labels is None else labels[rows],
    )


def from_log(path: Path, *, split: str = "attack", run: str | None = None) -> Intercepted:
    """Reads the victim's tensors of `split` from a wire log (a damaged tail is reported)."""
    log = read_wirelog(path)
    if log.problem:
        logger.warning("wire log %s: %s", path, log.problem)
    found = _select(log.records, split=split, run=run, source=str(path))
    return dataclasses.replace(found, problem=log.problem)


def training_run(path: Path, *, run: str) -> str:
    """The run whose training batches stand for `run`'s part 1: `run` itself if it trained
    through this server, else the latest run of the same data holder (the record's owner) that
    did: a holder that deploys a checkpoint again does so under a run of its own.

    Raises:
        InterceptError: neither `run` nor another run of its holder trained here.
    """
    records = read_wirelog(path).records
    trained = [r for r in records if r.phase == "train"]
    if any(r.step.run == run for r in trained):
        return run
    owners = {r.owner for r in records if r.step.run == run}
    same_holder = [r.step.run for r in trained if r.owner in owners]
    if not same_holder:
        raise InterceptError(f"no training batches of run {run!r} or of its holder in {path}")
    logger.info("run %s did not train here: matching its holder's run %s", run, same_holder[-1])
    return same_holder[-1]


def training_batches(path: Path, *, run: str) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """Run `run`'s training batches in the order they arrived: (epoch, cut float32 [B,500],
    labels int64 [B]) each; a step received twice (a retry) counts once, as the server applied it.

    Raises:
        InterceptError: a training batch without labels, or one that cannot be decoded.
    """
    batches: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    seen: set[tuple[int, int]] = set()
    for record in read_wirelog(path).records:
        step = (record.step.epoch, record.step.batch)
        if record.phase != "train" or record.step.run != run or step in seen:
            continue
        seen.add(step)
        try:
            cut = _decode_cut(record)
            labels = _decode_labels(record, cut.shape[0])
        except ValueError as error:
            raise InterceptError(str(error)) from None
        if labels is None:
            raise InterceptError(f"{_where(record)} arrived without labels")
        batches.append((record.step.epoch, cut, labels))
    return batches


def received_from_log(
    path: Path, *, splits: Sequence[str] = ("train",), run: str, last_epochs: int | None = 1
) -> Received:
    """The labelled tensors of `splits` that run `run` sent, as a curious server keeps them.

    Needs no sample indices: a real data holder never sends them. Training tensors come from
    every epoch's version of part 1; `last_epochs` keeps those of the last N epochs of each split
    (None: all), the nearest to the part 1 that was deployed.

    Raises:
        InterceptError: nothing of `splits` in that run, or a batch arrived without labels.
    """
    log = read_wirelog(path)
    activations: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for split in splits:
        chosen = [r for r in log.records if r.split == split and r.step.run == run]
        if chosen and last_epochs is not None:
            epochs = sorted({r.step.epoch for r in chosen})[-last_epochs:]
            chosen = [r for r in chosen if r.step.epoch in epochs]
        try:
            cuts = [_decode_cut(r) for r in chosen]
            found = stack_labels(chosen)
        except ValueError as error:
            raise InterceptError(str(error)) from None
        if found is None:
            raise InterceptError(f"a batch of split {split!r} in {path} arrived without labels")
        activations += cuts
        labels.append(found)
    if not activations:
        raise InterceptError(f"no batches of splits {', '.join(splits)} of run {run!r} in {path}")
    return Received(torch.cat(activations), torch.cat(labels), run, tuple(splits))


def from_live(
    address: str,
    *,
    split: str = "attack",
    run: str | None = None,
    expected: int,
    timeout: float = 3600.0,
    connect_timeout: float = 30.0,
    credentials: Credentials | None = None,
) -> Intercepted:
    """Subscribes to a collusion-mode server's tap until `expected` images of `split` arrived.

    Ends early, with what it has, when the server closes the stream or after `timeout` seconds.
    The server serves its tap to a party with the tap role only (`credentials`).

    Raises:
        TapUnreachable: no connection to `address` within `connect_timeout` seconds.
    """
    channel = open_channel(address, credentials or Credentials())
    try:
        grpc.channel_ready_future(channel).result(timeout=connect_timeout)
    except grpc.FutureTimeoutError:
        channel.close()
        raise TapUnreachable(
            f"no server answered at {address} within {connect_timeout:g} s"
        ) from None
    stub = pb_grpc.TapStub(channel)
    records: list[pb.TapRecord] = []
    seen: set[int] = set()
    stream = stub.Subscribe(pb.TapRequest(run=run or ""), wait_for_ready=True, timeout=timeout)
    try:
        for record in stream:
            if record.split == split:
                records.append(record)
                seen.update(int(i) for i in stack_records([record])[1])
                if len(seen) >= expected:
                    break
    except grpc.RpcError as error:
        if not records:
            raise InterceptError(
                f"tap at {address}: {error.code().name}: {error.details()}"
            ) from None
    finally:
        stream.cancel()
        channel.close()
    return _select(records, split=split, run=run, source=f"live tap {address}")


def ground_truth(subset: Subset, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The true images and labels of the intercepted `indices` (int64 [N]), for scoring only."""
    row_of = {int(i): row for row, i in enumerate(subset.indices)}
    missing = [int(i) for i in indices if int(i) not in row_of]
    if missing:
        raise InterceptError(
            f"{len(missing)} intercepted indices (e.g. {missing[:3]}) are not in the data set's "
            "attack-evaluation slice: was the victim trained on another data set?"
        )
    rows = torch.tensor([row_of[int(i)] for i in indices], dtype=torch.long)
    return subset.images[rows], subset.labels[rows]
