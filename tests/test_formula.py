"""Parsing lme4 formulas without evaluating them."""

from __future__ import annotations

import pytest

from scvarpart.design import FormulaError, RandomTerm, parse_formula


@pytest.mark.parametrize(
    ("text", "fixed", "random"),
    [
        ("~ (1|g)", [], ["g"]),
        ("~ x + (1|g) + (1|h)", ["x"], ["g", "h"]),
        ("y ~ 1 + x + (1 | g)", ["x"], ["g"]),
        ("~ a*b + (1|g)", ["a", "b", "a:b"], ["g"]),
        ("~ a:b + (1|g)", ["a:b"], ["g"]),
        ("~ a/b + (1|g)", ["a", "a:b"], ["g"]),
        ("~ (a + b)*c - a:c + (1|g)", ["a", "b", "c", "b:c"], ["g"]),
        ("~ a*b*c + (1|g)", ["a", "b", "c", "a:b", "a:c", "b:c", "a:b:c"], ["g"]),
        ("~ (1|a/b)", [], ["a", "a:b"]),
        ("~ (1|a/b/c)", [], ["a", "a:b", "a:b:c"]),
        ("~ (1|batch:cask)", [], ["batch:cask"]),
        ("~ `my col` + (1|`sample id`)", ["my col"], ["sample id"]),
        ("~x+(1|g)", ["x"], ["g"]),
        ("~ log_umi.2 + (1|g_1)", ["log_umi.2"], ["g_1"]),
    ],
)
def test_parses(text, fixed, random):
    f = parse_formula(text)
    assert f.fixed_names == fixed
    assert f.random_names == random
    assert f.intercept


def test_response_and_variables():
    f = parse_formula("angle ~ recipe + temp + (1 | recipe:replicate)")
    assert f.response == "angle"
    assert f.variables == ["recipe", "temp", "replicate"]
    assert f.random == (RandomTerm(("recipe", "replicate")),)


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("~ (x|g)", [RandomTerm(("g",), ("x",))]),
        ("~ (1 + x + z|g)", [RandomTerm(("g",), ("x", "z"))]),
        ("~ (0 + x|g)", [RandomTerm(("g",), ("x",), False)]),
        ("~ (x - 1|g)", [RandomTerm(("g",), ("x",), False)]),
        ("~ (x||g)", [RandomTerm(("g",)), RandomTerm(("g",), ("x",), False)]),
        (
            "~ (x + z||g)",
            [
                RandomTerm(("g",)),
                RandomTerm(("g",), ("x",), False),
                RandomTerm(("g",), ("z",), False),
            ],
        ),
        ("~ (0 + x||g)", [RandomTerm(("g",), ("x",), False)]),
        ("~ (x|a/b)", [RandomTerm(("a",), ("x",)), RandomTerm(("a", "b"), ("x",))]),
        ("~ (1|g) + (0 + x|g)", [RandomTerm(("g",)), RandomTerm(("g",), ("x",), False)]),
    ],
)
def test_random_slopes_parse_as_lme4_expands_them(text, terms):
    assert list(parse_formula(text).random) == terms


def test_random_term_names_and_text():
    (a, b) = parse_formula("~ (time||patient)").random
    assert (a.name, b.name) == ("patient", "patient.time")
    assert (a.text, b.text) == ("(1|patient)", "(0 + time|patient)")
    (c,) = parse_formula("~ (time|patient)").random
    assert (c.name, c.coefficients, c.text) == (
        "patient",
        ("(Intercept)", "time"),
        "(1 + time|patient)",
    )
    assert parse_formula("~ (time|patient)").variables == ["patient", "time"]


@pytest.mark.parametrize("text", ["~ 0 + x + (1|g)", "~ x - 1 + (1|g)", "~ -1 + x + (1|g)"])
def test_intercept_removal_is_recognised(text):
    assert parse_formula(text).intercept is False


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("~ (0|g)", "needs a covariate"),
        ("~ (x:z|g)", "only be a sum of 1, 0 and column names"),
        ("~ (x + x|g)", "appears twice in a random term"),
        ("~ (x +|g)", "ends with an operator"),
        ("~ (1|g) + (x|g)", "both give 'g' a random intercept"),
        ("~ (x|g) + (x|g)", "appears twice"),
        ("~ log(x) + (1|g)", "never evaluated"),
        ("~ __import__('os').system('echo hi') + (1|g)", "never evaluated"),
        ("~ x +", "ends where a term was expected"),
        ("x", "Expected '~'"),
        ("~ (1|g) + (1|g)", "appears twice"),
        ("~ (1|a) + (1|a/b)", "appears twice"),
        ("~ x:(1|g)", "cannot combine a random term"),
        ("~ 2*x + (1|g)", "only 0 and 1"),
        ("~ x + (1|)", "grouping factor"),
        ("~ x + (1|g", "Expected '\\)'"),
        ("~ x ^ 2", "Unexpected"),
        ("y ~ y + (1|g)", "also appears"),
    ],
)
def test_errors(text, match):
    with pytest.raises(FormulaError, match=match):
        parse_formula(text)


def test_error_points_at_the_problem():
    with pytest.raises(FormulaError) as err:
        parse_formula("~ x + log(z) + (1|g)")
    lines = str(err.value).splitlines()
    assert lines[1].strip() == "~ x + log(z) + (1|g)"
    assert lines[2].index("^") - lines[1].index("~") == len("~ x + ")


def test_not_a_string():
    with pytest.raises(FormulaError, match="must be a string"):
        parse_formula(None)
