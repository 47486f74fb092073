"""Band mask, declared: Remotior's `band_mask`, each band set to nodata where a raster mask
holds one of `mask_values`, the mask grown by a circular `buffer` of pixels
(`rsgrpc_kernels.band_mask`). The mask is the tool's auxiliary band: the engine reads it
on each band's grid, over the band's tile and halo."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from rsgrpc.tools.spec import (
    AuxiliaryBand,
    AuxiliaryBlock,
    CliFlag,
    Interior,
    ParameterError,
    RasterTool,
    ReadText,
    check_pixel_type,
    check_values_of,
    is_value_of,
)
from rsgrpc.v1 import raster_pb2

# The largest buffer, as the largest window of dilation.
MAX_BUFFER = 512
MAX_VALUES = 1024
# Extensions of the vector masks Remotior takes (OGR's usual formats).
VECTOR_SUFFIXES = (".gpkg", ".shp", ".geojson", ".json", ".kml", ".gml", ".sqlite", ".fgb")


@dataclass(frozen=True)
class MaskParameters:
    """A band mask's parameters, checked."""

    mask: AuxiliaryBand
    mask_values: tuple[float, ...]
    buffer: int
    nodata_value: float | None


def _parameters(message: raster_pb2.BandMaskParameters, read_text: ReadText) -> MaskParameters:
    which = message.WhichOneof("mask")
    if which == "mask_vector_path":
        raise ParameterError(
            f"input_mask {message.mask_vector_path!r} is a vector; vector masks are not "
            "served yet: rasterize it onto the bands' grid and give the raster",
            metadata={"field": "mask_vector_path"},
        )
    if which is None or not message.mask_raster.path:
        raise ParameterError(
            "input_mask is required: the path of a mask raster",
            metadata={"field": "mask_raster"},
        )
    values = tuple(message.mask_values)
    if not values:
        raise ParameterError(
            "mask_values is empty; list the mask values whose pixels become nodata",
            metadata={"field": "mask_values"},
        )
    if len(values) > MAX_VALUES:
        raise ParameterError(
            f"mask_values holds {len(values)} values, more than {MAX_VALUES}",
            metadata={"field": "mask_values"},
        )
    if any(math.isnan(v) for v in values):
        raise ParameterError(
            "mask_values holds NaN, which equals no pixel; a mask's nodata pixels always "
            "make nodata",
            metadata={"field": "mask_values"},
        )
    if not 0 <= message.buffer_pixels <= MAX_BUFFER:
        raise ParameterError(
            f"buffer must be from 0 to {MAX_BUFFER} pixels, got {message.buffer_pixels}",
            metadata={"field": "buffer_pixels"},
        )
    nodata = message.nodata_value if message.HasField("nodata_value") else None
    if nodata is not None and math.isinf(nodata):
        raise ParameterError(
            f"nodata_value must be finite or NaN, got {nodata}",
            metadata={"field": "nodata_value"},
        )
    raster = message.mask_raster
    return MaskParameters(
        mask=AuxiliaryBand(raster.path, raster.band or 1, "input_mask"),
        mask_values=values,
        buffer=message.buffer_pixels,
        nodata_value=nodata,
    )


def _memory(p: MaskParameters, dtype: np.dtype, out_dtype: np.dtype) -> tuple[float, float]:
    """The block and the output, the mask's matches, their comparison scratch, the grown
    mask and the two nodata masks (a byte each), and the dilation's scratch; the
    encoded tile waits in the job, counted at the output's size."""
    return 2 * dtype.itemsize + 8, out_dtype.itemsize


def _output(p: MaskParameters, dtype: np.dtype, nodata: float | None):
    return dtype.name, p.nodata_value if p.nodata_value is not None else nodata


def _check_band(p: MaskParameters, dtype: np.dtype, nodata: float | None, where: str) -> None:
    check_pixel_type(dtype, nodata, where, "iuf")
    out_nodata = _output(p, dtype, nodata)[1]
    if out_nodata is None:
        raise ParameterError(
            f"{where} has no nodata value; give nodata_value, the value masked pixels take",
            metadata={"field": "nodata_value"},
        )
    if not is_value_of(out_nodata, dtype.name):
        raise ParameterError(
            f"nodata_value {out_nodata:g} is not a value of {where}, which is {dtype.name}",
            metadata={"field": "nodata_value"},
        )


