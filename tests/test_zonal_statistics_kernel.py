"""The zonal statistics kernel (`rsgrpc_kernels.zonal_statistics`): partials of any tiling
merge, in any grouping, into the statistics of the whole, which are NumPy's on each
zone's values (median and percentiles step for step, the sum exactly rounded)."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from rsgrpc_kernels.zonal_statistics import (
    medians,
    merge_zonal_partials,
    percentiles,
    standard_deviations,
    zonal_partial,
)

PERCENTS = [0.0, 0.1, 1.0, 12.5, 25.0, 33.3, 50.0, 66.7, 99.9, 100.0]


def _tiles(zones, values, nodata, edge_h, edge_w, order_statistics):
    return [
        zonal_partial(
            zones[r : r + edge_h, c : c + edge_w],
            values[r : r + edge_h, c : c + edge_w],
            nodata,
            order_statistics=order_statistics,
        )
        for r in range(0, zones.shape[0], edge_h)
        for c in range(0, zones.shape[1], edge_w)
    ]


def _assert_numpy(partial, zones, values, nodata):
    valid = ~np.isnan(values.astype(np.float64)) & ~np.isnan(zones.astype(np.float64))
    for array, value in zip((zones, values), nodata, strict=True):
        if value is not None:
            valid &= array != value
    expected_zones = np.unique(zones[valid])
    np.testing.assert_array_equal(partial.zones, expected_zones)
    at = percentiles(partial, PERCENTS)
    middle = medians(partial)
    spread = standard_deviations(partial)
    for i, zone in enumerate(expected_zones):
        v = values[valid & (zones == zone)].astype(np.float64)
        assert partial.counts[i] == v.size
        assert partial.sum_high[i] == math.fsum(v.tolist())
        assert partial.minimum[i] == v.min() and partial.maximum[i] == v.max()
        assert middle[i] == np.median(v)
        for j, p in enumerate(PERCENTS):
            assert at[i, j] == np.percentile(v, p), (zone, p)
        np.testing.assert_allclose(spread[i], np.std(v), rtol=1e-10)


@pytest.mark.parametrize("zone_type", ["uint8", "int16", "float32"])
@pytest.mark.parametrize("value_type", ["uint16", "int32", "float32", "float64"])
def test_any_tiling_merges_into_numpys_statistics_of_the_whole(zone_type, value_type):
    rng = np.random.default_rng(zlib.crc32(f"{zone_type} {value_type}".encode()))
    shape = (97, 61)
    zones = rng.integers(0, 9, shape).astype(zone_type)
    if value_type in ("float32", "float64"):
        values = (rng.normal(0, 1e4, shape)).astype(value_type)
        values[rng.random(shape) < 0.1] = np.nan
    else:
        info = np.iinfo(value_type)
        values = rng.integers(info.min, info.max, shape, dtype=np.int64).astype(value_type)
    nodata = (4, float(values[3, 3]))
    whole = zonal_partial(zones, values, nodata, order_statistics=True)
    _assert_numpy(whole, zones, values, nodata)
    for edge_h, edge_w in ((1, 61), (13, 7), (50, 50)):
        tiles = _tiles(zones, values, nodata, edge_h, edge_w, True)
        merged = merge_zonal_partials(
            [merge_zonal_partials(tiles[::2]), merge_zonal_partials(tiles[1::2])]
        )
        _assert_numpy(merged, zones, values, nodata)
        for name in ("zones", "counts", "sum_high", "minimum", "maximum", "pair_counts"):
            np.testing.assert_array_equal(getattr(merged, name), getattr(whole, name), name)


@pytest.mark.parametrize("value_type", ["uint8", "int16", "uint16", "int32"])
def test_integer_bands_of_few_values_are_counted_not_sorted_with_the_same_statistics(
    value_type,
):
    """Integer zones and values that span fewer (zone, value) pairs than a tile has
    pixels take the counting path: the same partial as sorting gives, numpy's
    statistics, in any tiling, mixed with tiles that sort."""
    rng = np.random.default_rng(zlib.crc32(value_type.encode()))
    shape = (120, 90)
    zones = rng.integers(1, 7, shape).astype(np.uint8)
    low = -40 if np.dtype(value_type).kind == "i" else 0
    values = rng.integers(low, low + 180, shape).astype(value_type)
    values[:20, :20] = np.iinfo(value_type).max  # a wide tile: sorted, not counted
    nodata = (3, float(values[5, 5]))
    whole = zonal_partial(zones, values, nodata, order_statistics=True)
    _assert_numpy(whole, zones, values, nodata)
    narrow = zonal_partial(zones[40:, 40:], values[40:, 40:], nodata, order_statistics=True)
    by_sorting = zonal_partial(
        zones[40:, 40:].astype(np.float32), values[40:, 40:], nodata, order_statistics=True
    )
    for name in narrow._fields:
        np.testing.assert_allclose(getattr(narrow, name), getattr(by_sorting, name), 1e-12)
    for edge_h, edge_w in ((20, 20), (33, 17), (120, 45)):
        tiles = _tiles(zones, values, nodata, edge_h, edge_w, True)
        merged = merge_zonal_partials(tiles)
        _assert_numpy(merged, zones, values, nodata)
        for name in ("zones", "counts", "sum_high", "minimum", "maximum", "pair_counts"):
            np.testing.assert_array_equal(getattr(merged, name), getattr(whole, name), name)
    without_order = zonal_partial(zones, values, nodata)
    np.testing.assert_array_equal(without_order.counts, whole.counts)
    assert without_order.pair_counts.size == 0


def test_the_sum_is_exactly_rounded_where_float_sums_drift():
    values = np.full((64, 64), 0.1, np.float32)
    values[0, 0], values[-1, -1] = 3.0e7, -3.0e7
    zones = np.ones(values.shape, np.uint8)
    exact = math.fsum(values.astype(np.float64).ravel().tolist())
    for tiles in ([zonal_partial(zones, values)], _tiles(zones, values, (None, None), 5, 9, False)):
        merged = merge_zonal_partials(tiles)
        assert merged.sum_high[0] == exact
        assert merged.sum_high[0] / merged.counts[0] == exact / values.size


def test_nodata_nan_and_negative_zero():
    zones = np.array([[1, 1, np.nan], [2, 0, 2]], np.float32)
    values = np.array([[-0.0, 0.0, 5.0], [7.0, 8.0, -5.0]], np.float32)
    partial = zonal_partial(zones, values, (0, -5.0), order_statistics=True)
    np.testing.assert_array_equal(partial.zones, [1.0, 2.0])
    np.testing.assert_array_equal(partial.counts, [2, 1])
    np.testing.assert_array_equal(partial.pair_counts, [2, 1])  # -0.0 and 0.0 are one value
    assert partial.sum_high.tolist() == [0.0, 7.0]


def test_an_empty_tile_merges_as_nothing():
    zones = np.full((4, 4), 3, np.int16)
    values = np.arange(16, dtype=np.float32).reshape(4, 4)
    empty = zonal_partial(zones, values, (3, None), order_statistics=True)
    assert empty.zones.size == 0 and empty.zones.dtype == np.int16
    full = zonal_partial(zones, values, order_statistics=True)
    merged = merge_zonal_partials([empty, full, empty])
    np.testing.assert_array_equal(merged.counts, [16])
    assert medians(merged)[0] == 7.5
    assert merge_zonal_partials([empty]).zones.size == 0
