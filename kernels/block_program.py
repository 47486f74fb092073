"""Band calc without a compile: a parsed expression run as a program of compiled block operations.

The fused kernel of ``bandcalc`` compiles each new expression (a fraction of a second to a few
seconds). Here the tree becomes a short program instead, one instruction per operator or
function, and one fixed kernel, compiled once and cached on disk, runs it: over each row in
blocks of at most ``BLOCK`` pixels, it loads the inputs' pixels into float64 registers, runs
each instruction as a loop over the block (which LLVM vectorises, and which stays in cache),
then writes the result as the fused kernel writes it and takes the row's statistics with the
same functions. So a new expression costs the time to assemble its program (microseconds), and
every pixel is the value the fused kernel gives: the instructions are the same IEEE operations
and the same compiled scalar operations and aggregations (``scalar_ops``), in the same order.

Each register has a mask register beside it, as numpy's masked arrays carry a mask beside
their data (Remotior's band calc runs on masked arrays): an input's mask is where it is nodata;
an operation's result is masked where an operand is, and where numpy.ma masks it (a division,
``//``, ``%``, ``**``, ``sqrt log log10 tan arcsin arccos`` whose result is not finite, a
division or ``%`` by zero); ``where`` takes the mask of its condition and of the side it picks; an
aggregation ignores its masked arguments and is masked where all are. In float32 (``single``)
the inputs, the constants and every operation's result are rounded to float32, as numpy
computes on float32 arrays (see ``bandcalc``).

Registers: the inputs' pixels take the first registers, each constant one register filled once
per call, and every operator's result a register reused once its one reader has read it, so a
program needs few more registers than its widest point. An instruction never writes a register
it reads, so that each of its loops is vectorised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

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
)
from .scalar_ops import (
    JIT,
    absolute,
    arccos,
    arcsin,
    arctan,
    cos,
    exp,
    floordiv,
    log,
    log10,
    mod,
    nanmax,
    nanmean,
    nanmedian,
    nanmin,
    nanpercentile,
    nanstd,
    nansum,
    power,
    sin,
    sqrt,
    tan,
)

# Pixels per block: a few registers of this many float64 stay in the L1 cache.
BLOCK: Final = 1024

# Opcodes. An instruction is (opcode, destination, a, b, c): registers, except for _REDUCE,
# whose a and b are the offset and count of its registers in ``arguments`` and c its reducer.
_ADD, _SUB, _MUL, _DIV, _FLOORDIV, _MOD, _POW = range(7)
_LT, _LE, _GT, _GE, _EQ, _NE = range(7, 13)
_AND, _OR, _NOT, _NEG, _ISNAN, _MINIMUM, _MAXIMUM, _WHERE = range(13, 21)
_SQRT, _LOG, _LOG10, _EXP, _ABS, _SIN, _COS, _TAN, _ARCSIN, _ARCCOS, _ARCTAN = range(21, 32)
_REDUCE: Final = 32

# numpy.ma's domain of a safe division: masked where |a| * tiny >= |b| (b zero, or b so small
# against a that the quotient overflows).
TINY: Final = float(np.finfo(np.float64).tiny)
# Which inputs' nodata makes a pixel of the output nodata, besides the calculation's own mask
# (Remotior's any_nodata_mask True, False and None).
NODATA_MASK_ANY, NODATA_MASK_ALL, NODATA_MASK_NONE = range(3)

_BINARY_OPCODES: Final = {
    "+": _ADD,
    "-": _SUB,
    "*": _MUL,
    "/": _DIV,
    "//": _FLOORDIV,
    "%": _MOD,
    "**": _POW,
    "<": _LT,
    "<=": _LE,
    ">": _GT,
    ">=": _GE,
    "==": _EQ,
    "!=": _NE,
    "and": _AND,
    "or": _OR,
    "minimum": _MINIMUM,
    "maximum": _MAXIMUM,
}
_UNARY_OPCODES: Final = {
    "-": _NEG,
    "not": _NOT,
    "isnan": _ISNAN,
    "sqrt": _SQRT,
    "log": _LOG,
    "log10": _LOG10,
    "exp": _EXP,
    "abs": _ABS,
    "sin": _SIN,
    "cos": _COS,
    "tan": _TAN,
    "arcsin": _ARCSIN,
    "arccos": _ARCCOS,
    "arctan": _ARCTAN,
}
_MIN, _MAX, _SUM, _MEAN, _STD, _MEDIAN, _PERCENTILE = range(7)
_REDUCER_CODES: Final = {
    "min": _MIN,
    "max": _MAX,
    "sum": _SUM,
    "mean": _MEAN,
    "std": _STD,
    "median": _MEDIAN,
    "percentile": _PERCENTILE,
}

# Input dtypes, by the code the kernel switches on to read them.
INPUT_DTYPE_CODES: Final = {
    np.dtype(d): code
    for code, d in enumerate(
        (
            np.uint8,
            np.int8,
            np.uint16,
            np.int16,
            np.uint32,
            np.int32,
            np.uint64,
            np.int64,
            np.float32,
            np.float64,
        )
    )
}


@dataclass(frozen=True, slots=True)
class Program:
    """An expression as instructions over registers; see the module's notes."""

    code: np.ndarray  # int64 (instructions, 5)
    quantiles: np.ndarray  # float64 (instructions,): the q of a percentile instruction
    arguments: np.ndarray  # int64: the registers each aggregation reads, in order
    constant_registers: np.ndarray  # int64
    constant_values: np.ndarray  # float64, one per constant register
    register_count: int
    result: int  # the register that holds the expression's value
    scratch_size: int  # the widest aggregation


