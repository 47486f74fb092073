"""Band calc kernels: run a parsed Expression on a tile, as a block program or a fused kernel.

A new expression runs as a block program (``block_program``: no compile, the same pixels);
the fused kernel below runs it two to three times faster and is compiled once per expression,
off the request path, and kept on disk (``fused_store``). See ``evaluate``.

The fused kernel is built without ``eval``/``exec`` and without generating source. It is one loop
over the rows of C-contiguous tiles, with the whole expression fused into its body: it reads
each input pixel once, widened to float64, tests each input's nodata, evaluates, casts and
writes; then, while the row is still in cache, it takes the row's statistics in two vectorised
passes. The per-pixel parts are numba intrinsics that emit LLVM IR from the tree, node by node:
straight-line IEEE instructions, and calls to the compiled scalar operations of ``scalar_ops``
for the rest. So compile time grows with the size of the expression alone (a chain of 500 terms is 499
instructions in a row, not 499 levels of nesting). Compile time still grows faster than
the size where masks chain through many divisions (LLVM took 7 s for a chain of 200 ``*`` and
``/``, 22 s for 400), so an expression of more than ``MAX_FUSED_OPERATIONS`` operations is
never fused: it always runs as its block program, and no client can keep a worker compiling
for minutes. Over more than
``_FUSED_INPUTS`` inputs the expression is a function of its own that the loop calls. The
aggregations call shared reducers over a scratch vector. The kernel releases the GIL; large
tiles are split into row ranges run by ``numba.get_num_threads()`` threads.

Semantics (Remotior Sensus' band calc, made per pixel):

- The calculation type (``calc_dtype``) is float32 or float64. In float64, inputs are read in
  their own dtype and widened, and every operation is IEEE double. In float32, every value is
  what numpy gives on float32 arrays: inputs and constants are rounded to float32 (constants
  as numpy takes a Python scalar beside a float32 array) and every operation's result is
  rounded to float32. For ``+ - * /`` and ``sqrt`` the float64 operation of float32 operands,
  rounded, is exactly the float32 operation, and comparisons are exact; the other functions
  and the aggregations are computed in float64 and rounded, which can differ from numpy's
  float32 functions by an ulp.
- Nodata is numpy.ma's mask, as Remotior evaluates on masked arrays: an input is masked where
  it is nodata (its nodata value, compared in the input's dtype, a NaN nodata matching NaN
  pixels, unless ``input_nodata_as_value``; and ``value_as_nodata``, compared likewise), and
  every operation's result carries a mask (see ``block_program``). Output pixels are
  ``output_nodata`` where the result is masked; where any input the expression reads is
  masked (``nodata_mask="any"``), or every one (``"all"``), or neither (``"none"``); where the
  result is not finite; or where it cannot be represented in the output dtype.
- With an output ``scale`` or ``offset`` (Remotior's ``use_scale``, ``use_offset``), the value
  written is ``result / scale - offset / scale``, in the calculation type, as Remotior's writer
  stores it; nodata pixels stay ``output_nodata``.
- Integer outputs are rounded to the nearest integer, halves away from zero, as GDAL writes a
  float array into an integer band (and so as Remotior's outputs are); a result whose rounding
  lies outside the dtype's range is nodata (never wrapped or clipped, where GDAL clips).
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
from typing import Any, Final, Generic, TypeVar

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import fused_store
from .block_program import (
    INPUT_DTYPE_CODES,
    NODATA_MASK_ALL,
    NODATA_MASK_ANY,
    NODATA_MASK_NONE,
    TINY,
    CalcOptions,
    Program,
    assemble,
    run_program,
)
from .expression import (
    Binary,
    Call,
    Chain,
    Comparison,
    Constant,
    Expression,
    Input,
    NodataOf,
    Node,
    Unary,
)
from .row_statistics import (
    KEY_MAX,
    KEY_MIN,
    first_valid,
    row_squared_deviations,
    row_sums,
    statistics_keys,
    value_of_key,
)
from .scalar_ops import (
    BINARY_OPERATIONS,
    JIT,
    REDUCERS,
    UNARY_OPERATIONS,
    floordiv,
    mod,
)

DEFAULT_OUTPUT_DTYPE: Final = np.dtype(np.float32)
DEFAULT_OUTPUT_NODATA: Final = -32768.0
KERNEL_CACHE_SIZE: Final = 64
# Below this many pixels per thread, a tile is not worth splitting among threads.
PIXELS_PER_THREAD: Final = 1 << 18

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

CALC_DTYPES: Final = frozenset({np.dtype(np.float32), np.dtype(np.float64)})
NODATA_MASKS: Final = {
    "any": NODATA_MASK_ANY,
    "all": NODATA_MASK_ALL,
    "none": NODATA_MASK_NONE,
}


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


def normalize_calc_dtype(name: str | np.dtype | type) -> np.dtype:
    """The calculation type, float32 or float64, given as numpy or GDAL name ("Float32")."""
    try:
        dtype = normalize_dtype(name)
    except ValueError:
        dtype = None
    if dtype not in CALC_DTYPES:
        raise ValueError(f"unsupported calculation dtype, got {name!r}; allowed: float32, float64")
    return dtype


def _nodata_mask_code(mode: str) -> int:
    code = NODATA_MASKS.get(mode)
    if code is None:
        raise ValueError(f"unsupported nodata mask, got {mode!r}; allowed: any, all, none")
    return code


# Operators that are one IEEE instruction or two: (LLVM builder method, comparison).
_ARITHMETIC: Final = {"+": "fadd", "-": "fsub", "*": "fmul", "/": "fdiv"}
# As Python compares floats: ordered, except "!=", which NaN satisfies.
_COMPARISONS: Final = {
    "<": ("fcmp_ordered", "<"),
    "<=": ("fcmp_ordered", "<="),
    ">": ("fcmp_ordered", ">"),
    ">=": ("fcmp_ordered", ">="),
    "==": ("fcmp_ordered", "=="),
    "!=": ("fcmp_unordered", "!="),
}
# numpy's minimum and maximum: NaN propagates (the first NaN), else the lesser or greater.
_EXTREMES: Final = {"minimum": "<=", "maximum": ">="}
# Operations whose inlined body costs LLVM tens of times what a node costs (branches, loops):
# inlined only a few times per kernel; see _Emitter.inlining.
_LARGE: Final = frozenset({floordiv, mod, *REDUCERS.values()})
_INLINED_LARGE_CALLS: Final = 8


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


V = TypeVar("V")


class _LRU(Generic[V]):
    """A bounded, thread-safe least-recently-used map."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: V) -> V:
        with self._lock:
            existing = self._data.get(key)
            if existing is not None:  # another thread made it first: share one
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


