"""Identities and ownership through real channels: named bearer tokens and mTLS client
certificates; each identity sees and acts on its own sessions and operations only, an
admin on all; health needs no identity."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rsgrpc.server.app import run_server
from rsgrpc.v1 import (
    operation_pb2,
    operation_pb2_grpc,
    raster_pb2,
    raster_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)
from tests.conftest import (
    create_session,
    held_deployment,
    held_http_server,
    make_config,
    make_pki,
    serving,
    start_held_download,
    write_geotiff,
)

TOKENS = "# who may call\nalice a1ice-token\n\nbob b0b-token\nroot r00t-token\n"


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


ALICE, BOB, ROOT = _bearer("a1ice-token"), _bearer("b0b-token"), _bearer("r00t-token")


def _refusals_to_others(channel: grpc.Channel, other, session: str, operation: str) -> dict:
    """What each call on `session` and `operation` answers to `other`: its status code."""
    sessions = session_pb2_grpc.SessionServiceStub(channel)
    operations = lro_grpc.OperationsStub(channel)
    raster = raster_pb2_grpc.RasterServiceStub(channel)
    watch = operation_pb2_grpc.OperationWatchServiceStub(channel)
    wait = lro.WaitOperationRequest(name=operation)
    wait.timeout.FromSeconds(1)
    calls = {
        "GetSession": lambda: sessions.GetSession(
            session_pb2.GetSessionRequest(name=session), metadata=other
        ),
        "UpdateSession": lambda: sessions.UpdateSession(
            session_pb2.UpdateSessionRequest(
                session=session_pb2.Session(name=session, log_time=False)
            ),
            metadata=other,
        ),
        "DeleteSession": lambda: sessions.DeleteSession(
            session_pb2.DeleteSessionRequest(name=session), metadata=other
        ),
        "ListLogEntries": lambda: sessions.ListLogEntries(
            session_pb2.ListLogEntriesRequest(parent=session), metadata=other
        ),
        "BandCalc": lambda: raster.BandCalc(
            raster_pb2.BandCalcRequest(
                session=session,
                expression="a * 2",
                inputs=[raster_pb2.RasterInput(name="a", path="a.tif")],
                output_path="theirs.tif",
            ),
            metadata=other,
        ),
        "GetOperation": lambda: operations.GetOperation(
            lro.GetOperationRequest(name=operation), metadata=other
        ),
        "WaitOperation": lambda: operations.WaitOperation(wait, metadata=other),
        "WatchOperation": lambda: next(
            watch.WatchOperation(
                operation_pb2.WatchOperationRequest(name=operation), metadata=other
            )
        ),
        "CancelOperation": lambda: operations.CancelOperation(
            lro.CancelOperationRequest(name=operation), metadata=other
        ),
        "DeleteOperation": lambda: operations.DeleteOperation(
            lro.DeleteOperationRequest(name=operation), metadata=other
        ),
    }
    codes = {}
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as refused:
            call()
        codes[name] = refused.value.code()
    return codes


def _listed(channel: grpc.Channel, metadata) -> tuple[list[str], list[str]]:
    """The sessions and operations that ListSessions and ListOperations show a caller."""
    sessions = session_pb2_grpc.SessionServiceStub(channel).ListSessions(
        session_pb2.ListSessionsRequest(), metadata=metadata
    )
    operations = lro_grpc.OperationsStub(channel).ListOperations(
        lro.ListOperationsRequest(), metadata=metadata
    )
    return [s.name for s in sessions.sessions], [o.name for o in operations.operations]


def _shows_owner_only(channel: grpc.Channel, owner, other, admin, release) -> None:
    """`owner`'s session and running operation: NOT_FOUND to `other`, listed for `admin`,
    who may act on them once the operation ends (`release`)."""
    session = create_session(channel, metadata=owner)
    operation = start_held_download(channel, session, metadata=owner).name
    # The owner's stream stays open, as the owner, while the others call.
    owners_watch = operation_pb2_grpc.OperationWatchServiceStub(channel).WatchOperation(
        operation_pb2.WatchOperationRequest(name=operation), metadata=owner
    )
    assert not next(owners_watch).done
    codes = _refusals_to_others(channel, other, session, operation)
    assert codes == dict.fromkeys(codes, grpc.StatusCode.NOT_FOUND)
    assert _listed(channel, owner) == ([session], [operation])
    assert _listed(channel, other) == ([], [])
    assert _listed(channel, admin) == ([session], [operation])
    # Nothing the others tried changed the owner's session or operation.
    sessions = session_pb2_grpc.SessionServiceStub(channel)
    kept = sessions.GetSession(session_pb2.GetSessionRequest(name=session), metadata=owner)
    assert kept.log_time
    got = lro_grpc.OperationsStub(channel).GetOperation(
        lro.GetOperationRequest(name=operation), metadata=owner
    )
    assert (
        not got.done
        and not operation_pb2.OperationMetadata.FromString(got.metadata.value).cancel_requested
    )
    # The admin may act on them: it deletes the finished operation and closes the session.
    release.set()
    assert list(owners_watch)[-1].done
    lro_grpc.OperationsStub(channel).DeleteOperation(
        lro.DeleteOperationRequest(name=operation), metadata=admin
    )
    sessions.DeleteSession(session_pb2.DeleteSessionRequest(name=session), metadata=admin)
    assert _listed(channel, owner) == ([], [])


def test_named_tokens_own_their_sessions_and_operations(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    with held_http_server() as (url, release):
        config = make_config(
            tmp_path,
            auth_token_file=str(tokens),
            admin_identities="root",
            deployments=held_deployment(tmp_path, url),
        )
        with serving(config) as (running, channel):
            write_geotiff(running.data_root.root / "a.tif", np.ones((8, 8), np.uint8))
            _shows_owner_only(channel, ALICE, BOB, ROOT, release)
            with pytest.raises(grpc.RpcError) as unknown:
                _listed(channel, _bearer("a1ice-token-but-longer"))
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_without_auth_every_caller_is_anonymous_and_shares_sessions(tmp_path):
    with serving(make_config(tmp_path)) as (_, channel):
        session = create_session(channel)
        # A token means nothing to a server that checks none.
        assert _listed(channel, ALICE)[0] == [session] == _listed(channel, ())[0]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("alice s3cr3t extra\n", "line 1: expected NAME TOKEN, got 3 words"),
        ("alice 0ne\nalice tw0\n", "line 2: the name 'alice' is given twice"),
        ("alice s4me\nbob s4me\n", "line 2: this token is given to two names"),
        ("# nobody\n\n", "holds no token"),
    ],
)
def test_a_malformed_token_file_stops_the_server_from_starting(tmp_path, text, problem):
    tokens = tmp_path / "tokens"
    tokens.write_text(text)
    with (
        pytest.raises(ValueError, match=problem) as refused,
        run_server(make_config(tmp_path, auth_token_file=str(tokens))),
    ):
        pass
    assert not {"s3cr3t", "0ne", "tw0", "s4me"} & set(str(refused.value).split())


def test_serve_exits_with_the_token_file_problem(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("alice token extra\n")
    result = subprocess.run(
        [sys.executable, "-m", "rsgrpc.cli", "serve", "--address", "127.0.0.1:0"]
        + ["--data-root", str(tmp_path / "data"), "--temp-root", str(tmp_path / "tmp")]
        + ["--auth-token-file", str(tokens)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "line 1: expected NAME TOKEN" in result.stderr


# mTLS: a CA made by the test signs the server's certificate and one per client.


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    return make_pki(tmp_path_factory.mktemp("pki"), clients=("alice", "bob", "carol"))


def _tls_config(tmp_path: Path, pki, **overrides):
    return make_config(
        tmp_path,
        tls_cert_file=str(pki["server"][1]),
        tls_key_file=str(pki["server"][0]),
        tls_client_ca_file=str(pki["ca"][1]),
        **overrides,
    )


def _client_channel(port: int, pki, client: str | None) -> grpc.Channel:
    key, cert = (
        (pki[client][0].read_bytes(), pki[client][1].read_bytes()) if client else (None, None)
    )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"][1].read_bytes(), private_key=key, certificate_chain=cert
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


def test_client_certificates_own_their_sessions_and_operations(tmp_path, pki):
    with held_http_server() as (url, release):
        config = _tls_config(
            tmp_path, pki, admin_identities="carol", deployments=held_deployment(tmp_path, url)
        )
        with run_server(config) as running:
            write_geotiff(running.data_root.root / "a.tif", np.ones((8, 8), np.uint8))
            channels = {
                name: _client_channel(running.port, pki, name) for name in ("alice", "bob", "carol")
            }
            try:
                # One channel per identity; each call's metadata is empty.
                alice, bob, carol = channels["alice"], channels["bob"], channels["carol"]
                session = create_session(alice)
                operation = start_held_download(alice, session).name
                codes = _refusals_to_others(bob, (), session, operation)
                listed = {name: _listed(channel, ()) for name, channel in channels.items()}
                # The admin may act on it.
                lro_grpc.OperationsStub(carol).CancelOperation(
                    lro.CancelOperationRequest(name=operation)
                )
                release.set()
                wait = lro.WaitOperationRequest(name=operation)
                wait.timeout.FromSeconds(60)
                finished = lro_grpc.OperationsStub(alice).WaitOperation(wait)
            finally:
                for channel in channels.values():
                    channel.close()
    assert codes == dict.fromkeys(codes, grpc.StatusCode.NOT_FOUND)
    assert listed == {
        "alice": ([session], [operation]),
        "bob": ([], []),
        "carol": ([session], [operation]),
    }
    assert finished.done and finished.error.code == grpc.StatusCode.CANCELLED.value[0]


def test_a_client_without_a_certificate_is_refused_by_an_mtls_server(tmp_path, pki):
    with run_server(_tls_config(tmp_path, pki)) as running:
        channel = _client_channel(running.port, pki, None)
        with channel, pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_health_command_checks_an_mtls_server_with_the_client_options(tmp_path, pki):
    with run_server(_tls_config(tmp_path, pki)) as running:
        target = ["--target", f"127.0.0.1:{running.port}", "--timeout", "20"]
        client = ["--tls-ca-file", str(pki["ca"][1]), "--tls-cert-file", str(pki["bob"][1])]
        with_key = [*client, "--tls-key-file", str(pki["bob"][0])]
        health = [sys.executable, "-m", "rsgrpc.cli", "health", *target]
        checked = subprocess.run(health + with_key, capture_output=True, text=True, timeout=60)
        plaintext = subprocess.run(health, capture_output=True, text=True, timeout=60)
        half = subprocess.run(health + client, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == "SERVING"
    assert plaintext.returncode == 1 and "unhealthy: UNAVAILABLE" in plaintext.stderr
    assert half.returncode != 0
    assert "give --tls-cert-file and --tls-key-file together" in half.stderr


def test_tool_commands_reach_an_mtls_server_with_the_client_options(tmp_path, pki):
    with run_server(_tls_config(tmp_path, pki)) as running:
        root = running.data_root.root
        write_geotiff(root / "a.tif", np.arange(64, dtype=np.uint8).reshape(8, 8))
        target = ["--target", f"127.0.0.1:{running.port}", "--quiet", "--processes", "1"]
        client = ["--tls-ca-file", str(pki["ca"][1]), "--tls-cert-file", str(pki["bob"][1])]
        client += ["--tls-key-file", str(pki["bob"][0])]
        calc = [sys.executable, "-m", "rsgrpc.cli", "band-calc", *target]
        calc += ["--expression", "a * 2", "--input", "a=a.tif", "--output", "doubled.tif"]
        ran = subprocess.run(calc + client, capture_output=True, text=True, timeout=120)
        plaintext = subprocess.run(calc, capture_output=True, text=True, timeout=120)
        with rasterio.open(root / "doubled.tif") as ds:
            doubled = ds.read(1)
    assert ran.returncode == 0, ran.stderr
    assert np.array_equal(doubled, np.arange(64, dtype=np.float32).reshape(8, 8) * 2)
    assert plaintext.returncode != 0
