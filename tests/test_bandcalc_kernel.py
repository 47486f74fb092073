"""Band calc kernels: pixel-for-pixel equality with numpy masked-array references."""

import math
import time
import warnings

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rsgrpc_kernels.bandcalc import (
    compile_kernel,
    evaluate,
    kernel_cache_info,
    normalize_dtype,
)
from rsgrpc_kernels.expression import parse_expression

# Every test runs with both ways of evaluating an expression (see conftest.band_calc_method).
pytestmark = pytest.mark.usefixtures("band_calc_method")

OUT_NODATA = -32768.0


def _tile(seed, shape=(37, 53), dtype=np.float32, low=-1.0, high=1.0):
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, size=shape).astype(dtype)


def _finish(values, mask, dtype=np.float32, nodata=OUT_NODATA):
    """Remotior's rule on a float64 masked result: masked or not finite -> nodata, then cast."""
    data = np.ma.getdata(values)
    bad = np.ma.getmaskarray(values) | mask | ~np.isfinite(data)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.where(bad, 0.0, data).astype(dtype)
    if np.dtype(dtype).kind == "f":
        bad |= ~np.isfinite(out)
    out[bad] = nodata
    return out, int(bad.sum())


def test_ndvi_equals_masked_numpy_reference():
    red = _tile(1, low=0.0)
    nir = _tile(2, low=0.0)
    red[0, :5] = -9999.0
    nir[1, :3] = np.nan
    red[2, 0] = nir[2, 0] = 0.0  # 0 / 0
    e = parse_expression('("nir" - "red") / ("nir" + "red")', ["red", "nir"])
    out, count, _ = evaluate(e, [red, nir], [-9999.0, np.nan])

    r = np.ma.masked_equal(red.astype(np.float64), -9999.0)
    n = np.ma.masked_invalid(nir.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = (n - r) / (n + r)
    expected, expected_count = _finish(ref, np.zeros(red.shape, bool))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    assert count == expected_count == 5 + 3 + 1


def test_multi_input_expression_equals_masked_numpy_reference():
    a = _tile(3, low=-2.0, high=2.0)
    b = _tile(4, low=0.0, high=1.0)
    c = np.random.default_rng(5).integers(-1, 300, size=a.shape).astype(np.int16)
    text = (
        'where(("b" > 0.2) & ("c" != nodata("c") + 5) | ~(a < -1.5), '
        'sqrt(abs("a")) * log10("b" + 1), maximum("a", "b") - exp(-"c" / 100)) '
        "+ clip(a, -1, 1) * isnan(b)"
    )
    e = parse_expression(text, ["a", "b", "c"])
    out, count, _ = evaluate(e, [a, b, c], [None, None, -1])

    a64 = np.ma.masked_array(a.astype(np.float64))
    b64 = np.ma.masked_array(b.astype(np.float64))
    c64 = np.ma.masked_equal(c, -1).astype(np.float64)
    cond = ((b64 > 0.2) & (c64 != -1 + 5)) | ~(a64 < -1.5)
    with np.errstate(all="ignore"):
        ref = np.ma.where(
            cond,
            np.sqrt(np.abs(a64)) * np.log10(b64 + 1),
            np.maximum(a64, b64) - np.exp(-c64 / 100),
        ) + np.clip(a64, -1, 1) * np.isnan(b64)
    expected, expected_count = _finish(ref, np.ma.getmaskarray(c64))
    np.testing.assert_array_equal(out, expected)
    assert count == expected_count > 0


def test_remotior_aggregations_work_per_pixel_across_arguments_ignoring_nan():
    # One kernel for all six: the row picks the aggregation (keeps compile time down).
    functions = ["min", "max", "sum", "mean", "median", "std"]
    tiles = [_tile(10 + k, shape=(6, 11)).astype(np.float64) for k in range(3)]
    row = np.repeat(np.arange(6.0)[:, None], 11, axis=1)
    # NaN from the expression itself is ignored, as numpy's nan* functions ignore it.
    args = '"a", "b", where("c" > 0, "c", nan)'
    text = "0"
    for k, function in reversed(list(enumerate(functions))):
        text = f"where(row == {k}, {function}({args}), {text})"
    e = parse_expression(text, ["a", "b", "c", "row"])
    out, _, _ = evaluate(e, [*tiles, row], [None] * 4, output_dtype="Float64")
    stack = np.stack(tiles[:2] + [np.where(tiles[2] > 0, tiles[2], np.nan)])
    for k, function in enumerate(functions):
        expected = getattr(np, f"nan{function}")(stack, axis=0)[k]
        np.testing.assert_allclose(out[k], expected, rtol=1e-15, atol=0, err_msg=function)


def test_percentile_takes_q_last_and_interpolates_linearly():
    tiles = [_tile(20 + k, shape=(7, 5)).astype(np.float64) for k in range(5)]
    e = parse_expression(
        'percentile("a", "b", "c", "d", where("e" > 0, "e", nan), 37.5)', list("abcde")
    )
    out, _, _ = evaluate(e, tiles, [None] * 5, output_dtype="float64")
    stack = np.stack(tiles[:4] + [np.where(tiles[4] > 0, tiles[4], np.nan)])
    np.testing.assert_allclose(out, np.nanpercentile(stack, 37.5, axis=0), rtol=1e-15, atol=0)


def test_aggregation_of_all_nan_is_nodata_except_sum():
    a = np.array([[1.0, -1.0]], np.float32)
    e = parse_expression("where(a > 0, max(nan, nan), sum(nan, nan))", ["a"])
    out, count, _ = evaluate(e, [a], [None])
    assert out.tolist() == [[OUT_NODATA, 0.0]]
    assert count == 1


def test_integer_output_rounds_half_away_from_zero_and_refuses_what_does_not_fit():
    # As GDAL writes a float array into an integer band (Remotior's outputs).
    a = np.array(
        [[1.5, -1.5, 0.49, -0.49, 2.5, 127.4, 127.5, -128.4, -128.5, np.nan, 5.0]], np.float64
    )
    e = parse_expression("a", ["a"])
    out, count, _ = evaluate(e, [a], [5.0], output_dtype="Int8", output_nodata=-128)
    assert out.dtype == np.int8
    assert out.tolist() == [[2, -2, 0, 0, 3, 127, -128, -128, -128, -128, -128]]
    assert count == 4  # 127.5, -128.5, NaN, and the nodata input


def test_float32_output_overflow_is_nodata():
    a = np.array([[1e300, 3e38, -1e39]], np.float64)
    out, count, _ = evaluate(parse_expression("a", ["a"]), [a], [None])
    assert out.tolist() == [[OUT_NODATA, np.float32(3e38), OUT_NODATA]]
    assert count == 2


def test_integer_input_nodata_compares_in_the_input_dtype():
    a = np.array([[0, 255, 7]], np.uint8)
    out, count, _ = evaluate(
        parse_expression("a * 2", ["a"]), [a], [255], output_dtype="UInt16", output_nodata=0
    )
    assert out.tolist() == [[0, 0, 14]]
    assert count == 1
    # A nodata value no uint8 can hold marks nothing.
    out, count, _ = evaluate(
        parse_expression("a * 2", ["a"]), [a], [-1], output_dtype="UInt16", output_nodata=0
    )
    assert out.tolist() == [[0, 510, 14]]
    assert count == 0


def test_nodata_of_an_input_not_read_comes_from_a_mapping():
    a = np.array([[1.0, 2.0]], np.float32)
    e = parse_expression('where(a > 1, nodata("b"), a)', ["a", "b"])
    out, _, _ = evaluate(e, [a], {"a": None, "b": 42.0})
    assert out.tolist() == [[1.0, 42.0]]
    with pytest.raises(ValueError, match="mapping"):
        evaluate(e, [a], [None])
    # Without a nodata value, nodata() is NaN, as in Remotior; NaN results are nodata.
    out, count, _ = evaluate(e, [a], {"a": None})
    assert out.tolist() == [[1.0, OUT_NODATA]]
    assert count == 1


def test_out_parameter_is_filled_and_returned():
    a = _tile(30, shape=(4, 6))
    buffer = np.empty((4, 6), np.float64)
    out, _, _ = evaluate(
        parse_expression("a + 1", ["a"]), [a], [None], output_dtype=np.float64, out=buffer
    )
    assert out is buffer
    np.testing.assert_array_equal(buffer, a.astype(np.float64) + 1)


def test_non_contiguous_tiles_are_read_correctly():
    a = _tile(31, shape=(10, 12))
    b = _tile(32, shape=(12, 10)).T
    out, _, _ = evaluate(
        parse_expression("a - b", ["a", "b"]), [a[:, :], b], [None, None], output_dtype="float64"
    )
    np.testing.assert_array_equal(out, a.astype(np.float64) - b)


def test_cache_returns_the_same_kernel_for_the_same_expression_and_dtypes():
    e1 = parse_expression("(x - y) * 3", ["x", "y"])
    e2 = parse_expression('("q" - "p") * 3', ["q", "p"])  # same tree, other names
    k1 = compile_kernel(e1, [np.float32, np.int16], "float32")
    k2 = compile_kernel(e2, ["float32", "int16"], np.float32)
    assert k1 is k2
    assert compile_kernel(e1, [np.float32, np.float32], "float32") is not k1
    info = kernel_cache_info()
    assert 0 < info["size"] <= info["maxsize"]


def test_cache_keys_nodata_constants():
    e = parse_expression('a + nodata("a")', ["a"])
    k1 = compile_kernel(e, [np.float32], nodata_values={"a": 1.0})
    k2 = compile_kernel(e, [np.float32], nodata_values={"a": 2.0})
    assert k1 is not k2
    assert compile_kernel(e, [np.float32], nodata_values={"a": 1.0}) is k1


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("Float32", "float32"),
        ("Float64", "float64"),
        ("Int16", "int16"),
        ("UInt16", "uint16"),
        ("Int32", "int32"),
        ("UInt32", "uint32"),
        ("Byte", "uint8"),
        ("UInt8", "uint8"),
        ("int8", "int8"),
        (np.float32, "float32"),
    ],
)
def test_normalize_dtype_accepts_numpy_and_remotior_names(name, dtype):
    assert normalize_dtype(name) == np.dtype(dtype)


