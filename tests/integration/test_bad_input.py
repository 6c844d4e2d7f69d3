"""A real server refuses every malformed request with a clear status and changes nothing.

Requests are built with the generated stub, so they can be as wrong as a hostile peer likes. After
each refusal the session must be exactly as before (weights, step count, last step, tap) and a
valid step on a new stream must be served normally.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from torch.nn import functional as F

from splitnn.client.transport import ServerLink
from splitnn.common.codec import StepId, tensor_from_proto, tensor_to_proto
from splitnn.common.models import CUT_SHAPE, build_head, make_optimizer
from splitnn.common.rpc_options import message_limit
from splitnn.proto import splitnn_pb2 as pb
from splitnn.proto import splitnn_pb2_grpc as pb_grpc
from splitnn.server.app import RunningServer
from splitnn.server.config import ServerConfig
from splitnn.server.head import ANONYMOUS_OWNER
from tests.conftest import refusal, settings

RUN = "bad-input"
B = 4
MAX_BATCH = 8
HEAD_SEED = 3
LR = 1e-3
TIMEOUT = 30.0  # generous: a loaded machine can starve the server for seconds
SERVER_MAX_BATCH = ServerConfig().max_batch_size  # the fixture's server uses the default
Code = grpc.StatusCode
Mutation = Callable[[Any], None]


@dataclass(frozen=True)
class Opened:
    """A live session with one applied step, (epoch 1, batch 0)."""

    stub: pb_grpc.SplitLearningStub
    server: RunningServer
    taps: list[pb.TapRecord]
    session_id: str
    first_request: pb.TrainRequest
    first_reply: pb.TrainReply


@dataclass(frozen=True)
class Snapshot:
    weights: dict[str, torch.Tensor]
    counters: tuple[int, StepId | None, int]  # steps applied, last step, tap records


def _open_request(**changes: Any) -> pb.OpenSessionRequest:
    request = pb.OpenSessionRequest(
        run=RUN,
        cut_shape=list(CUT_SHAPE),
        dtype="float32",
        max_batch_size=MAX_BATCH,
        head=pb.HeadSpec(num_classes=10, lr=LR, seed=HEAD_SEED),
    )
    for name, value in changes.items():
        if name in ("num_classes", "lr"):
            setattr(request.head, name, value)
        elif name == "cut_shape":
            request.ClearField("cut_shape")
            request.cut_shape.extend(value)
        else:
            setattr(request, name, value)
    return request


def _batch(size: int = B, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    activations = torch.rand(size, *CUT_SHAPE, generator=generator) * 2 - 1
    return activations, torch.randint(0, 10, (size,), generator=generator)


def _train_request(session_id: str, *, batch: int, run: str = RUN) -> pb.TrainRequest:
    activations, labels = _batch(seed=batch)
    return pb.TrainRequest(
        session_id=session_id,
        step=pb.StepId(run=run, epoch=1, batch=batch),
        activations=tensor_to_proto(activations),
        labels=tensor_to_proto(labels),
        indices=tensor_to_proto(torch.arange(B)),
    )


def _eval_request(session_id: str) -> pb.EvalRequest:
    train = _train_request(session_id, batch=0)
    return pb.EvalRequest(
        session_id=session_id,
        step=train.step,
        split="val",
        activations=train.activations,
        labels=train.labels,
        indices=train.indices,
    )


def _train(stub: pb_grpc.SplitLearningStub, request: pb.TrainRequest) -> pb.TrainReply:
    reply: pb.TrainReply
    (reply,) = stub.Train(iter([request]), timeout=TIMEOUT)
    return reply


def _snapshot(opened: Opened) -> Snapshot:
    session = opened.server.sessions.get(opened.session_id)
    weights = {k: v.detach().clone() for k, v in session.head.state_dict().items()}
    return Snapshot(weights, (session.head.steps_applied, session.head.last_step, len(opened.taps)))


def _assert_same(before: Snapshot, after: Snapshot) -> None:
    assert after.counters == before.counters
    assert after.weights.keys() == before.weights.keys()
    for name, value in before.weights.items():
        assert torch.equal(after.weights[name], value), f"{name} changed"


def _assert_next_step_served(opened: Opened, before: Snapshot) -> None:
    reply = _train(opened.stub, _train_request(opened.session_id, batch=1))
    gradient = tensor_from_proto(reply.gradient, dtype="float32", shape=(B, *CUT_SHAPE))
    after = _snapshot(opened)
    assert reply.step.batch == 1 and torch.isfinite(gradient).all() and gradient.abs().sum() > 0
    assert after.counters[:2] == (before.counters[0] + 1, StepId(RUN, 1, 1))
    assert any(not torch.equal(after.weights[k], v) for k, v in before.weights.items())


@pytest.fixture
def stub(address: str) -> Iterator[pb_grpc.SplitLearningStub]:
    # No client-side limits: the server's own limit is what is under test.
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(address, options=options) as channel:
        yield pb_grpc.SplitLearningStub(channel)


@pytest.fixture
def opened(
    stub: pb_grpc.SplitLearningStub, running_server: RunningServer, tap_records: list[pb.TapRecord]
) -> Opened:
    session_id = stub.OpenSession(_open_request(), timeout=TIMEOUT).session_id
    first = _train_request(session_id, batch=0)
    reply = _train(stub, first)
    return Opened(stub, running_server, tap_records, session_id, first, reply)


def _with(field: str, value: torch.Tensor | pb.Tensor | pb.StepId) -> Mutation:
    message = tensor_to_proto(value) if isinstance(value, torch.Tensor) else value

    def mutate(request: Any) -> None:
        getattr(request, field).CopyFrom(message)

    return mutate


def _setting(field: str, value: str) -> Mutation:
    def mutate(request: Any) -> None:
        setattr(request, field, value)

    return mutate


def _step(*, run: str = RUN, epoch: int = 1, batch: int = 1) -> Mutation:
    return _with("step", pb.StepId(run=run, epoch=epoch, batch=batch))


def _both(*mutations: Mutation) -> Mutation:
    def mutate(request: Any) -> None:
        for each in mutations:
            each(request)

    return mutate


def _poisoned(value: float) -> torch.Tensor:
    activations = _batch()[0]
    activations[1, 7] = value
    return activations


def _sized(size: int) -> Mutation:
    return _both(
        _with("activations", torch.zeros(size, *CUT_SHAPE)),
        _with("labels", torch.zeros(size, dtype=torch.int64)),
        _with("indices", torch.arange(size)),
    )


def _cases(mutations: dict[str, Mutation], code: grpc.StatusCode) -> list[Any]:
    return [pytest.param(mutate, code, id=name) for name, mutate in mutations.items()]


BAD_BATCHES = {
    "float64": _with("activations", torch.zeros(B, 500, dtype=torch.float64)),
    "int8": _with("activations", pb.Tensor(dtype="int8", shape=[B, 500], data=bytes(B * 500))),
    "width-499": _with("activations", torch.zeros(B, 499)),
    "rank-3": _with("activations", torch.zeros(B, 500, 1)),
    "rank-1": _with("activations", torch.zeros(500)),
    "bytes-short": _with(
        "activations", pb.Tensor(dtype="float32", shape=[B, 500], data=bytes(B * 2000 - 1))
    ),
    "nan": _with("activations", _poisoned(float("nan"))),
    "inf": _with("activations", _poisoned(float("inf"))),
    "-inf": _with("activations", _poisoned(float("-inf"))),
    "label-minus-1": _with("labels", torch.tensor([0, -1, 0, 0])),
    "label-10": _with("labels", torch.tensor([0, 10, 0, 0])),
    "labels-int32": _with("labels", torch.zeros(B, dtype=torch.int32)),
    "labels-float": _with("labels", torch.zeros(B)),
    "labels-short": _with("labels", torch.zeros(B - 1, dtype=torch.int64)),
    "labels-long": _with("labels", torch.zeros(B + 1, dtype=torch.int64)),
    "indices-int32": _with("indices", torch.arange(B, dtype=torch.int32)),
    "batch-0": _sized(0),
    "batch-over-max": _sized(MAX_BATCH + 1),
    "other-run": _step(run="other-run"),
}
UNKNOWN_SESSIONS = {
    "unknown-session": _setting("session_id", "0" * 32),
    "empty-session": _setting("session_id", ""),
}
BAD_ANY_BATCH = [
    *_cases(BAD_BATCHES, Code.INVALID_ARGUMENT),
    *_cases(UNKNOWN_SESSIONS, Code.UNAUTHENTICATED),
]


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        *BAD_ANY_BATCH,
        *_cases({"no-labels": lambda r: r.ClearField("labels")}, Code.INVALID_ARGUMENT),
        *_cases({"older-step": _step(epoch=0, batch=9)}, Code.FAILED_PRECONDITION),
    ],
)
def test_bad_train_request_changes_nothing(
    opened: Opened, mutate: Mutation, code: grpc.StatusCode
) -> None:
    request = _train_request(opened.session_id, batch=1)
    mutate(request)
    before = _snapshot(opened)

    refused, _ = refusal(lambda: _train(opened.stub, request))

    assert refused == code
    _assert_same(before, _snapshot(opened))
    _assert_next_step_served(opened, before)


@pytest.mark.parametrize(("mutate", "code"), BAD_ANY_BATCH)
def test_bad_eval_request_changes_nothing(
    opened: Opened, mutate: Mutation, code: grpc.StatusCode
) -> None:
    request = _eval_request(opened.session_id)
    mutate(request)
    before = _snapshot(opened)

    refused, _ = refusal(lambda: list(opened.stub.Evaluate(iter([request]), timeout=TIMEOUT)))

    assert refused == code
    _assert_same(before, _snapshot(opened))
    _assert_next_step_served(opened, before)


def test_valid_eval_request_is_served_without_labels(opened: Opened) -> None:
    request = _eval_request(opened.session_id)
    request.ClearField("labels")
    before = _snapshot(opened)

    (reply,) = opened.stub.Evaluate(iter([request]), timeout=TIMEOUT)

    assert tensor_from_proto(reply.logits, dtype="float32").shape == (B, 10)
    assert _snapshot(opened).counters[0] == before.counters[0]


def test_retried_step_is_answered_from_the_cache(opened: Opened) -> None:
    before = _snapshot(opened)

    reply = _train(opened.stub, opened.first_request)

    assert reply.gradient.data == opened.first_reply.gradient.data
    assert (reply.loss, reply.correct) == (opened.first_reply.loss, opened.first_reply.correct)
    _assert_same(before, _snapshot(opened))  # not applied again, not published again
    _assert_next_step_served(opened, before)


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        *[({"cut_shape": shape}, Code.FAILED_PRECONDITION) for shape in ([499], [500, 1], [])],
        *[({"dtype": dtype}, Code.INVALID_ARGUMENT) for dtype in ("int8", "uint8", "float128", "")],
        *[
            ({"max_batch_size": n}, Code.INVALID_ARGUMENT)
            for n in (0, SERVER_MAX_BATCH + 1, 2**32 - 1)
        ],
        *[({"run": run}, Code.INVALID_ARGUMENT) for run in ("../x", "", "a/b", ".x", "x" * 300)],
        *[({"num_classes": n}, Code.INVALID_ARGUMENT) for n in (0, 1, 1001)],
        *[({"lr": lr}, Code.INVALID_ARGUMENT) for lr in (0.0, -1e-3, 2.0, math.nan, math.inf)],
        ({"resume": True, "lr": 2e-3}, Code.FAILED_PRECONDITION),  # live with other settings
    ],
    ids=lambda value: str(value)[:40],
)
def test_bad_open_session_leaves_the_live_session_alone(
    opened: Opened, tmp_path: Path, changes: dict[str, Any], code: grpc.StatusCode
) -> None:
    files = set(tmp_path.rglob("*"))
    before = _snapshot(opened)

    refused, _ = refusal(lambda: opened.stub.OpenSession(_open_request(**changes), timeout=TIMEOUT))

    assert refused == code
    assert set(tmp_path.rglob("*")) == files
    _assert_same(before, _snapshot(opened))
    _assert_next_step_served(opened, before)


def test_open_session_reply_states_the_message_limit(opened: Opened) -> None:
    reply = opened.stub.OpenSession(_open_request(run="limits"), timeout=TIMEOUT)

    needed = message_limit(max_batch_size=MAX_BATCH, cut_shape=CUT_SHAPE)
    server = message_limit(max_batch_size=SERVER_MAX_BATCH, cut_shape=CUT_SHAPE)
    assert needed <= reply.max_message_bytes <= server


@pytest.mark.parametrize("name", ["../evil", "a/b", "/tmp/evil", "..", ".hidden", ""])
def test_checkpoint_with_an_unsafe_name_writes_nothing(
    opened: Opened, tmp_path: Path, name: str
) -> None:
    files = set(tmp_path.rglob("*"))
    request = pb.CheckpointRequest(session_id=opened.session_id, name=name)

    refused, _ = refusal(lambda: opened.stub.Checkpoint(request, timeout=TIMEOUT))

    assert refused == Code.INVALID_ARGUMENT
    assert set(tmp_path.rglob("*")) == files
    assert not Path("/tmp/evil.head.ckpt").exists()


def test_checkpoint_then_restore_round_trips_inside_the_model_dir(opened: Opened) -> None:
    before = _snapshot(opened)
    checkpoint = pb.CheckpointRequest(session_id=opened.session_id, name="good=1")

    path = Path(opened.stub.Checkpoint(checkpoint, timeout=TIMEOUT).path)
    _assert_next_step_served(opened, before)
    restore = pb.RestoreRequest(session_id=opened.session_id, name="good=1")
    steps = opened.stub.Restore(restore, timeout=TIMEOUT).steps_applied

    assert path == Path("heads") / ANONYMOUS_OWNER / RUN / "good=1.head.ckpt"  # no server paths
    assert (opened.server.sessions.model_dir / path).is_file()
    assert steps == before.counters[0]
    assert all(torch.equal(_snapshot(opened).weights[k], v) for k, v in before.weights.items())


@pytest.mark.parametrize(
    ("name", "code"),
    [("never-saved", Code.FAILED_PRECONDITION), ("../evil", Code.INVALID_ARGUMENT)],
)
def test_bad_restore_changes_nothing(opened: Opened, name: str, code: grpc.StatusCode) -> None:
    before = _snapshot(opened)
    request = pb.RestoreRequest(session_id=opened.session_id, name=name)

    refused, _ = refusal(lambda: opened.stub.Restore(request, timeout=TIMEOUT))

    assert refused == code
    _assert_same(before, _snapshot(opened))


def test_unary_calls_of_an_unknown_session_are_unauthenticated(opened: Opened) -> None:
    stub, nobody = opened.stub, "f" * 32

    calls = [
        lambda: stub.Checkpoint(pb.CheckpointRequest(session_id=nobody, name="x")),
        lambda: stub.Restore(pb.RestoreRequest(session_id=nobody, name="x")),
        lambda: stub.CloseSession(pb.CloseSessionRequest(session_id=nobody)),
    ]
    codes = {refusal(call)[0] for call in calls}

    assert codes == {Code.UNAUTHENTICATED}


def test_message_over_the_receive_limit_is_resource_exhausted(opened: Opened) -> None:
    limit = message_limit(max_batch_size=SERVER_MAX_BATCH, cut_shape=CUT_SHAPE)
    request = _train_request(opened.session_id, batch=1)
    request.activations.data = bytes(limit)
    before = _snapshot(opened)

    refused, _ = refusal(lambda: _train(opened.stub, request))

    assert refused == Code.RESOURCE_EXHAUSTED
    _assert_same(before, _snapshot(opened))
    _assert_next_step_served(opened, before)


def test_largest_legal_message_fits_the_limit(opened: Opened) -> None:
    # A full batch of the widest dtype: the limit is sized for exactly this.
    largest = SERVER_MAX_BATCH
    wide = opened.stub.OpenSession(
        _open_request(run="wide", dtype="float64", max_batch_size=largest), timeout=TIMEOUT
    )
    activations = torch.rand(largest, *CUT_SHAPE, dtype=torch.float64)
    request = pb.TrainRequest(
        session_id=wide.session_id,
        step=pb.StepId(run="wide", epoch=1, batch=0),
        activations=tensor_to_proto(activations),
        labels=tensor_to_proto(torch.randint(0, 10, (largest,))),
        indices=tensor_to_proto(torch.arange(largest)),
    )

    reply = _train(opened.stub, request)

    assert tensor_from_proto(reply.gradient, dtype="float64").shape == activations.shape


@pytest.mark.parametrize("service", ["", "splitnn.v1.SplitLearning"])
def test_health_reports_serving(address: str, service: str) -> None:
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        unknown, _ = refusal(
            lambda: health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=TIMEOUT)
        )

    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert unknown == Code.NOT_FOUND


class _ReplyLost(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return Code.UNAVAILABLE

    def details(self) -> str:
        return "reply lost on the way back (test)"


class _LosingReplies:
    """The server receives the request and answers; the answer is dropped."""

    def __init__(self, replies: Any) -> None:
        self._replies = replies

    def __iter__(self) -> _LosingReplies:
        return self

    def __next__(self) -> object:
        next(self._replies)
        raise _ReplyLost()

    def cancel(self) -> None:
        self._replies.cancel()


class _LoseFirstReply:
    """A stub factory whose first Train stream loses its reply; later streams work."""

    def __init__(self) -> None:
        self.streams = 0
        self._real_stub = pb_grpc.SplitLearningStub

    def __call__(self, channel: grpc.Channel) -> pb_grpc.SplitLearningStub:
        stub = self._real_stub(channel)
        train = stub.Train

        def flaky(requests: Iterator[object], **kwargs: Any) -> Any:
            self.streams += 1
            replies = train(requests, **kwargs)
            return _LosingReplies(replies) if self.streams == 1 else replies

        stub.Train = flaky
        return stub


def _one_step_reference(
    activations: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The gradient and head weights after applying the step exactly once, in process."""
    spec = settings(RUN)
    head = build_head(spec.seed, spec.num_classes)
    optimizer = make_optimizer(head, spec.lr)
    received = activations.clone().requires_grad_(True)
    F.cross_entropy(head(received), labels).backward()
    optimizer.step()
    assert received.grad is not None
    return received.grad, head.state_dict()


