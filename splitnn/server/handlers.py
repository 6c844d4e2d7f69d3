"""What each RPC does, from the request's bytes and the caller's identity to the reply's bytes.

Every handler parses its own request (gRPC hands over raw bytes), so bytes that are not a valid
message are refused like any other bad input: INVALID_ARGUMENT, nothing changed. Every session
and run is looked up among the caller's own. Handlers are plain blocking functions; the asyncio
servicer runs them on the compute thread.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import TypeVar

import torch
from google.protobuf.message import DecodeError, Message

from splitnn.common.codec import (
    StepId,
    blob_from_proto,
    blob_to_proto,
    group_join_from_proto,
    step_from_proto,
    step_to_proto,
    tensor_from_proto,
    tensor_to_proto,
)
from splitnn.proto import splitnn_pb2 as pb
from splitnn.server.errors import InvalidRequest, WrongState
from splitnn.server.group_head import RESTORE_REFUSED, GroupMemberHead
from splitnn.server.groups import Groups
from splitnn.server.head import HeadSession, SessionSpec
from splitnn.server.identity import Identity
from splitnn.server.sessions import SessionRegistry

TapSink = Callable[[pb.TapRecord], None]
M = TypeVar("M", bound=Message)


def parse(message_type: type[M], raw: bytes) -> M:
    """Parses request bytes; anything that is not a valid `message_type` is INVALID_ARGUMENT."""
    try:
        return message_type.FromString(raw)
    except (DecodeError, ValueError, RuntimeError):
        raise InvalidRequest(
            f"the request is not a valid {message_type.DESCRIPTOR.name} message"
        ) from None


class SplitLearningHandlers:
    """Serves the head of every open session.

    Args:
        sessions: the session registry.
        default_seed: seeds a head whose data holder sent no seed.
        max_message_bytes: the receive limit, told to each data holder.
        tap: collusion mode only: receives every accepted batch exactly as it arrived.
        groups: the training groups this server declares (`--group`).
    """

    def __init__(
        self,
        sessions: SessionRegistry,
        *,
        default_seed: int = 0,
        max_message_bytes: int = 0,
        tap: TapSink | None = None,
        groups: Groups | None = None,
    ) -> None:
        self.sessions = sessions
        self.groups = groups or Groups([])
        self._default_seed = default_seed
        self._max_message_bytes = max_message_bytes
        self._tap = tap

    def expire(self, ttl: float) -> None:
        """Saves and forgets sessions idle `ttl` seconds; drops the runs of groups as idle."""
        self.sessions.expire(ttl)
        idle = self.groups.expire(ttl)
        if idle:
            self.sessions.drop_members({group.spec.name for group in idle})

    def open_session(self, raw: bytes, caller: Identity) -> bytes:
        request = parse(pb.OpenSessionRequest, raw)
        spec = _spec_from_proto(request, self._default_seed)
        resume_from = [step_from_proto(step) for step in request.resume_from]
        if request.HasField("group"):
            return self._join_group(request, spec, resume_from, caller)
        session, resumed = self.sessions.open(
            spec,
            resume=request.resume,
            resume_from=resume_from,
            from_start=request.resume_from_start,
            owner=caller.folder,
        )
        reply = pb.OpenSessionReply(
            session_id=session.session_id,
            resumed=resumed,
            max_message_bytes=self._max_message_bytes,
            replaced=session.replaced,
        )
        if resumed and session.head.last_step is not None:
            reply.last_applied.CopyFrom(step_to_proto(session.head.last_step))
            reply.has_last_applied = True
        return reply.SerializeToString()

    def train(self, raw: bytes, caller: Identity) -> bytes:
        request = parse(pb.TrainRequest, raw)
        session = self.sessions.get(request.session_id, owner=caller.folder)
        step = step_from_proto(request.step, run=session.spec.run)
        activations, labels, indices = _decode_batch(session, request, need_labels=True)
        assert labels is not None
        result, applied = session.head.train(step, activations, labels, save=request.save)
        self.sessions.after_step(session, step, applied=applied, save=request.save)
        if applied:
            self._publish(session, step, "train", "train", request, indices)
        reply = pb.TrainReply(
            step=request.step,
            gradient=tensor_to_proto(result.gradient),
            loss=result.loss,
            correct=result.correct,
        )
        return reply.SerializeToString()

    def evaluate(self, raw: bytes, caller: Identity) -> bytes:
        request = parse(pb.EvalRequest, raw)
        session = self.sessions.get(request.session_id, owner=caller.folder)
        step = step_from_proto(request.step, run=session.spec.run)
        activations, labels, indices = _decode_batch(session, request, need_labels=False)
        result = session.head.evaluate(activations, labels)
        self._publish(session, step, "eval", request.split or "eval", request, indices)
        reply = pb.EvalReply(
            step=request.step,
            logits=tensor_to_proto(result.logits),
            loss=result.loss,
            correct=result.correct,
        )
        return reply.SerializeToString()

    def checkpoint(self, raw: bytes, caller: Identity) -> bytes:
        """Writes the session's head; a group member's only once its group is over."""
        request = parse(pb.CheckpointRequest, raw)
        session = self.sessions.get(request.session_id, owner=caller.folder)
        path = self.sessions.save_head(
            session, request.name, replace_previous=request.replace_previous
        )
        # Named within the model folder: the peer learns nothing of the server's file system.
        name = path.relative_to(self.sessions.model_dir).as_posix()
        return pb.CheckpointReply(path=name).SerializeToString()

    def restore(self, raw: bytes, caller: Identity) -> bytes:
        """Loads one of the caller's heads into its session's; refused in a group session."""
        request = parse(pb.RestoreRequest, raw)
        session = self.sessions.get(request.session_id, owner=caller.folder)
        if session.head.group_name is not None:
            raise WrongState(RESTORE_REFUSED)  # before any file is looked up
        steps = self.sessions.load_head(session, request.name, run=request.run)
        return pb.RestoreReply(steps_applied=steps).SerializeToString()

    def close_session(self, raw: bytes, caller: Identity) -> bytes:
        request = parse(pb.CloseSessionRequest, raw)
        self.sessions.close(request.session_id, finished=request.finished, owner=caller.folder)
        return pb.CloseSessionReply().SerializeToString()

    def sync(self, raw: bytes, caller: Identity) -> bytes:
        """A group member's turn, hand-in or finish (see `group.py`).

        Raises:
            NotYet: the group must move on first; the servicer asks again after a change.
        """
        request = parse(pb.SyncRequest, raw)
        head = self.sessions.get(request.session_id, owner=caller.folder).head
        weights = None
        if request.point == pb.SyncRequest.TURN:
            weights = head.turn(request.epoch, request.batch)
        elif request.point == pb.SyncRequest.HAND_IN:
            if not request.HasField("weights"):
                raise InvalidRequest("a hand-in carries part 1's weights")
            head.hand_in(request.epoch, blob_from_proto(request.weights))
        elif request.point == pb.SyncRequest.FINISHED:
            weights = head.finish()
        else:
            raise InvalidRequest(f"unknown sync point {request.point}")
        reply = pb.SyncReply(has_weights=weights is not None)
        if weights is not None:
            reply.weights.CopyFrom(blob_to_proto(weights))
        return reply.SerializeToString()

    def _join_group(
        self,
        request: pb.OpenSessionRequest,
        spec: SessionSpec,
        resume_from: list[StepId],
        caller: Identity,
    ) -> bytes:
        self.sessions.check_spec(spec)
        group = self.groups.admit(request.group.name, request.group.holder, caller)
        member, after, resumed = group.join(
            spec,
            group_join_from_proto(request.group),
            owner=caller.folder,
            resume=request.resume,
            offers=resume_from,
            from_start=request.resume_from_start,
        )
        head = GroupMemberHead(group, member)
        session = HeadSession(secrets.token_hex(16), spec, head=head, owner=caller.folder)
        self.sessions.adopt(session)
        reply = pb.OpenSessionReply(
            session_id=session.session_id,
            resumed=resumed,
            max_message_bytes=self._max_message_bytes,
            replaced=session.replaced,
            topology=group.topology.name,
            group_size=group.spec.size,
        )
        if after is not None:
            reply.last_applied.CopyFrom(step_to_proto(StepId(spec.run, *after)))
            reply.has_last_applied = True
        return reply.SerializeToString()

    def _publish(
        self,
        session: HeadSession,
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
            owner=session.owner,
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
