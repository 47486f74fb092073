"""The engine's side of tracing: the hooks the server fills when tracing is on, and the
spans of tiles in worker processes.

Tracing is off unless the server turns it on (`rsgrpc.server.tracing`); while it is off
every hook here is None, and the engine pays one None check where it would use one.
Nothing here imports OpenTelemetry until tracing is on: the server imports it when it
starts tracing, a worker when it starts with `worker_settings`.

A tile's span is made in the worker process that runs it, as a child of the span of its
operation: the job's thread names that span in a W3C ``traceparent`` string carried with
the task (`carry`), and the worker's own tracer provider, set up as the worker starts
(`start_in_worker`), exports it to the same collector as the server and is flushed as the
worker exits. A worker the server did not start (a Dask cluster's) gets the settings with
the task too (`carry_to_any_worker`), and sets its provider up at its first traced task.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rsgrpc.engine.operations import Operation

# `trace_job(operation, run)`: `run` (a session's job) wrapped to run within the span of
# `operation`; called in the thread of the call that queues the job.
trace_job: Callable[[Operation, Callable[[], None]], Callable[[], None]] | None = None
# `carry(fn, args)`: the task that runs `fn(*args)` in a worker within a span of its own, a
# child of the current span (the operation's); `fn, args` as they are where there is none.
carry: Callable[[Any, tuple], tuple[Any, tuple]] | None = None
# What a new worker process needs to export its spans (`start_in_worker`).
worker_settings: dict[str, Any] | None = None

# The worker's tracer, once `start_in_worker` has run.
_tracer: Any = None
_extract: Callable[[str], Any] | None = None
# A Dask worker's threads start its tracer once (`traced_on_any_worker`).
_start_lock = threading.Lock()


def traceparent(span_context: Any) -> str:
    """The W3C ``traceparent`` of a span context."""
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{int(span_context.trace_flags):02x}"
    )


def current_carrier(fn: Any, args: tuple) -> tuple[Any, tuple]:
    """`carry` while tracing is on: `fn, args` wrapped by `traced_task` with the current
    span's traceparent, or as they are when no sampled span is current."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return fn, args
    return traced_task, (traceparent(context), fn, *args)


def resource_attributes(role: str) -> dict[str, Any]:
    """The resource of the server's or a worker's spans: the service (OTEL_SERVICE_NAME,
    else rsgrpc), the process and its role (server or worker)."""
    return {
        "service.name": os.environ.get("OTEL_SERVICE_NAME") or "rsgrpc",
        "process.pid": os.getpid(),
        "rsgrpc.process.role": role,
    }


def span_processor(endpoint: str | None) -> Any:
    """A batch span processor exporting over OTLP/gRPC to `endpoint` (None: the
    exporter's own default, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
    OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4317)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint or None))


def start_in_worker(settings: dict[str, Any]) -> None:
    """Runs as a worker process starts, when the server traces: a tracer provider of its
    own, exporting where the server's does, shut down (its last spans sent) as the
    worker exits."""
    global _tracer, _extract
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    # Shut down at exit (atexit, which a worker whose pool shuts it down runs): the spans
    # still batched are exported then.
    provider = TracerProvider(resource=Resource.create(resource_attributes("worker")))
    provider.add_span_processor(span_processor(settings.get("endpoint")))
    propagator = TraceContextTextMapPropagator()
    _extract = lambda parent: propagator.extract({"traceparent": parent})  # noqa: E731
    _tracer = provider.get_tracer("rsgrpc.worker")


def carry_to_any_worker(fn: Any, args: tuple) -> tuple[Any, tuple]:
    """`carry` for a worker the server did not start (a Dask cluster's): the task also
    holds `worker_settings`, with which the worker starts tracing at its first such task;
    `fn, args` as they are while tracing is off or no span is current."""
    if carry is None:
        return fn, args
    traced, traced_args = carry(fn, args)
    if traced is fn:
        return fn, args
    return traced_on_any_worker, (worker_settings, *traced_args)


def traced_on_any_worker(settings: dict[str, Any], parent: str, fn: Any, /, *args: Any) -> Any:
    """Runs in a worker the server did not start: `traced_task`, once the worker has
    started tracing with `settings` (at its first such task)."""
    if _tracer is None:
        with _start_lock:
            if _tracer is None:
                start_in_worker(settings)
    return traced_task(parent, fn, *args)


def traced_task(parent: str, fn: Any, /, *args: Any) -> Any:
    """Runs in a worker: `fn(*args)` within a span named after the task, a child of the
    span that `parent` (a traceparent) names, with the tile it works on where it has one."""
    if _tracer is None or _extract is None:  # a worker started before tracing was on
        return fn(*args)
    from rsgrpc.engine.tiles import Tile

    attributes: dict[str, Any] = {
        "rsgrpc.task": f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', fn)}"
    }
    for arg in args:
        if isinstance(arg, Tile):
            attributes.update(
                {
                    "rsgrpc.tile.row": arg.row,
                    "rsgrpc.tile.col": arg.col,
                    "rsgrpc.tile.height": arg.height,
                    "rsgrpc.tile.width": arg.width,
                }
            )
            break
    with _tracer.start_as_current_span("tile", context=_extract(parent), attributes=attributes):
        return fn(*args)
