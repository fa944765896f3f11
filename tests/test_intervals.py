"""Standard errors and intervals of the variance components (scvarpart.lmm.intervals)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

import scvarpart as svp


def _design(seed: int, n: int = 240):
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {
            "a": pd.Categorical(rng.integers(8, size=n).astype(str)),
            "b": pd.Categorical(rng.integers(5, size=n).astype(str)),
        }
    )
    Za = np.eye(8)[obs["a"].cat.codes]
    Zb = np.eye(5)[obs["b"].cat.codes]
    Y = (
        Za @ rng.normal(0, 1.0, (8, 6))
        + Zb @ rng.normal(0, 0.7, (5, 6))
        + rng.normal(0, 1, (n, 6))
        + 3.0
    )
    return obs, Za, Zb, Y


def _criterion(s, y, Za, Zb, reml: bool) -> float:
    """-2 log L of y in the variances (sigma_a^2, sigma_b^2, sigma^2), beta profiled."""
    n = len(y)
    V = s[0] * Za @ Za.T + s[1] * Zb @ Zb.T + s[2] * np.eye(n)
    Vi = np.linalg.inv(V)
    X = np.ones((n, 1))
    XtViX = X.T @ Vi @ X
    beta = np.linalg.solve(XtViX, X.T @ Vi @ y)
    r = y - X @ beta
    out = np.linalg.slogdet(V)[1] + r @ Vi @ r
    if reml:
        out += np.linalg.slogdet(XtViX)[1]
    return float(out)


def _numerical_se(s, y, Za, Zb, reml: bool) -> np.ndarray:
    """sqrt(diag(2 H^-1)) with H the criterion's Hessian by central differences."""
    h = 1e-4 * np.maximum(s, 1e-3)
    H = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            e_i, e_j = np.eye(3)[i] * h[i], np.eye(3)[j] * h[j]
            f = [
                _criterion(s + a * e_i + b * e_j, y, Za, Zb, reml)
                for a, b in ((1, 1), (1, -1), (-1, 1), (-1, -1))
            ]
            H[i, j] = (f[0] - f[1] - f[2] + f[3]) / (4 * h[i] * h[j])
    return np.sqrt(np.diag(2 * np.linalg.inv(H)))


