"""Caches written by sentinelhub-py (the PyPI package) and by us are read back by each other as hits."""

from __future__ import annotations

import numpy as np
import pytest
from download_helpers import DATA_TYPES, deployment_for, process_request
from fake_sentinelhub import CLIENT_ID, CLIENT_SECRET, FakeSentinelHub
from sentinelhub import DownloadRequest as SHDownloadRequest
from sentinelhub import MimeType as SHMimeType
from sentinelhub import SentinelHubDownloadClient as SHClient
from sentinelhub import SHConfig

from rsgrpc.download import Deployment, SentinelHubDownloadClient, SentinelHubSession


@pytest.fixture(autouse=True)
def _insecure_local_oauth(monkeypatch):
    # sentinelhub-py's token call refuses plain HTTP unless told the transport is local.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    SHClient.clear_cache()
    yield
    SHClient.clear_cache()


def sh_config(hub: FakeSentinelHub) -> SHConfig:
    return SHConfig(
        sh_client_id=CLIENT_ID,
        sh_client_secret=CLIENT_SECRET,
        sh_base_url=hub.base_url,
        sh_token_url=hub.token_url,
        use_defaults=True,
    )


KINDS = ["tiff", "png", "jpeg", "json", "text"]


def their_request(
    hub: FakeSentinelHub, request_id: str, folder: str, kind: str = "tiff"
) -> SHDownloadRequest:
    return SHDownloadRequest(
        url=hub.process_url,
        request_type="POST",
        post_values={"id": request_id, "format": kind},
        headers={"Content-Type": "application/json"},
        use_session=True,
        data_type=SHMimeType(DATA_TYPES[kind].value),
        save_response=True,
        data_folder=folder,
    )


def assert_same_data(ours, theirs) -> None:
    assert type(ours) is type(theirs)
    if isinstance(theirs, np.ndarray):
        assert (ours.shape, ours.dtype) == (theirs.shape, theirs.dtype)
        np.testing.assert_array_equal(ours, theirs)
    else:
        assert ours == theirs


@pytest.mark.parametrize("kind", KINDS)
def test_cache_written_by_sentinelhub_is_read_as_hits(hub, tmp_path, kind):
    ids = [f"r{i}" for i in range(6)]
    theirs = SHClient(config=sh_config(hub)).download(
        [their_request(hub, request_id, str(tmp_path), kind) for request_id in ids], max_threads=3
    )
    sent = hub.stats.process_requests
    ours = [process_request(hub, request_id, kind, str(tmp_path)) for request_id in ids]
    with SentinelHubDownloadClient(deployment=deployment_for(hub)) as client:
        results = client.download_results(ours)
    assert hub.stats.process_requests == sent
    assert all(result.cache_hit for result in results)
    for their_data, result in zip(theirs, results, strict=True):
        assert_same_data(result.data, their_data)


@pytest.mark.parametrize("kind", KINDS)
def test_cache_written_by_us_is_read_by_sentinelhub_as_hits(hub, tmp_path, kind):
    ids = [f"r{i}" for i in range(6)]
    ours = [process_request(hub, request_id, kind, str(tmp_path)) for request_id in ids]
    with SentinelHubDownloadClient(deployment=deployment_for(hub)) as client:
        results = client.download_results(ours)
    sent = hub.stats.process_requests
    theirs = SHClient(config=sh_config(hub)).download(
        [their_request(hub, request_id, str(tmp_path), kind) for request_id in ids], max_threads=3
    )
    assert hub.stats.process_requests == sent
    for their_data, result in zip(theirs, results, strict=True):
        assert_same_data(result.data, their_data)


def test_sentinelhub_config_and_requests_are_accepted(hub, tmp_path):
    client = SentinelHubDownloadClient(config=sh_config(hub))
    data = client.download([their_request(hub, "r0", str(tmp_path))])
    assert data[0].shape == (32, 48, 3)
    assert client.get_session().info()["azp"] == CLIENT_ID


def test_sessions_are_cached_per_client_and_deployment(hub):
    deployment = deployment_for(hub)
    first = SentinelHubDownloadClient(deployment=deployment).get_session()
    assert SentinelHubDownloadClient(deployment=deployment).get_session() is first
    assert hub.stats.token_requests == 1
    other = Deployment(name="other", base_url="http://elsewhere")
    session = SentinelHubSession(deployment)
    SentinelHubDownloadClient.cache_session(session, universal=True)
    assert SentinelHubDownloadClient(deployment=other).get_session() is session
    SentinelHubDownloadClient.clear_cache()
    assert SentinelHubDownloadClient(deployment=deployment).get_session() is not first


def test_session_from_token_never_refreshes(hub):
    token = SentinelHubSession(deployment_for(hub)).token
    session = SentinelHubSession.from_token(token)
    assert session.token == token
    assert hub.stats.token_requests == 1
    client = SentinelHubDownloadClient(session=session, deployment=deployment_for(hub))
    (result,) = client.download_results([process_request(hub, "r0", "raw")])
    assert result.ok


def test_sentinelhub_request_download_list_runs_through_our_client(hub, tmp_path):
    # The usual mix: sentinelhub-py builds the Process API request, our client downloads it.
    from sentinelhub import CRS, BBox, DataCollection, SentinelHubRequest

    from rsgrpc.download import SHConfig as OurConfig

    config = OurConfig(
        use_defaults=True,
        sh_client_id=CLIENT_ID,
        sh_client_secret=CLIENT_SECRET,
        sh_base_url=hub.base_url,
        sh_token_url=hub.token_url,
    )
    request = SentinelHubRequest(
        evalscript="//VERSION=3\nfunction setup() {return {input: ['B04'], output: {bands: 1}}}",
        input_data=[
            # A collection without a fixed service URL: the request goes to sh_base_url.
            SentinelHubRequest.input_data(
                DataCollection.define_byoc(
                    "0a1b2c3d-0000-4000-8000-000000000000", name="RSGRPC_TEST_BYOC"
                ),
                time_interval=("2024-06-01", "2024-06-10"),
            )
        ],
        responses=[SentinelHubRequest.output_response("default", SHMimeType.TIFF)],
        bbox=BBox((14.0, 46.0, 14.1, 46.1), crs=CRS.WGS84),
        size=(48, 32),
        data_folder=str(tmp_path),
        config=config,
    )
    assert [item.url for item in request.download_list] == [hub.process_url]
    theirs = request.get_data(save_data=True)
    sent = hub.stats.process_requests
    with SentinelHubDownloadClient(config=config) as client:
        ours = client.download(request.download_list)
        (cached,) = client.download_results(request.download_list)
    assert hub.stats.process_requests == sent, "read from the cache sentinelhub-py wrote"
    assert cached.cache_hit
    assert_same_data(ours[0], theirs[0])
    assert ours[0].shape == (32, 48, 3)
