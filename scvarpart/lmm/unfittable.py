"""Genes whose model has no estimates, recognised from the statistics before fitting.

- A constant gene has no variance to partition.
- A gene the fixed effects explain exactly leaves no residual for any model.
- A gene the fixed effects and the grouping factors' levels together explain
  exactly has no finite optimum: along a path where the residual variance
  vanishes and the random-effect variances grow, ``r2 = y'Py`` tends to 0 and
  the criterion to minus infinity (with fewer random effects than
  observations, which the design check ensures). Where the levels leave a
  residual ``rss > 0``, ``r2 >= rss`` bounds the criterion below and it grows
  without bound as any variance ratio does, so a finite optimum exists, with
  ``sigma^2 >= rss / nu``.

The decision depends only on the residual sums of squares of least-squares
fits, relative to the gene's sum of squares, so it is the same however the
optimiser would have approached the boundary, and stable under tiny
perturbations of the data.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from ..suffstats import DesignGram, ResponseStats
from .starts import quadratic

__all__ = ["RESIDUAL_VANISHED", "unfittable_reasons"]

# Residual sum of squares, relative to the gene's, below which it counts as 0:
# far above the rounding of the sums (~1e-13) and far below any residual that
# leaves digits to estimate a variance from.
RESIDUAL_VANISHED = 1e-8
# Pivots of a Gram matrix below this fraction of its largest diagonal entry mark
# its null space (the intercept repeated by every factor's indicators).
_RANK_TOL = 1e-10


def _pinv_quadratic(T: np.ndarray, R: np.ndarray) -> np.ndarray:
    """``r' T^+ r`` for every row ``r`` of ``R`` (``T`` symmetric, PSD, ``r`` in its range).

    By a Cholesky factorisation with pivoting that stops at the rank (LAPACK's dpstrf):
    a third of the cost of an eigendecomposition.
    """
    if T.shape[0] == 0:
        return np.zeros(len(R))
    tol = _RANK_TOL * max(T.diagonal().max(), np.finfo(float).tiny)
    U, piv, rank, info = scipy.linalg.lapack.dpstrf(T, lower=0, tol=tol)
    if info < 0:
        raise np.linalg.LinAlgError("dpstrf failed")
    cols = piv[:rank] - 1
    z = scipy.linalg.solve_triangular(U[:rank, :rank], R[:, cols].T, trans="T", lower=False)
    return np.einsum("rg,rg->g", z, z)


def _levels_residual(gram: DesignGram, stats: ResponseStats, factors) -> np.ndarray:
    """Residual sum of squares of every gene's least-squares fit, from the statistics.

    The fit is on the fixed effects and the levels of ``factors`` (indices).

    The first factor's diagonal block is eliminated in closed form; the rest
    is a pseudo-inverse (the indicators of each factor sum to the intercept).
    """
    lf = gram.level_factor
    idx1 = np.flatnonzero(lf == factors[0])
    idxR = np.flatnonzero(np.isin(lf, factors[1:]))
    C = gram.ZtZ.tocsr()
    block = C[idx1][:, idx1]
    if block.nnz > len(idx1) or np.any(block.diagonal() <= 0):
        # not diagonal (slopes, a known covariance): no closed-form elimination
        idx1, idxR = idx1[:0], np.flatnonzero(np.isin(lf, factors))
    d = C.diagonal()[idx1]
    E = sp.hstack([C[idx1][:, idxR], sp.csr_matrix(gram.ZtX[idx1])]).tocsr()
    CRR = C[idxR][:, idxR].toarray()
    GRR = np.block([[CRR, gram.ZtX[idxR]], [gram.ZtX[idxR].T, gram.XtX]])
    T = GRR - (E.T @ sp.diags(1.0 / d) @ E).toarray()  # sparse: thousands of levels
    b1 = stats.ZtY[:, idx1]
    b2 = np.concatenate([stats.ZtY[:, idxR], stats.XtY], axis=1)
    r = b2 - (E.T @ (b1 / d).T).T
    return stats.ss - np.einsum("gl,l->g", b1 * b1, 1.0 / d) - _pinv_quadratic(T, r)


def unfittable_reasons(
    gram: DesignGram, stats: ResponseStats, factor_names: list[str]
) -> np.ndarray:
    """Per gene, why its model has no estimates ('' where it has).

    Parameters
    ----------
    gram
        Cross-products of the design.
    stats
        Sufficient statistics of the genes.
    factor_names
        Names of the grouping factors, for the messages.
    """
    G, k = len(stats), len(gram.factor_sizes)
    reason = np.full(G, "", dtype=object)
    scale = np.maximum(np.abs(stats.mean), np.finfo(float).tiny)
    constant = stats.ss <= stats.n_obs * (1e-12 * scale) ** 2
    reason[constant] = np.where(
        stats.mean[constant] == 0, "all values are zero", "constant expression (no variance)"
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        ols = stats.ss - quadratic(stats.XtY, np.linalg.inv(gram.XtX))
        explained = ~constant & (ols <= RESIDUAL_VANISHED * stats.ss)
    reason[explained] = "the fixed effects explain the gene exactly (zero residual sum of squares)"
    rest = ~constant & ~explained
    if not rest.any():
        return reason
    order = np.argsort(gram.factor_sizes)[::-1]  # the largest factor eliminated first
    with np.errstate(invalid="ignore", divide="ignore"):
        exact = rest & (_levels_residual(gram, stats, order) <= RESIDUAL_VANISHED * stats.ss)
    for g in np.flatnonzero(exact):
        one = stats.subset([g])
        alone = [
            factor_names[j]
            for j in range(k)
            if _levels_residual(gram, one, [j])[0] <= RESIDUAL_VANISHED * one.ss[0]
        ]
        what = (
            f"constant within the levels of {alone[0]!r} (after the fixed effects)"
            if alone
            else "explained by the fixed effects and the levels of "
            + ", ".join(map(repr, factor_names))
        )
        reason[g] = (
            f"no finite optimum: the gene is {what} up to less than "
            f"{RESIDUAL_VANISHED:g} of its sum of squares, so the likelihood grows "
            "without bound as the residual variance vanishes (or peaks where the "
            "residual variance has no digits left to estimate it)"
        )
    return reason
