"""The null's point mass at 0 of a variance's likelihood-ratio statistic (``lmm.zero_mass``).

Checked against brute force: genes simulated under the null on random crossed designs,
the criterion's derivative at the tested variance = 0 computed from the dense matrices,
and the share of genes where it does not fall (the statistic is then 0).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scvarpart.lmm.terms import ReTerm
from scvarpart.lmm.zero_mass import _score_forms, quadratic_form_below_zero, zero_mass
from scvarpart.suffstats import DesignGram


@pytest.mark.parametrize("seed", range(6))
def test_quadratic_form_probability_matches_simulation(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 10))
    lam = rng.exponential(1.0, (3, k)) * rng.choice([1.0, 50.0], (3, 1))
    dof = int(rng.choice([0, 30, 5000]))
    c = lam.sum(axis=1) / (k + dof + 3) * rng.choice([1.0, 1.5], 3)
    got = quadratic_form_below_zero(lam - c[:, None], -c, dof)
    draws = rng.standard_normal((200_000, k)) ** 2
    chi2 = rng.chisquare(dof, 200_000) if dof else np.zeros(200_000)
    for g in range(3):
        want = np.mean(draws @ (lam[g] - c[g]) - c[g] * chi2 <= 0)
        # quasi-Monte Carlo's error up to about 0.005 (1,024 points); simulation's 0.001
        assert got[g] == pytest.approx(want, abs=0.008)


def test_all_weights_on_one_side():
    got = quadratic_form_below_zero(np.array([[-1.0, -2.0], [1.0, 2.0]]), np.array([-1.0, 0.0]), 5)
    np.testing.assert_array_equal(got, [1.0, 0.0])


def _design(rng):
    """A random crossed design: two factors of 4-7 levels, one covariate."""
    n = int(rng.integers(60, 120))
    sizes = (int(rng.integers(4, 8)), int(rng.integers(4, 8)))
    codes = [rng.integers(0, s, n) for s in sizes]
    codes = [np.r_[np.arange(s), c[s:]] for s, c in zip(sizes, codes, strict=True)]
    Z = np.hstack([np.eye(s)[c] for s, c in zip(sizes, codes, strict=True)])
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    Xc = X - np.r_[0.0, X[:, 1].mean()]
    gram = DesignGram(
        n_obs=n,
        factor_sizes=sizes,
        ZtZ=sp.csr_matrix(Z.T @ Z),
        ZtX=Z.T @ Xc,
        XtX=Xc.T @ Xc,
        x_mean=np.r_[0.0, X[:, 1].mean()],
    )
    return gram, Z, X, sizes


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_zero_mass_is_the_share_of_null_genes_whose_criterion_rises(seed, reml):
    rng = np.random.default_rng(seed)
    gram, Z, X, sizes = _design(rng)
    terms = [ReTerm("a", sizes[0]), ReTerm("b", sizes[1])]
    j = int(rng.integers(0, 2))
    own = np.arange(sizes[0]) if j == 0 else sizes[0] + np.arange(sizes[1])
    other = np.setdiff1d(np.arange(Z.shape[1]), own)
    theta0 = rng.uniform(0.2, 1.5)
    n = len(X)
    V = np.eye(n) + theta0**2 * Z[:, other] @ Z[:, other].T
    Vi = np.linalg.inv(V)
    P = Vi - Vi @ X @ np.linalg.solve(X.T @ Vi @ X, X.T @ Vi)
    Zj = Z[:, own]
    Y = np.linalg.cholesky(V) @ rng.standard_normal((n, 40_000))
    PY = P @ Y
    ratio = np.sum((Zj.T @ PY) ** 2, axis=0) / np.sum(Y * PY, axis=0)
    if reml:
        rises = np.trace(Zj.T @ P @ Zj) - (n - 2) * ratio >= 0
    else:
        rises = np.trace(Zj.T @ Vi @ Zj) - n * ratio >= 0
    got = zero_mass(gram, terms, j, np.array([[theta0], [np.nan]]), reml=reml)
    # quasi-Monte Carlo's error up to about 0.005, the simulation's 0.0025
    assert got[0] == pytest.approx(rises.mean(), abs=0.012)
    assert np.isnan(got[1])


def test_without_other_terms_and_above_the_size_limit(monkeypatch):
    rng = np.random.default_rng(9)
    gram, _, _, sizes = _design(rng)
    one = DesignGram(
        n_obs=gram.n_obs,
        factor_sizes=sizes[:1],
        ZtZ=sp.csr_matrix(gram.ZtZ.toarray()[: sizes[0], : sizes[0]]),
        ZtX=gram.ZtX[: sizes[0]],
        XtX=gram.XtX,
        x_mean=gram.x_mean,
    )
    got = zero_mass(one, [ReTerm("a", sizes[0])], 0, np.zeros((2, 0)), reml=True)
    assert got[0] == got[1] and 0.5 < got[0] < 0.8
    monkeypatch.setattr("scvarpart.lmm.zero_mass.MAX_COLUMNS", 3)
    np.testing.assert_array_equal(
        zero_mass(one, [ReTerm("a", sizes[0])], 0, np.zeros((2, 0)), reml=True), 0.5
    )


@pytest.mark.parametrize("reml", [True, False])
def test_score_forms_with_a_random_slope_among_the_other_terms(reml):
    """The general path (Lambda not diagonal, the other term ``(1 + x|a)``): the
    eigenvalues of ``Z'PZ`` and the trace of the score, against the dense matrices."""
    rng = np.random.default_rng(10)
    n, la, lb = 150, 6, 4
    a = np.r_[np.arange(la), rng.integers(0, la, n - la)]
    b = np.where(rng.uniform(size=n) < 0.8, a % lb, rng.integers(0, lb, n))  # confounded
    x = rng.standard_normal(n)
    Za = np.zeros((n, 2 * la))  # level by level: intercept, slope
    Za[np.arange(n), 2 * a], Za[np.arange(n), 2 * a + 1] = 1.0, x
    Zb = np.eye(lb)[b]
    Z = np.hstack([Za, Zb])
    X = np.column_stack([np.ones(n), x])
    Xc = X - np.r_[0.0, x.mean()]
    gram = DesignGram(
        n_obs=n,
        factor_sizes=(2 * la, lb),
        ZtZ=sp.csr_matrix(Z.T @ Z),
        ZtX=Z.T @ Xc,
        XtX=Xc.T @ Xc,
        x_mean=np.r_[0.0, x.mean()],
    )
    slope = ReTerm("a", la, n_coef=2, coefficients=("(Intercept)", "x"))
    theta0 = np.array([1.5, 1.2, 0.2])  # T = [[1.5, 0], [1.2, 0.2]], far from symmetric
    T = slope.factor(theta0)
    V = np.eye(n) + Za @ np.kron(np.eye(la), T @ T.T) @ Za.T
    Vi = np.linalg.inv(V)
    P = Vi - Vi @ X @ np.linalg.solve(X.T @ Vi @ X, X.T @ Vi)
    own, rest = np.arange(2 * la, 2 * la + lb), np.arange(2 * la)
    mu, trace = _score_forms(gram, [slope], own, rest, theta0[None], reml)
    np.testing.assert_allclose(mu[0], np.linalg.eigvalsh(Zb.T @ P @ Zb), rtol=1e-9, atol=1e-9)
    A = Zb.T @ (P if reml else Vi) @ Zb
    np.testing.assert_allclose(trace[0], np.trace(A), rtol=1e-10)


