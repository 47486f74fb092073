"""Raster reclassification, declared: new values for the pixels that a table's rules select,
by value or by a condition on the pixel value (Remotior's `raster_reclassification`,
`rsgrpc_kernels.reclassify`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from rsgrpc.tools import spec
from rsgrpc.tools.neighbor_pixels import _TYPE_NODATA as TYPE_NODATA
from rsgrpc.v1 import raster_pb2

# What the kernel takes (its RECLASSIFY_DTYPES; a test keeps the two equal).
RECLASSIFY_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
MAX_RULES = 100_000
# Each condition is one pass of a block program over every tile.
MAX_CONDITIONS = 256
# Remotior's words for nodata in a table (any case).
NODATA_WORDS = ("nan", "null")
# Remotior's field names, accepted as a CSV table's first line.
HEADER = ("old_value", "new_value")
# Where Remotior widens the input's type (UInt16, UInt32) when a new value is negative.
_WIDENED_FOR_NEGATIVE = {"uint16": "int32", "uint32": "int32"}

# A rule: (old, new); old is a number, None for nodata pixels or a condition's text.
Rule = tuple[float | str | None, float]


@dataclass(frozen=True)
class ReclassificationParameters:
    """A reclassification table, checked: its rules in order (the last that selects a pixel
    wins), and the output data type (None: the input's, widened as Remotior widens it)."""

    rules: tuple[Rule, ...]
    output_dtype: str | None

    @property
    def makes_nodata(self) -> bool:
        return any(math.isnan(new) for _, new in self.rules)

    def output_dtype_for(self, dtype: np.dtype) -> str:
        """The output's type for an input of `dtype`."""
        if self.output_dtype is not None:
            return self.output_dtype
        if any(new < 0 for _, new in self.rules):
            return _WIDENED_FOR_NEGATIVE.get(dtype.name, dtype.name)
        return dtype.name


def parse_value(text: str, what: str, field: str) -> float:
    """A number of a table, or NaN for Remotior's `nan` and `null`."""
    stripped = text.strip()
    if stripped.lower() in NODATA_WORDS:
        return math.nan
    try:
        return float(stripped)
    except ValueError:
        raise spec.ParameterError(
            f"{what} {stripped[:40]!r} is not a number, nan or null", metadata={"field": field}
        ) from None


def parse_old(text: str) -> float | str | None:
    """A table's old value: None (nodata pixels) for `nan` and `null`, a number, or the text
    of a condition (checked with the table)."""
    stripped = text.strip()
    if stripped.lower() in NODATA_WORDS:
        return None
    try:
        return float(stripped)
    except ValueError:
        return stripped


def parse_table(text: str, separator: str, field: str = "table_path") -> tuple[Rule, ...]:
    """The rules of a CSV table: one a line, `old{separator}new`, split at the line's last
    separator (a condition may hold the separator); empty lines and a first line of
    Remotior's field names are skipped. Read as text, never evaluated."""
    rules = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        old, found, new = line.rpartition(separator)
        if not found:
            raise spec.ParameterError(
                f"{field} line {number} has no {separator!r} between its old and new value",
                metadata={"field": field},
            )
        if not rules and (old.strip().lower(), new.strip().lower()) == HEADER:
            continue
        if len(rules) == MAX_RULES:
            raise spec.ParameterError(
                f"{field} holds more than {MAX_RULES} rules", metadata={"field": field}
            )
        new_value = parse_value(new, f"{field} line {number}: new value", field)
        rules.append((parse_old(old), new_value))
    return tuple(rules)


def _rule_of_message(rule: raster_pb2.ReclassificationRule, number: int) -> Rule:
    which = rule.WhichOneof("old")
    if which is None:
        raise spec.ParameterError(
            f"rule {number} has neither an old_value nor a condition", metadata={"field": "rules"}
        )
    if which == "old_value":
        old = None if math.isnan(rule.old_value) else rule.old_value
    else:
        old = rule.condition
    return old, rule.new_value


def check_rules(rules: tuple[Rule, ...], field: str) -> tuple[Rule, ...]:
    """`rules`, or ParameterError naming the first rule that cannot run: a condition that
    is not an allowed, true-or-false expression over `raster`, an infinite new value, too
    many rules or conditions."""
    from rsgrpc_kernels.condition import parse_condition
    from rsgrpc_kernels.expression import ExpressionError

    metadata = {"field": field}
    if not rules:
        raise spec.ParameterError(
            "the reclassification table is empty: give rules or a table_path", metadata=metadata
        )
    if len(rules) > MAX_RULES:
        raise spec.ParameterError(f"{field} holds more than {MAX_RULES} rules", metadata=metadata)
    conditions = 0
    for number, (old, new) in enumerate(rules, 1):
        if math.isinf(new):
            raise spec.ParameterError(
                f"rule {number}: new value {new} is not a pixel value", metadata=metadata
            )
        if not isinstance(old, str):
            continue
        conditions += 1
        if conditions > MAX_CONDITIONS:
            raise spec.ParameterError(
                f"{field} holds more than {MAX_CONDITIONS} conditions", metadata=metadata
            )
        try:
            parse_condition(old)
        except ExpressionError as error:
            raise spec.ParameterError(
                f"rule {number}: condition {old[:80]!r}: {error}", metadata=metadata
            ) from None
        except ValueError as error:
            raise spec.ParameterError(f"rule {number}: {error}", metadata=metadata) from None
    return rules


def _parameters(message: raster_pb2.ReclassifyParameters, read_text: spec.ReadText):
    if message.rules and message.table_path:
        raise spec.ParameterError(
            "give rules or a table_path, not both", metadata={"field": "table_path"}
        )
    if message.table_path:
        text = read_text(message.table_path, "table path")
        rules = check_rules(parse_table(text, message.separator or ","), "table_path")
    else:
        rules = check_rules(
            tuple(_rule_of_message(r, n) for n, r in enumerate(message.rules, 1)), "rules"
        )
    if message.output_data_type not in spec.DTYPES_OF_MESSAGES and message.output_data_type:
        raise spec.ParameterError(
            f"unknown output_data_type {message.output_data_type}",
            metadata={"field": "output_data_type"},
        )
    return ReclassificationParameters(
        rules=rules, output_dtype=spec.DTYPES_OF_MESSAGES.get(message.output_data_type)
    )


def _memory(
    p: ReclassificationParameters, dtype: np.dtype, out_dtype: np.dtype
) -> tuple[float, float]:
    """A worker holds the block, the winning rule of the conditions (int32), the value
    (float64), a condition's block-program output and mask, and the output with its
    encoding; the encoded tile waits in the job."""
    return dtype.itemsize + 4 + 8 + 2 + 2 * out_dtype.itemsize, out_dtype.itemsize


def _check_band(p: ReclassificationParameters, dtype: np.dtype, nodata: float | None, where: str):
    spec.check_pixel_type(dtype, nodata, where, "iuf")
    if dtype.name not in RECLASSIFY_DTYPES:
        raise spec.ParameterError(
            f"{where} is {dtype.name}; reclassification takes {', '.join(RECLASSIFY_DTYPES)}"
        )
    # An old value no pixel can hold would be dropped without a word: say so instead.
    strangers = [
        old
        for old, _ in p.rules
        if isinstance(old, float) and not (spec.is_value_of(old, dtype.name))
    ]
    if strangers:
        raise spec.ParameterError(
            f"old value {strangers[0]:g} is not a value of {where}, which is {dtype.name}",
            metadata={"field": "rules"},
        )
    if nodata is not None and any(old == nodata for old, _ in p.rules):
        raise spec.ParameterError(
            f"old value {nodata:g} is the nodata value of {where}; nan selects nodata pixels",
            metadata={"field": "rules"},
        )
    out = p.output_dtype_for(dtype)
    misfits = [new for _, new in p.rules if not math.isnan(new) and not spec.is_value_of(new, out)]
    if misfits:
        hint = "" if p.output_dtype else "; set output_data_type to a type that holds it"
        raise spec.ParameterError(
            f"new value {misfits[0]:g} is not a value of the output type {out} of {where}{hint}",
            metadata={"field": "rules"},
        )


def _output(p: ReclassificationParameters, dtype: np.dtype, nodata: float | None):
    """The output's type; the input's nodata where that type holds it, else the type's
    Remotior nodata (NaN in floats); none for an input without nodata whose output needs
    none (no rule makes nodata, and the type holds every value of the input's)."""
    out = p.output_dtype_for(dtype)
    if nodata is not None and not math.isnan(nodata) and spec.is_value_of(nodata, out):
        return out, nodata
    if nodata is None and not p.makes_nodata and np.can_cast(dtype, out, "safe"):
        return out, None
    return out, TYPE_NODATA.get(out, math.nan)


def reclassify_block(
    block: np.ndarray,
    p: ReclassificationParameters,
    interior: spec.Interior,
    nodata: float | None,
    out_dtype: str,
    out_nodata: float | None,
) -> np.ndarray:
    """Runs in a worker: the tile's pixels reclassified."""
    from rsgrpc_kernels import reclassify

    return reclassify.reclassify(
        block,
        p.rules,
        nodata=nodata,
        out_dtype=out_dtype,
        out_nodata=out_nodata,
        interior=interior,
    )


def _describe(p: ReclassificationParameters) -> str:
    conditions = sum(isinstance(old, str) for old, _ in p.rules)
    return (
        f"{len(p.rules)} rule(s), {conditions} of them condition(s), "
        f"into {p.output_dtype or 'the input type'}"
    )


def _table_value(value: Any, what: str) -> float:
    if isinstance(value, str):
        return parse_value(value, what, "reclassification_table")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise spec.ParameterError(f"{what} {value!r} is not a number, nan or null") from None


def _table_rows(table: Any) -> list[tuple[Any, Any]]:
    """Remotior's table: [old, new] rows, or a structured array of its fields."""
    names = getattr(getattr(table, "dtype", None), "names", None)
    if names and set(HEADER) <= set(names):
        return [(row[HEADER[0]], row[HEADER[1]]) for row in np.atleast_1d(table)]
    rows = []
    for number, row in enumerate(table, 1):
        if isinstance(row, str) or len(row) != 2:
            raise spec.ParameterError(
                f"reclassification_table row {number} is {row!r}; each row is [old, new]"
            )
        rows.append((row[0], row[1]))
    return rows


def request_parameters(arguments: dict[str, Any]) -> raster_pb2.ReclassifyParameters:
    """Remotior's reclassification_table ([old, new] rows: old a number, `nan`/`null` for
    nodata, or a condition on `raster`; new a number or `nan`/`null`), else csv_path (a CSV
    file under the data roots) with its separator; and output_data_type (None: the
    input's)."""
    message = raster_pb2.ReclassifyParameters()
    table = arguments["reclassification_table"]
    if table is not None:
        for number, (old, new) in enumerate(_table_rows(table), 1):
            rule = raster_pb2.ReclassificationRule(
                new_value=_table_value(new, f"reclassification_table row {number}: new value")
            )
            parsed = parse_old(old) if isinstance(old, str) else _table_value(old, "old value")
            if isinstance(parsed, str):
                rule.condition = parsed
            else:
                rule.old_value = math.nan if parsed is None else parsed
            message.rules.append(rule)
    elif arguments["csv_path"] is not None:
        message.table_path = os.fspath(arguments["csv_path"])
        message.separator = arguments["separator"] or ","
    else:
        raise spec.ParameterError("give a reclassification_table or a csv_path")
    if arguments["output_data_type"] is not None:
        message.output_data_type = spec.data_type(arguments["output_data_type"])
    return message


def cli_rule(text: str) -> list[str]:
    """A command's --rule OLD=NEW, split at its last `=` (a condition may hold `==`)."""
    old, found, new = text.rpartition("=")
    if not found:
        raise ValueError(f"{text!r} is not OLD=NEW")
    return [old, new]


RECLASSIFICATION = spec.RasterTool[ReclassificationParameters](
    name="raster_reclassification",
    rpc="Reclassify",
    command="reclassify",
    summary="new values for the pixels that each --rule OLD=NEW or a --table selects",
    request_type=raster_pb2.ReclassifyRequest,
    response_type=raster_pb2.ReclassifyResponse,
    output_type=raster_pb2.ReclassifyOutput,
    parameters=_parameters,
    halo=lambda p: 0,
    memory=_memory,
    check_band=_check_band,
    output=_output,
    kernel=reclassify_block,
    describe=_describe,
    request_parameters=request_parameters,
    warm=("reclassify",),
    raster_path_input=True,
    cli_flags=(
        spec.CliFlag(
            "--rule",
            "reclassification_table",
            {
                "action": "append",
                "type": cli_rule,
                "metavar": "OLD=NEW",
                "help": "a rule: OLD a value, nan, or a condition such as 'raster > 5'; "
                "NEW a value or nan; repeat in order (the last rule that selects a pixel wins)",
            },
        ),
        spec.CliFlag("--table", "csv_path", {"help": "a CSV table of old,new under the data root"}),
        spec.CliFlag("--separator", "separator", {"default": ",", "help": "--table's separator"}),
        spec.CliFlag(
            "--dtype", "output_data_type", {"help": "output data type (default: the input's)"}
        ),
    ),
)
