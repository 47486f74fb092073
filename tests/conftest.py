"""Shared fixtures: a real server on a real port, a channel to it, GeoTIFF makers, and
helpers to follow the operations the server runs."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import http.server
import ipaddress
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
import pytest
import rasterio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf.message import Message
from rasterio.transform import from_origin

from rsgrpc.server.app import RunningServer, run_server
from rsgrpc.server.config import ServerConfig
from rsgrpc.v1 import (
    download_pb2,
    download_pb2_grpc,
    operation_pb2,
    operation_pb2_grpc,
    raster_pb2,
    raster_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)

CRS = "EPSG:32633"
TRANSFORM = from_origin(500000.0, 4600000.0, 10.0, 10.0)

ResponseT = TypeVar("ResponseT", bound=Message)


def write_geotiff(
    path: Path,
    array: np.ndarray,
    *,
    nodata: float | None = None,
    block: int = 256,
    transform=TRANSFORM,
    crs: str = CRS,
) -> Path:
    """A tiled, DEFLATE-compressed single-band GeoTIFF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tiled = array.shape[0] >= block and array.shape[1] >= block
    profile = dict(
        driver="GTiff",
        width=array.shape[1],
        height=array.shape[0],
        count=1,
        dtype=array.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        compress="deflate",
    )
    if tiled:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(array, 1)
    return path


def write_speckled_classes(
    path: Path,
    *,
    seed: int,
    grid: tuple[int, int],
    block: int,
    classes: int,
    speckle: int,
    density: float,
) -> np.ndarray:
    """Write `grid` squares of `block` pixels, classes 1..`classes`, `density` of them `speckle`."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(1, classes + 1, grid, dtype=np.uint8)
    array = np.kron(coarse, np.ones((block, block), np.uint8))
    array[rng.random(array.shape) < density] = speckle
    write_geotiff(path, array, nodata=0)
    return array


def operation_updates(channel: grpc.Channel, operation: lro.Operation) -> Iterator[lro.Operation]:
    """The stream of updates OperationWatchService sends for `operation` until it is done."""
    stub = operation_pb2_grpc.OperationWatchServiceStub(channel)
    return stub.WatchOperation(operation_pb2.WatchOperationRequest(name=operation.name))


def watch_operation(channel: grpc.Channel, operation: lro.Operation) -> list[lro.Operation]:
    """Every update of `operation` until it is done: the last one is the finished operation."""
    return list(operation_updates(channel, operation))


def operation_metadata(operation: lro.Operation) -> operation_pb2.OperationMetadata:
    """The OperationMetadata packed into one update of an operation."""
    metadata = operation_pb2.OperationMetadata()
    assert operation.metadata.Unpack(metadata)
    return metadata


def operation_response(operation: lro.Operation, response_type: type[ResponseT]) -> ResponseT:
    """The response of an operation that must have finished without error, as `response_type`."""
    assert operation.done and not operation.HasField("error"), operation.error
    response = response_type()
    assert operation.response.Unpack(response)
    return response


def watch_to_response(
    channel: grpc.Channel, operation: lro.Operation, response_type: type[ResponseT]
) -> tuple[list[lro.Operation], ResponseT]:
    """Every update of `operation` and its response, asserting that it finished without error."""
    updates = watch_operation(channel, operation)
    return updates, operation_response(updates[-1], response_type)


def make_config(tmp_path: Path, **overrides) -> ServerConfig:
    base = ServerConfig(
        address="127.0.0.1:0",
        data_root=tmp_path / "data",
        temp_root=tmp_path / "tmp",
        max_processes=4,
        # The shape of the sessions most tests create (`session_name`): the server's
        # spare workers, started with it, are then the ones its first session takes.
        default_process_count=2,
        max_ram_mib=8192,
        session_sweep_interval_s=0.2,
        grace_period_s=5.0,
    )
    return dataclasses.replace(base, **overrides)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def module_process(*args: str) -> Iterator[subprocess.Popen]:
    """`python -m *args` (a Dask scheduler or worker, say), its output discarded; killed
    and waited for at the end."""
    process = subprocess.Popen(
        [sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait(60)


@contextlib.contextmanager
def serving(config: ServerConfig) -> Iterator[tuple[RunningServer, grpc.Channel]]:
    with run_server(config) as running:
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        try:
            yield running, channel
        finally:
            channel.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[RunningServer, grpc.Channel]]:
    with serving(make_config(tmp_path_factory.mktemp("server"))) as pair:
        yield pair


@pytest.fixture(scope="module")
def session_name(server) -> str:
    """One session of two processes, shared by a module's tests."""
    _, channel = server
    stub = session_pb2_grpc.SessionServiceStub(channel)
    created = stub.CreateSession(
        session_pb2.CreateSessionRequest(
            session=session_pb2.Session(process_count=2, available_ram_mib=1024)
        )
    )
    return created.name


