"""Downloads: a batch from one of the server's deployments, streamed to it.

Not a Remotior tool (Remotior's `download_products` searches catalogues): the server runs
sentinelhub-py's `download` with its credentials and cache, and the outcome's `extra`
holds one result per request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rsgrpc.client.output import GrpcResult, OutputManager, status_result
from rsgrpc.v1 import download_pb2

if TYPE_CHECKING:
    from rsgrpc.client.session import Session

_HTTP_METHODS = {"GET": download_pb2.HTTP_METHOD_GET, "POST": download_pb2.HTTP_METHOD_POST}
_MIME_TYPES = {
    **{
        name.removeprefix("MIME_TYPE_").lower(): value
        for name, value in download_pb2.MimeType.items()
        if value != download_pb2.MIME_TYPE_UNSPECIFIED
    },
    "tif": download_pb2.MIME_TYPE_TIFF,
    "jpg": download_pb2.MIME_TYPE_JPEG,
    "gz": download_pb2.MIME_TYPE_GZIP,
}
# A StreamDownload message's items, in bytes: well under any server's message limit.
_STREAM_MESSAGE_BYTES = 1 << 20
_DOWNLOAD_KEYS = ("uri", "method", "headers", "body", "body_json", "data_type", "output_path")


def download_item(spec: Mapping[str, Any] | download_pb2.DownloadItem) -> download_pb2.DownloadItem:
    """A `DownloadItem` from a mapping of its fields, as a JSON file of requests holds them.

    Keys: ``uri`` (a path under the deployment's base URL, or a URL under it),
    ``output_path`` (under the data root), and optionally ``method`` (``"GET"`` or
    ``"POST"``), ``headers``, ``body`` (a JSON object, sent exactly as ``json.dumps``
    writes it) or ``body_json`` (JSON text), and ``data_type`` (``"tiff"``, ``"png"``,
    ``"jpeg"``, ``"json"``, ...; by default taken from the output's extension).
    """
    if isinstance(spec, download_pb2.DownloadItem):
        return spec
    if not isinstance(spec, Mapping):
        raise ValueError(f"a download request is a mapping or a DownloadItem, got {spec!r}")
    unknown = sorted(set(spec) - set(_DOWNLOAD_KEYS))
    if unknown:
        raise ValueError(f"unknown download request keys {unknown}; use {list(_DOWNLOAD_KEYS)}")
    if "body" in spec and "body_json" in spec:
        raise ValueError("give body or body_json, not both")
    item = download_pb2.DownloadItem(
        uri=spec.get("uri", ""),
        headers=dict(spec.get("headers") or {}),
        output_path=spec.get("output_path", ""),
    )
    if spec.get("method"):
        method = str(spec["method"]).upper().removeprefix("HTTP_METHOD_")
        if method not in _HTTP_METHODS:
            raise ValueError(f"unsupported method, got {spec['method']!r}; use GET or POST")
        item.method = _HTTP_METHODS[method]
    if spec.get("data_type"):
        data_type = str(spec["data_type"]).lower().removeprefix("mime_type_")
        if data_type not in _MIME_TYPES:
            raise ValueError(
                f"unsupported data_type, got {spec['data_type']!r}; use one of {sorted(_MIME_TYPES)}"
            )
        item.data_type = _MIME_TYPES[data_type]
    if "body" in spec:
        item.body_json = json.dumps(spec["body"])
    elif "body_json" in spec:
        item.body_json = spec["body_json"]
    return item


def _streamed(
    batch: download_pb2.DownloadRequest, items: Sequence[download_pb2.DownloadItem]
) -> Iterator[download_pb2.StreamDownloadRequest]:
    """The messages of a StreamDownload stream: the batch's settings, then its items in
    messages of about `_STREAM_MESSAGE_BYTES`."""
    message = download_pb2.StreamDownloadRequest(batch=batch)
    size = 0
    for item in items:
        item_size = item.ByteSize()
        if message.items and size + item_size > _STREAM_MESSAGE_BYTES:
            yield message
            message, size = download_pb2.StreamDownloadRequest(), 0
        message.items.append(item)
        size += item_size
    yield message


def _error_extra(result: GrpcResult) -> dict[str, Any]:
    extra: dict[str, Any] = {"code": result.code, "error": result.message}
    if result.reason:
        extra["reason"], extra["metadata"] = result.reason, result.metadata
    return extra


def _refused(result: GrpcResult) -> OutputManager:
    return OutputManager(check=False, paths=[], extra=_error_extra(result), grpc=result)


def _download_output(response: download_pb2.DownloadResponse) -> OutputManager:
    results = list(response.results)
    succeeded = download_pb2.DownloadItemResult.STATUS_SUCCEEDED
    saved = [r.output_path for r in results if r.status == succeeded]
    extra: dict[str, Any] = {"response": response, "results": results}
    grpc_result = GrpcResult(response=response)
    failures = [r for r in results if r.status != succeeded]
    if failures:
        first = failures[0]
        grpc_result = status_result(first.error.code, first.error.message, first.error.details)
        grpc_result.response = response
        extra.update(_error_extra(grpc_result))
        extra["error"] = grpc_result.message = (
            f"{len(failures)} of {len(results)} requests failed; the first, "
            f"{first.output_path!r}: {first.error.message}"
        )
    return OutputManager(check=not failures, paths=saved, extra=extra, grpc=grpc_result)


class Downloads:
    """`Session.download`."""

    def _mapped(self: Session, item: download_pb2.DownloadItem) -> download_pb2.DownloadItem:
        """``item`` with its output path as the server names it (`PathMap`); a copy when it
        changes, so the caller's item is left as it was."""
        output_path = self.path_map.to_server(item.output_path)
        if output_path == item.output_path:
            return item
        mapped = download_pb2.DownloadItem()
        mapped.CopyFrom(item)
        mapped.output_path = output_path
        return mapped

    def download(
        self: Session,
        download_requests: Sequence[Mapping[str, Any] | download_pb2.DownloadItem],
        deployment: str,
        overwrite: bool = False,
        redownload: bool = False,
        max_threads: int | None = None,
    ) -> OutputManager:
        """Download a batch from one of the server's deployments into the data root
        (sentinelhub-py's `download`, run by the server with its credentials and cache).

        Each request is a `DownloadItem` or a mapping (see `download_item`). ``check`` is
        True when every request succeeded; ``paths`` lists the saved outputs;
        ``extra["results"]`` holds one `DownloadItemResult` per request, in order (status,
        output path, bytes, cache hit, attempts, error), and on failure ``extra`` also holds
        the code and message of the first one. ``redownload`` bypasses the server's cache;
        ``max_threads`` asks for fewer download threads than the deployment's.

        The batch is streamed to the server (`StreamDownload`), so it may be of any size the
        server takes.
        """
        batch = download_pb2.DownloadRequest(
            session=self.name,
            deployment=deployment,
            overwrite=overwrite,
            redownload=redownload,
            max_threads=max_threads or 0,
        )
        items = [self._mapped(download_item(spec)) for spec in download_requests]
        output = self._run(
            "download",
            lambda: self._downloads.StreamDownload(
                _streamed(batch, items), metadata=self._metadata
            ),
            download_pb2.DownloadResponse(),
            _download_output,
            failure=_refused,
        )
        return self._in_client_terms(output)