@dataclass(frozen=True, slots=True)
class CalcOptions:
    """How a calculation computes and writes, whichever kernel runs it.

    ``single``: in float32 (inputs, constants and every result rounded to float32), else
    float64. ``nodata_mask``: ``NODATA_MASK_ANY``, ``_ALL`` or ``_NONE``. ``scaled``: the
    value written is ``result / scale - offset``, ``offset`` being Remotior's offset divided
    by its scale (both rounded to float32 when ``single``, as numpy takes Python scalars).
    """

    single: bool = False
    nodata_mask: int = NODATA_MASK_ANY
    scale: float = 1.0
    offset: float = 0.0
    scaled: bool = False


def assemble(expression: Expression, nodata_constants: Mapping[str, float]) -> Program:
    """The program of ``expression``; ``nodata_constants`` gives each ``nodata("name")``."""
    assembler = _Assembler(len(expression.input_names), nodata_constants)
    result = assembler.value(expression.root)
    code = np.array(assembler.code, dtype=np.int64).reshape(-1, 5)
    return Program(
        code=code,
        quantiles=np.array(assembler.quantiles, dtype=np.float64),
        arguments=np.array(assembler.arguments or [0], dtype=np.int64),
        constant_registers=np.array(list(assembler.constants.values()), dtype=np.int64),
        constant_values=np.array(
            [assembler.constant_values[r] for r in assembler.constants.values()], dtype=np.float64
        ),
        register_count=assembler.register_count,
        result=result,
        scratch_size=max(assembler.scratch_size, 1),
    )


