"""Conditions on a pixel value, as reclassification tables write them (``raster > 5``,
``(raster >= 2) & (raster < 4)``): band calc's language over the one name ``raster``, parsed
against its allow-list (``expression``) and never evaluated. This module imports no numba, so
a server checks a table at the door without loading the kernels."""

from __future__ import annotations

import functools
from typing import Final

from .expression import Call, Chain, Comparison, Expression, Unary, parse_expression

# Remotior's name of the pixel value in a condition (configurations.variable_raster_name).
RASTER_NAME: Final = "raster"


def parse_condition(text: str) -> Expression:
    """The condition ``text`` over ``raster``, parsed against band calc's allow-list.

    Raises ExpressionError (a ValueError) where the text is not an allowed expression, and
    ValueError where it does not read ``raster`` or its value is not true or false (it must be
    a comparison, ``isnan``, or such terms joined by ``& | ~ and or not``).
    """
    expression = _parsed(text)
    if RASTER_NAME not in expression.input_names:
        raise ValueError(f"condition {text!r} does not read {RASTER_NAME}")
    if not _is_logical(expression.root):
        raise ValueError(
            f"condition {text!r} is not true or false: use a comparison such as "
            f"{RASTER_NAME} > 5, or comparisons joined by & | ~"
        )
    return expression


@functools.lru_cache(maxsize=1024)
def _parsed(text: str) -> Expression:
    return parse_expression(text, [RASTER_NAME])


def _is_logical(node: object) -> bool:
    if isinstance(node, Comparison):
        return True
    if isinstance(node, Unary):
        return node.op == "not"
    if isinstance(node, Chain):
        return all(op in ("and", "or") for op, _ in node.steps)
    return isinstance(node, Call) and node.function == "isnan"
