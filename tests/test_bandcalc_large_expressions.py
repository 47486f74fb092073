"""Band calc at the parser's limits: the largest and deepest expressions it accepts compile
and give numpy's pixels (each shape that once made compile time grow out of bounds); the
fused kernel at its own limit, past which an expression always runs as its block program."""

import operator

import numpy as np
import pytest
from rsgrpc_kernels import bandcalc
from rsgrpc_kernels.bandcalc import MAX_FUSED_OPERATIONS, evaluate
from rsgrpc_kernels.expression import MAX_ARGUMENTS, MAX_DEPTH, MAX_NODES, parse_expression

# Every test runs with both ways of evaluating an expression (see conftest.band_calc_method).
pytestmark = pytest.mark.usefixtures("band_calc_method")

OUT_NODATA = -32768.0
# The band calc service takes at most this many inputs.
MANY_INPUTS = 64


def _tiles(count, shape=(5, 7), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.5, 2.0, size=shape).astype(np.float32) for _ in range(count)]


def _as_written(values, dtype=np.float32):
    """Remotior's rule on a float64 result without masked inputs: not finite -> nodata."""
    with np.errstate(all="ignore"):
        out = np.where(np.isfinite(values), values, 0.0).astype(dtype)
    bad = ~np.isfinite(values) | ~np.isfinite(out)
    out[bad] = OUT_NODATA
    return out


