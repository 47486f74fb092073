"""Raster report, declared: per value of a band, its pixel count, percentage and area, as
Remotior's `raster_report` writes them (`rsgrpc_kernels.value_counts`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rsgrpc.tools import spec
from rsgrpc.tools.table_spec import TableGrid, TableTool, extent_flag, number_argument
from rsgrpc.v1 import raster_pb2

# Distinct values a report may hold: its rows travel in one response message, about 40
# bytes each, within the server's default 16 MiB.
MAX_REPORT_ROWS = 1 << 18
# Remotior's CSV: comma-separated, one header line, numbers as "%1.2f" without ".00".
_SEPARATOR = ","
_NUMBER_FORMAT = "%1.2f"


@dataclass(frozen=True)
class ReportParameters:
    """A report's extra nodata value (Remotior's `nodata_value`), or None."""

    nodata_value: float | None


@dataclass(frozen=True)
class ReportTable:
    """The finished report: each value, in increasing order, with its pixels, their
    percentage of all counted pixels and their area (NaN where not available), and the
    CRS's unit (None without a CRS)."""

    values: np.ndarray
    counts: np.ndarray
    percentages: np.ndarray
    areas: np.ndarray
    unit: str | None

    @property
    def area_available(self) -> bool:
        return area_available(self.unit)

    def rows(self) -> list[tuple[float, int, float, float]]:
        """(value, pixel count, percentage, area) per value, as Python numbers."""
        columns = (self.values, self.counts, self.percentages, self.areas)
        return list(zip(*(column.tolist() for column in columns), strict=True))


def area_available(unit: str | None) -> bool:
    """Remotior gives areas unless the CRS's unit is a degree; rsgrpc also not without a
    CRS."""
    return unit is not None and "degree" not in unit


def _parameters(message: raster_pb2.RasterReportParameters) -> ReportParameters:
    return ReportParameters(message.nodata_value if message.HasField("nodata_value") else None)


def _check_band(p: ReportParameters, dtype: np.dtype, nodata: float | None, where: str) -> None:
    spec.check_pixel_type(dtype, nodata, where, "iuf")


def _memory(p: ReportParameters, dtypes: Sequence[np.dtype]) -> tuple[float, float, float]:
    """A worker holds the block, its mask, the valid values and their sorted copy, and
    int64 counts; a tile's partial is at most a value and a count per pixel; the merged
    table holds a value and a count per row, and merging it with as many pending rows
    takes their concatenation, its int64 order and the sorted copy."""
    size = dtypes[0].itemsize
    return 3 * size + 1 + 8, size + 8, 4 * (size + 8) + 8


def report_block(
    blocks: Sequence[np.ndarray], p: ReportParameters, nodatas: Sequence[float | None]
) -> tuple[np.ndarray, np.ndarray]:
    """Runs in a worker: the tile's distinct valid values and their pixel counts."""
    from rsgrpc_kernels.value_counts import value_counts

    return value_counts(blocks[0], (nodatas[0], p.nodata_value))


def _merge(partials: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    from rsgrpc_kernels.value_counts import merge_value_counts

    return merge_value_counts(partials)


def _table(
    p: ReportParameters, merged: tuple[np.ndarray, np.ndarray], grid: TableGrid
) -> ReportTable:
    """Remotior's columns: percentage ``100 * count / total`` and area ``count * pixel
    width * pixel height``, both in float64."""
    values, counts = merged
    total = int(counts.sum())
    percentages = 100 * counts / total if total else np.zeros(0)
    if area_available(grid.unit):
        areas = counts * grid.pixel_width * grid.pixel_height
    else:
        areas = np.full(counts.shape, math.nan)
    return ReportTable(values, counts, percentages, areas, grid.unit)


def report_csv(table: ReportTable) -> str:
    """Remotior's report file: a header line, then a line per value (value, pixel count,
    percentage, area), each number as "%1.2f" with every ".00" dropped, and an empty
    last line."""
    area = f"Area [{table.unit}^2]" if table.area_available else "Area not available"
    return remotior_csv(("RasterValue", "PixelSum", "Percentage %", area), table.rows())


def remotior_csv(
    header: Sequence[str], rows: Iterable[Sequence[float]], separator: str = _SEPARATOR
) -> str:
    """Remotior's table file (NumPy's `savetxt` of the rows): the header line, then a line
    per row, each number as "%1.2f" with every ".00" dropped, and an empty last line."""
    lines = [separator.join(_NUMBER_FORMAT % x for x in row) + "\n" for row in rows]
    return f"{separator.join(header)}\n{''.join(lines).replace('.00', '')}\n"


def _response(
    table: ReportTable, output_path: str, inputs: Sequence[Any]
) -> raster_pb2.RasterReportResponse:
    rows = [
        raster_pb2.RasterReportRow(value=v, pixel_count=c, percentage=pc, area=a)
        for v, c, pc, a in table.rows()
    ]
    band = inputs[0]
    return raster_pb2.RasterReportResponse(
        input=raster_pb2.RasterBand(path=band.path, band=band.band),
        output_path=output_path,
        rows=rows,
        area_unit=table.unit if table.area_available else "",
    )


def _describe(p: ReportParameters) -> str:
    if p.nodata_value is None:
        return "pixels per value"
    return f"pixels per value, {p.nodata_value:g} as nodata"


def request_parameters(arguments: dict[str, Any]) -> raster_pb2.RasterReportParameters:
    """Remotior's `nodata_value` (None: only the band's nodata and NaN)."""
    message = raster_pb2.RasterReportParameters()
    value = number_argument(arguments, "nodata_value")
    if value is not None:
        message.nodata_value = value
    return message


RASTER_REPORT = TableTool[ReportParameters](
    name="raster_report",
    rpc="RasterReport",
    command="raster-report",
    summary="per value of a band, its pixel count, percentage and area, as a CSV file",
    request_type=raster_pb2.RasterReportRequest,
    response_type=raster_pb2.RasterReportResponse,
    parameters=_parameters,
    check_band=_check_band,
    memory=_memory,
    kernel=report_block,
    merge=_merge,
    rows=lambda partial: len(partial[0]),
    max_rows=MAX_REPORT_ROWS,
    table=_table,
    csv=report_csv,
    response=_response,
    describe=_describe,
    request_parameters=request_parameters,
    input_argument="raster_path",
    cli_flags=(
        spec.CliFlag(
            "--nodata-value",
            "nodata_value",
            {"type": float, "help": "a value counted as nodata, beside the band's own"},
        ),
        extent_flag("count"),
    ),
)
