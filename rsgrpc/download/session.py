"""OAuth2 client-credentials session for a Sentinel Hub-style deployment.

The token is refreshed ahead of its expiry by one thread while every other thread keeps
using the token it has; threads block only when the token has actually expired. A 401
makes the session re-authenticate once for the token that was refused.

Lock order: ``_refresh_lock`` only; it is never held while taking another lock.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import random
import threading
import time
from typing import Any

import requests
from oauthlib.oauth2 import BackendApplicationClient, OAuth2Error

from .deployment import Deployment
from .errors import AuthenticationError, DownloadError, ServerError
from .retry_after import parse_retry_after
from .transport import pooled_http_session

_LOGGER = logging.getLogger(__name__)

# A token this close to expiry is treated as expired: a request sent with it may arrive late.
_EXPIRY_MARGIN_SECONDS = 1.0
_TRANSIENT_EXCEPTIONS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


class SentinelHubSession:
    """Holds an up-to-date OAuth2 token for one deployment.

    ``config`` is a `Deployment` or a sentinelhub-py ``SHConfig``. ``refresh_before_expiry``
    (seconds, default the deployment's) says how early to refresh; None never refreshes
    (sessions made with `from_token`).
    """

    DEFAULT_SECONDS_BEFORE_EXPIRY = 120

    def __init__(
        self,
        config: Deployment | Any | None = None,
        refresh_before_expiry: float | None = DEFAULT_SECONDS_BEFORE_EXPIRY,
        *,
        _token: dict[str, Any] | None = None,
    ):
        if config is None:
            deployment = Deployment()
        elif isinstance(config, Deployment):
            deployment = config
        else:
            deployment = Deployment.from_sh_config(config)
        self.deployment = deployment
        if (
            isinstance(config, Deployment)
            and refresh_before_expiry == self.DEFAULT_SECONDS_BEFORE_EXPIRY
        ):
            refresh_before_expiry = deployment.refresh_before_expiry_seconds
        self.refresh_before_expiry = refresh_before_expiry
        if (_token is None or refresh_before_expiry is not None) and not deployment.has_credentials:
            raise ValueError(
                "client_id, client_secret and token_url are required to authenticate with "
                f"deployment {deployment.name!r}"
            )
        self._refresh_lock = threading.Lock()
        self._next_refresh_attempt = 0.0
        self._random = random.Random()
        self._http: requests.Session | None = None
        self._token: dict[str, Any] = self._fetch_token() if _token is None else dict(_token)

    @classmethod
    def from_token(cls, token: dict[str, Any]) -> SentinelHubSession:
        """A session around an existing token; it never refreshes."""
        for key in ("access_token", "expires_at"):
            if key not in token:
                raise ValueError(f"the token must contain {key!r}")
        return cls(refresh_before_expiry=None, _token=token)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(deployment={self.deployment.name!r}, "
            f"client_id={self.deployment.client_id!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_refresh_lock", "_http", "_random"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._refresh_lock = threading.Lock()
        self._http = None
        self._random = random.Random()

    @property
    def token(self) -> dict[str, Any]:
        """The current token, refreshed first if it is close to expiry."""
        token = self._token
        if self.refresh_before_expiry is None:
            return token
        remaining = token["expires_at"] - time.time()
        if remaining > _refresh_lead(token, self.refresh_before_expiry):
            return token
        if remaining > _EXPIRY_MARGIN_SECONDS:
            # Still valid: at most one thread refreshes; nobody waits for it.
            if time.monotonic() >= self._next_refresh_attempt and self._refresh_lock.acquire(
                blocking=False
            ):
                try:
                    if self._token is token:
                        self._refresh_ahead()
                finally:
                    self._refresh_lock.release()
            return self._token
        with self._refresh_lock:
            if self._token["expires_at"] - time.time() <= _EXPIRY_MARGIN_SECONDS:
                self._token = self._fetch_token()
            return self._token

    @property
    def session_headers(self) -> dict[str, str]:
        """The Authorization header for the current token."""
        return {"Authorization": f"Bearer {self.token['access_token']}"}

    def info(self) -> dict[str, Any]:
        """The claims of the token if it is a JWT, else an empty dict."""
        parts = str(self._token.get("access_token", "")).split(".")
        if len(parts) < 2:
            return {}
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        try:
            claims = json.loads(
                base64.urlsafe_b64decode(payload.replace("+", "-").replace("/", "_"))
            )
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return {}
        return claims if isinstance(claims, dict) else {}

    def handle_unauthorized(self, refused_access_token: str) -> None:
        """Re-authenticate after a 401 for ``refused_access_token``, unless another thread already did."""
        if self.refresh_before_expiry is None:
            raise AuthenticationError(
                "the token was refused and this session cannot refresh it",
                status_code=401,
            )
        with self._refresh_lock:
            if self._token.get("access_token") == refused_access_token:
                _LOGGER.info(
                    "Token refused for deployment %s; re-authenticating", self.deployment.name
                )
                self._token = self._fetch_token()

    def _refresh_ahead(self) -> None:
        try:
            self._token = self._fetch_token()
        except DownloadError as error:
            # Keep the still-valid token; try again a little later.
            self._next_refresh_attempt = (
                time.monotonic() + self.deployment.retry.backoff_base_seconds
            )
            _LOGGER.warning(
                "Refreshing the token of deployment %s failed, keeping the current one: %s",
                self.deployment.name,
                error,
            )

    def _fetch_token(self) -> dict[str, Any]:
        """Client-credentials grant with timeouts; 5xx, 429 and network errors are retried."""
        deployment = self.deployment
        oauth_client = BackendApplicationClient(client_id=deployment.client_id)
        body = oauth_client.prepare_request_body(
            include_client_id=True, client_secret=deployment.client_secret
        )
        if self._http is None:
            self._http = pooled_http_session(1)
        retry = deployment.retry
        last_reason = ""
        for attempt in range(1, retry.max_attempts + 1):
            if attempt > 1:
                time.sleep(retry.backoff_seconds(attempt - 1, self._random.random()))
            started = time.time()
            try:
                response = self._http.post(
                    deployment.token_url,
                    data=body,
                    headers={
                        "Content-Type": "application/x-www-form-urlencoded",
                        "Accept": "application/json",
                    },
                    timeout=(deployment.connect_timeout_seconds, deployment.token_timeout_seconds),
                )
                text = response.text
            except _TRANSIENT_EXCEPTIONS as error:
                last_reason = type(error).__name__
                _LOGGER.debug("Token request failed (%s), attempt %d", last_reason, attempt)
                continue
            status = response.status_code
            if status >= 500 or status == 429:
                last_reason = f"HTTP {status}"
                if status == 429:
                    wait = parse_retry_after(
                        response.headers.get("Retry-After"), deployment.retry_after_unit
                    )
                    if wait:
                        time.sleep(min(wait, deployment.max_retry_after_seconds))
                continue
            if status >= 400:
                raise AuthenticationError(
                    f"the token endpoint refused the credentials of client {deployment.client_id!r}: "
                    f"HTTP {status} {_oauth_error_of(text)}".rstrip(),
                    url=deployment.token_url,
                    status_code=status,
                )
            try:
                token = dict(oauth_client.parse_request_body_response(text))
            except OAuth2Error as error:
                raise AuthenticationError(
                    f"the token endpoint answered an error: {error.error}",
                    url=deployment.token_url,
                    status_code=status,
                ) from None
            except ValueError:
                last_reason = "an answer that is not a token"
                continue
            expires_in = token.get("expires_in")
            try:
                lifetime = float(expires_in) if expires_in is not None else 3600.0
            except (TypeError, ValueError):
                lifetime = 3600.0
            token["expires_at"] = started + lifetime
            return token
        raise ServerError(
            f"the token endpoint failed {retry.max_attempts} times, last with {last_reason}",
            url=deployment.token_url,
        )


def _refresh_lead(token: dict[str, Any], refresh_before_expiry: float) -> float:
    """How long before expiry to refresh: never earlier than half the token's lifetime,
    so short-lived tokens are not refreshed on every request."""
    try:
        lifetime = float(token.get("expires_in", "inf"))
    except (TypeError, ValueError):
        lifetime = float("inf")
    return min(refresh_before_expiry, lifetime / 2)


def _oauth_error_of(text: str) -> str:
    """The OAuth2 ``error`` code of an answer, without echoing anything else it holds."""
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return ""
    return f"({error})" if isinstance(error, str) and len(error) < 100 else ""
