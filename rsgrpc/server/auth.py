"""Bearer-token authentication, as one server interceptor; health checks are exempt."""

from __future__ import annotations

import hmac

import grpc
from grpc_health.v1 import health_pb2

_EXEMPT_PREFIX = f"/{health_pb2.DESCRIPTOR.services_by_name['Health'].full_name}/"


def _deny(request, context):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Lets a call through only with `authorization: Bearer <token>` metadata."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the bearer token is empty")
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(_EXEMPT_PREFIX):
            return continuation(handler_call_details)
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization" and hmac.compare_digest(value.encode(), self._expected):
                return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is not None and handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(_deny_stream)
        return grpc.unary_unary_rpc_method_handler(_deny)


def _deny_stream(request, context):
    _deny(request, context)
    yield  # pragma: no cover - abort raises
