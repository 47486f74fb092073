"""Where tiles run: a session's warm pool of local processes, or a Dask cluster.

Both give `submit(fn, *args) -> concurrent.futures.Future`, so a job has one
code path whatever runs it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import threading
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

import psutil

from rsgrpc.engine.raster_io import keep_inputs_open
from rsgrpc.engine.shared_results import can_map, lend_buffers, probe_buffer
from rsgrpc.engine.worker_heap import HeapGate, keep_freed_memory, run_task

_LOGGER = logging.getLogger(__name__)
# What the pipe that brings results back may hold (see _widen_result_pipe).
_RESULT_PIPE_BYTES = 1 << 20


class Executor(Protocol):
    """What a job needs of whatever runs its tiles."""

    workers: int
    # Cores each worker may use: numba's threads, or tiles run side by side.
    threads_per_process: int

    def submit(self, fn: Any, /, *args: Any) -> concurrent.futures.Future: ...

    def footprint_bytes(self) -> int: ...

    def notice_dead_workers(self) -> None: ...

    def recover(self) -> None: ...

    def shutdown(self) -> None: ...


def _init_worker(threads: int, holding: Any, trim_now: Any, lend: Any) -> None:
    """Runs once in each new worker: pin numba's threads; return large results
    through shared buffers (`shared_results`); keep freed memory, open inputs and
    free buffers for the next tile, and give them back between jobs (`worker_heap`)."""
    import numba

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    lender = lend_buffers(lend)
    close_inputs = keep_inputs_open()

    def give_back() -> None:
        close_inputs()
        lender.close_free()

    keep_freed_memory(holding, trim_now, give_back)


def _widen_result_pipe(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Let a worker put a tile's result into the pool's result pipe in a few writes.

    The pipe holds 64 KiB by default, so a worker sending a 2.4 MB sieve tile
    waited on the job's process dozens of times: its gaps between tiles added up
    to 0.14 to 0.23 s of a 1.5 s pass 1, and 0.10 to 0.13 s with a 1 MiB pipe.
    Linux allows up to /proc/sys/fs/pipe-max-size (1 MiB by default);
    elsewhere, or when refused, the pipe keeps its size.
    """
    try:
        import fcntl

        with open("/proc/sys/fs/pipe-max-size") as limit:
            size = min(int(limit.read()), _RESULT_PIPE_BYTES)
        fcntl.fcntl(pool._result_queue._reader.fileno(), fcntl.F_SETPIPE_SZ, size)
    except (ImportError, AttributeError, OSError, ValueError):
        pass


def _warm_up() -> tuple[int, int] | None:
    """Runs in a new worker: where to find a buffer it lends results through."""
    import time

    # Long enough that every worker of a new pool receives one.
    time.sleep(0.05)
    return probe_buffer()


