"""Pooled keep-alive HTTP sessions: one connection per download thread, reused across requests."""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter

USER_AGENT = "rsgrpc-download/0.1"


def pooled_http_session(pool_size: int) -> requests.Session:
    """A `requests.Session` keeping up to ``pool_size`` connections per host alive.

    urllib3's own retries are off: every retry is decided (and rate limited) by the client.
    The pool blocks rather than opening throw-away connections beyond its size.
    """
    session = requests.Session()
    adapter = HTTPAdapter(
        pool_connections=4, pool_maxsize=max(1, pool_size), max_retries=0, pool_block=True
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    # Credentials come only from the bearer header, never from ~/.netrc; this also skips
    # per-request proxy lookups in the environment.
    session.trust_env = False
    return session