class _Assembler:
    """Walks the tree once, emitting an instruction per operation.

    ``value(node)`` returns the register holding ``node``'s value; a temporary one belongs to
    the caller, who releases it once read (a tree has one reader per value; the middle terms of
    a chained comparison are read twice, and released after their second reading).
    """

    def __init__(self, inputs: int, nodata_constants: Mapping[str, float]) -> None:
        self.register_count = inputs
        self.fixed: set[int] = set(range(inputs))  # inputs and constants: never written
        self.free: list[int] = []
        self.code: list[int] = []
        self.quantiles: list[float] = []
        self.arguments: list[int] = []
        self.constants: dict[str, int] = {}  # repr(value) -> register
        self.constant_values: dict[int, float] = {}
        self.nodata_constants = nodata_constants
        self.scratch_size = 0

    def value(self, node: Node) -> int:
        if isinstance(node, Input):
            return node.index
        if isinstance(node, Constant):
            return self.constant(node.value)
        if isinstance(node, NodataOf):
            return self.constant(self.nodata_constants[node.name])
        if isinstance(node, Unary):
            operand = self.value(node.operand)
            return operand if node.op == "+" else self.emit(_UNARY_OPCODES[node.op], operand)
        if isinstance(node, Binary):
            return self.emit(
                _BINARY_OPCODES[node.op], self.value(node.left), self.value(node.right)
            )
        if isinstance(node, Chain):
            result = self.value(node.first)
            for op, term in node.steps:
                result = self.emit(_BINARY_OPCODES[op], result, self.value(term))
            return result
        if isinstance(node, Comparison):
            return self.comparison(node)
        if isinstance(node, Call):
            return self.call(node)
        raise TypeError(f"unknown node {node!r}")

    def comparison(self, node: Comparison) -> int:
        left = self.value(node.first)
        result = None
        for op, term in node.steps:
            right = self.value(term)
            pair = self.emit(_BINARY_OPCODES[op], left, right, keep=right)
            result = pair if result is None else self.emit(_AND, result, pair)
            left = right
        self.release(left)
        assert result is not None, "a comparison has at least one step"
        return result

    def call(self, node: Call) -> int:
        name = node.function
        if name in _REDUCER_CODES:
            registers = [self.value(a) for a in node.args]
            offset = len(self.arguments)
            self.arguments.extend(registers)
            self.scratch_size = max(self.scratch_size, len(registers))
            q = 0.0 if node.q is None else node.q
            result = self.instruction(_REDUCE, offset, len(registers), _REDUCER_CODES[name], q)
            self.release(*registers)
            return result
        args = [self.value(a) for a in node.args]
        if name == "clip":  # numpy's clip: minimum(maximum(x, lo), hi)
            x, lo, hi = args
            return self.emit(_MINIMUM, self.emit(_MAXIMUM, x, lo), hi)
        if name == "where":
            return self.emit(_WHERE, *args)
        if len(args) == 1:
            return self.emit(_UNARY_OPCODES[name], args[0])
        return self.emit(_BINARY_OPCODES[name], *args)

    def constant(self, value: float) -> int:
        key = repr(float(value))
        register = self.constants.get(key)
        if register is None:
            register = self.constants[key] = self.new_register()
            self.fixed.add(register)
            self.constant_values[register] = float(value)
        return register

    def emit(self, opcode: int, *operands: int, keep: int | None = None) -> int:
        """An elementwise instruction on ``operands``, which it then releases (but ``keep``).

        Its destination is never one of its operands: a loop whose output may overlap an
        input is not vectorised."""
        a, b, c = (*operands, 0, 0)[:3]
        destination = self.instruction(opcode, a, b, c, 0.0)
        self.release(*(r for r in operands if r != keep))
        return destination

    def instruction(self, opcode: int, a: int, b: int, c: int, q: float) -> int:
        destination = self.free.pop() if self.free else self.new_register()
        self.code.extend((opcode, destination, a, b, c))
        self.quantiles.append(q)
        return destination

    def new_register(self) -> int:
        self.register_count += 1
        return self.register_count - 1

    def release(self, *registers: int) -> None:
        for register in registers:
            if register not in self.fixed and register not in self.free:
                self.free.append(register)


# Reading the inputs: element ``index`` of a C-contiguous tile whose data starts at ``address``,
# widened to float64 as the fused kernel widens it.


def _element_reader(dtype: type) -> object:
    element = numba.from_dtype(np.dtype(dtype))

    @intrinsic
    def read(typingctx: object, address: object, index: object) -> object:
        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            data_type = context.get_data_type(element).as_pointer()
            data = builder.inttoptr(args[0], data_type)
            at = context.cast(builder, args[1], signature.args[1], types.intp)
            value = context.unpack_value(builder, element, builder.gep(data, [at]))
            return context.cast(builder, value, element, types.float64)

        return types.float64(address, index), codegen

    return read


_read_uint8 = _element_reader(np.uint8)
_read_int8 = _element_reader(np.int8)
_read_uint16 = _element_reader(np.uint16)
_read_int16 = _element_reader(np.int16)
_read_uint32 = _element_reader(np.uint32)
_read_int32 = _element_reader(np.int32)
_read_uint64 = _element_reader(np.uint64)
_read_int64 = _element_reader(np.int64)
_read_float32 = _element_reader(np.float32)
_read_float64 = _element_reader(np.float64)


