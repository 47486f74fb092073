"""A server killed outright: its workers and resource tracker go with it, and the next
server on the same roots removes what it left, and only that."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest

from rsgrpc.engine.instance import folder_instance, partial_instance
from rsgrpc.engine.partial_output import PartialOutput
from rsgrpc.v1 import session_pb2, session_pb2_grpc
from tests.conftest import (
    make_config,
    operation_metadata,
    operation_updates,
    serving,
    start_sieve,
    write_geotiff,
)

# Bounds of the waits below: generous, for a machine busy with other work.
_START_SECONDS = 120
_GONE_SECONDS = 15
_SWEEP_LINE = "leftovers of dead server instances:"


@dataclass
class _Server:
    process: subprocess.Popen
    port: int
    log: Path

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_log(server: _Server, text: str) -> str:
    """The first line of the server's log holding `text`, waiting for it while the server runs."""
    deadline = time.monotonic() + _START_SECONDS
    while time.monotonic() < deadline:
        found = [line for line in server.log_lines() if text in line]
        if found:
            return found[0]
        assert server.process.poll() is None, "\n".join(server.log_lines())
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in the log:\n" + "\n".join(server.log_lines()))


@contextlib.contextmanager
def _rsgrpc_serve(data_root: Path, temp_root: Path, log: Path, *flags: str) -> Iterator[_Server]:
    """`rsgrpc serve` in a process of its own, as a deployment starts it."""
    port = _free_port()
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rsgrpc.cli",
                "serve",
                "--address",
                f"127.0.0.1:{port}",
                "--data-root",
                str(data_root),
                "--temp-root",
                str(temp_root),
                "--max-processes",
                "2",
                "--max-ram-mib",
                "4096",
                *flags,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = _Server(process, port, log)
    try:
        _wait_for_log(server, "serving on port")
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=_START_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _partials(data_root: Path) -> list[Path]:
    return [p for p in data_root.rglob("*") if partial_instance(p.name)]


def _instance_folders(temp_root: Path) -> list[Path]:
    return [p for p in temp_root.iterdir() if folder_instance(p.name)]


@dataclass
class _Killed:
    """What a server killed mid-job left, and the processes it had started."""

    data_root: Path
    temp_root: Path
    partials: list[Path]
    folders: list[Path]
    descendants: list[psutil.Process]


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("crash")
    data_root, temp_root = base / "data", base / "tmp"
    rng = np.random.default_rng(7)
    classes = rng.integers(1, 5, (4000, 4000), dtype=np.uint8)
    write_geotiff(data_root / "big.tif", classes, nodata=0)
    return data_root, temp_root


@pytest.fixture(scope="module")
def killed(roots, tmp_path_factory) -> _Killed:
    """A server SIGKILLed while it writes a sieve's output."""
    data_root, temp_root = roots
    log = tmp_path_factory.mktemp("logs") / "killed.log"
    with _rsgrpc_serve(data_root, temp_root, log) as server:
        channel = server.channel()
        session = session_pb2_grpc.SessionServiceStub(channel).CreateSession(
            session_pb2.CreateSessionRequest(
                session=session_pb2.Session(process_count=2, available_ram_mib=640)
            )
        )
        operation = start_sieve(channel, session.name, "sieved/big.tif")
        # Pass 3 writes the output: each tile counts once in pass 1 and once in pass 3.
        for update in operation_updates(channel, operation):
            metadata = operation_metadata(update)
            assert not update.done, "the sieve ended before the server could be killed"
            if metadata.tiles_done > metadata.tiles_total // 2 and _partials(data_root):
                break
        descendants = psutil.Process(server.process.pid).children(recursive=True)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        channel.close()
    return _Killed(
        data_root, temp_root, _partials(data_root), _instance_folders(temp_root), descendants
    )


@pytest.mark.timeout(600)
def test_a_killed_servers_workers_and_resource_tracker_exit_with_it(killed):
    commands = [" ".join(p.cmdline()) for p in killed.descendants]
    assert any("resource_tracker" in c for c in commands), commands
    assert sum("spawn_main" in c for c in commands) >= 2, commands
    gone, alive = psutil.wait_procs(killed.descendants, timeout=_GONE_SECONDS)
    assert alive == [], [" ".join(p.cmdline()) for p in alive]