_KERNELS: Final[_LRU[BandCalcKernel]] = _LRU(KERNEL_CACHE_SIZE)
_PROGRAMS: Final[_LRU[Program]] = _LRU(KERNEL_CACHE_SIZE)
_ABSENT: Final = fused_store.Absent()
_COMPILER: Final = fused_store.BackgroundCompiler()
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
    *,
    calc_dtype: np.dtype | str | type = np.float64,
    nodata_mask: str = "any",
) -> BandCalcKernel:
    """The fused kernel for ``expression`` on inputs of ``input_dtypes``: from the process's
    cache if there, else loaded from disk if stored (``fused_store``), else compiled now and
    stored.

    ``nodata_values`` gives the value of each ``nodata("name")`` the expression uses (None or
    missing: NaN). Kernels are cached by (canonical expression, input dtypes, output dtype,
    those values, calculation type, nodata mask) in a bounded LRU. The inputs' own nodata
    values, and the output's scale and offset, are arguments of the kernel, not part of the
    key.
    """
    signature = _signature(
        expression,
        input_dtypes,
        output_dtype,
        nodata_values,
        normalize_calc_dtype(calc_dtype) == np.float32,
        _nodata_mask_code(nodata_mask),
    )
    operations = len(_program(expression, signature).code)
    if operations > MAX_FUSED_OPERATIONS:
        raise ValueError(
            f"an expression of {operations} operations is not fused "
            f"(at most {MAX_FUSED_OPERATIONS}): it runs as its block program"
        )
    return _KERNELS.get(signature.key) or _compile_stored(expression, signature, wait=True)


def compile_in_background(
    idle: Callable[[], bool] | None = None,
    after_pixels: int = fused_store.COMPILE_AFTER_PIXELS,
) -> None:
    """From now on, in this process, an expression evaluated again as a block program, on
    ``after_pixels`` pixels in all, has its fused kernel compiled and stored by a thread of
    low priority, whenever ``idle()`` (default: at once), and used once ready (see
    ``fused_store``). The engine's workers turn this on, compiling while they run no task."""
    _COMPILER.start(idle, after_pixels)


def _stored_kernel(expression: Expression, signature: _Signature) -> BandCalcKernel | None:
    """The fused kernel if stored on disk (loaded, not compiled); None if not, and then
    not looked for again for a few seconds."""
    if _ABSENT.recent(signature.key):
        return None
    dispatcher, numba_signature = _build_kernel(expression, signature)
    fused_store.attach(dispatcher, signature.key)
    if not fused_store.load(dispatcher, numba_signature):
        _ABSENT.note(signature.key)
        return None
    return _KERNELS.put(signature.key, _kernel(signature, dispatcher))


