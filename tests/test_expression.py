"""Band calc expression parsing: what is accepted, and where each rejection points."""

import math

import pytest
from rsgrpc_kernels.expression import (
    MAX_DEPTH,
    MAX_NODES,
    MAX_TEXT_LENGTH,
    Call,
    Chain,
    Comparison,
    Constant,
    ExpressionError,
    Input,
    NodataOf,
    parse_expression,
)

NAMES = ["red", "nir", "swir", "band #1", "é"]


def test_quoted_and_bare_names_are_the_same_input():
    quoted = parse_expression('("nir" - "red") / ("nir" + "red")', NAMES)
    bare = parse_expression("(nir - red) / (nir + red)", NAMES)
    assert quoted.root == bare.root
    assert quoted.canonical == bare.canonical


def test_input_names_are_the_used_inputs_in_caller_order():
    e = parse_expression('"swir" + "red" * "swir"', NAMES)
    assert e.input_names == ("red", "swir")
    product = Chain(Input("red", 0), (("*", Input("swir", 1)),))
    assert e.root == Chain(Input("swir", 1), (("+", product),))


def test_quoted_names_may_be_any_text():
    e = parse_expression('"band #1" * 2', NAMES)
    assert e.input_names == ("band #1",)


def test_nodata_reads_metadata_not_pixels():
    e = parse_expression('where("nir" == nodata("red"), 0, "nir")', NAMES)
    assert e.input_names == ("nir",)
    assert e.nodata_names == ("red",)
    assert e.root.args[0] == Comparison(Input("nir", 0), (("==", NodataOf("red")),))


def test_canonical_form_ignores_names_and_spacing():
    a = parse_expression("(nir-red)/(nir+red)", ["red", "nir"])
    b = parse_expression(' ( "b" - "a" ) / ( "b" + "a" ) ', ["a", "b"])
    assert a.canonical == b.canonical


def test_chained_comparison_keeps_each_operand_once():
    e = parse_expression("0 < red <= 1", NAMES)
    assert e.root == Comparison(Constant(0.0), (("<", Input("red", 0)), ("<=", Constant(1.0))))


def test_bitwise_and_logical_operators_mean_the_same():
    a = parse_expression("(red > 1) & (nir > 1) | ~(swir > 1)", NAMES)
    b = parse_expression("(red > 1) and (nir > 1) or not (swir > 1)", NAMES)
    assert a.root == b.root


def test_nan_is_a_constant():
    e = parse_expression("where(red > 0, red, nan)", NAMES)
    assert math.isnan(e.root.args[2].value)


def test_percentile_takes_q_last():
    e = parse_expression('percentile("red", "nir", "swir", 25)', NAMES)
    assert isinstance(e.root, Call)
    assert e.root.q == 25.0
    assert len(e.root.args) == 3


def test_remotior_list_form_of_aggregations_is_accepted():
    a = parse_expression('max(["red", "nir"], axis = 0)', NAMES)
    b = parse_expression('max("red", "nir")', NAMES)
    assert a.root == b.root
    c = parse_expression('percentile(["red", "nir"], 90, axis=0)', NAMES)
    assert c.root == parse_expression("percentile(red, nir, 90)", NAMES).root


