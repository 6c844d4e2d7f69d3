"""The data holder's side of the wire: a session with the server and its training stream.

Everything protobuf stays in here; the trainer sees tensors and dataclasses.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
import torch

from splitnn.common import exits
from splitnn.common.codec import (
    StepId,
    WeightsBlob,
    blob_from_proto,
    blob_to_proto,
    step_to_proto,
    tensor_from_proto,
    tensor_to_proto,
)
from splitnn.common.credentials import Credentials, open_channel
from splitnn.common.models import CUT_SHAPE
from splitnn.common.rpc_options import grpc_options, message_limit
from splitnn.proto import splitnn_pb2 as pb
from splitnn.proto import splitnn_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

# Worth another try: the server is away, slow, or busy. A step is safe to send again because a
# retried step id is answered from the server's cache, never applied twice.
_RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)
_STREAM_END = None
_MAX_BACKOFF_S = 5.0
_CLOSE_TIMEOUT_S = 5.0
# Reopening a lost session this many times in a row within one call means something else is
# wrong (the session is lost again at once): give up instead of looping.
_MAX_REOPENS = 3


class ServerUnreachable(exits.Unreachable):
    """The server did not answer within the connect timeout, or went away for good."""


class RolledBack(Exception):
    """The server came back without this holder's latest steps: continue from `step`.

    The server continues from the data holder's last save (`step`), or from the start (None).
    The data holder must reload its own state saved at that step and train on from there.
    """

    def __init__(self, step: StepId | None) -> None:
        super().__init__(f"the server continues from {step or 'the start'}")
        self.step = step


class GroupStalled(exits.Failed, RuntimeError):
    """A training group did not move on for the group timeout (a holder never came back)."""


class ServerRefused(exits.Failed, RuntimeError):
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
    group: GroupSettings | None = None


@dataclass(frozen=True)
class GroupSettings:
    """A data holder's place in a training group the server declared (see `--group`)."""

    name: str
    holder: int  # 0..K-1
    batches_per_epoch: int
    samples: int
    epochs: int


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


