"""The loop every tiled job shares: submit tiles, bound what is in flight, stop on cancel."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from rsgrpc.engine.errors import CancelledError, WorkerLostError
from rsgrpc.engine.executors import Executor
from rsgrpc.engine.operations import Operation
from rsgrpc.engine.tiles import Tile

# How often a job that waits for tiles looks at its cancel flag.
_POLL_SECONDS = 0.1
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
    end. A dead worker raises WorkerLostError after the pool is rebuilt.
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
                consume(future.result())
    except BrokenProcessPool as exc:
        executor.recover()
        raise WorkerLostError(
            "a worker process died while running this operation (killed, or out of memory); "
            "the session's workers were restarted"
        ) from exc
    finally:
        for future in pending:
            future.cancel()
        concurrent.futures.wait(pending)
