"""Band calc as a tiled job: validate at the door, evaluate tiles in workers, write once."""

from __future__ import annotations

import contextlib
import math
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

import numpy as np
from rsgrpc_kernels.expression import Expression, ExpressionError, parse_expression

from rsgrpc.engine.band_calc_script import (
    MAX_SCRIPT_LENGTH,
    Statement,
    error_at,
    is_tiff_path,
    output_file_name,
    split_script,
    unsupported_feature,
)
from rsgrpc.engine.band_tool import plan_band_tiles
from rsgrpc.engine.errors import (
    CancelledError,
    InvalidArgumentError,
    PermissionDeniedError,
    RsgrpcError,
)
from rsgrpc.engine.grid import (
    Grid,
    GridOptions,
    InputSampling,
    output_grid,
    read_on_grid,
    sample_onto,
)
from rsgrpc.engine.limits import PlannedOutput, check_job_limits
from rsgrpc.engine.operations import Operation, Stage
from rsgrpc.engine.paths import DataPath, DataRoot
from rsgrpc.engine.raster_io import (
    OutputProfile,
    RasterInfo,
    RasterWriter,
    check_raster_output,
    describe,
    encode_output_tile,
    raster_output,
)
from rsgrpc.engine.session import Session
from rsgrpc.engine.statistics import BandStatistics
from rsgrpc.engine.tiff_tiles import EncodedTile
from rsgrpc.engine.tiled_job import run_tiles
from rsgrpc.engine.tiles import MemoryModel, Tile, TilePlan
from rsgrpc.engine.virtual_raster import is_vrt_path, output_files, virtual_path
from rsgrpc.tools.spec import is_value_of

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
    virtual_output: bool = False  # each output a VRT and its GeoTIFF, as a .vrt output path
    # Remotior's calculation options; every line of a script takes the same.
    calc_dtype: str = "float32"  # float32 or float64
    nodata_mask: str = "any"  # which inputs' nodata makes a pixel nodata: any, all or none
    input_nodata_as_value: bool = False
    value_as_nodata: float | None = None
    output_scale: float | None = None  # the value written is (result - offset) / scale
    output_offset: float | None = None
    # Remotior's grid options: the output's extent and pixels (see rsgrpc.engine.grid).
    extent_union: bool = False  # not extent_intersection: the union of the inputs' extents
    extent: tuple[float, float, float, float] | None = None  # left, top, right, bottom
    extent_raster_path: str = ""  # a raster whose bounds are the extent
    align_raster_path: str = ""  # a raster whose grid (origin, pixel size) the output takes
    pixel_size: tuple[float | None, float | None] = (None, None)  # x, y: xy_resolution_list


@dataclass(frozen=True)
class BandCalcResult:
    """What a finished band calc returns, for one calculation: its output's name (by
    which later lines of a script read it) and the script's line where it starts."""

    output_path: str
    statistics: BandStatistics
    name: str = ""
    line: int = 1


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
    name: str = ""  # the output's name, by which later lines of a script read it
    line: int = 1  # the script's line where the calculation starts
    grid: Grid | None = None  # the output's grid; None: the first input's
    # How each input of `infos` is read onto the grid; None: it is on the grid.
    sampling: tuple[InputSampling | None, ...] = ()

    @property
    def output_grid(self) -> Grid:
        return self.grid or Grid.of(self.infos[0])

    def sampling_of(self, index: int) -> InputSampling | None:
        return self.sampling[index] if self.sampling else None


