"""Cross classification, declared: each pixel's (reference, classification) pair coded
in a raster, the pairs' pixels and areas, and on request the cross matrix, the error
matrix with its accuracy assessment and area estimates, and the linear regression of
the classification on the reference (Remotior's `cross_classification`,
`rsgrpc_kernels.cross_classification`, `rsgrpc.tools.accuracy`).

Codes number the pairs from 1 in increasing order of the reference value, then of the
classification value, whatever the tiling (Remotior's pairs are its `band_combination`
of the reference and the classification, ordered by a weighted sum). The error matrix's
strata are the map's classes, counted over every valid pixel of the classification (as
Remotior counts them), so that the area-based estimates follow Olofsson et al. (2014).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rsgrpc.tools import spec
from rsgrpc.tools.accuracy import Assessment, Regression, assess, error_matrix, regression
from rsgrpc.tools.combination import OUTPUT_DTYPE, OUTPUT_NODATA
from rsgrpc.tools.combination import _check_band as check_class_band
from rsgrpc.tools.report import area_available, remotior_csv
from rsgrpc.tools.table_spec import (
    TableGrid,
    TableRaster,
    TableTool,
    extent_flag,
    number_argument,
)
from rsgrpc.tools.zonal_stats import raster_reference, reference_argument, reference_flags
from rsgrpc.v1 import raster_pb2

# Pairs and map classes a table may hold: the error matrix is square in the classes, so
# its response stays within a message for 1,024 classes or fewer.
MAX_CROSS_ROWS = 1 << 16
MAX_ERROR_MATRIX_CLASSES = 1 << 10
_SEPARATOR = ","  # Remotior's `comma_delimiter`
_TAB = "\t"
_Z95 = 1.96  # the 95% interval of a normal estimate, as Olofsson's and Remotior's


@dataclass(frozen=True)
class CrossParameters:
    """Remotior's `nodata_value` (or None) and which sections the table holds."""

    nodata_value: float | None
    cross_matrix: bool
    error_matrix: bool
    regression: bool


@dataclass(frozen=True)
class CrossTable:
    """The finished table: the pairs (reference, classification) in code order, their
    pixels and areas (NaN where not available), the map's classes and pixels, the pixel's
    area, the CRS's unit, and the requested sections (None where not requested)."""

    pairs: np.ndarray
    counts: np.ndarray
    areas: np.ndarray
    pixel_area: float
    unit: str | None
    parameters: CrossParameters
    assessment: Assessment | None
    line: Regression | None

    @property
    def codes(self) -> np.ndarray:
        return np.arange(1, len(self.counts) + 1, dtype=np.int64)

    @property
    def area_available(self) -> bool:
        return area_available(self.unit)


def _parameters(message: raster_pb2.CrossClassificationParameters) -> CrossParameters:
    return CrossParameters(
        nodata_value=message.nodata_value if message.HasField("nodata_value") else None,
        cross_matrix=message.cross_matrix,
        error_matrix=message.error_matrix,
        regression=message.regression,
    )


def _request_bands(request: raster_pb2.CrossClassificationRequest) -> list[Any]:
    """The classification, then the reference; a vector reference is refused."""
    if len(request.inputs) != 1:
        raise spec.ParameterError(
            f"CrossClassification takes one classification band in inputs, got "
            f"{len(request.inputs)}",
            metadata={"field": "inputs"},
        )
    return [request.inputs[0], raster_reference(request.reference, "reference classes")]


def _memory(p: CrossParameters, dtypes: Sequence[np.dtype]) -> tuple[float, float, float]:
    """Per pixel, both blocks, two masks, an int64 copy of each band's valid values, and
    one fold step's keys, ranks and lookup or sorted copy (the pairs', then the classes',
    `rsgrpc_kernels.combination`); a partial table holds at most a pair (two values and a
    count) and a class (a value and a count) per pixel; a merged row is merged with as
    many pending rows (their concatenation and its fold)."""
    worker = sum(d.itemsize for d in dtypes) + 2 + 16 + 56
    return worker, 40, 4 * 24 + 8


