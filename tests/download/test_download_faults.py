"""Faults injected by a real HTTP server on 127.0.0.1: nothing broken is kept, memory stays bounded,
Retry-After is read in every form, token outages are ridden out, and no credential leaks.

Every case checks that each request ends either correct (its bytes are the server's) or
failed with a reason, and that no broken answer is left in the cache or anywhere else.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from download_helpers import FAST_RETRY, deployment_for
from fake_sentinelhub import CLIENT_SECRET, PUBLIC_PATH, FakeSentinelHub, large_tiff

from rsgrpc.download import (
    Deployment,
    DownloadClient,
    DownloadRequest,
    DownloadResult,
    DownloadStatus,
    MimeType,
    RetryPolicy,
    SentinelHubDownloadClient,
    SentinelHubSession,
    ServerError,
    parse_retry_after,
)
from rsgrpc.download import cache as download_cache
from rsgrpc.download.errors import (
    DeadlineExceededError,
    IncompleteAnswerError,
    UndecodableAnswerError,
)
from rsgrpc.download.redaction import REDACTED, redact
from rsgrpc.download.validation import check_file

KINDS = {
    "tiff": MimeType.TIFF,
    "png": MimeType.PNG,
    "jpeg": MimeType.JPG,
    "json": MimeType.JSON,
    "xml": MimeType.XML,
    "zip": MimeType.ZIP,
    "tar": MimeType.TAR,
    "text": MimeType.TXT,
    "raw": MimeType.RAW,
}
DECODED_KINDS = ["tiff", "png", "jpeg", "json", "xml", "zip", "tar"]


def request_for(
    hub: FakeSentinelHub, request_id: str, kind: str, folder: Path | None, **payload
) -> DownloadRequest:
    return DownloadRequest(
        url=hub.process_url,
        request_type="POST",
        post_values={"id": request_id, "format": kind, **payload},
        headers={"Content-Type": "application/json"},
        use_session=True,
        data_type=KINDS.get(kind, MimeType.TIFF),
        save_response=folder is not None,
        data_folder=None if folder is None else str(folder),
        return_data=False,
    )


def client_for(hub: FakeSentinelHub, **options) -> SentinelHubDownloadClient:
    client_options = {
        key: options.pop(key)
        for key in ("redownload", "default_retry_time", "session", "cache_max_bytes")
        if key in options
    }
    return SentinelHubDownloadClient(deployment=deployment_for(hub, **options), **client_options)


def cached_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def assert_nothing_broken_kept(hub: FakeSentinelHub, results: list[DownloadResult], folder: Path):
    """Successes hold the server's exact bytes; failures say why and left no file; no
    temporary file remains."""
    for result in results:
        request = result.request
        _, response_path = request.get_storage_paths()
        if result.ok:
            expected = hub.body_for(request.post_values)[0]
            assert Path(response_path).read_bytes() == expected
            assert result.size_bytes == len(expected)
        else:
            assert result.error is not None and str(result.error)
            assert not Path(response_path).exists()
            assert not Path(response_path).parent.exists()
    assert not [path for path in folder.rglob("*") if path.name.endswith(".part")]


# -- 1. nothing broken is kept ---------------------------------------------------------------


@pytest.mark.parametrize("fault", ["partial", "cut", "long_length", "chunked_cut"])
@pytest.mark.parametrize("kind", ["tiff", "json", "text", "raw"])
def test_a_body_cut_short_is_retried_then_failed_and_never_cached(make_hub, tmp_path, fault, kind):
    hub = make_hub()
    hub.faults["once"] = [fault]
    hub.faults["always"] = [fault] * 4
    requests_ = [request_for(hub, name, kind, tmp_path) for name in ("once", "always", "fine")]
    with client_for(hub) as client:
        once, always, fine = client.download_results(requests_, max_threads=3)
    assert once.ok and once.attempts == 2
    assert fine.ok and fine.attempts == 1
    assert always.status is DownloadStatus.FAILED and always.attempts == 4
    assert isinstance(always.error, IncompleteAnswerError)
    assert isinstance(always.error, ServerError)  # UNAVAILABLE through the service
    assert "failed 4 times" in str(always.error)
    assert any(text in str(always.error) for text in ("cut short", "longer than announced"))
    assert_nothing_broken_kept(hub, [once, always, fine], tmp_path)


@pytest.mark.parametrize("fault", ["truncate", "garble", "short_length"])
@pytest.mark.parametrize("kind", DECODED_KINDS)
def test_an_undecodable_body_of_each_type_is_retried_then_failed(make_hub, tmp_path, fault, kind):
    hub = make_hub()
    hub.faults["once"] = [fault]
    hub.faults["always"] = [fault] * 4
    requests_ = [request_for(hub, name, kind, tmp_path) for name in ("once", "always")]
    with client_for(hub) as client:
        once, always = client.download_results(requests_, max_threads=2)
    assert once.ok, once.error
    assert once.attempts == 2
    assert always.status is DownloadStatus.FAILED and always.attempts == 4
    assert isinstance(always.error, UndecodableAnswerError)
    name = {"jpeg": "JPEG", "text": "TXT"}.get(kind, kind.upper())
    assert f"is not a {name} that decodes" in str(always.error)
    assert_nothing_broken_kept(hub, [once, always], tmp_path)


def test_text_and_raw_answers_are_checked_by_length_only(hub, tmp_path):
    # A truncated text answer whose length agrees is text: only a length mismatch is a fault.
    hub.faults["t"] = ["truncate"]
    hub.faults["r"] = ["short_length"]
    requests_ = [request_for(hub, "t", "text", tmp_path), request_for(hub, "r", "raw", tmp_path)]
    with client_for(hub) as client:
        text, raw = client.download_results(requests_)
    assert text.ok and raw.ok
    full = hub.body_for({"id": "t", "format": "text"})[0]
    assert text.size_bytes == len(full) // 2


def test_a_cached_entry_that_does_not_decode_is_dropped_and_fetched_again(hub, tmp_path):
    requests_ = [request_for(hub, f"c{i}", kind, tmp_path) for i, kind in enumerate(KINDS)]
    with client_for(hub) as client:
        assert all(result.ok for result in client.download_results(requests_))
    sent = hub.stats.process_requests
    damaged = []
    for request in requests_:
        if request.data_type in (MimeType.TXT, MimeType.RAW):
            continue
        _, path = request.get_storage_paths()
        body = Path(path).read_bytes()
        Path(path).write_bytes(body[: len(body) // 2])  # as a crash of another tool leaves it
        damaged.append(request)
    with client_for(hub) as client:
        results = client.download_results(requests_)
    assert all(result.ok for result in results)
    fetched = [result for result in results if not result.cache_hit]
    assert sorted(r.request.post_values["id"] for r in fetched) == sorted(
        r.post_values["id"] for r in damaged
    )
    assert hub.stats.process_requests == sent + len(damaged)
    assert_nothing_broken_kept(hub, results, tmp_path)


def test_a_cached_entry_shorter_than_its_stored_length_is_fetched_again(hub, tmp_path):
    request = request_for(hub, "len", "text", tmp_path)
    with client_for(hub) as client:
        (first,) = client.download_results([request])
        _, path = request.get_storage_paths()
        Path(path).write_bytes(b"ans")  # text decodes whatever it is; its length does not agree
        (second,) = client.download_results([request])
    assert first.ok and second.ok and not second.cache_hit
    assert Path(path).read_bytes() == hub.body_for(request.post_values)[0]


def test_returned_data_of_a_broken_answer_is_never_returned(hub, tmp_path):
    hub.faults["x"] = ["truncate"] * 4
    request = request_for(hub, "x", "json", None)
    request.return_data = True
    with client_for(hub) as client:
        (result,) = client.download_results([request])
    assert isinstance(result.error, UndecodableAnswerError) and result.data is None


def test_check_file_reads_each_format_and_refuses_broken_ones(tmp_path):
    for kind, data_type in KINDS.items():
        body = FakeSentinelHub.body_for({"id": "x", "format": kind})[0]
        good = tmp_path / f"good.{kind}"
        good.write_bytes(body)
        check_file(str(good), data_type)
        if kind in ("text", "raw"):
            continue
        broken = tmp_path / f"broken.{kind}"
        broken.write_bytes(body[: len(body) // 2])
        with pytest.raises(UndecodableAnswerError):
            check_file(str(broken), data_type)


# -- 2. streaming, linking, eviction --------------------------------------------------------

_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from rsgrpc.download import DownloadClient, DownloadRequest, Deployment, MimeType

    url, folder, size, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    client = DownloadClient(deployment=Deployment(name="peak", base_url=url))

    def request(name, kind, size):
        return DownloadRequest(
            url=url + "/public/v1/process", request_type="POST",
            post_values={"id": name, "format": kind, "size": size},
            data_type=MimeType.TIFF, save_response=True, data_folder=folder, return_data=False,
        )

    # Warm: every module and GDAL driver loaded, pools made, before the baseline.
    warm = client.download_results([request("warm", "large_tiff", 4 << 20)])
    assert warm[0].ok, warm[0].error
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = client.download_results(
        [request(f"big{i}", "large_tiff", size) for i in range(count)], max_threads=count
    )
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "errors": [str(r.error) for r in results if not r.ok],
        "sizes": [r.size_bytes for r in results],
        "paths": [r.output_path for r in results],
        "baseline_kib": before, "peak_kib": after,
    }))
    """
)


