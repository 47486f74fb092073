"""The download client against a real HTTP server on 127.0.0.1 acting as a Sentinel Hub deployment.

Every case checks that every request ends either downloaded, byte-identical to what the server
sent, or failed with its reason; none is lost and no cache file is half-written.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from download_helpers import deployment_for, process_request
from fake_sentinelhub import CLIENT_SECRET, FakeSentinelHub

from rsgrpc.download import (
    AuthenticationError,
    BadRequestError,
    DownloadCancelledError,
    DownloadClient,
    DownloadFailedWarning,
    DownloadRequest,
    DownloadResult,
    DownloadStatus,
    NotFoundError,
    OutOfRequestsError,
    RetryPolicy,
    SentinelHubDownloadClient,
    ServerError,
    decode_data,
)


def sh_client(server: FakeSentinelHub, **options) -> SentinelHubDownloadClient:
    client_options = {
        key: options.pop(key)
        for key in ("redownload", "raise_download_errors", "default_retry_time")
        if key in options
    }
    return SentinelHubDownloadClient(deployment=deployment_for(server, **options), **client_options)


def assert_batch_sound(server: FakeSentinelHub, results: list[DownloadResult], folder: Path | None):
    """Every result is in order; successes hold the server's bytes; the cache holds no partials."""
    assert [result.index for result in results] == list(range(len(results)))
    for result in results:
        assert result.status is not None
        if result.ok:
            request_id = result.request.post_values["id"]
            expected = server.body_for(result.request.post_values)[0]
            assert result.size_bytes == len(expected)
            if result.output_path and not result.cache_hit:
                assert server.sent[request_id] == expected
            if result.output_path:
                assert Path(result.output_path).read_bytes() == expected
        else:
            assert result.error is not None
            assert str(result.error)
    if folder is not None:
        assert not [path for path in folder.rglob("*") if path.name.endswith(".part")]
        for path in folder.rglob("response.*"):
            assert path.stat().st_size > 0


def test_geotiff_batch_is_byte_identical_and_decoded(hub, tmp_path):
    requests_ = [process_request(hub, f"tile-{i}", data_folder=str(tmp_path)) for i in range(40)]
    with sh_client(hub) as client:
        results = client.download_results(requests_, max_threads=4)
    assert all(result.ok and result.attempts == 1 for result in results)
    assert_batch_sound(hub, results, tmp_path)
    body = hub.body_for({"id": "tile-7", "format": "tiff"})[0]
    with rasterio.MemoryFile(body) as memory_file, memory_file.open() as dataset:
        expected = np.moveaxis(dataset.read(), 0, -1)
    np.testing.assert_array_equal(results[7].data, expected)
    # Four pooled connections plus one for the token.
    assert hub.stats.connections_opened <= 5
    assert hub.stats.token_requests == 1


def test_download_returns_data_in_request_order(hub):
    requests_ = [process_request(hub, f"j{i}", "json") for i in range(12)]
    with sh_client(hub) as client:
        data = client.download(requests_, max_threads=6)
    assert [item["id"] for item in data] == [f"j{i}" for i in range(12)]


@pytest.mark.parametrize("kind", ["png", "jpeg", "json", "text", "raw"])
def test_every_format_is_decoded(hub, tmp_path, kind):
    request = process_request(hub, "one", kind, data_folder=str(tmp_path))
    with sh_client(hub) as client:
        (result,) = client.download_results([request])
    assert result.ok, result.error
    body = hub.body_for(request.post_values)[0]
    assert Path(result.output_path).read_bytes() == body
    if kind in ("png", "jpeg"):
        np.testing.assert_array_equal(result.data, decode_data(body, request.data_type))
        assert result.data.shape == (32, 48, 3)
    elif kind == "json":
        assert result.data == json.loads(body)
    else:
        assert result.data == decode_data(body, request.data_type)
    assert Path(result.output_path).suffix == {"jpeg": ".jpg", "text": ".txt"}.get(kind, f".{kind}")


@pytest.mark.parametrize("retry_after", ["ms", "ms_decimal", "s", "s_decimal", "date", "missing"])
def test_429_with_each_retry_after_kind_is_retried(make_hub, tmp_path, retry_after):
    hub = make_hub(requests_per_second=20, burst=2, retry_after=retry_after)
    unit = "seconds" if retry_after.startswith("s") else "milliseconds"
    requests_ = [process_request(hub, f"r{i}", data_folder=str(tmp_path)) for i in range(8)]
    with sh_client(hub, retry_after_unit=unit, default_retry_time=0.05) as client:
        results = client.download_results(requests_, max_threads=8)
    assert all(result.ok for result in results), [r.error for r in results]
    assert hub.stats.rate_limited > 0
    assert sum(result.rate_limited for result in results) == hub.stats.rate_limited
    assert client.rate_limiter.stats.rate_limited_answers == hub.stats.rate_limited
    assert_batch_sound(hub, results, tmp_path)


