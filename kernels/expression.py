"""Band calc expressions: parse client text against an allow-list into a small immutable tree.

Python's ``ast`` module is used only as a tokenizer and parser (``mode="eval"``); the tree it
returns is walked against an allow-list of node types and function names and rebuilt as the
frozen dataclasses below. Client text is never given to ``eval``, ``exec`` or ``compile``.

The language is Remotior Sensus' band calc language, made safe:

- numbers, input names (quoted as Remotior writes them, ``"nir"``, or bare when the name is a
  valid identifier), ``nan`` (a NaN constant) and ``nodata("nir")`` (the nodata value of an
  input; NaN when the input has none, as in Remotior);
- ``+ - * / // % **``, unary ``- +``, comparisons (chained too), ``& | ~`` and
  ``and or not`` (all six are logical on truth values: non-zero is true, results are 1 or 0);
- ``where(c, a, b)``; ``sqrt log log10 exp abs sin cos tan arcsin arccos arctan isnan``;
  ``minimum(a, b)``, ``maximum(a, b)``, ``clip(x, lo, hi)`` (numpy's, NaN propagates);
- Remotior's per-pixel aggregations across their arguments, which ignore NaN arguments as
  numpy's ``nan*`` functions do: ``min max sum median mean std`` (``std`` is the population
  standard deviation) and ``percentile(a, b, ..., q)`` with ``q`` in [0, 100] last, linear
  interpolation. Remotior's list form ``max(["a", "b"], axis=0)`` is accepted too.

Limits keep parsing and compiling bounded: the text's length, its nesting depth and its size.
Depth counts nesting the writer made (brackets, function calls, unary operators, operands of
other operators); a run of operators of one precedence level, ``a + b - c + ...``,
``a * b / c``, ``a & b and c`` or ``a | b or c``, is one level however long, and is kept as one
``Chain`` node rather than as a nest of binary nodes. Size counts inputs, numbers, operators and
calls.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from numba.core.compiler_lock import global_compiler_lock

MAX_TEXT_LENGTH: Final = 10_000
MAX_DEPTH: Final = 64
MAX_NODES: Final = 2_000
MAX_EXPONENT: Final = 1024.0
MAX_ARGUMENTS: Final = 64

UNARY_FUNCTIONS: Final = frozenset(
    {
        "sqrt",
        "log",
        "log10",
        "exp",
        "abs",
        "sin",
        "cos",
        "tan",
        "arcsin",
        "arccos",
        "arctan",
        "isnan",
    }
)
BINARY_FUNCTIONS: Final = frozenset({"minimum", "maximum"})
AGGREGATIONS: Final = frozenset({"min", "max", "sum", "median", "mean", "std", "percentile"})
FUNCTIONS: Final = UNARY_FUNCTIONS | BINARY_FUNCTIONS | AGGREGATIONS | {"clip", "where", "nodata"}
CONSTANTS: Final = {"nan": math.nan}

_BINARY_OPS: Final = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.BitAnd: "and",
    ast.BitOr: "or",
}
# Operators that Python groups left to right at one precedence level; a run of them is a Chain.
CHAIN_GROUPS: Final = (
    frozenset({"+", "-"}),
    frozenset({"*", "/", "//", "%"}),
    frozenset({"and"}),
    frozenset({"or"}),
)
_GROUP_OF: Final = {op: group for group in CHAIN_GROUPS for op in group}
_COMPARE_OPS: Final = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
}
_UNARY_OPS: Final = {ast.USub: "-", ast.UAdd: "+", ast.Invert: "not", ast.Not: "not"}
_BOOL_OPS: Final = {ast.And: "and", ast.Or: "or"}
_OPENERS: Final = "([{"
_CLOSERS: Final = ")]}"


class ExpressionError(ValueError):
    """Raised when band calc text is not a valid, allowed expression.

    ``position`` is the 0-based character offset into the original text; ``line`` and
    ``column`` are 1-based.
    """

    def __init__(self, message: str, text: str, position: int) -> None:
        position = max(0, min(position, len(text)))
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        super().__init__(f"{message} (at line {line}, column {column}, offset {position})")
        self.reason = message
        self.position = position
        self.line = line
        self.column = column


# The tree. Every node is a frozen value; str() gives the canonical text used in cache keys.


@dataclass(frozen=True, slots=True)
class Constant:
    value: float

    def __str__(self) -> str:
        return repr(float(self.value))


@dataclass(frozen=True, slots=True)
class Input:
    """The pixel value of input ``name``; ``index`` is its place in ``Expression.input_names``."""

    name: str
    index: int

    def __str__(self) -> str:
        return f"${self.index}"


@dataclass(frozen=True, slots=True)
class NodataOf:
    """The nodata value of input ``name`` (NaN when it has none), fixed when compiled."""

    name: str

    def __str__(self) -> str:
        return f"nodata({self.name!r})"


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # "-", "+", "not"
    operand: Node

    def __str__(self) -> str:
        return f"({self.op} {self.operand})"


@dataclass(frozen=True, slots=True)
class Binary:
    """``left ** right``, the one binary operator that neither chains nor compares."""

    op: str  # "**"
    left: Node
    right: Node

    def __str__(self) -> str:
        return f"({self.left} {self.op} {self.right})"


@dataclass(frozen=True, slots=True)
class Comparison:
    """``first op1 term1 op2 term2 ...``: 1 where every adjacent pair compares true, else 0.

    Each operand appears once, so a chained comparison costs what its text costs.
    """

    first: Node
    steps: tuple[tuple[str, Node], ...]

    def __str__(self) -> str:
        return "(" + str(self.first) + "".join(f" {op} {term}" for op, term in self.steps) + ")"


@dataclass(frozen=True, slots=True)
class Chain:
    """Operators of one precedence level applied left to right, as Python groups them:
    ``first op1 term1 op2 term2 ...`` is ``((first op1 term1) op2 term2) ...``.

    The operators of a chain all belong to one of ``CHAIN_GROUPS``.
    """

    first: Node
    steps: tuple[tuple[str, Node], ...]

    def __str__(self) -> str:
        return "(" + str(self.first) + "".join(f" {op} {term}" for op, term in self.steps) + ")"


@dataclass(frozen=True, slots=True)
class Call:
    """A function; ``q`` is the percentile of ``percentile`` and ``None`` otherwise."""

    function: str
    args: tuple[Node, ...]
    q: float | None = None

    def __str__(self) -> str:
        args = ", ".join(str(a) for a in self.args)
        q = "" if self.q is None else f"; q={self.q!r}"
        return f"{self.function}({args}{q})"


Node = Constant | Input | NodataOf | Unary | Binary | Comparison | Chain | Call


@dataclass(frozen=True, slots=True)
class Expression:
    """A parsed expression.

    ``input_names``: the inputs whose pixels it reads, in the order the caller listed them;
    ``nodata_names``: the inputs whose nodata value it reads through ``nodata("name")``;
    ``canonical``: a text that is equal for equal trees (inputs by position, not by name).
    """

    text: str
    root: Node
    input_names: tuple[str, ...]
    nodata_names: tuple[str, ...]
    canonical: str

    def __str__(self) -> str:
        return self.text


# CPython 3.11 keeps the depth of its AST conversion in state shared by all threads: two
# threads converting at once can fail with "SystemError: AST constructor recursion depth
# mismatch" (python/cpython#106905). numba parses source with `ast` while it compiles, under
# its compiler lock; the parser takes the same lock, so one AST is converted at a time.
_AST_LOCK = global_compiler_lock


def parse_expression(text: str, input_names: Sequence[str]) -> Expression:
    """Parse band calc ``text`` over the inputs ``input_names``.

    Raises ExpressionError (a ValueError) with the position of the first problem found.
    """
    if not isinstance(text, str):
        raise TypeError(f"expression must be a str, got {type(text).__name__}")
    names = tuple(input_names)
    if len(set(names)) != len(names):
        raise ValueError(f"input names must be unique, got {list(names)!r}")
    if len(text) > MAX_TEXT_LENGTH:
        raise ExpressionError(
            f"expression is {len(text)} characters long; the limit is {MAX_TEXT_LENGTH}",
            text,
            MAX_TEXT_LENGTH,
        )
    _check_bracket_depth(text)
    # eval mode rejects leading indentation; strip it and shift positions back.
    stripped = text.lstrip(" \t\f\r\n")
    shift = len(text) - len(stripped)
    if not stripped.strip():
        raise ExpressionError("expression is empty", text, len(text))
    try:
        with _AST_LOCK:
            tree = ast.parse(stripped, mode="eval")
    except SyntaxError as err:
        raise ExpressionError(
            f"syntax error: {err.msg}", text, shift + _syntax_error_offset(stripped, err)
        ) from None
    except (MemoryError, RecursionError):  # Python's parser recurses once per level
        raise ExpressionError(
            f"expression nests more than {MAX_DEPTH} levels deep "
            f"or has more than {MAX_NODES} terms",
            text,
            shift,
        ) from None
    except ValueError as err:  # e.g. an integer literal of more than 4300 digits
        raise ExpressionError(f"invalid literal: {err}", text, shift) from None
    builder = _Builder(text, stripped, shift, names)
    root = builder.build(tree.body, 1)
    used = tuple(n for n in names if n in builder.used)
    index = {n: i for i, n in enumerate(used)}
    root = _reindex(root, index)
    nodata_names = tuple(n for n in names if n in builder.nodata_used)
    return Expression(
        text=text, root=root, input_names=used, nodata_names=nodata_names, canonical=str(root)
    )


def _check_bracket_depth(text: str) -> None:
    """Refuse deep bracket nesting before the parser sees it (it recurses per level)."""
    depth = 0
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in _OPENERS:
            depth += 1
            if depth > MAX_DEPTH:
                raise ExpressionError(
                    f"expression nests more than {MAX_DEPTH} levels deep", text, i
                )
        elif ch in _CLOSERS:
            depth = max(0, depth - 1)
        i += 1


def _syntax_error_offset(text: str, err: SyntaxError) -> int:
    lineno = err.lineno or 1
    offset = err.offset or 0
    if offset <= 0:  # CPython reports some errors at the end of input with offset 0
        return len(text)
    starts = _line_starts(text)
    if lineno - 1 >= len(starts):
        return len(text)
    return min(starts[lineno - 1] + offset - 1, len(text))


def _line_starts(text: str) -> list[int]:
    starts = [0]
    for m in re.finditer(r"\r\n|\r|\n", text):
        starts.append(m.end())
    return starts


class _Builder:
    """Walks Python's tree against the allow-list and builds ours."""

    def __init__(self, text: str, parsed: str, shift: int, names: tuple[str, ...]) -> None:
        self.text = text
        self.parsed = parsed
        self.shift = shift
        self.names = names
        self.name_set = frozenset(names)
        self.lines = [parsed[s:e] for s, e in _line_spans(parsed)]
        self.starts = _line_starts(parsed)
        self.nodes = 0
        self.used: set[str] = set()
        self.nodata_used: set[str] = set()

    # positions

    def pos(self, node: ast.AST) -> int:
        """Character offset of ``node`` in the original text (ast gives UTF-8 byte columns)."""
        lineno = getattr(node, "lineno", 1)
        col = getattr(node, "col_offset", 0)
        line = self.lines[lineno - 1] if lineno - 1 < len(self.lines) else ""
        chars = len(line.encode("utf-8")[:col].decode("utf-8", errors="ignore"))
        return self.shift + self.starts[lineno - 1] + chars

    def end_pos(self, node: ast.AST) -> int:
        lineno = getattr(node, "end_lineno", None) or 1
        col = getattr(node, "end_col_offset", None) or 0
        line = self.lines[lineno - 1] if lineno - 1 < len(self.lines) else ""
        chars = len(line.encode("utf-8")[:col].decode("utf-8", errors="ignore"))
        return self.shift + self.starts[lineno - 1] + chars

    def operator_pos(self, left: ast.AST, right: ast.AST) -> int:
        """The first character of the operator between two operands (skipping ')' and space)."""
        start, stop = self.end_pos(left), self.pos(right)
        for at in range(start, stop):
            if not self.text[at].isspace() and self.text[at] != ")":
                return at
        return start

    def fail(self, message: str, node: ast.AST) -> ExpressionError:
        return ExpressionError(message, self.text, self.pos(node))

    def available(self) -> str:
        if not self.names:
            return "no inputs are available"
        return "available inputs: " + ", ".join(f'"{n}"' for n in self.names)

    # the walk

    def build(self, node: ast.AST, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise self.fail(f"expression nests more than {MAX_DEPTH} levels deep", node)
        if _chain_operator(node) is not None:
            return self.chain(node, depth)  # type: ignore[arg-type]
        self.count(self.pos(node))
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.BinOp):
            return self.binop(node, depth)
        if isinstance(node, ast.UnaryOp):
            op = _UNARY_OPS.get(type(node.op))
            if op is None:
                raise self.fail(f"operator {_describe(node.op)} is not allowed", node)
            return Unary(op, self.build(node.operand, depth + 1))
        if isinstance(node, ast.Compare):
            return self.compare(node, depth)
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        if isinstance(node, ast.Attribute):  # point at the attribute, not at its owner
            at = self.end_pos(node) - len(node.attr)
            raise ExpressionError("attribute access is not allowed", self.text, at)
        raise self.fail(f"{_describe(node)} is not allowed", node)

    def count(self, position: int) -> None:
        """Count one node (input, number, operator or call) of the expression."""
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ExpressionError(
                f"expression has more than {MAX_NODES} terms "
                "(inputs, numbers, operators and calls)",
                self.text,
                position,
            )

    def chain(self, node: ast.BinOp | ast.BoolOp, depth: int) -> Node:
        """A run of operators of one precedence level: one level of depth, however long.

        Python nests such a run to the left, one node per operator; it is walked down that
        spine in a loop, so that its length costs no recursion.
        """
        group = _GROUP_OF[_chain_operator(node)]  # type: ignore[index]
        pending: list[tuple[str, ast.AST, int]] = []  # (operator, right operand, position)
        spine: ast.AST = node
        while (op := _chain_operator(spine)) is not None and _GROUP_OF[op] is group:
            if isinstance(spine, ast.BoolOp):
                values = spine.values
                for left, right in reversed(list(zip(values, values[1:], strict=False))):
                    pending.append((op, right, self.operator_pos(left, right)))
                spine = values[0]
            else:
                assert isinstance(spine, ast.BinOp)
                pending.append((op, spine.right, self.operator_pos(spine.left, spine.right)))
                spine = spine.left
        first = self.build(spine, depth + 1)
        steps = []
        for op, right, at in reversed(pending):
            self.count(at)
            steps.append((op, self.build(right, depth + 1)))
        return Chain(first, tuple(steps))

    def constant(self, node: ast.Constant) -> Node:
        value = node.value
        if isinstance(value, str):
            if value in self.name_set:
                self.used.add(value)
                return Input(value, -1)
            raise self.fail(f'unknown input "{value}"; {self.available()}', node)
        if isinstance(value, bool):
            return Constant(float(value))
        if isinstance(value, int | float):
            try:
                as_float = float(value)
            except OverflowError:
                raise self.fail("number is too large", node) from None
            if not math.isfinite(as_float):
                raise self.fail("number is too large", node)
            return Constant(as_float)
        raise self.fail(f"{type(value).__name__} literals are not allowed", node)

    def name(self, node: ast.Name) -> Node:
        if node.id in self.name_set:
            self.used.add(node.id)
            return Input(node.id, -1)
        if node.id in CONSTANTS:
            return Constant(CONSTANTS[node.id])
        if node.id in FUNCTIONS:
            raise self.fail(f"function {node.id} must be called", node)
        raise self.fail(f"unknown name {node.id!r}; {self.available()}", node)

    def binop(self, node: ast.BinOp, depth: int) -> Node:
        op = _BINARY_OPS.get(type(node.op))
        if op is None:
            raise ExpressionError(
                f"operator {_describe(node.op)} is not allowed",
                self.text,
                self.operator_pos(node.left, node.right),
            )
        self.check_exponent(node.right)  # every allowed operator but "**" makes a Chain
        return Binary(op, self.build(node.left, depth + 1), self.build(node.right, depth + 1))

    def check_exponent(self, exponent: ast.AST) -> None:
        for sub in ast.walk(exponent):
            if isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Pow):
                raise self.fail("an exponent may not itself contain '**'", sub)
        value = _constant_value(exponent)
        if value is not None and not abs(value) <= MAX_EXPONENT:
            raise self.fail(
                f"exponent {value:g} is too large; the limit is {MAX_EXPONENT:g}", exponent
            )

    def compare(self, node: ast.Compare, depth: int) -> Node:
        first = self.build(node.left, depth + 1)
        steps = []
        previous = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            if type(op) not in _COMPARE_OPS:
                raise ExpressionError(
                    f"comparison {_describe(op)} is not allowed",
                    self.text,
                    self.operator_pos(previous, right),
                )
            steps.append((_COMPARE_OPS[type(op)], self.build(right, depth + 1)))
            previous = right
        return Comparison(first, tuple(steps))

    def call(self, node: ast.Call, depth: int) -> Node:
        if not isinstance(node.func, ast.Name):
            raise self.fail(f"calling {_describe(node.func)} is not allowed", node.func)
        fname = node.func.id
        if fname not in FUNCTIONS:
            allowed = ", ".join(sorted(FUNCTIONS))
            raise self.fail(f"function {fname!r} is not allowed; allowed: {allowed}", node.func)
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.fail("starred arguments are not allowed", arg)
        if fname in AGGREGATIONS:
            return self.aggregation(node, fname, depth)
        if node.keywords:
            raise self.fail(f"{fname} takes no keyword arguments", node.keywords[0])
        if fname == "nodata":
            return self.nodata(node)
        arity = 1 if fname in UNARY_FUNCTIONS else 2 if fname in BINARY_FUNCTIONS else 3
        if len(node.args) != arity:
            raise self.fail(
                f"{fname} takes {arity} argument{'s' if arity > 1 else ''}, got {len(node.args)}",
                node,
            )
        return Call(fname, tuple(self.build(a, depth + 1) for a in node.args))

    def nodata(self, node: ast.Call) -> Node:
        if len(node.args) != 1:
            raise self.fail(f"nodata takes 1 argument, got {len(node.args)}", node)
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            name = arg.value
        elif isinstance(arg, ast.Name):
            name = arg.id
        else:
            raise self.fail("nodata takes the name of an input", arg)
        if name not in self.name_set:
            raise self.fail(f'unknown input "{name}"; {self.available()}', arg)
        self.nodata_used.add(name)
        return NodataOf(name)

    def aggregation(self, node: ast.Call, fname: str, depth: int) -> Node:
        args = list(node.args)
        listed = len(args) >= 1 and isinstance(args[0], ast.List | ast.Tuple)
        for kw in node.keywords:
            # Remotior's expansion of band sets writes ``axis = 0`` after a list.
            if kw.arg != "axis" or not listed or _constant_value(kw.value) != 0:
                raise self.fail(
                    f"{fname} takes no keyword arguments other than axis=0 after a list", kw
                )
        q: float | None = None
        if fname == "percentile":
            if len(args) < 2:
                raise self.fail("percentile takes values and then q, the percentile", node)
            q_node = args.pop()
            q = _constant_value(q_node)
            if q is None or not 0.0 <= q <= 100.0:
                raise self.fail("the percentile q must be a number from 0 to 100", q_node)
        if listed:
            if len(args) != 1:
                raise self.fail(f"{fname} takes one list of values", args[min(1, len(args) - 1)])
            values = list(args[0].elts)  # type: ignore[attr-defined]
            for v in values:
                if isinstance(v, ast.Starred):
                    raise self.fail("starred arguments are not allowed", v)
        else:
            values = args
        if not values:
            raise self.fail(f"{fname} needs at least one value", node)
        if len(values) > MAX_ARGUMENTS:
            raise self.fail(f"{fname} takes at most {MAX_ARGUMENTS} values", values[0])
        return Call(fname, tuple(self.build(v, depth + 1) for v in values), q)