def test_large_answers_stream_to_disk_with_bounded_memory(make_hub, tmp_path):
    hub = make_hub()
    size, count = 256 << 20, 2
    script = tmp_path / "peak.py"
    script.write_text(_PEAK_SCRIPT)
    folder = tmp_path / "cache"
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, str(script), hub.base_url, str(folder), str(size), str(count)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["errors"] == []
    expected_length, _ = large_tiff(size)
    assert report["sizes"] == [expected_length] * count
    growth_mib = (report["peak_kib"] - report["baseline_kib"]) / 1024
    print(
        f"\n{count} answers of {expected_length / 2**20:.0f} MiB at once: peak RSS "
        f"{report['peak_kib'] / 1024:.0f} MiB, {growth_mib:.1f} MiB over the warm baseline"
    )
    assert growth_mib < 100
    for path in report["paths"]:
        assert os.path.getsize(path) == expected_length
        check_file(path, MimeType.TIFF)


def test_a_cut_large_answer_is_never_kept(make_hub, tmp_path):
    hub = make_hub()
    requests_ = [
        DownloadRequest(
            url=hub.base_url + PUBLIC_PATH,
            request_type="POST",
            post_values={"id": "large", "format": "large_tiff", "size": 8 << 20},
            data_type=MimeType.TIFF,
            save_response=True,
            data_folder=str(tmp_path),
            return_data=False,
        )
    ]
    length, pieces = large_tiff(8 << 20)
    body = b"".join(pieces)
    # The large answer cut at three quarters is a TIFF whose strips run past its end.
    broken = tmp_path / "broken.tif"
    broken.write_bytes(body[: length * 3 // 4])
    with pytest.raises(UndecodableAnswerError, match="beyond the end of the file"):
        check_file(str(broken), MimeType.TIFF)
    broken.unlink()
    with DownloadClient(deployment=Deployment(name="plain", base_url=hub.base_url)) as client:
        (result,) = client.download_results(requests_)
    assert result.ok and Path(result.output_path).read_bytes() == body


def test_the_cache_cap_evicts_least_recently_used_entries(hub, tmp_path):
    one = len(hub.body_for({"id": "e0", "format": "tiff"})[0])
    cap = int(one * 3.5) + 3 * 2000  # three answers and their request.json
    requests_ = [request_for(hub, f"e{i}", "tiff", tmp_path) for i in range(6)]
    with client_for(hub, cache_max_bytes=cap) as client:
        for request in requests_[:3]:
            assert client.download_results([request])[0].ok
            time.sleep(0.01)  # distinct modification times
        # e0 used again: e1 is now the least recently used.
        assert client.download_results([requests_[0]])[0].cache_hit
        time.sleep(0.01)
        assert client.download_results([requests_[3]])[0].ok
    kept = {path.parent.name for path in tmp_path.glob("*/response.tiff")}
    names = {request.get_hashed_name(): request.post_values["id"] for request in requests_}
    assert sorted(names[name] for name in kept) == ["e0", "e2", "e3"]
    assert sum(path.stat().st_size for path in cached_files(tmp_path)) <= cap


def test_pinned_entries_are_not_evicted(hub, tmp_path):
    requests_ = [request_for(hub, f"p{i}", "tiff", tmp_path) for i in range(3)]
    with client_for(hub) as client:
        assert all(result.ok for result in client.download_results(requests_))
    paths = [request.get_storage_paths()[1] for request in requests_]
    with download_cache.pinned(paths[:1]):
        download_cache.evict(str(tmp_path), 1)
        assert [os.path.exists(path) for path in paths] == [True, False, False]
    download_cache.evict(str(tmp_path), 1)
    assert not os.path.exists(paths[0])


# -- 3. Retry-After as it comes, token outages, deadlines ------------------------------------

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "integer_unit", "expected"),
    [
        ("250", "milliseconds", 0.25),  # Sentinel Hub: whole milliseconds
        ("2", "seconds", 2.0),  # HTTP: whole seconds
        ("0.75", "milliseconds", 0.75),  # a fraction: seconds, whatever the hint
        ("1.5", "milliseconds", 1.5),
        ("120000", "seconds", 120.0),  # too long for seconds: milliseconds
        (email.utils.formatdate(NOW + 7, usegmt=True), "milliseconds", 7.0),
        ("garbage", "seconds", None),
    ],
)
def test_retry_after_unit_is_detected_where_the_value_tells(value, integer_unit, expected):
    result = parse_retry_after(value, "auto", now=NOW, integer_unit=integer_unit)
    assert result == (None if expected is None else pytest.approx(expected))


