"""What every one-band-in, one-band-out tool shares: its inputs, where its outputs go,
and how its tiles are planned within a session's budget.

Band tools take a list of bands and write one output per band, as Remotior's
tools do: with one input and an output path ending in
`.tif`, `.tiff` or `.vrt`, that path is the output; otherwise the path is a
directory and each output is `{prefix}{input file stem}.tif` inside it. A virtual
output (`virtual_output`, or a `.vrt` path) is that name with `.vrt` for its
extension, as Remotior names it: a VRT and the GeoTIFF it reads, beside it
(`rsgrpc.engine.virtual_raster`).

Each input is first placed as Remotior places it (`Placement`: `extent_list` and
`multiple_resolution`), on a grid of its own (`rsgrpc.engine.grid.band_tool_grids`): a
task's grid is its output's, and its workers read the input through it
(`PlacedBand.read`), so a tool sees only the clipped or resampled raster and a halo
ends where the grid ends, as at the edge of a raster.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Generic, TypeVar

import numpy as np

from rsgrpc.engine.appender import STAGE_BYTES
from rsgrpc.engine.errors import InvalidArgumentError
from rsgrpc.engine.executors import LocalProcessExecutor
from rsgrpc.engine.grid import (
    Grid,
    GridOptions,
    InputSampling,
    band_tool_grids,
    read_on_grid,
    sample_auxiliary,
    sample_onto,
)
from rsgrpc.engine.limits import PlannedOutput
from rsgrpc.engine.operations import Operation, Stage
from rsgrpc.engine.paths import DataPath, DataRoot
from rsgrpc.engine.raster_io import (
    WORKER_GDAL_CACHE_BYTES,
    WRITER_GDAL_CACHE_BYTES,
    OutputProfile,
    RasterInfo,
    RasterWriter,
    describe,
    raster_output,
)
from rsgrpc.engine.session import Session
from rsgrpc.engine.tiles import MemoryModel, Tile, TilePlan, plan_tiles
from rsgrpc.engine.virtual_raster import VRT_SUFFIX, virtual_path

MAX_BANDS = 64
# The server's own memory, which a job needs beside its workers: after two band
# calc jobs, `rsgrpc serve` and its resource tracker held 67 MiB of pages that no
# worker maps (read from /proc/<pid>/pagemap).
_COORDINATOR_BYTES = 72 << 20
# A worker's own memory once it has run each tool: the interpreter, numpy, numba,
# GDAL and the compiled kernels, the workers of a session being shared by every
# tool it runs. Measured after band calc (float32 and int32 outputs), sieve
# (4- and 8-connected), dilation, erosion, closing and opening jobs in sessions of
# 2 and 4 processes, with freed memory given back: the largest worker held a
# resident set of 266 MiB, and each other worker 132 MiB of pages of its own
# (fresh workers hold 142 and 66). Declared, not measured at each job, so that
# whether a job fits, and the minimum budget named when it does not, are the same
# for the same request whatever ran before.
_FIRST_WORKER_BYTES = 272 << 20
_FURTHER_WORKER_BYTES = 136 << 20
# A job whose pixels take at most this much memory, by its model, is small: it plans
# beside a footprint measured up to FOOTPRINT_MAX_AGE_S ago (it can be off by what the
# jobs since left in the workers; a small job's tiles are small beside any budget).
SMALL_JOB_BYTES = 64 << 20
FOOTPRINT_MAX_AGE_S = 1.0
_FILE_SUFFIXES = (".tif", ".tiff", VRT_SUFFIX)
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{0,64}$")
R = TypeVar("R")


@dataclass(frozen=True)
class BandInput:
    """One band of a raster under the data root."""

    path: str
    band: int = 1


@dataclass(frozen=True)
class OutputTarget:
    """Where a tool writes: a file for one input, or a directory and a name prefix;
    `virtual` writes each output as a VRT and its GeoTIFF."""

    path: str
    prefix: str = ""
    overwrite: bool = False
    profile: OutputProfile | None = None
    virtual: bool = False


@dataclass(frozen=True)
class Placement:
    """Where each input is placed before a tool runs, as Remotior's band tools place
    them: clipped to `extent` (left, top, right, bottom: Remotior's `extent_list`), and
    with `multiple_resolution` False read onto the first input's pixel size and lines.
    `reference` is the call's first input when it is not this request's (a client that
    sends one request per input)."""

    extent: tuple[float, float, float, float] | None = None
    multiple_resolution: bool = True
    reference: BandInput | None = None

    def __post_init__(self) -> None:
        GridOptions(extent=self.extent)  # refuses an extent that is not one


@dataclass(frozen=True)
class PlacedBand:
    """An input band as its task's grid places it, for the workers: any window of the
    grid, read from the input by nearest neighbour (`read_on_grid`; an input on the grid
    is read as it is). Pixels of the grid outside the input read its nodata (0 without);
    the grid ends where `shape` ends, and nothing beyond it is read."""

    path: DataPath
    band: int
    shape: tuple[int, int]
    sampling: InputSampling | None

    def read(self, window: Tile) -> np.ndarray:
        return read_on_grid(self.path, self.band, window, self.sampling)


@dataclass(frozen=True)
class PlacedAuxiliary:
    """A raster read beside a task's band (a tool's `AuxiliaryBand`), described, and how
    it is read onto the task's grid (None: it is on the grid)."""

    info: RasterInfo
    sampling: InputSampling | None

    def source(self, shape: tuple[int, int]) -> PlacedBand:
        return PlacedBand(self.info.path, self.info.band, shape, self.sampling)

    @property
    def bytes_per_pixel(self) -> float:
        """What a worker holds of it per grid pixel: its block, and what reading it onto
        the grid takes (its pixels under the block and a copy)."""
        itemsize = np.dtype(self.info.dtype).itemsize
        if self.sampling is None:
            return itemsize
        return itemsize + (self.sampling.ratio + 1) * itemsize


