"""Nothing waits forever: workers that die or freeze, idle or busy, and a Dask scheduler
that goes away, each fail at most the job they were running, with UNAVAILABLE."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import signal
import socket
import time
from collections.abc import Iterator

import grpc
import numpy as np
import psutil
import pytest
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rsgrpc.engine.errors import WorkersUnavailableError
from rsgrpc.engine.executors import DaskExecutor, LocalProcessExecutor
from rsgrpc.v1 import raster_pb2, raster_pb2_grpc, session_pb2, session_pb2_grpc
from tests.conftest import (
    free_port,
    make_config,
    module_process,
    operation_metadata,
    operation_updates,
    serving,
    start_sieve,
    watch_operation,
    write_geotiff,
)

# Bound of the waits for a process to be gone or a scheduler to start.
_WAIT_SECONDS = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(make_config(tmp_path_factory.mktemp("liveness"))) as (running, channel):
        _write_inputs(running.data_root.root)
        yield running, channel


def _write_inputs(root) -> None:
    rng = np.random.default_rng(3)
    write_geotiff(root / "small.tif", rng.normal(size=(300, 300)).astype(np.float32))
    write_geotiff(root / "big.tif", rng.integers(1, 5, (4000, 4000), dtype=np.uint8), nodata=0)


def _create_session(channel: grpc.Channel) -> str:
    request = session_pb2.CreateSessionRequest(
        session=session_pb2.Session(process_count=2, available_ram_mib=640)
    )
    return session_pb2_grpc.SessionServiceStub(channel).CreateSession(request).name


@contextlib.contextmanager
def _session(channel: grpc.Channel) -> Iterator[str]:
    """A session of two processes, deleted at the end."""
    name = _create_session(channel)
    try:
        yield name
    finally:
        with contextlib.suppress(grpc.RpcError):
            session_pb2_grpc.SessionServiceStub(channel).DeleteSession(
                session_pb2.DeleteSessionRequest(name=name)
            )


def _band_calc(channel: grpc.Channel, session: str, output: str):
    """Run a small band calc to its end; returns the finished operation."""
    operation = raster_pb2_grpc.RasterServiceStub(channel).BandCalc(
        raster_pb2.BandCalcRequest(
            session=session,
            expression="a * 2",
            inputs=[raster_pb2.RasterInput(name="a", path="small.tif")],
            output_path=output,
        )
    )
    return watch_operation(channel, operation)[-1]


def _kill_during_pass_one(channel: grpc.Channel, operation, kill) -> list:
    """Follow the sieve's updates; call `kill()` once its first pass has done a tile.
    Returns every update until the operation is done."""
    updates, killed = [], False
    for update in operation_updates(channel, operation):
        updates.append(update)
        metadata = operation_metadata(update)
        if not killed and 1 <= metadata.tiles_done < metadata.tiles_total // 2:
            kill()
            killed = True
    assert killed, "the sieve ended before anything was killed"
    return updates


def _wait_gone(pid: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(_WAIT_SECONDS)


def _wait_dead(pid: int) -> None:
    """Wait until a worker of this process has died, without reaping it: its pool must
    find it dead as it would in the server (`wait` would reap it, and the pool would then
    see a worker it cannot tell from a live one until its own thread notices)."""
    deadline = time.monotonic() + _WAIT_SECONDS
    with contextlib.suppress(psutil.NoSuchProcess):
        while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, f"worker {pid} still runs"
            time.sleep(0.01)


@pytest.mark.timeout(300)
def test_a_worker_killed_while_its_session_is_idle_is_replaced_and_the_next_job_runs(server):
    running, channel = server
    with _session(channel) as session:
        assert not _band_calc(channel, session, "idle/first.tif").HasField("error")
        executor = running.registry.get(session).executor
        victim = executor.pids()[0]
        os.kill(victim, signal.SIGKILL)
        _wait_dead(victim)
        done = _band_calc(channel, session, "idle/second.tif")
        pids = executor.pids()
    assert not done.HasField("error"), done.error
    assert (running.data_root.root / "idle" / "second.tif").exists()
    assert len(pids) == 2 and victim not in pids


@pytest.mark.timeout(300)
def test_a_worker_killed_during_a_job_fails_it_unavailable_and_the_next_job_runs(server):
    running, channel = server
    with _session(channel) as session:
        executor = running.registry.get(session).executor
        victim = executor.pids()[0]
        operation = start_sieve(channel, session, "busy/sieved.tif")
        kill = functools.partial(os.kill, victim, signal.SIGKILL)
        failed = _kill_during_pass_one(channel, operation, kill)[-1]
        done = _band_calc(channel, session, "busy/next.tif")
        pids = executor.pids()
    assert failed.error.code == code_pb2.UNAVAILABLE
    assert "worker process died" in failed.error.message
    assert [p.name for p in (running.data_root.root / "busy").iterdir()] == ["next.tif"]
    assert not done.HasField("error"), done.error
    assert victim not in pids


@pytest.mark.timeout(300)
def test_deleting_a_session_whose_worker_is_frozen_kills_the_worker(server):
    running, channel = server
    session = _create_session(channel)
    frozen, other = running.registry.get(session).executor.pids()
    os.kill(frozen, signal.SIGSTOP)  # alive, but answers nothing, SIGTERM included
    try:
        session_pb2_grpc.SessionServiceStub(channel).DeleteSession(
            session_pb2.DeleteSessionRequest(name=session)
        )
        _wait_gone(frozen)
        _wait_gone(other)
        assert not psutil.pid_exists(frozen) and not psutil.pid_exists(other)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen, signal.SIGKILL)


def _sleep_forever() -> None:
    time.sleep(3600)


@pytest.mark.timeout(120)
def test_stopping_a_pool_kills_a_worker_stuck_in_a_task():
    executor = LocalProcessExecutor(1, threads_per_process=1)
    [pid] = executor.pids()
    future = executor.submit(_sleep_forever)
    while not future.running():
        time.sleep(0.01)
    executor.shutdown()
    _wait_gone(pid)
    assert not psutil.pid_exists(pid)


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + _WAIT_SECONDS
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}")


@pytest.mark.timeout(600)
def test_a_dask_scheduler_killed_during_a_job_fails_it_unavailable(tmp_path):
    pytest.importorskip("distributed")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler_args = ("distributed.cli.dask_scheduler", "--host", "127.0.0.1")
    worker_args = ("distributed.cli.dask_worker", address, "--no-nanny", "--nthreads", "2")
    with (
        module_process(*scheduler_args, "--port", str(port), "--no-dashboard") as scheduler,
        module_process(*worker_args, "--no-dashboard"),
    ):
        _wait_for_port(port)
        with serving(make_config(tmp_path, dask_scheduler=address)) as (running, channel):
            _write_inputs(running.data_root.root)
            session = _create_session(channel)  # closed with the server
            operation = start_sieve(channel, session, "dask/sieved.tif")
            updates = _kill_during_pass_one(channel, operation, scheduler.kill)
            failed = updates[-1]
            assert failed.error.code == code_pb2.UNAVAILABLE
            assert "Dask scheduler" in failed.error.message
            assert not list((running.data_root.root / "dask").glob("*"))
            # The session stays, and says why it cannot run a job now.
            refused = _band_calc(channel, session, "dask/next.tif")
            assert refused.error.code == code_pb2.UNAVAILABLE
            assert "Dask scheduler" in refused.error.message


class _EndedTask:
    """What `_give_result` reads of a Dask future: its status, and a result() that raises."""

    def __init__(self, status: str, exc: Exception) -> None:
        self.status, self._exc = status, exc

    def result(self) -> None:
        raise self._exc


def test_a_result_that_cannot_be_gathered_fails_the_tile_unavailable():
    # The scheduler killed between a task's end and the gathering of its result: Dask
    # raises its own CommClosedError (an OSError) from result().
    closed = OSError("in <TCP (closed) ConnectionPool.who_has>: Connection reset by peer")
    future = concurrent.futures.Future()
    DaskExecutor._give_result(_EndedTask("finished", closed), future)
    with pytest.raises(WorkersUnavailableError, match="Dask scheduler"):
        future.result(timeout=0)


def test_a_task_that_raised_keeps_its_own_exception():
    own = OSError("the task's own failure")
    future = concurrent.futures.Future()
    DaskExecutor._give_result(_EndedTask("error", own), future)
    assert future.exception(timeout=0) is own


@pytest.mark.timeout(120)
def test_a_session_on_an_unreachable_dask_scheduler_is_unavailable(tmp_path):
    pytest.importorskip("distributed")
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    with (
        serving(make_config(tmp_path, dask_scheduler=address)) as (_, channel),
        pytest.raises(grpc.RpcError) as caught,
    ):
        _create_session(channel)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "Dask scheduler" in caught.value.details()


def _health(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def _wait_for_health(channel: grpc.Channel, service: str, status: int) -> None:
    deadline = time.monotonic() + _WAIT_SECONDS
    while _health(channel, service) != status:
        assert time.monotonic() < deadline, f"{service} never became {status}"
        time.sleep(0.1)


@pytest.mark.timeout(300)
def test_the_raster_service_serves_only_while_the_dask_scheduler_answers(tmp_path):
    pytest.importorskip("distributed")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    serving_, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        (health_pb2.HealthCheckResponse.NOT_SERVING),
    )
    raster, sessions = "rsgrpc.v1.RasterService", "rsgrpc.v1.SessionService"
    with serving(make_config(tmp_path, dask_scheduler=address)) as (_, channel):
        # Started while nothing answers there: raster work cannot run; the rest serves.
        assert _health(channel, raster) == not_serving
        assert _health(channel, sessions) == serving_
        scheduler_args = ("distributed.cli.dask_scheduler", "--host", "127.0.0.1")
        with module_process(*scheduler_args, "--port", str(port), "--no-dashboard") as scheduler:
            _wait_for_port(port)
            _wait_for_health(channel, raster, serving_)
            scheduler.kill()
            scheduler.wait()
            _wait_for_health(channel, raster, not_serving)
        assert _health(channel, sessions) == serving_


@pytest.mark.timeout(600)
def test_sessions_outlive_a_dask_scheduler_restart_and_close_cleanly_without_one(tmp_path):
    pytest.importorskip("distributed")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler_args = ("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port))
    # A worker ends with its scheduler: a deployment starts new ones (as here).
    worker_args = ("distributed.cli.dask_worker", address, "--no-nanny", "--nthreads", "2")
    with serving(make_config(tmp_path, dask_scheduler=address)) as (running, channel):
        _write_inputs(running.data_root.root)
        stub = session_pb2_grpc.SessionServiceStub(channel)
        with module_process(*scheduler_args, "--no-dashboard") as scheduler:
            _wait_for_port(port)
            with module_process(*worker_args, "--no-dashboard"):
                kept, dropped = _create_session(channel), _create_session(channel)
                assert not _band_calc(channel, kept, "restart/before.tif").HasField("error")
                scheduler.kill()
                scheduler.wait()
        sessions_folder = running.registry.get(kept).temporary_directory.parent
        # Without a scheduler: a job fails UNAVAILABLE at once, a session closes at once.
        refused = _band_calc(channel, kept, "restart/without.tif")
        assert refused.error.code == code_pb2.UNAVAILABLE, refused.error
        dropped_folder = running.registry.get(dropped).temporary_directory
        stub.DeleteSession(session_pb2.DeleteSessionRequest(name=dropped), timeout=60)
        assert not dropped_folder.exists()
        with module_process(*scheduler_args, "--no-dashboard"):
            _wait_for_port(port)
            # A scheduler without workers: the job fails once it has waited for one.
            deadline = time.monotonic() + _WAIT_SECONDS
            while (
                "no worker"
                not in (idle := _band_calc(channel, kept, "restart/idle.tif")).error.message
            ):
                assert idle.error.code == code_pb2.UNAVAILABLE, idle.error
                assert time.monotonic() < deadline, idle.error
                time.sleep(0.5)
            assert idle.error.code == code_pb2.UNAVAILABLE
            # With a worker again, the session that stayed runs its jobs.
            with module_process(*worker_args, "--no-dashboard"):
                deadline = time.monotonic() + _WAIT_SECONDS
                while (after := _band_calc(channel, kept, "restart/after.tif")).HasField("error"):
                    assert "no worker" in after.error.message, after.error  # not started yet
                    assert time.monotonic() < deadline, after.error
        assert (running.data_root.root / "restart" / "after.tif").exists()
        for name in ("without.tif", "idle.tif"):
            assert not (running.data_root.root / "restart" / name).exists()
        stub.DeleteSession(session_pb2.DeleteSessionRequest(name=kept), timeout=60)
        assert not any(sessions_folder.iterdir())
