"""RasterService: validate a tool's request at the door, then run it as an operation.

Checking a request reads its inputs' headers: each RPC does it in the server's pool
of blocking threads, never on its event loop.
"""

from __future__ import annotations

import asyncio
import math

from rsgrpc.engine.band_calc import (
    BandCalcRequest,
    BandCalcResult,
    NamedInput,
    plan_band_calc,
    plan_band_calc_script,
    prepare_band_calc_script,
    run_band_calc,
    run_band_calc_script,
)
from rsgrpc.engine.band_calc_bandsets import add_outputs_to_bandsets, expand_band_calc_bandsets
from rsgrpc.engine.band_tool import BandInput, OutputTarget, Placement
from rsgrpc.engine.errors import InvalidArgumentError
from rsgrpc.engine.halo_job import (
    HaloRequest,
    invalid_argument,
    prepare_halo_job,
    read_parameter_text,
    run_halo_job,
)
from rsgrpc.engine.label_job import prepare_label_job, run_label_job
from rsgrpc.engine.operations import Operation, OperationStore
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.raster_io import DEFAULT_PROFILE, OutputProfile
from rsgrpc.engine.session import Session, SessionRegistry
from rsgrpc.engine.sieve import SieveRequest, prepare_sieve, run_sieve
from rsgrpc.engine.spectral_distance import prepare_spectral_distance
from rsgrpc.engine.statistics import BandStatistics
from rsgrpc.engine.table_job import TableRequest, prepare_table_job, run_table_job
from rsgrpc.server.auth import Caller, current_caller
from rsgrpc.server.bandset_servicer import band_specs, build_bandset
from rsgrpc.server.operation_servicer import answer_started, start_operation
from rsgrpc.server.status import reports_errors
from rsgrpc.tools import RASTER_TOOLS, TABLE_TOOLS, spectral_distance
from rsgrpc.tools.spec import RasterTool, band_output
from rsgrpc.tools.table_spec import TableTool
from rsgrpc.v1 import raster_pb2, raster_pb2_grpc

_DTYPES = {
    raster_pb2.DATA_TYPE_UNSPECIFIED: "float32",
    raster_pb2.DATA_TYPE_UINT8: "uint8",
    raster_pb2.DATA_TYPE_INT8: "int8",
    raster_pb2.DATA_TYPE_UINT16: "uint16",
    raster_pb2.DATA_TYPE_INT16: "int16",
    raster_pb2.DATA_TYPE_UINT32: "uint32",
    raster_pb2.DATA_TYPE_INT32: "int32",
    raster_pb2.DATA_TYPE_FLOAT32: "float32",
    raster_pb2.DATA_TYPE_FLOAT64: "float64",
}
# Band calc's calculation types (Remotior's calc_datatype; float32 by default, as Remotior).
_CALC_DTYPES = {
    raster_pb2.DATA_TYPE_UNSPECIFIED: "float32",
    raster_pb2.DATA_TYPE_FLOAT32: "float32",
    raster_pb2.DATA_TYPE_FLOAT64: "float64",
}
_NODATA_MASKS = {
    raster_pb2.BAND_CALC_NODATA_MASK_UNSPECIFIED: "any",
    raster_pb2.BAND_CALC_NODATA_MASK_ANY: "any",
    raster_pb2.BAND_CALC_NODATA_MASK_ALL: "all",
    raster_pb2.BAND_CALC_NODATA_MASK_NONE: "none",
}
_CODECS = {
    raster_pb2.COMPRESSION_NONE: "none",
    raster_pb2.COMPRESSION_DEFLATE: "deflate",
    raster_pb2.COMPRESSION_ZSTD: "zstd",
    raster_pb2.COMPRESSION_LZW: "lzw",
}
_CONNECTIVITIES = {
    raster_pb2.CONNECTIVITY_UNSPECIFIED: 4,
    raster_pb2.CONNECTIVITY_4: 4,
    raster_pb2.CONNECTIVITY_8: 8,
}


