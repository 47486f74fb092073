"""A deployment of a Sentinel Hub-style API as configuration: where it is, who we are, its limits.

Every client and session naming the same deployment ``name`` in one process shares one
rate limiter (see `rate_limit.limiter_for`); ``shared_limit_dir`` shares its request rate
with the other processes of the host, ``shared_limit_url`` with every host using that Redis.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Literal

from .retry_after import RETRY_AFTER_UNITS, RetryAfterUnit


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently failed attempts are retried.

    ``max_attempts`` bounds attempts after 5xx answers, connection resets and timeouts
    (exponential backoff with full jitter between ``backoff_base_seconds`` and
    ``backoff_max_seconds``); ``max_rate_limit_retries`` bounds retries after 429 answers.
    """

    max_attempts: int = 4
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    max_rate_limit_retries: int = 20

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.max_rate_limit_retries < 0:
            raise ValueError(
                f"max_rate_limit_retries must not be negative, got {self.max_rate_limit_retries}"
            )
        if not 0 <= self.backoff_base_seconds <= self.backoff_max_seconds:
            raise ValueError(
                "backoff must satisfy 0 <= backoff_base_seconds <= backoff_max_seconds, got "
                f"{self.backoff_base_seconds} and {self.backoff_max_seconds}"
            )

    def backoff_seconds(self, failure_count: int, random_fraction: float) -> float:
        """Full-jitter wait after the ``failure_count``-th failure (1-based)."""
        ceiling = min(
            self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (failure_count - 1)
        )
        return ceiling * random_fraction


