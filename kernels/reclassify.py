"""Raster reclassification: new values for the pixels that a table's rules select, by value or
by a condition on the pixel value (Remotior Sensus' ``raster_reclassification``).

A table is a sequence of rules ``(old, new)``. ``old`` is a number (pixels equal to it in the
block's type), ``None`` (nodata pixels) or a condition on the pixel value named ``raster``
(band calc's language, ``expression``, parsed and never evaluated; it runs as a block program,
``bandcalc.evaluate``, so a new condition compiles nothing). ``new`` is the selected pixels'
value, NaN for nodata. Where several rules select a pixel, the last one wins; a valid pixel that
no rule selects keeps its value, nodata where the output type cannot hold it (integers are
rounded half away from zero first, as band calc writes them); a nodata pixel stays nodata
unless a ``None`` rule selects it. Nodata pixels are those equal to the nodata value and, in
float blocks, NaN; no condition selects them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import numba
import numpy as np

from . import bandcalc
from .condition import parse_condition
from .expression import Expression
from .scalar_ops import JIT

RECLASSIFY_DTYPES: Final = (
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "float32",
    "float64",
)
Rule = tuple[float | str | None, float]
# A condition's pixels as the block program writes them: 1 true, 0 false, this where masked.
_MASKED: Final = 255


def reclassify(
    block: np.ndarray,
    rules: Sequence[Rule],
    *,
    nodata: float | None = None,
    out_dtype: str | np.dtype | None = None,
    out_nodata: float | None = None,
    interior: tuple[slice, slice] | None = None,
) -> np.ndarray:
    """The pixels of ``block`` (its ``interior``, by default all of it) reclassified by
    ``rules`` (see the module's notes) into ``out_dtype`` (by default the block's).

    Every new value must be a value of ``out_dtype`` or NaN, and ``out_nodata`` must be one
    (NaN in floats) wherever the result can hold nodata: ValueError otherwise.

    Notes
    -----
    Memory per pixel: a C-contiguous copy of the interior when it is not one, the value
    (float64) and the output; with conditions, the winning rule (int32), and a condition's
    block program output (uint8) and the mask it gives. An 8- or 16-bit block adds a table
    of one int32 per value of its type (256 KiB for 16 bits).
    """
    pixels = block if interior is None else block[interior]
    pixels = np.ascontiguousarray(pixels)
    if pixels.ndim != 2 or pixels.dtype.name not in RECLASSIFY_DTYPES:
        raise ValueError(
            f"block must be a 2-D array of {', '.join(RECLASSIFY_DTYPES)}, "
            f"got {pixels.ndim} dimensions of {pixels.dtype}"
        )
    out_type = np.dtype(pixels.dtype if out_dtype is None else out_dtype)
    if out_type.name not in RECLASSIFY_DTYPES:
        raise ValueError(f"unsupported out_dtype, got {out_dtype!r}")
    if out_nodata is not None and not _fits(out_nodata, out_type):
        raise ValueError(f"out_nodata {out_nodata!r} is not a value of {out_type}")
    new_values = np.array([_new_value(new, out_type) for _, new in rules], dtype=np.float64)
    values, value_rules, nodata_rule = _value_lookup(rules, pixels.dtype)
    table, offset = _direct_table(values, value_rules, pixels.dtype)
    conditions = [(index, old) for index, (old, _) in enumerate(rules) if isinstance(old, str)]
    winners = np.full(pixels.shape if conditions else (0, 0), -1, dtype=np.int32)
    for index, old in conditions:
        selected = _condition_pixels(parse_condition(old), pixels, nodata)
        np.maximum(winners, np.int32(index), out=winners, where=selected)
    has_nodata, nodata_value = _nodata_test(nodata, pixels.dtype)
    low, high = _bounds(out_type)
    result = np.empty(pixels.shape, dtype=np.float64)
    written = _reclassify_pixels(
        pixels,
        has_nodata,
        nodata_value,
        values,
        value_rules,
        table,
        offset,
        nodata_rule,
        winners,
        new_values,
        low,
        high,
        math.nan if out_nodata is None else float(out_nodata),
        result,
    )
    if written and out_nodata is None:
        raise ValueError(f"{written} pixels are nodata: out_nodata is needed")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes infinite
        return result.astype(out_type)


def _new_value(new: float, out_type: np.dtype) -> float:
    value = float(new)
    if not math.isnan(value) and not _fits(value, out_type):
        raise ValueError(f"new value {value:g} is not a value of {out_type}")
    return value


def _fits(value: float, dtype: np.dtype) -> bool:
    if dtype.kind == "f":
        return True
    info = np.iinfo(dtype)
    return math.isfinite(value) and value == int(value) and info.min <= value <= info.max


def _value_lookup(rules: Sequence[Rule], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, int]:
    """The old values as pixels of ``dtype`` hold them, sorted, with the last rule of each;
    and the last rule that selects nodata pixels (-1: none)."""
    last: dict[float, int] = {}
    nodata_rule = -1
    for index, (old, _) in enumerate(rules):
        if old is None:
            nodata_rule = index
        elif not isinstance(old, str):
            value = float(old)
            if not _holds(value, dtype):
                raise ValueError(f"old value {value:g} is not a value of {dtype}")
            last[float(dtype.type(value))] = index
    ordered = sorted(last)
    return (
        np.array(ordered, dtype=np.float64),
        np.array([last[v] for v in ordered], dtype=np.int32),
        nodata_rule,
    )


def _direct_table(
    values: np.ndarray, value_rules: np.ndarray, dtype: np.dtype
) -> tuple[np.ndarray, int]:
    """For 8- and 16-bit integers, each possible pixel's value rule (-1: none) indexed by
    the pixel minus the type's minimum, which a pixel reads at once; else an empty table
    (the kernel searches ``values``)."""
    if dtype.kind == "f" or dtype.itemsize > 2:
        return np.empty(0, dtype=np.int32), 0
    info = np.iinfo(dtype)
    table = np.full(int(info.max) - int(info.min) + 1, -1, dtype=np.int32)
    table[values.astype(np.int64) - int(info.min)] = value_rules
    return table, int(info.min)


def _holds(value: float, dtype: np.dtype) -> bool:
    if dtype.kind == "f":
        return not math.isnan(value) and (
            not math.isfinite(value) or abs(value) <= float(np.finfo(dtype).max)
        )
    return _fits(value, dtype)


def _condition_pixels(
    expression: Expression, pixels: np.ndarray, nodata: float | None
) -> np.ndarray:
    """Where the condition is true: never where the block program masks it (nodata pixels,
    and operations numpy.ma masks)."""
    single = pixels.dtype == np.float32
    truth, _, _ = bandcalc.evaluate(
        expression,
        [pixels],
        [nodata],
        output_dtype=np.uint8,
        output_nodata=_MASKED,
        method="program",
        calc_dtype=np.float32 if single else np.float64,
    )
    return truth == 1


def _nodata_test(nodata: float | None, dtype: np.dtype) -> tuple[bool, float]:
    """Whether pixels equal to a value are nodata, and that value as a pixel holds it
    (a nodata value no pixel can hold selects none)."""
    if nodata is None or math.isnan(nodata) or not _holds(float(nodata), dtype):
        return False, 0.0
    return True, float(dtype.type(nodata))


def _bounds(out_type: np.dtype) -> tuple[float, float]:
    """A value rounded half away from zero, then truncated, fits when strictly inside."""
    if out_type.kind == "f":
        return -math.inf, math.inf
    info = np.iinfo(out_type)
    return float(info.min) - 1.0, float(info.max) + 1.0


@numba.njit(cache=True, **JIT)
def _reclassify_pixels(
    pixels,
    has_nodata,
    nodata_value,
    values,
    value_rules,
    table,
    offset,
    nodata_rule,
    winners,
    new_values,
    low,
    high,
    out_nodata,
    result,
):  # pragma: no cover - compiled
    """Each pixel's winning rule (the last of its value's, read from ``table`` or searched
    in ``values``, and of its conditions', in ``winners`` unless empty), and its value: the
    rule's new value, or the pixel's own, rounded half away from zero and nodata outside
    (low, high) when the output is an integer type. Returns how many pixels are nodata."""
    integer = math.isfinite(low)
    direct = table.shape[0] > 0
    conditional = winners.shape[0] > 0
    rows, cols = pixels.shape
    count = values.shape[0]
    written = 0
    for i in range(rows):
        for j in range(cols):
            v = np.float64(pixels[i, j])
            missing = np.isnan(v) or (has_nodata and v == nodata_value)
            if missing:
                rule = nodata_rule
            else:
                rule = winners[i, j] if conditional else -1
                if direct:
                    found = table[np.int64(v) - offset]
                    rule = max(rule, found)
                elif count > 0:
                    # A search without branches on the data: the last value <= v.
                    lo = 0
                    n = count
                    while n > 1:
                        half = n // 2
                        lo = lo + half if values[lo + half] <= v else lo
                        n -= half
                    if values[lo] == v:
                        rule = max(rule, value_rules[lo])
            if rule >= 0:
                w = new_values[rule]
            elif missing:
                w = np.nan
            elif integer:
                w = v + 0.5 if v >= 0.0 else v - 0.5
                w = np.trunc(w) if w > low and w < high else np.nan
            else:
                w = v
            if np.isnan(w):
                result[i, j] = out_nodata
                written += 1
            else:
                result[i, j] = w
    return written
