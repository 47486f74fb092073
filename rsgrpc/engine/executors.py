"""Where tiles run: a warm pool of local processes lent to a session, or a Dask cluster.

Both give `submit(fn, *args) -> concurrent.futures.Future`, so a job has one
code path whatever runs it. Neither lets a job wait forever: a local pool
notices a worker that died, busy or idle, and starts new workers; a Dask
executor notices that its scheduler is gone; starting and stopping workers
take a bounded time; and local workers exit when the server process is gone.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Protocol

import psutil

from rsgrpc.engine import tracing as engine_tracing
from rsgrpc.engine.errors import WorkerLostError, WorkersUnavailableError
from rsgrpc.engine.kernel_cache import stale_reason
from rsgrpc.engine.raster_io import keep_inputs_open
from rsgrpc.engine.shared_results import can_map, lend_buffers, probe_buffer
from rsgrpc.engine.tiles import CLUSTER_TILE_EDGE, LOCAL_TILE_EDGE
from rsgrpc.engine.worker_heap import (
    IDLE_SECONDS,
    HeapGate,
    idle_for,
    keep_freed_memory,
    run_task,
)

_LOGGER = logging.getLogger(__name__)
# What the pipe that brings results back may hold (see _widen_result_pipe).
_RESULT_PIPE_BYTES = 1 << 20
# How long new workers may take to start (spawn, imports) on a loaded machine.
START_SECONDS = 120.0
# How long stopping workers waits for them to end by themselves before killing them.
STOP_SECONDS = 2.0
# How often a worker checks that the server that started it is still there.
PARENT_POLL_SECONDS = 0.5
# How long connecting to a Dask scheduler, or closing that connection, may take.
DASK_CONNECT_SECONDS = 10.0
# How long a job waits on a Dask cluster without a worker before it fails.
DASK_NO_WORKERS_SECONDS = 10.0
# How long each idle worker of a pool taken back from a session has to answer.
ANSWER_SECONDS = 2.0
# States of a worker that lives but cannot run a task.
_NOT_RUNNING = frozenset(
    (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
)


class Executor(Protocol):
    """What a job needs of whatever runs its tiles."""

    workers: int
    # Cores each worker may use: numba's threads, or tiles run side by side.
    threads_per_process: int
    # The longest tile edge worth planning for: the larger a task's own cost, the longer.
    max_tile_edge: int

    def submit(self, fn: Any, /, *args: Any) -> concurrent.futures.Future: ...

    def footprint_bytes(self, *, max_age: float = 0.0) -> int:
        """Memory the workers hold now; a measurement up to `max_age` seconds old may do."""
        ...

    def notice_dead_workers(self) -> None:
        """Make the futures of lost workers fail now; a job calls it while it waits.

        Raises WorkersUnavailableError when the executor lost what runs its tiles as a
        whole (a Dask scheduler)."""

    def recover(self) -> None: ...

    def shutdown(self) -> None: ...


def _init_worker(
    threads: int, holding: Any, trim_now: Any, lend: Any, server_pid: int, tracing: Any = None
) -> None:
    """Runs once in each new worker: exit when the server is gone; pin numba's
    threads; return large results through shared buffers (`shared_results`); keep
    freed memory, open inputs and free buffers for the next tile, and give them
    back between jobs (`worker_heap`); where `rsgrpc warm` filled the kernel cache
    for this machine, load every kernel it holds and run a small tile, so that a
    tool's first call loads nothing (with an empty or stale cache, kernels compile
    on first use instead, as they would here); compile the fused kernel of a
    band-calc expression seen again in the background (`rsgrpc_kernels.fused_store`)."""
    _exit_with_server(server_pid)
    if tracing is not None:  # the server traces: so does the worker (`engine.tracing`)
        engine_tracing.start_in_worker(tracing)
    import numba
    from rsgrpc_kernels.bandcalc import compile_in_background
    from rsgrpc_kernels.warm import load_cached_kernels

    from rsgrpc.engine.gdal_threads import touch_gdal

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    compile_in_background(lambda: idle_for(IDLE_SECONDS))
    touch_gdal()
    cache = os.environ.get("NUMBA_CACHE_DIR")
    if cache and stale_reason(Path(cache)) is None:
        loaded = load_cached_kernels()
        _LOGGER.debug("worker %d loaded %d cached kernels", os.getpid(), loaded)
        _prepare_for_jobs()
    lender = lend_buffers(lend)
    close_inputs = keep_inputs_open()

    def give_back() -> None:
        close_inputs()
        lender.close_free()

    keep_freed_memory(holding, trim_now, give_back)


_dask_worker_lock = threading.Lock()
_dask_worker_ready = False
_dask_thread = threading.local()


def run_on_dask_worker(fn: Any, /, *args: Any) -> Any:
    """Runs a tile on a Dask worker, which at its first tile is set up as a local worker
    is when it starts (`_init_worker`): freed memory kept while tiles come and given back
    once idle (`worker_heap`), the inputs kept open in the thread that runs the tiles,
    the fused kernel of a band-calc expression seen again compiled while idle, and, in
    each thread that runs tiles, numba on that one thread (a Dask worker has a thread a
    core) and GDAL set up. Without the fused kernels, a Dask worker ran every expression
    as its block program: on the 10980² NDVI of `benchmarks/bench_dask.py`, twice the
    kernel time of a local worker's. An input in object storage is not opened again (its
    header fetched anew) at every tile. The kernels a worker compiles go to numba's cache
    folder: the one of its `NUMBA_CACHE_DIR`, which deployments set to rsgrpc's."""
    global _dask_worker_ready
    if not getattr(_dask_thread, "ready", False):
        import numba

        from rsgrpc.engine.gdal_threads import touch_gdal

        numba.set_num_threads(1)
        touch_gdal()
        _dask_thread.ready = True
        with _dask_worker_lock:
            if not _dask_worker_ready:
                from rsgrpc_kernels.bandcalc import compile_in_background

                compile_in_background(lambda: idle_for(IDLE_SECONDS))
                close_inputs = keep_inputs_open()
                keep_freed_memory(
                    multiprocessing.Semaphore(0), multiprocessing.RawValue("b", 0), close_inputs
                )
                _dask_worker_ready = True
    return run_task(fn, *args)


