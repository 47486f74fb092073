"""A table tool declared once: the servicer, the engine, the client and the CLI all read
its `TableTool`.

A table tool reads bands tile by tile and reduces them to one table (a row per value, per
class, per combination), written as a CSV file and returned in its response. What differs
from one such tool to another is declared here: its RPC and messages, how a request's
parameters are checked, the memory a tile and a partial table take, the kernel that
makes a tile's partial table in a worker, how partial tables merge (exactly, in any
order), how the merged table is finished, written and answered, and, for the client
and the command line, how Remotior's arguments become the request's parameters.
Remotior's signature of the tool is the entry of the same name in
`rsgrpc.client.signatures`.

Like `rsgrpc.tools.spec`, this imports only the standard library, NumPy and the
generated messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Generic, TypeVar

import numpy as np

from rsgrpc.tools.spec import CliFlag, ParameterError

P = TypeVar("P")


@dataclass(frozen=True)
class TableGrid:
    """What a table knows of the grid its bands were read on: the pixel's width and
    height in map units, and the CRS's unit as Remotior reads it (``metre``, ``degree``
    for a geographic CRS, None without a CRS)."""

    pixel_width: float
    pixel_height: float
    unit: str | None
    # The input bands' paths, as the client named them, in order.
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableRaster(Generic[P]):
    """A raster that a table tool computes from its merged table, in a second pass over
    the tiles, written beside the table as a GeoTIFF (or a VRT and its GeoTIFF).

    ``wanted(p)`` is whether the request asks for it; ``output(p)`` its data type and
    nodata; ``memory(p, dtypes)`` the bytes a worker holds per tile pixel, beside the
    tile's output and its encoding; ``index(p, merged)`` what the workers need of the
    merged table (picklable: it goes with each tile); ``kernel(blocks, p, index,
    nodatas, out_dtype, out_nodata)`` is a module-level function run in the workers that
    returns the tile's pixels.

    ``paths(p, path, bands)``, where the tool writes several rasters from the one pass,
    names them from the client's path and the number of input bands; its kernel then
    returns their pixels stacked on a first axis, and ``memory`` counts them all. None:
    one raster, at the client's path.
    """

    wanted: Callable[[P], bool]
    output: Callable[[P], tuple[str, float | None]]
    memory: Callable[[P, Sequence[np.dtype]], float]
    index: Callable[[P, Any], Any]
    kernel: Callable[..., np.ndarray]
    paths: Callable[[P, str, int], tuple[str, ...]] | None = None


def _always(parameters: Any) -> bool:
    return True


def _one_pass(parameters: Any) -> int:
    return 1


def number_argument(arguments: dict[str, Any], name: str) -> float | None:
    """Remotior's argument `name` as a float, None where it is None."""
    value = arguments[name]
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a number, got {value!r}") from None


def extent_flag(verb: str) -> CliFlag:
    """The command's flag of Remotior's `extent_list`: `verb` only the pixels within it."""
    return CliFlag(
        "--extent",
        "extent_list",
        {
            "type": float,
            "nargs": 4,
            "metavar": ("LEFT", "TOP", "RIGHT", "BOTTOM"),
            "help": f"{verb} only the pixels within this extent",
        },
    )


def _request_inputs(request: Any) -> Sequence[Any]:
    return request.inputs


