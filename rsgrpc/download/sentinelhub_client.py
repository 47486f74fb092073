"""`DownloadClient` and `SentinelHubDownloadClient` with sentinelhub-py's signatures and meaning.

Code written for sentinelhub-py runs with the import changed: ``config`` (an `SHConfig`,
ours or sentinelhub-py's; by default ``SHConfig()``, which reads the config file and the
environment) is kept as ``client.config`` and sets the retries, timeouts, credentials and
pacing as sentinelhub-py reads them; ``download`` returns the same data in request order.

What the service adds is an option: ``deployment=`` (rate limits shared per deployment,
concurrency, timeouts; it takes precedence over ``config``), ``download_results`` for
per-request outcomes, progress callbacks and cancellation.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar
from xml.etree import ElementTree

from . import client as _client
from .config import SHConfig
from .deployment import Deployment, RetryPolicy
from .errors import (
    CacheCollisionError,
    DownloadFailedWarning,
    InvalidRequestError,
    MissingDataInRequestException,
    SHDeprecationWarning,
    SHRateLimitWarning,
    SHRuntimeWarning,
)
from .request import DownloadRequest, MimeType, RequestType
from .result import DownloadResult
from .session import SentinelHubSession

# sentinelhub-py's SentinelHubRateLimit: each download process waits this long between requests.
_SECONDS_BETWEEN_REQUESTS_PER_PROCESS = 0.05
_MAX_SECONDS_BETWEEN_REQUESTS = 60.0
# Errors that sentinelhub-py raises whatever ``raise_download_errors`` says.
_ALWAYS_RAISED = (InvalidRequestError, CacheCollisionError)


def deployment_from_config(config: Any, *, paced: bool = False) -> Deployment:
    """A deployment that retries, times out and (when ``paced``) paces requests as
    sentinelhub-py does with ``config``.

    ``max_download_attempts`` bounds attempts after 5xx answers, resets and timeouts, waiting
    from ``download_sleep_time``; ``max_retries`` bounds attempts after 429 answers (None: no
    bound); ``download_timeout_seconds`` bounds connecting and reading. Paced, requests start
    at least ``0.05 * number_of_download_processes`` seconds apart (at most 60), as
    sentinelhub-py's `SentinelHubDownloadClient` spaces them.
    """
    sleep_time = float(config.download_sleep_time)
    max_retries = config.max_retries
    retry = RetryPolicy(
        max_attempts=max(1, int(config.max_download_attempts)),
        backoff_base_seconds=sleep_time,
        backoff_max_seconds=max(30.0, sleep_time),
        # sentinelhub-py gives up at the max_retries-th attempt answered 429.
        max_rate_limit_retries=sys.maxsize if max_retries is None else max(0, int(max_retries) - 1),
    )
    timeout = float(config.download_timeout_seconds)
    overrides: dict[str, Any] = {
        "retry": retry,
        "connect_timeout_seconds": timeout,
        "read_timeout_seconds": timeout,
    }
    if paced:
        wait = min(
            int(config.number_of_download_processes) * _SECONDS_BETWEEN_REQUESTS_PER_PROCESS,
            _MAX_SECONDS_BETWEEN_REQUESTS,
        )
        if wait > 0:
            overrides["requests_per_second"] = 1.0 / wait
            overrides["burst"] = 1
    return Deployment.from_sh_config(config, **overrides)


def config_from_deployment(deployment: Deployment) -> SHConfig:
    """The `SHConfig` describing ``deployment`` (for ``client.config``); reads no file."""
    retry = deployment.retry
    values: dict[str, Any] = {
        "sh_client_id": deployment.client_id,
        "sh_client_secret": deployment.client_secret,
        "max_download_attempts": retry.max_attempts,
        "download_sleep_time": retry.backoff_base_seconds,
        "download_timeout_seconds": deployment.read_timeout_seconds,
        "max_retries": (
            None
            if retry.max_rate_limit_retries >= sys.maxsize
            else retry.max_rate_limit_retries + 1
        ),
    }
    if deployment.base_url:
        values["sh_base_url"] = deployment.base_url
    if deployment.token_url:
        values["sh_token_url"] = deployment.token_url
    return SHConfig(use_defaults=True, **values)


def _warn_rate_limits(results: Iterable[DownloadResult]) -> None:
    """One `SHRateLimitWarning` per 429 answer, as sentinelhub-py warns them."""
    for result in results:
        for _ in range(result.rate_limited):
            warnings.warn("Download rate limit hit", category=SHRateLimitWarning, stacklevel=3)


class DownloadClient(_client.DownloadClient):
    """sentinelhub-py's ``DownloadClient``: downloads requests in parallel threads, through
    the cache, retrying server errors.

    ``DownloadClient(*, redownload=False, raise_download_errors=True, config=None)``, plus
    this library's options: ``deployment`` and the keywords of the client it extends
    (``default_retry_time``, ``cache_max_bytes``).
    """

    _PACED: ClassVar[bool] = False

    def __init__(
        self,
        *,
        redownload: bool = False,
        raise_download_errors: bool = True,
        config: Any | None = None,
        deployment: Deployment | None = None,
        **options: Any,
    ):
        if deployment is None:
            if config is None:
                config = SHConfig()
            deployment = deployment_from_config(config, paced=self._PACED)
        elif config is None:
            config = config_from_deployment(deployment)
        super().__init__(
            redownload=redownload,
            raise_download_errors=raise_download_errors,
            deployment=deployment,
            **options,
        )
        self.config = config

    def download(  # type: ignore[override]
        self,
        download_requests: Iterable[DownloadRequest] | DownloadRequest,
        max_threads: int | None = None,
        decode_data: bool = True,
        show_progress: bool = False,
        **options: Any,
    ) -> Any:
        """Download the requests; their data (or `DownloadResponse` without ``decode_data``, or
        None) in request order.

        After the batch has run, each 429 answer it met is warned as `SHRateLimitWarning`
        (as sentinelhub-py warns them), then the first failure in request order is raised if
        ``raise_download_errors``, else each is warned as `DownloadFailedWarning` (an
        ``SHRuntimeWarning``) and its item is None. Invalid requests and cache collisions
        are raised either way, as sentinelhub-py raises them. A single request (not in a
        list) is deprecated by sentinelhub-py and returns its item alone. ``options`` go to
        `download_results` (``progress_callback``, ``cancel_event``, ``timeout``).
        """
        single = isinstance(download_requests, DownloadRequest) or not isinstance(
            download_requests, Iterable
        )
        if single:
            warnings.warn(
                "The parameter `download_requests` should be a sequence of requests; a single "
                "request is deprecated and should be given as a singleton list or tuple.",
                category=SHDeprecationWarning,
                stacklevel=2,
            )
        batch = [download_requests] if single else list(download_requests)  # type: ignore[list-item]
        results = self.download_results(
            batch,
            max_threads=max_threads,
            decode_data=decode_data,
            show_progress=show_progress,
            **options,
        )
        _warn_rate_limits(results)
        for result in results:
            if result.error is None:
                continue
            if self.raise_download_errors or isinstance(result.error, _ALWAYS_RAISED):
                raise result.error
            warnings.warn(str(result.error), category=DownloadFailedWarning, stacklevel=2)
        data = [result.data for result in results]
        return data[0] if single else data

    def _download_one(self, request: DownloadRequest) -> Any:
        """One request's decoded data, raising its failure whatever ``raise_download_errors``."""
        (result,) = self.download_results([request], max_threads=1)
        _warn_rate_limits([result])
        if result.error is not None:
            raise result.error
        return result.data

    def get_json(
        self,
        url: str,
        post_values: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
        request_type: RequestType | None = None,
        **kwargs: Any,
    ) -> Any:
        """Download one JSON document: GET without ``post_values``, else POST with a JSON
        Content-Type unless ``headers`` name one. ``kwargs`` go to `DownloadRequest`."""
        json_headers = dict(headers or {})
        if request_type is None:
            request_type = RequestType.GET if post_values is None else RequestType.POST
        if RequestType(request_type) is RequestType.POST and "Content-Type" not in json_headers:
            json_headers = {"Content-Type": MimeType.JSON.get_string(), **json_headers}
        request = DownloadRequest(
            url=url,
            headers=json_headers,
            request_type=request_type,
            post_values=post_values,
            data_type=MimeType.JSON,
            **kwargs,
        )
        return self._download_one(request)

    def get_json_dict(
        self, url: str, *args: Any, extract_key: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """`get_json` that must give a dict, or with ``extract_key`` the dict under that key;
        raises `MissingDataInRequestException` otherwise."""
        answer = self.get_json(url, *args, **kwargs)
        if not isinstance(answer, dict):
            raise MissingDataInRequestException(
                f"Response from {url} was expected to be a dictionary, but got {type(answer)}."
            )
        if extract_key is None:
            return answer
        if isinstance(answer.get(extract_key), dict):
            return answer[extract_key]
        explanation = (
            f"Value is of type {type(answer[extract_key])}"
            if extract_key in answer
            else "Key is missing"
        )
        raise MissingDataInRequestException(
            f"Response from {url} was expected to have {extract_key} mapping to a dictionary. "
            f"{explanation}."
        )

    def get_xml(self, url: str, **kwargs: Any) -> ElementTree.Element:
        """Download one XML document as its root element. ``kwargs`` go to `DownloadRequest`."""
        return self._download_one(DownloadRequest(url=url, data_type=MimeType.XML, **kwargs))


class SentinelHubDownloadClient(DownloadClient):
    """sentinelhub-py's ``SentinelHubDownloadClient``: a `DownloadClient` that sends the OAuth2
    token of a session cached per (client id, base URL), handles 429 answers and paces
    requests as ``config.number_of_download_processes`` asks.

    Requests with ``use_session=True`` carry the token. Without ``session`` the client uses
    the session cached for its (client id, base URL), else a universally cached one, else
    creates and caches one. ``default_retry_time`` (seconds) is the pause after a 429 without
    ``Retry-After``; None takes the deployment's, which is sentinelhub-py's 30 s for a
    deployment made from a config. Given only a ``session``, the client uses the session's
    deployment (sentinelhub-py would read ``SHConfig()`` for its settings).

    Clients made from configs with the same ``sh_base_url`` share one limiter in the
    process, so the pacing holds for the account rather than for each client.
    """

    _PACED: ClassVar[bool] = True
    _CACHED_SESSIONS: ClassVar[dict[tuple[str, str], SentinelHubSession]] = {}
    # Lock order: _CREATE_LOCK before _CACHE_LOCK.
    _CACHE_LOCK: ClassVar[threading.Lock] = threading.Lock()
    _CREATE_LOCK: ClassVar[threading.Lock] = threading.Lock()
    _UNIVERSAL_CACHE_KEY: ClassVar[tuple[str, str]] = ("universal-user", "default-url")

    def __init__(
        self,
        *,
        session: SentinelHubSession | None = None,
        default_retry_time: float | None = None,
        **kwargs: Any,
    ):
        if session is not None and not isinstance(session, SentinelHubSession):
            raise ValueError(
                f"session must be a {SentinelHubSession.__name__} or None, got {session!r}"
            )
        if (
            session is not None
            and kwargs.get("deployment") is None
            and kwargs.get("config") is None
        ):
            kwargs["deployment"] = session.deployment
        super().__init__(default_retry_time=default_retry_time, **kwargs)
        self.session = session

    def get_session(self) -> SentinelHubSession:
        """The session this client authenticates with."""
        if self.session is not None:
            return self.session
        key = self._get_cache_key(self.deployment)
        with SentinelHubDownloadClient._CACHE_LOCK:
            cached = SentinelHubDownloadClient._CACHED_SESSIONS.get(key)
            if cached is None:
                cached = SentinelHubDownloadClient._CACHED_SESSIONS.get(self._UNIVERSAL_CACHE_KEY)
        if cached is not None:
            return cached
        # One thread authenticates; lookups by other threads do not wait for it.
        with SentinelHubDownloadClient._CREATE_LOCK:
            with SentinelHubDownloadClient._CACHE_LOCK:
                cached = SentinelHubDownloadClient._CACHED_SESSIONS.get(key)
            if cached is not None:
                return cached
            session = SentinelHubSession(self.deployment)
            with SentinelHubDownloadClient._CACHE_LOCK:
                return SentinelHubDownloadClient._CACHED_SESSIONS.setdefault(key, session)

    @staticmethod
    def cache_session(session: SentinelHubSession, universal: bool = False) -> None:
        """Cache ``session`` for every client of its (client id, base URL), or for every client
        whatever its deployment when ``universal``."""
        if not isinstance(session, SentinelHubSession):
            raise ValueError(f"expected a {SentinelHubSession.__name__}, got {session!r}")
        key = (
            SentinelHubDownloadClient._UNIVERSAL_CACHE_KEY
            if universal
            else SentinelHubDownloadClient._get_cache_key(session)
        )
        with SentinelHubDownloadClient._CACHE_LOCK:
            SentinelHubDownloadClient._CACHED_SESSIONS[key] = session

    @staticmethod
    def clear_cache() -> None:
        """Forget every cached session."""
        with SentinelHubDownloadClient._CACHE_LOCK:
            SentinelHubDownloadClient._CACHED_SESSIONS = {}

    @staticmethod
    def _get_cache_key(deployment_or_session: Deployment | SentinelHubSession) -> tuple[str, str]:
        if isinstance(deployment_or_session, Deployment):
            return deployment_or_session.client_id, deployment_or_session.base_url
        deployment = deployment_or_session.deployment
        client_id = deployment.client_id or str(deployment_or_session.info().get("azp", ""))
        if not client_id:
            warnings.warn(
                "Could not read a client id from the session; caching it may not work",
                SHRuntimeWarning,
                stacklevel=3,
            )
        return client_id, deployment.base_url

    def _prepare_headers(self, request: DownloadRequest) -> tuple[dict[str, Any], str | None]:
        if not request.use_session:
            return dict(request.headers), None
        access_token = self.get_session().token["access_token"]
        return {"Authorization": f"Bearer {access_token}", **request.headers}, access_token

    def _on_unauthorized(self, access_token: str) -> None:
        self.get_session().handle_unauthorized(access_token)
