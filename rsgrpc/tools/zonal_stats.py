"""Raster zonal stats, declared: per zone of a zone raster, statistics of a value raster's
pixels, as Remotior's `raster_zonal_stats` names and writes them
(`rsgrpc_kernels.zonal_statistics`).

The zones are a raster (Remotior's `reference_path`), read onto the value raster's grid;
a vector reference is refused until vectors are served, its request fields
(`ZonalStatsReference.vector_field`) already in place. Statistic names are an enum on
the wire and a fixed table here: nothing is evaluated.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from rsgrpc.tools import spec
from rsgrpc.tools.table_spec import TableGrid, TableTool
from rsgrpc.v1 import raster_pb2

# Zones plus distinct (zone, value) pairs a table may hold. Its response travels in one
# message within the server's default 16 MiB: at most 131,072 zone rows without order
# statistics, or 65,536 with them (each zone has a pair) and up to MAX_PERCENTILES
# percentiles each.
MAX_ZONAL_ROWS = 1 << 17
MAX_PERCENTILES = 16
# Remotior's `configurations.statistics_list` names, in its order.
STATISTICS: dict[int, str] = {
    raster_pb2.ZONAL_STATISTIC_COUNT: "Count",
    raster_pb2.ZONAL_STATISTIC_MAX: "Max",
    raster_pb2.ZONAL_STATISTIC_MEAN: "Mean",
    raster_pb2.ZONAL_STATISTIC_MEDIAN: "Median",
    raster_pb2.ZONAL_STATISTIC_MIN: "Min",
    raster_pb2.ZONAL_STATISTIC_PERCENTILE: "Percentile",
    raster_pb2.ZONAL_STATISTIC_STANDARD_DEVIATION: "StandardDeviation",
    raster_pb2.ZONAL_STATISTIC_SUM: "Sum",
}
_ENUMS = {name: number for number, name in STATISTICS.items()}
_ORDER_STATISTICS = frozenset({"Median", "Percentile"})
# Files a zone reference names that are vectors (OGR's usual extensions).
_VECTOR_SUFFIXES = frozenset(
    {".shp", ".gpkg", ".geojson", ".json", ".kml", ".kmz", ".gml", ".sqlite", ".fgb",
     ".gdb", ".tab", ".mif", ".dxf", ".csv", ".dbf", ".parquet", ".gpx", ".zip"}
)  # fmt: skip
_SEPARATOR = ","
_ZONE_FIELD = "DN"  # Remotior's field of a raster reference


@dataclass(frozen=True)
class ZonalParameters:
    """The statistics, by Remotior's names in the CSV file's order, each once, and the
    percentiles of "Percentile", each once (by column name)."""

    statistics: tuple[str, ...]
    percentiles: tuple[float, ...] = ()

    @property
    def order_statistics(self) -> bool:
        """Whether a median or percentile is wanted: it needs each value's count."""
        return not _ORDER_STATISTICS.isdisjoint(self.statistics)

    @property
    def columns(self) -> tuple[str, ...]:
        """The CSV file's columns after "DN": "Percentile_{p}" for each percentile at
        the place of "Percentile"."""
        columns: list[str] = []
        for name in self.statistics:
            if name == "Percentile":
                columns += [percentile_column(p) for p in self.percentiles]
            else:
                columns.append(name)
        return tuple(columns)


def percentile_column(percent: float) -> str:
    """Remotior's column of a percentile: "Percentile_25" (rsgrpc: "Percentile_12.5"
    where Remotior writes "Percentile_12")."""
    return f"Percentile_{int(percent) if float(percent).is_integer() else percent!r}"


@dataclass(frozen=True)
class ZonalTable:
    """The finished table: each zone in increasing order, its pixel count, and each
    statistic asked for by its column (float64, a value per zone)."""

    zones: np.ndarray
    counts: np.ndarray
    columns: tuple[str, ...]
    values: dict[str, np.ndarray]
    percentiles: tuple[float, ...]


def zonal_records(zones: np.ndarray, columns: Sequence[str], values: dict[str, Any]) -> np.recarray:
    """Remotior's table of zonal stats: "DN", int64 where every zone is an integer (else
    float64), then a float64 column per statistic (`values` by column)."""
    integral = zones.dtype.kind in "iu" or bool(
        np.all(np.isfinite(zones) & (zones == np.round(zones)))
    )
    dtype = [(_ZONE_FIELD, "int64" if integral else "float64")]
    records = np.recarray(zones.size, dtype + [(c, "float64") for c in columns])
    records[_ZONE_FIELD] = zones
    for column in columns:
        records[column] = values[column]
    return records


