"""Helpers shared by the download tests and the benchmark: deployments and requests for the fake hub."""

from __future__ import annotations

from typing import Any

from fake_sentinelhub import CLIENT_ID, CLIENT_SECRET, FakeSentinelHub

from rsgrpc.download import Deployment, DownloadRequest, MimeType, RetryPolicy

FAST_RETRY = RetryPolicy(
    max_attempts=4, backoff_base_seconds=0.01, backoff_max_seconds=0.05, max_rate_limit_retries=50
)
DATA_TYPES = {
    "tiff": MimeType.TIFF,
    "png": MimeType.PNG,
    "jpeg": MimeType.JPG,
    "json": MimeType.JSON,
    "text": MimeType.TXT,
    "raw": MimeType.RAW,
}


def deployment_for(server: FakeSentinelHub, **options: Any) -> Deployment:
    """A deployment of ``server`` with quick retries and short timeouts."""
    values: dict[str, Any] = {
        "name": server.base_url,
        "base_url": server.base_url,
        "token_url": server.token_url,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "retry": FAST_RETRY,
        "connect_timeout_seconds": 2.0,
        "read_timeout_seconds": 1.0,
        "token_timeout_seconds": 1.0,
    }
    values.update(options)
    return Deployment(**values)


def process_request(
    server: FakeSentinelHub,
    request_id: str,
    kind: str = "tiff",
    data_folder: str | None = None,
    **options: Any,
) -> DownloadRequest:
    """A processing request for ``request_id``, saved under ``data_folder`` when given."""
    return DownloadRequest(
        url=server.process_url,
        request_type="POST",
        post_values={"id": request_id, "format": kind},
        headers={"Content-Type": "application/json"},
        use_session=True,
        data_type=DATA_TYPES[kind],
        save_response=data_folder is not None,
        data_folder=data_folder,
        **options,
    )
