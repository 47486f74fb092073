"""A rate shared through Redis: processes on a fleet keep to one rate, against a real redis-server."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from download_helpers import deployment_for, process_request
from fake_sentinelhub import CLIENT_ID, CLIENT_SECRET, PROCESS_PATH, TOKEN_PATH

from rsgrpc.download import (
    DeadlineExceededError,
    Deployment,
    DownloadStatus,
    RetryPolicy,
    SentinelHubDownloadClient,
    SharedLimitUnavailableError,
    limiter_for,
    redact,
)
from rsgrpc.download.redaction import redact_url
from rsgrpc.server.deployments import DeploymentConfigError, load_download_settings

if shutil.which("redis-server") is None:
    pytest.skip("needs a redis-server binary", allow_module_level=True)

redis = pytest.importorskip("redis")

from rsgrpc.download.redis_limit import KEEP_SECONDS, RedisRateLimit, key_for  # noqa: E402

PASSWORD = "Fleet-Redis-Pass-42"
RATE = 10.0
BURST = 2
PER_PROCESS = 15

# One process of a fleet: imports, says it is ready, waits for "go", downloads its share.
_WORKER = textwrap.dedent(
    """
    import json, sys
    from rsgrpc.download import (
        Deployment, DownloadRequest, MimeType, SentinelHubDownloadClient
    )

    base_url, store, prefix, count, rate, burst, path, token_path, client_id, secret = (
        sys.argv[1:11]
    )
    deployment = Deployment(
        name="fleet-test",
        base_url=base_url,
        token_url=base_url + token_path,
        client_id=client_id,
        client_secret=secret,
        requests_per_second=float(rate),
        burst=int(burst),
        shared_limit_url=store,
    )
    requests = [
        DownloadRequest(
            url=base_url + path,
            request_type="POST",
            post_values={"id": f"{prefix}-{index}", "format": "json"},
            headers={"Content-Type": "application/json"},
            data_type=MimeType.JSON,
            use_session=True,
        )
        for index in range(int(count))
    ]
    with SentinelHubDownloadClient(deployment=deployment) as client:
        print("ready", flush=True)
        sys.stdin.readline()
        results = client.download_results(requests, max_threads=4, timeout=60)
    print(json.dumps([[result.ok, str(result.error or "")] for result in results]), flush=True)
    """
)


@dataclass
class RedisServer:
    """A redis-server of the test's own on 127.0.0.1, with a password."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD, socket_timeout=5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def make_redis(tmp_path) -> Iterator[Callable[..., RedisServer]]:
    servers: list[RedisServer] = []

    def start(port: int | None = None) -> RedisServer:
        folder = tmp_path / f"redis-{len(servers)}"
        folder.mkdir()
        port = port or _free_port()
        process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--dir", str(folder), "--requirepass", PASSWORD],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = RedisServer(port, process)
        servers.append(server)
        probe = server.client()
        for _ in range(200):
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None, "redis-server did not start"
                time.sleep(0.025)
        else:
            pytest.fail("redis-server did not answer")
        probe.close()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def store(make_redis) -> RedisServer:
    return make_redis()


