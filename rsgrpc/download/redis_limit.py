"""A request rate shared by a fleet: the token bucket of `shared_limit`, kept in Redis.

Servers and scripts on any number of hosts naming the same deployment and the same Redis
keep to the deployment's rate together. The state is the one `shared_limit` keeps in its
file (the theoretical arrival time of the generic cell rate algorithm and the end of the
latest pause after a 429), here in one Redis hash per deployment, and every operation on
it is one small Lua script that the server runs atomically: nothing is read, changed and
written back from Python. Every moment is taken from the Redis server's clock (``TIME``
inside the scripts), never from the host's, so hosts whose clocks differ still agree; the
start `RedisRateLimit.reserve` returns is in that clock, the wait it returns is what the
caller sleeps. The hash expires a few minutes after its latest reservation or pause, so an
idle deployment leaves nothing behind (an expired bucket is full, as it would be by then).

Every call is bounded: a few seconds to connect and to read, one quick retry of a broken
connection, then `SharedLimitUnavailableError`. The request then fails its attempt rather
than going ahead unpaced, so the limit is never silently dropped: the client retries it
like a server error, with backoff, and fails the item with it (UNAVAILABLE) once the
retries end. After a failure the store is
left alone for a second: the requests meanwhile fail at once instead of each waiting out
its own timeout behind the limiter's lock. A reservation whose reply was lost is retried
and may be counted twice, which slows the fleet for one interval and never speeds it up.

The store's URL may hold a password: it is registered with `redaction`, errors never name
the store (they reach remote callers), and the log names it by its redacted URL.

Every process must be configured with the same rate and burst, as for `shared_limit`.
``RedisRateLimit._lock`` is a leaf, taken only around its own bookkeeping.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from types import ModuleType
from typing import Any, Final

from .errors import DeadlineExceededError, SharedLimitUnavailableError
from .rate_limit import check_deadline
from .redaction import redact, redact_logger, redact_url, register_secret
from .shared_limit import state_file_name

_LOGGER = redact_logger(logging.getLogger(__name__))

KEY_PREFIX: Final = "rsgrpc:download-limit:"
# Connecting to the store and each of its answers; a request never waits longer on it.
DEFAULT_TIMEOUT_SECONDS: Final = 2.0
# How long the state outlives its latest reservation or pause.
KEEP_SECONDS: Final = 300.0
# How long the store is left alone after it failed.
_QUIET_SECONDS: Final = 1.0
_WAITING: Final = "waiting for the shared rate limit"

# Shared by the scripts: the server's clock, and a damaged field read as a fresh bucket
# rather than one that blocks forever. Before Redis 5 a script that reads TIME and then
# writes must replicate its effects; later versions always do.
_PRELUDE: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local function now_of()
  local time = redis.call('TIME')
  return tonumber(time[1]) + tonumber(time[2]) / 1000000
end
local function sane(value, now)
  local number = tonumber(value)
  if number == nil or not (number >= 0 and number < now + 31536000) then return 0 end
  return number
end
local function moment(value) return string.format('%.17g', value) end
"""
# ARGV: interval (1 / rate), headroom ((burst - 1) / rate), not_before, max_wait (< 0: no
# deadline), keep. Returns {reserved (1 or 0), wait, start}.
_RESERVE: Final = (
    _PRELUDE
    + """
local now = now_of()
local interval, headroom = tonumber(ARGV[1]), tonumber(ARGV[2])
local not_before, max_wait, keep = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local state = redis.call('HMGET', KEYS[1], 'tat', 'pause_until')
local tat, pause_until = sane(state[1], now), sane(state[2], now)
local start = math.max(now + not_before, pause_until, tat - headroom)
local wait = start - now
if max_wait >= 0 and wait > max_wait then return {0, moment(wait), moment(start)} end
tat = math.max(tat, start) + interval
redis.call('HSET', KEYS[1], 'tat', tat)
redis.call('PEXPIRE', KEYS[1], math.ceil((math.max(tat, pause_until) - now + keep) * 1000))
return {1, moment(wait), moment(start)}
"""
)
# ARGV: start. Returns 1 if a pause ends after it.
_PAUSED_AFTER: Final = (
    _PRELUDE
    + """
local pause_until = sane(redis.call('HGET', KEYS[1], 'pause_until'), now_of())
if pause_until > tonumber(ARGV[1]) then return 1 end
return 0
"""
)
# ARGV: seconds, headroom, keep. Returns the pause's end.
_PAUSE: Final = (
    _PRELUDE
    + """
local now = now_of()
local seconds, headroom, keep = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tat', 'pause_until')
local tat, pause_until = sane(state[1], now), sane(state[2], now)
local pause_end = math.max(pause_until, now + seconds)
tat = math.max(tat, pause_end + headroom)
redis.call('HSET', KEYS[1], 'tat', tat, 'pause_until', pause_end)
redis.call('PEXPIRE', KEYS[1], math.ceil((tat - now + keep) * 1000))
return moment(pause_end)
"""
)