@dataclass(frozen=True)
class BandTask:
    """One input band, described, the grid it is placed on (its output's), how it is read
    onto that grid, and the output it becomes."""

    input: BandInput
    info: RasterInfo
    output: DataPath
    output_path: str  # as the client names it
    grid: Grid
    sampling: InputSampling | None = None  # None: the input is on the grid
    auxiliary: PlacedAuxiliary | None = None  # a raster read beside the band

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    @property
    def source(self) -> PlacedBand:
        return PlacedBand(self.info.path, self.info.band, self.grid.shape, self.sampling)

    @property
    def sampling_bytes(self) -> float:
        """What reading a window onto the grid holds beside the window, per grid pixel:
        the input's pixels under it and the window's copy (nothing for an input on the
        grid)."""
        if self.sampling is None:
            return 0
        return (self.sampling.ratio + 1) * np.dtype(self.info.dtype).itemsize


@dataclass(frozen=True)
class BandJob(Generic[R]):
    """A validated tool request: its bands, their outputs, how they are encoded and
    their tile plans."""

    request: R
    tasks: tuple[BandTask, ...]
    profile: OutputProfile
    plans: tuple[TilePlan, ...]


def _output_paths(inputs: Sequence[BandInput], target: OutputTarget) -> list[str]:
    if not target.path:
        raise InvalidArgumentError("output path is empty")
    if PurePosixPath(target.path).suffix.lower() in _FILE_SUFFIXES:
        if len(inputs) > 1:
            raise InvalidArgumentError(
                f"output path {target.path!r} names a file, but there are {len(inputs)} "
                "inputs; name a directory to get one output per input"
            )
        return [virtual_path(target.path) if target.virtual else target.path]
    if not _PREFIX.match(target.prefix):
        raise InvalidArgumentError(
            f"prefix {target.prefix!r} is not valid: up to 64 letters, digits, '_', '-' or '.'"
        )
    directory = target.path.rstrip("/")
    extension = VRT_SUFFIX if target.virtual else ".tif"
    paths = [f"{directory}/{target.prefix}{PurePosixPath(i.path).stem}{extension}" for i in inputs]
    for path in paths:
        if paths.count(path) > 1:
            raise InvalidArgumentError(
                f"two inputs would both be written to {path!r}; use one call per input"
            )
    return paths


