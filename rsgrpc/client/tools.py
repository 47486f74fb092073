"""The raster tools, with Remotior's signatures (`rsgrpc.client.signatures`).

Each tool binds its call against the table, refuses what the server cannot do yet (with
``check=False`` and the reason, before anything is sent), builds its request and follows
the operation. Re-running into existing outputs does what Remotior's tool does: band calc
replaces its output, and the band tools replace the outputs they write in a directory.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from rsgrpc.client.output import GrpcResult, OutputManager
from rsgrpc.client.signatures import (
    BAND_CALC,
    BAND_SIEVE,
    SIGNATURES,
    MethodSpec,
    remotior_method,
)
from rsgrpc.tools import RASTER_TOOLS, TABLE_TOOLS, spectral_distance
from rsgrpc.tools.spec import ParameterError, RasterTool, data_type
from rsgrpc.tools.table_spec import TableTool
from rsgrpc.v1 import bandset_pb2, raster_pb2

if TYPE_CHECKING:
    from rsgrpc.client.session import Session

# Remotior's nodata default, -32768, does not fit these types: its constants for them.
_UNSIGNED_NODATA = {
    raster_pb2.DATA_TYPE_UINT8: 255,
    raster_pb2.DATA_TYPE_INT8: -128,
    raster_pb2.DATA_TYPE_UINT16: 2**16 - 1,
    raster_pb2.DATA_TYPE_UINT32: 2**32 - 1,
}
_TIFF_SUFFIXES = (".tif", ".tiff")
# The arguments that name files, as the script's machine names them (`PathMap`).
_PATH_ARGUMENTS = (
    "input_raster_list",
    "input_bands",
    "input_bandsets",
    "input_mask",
    "output_path",
    "extent_raster",
    "align_raster",
    "structure",
    "raster_path",
    "reference_path",
    "csv_path",
)


class Refusal(ParameterError):
    """Arguments the server cannot take: the tool returns ``check=False`` with the reason
    (as a declared tool's ParameterError)."""


def _tool(spec: MethodSpec) -> Callable[[Callable[..., OutputManager]], Callable[..., Any]]:
    """`remotior_method`, then the table's refusals and the tool's own, as failed outcomes."""

    def decorate(implementation: Callable[..., OutputManager]) -> Callable[..., Any]:
        @functools.wraps(implementation)
        def checked(self: Session, arguments: dict[str, Any]) -> OutputManager:
            try:
                refusal = spec.refusal(arguments)
                if refusal:
                    raise Refusal(refusal)
                for name in _PATH_ARGUMENTS:
                    if name in arguments:
                        arguments[name] = self.path_map.paths_to_server(arguments[name])
                return self._in_client_terms(implementation(self, arguments))
            except ParameterError as error:
                result = GrpcResult(code="INVALID_ARGUMENT", message=str(error))
                output = OutputManager(check=False, extra={"message": str(error)}, grpc=result)
                if hasattr(self.messages_callback, "error"):
                    self.messages_callback.error(str(error))
                return output

        return remotior_method(spec)(checked)

    return decorate


# Remotior's any_nodata_mask: True, False (its default) and None.
_NODATA_MASKS = {
    True: raster_pb2.BAND_CALC_NODATA_MASK_ANY,
    False: raster_pb2.BAND_CALC_NODATA_MASK_ALL,
    None: raster_pb2.BAND_CALC_NODATA_MASK_NONE,
}


def _calc_options(request: raster_pb2.BandCalcRequest, a: dict[str, Any]) -> None:
    """Remotior's band calc options into the request: `calc_datatype` (Float32 when None;
    GDAL or numpy names), `any_nodata_mask`, `input_nodata_as_value`,
    `use_value_as_nodata`, `use_scale` and `use_offset`."""
    name = a["calc_datatype"]
    name = getattr(name, "__name__", name)  # a numpy type, np.float32
    try:
        calc = data_type(None if name is None else str(name))
    except ParameterError:
        calc = None
    if calc not in (raster_pb2.DATA_TYPE_FLOAT32, raster_pb2.DATA_TYPE_FLOAT64):
        raise Refusal(f"unsupported calc_datatype {a['calc_datatype']!r}; use Float32 or Float64")
    request.calc_data_type = calc
    mask = a["any_nodata_mask"]
    if mask not in _NODATA_MASKS:
        raise Refusal(f"any_nodata_mask must be True, False or None, got {mask!r}")
    request.nodata_mask = _NODATA_MASKS[None if mask is None else bool(mask)]
    request.input_nodata_as_value = bool(a["input_nodata_as_value"])
    for field, argument in (
        ("value_as_nodata", "use_value_as_nodata"),
        ("output_scale", "use_scale"),
        ("output_offset", "use_offset"),
    ):
        if a[argument] is not None:
            setattr(request, field, float(a[argument]))


def _grid_options(request: raster_pb2.BandCalcRequest, a: dict[str, Any]) -> None:
    """Remotior's band calc grid options into the request: `extent_intersection` (True,
    its default, the inputs' intersection; otherwise their union, as Remotior's test of
    it), `extent_list` [left, top, right, bottom], `extent_raster`, `align_raster` and
    `xy_resolution_list` [x, y] (either may be None: the inputs' finest)."""
    request.extent_union = not a["extent_intersection"]
    if a["extent_list"] is not None:
        request.extent.CopyFrom(_extent(a["extent_list"]))
    for field, argument in (
        ("extent_raster_path", "extent_raster"),
        ("align_raster_path", "align_raster"),
    ):
        if a[argument] is not None:
            setattr(request, field, str(a[argument]))
    resolution = a["xy_resolution_list"]
    if resolution is not None:
        sizes = list(resolution)
        if len(sizes) != 2:
            raise Refusal(f"xy_resolution_list must be [x, y], got {resolution!r}")
        for field, size in zip(("pixel_size_x", "pixel_size_y"), sizes, strict=True):
            if size is not None:
                setattr(request, field, float(size))


def _extent(extent: Any) -> bandset_pb2.Extent:
    """Remotior's `extent_list` [left, top, right, bottom] as an Extent."""
    values = list(extent)
    if len(values) != 4:
        raise Refusal(f"extent_list must be [left, top, right, bottom], got {extent!r}")
    left, top, right, bottom = (float(v) for v in values)
    return bandset_pb2.Extent(left=left, top=top, right=right, bottom=bottom)


def _input_grid(
    a: dict[str, Any], first: raster_pb2.RasterBand, inputs: list[raster_pb2.RasterBand]
) -> raster_pb2.InputGrid:
    """A band tool's `extent_list` and `multiple_resolution` (only True keeps each
    input's pixels, as Remotior tests it) as the request's InputGrid; `first`, the call's
    first band, places the inputs of a request that starts with another."""
    # A tool without `multiple_resolution` (band_mask) keeps each input's pixels.
    multiple_resolution = a.get("multiple_resolution", True)
    grid = raster_pb2.InputGrid(first_input_resolution=multiple_resolution is not True)
    if a["extent_list"] is not None:
        grid.extent.CopyFrom(_extent(a["extent_list"]))
    if inputs[0] != first:
        grid.reference.CopyFrom(first)
    return grid


def output_options(compression: str | None) -> raster_pb2.OutputOptions:
    if not compression:
        return raster_pb2.OutputOptions()
    try:
        codec = raster_pb2.Compression.Value(f"COMPRESSION_{compression.upper()}")
    except ValueError:
        raise Refusal(f"unsupported compression {compression!r}") from None
    return raster_pb2.OutputOptions(compression=codec)


def tiff_path(path: str) -> str:
    """Remotior's output name: a .tif, .tiff or .vrt (a virtual output) path as it is,
    any other extension (or none) replaced by .tif."""
    if path.lower().endswith((*_TIFF_SUFFIXES, ".vrt")):
        return path
    return str(PurePosixPath(path).with_suffix(".tif"))


def _required_output(output_path: Any) -> None:
    if output_path is None or output_path == "" or output_path == []:
        raise Refusal(
            "output_path is required: the server writes under its data roots, not to a "
            "temporary directory the script could read"
        )


def input_bands(value: Any, session: Session | None = None) -> list[raster_pb2.RasterBand]:
    """Remotior's `input_bands` as the bands to read: a path or a list of paths (band 1
    each), or of (path, band) pairs; a BandSet; or a band set number of the session's
    catalog."""
    import grpc

    from rsgrpc.client.bandsets import BandSet

    if isinstance(value, int) and not isinstance(value, bool):
        if session is None:
            raise Refusal(f"input_bands {value}: a band set number needs the session's catalog")
        try:
            found = session.bandset_catalog.get_bandset(value)
        except grpc.RpcError as error:
            raise Refusal(f"input_bands: band set {value}: {error.details()}") from None
        if found is None:
            raise Refusal(f"input_bands: band set {value} is not in the session's catalog")
        value = found
    if isinstance(value, BandSet):
        if not value.bands:
            which = f"band set {value.number}" if value.catalog else "the BandSet"
            raise Refusal(f"input_bands: {which} has no bands")
        return [raster_pb2.RasterBand(path=b.data_path, band=b.raster_band) for b in value.bands]
    if isinstance(value, str) or (isinstance(value, tuple) and not _is_band_list(value)):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise Refusal(
            f"input_bands must be a path, a list of paths, a BandSet or a band set number, "
            f"got {value!r}"
        )
    bands = []
    for item in value:
        if isinstance(item, str):
            bands.append(raster_pb2.RasterBand(path=item, band=1))
        elif isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[1], int):
            bands.append(raster_pb2.RasterBand(path=str(item[0]), band=item[1]))
        else:
            raise Refusal(f"input_bands holds {item!r}: give paths or (path, band) pairs")
    return bands


