"""google.longrunning.Operations and WatchOperation over the server's operation store.

WaitOperation and WatchOperation wait on the event loop, woken by the operation's
listeners, so a waiting client holds no thread; at most `max_waiters_per_session`
of them wait on one session's operations at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import random
import re
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import empty_pb2, message, timestamp_pb2

from rsgrpc.engine.errors import (
    InvalidArgumentError,
    ResourceExhaustedError,
    RsgrpcError,
    UnavailableError,
)
from rsgrpc.engine.log_context import OPERATION, SESSION
from rsgrpc.engine.operations import Operation, OperationStore
from rsgrpc.engine.session import Session
from rsgrpc.server.auth import current_caller
from rsgrpc.server.status import reports_errors, to_status_proto
from rsgrpc.v1 import operation_pb2, operation_pb2_grpc

_LOGGER = logging.getLogger(__name__)
_FILTER = re.compile(r'^\s*session\s*=\s*"(sessions/[^"]+)"\s*$')
_MAX_PAGE = 1000
# A WaitOperation with no timeout waits at most this long (AIP-151 lets the server choose).
_MAX_WAIT_SECONDS = 300.0
# How many watch messages a second the server spreads its watchers' updates over: a change
# seen by 2,000 watchers is sent within 0.5 s, not in one burst that holds the event loop
# (and health checks) for the time of 2,000 writes.
_WATCH_MESSAGES_PER_SECOND = 4000.0
# How long an RPC that starts a job of one tile waits for it to end before answering: a few
# times what such a job takes on an idle server.
DONE_WITHIN_SECONDS = 0.025


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def operation_to_proto(operation: Operation) -> lro.Operation:
    """The operation as clients see it: progress in metadata, then a response or an error."""
    progress = operation.progress
    metadata = operation_pb2.OperationMetadata(
        session=operation.session,
        method=operation.method,
        stage=int(progress.stage),
        tiles_done=progress.tiles_done,
        tiles_total=progress.tiles_total,
        bytes_read=progress.bytes_read,
        bytes_written=progress.bytes_written,
        create_time=_timestamp(operation.create_time),
        cancel_requested=operation.cancel_event.is_set(),
    )
    metadata.elapsed.FromNanoseconds(int(operation.elapsed * 1e9))
    if operation.end_time is not None:
        metadata.end_time.CopyFrom(_timestamp(operation.end_time))
    proto = lro.Operation(name=operation.name, done=operation.done)
    proto.metadata.Pack(metadata)
    if operation.done:
        if operation.error is not None:
            proto.error.CopyFrom(to_status_proto(operation.error))
        elif isinstance(operation.result, message.Message):
            proto.response.Pack(operation.result)
    return proto


@dataclasses.dataclass(frozen=True)
class Started:
    """An operation an RPC started, and whether its job is one tile."""

    operation: Operation
    one_tile: bool


def start_operation(
    store: OperationStore,
    session: Session,
    method: str,
    job: Callable[[Session, Operation], Any],
    *,
    one_tile: bool = False,
) -> Started:
    """Queue `job` on `session` as a new operation of the session's owner; the RPC answers
    with it through `answer_started`."""
    operation = store.add(session.name, method, owner=session.owner)
    SESSION.set(session.name)
    OPERATION.set(operation.name)
    try:
        session.submit(operation, job)
    except RsgrpcError as exc:
        operation.finish(error=exc)
        raise
    _LOGGER.info("%s %s started", method, operation.name)
    return Started(operation, one_tile)


async def answer_started(started: Started) -> lro.Operation:
    """The operation an RPC started, as the RPC answers. A job of one tile is answered done
    if it ends within `DONE_WITHIN_SECONDS`, so that a small job costs its client no
    WaitOperation; any other as it is (a client polls or waits for it as for any
    operation, and sees its progress from the start)."""
    operation = started.operation
    if started.one_tile:
        with wakened_by(operation) as changed, contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DONE_WITHIN_SECONDS):
                while not operation.done:
                    await changed.wait()
                    changed.clear()
    return operation_to_proto(operation)


@contextlib.contextmanager
def wakened_by(operation: Operation) -> Iterator[asyncio.Event]:
    """An event of the running loop, set at each change of `operation` while in the block."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def listener() -> None:
        # Called from the thread that changed the operation.
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(changed.set)

    operation.add_listener(listener)
    try:
        yield changed
    finally:
        operation.remove_listener(listener)


