"""Every call gets a request id: the client's ``x-request-id`` metadata when it is a
plain token, else a new one. The server sends it back at once in the response's initial
metadata, and every line the server logs for the call, and for the job it starts, carries
it (`rsgrpc.engine.log_context`), so that a client's error and the server's log meet."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

import grpc

from rsgrpc.engine.log_context import METHOD, REQUEST_ID
from rsgrpc.server.status import entered_first

REQUEST_ID_KEY = "x-request-id"
# What a client's id may be: it is written in every log line of the call, so no spaces,
# quotes or control characters, and not long.
_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    """The call's id: the client's when it is a plain token, else a new one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _TOKEN.fullmatch(value):
            return value
    return uuid.uuid4().hex[:16]


class RequestIdInterceptor(grpc.aio.ServerInterceptor):
    """Names each call by its request id and method for the log, and tells the client
    the id in the response's initial metadata."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method

        async def enter(context: grpc.aio.ServicerContext) -> None:
            rid = request_id(context.invocation_metadata())
            REQUEST_ID.set(rid)
            METHOD.set(method)
            await context.send_initial_metadata(((REQUEST_ID_KEY, rid),))

        return entered_first(handler, enter)
