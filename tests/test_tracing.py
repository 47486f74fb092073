"""Tracing (`--tracing true`): spans of calls, operations and tiles reach an OTLP collector
over gRPC, the collector here a real one on a real port; with tracing off nothing is sent
and OpenTelemetry is not even imported."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from rsgrpc.engine import tracing as engine_tracing
from rsgrpc.server.app import run_server
from rsgrpc.v1 import raster_pb2, raster_pb2_grpc, session_pb2, session_pb2_grpc
from tests.conftest import (
    create_session,
    make_config,
    operation_metadata,
    serving,
    watch_operation,
    write_geotiff,
)

BAND_CALC = "/rsgrpc.v1.RasterService/BandCalc"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict
    resource: dict
    status_code: int


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()

    def Export(self, request, context):
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append(
                            Span(
                                span.trace_id.hex(),
                                span.span_id.hex(),
                                span.parent_span_id.hex(),
                                span.name,
                                span.kind,
                                _attributes(span.attributes),
                                resource,
                                span.status.code,
                            )
                        )
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str) -> list[Span]:
        with self._lock:
            return [span for span in self.spans if span.name == name]


def _attributes(pairs) -> dict:
    values = {}
    for pair in pairs:
        value = pair.value
        values[pair.key] = (
            getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None
        )
    return values


@contextlib.contextmanager
def _collector() -> Iterator[tuple[_Collector, str]]:
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield collector, f"http://127.0.0.1:{port}"
    finally:
        server.stop(0)


def _wait_for(predicate, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "not within the time given"
        time.sleep(0.05)


def _band_calc(channel, session: str, output: str, metadata=()):
    """Run a band calc of several tiles to its end; its last operation message."""
    operation = raster_pb2_grpc.RasterServiceStub(channel).BandCalc(
        raster_pb2.BandCalcRequest(
            session=session,
            expression='"x" * 2',
            inputs=[raster_pb2.RasterInput(name="x", path="big.tif")],
            output_path=output,
            overwrite=True,
        ),
        metadata=metadata,
        timeout=60,
    )
    last = watch_operation(channel, operation)[-1]
    assert last.done and not last.HasField("error")
    return last


def _write_big(root) -> None:
    values = np.arange(2048 * 2048, dtype=np.float32).reshape(2048, 2048)
    write_geotiff(root / "big.tif", values, block=256)


def _job_spans(collector: _Collector, trace_id: str) -> tuple[Span, Span, list[Span]]:
    """The BandCalc call's span in `trace_id`, its operation's and its tiles'."""
    (call,) = [s for s in collector.named(BAND_CALC) if s.trace_id == trace_id]
    (job,) = [s for s in collector.named("operation BandCalc") if s.trace_id == trace_id]
    tiles = [s for s in collector.named("tile") if s.trace_id == trace_id]
    return call, job, tiles


def test_a_band_calc_traces_its_call_operation_and_tiles_in_the_clients_trace(
    tmp_path, monkeypatch
):
    # Batches sent every 0.1 s: the spans come while the server and its workers run.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    with _collector() as (collector, endpoint):
        config = make_config(tmp_path, tracing=True, otlp_endpoint=endpoint)
        with serving(config) as (running, channel):
            _write_big(running.data_root.root)
            session = (
                session_pb2_grpc.SessionServiceStub(channel)
                .CreateSession(
                    session_pb2.CreateSessionRequest(
                        session=session_pb2.Session(process_count=2, available_ram_mib=1024)
                    ),
                    timeout=60,
                )
                .name
            )
            workers = set(running.registry.get(session).executor.pids())
            last = _band_calc(channel, session, "twice.tif", (("traceparent", traceparent),))
            tiles_total = operation_metadata(last).tiles_total
            assert tiles_total > 1
            _wait_for(lambda: len(collector.named("tile")) >= tiles_total)
            _wait_for(lambda: collector.named("operation BandCalc"))
            call, job, tiles = _job_spans(collector, CLIENT_TRACE)

    assert call.parent_id == CLIENT_SPAN
    assert call.kind == 2  # SPAN_KIND_SERVER
    assert call.attributes["rpc.grpc.status_code"] == 0
    assert call.resource["service.name"] == "rsgrpc"
    assert call.resource["process.pid"] == os.getpid()

    assert job.parent_id == call.span_id
    assert job.attributes["rsgrpc.operation.method"] == "BandCalc"
    assert job.attributes["rsgrpc.operation.name"] == last.name
    assert job.attributes["rsgrpc.session"] == session
    assert job.attributes["rsgrpc.operation.status_code"] == "OK"
    assert job.attributes["rsgrpc.operation.tiles_total"] == tiles_total
    assert job.attributes["rsgrpc.operation.tiles_done"] == tiles_total

    assert len(tiles) == tiles_total
    assert {tile.parent_id for tile in tiles} == {job.span_id}
    # Made in the worker processes, and sent by them.
    pids = {tile.resource["process.pid"] for tile in tiles}
    assert pids <= workers and os.getpid() not in pids
    assert {tile.resource["rsgrpc.process.role"] for tile in tiles} == {"worker"}
    assert {tile.resource["service.name"] for tile in tiles} == {"rsgrpc"}
    assert all("band_calc" in tile.attributes["rsgrpc.task"] for tile in tiles)
    covered = sum(
        tile.attributes["rsgrpc.tile.height"] * tile.attributes["rsgrpc.tile.width"]
        for tile in tiles
    )
    assert covered == 2048 * 2048