@pytest.fixture
def raster_stub(server) -> raster_pb2_grpc.RasterServiceStub:
    return raster_pb2_grpc.RasterServiceStub(server[1])


class _HeldHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request with a small JSON body once `release` is set."""

    release: threading.Event

    def do_GET(self) -> None:
        # Bounded, so that a test that fails before releasing does not leave it waiting.
        self.release.wait(120)
        body = b'{"ok": true}'
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a server process that a test ended)

    def log_message(self, *args) -> None:
        return None


def start_sieve(channel: grpc.Channel, session: str, output: str, *, path: str = "big.tif"):
    """Start a sieve (threshold 20) of `path` into `output`; returns the operation."""
    return raster_pb2_grpc.RasterServiceStub(channel).Sieve(
        raster_pb2.SieveRequest(
            session=session,
            inputs=[raster_pb2.RasterBand(path=path)],
            size=20,
            output=raster_pb2.ToolOutput(path=output),
        )
    )


@contextlib.contextmanager
def held_http_server() -> Iterator[tuple[str, threading.Event]]:
    """A local HTTP server whose answers wait until the yielded event is set: a download
    from it is an operation that stays running, without using the CPU."""
    release = threading.Event()
    handler = type("Handler", (_HeldHandler,), {"release": release})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", release
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join()


def held_deployment(tmp_path: Path, base_url: str) -> str:
    """A deployments file naming `held`, a deployment at `base_url`; its path."""
    path = tmp_path / "held-deployments.json"
    path.write_text(
        json.dumps(
            {
                "cache_dir": str(tmp_path / "held-cache"),
                "deployments": {"held": {"base_url": base_url, "read_timeout_seconds": 300}},
            }
        )
    )
    return str(path)


def create_session(channel: grpc.Channel, *, metadata=(), process_count: int = 1) -> str:
    """A new session's name."""
    return (
        session_pb2_grpc.SessionServiceStub(channel)
        .CreateSession(
            session_pb2.CreateSessionRequest(
                session=session_pb2.Session(process_count=process_count, available_ram_mib=512)
            ),
            metadata=metadata,
            timeout=60,
        )
        .name
    )


def start_held_download(
    channel: grpc.Channel, session: str, output_path: str = "held.json", *, metadata=()
) -> lro.Operation:
    """An operation of `session` that runs until its held HTTP server is released."""
    return download_pb2_grpc.DownloadServiceStub(channel).Download(
        download_pb2.DownloadRequest(
            session=session,
            deployment="held",
            items=[download_pb2.DownloadItem(uri="hold", output_path=output_path)],
            redownload=True,
            overwrite=True,
        ),
        metadata=metadata,
        timeout=60,
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rsgrpc tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate(subject: str, issuer: tuple | None, *, server: bool = False):
    """A key and a certificate for `subject`, signed by `issuer` (key, certificate) or
    self-signed as a CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[1].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    certificate = builder.sign(issuer[0] if issuer else key, hashes.SHA256())
    return key, certificate


def _pem(key, certificate) -> tuple[bytes, bytes]:
    return (
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        certificate.public_bytes(serialization.Encoding.PEM),
    )


def make_pki(folder: Path, clients: tuple[str, ...]) -> dict[str, tuple[Path, Path]]:
    """Key and certificate files (PEM) in `folder`: a CA's, a server's for localhost and
    127.0.0.1, and one per client, whose subject's common name is the client's name."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _certificate("rsgrpc test CA", None)
    files = {}
    for name, pair in {
        "ca": ca,
        "server": _certificate("localhost", ca, server=True),
        **{client: _certificate(client, ca) for client in clients},
    }.items():
        key, cert = _pem(*pair)
        (folder / f"{name}.key").write_bytes(key)
        (folder / f"{name}.pem").write_bytes(cert)
        files[name] = (folder / f"{name}.key", folder / f"{name}.pem")
    return files


@pytest.fixture(params=["program", "fused"])
def band_calc_method(request, monkeypatch):
    """Runs a kernel test both ways an expression is evaluated, the block program that serves
    new expressions and the fused kernel, each against the test's own reference: the module's
    ``evaluate`` is bound to one method."""
    from rsgrpc_kernels import bandcalc

    evaluate = functools.partial(bandcalc.evaluate, method=request.param)
    monkeypatch.setattr(request.module, "evaluate", evaluate)
    return request.param


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 (`tests.s3_server.S3Server`), shared by a module's tests:
    give each test buckets of its own."""
    from tests.s3_server import s3_server

    with s3_server() as server:
        yield server