def cross_block(
    blocks: Sequence[np.ndarray], p: CrossParameters, nodatas: Sequence[float | None]
) -> Any:
    """Runs in a worker: the tile's pairs and map classes with their pixels."""
    from rsgrpc_kernels.cross_classification import cross_counts

    return cross_counts(blocks[0], blocks[1], (nodatas[0], nodatas[1]), p.nodata_value)


def _merge(partials: list[Any]) -> Any:
    from rsgrpc_kernels.cross_classification import merge_cross_counts

    return merge_cross_counts(partials)


def cross_codes_block(
    blocks: Sequence[np.ndarray],
    p: CrossParameters,
    index: Any,
    nodatas: Sequence[float | None],
    out_dtype: str,
    out_nodata: float | None,
) -> np.ndarray:
    """Runs in a worker: each pixel's pair code in the merged table."""
    from rsgrpc_kernels.cross_classification import cross_codes

    return cross_codes(
        blocks[0],
        blocks[1],
        (nodatas[0], nodatas[1]),
        p.nodata_value,
        index,
        int(out_nodata),
        out_dtype,
    )


def _index(p: CrossParameters, merged: Any) -> Any:
    from rsgrpc_kernels.cross_classification import cross_index

    return cross_index(merged)


def _table(p: CrossParameters, merged: Any, grid: TableGrid) -> CrossTable:
    """Areas as Remotior's: ``count * pixel width * pixel height``, in float64; the error
    matrix over every class of the pairs and of the map."""
    pixel_area = grid.pixel_width * grid.pixel_height
    counts = merged.pair_counts
    areas = counts * pixel_area if area_available(grid.unit) else np.full(counts.shape, math.nan)
    assessment = None
    if p.error_matrix:
        classes = np.union1d(np.unique(merged.pairs), merged.classes[:, 0])
        if len(classes) > MAX_ERROR_MATRIX_CLASSES:
            raise spec.ParameterError(
                f"the error matrix has {len(classes):,} classes; at most "
                f"{MAX_ERROR_MATRIX_CLASSES:,} are assessed"
            )
        map_counts = np.zeros(len(classes), np.int64)
        map_counts[np.searchsorted(classes, merged.classes[:, 0])] = merged.class_counts
        matrix = error_matrix(classes, merged.pairs, counts)
        assessment = assess(classes, matrix, map_counts)
    line = None
    if p.regression:
        line = regression(merged.pairs[:, 0], merged.pairs[:, 1], counts)
    return CrossTable(merged.pairs, counts, areas, pixel_area, grid.unit, p, assessment, line)


def _fixed(value: float, decimals: int) -> str:
    """A number as Remotior writes it: `decimals` decimals, dropped where all are 0."""
    text = f"{value:.{decimals}f}"
    zeros = "." + "0" * decimals
    return text[: -len(zeros)] if text.endswith(zeros) else text


def _line(*cells: object) -> str:
    return _SEPARATOR.join(str(c) for c in cells) + "\n"


def _cross_matrix_text(table: CrossTable) -> str:
    """Remotior's cross matrix: a row per reference value, a column per classification
    value, of areas (pixels where areas are not available), and the columns' totals."""
    references, ref_at = np.unique(table.pairs[:, 0], return_inverse=True)
    classified, cls_at = np.unique(table.pairs[:, 1], return_inverse=True)
    by_area = table.area_available
    values = table.areas if by_area else table.counts.astype(np.float64)
    matrix = np.zeros((len(references), len(classified)))
    np.add.at(matrix, (ref_at, cls_at), values)
    unit = f"{table.unit}^2" if by_area else "PixelSum"
    text = [f"CROSS MATRIX [{unit}]\n", _line("", "Classification >")]
    text.append(_line("Reference V", *classified.tolist()))
    for value, row in zip(references.tolist(), matrix, strict=True):
        text.append(_line(value, *(_fixed(x, 2) for x in row)))
    text.append(_line("Total", *(int(x) for x in matrix.sum(axis=0))))
    return "".join(text)


