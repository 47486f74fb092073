"""Raster label, declared: each 4- or 8-connected patch of valid non-zero pixels gets a
label unique in the raster, numbered in raster order of its first pixel, or its pixel
count (Remotior's `raster_label`, `rsgrpc_kernels.label`; run by
`rsgrpc.engine.label_job`, as its output depends on whole patches across tiles)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rsgrpc.tools import spec
from rsgrpc.v1 import raster_pb2

CONNECTIVITIES = (4, 8)
# Remotior's output: UInt32, 0 for background and nodata.
OUTPUT = ("uint32", 0.0)


@dataclass(frozen=True)
class LabelParameters:
    """The neighbours that join a patch, and whether its pixels hold its size."""

    connectivity: int
    pixel_count: bool


def _connectivity(value: Any) -> int:
    if isinstance(value, bool) or value not in CONNECTIVITIES:
        raise spec.ParameterError(
            f"connectivity must be 4 or 8, got {value!r}", metadata={"field": "connectivity"}
        )
    return int(value)


def _parameters(message: raster_pb2.RasterLabelParameters, read_text: spec.ReadText):
    return LabelParameters(_connectivity(message.connectivity or 4), message.pixel_count)


def _memory(p: LabelParameters, dtype: np.dtype, out_dtype: np.dtype) -> tuple[float, float]:
    """A worker holds the tile, its foreground and mask, 9 bytes of labelling scratch and
    the labels (int32), and up to 16 bytes per patch (at most one per pixel); the tile
    and its labels go back to the job, which keeps them on disk."""
    return dtype.itemsize + 2 + 9 + 4 + 16, dtype.itemsize + 4


def _check_band(p: LabelParameters, dtype: np.dtype, nodata: float | None, where: str) -> None:
    spec.check_pixel_type(dtype, nodata, where, "iuf")


def _output(p: LabelParameters, dtype: np.dtype, nodata: float | None) -> tuple[str, float]:
    return OUTPUT


def label_block(array: np.ndarray, p: LabelParameters, placement: Any, nodata: float | None):
    """Pass 1 of a tile, in a worker: its patches labelled (`rsgrpc_kernels.label`)."""
    from rsgrpc_kernels.label import label_tile

    mask = None if nodata is None else array != nodata
    return label_tile(array, placement, connectivity=p.connectivity, mask=mask)


def _describe(p: LabelParameters) -> str:
    values = "pixel counts" if p.pixel_count else "labels"
    return f"{p.connectivity}-connected patches of non-zero pixels, as {values}"


def request_parameters(arguments: dict[str, Any]) -> raster_pb2.RasterLabelParameters:
    """rsgrpc's connectivity (4, Remotior's, or 8) and pixel_count (Remotior's output)."""
    return raster_pb2.RasterLabelParameters(
        connectivity=_connectivity(arguments["connectivity"]),
        pixel_count=bool(arguments["pixel_count"]),
    )


RASTER_LABEL = spec.RasterTool[LabelParameters](
    name="raster_label",
    rpc="RasterLabel",
    command="label",
    summary="each connected patch of non-zero pixels labelled (or its pixel count)",
    request_type=raster_pb2.RasterLabelRequest,
    response_type=raster_pb2.RasterLabelResponse,
    output_type=raster_pb2.RasterLabelOutput,
    parameters=_parameters,
    halo=lambda p: 0,
    memory=_memory,
    check_band=_check_band,
    output=_output,
    kernel=label_block,
    describe=_describe,
    request_parameters=request_parameters,
    warm=("label",),
    raster_path_input=True,
    whole_regions=True,
    statistics=("region_count",),
    cli_flags=(
        spec.CliFlag(
            "--connectivity",
            "connectivity",
            {"type": int, "choices": CONNECTIVITIES, "default": 4, "help": "4 or 8 neighbours"},
        ),
        spec.CliFlag(
            "--pixel-count",
            "pixel_count",
            {"action": "store_true", "help": "write each patch's pixel count (Remotior's)"},
        ),
    ),
)
