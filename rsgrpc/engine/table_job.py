"""A declared table tool (`rsgrpc.tools.table_spec.TableTool`) as a tiled job: each worker
reads its tile of the input bands, placed on their grid as band tools place them
(`rsgrpc.engine.grid.band_tool_grids`), and returns the tile's partial table; the job
merges the partials exactly as they arrive, finishes the table and writes it as a text
file (a CSV) under the data roots, published whole or not at all.

Everything a table tool declares is used here and only here: its checks of the bands
at the door, its memory per pixel and per row in the tile plan, its kernel in the
workers, its merge, its row limit and its table and file in the job.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
from rasterio.crs import CRS

from rsgrpc.engine.band_tool import (
    BandInput,
    PlacedBand,
    Placement,
    TileCounter,
    session_fixed_bytes,
)
from rsgrpc.engine.errors import InvalidArgumentError, ResourceExhaustedError
from rsgrpc.engine.grid import Grid, band_tool_grids, sample_onto
from rsgrpc.engine.halo_job import invalid_argument
from rsgrpc.engine.limits import check_raster_pixels
from rsgrpc.engine.operations import Operation, Stage
from rsgrpc.engine.partial_output import PartialOutput, partial_output
from rsgrpc.engine.paths import DataPath, DataRoot
from rsgrpc.engine.raster_io import DEFAULT_PROFILE, OutputProfile, RasterInfo, describe
from rsgrpc.engine.session import Session
from rsgrpc.engine.table_raster import (
    RasterTarget,
    prepare_table_raster,
    raster_memory,
    written_raster,
)
from rsgrpc.engine.tiled_job import run_tiles
from rsgrpc.engine.tiles import MemoryModel, Tile, TilePlan, plan_tiles
from rsgrpc.tools.table_spec import TableGrid, TableTool

P = TypeVar("P")
# Partial tables wait until they hold as many rows as the merged table, and at least
# this many, before they are merged into it: each row is merged a few times, not once
# per tile.
_BATCH_ROWS = 1 << 16


@dataclass(frozen=True)
class TableRequest(Generic[P]):
    """A table tool's request: its checked parameters, its bands and its file."""

    tool: TableTool[P]
    parameters: P
    inputs: tuple[BandInput, ...]
    output_path: str
    overwrite: bool = False
    placement: Placement = field(default_factory=Placement)
    profile: OutputProfile | None = None  # the raster's encoding (`TableTool.raster`)


@dataclass(frozen=True)
class TableJob:
    """A validated table request: its bands on their grid, its file (None where the
    request asks for none), its raster (None without one) and its tile plan."""

    request: TableRequest
    infos: tuple[RasterInfo, ...]
    sources: tuple[PlacedBand, ...]
    grid: Grid
    output: DataPath | None
    output_path: str  # as the client names it, with the tool's suffix
    plan: TilePlan
    raster: RasterTarget | None = None


@dataclass(frozen=True)
class TableResult:
    """A finished table, the file it was written to and the raster made from it ("" for
    what was not written)."""

    output_path: str
    table: Any
    raster_path: str = ""
    # Every raster's path, where the tool writes several (`TableRaster.paths`).
    raster_paths: tuple[str, ...] = ()


def crs_unit(crs: str) -> str | None:
    """The CRS's unit as Remotior reads it from GDAL (the root node's UNIT): the linear
    unit of a projected CRS (``metre``), ``degree`` for a geographic one, None without
    a CRS."""
    if not crs:
        return None
    parsed = CRS.from_wkt(crs)
    return "degree" if parsed.is_geographic else parsed.linear_units


def table_grid(grid: Grid, paths: tuple[str, ...] = ()) -> TableGrid:
    a, _, _, _, e = grid.transform[:5]
    return TableGrid(abs(a), abs(e), crs_unit(grid.crs), paths)


