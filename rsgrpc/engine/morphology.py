"""Dilation and erosion (value-list and grey, opening and closing) as tiled jobs.

Each worker reads its tile with a halo of exactly the width the operation
needs and computes the tile's pixels, so every tiling gives the result of
one run on the whole raster (see `rsgrpc_kernels.morphology`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rsgrpc.engine.band_tool import (
    BandInput,
    BandJob,
    BandTask,
    OutputTarget,
    TileCounter,
    is_value_of,
    open_writer,
    plan_band_tiles,
    planned_outputs,
    prepare_band_tasks,
)
from rsgrpc.engine.errors import InvalidArgumentError
from rsgrpc.engine.limits import check_job_limits
from rsgrpc.engine.operations import Operation, Stage
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.raster_io import OutputProfile, encode_output_tile, read_window
from rsgrpc.engine.session import Session
from rsgrpc.engine.tiled_job import run_tiles
from rsgrpc.engine.tiles import MemoryModel, Tile

# The radius above which a window is too large to be a sensible filter.
MAX_SIZE = 512
MAX_VALUES = 1024
# Filters each tool offers: the kernel's operation for "grey", and the
# composite that starts with the tool (closing dilates first, opening erodes).
FILTERS = {
    "dilation": ("value_list", "grey", "closing"),
    "erosion": ("value_list", "grey", "opening"),
}


@dataclass(frozen=True)
class MorphologyRequest:
    """A dilation or erosion as the client asked for it."""

    tool: str  # "dilation" or "erosion"
    filter: str  # "value_list", "grey", "closing" or "opening"
    value_list: tuple[float, ...]
    size: int
    circular: bool
    inputs: tuple[BandInput, ...]
    target: OutputTarget

    @property
    def kernel_operation(self) -> str:
        """The grey filter's operation in the kernel's words."""
        return self.tool if self.filter == "grey" else self.filter

    @property
    def halo(self) -> int:
        """Pixels each side of a tile the result depends on (the kernel's halo_width)."""
        return 2 * self.size if self.filter in ("opening", "closing") else self.size


@dataclass(frozen=True)
class MorphologyOutput:
    """What the tool did to one input band."""

    input: BandInput
    output_path: str
    pixels_changed: int


def morphology_memory(dtype: str, halo: int) -> MemoryModel:
    """Bytes per pixel of a tile's block: the block, two value buffers and the output,
    and up to 8 bytes of rank or state buffers (while the tile is encoded, the block,
    the output, its encoding and the copy of it that goes back take no more); the
    encoded tile waits in the job, counted at the output's size."""
    item = np.dtype(dtype).itemsize
    return MemoryModel(worker=4 * item + 8, result=item, halo=halo)


def _check_parameters(request: MorphologyRequest) -> None:
    if request.filter not in FILTERS[request.tool]:
        allowed = ", ".join(FILTERS[request.tool])
        raise InvalidArgumentError(
            f"{request.tool} has no {request.filter} filter; use one of {allowed}",
            metadata={"field": "filter"},
        )
    if not 1 <= request.size <= MAX_SIZE:
        raise InvalidArgumentError(
            f"size must be from 1 to {MAX_SIZE} pixels, got {request.size}",
            metadata={"field": "size"},
        )
    if request.filter == "value_list":
        if not request.value_list:
            raise InvalidArgumentError(
                f"value_list is empty; list the values to {request.tool[:-5]}e",
                metadata={"field": "value_list"},
            )
        if len(request.value_list) > MAX_VALUES:
            raise InvalidArgumentError(f"value_list holds more than {MAX_VALUES} values")
        if any(math.isnan(v) for v in request.value_list):
            raise InvalidArgumentError(
                "value_list holds NaN, which is nodata and never changes",
                metadata={"field": "value_list"},
            )
    elif request.value_list:
        raise InvalidArgumentError(
            f"the {request.filter} filter uses no value_list; leave it empty",
            metadata={"field": "value_list"},
        )


def _check_band(task: BandTask, request: MorphologyRequest) -> None:
    dtype = np.dtype(task.info.dtype)
    where = f"input {task.input.path!r} band {task.input.band}"
    if dtype.kind not in "iuf":
        raise InvalidArgumentError(f"{where} is {dtype.name}; integer or float bands only")
    nodata = task.info.nodata
    if dtype.kind in "iu" and nodata is not None and not is_value_of(nodata, dtype.name):
        raise InvalidArgumentError(f"{where} has nodata {nodata}, not a value of {dtype.name}")
    # A value no pixel can hold would be dropped without a word: say so instead.
    strangers = [v for v in request.value_list if not is_value_of(v, dtype.name)]
    if strangers:
        raise InvalidArgumentError(
            f"value_list holds {', '.join(f'{v:g}' for v in strangers[:5])}, not a value of "
            f"{where}, which is {dtype.name}",
            metadata={"field": "value_list", "path": task.input.path},
        )


def prepare_morphology(
    request: MorphologyRequest,
    data_root: DataRoot,
    session: Session,
    default_profile: OutputProfile,
) -> BandJob[MorphologyRequest]:
    """Check a request completely and plan its tiles; raise what the client should see."""
    _check_parameters(request)
    tasks = prepare_band_tasks(request.inputs, request.target, data_root)
    profile = (request.target.profile or default_profile).fitted_to(
        max(t.info.width for t in tasks), max(t.info.height for t in tasks)
    )
    for task in tasks:
        _check_band(task, request)
        profile.check_dtype(task.info.dtype, output=task.output_path)
    check_job_limits(planned_outputs(tasks), profile, session)
    plans = tuple(
        plan_band_tiles([t.info], morphology_memory(t.info.dtype, request.halo), session, profile)
        for t in tasks
    )
    return BandJob[MorphologyRequest](request, tuple(tasks), profile, plans)


def _filter_tile(
    request: MorphologyRequest,
    profile: OutputProfile,
    path: str,
    band: int,
    tile: Tile,
    shape,
    nodata,
):
    """Runs in a worker: read the tile with its halo, compute the tile, encode it."""
    from rsgrpc_kernels import morphology

    block_tile, interior = tile.with_halo(request.halo, shape)
    block = read_window(path, band, block_tile)
    common = {"size": request.size, "circular": request.circular, "nodata": nodata}
    if request.filter != "value_list":
        out = morphology.grey_filter(
            block, operation=request.kernel_operation, interior=interior, **common
        )
    elif request.tool == "dilation":
        out = morphology.dilate(block, value_list=request.value_list, interior=interior, **common)
    else:
        out = morphology.erode(block, value_list=request.value_list, interior=interior, **common)
    before = block[interior]
    changed = out != before
    if out.dtype.kind == "f":
        changed &= ~(np.isnan(out) & np.isnan(before))
    return encode_output_tile(out, tile, profile), int(np.count_nonzero(changed)), block.nbytes


def run_morphology(
    job: BandJob[MorphologyRequest],
    session: Session,
    operation: Operation,
) -> list[MorphologyOutput]:
    """The job: filter each band in turn, tiles in the session's workers, one writer."""
    request = job.request
    session.logger.info(
        "%s: %s (%s) of %d band(s), size %d, %s",
        operation.name,
        request.tool,
        request.filter,
        len(job.tasks),
        request.size,
        "circular" if request.circular else "square",
    )
    # The disk may have filled while the job waited in the session's queue.
    check_job_limits(planned_outputs(job.tasks), job.profile, session)
    counter = TileCounter(operation, sum(plan.tile_count for plan in job.plans))
    outputs = []
    for task, plan in zip(job.tasks, job.plans, strict=True):
        info = task.info
        changed = 0
        operation.update(stage=Stage.RUNNING)
        with open_writer(job, task, session) as writer:

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
                lambda tile, info=info: (
                    _filter_tile,
                    (request, job.profile, info.path, info.band, tile, info.shape, info.nodata),
                ),
                consume,
                in_flight=plan.in_flight,
            )
            operation.update(stage=Stage.FINALIZING)
            writer.commit()
        outputs.append(MorphologyOutput(task.input, task.output_path, changed))
    return outputs
