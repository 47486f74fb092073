"""What to download and where to keep it: `DownloadRequest` and its enums, named as in sentinelhub-py.

The cache folder of a request is the md5 of ``json.dumps({"url": url, "payload": post_values})``,
exactly as sentinelhub-py computes it, so caches written by either library are shared.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import InvalidRequestError


class RequestType(Enum):
    """HTTP method of a request."""

    GET = "GET"
    POST = "POST"
    DELETE = "DELETE"
    PUT = "PUT"
    PATCH = "PATCH"


class MimeType(Enum):
    """Expected format of a response; the value is the cache file extension."""

    TIFF = "tiff"
    PNG = "png"
    JPG = "jpg"
    JP2 = "jp2"
    JSON = "json"
    CSV = "csv"
    ZIP = "zip"
    HDF = "hdf"
    XML = "xml"
    GML = "gml"
    TXT = "txt"
    TAR = "tar"
    RAW = "raw"
    SAFE = "safe"
    PICKLE = "pkl"
    NPY = "npy"
    GPKG = "gpkg"
    GEOJSON = "geojson"
    GZIP = "gz"

    @property
    def extension(self) -> str:
        """The file extension used for this format in the cache."""
        return self.value

    @staticmethod
    def from_string(mime_type_str: str) -> MimeType:
        """Parse a Content-Type (``image/tiff; charset=...``) or an extension (``tif``)."""
        text = mime_type_str.split(";", 1)[0].strip().lower()
        if text in _CONTENT_TYPES:
            return _CONTENT_TYPES[text]
        text = text.rsplit("/", 1)[-1].removeprefix("x-")
        if text in MimeType._value2member_map_:
            return MimeType(text)
        if text in _ALIASES:
            return _ALIASES[text]
        raise ValueError(f"unsupported data format, got {mime_type_str!r}")


_CONTENT_TYPES = {
    "image/tiff": MimeType.TIFF,
    "image/png": MimeType.PNG,
    "image/jpeg": MimeType.JPG,
    "image/jp2": MimeType.JP2,
    "application/json": MimeType.JSON,
    "application/geo+json": MimeType.GEOJSON,
    "text/plain": MimeType.TXT,
    "text/csv": MimeType.CSV,
    "application/xml": MimeType.XML,
    "text/xml": MimeType.XML,
    "application/zip": MimeType.ZIP,
    "application/x-tar": MimeType.TAR,
    "application/octet-stream": MimeType.RAW,
}
_ALIASES = {"tif": MimeType.TIFF, "jpeg": MimeType.JPG, "hdf5": MimeType.HDF, "h5": MimeType.HDF}


def _enum_value(value: Any) -> Any:
    # Accept sentinelhub-py's enums as well as ours and plain strings.
    return getattr(value, "value", value)


@dataclass
class DownloadRequest:
    """A single download: where from, how, and where to save or whether to return the data.

    Fields and defaults follow sentinelhub-py's ``DownloadRequest``. ``use_session``
    asks `SentinelHubDownloadClient` to add the OAuth2 bearer header.
    """

    url: str | None = None
    headers: dict[str, Any] = field(default_factory=dict, repr=False)
    request_type: RequestType = RequestType.GET
    post_values: dict[str, Any] | None = field(default=None, repr=False)
    use_session: bool = False
    data_type: MimeType = MimeType.RAW
    save_response: bool = False
    data_folder: str | None = None
    filename: str | None = None
    return_data: bool = True
    extra_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.request_type = RequestType(_enum_value(self.request_type))
        self.data_type = MimeType(_enum_value(self.data_type))
        if self.headers is None:
            self.headers = {}

    def __hash__(self) -> int:
        return id(self)

    @classmethod
    def coerce(cls, request: Any) -> DownloadRequest:
        """Return ``request`` as a `DownloadRequest`, converting sentinelhub-py's requests."""
        if isinstance(request, cls):
            return request
        try:
            return cls(
                url=request.url,
                headers=dict(request.headers or {}),
                request_type=request.request_type,
                post_values=request.post_values,
                use_session=getattr(request, "use_session", False),
                data_type=request.data_type,
                save_response=request.save_response,
                data_folder=request.data_folder,
                filename=request.filename,
                return_data=request.return_data,
                extra_params=dict(getattr(request, "extra_params", None) or {}),
            )
        except (AttributeError, ValueError) as error:
            raise InvalidRequestError(f"not a download request, got {request!r}") from error

    def raise_if_invalid(self) -> None:
        """Raise `InvalidRequestError` if the request cannot be executed."""
        if not self.url:
            raise InvalidRequestError("the request has no URL")
        if self.save_response and self.data_folder is None:
            raise InvalidRequestError("save_response is set but data_folder is not")

    def get_request_params(self, include_metadata: bool = False) -> dict[str, Any]:
        """The parameters that identify the request; with metadata, also headers and a timestamp."""
        params: dict[str, Any] = {"url": self.url, "payload": self.post_values}
        if include_metadata:
            params = {**params, "headers": self.headers, "timestamp": dt.datetime.now().isoformat()}
        return params

    def get_hashed_name(self) -> str:
        """The md5 of the request's url and payload: the name of its cache folder."""
        hashable = json.dumps(self.get_request_params(include_metadata=False))
        return hashlib.md5(hashable.encode("utf-8")).hexdigest()

    def get_relative_paths(self) -> tuple[str | None, str]:
        """Paths of ``request.json`` (None with a custom filename) and the response, relative
        to ``data_folder``."""
        if self.filename is not None:
            return None, self.filename
        hashed_name = self.get_hashed_name()
        return (
            os.path.join(hashed_name, "request.json"),
            os.path.join(hashed_name, f"response.{self.data_type.extension}"),
        )

    def get_storage_paths(self) -> tuple[str | None, str | None]:
        """Absolute-or-relative paths under ``data_folder``; both None without a data folder."""
        if self.data_folder is None:
            return None, None
        request_path, response_path = self.get_relative_paths()
        if request_path is not None:
            request_path = os.path.join(self.data_folder, request_path)
        return request_path, os.path.join(self.data_folder, response_path)
