"""Whether the workers of a Dask cluster see the server's data roots.

Workers open inputs themselves, each data root where they mount it
(`DataPath.local_root`: the server's folder, or the one their
RSGRPC_WORKER_DATA_ROOTS gives the root's name). A worker that mounts another
folder, or none, would fail every tile with NOT_FOUND, or read other files.

So each data root holds a marker, `.rsgrpc-root`: a random token that names
the storage, made once by the first server to start on it and read by every
later one (servers sharing a root agree on it). When a session starts on the
cluster, every worker reads each root's marker where it mounts that root; a
worker that cannot, or reads another token, does not see that root, and the
session is refused with FAILED_PRECONDITION naming the root and the worker,
never a folder. A root without a marker that the server cannot write
(read-only) is not probed, which the server logs.

A root in object storage holds its marker as the object `prefix/.rsgrpc-root`,
made only where none is (a conditional write); a worker reads it with its own
credentials, so one that cannot reach the storage is found the same way.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsgrpc.engine.errors import FailedPreconditionError
from rsgrpc.engine.object_store import ObjectRoot, is_object_url
from rsgrpc.engine.paths import DataRoot, worker_mounts

_LOGGER = logging.getLogger(__name__)

MARKER = ".rsgrpc-root"
_TOKEN_BYTES = 16
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True)
class RootMarks:
    """Each probed root's token, and the server's folder for it (where a worker without
    a mount of its own for the root's name opens it), by the root's name."""

    tokens: Mapping[str, str]
    folders: Mapping[str, str]


def mark_roots(data_root: DataRoot) -> RootMarks:
    """Each root's marker token, read, or made where the root has none."""
    tokens: dict[str, str] = {}
    folders: dict[str, str] = {}
    for name, folder in data_root.named.items():
        if isinstance(folder, ObjectRoot):
            token = _object_token(folder, name)
        else:
            token = _marker_token(folder, name)
        if token is not None:
            tokens[name] = token
            folders[name] = str(folder)
    return RootMarks(tokens, folders)


def _marker_token(folder: Path, name: str) -> str | None:
    fd = os.open(folder, _DIRECTORY_FLAGS)
    try:
        token = _read_token(fd)
        if token is not None:
            return token
        made = secrets.token_hex(_TOKEN_BYTES)
        try:
            marker = os.open(
                MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=fd
            )
        except FileExistsError:  # made meanwhile by another server
            return _read_token(fd)
        except OSError as error:
            if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                _LOGGER.warning(
                    "data root %r holds no %s and cannot be written: Dask workers' view of it "
                    "is not checked",
                    name,
                    MARKER,
                )
                return None
            raise
        try:
            os.write(marker, made.encode() + b"\n")
            os.fsync(marker)
        finally:
            os.close(marker)
        return made
    finally:
        os.close(fd)


def _object_token(store: ObjectRoot, name: str) -> str | None:
    try:
        token = _read_object_token(store)
        if token is None:
            made = secrets.token_hex(_TOKEN_BYTES)
            # Made meanwhile by another server: its token stands.
            written = store.put_new((MARKER,), made.encode() + b"\n")
            token = made if written else _read_object_token(store)
    except Exception as error:  # the storage's own errors: logged by type, never a secret
        _LOGGER.warning(
            "data root %r: its %s cannot be read or made (%s): Dask workers' view of it is "
            "not checked",
            name,
            MARKER,
            type(error).__name__,
        )
        return None
    return token


def _read_object_token(store: ObjectRoot) -> str | None:
    """The marker's token in object storage; None where it has none."""
    if store.stat((MARKER,)) is None:
        return None
    return store.read((MARKER,), 2 * _TOKEN_BYTES + 1).decode("ascii", "replace").strip()


def _read_token(directory: int) -> str | None:
    """The marker's token in the folder open as `directory`; None where it has none."""
    try:
        fd = os.open(MARKER, _READ_FLAGS, dir_fd=directory)
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, 2 * _TOKEN_BYTES + 1).decode("ascii", "replace").strip()
    finally:
        os.close(fd)


def unseen_roots(marks: RootMarks) -> list[str]:
    """Runs on a worker: the names of the roots whose marker it cannot read where it
    mounts them, or reads with another token."""
    try:
        mounts = worker_mounts()
    except ValueError:
        return sorted(marks.tokens)
    unseen = []
    for name, token in sorted(marks.tokens.items()):
        if is_object_url(marks.folders[name]):
            try:
                if _read_object_token(ObjectRoot.parse(marks.folders[name])) != token:
                    unseen.append(name)
            except Exception:  # no credentials, no route, no permission: not seen
                unseen.append(name)
            continue
        folder = mounts.get(name, Path(marks.folders[name]))
        try:
            fd = os.open(folder, _DIRECTORY_FLAGS)
        except OSError:
            unseen.append(name)
            continue
        try:
            if _read_token(fd) != token:
                unseen.append(name)
        except OSError:
            unseen.append(name)
        finally:
            os.close(fd)
    return unseen


def check_workers_see_roots(
    run_on_every_worker: Callable[..., Mapping[str, Any]], marks: RootMarks
) -> None:
    """Raise FailedPreconditionError unless every worker sees every marked root;
    `run_on_every_worker(fn, *args)` answers each worker's result by its address."""
    if not marks.tokens:
        return
    blind = {
        worker: names for worker, names in run_on_every_worker(unseen_roots, marks).items() if names
    }
    if blind:
        worker, names = sorted(blind.items())[0]
        others = f"; {len(blind) - 1} more workers miss roots too" if len(blind) > 1 else ""
        fix = (
            "give the worker the server's object-storage credentials and endpoint "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)"
            if is_object_url(marks.folders[names[0]])
            else "mount the root there, or name its folder in the worker's "
            f"RSGRPC_WORKER_DATA_ROOTS ({names[0]}=folder)"
        )
        raise FailedPreconditionError(
            f"the Dask worker {worker} does not see data root {names[0]!r}: {fix}{others}",
            metadata={"root": names[0], "worker": worker},
        )