def with_bandset_box(a: dict[str, Any], field: str, session: Session) -> dict[str, Any]:
    """The arguments, with the box of a band set given as `field` (a BandSet, or a number
    of the session's catalog) as their `extent_list`: Remotior's band tools clip a band
    set's bands to its `box_coordinate_list`, in the place of the tool's `extent_list`."""
    from rsgrpc.client.bandsets import BandSet

    value = a[field]
    box = None
    if isinstance(value, BandSet):
        box = value.box_coordinate_list
    elif isinstance(value, int) and not isinstance(value, bool):
        box = session.bandset_catalog.get_box_coordinate_list(value)
    return a if box is None else {**a, "extent_list": box}


def _bandset_number(value: Any, field: str, session: Session | None = None) -> int:
    """A band set of the session's catalog as its number: a number, or (with `session`)
    one of its BandSets; 0 for None."""
    from rsgrpc.client.bandsets import BandSet

    if value is None:
        return 0
    if isinstance(value, BandSet) and session is not None:
        if value.catalog is not None and value.catalog is not session.bandset_catalog:
            raise Refusal(f"{field}: band set {value.number} is of another session's catalog")
        return value.number
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    kinds = "a BandSet or a band set number of the session's catalog" if session else "a number"
    raise Refusal(f"{field} must be {kinds} (from 1), got {value!r}")