def _chain_operator(node: ast.AST) -> str | None:
    """Our name of the operator of ``node`` when it is one that chains, else None."""
    if isinstance(node, ast.BoolOp):
        return _BOOL_OPS[type(node.op)]
    if isinstance(node, ast.BinOp):
        op = _BINARY_OPS.get(type(node.op))
        return op if op in _GROUP_OF else None
    return None


def _line_spans(text: str) -> list[tuple[int, int]]:
    starts = _line_starts(text)
    ends = [*starts[1:], len(text)]
    return list(zip(starts, ends, strict=True))


def _constant_value(node: ast.AST) -> float | None:
    """The value of a number literal, optionally signed; None for anything else."""
    sign = 1.0
    while isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        if isinstance(node.op, ast.USub):
            sign = -sign
        node = node.operand
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        if isinstance(node.value, bool):
            return sign * float(node.value)
        try:
            return sign * float(node.value)
        except OverflowError:
            return math.inf
    return None


_DESCRIPTIONS: Final = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscript",
    ast.Lambda: "lambda",
    ast.ListComp: "list comprehension",
    ast.SetComp: "set comprehension",
    ast.DictComp: "dict comprehension",
    ast.GeneratorExp: "generator expression",
    ast.JoinedStr: "f-string",
    ast.FormattedValue: "f-string",
    ast.Starred: "starred expression",
    ast.IfExp: "conditional expression (use where(c, a, b))",
    ast.NamedExpr: "assignment expression",
    ast.List: "list outside an aggregation",
    ast.Tuple: "tuple",
    ast.Dict: "dict",
    ast.Set: "set",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "slice",
    ast.keyword: "keyword argument",
    ast.BitXor: "'^'",
    ast.LShift: "'<<'",
    ast.RShift: "'>>'",
    ast.MatMult: "'@'",
    ast.Is: "'is'",
    ast.IsNot: "'is not'",
    ast.In: "'in'",
    ast.NotIn: "'not in'",
}


def _describe(node: ast.AST) -> str:
    return _DESCRIPTIONS.get(type(node), type(node).__name__)


def _reindex(node: Node, index: dict[str, int]) -> Node:
    """Give each Input its place among the used inputs (known only after the walk)."""
    if isinstance(node, Input):
        return Input(node.name, index[node.name])
    if isinstance(node, Unary):
        return Unary(node.op, _reindex(node.operand, index))
    if isinstance(node, Binary):
        return Binary(node.op, _reindex(node.left, index), _reindex(node.right, index))
    if isinstance(node, Chain):
        steps = tuple((op, _reindex(term, index)) for op, term in node.steps)
        return Chain(_reindex(node.first, index), steps)
    if isinstance(node, Comparison):
        steps = tuple((op, _reindex(term, index)) for op, term in node.steps)
        return Comparison(_reindex(node.first, index), steps)
    if isinstance(node, Call):
        return Call(node.function, tuple(_reindex(a, index) for a in node.args), node.q)
    return node
