"""A session on an rsgrpc server, created, changed and closed as Remotior's `Session` is.

`Session.__init__` and `set` take Remotior's parameters (declared in
`rsgrpc.client.signatures`); the connection settings come after them, keyword-only.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import field_mask_pb2

from rsgrpc.client.bandsets import BandSet, BandSetCatalog, bandset_class
from rsgrpc.client.connection import allowed_processes, allowed_ram, connect
from rsgrpc.client.downloads import Downloads
from rsgrpc.client.output import (
    GrpcResult,
    OutputManager,
    failed,
    rpc_error_result,
    status_result,
)
from rsgrpc.client.path_map import PathMap
from rsgrpc.client.progress import ProgressReport
from rsgrpc.client.signatures import SESSION_INIT, SESSION_SET, remotior_method
from rsgrpc.client.tools import RasterTools
from rsgrpc.v1 import (
    download_pb2_grpc,
    operation_pb2,
    operation_pb2_grpc,
    raster_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)

_LOG_LEVELS = {
    logging.DEBUG: session_pb2.LOG_LEVEL_DEBUG,
    logging.INFO: session_pb2.LOG_LEVEL_INFO,
    logging.WARNING: session_pb2.LOG_LEVEL_WARNING,
    logging.ERROR: session_pb2.LOG_LEVEL_ERROR,
}
_LEVEL_NUMBERS = {v: k for k, v in _LOG_LEVELS.items()}
# Tries of a session change: the asked one, then clamped processes, then clamped RAM.
_CLAMP_TRIES = 3


def megabytes(available_ram: float) -> int:
    """Remotior's `available_ram` in MiB: a value under 1000 is in GiB."""
    return int(available_ram * 1024 if available_ram < 1000 else available_ram)


@dataclass
class Temporary:
    """Remotior's `configurations.temp`: here the session's directory on the server."""

    dir: str = ""


@dataclass
class Configurations:
    """Remotior's `configurations` module, as far as a script reads it: the settings of
    the session on the server, and what the script gave for the rest."""

    n_processes: int = 2
    available_ram: int = 2048
    temporary_directory: str = ""
    temp: Temporary = field(default_factory=Temporary)
    directory_prefix: str = ""
    log_level: int = logging.INFO
    log_time: bool = True
    progress: Callable[..., Any] | None = None
    messages: Any = None
    keep_log: bool | None = None
    sound_notification: bool | None = None
    smtp_notification: bool | None = None
    smtp_server: str | None = None
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_recipients: str | None = None
    raster_data_type: str = "Float32"
    raster_compression: bool = True
    nodata_val: int = -32768
    root_name: str = "remotior_sensus"

    def take(self, session: session_pb2.Session) -> None:
        self.n_processes = session.process_count
        self.available_ram = session.available_ram_mib
        self.temporary_directory = session.temporary_directory
        self.temp = Temporary(session.temporary_directory)
        self.directory_prefix = session.directory_prefix
        self.log_level = _LEVEL_NUMBERS.get(session.log_level, logging.INFO)
        self.log_time = session.log_time


_LOCAL_SETTINGS = (
    "sound_notification",
    "smtp_notification",
    "smtp_server",
    "smtp_user",
    "smtp_password",
    "smtp_recipients",
)


