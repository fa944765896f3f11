"""The fast engine against an independent dense likelihood on tiny data.

The brute force builds the n x n covariance V = sigma^2 (I + sum_j gamma_j Z_j Z_j')
explicitly and evaluates the Gaussian log-density with SciPy; its optimum is found
by a grid over the variance ratios followed by a local polish. No code is shared
with the package.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import scipy.stats
from conftest import fit_frame

N = 40


def _dataset(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "a": pd.Categorical(rng.integers(0, 5, N).astype(str)),
            "b": pd.Categorical(rng.integers(0, 4, N).astype(str)),
            "x": rng.normal(size=N),
            "t": pd.Categorical(rng.integers(0, 2, N).astype(str)),
        }
    )
    sd_a, sd_b = rng.choice([0.0, 0.3, 1.0, 3.0], size=2)
    eff_a = rng.normal(size=5) * sd_a
    eff_b = rng.normal(size=4) * sd_b
    frame["y"] = (
        2.0
        + 0.5 * frame["x"]
        + eff_a[frame["a"].cat.codes]
        + eff_b[frame["b"].cat.codes]
        + rng.normal(size=N)
    )
    return frame


def _matrices(frame: pd.DataFrame):
    X = np.column_stack([np.ones(N), frame["x"], (frame["t"] == "1").astype(float)])
    Zs = [pd.get_dummies(frame[f]).to_numpy(float) for f in ("a", "b")]
    return frame["y"].to_numpy(), X, Zs


def _profiled(y, X, Zs, gamma, reml):
    n, p = X.shape
    V = np.eye(n) + sum(g * Z @ Z.T for g, Z in zip(gamma, Zs, strict=False))
    Vi = np.linalg.inv(V)
    A = X.T @ Vi @ X
    beta = np.linalg.solve(A, X.T @ Vi @ y)
    resid = y - X @ beta
    nu = n - p if reml else n
    sigma2 = resid @ Vi @ resid / nu
    # -2 log-likelihood at the profiled sigma^2, from SciPy's multivariate normal
    dev = -2 * scipy.stats.multivariate_normal(X @ beta, sigma2 * V).logpdf(y)
    if reml:
        # REML adds log|X'V^-1 X / sigma^2| and drops p log(2 pi) (lme4's REMLcrit)
        dev += np.linalg.slogdet(A / sigma2)[1] - p * np.log(2 * np.pi)
    return dev, beta, sigma2


def _brute_optimum(y, X, Zs, reml):
    grid = np.concatenate([[0.0], np.logspace(-3, 3, 19)])
    best = min(
        (_profiled(y, X, Zs, g, reml)[0], g) for g in itertools.product(grid, repeat=len(Zs))
    )
    res = scipy.optimize.minimize(
        lambda g: _profiled(y, X, Zs, np.abs(g), reml)[0],
        np.asarray(best[1]),
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000},
    )
    return min(best[0], res.fun)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
def test_optimum_matches_brute_force(seed, reml):
    frame = _dataset(seed)
    y, X, Zs = _matrices(frame)
    design, fit = fit_frame("y ~ x + t + (1|a) + (1|b)", frame, reml=reml)
    assert design.columns == ["(Intercept)", "x", "t1"]
    assert fit.converged[0]

    # the reported deviance is the brute-force likelihood at the reported estimates
    dev, beta, sigma2 = _profiled(y, X, Zs, fit.gamma[0], reml)
    assert fit.deviance[0] == pytest.approx(dev, rel=1e-10)
    np.testing.assert_allclose(fit.beta[0], beta, rtol=1e-8, atol=1e-10)
    assert fit.sigma2[0] == pytest.approx(sigma2, rel=1e-9)

    # and no point of the brute-force search does better
    assert fit.deviance[0] <= _brute_optimum(y, X, Zs, reml) + 1e-9 * abs(dev)


def test_boundary_solution_is_exactly_zero():
    """A factor without effect often has its optimum on the boundary: exactly 0,
    with a non-negative derivative there (first-order optimality)."""
    hits = 0
    for seed in range(40):
        frame = _dataset(seed)
        y, X, Zs = _matrices(frame)
        _, fit = fit_frame("y ~ x + t + (1|a) + (1|b)", frame, reml=False)
        for j in np.flatnonzero(fit.gamma[0] == 0):
            hits += 1
            g = fit.gamma[0].copy()
            base = _profiled(y, X, Zs, g, False)[0]
            g[j] = 1e-6
            assert _profiled(y, X, Zs, g, False)[0] >= base
    assert hits >= 3
