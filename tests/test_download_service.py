"""DownloadService through a real gRPC channel against a fake Sentinel Hub on 127.0.0.1:
batches as operations, the cache, failures per request, bad input, cancel, shared rate
limits and secrets that never leak."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status

from rsgrpc.cli import build_parser
from rsgrpc.client import Session as ClientSession
from rsgrpc.download import DownloadClient, forget_limiters
from rsgrpc.download.shared_limit import state_file_name
from rsgrpc.engine.instance import PARTIAL_SUFFIX
from rsgrpc.engine.partial_output import PartialOutput
from rsgrpc.engine.paths import DataRoot
from rsgrpc.server.deployments import (
    DeploymentConfigError,
    default_cache_dir,
    load_download_settings,
)
from rsgrpc.v1 import (
    download_pb2,
    download_pb2_grpc,
    operation_pb2,
    raster_pb2,
    session_pb2,
    session_pb2_grpc,
)
from tests.conftest import (
    create_session,
    make_config,
    operation_metadata,
    operation_response,
    operation_updates,
    serving,
    watch_operation,
)
from tests.download.fake_sentinelhub import CLIENT_ID, CLIENT_SECRET, PROCESS_PATH, FakeSentinelHub

SECRET_ENV = "RSGRPC_TEST_DOWNLOAD_SECRET"
# OAuth2 sessions are cached per (client id, base URL), as in sentinelhub-py: a deployment
# whose credentials are refused needs a client id of its own.
WRONG_SECRET = "wrong-Secret-Value-9"
SUCCEEDED = download_pb2.DownloadItemResult.STATUS_SUCCEEDED
FAILED = download_pb2.DownloadItemResult.STATUS_FAILED
PATH = PROCESS_PATH.lstrip("/")  # "api/v1/process", relative to a deployment's base URL


def _deployments_toml(hub: FakeSentinelHub, slow: FakeSentinelHub, paced: FakeSentinelHub) -> str:
    fast_retry = """
max_attempts = 2
backoff_base_seconds = 0.01
backoff_max_seconds = 0.05
"""
    return f"""
cache_dir = "cache"

[deployments.svc-fake]
base_url = "{hub.base_url}"
token_url = "{hub.token_url}"
client_id = "{CLIENT_ID}"
client_secret_env = "{SECRET_ENV}"
read_timeout_seconds = 2.0
[deployments.svc-fake.retry]
{fast_retry}

[deployments.svc-wrong-secret]
base_url = "{hub.base_url}"
token_url = "{hub.token_url}"
client_id = "unknown-client"
client_secret = "{WRONG_SECRET}"
[deployments.svc-wrong-secret.retry]
{fast_retry}

[deployments.svc-public]
base_url = "{hub.base_url}"

[deployments.svc-slow]
base_url = "{slow.base_url}/api"
token_url = "{slow.token_url}"
client_id = "{CLIENT_ID}"
client_secret_env = "{SECRET_ENV}"
max_concurrent_requests = 1

[deployments.svc-threads]
base_url = "{slow.base_url}/api"
token_url = "{slow.token_url}"
client_id = "{CLIENT_ID}"
client_secret_env = "{SECRET_ENV}"
max_threads = 2
pool_connections = 3
requests_per_second = 100.0
burst = 10
shared_limit_dir = "limits"

[deployments.svc-paced]
base_url = "{paced.base_url}"
token_url = "{paced.token_url}"
client_id = "{CLIENT_ID}"
client_secret_env = "{SECRET_ENV}"
requests_per_second = 10.0
burst = 1
"""


@pytest.fixture(scope="module")
def hubs():
    with (
        FakeSentinelHub() as hub,
        FakeSentinelHub(latency=0.3) as slow,
        FakeSentinelHub(requests_per_second=10.0, burst=3.0) as paced,
    ):
        yield hub, slow, paced


@pytest.fixture(scope="module")
def hub(hubs) -> FakeSentinelHub:
    return hubs[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory, hubs):
    """A server whose deployments are the fake hubs (overrides conftest's `server`)."""
    folder = tmp_path_factory.mktemp("download-server")
    config_file = folder / "deployments.toml"
    config_file.write_text(_deployments_toml(*hubs))
    forget_limiters()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_ENV, CLIENT_SECRET)
        with serving(make_config(folder, deployments=str(config_file))) as pair:
            patch.delenv(SECRET_ENV)
            yield pair
    forget_limiters()


@pytest.fixture(scope="module")
def cache_dir(server) -> Path:
    return Path(server[0].data_root.root).parent / "cache"


@pytest.fixture(scope="module")
def stub(server) -> download_pb2_grpc.DownloadServiceStub:
    return download_pb2_grpc.DownloadServiceStub(server[1])


def _tiff(request_id: str, output: str, **fields) -> download_pb2.DownloadItem:
    fields.setdefault("uri", PATH)
    return download_pb2.DownloadItem(
        body_json=json.dumps({"id": request_id, "format": "tiff"}), output_path=output, **fields
    )


def _response(operation) -> download_pb2.DownloadResponse:
    """The DownloadResponse of a batch that must have finished without error."""
    return operation_response(operation, download_pb2.DownloadResponse)


