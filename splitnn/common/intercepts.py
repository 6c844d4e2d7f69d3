"""Intercepted batches (tap records, live or from a wire log) as tensors for the attacker."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from splitnn.common.codec import tensor_from_proto
from splitnn.common.models import CUT_SHAPE
from splitnn.proto import splitnn_pb2 as pb


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


def _decode_record(record: pb.TapRecord) -> tuple[torch.Tensor, torch.Tensor]:
    step = f"{record.step.run}/epoch={record.step.epoch}/batch={record.step.batch}"
    where = f"record {step} ({record.phase}, {record.split})"
    if not record.HasField("indices"):
        raise ValueError(
            f"{where} carries no sample indices: an attack is scored against the true images "
            "only when the victim runs as an evaluation harness (splitnn-client --send-indices)"
        )
    wire_dtype = record.activations.dtype
    if wire_dtype not in ("float16", "float32", "float64"):
        raise ValueError(f"{where}: activations of dtype {wire_dtype!r}, not floating point")
    try:
        cut = tensor_from_proto(record.activations, shape=(None, *CUT_SHAPE), finite=True)
        index = tensor_from_proto(record.indices, dtype="int64", shape=(cut.shape[0],))
    except ValueError as error:  # CodecError is a ValueError
        raise ValueError(f"{where}: {error}") from error
    return cut.to(torch.float32), index