def test_link_retries_a_lost_reply_and_the_step_applies_once(
    address: str, running_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stubs = _LoseFirstReply()
    monkeypatch.setattr(pb_grpc, "SplitLearningStub", stubs)  # what ServerLink builds
    activations, labels = _batch(seed=5)
    step = StepId(RUN, 1, 0)

    with ServerLink(address, settings(RUN), reconnect_timeout=5.0) as link:
        reply = link.train_step(step, activations, labels)
        session = running_server.sessions.get(link.session_id)
        steps, last = session.head.steps_applied, session.head.last_step
        weights = {k: v.clone() for k, v in session.head.state_dict().items()}

    gradient, reference = _one_step_reference(activations, labels)
    assert stubs.streams == 2  # the reply was lost once, and the step sent again
    assert (steps, last) == (1, step)
    torch.testing.assert_close(reply.gradient, gradient, rtol=0, atol=1e-7)
    for name, value in reference.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-6, msg=name)


def test_fresh_link_resending_the_applied_step_gets_the_cached_gradient(
    address: str, running_server: RunningServer
) -> None:
    activations, labels = _batch(seed=6)
    step = StepId(RUN, 1, 0)
    with ServerLink(address, settings(RUN)) as first:
        sent = first.train_step(step, activations, labels)

        with ServerLink(address, dataclasses.replace(settings(RUN), resume=True)) as again:
            resent = again.train_step(step, activations, labels)
            session = running_server.sessions.get(again.session_id)

            assert again.resumed and again.session_id == first.session_id
            assert again.last_applied == step
    assert torch.equal(resent.gradient, sent.gradient)
    assert (resent.loss, resent.correct) == (sent.loss, sent.correct)
    assert session.head.steps_applied == 1
