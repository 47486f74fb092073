"""Reading a ``Retry-After`` header in any form a server sends it, without ever raising."""

from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime
from typing import Literal

_UNIT_SECONDS = {"milliseconds": 0.001, "seconds": 1.0}


def parse_retry_after(
    value: str | None,
    unit: Literal["milliseconds", "seconds"] = "milliseconds",
    *,
    now: float | None = None,
) -> float | None:
    """Seconds to wait according to a ``Retry-After`` value, or None when it says nothing usable.

    A number (integer or decimal) is read in ``unit``; an HTTP date is measured from ``now``
    (wall-clock seconds, default the current time). Negative waits become 0; garbage,
    NaN and infinities give None so the caller falls back to its default.
    """
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
        return max(0.0, number * _UNIT_SECONDS[unit])
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)
