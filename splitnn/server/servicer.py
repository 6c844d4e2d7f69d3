"""The gRPC servicer: decode and validate, call the session, encode. Nothing else lives here."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import NoReturn

import grpc
import torch

from splitnn.common.codec import (
    StepId,
    step_from_proto,
    step_to_proto,
    tensor_from_proto,
    tensor_to_proto,
)
from splitnn.proto import splitnn_pb2 as pb
from splitnn.proto import splitnn_pb2_grpc as pb_grpc
from splitnn.server.errors import status_of
from splitnn.server.head import HeadSession, SessionSpec
from splitnn.server.sessions import SessionRegistry

logger = logging.getLogger(__name__)

TapSink = Callable[[pb.TapRecord], None]


def _abort(context: grpc.ServicerContext, error: Exception) -> NoReturn:
    code, detail = status_of(error)
    if code == grpc.StatusCode.INTERNAL:
        logger.exception("internal error while serving a request", exc_info=error)
    else:
        logger.info("refused a request: %s: %s", code.name, detail)
    context.abort(code, detail)
    raise AssertionError("unreachable")  # context.abort raises


class SplitLearningServicer(pb_grpc.SplitLearningServicer):
    """Serves the head of every open session.

    Args:
        sessions: the session registry.
        tap: collusion mode only: receives every accepted batch exactly as it arrived.
    """

    def __init__(
        self,
        sessions: SessionRegistry,
        *,
        default_seed: int = 0,
        max_message_bytes: int = 0,
        tap: TapSink | None = None,
    ) -> None:
        self._sessions = sessions
        self._max_message_bytes = max_message_bytes
        self._default_seed = default_seed
        self._tap = tap

    def OpenSession(
        self, request: pb.OpenSessionRequest, context: grpc.ServicerContext
    ) -> pb.OpenSessionReply:
        try:
            session, resumed = self._sessions.open(
                _spec_from_proto(request, self._default_seed), resume=request.resume
            )
        except Exception as error:
            _abort(context, error)
        reply = pb.OpenSessionReply(
            session_id=session.session_id,
            resumed=resumed,
            max_message_bytes=self._max_message_bytes,
        )
        if resumed and session.last_step is not None:
            reply.last_applied.CopyFrom(step_to_proto(session.last_step))
            reply.has_last_applied = True
        return reply

    def Train(
        self, request_iterator: Iterator[pb.TrainRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.TrainReply]:
        for request in request_iterator:
            try:
                session = self._sessions.get(request.session_id)
                step = step_from_proto(request.step, run=session.spec.run)
                activations, labels, indices = _decode_batch(session, request, need_labels=True)
                assert labels is not None
                result, applied = session.train_step(step, activations, labels)
            except Exception as error:
                _abort(context, error)
            if applied:
                self._publish(step, "train", "train", request, indices)
            yield pb.TrainReply(
                step=request.step,
                gradient=tensor_to_proto(result.gradient),
                loss=result.loss,
                correct=result.correct,
            )

    def Evaluate(
        self, request_iterator: Iterator[pb.EvalRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.EvalReply]:
        for request in request_iterator:
            try:
                session = self._sessions.get(request.session_id)
                step = step_from_proto(request.step, run=session.spec.run)
                activations, labels, indices = _decode_batch(session, request, need_labels=False)
                result = session.evaluate(activations, labels)
            except Exception as error:
                _abort(context, error)
            self._publish(step, "eval", request.split or "eval", request, indices)
            yield pb.EvalReply(
                step=request.step,
                logits=tensor_to_proto(result.logits),
                loss=result.loss,
                correct=result.correct,
            )

    def Checkpoint(
        self, request: pb.CheckpointRequest, context: grpc.ServicerContext
    ) -> pb.CheckpointReply:
        try:
            session = self._sessions.get(request.session_id)
            path = self._sessions.save_head(
                session, request.name, replace_previous=request.replace_previous
            )
        except Exception as error:
            _abort(context, error)
        return pb.CheckpointReply(path=str(path))

    def Restore(self, request: pb.RestoreRequest, context: grpc.ServicerContext) -> pb.RestoreReply:
        try:
            session = self._sessions.get(request.session_id)
            steps = self._sessions.load_head(session, request.name)
        except Exception as error:
            _abort(context, error)
        return pb.RestoreReply(steps_applied=steps)

    def CloseSession(
        self, request: pb.CloseSessionRequest, context: grpc.ServicerContext
    ) -> pb.CloseSessionReply:
        try:
            self._sessions.close(request.session_id)
        except Exception as error:
            _abort(context, error)
        return pb.CloseSessionReply()

    def _publish(
        self,
        step: StepId,
        phase: str,
        split: str,
        request: pb.TrainRequest | pb.EvalRequest,
        indices: torch.Tensor | None,
    ) -> None:
        if self._tap is None:
            return
        record = pb.TapRecord(
            step=step_to_proto(step),
            phase=phase,
            split=split,
            activations=request.activations,
            labels=request.labels,
            received_at=time.time(),
        )
        if indices is not None:
            record.indices.CopyFrom(request.indices)
        self._tap(record)


def _spec_from_proto(request: pb.OpenSessionRequest, default_seed: int) -> SessionSpec:
    return SessionSpec(
        run=request.run,
        cut_shape=tuple(request.cut_shape),
        dtype=request.dtype,
        max_batch_size=request.max_batch_size,
        num_classes=request.head.num_classes,
        lr=request.head.lr,
        seed=request.head.seed if request.head.HasField("seed") else default_seed,
    )


def _decode_batch(
    session: HeadSession, request: pb.TrainRequest | pb.EvalRequest, *, need_labels: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """activations [B, *cut] of the session's dtype, finite; labels and indices int64 [B]."""
    spec = session.spec
    activations = tensor_from_proto(
        request.activations, dtype=spec.dtype, shape=(None, *spec.cut_shape), finite=True
    )
    batch = activations.shape[0]
    labels = None
    if need_labels or request.HasField("labels"):
        labels = tensor_from_proto(request.labels, dtype="int64", shape=(batch,))
    indices = None
    if request.HasField("indices"):
        indices = tensor_from_proto(request.indices, dtype="int64", shape=(batch,))
    session.check_batch(activations, labels)
    return activations, labels, indices
