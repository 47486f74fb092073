"""`DownloadClient`: downloads a batch of requests over pooled connections, through the cache.

Every request ends as a `DownloadResult`: downloaded, read from the cache, failed with a
`DownloadError` saying why, or cancelled. Attempts are paced by the deployment's shared
`RateLimiter`; a 429 pauses the whole deployment for its ``Retry-After``; 5xx answers,
connection resets and timeouts are retried with exponential backoff and full jitter;
other 4xx answers fail at once.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import requests

from . import cache
from .deployment import Deployment
from .errors import (
    AuthenticationError,
    BadRequestError,
    CacheWriteError,
    DownloadCancelledError,
    DownloadError,
    DownloadFailedWarning,
    NotFoundError,
    OutOfRequestsError,
    ServerError,
)
from .rate_limit import RateLimiter, limiter_for
from .request import DownloadRequest, MimeType, RequestType
from .response import DownloadResponse
from .result import DownloadResult, DownloadStatus
from .retry_after import parse_retry_after
from .transport import pooled_http_session

_LOGGER = logging.getLogger(__name__)

ProgressCallback = Callable[[DownloadResult], None]

UNITS_SPENT_HEADER = "X-ProcessingUnits-Spent"
_TRANSIENT_EXCEPTIONS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)
_MAX_ERROR_TEXT = 300


class _Counters:
    """Per-request counters, kept by the thread running the request."""

    __slots__ = ("attempts", "rate_limited")

    def __init__(self) -> None:
        self.attempts = 0
        self.rate_limited = 0


class DownloadClient:
    """Downloads batches of `DownloadRequest` with threads, retries, rate limits and a disk cache.

    ``deployment`` supplies rate limits, retry policy and timeouts; clients naming the same
    deployment share one rate limiter. Without one, the client gets a private limiter with no
    rate (429 answers still pause it). ``config`` accepts a sentinelhub-py ``SHConfig``
    instead. ``default_retry_time`` (seconds) is the pause after a 429 without ``Retry-After``.

    A client is thread-safe and keeps its connections open between batches: reuse it, and
    `close` it (or use it as a context manager) when done.
    """

    def __init__(
        self,
        *,
        redownload: bool = False,
        raise_download_errors: bool = True,
        config: Any | None = None,
        deployment: Deployment | None = None,
        default_retry_time: float = 30.0,
    ):
        self.redownload = redownload
        self.raise_download_errors = raise_download_errors
        self.default_retry_time = float(default_retry_time)
        if deployment is None and config is not None:
            deployment = Deployment.from_sh_config(config)
        self._shared_limiter = deployment is not None
        self.deployment = deployment if deployment is not None else Deployment(name="")
        self._limiter = self._make_limiter()
        self._http_lock = threading.Lock()
        self._http: requests.Session | None = None
        self._pool_size = 0
        self._random = random.Random()

    def _make_limiter(self) -> RateLimiter:
        if self._shared_limiter:
            return limiter_for(self.deployment)
        return RateLimiter.from_deployment(self.deployment)

    @property
    def rate_limiter(self) -> RateLimiter:
        """The limiter pacing this client (shared with every client of its deployment)."""
        return self._limiter

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_limiter", "_http_lock", "_http", "_random"):
            del state[name]
        state["_pool_size"] = 0
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._limiter = self._make_limiter()
        self._http_lock = threading.Lock()
        self._http = None
        self._random = random.Random()

    def __enter__(self) -> DownloadClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections; the client reopens them if used again."""
        with self._http_lock:
            if self._http is not None:
                self._http.close()
            self._http = None
            self._pool_size = 0

    def download(
        self,
        download_requests: Iterable[DownloadRequest] | DownloadRequest,
        max_threads: int | None = None,
        decode_data: bool = True,
        show_progress: bool = False,
        *,
        progress_callback: ProgressCallback | None = None,
        cancel_event: threading.Event | None = None,
    ) -> list[Any]:
        """Download the requests and return their data in request order (sentinelhub-py's API).

        Each item is the decoded data, or a `DownloadResponse` with ``decode_data=False``, or
        None when the request does not return data or failed. After the whole batch has run,
        the first failure in request order is raised if ``raise_download_errors``, else each
        failure is warned as `DownloadFailedWarning`. For per-request outcomes use
        `download_results`.
        """
        single = isinstance(download_requests, DownloadRequest)
        batch = [download_requests] if single else download_requests
        results = self.download_results(
            batch,  # type: ignore[arg-type]
            max_threads=max_threads,
            decode_data=decode_data,
            show_progress=show_progress,
            progress_callback=progress_callback,
            cancel_event=cancel_event,
        )
        for result in results:
            if result.error is None:
                continue
            if self.raise_download_errors:
                raise result.error
            warnings.warn(str(result.error), category=DownloadFailedWarning, stacklevel=2)
        data = [result.data for result in results]
        return data[0] if single else data

    def download_results(
        self,
        download_requests: Iterable[DownloadRequest],
        *,
        max_threads: int | None = None,
        decode_data: bool = True,
        show_progress: bool = False,
        progress_callback: ProgressCallback | None = None,
        cancel_event: threading.Event | None = None,
    ) -> list[DownloadResult]:
        """Run every request and return one `DownloadResult` each, in request order; never raises
        for a request's failure.

        ``progress_callback(result)`` is called once per finished request, from the calling
        thread, in completion order. ``cancel_event`` is checked before each request and each
        attempt starts and while waiting; requests not yet started end as CANCELLED.
        ``max_threads`` defaults to ``min(32, cpu_count + 4)`` and sizes the connection pool.
        """
        batch = list(download_requests)
        results: list[DownloadResult | None] = [None] * len(batch)
        if not batch:
            return []
        threads = max_threads or min(32, (os.cpu_count() or 1) + 4)
        if self.deployment.max_concurrent_requests:
            threads = min(threads, self.deployment.max_concurrent_requests)
        threads = max(1, min(threads, len(batch)))
        http = self._http_session(threads)
        done = 0
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="download") as executor:
            futures = {
                executor.submit(self._run_one, index, item, decode_data, http, cancel_event): index
                for index, item in enumerate(batch)
            }
            for future in as_completed(futures):
                result = future.result()
                results[futures[future]] = result
                done += 1
                if progress_callback is not None:
                    progress_callback(result)
                if show_progress:
                    print(f"\rdownloaded {done}/{len(batch)}", end="", file=sys.stderr, flush=True)
        if show_progress:
            print(file=sys.stderr)
        return results  # type: ignore[return-value]

    def _http_session(self, threads: int) -> requests.Session:
        with self._http_lock:
            if self._http is None or self._pool_size < threads:
                # A smaller pool in use by another batch is left to finish and be collected.
                self._http = pooled_http_session(threads)
                self._pool_size = threads
            return self._http

    def _run_one(
        self,
        index: int,
        item: Any,
        decode_data: bool,
        http: requests.Session,
        cancel_event: threading.Event | None,
    ) -> DownloadResult:
        started = time.monotonic()
        counters = _Counters()
        request: DownloadRequest | None = None
        output_path: str | None = None

        def finish(status: DownloadStatus, **values: Any) -> DownloadResult:
            return DownloadResult(
                index=index,
                request=request,
                status=status,
                output_path=output_path,
                attempts=counters.attempts,
                rate_limited=counters.rate_limited,
                elapsed_seconds=time.monotonic() - started,
                **values,
            )

        try:
            request = DownloadRequest.coerce(item)
            _, output_path = request.get_storage_paths()
            if cancel_event is not None and cancel_event.is_set():
                raise DownloadCancelledError("cancelled before the request started")
            request.raise_if_invalid()
            if not (request.save_response or request.return_data):
                return finish(DownloadStatus.SUCCEEDED)
            response, cache_hit = None, False
            if not self.redownload and cache.is_cached(request):
                if not request.return_data:
                    size = os.path.getsize(output_path) if output_path else 0
                    return finish(DownloadStatus.SUCCEEDED, cache_hit=True, size_bytes=size)
                response = self._read_cache(request)
                cache_hit = response is not None
            if response is None:
                response = self._execute_download(request, http, counters, cancel_event)
                if request.save_response:
                    try:
                        cache.write_cached(response)
                    except OSError as error:
                        # strerror, not the error itself: that names the server's cache folder.
                        raise CacheWriteError(
                            f"could not write the answer to the cache: {error.strerror}",
                            url=request.url,
                        ) from None
            else:
                _LOGGER.debug("Read %s from the cache", output_path)
            data: Any = None
            if request.return_data:
                data = response.decode() if decode_data else response
            return finish(
                DownloadStatus.SUCCEEDED,
                cache_hit=cache_hit,
                size_bytes=len(response.content),
                data=data,
            )
        except DownloadCancelledError as error:
            return finish(DownloadStatus.CANCELLED, error=error)
        except DownloadError as error:
            _LOGGER.debug("Request %d failed: %s", index, error)
            return finish(DownloadStatus.FAILED, error=error)

    @staticmethod
    def _read_cache(request: DownloadRequest) -> DownloadResponse | None:
        try:
            return cache.read_cached(request)
        except (OSError, ValueError) as error:
            # Unreadable entries (not ours: ours are complete) are downloaded again and replaced.
            _LOGGER.warning("Ignoring an unreadable cache entry for %s: %s", request.url, error)
            return None

    def _prepare_headers(self, request: DownloadRequest) -> tuple[dict[str, Any], str | None]:
        """Headers for an attempt, and the access token they carry (None without a session)."""
        return dict(request.headers), None

    def _on_unauthorized(self, access_token: str) -> None:
        """Re-authenticate after a 401; clients without a session cannot."""
        raise AuthenticationError("the server answered 401 Unauthorized", status_code=401)

    def _execute_download(
        self,
        request: DownloadRequest,
        http: requests.Session,
        counters: _Counters,
        cancel_event: threading.Event | None,
    ) -> DownloadResponse:
        deployment = self.deployment
        retry = deployment.retry
        timeout = (deployment.connect_timeout_seconds, deployment.read_timeout_seconds)
        method = RequestType(request.request_type).value
        transient_failures = 0
        reauthenticated = False
        while True:
            response: requests.Response | None = None
            failure = ""
            # The token first: waiting for it inside a rate slot would bunch requests together.
            headers, access_token = self._prepare_headers(request)
            with self._limiter.slot(cancel_event) as reserved_units:
                counters.attempts += 1
                _LOGGER.debug("Sending %s %s (attempt %d)", method, request.url, counters.attempts)
                try:
                    response = http.request(
                        method,
                        request.url,  # type: ignore[arg-type]
                        json=request.post_values,
                        headers=headers,
                        timeout=timeout,
                    )
                    content = response.content
                except _TRANSIENT_EXCEPTIONS as error:
                    response = None
                    failure = _describe_exception(error)
            if response is not None:
                self._settle_units(response, reserved_units)
                status = response.status_code
                if status < 400:
                    return DownloadResponse(
                        request=request,
                        content=content,
                        headers=dict(response.headers),
                        status_code=status,
                        elapsed=response.elapsed.total_seconds(),
                    )
                if status == 429:
                    counters.rate_limited += 1
                    wait = parse_retry_after(
                        response.headers.get("Retry-After"), deployment.retry_after_unit
                    )
                    wait = self.default_retry_time if wait is None else wait
                    self._limiter.pause(min(wait, deployment.max_retry_after_seconds))
                    if counters.rate_limited > retry.max_rate_limit_retries:
                        raise OutOfRequestsError(
                            f"still rate limited after {retry.max_rate_limit_retries} retries",
                            url=request.url,
                            status_code=status,
                        )
                    _LOGGER.debug("Rate limited; pausing %s for %.3f s", deployment.name, wait)
                    continue
                if status == 401 and access_token is not None and not reauthenticated:
                    reauthenticated = True
                    self._on_unauthorized(access_token)
                    continue
                if status in (401, 403):
                    raise AuthenticationError(
                        f"the server answered {status}: {_error_text(response)}",
                        url=request.url,
                        status_code=status,
                    )
                if status < 500:
                    error_class = NotFoundError if status == 404 else BadRequestError
                    raise error_class(
                        f"the server answered {status}: {_error_text(response)}",
                        url=request.url,
                        status_code=status,
                    )
                failure = f"HTTP {status}: {_error_text(response)}"
            transient_failures += 1
            if transient_failures >= retry.max_attempts:
                raise ServerError(
                    f"failed {transient_failures} times, last with {failure}",
                    url=request.url,
                    status_code=response.status_code if response is not None else None,
                )
            delay = retry.backoff_seconds(transient_failures, self._random.random())
            _LOGGER.debug("Attempt failed with %s; retrying in %.3f s", failure, delay)
            if cancel_event is not None:
                if cancel_event.wait(delay):
                    raise DownloadCancelledError(
                        "cancelled while waiting to retry", url=request.url
                    )
            elif delay > 0:
                time.sleep(delay)

    def _settle_units(self, response: requests.Response, reserved_units: float) -> None:
        spent = response.headers.get(UNITS_SPENT_HEADER)
        if spent is None:
            return
        try:
            units = float(spent)
        except ValueError:
            return
        if units >= 0:
            self._limiter.settle_units(reserved_units, units)

    def get_json(
        self,
        url: str,
        post_values: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
        request_type: RequestType | None = None,
        **kwargs: Any,
    ) -> Any:
        """Download one JSON document (sentinelhub-py's helper); raises on failure."""
        if request_type is None:
            request_type = RequestType.GET if post_values is None else RequestType.POST
        request = DownloadRequest(
            url=url,
            headers=headers or {},
            request_type=request_type,
            post_values=post_values,
            data_type=MimeType.JSON,
            **kwargs,
        )
        result = self.download_results([request], max_threads=1)[0]
        if result.error is not None:
            raise result.error
        return result.data


def _describe_exception(error: Exception) -> str:
    if isinstance(error, requests.Timeout):
        return "a timeout"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return "a connection broken mid-answer"
    return "a connection error"


def _error_text(response: requests.Response) -> str:
    """The server's own message: Sentinel Hub's ``error.message`` or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:_MAX_ERROR_TEXT]
        if isinstance(error, str):
            return error[:_MAX_ERROR_TEXT]
    text = response.text.strip()
    return json.dumps(text[:_MAX_ERROR_TEXT]) if text else response.reason or "no message"