def _no_request_fields(arguments: dict[str, Any]) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class TableTool(Generic[P]):
    """A tool whose result is a table reduced over the tiles of its input bands.

    Its request has ``session``, ``inputs`` (from `inputs[0]` to `inputs[1]` bands, read
    on one grid), ``parameters``, ``output`` (a `TableOutput`) and ``input_grid`` (an
    `InputGrid`).

    Server side: ``parameters(message)`` checks the request's parameters and returns the
    engine's (frozen, picklable) value `P`, raising ParameterError; ``check_band(p,
    dtype, nodata, where)`` refuses a band the tool cannot take; ``memory(p, dtypes)``
    gives, in bytes, what a worker holds per tile pixel, what a tile's partial table
    takes at most per tile pixel, and what the merged table takes per row, as (worker,
    partial, row); ``kernel(blocks, p, nodatas)`` is a module-level function run in the
    workers that returns a tile's partial table; ``merge(partials)`` merges partial
    tables into one, exactly and in any order; ``rows(partial)`` counts a partial's
    rows, and more than ``max_rows`` in the merged table is refused;
    ``table(p, merged, grid)`` finishes the table (a `TableGrid`), ``csv(table)`` is
    the file's text and ``response(table, output_path, inputs)`` the response message;
    ``describe(p)`` says what runs, for the session's log.

    Client side: ``request_parameters(arguments)`` makes the parameters message from
    Remotior's arguments (the mapping the signature binds), raising ParameterError;
    `input_argument` names Remotior's argument that holds the bands; ``cli_flags`` are
    the command's own flags, each naming the argument it gives.
    """

    name: str  # Remotior's method, the client's: "raster_report"
    rpc: str  # the RasterService method: "RasterReport"
    command: str  # the CLI's command: "raster-report"
    summary: str  # what it does, in one line
    request_type: type
    response_type: type
    parameters: Callable[[Any], P]
    check_band: Callable[[P, np.dtype, float | None, str], None]
    memory: Callable[[P, Sequence[np.dtype]], tuple[float, float, float]]
    kernel: Callable[..., Any]
    merge: Callable[[list[Any]], Any]
    rows: Callable[[Any], int]
    max_rows: int
    table: Callable[[P, Any, TableGrid], Any]
    csv: Callable[[Any], str]
    response: Callable[[Any, str, Sequence[Any]], Any]
    describe: Callable[[P], str]
    request_parameters: Callable[[dict[str, Any]], Any]
    input_argument: str
    inputs: tuple[int, int] = (1, 1)
    # Remotior's argument that names the output.
    output_argument: str = "output_path"
    # The bands a request names, in the order the kernel takes them (its `inputs`, or
    # bands of other roles too, such as zones), raising ParameterError.
    request_bands: Callable[[Any], Sequence[Any]] = _request_inputs
    # The client's request fields beside session, inputs, parameters, output and
    # input_grid, from Remotior's arguments, raising ParameterError.
    request_fields: Callable[[dict[str, Any]], dict[str, Any]] = _no_request_fields
    # Every band is read onto the first band's pixel size and lines, whatever the
    # request's input_grid says (Remotior's `multiple_resolution=False`).
    first_input_grid: bool = False
    suffix: str = ".csv"
    cli_flags: tuple[CliFlag, ...] = ()
    # A raster computed from the merged table (`TableRaster`): the client's path names
    # the raster, and the table is beside it; `response` then also takes the raster's
    # path ("" when the request asks for none).
    raster: TableRaster[P] | None = None
    # Whether the request asks for the table's file; the response holds the table anyway.
    table_file: Callable[[P], bool] = _always
    # The client's outcome of a response and Remotior's arguments: its paths and its
    # `extra` (None: the file alone).
    outcome: Callable[[Any, dict[str, Any]], tuple[list[str], dict[str, Any]]] | None = None
    # Repeated reduce passes, for an iterative method (k-means): after each pass over the
    # tiles, ``next_pass(p, merged)`` gives the parameters made from that pass's merged
    # table and whether another pass runs with them; ``passes(p)`` bounds the passes. The
    # table (from the last pass's merged table) and the raster take the last parameters.
    next_pass: Callable[[P, Any], tuple[P, bool]] | None = None
    passes: Callable[[P], int] = _one_pass
    # Whether the kernel also takes the tile it reads (``tile=``, with its ``row`` and
    # ``col`` in the grid), for a table that depends on where pixels are.
    kernel_tile: bool = False
    # The warm cases (`rsgrpc_kernels.warm.WARM_CASES`) that compile what its kernels call.
    warm: tuple[str, ...] = ()

    @property
    def process(self) -> str:
        """Remotior's name of the process in progress messages: "raster report"."""
        return self.name.replace("_", " ")

    def output_path(self, path: str) -> str:
        """The file a client's path names: `suffix` appended unless it ends with it, as
        Remotior names its tables; with a raster, the raster's path with `suffix` for its
        extension."""
        if self.raster is not None:
            return str(PurePosixPath(path).with_suffix(self.suffix))
        return path if path.lower().endswith(self.suffix) else f"{path}{self.suffix}"
