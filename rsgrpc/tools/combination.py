"""Band combination, declared: a code for each combination of class values across integer
bands, as a raster of the codes and the table of combinations with their pixels and area
(Remotior's `band_combination`, `rsgrpc_kernels.combination`).

Codes number the combinations from 1 in increasing order of their values, the first
band's value first (the order of `np.unique(..., axis=0)`), whatever the tiling.
Remotior ranks them by a weighted sum of the values whose weights it tries until the
sums are distinct, at random after two attempts, so its order is not defined in
general; the combinations, their pixels and areas are the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from rsgrpc.tools import spec
from rsgrpc.tools.report import area_available, remotior_csv
from rsgrpc.tools.table_spec import (
    TableGrid,
    TableRaster,
    TableTool,
    extent_flag,
    number_argument,
)
from rsgrpc.v1 import raster_pb2

# Combinations a table may hold: each row travels in one response message (about 8 bytes
# per input value and 20 more), and the table's index goes to the workers with each
# tile of the raster.
MAX_COMBINATIONS = 1 << 16
MAX_INPUTS = 16
# Remotior's codes: Int32, with its Int32 nodata.
OUTPUT_DTYPE = "int32"
OUTPUT_NODATA = 2**31 - 1
# Remotior's default field separator of the table file.
DEFAULT_SEPARATOR = "\t"
# Remotior names a column by the first characters of its input's name.
_NAME_LENGTH = 16
_MAX_NAME_LENGTH = 64


@dataclass(frozen=True)
class CombinationParameters:
    """A combination's extra nodata value (Remotior's `nodata_value`, or None), whether it
    writes the raster and the table's file, the table's column names (Remotior's
    `column_name_list`, for the first inputs) and the file's field separator."""

    nodata_value: float | None
    raster: bool
    table_file: bool
    column_names: tuple[str, ...]
    separator: str


@dataclass(frozen=True)
class CombinationTable:
    """The finished table: each combination in increasing order (a row of int64 values,
    a column per input), its pixels and their area (NaN where not available), the
    columns' names, the CRS's unit (None without a CRS) and the file's separator."""

    combinations: np.ndarray
    counts: np.ndarray
    areas: np.ndarray
    names: tuple[str, ...]
    unit: str | None
    separator: str

    @property
    def codes(self) -> np.ndarray:
        return np.arange(1, len(self.counts) + 1, dtype=np.int64)

    @property
    def area_available(self) -> bool:
        return area_available(self.unit)


def _check_text(text: str, what: str, field: str, separator: str | None = None) -> None:
    if not text or len(text) > _MAX_NAME_LENGTH or any(c in text for c in "\r\n"):
        raise spec.ParameterError(
            f"{what} {text[:80]!r} must be 1 to {_MAX_NAME_LENGTH} characters on one line",
            metadata={"field": field},
        )
    if separator is not None and separator in text:
        raise spec.ParameterError(
            f"{what} {text!r} holds the separator {separator!r}", metadata={"field": field}
        )


def _parameters(message: raster_pb2.BandCombinationParameters) -> CombinationParameters:
    separator = message.separator or DEFAULT_SEPARATOR
    _check_text(separator, "separator", "separator")
    if any(c.isdigit() or c in ".-+" for c in separator):
        raise spec.ParameterError(
            f"separator {separator!r} holds a character of a number",
            metadata={"field": "separator"},
        )
    if len(message.column_names) > MAX_INPUTS:
        raise spec.ParameterError(
            f"column_names lists {len(message.column_names)} names; at most {MAX_INPUTS} "
            "inputs are combined",
            metadata={"field": "column_names"},
        )
    for name in message.column_names:
        _check_text(name, "column name", "column_names", separator)
    nodata_value = message.nodata_value if message.HasField("nodata_value") else None
    return CombinationParameters(
        nodata_value=nodata_value,
        raster=not message.no_raster_output,
        table_file=not message.no_output_table,
        column_names=tuple(message.column_names),
        separator=separator,
    )


def _check_band(p: CombinationParameters, dtype: np.dtype, nodata: float | None, where: str):
    spec.check_pixel_type(dtype, nodata, where, "iu")
    if dtype.itemsize > 4:
        raise spec.ParameterError(
            f"{where} is {dtype.name}; band combination takes integer bands of up to 32 bits"
        )