def _run(server, stub, session, items, deployment="svc-fake", **fields) -> lro.Operation:
    operation = stub.Download(
        download_pb2.DownloadRequest(session=session, deployment=deployment, items=items, **fields)
    )
    return watch_operation(server[1], operation)[-1]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_batch_runs_as_operation_with_progress_then_feeds_band_calc(
    server, session_name, stub, hub, raster_stub
):
    running, channel = server
    root = running.data_root.root
    items = [
        _tiff("batch-1", "dl/one.tif"),
        _tiff("batch-2", "dl/two.tif", uri=hub.process_url),  # an absolute URL under the base
        _tiff("batch-3", "dl/sub/three.tif", method=download_pb2.HTTP_METHOD_POST),
    ]
    # The last item's answer waits until the watch has seen the batch running.
    release = hub.hold("batch-3")
    operation = stub.Download(
        download_pb2.DownloadRequest(session=session_name, deployment="svc-fake", items=items)
    )
    assert operation.name.startswith("operations/") and not operation.done
    updates = []
    for update in operation_updates(channel, operation):
        updates.append(update)
        if operation_metadata(update).stage == operation_pb2.OperationMetadata.STAGE_RUNNING:
            release.set()
    assert release.is_set()
    final = operation_metadata(updates[-1])
    sizes = [len(hub.sent[f"batch-{i}"]) for i in (1, 2, 3)]
    assert (final.method, final.tiles_done, final.tiles_total) == ("Download", 3, 3)
    assert final.bytes_read == final.bytes_written == sum(sizes)
    results = _response(updates[-1]).results
    assert [r.status for r in results] == [SUCCEEDED] * 3
    assert [r.output_path for r in results] == ["dl/one.tif", "dl/two.tif", "dl/sub/three.tif"]
    assert [r.size_bytes for r in results] == sizes
    assert [(r.cache_hit, r.attempt_count, r.HasField("error")) for r in results] == [
        (False, 1, False)
    ] * 3
    for i, path in zip((1, 2, 3), ("dl/one.tif", "dl/two.tif", "dl/sub/three.tif"), strict=True):
        assert (root / path).read_bytes() == hub.sent[f"batch-{i}"]
    assert not list(root.rglob(f"*{PARTIAL_SUFFIX}"))

    # The downloaded GeoTIFF is an input of band calc in the same session.
    calc = raster_stub.BandCalc(
        raster_pb2.BandCalcRequest(
            session=session_name,
            expression='"green" * 2 + 1',
            inputs=[raster_pb2.RasterInput(name="green", path="dl/one.tif", band=2)],
            output_path="dl/green.tif",
            output_data_type=raster_pb2.DATA_TYPE_INT32,
        )
    )
    assert not watch_operation(channel, calc)[-1].HasField("error")
    with (
        rasterio.open(root / "dl" / "one.tif") as source,
        rasterio.open(root / "dl" / "green.tif") as result,
    ):
        expected = source.read(2).astype(np.int32) * 2 + 1
        np.testing.assert_array_equal(result.read(1), expected)
        assert result.crs == source.crs and result.transform == source.transform


def test_second_request_is_a_cache_hit_and_redownload_sends_it_again(
    server, session_name, stub, hub, cache_dir
):
    root = server[0].data_root.root
    first = _response(_run(server, stub, session_name, [_tiff("cached", "cache/a.tif")]))
    sent = hub.stats.process_requests
    second = _response(_run(server, stub, session_name, [_tiff("cached", "cache/b.tif")]))
    assert hub.stats.process_requests == sent
    assert (second.results[0].cache_hit, second.results[0].attempt_count) == (True, 0)
    assert second.results[0].size_bytes == first.results[0].size_bytes
    assert (root / "cache" / "b.tif").read_bytes() == hub.sent["cached"]
    third = _response(
        _run(server, stub, session_name, [_tiff("cached", "cache/c.tif")], redownload=True)
    )
    assert hub.stats.process_requests == sent + 1
    assert (third.results[0].cache_hit, third.results[0].attempt_count) == (False, 1)
    # sentinelhub-py's layout: md5 of {"url", "payload"} -> request.json + response.tiff.
    payload = {"id": "cached", "format": "tiff"}
    key = hashlib.md5(json.dumps({"url": hub.process_url, "payload": payload}).encode()).hexdigest()
    stored = json.loads((cache_dir / key / "request.json").read_text())
    assert stored["request"]["url"] == hub.process_url and stored["request"]["payload"] == payload
    assert (cache_dir / key / "response.tiff").read_bytes() == hub.sent["cached"]


def test_existing_output_is_replaced_only_with_overwrite(server, session_name, stub):
    root = server[0].data_root.root
    (root / "over").mkdir()
    (root / "over" / "x.tif").write_bytes(b"old")
    with pytest.raises(grpc.RpcError) as caught:
        stub.Download(
            download_pb2.DownloadRequest(
                session=session_name, deployment="svc-fake", items=[_tiff("over", "over/x.tif")]
            )
        )
    assert caught.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert "overwrite" in caught.value.details()
    final = _run(server, stub, session_name, [_tiff("over", "over/x.tif")], overwrite=True)
    assert _response(final).results[0].status == SUCCEEDED
    assert (root / "over" / "x.tif").read_bytes()[:4] == b"II*\x00"


def _error_info(status) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def test_one_failure_does_not_hide_the_others(server, session_name, stub, hub):
    root = server[0].data_root.root
    hub.faults["missing"] = ["404"]
    hub.faults["broken"] = ["500", "500"]
    items = [
        _tiff("fine", "mixed/fine.tif"),
        _tiff("missing", "mixed/missing.tif"),
        _tiff("broken", "mixed/broken.tif"),
        # JSON saved as .tif: the answer is not what the output's extension says.
        download_pb2.DownloadItem(
            uri=PATH, body_json='{"id": "wrong", "format": "json"}', output_path="mixed/wrong.tif"
        ),
    ]
    results = _response(_run(server, stub, session_name, items)).results
    assert [r.status for r in results] == [SUCCEEDED, FAILED, FAILED, FAILED]
    missing, broken, wrong = results[1].error, results[2].error, results[3].error
    assert missing.code == code_pb2.NOT_FOUND and "injected 404" in missing.message
    info = _error_info(missing)
    assert (info.reason, info.domain, info.metadata["http_status"]) == (
        "NOT_FOUND",
        "rsgrpc.v1",
        "404",
    )
    assert broken.code == code_pb2.UNAVAILABLE and "failed 2 times" in broken.message
    assert results[2].attempt_count == 2
    assert wrong.code == code_pb2.DATA_LOSS and "not a TIFF" in wrong.message
    assert sorted(_files(root / "mixed")) == ["fine.tif"]


def _cache_entry(cache_dir: Path, hub: FakeSentinelHub, request_id: str) -> Path:
    payload = {"id": request_id, "format": "tiff"}
    key = hashlib.md5(json.dumps({"url": hub.process_url, "payload": payload}).encode()).hexdigest()
    return cache_dir / key


