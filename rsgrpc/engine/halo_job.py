"""A declared band tool (`rsgrpc.tools.spec.RasterTool`) as a tiled job: each worker reads
its tile with a halo of exactly the width the tool's parameters need, runs the tool's
kernel on it and encodes the tile's pixels, so every tiling gives the result of one run
on the whole raster (the input as its task places it: `rsgrpc.engine.band_tool`);
one writer per band.

Everything a tool declares is used here and only here: its checks of the parameters and
of each band at the door, its halo and memory per dtype in the tile plan, its output's
data type and nodata in the limits and the writer, its kernel in the workers, and its
auxiliary band (a mask), placed on each band's grid and read over each tile's block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from rsgrpc.engine import band_tool
from rsgrpc.engine.band_tool import BandJob, BandTask
from rsgrpc.engine.errors import InvalidArgumentError
from rsgrpc.engine.limits import check_job_limits
from rsgrpc.engine.operations import Operation, Stage
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.raster_io import OutputProfile, encode_output_tile
from rsgrpc.engine.session import Session
from rsgrpc.engine.tiled_job import run_tiles
from rsgrpc.engine.tiles import MemoryModel, Tile
from rsgrpc.tools.spec import AuxiliaryBlock, ParameterError, RasterTool

P = TypeVar("P")
# The largest text file a tool's parameters may name (a structure, a table).
PARAMETER_FILE_MAX_BYTES = 4 << 20


@dataclass(frozen=True)
class HaloRequest(Generic[P]):
    """A declared tool's request: its checked parameters, its bands and its outputs."""

    tool: RasterTool[P]
    parameters: P
    inputs: tuple[band_tool.BandInput, ...]
    target: band_tool.OutputTarget
    placement: band_tool.Placement = band_tool.Placement()


@dataclass(frozen=True)
class BandOutput:
    """What a tool did to one input band."""

    input: band_tool.BandInput
    output_path: str
    pixels_changed: int


@contextlib.contextmanager
def invalid_argument(**metadata: str) -> Iterator[None]:
    """A tool's ParameterError as the engine's InvalidArgumentError."""
    try:
        yield
    except ParameterError as error:
        raise InvalidArgumentError(str(error), metadata={**error.metadata, **metadata}) from None