@numba.njit(cache=True, **JIT)
def _load(register, mask, address, dtype_code, nan_test, value, other, base, n):
    """Pixels ``base`` to ``base + n`` of an input into ``register``, widened to float64, and
    where it is nodata into ``mask``: equal to ``value`` or ``other`` (NaN: neither) or, with
    ``nan_test``, NaN; tested as the fused kernel tests it, on the widened value."""
    if dtype_code == 0:
        for j in range(n):
            x = _read_uint8(address, base + j)
            register[j] = x
            mask[j] = (x == value) | (x == other) | (nan_test & (x != x))
    elif dtype_code == 1:
        for j in range(n):
            x = _read_int8(address, base + j)
            register[j] = x
            mask[j] = (x == value) | (x == other) | (nan_test & (x != x))
    elif dtype_code == 2:
        for j in range(n):
            x = _read_uint16(address, base + j)
            register[j] = x
            mask[j] = (x == value) | (x == other) | (nan_test & (x != x))
    elif dtype_code == 3:
        for j in range(n):
            x = _read_int16(address, base + j)
            register[j] = x
            mask[j] = (x == value) | (x == other) | (nan_test & (x != x))
    elif dtype_code == 4:
        for j in range(n):
            x = _read_uint32(address, base + j)
            register[j] = x
            mask[j] = (x == value) | (x == other) | (nan_test & (x != x))
    elif dtype_code == 5:
        for j in range(n):
            x = _read_int32(address, base + j)
            register[j] = x
            mask[j] = (x == value) | (x == other) | (nan_test & (x != x))
    elif dtype_code == 6:
        for j in range(n):
            x = _read_uint64(address, base + j)
            register[j] = x
            mask[j] = (x == value) | (x == other) | (nan_test & (x != x))
    elif dtype_code == 7:
        for j in range(n):
            x = _read_int64(address, base + j)
            register[j] = x
            mask[j] = (x == value) | (x == other) | (nan_test & (x != x))
    elif dtype_code == 8:
        for j in range(n):
            x = _read_float32(address, base + j)
            register[j] = x
            mask[j] = (x == value) | (x == other) | (nan_test & (x != x))
    else:
        for j in range(n):
            x = _read_float64(address, base + j)
            register[j] = x
            mask[j] = (x == value) | (x == other) | (nan_test & (x != x))


@numba.njit(cache=True, **JIT)
def _round_single(d, n):
    """Round to float32, as numpy's float32 operations round their results."""
    for j in range(n):
        d[j] = np.float32(d[j])


@numba.njit(cache=True, **JIT)
def _unary(opcode, d, a, n):
    if opcode == _NEG:
        for j in range(n):
            d[j] = -a[j]
    elif opcode == _NOT:
        for j in range(n):
            d[j] = 1.0 if a[j] == 0.0 else 0.0
    elif opcode == _ISNAN:
        for j in range(n):
            d[j] = 1.0 if a[j] != a[j] else 0.0
    elif opcode == _SQRT:
        for j in range(n):
            d[j] = sqrt(a[j])
    elif opcode == _LOG:
        for j in range(n):
            d[j] = log(a[j])
    elif opcode == _LOG10:
        for j in range(n):
            d[j] = log10(a[j])
    elif opcode == _EXP:
        for j in range(n):
            d[j] = exp(a[j])
    elif opcode == _ABS:
        for j in range(n):
            d[j] = absolute(a[j])
    elif opcode == _SIN:
        for j in range(n):
            d[j] = sin(a[j])
    elif opcode == _COS:
        for j in range(n):
            d[j] = cos(a[j])
    elif opcode == _TAN:
        for j in range(n):
            d[j] = tan(a[j])
    elif opcode == _ARCSIN:
        for j in range(n):
            d[j] = arcsin(a[j])
    elif opcode == _ARCCOS:
        for j in range(n):
            d[j] = arccos(a[j])
    else:
        for j in range(n):
            d[j] = arctan(a[j])


