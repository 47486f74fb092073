"""Band PCA, declared: the principal components of a band set, as a raster per component
and the table of the covariance, correlation, eigenvectors and eigenvalues (Remotior's
`band_pca`, `rsgrpc_kernels.pca`).

The table is the bands' moments over the pixels valid in every band (count, means and
co-moments in float64, merged over tiles with Chan's formula), so it is the same for any
tiling to rounding. The covariance is the sample covariance (divided by count - 1, as
Remotior's); with `normalize`, the correlation matrix is decomposed instead and the
components project the standardized bands. Components are ordered by decreasing
eigenvalue, and each eigenvector's sign is fixed so that its largest-magnitude loading
(the first such) is positive, as `np.linalg.eigh` leaves it undefined.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from rsgrpc.tools import spec
from rsgrpc.tools.table_spec import (
    TableGrid,
    TableRaster,
    TableTool,
    extent_flag,
    number_argument,
)
from rsgrpc.v1 import raster_pb2

MAX_INPUTS = 64
# Remotior's components: float32, with its default nodata.
OUTPUT_DTYPE = "float32"
OUTPUT_NODATA = -32768.0
# Every component, Remotior's None.
_ALL_COMPONENTS = -1


@dataclass(frozen=True)
class PcaParameters:
    """Whether the correlation matrix is decomposed (Remotior's `normalize`), the most
    components written as rasters (None: one per band) and an extra nodata value."""

    normalize: bool
    components: int | None
    nodata_value: float | None

    def component_count(self, bands: int) -> int:
        """The rasters written for `bands` bands."""
        return bands if self.components is None else min(self.components, bands)


@dataclass(frozen=True)
class PcaTable:
    """The finished analysis: the pixels valid in every band, each band's mean, the
    covariance and correlation matrices, the eigenvalues in decreasing order with their
    eigenvectors (a column each), the percentage of the variance each accounts for and
    the cumulative one, how many components are written, and what each band is divided
    by before it is projected (its standard deviation with `normalize`, else 1)."""

    count: int
    mean: np.ndarray
    covariance: np.ndarray
    correlation: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    explained: np.ndarray
    cumulative: np.ndarray
    components: int
    scale: np.ndarray


def _parameters(message: raster_pb2.BandPcaParameters) -> PcaParameters:
    components = None
    if message.HasField("number_components") and message.number_components != _ALL_COMPONENTS:
        components = message.number_components
        if components < 1:
            raise spec.ParameterError(
                f"number_components must be at least 1, or -1 for every band, got {components}",
                metadata={"field": "number_components"},
            )
    nodata_value = message.nodata_value if message.HasField("nodata_value") else None
    return PcaParameters(message.normalize, components, nodata_value)


def _check_band(p: PcaParameters, dtype: np.dtype, nodata: float | None, where: str) -> None:
    spec.check_pixel_type(dtype, nodata, where, "iuf")


def _memory(p: PcaParameters, dtypes: Sequence[np.dtype]) -> tuple[float, float, float]:
    """Per pixel, a mask, a band's valid values in its type and two float64 copies of
    every band's (`rsgrpc_kernels.pca.band_moments`); a partial table is a mean and a
    row of co-moments per band, whatever the tile's pixels."""
    bands = len(dtypes)
    worker = 1 + max(d.itemsize for d in dtypes) + 16 * bands
    return worker, 0.0, 8 * (bands + 2)


def _raster_memory(p: PcaParameters, dtypes: Sequence[np.dtype]) -> float:
    """Per pixel, the moments' scratch and a float64 value per component and its copy
    (`rsgrpc_kernels.pca.project_components`)."""
    components = p.component_count(len(dtypes))
    return _memory(p, dtypes)[0] + 16 * components


def moments_block(
    blocks: Sequence[np.ndarray], p: PcaParameters, nodatas: Sequence[float | None]
) -> Any:
    """Runs in a worker: the tile's moments over its pixels valid in every band."""
    from rsgrpc_kernels.pca import band_moments

    return band_moments(blocks, nodatas, p.nodata_value)


def _merge(partials: list[Any]) -> Any:
    from rsgrpc_kernels.pca import merge_moments

    return merge_moments(partials)


def _signed(vectors: np.ndarray) -> np.ndarray:
    """Each column with its largest-magnitude loading (the first such) positive."""
    largest = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])]
    return vectors * np.where(largest < 0, -1.0, 1.0)


