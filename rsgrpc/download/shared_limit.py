"""A request rate shared by every process on one host: a token bucket kept in a small locked file.

Two servers, or a server and a script, naming the same deployment and the same folder
keep to the deployment's rate together instead of each taking all of it. The bucket is
the generic cell rate algorithm of `rate_limit` (a theoretical arrival time, equivalent to
tokens and a timestamp) plus the end of the latest pause after a 429, both in wall-clock
seconds so that every process reads them alike. A request reserves its start under an
exclusive ``fcntl.flock`` on the file, then sleeps without holding it; nothing is reserved
for a request that could not start before its caller's deadline.

Every process must be configured with the same rate and burst; the file holds only the
state, so a process with a higher rate takes more than its share.

Lock order: ``SharedRateLimit._lock`` (threads of this process) is taken before the file
lock, and both are leaves: nothing else is taken while they are held.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import struct
import threading
import time
from pathlib import Path
from typing import Final

from .rate_limit import check_deadline

# Theoretical arrival time of the next request and the end of the pause, in time.time().
_STATE: Final = struct.Struct("<dd")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def state_file_name(deployment_name: str) -> str:
    """The bucket file of a deployment: its name made safe for a file, plus a short digest so
    that two names made alike never share a bucket."""
    digest = hashlib.sha256(deployment_name.encode()).hexdigest()[:12]
    readable = _UNSAFE.sub("_", deployment_name).strip("._")[:60] or "deployment"
    return f"{readable}-{digest}.bucket"


class SharedRateLimit:
    """The request rate of one deployment, shared through ``folder`` by every process that
    names it. Thread-safe and fork-safe (a forked child opens the file again, since a lock
    taken through an inherited descriptor would not exclude the parent)."""

    def __init__(
        self, folder: str | os.PathLike[str], deployment_name: str, rate: float, burst: float
    ):
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        directory = Path(folder).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / state_file_name(deployment_name)
        self._lock = threading.Lock()
        self._fd = -1
        self._pid = -1
        with self._lock:
            self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        self._pid = os.getpid()

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0 and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - nothing to do at collection
            pass

    def _locked_state(self) -> _LockedState:
        if self._pid != os.getpid() or self._fd < 0:
            self._open()
        return _LockedState(self._fd)

    def reserve(
        self, not_before: float = 0.0, deadline: float | None = None
    ) -> tuple[float, float]:
        """Reserve the earliest start for one request, no sooner than ``not_before`` seconds
        from now; return ``(seconds to wait, the start as time.time())``.

        Raises `DeadlineExceededError`, reserving nothing, if the start would pass
        ``deadline`` (a ``time.monotonic`` moment).
        """
        headroom = (self.burst - 1.0) / self.rate
        with self._lock, self._locked_state() as state:
            wall, now = time.time(), time.monotonic()
            start = max(wall + max(0.0, not_before), state.pause_until, state.tat - headroom)
            wait = start - wall
            check_deadline(deadline, wait, "waiting for the shared rate limit", now)
            state.tat = max(state.tat, start) + 1.0 / self.rate
            return wait, start

    def paused_after(self, start: float) -> bool:
        """Whether a 429 seen by any process since a reservation starting at ``start`` (as
        `reserve` gave it) holds that request back: it must then reserve again."""
        with self._lock, self._locked_state() as state:
            return state.pause_until > start

    def pause(self, seconds: float) -> float:
        """Hold every process's requests back for ``seconds``; after the pause one request
        may go at once and the rest follow at the rate. Returns the pause's end."""
        with self._lock, self._locked_state() as state:
            until = max(state.pause_until, time.time() + max(0.0, seconds))
            state.pause_until = until
            state.tat = max(state.tat, until + (self.burst - 1.0) / self.rate)
            return until


class _LockedState:
    """The file's state under an exclusive lock, written back on a clean exit."""

    def __init__(self, fd: int):
        self._fd = fd
        self.tat = 0.0
        self.pause_until = 0.0

    def __enter__(self) -> _LockedState:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(self._fd, _STATE.size, 0)
            if len(raw) == _STATE.size:
                tat, pause_until = _STATE.unpack(raw)
                # A damaged file starts a fresh bucket rather than blocking forever.
                horizon = time.time() + 365 * 86400.0
                if all(0.0 <= value < horizon for value in (tat, pause_until)):
                    self.tat, self.pause_until = tat, pause_until
        except BaseException:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            raise
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        try:
            if kind is None:
                os.pwrite(self._fd, _STATE.pack(self.tat, self.pause_until), 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
