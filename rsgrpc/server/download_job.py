"""A download batch as a session job: fetch through the server's cache, then put answers in place.

Answers go to the cache first (sentinelhub-py's layout, written atomically by the download
library, which checks every answer, downloaded or cached, before it is kept: a truncated
or undecodable answer fails its item and is never cached). Each good answer is staged
beside its output under a locked temporary name as soon as it arrives, while the other
requests run (`PartialOutput`: opened under the data root at that moment, no link
followed); only when every request has ended, and the batch was not cancelled, are they
all renamed into place. A cancelled or failed batch removes what it staged, so it never
leaves a file under the data root, whole or partial. The staged file is a hard link to the cache
entry where both are on one file system (the bytes are written once), a copy otherwise.
The batch's cache entries are pinned against eviction until their outputs are in place.
"""

from __future__ import annotations

import contextlib
import logging
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rsgrpc.download import (
    DownloadClient,
    DownloadError,
    DownloadRequest,
    DownloadResult,
    DownloadStatus,
)
from rsgrpc.download import cache as download_cache
from rsgrpc.download.redaction import redact, redact_logger
from rsgrpc.engine.errors import CancelledError, RsgrpcError
from rsgrpc.engine.operations import Operation, Stage
from rsgrpc.engine.partial_output import PartialOutput, partial_output
from rsgrpc.engine.paths import DataPath

# The most often a batch's progress reaches its watchers.
_PROGRESS_INTERVAL_S = 0.05


@dataclass(frozen=True)
class PlannedDownload:
    """One checked item of a batch: the library request (cached under the server's cache
    folder) and where its answer goes."""

    request: DownloadRequest
    output: DataPath  # checked under the data root, opened when the answer is saved
    output_path: str  # as the client wrote it


@dataclass(frozen=True)
class DownloadOutcome:
    """How one item ended, as the service reports it."""

    status: DownloadStatus
    output_path: str
    size_bytes: int = 0
    cache_hit: bool = False
    attempts: int = 0
    error: DownloadError | RsgrpcError | None = None


def run_download_batch(
    client: DownloadClient,
    planned: Sequence[PlannedDownload],
    operation: Operation,
    log: logging.Logger,
    *,
    overwrite: bool,
    threads: int,
) -> list[DownloadOutcome]:
    """Download ``planned`` with ``client`` on ``threads`` threads and save the answers; one
    outcome per item, in order.

    Progress goes to ``operation`` (requests done and total, bytes downloaded, bytes saved).
    Raises `CancelledError`, writing no output, when the operation is cancelled first.
    """
    total = len(planned)
    redact_logger(log)  # whatever an error quotes, no credential reaches the session log
    operation.update(stage=Stage.RUNNING, tiles_total=total)
    log.info(
        "%s: %d requests to deployment %s on %d threads",
        operation.name,
        total,
        client.deployment.name,
        threads,
    )
    # The batch's cache entries stay until their outputs are in place, whatever the cap.
    with (
        download_cache.pinned(item.request.get_storage_paths()[1] for item in planned),
        _Outputs(planned, operation, log, overwrite=overwrite) as outputs,
    ):
        results = client.download_results(
            [item.request for item in planned],
            max_threads=threads,
            progress_callback=outputs.stage,
            cancel_event=operation.cancel_event,
        )
        if operation.cancel_event.is_set():
            raise _cancelled(outputs.finished, total)
        operation.update(stage=Stage.FINALIZING, **outputs.progress())
        outcomes = outputs.publish(results)
    succeeded = sum(1 for o in outcomes if o.status is DownloadStatus.SUCCEEDED)
    log.info(
        "%s: %d of %d requests saved, %d from the cache",
        operation.name,
        succeeded,
        total,
        sum(1 for o in outcomes if o.cache_hit and o.status is DownloadStatus.SUCCEEDED),
    )
    return outcomes