def _error_matrix_text(table: CrossTable, a: Assessment) -> str:
    """Remotior's error matrix of pixel counts; with areas, its area-based matrix (p_ij,
    the map's class areas and W_i), the estimated areas with their standard errors and
    95% intervals; then the area-based accuracies in percent, with their standard
    errors, and the kappas."""
    classes = a.classes.tolist()
    text = ["ERROR MATRIX [pixel count]\n", _line("", "> Reference")]
    text.append(_line("V_Classified", *classes, "Total"))
    for value, row in zip(classes, a.counts.tolist(), strict=True):
        text.append(_line(value, *row, sum(row)))
    text.append(_line("Total", *a.counts.sum(axis=0).tolist(), int(a.counts.sum())))
    if table.area_available:
        map_areas = a.map_counts * table.pixel_area
        total_area = float(map_areas.sum())
        text.append("\nAREA BASED ERROR MATRIX\n")
        text.append(_line("", "> Reference"))
        text.append(_line("V_Classified", *classes, "Area", "Wi"))
        for value, row, area, weight in zip(
            classes, a.proportions, map_areas.tolist(), a.weights.tolist(), strict=True
        ):
            text.append(_line(value, *(_fixed(x, 4) for x in row), _fixed(area, 4), weight))
        column_sums = a.proportions.sum(axis=0)
        text.append(_line("Total", *(_fixed(x, 4) for x in column_sums), _fixed(total_area, 4)))
        area_se = a.estimated_se * total_area
        text.append(
            _line("Estimated area", *(_fixed(x * total_area, 2) for x in a.estimated),
                  _fixed(total_area, 2))
        )  # fmt: skip
        text.append(_line("SE", *(_fixed(x, 4) for x in a.estimated_se)))
        text.append(_line("SE area", *(_fixed(x, 2) for x in area_se)))
        text.append(_line("95% CI area", *(_fixed(x * _Z95, 2) for x in area_se)))
    for label, values in (
        ("PA [%]", a.producers),
        ("PA SE [%]", a.producers_se),
        ("UA [%]", a.users),
        ("UA SE [%]", a.users_se),
        ("Kappa hat", None),
    ):
        cells = a.conditional_kappa if values is None else 100 * values
        text.append(_line(label, *(f"{x:1.4f}" for x in cells)))
    text.append(f"\nOverall accuracy [%] = {100 * a.overall:1.4f}\n")
    text.append(f"Overall accuracy SE [%] = {100 * a.overall_se:1.4f}\n")
    text.append(f"Kappa hat classification = {a.area_kappa:1.4f}\n")
    if a.unsampled:
        text.append(f"Map share without reference pixels = {a.unsampled:1.4f}\n")
    text.append(f"\nArea unit = {table.unit}^2\n" if table.area_available else "\n")
    text.append("SE = standard error\nCI = confidence interval\n")
    text.append("PA = producer's accuracy\nUA = user's accuracy\n")
    return "".join(text)


def _regression_text(line: Regression) -> str:
    """Remotior's regression section, numbers as Python writes them."""
    rows = (
        ("Coeff. det. R^2", line.r_squared),
        ("Coeff. correlation r", line.correlation),
        ("B0", f"{line.intercept} ± {line.intercept_interval}"),
        ("B1", f"{line.slope} ± {line.slope_interval}"),
        ("Variance Y", line.variance_y),
        ("Variance B0", line.variance_intercept),
        ("Variance B1", line.variance_slope),
    )
    body = "".join(f"{label}{_TAB}{value}\n" for label, value in rows)
    return f"\nLinear regression Y = B0 + B1*X\n{body}"


