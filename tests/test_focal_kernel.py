"""Focal statistics against a plain per-window reference, Remotior's scipy filters where it
is right, and tiled against untiled."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import scipy.ndimage as ndi
from rsgrpc_kernels.focal import (
    STATISTICS,
    focal_statistic,
    focal_structure,
    halo_width,
)

DTYPES = [np.uint8, np.int16, np.uint16, np.float32, np.float64]
NODATA = {np.uint8: 255, np.int16: -9999, np.uint16: 0, np.float32: -3.0e38, np.float64: -1.0}
ODD = np.array([[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 1]], dtype=bool)  # even width, no symmetry
WINDOWS = {
    "square1": focal_structure(1, circular=False),
    "square2": focal_structure(2, circular=False),
    "circle2": focal_structure(2),
    "odd": ODD,
}
PERCENTILE = 30


# --- the plain reference ---------------------------------------------------------------


def nodata_mask(a, nodata):
    mask = np.zeros(a.shape, dtype=bool) if nodata is None else a == nodata
    if a.dtype.kind == "f":
        mask |= np.isnan(a)
    return mask


def neumaier(values):
    total = carry = 0.0
    for v in values:
        t = total + v
        carry += (total - t) + v if abs(total) >= abs(v) else (v - t) + total
        total = t
    return total + carry


def window_values(a, valid, y, x, structure):
    """The window's valid values of pixel (y, x), in the structure's row-major order."""
    rows, cols = a.shape
    cy, cx = structure.shape[0] // 2, structure.shape[1] // 2
    values = []
    for e, d in zip(*np.nonzero(structure), strict=True):
        yy, xx = y + e - cy, x + d - cx
        if 0 <= yy < rows and 0 <= xx < cols and valid[yy, xx]:
            values.append(a[yy, xx].item())
    return values


def statistic_of(values, statistic, percentile, integer):
    n = len(values)
    if statistic == "Count":
        return float(n)
    if statistic == "Sum":
        return float(sum(values)) if integer else neumaier(values)
    if n == 0:
        return math.nan
    ordered = sorted(values)
    if statistic == "Mean":
        return sum(values) / n if integer else neumaier(values) / n
    if statistic == "StandardDeviation":
        if integer:
            s, q = sum(values), sum(v * v for v in values)
            return math.sqrt(float(Fraction(n * q - s * s, n * n)))
        mean = neumaier(values) / n
        spread = 0.0
        for v in values:
            spread += (v - mean) * (v - mean)
        return math.sqrt(spread / n)
    if statistic == "Median":
        return float(ordered[n // 2])
    if statistic == "Percentile":
        return float(ordered[n - 1 if percentile == 100 else int(n * percentile / 100.0)])
    return float(ordered[0] if statistic == "Min" else ordered[-1])


def ref_result(a, statistic, structure, percentile, nodata):
    """float64 results, NaN where the output is nodata."""
    valid = ~nodata_mask(a, nodata)
    integer = a.dtype.kind in "iu"
    out = np.full(a.shape, np.nan)
    for y in range(a.shape[0]):
        for x in range(a.shape[1]):
            if valid[y, x]:
                values = window_values(a, valid, y, x, structure)
                out[y, x] = statistic_of(values, statistic, percentile, integer)
    return out


def ref_store(result, out_dtype, out_nodata):
    """As band calc writes: integers rounded half away from zero, nodata out of range."""
    out_dtype = np.dtype(out_dtype)
    if out_dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            out = result.astype(out_dtype)
        out[~np.isfinite(out)] = out_nodata
        return out
    info = np.iinfo(out_dtype)
    rounded = np.where(result >= 0, np.floor(result + 0.5), np.ceil(result - 0.5))
    fits = np.isfinite(rounded) & (rounded >= info.min) & (rounded <= info.max)
    return np.where(fits, rounded, out_nodata).astype(out_dtype)


def reference(
    a, statistic, structure, percentile=None, nodata=None, out_dtype=None, out_nodata=None
):
    out_dtype = a.dtype if out_dtype is None else np.dtype(out_dtype)
    if out_nodata is None:
        out_nodata = np.nan if nodata is None else nodata
    return ref_store(ref_result(a, statistic, structure, percentile, nodata), out_dtype, out_nodata)


# --- helpers -----------------------------------------------------------------------------


def raster(rng, shape, dtype, nodata, share=0.08):
    """Values over most of the dtype's range, with repeats (ties for ranks) and nodata."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        a = (rng.normal(0.0, 1.0e3, shape) * rng.choice([1e-3, 1.0, 1e4], shape)).astype(dtype)
        a[rng.random(shape) < 0.2] = dtype.type(0.25)
    else:
        info = np.iinfo(dtype)
        a = rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)
        a[rng.random(shape) < 0.3] = 3
    a[rng.random(shape) < share] = nodata
    return a


