"""Profiled deviance for designs with many levels, by eliminating the largest factor.

Every grouping factor's own block of ``Z'Z`` is diagonal (an observation is in
exactly one level), so the largest factor's block of the penalised system
``Omega`` (see :mod:`.dense`) is diagonal too and can be eliminated in closed
form, as MixedModels.jl does with its blocked Cholesky factor. What remains is
a dense Schur complement over the other factors' levels and the fixed effects:
for lme4's InstEval (2,972 + 1,128 + 14 levels) a 1,143 x 1,143 matrix instead
of 4,116 x 4,116. The elimination only needs the sparse cross-tabulation of
the largest factor with the rest.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from ..suffstats import DesignGram, ResponseStats
from .profiled import ProfiledDeviance

__all__ = ["BlockedDeviance"]


class BlockedDeviance(ProfiledDeviance):
    """Profiled deviance of one gene at a time, with the largest factor eliminated.

    Parameters
    ----------
    gram
        Cross-products of the design.
    reml
        REML criterion instead of the ML deviance.
    """

    def __init__(self, gram: DesignGram, reml: bool):
        super().__init__(gram, reml)
        sizes = np.asarray(gram.factor_sizes)
        self.big = int(np.argmax(sizes))
        level_factor = gram.level_factor
        self.idx1 = np.flatnonzero(level_factor == self.big)
        self.idx2 = np.flatnonzero(level_factor != self.big)
        self.rest_factor = level_factor[self.idx2]
        self.q2 = len(self.idx2)
        C = gram.ZtZ.tocsr()
        self.d = C.diagonal()[self.idx1]
        # E = [C12, Z1'X] (sparse, q1 x m); G22 = [[C22, Z2'X], [X'Z2, X'X]]
        C12 = C[self.idx1][:, self.idx2]
        self.E = sp.hstack([C12, sp.csr_matrix(gram.ZtX[self.idx1])]).tocsr()
        C22 = C[self.idx2][:, self.idx2].toarray()
        Z2X = gram.ZtX[self.idx2]
        self.G22 = np.block([[C22, Z2X], [Z2X.T, gram.XtX]])
        self.outer = _outer_products(self.E)

    def _schur(self, t1sq: float, w: np.ndarray, s2: np.ndarray) -> np.ndarray:
        """S = s2 s2' * (G22 - gamma_1 E' diag(w) E) + I over the levels."""
        m = len(s2)
        S = (self.outer @ w).reshape(m, m)  # E' diag(w) E
        S *= -t1sq
        S += self.G22
        S *= s2[:, None]
        S *= s2[None, :]
        diag = np.arange(self.q2)
        S[diag, diag] += 1.0
        return S

    def _solve(self, gamma: np.ndarray, ZtY: np.ndarray, XtY: np.ndarray, ss: float):
        theta = np.sqrt(gamma)
        t1sq = gamma[self.big]
        w = 1.0 / (t1sq * self.d + 1.0)
        s2 = np.concatenate([theta[self.rest_factor], np.ones(self.p)])
        S = self._schur(t1sq, w, s2)
        b1 = ZtY[self.idx1]
        b2 = np.concatenate([ZtY[self.idx2], XtY])
        rhs = s2 * (b2 - t1sq * (self.E.T @ (w * b1)))
        yy = ss - t1sq * np.dot(w, b1 * b1)
        try:
            L = scipy.linalg.cholesky(S, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return None
        c = scipy.linalg.solve_triangular(L, rhs, lower=True, check_finite=False)
        r2 = yy - c @ c
        logdiag = np.log(np.diagonal(L))
        dev = self.criterion(
            -np.log(w).sum() + 2 * logdiag[: self.q2].sum(), 2 * logdiag[self.q2 :].sum(), r2
        )
        return (dev, r2, L, c) if np.isfinite(dev) else None

    def deviance(self, gamma: np.ndarray, stats: ResponseStats) -> np.ndarray:
        """Deviance (ML) or REML criterion of each gene at ``gamma`` (``G x k``)."""
        out = np.full(len(stats), np.nan)
        for i in range(len(stats)):
            res = self._solve(gamma[i], stats.ZtY[i], stats.XtY[i], stats.ss[i])
            if res is not None:
                out[i] = res[0]
        return out

    def estimates(
        self, gamma: np.ndarray, stats: ResponseStats
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Deviance, residual variance ``sigma^2`` and fixed effects (centred X)."""
        G = len(stats)
        dev = np.full(G, np.nan)
        sigma2 = np.full(G, np.nan)
        beta = np.full((G, self.p), np.nan)
        for i in range(G):
            res = self._solve(gamma[i], stats.ZtY[i], stats.XtY[i], stats.ss[i])
            if res is None:
                continue
            dev[i], r2, L, c = res
            sol = scipy.linalg.solve_triangular(L, c, lower=True, trans="T", check_finite=False)
            sigma2[i] = r2 / self.nu
            beta[i] = sol[self.q2 :]
        return dev, sigma2, beta


def _outer_products(E: sp.csr_matrix) -> sp.csr_matrix:
    """The map ``w -> vec(E' diag(w) E)`` as a sparse matrix (``m^2 x q1``).

    Each row ``l`` of ``E`` contributes the outer product of its few non-zeros;
    precomputing them turns the weighted product, needed at every evaluation,
    into one sparse matrix-vector product.
    """
    m = E.shape[1]
    per_row = np.diff(E.indptr)
    row_of = np.repeat(np.arange(E.shape[0]), per_row)  # row of each non-zero
    partners = per_row[row_of]  # each non-zero pairs with every one of its row
    left = np.repeat(np.arange(E.nnz), partners)
    first = np.repeat(np.cumsum(partners) - partners, partners)
    right = E.indptr[row_of[left]] + (np.arange(len(left)) - first)
    return sp.csr_matrix(
        (E.data[left] * E.data[right], (E.indices[left] * m + E.indices[right], row_of[left])),
        shape=(m * m, E.shape[0]),
    )