@dataclass(frozen=True)
class _GridChoice:
    """The request's grid options, the extent and align rasters described once."""

    options: GridOptions
    extent_raster: RasterInfo | None
    align_raster: RasterInfo | None

    @classmethod
    def of(cls, request: BandCalcRequest, data_root: DataRoot) -> _GridChoice:
        options = GridOptions(request.extent_union, request.extent, request.pixel_size)
        rasters = []
        for path, field in (
            (request.extent_raster_path, "extent_raster_path"),
            (request.align_raster_path, "align_raster_path"),
        ):
            rasters.append(describe(data_root.path(path, field=field), 1) if path else None)
        return cls(options, *rasters)

    def place(
        self, infos: Sequence[RasterInfo], names: Sequence[str]
    ) -> tuple[Grid, tuple[InputSampling | None, ...]]:
        """The output grid of a calculation over `infos`, and how each is read onto it."""
        grid = output_grid(
            infos,
            names,
            self.options,
            extent_raster=self.extent_raster,
            align_raster=self.align_raster,
        )
        return grid, tuple(sample_onto(info, grid) for info in infos)


def _check_inputs(request: BandCalcRequest) -> list[str]:
    """The inputs' names, once checked."""
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
    return names


def prepare_band_calc(
    request: BandCalcRequest, data_root: DataRoot, default_profile: OutputProfile
) -> BandCalcJob:
    """Check a request of one expression completely before any work starts; raise the
    error a client should see."""
    if request.virtual_output:  # the VRT it becomes, as the client hears of it
        request = replace(request, output_path=virtual_path(request.output_path))
    names = _check_inputs(request)
    try:
        expression = parse_expression(request.expression, names)
    except ExpressionError as exc:
        feature = unsupported_feature(request.expression, frozenset(names))
        if feature is not None:  # an alias of Remotior's: say so, rather than "unknown"
            raise error_at(request.expression, feature[0], feature[1]) from exc
        raise InvalidArgumentError(
            f"expression: {exc}", metadata={"position": str(exc.position)}
        ) from exc
    output_dtype = _output_dtype(request.output_dtype)
    _check_nodata_fits(request.output_nodata, output_dtype)
    _check_calc_options(request)
    choice = _GridChoice.of(request, data_root)
    by_name = {i.name: i for i in request.inputs}
    described: dict[str, RasterInfo] = {}
    for name in dict.fromkeys(expression.input_names + expression.nodata_names):
        given = by_name[name]
        source = data_root.path(given.path, field=f"input {name!r} path")
        described[name] = describe(source, given.band or 1)
    if not expression.input_names:
        raise InvalidArgumentError("the expression reads no input's pixels")
    infos = tuple(described[n] for n in expression.input_names)
    grid, sampling = choice.place(infos, expression.input_names)
    output = raster_output(
        data_root, request.output_path, field="output_path", overwrite=request.overwrite
    )
    nodata = {name: info.nodata for name, info in described.items()}
    return BandCalcJob(
        request,
        expression,
        infos,
        nodata,
        output,
        output_dtype,
        (request.profile or default_profile).fitted_to(grid.width, grid.height),
        PurePosixPath(output.path).stem,
        grid=grid,
        sampling=sampling,
    )


