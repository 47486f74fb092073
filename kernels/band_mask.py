"""Band mask (Remotior's ``band_mask``): a band's pixels set to nodata where a mask, on
the band's grid, holds one of a list of values, the masked pixels optionally grown by a
disk of a radius (a buffer).

A pixel of the output is ``out_nodata`` where the band is nodata, where the mask is
nodata, or where a mask pixel whose value is listed (and that is not nodata) lies within
``buffer`` pixels of it (the disk ``dy*dy + dx*dx <= buffer*buffer`` of
:mod:`morphology`, Remotior's circular structure); elsewhere it is the band's pixel.
Listed values are compared in the mask's dtype (`listed_values`); a value the mask's
dtype cannot hold never matches.
Halo: ``buffer``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from . import morphology

Interior = tuple[slice, slice]


def nodata_pixels(block: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """Where ``block`` equals ``nodata`` (NaN nodata: where it is NaN); None without
    nodata, or with a nodata no pixel can hold."""
    if nodata is None:
        return None
    if math.isnan(nodata):
        return np.isnan(block) if block.dtype.kind == "f" else None
    if block.dtype.kind in "iu":
        limits = np.iinfo(block.dtype)
        if nodata != int(nodata) or not limits.min <= nodata <= limits.max:
            return None
    return block == block.dtype.type(nodata)


def listed_values(values: Sequence[float], dtype: np.dtype) -> np.ndarray:
    """The values of ``values`` that a pixel of ``dtype`` can hold, as that dtype: whole
    numbers in an integer type's range; in a float type, each value rounded to it, as
    NumPy compares a float32 array with a Python float."""
    kept = []
    for value in values:
        if math.isnan(value):
            continue
        if dtype.kind in "iu":
            limits = np.iinfo(dtype)
            if value != int(value) or not limits.min <= value <= limits.max:
                continue
            kept.append(int(value))
        elif math.isinf(value) or abs(value) <= float(np.finfo(dtype).max):
            kept.append(value)
    return np.array(kept, dtype=dtype)


def mask_band(
    block: np.ndarray,
    mask: np.ndarray,
    *,
    mask_values: Sequence[float],
    buffer: int = 0,
    nodata: float | None = None,
    mask_nodata: float | None = None,
    out_nodata: float,
    interior: Interior | None = None,
) -> np.ndarray:
    """The pixels ``interior`` of ``block`` masked by ``mask`` (the same shape, on the
    same grid), of ``block``'s dtype.

    ``block`` and ``mask`` hold the tile with a halo of at least ``buffer`` pixels
    where the raster goes on (``interior`` says where the tile lies in them), so the
    buffer crosses tile edges as it does on the whole raster.
    """
    if block.shape != mask.shape:
        raise ValueError(f"mask of shape {mask.shape} is not the block's {block.shape}")
    if isinstance(buffer, bool) or not isinstance(buffer, int | np.integer) or buffer < 0:
        raise ValueError(f"buffer must be a whole number of pixels from 0, got {buffer!r}")
    rows, cols = interior or (slice(0, block.shape[0]), slice(0, block.shape[1]))
    values = listed_values(mask_values, mask.dtype)
    hits = np.isin(mask, values)
    mask_missing = nodata_pixels(mask, mask_nodata)
    if mask_missing is not None:
        hits &= ~mask_missing
    if buffer:
        grown = morphology.grey_filter(
            hits.view(np.uint8),
            operation="dilation",
            size=int(buffer),
            circular=True,
            interior=(rows, cols),
        )
        masked = grown.view(bool)
    else:
        masked = hits[rows, cols]
    if mask_missing is not None:
        masked |= mask_missing[rows, cols]
    band_missing = nodata_pixels(block, nodata)
    if band_missing is not None:
        masked |= band_missing[rows, cols]
    out = np.array(block[rows, cols], dtype=block.dtype, copy=True, order="C")
    out[masked] = block.dtype.type(out_nodata)
    return out
