"""A table tool's raster (`rsgrpc.tools.table_spec.TableRaster`): a second pass over the
tiles of a table job, each worker computing its tile's pixels from the merged table and
encoding them, one writer (`RasterWriter`) publishing the raster whole or not at all.

The job (`rsgrpc.engine.table_job`) checks the raster's path and limits here at the
door, plans its tiles for the larger of its two passes, and runs this pass once the
table is merged; it commits the raster with the table's file, so that a job that fails
or is cancelled leaves neither.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from rsgrpc.engine.band_tool import BandInput, PlacedBand, TileCounter
from rsgrpc.engine.errors import InvalidArgumentError
from rsgrpc.engine.grid import Grid
from rsgrpc.engine.limits import PlannedOutput, check_job_limits
from rsgrpc.engine.operations import Operation
from rsgrpc.engine.paths import DataPath, DataRoot
from rsgrpc.engine.raster_io import (
    DEFAULT_PROFILE,
    OutputProfile,
    RasterWriter,
    encode_output_tile,
    raster_output,
)
from rsgrpc.engine.session import Session
from rsgrpc.engine.tiled_job import run_tiles
from rsgrpc.engine.tiles import Tile, TilePlan
from rsgrpc.engine.virtual_raster import VRT_SUFFIX
from rsgrpc.tools.table_spec import TableRaster

_SUFFIXES = (".tif", ".tiff", VRT_SUFFIX)


@dataclass(frozen=True)
class RasterTarget:
    """Where a table tool's raster goes, and how: its path (as the client names it), its
    data type and nodata, and its encoding."""

    output: DataPath
    output_path: str
    dtype: str
    nodata: float | None
    profile: OutputProfile


def prepare_table_raster(
    raster: TableRaster,
    parameters: Any,
    path: str,
    *,
    overwrite: bool,
    profile: OutputProfile | None,
    grid: Grid,
    inputs: Sequence[BandInput],
    data_root: DataRoot,
    session: Session,
) -> RasterTarget:
    """Check the raster's path, encoding and the server's limits for it; raise what the
    client should see."""
    if PurePosixPath(path).suffix.lower() not in _SUFFIXES:
        raise InvalidArgumentError(
            f"output path {path!r} must name a .tif, .tiff or .vrt raster",
            metadata={"field": "output path"},
        )
    output = raster_output(data_root, path, field="output path", overwrite=overwrite)
    dtype, nodata = raster.output(parameters)
    fitted = (profile or DEFAULT_PROFILE).fitted_to(grid.width, grid.height)
    fitted.check_dtype(dtype, output=path)
    check_job_limits([PlannedOutput(output, grid.shape, dtype, inputs[0].path)], fitted, session)
    return RasterTarget(output, path, dtype, nodata, fitted)


def raster_memory(
    raster: TableRaster, parameters: Any, dtypes: Sequence[np.dtype], target: RasterTarget
) -> tuple[float, float]:
    """What the raster pass takes per tile pixel, as (worker, result): the kernel's
    bytes, the tile's output and its encoding; the encoded tile waits in the job."""
    size = np.dtype(target.dtype).itemsize
    return raster.memory(parameters, dtypes) + 2 * size, size


@dataclass(frozen=True)
class RasterTileWork:
    """What a worker needs to compute any tile of the raster: the kernel (a module-level
    function, pickled by name), the parameters and the merged table's index."""

    kernel: Callable[..., np.ndarray]
    parameters: Any
    index: Any
    sources: tuple[PlacedBand, ...]
    nodatas: tuple[float | None, ...]
    output: tuple[str, float | None]
    profile: OutputProfile


def _raster_tile(work: RasterTileWork, tile: Tile) -> tuple[Any, int]:
    """Runs in a worker: read the tile of every band, compute its pixels, encode them."""
    blocks = tuple(source.read(tile) for source in work.sources)
    out = work.kernel(blocks, work.parameters, work.index, work.nodatas, *work.output)
    return encode_output_tile(out, tile, work.profile), sum(b.nbytes for b in blocks)


@contextlib.contextmanager
def written_raster(
    raster: TableRaster,
    parameters: Any,
    merged: Any,
    target: RasterTarget,
    *,
    overwrite: bool,
    grid: Grid,
    sources: tuple[PlacedBand, ...],
    nodatas: tuple[float | None, ...],
    plan: TilePlan,
    session: Session,
    operation: Operation,
    counter: TileCounter,
) -> Iterator[RasterWriter]:
    """Every tile of the raster computed and written; yields the writer for the caller to
    commit, and removes the raster if it does not."""
    work = RasterTileWork(
        raster.kernel,
        parameters,
        raster.index(parameters, merged),
        sources,
        nodatas,
        (target.dtype, target.nodata),
        target.profile,
    )
    with RasterWriter(
        target.output,
        width=grid.width,
        height=grid.height,
        dtype=target.dtype,
        nodata=target.nodata,
        crs=grid.crs,
        transform=grid.transform,
        profile=target.profile,
        overwrite=overwrite,
        scratch_directory=session.temporary_directory,
    ) as writer:

        def consume(result: tuple[Any, int]) -> None:
            encoded, read = result
            writer.write(encoded)
            counter.add(read=read, written=encoded.data.nbytes)

        run_tiles(
            session.executor,
            operation,
            plan.tiles(),
            lambda tile: (_raster_tile, (work, tile)),
            consume,
            in_flight=plan.in_flight,
        )
        yield writer