class Session(RasterTools, Downloads):
    """A session on an rsgrpc server (Remotior's `Session`): its own worker processes,
    RAM budget, temporary directory and log on the server."""

    @remotior_method(SESSION_INIT)
    def __init__(self, a: dict[str, Any]) -> None:
        """Start a session with Remotior's parameters (see `rsgrpc.client.signatures` for
        what each means on a server); ``target`` or ``channel`` (with ``credentials`` and
        ``token``) say which server; ``operation_callback`` receives each
        OperationMetadata; ``path_map`` (default ``RSGRPC_PATH_MAP``) maps the script's
        folders to the server's (`rsgrpc.client.path_map`)."""
        self._channel = a["channel"] or connect(a["target"], credentials=a["credentials"])
        self._owns_channel = a["channel"] is None
        token = a["token"]
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._sessions = session_pb2_grpc.SessionServiceStub(self._channel)
        self._raster = raster_pb2_grpc.RasterServiceStub(self._channel)
        self._downloads = download_pb2_grpc.DownloadServiceStub(self._channel)
        self._operations = lro_grpc.OperationsStub(self._channel)
        self._watch = operation_pb2_grpc.OperationWatchServiceStub(self._channel)
        self.progress_callback = a["progress_callback"]
        self.operation_callback = a["operation_callback"]
        self.messages_callback = a["messages_callback"]
        self.path_map = PathMap(a["path_map"]) if a["path_map"] else PathMap.from_environment()
        self.output_manager = OutputManager
        self.log_level = a["log_level"] if a["log_level"] is not None else logging.INFO
        self.configurations = Configurations(
            progress=self.progress_callback,
            messages=self.messages_callback,
            keep_log=a["keep_log"],
            **{name: a[name] for name in _LOCAL_SETTINGS},
        )
        settings = session_pb2.Session(
            process_count=a["n_processes"] or 0,
            available_ram_mib=megabytes(a["available_ram"]) if a["available_ram"] else 0,
            directory_prefix=a["directory_prefix"] or "",
            log_level=_LOG_LEVELS.get(self.log_level, session_pb2.LOG_LEVEL_INFO),
            log_time=bool(a["log_time"]),
        )
        session_id = a["session_id"]
        self.session = self._clamped(
            settings,
            lambda s: self._sessions.CreateSession(
                session_pb2.CreateSessionRequest(session=s, session_id=session_id),
                metadata=self._metadata,
            ),
        )
        self.configurations.take(self.session)
        # Remotior's BandSet class: rs.bandset.create(...) makes a band set outside the
        # catalog; the catalog's band sets are of this class too.
        self.bandset: type[BandSet] = bandset_class(self)
        self.bandset_catalog = BandSetCatalog(self)  # the session's, on the server

    @property
    def name(self) -> str:
        return self.session.name

    def _warn(self, message: str) -> None:
        warnings.warn(message, stacklevel=5)
        if hasattr(self.messages_callback, "warning"):
            self.messages_callback.warning(message)

    def _clamped(
        self,
        settings: session_pb2.Session,
        send: Callable[[session_pb2.Session], session_pb2.Session],
    ) -> session_pb2.Session:
        """Send `settings`; where the server refuses more processes or RAM than it allows,
        send again with its maximum, warning with both numbers."""
        for attempt in range(_CLAMP_TRIES):
            try:
                return send(settings)
            except grpc.RpcError as error:
                if attempt + 1 == _CLAMP_TRIES:
                    raise
                refusal = rpc_error_result(error)
                asked = settings.process_count
                most = allowed_processes(refusal) if asked else None
                if most is not None and 1 <= most < asked:
                    self._warn(f"n_processes {asked} is more than the server allows; using {most}")
                    settings.process_count = most
                    continue
                asked = settings.available_ram_mib
                most = allowed_ram(refusal) if asked else None
                if most is not None and 0 < most < asked:
                    self._warn(
                        f"available_ram {asked} MB is more than the server has left; "
                        f"using {most} MB"
                    )
                    settings.available_ram_mib = most
                    continue
                raise
        raise AssertionError("unreachable")

    @remotior_method(SESSION_SET)
    def set(self, a: dict[str, Any]) -> None:
        """Change the session's settings (Remotior's `set`): a value that is None (or, as
        in Remotior, 0) leaves its setting as it is."""
        changes = session_pb2.Session(name=self.name)
        paths = []
        if a["n_processes"]:
            changes.process_count = a["n_processes"]
            paths.append("process_count")
        if a["available_ram"]:
            changes.available_ram_mib = megabytes(a["available_ram"])
            paths.append("available_ram_mib")
        if a["log_level"]:
            self.log_level = a["log_level"]
            changes.log_level = _LOG_LEVELS.get(a["log_level"], session_pb2.LOG_LEVEL_INFO)
            paths.append("log_level")
        if a["log_time"] is not None:
            changes.log_time = a["log_time"]
            paths.append("log_time")
        if a["progress_callback"]:
            self.progress_callback = self.configurations.progress = a["progress_callback"]
        for name in _LOCAL_SETTINGS:
            if a[name]:
                setattr(self.configurations, name, a[name])
        if paths:
            self.session = self._clamped(
                changes,
                lambda s: self._sessions.UpdateSession(
                    session_pb2.UpdateSessionRequest(
                        session=s, update_mask=field_mask_pb2.FieldMask(paths=paths)
                    ),
                    metadata=self._metadata,
                ),
            )
            self.configurations.take(self.session)

    def log(self, *, operation: str | lro.Operation | None = None) -> list[str]:
        """The session's log messages, oldest first; with ``operation`` (an operation or its
        name), those its job logged only. A closed session's log stays readable for a while
        (the server's ``--closed-session-log-s``)."""
        if isinstance(operation, lro.Operation):
            operation = operation.name
        where = "" if operation is None else f'operation = "{operation}"'
        entries, token = [], ""
        while True:
            page = self._sessions.ListLogEntries(
                session_pb2.ListLogEntriesRequest(parent=self.name, page_token=token, filter=where),
                metadata=self._metadata,
            )
            entries.extend(e.message for e in page.log_entries)
            if not page.log_entries:
                return entries
            token = page.next_page_token

    def close(self, log_path: str | None = None) -> None:
        """Close the session (Remotior's `close`), first writing its log to ``log_path`` on
        this machine, replacing a file there, as Remotior copies its log.

        As in Remotior, a log that cannot be written does not keep the session open: it is a
        warning, and the session closes on the server all the same.
        """
        try:
            if log_path:
                try:
                    lines = self.log()
                    with open(log_path, "w", encoding="utf-8") as file:
                        file.writelines(f"{line}\n" for line in lines)
                except (OSError, grpc.RpcError) as error:
                    reason = error.strerror if isinstance(error, OSError) else error.details()
                    warnings.warn(
                        f"the session's log could not be written to {log_path!r}: {reason}",
                        stacklevel=2,
                    )
            self._sessions.DeleteSession(
                session_pb2.DeleteSessionRequest(name=self.name), metadata=self._metadata
            )
        finally:
            if self._owns_channel:
                self._channel.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait(self, operation: lro.Operation) -> lro.Operation:
        """Follow an operation to its end, reporting its progress to the callbacks."""
        return self._follow(operation, self._report("rsgrpc", announce=False))

    def cancel(self, operation: lro.Operation) -> None:
        self._operations.CancelOperation(
            lro.CancelOperationRequest(name=operation.name), metadata=self._metadata
        )

    def _report(self, process: str, *, announce: bool) -> ProgressReport:
        return ProgressReport(
            process, self.progress_callback, self.operation_callback, announce=announce
        )

    def _follow(self, operation: lro.Operation, report: ProgressReport) -> lro.Operation:
        # A small job's operation may come back done from the call that started it.
        updates = (
            [operation]
            if operation.done
            else self._watch.WatchOperation(
                operation_pb2.WatchOperationRequest(name=operation.name), metadata=self._metadata
            )
        )
        for update in updates:
            operation = update
            metadata = operation_pb2.OperationMetadata()
            operation.metadata.Unpack(metadata)
            report.update(metadata)
        return operation

    def _run(
        self,
        process: str,
        start: Callable[[], lro.Operation],
        response: Any,
        outcome: Callable[[Any], OutputManager],
        *,
        announce: bool = True,
        failure: Callable[[GrpcResult], OutputManager] = failed,
    ) -> OutputManager:
        """Start an operation, follow it and turn its response into the tool's outcome."""
        report = self._report(process, announce=announce)
        report.start()
        try:
            operation = self._follow(start(), report)
        except grpc.RpcError as error:
            return self._failed(report, failure(rpc_error_result(error)))
        if operation.HasField("error"):
            e = operation.error
            return self._failed(report, failure(status_result(e.code, e.message, e.details)))
        operation.response.Unpack(response)
        report.finish(failed=False)
        return outcome(response)

    def _in_client_terms(self, output: OutputManager) -> OutputManager:
        """``output`` with its paths as the script's machine names them (`PathMap`)."""
        if self.path_map and output.paths is not None:
            output.paths = [self.path_map.to_client(path) for path in output.paths]
            output.path = output.paths[0] if output.paths else None
        return output

    def _failed(self, report: ProgressReport, output: OutputManager) -> OutputManager:
        report.finish(failed=True)
        if hasattr(self.messages_callback, "error"):
            self.messages_callback.error(output.grpc.message)
        return output