def test_a_truncated_answer_is_failed_with_a_reason_and_kept_nowhere(
    server, session_name, stub, hub, cache_dir
):
    root = server[0].data_root.root
    hub.faults["trunc"] = ["truncate"] * 2  # svc-fake tries twice
    hub.faults["cut"] = ["cut"] * 2
    hub.faults["trunc-once"] = ["truncate"]
    items = [
        _tiff("trunc", "broken/trunc.tif"),
        _tiff("cut", "broken/cut.tif"),
        _tiff("trunc-once", "broken/once.tif"),
    ]
    results = _response(_run(server, stub, session_name, items)).results
    assert [r.status for r in results] == [FAILED, FAILED, SUCCEEDED]
    truncated, cut = results[0].error, results[1].error
    assert truncated.code == code_pb2.DATA_LOSS
    assert "not a TIFF that decodes" in truncated.message
    assert _error_info(truncated).reason == "UNDECODABLE_ANSWER"
    assert cut.code == code_pb2.UNAVAILABLE and "cut short" in cut.message
    assert _error_info(cut).reason == "INCOMPLETE_ANSWER"
    assert [r.attempt_count for r in results] == [2, 2, 2]
    assert [r.size_bytes for r in results[:2]] == [0, 0]
    # Nothing broken was written, nor cached; the good answer is there once.
    assert sorted(_files(root / "broken")) == ["once.tif"]
    assert (root / "broken" / "once.tif").read_bytes() == hub.sent["trunc-once"]
    assert not _cache_entry(cache_dir, hub, "trunc").exists()
    assert not _cache_entry(cache_dir, hub, "cut").exists()
    assert not list(cache_dir.rglob("*.part"))
    # The output is the cache entry's own bytes, linked, not a second copy.
    cached = _cache_entry(cache_dir, hub, "trunc-once") / "response.tiff"
    output = (root / "broken" / "once.tif").stat()
    assert output.st_ino == cached.stat().st_ino and output.st_nlink == 2


