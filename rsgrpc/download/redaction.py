"""Keeping credentials out of every text the download side produces: errors, logs, operation details.

An upstream may echo anything back (its error body can quote the request's Authorization
header, or the token alone), so texts are scrubbed twice: by shape (``Authorization``
values, ``Bearer`` tokens, ``access_token`` / ``client_secret`` fields, JWTs, the password
of a ``scheme://user:password@host`` URL) and by value (every token, client secret and
store password this process has used, registered with `register_secret`).
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse
from collections import OrderedDict
from typing import Final

REDACTED: Final = "[REDACTED]"
# The newest tokens and secrets of the process: enough for every live session, bounded.
_MAX_SECRETS: Final = 512
# Shorter values are too likely to appear in ordinary text to be replaced by value.
_MIN_SECRET_LENGTH: Final = 8

_SECRET_FIELDS = (
    r"access[_-]?token|refresh[_-]?token|id[_-]?token|client[_-]?secret|api[_-]?key|apikey"
    r"|password|secret|token"
)
_PATTERNS: Final = (
    # "Authorization: Bearer x", 'Authorization': 'Basic x', "authorization"="x", ...
    re.compile(
        r"""(?P<name>(?:proxy-)?authorization["']?\s*[:=]\s*["']?)(?P<value>[^"'\r\n,;}]+)""",
        re.IGNORECASE,
    ),
    re.compile(r"(?P<name>\bBearer\s+)(?P<value>[A-Za-z0-9\-._~+/=]+)", re.IGNORECASE),
    # JSON and form fields: "access_token": "x", client_secret=x, X-Api-Key: x
    re.compile(
        rf"""(?P<name>\b(?:{_SECRET_FIELDS})["']?\s*[:=]\s*["']?)(?P<value>[^"'\s&,;}}]+)""",
        re.IGNORECASE,
    ),
    # The password in a URL's user information: redis://user:x@host, https://:x@host.
    re.compile(r"(?P<name>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@:]*:)(?P<value>[^\s/?#@]+)(?=@)"),
    # JSON Web Tokens wherever they appear.
    re.compile(
        r"(?P<name>)(?P<value>\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-+/=]{4,}\.[A-Za-z0-9_\-+/=]*)"
    ),
)

_LOCK = threading.Lock()
_SECRETS: OrderedDict[str, None] = OrderedDict()


def register_secret(value: str | None) -> None:
    """Remember ``value`` (a token or client secret) so that `redact` removes it wherever it appears."""
    if not value or len(value) < _MIN_SECRET_LENGTH:
        return
    with _LOCK:
        _SECRETS[value] = None
        _SECRETS.move_to_end(value)
        while len(_SECRETS) > _MAX_SECRETS:
            _SECRETS.popitem(last=False)


def redact(text: object) -> str:
    """``text`` as a string with every credential replaced by ``[REDACTED]``."""
    result = text if isinstance(text, str) else str(text)
    with _LOCK:
        known = sorted(_SECRETS, key=len, reverse=True)
    for secret in known:
        if secret in result:
            result = result.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        result = pattern.sub(_replacement, result)
    return result


def redact_url(url: str) -> str:
    """``url`` fit to show: its password (in the user information or a ``password`` query
    field) replaced by ``[REDACTED]``, the rest kept so that the place it names is known."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return redact(url)
    if password is not None:
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        url = urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))
    return redact(url)


def _replacement(match: re.Match[str]) -> str:
    if match.group("value") == REDACTED or match.group("value").startswith(REDACTED):
        return match.group(0)
    return f"{match.group('name')}{REDACTED}"


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (attach it to a logger or handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        shown = redact(message)
        if shown != message:
            record.msg, record.args = shown, None
        return True


def redact_logger(logger: logging.Logger) -> logging.Logger:
    """Give ``logger`` a `RedactingFilter` unless it has one; returns it."""
    if not any(isinstance(item, RedactingFilter) for item in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger
