"""Random slopes, kinship and weights against an independent dense likelihood.

For tiny random designs the brute force builds the n x n covariance
``V = W^-1 + sum_j Z_j (I (x) T_j T_j') Z_j'`` (a kinship term: ``theta^2 Z K Z'``)
explicitly, profiles ``beta`` and ``sigma^2`` by generalised least squares, and
minimises the ML deviance or REML criterion over ``theta`` with L-BFGS-B from many
starts. No code is shared with the package. The package's optimum must be at least
as good as the best the brute force finds, and its reported criterion must be the
dense likelihood's value at its own estimates. At those estimates, the BLUPs and
their conditional variances must be the dense formulas' ``Sigma Z' V^-1 (y - X beta)``
and ``Sigma - Sigma Z' V^-1 Z Sigma``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.optimize

import scvarpart as svp

N = 48


def _design(kind: str, seed: int):
    """obs, y, the formula and the fit's options of one random design."""
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {
            "g": pd.Categorical(rng.integers(0, 6, N).astype(str)),
            "h": pd.Categorical(rng.integers(0, 3, N).astype(str)),
            "x": rng.normal(size=N),
            "t": rng.uniform(0, 3, N),
        }
    )
    sd = rng.choice([0.0, 0.4, 1.5], size=3)
    g = obs["g"].cat.codes.to_numpy()
    h = obs["h"].cat.codes.to_numpy()
    y = 1.0 + 0.3 * obs["x"].to_numpy() + rng.normal(size=N)
    y += rng.normal(size=6)[g] * sd[0] + rng.normal(size=6)[g] * sd[1] * obs["t"].to_numpy()
    y += rng.normal(size=3)[h] * sd[2]
    options: dict = {}
    if kind == "slope":
        formula = "~ x + (1 + t|g) + (1|h)"
    elif kind == "uncorrelated":
        formula = "~ x + (t||g)"
    elif kind == "kinship":
        L = rng.normal(size=(6, 6)) * 0.5 + np.eye(6)
        K = L @ L.T / 6
        levels = list(obs["g"].cat.categories)
        options["covariance"] = {"g": pd.DataFrame(K, index=levels, columns=levels)}
        formula = "~ x + (1|g) + (1|h)"
    else:  # weights, with a slope
        obs["w"] = rng.uniform(0.3, 3.0, N)
        y = 1.0 + (y - 1.0) / np.sqrt(obs["w"].to_numpy())
        options["weights"] = "w"
        formula = "~ x + (0 + t|g) + (1|h)"
    return obs, y, formula, options


def _blocks(obs, formula, options):
    """Per term: its Z (n x levels*r), r, and K (or None), for the brute force."""

    def indicator(col):
        return pd.get_dummies(obs[col]).to_numpy(float)

    t = obs["t"].to_numpy()
    Zg, Zh = indicator("g"), indicator("h")
    if "(1 + t|g)" in formula:
        Z = np.stack([Zg, Zg * t[:, None]], axis=2).reshape(N, -1)
        return [(Z, 2, None), (Zh, 1, None)]
    if "(t||g)" in formula:
        return [(Zg, 1, None), (Zg * t[:, None], 1, None)]
    if "covariance" in options:
        return [(Zg, 1, options["covariance"]["g"].to_numpy()), (Zh, 1, None)]
    return [(Zg * t[:, None], 1, None), (Zh, 1, None)]


def _term_covariances(theta, blocks):
    """Per term, the covariance of its effects over ``sigma^2`` (levels x coefficients)."""
    out, pos = [], 0
    for Z, r, K in blocks:
        m = r * (r + 1) // 2
        rows, cols = [], []
        for b in range(r):  # column-major lower triangle, as lme4
            for a in range(b, r):
                rows.append(a)
                cols.append(b)
        T = np.zeros((r, r))
        T[rows, cols] = theta[pos : pos + m]
        pos += m
        S = T @ T.T
        levels = Z.shape[1] // r
        out.append(np.kron(np.eye(levels), S) if K is None else K * S[0, 0])
    return out


def _gls(theta, y, X, blocks, w):
    """``V`` over ``sigma^2``, its inverse, ``X'V^-1X``, the GLS ``beta`` and residuals."""
    V = np.diag(1.0 / w)
    for (Z, _, _), cov in zip(blocks, _term_covariances(theta, blocks), strict=True):
        V += Z @ cov @ Z.T
    Vi = np.linalg.inv(V)
    A = X.T @ Vi @ X
    beta = np.linalg.solve(A, X.T @ Vi @ y)
    return V, Vi, A, y - X @ beta


