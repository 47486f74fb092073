"""The server: wiring of services, health and reflection, start-up and graceful shutdown.

It is served with `grpc.aio` on an event loop in a thread of its own: a call that waits
(WaitOperation, WatchOperation) holds no thread, and health answers under any load.
Engine calls that block (reading headers, starting or stopping workers) run in a
bounded pool of threads, the loop's default executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.longrunning import operations_proto_pb2 as lro
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rsgrpc.engine.errors import UnavailableError
from rsgrpc.engine.executors import START_SECONDS
from rsgrpc.engine.gdal_threads import start_gdal_threads
from rsgrpc.engine.kernel_cache import report_kernel_cache, use_kernel_cache_dir
from rsgrpc.engine.leftovers import remove_leftovers_in_background
from rsgrpc.engine.object_store import stage_in
from rsgrpc.engine.operations import OperationStore
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.root_probe import mark_roots
from rsgrpc.engine.session import ServerLimits, Session, SessionRegistry
from rsgrpc.engine.sieve import load_finishing_kernels
from rsgrpc.server.auth import Authenticator, IdentityInterceptor, read_tokens
from rsgrpc.server.bandset_servicer import BandSetServicer
from rsgrpc.server.config import MIB, ServerConfig
from rsgrpc.server.deployment_health import DeploymentWatch
from rsgrpc.server.deployments import load_download_settings
from rsgrpc.server.download_servicer import DownloadServicer
from rsgrpc.server.metrics import ServerMetrics
from rsgrpc.server.operation_servicer import Waiters, add_operation_services, wakened_by
from rsgrpc.server.raster_servicer import RasterServicer
from rsgrpc.server.readiness import SchedulerWatch, scheduler_reachable
from rsgrpc.server.request_ids import RequestIdInterceptor
from rsgrpc.server.session_servicer import SessionServicer
from rsgrpc.server.status import refusing_handler
from rsgrpc.server.tracing import start_tracing
from rsgrpc.v1 import (
    bandset_pb2,
    bandset_pb2_grpc,
    download_pb2,
    download_pb2_grpc,
    operation_pb2,
    raster_pb2,
    raster_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

RASTER_SERVICE = raster_pb2.DESCRIPTOR.services_by_name["RasterService"].full_name
SERVICE_NAMES = (
    session_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name,
    RASTER_SERVICE,
    operation_pb2.DESCRIPTOR.services_by_name["OperationWatchService"].full_name,
    lro.DESCRIPTOR.services_by_name["Operations"].full_name,
    download_pb2.DESCRIPTOR.services_by_name["DownloadService"].full_name,
    bandset_pb2.DESCRIPTOR.services_by_name["BandSetService"].full_name,
)
_HEALTH_PREFIX = f"/{health.SERVICE_NAME}/"
_MAX_PENDING_CALLS = 16_384
# Bounds of the steps of a shutdown past the grace period, so that it always ends.
_CLOSE_SESSIONS_TIMEOUT_S = 5.0
_STOP_SERVER_GRACE_S = 1.0
_START_TIMEOUT_S = 60.0
# `serve` ends the process this long after the grace period, whatever still runs.
EXIT_MARGIN_S = 10.0
_SIGNAL_POLL_S = 0.1


def _channel_options(config: ServerConfig) -> list[tuple[str, int]]:
    size = config.max_message_mib * MIB
    return [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        # A second server on the same port would take half the connections.
        ("grpc.so_reuseport", int(config.reuse_port)),
        # Calls wait here until the event loop takes them; gRPC's default of 1,000 cancels
        # part of a burst of a few thousand WatchOperation calls.
        ("grpc.server.max_pending_requests", _MAX_PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", 2 * _MAX_PENDING_CALLS),
        # Let clients keep a long WatchOperation or WaitOperation alive with
        # pings, without the server answering GOAWAY "too_many_pings".
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert_file:
        return None
    with open(config.tls_key_file, "rb") as key, open(config.tls_cert_file, "rb") as cert:
        pair = (key.read(), cert.read())
    if config.tls_client_ca_file:
        with open(config.tls_client_ca_file, "rb") as ca:
            return grpc.ssl_server_credentials(
                [pair], root_certificates=ca.read(), require_client_auth=True
            )
    return grpc.ssl_server_credentials([pair])


def _authenticator(config: ServerConfig) -> Authenticator | None:
    """Who may call, or None when every caller is anonymous."""
    tokens = read_tokens(config.auth_token_file) if config.auth_token_file else {}
    if not tokens and not config.tls_client_ca_file:
        return None
    admins = [name.strip() for name in config.admin_identities.split(",") if name.strip()]
    return Authenticator(tokens=tokens, certificates=bool(config.tls_client_ca_file), admins=admins)


def _prepare_own_work() -> None:
    """What the server runs itself, made ready as it starts: its GDAL threads, and the
    kernels of the sieve's last pass."""
    start_gdal_threads()
    try:
        load_finishing_kernels()
    except Exception:  # they load, or compile, on first use instead
        _LOGGER.exception("loading the server's kernels at start failed")


