"""A download batch as a session job: fetch through the server's cache, then put answers in place.

Answers go to the cache first (sentinelhub-py's layout, written atomically by the download
library, which checks every answer, downloaded or cached, before it is kept: a truncated
or undecodable answer fails its item and is never cached). Only when every request has
ended, and the batch was not cancelled, is each good answer staged beside its output
under a temporary name and renamed into place (`PartialOutput`: opened under the data
root at that moment, no link followed), so a cancelled or failed request never leaves a
file under the data root, whole or partial. The staged file is a hard link to the cache
entry where both are on one file system (the bytes are written once), a copy otherwise.
The batch's cache entries are pinned against eviction until their outputs are in place.
"""

from __future__ import annotations

import contextlib
import logging
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
from rsgrpc.engine.partial_output import PartialOutput
from rsgrpc.engine.paths import DataPath


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
    finished = 0
    downloaded = 0

    def on_result(result: DownloadResult) -> None:
        nonlocal finished, downloaded
        finished += 1
        downloaded += result.size_bytes
        operation.update(tiles_done=finished, bytes_read=downloaded)
        if result.status is DownloadStatus.FAILED:
            log.warning(
                "%s: request %d (%s) failed: %s",
                operation.name,
                result.index,
                _described(planned[result.index].request),
                redact(result.error),
            )

    # The batch's cache entries stay until their outputs are in place, whatever the cap.
    with download_cache.pinned(item.request.get_storage_paths()[1] for item in planned):
        results = client.download_results(
            [item.request for item in planned],
            max_threads=threads,
            progress_callback=on_result,
            cancel_event=operation.cancel_event,
        )
        if operation.cancel_event.is_set():
            raise _cancelled(finished, total)
        operation.update(stage=Stage.FINALIZING)
        outcomes = _save_outputs(planned, results, operation, log, overwrite=overwrite)
    succeeded = sum(1 for o in outcomes if o.status is DownloadStatus.SUCCEEDED)
    log.info(
        "%s: %d of %d requests saved, %d from the cache",
        operation.name,
        succeeded,
        total,
        sum(1 for o in outcomes if o.cache_hit and o.status is DownloadStatus.SUCCEEDED),
    )
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


def _save_outputs(
    planned: Sequence[PlannedDownload],
    results: Sequence[DownloadResult],
    operation: Operation,
    log: logging.Logger,
    *,
    overwrite: bool,
) -> list[DownloadOutcome]:
    """Check and stage every good answer beside its output, then rename them all into place."""
    outcomes = [_outcome(item, result) for item, result in zip(planned, results, strict=True)]
    written = 0
    with contextlib.ExitStack() as staged_files:
        staged: list[tuple[int, PartialOutput]] = []
        for index, (item, result) in enumerate(zip(planned, results, strict=True)):
            if not result.ok or result.output_path is None:
                continue
            if operation.cancel_event.is_set():
                raise _cancelled(len(results), len(results))
            try:
                partial = staged_files.enter_context(
                    PartialOutput(item.output, overwrite=overwrite)
                )
                if not partial.link_from(Path(result.output_path)):
                    partial.copy_from(Path(result.output_path))
            except RsgrpcError as error:
                outcomes[index] = _failed(outcomes[index], error)
                log.warning("%s: %s", operation.name, error)
                continue
            except OSError as error:
                # strerror, not the error itself: that names the server's own paths.
                failure = RsgrpcError(f"could not save {item.output_path!r}: {error.strerror}")
                outcomes[index] = _failed(outcomes[index], failure)
                log.error("%s: %s", operation.name, failure)
                continue
            staged.append((index, partial))
            written += result.size_bytes
            operation.update(bytes_written=written)
        if operation.cancel_event.is_set():
            raise _cancelled(len(results), len(results))
        for index, partial in staged:
            try:
                partial.publish()
            except RsgrpcError as error:
                outcomes[index] = _failed(outcomes[index], error)
                log.warning("%s: %s", operation.name, error)
    return outcomes
