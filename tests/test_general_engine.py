"""The compiled general engine (random slopes, known covariances, weights).

Its criterion, gradient and Hessian against finite differences and against the dense
NumPy reference (``tests/reference_general.py``, checked against lme4); its
search against the reference's on random designs; and its fits against lme4 on every
gene of the simulated slope, kinship and weights datasets (``tests/data/lme4_terms``).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import DATA
from reference_general import ReferenceGeneralDeviance

import scvarpart as svp
from scvarpart.lmm import fit_lmm
from scvarpart.lmm.general import GeneralDeviance
from scvarpart.lmm.terms import ReTerm
from scvarpart.suffstats import DesignGram, ResponseStats

TERMS = DATA / "lme4_terms"

# (levels, coefficients, own block diagonal?) of each term of a random design
DESIGNS = {
    "intercepts": [(9, 1, True), (4, 1, True)],
    "slope": [(8, 2, True), (3, 1, True)],
    "slope3": [(7, 3, True), (4, 1, True)],
    "two-slopes": [(6, 2, True), (5, 2, True)],
    "kinship": [(12, 1, False), (4, 1, True)],
    "kinship-only": [(10, 1, False)],
    "one-term": [(9, 2, True)],
}


def _weighted_products(Z, X, Y, w):
    """Cross-products as the one pass forms them: centred (weighted) X and y."""
    sw = w.sum()
    xm = (w @ X) / sw
    xm[0] = 0.0
    Xc = X - xm
    ym = (w @ Y) / sw
    Yc = Y - ym
    Zw, Xw = Z * w[:, None], Xc * w[:, None]
    gram = DesignGram(
        n_obs=len(w),
        factor_sizes=(Z.shape[1],),
        ZtZ=sp.csr_matrix(Zw.T @ Z),
        ZtX=Zw.T @ Xc,
        XtX=Xw.T @ Xc,
        x_mean=xm,
        weight_sum=float(sw),
        log_weights=float(np.log(w).sum()),
    )
    stats = ResponseStats(
        n_obs=len(w),
        mean=ym,
        ss=np.einsum("n,ng->g", w, Yc**2),
        ZtY=(Zw.T @ Yc).T,
        XtY=(Xw.T @ Yc).T,
        n_nonzero=np.full(Y.shape[1], len(w)),
    )
    return gram, stats


def _term_columns(rng, n, levels, r, diagonal):
    """``Z`` of one term: an intercept and ``r - 1`` covariates per level, or ``Z R``."""
    codes = np.concatenate([np.arange(levels), rng.integers(0, levels, n - levels)])
    z = np.column_stack([np.ones(n), rng.normal(size=(n, r - 1))])
    Z = np.zeros((n, levels * r))
    for a in range(r):
        Z[np.arange(n), codes * r + a] = z[:, a]
    if not diagonal:  # a known covariance K = R R' between the levels
        B = rng.normal(size=(levels, levels))
        K = B @ B.T / levels + 0.5 * np.eye(levels)
        Z = Z @ np.linalg.cholesky(K)
    return Z


def random_problem(spec, seed, n=240, genes=3, weights=False):
    """A random design with the terms of ``spec`` and genes simulated from it."""
    rng = np.random.default_rng(seed)
    Z = np.hstack([_term_columns(rng, n, lv, r, diag) for lv, r, diag in spec])
    X = np.column_stack([np.ones(n), rng.normal(size=(n, 2))])
    scale = rng.uniform(0.0, 1.5, size=(Z.shape[1], genes)) * (rng.uniform(size=genes) < 0.8)
    Y = X @ rng.normal(size=(3, genes)) + Z @ (rng.normal(size=(Z.shape[1], genes)) * scale)
    w = rng.uniform(0.3, 3.0, n) if weights else np.ones(n)
    Y += rng.normal(size=(n, genes)) / np.sqrt(w)[:, None]
    gram, stats = _weighted_products(Z, X, Y, w)
    terms = [ReTerm(f"t{j}", lv, r, diag) for j, (lv, r, diag) in enumerate(spec)]
    if not weights:
        gram = DesignGram(**{**gram.__dict__, "weight_sum": None, "log_weights": 0.0})
    return gram, stats, terms


def random_theta(terms, rng):
    """A random point with every diagonal entry of ``T`` positive."""
    parts = []
    for t in terms:
        a, b = t.positions.T
        parts.append(
            np.where(a == b, rng.uniform(0.2, 1.5, t.n_theta), rng.normal(0, 0.5, t.n_theta))
        )
    return np.concatenate(parts)


CASES = [(name, w) for name in DESIGNS for w in (False, True)]
IDS = [f"{name}{'-weights' if w else ''}" for name, w in CASES]


@pytest.mark.parametrize(("name", "weights"), CASES, ids=IDS)
@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
def test_compiled_matches_reference(name, weights, reml):
    """Criterion, gradient, Hessian, estimates and ``X'V^-1X`` as the NumPy reference."""
    gram, stats, terms = random_problem(DESIGNS[name], seed=len(name), weights=weights)
    eng = GeneralDeviance(gram, terms, reml)
    ref = ReferenceGeneralDeviance(gram, terms, reml)
    rng = np.random.default_rng(1)
    theta = np.array([random_theta(terms, rng) for _ in range(len(stats))])
    dev, grad, hess = eng.derivatives(theta, stats)
    for g in range(len(stats)):
        f0, g0, h0 = ref._derivatives(theta[g], stats.ZtY[g], stats.XtY[g], stats.ss[g])
        assert dev[g] == pytest.approx(f0, rel=1e-11)
        np.testing.assert_allclose(grad[g], g0, rtol=1e-7, atol=1e-8 * np.abs(g0).max())
        np.testing.assert_allclose(hess[g], h0, rtol=1e-7, atol=1e-8 * np.abs(h0).max())
    for mine, theirs in zip(eng.estimates(theta, stats), ref.estimates(theta, stats), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(eng.fixed_factor(theta), ref.fixed_factor(theta), rtol=1e-10)


def _criterion(eng, stats, g):
    return lambda th: eng.deviance(th[None], stats.subset([g]))[0]


@pytest.mark.parametrize(("name", "weights"), CASES, ids=IDS)
def test_derivatives_match_finite_differences(name, weights):
    """Gradient and Hessian of the REML criterion against central differences."""
    gram, stats, terms = random_problem(DESIGNS[name], seed=7, genes=1, weights=weights)
    eng = GeneralDeviance(gram, terms, reml=True)
    theta = random_theta(terms, np.random.default_rng(2))
    f = _criterion(eng, stats, 0)
    _, grad, hess = eng._derivatives(theta, stats.ZtY[0], stats.XtY[0], stats.ss[0])
    h = 1e-5
    eye = np.eye(eng.k)
    fd_grad = np.array([(f(theta + h * e) - f(theta - h * e)) / (2 * h) for e in eye])
    np.testing.assert_allclose(grad, fd_grad, rtol=1e-5, atol=1e-5 * np.abs(grad).max())

    def gradient(th):
        return eng.derivatives(th[None], stats.subset([0]))[1][0]

    fd_hess = np.array([(gradient(theta + h * e) - gradient(theta - h * e)) / (2 * h) for e in eye])
    np.testing.assert_allclose(hess, fd_hess, rtol=1e-5, atol=1e-5 * np.abs(hess).max())


SEARCHES = [("slope", 160), ("slope3", 160), ("kinship", 160), ("two-slopes", 160)]
SEARCHES += [("slope", 4000), ("two-slopes", 4000)]  # many observations per level


@pytest.mark.parametrize(("name", "n"), SEARCHES, ids=[f"{a}-{n}" for a, n in SEARCHES])
@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
def test_search_no_worse_than_reference(name, n, reml):
    """The compiled search ends at least as low as the reference's, converged.

    With few observations per random effect it descends from every start; with many,
    from the best only (``thorough``).
    """
    for seed in range(3):
        gram, stats, terms = random_problem(DESIGNS[name], seed=100 + seed, n=n, genes=2)
        eng = GeneralDeviance(gram, terms, reml)
        assert eng.thorough() == (n < 1000)
        ref = ReferenceGeneralDeviance(gram, terms, reml)
        none = np.full((len(stats), eng.k), np.nan)
        X, dev, sigma2, beta, converged, _, _ = eng.search(stats, none, None)
        Xr, dev_r, *_ = ref.search(stats, none, None)
        assert converged.all()
        assert np.all(dev <= dev_r + 1e-7 * np.abs(dev_r)), (dev - dev_r, X, Xr)
        # the estimates are those at the optimum
        dev2, sigma2_2, beta2 = eng.estimates(X, stats)
        np.testing.assert_allclose(dev2, dev, rtol=1e-12)
        np.testing.assert_allclose(sigma2_2, sigma2, rtol=1e-12)
        np.testing.assert_allclose(beta2, beta, rtol=1e-10, atol=1e-12)


def _lme4_cases():
    out = []
    for case in ("slopes", "kinship", "weights"):
        ref = json.loads((TERMS / f"{case}.json").read_text())
        for model in ref["models"]:
            for reml in (False, True):
                out.append((case, model, reml, ref))
    return out


def _lme4_problem(case, formula):
    obs = pd.read_csv(TERMS / f"{case}_obs.csv")
    for col in obs.columns:
        if obs[col].dtype == object:
            obs[col] = obs[col].astype("category")
    Y = pd.read_csv(TERMS / f"{case}_Y.csv", index_col=0)
    kw = {}
    if case == "kinship":
        kw["covariance"] = {"donor": pd.read_csv(TERMS / "kinship_K.csv", index_col=0)}
    if case == "weights":
        kw["weights"] = "w"
    rhs = "~" + formula.split("~", 1)[1]
    return Y, svp.lmm.response_stats(Y.to_numpy(float), rhs, obs=obs, **kw)


LME4 = _lme4_cases()


@pytest.mark.parametrize(
    ("case", "model", "reml", "ref"),
    LME4,
    ids=[f"{c}-{m['name']}-{'REML' if r else 'ML'}" for c, m, r, _ in LME4],
)
def test_every_gene_no_worse_than_lme4(case, model, reml, ref):
    """Every gene converged, with a criterion no worse than lme4's (and its tight refit)."""
    Y, stats = _lme4_problem(case, model["formula"])
    terms = [t.term for t in stats.terms]
    fit = fit_lmm(stats.gram, stats.response, reml=reml, terms=terms, engine="general")
    genes = list(Y.columns)
    fits = [f for f in ref["fits"] if f["REML"] == reml and f["model"] == model["name"]]
    assert fits
    for f in fits:
        g = genes.index(f["gene"])
        assert fit.error[g] == "" and fit.converged[g], f["gene"]
        objectives = [f["objective"]] + ([f["tight"]["objective"]] if f.get("tight") else [])
        for objective in objectives:
            assert fit.deviance[g] <= objective + 1e-7 * abs(objective), (f["gene"], objective)