def prepare_band_tasks(
    inputs: Sequence[BandInput],
    target: OutputTarget,
    data_root: DataRoot,
    placement: Placement | None = None,
) -> list[BandTask]:
    """Check inputs and outputs completely before any work starts, and place each input
    on its grid (`placement`; by default each on its own, or the first input's extent
    where the inputs' grids differ, as Remotior)."""
    if not inputs:
        raise InvalidArgumentError("at least one input band is needed")
    if len(inputs) > MAX_BANDS:
        raise InvalidArgumentError(f"at most {MAX_BANDS} input bands per call")
    placement = placement or Placement()
    output_paths = _output_paths(inputs, target)
    given_inputs = [BandInput(given.path, given.band or 1) for given in inputs]
    infos = [
        describe(data_root.path(given.path, field="input path"), given.band)
        for given in given_inputs
    ]
    reference = reference_name = None
    if placement.reference is not None:
        first = placement.reference
        reference_name = first.path
        reference = describe(
            data_root.path(first.path, field="input_grid.reference.path"), first.band or 1
        )
    grids = band_tool_grids(
        infos,
        [given.path for given in given_inputs],
        extent=placement.extent,
        multiple_resolution=placement.multiple_resolution,
        reference=reference,
        reference_name=reference_name,
    )
    tasks = []
    for given, info, grid, output_path in zip(
        given_inputs, infos, grids, output_paths, strict=True
    ):
        output = raster_output(
            data_root, output_path, field="output path", overwrite=target.overwrite
        )
        tasks.append(BandTask(given, info, output, output_path, grid, sample_onto(info, grid)))
    return tasks


def place_auxiliary(
    tasks: Sequence[BandTask], path: str, band: int, field: str, data_root: DataRoot
) -> list[BandTask]:
    """`tasks`, each with band `band` of `path` (a request's `field`) placed on its grid
    (`sample_auxiliary`), to be read with the band's tiles and halos."""
    info = describe(data_root.path(path, field=field), band)
    name = f"{field} {path!r}"
    return [
        replace(t, auxiliary=PlacedAuxiliary(info, sample_auxiliary(info, t.grid, name)))
        for t in tasks
    ]


def plan_band_tiles(
    infos: Sequence[RasterInfo],
    model: MemoryModel,
    session: Session,
    profile: OutputProfile,
    *,
    tiles_per_worker: int = 1,
) -> TilePlan:
    """Tiles for bands on one grid within the session's RAM budget, beside what every
    job holds (`session_fixed_bytes`), with `tiles_per_worker` tiles at once in each
    worker.

    Raises ResourceExhaustedError, naming the smallest budget that would work, if even
    one tile does not fit; that decision and that number depend on the request and
    the session's settings alone. Where the workers are measured to hold more than
    the model says (memory kept from earlier tiles), tiles are made smaller to fit
    beside it where they can.
    """
    workers = session.executor.workers
    height, width = infos[0].shape
    # A small job plans beside the workers' footprint as last measured, if recent:
    # measuring asks idle workers to give memory back and reads each one's page
    # tables, which would cost a small job more than its pixels do.
    small = height * width * (model.worker + model.result) <= SMALL_JOB_BYTES
    footprint = session.executor.footprint_bytes(max_age=FOOTPRINT_MAX_AGE_S if small else 0.0)
    return plan_tiles(
        infos[0].shape,
        [i.block_shape for i in infos],
        model,
        output_block=profile.block_size,
        budget_bytes=session.settings.available_ram_mib << 20,
        workers=workers * tiles_per_worker,
        fixed_bytes=session_fixed_bytes(session),
        held_bytes=_shared_bytes(workers) + footprint,
        max_tile_edge=session.executor.max_tile_edge,
    )


