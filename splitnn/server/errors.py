"""Domain errors of the server, and the one place they become gRPC status codes."""

from __future__ import annotations

import grpc

from splitnn.common.checkpoints import CheckpointError
from splitnn.common.codec import CodecError


class ServerError(Exception):
    """Base of the errors a peer can cause; the message is safe to send back."""

    code = grpc.StatusCode.INTERNAL


class InvalidRequest(ServerError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class UnknownSession(ServerError):
    """No live session of the caller has this token (the same for someone else's token)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class Unauthenticated(ServerError):
    """No valid credential (client certificate or token)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class Forbidden(ServerError):
    """The caller's role does not allow this call."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Busy(ServerError):
    """A limit of the server is reached (sessions, streams, steps in flight); try again later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class WrongState(ServerError):
    """Valid on its own but not now: a step out of order, a resume that does not match."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NotYet(Exception):
    """A group must move on before this request can be answered: ask again after a change.

    Not a peer's error: the servicer waits and retries (see `servicer.py`).
    """


def status_of(error: Exception) -> tuple[grpc.StatusCode, str]:
    """Maps an exception to (status, public detail). Unknown errors leak no detail."""
    if isinstance(error, ServerError):
        return error.code, str(error)
    if isinstance(error, CodecError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, CheckpointError):  # its text names the server's files: not for the peer
        return grpc.StatusCode.FAILED_PRECONDITION, "a file saved on the server cannot be read"
    return grpc.StatusCode.INTERNAL, "internal server error"
