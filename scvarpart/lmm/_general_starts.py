"""Moment estimates of every term's covariance, as starting points of the general engine.

MINQUE(0) (Rao 1971) for any random-effect terms: with ``P_0`` the projection of the
fixed effects alone and ``Delta_m`` the pattern of covariance entry ``m`` of a term
(``I_levels (x) (e_a e_c' + e_c e_a')``, or ``e_a e_a'`` on the diagonal), the quadratic
forms ``u_0' Delta_m u_0`` (``u_0 = Z'P_0 y``) and ``y'P_0 y`` are equated to their
expectations, which are linear in the covariances and the residual variance with
coefficients ``tr(Q_0 Delta_m Q_0 Delta_n)``, ``tr(Q_0 Delta_m)`` and ``n - p``
(``Q_0 = Z'P_0 Z``). The coefficients do not depend on the gene: computed once per
engine, they leave one small solve for all genes. Each term's estimate relative to the
residual variance is made positive semi-definite (negative eigenvalues set to 0) and
turned into lme4's ``theta`` (the lower-triangular ``T`` with ``T T'`` equal to it).
With many observations per level the estimates lie close to the optimum, and Newton's
method needs few iterations from them.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import scipy.sparse as sp

from ..suffstats import DesignGram, ResponseStats
from .newton import _symmetric_eigen
from .terms import ReTerm

__all__ = ["MomentStarts"]


def _support(terms: list[ReTerm]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Per covariance entry ``(a, c)`` of every term: (term, columns of a, columns of c)."""
    out = []
    offset = 0
    for j, t in enumerate(terms):
        base = offset + np.arange(t.n_levels) * t.n_coef
        for a, c in t.positions:
            out.append((j, base + a, base + c))
        offset += t.n_columns
    return out


class MomentStarts:
    """The gene-independent part of MINQUE(0) for ``terms``; :meth:`theta` per gene.

    Parameters
    ----------
    gram
        Cross-products of the design.
    terms
        The random-effect terms, in the order of the columns of ``Z``.
    """

    def __init__(self, gram: DesignGram, terms: list[ReTerm]):
        self.terms = terms
        self.xx_inv = np.linalg.inv(gram.XtX)
        self.xx_inv_xz = self.xx_inv @ gram.ZtX.T
        Q0 = sp.csr_matrix(gram.ZtZ).toarray() - gram.ZtX @ self.xx_inv_xz
        self.support = _support(terms)
        K = len(self.support)
        A = np.empty((K + 1, K + 1))
        for m, (_, ia, ic) in enumerate(self.support):
            for n, (_, ja, jc) in enumerate(self.support[: m + 1]):
                A[m, n] = A[n, m] = self._trace2(Q0, ia, ic, ja, jc)
            A[m, K] = A[K, m] = Q0[ia, ic].sum() * (1.0 if np.array_equal(ia, ic) else 2.0)
        A[K, K] = gram.n_obs - gram.n_fixed
        self.a_inv = np.linalg.pinv(A)

    @staticmethod
    def _trace2(Q0, ia, ic, ja, jc) -> float:
        """``tr(Q_0 Delta_m Q_0 Delta_n)`` from the columns of the two patterns."""

        def pairs(a, c):  # the nonzero (row, column) of a pattern
            return [(a, c)] if np.array_equal(a, c) else [(a, c), (c, a)]

        total = 0.0
        for r1, c1 in pairs(ia, ic):
            for r2, c2 in pairs(ja, jc):
                # sum over levels l, l' of Q0[c2[l'], r1[l]] Q0[c1[l], r2[l']]
                total += float(np.sum(Q0[np.ix_(c2, r1)].T * Q0[np.ix_(c1, r2)]))
        return total

    def theta(self, stats: ResponseStats) -> np.ndarray:
        """The estimates in lme4's ``theta`` (``G x k``; NaN rows where they fail).

        Compiled, gene by gene: a gene's start does not depend on the other genes of
        its batch (as products of BLAS over the batch would).
        """
        support = self.support
        return _moment_theta(
            np.ascontiguousarray(stats.ZtY, dtype=np.float64),
            np.ascontiguousarray(stats.XtY, dtype=np.float64),
            np.ascontiguousarray(stats.ss, dtype=np.float64),
            np.ascontiguousarray(self.xx_inv_xz),
            np.ascontiguousarray(self.xx_inv),
            np.cumsum([0] + [len(ia) for _, ia, _ in support]).astype(np.int64),
            np.concatenate([ia for _, ia, _ in support]).astype(np.int64),
            np.concatenate([ic for _, _, ic in support]).astype(np.int64),
            np.array([not np.array_equal(ia, ic) for _, ia, ic in support]),
            np.ascontiguousarray(self.a_inv),
            np.array([t.n_coef for t in self.terms], dtype=np.int64),
        )


