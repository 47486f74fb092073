"""Fixtures for the download client tests: a fresh fake Sentinel Hub per test."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from fake_sentinelhub import FakeSentinelHub  # noqa: E402

from rsgrpc.download import SentinelHubDownloadClient, forget_limiters  # noqa: E402


@pytest.fixture(autouse=True)
def _no_user_configuration(tmp_path, monkeypatch) -> None:
    """Clients made without a config read SHConfig() as sentinelhub-py's do: from a folder
    of the test's own, with no profile or credentials from the environment."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("SH_PROFILE", "SH_CLIENT_ID", "SH_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    forget_limiters()
    SentinelHubDownloadClient.clear_cache()
    yield
    forget_limiters()
    SentinelHubDownloadClient.clear_cache()


@pytest.fixture
def make_hub() -> Iterator[Callable[..., FakeSentinelHub]]:
    servers: list[FakeSentinelHub] = []

    def make(**options: Any) -> FakeSentinelHub:
        server = FakeSentinelHub(**options)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def hub(make_hub: Callable[..., FakeSentinelHub]) -> FakeSentinelHub:
    return make_hub()
