"""OpenTelemetry tracing, off unless `--tracing true` (it needs the `tracing` extra).

While it is on, spans go over OTLP/gRPC to `--otlp-endpoint` (else to
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4317),
from the server and from each of its local worker processes, with the resource
``service.name`` rsgrpc (or OTEL_SERVICE_NAME); OpenTelemetry's other OTEL_* variables
(sampler, batch delays, headers) hold as usual. Three kinds of span make a trace:

- a call (all but health checks and reflection): a server span, by OpenTelemetry's gRPC
  instrumentation, in the client's trace when the call's metadata carries a W3C
  ``traceparent``, else in a new one;
- an operation: from when its call queued it until it is done, a child of that call's span
  even though it outlives the call, so that a trace holds the call, its job and the job's
  tiles whatever the client sent (a link would put the job in a trace of its own, to be
  found through the call's); its attributes name the tool, the session, the operation,
  its tiles and the status code it ended with;
- a tile run by a local worker: a span in the worker process, a child of its operation's
  (`rsgrpc.engine.tracing`).

When tracing is off nothing imports OpenTelemetry, and the engine's hooks are None.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from rsgrpc.engine import tracing as engine_tracing
from rsgrpc.engine.log_context import REQUEST_ID
from rsgrpc.engine.operations import Operation, OperationStore, Progress, Stage
from rsgrpc.server.status import handler_kind, status_code

_LOGGER = logging.getLogger(__name__)
MISSING_EXTRA = "tracing needs the `tracing` extra: pip install 'rsgrpc[tracing]'"
# Calls not traced: health checks (probed every few seconds) and reflection.
_UNTRACED = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# The codes that make a server span an error, as OpenTelemetry's gRPC instrumentation has it.
_SERVER_ERRORS = frozenset(
    (
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    )
)


def start_tracing(enabled: bool, endpoint: str, operations: OperationStore) -> Tracing | None:
    """The server's tracing, started, or None when it is off. Raises ValueError when it
    is asked for and the `tracing` extra is not installed."""
    if not enabled:
        if endpoint:
            _LOGGER.warning("--otlp-endpoint is set but tracing is off (--tracing true)")
        return None
    return Tracing(endpoint, operations)


class Tracing:
    """The server's tracer provider, its call interceptor, and the engine's hooks, set
    for this process until `close`."""

    def __init__(self, endpoint: str, operations: OperationStore) -> None:
        try:
            from opentelemetry.instrumentation.grpc import aio_server_interceptor
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider

            processor = engine_tracing.span_processor(endpoint)
        except ImportError as exc:
            raise ValueError(f"{MISSING_EXTRA} ({exc})") from None
        self._provider = TracerProvider(
            resource=Resource.create(engine_tracing.resource_attributes("server")),
            shutdown_on_exit=False,
        )
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("rsgrpc")
        self.interceptor = _CallTracing(aio_server_interceptor(tracer_provider=self._provider))
        self._lock = threading.Lock()
        self._spans: dict[Operation, Any] = {}  # of the operations whose job has begun
        operations.watch(self._operation_changed)
        engine_tracing.worker_settings = {"endpoint": endpoint or None}
        engine_tracing.carry = engine_tracing.current_carrier
        engine_tracing.trace_job = self._trace_job
        _LOGGER.info("tracing on: spans go to %s", endpoint or "the OTLP endpoint of OTEL_*")

    def close(self) -> None:
        """Clear the engine's hooks; export the spans still batched."""
        engine_tracing.trace_job = None
        engine_tracing.carry = None
        engine_tracing.worker_settings = None
        with self._lock:
            spans, self._spans = list(self._spans.values()), {}
        for span in spans:  # of jobs still running (the server's shutdown gave up on them)
            span.end()
        self._provider.shutdown()

    def _trace_job(self, operation: Operation, run: Callable[[], None]) -> Callable[[], None]:
        """`run` within the span of `operation`, begun when it was queued in the context of
        the call that queued it (the job runs in a copy of that context)."""
        from opentelemetry import trace

        def traced() -> None:
            span = self._tracer.start_span(
                f"operation {operation.method}",
                start_time=int(operation.create_time * 1e9),
                attributes={
                    "rsgrpc.operation.name": operation.name,
                    "rsgrpc.operation.method": operation.method,
                    "rsgrpc.session": operation.session,
                    "rsgrpc.request_id": REQUEST_ID.get() or "",
                },
            )
            span.add_event("job started")
            with self._lock:
                self._spans[operation] = span
            try:
                with trace.use_span(span, end_on_exit=False):
                    run()
            finally:
                # Ended as the operation finished (`_operation_changed`), but if it did not.
                self._end(operation)

        return traced

    def _operation_changed(self, operation: Operation, before: Progress, after: Progress) -> None:
        """A store watcher: the operation's span ends as it finishes, before anyone waiting
        for it is told, so that the span is whole when its client sees the end."""
        if after.stage is Stage.DONE:
            self._end(operation)
        elif after.stage is not before.stage:
            with self._lock:
                span = self._spans.get(operation)
            if span is not None:
                span.add_event(after.stage.name.lower())

    def _end(self, operation: Operation) -> None:
        with self._lock:
            span = self._spans.pop(operation, None)
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        progress = operation.progress
        error = operation.error
        code = grpc.StatusCode.OK if error is None else status_code(error)
        span.set_attributes(
            {
                "rsgrpc.operation.status_code": code.name,
                "rsgrpc.operation.tiles_total": progress.tiles_total,
                "rsgrpc.operation.tiles_done": progress.tiles_done,
                "rsgrpc.operation.bytes_read": progress.bytes_read,
                "rsgrpc.operation.bytes_written": progress.bytes_written,
            }
        )
        if error is not None and code is not grpc.StatusCode.CANCELLED:
            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {error}"))
        end = operation.end_time
        span.end(end_time=None if end is None else int(end * 1e9))


class _CallTracing(grpc.aio.ServerInterceptor):
    """OpenTelemetry's server interceptor for every call but health checks and reflection,
    with the status code of a call that ends by `abort_with_status` (as every error of this
    server does) set on its span: the instrumentation sees only `abort` and `set_code`."""

    def __init__(self, instrumentation: grpc.aio.ServerInterceptor) -> None:
        self._instrumentation = instrumentation

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if handler_call_details.method.startswith(_UNTRACED):
            return await continuation(handler_call_details)

        async def recorded(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            handler = await continuation(details)
            return handler if handler is None else _status_recorded(handler)

        return await self._instrumentation.intercept_service(recorded, handler_call_details)


def _status_recorded(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` with the code of a call that aborts set on the current (the call's) span."""
    kind = handler_kind(handler)
    behaviour = getattr(handler, kind)
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for response in behaviour(request, context):
                    yield response
            except grpc.aio.AbortError:
                _record_code(context)
                raise

        return handler._replace(**{kind: stream})

    if inspect.iscoroutinefunction(behaviour):

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                _record_code(context)
                raise

        return handler._replace(**{kind: unary})
    return handler


def _record_code(context: grpc.aio.ServicerContext) -> None:
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    code = context.code()
    span = trace.get_current_span()
    if code is None or not span.is_recording():
        return
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, f"{code}:{context.details() or ''}"))
