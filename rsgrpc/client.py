"""Python client of rsgrpc, with Remotior Sensus' names for what the service does.

A Remotior script runs against the service with its import changed::

    from rsgrpc.client import Session
    rs = Session(n_processes=2, available_ram=2048, target="localhost:50051")
    out = rs.band_calc(
        input_raster_list=["s2/b08.tif", "s2/b04.tif"], input_name_list=["nir", "red"],
        expression_string='("nir" - "red") / ("nir" + "red")', output_path="ndvi.tif",
    )
    assert out.check, out.extra
    rs.close()

Paths are relative to the server's data root.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from rsgrpc.v1 import (
    download_pb2,
    download_pb2_grpc,
    operation_pb2,
    operation_pb2_grpc,
    raster_pb2,
    raster_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)

_LOG_LEVELS = {
    10: session_pb2.LOG_LEVEL_DEBUG,
    20: session_pb2.LOG_LEVEL_INFO,
    30: session_pb2.LOG_LEVEL_WARNING,
    40: session_pb2.LOG_LEVEL_ERROR,
}
_DATA_TYPES = {
    name: getattr(raster_pb2, f"DATA_TYPE_{name.upper()}")
    for name in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
}

_FILTERS = {
    "value_list": raster_pb2.MORPHOLOGY_FILTER_VALUE_LIST,
    "grey": raster_pb2.MORPHOLOGY_FILTER_GREY,
    "closing": raster_pb2.MORPHOLOGY_FILTER_GREY_CLOSING,
    "opening": raster_pb2.MORPHOLOGY_FILTER_GREY_OPENING,
}
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
# The largest answer taken: the server's default message limit.
_MAX_ANSWER_BYTES = 16 << 20
_DOWNLOAD_KEYS = ("uri", "method", "headers", "body", "body_json", "data_type", "output_path")

Progress = Callable[[operation_pb2.OperationMetadata], None]
# An input band: a path under the data root (band 1), or a (path, band) pair.
BandLike = str | tuple[str, int]


@dataclass
class OutputManager:
    """A tool's outcome, as Remotior returns it: `check` is False on failure,
    with the status code, message and reason in `extra`."""

    check: bool = True
    path: str | None = None
    paths: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _data_type(name: str) -> int:
    try:
        return _DATA_TYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unsupported output_datatype, got {name!r}") from None


def _bands(input_bands: Sequence[BandLike] | BandLike) -> list[raster_pb2.RasterBand]:
    if isinstance(input_bands, str | tuple):
        input_bands = [input_bands]
    bands = []
    for item in input_bands:
        path, band = (item, 1) if isinstance(item, str) else item
        bands.append(raster_pb2.RasterBand(path=path, band=band))
    return bands


def _tool_output(
    output_path: str | None, prefix: str, overwrite: bool, compression: str | None
) -> raster_pb2.ToolOutput:
    return raster_pb2.ToolOutput(
        path=output_path or "",
        prefix=prefix,
        overwrite=overwrite,
        options=_output_options(compression),
    )


def _output_options(compression: str | None) -> raster_pb2.OutputOptions:
    if not compression:
        return raster_pb2.OutputOptions()
    return raster_pb2.OutputOptions(
        compression=raster_pb2.Compression.Value(f"COMPRESSION_{compression.upper()}")
    )


def _saved(paths: list[str], response: Any) -> OutputManager:
    return OutputManager(path=paths[0], paths=paths, extra={"response": response})


def _tool_outputs(response: Any) -> OutputManager:
    return _saved([o.output_path for o in response.outputs], response)


def _error_extra(status_code: int, message: str, details: Sequence[Any]) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "code": grpc.StatusCode(_code_tuple(status_code)).name,
        "error": message,
    }
    for detail in details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            extra["reason"] = info.reason
            extra["metadata"] = dict(info.metadata)
    return extra


def _code_tuple(code: int) -> tuple[int, str]:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.value
    return grpc.StatusCode.UNKNOWN.value


def _rpc_error_extra(error: grpc.RpcError) -> dict[str, Any]:
    status = rpc_status.from_call(error)
    if status is None:
        return {"code": error.code().name, "error": error.details()}
    return _error_extra(status.code, status.message, status.details)


def connect(
    target: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to rsgrpc, with keepalive settings the server accepts, taking answers as
    large as the server sends by default (a batch of 100,000 downloads answers about 5 MB)."""
    options = [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.max_receive_message_length", _MAX_ANSWER_BYTES),
        *options,
    ]
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def download_item(spec: Mapping[str, Any] | download_pb2.DownloadItem) -> download_pb2.DownloadItem:
    """A `DownloadItem` from a mapping of its fields, as a JSON file of requests holds them.

    Keys: ``uri`` (a path under the deployment's base URL, or a URL under it),
    ``output_path`` (relative to the data root), and optionally ``method`` (``"GET"`` or
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


def _morphology(
    filter: str, value_list: Sequence[float] | None, size: int, circular: bool | None
) -> raster_pb2.MorphologyParameters:
    if filter not in _FILTERS:
        raise ValueError(f"unsupported filter, got {filter!r}; use one of {list(_FILTERS)}")
    return raster_pb2.MorphologyParameters(
        filter=_FILTERS[filter],
        value_list=list(value_list or []),
        size=size,
        circular_structure=bool(circular),
    )


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


def _download_output(response: download_pb2.DownloadResponse) -> OutputManager:
    results = list(response.results)
    succeeded = download_pb2.DownloadItemResult.STATUS_SUCCEEDED
    saved = [r.output_path for r in results if r.status == succeeded]
    extra: dict[str, Any] = {"response": response, "results": results}
    failed = [r for r in results if r.status != succeeded]
    if failed:
        first = failed[0]
        extra.update(_error_extra(first.error.code, first.error.message, first.error.details))
        extra["error"] = (
            f"{len(failed)} of {len(results)} requests failed; the first, "
            f"{first.output_path!r}: {first.error.message}"
        )
    return OutputManager(
        check=not failed, path=saved[0] if saved else None, paths=saved, extra=extra
    )


class Session:
    """A session on an rsgrpc server (Remotior's `Session`)."""

    def __init__(
        self,
        n_processes: int | None = None,
        available_ram: int | None = None,
        directory_prefix: str | None = None,
        log_level: int = 20,
        log_time: bool = True,
        progress_callback: Progress | None = None,
        *,
        target: str = "127.0.0.1:50051",
        channel: grpc.Channel | None = None,
        token: str | None = None,
        session_id: str = "",
    ) -> None:
        self._channel = channel or connect(target)
        self._owns_channel = channel is None
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._sessions = session_pb2_grpc.SessionServiceStub(self._channel)
        self._raster = raster_pb2_grpc.RasterServiceStub(self._channel)
        self._operations = lro_grpc.OperationsStub(self._channel)
        self._watch = operation_pb2_grpc.OperationWatchServiceStub(self._channel)
        self.progress_callback = progress_callback
        settings = session_pb2.Session(
            process_count=n_processes or 0,
            available_ram_mib=available_ram or 0,
            directory_prefix=directory_prefix or "",
            log_level=_LOG_LEVELS.get(log_level, session_pb2.LOG_LEVEL_INFO),
            log_time=log_time,
        )
        self.session = self._sessions.CreateSession(
            session_pb2.CreateSessionRequest(session=settings, session_id=session_id),
            metadata=self._metadata,
        )

    @property
    def name(self) -> str:
        return self.session.name

    def set(
        self,
        n_processes: int | None = None,
        available_ram: int | None = None,
        log_level: int | None = None,
        log_time: bool | None = None,
    ) -> session_pb2.Session:
        """Change the session's settings (Remotior's `set`); None leaves one as it is."""
        changes = session_pb2.Session(name=self.name)
        paths = []
        if n_processes is not None:
            changes.process_count, paths = n_processes, [*paths, "process_count"]
        if available_ram is not None:
            changes.available_ram_mib, paths = available_ram, [*paths, "available_ram_mib"]
        if log_level is not None:
            changes.log_level = _LOG_LEVELS.get(log_level, session_pb2.LOG_LEVEL_INFO)
            paths.append("log_level")
        if log_time is not None:
            changes.log_time, paths = log_time, [*paths, "log_time"]
        if not paths:
            return self.session
        self.session = self._sessions.UpdateSession(
            session_pb2.UpdateSessionRequest(
                session=changes, update_mask=field_mask_pb2.FieldMask(paths=paths)
            ),
            metadata=self._metadata,
        )
        return self.session

    def log(self) -> list[str]:
        """The session's log messages, oldest first."""
        entries, token = [], ""
        while True:
            page = self._sessions.ListLogEntries(
                session_pb2.ListLogEntriesRequest(parent=self.name, page_token=token),
                metadata=self._metadata,
            )
            entries.extend(e.message for e in page.log_entries)
            if not page.log_entries:
                return entries
            token = page.next_page_token

    def close(self, log_path: str | None = None, *, overwrite_log: bool = False) -> None:
        """Close the session (Remotior's `close`), keeping its log at `log_path` if given.

        An existing file at `log_path` is kept, and the call fails with ALREADY_EXISTS,
        unless `overwrite_log`. When the log cannot be kept the session stays open, and
        so does this object's channel: close again with another path.
        """
        try:
            self._sessions.DeleteSession(
                session_pb2.DeleteSessionRequest(
                    name=self.name, log_path=log_path or "", overwrite_log=overwrite_log
                ),
                metadata=self._metadata,
            )
        except grpc.RpcError:
            if not log_path and self._owns_channel:
                self._channel.close()
            raise
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait(self, operation: lro.Operation) -> lro.Operation:
        """Follow an operation to its end, calling `progress_callback` at each change."""
        for update in self._watch.WatchOperation(
            operation_pb2.WatchOperationRequest(name=operation.name), metadata=self._metadata
        ):
            operation = update
            if self.progress_callback is not None:
                metadata = operation_pb2.OperationMetadata()
                operation.metadata.Unpack(metadata)
                self.progress_callback(metadata)
        return operation

    def cancel(self, operation: lro.Operation) -> None:
        self._operations.CancelOperation(
            lro.CancelOperationRequest(name=operation.name), metadata=self._metadata
        )

    def _run(
        self,
        start: Callable[[], lro.Operation],
        response: Any,
        outcome: Callable[[Any], OutputManager] = lambda r: _saved([r.output_path], r),
    ) -> OutputManager:
        """Start an operation, wait for it and turn its response into the tool's outcome."""
        try:
            operation = self.wait(start())
        except grpc.RpcError as error:
            return OutputManager(check=False, extra=_rpc_error_extra(error))
        if operation.HasField("error"):
            e = operation.error
            return OutputManager(check=False, extra=_error_extra(e.code, e.message, e.details))
        operation.response.Unpack(response)
        return outcome(response)

    def band_calc(
        self,
        input_raster_list: Sequence[str] | None = None,
        output_path: str | None = None,
        expression_string: str | None = None,
        input_name_list: Sequence[str] | None = None,
        output_nodata: float | None = None,
        output_datatype: str | None = None,
        overwrite: bool = False,
        input_bands: Sequence[int] | None = None,
        compression: str | None = None,
    ) -> OutputManager:
        """Map algebra over named rasters (Remotior's `band_calc`)."""
        rasters = list(input_raster_list or [])
        names = list(input_name_list or [f"b{i + 1}" for i in range(len(rasters))])
        bands = list(input_bands or [1] * len(rasters))
        request = raster_pb2.BandCalcRequest(
            session=self.name,
            expression=expression_string or "",
            inputs=[
                raster_pb2.RasterInput(name=n, path=p, band=b)
                for n, p, b in zip(names, rasters, bands, strict=True)
            ],
            output_path=output_path or "",
            overwrite=overwrite,
            output_data_type=_data_type(output_datatype or "float32"),
            output_options=_output_options(compression),
        )
        if output_nodata is not None:
            request.output_nodata = output_nodata
        return self._run(
            lambda: self._raster.BandCalc(request, metadata=self._metadata),
            raster_pb2.BandCalcResponse(),
        )

    def band_sieve(
        self,
        input_bands: Sequence[BandLike] | BandLike,
        size: int,
        output_path: str | None = None,
        connected: bool | None = None,
        overwrite: bool = False,
        prefix: str = "",
        compression: str | None = None,
    ) -> OutputManager:
        """Replace regions smaller than `size` pixels by their largest neighbour
        (Remotior's `band_sieve`; `connected=True` means 8-connected)."""
        request = raster_pb2.SieveRequest(
            session=self.name,
            inputs=_bands(input_bands),
            size=size,
            connectivity=raster_pb2.CONNECTIVITY_8 if connected else raster_pb2.CONNECTIVITY_4,
            output=_tool_output(output_path, prefix, overwrite, compression),
        )
        return self._run(
            lambda: self._raster.Sieve(request, metadata=self._metadata),
            raster_pb2.SieveResponse(),
            _tool_outputs,
        )

    def band_dilation(
        self,
        input_bands: Sequence[BandLike] | BandLike,
        value_list: Sequence[float] | None,
        size: int,
        output_path: str | None = None,
        overwrite: bool = False,
        circular_structure: bool | None = None,
        prefix: str = "",
        filter: str = "value_list",
        compression: str | None = None,
    ) -> OutputManager:
        """Grow the listed values by `size` pixels (Remotior's `band_dilation`);
        `filter="grey"` or `"closing"` runs a grey dilation or closing instead."""
        request = raster_pb2.DilateRequest(
            session=self.name,
            inputs=_bands(input_bands),
            parameters=_morphology(filter, value_list, size, circular_structure),
            output=_tool_output(output_path, prefix, overwrite, compression),
        )
        return self._run(
            lambda: self._raster.Dilate(request, metadata=self._metadata),
            raster_pb2.DilateResponse(),
            _tool_outputs,
        )

    def band_erosion(
        self,
        input_bands: Sequence[BandLike] | BandLike,
        value_list: Sequence[float] | None,
        size: int,
        output_path: str | None = None,
        overwrite: bool = False,
        circular_structure: bool | None = None,
        prefix: str = "",
        filter: str = "value_list",
        compression: str | None = None,
    ) -> OutputManager:
        """Shrink the listed values by `size` steps (Remotior's `band_erosion`);
        `filter="grey"` or `"opening"` runs a grey erosion or opening instead."""
        request = raster_pb2.ErodeRequest(
            session=self.name,
            inputs=_bands(input_bands),
            parameters=_morphology(filter, value_list, size, circular_structure),
            output=_tool_output(output_path, prefix, overwrite, compression),
        )
        return self._run(
            lambda: self._raster.Erode(request, metadata=self._metadata),
            raster_pb2.ErodeResponse(),
            _tool_outputs,
        )

    def download(
        self,
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
        items = [download_item(spec) for spec in download_requests]
        stub = download_pb2_grpc.DownloadServiceStub(self._channel)
        return self._run(
            lambda: stub.StreamDownload(_streamed(batch, items), metadata=self._metadata),
            download_pb2.DownloadResponse(),
            _download_output,
        )
