"""The engine's errors: one root, one class per way a request can fail.

Each class inherits the builtin it resembles, so library users can catch
either. The server maps each class to a gRPC status code in one table
(`rsgrpc.server.status`); `reason` becomes `google.rpc.ErrorInfo.reason`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping


class RsgrpcError(Exception):
    """Raised for any failure the service reports to its clients."""

    reason = "ERROR"

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = dict(metadata or {})


class InvalidArgumentError(RsgrpcError, ValueError):
    """Raised when a request's values are wrong whatever the server's state."""

    reason = "INVALID_ARGUMENT"


class NotFoundError(RsgrpcError, LookupError):
    """Raised when a named session, operation or file does not exist."""

    reason = "NOT_FOUND"


class AlreadyExistsError(RsgrpcError, FileExistsError):
    """Raised when an output exists and the request does not allow overwriting it."""

    reason = "ALREADY_EXISTS"


class PermissionDeniedError(RsgrpcError, PermissionError):
    """Raised when a path leads outside the data root."""

    reason = "PATH_OUTSIDE_DATA_ROOT"


class ResourceExhaustedError(RsgrpcError):
    """Raised when a request would go over a RAM, process, session or operation limit."""

    reason = "RESOURCE_EXHAUSTED"


class FailedPreconditionError(RsgrpcError):
    """Raised when the server's state does not allow the request (a closed session, say)."""

    reason = "FAILED_PRECONDITION"


class DataLossError(RsgrpcError):
    """Raised when an input's pixels cannot be read past its header (corrupt or truncated)."""

    reason = "DATA_LOSS"


class CancelledError(RsgrpcError):
    """Raised when a client cancelled the operation."""

    reason = "CANCELLED"


class WorkerLostError(RsgrpcError):
    """Raised when a worker process died during a job; the session's pool is rebuilt."""

    reason = "WORKER_LOST"


class UnavailableError(RsgrpcError):
    """Raised when the server is shutting down."""

    reason = "SHUTTING_DOWN"


class WorkersUnavailableError(UnavailableError):
    """Raised when what runs a session's tiles cannot run them now: its worker processes
    do not start, or its Dask scheduler cannot be reached."""

    reason = "WORKERS_UNAVAILABLE"


def internal_error(logger: logging.Logger, what: str) -> RsgrpcError:
    """Log the exception being handled (a bug) under a new request id; return the error
    that clients see (INTERNAL), which names only the id: the exception's own text can
    name the server's files."""
    request_id = uuid.uuid4().hex[:12]
    logger.exception("%s failed: request id %s", what, request_id)
    return RsgrpcError(f"internal error, request id {request_id}; see the server log")
