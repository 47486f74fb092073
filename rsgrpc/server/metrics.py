"""The server's Prometheus metrics: its RPCs, operations, tiles, workers, RAM and downloads,
served at /metrics over HTTP on a port of their own.

Each server has its own `CollectorRegistry`, never prometheus_client's global one, so
that several servers in one process (tests) do not clash. Most numbers are read from
the engine when Prometheus scrapes (`_EngineCollector`): sessions, workers, RAM,
operations running, and the download counters that each deployment's rate limiter
keeps. Only events that leave no state behind are counted as they happen: RPCs (an
interceptor) and what operations did (a watcher of the operation store).

Labels take few values: method names, gRPC code names, tool names, operation states,
deployment names (operator configuration) and HTTP statuses; never a session,
operation, path or identity.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
import wsgiref.simple_server
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, Final

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from rsgrpc.download import Deployment, registered_limiter
from rsgrpc.engine.errors import CancelledError
from rsgrpc.engine.executors import LocalProcessExecutor
from rsgrpc.engine.operations import Operation, OperationStore, Progress, Stage
from rsgrpc.engine.session import SessionRegistry
from rsgrpc.server.config import MIB
from rsgrpc.server.status import handler_kind
from rsgrpc.v1 import raster_pb2

_LOGGER = logging.getLogger(__name__)

# The operations whose progress counts tiles: the raster tools (a download's counts requests).
_TILED_TOOLS: Final[frozenset[str]] = frozenset(
    method.name for method in raster_pb2.DESCRIPTOR.services_by_name["RasterService"].methods
)
# From a health check to a WatchOperation stream that follows a long job.
_RPC_SECONDS_BUCKETS: Final = (
    0.001,
    0.005,
    0.025,
    0.1,
    0.25,
    1.0,
    2.5,
    10.0,
    30.0,
    120.0,
    600.0,
    3600.0,
)


def operation_state(operation: Operation) -> str:
    """How a finished operation ended: succeeded, cancelled or failed."""
    if operation.error is None:
        return "succeeded"
    if isinstance(operation.error, CancelledError):
        return "cancelled"
    return "failed"


class ServerMetrics:
    """The metrics of one server, and the HTTP endpoint that serves them."""

    def __init__(
        self,
        sessions: SessionRegistry,
        operations: OperationStore,
        deployments: Mapping[str, Deployment],
        deployment_up: Callable[[str], bool] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self._rpc_requests = Counter(
            "rsgrpc_rpc_requests",
            "RPCs handled, by method and the gRPC status code the client got.",
            ["method", "code"],
            registry=self.registry,
        )
        self._rpc_seconds = Histogram(
            "rsgrpc_rpc_duration_seconds",
            "How long RPCs took, from the handler's start to its status (streams included).",
            ["method"],
            buckets=_RPC_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self._operations_ended = Counter(
            "rsgrpc_operations",
            "Operations finished, by tool (the RPC that started them) and how they ended.",
            ["tool", "state"],
            registry=self.registry,
        )
        self._tiles = Counter(
            "rsgrpc_tiles",
            "Tiles the raster tools finished, as their operations' progress counts them.",
            ["tool"],
            registry=self.registry,
        )
        self._tile_bytes = Counter(
            "rsgrpc_tile_bytes",
            "Bytes the raster tools wrote, as their operations' progress counts them.",
            ["tool"],
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(sessions, operations, deployments, deployment_up))
        operations.watch(self._operation_changed)
        self.interceptor = RpcMetricsInterceptor(self._rpc_requests, self._rpc_seconds)
        self._http: wsgiref.simple_server.WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        """The port the endpoint listens on, or None when it does not."""
        return None if self._http is None else self._http.server_port

    def serve(self, address: str, port: int) -> int:
        """Serve /metrics over HTTP on `address`:`port` in a daemon thread; return the port.

        Raises OSError when the port cannot be had."""
        try:
            self._http, self._http_thread = start_http_server(
                port, addr=address, registry=self.registry
            )
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {address}:{port}: {exc.strerror}") from None
        _LOGGER.info("serving metrics on %s:%d", address, self._http.server_port)
        return self._http.server_port

    def close(self) -> None:
        """Stop serving, if serving; the port is free when this returns."""
        http, thread, self._http, self._http_thread = self._http, self._http_thread, None, None
        if http is None:
            return
        http.shutdown()
        http.server_close()
        if thread is not None:
            thread.join()

    def _operation_changed(self, operation: Operation, before: Progress, after: Progress) -> None:
        tool = operation.method
        if tool in _TILED_TOOLS:
            # Differences of snapshots: what a job counts again (a script's next line
            # starting from its own figures) never goes backwards here.
            tiles = after.tiles_done - before.tiles_done
            if tiles > 0:
                self._tiles.labels(tool).inc(tiles)
            written = after.bytes_written - before.bytes_written
            if written > 0:
                self._tile_bytes.labels(tool).inc(written)
        if after.stage is Stage.DONE and before.stage is not Stage.DONE:
            self._operations_ended.labels(tool, operation_state(operation)).inc()


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call to a method the server has, unary or streaming.

    First among the server's interceptors, so that it sees what the others answer
    (UNAVAILABLE while stopping, UNAUTHENTICATED). Calls to methods the server does not
    have are not counted: their names are the caller's to choose.
    """

    def __init__(self, requests: Counter, seconds: Histogram) -> None:
        self._requests = requests
        self._seconds = seconds

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.removeprefix("/")
        return _measured(handler, lambda code, seconds: self._record(method, code, seconds))

    def _record(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self._requests.labels(method, code.name).inc()
        self._seconds.labels(method).observe(seconds)


Record = Callable[[grpc.StatusCode, float], None]


def _measured(handler: grpc.RpcMethodHandler, record: Record) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour wrapped by `_timed`."""
    kind = handler_kind(handler)
    wrapped = _timed(getattr(handler, kind), record)
    return handler if wrapped is None else handler._replace(**{kind: wrapped})


def _timed(behaviour: Any, record: Record) -> Any:
    """An async behaviour that runs `behaviour` and records its duration and the status
    code the client gets; None for a synchronous one (grpc.aio runs those differently, and
    this server has none).

    gRPC tells a coroutine from an async generator by its kind (a generator yields the
    responses; a coroutine writes them with `context.write`), so the wrapper is of the
    same kind as what it wraps.
    """
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            began = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                async for response in behaviour(request, context):
                    yield response
                code = _code_of(context)
            except BaseException as exc:
                code = _code_raised(context, exc)
                raise
            finally:
                record(code, time.perf_counter() - began)

        return stream

    if inspect.iscoroutinefunction(behaviour):

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            began = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                response = await behaviour(request, context)
                code = _code_of(context)
                return response
            except BaseException as exc:
                code = _code_raised(context, exc)
                raise
            finally:
                record(code, time.perf_counter() - began)

        return unary
    return None


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The code of a call whose handler returned: the one it set, else OK."""
    return context.code() or grpc.StatusCode.OK


def _code_raised(context: grpc.aio.ServicerContext, exc: BaseException) -> grpc.StatusCode:
    """The code of a call whose handler raised `exc`.

    `abort` (which `status.reports_errors` uses for every engine error) sets the code,
    then raises AbortError; a call that the client cancelled, or whose deadline passed,
    has its task cancelled (or, streaming, its generator closed); gRPC answers anything
    else UNKNOWN.
    """
    if isinstance(exc, grpc.aio.AbortError):
        return context.code() or grpc.StatusCode.UNKNOWN
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class _EngineCollector(Collector):
    """What the engine holds now, read at each scrape."""

    def __init__(
        self,
        sessions: SessionRegistry,
        operations: OperationStore,
        deployments: Mapping[str, Deployment],
        deployment_up: Callable[[str], bool] | None = None,
    ) -> None:
        self._sessions = sessions
        self._operations = operations
        self._deployments = sorted(deployments)
        self._deployment_up = deployment_up

    def collect(self) -> Iterator[Any]:
        yield from self._operations_now()
        yield from self._workers_now()
        yield from self._downloads()
        yield from self._deployments_up()

    def _operations_now(self) -> Iterator[GaugeMetricFamily]:
        running: Tally[str] = Tally()
        queued: Tally[str] = Tally()
        for operation in self._operations.list():
            stage = operation.progress.stage
            if stage is Stage.QUEUED:
                queued[operation.method] += 1
            elif stage is not Stage.DONE:
                running[operation.method] += 1
        for name, text, tally in (
            ("rsgrpc_operations_running", "Operations running, by tool.", running),
            ("rsgrpc_operations_queued", "Operations waiting for their session, by tool.", queued),
        ):
            family = GaugeMetricFamily(name, text, labels=["tool"])
            for tool, count in sorted(tally.items()):
                family.add_metric([tool], count)
            yield family

    def _workers_now(self) -> Iterator[GaugeMetricFamily]:
        sessions = self._sessions.list()
        busy = idle = 0
        for session in sessions:
            executor = session.executor
            if isinstance(executor, LocalProcessExecutor):  # a Dask cluster's are not ours
                working = executor.busy_workers
                busy += working
                idle += executor.workers - working
        idle += self._sessions.stock.spare_processes
        workers = GaugeMetricFamily(
            "rsgrpc_worker_processes",
            "Local worker processes: busy running a task, or idle (in a session or spare).",
            labels=["state"],
        )
        workers.add_metric(["busy"], busy)
        workers.add_metric(["idle"], idle)
        yield workers
        yield GaugeMetricFamily("rsgrpc_sessions_open", "Sessions open.", value=len(sessions))
        yield GaugeMetricFamily(
            "rsgrpc_ram_reserved_bytes",
            "RAM the open sessions reserve against the server's budget.",
            value=self._sessions.reserved_ram_mib() * MIB,
        )
        yield GaugeMetricFamily(
            "rsgrpc_ram_budget_bytes",
            "The server's RAM budget, shared by its sessions.",
            value=self._sessions.limits.ram_mib * MIB,
        )

    def _downloads(self) -> Iterator[CounterMetricFamily]:
        requests = CounterMetricFamily(
            "rsgrpc_download_requests",
            "Download attempts sent, by deployment and HTTP status (error: no answer came).",
            labels=["deployment", "code"],
        )
        retries = CounterMetricFamily(
            "rsgrpc_download_retries",
            "Download attempts that were not their request's first.",
            labels=["deployment"],
        )
        rate_limited = CounterMetricFamily(
            "rsgrpc_download_rate_limited",
            "429 Too Many Requests answers, each pausing its deployment.",
            labels=["deployment"],
        )
        waited = CounterMetricFamily(
            "rsgrpc_download_limiter_wait_seconds",
            "Seconds download requests waited for their deployment's rate limiter.",
            labels=["deployment"],
        )
        for name in self._deployments:
            # The deployment's limiter is the process's, shared by every client naming it.
            limiter = registered_limiter(name)
            if limiter is None:  # nothing downloaded yet
                for family in (retries, rate_limited, waited):
                    family.add_metric([name], 0)
                continue
            stats = limiter.stats
            for code, count in sorted(stats.answers.items()):
                requests.add_metric([name, code], count)
            retries.add_metric([name], stats.retries)
            rate_limited.add_metric([name], stats.rate_limited_answers)
            waited.add_metric([name], stats.wait_seconds)
        yield from (requests, retries, rate_limited, waited)

    def _deployments_up(self) -> Iterator[GaugeMetricFamily]:
        if self._deployment_up is None:
            return
        up = GaugeMetricFamily(
            "rsgrpc_download_deployment_up",
            "1 while a download deployment can get tokens (its health is SERVING), else 0.",
            labels=["deployment"],
        )
        for name in self._deployments:
            up.add_metric([name], 1 if self._deployment_up(name) else 0)
        yield up
