"""Band calc kernels: compile a parsed Expression to a numba kernel and run it on a tile.

The kernel is built without ``eval``/``exec``: every node of the expression tree becomes a
small ``@njit`` function that closes over its children's dispatchers (numba treats closed-over
dispatchers and numbers as constants), and an outer ``@njit(parallel=True)`` loop runs the
root over the rows of a tile. Nodes are compiled eagerly, children first, with explicit
signatures; numba would otherwise compile a deep tree recursively and exhaust Python's stack.

Semantics (Remotior Sensus' band calc, made per pixel):

- Every value is computed in float64; inputs are read in their own dtype and widened.
- Output pixels are ``output_nodata`` where any input the expression reads is nodata at that
  pixel (an input's nodata is compared in the input's dtype; a NaN nodata matches NaN pixels),
  where the result is not finite, or where it cannot be represented in the output dtype.
- Integer outputs follow numpy's ``astype``: the float64 result is truncated toward zero; a
  result whose truncation lies outside the dtype's range is nodata (never wrapped or clipped).
  Float32 outputs round to nearest; a finite float64 that overflows float32 is nodata.
- ``nodata("name")`` is a constant of the compiled kernel (NaN when the input has none).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numba
import numpy as np
from numba import types

from .expression import Binary, Call, Constant, Expression, Input, NodataOf, Node, Unary

DEFAULT_OUTPUT_DTYPE: Final = np.dtype(np.float32)
DEFAULT_OUTPUT_NODATA: Final = -32768.0
KERNEL_CACHE_SIZE: Final = 64

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


# Scalar operations, module level so that every kernel shares their compiled code.


@numba.njit(**_JIT)
def _add(x: float, y: float) -> float:
    return x + y


@numba.njit(**_JIT)
def _sub(x: float, y: float) -> float:
    return x - y


@numba.njit(**_JIT)
def _mul(x: float, y: float) -> float:
    return x * y


@numba.njit(**_JIT)
def _div(x: float, y: float) -> float:
    return x / y


@numba.njit(**_JIT)
def _floordiv(x: float, y: float) -> float:
    return x // y


@numba.njit(**_JIT)
def _mod(x: float, y: float) -> float:
    return x % y


@numba.njit(**_JIT)
def _pow(x: float, y: float) -> float:
    return math.pow(x, y)


@numba.njit(**_JIT)
def _lt(x: float, y: float) -> float:
    return 1.0 if x < y else 0.0


@numba.njit(**_JIT)
def _le(x: float, y: float) -> float:
    return 1.0 if x <= y else 0.0


@numba.njit(**_JIT)
def _gt(x: float, y: float) -> float:
    return 1.0 if x > y else 0.0


@numba.njit(**_JIT)
def _ge(x: float, y: float) -> float:
    return 1.0 if x >= y else 0.0


@numba.njit(**_JIT)
def _eq(x: float, y: float) -> float:
    return 1.0 if x == y else 0.0


@numba.njit(**_JIT)
def _ne(x: float, y: float) -> float:
    return 1.0 if x != y else 0.0


@numba.njit(**_JIT)
def _and(x: float, y: float) -> float:
    return 1.0 if (x != 0.0 and y != 0.0) else 0.0


@numba.njit(**_JIT)
def _or(x: float, y: float) -> float:
    return 1.0 if (x != 0.0 or y != 0.0) else 0.0


@numba.njit(**_JIT)
def _minimum(x: float, y: float) -> float:
    if math.isnan(x):
        return x
    if math.isnan(y):
        return y
    return x if x <= y else y


@numba.njit(**_JIT)
def _maximum(x: float, y: float) -> float:
    if math.isnan(x):
        return x
    if math.isnan(y):
        return y
    return x if x >= y else y


@numba.njit(**_JIT)
def _neg(x: float) -> float:
    return -x


@numba.njit(**_JIT)
def _not(x: float) -> float:
    return 1.0 if x == 0.0 else 0.0


@numba.njit(**_JIT)
def _isnan(x: float) -> float:
    return 1.0 if math.isnan(x) else 0.0


@numba.njit(**_JIT)
def _sqrt(x: float) -> float:
    return np.sqrt(x)


@numba.njit(**_JIT)
def _log(x: float) -> float:
    return np.log(x)


@numba.njit(**_JIT)
def _log10(x: float) -> float:
    return np.log10(x)


@numba.njit(**_JIT)
def _exp(x: float) -> float:
    return np.exp(x)


@numba.njit(**_JIT)
def _abs(x: float) -> float:
    return abs(x)


@numba.njit(**_JIT)
def _sin(x: float) -> float:
    return np.sin(x)


@numba.njit(**_JIT)
def _cos(x: float) -> float:
    return np.cos(x)


@numba.njit(**_JIT)
def _tan(x: float) -> float:
    return np.tan(x)


@numba.njit(**_JIT)
def _arcsin(x: float) -> float:
    return np.arcsin(x)


@numba.njit(**_JIT)
def _arccos(x: float) -> float:
    return np.arccos(x)


@numba.njit(**_JIT)
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
    run: Callable[..., None]
    scratch_size: int


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
    those values) in a bounded LRU.
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
) -> tuple[np.ndarray, int]:
    """Evaluate ``expression`` on one tile; return (output tile, nodata pixels written).

    ``inputs`` are 2-D tiles of equal shape in the order of ``expression.input_names``.
    ``nodata`` is either a sequence in that same order, or a mapping from input name to nodata
    value, which must be used when ``nodata("name")`` names an input whose pixels the
    expression does not read. ``out``, if given, must have the tile's shape and the output
    dtype; it is filled and returned.

    Notes
    -----
    Memory: the output tile, plus one float64 scratch vector per row in flight when the
    expression aggregates (its length is the total count of aggregated arguments).
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
    info = _dtype_range(out_dtype)
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
    values = np.empty(len(arrays), dtype=np.float64)
    kinds = np.empty(len(arrays), dtype=np.int8)
    for k, (name, a) in enumerate(zip(names, arrays, strict=True)):
        kinds[k], values[k] = _input_nodata(nodata_of.get(name), a.dtype)
    counts = np.zeros(shape[0], dtype=np.int64)
    kernel.run(arrays, values, kinds, out, nodata_out, info[0], info[1], counts)
    return out, int(counts.sum())


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