def prepare_band_calc_script(
    request: BandCalcRequest, data_root: DataRoot, default_profile: OutputProfile
) -> tuple[BandCalcJob, ...]:
    """Check a band calc of one expression or a script of several lines completely
    before any work starts: one job per calculation, in order. A single expression
    (one line, no '@', no comment) is checked exactly as `prepare_band_calc` checks it."""
    text = request.expression
    if len(text) > MAX_SCRIPT_LENGTH:
        return (prepare_band_calc(request, data_root, default_profile),)
    script = split_script(text)
    if script.is_single_expression:
        return (prepare_band_calc(request, data_root, default_profile),)
    text = script.text
    input_names = _check_inputs(request)
    output_dtype = _output_dtype(request.output_dtype)
    _check_nodata_fits(request.output_nodata, output_dtype)
    _check_calc_options(request)
    choice = _GridChoice.of(request, data_root)
    profile = request.profile or default_profile
    targets = _script_outputs(request, script.statements, text, input_names, data_root)
    names = input_names + [name for name, _ in targets]
    producer = {name: i for i, (name, _) in enumerate(targets)}
    by_name = {i.name: i for i in request.inputs}
    described: dict[str, RasterInfo] = {}
    jobs: list[BandCalcJob] = []
    for index, statement in enumerate(script.statements):
        expression = _parse_statement(text, statement, names)
        line = statement.line
        for name in dict.fromkeys(expression.input_names + expression.nodata_names):
            made_by = producer.get(name)
            if made_by is None:
                continue
            if made_by >= index:
                at = statement.offset + max(0, statement.expression.find(name))
                whose = (
                    "its own output"
                    if made_by == index
                    else f"the output of line {script.statements[made_by].line}"
                )
                raise error_at(
                    text,
                    at,
                    f'"{name}" is {whose}: a line reads only inputs and the outputs of the '
                    "lines before it",
                )
        if not expression.input_names:
            raise error_at(text, statement.offset, "the calculation reads no input's pixels")
        infos_by_name: dict[str, RasterInfo] = {}
        for name in dict.fromkeys(expression.input_names + expression.nodata_names):
            made_by = producer.get(name)
            if made_by is not None:
                infos_by_name[name] = _output_info(jobs[made_by])
                continue
            if name not in described:
                given = by_name[name]
                source = data_root.path(given.path, field=f"input {name!r} path")
                described[name] = describe(source, given.band or 1)
            infos_by_name[name] = described[name]
        infos = tuple(infos_by_name[n] for n in expression.input_names)
        try:
            grid, sampling = choice.place(infos, expression.input_names)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(
                f"line {line}: {exc.message}", metadata=exc.metadata
            ) from exc
        name, output = targets[index]
        line_inputs = tuple(
            by_name[n] if n in by_name else NamedInput(n, jobs[producer[n]].output.path)
            for n in dict.fromkeys(expression.input_names + expression.nodata_names)
        )
        line_request = replace(
            request,
            expression=statement.expression,
            inputs=line_inputs,
            output_path=output.path,
        )
        jobs.append(
            BandCalcJob(
                line_request,
                expression,
                infos,
                {n: i.nodata for n, i in infos_by_name.items()},
                output,
                output_dtype,
                profile.fitted_to(grid.width, grid.height),
                name,
                line,
                grid=grid,
                sampling=sampling,
            )
        )
    return tuple(jobs)


def _parse_statement(text: str, statement: Statement, names: Sequence[str]) -> Expression:
    """A statement's expression, parsed against the allow-list; errors name the script's
    line and column."""
    feature = unsupported_feature(statement.expression, frozenset(names))
    if feature is not None:
        raise error_at(text, statement.offset + feature[0], feature[1])
    try:
        return parse_expression(statement.expression, names)
    except ExpressionError as exc:
        raise error_at(text, statement.offset + exc.position, exc.reason) from exc