def _check_percentile(value: float) -> float:
    if not (math.isfinite(value) and 0 <= value <= 100):
        raise spec.ParameterError(
            f"a percentile must be from 0 to 100, got {value!r}", metadata={"field": "percentiles"}
        )
    return float(value)


def zonal_parameters(statistics: Sequence[str], percentiles: Sequence[float]) -> ZonalParameters:
    """Statistics by Remotior's names, each kept at its first place; percentiles each
    kept once (by column name), required with "Percentile" and refused without it."""
    names = tuple(dict.fromkeys(statistics))
    if not names:
        raise spec.ParameterError(
            f"no statistic: name one or more of {', '.join(STATISTICS.values())}",
            metadata={"field": "statistics"},
        )
    kept: dict[str, float] = {}
    for value in percentiles:
        kept.setdefault(percentile_column(value), _check_percentile(value))
    if "Percentile" in names and not kept:
        raise spec.ParameterError(
            "Percentile needs one or more percentiles, from 0 to 100",
            metadata={"field": "percentiles"},
        )
    if "Percentile" not in names and kept:
        raise spec.ParameterError(
            "percentiles are given without the Percentile statistic",
            metadata={"field": "percentiles"},
        )
    if len(kept) > MAX_PERCENTILES:
        raise spec.ParameterError(
            f"at most {MAX_PERCENTILES} percentiles, got {len(kept)}",
            metadata={"field": "percentiles"},
        )
    return ZonalParameters(names, tuple(kept.values()))


def _parameters(message: raster_pb2.ZonalStatsParameters) -> ZonalParameters:
    names = []
    for number in message.statistics:
        if number not in STATISTICS:
            raise spec.ParameterError(
                f"unknown statistic {number}; use ZONAL_STATISTIC_COUNT, _MAX, _MEAN, "
                "_MEDIAN, _MIN, _PERCENTILE, _STANDARD_DEVIATION or _SUM",
                metadata={"field": "statistics"},
            )
        names.append(STATISTICS[number])
    return zonal_parameters(names, list(message.percentiles))


def is_vector_path(path: str) -> bool:
    """Whether a reference names a vector file, by its extension."""
    return PurePosixPath(path).suffix.lower() in _VECTOR_SUFFIXES


def _request_bands(request: raster_pb2.ZonalStatsRequest) -> list[raster_pb2.RasterBand]:
    """The band of values, then the band of zones; a vector reference is refused."""
    if len(request.inputs) != 1:
        raise spec.ParameterError(
            f"ZonalStats takes one band of values in inputs, got {len(request.inputs)}",
            metadata={"field": "inputs"},
        )
    return [request.inputs[0], raster_reference(request.reference, "zones")]


def raster_reference(reference: Any, what: str) -> raster_pb2.RasterBand:
    """A request's `reference` (path, band, vector_field) as the band to read, a raster of
    `what`; an empty path or a vector is refused."""
    if not reference.path:
        raise spec.ParameterError(
            f"reference path is empty: name the raster of {what}",
            metadata={"field": "reference"},
        )
    if is_vector_path(reference.path):
        raise spec.ParameterError(
            f"reference {reference.path!r} is a vector; vector references are not supported "
            f"yet: give a raster of {what} (a GeoTIFF)",
            metadata={"field": "reference"},
        )
    return raster_pb2.RasterBand(path=reference.path, band=reference.band)


def _check_band(p: ZonalParameters, dtype: np.dtype, nodata: float | None, where: str) -> None:
    spec.check_pixel_type(dtype, nodata, where, "iuf")


def _memory(p: ZonalParameters, dtypes: Sequence[np.dtype]) -> tuple[float, float, float]:
    """A worker holds both blocks, three masks, the valid zones and values (as they are,
    as float64 and sorted), their int64 order, the int64 copy of integer values, the
    deviations and their squares, the (zone, value) pairs, and for float values a Python
    float a pixel while a zone is summed; a tile's partial is at most a zone row (its
    zone and seven 8-byte numbers) and a (zone, value) pair per pixel; the merged table
    holds a row per zone or pair, and merging takes their concatenation, its order and
    the sorted copy."""
    values, zones = dtypes[0].itemsize, dtypes[1].itemsize
    worker = 2 * values + 3 * zones + 3 + 8 * 9 + 32
    row = zones + 56
    partial = row + (zones + 16 if p.order_statistics else 0)
    return worker, partial, 3 * row + 8


def zonal_block(
    blocks: Sequence[np.ndarray], p: ZonalParameters, nodatas: Sequence[float | None]
) -> Any:
    """Runs in a worker: the tile's partial statistics of the values (blocks[0]) per zone
    (blocks[1])."""
    from rsgrpc_kernels.zonal_statistics import zonal_partial

    return zonal_partial(
        blocks[1], blocks[0], (nodatas[1], nodatas[0]), order_statistics=p.order_statistics
    )


