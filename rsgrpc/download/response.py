"""A downloaded (or cached) answer: its bytes and metadata, decoded on demand."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .decoding import decode_data
from .request import DownloadRequest, MimeType


@dataclass(frozen=True)
class DownloadResponse:
    """Raw bytes of an answer with its headers, status and how long it took, as in sentinelhub-py."""

    request: DownloadRequest
    content: bytes = field(repr=False)
    headers: dict[str, Any] = field(default_factory=dict, repr=False)
    status_code: int | None = None
    elapsed: float | None = None

    @property
    def response_type(self) -> MimeType:
        """The request's data type, or the one the Content-Type names when the request says RAW."""
        return response_type_of(self.request, self.headers)

    def decode(self) -> Any:
        """The content as Python data (see `decoding.decode_data`)."""
        return decode_data(self.content, self.response_type)

    def derive(self, **params: Any) -> DownloadResponse:
        """A copy with some fields replaced."""
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        values.update(params)
        return DownloadResponse(**values)


def response_type_of(request: DownloadRequest, headers: dict[str, Any]) -> MimeType:
    """The type an answer to ``request`` with ``headers`` is decoded (and checked) as."""
    if request.data_type is not MimeType.RAW:
        return request.data_type
    content_type = _header(headers, "Content-Type")
    if content_type:
        try:
            return MimeType.from_string(str(content_type))
        except ValueError:
            return MimeType.RAW
    return MimeType.RAW


def header_value(headers: dict[str, Any], name: str) -> Any:
    """The value of header ``name`` in ``headers``, whatever its case; None if absent."""
    return _header(headers, name)


def _header(headers: dict[str, Any], name: str) -> Any:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None
