"""Band spectral distance, declared: Remotior's `band_spectral_distance`, the per-pixel
Euclidean distance or spectral angle (degrees) between two band sets of as many bands,
optionally 1 where it exceeds a threshold and 0 elsewhere.

It is a per-pixel map of several bands, which band calc already runs tiled and exact:
the server writes the band calc expression from the checked parameters (never from a
client's text) and runs it as band calc, with Remotior's output (Float32, nodata
-32768) and its nodata rule (any band's nodata, or `nodata_value`, makes nodata).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rsgrpc.tools.spec import ParameterError
from rsgrpc.v1 import raster_pb2

NAME = "band_spectral_distance"
RPC = "BandSpectralDistance"
COMMAND = "spectral-distance"
SUMMARY = "the per-pixel spectral distance between two band sets"
# Band calc reads at most 64 inputs: two sets of 32 bands.
MAX_BANDS = 32
OUTPUT_DTYPE = "float32"
OUTPUT_NODATA = -32768.0
# Remotior's names of the algorithms (cfg.minimum_distance(_a), cfg.spectral_angle_mapping(_a)).
_ALGORITHMS = {
    "md": raster_pb2.SPECTRAL_DISTANCE_ALGORITHM_EUCLIDEAN,
    "minimum distance": raster_pb2.SPECTRAL_DISTANCE_ALGORITHM_EUCLIDEAN,
    "sam": raster_pb2.SPECTRAL_DISTANCE_ALGORITHM_SPECTRAL_ANGLE,
    "spectral angle mapping": raster_pb2.SPECTRAL_DISTANCE_ALGORITHM_SPECTRAL_ANGLE,
}


@dataclass(frozen=True)
class DistanceParameters:
    """A spectral distance's parameters, checked."""

    spectral_angle: bool
    band_count: int
    nodata_value: float | None
    threshold: float | None


def parameters(
    message: raster_pb2.BandSpectralDistanceParameters, first_count: int, second_count: int
) -> DistanceParameters:
    """The request's parameters and band counts, checked; raises ParameterError."""
    if first_count == 0 or second_count == 0:
        raise ParameterError(
            "input_bandsets: both band sets need bands",
            metadata={"field": "first_inputs" if first_count == 0 else "second_inputs"},
        )
    if first_count != second_count:
        raise ParameterError(
            f"input_bandsets: the band sets have {first_count} and {second_count} bands; "
            "the distance needs as many bands in each",
            metadata={"field": "second_inputs"},
        )
    if first_count > MAX_BANDS:
        raise ParameterError(
            f"input_bandsets: {first_count} bands per set, more than {MAX_BANDS}",
            metadata={"field": "first_inputs"},
        )
    algorithms = {
        raster_pb2.SPECTRAL_DISTANCE_ALGORITHM_UNSPECIFIED: False,
        raster_pb2.SPECTRAL_DISTANCE_ALGORITHM_EUCLIDEAN: False,
        raster_pb2.SPECTRAL_DISTANCE_ALGORITHM_SPECTRAL_ANGLE: True,
    }
    if message.algorithm not in algorithms:
        raise ParameterError(
            f"unknown algorithm {message.algorithm}", metadata={"field": "algorithm"}
        )
    nodata = message.nodata_value if message.HasField("nodata_value") else None
    threshold = message.threshold if message.HasField("threshold") else None
    for field, value in (("nodata_value", nodata), ("threshold", threshold)):
        if value is not None and not math.isfinite(value):
            raise ParameterError(f"{field} must be finite, got {value}", metadata={"field": field})
    return DistanceParameters(algorithms[message.algorithm], first_count, nodata, threshold)


def input_names(band_count: int) -> tuple[list[str], list[str]]:
    """The expression's names of the first and the second set's bands."""
    return [f"a{i}" for i in range(1, band_count + 1)], [f"b{i}" for i in range(1, band_count + 1)]


def _sum(terms: Sequence[str]) -> str:
    return "(" + " + ".join(terms) + ")"


def expression(p: DistanceParameters) -> str:
    """The band calc expression of the distance over `input_names`: Remotior's formulas,
    with the cosine clipped to [-1, 1] so that rounding never makes an angle of nearly
    identical spectra undefined. A spectrum of zeros has no angle: its pixel is not
    finite, so band calc makes it nodata."""
    a, b = input_names(p.band_count)
    if p.spectral_angle:
        dot = _sum([f"{x} * {y}" for x, y in zip(a, b, strict=True)])
        norms = f"sqrt({_sum([f'{x} * {x}' for x in a])} * {_sum([f'{y} * {y}' for y in b])})"
        distance = f"arccos(clip({dot} / {norms}, -1, 1)) * {180 / math.pi!r}"
    else:
        distance = f"sqrt({_sum([f'({x} - {y}) ** 2' for x, y in zip(a, b, strict=True)])})"
    if p.threshold is None:
        return distance
    # Band calc masks a result that is not finite and every value computed from it, as
    # numpy.ma does: an undefined distance stays nodata through the comparison, never 0.
    return f"where({distance} > {p.threshold!r}, 1, 0)"


def describe(p: DistanceParameters) -> str:
    """What runs, for the session's log."""
    what = "spectral angle" if p.spectral_angle else "Euclidean distance"
    above = "" if p.threshold is None else f", 1 where above {p.threshold:g}"
    return f"{what} between two sets of {p.band_count} bands{above}"


def request_parameters(arguments: dict[str, Any]) -> raster_pb2.BandSpectralDistanceParameters:
    """Remotior's algorithm_name, nodata_value and threshold; raises ParameterError."""
    message = raster_pb2.BandSpectralDistanceParameters()
    name = arguments["algorithm_name"]
    if name is not None:
        algorithm = _ALGORITHMS.get(str(name).lower())
        if algorithm is None:
            raise ParameterError(
                f"unknown algorithm_name {name!r}; use 'md' (minimum distance) or 'sam' "
                "(spectral angle mapping)"
            )
        message.algorithm = algorithm
    for field in ("nodata_value", "threshold"):
        value = arguments[field]
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ParameterError(f"{field} must be a number, got {value!r}")
            setattr(message, field, float(value))
    return message


def input_bandsets(value: Any) -> tuple[Any, Any]:
    """Remotior's input_bandsets: a list of two band sets (numbers or BandSets)."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ParameterError(
            f"input_bandsets must list two band sets (numbers or BandSets), got {value!r}"
        )
    return value[0], value[1]
