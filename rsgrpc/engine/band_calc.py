"""Band calc as a tiled job: validate at the door, evaluate tiles in workers, write once."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rsgrpc_kernels.expression import Expression, ExpressionError, parse_expression

from rsgrpc.engine.band_tool import is_value_of, plan_band_tiles
from rsgrpc.engine.errors import InvalidArgumentError
from rsgrpc.engine.limits import PlannedOutput, check_job_limits
from rsgrpc.engine.operations import Operation, Stage
from rsgrpc.engine.paths import DataPath, DataRoot
from rsgrpc.engine.raster_io import (
    OutputProfile,
    RasterInfo,
    RasterWriter,
    check_same_grid,
    describe,
    encode_output_tile,
    read_window,
)
from rsgrpc.engine.session import Session
from rsgrpc.engine.statistics import BandStatistics
from rsgrpc.engine.tiff_tiles import EncodedTile
from rsgrpc.engine.tiled_job import run_tiles
from rsgrpc.engine.tiles import MemoryModel, Tile, TilePlan

MAX_INPUTS = 64
_NAME_LIMIT = 64


@dataclass(frozen=True)
class NamedInput:
    """One band of a raster under the data root, named for the expression."""

    name: str
    path: str
    band: int = 1


@dataclass(frozen=True)
class BandCalcRequest:
    """Everything a band calc job is asked to do, as the client said it."""

    expression: str
    inputs: tuple[NamedInput, ...]
    output_path: str
    overwrite: bool = False
    output_dtype: str = "float32"
    output_nodata: float = -32768.0
    profile: OutputProfile | None = None


@dataclass(frozen=True)
class BandCalcResult:
    """What a finished band calc returns."""

    output_path: str
    statistics: BandStatistics


@dataclass(frozen=True)
class BandCalcJob:
    """A validated band calc: parsed expression, described inputs, resolved output."""

    request: BandCalcRequest
    expression: Expression
    infos: tuple[RasterInfo, ...]  # in the order of expression.input_names
    nodata: dict[str, float | None]  # of every input the expression reads or names
    output: DataPath
    output_dtype: str
    profile: OutputProfile


def prepare_band_calc(
    request: BandCalcRequest, data_root: DataRoot, default_profile: OutputProfile
) -> BandCalcJob:
    """Check a request completely before any work starts; raise the error a client should see."""
    if not request.inputs:
        raise InvalidArgumentError("band calc needs at least one input")
    if len(request.inputs) > MAX_INPUTS:
        raise InvalidArgumentError(f"band calc takes at most {MAX_INPUTS} inputs")
    names = [i.name for i in request.inputs]
    for name in names:
        if not name or len(name) > _NAME_LIMIT or '"' in name:
            raise InvalidArgumentError(f"input name {name!r} is not valid")
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"input names must be unique, got {names}")
    try:
        expression = parse_expression(request.expression, names)
    except ExpressionError as exc:
        raise InvalidArgumentError(
            f"expression: {exc}", metadata={"position": str(exc.position)}
        ) from exc
    output_dtype = _output_dtype(request.output_dtype)
    _check_nodata_fits(request.output_nodata, output_dtype)
    by_name = {i.name: i for i in request.inputs}
    described: dict[str, RasterInfo] = {}
    for name in dict.fromkeys(expression.input_names + expression.nodata_names):
        given = by_name[name]
        source = data_root.path(given.path, field=f"input {name!r} path")
        described[name] = describe(source, given.band or 1)
    if not expression.input_names:
        raise InvalidArgumentError("the expression reads no input's pixels")
    infos = tuple(described[n] for n in expression.input_names)
    check_same_grid(infos, expression.input_names)
    output = data_root.output(request.output_path, field="output_path", overwrite=request.overwrite)
    nodata = {name: info.nodata for name, info in described.items()}
    return BandCalcJob(
        request,
        expression,
        infos,
        nodata,
        output,
        output_dtype,
        request.profile or default_profile,
    )


def _output_dtype(name: str) -> str:
    allowed = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
    key = name.lower()
    if key not in allowed:
        raise InvalidArgumentError(f"unsupported output data type {name!r}; use one of {allowed}")
    return key


def _check_nodata_fits(nodata: float, dtype: str) -> None:
    if not is_value_of(nodata, dtype):
        floats_only = "" if math.isfinite(nodata) else " (NaN and infinities: floats only)"
        raise InvalidArgumentError(
            f"output nodata {nodata:g} does not fit the output data type {dtype}{floats_only}",
            metadata={"field": "output_nodata"},
        )


def band_calc_memory(job: BandCalcJob) -> MemoryModel:
    """Bytes per pixel of a tile, held at once.

    A worker holds the input windows and the output tile while the kernel runs (the kernel
    computes the statistics in the same pass, in a few scalars per row range: nothing per
    pixel). Then the inputs are freed and the output is encoded: the output, GDAL's
    encoding of it in memory and the copy taken of that (three outputs at most, which the
    model counts; GDAL's block cache is counted with the workers' own). While the encoded
    tile goes back to the coordinator, it and its copy in a shared buffer, or, where
    results take the pipe, a bytes copy of it and the pickle's buffer. The coordinator
    holds encoded tiles waiting for the writer, counted at the output's size.
    """
    inputs = sum(np.dtype(i.dtype).itemsize for i in job.infos)
    output = np.dtype(job.output_dtype).itemsize
    return MemoryModel(worker=max(inputs + output, 3 * output), result=output)


def _evaluate_tile(
    expression: Expression,
    sources: Sequence[tuple[str, int]],
    nodata: dict[str, float | None],
    tile: Tile,
    output_dtype: str,
    output_nodata: float,
    profile: OutputProfile,
) -> tuple[EncodedTile, BandStatistics, int]:
    """Runs in a worker: read this tile's windows, evaluate and summarise in one pass,
    encode the output."""
    from rsgrpc_kernels.bandcalc import evaluate

    arrays = [read_window(path, band, tile) for path, band in sources]
    read = sum(a.nbytes for a in arrays)
    out, _, stats = evaluate(
        expression,
        arrays,
        nodata,
        output_dtype=output_dtype,
        output_nodata=output_nodata,
    )
    del arrays  # freed before the output is encoded
    statistics = BandStatistics(
        stats.valid_pixel_count,
        stats.nodata_pixel_count,
        stats.minimum,
        stats.maximum,
        stats.mean,
        stats.sum_squared_deviations,
    )
    return encode_output_tile(out, tile, profile), statistics, read


def plan_band_calc(job: BandCalcJob, session: Session) -> TilePlan:
    """Check the job against the server's limits and plan its tiles within the
    session's RAM budget (`plan_band_tiles`); raises ResourceExhaustedError if it
    goes over a limit or even one tile does not fit."""
    job.profile.check_dtype(job.output_dtype, output=job.request.output_path)
    check_job_limits(_planned_output(job), job.profile, session)
    return plan_band_tiles(job.infos, band_calc_memory(job), session, job.profile)


def _planned_output(job: BandCalcJob) -> list[PlannedOutput]:
    """The output as the server's limits see it: on the grid of the inputs read, the
    first of which errors name."""
    read_first = job.expression.input_names[0]
    source = next(i.path for i in job.request.inputs if i.name == read_first)
    return [PlannedOutput(job.output, job.infos[0].shape, job.output_dtype, source)]


def run_band_calc(
    job: BandCalcJob, plan: TilePlan, session: Session, operation: Operation
) -> BandCalcResult:
    """The job: evaluate the planned tiles in the session's workers, write the output."""
    # The disk may have filled while the job waited in the session's queue.
    check_job_limits(_planned_output(job), job.profile, session)
    first = job.infos[0]
    executor = session.executor
    session.logger.info(
        "%s: band calc %r, %d tiles of %dx%d, planned peak %d MiB",
        operation.name,
        job.request.expression,
        plan.tile_count,
        plan.tile_height,
        plan.tile_width,
        plan.peak_bytes >> 20,
    )
    operation.update(stage=Stage.RUNNING, tiles_total=plan.tile_count)
    sources = [(i.path, i.band) for i in job.infos]
    statistics = BandStatistics.empty()
    done = read = written = 0
    request = job.request
    with RasterWriter(
        job.output,
        width=first.width,
        height=first.height,
        dtype=job.output_dtype,
        nodata=request.output_nodata,
        crs=first.crs,
        transform=first.transform,
        profile=job.profile,
        overwrite=request.overwrite,
        scratch_directory=session.temporary_directory,
    ) as writer:

        def task(tile: Tile):
            return _evaluate_tile, (
                job.expression,
                sources,
                job.nodata,
                tile,
                job.output_dtype,
                request.output_nodata,
                job.profile,
            )

        def consume(result) -> None:
            nonlocal statistics, done, read, written
            encoded, tile_stats, tile_read = result
            writer.write(encoded)
            statistics = statistics.combine(tile_stats)
            done, read, written = done + 1, read + tile_read, written + encoded.data.nbytes
            operation.update(tiles_done=done, bytes_read=read, bytes_written=written)

        run_tiles(executor, operation, plan.tiles(), task, consume, in_flight=plan.in_flight)
        operation.update(stage=Stage.FINALIZING)
        size = writer.commit()
    operation.update(bytes_written=size)
    return BandCalcResult(request.output_path, statistics)