@pytest.mark.parametrize(
    ("retry_after", "unit"), [("ms", "milliseconds"), ("s_decimal", "seconds")]
)
def test_no_request_is_sent_during_a_429_pause(make_hub, retry_after, unit):
    hub = make_hub(requests_per_second=4, burst=1, retry_after=retry_after)
    requests_ = [process_request(hub, f"r{i}", "raw") for i in range(4)]
    with sh_client(hub, retry_after_unit=unit) as client:
        results = client.download_results(requests_, max_threads=1)
    assert all(result.ok for result in results)
    pauses = [(moment, value) for moment, status, value in hub.answers if status == 429]
    assert pauses
    for moment, value in pauses:
        seconds = float(value) / (1000 if unit == "milliseconds" else 1)
        later = [t for t, _, _ in hub.answers if t > moment]
        assert later[0] - moment >= seconds * 0.95


def test_429_retries_are_bounded(make_hub):
    hub = make_hub(requests_per_second=0.001, burst=1)
    requests_ = [process_request(hub, "first"), process_request(hub, "second")]
    retry = RetryPolicy(max_rate_limit_retries=2)
    with sh_client(
        hub, default_retry_time=0.01, max_retry_after_seconds=0.01, retry=retry
    ) as client:
        first, second = client.download_results(requests_, max_threads=1)
    assert first.ok
    assert isinstance(second.error, OutOfRequestsError)
    assert second.error.status_code == 429
    assert second.rate_limited == 3 and second.attempts == 3


def test_configured_rate_equal_to_the_server_limit_gets_no_429(make_hub):
    # The server's bucket holds 20 requests; a client burst of 2 leaves room for network jitter.
    hub = make_hub(requests_per_second=100, burst=20)
    requests_ = [process_request(hub, f"r{i}", "raw") for i in range(500)]
    with sh_client(hub, requests_per_second=100, burst=2) as client:
        results = client.download_results(requests_, max_threads=16)
    assert all(result.ok for result in results)
    assert hub.stats.rate_limited == 0
    assert sum(result.rate_limited for result in results) == 0
    assert hub.stats.connections_opened <= 16 + 1


def test_processing_unit_limit_is_kept(make_hub):
    hub = make_hub(
        processing_units_per_request=4,
        processing_units_per_second=200,
        processing_units_burst=40,
    )
    requests_ = [process_request(hub, f"r{i}", "raw") for i in range(60)]
    with sh_client(hub, processing_units_per_second=200, processing_units_burst=20) as client:
        results = client.download_results(requests_, max_threads=8)
    assert all(result.ok for result in results)
    assert hub.stats.rate_limited == 0


@pytest.mark.parametrize("fault", ["500", "502", "503", "504", "reset", "partial", "slow"])
def test_transient_failures_are_retried(make_hub, tmp_path, fault):
    hub = make_hub(slow_seconds=1.5)
    requests_ = [process_request(hub, f"r{i}", data_folder=str(tmp_path)) for i in range(6)]
    hub.faults["r1"] = [fault]
    hub.faults["r4"] = [fault, fault]
    with sh_client(hub, read_timeout_seconds=0.5) as client:
        results = client.download_results(requests_, max_threads=3)
    assert all(result.ok for result in results), [r.error for r in results]
    assert [result.attempts for result in results] == [1, 2, 1, 1, 3, 1]
    assert_batch_sound(hub, results, tmp_path)


@pytest.mark.parametrize(
    ("fault", "reason"), [("503", "HTTP 503"), ("reset", "connection"), ("slow", "timeout")]
)
def test_transient_failures_exhaust_into_server_error(make_hub, tmp_path, fault, reason):
    hub = make_hub(slow_seconds=0.6)
    requests_ = [process_request(hub, f"r{i}", data_folder=str(tmp_path)) for i in range(3)]
    hub.faults["r0"] = [fault] * 4
    with sh_client(hub, read_timeout_seconds=0.3) as client:
        results = client.download_results(requests_, max_threads=3)
    failed = results[0]
    assert failed.status is DownloadStatus.FAILED
    assert isinstance(failed.error, ServerError)
    assert reason in str(failed.error)
    assert failed.attempts == 4
    assert not Path(failed.output_path).exists()
    assert results[1].ok and results[2].ok
    assert_batch_sound(hub, results, tmp_path)


