"""An exhaustive search for the ML and REML optimum of tiny mixed models, sharing
no code with the package.

The n x n covariance ``V = I + sum_j gamma_j Z_j Z_j'`` is built explicitly and
the profiled criterion (lme4's ML deviance and REML criterion) is evaluated by
dense linear algebra at every point of a product grid in ``log gamma`` (with 0
for each factor), followed by bound-constrained quasi-Newton descents in
``theta = sqrt(gamma)`` (lme4's parametrisation) from the best grid points,
overall and on every face. Designs are generated here too: crossed, nested and
partially crossed factors, unbalanced.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.optimize

_LOG_2PI = np.log(2 * np.pi)
# Grid of every variance ratio: 0 and 11 values from 1e-2 to 1e3 (8 for four factors).
_GRID = {k: np.concatenate([[0.0], np.logspace(-2, 3, 11 if k < 4 else 8)]) for k in (1, 2, 3, 4)}


def random_design(rng: np.random.Generator) -> tuple[pd.DataFrame, str]:
    """A table of 8-40 observations and a formula with 2-4 random intercepts of
    2-7 levels: crossed, nested in an earlier factor, or partially crossed with
    one (following its levels 70% of the time); unbalanced level frequencies;
    sometimes a covariate and a 3-level fixed factor."""
    n = int(rng.integers(8, 41))
    k = int(rng.integers(2, 5))
    cols: dict[str, np.ndarray] = {}
    for j in range(k):
        levels = int(rng.integers(2, 8))
        p = rng.dirichlet(np.full(levels, rng.choice([0.5, 1.0, 5.0])))
        kind = rng.choice(["crossed", "nested", "partial"]) if j else "crossed"
        own = rng.choice(levels, size=n, p=p)
        if kind == "crossed":
            codes = own
        else:
            parent = cols[f"f{int(rng.integers(0, j))}"]
            if kind == "nested":
                codes = parent * 10 + own
            else:
                codes = np.where(rng.random(n) < 0.7, parent % levels, own)
        cols[f"f{j}"] = codes
    frame = pd.DataFrame({c: pd.Categorical([f"L{v}" for v in codes]) for c, codes in cols.items()})
    fixed = []
    if rng.random() < 0.5:
        frame["x"] = rng.normal(size=n)
        fixed.append("x")
    if rng.random() < 0.3:
        frame["t"] = pd.Categorical(rng.choice(["a", "b", "c"], size=n))
        fixed.append("t")
    return frame, "~ " + " + ".join(fixed + [f"(1|{c})" for c in cols])


def random_responses(
    rng: np.random.Generator, X: np.ndarray, Zs: list[np.ndarray], G: int
) -> np.ndarray:
    """``G`` responses with random fixed effects and variances of 0, 0.3^2, 1 or
    3^2 per factor (so that optima on the boundary are common)."""
    n = X.shape[0]
    Y = rng.normal(size=(n, G)) * rng.choice([1.0, 0.3], size=G)
    for Z in Zs:
        Y += Z @ rng.normal(size=(Z.shape[1], G)) * rng.choice([0.0, 0.3, 1.0, 3.0], size=G)
    return Y + X @ rng.normal(size=(X.shape[1], G))


def criteria(Y: np.ndarray, X: np.ndarray, Zs: list[np.ndarray], gammas: np.ndarray):
    """ML deviance and REML criterion of every response (columns of ``Y``) at
    every row of ``gammas``: two arrays ``(B, G)``, +inf where there is no
    residual."""
    n, p = X.shape
    ZZ = np.stack([Z @ Z.T for Z in Zs])
    V = np.eye(n) + np.einsum("bk,kij->bij", gammas, ZZ)
    sign, logdet_v = np.linalg.slogdet(V)
    W = np.linalg.solve(V, np.concatenate([Y, X], axis=1)[None])
    VY, VX = W[..., : Y.shape[1]], W[..., Y.shape[1] :]
    A = np.einsum("ni,bnj->bij", X, VX)
    b = np.einsum("ni,bng->big", X, VY)
    yVy = np.einsum("ng,bng->bg", Y, VY)
    r2 = yVy - np.einsum("big,big->bg", b, np.linalg.solve(A, b))
    logdet_x = np.linalg.slogdet(A)[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ml = logdet_v[:, None] + n * (1 + _LOG_2PI + np.log(r2 / n))
        reml = (logdet_v + logdet_x)[:, None] + (n - p) * (1 + _LOG_2PI + np.log(r2 / (n - p)))
    bad = ~(r2 > 0) | (sign <= 0)[:, None]
    return np.where(bad, np.inf, ml), np.where(bad, np.inf, reml)


def _value_and_gradient(y, X, Zs, gamma, reml):
    """The criterion and its gradient in gamma at one point, from V^-1 and P."""
    n, p = X.shape
    V = np.eye(n) + sum(g * (Z @ Z.T) for g, Z in zip(gamma, Zs, strict=True))
    cho = scipy.linalg.cho_factor(V, lower=True)
    Vi = scipy.linalg.cho_solve(cho, np.eye(n))
    ViX = Vi @ X
    A = X.T @ ViX
    P = Vi - ViX @ np.linalg.solve(A, ViX.T)
    Py = P @ y
    r2 = float(y @ Py)
    if not r2 > 0:
        return np.inf, np.zeros(len(Zs))
    nu = n - p if reml else n
    logdet = 2 * np.log(np.diagonal(cho[0])).sum()
    if reml:
        logdet += np.linalg.slogdet(A)[1]
    f = logdet + nu * (1 + _LOG_2PI + np.log(r2 / nu))
    D = P if reml else Vi  # d log|V| (+ log|X'V^-1 X|) / d gamma_j = tr(D Z_j Z_j')
    grad = np.array(
        [np.einsum("ij,ij->", Z, D @ Z) - nu * np.sum((Z.T @ Py) ** 2) / r2 for Z in Zs]
    )
    return f, grad


def _descend(y: np.ndarray, X, Zs, reml: bool, theta0: np.ndarray) -> float:
    """Bound-constrained quasi-Newton descent in theta = sqrt(gamma) >= 0. Its
    precision matters little: the search must find every basin; the package is
    checked against it one way."""

    def f(theta):
        theta = np.minimum(theta, 1e4)
        value, grad = _value_and_gradient(y, X, Zs, theta**2, reml)
        if not np.isfinite(value):
            return 1e12, np.zeros_like(theta)
        return value, 2 * theta * grad

    res = scipy.optimize.minimize(
        f,
        theta0,
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, None)] * len(Zs),
        options={"ftol": 1e-14, "gtol": 1e-10, "maxiter": 500},
    )
    return float(res.fun)


def exhaustive_optimum(Y: np.ndarray, X: np.ndarray, Zs: list[np.ndarray]):
    """The best ML deviance and REML criterion found for every response (two
    arrays ``(G,)``): every grid point, and descents from the three best points
    and from the best point of every face whose best is within 5 units of the
    best on the grid."""
    k = len(Zs)
    grid = np.array(list(itertools.product(_GRID[k], repeat=k)))
    ml = np.empty((len(grid), Y.shape[1]))
    reml = np.empty_like(ml)
    for a in range(0, len(grid), 2048):
        ml[a : a + 2048], reml[a : a + 2048] = criteria(Y, X, Zs, grid[a : a + 2048])
    faces = (grid > 0) @ (1 << np.arange(k))
    out = []
    for values, is_reml in ((ml, False), (reml, True)):
        best = values.min(axis=0)
        for g in range(Y.shape[1]):
            v = values[:, g]
            starts = set(np.argsort(v)[:3].tolist())
            for face in range(2**k):
                on_face = np.where(faces == face, v, np.inf)
                i = int(np.argmin(on_face))
                if on_face[i] <= best[g] + 5.0:
                    starts.add(i)
            for i in starts:
                if np.isfinite(v[i]):
                    theta0 = np.sqrt(grid[i]) + 1e-3 * (grid[i] == 0)
                    best[g] = min(best[g], _descend(Y[:, g], X, Zs, is_reml, theta0))
        out.append(best)
    return out[0], out[1]