class _Compiler:
    """Turns a tree into eagerly compiled ``@njit`` functions, children first."""

    def __init__(self, dtypes: tuple[np.dtype, ...], nodata_constants: dict[str, float]) -> None:
        self.arrays_type = types.Tuple(
            [types.Array(numba.from_dtype(d), 2, "A", readonly=False) for d in dtypes]
        )
        self.scratch_type = types.float64[::1]
        self.sig = types.float64(self.arrays_type, types.intp, types.intp, self.scratch_type)
        self.nodata_constants = nodata_constants
        self.scratch = 0
        self.memo: dict[str, Any] = {}

    def jit(self, fn: Callable[..., float]) -> Any:
        return numba.njit(self.sig, **_JIT)(fn)

    def node(self, node: Node) -> Any:
        key = str(node)
        # Equal subtrees share code, except aggregations, which own their scratch region.
        if key in self.memo and not isinstance(node, Call):
            return self.memo[key]
        fn = self._node(node)
        self.memo[key] = fn
        return fn

    def _node(self, node: Node) -> Any:
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

    def constant(self, value: float) -> Any:
        c = float(value)

        def constant(a, i, j, s):
            return c

        return self.jit(constant)

    def load(self, k: int) -> Any:
        def load(a, i, j, s):
            return np.float64(a[k][i, j])

        return self.jit(load)

    def unary(self, op: Any, f: Any) -> Any:
        def unary(a, i, j, s):
            return op(f(a, i, j, s))

        return self.jit(unary)

    def binary(self, op: Any, f: Any, g: Any) -> Any:
        def binary(a, i, j, s):
            return op(f(a, i, j, s), g(a, i, j, s))

        return self.jit(binary)

    def call(self, node: Call) -> Any:
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
            c, f, g = args

            def where(a, i, j, s):
                if c(a, i, j, s) != 0.0:
                    return f(a, i, j, s)
                return g(a, i, j, s)

            return self.jit(where)
        raise ValueError(f"unsupported function {name!r}")

    def aggregate(self, node: Call) -> Any:
        children = [self.node(a) for a in node.args]
        off = self.scratch
        n = len(children)
        self.scratch += n
        q = 0.0 if node.q is None else float(node.q)
        reduce = _REDUCERS[node.function]

        def gather_none(a, i, j, s):
            return 0.0

        gather = self.jit(gather_none)
        for t, child in enumerate(children):
            gather = self._gather_step(gather, child, off + t)

        def aggregate(a, i, j, s):
            gather(a, i, j, s)
            return reduce(s, off, n, q)

        return self.jit(aggregate)

    def _gather_step(self, previous: Any, child: Any, slot: int) -> Any:
        def gather(a, i, j, s):
            previous(a, i, j, s)
            s[slot] = child(a, i, j, s)
            return 0.0

        return self.jit(gather)

    def mask(self, count: int) -> Any:
        """A function that says whether any input is nodata at (i, j)."""
        sig = types.boolean(
            self.arrays_type, types.intp, types.intp, types.float64[::1], types.int8[::1]
        )

        def mask_none(a, i, j, values, kinds):
            return False

        mask = numba.njit(sig, **_JIT)(mask_none)
        for k in range(count):
            mask = numba.njit(sig, **_JIT)(_mask_step(mask, k))
        return mask