class _LocalError(grpc.RpcError):
    """A failure noticed on this side (a step timed out, a stream ended), retried like gRPC's."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__()
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class _Watchdog:
    """Calls `expire` when a call armed with `arm` is still unanswered at its deadline.

    One thread that sleeps until the nearest deadline it knows of, so arming and disarming cost
    two assignments a step and wake nothing (a thread per step measurably slowed training).
    """

    def __init__(self, expire: Callable[[], None], *, idle_check: float) -> None:
        self._expire = expire
        self._idle_check = idle_check
        self._deadline: float | None = None
        self._closed = False
        self._wake = threading.Condition()
        threading.Thread(target=self._watch, name="splitnn-step-timeout", daemon=True).start()

    def arm(self, timeout: float) -> None:
        self._deadline = time.monotonic() + timeout

    def disarm(self) -> None:
        self._deadline = None

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()

    def _watch(self) -> None:
        with self._wake:
            while not self._closed:
                deadline = self._deadline
                if deadline is None:
                    self._wake.wait(self._idle_check)
                elif time.monotonic() >= deadline:
                    self._deadline = None
                    self._expire()
                else:
                    self._wake.wait(deadline - time.monotonic())


class _Stream:
    """A bidirectional call driven one request, one reply at a time, each bounded in time."""

    def __init__(self, method: Callable[..., Any], *, timeout: float) -> None:
        self._requests: queue.SimpleQueue[object] = queue.SimpleQueue()
        # The stream lives as long as the session; each step has its own bound (see `call`).
        self._replies: Any = method(self._iterate())
        self._timeout = timeout
        self._timed_out = False
        self._watchdog = _Watchdog(self._time_out, idle_check=timeout)

    def _iterate(self) -> Iterator[object]:
        while (request := self._requests.get()) is not _STREAM_END:
            yield request

    def call(self, request: object) -> object:
        """Sends `request` and returns its reply; cancels the stream after the timeout."""
        self._watchdog.arm(self._timeout)
        self._requests.put(request)
        try:
            return next(self._replies)
        except grpc.RpcError:
            if self._timed_out:
                raise _LocalError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no reply within {self._timeout:g} s (step timeout)",
                ) from None
            raise
        except StopIteration:
            raise _LocalError(grpc.StatusCode.UNAVAILABLE, "the server ended the stream") from None
        finally:
            self._watchdog.disarm()

    def _time_out(self) -> None:
        self._timed_out = True
        self._replies.cancel()

    def close(self) -> None:
        self._watchdog.close()
        self._requests.put(_STREAM_END)
        cancel = getattr(self._replies, "cancel", None)
        if cancel is not None:
            cancel()


class ServerLink:
    """A session with the computation server that survives the server going away.

    Every call is bounded (`step_timeout`) and retried on UNAVAILABLE, DEADLINE_EXCEEDED and
    RESOURCE_EXHAUSTED with a capped backoff for up to `reconnect_timeout` seconds: safe because a
    retried step id is answered from the server's cache, never applied twice. If the server no
    longer knows the session (it restarted, or the session expired), the link opens it again
    with resume, offering the steps it can continue from: the step in flight, the last step
    applied (`position`) and the last step both sides saved (`saved`). When the server continues
    from the first two, the call simply goes on; from the save, `RolledBack` tells the data
    holder to reload that state.

    Args:
        address: "host:port".
        settings: the session to open.
        connect_timeout: seconds to wait for the server to answer the first OpenSession.
        step_timeout: seconds one call may take before it is retried.
        reconnect_timeout: seconds to keep retrying once the server stopped answering.
        resume_at: with `settings.resume`, the step this holder saved last (None: the newest
            state the server holds).
        credentials: TLS files and/or token; default: plaintext, anonymous.
        group_timeout: in a group, seconds one `sync` may wait for the other holders.

    Raises:
        CredentialError: a TLS or token file cannot be read.
    """

    def __init__(
        self,
        address: str,
        settings: SessionSettings,
        *,
        connect_timeout: float = 30.0,
        step_timeout: float = 60.0,
        reconnect_timeout: float = 120.0,
        resume_at: StepId | None = None,
        credentials: Credentials | None = None,
        group_timeout: float = 3600.0,
    ) -> None:
        self.address = address
        self.settings = settings
        self._step_timeout = step_timeout
        self._reconnect_timeout = reconnect_timeout
        limit = message_limit(
            max_batch_size=settings.max_batch_size,
            cut_shape=CUT_SHAPE,
            weights=settings.group is not None,
        )
        credentials = credentials or Credentials()
        self._channel = open_channel(
            address, credentials, options=grpc_options(max_message_bytes=limit)
        )
        # A TLS mismatch looks like silence from here: the handshake fails before any reply.
        self._tls_hint = (
            " (or its TLS did not accept this party: check --tls-ca, --tls-cert, --tls-key)"
            if credentials.tls
            else " (or it speaks TLS: give --tls-ca)"
        )
        self._stub = pb_grpc.SplitLearningStub(self._channel)
        self._streams: dict[str, _Stream] = {}
        self._restored: tuple[str, str] | None = None  # (head label, run) last restored
        self.session_id = ""
        self.resumed = False
        self.topology = ""  # in a group: its topology (the server's choice)
        self.group_size = 0
        self.group_timeout = group_timeout
        self.last_applied: StepId | None = None
        self.position: StepId | None = resume_at
        self.saved: StepId | None = resume_at
        candidates = [resume_at] if settings.resume and resume_at is not None else []
        self._open(
            resume=settings.resume,
            resume_from=candidates,
            from_start=False,
            timeout=connect_timeout,
        )

    def train_step(
        self,
        step: StepId,
        activations: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor | None = None,
        *,
        save: bool = False,
    ) -> StepReply:
        """Sends one batch; returns the gradient w.r.t. `activations` [B, 500].

        With `save`, the server saves the run's resume state after this step, before replying.

        Raises:
            RolledBack: the server came back at an earlier step; nothing was applied.
        """
        request = pb.TrainRequest(
            step=step_to_proto(step),
            activations=tensor_to_proto(activations),
            labels=tensor_to_proto(labels),
            save=save,
        )
        if indices is not None:
            request.indices.CopyFrom(tensor_to_proto(indices))
        reply = self._call(
            lambda: self._stream_call("train", self._stub.Train, request), pending=step
        )
        assert isinstance(reply, pb.TrainReply)
        gradient = tensor_from_proto(
            reply.gradient, dtype=request.activations.dtype, shape=tuple(activations.shape)
        )
        self.position, self._restored = step, None
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
            step=step_to_proto(step),
            split=split,
            activations=tensor_to_proto(activations),
        )
        if labels is not None:
            request.labels.CopyFrom(tensor_to_proto(labels))
        if indices is not None:
            request.indices.CopyFrom(tensor_to_proto(indices))
        reply = self._call(lambda: self._stream_call("eval", self._stub.Evaluate, request))
        assert isinstance(reply, pb.EvalReply)
        logits = tensor_from_proto(
            reply.logits, dtype="float32", shape=(activations.shape[0], None)
        )
        return EvalReply(logits=logits, loss=reply.loss, correct=reply.correct)

    def turn(self, epoch: int, batch: int) -> WeightsBlob | None:
        """Waits for this group member's turn at step (epoch, batch); returns the part 1 to take
        it with, if the group hands one over."""
        return self._sync(pb.SyncRequest.TURN, epoch=epoch, batch=batch)

    def hand_in(self, epoch: int, weights: WeightsBlob) -> None:
        """Hands part 1 to the group after this member's last step of `epoch`."""
        self._sync(pb.SyncRequest.HAND_IN, epoch=epoch, weights=weights)

    def finish(self) -> WeightsBlob | None:
        """Waits for the whole group to finish; returns the final part 1, if not this one's."""
        return self._sync(pb.SyncRequest.FINISHED)

    def _sync(
        self,
        point: pb.SyncRequest.Point,
        *,
        epoch: int = 0,
        batch: int = 0,
        weights: WeightsBlob | None = None,
    ) -> WeightsBlob | None:
        """A group member's synchronisation (see the proto's `SyncRequest`): waits up to
        `group_timeout` for the other holders; returns the part 1 to continue with, if any."""
        request = pb.SyncRequest(point=point, epoch=epoch, batch=batch)
        if weights is not None:
            request.weights.CopyFrom(blob_to_proto(weights))

        def attempt() -> pb.SyncReply:
            request.session_id = self.session_id
            try:
                reply: pb.SyncReply = self._stub.Sync(request, timeout=self.group_timeout)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise GroupStalled(
                        f"the group did not move on for {self.group_timeout:g} s "
                        "(--group-timeout): a holder is missing or stopped; a stopped holder "
                        "continues with --resume"
                    ) from None
                raise
            return reply

        reply = self._call(attempt)
        return blob_from_proto(reply.weights) if reply.has_weights else None

    def checkpoint(self, name: str, *, replace_previous: bool) -> str:
        """Asks the server to write its head as ``<name>.head.ckpt``; returns the server's name
        for the file, relative to its model folder (``heads/<owner>/<run>/<name>.head.ckpt``)."""
        request = pb.CheckpointRequest(name=name, replace_previous=replace_previous)
        reply = self._call(lambda: self._unary(self._stub.Checkpoint, request))
        return str(reply.path)

    def restore(self, name: str, *, run: str = "") -> int:
        """Asks the server to load head `name` that run `run` (default: this one) wrote.

        Returns the steps the head had been trained for. Remembered until the next training
        step: a session reopened in between loads it again.
        """
        request = pb.RestoreRequest(name=name, run=run)
        reply = self._call(lambda: self._unary(self._stub.Restore, request))
        self._restored = (name, run)
        return int(reply.steps_applied)

    def close(self, *, finished: bool = False) -> None:
        """Ends the streams and the session, then the channel. One short try, no retries.

        `finished`: the run is complete and the server may drop its resume states; otherwise it
        keeps them for a later `--resume`.
        """
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()
        if self.session_id:
            request = pb.CloseSessionRequest(session_id=self.session_id, finished=finished)
            try:
                self._stub.CloseSession(request, timeout=_CLOSE_TIMEOUT_S)
            except grpc.RpcError as error:
                logger.warning("closing the session failed: %s", error.details())
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

    def _open(
        self,
        *,
        resume: bool,
        resume_from: list[StepId],
        from_start: bool,
        timeout: float,
    ) -> None:
        """OpenSession, retried on connection failures until `timeout` seconds have passed."""
        s = self.settings
        request = pb.OpenSessionRequest(
            run=s.run,
            cut_shape=list(CUT_SHAPE),
            dtype=s.dtype,
            max_batch_size=s.max_batch_size,
            head=pb.HeadSpec(num_classes=s.num_classes, lr=s.lr, seed=s.seed),
            resume=resume,
            resume_from=[step_to_proto(step) for step in resume_from],
            resume_from_start=from_start,
        )
        if s.group is not None:
            request.group.CopyFrom(
                pb.GroupMember(
                    name=s.group.name,
                    holder=s.group.holder,
                    batches_per_epoch=s.group.batches_per_epoch,
                    samples=s.group.samples,
                    epochs=s.group.epochs,
                )
            )
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            try:
                reply = self._stub.OpenSession(
                    request, timeout=max(left, 0.01), wait_for_ready=True
                )
                break
            except grpc.RpcError as error:
                code = error.code()
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise ServerRefused(error) from None
                if time.monotonic() >= deadline:
                    what = (
                        "no server answered"
                        if code == grpc.StatusCode.DEADLINE_EXCEEDED
                        else (f"the connection kept failing ({error.details()})")
                    )
                    raise ServerUnreachable(
                        f"{what} at {self.address} within {timeout:g} s{self._tls_hint}"
                    ) from None
                self._back_off(attempt, f"opening the session: {code.name}", deadline)
                attempt += 1
        if reply.replaced:
            logger.warning(
                "run %s had a live session (another process of this party?): it was replaced", s.run
            )
        self.session_id = reply.session_id
        self.resumed = reply.resumed
        self.topology, self.group_size = reply.topology, reply.group_size
        self.last_applied = None
        if reply.has_last_applied:
            step = reply.last_applied
            self.last_applied = StepId(step.run, step.epoch, step.batch)

    def _reopen(self, pending: StepId | None) -> None:
        """Opens the lost session again with resume; raises `RolledBack` if it went back."""
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()
        offers: list[StepId] = []
        for step in (pending, self.position, self.saved):
            if step is not None and step not in offers:
                offers.append(step)
        can_restart = self.position is None or self.saved is None
        logger.warning("the server lost the session: opening it again to resume")
        self._open(
            resume=True, resume_from=offers, from_start=can_restart, timeout=self._reconnect_timeout
        )
        now_at = self.last_applied if self.resumed else None
        logger.warning("session resumed at %s", now_at or "the start")
        if now_at is not None and now_at == pending:
            return  # the server applied the step in flight: its reply comes from the cache
        if now_at != self.position:
            self.position = now_at
            raise RolledBack(now_at)
        if self._restored is not None:
            name, run = self._restored
            self.restore(name, run=run)

    def _call(self, attempt: Callable[[], Any], *, pending: StepId | None = None) -> Any:
        """Runs `attempt` until it succeeds, retrying and reopening as the class describes."""
        deadline: float | None = None
        retries = reopens = 0
        while True:
            try:
                return attempt()
            except grpc.RpcError as error:
                code = error.code()
                if code == grpc.StatusCode.UNAUTHENTICATED and reopens < _MAX_REOPENS:
                    reopens += 1
                    self._reopen(pending)
                    continue
                if code not in _RETRYABLE:
                    raise ServerRefused(error) from None
                if deadline is None:
                    deadline = time.monotonic() + self._reconnect_timeout
                if time.monotonic() >= deadline:
                    raise ServerUnreachable(
                        f"server at {self.address} lost for {self._reconnect_timeout:g} s: "
                        f"{code.name}: {error.details()}"
                    ) from None
                self._back_off(retries, f"{code.name}: {error.details()}", deadline)
                retries += 1

    def _stream_call(self, kind: str, method: Callable[..., Any], request: Any) -> object:
        request.session_id = self.session_id
        stream = self._streams.get(kind)
        if stream is None:
            stream = self._streams[kind] = _Stream(method, timeout=self._step_timeout)
        try:
            return stream.call(request)
        except grpc.RpcError:
            self._streams.pop(kind).close()
            raise

    def _unary(self, method: Callable[..., Any], request: Any) -> Any:
        request.session_id = self.session_id
        return method(request, timeout=self._step_timeout)

    @staticmethod
    def _back_off(attempt: int, why: str, deadline: float) -> None:
        """Sleeps a capped exponential backoff; says so once per outage, then only at -v."""
        left = max(deadline - time.monotonic(), 0.0)
        if attempt == 0:
            logger.warning("%s; retrying for up to %.0f s", why, left)
        else:
            logger.debug("%s; retry %d", why, attempt)
        time.sleep(min(0.25 * 2**attempt, _MAX_BACKOFF_S, left))