def _script_outputs(
    request: BandCalcRequest,
    statements: Sequence[Statement],
    text: str,
    input_names: Sequence[str],
    data_root: DataRoot,
) -> list[tuple[str, DataPath]]:
    """Each statement's output, named and confined, checked writable and unique.

    ``@ name`` writes ``name.tif`` in ``output_path``'s folder (``output_path`` itself
    when it has no .tif/.tiff extension); ``@ folder @ name`` in ``folder`` (its folder,
    for a path with an extension). A statement without ``@`` writes ``output_path``, or
    ``output{n}.tif`` in it when it is a folder and the script has several calculations.
    """
    output_path = request.output_path
    if any(s.folder is None for s in statements):
        data_root.path(output_path, field="output_path")  # its own errors, as for one line
    output_folder = output_path if not _is_file(output_path) else posixpath.dirname(output_path)
    inputs = {
        data_root.path(i.path, field=f"input {i.name!r} path").identity: i.name
        for i in request.inputs
    }
    taken: dict[str, int] = {}  # output name: line
    written: dict[str, int] = {}  # output identity: line
    targets: list[tuple[str, DataPath]] = []
    for statement in statements:
        line = statement.line
        at = statement.output_offset
        if statement.name is None:
            if len(statements) == 1 or _is_file(output_path):
                client = output_path
            else:
                client = posixpath.join(output_path, f"output{statement.number}.tif")
            name = PurePosixPath(client).stem
        else:
            try:
                file, name = output_file_name(statement.name)
            except ValueError as exc:
                raise error_at(text, at, str(exc)) from None
            folder = output_folder if statement.folder is None else statement.folder
            if statement.folder is not None and _is_file(folder):
                folder = posixpath.dirname(folder)  # as Remotior: a file's folder
            client = posixpath.join(folder, file) if folder else file
        if request.virtual_output:
            client = virtual_path(client)
        field = f"line {line} output"
        try:
            target = data_root.path(client, field=field)
        except (PermissionDeniedError, InvalidArgumentError) as exc:
            raise error_at(text, at, exc.message) from None
        if name in input_names:
            raise error_at(text, at, f'output name "{name}" is the name of an input')
        if name in taken:
            raise error_at(
                text, at, f'output name "{name}" is also the output of line {taken[name]}'
            )
        files = output_files(target)  # a virtual output's VRT and GeoTIFF
        for file in files:
            if file.identity in written:
                raise error_at(
                    text, at, f"{file.path!r} is also the output of line {written[file.identity]}"
                )
            if file.identity in inputs:
                raise error_at(
                    text,
                    at,
                    f'{file.path!r} is input "{inputs[file.identity]}": a script does not '
                    "replace its inputs",
                )
        check_raster_output(target, overwrite=request.overwrite)
        taken[name] = line
        written.update(dict.fromkeys((file.identity for file in files), line))
        targets.append((name, target))
    return targets


