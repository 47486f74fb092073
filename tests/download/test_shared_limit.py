"""A rate shared through a locked file: separate processes against one fake hub keep to one rate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from fake_sentinelhub import CLIENT_ID, CLIENT_SECRET, PROCESS_PATH, TOKEN_PATH

from rsgrpc.download import DeadlineExceededError, Deployment, RateLimiter, limiter_for
from rsgrpc.download.shared_limit import SharedRateLimit, state_file_name

RATE = 10.0
BURST = 2
PER_PROCESS = 15

# One process of the two: imports, says it is ready, waits for "go", downloads its share.
_WORKER = textwrap.dedent(
    """
    import json, sys
    from rsgrpc.download import (
        Deployment, DownloadRequest, MimeType, SentinelHubDownloadClient
    )

    base_url, folder, prefix, count, rate, burst, path, token_path, client_id, secret = (
        sys.argv[1:11]
    )
    deployment = Deployment(
        name="shared-test",
        base_url=base_url,
        token_url=base_url + token_path,
        client_id=client_id,
        client_secret=secret,
        requests_per_second=float(rate),
        burst=int(burst),
        shared_limit_dir=folder or None,
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
    print(json.dumps([result.ok for result in results]), flush=True)
    """
)


def _run_two_processes(hub, folder: str) -> list[float]:
    """Start two worker processes sharing ``folder`` (or nothing), release them together,
    and return the hub's answer times of their requests."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, hub.base_url, folder, prefix, str(PER_PROCESS)]
            + [str(RATE), str(BURST), PROCESS_PATH, TOKEN_PATH, CLIENT_ID, CLIENT_SECRET],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for prefix in ("first", "second")
    ]
    try:
        for worker in workers:
            assert worker.stdout.readline().strip() == "ready"
        hub.answers.clear()
        for worker in workers:
            worker.stdin.write("go\n")
            worker.stdin.flush()
        for worker in workers:
            assert json.loads(worker.stdout.readline()) == [True] * PER_PROCESS
            assert worker.wait(timeout=60) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert {key.split("-")[0] for key in hub.sent} == {"first", "second"}
    times = sorted(moment for moment, status, _ in hub.answers if status == 200)
    assert len(times) == 2 * PER_PROCESS
    return times


def _densest_excess(times: list[float], rate: float, burst: float) -> float:
    """How far the busiest window of answers goes over ``rate * length + burst`` (<= 0: kept)."""
    return max(
        (j - i + 1) - (rate * (times[j] - times[i]) + burst)
        for i in range(len(times))
        for j in range(i, len(times))
    )


def test_two_processes_sharing_a_limit_keep_to_one_rate_together(make_hub, tmp_path):
    hub = make_hub()
    times = _run_two_processes(hub, str(tmp_path / "limits"))
    total = 2 * PER_PROCESS
    # No window holds more than the rate allows plus the burst; the margin is the scheduling
    # delay between a reserved start and the answer (0.4 s of it here).
    assert _densest_excess(times, RATE, BURST) <= 0.4 * RATE
    # One rate for both: the batch takes at least as long as one rate needs for all of it.
    assert times[-1] - times[0] >= (total - BURST) / RATE - 0.4
    assert (tmp_path / "limits" / state_file_name("shared-test")).is_file()


def test_two_processes_without_a_shared_limit_each_take_the_whole_rate(make_hub, tmp_path):
    hub = make_hub()
    times = _run_two_processes(hub, "")
    total = 2 * PER_PROCESS
    # Each process alone needs (PER_PROCESS - BURST) / RATE s; together they finish well
    # before one shared rate would let them (the test above).
    assert times[-1] - times[0] < (total - BURST) / RATE
    assert _densest_excess(times, RATE, BURST) > 0


def test_reservations_through_two_open_files_are_spaced_at_the_rate(tmp_path):
    first = SharedRateLimit(tmp_path, "account", rate=10.0, burst=3)
    second = SharedRateLimit(tmp_path, "account", rate=10.0, burst=3)
    assert first.path == second.path
    began = time.time()
    starts = [(first if k % 2 else second).reserve()[1] for k in range(10)]
    elapsed = time.time() - began
    assert starts == sorted(starts)
    # The burst goes at once; after it, one start every 0.1 s of the shared bucket.
    for k in range(3):
        assert starts[k] <= began + elapsed
    for k in range(3, 10):
        assert starts[k] == pytest.approx(starts[0] + (k - 2) * 0.1, abs=elapsed + 1e-6)
    first.close()
    second.close()