def _prepare_for_jobs() -> None:
    """Import the modules of the tools' tasks, and evaluate and encode a tile as a band
    calc job does, so that what a worker does only the first time (imports, numba's first
    dispatch of a kernel, the threads a large tile is split among, the encoder) is done
    before its first job."""
    import importlib

    import numba
    import numpy as np
    from rsgrpc_kernels.bandcalc import PIXELS_PER_THREAD, evaluate
    from rsgrpc_kernels.expression import parse_expression

    from rsgrpc.engine.raster_io import DEFAULT_PROFILE, encode_output_tile
    from rsgrpc.engine.tiles import Tile

    for module in ("engine.band_calc", "engine.sieve", "engine.halo_job", "tools"):
        importlib.import_module(f"rsgrpc.{module}")
    # Two inputs, enough pixels for every thread.
    tile = np.arange(numba.get_num_threads() * PIXELS_PER_THREAD, dtype=np.uint16)
    tile = tile.reshape(-1, 256)
    ratio = parse_expression("(a - b) / (a + b)", ["a", "b"])
    out, _, _ = evaluate(ratio, [tile, tile + 1], [0, 0])
    encode_output_tile(out[:16, :16], Tile(0, 0, 16, 16), DEFAULT_PROFILE)


def _exit_with_server(server_pid: int) -> None:
    """End this worker soon after the server that started it ends, however it ends.

    A parent-death signal (PR_SET_PDEATHSIG) would fire when the server's thread
    that started the worker ends, and pools start workers from whichever thread
    submits; so a thread watches the worker's parent instead: once the server is
    gone, the worker is some other process's child. Its end also closes its copy of
    the pipe that keeps multiprocessing's resource tracker alive, which then
    exits too, once the server and every worker are gone.
    """

    def watch() -> None:
        while os.getppid() == server_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="server-watch", daemon=True).start()


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


def _warm_up() -> tuple[int, tuple[int, int] | None]:
    """Runs in a new worker: its pid, and where to find a buffer it lends results through."""
    # Long enough that another worker that is ready takes the next one.
    time.sleep(0.05)
    return os.getpid(), probe_buffer()


def _answer() -> int:
    """Runs in a worker: its pid, after long enough that every idle worker takes one."""
    time.sleep(0.05)
    return os.getpid()


