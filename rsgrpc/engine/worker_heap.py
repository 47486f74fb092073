"""A worker's freed memory, open inputs and result buffers: kept while tiles
come, given back between jobs.

A worker allocates and frees the same large arrays for every tile. glibc, left
to itself, hands most of them back to the kernel as soon as they are freed
(blocks above its mmap threshold, and the top of the heap above its trim
threshold), so the next tile faults every page in again: measured on the
10980² sieve benchmark, about 4,300 faults per 1536² tile and a fifth of the
kernel's time. So a worker keeps what it frees (mmap threshold at glibc's
32 MiB ceiling, no automatic trim) and gives it all back with `malloc_trim`
once it has been idle for `IDLE_SECONDS`, or at once when asked. Its open
input files (`raster_io.keep_inputs_open`) and free result buffers
(`shared_results`) are closed at the same moment, before the trim, so that
what they held goes back too.

The tile planner counts the workers' present memory as fixed, so it must not
see kept blocks: before it measures, `HeapGate.give_back` asks the idle
workers to give back now and waits until none holds any. Without glibc (musl,
say) workers allocate as glibc would by default and only close their inputs.

A worker can be killed at any instruction, so the gate shares nothing a dead
worker could leave locked: the count of workers holding memory is a semaphore
(its changes are atomic, no lock is taken to make them) and the request to give
back is a flag the workers poll, not a multiprocessing Event, whose `set`
waits forever for a sleeper that died.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable
from typing import Any

# A worker idle this long gives its freed memory back by itself.
IDLE_SECONDS = 0.2
# How long the planner waits for idle workers to give memory back.
_GIVE_BACK_TIMEOUT_SECONDS = 2.0
_POLL_SECONDS = 0.002
# How often an idle worker looks at the request to give back now.
_ASKED_POLL_SECONDS = 0.005
# mallopt's parameters (malloc.h), and glibc's ceiling for the mmap threshold on 64-bit.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20
_NO_AUTOMATIC_TRIM = 2**31 - 1


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    return libc


class HeapGate:
    """The parent's side: what the workers of one pool share with it."""

    def __init__(self, context: Any) -> None:
        # How many workers hold freed memory, and the parent's request to give it back.
        self.holding = context.Semaphore(0)
        self.trim_now = context.RawValue("b", 0)
        self._lock = threading.Lock()

    def _holders(self) -> int:
        try:
            return self.holding.get_value()
        except NotImplementedError:  # macOS has no sem_getvalue: do not wait
            return 0

    def give_back(self) -> bool:
        """Ask idle workers to give freed memory back; wait until none holds any.
        Returns whether none holds any.

        Call it only when no task runs (a busy worker keeps its memory until its
        task ends); gives up after a while rather than hang the caller (a worker
        that died holding memory never gives it back).
        """
        with self._lock:
            if self._holders() == 0:
                return True
            self.trim_now.value = 1
            try:
                deadline = time.monotonic() + _GIVE_BACK_TIMEOUT_SECONDS
                while self._holders() > 0 and time.monotonic() < deadline:
                    time.sleep(_POLL_SECONDS)
            finally:
                self.trim_now.value = 0
            return self._holders() == 0


class _Keeper:
    """The worker's side: counts running tasks, gives back once idle or when asked."""

    def __init__(
        self, libc: ctypes.CDLL | None, holding: Any, trim_now: Any, release: Callable[[], None]
    ) -> None:
        self._libc = libc
        self._release = release
        self._holding = holding
        self._trim_now = trim_now
        self._changed = threading.Condition()
        self._running = 0
        self._held = False
        self._last_end = 0.0
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _NO_AUTOMATIC_TRIM)
        threading.Thread(target=self._give_back_when_idle, name="heap", daemon=True).start()

    def run(self, fn: Any, args: tuple) -> Any:
        with self._changed:
            self._running += 1
            if not self._held:
                self._held = True
                self._holding.release()
        try:
            return fn(*args)
        finally:
            with self._changed:
                self._running -= 1
                self._last_end = time.monotonic()
                self._changed.notify()

    def _asked_within(self, seconds: float) -> bool:
        """Whether the parent asks for memory back within `seconds`."""
        deadline = time.monotonic() + seconds
        while not self._trim_now.value:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, _ASKED_POLL_SECONDS))
        return True

    def _give_back_when_idle(self) -> None:
        while True:
            with self._changed:
                while self._running or not self._held:
                    self._changed.wait()
                wait = self._last_end + IDLE_SECONDS - time.monotonic()
            asked = self._asked_within(wait)
            with self._changed:
                idle = not self._running and (
                    asked or time.monotonic() >= self._last_end + IDLE_SECONDS
                )
                if idle and self._held:
                    # No task can start meanwhile: run() waits for this lock.
                    self._release()
                    if self._libc is not None:
                        self._libc.malloc_trim(0)
                    self._held = False
                    self._holding.acquire(block=False)  # this worker's own release


_keeper: _Keeper | None = None


def keep_freed_memory(holding: Any, trim_now: Any, release: Callable[[], None]) -> None:
    """Runs once in each new worker, with its pool's `HeapGate` values and what
    else to give back when idle."""
    global _keeper
    _keeper = _Keeper(_glibc(), holding, trim_now, release)


def idle_for(seconds: float) -> bool:
    """Whether this worker has run no task for at least `seconds`."""
    if _keeper is None:
        return True
    with _keeper._changed:
        return not _keeper._running and time.monotonic() >= _keeper._last_end + seconds


def run_task(fn: Any, /, *args: Any) -> Any:
    """Runs in a worker: one task, counted as running while it runs."""
    if _keeper is None:
        return fn(*args)
    return _keeper.run(fn, args)
