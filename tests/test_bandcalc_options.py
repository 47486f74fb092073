"""Band calc's calculation options (Remotior's calc_datatype, any_nodata_mask,
input_nodata_as_value, use_value_as_nodata, use_scale, use_offset): both ways of evaluating an
expression against numpy's masked arrays on float32, as Remotior computes, and against each
other.

The references keep every value float32: inputs are float32 masked arrays and constants
float32 scalars (numpy keeps an operation of float32 arrays and Python scalars in float32;
its masked arrays hold a Python scalar as a 0-d array, which NumPy 2 would widen, so the
references give the constants as float32 themselves)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rsgrpc_kernels.bandcalc import evaluate, normalize_calc_dtype
from rsgrpc_kernels.expression import parse_expression

METHODS = ("program", "fused")
NODATA = -32768.0
F = np.float32


def _inputs(shape=(23, 41), seed=5):
    """Three float32-typed inputs with nodata: a (-9999), b (NaN), c (int16, -1)."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-2.0, 3.0, shape).astype(np.float32)
    b = rng.normal(0.5, 1.5, shape).astype(np.float32)
    c = rng.integers(-1, 50, shape).astype(np.int16)
    a[rng.random(shape) < 0.1] = -9999.0
    b[rng.random(shape) < 0.1] = np.nan
    a[0, :4] = -9999.0
    b[0, 2:6] = np.nan
    c[0, 5:8] = -1
    return {"a": a, "b": b, "c": c}, {"a": -9999.0, "b": float("nan"), "c": -1.0}


def _masked(arrays, nodata, as_value=False, value_as_nodata=None):
    """Remotior's inputs: float32 masked arrays, masked where nodata (compared in the
    input's own type)."""
    out = {}
    for name, array in arrays.items():
        mask = np.zeros(array.shape, bool)
        value = nodata.get(name)
        if not as_value and value is not None:
            mask |= np.isnan(array) if np.isnan(value) else array == np.asarray(value, array.dtype)
        if value_as_nodata is not None:
            mask |= array == np.asarray(value_as_nodata).astype(array.dtype)
        out[name] = np.ma.array(array.astype(np.float32), mask=mask)
    return out


def _written(result, inputs, mode="any", dtype=np.float32, scale=None, offset=None, nodata=NODATA):
    """The output Remotior's rules give for a float32 masked ``result``: nodata where masked,
    where the inputs' masks say (``mode``), where not finite or not of the output type;
    else the value, scaled as Remotior's writer scales it."""
    result = np.ma.asarray(result).astype(np.float32)
    data = np.ma.getdata(result).copy()
    bad = np.ma.getmaskarray(result).copy()
    masks = [np.ma.getmaskarray(m) for m in inputs]
    if mode == "any":
        bad |= np.logical_or.reduce(masks)
    elif mode == "all":
        bad |= np.logical_and.reduce(masks)
    if scale is not None or offset is not None:
        s = 1.0 if scale is None else scale
        o = 0.0 if offset is None else offset
        with np.errstate(all="ignore"):
            data = np.subtract(np.divide(data, F(s)), F(o / s))
    bad |= ~np.isfinite(data)
    dtype = np.dtype(dtype)
    with np.errstate(all="ignore"):
        if dtype.kind == "f":
            out = np.where(bad, 0, data).astype(dtype)
            bad |= ~np.isfinite(out)
        else:
            info = np.iinfo(dtype)
            # rounded half away from zero, as GDAL writes floats into an integer band
            wide = data.astype(np.float64)
            wide = wide + np.copysign(0.5, wide)
            bad |= ~((wide > info.min - 1.0) & (wide < info.max + 1.0))
            out = np.trunc(np.where(bad, 0, wide)).astype(dtype)
    out[bad] = nodata
    return out


def _run(text, arrays, nodata, **options):
    """The expression evaluated both ways; they must agree pixel for pixel."""
    names = list(arrays)
    e = parse_expression(text, names)
    tiles = [arrays[n] for n in e.input_names]
    values = {n: nodata.get(n) for n in names}
    results = [
        evaluate(e, tiles, values, calc_dtype="float32", method=method, **options)
        for method in METHODS
    ]
    (program, program_count, _), (fused, fused_count, _) = results
    np.testing.assert_array_equal(program, fused, err_msg=f"program != fused for {text}")
    assert program_count == fused_count
    return program, [n for n in e.input_names]