@nb.njit(cache=True, nogil=True)
def _psd_theta(S, r, out):
    """lme4's ``theta`` of the positive semi-definite part of ``S`` (``r x r``) into ``out``.

    Negative eigenvalues are set to 0; ``T`` is its Cholesky factor, a column set to 0
    where its pivot vanishes (the matrix is then singular).
    """
    V = np.empty((r, r))
    A = S.copy()
    _symmetric_eigen(A, V)
    P = np.zeros((r, r))
    scale = 0.0
    for m in range(r):
        lam = max(A[m, m], 0.0)
        scale += lam
        for i in range(r):
            for j in range(r):
                P[i, j] += V[i, m] * lam * V[j, m]
    T = np.zeros((r, r))
    for j in range(r):
        d = P[j, j]
        for t in range(j):
            d -= T[j, t] * T[j, t]
        if d > 1e-12 * scale:
            T[j, j] = np.sqrt(d)
            for i in range(j + 1, r):
                acc = P[i, j]
                for t in range(j):
                    acc -= T[i, t] * T[j, t]
                T[i, j] = acc / T[j, j]
    n = 0
    for b in range(r):
        for a in range(b, r):
            out[n] = T[a, b]
            n += 1


@nb.njit(cache=True, nogil=True)
def _minque_solution(zy, xy, ss, xx_inv_xz, xx_inv, ptr, cols_a, cols_c, twice, a_inv, sol):
    """One gene's MINQUE(0) covariances and residual variance (last) into ``sol``."""
    q, p, K = zy.shape[0], xy.shape[0], ptr.shape[0] - 1
    u0 = np.empty(q)
    for i in range(q):
        acc = zy[i]
        for j in range(p):
            acc -= xy[j] * xx_inv_xz[j, i]
        u0[i] = acc
    rhs = np.empty(K + 1)
    rhs[K] = ss
    for i in range(p):
        for j in range(p):
            rhs[K] -= xy[i] * xx_inv[i, j] * xy[j]
    for m in range(K):
        acc = 0.0
        for t in range(ptr[m], ptr[m + 1]):
            acc += u0[cols_a[t]] * u0[cols_c[t]]
        rhs[m] = 2.0 * acc if twice[m] else acc
    for m in range(K + 1):
        acc = 0.0
        for n in range(K + 1):
            acc += a_inv[m, n] * rhs[n]
        sol[m] = acc


@nb.njit(cache=True, nogil=True)
def _moment_theta(ZtY, XtY, ss, xx_inv_xz, xx_inv, ptr, cols_a, cols_c, twice, a_inv, rank):
    """MINQUE(0) of every gene (see :class:`MomentStarts`), in ``theta`` (``G x k``)."""
    G = ZtY.shape[0]
    K = ptr.shape[0] - 1
    out = np.full((G, K), np.nan)
    sol = np.empty(K + 1)
    for g in range(G):
        _minque_solution(
            ZtY[g], XtY[g], ss[g], xx_inv_xz, xx_inv, ptr, cols_a, cols_c, twice, a_inv, sol
        )
        if not (sol[K] > 0.0 and np.all(np.isfinite(sol))):
            continue
        start = 0
        for r in rank:  # each term's covariance relative to the residual variance
            S = np.empty((r, r))
            n = start
            for b in range(r):
                for a in range(b, r):
                    S[a, b] = S[b, a] = sol[n] / sol[K]
                    n += 1
            _psd_theta(S, r, out[g, start:n])
            start = n
    return out
