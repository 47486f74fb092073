"""A session's worker pool when a worker dies at the worst moment."""

from __future__ import annotations

import os
import signal
import struct
import sys
from pathlib import Path

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
                Operation("sessions/test", "Test"),
                [0],
                lambda _: (_die_halfway_through_a_result, ()),
                results.append,
                in_flight=1,
            )
        run_tiles(
            executor,
            Operation("sessions/test", "Test"),
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