def _output_info(job: BandCalcJob) -> RasterInfo:
    """The output of an earlier line, as a later line reads it: on that line's output
    grid, with the script's output type and nodata."""
    grid = job.output_grid
    block = job.profile.block_size
    return RasterInfo(
        path=job.output,
        band=1,
        width=grid.width,
        height=grid.height,
        dtype=job.output_dtype,
        nodata=job.request.output_nodata,
        crs=grid.crs,
        transform=grid.transform,
        block_shape=(block, block),
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


CALC_DTYPES = ("float32", "float64")
NODATA_MASKS = ("any", "all", "none")


def _check_calc_options(request: BandCalcRequest) -> None:
    """Remotior's calculation options, checked as the client gave them."""
    if request.calc_dtype not in CALC_DTYPES:
        raise InvalidArgumentError(
            f"unsupported calculation data type {request.calc_dtype!r}; use one of {CALC_DTYPES}",
            metadata={"field": "calc_data_type"},
        )
    if request.nodata_mask not in NODATA_MASKS:
        raise InvalidArgumentError(
            f"unsupported nodata mask {request.nodata_mask!r}; use one of {NODATA_MASKS}",
            metadata={"field": "nodata_mask"},
        )
    scale, offset = request.output_scale, request.output_offset
    if scale is not None and (not math.isfinite(scale) or scale == 0.0):
        raise InvalidArgumentError(
            f"output scale must be a finite number other than 0, got {scale:g}",
            metadata={"field": "output_scale"},
        )
    if offset is not None and not math.isfinite(offset):
        raise InvalidArgumentError(
            f"output offset must be a finite number, got {offset:g}",
            metadata={"field": "output_offset"},
        )


def _calc_options(request: BandCalcRequest) -> dict[str, object]:
    """The keyword arguments of the kernel's `evaluate` for the request's options."""
    return {
        "calc_dtype": request.calc_dtype,
        "nodata_mask": request.nodata_mask,
        "input_nodata_as_value": request.input_nodata_as_value,
        "value_as_nodata": request.value_as_nodata,
        "scale": request.output_scale,
        "offset": request.output_offset,
    }


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

    An input read onto another grid (`rsgrpc.engine.grid`) holds the input's window
    covering the tile (more pixels than the tile's where the output's pixels are larger),
    the pixels picked from it and the tile they are placed in.
    """
    inputs = 0.0
    for index, info in enumerate(job.infos):
        sampling = job.sampling_of(index)
        size = np.dtype(info.dtype).itemsize
        inputs += size if sampling is None else size * (sampling.ratio + 2)
    output = np.dtype(job.output_dtype).itemsize
    return MemoryModel(worker=max(inputs + output, 3 * output), result=output)


def _evaluate_tile(
    expression: Expression,
    sources: Sequence[tuple[DataPath, int, InputSampling | None]],
    nodata: dict[str, float | None],
    tile: Tile,
    output_dtype: str,
    output_nodata: float,
    profile: OutputProfile,
    options: dict[str, object],
) -> tuple[EncodedTile, BandStatistics, int]:
    """Runs in a worker: read this tile's windows, evaluate and summarise in one pass,
    encode the output."""
    from rsgrpc_kernels.bandcalc import evaluate

    arrays = [read_on_grid(path, band, tile, sampling) for path, band, sampling in sources]
    read = sum(a.nbytes for a in arrays)
    out, _, stats = evaluate(
        expression,
        arrays,
        nodata,
        output_dtype=output_dtype,
        output_nodata=output_nodata,
        **options,
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
    return plan_band_tiles(_planning_infos(job), band_calc_memory(job), session, job.profile)


def _planning_infos(job: BandCalcJob) -> tuple[RasterInfo, ...]:
    """The inputs as the tile planner sees them: each on the output grid, an input read
    onto it from another grid with the output's blocks."""
    grid, block = job.output_grid, job.profile.block_size
    return tuple(
        info
        if job.sampling_of(index) is None
        else replace(info, width=grid.width, height=grid.height, block_shape=(block, block))
        for index, info in enumerate(job.infos)
    )


def _planned_output(job: BandCalcJob) -> list[PlannedOutput]:
    """The output as the server's limits see it: on its grid; errors name the first input
    read."""
    read_first = job.expression.input_names[0]
    source = next(i.path for i in job.request.inputs if i.name == read_first)
    return [PlannedOutput(job.output, job.output_grid.shape, job.output_dtype, source)]


def plan_band_calc_script(jobs: Sequence[BandCalcJob], session: Session) -> list[TilePlan]:
    """`plan_band_calc` for every calculation of a script; the server's limits see all
    its outputs at once (the disk must hold them all)."""
    if len(jobs) == 1:
        return [plan_band_calc(jobs[0], session)]
    for job in jobs:
        job.profile.check_dtype(job.output_dtype, output=job.request.output_path)
    check_job_limits(_planned_outputs(jobs), jobs[0].profile, session)
    return [
        plan_band_tiles(_planning_infos(j), band_calc_memory(j), session, j.profile) for j in jobs
    ]


def _planned_outputs(jobs: Sequence[BandCalcJob]) -> list[PlannedOutput]:
    return [planned for job in jobs for planned in _planned_output(job)]


def run_band_calc(
    job: BandCalcJob, plan: TilePlan, session: Session, operation: Operation
) -> BandCalcResult:
    """The job: evaluate the planned tiles in the session's workers, write the output."""
    # The disk may have filled while the job waited in the session's queue.
    check_job_limits(_planned_output(job), job.profile, session)
    operation.update(stage=Stage.RUNNING, tiles_total=plan.tile_count)
    return _run_job(job, plan, session, operation, tiles_before=0)


def run_band_calc_script(
    jobs: Sequence[BandCalcJob], plans: Sequence[TilePlan], session: Session, operation: Operation
) -> list[BandCalcResult]:
    """A script's calculations in order, as one operation: progress counts every line's
    tiles. If a line fails or the operation is cancelled, the outputs of the lines
    already written are removed: a script leaves all its outputs or none."""
    if len(jobs) == 1:
        return [run_band_calc(jobs[0], plans[0], session, operation)]
    check_job_limits(_planned_outputs(jobs), jobs[0].profile, session)
    operation.update(stage=Stage.RUNNING, tiles_total=sum(p.tile_count for p in plans))
    results: list[BandCalcResult] = []
    written: list[tuple[DataPath, tuple[int, int]]] = []
    tiles_before = 0
    try:
        for job, plan in zip(jobs, plans, strict=True):
            if operation.cancel_event.is_set():
                raise CancelledError("the operation was cancelled")
            operation.update(stage=Stage.RUNNING)
            results.append(_run_job(job, plan, session, operation, tiles_before=tiles_before))
            written.extend((path, _identity(path)) for path in output_files(job.output))
            tiles_before += plan.tile_count
        if operation.cancel_event.is_set():
            raise CancelledError("the operation was cancelled")
    except BaseException:
        for output, identity in reversed(written):
            _remove(output, identity, session)
        raise
    return results


def _is_file(path: str) -> bool:
    """Whether an output path names a file (a GeoTIFF or a VRT), not a folder."""
    return is_tiff_path(path) or is_vrt_path(path)


def _identity(output: DataPath) -> tuple[object, ...]:
    """What identifies the file (its device and inode) or object (its version) just
    published at `output`."""
    store = output.store
    if store is not None:
        with output.storage_errors():
            found = store.stat(output.parts)
        return found.identity if found is not None else ()
    parent = output.open_parent(create=False)
    try:
        st = os.stat(output.name, dir_fd=parent, follow_symlinks=False)
    finally:
        os.close(parent)
    return st.st_dev, st.st_ino


def _remove(output: DataPath, identity: tuple[object, ...], session: Session) -> None:
    """Remove the output a line wrote, if it is still the file that line wrote."""
    store = output.store
    if store is not None:
        try:
            with output.storage_errors():
                if identity and _identity(output) == identity:
                    store.delete(output.parts)
        except RsgrpcError as error:
            session.logger.warning("could not remove %r: %s", output.path, error)
        return
    try:
        parent = output.open_parent(create=False)
    except RsgrpcError:
        return
    try:
        st = os.stat(output.name, dir_fd=parent, follow_symlinks=False)
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(output.name, dir_fd=parent)
    except OSError as error:
        if not isinstance(error, FileNotFoundError):
            session.logger.warning("could not remove %r: %s", output.path, error.strerror)
    finally:
        with contextlib.suppress(OSError):
            os.close(parent)


def _run_job(
    job: BandCalcJob, plan: TilePlan, session: Session, operation: Operation, *, tiles_before: int
) -> BandCalcResult:
    """Evaluate one calculation's planned tiles in the session's workers and write its
    output; `tiles_before` tiles of the operation are done already."""
    grid = job.output_grid
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
    sources = [(i.path, i.band, job.sampling_of(n)) for n, i in enumerate(job.infos)]
    statistics = BandStatistics.empty()
    done = 0
    # A script's lines add to what the lines before them read and wrote.
    read = operation.progress.bytes_read
    written = written_before = operation.progress.bytes_written
    request = job.request
    with RasterWriter(
        job.output,
        width=grid.width,
        height=grid.height,
        dtype=job.output_dtype,
        nodata=request.output_nodata,
        crs=grid.crs,
        transform=grid.transform,
        profile=job.profile,
        overwrite=request.overwrite,
        scratch_directory=session.temporary_directory,
        scale=request.output_scale,
        offset=request.output_offset,
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
                _calc_options(request),
            )

        def consume(result) -> None:
            nonlocal statistics, done, read, written
            encoded, tile_stats, tile_read = result
            writer.write(encoded)
            statistics = statistics.combine(tile_stats)
            done, read, written = done + 1, read + tile_read, written + encoded.data.nbytes
            operation.update(tiles_done=tiles_before + done, bytes_read=read, bytes_written=written)

        run_tiles(executor, operation, plan.tiles(), task, consume, in_flight=plan.in_flight)
        operation.update(stage=Stage.FINALIZING)
        size = writer.commit()
    operation.update(bytes_written=written_before + size)
    return BandCalcResult(request.output_path, statistics, job.name, job.line)
