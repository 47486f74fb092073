"""Health of each download deployment: NOT_SERVING while its token endpoint fails.

Every deployment has an entry of its own in the standard health service,
``<download service>/<deployment>`` (``rsgrpc.v1.DownloadService/sentinel-hub``), and
the download service's own entry is SERVING while at least one deployment is usable (or
when none is configured: the service then answers every call, and has nothing that can
fail). A deployment is usable until a token request fails, and again once one succeeds.

What is known comes from two places:

- every token fetch the download client makes (`rsgrpc.download.session` tells its
  listeners how each one that reached the endpoint ended, after its own retries);
- a probe per deployment with credentials, a single token request (bounded by
  `PROBE_TIMEOUT_SECONDS`) made when no token request has had an outcome for the probe
  interval; the token it gets is dropped, never used, logged or kept.

A failure is an answer 5xx, a 4xx but 429 (the credentials or the token URL are wrong:
the deployment cannot get tokens until someone fixes them), an answer that is not a
token, a refused or reset connection, or a timeout. A 429 says nothing of the endpoint's
health: it changes nothing, but backs the probe off like a failure. After ``n`` failures
in a row the next probe waits ``interval * min(2 ** (n - 1), MAX_BACKOFF_FACTOR)``, so
an endpoint that is down gets one request every few minutes, not one a minute. Probe
intervals are stretched by up to a tenth at random, so that servers started together
do not probe together.

Secrets never reach a log line: lines name the deployment and the kind of failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import Final

import requests
from grpc_health.v1 import health, health_pb2
from oauthlib.oauth2 import BackendApplicationClient

from rsgrpc.download import Deployment
from rsgrpc.download.redaction import redact, redact_logger
from rsgrpc.download.session import add_token_listener, remove_token_listener
from rsgrpc.download.transport import pooled_http_session

_LOGGER = redact_logger(logging.getLogger(__name__))

# The longest a probe waits to connect, and then for the answer.
PROBE_TIMEOUT_SECONDS: Final = 10.0
MAX_BACKOFF_FACTOR: Final = 4
_JITTER: Final = 0.1
_PUBLISH_TIMEOUT_S: Final = 10.0

SERVING: Final = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: Final = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class ProbeOutcome:
    """How one token request ended: ``usable`` True (a token came), False (the endpoint
    failed or refused the credentials) or None (429: nothing learnt); ``reason`` names
    the failure without quoting the answer."""

    usable: bool | None
    reason: str = ""


def probe_token(
    deployment: Deployment,
    http: requests.Session,
    timeout: float = PROBE_TIMEOUT_SECONDS,
) -> ProbeOutcome:
    """One client-credentials token request to ``deployment``'s token endpoint, without
    retries; the token is dropped."""
    oauth_client = BackendApplicationClient(client_id=deployment.client_id)
    body = oauth_client.prepare_request_body(
        include_client_id=True, client_secret=deployment.client_secret
    )
    try:
        response = http.post(
            deployment.token_url,
            data=body,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
                # A fresh connection each time: one kept idle for a whole interval may have
                # been dropped by the other end, which would read as the endpoint failing.
                "Connection": "close",
            },
            timeout=(
                min(deployment.connect_timeout_seconds, timeout),
                min(deployment.token_timeout_seconds, timeout),
            ),
        )
        text = response.text
    except requests.RequestException as error:
        return ProbeOutcome(False, type(error).__name__)
    status = response.status_code
    if status == 429:
        return ProbeOutcome(None, "HTTP 429")
    if status >= 400:
        return ProbeOutcome(False, f"HTTP {status}")
    try:
        token = oauth_client.parse_request_body_response(text)
    except Exception:  # an OAuth2 error, or not a token at all: never quoted
        return ProbeOutcome(False, f"HTTP {status} with an answer that is not a token")
    return ProbeOutcome(True) if token.get("access_token") else ProbeOutcome(False, "no token")


@dataclass
class _State:
    usable: bool = True
    failures: int = 0  # failed or inconclusive token requests in a row
    next_probe: float = -math.inf  # a time.monotonic moment


def _same_credentials(a: Deployment, b: Deployment) -> bool:
    return (a.token_url, a.client_id, a.client_secret) == (
        b.token_url,
        b.client_id,
        b.client_secret,
    )


class DeploymentWatch:
    """The usability of each deployment of ``deployments``, published in a health servicer
    under ``service`` (the download service's full name) and ``<service>/<name>``.

    ``probe_seconds`` is the probe interval; 0 (or less) turns probes off, leaving the
    download client's own token fetches as the only source. `start` begins listening,
    probing and publishing; `stop` ends it without waiting for a probe in flight.
    """

    def __init__(
        self,
        service: str,
        deployments: Mapping[str, Deployment],
        probe_seconds: float,
    ) -> None:
        self.service = service
        self._deployments = dict(deployments)
        self._probe_seconds = probe_seconds if probe_seconds > 0 else 0.0
        self._lock = threading.Lock()
        self._states = {name: _State() for name in self._deployments}
        self._stopped = threading.Event()
        self._publish_lock = asyncio.Lock()
        self._servicer: health.aio.HealthServicer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._random = random.Random()
        self._probers: list[threading.Thread] = []

    def entry(self, deployment: str) -> str:
        """The health entry of ``deployment``."""
        return f"{self.service}/{deployment}"

    @property
    def entries(self) -> tuple[str, ...]:
        """Every health entry this watch publishes: the service's, then one per deployment."""
        return (self.service, *(self.entry(name) for name in sorted(self._deployments)))

    def usable(self, deployment: str) -> bool:
        """Whether ``deployment`` is usable (its last token request did not fail)."""
        with self._lock:
            state = self._states.get(deployment)
            return state is not None and state.usable

    def statuses(self) -> dict[str, int]:
        """The health status of every entry, now."""
        with self._lock:
            usable = {name: state.usable for name, state in self._states.items()}
        serving = not usable or any(usable.values())
        statuses = {self.service: SERVING if serving else NOT_SERVING}
        for name in sorted(usable):
            statuses[self.entry(name)] = SERVING if usable[name] else NOT_SERVING
        return statuses

    # -- outcomes --------------------------------------------------------------------------

    def record(self, deployment: str, usable: bool | None, reason: str = "") -> None:
        """What a token request of ``deployment`` showed: True a token came, False the
        endpoint failed (``reason`` names how), None nothing (429). Publishes a change."""
        now = time.monotonic()
        with self._lock:
            state = self._states.get(deployment)
            if state is None:
                return
            state.failures = 0 if usable else state.failures + 1
            state.next_probe = now + self._delay(state.failures)
            changed = usable is not None and usable != state.usable
            if changed:
                state.usable = bool(usable)
        if not changed:
            return
        if usable:
            _LOGGER.info(
                "download deployment %s got a token again: its health is SERVING", deployment
            )
        else:
            _LOGGER.warning(
                "download deployment %s cannot get a token (%s): its health is NOT_SERVING",
                deployment,
                redact(reason),
            )
        self._publish_soon()

    def _delay(self, failures: int) -> float:
        """How long after an outcome the next probe comes (called with the lock held)."""
        factor = min(2 ** min(failures - 1, 30), MAX_BACKOFF_FACTOR) if failures else 1
        return self._probe_seconds * factor * (1.0 + _JITTER * self._random.random())

    def _seconds_until_probe(self, deployment: str) -> float:
        with self._lock:
            return self._states[deployment].next_probe - time.monotonic()

    def _token_fetched(self, fetched: Deployment, error: Exception | None) -> None:
        """A listener of the download client's token fetches."""
        if self._stopped.is_set():
            return
        reason = "" if error is None else f"{type(error).__name__}: {error}"
        for name, deployment in self._deployments.items():
            if deployment.has_credentials and _same_credentials(deployment, fetched):
                self.record(name, error is None, reason)

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, servicer: health.aio.HealthServicer, *, starting: bool = False) -> None:
        """Set every entry in ``servicer``: as it is now, or NOT_SERVING while ``starting``.

        Publications run one at a time, each reading the state when it runs, so the last
        one always leaves the latest state."""
        async with self._publish_lock:
            for name, status in self.statuses().items():
                await servicer.set(name, NOT_SERVING if starting else status)

    def _publish_soon(self) -> futures.Future[None] | None:
        servicer, loop = self._servicer, self._loop
        if servicer is None or loop is None or self._stopped.is_set():
            return None
        try:
            return asyncio.run_coroutine_threadsafe(self.publish(servicer), loop)
        except RuntimeError:  # the loop has closed: the server is gone
            return None

    # -- life cycle ------------------------------------------------------------------------

    def start(self, servicer: health.aio.HealthServicer, loop: asyncio.AbstractEventLoop) -> None:
        """Publish the state in ``servicer`` (through ``loop``, from another thread), then
        keep it up to date: listen to token fetches and probe."""
        self._servicer, self._loop = servicer, loop
        add_token_listener(self._token_fetched)
        published = self._publish_soon()
        if published is not None:
            with contextlib.suppress(futures.TimeoutError):
                published.result(_PUBLISH_TIMEOUT_S)
        if not self._probe_seconds:
            return
        for name, deployment in sorted(self._deployments.items()):
            if deployment.has_credentials:
                prober = threading.Thread(
                    target=self._probe_loop,
                    args=(name, deployment),
                    name=f"deployment-probe-{name}",
                    daemon=True,
                )
                self._probers.append(prober)
                prober.start()

    def stop(self) -> None:
        """Stop listening and probing; a probe in flight ends within its timeout, unheard."""
        self._stopped.set()
        remove_token_listener(self._token_fetched)

    def _probe_loop(self, name: str, deployment: Deployment) -> None:
        http = pooled_http_session(1)
        try:
            while not self._stopped.wait(max(0.0, self._seconds_until_probe(name))):
                # A token fetch of the client may have had an outcome while this waited.
                if self._seconds_until_probe(name) > 0:
                    continue
                try:
                    outcome = probe_token(deployment, http)
                except Exception as error:  # a bug here must not end the probes
                    _LOGGER.exception("probing download deployment %s failed", name)
                    outcome = ProbeOutcome(False, type(error).__name__)
                if self._stopped.is_set():
                    return
                _LOGGER.debug(
                    "probe of download deployment %s: %s",
                    name,
                    {True: "a token", False: outcome.reason, None: outcome.reason}[outcome.usable],
                )
                self.record(name, outcome.usable, outcome.reason)
        finally:
            http.close()
