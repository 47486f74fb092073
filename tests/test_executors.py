"""A session's worker pool: when a worker dies at the worst moment, and the memory
its workers are counted as holding."""

from __future__ import annotations

import importlib.util
import os
import signal
import struct
import sys
import time
from pathlib import Path

import psutil
import pytest

from rsgrpc.engine.errors import WorkerLostError
from rsgrpc.engine.executors import LocalProcessExecutor
from rsgrpc.engine.operations import Operation
from rsgrpc.engine.tiled_job import run_tiles


def _die_halfway_through_a_result() -> None:
    """Runs in a worker: start sending a result, as a worker does, then die (SIGKILL)."""
    frame = sys._getframe()
    while "result_queue" not in frame.f_locals:
        frame = frame.f_back
    writer = frame.f_locals["result_queue"]._writer
    # The length of a 1 MiB message, and its first KiB: the rest never comes.
    os.write(writer.fileno(), struct.pack("!i", 1 << 20) + bytes(1024))
    os.kill(os.getpid(), signal.SIGKILL)


def _square(value: int) -> int:
    return value * value


@pytest.mark.timeout(120)
def test_a_worker_killed_while_sending_a_result_fails_the_job_and_the_next_one_runs():
    executor = LocalProcessExecutor(2, threads_per_process=1)
    try:
        results: list[int] = []
        with pytest.raises(WorkerLostError, match="worker process died"):
            run_tiles(
                executor,
                Operation("sessions/test", "Test", owner="anonymous"),
                [0],
                lambda _: (_die_halfway_through_a_result, ()),
                results.append,
                in_flight=1,
            )
        run_tiles(
            executor,
            Operation("sessions/test", "Test", owner="anonymous"),
            [1, 2, 3],
            lambda value: (_square, (value,)),
            results.append,
            in_flight=2,
        )
        assert sorted(results) == [1, 4, 9]
        assert len(executor.pids()) == 2
    finally:
        executor.shutdown()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pipe sizes are Linux's")
def test_results_come_back_through_a_pipe_that_holds_a_tile():
    import fcntl

    allowed = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    executor = LocalProcessExecutor(1, threads_per_process=1)
    try:
        reader = executor._pool._result_queue._reader
        assert fcntl.fcntl(reader.fileno(), fcntl.F_GETPIPE_SZ) == min(allowed, 1 << 20)
        assert executor.submit(_square, 3).result() == 9
    finally:
        executor.shutdown()


def _benchmarks_process_tree():
    """The benchmarks' memory measure, loaded from its file (benchmarks/ is no package)."""
    path = Path(__file__).parents[1] / "benchmarks" / "process_tree.py"
    spec = importlib.util.spec_from_file_location("process_tree", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


_HELD: list[bytearray] = []


def _hold(size: int) -> int:
    """Runs in a worker: keeps ``size`` bytes alive (written, so resident)."""
    _HELD.append(bytearray(b"x" * size))
    return os.getpid()


def test_a_footprint_measured_recently_is_given_again_and_a_fresh_one_sees_new_memory():
    executor = LocalProcessExecutor(1, threads_per_process=1)
    try:
        first = executor.footprint_bytes()
        executor.submit(_hold, 96 << 20).result(timeout=60)
        assert executor.footprint_bytes(max_age=60.0) == first
        assert executor.footprint_bytes() >= first + (90 << 20)
    finally:
        executor.shutdown()


def _compile_a_kernel() -> int:
    """Runs in a worker: load numba and compile a function, as a job's first tile
    does; returns the worker's pid."""
    import numba

    numba.njit(lambda x: x + 1)(1)
    time.sleep(0.2)  # the other worker takes the next task meanwhile
    return os.getpid()


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0,
    reason="page frames are readable only by root, on Linux",
)
@pytest.mark.timeout(120)
def test_the_workers_footprint_counts_every_physical_page_they_hold():
    import numba

    # This process maps numba's libraries too: proportional set size would give it a
    # share of the workers' pages.
    numba.njit(lambda x: x * 2)(1)
    executor = LocalProcessExecutor(2, threads_per_process=1)
    try:
        compiled: set[int] = set()
        for _ in range(10):
            futures = [executor.submit(_compile_a_kernel) for _ in range(2)]
            compiled |= {future.result() for future in futures}
            if compiled == set(executor.pids()):
                break
        assert compiled == set(executor.pids())
        footprint = executor.footprint_bytes()
        resident = _benchmarks_process_tree().resident_set(executor.pids())
        summed = sum(psutil.Process(pid).memory_info().rss for pid in executor.pids())
        # Counted once, within what a page shared only with other processes can
        # hide (a page one worker shares with no other worker and with the outside).
        assert resident * 0.98 <= footprint <= summed
    finally:
        executor.shutdown()