def prepare_table_job(request: TableRequest, data_root: DataRoot, session: Session) -> TableJob:
    """Check a request completely and plan its tiles; raise what the client should see."""
    tool, parameters, inputs = request.tool, request.parameters, request.inputs
    fewest, most = tool.inputs
    if not fewest <= len(inputs) <= most:
        wanted = str(fewest) if fewest == most else f"from {fewest} to {most}"
        raise InvalidArgumentError(
            f"{tool.rpc} takes {wanted} input band(s), got {len(inputs)}",
            metadata={"field": "inputs"},
        )
    if not request.output_path:
        raise InvalidArgumentError("output path is empty", metadata={"field": "output path"})
    infos = tuple(describe(data_root.path(b.path, field="input path"), b.band) for b in inputs)
    output_path = tool.output_path(request.output_path)
    output = None
    if tool.table_file(parameters):
        output = data_root.output(output_path, field="output path", overwrite=request.overwrite)
    for band, info in zip(inputs, infos, strict=True):
        where = f"input {band.path!r} band {band.band}"
        with invalid_argument(path=band.path):
            tool.check_band(parameters, np.dtype(info.dtype), info.nodata, where)
    placement = request.placement
    grids = band_tool_grids(
        infos,
        [b.path for b in inputs],
        extent=placement.extent,
        multiple_resolution=placement.multiple_resolution and not tool.first_input_grid,
    )
    grid = grids[0]
    if any((g.shape, g.transform) != (grid.shape, grid.transform) for g in grids[1:]):
        raise InvalidArgumentError(
            f"the inputs of {tool.rpc} are not on one grid; read them onto the first "
            "input's grid (input_grid.first_input_resolution)"
        )
    check_raster_pixels(grid.shape, session.limits, client_path=inputs[0].path)
    samplings = [sample_onto(info, grid) for info in infos]
    sources = tuple(
        PlacedBand(info.path, info.band, grid.shape, sampling)
        for info, sampling in zip(infos, samplings, strict=True)
    )
    dtypes = [np.dtype(i.dtype) for i in infos]
    worker, partial, row = tool.memory(parameters, dtypes)
    raster = None
    if tool.raster is not None and tool.raster.wanted(parameters):
        raster = prepare_table_raster(
            tool.raster,
            parameters,
            request.output_path,
            overwrite=request.overwrite,
            profile=request.profile,
            grid=grid,
            inputs=inputs,
            data_root=data_root,
            session=session,
        )
        raster_worker, raster_result = raster_memory(tool.raster, parameters, dtypes, raster)
        worker, partial = max(worker, raster_worker), max(partial, raster_result)
    # An input read onto the grid holds its pixels under the window and the window's copy.
    worker += sum(
        (s.ratio + 1) * np.dtype(i.dtype).itemsize
        for i, s in zip(infos, samplings, strict=True)
        if s is not None
    )
    block = (raster.profile if raster else DEFAULT_PROFILE).block_size
    # The raster's workers each hold the merged table's index beside their tile.
    table_bytes = int(tool.max_rows * row) * (1 + (session.executor.workers if raster else 0))
    plan = plan_tiles(
        grid.shape,
        [
            i.block_shape if s is None else (block, block)
            for i, s in zip(infos, samplings, strict=True)
        ],
        MemoryModel(worker=worker, result=partial),
        output_block=block,
        budget_bytes=session.settings.available_ram_mib << 20,
        workers=session.executor.workers,
        fixed_bytes=session_fixed_bytes(session) + table_bytes,
        max_tile_edge=session.executor.max_tile_edge,
    )
    return TableJob(request, infos, sources, grid, output, output_path, plan, raster)


@dataclass(frozen=True)
class TableTileWork:
    """What a worker needs to compute any tile's partial table: the tool's kernel (a
    module-level function, pickled by name) and parameters, never its declaration."""

    kernel: Callable[..., Any]
    parameters: Any
    sources: tuple[PlacedBand, ...]
    nodatas: tuple[float | None, ...]
    with_tile: bool = False  # the kernel also takes the tile (`TableTool.kernel_tile`)


def _table_tile(work: TableTileWork, tile: Tile) -> tuple[Any, int]:
    """Runs in a worker: read the tile of every band, compute its partial table."""
    blocks = tuple(source.read(tile) for source in work.sources)
    where = {"tile": tile} if work.with_tile else {}
    partial = work.kernel(blocks, work.parameters, work.nodatas, **where)
    return partial, sum(b.nbytes for b in blocks)


