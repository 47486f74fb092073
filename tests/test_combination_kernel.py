"""Combinations across integer bands (`rsgrpc_kernels.combination`): the table of a tile is
`np.unique` over its valid pixels' rows with their counts, whether the bands' ranges are
narrow (counted directly) or wide (folded band by band), and tables merge exactly."""

from __future__ import annotations

import numpy as np
import pytest
from rsgrpc_kernels.combination import (
    combination_codes,
    combination_counts,
    combination_index,
    merge_combination_counts,
)


def _expected(blocks, nodatas):
    valid = np.ones(blocks[0].shape, bool)
    for block, nodata in zip(blocks, nodatas, strict=True):
        if nodata is not None:
            valid &= block != nodata
    rows = np.column_stack([block[valid].astype(np.int64) for block in blocks])
    return np.unique(rows, axis=0, return_counts=True)


@pytest.mark.parametrize(
    ("ranges", "dtype"),
    [
        ([(0, 7), (1, 6)], "uint8"),  # narrow: counted directly
        ([(-30, 30), (0, 5), (100, 104)], "int16"),  # narrow, negative values
        ([(0, 60000), (0, 3)], "uint16"),  # wide: folded
        ([(-(2**31), 2**31 - 1), (0, 2)], "int32"),  # as wide as a band can be
    ],
)
def test_a_tiles_table_is_numpys_unique_rows_with_their_counts(ranges, dtype):
    rng = np.random.default_rng(len(ranges) * 7 + len(dtype))
    blocks = [
        rng.integers(low, high, (61, 47), endpoint=True, dtype=np.int64).astype(dtype)
        for low, high in ranges
    ]
    nodatas = [None] * len(blocks)
    nodatas[0] = int(blocks[0][0, 0])
    rows, counts = combination_counts(blocks, nodatas)
    expected_rows, expected_counts = _expected(blocks, nodatas)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(counts, expected_counts)
    assert rows.dtype == counts.dtype == np.int64
    halves = [
        combination_counts([b[:30] for b in blocks], nodatas),
        combination_counts([b[30:] for b in blocks], nodatas),
    ]
    merged_rows, merged_counts = merge_combination_counts(halves)
    np.testing.assert_array_equal(merged_rows, expected_rows)
    np.testing.assert_array_equal(merged_counts, expected_counts)


def test_a_tile_with_no_valid_pixel_has_an_empty_table():
    block = np.full((4, 4), 9, np.uint8)
    rows, counts = combination_counts([block, block], [9, None])
    assert rows.shape == (0, 2) and counts.size == 0


@pytest.mark.parametrize("high", [6, 60000])  # codes by number, and by the fold's steps
def test_each_pixel_is_coded_by_its_row_and_a_combination_not_in_the_table_is_refused(high):
    rng = np.random.default_rng(high)
    blocks = [
        rng.integers(1, high, (40, 30), endpoint=True).astype(np.uint16),
        rng.integers(0, 3, (40, 30), endpoint=True).astype(np.uint16),
    ]
    nodatas = [1, None]
    rows, _ = combination_counts(blocks, nodatas)
    index = combination_index(rows)
    assert (index.direct is not None) == (high == 6)
    codes = combination_codes(blocks, nodatas, None, index, out_nodata=-1)
    valid = blocks[0] != 1
    assert (codes[~valid] == -1).all()
    pixel_rows = np.column_stack([b[valid].astype(np.int64) for b in blocks])
    np.testing.assert_array_equal(rows[codes[valid] - 1], pixel_rows)
    changed = [blocks[0], blocks[1].copy()]
    changed[1][5, 5] = 4  # a value the table was not made with
    with pytest.raises(RuntimeError, match="does not"):
        combination_codes(changed, nodatas, None, index, out_nodata=-1)