def _criterion(theta, y, X, blocks, w, reml):
    n, p = X.shape
    V, Vi, A, res = _gls(theta, y, X, blocks, w)
    nu = n - p if reml else n
    r2 = res @ Vi @ res
    dev = np.linalg.slogdet(V)[1] + nu * (1 + np.log(2 * np.pi * r2 / nu))
    return dev + (np.linalg.slogdet(A)[1] if reml else 0.0)


def _blups(theta, sigma2, y, X, blocks, w):
    """Per term, ``E(b | y)`` and ``diag Var(b | y)`` given ``beta`` (lme4's condVar)."""
    _, Vi, _, res = _gls(theta, y, X, blocks, w)
    out = []
    for (Z, _, _), cov in zip(blocks, _term_covariances(theta, blocks), strict=True):
        CZ = cov @ Z.T
        out.append((CZ @ Vi @ res, sigma2 * np.diag(cov - CZ @ Vi @ CZ.T)))
    return out


def _lower(blocks):
    out = []
    for _, r, _ in blocks:
        for b in range(r):
            for a in range(b, r):
                out.append(0.0 if a == b else None)
    return out


def _brute(y, X, blocks, w, reml, seed, starts):
    lower = _lower(blocks)
    rng = np.random.default_rng(seed)
    best = np.inf
    bounds = [(lo, 20.0) if lo is not None else (-20.0, 20.0) for lo in lower]
    for _ in range(starts):
        x0 = np.array([rng.uniform(0, 2) if lo is not None else rng.normal() for lo in lower])
        res = scipy.optimize.minimize(
            _criterion, x0, args=(y, X, blocks, w, reml), method="L-BFGS-B", bounds=bounds
        )
        best = min(best, res.fun)
    return best


KINDS = ["slope", "uncorrelated", "kinship", "weights"]
# the package's names of the terms of each kind, in the order of _blocks
TERM_NAMES = {
    "slope": ["g", "h"],
    "uncorrelated": ["g", "g.t"],
    "kinship": ["g", "h"],
    "weights": ["g.t", "h"],
}


def _check(kind, reml, seed, starts):
    obs, y, formula, options = _design(kind, seed)
    res = svp.lmm.fit(formula, y[:, None], obs=obs, method="REML" if reml else "ML", **options)
    assert res.per_gene["converged"].iloc[0]
    ours = -2 * res.per_gene["loglik"].iloc[0]
    X = np.column_stack([np.ones(N), obs["x"]])
    blocks = _blocks(obs, formula, options)
    w = obs["w"].to_numpy() if "weights" in options else np.ones(N)
    # the criterion reported is the dense likelihood's at the reported estimates
    theta = res.theta.iloc[0].to_numpy()
    assert ours == pytest.approx(_criterion(theta, y, X, blocks, w, reml), rel=1e-9, abs=1e-8)
    assert ours <= _brute(y, X, blocks, w, reml, seed, starts) + 1e-7 * abs(ours)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
@pytest.mark.parametrize("seed", range(2))
def test_optimum_at_least_as_good_as_brute_force(kind, reml, seed):
    _check(kind, reml, seed, starts=10)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
@pytest.mark.parametrize("seed", range(2, 30))
def test_optimum_at_least_as_good_as_brute_force_many(kind, reml, seed):
    _check(kind, reml, seed, starts=25)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(3))
def test_blups_are_the_dense_conditional_means_and_variances(kind, seed):
    """BLUPs and conditional variances from the statistics = the n x n formulas."""
    obs, y, formula, options = _design(kind, seed)
    res = svp.lmm.fit(formula, y[:, None], obs=obs, method="REML", store_blups=True, **options)
    X = np.column_stack([np.ones(N), obs["x"]])
    blocks = _blocks(obs, formula, options)
    w = obs["w"].to_numpy() if "weights" in options else np.ones(N)
    theta = res.theta.iloc[0].to_numpy()
    sigma2 = res.variance["Residual"].iloc[0]
    if "weights" in options:  # the residual component is sigma^2 mean(1/w)
        sigma2 /= np.mean(1.0 / w)
    for name, (mode, var) in zip(
        TERM_NAMES[kind], _blups(theta, sigma2, y, X, blocks, w), strict=True
    ):
        np.testing.assert_allclose(res.blups[name].iloc[0], mode, atol=1e-9 * np.abs(y).max())
        np.testing.assert_allclose(res.blup_var[name].iloc[0], var, rtol=1e-8, atol=1e-14)