def _merge(partials: list[Any]) -> Any:
    from rsgrpc_kernels.zonal_statistics import merge_zonal_partials

    return merge_zonal_partials(partials)


def _rows(partial: Any) -> int:
    return len(partial.zones) + len(partial.pair_counts)


def _table(p: ZonalParameters, merged: Any, grid: TableGrid) -> ZonalTable:
    """Each statistic as NumPy's function of Remotior's gives it on a zone's valid
    values in float64: `count_nonzero`, `sum` (exact, rounded once), `mean`, `min`,
    `max`, `std`, `median`, `percentile`."""
    from rsgrpc_kernels.zonal_statistics import medians, percentiles, standard_deviations

    counts = merged.counts
    values: dict[str, np.ndarray] = {}
    for name in p.statistics:
        if name == "Count":
            values[name] = counts.astype(np.float64)
        elif name == "Sum":
            values[name] = merged.sum_high
        elif name == "Mean":
            values[name] = merged.sum_high / counts
        elif name == "Min":
            values[name] = merged.minimum
        elif name == "Max":
            values[name] = merged.maximum
        elif name == "StandardDeviation":
            values[name] = standard_deviations(merged)
        elif name == "Median":
            values[name] = medians(merged)
        elif name == "Percentile":
            at = percentiles(merged, p.percentiles)
            for j, percent in enumerate(p.percentiles):
                values[percentile_column(percent)] = at[:, j]
    return ZonalTable(merged.zones, counts, p.columns, values, p.percentiles)


def zonal_csv(table: ZonalTable) -> str:
    """Remotior's zonal stats file: a header line ("DN", then the statistics' columns),
    then a line per zone, written as NumPy's `savetxt` writes Remotior's records with
    "%s" (the zone an integer, the statistics float64: "12.0", "nan"), and an empty last
    line."""
    records = zonal_records(table.zones, table.columns, table.values)
    stream = io.StringIO()
    np.savetxt(stream, records, delimiter=_SEPARATOR, fmt="%s")
    header = _SEPARATOR.join((_ZONE_FIELD, *table.columns))
    return f"{header}\n{stream.getvalue()}\n"


_ROW_FIELDS = {
    "Sum": "sum",
    "Mean": "mean",
    "Min": "minimum",
    "Max": "maximum",
    "StandardDeviation": "standard_deviation",
    "Median": "median",
}


def _response(
    table: ZonalTable, output_path: str, inputs: Sequence[Any]
) -> raster_pb2.ZonalStatsResponse:
    columns = {name: table.values[name].tolist() for name in _ROW_FIELDS if name in table.values}
    percent_columns = [table.values[percentile_column(p)].tolist() for p in table.percentiles]
    rows = []
    zones, counts = table.zones.tolist(), table.counts.tolist()
    for i, (zone, count) in enumerate(zip(zones, counts, strict=True)):
        row = raster_pb2.ZonalStatsRow(
            zone=zone,
            pixel_count=count,
            percentiles=[column[i] for column in percent_columns],
        )
        for name, values in columns.items():
            setattr(row, _ROW_FIELDS[name], values[i])
        rows.append(row)
    band, zones = inputs[0], inputs[1]
    return raster_pb2.ZonalStatsResponse(
        input=raster_pb2.RasterBand(path=band.path, band=band.band),
        reference=raster_pb2.ZonalStatsReference(path=zones.path, band=zones.band),
        output_path=output_path,
        columns=(_ZONE_FIELD, *table.columns),
        percentiles=table.percentiles,
        rows=rows,
    )


