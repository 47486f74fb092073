"""Dilation and erosion, declared: Remotior's value-list tools, and grey dilation,
erosion, closing and opening (`rsgrpc_kernels.morphology`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from rsgrpc.tools.spec import (
    CliFlag,
    Interior,
    ParameterError,
    RasterTool,
    ReadText,
    check_pixel_type,
    check_size,
    check_values_of,
)
from rsgrpc.v1 import raster_pb2

# The radius above which a window is too large to be a sensible filter.
MAX_SIZE = 512
MAX_VALUES = 1024
# Filters each tool offers: the kernel's operation for "grey", and the
# composite that starts with the tool (closing dilates first, opening erodes).
FILTERS = {
    "dilation": ("value_list", "grey", "closing"),
    "erosion": ("value_list", "grey", "opening"),
}
_FILTER_NAMES = {
    raster_pb2.MORPHOLOGY_FILTER_UNSPECIFIED: "value_list",
    raster_pb2.MORPHOLOGY_FILTER_VALUE_LIST: "value_list",
    raster_pb2.MORPHOLOGY_FILTER_GREY: "grey",
    raster_pb2.MORPHOLOGY_FILTER_GREY_CLOSING: "closing",
    raster_pb2.MORPHOLOGY_FILTER_GREY_OPENING: "opening",
}
_FILTERS_BY_NAME = {name: value for value, name in _FILTER_NAMES.items() if value}


@dataclass(frozen=True)
class MorphologyParameters:
    """A dilation or erosion's parameters, checked."""

    tool: str  # "dilation" or "erosion"
    filter: str  # "value_list", "grey", "closing" or "opening"
    value_list: tuple[float, ...]
    size: int
    circular: bool

    @property
    def kernel_operation(self) -> str:
        """The grey filter's operation in the kernel's words."""
        return self.tool if self.filter == "grey" else self.filter

    @property
    def halo(self) -> int:
        """Pixels each side of a tile the result depends on (the kernel's halo_width)."""
        return 2 * self.size if self.filter in ("opening", "closing") else self.size


def check_parameters(p: MorphologyParameters) -> MorphologyParameters:
    """`p`, or ParameterError saying what is wrong with it."""
    if p.filter not in FILTERS[p.tool]:
        allowed = ", ".join(FILTERS[p.tool])
        raise ParameterError(
            f"{p.tool} has no {p.filter} filter; use one of {allowed}",
            metadata={"field": "filter"},
        )
    check_size(p.size, MAX_SIZE)
    if p.filter == "value_list":
        if not p.value_list:
            raise ParameterError(
                f"value_list is empty; list the values to {p.tool[:-5]}e",
                metadata={"field": "value_list"},
            )
        if len(p.value_list) > MAX_VALUES:
            raise ParameterError(f"value_list holds more than {MAX_VALUES} values")
        if any(math.isnan(v) for v in p.value_list):
            raise ParameterError(
                "value_list holds NaN, which is nodata and never changes",
                metadata={"field": "value_list"},
            )
    elif p.value_list:
        raise ParameterError(
            f"the {p.filter} filter uses no value_list; leave it empty",
            metadata={"field": "value_list"},
        )
    return p


def _parameters(tool: str):
    def parameters(message: raster_pb2.MorphologyParameters, read_text: ReadText):
        if message.filter not in _FILTER_NAMES:
            raise ParameterError(f"unknown filter {message.filter}")
        return check_parameters(
            MorphologyParameters(
                tool=tool,
                filter=_FILTER_NAMES[message.filter],
                value_list=tuple(message.value_list),
                size=message.size,
                circular=message.circular_structure,
            )
        )

    return parameters


def _memory(p: MorphologyParameters, dtype: np.dtype, out_dtype: np.dtype) -> tuple[float, float]:
    """The block, two value buffers and the output, and up to 8 bytes of rank or state
    buffers (while the tile is encoded, the block, the output, its encoding and the copy
    of it that goes back take no more); the encoded tile waits in the job, counted at the
    output's size."""
    return 4 * dtype.itemsize + 8, dtype.itemsize


def _check_band(p: MorphologyParameters, dtype: np.dtype, nodata: float | None, where: str):
    check_pixel_type(dtype, nodata, where, "iuf")
    check_values_of(p.value_list, dtype, where, "value_list")


def _same_as_input(p: MorphologyParameters, dtype: np.dtype, nodata: float | None):
    return dtype.name, nodata


def filter_block(
    block: np.ndarray,
    p: MorphologyParameters,
    interior: Interior,
    nodata: float | None,
    out_dtype: str,
    out_nodata: float | None,
) -> np.ndarray:
    """Runs in a worker: the tile's pixels of `block` (read with its halo) filtered."""
    from rsgrpc_kernels import morphology

    common = {"size": p.size, "circular": p.circular, "nodata": nodata, "interior": interior}
    if p.filter != "value_list":
        return morphology.grey_filter(block, operation=p.kernel_operation, **common)
    if p.tool == "dilation":
        return morphology.dilate(block, value_list=p.value_list, **common)
    return morphology.erode(block, value_list=p.value_list, **common)


def _describe(p: MorphologyParameters) -> str:
    shape = "circular" if p.circular else "square"
    return f"{p.tool} ({p.filter}), size {p.size}, {shape}"


def request_parameters(arguments: dict[str, Any]) -> raster_pb2.MorphologyParameters:
    """Remotior's value_list, size and circular_structure, and rsgrpc's filter."""
    name = arguments["filter"]
    if name not in _FILTERS_BY_NAME:
        raise ParameterError(f"unsupported filter {name!r}; use one of {list(_FILTERS_BY_NAME)}")
    return raster_pb2.MorphologyParameters(
        filter=_FILTERS_BY_NAME[name],
        value_list=list(arguments["value_list"] or []),
        size=arguments["size"],
        circular_structure=bool(arguments["circular_structure"]),
    )


def _declare(tool: str, name: str, rpc: str, command: str, summary: str, composite: str):
    return RasterTool[MorphologyParameters](
        name=name,
        rpc=rpc,
        command=command,
        summary=summary,
        request_type=getattr(raster_pb2, f"{rpc}Request"),
        response_type=getattr(raster_pb2, f"{rpc}Response"),
        output_type=raster_pb2.MorphologyOutput,
        parameters=_parameters(tool),
        halo=lambda p: p.halo,
        memory=_memory,
        check_band=_check_band,
        output=_same_as_input,
        kernel=filter_block,
        describe=_describe,
        request_parameters=request_parameters,
        warm=(tool, "grey"),
        cli_flags=(
            CliFlag("--size", "size", {"type": int, "required": True}),
            CliFlag("--value", "value_list", {"type": float, "action": "append", "default": []}),
            CliFlag(
                "--circular",
                "circular_structure",
                {"action": "store_true", "help": "disk footprint"},
            ),
            CliFlag(
                "--filter",
                "filter",
                {"choices": ["value_list", "grey", composite], "default": "value_list"},
            ),
        ),
    )


DILATION = _declare(
    "dilation",
    "band_dilation",
    "Dilate",
    "dilate",
    "grow the --value classes (or a grey dilation) by --size pixels",
    "closing",
)
EROSION = _declare(
    "erosion",
    "band_erosion",
    "Erode",
    "erode",
    "shrink the --value classes (or a grey erosion) by --size pixels",
    "opening",
)
