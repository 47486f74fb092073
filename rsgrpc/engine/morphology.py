"""Dilation and erosion (value-list and grey, opening and closing) for the engine's own
callers: a request in the engine's terms, run as the declared tools
(`rsgrpc.tools.morphology`) through the halo job (`rsgrpc.engine.halo_job`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rsgrpc.engine.band_tool import BandInput, BandJob, OutputTarget
from rsgrpc.engine.halo_job import (
    BandOutput,
    HaloRequest,
    invalid_argument,
    prepare_halo_job,
    run_halo_job,
)
from rsgrpc.engine.operations import Operation
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.raster_io import OutputProfile
from rsgrpc.engine.session import Session
from rsgrpc.tools.morphology import DILATION, EROSION, MorphologyParameters, check_parameters

TOOLS = {"dilation": DILATION, "erosion": EROSION}
MorphologyOutput = BandOutput


@dataclass(frozen=True)
class MorphologyRequest(MorphologyParameters):
    """A dilation or erosion as the client asked for it: its parameters (tool, filter,
    value_list, size, circular), then its bands and outputs."""

    inputs: tuple[BandInput, ...]
    target: OutputTarget

    @property
    def parameters(self) -> MorphologyParameters:
        names = (f.name for f in dataclasses.fields(MorphologyParameters))
        return MorphologyParameters(**{name: getattr(self, name) for name in names})


def prepare_morphology(
    request: MorphologyRequest,
    data_root: DataRoot,
    session: Session,
    default_profile: OutputProfile,
) -> BandJob[HaloRequest]:
    """Check a request completely and plan its tiles; raise what the client should see."""
    with invalid_argument():
        parameters = check_parameters(request.parameters)
    halo_request = HaloRequest(TOOLS[request.tool], parameters, request.inputs, request.target)
    return prepare_halo_job(halo_request, data_root, session, default_profile)


def run_morphology(
    job: BandJob[HaloRequest], session: Session, operation: Operation
) -> list[MorphologyOutput]:
    """The job: filter each band in turn, tiles in the session's workers, one writer."""
    return run_halo_job(job, session, operation)