@pytest.mark.parametrize(("fault", "error"), [("400", BadRequestError), ("404", NotFoundError)])
def test_client_errors_fail_at_once_without_hiding_others(hub, tmp_path, fault, error):
    requests_ = [process_request(hub, f"r{i}", data_folder=str(tmp_path)) for i in range(5)]
    hub.faults["r2"] = [fault]
    with sh_client(hub) as client:
        results = client.download_results(requests_, max_threads=2)
    assert isinstance(results[2].error, error)
    assert results[2].error.status_code == int(fault)
    assert f"injected {fault}" in str(results[2].error)
    assert results[2].attempts == 1
    assert [result.ok for result in results] == [True, True, False, True, True]
    assert_batch_sound(hub, results, tmp_path)


def test_download_raises_the_first_failure_after_finishing_the_batch(hub, tmp_path):
    requests_ = [process_request(hub, f"r{i}", data_folder=str(tmp_path)) for i in range(4)]
    hub.faults["r1"] = ["400"]
    with sh_client(hub) as client, pytest.raises(BadRequestError):
        client.download(requests_, max_threads=2)
    assert len(list(tmp_path.rglob("response.tiff"))) == 3


def test_download_warns_instead_when_asked(hub):
    requests_ = [process_request(hub, f"r{i}", "json") for i in range(3)]
    hub.faults["r1"] = ["404"]
    client = sh_client(hub, raise_download_errors=False)
    with client, pytest.warns(DownloadFailedWarning, match="injected 404"):
        data = client.download(requests_)
    assert data[0]["id"] == "r0" and data[1] is None and data[2]["id"] == "r2"


def test_token_endpoint_failures_are_retried(hub):
    hub.token_faults = ["500", "reset", "slow"]
    hub.slow_seconds = 1.5
    with sh_client(hub) as client:
        results = client.download_results([process_request(hub, "r0")])
    assert results[0].ok
    assert hub.stats.token_requests == 4


def test_token_endpoint_that_keeps_failing_fails_the_requests(hub):
    hub.token_faults = ["503"] * 20
    with sh_client(hub, token_retry_budget_seconds=0.2, token_backoff_max_seconds=0.05) as client:
        results = client.download_results([process_request(hub, f"r{i}") for i in range(3)])
    assert all(isinstance(result.error, ServerError) for result in results)
    assert "token endpoint" in str(results[0].error)


def test_wrong_credentials_are_an_authentication_error(hub):
    with sh_client(hub, client_secret="wrong") as client:
        results = client.download_results([process_request(hub, f"r{i}") for i in range(3)])
    assert all(isinstance(result.error, AuthenticationError) for result in results)
    assert "invalid_client" in str(results[0].error)
    assert "wrong" not in str(results[0].error)


def test_401_after_expiry_reauthenticates_once(hub, tmp_path):
    requests_ = [process_request(hub, f"r{i}", data_folder=str(tmp_path)) for i in range(20)]
    with sh_client(hub) as client:
        client.download_results(requests_[:5], max_threads=4)
        hub.revoke_tokens()
        results = client.download_results(requests_[5:], max_threads=4)
    assert all(result.ok for result in results)
    assert hub.stats.token_requests == 2
    assert hub.stats.unauthorized >= 1
    assert_batch_sound(hub, results, tmp_path)


def test_401_that_persists_is_an_authentication_error(hub):
    hub.reject_all_tokens = True
    with sh_client(hub) as client:
        (result,) = client.download_results([process_request(hub, "r0")])
    assert isinstance(result.error, AuthenticationError)
    assert result.error.status_code == 401
    assert result.attempts == 2


def test_tokens_are_refreshed_ahead_of_expiry_without_401(make_hub):
    hub = make_hub(token_lifetime=1.2, requests_per_second=40, burst=40)
    requests_ = [process_request(hub, f"r{i}", "raw") for i in range(100)]
    with sh_client(
        hub, requests_per_second=40, burst=5, refresh_before_expiry_seconds=0.5
    ) as client:
        results = client.download_results(requests_, max_threads=8)
    assert all(result.ok for result in results)
    assert hub.stats.unauthorized == 0
    # About 2.5 s of work with 1.2 s tokens: a handful of refreshes, not one per request.
    assert 2 <= hub.stats.token_requests <= 8


def test_failed_refresh_ahead_keeps_the_valid_token(make_hub):
    hub = make_hub(token_lifetime=3.0)
    with sh_client(hub, refresh_before_expiry_seconds=1.4) as client:
        first = client.download_results([process_request(hub, "r0", "raw")])
        hub.token_faults = ["503"] * 4
        time.sleep(1.7)  # into the refresh window, the token still valid for over a second
        results = client.download_results([process_request(hub, f"r{i}", "raw") for i in range(5)])
    assert first[0].ok and all(result.ok for result in results)
    assert hub.stats.unauthorized == 0
    # The refresh ahead was tried (and retried for at most half the token's remaining life).
    assert hub.stats.token_requests >= 2


