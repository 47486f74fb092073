"""Statistics of a value band per zone of a zone band: per tile, and merged over tiles.

NumPy and the standard library only, nothing to compile. A tile's partial holds, per
zone, its pixel count, its sum as two float64 (the exact sum rounded once, and the
rounded rest), its minimum, maximum, mean and sum of squared deviations from that mean;
and, when order statistics are wanted, every distinct (zone, value) with its pixel
count. Merging adds counts exactly, sums exactly to within 2**-100 of the sum (exactly
for integer bands), and squared deviations by the parallel algorithm of Chan, Golub and
LeVeque, so any tiling gives the statistics of one pass over the whole bands; the
median and percentiles come from the merged counts of each value, exactly as NumPy's
`median` and `percentile` (linear method) give them on a zone's values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .value_counts import valid_mask


class ZonalPartial(NamedTuple):
    """Statistics of the valid pixels of part of the bands, per zone (increasing, in the
    zone band's type); ``pair_*`` list each distinct (zone, value), by zone then value,
    with its pixel count, and are empty when order statistics are not wanted."""

    zones: np.ndarray
    counts: np.ndarray  # int64
    sum_high: np.ndarray  # float64: the sum, rounded once
    sum_low: np.ndarray  # float64: the sum's rest, rounded
    minimum: np.ndarray  # float64
    maximum: np.ndarray  # float64
    mean: np.ndarray  # float64: the centre of `m2`
    m2: np.ndarray  # float64: sum of squared deviations from `mean`
    pair_zones: np.ndarray
    pair_values: np.ndarray  # float64
    pair_counts: np.ndarray  # int64


def _empty(zone_dtype: np.dtype) -> ZonalPartial:
    f = np.empty(0, np.float64)
    i = np.empty(0, np.int64)
    z = np.empty(0, zone_dtype)
    return ZonalPartial(z, i, f, f, f, f, f, f, z, f, i)


def _group_starts(*keys: np.ndarray) -> np.ndarray:
    """Where each run of equal keys begins in sorted `keys`."""
    size = keys[0].size
    change = np.zeros(size, bool)
    if size:
        change[0] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(change)


def _exact_sums(
    values: np.ndarray, starts: np.ndarray, ends: np.ndarray, integers: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The sum of each run of `values` as (high, low): high the exact sum rounded once,
    low what remains of it, rounded. `integers`, the same values as int64 where they
    are integers of at most 32 bits, are summed exactly in int64."""
    if integers is not None:
        exact = np.add.reduceat(integers, starts)
        high = exact.astype(np.float64)
        return high, (exact - high.astype(np.int64)).astype(np.float64)
    high = np.empty(starts.size, np.float64)
    low = np.empty(starts.size, np.float64)
    for i, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        run = values[start:end].tolist()
        high[i] = math.fsum(run)
        run.append(-high[i])
        low[i] = math.fsum(run)
    return high, low


def zonal_partial(
    zones: np.ndarray,
    values: np.ndarray,
    nodata: tuple[float | None, float | None] = (None, None),
    *,
    order_statistics: bool = False,
) -> ZonalPartial:
    """The partial statistics of a tile: `zones` and `values` of one shape, a pixel
    counted where neither is NaN nor its band's `nodata` (zone's, value's). Values are
    taken as float64 (-0.0 as 0.0); with `order_statistics`, each distinct (zone, value)
    is counted too.

    Notes: besides the blocks, memory grows with two masks, the valid zones and their
    float64 values, their int64 sort order and sorted copies, the squared deviations,
    and for float values a Python list of a zone's values while it is summed.
    """
    valid = valid_mask(zones, (nodata[0],))
    valid &= valid_mask(values, (nodata[1],))
    z = zones[valid]
    if z.size == 0:
        return _empty(zones.dtype)
    if z.dtype.kind == "f":
        z = z + z.dtype.type(0)  # -0.0 as 0.0
    raw = values[valid]
    if all(a.dtype.kind in "iu" and a.dtype.itemsize <= 4 for a in (z, raw)):
        histogram = _histogram_partial(z, raw, order_statistics)
        if histogram is not None:
            return histogram
    v = raw.astype(np.float64) + 0.0
    # Values in order within each zone only where order statistics need them.
    order = np.lexsort((v, z)) if order_statistics else np.argsort(z, kind="stable")
    z, v = z[order], v[order]
    starts = _group_starts(z)
    ends = np.r_[starts[1:], z.size]
    counts = (ends - starts).astype(np.int64)
    integers = None
    if raw.dtype.kind in "iu" and raw.dtype.itemsize <= 4:
        integers = raw[order].astype(np.int64)
    high, low = _exact_sums(v, starts, ends, integers)
    mean = high / counts
    deviations = v - np.repeat(mean, counts)
    m2 = np.add.reduceat(deviations * deviations, starts)
    if order_statistics:
        pairs = _group_starts(z, v)
        pair_counts = np.diff(np.r_[pairs, z.size]).astype(np.int64)
        pair_zones, pair_values = z[pairs], v[pairs]
    else:
        pair_zones, pair_values = z[:0], v[:0]
        pair_counts = np.empty(0, np.int64)
    minimum, maximum = np.minimum.reduceat(v, starts), np.maximum.reduceat(v, starts)
    return ZonalPartial(
        z[starts], counts, high, low, minimum, maximum, mean, m2,
        pair_zones, pair_values, pair_counts,
    )  # fmt: skip


def _histogram_partial(
    z: np.ndarray, raw: np.ndarray, order_statistics: bool
) -> ZonalPartial | None:
    """`zonal_partial` of integer zones and integer values of at most 32 bits, from the
    count of each (zone, value) instead of sorting: one pass, where a tile's zones and
    values span few enough pairs (no more bins than pixels, so no more memory than
    sorting takes). None where they span more."""
    z_low, z_high = int(z.min()), int(z.max())
    v_low, v_high = int(raw.min()), int(raw.max())
    z_span, v_span = z_high - z_low + 1, v_high - v_low + 1
    if z_span * v_span > z.size:
        return None
    key = (z.astype(np.int64) - z_low) * v_span + (raw.astype(np.int64) - v_low)
    bins = np.bincount(key, minlength=z_span * v_span).reshape(z_span, v_span)
    counts = bins.sum(axis=1)
    present = np.flatnonzero(counts)
    bins, counts = bins[present], counts[present]
    offsets = np.arange(v_span, dtype=np.int64)
    # Exact: at most 2**32 times a tile's pixels.
    exact = bins @ offsets + counts * v_low
    high = exact.astype(np.float64)
    low = (exact - high.astype(np.int64)).astype(np.float64)
    mean = high / counts
    values = offsets.astype(np.float64) + v_low
    deviations = values[np.newaxis, :] - mean[:, np.newaxis]
    m2 = (bins * (deviations * deviations)).sum(axis=1)
    seen = bins > 0
    minimum = values[seen.argmax(axis=1)]
    maximum = values[v_span - 1 - seen[:, ::-1].argmax(axis=1)]
    zones = (present + z_low).astype(z.dtype)
    if order_statistics:
        rows, columns = np.nonzero(seen)
        pair_zones, pair_values, pair_counts = zones[rows], values[columns], bins[rows, columns]
    else:
        pair_zones, pair_values = zones[:0], values[:0]
        pair_counts = np.empty(0, np.int64)
    return ZonalPartial(
        zones, counts.astype(np.int64), high, low, minimum, maximum, mean, m2,
        pair_zones, pair_values, pair_counts.astype(np.int64),
    )  # fmt: skip


def merge_zonal_partials(parts: Sequence[ZonalPartial]) -> ZonalPartial:
    """Partials of `zonal_partial` merged into one: every zone once, in increasing
    order, with the statistics of all its pixels, and every (zone, value) once."""
    if not parts:
        return _empty(np.dtype(np.float64))
    zones = np.concatenate([p.zones for p in parts])
    order = np.argsort(zones, kind="stable")
    zones = zones[order]
    if zones.size == 0:
        return _empty(zones.dtype)

    def column(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])[order]

    counts, mean_parts, m2_parts = column("counts"), column("mean"), column("m2")
    high_parts, low_parts = column("sum_high"), column("sum_low")
    starts = _group_starts(zones)
    if starts.size == zones.size:  # each zone in one part: nothing to merge
        high, low = high_parts, low_parts
        total, mean, m2 = counts, mean_parts, m2_parts
    else:
        ends = np.r_[starts[1:], zones.size]
        high = np.empty(starts.size, np.float64)
        low = np.empty(starts.size, np.float64)
        highs, lows = high_parts.tolist(), low_parts.tolist()
        for i, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            run = highs[start:end] + lows[start:end]
            high[i] = math.fsum(run)
            run.append(-high[i])
            low[i] = math.fsum(run)
        total = np.add.reduceat(counts, starts)
        mean = high / total
        # Chan et al.: each part's squared deviations, moved to the merged mean.
        shift = mean_parts - np.repeat(mean, np.diff(np.r_[starts, zones.size]))
        m2 = np.add.reduceat(m2_parts + counts * (shift * shift), starts)
    minimum = np.minimum.reduceat(column("minimum"), starts)
    maximum = np.maximum.reduceat(column("maximum"), starts)
    pair_zones = np.concatenate([p.pair_zones for p in parts])
    pair_values = np.concatenate([p.pair_values for p in parts])
    pair_counts = np.concatenate([p.pair_counts for p in parts])
    if pair_zones.size:
        pair_order = np.lexsort((pair_values, pair_zones))
        pair_zones, pair_values = pair_zones[pair_order], pair_values[pair_order]
        pairs = _group_starts(pair_zones, pair_values)
        pair_counts = np.add.reduceat(pair_counts[pair_order], pairs)
        pair_zones, pair_values = pair_zones[pairs], pair_values[pairs]
    return ZonalPartial(
        zones[starts], total, high, low, minimum, maximum, mean, m2,
        pair_zones, pair_values, pair_counts,
    )  # fmt: skip