def test_retry_after_unit_can_be_forced():
    assert parse_retry_after("1.5", "milliseconds") == pytest.approx(0.0015)
    assert parse_retry_after("250", "seconds") == 250.0
    with pytest.raises(ValueError, match="unsupported Retry-After unit"):
        parse_retry_after("1", "minutes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("retry_after", "unit"),
    [
        ("ms", "auto"),
        ("s_decimal", "auto"),
        ("date", "auto"),
        ("ms_decimal", "milliseconds"),
        ("s", "seconds"),
    ],
)
def test_each_retry_after_form_is_honoured(make_hub, tmp_path, retry_after, unit):
    hub = make_hub(requests_per_second=4, burst=1, retry_after=retry_after)
    requests_ = [request_for(hub, f"r{i}", "raw", tmp_path) for i in range(4)]
    with client_for(hub, retry_after_unit=unit) as client:
        # One at a time: every answer after a 429 is to a request sent after it.
        results = client.download_results(requests_, max_threads=1)
    assert all(result.ok for result in results), [r.error for r in results]
    pauses = [(moment, value) for moment, status, value in hub.answers if status == 429]
    assert pauses
    for moment, value in pauses:
        wait = parse_retry_after(value, unit, integer_unit="milliseconds")
        if retry_after == "date":
            wait = max(0.0, wait - 1.0)  # the date is rounded up to whole seconds
        later = [t for t, _, _ in hub.answers if t > moment]
        assert later[0] - moment >= wait * 0.95
    assert_nothing_broken_kept(hub, results, tmp_path)


