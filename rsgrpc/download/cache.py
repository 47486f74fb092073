"""The on-disk cache in sentinelhub-py's layout, written atomically and never holding secrets.

``<data_folder>/<md5 of {"url", "payload"}>/request.json`` describes the request and the
answer's metadata; ``response.<ext>`` holds the answer's bytes. ``request.json`` is written
first and the response last, each by rename, so a response file present means a complete
entry: readers in any process never see half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any

from .errors import CacheCollisionError
from .request import DownloadRequest
from .response import DownloadResponse

# Header names holding any of these are dropped before anything is written to disk.
_SENSITIVE_HEADER_PARTS = (
    "authorization",
    "cookie",
    "token",
    "secret",
    "password",
    "api-key",
    "apikey",
)


def redact_headers(headers: dict[str, Any] | None) -> dict[str, Any]:
    """``headers`` without credentials, cookies or tokens."""
    return {
        key: value
        for key, value in (headers or {}).items()
        if not any(part in str(key).lower() for part in _SENSITIVE_HEADER_PARTS)
    }


def write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".part"
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def is_cached(request: DownloadRequest) -> bool:
    """Whether a complete cache entry exists for ``request``."""
    request_path, response_path = request.get_storage_paths()
    if response_path is None or not os.path.isfile(response_path):
        return False
    return request_path is None or os.path.isfile(request_path)


def read_cached(request: DownloadRequest) -> DownloadResponse:
    """The cached answer of ``request``; raises `CacheCollisionError` if the entry is another request's."""
    request_path, response_path = request.get_storage_paths()
    if response_path is None:
        raise ValueError("the request has no data_folder to read a cached answer from")
    response_info: dict[str, Any] = {}
    if request_path is not None:
        with open(request_path, encoding="utf-8") as file:
            stored = json.load(file)
        _check_matches(request, stored, request_path)
        response_info = stored.get("response") or {}
    with open(response_path, "rb") as file:
        content = file.read()
    return DownloadResponse(
        request=request,
        content=content,
        headers=response_info.get("headers") or {},
        status_code=response_info.get("status_code"),
        elapsed=response_info.get("elapsed"),
    )


def write_cached(response: DownloadResponse) -> str:
    """Store ``response`` under its request's paths; returns the response path."""
    request = response.request
    request_path, response_path = request.get_storage_paths()
    if response_path is None:
        raise ValueError("the request has no data_folder to cache its answer in")
    if request_path is not None:
        params = request.get_request_params(include_metadata=True)
        params["headers"] = redact_headers(params["headers"])
        info = {
            "request": params,
            "response": {
                "headers": redact_headers(response.headers),
                "status_code": response.status_code,
                "elapsed": response.elapsed,
            },
        }
        text = json.dumps(info, indent=4, sort_keys=True, default=str)
        write_atomically(request_path, text.encode("utf-8"))
    write_atomically(response_path, response.content)
    return response_path


def _check_matches(request: DownloadRequest, stored: dict[str, Any], request_path: str) -> None:
    # Older sentinelhub-py versions stored the request at the top level.
    cached = dict(stored.get("request", stored))
    cached.pop("timestamp", None)
    cached.pop("headers", None)
    current = json.loads(json.dumps(request.get_request_params(include_metadata=False)))
    if cached != current:
        raise CacheCollisionError(
            f"the cache entry {request_path} belongs to a different request with the same hash",
            url=request.url,
        )