def _compile_stored(
    expression: Expression, signature: _Signature, *, wait: bool
) -> BandCalcKernel | None:
    """Load or compile the fused kernel, store it, keep it in the process's cache.

    Unless ``wait``, give up (None) when another process compiles the same kernel now."""
    dispatcher, numba_signature = _build_kernel(expression, signature)
    fused_store.attach(dispatcher, signature.key)
    lock = fused_store.exclusively(dispatcher)
    if lock is None and not wait:
        return None
    try:
        dispatcher.compile(numba_signature)  # loads it if stored meanwhile
        dispatcher.disable_compile()
        fused_store.prune(dispatcher)
    finally:
        if lock is not None:
            lock.close()
    return _KERNELS.put(signature.key, _kernel(signature, dispatcher))


def _kernel(signature: _Signature, dispatcher: Any) -> BandCalcKernel:
    return BandCalcKernel(
        key=signature.key,
        input_dtypes=signature.input_dtypes,
        output_dtype=signature.output_dtype,
        run=dispatcher,
    )


@dataclass(frozen=True, slots=True)
class _Signature:
    """What selects a fused kernel: its cache key and the values it is built from."""

    key: Hashable
    input_dtypes: tuple[np.dtype, ...]
    output_dtype: np.dtype
    nodata_constants: dict[str, float]
    single: bool = False
    nodata_mask: int = NODATA_MASK_ANY


def _signature(
    expression: Expression,
    input_dtypes: Sequence[np.dtype | str | type],
    output_dtype: np.dtype | str | type,
    nodata_values: Mapping[str, float | None] | None,
    single: bool = False,
    nodata_mask: int = NODATA_MASK_ANY,
) -> _Signature:
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
        "float32" if single else "float64",
        nodata_mask,
    )
    return _Signature(
        key,
        dtypes,
        out_dtype,
        dict(zip(expression.nodata_names, constants, strict=True)),
        single,
        nodata_mask,
    )


def _program(expression: Expression, signature: _Signature) -> Program:
    """The block program of ``expression``, from the cache if there (it depends on neither
    dtype, so one serves every signature)."""
    key = signature.key[:3]
    program = _PROGRAMS.get(key)
    if program is None:
        program = _PROGRAMS.put(key, assemble(expression, signature.nodata_constants))
    return program


