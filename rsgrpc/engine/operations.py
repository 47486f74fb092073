"""Long-running operations: their progress, outcome, cancellation and watchers.

Jobs change an operation from their own threads. Who waits for a change
registers a listener (`add_listener`), called from the changing thread after
each change: the server's event loop hands the news to itself with
`loop.call_soon_threadsafe`, so that a waiting client costs no thread. Who counts
what every operation does (the server's metrics) watches the store (`watch`) and
hears each change of progress, finishing included.
"""

from __future__ import annotations

import enum
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeAlias

from rsgrpc.engine.errors import (
    CancelledError,
    FailedPreconditionError,
    NotFoundError,
    ResourceExhaustedError,
    RsgrpcError,
    UnavailableError,
)


class Stage(enum.IntEnum):
    """Where a job is; the values match `OperationMetadata.Stage`."""

    QUEUED = 1
    RUNNING = 3
    FINALIZING = 4
    DONE = 5


@dataclass(frozen=True)
class Progress:
    """A snapshot of an operation's progress."""

    stage: Stage = Stage.QUEUED
    tiles_done: int = 0
    tiles_total: int = 0
    bytes_read: int = 0
    bytes_written: int = 0


# Called with an operation, its progress before a change and after it.
ProgressWatcher: TypeAlias = Callable[["Operation", Progress, Progress], None]


class Operation:
    """One job. Its state changes only through its methods, under its lock.

    `version` grows at each change.
    """

    def __init__(
        self,
        session: str,
        method: str,
        *,
        owner: str,
        watchers: tuple[ProgressWatcher, ...] = (),
    ) -> None:
        self.name = f"operations/{uuid.uuid4().hex}"
        self.session = session
        self.method = method
        self.owner = owner  # the identity that owns its session
        self.create_time = time.time()
        self.start_monotonic = time.monotonic()
        self.end_time: float | None = None
        self.cancel_event = threading.Event()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._watchers = watchers
        self.version = 0
        self.progress = Progress()
        self.result: Any = None
        self.error: RsgrpcError | None = None

    @property
    def done(self) -> bool:
        return self.progress.stage is Stage.DONE

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start_monotonic

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every change from now on, in the thread that made it.

        It must be quick and must not raise: a loop's `call_soon_threadsafe`.
        """
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.remove(listener)

    def _changed_now(self) -> list[Callable[[], None]]:
        """Count a change; return the listeners to call.

        Called under the lock; the listeners are called after it is released, so
        that a listener never runs under this operation's lock.
        """
        self.version += 1
        return list(self._listeners)

    def update(self, **changes: Any) -> None:
        with self._lock:
            if self.done:
                return
            before = self.progress
            self.progress = after = replace(before, **changes)
            listeners = self._changed_now()
        self._tell_watchers(before, after)
        _call(listeners)

    def finish(self, *, result: Any = None, error: RsgrpcError | None = None) -> None:
        with self._lock:
            if self.done:
                return
            if error is None and self.cancel_event.is_set():
                error = CancelledError("the operation was cancelled")
            self.result, self.error = (None, error) if error else (result, None)
            self.end_time = time.time()
            before = self.progress
            self.progress = after = replace(before, stage=Stage.DONE)
            listeners = self._changed_now()
        self._tell_watchers(before, after)
        _call(listeners)

    def _tell_watchers(self, before: Progress, after: Progress) -> None:
        """Outside the lock, like the listeners, and before them: whoever a listener wakes
        finds the change counted. Each pair of snapshots was taken under the lock, so that
        the differences a watcher adds up are exact whatever the threads' order."""
        for watcher in self._watchers:
            watcher(self, before, after)

    def cancel(self) -> None:
        with self._lock:
            if self.done:
                return
            self.cancel_event.set()
            listeners = self._changed_now()
        _call(listeners)


def _call(listeners: list[Callable[[], None]]) -> None:
    for listener in listeners:
        listener()


class OperationStore:
    """Every operation of the server, in creation order, with a bound on how many it keeps.

    Running operations count against `max_running`; finished ones are kept
    until `max_kept` is reached, then the oldest finished one is forgotten.
    """

    def __init__(self, *, max_running: int, max_kept: int = 1000) -> None:
        self._lock = threading.Lock()
        self._operations: OrderedDict[str, Operation] = OrderedDict()
        self._running: list[Operation] = []  # and some finished since the last add
        self.max_running = max_running
        self.max_kept = max_kept
        self.closed = False
        self._watchers: tuple[ProgressWatcher, ...] = ()

    def watch(self, watcher: ProgressWatcher) -> None:
        """Call `watcher(operation, before, after)` after each change of the progress of
        every operation added from now on, in the thread that made it (finishing is a
        change to Stage.DONE). It must be quick and must not raise."""
        with self._lock:
            self._watchers = (*self._watchers, watcher)

    def close(self) -> None:
        """Refuse new operations from now on (the server is shutting down)."""
        self.closed = True

    def add(self, session: str, method: str, *, owner: str) -> Operation:
        with self._lock:
            if self.closed:
                raise UnavailableError("the server is shutting down")
            self._running = [op for op in self._running if not op.done]
            if len(self._running) >= self.max_running:
                raise ResourceExhaustedError(
                    f"the server runs {len(self._running)} operations, its limit; try again later"
                )
            operation = Operation(session, method, owner=owner, watchers=self._watchers)
            self._operations[operation.name] = operation
            self._running.append(operation)
            self._forget_oldest_finished(len(self._operations) - self.max_kept)
            return operation

    def _forget_oldest_finished(self, count: int) -> None:
        """Forget the `count` oldest finished operations (fewer if fewer are finished);
        looks no further than it must: past them, and the running ones before them."""
        if count <= 0:
            return
        oldest = []
        for name, op in self._operations.items():
            if op.done:
                oldest.append(name)
                if len(oldest) == count:
                    break
        for name in oldest:
            del self._operations[name]

    def get(self, name: str, *, owner: str | None = None) -> Operation:
        """The operation called `name`; with `owner`, one of another owner is NOT_FOUND too."""
        with self._lock:
            operation = self._operations.get(name)
        if operation is None or owner not in (None, operation.owner):
            raise NotFoundError(f"operation {name!r} does not exist", metadata={"name": name})
        return operation

    def list(self, *, session: str | None = None, owner: str | None = None) -> list[Operation]:
        """The operations in creation order, of `session` and of `owner` where given."""
        with self._lock:
            operations = list(self._operations.values())
        return [
            op for op in operations if session in (None, op.session) and owner in (None, op.owner)
        ]

    def delete(self, name: str, *, owner: str | None = None) -> None:
        operation = self.get(name, owner=owner)
        if not operation.done:
            raise FailedPreconditionError(
                f"operation {name!r} is still running; cancel it first", metadata={"name": name}
            )
        with self._lock:
            self._operations.pop(name, None)