def test_cache_hits_send_nothing_and_redownload_does(hub, tmp_path):
    requests_ = [process_request(hub, f"r{i}", data_folder=str(tmp_path)) for i in range(10)]
    with sh_client(hub) as client:
        first = client.download_results(requests_)
    sent = hub.stats.process_requests
    with sh_client(hub) as client:
        second = client.download_results(requests_)
    assert hub.stats.process_requests == sent
    assert all(result.cache_hit and result.attempts == 0 for result in second)
    for before, after in zip(first, second, strict=True):
        np.testing.assert_array_equal(before.data, after.data)
    with sh_client(hub, redownload=True) as client:
        third = client.download_results(requests_)
    assert not any(result.cache_hit for result in third)
    assert hub.stats.process_requests == sent + 10


def test_cache_holds_no_secrets_and_results_show_none(hub, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    requests_ = [process_request(hub, f"r{i}", data_folder=str(tmp_path)) for i in range(3)]
    hub.faults["r1"] = ["401"]
    with sh_client(hub) as client:
        results = client.download_results(requests_)
        token = client.get_session().token["access_token"]
        shown = repr(client.get_session()) + repr(client.deployment)
    shown += "".join(repr(result) for result in results) + caplog.text
    stored = b"".join(path.read_bytes() for path in tmp_path.rglob("request.json"))
    for secret in (CLIENT_SECRET, token, token.split(".")[-1]):
        assert secret not in shown
        assert secret.encode() not in stored
    assert all(result.ok for result in results)


def test_cancel_event_stops_requests_not_yet_started(hub, tmp_path):
    requests_ = [process_request(hub, f"r{i}", data_folder=str(tmp_path)) for i in range(30)]
    cancel = threading.Event()
    seen: list[DownloadResult] = []

    def progress(result: DownloadResult) -> None:
        seen.append(result)
        if len(seen) == 5:
            cancel.set()

    with sh_client(hub, requests_per_second=50, burst=1) as client:
        results = client.download_results(
            requests_, max_threads=2, progress_callback=progress, cancel_event=cancel
        )
    assert sorted(result.index for result in seen) == list(range(30))
    statuses = [result.status for result in results]
    assert statuses.count(DownloadStatus.SUCCEEDED) >= 5
    assert statuses.count(DownloadStatus.CANCELLED) >= 20
    for result in results:
        if result.status is DownloadStatus.CANCELLED:
            assert isinstance(result.error, DownloadCancelledError)
            assert not Path(result.output_path).exists()
    assert_batch_sound(hub, results, tmp_path)


def test_concurrency_limit_is_separate_from_the_rate(make_hub):
    hub = make_hub(latency=0.05)
    requests_ = [process_request(hub, f"r{i}", "raw") for i in range(16)]
    with sh_client(hub, max_concurrent_requests=3) as client:
        results = client.download_results(requests_, max_threads=8)
    assert all(result.ok for result in results)
    assert hub.stats.max_in_flight <= 3


def test_clients_of_one_deployment_share_the_limiter_and_pause(hub):
    deployment = deployment_for(hub, requests_per_second=10)
    first = SentinelHubDownloadClient(deployment=deployment)
    second = SentinelHubDownloadClient(deployment=deployment)
    assert first.rate_limiter is second.rate_limiter
    assert first.get_session() is second.get_session()


def test_generic_client_downloads_without_a_session(hub, tmp_path):
    # The generic client sends no token: the fake hub answers 401, which fails at once.
    request = process_request(hub, "r0", data_folder=str(tmp_path))
    with DownloadClient(deployment=deployment_for(hub)) as client:
        (result,) = client.download_results([request])
    assert isinstance(result.error, AuthenticationError)
    assert result.attempts == 1
    unsaved = DownloadRequest(url=hub.base_url + "/nowhere", save_response=True)
    with DownloadClient() as client:
        (result,) = client.download_results([unsaved])
    assert result.status is DownloadStatus.FAILED and "data_folder" in str(result.error)


def test_show_progress_writes_to_stderr(hub, capsys):
    with sh_client(hub) as client:
        client.download([process_request(hub, "r0", "raw")], show_progress=True)
    assert "1/1" in capsys.readouterr().err


def test_failed_downloads_are_not_cached(hub, tmp_path):
    hub.faults["r0"] = ["partial"] * 4
    request = process_request(hub, "r0", data_folder=str(tmp_path))
    with sh_client(hub) as client:
        (result,) = client.download_results([request])
    assert isinstance(result.error, ServerError)
    assert list(tmp_path.iterdir()) == []