def _inline_bandset(value: Any, session: Session) -> Any:
    """A BandSet outside the catalog (``rs.bandset.create``) as band calc sends it, in the
    request (never added to the catalog); None for any other `input_bands`."""
    from rsgrpc.client.bandsets import BandSet, given_bandset

    if not isinstance(value, BandSet) or value.catalog is not None:
        return None
    if value._session is not None and value._session is not session:
        raise Refusal("input_bands: this BandSet was made by another session")
    if not value.bands:
        raise Refusal("input_bands: the BandSet has no bands")
    return given_bandset(value.message)


def _point_extent(point: Any, input_bands: Any, session: Session) -> bandset_pb2.Extent:
    """Remotior's `point_coordinates` [x, y]: the extent of the pixel of the input band
    set's first band that holds the point, found as Remotior finds it."""
    from rsgrpc.client.bandsets import BandSet

    values = list(point)
    if len(values) != 2:
        raise Refusal(f"point_coordinates must be [x, y], got {point!r}")
    x, y = (float(v) for v in values)
    bandset = input_bands
    if not isinstance(bandset, BandSet):
        bandset = session.bandset_catalog.get_bandset(_bandset_number(bandset, "input_bands"))
    if bandset is None or not bandset.bands:
        raise Refusal("point_coordinates: the input band set has no bands")
    band = bandset.bands[0]
    left = band.left + int((x - band.left) / band.x_size) * band.x_size
    top = band.top - int((band.top - y) / band.y_size) * band.y_size
    return bandset_pb2.Extent(
        left=left, top=top, right=left + band.x_size, bottom=top - band.y_size
    )


