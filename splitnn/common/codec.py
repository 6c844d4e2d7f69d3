"""Protobuf <-> domain conversions: `x_to_proto` / `x_from_proto` pairs and their validation.

Nothing a peer sends is trusted: every decoder checks the dtype against an allow-list, the shape
against limits, and the byte length against the shape before building a tensor from it. Raw
little-endian bytes only; never pickle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from splitnn.proto import splitnn_pb2 as pb

# Wire name -> (numpy little-endian dtype, torch dtype). Nothing outside this list is decoded.
_DTYPES: dict[str, tuple[np.dtype[np.generic], torch.dtype]] = {
    "float16": (np.dtype("<f2"), torch.float16),
    "float32": (np.dtype("<f4"), torch.float32),
    "float64": (np.dtype("<f8"), torch.float64),
    "uint8": (np.dtype("u1"), torch.uint8),
    "int32": (np.dtype("<i4"), torch.int32),
    "int64": (np.dtype("<i8"), torch.int64),
}
_TORCH_TO_WIRE = {torch_dtype: name for name, (_, torch_dtype) in _DTYPES.items()}
ALLOWED_DTYPES = tuple(_DTYPES)
MAX_NDIM = 8
MAX_ELEMENTS = 1 << 28


class CodecError(ValueError):
    """A message does not describe a valid tensor or step; the text says what is wrong."""


@dataclass(frozen=True, order=True)
class StepId:
    """One batch of one run; steps of a run are ordered by (epoch, batch)."""

    run: str
    epoch: int
    batch: int

    def key(self) -> tuple[int, int]:
        return (self.epoch, self.batch)

    def __str__(self) -> str:
        return f"{self.run}/epoch={self.epoch}/batch={self.batch}"


@dataclass(frozen=True)
class WeightsBlob:
    """Part 1's weights in transit through a group: serialized `Weights` and their SHA-256."""

    data: bytes
    sha256: bytes


@dataclass(frozen=True)
class GroupJoin:
    """A data holder's request to take place `holder` (0..K-1) in the declared group `name`.

    samples: its training samples (weights the averages); epochs: must agree across the group.
    """

    name: str
    holder: int
    batches_per_epoch: int
    samples: int
    epochs: int


def tensor_to_proto(tensor: torch.Tensor) -> pb.Tensor:
    """Encodes a tensor as dtype + shape + raw little-endian bytes (one copy)."""
    name = _TORCH_TO_WIRE.get(tensor.dtype)
    if name is None:
        raise CodecError(f"dtype {tensor.dtype} is not sent on the wire; allowed: {ALLOWED_DTYPES}")
    array = tensor.detach().cpu().contiguous().numpy()
    return pb.Tensor(dtype=name, shape=list(array.shape), data=array.tobytes())


def tensor_from_proto(
    message: pb.Tensor,
    *,
    dtype: str | None = None,
    shape: tuple[int | None, ...] | None = None,
    finite: bool = False,
) -> torch.Tensor:
    """Decodes and validates a wire tensor.

    Args:
        message: the wire tensor.
        dtype: if given, the only accepted wire dtype.
        shape: if given, the expected shape; ``None`` entries accept any size.
        finite: reject NaN and infinities (floating dtypes only).

    Returns:
        A writable CPU tensor of the wire's dtype and shape. The bytes are checked through a
        zero-copy numpy view; the tensor itself is one copy, since torch must not alias the
        message's immutable buffer.

    Raises:
        CodecError: on any mismatch, with a message naming the problem.
    """
    array = _array_from_proto(message, dtype=dtype, shape=shape)
    if finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise CodecError("tensor contains NaN or infinite values")
    return torch.from_numpy(array.copy())