@pytest.mark.parametrize("method", ["ML", "REML"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_standard_errors_are_the_observed_information_of_the_variances(method, seed):
    """The profiled Hessian, sigma^2's dependence on theta and the Jacobians combine to
    the inverse observed information of the variances themselves."""
    obs, Za, Zb, Y = _design(seed)
    fit = svp.lmm.fit("~ (1|a) + (1|b)", Y, obs=obs, method=method)
    for g in range(Y.shape[1]):
        v = fit.variance.iloc[g].to_numpy()
        if (v == 0).any():
            continue
        expected = _numerical_se(v, Y[:, g], Za, Zb, method == "REML")
        np.testing.assert_allclose(fit.variance_se.iloc[g].to_numpy(), expected, rtol=2e-3)


def test_intervals_hold_the_estimate_and_stay_in_range():
    adata = svp.datasets.crossed_example(n_cells=1500, n_genes=60, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = svp.lmm.fit(
            svp.datasets.EXAMPLE_FORMULA, adata.X, obs=adata.obs, method="REML",
            batch=["chemistry", "day", "operator"], signal="patient", test="lrt",
        )  # fmt: skip
    f, lo, hi = fit.fractions, fit.ci_low, fit.ci_high
    assert ((lo >= 0) & (lo <= f + 1e-12) & (f <= hi + 1e-12) & (hi <= 1)).all().all(), "range"
    terms = ["patient", "chemistry", "day", "operator"]
    # a variance at 0: [0, u] with u > 0, and no standard error
    zero = (f[terms] == 0).to_numpy()
    assert zero.any()
    assert (lo[terms].to_numpy()[zero] == 0).all() and (hi[terms].to_numpy()[zero] > 0).all()
    assert np.isnan(fit.variance_se[terms].to_numpy()[zero]).all()
    # the interval holds 0 exactly where the test does not reject at 5%: its p-value, with
    # the null's point mass at 0 (not the 50:50 mixture's weight)
    holds = (lo[terms] == 0).to_numpy()
    np.testing.assert_array_equal(holds, (fit.pvalue[terms] >= 0.05).to_numpy())
    assert (holds != (fit.lrt[terms] < st.chi2.ppf(0.9, 1)).to_numpy()).any()
    # without the tests, local refits decide it, with the same p-values here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = svp.lmm.fit(
            svp.datasets.EXAMPLE_FORMULA, adata.X, obs=adata.obs, method="REML",
            batch=["chemistry", "day", "operator"], signal="patient",
        )  # fmt: skip
    np.testing.assert_array_equal((alone.ci_low[terms] == 0).to_numpy(), holds)
    rho = fit.per_gene
    finite = np.isfinite(rho["rho"])
    assert (rho["rho_ci_low"][finite] <= rho["rho"][finite]).all()
    assert (rho["rho"][finite] <= rho["rho_ci_high"][finite]).all()


def _donor_batch_fit(seed=8, n=1500, G=80):
    """REML fits of ``(1|donor) + (1|batch)`` (20 donors, 3 batches), half the variances 0."""
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {
            "donor": pd.Categorical(rng.integers(20, size=n).astype(str)),
            "batch": pd.Categorical(rng.integers(3, size=n).astype(str)),
        }
    )
    d, b = obs["donor"].cat.codes.to_numpy(), obs["batch"].cat.codes.to_numpy()
    sd = rng.uniform(0, 0.6, (2, G)) * (rng.uniform(size=(2, G)) > 0.5)
    Y = rng.standard_normal((n, G))
    Y += (rng.standard_normal((20, G)) * sd[0])[d] + (rng.standard_normal((3, G)) * sd[1])[b]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = svp.lmm.fit("~ (1|donor) + (1|batch)", Y, obs=obs, method="REML")
    return obs, Y, fit


def test_residual_interval_is_coherent_with_components_that_may_be_0():
    """Where another component's interval starts at 0, the residual's interval reaches
    its fraction with that component at 0 and at its upper bound, the rest keeping their
    shares; genes whose other variances are all 0 get a finite lower bound from their
    upper ones."""
    _, _, fit = _donor_batch_fit()
    f, lo, hi = fit.fractions, fit.ci_low, fit.ci_high
    assert lo.notna().all().all() and hi.notna().all().all()
    rest = ["donor", "batch"]
    share = f["Residual"].to_numpy()[:, None] / (1 - f[rest].to_numpy())
    at_low, at_high = (1 - lo[rest].to_numpy()) * share, (1 - hi[rest].to_numpy()) * share
    may_vanish = lo[rest].to_numpy() == 0
    assert may_vanish.any() and (~may_vanish).any()
    res_lo, res_hi = lo["Residual"].to_numpy()[:, None], hi["Residual"].to_numpy()[:, None]
    assert (res_hi >= np.where(may_vanish, at_low, -np.inf) - 1e-12).all()
    assert (res_lo <= np.where(may_vanish, at_high, np.inf) + 1e-12).all()
    alone = (f[rest] == 0).all(axis=1)
    assert alone.any() and (f["Residual"][alone] == 1).all()
    np.testing.assert_allclose(lo["Residual"][alone], 1 - hi[rest][alone].sum(axis=1))
    assert ((lo["Residual"] <= f["Residual"]) & (f["Residual"] <= hi["Residual"])).all()


def test_residual_ray_bounds_are_where_the_criterion_rises_by_the_quantile():
    """Every random variance ratio scaled together: the residual's bounds are its
    fraction where the criterion has risen by the chi-squared(1) quantile, up and down
    (or without random effects, where it never rises that far), and the reported
    interval contains them."""
    from scvarpart.lmm.fitting import make_engine
    from scvarpart.lmm.intervals import _engine_point, _residual_ray

    obs, Y, res = _donor_batch_fit()
    stats = svp.lmm.response_stats(Y, "~ (1|donor) + (1|batch)", obs=obs)
    fit = svp.lmm.fit_lmm(stats.gram, stats.response, reml=True)
    eng = make_engine(stats.gram, True, "dense", [i.term for i in stats.terms])
    base = eng.deviance(_engine_point(eng, fit.theta), stats.response)

    def variances(theta, sigma2, beta):
        return np.column_stack([theta**2 * sigma2[:, None], sigma2])

    crit = 3.8415
    low, high = _residual_ray(eng, stats.response, fit, variances, base, crit)
    inside = (fit.theta > 0).any(axis=1)
    assert inside.any() and (~inside).any()
    assert np.isnan(low[~inside]).all() and np.isnan(high[~inside]).all()
    # the fraction 1 / (1 + sum gamma) along the ray c theta: c from each bound
    total = (fit.theta[inside] ** 2).sum(axis=1)
    for bound, expect_below in ((low[inside], True), (high[inside], False)):
        c = np.sqrt((1 / bound - 1) / total)
        assert ((c > 1) if expect_below else (c < 1)).all()
        theta = fit.theta[inside] * c[:, None]
        rows = stats.response.subset(np.flatnonzero(inside))
        rise = eng.deviance(_engine_point(eng, theta), rows) - base[inside]
        reached = c > 1e-9
        np.testing.assert_allclose(rise[reached], crit, atol=1e-6)
        assert (rise[~reached] < crit).all()
    # the fit scales each gene to unit size: the roots agree to their tolerance there
    assert (res.ci_low["Residual"].to_numpy()[inside] <= low[inside] + 1e-5).all()
    assert (res.ci_high["Residual"].to_numpy()[inside] >= high[inside] - 1e-5).all()


def test_fixed_term_interval_starts_at_0_where_its_wald_test_does_not_reject():
    adata = svp.datasets.crossed_example(n_cells=1500, n_genes=80, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = svp.lmm.fit(svp.datasets.EXAMPLE_FORMULA, adata.X, obs=adata.obs, method="REML")
    z = (fit.beta["log_umi"] / fit.beta_se["log_umi"]).abs()
    holds = z < st.norm.ppf(0.975)
    assert holds.any() and (~holds).any()
    np.testing.assert_array_equal(fit.ci_low["log_umi"] == 0, holds)
    assert (fit.fractions["log_umi"][holds] > 0).all()


def test_local_refits_decide_as_the_global_tests():
    """Without test='lrt', local refits decide where intervals start at 0: the same as
    the tests' global refits on these genes."""
    adata = svp.datasets.crossed_example(n_cells=1500, n_genes=60, seed=4)
    kwargs = {"obs": adata.obs, "method": "REML"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = svp.lmm.fit(svp.datasets.EXAMPLE_FORMULA, adata.X, **kwargs)
        tested = svp.lmm.fit(svp.datasets.EXAMPLE_FORMULA, adata.X, test="lrt", **kwargs)
    pd.testing.assert_frame_equal(plain.ci_low == 0, tested.ci_low == 0)
    pd.testing.assert_frame_equal(plain.ci_high, tested.ci_high, check_exact=True)


def test_intervals_cover_the_simulated_fractions():
    """On the example design, the 95% intervals cover each simulated fraction in about
    95% of genes (the benchmark measures it on more genes)."""
    adata = svp.datasets.crossed_example(n_cells=2000, n_genes=200, seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = svp.lmm.fit(
            svp.datasets.EXAMPLE_FORMULA, adata.X, obs=adata.obs, method="REML",
            var_names=adata.var_names,
        )  # fmt: skip
    true = pd.DataFrame(adata.varm["true_variance"], index=adata.var_names)
    truth = true.div(true.sum(axis=1), axis=0)
    for c in ["patient", "chemistry", "day", "operator", "Residual"]:
        covered = ((fit.ci_low[c] <= truth[c]) & (truth[c] <= fit.ci_high[c])).mean()
        # 200 genes: a binomial 95% band is about +-3%
        assert 0.88 <= covered <= 1.0, (c, covered)


def test_intervals_cover_with_a_three_level_factor_in_the_denominator():
    """With a 3-level batch, every component's 95% interval covers its simulated
    fraction in 93-98% of 900 genes, and rho's its ratio: the donor's too, whose
    denominator holds the batch's skewed uncertainty (Wald's lower bound and the
    likelihood ratio's upper one, the batch's ratio held, covered 91.8%; rho's Wald
    interval on the log scale 91.8% as well)."""
    hits, rho_hits = [], []
    for seed in (5, 6, 7):
        adata = svp.datasets.donor_batch(3000, 300, seed=seed)
        var = adata.varm["true_variance"].to_numpy()
        truth = var / var.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.where(var[:, 0] > 0, var[:, 1] / var[:, 0], np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = svp.lmm.fit(
                svp.datasets.DONOR_BATCH_FORMULA, adata.X, obs=adata.obs, method="REML",
                n_jobs=2, batch="batch", signal="donor",
            )  # fmt: skip
        lo, hi = fit.ci_low.to_numpy(), fit.ci_high.to_numpy()
        hits.append((lo <= truth) & (truth <= hi))
        r_lo, r_hi = fit.per_gene["rho_ci_low"].to_numpy(), fit.per_gene["rho_ci_high"].to_numpy()
        known = np.isfinite(rho) & ~np.isnan(r_lo)
        rho_hits.append(((r_lo <= rho) & (rho <= r_hi))[known])
    covered = np.concatenate(hits).mean(axis=0)
    # 900 genes: a binomial 95% band is about +-1.4%
    assert ((covered >= 0.93) & (covered <= 0.98)).all(), pd.Series(covered, fit.ci_low.columns)
    assert 0.93 <= np.concatenate(rho_hits).mean() <= 0.98


def test_ci_none_skips_them_and_replicates_need_a_level():
    obs, _, _, Y = _design(0)
    fit = svp.lmm.fit("~ (1|a) + (1|b)", Y, obs=obs, ci=None)
    assert fit.ci_low is None and fit.variance_se is None
    with pytest.raises(ValueError, match="needs the intervals' level"):
        svp.lmm.fit("~ (1|a) + (1|b)", Y, obs=obs, ci=None, n_boot=20)
    with pytest.raises(ValueError, match=r"ci=1\.5 must be a level"):
        svp.lmm.fit("~ (1|a) + (1|b)", Y, obs=obs, ci=1.5)


@pytest.mark.parametrize("engine", ["dense", "blocked"])
def test_likelihood_ratio_bounds_are_where_the_criterion_rises_by_the_quantile(engine):
    """The root finding stops where the criterion has risen by the critical value, from
    an estimate at 0 and from one inside, in either engine."""
    from scvarpart.lmm.fitting import make_engine
    from scvarpart.lmm.intervals import _engine_point, _rise_points

    obs, _, _, Y = _design(5)
    stats = svp.lmm.response_stats(Y, "~ (1|a) + (1|b)", obs=obs)
    fit = svp.lmm.fit_lmm(stats.gram, stats.response, engine=engine)
    eng = make_engine(stats.gram, False, engine, [i.term for i in stats.terms])
    genes = np.arange(Y.shape[1])
    for j in range(2):
        d = np.zeros((len(genes), 2))
        d[:, j] = 1.0
        crit = np.where(fit.theta[:, j] == 0, 2.7055, 3.8415)
        theta = _rise_points(eng, stats.response, fit, d, genes, crit)
        assert (theta[:, j] > fit.theta[:, j]).all()
        rise = eng.deviance(_engine_point(eng, theta), stats.response) - eng.deviance(
            _engine_point(eng, fit.theta), stats.response
        )
        np.testing.assert_allclose(rise, crit, atol=1e-8)
