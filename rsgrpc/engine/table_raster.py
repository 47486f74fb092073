"""A table tool's raster (`rsgrpc.tools.table_spec.TableRaster`): a second pass over the
tiles of a table job, each worker computing its tile's pixels from the merged table and
encoding them, one writer (`RasterWriter`) publishing the raster whole or not at all. A
tool that declares several rasters has each worker compute its tile of every one, in the
same pass, a writer each.

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
    """Where a table tool's rasters go, and how: their paths (as the client names them,
    one unless the tool declares `TableRaster.paths`), their data type and nodata, and
    their encoding."""

    outputs: tuple[DataPath, ...]
    output_paths: tuple[str, ...]
    dtype: str
    nodata: float | None
    profile: OutputProfile

    @property
    def output_path(self) -> str:
        """The first raster's path: the only one of a tool that writes one."""
        return self.output_paths[0]


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
    paths = (path,) if raster.paths is None else raster.paths(parameters, path, len(inputs))
    outputs = tuple(
        raster_output(data_root, p, field="output path", overwrite=overwrite) for p in paths
    )
    dtype, nodata = raster.output(parameters)
    fitted = (profile or DEFAULT_PROFILE).fitted_to(grid.width, grid.height)
    fitted.check_dtype(dtype, output=path)
    planned = [PlannedOutput(o, grid.shape, dtype, inputs[0].path) for o in outputs]
    check_job_limits(planned, fitted, session)
    return RasterTarget(outputs, paths, dtype, nodata, fitted)


def raster_memory(
    raster: TableRaster, parameters: Any, dtypes: Sequence[np.dtype], target: RasterTarget
) -> tuple[float, float]:
    """What the raster pass takes per tile pixel, as (worker, result): the kernel's
    bytes, the tile's outputs and their encoding; the encoded tiles wait in the job."""
    size = np.dtype(target.dtype).itemsize * len(target.outputs)
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
    several: bool  # the kernel's pixels are stacked, a raster each (`TableRaster.paths`)


def _raster_tile(work: RasterTileWork, tile: Tile) -> tuple[list[Any], int]:
    """Runs in a worker: read the tile of every band, compute its pixels, encode them (a
    tile of each raster)."""
    blocks = tuple(source.read(tile) for source in work.sources)
    out = work.kernel(blocks, work.parameters, work.index, work.nodatas, *work.output)
    rasters = out if work.several else (out,)
    encoded = [encode_output_tile(pixels, tile, work.profile) for pixels in rasters]
    return encoded, sum(b.nbytes for b in blocks)


class RasterWriters:
    """The writers of a table tool's rasters, committed together: a raster that cannot
    be published takes back those published before it."""

    def __init__(self, writers: Sequence[RasterWriter]) -> None:
        self._writers = tuple(writers)

    def commit(self) -> int:
        """Publish every raster; returns their size in bytes."""
        written = 0
        for count, writer in enumerate(self._writers):
            try:
                written += writer.commit()
            except BaseException:
                for published in self._writers[:count]:
                    published.unpublish()
                raise
        return written


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
) -> Iterator[RasterWriters]:
    """Every tile of the rasters computed and written; yields their writers for the caller
    to commit, and removes the rasters if it does not."""
    work = RasterTileWork(
        raster.kernel,
        parameters,
        raster.index(parameters, merged),
        sources,
        nodatas,
        (target.dtype, target.nodata),
        target.profile,
        raster.paths is not None,
    )
    with contextlib.ExitStack() as stack:
        writers = [
            stack.enter_context(
                RasterWriter(
                    output,
                    width=grid.width,
                    height=grid.height,
                    dtype=target.dtype,
                    nodata=target.nodata,
                    crs=grid.crs,
                    transform=grid.transform,
                    profile=target.profile,
                    overwrite=overwrite,
                    scratch_directory=session.temporary_directory,
                )
            )
            for output in target.outputs
        ]

        def consume(result: tuple[list[Any], int]) -> None:
            encoded, read = result
            for writer, tile in zip(writers, encoded, strict=True):
                writer.write(tile)
            counter.add(read=read, written=sum(tile.data.nbytes for tile in encoded))

        run_tiles(
            session.executor,
            operation,
            plan.tiles(),
            lambda tile: (_raster_tile, (work, tile)),
            consume,
            in_flight=plan.in_flight,
        )
        yield RasterWriters(writers)