def test_a_reservation_past_the_deadline_raises_and_reserves_nothing(tmp_path):
    limit = SharedRateLimit(tmp_path, "account", rate=1.0, burst=1)
    _, start = limit.reserve()
    with pytest.raises(DeadlineExceededError):
        limit.reserve(deadline=time.monotonic() + 0.2)
    wait, after = SharedRateLimit(tmp_path, "account", rate=1.0, burst=1).reserve()
    assert after == pytest.approx(start + 1.0)
    assert 0 < wait <= 1.0


def test_a_pause_by_one_process_holds_back_every_other(tmp_path):
    ours = SharedRateLimit(tmp_path, "account", rate=100.0, burst=1)
    theirs = SharedRateLimit(tmp_path, "account", rate=100.0, burst=1)
    _, before = ours.reserve()
    until = theirs.pause(5.0)
    assert ours.paused_after(before)
    wait, start = ours.reserve()
    assert start >= until and 4.0 < wait <= 5.0
    assert not ours.paused_after(start)


def test_damaged_state_file_starts_a_fresh_bucket(tmp_path):
    limit = SharedRateLimit(tmp_path, "account", rate=1.0, burst=1)
    limit.path.write_bytes(b"\xff" * 16)  # NaNs: no moment at all
    wait, _ = limit.reserve()
    assert wait <= 0.0


def test_state_file_names_are_safe_and_distinct():
    names = ["https://services.example.com", "https://services.example.com/", "a b", "a_b"]
    files = [state_file_name(name) for name in names]
    assert len(set(files)) == len(files)
    assert all("/" not in name and " " not in name for name in files)


def test_the_default_limiter_keeps_its_rate_in_this_process(tmp_path):
    plain = limiter_for(Deployment(name="plain", requests_per_second=5.0))
    assert plain.shared is None
    shared = limiter_for(
        Deployment(name="shared", requests_per_second=5.0, shared_limit_dir=str(tmp_path / "s"))
    )
    assert shared.shared is not None
    assert shared.shared.path == tmp_path / "s" / state_file_name("shared")
    assert shared.shared.path.is_file()
    # Without a rate there is nothing to share.
    assert limiter_for(Deployment(name="free", shared_limit_dir=str(tmp_path / "f"))).shared is None


def test_a_limiter_sharing_a_file_paces_its_own_threads_too(tmp_path):
    deployment = Deployment(
        name="paced", requests_per_second=20.0, burst=1, shared_limit_dir=str(tmp_path)
    )
    limiter = limiter_for(deployment)
    other = SharedRateLimit(tmp_path, "paced", rate=20.0, burst=1)
    began, began_wall = time.monotonic(), time.time()
    for _ in range(5):
        with limiter.slot():
            pass
    # Five slots through the limiter took four intervals, and another process's next start
    # comes after all five.
    assert time.monotonic() - began >= 4 / 20.0 - 0.01
    assert other.reserve()[1] >= began_wall + 5 / 20.0 - 1e-6
    assert limiter.stats.requests_started == 5


def test_a_429_in_another_process_holds_our_requests_back_within_our_deadline(tmp_path):
    deployment = Deployment(
        name="paused", requests_per_second=2.0, burst=1, shared_limit_dir=str(tmp_path)
    )
    # Two limiters of one deployment, each with its own open file, as two processes have.
    ours, theirs = RateLimiter.from_deployment(deployment), RateLimiter.from_deployment(deployment)
    with ours.slot():
        pass
    entered: list[float] = []
    errors: list[BaseException] = []

    def second_request() -> None:
        try:
            with ours.slot(deadline=time.monotonic() + 30):
                entered.append(time.time())
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            errors.append(error)

    # Our next slot is reserved 0.5 s ahead; their 429 comes while we wait for it.
    waiting = threading.Thread(target=second_request)
    waiting.start()
    time.sleep(0.1)
    until = theirs.shared.pause(1.0)
    waiting.join(timeout=30)
    assert not errors and len(entered) == 1
    assert entered[0] >= until - 1e-3
    # A wait the deadline cannot cover fails at once and reserves nothing.
    theirs.pause(5.0)
    began = time.monotonic()
    with pytest.raises(DeadlineExceededError), ours.slot(deadline=time.monotonic() + 3.0):
        pass
    assert time.monotonic() - began < 3.0  # at once, not at the deadline
    assert ours.stats.requests_started == 2
