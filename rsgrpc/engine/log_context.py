"""What a log line is about: the request, its method and identity, the session and the
operation, carried by context variables and added to every record of the server's log.

The server sets the request's fields when a call starts (`rsgrpc.server.request_ids`);
a session's job runs in a copy of the context of the call that queued it, with the
session and operation set (`rsgrpc.engine.session`), so that the lines a job logs in
its own thread name the request that started it. A session's own logger has the same
`ContextFilter`, so that each record of a session's log names its operation (and can be
read per operation). `JsonFormatter` writes each record as one JSON object a line
(``--log-format json``), with those fields where known.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import Any

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "rsgrpc_request_id", default=None
)
METHOD: contextvars.ContextVar[str | None] = contextvars.ContextVar("rsgrpc_method", default=None)
IDENTITY: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "rsgrpc_identity", default=None
)
SESSION: contextvars.ContextVar[str | None] = contextvars.ContextVar("rsgrpc_session", default=None)
OPERATION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "rsgrpc_operation", default=None
)
# The record attributes the filter sets, with the variables they come from.
_FIELDS = {
    "request_id": REQUEST_ID,
    "method": METHOD,
    "identity": IDENTITY,
    "session": SESSION,
    "operation": OPERATION,
}
LOG_FORMATS = ("text", "json")


class ContextFilter(logging.Filter):
    """Adds the request, method, identity, session and operation of the context the record
    is made in (None where unknown) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, variable in _FIELDS.items():
            if getattr(record, name, None) is None:
                setattr(record, name, variable.get())
        return True


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON: time (UTC, ISO 8601), level, logger, message, the
    context's fields that are known, and the exception's traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str, log_format: str) -> None:
    """The server's log on standard error, at `level`, as text or JSON lines; every line
    carries the context's fields (text lines name the request where known)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else _TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])


class _TextFormatter(logging.Formatter):
    """Time, level, logger and message, then the request's id where known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request = getattr(record, "request_id", None)
        return text if request is None else f"{text} [request {request}]"