@numba.njit(cache=True, **JIT)
def _binary(opcode, d, a, b, n):
    if opcode == _ADD:
        for j in range(n):
            d[j] = a[j] + b[j]
    elif opcode == _SUB:
        for j in range(n):
            d[j] = a[j] - b[j]
    elif opcode == _MUL:
        for j in range(n):
            d[j] = a[j] * b[j]
    elif opcode == _DIV:
        for j in range(n):
            d[j] = a[j] / b[j]
    elif opcode == _FLOORDIV:
        for j in range(n):
            d[j] = floordiv(a[j], b[j])
    elif opcode == _MOD:
        for j in range(n):
            d[j] = mod(a[j], b[j])
    elif opcode == _POW:
        for j in range(n):
            d[j] = power(a[j], b[j])
    elif opcode == _LT:
        for j in range(n):
            d[j] = 1.0 if a[j] < b[j] else 0.0
    elif opcode == _LE:
        for j in range(n):
            d[j] = 1.0 if a[j] <= b[j] else 0.0
    elif opcode == _GT:
        for j in range(n):
            d[j] = 1.0 if a[j] > b[j] else 0.0
    elif opcode == _GE:
        for j in range(n):
            d[j] = 1.0 if a[j] >= b[j] else 0.0
    elif opcode == _EQ:
        for j in range(n):
            d[j] = 1.0 if a[j] == b[j] else 0.0
    elif opcode == _NE:
        for j in range(n):
            d[j] = 1.0 if a[j] != b[j] else 0.0
    elif opcode == _AND:
        for j in range(n):
            d[j] = 1.0 if (a[j] != 0.0) & (b[j] != 0.0) else 0.0
    elif opcode == _OR:
        for j in range(n):
            d[j] = 1.0 if (a[j] != 0.0) | (b[j] != 0.0) else 0.0
    elif opcode == _MINIMUM:  # numpy's: the first NaN, else the lesser
        for j in range(n):
            x = a[j]
            y = b[j]
            z = x if x <= y else y
            z = y if y != y else z
            d[j] = x if x != x else z
    else:  # _MAXIMUM
        for j in range(n):
            x = a[j]
            y = b[j]
            z = x if x >= y else y
            z = y if y != y else z
            d[j] = x if x != x else z


@numba.njit(cache=True, **JIT)
def _reduce(reducer, d, registers, masks, arguments, offset, count, q, scratch, n):
    """An aggregation across registers, pixel by pixel, through the shared reducers: masked
    arguments are left out (as NaN, which the reducers ignore)."""
    for j in range(n):
        for t in range(count):
            r = arguments[offset + t]
            scratch[t] = np.nan if masks[r, j] else registers[r, j]
        if reducer == _MIN:
            d[j] = nanmin(scratch, 0, count, q)
        elif reducer == _MAX:
            d[j] = nanmax(scratch, 0, count, q)
        elif reducer == _SUM:
            d[j] = nansum(scratch, 0, count, q)
        elif reducer == _MEAN:
            d[j] = nanmean(scratch, 0, count, q)
        elif reducer == _STD:
            d[j] = nanstd(scratch, 0, count, q)
        elif reducer == _MEDIAN:
            d[j] = nanmedian(scratch, 0, count, q)
        else:
            d[j] = nanpercentile(scratch, 0, count, q)


@numba.njit(cache=True, **JIT)
def _mask_of(opcode, dm, d, am, bm, a, b, n):
    """The mask of an elementwise result ``d``, as numpy.ma gives it: its operands' masks
    (``b``'s too for a binary opcode), and for the domained operations where ``d`` is not
    finite or the divisor is out of the domain of a safe division."""
    if opcode in (_DIV, _FLOORDIV, _MOD):
        for j in range(n):
            out = ~np.isfinite(d[j]) | (absolute(a[j]) * TINY >= absolute(b[j]))
            dm[j] = am[j] | bm[j] | out
    elif opcode == _POW:
        for j in range(n):
            dm[j] = am[j] | bm[j] | ~np.isfinite(d[j])
    elif opcode in (_SQRT, _LOG, _LOG10, _TAN, _ARCSIN, _ARCCOS):
        for j in range(n):
            dm[j] = am[j] | ~np.isfinite(d[j])
    elif opcode >= _NOT and opcode != _MINIMUM and opcode != _MAXIMUM:
        for j in range(n):
            dm[j] = am[j]
    else:
        for j in range(n):
            dm[j] = am[j] | bm[j]


