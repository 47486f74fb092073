"""A raster tool declared once: the servicer, the engine, the client and the CLI all read
its `RasterTool`.

A declaration holds what differs from one band tool to another and nothing that is the
same for all: its RPC and messages, how a request's parameters are checked, the halo and
memory its kernel needs per dtype, the kernel that computes a tile in a worker, the
output's data type and nodata, and, for the client and the command line, how Remotior's
arguments become the request's parameters and which flags the command takes. Remotior's
signature of the tool is the entry of the same name in `rsgrpc.client.signatures`.

This package imports only the standard library, NumPy and the generated messages, so
the client reads the declarations without the engine; a kernel imports its
`rsgrpc_kernels` module when it first runs, in a worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from rsgrpc.v1 import raster_pb2

P = TypeVar("P")
# Where a tile lies in the block read with its halo: (rows, columns).
Interior = tuple[slice, slice]
# Reads a small text file under the data roots (a structure, a table): (path, field) -> text.
ReadText = Callable[[str, str], str]

# GDAL's names, as Remotior takes them (any case), and NumPy's.
_DATA_TYPES = {
    "byte": raster_pb2.DATA_TYPE_UINT8,
    **{
        name: getattr(raster_pb2, f"DATA_TYPE_{name.upper()}")
        for name in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
    },
}
# The messages' data types as NumPy names.
DTYPES_OF_MESSAGES = {value: name for name, value in _DATA_TYPES.items() if name != "byte"}


class ParameterError(ValueError):
    """Raised when a tool's parameters cannot run: the server answers INVALID_ARGUMENT,
    the client refuses the call (``check=False``) before sending it."""

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.metadata = dict(metadata or {})


@dataclass(frozen=True)
class CliFlag:
    """A flag of the tool's command and the Remotior argument it gives (argparse's
    keyword arguments in `options`)."""

    flag: str
    argument: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


@dataclass(frozen=True)
class AuxiliaryBand:
    """A second raster a tool reads beside each input band (a mask, zones): the engine
    places it on each band's grid by nearest neighbour, as it places the band, and reads
    it over the same block as the band's tile and halo. `field` names it in errors."""

    path: str
    band: int = 1
    field: str = "auxiliary"


@dataclass(frozen=True)
class AuxiliaryBlock:
    """An auxiliary band's pixels over the block of a band's tile (the same rows and
    columns), and its nodata."""

    pixels: np.ndarray
    nodata: float | None


def no_auxiliary(parameters: Any) -> AuxiliaryBand | None:
    """A tool that reads its bands alone."""
    return None


def any_auxiliary(parameters: Any, dtype: np.dtype, nodata: float | None, where: str) -> None:
    """An auxiliary band of any pixel type."""


@dataclass(frozen=True)
class RasterTool(Generic[P]):
    """One band-in, band-out tool whose output pixel depends on a window of its input.

    Its request has ``session``, ``inputs``, ``parameters``, ``output`` (a
    `ToolOutput`) and ``input_grid`` (an `InputGrid`); its response lists one `output_type` per input (``input``,
    ``output_path``, ``pixels_changed``).

    Server side: ``parameters(message, read_text)`` checks the request's parameters and
    returns the engine's (frozen, picklable) value `P`, raising ParameterError;
    ``halo(p)`` is the pixels each side of a tile the result depends on;
    ``memory(p, dtype, out_dtype)`` the bytes per block pixel a worker holds and per
    tile pixel the result takes, as (worker, result); ``check_band(p, dtype, nodata,
    where)`` refuses a band the tool cannot take; ``output(p, dtype, nodata)`` gives the
    output's data type and nodata; ``kernel(block, p, interior, nodata, out_dtype,
    out_nodata)`` is a module-level function run in the workers that returns the
    tile's pixels; ``describe(p)`` says what runs, for the session's log.
    ``auxiliary(p)`` names a second raster read beside each band (`AuxiliaryBand`), or
    None; ``check_auxiliary(p, dtype, nodata, where)`` refuses one the tool cannot take;
    its pixels reach the kernel as the keyword ``auxiliary`` (an `AuxiliaryBlock`).

    Client side: ``request_parameters(arguments)`` makes the parameters message from
    Remotior's arguments (the mapping the signature binds), raising ParameterError;
    ``cli_flags`` are the command's own flags, each naming the argument it gives.
    """

    name: str  # Remotior's method, the client's: "band_dilation"
    rpc: str  # the RasterService method: "Dilate"
    command: str  # the CLI's command: "dilate"
    summary: str  # what it does, in one line
    request_type: type
    response_type: type
    output_type: type
    parameters: Callable[[Any, ReadText], P]
    halo: Callable[[P], int]
    memory: Callable[[P, np.dtype, np.dtype], tuple[float, float]]
    check_band: Callable[[P, np.dtype, float | None, str], None]
    output: Callable[[P, np.dtype, float | None], tuple[str, float | None]]
    kernel: Callable[..., np.ndarray]
    describe: Callable[[P], str]
    request_parameters: Callable[[dict[str, Any]], Any]
    cli_flags: tuple[CliFlag, ...] = ()
    # The warm cases (`rsgrpc_kernels.warm.WARM_CASES`) that compile what `kernel` calls.
    warm: tuple[str, ...] = ()
    # Remotior's signature takes one `raster_path` (its band 1) and an `output_path` file
    # where a band tool takes `input_bands`: the client and the command send that one input.
    raster_path_input: bool = False
    auxiliary: Callable[[P], AuxiliaryBand | None] = no_auxiliary
    check_auxiliary: Callable[[P, np.dtype, float | None, str], None] = any_auxiliary
    # Its output depends on whole connected patches, across tiles: run by
    # `rsgrpc.engine.label_job` in three passes, `kernel(tile, p, placement, nodata)`
    # labelling one tile in pass 1 (no halo).
    whole_regions: bool = False
    # The engine's output attributes its output message has beside `band_output`'s.
    statistics: tuple[str, ...] = ()

    @property
    def process(self) -> str:
        """Remotior's name of the process in progress messages: "band dilation"."""
        return self.name.replace("_", " ")

    def response(self, outputs: list[Any]) -> Any:
        """The response message of the engine's outputs (`rsgrpc.engine.halo_job`)."""
        return self.response_type(
            outputs=[
                self.output_type(**band_output(o), **{s: getattr(o, s) for s in self.statistics})
                for o in outputs
            ]
        )


