"""The server's warm workers: started local pools that no session holds, lent to new sessions.

Starting a session's pool (spawn, imports, a first task in each worker) took about
1 s, on the request path of CreateSession. So the server keeps pools started
ahead, keyed by what a pool is fixed to (`PoolShape`), lends one to a new session
of that shape, and takes it back when the session closes or changes its number
of processes. A pool comes back only when `prepare_for_reuse` finds it clean:
every worker alive, not stopped and answering, no task running, and kept memory,
open inputs and free result buffers given back; otherwise it is stopped. A spare
pool whose worker died or stopped meanwhile is stopped when it would be lent, never
lent.

Spare processes count against the server's process total together with the
processes lent to sessions: the stock keeps at most `max_processes` minus those
lent, and stops its oldest spares (waiting for one still starting) before a session
starts processes of its own.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass

from rsgrpc.engine.executors import START_SECONDS, STOP_SECONDS, LocalProcessExecutor

_LOGGER = logging.getLogger(__name__)
# How long closing the stock waits for spares still starting; they stop once started.
CLOSE_SECONDS = 3.0


@dataclass(frozen=True)
class PoolShape:
    """What a local pool is fixed to when it starts."""

    processes: int
    threads_per_process: int


@dataclass(frozen=True)
class _Spare:
    shape: PoolShape
    # Done at once for a pool given back; when started for one started ahead.
    started: concurrent.futures.Future[LocalProcessExecutor]


class WorkerStock:
    """Spare local pools, lent to sessions and taken back, within a process total.

    Whoever removes a spare from the stock owns it: it lends it or stops it.
    """

    def __init__(self, max_processes: int) -> None:
        self.max_processes = max_processes
        self._lock = threading.Lock()
        self._spares: list[_Spare] = []  # oldest first
        self._lent = 0  # processes of the pools that sessions hold
        self._closed = False

    @property
    def spare_processes(self) -> int:
        with self._lock:
            return sum(spare.shape.processes for spare in self._spares)

    def spare_pids(self) -> list[int]:
        """The processes of the started spares."""
        with self._lock:
            started = [s.started for s in self._spares if s.started.done()]
        return [
            pid
            for future in started
            if future.exception() is None
            for pid in future.result().pids()
        ]

    def lend(self, shape: PoolShape) -> LocalProcessExecutor:
        """A started pool of `shape`: a healthy spare, else a new one (started here,
        after spares that would not leave room for it are stopped)."""
        while True:
            with self._lock:
                spare = next((s for s in self._spares if s.shape == shape), None)
                if spare is not None:
                    self._spares.remove(spare)
                else:
                    extras = self._make_room(shape.processes)
                self._lent += shape.processes
            if spare is None:
                break
            executor = _started(spare)
            if executor is not None and executor.idle_and_alive():
                _LOGGER.info("lending %d warm worker processes", shape.processes)
                return executor
            _LOGGER.warning("a spare pool's workers cannot be lent; stopping them")
            self._give_up(spare, wait=0.0)
            with self._lock:
                self._lent -= shape.processes
        for extra in extras:
            self._give_up(extra)
        try:
            return LocalProcessExecutor(
                shape.processes, threads_per_process=shape.threads_per_process
            )
        except BaseException:
            with self._lock:
                self._lent -= shape.processes
            raise

    def take_back(self, executor: LocalProcessExecutor) -> None:
        """Keep a session's pool for the next session if it is clean and fits; else stop it."""
        shape = PoolShape(executor.workers, executor.threads_per_process)
        reusable = executor.prepare_for_reuse()
        done: concurrent.futures.Future[LocalProcessExecutor] = concurrent.futures.Future()
        done.set_result(executor)
        spare = _Spare(shape, done)
        with self._lock:
            self._lent -= shape.processes
            kept = reusable and not self._closed
            if kept:
                self._spares.append(spare)
            extras = self._make_room(0)
        for extra in extras if kept else [*extras, spare]:
            self._give_up(extra)

    def start_spare(
        self, shape: PoolShape
    ) -> concurrent.futures.Future[LocalProcessExecutor] | None:
        """Start a pool of `shape` in the background and keep it, if the total allows;
        returns what is done once it has started (or failed to), None if not started."""
        spare = _Spare(shape, concurrent.futures.Future())
        with self._lock:
            if self._closed or self._used() + shape.processes > self.max_processes:
                return None
            self._spares.append(spare)

        def start() -> None:
            try:
                executor = LocalProcessExecutor(
                    shape.processes, threads_per_process=shape.threads_per_process
                )
            except Exception as exc:
                _LOGGER.warning("starting spare worker processes failed: %s", exc)
                spare.started.set_exception(exc)
                with self._lock:
                    if spare in self._spares:
                        self._spares.remove(spare)
                return
            spare.started.set_result(executor)
            _LOGGER.info("%d spare worker processes started", shape.processes)

        threading.Thread(target=start, name="spare-workers", daemon=True).start()
        return spare.started

    def close(self) -> None:
        """Stop every spare; one still starting is waited for a little, then stops
        once started."""
        with self._lock:
            self._closed = True
            spares, self._spares = self._spares, []
        deadline = time.monotonic() + CLOSE_SECONDS
        for spare in spares:
            self._give_up(spare, wait=max(0.0, deadline - time.monotonic()))

    def _used(self) -> int:
        """Processes lent and spare. Called under _lock."""
        return self._lent + sum(spare.shape.processes for spare in self._spares)

    def _make_room(self, processes: int) -> list[_Spare]:
        """Remove the oldest spares until `processes` more fit in the total; the caller
        stops them. Called under _lock."""
        removed = []
        while self._spares and self._used() + processes > self.max_processes:
            removed.append(self._spares.pop(0))
        return removed

    def _give_up(self, spare: _Spare, wait: float = START_SECONDS + STOP_SECONDS) -> None:
        """Stop a spare's workers: at once if started, else once started (waiting up to
        `wait` for that, so that a session starts its own only once they are gone)."""
        try:
            executor = spare.started.result(wait)
        except concurrent.futures.TimeoutError:
            spare.started.add_done_callback(_stop_started)
            return
        except Exception:  # it failed to start: nothing runs
            return
        executor.shutdown()


def _started(spare: _Spare) -> LocalProcessExecutor | None:
    """The spare's pool once started (a bounded wait), or None if it failed to start or
    is still starting."""
    try:
        return spare.started.result(START_SECONDS + STOP_SECONDS)
    except Exception:
        return None


def _stop_started(started: concurrent.futures.Future[LocalProcessExecutor]) -> None:
    if started.exception() is None:
        started.result().shutdown()
