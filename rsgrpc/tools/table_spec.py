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
from typing import Any, Generic, TypeVar

import numpy as np

from rsgrpc.tools.spec import CliFlag

P = TypeVar("P")


@dataclass(frozen=True)
class TableGrid:
    """What a table knows of the grid its bands were read on: the pixel's width and
    height in map units, and the CRS's unit as Remotior reads it (``metre``, ``degree``
    for a geographic CRS, None without a CRS)."""

    pixel_width: float
    pixel_height: float
    unit: str | None


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
    suffix: str = ".csv"
    cli_flags: tuple[CliFlag, ...] = ()

    @property
    def process(self) -> str:
        """Remotior's name of the process in progress messages: "raster report"."""
        return self.name.replace("_", " ")

    def output_path(self, path: str) -> str:
        """The file a client's path names: `suffix` appended unless it ends with it, as
        Remotior names its tables."""
        return path if path.lower().endswith(self.suffix) else f"{path}{self.suffix}"
