"""Distinct pixel values and how many pixels hold each: per tile, and merged over tiles.

NumPy only, nothing to compile: integer bands of a narrow range are counted with
`np.bincount` (linear in the pixels), wider integers and floats are sorted
(`np.unique`). Counts are int64 and merging is exact, so any tiling gives the counts of
one pass over the whole band.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Integer values spanning at most this many (or as many as the pixels) are counted in
# bins: 65,536 int64 bins are 512 KiB.
_MAX_BINS = 1 << 16


def valid_mask(block: np.ndarray, nodata: Sequence[float | None]) -> np.ndarray:
    """Pixels that are neither NaN nor equal to any of `nodata` (None and values the
    block's type cannot hold are skipped)."""
    valid = ~np.isnan(block) if block.dtype.kind == "f" else np.ones(block.shape, bool)
    for value in nodata:
        if value is None or value != value:  # NaN: already masked
            continue
        if block.dtype.kind in "iu":
            limits = np.iinfo(block.dtype)
            if not math.isfinite(value) or value != int(value):
                continue
            if not limits.min <= value <= limits.max:
                continue
            value = int(value)
        valid &= block != value
    return valid


def value_counts(
    block: np.ndarray, nodata: Sequence[float | None] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct valid values of `block` in increasing order, in its type, and the
    pixels (int64) that hold each; NaN and `nodata` values are not counted. A float
    -0.0 is counted as 0.0.

    Notes: besides the block, memory grows with a mask (one byte a pixel) and a copy of
    the valid values; sorting (wide integers and floats) takes another copy and the
    int64 counts.
    """
    values = block[valid_mask(block, nodata)]
    if values.size == 0:
        return np.empty(0, block.dtype), np.empty(0, np.int64)
    if block.dtype.kind in "iu" and block.dtype.itemsize <= 4:
        low = int(values.min())
        span = int(values.max()) - low + 1
        if span <= max(_MAX_BINS, values.size):
            bins = np.bincount((values.astype(np.int64) - low).ravel(), minlength=span)
            present = np.flatnonzero(bins)
            return (present + low).astype(block.dtype), bins[present].astype(np.int64)
    distinct, counts = np.unique(values, return_counts=True)
    if distinct.dtype.kind == "f":
        distinct = distinct + distinct.dtype.type(0)  # -0.0 as 0.0
    return distinct, counts.astype(np.int64)


def merge_value_counts(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Tables of `value_counts` merged into one: every value once, in increasing order,
    its counts summed exactly."""
    if not parts:
        return np.empty(0, np.float64), np.empty(0, np.int64)
    values = np.concatenate([v for v, _ in parts])
    counts = np.concatenate([c for _, c in parts])
    if values.size == 0:
        return values, counts
    order = np.argsort(values, kind="stable")
    values, counts = values[order], counts[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    return values[starts], np.add.reduceat(counts, starts)