def test_leading_whitespace_and_newlines_inside_brackets_are_fine():
    e = parse_expression("  (red +\n   nir)", NAMES)
    assert e.input_names == ("red", "nir")


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("nir + red.real", 10, "attribute"),
        ("red.__class__", 4, "attribute"),
        ("1 + red[0]", 4, "subscript"),
        ('__import__("os")', 0, "'__import__' is not allowed"),
        ("open(red)", 0, "'open' is not allowed"),
        ("1 + (lambda x: x)(red)", 5, "lambda"),
        ("lambda: 1", 0, "lambda"),
        ("sum([x for x in red])", 4, "comprehension"),
        ("sum(x for x in red)", 3, "generator"),
        ('f"{red}"', 0, "f-string"),
        ("max(*red)", 4, "starred"),
        ("sqrt(red, where=1)", 10, "keyword"),
        ("where(red > 0, x=1, y=2)", 15, "keyword"),
        ("max(red, axis=1)", 9, "axis=0"),
        ("red + nir2", 6, 'available inputs: "red", "nir"'),
        ('"red" + "nri"', 8, 'unknown input "nri"'),
        ('nodata("blue")', 7, 'unknown input "blue"'),
        ("(red + 1", 0, "never closed"),
        ("red + 1)", 7, "unmatched"),
        ("red +", 5, "syntax"),
        ("red ** 2000", 7, "exponent"),
        ("red ** -1025", 7, "exponent"),
        ("red ** 2 ** 3", 7, "exponent"),
        ("red ** (nir ** 2)", 8, "exponent"),
        ("red if nir else swir", 0, "where(c, a, b)"),
        ("red ^ nir", 4, "'^'"),
        ("red << 2", 4, "'<<'"),
        ("red is nir", 4, "'is'"),
        ("(red) in nir", 6, "'in'"),
        ("1j + red", 0, "complex"),
        ("b'x' + red", 0, "bytes"),
        ("nan(red)", 0, "'nan' is not allowed"),
        ("sqrt", 0, "must be called"),
        ("where(red, nir)", 0, "3 arguments"),
        ("percentile(red, 101)", 16, "0 to 100"),
        ("percentile(red, nir)", 16, "0 to 100"),
        ("red := 1", 4, "syntax"),
        ('"é" + foo', 6, "'foo'"),
        ("red +\n  nir", 5, "syntax"),
        ("(red +\n  bogus)", 9, "'bogus'"),
        ("", 0, "empty"),
        ("red[", 3, "never closed"),
    ],
)
def test_rejected_construct_reports_its_position(text, position, words):
    with pytest.raises(ExpressionError) as info:
        parse_expression(text, NAMES)
    assert info.value.position == position, str(info.value)
    assert words in str(info.value)


def test_error_carries_line_and_column():
    with pytest.raises(ExpressionError) as info:
        parse_expression("(red +\n  bogus)", NAMES)
    assert (info.value.line, info.value.column) == (2, 3)


def test_error_is_a_value_error():
    assert issubclass(ExpressionError, ValueError)


def test_bracket_nesting_beyond_the_bound_is_refused_before_parsing():
    text = "(" * (MAX_DEPTH + 1) + "red" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(ExpressionError) as info:
        parse_expression(text, NAMES)
    assert info.value.position == MAX_DEPTH
    # Brackets inside quoted names do not count.
    parse_expression('"' + "(" * 200 + '" + 1', ["(" * 200])


def test_nesting_bound_holds_without_brackets():
    with pytest.raises(ExpressionError) as info:
        parse_expression("-" * 100 + "red", NAMES)
    assert info.value.position == MAX_DEPTH
    assert "nests" in str(info.value)


def test_nesting_that_breaks_the_python_parser_is_an_expression_error():
    with pytest.raises(ExpressionError) as info:
        parse_expression("-" * 9_000 + "red", NAMES)
    assert info.value.position == 0


