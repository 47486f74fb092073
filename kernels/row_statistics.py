"""Statistics of an output row as written, shared by both ways of running band calc."""

from __future__ import annotations

from typing import Final

import numba
import numpy as np

from .scalar_ops import JIT

# Statistics of an output row, in passes that numba vectorises: validity is a comparison, not a
# branch, and sums may be reassociated (this changes their rounding, never the pixels).
# Minimum and maximum are taken over integer keys that order as the values do (a float's bits
# with the magnitude bits flipped when negative), because LLVM vectorises integer min/max
# reductions but not floating-point ones.

KEY_MAX: Final = np.int64(np.iinfo(np.int64).max)
KEY_MIN: Final = np.int64(np.iinfo(np.int64).min)
# "reassoc" lets LLVM vectorise the sums; without "nsz" it may not rewrite (w - origin) - mean
# as w - (origin + mean), which would undo the shift.
_STATISTICS_JIT: Final = {**JIT, "fastmath": {"reassoc", "contract"}}


def statistics_keys(dtype: np.dtype) -> tuple[np.dtype, int, int]:
    """How to key an output row's values: the dtype to view it as, and the shift and mask
    that flip a negative float's magnitude bits (for integers the key is the value)."""
    if dtype == np.float32:
        return np.dtype(np.int32), 31, 0x7FFFFFFF
    if dtype == np.float64:
        return np.dtype(np.int64), 63, 0x7FFFFFFFFFFFFFFF
    return dtype, 0, 0


def value_of_key(key: int, dtype: np.dtype) -> float:
    view, shift, flip = statistics_keys(dtype)
    if not flip:
        return float(key)
    bits = key ^ ((key >> shift) & flip)
    return float(np.array([bits], dtype=view).view(dtype)[0])


@numba.njit(cache=True, **_STATISTICS_JIT)
def first_valid(row, nodata):
    """The first value of an output row that is neither NaN nor nodata; NaN if none."""
    for j in range(row.shape[0]):
        w = np.float64(row[j])
        if w == w and w != nodata:
            return w
    return np.nan


@numba.njit(cache=True, **_STATISTICS_JIT)
def row_sums(row, keys, nodata, origin, key_shift, key_flip):
    """Valid count, sum about ``origin``, and the keys of the minimum and maximum of a row."""
    n = 0
    total = 0.0
    low = KEY_MAX
    high = KEY_MIN
    for j in range(row.shape[0]):
        w = np.float64(row[j])
        valid = (w == w) & (w != nodata)
        n += np.int64(valid)
        total += (w - origin) if valid else 0.0
        b = keys[j]
        key = np.int64(b ^ ((b >> key_shift) & key_flip))
        low = min(low, key if valid else KEY_MAX)
        high = max(high, key if valid else KEY_MIN)
    return n, total, low, high


@numba.njit(cache=True, **_STATISTICS_JIT)
def row_squared_deviations(row, nodata, origin, mean):
    """The sum of squared deviations of a row's valid values from ``origin + mean``."""
    m2 = 0.0
    for j in range(row.shape[0]):
        w = np.float64(row[j])
        d = (w - origin) - mean
        m2 += d * d if (w == w) & (w != nodata) else 0.0
    return m2