def output_profile(options: raster_pb2.OutputOptions) -> OutputProfile | None:
    """The requested encoding, or None for the server's default."""
    if options.compression == raster_pb2.COMPRESSION_UNSPECIFIED:
        if options.level or options.predictor or options.cloud_optimized:
            return OutputProfile(
                DEFAULT_PROFILE.compression,
                options.level or DEFAULT_PROFILE.level,
                options.predictor,
                options.cloud_optimized,
            )
        return None
    codec = _CODECS.get(options.compression)
    if codec is None:
        raise InvalidArgumentError(f"unknown compression {options.compression}")
    # OutputProfile refuses a level or predictor the codec does not take.
    return OutputProfile(codec, options.level, options.predictor, options.cloud_optimized)


def band_inputs(inputs) -> tuple[BandInput, ...]:
    return tuple(BandInput(i.path, i.band or 1) for i in inputs)


def output_target(output: raster_pb2.ToolOutput) -> OutputTarget:
    return OutputTarget(
        output.path,
        output.prefix,
        output.overwrite,
        output_profile(output.options),
        virtual=output.virtual_output,
    )


def input_placement(grid: raster_pb2.InputGrid) -> Placement:
    """A band tool's `input_grid` (Remotior's `extent_list` and `multiple_resolution`)."""
    extent = None
    if grid.HasField("extent"):
        e = grid.extent
        extent = (e.left, e.top, e.right, e.bottom)
    reference = None
    if grid.HasField("reference"):
        reference = BandInput(grid.reference.path, grid.reference.band or 1)
    return Placement(extent, not grid.first_input_resolution, reference)


def statistics_to_proto(stats: BandStatistics) -> raster_pb2.BandStatistics:
    valid = stats.valid_pixel_count
    return raster_pb2.BandStatistics(
        valid_pixel_count=valid,
        nodata_pixel_count=stats.nodata_pixel_count,
        minimum=stats.minimum if valid else math.nan,
        maximum=stats.maximum if valid else math.nan,
        mean=stats.mean if valid else math.nan,
        standard_deviation=stats.standard_deviation if valid else math.nan,
    )


