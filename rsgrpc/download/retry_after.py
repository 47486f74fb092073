"""Reading a ``Retry-After`` header in any form a server sends it, without ever raising.

HTTP sends whole seconds or a date; many servers send decimal seconds; Sentinel Hub sends
whole milliseconds. With ``unit="auto"`` the form of the value decides where it can:

- an HTTP date is a moment;
- a number with a fractional part is seconds (Sentinel Hub's milliseconds are whole);
- a whole number too large to be seconds (over ``max_seconds``) is milliseconds;
- any other whole number is read in ``integer_unit``: a deployment's hint, milliseconds
  for Sentinel Hub deployments and seconds for plain HTTP ones.

``unit="milliseconds"`` or ``"seconds"`` forces every number into that unit.
"""

from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime
from typing import Final, Literal

RetryAfterUnit = Literal["auto", "milliseconds", "seconds"]
RETRY_AFTER_UNITS: Final = frozenset({"auto", "milliseconds", "seconds"})
_UNIT_SECONDS: Final = {"milliseconds": 0.001, "seconds": 1.0}


def parse_retry_after(
    value: str | None,
    unit: RetryAfterUnit = "auto",
    *,
    now: float | None = None,
    integer_unit: Literal["milliseconds", "seconds"] = "milliseconds",
    max_seconds: float = 600.0,
) -> float | None:
    """Seconds to wait according to a ``Retry-After`` value, or None when it says nothing usable.

    A number is read in ``unit`` (see the module for ``"auto"``); an HTTP date is measured
    from ``now`` (wall-clock seconds, default the current time). Negative waits become 0;
    garbage, NaN and infinities give None so the caller falls back to its default.
    """
    if unit not in RETRY_AFTER_UNITS:
        raise ValueError(f"unsupported Retry-After unit, got {unit!r}")
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number):
            return None
        if unit == "auto":
            unit = _unit_of(number, integer_unit, max_seconds)
        return max(0.0, number * _UNIT_SECONDS[unit])
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)


def _unit_of(
    number: float,
    integer_unit: Literal["milliseconds", "seconds"],
    max_seconds: float,
) -> Literal["milliseconds", "seconds"]:
    if not number.is_integer():
        return "seconds"
    if number > max_seconds:
        return "milliseconds"
    return integer_unit
