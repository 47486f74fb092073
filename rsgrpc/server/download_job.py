"""A download batch as a session job: fetch through the server's cache, then move answers into place.

Answers go to the cache first (sentinelhub-py's layout, written atomically by the download
library). Only when every request has ended, and the batch was not cancelled, is each good
answer copied next to its output under a temporary name and renamed into place
(`PartialOutput`: opened under the data root at that moment, no link followed), so a
cancelled or failed request never leaves a file under the data root, whole or partial.
"""

from __future__ import annotations

import contextlib
import json
import logging
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from rsgrpc.download import (
    DecodingError,
    DownloadClient,
    DownloadError,
    DownloadRequest,
    DownloadResult,
    DownloadStatus,
    MimeType,
)
from rsgrpc.engine.errors import CancelledError, RsgrpcError
from rsgrpc.engine.operations import Operation, Stage
from rsgrpc.engine.partial_output import PartialOutput
from rsgrpc.engine.paths import DataPath

# What the first bytes of a file of each checked format may be.
_SIGNATURES: Final[dict[MimeType, tuple[bytes, ...]]] = {
    MimeType.TIFF: (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    MimeType.PNG: (b"\x89PNG\r\n\x1a\n",),
    MimeType.JPG: (b"\xff\xd8\xff",),
    MimeType.JP2: (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51"),
    MimeType.ZIP: (b"PK\x03\x04", b"PK\x05\x06"),
    MimeType.GZIP: (b"\x1f\x8b",),
}
_JSON_TYPES: Final = frozenset({MimeType.JSON, MimeType.GEOJSON})


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
) -> list[DownloadOutcome]:
    """Download ``planned`` with ``client`` and save the answers; one outcome per item, in order.

    Progress goes to ``operation`` (requests done and total, bytes downloaded, bytes saved).
    Raises `CancelledError`, writing no output, when the operation is cancelled first.
    """
    total = len(planned)
    operation.update(stage=Stage.RUNNING, tiles_total=total)
    log.info("%s: %d requests to deployment %s", operation.name, total, client.deployment.name)
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
                result.error,
            )

    results = client.download_results(
        [item.request for item in planned],
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
                check_format(Path(result.output_path), item.request.data_type)
                partial = staged_files.enter_context(
                    PartialOutput(item.output, overwrite=overwrite)
                )
                partial.copy_from(Path(result.output_path))
            except DecodingError as error:
                outcomes[index] = _failed(outcomes[index], error)
                log.warning("%s: %s: %s", operation.name, item.output_path, error)
                continue
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


def check_format(path: Path, data_type: MimeType) -> None:
    """Raise `DecodingError` if the file at ``path`` is plainly not of ``data_type``.

    Image and archive formats are told by their first bytes, JSON by parsing; other
    formats are not checked.
    """
    if data_type in _JSON_TYPES:
        try:
            with path.open("rb") as file:
                json.load(file)
        except (ValueError, RecursionError) as error:
            raise DecodingError(f"the answer is not valid JSON: {error}") from None
        return
    signatures = _SIGNATURES.get(data_type)
    if signatures is None:
        return
    with path.open("rb") as file:
        head = file.read(max(len(s) for s in signatures))
    if not any(head.startswith(signature) for signature in signatures):
        raise DecodingError(
            f"the answer is not a {data_type.name} file (it starts with {head[:12]!r})"
        )