class MergedTable:
    """Partial tables merged as they arrive, in batches (`_BATCH_ROWS`); more rows than
    the tool's `max_rows` is ResourceExhaustedError."""

    def __init__(self, tool: TableTool, where: str) -> None:
        self._tool = tool
        self._where = where
        self._merged: Any = None
        self._rows = 0
        self._pending: list[Any] = []
        self._pending_rows = 0

    def add(self, partial: Any) -> None:
        self._pending.append(partial)
        self._pending_rows += self._tool.rows(partial)
        if self._pending_rows >= max(self._rows, _BATCH_ROWS):
            self._merge()

    def result(self) -> Any:
        """The merged table of every partial added."""
        self._merge()
        return self._merged

    def _merge(self) -> None:
        parts = [self._merged] if self._merged is not None else []
        self._merged = self._tool.merge(parts + self._pending)
        self._pending, self._pending_rows = [], 0
        self._rows = self._tool.rows(self._merged)
        if self._rows > self._tool.max_rows:
            raise ResourceExhaustedError(
                f"{self._tool.name} of {self._where} has more than {self._tool.max_rows:,} "
                "rows (distinct values); it is meant for classified rasters",
                metadata={"max_rows": str(self._tool.max_rows)},
            )


def write_text_output(output: DataPath, text: str, *, overwrite: bool) -> int:
    """`text` as UTF-8 in the file `output`, published whole (`PartialOutput`); returns
    its size in bytes."""
    with staged_text_output(output, text, overwrite=overwrite) as partial:
        return partial.publish()


@contextlib.contextmanager
def staged_text_output(output: DataPath, text: str, *, overwrite: bool) -> Iterator[PartialOutput]:
    """`text` as UTF-8 in the partial file of `output`, for the caller to publish; removed
    if it does not."""
    data = text.encode()
    with partial_output(output, overwrite=overwrite) as partial:
        partial.write(data)
        yield partial


def _reduced_table(
    job: TableJob,
    work: TableTileWork,
    where: str,
    session: Session,
    operation: Operation,
    counter: TileCounter,
) -> Any:
    """One pass over the tiles in the session's workers, partial tables merged as they
    arrive; the merged table."""
    merged = MergedTable(job.request.tool, where)

    def consume(result: tuple[Any, int]) -> None:
        partial, read = result
        merged.add(partial)
        counter.add(read=read)

    run_tiles(
        session.executor,
        operation,
        job.plan.tiles(),
        lambda tile: (_table_tile, (work, tile)),
        consume,
        in_flight=job.plan.in_flight,
    )
    return merged.result()


def run_table_job(job: TableJob, session: Session, operation: Operation) -> TableResult:
    """The job: tiles in the session's workers, partial tables merged as they arrive,
    then the table finished and written."""
    request = job.request
    tool, parameters = request.tool, request.parameters
    where = ", ".join(f"{b.path!r} band {b.band}" for b in request.inputs)
    session.logger.info(
        "%s: %s of %s: %s", operation.name, tool.process, where, tool.describe(parameters)
    )
    table_passes = tool.passes(parameters)
    passes = table_passes + (1 if job.raster else 0)
    counter = TileCounter(operation, passes * job.plan.tile_count)
    nodatas = tuple(info.nodata for info in job.infos)
    for _ in range(table_passes):
        work = TableTileWork(
            tool.kernel, parameters, job.sources, nodatas, with_tile=tool.kernel_tile
        )
        result = _reduced_table(job, work, where, session, operation, counter)
        if tool.next_pass is None:
            break
        # Parameters that the bands cannot give (no valid pixel to seed from) are the
        # client's INVALID_ARGUMENT.
        with invalid_argument():
            parameters, again = tool.next_pass(parameters, result)
        if not again:
            break
    paths = tuple(b.path for b in request.inputs)
    # A table that its parameters cannot make from these bands (too many classes for a
    # matrix) is the client's INVALID_ARGUMENT, found once the bands are read.
    with invalid_argument():
        table = tool.table(parameters, result, table_grid(job.grid, paths))
    with contextlib.ExitStack() as stack:
        writer = None
        if job.raster is not None:
            writer = stack.enter_context(
                written_raster(
                    tool.raster,
                    parameters,
                    result,
                    job.raster,
                    overwrite=request.overwrite,
                    grid=job.grid,
                    sources=job.sources,
                    nodatas=nodatas,
                    plan=job.plan,
                    session=session,
                    operation=operation,
                    counter=counter,
                )
            )
        operation.update(stage=Stage.FINALIZING)
        text = None
        if job.output is not None:
            text = stack.enter_context(
                staged_text_output(job.output, tool.csv(table), overwrite=request.overwrite)
            )
        written = text.publish() if text is not None else 0
        try:
            written += writer.commit() if writer is not None else 0
        except BaseException:
            if text is not None:
                text.unpublish()
            raise
    operation.update(bytes_written=counter.written + written)
    return TableResult(
        job.output_path if job.output else "",
        table,
        job.raster.output_path if job.raster else "",
        job.raster.output_paths if job.raster else (),
    )
