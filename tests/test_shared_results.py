"""Large result arrays come back from workers through shared buffers, which go back
to the worker once the job's process has freed them."""

from __future__ import annotations

import gc
import mmap
import time

import numpy as np
import psutil
import pytest

from rsgrpc.engine import executors, shared_results
from rsgrpc.engine.executors import LocalProcessExecutor
from rsgrpc.engine.shared_results import MAX_BUFFERS, MIN_SHARED_BYTES
from rsgrpc.engine.worker_heap import IDLE_SECONDS

_SIDE = 1024  # a float32 tile of 4 MiB


def _tile(value: float, dtype: str = "float32", side: int = _SIDE) -> np.ndarray:
    """Runs in a worker: a tile filled with `value`, but one pixel `value + 1`."""
    tile = np.full((side, side), value, dtype)
    tile[0, 1] = value + 1
    return tile


def _shared(array: np.ndarray) -> bool:
    return isinstance(array.base, mmap.mmap)


@pytest.fixture
def executor():
    executor = LocalProcessExecutor(1, threads_per_process=1)
    yield executor
    executor.shutdown()


def test_a_large_array_comes_back_shared_and_equal(executor):
    tile = executor.submit(_tile, 3.0).result()
    assert _shared(tile)
    expected = np.full((_SIDE, _SIDE), 3.0, np.float32)
    expected[0, 1] = 4.0
    np.testing.assert_array_equal(tile, expected)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint32", "float64", "complex64", "bool"])
def test_every_plain_dtype_comes_back_equal(executor, dtype):
    side = 2048  # at least MIN_SHARED_BYTES for uint8 and bool
    tile = executor.submit(_tile, 1, dtype, side).result()
    assert _shared(tile)
    np.testing.assert_array_equal(tile, _tile(1, dtype, side))


def test_a_small_array_comes_through_the_pipe(executor):
    side = int((MIN_SHARED_BYTES // 4) ** 0.5) - 1
    tile = executor.submit(_tile, 2.0, "float32", side).result()
    assert not _shared(tile)
    np.testing.assert_array_equal(tile, _tile(2.0, "float32", side))


def test_a_buffer_is_reused_only_once_the_array_is_freed(executor):
    [pid] = executor.pids()
    held = [executor.submit(_tile, float(i)).result() for i in range(3)]
    lent = _worker_buffers(pid)
    assert lent >= 3
    for i, tile in enumerate(held):
        assert tile[5, 5] == i  # the worker wrote no later tile over it
    del held, tile
    gc.collect()
    for i in range(10):
        assert executor.submit(_tile, float(i)).result()[5, 5] == i
    assert _worker_buffers(pid) <= lent  # reused, not new ones


def test_buffers_do_not_pile_up_when_result_sizes_vary(executor):
    """Encoded tiles differ in size: a buffer too small for the next one is closed, not
    kept beside the new one."""
    [pid] = executor.pids()
    for side in (1024, 1200, 1400, 1600, 1800, 1100):
        tile = executor.submit(_tile, 1.0, "float32", side).result()
        assert _shared(tile) and tile.shape == (side, side)
        assert _worker_buffers(pid) == 1  # the one this tile is in
        del tile
        gc.collect()


def test_past_max_buffers_results_come_through_the_pipe(executor):
    held = [executor.submit(_tile, float(i)).result() for i in range(MAX_BUFFERS + 3)]
    assert [_shared(t) for t in held] == [True] * MAX_BUFFERS + [False] * 3
    assert [t[5, 5] for t in held] == list(range(MAX_BUFFERS + 3))


def test_an_idle_worker_closes_its_free_buffers(executor):
    executor.submit(_tile, 1.0).result()
    gc.collect()
    [pid] = executor.pids()
    deadline = time.monotonic() + IDLE_SECONDS + 10
    while _worker_buffers(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _worker_buffers(pid) == 0


def _worker_buffers(pid: int) -> int:
    maps = psutil.Process(pid).memory_maps(grouped=False)
    return sum("rsgrpc-result" in m.path for m in maps)


def test_a_pool_that_cannot_map_its_workers_buffers_uses_the_pipe(monkeypatch):
    monkeypatch.setattr(executors, "can_map", lambda probe: False)
    executor = LocalProcessExecutor(1, threads_per_process=1)
    try:
        tile = executor.submit(_tile, 5.0).result()
        assert not _shared(tile)
        np.testing.assert_array_equal(tile, _tile(5.0))
    finally:
        executor.shutdown()


def test_this_machine_lets_a_pool_map_its_workers_buffers(executor):
    # What the pool checks when it starts, once more: if it failed here, every
    # other test above would pass through the pipe without saying so.
    probe = executor.submit(shared_results.probe_buffer).result()
    assert shared_results.can_map(probe)


def test_a_buffer_that_cannot_be_opened_is_not_used():
    assert not shared_results.can_map(None)  # a system without memory files
    gone = next(pid for pid in range(4_000_000, 4_001_000) if not psutil.pid_exists(pid))
    assert not shared_results.can_map((gone, 3))
