"""`rsgrpc serve` as a process: it refuses a port that is taken, and SIGTERM ends it
within the grace period and a margin, whatever its jobs are doing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro

from rsgrpc.server.app import EXIT_MARGIN_S, run_server
from tests.conftest import (
    create_session,
    held_deployment,
    held_http_server,
    make_config,
    serving,
    start_held_download,
)

GRACE_S = 1.0


def _serve_command(tmp_path: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rsgrpc.cli",
        "serve",
        "--data-root",
        str(tmp_path / "data"),
        "--temp-root",
        str(tmp_path / "tmp"),
        *args,
    ]


def test_a_taken_port_stops_the_server_from_starting(tmp_path):
    with serving(make_config(tmp_path / "first")) as (running, _):
        address = f"127.0.0.1:{running.port}"
        with (
            pytest.raises(OSError, match=f"cannot listen on {address}"),
            run_server(make_config(tmp_path / "second", address=address)),
        ):
            pass
        served = subprocess.run(
            _serve_command(tmp_path / "third", "--address", address),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert served.returncode != 0
    assert f"rsgrpc serve: cannot listen on {address}" in served.stderr


def test_servers_share_a_port_when_each_asks_for_it(tmp_path):
    with serving(make_config(tmp_path / "first", reuse_port=True)) as (first, _):
        address = f"127.0.0.1:{first.port}"
        with run_server(
            make_config(tmp_path / "second", address=address, reuse_port=True)
        ) as second:
            assert second.port == first.port


def test_sigterm_ends_serve_within_the_grace_period_while_a_job_hangs(tmp_path):
    log = tmp_path / "server.log"
    with held_http_server() as (url, _release):
        command = _serve_command(
            tmp_path,
            "--address",
            "127.0.0.1:0",
            "--grace-period-s",
            str(GRACE_S),
            "--deployments",
            held_deployment(tmp_path, url),
        )
        with open(log, "w") as err:
            server = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=err, text=True, env=dict(os.environ)
            )
        try:
            port = int(server.stdout.readline().rsplit(" ", 1)[-1])
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                session = create_session(channel)
                # Its HTTP answer never comes while the server runs: the job hangs.
                held = start_held_download(channel, session)
                wait = lro.WaitOperationRequest(name=held.name)
                wait.timeout.FromSeconds(300)
                waiting = lro_grpc.OperationsStub(channel).WaitOperation.future(wait)
                server.send_signal(signal.SIGTERM)
                with pytest.raises(grpc.RpcError) as waited:
                    waiting.result(timeout=60)
            code = server.wait(timeout=GRACE_S + EXIT_MARGIN_S + 10)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
            server.stdout.close()
    assert waited.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in waited.value.details()
    assert code in (0, 1), log.read_text()
    text = log.read_text()
    assert "cancelling operations/" in text
    # A process that needed the watchdog says so in its log.
    assert (code == 1) == ("exiting now" in text), text
