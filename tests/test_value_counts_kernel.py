"""The value counts kernel against np.unique: every integer type and range (bins or sort),
floats with NaN and -0.0, nodata values the type cannot hold, and merges in any split."""

from __future__ import annotations

import numpy as np
import pytest
from rsgrpc_kernels.value_counts import merge_value_counts, value_counts


def _reference(array: np.ndarray, *nodata: float) -> tuple[np.ndarray, np.ndarray]:
    valid = array[~np.isnan(array.astype(np.float64))]
    for value in nodata:
        valid = valid[valid != value]
    return np.unique(valid, return_counts=True)


@pytest.mark.parametrize(
    ("dtype", "low", "high"),
    [
        ("uint8", 0, 256),
        ("int8", -128, 128),
        ("uint16", 0, 2**16),
        ("int16", -(2**15), 2**15),
        ("int32", -5, 70_000),  # a narrow range: bins
        ("int32", -(2**31), 2**31),  # the whole range: sorted
        ("uint32", 0, 2**32),
    ],
)
def test_integer_counts_equal_np_unique(dtype, low, high):
    rng = np.random.default_rng(4)
    array = rng.integers(low, high, (97, 89), dtype=np.int64).astype(dtype)
    array[::7, ::3] = array[0, 0]  # one value many times
    values, counts = value_counts(array, (array[1, 1].item(),))
    expected_values, expected_counts = _reference(array, array[1, 1].item())
    assert values.dtype == np.dtype(dtype) and counts.dtype == np.int64
    np.testing.assert_array_equal(values, expected_values)
    np.testing.assert_array_equal(counts, expected_counts)


def test_floats_skip_nan_and_count_negative_zero_as_zero():
    array = np.array([[0.0, -0.0, np.nan, 1.5], [1.5, -2.25, np.nan, -0.0]], np.float32)
    values, counts = value_counts(array, (None,))
    assert values.tolist() == [-2.25, 0.0, 1.5] and counts.tolist() == [1, 3, 2]
    assert not np.signbit(values[1])


def test_nodata_the_type_cannot_hold_masks_nothing():
    array = np.array([0, 1, 255, 255], np.uint8)
    for nodata in (-1, 256, 2.5, float("inf"), float("nan"), None):
        values, counts = value_counts(array, (nodata,))
        assert values.tolist() == [0, 1, 255] and counts.tolist() == [1, 1, 2], nodata


def test_an_all_nodata_block_has_no_rows():
    values, counts = value_counts(np.full((4, 4), 9, np.int16), (9,))
    assert values.size == 0 and counts.size == 0
    merged = merge_value_counts([(values, counts), value_counts(np.array([3, 3], np.int16))])
    assert merged[0].tolist() == [3] and merged[1].tolist() == [2]


@pytest.mark.parametrize("pieces", [1, 2, 7, 50])
def test_merging_any_split_gives_the_whole(pieces):
    rng = np.random.default_rng(pieces)
    array = (rng.integers(-40, 40, 5000) / 8).astype(np.float64)
    parts = [value_counts(part) for part in np.array_split(array, pieces)]
    rng.shuffle(parts)
    values, counts = merge_value_counts(parts)
    expected_values, expected_counts = _reference(array)
    np.testing.assert_array_equal(values, expected_values)
    np.testing.assert_array_equal(counts, expected_counts)
