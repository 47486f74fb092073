"""Workers keep freed memory for their next tile and give it back between jobs."""

from __future__ import annotations

import time

import psutil
import pytest

from rsgrpc.engine.executors import LocalProcessExecutor
from rsgrpc.engine.worker_heap import IDLE_SECONDS

_CHURN_MIB = 256
_BLOCK_MIB = 16  # under glibc's 32 MiB mmap ceiling, as a tile's arrays are


def _churn() -> tuple[int, int]:
    """Runs in a worker: allocate, touch and free _CHURN_MIB in blocks; returns its
    page faults and the worker's RSS once the blocks are freed."""
    import resource

    import numpy as np

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [np.ones(_BLOCK_MIB << 20, np.uint8) for _ in range(_CHURN_MIB // _BLOCK_MIB)]
    del blocks
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return faults, psutil.Process().memory_info().rss


@pytest.fixture
def executor():
    executor = LocalProcessExecutor(1, threads_per_process=1)
    yield executor
    executor.shutdown()


def _rss(executor: LocalProcessExecutor) -> int:
    [pid] = executor.pids()
    return psutil.Process(pid).memory_info().rss


def test_the_next_task_reuses_what_the_last_one_freed(executor):
    # Queued together, the second task starts as soon as the first ends.
    first, second = executor.submit(_churn), executor.submit(_churn)
    faults = first.result()[0], second.result()[0]
    assert faults[0] > 100  # a fault can map more than a page (huge pages)
    assert faults[1] < faults[0] // 10


def test_the_planner_never_counts_freed_memory(executor):
    idle = executor.footprint_bytes()
    executor.submit(_churn).result()
    assert executor.footprint_bytes() < idle + (_CHURN_MIB << 20) // 4


def test_an_idle_worker_gives_freed_memory_back_by_itself(executor):
    idle = _rss(executor)
    _, kept = executor.submit(_churn).result()
    assert kept > idle + (_CHURN_MIB << 20) // 2  # kept for the next task
    deadline = time.monotonic() + IDLE_SECONDS + 10
    while _rss(executor) > idle + (_CHURN_MIB << 20) // 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _rss(executor) < idle + (_CHURN_MIB << 20) // 4
