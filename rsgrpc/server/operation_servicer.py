"""google.longrunning.Operations and WatchOperation over the server's operation store."""

from __future__ import annotations

import re

import grpc
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import empty_pb2, message, timestamp_pb2

from rsgrpc.engine.errors import InvalidArgumentError, RsgrpcError
from rsgrpc.engine.operations import Operation, OperationStore
from rsgrpc.server.status import abort, reports_errors, to_status_proto
from rsgrpc.v1 import operation_pb2, operation_pb2_grpc

_FILTER = re.compile(r'^\s*session\s*=\s*"(sessions/[^"]+)"\s*$')
_MAX_PAGE = 1000
# A WaitOperation with no timeout waits at most this long (AIP-151 lets the server choose).
_MAX_WAIT_SECONDS = 300.0
# A watch wakes at least this often to notice a client that went away.
_WATCH_POLL_SECONDS = 1.0


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


class OperationsServicer(lro_grpc.OperationsServicer):
    """The standard methods, as AIP-151 describes them."""

    def __init__(self, store: OperationStore) -> None:
        self._store = store

    @reports_errors
    def GetOperation(self, request, context):
        return operation_to_proto(self._store.get(request.name))

    @reports_errors
    def ListOperations(self, request, context):
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
        operations = self._store.list(session=session)
        page = operations[start : start + size]
        token = str(start + size) if start + size < len(operations) else ""
        return lro.ListOperationsResponse(
            operations=[operation_to_proto(op) for op in page], next_page_token=token
        )

    @reports_errors
    def DeleteOperation(self, request, context):
        self._store.delete(request.name)
        return empty_pb2.Empty()

    @reports_errors
    def CancelOperation(self, request, context):
        self._store.get(request.name).cancel()
        return empty_pb2.Empty()

    @reports_errors
    def WaitOperation(self, request, context):
        operation = self._store.get(request.name)
        limit = _MAX_WAIT_SECONDS
        if request.HasField("timeout"):
            limit = min(request.timeout.ToNanoseconds() / 1e9, limit)
        remaining = context.time_remaining()
        if remaining is not None:
            limit = min(limit, max(remaining - 0.05, 0.0))
        operation.wait_done(limit)
        return operation_to_proto(operation)


class OperationWatchServicer(operation_pb2_grpc.OperationWatchServiceServicer):
    """Streams an operation at each change until it is done."""

    def __init__(self, store: OperationStore) -> None:
        self._store = store

    def WatchOperation(self, request, context):
        try:
            operation = self._store.get(request.name)
        except RsgrpcError as exc:
            abort(context, exc)
        seen = -1
        while context.is_active():
            version = operation.wait_change(seen, _WATCH_POLL_SECONDS)
            if version == seen:
                continue
            seen = version
            proto = operation_to_proto(operation)
            yield proto
            if proto.done:
                return


def add_operation_services(store: OperationStore, server: grpc.Server) -> None:
    lro_grpc.add_OperationsServicer_to_server(OperationsServicer(store), server)
    operation_pb2_grpc.add_OperationWatchServiceServicer_to_server(
        OperationWatchServicer(store), server
    )