class LocalProcessExecutor:
    """A warm pool of spawned worker processes owned by one session.

    Processes are spawned (never forked: the parent runs gRPC's threads).
    When a worker dies, the pool is broken; `recover` replaces it, so the
    next job runs on fresh workers.
    """

    def __init__(self, processes: int, *, threads_per_process: int) -> None:
        self.workers = processes
        self.threads_per_process = threads_per_process
        self._lock = threading.Lock()
        # Tasks submitted and not yet ended, of this pool or a broken one.
        self._running_lock = threading.Lock()
        self._running = 0
        self._pool = self._start()

    def _start(self) -> concurrent.futures.ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        self._heap = HeapGate(context)
        lend = context.RawValue("b", 0)
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(self.threads_per_process, self._heap.holding, self._heap.trim_now, lend),
        )
        _widen_result_pipe(pool)
        # Start every worker now, so the first job does not pay for it.
        futures = [pool.submit(_warm_up) for _ in range(self.workers)]
        try:
            probes = [future.result() for future in futures]
        except BrokenProcessPool:
            return pool  # the first job fails clearly, and recover() starts anew
        lend.value = all(can_map(probe) for probe in probes)
        if not lend.value:
            _LOGGER.warning("workers cannot share result buffers here; results use the pipe")
        return pool

    def submit(self, fn: Any, /, *args: Any) -> concurrent.futures.Future:
        # A broken pool raises BrokenProcessPool here or from the future;
        # the job's loop handles both the same way (recover, then fail clearly).
        with self._lock:
            pool = self._pool
        future = pool.submit(run_task, fn, *args)
        with self._running_lock:
            self._running += 1
        future.add_done_callback(self._task_ended)
        return future

    def _task_ended(self, _future: concurrent.futures.Future) -> None:
        # Called by the pool's thread, or by whoever cancels the future.
        with self._running_lock:
            self._running -= 1

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in list(self._pool._processes.values())]

    def footprint_bytes(self) -> int:
        """Memory the workers hold, each page once: the largest worker's resident set
        and every other worker's own pages.

        The workers run the same code, so what one maps from shared libraries the
        others map too, and it is counted once, in full. Proportional set size
        would split those pages with every process that maps them, the server and
        any other Python on the machine, and undercount what the workers alone
        hold: with two workers that had compiled a kernel, 294 MiB of PSS against
        312 MiB of physical pages. When no task runs, the workers first give back
        the memory they kept for their next tile, so that it is not counted as theirs.
        """
        with self._running_lock:
            idle = self._running == 0
        with self._lock:
            heap = self._heap
        if idle:
            heap.give_back()
        held = []  # (resident set, own pages) of each worker
        for pid in self.pids():
            try:
                info = psutil.Process(pid).memory_full_info()
            except (psutil.Error, OSError):
                continue
            held.append((info.rss, getattr(info, "uss", info.rss)))
        if not held:
            return 0
        held.sort()
        return held[-1][0] + sum(own for _, own in held[:-1])

    def notice_dead_workers(self) -> None:
        """Break the pool if a worker died without the pool noticing.

        A worker killed while it sends a result leaves half a message in the
        pool's result pipe, and the pool's manager thread then waits for the
        rest forever: it never marks the pool broken, and the job's futures
        never end. Here the other workers are killed and this process's end of
        the pipe closed, so that thread reads end-of-file, marks the pool
        broken and fails every pending future; `recover` then starts new workers.
        """
        with self._lock:
            pool = self._pool
        processes = list((pool._processes or {}).values())
        if all(p.exitcode is None for p in processes):
            return
        _LOGGER.warning("a worker died unseen by its pool; breaking the pool")
        for process in processes:
            if process.exitcode is None:
                process.kill()
        for process in processes:
            process.join()
        pool._result_queue._writer.close()

    def recover(self) -> None:
        """Replace a broken pool with a new one."""
        with self._lock:
            old = self._pool
            broken = getattr(old, "_broken", False)
            if not broken:
                return
            _LOGGER.warning("worker pool broken; starting %d new workers", self.workers)
            old.shutdown(wait=False, cancel_futures=True)
            self._pool = self._start()

    def shutdown(self) -> None:
        with self._lock:
            pool = self._pool
        pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """Tiles on a Dask distributed cluster, through its concurrent.futures executor.

    Workers read their own windows, so the paths must be reachable from every
    worker (shared storage, or GDAL's /vsis3/ and friends).
    """

    def __init__(self, scheduler_address: str, *, workers: int) -> None:
        from distributed import Client

        self._client = Client(scheduler_address, set_as_default=False)
        self._executor = self._client.get_executor(pure=False)
        self.workers = workers
        self.threads_per_process = 1

    def submit(self, fn: Any, /, *args: Any) -> concurrent.futures.Future:
        return self._executor.submit(fn, *args)

    def footprint_bytes(self) -> int:
        # The cluster's workers belong to the cluster, not to this session.
        return 0

    def notice_dead_workers(self) -> None:
        # The scheduler notices lost workers and reschedules their tasks.
        return None

    def recover(self) -> None:
        # The scheduler reschedules tasks of lost workers by itself.
        return None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False)
        self._client.close()
