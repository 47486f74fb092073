"""Combinations of values across integer bands: the distinct combinations of a tile with
their pixel counts, merged over tiles, and each pixel's code in the merged table.

A combination is ranked by folding the bands in, one at a time: the rank of a pixel's
combination of the first bands so far and its next band's value make one int64 key,
whose rank among the distinct keys is the rank of the longer combination. Ranks keep
the order of the combinations (the first band's value first, as `np.unique(..., axis=0)`
orders rows), and no key can overflow: a rank is below the pixels (or rows) counted, a
value's offset below 2**32, and a band too wide beside its ranks is ranked by its
distinct values instead. Keys in a narrow range are ranked in a lookup table (linear in
the pixels), wider ones by sorting.

NumPy only, nothing to compile; counts are int64 and merging is exact, so any tiling
gives the table of one pass over the whole bands, and the same codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rsgrpc_kernels.value_counts import valid_mask

# Keys spanning at most this many (or four times as many as the keys) are ranked in a
# lookup table: 65,536 int64 ranks are 512 KiB.
_MAX_LOOKUP = 1 << 16
# Rank times offset stays below this, well within int64.
_MAX_KEY = 1 << 62
_CHANGED = "the bands hold a combination that their table does not: were they replaced?"


@dataclass(frozen=True)
class FoldStep:
    """How one band is folded into the ranks of the bands before it: its value's offset
    from `low` (or, with `values`, its rank among them) below `span`, and the distinct
    keys of the combinations so far in increasing order (`present`), with their ranks
    in a `lookup` table of every key below its length where it is narrow."""

    low: int
    span: int
    values: np.ndarray | None
    present: np.ndarray
    lookup: np.ndarray | None

    def keys(self, ranks: np.ndarray, column: np.ndarray, *, known: bool = True) -> np.ndarray:
        """The keys of combinations of `ranks` and a band's `column`; with `known` False,
        a value the step was not made with is a RuntimeError."""
        if self.values is None:
            offsets = column - self.low
            unknown = not known and bool(((offsets < 0) | (offsets >= self.span)).any())
        else:
            offsets = np.searchsorted(self.values, column).astype(np.int64)
            unknown = not known and not np.array_equal(
                self.values[np.minimum(offsets, self.span - 1)], column
            )
        if unknown:
            raise RuntimeError(_CHANGED)
        return ranks * self.span + offsets

    def ranks(self, keys: np.ndarray) -> np.ndarray:
        """The ranks of keys that are all in `present`."""
        if self.lookup is not None:
            return self.lookup[keys]
        return np.searchsorted(self.present, keys)


def _fold_step(ranks: np.ndarray, distinct: int, column: np.ndarray) -> tuple[FoldStep, np.ndarray]:
    """Fold `column` into `ranks` (of `distinct` combinations): the step and the new ranks."""
    low, high = int(column.min()), int(column.max())
    span, values = high - low + 1, None
    if distinct * span > _MAX_KEY:
        values = np.unique(column)
        span = len(values)
    step = FoldStep(low, span, values, np.empty(0, np.int64), None)
    keys = step.keys(ranks, column)
    size = distinct * span
    if size <= max(_MAX_LOOKUP, 4 * keys.size):
        seen = np.zeros(size, bool)
        seen[keys] = True
        present = np.flatnonzero(seen).astype(np.int64)
        lookup = np.cumsum(seen, dtype=np.int64) - 1
        new_ranks = lookup[keys]
    else:
        present, new_ranks = np.unique(keys, return_inverse=True)
        lookup = None
    step = FoldStep(low, span, values, present, lookup)
    return step, new_ranks.astype(np.int64, copy=False).reshape(-1)


def _fold(columns: Sequence[np.ndarray]) -> tuple[list[FoldStep], np.ndarray, np.ndarray]:
    """The fold of equally long int64 `columns` (at least one value each): its steps, the
    distinct combinations in increasing order as rows, and each value's row."""
    ranks = np.zeros(len(columns[0]), np.int64)
    rows = np.zeros((1, 0), np.int64)
    steps = []
    for column in columns:
        step, ranks = _fold_step(ranks, len(rows), column)
        steps.append(step)
        before, offsets = np.divmod(step.present, step.span)
        if step.values is None:
            values = offsets + step.low
        else:
            values = step.values[offsets].astype(np.int64)
        rows = np.column_stack((rows[before], values))
    return steps, rows, ranks