def cross_csv(table: CrossTable) -> str:
    """Remotior's cross classification file: the pairs (RasterValue, Reference,
    Classification, PixelSum, and the area where available), then the cross matrix, the
    error matrix and the regression where requested."""
    header = ["RasterValue", "Reference", "Classification", "PixelSum"]
    columns = [table.codes, table.pairs[:, 0], table.pairs[:, 1], table.counts]
    if table.area_available:
        header.append(f"Area [{table.unit}^2]")
        columns.append(table.areas)
    rows = zip(*(c.tolist() for c in columns), strict=True)
    text = [remotior_csv(header, rows, _SEPARATOR)]
    p = table.parameters
    if p.cross_matrix:
        text.append(_cross_matrix_text(table))
    if p.error_matrix and table.assessment is not None:
        text.append(_error_matrix_text(table, table.assessment))
    if p.regression and table.line is not None:
        text.append(_regression_text(table.line))
    return "".join(text)


def _assessment_message(a: Assessment, pixel_area: float, areas: bool) -> raster_pb2.ErrorMatrix:
    map_area = float(a.map_counts.sum()) * pixel_area if areas else math.nan
    estimated_area = a.estimated * map_area
    area_se = a.estimated_se * map_area
    accuracies = [
        raster_pb2.ClassAccuracy(
            class_value=int(a.classes[i]),
            map_pixel_count=int(a.map_counts[i]),
            weight=a.weights[i],
            classified_pixel_count=int(a.counts[i].sum()),
            reference_pixel_count=int(a.counts[:, i].sum()),
            users_accuracy=a.users[i],
            users_accuracy_standard_error=a.users_se[i],
            producers_accuracy=a.producers[i],
            producers_accuracy_standard_error=a.producers_se[i],
            sample_producers_accuracy=a.sample_producers[i],
            estimated_proportion=a.estimated[i],
            estimated_proportion_standard_error=a.estimated_se[i],
            estimated_area=estimated_area[i],
            estimated_area_standard_error=area_se[i],
            estimated_area_confidence_interval=_Z95 * area_se[i],
            conditional_kappa=a.conditional_kappa[i],
        )
        for i in range(len(a.classes))
    ]
    return raster_pb2.ErrorMatrix(
        classes=a.classes.tolist(),
        pixel_counts=a.counts.ravel().tolist(),
        proportions=a.proportions.ravel().tolist(),
        class_accuracies=accuracies,
        overall_accuracy=a.overall,
        overall_accuracy_standard_error=a.overall_se,
        sample_overall_accuracy=a.sample_overall,
        kappa=a.kappa,
        area_kappa=a.area_kappa,
        map_area=map_area,
        unsampled_proportion=a.unsampled,
    )


def _response(
    table: CrossTable, output_path: str, inputs: Sequence[Any], raster_path: str
) -> raster_pb2.CrossClassificationResponse:
    rows = [
        raster_pb2.CrossClassificationRow(
            raster_value=code, reference=reference, classification=classified,
            pixel_count=count, area=area,
        )
        for code, (reference, classified), count, area in zip(
            table.codes.tolist(), table.pairs.tolist(), table.counts.tolist(),
            table.areas.tolist(), strict=True,
        )
    ]  # fmt: skip
    classification, reference = inputs[0], inputs[1]
    response = raster_pb2.CrossClassificationResponse(
        input=raster_pb2.RasterBand(path=classification.path, band=classification.band),
        reference=raster_pb2.CrossClassificationReference(path=reference.path, band=reference.band),
        output_path=output_path,
        raster_path=raster_path,
        rows=rows,
        area_unit=table.unit if table.area_available else "",
        data_type=raster_pb2.DATA_TYPE_INT32,
        nodata=OUTPUT_NODATA,
    )
    if table.assessment is not None:
        response.error_matrix.CopyFrom(
            _assessment_message(table.assessment, table.pixel_area, table.area_available)
        )
    if table.line is not None:
        response.regression.CopyFrom(raster_pb2.LinearRegression(**vars(table.line)))
    return response