@numba.njit(cache=True, **JIT)
def _execute(code, quantiles, arguments, registers, masks, scratch, single, n):
    """Every instruction of a program over the first ``n`` pixels of the registers and their
    masks; in float32 when ``single``."""
    for k in range(code.shape[0]):
        opcode = code[k, 0]
        d = registers[code[k, 1]]
        dm = masks[code[k, 1]]
        if opcode == _REDUCE:
            offset = code[k, 2]
            count = code[k, 3]
            _reduce(
                code[k, 4], d, registers, masks, arguments, offset, count, quantiles[k], scratch, n
            )
            if single:
                _round_single(d, n)
            for j in range(n):
                dm[j] = True
            for t in range(count):
                am = masks[arguments[offset + t]]
                for j in range(n):
                    dm[j] = dm[j] & am[j]
        elif opcode == _WHERE:
            condition = registers[code[k, 2]]
            when_true = registers[code[k, 3]]
            when_false = registers[code[k, 4]]
            cm = masks[code[k, 2]]
            tm = masks[code[k, 3]]
            fm = masks[code[k, 4]]
            for j in range(n):
                chosen = condition[j] != 0.0
                d[j] = when_true[j] if chosen else when_false[j]
                dm[j] = cm[j] | (tm[j] if chosen else fm[j])
        elif opcode >= _NOT and opcode != _MINIMUM and opcode != _MAXIMUM:
            a = registers[code[k, 2]]
            _unary(opcode, d, a, n)
            if single:
                _round_single(d, n)
            _mask_of(opcode, dm, d, masks[code[k, 2]], masks[code[k, 2]], a, a, n)
        else:
            a = registers[code[k, 2]]
            b = registers[code[k, 3]]
            _binary(opcode, d, a, b, n)
            if single:
                _round_single(d, n)
            _mask_of(opcode, dm, d, masks[code[k, 2]], masks[code[k, 3]], a, b, n)


@numba.njit(cache=True, **JIT)
def _write_integer(segment, result, mask, nodata, below, above, n):
    """The fused kernel's integer output: rounded half away from zero, written when strictly
    inside (below, above)."""
    written = 0
    for j in range(n):
        v = result[j]
        v = v + 0.5 if v >= 0.0 else v - 0.5
        if mask[j] or not (v > below and v < above):
            segment[j] = nodata
            written += 1
        else:
            segment[j] = v
    return written


@numba.njit(cache=True, **JIT)
def _write_float(segment, result, mask, nodata, n):
    """The fused kernel's float output: rounded, nodata where not finite (in two passes, so
    that each is vectorised: the first rounds as it stores)."""
    for j in range(n):
        segment[j] = result[j]
    written = 0
    for j in range(n):
        w = segment[j]
        bad = mask[j] | ~np.isfinite(w)
        segment[j] = nodata if bad else w
        written += np.int64(bad)
    return written


@numba.njit(cache=True, **JIT)
def _output_mask(mask, masks, result, inputs, nodata_mask, n):
    """Where the output is nodata: the result's mask, and where any input is nodata
    (``NODATA_MASK_ANY``), where every input is (``NODATA_MASK_ALL``) or neither."""
    rm = masks[result]
    if nodata_mask == NODATA_MASK_ANY:
        for j in range(n):
            mask[j] = rm[j]
        for k in range(inputs):
            km = masks[k]
            for j in range(n):
                mask[j] = mask[j] | km[j]
    elif nodata_mask == NODATA_MASK_ALL:
        for j in range(n):
            mask[j] = True
        for k in range(inputs):
            km = masks[k]
            for j in range(n):
                mask[j] = mask[j] & km[j]
        for j in range(n):
            mask[j] = mask[j] | rm[j]
    else:
        for j in range(n):
            mask[j] = rm[j]


@numba.njit(cache=True, **JIT)
def _output_value(value, result, scale, offset, scaled, single, n):
    """The value written: the result, or with an output scale and offset, ``result / scale -
    offset`` (``offset`` is Remotior's offset divided by the scale), each step in float32
    when ``single``."""
    if not scaled:
        for j in range(n):
            value[j] = result[j]
    elif single:
        for j in range(n):
            value[j] = np.float32(np.float32(result[j] / scale) - offset)
    else:
        for j in range(n):
            value[j] = result[j] / scale - offset


