"""This server process as an instance: the marker its partial outputs and its
temporary folder carry.

An output is written beside its final path under a temporary name that names
the instance writing it, and the writer holds an exclusive `flock` on that file
until it is renamed or removed. Sessions' temporary directories live in a
folder of the temporary root named after the instance (`InstanceFolder`), which
the server holds locked the same way for as long as it runs. A lock goes with
the process that holds it, so a starting server can tell what a dead instance
left (a partial file or a folder nobody locks) from work in progress of a live
one, whatever roots the two share (`rsgrpc.engine.leftovers`).
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
from pathlib import Path

# One per process: every writer of this process names it.
INSTANCE_ID = secrets.token_hex(8)
PARTIAL_SUFFIX = ".partial.tif"
MAX_NAME_BYTES = 255
_PARTIAL = re.compile(r"^\..*\.(?P<instance>[0-9a-f]{16})\.[0-9a-f]{8}\.partial\.tif$", re.S)
_FOLDER_PREFIX = "rsgrpc-instance-"
_FOLDER = re.compile(rf"^{_FOLDER_PREFIX}(?P<instance>[0-9a-f]{{16}})\.[0-9a-f]{{8}}$")
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Tries at claiming a folder that a sweeping server removes as it is made.
_CLAIM_TRIES = 5


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


def folder_instance(name: str) -> str | None:
    """The instance that named a folder of the temporary root `name`, or None if it
    is not an instance's folder."""
    match = _FOLDER.match(name)
    return match.group("instance") if match else None


def lock_if_unheld(fd: int) -> bool:
    """Take an exclusive `flock` on `fd` unless another open file holds one."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class InstanceFolder:
    """This instance's folder in a temporary root, where its sessions' directories go,
    locked until `close` removes it.

    It is made under its final name and then locked, so a server sweeping the root
    at that moment could lock and remove it first: the claim then starts again
    under a new name, until it holds a lock on the folder that its name leads to.
    """

    def __init__(self, temp_root: Path) -> None:
        temp_root.mkdir(parents=True, exist_ok=True)
        for _ in range(_CLAIM_TRIES):
            path = temp_root / f"{_FOLDER_PREFIX}{INSTANCE_ID}.{secrets.token_hex(4)}"
            path.mkdir(mode=0o700)
            try:
                fd = os.open(path, _FOLDER_FLAGS)
            except FileNotFoundError:
                continue
            if lock_if_unheld(fd) and _names(path, fd):
                self.path, self._fd = path, fd
                return
            os.close(fd)
        raise RuntimeError(f"could not claim a temporary folder after {_CLAIM_TRIES} tries")

    def close(self) -> None:
        """Remove the folder and everything in it, then let go of its lock."""
        if self._fd < 0:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)
        self._fd = -1


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still leads to the directory open as `fd`."""
    try:
        return os.path.samestat(os.stat(path, follow_symlinks=False), os.fstat(fd))
    except FileNotFoundError:
        return False
