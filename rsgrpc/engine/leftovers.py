"""What dead server instances left under the roots, found and removed when a server starts.

A server killed outright (SIGKILL, a crash, a lost machine) leaves the partial
outputs it was writing under its data roots (every one) and its folder of session
directories in the temporary root (`rsgrpc.engine.instance`). Each carries an
instance's marker in its name and was locked (`flock`) by the live server; a
lock dies with its process. So what matches a marker and can be locked now was
left by an instance that is gone, and is removed; what a live server holds,
whatever process it is, cannot be locked and is left alone.

Each data root is walked by directory descriptor, never following a symbolic
link, and a file is removed only if its name still leads to the very file
found unlocked. A root inside another is walked once, as part of the outer
one. A large data root takes a while to walk: the sweep runs in a thread of
its own, beside the serving server.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
from collections.abc import Sequence
from pathlib import Path

from rsgrpc.engine.instance import folder_instance, lock_if_unheld, partial_instance
from rsgrpc.engine.object_store import ObjectRoot

_LOGGER = logging.getLogger(__name__)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_leftovers_in_background(
    data_roots: Sequence[Path | ObjectRoot], temp_root: Path
) -> threading.Thread:
    """Start removing, in a daemon thread, the partial outputs under each folder of
    `data_roots` (the primary first; object storage holds none: its outputs are staged in
    the instance's folder) and the folders in `temp_root` that dead instances left; each
    removal is logged with its path relative to its root, and the root's number (from 1,
    the primary) past the first. Returns the thread."""
    thread = threading.Thread(
        target=_remove_leftovers,
        args=(tuple(data_roots), temp_root),
        name="leftovers",
        daemon=True,
    )
    thread.start()
    return thread


def _remove_leftovers(data_roots: tuple[Path | ObjectRoot, ...], temp_root: Path) -> None:
    try:
        folders = _remove_dead_folders(temp_root)
    except Exception:
        _LOGGER.exception("removing what dead server instances left failed")
        return
    partials = 0
    folders_given = [root for root in data_roots if isinstance(root, Path)]
    for number, data_root in enumerate(data_roots, start=1):
        if not isinstance(data_root, Path):
            continue
        if any(data_root.is_relative_to(other) for other in folders_given if other != data_root):
            continue  # resolved, so walked with the root it is in: no link leads to it
        try:
            partials += _remove_dead_partials(data_root, number)
        except Exception:  # one root failing leaves the others swept
            _LOGGER.exception(
                "removing what dead server instances left in data root %d failed", number
            )
    _LOGGER.info(
        "leftovers of dead server instances: %d partial outputs and %d temporary folders removed",
        partials,
        folders,
    )


def _remove_dead_folders(temp_root: Path) -> int:
    try:
        names = os.listdir(temp_root)
    except FileNotFoundError:
        return 0
    removed = 0
    for name in names:
        instance = folder_instance(name)
        if instance is None:
            continue
        try:
            fd = os.open(temp_root / name, _FOLDER_FLAGS)
        except OSError:  # gone meanwhile, or not a directory
            continue
        try:
            if not lock_if_unheld(fd):
                continue
            # Removed under the lock: no server can claim the folder meanwhile.
            shutil.rmtree(temp_root / name, ignore_errors=True)
        finally:
            os.close(fd)
        _LOGGER.info("removed temporary folder %s, left by server instance %s", name, instance)
        removed += 1
    return removed


def _remove_dead_partials(data_root: Path, number: int = 1) -> int:
    removed = 0
    for folder, _, files, folder_fd in os.fwalk(data_root, follow_symlinks=False):
        for name in files:
            instance = partial_instance(name)
            if instance is None or not _remove_if_unlocked(name, folder_fd):
                continue
            shown = os.path.relpath(os.path.join(folder, name), data_root)
            if number > 1:
                shown = f"{shown} (data root {number})"
            _LOGGER.info("removed partial output %s, left by server instance %s", shown, instance)
            removed += 1
    return removed


def _remove_if_unlocked(name: str, folder_fd: int) -> bool:
    """Remove the regular file `name` of the open folder if no process locks it."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=folder_fd)
    except OSError:  # gone meanwhile, a link, or unreadable
        return False
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or not lock_if_unheld(fd):
            return False
        if not os.path.samestat(os.stat(name, dir_fd=folder_fd, follow_symlinks=False), found):
            return False
        os.unlink(name, dir_fd=folder_fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
