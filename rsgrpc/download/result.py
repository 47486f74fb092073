"""The outcome of one request in a batch: what a caller or a service reports per request."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import DownloadError
from .request import DownloadRequest


class DownloadStatus(Enum):
    """How a request ended."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class DownloadResult:
    """One request's outcome, in the batch's request order.

    - ``index``: position of the request in the batch.
    - ``output_path``: the cached response file, when the request has a data folder.
    - ``size_bytes``: bytes of the answer (downloaded or read from the cache).
    - ``cache_hit``: the answer came from the cache, no HTTP request was sent.
    - ``attempts``: HTTP requests sent for it (0 on a cache hit).
    - ``rate_limited``: 429 answers it received.
    - ``error``: why it failed or was cancelled, else None.
    - ``data``: decoded data (or a `DownloadResponse` without decoding) if the request
      asked for it to be returned.
    """

    index: int
    request: DownloadRequest | None
    status: DownloadStatus
    output_path: str | None = None
    size_bytes: int = 0
    cache_hit: bool = False
    attempts: int = 0
    rate_limited: int = 0
    elapsed_seconds: float = 0.0
    error: DownloadError | None = None
    data: Any = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status is DownloadStatus.SUCCEEDED