class LocalProcessExecutor:
    """A warm pool of spawned worker processes, held by one session at a time (the
    server's `worker_stock` lends it and takes it back).

    Processes are spawned (never forked: the parent runs gRPC's threads). A
    worker that dies while no task runs is replaced before the next task, which
    never sees it; one that dies while tasks run breaks the pool and fails those
    tasks, and `recover` then starts new workers for the next job.
    """

    max_tile_edge = LOCAL_TILE_EDGE

    def __init__(self, processes: int, *, threads_per_process: int) -> None:
        self.workers = processes
        self.threads_per_process = threads_per_process
        # Lock order: _lock, then _running_lock.
        self._lock = threading.Lock()
        # Tasks submitted and not yet ended, of this pool or a broken one.
        self._running_lock = threading.Lock()
        self._running = 0
        self._closed = False
        # The last footprint measured: (monotonic time, bytes).
        self._footprint: tuple[float, int] | None = None
        self._pool = self._start()

    def _start(self) -> concurrent.futures.ProcessPoolExecutor:
        """A new pool whose workers have all started, or WorkersUnavailableError."""
        context = multiprocessing.get_context("spawn")
        heap = HeapGate(context)
        lend = context.RawValue("b", 0)
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(
                self.threads_per_process,
                heap.holding,
                heap.trim_now,
                lend,
                os.getpid(),
                engine_tracing.worker_settings,
            ),
        )
        _widen_result_pipe(pool)
        # Start every worker now, so the first job does not pay for it: until each one
        # has answered (a worker whose start ends first takes the others' turns too).
        deadline = time.monotonic() + START_SECONDS
        answered: dict[int, tuple[int, int] | None] = {}
        try:
            while len(answered) < self.workers:
                futures = [pool.submit(_warm_up) for _ in range(self.workers - len(answered))]
                left = max(0.0, deadline - time.monotonic())
                _, starting = concurrent.futures.wait(futures, timeout=left)
                if starting:
                    raise WorkersUnavailableError(
                        f"the session's {self.workers} worker processes did not start "
                        f"within {START_SECONDS:.0f} s"
                    )
                answered.update(future.result() for future in futures)
            probes = list(answered.values())
        except BrokenProcessPool:
            codes = [p.exitcode for p in (pool._processes or {}).values()]
            _LOGGER.error("a new worker process died as it started (exit codes %s)", codes)
            _stop_pool(pool)
            raise WorkersUnavailableError(
                "a worker process of the session died as it started; see the server log"
            ) from None
        except BaseException:
            _stop_pool(pool)
            raise
        self._heap = heap
        lend.value = all(can_map(probe) for probe in probes)
        if not lend.value:
            _LOGGER.warning("workers cannot share result buffers here; results use the pipe")
        return pool

    def _replace_if_died_idle(self) -> None:
        """Start new workers if one died while no task ran. Called under _lock."""
        with self._running_lock:
            idle = self._running == 0
        if idle and not _alive(self._pool):
            _LOGGER.warning(
                "a worker process died while its session was idle; starting %d new workers",
                self.workers,
            )
            self._replace()

    def _replace(self) -> None:
        """Stop the pool's workers and start new ones. Called under _lock."""
        _stop_pool(self._pool)
        self._pool = self._start()

    def submit(self, fn: Any, /, *args: Any) -> concurrent.futures.Future:
        # A pool broken while tasks run raises BrokenProcessPool here or from the
        # future; the job's loop handles both the same way (recover, fail clearly).
        with self._lock:
            if self._closed:
                raise WorkersUnavailableError("the session's workers have been stopped")
            self._replace_if_died_idle()
            if engine_tracing.carry is not None:  # tracing: the task's span, in its worker
                fn, args = engine_tracing.carry(fn, args)
            future = self._pool.submit(run_task, fn, *args)
            with self._running_lock:
                self._running += 1
        future.add_done_callback(self._task_ended)
        return future

    def _task_ended(self, _future: concurrent.futures.Future) -> None:
        # Called by the pool's thread, or by whoever cancels the future.
        with self._running_lock:
            self._running -= 1

    @property
    def busy_workers(self) -> int:
        """Workers running a task now: the tasks submitted and not ended, at most one a
        worker (the pool hands a queued task to the first worker free)."""
        with self._running_lock:
            return min(self._running, self.workers)

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in list((self._pool._processes or {}).values())]

    def footprint_bytes(self, *, max_age: float = 0.0) -> int:
        """Memory the workers hold, each page once: the largest worker's resident set
        and every other worker's own pages. A measurement taken at most `max_age`
        seconds ago is given again, without asking the workers for anything.

        The workers run the same code, so what one maps from shared libraries the
        others map too, and it is counted once, in full. Proportional set size
        would split those pages with every process that maps them, the server and
        any other Python on the machine, and undercount what the workers alone
        hold: with two workers that had compiled a kernel, 294 MiB of PSS against
        312 MiB of physical pages. When no task runs, the workers first give back
        the memory they kept for their next tile, so that it is not counted as theirs
        (and a worker that died meanwhile is replaced first, so that it is not waited for).
        """
        with self._lock:
            last = self._footprint
            if last is not None and time.monotonic() - last[0] <= max_age:
                return last[1]
            if not self._closed:
                self._replace_if_died_idle()
            with self._running_lock:
                idle = self._running == 0
            heap = self._heap
        if idle:
            heap.give_back()
        held = [memory for pid in self.pids() if (memory := _resident_and_own(pid))]
        held.sort()
        footprint = held[-1][0] + sum(own for _, own in held[:-1]) if held else 0
        with self._lock:
            self._footprint = (time.monotonic(), footprint)
        return footprint

    def idle_and_alive(self) -> bool:
        """Whether the pool is open and not broken, no task runs, and every worker
        lives and is not stopped (a frozen worker would hang the next tile)."""
        with self._lock:
            with self._running_lock:
                idle = self._running == 0
            if self._closed or not idle or not _alive(self._pool):
                return False
            processes = list((self._pool._processes or {}).values())
        for process in processes:
            try:
                status = psutil.Process(process.pid).status()
            except psutil.Error:
                return False
            if status in _NOT_RUNNING:
                return False
        return True

    def prepare_for_reuse(self) -> bool:
        """Make the workers ready for another session; whether they are.

        They are when the pool is `idle_and_alive`, every worker answers within
        `ANSWER_SECONDS`, and each has given back what it kept for its last job:
        freed memory, open inputs and free result buffers (`worker_heap`). Nothing
        else of a job stays in a worker: tasks carry their paths and settings.
        """
        if not self.idle_and_alive():
            return False
        with self._lock:
            pool, heap = self._pool, self._heap
            expected = {p.pid for p in (pool._processes or {}).values()}
        try:
            answers = [pool.submit(_answer) for _ in range(self.workers)]
        except (BrokenProcessPool, RuntimeError):
            return False
        _, late = concurrent.futures.wait(answers, timeout=ANSWER_SECONDS)
        if late:
            return False
        try:
            # One answer from each worker: a worker that answers twice stood in for one
            # that could not take its task.
            if {answer.result() for answer in answers} != expected:
                return False
        except BrokenProcessPool:
            return False
        return heap.give_back()

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
        _kill(processes)
        pool._result_queue._writer.close()

    def recover(self) -> None:
        """Replace a broken pool with a new one (WorkersUnavailableError if the new one
        cannot start; the next job tries again)."""
        with self._lock:
            if self._closed or _alive(self._pool):
                return
            _LOGGER.warning("worker pool broken; starting %d new workers", self.workers)
            self._replace()

    def shutdown(self) -> None:
        """Stop the workers: those still busy after `STOP_SECONDS` are killed."""
        with self._lock:
            self._closed = True
            pool = self._pool
        _stop_pool(pool)