def plan_task_tiles(
    task: BandTask,
    model: MemoryModel,
    session: Session,
    profile: OutputProfile,
    *,
    tiles_per_worker: int = 1,
) -> TilePlan:
    """`plan_band_tiles` for one task on its grid: tiles of an input read onto another
    grid follow the output's blocks, and a worker holds, beside the model's bytes, what
    reading onto the grid takes (`BandTask.sampling_bytes`)."""
    info = task.info
    if task.sampling is not None:
        block = profile.block_size
        info = replace(
            info,
            width=task.grid.width,
            height=task.grid.height,
            transform=task.grid.transform,
            block_shape=(block, block),
        )
        model = replace(model, worker=model.worker + task.sampling_bytes)
    return plan_band_tiles([info], model, session, profile, tiles_per_worker=tiles_per_worker)


def session_fixed_bytes(session: Session) -> int:
    """What a session's job holds whatever its tiles, by the memory model: the server
    process it is coordinated from, its workers' own memory (none for a cluster's
    workers, which are the cluster's), the GDAL block caches of the workers and the
    writer, and the writer's staging buffer."""
    executor = session.executor
    workers = executor.workers
    own = 0
    if isinstance(executor, LocalProcessExecutor):
        own = _FIRST_WORKER_BYTES + (workers - 1) * _FURTHER_WORKER_BYTES
    return _shared_bytes(workers) + own


def _shared_bytes(workers: int) -> int:
    """The coordinator's memory, GDAL's caches and the writer's staging buffer."""
    return (
        _COORDINATOR_BYTES
        + WRITER_GDAL_CACHE_BYTES
        + STAGE_BYTES
        + workers * WORKER_GDAL_CACHE_BYTES
    )


def planned_outputs(
    tasks: Sequence[BandTask], dtypes: Sequence[str] | None = None
) -> list[PlannedOutput]:
    """Each task's output, as the server's limits see it: on the task's grid and of
    its input's data type, or of `dtypes`, one per task."""
    dtypes = dtypes or [t.info.dtype for t in tasks]
    return [
        PlannedOutput(t.output, t.shape, dtype, t.input.path)
        for t, dtype in zip(tasks, dtypes, strict=True)
    ]


def open_writer(
    job: BandJob,
    task: BandTask,
    session: Session,
    *,
    output: tuple[str, float | None] | None = None,
) -> RasterWriter:
    """The writer of a task's output: the task's grid, the input's data type and nodata
    (or `output`'s data type and nodata), the job's encoding; its scratch files in the
    session's temporary directory."""
    info, grid = task.info, task.grid
    dtype, nodata = output or (info.dtype, info.nodata)
    return RasterWriter(
        task.output,
        width=grid.width,
        height=grid.height,
        dtype=dtype,
        nodata=nodata,
        crs=info.crs,
        transform=grid.transform,
        profile=job.profile,
        overwrite=job.request.target.overwrite,
        scratch_directory=session.temporary_directory,
    )


class TileCounter:
    """Reports a job's tiles and bytes, over all its bands and passes, on its operation."""

    def __init__(self, operation: Operation, tiles_total: int) -> None:
        self._operation = operation
        self.done = self.read = self.written = 0
        operation.update(stage=Stage.RUNNING, tiles_total=tiles_total)

    def add(self, *, read: int = 0, written: int = 0) -> None:
        self.done += 1
        self.read += read
        self.written += written
        self._operation.update(
            tiles_done=self.done, bytes_read=self.read, bytes_written=self.written
        )
