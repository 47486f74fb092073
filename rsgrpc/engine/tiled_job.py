"""The loop every tiled job shares: submit tiles, bound what is in flight, stop on cancel."""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from rsgrpc.engine.errors import (
    CancelledError,
    RsgrpcError,
    WorkerLostError,
    WorkersUnavailableError,
)
from rsgrpc.engine.executors import Executor
from rsgrpc.engine.operations import Operation
from rsgrpc.engine.tiles import Tile

_LOGGER = logging.getLogger(__name__)
# How often a job that waits for tiles looks at its cancel flag and its workers.
_POLL_SECONDS = 0.1
# How long a job that stops early waits for its running tiles to end.
DRAIN_SECONDS = 60.0
_END = object()


def run_tiles(
    executor: Executor,
    operation: Operation,
    tiles: Iterable[Tile],
    task: Callable[[Tile], tuple[Callable[..., Any], tuple[Any, ...]]],
    consume: Callable[[Any], None],
    *,
    in_flight: int,
) -> None:
    """Run `task(tile)` (a function and its arguments) on the executor for every tile.

    At most `in_flight` tiles are submitted or waiting; each result goes to
    `consume` in the job's thread as it arrives. On cancel, tiles not yet
    started are dropped and CancelledError is raised once the running ones
    end. A dead worker raises WorkerLostError after the pool is rebuilt; a lost
    Dask scheduler raises WorkersUnavailableError. No wait is unbounded: while nothing
    ends, the executor is asked every `_POLL_SECONDS` whether its workers live.
    """
    pending: set[concurrent.futures.Future] = set()
    remaining = iter(tiles)
    exhausted = False
    try:
        while True:
            while (
                not exhausted and len(pending) < in_flight and not operation.cancel_event.is_set()
            ):
                tile = next(remaining, _END)
                if tile is _END:
                    exhausted = True
                    break
                fn, args = task(tile)
                pending.add(executor.submit(fn, *args))
            if operation.cancel_event.is_set():
                raise CancelledError("the operation was cancelled")
            if not pending:
                return
            done, pending = concurrent.futures.wait(
                pending, timeout=_POLL_SECONDS, return_when=concurrent.futures.FIRST_COMPLETED
            )
            if not done:
                executor.notice_dead_workers()
            for future in done:
                consume(_result(future, executor, operation))
    except BrokenProcessPool as exc:
        executor.recover()
        raise WorkerLostError(
            "a worker process died while running this operation (killed, or out of memory); "
            "the session's workers were restarted"
        ) from exc
    finally:
        _drain(executor, pending)


def _result(future: concurrent.futures.Future, executor: Executor, operation: Operation) -> Any:
    try:
        return future.result()
    except concurrent.futures.CancelledError:
        # Only the job cancels its tiles, and only once it stops: this one was
        # cancelled by the session closing, or by a cluster that lost it.
        if operation.cancel_event.is_set():
            raise CancelledError("the operation was cancelled") from None
        executor.notice_dead_workers()
        raise WorkersUnavailableError(
            "a tile of this operation was dropped by its workers"
        ) from None


def _drain(executor: Executor, pending: set[concurrent.futures.Future]) -> None:
    """Cancel the tiles not started; wait for the running ones while their workers
    live, at most `DRAIN_SECONDS` (past that, their results are dropped as they come)."""
    for future in pending:
        future.cancel()
    deadline = time.monotonic() + DRAIN_SECONDS
    while pending:
        _, pending = concurrent.futures.wait(pending, timeout=_POLL_SECONDS)
        if not pending:
            return
        try:
            executor.notice_dead_workers()
        except RsgrpcError:
            return  # what runs the tiles is gone: they will not end
        if time.monotonic() >= deadline:
            _LOGGER.warning(
                "%d tiles still running %.0f s after their job stopped", len(pending), DRAIN_SECONDS
            )
            return