def test_text_longer_than_the_bound_is_refused():
    text = "red+" * (MAX_TEXT_LENGTH // 4) + "red"
    with pytest.raises(ExpressionError) as info:
        parse_expression(text, NAMES)
    assert info.value.position == MAX_TEXT_LENGTH
    assert "characters" in str(info.value)


def test_too_many_terms_are_refused():
    term = "r"
    for _ in range(10):  # a balanced tree of 1024 leaves, shallow but large
        term = f"({term}+{term})"
    with pytest.raises(ExpressionError) as info:
        parse_expression(term, ["r"])
    assert f"more than {MAX_NODES} terms" in str(info.value)


def test_a_long_sum_is_one_level_deep():
    e = parse_expression(" + ".join(["red"] * 500), NAMES)
    assert isinstance(e.root, Chain)
    assert e.root.steps == (("+", Input("red", 0)),) * 499


def test_operators_of_one_precedence_level_make_one_chain():
    e = parse_expression("red + nir - swir + 1 - red", NAMES)
    assert e.root.first == Input("red", 0)
    assert [op for op, _ in e.root.steps] == ["+", "-", "+", "-"]
    e = parse_expression("red * nir / swir // 2 % 3", NAMES)
    assert [op for op, _ in e.root.steps] == ["*", "/", "//", "%"]
    # "&" and "and" mean the same, and so do "|" and "or": one chain each.
    e = parse_expression("(red > 0) & (nir > 0) and (swir > 0)", NAMES)
    assert [op for op, _ in e.root.steps] == ["and", "and"]
    e = parse_expression("(red > 0) | (nir > 0) or (swir > 0)", NAMES)
    assert [op for op, _ in e.root.steps] == ["or", "or"]


def test_a_chain_inside_another_keeps_its_grouping():
    e = parse_expression("red - (nir - swir) * 2", NAMES)
    assert e.canonical == "($0 - (($1 - $2) * 2.0))"


@pytest.mark.parametrize("operator", ["+", "-", "*", "/", "and", "or", "&", "|"])
def test_chains_as_long_as_the_size_limit_allows_are_accepted(operator):
    terms = (MAX_NODES + 1) // 2  # terms + operators = MAX_NODES
    e = parse_expression(f" {operator} ".join(["red"] * terms), NAMES)
    assert len(e.root.steps) == terms - 1
    with pytest.raises(ExpressionError) as info:
        parse_expression(f" {operator} ".join(["red"] * (terms + 1)), NAMES)
    assert f"more than {MAX_NODES} terms" in str(info.value)


def test_size_limit_error_points_at_the_first_term_past_it():
    text = "1 + " * (MAX_NODES // 2) + "red"  # the operator before "red" is term MAX_NODES
    with pytest.raises(ExpressionError) as info:
        parse_expression(text, NAMES)
    assert info.value.position == text.index("red")
    parse_expression(text[: -len(" + red")], NAMES)  # two terms fewer is fine


def test_a_chain_too_long_for_pythons_parser_is_refused_as_too_many_terms():
    text = "r+" * 4_999 + "r"  # within the text limit; Python's parser may give up first
    with pytest.raises(ExpressionError) as info:
        parse_expression(text, ["r"])
    assert f"more than {MAX_NODES} terms" in str(info.value)


def test_function_nesting_up_to_the_limit_is_accepted():
    # The outermost call is level 1 and the input inside MAX_DEPTH - 1 calls is the last level.
    depth = MAX_DEPTH - 1
    e = parse_expression("sqrt(" * depth + "red" + ")" * depth, NAMES)
    assert str(e.root).count("sqrt") == depth


def test_function_nesting_past_the_limit_says_where_and_what_the_limit_is():
    depth = MAX_DEPTH
    text = "sqrt(" * depth + "red" + ")" * depth
    with pytest.raises(ExpressionError) as info:
        parse_expression(text, NAMES)
    assert info.value.position == text.index("red")
    assert f"nests more than {MAX_DEPTH} levels deep" in str(info.value)


def test_nested_where_past_the_limit_is_refused():
    text = "red"
    for k in range(MAX_DEPTH):
        text = f"where(nir > {k}, {k}, {text})"
    with pytest.raises(ExpressionError) as info:
        parse_expression(text, NAMES)
    assert f"more than {MAX_DEPTH} levels" in str(info.value)


def test_chained_comparisons_nested_in_their_middle_operands_stay_linear():
    text = "red"
    for _ in range(30):
        text = f"red < ({text}) < nir"
    e = parse_expression(text, NAMES)
    assert len(e.canonical) < 50 * len(text)


def test_huge_integer_literal_is_refused():
    with pytest.raises(ExpressionError) as info:
        parse_expression("red + " + "9" * 400, NAMES)
    assert info.value.position == 6
    with pytest.raises(ExpressionError):
        parse_expression("red + " + "9" * 5000, NAMES)


def test_duplicate_input_names_are_refused():
    with pytest.raises(ValueError, match="unique"):
        parse_expression("a", ["a", "a"])


def test_non_string_text_is_a_type_error():
    with pytest.raises(TypeError):
        parse_expression(b"red", NAMES)  # type: ignore[arg-type]
