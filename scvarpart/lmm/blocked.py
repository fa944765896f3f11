"""Profiled deviance for designs with many levels, by eliminating the largest factor.

Every grouping factor's own block of ``Z'Z`` is diagonal (an observation is in
exactly one level), so the largest factor's block of the penalised system
``Omega`` (see :mod:`.dense`) is diagonal too and is eliminated in closed form,
as MixedModels.jl does with its blocked Cholesky factor. What remains is the
Schur complement ``S`` over the other factors' levels and the fixed effects,
``S = s s' * N + I (levels)`` with ``N = G_22 - gamma_1 E' diag(w) E``, ``w = 1 / (1
+ gamma_1 d)`` and ``E`` the sparse cross-tabulation of the largest factor with the
rest. Its pattern does not depend on ``gamma``.

**Sparse factorisation.** ``S`` is sparse where the other factors' levels meet
few of each other through the eliminated one (plates of a day through the donors
of that day; pools through the donors multiplexed into them). Its rows are
ordered once per fit by minimum degree (the fixed effects last), the pattern of
its Cholesky factor is found once (:mod:`._sparse_kernel`), and each
factorisation, solve and derivative is then compiled sparse arithmetic without
the GIL, so batches of genes run in parallel threads. Where that factor would
be nearly dense anyway (lme4's InstEval), LAPACK factorises ``S`` densely
(:mod:`._blocked_lapack`).

**Derivatives** (notation of :mod:`.dense`; ``Z = S^-1`` for REML, or the inverse
of its level block for ML, known on the pattern of the factor by Takahashi's
recurrences)::

    d f / d gamma_j = tr D_jj - nu |u_j|^2 / r2

with ``tr D_jj`` (``D = M`` for ML, ``Q`` for REML) equal to, for the eliminated
factor, ``sum_l d_l w_l - <s s' * Z, E' diag(w^2) E>``, which needs ``Z`` only on
the pattern of ``E'E``; and for another factor ``sum_l (1 - Z_ll) / gamma_j``, from
``Lambda D Lambda = I - Z`` on its levels (Bates et al. 2015), or, for ``gamma_j``
near 0 where that difference cancels, ``sum_l N_ll - |L^-1 (s * N[:, l])|^2`` by a
sparse solve per level. No ``q x q`` matrix is formed. The Hessian is replaced by
the average information matrix (Gilmour, Thompson & Cullis 1995) of the profiled
criterion, ``nu (u_i' Q_ij u_j / r2 - |u_i|^2 |u_j|^2 / r2^2)``, positive
semi-definite and equal to the Hessian in expectation. With ``Q = C~ - W'W``
(:mod:`.dense`: ``C~`` the first two terms of ``M``, ``W = L^-1 F~``) it takes a
forward solve per factor, ``W u_j``. Newton's method with it converges to a point
where the exact gradient satisfies the optimality conditions.

**Search.** As :mod:`.search` on the coarse grid (level -1): the factorisations
at the grid points are made once per fit and shared by every gene, whose screen
is then a sparse triangular solve per point. The gradient and average information
at each optimum are returned with it: mostly those of the last Newton iteration,
which converged there.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..suffstats import DesignGram, ResponseStats
from . import _sparse_kernel as sk
from ._blocked_lapack import LapackSchur
from .grid import variance_grid
from .newton import NewtonOptions
from .profiled import ProfiledDeviance

__all__ = ["BlockedDeviance"]

# Above this fraction of structurally non-zero entries in the factor of S, LAPACK
# on the dense matrix is faster than sparse arithmetic, once S has more rows than
# _SMALL (below, compiled loops beat LAPACK's calls whatever the fill).
_MAX_FILL = 0.25
_SMALL = 300
# Variance ratios (in units of 1 / observations per level) below which a factor's
# trace is summed explicitly: (1 - Z_ll) / gamma_j loses digits as eps / (gamma_j n_l).
_TRACE_SWITCH = 1e-6


def _contiguous(stats: ResponseStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.ascontiguousarray(stats.ZtY),
        np.ascontiguousarray(stats.XtY),
        np.ascontiguousarray(stats.ss),
    )


class _Parts:
    """The design split at the largest factor, in natural order (fixed effects last)."""

    def __init__(self, gram: DesignGram):
        sizes = np.asarray(gram.factor_sizes)
        self.big = int(np.argmax(sizes))
        level_factor = gram.level_factor
        self.idx1 = np.flatnonzero(level_factor == self.big)
        self.idx2 = np.flatnonzero(level_factor != self.big)
        self.rest_factor = np.concatenate(
            [level_factor[self.idx2], np.zeros(gram.n_fixed, dtype=level_factor.dtype)]
        )
        C = gram.ZtZ.tocsr()
        self.d = C.diagonal()[self.idx1]
        C12 = C[self.idx1][:, self.idx2]
        self.E = sp.hstack([C12, sp.csr_matrix(gram.ZtX[self.idx1])]).tocsr()
        C22 = C[self.idx2][:, self.idx2]
        Z2X = sp.csr_matrix(gram.ZtX[self.idx2])
        self.G22 = sp.bmat([[C22, Z2X], [Z2X.T, sp.csr_matrix(gram.XtX)]]).tocsr()

    def adjacency(self) -> np.ndarray:
        """The graph of ``S``: dense, symmetric, no diagonal."""
        pattern = abs(self.E).T @ abs(self.E) + abs(self.G22)
        adj = pattern.toarray() != 0
        np.fill_diagonal(adj, False)
        return adj


class BlockedDeviance(ProfiledDeviance):
    """Profiled deviance, exact gradient and average information for many levels.

    The largest factor is eliminated; the rest is factorised sparsely where that pays,
    with LAPACK otherwise.

    Parameters
    ----------
    gram
        Cross-products of the design.
    reml
        REML criterion instead of the ML deviance.
    """

    hessian = "average information"

    def __init__(self, gram: DesignGram, reml: bool):
        super().__init__(gram, reml)
        self.options = NewtonOptions(threshold=np.ascontiguousarray(self.gamma_scale))
        self._grid = None
        parts = _Parts(gram)
        self.big = parts.big
        q2 = len(parts.idx2)
        m2 = q2 + self.p
        found = sk.analyse(parts.adjacency(), q2, 1.0 if m2 <= _SMALL else _MAX_FILL)
        self.lapack: LapackSchur | None = None
        self.design: sk.SparseDesign | None = None
        if found is None:
            self.lapack = LapackSchur(gram, reml)
            return
        order, Lp, Li = found
        self.design = sk.build_design(
            parts.d,
            parts.E,
            parts.G22,
            order,
            Lp,
            Li,
            parts.idx1,
            parts.idx2,
            parts.rest_factor,
            _TRACE_SWITCH * self.gamma_scale,
            parts.big,
            self.p,
            self.nu,
            reml,
        )

    @property
    def sparse(self) -> bool:
        """Whether the Schur complement is factorised sparsely."""
        return self.design is not None

    def _run(self, gamma: np.ndarray, stats: ResponseStats, mode: int):
        return sk.evaluate_batch(
            np.ascontiguousarray(gamma, dtype=np.float64), *_contiguous(stats), self.design, mode
        )

    def deviance(self, gamma: np.ndarray, stats: ResponseStats) -> np.ndarray:
        """Deviance (ML) or REML criterion of each gene at ``gamma`` (``G x k``)."""
        if self.lapack is not None:
            return self.lapack.deviance(gamma, stats)
        return self._run(gamma, stats, 0)[0]

    def derivatives(self, gamma: np.ndarray, stats: ResponseStats):
        """Criterion, exact gradient (``G x k``) and average information (``G x k x k``)."""
        if self.lapack is not None:
            return self.lapack.derivatives(gamma, stats)
        dev, _, grad, hess, _ = self._run(gamma, stats, 1)
        return dev, grad, hess

    def estimates(self, gamma: np.ndarray, stats: ResponseStats):
        """Deviance, residual variance ``sigma^2`` and fixed effects (centred X)."""
        if self.lapack is not None:
            return self.lapack.estimates(gamma, stats)
        dev, r2, _, _, beta = self._run(gamma, stats, 2)
        return dev, r2 / self.nu, beta

    def fixed_factor(self, gamma: np.ndarray) -> np.ndarray:
        """Lower Cholesky factor of ``X'V^-1 X`` at each row of ``gamma`` (NaN: none)."""
        if self.lapack is not None:
            return self.lapack.fixed_factor(gamma)
        return sk.fixed_factors(np.ascontiguousarray(gamma, dtype=np.float64), self.design)

    @property
    def grid(self):
        """The coarse grid, factorised at every point (once, shared by every batch)."""
        if self.lapack is not None:
            return self.lapack.grid
        if self._grid is None:
            self._grid = _factor_grid(variance_grid(self.k, level=-1), self.design)
        return self._grid

    def prepare(self) -> None:
        """Factorise the grid now (before batches of genes share it)."""
        if self.lapack is None:
            _ = self.grid

    def minimise(self, gamma0: np.ndarray, stats: ResponseStats):
        """Newton's method from ``gamma0`` only (a local optimum).

        Returns the minimisers, objective, residual variance, fixed effects,
        convergence flags and iterations; when sparse, also the gradient and average
        information at the minimisers (``G x k``, ``G x k x k``), mostly those of the
        last Newton iteration.
        """
        if self.lapack is not None:
            return self.lapack.minimise(gamma0, stats)
        X, dev, r2, beta, converged, n_iter, grad, hess = sk.minimise_batch(
            np.ascontiguousarray(gamma0, dtype=np.float64),
            *_contiguous(stats),
            self.design,
            self.options,
        )
        return X, dev, r2 / self.nu, beta, converged, n_iter, grad, hess

    def search(self, stats: ResponseStats, gamma0: np.ndarray, f0: np.ndarray):
        """The global optimum of every gene (:mod:`.search`, coarse grid).

        Also starting from ``gamma0`` (NaN rows for none), where the criterion is
        ``f0``. Returns the optima ``(G, k)``, the objective, the residual variance and
        fixed effects (centred X) at them, convergence flags, Newton iterations and
        the number of descents; when sparse, also the gradient and average
        information at the optima, as :meth:`minimise`.
        """
        if self.lapack is not None:
            return self.lapack.search(stats, gamma0, f0)
        X, dev, r2, beta, converged, n_iter, descents, grad, hess = sk.search_batch(
            self.grid,
            np.ascontiguousarray(gamma0, dtype=np.float64),
            np.ascontiguousarray(f0, dtype=np.float64),
            *_contiguous(stats),
            self.design,
            self.options,
        )
        return X, dev, r2 / self.nu, beta, converged, n_iter, descents, grad, hess


def _factor_grid(grid, dz: sk.SparseDesign) -> sk.GridFactors:
    """The factorisation at every grid point, points grouped by the eliminated ratio."""
    gamma = np.ascontiguousarray(grid.gamma)
    logdet, L, s = sk.factor_points(gamma, dz)
    g1, t_of = np.unique(gamma[:, dz.big], return_inverse=True)
    t_ptr = np.concatenate([[0], np.cumsum(np.bincount(t_of, minlength=len(g1)))])
    return sk.GridFactors(
        gamma=gamma,
        logdet=logdet,
        L=L,
        s=s,
        g1=g1,
        inv_a=np.ascontiguousarray(1.0 / (1.0 + g1[:, None] * dz.d[None, :])),
        t_ptr=t_ptr.astype(np.int64),
        by_g1=np.argsort(t_of, kind="stable").astype(np.int64),
        face=grid.face,
        edge=grid.edge,
        nb_ptr=grid.nb_ptr,
        nb_idx=grid.nb_idx,
    )