def _mask_step(previous: Any, k: int) -> Callable[..., bool]:
    def mask(a, i, j, values, kinds):
        if previous(a, i, j, values, kinds):
            return True
        kind = kinds[k]
        if kind == _NODATA_NONE:
            return False
        v = np.float64(a[k][i, j])
        if kind == _NODATA_NAN:
            return math.isnan(v)
        return v == values[k]

    return mask


def _build_kernel(
    key: Hashable,
    expression: Expression,
    dtypes: tuple[np.dtype, ...],
    out_dtype: np.dtype,
    nodata_constants: dict[str, float],
) -> BandCalcKernel:
    compiler = _Compiler(dtypes, nodata_constants)
    root = compiler.node(expression.root)
    mask = compiler.mask(len(dtypes))
    scratch_size = max(compiler.scratch, 1)
    integer = out_dtype.kind != "f"
    out_type = numba.from_dtype(out_dtype)
    sig = types.void(
        compiler.arrays_type,
        types.float64[::1],
        types.int8[::1],
        types.Array(out_type, 2, "A"),
        out_type,
        types.float64,
        types.float64,
        types.int64[::1],
    )

    def run(a, values, kinds, out, nodata, lo, hi, counts):
        rows, cols = out.shape
        for i in numba.prange(rows):
            s = np.empty(scratch_size, dtype=np.float64)
            written = 0
            for j in range(cols):
                if mask(a, i, j, values, kinds):
                    out[i, j] = nodata
                    written += 1
                    continue
                v = root(a, i, j, s)
                if integer:
                    # numpy's astype truncates toward zero; refuse what would not fit.
                    if v > lo - 1.0 and v < hi + 1.0:
                        out[i, j] = v
                    else:
                        out[i, j] = nodata
                        written += 1
                else:
                    out[i, j] = v
                    if not np.isfinite(out[i, j]):
                        out[i, j] = nodata
                        written += 1
            counts[i] = written

    runner = numba.njit(sig, parallel=True, **_JIT)(run)
    return BandCalcKernel(
        key=key,
        input_dtypes=dtypes,
        output_dtype=out_dtype,
        run=runner,
        scratch_size=scratch_size,
    )
