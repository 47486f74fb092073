"""OAuth2 client-credentials session for a Sentinel Hub-style deployment.

The token is refreshed ahead of its expiry by one thread while every other thread keeps
using the token it has; threads block only when the token has actually expired. A 401
makes the session re-authenticate once for the token that was refused.

A token endpoint outage (5xx, 429, resets, timeouts) is ridden out with jittered
exponential backoff for up to the deployment's ``token_retry_budget_seconds``, and never
past the caller's deadline (`deadline_scope`). One fetch runs per (token URL, client id)
in the process; when it fails, every thread that was waiting for it fails with it rather
than starting an outage's wait over again. Every token and the client secret are
registered for redaction (`rsgrpc.download.redaction`).

Lock order: ``_refresh_lock`` before a fetch lock of ``_FETCH_LOCKS``; ``_FETCH_REGISTRY``
is a leaf.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import requests
from oauthlib.oauth2 import BackendApplicationClient, OAuth2Error

from .deployment import Deployment
from .errors import AuthenticationError, DeadlineExceededError, DownloadError, ServerError
from .rate_limit import check_deadline
from .redaction import redact, redact_logger, register_secret
from .retry_after import parse_retry_after
from .transport import pooled_http_session

_LOGGER = redact_logger(logging.getLogger(__name__))


class Clock(Protocol):
    """Where the token backoff reads the time and sleeps (tests pass a faster one)."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class _SystemClock:
    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)


SYSTEM_CLOCK: Clock = _SystemClock()
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "rsgrpc_download_deadline", default=None
)


@contextlib.contextmanager
def deadline_scope(deadline: float | None) -> Iterator[None]:
    """Token fetches in this thread give up at ``deadline`` (a `time.monotonic` moment)."""
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


_FETCH_REGISTRY = threading.Lock()
_FETCH_LOCKS: dict[tuple[str, str], threading.Lock] = {}
# The last failed fetch per (token URL, client id): when it ended, and its error.
_FETCH_FAILURES: dict[tuple[str, str], tuple[float, DownloadError]] = {}


# Told how each token fetch that reached the endpoint ended: the deployment, and None or
# the error (a caller's deadline passing is no outcome). The server's health listens.
TokenListener = Callable[[Deployment, DownloadError | None], None]
_TOKEN_LISTENERS: list[TokenListener] = []


def add_token_listener(listener: TokenListener) -> None:
    """Call ``listener(deployment, error)`` after each token fetch of the process; it must
    be quick (it runs while the fetch's lock is held)."""
    with _FETCH_REGISTRY:
        _TOKEN_LISTENERS.append(listener)


def remove_token_listener(listener: TokenListener) -> None:
    with _FETCH_REGISTRY:
        if listener in _TOKEN_LISTENERS:
            _TOKEN_LISTENERS.remove(listener)


def _tell_token_listeners(deployment: Deployment, error: DownloadError | None) -> None:
    with _FETCH_REGISTRY:
        listeners = list(_TOKEN_LISTENERS)
    for listener in listeners:
        try:
            listener(deployment, error)
        except Exception:
            _LOGGER.debug("a token listener failed", exc_info=True)


def _fetch_lock(key: tuple[str, str]) -> threading.Lock:
    with _FETCH_REGISTRY:
        return _FETCH_LOCKS.setdefault(key, threading.Lock())


