"""Warm workers lent to sessions: CreateSession spawns nothing when the server has a
spare pool of the session's size, a closed session's workers serve the next one, a
spare whose worker died is never lent, and spares stay within the process total."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import grpc
import numpy as np
import psutil
import pytest
import rasterio

from rsgrpc.server.app import RunningServer
from rsgrpc.v1 import raster_pb2, raster_pb2_grpc, session_pb2, session_pb2_grpc
from tests.conftest import make_config, serving, watch_operation, write_geotiff

# Bound of the waits for spare workers to start and for killed ones to be gone.
_WAIT_SECONDS = 120


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[RunningServer, grpc.Channel, np.ndarray]]:
    """A server of two processes, whose default session size is two; its input `a.tif`."""
    with serving(make_config(tmp_path, max_processes=2)) as (running, channel):
        values = np.random.default_rng(5).normal(size=(300, 300)).astype(np.float32)
        write_geotiff(running.data_root.root / "a.tif", values)
        yield running, channel, values


def _spare_pids(running: RunningServer, count: int) -> list[int]:
    """The spare workers' pids, once `count` of them have started."""
    deadline = time.monotonic() + _WAIT_SECONDS
    while time.monotonic() < deadline:
        pids = running.registry.stock.spare_pids()
        if len(pids) == count:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"{count} spare workers did not start within {_WAIT_SECONDS} s")


def _workers() -> set[int]:
    """This process's live worker processes (not multiprocessing's resource tracker)."""
    found = set()
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if "spawn_main" in " ".join(child.cmdline()) and child.status() != "zombie":
                found.add(child.pid)
    return found


def _create(channel: grpc.Channel, process_count: int = 2) -> str:
    request = session_pb2.CreateSessionRequest(
        session=session_pb2.Session(process_count=process_count, available_ram_mib=640)
    )
    return session_pb2_grpc.SessionServiceStub(channel).CreateSession(request, timeout=120).name


def _delete(channel: grpc.Channel, session: str) -> None:
    session_pb2_grpc.SessionServiceStub(channel).DeleteSession(
        session_pb2.DeleteSessionRequest(name=session), timeout=60
    )


def _double(running: RunningServer, channel: grpc.Channel, session: str, output: str) -> np.ndarray:
    """Run `a * 2` into `output` on `session`; the output's pixels."""
    operation = raster_pb2_grpc.RasterServiceStub(channel).BandCalc(
        raster_pb2.BandCalcRequest(
            session=session,
            expression="a * 2",
            inputs=[raster_pb2.RasterInput(name="a", path="a.tif")],
            output_path=output,
        )
    )
    done = watch_operation(channel, operation)[-1]
    assert not done.HasField("error"), done.error
    with rasterio.open(running.data_root.root / output) as ds:
        return ds.read(1)


def _wait_gone(pid: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(_WAIT_SECONDS)


@pytest.mark.timeout(300)
def test_create_session_lends_the_spare_workers_and_the_first_job_runs_on_them(server):
    running, channel, values = server
    spares = _spare_pids(running, 2)
    before = _workers()
    session = _create(channel)
    executor = running.registry.get(session).executor
    assert sorted(executor.pids()) == sorted(spares)
    assert _workers() == before
    assert running.registry.stock.spare_processes == 0
    np.testing.assert_array_equal(_double(running, channel, session, "first.tif"), values * 2)
    assert sorted(executor.pids()) == sorted(spares)
    assert _workers() == before


@pytest.mark.timeout(300)
def test_a_closed_sessions_workers_serve_the_next_session_with_its_inputs_closed(server):
    running, channel, values = server
    _spare_pids(running, 2)
    first = _create(channel)
    pids = sorted(running.registry.get(first).executor.pids())
    _double(running, channel, first, "first.tif")
    _delete(channel, first)
    assert sorted(_spare_pids(running, 2)) == pids
    inputs = os.path.realpath(running.data_root.root / "a.tif")
    for pid in pids:
        assert inputs not in [f.path for f in psutil.Process(pid).open_files()]
    second = _create(channel)
    assert sorted(running.registry.get(second).executor.pids()) == pids
    np.testing.assert_array_equal(_double(running, channel, second, "second.tif"), values * 2)


@pytest.mark.timeout(300)
def test_a_spare_whose_worker_died_is_not_lent(server):
    running, channel, values = server
    victim, other = _spare_pids(running, 2)
    os.kill(victim, signal.SIGKILL)
    _wait_gone(victim)
    session = _create(channel)
    pids = running.registry.get(session).executor.pids()
    assert len(pids) == 2 and not {victim, other} & set(pids)
    assert not psutil.pid_exists(other)
    np.testing.assert_array_equal(_double(running, channel, session, "fresh.tif"), values * 2)


@pytest.mark.timeout(300)
def test_a_frozen_sessions_workers_are_stopped_not_kept(server):
    running, channel, _ = server
    _spare_pids(running, 2)
    session = _create(channel)
    frozen, other = running.registry.get(session).executor.pids()
    os.kill(frozen, signal.SIGSTOP)
    try:
        _delete(channel, session)
        assert running.registry.stock.spare_processes == 0
        _wait_gone(frozen)
        _wait_gone(other)
        assert not psutil.pid_exists(frozen) and not psutil.pid_exists(other)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen, signal.SIGKILL)


@pytest.mark.timeout(300)
def test_spares_and_sessions_stay_within_the_process_total(server):
    running, channel, values = server
    spares = _spare_pids(running, 2)
    # Two spare processes and one of the session's would make three: the spares go first.
    small = _create(channel, process_count=1)
    assert not any(psutil.pid_exists(pid) for pid in spares)
    assert running.registry.stock.spare_processes == 0
    assert len(_workers()) == 1
    np.testing.assert_array_equal(_double(running, channel, small, "small.tif"), values * 2)
    _delete(channel, small)
    [kept] = _spare_pids(running, 1)
    assert len(_workers()) == 1
    large = _create(channel, process_count=2)
    assert not psutil.pid_exists(kept)
    assert running.registry.stock.spare_processes == 0
    assert len(_workers()) == 2
    _delete(channel, large)
    assert running.registry.stock.spare_processes == 2
    assert len(_workers()) == 2


def test_health_says_serving_once_the_first_sessions_workers_have_started(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    running, channel, _ = server
    # No waiting here: by the time the server is up and SERVING, the spares have started
    # (their kernels loaded), so the first request does not wait for them.
    assert len(running.registry.stock.spare_pids()) == 2
    answer = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="rsgrpc.v1.RasterService"), timeout=10
    )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
