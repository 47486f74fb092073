"""The server: wiring of services, health and reflection, start-up and graceful shutdown."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
from google.longrunning import operations_proto_pb2 as lro
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rsgrpc.engine.errors import UnavailableError
from rsgrpc.engine.operations import OperationStore
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.session import ServerLimits, Session, SessionRegistry
from rsgrpc.server.auth import BearerTokenInterceptor
from rsgrpc.server.config import MIB, ServerConfig, read_secret
from rsgrpc.server.deployments import load_download_settings
from rsgrpc.server.download_servicer import DownloadServicer
from rsgrpc.server.operation_servicer import add_operation_services
from rsgrpc.server.raster_servicer import RasterServicer
from rsgrpc.server.session_servicer import SessionServicer
from rsgrpc.v1 import (
    download_pb2,
    download_pb2_grpc,
    operation_pb2,
    raster_pb2,
    raster_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)

_LOGGER = logging.getLogger(__name__)

SERVICE_NAMES = (
    session_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name,
    raster_pb2.DESCRIPTOR.services_by_name["RasterService"].full_name,
    operation_pb2.DESCRIPTOR.services_by_name["OperationWatchService"].full_name,
    lro.DESCRIPTOR.services_by_name["Operations"].full_name,
    download_pb2.DESCRIPTOR.services_by_name["DownloadService"].full_name,
)


def _channel_options(config: ServerConfig) -> list[tuple[str, int]]:
    size = config.max_message_mib * MIB
    return [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
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


@dataclass
class RunningServer:
    """A started server: its port and the parts tests and the CLI need."""

    port: int
    server: grpc.Server
    registry: SessionRegistry
    operations: OperationStore
    health: health.HealthServicer
    data_root: DataRoot


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


@contextlib.contextmanager
def run_server(config: ServerConfig) -> Iterator[RunningServer]:
    """Start a server; yield it with its bound port; shut it down gracefully on exit.

    Shutting down: health turns NOT_SERVING, new operations are refused,
    running ones get `grace_period_s` to finish and are then cancelled, and
    every session is closed (its workers stopped, its files removed).
    """
    data_root = DataRoot.at(config.data_root)
    download_settings = load_download_settings(config.deployments)
    operations = OperationStore(max_running=config.max_operations)
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
        on_close=lambda session: _cancel_operations_of(operations, session),
    )
    interceptors = []
    if config.auth_token_file:
        interceptors.append(BearerTokenInterceptor(read_secret(config.auth_token_file)))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.rpc_threads, thread_name_prefix="rpc"),
        interceptors=interceptors,
        options=_channel_options(config),
        maximum_concurrent_rpcs=config.rpc_threads * 4,
    )
    session_pb2_grpc.add_SessionServiceServicer_to_server(
        SessionServicer(registry, config, data_root), server
    )
    raster_pb2_grpc.add_RasterServiceServicer_to_server(
        RasterServicer(registry, operations, data_root), server
    )
    download_servicer = DownloadServicer(registry, operations, data_root, download_settings)
    download_pb2_grpc.add_DownloadServiceServicer_to_server(download_servicer, server)
    add_operation_services(operations, server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    credentials = _credentials(config)
    if credentials is None:
        port = server.add_insecure_port(config.address)
    else:
        port = server.add_secure_port(config.address, credentials)
    if port == 0:
        raise OSError(f"cannot bind {config.address}")
    sweeper = _Sweeper(registry, config.session_sweep_interval_s)
    server.start()
    sweeper.start()
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _LOGGER.info("serving on port %d, data root %s", port, data_root.root)
    running = RunningServer(port, server, registry, operations, health_servicer, data_root)
    try:
        yield running
    finally:
        _shutdown(running, config.grace_period_s)
        sweeper.stopped.set()
        download_servicer.close()


def _shutdown(running: RunningServer, grace: float) -> None:
    running.health.enter_graceful_shutdown()
    running.operations.close()
    deadline = time.monotonic() + grace
    for operation in running.operations.list():
        operation.wait_done(max(0.0, deadline - time.monotonic()))
    for operation in running.operations.list():
        if not operation.done:
            _LOGGER.warning("cancelling %s at shutdown", operation.name)
            operation.cancel()
    running.registry.close_all()
    for operation in running.operations.list():
        operation.finish(error=UnavailableError("the server shut down"))
    running.server.stop(grace=min(grace, 5.0)).wait()
    _LOGGER.info("server stopped")


def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with run_server(config) as running:
        print(f"rsgrpc serving on port {running.port}", flush=True)
        stop.wait()
        _LOGGER.info("signal received; shutting down within %.0f s", config.grace_period_s)
