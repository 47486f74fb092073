"""A check shared by the tests of declared band tools run as jobs on a live server's
session: the same request planned on tiles of several edges, each output read back."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from rsgrpc.engine.band_tool import BandInput, OutputTarget
from rsgrpc.engine.halo_job import HaloRequest, prepare_halo_job, run_halo_job
from rsgrpc.engine.operations import Operation
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.raster_io import OutputProfile
from rsgrpc.engine.session import Session
from rsgrpc.engine.tiles import TilePlan
from rsgrpc.tools.spec import RasterTool


def outputs_by_tile_edge(
    tool: RasterTool,
    parameters: Any,
    input_path: str,
    root: DataRoot,
    session: Session,
    folder: Path,
    edges: tuple[int, ...] = (64, 512),
) -> dict[int, tuple[np.ndarray, dict]]:
    """`tool` on `input_path` (under `root`, whose folder is `folder`), planned on square
    tiles of each of `edges` with 64-pixel blocks: each output's pixels and profile. The
    progress counts every tile, and the largest edge takes the raster in one tile."""
    profile = OutputProfile("zstd", level=1, block_size=64)
    outputs = {}
    for edge in edges:
        request = HaloRequest(
            tool,
            parameters,
            (BandInput(input_path),),
            OutputTarget(f"out-{edge}.tif", overwrite=True),
        )
        job = prepare_halo_job(request, root, session, profile)
        plans = tuple(TilePlan(p.shape, edge, edge, p.in_flight, p.peak_bytes) for p in job.plans)
        job = dataclasses.replace(job, plans=plans)
        operation = Operation(session.name, tool.rpc, owner="anonymous")
        run_halo_job(job, session, operation)
        assert operation.progress.tiles_total == plans[0].tile_count
        with rasterio.open(folder / f"out-{edge}.tif") as ds:
            outputs[edge] = ds.read(1), ds.profile
    assert job.plans[0].tile_count == 1
    return outputs
