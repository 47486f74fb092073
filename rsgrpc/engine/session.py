"""Sessions: each owns a temporary directory, a log and a job queue, and holds warm
workers lent by the server.

Like Remotior Sensus' `Session`, but one per client and many at once, with
no module state: everything a session holds hangs off its object, and the
registry admits sessions within the server's totals. Local workers come from the
registry's `WorkerStock` and go back to it when the session closes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import contextvars
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from rsgrpc.engine import tracing
from rsgrpc.engine.bandsets import BandSetCatalog
from rsgrpc.engine.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    RsgrpcError,
    internal_error,
)
from rsgrpc.engine.executors import DaskExecutor, Executor, LocalProcessExecutor
from rsgrpc.engine.instance import InstanceFolder
from rsgrpc.engine.log_context import OPERATION, SESSION, ContextFilter
from rsgrpc.engine.operations import Operation
from rsgrpc.engine.partial_output import PartialOutput, partial_output
from rsgrpc.engine.paths import DataPath
from rsgrpc.engine.root_probe import RootMarks, check_workers_see_roots
from rsgrpc.engine.worker_stock import PoolShape, WorkerStock

_LOGGER = logging.getLogger(__name__)
_ID = re.compile(r"^[a-z][a-z0-9-]{2,61}[a-z0-9]$")
_PREFIX = re.compile(r"^[A-Za-z0-9_-]{0,32}$")
# A session's log keeps its last records (its sequence numbers count those dropped before).
LOG_RECORDS_KEPT = 10_000
# How long closing a session waits for its jobs to end, before and after stopping its workers.
JOBS_STOP_SECONDS = 3.0


@dataclass(frozen=True)
class SessionSettings:
    """What a client chooses for its session (Remotior's `Session` arguments)."""

    process_count: int
    available_ram_mib: int
    directory_prefix: str = "rsgrpc_"
    log_level: int = logging.INFO
    log_time: bool = True
    idle_timeout_s: float = 1800.0


@dataclass(frozen=True)
class ServerLimits:
    """The server's totals, shared by all sessions."""

    process_count: int
    ram_mib: int
    max_sessions: int
    max_idle_timeout_s: float
    min_ram_mib: int = 64
    max_raster_pixels: int = 2_500_000_000  # largest raster a job reads or writes
    max_output_bytes: int = 64 << 30  # largest output one job may write (uncompressed)
    min_free_disk_bytes: int = 256 << 20  # left free beside a job's outputs and temporary files


@dataclass(frozen=True, slots=True)
class LogRecordView:
    """One record of a session's log, as a client reads it."""

    sequence: int
    time: float
    level: int
    message: str
    operation: str = ""  # the operation whose job logged it; empty for the session's own


class _RingHandler(logging.Handler):
    """Keeps the last records of a session's log in memory for ListLogEntries, each with
    the operation it was logged for (the session logger's `ContextFilter` names it)."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.records: collections.deque[LogRecordView] = collections.deque(maxlen=capacity)
        self._next = 0

    def emit(self, record: logging.LogRecord) -> None:
        operation = getattr(record, "operation", None) or ""
        view = LogRecordView(
            self._next, record.created, record.levelno, self.format(record), operation
        )
        self._next += 1
        self.records.append(view)

    def read(
        self, start: int, limit: int, operation: str | None = None
    ) -> tuple[list[LogRecordView], int]:
        """Up to `limit` records from sequence `start` on (those of `operation` only, unless
        None), and the sequence to read on from: past the last record returned, or past
        every record looked at when fewer than `limit` matched."""
        self.acquire()  # emit appends under this lock
        try:
            kept = [r for r in self.records if r.sequence >= start]
            next_start = self._next
        finally:
            self.release()
        found = []
        for record in kept:
            if operation is None or record.operation == operation:
                found.append(record)
                if len(found) == limit:
                    return found, record.sequence + 1
        return found, max(start, next_start)


class Session:
    """One client's session. Jobs run one at a time, in the order submitted."""

    def __init__(
        self,
        session_id: str,
        settings: SessionSettings,
        *,
        temp_root: Path,
        make_executor: Callable[[SessionSettings], Executor],
        release_executor: Callable[[Executor], None],
        limits: ServerLimits,
        owner: str,
    ) -> None:
        self.id = session_id
        self.name = f"sessions/{session_id}"
        self.owner = owner  # the identity that created it; others see it only as an admin
        self.settings = settings
        self.limits = limits
        self.create_time = self.update_time = time.time()
        self.closed = False
        self.bandsets = BandSetCatalog()  # its band sets, numbered from 1
        self._make_executor = make_executor
        self._release_executor = release_executor
        self._lock = threading.Lock()
        self._active_jobs = 0
        self._jobs_ended = threading.Condition(self._lock)
        self.temporary_directory = Path(
            tempfile.mkdtemp(prefix=f"{settings.directory_prefix}{session_id}_", dir=temp_root)
        )
        # A Logger made directly is not registered in logging's global tree.
        self.logger = logging.Logger(f"rsgrpc.session.{session_id}")
        self.logger.propagate = False
        # Names each record's operation (and request) from the context it is logged in.
        self.logger.addFilter(ContextFilter())
        self._ring = _RingHandler(LOG_RECORDS_KEPT)
        self._file = logging.FileHandler(self.temporary_directory / "session.log")
        for handler in (self._ring, self._file):
            self.logger.addHandler(handler)
        self._apply_log_settings()
        self._jobs = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"job-{session_id}"
        )
        try:
            self.executor = make_executor(settings)
        except Exception:
            self._remove_files()
            raise
        self.logger.info(
            "session started: %d processes, %d MiB, temporary directory %s",
            settings.process_count,
            settings.available_ram_mib,
            self.temporary_directory.name,
        )

    def _apply_log_settings(self) -> None:
        fmt = (
            "%(asctime)s %(levelname)s %(message)s"
            if self.settings.log_time
            else "%(levelname)s %(message)s"
        )
        for handler in (self._ring, self._file):
            handler.setFormatter(logging.Formatter(fmt))
        self.logger.setLevel(self.settings.log_level)

    @property
    def expire_time(self) -> float:
        return self.update_time + self.settings.idle_timeout_s

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._active_jobs > 0

    def touch(self) -> None:
        self.update_time = time.time()

    def update(self, settings: SessionSettings) -> None:
        """Apply new settings; the workers are rebuilt if their number changes."""
        with self._lock:
            if self._active_jobs:
                raise FailedPreconditionError(f"{self.name} has running jobs; update it when idle")
            old, self.settings = self.settings, settings
            self._apply_log_settings()
            if settings.process_count != old.process_count:
                self._release_executor(self.executor)
                try:
                    self.executor = self._make_executor(settings)
                except Exception:
                    # Back to the old size: most often its own workers, from the stock.
                    self.settings = old
                    self._apply_log_settings()
                    self.executor = self._make_executor(old)
                    raise
        self.touch()
        self.logger.info("session settings changed")

    def submit(self, operation: Operation, job: Callable[[Session, Operation], Any]) -> None:
        """Queue `job` to run on this session; its outcome finishes `operation`."""
        with self._lock:
            if self.closed:
                raise FailedPreconditionError(f"{self.name} is closed")
            self._active_jobs += 1
        self.touch()

        def run() -> None:
            # The job ends on the session before its operation is done: a client told that
            # it is done finds the session idle (to update or close it) at once.
            outcome: dict[str, Any] | None = None  # {}: cancelled before it started
            SESSION.set(self.name)
            OPERATION.set(operation.name)
            try:
                if operation.cancel_event.is_set():
                    outcome = {}
                else:
                    self.logger.info("%s %s started", operation.method, operation.name)
                    outcome = {"result": job(self, operation)}
                    self.logger.info("%s %s done", operation.method, operation.name)
            except RsgrpcError as exc:
                outcome = {"error": exc}
                self.logger.warning("%s %s failed: %s", operation.method, operation.name, exc)
            except Exception:
                outcome = {"error": internal_error(_LOGGER, f"job {operation.name}")}
                self.logger.warning(
                    "%s %s failed: %s", operation.method, operation.name, outcome["error"]
                )
            finally:
                with self._lock:
                    self._active_jobs -= 1
                    self._jobs_ended.notify_all()
                self.touch()
                if outcome is not None:
                    operation.finish(**outcome)
                    _LOGGER.info(
                        "%s %s ended: %s", operation.method, operation.name, _ended(operation)
                    )

        if tracing.trace_job is not None:  # tracing is on: the operation's span
            run = tracing.trace_job(operation, run)
        # In a copy of the context of the call that queued it: its log lines name that call.
        self._jobs.submit(contextvars.copy_context().run, run)

    def _wait_for_jobs(self, seconds: float) -> bool:
        """Wait until no job is queued or running, at most `seconds`; whether none is."""
        with self._lock:
            return self._jobs_ended.wait_for(lambda: self._active_jobs == 0, seconds)

    def close(self, log: PartialOutput | None = None) -> None:
        """Stop the jobs' queue; give the workers back (stop them if a job still runs);
        keep the log in `log`, published at its path; remove the files, whether or not
        the log could be kept."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        # Its operations were cancelled: queued jobs end at once, running ones at their
        # next tile; a job still running after that ends when its workers are stopped.
        self._jobs.shutdown(wait=False, cancel_futures=False)
        if self._wait_for_jobs(JOBS_STOP_SECONDS):
            # No job runs, and none can start: the workers may serve another session.
            self._release_executor(self.executor)
        else:
            # Stopped first, so that the job cannot reach them after they are given back.
            self.executor.shutdown()
            self._release_executor(self.executor)
            if not self._wait_for_jobs(JOBS_STOP_SECONDS):
                _LOGGER.warning("%s: a job was still running when the session closed", self.name)
        self.logger.info("session closed")
        self._file.close()
        try:
            if log is not None:
                log.copy_from(self.temporary_directory / "session.log")
                log.publish()
        finally:
            self._remove_files()

    def _remove_files(self) -> None:
        for handler in (self._ring, self._file):
            handler.close()
        shutil.rmtree(self.temporary_directory, ignore_errors=True)

    def log_records(
        self, start: int, limit: int, *, operation: str | None = None
    ) -> tuple[list[LogRecordView], int]:
        """Up to `limit` records from sequence `start` (of `operation` only, unless None),
        and the sequence to read on from."""
        return self._ring.read(start, limit, operation)


@dataclass(frozen=True)
class ClosedLog:
    """The log of a closed session, readable by its owner until `forget_time`."""

    name: str
    owner: str
    forget_time: float
    _ring: _RingHandler

    def log_records(
        self, start: int, limit: int, *, operation: str | None = None
    ) -> tuple[list[LogRecordView], int]:
        return self._ring.read(start, limit, operation)


class ClosedLogs:
    """The logs of closed sessions, each kept `seconds` after its session closed (none
    when 0), at most `count` of them: past it the oldest is forgotten first."""

    def __init__(self, seconds: float, count: int) -> None:
        self.seconds = seconds
        self.count = count
        self._lock = threading.Lock()
        self._logs: collections.OrderedDict[str, ClosedLog] = collections.OrderedDict()

    def keep(self, session: Session, now: float | None = None) -> None:
        if self.seconds <= 0 or self.count <= 0:
            return
        now = time.time() if now is None else now
        kept = ClosedLog(session.name, session.owner, now + self.seconds, session._ring)
        with self._lock:
            self._logs.pop(session.name, None)
            self._logs[session.name] = kept
            while len(self._logs) > self.count:
                self._logs.popitem(last=False)

    def get(self, name: str, *, owner: str | None = None) -> ClosedLog | None:
        """The kept log of the closed session `name`, if `owner` (unless None) owns it."""
        with self._lock:
            kept = self._logs.get(name)
        if kept is None or kept.forget_time <= time.time() or owner not in (None, kept.owner):
            return None
        return kept

    def forget(self, name: str) -> None:
        with self._lock:
            self._logs.pop(name, None)

    def forget_expired(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            # In the order kept, so in the order they expire.
            while self._logs and next(iter(self._logs.values())).forget_time <= now:
                self._logs.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._logs)


def _ended(operation: Operation) -> str:
    """How a finished operation ended, for the server's log."""
    if operation.error is None:
        return "succeeded"
    return f"{operation.error.reason}: {operation.error}"