def _acquire(lock: threading.Lock, deadline: float | None, what: str) -> None:
    if deadline is None:
        lock.acquire()
        return
    if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise DeadlineExceededError(f"the deadline passed while {what}")


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
        clock: Clock | None = None,
        _token: dict[str, Any] | None = None,
    ):
        if config is None:
            deployment = Deployment()
        elif isinstance(config, Deployment):
            deployment = config
        else:
            deployment = Deployment.from_sh_config(config)
        self.deployment = deployment
        self.clock = SYSTEM_CLOCK if clock is None else clock
        register_secret(deployment.client_secret)
        if _token is not None:
            register_secret(str(_token.get("access_token", "")))
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
        if state.get("clock") is SYSTEM_CLOCK:
            state["clock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.clock = SYSTEM_CLOCK if self.clock is None else self.clock
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
        _acquire(self._refresh_lock, _DEADLINE.get(), "waiting for a token")
        try:
            if self._token["expires_at"] - time.time() <= _EXPIRY_MARGIN_SECONDS:
                self._token = self._fetch_token()
            return self._token
        finally:
            self._refresh_lock.release()

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
        _acquire(self._refresh_lock, _DEADLINE.get(), "waiting for a token")
        try:
            if self._token.get("access_token") == refused_access_token:
                _LOGGER.info(
                    "Token refused for deployment %s; re-authenticating", self.deployment.name
                )
                self._token = self._fetch_token()
        finally:
            self._refresh_lock.release()

    def _refresh_ahead(self) -> None:
        try:
            # Retried for at most half the token's remaining life: it is still valid, so
            # a longer outage is ridden out when it has expired.
            remaining = self._token["expires_at"] - time.time() - _EXPIRY_MARGIN_SECONDS
            budget = min(self.deployment.token_retry_budget_seconds, max(0.0, remaining / 2))
            self._token = self._fetch_token(budget_seconds=budget)
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

    def _fetch_token(self, budget_seconds: float | None = None) -> dict[str, Any]:
        """A new token, fetched by one thread of the process per (token URL, client id);
        ``budget_seconds`` (default the deployment's) bounds the retries."""
        deployment = self.deployment
        key = (deployment.token_url, deployment.client_id)
        deadline = _DEADLINE.get()
        waiting_since = time.monotonic()
        lock = _fetch_lock(key)
        _acquire(lock, deadline, "waiting for the token endpoint")
        try:
            failure = _FETCH_FAILURES.get(key)
            if failure is not None and (
                failure[0] >= waiting_since
                or time.monotonic() - failure[0] < self._failure_memory_seconds()
            ):
                # The fetch this thread waited for (or one that just rode out a whole
                # outage's budget) failed: so does this one, at once, rather than wait
                # through the outage again.
                error = failure[1]
                raise type(error)(str(error), url=error.url, status_code=error.status_code)
            try:
                token = self._fetch_token_now(deadline, budget_seconds)
            except (ServerError, AuthenticationError) as error:
                if budget_seconds is None and not isinstance(error, DeadlineExceededError):
                    _FETCH_FAILURES[key] = (time.monotonic(), error)
                if not isinstance(error, DeadlineExceededError):
                    _tell_token_listeners(deployment, error)
                raise
            _FETCH_FAILURES.pop(key, None)
            _tell_token_listeners(deployment, None)
            return token
        finally:
            lock.release()

    def _failure_memory_seconds(self) -> float:
        """How long a failed fetch fails new fetches at once (threads queued one after another
        for a new session would otherwise each wait out the outage's whole budget)."""
        return max(1.0, self.deployment.token_backoff_max_seconds)

    def _token_backoff(self, attempt: int) -> float:
        """Equal-jitter wait after the ``attempt``-th failed token request (1-based)."""
        deployment = self.deployment
        ceiling = min(
            deployment.token_backoff_max_seconds,
            deployment.retry.backoff_base_seconds * 2 ** min(attempt - 1, 60),
        )
        return ceiling * (0.5 + 0.5 * self._random.random())

    def _fetch_token_now(
        self, deadline: float | None, budget_seconds: float | None
    ) -> dict[str, Any]:
        """Client-credentials grant with timeouts; 5xx, 429 and network errors are retried
        with backoff within the deployment's token budget and the caller's deadline."""
        deployment = self.deployment
        clock = self.clock
        oauth_client = BackendApplicationClient(client_id=deployment.client_id)
        body = oauth_client.prepare_request_body(
            include_client_id=True, client_secret=deployment.client_secret
        )
        if self._http is None:
            self._http = pooled_http_session(1)
        budget = deployment.token_retry_budget_seconds if budget_seconds is None else budget_seconds
        began = clock.monotonic()
        give_up = began + budget
        last_reason = ""
        attempt = 0
        pause = 0.0
        while True:
            if attempt:
                delay = max(self._token_backoff(attempt), pause)
                now = clock.monotonic()
                if now + delay > give_up:
                    raise ServerError(
                        f"the token endpoint failed {attempt} times in {now - began:.1f} s "
                        f"(the budget is {budget:g} s), "
                        f"last with {last_reason}",
                        url=deployment.token_url,
                    )
                if deadline is not None:
                    check_deadline(
                        deadline,
                        delay,
                        f"riding out a token endpoint outage (last {last_reason})",
                    )
                _LOGGER.debug("Token request failed (%s); retrying in %.3f s", last_reason, delay)
                clock.sleep(delay)
            attempt += 1
            pause = 0.0
            started = time.time()
            try:
                response = self._http.post(
                    deployment.token_url,
                    data=body,
                    headers={
                        "Content-Type": "application/x-www-form-urlencoded",
                        "Accept": "application/json",
                    },
                    timeout=_within(
                        (deployment.connect_timeout_seconds, deployment.token_timeout_seconds),
                        deadline,
                    ),
                )
                text = response.text
            except _TRANSIENT_EXCEPTIONS as error:
                last_reason = type(error).__name__
                continue
            status = response.status_code
            if status >= 500 or status == 429:
                last_reason = f"HTTP {status}"
                if status == 429:
                    wait = parse_retry_after(
                        response.headers.get("Retry-After"),
                        deployment.retry_after_unit,
                        integer_unit=deployment.integer_retry_after_unit,
                        max_seconds=deployment.max_retry_after_seconds,
                    )
                    pause = min(
                        deployment.default_retry_after_seconds if wait is None else wait,
                        deployment.max_retry_after_seconds,
                    )
                continue
            if status >= 400:
                raise AuthenticationError(
                    redact(
                        "the token endpoint refused the credentials of client "
                        f"{deployment.client_id!r}: HTTP {status} {_oauth_error_of(text)}"
                    ).rstrip(),
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
            register_secret(str(token.get("access_token", "")))
            for name in ("refresh_token", "id_token"):
                if token.get(name):
                    register_secret(str(token[name]))
            expires_in = token.get("expires_in")
            try:
                lifetime = float(expires_in) if expires_in is not None else 3600.0
            except (TypeError, ValueError):
                lifetime = 3600.0
            token["expires_at"] = started + lifetime
            return token


def _within(timeout: tuple[float, float], deadline: float | None) -> tuple[float, float]:
    """``timeout`` shortened so that no wait for the token endpoint passes ``deadline``."""
    if deadline is None:
        return timeout
    left = max(0.001, deadline - time.monotonic())
    return min(timeout[0], left), min(timeout[1], left)


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
