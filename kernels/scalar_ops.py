"""Band calc's scalar operations and per-pixel aggregations, compiled once.

Both ways of running an expression call these: the fused kernel (``bandcalc``) and the block
program (``block_program``); so a pixel is the same value whichever runs it.
"""

from __future__ import annotations

import math
from typing import Final

import numba
import numpy as np

JIT: Final = {"nogil": True, "error_model": "numpy"}
# The reducers allocate nothing: without reference counting, the scratch vector they are handed
# costs no atomic increment per pixel once they are inlined into a kernel.
REDUCER_JIT: Final = {**JIT, "_nrt": False}
# Scalar operations, called by the code the expression emits (LLVM inlines them).


@numba.njit(cache=True, **JIT)
def floordiv(x: float, y: float) -> float:
    return x // y


@numba.njit(cache=True, **JIT)
def mod(x: float, y: float) -> float:
    return x % y


@numba.njit(cache=True, **JIT)
def power(x: float, y: float) -> float:
    return math.pow(x, y)


@numba.njit(cache=True, **JIT)
def sqrt(x: float) -> float:
    return np.sqrt(x)


@numba.njit(cache=True, **JIT)
def log(x: float) -> float:
    return np.log(x)


@numba.njit(cache=True, **JIT)
def log10(x: float) -> float:
    return np.log10(x)


@numba.njit(cache=True, **JIT)
def exp(x: float) -> float:
    return np.exp(x)


@numba.njit(cache=True, **JIT)
def absolute(x: float) -> float:
    return abs(x)


@numba.njit(cache=True, **JIT)
def sin(x: float) -> float:
    return np.sin(x)


@numba.njit(cache=True, **JIT)
def cos(x: float) -> float:
    return np.cos(x)


@numba.njit(cache=True, **JIT)
def tan(x: float) -> float:
    return np.tan(x)


@numba.njit(cache=True, **JIT)
def arcsin(x: float) -> float:
    return np.arcsin(x)


@numba.njit(cache=True, **JIT)
def arccos(x: float) -> float:
    return np.arccos(x)


@numba.njit(cache=True, **JIT)
def arctan(x: float) -> float:
    return np.arctan(x)


# Aggregations over scratch[off:off + n], NaN ignored as numpy's nan* functions ignore it.


@numba.njit(cache=True, **REDUCER_JIT)
def _compact(s: np.ndarray, off: int, n: int) -> int:
    """Move the non-NaN values of the region to its front, in order; return their count."""
    k = 0
    for t in range(n):
        v = s[off + t]
        if not math.isnan(v):
            s[off + k] = v
            k += 1
    return k


@numba.njit(cache=True, **REDUCER_JIT)
def _sort(s: np.ndarray, off: int, k: int) -> None:
    for t in range(1, k):
        v = s[off + t]
        u = t - 1
        while u >= 0 and s[off + u] > v:
            s[off + u + 1] = s[off + u]
            u -= 1
        s[off + u + 1] = v


@numba.njit(cache=True, **REDUCER_JIT)
def nanmin(s: np.ndarray, off: int, n: int, q: float) -> float:
    k = _compact(s, off, n)
    if k == 0:
        return np.nan
    r = s[off]
    for t in range(1, k):
        if s[off + t] < r:
            r = s[off + t]
    return r


@numba.njit(cache=True, **REDUCER_JIT)
def nanmax(s: np.ndarray, off: int, n: int, q: float) -> float:
    k = _compact(s, off, n)
    if k == 0:
        return np.nan
    r = s[off]
    for t in range(1, k):
        if s[off + t] > r:
            r = s[off + t]
    return r


@numba.njit(cache=True, **REDUCER_JIT)
def nansum(s: np.ndarray, off: int, n: int, q: float) -> float:
    k = _compact(s, off, n)
    r = 0.0
    for t in range(k):
        r += s[off + t]
    return r


@numba.njit(cache=True, **REDUCER_JIT)
def nanmean(s: np.ndarray, off: int, n: int, q: float) -> float:
    k = _compact(s, off, n)
    if k == 0:
        return np.nan
    r = 0.0
    for t in range(k):
        r += s[off + t]
    return r / k


@numba.njit(cache=True, **REDUCER_JIT)
def nanstd(s: np.ndarray, off: int, n: int, q: float) -> float:
    # Population standard deviation (numpy's ddof=0), summed in order as numpy does per pixel.
    k = _compact(s, off, n)
    if k == 0:
        return np.nan
    total = 0.0
    for t in range(k):
        total += s[off + t]
    mean = total / k
    squares = 0.0
    for t in range(k):
        d = s[off + t] - mean
        squares += d * d
    return math.sqrt(squares / k)


@numba.njit(cache=True, **REDUCER_JIT)
def _lerp(a: float, b: float, t: float) -> float:
    # numpy's _lerp: the form that is exact at the nearer end.
    d = b - a
    if t >= 0.5:
        return b - d * (1.0 - t)
    return a + d * t


@numba.njit(cache=True, **REDUCER_JIT)
def nanpercentile(s: np.ndarray, off: int, n: int, q: float) -> float:
    # numpy's default "linear" method: virtual index q/100 * (k - 1), interpolated.
    k = _compact(s, off, n)
    if k == 0:
        return np.nan
    _sort(s, off, k)
    index = (q / 100.0) * (k - 1)
    below = math.floor(index)
    lo = int(below)
    hi = min(lo + 1, k - 1)
    return _lerp(s[off + lo], s[off + hi], index - below)


@numba.njit(cache=True, **REDUCER_JIT)
def nanmedian(s: np.ndarray, off: int, n: int, q: float) -> float:
    k = _compact(s, off, n)
    if k == 0:
        return np.nan
    _sort(s, off, k)
    h = k // 2
    if k % 2 == 1:
        return s[off + h]
    return (s[off + h - 1] + s[off + h]) / 2.0


# Operators and functions that are calls to the compiled scalar operations above.
BINARY_OPERATIONS: Final = {"//": floordiv, "%": mod, "**": power}
UNARY_OPERATIONS: Final = {
    "sqrt": sqrt,
    "log": log,
    "log10": log10,
    "exp": exp,
    "abs": absolute,
    "sin": sin,
    "cos": cos,
    "tan": tan,
    "arcsin": arcsin,
    "arccos": arccos,
    "arctan": arctan,
}
REDUCERS: Final = {
    "min": nanmin,
    "max": nanmax,
    "sum": nansum,
    "mean": nanmean,
    "std": nanstd,
    "median": nanmedian,
    "percentile": nanpercentile,
}
