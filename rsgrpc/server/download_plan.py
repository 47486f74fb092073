"""A download batch checked at the door: every URI, header, body and output path, before
anything is sent or written."""

from __future__ import annotations

import functools
import json
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Final

from google.protobuf import json_format

from rsgrpc.download import Deployment, DownloadRequest, MimeType, RequestType
from rsgrpc.engine import errors
from rsgrpc.engine.paths import DataPath, DataRoot
from rsgrpc.server.download_job import PlannedDownload
from rsgrpc.v1 import download_pb2

# A batch, sent in one message or streamed: its items and the bytes of its requests.
MAX_ITEMS: Final = 100_000
MAX_BATCH_BYTES: Final = 256 << 20
_MAX_URI_LENGTH: Final = 8192
_METHODS: Final = {
    download_pb2.HTTP_METHOD_GET: RequestType.GET,
    download_pb2.HTTP_METHOD_POST: RequestType.POST,
}
_MIME_TYPES: Final = {
    download_pb2.MIME_TYPE_TIFF: MimeType.TIFF,
    download_pb2.MIME_TYPE_PNG: MimeType.PNG,
    download_pb2.MIME_TYPE_JPEG: MimeType.JPG,
    download_pb2.MIME_TYPE_JP2: MimeType.JP2,
    download_pb2.MIME_TYPE_JSON: MimeType.JSON,
    download_pb2.MIME_TYPE_GEOJSON: MimeType.GEOJSON,
    download_pb2.MIME_TYPE_TXT: MimeType.TXT,
    download_pb2.MIME_TYPE_CSV: MimeType.CSV,
    download_pb2.MIME_TYPE_XML: MimeType.XML,
    download_pb2.MIME_TYPE_ZIP: MimeType.ZIP,
    download_pb2.MIME_TYPE_TAR: MimeType.TAR,
    download_pb2.MIME_TYPE_GZIP: MimeType.GZIP,
    download_pb2.MIME_TYPE_RAW: MimeType.RAW,
}
# Some servers read a backslash as a slash, which would hide a '..' segment.
_FORBIDDEN_IN_PATH = re.compile(r"[\x00-\x1f\x7f\\]")
# `\s` is every character `str.isspace` takes.
_SPACE_OR_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f\\]")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# The server authenticates and frames requests itself; a client may not set these.
_RESERVED_HEADERS: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
    }
)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def resolve_uri(uri: str, base_url: str, *, field: str = "uri") -> str:
    """The absolute URL of ``uri``, a path relative to ``base_url`` or an absolute URL under it.

    Raises `InvalidArgumentError` for a malformed URI and `PermissionDeniedError` for one
    that leads anywhere but under ``base_url``: the server's credentials go with it.
    """
    if not uri:
        raise errors.InvalidArgumentError(f"{field} is empty", metadata={"field": field})
    shown = repr(uri if len(uri) <= 200 else uri[:200] + "...")
    if len(uri) > _MAX_URI_LENGTH or _SPACE_OR_FORBIDDEN.search(uri):
        raise errors.InvalidArgumentError(
            f"{field} {shown} is not a valid URI: it is too long or has spaces, backslashes "
            "or control characters",
            metadata={"field": field},
        )
    base = _split(base_url)
    parts = urllib.parse.urlsplit(uri)
    if not (parts.scheme or parts.netloc):
        parts = urllib.parse.urlsplit(f"{base_url.rstrip('/')}/{uri.lstrip('/')}")
    if parts.fragment:
        raise errors.InvalidArgumentError(
            f"{field} {shown} has a fragment, which is never sent", metadata={"field": field}
        )
    try:
        port = parts.port
    except ValueError:
        raise errors.InvalidArgumentError(
            f"{field} {shown} has an invalid port", metadata={"field": field}
        ) from None
    if parts.username is not None or parts.password is not None:
        raise errors.PermissionDeniedError(
            f"{field} {shown} carries credentials; the server adds the deployment's own",
            metadata={"field": field},
        )
    where = (parts.scheme, parts.hostname, port or _DEFAULT_PORTS.get(parts.scheme))
    if where != (base.scheme, base.hostname, base.port or _DEFAULT_PORTS.get(base.scheme)):
        raise errors.PermissionDeniedError(
            f"{field} {shown} is not on the deployment's host {base.scheme}://{base.netloc}",
            metadata={"field": field},
        )
    decoded_path = urllib.parse.unquote(parts.path)
    if _FORBIDDEN_IN_PATH.search(decoded_path):
        raise errors.InvalidArgumentError(
            f"{field} {shown} encodes backslashes or control characters in its path",
            metadata={"field": field},
        )
    segments = decoded_path.split("/")
    if "." in segments or ".." in segments:
        raise errors.PermissionDeniedError(
            f"{field} {shown} has '.' or '..' segments", metadata={"field": field}
        )
    base_path = base.path.rstrip("/")
    if base_path and parts.path != base_path and not parts.path.startswith(base_path + "/"):
        raise errors.PermissionDeniedError(
            f"{field} {shown} is not under the deployment's base URL {base_url}",
            metadata={"field": field},
        )
    return urllib.parse.urlunsplit(parts)