async def _set_health(
    servicer: health.aio.HealthServicer, status: int, not_serving: tuple[str, ...] = ()
) -> None:
    """The status of the server as a whole and of each of its services, but those
    `not_serving`."""
    for name in ("", *SERVICE_NAMES):
        await servicer.set(
            name, health_pb2.HealthCheckResponse.NOT_SERVING if name in not_serving else status
        )


class _Door(grpc.aio.ServerInterceptor):
    """Once the server is stopping, every call but a health check gets UNAVAILABLE."""

    def __init__(self) -> None:
        self.stopping = False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if (
            self.stopping
            and handler is not None
            and not handler_call_details.method.startswith(_HEALTH_PREFIX)
        ):
            return refusing_handler(handler, UnavailableError("the server is shutting down"))
        return handler


@dataclass
class RunningServer:
    """A started server: its port and the parts tests and the CLI need."""

    port: int
    server: grpc.aio.Server
    registry: SessionRegistry
    operations: OperationStore
    health: health.aio.HealthServicer
    data_root: DataRoot
    metrics_port: int | None = None  # where /metrics is served, if it is


class _EventLoopThread:
    """An asyncio event loop running in a daemon thread; other threads hand it coroutines.

    Its default executor, which `asyncio.to_thread` uses, is the bounded pool of
    threads for blocking calls.
    """

    def __init__(self, blocking_threads: int) -> None:
        self.loop = asyncio.new_event_loop()
        self._blocking = futures.ThreadPoolExecutor(
            blocking_threads, thread_name_prefix="rpc-blocking"
        )
        self.loop.set_default_executor(self._blocking)
        self._thread = threading.Thread(target=self.loop.run_forever, name="rpc-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coroutine` on the loop; wait at most `timeout` seconds for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self, timeout: float) -> None:
        """Stop the loop and close it; blocking calls still queued are dropped, and one
        still running is not waited for."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        self._blocking.shutdown(wait=False, cancel_futures=True)
        if self._thread.is_alive():
            _LOGGER.error("the event loop did not stop within %.0f s", timeout)
            return
        self.loop.close()


class _Sweeper(threading.Thread):
    """Closes idle sessions at a fixed interval."""

    def __init__(self, registry: SessionRegistry, interval: float) -> None:
        super().__init__(name="session-sweeper", daemon=True)
        self._registry = registry
        self._interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self._interval):
            try:
                self._registry.expire_idle()
            except Exception:
                _LOGGER.exception("expiring idle sessions failed")


def _cancel_operations_of(operations: OperationStore, session: Session) -> None:
    for operation in operations.list(session=session.name):
        operation.cancel()


@dataclass
class _Served:
    """What the loop serves, and what stopping it needs."""

    running: RunningServer
    door: _Door
    waiters: Waiters


@contextlib.contextmanager
def run_server(config: ServerConfig) -> Iterator[RunningServer]:
    """Start a server; yield it with its bound port; shut it down gracefully on exit.

    Shutting down: health turns NOT_SERVING and every new call but a health check gets
    UNAVAILABLE; running operations get `grace_period_s` to finish and are then
    cancelled; calls still waiting on them get UNAVAILABLE; every session is closed
    (its workers stopped, its files removed). Each step is bounded in time.
    """
    data_root = DataRoot.at(*config.data_roots, names=config.data_root_names)
    # Before any worker is spawned: workers inherit the environment, and numba reads it.
    report_kernel_cache(use_kernel_cache_dir(config.kernel_cache_dir))
    download_settings = load_download_settings(config.deployments)
    authenticator = _authenticator(config)
    credentials = _credentials(config)
    operations = OperationStore(max_running=config.max_operations)
    # Before any worker starts: workers trace too, set up as they start.
    tracing = start_tracing(config.tracing, config.otlp_endpoint, operations)
    registry = SessionRegistry(
        ServerLimits(
            process_count=config.max_processes,
            ram_mib=config.ram_total_mib,
            max_sessions=config.max_sessions,
            max_idle_timeout_s=config.max_session_idle_timeout_s,
            max_raster_pixels=config.max_raster_pixels,
            max_output_bytes=config.max_output_mib * MIB,
            min_free_disk_bytes=config.min_free_disk_mib * MIB,
        ),
        temp_root=config.temp_root.expanduser().resolve(),
        dask_scheduler=config.dask_scheduler or None,
        root_marks=mark_roots(data_root) if config.dask_scheduler else None,
        on_close=lambda session: _cancel_operations_of(operations, session),
        closed_log_s=config.closed_session_log_s,
        max_closed_logs=config.max_closed_session_logs,
    )
    # Outputs in object storage are written here, then uploaded: gone with the instance.
    stage_in(registry.instance_folder.path)
    download_servicer = DownloadServicer(registry, operations, data_root, download_settings)
    # Each deployment's health (NOT_SERVING while its token endpoint fails), and the service's.
    deployment_watch = DeploymentWatch(
        download_pb2.DESCRIPTOR.services_by_name["DownloadService"].full_name,
        download_settings.deployments,
        config.deployment_probe_s,
    )
    metrics = (
        ServerMetrics(registry, operations, download_settings.deployments, deployment_watch.usable)
        if config.metrics_port
        else None
    )

    async def start() -> _Served:
        door = _Door()
        interceptors: list[grpc.aio.ServerInterceptor] = [RequestIdInterceptor(), door]
        if metrics is not None:
            # First: it counts what the door and the authenticator answer too.
            interceptors.insert(0, metrics.interceptor)
        if authenticator is not None:
            interceptors.append(IdentityInterceptor(authenticator))
        if tracing is not None:  # outermost: its span holds what every other one answers
            interceptors.insert(0, tracing.interceptor)
        server = grpc.aio.server(interceptors=interceptors, options=_channel_options(config))
        session_pb2_grpc.add_SessionServiceServicer_to_server(
            SessionServicer(registry, config, data_root), server
        )
        raster_pb2_grpc.add_RasterServiceServicer_to_server(
            RasterServicer(registry, operations, data_root), server
        )
        download_pb2_grpc.add_DownloadServiceServicer_to_server(download_servicer, server)
        bandset_pb2_grpc.add_BandSetServiceServicer_to_server(
            BandSetServicer(registry, data_root), server
        )
        waiters = Waiters(config.max_waiters_per_session)
        add_operation_services(operations, waiters, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        port = _bind(server, config.address, credentials)
        if metrics is not None:
            metrics.serve(config.metrics_address, config.metrics_port)
        await server.start()
        await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
        await deployment_watch.publish(health_servicer, starting=True)
        running = RunningServer(
            port,
            server,
            registry,
            operations,
            health_servicer,
            data_root,
            metrics_port=None if metrics is None else metrics.port,
        )
        return _Served(running, door, waiters)

    # Warm workers for the first session (their kernels loaded as they start), started
    # beside the server: health says SERVING once they have started, so that a first
    # request after a deploy is as fast as the next.
    spare = registry.stock_spare_workers(config.process_count_default)
    prepared = threading.Thread(target=_prepare_own_work, name="prepare", daemon=True)
    prepared.start()
    loop_thread = _EventLoopThread(config.blocking_threads)
    try:
        served = loop_thread.run(start(), _START_TIMEOUT_S)
    except BaseException:
        loop_thread.stop(_STOP_SERVER_GRACE_S)
        download_servicer.close()
        if metrics is not None:
            metrics.close()
        registry.close_all()
        if tracing is not None:
            tracing.close()
        raise
    sweeper = _Sweeper(registry, config.session_sweep_interval_s)
    sweeper.start()
    remove_leftovers_in_background(data_root.roots, registry.temp_root)
    if spare is not None:
        # Bounded: a pool that does not start fails within START_SECONDS, and the
        # server serves anyway (sessions then start their own workers).
        futures.wait([spare], timeout=START_SECONDS + 10)
    prepared.join(timeout=_START_TIMEOUT_S)
    # With a Dask scheduler, the raster service serves while the scheduler answers.
    watch = None
    reachable = not config.dask_scheduler or scheduler_reachable(config.dask_scheduler)
    if config.dask_scheduler:

        def report(reachable: bool) -> None:
            status = health_pb2.HealthCheckResponse
            loop_thread.run(
                served.running.health.set(
                    RASTER_SERVICE, status.SERVING if reachable else status.NOT_SERVING
                ),
                _START_TIMEOUT_S,
            )

        watch = SchedulerWatch(config.dask_scheduler, report, reachable)
    loop_thread.run(
        _set_health(
            served.running.health,
            health_pb2.HealthCheckResponse.SERVING,
            not_serving=() if reachable else (RASTER_SERVICE,),
        ),
        _START_TIMEOUT_S,
    )
    if watch is not None:
        watch.start()
    deployment_watch.start(served.running.health, loop_thread.loop)
    _LOGGER.info(
        "serving on port %d, data roots %s",
        served.running.port,
        ", ".join(str(root) for root in data_root.roots),
    )
    try:
        yield served.running
    finally:
        sweeper.stopped.set()
        if watch is not None:
            watch.stop()
        deployment_watch.stop()
        try:
            loop_thread.run(_shut_down(served, config.grace_period_s), _shutdown_bound(config))
        except futures.TimeoutError:
            _LOGGER.error("shutting down took longer than %.0f s", _shutdown_bound(config))
        loop_thread.stop(_STOP_SERVER_GRACE_S)
        download_servicer.close()
        if metrics is not None:
            metrics.close()
        if tracing is not None:  # after the workers stopped, their spans sent
            tracing.close()
        _LOGGER.info("server stopped")


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        port, cause = 0, exc
    else:
        cause = None
    if port == 0:
        raise OSError(
            f"cannot listen on {address}: is another server using the port? "
            "(--reuse-port true lets several servers share it)"
        ) from cause
    return port


def _shutdown_bound(config: ServerConfig) -> float:
    return config.grace_period_s + _CLOSE_SESSIONS_TIMEOUT_S + _STOP_SERVER_GRACE_S + 1.0


async def _shut_down(served: _Served, grace: float) -> None:
    running = served.running
    served.door.stopping = True
    await running.health.enter_graceful_shutdown()
    running.operations.close()
    await _wait_done(running.operations, grace)
    # Waiting calls end UNAVAILABLE before their operations are cancelled, not CANCELLED.
    served.waiters.close()
    for operation in running.operations.list():
        if not operation.done:
            _LOGGER.warning("cancelling %s at shutdown", operation.name)
            operation.cancel()
    await _in_own_thread(running.registry.close_all, "closing sessions", _CLOSE_SESSIONS_TIMEOUT_S)
    for operation in running.operations.list():
        operation.finish(error=UnavailableError("the server shut down"))
    await running.server.stop(grace=_STOP_SERVER_GRACE_S)


async def _wait_done(operations: OperationStore, timeout: float) -> None:
    """Wait until every operation is done, at most `timeout` seconds."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            for operation in operations.list():
                with wakened_by(operation) as changed:
                    while not operation.done:
                        await changed.wait()
                        changed.clear()


async def _in_own_thread(call: Callable[[], None], what: str, timeout: float) -> None:
    """Run `call` in a daemon thread of its own (the blocking pool may be full); wait for
    it at most `timeout` seconds, and leave it running past that."""
    loop = asyncio.get_running_loop()
    finished = loop.create_future()

    def run() -> None:
        try:
            call()
        except Exception:
            _LOGGER.exception("%s failed", what)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(finished.set_result, None)

    threading.Thread(target=run, name=what, daemon=True).start()
    try:
        await asyncio.wait_for(finished, timeout)
    except TimeoutError:
        _LOGGER.error("%s did not finish within %.0f s; going on", what, timeout)


def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully.

    The process ends at most EXIT_MARGIN_S after the grace period whatever still runs:
    a last-resort watchdog exits it (status 1), with a log line, if a thread hangs.
    """
    received: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: received.append(signum))
    try:
        with run_server(config) as running:
            print(f"rsgrpc serving on port {running.port}", flush=True)
            # Polled, not waited for: the kernel may deliver the signal to any thread, and
            # Python runs its handler only when the main thread next runs bytecode, which a
            # thread blocked on a lock or an Event never does. A handler that set an Event
            # could also deadlock on the Event's own lock, held by the interrupted wait.
            while not received:
                time.sleep(_SIGNAL_POLL_S)
            _LOGGER.info("signal received; shutting down within %.0f s", config.grace_period_s)
            _start_watchdog(config.grace_period_s + EXIT_MARGIN_S)
    except (OSError, ValueError) as exc:  # a port taken, a missing or malformed file
        raise SystemExit(f"rsgrpc serve: {exc}") from None


def _start_watchdog(deadline_s: float) -> None:
    def expire() -> None:
        _LOGGER.critical(
            "the process is still running %.0f s after shutdown began; exiting now", deadline_s
        )
        logging.shutdown()
        os._exit(1)

    watchdog = threading.Timer(deadline_s, expire)
    watchdog.name = "shutdown-watchdog"
    watchdog.daemon = True
    watchdog.start()