def _run_fleet(hub, url: str, count: int, prefixes: tuple[str, ...]) -> list[subprocess.Popen]:
    """Start one worker process per prefix against ``hub`` sharing ``url``; return them ready."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, hub.base_url, url, prefix, str(count)]
            + [str(RATE), str(BURST), PROCESS_PATH, TOKEN_PATH, CLIENT_ID, CLIENT_SECRET],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for prefix in prefixes
    ]
    for worker in workers:
        assert worker.stdout.readline().strip() == "ready"
    return workers


def _release_and_collect(workers: list[subprocess.Popen]) -> list[list[list]]:
    try:
        for worker in workers:
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outcomes = [json.loads(worker.stdout.readline()) for worker in workers]
        for worker in workers:
            assert worker.wait(timeout=60) == 0
        return outcomes
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def _densest_excess(times: list[float], rate: float, burst: float) -> float:
    """How far the busiest window of answers goes over ``rate * length + burst`` (<= 0: kept)."""
    return max(
        (j - i + 1) - (rate * (times[j] - times[i]) + burst)
        for i in range(len(times))
        for j in range(i, len(times))
    )


def test_two_processes_sharing_a_redis_limit_keep_to_one_rate_together(make_hub, store):
    # The hub's bucket has the clients' rate; one more token than their burst is the margin
    # for network jitter the deployment's documentation recommends.
    hub = make_hub(requests_per_second=RATE, burst=BURST + 1)
    workers = _run_fleet(hub, store.url, PER_PROCESS, ("first", "second"))
    hub.answers.clear()
    outcomes = _release_and_collect(workers)
    assert outcomes == [[[True, ""]] * PER_PROCESS] * 2
    assert hub.stats.rate_limited == 0
    times = sorted(moment for moment, status, _ in hub.answers if status == 200)
    total = 2 * PER_PROCESS
    assert len(times) == total
    assert {key.split("-")[0] for key in hub.sent} == {"first", "second"}
    assert _densest_excess(times, RATE, BURST) <= 0.4 * RATE
    # One rate for both: near what one rate needs for the whole batch, not half of it.
    expected = (total - BURST) / RATE
    assert expected - 0.4 <= times[-1] - times[0] <= expected + 1.0
    client = store.client()
    assert 0 < client.ttl(key_for("fleet-test")) <= KEEP_SECONDS + 5


def test_a_429_seen_by_one_process_pauses_the_other(make_hub, store):
    # One request a second for the account: our second request is answered 429.
    hub = make_hub(requests_per_second=1.0, burst=1)
    (other,) = _run_fleet(hub, store.url, 1, ("theirs",))
    deployment = deployment_for(
        hub, name="fleet-test", requests_per_second=RATE, burst=BURST, shared_limit_url=store.url
    )
    results: list = []
    with SentinelHubDownloadClient(deployment=deployment) as client:
        ours = threading.Thread(
            target=lambda: results.extend(
                client.download_results(
                    [process_request(hub, f"ours-{k}", "json") for k in range(2)],
                    max_threads=1,
                    timeout=30,
                )
            )
        )
        ours.start()
        watcher = store.client()
        deadline = time.monotonic() + 10
        while not watcher.hget(key_for("fleet-test"), "pause_until"):
            assert time.monotonic() < deadline, "no pause reached the store"
            time.sleep(0.005)
        # Released once our 429 is in the store: its request must wait out our pause.
        outcome = _release_and_collect([other])
        ours.join(timeout=30)
    assert outcome == [[[True, ""]]] and [result.ok for result in results] == [True, True]
    refused, retry_after = next((t, value) for t, status, value in hub.answers if status == 429)
    pause = int(retry_after) / 1000.0
    assert pause > 0.5
    # Nothing of either process was answered during the pause; without the shared pause,
    # the other process's request would have gone at once.
    during = [t for t, _, _ in hub.answers if refused < t < refused + pause - 0.05]
    assert during == []
    assert "theirs-0" in hub.sent


def test_a_deadline_shorter_than_the_wait_fails_at_once_and_reserves_nothing(hub, store):
    deployment = deployment_for(
        hub, name="slow", requests_per_second=1.0, burst=1, shared_limit_url=store.url
    )
    other = RedisRateLimit(store.url, "slow", rate=1.0, burst=1)
    starts = [other.reserve()[1] for _ in range(3)]  # the next start is 3 s away
    began = time.monotonic()
    with SentinelHubDownloadClient(deployment=deployment) as client:
        (result,) = client.download_results([process_request(hub, "late", "json")], timeout=1.0)
    assert time.monotonic() - began < 1.0  # at once, not at the deadline
    assert result.status is DownloadStatus.FAILED
    assert isinstance(result.error, DeadlineExceededError)
    assert "shared rate limit" in str(result.error)
    assert hub.stats.process_requests == 0
    wait, start = other.reserve()
    assert start == pytest.approx(starts[-1] + 1.0, abs=1e-6)
    assert 2.0 < wait <= 3.0
    other.close()


def test_reservations_are_spaced_at_the_rate_in_the_store_clock(store, monkeypatch):
    first = RedisRateLimit(store.url, "account", rate=10.0, burst=3)
    second = RedisRateLimit(store.url, "account", rate=10.0, burst=3)
    # This host's clock being an hour off changes nothing: every moment is the store's.
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600.0)
    seconds, micros = store.client().time()
    began = seconds + micros / 1e6
    reservations = [(first if k % 2 else second).reserve() for k in range(10)]
    starts = [start for _, start in reservations]
    assert starts == sorted(starts)
    assert abs(starts[0] - began) < 1.0
    for k in range(3, 10):
        assert starts[k] == pytest.approx(starts[2] + (k - 2) * 0.1, abs=0.05)
        assert reservations[k][0] == pytest.approx(starts[k] - starts[0], abs=0.05)
    assert 0 < store.client().pttl(first.key) <= (KEEP_SECONDS + 2) * 1000
    first.close()
    second.close()


def test_a_pause_holds_back_every_limit_sharing_the_store(store):
    ours = RedisRateLimit(store.url, "account", rate=100.0, burst=1)
    theirs = RedisRateLimit(store.url, "account", rate=100.0, burst=1)
    _, before = ours.reserve()
    until = theirs.pause(2.0)
    assert ours.paused_after(before)
    wait, start = ours.reserve()
    assert start >= until and 1.5 < wait <= 2.0
    assert not ours.paused_after(start)
    with pytest.raises(DeadlineExceededError):
        ours.reserve(deadline=time.monotonic() + 0.5)
    # Nothing was reserved: the next start is the one right after ours.
    assert theirs.reserve()[1] == pytest.approx(start + 0.01, abs=1e-6)


def test_damaged_state_starts_a_fresh_bucket(store):
    limit = RedisRateLimit(store.url, "account", rate=1.0, burst=1)
    store.client().hset(limit.key, mapping={"tat": "nan", "pause_until": "garbage"})
    wait, _ = limit.reserve()
    assert wait <= 0.0


def test_a_store_stopped_mid_batch_fails_the_rest_with_a_clear_reason(hub, make_redis, caplog):
    store = make_redis()
    deployment = deployment_for(
        hub, name="fragile", requests_per_second=10.0, burst=1, shared_limit_url=store.url
    )
    stopper = threading.Timer(0.5, store.stop)
    caplog.set_level(logging.DEBUG, logger="rsgrpc")
    began = time.monotonic()
    stopper.start()
    with SentinelHubDownloadClient(deployment=deployment) as client:
        results = client.download_results(
            [process_request(hub, f"r-{k}", "json") for k in range(20)], max_threads=4
        )
    stopper.join()
    assert time.monotonic() - began < 10.0
    succeeded = [result for result in results if result.ok]
    failed = [result for result in results if not result.ok]
    assert 2 <= len(succeeded) <= 10 and failed
    for result in failed:
        assert result.status is DownloadStatus.FAILED
        assert isinstance(result.error, SharedLimitUnavailableError)
        assert result.error.reason == "SHARED_LIMIT_UNAVAILABLE"
        assert "the shared rate limit store is unreachable" in str(result.error)
        assert PASSWORD not in str(result.error) and str(store.port) not in str(result.error)
    assert PASSWORD not in caplog.text
    assert f"redis://:[REDACTED]@127.0.0.1:{store.port}/0" in caplog.text


def test_a_short_store_outage_is_retried_and_every_item_succeeds(hub, make_redis, caplog):
    """A store restarted within the retries (a failover, say) costs retries, not items."""
    store = make_redis()
    # Retries for about 9 s: a store restarted on a machine busy with other tests can
    # take seconds to answer again.
    retry = RetryPolicy(max_attempts=20, backoff_base_seconds=0.2, backoff_max_seconds=0.5)
    deployment = deployment_for(
        hub, name="failover", requests_per_second=20.0, burst=1, shared_limit_url=store.url
    )
    deployment = replace(deployment, retry=retry)

    def restart() -> None:
        store.stop()
        time.sleep(0.8)
        make_redis(store.port)

    caplog.set_level(logging.DEBUG, logger="rsgrpc")
    outage = threading.Timer(0.3, restart)
    outage.start()
    with SentinelHubDownloadClient(deployment=deployment) as client:
        results = client.download_results(
            [process_request(hub, f"failover-{k}", "json") for k in range(30)], max_threads=4
        )
    outage.join()
    assert [str(result.error) for result in results if not result.ok] == []
    # Some waited out the outage.
    assert "the shared rate limit store is unreachable" in caplog.text
    assert PASSWORD not in caplog.text


def test_a_store_that_never_answers_fails_within_its_timeout():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the backlog and are never answered
        url = f"redis://:{PASSWORD}@127.0.0.1:{silent.getsockname()[1]}/0"
        limit = RedisRateLimit(url, "account", rate=1.0, burst=1, timeout_seconds=0.2)
        began = time.monotonic()
        with pytest.raises(SharedLimitUnavailableError, match="a timeout") as caught:
            limit.reserve()
        assert time.monotonic() - began < 2.0
        assert PASSWORD not in str(caught.value)
        # Right after a failure the store is left alone: the next request fails at once.
        began = time.monotonic()
        with pytest.raises(SharedLimitUnavailableError):
            limit.paused_after(0.0)
        assert time.monotonic() - began < 0.1


def test_the_store_url_is_checked_and_never_shown():
    for url in ("http://127.0.0.1:6379/0", "redis:///0", "unix://", "redis://h:port/0", "h:6379"):
        with pytest.raises(ValueError, match="shared_limit_url"):
            Deployment(requests_per_second=1.0, shared_limit_url=url)
    secret_url = f"redis://user:{PASSWORD}@cache.example:6379/0"
    with pytest.raises(ValueError, match="not both") as caught:
        Deployment(shared_limit_url=secret_url, shared_limit_dir="limits")
    assert PASSWORD not in str(caught.value)
    for url in (secret_url, "rediss://cache.example/1", "unix:///run/redis.sock?db=2"):
        assert PASSWORD not in repr(Deployment(shared_limit_url=url))
    assert redact_url(secret_url) == "redis://user:[REDACTED]@cache.example:6379/0"
    assert PASSWORD not in redact(f"cannot reach {secret_url}")
    assert PASSWORD not in redact_url(f"unix:///run/redis.sock?db=0&password={PASSWORD}")


def test_the_redis_client_is_needed_only_by_a_store_url(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "redis", None)
    assert limiter_for(Deployment(name="local", requests_per_second=1.0)).shared is None
    with pytest.raises(ImportError, match=r"pip install 'rsgrpc\[redis\]'"):
        limiter_for(
            Deployment(
                name="fleet", requests_per_second=1.0, shared_limit_url="redis://127.0.0.1/0"
            )
        )


def test_a_deployments_file_takes_the_store_url_from_the_environment(hub, store, tmp_path):
    file = tmp_path / "deployments.toml"
    file.write_text(
        textwrap.dedent(
            f"""
            [deployments.fleet]
            base_url = "{hub.base_url}"
            token_url = "{hub.token_url}"
            client_id = "{CLIENT_ID}"
            client_secret = "{CLIENT_SECRET}"
            requests_per_second = 20.0
            shared_limit_url_env = "RSGRPC_TEST_LIMIT_URL"
            """
        )
    )
    settings = load_download_settings(file, environ={"RSGRPC_TEST_LIMIT_URL": store.url})
    deployment = settings.deployments["fleet"]
    assert deployment.shared_limit_url == store.url
    assert PASSWORD not in repr(deployment)
    with SentinelHubDownloadClient(deployment=deployment) as client:
        assert isinstance(client.rate_limiter.shared, RedisRateLimit)
        results = client.download_results([process_request(hub, "f-0", "json")])
    assert [result.ok for result in results] == [True]
    assert store.client().hget(key_for("fleet"), "tat")

    base = f'[deployments.fleet]\nbase_url = "{hub.base_url}"\n'
    cases = [
        (f'shared_limit_url = "{store.url}"\nshared_limit_url_env = "E"', "not both"),
        ('shared_limit_url_env = "UNSET_VARIABLE"', "'UNSET_VARIABLE' named by"),
        (f'shared_limit_url = "{store.url}"\nshared_limit_dir = "limits"', "not both"),
        ('shared_limit_url = "memcached://h"', "redis://, rediss:// or unix://"),
    ]
    for text, message in cases:
        file.write_text(base + text + "\n")
        with pytest.raises(DeploymentConfigError, match=message) as caught:
            load_download_settings(file, environ={"E": store.url})
        assert PASSWORD not in str(caught.value)