def test_normalize_dtype_refuses_other_types():
    with pytest.raises(ValueError, match="unsupported output dtype"):
        normalize_dtype("complex64")
    with pytest.raises(ValueError, match="unsupported output dtype"):
        normalize_dtype(np.int64)


def test_output_nodata_must_fit_the_output_dtype():
    a = np.zeros((1, 1), np.float32)
    with pytest.raises(ValueError, match="does not fit"):
        evaluate(parse_expression("a", ["a"]), [a], [None], output_dtype="UInt8")


def test_mismatched_tiles_are_refused():
    e = parse_expression("a + b", ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        evaluate(e, [np.zeros((2, 2)), np.zeros((2, 3))], [None, None])
    with pytest.raises(ValueError, match="2 inputs"):
        evaluate(e, [np.zeros((2, 2))], [None])


def _numpy_statistics(out, nodata):
    """The reference: float64 copies of the valid pixels (not NaN, not equal to nodata)."""
    valid = ~np.isnan(out) if out.dtype.kind == "f" else np.ones(out.shape, bool)
    if not math.isnan(nodata):
        valid &= out != nodata
    values = out[valid].astype(np.float64)
    return values, int(out.size - values.size)


def _assert_statistics_match(stats, out, nodata):
    values, nodata_count = _numpy_statistics(out, nodata)
    assert stats.valid_pixel_count == values.size
    assert stats.nodata_pixel_count == nodata_count
    if values.size == 0:
        assert (stats.minimum, stats.maximum) == (math.inf, -math.inf)
        assert stats.mean == stats.sum_squared_deviations == 0.0
        return
    assert stats.minimum == values.min()
    assert stats.maximum == values.max()
    mean = values.mean()
    assert stats.mean == pytest.approx(mean, rel=1e-12, abs=1e-12)
    m2 = ((values - mean) ** 2).sum()
    assert stats.sum_squared_deviations == pytest.approx(m2, rel=1e-12, abs=1e-9)


@pytest.mark.parametrize(
    ("output_dtype", "output_nodata"),
    [
        ("float32", -32768.0),
        ("float32", math.nan),
        ("float64", 0.0),
        ("int16", -32768),
        ("uint8", 0),
        ("uint32", 4294967295),
    ],
)
def test_statistics_from_the_kernel_equal_numpy_on_the_written_values(output_dtype, output_nodata):
    rng = np.random.default_rng(41)
    a = rng.uniform(-400.0, 400.0, (67, 129)).astype(np.float32)
    b = rng.integers(0, 50, a.shape).astype(np.int16)
    a[rng.random(a.shape) < 0.05] = -9999.0
    a[3, :7] = np.nan
    # Division by zero (inf, NaN), results outside the integer ranges, and, through
    # where(b == 1, ...), results equal to the output nodata, which statistics exclude.
    nodata_literal = "nan" if math.isnan(output_nodata) else repr(float(output_nodata))
    e = parse_expression(f"where(b == 1, {nodata_literal}, a * 1000 / b)", ["a", "b"])
    out, written, stats = evaluate(
        e, [a, b], [-9999.0, 7], output_dtype=output_dtype, output_nodata=output_nodata
    )
    _assert_statistics_match(stats, out, float(output_nodata))
    assert 0 < written <= stats.nodata_pixel_count


def test_statistics_count_an_expression_value_equal_to_nodata_as_nodata():
    a = np.array([[1.0, 2.0, 3.0, -5.0]], np.float32)
    out, written, stats = evaluate(
        parse_expression("where(a > 2, -5, a)", ["a"]), [a], [-5.0], output_nodata=-5.0
    )
    assert out.tolist() == [[1.0, 2.0, -5.0, -5.0]]
    assert written == 1  # the nodata input; the -5 the expression gave is a value
    assert (stats.valid_pixel_count, stats.nodata_pixel_count) == (2, 2)
    assert (stats.minimum, stats.maximum, stats.mean) == (1.0, 2.0, 1.5)
    assert stats.sum_squared_deviations == 0.5


def test_statistics_of_an_all_nodata_tile_are_empty():
    a = np.full((3, 4), 7, np.uint16)
    _, written, stats = evaluate(parse_expression("a + 1", ["a"]), [a], [7])
    assert written == 12
    assert (stats.valid_pixel_count, stats.nodata_pixel_count) == (0, 12)
    assert (stats.minimum, stats.maximum, stats.mean, stats.sum_squared_deviations) == (
        math.inf,
        -math.inf,
        0.0,
        0.0,
    )


def test_statistics_stay_accurate_for_a_large_mean_and_a_small_spread():
    # Two-pass sums per row about the first valid value: no cancellation, no drift of the mean.
    rng = np.random.default_rng(5)
    a = (1e9 + rng.uniform(-1.0, 1.0, (300, 200))).astype(np.float64)
    out, _, stats = evaluate(parse_expression("a", ["a"]), [a], [None], output_dtype="float64")
    _assert_statistics_match(stats, out, -32768.0)


def test_tiles_split_among_threads_give_the_same_pixels_and_statistics():
    rng = np.random.default_rng(9)
    red = rng.integers(0, 3000, (1100, 600), dtype=np.uint16)
    nir = rng.integers(0, 6000, (1100, 600), dtype=np.uint16)
    e = parse_expression('("nir" - "red") / ("nir" + "red")', ["red", "nir"])
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one, one_written, one_stats = evaluate(e, [red, nir], [0, 0])
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        split, split_written, split_stats = evaluate(e, [red, nir], [0, 0])
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(split, one)
    assert split_written == one_written
    assert split_stats.valid_pixel_count == one_stats.valid_pixel_count
    assert (split_stats.minimum, split_stats.maximum) == (one_stats.minimum, one_stats.maximum)
    assert split_stats.mean == pytest.approx(one_stats.mean, rel=1e-12)
    assert split_stats.sum_squared_deviations == pytest.approx(
        one_stats.sum_squared_deviations, rel=1e-10
    )
    _assert_statistics_match(split_stats, split, -32768.0)


def test_read_only_inputs_and_a_non_contiguous_out_are_handled():
    a = _tile(33, shape=(6, 8))
    a.setflags(write=False)
    buffer = np.zeros((6, 16), np.float64)
    out, _, _ = evaluate(
        parse_expression("a * 2", ["a"]), [a], [None], output_dtype="float64", out=buffer[:, ::2]
    )
    np.testing.assert_array_equal(out, a.astype(np.float64) * 2)
    np.testing.assert_array_equal(buffer[:, ::2], a.astype(np.float64) * 2)
    assert not buffer[:, 1::2].any()


def test_a_long_and_chain_then_an_or_matches_numpy():
    a = _tile(34, shape=(9, 13), low=0.0, high=1.0)
    b = _tile(35, shape=(9, 13), low=0.0, high=1.0)
    terms = [f"({'a' if k % 2 else 'b'} > {k / 80})" for k in range(40)]
    e = parse_expression(" and ".join(terms) + " or a > 0.9", ["a", "b"])
    out, _, _ = evaluate(e, [a, b], [None, None], output_dtype="float64")
    expected = np.ones(a.shape, bool)
    for k in range(40):
        expected &= (a if k % 2 else b).astype(np.float64) > k / 80
    expected |= a.astype(np.float64) > 0.9
    np.testing.assert_array_equal(out, expected.astype(np.float64))


# Random arithmetic trees, evaluated by numpy from the test's own tree.

_OPS = ["+", "-", "*", "/", "//", "%", "<", ">=", "==", "min", "maximum", "where"]


def _trees(names):
    leaves = st.one_of(
        st.sampled_from(names).map(lambda n: ("in", n)),
        st.sampled_from([0.0, 1.0, -2.5, 3.0, 0.5]).map(lambda v: ("const", v)),
    )

    def extend(children):
        return st.one_of(
            st.tuples(st.sampled_from(_OPS), children, children, children),
            st.tuples(st.just("neg"), children),
            st.tuples(st.just("sqrt"), children),
        )

    return st.recursive(leaves, extend, max_leaves=8)


def _text(tree):
    kind = tree[0]
    if kind == "in":
        return f'"{tree[1]}"'
    if kind == "const":
        return repr(tree[1])
    if kind == "neg":
        return f"(-{_text(tree[1])})"
    if kind == "sqrt":
        return f"sqrt({_text(tree[1])})"
    op, x, y, z = tree
    if op == "min":
        return f"min({_text(x)}, {_text(y)})"
    if op == "maximum":
        return f"maximum({_text(x)}, {_text(y)})"
    if op == "where":
        return f"where({_text(x)}, {_text(y)}, {_text(z)})"
    return f"({_text(x)} {op} {_text(y)})"


def _numpy(tree, env):
    """The tree evaluated by numpy.ma, as Remotior evaluates band calc: domain errors
    (sqrt of a negative, division by zero) are masked, and masks flow through."""
    kind = tree[0]
    if kind == "in":
        return np.ma.masked_array(env[tree[1]])
    if kind == "const":
        return np.ma.masked_array(np.full_like(next(iter(env.values())), tree[1]))
    if kind == "neg":
        return -_numpy(tree[1], env)
    if kind == "sqrt":
        return np.ma.sqrt(_numpy(tree[1], env))
    op, x, y, z = tree
    a, b = _numpy(x, env), _numpy(y, env)
    if op == "where":
        return np.ma.where(a != 0, b, _numpy(z, env))
    table = {
        "+": np.ma.add,
        "-": np.ma.subtract,
        "*": np.ma.multiply,
        "/": np.ma.divide,
        "//": np.ma.floor_divide,
        "%": np.ma.remainder,
        "maximum": np.ma.maximum,
        "<": lambda p, q: (p < q).astype(np.float64),
        ">=": lambda p, q: (p >= q).astype(np.float64),
        "==": lambda p, q: (p == q).astype(np.float64),
        # An aggregation: its masked (and NaN) arguments left out, masked where all are.
        "min": lambda p, q: np.ma.masked_invalid(np.ma.stack([p, q])).min(axis=0),
    }
    return table[op](a, b)


_ENV_NAMES = ["a", "b", "c"]
_ENV = {
    "a": np.array([[0.0, 1.0, -1.0, 2.5], [7.0, -3.0, 0.5, 1e-3]], np.float32),
    "b": np.array([[0.0, -2.0, 3.0, 2.5], [-0.25, 4.0, 0.0, 100.0]], np.float32),
    "c": np.array([[1, 0, -5, 3], [2, 9, -1, 0]], np.int16),
}


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(_trees(_ENV_NAMES))
def test_random_arithmetic_matches_numpy(tree):
    text = _text(tree)
    e = parse_expression(text, _ENV_NAMES)
    tiles = [_ENV[n] for n in e.input_names]
    if not tiles:
        tiles, names = [_ENV["a"]], ("a",)
        e = parse_expression(f"{text} + 0 * a", _ENV_NAMES)
    names = e.input_names
    out, count, _ = evaluate(e, tiles, [None] * len(tiles), output_dtype="float64")
    env = {n: _ENV[n].astype(np.float64) for n in _ENV_NAMES}
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _numpy(tree, env)
    expected, expected_count = _finish(ref, np.zeros(ref.shape, bool), np.float64)
    np.testing.assert_array_equal(out, expected, err_msg=f"{text} over {names}")
    assert count == expected_count


def test_measure_compile_time_and_throughput_against_numpy():
    rng = np.random.default_rng(7)
    red = rng.uniform(0.0, 1.0, (4096, 4096)).astype(np.float32)
    nir = rng.uniform(0.0, 1.0, (4096, 4096)).astype(np.float32)
    # A text not used elsewhere, so the kernel is compiled here.
    e = parse_expression('("nir" - "red") / ("nir" + "red") * 1.0', ["red", "nir"])
    start = time.perf_counter()
    compile_kernel(e, [red.dtype, nir.dtype], np.float32)
    compile_seconds = time.perf_counter() - start
    out = np.empty(red.shape, np.float32)
    evaluate(e, [red, nir], [-9999.0, -9999.0], out=out)
    runs = 3
    start = time.perf_counter()
    for _ in range(runs):
        evaluate(e, [red, nir], [-9999.0, -9999.0], out=out)
    kernel_seconds = (time.perf_counter() - start) / runs

    def numpy_ndvi():
        r = red.astype(np.float64)
        n = nir.astype(np.float64)
        with np.errstate(all="ignore"):
            v = (n - r) / (n + r)
        bad = (red == -9999.0) | (nir == -9999.0) | ~np.isfinite(v)
        result = v.astype(np.float32)
        result[bad] = OUT_NODATA
        return result

    start = time.perf_counter()
    for _ in range(runs):
        ref = numpy_ndvi()
    numpy_seconds = (time.perf_counter() - start) / runs
    np.testing.assert_array_equal(out, ref)
    mpix = red.size / 1e6
    print(
        f"\nNDVI first compile {compile_seconds:.2f} s; 4096x4096 float32 pair: "
        f"kernel {kernel_seconds * 1e3:.0f} ms ({mpix / kernel_seconds:.0f} Mpx/s), "
        f"numpy {numpy_seconds * 1e3:.0f} ms ({mpix / numpy_seconds:.0f} Mpx/s), "
        f"ratio {numpy_seconds / kernel_seconds:.1f}x"
    )
