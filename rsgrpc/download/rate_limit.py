"""One rate limiter per deployment, shared by every thread, client and session of the process.

The limiter keeps to a configured request rate with bursts (and a processing-unit rate
when the server reports what each request cost), holds every request back during a
global pause after a 429, and bounds how many requests are in flight at once. By default
the limits hold within this process; a deployment with ``shared_limit_dir`` keeps its request
rate and its pauses in a locked file there instead (`shared_limit.SharedRateLimit`), shared
by every process on the host that names the deployment and the folder, and one with
``shared_limit_url`` keeps them in Redis (`redis_limit.RedisRateLimit`), shared by every
process of every host that names the deployment and the store. Both are a `SharedLimit`,
used alike. When the store cannot be asked, the request fails (a `ServerError`) rather than
going ahead unpaced.

Rates use the generic cell rate algorithm: a request reserves the earliest time it may
start, under the lock, then sleeps outside it, so waiting threads never stall each other
and never wake up together. A pause invalidates every reservation made before it.

Every wait here, and every retry wait of the client and the OAuth2 session, ends at the
caller's deadline (a `time.monotonic` moment): a wait that would outlast it raises
`DeadlineExceededError` at once rather than sleeping in vain.

Lock order: the concurrency semaphore is taken before ``RateLimiter._lock`` and never while
holding it; ``RateLimiter._lock`` is taken before the shared bucket's locks (its thread lock,
then its file lock), which are leaves, and is held through a Redis store's round trip, which
its timeouts bound. ``_REGISTRY_LOCK`` is taken before ``RateLimiter._lock``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .deployment import Deployment
from .errors import DeadlineExceededError, DownloadCancelledError


class SharedLimit(Protocol):
    """A request rate and pause shared with other processes: `shared_limit.SharedRateLimit`
    (one host, a locked file) or `redis_limit.RedisRateLimit` (a fleet, Redis). Its moments
    are its own clock's; only the waits it returns are this process's seconds."""

    def reserve(
        self, not_before: float = 0.0, deadline: float | None = None
    ) -> tuple[float, float]: ...

    def paused_after(self, start: float) -> bool: ...

    def pause(self, seconds: float) -> float: ...

    def close(self) -> None: ...


def check_deadline(
    deadline: float | None, wait: float, what: str, now: float | None = None
) -> None:
    """Raise `DeadlineExceededError` if waiting ``wait`` seconds from ``now`` passes ``deadline``."""
    if deadline is None:
        return
    current = time.monotonic() if now is None else now
    if current + wait > deadline:
        left = max(0.0, deadline - current)
        raise DeadlineExceededError(
            f"the deadline would pass while {what} ({wait:.3f} s to wait, {left:.3f} s left)"
        )


def wait_or_cancel(
    seconds: float, cancel_event: threading.Event | None, deadline: float | None, what: str
) -> None:
    """Sleep ``seconds`` unless that passes ``deadline``; raise `DownloadCancelledError` if
    ``cancel_event`` is set meanwhile."""
    check_deadline(deadline, seconds, what)
    if cancel_event is not None:
        if cancel_event.wait(seconds):
            raise DownloadCancelledError(f"cancelled while {what}")
    elif seconds > 0:
        time.sleep(seconds)


class _Bucket:
    """A token bucket as a theoretical arrival time: it is full when ``tat <= now``."""

    def __init__(self, rate: float, capacity: float):
        self.rate = rate
        self.capacity = capacity
        self.tat = 0.0

    def earliest(self, at: float, cost: float) -> float:
        headroom = max(0.0, self.capacity - cost) / self.rate
        return max(at, self.tat - headroom)

    def commit(self, at: float, cost: float) -> None:
        self.tat = max(self.tat, at) + cost / self.rate

    def drain_until(self, moment: float) -> None:
        """Treat the bucket as empty at ``moment``: one unit may go then, the rest at the rate."""
        self.tat = max(self.tat, moment + max(0.0, self.capacity - 1.0) / self.rate)


@dataclass(frozen=True)
class RateLimiterStats:
    """Counters since the limiter was created.

    ``answers`` counts the attempts that the clients reported (`record_attempt`) by HTTP
    status, ``"error"`` where no answer came (a reset, a timeout); ``retries`` counts those
    attempts that were not a request's first; ``wait_seconds`` is the time requests spent
    waiting for a slot (concurrency, rate, a 429's pause), whether or not they then went.
    """

    requests_started: int
    rate_limited_answers: int
    pauses: int
    answers: Mapping[str, int] = field(default_factory=dict)
    retries: int = 0
    wait_seconds: float = 0.0


class RateLimiter:
    """Paces requests for one deployment. Thread-safe; share it rather than copy it."""

    def __init__(
        self,
        requests_per_second: float | None = None,
        burst: int = 1,
        processing_units_per_second: float | None = None,
        processing_units_burst: float = 1.0,
        max_concurrent_requests: int | None = None,
        shared_limit_dir: str | None = None,
        shared_limit_url: str | None = None,
        name: str = "",
    ):
        self.name = name
        self._lock = threading.Lock()
        self._pause_until = 0.0
        self._epoch = 0
        self._requests_started = 0
        self._rate_limited_answers = 0
        self._pauses = 0
        self._answers: Counter[str] = Counter()
        self._retries = 0
        self._wait_seconds = 0.0
        self._unit_estimate = 1.0
        self._semaphore: threading.Semaphore | None = None
        self._settings: tuple[object, ...] = ()
        self._requests: _Bucket | None = None
        self._units: _Bucket | None = None
        self._shared: SharedLimit | None = None
        self.configure(
            requests_per_second,
            burst,
            processing_units_per_second,
            processing_units_burst,
            max_concurrent_requests,
            shared_limit_dir,
            shared_limit_url,
        )

    @classmethod
    def from_deployment(cls, deployment: Deployment) -> RateLimiter:
        return cls(*_settings_of(deployment), name=deployment.name)

    def configure(
        self,
        requests_per_second: float | None,
        burst: int,
        processing_units_per_second: float | None,
        processing_units_burst: float,
        max_concurrent_requests: int | None,
        shared_limit_dir: str | None = None,
        shared_limit_url: str | None = None,
    ) -> None:
        """Change the limits; reservations already made are kept.

        Raises ImportError if ``shared_limit_url`` is given without the redis client.
        """
        settings = (
            requests_per_second,
            burst,
            processing_units_per_second,
            processing_units_burst,
            max_concurrent_requests,
            shared_limit_dir,
            shared_limit_url,
        )
        with self._lock:
            if settings == self._settings:
                return
            self._settings = settings
            self._requests = _replace_bucket(self._requests, requests_per_second, float(burst))
            if self._shared is not None:
                self._shared.close()
            self._shared = None
            if shared_limit_url is not None and requests_per_second is not None:
                # Imported here: it uses this module's deadline check, and the redis client
                # is needed only by deployments that name a store.
                from .redis_limit import RedisRateLimit

                self._shared = RedisRateLimit(
                    shared_limit_url, self.name, requests_per_second, float(burst)
                )
            elif shared_limit_dir is not None and requests_per_second is not None:
                from .shared_limit import SharedRateLimit

                self._shared = SharedRateLimit(
                    shared_limit_dir, self.name, requests_per_second, float(burst)
                )
            self._units = _replace_bucket(
                self._units, processing_units_per_second, float(processing_units_burst)
            )
            # Holders of the old semaphore release the old one; new requests use the new one.
            self._semaphore = (
                threading.BoundedSemaphore(max_concurrent_requests)
                if max_concurrent_requests
                else None
            )

    @property
    def stats(self) -> RateLimiterStats:
        with self._lock:
            return RateLimiterStats(
                self._requests_started,
                self._rate_limited_answers,
                self._pauses,
                answers=dict(self._answers),
                retries=self._retries,
                wait_seconds=self._wait_seconds,
            )

    def record_attempt(self, status_code: int | None, *, retry: bool) -> None:
        """Count an attempt sent in a slot of this limiter, by the HTTP status of its answer
        (None: no answer came); ``retry`` when it was not its request's first."""
        with self._lock:
            self._answers["error" if status_code is None else str(status_code)] += 1
            self._retries += retry

    @property
    def shared(self) -> SharedLimit | None:
        """The bucket shared with other processes (through a file or Redis), or None when
        the rate is this process's."""
        return self._shared

    @property
    def unit_estimate(self) -> float:
        """The processing units the next request is expected to cost."""
        return self._unit_estimate

    @contextlib.contextmanager
    def slot(
        self, cancel_event: threading.Event | None = None, deadline: float | None = None
    ) -> Iterator[float]:
        """Wait for a concurrency slot and a rate slot, then hold the concurrency slot.

        Yields the processing units reserved for the request (pass them to `settle_units`).
        Raises `DownloadCancelledError` if ``cancel_event`` is set while waiting, and
        `DeadlineExceededError` if the wait would outlast ``deadline``.
        """
        semaphore = self._semaphore
        began = time.monotonic()
        try:
            if semaphore is not None:
                while not semaphore.acquire(timeout=0.1):
                    if cancel_event is not None and cancel_event.is_set():
                        raise DownloadCancelledError(
                            "cancelled while waiting for a concurrency slot"
                        )
                    check_deadline(deadline, 0.0, "waiting for a concurrency slot")
            try:
                cost = self._wait_for_rate(cancel_event, deadline)
            except BaseException:
                if semaphore is not None:
                    semaphore.release()
                raise
        finally:
            waited = time.monotonic() - began
            with self._lock:
                self._wait_seconds += waited
        try:
            yield cost
        finally:
            if semaphore is not None:
                semaphore.release()

    def _wait_for_rate(self, cancel_event: threading.Event | None, deadline: float | None) -> float:
        while True:
            with self._lock:
                now = time.monotonic()
                epoch = self._epoch
                shared = self._shared
                shared_start = 0.0
                cost = self._unit_estimate if self._units is not None else 0.0
                start = max(now, self._pause_until)
                if self._units is not None:
                    start = self._units.earliest(start, cost)
                if shared is None and self._requests is not None:
                    start = self._requests.earliest(start, 1.0)
                # Nothing is reserved for a request that could not start in time.
                check_deadline(deadline, start - now, "waiting for the rate limit", now)
                if shared is not None:
                    # Last, so that the other processes' slot is taken only once ours is sure.
                    wait, shared_start = shared.reserve(start - now, deadline)
                    start = now + wait
                elif self._requests is not None:
                    self._requests.commit(start, 1.0)
                if self._units is not None:
                    self._units.commit(start, cost)
            wait = start - now
            if wait > 0:
                if cancel_event is not None:
                    if cancel_event.wait(wait):
                        raise DownloadCancelledError("cancelled while waiting for the rate limit")
                else:
                    time.sleep(wait)
            elif cancel_event is not None and cancel_event.is_set():
                raise DownloadCancelledError("cancelled before the request started")
            with self._lock:
                # A 429 while we slept voids our reservation: queue again behind the pause.
                if self._epoch != epoch:
                    continue
                if shared is not None and shared.paused_after(shared_start):
                    continue
                self._requests_started += 1
                return cost

    def settle_units(self, reserved: float, spent: float) -> None:
        """Charge the difference between reserved and reported processing units."""
        with self._lock:
            if self._units is None:
                return
            self._units.tat += (spent - reserved) / self._units.rate
            self._unit_estimate = spent

    def pause(self, seconds: float) -> None:
        """Hold every request of the deployment back for ``seconds`` after a 429 (here at
        once, then in the shared bucket, whose failure is raised after the local pause)."""
        with self._lock:
            self._rate_limited_answers += 1
            until = time.monotonic() + max(0.0, seconds)
            if until > self._pause_until:
                self._pause_until = until
                self._pauses += 1
            self._epoch += 1
            if self._requests is not None:
                self._requests.drain_until(self._pause_until)
            if self._shared is not None:
                self._shared.pause(seconds)


def _replace_bucket(old: _Bucket | None, rate: float | None, capacity: float) -> _Bucket | None:
    if rate is None:
        return None
    bucket = _Bucket(rate, capacity)
    if old is not None:
        bucket.tat = old.tat
    return bucket


def _settings_of(
    deployment: Deployment,
) -> tuple[float | None, int, float | None, float, int | None, str | None, str | None]:
    return (
        deployment.requests_per_second,
        deployment.burst,
        deployment.processing_units_per_second,
        deployment.processing_units_burst,
        deployment.max_concurrent_requests,
        deployment.shared_limit_dir,
        deployment.shared_limit_url,
    )


_REGISTRY_LOCK = threading.Lock()
_REGISTRY: dict[str, RateLimiter] = {}


def limiter_for(deployment: Deployment) -> RateLimiter:
    """The process-wide limiter of ``deployment.name``; its limits follow the latest config."""
    with _REGISTRY_LOCK:
        limiter = _REGISTRY.get(deployment.name)
        if limiter is None:
            limiter = _REGISTRY[deployment.name] = RateLimiter.from_deployment(deployment)
        else:
            limiter.configure(*_settings_of(deployment))
        return limiter


def registered_limiter(name: str) -> RateLimiter | None:
    """The process-wide limiter of the deployment called ``name``, if one was made; unlike
    `limiter_for`, never makes one nor changes its limits (a reader: the server's metrics)."""
    with _REGISTRY_LOCK:
        return _REGISTRY.get(name)


def forget_limiters() -> None:
    """Drop every shared limiter (tests, or a server reloading its configuration)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()
