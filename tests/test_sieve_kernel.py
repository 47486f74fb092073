"""The sieve kernel equals rasterio.features.sieve pixel for pixel, tiled or not."""

import pickle

import numpy as np
import pytest
import rasterio.features
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rsgrpc_kernels import sieve as sieve_module
from rsgrpc_kernels.sieve import (
    SieveStats,
    TilePlacement,
    decide_tiles,
    finish_tile,
    settle_tile,
    sieve,
    sieve_tiled,
    sieve_with_stats,
)

RASTERIO_DTYPES = ["uint8", "uint16", "int16", "int32"]
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference(array, size, connectivity=4, mask=None):
    return rasterio.features.sieve(array, size, connectivity=connectivity, mask=mask)


@st.composite
def sieve_cases(draw, max_side=40):
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    classes = draw(st.integers(2, 6))
    dtype = draw(st.sampled_from(RASTERIO_DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    values = rng.integers(0, classes, (height, width))
    if draw(st.booleans()):
        # Blocks of one class with speckle: large regions next to small ones.
        block = draw(st.integers(2, 8))
        blocks = rng.integers(0, classes, (height // block + 1, width // block + 1))
        coarse = np.kron(blocks, np.ones((block, block), np.int64))[:height, :width]
        values = np.where(rng.random((height, width)) < 0.3, values, coarse)
    if dtype == "int16":
        values = values - 3
    array = values.astype(dtype)
    size = min(draw(st.integers(1, 20)), height * width)
    connectivity = draw(st.sampled_from([4, 8]))
    mask = None
    if draw(st.booleans()):
        mask = rng.random((height, width)) > draw(st.sampled_from([0.05, 0.2, 0.5]))
    return array, size, connectivity, mask


def speckled_classes(shape, *, classes=5, block=23, speckle=0.2, seed=0):
    rng = np.random.default_rng(seed)
    h, w = shape
    blocks = rng.integers(0, classes, (h // block + 1, w // block + 1))
    coarse = np.kron(blocks, np.ones((block, block), np.int64))[:h, :w]
    noise = rng.integers(0, classes, shape)
    return np.where(rng.random(shape) < speckle, noise, coarse).astype(np.uint8)


# ---------------------------------------------------------------------------
# Untiled: differential against rasterio.


@SETTINGS
@given(sieve_cases())
def test_sieve_matches_rasterio_on_random_rasters(case):
    array, size, connectivity, mask = case
    expected = reference(array, size, connectivity, mask)
    np.testing.assert_array_equal(
        sieve(array, size, connectivity=connectivity, mask=mask), expected
    )


@pytest.mark.parametrize("connectivity", [4, 8])
def test_sieve_matches_rasterio_on_one_row_and_one_column(connectivity):
    rng = np.random.default_rng(7)
    for shape in [(1, 50), (50, 1), (1, 1), (1, 2)]:
        array = rng.integers(0, 3, shape).astype(np.uint8)
        for size in range(1, min(8, array.size) + 1):
            np.testing.assert_array_equal(
                sieve(array, size, connectivity=connectivity),
                reference(array, size, connectivity),
            )


@pytest.mark.parametrize(("dtype", "wider"), [("int8", "int16"), ("uint32", "int32")])
def test_sieve_int8_and_uint32_match_rasterio_on_a_wider_type(dtype, wider):
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    classes = np.array(
        [
            info.min if dtype == "int8" else 0,
            -1 if dtype == "int8" else 7,
            5,
            2**31 - 1 if dtype == "uint32" else info.max,
        ]
    )
    array = classes[rng.integers(0, 4, (30, 30))].astype(dtype)
    for connectivity in (4, 8):
        expected = reference(array.astype(wider), 6, connectivity)
        got = sieve(array, 6, connectivity=connectivity)
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got.astype(wider), expected)


def test_sieve_treats_gdal_nodata_marker_as_nodata_in_int32():
    marker = -51502112
    array = np.array([[marker, 2, 2, 2], [1, 1, 1, 1], [1, 1, 1, 1]], np.int32)
    expected = reference(array, 4)
    np.testing.assert_array_equal(sieve(array, 4), expected)
    assert expected[0, 0] == marker


# ---------------------------------------------------------------------------
# Built cases: ties, chains, nodata.


def test_sieve_tie_goes_to_the_neighbour_met_first_in_scan_order():
    # X meets A through its up neighbour before B through its left one.
    array = np.array([[1, 1, 1], [2, 9, 1], [2, 2, 2]], np.uint8)
    expected = np.array([[1, 1, 1], [2, 1, 1], [2, 2, 2]], np.uint8)
    np.testing.assert_array_equal(reference(array, 2), expected)
    np.testing.assert_array_equal(sieve(array, 2), expected)
    # Mirrored left to right, B is met first (up is 2's now).
    array = np.array([[2, 2, 2], [1, 9, 2], [1, 1, 1]], np.uint8)
    np.testing.assert_array_equal(sieve(array, 2), reference(array, 2))
    assert sieve(array, 2)[1, 1] == 2


def test_sieve_tie_with_eight_connectivity_counts_up_left_before_up_right():
    # The centre meets 3 (up-left) before 4 (up-right); 3 and 4 have 2 pixels each.
    array = np.array([[3, 0, 4], [3, 7, 4], [0, 0, 0]], np.uint8)
    array[0, 1] = 5  # a one-pixel region up, smaller than both
    for connectivity in (4, 8):
        np.testing.assert_array_equal(
            sieve(array, 2, connectivity=connectivity), reference(array, 2, connectivity)
        )


def test_sieve_small_region_follows_a_chain_of_small_largest_neighbours():
    # 3 -> its only neighbour, the small 2s -> their largest neighbour, the 1s.
    array = np.array([[1, 1, 1, 1, 2, 2, 3]], np.uint8)
    expected = np.ones_like(array)
    np.testing.assert_array_equal(reference(array, 3), expected)
    np.testing.assert_array_equal(sieve(array, 3), expected)


def test_sieve_longer_chain_ends_on_the_first_large_region():
    array = np.array([[5, 5, 5, 5, 5, 4, 4, 4, 3, 3, 2, 1]], np.uint8)
    np.testing.assert_array_equal(sieve(array, 5), reference(array, 5))
    assert (sieve(array, 5) == 5).all()


def test_sieve_small_regions_that_are_each_others_largest_neighbour_stay():
    array = np.array([[1, 2, 2]], np.uint8)
    np.testing.assert_array_equal(reference(array, 3), array)
    out, stats = sieve_with_stats(array, 3)
    np.testing.assert_array_equal(out, array)
    assert stats == SieveStats(0, 0)


def test_sieve_chain_into_a_cycle_leaves_the_region_unchanged():
    # 9 -> 7 7 (small) whose largest neighbour is 8 8 (small) whose largest is 7 7.
    array = np.array([[9, 7, 7, 8, 8]], np.uint8)
    np.testing.assert_array_equal(reference(array, 3), array)
    np.testing.assert_array_equal(sieve(array, 3), array)


def test_sieve_region_with_only_nodata_neighbours_is_unchanged():
    array = np.array([[1, 1, 1, 1], [1, 2, 1, 1], [1, 1, 1, 1]], np.uint8)
    mask = np.ones(array.shape, bool)
    mask[0:3, 0:3] = False
    mask[1, 1] = True
    np.testing.assert_array_equal(reference(array, 3, mask=mask), array)
    np.testing.assert_array_equal(sieve(array, 3, mask=mask), array)


def test_sieve_nodata_is_never_changed_counted_or_a_neighbour():
    array = np.array([[1, 1, 2, 3, 3, 3, 3]], np.uint8)
    mask = np.array([[True, True, False, True, True, True, True]])
    # The 1s (2 pixels) only touch nodata: unchanged. The masked 2 stays 2.
    np.testing.assert_array_equal(sieve(array, 3, mask=mask), array)
    np.testing.assert_array_equal(reference(array, 3, mask=mask), array)
    # Masking splits the 3s below the threshold: nodata pixels do not count.
    mask = np.array([[True, True, True, True, False, True, True]])
    np.testing.assert_array_equal(sieve(array, 3, mask=mask), reference(array, 3, mask=mask))


def test_sieve_nodata_islands_inside_a_region_do_not_split_it():
    array = np.full((5, 5), 4, np.uint8)
    array[2, 2] = 9
    mask = np.ones(array.shape, np.uint8)
    mask[1:4, 1:4] = 0
    mask[2, 2] = 1
    np.testing.assert_array_equal(sieve(array, 5, mask=mask), reference(array, 5, mask=mask))


def test_sieve_with_stats_counts_changed_regions_and_pixels():
    array = np.array([[1, 1, 1, 1, 1], [1, 2, 1, 3, 3], [1, 1, 1, 1, 1]], np.uint8)
    out, stats = sieve_with_stats(array, 3)
    np.testing.assert_array_equal(out, np.ones_like(array))
    assert stats == SieveStats(regions_changed=2, pixels_changed=3)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_sieve_of_a_large_array_runs_in_tiles_with_the_same_result(monkeypatch, connectivity):
    array = speckled_classes((300, 280), seed=11)
    mask = np.random.default_rng(11).random(array.shape) > 0.1
    expected, expected_stats = sieve_with_stats(array, 7, connectivity=connectivity, mask=mask)
    monkeypatch.setattr(sieve_module, "_UNTILED_MAX_PIXELS", 1000)
    monkeypatch.setattr(sieve_module, "_LARGE_ARRAY_TILE", (64, 100))
    got, stats = sieve_with_stats(array, 7, connectivity=connectivity, mask=mask)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, reference(array, 7, connectivity, mask))
    assert stats == expected_stats
    in_place = array.copy()
    sieve(in_place, 7, connectivity=connectivity, mask=mask, out=in_place)
    np.testing.assert_array_equal(in_place, expected)


def test_sieve_writes_into_out():
    array = speckled_classes((40, 30))
    out = np.zeros_like(array)
    result = sieve(array, 5, out=out)
    assert result is out
    np.testing.assert_array_equal(out, reference(array, 5))


def test_sieve_rejects_bad_arguments():
    array = np.zeros((3, 3), np.uint8)
    with pytest.raises(TypeError, match="unsupported dtype"):
        sieve(array.astype(np.float32), 2)
    with pytest.raises(ValueError, match="unsupported connectivity, got 6"):
        sieve(array, 2, connectivity=6)
    with pytest.raises(ValueError, match="size must be at least 1"):
        sieve(array, 0)
    with pytest.raises(ValueError, match="mask shape"):
        sieve(array, 2, mask=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="out must have shape"):
        sieve(array, 2, out=np.zeros((3, 3), np.int16))


# ---------------------------------------------------------------------------
# Tiled equals untiled.


@st.composite
def tiled_cases(draw):
    array, size, connectivity, mask = draw(sieve_cases(max_side=30))
    tile_shape = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    if array.size / (tile_shape[0] * tile_shape[1]) > 150:
        tile_shape = (max(tile_shape[0], 3), max(tile_shape[1], 5))
    return array, size, connectivity, mask, tile_shape


@SETTINGS
@given(tiled_cases())
def test_sieve_tiled_equals_sieve_on_small_odd_tiles(case):
    array, size, connectivity, mask, tile_shape = case
    expected = reference(array, size, connectivity, mask)
    got = sieve_tiled(array, size, tile_shape=tile_shape, connectivity=connectivity, mask=mask)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("tile", [64, 257, 1024])
@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("masked", [False, True])
def test_sieve_tiled_equals_sieve_on_large_rasters(tile, connectivity, masked):
    rng = np.random.default_rng(tile + connectivity)
    array = speckled_classes((600, 577), seed=tile + connectivity)
    mask = rng.random(array.shape) > 0.1 if masked else None
    for size in (3, 17):
        expected = sieve(array, size, connectivity=connectivity, mask=mask)
        got = sieve_tiled(
            array, size, tile_shape=(tile, tile), connectivity=connectivity, mask=mask
        )
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(expected, reference(array, 17, connectivity, mask))


@pytest.mark.parametrize("connectivity", [4, 8])
def test_sieve_tiled_region_touching_every_tile(connectivity):
    # A grid of 1-lines crossing every tile, small specks on and beside it.
    array = np.zeros((40, 43), np.uint8)
    array[::6, :] = 1
    array[:, ::7] = 1
    rng = np.random.default_rng(1)
    specks = rng.random(array.shape) < 0.1
    array[specks] = rng.integers(2, 5, specks.sum())
    for size in (2, 5, 40):
        expected = reference(array, size, connectivity)
        for tile_shape in [(5, 5), (8, 3), (13, 11)]:
            got = sieve_tiled(array, size, tile_shape=tile_shape, connectivity=connectivity)
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_sieve_tiled_small_regions_on_seams_and_corners(connectivity):
    array = np.ones((12, 12), np.uint8)
    array[3:5, 3:5] = 2  # a 2x2 region on the corner of four 4x4 tiles
    array[7, 3:6] = 3  # crosses a vertical seam
    array[3:6, 9] = 4  # crosses a horizontal seam
    array[7, 7] = 5  # diagonal pair across a corner (8-connected only)
    array[8, 8] = 5
    array[10:12, 10] = 6  # touches the raster edge only
    for size in (2, 3, 4, 5):
        expected = reference(array, size, connectivity)
        for tile_shape in [(4, 4), (8, 8), (4, 12), (1, 12), (12, 1)]:
            got = sieve_tiled(array, size, tile_shape=tile_shape, connectivity=connectivity)
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_sieve_tiled_chains_and_ties_across_seams(connectivity):
    # Rows of two-pixel regions of alternating classes: chains and equal-size
    # ties whose members sit in different tiles.
    rng = np.random.default_rng(5)
    array = np.repeat(rng.integers(0, 3, (30, 16)), 2, axis=1).astype(np.uint8)
    array[:, :4] = 7
    for size in (3, 4, 6):
        expected = reference(array, size, connectivity)
        for tile_shape in [(3, 3), (5, 7), (30, 5), (2, 32)]:
            got = sieve_tiled(array, size, tile_shape=tile_shape, connectivity=connectivity)
            np.testing.assert_array_equal(got, expected)


def run_phases(array, size, tile_shape, connectivity=4, mask=None):
    """The engine's three phases, with pickling between processes simulated."""
    h, w = array.shape
    th, tw = tile_shape
    windows = [
        (TilePlacement(r, c, h, w), (slice(r, r + th), slice(c, c + tw)))
        for r in range(0, h, th)
        for c in range(0, w, tw)
    ]
    settled = {
        p: pickle.loads(
            pickle.dumps(
                settle_tile(
                    array[sl],
                    p,
                    size=size,
                    connectivity=connectivity,
                    mask=None if mask is None else mask[sl],
                )
            )
        )
        for p, sl in windows
    }
    summaries = [t.summary for t in settled.values()]
    decision = decide_tiles(summaries[::-1], size=size, connectivity=connectivity)
    out = np.empty_like(array)
    stats = SieveStats(decision.regions_changed, 0)
    for tile_decision in pickle.loads(pickle.dumps(decision.tiles)):
        p = tile_decision.placement
        tile = settled[p]
        stats = stats + tile.stats + finish_tile(tile.out, tile.pending, tile_decision)
        out[p.row_off : p.row_off + th, p.col_off : p.col_off + tw] = tile.out
    return out, stats, summaries


@pytest.mark.parametrize("connectivity", [4, 8])
def test_tiled_phase_stats_add_up_to_untiled_stats(connectivity):
    array = speckled_classes((200, 190), seed=4)
    mask = np.random.default_rng(4).random(array.shape) > 0.05
    expected, expected_stats = sieve_with_stats(array, 9, connectivity=connectivity, mask=mask)
    out, stats, _ = run_phases(array, 9, (64, 50), connectivity, mask)
    np.testing.assert_array_equal(out, expected)
    assert stats == expected_stats


def test_tile_summaries_stay_small_on_speckled_rasters():
    # What travels grows with the seams, not with the small regions inside tiles.
    array = speckled_classes((1024, 1024), seed=9, speckle=0.3)
    _, _, summaries = run_phases(array, 10, (512, 512))
    summary_bytes = sum(len(pickle.dumps(s)) for s in summaries)
    seam_edge_pixels = 4 * 1024
    assert summary_bytes < 64 * seam_edge_pixels
    assert summary_bytes < array.nbytes / 4


def test_decide_tiles_rejects_tiles_that_do_not_form_a_grid():
    array = speckled_classes((10, 10))
    top = settle_tile(array[:5], TilePlacement(0, 0, 10, 10), size=3).summary
    with pytest.raises(ValueError, match="do not cover|does not fit"):
        decide_tiles([top], size=3)


def test_finish_tile_rejects_a_decision_for_another_tile():
    array = speckled_classes((20, 20))
    place = [TilePlacement(0, 0, 20, 20), TilePlacement(0, 10, 20, 20)]
    tiles = [array[:, :10], array[:, 10:]]
    settled = [settle_tile(t, p, size=4) for t, p in zip(tiles, place, strict=True)]
    decision = decide_tiles([t.summary for t in settled], size=4)
    with pytest.raises(ValueError, match="not for this one"):
        finish_tile(settled[1].out, settled[1].pending, decision.tiles[0])