def _resident_and_own(pid: int) -> tuple[int, int] | None:
    """A process's resident set and its own pages (anonymous and shared-memory pages:
    what it made, not what it maps from files), in bytes; None once it is gone.

    Read from /proc/<pid>/status where there is one: its counters are kept by the kernel,
    where the unique set size (`memory_full_info().uss`) walks every page table, 5 ms a
    worker, on the planning of each job. They agree within a MiB on a worker."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            fields = dict(line.split(b":", 1) for line in status if b":" in line)
        kib = {name: int(fields[name].split()[0]) for name in (b"VmRSS", b"RssAnon", b"RssShmem")}
        return kib[b"VmRSS"] << 10, (kib[b"RssAnon"] + kib[b"RssShmem"]) << 10
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        info = psutil.Process(pid).memory_full_info()
    except (psutil.Error, OSError):
        return None
    return info.rss, getattr(info, "uss", info.rss)


def _alive(pool: concurrent.futures.ProcessPoolExecutor) -> bool:
    """Whether a pool can run tasks: not broken, and every worker running. A worker that
    died is seen at once, before the pool's own thread has noticed and marked the pool
    broken (until then its exit code can still read as None), so that a task is not
    handed to a pool about to break."""
    processes = list((pool._processes or {}).values())
    return not getattr(pool, "_broken", False) and all(
        p.exitcode is None and not _dead(p.pid) for p in processes
    )


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return True


def _kill(processes: list) -> None:
    for process in processes:
        if process.exitcode is None:
            process.kill()
    for process in processes:
        process.join(STOP_SECONDS)


def _stop_pool(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Stop a pool within a few seconds, whatever state it is in: idle workers are
    asked to exit, those still busy after `STOP_SECONDS` are killed, and the pool's
    manager thread is unblocked if it waits for a result that cannot come."""
    processes = list((pool._processes or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + STOP_SECONDS
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    stuck = [p.pid for p in processes if p.exitcode is None]
    if stuck:
        _LOGGER.warning("worker processes %s did not stop in time; killing them", stuck)
        _kill(processes)
    manager = pool._executor_manager_thread
    if manager is not None:
        manager.join(STOP_SECONDS)
        if manager.is_alive():
            # Waiting for the rest of a result from a worker that died sending it.
            pool._result_queue._writer.close()
            manager.join(STOP_SECONDS)


class DaskExecutor:
    """Tiles on a Dask distributed cluster, each a task of the session's Dask client.

    Workers read their own windows, so every worker must see every data root: where
    the server has it, or where the worker's RSGRPC_WORKER_DATA_ROOTS puts the root's
    name (`DataPath.local_root`; checked as a session starts, `root_probe`). When the scheduler
    goes away, Dask's client cancels every future it had and tries to reconnect
    for a while: tasks fail with WorkersUnavailableError at once (never waiting for a
    reconnection), and once the client has given up, the next task connects anew.

    Results come from the workers directly, never through the scheduler: the client
    is made with `direct_to_workers=True`, so that a finished task's result is
    gathered from the worker that holds it (the scheduler only says which worker
    that is). Without it, Dask's client (and so its `get_executor()` futures, which
    gather as the client does) asks the scheduler to gather: the scheduler fetched
    every encoded tile from its worker and sent it on to the server, about 6 ms per
    MB on its one event loop, and a job took 1.6 to 1.9 times the wall time of local
    workers. The server must reach the workers' addresses; results it cannot fetch
    from a worker, Dask's client asks the scheduler for. The other way, a task's
    arguments travel in its message through the scheduler; those of more than
    `DIRECT_ARGUMENT_BYTES` pickled (the sieve's seam summaries, sent to the one task
    that decides the seams) are sent to a worker directly first (`scatter`), and the
    task names them.

    At most `workers` (the session's `process_count`) tasks of the session are on the
    cluster at once, as a local pool runs at most that many: a job keeps more tiles in
    flight than it has workers, and Dask would run them all at once on a larger
    cluster. The others wait here, and each is sent when one of the session's tasks
    ends. The scheduler runs again elsewhere the tasks of a worker lost while it ran
    them, and those whose results were lost with it before the server had them (these
    run beside the session's others: for that while, more than `workers` at once).
    """

    # Each task costs the scheduler, the server and the worker their messages: fewer,
    # larger tiles (`CLUSTER_TILE_EDGE`).
    max_tile_edge = CLUSTER_TILE_EDGE

    def __init__(self, scheduler_address: str, *, workers: int) -> None:
        self.workers = workers
        self.threads_per_process = 1
        self._address = scheduler_address
        self._lock = threading.Lock()
        self._closed = False
        # The session's tasks on the cluster, not yet ended; and the tiles waiting for
        # a place, each (fn, args, the future handed to the job).
        self._running: set[Any] = set()
        self._waiting: list[tuple[Any, tuple[Any, ...], concurrent.futures.Future]] = []
        # Gathers the results of ended tasks (blocking calls), so that Dask's callback
        # thread, which ends tasks and sends the next ones, never waits for bytes.
        self._results = concurrent.futures.ThreadPoolExecutor(
            max(1, workers), thread_name_prefix="dask-results"
        )
        # Since when the cluster has been seen without a worker while a job waited.
        self._no_workers_since: float | None = None
        self._client = self._connect()

    def _connect(self) -> Any:
        from distributed import Client

        try:
            return Client(
                self._address,
                set_as_default=False,
                timeout=DASK_CONNECT_SECONDS,
                direct_to_workers=True,
            )
        except (OSError, TimeoutError) as exc:
            _LOGGER.warning("cannot connect to the Dask scheduler at %s: %s", self._address, exc)
            raise WorkersUnavailableError(
                f"the Dask scheduler did not answer within {DASK_CONNECT_SECONDS:.0f} s"
            ) from None

    def _connected_client(self) -> Any:
        """The connected client, or WorkersUnavailableError."""
        with self._lock:
            return self._connected_client_locked()

    def _connected_client_locked(self) -> Any:
        """`_connected_client` under _lock."""
        if self._closed:
            raise WorkersUnavailableError("the session's Dask client has been closed")
        status = self._client.status
        if status == "running":
            return self._client
        if status in ("connecting", "newly-created"):
            raise WorkersUnavailableError(
                "the connection to the Dask scheduler was lost; it is being re-established"
            )
        _LOGGER.warning("the Dask client is %s; connecting to %s anew", status, self._address)
        _close_client(self._client)
        # The old client's tasks ended with it (cancelled as its scheduler went away).
        self._running.clear()
        self._client = self._connect()
        return self._client

    # Arguments larger than this, pickled, go to a worker directly rather than through
    # the scheduler in their task's message.
    DIRECT_ARGUMENT_BYTES = 16 << 10

    def submit(self, fn: Any, /, *args: Any) -> concurrent.futures.Future:
        # A job that submits is not waiting for a worker (`notice_dead_workers`).
        self._no_workers_since = None
        # Tracing: the task's span, in a worker that sets tracing up from the task.
        fn, args = engine_tracing.carry_to_any_worker(fn, args)
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.add_done_callback(_notify_if_cancelled)
        client = self._connected_client()
        args = tuple(self._to_a_worker(client, arg) for arg in args)
        with self._lock:
            self._connected_client_locked()
            self._waiting.append((fn, args, future))
            self._send_waiting()
        return future

    def _to_a_worker(self, client: Any, arg: Any) -> Any:
        """`arg`, or, when it pickles to more than DIRECT_ARGUMENT_BYTES, a Dask future of
        it sent to a worker directly (its task then runs there, or fetches it from there)."""
        import pickle

        if arg is None or isinstance(arg, (int, float, bool)):
            return arg
        try:
            size = len(pickle.dumps(arg, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception:  # what pickle cannot take, Dask sends as it can
            return arg
        if size <= self.DIRECT_ARGUMENT_BYTES:
            return arg
        try:
            return client.scatter(arg, direct=True, hash=False)
        except (OSError, TimeoutError) as exc:
            raise WorkersUnavailableError(
                f"cannot send a task's {size} bytes of arguments to a Dask worker: {exc}"
            ) from None

    def _send_waiting(self) -> None:
        """Send waiting tiles to the cluster while the session has fewer than `workers`
        tasks there. Called under _lock."""
        while self._waiting and len(self._running) < self.workers:
            if self._closed or self._client.status != "running":
                return  # they wait: the job sees the lost scheduler and cancels them
            fn, args, future = self._waiting.pop(0)
            if future.cancelled():
                continue
            task = self._client.submit(run_on_dask_worker, fn, *args, pure=False)
            self._running.add(task)
            future.add_done_callback(lambda done, task=task: self._cancel_task(done, task))
            # The callback holds the arguments (and the futures of those sent to a worker)
            # until the task ends.
            task.add_done_callback(
                lambda task, future=future, args=args: self._task_ended(task, future)
            )

    @staticmethod
    def _cancel_task(future: concurrent.futures.Future, task: Any) -> None:
        # The job cancels the futures of the tiles it no longer wants; a task that the
        # cluster cancelled (its scheduler gone) is not cancelled again.
        if future.cancelled() and task.status != "cancelled":
            task.cancel()

    def _task_ended(self, task: Any, future: concurrent.futures.Future) -> None:
        """In Dask's callback thread: the task finished, failed or was cancelled; its
        place goes to the next tile, and its result is gathered off this thread."""
        with self._lock:
            self._running.discard(task)
            self._send_waiting()
        try:
            self._results.submit(self._give_result, task, future)
        except RuntimeError:  # shut down
            self._give_result(task, future)

    @staticmethod
    def _give_result(task: Any, future: concurrent.futures.Future) -> None:
        """Set the job's future as the task ended: its result, gathered from the worker
        that holds it (`direct_to_workers`), its exception, or cancelled. A result that
        cannot be gathered (the scheduler or the worker gone meanwhile) fails the tile
        with WorkersUnavailableError: the task's own exceptions are only those of a task
        in error. A task the scheduler gave up on, because the workers running it died
        more often than its `allowed-failures`, fails with WorkerLostError, as a local
        worker's death does."""
        if future.done():
            return
        try:
            value = task.result()
        except BaseException as exc:  # the task's own exception, or Dask's cancellation
            if task.status == "cancelled" or not isinstance(exc, Exception):
                future.cancel()
                return
            outcome = (future.set_exception, _tile_error(task.status, exc))
        else:
            outcome = (future.set_result, value)
        try:
            outcome[0](outcome[1])
        except concurrent.futures.InvalidStateError:
            pass  # cancelled by the job meanwhile

    def footprint_bytes(self, *, max_age: float = 0.0) -> int:
        # The cluster's workers belong to the cluster, not to this session.
        return 0

    def notice_dead_workers(self) -> None:
        # The scheduler notices lost workers and reschedules their tasks; losing the
        # scheduler itself cancels every future of the client. A cluster left without
        # workers would keep the tasks forever: after DASK_NO_WORKERS_SECONDS of it, the
        # job fails.
        with self._lock:
            status = self._client.status
            # The client's view of the cluster, refreshed every 2 s by its own loop.
            identity = getattr(self._client, "_scheduler_identity", None) or {}
        if status != "running":
            _LOGGER.warning("lost the Dask scheduler at %s (client %s)", self._address, status)
            raise WorkersUnavailableError(
                "the connection to the Dask scheduler was lost during the job"
            )
        if identity.get("n_workers", 1) > 0:
            self._no_workers_since = None
            return
        now = time.monotonic()
        if self._no_workers_since is None:
            self._no_workers_since = now
        elif now - self._no_workers_since >= DASK_NO_WORKERS_SECONDS:
            _LOGGER.warning("the Dask cluster at %s has no worker", self._address)
            raise WorkersUnavailableError(
                f"the Dask cluster has had no worker for {DASK_NO_WORKERS_SECONDS:.0f} s"
            )

    def recover(self) -> None:
        # The scheduler reschedules tasks of lost workers by itself.
        return None

    def run_on_every_worker(self, fn: Any, /, *args: Any) -> dict[str, Any]:
        """`fn(*args)` on each worker of the cluster now, by its address; raises
        WorkersUnavailableError if they do not all answer within DASK_CONNECT_SECONDS."""
        self._connected_client()  # connected, or WorkersUnavailableError
        try:
            return self._client.run(fn, *args, callback_timeout=DASK_CONNECT_SECONDS)
        except (OSError, TimeoutError) as exc:
            raise WorkersUnavailableError(
                f"the Dask workers did not answer within {DASK_CONNECT_SECONDS:.0f} s: {exc}"
            ) from None

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            waiting, self._waiting = self._waiting, []
            _close_client(self._client)
        for _, _, future in waiting:
            future.cancel()
        self._results.shutdown(wait=False, cancel_futures=True)


def _notify_if_cancelled(future: concurrent.futures.Future) -> None:
    """A future cancelled before it ran is done for `concurrent.futures.wait` only once
    notified, which an executor does as it would have run it. A DaskExecutor runs none
    of the futures it hands out: each is notified as it is cancelled, by the job (which
    then waits for its tiles to end) or by the cluster. Un-notified, a job's tiles on the
    cluster kept it waiting `DRAIN_SECONDS` after it was cancelled or failed."""
    if future.cancelled():
        future.set_running_or_notify_cancel()


def _tile_error(status: str, exc: Exception) -> Exception:
    """What the job sees of a Dask task of `status` whose result() raised `exc`."""
    if status != "error":
        _LOGGER.warning("cannot gather a tile's result from the Dask cluster: %s", exc)
        return WorkersUnavailableError(
            "the connection to the Dask scheduler was lost while gathering a tile's result"
        )
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        _LOGGER.warning("the Dask cluster gave up on a tile: %s", exc)
        return WorkerLostError(
            "the Dask workers running a tile of this operation died (killed, or out of "
            "memory) as often as the cluster allows"
        )
    return exc


def _close_client(client: Any) -> None:
    try:
        client.close(timeout=DASK_CONNECT_SECONDS)
    except Exception:  # closing a client whose scheduler is gone may time out
        _LOGGER.warning("closing the Dask client failed", exc_info=True)