def standard_deviations(partial: ZonalPartial) -> np.ndarray:
    """The population standard deviation of each zone's values (NumPy's `std`)."""
    return np.sqrt(partial.m2 / partial.counts)


class _SortedZones:
    """The values of every zone in increasing order, each repeated as often as its
    pixels, without being repeated: a zone's k-th value looked up in the cumulative
    counts of its (zone, value) pairs."""

    def __init__(self, partial: ZonalPartial) -> None:
        if partial.pair_counts.sum() != partial.counts.sum():
            raise ValueError("order statistics need the partials' (zone, value) counts")
        self._values = partial.pair_values
        self._cumulative = np.cumsum(partial.pair_counts)
        first = _group_starts(partial.pair_zones)
        self._before = np.r_[0, self._cumulative][first]
        self.counts = partial.counts

    def at(self, rank: np.ndarray) -> np.ndarray:
        """Each zone's value of 0-based `rank` (one per zone)."""
        index = np.searchsorted(self._cumulative, self._before + rank, side="right")
        return self._values[index]


def medians(partial: ZonalPartial) -> np.ndarray:
    """Each zone's median, as NumPy's `median`: the middle value, or the mean of the two
    middle values of an even count."""
    zones = _SortedZones(partial)
    n = zones.counts
    upper = zones.at(n // 2)
    lower = zones.at(np.maximum(n // 2 - 1, 0))
    return np.where(n % 2 == 1, upper, (lower + upper) / 2)


def percentiles(partial: ZonalPartial, percents: Sequence[float]) -> np.ndarray:
    """Each zone's value at each of `percents` (0 to 100), zones by rows, as NumPy's
    `percentile` with its default linear method computes it, step for step."""
    zones = _SortedZones(partial)
    n = zones.counts
    out = np.empty((n.size, len(percents)), np.float64)
    for j, percent in enumerate(percents):
        q = np.true_divide(np.float64(percent), 100)
        virtual = (n - 1) * q
        previous = np.floor(virtual)
        following = previous + 1
        above = virtual >= n - 1
        previous[above] = following[above] = -1  # NumPy's index of the last value
        below = virtual < 0
        previous[below] = following[below] = 0
        previous_index = previous.astype(np.intp)
        following_index = following.astype(np.intp)
        gamma = virtual - previous_index
        last = n - 1
        a = zones.at(np.where(previous_index < 0, last, previous_index))
        b = zones.at(np.where(following_index < 0, last, following_index))
        difference = b - a
        result = a + difference * gamma
        high = gamma >= 0.5
        result[high] = (b - difference * (1 - gamma))[high]
        out[:, j] = result
    return out
