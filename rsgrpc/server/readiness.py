"""Health that follows readiness: with a Dask scheduler, the raster service is SERVING only
while the scheduler answers.

A thread tries a TCP connection to the scheduler every `CHECK_SECONDS`, each try bounded
by `CONNECT_SECONDS`, and reports each change (a load balancer or Kubernetes then stops
sending raster work to a server whose cluster is gone, and sends it again once it is
back). Sessions, band sets, operations and downloads do not need the scheduler and stay
as they are.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

_LOGGER = logging.getLogger(__name__)

CHECK_SECONDS = 1.0
CONNECT_SECONDS = 1.0


def scheduler_reachable(address: str, timeout: float = CONNECT_SECONDS) -> bool:
    """Whether something accepts a TCP connection at a Dask scheduler's address
    (``tcp://host:port``, ``tls://host:port`` or ``host:port``), within `timeout` s."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        port = parts.port
    except ValueError:
        return False
    if parts.hostname is None or port is None:
        return False
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


class SchedulerWatch(threading.Thread):
    """Calls `report(reachable)` whenever the scheduler starts or stops answering, until
    `stop()`; `reachable` is what the server was last told."""

    def __init__(self, address: str, report: Callable[[bool], None], reachable: bool) -> None:
        super().__init__(name="scheduler-watch", daemon=True)
        self._address = address
        self._report = report
        self._reachable = reachable
        self._stopped = threading.Event()

    def run(self) -> None:
        last = self._reachable
        while not self._stopped.wait(CHECK_SECONDS):
            reachable = scheduler_reachable(self._address)
            if reachable != last and not self._stopped.is_set():
                _LOGGER.log(
                    logging.INFO if reachable else logging.WARNING,
                    "the Dask scheduler %s: the raster service is %s",
                    "answers" if reachable else "does not answer",
                    "SERVING" if reachable else "NOT_SERVING",
                )
                try:
                    self._report(reachable)
                except Exception:  # the server is stopping: its loop has gone
                    _LOGGER.debug("reporting the scheduler's state failed", exc_info=True)
                last = reachable

    def stop(self) -> None:
        self._stopped.set()