def _outcome(
    response: raster_pb2.ZonalStatsResponse, arguments: dict[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """The client's outcome, as Remotior's: the CSV file, and ``{"table": records}`` (the
    rows as `zonal_records`)."""
    columns = list(response.columns)[1:]
    rows = response.rows
    at = {percentile_column(p): j for j, p in enumerate(response.percentiles)}
    values: dict[str, list[float]] = {}
    for column in columns:
        if column == "Count":
            values[column] = [row.pixel_count for row in rows]
        elif column in at:
            values[column] = [row.percentiles[at[column]] for row in rows]
        else:
            values[column] = [getattr(row, _ROW_FIELDS[column]) for row in rows]
    zones = np.array([row.zone for row in rows], np.float64)
    return [response.output_path], {"table": zonal_records(zones, columns, values)}


def _describe(p: ZonalParameters) -> str:
    return f"{', '.join(p.columns)} per zone"


def request_parameters(arguments: dict[str, Any]) -> raster_pb2.ZonalStatsParameters:
    """Remotior's `stat_names` (a name or a list of names of
    `configurations.statistics_list`, in any case) and `stat_percentile` (a number or a
    list of numbers from 0 to 100, for "Percentile"; ignored without it, as Remotior)."""
    names = arguments["stat_names"]
    if names is None:
        raise spec.ParameterError(
            f"stat_names is required: one or more of {', '.join(STATISTICS.values())}"
        )
    if isinstance(names, str):
        names = [names]
    by_lower = {name.lower(): name for name in STATISTICS.values()}
    statistics = []
    for name in names:
        if not isinstance(name, str) or name.lower() not in by_lower:
            raise spec.ParameterError(
                f"unknown statistic {name!r}; use one of {', '.join(STATISTICS.values())}"
            )
        statistics.append(by_lower[name.lower()])
    percents: list[float] = []
    if "Percentile" in statistics:
        given = arguments["stat_percentile"]
        if given is None:
            raise spec.ParameterError("stat_percentile is required with Percentile")
        for value in given if isinstance(given, list | tuple) else [given]:
            try:
                percents.append(float(value))
            except (TypeError, ValueError):
                raise spec.ParameterError(
                    f"stat_percentile must be numbers from 0 to 100, got {value!r}"
                ) from None
    checked = zonal_parameters(statistics, percents)
    return raster_pb2.ZonalStatsParameters(
        statistics=[_ENUMS[name] for name in checked.statistics],
        percentiles=checked.percentiles,
    )


def request_fields(arguments: dict[str, Any]) -> dict[str, Any]:
    """Remotior's `reference_path` (a path, band 1, or a (path, band) pair) and
    `vector_field`, as the request's `reference`."""
    return {"reference": reference_argument(arguments, raster_pb2.ZonalStatsReference)}


def reference_argument(arguments: dict[str, Any], message_type: type) -> Any:
    """Remotior's `reference_path` (a path, band 1, or a (path, band) pair) and
    `vector_field` as a reference message of `message_type` (path, band, vector_field)."""
    path, band = arguments["reference_path"], 1
    if isinstance(path, list | tuple) and len(path) == 2 and isinstance(path[1], int):
        path, band = path
    if not isinstance(path, str) or not path:
        raise spec.ParameterError(f"reference_path must be a path, got {path!r}")
    field = arguments["vector_field"]
    return message_type(path=path, band=band, vector_field="" if field is None else str(field))


def reference_flags(what: str) -> tuple[spec.CliFlag, spec.CliFlag]:
    """The command's flags of Remotior's `reference_path` (a raster of `what`) and
    `vector_field`."""
    return (
        spec.CliFlag(
            "--reference",
            "reference_path",
            {"required": True, "help": f"the raster of {what}, relative to the data root"},
        ),
        spec.CliFlag(
            "--vector-field",
            "vector_field",
            {"help": f"a vector reference's field of {what} (vectors are not served yet)"},
        ),
    )


RASTER_ZONAL_STATS = TableTool[ZonalParameters](
    name="raster_zonal_stats",
    rpc="ZonalStats",
    command="zonal-stats",
    summary="per zone of a zone raster, statistics of a raster's values, as a CSV file",
    request_type=raster_pb2.ZonalStatsRequest,
    response_type=raster_pb2.ZonalStatsResponse,
    parameters=_parameters,
    check_band=_check_band,
    memory=_memory,
    kernel=zonal_block,
    merge=_merge,
    rows=_rows,
    max_rows=MAX_ZONAL_ROWS,
    table=_table,
    csv=zonal_csv,
    response=_response,
    describe=_describe,
    request_parameters=request_parameters,
    input_argument="raster_path",
    inputs=(2, 2),
    request_bands=_request_bands,
    request_fields=request_fields,
    first_input_grid=True,
    outcome=_outcome,
    cli_flags=(
        *reference_flags("zones"),
        spec.CliFlag(
            "--stat",
            "stat_names",
            {
                "action": "append",
                "required": True,
                "choices": tuple(STATISTICS.values()),
                "help": "a statistic, a column of the CSV file; repeat for several",
            },
        ),
        spec.CliFlag(
            "--percentile",
            "stat_percentile",
            {
                "action": "append",
                "type": float,
                "help": "a percentile (0 to 100) of the Percentile statistic; repeat",
            },
        ),
        spec.CliFlag(
            "--extent",
            "extent_list",
            {
                "type": float,
                "nargs": 4,
                "metavar": ("LEFT", "TOP", "RIGHT", "BOTTOM"),
                "help": "use only the pixels within this extent",
            },
        ),
    ),
)