def evaluate(
    expression: Expression,
    inputs: Sequence[np.ndarray],
    nodata: Sequence[float | None] | Mapping[str, float | None],
    *,
    output_dtype: np.dtype | str | type = DEFAULT_OUTPUT_DTYPE,
    output_nodata: float = DEFAULT_OUTPUT_NODATA,
    out: np.ndarray | None = None,
    method: str = "auto",
    calc_dtype: np.dtype | str | type = np.float64,
    nodata_mask: str = "any",
    input_nodata_as_value: bool = False,
    value_as_nodata: float | None = None,
    scale: float | None = None,
    offset: float | None = None,
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

    ``method``: ``"program"`` runs the expression's block program (``block_program``), which
    compiles nothing; ``"fused"`` its fused kernel, compiled now unless cached or stored;
    ``"auto"`` the fused kernel if this process has it or it is stored on disk, else the
    program (and, if `compile_in_background` was called, the fused kernel is compiled in the
    background once the expression is seen again on enough pixels). Every method gives the
    same pixels.

    Remotior's options (see the module's notes): ``calc_dtype`` float32 or float64 (numpy or
    GDAL name); ``nodata_mask`` ``"any"``, ``"all"`` or ``"none"``; ``input_nodata_as_value``:
    the inputs' nodata values are values, not nodata (``nodata("name")`` still gives them);
    ``value_as_nodata``: a value that is nodata in every input; ``scale``, ``offset``: the
    output's, the value written being ``result / scale - offset / scale`` (None: 1 and 0; both
    None: the result as it is).

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
    single = normalize_calc_dtype(calc_dtype) == np.float32
    signature = _signature(
        expression,
        [a.dtype for a in arrays],
        out_dtype,
        {n: nodata_of.get(n) for n in expression.nodata_names},
        single,
        _nodata_mask_code(nodata_mask),
    )
    options = _calc_options(single, signature.nodata_mask, scale, offset)
    own = [None if input_nodata_as_value else nodata_of.get(n) for n in names]
    tests = [_input_nodata(v, a.dtype) for v, a in zip(own, arrays, strict=True)]
    extra = [_input_nodata(value_as_nodata, a.dtype) for a in arrays]
    nan_tests = tuple(
        kind == _NODATA_NAN or other == _NODATA_NAN
        for (kind, _), (other, _) in zip(tests, extra, strict=True)
    )
    values = tuple(value if kind == _NODATA_VALUE else math.nan for kind, value in tests)
    others = tuple(value if kind == _NODATA_VALUE else math.nan for kind, value in extra)
    # The kernels are compiled for C-contiguous tiles: copy only what is not.
    tiles = tuple(np.ascontiguousarray(a) for a in arrays)
    # The kernels read the tiles by address (a tuple of arrays costs seconds to compile when
    # there are many); ``tiles`` keeps them alive until they return.
    addresses = tuple(t.ctypes.data for t in tiles)
    target = out if out.flags.c_contiguous else np.empty(shape, dtype=out_dtype)
    if method not in ("auto", "program", "fused"):
        raise ValueError(f"method must be auto, program or fused, got {method!r}")
    kernel = None
    if method == "fused":
        kernel = compile_kernel(
            expression,
            signature.input_dtypes,
            out_dtype,
            nodata_of,
            calc_dtype=np.float32 if single else np.float64,
            nodata_mask=nodata_mask,
        )
    elif method == "auto" and len(_program(expression, signature).code) <= MAX_FUSED_OPERATIONS:
        kernel = _KERNELS.get(signature.key) or _stored_kernel(expression, signature)
        if kernel is None:
            _COMPILER.seen(
                signature.key,
                math.prod(shape),
                lambda: _compile_stored(expression, signature, wait=False),
            )

    if kernel is not None:

        def run(rows: tuple[int, int]) -> tuple[int, int, int, int, float, float]:
            return kernel.run(
                addresses,
                nan_tests,
                values,
                others,
                options.scale,
                options.offset,
                options.scaled,
                target,
                nodata_out,
                rows[0],
                rows[1],
            )

    else:
        program = _program(expression, signature)
        program_inputs = (
            np.array(addresses, dtype=np.int64),
            np.array([INPUT_DTYPE_CODES[d] for d in signature.input_dtypes], dtype=np.int64),
            np.array(nan_tests, dtype=np.bool_),
            np.array(values, dtype=np.float64),
            np.array(others, dtype=np.float64),
            options,
        )

        def run(rows: tuple[int, int]) -> tuple[int, int, int, int, float, float]:
            return run_program(program, *program_inputs, target, nodata_out, rows[0], rows[1])

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
    threads = max(1, min(numba.get_num_threads(), (rows * cols) // PIXELS_PER_THREAD, rows))
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
    low, high = KEY_MAX, KEY_MIN
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
        n, size - n, value_of_key(low, dtype), value_of_key(high, dtype), mean, m2
    )


# Building


def _calc_options(
    single: bool, nodata_mask: int, scale: float | None, offset: float | None
) -> CalcOptions:
    """The options both kernels take; a scale and offset as Remotior's writer applies them:
    ``result / scale - offset / scale``, the two Python floats taken by numpy beside an array
    of the calculation type (so rounded to float32 in float32)."""
    if scale is None and offset is None:
        return CalcOptions(single, nodata_mask)
    s = 1.0 if scale is None else float(scale)
    o = 0.0 if offset is None else float(offset)
    if not (math.isfinite(s) and math.isfinite(o)) or s == 0.0:
        raise ValueError(f"output scale must be finite and not 0, offset finite, got {s}, {o}")
    o = o / s
    if single:
        with np.errstate(over="ignore"):
            s, o = float(np.float32(s)), float(np.float32(o))
    return CalcOptions(single, nodata_mask, s, o, True)


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


# Building: the expression, the pixel reader and the nodata test are emitted as LLVM IR by numba
# intrinsics, straight into the kernel's loop.

# Up to this many inputs the expression is fused into the kernel's loop, which LLVM vectorises.
# Past it, a vectorised loop over so many input streams costs LLVM seconds (mostly register
# allocation: 64 inputs and 2,000 terms took 5 s), so the expression becomes a function of its
# own, called per pixel: at most about a second to compile, and a job over that many rasters
# is bound by reading them.
_FUSED_INPUTS: Final = 16
# Past this many operations an expression is never fused (see the module's notes).
MAX_FUSED_OPERATIONS: Final = 256
_UNARY_SIGNATURE: Final = types.float64(types.float64)
_BINARY_SIGNATURE: Final = types.float64(types.float64, types.float64)
_REDUCER_SIGNATURE: Final = types.float64(types.float64[::1], types.intp, types.intp, types.float64)


# Operations whose result numpy.ma masks where it is not finite (besides its operands' masks).
_MASKED_WHERE_NOT_FINITE: Final = frozenset(
    {"/", "//", "%", "**", "sqrt", "log", "log10", "tan", "arcsin", "arccos"}
)
# Operations that numpy.ma masks where |a| * tiny >= |b| (its safe division's domain).
_SAFE_DIVISIONS: Final = frozenset({"/", "//", "%"})


class _Emitter:
    """Emits an expression tree as LLVM IR in the kernel being compiled, for one pixel.

    The code is straight-line: arithmetic, comparisons, logic, minimum and maximum are IEEE
    instructions and selects, as numba emits them for the same Python code; the other
    operators and functions are calls to the compiled scalar operations of ``scalar_ops`` (see
    ``inlining``); a chain is a sequence of such steps; ``where`` is a select (both sides are
    pure, so computing both changes no pixel); an aggregation stores its arguments in the
    scratch vector and calls its reducer. Nothing is nested but the tree's own nesting, so
    compile time grows with the tree's size only.

    Each value comes with its mask bit, as ``block_program`` computes it, and in float32
    (``single``) every value is rounded to float32 as it is made.

    ``x`` is the LLVM tuple of the pixel's input values, widened to float64 (and rounded, in
    float32); ``masks`` the tuple of their mask bits; ``scratch`` is the aggregations' float64
    vector.
    """

    def __init__(
        self,
        context: Any,
        builder: Any,
        x: Any,
        masks: Any,
        scratch: Any,
        scratch_type: types.Array,
        nodata_constants: dict[str, float],
        single: bool,
    ) -> None:
        self.context = context
        self.builder = builder
        self.x = x
        self.masks = masks
        self.scratch = scratch
        self.scratch_data = context.make_array(scratch_type)(context, builder, value=scratch).data
        self.nodata_constants = nodata_constants
        self.single = single
        self.slot = 0
        self.large_calls = 0
        self.linked: set[Any] = set()

    def value(self, node: Node) -> tuple[Any, Any]:
        """The LLVM value of ``node`` at this pixel, and its mask bit."""
        if isinstance(node, Constant):
            return self.constant(node.value), cgutils.false_bit
        if isinstance(node, NodataOf):
            return self.constant(self.nodata_constants[node.name]), cgutils.false_bit
        if isinstance(node, Input):
            return (
                self.rounded(self.builder.extract_value(self.x, node.index)),
                self.builder.extract_value(self.masks, node.index),
            )
        if isinstance(node, Unary):
            return self.unary(node.op, self.value(node.operand))
        if isinstance(node, Binary):
            return self.binary(node.op, self.value(node.left), self.value(node.right))
        if isinstance(node, Chain):
            result = self.value(node.first)
            for op, term in node.steps:
                result = self.binary(op, result, self.value(term))
            return result
        if isinstance(node, Comparison):
            left = self.value(node.first)
            result = None
            for op, term in node.steps:
                right = self.value(term)
                pair = self.binary(op, left, right)
                result = pair if result is None else self.binary("and", result, pair)
                left = right
            return result
        if isinstance(node, Call):
            return self.call(node)
        raise TypeError(f"unknown node {node!r}")

    def constant(self, value: float) -> Any:
        """A constant of the calculation: rounded to float32 in float32."""
        if self.single:
            with np.errstate(over="ignore"):
                value = float(np.float32(value))
        return self.context.get_constant(types.float64, float(value))

    def exact(self, value: float) -> Any:
        return self.context.get_constant(types.float64, float(value))

    def rounded(self, value: Any) -> Any:
        """``value`` as the calculation type holds it."""
        if not self.single:
            return value
        b = self.builder
        return b.fpext(b.fptrunc(value, ir.FloatType()), ir.DoubleType())

    def truth(self, bit: Any) -> Any:
        """1.0 where ``bit`` is set, else 0.0."""
        return self.builder.select(bit, self.exact(1.0), self.exact(0.0))

    def nonzero(self, value: Any) -> Any:
        return self.builder.fcmp_unordered("!=", value, self.exact(0.0))

    def not_finite(self, value: Any) -> Any:
        """Whether ``value`` is infinite or NaN: ``value - value`` is NaN just then."""
        b = self.builder
        return b.fcmp_unordered("uno", b.fsub(value, value), self.exact(0.0))

    def fabs(self, value: Any) -> Any:
        fabs = self.builder.module.declare_intrinsic("llvm.fabs", [ir.DoubleType()])
        return self.builder.call(fabs, [value])

    def unary(self, op: str, operand: tuple[Any, Any]) -> tuple[Any, Any]:
        value, mask = operand
        if op == "+":
            return operand
        if op == "-":
            return self.builder.fneg(value), mask
        if op == "not":
            return self.truth(self.builder.fcmp_ordered("==", value, self.exact(0.0))), mask
        if op == "isnan":
            return self.truth(self.builder.fcmp_unordered("uno", value, value)), mask
        result = self.rounded(self.invoke(UNARY_OPERATIONS[op], _UNARY_SIGNATURE, [value]))
        if op in _MASKED_WHERE_NOT_FINITE:
            mask = self.builder.or_(mask, self.not_finite(result))
        return result, mask

    def binary(
        self, op: str, left_pair: tuple[Any, Any], right_pair: tuple[Any, Any]
    ) -> tuple[Any, Any]:
        b = self.builder
        left, left_mask = left_pair
        right, right_mask = right_pair
        mask = b.or_(left_mask, right_mask)
        if op in _ARITHMETIC:
            result = self.rounded(getattr(b, _ARITHMETIC[op])(left, right))
        elif op in _COMPARISONS:
            method, comparison = _COMPARISONS[op]
            return self.truth(getattr(b, method)(comparison, left, right)), mask
        elif op == "and":
            return self.truth(b.and_(self.nonzero(left), self.nonzero(right))), mask
        elif op == "or":
            return self.truth(b.or_(self.nonzero(left), self.nonzero(right))), mask
        elif op in _EXTREMES:
            chosen = b.select(b.fcmp_ordered(_EXTREMES[op], left, right), left, right)
            chosen = b.select(b.fcmp_unordered("uno", right, right), right, chosen)
            return b.select(b.fcmp_unordered("uno", left, left), left, chosen), mask
        else:
            operation = BINARY_OPERATIONS[op]
            result = self.rounded(self.invoke(operation, _BINARY_SIGNATURE, [left, right]))
        if op in _MASKED_WHERE_NOT_FINITE:
            mask = b.or_(mask, self.not_finite(result))
        if op in _SAFE_DIVISIONS:
            scaled = b.fmul(self.fabs(left), self.exact(TINY))
            mask = b.or_(mask, b.fcmp_ordered(">=", scaled, self.fabs(right)))
        return result, mask

    def call(self, node: Call) -> tuple[Any, Any]:
        name = node.function
        if name in REDUCERS:
            return self.aggregate(node)
        args = [self.value(a) for a in node.args]
        if name == "clip":  # numpy's clip: minimum(maximum(x, lo), hi)
            x, lo, hi = args
            return self.binary("minimum", self.binary("maximum", x, lo), hi)
        if name == "where":  # numpy.ma's: the condition's mask and that of the side taken
            (condition, condition_mask), (when_true, true_mask), (when_false, false_mask) = args
            b = self.builder
            chosen = self.nonzero(condition)
            mask = b.or_(condition_mask, b.select(chosen, true_mask, false_mask))
            return b.select(chosen, when_true, when_false), mask
        if len(args) == 1:
            return self.unary(name, args[0])
        return self.binary(name, args[0], args[1])

    def aggregate(self, node: Call) -> tuple[Any, Any]:
        """numpy.ma's aggregation: its masked arguments left out (stored as NaN, which the
        reducers ignore), masked where every argument is."""
        b = self.builder
        values = [self.value(a) for a in node.args]
        offset = self.slot
        self.slot += len(values)
        mask = cgutils.true_bit
        for t, (v, m) in enumerate(values):
            at = self.context.get_constant(types.intp, offset + t)
            b.store(b.select(m, self.exact(math.nan), v), b.gep(self.scratch_data, [at]))
            mask = b.and_(mask, m)
        args = [
            self.scratch,
            self.context.get_constant(types.intp, offset),
            self.context.get_constant(types.intp, len(values)),
            self.exact(0.0 if node.q is None else node.q),
        ]
        result = self.invoke(REDUCERS[node.function], _REDUCER_SIGNATURE, args)
        return self.rounded(result), mask

    def invoke(self, function: Any, signature: Any, args: list[Any]) -> Any:
        """A call to a compiled scalar operation (compiled here on first use, once a process).

        The operations cannot raise (numpy's error model, no bounds checks), so the call's
        status is not tested, and nothing but the call is emitted.
        """
        compiled = function.overloads.get(signature.args)
        if compiled is None:
            function.compile(signature)
            compiled = function.overloads[signature.args]
        if function not in self.linked:
            self.linked.add(function)
            self.context.add_linking_libs([compiled.library])
        callee = self.context.declare_function(self.builder.module, compiled.fndesc)
        _, result = self.context.call_conv.call_function(
            self.builder,
            callee,
            signature.return_type,
            signature.args,
            args,
            self.inlining(function),
        )
        return result

    def inlining(self, function: Any) -> tuple[str, ...]:
        """How to call ``function``: small operations as LLVM decides (it inlines them); of the
        large ones (``_LARGE``), the first ``_INLINED_LARGE_CALLS`` inlined, so that a reducer
        sees its constant offset and count, and the rest called, so that LLVM's work stays
        bounded."""
        if function not in _LARGE:
            return ()
        self.large_calls += 1
        return ("alwaysinline",) if self.large_calls <= _INLINED_LARGE_CALLS else ("noinline",)


def _scratch_size(node: Node) -> int:
    """How many float64 slots the aggregations of ``node`` take, each its own region."""
    own = len(node.args) if isinstance(node, Call) and node.function in REDUCERS else 0
    return own + sum(_scratch_size(child) for child in _children(node))


def _children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, Binary):
        return (node.left, node.right)
    if isinstance(node, Chain | Comparison):
        return (node.first, *(term for _, term in node.steps))
    if isinstance(node, Call):
        return node.args
    return ()


