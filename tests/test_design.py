"""Model matrices follow R's model.matrix coding."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import read_reference_csv

from scvarpart.design import DesignError, association, build_design, nesting, within


@pytest.fixture
def obs():
    rng = np.random.default_rng(0)
    n = 60
    return pd.DataFrame(
        {
            "a": pd.Categorical(
                np.tile(["lo", "mid", "hi"], n // 3), categories=["lo", "mid", "hi"]
            ),
            "b": np.repeat(["u", "v"], n // 2),
            "x": rng.normal(size=n),
            "g": pd.Categorical(rng.integers(0, 6, n)),
            "flag": np.tile([True, False], n // 2),
        }
    )


def test_treatment_contrasts_use_category_order(obs):
    d = build_design("~ a + x + (1|g)", obs)
    assert d.columns == ["(Intercept)", "amid", "ahi", "x"]
    np.testing.assert_array_equal(d.X[:3, 1:3], [[0, 0], [1, 0], [0, 1]])
    assert list(d.fixed_terms) == ["a", "x"]
    np.testing.assert_array_equal(d.fixed_terms["a"], [1, 2])


def test_strings_and_booleans_are_categorical(obs):
    d = build_design("~ b + flag + (1|g)", obs)
    assert d.columns == ["(Intercept)", "bv", "flagTrue"]


def test_interaction_columns_as_r_names_them(obs):
    d = build_design("~ a*b + (1|g)", obs)
    assert d.columns == ["(Intercept)", "amid", "ahi", "bv", "amid:bv", "ahi:bv"]
    np.testing.assert_array_equal(d.X[:, 4], d.X[:, 1] * d.X[:, 3])


def test_nesting_codes_the_outer_factor_fully(obs):
    # R: a + a:x gives one slope per level of a
    d = build_design("~ a/x + (1|g)", obs)
    assert d.columns == ["(Intercept)", "amid", "ahi", "alo:x", "amid:x", "ahi:x"]


def test_cake_matches_r_model_matrix():
    frame = read_reference_csv("cake")
    d = build_design("angle ~ recipe + temp + (1 | recipe:replicate)", frame)
    assert d.columns == ["(Intercept)", "recipeB", "recipeC", "temp"]
    (f,) = d.factors
    assert f.name == "recipe:replicate" and f.n_levels == 45
    assert (f.counts == 6).all()


def test_grouping_interaction_uses_observed_combinations(obs):
    d = build_design("~ (1|a:b)", obs)
    (f,) = d.factors
    assert f.n_levels == 6
    assert set(f.levels) == {f"{a}:{b}" for a in ["lo", "mid", "hi"] for b in "uv"}
    labels = obs["a"].astype(str) + ":" + obs["b"]
    np.testing.assert_array_equal(f.levels[f.codes], labels)


def test_unused_categories_are_dropped(obs):
    obs["g"] = obs["g"].cat.add_categories([99, 100])
    (f,) = build_design("~ (1|g)", obs).factors
    assert f.n_levels == 6 and f.counts.min() > 0


def test_components_order(obs):
    d = build_design("~ x + a + (1|g) + (1|b)", obs)
    assert d.components == ["g", "b", "x", "a", "Residual"]


def test_missing_values_drop_rows_with_a_count(obs):
    obs.loc[[1, 5], "x"] = np.nan
    obs["g"] = obs["g"].astype(object)
    obs.loc[7, "g"] = None
    with pytest.warns(UserWarning, match=r"Dropping 3 of 60 .*'x' \(2\), 'g' \(1\)"):
        d = build_design("~ x + (1|g)", obs)
    assert d.n_obs == 57 and d.keep.sum() == 57 and not d.keep[[1, 5, 7]].any()


@pytest.mark.parametrize(
    ("formula", "match"),
    [
        ("~ x + (1|nope)", r"\['nope'\] used in the formula are not in"),
        ("~ 0 + x + (1|g)", "no intercept"),
        ("~ x", "no random term"),
        ("~ x + (1|g) + (1|g2)", r"\['g2'\]"),
    ],
)
def test_design_errors(obs, formula, match):
    with pytest.raises(DesignError, match=match):
        build_design(formula, obs)


def test_rank_deficiency_names_the_columns(obs):
    obs["x2"] = 2 * obs["x"]
    with pytest.raises(DesignError, match=r"rank deficient.*\['x2'\]"):
        build_design("~ x + x2 + (1|g)", obs)
    obs["c"] = 3.0
    with pytest.raises(DesignError, match=r"rank deficient.*\['c'\]"):
        build_design("~ c + (1|g)", obs)


def test_single_level_and_saturated_factors(obs):
    obs["one"] = "same"
    with pytest.raises(DesignError, match="single level"):
        build_design("~ (1|one)", obs)
    obs["cell"] = np.arange(len(obs)).astype(str)
    with pytest.raises(DesignError, match="different level for every observation"):
        build_design("~ (1|cell)", obs)


def test_identical_groupings_are_rejected(obs):
    obs["g_copy"] = obs["g"].cat.rename_categories(lambda c: f"copy{c}")
    with pytest.raises(DesignError, match="define the same groups"):
        build_design("~ (1|g) + (1|g_copy)", obs)


def test_fixed_and_random_at_once(obs):
    with pytest.raises(DesignError, match="both a fixed effect and the grouping factor"):
        build_design("~ b + (1|b)", obs)


def test_too_few_observations():
    small = pd.DataFrame({"g": list("aabb"), "x": [0.0, 1.0, 2.0, 4.0]})
    with pytest.raises(DesignError, match="too few"):
        build_design("~ x + (1|g)", small)


def test_float_grouping_column_warns(obs):
    obs["depth"] = np.random.default_rng(1).normal(size=len(obs)) + 10
    obs = pd.concat([obs, obs], ignore_index=True)  # levels < observations
    with pytest.warns(UserWarning, match=r"'depth' is a float column .*'\+ depth'"):
        build_design("~ (1|depth)", obs)


@pytest.mark.parametrize(
    ("values", "warns"),
    [
        (np.arange(60) % 20 * 0.25 + 0.5, True),  # a float measurement with 20 values
        (np.array([0.1, 0.2]).repeat(30), True),  # even with few values
        (200 + 3 * np.arange(60), True),  # a count: 60 values from 200 to 377
        (np.arange(60) % 55, False),  # codes 0..54
        (np.arange(60) % 55 + 1, False),  # codes 1..55
        (np.arange(60) % 20 * 7, False),  # few whole numbers
    ],
    ids=["float-many", "float-few", "count", "codes-0", "codes-1", "few-whole"],
)
def test_numeric_grouping_columns(obs, values, warns):
    obs["v"] = values
    if warns:
        with pytest.warns(UserWarning, match=r"'v' is a .*\(1\|v\) makes each value a level"):
            build_design("~ (1|v)", obs, check=False)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            build_design("~ (1|v)", obs, check=False)


def test_infinite_covariate(obs):
    obs.loc[3, "x"] = np.inf
    with pytest.raises(DesignError, match="'x' has infinite values"):
        build_design("~ x + (1|g)", obs)


def test_rows_restrict_the_observations(obs):
    rows = np.arange(len(obs)) % 3 != 0
    d = build_design("~ x + (1|g)", obs, rows=rows)
    np.testing.assert_array_equal(d.keep, rows)
    assert d.n_obs == rows.sum()
    np.testing.assert_array_equal(d.X[:, 1], obs.loc[rows, "x"])
    obs.loc[1, "x"] = np.nan  # missing values inside the selection are dropped too
    with pytest.warns(UserWarning, match="Dropping 1 of 40"):
        d = build_design("~ x + (1|g)", obs, rows=rows)
    assert not d.keep[1] and d.keep.sum() == rows.sum() - 1
    with pytest.raises(DesignError, match="selects no observation"):
        build_design("~ x + (1|g)", obs, rows=np.zeros(len(obs), dtype=bool))


def test_single_level_categorical_fixed_effect(obs):
    obs["tissue"] = "blood"
    with pytest.raises(DesignError, match=r"'tissue' has a single level \('blood'\)"):
        build_design("~ tissue + (1|g)", obs)
    with pytest.raises(DesignError, match=r"'b' has a single level \('u'\).*cell selection"):
        build_design("~ b + (1|g)", obs, rows=(obs["b"] == "u").to_numpy())


def test_no_observations(obs):
    with pytest.raises(DesignError, match=r"no observations \(0 cells\)"):
        build_design("~ x + (1|g)", obs.iloc[:0])


@pytest.fixture
def donors():
    """12 subjects with an age and a gender; cells under two conditions at 5 times."""
    rng = np.random.default_rng(2)
    subject = np.repeat(np.arange(12), 20)
    return pd.DataFrame(
        {
            "subject": pd.Categorical(subject),
            "age": rng.uniform(20, 80, 12)[subject],
            "gender": np.array(["F", "M"])[np.arange(12) % 2][subject],
            "condition": np.tile(["ctrl", "stim"], 120),
            "hours": np.tile(["0", "2", "4", "8", "24"], 48),
            "library": pd.Categorical(subject * 2 + np.tile([0, 1], 120)),
        }
    )


def test_within_tells_subject_level_covariates(donors):
    d = build_design("~ age + gender + condition + (1|subject) + (1|hours)", donors)
    table = within(d)
    assert table.columns.tolist() == ["subject", "hours"]
    assert table.index.tolist() == ["subject", "hours", "age", "gender", "condition"]
    assert table.loc["age", "subject"] and table.loc["gender", "subject"]
    assert not table.loc["condition"].any() and not table["hours"].any()
    # strongly associated, as canCorPairs says, but within subject: not confounded
    assert association(d).loc["age", "subject"] > 0.99


def test_within_is_not_sameness(donors):
    """A covariate with as much information as the grouping (the same groups) is not
    within it, and a 2-level factor's covariate fills it."""
    donors["code"] = donors["subject"].astype(str)
    d = build_design("~ code + (1|subject) + (1|hours)", donors, check=False)
    assert not within(d).loc["code", "subject"]
    donors["sex_group"] = donors["gender"]
    donors["sex_score"] = np.where(donors["gender"] == "F", 0.3, 1.7)
    d = build_design("~ sex_score + (1|sex_group) + (1|hours)", donors, check=False)
    assert not within(d).loc["sex_score", "sex_group"]