class Waiters:
    """The calls waiting on operations (WaitOperation, WatchOperation), at most `limit` on one
    session's operations at once; `close` ends them all with UNAVAILABLE.

    The waiters of one operation share one listener: a change costs one hand-over to the
    event loop, however many wait, and wakes only those it concerns (a WaitOperation only
    when the operation is done). Used on the event loop only, so it needs no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._per_session: collections.Counter[str] = collections.Counter()
        self._by_operation: dict[Operation, set[asyncio.Event]] = {}
        self._listeners: dict[Operation, Callable[[], None]] = {}
        self._until_done: set[asyncio.Event] = set()
        self._count = 0
        self.closed = False

    @contextlib.contextmanager
    def waiting(self, operation: Operation, *, until_done: bool) -> Iterator[asyncio.Event]:
        """Count a waiting call in the block; the event is set when the operation changes
        (`until_done`: when it is done) and when the server closes (the waiter then calls
        `check_open`)."""
        self.check_open()
        session = operation.session
        if self._per_session[session] >= self.limit:
            raise ResourceExhaustedError(
                f"{session} has {self._per_session[session]} calls waiting on its operations "
                f"(WaitOperation and WatchOperation), the server's limit of {self.limit} "
                "per session; wait for one to end",
                metadata={"session": session, "limit": str(self.limit)},
            )
        changed = asyncio.Event()
        events = self._by_operation.get(operation)
        if events is None:
            events = self._by_operation[operation] = set()
            self._listeners[operation] = self._wake_on_change(operation, events)
        events.add(changed)
        if until_done:
            self._until_done.add(changed)
        self._per_session[session] += 1
        self._count += 1
        try:
            yield changed
        finally:
            self._count -= 1
            self._per_session[session] -= 1
            if not self._per_session[session]:
                del self._per_session[session]
            events.discard(changed)
            self._until_done.discard(changed)
            if not events:
                del self._by_operation[operation]
                operation.remove_listener(self._listeners.pop(operation))

    def spread(self) -> float:
        """A random delay before a watcher sends a change, so that the watchers of one
        change send at about `_WATCH_MESSAGES_PER_SECOND` together (none for a few)."""
        return random.uniform(0.0, self._count / _WATCH_MESSAGES_PER_SECOND)

    def check_open(self) -> None:
        if self.closed:
            raise UnavailableError("the server is shutting down")

    def close(self) -> None:
        """Wake every waiting call, which then ends with UNAVAILABLE; refuse new ones."""
        self.closed = True
        for events in self._by_operation.values():
            for changed in events:
                changed.set()

    def _wake_on_change(
        self, operation: Operation, events: set[asyncio.Event]
    ) -> Callable[[], None]:
        """Add to `operation` a listener that sets, on the running loop, the events of
        `events` that its change concerns; return it."""
        loop = asyncio.get_running_loop()

        def wake() -> None:
            done = operation.done
            for changed in events:
                if done or changed not in self._until_done:
                    changed.set()

        def listener() -> None:
            # Called from the thread that changed the operation.
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(wake)

        operation.add_listener(listener)
        return listener


class OperationsServicer(lro_grpc.OperationsServicer):
    """The standard methods, as AIP-151 describes them; each caller sees its own operations."""

    def __init__(self, store: OperationStore, waiters: Waiters) -> None:
        self._store = store
        self._waiters = waiters

    def _get(self, name: str) -> Operation:
        return self._store.get(name, owner=current_caller().owner)

    @reports_errors
    async def GetOperation(self, request, context):
        return operation_to_proto(self._get(request.name))

    @reports_errors
    async def ListOperations(self, request, context):
        session = None
        if request.filter:
            match = _FILTER.match(request.filter)
            if not match:
                raise InvalidArgumentError(
                    'filter must be empty or session = "sessions/{id}", got ' + repr(request.filter)
                )
            session = match.group(1)
        if request.page_size < 0:
            raise InvalidArgumentError("page_size must not be negative")
        try:
            start = int(request.page_token or 0)
        except ValueError as exc:
            raise InvalidArgumentError("page_token is not valid") from exc
        size = min(request.page_size or _MAX_PAGE, _MAX_PAGE)
        operations = self._store.list(session=session, owner=current_caller().owner)
        page = operations[start : start + size]
        token = str(start + size) if start + size < len(operations) else ""
        return lro.ListOperationsResponse(
            operations=[operation_to_proto(op) for op in page], next_page_token=token
        )

    @reports_errors
    async def DeleteOperation(self, request, context):
        self._store.delete(request.name, owner=current_caller().owner)
        return empty_pb2.Empty()

    @reports_errors
    async def CancelOperation(self, request, context):
        self._get(request.name).cancel()
        return empty_pb2.Empty()

    @reports_errors
    async def WaitOperation(self, request, context):
        operation = self._get(request.name)
        limit = _MAX_WAIT_SECONDS
        if request.HasField("timeout"):
            limit = min(request.timeout.ToNanoseconds() / 1e9, limit)
        remaining = context.time_remaining()
        if remaining is not None:
            limit = min(limit, max(remaining - 0.05, 0.0))
        if operation.done:  # nothing to wait for: not counted against the limit
            return operation_to_proto(operation)
        waiting = self._waiters.waiting(operation, until_done=True)
        with waiting as changed, contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                while not operation.done:
                    await changed.wait()
                    changed.clear()
                    self._waiters.check_open()
        return operation_to_proto(operation)


class OperationWatchServicer(operation_pb2_grpc.OperationWatchServiceServicer):
    """Streams an operation at each change until it is done.

    The watchers of one operation share one message per change: a change wakes them all
    at once, and building the message for each would hold the event loop that long.
    """

    def __init__(self, store: OperationStore, waiters: Waiters) -> None:
        self._store = store
        self._waiters = waiters
        self._latest: weakref.WeakKeyDictionary[Operation, tuple[int, lro.Operation]] = (
            weakref.WeakKeyDictionary()
        )

    def _snapshot(self, operation: Operation) -> lro.Operation:
        # The version is read first: the message then shows that change or a later one.
        version = operation.version
        latest = self._latest.get(operation)
        if latest is None or latest[0] != version:
            latest = self._latest[operation] = (version, operation_to_proto(operation))
        return latest[1]

    @reports_errors
    async def WatchOperation(self, request, context):
        operation = self._store.get(request.name, owner=current_caller().owner)
        if operation.done:  # one message and the end: not counted against the limit
            yield self._snapshot(operation)
            return
        with self._waiters.waiting(operation, until_done=False) as changed:
            while True:
                # Cleared before the snapshot: a change after it sets the event again.
                changed.clear()
                proto = self._snapshot(operation)
                yield proto
                if proto.done:
                    return
                await changed.wait()
                self._waiters.check_open()
                await asyncio.sleep(self._waiters.spread())
                self._waiters.check_open()


def add_operation_services(
    store: OperationStore, waiters: Waiters, server: grpc.aio.Server
) -> None:
    lro_grpc.add_OperationsServicer_to_server(OperationsServicer(store, waiters), server)
    operation_pb2_grpc.add_OperationWatchServiceServicer_to_server(
        OperationWatchServicer(store, waiters), server
    )
