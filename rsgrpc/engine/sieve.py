"""Sieve as a tiled job in three passes, so that no process ever holds the raster.

1. Each worker labels one tile, settles what the tile can settle alone and
   returns the tile's output so far, the pixels still waiting (small regions
   on a seam or whose chain leads to one) and its summary: the regions that
   touch the tile's seams or depend on them (see `rsgrpc_kernels.sieve`). The
   job keeps each output and its waiting pixels in a file in the session's
   temporary directory until pass 3, and the summary in memory.
2. One worker merges the summaries across seams and decides, for the whole
   raster at once, which small regions take which value.
3. The job reads each tile back, writes the decided values into its waiting
   pixels, encodes it and hands it to the one writer: no tile is labelled twice.

Labelling a tile is sequential, so in pass 1 each worker takes as many tiles
at once as it has cores (`threads_per_process`) and runs them in threads: the
kernels release the GIL, so a session of one process still uses every core
it is given.

Memory. A worker in pass 1 holds its tile, its nodata mask, about 9 bytes
per pixel of labelling scratch, up to about 60 bytes per region (at most one
region per pixel), the output tile and up to 12 bytes per waiting pixel: the
planner counts all of that per tile pixel. The summaries grow with the seams
(one int32 per seam-edge pixel, and tens of bytes per region that crosses a
seam or depends on one), not with the raster's area; after pass 1 the job
checks that they, held once by the job and once by the pass-2 worker, fit the
budget beside the workers' footprint, and stops with RESOURCE_EXHAUSTED
otherwise. Disk: the settled tiles take as many bytes as the raster, plus the
waiting pixels, in the session's temporary directory, removed as pass 3 goes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np

from rsgrpc.engine.band_tool import (
    BandInput,
    BandJob,
    BandTask,
    OutputTarget,
    PlacedBand,
    Placement,
    TileCounter,
    open_writer,
    plan_task_tiles,
    planned_outputs,
    prepare_band_tasks,
)
from rsgrpc.engine.errors import (
    InvalidArgumentError,
)
from rsgrpc.engine.kept_tiles import (
    check_summaries_fit,
    in_threads,
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
from rsgrpc.engine.tiles import MemoryModel, Tile, TilePlan

# What GDAL sieves; the kernel's SIEVE_DTYPES (tests keep the two equal).
SIEVE_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32")
CONNECTIVITIES = (4, 8)
# Labelling scratch and the per-region tables, per pixel at worst (see above).
_SCRATCH_BYTES_PER_PIXEL = 9 + 60
# A waiting pixel: its index and its region's (see PendingPixels).
_WAITING_BYTES_PER_PIXEL = 12
# The pass-2 worker's tables, per byte of summary.
_DECISION_OVERHEAD = 3


@dataclass(frozen=True)
class SieveRequest:
    """A sieve as the client asked for it."""

    inputs: tuple[BandInput, ...]
    size: int
    connectivity: int
    target: OutputTarget
    placement: Placement = Placement()


@dataclass(frozen=True)
class SieveOutput:
    """What the sieve did to one input band."""

    input: BandInput
    output_path: str
    regions_changed: int
    pixels_changed: int


def sieve_memory(dtype: str) -> MemoryModel:
    """Bytes per tile pixel: input, mask, scratch, output and waiting pixels in a worker;
    output and waiting pixels on their way to the job."""
    item = np.dtype(dtype).itemsize
    settled = item + _WAITING_BYTES_PER_PIXEL
    return MemoryModel(worker=item + 1 + _SCRATCH_BYTES_PER_PIXEL + settled, result=settled)


def prepare_sieve(
    request: SieveRequest, data_root: DataRoot, session: Session, default_profile: OutputProfile
) -> BandJob[SieveRequest]:
    """Check a request completely and plan its tiles; raise what the client should see."""
    if request.size < 1:
        raise InvalidArgumentError(f"size must be at least 1 pixel, got {request.size}")
    if request.connectivity not in CONNECTIVITIES:
        raise InvalidArgumentError(
            f"connectivity must be 4 or 8, got {request.connectivity}",
            metadata={"field": "connectivity"},
        )
    tasks = prepare_band_tasks(request.inputs, request.target, data_root, request.placement)
    for task in tasks:
        if task.info.dtype not in SIEVE_DTYPES:
            raise InvalidArgumentError(
                f"input {task.input.path!r} band {task.input.band} is {task.info.dtype}; "
                f"sieve takes integer classes ({', '.join(SIEVE_DTYPES)})",
                metadata={"path": task.input.path},
            )
    profile = (request.target.profile or default_profile).fitted_to(
        max(t.grid.width for t in tasks), max(t.grid.height for t in tasks)
    )
    for task in tasks:
        profile.check_dtype(task.info.dtype, output=task.output_path)
    check_sieve_limits(tasks, profile, session)
    side_by_side = session.executor.threads_per_process
    plans = tuple(
        plan_task_tiles(
            t, sieve_memory(t.info.dtype), session, profile, tiles_per_worker=side_by_side
        )
        for t in tasks
    )
    return BandJob[SieveRequest](request, tuple(tasks), profile, plans)


def check_sieve_limits(tasks: Sequence[BandTask], profile: OutputProfile, session: Session) -> None:
    """The server's limits (`check_job_limits`), with the settled tiles the sieve keeps
    in the session's temporary directory: as many bytes as the largest band, since
    bands are sieved in turn. The waiting pixels kept beside them are not counted:
    they are the few small regions on seams, and a disk that fills anyway fails the
    job with RESOURCE_EXHAUSTED and loses nothing (see `_keep`)."""
    check_job_limits(
        planned_outputs(tasks),
        profile,
        session,
        temporary_bytes=max(uncompressed_bytes(t.shape, t.info.dtype) for t in tasks),
    )


def _valid_mask(tile: np.ndarray, nodata: float | None) -> np.ndarray | None:
    if nodata is None:
        return None
    return tile != nodata


def _settle(tile: Tile, source: PlacedBand, nodata, size: int, connectivity: int):
    """Pass 1, in a worker: the tile of the task's grid, read through it."""
    from rsgrpc_kernels.sieve import TilePlacement, settle_tile

    array = source.read(tile)
    settled = settle_tile(
        array,
        TilePlacement(tile.row, tile.col, *source.shape),
        size=size,
        connectivity=connectivity,
        mask=_valid_mask(array, nodata),
    )
    return tile, settled, array.nbytes


