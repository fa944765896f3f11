"""Model matrices follow R's model.matrix coding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import read_reference_csv

from scvarpart.design import DesignError, build_design


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