def _is_band_list(value: tuple) -> bool:
    """Whether a tuple lists bands rather than being one (path, band) pair."""
    return not (len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int))


def _targets(
    bands: list[raster_pb2.RasterBand], a: dict[str, Any]
) -> list[tuple[list[raster_pb2.RasterBand], raster_pb2.ToolOutput]]:
    """The requests a band tool sends, as (inputs, output): one for a directory, one per
    input for a list of paths (the server takes one output path per request)."""
    _required_output(a["output_path"])
    options = output_options(a["compression"])
    output_path = a["output_path"]
    if isinstance(output_path, str):
        target = raster_pb2.ToolOutput(
            path=output_path,
            prefix=a["prefix"] or "",
            overwrite=True,
            options=options,
            virtual_output=bool(a["virtual_output"]),
        )
        return [(bands, target)]
    paths = list(output_path)
    if len(paths) != len(bands):
        raise Refusal(f"output_path lists {len(paths)} paths for {len(bands)} input bands")
    return [
        (
            [band],
            raster_pb2.ToolOutput(
                path=tiff_path(str(path)),
                overwrite=bool(a["overwrite"]),
                options=options,
                virtual_output=bool(a["virtual_output"]),
            ),
        )
        for band, path in zip(bands, paths, strict=True)
    ]


def _is_band_calc_script(expression: str) -> bool:
    """Whether band calc's expression is a script: several calculations, a comment line,
    or an output named with '@' (whose `output_path` may then be a folder)."""
    lines = [line.strip() for line in expression.splitlines() if line.strip()]
    return len(lines) > 1 or any(line.startswith("#") or "@" in line for line in lines)


def _band_calc_paths(response: raster_pb2.BandCalcResponse) -> list[str]:
    """Every calculation's output, in the order of the lines, as Remotior lists them."""
    if response.outputs:
        return [o.output_path for o in response.outputs]
    return [response.output_path]