def decompose(p: PcaParameters, merged: Any) -> PcaTable:
    """The analysis of the merged moments; fewer than two valid pixels is ParameterError."""
    if merged.count < 2:
        raise spec.ParameterError(
            f"{merged.count} pixel(s) are valid in every band; a covariance needs at least 2"
        )
    covariance = merged.comoment / (merged.count - 1)
    deviation = np.sqrt(np.diag(covariance))
    # A constant band standardizes to 0: its correlations are 0, and it is divided by 1.
    scale = np.where(deviation > 0, deviation, 1.0)
    correlation = covariance / np.outer(scale, scale)
    correlation[deviation == 0, :] = 0.0
    correlation[:, deviation == 0] = 0.0
    values, vectors = np.linalg.eigh(correlation if p.normalize else covariance)
    order = np.argsort(-values, kind="stable")
    values, vectors = values[order], _signed(vectors[:, order])
    total = values.sum()
    explained = values / total * 100 if total > 0 else np.zeros_like(values)
    return PcaTable(
        count=merged.count,
        mean=merged.mean,
        covariance=covariance,
        correlation=correlation,
        eigenvalues=values,
        eigenvectors=vectors,
        explained=explained,
        cumulative=np.cumsum(explained),
        components=p.component_count(len(values)),
        scale=scale if p.normalize else np.ones_like(scale),
    )


def _table(p: PcaParameters, merged: Any, grid: TableGrid) -> PcaTable:
    return decompose(p, merged)


def _matrix_text(header: Sequence[str], matrix: np.ndarray) -> str:
    """A matrix as Remotior's `np.savetxt(..., fmt='%1.4f')`, its band numbers first."""
    lines = [",".join(header)]
    for band, row in enumerate(matrix, 1):
        lines.append(",".join(f"{x:1.4f}" for x in (band, *row)))
    return "\n".join(lines) + "\n"


def pca_csv(table: PcaTable) -> str:
    """Remotior's table file: the covariance and correlation matrices and the
    eigenvectors (a column each), a row per band, then a line per eigenvalue with its
    accounted and cumulative variance (percent); numbers as "%1.4f" with every ".0000"
    dropped, as Remotior writes them."""
    bands = [str(b) for b in range(1, len(table.mean) + 1)]
    vectors = [f"Vector_{b}" for b in bands]
    eigen = "".join(
        f"{v:1.4f},{e:1.4f},{c:1.4f}\n"
        for v, e, c in zip(table.eigenvalues, table.explained, table.cumulative, strict=True)
    )
    text = (
        "Principal Components Analysis\n\n"
        f"Covariance matrix\n{_matrix_text(['Bands', *bands], table.covariance)}\n"
        f"Correlation matrix\n{_matrix_text(['Bands', *bands], table.correlation)}\n"
        f"Eigenvectors\n{_matrix_text(['Bands', *vectors], table.eigenvectors)}\n"
        f"Eigenvalues,Accounted variance,Cumulative variance\n{eigen}"
    )
    return text.replace(".0000", "")


def _response(
    table: PcaTable, output_path: str, inputs: Sequence[Any], raster_paths: Sequence[str]
) -> raster_pb2.BandPcaResponse:
    rows = [
        raster_pb2.BandPcaRow(
            component=number,
            eigenvalue=value,
            explained_variance=explained,
            cumulative_variance=cumulative,
            eigenvector=vector,
        )
        for number, value, explained, cumulative, vector in zip(
            range(1, len(table.eigenvalues) + 1),
            table.eigenvalues.tolist(),
            table.explained.tolist(),
            table.cumulative.tolist(),
            table.eigenvectors.T.tolist(),
            strict=True,
        )
    ]
    return raster_pb2.BandPcaResponse(
        inputs=[raster_pb2.RasterBand(path=b.path, band=b.band) for b in inputs],
        output_path=output_path,
        raster_paths=raster_paths,
        pixel_count=table.count,
        means=table.mean.tolist(),
        covariance=table.covariance.ravel().tolist(),
        correlation=table.correlation.ravel().tolist(),
        rows=rows,
        data_type=raster_pb2.DATA_TYPE_FLOAT32,
        nodata=OUTPUT_NODATA,
    )


