"""What to download and where to keep it: `DownloadRequest` and its enums, named as in sentinelhub-py.

The cache folder of a request is the md5 of ``json.dumps({"url": url, "payload": post_values})``,
exactly as sentinelhub-py computes it, so caches written by either library are shared.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import mimetypes
import os
import platform
import warnings
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import InvalidRequestError, SHRuntimeWarning


class _AcceptsForeignMembers:
    """Lets ``MimeType(x)`` and ``RequestType(x)`` take sentinelhub-py's members by value."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if isinstance(value, Enum) and value.value in cls._value2member_map_:  # type: ignore[attr-defined]
            return cls._value2member_map_[value.value]  # type: ignore[attr-defined]
        return None


class RequestType(_AcceptsForeignMembers, Enum):
    """HTTP method of a request."""

    GET = "GET"
    POST = "POST"
    DELETE = "DELETE"
    PUT = "PUT"
    PATCH = "PATCH"


class MimeType(_AcceptsForeignMembers, Enum):
    """Expected format of a response; the value is the cache file extension.

    The members and helpers are sentinelhub-py's, with the same answers.
    """

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
        """The format named by a media type (``image/tiff``) or a file extension (``tif``).

        Media types are read through `mimetypes` as sentinelhub-py reads them. Parameters
        (``; charset=utf-8``) and upper-case extensions, which sentinelhub-py refuses, are
        accepted.
        """
        text = mime_type_str.split(";", 1)[0].strip()
        guessed = mimetypes.guess_extension(text)
        text = guessed.strip(".") if guessed else text.split("/")[-1]
        for candidate in (text, text.lower()):
            if MimeType.has_value(candidate):
                return MimeType(candidate)
            if candidate in _ALIASES:
                return _ALIASES[candidate]
        raise ValueError(f"Data format {text} is not supported")

    def is_image_format(self) -> bool:
        """Whether this is an image format: TIFF, PNG, JPEG or JPEG 2000."""
        return self in _IMAGE_FORMATS

    def is_api_format(self) -> bool:
        """Whether Sentinel Hub's Process API can answer in this format."""
        return self in _API_FORMATS

    def is_tiff_format(self) -> bool:
        """Whether this is TIFF."""
        return self is MimeType.TIFF

    @classmethod
    def has_value(cls, value: str) -> bool:
        """Whether a member has the value ``value``."""
        return value in cls._value2member_map_

    def get_string(self) -> str:
        """The media type of this format (``image/tiff``); raw data is ``raw``.

        Raises KeyError where `mimetypes` knows no media type for the extension, as
        sentinelhub-py does.
        """
        if self is MimeType.JP2:
            return "image/jpeg2000"
        if self is MimeType.XML:
            return "text/xml"
        if self is MimeType.RAW:
            return self.value
        return mimetypes.types_map["." + self.value]

    def matches_extension(self, path: str) -> bool:
        """Whether ``path`` ends with this format's extension."""
        return path.endswith(f".{self.extension}")

    def get_expected_max_value(self) -> float | int:
        """The largest value an image of this format holds; ValueError for other formats."""
        try:
            return _MAX_VALUES[self]
        except KeyError:
            raise ValueError(f"Type {self} is not supported by this method") from None


_ALIASES = {"tif": MimeType.TIFF, "jpeg": MimeType.JPG, "hdf5": MimeType.HDF, "h5": MimeType.HDF}
_IMAGE_FORMATS = frozenset({MimeType.TIFF, MimeType.PNG, MimeType.JP2, MimeType.JPG})
_API_FORMATS = frozenset({MimeType.JPG, MimeType.PNG, MimeType.TIFF, MimeType.JSON})
_MAX_VALUES = {MimeType.TIFF: 65535, MimeType.PNG: 255, MimeType.JPG: 255, MimeType.JP2: 10000}


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
        self.request_type = RequestType(self.request_type)
        self.data_type = MimeType(self.data_type)
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
        response_path = os.path.join(self.data_folder, response_path)
        _warn_if_name_too_long(response_path)
        return request_path, response_path


def _warn_if_name_too_long(path: str) -> None:
    """Warn, as sentinelhub-py does, when saving under ``path`` would likely fail."""
    if len(path) > 255 and platform.system() == "Windows":
        problem = "File path"
    elif len(os.path.basename(path)) > 255:
        problem = "Filename of"
    else:
        return
    warnings.warn(
        f"{problem} {path} is longer than 255 characters, which might cause an error while "
        "saving on disk",
        category=SHRuntimeWarning,
        stacklevel=3,
    )