REMOTIOR_STYLE = {
    # Remotior's scripts, in float32 masked arrays
    '("a" - "b") / ("a" + "b")': lambda m: (m["a"] - m["b"]) / (m["a"] + m["b"]),
    '"a" * 0.1 + "b" / 3': lambda m: m["a"] * F(0.1) + m["b"] / F(3),
    'where("a" > 0.3, 1, 0)': lambda m: np.ma.where(m["a"] > F(0.3), F(1), F(0)),
    'where(("a" >= 0.1) & ("b" < 0.7), "a" * "b", "c" - 2.5)': lambda m: np.ma.where(
        (m["a"] >= F(0.1)) & (m["b"] < F(0.7)), m["a"] * m["b"], m["c"] - F(2.5)
    ),
    'sqrt("a" * "a" + "b" * "b") - "c" / 7': lambda m: (
        np.ma.sqrt(m["a"] * m["a"] + m["b"] * m["b"]) - m["c"] / F(7)
    ),
    '"a" % 0.7 - "b" * "c"': lambda m: m["a"] % F(0.7) - m["b"] * m["c"],
    '"a" / ("b" - "b")': lambda m: m["a"] / (m["b"] - m["b"]),
    'min("a", "b", "c")': lambda m: np.ma.stack([m["a"], m["b"], m["c"]]).min(axis=0),
    'max("a", "b") * 2': lambda m: np.ma.stack([m["a"], m["b"]]).max(axis=0) * F(2),
}


@pytest.mark.parametrize("mode", ["any", "all", "none"])
@pytest.mark.parametrize("text", list(REMOTIOR_STYLE))
def test_remotior_style_expressions_equal_float32_masked_numpy(text, mode):
    arrays, nodata = _inputs()
    out, read = _run(text, arrays, nodata, nodata_mask=mode)
    masked = _masked(arrays, nodata)
    with np.errstate(all="ignore"):
        ref = REMOTIOR_STYLE[text](masked)
    expected = _written(ref, [masked[n] for n in read], mode)
    np.testing.assert_array_equal(out, expected, err_msg=text)


def test_float32_rounds_every_step_where_float64_does_not():
    # 16777217 is not a float32: in float32 "a" + 1 is 16777216 + 1 rounded back to 16777216.
    a = np.full((2, 3), 16777216, np.int32)
    e = parse_expression('("a" + 1) - "a"', ["a"])
    for method in METHODS:
        single, _, _ = evaluate(e, [a], [None], calc_dtype="Float32", method=method)
        double, _, _ = evaluate(e, [a], [None], calc_dtype=np.float64, method=method)
        assert single.tolist() == [[0.0] * 3] * 2
        assert double.tolist() == [[1.0] * 3] * 2


def test_a_threshold_at_float32s_rounding_edge_falls_as_in_float32():
    # float32(0.1) is above 0.1: compared in float32 it equals the constant, as numpy's
    # float32 arrays compare it; in float64 it is greater.
    a = np.array([[0.1, 0.2]], np.float32)
    e = parse_expression('where("a" > 0.1, 1, 0)', ["a"])
    for method in METHODS:
        single, _, _ = evaluate(e, [a], [None], calc_dtype="float32", method=method)
        double, _, _ = evaluate(e, [a], [None], calc_dtype="float64", method=method)
        assert single.tolist() == [[0.0, 1.0]]
        assert double.tolist() == [[1.0, 1.0]]
    assert (np.ma.array(a) > F(0.1)).tolist() == [[False, True]]


def test_any_all_and_none_mask_modes_differ_where_the_result_is_not_masked():
    # where() takes the mask of the side it picks: "b"'s nodata matters only in the
    # mode's own rule where the condition picks "a".
    a = np.array([[1.0, -1.0, 1.0, -9999.0]], np.float32)
    b = np.array([[np.nan, 5.0, 2.0, np.nan]], np.float32)
    arrays, nodata = {"a": a, "b": b}, {"a": -9999.0, "b": float("nan")}
    text = 'where("a" > 0, "a", "b")'
    got = {mode: _run(text, arrays, nodata, nodata_mask=mode)[0] for mode in ("any", "all", "none")}
    assert got["any"].tolist() == [[NODATA, 5.0, 1.0, NODATA]]
    assert got["all"].tolist() == [[1.0, 5.0, 1.0, NODATA]]
    assert got["none"].tolist() == [[1.0, 5.0, 1.0, NODATA]]
    # An aggregation leaves masked arguments out: only "any" makes a partial one nodata.
    text = 'mean("a", "b")'
    got = {mode: _run(text, arrays, nodata, nodata_mask=mode)[0] for mode in ("any", "all", "none")}
    assert got["any"].tolist() == [[NODATA, 2.0, 1.5, NODATA]]
    assert got["all"].tolist() == [[1.0, 2.0, 1.5, NODATA]]
    assert got["none"].tolist() == got["all"].tolist()