@numba.njit(cache=True, **JIT)
def _run(
    code,
    quantiles,
    arguments,
    constant_registers,
    constant_values,
    register_count,
    result,
    scratch_size,
    addresses,
    dtype_codes,
    nan_tests,
    values,
    others,
    single,
    nodata_mask,
    scale,
    offset,
    scaled,
    out,
    nodata,
    below,
    above,
    integer,
    keys_view,
    key_shift,
    key_flip,
    first,
    stop,
):
    cols = out.shape[1]
    block = min(cols, BLOCK)
    registers = np.empty((register_count, block), dtype=np.float64)
    masks = np.zeros((register_count, block), dtype=np.bool_)  # constants: never masked
    for t in range(constant_registers.shape[0]):
        v = constant_values[t]
        registers[constant_registers[t], :] = np.float32(v) if single else v
    scratch = np.empty(scratch_size, dtype=np.float64)
    mask = np.empty(block, dtype=np.bool_)
    value = np.empty(block, dtype=np.float64)
    inputs = addresses.shape[0]
    nodata64 = np.float64(nodata)
    written = 0
    n = 0
    low = KEY_MAX
    high = KEY_MIN
    origin = np.nan
    mean = 0.0
    m2 = 0.0
    for i in range(first, stop):
        row = out[i]
        for start in range(0, cols, block):
            width = min(block, cols - start)
            base = i * cols + start
            for k in range(inputs):
                _load(
                    registers[k],
                    masks[k],
                    addresses[k],
                    dtype_codes[k],
                    nan_tests[k],
                    values[k],
                    others[k],
                    base,
                    width,
                )
                if single:
                    _round_single(registers[k], width)
            _execute(code, quantiles, arguments, registers, masks, scratch, single, width)
            _output_mask(mask, masks, result, inputs, nodata_mask, width)
            _output_value(value, registers[result], scale, offset, scaled, single, width)
            segment = row[start : start + width]
            if integer:
                written += _write_integer(segment, value, mask, nodata, below, above, width)
            else:
                written += _write_float(segment, value, mask, nodata, width)
        # The row's statistics, as the fused kernel takes them.
        if np.isnan(origin):
            origin = first_valid(row, nodata64)
            if np.isnan(origin):
                continue
        row_n, total, row_low, row_high = row_sums(
            row, keys_view[i], nodata64, origin, key_shift, key_flip
        )
        if row_n == 0:
            continue
        row_mean = total / row_n
        row_m2 = row_squared_deviations(row, nodata64, origin, row_mean)
        merged = n + row_n
        delta = row_mean - mean
        mean += delta * row_n / merged
        m2 += row_m2 + delta * delta * n * row_n / merged
        n = merged
        low = min(low, row_low)
        high = max(high, row_high)
    return written, n, low, high, (origin + mean if n else 0.0), m2


def run_program(
    program: Program,
    addresses: np.ndarray,
    dtype_codes: np.ndarray,
    nan_tests: np.ndarray,
    values: np.ndarray,
    others: np.ndarray,
    options: CalcOptions,
    out: np.ndarray,
    nodata: object,
    first: int,
    stop: int,
) -> tuple[int, int, int, int, float, float]:
    """Rows ``first`` to ``stop`` of ``out`` from the inputs at ``addresses`` (C-contiguous
    tiles of ``out``'s shape): as the fused kernel's ``run``, with the same result tuple.
    An input is nodata where equal to its ``values`` or ``others`` (NaN: no value) or, with
    its ``nan_tests``, NaN."""
    dtype = out.dtype
    keys, key_shift, key_flip = statistics_keys(dtype)
    integer = dtype.kind != "f"
    if integer:
        info = np.iinfo(dtype)
        below, above = float(info.min) - 1.0, float(info.max) + 1.0
    else:
        below, above = -math.inf, math.inf
    return _run(
        program.code,
        program.quantiles,
        program.arguments,
        program.constant_registers,
        program.constant_values,
        program.register_count,
        program.result,
        program.scratch_size,
        addresses,
        dtype_codes,
        nan_tests,
        values,
        others,
        options.single,
        options.nodata_mask,
        options.scale,
        options.offset,
        options.scaled,
        out,
        nodata,
        below,
        above,
        integer,
        out.view(keys),
        key_shift,
        key_flip,
        first,
        stop,
    )
