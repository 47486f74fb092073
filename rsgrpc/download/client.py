"""`DownloadClient`: downloads a batch of requests over pooled connections, through the cache.

Every request ends as a `DownloadResult`: downloaded, read from the cache, failed with a
`DownloadError` saying why, or cancelled. Attempts are paced by the deployment's shared
`RateLimiter`; a 429 pauses the whole deployment for its ``Retry-After``; 5xx answers,
connection resets, timeouts and broken answers are retried with exponential backoff and
full jitter; other 4xx answers fail at once. Every wait ends at the caller's deadline.

Bodies stream to a temporary file as they arrive (memory per request stays bounded, however
large the answer), beside the cache entry they become. Each answer is checked before it is
kept (`validation`: its length against Content-Length, and that it decodes as its type);
only then is it renamed into the cache. A cache entry that does not check out is dropped
and fetched again. Error texts and log lines are redacted (`redaction`): whatever an
upstream echoes, no token or secret leaves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import requests

from . import cache, validation
from .deployment import Deployment
from .errors import (
    AuthenticationError,
    BadRequestError,
    CacheCollisionError,
    CacheWriteError,
    DecodingError,
    DownloadCancelledError,
    DownloadError,
    DownloadFailedWarning,
    IncompleteAnswerError,
    NotFoundError,
    OutOfRequestsError,
    ServerError,
    SharedLimitUnavailableError,
)
from .rate_limit import RateLimiter, check_deadline, limiter_for, wait_or_cancel
from .redaction import redact, redact_logger, register_secret
from .request import DownloadRequest, MimeType, RequestType
from .response import DownloadResponse, header_value, response_type_of
from .result import DownloadResult, DownloadStatus
from .retry_after import parse_retry_after
from .session import deadline_scope
from .transport import pooled_http_session

_LOGGER = redact_logger(logging.getLogger(__name__))

ProgressCallback = Callable[[DownloadResult], None]

UNITS_SPENT_HEADER = "X-ProcessingUnits-Spent"
_TRANSIENT_EXCEPTIONS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)
_MAX_ERROR_TEXT = 300
# How much of an error answer is read to find its message.
_MAX_ERROR_BODY = 64 << 10
# Bodies are written to disk in pieces of this size: the memory a request holds.
_PIECE_BYTES = 1 << 20


class _Counters:
    """Per-request counters, kept by the thread running the request."""

    __slots__ = ("attempts", "rate_limited")

    def __init__(self) -> None:
        self.attempts = 0
        self.rate_limited = 0


class _Answer:
    """A body being received into a temporary file, with its answer's metadata."""

    def __init__(
        self,
        path: str,
        descriptor: int,
        headers: dict[str, Any],
        status_code: int,
        elapsed: float,
        in_cache: bool,
    ):
        self.in_cache = in_cache
        self.path = path
        self.descriptor = descriptor
        self.headers = headers
        self.status_code = status_code
        self.elapsed = elapsed
        self.size = 0
        self.committed = False

    @classmethod
    def start(cls, request: DownloadRequest, response: requests.Response) -> _Answer:
        _, response_path = request.get_storage_paths()
        try:
            in_cache = request.save_response and response_path is not None
            if in_cache:
                descriptor, path = cache.partial_file(response_path)  # type: ignore[arg-type]
            else:
                descriptor, path = tempfile.mkstemp(prefix=".rsgrpc-download-", suffix=".part")
        except OSError as error:
            raise CacheWriteError(
                f"could not write the answer to the cache: {error.strerror}", url=request.url
            ) from None
        return cls(
            path,
            descriptor,
            dict(response.headers),
            response.status_code,
            response.elapsed.total_seconds(),
            in_cache,
        )

    def close_file(self) -> None:
        if self.descriptor >= 0:
            os.close(self.descriptor)
            self.descriptor = -1

    def discard(self) -> None:
        """Close the file, and remove it unless it went into the cache."""
        self.close_file()
        if self.committed:
            return
        if self.in_cache:
            cache.remove_partial(self.path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class DownloadClient:
    """Downloads batches of `DownloadRequest` with threads, retries, rate limits and a disk cache.

    ``deployment`` supplies rate limits, retry policy and timeouts; clients naming the same
    deployment share one rate limiter. Without one, the client gets a private limiter with no
    rate (429 answers still pause it). ``config`` accepts a sentinelhub-py ``SHConfig``
    instead. ``default_retry_time`` (seconds) is the pause after a 429 without ``Retry-After``
    (default: the deployment's ``default_retry_after_seconds``). ``cache_max_bytes`` caps
    each data folder the client caches in, evicting the least recently used answers
    (default: the deployment's ``cache_max_bytes``; None: no cap).

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
        default_retry_time: float | None = None,
        cache_max_bytes: int | None = None,
    ):
        self.redownload = redownload
        self.raise_download_errors = raise_download_errors
        if deployment is None and config is not None:
            deployment = Deployment.from_sh_config(config)
        self._shared_limiter = deployment is not None
        self.deployment = deployment if deployment is not None else Deployment(name="")
        register_secret(self.deployment.client_secret)
        self.default_retry_time = float(
            self.deployment.default_retry_after_seconds
            if default_retry_time is None
            else default_retry_time
        )
        if cache_max_bytes is not None and cache_max_bytes < 1:
            raise ValueError(f"cache_max_bytes must be at least 1, got {cache_max_bytes}")
        self.cache_max_bytes = (
            self.deployment.cache_max_bytes if cache_max_bytes is None else cache_max_bytes
        )
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
        timeout: float | None = None,
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
            timeout=timeout,
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
        timeout: float | None = None,
    ) -> list[DownloadResult]:
        """Run every request and return one `DownloadResult` each, in request order; never raises
        for a request's failure.

        ``progress_callback(result)`` is called once per finished request, from the calling
        thread, in completion order. ``cancel_event`` is checked before each request and each
        attempt starts and while waiting; requests not yet started end as CANCELLED.
        ``max_threads`` defaults to the deployment's ``max_threads``, else
        ``min(32, cpu_count + 4)``; the connection pool keeps the deployment's
        ``pool_connections`` per host, else one per thread.
        ``timeout`` (seconds) is the batch's deadline: no wait of any request (rate limit,
        429 pause, backoff, token outage) goes past it; a request that would have to fails
        with `DeadlineExceededError`. The batch's cache entries are safe from eviction
        while it runs.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        batch = list(download_requests)
        results: list[DownloadResult | None] = [None] * len(batch)
        if not batch:
            return []
        threads = self.thread_count(max_threads, len(batch))
        http = self._http_session(self.deployment.pool_connections or threads)
        done = 0
        with (
            cache.pinned(_response_paths(batch)),
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="download") as executor,
        ):
            futures = {
                executor.submit(
                    self._run_one, index, item, decode_data, http, cancel_event, deadline
                ): index
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

    def thread_count(self, max_threads: int | None, batch_size: int) -> int:
        """The threads a batch of ``batch_size`` runs on: ``max_threads``, else the
        deployment's, else ``min(32, cpu_count + 4)``; never more than the deployment's
        ``max_concurrent_requests`` (more would only wait) nor than the batch."""
        threads = max_threads or self.deployment.max_threads or min(32, (os.cpu_count() or 1) + 4)
        if self.deployment.max_concurrent_requests:
            threads = min(threads, self.deployment.max_concurrent_requests)
        return max(1, min(threads, batch_size))

    def _http_session(self, pool_size: int) -> requests.Session:
        with self._http_lock:
            if self._http is None or self._pool_size < pool_size:
                # A smaller pool in use by another batch is left to finish and be collected.
                self._http = pooled_http_session(pool_size)
                self._pool_size = pool_size
            return self._http

    def _run_one(
        self,
        index: int,
        item: Any,
        decode_data: bool,
        http: requests.Session,
        cancel_event: threading.Event | None,
        deadline: float | None = None,
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
            if not self.redownload and cache.is_cached(request):
                hit = self._cache_hit(request, decode_data)
                if hit is not None:
                    size, data = hit
                    return finish(
                        DownloadStatus.SUCCEEDED, cache_hit=True, size_bytes=size, data=data
                    )
            answer = self._execute_download(request, http, counters, cancel_event, deadline)
            try:
                path = answer.path
                if request.save_response:
                    path = self._commit(request, answer)
                data: Any = None
                if request.return_data:
                    with open(path, "rb") as file:
                        content = file.read()
                    response = DownloadResponse(
                        request=request,
                        content=content,
                        headers=answer.headers,
                        status_code=answer.status_code,
                        elapsed=answer.elapsed,
                    )
                    data = response.decode() if decode_data else response
            finally:
                answer.discard()
            return finish(DownloadStatus.SUCCEEDED, size_bytes=answer.size, data=data)
        except DownloadCancelledError as error:
            _redact_error(error)
            return finish(DownloadStatus.CANCELLED, error=error)
        except DownloadError as error:
            _redact_error(error)
            _LOGGER.debug("Request %d failed: %s", index, error)
            return finish(DownloadStatus.FAILED, error=error)

    def _cache_hit(self, request: DownloadRequest, decode_data: bool) -> tuple[int, Any] | None:
        """The size and data of a sound cache entry of ``request``; an entry that does not
        check out (cut short, undecodable, unreadable) is dropped and None returned."""
        _, response_path = request.get_storage_paths()
        assert response_path is not None
        try:
            info = cache.read_cached_info(request)
            headers = info.get("headers") or {}
            size = os.path.getsize(response_path)
            if not _content_encoded(headers):
                validation.check_length(
                    size, _text_or_none(header_value(headers, "Content-Length")), url=request.url
                )
            validation.check_file(
                response_path, response_type_of(request, headers), url=request.url
            )
            data: Any = None
            if request.return_data:
                with open(response_path, "rb") as file:
                    content = file.read()
                response = cache.response_from_info(request, content, info)
                data = response.decode() if decode_data else response
        except CacheCollisionError:
            raise  # another request's entry: never dropped
        except (IncompleteAnswerError, DecodingError, OSError, ValueError) as error:
            # Not ours (ours are checked before they are kept), or damaged since: fetch again.
            _LOGGER.warning(
                "Dropping a cache entry that does not check out for %s: %s",
                _described(request),
                redact(error),
            )
            cache.drop_cached(request)
            return None
        cache.touch(response_path)
        _LOGGER.debug("Read %s from the cache", response_path)
        return size, data

    def _commit(self, request: DownloadRequest, answer: _Answer) -> str:
        """Put a checked answer in the cache; returns its response path."""
        try:
            path = cache.commit_cached(
                request,
                answer.path,
                headers=answer.headers,
                status_code=answer.status_code,
                elapsed=answer.elapsed,
            )
        except OSError as error:
            # strerror, not the error itself: that names the server's cache folder.
            raise CacheWriteError(
                f"could not write the answer to the cache: {error.strerror}", url=request.url
            ) from None
        answer.committed = True
        if self.cache_max_bytes is not None and request.data_folder is not None:
            written = answer.size + _size_or_zero(request.get_storage_paths()[0])
            cache.keep_under(request.data_folder, self.cache_max_bytes, written, keep=[path])
        return path

    @staticmethod
    def _read_cache(request: DownloadRequest) -> DownloadResponse | None:
        try:
            return cache.read_cached(request)
        except (OSError, ValueError) as error:
            # Unreadable entries (not ours: ours are complete) are downloaded again and replaced.
            _LOGGER.warning(
                "Ignoring an unreadable cache entry for %s: %s", _described(request), redact(error)
            )
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
        deadline: float | None = None,
    ) -> _Answer:
        """Send ``request`` until it gives a checked answer, streamed into a temporary file
        (beside its cache entry when it has one); raises `DownloadError` once retries end."""
        deployment = self.deployment
        retry = deployment.retry
        timeout = (deployment.connect_timeout_seconds, deployment.read_timeout_seconds)
        method = RequestType(request.request_type).value
        transient_failures = 0
        reauthenticated = False
        while True:
            failure = ""
            broken: DownloadError | None = None
            status: int | None = None
            # The token first: waiting for it inside a rate slot would bunch requests together.
            with deadline_scope(deadline):
                headers, access_token = self._prepare_headers(request)
            _register_credentials(headers)
            with contextlib.ExitStack() as slot:
                try:
                    reserved_units = slot.enter_context(self._limiter.slot(cancel_event, deadline))
                except SharedLimitUnavailableError as error:
                    # A store that cannot be asked is a transient fault: retried, never
                    # skipped (the request would go unpaced).
                    broken, failure = error, str(error)
                else:
                    if deadline is not None:
                        # No single read waits past the deadline either.
                        left = max(0.001, deadline - time.monotonic())
                        timeout = (
                            min(timeout[0], left),
                            min(deployment.read_timeout_seconds, left),
                        )
                    counters.attempts += 1
                    _LOGGER.debug("Sending %s (attempt %d)", _described(request), counters.attempts)
                    try:
                        response = http.request(
                            method,
                            request.url,  # type: ignore[arg-type]
                            json=request.post_values,
                            headers=headers,
                            timeout=timeout,
                            stream=True,
                        )
                    except _TRANSIENT_EXCEPTIONS as error:
                        self._limiter.record_attempt(None, retry=counters.attempts > 1)
                        failure = _describe_exception(error)
                    else:
                        with response:
                            self._limiter.record_attempt(
                                response.status_code, retry=counters.attempts > 1
                            )
                            self._settle_units(response, reserved_units)
                            status = response.status_code
                            if status < 400:
                                answer = _Answer.start(request, response)
                                try:
                                    self._receive(request, response, answer, cancel_event, deadline)
                                except (IncompleteAnswerError, DecodingError) as error:
                                    broken = error
                                    failure = str(error)
                                except BaseException:
                                    answer.discard()
                                    raise
                                else:
                                    return answer
                                answer.discard()
                            else:
                                error_text = _error_text(response)
            if status is not None and status >= 400:
                if status == 429:
                    counters.rate_limited += 1
                    wait = parse_retry_after(
                        response.headers.get("Retry-After"),
                        deployment.retry_after_unit,
                        integer_unit=deployment.integer_retry_after_unit,
                        max_seconds=deployment.max_retry_after_seconds,
                    )
                    wait = self.default_retry_time if wait is None else wait
                    wait = min(wait, deployment.max_retry_after_seconds)
                    self._limiter.pause(wait)
                    if counters.rate_limited > retry.max_rate_limit_retries:
                        raise OutOfRequestsError(
                            f"still rate limited after {retry.max_rate_limit_retries} retries",
                            url=request.url,
                            status_code=status,
                        )
                    _LOGGER.debug("Rate limited; pausing %s for %.3f s", deployment.name, wait)
                    if counters.rate_limited > 1:
                        # Refused again after the pause the server asked for: this request
                        # also backs off on its own (in case the Retry-After was in another
                        # unit than it seemed), leaving the deployment's pause as it said.
                        wait_or_cancel(
                            retry.backoff_seconds(counters.rate_limited - 1, self._random.random()),
                            cancel_event,
                            deadline,
                            "backing off after repeated 429 answers",
                        )
                    continue
                if status == 401 and access_token is not None and not reauthenticated:
                    reauthenticated = True
                    with deadline_scope(deadline):
                        self._on_unauthorized(access_token)
                    continue
                if status in (401, 403):
                    raise AuthenticationError(
                        f"the server answered {status}: {error_text}",
                        url=request.url,
                        status_code=status,
                    )
                if status < 500:
                    error_class = NotFoundError if status == 404 else BadRequestError
                    raise error_class(
                        f"the server answered {status}: {error_text}",
                        url=request.url,
                        status_code=status,
                    )
                failure = f"HTTP {status}: {error_text}"
            transient_failures += 1
            if transient_failures >= retry.max_attempts:
                message = f"failed {transient_failures} times, last with {failure}"
                if broken is not None:
                    raise type(broken)(message, url=request.url, status_code=status)
                raise ServerError(message, url=request.url, status_code=status)
            delay = retry.backoff_seconds(transient_failures, self._random.random())
            _LOGGER.debug("Attempt failed with %s; retrying in %.3f s", failure, delay)
            wait_or_cancel(delay, cancel_event, deadline, "waiting to retry")

    def _receive(
        self,
        request: DownloadRequest,
        response: requests.Response,
        answer: _Answer,
        cancel_event: threading.Event | None,
        deadline: float | None,
    ) -> None:
        """Stream the body of ``response`` into ``answer``'s file, then check it."""
        announced = _text_or_none(response.headers.get("Content-Length"))
        try:
            with open(answer.descriptor, "wb", closefd=False) as file:
                for piece in response.iter_content(_PIECE_BYTES):
                    file.write(piece)
                    answer.size += len(piece)
                    if cancel_event is not None and cancel_event.is_set():
                        raise DownloadCancelledError(
                            "cancelled while the answer arrived", url=request.url
                        )
                    check_deadline(deadline, 0.0, "the answer arrived")
        except _TRANSIENT_EXCEPTIONS as error:
            of = f" of {announced}" if announced is not None else ""
            raise IncompleteAnswerError(
                f"the answer was cut short after {answer.size}{of} bytes "
                f"({_describe_exception(error)})",
                url=request.url,
            ) from None
        except OSError as error:
            raise CacheWriteError(
                f"could not write the answer to disk: {error.strerror}", url=request.url
            ) from None
        answer.close_file()
        if not _content_encoded(response.headers):
            validation.check_length(answer.size, announced, url=request.url)
        validation.check_file(
            answer.path, response_type_of(request, answer.headers), url=request.url
        )

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
    """The server's own message, redacted: Sentinel Hub's ``error.message`` or the start of
    the body (at most the first 64 KiB are read)."""
    raw = b""
    try:
        for piece in response.iter_content(16 << 10):
            raw += piece
            if len(raw) >= _MAX_ERROR_BODY:
                break
    except _TRANSIENT_EXCEPTIONS:
        pass
    text = raw.decode(response.encoding or "utf-8", errors="replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return redact(error["message"])[:_MAX_ERROR_TEXT]
        if isinstance(error, str):
            return redact(error)[:_MAX_ERROR_TEXT]
    text = redact(text.strip())
    return json.dumps(text[:_MAX_ERROR_TEXT]) if text else response.reason or "no message"


def _redact_error(error: DownloadError) -> None:
    """Make ``error``'s message safe to show, whatever went into it."""
    error.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in error.args)
    if error.url:
        error.url = redact(error.url)


def _register_credentials(headers: Mapping[str, Any]) -> None:
    """Remember the credentials ``headers`` carry so that no text can show them."""
    for name, value in headers.items():
        lowered = str(name).lower()
        if any(part in lowered for part in ("authorization", "token", "key", "secret")):
            text = str(value)
            register_secret(text)
            register_secret(text.split(" ", 1)[-1])


def _response_paths(batch: list[Any]) -> list[str]:
    paths = []
    for item in batch:
        with contextlib.suppress(Exception):
            _, path = DownloadRequest.coerce(item).get_storage_paths()
            if path:
                paths.append(path)
    return paths


def _described(request: DownloadRequest) -> str:
    """Method and path of a request: the query may hold anything, so it is left out."""
    return f"{request.request_type.value} {urllib.parse.urlsplit(request.url or '').path}"


def _content_encoded(headers: Mapping[str, Any]) -> bool:
    """Whether the body was sent compressed (Content-Length then counts compressed bytes)."""
    encoding = header_value(dict(headers), "Content-Encoding")
    return bool(encoding) and str(encoding).strip().lower() != "identity"


def _size_or_zero(path: str | None) -> int:
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