def _decide(summaries: Sequence, size: int, connectivity: int):
    """Pass 2, in a worker."""
    from rsgrpc_kernels.sieve import decide_tiles

    return decide_tiles(summaries, size=size, connectivity=connectivity)


def _keep(path: Path, settled) -> None:
    """Save a settled tile's output and waiting pixels until pass 3 (`keep_arrays`)."""
    pending = settled.pending
    header = np.array([*astuple(pending.placement), pending.node_count], np.int64)
    keep_arrays(
        path,
        (header, settled.out, *(getattr(pending, n) for n in pending.ARRAYS)),
        "the sieve keeps its settled tiles there between passes (as many bytes as the raster)",
    )


def load_finishing_kernels() -> None:
    """Pass 3 runs in the server's own threads: import its kernels and load them from the
    disk cache as the server starts (a quarter of a second, numba's import), not on the
    first sieve."""
    from rsgrpc_kernels import sieve
    from rsgrpc_kernels.warm import load_cached_kernels

    load_cached_kernels(sieve)


def _finish(path: Path, tile: Tile, decision, profile: OutputProfile):
    """Pass 3, in the job: a kept tile with the decided values written in, encoded."""
    from rsgrpc_kernels.sieve import PendingPixels, TilePlacement, finish_tile

    header, out, *pending_arrays = read_kept(path, 2 + len(PendingPixels.ARRAYS))
    arrays = dict(zip(PendingPixels.ARRAYS, pending_arrays, strict=True))
    *placement, node_count = (int(v) for v in header)
    pending = PendingPixels(TilePlacement(*placement), node_count, **arrays)
    stats = finish_tile(out, pending, decision)
    return encode_output_tile(out, tile, profile), stats