@dataclass(frozen=True)
class Deployment:
    """One deployment of a Sentinel Hub-style service.

    - ``name``: the key shared rate limits and cached sessions are found by.
    - ``base_url``, ``token_url``, ``client_id``, ``client_secret``: OAuth2 client credentials;
      the secret is never shown in the repr.
    - ``requests_per_second`` and ``burst``: the request rate the client keeps to (None:
      no limit). Set ``burst`` below the server's bucket capacity to absorb network jitter.
    - ``processing_units_per_second`` and ``processing_units_burst``: the same for processing
      units, charged from the ``X-ProcessingUnits-Spent`` answers.
    - ``max_concurrent_requests``: requests in flight at once, separate from the rate.
    - ``max_threads``: download threads of a batch when the caller names none (default
      ``min(32, cpu_count + 4)``, as sentinelhub-py); ``max_concurrent_requests`` still
      bounds what is in flight.
    - ``pool_connections``: keep-alive connections per host kept open (default: one per
      thread). Fewer than the threads makes threads wait for a connection.
    - ``shared_limit_dir``: a folder where the request rate and the pause after a 429 are
      kept in a locked file named after the deployment, so that every process on the host
      naming this deployment and folder (servers and scripts alike) keeps to the rate
      together (None: the limit is kept within this process only).
    - ``shared_limit_url``: a Redis (``redis://[user:password@]host[:port][/db]``,
      ``rediss://`` for TLS, ``unix:///path/to/socket``) where the same state is kept, so
      that every process on every host naming this deployment and store keeps to the rate
      together (`redis_limit.RedisRateLimit`; needs ``pip install 'rsgrpc[redis]'``). Not
      with ``shared_limit_dir``. Like the secret it is never shown in the repr, since it may
      hold the store's password.
    - ``retry_after_unit``: how a numeric ``Retry-After`` is read: ``"auto"`` (the value's
      form decides where it can; whole numbers are milliseconds for a deployment with
      OAuth2 credentials, as Sentinel Hub sends, else seconds, as HTTP says), or
      ``"milliseconds"`` / ``"seconds"`` to force it. HTTP dates are always understood.
    - ``max_retry_after_seconds``: a ``Retry-After`` longer than this is capped.
    - ``default_retry_after_seconds``: the pause after a 429 without a usable ``Retry-After``.
    - ``token_retry_budget_seconds``: how long a token endpoint outage is ridden out (the
      default outlasts a 60 s outage), with jittered backoff between attempts growing from
      the retry policy's base to ``token_backoff_max_seconds``.
    - ``cache_max_bytes``: the size the cache folder is kept under by evicting the least
      recently used answers (None: no cap).
    - timeouts in seconds for connecting and for reading every answer, the token call included.
    - ``refresh_before_expiry_seconds``: how early tokens are refreshed.
    """

    name: str = "default"
    base_url: str = ""
    token_url: str = ""
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    requests_per_second: float | None = None
    burst: int = 1
    processing_units_per_second: float | None = None
    processing_units_burst: float = 1.0
    max_concurrent_requests: int | None = None
    max_threads: int | None = None
    pool_connections: int | None = None
    shared_limit_dir: str | None = None
    shared_limit_url: str | None = field(default=None, repr=False)
    retry_after_unit: RetryAfterUnit = "auto"
    max_retry_after_seconds: float = 600.0
    default_retry_after_seconds: float = 30.0
    token_retry_budget_seconds: float = 90.0
    token_backoff_max_seconds: float = 8.0
    cache_max_bytes: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 120.0
    token_timeout_seconds: float = 30.0
    refresh_before_expiry_seconds: float = 120.0

    def __post_init__(self) -> None:
        if self.retry_after_unit not in RETRY_AFTER_UNITS:
            raise ValueError(
                f"unsupported retry_after_unit, got {self.retry_after_unit!r}; "
                f"expected one of {sorted(RETRY_AFTER_UNITS)}"
            )
        for name in ("requests_per_second", "processing_units_per_second"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be positive and finite, got {value}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst}")
        if self.processing_units_burst <= 0:
            raise ValueError(
                f"processing_units_burst must be positive, got {self.processing_units_burst}"
            )
        for name in ("max_concurrent_requests", "max_threads", "pool_connections"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.shared_limit_dir is not None and not self.shared_limit_dir:
            raise ValueError("shared_limit_dir must be a folder, got an empty string")
        if self.shared_limit_url is not None:
            if self.shared_limit_dir is not None:
                raise ValueError("give shared_limit_dir or shared_limit_url, not both")
            _check_store_url(self.shared_limit_url)
        for name in ("connect_timeout_seconds", "read_timeout_seconds", "token_timeout_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in (
            "max_retry_after_seconds",
            "default_retry_after_seconds",
            "token_retry_budget_seconds",
            "token_backoff_max_seconds",
        ):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be zero or more and finite, got {value}")
        if self.cache_max_bytes is not None and self.cache_max_bytes < 1:
            raise ValueError(f"cache_max_bytes must be at least 1, got {self.cache_max_bytes}")

    @property
    def has_credentials(self) -> bool:
        return bool(self.client_id and self.client_secret and self.token_url)

    @property
    def integer_retry_after_unit(self) -> Literal["milliseconds", "seconds"]:
        """How a whole-number ``Retry-After`` is read when the unit is ``"auto"``."""
        return "milliseconds" if self.has_credentials else "seconds"

    @classmethod
    def from_sh_config(cls, config: Any, **overrides: Any) -> Deployment:
        """Build a deployment from a sentinelhub-py ``SHConfig`` (or anything with its fields)."""
        max_retries = getattr(config, "max_retries", None)
        retry = RetryPolicy(
            max_attempts=max(1, int(getattr(config, "max_download_attempts", 4))),
            backoff_base_seconds=float(getattr(config, "download_sleep_time", 0.5)),
            backoff_max_seconds=max(30.0, float(getattr(config, "download_sleep_time", 0.5))),
            max_rate_limit_retries=20 if max_retries is None else int(max_retries),
        )
        base_url = getattr(config, "sh_base_url", "")
        values: dict[str, Any] = {
            "name": base_url or "default",
            "base_url": base_url,
            "token_url": getattr(config, "sh_token_url", ""),
            "client_id": getattr(config, "sh_client_id", ""),
            "client_secret": getattr(config, "sh_client_secret", ""),
            "read_timeout_seconds": float(getattr(config, "download_timeout_seconds", 120.0)),
            "retry": retry,
        }
        values.update(overrides)
        return cls(**values)


_STORE_SCHEMES = ("redis", "rediss", "unix")


def _check_store_url(url: str) -> None:
    """Raise ValueError unless ``url`` names a Redis by TCP, TLS or a unix socket. The
    messages never quote the URL: it may hold a password."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - urllib checks the port only when it is read
    except ValueError:
        raise ValueError("shared_limit_url is not a valid URL") from None
    if parts.scheme not in _STORE_SCHEMES:
        raise ValueError("shared_limit_url must be a redis://, rediss:// or unix:// URL")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("shared_limit_url must name the socket's path (unix:///path)")
    elif not parts.hostname:
        raise ValueError("shared_limit_url must name a host (redis://host:port/db)")