def read_parameter_text(
    data_root: DataRoot, path: str, field: str, max_bytes: int = PARAMETER_FILE_MAX_BYTES
) -> str:
    """A small UTF-8 text file under the data roots that a tool's parameters name; more
    than `max_bytes` is INVALID_ARGUMENT."""
    with data_root.path(path, field=field).open_input() as opened:
        data = opened.read_prefix(max_bytes + 1)
    if len(data) > max_bytes:
        raise InvalidArgumentError(
            f"{field} {path!r} is over {max_bytes} bytes", metadata={"field": field}
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgumentError(
            f"{field} {path!r} is not UTF-8 text", metadata={"field": field}
        ) from None


def output_of(request: HaloRequest, task: BandTask) -> tuple[str, float | None]:
    """A task's output data type and nodata, as its tool declares them."""
    info = task.info
    return request.tool.output(request.parameters, np.dtype(info.dtype), info.nodata)


def prepare_halo_job(
    request: HaloRequest,
    data_root: DataRoot,
    session: Session,
    default_profile: OutputProfile,
) -> BandJob[HaloRequest]:
    """Check a request completely and plan its tiles; raise what the client should see."""
    tool, parameters = request.tool, request.parameters
    tasks = band_tool.prepare_band_tasks(
        request.inputs, request.target, data_root, request.placement
    )
    auxiliary = tool.auxiliary(parameters)
    if auxiliary is not None:
        tasks = band_tool.place_auxiliary(
            tasks, auxiliary.path, auxiliary.band or 1, auxiliary.field, data_root
        )
        info = tasks[0].auxiliary.info
        where = f"{auxiliary.field} {auxiliary.path!r} band {info.band}"
        with invalid_argument(path=auxiliary.path):
            tool.check_auxiliary(parameters, np.dtype(info.dtype), info.nodata, where)
    profile = (request.target.profile or default_profile).fitted_to(
        max(t.grid.width for t in tasks), max(t.grid.height for t in tasks)
    )
    outputs = []
    for task in tasks:
        where = f"input {task.input.path!r} band {task.input.band}"
        with invalid_argument(path=task.input.path):
            tool.check_band(parameters, np.dtype(task.info.dtype), task.info.nodata, where)
        outputs.append(output_of(request, task))
        profile.check_dtype(outputs[-1][0], output=task.output_path)
    dtypes = [dtype for dtype, _ in outputs]
    check_job_limits(band_tool.planned_outputs(tasks, dtypes), profile, session)
    halo = tool.halo(parameters)
    plans = []
    for task, dtype in zip(tasks, dtypes, strict=True):
        worker, result = tool.memory(parameters, np.dtype(task.info.dtype), np.dtype(dtype))
        if task.auxiliary is not None:
            worker += task.auxiliary.bytes_per_pixel
        model = MemoryModel(worker=worker, result=result, halo=halo)
        plans.append(band_tool.plan_task_tiles(task, model, session, profile))
    return BandJob[HaloRequest](request, tuple(tasks), profile, tuple(plans))


@dataclass(frozen=True)
class TileWork:
    """What a worker needs to compute any tile of one band: the tool's kernel (a
    module-level function, pickled by name) and parameters, never its declaration."""

    kernel: Callable[..., np.ndarray]
    parameters: Any
    halo: int
    output: tuple[str, float | None]
    profile: OutputProfile
    source: band_tool.PlacedBand
    nodata: float | None
    # The tool's auxiliary band on the same grid, and its nodata.
    auxiliary: band_tool.PlacedBand | None = None
    auxiliary_nodata: float | None = None


def _halo_tile(work: TileWork, tile: Tile) -> tuple[Any, int, int]:
    """Runs in a worker: read the tile with its halo (within the task's grid), and the
    auxiliary band over the same block, compute the tile, encode it."""
    block_tile, interior = tile.with_halo(work.halo, work.source.shape)
    block = work.source.read(block_tile)
    read = block.nbytes
    extra = {}
    if work.auxiliary is not None:
        pixels = work.auxiliary.read(block_tile)
        extra["auxiliary"] = AuxiliaryBlock(pixels, work.auxiliary_nodata)
        read += pixels.nbytes
    out = work.kernel(block, work.parameters, interior, work.nodata, *work.output, **extra)
    before = block[interior]
    changed = out != before
    if out.dtype.kind == "f":
        changed &= ~(np.isnan(out) & np.isnan(before))
    return encode_output_tile(out, tile, work.profile), int(np.count_nonzero(changed)), read


def run_halo_job(
    job: BandJob[HaloRequest], session: Session, operation: Operation
) -> list[BandOutput]:
    """The job: each band in turn, tiles in the session's workers, one writer."""
    tool, parameters = job.request.tool, job.request.parameters
    what = f"{tool.process} of {len(job.tasks)} band(s): {tool.describe(parameters)}"
    session.logger.info("%s: %s", operation.name, what)
    outputs = [output_of(job.request, task) for task in job.tasks]
    # The disk may have filled while the job waited in the session's queue.
    check_job_limits(
        band_tool.planned_outputs(job.tasks, [dtype for dtype, _ in outputs]), job.profile, session
    )
    counter = band_tool.TileCounter(operation, sum(plan.tile_count for plan in job.plans))
    results = []
    for task, plan, output in zip(job.tasks, job.plans, outputs, strict=True):
        work = TileWork(
            tool.kernel,
            parameters,
            tool.halo(parameters),
            output,
            job.profile,
            task.source,
            task.info.nodata,
            None if task.auxiliary is None else task.auxiliary.source(task.shape),
            None if task.auxiliary is None else task.auxiliary.info.nodata,
        )
        changed = 0
        operation.update(stage=Stage.RUNNING)
        with band_tool.open_writer(job, task, session, output=output) as writer:

            def consume(result, writer=writer) -> None:
                nonlocal changed
                encoded, tile_changed, read = result
                writer.write(encoded)
                changed += tile_changed
                counter.add(read=read, written=encoded.data.nbytes)

            run_tiles(
                session.executor,
                operation,
                plan.tiles(),
                lambda tile, work=work: (_halo_tile, (work, tile)),
                consume,
                in_flight=plan.in_flight,
            )
            operation.update(stage=Stage.FINALIZING)
            writer.commit()
        results.append(BandOutput(task.input, task.output_path, changed))
    return results
