"""Morphology kernels against plain numpy references, and tiled against untiled."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given, settings
from hypothesis import strategies as st
from rsgrpc_kernels.morphology import dilate, erode, footprint, grey_filter, halo_width

NODATA = {np.uint8: 255, np.int16: -9999, np.float32: -3.0e38}


# --- plain references ---------------------------------------------------------


def ref_offsets(size, circular):
    return [
        (dy, dx)
        for dy in range(-size, size + 1)
        for dx in range(-size, size + 1)
        if not circular or dy * dy + dx * dx <= size * size
    ]


def shifted(a, dy, dx, fill):
    """b[y, x] = a[y + dy, x + dx] where that pixel exists, else ``fill``."""
    rows, cols = a.shape
    b = np.full(a.shape, fill, dtype=a.dtype)
    ys, ye = max(0, -dy), min(rows, rows - dy)
    xs, xe = max(0, -dx), min(cols, cols - dx)
    if ys < ye and xs < xe:
        b[ys:ye, xs:xe] = a[ys + dy : ye + dy, xs + dx : xe + dx]
    return b


def ref_nodata_mask(a, nodata):
    mask = np.zeros(a.shape, dtype=bool)
    if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
        mask |= a == nodata
    if a.dtype.kind == "f":
        mask |= np.isnan(a)
    return mask


def ref_dilate(a, value_list, size, circular, nodata):
    nd = ref_nodata_mask(a, nodata)
    unlisted = ~np.isin(a, value_list) & ~nd
    out = a.copy()
    for v in value_list:
        source = (a == v) & ~nd
        reach = np.zeros(a.shape, dtype=bool)
        for dy, dx in ref_offsets(size, circular):
            reach |= shifted(source, dy, dx, False)
        out[unlisted & reach] = v
    return out


def ref_erode(a, value_list, size, circular, nodata):
    if circular:
        offsets = [(-1, 0), (0, -1), (0, 1), (1, 0)]
    else:
        offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    if nodata is not None:
        fill = nodata
    elif a.dtype.kind == "f":
        fill = np.nan
    else:
        fill = None
    a = a.copy()
    for _ in range(size):
        nd = ref_nodata_mask(a, nodata)
        listed = np.isin(a, value_list) & ~nd
        inside = np.ones(a.shape, dtype=bool)
        touched = np.zeros(a.shape, dtype=bool)
        for dy, dx in offsets:
            exists = shifted(inside, dy, dx, False)
            other = shifted(nd, dy, dx, False) | (shifted(a, dy, dx, 0) != a)
            touched |= exists & other
        best = a.copy()
        best_count = np.zeros(a.shape, dtype=np.int64)
        for u in np.unique(a[~nd & ~np.isin(a, value_list)]):  # ascending: ties go low
            is_u = (a == u) & ~nd
            count = sum(shifted(is_u, dy, dx, False).astype(np.int64) for dy, dx in offsets)
            better = count > best_count
            best[better] = u
            best_count[better] = count[better]
        eroded = listed & touched
        new = a.copy()
        new[eroded & (best_count > 0)] = best[eroded & (best_count > 0)]
        if fill is not None:
            new[eroded & (best_count == 0)] = fill
        a = new
    return a


def ref_extreme_filter(work, size, circular, take_max):
    fill = -np.inf if take_max else np.inf
    pick = np.maximum if take_max else np.minimum
    out = np.full(work.shape, fill)
    for dy, dx in ref_offsets(size, circular):
        out = pick(out, shifted(work, dy, dx, fill))
    return out


def ref_grey(a, operation, size, circular, nodata):
    nd = ref_nodata_mask(a, nodata)
    steps = {
        "dilation": [True],
        "erosion": [False],
        "opening": [False, True],
        "closing": [True, False],
    }[operation]
    work = a.astype(np.float64)
    for take_max in steps:
        work[nd] = -np.inf if take_max else np.inf
        work = ref_extreme_filter(work, size, circular, take_max)
    out = work.astype(a.dtype)
    out[nd] = a[nd]
    return out


# --- helpers --------------------------------------------------------------------


def class_raster(rng, shape, dtype, classes=(1, 2, 3, 4, 5, 7), nodata_share=0.05):
    """Speckled classes with blobs, so erosion and dilation have edges to work on."""
    coarse = rng.choice(classes, size=(shape[0] // 4 + 1, shape[1] // 4 + 1))
    a = np.kron(coarse, np.ones((4, 4), dtype=coarse.dtype))[: shape[0], : shape[1]]
    speckle = rng.random(shape) < 0.15
    a = np.where(speckle, rng.choice(classes, size=shape), a).astype(dtype)
    a[rng.random(shape) < nodata_share] = NODATA[dtype]
    return a


def run(kind, block, **kw):
    if kind == "dilate":
        return dilate(block, **kw)
    if kind == "erode":
        return erode(block, **kw)
    return grey_filter(block, operation=kind, **kw)


def reference(kind, a, value_list, size, circular, nodata):
    if kind == "dilate":
        return ref_dilate(a, value_list, size, circular, nodata)
    if kind == "erode":
        return ref_erode(a, value_list, size, circular, nodata)
    return ref_grey(a, kind, size, circular, nodata)


def options(kind, value_list, size, circular, nodata):
    kw = {"size": size, "circular": circular, "nodata": nodata}
    if kind in ("dilate", "erode"):
        kw["value_list"] = value_list
    return kw


def halo_for(kind, size):
    operation = {"dilate": "dilation", "erode": "erosion"}.get(kind, kind)
    return halo_width(operation, size)


def run_tiled(kind, raster, tile_shape, **kw):
    """Run tile by tile, each on its block with the halo clipped at the raster edges."""
    halo = halo_for(kind, kw["size"])
    rows, cols = raster.shape
    out = np.empty_like(raster)
    for r0 in range(0, rows, tile_shape[0]):
        for c0 in range(0, cols, tile_shape[1]):
            r1, c1 = min(r0 + tile_shape[0], rows), min(c0 + tile_shape[1], cols)
            b0, b1 = max(r0 - halo, 0), min(r1 + halo, rows)
            d0, d1 = max(c0 - halo, 0), min(c1 + halo, cols)
            block = raster[b0:b1, d0:d1]
            interior = (slice(r0 - b0, r1 - b0), slice(c0 - d0, c1 - d0))
            out[r0:r1, c0:c1] = run(kind, block, interior=interior, **kw)
    return out


def assert_same_pixels(actual, expected):
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)


KINDS = ["dilate", "erode", "dilation", "erosion", "opening", "closing"]
DTYPES = [np.uint8, np.int16, np.float32]


# --- footprints and halos ----------------------------------------------------------


def test_footprint_square_is_full_window():
    assert footprint(3).shape == (7, 7)
    assert footprint(3).all()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 12])
def test_footprint_disk_holds_offsets_within_radius(size):
    dy, dx = np.mgrid[-size : size + 1, -size : size + 1]
    np.testing.assert_array_equal(footprint(size, circular=True), dy * dy + dx * dx <= size * size)


def test_footprint_disk_of_radius_one_is_plus():
    np.testing.assert_array_equal(footprint(1, circular=True), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])


@pytest.mark.parametrize("size", [1, 3, 12])
def test_halo_width_is_size_or_twice_size(size):
    assert halo_width("dilation", size) == size
    assert halo_width("erosion", size) == size
    assert halo_width("opening", size) == 2 * size
    assert halo_width("closing", size) == 2 * size


@pytest.mark.parametrize("size", [1, 2, 5])
@pytest.mark.parametrize("circular", [False, True])
def test_dilate_single_pixel_spreads_to_exactly_the_footprint(size, circular):
    a = np.zeros((2 * size + 5, 2 * size + 5), dtype=np.uint8)
    a[size + 2, size + 2] = 9
    out = dilate(a, value_list=[9], size=size, circular=circular)
    expected = np.zeros_like(a, dtype=bool)
    expected[2 : 2 * size + 3, 2 : 2 * size + 3] = footprint(size, circular=circular)
    np.testing.assert_array_equal(out == 9, expected)


# --- against the references --------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 2, 3, 5, 12])
@pytest.mark.parametrize("circular", [False, True])
def test_kernel_matches_reference(kind, dtype, size, circular):
    rng = np.random.default_rng([size, int(circular), DTYPES.index(dtype), KINDS.index(kind)])
    a = class_raster(rng, (45, 38), dtype)
    value_list = [3, 1, 7]
    nodata = NODATA[dtype]
    got = run(kind, a, **options(kind, value_list, size, circular, nodata))
    assert_same_pixels(got, reference(kind, a, value_list, size, circular, nodata))


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    dtype=st.sampled_from(DTYPES),
    rows=st.integers(1, 30),
    cols=st.integers(1, 30),
    size=st.integers(1, 12),
    circular=st.booleans(),
    value_list=st.lists(st.integers(0, 6), min_size=1, max_size=5),
    with_nodata=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_kernel_matches_reference_on_random_rasters(
    kind, dtype, rows, cols, size, circular, value_list, with_nodata, seed
):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 7, size=(rows, cols)).astype(dtype)
    nodata = NODATA[dtype] if with_nodata else None
    if with_nodata:
        a[rng.random(a.shape) < 0.1] = nodata
    got = run(kind, a, **options(kind, value_list, size, circular, nodata))
    assert_same_pixels(got, reference(kind, a, value_list, size, circular, nodata))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [1, 3, 12])
def test_tall_rasters_match_reference(kind, size):
    # Taller than several of the filter's row bands (256 rows, or 8 * size), and
    # as tiles whose halo rows cross band edges.
    rng = np.random.default_rng([size, KINDS.index(kind)])
    a = class_raster(rng, (700, 29), np.int16)
    kw = options(kind, [3, 1], size, size == 3, NODATA[np.int16])
    expected = reference(kind, a, [3, 1], size, size == 3, NODATA[np.int16])
    assert_same_pixels(run(kind, a, **kw), expected)
    assert_same_pixels(run_tiled(kind, a, (300, 29), **kw), expected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("circular", [False, True])
def test_float_nan_is_nodata(kind, circular):
    rng = np.random.default_rng(7)
    a = class_raster(rng, (33, 41), np.float32, nodata_share=0.0)
    a[rng.random(a.shape) < 0.08] = np.nan
    for nodata in (None, float("nan")):
        got = run(kind, a, **options(kind, [1, 5], 2, circular, nodata))
        assert_same_pixels(got, reference(kind, a, [1, 5], 2, circular, nodata))
        assert np.array_equal(np.isnan(got) & np.isnan(a), np.isnan(a))


@pytest.mark.parametrize("operation", ["dilation", "erosion"])
@pytest.mark.parametrize("size", [1, 3, 12])
@pytest.mark.parametrize("circular", [False, True])
def test_grey_filter_matches_scipy_without_nodata(operation, size, circular):
    # With max and min, scipy's 'nearest' edge mode equals clipping the window.
    a = np.random.default_rng(size).integers(0, 256, size=(70, 53)).astype(np.uint8)
    fp = footprint(size, circular=circular)
    scipy_filter = ndi.maximum_filter if operation == "dilation" else ndi.minimum_filter
    expected = scipy_filter(a, footprint=fp, mode="nearest")
    assert_same_pixels(grey_filter(a, operation=operation, size=size, circular=circular), expected)


def test_dilate_later_value_in_list_wins():
    a = np.zeros((1, 5), dtype=np.uint8)
    a[0, 0], a[0, 4] = 1, 2
    assert dilate(a, value_list=[1, 2], size=2).tolist() == [[1, 1, 2, 2, 2]]
    assert dilate(a, value_list=[2, 1], size=2).tolist() == [[1, 1, 1, 2, 2]]
    # A value listed twice counts at its last position.
    assert dilate(a, value_list=[1, 2, 1], size=2).tolist() == [[1, 1, 1, 2, 2]]


def test_dilate_nodata_never_spreads_nor_changes():
    a = np.array([[0, 9, 0, 0, 1]], dtype=np.uint8)
    out = dilate(a, value_list=[9, 1], size=1, nodata=9)
    assert out.tolist() == [[0, 9, 0, 1, 1]]


def test_dilate_with_many_values_uses_wide_priorities():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 600, size=(40, 40)).astype(np.int16)
    value_list = rng.permutation(600)[:300].tolist()
    got = dilate(a, value_list=value_list, size=2, circular=True)
    assert_same_pixels(got, ref_dilate(a, value_list, 2, True, None))


def test_erode_takes_most_frequent_neighbour_ties_to_lower():
    a = np.array([[4, 4, 6], [6, 1, 6], [4, 9, 9]], dtype=np.uint8)
    # 4 and 6 appear three times each among the neighbours: the lower wins.
    assert erode(a, value_list=[1], size=1)[1, 1] == 4
    assert erode(a, value_list=[1, 4], size=1)[1, 1] == 6


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.float32, np.float64])
def test_erode_counts_the_dtype_largest_value_like_any_other(dtype):
    top = np.inf if np.dtype(dtype).kind == "f" else np.iinfo(dtype).max
    a = np.array([[top, top, 1], [7, 1, 1], [1, 7, 7]], dtype=dtype)
    # Two neighbours of the largest value, three of 7: 7 wins.
    assert erode(a, value_list=[1], size=1)[1, 1] == 7
    a[2, 2] = top
    # Three of the largest value, two of 7: the largest value wins.
    assert erode(a, value_list=[1], size=1)[1, 1] == top
    a[1, 2] = 7
    # Three each: ties go to the lower value.
    assert erode(a, value_list=[1], size=1)[1, 1] == 7


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("circular", [False, True])
def test_erode_wide_rows_match_reference(dtype, circular):
    # Rows of hundreds of pixels run the vector loops and their remainders.
    rng = np.random.default_rng([DTYPES.index(dtype), int(circular)])
    a = class_raster(rng, (23, 397), dtype)
    for size in (1, 3):
        got = erode(a, value_list=[3, 4], size=size, circular=circular, nodata=NODATA[dtype])
        assert_same_pixels(got, ref_erode(a, [3, 4], size, circular, NODATA[dtype]))


def test_erode_without_candidate_becomes_nodata():
    a = np.array([[1, 1, 1], [1, 1, 2], [1, 1, 1]], dtype=np.uint8)
    out = erode(a, value_list=[1, 2], size=1, nodata=0)
    assert out.tolist() == [[1, 0, 0], [1, 0, 0], [1, 0, 0]]


def test_erode_integer_without_nodata_keeps_pixels_without_candidate():
    a = np.array([[1, 2]], dtype=np.int16)
    assert erode(a, value_list=[1, 2], size=3).tolist() == [[1, 2]]


def test_erode_nodata_neighbour_erodes_but_never_fills():
    a = np.array([[0, 1, 5]], dtype=np.uint8)
    assert erode(a, value_list=[1], size=1, nodata=0).tolist() == [[0, 5, 5]]
    b = np.array([[0, 1, 1, 1]], dtype=np.uint8)
    assert erode(b, value_list=[1], size=1, nodata=0).tolist() == [[0, 0, 1, 1]]


def test_erode_raster_edge_is_not_a_neighbour():
    a = np.ones((4, 4), dtype=np.uint8)
    assert erode(a, value_list=[1], size=5, nodata=0).tolist() == a.tolist()


def test_inputs_are_not_modified_and_views_work():
    rng = np.random.default_rng(11)
    a = class_raster(rng, (40, 50), np.int16)
    view = a[::2, 1::2]
    before = view.copy()
    for kind in KINDS:
        got = run(kind, view, **options(kind, [1, 2], 2, True, NODATA[np.int16]))
        assert_same_pixels(got, reference(kind, before, [1, 2], 2, True, NODATA[np.int16]))
    np.testing.assert_array_equal(view, before)


# --- tiling ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tile", [64, 257, 1024])
@pytest.mark.parametrize("size", [1, 12])
def test_tiled_equals_untiled_on_large_raster(kind, tile, size):
    rng = np.random.default_rng([tile, size])
    a = class_raster(rng, (1100, 540), np.uint8)
    kw = options(kind, [3, 1, 7], size, tile != 257, NODATA[np.uint8])
    assert_same_pixels(run_tiled(kind, a, (tile, tile), **kw), run(kind, a, **kw))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 2, 3, 5, 12])
@pytest.mark.parametrize("circular", [False, True])
def test_odd_small_tiles_equal_reference(kind, dtype, size, circular):
    rng = np.random.default_rng([size, int(circular), DTYPES.index(dtype)])
    a = class_raster(rng, (31, 26), dtype)
    kw = options(kind, [7, 1, 3], size, circular, NODATA[dtype])
    expected = reference(kind, a, [7, 1, 3], size, circular, NODATA[dtype])
    assert_same_pixels(run_tiled(kind, a, (7, 5), **kw), expected)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    rows=st.integers(1, 60),
    cols=st.integers(1, 60),
    tile_rows=st.integers(1, 20),
    tile_cols=st.integers(1, 20),
    size=st.integers(1, 12),
    circular=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_tiled_equals_untiled_for_any_tile_shape(
    kind, rows, cols, tile_rows, tile_cols, size, circular, seed
):
    a = class_raster(np.random.default_rng(seed), (rows, cols), np.uint8)
    kw = options(kind, [1, 2, 5], size, circular, NODATA[np.uint8])
    assert_same_pixels(run_tiled(kind, a, (tile_rows, tile_cols), **kw), run(kind, a, **kw))


def test_interior_accepts_objects_with_toslices():
    class Window:
        def toslices(self):
            return slice(2, 6), slice(1, 4)

    a = class_raster(np.random.default_rng(1), (9, 8), np.uint8)
    expected = dilate(a, value_list=[1], size=1)[2:6, 1:4]
    assert_same_pixels(dilate(a, value_list=[1], size=1, interior=Window()), expected)


# --- guard rails ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda a: dilate(a, value_list=[1], size=0), "size must be at least 1, got 0"),
        (lambda a: erode(a, value_list=[1], size=1.5), "unsupported size, got 1.5"),
        (lambda a: dilate(a, value_list=[], size=1), "value_list must not be empty"),
        (lambda a: grey_filter(a, operation="tophat", size=1), "unsupported operation"),
        (lambda a: halo_width("tophat", 1), "unsupported operation, got 'tophat'"),
        (lambda a: dilate(a, value_list=[1], size=1, nodata=300), "nodata is not a value"),
        (lambda a: dilate(a, value_list=[1], size=1, circular="yes"), "unsupported circular"),
        (
            lambda a: dilate(a, value_list=[1], size=1, interior=(slice(0, 9), slice(0, 2))),
            "outside the block",
        ),
        (lambda a: dilate(a[0], value_list=[1], size=1), "block must be a 2-D ndarray"),
        (lambda a: dilate(a.astype(bool), value_list=[1], size=1), "unsupported dtype"),
    ],
)
def test_bad_options_are_rejected(call, message):
    a = np.zeros((4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match=message):
        call(a)


def test_listed_values_the_dtype_cannot_hold_never_match():
    a = np.array([[1, 0, 44]], dtype=np.uint8)
    # 300 would wrap to 44 if cast; 1.5 would truncate to 1.
    assert dilate(a, value_list=[300, 1.5], size=1).tolist() == [[1, 0, 44]]