def test_input_nodata_as_value_reads_nodata_pixels_as_values():
    arrays, nodata = _inputs(seed=9)
    text = '"a" * 2 + "c"'
    out, read = _run(text, arrays, nodata, input_nodata_as_value=True)
    masked = _masked(arrays, nodata, as_value=True)
    expected = _written(masked["a"] * F(2) + masked["c"], [masked[n] for n in read])
    np.testing.assert_array_equal(out, expected)
    # -9999 * 2 + c is a value now, the NaN of "b" still not finite, so nodata
    assert (out[0, :4] != NODATA).all()
    out, _ = _run('"b" + 1', arrays, nodata, input_nodata_as_value=True)
    assert (out[np.isnan(arrays["b"])] == NODATA).all()


def test_nodata_of_stays_the_inputs_value_with_input_nodata_as_value():
    a = np.array([[5, -1, 7]], np.int16)
    e = parse_expression('where("a" == nodata("a"), 100, "a")', ["a"])
    for method in METHODS:
        out, _, _ = evaluate(
            e, [a], {"a": -1}, calc_dtype="float32", input_nodata_as_value=True, method=method
        )
        assert out.tolist() == [[5.0, 100.0, 7.0]]


@pytest.mark.parametrize("as_value", [False, True])
def test_value_as_nodata_is_nodata_in_every_input(as_value):
    arrays, nodata = _inputs(seed=11)
    arrays["c"][1, :6] = 7
    arrays["a"][2, :3] = 7
    text = '("a" + "c") / 2'
    out, read = _run(text, arrays, nodata, value_as_nodata=7, input_nodata_as_value=as_value)
    masked = _masked(arrays, nodata, as_value=as_value, value_as_nodata=7)
    expected = _written((masked["a"] + masked["c"]) / F(2), [masked[n] for n in read])
    np.testing.assert_array_equal(out, expected)
    assert (out[1, :6] == NODATA).all() and (out[2, :3] == NODATA).all()


@pytest.mark.parametrize(
    ("dtype", "scale", "offset"),
    [
        ("int16", 0.0001, None),
        ("int16", 0.0001, 0.5),
        ("uint16", 0.002, -1.0),
        ("int32", 1e-6, 3.0),
        ("float32", 0.01, None),
        ("float32", None, 2.25),
        ("float64", 3.0, 1.0),
    ],
)
def test_scale_and_offset_write_result_minus_offset_over_scale(dtype, scale, offset):
    arrays, nodata = _inputs(seed=13)
    text = '("a" - "b") / ("a" + "b" + 10)'
    e = parse_expression(text, ["a", "b"])
    out_nodata = 0 if dtype.startswith("u") else NODATA
    results = [
        evaluate(
            e,
            [arrays["a"], arrays["b"]],
            nodata,
            output_dtype=dtype,
            output_nodata=out_nodata,
            calc_dtype="float32",
            scale=scale,
            offset=offset,
            method=method,
        )[0]
        for method in METHODS
    ]
    np.testing.assert_array_equal(results[0], results[1])
    masked = _masked(arrays, nodata)
    with np.errstate(all="ignore"):
        ref = (masked["a"] - masked["b"]) / (masked["a"] + masked["b"] + F(10))
    expected = _written(ref, [masked["a"], masked["b"]], "any", dtype, scale, offset, out_nodata)
    np.testing.assert_array_equal(results[0], expected)
    # nodata pixels stay the output nodata, not scaled
    assert (results[0][0, :4] == out_nodata).all()


def test_scale_in_float64_divides_in_float64():
    a = np.array([[1.0, 2.0, -9999.0]], np.float64)
    e = parse_expression('"a" / 3', ["a"])
    for method in METHODS:
        out, _, _ = evaluate(
            e,
            [a],
            {"a": -9999.0},
            output_dtype="float64",
            calc_dtype="float64",
            scale=0.1,
            offset=0.2,
            method=method,
        )
        expected = [1.0 / 3 / 0.1 - 0.2 / 0.1, 2.0 / 3 / 0.1 - 0.2 / 0.1, NODATA]
        assert out.tolist() == [expected]


@pytest.mark.parametrize("scale", [0.0, float("nan"), float("inf")])
def test_a_scale_of_zero_or_not_finite_is_refused(scale):
    a = np.ones((1, 2), np.float32)
    with pytest.raises(ValueError, match="scale"):
        evaluate(parse_expression('"a"', ["a"]), [a], [None], scale=scale)


