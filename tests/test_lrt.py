"""Likelihood-ratio tests of variance components (``test="lrt"``).

The statistic against independent fits of the smaller model (ours from the formula
without the term; statsmodels' OLS for a model without random terms; RLRsim's
restricted LRT, `tests/data/rlrsim`), the p-values against the mixture's definition,
the q-values against statsmodels' Benjamini-Hochberg, their calibration under the
null, and their way into an AnnData object and back.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.stats
from statsmodels.stats.multitest import multipletests

import scvarpart as svp
from scvarpart.lmm.lrt import benjamini_hochberg, mixture_pvalue

DATA = Path(__file__).parent / "data"
FORMULA = svp.datasets.EXAMPLE_FORMULA


@pytest.fixture(scope="module")
def example():
    return svp.datasets.crossed_example(n_cells=1500, n_genes=30, seed=7)


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_statistic_is_twice_the_loglik_difference_with_the_smaller_model(example, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few levels under ML
        full = svp.lmm.fit(FORMULA, example.X, obs=example.obs, method=method, test="lrt")
        for term in ("patient", "day"):
            formula = FORMULA.replace(f" + (1|{term})", "")
            small = svp.lmm.fit(formula, example.X, obs=example.obs, method=method)
            stat = 2 * (full.per_gene["loglik"] - small.per_gene["loglik"])
            np.testing.assert_allclose(full.lrt[term], np.maximum(stat, 0), atol=1e-7)
    assert (full.lrt >= 0).all().all()
    assert full.lrt["patient"].median() > 10  # the example's patients matter


def test_without_any_random_term_left_the_smaller_model_is_least_squares(example):
    import statsmodels.api as sm

    fit = svp.lmm.fit("~ log_umi + (1|day)", example.X, obs=example.obs, test="lrt")
    X = sm.add_constant(example.obs[["log_umi"]].to_numpy(float))
    Y = np.asarray(example.X)
    llf = np.array([sm.OLS(Y[:, g], X).fit().llf for g in range(Y.shape[1])])
    stat = np.maximum(2 * (fit.per_gene["loglik"].to_numpy() - llf), 0)
    np.testing.assert_allclose(fit.lrt["day"].to_numpy(), stat, atol=1e-7)


def test_restricted_statistic_and_null_mass_match_rlrsim():
    ref = json.loads((DATA / "rlrsim" / "reference.json").read_text())
    obs = pd.DataFrame({"group": pd.Categorical(ref["group"]), "x": ref["x"]})
    Y = np.asarray(ref["Y"], dtype=float)
    fit = svp.lmm.fit("~ x + (1|group)", Y, obs=obs, method="REML", test="lrt")
    ours = fit.lrt["group"].to_numpy()
    theirs = np.array([g["rlrt"] for g in ref["genes"]])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # lme4's REML criterion, which RLRsim's statistic is built on
    reml = np.array([g["reml"] for g in ref["genes"]])
    np.testing.assert_allclose(-2 * fit.per_gene["loglik"].to_numpy(), reml, rtol=1e-8)
    # the null's point mass at 0 is RLRsim's (its share of simulated statistics at 0,
    # 1e5 draws: error 0.0016); the p-values lie between RLRsim's exact ones and the
    # asymptotic 50:50 mixture's, nearer the exact ones
    exact = np.array([g["p"] for g in ref["genes"]])
    p = fit.pvalue["group"].to_numpy()
    positive = ours > 1e-6
    mass = 1 - p[positive] / scipy.stats.chi2.sf(ours[positive], 1)
    np.testing.assert_allclose(mass, 1 - exact[2], atol=0.006)
    half = mixture_pvalue(ours)
    assert (p[positive] >= exact[positive] - 0.004).all()
    assert (p[positive] <= half[positive]).all()
    assert np.all(np.abs(p - exact)[positive] <= np.abs(half - exact)[positive] + 1e-12)


def test_mixture_pvalues_and_benjamini_hochberg():
    stat = np.array([0.0, -1e-12, 2.7055, 3.8415, np.nan, 10.0])
    p = mixture_pvalue(stat)
    assert p[0] == 1.0 and p[1] == 1.0 and np.isnan(p[4])
    np.testing.assert_allclose(p[[2, 3, 5]], 0.5 * scipy.stats.chi2.sf(stat[[2, 3, 5]], 1))
    np.testing.assert_allclose(p[[2, 3]], [0.05, 0.025], atol=1e-4)
    rng = np.random.default_rng(0)
    P = rng.uniform(size=(200, 3)) ** rng.uniform(1, 4, size=3)
    P[[3, 17], 1] = np.nan
    Q = benjamini_hochberg(P)
    for c in range(3):
        ok = np.isfinite(P[:, c])
        np.testing.assert_allclose(Q[ok, c], multipletests(P[ok, c], method="fdr_bh")[1])
        assert np.isnan(Q[~ok, c]).all()


def test_pvalues_under_the_null_are_calibrated():
    """No donor effect in 3,000 genes: about 5% of p-values at most 0.05 (REML).

    The mixture is conservative for small designs (the chance of a statistic at 0
    exceeds one half), so the rate may fall below 5%, never far above it.
    """
    rng = np.random.default_rng(11)
    n, G = 600, 3000
    obs = pd.DataFrame({"donor": pd.Categorical(rng.integers(0, 30, n).astype(str))})
    Y = rng.normal(size=(n, G))
    fit = svp.lmm.fit("~ (1|donor)", Y, obs=obs, method="REML", test="lrt")
    p = fit.pvalue["donor"].to_numpy()
    assert 0.5 <= (p == 1).mean() <= 0.6
    assert 0.035 <= (p <= 0.05).mean() <= 0.065
    assert 0.005 <= (p <= 0.01).mean() <= 0.016
    # the same with a donor effect in 10% of the genes: those are found
    Y[:, :300] += rng.normal(scale=0.5, size=(30, 300))[obs["donor"].cat.codes]
    fit = svp.lmm.fit("~ (1|donor)", Y, obs=obs, method="REML", test="lrt")
    q = fit.qvalue["donor"].to_numpy()
    assert (q[:300] < 0.05).mean() > 0.95 and (q[300:] < 0.05).mean() < 0.01


def test_variance_partition_stores_the_tests(tmp_path):
    adata = svp.datasets.crossed_example(n_cells=800, n_genes=6, seed=2)
    svp.tl.variance_partition(adata, FORMULA, method="REML", test="lrt", n_jobs=2)
    terms = ["patient", "chemistry", "day", "operator"]
    for name in ("lrt", "pvalue", "qvalue"):
        assert list(adata.varm[f"varpart_{name}"].columns) == terms
    assert adata.uns["varpart"]["params"]["test"] == "lrt"
    one = adata.copy()
    svp.tl.variance_partition(one, FORMULA, method="REML", test="lrt", n_jobs=1)
    pd.testing.assert_frame_equal(one.varm["varpart_pvalue"], adata.varm["varpart_pvalue"])
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = svp.varpart.VarPartResult.read(ad.read_h5ad(tmp_path / "a.h5ad"))
    pd.testing.assert_frame_equal(back.qvalue, adata.varm["varpart_qvalue"])
    # a refit without tests removes them
    svp.tl.variance_partition(adata, FORMULA, method="REML")
    assert "varpart_pvalue" not in adata.varm


def test_bad_test_options_are_refused_before_reading_the_data():
    adata = svp.datasets.crossed_example(n_cells=300, n_genes=3, seed=0)
    adata.obs["time"] = adata.obs["log_umi"] - adata.obs["log_umi"].mean()
    adata.X = np.full(adata.shape, np.nan)  # reading the data would fail differently
    with pytest.raises(ValueError, match="test must be None or 'lrt', got 'wald'"):
        svp.tl.variance_partition(adata, FORMULA, test="wald")
    with pytest.raises(ValueError, match="test must be None or 'lrt', got 'LRT'"):
        svp.tl.variance_partition(adata, "~ (1 + time|patient) + (1|day)", test="LRT")


REST = "(1|chemistry) + (1|day) + (1|operator)"


@pytest.fixture(scope="module")
def slopes():
    """Genes with a random slope of time by patient (some genes without one)."""
    adata = svp.datasets.crossed_example(n_cells=1200, n_genes=40, seed=9)
    obs = adata.obs
    obs["time"] = obs["log_umi"] - obs["log_umi"].mean()
    rng = np.random.default_rng(3)
    codes = obs["patient"].cat.codes.to_numpy()
    sd = np.where(np.arange(40) < 20, 0.0, rng.uniform(0.2, 0.6, 40))  # half without
    slope = rng.standard_normal((obs["patient"].cat.categories.size, 40)) * sd
    X = np.asarray(adata.X) + slope[codes] * obs["time"].to_numpy()[:, None]
    return X, obs


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_a_slope_is_tested_against_the_model_without_it(slopes, method):
    """(1 + time|patient) against (1|patient): twice the log-likelihood difference of
    the two fits, with the 50:50 mixture of chi-squared(1) and chi-squared(2)."""
    X, obs = slopes
    kwargs = {"obs": obs, "method": method, "ci": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = svp.lmm.fit(f"~ time + (1 + time|patient) + {REST}", X, test="lrt", **kwargs)
        smaller = svp.lmm.fit(f"~ time + (1|patient) + {REST}", X, **kwargs)
        without_day = svp.lmm.fit(
            "~ time + (1 + time|patient) + (1|chemistry) + (1|operator)", X, **kwargs
        )
    stat = full.lrt["patient"].to_numpy()
    expected = np.maximum(2 * (full.per_gene["loglik"] - smaller.per_gene["loglik"]), 0)
    np.testing.assert_allclose(stat, expected, rtol=1e-6, atol=1e-6)
    p = 0.5 * (scipy.stats.chi2.sf(stat, 1) + scipy.stats.chi2.sf(stat, 2))
    np.testing.assert_allclose(full.pvalue["patient"], np.where(stat > 0, p, 1.0), rtol=1e-12)
    # the random intercept beside it is tested as before
    day = np.maximum(2 * (full.per_gene["loglik"] - without_day.per_gene["loglik"]), 0)
    np.testing.assert_allclose(full.lrt["day"], day, rtol=1e-6, atol=1e-6)
    # the genes with a slope are found, those without are not (most of them)
    assert (full.pvalue["patient"].to_numpy()[20:] < 0.01).mean() > 0.8
    assert (full.pvalue["patient"].to_numpy()[:20] < 0.05).mean() < 0.2


def test_slope_mixture_pvalues_are_calibrated_under_the_null():
    """No slope in any gene: P(p <= alpha) at most about alpha."""
    adata = svp.datasets.crossed_example(n_cells=1000, n_genes=300, seed=4)
    obs = adata.obs
    obs["time"] = obs["log_umi"] - obs["log_umi"].mean()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = svp.lmm.fit(
            f"~ time + (1 + time|patient) + {REST}", adata.X, obs=obs, method="REML",
            test="lrt", ci=None,
        )  # fmt: skip
    p = fit.pvalue["patient"].to_numpy()
    for alpha in (0.05, 0.1, 0.25):
        assert np.mean(p <= alpha) < alpha + 0.04, alpha
    assert np.mean(p <= 0.25) > 0.1  # not degenerate: small p-values do occur


def test_mixture_pvalue_for_several_coefficients():
    stat = np.array([0.0, 1.0, 3.0, np.nan])
    got = mixture_pvalue(stat, 3)
    expected = 0.5 * (scipy.stats.chi2.sf(stat, 2) + scipy.stats.chi2.sf(stat, 3))
    np.testing.assert_allclose(got[1:3], expected[1:3])
    assert got[0] == 1.0 and np.isnan(got[3])


@pytest.mark.parametrize(("null", "method"), [("chemistry", "REML"), ("day", "ML")])
def test_intercept_pvalues_are_uniform_under_the_null(null, method):
    """No effect of a 3- or 6-level factor: P(p <= alpha) = alpha, where the asymptotic
    50:50 mixture gives about 0.7 alpha (its weight at 0 is too small for few levels)."""
    adata = svp.datasets.crossed_example(n_cells=1000, n_genes=1, seed=5)
    obs, rng = adata.obs, np.random.default_rng(5)
    Y = rng.standard_normal((adata.n_obs, 3000))
    for term in ("patient", "chemistry", "day", "operator"):
        if term != null:
            codes = obs[term].cat.codes.to_numpy()
            sd = np.sqrt(rng.uniform(0, 0.5, Y.shape[1]))
            Y += (rng.standard_normal((codes.max() + 1, Y.shape[1])) * sd)[codes]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = svp.lmm.fit(FORMULA, Y, obs=obs, method=method, test="lrt", ci=None, n_jobs=2)
    p, stat = fit.pvalue[null].to_numpy(), fit.lrt[null].to_numpy()
    half = mixture_pvalue(stat)
    for alpha in (0.05, 0.1, 0.2):
        # binomial standard error at 3,000 genes: 0.004-0.007
        assert abs(np.mean(p <= alpha) - alpha) < 0.02, alpha
        assert np.mean(half <= alpha) < 0.85 * alpha, alpha