def _array_from_proto(
    message: pb.Tensor, *, dtype: str | None, shape: tuple[int | None, ...] | None
) -> np.ndarray[tuple[int, ...], np.dtype[np.generic]]:
    if message.dtype not in _DTYPES:
        raise CodecError(f"dtype {message.dtype!r} is not allowed; allowed: {ALLOWED_DTYPES}")
    if dtype is not None and message.dtype != dtype:
        raise CodecError(f"dtype {message.dtype} where {dtype} was expected")
    dims = tuple(message.shape)
    if len(dims) > MAX_NDIM:
        raise CodecError(f"{len(dims)} dimensions is more than {MAX_NDIM}")
    if any(d < 0 for d in dims):
        raise CodecError(f"negative dimension in shape {list(dims)}")
    if any(d > MAX_ELEMENTS for d in dims):
        raise CodecError(f"a dimension of {list(dims)} is over {MAX_ELEMENTS} elements")
    if shape is not None and (
        len(shape) != len(dims)
        or any(e is not None and e != d for e, d in zip(shape, dims, strict=True))
    ):
        expected = ["*" if e is None else e for e in shape]
        raise CodecError(f"shape {list(dims)} where {expected} was expected")
    count = math.prod(dims)
    if count > MAX_ELEMENTS:
        raise CodecError(f"{count} elements is more than the limit {MAX_ELEMENTS}")
    np_dtype = _DTYPES[message.dtype][0]
    if len(message.data) != count * np_dtype.itemsize:
        raise CodecError(
            f"{len(message.data)} bytes for shape {list(dims)} of {message.dtype}; "
            f"expected {count * np_dtype.itemsize}"
        )
    return np.frombuffer(message.data, dtype=np_dtype).reshape(dims)


def step_to_proto(step: StepId) -> pb.StepId:
    return pb.StepId(run=step.run, epoch=step.epoch, batch=step.batch)


def step_from_proto(message: pb.StepId, *, run: str | None = None) -> StepId:
    """Decodes a step id; if `run` is given, the step must belong to it."""
    if run is not None and message.run != run:
        raise CodecError(f"step of run {message.run!r} on a session of run {run!r}")
    return StepId(run=message.run, epoch=message.epoch, batch=message.batch)


def weights_to_bytes(weights: Mapping[str, torch.Tensor]) -> bytes:
    """Serializes a state dict as a `Weights` message, every tensor as float32."""
    message = pb.Weights(
        tensors=[
            pb.NamedTensor(name=name, tensor=tensor_to_proto(value.detach().to(torch.float32)))
            for name, value in weights.items()
        ]
    )
    return message.SerializeToString()


def weights_from_bytes(
    data: bytes, *, shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """The state dict in a serialized `Weights`: float32 tensors of exactly `shapes`, finite.

    Raises:
        CodecError: not a `Weights` message, or a tensor missing, extra, twice, of another
            shape or dtype, or not finite.
    """
    try:
        message = pb.Weights.FromString(data)
    except Exception:  # protobuf raises DecodeError, or RuntimeError on some inputs
        raise CodecError("the weights blob is not a Weights message") from None
    weights: dict[str, torch.Tensor] = {}
    for item in message.tensors:
        if item.name not in shapes:
            raise CodecError(f"unexpected tensor {item.name!r} in the weights")
        if item.name in weights:
            raise CodecError(f"tensor {item.name!r} twice in the weights")
        weights[item.name] = tensor_from_proto(
            item.tensor, dtype="float32", shape=shapes[item.name], finite=True
        )
    missing = sorted(set(shapes) - set(weights))
    if missing:
        raise CodecError(f"the weights lack {', '.join(missing)}")
    return weights


def blob_to_proto(blob: WeightsBlob) -> pb.WeightsBlob:
    return pb.WeightsBlob(data=blob.data, sha256=blob.sha256)


def blob_from_proto(message: pb.WeightsBlob) -> WeightsBlob:
    """The blob as it arrived; its SHA-256 is checked where it is decoded (`weights.from_blob`)."""
    return WeightsBlob(data=message.data, sha256=message.sha256)


def group_join_to_proto(join: GroupJoin) -> pb.GroupMember:
    return pb.GroupMember(
        name=join.name,
        holder=join.holder,
        batches_per_epoch=join.batches_per_epoch,
        samples=join.samples,
        epochs=join.epochs,
    )


def group_join_from_proto(message: pb.GroupMember) -> GroupJoin:
    return GroupJoin(
        name=message.name,
        holder=message.holder,
        batches_per_epoch=message.batches_per_epoch,
        samples=message.samples,
        epochs=message.epochs,
    )