def component_paths(p: PcaParameters, path: str, bands: int) -> tuple[str, ...]:
    """Remotior's names of the components: `{stem}_pc{n}` beside `path`, with its suffix."""
    pure = PurePosixPath(path)
    return tuple(
        str(pure.with_name(f"{pure.stem}_pc{n}{pure.suffix}"))
        for n in range(1, p.component_count(bands) + 1)
    )


def components_block(
    blocks: Sequence[np.ndarray],
    p: PcaParameters,
    index: tuple[np.ndarray, np.ndarray, np.ndarray],
    nodatas: Sequence[float | None],
    out_dtype: str,
    out_nodata: float | None,
) -> np.ndarray:
    """Runs in a worker: each pixel's components, stacked a raster each."""
    from rsgrpc_kernels.pca import project_components

    mean, scale, vectors = index
    return project_components(
        blocks, nodatas, p.nodata_value, mean, scale, vectors, out_dtype, out_nodata
    )


def _index(p: PcaParameters, merged: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = decompose(p, merged)
    return table.mean, table.scale, table.eigenvectors[:, : table.components]


def _describe(p: PcaParameters) -> str:
    matrix = "correlation" if p.normalize else "covariance"
    count = "every" if p.components is None else f"at most {p.components}"
    nodata = "" if p.nodata_value is None else f", {p.nodata_value:g} as nodata"
    return f"principal components of the {matrix} matrix, {count} component written{nodata}"


def request_parameters(arguments: dict[str, Any]) -> raster_pb2.BandPcaParameters:
    """Remotior's `normalize`, `number_components` (None: every band) and `nodata_value`."""
    message = raster_pb2.BandPcaParameters(normalize=bool(arguments["normalize"]))
    components = arguments["number_components"]
    if components is not None:
        if isinstance(components, bool) or not isinstance(components, int | np.integer):
            raise spec.ParameterError(f"number_components must be an integer, got {components!r}")
        if components < _ALL_COMPONENTS or components == 0:
            raise spec.ParameterError(
                f"number_components must be at least 1, or -1 for every band, got {components}"
            )
        message.number_components = min(int(components), MAX_INPUTS)
    value = number_argument(arguments, "nodata_value")
    if value is not None:
        message.nodata_value = value
    return message


def outcome(response: raster_pb2.BandPcaResponse, arguments: dict[str, Any]):
    """Remotior's paths, the components' rasters, and its `extra`, the table's path."""
    return list(response.raster_paths), {"table": response.output_path}


BAND_PCA = TableTool[PcaParameters](
    name="band_pca",
    rpc="BandPca",
    command="band-pca",
    summary="principal components of a band set, a raster per component and a table of "
    "the covariance, eigenvectors and eigenvalues",
    request_type=raster_pb2.BandPcaRequest,
    response_type=raster_pb2.BandPcaResponse,
    parameters=_parameters,
    check_band=_check_band,
    memory=_memory,
    kernel=moments_block,
    merge=_merge,
    rows=lambda partial: len(partial.mean),
    max_rows=MAX_INPUTS,
    table=_table,
    csv=pca_csv,
    response=_response,
    describe=_describe,
    request_parameters=request_parameters,
    input_argument="input_bands",
    inputs=(1, MAX_INPUTS),
    raster=TableRaster[PcaParameters](
        wanted=lambda p: True,
        output=lambda p: (OUTPUT_DTYPE, OUTPUT_NODATA),
        memory=_raster_memory,
        index=_index,
        kernel=components_block,
        paths=component_paths,
    ),
    outcome=outcome,
    cli_flags=(
        spec.CliFlag(
            "--normalize",
            "normalize",
            {"action": "store_true", "help": "decompose the correlation matrix"},
        ),
        spec.CliFlag(
            "--number-components",
            "number_components",
            {"type": int, "help": "write at most this many components (default: every band)"},
        ),
        spec.CliFlag(
            "--nodata-value",
            "nodata_value",
            {"type": float, "help": "a value that makes a pixel nodata in any band"},
        ),
        spec.CliFlag("--overwrite", "overwrite", {"action": "store_true"}),
        extent_flag("analyse"),
    ),
)
