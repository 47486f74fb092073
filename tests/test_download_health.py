"""Health per download deployment through a real server: NOT_SERVING while a deployment's
token endpoint fails (5xx, refused connections, refused credentials), SERVING again once a
token comes, seen with Check and Watch; the others unaffected; probes that keep to their
interval and back off; secrets never logged."""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import queue
import secrets
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from rsgrpc.download import Deployment, SentinelHubDownloadClient, forget_limiters
from rsgrpc.server.deployment_health import MAX_BACKOFF_FACTOR, DeploymentWatch
from rsgrpc.v1 import download_pb2, download_pb2_grpc
from tests.conftest import create_session, make_config, operation_response, serving
from tests.conftest import watch_operation as watch_to_end
from tests.download.fake_sentinelhub import CLIENT_ID, CLIENT_SECRET, PROCESS_PATH, FakeSentinelHub

SERVICE = download_pb2.DESCRIPTOR.services_by_name["DownloadService"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SECRET_ENV = "RSGRPC_TEST_HEALTH_SECRET"
WRONG_SECRET = "wrong-Health-Secret-31"
LATE_SECRET = "late-Endpoint-Secret-47"
# Bound of every wait for a state to be reached; none is expected to take long.
WAIT_S = 30.0
FAST_RETRY = """
max_attempts = 2
backoff_base_seconds = 0.01
backoff_max_seconds = 0.05
"""


class LateTokenEndpoint:
    """A token endpoint on a port held from the start but refusing connections (bound,
    not listening) until `open` makes it listen and answer tokens."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.token_url = f"http://127.0.0.1:{self.port}/token"
        self.issued: list[str] = []
        self.requests = 0
        self._server: http.server.ThreadingHTTPServer | None = None

    def open(self) -> None:
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                form = urllib.parse.parse_qs(body.decode())
                endpoint.requests += 1
                if form.get("client_secret") != [LATE_SECRET]:
                    self._json(401, {"error": "invalid_client"})
                    return
                token = "late-" + secrets.token_urlsafe(24)
                endpoint.issued.append(token)
                self._json(200, {"access_token": token, "token_type": "Bearer", "expires_in": 60})

            def _json(self, status: int, value: object) -> None:
                data = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", self.port), Handler, bind_and_activate=False
        )
        server.socket.close()
        server.socket = self._socket
        server.server_activate()
        self._server = server
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        else:
            self._socket.close()


def _deployments_file(folder, alpha, beta, late: LateTokenEndpoint) -> str:
    path = folder / "deployments.toml"
    path.write_text(
        f"""
cache_dir = "cache"

[deployments.alpha]
base_url = "{alpha.base_url}"
token_url = "{alpha.token_url}"
client_id = "{CLIENT_ID}"
client_secret_env = "{SECRET_ENV}"
token_retry_budget_seconds = 0.3
token_backoff_max_seconds = 0.05
token_timeout_seconds = 2.0
[deployments.alpha.retry]
{FAST_RETRY}

[deployments.beta]
base_url = "{beta.base_url}"
token_url = "{beta.token_url}"
client_id = "{CLIENT_ID}"
client_secret_env = "{SECRET_ENV}"

[deployments.late]
base_url = "{beta.base_url}"
token_url = "{late.token_url}"
client_id = "late-client"
client_secret = "{LATE_SECRET}"
connect_timeout_seconds = 2.0

[deployments.refused]
base_url = "{beta.base_url}"
token_url = "{beta.token_url}"
client_id = "unknown-client"
client_secret = "{WRONG_SECRET}"

[deployments.public]
base_url = "{beta.base_url}"
"""
    )
    return str(path)


@contextlib.contextmanager
def _server(tmp_path, probe_seconds: float, **overrides) -> Iterator[tuple]:
    with (
        FakeSentinelHub() as alpha,
        FakeSentinelHub() as beta,
        contextlib.closing(LateTokenEndpoint()) as late,
    ):
        deployments = _deployments_file(tmp_path, alpha, beta, late)
        config = make_config(
            tmp_path,
            deployments=deployments,
            deployment_probe_s=probe_seconds,
            default_process_count=1,
            **overrides,
        )
        forget_limiters()
        SentinelHubDownloadClient.clear_cache()
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(SECRET_ENV, CLIENT_SECRET)
            try:
                with serving(config) as (running, channel):
                    yield running, channel, alpha, beta, late
            finally:
                forget_limiters()
                SentinelHubDownloadClient.clear_cache()


def _entry(deployment: str) -> str:
    return f"{SERVICE}/{deployment}"


def _check(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def _wait_for(channel: grpc.Channel, service: str, status: int) -> None:
    give_up = time.monotonic() + WAIT_S
    while (now := _check(channel, service)) != status:
        assert time.monotonic() < give_up, f"{service} stayed {now}, expected {status}"
        time.sleep(0.02)


class _Watch:
    """The statuses a Watch stream of one service sends, collected by a thread."""

    def __init__(self, channel: grpc.Channel, service: str) -> None:
        stub = health_pb2_grpc.HealthStub(channel)
        self._call = stub.Watch(health_pb2.HealthCheckRequest(service=service))
        self.seen: list[int] = []
        self._queue: queue.Queue[int] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for answer in self._call:
                self._queue.put(answer.status)

    def next_status(self, status: int) -> None:
        """Wait until the stream sends `status`."""
        give_up = time.monotonic() + WAIT_S
        while True:
            got = self._queue.get(timeout=max(0.0, give_up - time.monotonic()))
            self.seen.append(got)
            if got == status:
                return

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(10)


def _deployment_up(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    return {
        sample.labels["deployment"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "rsgrpc_download_deployment_up"
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_probes_turn_a_deployment_not_serving_while_its_token_endpoint_fails(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with _server(tmp_path, probe_seconds=0.1) as (running, channel, alpha, beta, late):
        # Refused connections and refused credentials: NOT_SERVING from the first probe.
        _wait_for(channel, _entry("late"), NOT_SERVING)
        _wait_for(channel, _entry("refused"), NOT_SERVING)
        for serving_now in ("alpha", "beta", "public"):
            assert _check(channel, _entry(serving_now)) == SERVING
        assert _check(channel, SERVICE) == SERVING
        assert _check(channel, "") == SERVING
        # Probes, not only the server's start, fetched tokens.
        assert alpha.stats.token_requests >= 1 and beta.stats.token_requests >= 1

        watch = _Watch(channel, _entry("alpha"))
        try:
            watch.next_status(SERVING)
            alpha.token_outage(3600)  # the endpoint answers 503
            watch.next_status(NOT_SERVING)
            assert _check(channel, _entry("alpha")) == NOT_SERVING
            # The others, and the download service (beta still gets tokens), are unaffected.
            assert _check(channel, _entry("beta")) == SERVING
            assert _check(channel, _entry("public")) == SERVING
            assert _check(channel, SERVICE) == SERVING
            assert _check(channel, "") == SERVING
            alpha.token_outage(0)  # over
            watch.next_status(SERVING)
            assert _check(channel, _entry("alpha")) == SERVING
        finally:
            watch.close()
        assert watch.seen[-2:] == [NOT_SERVING, SERVING]

        late.open()
        _wait_for(channel, _entry("late"), SERVING)
        assert _check(channel, _entry("refused")) == NOT_SERVING
        issued = [*alpha.issued_tokens(), *beta.issued_tokens(), *late.issued]

    assert late.requests >= 1
    messages = [record.getMessage() for record in caplog.records]
    assert any(
        "deployment alpha cannot get a token" in line and "NOT_SERVING" in line for line in messages
    )
    assert any("deployment late got a token again" in line for line in messages)
    text = caplog.text + "\n".join(messages)
    for secret in (CLIENT_SECRET, WRONG_SECRET, LATE_SECRET, *issued):
        assert secret not in text


def test_the_download_service_serves_while_one_deployment_is_usable(tmp_path):
    with _server(tmp_path, probe_seconds=0.1) as (running, channel, alpha, beta, late):
        _wait_for(channel, _entry("refused"), NOT_SERVING)
        watch = _Watch(channel, SERVICE)
        try:
            watch.next_status(SERVING)
            # "public" has no token endpoint: it stays usable, and so does the service.
            alpha.token_outage(3600)
            beta.token_outage(3600)
            _wait_for(channel, _entry("alpha"), NOT_SERVING)
            _wait_for(channel, _entry("beta"), NOT_SERVING)
            assert _check(channel, _entry("public")) == SERVING
            assert _check(channel, SERVICE) == SERVING
        finally:
            watch.close()
        assert watch.seen == [SERVING]


def test_probes_keep_to_their_interval_and_back_off_from_a_failing_endpoint(tmp_path):
    interval = 0.2
    with _server(tmp_path, probe_seconds=interval) as (running, channel, alpha, beta, late):
        alpha.token_outage(3600)
        _wait_for(channel, _entry("alpha"), NOT_SERVING)
        alpha.reset_stats()
        beta.reset_stats()
        began = time.monotonic()
        # Long enough for the backoff to reach its ceiling: 0.2, 0.4, 0.8, 0.8, ... s.
        give_up = began + WAIT_S
        while alpha.stats.token_requests < 8:
            assert time.monotonic() < give_up
            time.sleep(0.05)
        elapsed = time.monotonic() - began
        failing, healthy = alpha.stats.token_requests, beta.stats.token_requests

    # At most one request per interval while healthy (beta's endpoint also answers the
    # refused deployment's probes, which back off too); one per backed-off interval while
    # failing: far fewer than one per interval.
    ceiling = interval * MAX_BACKOFF_FACTOR
    assert healthy <= 2 * (elapsed / interval + 1)
    assert failing <= elapsed / ceiling + 4
    assert failing < elapsed / interval


def test_probes_off_the_download_clients_own_token_fetches_set_the_health(tmp_path):
    config = {"metrics_port": _free_port()}
    with _server(tmp_path, probe_seconds=0, **config) as (running, channel, alpha, beta, late):
        session = create_session(channel)
        stub = download_pb2_grpc.DownloadServiceStub(channel)

        def download(name: str) -> download_pb2.DownloadItemResult:
            item = download_pb2.DownloadItem(
                uri=PROCESS_PATH.lstrip("/"),
                body_json=json.dumps({"id": name, "format": "tiff"}),
                output_path=f"dl/{name}.tif",
            )
            started = stub.Download(
                download_pb2.DownloadRequest(session=session, deployment="alpha", items=[item])
            )
            finished = watch_to_end(channel, started)[-1]
            (result,) = operation_response(finished, download_pb2.DownloadResponse).results
            return result

        # No probe: nothing asked the endpoints for a token; everything starts SERVING.
        for name in ("alpha", "beta", "late", "refused", "public"):
            assert _check(channel, _entry(name)) == SERVING
        assert alpha.stats.token_requests == 0 and beta.stats.token_requests == 0
        assert _deployment_up(running.metrics_port) == {
            "alpha": 1,
            "beta": 1,
            "late": 1,
            "public": 1,
            "refused": 1,
        }

        watch = _Watch(channel, _entry("alpha"))
        try:
            watch.next_status(SERVING)
            alpha.token_outage(3600)
            failed = download("during-outage")
            assert failed.status == download_pb2.DownloadItemResult.STATUS_FAILED
            watch.next_status(NOT_SERVING)
            assert _check(channel, _entry("alpha")) == NOT_SERVING
            assert _check(channel, _entry("beta")) == SERVING
            assert _check(channel, SERVICE) == SERVING
            assert _deployment_up(running.metrics_port)["alpha"] == 0
            alpha.token_outage(0)
            # A failed fetch fails the next ones at once for a second (the client's own
            # memory of an outage): wait it out, then download again.
            time.sleep(1.2)
            succeeded = download("after-outage")
            assert succeeded.status == download_pb2.DownloadItemResult.STATUS_SUCCEEDED
            watch.next_status(SERVING)
            assert _deployment_up(running.metrics_port)["alpha"] == 1
        finally:
            watch.close()
        # Still no probe: only the client's fetches reached the token endpoint.
        assert beta.stats.token_requests == 0


def test_the_download_service_is_not_serving_once_no_deployment_is_usable():
    def deployment(name: str) -> Deployment:
        return Deployment(
            name=name,
            base_url="http://127.0.0.1:9",
            token_url="http://127.0.0.1:9/token",
            client_id=name,
            client_secret=f"{name}-Secret-Value",
        )

    watch = DeploymentWatch(SERVICE, {"a": deployment("a"), "b": deployment("b")}, 0)
    assert watch.entries == (SERVICE, _entry("a"), _entry("b"))
    watch.record("a", False, "HTTP 503")
    assert watch.statuses()[SERVICE] == SERVING
    watch.record("b", False, "ConnectionError")
    assert watch.statuses() == {
        SERVICE: NOT_SERVING,
        _entry("a"): NOT_SERVING,
        _entry("b"): NOT_SERVING,
    }
    watch.record("b", None, "HTTP 429")  # nothing learnt
    assert watch.statuses()[_entry("b")] == NOT_SERVING
    watch.record("b", True)
    assert watch.statuses()[SERVICE] == SERVING
    assert not watch.usable("a") and watch.usable("b")
    # Without deployments the service has nothing that can fail.
    assert DeploymentWatch(SERVICE, {}, 60).statuses() == {SERVICE: SERVING}