@pytest.mark.timeout(300)
def test_tiles_on_a_dask_cluster_are_spans_of_its_workers(tmp_path, monkeypatch):
    """Workers the server did not start set tracing up from their first traced task."""
    distributed = pytest.importorskip("distributed")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    with (
        _collector() as (collector, endpoint),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            env={"OTEL_BSP_SCHEDULE_DELAY": "100"},
        ) as cluster,
    ):
        with distributed.Client(cluster, set_as_default=False) as client:
            workers = set(client.run(os.getpid).values())
        config = make_config(
            tmp_path, tracing=True, otlp_endpoint=endpoint, dask_scheduler=cluster.scheduler_address
        )
        with serving(config) as (running, channel):
            _write_big(running.data_root.root)
            session = create_session(channel)
            traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
            last = _band_calc(channel, session, "twice.tif", (("traceparent", traceparent),))
            tiles_total = operation_metadata(last).tiles_total
            assert tiles_total > 1
            _wait_for(lambda: len(collector.named("tile")) >= tiles_total)
            _wait_for(lambda: collector.named("operation BandCalc"))
            _, job, tiles = _job_spans(collector, CLIENT_TRACE)
    assert len(tiles) == tiles_total
    assert {tile.parent_id for tile in tiles} == {job.span_id}
    pids = {tile.resource["process.pid"] for tile in tiles}
    assert pids <= workers and os.getpid() not in pids
    assert {tile.resource["rsgrpc.process.role"] for tile in tiles} == {"worker"}


def test_a_job_without_client_trace_context_gets_a_trace_of_its_own(tmp_path, monkeypatch):
    """Spans batched until the server stops: what its workers hold is sent as they exit."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    with _collector() as (collector, endpoint):
        config = make_config(tmp_path, tracing=True, otlp_endpoint=endpoint)
        with serving(config) as (running, channel):
            assert engine_tracing.worker_settings == {"endpoint": endpoint}
            _write_big(running.data_root.root)
            session = create_session(channel)
            tiles_total = sum(
                operation_metadata(_band_calc(channel, session, name)).tiles_total
                for name in ("a.tif", "b.tif")
            )
            # A call that fails: its span has its code.
            with pytest.raises(grpc.RpcError) as failed:
                raster_pb2_grpc.RasterServiceStub(channel).BandCalc(
                    raster_pb2.BandCalcRequest(session="sessions/none", expression="1"),
                    timeout=10,
                )
            assert failed.value.code() is grpc.StatusCode.NOT_FOUND
            time.sleep(0.5)
            assert collector.spans == []
        # Tracing is off again: the engine's hooks are cleared.
        assert engine_tracing.carry is None and engine_tracing.trace_job is None
        assert engine_tracing.worker_settings is None
        _wait_for(lambda: len(collector.named("tile")) == tiles_total)
        assert len(collector.named(BAND_CALC)) == 3
        calls = collector.named(BAND_CALC)
        roots = [call for call in calls if call.attributes["rpc.grpc.status_code"] == 0]
        assert len(roots) == 2 and all(call.parent_id == "" for call in roots)
        assert roots[0].trace_id != roots[1].trace_id
        (refused,) = [call for call in calls if call not in roots]
        assert refused.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
        for root in roots:
            call, job, tiles = _job_spans(collector, root.trace_id)
            assert job.parent_id == call.span_id
            assert {tile.parent_id for tile in tiles} == {job.span_id}
            assert len(tiles) == job.attributes["rsgrpc.operation.tiles_total"]
        # Health checks are not traced; the session's creation is.
        assert collector.named("/rsgrpc.v1.SessionService/CreateSession")
        assert not [s for s in collector.spans if s.name.startswith("/grpc.health")]


def test_with_tracing_off_nothing_is_sent(tmp_path, monkeypatch):
    with _collector() as (collector, endpoint):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        with serving(make_config(tmp_path, otlp_endpoint=endpoint)) as (running, channel):
            assert engine_tracing.carry is None and engine_tracing.trace_job is None
            _write_big(running.data_root.root)
            session = create_session(channel)
            traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
            _band_calc(channel, session, "off.tif", (("traceparent", traceparent),))
        time.sleep(1.0)
        assert collector.spans == []


def test_tracing_without_the_extra_is_a_clear_error_at_start(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with (
        pytest.raises(ValueError, match=r"rsgrpc\[tracing\]"),
        run_server(make_config(tmp_path, tracing=True)),
    ):
        pass
    assert engine_tracing.carry is None and engine_tracing.trace_job is None


# A server with tracing off, a job of one session run on it: nothing of OpenTelemetry loaded.
_UNTRACED_SERVER = """
import sys
from pathlib import Path

import numpy as np
from tests.conftest import create_session, make_config, serving, watch_operation, write_geotiff
from rsgrpc.v1 import raster_pb2, raster_pb2_grpc

with serving(make_config(Path(sys.argv[1]), max_processes=1)) as (running, channel):
    write_geotiff(running.data_root.root / "a.tif", np.ones((300, 300), dtype=np.uint16))
    operation = raster_pb2_grpc.RasterServiceStub(channel).BandCalc(
        raster_pb2.BandCalcRequest(
            session=create_session(channel),
            expression='"a" * 2',
            inputs=[raster_pb2.RasterInput(name="a", path="a.tif")],
            output_path="b.tif",
        ),
        metadata=(("traceparent", "00-{trace}-{span}-01"),),
        timeout=60,
    )
    last = watch_operation(channel, operation)[-1]
    assert last.done and not last.HasField("error"), last
print(sorted(name for name in sys.modules if name.split(".")[0] == "opentelemetry"))
""".replace("{trace}", CLIENT_TRACE).replace("{span}", CLIENT_SPAN)


def test_a_server_with_tracing_off_does_not_import_opentelemetry(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ran = subprocess.run(
        [sys.executable, "-c", _UNTRACED_SERVER, str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    assert ran.stdout.strip().splitlines()[-1] == "[]"