class SessionRegistry:
    """The server's sessions, admitted within its totals, expired when idle; and the
    spare local workers it lends them, which count against the same process total."""

    def __init__(
        self,
        limits: ServerLimits,
        *,
        temp_root: Path,
        dask_scheduler: str | None = None,
        root_marks: RootMarks | None = None,
        on_close: Callable[[Session], None] | None = None,
        closed_log_s: float = 3600.0,
        max_closed_logs: int = 64,
    ) -> None:
        self.limits = limits
        self.temp_root = temp_root
        self.dask_scheduler = dask_scheduler
        # The data roots' markers, that every Dask worker must see (`root_probe`).
        self.root_marks = root_marks
        self._on_close = on_close
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._reserved: dict[str, SessionSettings] = {}
        # Closed sessions' logs, readable by their owners for a while.
        self.closed_logs = ClosedLogs(closed_log_s, max_closed_logs)
        # Where sessions' temporary directories go: this instance's locked folder.
        self.instance_folder = InstanceFolder(temp_root)
        self.stock = WorkerStock(limits.process_count)

    def _make_executor(self, settings: SessionSettings) -> Executor:
        if self.dask_scheduler:
            executor = DaskExecutor(self.dask_scheduler, workers=settings.process_count)
            if self.root_marks is not None:
                try:
                    check_workers_see_roots(executor.run_on_every_worker, self.root_marks)
                except BaseException:
                    executor.shutdown()
                    raise
            return executor
        return self.stock.lend(_pool_shape(settings.process_count))

    def _release_executor(self, executor: Executor) -> None:
        if isinstance(executor, LocalProcessExecutor):
            self.stock.take_back(executor)
        else:
            executor.shutdown()

    def stock_spare_workers(self, process_count: int) -> concurrent.futures.Future | None:
        """Start, in the background, spare workers for a session of `process_count`
        processes (none for Dask sessions, whose workers are the cluster's); returns
        what is done once they have started, or None."""
        if self.dask_scheduler:
            return None
        return self.stock.start_spare(_pool_shape(process_count))

    def validate(self, settings: SessionSettings) -> SessionSettings:
        limits = self.limits
        if not 1 <= settings.process_count <= limits.process_count:
            raise InvalidArgumentError(
                f"process_count must be 1 to {limits.process_count}, got {settings.process_count}",
                metadata={"max_process_count": str(limits.process_count)},
            )
        if settings.available_ram_mib < limits.min_ram_mib:
            raise InvalidArgumentError(
                f"available_ram_mib must be at least {limits.min_ram_mib}, "
                f"got {settings.available_ram_mib}"
            )
        if not _PREFIX.match(settings.directory_prefix):
            raise InvalidArgumentError(
                "directory_prefix may hold up to 32 letters, digits, '_' and '-'"
            )
        if not 0 < settings.idle_timeout_s <= limits.max_idle_timeout_s:
            raise InvalidArgumentError(
                f"idle_timeout must be positive and at most {limits.max_idle_timeout_s:g} s"
            )
        return settings

    def _check_totals(self, settings: SessionSettings, *, excluding: str | None = None) -> None:
        others = [s for k, s in self._reserved.items() if k != excluding]
        if excluding is None and len(others) >= self.limits.max_sessions:
            raise ResourceExhaustedError(
                f"the server has {len(others)} sessions, its limit of {self.limits.max_sessions}"
            )
        # The metadata name what is left, so that a client can ask for that instead.
        others_processes = sum(s.process_count for s in others)
        processes = others_processes + settings.process_count
        if processes > self.limits.process_count:
            raise ResourceExhaustedError(
                f"the server's sessions would use {processes} processes; its total is "
                f"{self.limits.process_count}",
                metadata={
                    "max_process_count": str(max(0, self.limits.process_count - others_processes))
                },
            )
        others_ram = sum(s.available_ram_mib for s in others)
        ram = others_ram + settings.available_ram_mib
        if ram > self.limits.ram_mib:
            raise ResourceExhaustedError(
                f"the server's sessions would use {ram} MiB; its total is {self.limits.ram_mib} MiB",
                metadata={"max_available_ram_mib": str(max(0, self.limits.ram_mib - others_ram))},
            )

    def create(self, settings: SessionSettings, session_id: str = "", *, owner: str) -> Session:
        settings = self.validate(settings)
        if session_id and not _ID.match(session_id):
            raise InvalidArgumentError(
                "session_id must be 4 to 63 lowercase letters, digits or '-', starting with a letter"
            )
        session_id = session_id or uuid.uuid4().hex[:16]
        with self._lock:
            if session_id in self._reserved:
                raise AlreadyExistsError(f"sessions/{session_id} already exists")
            self._check_totals(settings)
            self._reserved[session_id] = settings
        try:
            session = Session(
                session_id,
                settings,
                temp_root=self.instance_folder.path,
                make_executor=self._make_executor,
                release_executor=self._release_executor,
                limits=self.limits,
                owner=owner,
            )
        except Exception:
            with self._lock:
                del self._reserved[session_id]
            raise
        with self._lock:
            self._sessions[session_id] = session
        self.closed_logs.forget(session.name)  # the name is a new session's now
        _LOGGER.info("created %s", session.name)
        return session

    def reserved_ram_mib(self) -> int:
        """The RAM the sessions hold against the server's total, those starting included."""
        with self._lock:
            return sum(settings.available_ram_mib for settings in self._reserved.values())

    def get(self, name: str, *, owner: str | None = None) -> Session:
        """The session called `name`; with `owner`, a session of another owner is
        NOT_FOUND too, so that others cannot learn that it exists."""
        session_id = name.removeprefix("sessions/")
        with self._lock:
            session = self._sessions.get(session_id) if name.startswith("sessions/") else None
        if session is None or owner not in (None, session.owner):
            raise NotFoundError(f"session {name!r} does not exist", metadata={"name": name})
        return session

    def log_of(self, name: str, *, owner: str | None = None) -> Session | ClosedLog:
        """What reads the log of the session `name`: the session, or once it is closed its
        kept log; NOT_FOUND as for `get` when neither is there for `owner`."""
        try:
            return self.get(name, owner=owner)
        except NotFoundError:
            kept = self.closed_logs.get(name, owner=owner)
            if kept is None:
                raise
            return kept

    def list(self, *, owner: str | None = None) -> list[Session]:
        """The sessions in creation order: all of them, or those of `owner`."""
        with self._lock:
            sessions = [s for s in self._sessions.values() if owner in (None, s.owner)]
        return sorted(sessions, key=lambda s: s.create_time)

    def update(self, name: str, changes: Mapping[str, Any]) -> Session:
        session = self.get(name)
        known = {f.name for f in fields(SessionSettings)}
        unknown = set(changes) - known
        if unknown:
            raise InvalidArgumentError(f"cannot update {sorted(unknown)}")
        settings = self.validate(replace(session.settings, **changes))
        with self._lock:
            self._check_totals(settings, excluding=session.id)
            self._reserved[session.id] = settings
        try:
            session.update(settings)
        except Exception:
            with self._lock:
                self._reserved[session.id] = session.settings
            raise
        return session

    def delete(
        self, name: str, log_path: DataPath | None = None, *, overwrite_log: bool = False
    ) -> None:
        """Close a session, keeping its log at `log_path` if given.

        The log's file is made (its directories too) before anything else: when it
        cannot be (an existing file without `overwrite_log`, a path through a link or a
        file), the call fails and the session is left as it was. Once the session is
        closing, it closes completely, whatever happens to the log.
        """
        session = self.get(name)
        with contextlib.ExitStack() as opened:
            log = None
            if log_path is not None:
                log = opened.enter_context(partial_output(log_path, overwrite=overwrite_log))
            with self._lock:
                self._sessions.pop(session.id, None)
                # Its log stays readable, without a moment when it is not (it grows while
                # the session closes).
                self.closed_logs.keep(session)
            try:
                if self._on_close:
                    self._on_close(session)
                session.close(log)
            finally:
                with self._lock:
                    self._reserved.pop(session.id, None)
        _LOGGER.info("closed %s", session.name)

    def expire_idle(self, now: float | None = None) -> list[str]:
        """Close sessions idle past their timeout; return their names."""
        now = time.time() if now is None else now
        self.closed_logs.forget_expired()
        expired = [s for s in self.list() if not s.busy and s.expire_time <= now]
        for session in expired:
            _LOGGER.info("%s expired after %.0f s idle", session.name, now - session.update_time)
            try:
                self.delete(session.name)
            except NotFoundError:
                pass
        return [s.name for s in expired]

    def close_all(self) -> None:
        """Stop the spare workers, close every session (its workers are stopped, not
        kept), then remove this instance's temporary folder: the registry's last call."""
        self.stock.close()
        for session in self.list():
            try:
                self.delete(session.name)
            except NotFoundError:
                pass
        self.instance_folder.close()


def _pool_shape(process_count: int) -> PoolShape:
    """Local workers for a session of `process_count` processes, sharing the cores."""
    cores = os.cpu_count() or 1
    return PoolShape(process_count, threads_per_process=max(1, cores // process_count))
