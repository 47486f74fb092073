"""The on-disk cache in sentinelhub-py's layout, written atomically and never holding secrets.

``<data_folder>/<md5 of {"url", "payload"}>/request.json`` describes the request and the
answer's metadata; ``response.<ext>`` holds the answer's bytes. ``request.json`` is written
first and the response last, each by rename, so a response file present means a complete
entry: readers in any process never see half a file. Answers are streamed into a temporary
file beside their final name (`partial_file`) and renamed into place only once checked.

With a size cap, the least recently used entries (by the response file's modification
time, which a cache hit refreshes) are evicted after each write, except entries pinned by
a batch still using them (`pinned`).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import CacheCollisionError
from .redaction import redact_logger
from .request import DownloadRequest
from .response import DownloadResponse

_LOGGER = redact_logger(logging.getLogger(__name__))
_PARTIAL_SUFFIX = ".part"
# A temporary answer file untouched for this long belongs to a writer that died.
_STALE_PARTIAL_SECONDS = 24 * 3600

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


def _umask() -> int:
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()
_FILE_MODE = 0o666 & ~_umask()


def partial_file(path: str) -> tuple[int, str]:
    """A new temporary file beside ``path`` (making its folder), open for writing, with the
    mode an ordinary file gets; returns its descriptor and path. Rename it into place with
    `os.replace`, or remove it."""
    folder = os.path.dirname(path) or "."
    for tries_left in range(3, -1, -1):
        os.makedirs(folder, exist_ok=True)
        try:
            descriptor, temporary = tempfile.mkstemp(
                dir=folder, prefix=f".{os.path.basename(path)}.", suffix=_PARTIAL_SUFFIX
            )
            break
        except FileNotFoundError:
            # Another thread removed the folder as it emptied it (`remove_partial`).
            if not tries_left:
                raise
    # mkstemp makes 0600 files; cache entries are shared like sentinelhub-py's.
    os.fchmod(descriptor, _FILE_MODE)
    return descriptor, temporary


def remove_partial(partial_path: str) -> None:
    """Remove a temporary file made by `partial_file`, and its folder if that is now empty
    (a failed first download leaves no empty entry folder behind)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial_path)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(partial_path) or ".")


def write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    descriptor, temporary = partial_file(path)
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


def read_cached_info(request: DownloadRequest) -> dict[str, Any]:
    """The stored metadata of the answer (headers, status, elapsed) of a cached ``request``;
    raises `CacheCollisionError` if the entry is another request's."""
    request_path, response_path = request.get_storage_paths()
    if response_path is None:
        raise ValueError("the request has no data_folder to read a cached answer from")
    if request_path is None:
        return {}
    with open(request_path, encoding="utf-8") as file:
        stored = json.load(file)
    if not isinstance(stored, dict):
        raise ValueError("request.json does not hold an object")
    _check_matches(request, stored, request_path)
    info = stored.get("response") or {}
    return info if isinstance(info, dict) else {}


def read_cached(request: DownloadRequest) -> DownloadResponse:
    """The cached answer of ``request``; raises `CacheCollisionError` if the entry is another request's."""
    info = read_cached_info(request)
    _, response_path = request.get_storage_paths()
    with open(response_path, "rb") as file:  # type: ignore[arg-type]
        content = file.read()
    return response_from_info(request, content, info)


def response_from_info(
    request: DownloadRequest, content: bytes, info: dict[str, Any]
) -> DownloadResponse:
    return DownloadResponse(
        request=request,
        content=content,
        headers=info.get("headers") or {},
        status_code=info.get("status_code"),
        elapsed=info.get("elapsed"),
    )


def _request_json(
    request: DownloadRequest, headers: dict[str, Any], status_code: int | None, elapsed: Any
) -> bytes:
    params = request.get_request_params(include_metadata=True)
    params["headers"] = redact_headers(params["headers"])
    info = {
        "request": params,
        "response": {
            "headers": redact_headers(headers),
            "status_code": status_code,
            "elapsed": elapsed,
        },
    }
    return json.dumps(info, indent=4, sort_keys=True, default=str).encode("utf-8")


def write_cached(response: DownloadResponse) -> str:
    """Store ``response`` under its request's paths; returns the response path."""
    request = response.request
    request_path, response_path = request.get_storage_paths()
    if response_path is None:
        raise ValueError("the request has no data_folder to cache its answer in")
    if request_path is not None:
        write_atomically(
            request_path,
            _request_json(request, response.headers, response.status_code, response.elapsed),
        )
    write_atomically(response_path, response.content)
    return response_path