def _sieve_band(
    job: BandJob[SieveRequest],
    task: BandTask,
    plan: TilePlan,
    session: Session,
    operation: Operation,
    counter: TileCounter,
) -> SieveOutput:
    request = job.request
    info = task.info
    size, connectivity = request.size, request.connectivity
    executor = session.executor
    side_by_side = executor.threads_per_process
    tiles = list(plan.tiles())
    operation.update(stage=Stage.RUNNING)
    with tempfile.TemporaryDirectory(prefix="sieve-", dir=session.temporary_directory) as kept:
        folder = Path(kept)
        summaries: dict[Tile, object] = {}
        regions = pixels = 0

        def consume_settled(results) -> None:
            nonlocal regions, pixels
            for tile, settled, read in results:
                _keep(kept_path(folder, tile), settled)
                summaries[tile] = settled.summary
                regions += settled.stats.regions_changed
                pixels += settled.stats.pixels_changed
                counter.add(read=read)

        # Each worker takes `side_by_side` tiles at once and runs them in threads.
        run_tiles(
            executor,
            operation,
            [tiles[i : i + side_by_side] for i in range(0, len(tiles), side_by_side)],
            lambda batch: (
                in_threads,
                (
                    _settle,
                    batch,
                    (task.source, info.nodata, size, connectivity),
                ),
            ),
            consume_settled,
            in_flight=max(1, plan.in_flight // side_by_side),
        )
        ordered = [summaries.pop(tile) for tile in tiles]
        held = sum(s.nbytes for s in ordered)
        check_summaries_fit(session, held, _DECISION_OVERHEAD, "the sieve's seam summaries")
        session.logger.info(
            "%s: %s settled, %d KiB of seam summaries",
            operation.name,
            task.input.path,
            held >> 10,
        )
        decisions: list = []
        run_tiles(
            executor,
            operation,
            [ordered],
            lambda summaries: (_decide, (summaries, size, connectivity)),
            decisions.append,
            in_flight=1,
        )
        ordered.clear()  # sent to the worker; the job needs them no more
        decision = decisions[0]
        regions += decision.regions_changed

        # The plan's tiles in flight, at least twice the workers, cover the tiles that
        # are finished ahead while one is written.
        with open_writer(job, task, session) as writer:
            finished = write_kept_tiles(
                writer,
                folder,
                lambda path, tile, tile_decision: _finish(path, tile, tile_decision, job.profile),
                zip(tiles, decision.tiles, strict=True),
                workers=executor.workers,
                operation=operation,
                counter=counter,
            )
        regions += sum(stats.regions_changed for stats in finished)
        pixels += sum(stats.pixels_changed for stats in finished)
    return SieveOutput(task.input, task.output_path, regions, pixels)


def run_sieve(
    job: BandJob[SieveRequest], session: Session, operation: Operation
) -> list[SieveOutput]:
    """The job: sieve each band in turn; each tile counts twice (passes 1 and 3)."""
    request = job.request
    session.logger.info(
        "%s: sieve of %d band(s), size %d, %d-connected",
        operation.name,
        len(job.tasks),
        request.size,
        request.connectivity,
    )
    check_sieve_limits(job.tasks, job.profile, session)  # the disk may have filled meanwhile
    counter = TileCounter(operation, sum(2 * plan.tile_count for plan in job.plans))
    return [
        _sieve_band(job, task, plan, session, operation, counter)
        for task, plan in zip(job.tasks, job.plans, strict=True)
    ]