def test_whole_seconds_from_a_plain_http_server_are_read_as_seconds(make_hub, tmp_path):
    hub = make_hub(requests_per_second=2, burst=1, retry_after="s")
    deployment = Deployment(name="plain-seconds", base_url=hub.base_url, retry=FAST_RETRY)
    requests_ = [
        DownloadRequest(
            url=hub.base_url + PUBLIC_PATH,
            request_type="POST",
            post_values={"id": f"s{i}", "format": "raw"},
            data_type=MimeType.RAW,
        )
        for i in range(3)
    ]
    with DownloadClient(deployment=deployment) as client:
        results = client.download_results(requests_, max_threads=3)
    assert all(result.ok for result in results)
    # "1" read as one second: no request is sent in the pause, so few 429s.
    assert 1 <= hub.stats.rate_limited <= 3


def test_429_without_retry_after_pauses_the_configured_time(make_hub, tmp_path):
    hub = make_hub(requests_per_second=5, burst=1, retry_after="missing")
    deployment = Deployment(
        name="no-retry-after", base_url=hub.base_url, default_retry_after_seconds=0.3
    )
    requests_ = [
        DownloadRequest(
            url=hub.base_url + PUBLIC_PATH,
            request_type="POST",
            post_values={"id": f"m{i}", "format": "raw"},
        )
        for i in range(3)
    ]
    with DownloadClient(deployment=deployment) as client:
        assert client.default_retry_time == 0.3
        results = client.download_results(requests_, max_threads=1)
    assert all(result.ok for result in results)
    answers = hub.answers
    for index, (moment, status, _) in enumerate(answers[:-1]):
        if status == 429:
            assert answers[index + 1][0] - moment >= 0.3 * 0.95


