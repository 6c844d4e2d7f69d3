"""Part 1's weights blob: exact round trips, every damaged or malformed blob refused, FedAvg."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
import torch

from splitnn.common.codec import (
    CodecError,
    WeightsBlob,
    blob_from_proto,
    blob_to_proto,
    tensor_to_proto,
)
from splitnn.common.models import build_body
from splitnn.common.weights import BODY_SHAPES, average, from_blob, to_blob
from splitnn.proto import splitnn_pb2 as pb

SEED = 7
Edit = Callable[[list[pb.NamedTensor]], None]


@pytest.fixture(scope="module")
def body_state() -> dict[str, torch.Tensor]:
    return build_body(SEED).state_dict()


@pytest.fixture(scope="module")
def blob(body_state: dict[str, torch.Tensor]) -> WeightsBlob:
    return to_blob(body_state)


def _signed(tensors: list[pb.NamedTensor]) -> WeightsBlob:
    """A correctly signed blob of exactly these tensors: only from_blob's own checks apply."""
    data = pb.Weights(tensors=tensors).SerializeToString()
    return WeightsBlob(data=data, sha256=hashlib.sha256(data).digest())


def _flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def test_round_trip_equals_the_body_state_exactly(
    body_state: dict[str, torch.Tensor], blob: WeightsBlob
) -> None:
    decoded = from_blob(blob)

    assert list(decoded) == list(body_state) == list(BODY_SHAPES)
    for name, value in body_state.items():
        assert decoded[name].dtype == torch.float32, name
        assert torch.equal(decoded[name], value), name
    assert blob.sha256 == hashlib.sha256(blob.data).digest()
    assert to_blob(decoded).data == blob.data  # the encoding is deterministic


def test_a_blob_crosses_the_wire_unchanged(blob: WeightsBlob) -> None:
    wire = pb.WeightsBlob.FromString(blob_to_proto(blob).SerializeToString())

    assert blob_from_proto(wire) == blob


def test_a_blob_reloads_into_a_fresh_body(blob: WeightsBlob) -> None:
    body = build_body(SEED + 1)

    body.load_state_dict(from_blob(blob))

    reference = build_body(SEED).state_dict()
    for name, value in body.state_dict().items():
        assert torch.equal(value, reference[name]), name


@pytest.mark.parametrize("where", ["data-start", "data-middle", "data-end", "sha256"])
def test_a_flipped_byte_anywhere_is_refused(blob: WeightsBlob, where: str) -> None:
    data, sha = blob.data, blob.sha256
    if where == "sha256":
        sha = _flipped(sha, 5)
    else:
        at = {"data-start": 0, "data-middle": len(data) // 2, "data-end": len(data) - 1}[where]
        data = _flipped(data, at)

    with pytest.raises(CodecError, match="SHA-256"):
        from_blob(WeightsBlob(data=data, sha256=sha))


def test_signed_bytes_that_are_not_a_weights_message_are_refused() -> None:
    data = b"\xff" * 64  # field 31, wire type 7: not protobuf

    with pytest.raises(CodecError, match="not a Weights message"):
        from_blob(WeightsBlob(data=data, sha256=hashlib.sha256(data).digest()))


def _drop(name: str) -> Edit:
    def edit(tensors: list[pb.NamedTensor]) -> None:
        tensors[:] = [t for t in tensors if t.name != name]

    return edit


def _append(name: str, value: torch.Tensor) -> Edit:
    def edit(tensors: list[pb.NamedTensor]) -> None:
        tensors.append(pb.NamedTensor(name=name, tensor=tensor_to_proto(value)))

    return edit


def _replace(name: str, value: torch.Tensor) -> Edit:
    def edit(tensors: list[pb.NamedTensor]) -> None:
        tensors[:] = [
            pb.NamedTensor(name=name, tensor=tensor_to_proto(value)) if t.name == name else t
            for t in tensors
        ]

    return edit


def _with_nan(shape: tuple[int, ...], at: int) -> torch.Tensor:
    value = torch.zeros(shape)
    value.view(-1)[at] = float("nan")
    return value


BIAS = "features.0.bias"
BIAS_SHAPE = BODY_SHAPES[BIAS]


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (_drop("features.2.weight"), r"lack features\.2\.weight"),
        (_drop(BIAS), r"lack features\.0\.bias"),
        (_append("features.9.weight", torch.zeros(3)), r"unexpected tensor 'features\.9\.weight'"),
        (_append(BIAS, torch.zeros(BIAS_SHAPE)), r"tensor 'features\.0\.bias' twice"),
        (_replace(BIAS, torch.zeros(BIAS_SHAPE[0] + 1)), r"shape \[33\] where \[32\]"),
        (_replace(BIAS, torch.zeros(1, BIAS_SHAPE[0])), r"shape \[1, 32\] where \[32\]"),
        (_replace(BIAS, torch.zeros(BIAS_SHAPE, dtype=torch.float64)), "dtype float64"),
        (_replace(BIAS, torch.zeros(BIAS_SHAPE, dtype=torch.float16)), "dtype float16"),
        (_replace(BIAS, _with_nan(BIAS_SHAPE, 31)), "NaN"),
        (_replace("features.6.bias", torch.full((500,), float("inf"))), "infinite"),
    ],
    ids=[
        "missing-weight",
        "missing-bias",
        "extra",
        "duplicated",
        "longer",
        "other-rank",
        "float64",
        "float16",
        "nan",
        "inf",
    ],
)
def test_a_malformed_blob_is_refused_naming_the_problem(
    body_state: dict[str, torch.Tensor], edit: Edit, problem: str
) -> None:
    tensors = [
        pb.NamedTensor(name=name, tensor=tensor_to_proto(value))
        for name, value in body_state.items()
    ]
    edit(tensors)

    with pytest.raises(CodecError, match=problem):
        from_blob(_signed(tensors))


