"""Band calc kernels: compile a parsed Expression to a numba kernel and run it on a tile.

The kernel is built without ``eval``/``exec`` and without generating source: every node of the
expression tree becomes a small scalar function that closes over its children's functions and
its constants (numba treats closed-over functions and numbers as constants) and is declared
``inline="always"``, so that numba inlines it into its parent. The kernel is one loop over the
rows of C-contiguous tiles, with the whole tree fused into its body: it reads each input pixel
once, widened to float64, tests each input's nodata, evaluates, casts and writes; then, while
the row is still in cache, it takes the row's statistics in two vectorised passes. Only
subtrees nested deeper than ``_MAX_INLINE_DEPTH`` are compiled apart and called, and the
aggregations call shared reducers over a scratch vector. The kernel releases the GIL; large
tiles are split into row ranges run by ``numba.get_num_threads()`` threads.

Semantics (Remotior Sensus' band calc, made per pixel):

- Every value is computed in float64; inputs are read in their own dtype and widened.
- Output pixels are ``output_nodata`` where any input the expression reads is nodata at that
  pixel (an input's nodata is compared in the input's dtype; a NaN nodata matches NaN pixels),
  where the result is not finite, or where it cannot be represented in the output dtype.
- Integer outputs follow numpy's ``astype``: the float64 result is truncated toward zero; a
  result whose truncation lies outside the dtype's range is nodata (never wrapped or clipped).
  Float32 outputs round to nearest; a finite float64 that overflows float32 is nodata.
- ``nodata("name")`` is a constant of the compiled kernel (NaN when the input has none).
- Statistics (``evaluate``) are those of the values as written, after the cast:
  pixels that are NaN or equal to ``output_nodata`` are not valid, whoever made them so.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import numba
import numpy as np
from numba import types

from .expression import Binary, Call, Constant, Expression, Input, NodataOf, Node, Unary

DEFAULT_OUTPUT_DTYPE: Final = np.dtype(np.float32)
DEFAULT_OUTPUT_NODATA: Final = -32768.0
KERNEL_CACHE_SIZE: Final = 64
# How deep node functions may nest when inlined into one another; see _inline.
_MAX_INLINE_DEPTH: Final = 8
# Below this many pixels per thread, a tile is not worth splitting among threads.
_PIXELS_PER_THREAD: Final = 1 << 18

OUTPUT_DTYPES: Final = frozenset(
    np.dtype(t)
    for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64)
)
INPUT_DTYPES: Final = OUTPUT_DTYPES | {np.dtype(np.int64), np.dtype(np.uint64)}

# GDAL's data type names as Remotior writes them ("Byte" is GDAL's uint8).
_GDAL_DTYPES: Final = {
    "byte": "uint8",
    "uint8": "uint8",
    "int8": "int8",
    "uint16": "uint16",
    "int16": "int16",
    "uint32": "uint32",
    "int32": "int32",
    "float32": "float32",
    "float64": "float64",
}

_NODATA_NONE: Final = 0
_NODATA_VALUE: Final = 1
_NODATA_NAN: Final = 2

_JIT: Final = {"nogil": True, "error_model": "numpy"}
_INLINE: Final = {"inline": "always", **_JIT}


def normalize_dtype(name: str | np.dtype | type) -> np.dtype:
    """The numpy dtype for an output dtype given as numpy or GDAL/Remotior name ("Float32")."""
    if isinstance(name, str):
        key = _GDAL_DTYPES.get(name.strip().lower())
        if key is None:
            allowed = ", ".join(sorted(str(d) for d in OUTPUT_DTYPES))
            raise ValueError(f"unsupported output dtype, got {name!r}; allowed: {allowed}")
        return np.dtype(key)
    dtype = np.dtype(name)
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"unsupported output dtype, got {dtype!s}")
    return dtype


# Scalar operations, inlined into every kernel that uses them (numba IR inlining).


@numba.njit(**_INLINE)
def _add(x: float, y: float) -> float:
    return x + y


@numba.njit(**_INLINE)
def _sub(x: float, y: float) -> float:
    return x - y


@numba.njit(**_INLINE)
def _mul(x: float, y: float) -> float:
    return x * y


@numba.njit(**_INLINE)
def _div(x: float, y: float) -> float:
    return x / y


@numba.njit(**_INLINE)
def _floordiv(x: float, y: float) -> float:
    return x // y


@numba.njit(**_INLINE)
def _mod(x: float, y: float) -> float:
    return x % y


@numba.njit(**_INLINE)
def _pow(x: float, y: float) -> float:
    return math.pow(x, y)


@numba.njit(**_INLINE)
def _lt(x: float, y: float) -> float:
    return 1.0 if x < y else 0.0


@numba.njit(**_INLINE)
def _le(x: float, y: float) -> float:
    return 1.0 if x <= y else 0.0


@numba.njit(**_INLINE)
def _gt(x: float, y: float) -> float:
    return 1.0 if x > y else 0.0


@numba.njit(**_INLINE)
def _ge(x: float, y: float) -> float:
    return 1.0 if x >= y else 0.0


@numba.njit(**_INLINE)
def _eq(x: float, y: float) -> float:
    return 1.0 if x == y else 0.0


@numba.njit(**_INLINE)
def _ne(x: float, y: float) -> float:
    return 1.0 if x != y else 0.0


@numba.njit(**_INLINE)
def _and(x: float, y: float) -> float:
    return 1.0 if (x != 0.0 and y != 0.0) else 0.0


@numba.njit(**_INLINE)
def _or(x: float, y: float) -> float:
    return 1.0 if (x != 0.0 or y != 0.0) else 0.0


@numba.njit(**_INLINE)
def _minimum(x: float, y: float) -> float:
    if math.isnan(x):
        return x
    if math.isnan(y):
        return y
    return x if x <= y else y


@numba.njit(**_INLINE)
def _maximum(x: float, y: float) -> float:
    if math.isnan(x):
        return x
    if math.isnan(y):
        return y
    return x if x >= y else y


@numba.njit(**_INLINE)
def _neg(x: float) -> float:
    return -x


@numba.njit(**_INLINE)
def _not(x: float) -> float:
    return 1.0 if x == 0.0 else 0.0


@numba.njit(**_INLINE)
def _isnan(x: float) -> float:
    return 1.0 if math.isnan(x) else 0.0


@numba.njit(**_INLINE)
def _sqrt(x: float) -> float:
    return np.sqrt(x)


@numba.njit(**_INLINE)
def _log(x: float) -> float:
    return np.log(x)


@numba.njit(**_INLINE)
def _log10(x: float) -> float:
    return np.log10(x)


@numba.njit(**_INLINE)
def _exp(x: float) -> float:
    return np.exp(x)


@numba.njit(**_INLINE)
def _abs(x: float) -> float:
    return abs(x)


@numba.njit(**_INLINE)
def _sin(x: float) -> float:
    return np.sin(x)


@numba.njit(**_INLINE)
def _cos(x: float) -> float:
    return np.cos(x)


@numba.njit(**_INLINE)
def _tan(x: float) -> float:
    return np.tan(x)


@numba.njit(**_INLINE)
def _arcsin(x: float) -> float:
    return np.arcsin(x)


@numba.njit(**_INLINE)
def _arccos(x: float) -> float:
    return np.arccos(x)


@numba.njit(**_INLINE)
def _arctan(x: float) -> float:
    return np.arctan(x)


# Aggregations over scratch[off:off + n], NaN ignored as numpy's nan* functions ignore it.


@numba.njit(**_JIT)
def _compact(s: np.ndarray, off: int, n: int) -> int:
    """Move the non-NaN values of the region to its front, in order; return their count."""
    k = 0
    for t in range(n):
        v = s[off + t]
        if not math.isnan(v):
            s[off + k] = v
            k += 1
    return k


@numba.njit(**_JIT)
def _sort(s: np.ndarray, off: int, k: int) -> None:
    for t in range(1, k):
        v = s[off + t]
        u = t - 1
        while u >= 0 and s[off + u] > v:
            s[off + u + 1] = s[off + u]
            u -= 1
        s[off + u + 1] = v


@numba.njit(**_JIT)
def _nanmin(s: np.ndarray, off: int, n: int, q: float) -> float:
    k = _compact(s, off, n)
    if k == 0:
        return np.nan
    r = s[off]
    for t in range(1, k):
        if s[off + t] < r:
            r = s[off + t]
    return r


@numba.njit(**_JIT)
def _nanmax(s: np.ndarray, off: int, n: int, q: float) -> float:
    k = _compact(s, off, n)
    if k == 0:
        return np.nan
    r = s[off]
    for t in range(1, k):
        if s[off + t] > r:
            r = s[off + t]
    return r


@numba.njit(**_JIT)
def _nansum(s: np.ndarray, off: int, n: int, q: float) -> float:
    k = _compact(s, off, n)
    r = 0.0
    for t in range(k):
        r += s[off + t]
    return r


@numba.njit(**_JIT)
def _nanmean(s: np.ndarray, off: int, n: int, q: float) -> float:
    k = _compact(s, off, n)
    if k == 0:
        return np.nan
    r = 0.0
    for t in range(k):
        r += s[off + t]
    return r / k


@numba.njit(**_JIT)
def _nanstd(s: np.ndarray, off: int, n: int, q: float) -> float:
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


@numba.njit(**_JIT)
def _lerp(a: float, b: float, t: float) -> float:
    # numpy's _lerp: the form that is exact at the nearer end.
    d = b - a
    if t >= 0.5:
        return b - d * (1.0 - t)
    return a + d * t


@numba.njit(**_JIT)
def _nanpercentile(s: np.ndarray, off: int, n: int, q: float) -> float:
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


@numba.njit(**_JIT)
def _nanmedian(s: np.ndarray, off: int, n: int, q: float) -> float:
    k = _compact(s, off, n)
    if k == 0:
        return np.nan
    _sort(s, off, k)
    h = k // 2
    if k % 2 == 1:
        return s[off + h]
    return (s[off + h - 1] + s[off + h]) / 2.0


_BINARY: Final = {
    "+": _add,
    "-": _sub,
    "*": _mul,
    "/": _div,
    "//": _floordiv,
    "%": _mod,
    "**": _pow,
    "<": _lt,
    "<=": _le,
    ">": _gt,
    ">=": _ge,
    "==": _eq,
    "!=": _ne,
    "and": _and,
    "or": _or,
}
_UNARY: Final = {
    "-": _neg,
    "not": _not,
    "sqrt": _sqrt,
    "log": _log,
    "log10": _log10,
    "exp": _exp,
    "abs": _abs,
    "sin": _sin,
    "cos": _cos,
    "tan": _tan,
    "arcsin": _arcsin,
    "arccos": _arccos,
    "arctan": _arctan,
    "isnan": _isnan,
}
_REDUCERS: Final = {
    "min": _nanmin,
    "max": _nanmax,
    "sum": _nansum,
    "mean": _nanmean,
    "std": _nanstd,
    "median": _nanmedian,
    "percentile": _nanpercentile,
}


@dataclass(frozen=True, slots=True)
class BandCalcKernel:
    """A compiled expression for one set of input dtypes and one output dtype."""

    key: Hashable
    input_dtypes: tuple[np.dtype, ...]
    output_dtype: np.dtype
    run: Callable[..., tuple[int, int, float, float, float, float]]


@dataclass(frozen=True, slots=True)
class TileStatistics:
    """Statistics of the values written to one output tile, output nodata excluded.

    Computed on each value as written (after the cast to the output dtype); a pixel is valid
    when it is neither NaN nor equal to the output nodata, whether the kernel wrote nodata
    there or the expression gave that value. ``sum_squared_deviations`` is the sum of squared
    deviations from ``mean`` (M2 of Chan's parallel formula); with no valid pixel, minimum and
    maximum are +inf and -inf, mean and M2 are 0.
    """

    valid_pixel_count: int
    nodata_pixel_count: int
    minimum: float
    maximum: float
    mean: float
    sum_squared_deviations: float


class _LRU:
    """A bounded, thread-safe least-recently-used map."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, BandCalcKernel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> BandCalcKernel | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: BandCalcKernel) -> BandCalcKernel:
        with self._lock:
            existing = self._data.get(key)
            if existing is not None:  # another thread compiled it first: share one kernel
                self._data.move_to_end(key)
                return existing
            self._data[key] = value
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
            return value

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_KERNELS: Final = _LRU(KERNEL_CACHE_SIZE)
_POOLS: Final[dict[int, ThreadPoolExecutor]] = {}
_POOLS_LOCK: Final = threading.Lock()


def kernel_cache_info() -> dict[str, int]:
    """How many kernels the per-process cache holds, and its bound."""
    return {"size": len(_KERNELS), "maxsize": _KERNELS.maxsize}


def clear_kernel_cache() -> None:
    _KERNELS.clear()


def compile_kernel(
    expression: Expression,
    input_dtypes: Sequence[np.dtype | str | type],
    output_dtype: np.dtype | str | type = DEFAULT_OUTPUT_DTYPE,
    nodata_values: Mapping[str, float | None] | None = None,
) -> BandCalcKernel:
    """The kernel for ``expression`` on inputs of ``input_dtypes``, from the cache if there.

    ``nodata_values`` gives the value of each ``nodata("name")`` the expression uses (None or
    missing: NaN). Kernels are cached by (canonical expression, input dtypes, output dtype,
    those values) in a bounded LRU. The inputs' own nodata values are arguments of the
    kernel, not part of the key.
    """
    dtypes = tuple(np.dtype(d) for d in input_dtypes)
    if len(dtypes) != len(expression.input_names):
        raise ValueError(
            f"expression reads {len(expression.input_names)} inputs "
            f"{list(expression.input_names)!r}, got {len(dtypes)} dtypes"
        )
    for name, dtype in zip(expression.input_names, dtypes, strict=True):
        if dtype not in INPUT_DTYPES:
            raise ValueError(f"unsupported dtype for input {name!r}, got {dtype!s}")
    out_dtype = normalize_dtype(output_dtype)
    constants = tuple(
        _nodata_constant((nodata_values or {}).get(n)) for n in expression.nodata_names
    )
    # NaN != NaN, so key NaN by its text.
    key = (
        expression.canonical,
        expression.nodata_names,
        tuple(map(repr, constants)),
        tuple(d.str for d in dtypes),
        out_dtype.str,
    )
    kernel = _KERNELS.get(key)
    if kernel is not None:
        return kernel
    kernel = _build_kernel(
        key,
        expression,
        dtypes,
        out_dtype,
        dict(zip(expression.nodata_names, constants, strict=True)),
    )
    return _KERNELS.put(key, kernel)


def evaluate(
    expression: Expression,
    inputs: Sequence[np.ndarray],
    nodata: Sequence[float | None] | Mapping[str, float | None],
    *,
    output_dtype: np.dtype | str | type = DEFAULT_OUTPUT_DTYPE,
    output_nodata: float = DEFAULT_OUTPUT_NODATA,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, int, TileStatistics]:
    """Evaluate ``expression`` on one tile, and take the statistics of the result in the
    same pass; return (output tile, nodata pixels written, statistics).

    ``inputs`` are 2-D tiles of equal shape in the order of ``expression.input_names``.
    ``nodata`` is either a sequence in that same order, or a mapping from input name to nodata
    value, which must be used when ``nodata("name")`` names an input whose pixels the
    expression does not read. ``out``, if given, must have the tile's shape and the output
    dtype; it is filled and returned. The statistics count as nodata every pixel equal to
    ``output_nodata``, including those where the expression itself gave that value; the
    second item counts only the pixels the kernel set to nodata.

    Notes
    -----
    Memory: the output tile, a C-contiguous copy of any input that is not C-contiguous (and of
    ``out`` if it is not), and, when the expression aggregates, one float64 scratch vector per
    chunk of rows in flight (its length is the total count of aggregated arguments).
    """
    names = expression.input_names
    if len(inputs) != len(names):
        raise ValueError(f"expression reads {len(names)} inputs {list(names)!r}, got {len(inputs)}")
    nodata_of = _nodata_by_name(expression, nodata)
    arrays = tuple(np.asarray(a) for a in inputs)
    if not arrays:
        raise ValueError("an expression that reads no input has no tile shape; give one input")
    shape = arrays[0].shape
    for name, a in zip(names, arrays, strict=True):
        if a.ndim != 2:
            raise ValueError(f"input {name!r} must be a 2-D tile, got {a.ndim} dimensions")
        if a.shape != shape:
            raise ValueError(f"input {name!r} has shape {a.shape}, expected {shape}")
    out_dtype = normalize_dtype(output_dtype)
    nodata_out = _check_output_nodata(output_nodata, out_dtype)
    if out is None:
        out = np.empty(shape, dtype=out_dtype)
    elif out.shape != shape or out.dtype != out_dtype:
        raise ValueError(
            f"out must have shape {shape} and dtype {out_dtype!s}, got {out.shape} {out.dtype!s}"
        )
    kernel = compile_kernel(
        expression,
        [a.dtype for a in arrays],
        out_dtype,
        {n: nodata_of.get(n) for n in expression.nodata_names},
    )
    tests = [_input_nodata(nodata_of.get(n), a.dtype) for n, a in zip(names, arrays, strict=True)]
    nan_tests = tuple(kind == _NODATA_NAN for kind, _ in tests)
    values = tuple(value if kind == _NODATA_VALUE else math.nan for kind, value in tests)
    # The kernel is compiled for C-contiguous tiles: copy only what is not.
    tiles = tuple(np.ascontiguousarray(a) for a in arrays)
    target = out if out.flags.c_contiguous else np.empty(shape, dtype=out_dtype)

    def run(rows: tuple[int, int]) -> tuple[int, int, int, int, float, float]:
        return kernel.run(tiles, nan_tests, values, target, nodata_out, rows[0], rows[1])

    parts = _map_row_ranges(run, shape[0], shape[1])
    if target is not out:
        out[...] = target
    written = sum(p[0] for p in parts)
    return out, written, _tile_statistics(parts, out.size, out_dtype)


def _map_row_ranges(
    run: Callable[[tuple[int, int]], tuple[int, int, int, int, float, float]],
    rows: int,
    cols: int,
) -> list[tuple[int, int, int, int, float, float]]:
    """``run`` over the tile's rows, split among numba's threads when the tile is large.

    The kernel releases the GIL, so plain threads run it in parallel; this costs no compile
    time, where a ``parallel=True`` kernel costs about 1.5 s more to compile.
    """
    threads = max(1, min(numba.get_num_threads(), (rows * cols) // _PIXELS_PER_THREAD, rows))
    bounds = [rows * t // threads for t in range(threads + 1)]
    ranges = list(zip(bounds[:-1], bounds[1:], strict=True))
    if threads == 1:
        return [run(ranges[0])]
    return list(_thread_pool(threads).map(run, ranges))


def _thread_pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of ``threads`` kernel threads (numba's thread count is per calling
    thread, so callers may differ; pools are kept, at most one per count)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="bandcalc")
        return pool


def _tile_statistics(
    parts: Sequence[tuple[int, int, int, int, float, float]], size: int, dtype: np.dtype
) -> TileStatistics:
    """The statistics of row ranges combined with Chan's formula, as BandStatistics.combine."""
    n = 0
    low, high = _KEY_MAX, _KEY_MIN
    mean = m2 = 0.0
    for _, other, other_low, other_high, other_mean, other_m2 in parts:
        if other == 0:
            continue
        merged = n + other
        delta = other_mean - mean
        mean += delta * other / merged
        m2 += other_m2 + delta * delta * n * other / merged
        n = merged
        low, high = min(low, other_low), max(high, other_high)
    if n == 0:
        return TileStatistics(0, size, math.inf, -math.inf, 0.0, 0.0)
    return TileStatistics(
        n, size - n, _value_of_key(low, dtype), _value_of_key(high, dtype), mean, m2
    )


# Building


def _nodata_constant(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _nodata_by_name(
    expression: Expression, nodata: Sequence[float | None] | Mapping[str, float | None]
) -> dict[str, float | None]:
    if isinstance(nodata, Mapping):
        return dict(nodata)
    values = list(nodata)
    if len(values) != len(expression.input_names):
        raise ValueError(
            f"expected {len(expression.input_names)} nodata values, one per input "
            f"{list(expression.input_names)!r}, got {len(values)}"
        )
    by_name = dict(zip(expression.input_names, values, strict=True))
    missing = [n for n in expression.nodata_names if n not in by_name]
    if missing:
        raise ValueError(
            f"nodata() names inputs the expression does not read, {missing!r}; "
            "give nodata as a mapping from input name to value"
        )
    return by_name


def _input_nodata(value: float | None, dtype: np.dtype) -> tuple[int, float]:
    """How to recognise an input's nodata pixels, comparing in the input's own dtype."""
    if value is None:
        return _NODATA_NONE, 0.0
    value = float(value)
    if math.isnan(value):
        return (_NODATA_NAN, 0.0) if dtype.kind == "f" else (_NODATA_NONE, 0.0)
    if dtype.kind == "f":
        with np.errstate(over="ignore"):
            return _NODATA_VALUE, float(dtype.type(value))
    info = np.iinfo(dtype)
    if value != math.floor(value) or not info.min <= value <= info.max:
        return _NODATA_NONE, 0.0  # no pixel of this dtype can hold it
    return _NODATA_VALUE, value


def _dtype_range(dtype: np.dtype) -> tuple[float, float]:
    if dtype.kind == "f":
        return -math.inf, math.inf
    info = np.iinfo(dtype)
    return float(info.min), float(info.max)


def _check_output_nodata(value: float, dtype: np.dtype) -> Any:
    value = float(value)
    if dtype.kind == "f":
        if dtype == np.float32 and math.isfinite(value) and abs(value) > np.finfo(np.float32).max:
            raise ValueError(f"output nodata {value!r} does not fit in {dtype!s}")
        return dtype.type(value)
    lo, hi = _dtype_range(dtype)
    if not math.isfinite(value) or value != math.floor(value) or not lo <= value <= hi:
        raise ValueError(f"output nodata {value!r} does not fit in {dtype!s}")
    return dtype.type(int(value))


def _inline(fn: Callable[..., Any], name: str) -> Any:
    """A function compiled only where it is inlined into its caller (numba IR inlining).

    Numba names an inlined variable after every function it was inlined through, and LLVM
    truncates names past 1024 characters, so names are kept short and nesting is bounded
    (``_MAX_INLINE_DEPTH``); past that, equal truncated names would collide.
    """
    fn.__name__ = fn.__qualname__ = name
    return numba.njit(**_INLINE)(fn)


@dataclass(frozen=True, slots=True)
class _Part:
    """A per-pixel function of ``(x, s)`` and how deep its inlined calls nest."""

    fn: Any
    depth: int


class _Compiler:
    """Turns a tree into per-pixel functions of ``(x, s)``, each inlined into its parent.

    ``x`` is the tuple of the pixel's input values, already widened to float64; ``s`` is the
    aggregations' scratch vector. The functions are closures over their children and
    constants, never text, and are typed only inside the kernel that inlines them. A subtree
    that nests deeper than ``_MAX_INLINE_DEPTH`` (long ``and`` chains, deep nesting) is
    compiled on its own, eagerly, with an explicit signature, and called.
    """

    def __init__(self, count: int, nodata_constants: dict[str, float]) -> None:
        self.sig = types.float64(types.UniTuple(types.float64, count), types.float64[::1])
        self.nodata_constants = nodata_constants
        self.scratch = 0
        self.memo: dict[str, _Part] = {}

    def node(self, node: Node) -> _Part:
        key = str(node)
        # Equal subtrees share a function, except aggregations, which own their scratch region.
        if key in self.memo and not isinstance(node, Call):
            return self.memo[key]
        part = self._node(node)
        if part.depth >= _MAX_INLINE_DEPTH:
            part = self.compiled(part)
        self.memo[key] = part
        return part

    def compiled(self, part: _Part) -> _Part:
        f = part.fn

        def subtree(x, s):
            return f(x, s)

        subtree.__name__ = subtree.__qualname__ = "bc_subtree"
        return _Part(numba.njit(self.sig, **_JIT)(subtree), 1)

    def _node(self, node: Node) -> _Part:
        if isinstance(node, Constant):
            return self.constant(node.value)
        if isinstance(node, NodataOf):
            return self.constant(self.nodata_constants[node.name])
        if isinstance(node, Input):
            return self.load(node.index)
        if isinstance(node, Unary):
            child = self.node(node.operand)
            return child if node.op == "+" else self.unary(_UNARY[node.op], child)
        if isinstance(node, Binary):
            return self.binary(_BINARY[node.op], self.node(node.left), self.node(node.right))
        if isinstance(node, Call):
            return self.call(node)
        raise TypeError(f"unknown node {node!r}")

    def constant(self, value: float) -> _Part:
        c = float(value)

        def constant(x, s):
            return c

        return _Part(_inline(constant, "c"), 1)

    def load(self, k: int) -> _Part:
        def load(x, s):
            return x[k]

        return _Part(_inline(load, "ld"), 1)

    def unary(self, op: Any, f: _Part) -> _Part:
        g = f.fn

        def unary(x, s):
            return op(g(x, s))

        return _Part(_inline(unary, "u"), f.depth + 1)

    def binary(self, op: Any, f: _Part, g: _Part) -> _Part:
        left, right = f.fn, g.fn

        def binary(x, s):
            return op(left(x, s), right(x, s))

        return _Part(_inline(binary, "b"), max(f.depth, g.depth) + 1)

    def call(self, node: Call) -> _Part:
        name = node.function
        if name in _REDUCERS:
            return self.aggregate(node)
        args = [self.node(a) for a in node.args]
        if name in _UNARY:
            return self.unary(_UNARY[name], args[0])
        if name == "minimum":
            return self.binary(_minimum, args[0], args[1])
        if name == "maximum":
            return self.binary(_maximum, args[0], args[1])
        if name == "clip":  # numpy's clip: minimum(maximum(x, lo), hi)
            x, lo, hi = args
            return self.binary(_minimum, self.binary(_maximum, x, lo), hi)
        if name == "where":
            c, f, g = (a.fn for a in args)

            def where(x, s):
                if c(x, s) != 0.0:
                    return f(x, s)
                return g(x, s)

            return _Part(_inline(where, "w"), max(a.depth for a in args) + 1)
        raise ValueError(f"unsupported function {name!r}")

    def aggregate(self, node: Call) -> _Part:
        children = [self.node(a) for a in node.args]
        off = self.scratch
        n = len(children)
        self.scratch += n
        q = 0.0 if node.q is None else float(node.q)
        reduce = _REDUCERS[node.function]
        gathered = self.gather(children, off)
        gather = gathered.fn

        def aggregate(x, s):
            gather(x, s)
            return reduce(s, off, n, q)

        return _Part(_inline(aggregate, "ag"), gathered.depth + 1)

    def gather(self, children: Sequence[_Part], slot: int) -> _Part:
        """Store each child's value in the scratch vector from ``slot`` on (a balanced tree,
        so that many arguments do not nest deeply)."""
        if len(children) == 1:
            child = children[0].fn

            def gather_one(x, s):
                s[slot] = child(x, s)
                return 0.0

            return _Part(_inline(gather_one, "g"), children[0].depth + 1)
        half = len(children) // 2
        first = self.gather(children[:half], slot)
        second = self.gather(children[half:], slot + half)
        f, g = first.fn, second.fn

        def gather(x, s):
            f(x, s)
            g(x, s)
            return 0.0

        return _Part(_inline(gather, "gg"), max(first.depth, second.depth) + 1)


def _pixel_reader(first: int, stop: int) -> Any:
    """A function of (arrays, i, j): the tuple of the pixel's values of inputs [first, stop),
    widened to float64 (a balanced tree of concatenations)."""
    if stop - first == 1:

        def read_one(a, i, j):
            return (np.float64(a[first][i, j]),)

        return _inline(read_one, "r")
    half = (first + stop) // 2
    left, right = _pixel_reader(first, half), _pixel_reader(half, stop)

    def read(a, i, j):
        return left(a, i, j) + right(a, i, j)

    return _inline(read, "rr")


def _nodata_test(dtypes: tuple[np.dtype, ...], first: int, stop: int) -> Any:
    """A function of (x, nan_tests, values): whether any input in [first, stop) is nodata.

    Input ``k`` is nodata where ``x[k] == values[k]`` (a NaN value matches nothing, for an
    input without nodata) or, for a float input whose ``nan_tests[k]`` is set, where ``x[k]`` is
    NaN: branch-free per input, so that LLVM need not branch on a runtime constant.
    """
    if stop - first == 1:
        k = first
        if dtypes[k].kind != "f":  # an integer widened to float64 is never NaN

            def is_nodata(x, nan_tests, values):
                return x[k] == values[k]

            return _inline(is_nodata, "nd")

        def is_nodata_float(x, nan_tests, values):
            v = x[k]
            return (v == values[k]) | (nan_tests[k] & (v != v))

        return _inline(is_nodata_float, "ndf")
    half = (first + stop) // 2
    left, right = _nodata_test(dtypes, first, half), _nodata_test(dtypes, half, stop)

    def any_nodata(x, nan_tests, values):
        return left(x, nan_tests, values) | right(x, nan_tests, values)

    return _inline(any_nodata, "nds")


def _build_kernel(
    key: Hashable,
    expression: Expression,
    dtypes: tuple[np.dtype, ...],
    out_dtype: np.dtype,
    nodata_constants: dict[str, float],
) -> BandCalcKernel:
    count = len(dtypes)
    compiler = _Compiler(count, nodata_constants)
    root = compiler.node(expression.root).fn
    read = _pixel_reader(0, count)
    is_nodata = _nodata_test(dtypes, 0, count)
    scratch_size = max(compiler.scratch, 1)
    integer = out_dtype.kind != "f"
    out_float = np.float32 if out_dtype == np.float32 else np.float64
    # numpy's astype truncates toward zero: a result fits when it lies strictly inside these.
    below, above = _dtype_range(out_dtype)
    below, above = below - 1.0, above + 1.0
    out_type = numba.from_dtype(out_dtype)
    sig = types.Tuple(
        (types.int64, types.int64, types.int64, types.int64, types.float64, types.float64)
    )(
        types.Tuple([types.Array(numba.from_dtype(d), 2, "C", readonly=True) for d in dtypes]),
        types.UniTuple(types.boolean, count),
        types.UniTuple(types.float64, count),
        types.Array(out_type, 2, "C"),
        out_type,
        types.intp,
        types.intp,
    )

    keys, key_shift, key_flip = _statistics_keys(out_dtype)

    def run(a, nan_tests, values, out, nodata, first, stop):
        cols = out.shape[1]
        nodata64 = np.float64(nodata)
        s = np.empty(scratch_size, dtype=np.float64)
        written = 0
        n = 0
        low = _KEY_MAX
        high = _KEY_MIN
        origin = np.nan  # the first valid value: moments are taken about it
        mean = 0.0  # about origin
        m2 = 0.0
        for i in range(first, stop):
            row = out[i]
            if integer:
                for j in range(cols):
                    x = read(a, i, j)
                    if is_nodata(x, nan_tests, values):
                        row[j] = nodata
                        written += 1
                        continue
                    v = root(x, s)
                    if v > below and v < above:
                        row[j] = v
                    else:
                        row[j] = nodata
                        written += 1
            else:
                # Without a branch, so that LLVM can vectorise the row: every pixel is
                # computed (the expression is pure and cannot raise) and then chosen.
                for j in range(cols):
                    x = read(a, i, j)
                    v = out_float(root(x, s))
                    valid = ~is_nodata(x, nan_tests, values) & np.isfinite(v)
                    row[j] = v if valid else nodata
                    written += np.int64(~valid)
            # The row is still in cache: its statistics, as written, in two passes, about
            # the first valid value, so that a large mean costs no precision.
            if np.isnan(origin):
                origin = _first_valid(row, nodata64)
                if np.isnan(origin):
                    continue
            row_n, total, row_low, row_high = _row_sums(
                row, row.view(keys), nodata64, origin, key_shift, key_flip
            )
            if row_n == 0:
                continue
            row_mean = total / row_n
            row_m2 = _row_squared_deviations(row, nodata64, origin, row_mean)
            # Chan's formula, as BandStatistics.combine.
            merged = n + row_n
            delta = row_mean - mean
            mean += delta * row_n / merged
            m2 += row_m2 + delta * delta * n * row_n / merged
            n = merged
            low = min(low, row_low)
            high = max(high, row_high)
        return written, n, low, high, (origin + mean if n else 0.0), m2

    runner = numba.njit(sig, **_JIT)(run)
    return BandCalcKernel(
        key=key,
        input_dtypes=dtypes,
        output_dtype=out_dtype,
        run=runner,
    )


# Statistics of an output row, in passes that numba vectorises: validity is a comparison, not a
# branch, and sums may be reassociated (this changes their rounding, never the pixels).
# Minimum and maximum are taken over integer keys that order as the values do (a float's bits
# with the magnitude bits flipped when negative), because LLVM vectorises integer min/max
# reductions but not floating-point ones.

_KEY_MAX: Final = np.int64(np.iinfo(np.int64).max)
_KEY_MIN: Final = np.int64(np.iinfo(np.int64).min)
# "reassoc" lets LLVM vectorise the sums; without "nsz" it may not rewrite (w - origin) - mean
# as w - (origin + mean), which would undo the shift.
_STATISTICS_JIT: Final = {**_JIT, "fastmath": {"reassoc", "contract"}}


def _statistics_keys(dtype: np.dtype) -> tuple[np.dtype, int, int]:
    """How to key an output row's values: the dtype to view it as, and the shift and mask
    that flip a negative float's magnitude bits (for integers the key is the value)."""
    if dtype == np.float32:
        return np.dtype(np.int32), 31, 0x7FFFFFFF
    if dtype == np.float64:
        return np.dtype(np.int64), 63, 0x7FFFFFFFFFFFFFFF
    return dtype, 0, 0


def _value_of_key(key: int, dtype: np.dtype) -> float:
    view, shift, flip = _statistics_keys(dtype)
    if not flip:
        return float(key)
    bits = key ^ ((key >> shift) & flip)
    return float(np.array([bits], dtype=view).view(dtype)[0])


@numba.njit(**_STATISTICS_JIT)
def _first_valid(row, nodata):
    """The first value of an output row that is neither NaN nor nodata; NaN if none."""
    for j in range(row.shape[0]):
        w = np.float64(row[j])
        if w == w and w != nodata:
            return w
    return np.nan


@numba.njit(**_STATISTICS_JIT)
def _row_sums(row, keys, nodata, origin, key_shift, key_flip):
    """Valid count, sum about ``origin``, and the keys of the minimum and maximum of a row."""
    n = 0
    total = 0.0
    low = _KEY_MAX
    high = _KEY_MIN
    for j in range(row.shape[0]):
        w = np.float64(row[j])
        valid = (w == w) & (w != nodata)
        n += np.int64(valid)
        total += (w - origin) if valid else 0.0
        b = keys[j]
        key = np.int64(b ^ ((b >> key_shift) & key_flip))
        low = min(low, key if valid else _KEY_MAX)
        high = max(high, key if valid else _KEY_MIN)
    return n, total, low, high


@numba.njit(**_STATISTICS_JIT)
def _row_squared_deviations(row, nodata, origin, mean):
    """The sum of squared deviations of a row's valid values from ``origin + mean``."""
    m2 = 0.0
    for j in range(row.shape[0]):
        w = np.float64(row[j])
        d = (w - origin) - mean
        m2 += d * d if (w == w) & (w != nodata) else 0.0
    return m2