class RasterServicer(raster_pb2_grpc.RasterServiceServicer):
    def __init__(
        self, registry: SessionRegistry, store: OperationStore, data_root: DataRoot
    ) -> None:
        self._registry = registry
        self._store = store
        self._data_root = data_root

    def _session(self, name: str, caller: Caller) -> Session:
        return self._registry.get(name, owner=caller.owner)

    @reports_errors
    async def BandCalc(self, request, context):
        return await answer_started(
            await asyncio.to_thread(self._band_calc, request, current_caller())
        )

    def _band_calc(self, request, caller: Caller):
        session = self._session(request.session, caller)
        if request.output_data_type not in _DTYPES:
            raise InvalidArgumentError(f"unknown output_data_type {request.output_data_type}")
        if request.calc_data_type not in _CALC_DTYPES:
            raise InvalidArgumentError(
                f"calc_data_type {request.calc_data_type} is not FLOAT32 or FLOAT64",
                metadata={"field": "calc_data_type"},
            )
        if request.nodata_mask not in _NODATA_MASKS:
            raise InvalidArgumentError(
                f"unknown nodata_mask {request.nodata_mask}", metadata={"field": "nodata_mask"}
            )
        calc = BandCalcRequest(
            expression=request.expression,
            inputs=tuple(NamedInput(i.name, i.path, i.band or 1) for i in request.inputs),
            output_path=request.output_path,
            overwrite=request.overwrite,
            output_dtype=_DTYPES[request.output_data_type],
            output_nodata=(
                request.output_nodata if request.HasField("output_nodata") else -32768.0
            ),
            profile=output_profile(request.output_options),
            virtual_output=request.virtual_output,
            calc_dtype=_CALC_DTYPES[request.calc_data_type],
            nodata_mask=_NODATA_MASKS[request.nodata_mask],
            input_nodata_as_value=request.input_nodata_as_value,
            value_as_nodata=(
                request.value_as_nodata if request.HasField("value_as_nodata") else None
            ),
            output_scale=request.output_scale if request.HasField("output_scale") else None,
            output_offset=request.output_offset if request.HasField("output_offset") else None,
            extent_union=request.extent_union,
            extent=(
                (
                    request.extent.left,
                    request.extent.top,
                    request.extent.right,
                    request.extent.bottom,
                )
                if request.HasField("extent")
                else None
            ),
            extent_raster_path=request.extent_raster_path,
            align_raster_path=request.align_raster_path,
            pixel_size=(
                request.pixel_size_x if request.HasField("pixel_size_x") else None,
                request.pixel_size_y if request.HasField("pixel_size_y") else None,
            ),
        )
        # Remotior's band set language, expanded from the session's catalog (or the band set
        # given inline, never added to it) into named inputs.
        inline = None
        if request.HasField("inline_bandset"):  # its bands in the order given
            given = request.inline_bandset
            inline = build_bandset(
                self._data_root, given, band_specs(given.bands), field="inline_bandset."
            )
        expanded = expand_band_calc_bandsets(
            calc,
            session.bandsets,
            request.bandset_number,
            request.input_bandset,
            inline=inline,
        )
        with expanded.errors_in_source():
            jobs = prepare_band_calc_script(expanded.request, self._data_root, DEFAULT_PROFILE)
        plans = plan_band_calc_script(jobs, session)

        def run(session: Session, operation: Operation) -> raster_pb2.BandCalcResponse:
            results: list[BandCalcResult] = run_band_calc_script(jobs, plans, session, operation)
            add_outputs_to_bandsets(
                expanded.additions, results, session.bandsets, self._data_root, session.logger
            )
            last = results[-1]
            return raster_pb2.BandCalcResponse(
                output_path=last.output_path,
                statistics=statistics_to_proto(last.statistics),
                outputs=[
                    raster_pb2.BandCalcOutput(
                        name=r.name,
                        output_path=r.output_path,
                        statistics=statistics_to_proto(r.statistics),
                        line=expanded.source_line(r.line),
                    )
                    for r in results
                ],
            )

        return start_operation(
            self._store,
            session,
            "BandCalc",
            run,
            one_tile=sum(plan.tile_count for plan in plans) == 1,
        )

    @reports_errors
    async def Sieve(self, request, context):
        return await answer_started(await asyncio.to_thread(self._sieve, request, current_caller()))

    def _sieve(self, request, caller: Caller):
        session = self._session(request.session, caller)
        if request.connectivity not in _CONNECTIVITIES:
            raise InvalidArgumentError(
                f"unknown connectivity {request.connectivity}; use CONNECTIVITY_4 or CONNECTIVITY_8"
            )
        sieve = SieveRequest(
            inputs=band_inputs(request.inputs),
            size=request.size,
            connectivity=_CONNECTIVITIES[request.connectivity],
            target=output_target(request.output),
            placement=input_placement(request.input_grid),
        )
        job = prepare_sieve(sieve, self._data_root, session, DEFAULT_PROFILE)

        def run(session: Session, operation: Operation) -> raster_pb2.SieveResponse:
            outputs = run_sieve(job, session, operation)
            return raster_pb2.SieveResponse(
                outputs=[
                    raster_pb2.SieveOutput(**band_output(o), regions_changed=o.regions_changed)
                    for o in outputs
                ]
            )

        return start_operation(
            self._store,
            session,
            "Sieve",
            run,
            one_tile=sum(plan.tile_count for plan in job.plans) == 1,
        )

    @reports_errors
    async def BandSpectralDistance(self, request, context):
        return await answer_started(
            await asyncio.to_thread(self._band_spectral_distance, request, current_caller())
        )

    def _band_spectral_distance(self, request, caller: Caller):
        """Band spectral distance, run as the band calc of its expression."""
        session = self._session(request.session, caller)
        with invalid_argument():
            parameters = spectral_distance.parameters(
                request.parameters, len(request.first_inputs), len(request.second_inputs)
            )
        job = prepare_spectral_distance(
            parameters,
            band_inputs(request.first_inputs),
            band_inputs(request.second_inputs),
            request.output_path,
            overwrite=request.overwrite,
            profile=output_profile(request.output_options),
            virtual_output=request.virtual_output,
            data_root=self._data_root,
            default_profile=DEFAULT_PROFILE,
        )
        plan = plan_band_calc(job, session)

        def run(session: Session, operation: Operation):
            what = spectral_distance.describe(parameters)
            session.logger.info("%s: %s", operation.name, what)
            result = run_band_calc(job, plan, session, operation)
            return raster_pb2.BandSpectralDistanceResponse(
                output_path=result.output_path,
                statistics=statistics_to_proto(result.statistics),
            )

        return start_operation(
            self._store, session, spectral_distance.RPC, run, one_tile=plan.tile_count == 1
        )

    def _declared_tool(self, tool: RasterTool, request, caller: Caller):
        """Any declared tool (`rsgrpc.tools`): its parameters checked, its job planned,
        then run as an operation named by its RPC."""
        session = self._session(request.session, caller)
        with invalid_argument():
            parameters = tool.parameters(
                request.parameters,
                lambda path, field: read_parameter_text(self._data_root, path, field),
            )
        halo_request = HaloRequest(
            tool,
            parameters,
            band_inputs(request.inputs),
            output_target(request.output),
            input_placement(request.input_grid),
        )
        prepare, run_job = (
            (prepare_label_job, run_label_job)
            if tool.whole_regions
            else (prepare_halo_job, run_halo_job)
        )
        job = prepare(halo_request, self._data_root, session, DEFAULT_PROFILE)

        def run(session: Session, operation: Operation):
            return tool.response(run_job(job, session, operation))

        return start_operation(
            self._store,
            session,
            tool.rpc,
            run,
            one_tile=sum(plan.tile_count for plan in job.plans) == 1,
        )

    def _table_tool(self, tool: TableTool, request, caller: Caller):
        """Any declared table tool (`rsgrpc.tools.TABLE_TOOLS`): its parameters checked,
        its job planned, then run as an operation named by its RPC."""
        session = self._session(request.session, caller)
        with invalid_argument():
            parameters = tool.parameters(request.parameters)
            bands = band_inputs(tool.request_bands(request))
        table_request = TableRequest(
            tool,
            parameters,
            bands,
            request.output.path,
            request.output.overwrite,
            input_placement(request.input_grid),
            profile=output_profile(request.output.options) if tool.raster else None,
        )
        job = prepare_table_job(table_request, self._data_root, session)

        def run(session: Session, operation: Operation):
            result = run_table_job(job, session, operation)
            raster = ()
            if tool.raster is not None:
                several = tool.raster.paths is not None
                raster = (result.raster_paths if several else result.raster_path,)
            return tool.response(result.table, result.output_path, table_request.inputs, *raster)

        return start_operation(
            self._store, session, tool.rpc, run, one_tile=job.plan.tile_count == 1
        )


def _declared_handler(tool: RasterTool | TableTool, start):
    """The RPC of a declared tool: its request checked, and its operation started, by
    `start` in a blocking thread."""

    async def handler(self: RasterServicer, request, context):
        started = await asyncio.to_thread(start, self, tool, request, current_caller())
        return await answer_started(started)

    handler.__name__ = handler.__qualname__ = tool.rpc
    return reports_errors(handler)


for _tool in RASTER_TOOLS:
    setattr(RasterServicer, _tool.rpc, _declared_handler(_tool, RasterServicer._declared_tool))
for _table in TABLE_TOOLS:
    setattr(RasterServicer, _table.rpc, _declared_handler(_table, RasterServicer._table_tool))
