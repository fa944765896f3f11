"""Moment estimates of the variance ratios, as starting points for the search.

Two cheap estimators, each computed for all genes at once from the sufficient
statistics; per gene the one with the better criterion is used. With many
observations per level they are close to the optimum, where the shared grid of
:mod:`.grid` is coarse, and save Newton iterations.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..suffstats import DesignGram, ResponseStats

__all__ = ["Moments", "moment_start", "moments", "quadratic"]


def quadratic(V: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``v' M v`` for every row ``v`` of ``V``, row by row.

    Not BLAS: a gene's value must not depend on which other genes share its batch.
    """
    return np.einsum("gi,ij,gj->g", V, M, V)


class Moments(NamedTuple):
    """What the moment estimators need of the design, computed once for all genes."""

    n_obs: int
    n_fixed: int
    factor_sizes: tuple[int, ...]
    counts: np.ndarray  # (q,) observations per level
    xx_inv: np.ndarray  # (p, p) (X'X)^-1
    xx_inv_xz: np.ndarray  # (p, q) (X'X)^-1 X'Z
    membership: np.ndarray  # (k, q) 1 where a level belongs to a factor
    a_inv: np.ndarray  # (k + 1, k + 1) inverse of MINQUE(0)'s expectations


# Levels above which the sums of moments() are taken from the sparse Z'Z rather than a
# dense q x q matrix (rounding differs slightly; both are exact sums).
_DENSE_LEVELS = 1000


def _sparse_sums(gram: DesignGram, xx_inv_xz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block sums of ``Q0 * Q0`` and of ``diag(Q0)`` by factor, ``Q0 = Z'Z - Z'X H``.

    ``|C - R|^2 = |C|^2 - 2 <C, R> + |R|^2`` blockwise, with ``<C, R>`` over the
    non-zeros of ``C = Z'Z`` and ``|R_ij|^2 = <X_i'X_i, H_j H_j'>`` for the rank-``p``
    ``R = Z'X H``: no ``q x q`` matrix.
    """
    k, lf = len(gram.factor_sizes), gram.level_factor
    C = gram.ZtZ.tocoo()
    R = np.einsum("ep,pe->e", gram.ZtX[C.row], xx_inv_xz[:, C.col])
    pair = lf[C.row] * k + lf[C.col]
    sums = np.bincount(pair, weights=C.data * (C.data - 2 * R), minlength=k * k).reshape(k, k)
    for i in range(k):
        Xi = gram.ZtX[lf == i]
        for j in range(k):
            Hj = xx_inv_xz[:, lf == j]
            sums[i, j] += np.vdot(Xi.T @ Xi, Hj @ Hj.T)
    diag = gram.ZtZ.diagonal() - np.einsum("qp,pq->q", gram.ZtX, xx_inv_xz)
    return sums, np.bincount(lf, weights=diag, minlength=k)


def moments(gram: DesignGram) -> Moments:
    """The gene-independent parts of the MINQUE(0) and one-way ANOVA estimators.

    They cost dense products of the size of ``Z'Z`` (thousands of levels for
    InstEval-like designs): computed once per fit, not once per batch of genes.
    """
    n, p, k = gram.n_obs, gram.n_fixed, len(gram.factor_sizes)
    xx_inv_xz = np.linalg.solve(gram.XtX, gram.ZtX.T)
    B = (gram.level_factor[None, :] == np.arange(k)[:, None]).astype(float)
    A = np.empty((k + 1, k + 1))
    if gram.n_levels <= _DENSE_LEVELS:
        Q0 = gram.ZtZ.toarray() - gram.ZtX @ xx_inv_xz
        A[:k, :k] = B @ (Q0 * Q0) @ B.T
        A[:k, k] = A[k, :k] = B @ np.diag(Q0)
    else:
        A[:k, :k], A[:k, k] = _sparse_sums(gram, xx_inv_xz)
        A[k, :k] = A[:k, k]
    A[k, k] = n - p
    return Moments(
        n_obs=n,
        n_fixed=p,
        factor_sizes=tuple(gram.factor_sizes),
        counts=gram.ZtZ.diagonal(),
        xx_inv=np.linalg.inv(gram.XtX),
        xx_inv_xz=xx_inv_xz,
        membership=B,
        a_inv=np.linalg.inv(A),
    )


def _one_way(m: Moments, stats: ResponseStats) -> np.ndarray:
    """One-way ANOVA estimate of each variance ratio, each factor on its own."""
    n, counts = m.n_obs, m.counts
    starts = []
    offset = 0
    for size in m.factor_sizes:
        sl = slice(offset, offset + size)
        nl = counts[sl]
        between = (stats.ZtY[:, sl] ** 2 / nl).sum(axis=1)
        within = np.maximum(stats.ss - between, 0.0) / (n - size)
        n0 = (n - (nl**2).sum() / n) / (size - 1)
        sigma_a = np.maximum((between / (size - 1) - within) / n0, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            starts.append(np.where(within > 0, sigma_a / within, 1.0))
        offset += size
    return np.clip(np.stack(starts, axis=1), 1e-3, 1e3)


def _minque(m: Moments, stats: ResponseStats) -> np.ndarray:
    """MINQUE(0) estimates of the variance ratios (Rao 1971), clipped at 0.

    The quadratic forms |Z_j'P_0 y|^2 of the fixed-effects-only projection P_0
    are equated to their expectations; the coefficients do not depend on the
    gene (:func:`moments`), so this is one (k + 1) x (k + 1) solve for all genes.
    """
    k = len(m.factor_sizes)
    u0 = stats.ZtY - np.einsum("gp,pq->gq", stats.XtY, m.xx_inv_xz)
    rss0 = stats.ss - quadratic(stats.XtY, m.xx_inv)
    rhs = np.concatenate([np.einsum("gq,kq->gk", u0 * u0, m.membership), rss0[:, None]], axis=1)
    sol = np.einsum("gj,ij->gi", rhs, m.a_inv)
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma = np.maximum(sol[:, :k], 0.0) / sol[:, k : k + 1]
    return np.where(np.isfinite(gamma) & (sol[:, k : k + 1] > 0), gamma, 1.0)


def moment_start(engine, m: Moments, stats: ResponseStats):
    """Per gene, the better of the MINQUE(0) and the one-way ANOVA estimates.

    Better by ``engine``'s criterion; ``m`` from :func:`moments` of the design.
    Returns the estimates (``G x k``; NaN rows where neither can be evaluated) and
    their criterion (``G``).
    """
    minque = _minque(m, stats)
    one_way = _one_way(m, stats)
    f_minque = engine.deviance(minque, stats)
    f_one_way = engine.deviance(one_way, stats)
    use_one_way = np.isfinite(f_one_way) & ~(f_minque <= f_one_way)
    start = np.where(use_one_way[:, None], one_way, minque)
    f_start = np.where(use_one_way, f_one_way, f_minque)
    start[~np.isfinite(f_start)] = np.nan
    return start, f_start
