"""Band neighbor pixels, declared: each pixel's statistic over its window, a square or disk
of a size or a 0/1 structure (Remotior's `band_neighbor_pixels`,
`rsgrpc_kernels.focal`)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from rsgrpc.tools import spec
from rsgrpc.v1 import raster_pb2

# Remotior's statistics (configurations.statistics_list), by their message values.
STATISTICS = {
    raster_pb2.NEIGHBOR_STATISTIC_COUNT: "Count",
    raster_pb2.NEIGHBOR_STATISTIC_MAX: "Max",
    raster_pb2.NEIGHBOR_STATISTIC_MEAN: "Mean",
    raster_pb2.NEIGHBOR_STATISTIC_MEDIAN: "Median",
    raster_pb2.NEIGHBOR_STATISTIC_MIN: "Min",
    raster_pb2.NEIGHBOR_STATISTIC_PERCENTILE: "Percentile",
    raster_pb2.NEIGHBOR_STATISTIC_STANDARD_DEVIATION: "StandardDeviation",
    raster_pb2.NEIGHBOR_STATISTIC_SUM: "Sum",
}
_BY_NAME = {name.lower(): value for value, name in STATISTICS.items()}
# What the kernel takes (its FOCAL_DTYPES; a test keeps the two equal).
NEIGHBOR_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
MAX_SIZE = 256
# The largest structure: as wide as the largest square.
MAX_STRUCTURE_SIDE = 2 * MAX_SIZE + 1
# Remotior's nodata for each type where the input's does not fit the output's.
_TYPE_NODATA = {
    "uint8": 255,
    "int8": -128,
    "uint16": 2**16 - 1,
    "int16": -32768,
    "uint32": 2**32 - 1,
    "int32": -32768,
}
_ROW = re.compile(r"\[([^\[\]]*)\]")
_SEPARATORS = re.compile(r"[,;\s]+")


@dataclass(frozen=True)
class NeighborParameters:
    """A statistic over a window, checked: `structure` holds the window's rows of 0 and 1,
    or is None for Remotior's disk (`circular`) or square of radius `size`."""

    statistic: str
    size: int
    circular: bool
    structure: tuple[tuple[int, ...], ...] | None
    percentile: float | None
    output_dtype: str | None  # None: the input's

    @property
    def halo(self) -> int:
        if self.structure is None:
            return self.size
        return max(len(self.structure) // 2, len(self.structure[0]) // 2)


def parse_structure(text: str, field: str = "structure") -> tuple[tuple[int, ...], ...]:
    """The rows of a structure file as Remotior writes one (a row a line, or bracketed
    rows such as ``[[0, 1, 0], [1, 1, 1], [0, 1, 0]]``), values separated by commas,
    semicolons or spaces; read as numbers, never evaluated."""
    rows = _ROW.findall(text) if "[" in text else text.splitlines()
    if "[" in text and _ROW.sub("", text).strip(" \t\r\n,;[]"):
        raise spec.ParameterError(f"{field} holds text outside its rows", metadata={"field": field})
    values = []
    for number, row in enumerate(rows, 1):
        tokens = [t for t in _SEPARATORS.split(row.strip()) if t]
        if not tokens:
            continue
        parsed = []
        for token in tokens:
            try:
                value = float(token)
            except ValueError:
                raise spec.ParameterError(
                    f"{field} row {number}: {token[:20]!r} is not a number",
                    metadata={"field": field},
                ) from None
            parsed.append(value)
        values.append(parsed)
    return structure_rows(values, field)


def structure_rows(values: list[list[float]], field: str = "structure"):
    """Rows of 0 and 1, all as long, odd in number and length, with at least one 1."""
    metadata = {"field": field}
    if not values:
        raise spec.ParameterError(f"{field} is empty", metadata=metadata)
    widths = {len(row) for row in values}
    if len(widths) > 1:
        raise spec.ParameterError(
            f"{field} has rows of {sorted(widths)} values; all rows must be as long",
            metadata=metadata,
        )
    rows, columns = len(values), widths.pop()
    if rows % 2 == 0 or columns % 2 == 0:
        raise spec.ParameterError(
            f"{field} is {rows}x{columns}; rows and columns must be odd, so that it has a centre",
            metadata=metadata,
        )
    if max(rows, columns) > MAX_STRUCTURE_SIDE:
        raise spec.ParameterError(
            f"{field} is {rows}x{columns}; at most {MAX_STRUCTURE_SIDE} a side",
            metadata=metadata,
        )
    if any(v not in (0, 1) for row in values for v in row):
        raise spec.ParameterError(f"{field} must hold only 0 and 1", metadata=metadata)
    if not any(v for row in values for v in row):
        raise spec.ParameterError(f"{field} must hold at least one 1", metadata=metadata)
    return tuple(tuple(int(v) for v in row) for row in values)


def _parameters(message: raster_pb2.NeighborPixelsParameters, read_text: spec.ReadText):
    if message.statistic not in STATISTICS:
        raise spec.ParameterError(
            "statistic is required"
            if message.statistic == raster_pb2.NEIGHBOR_STATISTIC_UNSPECIFIED
            else f"unknown statistic {message.statistic}",
            metadata={"field": "statistic"},
        )
    statistic = STATISTICS[message.statistic]
    percentile = None
    if statistic == "Percentile":
        if not message.HasField("percentile"):
            raise spec.ParameterError(
                "the Percentile statistic needs a percentile", metadata={"field": "percentile"}
            )
        percentile = message.percentile
        if not 0 <= percentile <= 100:
            raise spec.ParameterError(
                f"percentile must be from 0 to 100, got {percentile:g}",
                metadata={"field": "percentile"},
            )
    window = message.WhichOneof("window")
    structure = None
    if window == "structure":
        given = message.structure
        if given.rows < 1 or given.columns < 1 or len(given.values) != given.rows * given.columns:
            raise spec.ParameterError(
                f"structure of {given.rows}x{given.columns} holds {len(given.values)} values",
                metadata={"field": "structure"},
            )
        values = list(given.values)
        structure = structure_rows(
            [values[r * given.columns : (r + 1) * given.columns] for r in range(given.rows)]
        )
    elif window == "structure_path":
        structure = parse_structure(
            read_text(message.structure_path, "structure path"), "structure file"
        )
    else:
        spec.check_size(message.size, MAX_SIZE)
    if message.output_data_type not in spec.DTYPES_OF_MESSAGES and message.output_data_type:
        raise spec.ParameterError(
            f"unknown output_data_type {message.output_data_type}",
            metadata={"field": "output_data_type"},
        )
    return NeighborParameters(
        statistic=statistic,
        size=message.size,
        circular=message.circular_structure,
        structure=structure,
        percentile=percentile,
        output_dtype=spec.DTYPES_OF_MESSAGES.get(message.output_data_type),
    )


def _memory(p: NeighborParameters, dtype: np.dtype, out_dtype: np.dtype) -> tuple[float, float]:
    """A worker holds the block, its nodata mask and rank codes (int32), the float64
    result and the output with its encoding (Max and Min of a square or disk run the
    grey filter, whose buffers are within that); the encoded tile waits in the job."""
    return dtype.itemsize + 1 + 4 + 8 + 2 * out_dtype.itemsize, out_dtype.itemsize


def _check_band(p: NeighborParameters, dtype: np.dtype, nodata: float | None, where: str):
    spec.check_pixel_type(dtype, nodata, where, "iuf")
    if dtype.name not in NEIGHBOR_DTYPES:
        raise spec.ParameterError(
            f"{where} is {dtype.name}; neighbor pixels takes {', '.join(NEIGHBOR_DTYPES)}"
        )


def _output(p: NeighborParameters, dtype: np.dtype, nodata: float | None):
    """The input's type unless asked; the input's nodata where the output type holds it,
    else the type's Remotior nodata (NaN in floats)."""
    out = p.output_dtype or dtype.name
    if nodata is not None and not math.isnan(nodata) and spec.is_value_of(nodata, out):
        return out, nodata
    return out, _TYPE_NODATA.get(out, math.nan)


def neighbor_block(
    block: np.ndarray,
    p: NeighborParameters,
    interior: spec.Interior,
    nodata: float | None,
    out_dtype: str,
    out_nodata: float | None,
) -> np.ndarray:
    """Runs in a worker: the tile's pixels of the statistic over `block` (read with its
    halo)."""
    from rsgrpc_kernels import focal

    if p.structure is None:
        structure = focal.focal_structure(p.size, circular=p.circular)
    else:
        structure = np.array(p.structure, dtype=bool)
    return focal.focal_statistic(
        block,
        statistic=p.statistic,
        structure=structure,
        percentile=p.percentile,
        nodata=nodata,
        interior=interior,
        out_dtype=out_dtype,
        out_nodata=out_nodata,
    )


def _describe(p: NeighborParameters) -> str:
    if p.structure is not None:
        window = f"a {len(p.structure)}x{len(p.structure[0])} structure"
    else:
        window = f"{'circular' if p.circular else 'square'} size {p.size}"
    percentile = f" {p.percentile:g}" if p.percentile is not None else ""
    return f"{p.statistic}{percentile} over {window}"


def request_parameters(arguments: dict[str, Any]) -> raster_pb2.NeighborPixelsParameters:
    """Remotior's stat_name (any case), size, structure (a 0/1 matrix, or the path of a
    structure file under the data roots), circular_structure, stat_percentile (made an
    integer, as Remotior does) and output_data_type (None: the input's)."""
    name = arguments["stat_name"]
    if not isinstance(name, str) or name.lower() not in _BY_NAME:
        raise spec.ParameterError(
            f"unsupported stat_name {name!r}; use one of {', '.join(STATISTICS.values())}"
        )
    message = raster_pb2.NeighborPixelsParameters(
        statistic=_BY_NAME[name.lower()],
        size=int(arguments["size"]),
        circular_structure=bool(arguments["circular_structure"]),
    )
    if message.statistic == raster_pb2.NEIGHBOR_STATISTIC_PERCENTILE:
        try:
            message.percentile = int(arguments["stat_percentile"])
        except (TypeError, ValueError):
            raise spec.ParameterError(
                f"stat_percentile must be an integer, got {arguments['stat_percentile']!r}"
            ) from None
    structure = arguments["structure"]
    if isinstance(structure, str | os.PathLike):
        message.structure_path = os.fspath(structure)
    elif structure is not None:
        matrix = np.asarray(structure)
        if matrix.ndim != 2 or matrix.dtype.kind not in "biuf":
            raise spec.ParameterError("structure must be a matrix of 0 and 1, or a file path")
        if not np.isin(matrix, (0, 1)).all():
            raise spec.ParameterError("structure must hold only 0 and 1")
        message.structure.CopyFrom(
            raster_pb2.Structure(
                rows=matrix.shape[0],
                columns=matrix.shape[1],
                values=[int(v) for v in matrix.ravel()],
            )
        )
    if arguments["output_data_type"] is not None:
        message.output_data_type = spec.data_type(arguments["output_data_type"])
    return message


NEIGHBOR_PIXELS = spec.RasterTool[NeighborParameters](
    name="band_neighbor_pixels",
    rpc="NeighborPixels",
    command="neighbor-pixels",
    summary="each pixel's --stat over its neighbours within --size pixels or a --structure",
    request_type=raster_pb2.NeighborPixelsRequest,
    response_type=raster_pb2.NeighborPixelsResponse,
    output_type=raster_pb2.NeighborPixelsOutput,
    parameters=_parameters,
    halo=lambda p: p.halo,
    memory=_memory,
    check_band=_check_band,
    output=_output,
    kernel=neighbor_block,
    describe=_describe,
    request_parameters=request_parameters,
    warm=("focal",),
    cli_flags=(
        spec.CliFlag(
            "--stat",
            "stat_name",
            {"required": True, "choices": list(STATISTICS.values()), "type": str},
        ),
        spec.CliFlag("--size", "size", {"type": int, "default": 1}),
        spec.CliFlag(
            "--square",
            "circular_structure",
            {"action": "store_false", "help": "a square window (Remotior's default: a disk)"},
        ),
        spec.CliFlag(
            "--structure",
            "structure",
            {"help": "a structure file under the data root, instead of --size"},
        ),
        spec.CliFlag(
            "--percentile", "stat_percentile", {"type": int, "help": "for --stat Percentile"}
        ),
        spec.CliFlag(
            "--dtype", "output_data_type", {"help": "output data type (default: the input's)"}
        ),
    ),
)