def key_for(deployment_name: str) -> str:
    """The Redis key of a deployment's bucket: the safe name its bucket file would have."""
    return KEY_PREFIX + state_file_name(deployment_name).removesuffix(".bucket")


def import_redis() -> ModuleType:
    """The ``redis`` client module; raises ImportError naming the extra that installs it."""
    try:
        import redis
    except ImportError:
        raise ImportError(
            "a shared_limit_url needs the redis client: pip install 'rsgrpc[redis]'"
        ) from None
    return redis


class RedisRateLimit:
    """The request rate of one deployment, shared through the Redis at ``url`` by every
    process of every host that names it; `shared_limit.SharedRateLimit`'s interface.
    Thread-safe and fork-safe (the client's connections are opened again in a child).
    Nothing is sent until the first request, so a store that is down when a server
    starts fails requests, not the start."""

    def __init__(
        self,
        url: str,
        deployment_name: str,
        rate: float,
        burst: float,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ):
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        if not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds must be positive, got {timeout_seconds}")
        redis = import_redis()
        _register_passwords(url)
        self.rate = float(rate)
        self.burst = float(burst)
        self.key = key_for(deployment_name)
        self.shown_url = redact_url(url)
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        self._client = redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout_seconds,
            socket_timeout=timeout_seconds,
            # One quick retry of a dropped connection; redis-py's default rides out ten.
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.05), 1),
        )
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._reserve = self._client.register_script(_RESERVE)
        self._paused_after = self._client.register_script(_PAUSED_AFTER)
        self._pause = self._client.register_script(_PAUSE)
        self._lock = threading.Lock()
        self._quiet_until = 0.0
        self._failure = ""

    def close(self) -> None:
        self._client.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - nothing to do at collection
            pass

    def reserve(
        self, not_before: float = 0.0, deadline: float | None = None
    ) -> tuple[float, float]:
        """Reserve the earliest start for one request, no sooner than ``not_before`` seconds
        from now; return ``(seconds to wait, the start in the store's clock)``.

        Raises `DeadlineExceededError`, reserving nothing, if the start would pass
        ``deadline`` (a ``time.monotonic`` moment), and `SharedLimitUnavailableError` if
        the store cannot be asked.
        """
        not_before = max(0.0, not_before)
        now = time.monotonic()
        check_deadline(deadline, not_before, _WAITING, now)
        max_wait = -1.0 if deadline is None else deadline - now
        headroom = (self.burst - 1.0) / self.rate
        reserved, wait, start = self._run(
            self._reserve, 1.0 / self.rate, headroom, not_before, max_wait, KEEP_SECONDS
        )
        wait, start = float(wait), float(start)
        if not int(reserved):
            check_deadline(deadline, wait, _WAITING, now)
            # Only float rounding differs from the store's own comparison.
            raise DeadlineExceededError(f"the deadline would pass while {_WAITING}")
        return wait, start

    def paused_after(self, start: float) -> bool:
        """Whether a 429 seen by any process since a reservation starting at ``start`` (as
        `reserve` gave it) holds that request back: it must then reserve again."""
        return bool(int(self._run(self._paused_after, start)))

    def pause(self, seconds: float) -> float:
        """Hold every process's requests back for ``seconds``; after the pause one request
        may go at once and the rest follow at the rate. Returns the pause's end in the
        store's clock."""
        headroom = (self.burst - 1.0) / self.rate
        return float(self._run(self._pause, max(0.0, seconds), headroom, KEEP_SECONDS))

    def _run(self, script: Any, *args: float) -> Any:
        with self._lock:
            if time.monotonic() < self._quiet_until:
                raise SharedLimitUnavailableError(self._failure)
        try:
            reply = script(keys=[self.key], args=[repr(float(value)) for value in args])
        except self._errors as error:
            failure = (
                f"the shared rate limit store is unreachable ({_describe(error)}), "
                "so the request could not be paced"
            )
            with self._lock:
                was_up = not self._failure
                self._failure = failure
                self._quiet_until = time.monotonic() + _QUIET_SECONDS
            if was_up:
                _LOGGER.warning(
                    "The shared rate limit store %s failed: %s", self.shown_url, redact(error)
                )
            raise SharedLimitUnavailableError(failure) from None
        with self._lock:
            was_down = bool(self._failure)
            self._failure = ""
        if was_down:
            _LOGGER.info("The shared rate limit store %s answers again", self.shown_url)
        return reply


def _describe(error: BaseException) -> str:
    """What went wrong, in words that name neither the store nor its credentials."""
    name = type(error).__name__
    if "Authentication" in name:
        return "it refused the credentials"
    if "Timeout" in name or isinstance(error, TimeoutError):
        return "a timeout"
    if "Connection" in name or isinstance(error, OSError):
        return "a connection error"
    return "an error answer"


def _register_passwords(url: str) -> None:
    """Make `redaction` remove the store's password wherever it may appear."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return
    candidates = [password] if password else []
    candidates += urllib.parse.parse_qs(parts.query).get("password", [])
    for candidate in candidates:
        register_secret(candidate)
        register_secret(urllib.parse.unquote(candidate))