def commit_cached(
    request: DownloadRequest,
    partial_path: str,
    *,
    headers: dict[str, Any],
    status_code: int | None,
    elapsed: float | None,
) -> str:
    """Put the checked answer in ``partial_path`` (made by `partial_file` beside the response
    path) in place as the cache entry of ``request``: ``request.json`` first, the response
    last, each by rename. Returns the response path."""
    request_path, response_path = request.get_storage_paths()
    if response_path is None:
        raise ValueError("the request has no data_folder to cache its answer in")
    if request_path is not None:
        write_atomically(request_path, _request_json(request, headers, status_code, elapsed))
    os.replace(partial_path, response_path)
    return response_path


def drop_cached(request: DownloadRequest) -> None:
    """Remove the cache entry of ``request`` (the response first, so no reader sees it whole)."""
    request_path, response_path = request.get_storage_paths()
    for path in (response_path, request_path):
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    if request_path is not None:
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(request_path))


def touch(path: str) -> None:
    """Mark the entry whose response is ``path`` as just used (for eviction)."""
    with contextlib.suppress(OSError):
        os.utime(path)


# -- pins and eviction ----------------------------------------------------------------------

_PIN_LOCK = threading.Lock()
_PINS: collections.Counter[str] = collections.Counter()


def _entry_of(response_path: str) -> str:
    return os.path.realpath(os.path.dirname(response_path))


@contextlib.contextmanager
def pinned(response_paths: Iterable[str | None]) -> Iterator[None]:
    """Keep the entries of ``response_paths`` from eviction, in this process, while inside."""
    entries = [_entry_of(path) for path in response_paths if path]
    with _PIN_LOCK:
        _PINS.update(entries)
    try:
        yield
    finally:
        with _PIN_LOCK:
            _PINS.subtract(entries)
            for entry in entries:
                if _PINS[entry] <= 0:
                    del _PINS[entry]


def _entry_size_and_age(folder: str) -> tuple[int, float] | None:
    """Bytes held by a cache entry folder, and when its response was last used; None if the
    folder holds no response. Temporary files left by dead writers are removed."""
    size, used, has_response = 0, 0.0, False
    stale_before = time.time() - _STALE_PARTIAL_SECONDS
    try:
        with os.scandir(folder) as files:
            for file in files:
                if not file.is_file(follow_symlinks=False):
                    continue
                info = file.stat(follow_symlinks=False)
                if file.name.endswith(_PARTIAL_SUFFIX) and info.st_mtime < stale_before:
                    # Left by a writer that died mid-answer: no live writer is this slow.
                    with contextlib.suppress(OSError):
                        os.unlink(file.path)
                    continue
                size += info.st_size
                if file.name.startswith("response."):
                    has_response = True
                    used = max(used, info.st_mtime)
    except OSError:
        return None
    return (size, used) if has_response else None


_TALLY_LOCK = threading.Lock()
# Bytes each capped data folder is believed to hold: scanned when first needed and after
# each eviction, counted up by this process's writes in between (other processes' writes
# are seen at the next scan), so a write below the cap costs no scan.
_TALLIES: dict[str, int] = {}


def keep_under(data_folder: str, max_bytes: int, written: int, *, keep: Iterable[str] = ()) -> None:
    """Count ``written`` new bytes in ``data_folder`` and evict down to ``max_bytes`` when the
    folder may be over it (see `evict`)."""
    folder = os.path.realpath(data_folder)
    with _TALLY_LOCK:
        tally = _TALLIES.get(folder)
        if tally is not None:
            tally = _TALLIES[folder] = tally + written
    if tally is not None and tally <= max_bytes:
        return
    held = evict(folder, max_bytes, keep=keep)
    with _TALLY_LOCK:
        _TALLIES[folder] = held


def evict(data_folder: str, max_bytes: int, *, keep: Iterable[str] = ()) -> int:
    """Remove the least recently used entries of ``data_folder`` until it holds at most
    ``max_bytes``; entries of ``keep`` (response paths) and pinned entries stay. Returns the
    bytes the folder's entries hold afterwards."""
    kept = {_entry_of(path) for path in keep}
    entries: list[tuple[float, int, str]] = []
    total = 0
    try:
        with os.scandir(data_folder) as folders:
            for folder in folders:
                if not folder.is_dir(follow_symlinks=False) or len(folder.name) != 32:
                    continue
                found = _entry_size_and_age(folder.path)
                if found is not None:
                    entries.append((found[1], found[0], os.path.realpath(folder.path)))
                    total += found[0]
    except OSError:
        return 0
    if total <= max_bytes:
        return total
    freed = 0
    entries.sort()
    for _, size, folder in entries:
        if total - freed <= max_bytes:
            break
        with _PIN_LOCK:
            busy = folder in kept or _PINS[folder] > 0
        if busy:
            continue
        # The response first: a reader never finds an entry without its answer.
        with contextlib.suppress(OSError), os.scandir(folder) as files:
            for file in files:
                if file.name.startswith("response."):
                    os.unlink(file.path)
        shutil.rmtree(folder, ignore_errors=True)
        freed += size
        _LOGGER.debug("Evicted a cache entry of %d bytes", size)
    return total - freed


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
