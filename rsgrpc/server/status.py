"""The tables from engine and download errors to gRPC status codes, and the helpers that use them."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from rsgrpc.download import (
    AuthenticationError,
    BadRequestError,
    CacheCollisionError,
    CacheWriteError,
    DeadlineExceededError,
    DecodingError,
    DownloadCancelledError,
    DownloadError,
    InvalidRequestError,
    NotFoundError,
    OutOfRequestsError,
    ServerError,
)
from rsgrpc.engine import errors

_LOGGER = logging.getLogger(__name__)
DOMAIN = "rsgrpc.v1"

STATUS_CODES: dict[type[errors.RsgrpcError], grpc.StatusCode] = {
    errors.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    errors.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.DataLossError: grpc.StatusCode.DATA_LOSS,
    errors.CancelledError: grpc.StatusCode.CANCELLED,
    errors.WorkerLostError: grpc.StatusCode.UNAVAILABLE,
    errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
}


def status_code(error: errors.RsgrpcError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


def to_status_proto(error: errors.RsgrpcError) -> status_pb2.Status:
    """The google.rpc.Status of an error, with its ErrorInfo."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    code = status_code(error)
    return status_pb2.Status(
        code=getattr(code_pb2, code.name), message=error.message, details=[detail]
    )


# The gRPC code of each way a request of a download batch can fail (reported per item, in
# the operation's response); the error's `reason` is its ErrorInfo reason.
_DOWNLOAD_CODES: Final[dict[type[DownloadError], int]] = {
    InvalidRequestError: code_pb2.INVALID_ARGUMENT,
    NotFoundError: code_pb2.NOT_FOUND,
    BadRequestError: code_pb2.INVALID_ARGUMENT,
    AuthenticationError: code_pb2.UNAUTHENTICATED,
    OutOfRequestsError: code_pb2.RESOURCE_EXHAUSTED,
    DeadlineExceededError: code_pb2.DEADLINE_EXCEEDED,
    ServerError: code_pb2.UNAVAILABLE,
    DownloadCancelledError: code_pb2.CANCELLED,
    CacheCollisionError: code_pb2.FAILED_PRECONDITION,
    DecodingError: code_pb2.DATA_LOSS,
    CacheWriteError: code_pb2.INTERNAL,  # the server owns its cache folder
}


def download_error_status(error: DownloadError) -> status_pb2.Status:
    """The google.rpc.Status of a failed request, with its ErrorInfo (and HTTP status)."""
    code = code_pb2.UNKNOWN
    for cls in type(error).__mro__:
        if cls in _DOWNLOAD_CODES:
            code = _DOWNLOAD_CODES[cls]
            break
    if isinstance(error, AuthenticationError) and error.status_code == 403:
        code = code_pb2.PERMISSION_DENIED
    metadata = {} if error.status_code is None else {"http_status": str(error.status_code)}
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata))
    return status_pb2.Status(code=code, message=str(error), details=[detail])


async def abort(context: grpc.aio.ServicerContext, error: errors.RsgrpcError) -> NoReturn:
    """End the RPC with the error's status code, message and ErrorInfo (raises)."""
    await context.abort_with_status(rpc_status.to_status(to_status_proto(error)))
    raise AssertionError("abort_with_status returned")  # pragma: no cover - it raises


F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(method: F) -> F:
    """Turn engine errors raised by an async servicer method (or stream) into gRPC statuses.

    Anything else is a bug: logged with its traceback under a request id, reported as
    INTERNAL naming the id.
    """
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for response in method(self, request, context):
                    yield response
            except errors.RsgrpcError as exc:
                await abort(context, exc)
            except grpc.aio.AbortError:
                raise
            except Exception:
                await abort(context, errors.internal_error(_LOGGER, method.__qualname__))

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except errors.RsgrpcError as exc:
            await abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception:
            await abort(context, errors.internal_error(_LOGGER, method.__qualname__))

    return unary  # type: ignore[return-value]


def handler_kind(handler: grpc.RpcMethodHandler) -> str:
    """The name of the handler's behaviour field, e.g. `unary_stream`: a wrapper replaces
    that field (``handler._replace(**{kind: wrapped})``)."""
    requests = "stream" if handler.request_streaming else "unary"
    responses = "stream" if handler.response_streaming else "unary"
    return f"{requests}_{responses}"


def entered_first(
    handler: grpc.RpcMethodHandler,
    enter: Callable[[grpc.aio.ServicerContext], Awaitable[None]],
) -> grpc.RpcMethodHandler:
    """`handler` with `enter(context)` awaited first, in the call's own task (so that the
    context variables it sets hold for the whole call and need no reset)."""
    kind = handler_kind(handler)
    behaviour = getattr(handler, kind)
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await enter(context)
            async for response in behaviour(request, context):
                yield response

        return handler._replace(**{kind: stream})

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await enter(context)
        return await behaviour(request, context)

    return handler._replace(**{kind: call})


def refusing_handler(
    handler: grpc.RpcMethodHandler, error: errors.RsgrpcError
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that ends every call with `error`."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context, error)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context, error)
        yield  # pragma: no cover - abort raises

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    return grpc.unary_unary_rpc_method_handler(refuse)