@functools.lru_cache(maxsize=64)
def _split(base_url: str) -> urllib.parse.SplitResult:
    return urllib.parse.urlsplit(base_url)


def _headers(headers: Mapping[str, str], field: str) -> dict[str, str]:
    for name, value in headers.items():
        if not _HEADER_NAME.match(name):
            raise errors.InvalidArgumentError(
                f"{field}: {name!r} is not a valid header name", metadata={"field": field}
            )
        if name.lower() in _RESERVED_HEADERS:
            raise errors.InvalidArgumentError(
                f"{field}: the {name} header is set by the server and may not be given",
                metadata={"field": field},
            )
        if any(c in value for c in "\r\n\x00"):
            raise errors.InvalidArgumentError(
                f"{field}: the {name} header's value has a line break or NUL",
                metadata={"field": field},
            )
    return dict(headers)


def _body(item: download_pb2.DownloadItem, field: str) -> dict[str, Any] | None:
    which = item.WhichOneof("body")
    if which is None:
        return None
    try:
        if which == "body_json":
            value = json.loads(item.body_json)
            if not isinstance(value, dict):
                raise ValueError("it must be a JSON object")
        else:
            value = _integral_numbers(json_format.MessageToDict(item.body_struct))
        # NaN and infinities (1e999 reads as one) have no JSON form: refuse them here.
        json.dumps(value, allow_nan=False)
    except RecursionError:
        raise errors.InvalidArgumentError(
            f"{field}.{which} is nested too deeply", metadata={"field": field}
        ) from None
    except ValueError as error:
        raise errors.InvalidArgumentError(
            f"{field}.{which} is not a valid JSON body: {error}", metadata={"field": field}
        ) from None
    return value