class RasterTools:
    """Remotior's raster tools that the server runs."""

    def _band_tool(
        self: Session,
        process: str,
        a: dict[str, Any],
        request: Callable[[list[raster_pb2.RasterBand], raster_pb2.ToolOutput], Any],
        rpc: Callable[..., Any],
        response_type: type,
    ) -> OutputManager:
        """Send a band tool's requests in turn, each input placed as Remotior places it
        (`_input_grid`); its outcome lists every output, and `grpc.response` holds them
        all in one response message."""
        merged = response_type()
        bands = input_bands(a["input_bands"], self)
        a = with_bandset_box(a, "input_bands", self)
        for i, (inputs, target) in enumerate(_targets(bands, a)):
            message = request(inputs, target)
            message.input_grid.CopyFrom(_input_grid(a, bands[0], inputs))
            output = self._run(
                process,
                lambda message=message: rpc(message, metadata=self._metadata),
                response_type(),
                lambda response: OutputManager(grpc=GrpcResult(response=response)),
                announce=bool(a["progress_message"]) and i == 0,
            )
            if not output.check:
                return output
            merged.outputs.extend(output.grpc.response.outputs)
        return OutputManager(
            paths=[o.output_path for o in merged.outputs], grpc=GrpcResult(response=merged)
        )

    @_tool(BAND_CALC)
    def band_calc(self: Session, a: dict[str, Any]) -> OutputManager:
        """Map algebra over named rasters (Remotior's `band_calc`): `input_raster_list`
        holds paths named by `input_name_list`, or [path, name] pairs; `raster_bands`
        picks each raster's band (1 by default). An existing output is replaced, as
        Remotior replaces it, unless ``overwrite=False``."""
        _required_output(a["output_path"])
        rasters = list(a["input_raster_list"] or [])
        names = list(a["input_name_list"] or [])
        bands = list(a["raster_bands"] or [1] * len(rasters))
        if len(bands) != len(rasters):
            raise Refusal(f"raster_bands lists {len(bands)} bands for {len(rasters)} rasters")
        inputs = []
        for i, (raster, band) in enumerate(zip(rasters, bands, strict=True)):
            if isinstance(raster, list | tuple):
                path, name = raster[0], raster[1]
            elif i < len(names):
                path, name = raster, names[i]
            else:
                raise Refusal(
                    f"input {raster!r} has no name: give input_name_list, or [path, name] pairs"
                )
            inputs.append(raster_pb2.RasterInput(name=str(name), path=str(path), band=band))
        expression = str(a["expression_string"])
        output_path = str(a["output_path"])
        if not (_is_band_calc_script(expression) and not PurePosixPath(output_path).suffix):
            output_path = tiff_path(output_path)  # else a script's folder, as it is
        request = raster_pb2.BandCalcRequest(
            session=self.name,
            expression=expression,
            inputs=inputs,
            output_path=output_path,
            overwrite=bool(a["overwrite"]),
            output_data_type=data_type(a["output_datatype"]),
            output_options=output_options(a["compression"]),
        )
        if a["output_nodata"] is not None:
            request.output_nodata = a["output_nodata"]
        elif request.output_data_type in _UNSIGNED_NODATA:
            request.output_nodata = _UNSIGNED_NODATA[request.output_data_type]
        inline = _inline_bandset(a["input_bands"], self)
        if inline is not None:  # the band set "b1", "bandset#b1" and "#NIR#" read, as Remotior
            request.inline_bandset.CopyFrom(inline)
        else:
            request.bandset_number = _bandset_number(a["bandset_number"], "bandset_number")
            if a["input_bands"] is not None:  # Remotior's band set read as "b1", "b2", ...
                request.input_bandset = _bandset_number(a["input_bands"], "input_bands", self)
        _calc_options(request, a)
        _grid_options(request, a)
        if a["point_coordinates"] is not None and a["input_bands"] is not None:
            point = _point_extent(a["point_coordinates"], a["input_bands"], self)
            request.extent.CopyFrom(point)
        return self._run(
            "band calc",
            lambda: self._raster.BandCalc(request, metadata=self._metadata),
            raster_pb2.BandCalcResponse(),
            lambda response: OutputManager(
                paths=_band_calc_paths(response), grpc=GrpcResult(response=response)
            ),
            announce=bool(a["progress_message"]),
        )

    @_tool(BAND_SIEVE)
    def band_sieve(self: Session, a: dict[str, Any]) -> OutputManager:
        """Replace regions smaller than `size` pixels by their largest neighbour
        (Remotior's `band_sieve`; `connected=True` means 8-connected)."""
        connectivity = raster_pb2.CONNECTIVITY_8 if a["connected"] else raster_pb2.CONNECTIVITY_4
        return self._band_tool(
            "band sieve",
            a,
            lambda inputs, target: raster_pb2.SieveRequest(
                session=self.name,
                inputs=inputs,
                size=a["size"],
                connectivity=connectivity,
                output=target,
            ),
            self._raster.Sieve,
            raster_pb2.SieveResponse,
        )

    @_tool(SIGNATURES[spectral_distance.NAME])
    def band_spectral_distance(self: Session, a: dict[str, Any]) -> OutputManager:
        """The per-pixel Euclidean distance or spectral angle between two band sets
        (Remotior's `band_spectral_distance`), or 1 where it exceeds `threshold`."""
        parameters = spectral_distance.request_parameters(a)
        first, second = spectral_distance.input_bandsets(a["input_bandsets"])
        _required_output(a["output_path"])
        request = raster_pb2.BandSpectralDistanceRequest(
            session=self.name,
            first_inputs=input_bands(first, self),
            second_inputs=input_bands(second, self),
            parameters=parameters,
            output_path=tiff_path(str(a["output_path"])),
            overwrite=bool(a["overwrite"]),
            output_options=output_options(a["compression"]),
            virtual_output=bool(a["virtual_output"]),
        )
        return self._run(
            spectral_distance.NAME.replace("_", " "),
            lambda: self._raster.BandSpectralDistance(request, metadata=self._metadata),
            raster_pb2.BandSpectralDistanceResponse(),
            lambda response: OutputManager(
                paths=[response.output_path], grpc=GrpcResult(response=response)
            ),
            announce=bool(a["progress_message"]),
        )