def test_nesting_of_grouping_factors(donors):
    d = build_design("~ (1|subject) + (1|library) + (1|hours)", donors)
    table = nesting(d)
    assert table.loc["library", "subject"]
    assert not table.loc["subject", "library"] and not table["hours"].any()


def test_grouping_factor_separated_by_the_fixed_effects_is_rejected():
    """Sites that the fixed effect `arm` determines (one site per arm) have no
    variance of their own to estimate."""
    frame = pd.DataFrame(
        {
            "arm": pd.Categorical(list("aabbcc") * 3),
            "site": pd.Categorical(list("xxyyzz") * 3),  # one site per arm
            "plate": pd.Categorical(list("pqrpqr") * 3),
        }
    )
    with pytest.raises(DesignError, match=r"levels of 'site' are determined by the fixed"):
        build_design("~ arm + (1|site) + (1|plate)", frame)
    build_design("~ arm + (1|plate)", frame)  # the plates cut across the arms: fine


def test_design_that_fits_every_observation_is_rejected():
    """8 observations, 5 + 4 levels crossed: intercept and indicators have rank 8,
    so no residual variance is left (lme4 fits it, singular or unbounded)."""
    frame = pd.DataFrame(
        {
            "a": pd.Categorical(list("01234012")),
            "b": pd.Categorical(list("01230123")),
        }
    )
    with pytest.raises(DesignError, match="fit all 8 observations exactly"):
        build_design("~ (1|a) + (1|b)", frame)


def test_association_and_within_from_level_codes_equal_their_definitions():
    """On random designs, as from the cells x levels indicator matrices they define."""
    from exhaustive import random_design

    from scvarpart.design import canonical_association, design_variables

    rng = np.random.default_rng(3)
    checked = 0
    while checked < 40:
        frame, formula = random_design(rng)
        frame = frame.assign(age=rng.normal(size=len(frame)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = build_design(formula + " + age", frame, check=False)
        variables = design_variables(d)
        table = association(d)
        for a in table.index:
            for b in table.columns:
                want = 1.0 if a == b else canonical_association(variables[a], variables[b])
                np.testing.assert_allclose(table.loc[a, b], want, atol=1e-12)
        for f in d.factors:  # a factor within another: each of the other's levels in one
            for g in d.factors:
                inner = len(np.unique(np.stack([f.codes, g.codes], 1), axis=0))
                expected = f is not g and inner == g.n_levels and f.n_levels < g.n_levels
                assert within(d).loc[f.name, g.name] == expected
        checked += 1
