"""The wire codec: exact round trips, and every malformed tensor or step refused with CodecError."""

from __future__ import annotations

import math
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from splitnn.common.codec import (
    ALLOWED_DTYPES,
    MAX_ELEMENTS,
    MAX_NDIM,
    CodecError,
    StepId,
    step_from_proto,
    step_to_proto,
    tensor_from_proto,
    tensor_to_proto,
)
from splitnn.proto import splitnn_pb2 as pb

ITEMSIZE = {"float16": 2, "float32": 4, "float64": 8, "uint8": 1, "int32": 4, "int64": 8}
FLOATS = ("float16", "float32", "float64")


@st.composite
def wire_arrays(draw: st.DrawFn) -> np.ndarray:
    """Any allowed dtype, 0..4 dims (zero-size dims included), any values (NaN, inf, -0.0)."""
    name = draw(st.sampled_from(ALLOWED_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    return draw(hnp.arrays(dtype=np.dtype(name).newbyteorder("<"), shape=shape))


def _message(dtype: str, shape: list[int], nbytes: int | None = None) -> pb.Tensor:
    size = math.prod(shape) * ITEMSIZE.get(dtype, 4) if nbytes is None else nbytes
    return pb.Tensor(dtype=dtype, shape=shape, data=bytes(size))


@settings(max_examples=300, deadline=None)
@given(array=wire_arrays(), transpose=st.booleans())
def test_round_trip_preserves_bits_dtype_and_shape(array: np.ndarray, transpose: bool) -> None:
    # Prepare: sometimes a non-contiguous view, which the encoder must make contiguous.
    original = torch.from_numpy(array.copy())
    if transpose and original.dim() >= 2:
        original = original.transpose(0, 1)

    decoded = tensor_from_proto(tensor_to_proto(original))

    assert decoded.dtype == original.dtype
    assert decoded.shape == original.shape
    # Byte equality: NaN payloads and the sign of zero survive too.
    assert decoded.numpy().tobytes() == original.contiguous().numpy().tobytes()


@settings(max_examples=100, deadline=None)
@given(array=wire_arrays().filter(lambda a: a.size > 0))
def test_decoded_tensor_is_writable_and_does_not_alias_the_message(array: np.ndarray) -> None:
    message = tensor_to_proto(torch.from_numpy(array.copy()))
    sent = bytes(message.data)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps a read-only buffer
        decoded = tensor_from_proto(message)
    decoded.view(-1)[0] = 1
    decoded.view(-1)[0] = 0  # whatever the first value was, it is now overwritten

    assert message.data == sent
    assert tensor_from_proto(message).numpy().tobytes() == sent


@settings(max_examples=100, deadline=None)
@given(
    run=st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    epoch=st.integers(min_value=0, max_value=2**32 - 1),
    batch=st.integers(min_value=0, max_value=2**64 - 1),
)
def test_step_id_round_trips(run: str, epoch: int, batch: int) -> None:
    step = StepId(run, epoch, batch)

    decoded = step_from_proto(step_to_proto(step), run=run)

    assert decoded == step


def test_step_of_another_run_is_refused() -> None:
    message = step_to_proto(StepId("mine", 1, 2))

    with pytest.raises(CodecError, match="run"):
        step_from_proto(message, run="theirs")


@pytest.mark.parametrize(
    "dtype", ["float128", "", "object", "bool", "int8", "complex64", "FLOAT32"]
)
def test_unknown_dtype_is_refused(dtype: str) -> None:
    with pytest.raises(CodecError, match="not allowed"):
        tensor_from_proto(_message(dtype, [2, 2]))


@pytest.mark.parametrize(
    "tensor",
    [
        torch.zeros(2, dtype=torch.complex64),
        torch.zeros(2, dtype=torch.bool),
        torch.zeros(2, dtype=torch.bfloat16),
        torch.zeros(2, dtype=torch.int8),
    ],
    ids=str,
)
def test_dtype_not_sent_on_the_wire_is_refused_by_the_encoder(tensor: torch.Tensor) -> None:
    with pytest.raises(CodecError, match="not sent"):
        tensor_to_proto(tensor)


@pytest.mark.parametrize(
    ("shape", "nbytes", "match"),
    [
        ([-1], 0, "negative"),
        ([2, -3], 24, "negative"),
        ([1] * (MAX_NDIM + 1), 4, "dimensions"),
        ([MAX_ELEMENTS + 1], 0, "elements"),
        ([2**40, 2**40], 4, "elements"),
        ([2**62] * MAX_NDIM, 4, "elements"),
        ([2, 3], 23, "bytes"),  # one short
        ([2, 3], 25, "bytes"),  # one long
        ([2, 3], 0, "bytes"),  # empty
        ([], 0, "bytes"),  # a scalar needs its 4 bytes
        ([0], 4, "bytes"),
    ],
    ids=str,
)
def test_malformed_float32_tensor_is_refused(shape: list[int], nbytes: int, match: str) -> None:
    message = _message("float32", shape, nbytes)

    with pytest.raises(CodecError, match=match):
        tensor_from_proto(message)


def test_huge_shape_with_few_bytes_fails_fast_without_allocating() -> None:
    message = _message("float64", [2**31, 2**31, 2**31], nbytes=8)

    tracemalloc.start()
    try:
        with pytest.raises(CodecError):
            tensor_from_proto(message)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 1 << 20


@pytest.mark.parametrize("shape", [[0, 2**62], [2**31, 2**31, 0]], ids=str)
def test_zero_size_shape_with_a_huge_dimension_is_refused(shape: list[int]) -> None:
    # No bytes to read, but a dimension over the limit is refused before any count is taken.
    message = _message("float32", shape, nbytes=0)

    with pytest.raises(CodecError, match=r"a dimension of .* is over"):
        tensor_from_proto(message)


def test_zero_size_shape_within_the_limits_decodes_to_an_empty_tensor() -> None:
    message = _message("float32", [0, MAX_ELEMENTS], nbytes=0)

    decoded = tensor_from_proto(message)

    assert decoded.shape == (0, MAX_ELEMENTS) and decoded.dtype == torch.float32


@pytest.mark.parametrize("name", ALLOWED_DTYPES)
def test_expected_dtype_mismatch_is_refused(name: str) -> None:
    other = next(d for d in ALLOWED_DTYPES if d != name)
    message = _message(name, [3])

    with pytest.raises(CodecError, match=f"where {other} was expected"):
        tensor_from_proto(message, dtype=other)
    assert tensor_from_proto(message, dtype=name).shape == (3,)


@pytest.mark.parametrize(
    ("expected", "ok"),
    [
        ((2, 3), True),
        ((None, 3), True),
        ((2, None), True),
        ((None, None), True),
        ((None,), False),  # rank
        ((2, 3, 1), False),  # rank
        ((2, 4), False),  # size
        ((None, 4), False),  # size, beside a wildcard
        ((3, None), False),
        ((), False),
    ],
    ids=str,
)
def test_expected_shape(expected: tuple[int | None, ...], ok: bool) -> None:
    message = _message("float32", [2, 3])

    if ok:
        assert tensor_from_proto(message, shape=expected).shape == (2, 3)
    else:
        with pytest.raises(CodecError, match="shape"):
            tensor_from_proto(message, shape=expected)


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_refused_only_when_asked(name: str, bad: float) -> None:
    values = torch.zeros(4, 3, dtype=getattr(torch, name))
    values[2, 1] = bad
    message = tensor_to_proto(values)

    with pytest.raises(CodecError, match="NaN or infinite"):
        tensor_from_proto(message, finite=True)
    decoded = tensor_from_proto(message)

    assert decoded.numpy().tobytes() == values.numpy().tobytes()


@pytest.mark.parametrize("name", ALLOWED_DTYPES)
def test_finite_values_pass_the_finite_check(name: str) -> None:
    values = torch.arange(12).reshape(4, 3).to(getattr(torch, name))

    decoded = tensor_from_proto(tensor_to_proto(values), finite=True)

    assert torch.equal(decoded, values)