@pytest.mark.timeout(600)
def test_a_starting_server_removes_what_a_killed_one_left_and_logs_it(killed, tmp_path):
    assert len(killed.partials) == 1 and len(killed.folders) == 1
    [partial], [folder] = killed.partials, killed.folders
    assert any(folder.rglob("session.log"))  # a session's directory is in it
    with _rsgrpc_serve(killed.data_root, killed.temp_root, tmp_path / "next.log") as server:
        summary = _wait_for_log(server, _SWEEP_LINE)
        lines = server.log_lines()
    assert "1 partial outputs and 1 temporary folders removed" in summary
    shown = os.path.relpath(partial, killed.data_root)
    assert any(f"removed partial output {shown}," in line for line in lines), lines
    assert any(f"removed temporary folder {folder.name}," in line for line in lines), lines
    removals = [line for line in lines if "removed" in line]
    assert not any(
        str(killed.data_root) in line or str(killed.temp_root) in line for line in removals
    )
    assert not partial.exists() and not folder.exists()
    assert (killed.data_root / "big.tif").exists()
    assert not (killed.data_root / "sieved" / "big.tif").exists()


@pytest.mark.timeout(600)
def test_a_starting_server_leaves_a_live_servers_partial_output_and_folder(tmp_path):
    config = make_config(tmp_path)
    with serving(config) as (running, channel):
        session_pb2_grpc.SessionServiceStub(channel).CreateSession(
            session_pb2.CreateSessionRequest(
                session=session_pb2.Session(process_count=1, available_ram_mib=256)
            )
        )
        [folder] = _instance_folders(config.temp_root)
        # An output being written by the live server: the writer's own temporary file.
        target = running.data_root.path("out/live.tif", field="output_path")
        with PartialOutput(target, overwrite=False):
            [partial] = _partials(config.data_root)
            with _rsgrpc_serve(config.data_root, config.temp_root, tmp_path / "next.log") as server:
                summary = _wait_for_log(server, _SWEEP_LINE)
            assert "0 partial outputs and 0 temporary folders removed" in summary
            assert partial.exists() and folder.exists()
            assert any(folder.rglob("session.log"))


@pytest.mark.timeout(600)
def test_sigterm_during_a_job_after_an_idle_worker_was_killed_ends_the_server_cleanly(
    roots, tmp_path
):
    data_root, _ = roots
    temp_root = tmp_path / "tmp"
    log = tmp_path / "server.log"
    with _rsgrpc_serve(data_root, temp_root, log, "--grace-period-s", "1") as server:
        channel = server.channel()
        sessions = session_pb2_grpc.SessionServiceStub(channel)
        session = sessions.CreateSession(
            session_pb2.CreateSessionRequest(
                session=session_pb2.Session(process_count=2, available_ram_mib=640)
            )
        )
        [idle, _] = [
            p
            for p in psutil.Process(server.process.pid).children()
            if "spawn_main" in " ".join(p.cmdline())
        ]
        idle.kill()
        idle.wait(_GONE_SECONDS)
        operation = start_sieve(channel, session.name, "sigterm/sieved.tif")
        for update in operation_updates(channel, operation):
            assert not update.HasField("error"), update.error
            if operation_metadata(update).tiles_done >= 1:
                break
        descendants = psutil.Process(server.process.pid).children(recursive=True)
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=_START_SECONDS)
        channel.close()
    assert code == 0, log.read_text()
    assert _instance_folders(temp_root) == [] and _partials(data_root) == []
    _, alive = psutil.wait_procs(descendants, timeout=_GONE_SECONDS)
    assert alive == []


@pytest.mark.timeout(300)
def test_a_starting_server_follows_no_link_out_of_its_roots(tmp_path):
    data_root, temp_root, outside = tmp_path / "data", tmp_path / "tmp", tmp_path / "outside"
    dead = ".x.tif.0123456789abcdef.01234567.partial.tif"  # unlocked: a dead instance's
    for folder in (data_root / "sub", outside / "folder"):
        folder.mkdir(parents=True)
        (folder / dead).write_bytes(b"partial")
    (data_root / "link").symlink_to(outside / "folder", target_is_directory=True)
    (data_root / ".y.tif.0123456789abcdef.89abcdef.partial.tif").symlink_to(
        outside / "folder" / dead
    )
    temp_root.mkdir()
    (temp_root / "rsgrpc-instance-0123456789abcdef.01234567").symlink_to(
        outside, target_is_directory=True
    )
    with _rsgrpc_serve(data_root, temp_root, tmp_path / "server.log") as server:
        summary = _wait_for_log(server, _SWEEP_LINE)
    assert "1 partial outputs and 0 temporary folders removed" in summary
    assert not (data_root / "sub" / dead).exists()
    assert (outside / "folder" / dead).read_bytes() == b"partial"
    assert (data_root / ".y.tif.0123456789abcdef.89abcdef.partial.tif").is_symlink()