class FakeClock:
    """A monotonic clock whose sleeps pass at once: a minute of backoff in no time."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return time.monotonic() + self.offset

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.offset += seconds
            self.sleeps.append(seconds)


def test_a_token_outage_of_five_seconds_is_ridden_out(hub, tmp_path):
    hub.token_outage(5.0)
    requests_ = [request_for(hub, f"o{i}", "tiff", tmp_path) for i in range(4)]
    with client_for(hub, token_backoff_max_seconds=1.0) as client:
        results = client.download_results(requests_, max_threads=4)
    assert all(result.ok for result in results), [r.error for r in results]
    assert hub.stats.token_requests >= 3
    assert_nothing_broken_kept(hub, results, tmp_path)


def test_a_token_outage_of_sixty_seconds_is_ridden_out_by_default(hub, tmp_path):
    clock = FakeClock()
    start = clock.monotonic()
    hub.token_outage(60.0, clock=clock)
    deployment = deployment_for(hub, retry=FAST_RETRY.__class__(backoff_base_seconds=0.5))
    session = SentinelHubSession(deployment, clock=clock)
    assert deployment.token_retry_budget_seconds == 90.0
    # The outage lasted a minute of the session's clock (sleeps, and real time besides).
    assert clock.monotonic() - start >= 60.0
    # Bounded, jittered backoff: a few dozen attempts over a minute, none waiting over 8 s.
    assert hub.stats.token_requests <= 30
    assert max(clock.sleeps) <= deployment.token_backoff_max_seconds
    assert len(set(clock.sleeps)) == len(clock.sleeps)
    with client_for(hub, session=session) as client:
        (result,) = client.download_results([request_for(hub, "after", "tiff", tmp_path)])
    assert result.ok


def test_a_token_outage_longer_than_the_budget_fails_with_the_reason(hub):
    clock = FakeClock()
    start = clock.monotonic()
    hub.token_outage(60.0, clock=clock)
    deployment = deployment_for(hub, token_retry_budget_seconds=30.0)
    with pytest.raises(ServerError, match=r"the budget is 30 s\), last with HTTP 503"):
        SentinelHubSession(deployment, clock=clock)
    # It gave up when the next wait (at most 8 s) would have passed the budget.
    # On its whole clock (sleeps and real time); its sleeps alone never pass the budget.
    assert 30.0 - deployment.token_backoff_max_seconds <= clock.monotonic() - start
    assert clock.offset <= 30.0


def test_threads_waiting_for_a_failed_token_fetch_fail_with_it(hub, tmp_path):
    hub.token_outage(60.0)
    requests_ = [request_for(hub, f"w{i}", "tiff", tmp_path) for i in range(6)]
    with client_for(hub, token_retry_budget_seconds=0.6, token_backoff_max_seconds=0.1) as client:
        results = client.download_results(requests_, max_threads=6)
    assert all(isinstance(result.error, ServerError) for result in results)
    assert "token endpoint failed" in str(results[0].error)
    # One outage's worth of attempts, not one per waiting thread.
    assert hub.stats.token_requests <= 20
    assert list(tmp_path.iterdir()) == []


def test_every_wait_ends_at_the_callers_deadline(make_hub, tmp_path):
    hub = make_hub(requests_per_second=0.2, burst=1)
    requests_ = [request_for(hub, f"d{i}", "raw", tmp_path) for i in range(3)]
    with client_for(hub, retry_after_unit="milliseconds") as client:
        results = client.download_results(requests_, max_threads=3, timeout=1.0)
    assert results[0].ok or isinstance(results[0].error, DeadlineExceededError)
    assert any(isinstance(result.error, DeadlineExceededError) for result in results)
    for result in results:
        assert result.ok or "deadline" in str(result.error)
    # A token outage is given up at the deadline too, whatever the token budget.
    hub.token_outage(60.0)
    SentinelHubDownloadClient.clear_cache()
    with client_for(hub, token_backoff_max_seconds=0.2) as client:
        (result,) = client.download_results([request_for(hub, "t", "raw", tmp_path)], timeout=0.8)
    assert isinstance(result.error, DeadlineExceededError)
    assert "token endpoint outage" in str(result.error)


def test_401_after_expiry_reauthenticates_and_keeps_every_answer_sound(make_hub, tmp_path):
    hub = make_hub(token_lifetime=0.5)
    requests_ = [request_for(hub, f"x{i}", "png", tmp_path) for i in range(6)]
    # No refresh ahead: the token is used until the hub refuses it.
    with client_for(hub, refresh_before_expiry_seconds=0.0) as client:
        first = client.download_results(requests_[:3])
        time.sleep(0.6)
        second = client.download_results(requests_[3:])
    assert all(result.ok for result in first + second)
    assert hub.stats.unauthorized >= 1 and hub.stats.token_requests >= 2
    assert_nothing_broken_kept(hub, first + second, tmp_path)


# -- 4. the token never leaves ---------------------------------------------------------------


@pytest.mark.parametrize("fault", ["echo", "echo_text"])
def test_an_upstream_echoing_the_token_leaks_it_nowhere(hub, tmp_path, caplog, fault):
    caplog.set_level(logging.DEBUG)
    hub.faults["echoed"] = [fault] * 8
    requests_ = [
        request_for(hub, "echoed", "tiff", tmp_path),
        request_for(hub, "ok", "tiff", tmp_path),
    ]
    with client_for(hub) as client:
        results = client.download_results(requests_, max_threads=2)
        with pytest.raises(ServerError) as raised:
            client.download(requests_[:1])
    failed = results[0]
    assert isinstance(failed.error, ServerError) and results[1].ok
    message = str(failed.error)
    assert "failed 4 times" in message and REDACTED in message
    assert "Authorization" in message or "token" in message  # the echo is shown, redacted
    texts = [message, repr(failed), str(raised.value), caplog.text]
    texts += [path.read_text(errors="replace") for path in cached_files(tmp_path)]
    secrets = [CLIENT_SECRET, *hub.issued_tokens()]
    assert hub.issued_tokens()
    for secret in secrets:
        for text in texts:
            assert secret not in text
        # Nor any long piece of it (a token cut at a line's end).
        assert all(secret[:24] not in text for text in texts)


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abc.def.ghi",
        "{'Authorization': 'Bearer abc.def.ghi', 'Accept': '*/*'}",
        '{"access_token": "abc.def.ghi", "token_type": "Bearer"}',
        "grant_type=client_credentials&client_id=me&client_secret=abc.def.ghi",
        "token is eyJhbGciOiJub25lIn0.eyJhenAiOiJ4In0.abc.def.ghi",
        "bearer abc.def.ghi was refused",
    ],
)
def test_redact_removes_credentials_by_shape(text):
    shown = redact(text)
    assert "abc.def.ghi" not in shown and REDACTED in shown


def test_redact_keeps_ordinary_text():
    text = "the token endpoint failed 3 times, last with HTTP 503 (POST /api/v1/process)"
    assert redact(text) == text


def test_log_lines_are_redacted_whatever_they_quote(caplog):
    logger = logging.getLogger("rsgrpc.download.client")
    caplog.set_level(logging.DEBUG, logger="rsgrpc.download.client")
    logger.warning("upstream said %s", {"Authorization": "Bearer abc.def.ghi"})
    assert "abc.def.ghi" not in caplog.text and REDACTED in caplog.text


def test_whole_seconds_taken_for_milliseconds_still_succeed_by_backing_off(make_hub, tmp_path):
    # A Sentinel Hub-style deployment whose server sends whole seconds: "auto" reads "1" as
    # 1 ms; a request refused again backs off on its own instead of burning its retries.
    hub = make_hub(requests_per_second=4, burst=1, retry_after="s")
    requests_ = [request_for(hub, f"b{i}", "raw", tmp_path) for i in range(6)]
    retry = RetryPolicy(backoff_base_seconds=0.1, backoff_max_seconds=1.0)
    with client_for(hub, retry=retry) as client:
        results = client.download_results(requests_, max_threads=3)
    assert all(result.ok for result in results), [r.error for r in results]
    assert max(result.rate_limited for result in results) <= retry.max_rate_limit_retries


def test_eviction_removes_what_dead_writers_left(hub, tmp_path):
    request = request_for(hub, "dead", "tiff", tmp_path)
    with client_for(hub) as client:
        assert client.download_results([request])[0].ok
    _, response_path = request.get_storage_paths()
    folder = Path(response_path).parent
    stale, fresh = folder / ".response.tiff.old.part", folder / ".response.tiff.new.part"
    for path in (stale, fresh):
        path.write_bytes(b"half an answer")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (day_ago, day_ago))
    download_cache.evict(str(tmp_path), 10**9)
    assert not stale.exists() and fresh.exists() and Path(response_path).exists()