def test_calc_dtype_and_nodata_mask_are_checked():
    a = np.ones((1, 2), np.float32)
    e = parse_expression('"a"', ["a"])
    assert normalize_calc_dtype("Float32") == np.float32
    assert normalize_calc_dtype(np.float64) == np.float64
    with pytest.raises(ValueError, match="calculation dtype"):
        evaluate(e, [a], [None], calc_dtype="int16")
    with pytest.raises(ValueError, match="nodata mask"):
        evaluate(e, [a], [None], nodata_mask="some")


# Random expressions over the operations whose float32 result is exactly numpy's (IEEE
# operations of float32 operands, comparisons, where, min/max); masked values included.
_OPS = ["+", "-", "*", "/", "%", "<", ">=", "where", "min", "maximum"]


def _trees(names):
    leaves = st.one_of(
        st.sampled_from(names).map(lambda n: ("in", n)),
        st.sampled_from([0.0, 1.0, -2.5, 3.0, 0.1, 0.7]).map(lambda v: ("const", v)),
    )

    def extend(children):
        return st.one_of(
            st.tuples(st.sampled_from(_OPS), children, children, children),
            st.tuples(st.just("neg"), children),
            st.tuples(st.just("sqrt"), children),
        )

    return st.recursive(leaves, extend, max_leaves=7)


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
    if op in ("min", "maximum"):
        return f"{op}({_text(x)}, {_text(y)})"
    if op == "where":
        return f"where({_text(x)}, {_text(y)}, {_text(z)})"
    return f"({_text(x)} {op} {_text(y)})"


def _reference(tree, m):
    kind = tree[0]
    if kind == "in":
        return m[tree[1]]
    if kind == "const":
        return np.ma.array(np.full(next(iter(m.values())).shape, F(tree[1])))
    if kind == "neg":
        return -_reference(tree[1], m)
    if kind == "sqrt":
        return np.ma.sqrt(_reference(tree[1], m))
    op, x, y, z = tree
    a, b = _reference(x, m), _reference(y, m)
    if op == "where":
        return np.ma.where(a != 0, b, _reference(z, m))
    if op == "min":
        return np.ma.stack([a, b]).min(axis=0)
    if op == "maximum":  # numpy's maximum: NaN wins
        return np.ma.maximum(a, b)
    if op in ("<", ">="):
        result = a < b if op == "<" else a >= b
        return np.ma.asarray(result).astype(np.float32)
    return {"+": np.ma.add, "-": np.ma.subtract, "*": np.ma.multiply}.get(
        op, {"/": np.ma.divide, "%": np.ma.remainder}.get(op)
    )(a, b)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(_trees(["a", "b", "c"]), st.sampled_from(["any", "all", "none"]))
def test_random_expressions_equal_float32_masked_numpy(tree, mode):
    text = _text(tree)
    arrays, nodata = _inputs(shape=(9, 17), seed=len(text))
    e = parse_expression(text, list(arrays))
    if not e.input_names:  # a constant: read "a" too
        zero_a = ("*", ("const", 0.0), ("in", "a"), ("in", "a"))
        tree = ("+", tree, zero_a, ("in", "a"))
        text = _text(tree)
    out, read = _run(text, arrays, nodata, nodata_mask=mode)
    masked = _masked(arrays, nodata)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _reference(tree, masked)
    expected = _written(ref, [masked[n] for n in read], mode)
    np.testing.assert_array_equal(out, expected, err_msg=f"{text} ({mode})")


def test_functions_and_aggregations_are_float32_to_rounding():
    arrays, nodata = _inputs(seed=17)
    masked = _masked(arrays, nodata)
    cases = {
        'log("a") + exp("b" / 4)': lambda m: np.ma.log(m["a"]) + np.ma.exp(m["b"] / F(4)),
        'mean("a", "b", "c")': lambda m: np.ma.stack([m["a"], m["b"], m["c"]]).mean(axis=0),
        'sum("a", "b") ** 2': lambda m: np.ma.stack([m["a"], m["b"]]).sum(axis=0) ** F(2),
    }
    for text, reference in cases.items():
        out, read = _run(text, arrays, nodata)
        with np.errstate(all="ignore"):
            expected = _written(reference(masked), [masked[n] for n in read])
        np.testing.assert_array_equal(out == NODATA, expected == NODATA, err_msg=text)
        valid = out != NODATA
        np.testing.assert_allclose(out[valid], expected[valid], rtol=1e-6, atol=1e-6, err_msg=text)