def _integral_numbers(value: Any) -> Any:
    """Struct numbers are doubles; send the whole ones as integers, as a JSON author meant."""
    if isinstance(value, dict):
        return {key: _integral_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral_numbers(item) for item in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _data_type(item: download_pb2.DownloadItem, output: DataPath, field: str) -> MimeType:
    if item.data_type == download_pb2.MIME_TYPE_UNSPECIFIED:
        try:
            return MimeType.from_string(PurePosixPath(output.path).suffix.removeprefix("."))
        except ValueError:
            return MimeType.RAW
    if item.data_type not in _MIME_TYPES:
        raise errors.InvalidArgumentError(
            f"{field}.data_type {item.data_type} is not a known MimeType",
            metadata={"field": field},
        )
    return _MIME_TYPES[item.data_type]


def too_many_items(count: str) -> errors.InvalidArgumentError:
    return errors.InvalidArgumentError(
        f"the batch has {count} items; at most {MAX_ITEMS:,} are allowed: split it"
    )


class StreamedBatch:
    """A StreamDownload batch as its messages arrive: the first holds the batch's settings,
    later ones more items; refused as soon as it passes the limits of a batch."""

    def __init__(self) -> None:
        self.request: download_pb2.DownloadRequest | None = None
        self._bytes = 0

    def add(self, message: download_pb2.StreamDownloadRequest) -> None:
        self._bytes += message.ByteSize()
        if self._bytes > MAX_BATCH_BYTES:
            raise errors.InvalidArgumentError(
                f"the batch's requests pass {MAX_BATCH_BYTES >> 20} MiB; split it"
            )
        if self.request is None:
            if not message.HasField("batch"):
                raise errors.InvalidArgumentError(
                    "the first message of the stream must hold the batch: its session, "
                    "deployment and options",
                    metadata={"field": "batch"},
                )
            self.request = download_pb2.DownloadRequest()
            self.request.CopyFrom(message.batch)
        elif message.HasField("batch"):
            raise errors.InvalidArgumentError(
                "only the first message of the stream may hold the batch; later ones hold items",
                metadata={"field": "batch"},
            )
        if len(self.request.items) + len(message.items) > MAX_ITEMS:
            raise too_many_items(f"more than {MAX_ITEMS:,}")
        self.request.items.extend(message.items)

    def finished(self) -> download_pb2.DownloadRequest:
        if self.request is None:
            raise errors.InvalidArgumentError("the stream ended before its first message")
        return self.request


def plan_download(
    request: download_pb2.DownloadRequest,
    deployment: Deployment,
    data_root: DataRoot,
    cache_dir: Path,
) -> list[PlannedDownload]:
    """Check every item of a batch before anything is sent or written; raise what a client
    should see."""
    if not request.items:
        raise errors.InvalidArgumentError("the batch has no items; give at least one")
    if len(request.items) > MAX_ITEMS:
        raise too_many_items(f"{len(request.items):,}")
    if request.max_threads < 0:
        raise errors.InvalidArgumentError(
            f"max_threads is {request.max_threads}; give a positive number, or 0 for the "
            "deployment's",
            metadata={"field": "max_threads"},
        )
    planned: list[PlannedDownload] = []
    outputs: dict[str, int] = {}
    for index, item in enumerate(request.items):
        field = f"items[{index}]"
        url = resolve_uri(item.uri, deployment.base_url, field=f"{field}.uri")
        body = _body(item, field)
        method = _METHODS.get(item.method)
        if item.method == download_pb2.HTTP_METHOD_UNSPECIFIED:
            method = RequestType.GET if body is None else RequestType.POST
        elif method is None:
            raise errors.InvalidArgumentError(
                f"{field}.method {item.method} is not supported; use GET or POST",
                metadata={"field": field},
            )
        if method is RequestType.GET and body is not None:
            raise errors.InvalidArgumentError(
                f"{field} is a GET with a body; use POST", metadata={"field": field}
            )
        headers = _headers(item.headers, f"{field}.headers")
        output = data_root.output(
            item.output_path, field=f"{field}.output_path", overwrite=request.overwrite
        )
        if output.identity in outputs:  # however each names it: relative or absolute
            raise errors.InvalidArgumentError(
                f"{field}.output_path {item.output_path!r} is also the output of "
                f"items[{outputs[output.identity]}]",
                metadata={"field": field},
            )
        outputs[output.identity] = index
        planned.append(
            PlannedDownload(
                request=DownloadRequest(
                    url=url,
                    headers=headers,
                    request_type=method,
                    post_values=body,
                    use_session=deployment.has_credentials,
                    data_type=_data_type(item, output, field),
                    save_response=True,
                    data_folder=str(cache_dir),
                    return_data=False,
                ),
                output=output,
                output_path=item.output_path,
            )
        )
    return planned
