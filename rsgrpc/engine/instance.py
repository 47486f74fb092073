"""This server process as an instance: the marker its partial outputs carry.

An output is written beside its final path under a temporary name that names
the instance writing it, and the writer holds an exclusive `flock` on that file
until it is renamed or removed. The lock goes with the process that holds it,
so a starting server can tell what a dead instance left (a partial file nobody
locks) from work in progress of a live one, whatever roots the two share.
"""

from __future__ import annotations

import re
import secrets

# One per process: every writer of this process names it.
INSTANCE_ID = secrets.token_hex(8)
PARTIAL_SUFFIX = ".partial.tif"
MAX_NAME_BYTES = 255
_PARTIAL = re.compile(r"^\..*\.(?P<instance>[0-9a-f]{16})\.[0-9a-f]{8}\.partial\.tif$", re.S)


def partial_name(output_name: str) -> str:
    """The temporary name of an output being written, beside it: at most 255 bytes,
    whatever the length of `output_name`."""
    tail = f".{INSTANCE_ID}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
    room = MAX_NAME_BYTES - 1 - len(tail)
    stem = output_name.encode()[:room].decode(errors="ignore")
    return f".{stem}{tail}"


def partial_instance(name: str) -> str | None:
    """The instance that named a partial output `name`, or None if it is not one."""
    match = _PARTIAL.match(name)
    return match.group("instance") if match else None