class _Outputs:
    """The batch's outputs: each good answer staged beside its output as it arrives (while
    the other requests still run), all published once every request has ended; removed,
    published or not, on leaving. Progress reaches the operation at most every
    `_PROGRESS_INTERVAL_S`, and at the last answer."""

    def __init__(
        self,
        planned: Sequence[PlannedDownload],
        operation: Operation,
        log: logging.Logger,
        *,
        overwrite: bool,
    ) -> None:
        self._planned = planned
        self._operation = operation
        self._log = log
        self._overwrite = overwrite
        self._files = contextlib.ExitStack()
        self._staged: dict[int, PartialOutput] = {}
        self._failures: dict[int, RsgrpcError] = {}
        self.finished = self._downloaded = self._written = 0
        self._reported = 0.0

    def __enter__(self) -> _Outputs:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._files.close()

    def progress(self) -> dict[str, int]:
        return {
            "tiles_done": self.finished,
            "bytes_read": self._downloaded,
            "bytes_written": self._written,
        }

    def stage(self, result: DownloadResult) -> None:
        """Take one finished request's result (in the job's thread, as the others run)."""
        self.finished += 1
        self._downloaded += result.size_bytes
        index, item = result.index, self._planned[result.index]
        if result.status is DownloadStatus.FAILED:
            self._log.warning(
                "%s: request %d (%s) failed: %s",
                self._operation.name,
                index,
                _described(item.request),
                redact(result.error),
            )
        elif (
            result.ok
            and result.output_path is not None
            and not self._operation.cancel_event.is_set()
        ):
            self._stage_file(index, item, Path(result.output_path), result.size_bytes)
        now = time.monotonic()
        if self.finished == len(self._planned) or now - self._reported >= _PROGRESS_INTERVAL_S:
            self._reported = now
            self._operation.update(**self.progress())

    def _stage_file(self, index: int, item: PlannedDownload, answer: Path, size: int) -> None:
        try:
            partial = self._files.enter_context(
                partial_output(item.output, overwrite=self._overwrite)
            )
            if not partial.link_from(answer):
                partial.copy_from(answer)
        except RsgrpcError as error:
            self._failures[index] = error
            self._log.warning("%s: %s", self._operation.name, error)
            return
        except OSError as error:
            # strerror, not the error itself: that names the server's own paths.
            failure = RsgrpcError(f"could not save {item.output_path!r}: {error.strerror}")
            self._failures[index] = failure
            self._log.error("%s: %s", self._operation.name, failure)
            return
        self._staged[index] = partial
        self._written += size

    def publish(self, results: Sequence[DownloadResult]) -> list[DownloadOutcome]:
        """Put every staged answer in place; one outcome per item, in order."""
        outcomes = [
            _outcome(item, result) for item, result in zip(self._planned, results, strict=True)
        ]
        for index, error in self._failures.items():
            outcomes[index] = _failed(outcomes[index], error)
        if self._operation.cancel_event.is_set():
            raise _cancelled(len(results), len(results))
        for index, partial in sorted(self._staged.items()):
            try:
                partial.publish()
            except RsgrpcError as error:
                outcomes[index] = _failed(outcomes[index], error)
                self._log.warning("%s: %s", self._operation.name, error)
        return outcomes


def _cancelled(finished: int, total: int) -> CancelledError:
    return CancelledError(
        f"the download was cancelled after {finished} of {total} requests had ended; "
        "no output was written (finished answers are kept in the server's cache)"
    )


def _described(request: DownloadRequest) -> str:
    """Method and path of a request for the log; the query may hold anything, so it is left out."""
    return f"{request.request_type.value} {urllib.parse.urlsplit(request.url or '').path}"


def _outcome(item: PlannedDownload, result: DownloadResult) -> DownloadOutcome:
    return DownloadOutcome(
        status=result.status,
        output_path=item.output_path,
        size_bytes=result.size_bytes,
        cache_hit=result.cache_hit,
        attempts=result.attempts,
        error=result.error,
    )


def _failed(outcome: DownloadOutcome, error: DownloadError | RsgrpcError) -> DownloadOutcome:
    return replace(outcome, status=DownloadStatus.FAILED, error=error)
