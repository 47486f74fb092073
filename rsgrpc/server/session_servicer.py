"""SessionService: create, read, list, update and close sessions; read their logs.

Each caller sees and acts on its own sessions only (an admin on all). Creating,
updating and closing a session start or stop processes: they run in the server's
pool of blocking threads, never on its event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re

from google.protobuf import empty_pb2, timestamp_pb2

from rsgrpc.engine.errors import InvalidArgumentError
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.session import Session, SessionRegistry, SessionSettings
from rsgrpc.server.auth import current_caller
from rsgrpc.server.config import ServerConfig
from rsgrpc.server.status import reports_errors
from rsgrpc.v1 import session_pb2, session_pb2_grpc

_LEVELS = {
    session_pb2.LOG_LEVEL_DEBUG: logging.DEBUG,
    session_pb2.LOG_LEVEL_INFO: logging.INFO,
    session_pb2.LOG_LEVEL_WARNING: logging.WARNING,
    session_pb2.LOG_LEVEL_ERROR: logging.ERROR,
}
_LEVEL_ENUMS = {v: k for k, v in _LEVELS.items()}
_UPDATABLE = {
    "process_count": "process_count",
    "available_ram_mib": "available_ram_mib",
    "log_level": "log_level",
    "log_time": "log_time",
    "idle_timeout": "idle_timeout_s",
}
_MAX_PAGE = 1000
# ListLogEntries' filter (AIP-160, as ListOperations'): one operation's records, or with
# "" the session's own.
_LOG_FILTER = re.compile(r'^\s*operation\s*=\s*"((?:operations/[^"]+)?)"\s*$')


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _level(value: int) -> int:
    return _LEVEL_ENUMS.get(value, session_pb2.LOG_LEVEL_INFO)


def session_to_proto(session: Session) -> session_pb2.Session:
    s = session.settings
    message = session_pb2.Session(
        name=session.name,
        process_count=s.process_count,
        available_ram_mib=s.available_ram_mib,
        temporary_directory=str(session.temporary_directory),
        directory_prefix=s.directory_prefix,
        log_level=_level(s.log_level),
        log_time=s.log_time,
        state=session_pb2.Session.STATE_CLOSED
        if session.closed
        else session_pb2.Session.STATE_ACTIVE,
        create_time=_timestamp(session.create_time),
        update_time=_timestamp(session.update_time),
        expire_time=_timestamp(session.expire_time),
    )
    message.idle_timeout.FromNanoseconds(int(s.idle_timeout_s * 1e9))
    return message


def _populated(message, field: str) -> bool:
    try:
        return message.HasField(field)
    except ValueError:  # a plain proto3 scalar: set means not zero
        return bool(getattr(message, field))


def _page(page_size: int, page_token: str) -> tuple[int, int]:
    if page_size < 0:
        raise InvalidArgumentError("page_size must not be negative")
    try:
        start = int(page_token or 0)
    except ValueError as exc:
        raise InvalidArgumentError("page_token is not valid") from exc
    return start, min(page_size or _MAX_PAGE, _MAX_PAGE)


class SessionServicer(session_pb2_grpc.SessionServiceServicer):
    def __init__(
        self, registry: SessionRegistry, config: ServerConfig, data_root: DataRoot
    ) -> None:
        self._registry = registry
        self._config = config
        self._data_root = data_root

    @reports_errors
    async def CreateSession(self, request, context):
        given = request.session
        settings = SessionSettings(
            process_count=given.process_count or self._config.process_count_default,
            available_ram_mib=given.available_ram_mib or self._config.default_ram_mib,
            directory_prefix=given.directory_prefix or "rsgrpc_",
            log_level=_LEVELS.get(given.log_level, logging.INFO),
            log_time=given.log_time if given.HasField("log_time") else True,
            idle_timeout_s=(
                given.idle_timeout.ToNanoseconds() / 1e9
                if given.HasField("idle_timeout")
                else self._config.session_idle_timeout_s
            ),
        )
        session = await asyncio.to_thread(
            self._registry.create,
            settings,
            request.session_id,
            owner=current_caller().identity,
        )
        return session_to_proto(session)

    def _get(self, name: str) -> Session:
        return self._registry.get(name, owner=current_caller().owner)

    @reports_errors
    async def GetSession(self, request, context):
        return session_to_proto(self._get(request.name))

    @reports_errors
    async def ListSessions(self, request, context):
        start, size = _page(request.page_size, request.page_token)
        sessions = self._registry.list(owner=current_caller().owner)
        page = sessions[start : start + size]
        token = str(start + size) if start + size < len(sessions) else ""
        return session_pb2.ListSessionsResponse(
            sessions=[session_to_proto(s) for s in page], next_page_token=token
        )

    @reports_errors
    async def UpdateSession(self, request, context):
        given = request.session
        # AIP-134: without a mask, every field the client populated is updated.
        paths = list(request.update_mask.paths) or [
            path for path in _UPDATABLE if _populated(given, path)
        ]
        unknown = sorted(set(paths) - set(_UPDATABLE))
        if unknown:
            raise InvalidArgumentError(
                f"update_mask paths {unknown} cannot be updated; use {sorted(_UPDATABLE)}"
            )
        changes = {}
        for path in paths:
            if path == "log_level":
                changes["log_level"] = _LEVELS.get(given.log_level, logging.INFO)
            elif path == "idle_timeout":
                changes["idle_timeout_s"] = given.idle_timeout.ToNanoseconds() / 1e9
            else:
                changes[_UPDATABLE[path]] = getattr(given, path)
        session = self._get(given.name)
        return session_to_proto(
            await asyncio.to_thread(self._registry.update, session.name, changes)
        )

    @reports_errors
    async def DeleteSession(self, request, context):
        session = self._get(request.name)
        await asyncio.to_thread(self._delete, session, request.log_path, request.overwrite_log)
        return empty_pb2.Empty()

    def _delete(self, session: Session, log_path: str, overwrite_log: bool) -> None:
        kept = self._data_root.path(log_path, field="log_path") if log_path else None
        self._registry.delete(session.name, kept, overwrite_log=overwrite_log)

    @reports_errors
    async def ListLogEntries(self, request, context):
        # A closed session's log stays readable by its owner for a while.
        log = self._registry.log_of(request.parent, owner=current_caller().owner)
        operation = _log_filter(request.filter)
        if request.page_size < 0:
            raise InvalidArgumentError("page_size must not be negative")
        start = _log_page_start(request.page_token, operation)
        size = min(request.page_size or _MAX_PAGE, _MAX_PAGE)
        records, next_start = log.log_records(start, size, operation=operation)
        return session_pb2.ListLogEntriesResponse(
            log_entries=[
                session_pb2.LogEntry(
                    time=_timestamp(r.time),
                    level=_level(r.level),
                    message=r.message,
                    operation=r.operation,
                )
                for r in records
            ],
            next_page_token=_log_page_token(next_start, operation),
        )


def _log_filter(text: str) -> str | None:
    """The operation a ListLogEntries filter selects ("" for the session's own records),
    or None for no filter."""
    if not text:
        return None
    match = _LOG_FILTER.match(text)
    if not match:
        raise InvalidArgumentError(
            'filter must be empty or operation = "operations/{id}" (or operation = ""), got '
            + repr(text)
        )
    return match.group(1)


def _filter_mark(operation: str | None) -> str:
    """What a page token carries of its filter: nothing without one."""
    if operation is None:
        return ""
    return hashlib.sha256(operation.encode()).hexdigest()[:12]


def _log_page_token(start: int, operation: str | None) -> str:
    mark = _filter_mark(operation)
    return f"{start}.{mark}" if mark else str(start)


def _log_page_start(token: str, operation: str | None) -> int:
    """The sequence a page token reads on from; it must come from the same filter."""
    if not token:
        return 0
    number, _, mark = token.partition(".")
    try:
        start = int(number)
    except ValueError as exc:
        raise InvalidArgumentError("page_token is not valid") from exc
    if start < 0:
        raise InvalidArgumentError("page_token is not valid")
    if mark != _filter_mark(operation):
        raise InvalidArgumentError(
            "page_token was made with another filter; list again with the filter it came from"
        )
    return start