def run_tiled(a, tile_shape, **kw):
    """Run tile by tile, each on its block with the halo clipped at the raster edges."""
    halo = halo_width(kw["structure"])
    rows, cols = a.shape
    out = None
    for r0 in range(0, rows, tile_shape[0]):
        for c0 in range(0, cols, tile_shape[1]):
            r1, c1 = min(r0 + tile_shape[0], rows), min(c0 + tile_shape[1], cols)
            b0, b1 = max(r0 - halo, 0), min(r1 + halo, rows)
            d0, d1 = max(c0 - halo, 0), min(c1 + halo, cols)
            interior = (slice(r0 - b0, r1 - b0), slice(c0 - d0, c1 - d0))
            part = focal_statistic(a[b0:b1, d0:d1], interior=interior, **kw)
            if out is None:
                out = np.empty(a.shape, dtype=part.dtype)
            out[r0:r1, c0:c1] = part
    return out


def assert_same_pixels(actual, expected):
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)


def percentile_for(statistic):
    return PERCENTILE if statistic == "Percentile" else None


# --- against the reference ------------------------------------------------------------------


@pytest.mark.parametrize("statistic", STATISTICS)
@pytest.mark.parametrize("window", list(WINDOWS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_matches_reference(statistic, window, dtype):
    rng = np.random.default_rng(
        [STATISTICS.index(statistic), list(WINDOWS).index(window), DTYPES.index(dtype)]
    )
    nodata = NODATA[dtype]
    a = raster(rng, (17, 13), dtype, nodata)
    kw = {
        "statistic": statistic,
        "structure": WINDOWS[window],
        "percentile": percentile_for(statistic),
    }
    expected = reference(a, nodata=nodata, **kw)
    assert_same_pixels(focal_statistic(a, nodata=nodata, **kw), expected)
    # Into float64, where nothing is rounded away or out of range.
    expected = reference(a, nodata=nodata, out_dtype=np.float64, out_nodata=-1.0, **kw)
    got = focal_statistic(a, nodata=nodata, out_dtype=np.float64, out_nodata=-1.0, **kw)
    assert_same_pixels(got, expected)


@pytest.mark.parametrize("statistic", STATISTICS)
@pytest.mark.parametrize("dtype", [np.int8, np.uint32, np.int32])
def test_other_integer_dtypes_match_reference(statistic, dtype):
    # 32-bit values rank through their distinct values; their deviation is summed in float64.
    rng = np.random.default_rng([STATISTICS.index(statistic), np.dtype(dtype).itemsize])
    a = raster(rng, (16, 14), dtype, 3)
    kw = {
        "statistic": statistic,
        "structure": focal_structure(2),
        "percentile": percentile_for(statistic),
        "nodata": 3,
    }
    expected = reference(a, out_dtype=np.float64, **kw)
    if statistic == "StandardDeviation" and np.dtype(dtype).itemsize == 4:
        expected = ref_store(
            ref_result(a.astype(np.float64), statistic, kw["structure"], None, 3), np.float64, 3
        )
    assert_same_pixels(focal_statistic(a, out_dtype=np.float64, **kw), expected)


@pytest.mark.parametrize("statistic", STATISTICS)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_tall_and_wide_rasters_match_reference(statistic, dtype):
    # Many rows through the prefix-sum ring and the snake's turns, and a larger window.
    rng = np.random.default_rng([STATISTICS.index(statistic), 1])
    a = raster(rng, (61, 9), dtype, NODATA[dtype])
    kw = {
        "statistic": statistic,
        "structure": focal_structure(3),
        "percentile": percentile_for(statistic),
    }
    expected = reference(a, nodata=NODATA[dtype], out_dtype=np.float64, **kw)
    got = focal_statistic(a, nodata=NODATA[dtype], out_dtype=np.float64, **kw)
    assert_same_pixels(got, expected)


@pytest.mark.parametrize(
    "statistic", ["Count", "Sum", "Mean", "Median", "Min", "Max", "StandardDeviation"]
)
def test_reference_agrees_with_numpy_nan_functions_and_scipy_placement(statistic):
    # The reference itself: np.nan* over generic_filter windows (NaN outside and for nodata),
    # which places even structures as the kernel does.
    rng = np.random.default_rng(5)
    a = raster(rng, (15, 12), np.float64, -1.0)
    work = np.where(a == -1.0, np.nan, a)
    function = {
        "Count": lambda v: np.count_nonzero(~np.isnan(v)),
        "Sum": np.nansum,
        "Mean": np.nanmean,
        "Median": lambda v: np.sort(v)[np.count_nonzero(~np.isnan(v)) // 2],  # NaN sort last
        "Min": np.nanmin,
        "Max": np.nanmax,
        "StandardDeviation": np.nanstd,
    }[statistic]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # windows of NaN only
        expected = ndi.generic_filter(work, function, footprint=ODD, mode="constant", cval=np.nan)
    expected[np.isnan(work)] = np.nan
    got = ref_result(a, statistic, ODD, None, -1.0)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("circular", [False, True])
def test_equals_remotior_scipy_filters_where_windows_are_full(size, circular):
    # Without nodata, away from the edges, Remotior's filters are right: the kernel equals
    # its median_filter, percentile_filter, min/max filters and convolution sums there.
    rng = np.random.default_rng([size, int(circular)])
    a = rng.integers(0, 4000, (30, 27)).astype(np.uint16)
    fp = focal_structure(size, circular=circular)
    inner = (slice(size, -size), slice(size, -size))
    f = a.astype(np.float64)
    cases = {
        "Median": ndi.median_filter(f, footprint=fp, mode="constant", cval=np.nan),
        "Percentile": ndi.percentile_filter(
            f, PERCENTILE, footprint=fp, mode="constant", cval=np.nan
        ),
        "Max": ndi.maximum_filter(f, footprint=fp),
        "Min": ndi.minimum_filter(f, footprint=fp),
        "Sum": ndi.correlate(f, fp.astype(np.float64), mode="constant"),
        "Count": ndi.correlate(np.ones_like(f), fp.astype(np.float64), mode="constant"),
        "StandardDeviation": ndi.generic_filter(f, np.std, footprint=fp),
    }
    for statistic, expected in cases.items():
        got = focal_statistic(
            a, statistic=statistic, structure=fp, percentile=percentile_for(statistic),
            out_dtype=np.float64,
        )  # fmt: skip
        if statistic == "StandardDeviation":
            np.testing.assert_allclose(got[inner], expected[inner], rtol=1e-12)
        else:
            np.testing.assert_array_equal(got[inner], expected[inner], err_msg=statistic)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_sums_are_close_to_exact_sums(dtype):
    rng = np.random.default_rng(9)
    a = raster(rng, (14, 11), dtype, NODATA[dtype])
    valid = ~nodata_mask(a, NODATA[dtype])
    fp = focal_structure(2)
    got = focal_statistic(
        a, statistic="Sum", structure=fp, nodata=NODATA[dtype], out_dtype=np.float64
    )
    for y in range(a.shape[0]):
        for x in range(a.shape[1]):
            if valid[y, x]:
                values = window_values(a, valid, y, x, fp)
                scale = math.fsum(abs(v) for v in values)
                assert abs(got[y, x] - math.fsum(values)) <= 4 * np.finfo(np.float64).eps * scale


@pytest.mark.parametrize("percentile", [0, 1, 49.5, 50, 99, 100])
def test_percentile_is_remotiors_rank_on_the_valid_values(percentile):
    a = np.array([[5, 1, 9, 7, 3, 0]], dtype=np.uint8)  # 0 is nodata
    structure = np.ones((1, 11), dtype=bool)
    got = focal_statistic(
        a, statistic="Percentile", structure=structure, percentile=percentile, nodata=0
    )
    ordered = [1, 3, 5, 7, 9]
    k = 4 if percentile == 100 else int(5 * percentile / 100.0)
    assert got[0, :5].tolist() == [ordered[k]] * 5
    assert got[0, 5] == 0


def test_median_of_an_even_count_is_the_upper_middle_value():
    a = np.array([[4, 1, 8, 2]], dtype=np.int16)
    got = focal_statistic(
        a, statistic="Median", structure=np.ones((1, 9), dtype=bool), out_nodata=0
    )
    assert got.tolist() == [[4, 4, 4, 4]]


def test_nodata_is_ignored_in_windows_and_kept_at_its_pixels():
    a = np.array([[0, 10, 20], [30, 0, 40]], dtype=np.uint8)
    got = focal_statistic(
        a, statistic="Mean", structure=focal_structure(1, circular=False), nodata=0
    )
    assert got.tolist() == [[0, 25, 23], [20, 0, 23]]  # 100/4, 70/3 = 23.3, 40/2


def test_windows_without_valid_pixels_count_zero_and_are_nodata_otherwise():
    a = np.array([[7, 0, 9]], dtype=np.uint8)
    ring = np.array([[1, 0, 1]], dtype=bool)  # no centre
    count = focal_statistic(a, statistic="Count", structure=ring, nodata=0)
    total = focal_statistic(a, statistic="Sum", structure=ring, nodata=0)
    mean = focal_statistic(a, statistic="Mean", structure=ring, nodata=0)
    median = focal_statistic(a, statistic="Median", structure=ring, nodata=0)
    assert count.tolist() == [[0, 0, 0]]
    assert total.tolist() == [[0, 0, 0]]
    assert mean.tolist() == [[0, 0, 0]]
    assert median.tolist() == [[0, 0, 0]]
    a[0, 1] = 5
    assert focal_statistic(a, statistic="Mean", structure=ring, nodata=0).tolist() == [[5, 8, 5]]


def test_integer_outputs_round_half_away_from_zero_and_overflow_to_nodata():
    a = np.array([[1, 2, 250, 251]], dtype=np.uint8)
    pair = np.array([[0, 1, 1]], dtype=bool)  # the pixel and its right neighbour
    mean = focal_statistic(a, statistic="Mean", structure=pair, out_nodata=0)
    assert mean.tolist() == [[2, 126, 251, 251]]  # 1.5, 126, 250.5, 251
    total = focal_statistic(a, statistic="Sum", structure=pair, out_nodata=0)
    assert total.tolist() == [[3, 252, 0, 251]]  # 501 does not fit
    b = np.array([[-1, -2, 5]], dtype=np.int16)
    assert focal_statistic(b, statistic="Mean", structure=pair, out_nodata=0).tolist() == [
        [-2, 2, 5]
    ]


def test_float_nan_is_nodata_and_nan_is_the_default_float_output_nodata():
    a = np.array([[1.0, np.nan, 3.0], [np.nan, 5.0, 6.0]], dtype=np.float32)
    got = focal_statistic(a, statistic="Max", structure=focal_structure(1, circular=False))
    assert np.isnan(got[0, 1]) and np.isnan(got[1, 0])
    assert got[0, 0] == 5.0 and got[1, 2] == 6.0
    total = focal_statistic(a, statistic="Sum", structure=focal_structure(1, circular=False))
    assert total[0, 0] == 6.0


# --- tiling ------------------------------------------------------------------------------


@pytest.mark.parametrize("statistic", STATISTICS)
@pytest.mark.parametrize("window", list(WINDOWS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_tiled_equals_untiled(statistic, window, dtype):
    rng = np.random.default_rng([STATISTICS.index(statistic), list(WINDOWS).index(window)])
    a = raster(rng, (23, 19), dtype, NODATA[dtype])
    kw = {
        "statistic": statistic,
        "structure": WINDOWS[window],
        "percentile": percentile_for(statistic),
        "nodata": NODATA[dtype],
    }
    whole = focal_statistic(a, **kw)
    for tile in [(5, 4), (1, 19), (23, 1), (8, 7)]:
        assert_same_pixels(run_tiled(a, tile, **kw), whole)


def test_interior_accepts_objects_with_toslices():
    class Window:
        def toslices(self):
            return slice(2, 6), slice(1, 4)

    a = np.arange(72, dtype=np.int16).reshape(9, 8)
    kw = {"statistic": "Median", "structure": focal_structure(1), "out_nodata": -1}
    expected = focal_statistic(a, **kw)[2:6, 1:4]
    assert_same_pixels(focal_statistic(a, interior=Window(), **kw), expected)


def test_inputs_are_not_modified_and_views_work():
    rng = np.random.default_rng(4)
    a = raster(rng, (30, 26), np.int16, NODATA[np.int16])
    view = a[::2, 1::2]
    before = view.copy()
    for statistic in STATISTICS:
        kw = {"statistic": statistic, "structure": ODD, "percentile": percentile_for(statistic)}
        got = focal_statistic(view, nodata=NODATA[np.int16], **kw)
        assert_same_pixels(got, reference(before, nodata=NODATA[np.int16], **kw))
    np.testing.assert_array_equal(view, before)


def test_halo_width_is_the_structures_reach():
    assert halo_width(focal_structure(3)) == 3
    assert halo_width(ODD) == 2
    assert halo_width(np.ones((1, 1), dtype=bool)) == 0


def test_focal_structure_is_remotiors_square_and_circle():
    assert focal_structure(2, circular=False).shape == (5, 5)
    assert focal_structure(2, circular=False).all()
    for size in (1, 2, 5):
        d = np.arange(-size, size + 1)
        circle = (d[:, None] ** 2 + d[None, :] ** 2) <= size * size
        np.testing.assert_array_equal(focal_structure(size), circle)


# --- guard rails -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"statistic": "Mode"}, "unsupported statistic, got 'Mode'"),
        ({"statistic": "Percentile"}, "unsupported percentile, got None"),
        ({"statistic": "Percentile", "percentile": 101}, "percentile must be within 0 and 100"),
        ({"statistic": "Mean", "percentile": 50}, "percentile is only for Percentile"),
        ({"statistic": "Mean", "structure": np.zeros((3, 3))}, "at least one 1"),
        ({"statistic": "Mean", "structure": np.full((3, 3), 2)}, "only 0 and 1"),
        ({"statistic": "Mean", "structure": np.ones(3)}, "non-empty 2-D array"),
        ({"statistic": "Mean", "out_dtype": "int64"}, "unsupported out_dtype"),
        ({"statistic": "Mean", "out_dtype": "uint8", "out_nodata": -1}, "not a value of uint8"),
        ({"statistic": "Mean", "nodata": 300}, "nodata is not a value"),
    ],
)
def test_bad_options_are_rejected(kw, message):
    a = np.zeros((4, 4), dtype=np.uint8)
    kw = {"structure": focal_structure(1), "out_nodata": 0, **kw}
    with pytest.raises(ValueError, match=message):
        focal_statistic(a, **kw)


def test_64_bit_integers_are_refused():
    with pytest.raises(ValueError, match="unsupported dtype"):
        focal_statistic(
            np.zeros((3, 3), dtype=np.int64), statistic="Sum", structure=focal_structure(1)
        )


def test_integer_output_without_any_nodata_needs_out_nodata():
    a = np.zeros((3, 3), dtype=np.int16)
    with pytest.raises(ValueError, match="out_nodata is needed"):
        focal_statistic(
            a, statistic="Mean", structure=focal_structure(1), nodata=-5, out_dtype="uint8"
        )
    with pytest.raises(ValueError, match="out_nodata is needed"):
        focal_statistic(a, statistic="Mean", structure=focal_structure(1))
