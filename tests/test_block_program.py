"""The block program that runs new band-calc expressions: the fused kernel's pixels, exactly."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rsgrpc_kernels import bandcalc
from rsgrpc_kernels.block_program import BLOCK, assemble
from rsgrpc_kernels.expression import parse_expression

_NAMES = ("a", "b", "c")
_INPUT_DTYPES = (
    "uint8",
    "int8",
    "uint16",
    "int16",
    "int32",
    "uint32",
    "int64",
    "float32",
    "float64",
)
_OUTPUT_DTYPES = sorted(d.name for d in bandcalc.OUTPUT_DTYPES)

_LEAVES = st.sampled_from(["a", "b", "c", "0", "1", "2.5", "-3", "1e300", "nan", 'nodata("b")'])
_UNARY = ("(-{})", "(not {})", "sqrt({})", "log({})", "abs({})", "sin({})", "exp({})", "isnan({})")
_BINARY = ("+", "-", "*", "/", "//", "%", "**", "<", "<=", "==", "!=", "and", "or", "&", "|")
_CALLS = ("minimum({}, {})", "maximum({}, {})", "median({}, {})", "std({}, {})", "max({}, {})")


def _expressions() -> st.SearchStrategy[str]:
    def extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.builds(lambda f, x: f.format(x), st.sampled_from(_UNARY), children),
            st.builds(
                lambda x, op, y: f"({x} {op} {y})", children, st.sampled_from(_BINARY), children
            ),
            st.builds(lambda f, x, y: f.format(x, y), st.sampled_from(_CALLS), children, children),
            st.builds(lambda c, x, y: f"where({c}, {x}, {y})", children, children, children),
            st.builds(
                lambda x, y, q: f"percentile({x}, {y}, a, {q})",
                children,
                children,
                st.integers(0, 100),
            ),
            st.builds(lambda x, y: f"({x} < {y} <= a != b)", children, children),
            st.builds(lambda x: f"clip({x}, -1, 100)", children),
        )

    return st.recursive(_LEAVES, extend, max_leaves=12)


def _tile(dtype: str, seed: int, shape: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        tile = rng.uniform(-300, 300, shape).astype(dtype)
        tile.flat[::17] = np.nan
        tile.flat[::23] = 0.0
        return tile
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -300), min(info.max, 300), shape, endpoint=True).astype(dtype)


def _both(expression, tiles, nodata, output_dtype, output_nodata):
    results = {}
    for method in ("program", "fused"):
        results[method] = bandcalc.evaluate(
            expression,
            tiles,
            nodata,
            output_dtype=output_dtype,
            output_nodata=output_nodata,
            method=method,
        )
    return results["program"], results["fused"]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    text=_expressions(),
    dtypes=st.lists(st.sampled_from(_INPUT_DTYPES), min_size=3, max_size=3),
    output_dtype=st.sampled_from(_OUTPUT_DTYPES),
    shape=st.sampled_from([(3, 5), (9, BLOCK + 7), (40, 33)]),
)
def test_a_program_gives_the_fused_kernels_pixels_and_statistics(text, dtypes, output_dtype, shape):
    expression = parse_expression(f"{text} + 0 * a", list(_NAMES))
    by_name = {
        n: _tile(d, seed, shape) for seed, (n, d) in enumerate(zip(_NAMES, dtypes, strict=True))
    }
    tiles = [by_name[n] for n in expression.input_names]
    nodata = {"a": 7, "b": None, "c": -3 if np.dtype(dtypes[2]).kind != "u" else 3}
    if np.dtype(dtypes[1]).kind == "f":
        nodata["b"] = math.nan
    output_nodata = 0.0 if np.dtype(output_dtype).kind == "u" else -1.0
    (out, written, stats), (ref, ref_written, ref_stats) = _both(
        expression, tiles, nodata, output_dtype, output_nodata
    )
    np.testing.assert_array_equal(out, ref, err_msg=text)
    assert written == ref_written
    assert (stats.valid_pixel_count, stats.minimum, stats.maximum) == (
        ref_stats.valid_pixel_count,
        ref_stats.minimum,
        ref_stats.maximum,
    )
    # Both NaN past float64's range (squares of values over 1e154): the same either way.
    assert stats.mean == pytest.approx(ref_stats.mean, rel=1e-12, abs=1e-12, nan_ok=True)
    assert stats.sum_squared_deviations == pytest.approx(
        ref_stats.sum_squared_deviations, rel=1e-9, abs=1e-9, nan_ok=True
    )


def test_no_instruction_writes_a_register_it_reads():
    names = [f"b{k}" for k in range(8)]
    text = " + ".join(
        f"where({n} > 2, sqrt({n}) * {k}, {n} < 1 < {k})" for k, n in enumerate(names)
    )
    program = assemble(parse_expression(f"median({text}, b0, 3) - b1 ** 2", names), {})
    for opcode, destination, a, b, c in program.code.tolist():
        reads = (a, b, c) if opcode != 32 else program.arguments[a : a + b].tolist()
        assert destination not in reads
        assert destination >= len(names)  # inputs are never written


def test_a_long_chain_needs_few_registers():
    names = ["a", "b"]
    text = " + ".join(f"(a * {k} - b / {k + 1})" for k in range(200))
    program = assemble(parse_expression(text, names), {})
    constants = len(program.constant_registers)
    assert program.register_count - len(names) - constants <= 4


def test_a_program_runs_the_rows_of_a_wide_tile_in_blocks_and_split_among_threads():
    a = _tile("uint16", 1, (700, 3 * BLOCK + 5))
    b = _tile("float32", 2, a.shape)
    expression = parse_expression("(a - b) / (a + b) + percentile(a, b, 1, 30)", ["a", "b"])
    (out, written, _), (ref, ref_written, _) = _both(
        expression, [a, b], [None, None], "float32", -9
    )
    np.testing.assert_array_equal(out, ref)
    assert written == ref_written > 0


def test_auto_runs_new_expressions_as_programs_and_compiles_no_kernel():
    bandcalc.clear_kernel_cache()
    a = _tile("int16", 3, (16, 16))
    expression = parse_expression("a * 3 - 1 > 2", ["a"])
    out, _, _ = bandcalc.evaluate(expression, [a], [None])
    assert bandcalc.kernel_cache_info()["size"] == 0
    np.testing.assert_array_equal(out, (a.astype(np.float64) * 3 - 1 > 2).astype(np.float32))
    with pytest.raises(ValueError, match="method"):
        bandcalc.evaluate(expression, [a], [None], method="eval")