def _expression_evaluator(
    root: Node, nodata_constants: dict[str, float], fused: bool, single: bool
) -> Any:
    """An intrinsic ``(x, masks, scratch) -> (float64, boolean)``: the expression at one pixel
    and its mask.

    ``fused``: emitted into the kernel's loop, which LLVM then vectorises; otherwise emitted as
    a function of its own that the loop calls (see ``_FUSED_INPUTS``).
    """
    result_type = types.Tuple((types.float64, types.boolean))

    @intrinsic
    def evaluate_pixel(typingctx: Any, x: Any, masks: Any, scratch: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            scratch_type = signature.args[2]
            if fused:
                emitter = _Emitter(
                    context,
                    builder,
                    args[0],
                    args[1],
                    args[2],
                    scratch_type,
                    nodata_constants,
                    single,
                )
                return context.make_tuple(builder, result_type, list(emitter.value(root)))
            arguments = [context.get_value_type(t) for t in signature.args]
            function = ir.Function(
                builder.module,
                ir.FunctionType(context.get_value_type(result_type), arguments),
                name=builder.module.get_unique_name("band_calc_pixel"),
            )
            function.linkage = "internal"
            function.attributes.add("noinline")
            body = ir.IRBuilder(function.append_basic_block("entry"))
            x_value, masks_value, scratch_value = function.args
            emitter = _Emitter(
                context,
                body,
                x_value,
                masks_value,
                scratch_value,
                scratch_type,
                nodata_constants,
                single,
            )
            body.ret(context.make_tuple(body, result_type, list(emitter.value(root))))
            return builder.call(function, list(args))

        return result_type(x, masks, scratch), codegen

    return evaluate_pixel


def _pixel_reader(dtypes: tuple[np.dtype, ...]) -> Any:
    """An intrinsic ``(addresses, index) -> (float64, ...)``: element ``index`` of each
    C-contiguous input tile, whose data starts at ``addresses[k]``, widened as ``np.float64``
    widens it."""
    pixel = types.UniTuple(types.float64, len(dtypes))
    elements = [numba.from_dtype(d) for d in dtypes]

    @intrinsic
    def read_pixel(typingctx: Any, addresses: Any, index: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            at = context.cast(builder, args[1], signature.args[1], types.intp)
            values = []
            for k, element in enumerate(elements):
                data_type = context.get_data_type(element).as_pointer()
                data = builder.inttoptr(builder.extract_value(args[0], k), data_type)
                value = context.unpack_value(builder, element, builder.gep(data, [at]))
                values.append(context.cast(builder, value, element, types.float64))
            return context.make_tuple(builder, pixel, values)

        return pixel(addresses, index), codegen

    return read_pixel


def _input_masks(dtypes: tuple[np.dtype, ...]) -> Any:
    """An intrinsic ``(x, nan_tests, values, others) -> (boolean, ...)``: where each input is
    nodata.

    Input ``k`` is nodata where ``x[k]`` equals ``values[k]`` or ``others[k]`` (a NaN value
    matches nothing) or, for a float input whose ``nan_tests[k]`` is set, where ``x[k]`` is
    NaN: branch-free, so that LLVM need not branch on a runtime constant.
    """
    masks = types.UniTuple(types.boolean, len(dtypes))

    @intrinsic
    def input_masks(typingctx: Any, x: Any, nan_tests: Any, values: Any, others: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            pixel, tests, nodata, other = args
            found = []
            for k, dtype in enumerate(dtypes):
                v = builder.extract_value(pixel, k)
                hit = builder.fcmp_ordered("==", v, builder.extract_value(nodata, k))
                hit = builder.or_(
                    hit, builder.fcmp_ordered("==", v, builder.extract_value(other, k))
                )
                if dtype.kind == "f":  # an integer widened to float64 is never NaN
                    nan = builder.fcmp_unordered("uno", v, v)
                    hit = builder.or_(hit, builder.and_(builder.extract_value(tests, k), nan))
                found.append(hit)
            return context.make_tuple(builder, masks, found)

        return masks(x, nan_tests, values, others), codegen

    return input_masks


def _nodata_mask(count: int, mode: int) -> Any:
    """An intrinsic ``(masks) -> boolean``: whether the inputs' masks make the output nodata,
    by ``mode`` (any of them, all of them, never)."""

    @intrinsic
    def nodata_mask(typingctx: Any, masks: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            if mode == NODATA_MASK_NONE:
                return cgutils.false_bit
            bits = [builder.extract_value(args[0], k) for k in range(count)]
            combined = bits[0]
            for bit in bits[1:]:
                if mode == NODATA_MASK_ANY:
                    combined = builder.or_(combined, bit)
                else:
                    combined = builder.and_(combined, bit)
            return combined

        return types.boolean(masks), codegen

    return nodata_mask


@numba.njit(inline="always", cache=True, **JIT)
def _scale_single(value: float, scale: float, offset: float) -> float:
    """The value stored with an output scale, in float32 (see ``CalcOptions``)."""
    return np.float32(np.float32(value / scale) - offset)


@numba.njit(inline="always", cache=True, **JIT)
def _scale_double(value: float, scale: float, offset: float) -> float:
    return value / scale - offset


def _build_kernel(expression: Expression, signature: _Signature) -> tuple[Any, Any]:
    """The fused kernel's dispatcher, not yet compiled, and the signature to compile it for."""
    dtypes = signature.input_dtypes
    out_dtype = signature.output_dtype
    nodata_constants = signature.nodata_constants
    count = len(dtypes)
    single = signature.single
    root = _expression_evaluator(expression.root, nodata_constants, count <= _FUSED_INPUTS, single)
    read = _pixel_reader(dtypes)
    input_masks = _input_masks(dtypes)
    inputs_nodata = _nodata_mask(count, signature.nodata_mask)
    scratch_size = max(_scratch_size(expression.root), 1)
    integer = out_dtype.kind != "f"
    out_float = np.float32 if out_dtype == np.float32 else np.float64
    # A result moved half away from zero, then truncated, fits when strictly inside these.
    below, above = _dtype_range(out_dtype)
    below, above = below - 1.0, above + 1.0
    out_type = numba.from_dtype(out_dtype)
    sig = types.Tuple(
        (types.int64, types.int64, types.int64, types.int64, types.float64, types.float64)
    )(
        types.UniTuple(types.intp, count),
        types.UniTuple(types.boolean, count),
        types.UniTuple(types.float64, count),
        types.UniTuple(types.float64, count),
        types.float64,
        types.float64,
        types.boolean,
        types.Array(out_type, 2, "C"),
        out_type,
        types.intp,
        types.intp,
    )

    keys, key_shift, key_flip = statistics_keys(out_dtype)
    _scaled = _scale_single if single else _scale_double

    def run(addresses, nan_tests, values, others, scale, offset, scaled, out, nodata, first, stop):
        cols = out.shape[1]
        nodata64 = np.float64(nodata)
        s = np.empty(scratch_size, dtype=np.float64)
        written = 0
        n = 0
        low = KEY_MAX
        high = KEY_MIN
        origin = np.nan  # the first valid value: moments are taken about it
        mean = 0.0  # about origin
        m2 = 0.0
        for i in range(first, stop):
            row = out[i]
            if integer:
                for j in range(cols):
                    x = read(addresses, i * cols + j)
                    m = input_masks(x, nan_tests, values, others)
                    v, vm = root(x, m, s)
                    if scaled:
                        v = _scaled(v, scale, offset)
                    # to the nearest integer, halves away from zero, as GDAL writes
                    v = v + 0.5 if v >= 0.0 else v - 0.5
                    if not (vm | inputs_nodata(m)) and v > below and v < above:
                        row[j] = v  # truncated: the rounded value
                    else:
                        row[j] = nodata
                        written += 1
            else:
                # Without a branch, so that LLVM can vectorise the row: every pixel is
                # computed (the expression is pure and cannot raise) and then chosen.
                for j in range(cols):
                    x = read(addresses, i * cols + j)
                    m = input_masks(x, nan_tests, values, others)
                    r, vm = root(x, m, s)
                    if scaled:
                        r = _scaled(r, scale, offset)
                    v = out_float(r)
                    valid = ~(vm | inputs_nodata(m)) & np.isfinite(v)
                    row[j] = v if valid else nodata
                    written += np.int64(~valid)
            # The row is still in cache: its statistics, as written, in two passes, about
            # the first valid value, so that a large mean costs no precision.
            if np.isnan(origin):
                origin = first_valid(row, nodata64)
                if np.isnan(origin):
                    continue
            row_n, total, row_low, row_high = row_sums(
                row, row.view(keys), nodata64, origin, key_shift, key_flip
            )
            if row_n == 0:
                continue
            row_mean = total / row_n
            row_m2 = row_squared_deviations(row, nodata64, origin, row_mean)
            # Chan's formula, as BandStatistics.combine.
            merged = n + row_n
            delta = row_mean - mean
            mean += delta * row_n / merged
            m2 += row_m2 + delta * delta * n * row_n / merged
            n = merged
            low = min(low, row_low)
            high = max(high, row_high)
        return written, n, low, high, (origin + mean if n else 0.0), m2

    return numba.njit(**JIT)(run), sig
