"""Band spectral distance as a band calc job: the expression written from the checked
parameters (`rsgrpc.tools.spectral_distance`), the two band sets on one grid."""

from __future__ import annotations

from collections.abc import Sequence

from rsgrpc.engine.band_calc import BandCalcJob, BandCalcRequest, NamedInput, prepare_band_calc
from rsgrpc.engine.band_tool import BandInput
from rsgrpc.engine.errors import InvalidArgumentError
from rsgrpc.engine.grid import Grid
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.raster_io import OutputProfile
from rsgrpc.tools.spectral_distance import (
    OUTPUT_DTYPE,
    OUTPUT_NODATA,
    DistanceParameters,
    expression,
    input_names,
)


def prepare_spectral_distance(
    p: DistanceParameters,
    first: Sequence[BandInput],
    second: Sequence[BandInput],
    output_path: str,
    *,
    overwrite: bool,
    profile: OutputProfile | None,
    virtual_output: bool,
    data_root: DataRoot,
    default_profile: OutputProfile,
) -> BandCalcJob:
    """The band calc job of the distance, once its inputs are found on one grid; raise
    the error a client should see."""
    first_names, second_names = input_names(p.band_count)
    inputs = tuple(
        NamedInput(name, band.path, band.band)
        for names, bands in ((first_names, first), (second_names, second))
        for name, band in zip(names, bands, strict=True)
    )
    request = BandCalcRequest(
        expression=expression(p),
        inputs=inputs,
        output_path=output_path,
        overwrite=overwrite,
        output_dtype=OUTPUT_DTYPE,
        output_nodata=OUTPUT_NODATA,
        profile=profile,
        virtual_output=virtual_output,
        # The sums of squares of large integers lose digits in float32.
        calc_dtype="float64",
        nodata_mask="any",
        value_as_nodata=p.nodata_value,
    )
    job = prepare_band_calc(request, data_root, default_profile)
    grids = {
        name: Grid.of(info)
        for name, info in zip(job.expression.input_names, job.infos, strict=True)
    }
    for band in inputs:
        if grids[band.name] != grids[inputs[0].name]:
            where = "second_inputs" if band.name.startswith("b") else "first_inputs"
            raise InvalidArgumentError(
                f"{where}: {band.path!r} band {band.band} is not on the grid of "
                f"{inputs[0].path!r} band {inputs[0].band} (CRS, pixels and extent must match)",
                metadata={"field": where},
            )
    return job