def test_more_columns_than_residual_dimensions():
    """A term with more levels than ``n - p``: ``Z'PZ`` has rank ``n - p`` at most."""
    rng = np.random.default_rng(3)
    n, la, lb = 12, 3, 11
    a = np.r_[np.arange(la), rng.integers(0, la, n - la)]
    b = np.r_[np.arange(lb), rng.integers(0, lb, n - lb)]
    Z = np.hstack([np.eye(la)[a], np.eye(lb)[b]])
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    Xc = X - np.r_[0.0, X[:, 1].mean()]
    gram = DesignGram(
        n_obs=n,
        factor_sizes=(la, lb),
        ZtZ=sp.csr_matrix(Z.T @ Z),
        ZtX=Z.T @ Xc,
        XtX=Xc.T @ Xc,
        x_mean=np.r_[0.0, X[:, 1].mean()],
    )
    theta0 = 0.7
    V = np.eye(n) + theta0**2 * Z[:, :la] @ Z[:, :la].T
    Vi = np.linalg.inv(V)
    P = Vi - Vi @ X @ np.linalg.solve(X.T @ Vi @ X, X.T @ Vi)
    Zb = Z[:, la:]
    Y = np.linalg.cholesky(V) @ rng.standard_normal((n, 100_000))
    PY = P @ Y
    ratio = np.sum((Zb.T @ PY) ** 2, axis=0) / np.sum(Y * PY, axis=0)
    rises = np.trace(Zb.T @ P @ Zb) - (n - 2) * ratio >= 0
    got = zero_mass(gram, [ReTerm("a", la), ReTerm("b", lb)], 1, np.array([[theta0]]), reml=True)
    assert got[0] == pytest.approx(rises.mean(), abs=0.012)
