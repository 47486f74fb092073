"""A declared tool whose output depends on whole connected patches (`RasterTool` with
``whole_regions``: Remotior's `raster_label`) as a tiled job in three passes, on the
sieve's machinery (`rsgrpc_kernels.label`, `rsgrpc.engine.kept_tiles`):

1. Each worker labels one tile with the tool's kernel and returns the tile's labels and
   its summary (each patch's first pixel and size, the labels on its edges). The job
   keeps the input tile and its labels in a file in the session's temporary directory
   until pass 3, and the summary in memory.
2. One worker merges the summaries across seams and numbers every patch of the raster.
3. The job reads each tile back, looks its labels up in the numbering, encodes it and
   hands it to the one writer.

Memory. A worker in pass 1 holds what the tool's memory model counts per tile pixel;
the summaries grow with the number of patches (16 bytes each) and the seams, not with
the raster's area; after pass 1 the job checks that they, held once by the job and once
by the pass-2 worker, fit the budget beside the workers' footprint. Disk: the kept
tiles take the input's bytes plus 4 bytes a pixel, removed as pass 3 goes.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsgrpc.engine import band_tool
from rsgrpc.engine.band_tool import BandJob, BandTask
from rsgrpc.engine.errors import ResourceExhaustedError
from rsgrpc.engine.halo_job import HaloRequest, output_of, prepare_halo_job
from rsgrpc.engine.kept_tiles import (
    check_summaries_fit,
    keep_arrays,
    kept_path,
    read_kept,
    write_kept_tiles,
)
from rsgrpc.engine.limits import check_job_limits, uncompressed_bytes
from rsgrpc.engine.operations import Operation, Stage
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.raster_io import OutputProfile, encode_output_tile
from rsgrpc.engine.session import Session
from rsgrpc.engine.tiled_job import run_tiles
from rsgrpc.engine.tiles import Tile, TilePlan

# The pass-2 worker's tables, per byte of summary.
_NUMBERING_OVERHEAD = 4


@dataclass(frozen=True)
class LabelOutput:
    """What a labelling did to one input band."""

    input: band_tool.BandInput
    output_path: str
    pixels_changed: int
    region_count: int


def _check_limits(job: BandJob[HaloRequest], session: Session) -> None:
    """The server's limits, with the tiles kept in the session's temporary directory: the
    largest band's input and labels, since bands are labelled in turn."""
    outputs = [output_of(job.request, task) for task in job.tasks]
    check_job_limits(
        band_tool.planned_outputs(job.tasks, [dtype for dtype, _ in outputs]),
        job.profile,
        session,
        temporary_bytes=max(
            uncompressed_bytes(t.shape, t.info.dtype) + uncompressed_bytes(t.shape, "int32")
            for t in job.tasks
        ),
    )


def prepare_label_job(
    request: HaloRequest, data_root: DataRoot, session: Session, default_profile: OutputProfile
) -> BandJob[HaloRequest]:
    """Check a request completely and plan its tiles (as a halo job with no halo, the
    tool's memory model per tile pixel); raise what the client should see."""
    job = prepare_halo_job(request, data_root, session, default_profile)
    _check_limits(job, session)
    return job


def _label_tile(tile: Tile, source: band_tool.PlacedBand, nodata, kernel, parameters):
    """Pass 1, in a worker: the tile of the task's grid, read through it, labelled."""
    from rsgrpc_kernels.label import TilePlacement

    array = source.read(tile)
    labelled = kernel(array, parameters, TilePlacement(tile.row, tile.col, *source.shape), nodata)
    return tile, array, labelled


def _number(summaries: list, parameters) -> tuple[list, int]:
    """Pass 2, in a worker."""
    from rsgrpc_kernels.label import number_tiles

    return number_tiles(
        summaries, connectivity=parameters.connectivity, pixel_count=parameters.pixel_count
    )


def _finish(path: Path, tile: Tile, values: np.ndarray, profile: OutputProfile):
    """Pass 3, in the job: a kept tile numbered, encoded, and its pixels changed."""
    from rsgrpc_kernels.label import numbered_tile

    array, labels = read_kept(path, 2)
    out = numbered_tile(labels, values)
    return encode_output_tile(out, tile, profile), int(np.count_nonzero(out != array))


def _label_band(
    job: BandJob[HaloRequest],
    task: BandTask,
    plan: TilePlan,
    session: Session,
    operation: Operation,
    counter: band_tool.TileCounter,
) -> LabelOutput:
    tool, parameters = job.request.tool, job.request.parameters
    executor = session.executor
    tiles = list(plan.tiles())
    operation.update(stage=Stage.RUNNING)
    with tempfile.TemporaryDirectory(prefix="label-", dir=session.temporary_directory) as kept:
        folder = Path(kept)
        summaries: dict[Tile, Any] = {}

        def consume_labelled(result) -> None:
            tile, array, labelled = result
            keep_arrays(
                kept_path(folder, tile),
                (array, labelled.labels),
                f"{tool.process} keeps each tile and its labels there between passes",
            )
            summaries[tile] = labelled.summary
            counter.add(read=array.nbytes)

        run_tiles(
            executor,
            operation,
            tiles,
            lambda tile: (
                _label_tile,
                (tile, task.source, task.info.nodata, tool.kernel, parameters),
            ),
            consume_labelled,
            in_flight=plan.in_flight,
        )
        ordered = [summaries.pop(tile) for tile in tiles]
        held = sum(s.nbytes for s in ordered)
        check_summaries_fit(session, held, _NUMBERING_OVERHEAD, f"{tool.process}'s summaries")
        numbered: list = []
        run_tiles(
            executor,
            operation,
            [ordered],
            lambda summaries: (_number, (summaries, parameters)),
            numbered.append,
            in_flight=1,
        )
        ordered.clear()
        numbering, regions = numbered[0]
        output = output_of(job.request, task)
        with band_tool.open_writer(job, task, session, output=output) as writer:
            changed = write_kept_tiles(
                writer,
                folder,
                lambda path, tile, values: _finish(path, tile, values, job.profile),
                zip(tiles, (n.values for n in numbering), strict=True),
                workers=executor.workers,
                operation=operation,
                counter=counter,
            )
    return LabelOutput(task.input, task.output_path, sum(changed), regions)


def run_label_job(
    job: BandJob[HaloRequest], session: Session, operation: Operation
) -> list[LabelOutput]:
    """The job: each band in turn; each tile counts twice (passes 1 and 3)."""
    tool, parameters = job.request.tool, job.request.parameters
    what = f"{tool.process} of {len(job.tasks)} band(s): {tool.describe(parameters)}"
    session.logger.info("%s: %s", operation.name, what)
    _check_limits(job, session)  # the disk may have filled meanwhile
    counter = band_tool.TileCounter(operation, sum(2 * plan.tile_count for plan in job.plans))
    try:
        return [
            _label_band(job, task, plan, session, operation, counter)
            for task, plan in zip(job.tasks, job.plans, strict=True)
        ]
    except OverflowError as error:
        raise ResourceExhaustedError(str(error)) from None