def test_a_broken_cache_entry_is_fetched_again_not_served(
    server, session_name, stub, hub, cache_dir
):
    root = server[0].data_root.root
    first = _response(_run(server, stub, session_name, [_tiff("damaged", "damaged/a.tif")]))
    assert first.results[0].status == SUCCEEDED
    cached = _cache_entry(cache_dir, hub, "damaged") / "response.tiff"
    body = cached.read_bytes()
    cached.unlink()  # the output keeps its own link
    cached.write_bytes(body[: len(body) // 2])
    sent = hub.stats.process_requests
    second = _response(_run(server, stub, session_name, [_tiff("damaged", "damaged/b.tif")]))
    assert second.results[0].status == SUCCEEDED and not second.results[0].cache_hit
    assert hub.stats.process_requests == sent + 1
    assert (root / "damaged" / "b.tif").read_bytes() == body == cached.read_bytes()
    assert (root / "damaged" / "a.tif").read_bytes() == body


def test_failures_are_written_to_the_session_log(server, session_name, stub, hub):
    hub.faults["logged"] = ["404"]
    _run(server, stub, session_name, [_tiff("logged", "log/x.tif")])
    sessions = session_pb2_grpc.SessionServiceStub(server[1])
    entries = sessions.ListLogEntries(
        session_pb2.ListLogEntriesRequest(parent=session_name, page_size=1000)
    ).log_entries
    text = "\n".join(e.message for e in entries)
    assert "requests to deployment svc-fake" in text
    assert f"(POST {PROCESS_PATH}) failed: the server answered 404: injected 404" in text


def test_a_deployment_without_credentials_sends_no_authorization(server, session_name, stub):
    results = _response(
        _run(server, stub, session_name, [_tiff("public", "public/x.tif")], "svc-public")
    ).results
    assert results[0].status == FAILED
    assert results[0].error.code == code_pb2.UNAUTHENTICATED
    assert "401" in results[0].error.message


def test_refused_credentials_fail_each_request_as_unauthenticated(server, session_name, stub):
    results = _response(
        _run(server, stub, session_name, [_tiff("refused", "refused/x.tif")], "svc-wrong-secret")
    ).results
    assert results[0].status == FAILED
    assert results[0].error.code == code_pb2.UNAUTHENTICATED
    assert "refused the credentials" in results[0].error.message


def test_uri_relative_to_a_base_path_stays_under_it(server, session_name, stub, hubs):
    slow = hubs[1]
    items = [
        _tiff("based", "based/x.tif", uri="v1/process"),
        _tiff("query", "based/q.tif", uri="/v1/process?note=a%20b"),  # encoded spaces are fine
    ]
    ok = _run(server, stub, session_name, items, "svc-slow")
    assert [r.status for r in _response(ok).results] == [SUCCEEDED, SUCCEEDED]
    for uri in ("../oauth/token", f"{slow.base_url}/oauth/token", "v1/%2e%2e/%2e%2e/oauth/token"):
        with pytest.raises(grpc.RpcError) as caught:
            stub.Download(
                download_pb2.DownloadRequest(
                    session=session_name,
                    deployment="svc-slow",
                    items=[_tiff("based", "based/y.tif", uri=uri)],
                )
            )
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED, uri


def _bad_requests(hub: FakeSentinelHub, session: str) -> list[tuple]:
    def request(items=None, **fields):
        fields.setdefault("session", session)
        fields.setdefault("deployment", "svc-fake")
        items = [_tiff("bad", "bad/x.tif")] if items is None else items
        return download_pb2.DownloadRequest(items=items, **fields)

    def item(**fields):
        fields.setdefault("uri", PATH)
        fields.setdefault("output_path", "bad/x.tif")
        return request([download_pb2.DownloadItem(**fields)])

    host_port = hub.base_url.removeprefix("http://")
    return [
        ("unknown deployment", request(deployment="nope"), "NOT_FOUND", "'nope' is not configured"),
        ("no deployment", request(deployment=""), "INVALID_ARGUMENT", "deployment is empty"),
        ("unknown session", request(session="sessions/nope"), "NOT_FOUND", "does not exist"),
        ("empty batch", request([]), "INVALID_ARGUMENT", "no items"),
        (
            "too many items",
            request([download_pb2.DownloadItem(uri="a", output_path="b")] * 100_001),
            "INVALID_ARGUMENT",
            "at most 100,000",
        ),
        (
            "negative threads",
            request(max_threads=-1),
            "INVALID_ARGUMENT",
            "max_threads is -1",
        ),
        ("dotdot output", item(output_path="../x.tif"), "PERMISSION_DENIED", "'..'"),
        ("absolute output", item(output_path="/tmp/x.tif"), "PERMISSION_DENIED", "absolute"),
        ("symlink output", item(output_path="outside/x.tif"), "PERMISSION_DENIED", "outside"),
        ("directory output", item(output_path="bad"), "INVALID_ARGUMENT", "is a directory"),
        ("file as folder", item(output_path="bad/file/x.tif"), "INVALID_ARGUMENT", "is a file"),
        (
            "duplicate outputs",
            request([_tiff("a", "bad/x.tif"), _tiff("b", "bad/x.tif")]),
            "INVALID_ARGUMENT",
            "also the output of items[0]",
        ),
        ("no uri", item(uri=""), "INVALID_ARGUMENT", "items[0].uri is empty"),
        (
            "other host",
            item(uri="http://example.com/api/v1/process"),
            "PERMISSION_DENIED",
            "not on the deployment's host",
        ),
        ("other port", item(uri="http://127.0.0.1:9/api/v1/process"), "PERMISSION_DENIED", "host"),
        ("other scheme", item(uri=f"https://{host_port}/x"), "PERMISSION_DENIED", "host"),
        (
            "protocol-relative",
            item(uri="//example.com/api/v1/process"),
            "PERMISSION_DENIED",
            "host",
        ),
        ("file scheme", item(uri="file:///etc/passwd"), "PERMISSION_DENIED", "host"),
        (
            "userinfo",
            item(uri=f"http://user:pw@{host_port}/api"),
            "PERMISSION_DENIED",
            "credentials",
        ),
        ("dotdot uri", item(uri="api/../oauth/token"), "PERMISSION_DENIED", "'..'"),
        ("encoded dotdot", item(uri="api/%2E%2E/oauth/token"), "PERMISSION_DENIED", "'..'"),
        ("space in uri", item(uri="api/v1 /process"), "INVALID_ARGUMENT", "not a valid URI"),
        ("encoded backslash", item(uri="api/%5C..%5Cx"), "INVALID_ARGUMENT", "backslashes"),
        ("fragment", item(uri="api/v1/process#x"), "INVALID_ARGUMENT", "fragment"),
        ("bad json", item(body_json="{not json"), "INVALID_ARGUMENT", "not a valid JSON body"),
        ("json array", item(body_json="[1, 2]"), "INVALID_ARGUMENT", "JSON object"),
        ("json nan", item(body_json='{"a": NaN}'), "INVALID_ARGUMENT", "not a valid JSON body"),
        ("json infinity", item(body_json='{"a": 1e999}'), "INVALID_ARGUMENT", "JSON body"),
        ("deep json", item(body_json="[" * 100_000), "INVALID_ARGUMENT", "nested too deeply"),
        (
            "get with a body",
            item(method=download_pb2.HTTP_METHOD_GET, body_json="{}"),
            "INVALID_ARGUMENT",
            "GET with a body",
        ),
        ("unknown method", item(method=9), "INVALID_ARGUMENT", "use GET or POST"),
        ("unknown data type", item(data_type=99), "INVALID_ARGUMENT", "not a known MimeType"),
        (
            "authorization header",
            item(headers={"Authorization": "Bearer mine"}),
            "INVALID_ARGUMENT",
            "set by the server",
        ),
        ("bad header name", item(headers={"a b": "c"}), "INVALID_ARGUMENT", "header name"),
        ("header injection", item(headers={"X-A": "b\r\nX-B: c"}), "INVALID_ARGUMENT", "line"),
    ]


def test_bad_input_gets_a_clear_status_and_nothing_is_sent_or_written(
    server, session_name, stub, hub, tmp_path
):
    running, channel = server
    root = running.data_root.root
    (root / "bad").mkdir(exist_ok=True)
    (root / "bad" / "file").write_bytes(b"a file, not a folder")
    (root / "outside").symlink_to(tmp_path, target_is_directory=True)
    operations = lro_grpc.OperationsStub(channel)
    before_files = _files(root)
    before_operations = len(operations.ListOperations(lro.ListOperationsRequest()).operations)
    sent = hub.stats.process_requests
    for case, request, code, text in _bad_requests(hub, session_name):
        with pytest.raises(grpc.RpcError) as caught:
            stub.Download(request)
        error = caught.value
        assert (error.code().name, case) == (code, case), error.details()
        assert text in error.details(), (case, error.details())
        status = rpc_status.from_call(error)
        assert _error_info(status).domain == "rsgrpc.v1"
    assert hub.stats.process_requests == sent
    assert _files(root) == before_files
    assert list(tmp_path.iterdir()) == []
    after = len(operations.ListOperations(lro.ListOperationsRequest()).operations)
    assert after == before_operations


def test_cancel_stops_requests_not_started_and_leaves_no_files(
    server, session_name, stub, hubs, cache_dir
):
    running, channel = server
    slow = hubs[1]
    root = running.data_root.root
    sent = slow.stats.process_requests
    items = [_tiff(f"cancel-{i}", f"cancelled/{i}.tif", uri="v1/process") for i in range(8)]
    operation = stub.Download(
        download_pb2.DownloadRequest(session=session_name, deployment="svc-slow", items=items)
    )
    deadline = time.monotonic() + 10
    while slow.stats.process_requests == sent and time.monotonic() < deadline:
        time.sleep(0.02)  # one request at a time, each taking 0.3 s at the hub
    lro_grpc.OperationsStub(channel).CancelOperation(
        lro.CancelOperationRequest(name=operation.name)
    )
    final = watch_operation(channel, operation)[-1]
    assert final.error.code == code_pb2.CANCELLED
    assert "no output was written" in final.error.message
    started = slow.stats.process_requests - sent
    assert 1 <= started <= 3
    assert not (root / "cancelled").exists()
    assert not list(root.rglob(f"*{PARTIAL_SUFFIX}"))
    # What finished stays in the cache: running the batch again sends only the rest.
    assert len(list(cache_dir.glob("*/response.tiff"))) >= started - 1


def test_an_output_folder_swapped_for_a_link_while_the_batch_runs_gets_no_answer(
    server, session_name, stub, hubs, tmp_path
):
    running, channel = server
    slow = hubs[1]
    root = running.data_root.root
    (root / "swapped" / "out").mkdir(parents=True)
    sent = slow.stats.process_requests
    items = [_tiff(f"swap-{i}", f"swapped/out/{i}.tif", uri="v1/process") for i in range(6)]
    operation = stub.Download(
        download_pb2.DownloadRequest(session=session_name, deployment="svc-slow", items=items)
    )
    (root / "swapped" / "out").rename(root / "swapped" / "moved")
    (root / "swapped" / "out").symlink_to(tmp_path, target_is_directory=True)
    # One request at a time, 0.3 s each: answers were still coming when the folder moved.
    assert slow.stats.process_requests - sent < len(items)
    final = _response(watch_operation(channel, operation)[-1])
    for result in final.results:
        assert result.status == FAILED
        assert result.error.code == code_pb2.PERMISSION_DENIED, result.error.message
        assert "symbolic link" in result.error.message
        assert str(root) not in result.error.message
    assert list(tmp_path.iterdir()) == []
    assert list((root / "swapped" / "moved").iterdir()) == []


def test_rate_limit_is_shared_by_every_session(server, session_name, stub, hubs):
    running, channel = server
    paced = hubs[2]
    sessions = session_pb2_grpc.SessionServiceStub(channel)
    other = sessions.CreateSession(
        session_pb2.CreateSessionRequest(
            session=session_pb2.Session(process_count=1, available_ram_mib=256)
        )
    ).name
    try:
        operations = [
            stub.Download(
                download_pb2.DownloadRequest(
                    session=session,
                    deployment="svc-paced",
                    items=[_tiff(f"paced-{session}-{i}", f"paced/{n}-{i}.tif") for i in range(6)],
                )
            )
            for n, session in enumerate((session_name, other))
        ]
        finals = [watch_operation(channel, operation)[-1] for operation in operations]
    finally:
        sessions.DeleteSession(session_pb2.DeleteSessionRequest(name=other))
    for final in finals:
        assert [r.status for r in _response(final).results] == [SUCCEEDED] * 6
    # Twelve requests at 10 per second, whichever session sent them: the hub (10 per
    # second, bursts of 3) never answered 429, and the requests took at least 1.1 s.
    assert paced.stats.rate_limited == 0
    times = [t for t, status, _ in paced.answers if status == 200]
    assert len(times) == 12 and times[-1] - times[0] >= 1.0


def _secrets(hub: FakeSentinelHub) -> list[bytes]:
    with hub._lock:
        tokens = list(hub._tokens)
    assert tokens, "the hub issued no token"
    return [s.encode() for s in (CLIENT_SECRET, WRONG_SECRET, "client-side-key", *tokens)]


def test_secrets_never_appear_in_responses_logs_or_cache(
    server, session_name, stub, hub, cache_dir, caplog
):
    running, channel = server
    caplog.set_level(logging.DEBUG)
    hub.faults["reauth"] = ["401"]  # a refused token: the session re-authenticates
    hub.faults["secret-404"] = ["404"]
    # Upstreams that echo the request's headers, and the token alone, in their errors.
    hub.faults["secret-echo"] = ["echo"] * 2
    hub.faults["secret-echo-text"] = ["echo_text"] * 2
    items = [
        _tiff("secret-ok", "secret/ok.tif", headers={"X-Api-Key": "client-side-key"}),
        _tiff("reauth", "secret/reauth.tif"),
        _tiff("secret-404", "secret/missing.tif"),
        _tiff("secret-echo", "secret/echo.tif", headers={"X-Api-Key": "client-side-key"}),
        _tiff("secret-echo-text", "secret/echo-text.tif"),
    ]
    operation = stub.Download(
        download_pb2.DownloadRequest(session=session_name, deployment="svc-fake", items=items)
    )
    updates = watch_operation(channel, operation)
    results = _response(updates[-1]).results
    assert [r.status for r in results] == [SUCCEEDED, SUCCEEDED, FAILED, FAILED, FAILED]
    # The echoes are reported, with every credential in them replaced.
    assert "Authorization" in results[3].error.message
    assert "[REDACTED]" in results[3].error.message
    assert "your token [REDACTED]" in results[4].error.message
    refused = _run(
        server, stub, session_name, [_tiff("secret-x", "secret/x.tif")], "svc-wrong-secret"
    )
    operations = lro_grpc.OperationsStub(channel)
    listed = operations.ListOperations(lro.ListOperationsRequest()).operations
    sessions = session_pb2_grpc.SessionServiceStub(channel)
    log = sessions.ListLogEntries(
        session_pb2.ListLogEntriesRequest(parent=session_name, page_size=1000)
    )
    texts = [u.SerializeToString() for u in (*updates, refused, *listed)]
    texts += [str(u).encode() for u in (*updates, refused)]
    texts.append(log.SerializeToString())
    texts += [record.getMessage().encode() for record in caplog.records]
    texts += _files(cache_dir).values()
    texts += _files(running.data_root.root).values()
    session_logs = Path(running.registry.get(session_name).temporary_directory) / "session.log"
    texts.append(session_logs.read_bytes())
    assert any(b"re-authenticating" in t for t in texts)  # the logs were captured
    assert any(b"secret-echo" in t or b"echo.tif" in t for t in texts)
    for secret in _secrets(hub):
        leaks = [t[:200] for t in texts if secret in t]
        assert leaks == [], secret


def test_python_client_downloads_with_progress(server, hub):
    _, channel = server
    progress: list[operation_pb2.OperationMetadata] = []
    with ClientSession(
        n_processes=1, available_ram=1024, channel=channel, operation_callback=progress.append
    ) as rs:
        hub.faults["client-missing"] = ["404"]
        out = rs.download(
            [
                {
                    "uri": PATH,
                    "method": "POST",
                    "body": {"id": "client-1", "format": "tiff"},
                    "output_path": "client/one.tif",
                },
                {
                    "uri": PATH,
                    "body": {"id": "client-2", "format": "png"},
                    "output_path": "client/two.png",
                    "data_type": "png",
                },
            ],
            deployment="svc-fake",
        )
        assert out.check, out.extra
        assert out.paths == ["client/one.tif", "client/two.png"]
        assert [r.size_bytes for r in out.extra["results"]] == [
            len(hub.sent["client-1"]),
            len(hub.sent["client-2"]),
        ]
        assert progress[-1].tiles_done == progress[-1].tiles_total == 2
        failed = rs.download(
            [
                {
                    "uri": PATH,
                    "body": {"id": "client-3", "format": "tiff"},
                    "output_path": "client/3.tif",
                },
                {"uri": PATH, "body": {"id": "client-missing"}, "output_path": "client/4.tif"},
            ],
            deployment="svc-fake",
        )
        assert not failed.check and failed.paths == ["client/3.tif"]
        assert failed.extra["code"] == "NOT_FOUND" and "1 of 2" in failed.extra["error"]
        refused = rs.download([{"uri": PATH, "output_path": "client/5.tif"}], deployment="x")
        assert not refused.check and refused.extra["code"] == "NOT_FOUND"
        with pytest.raises(ValueError, match="unknown download request keys"):
            rs.download([{"url": PATH}], deployment="svc-fake")


def test_struct_bodies_send_whole_numbers_as_integers(server, session_name, stub, hub):
    item = download_pb2.DownloadItem(uri=PATH, output_path="struct/x.tif")
    item.body_struct.update({"id": "struct", "format": "tiff", "size": 64, "scale": 0.5})
    results = _response(_run(server, stub, session_name, [item])).results
    assert results[0].status == SUCCEEDED
    # The cache key is sentinelhub-py's md5 of the exact JSON: integers stay integers.
    payload = {"format": "tiff", "id": "struct", "scale": 0.5, "size": 64}
    stored = [
        json.loads(p.read_text())["request"]["payload"]
        for p in (Path(server[0].data_root.root).parent / "cache").glob("*/request.json")
    ]
    assert payload in stored and isinstance(payload["size"], int)
    assert any(isinstance(s.get("size"), int) and s.get("id") == "struct" for s in stored)


# -- the deployments file ----------------------------------------------------------------


def test_deployments_file_reads_toml_and_json_with_secrets_from_the_environment(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    toml = tmp_path / "d.toml"
    toml.write_text(
        """
cache_max_bytes = 5000000
[deployments.sh]
base_url = "https://services.example.com/"
token_url = "https://services.example.com/oauth/token"
client_id = "id"
client_secret_env = "MY_SECRET"
requests_per_second = 5
burst = 3
retry_after_unit = "seconds"
default_retry_after_seconds = 5
token_retry_budget_seconds = 120
token_backoff_max_seconds = 4
[deployments.sh.retry]
max_attempts = 6
"""
    )
    settings = load_download_settings(toml, environ={"MY_SECRET": "env-secret"})
    sh = settings.deployments["sh"]
    assert (sh.name, sh.base_url, sh.client_secret) == (
        "sh",
        "https://services.example.com",
        "env-secret",
    )
    assert (sh.requests_per_second, sh.burst, sh.retry.max_attempts) == (5.0, 3, 6)
    assert (sh.retry_after_unit, sh.default_retry_after_seconds) == ("seconds", 5.0)
    assert (sh.token_retry_budget_seconds, sh.token_backoff_max_seconds) == (120.0, 4.0)
    assert settings.cache_max_bytes == 5_000_000
    assert "env-secret" not in repr(sh)
    assert settings.cache_dir == default_cache_dir() == tmp_path / "xdg" / "rsgrpc" / "download"
    assert settings.cache_dir.is_dir()
    as_json = tmp_path / "d.json"
    as_json.write_text(
        json.dumps(
            {
                "cache_dir": "here",
                "deployments": {"open": {"base_url": "http://127.0.0.1:1"}},
            }
        )
    )
    settings = load_download_settings(as_json)
    assert not settings.deployments["open"].has_credentials
    assert settings.cache_dir == (tmp_path / "here").resolve() and settings.cache_dir.is_dir()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[deployments.a]\nbase_url = "ftp://x"', "http or https URL"),
        ('[deployments.a]\nbase_url = "https://u:p@x"', "must not hold credentials"),
        ('[deployments.a]\nbase_url = "https://x"\nrate = 1', "unknown settings ['rate']"),
        ('[deployments.a]\nbase_url = "https://x"\nburst = "2"', "burst must be of type int"),
        ('[deployments.a]\nbase_url = "https://x"\nburst = 0', "burst must be at least 1"),
        ('[deployments."a b"]\nbase_url = "https://x"', "a name has"),
        ("[deployments.a]\ntoken_url = 'https://x'", "base_url is required"),
        (
            '[deployments.a]\nbase_url = "https://x"\nclient_id = "i"\n'
            'client_secret = "SECRET-IN-FILE"',
            "token_url is required",
        ),
        (
            '[deployments.a]\nbase_url = "https://x"\ntoken_url = "https://x/t"\n'
            'client_id = "i"\nclient_secret = "SECRET-IN-FILE"\nclient_secret_env = "E"',
            "not both",
        ),
        (
            '[deployments.a]\nbase_url = "https://x"\ntoken_url = "https://x/t"\n'
            'client_id = "i"\nclient_secret_env = "UNSET_VARIABLE"',
            "'UNSET_VARIABLE' named by client_secret_env is not set",
        ),
        (
            '[deployments.a]\nbase_url = "https://x"\nclient_secret = "SECRET-IN-FILE"',
            "both client_id and a client secret",
        ),
        (
            '[deployments.a]\nbase_url = "https://x"\ntoken_url = "https://x/t"\n'
            'client_id = "i"\nclient_secret = "SECRET-IN-FILE"\nrequests_per_second = -1',
            "requests_per_second must be positive",
        ),
        ("deployment = 1", "unknown settings ['deployment']"),
        ("cache_max_bytes = 0", "cache_max_bytes must be a whole number of bytes"),
        (
            '[deployments.a]\nbase_url = "https://x"\nretry_after_unit = "minutes"',
            "unsupported retry_after_unit",
        ),
        ('[deployments.a]\nbase_url = "https://x"\nmax_threads = 0', "max_threads must be at"),
        (
            '[deployments.a]\nbase_url = "https://x"\npool_connections = "4"',
            "pool_connections must be of type int",
        ),
        (
            '[deployments.a]\nbase_url = "https://x"\nshared_limit_dir = ""',
            "shared_limit_dir must be a non-empty string",
        ),
        ("[deployments.a\n", "is not valid"),
    ],
)
def test_deployments_file_errors_are_clear_and_never_show_the_secret(
    tmp_path, monkeypatch, text, message
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = tmp_path / "d.toml"
    path.write_text(text)
    with pytest.raises(DeploymentConfigError) as caught:
        load_download_settings(path, environ={})
    assert message in str(caught.value)
    assert "SECRET-IN-FILE" not in str(caught.value)


def test_deployments_file_sets_threads_connections_and_a_shared_limit_folder(tmp_path):
    path = tmp_path / "conf" / "d.toml"
    path.parent.mkdir()
    path.write_text(
        """
cache_dir = "cache"
[deployments.tuned]
base_url = "https://x"
requests_per_second = 20
max_threads = 64
pool_connections = 16
max_concurrent_requests = 48
shared_limit_dir = "../limits"
[deployments.plain]
base_url = "https://x"
"""
    )
    settings = load_download_settings(path)
    tuned, plain = settings.deployments["tuned"], settings.deployments["plain"]
    assert (tuned.max_threads, tuned.pool_connections, tuned.max_concurrent_requests) == (
        64,
        16,
        48,
    )
    # Relative to the file, made when the file is read, so a typo shows at start.
    assert tuned.shared_limit_dir == str((tmp_path / "limits").resolve())
    assert (tmp_path / "limits").is_dir()
    assert (plain.max_threads, plain.pool_connections, plain.shared_limit_dir) == (None,) * 3
    # What the download client makes of them: threads bounded by what may be in flight.
    with DownloadClient(deployment=tuned) as client:
        assert client.thread_count(None, 1000) == 48
        assert client.thread_count(8, 1000) == 8
        assert client.thread_count(None, 5) == 5
    with DownloadClient(deployment=plain) as client:
        assert client.thread_count(None, 1000) == min(32, (os.cpu_count() or 1) + 4)


def test_a_batch_runs_on_its_deployments_threads_and_shares_its_rate_through_a_file(
    server, session_name, stub, hubs
):
    slow = hubs[1]
    slow.reset_stats()
    items = [_tiff(f"threads-{i}", f"threads/{i}.tif", uri="v1/process") for i in range(6)]
    final = _run(server, stub, session_name, items, deployment="svc-threads")
    assert [r.status for r in _response(final).results] == [SUCCEEDED] * 6
    # Two threads, each holding its request 0.3 s at the hub: never a third in flight.
    assert slow.stats.max_in_flight == 2
    limits = Path(server[0].data_root.root).parent / "limits"
    assert [p.name for p in limits.iterdir()] == [state_file_name("svc-threads")]


def test_a_batch_may_ask_for_fewer_threads_than_its_deployments_not_more(
    server, session_name, stub, hubs
):
    slow = hubs[1]
    for asked, in_flight in ((1, 1), (5, 2)):
        slow.reset_stats()
        items = [
            _tiff(f"asked-{asked}-{i}", f"asked/{asked}/{i}.tif", uri="v1/process")
            for i in range(4)
        ]
        final = _run(server, stub, session_name, items, deployment="svc-threads", max_threads=asked)
        assert [r.status for r in _response(final).results] == [SUCCEEDED] * 4
        assert slow.stats.max_in_flight == in_flight, asked


def _streamed_item(index: int) -> download_pb2.DownloadItem:
    return download_pb2.DownloadItem(
        uri=PATH,
        body_json=json.dumps({"id": f"streamed-{index}", "format": "text"}),
        output_path=f"streamed/{index}.txt",
    )


def test_a_streamed_batch_arrives_in_many_messages_and_runs_as_one_operation(
    server, session_name, stub, hub
):
    running, channel = server
    root = running.data_root.root
    batch = download_pb2.DownloadRequest(
        session=session_name, deployment="svc-fake", items=[_streamed_item(0)]
    )
    messages = [download_pb2.StreamDownloadRequest(batch=batch)] + [
        download_pb2.StreamDownloadRequest(items=[_streamed_item(i) for i in range(k, k + 3)])
        for k in (1, 4, 7)
    ]
    operation = stub.StreamDownload(iter(messages))
    final = watch_operation(channel, operation)[-1]
    assert operation_metadata(final).method == "Download"
    results = _response(final).results
    assert [r.output_path for r in results] == [f"streamed/{i}.txt" for i in range(10)]
    assert [r.status for r in results] == [SUCCEEDED] * 10
    for i in range(10):
        assert (root / "streamed" / f"{i}.txt").read_bytes() == hub.sent[f"streamed-{i}"]


def test_the_python_client_streams_a_batch_past_one_message(server, hub, monkeypatch):
    """More items than one message holds, sent by the client in pieces the server joins."""
    _, channel = server
    root = server[0].data_root.root
    from rsgrpc.client import downloads

    monkeypatch.setattr(downloads, "_STREAM_MESSAGE_BYTES", 4096)
    count = 1_200
    requests = [
        {
            "uri": PATH,
            "body": {"id": f"many-{i}", "format": "text"},
            "output_path": f"many/{i}.txt",
        }
        for i in range(count)
    ]
    sent: list[int] = []
    streamed = downloads._streamed

    def counted(*args):
        for message in streamed(*args):
            sent.append(len(message.items))
            yield message

    monkeypatch.setattr(downloads, "_streamed", counted)
    with ClientSession(n_processes=1, available_ram=0.25, channel=channel) as rs:
        out = rs.download(requests, deployment="svc-fake", max_threads=8)
    assert out.check, out.extra.get("error")
    assert len(sent) > 10 and sum(sent) == count
    assert out.paths == [f"many/{i}.txt" for i in range(count)]
    assert (root / "many" / "1199.txt").read_bytes() == hub.sent["many-1199"]


def test_a_stream_that_breaks_the_rules_is_refused_and_nothing_is_sent(
    server, session_name, stub, hub, monkeypatch
):
    from rsgrpc.server import download_plan

    root = server[0].data_root.root
    batch = download_pb2.DownloadRequest(session=session_name, deployment="svc-fake")
    head = download_pb2.StreamDownloadRequest(batch=batch)
    more = download_pb2.StreamDownloadRequest(items=[_streamed_item(100)])
    monkeypatch.setattr(download_plan, "MAX_ITEMS", 5)
    monkeypatch.setattr(download_plan, "MAX_BATCH_BYTES", 50_000)
    big = download_pb2.StreamDownloadRequest(
        items=[download_pb2.DownloadItem(uri=PATH, body_json='{"a": "' + "x" * 30_000 + '"}')]
    )
    cases = [
        ("no messages", [], "ended before its first message"),
        ("no batch first", [more], "first message of the stream must hold the batch"),
        ("batch twice", [head, more, head], "only the first message"),
        ("no items", [head], "no items"),
        ("too many items", [head] + [more] * 6, "at most 5 are allowed"),
        ("too many bytes", [head, big, big], "pass 0 MiB"),
    ]
    sent = hub.stats.process_requests
    before = _files(root)
    for case, messages, text in cases:
        with pytest.raises(grpc.RpcError) as caught:
            stub.StreamDownload(iter(messages))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, case
        assert text in caught.value.details(), (case, caught.value.details())
    assert hub.stats.process_requests == sent
    assert _files(root) == before


def test_serve_takes_deployments_from_a_flag_or_the_environment(monkeypatch):
    assert build_parser().parse_args(["serve", "--deployments", "d.toml"]).deployments == "d.toml"
    monkeypatch.setenv("RSGRPC_DEPLOYMENTS", "/etc/rsgrpc/deployments.toml")
    assert build_parser().parse_args(["serve"]).deployments == "/etc/rsgrpc/deployments.toml"


# -- outputs linked from the cache -------------------------------------------------------


def test_an_output_is_a_hard_link_on_one_file_system_and_a_copy_across_two(tmp_path):
    root = DataRoot.at(tmp_path / "root")
    same = tmp_path / "cache" / "response.tiff"
    same.parent.mkdir()
    same.write_bytes(b"II*\x00same file system")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other_folder:
        other = Path(other_folder) / "response.tiff"
        other.write_bytes(b"II*\x00another file system")
        if os.stat(other_folder).st_dev == same.stat().st_dev:
            pytest.skip("/dev/shm is on the same file system here")
        for name, source, linked in (("linked.tif", same, True), ("copied.tif", other, False)):
            output = root.output(name, overwrite=False)
            with PartialOutput(output, overwrite=False) as partial:
                assert partial.link_from(source) is linked
                if not linked:
                    partial.copy_from(source)
                partial.publish()
            written = root.root / name
            assert written.read_bytes() == source.read_bytes()
            assert (written.stat().st_ino == source.stat().st_ino) is linked
    assert sorted(p.name for p in root.root.iterdir()) == ["copied.tif", "linked.tif"]


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_500_mb_answer_streams_through_a_serve_process_in_bounded_memory(tmp_path):
    """One answer of 500 MB through `rsgrpc serve`: saved whole and checked, written to disk
    once (the output is the cache entry's hard link), the server's peak RSS barely moved."""
    from rsgrpc.download import MimeType
    from rsgrpc.download.validation import check_file
    from tests.download.fake_sentinelhub import PUBLIC_PATH, large_tiff

    size = 500_000_000
    expected_length, _ = large_tiff(size)
    with FakeSentinelHub() as hub:
        deployments = tmp_path / "deployments.json"
        deployments.write_text(
            json.dumps(
                {
                    "cache_dir": str(tmp_path / "cache"),
                    "deployments": {"big": {"base_url": hub.base_url}},
                }
            )
        )
        command = [
            *("python", "-m", "rsgrpc.cli", "serve", "--address", "127.0.0.1:0"),
            *("--data-root", str(tmp_path / "data"), "--temp-root", str(tmp_path / "tmp")),
            *("--deployments", str(deployments)),
        ]
        command[0] = sys.executable
        with open(tmp_path / "server.log", "w") as log:
            server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            port = int(server.stdout.readline().rsplit(" ", 1)[-1])
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                session = create_session(channel)
                stub = download_pb2_grpc.DownloadServiceStub(channel)

                def fetch(name: str, answer_size: int) -> download_pb2.DownloadItemResult:
                    item = download_pb2.DownloadItem(
                        uri=PUBLIC_PATH.lstrip("/"),
                        body_json=json.dumps(
                            {"id": name, "format": "large_tiff", "size": answer_size}
                        ),
                        output_path=f"big/{name}.tif",
                    )
                    operation = stub.Download(
                        download_pb2.DownloadRequest(
                            session=session, deployment="big", items=[item]
                        ),
                        timeout=60,
                    )
                    final = watch_operation(channel, operation)[-1]
                    return _response(final).results[0]

                # Warm: modules, pools and the cache folder made before the baseline.
                assert fetch("warm", 4 << 20).status == SUCCEEDED
                baseline = _peak_rss_mib(server.pid)
                result = fetch("large", size)
                peak = _peak_rss_mib(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=60)
            server.stdout.close()
    assert result.status == SUCCEEDED, result.error.message
    assert result.size_bytes == expected_length
    output = tmp_path / "data" / "big" / "large.tif"
    assert output.stat().st_size == expected_length
    check_file(str(output), MimeType.TIFF)
    assert output.stat().st_nlink == 2  # the output and its cache entry: one copy on disk
    print(
        f"\none answer of {expected_length / 1e6:.0f} MB through rsgrpc serve: server peak RSS "
        f"{peak:.0f} MiB, {peak - baseline:.1f} MiB over the warm baseline"
    )
    assert peak - baseline < 100


def test_the_python_client_maps_download_outputs_from_the_scripts_folders(server, hub):
    _, channel = server
    root = server[0].data_root.root
    folder = "/home/analyst/downloads"
    with ClientSession(
        1, 1024, channel=channel, path_map={folder: str(root / "mapped-downloads")}
    ) as rs:
        item = _tiff("mapped-1", f"{folder}/s2/one.tif")
        out = rs.download([item], deployment="svc-fake")
    assert out.check, out.extra
    assert out.paths == [f"{folder}/s2/one.tif"]
    assert item.output_path == f"{folder}/s2/one.tif"  # the caller's item is left as it was
    saved = root / "mapped-downloads" / "s2" / "one.tif"
    assert saved.read_bytes() == hub.sent["mapped-1"]
