"""The Prometheus endpoint through real doors: a real server with its metrics port on
127.0.0.1, jobs and downloads through a real gRPC channel, /metrics scraped over HTTP, and
the numbers equal to what the test did."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from rsgrpc.download import forget_limiters
from rsgrpc.server.app import run_server
from rsgrpc.v1 import (
    download_pb2,
    download_pb2_grpc,
    operation_pb2,
    session_pb2,
    session_pb2_grpc,
)
from tests.conftest import (
    create_session,
    held_deployment,
    held_http_server,
    make_config,
    operation_metadata,
    operation_updates,
    serving,
    start_held_download,
    start_sieve,
    watch_operation,
    write_speckled_classes,
)

MIB = 1 << 20
DEPLOYMENT = "metrics-fake"  # the process's rate limiter of this name is this module's
RUNNING = operation_pb2.OperationMetadata.STAGE_RUNNING


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Scrape:
    """What /metrics said once."""

    def __init__(self, port: int) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
            text = answer.read().decode()
        self.samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def __call__(self, name: str, *labels: str) -> dict[tuple[str, ...], float]:
        """The samples called `name`: {their values of `labels`, in that order: value}."""
        return {
            tuple(sample.labels[label] for label in labels): sample.value
            for sample in self.samples
            if sample.name == name
        }


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    """Answers each path with its scripted statuses in turn (the last one from then on);
    a 429 says Retry-After 200 (milliseconds, as Sentinel Hub sends it)."""

    script: dict[str, list[int]]
    lock: threading.Lock

    def do_GET(self) -> None:
        with self.lock:
            statuses = self.script[self.path.lstrip("/")]
            status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        body = json.dumps({"ok": True} if status == 200 else {"error": status}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 429:
            self.send_header("Retry-After", "200")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        return None


@contextlib.contextmanager
def _scripted_http_server(script: dict[str, list[int]]) -> Iterator[str]:
    handler = type("Handler", (_ScriptedHandler,), {"script": script, "lock": threading.Lock()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _deployments(tmp_path: Path, base_url: str) -> str:
    path = tmp_path / "deployments.json"
    retry = {"max_attempts": 3, "backoff_base_seconds": 0.01, "backoff_max_seconds": 0.05}
    path.write_text(
        json.dumps(
            {
                "cache_dir": str(tmp_path / "cache"),
                "deployments": {
                    DEPLOYMENT: {
                        "base_url": base_url,
                        "retry": retry,
                        "retry_after_unit": "milliseconds",
                    }
                },
            }
        )
    )
    return str(path)


def _listening_ports() -> set[int]:
    return {
        c.laddr.port
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def _final(channel: grpc.Channel, operation: lro.Operation) -> operation_pb2.OperationMetadata:
    """The metadata of `operation` once done, which must have succeeded."""
    last = watch_operation(channel, operation)[-1]
    assert last.done and not last.HasField("error"), last.error
    return operation_metadata(last)


def test_metrics_count_the_rpcs_operations_tiles_workers_and_downloads_a_client_made(tmp_path):
    forget_limiters()  # the deployments' limiters, and their counts, are the process's
    script = {"flaky": [429, 500, 200], "steady": [200]}
    with _scripted_http_server(script) as url:
        config = make_config(
            tmp_path,
            deployments=_deployments(tmp_path, url),
            metrics_port=_free_port(),
            default_process_count=1,
        )
        with serving(config) as (running, channel):
            assert running.metrics_port == config.metrics_port
            root = running.data_root.root
            write_speckled_classes(
                root / "classes.tif", seed=3, grid=(2, 2), block=150, classes=3, speckle=9,
                density=0.01,
            )  # fmt: skip
            session = create_session(channel)

            with pytest.raises(grpc.RpcError) as refused:
                session_pb2_grpc.SessionServiceStub(channel).CreateSession(
                    session_pb2.CreateSessionRequest(
                        session=session_pb2.Session(process_count=1, available_ram_mib=1)
                    )
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            sieve = _final(channel, start_sieve(channel, session, "sieved.tif", path="classes.tif"))
            download = download_pb2_grpc.DownloadServiceStub(channel).Download(
                download_pb2.DownloadRequest(
                    session=session,
                    deployment=DEPLOYMENT,
                    items=[
                        download_pb2.DownloadItem(uri="flaky", output_path="flaky.json"),
                        download_pb2.DownloadItem(uri="steady", output_path="steady.json"),
                    ],
                    redownload=True,
                )
            )
            downloaded = watch_operation(channel, download)[-1]
            results = download_pb2.DownloadResponse()
            assert downloaded.response.Unpack(results)
            assert [r.attempt_count for r in results.results] == [3, 1]
            with pytest.raises(grpc.RpcError) as missing:
                lro_grpc.OperationsStub(channel).GetOperation(
                    lro.GetOperationRequest(name="operations/none")
                )
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())

            scraped = Scrape(running.metrics_port)

        # The endpoint stopped with the server.
        with pytest.raises(urllib.error.URLError):
            Scrape(config.metrics_port)

    assert scraped("rsgrpc_rpc_requests_total", "method", "code") == {
        ("rsgrpc.v1.SessionService/CreateSession", "OK"): 1,
        ("rsgrpc.v1.SessionService/CreateSession", "INVALID_ARGUMENT"): 1,
        ("rsgrpc.v1.RasterService/Sieve", "OK"): 1,
        ("rsgrpc.v1.DownloadService/Download", "OK"): 1,
        ("rsgrpc.v1.OperationWatchService/WatchOperation", "OK"): 2,
        ("google.longrunning.Operations/GetOperation", "NOT_FOUND"): 1,
        ("grpc.health.v1.Health/Check", "OK"): 1,
    }
    durations = scraped("rsgrpc_rpc_duration_seconds_count", "method")
    assert durations[("rsgrpc.v1.SessionService/CreateSession",)] == 2
    assert durations[("rsgrpc.v1.OperationWatchService/WatchOperation",)] == 2
    assert sum(durations.values()) == 8

    assert scraped("rsgrpc_operations_total", "tool", "state") == {
        ("Sieve", "succeeded"): 1,
        ("Download", "succeeded"): 1,
    }
    assert scraped("rsgrpc_operations_running", "tool") == {}
    assert scraped("rsgrpc_operations_queued", "tool") == {}
    assert sieve.tiles_done > 0 and sieve.bytes_written > 0
    assert scraped("rsgrpc_tiles_total", "tool") == {("Sieve",): sieve.tiles_done}
    assert scraped("rsgrpc_tile_bytes_total", "tool") == {("Sieve",): sieve.bytes_written}

    # One session of one process, lent the server's one spare; nothing runs.
    assert scraped("rsgrpc_sessions_open") == {(): 1}
    assert scraped("rsgrpc_worker_processes", "state") == {("busy",): 0, ("idle",): 1}
    assert scraped("rsgrpc_ram_reserved_bytes") == {(): 512 * MIB}
    assert scraped("rsgrpc_ram_budget_bytes") == {(): config.max_ram_mib * MIB}

    # flaky: 429, then 500, then 200 (two retries); steady: 200.
    assert scraped("rsgrpc_download_requests_total", "deployment", "code") == {
        (DEPLOYMENT, "429"): 1,
        (DEPLOYMENT, "500"): 1,
        (DEPLOYMENT, "200"): 2,
    }
    assert scraped("rsgrpc_download_retries_total", "deployment") == {(DEPLOYMENT,): 2}
    assert scraped("rsgrpc_download_rate_limited_total", "deployment") == {(DEPLOYMENT,): 1}
    # The retry after the 429 waited for the deployment's pause.
    assert scraped("rsgrpc_download_limiter_wait_seconds_total", "deployment")[(DEPLOYMENT,)] > 0


def test_running_queued_and_cancelled_operations_are_counted_by_tool(tmp_path):
    forget_limiters()
    with held_http_server() as (url, release):
        config = make_config(
            tmp_path,
            deployments=held_deployment(tmp_path, url),
            metrics_port=_free_port(),
            default_process_count=1,
        )
        with serving(config) as (running, channel):
            session = create_session(channel)
            first = start_held_download(channel, session, "first.json")
            for update in operation_updates(channel, first):
                if operation_metadata(update).stage == RUNNING:
                    break
            # A session runs its jobs one at a time: the second waits behind the first. It
            # comes through StreamDownload, a client-streaming call.
            batch = download_pb2.DownloadRequest(
                session=session,
                deployment="held",
                items=[download_pb2.DownloadItem(uri="hold", output_path="second.json")],
                redownload=True,
            )
            second = download_pb2_grpc.DownloadServiceStub(channel).StreamDownload(
                iter([download_pb2.StreamDownloadRequest(batch=batch)]), timeout=60
            )
            while_held = Scrape(running.metrics_port)
            operations = lro_grpc.OperationsStub(channel)
            for operation in (second, first):
                operations.CancelOperation(lro.CancelOperationRequest(name=operation.name))
            release.set()
            ends = [watch_operation(channel, op)[-1] for op in (first, second)]
            after = Scrape(running.metrics_port)

    assert [end.error.code for end in ends] == [grpc.StatusCode.CANCELLED.value[0]] * 2
    assert while_held("rsgrpc_operations_running", "tool") == {("Download",): 1}
    assert while_held("rsgrpc_operations_queued", "tool") == {("Download",): 1}
    assert while_held("rsgrpc_operations_total", "tool", "state") == {}
    assert after("rsgrpc_operations_total", "tool", "state") == {("Download", "cancelled"): 2}
    assert after("rsgrpc_operations_running", "tool") == {}
    calls = after("rsgrpc_rpc_requests_total", "method", "code")
    # The first watch was left after its first updates: when it ends is the channel's affair.
    assert {key: n for key, n in calls.items() if "WatchOperation" not in key[0]} == {
        ("rsgrpc.v1.SessionService/CreateSession", "OK"): 1,
        ("rsgrpc.v1.DownloadService/Download", "OK"): 1,
        ("rsgrpc.v1.DownloadService/StreamDownload", "OK"): 1,
        ("google.longrunning.Operations/CancelOperation", "OK"): 2,
    }
    # A held download has no HTTP answer when cancelled; once released, its answer came.
    assert after("rsgrpc_download_requests_total", "deployment", "code") == {("held", "200"): 1}


def test_metrics_are_off_by_default_and_no_port_is_opened(tmp_path):
    before = _listening_ports()
    with serving(make_config(tmp_path, default_process_count=1)) as (running, channel):
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        opened = _listening_ports() - before
    assert running.metrics_port is None
    assert opened == {running.port}


def test_a_metrics_port_in_use_stops_the_start_with_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(tmp_path, metrics_port=port, default_process_count=1)
        refused = pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}")
        with refused, run_server(config):
            pass


def test_refused_callers_are_counted_and_no_identity_or_token_is_a_label(tmp_path):
    token = "Metrics-Secret-Token-7"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"carol {token}\n")
    config = make_config(
        tmp_path, auth_token_file=str(tokens), metrics_port=_free_port(), default_process_count=1
    )
    with serving(config) as (running, channel):
        sessions = session_pb2_grpc.SessionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            sessions.ListSessions(session_pb2.ListSessionsRequest())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        bearer = (("authorization", f"Bearer {token}"),)
        sessions.ListSessions(session_pb2.ListSessionsRequest(), metadata=bearer)
        scraped = Scrape(running.metrics_port)
        with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics") as page:
            text = page.read().decode()

    assert scraped("rsgrpc_rpc_requests_total", "method", "code") == {
        ("rsgrpc.v1.SessionService/ListSessions", "UNAUTHENTICATED"): 1,
        ("rsgrpc.v1.SessionService/ListSessions", "OK"): 1,
    }
    assert token not in text and "carol" not in text
