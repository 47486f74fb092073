"""`SentinelHubDownloadClient`: `DownloadClient` with OAuth2 sessions cached per client id and deployment."""

from __future__ import annotations

import threading
import warnings
from typing import Any, ClassVar

from .client import DownloadClient
from .deployment import Deployment
from .request import DownloadRequest
from .session import SentinelHubSession


class SentinelHubDownloadClient(DownloadClient):
    """Download client for Sentinel Hub-style deployments, with sentinelhub-py's session caching.

    Requests with ``use_session=True`` carry the session's bearer token. Without ``session``
    the client uses the session cached for its deployment's (client id, base URL), else a
    universally cached one, else creates and caches one. ``default_retry_time`` (seconds)
    is the pause after a 429 without ``Retry-After``.
    """

    _CACHED_SESSIONS: ClassVar[dict[tuple[str, str], SentinelHubSession]] = {}
    # Lock order: _CREATE_LOCK before _CACHE_LOCK.
    _CACHE_LOCK: ClassVar[threading.Lock] = threading.Lock()
    _CREATE_LOCK: ClassVar[threading.Lock] = threading.Lock()
    _UNIVERSAL_CACHE_KEY: ClassVar[tuple[str, str]] = ("universal-user", "default-url")

    def __init__(
        self,
        *,
        session: SentinelHubSession | None = None,
        default_retry_time: float = 30,
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
                RuntimeWarning,
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
