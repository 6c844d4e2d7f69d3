"""The data holder's side of the wire: a session with the server and its training stream.

Everything protobuf stays in here; the trainer sees tensors and dataclasses.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
import torch

from splitnn.common.codec import StepId, step_to_proto, tensor_from_proto, tensor_to_proto
from splitnn.common.models import CUT_SHAPE
from splitnn.common.rpc_options import grpc_options, message_limit
from splitnn.proto import splitnn_pb2 as pb
from splitnn.proto import splitnn_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_STREAM_END = None


class ServerUnreachable(ConnectionError):
    """The server did not answer within the connect timeout, or went away for good."""


class ServerRefused(RuntimeError):
    """The server answered with an error status; the message carries its code and detail."""

    def __init__(self, error: grpc.RpcError) -> None:
        code = error.code()
        super().__init__(f"server refused: {code.name}: {error.details()}")
        self.code = code


@dataclass(frozen=True)
class SessionSettings:
    """What the data holder announces when it opens a session."""

    run: str
    num_classes: int
    lr: float
    seed: int
    max_batch_size: int
    resume: bool = False
    dtype: str = "float32"


@dataclass(frozen=True)
class StepReply:
    """gradient: float32 [B, 500], d(mean CE)/d(sent activations)."""

    gradient: torch.Tensor
    loss: float
    correct: int


@dataclass(frozen=True)
class EvalReply:
    """logits: float32 [B, num_classes]."""

    logits: torch.Tensor
    loss: float
    correct: int


class _Stream:
    """A bidirectional call driven one request, one reply at a time."""

    def __init__(self, method: Callable[..., Any], timeout: float) -> None:
        self._requests: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._replies: Any = method(self._iterate(), timeout=timeout)

    def _iterate(self) -> Iterator[object]:
        while (request := self._requests.get()) is not _STREAM_END:
            yield request

    def call(self, request: object) -> object:
        self._requests.put(request)
        return next(self._replies)

    def close(self) -> None:
        self._requests.put(_STREAM_END)
        cancel = getattr(self._replies, "cancel", None)
        if cancel is not None:
            cancel()


class ServerLink:
    """A session with the computation server.

    Args:
        address: "host:port".
        settings: the session to open.
        connect_timeout: seconds to wait for the server to come up (the first call waits for
            the channel to be ready).
        step_timeout: seconds a single step may take before it is retried.
        retries: attempts per step on UNAVAILABLE / DEADLINE_EXCEEDED; safe because a retried
            step id is answered from the server's cache, never applied twice.
    """

    def __init__(
        self,
        address: str,
        settings: SessionSettings,
        *,
        connect_timeout: float = 30.0,
        step_timeout: float = 60.0,
        retries: int = 5,
    ) -> None:
        self.address = address
        self.settings = settings
        self._step_timeout = step_timeout
        self._retries = retries
        limit = message_limit(max_batch_size=settings.max_batch_size, cut_shape=CUT_SHAPE)
        self._channel = grpc.insecure_channel(
            address, options=grpc_options(max_message_bytes=limit)
        )
        self._stub = pb_grpc.SplitLearningStub(self._channel)
        self._streams: dict[str, _Stream] = {}
        self.session_id = ""
        self.resumed = False
        self.last_applied: StepId | None = None
        self._open(connect_timeout)

    def _open(self, connect_timeout: float) -> None:
        s = self.settings
        request = pb.OpenSessionRequest(
            run=s.run,
            cut_shape=list(CUT_SHAPE),
            dtype=s.dtype,
            max_batch_size=s.max_batch_size,
            head=pb.HeadSpec(num_classes=s.num_classes, lr=s.lr, seed=s.seed),
            resume=s.resume,
        )
        try:
            reply = self._stub.OpenSession(request, timeout=connect_timeout, wait_for_ready=True)
        except grpc.RpcError as error:
            if error.code() in _RETRYABLE:
                raise ServerUnreachable(
                    f"no server answered at {self.address} within {connect_timeout:g} s"
                ) from None
            raise ServerRefused(error) from None
        self.session_id = reply.session_id
        self.resumed = reply.resumed
        if reply.has_last_applied:
            step = reply.last_applied
            self.last_applied = StepId(step.run, step.epoch, step.batch)

    def train_step(
        self,
        step: StepId,
        activations: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor | None = None,
    ) -> StepReply:
        """Sends one batch; returns the gradient w.r.t. `activations` [B, 500]."""
        request = pb.TrainRequest(
            session_id=self.session_id,
            step=step_to_proto(step),
            activations=tensor_to_proto(activations),
            labels=tensor_to_proto(labels),
        )
        if indices is not None:
            request.indices.CopyFrom(tensor_to_proto(indices))
        reply = self._call_stream("train", self._stub.Train, request)
        assert isinstance(reply, pb.TrainReply)
        gradient = tensor_from_proto(
            reply.gradient, dtype=request.activations.dtype, shape=tuple(activations.shape)
        )
        return StepReply(gradient=gradient, loss=reply.loss, correct=reply.correct)

    def evaluate(
        self,
        step: StepId,
        activations: torch.Tensor,
        *,
        split: str,
        labels: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
    ) -> EvalReply:
        """Logits for one batch of `split` ("val", "test", "attack", ...), no update."""
        request = pb.EvalRequest(
            session_id=self.session_id,
            step=step_to_proto(step),
            split=split,
            activations=tensor_to_proto(activations),
        )
        if labels is not None:
            request.labels.CopyFrom(tensor_to_proto(labels))
        if indices is not None:
            request.indices.CopyFrom(tensor_to_proto(indices))
        reply = self._call_stream("eval", self._stub.Evaluate, request)
        assert isinstance(reply, pb.EvalReply)
        logits = tensor_from_proto(
            reply.logits, dtype="float32", shape=(activations.shape[0], None)
        )
        return EvalReply(logits=logits, loss=reply.loss, correct=reply.correct)

    def checkpoint(self, name: str, *, replace_previous: bool) -> str:
        """Asks the server to write its head as ``<name>.head.ckpt``; returns the server's path."""
        request = pb.CheckpointRequest(
            session_id=self.session_id, name=name, replace_previous=replace_previous
        )
        reply = self._unary(self._stub.Checkpoint, request)
        return str(reply.path)

    def restore(self, name: str) -> int:
        """Asks the server to load head ``<name>``; returns the steps it had been trained for."""
        request = pb.RestoreRequest(session_id=self.session_id, name=name)
        reply = self._unary(self._stub.Restore, request)
        return int(reply.steps_applied)

    def close(self) -> None:
        """Ends the streams and the session (the server saves the run), then the channel."""
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()
        if self.session_id:
            try:
                self._unary(
                    self._stub.CloseSession, pb.CloseSessionRequest(session_id=self.session_id)
                )
            except (ServerRefused, ServerUnreachable) as error:
                logger.warning("closing the session failed: %s", error)
            self.session_id = ""
        self._channel.close()

    def __enter__(self) -> ServerLink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _unary(self, method: Callable[..., Any], request: object) -> Any:
        for attempt in range(self._retries + 1):
            try:
                return method(request, timeout=self._step_timeout)
            except grpc.RpcError as error:
                self._handle_failure(error, attempt)
        raise AssertionError("unreachable")

    def _call_stream(self, kind: str, method: Callable[..., Any], request: object) -> object:
        for attempt in range(self._retries + 1):
            stream = self._streams.get(kind)
            if stream is None:
                # The stream's deadline bounds its whole life: generous, renewed on reconnect.
                stream = self._streams[kind] = _Stream(method, timeout=24 * 3600.0)
            try:
                return stream.call(request)
            except grpc.RpcError as error:
                self._streams.pop(kind).close()
                self._handle_failure(error, attempt)
            except StopIteration:
                self._streams.pop(kind).close()
                raise ServerUnreachable("the server closed the stream") from None
        raise AssertionError("unreachable")

    def _handle_failure(self, error: grpc.RpcError, attempt: int) -> None:
        """Re-raises non-retryable errors; sleeps a capped backoff before a retry."""
        code = error.code()
        if code not in _RETRYABLE:
            raise ServerRefused(error) from None
        if attempt >= self._retries:
            raise ServerUnreachable(f"server at {self.address} lost: {error.details()}") from None
        delay = min(0.25 * 2**attempt, 5.0)
        logger.warning(
            "%s; retrying in %.2f s (%d/%d)", code.name, delay, attempt + 1, self._retries
        )
        time.sleep(delay)