def band_output(output: Any) -> dict[str, Any]:
    """The fields every band tool's output message has, from the engine's output: its
    input band, its path and the pixels it changed."""
    band = raster_pb2.RasterBand(path=output.input.path, band=output.input.band)
    return {
        "input": band,
        "output_path": output.output_path,
        "pixels_changed": output.pixels_changed,
    }


def data_type(name: str | None) -> int:
    """A DataType from GDAL's name (``Byte``, ``UInt16``, ``Float32``, ... any case);
    Float32, Remotior's default, when None."""
    if name is None:
        return raster_pb2.DATA_TYPE_FLOAT32
    try:
        return _DATA_TYPES[str(name).lower()]
    except KeyError:
        raise ParameterError(
            f"unsupported output_datatype {name!r}; use Byte, Int8, UInt16, Int16, UInt32, "
            "Int32, Float32 or Float64"
        ) from None


def is_value_of(value: float, dtype: str) -> bool:
    """Whether a pixel of `dtype` can hold `value` (NaN and infinities only in floats;
    in integers, whole numbers in the type's range)."""
    kind = np.dtype(dtype).kind
    if kind == "f":
        return not math.isfinite(value) or abs(value) <= float(np.finfo(dtype).max)
    limits = np.iinfo(dtype)
    return math.isfinite(value) and value == int(value) and limits.min <= value <= limits.max


def check_size(size: int, maximum: int) -> None:
    """A window's radius: from 1 to `maximum` pixels."""
    if not 1 <= size <= maximum:
        raise ParameterError(
            f"size must be from 1 to {maximum} pixels, got {size}", metadata={"field": "size"}
        )


def check_values_of(values, dtype: np.dtype, where: str, field: str) -> None:
    """Refuse values a band's pixels cannot hold: a tool would otherwise match nothing
    with them without a word."""
    strangers = [v for v in values if not is_value_of(v, dtype.name)]
    if strangers:
        raise ParameterError(
            f"{field} holds {', '.join(f'{v:g}' for v in strangers[:5])}, not a value of "
            f"{where}, which is {dtype.name}",
            metadata={"field": field},
        )


def check_pixel_type(dtype: np.dtype, nodata: float | None, where: str, kinds: str) -> None:
    """A band whose pixels are of one of `kinds` (NumPy's kind letters) and whose integer
    nodata is a value of its type."""
    if dtype.kind not in kinds:
        names = {"iu": "integer", "iuf": "integer or float"}.get(kinds, kinds)
        raise ParameterError(f"{where} is {dtype.name}; {names} bands only")
    if dtype.kind in "iu" and nodata is not None and not is_value_of(nodata, dtype.name):
        raise ParameterError(f"{where} has nodata {nodata}, not a value of {dtype.name}")