def _pixel_bytes(dtypes: Sequence[np.dtype]) -> float:
    """A worker holds the blocks, two masks, an int64 copy of each band's valid values,
    and one fold step's keys, ranks and lookup or sorted copy (`rsgrpc_kernels.combination`)."""
    return sum(d.itemsize for d in dtypes) + 2 + 8 * len(dtypes) + 56


def _memory(p: CombinationParameters, dtypes: Sequence[np.dtype]) -> tuple[float, float, float]:
    """Per pixel, the fold (`_pixel_bytes`) and a partial table of at most a row and a
    count per pixel; per row of the merged table, its values and count, and merging it
    with as many pending rows (their concatenation and its fold)."""
    row = 8 * len(dtypes) + 8
    return _pixel_bytes(dtypes), row, 4 * row + 8


def combination_block(
    blocks: Sequence[np.ndarray], p: CombinationParameters, nodatas: Sequence[float | None]
) -> tuple[np.ndarray, np.ndarray]:
    """Runs in a worker: the tile's distinct combinations and their pixel counts."""
    from rsgrpc_kernels.combination import combination_counts

    return combination_counts(blocks, nodatas, p.nodata_value)


def _merge(partials: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    from rsgrpc_kernels.combination import merge_combination_counts

    return merge_combination_counts(partials)


def column_names(p: CombinationParameters, paths: Sequence[str]) -> tuple[str, ...]:
    """Each input's column: its name in `column_names`, else the first 16 characters of
    its file's stem, as Remotior names it."""
    return tuple(
        p.column_names[i] if i < len(p.column_names) else PurePosixPath(path).stem[:_NAME_LENGTH]
        for i, path in enumerate(paths)
    )


def _table(
    p: CombinationParameters, merged: tuple[np.ndarray, np.ndarray], grid: TableGrid
) -> CombinationTable:
    """Remotior's area: ``count * pixel width * pixel height``, in float64."""
    combinations, counts = merged
    if area_available(grid.unit):
        areas = counts * grid.pixel_width * grid.pixel_height
    else:
        areas = np.full(counts.shape, math.nan)
    names = column_names(p, grid.paths)
    return CombinationTable(combinations, counts, areas, names, grid.unit, p.separator)


def combination_csv(table: CombinationTable) -> str:
    """Remotior's combination file: a header line (RasterValue, each input's column,
    PixelSum, and the area where available), then a line per combination."""
    header = ["RasterValue", *table.names, "PixelSum"]
    columns = [table.codes[:, None], table.combinations, table.counts[:, None]]
    if table.area_available:
        header.append(f"Area [{table.unit}^2]")
        columns.append(table.areas[:, None])
    rows = np.hstack([c.astype(np.float64) for c in columns]) if len(table.counts) else []
    return remotior_csv(header, [list(row) for row in rows], table.separator)


def _response(
    table: CombinationTable, output_path: str, inputs: Sequence[Any], raster_path: str
) -> raster_pb2.BandCombinationResponse:
    rows = [
        raster_pb2.BandCombinationRow(
            raster_value=code, values=values, pixel_count=count, area=area
        )
        for code, values, count, area in zip(
            table.codes.tolist(),
            table.combinations.tolist(),
            table.counts.tolist(),
            table.areas.tolist(),
            strict=True,
        )
    ]
    return raster_pb2.BandCombinationResponse(
        inputs=[raster_pb2.RasterBand(path=b.path, band=b.band) for b in inputs],
        output_path=output_path,
        raster_path=raster_path,
        column_names=table.names,
        rows=rows,
        area_unit=table.unit if table.area_available else "",
        data_type=raster_pb2.DATA_TYPE_INT32,
        nodata=OUTPUT_NODATA,
    )


def combination_codes_block(
    blocks: Sequence[np.ndarray],
    p: CombinationParameters,
    index: Any,
    nodatas: Sequence[float | None],
    out_dtype: str,
    out_nodata: float | None,
) -> np.ndarray:
    """Runs in a worker: each pixel's code in the merged table."""
    from rsgrpc_kernels.combination import combination_codes

    return combination_codes(blocks, nodatas, p.nodata_value, index, int(out_nodata), out_dtype)


def _index(p: CombinationParameters, merged: tuple[np.ndarray, np.ndarray]) -> Any:
    from rsgrpc_kernels.combination import combination_index

    return combination_index(merged[0])


def _describe(p: CombinationParameters) -> str:
    writes = [w for w, on in (("a raster", p.raster), ("a table file", p.table_file)) if on]
    nodata = "" if p.nodata_value is None else f", {p.nodata_value:g} as nodata"
    return f"codes of combinations{nodata}, writing {' and '.join(writes) or 'nothing'}"


def request_parameters(arguments: dict[str, Any]) -> raster_pb2.BandCombinationParameters:
    """Remotior's `nodata_value`, `no_raster_output`, `output_table`, `column_name_list`
    and `separator` (None: a tab)."""
    message = raster_pb2.BandCombinationParameters(
        no_raster_output=bool(arguments["no_raster_output"]),
        no_output_table=not arguments["output_table"],
        separator=arguments["separator"] or "",
    )
    value = number_argument(arguments, "nodata_value")
    if value is not None:
        message.nodata_value = value
    names = arguments["column_name_list"]
    if names is not None:
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise spec.ParameterError(f"column_name_list must be a list, got {names!r}")
        message.column_names.extend(str(name) for name in names)
    return message


def outcome(response: raster_pb2.BandCombinationResponse, arguments: dict[str, Any]):
    """Remotior's paths, [raster, table] (the raster's path even where
    `no_raster_output` writes none, as Remotior), or [raster] without a table file; and its
    `extra`: `combinations` (a record array of each input's value, `f0`, `f1`, ..., and
    the code, `new_val`) and `sums` (`new_val`, and the pixels, `sum`)."""
    raster = response.raster_path or str(arguments["output_path"])
    paths = [raster, response.output_path] if response.output_path else [raster]
    count = len(response.inputs)
    rows = response.rows
    values = np.array([list(row.values) for row in rows], np.int64).reshape(len(rows), count)
    codes = np.array([row.raster_value for row in rows], np.int64)
    sums = np.array([row.pixel_count for row in rows], np.int64)
    combinations = np.rec.fromarrays(
        [*values.T, codes], names=[*(f"f{i}" for i in range(count)), "new_val"]
    )
    return paths, {
        "combinations": combinations,
        "sums": np.rec.fromarrays([codes, sums], names=["new_val", "sum"]),
    }


BAND_COMBINATION = TableTool[CombinationParameters](
    name="band_combination",
    rpc="BandCombination",
    command="band-combination",
    summary="a code for each combination of class values across bands, as a raster of the "
    "codes and a table of combinations",
    request_type=raster_pb2.BandCombinationRequest,
    response_type=raster_pb2.BandCombinationResponse,
    parameters=_parameters,
    check_band=_check_band,
    memory=_memory,
    kernel=combination_block,
    merge=_merge,
    rows=lambda partial: len(partial[1]),
    max_rows=MAX_COMBINATIONS,
    table=_table,
    csv=combination_csv,
    response=_response,
    describe=_describe,
    request_parameters=request_parameters,
    input_argument="input_bands",
    inputs=(1, MAX_INPUTS),
    raster=TableRaster[CombinationParameters](
        wanted=lambda p: p.raster,
        output=lambda p: (OUTPUT_DTYPE, OUTPUT_NODATA),
        memory=lambda p, dtypes: _pixel_bytes(dtypes),
        index=_index,
        kernel=combination_codes_block,
    ),
    table_file=lambda p: p.table_file,
    outcome=outcome,
    cli_flags=(
        spec.CliFlag(
            "--nodata-value",
            "nodata_value",
            {"type": float, "help": "a value that makes a pixel nodata in any input"},
        ),
        spec.CliFlag(
            "--no-raster-output",
            "no_raster_output",
            {"action": "store_true", "help": "write only the table"},
        ),
        spec.CliFlag(
            "--no-output-table",
            "output_table",
            {"action": "store_false", "help": "write no CSV file, only the raster"},
        ),
        spec.CliFlag(
            "--column-name",
            "column_name_list",
            {
                "action": "append",
                "metavar": "NAME",
                "help": "the table's column of the next input; repeat in the inputs' order",
            },
        ),
        spec.CliFlag(
            "--separator", "separator", {"help": "the CSV file's field separator (default: tab)"}
        ),
        spec.CliFlag("--overwrite", "overwrite", {"action": "store_true"}),
        extent_flag("combine"),
    ),
)