def _raster_path_arguments(a: dict[str, Any]) -> dict[str, Any]:
    """A `raster_path` tool's arguments as a band tool's: band 1 of the raster, written to
    the file `output_path` (any extension but .tif, .tiff or .vrt becoming .tif; an
    existing file replaced only with overwrite=True), as Remotior writes it."""
    if not isinstance(a["raster_path"], str | os.PathLike):
        raise Refusal(f"raster_path must be a path, got {a['raster_path']!r}")
    output_path = a["output_path"]
    return {
        **a,
        "input_bands": [os.fspath(a["raster_path"])],
        "output_path": None if output_path is None else [os.fspath(output_path)],
        "prefix": "",
        "multiple_resolution": True,
    }


def _declared_method(tool: RasterTool) -> Callable[..., Any]:
    """The method of a declared tool (`rsgrpc.tools`), with Remotior's signature of the
    same name: its parameters from Remotior's arguments, then one request per output
    target."""

    def method(self: Session, a: dict[str, Any]) -> OutputManager:
        parameters = tool.request_parameters(a)
        if tool.raster_path_input:
            a = _raster_path_arguments(a)
        return self._band_tool(
            tool.process,
            a,
            lambda inputs, target: tool.request_type(
                session=self.name, inputs=inputs, parameters=parameters, output=target
            ),
            getattr(self._raster, tool.rpc),
            tool.response_type,
        )

    method.__name__ = tool.name
    method.__qualname__ = f"RasterTools.{tool.name}"
    method.__doc__ = f"Remotior's `{tool.name}`: {tool.summary}."
    return _tool(SIGNATURES[tool.name])(method)


for _declared in RASTER_TOOLS:
    setattr(RasterTools, _declared.name, _declared_method(_declared))


def _table_outcome(tool: TableTool, response: Any, a: dict[str, Any]) -> OutputManager:
    """A table tool's outcome: its file, or the tool's `outcome` (paths and extra)."""
    if tool.outcome is None:
        return OutputManager(paths=[response.output_path], grpc=GrpcResult(response=response))
    paths, extra = tool.outcome(response, a)
    return OutputManager(paths=paths, extra=extra, grpc=GrpcResult(response=response))


def _declared_table_method(tool: TableTool) -> Callable[..., Any]:
    """The method of a declared table tool (`rsgrpc.tools.TABLE_TOOLS`), with Remotior's
    signature of the same name: one request, its file replaced as Remotior replaces it
    (a tool with a raster names the raster, replaced only with Remotior's `overwrite`);
    the outcome's path is the file, or the tool's `outcome`, and `grpc.response` holds
    the table."""

    def method(self: Session, a: dict[str, Any]) -> OutputManager:
        parameters = tool.request_parameters(a)
        path = a[tool.output_argument]
        _required_output(path)
        if tool.raster is None:
            output = raster_pb2.TableOutput(path=str(path), overwrite=True)
        else:
            output = raster_pb2.RasterTableOutput(
                path=tiff_path(str(path)), overwrite=bool(a["overwrite"])
            )
        grid = raster_pb2.InputGrid()
        a = with_bandset_box(a, tool.input_argument, self)
        if a.get("extent_list") is not None:
            grid.extent.CopyFrom(_extent(a["extent_list"]))
        request = tool.request_type(
            session=self.name,
            inputs=input_bands(a[tool.input_argument], self),
            parameters=parameters,
            output=output,
            input_grid=grid,
            **tool.request_fields(a),
        )
        return self._run(
            tool.process,
            lambda: getattr(self._raster, tool.rpc)(request, metadata=self._metadata),
            tool.response_type(),
            lambda response: _table_outcome(
                tool, response, {**a, tool.output_argument: output.path}
            ),
            announce=bool(a["progress_message"]),
        )

    method.__name__ = tool.name
    method.__qualname__ = f"RasterTools.{tool.name}"
    method.__doc__ = f"Remotior's `{tool.name}`: {tool.summary}."
    return _tool(SIGNATURES[tool.name])(method)


for _declared_table in TABLE_TOOLS:
    setattr(RasterTools, _declared_table.name, _declared_table_method(_declared_table))
