"""Pure-logic tests of the download library: Retry-After, request hashing, the limiter, decoding."""

from __future__ import annotations

import email.utils
import json
import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sentinelhub import DownloadRequest as SHDownloadRequest
from sentinelhub import MimeType as SHMimeType

from rsgrpc.download import (
    Deployment,
    DownloadCancelledError,
    DownloadRequest,
    InvalidRequestError,
    MimeType,
    RateLimiter,
    RetryPolicy,
    decode_data,
    parse_retry_after,
    redact_headers,
)
from rsgrpc.download.errors import DecodingError

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        ("250", "milliseconds", 0.25),
        ("250.5", "milliseconds", 0.2505),
        ("2", "seconds", 2.0),
        ("0.75", "seconds", 0.75),
        (" 3 ", "seconds", 3.0),
        ("-5", "seconds", 0.0),
        (email.utils.formatdate(NOW + 7, usegmt=True), "milliseconds", 7.0),
        (email.utils.formatdate(NOW - 7, usegmt=True), "seconds", 0.0),
        (None, "milliseconds", None),
        ("", "milliseconds", None),
        ("soon", "milliseconds", None),
        ("nan", "seconds", None),
        ("inf", "seconds", None),
    ],
)
def test_parse_retry_after_reads_every_form(value, unit, expected):
    assert parse_retry_after(value, unit, now=NOW) == pytest.approx(expected)


@given(st.text(max_size=40))
def test_parse_retry_after_never_raises(value):
    result = parse_retry_after(value, "milliseconds", now=NOW)
    assert result is None or result >= 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@given(
    st.text(max_size=30),
    st.none() | st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    st.sampled_from(["tiff", "png", "json", "raw"]),
)
def test_cache_paths_match_sentinelhub(url, payload, extension):
    ours = DownloadRequest(url=url, post_values=payload, data_type=extension, data_folder="cache")
    theirs = SHDownloadRequest(
        url=url, post_values=payload, data_type=SHMimeType(extension), data_folder="cache"
    )
    assert ours.get_hashed_name() == theirs.get_hashed_name()
    assert ours.get_storage_paths() == theirs.get_storage_paths()


def test_sentinelhub_requests_are_converted():
    theirs = SHDownloadRequest(
        url="http://x/y", post_values={"a": 1}, data_type=SHMimeType.TIFF, use_session=True
    )
    ours = DownloadRequest.coerce(theirs)
    assert ours.data_type is MimeType.TIFF
    assert ours.use_session
    assert ours.get_hashed_name() == theirs.get_hashed_name()


def test_request_without_data_folder_cannot_be_saved():
    with pytest.raises(InvalidRequestError, match="data_folder"):
        DownloadRequest(url="http://x", save_response=True).raise_if_invalid()


def test_request_repr_hides_headers_and_payload():
    request = DownloadRequest(url="http://x", headers={"Authorization": "Bearer abc.def"})
    assert "abc.def" not in repr(request)


def test_redact_headers_drops_credentials():
    headers = {"Authorization": "Bearer t", "Set-Cookie": "c", "X-Api-Key": "k", "Accept": "a"}
    assert redact_headers(headers) == {"Accept": "a"}


def test_deployment_repr_hides_secret():
    deployment = Deployment(client_id="id", client_secret="very-secret")
    assert "very-secret" not in repr(deployment)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retry_after_unit": "minutes"}, "unsupported retry_after_unit"),
        ({"requests_per_second": 0}, "requests_per_second must be positive"),
        ({"burst": 0}, "burst must be at least 1"),
        ({"max_concurrent_requests": 0}, "max_concurrent_requests must be at least 1"),
    ],
)
def test_deployment_rejects_bad_settings(options, message):
    with pytest.raises(ValueError, match=message):
        Deployment(**options)


def test_backoff_grows_exponentially_and_is_capped():
    policy = RetryPolicy(backoff_base_seconds=0.5, backoff_max_seconds=3.0)
    assert [policy.backoff_seconds(n, 1.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.backoff_seconds(3, 0.0) == 0.0


def test_limiter_allows_a_burst_then_paces():
    limiter = RateLimiter(requests_per_second=20, burst=3)
    starts = []
    for _ in range(6):
        with limiter.slot():
            starts.append(time.monotonic())
    since_first = np.array(starts) - starts[0]
    # The burst goes without waiting for a token (a token comes every 0.05 s); the rest are
    # paced, the k-th no earlier than k - 2 tokens after the first (sleep never ends early;
    # a request held back by a busy machine lets the next one go sooner, as a token bucket
    # does, so only these sums are bounds, not each gap).
    assert since_first[2] < 0.045
    paced = since_first[3:] - 0.05 * np.arange(1, 4)
    assert paced.min() >= -0.005
    assert limiter.stats.requests_started == 6


def test_limiter_pause_holds_back_every_thread():
    limiter = RateLimiter()
    limiter.pause(0.3)
    started = time.monotonic()
    with limiter.slot():
        waited = time.monotonic() - started
    assert waited >= 0.29
    assert limiter.stats.rate_limited_answers == 1


def test_limiter_wait_is_cancellable():
    limiter = RateLimiter()
    limiter.pause(30)
    cancel = threading.Event()
    threading.Timer(0.05, cancel.set).start()
    with pytest.raises(DownloadCancelledError), limiter.slot(cancel):
        pass


def test_limiter_bounds_concurrency():
    limiter = RateLimiter(max_concurrent_requests=2)
    inside = 0
    most = 0
    lock = threading.Lock()

    def work():
        nonlocal inside, most
        with limiter.slot():
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.02)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 2


def test_decode_json_and_raw():
    assert decode_data(json.dumps({"a": [1, 2]}).encode(), MimeType.JSON) == {"a": [1, 2]}
    assert decode_data(b"", MimeType.JSON) == ""
    assert decode_data(b"\x00\x01", MimeType.RAW) == b"\x00\x01"


@pytest.mark.parametrize("data_type", [MimeType.TIFF, MimeType.PNG, MimeType.JSON])
def test_decode_garbage_raises_decoding_error(data_type):
    with pytest.raises(DecodingError):
        decode_data(b"\xff\xfe not an image or json", data_type)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ("DeadlineExceededError", "DEADLINE_EXCEEDED"),
        ("IncompleteAnswerError", "UNAVAILABLE"),
        ("UndecodableAnswerError", "DATA_LOSS"),
        ("ServerError", "UNAVAILABLE"),
    ],
)
def test_each_failure_of_an_item_has_its_grpc_code(error, code):
    from google.rpc import code_pb2

    import rsgrpc.download as download
    from rsgrpc.server.status import download_error_status

    status = download_error_status(getattr(download, error)("it failed"))
    assert status.code == code_pb2.Code.Value(code)
    assert status.message == "it failed"