def test_an_empty_blob_lacks_every_tensor() -> None:
    with pytest.raises(CodecError, match="lack") as refused:
        from_blob(_signed([]))

    assert all(name in str(refused.value) for name in BODY_SHAPES)


def test_to_blob_stores_float32_whatever_it_is_given(body_state: dict[str, torch.Tensor]) -> None:
    as_double = {name: value.double() for name, value in body_state.items()}

    decoded = from_blob(to_blob(as_double))

    for name, value in body_state.items():
        assert decoded[name].dtype == torch.float32
        assert torch.equal(decoded[name], value), name


def _states() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(3)
    shapes = {"w": (4, 5), "b": (5,), "scalar": ()}
    a, b = (
        {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
        for _ in range(2)
    )
    return a, b


def test_average_weights_by_counts() -> None:
    a, b = _states()

    averaged = average([a, b], [1, 3])

    assert list(averaged) == list(a)
    for name in a:
        expected = 0.25 * a[name] + 0.75 * b[name]
        assert averaged[name].dtype == torch.float32
        assert averaged[name].shape == a[name].shape
        torch.testing.assert_close(averaged[name], expected, atol=1e-6, rtol=0)


def test_average_is_bit_identical_on_repeat_and_exact_for_equal_states() -> None:
    a, b = _states()

    first, second = average([a, b], [1, 3]), average([a, b], [1, 3])
    same = average([a, a, a], [2, 5, 11])

    for name in a:
        assert torch.equal(first[name], second[name]), name
        assert torch.equal(same[name], a[name]), name  # weights sum to 1 in float64
    assert not torch.equal(first["w"], average([a, b], [3, 1])["w"])  # the counts matter


def test_average_leaves_its_inputs_alone() -> None:
    a, b = _states()
    before = {name: value.clone() for name, value in a.items()}

    average([a, b], [1, 3])

    for name, value in before.items():
        assert torch.equal(a[name], value), name


@pytest.mark.parametrize(
    ("count_of_states", "counts"),
    [(2, [1]), (2, [1, 2, 3]), (2, [0, 3]), (2, [1, -1]), (0, [])],
    ids=["too-few", "too-many", "zero", "negative", "nothing"],
)
def test_average_refuses_bad_counts(count_of_states: int, counts: list[int]) -> None:
    a, b = _states()
    states = [a, b][:count_of_states]

    with pytest.raises(ValueError, match="one positive count per state"):
        average(states, counts)