def _most_terms(method, terms, operations_per_term=1):
    """The terms of a test's chain: ``terms``, or for the fused kernel as many as it fuses."""
    if method == "fused":
        return min(terms, MAX_FUSED_OPERATIONS // operations_per_term)
    return terms


def test_a_500_term_sum_equals_numpy_summing_left_to_right(band_calc_method):
    names = ["a", "b", "c"]
    tiles = _tiles(3)
    terms = [names[k % 3] for k in range(_most_terms(band_calc_method, 500))]
    e = parse_expression(" + ".join(terms), names)
    out, count, _ = evaluate(e, tiles, [None] * 3, output_dtype="float64")
    wide = {n: t.astype(np.float64) for n, t in zip(names, tiles, strict=True)}
    expected = wide[terms[0]].copy()
    for name in terms[1:]:
        expected = expected + wide[name]
    np.testing.assert_array_equal(out, expected)
    assert count == 0


@pytest.mark.parametrize(
    ("operators", "apply"),
    [
        (["+", "-"], {"+": operator.add, "-": operator.sub}),
        (["*", "/"], {"*": operator.mul, "/": operator.truediv}),
    ],
)
def test_the_longest_chain_the_size_limit_allows_equals_numpy(operators, apply, band_calc_method):
    names = ["a", "b", "c", "d"]
    tiles = _tiles(4, seed=1)
    wide = [t.astype(np.float64) for t in tiles]
    terms = _most_terms(band_calc_method, (MAX_NODES + 1) // 2)
    text = names[0]
    expected = wide[0].copy()
    for k in range(1, terms):
        op = operators[k % 2]
        text += f" {op} {names[k % 4]}"
        expected = apply[op](expected, wide[k % 4])
    e = parse_expression(text, names)
    out, _, _ = evaluate(e, tiles, [None] * 4, output_dtype="float64")
    np.testing.assert_array_equal(out, _as_written(expected, np.float64))


def test_the_longest_logical_chain_equals_numpy(band_calc_method):
    a, b = _tiles(2, seed=2)
    # Each term is a comparison and an operator (4 nodes, 2 operations); the last term is the
    # "|" one.
    terms = _most_terms(band_calc_method, (MAX_NODES - 4) // 4, 2) - 1
    thresholds = [0.5 + k / 1000 for k in range(terms)]
    text = "&".join(f"({'a' if k % 2 else 'b'}>{t:.3f})" for k, t in enumerate(thresholds))
    e = parse_expression(f"{text}|(a>1.9)", ["a", "b"])
    out, _, _ = evaluate(e, [a, b], [None, None], output_dtype="float64")
    expected = np.ones(a.shape, bool)
    for k, t in enumerate(thresholds):
        expected &= (a if k % 2 else b).astype(np.float64) > round(t, 3)
    expected |= a.astype(np.float64) > 1.9
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(out, expected.astype(np.float64))


def test_the_deepest_function_nesting_equals_numpy():
    (a,) = _tiles(1, seed=3)
    depth = MAX_DEPTH - 1
    e = parse_expression("sqrt(" * depth + "a" + ")" * depth, ["a"])
    out, _, _ = evaluate(e, [a], [None], output_dtype="float64")
    expected = a.astype(np.float64)
    for _ in range(depth):
        expected = np.sqrt(expected)
    np.testing.assert_array_equal(out, expected)


def test_the_deepest_where_nesting_equals_numpy():
    a, b = _tiles(2, seed=4)
    # Each where is one level and its condition's operands one more: the innermost operands
    # are on the last level allowed.
    levels = MAX_DEPTH - 2
    text = "b"
    for k in range(levels):
        text = f"where(a > {0.5 + k / levels}, {k}, {text})"
    e = parse_expression(text, ["a", "b"])
    out, _, _ = evaluate(e, [a, b], [None, None], output_dtype="float64")
    wide_a = a.astype(np.float64)
    expected = b.astype(np.float64)
    for k in range(levels):
        expected = np.where(wide_a > 0.5 + k / levels, k, expected)
    np.testing.assert_array_equal(out, expected)


def test_many_inputs_of_every_dtype_are_widened_and_masked_as_numpy_does():
    dtypes = [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.int64, np.uint64]
    dtypes += [np.float32, np.float64]
    rng = np.random.default_rng(5)
    names = [f"b{k}" for k in range(MANY_INPUTS)]
    tiles = []
    nodata = []
    for k in range(MANY_INPUTS):
        dtype = np.dtype(dtypes[k % len(dtypes)])
        tile = rng.integers(1, 100, size=(6, 9)).astype(dtype)
        tile[k % 6, k % 9] = 7  # each input has one nodata pixel of its own
        tiles.append(tile)
        nodata.append(7)
    text = " + ".join(f"{n} * {k + 1}" for k, n in enumerate(names))
    e = parse_expression(text, names)
    out, count, _ = evaluate(e, tiles, nodata, output_dtype="float64")
    expected = tiles[0].astype(np.float64) * 1
    for k in range(1, MANY_INPUTS):
        expected = expected + tiles[k].astype(np.float64) * (k + 1)
    masked = np.zeros(expected.shape, bool)
    for tile in tiles:
        masked |= tile == 7
    expected[masked] = OUT_NODATA
    np.testing.assert_array_equal(out, expected)
    assert count == int(masked.sum())


def test_many_aggregations_of_many_arguments_each_use_their_own_scratch():
    names = [f"b{k}" for k in range(MAX_ARGUMENTS)]
    tiles = _tiles(MAX_ARGUMENTS, seed=6)
    tiles[3][0, 0] = np.nan  # ignored by the aggregations, as numpy's nan* functions do
    args = ", ".join(names)
    e = parse_expression(
        f"mean({args}) - median({args}) + max({args}) * min({args}) "
        f"+ where(b0 > 1, std({args}), percentile({args}, 90))",
        names,
    )
    out, _, _ = evaluate(e, tiles, [None] * len(names), output_dtype="float64")
    stack = np.stack([t.astype(np.float64) for t in tiles])
    expected = (
        np.nanmean(stack, axis=0)
        - np.nanmedian(stack, axis=0)
        + np.nanmax(stack, axis=0) * np.nanmin(stack, axis=0)
        + np.where(stack[0] > 1, np.nanstd(stack, axis=0), np.nanpercentile(stack, 90, axis=0))
    )
    np.testing.assert_allclose(out, expected, rtol=1e-14, atol=0)


def test_chained_comparisons_nested_in_their_middle_operands_equal_numpy():
    a, b = _tiles(2, seed=7)
    text = "a"
    wide_a, wide_b = a.astype(np.float64), b.astype(np.float64)
    expected = wide_a
    for _ in range(20):
        text = f"b < ({text}) + 1 < a * 3"
        middle = expected + 1
        expected = ((wide_b < middle) & (middle < wide_a * 3)).astype(np.float64)
    e = parse_expression(text, ["a", "b"])
    out, _, _ = evaluate(e, [a, b], [None, None], output_dtype="float64")
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("count", [bandcalc._FUSED_INPUTS, bandcalc._FUSED_INPUTS + 1])
def test_expressions_fused_into_the_loop_or_called_from_it_give_the_same_pixels(count):
    names = [f"b{k}" for k in range(count)]
    tiles = _tiles(count, seed=8)
    tiles[1][2, 3] = -1.0  # nodata of input 1
    args = ", ".join(names)
    e = parse_expression(
        f"median({args}) + where(b0 > 1, b2 // 0.3, b3 % 0.7) + " + " * ".join(names), names
    )
    out, count_written, _ = evaluate(
        e, tiles, [None, -1.0] + [None] * (count - 2), output_dtype="float64"
    )
    wide = [t.astype(np.float64) for t in tiles]
    expected = np.median(np.stack(wide), axis=0) + np.where(
        wide[0] > 1, wide[2] // 0.3, wide[3] % 0.7
    )
    product = wide[0]
    for w in wide[1:]:
        product = product * w
    expected = expected + product
    expected[2, 3] = OUT_NODATA
    np.testing.assert_array_equal(out, expected)
    assert count_written == 1


def test_an_expression_too_large_to_fuse_runs_as_its_program_and_compiles_nothing(monkeypatch):
    names = ["a", "b"]
    tiles = _tiles(2, seed=9)
    text = " / ".join(names[k % 2] for k in range(MAX_FUSED_OPERATIONS + 2))
    e = parse_expression(text, names)
    with pytest.raises(ValueError, match="not fused"):
        bandcalc.evaluate(e, tiles, [None, None], method="fused")
    queued = []
    monkeypatch.setattr(bandcalc._COMPILER, "seen", lambda *args: queued.append(args))
    expected, _, _ = bandcalc.evaluate(e, tiles, [None, None], method="program")
    for _ in range(3):  # seen again and again: never queued for a compile
        out, _, _ = bandcalc.evaluate(e, tiles, [None, None], method="auto")
        np.testing.assert_array_equal(out, expected)
    assert queued == []