def _describe(p: CrossParameters) -> str:
    sections = [
        name
        for name, on in (
            ("the cross matrix", p.cross_matrix),
            ("the error matrix", p.error_matrix),
            ("the regression", p.regression),
        )
        if on
    ]
    nodata = "" if p.nodata_value is None else f", {p.nodata_value:g} as nodata"
    return (
        f"pairs of classification and reference{nodata}, with {', '.join(sections) or 'pairs only'}"
    )


def request_parameters(arguments: dict[str, Any]) -> raster_pb2.CrossClassificationParameters:
    """Remotior's `nodata_value`, `cross_matrix`, `error_matrix` and `regression_raster`."""
    message = raster_pb2.CrossClassificationParameters(
        cross_matrix=bool(arguments["cross_matrix"]),
        error_matrix=bool(arguments["error_matrix"]),
        regression=bool(arguments["regression_raster"]),
    )
    value = number_argument(arguments, "nodata_value")
    if value is not None:
        message.nodata_value = value
    return message


def request_fields(arguments: dict[str, Any]) -> dict[str, Any]:
    """Remotior's `reference_path` and `vector_field`, as the request's `reference`."""
    return {"reference": reference_argument(arguments, raster_pb2.CrossClassificationReference)}


def outcome(response: raster_pb2.CrossClassificationResponse, arguments: dict[str, Any]):
    """Remotior's paths, [raster, table], and its `extra`: `unique_values` (every value
    of either side of the pairs), and `regression_raster_b0` and `_b1`, None (the
    regression's numbers are in the table and the response, not in constant rasters)."""
    values = {v for row in response.rows for v in (row.reference, row.classification)}
    return [response.raster_path, response.output_path], {
        "unique_values": sorted(values),
        "regression_raster_b0": None,
        "regression_raster_b1": None,
    }


def _switch(flag: str, argument: str, help: str) -> spec.CliFlag:
    return spec.CliFlag(flag, argument, {"action": "store_true", "help": help})


CROSS_CLASSIFICATION = TableTool[CrossParameters](
    name="cross_classification",
    rpc="CrossClassification",
    command="cross-classification",
    summary="the pairs of a classification and a reference raster, coded in a raster, "
    "with their cross matrix, error matrix and accuracy assessment",
    request_type=raster_pb2.CrossClassificationRequest,
    response_type=raster_pb2.CrossClassificationResponse,
    parameters=_parameters,
    check_band=check_class_band,
    memory=_memory,
    kernel=cross_block,
    merge=_merge,
    rows=lambda partial: partial.rows,
    max_rows=MAX_CROSS_ROWS,
    table=_table,
    csv=cross_csv,
    response=_response,
    describe=_describe,
    request_parameters=request_parameters,
    input_argument="classification_path",
    inputs=(2, 2),
    request_bands=_request_bands,
    request_fields=request_fields,
    first_input_grid=True,
    raster=TableRaster[CrossParameters](
        wanted=lambda p: True,
        output=lambda p: (OUTPUT_DTYPE, OUTPUT_NODATA),
        memory=lambda p, dtypes: _memory(p, dtypes)[0],
        index=_index,
        kernel=cross_codes_block,
    ),
    outcome=outcome,
    cli_flags=(
        *reference_flags("reference classes"),
        spec.CliFlag(
            "--nodata-value",
            "nodata_value",
            {"type": float, "help": "a value that makes a pixel nodata in either raster"},
        ),
        _switch("--cross-matrix", "cross_matrix", "add the cross matrix to the table"),
        _switch("--error-matrix", "error_matrix", "add the error matrix and its assessment"),
        _switch("--regression", "regression_raster", "add the linear regression to the table"),
        _switch("--overwrite", "overwrite", "replace the raster and its table"),
        extent_flag("cross"),
    ),
)