def _columns(
    blocks: Sequence[np.ndarray], nodatas: Sequence[float | None], nodata_value: float | None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The pixels that are valid in every band (none of its nodata nor `nodata_value`),
    and each band's values there as int64."""
    valid = np.ones(blocks[0].shape, bool)
    for block, nodata in zip(blocks, nodatas, strict=True):
        valid &= valid_mask(block, (nodata, nodata_value))
    return valid, [block[valid].astype(np.int64) for block in blocks]


def combination_counts(
    blocks: Sequence[np.ndarray],
    nodatas: Sequence[float | None],
    nodata_value: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct combinations of the valid pixels of `blocks` (integer bands of one
    shape), in increasing order, as rows of int64 values (a column per band), and the
    pixels (int64) that hold each.

    Notes: besides the blocks, memory grows with a mask, an int64 copy of each band's
    valid values, and the keys, ranks and lookup (or sorted copy) of one fold step.
    """
    valid, columns = _columns(blocks, nodatas, nodata_value)
    if not columns[0].size:
        return np.empty((0, len(blocks)), np.int64), np.empty(0, np.int64)
    counted = _counted_directly(columns)
    if counted is not None:
        return counted
    _, rows, ranks = _fold(columns)
    return rows, np.bincount(ranks, minlength=len(rows)).astype(np.int64)


def _counted_directly(columns: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """`combination_counts` of bands whose value ranges span few combinations in all
    (as a fold step's lookup table may): each pixel's combination as one number, its
    bands' offsets in mixed radix (the first band's the most significant, so numbers
    follow the order of rows), counted in one `bincount`. None where they span more."""
    lows = [int(column.min()) for column in columns]
    spans = [int(column.max()) - low + 1 for column, low in zip(columns, lows, strict=True)]
    size = 1
    for span in spans:
        size *= span
        if size > max(_MAX_LOOKUP, 4 * columns[0].size):
            return None
    keys = columns[0] - lows[0]
    for column, low, span in zip(columns[1:], lows[1:], spans[1:], strict=True):
        keys *= span
        keys += column - low
    counts = np.bincount(keys, minlength=size)
    present = np.flatnonzero(counts)
    rows = np.column_stack(np.unravel_index(present, spans)).astype(np.int64) + lows
    return rows, counts[present].astype(np.int64)


def merge_combination_counts(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Tables of `combination_counts` merged into one: every combination once, in
    increasing order, its counts summed exactly."""
    rows = np.concatenate([r for r, _ in parts])
    counts = np.concatenate([c for _, c in parts])
    if not rows.size:
        return rows, counts
    _, merged, ranks = _fold(list(rows.T))
    sums = np.zeros(len(merged), np.int64)
    np.add.at(sums, ranks, counts)
    return merged, sums


@dataclass(frozen=True)
class DirectCodes:
    """A narrow table's codes by each combination's mixed-radix number (see
    `_counted_directly`): the bands' lowest values and spans, and the code (row plus
    one; 0 for a combination not in the table) of every number below their product."""

    lows: tuple[int, ...]
    spans: tuple[int, ...]
    codes: np.ndarray  # int64


@dataclass(frozen=True)
class CombinationIndex:
    """The merged table's combinations, as the workers find a pixel's: the table's fold
    steps (`FoldStep`), and where its values span few combinations, their codes by
    number (`DirectCodes`); a combination's rank is its row in the table."""

    steps: tuple[FoldStep, ...]
    rows: int
    direct: DirectCodes | None = None


def combination_index(rows: np.ndarray) -> CombinationIndex:
    """The index of a table's combinations (distinct rows in increasing order)."""
    if not len(rows):
        return CombinationIndex((), 0)
    steps, _, _ = _fold(list(rows.T))
    lows = rows.min(axis=0)
    spans = rows.max(axis=0) - lows + 1
    direct = None
    if np.prod(spans.astype(np.float64)) <= _MAX_LOOKUP:
        codes = np.zeros(int(np.prod(spans)), np.int64)
        codes[np.ravel_multi_index(tuple((rows - lows).T), tuple(spans))] = np.arange(
            1, len(rows) + 1
        )
        direct = DirectCodes(tuple(lows.tolist()), tuple(spans.tolist()), codes)
    return CombinationIndex(tuple(steps), len(rows), direct)


def _direct_codes(columns: Sequence[np.ndarray], direct: DirectCodes) -> np.ndarray:
    """The codes of valid pixels' `columns` by `direct`; a combination outside the
    table is a RuntimeError."""
    keys = np.zeros(len(columns[0]), np.int64)
    for column, low, span in zip(columns, direct.lows, direct.spans, strict=True):
        offsets = column - low
        if offsets.size and (int(offsets.min()) < 0 or int(offsets.max()) >= span):
            raise RuntimeError(_CHANGED)
        keys *= span
        keys += offsets
    codes = direct.codes[keys]
    if not codes.all():
        raise RuntimeError(_CHANGED)
    return codes


def combination_codes(
    blocks: Sequence[np.ndarray],
    nodatas: Sequence[float | None],
    nodata_value: float | None,
    index: CombinationIndex,
    out_nodata: int,
    out_dtype: str = "int32",
) -> np.ndarray:
    """Each pixel's code, its combination's row in the table plus one; `out_nodata`
    where any band is nodata. Every valid combination must be in the table: one that is
    not (the bands changed since the table was made) is a RuntimeError.
    """
    valid, columns = _columns(blocks, nodatas, nodata_value)
    out = np.full(blocks[0].shape, out_nodata, out_dtype)
    if not columns[0].size:
        return out
    if not index.rows:
        raise RuntimeError(_CHANGED)
    if index.direct is not None:
        out[valid] = _direct_codes(columns, index.direct)
        return out
    ranks = np.zeros(len(columns[0]), np.int64)
    for step, column in zip(index.steps, columns, strict=True):
        keys = step.keys(ranks, column, known=False)
        ranks = step.ranks(keys)
        if not np.array_equal(step.present[np.minimum(ranks, len(step.present) - 1)], keys):
            raise RuntimeError(_CHANGED)
    out[valid] = ranks + 1
    return out
