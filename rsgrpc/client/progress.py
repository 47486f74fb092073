"""Progress of an operation, reported as Remotior reports it.

Remotior calls its progress callback with keyword arguments: ``process`` (the tool's
name, e.g. "band sieve"), ``step`` (0 to 100), ``message``, ``percentage``,
``elapsed_time`` (seconds or None) and ``previous_step``, plus ``start=True`` first,
``end=True`` or ``failed=True`` last (with step and percentage 100), and ``ping`` in
between. Here the steps come from the server's units of work (tiles, or requests of a
download), spread over 1 to 99 as Remotior spreads its processes' progress.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rsgrpc.v1 import operation_pb2

_STAGES = operation_pb2.OperationMetadata.Stage


class ProgressReport:
    """One operation's progress, sent to a Remotior callback and an OperationMetadata one."""

    def __init__(
        self,
        process: str,
        callback: Callable[..., Any] | None,
        operation_callback: Callable[[operation_pb2.OperationMetadata], Any] | None,
        *,
        announce: bool = True,
    ) -> None:
        self._process = process
        self._callback = callback
        self._operation_callback = operation_callback
        self._announce = announce
        self._step = 0
        self._ping = 0
        self._elapsed: float | None = None

    def start(self) -> None:
        if self._callback is not None and self._announce:
            self._callback(
                process=self._process,
                step=0,
                message="starting",
                percentage=False,
                elapsed_time=None,
                previous_step=0,
                start=True,
            )

    def update(self, metadata: operation_pb2.OperationMetadata) -> None:
        if self._operation_callback is not None:
            self._operation_callback(metadata)
        self._elapsed = metadata.elapsed.ToNanoseconds() / 1e9
        if self._callback is None or metadata.stage == _STAGES.STAGE_DONE:
            return
        fraction = metadata.tiles_done / metadata.tiles_total if metadata.tiles_total else 0.0
        step = int(1 + 98 * fraction)
        previous, self._step = self._step, max(self._step, step)
        if step <= previous:
            self._ping = 1 - self._ping
        self._callback(
            process=self._process,
            step=self._step,
            message=_STAGES.Name(metadata.stage).removeprefix("STAGE_").lower(),
            percentage=int(100 * fraction),
            elapsed_time=self._elapsed,
            previous_step=previous,
            start=None,
            ping=self._ping,
        )

    def finish(self, *, failed: bool) -> None:
        if self._callback is None:
            return
        ending = {"failed": True} if failed else {"end": True}
        self._callback(
            process=self._process,
            message="failed" if failed else "finished",
            percentage=100,
            elapsed_time=self._elapsed,
            step=100,
            previous_step=100,
            **ending,
        )