def _check_mask(p: MaskParameters, dtype: np.dtype, nodata: float | None, where: str) -> None:
    check_pixel_type(dtype, nodata, where, "iuf")
    check_values_of(p.mask_values, dtype, where, "mask_values")


def mask_block(
    block: np.ndarray,
    p: MaskParameters,
    interior: Interior,
    nodata: float | None,
    out_dtype: str,
    out_nodata: float | None,
    *,
    auxiliary: AuxiliaryBlock,
) -> np.ndarray:
    """Runs in a worker: the tile's pixels of `block` (read with its halo) masked by the
    mask's pixels over the same block."""
    from rsgrpc_kernels import band_mask

    return band_mask.mask_band(
        block,
        auxiliary.pixels,
        mask_values=p.mask_values,
        buffer=p.buffer,
        nodata=nodata,
        mask_nodata=auxiliary.nodata,
        out_nodata=out_nodata,
        interior=interior,
    )


def _describe(p: MaskParameters) -> str:
    values = ", ".join(f"{v:g}" for v in p.mask_values[:10])
    more = ", ..." if len(p.mask_values) > 10 else ""
    return (
        f"mask {p.mask.path!r} band {p.mask.band}, values [{values}{more}], "
        f"buffer {p.buffer} pixel(s)"
    )


def _mask(value: Any) -> raster_pb2.BandMaskParameters:
    """Remotior's input_mask: a path (band 1), or a (path, band) pair; a vector's path is
    sent as a vector mask, which the server refuses until it serves vectors."""
    if isinstance(value, tuple | list) and len(value) == 2 and isinstance(value[1], int):
        path, band = os.fspath(value[0]), value[1]
    elif isinstance(value, str | os.PathLike) and os.fspath(value):
        path, band = os.fspath(value), 1
    else:
        raise ParameterError(f"input_mask must be the path of a mask raster, got {value!r}")
    if PurePosixPath(path).suffix.lower() in VECTOR_SUFFIXES:
        return raster_pb2.BandMaskParameters(mask_vector_path=path)
    return raster_pb2.BandMaskParameters(mask_raster=raster_pb2.RasterBand(path=path, band=band))


def request_parameters(arguments: dict[str, Any]) -> raster_pb2.BandMaskParameters:
    """Remotior's input_mask, mask_values, buffer and nodata_value."""
    message = _mask(arguments["input_mask"])
    values = arguments["mask_values"]
    if values is None:
        raise ParameterError("mask_values is required: the mask values to mask")
    if isinstance(values, int | float):
        values = [values]
    try:
        message.mask_values.extend(float(v) for v in values)
    except (TypeError, ValueError):
        raise ParameterError(f"mask_values must be numbers, got {values!r}") from None
    buffer = arguments["buffer"]
    if buffer is not None:
        if isinstance(buffer, bool) or int(buffer) != buffer:
            raise ParameterError(f"buffer must be a whole number of pixels, got {buffer!r}")
        message.buffer_pixels = int(buffer)
    if arguments["nodata_value"] is not None:
        message.nodata_value = float(arguments["nodata_value"])
    return message


BAND_MASK = RasterTool[MaskParameters](
    name="band_mask",
    rpc="BandMask",
    command="mask",
    summary="set to nodata the pixels where --mask holds a --mask-value, grown by --buffer",
    request_type=raster_pb2.BandMaskRequest,
    response_type=raster_pb2.BandMaskResponse,
    output_type=raster_pb2.BandMaskOutput,
    parameters=_parameters,
    halo=lambda p: p.buffer,
    memory=_memory,
    check_band=_check_band,
    output=_output,
    kernel=mask_block,
    describe=_describe,
    request_parameters=request_parameters,
    warm=("grey",),
    auxiliary=lambda p: p.mask,
    check_auxiliary=_check_mask,
    cli_flags=(
        CliFlag(
            "--mask",
            "input_mask",
            {"required": True, "help": "the mask raster, relative to the data root"},
        ),
        CliFlag(
            "--mask-value",
            "mask_values",
            {"type": float, "action": "append", "required": True, "help": "repeat for each"},
        ),
        CliFlag("--buffer", "buffer", {"type": int, "default": None, "help": "pixels"}),
        CliFlag(
            "--nodata-value",
            "nodata_value",
            {"type": float, "default": None, "help": "the outputs' nodata (default: each input's)"},
        ),
    ),
)
