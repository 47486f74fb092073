"""Data roots in S3-compatible object storage: `s3://bucket/prefix`.

A client path under such a root is the key `prefix/path`, checked for its form
as any path is (no '..', names of at most 255 bytes): object storage has no
links and no folders to swap, so the key is the whole of confinement. Nothing
outside the configured prefixes is read or written.

- Inputs are read by GDAL through its own S3 driver (`/vsis3/`), by ranges, so
  a Dask worker reads the windows it needs of a cloud-optimized GeoTIFF with no
  shared file system. The network stays closed to GDAL everywhere else: its
  options allow GeoTIFF names only while an object root's input is opened
  (`gdal_options`), and no cache outlives an open, so an object replaced is read
  afresh.
- Outputs are written whole in a local staging folder of the server's and
  uploaded when complete (`rsgrpc.engine.partial_output.ObjectOutput`): an
  object appears whole or not at all.
- Everything else (whether an object exists, its size and version, small
  reads, listings, deletes) goes through boto3.

Credentials and the endpoint come from the environment as AWS tools read them
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION,
AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3 for an S3-compatible server, and the
rest of boto3's chain) and are never logged. GDAL is given the same endpoint.
Every call is bounded: connections time out after `CONNECT_TIMEOUT_S`, reads
after `READ_TIMEOUT_S`, and a call is tried at most `ATTEMPTS` times.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from rsgrpc.engine.errors import (
    FailedPreconditionError,
    NotFoundError,
    PermissionDeniedError,
    RsgrpcError,
    UnavailableError,
)

SCHEME = "s3://"
GDAL_PREFIX = "/vsis3/"
MAX_KEY_BYTES = 1024  # S3's longest key
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
ATTEMPTS = 3
# S3's rules for a bucket's name: 3 to 63 lowercase letters, digits, '.' and '-'.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_DENIED = frozenset({"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"})
_THROTTLED = frozenset({"503", "SlowDown", "RequestTimeout", "500", "InternalError"})


def is_object_url(text: str | os.PathLike) -> bool:
    """Whether `text` names object storage (`s3://...`, or GDAL's `/vsis3/...`) rather
    than a folder."""
    return isinstance(text, str) and text.startswith((SCHEME, GDAL_PREFIX))


@dataclass(frozen=True)
class ObjectStat:
    """What identifies an object's content: it changes whenever the object is written."""

    size: int
    etag: str
    modified: float

    @property
    def identity(self) -> tuple[Any, ...]:
        return ("object", self.etag, self.size, self.modified)


@dataclass(frozen=True)
class ObjectRoot:
    """A data root at `prefix` (no leading or trailing '/'; empty: the whole bucket) in
    the S3 bucket `bucket`."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> ObjectRoot:
        """The root `s3://bucket[/prefix]` (or `/vsis3/bucket[/prefix]`); raises ValueError
        for anything else."""
        if url.startswith(GDAL_PREFIX):
            url = SCHEME + url[len(GDAL_PREFIX) :]
        parts = urlsplit(url)
        prefix = PurePosixPath("/", parts.path)
        if (
            parts.scheme != "s3"
            or not _BUCKET.fullmatch(parts.netloc)
            or parts.query
            or parts.fragment
            or ".." in prefix.parts
        ):
            raise ValueError(
                f"{url!r} is not an object-storage root: write s3://bucket or "
                "s3://bucket/prefix, with a valid bucket name"
            )
        return cls(parts.netloc, "/".join(prefix.parts[1:]))

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def written_forms(self) -> tuple[PurePosixPath, ...]:
        """The absolute forms a client may write for this root, read as POSIX paths:
        GDAL's (`/vsis3/bucket/prefix`), and `s3://bucket/prefix` as `posix_form` makes
        it."""
        tail = PurePosixPath(self.bucket, self.prefix)
        return (PurePosixPath(GDAL_PREFIX, tail), PurePosixPath("/s3:", tail))

    def key(self, parts: tuple[str, ...]) -> str:
        """The object key of the path `parts` from the root."""
        return "/".join((self.prefix, *parts) if self.prefix else parts)

    def gdal_name(self, parts: tuple[str, ...]) -> str:
        """The name GDAL opens the object at `parts` by."""
        return f"{GDAL_PREFIX}{self.bucket}/{self.key(parts)}"

    def stat(self, parts: tuple[str, ...]) -> ObjectStat | None:
        """The object at `parts`, or None where there is none."""
        try:
            head = _client().head_object(Bucket=self.bucket, Key=self.key(parts))
        except Exception as error:
            if _code(error) in _MISSING:
                return None
            raise
        return ObjectStat(
            int(head["ContentLength"]), head["ETag"], head["LastModified"].timestamp()
        )

    def read(self, parts: tuple[str, ...], limit: int) -> bytes:
        """Up to `limit` bytes from the start of the object at `parts`."""
        answer = _client().get_object(
            Bucket=self.bucket, Key=self.key(parts), Range=f"bytes=0-{limit - 1}"
        )
        with answer["Body"] as body:
            return body.read(limit)

    def upload(self, parts: tuple[str, ...], local: str) -> None:
        """Upload the local file `local` as the object at `parts`, whole: a large file
        goes in parts, and the object appears only once every part is in."""
        _client().upload_file(local, self.bucket, self.key(parts))

    def put_new(self, parts: tuple[str, ...], data: bytes) -> bool:
        """Write `data` as the object at `parts` unless one is there; False if one was."""
        try:
            _client().put_object(
                Bucket=self.bucket, Key=self.key(parts), Body=data, IfNoneMatch="*"
            )
        except Exception as error:
            if _code(error) in ("412", "PreconditionFailed", "409", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def delete(self, parts: tuple[str, ...]) -> None:
        _client().delete_object(Bucket=self.bucket, Key=self.key(parts))

    def list_folder(self, parts: tuple[str, ...]) -> list[str]:
        """The names of the objects directly in the folder at `parts` ("folders" of S3's
        listing by '/' are not objects, and are left out)."""
        start = self.key(parts) + "/" if parts or self.prefix else ""
        names = []
        pages = _client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=start, Delimiter="/"):
            names += [item["Key"][len(start) :] for item in page.get("Contents", ())]
        return [name for name in names if name]

    def gdal_options(self) -> dict[str, str]:
        """GDAL's options while it opens an input of this root: its S3 driver pointed at
        the environment's endpoint, GeoTIFF names only, bounded and retried requests, and
        no cache of the root's objects kept past an open."""
        options = {
            "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
            "CPL_VSIL_CURL_NON_CACHED": f"{GDAL_PREFIX}{self.bucket}/{self.prefix}",
            "GDAL_HTTP_MAX_RETRY": str(ATTEMPTS - 1),
            "GDAL_HTTP_RETRY_DELAY": "1",
            "GDAL_HTTP_CONNECTTIMEOUT": str(CONNECT_TIMEOUT_S),
            "GDAL_HTTP_TIMEOUT": str(READ_TIMEOUT_S),
        }
        endpoint = _endpoint()
        if endpoint:
            url = urlsplit(endpoint)
            options["AWS_S3_ENDPOINT"] = url.netloc + url.path.rstrip("/")
            options["AWS_HTTPS"] = "YES" if url.scheme == "https" else "NO"
            options["AWS_VIRTUAL_HOSTING"] = "FALSE"  # bucket in the path, as such servers take
        return options


def posix_form(client_path: str) -> str:
    """`s3://bucket/key` as the POSIX path `/s3:/bucket/key`, matched against the roots'
    `written_forms` like any absolute path; other paths as they are."""
    return "/s3:/" + client_path[len(SCHEME) :] if client_path.startswith(SCHEME) else client_path


def client_form(path: PurePosixPath) -> str:
    """A path as the client writes it: `posix_form` undone."""
    if path.parts[:2] == ("/", "s3:"):
        return SCHEME + "/".join(path.parts[2:])
    return path.as_posix()


def refusal(error: Exception, field: str, shown: str) -> RsgrpcError:
    """The client's error for `error`, met reading or writing `shown` in object storage.
    Messages name the client's path only, never the bucket, the endpoint or a key."""
    code = _code(error)
    metadata = {"field": field}
    if code in _MISSING:
        return NotFoundError(f"{field} {shown!r} does not exist", metadata=metadata)
    if code in _DENIED:
        return PermissionDeniedError(
            f"{field} {shown!r}: the server may not open it in its object storage",
            metadata=metadata,
        )
    if code == "NoSuchBucket":
        return FailedPreconditionError(
            "the server's data root is not available: its bucket does not exist",
            metadata=metadata,
        )
    if code is None or code in _THROTTLED:
        return UnavailableError(
            f"{field} {shown!r}: the object storage did not answer; try again",
            metadata=metadata,
        )
    # Anything else is between the server and its storage (a region, a policy): the
    # operator's to fix, named by the storage's code.
    return FailedPreconditionError(
        f"{field} {shown!r}: the object storage refused it ({code})", metadata=metadata
    )


def is_storage_error(error: BaseException) -> bool:
    """Whether `error` came from boto3 talking to object storage."""
    module = type(error).__module__
    return module.startswith(("botocore", "boto3", "s3transfer", "urllib3"))


def _code(error: BaseException) -> str | None:
    """The storage's error code in `error` (a botocore ClientError); None for a failure
    to reach it at all."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "")) or None
    return None


_clients: dict[tuple[int, str], Any] = {}
_clients_lock = threading.Lock()


def _endpoint() -> str:
    """The S3 endpoint the environment names (empty: AWS's own)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def _client() -> Any:
    """This process's S3 client for the environment's endpoint (a forked child makes its
    own: a client's connections do not survive a fork)."""
    key = (os.getpid(), _endpoint())
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = _new_client()
    return client


def _new_client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise FailedPreconditionError(
            "this server has object-storage data roots but not boto3: install rsgrpc[s3]"
        ) from None
    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"max_attempts": ATTEMPTS, "mode": "standard"},
        s3={"addressing_style": "path"} if _endpoint() else None,
    )
    return boto3.session.Session().client("s3", config=config)


_staged_in: Path | None = None


def stage_in(folder: Path) -> None:
    """Stage this process's object outputs in `folder` (the server's instance folder,
    removed with it); by default, the system's temporary folder."""
    global _staged_in
    _staged_in = folder


def staging_folder() -> Path:
    """Where this process writes an object output before uploading it."""
    return _staged_in or Path(tempfile.gettempdir())
