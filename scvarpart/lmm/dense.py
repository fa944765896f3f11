"""Profiled deviance of a random-intercept LMM for a batch of genes, with derivatives.

Model, for one gene: ``y = X beta + Z b + e``, ``b ~ N(0, sigma^2 Gamma)``,
``e ~ N(0, sigma^2 I)``, where ``Gamma`` is diagonal with the variance ratio
``gamma_j = sigma_j^2 / sigma^2`` repeated over the levels of factor ``j``.

For fixed ``gamma`` everything follows from the penalised least-squares system
of Bates et al. (2015, lme4), with ``Lambda = diag(sqrt(gamma))`` per level::

    Omega = [[Lambda Z'Z Lambda + I, Lambda Z'X],
             [X'Z Lambda,            X'X       ]]

whose factorisation gives ``log|V|``, ``log|X'V^-1 X|`` and the penalised
residual sum of squares ``r2 = y'Py``, from which :mod:`.profiled` forms the ML
deviance or REML criterion (``nu = n`` or ``n - p`` below).

**Structure.** Each factor's own block of ``Z'Z`` is diagonal, so the block of
``Omega`` of the factor with most levels ("factor 1", ``a = 1 + gamma_1 d``
with ``d`` its level counts) is diagonal and is eliminated in closed form. What
remains is the Schur complement ``S`` over the other factors' levels and the
fixed effects (``m2 = q - q1 + p``; 20 instead of 44 for a 24 x 3 x 8 x 6 design
with two covariates), factorised as ``S = L L'``. With ``E = [Z_1'Z_R, Z_1'X]``,
``N = G_RR - gamma_1 E' diag(1/a) E`` and ``s`` the square roots of the
variance ratios of the remaining levels (1 for the fixed effects)::

    S = s s' * N + diag(1 [levels], 0 [fixed effects])

**Derivatives** in ``gamma`` (with ``Q = Z'PZ``, ``M = Z'V^-1 Z``, ``u = Z'Py``;
blocks ``_j`` by factor)::

    d r2 / d gamma_j            = -|u_j|^2
    d^2 r2 / d gamma_i gamma_j  = 2 u_i' Q_ij u_j
    d log|V| / d gamma_j        = tr M_jj,     second derivative -|M_ij|_F^2
    d (log|V| + log|X'V^-1X|)   = tr Q_jj,     second derivative -|Q_ij|_F^2

with, writing ``F~ = [s * E' / a, s * N[:, levels]]`` and ``W = L^-1 F~``::

    M = C - gamma_1 [[diag(d^2/a), diag(d/a) C_1R], [C_R1 diag(d/a), K_RR]] - W_Z'W_Z
    Q = M - W_X'W_X

(``W_Z``, ``W_X``: rows of ``W`` for the levels and the fixed effects). The
model is parametrised by ``gamma >= 0`` rather than lme4's ``theta =
sqrt(gamma)``: the gradient in ``gamma`` does not vanish at 0, so a variance that
belongs on the boundary is recognised by the sign of its derivative instead of
being approached ever more slowly. Nothing here divides by ``gamma``.

Every quantity needs only the design's cross-products (shared by all genes) and
``Z'y``, ``X'y``, ``y'y`` (per gene), so the cost does not depend on the number
of observations. The loops over a gene's small matrices are compiled
(:mod:`._dense_kernel`, :mod:`.newton`); a batch of genes is one call.
"""

from __future__ import annotations

import numpy as np

from ..suffstats import DesignGram, ResponseStats
from ._dense_kernel import (
    DERIVATIVES,
    DEVIANCE,
    ESTIMATES,
    DenseDesign,
    evaluate_batch,
    fixed_factors,
)
from .grid import grid_size, variance_grid
from .newton import NewtonOptions, minimise_batch
from .profiled import ProfiledDeviance
from .search import prepare_grid, search_batch

__all__ = ["DenseDeviance"]

# Multiply-adds per gene that the screen of the global search may cost.
_SCREEN_BUDGET = 150_000
# Observations per random effect below which the search is thorough.
_THOROUGH_PER_LEVEL = 50


def _contiguous(stats: ResponseStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``Z'y``, ``X'y`` and the sums of squares as the kernels take them."""
    return (
        np.ascontiguousarray(stats.ZtY),
        np.ascontiguousarray(stats.XtY),
        np.ascontiguousarray(stats.ss),
    )


class DenseDeviance(ProfiledDeviance):
    """Batched profiled deviance, gradient and Hessian for designs with few levels.

    Parameters
    ----------
    gram
        Cross-products of the design.
    reml
        REML criterion instead of the ML deviance.
    """

    def __init__(self, gram: DesignGram, reml: bool):
        super().__init__(gram, reml)
        level_factor = gram.level_factor
        big = int(np.argmax(gram.factor_sizes))
        # internal level order: the eliminated factor, then the others by factor
        idx1 = np.flatnonzero(level_factor == big)
        idxR = np.flatnonzero(level_factor != big)
        order = np.concatenate([idx1, idxR])
        internal_factor = level_factor[order]
        C = gram.ZtZ.toarray()
        C22 = C[np.ix_(idxR, idxR)]
        Z2X = gram.ZtX[idxR]
        self.design = DenseDesign(
            d=np.ascontiguousarray(np.diag(C)[idx1]),
            E=np.ascontiguousarray(np.concatenate([C[np.ix_(idx1, idxR)], gram.ZtX[idx1]], axis=1)),
            GRR=np.ascontiguousarray(np.block([[C22, Z2X], [Z2X.T, gram.XtX]])),
            C=np.ascontiguousarray(C[np.ix_(order, order)]),
            order=order.astype(np.int64),
            rest_factor=level_factor[idxR].astype(np.int64),
            bstart=np.array([np.flatnonzero(internal_factor == j)[0] for j in range(self.k)]),
            bstop=np.array([np.flatnonzero(internal_factor == j)[-1] + 1 for j in range(self.k)]),
            big=big,
            p=self.p,
            nu=float(self.nu),
            reml=bool(reml),
        )
        self._grid = None
        self.options = NewtonOptions(threshold=np.ascontiguousarray(self.gamma_scale))

    def _run(self, gamma: np.ndarray, stats: ResponseStats, mode: int):
        return evaluate_batch(
            np.ascontiguousarray(gamma, dtype=np.float64), *_contiguous(stats), mode, self.design
        )

    def deviance(self, gamma: np.ndarray, stats: ResponseStats) -> np.ndarray:
        """Deviance (ML) or REML criterion of each gene at ``gamma`` (``G x k``)."""
        return self._run(gamma, stats, DEVIANCE)[0]

    def derivatives(
        self, gamma: np.ndarray, stats: ResponseStats
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Deviance, gradient (``G x k``) and Hessian (``G x k x k``) in ``gamma``."""
        dev, _, grad, hess, _ = self._run(gamma, stats, DERIVATIVES)
        return dev, grad, hess

    def estimates(
        self, gamma: np.ndarray, stats: ResponseStats
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Deviance, residual variance ``sigma^2`` and fixed effects (centred X)."""
        dev, r2, _, _, beta = self._run(gamma, stats, ESTIMATES)
        return dev, r2 / self.nu, beta

    def fixed_factor(self, gamma: np.ndarray) -> np.ndarray:
        """Lower Cholesky factor of ``X'V^-1 X`` at each row of ``gamma``.

        ``G x p x p``; NaN rows where it does not exist.
        """
        return fixed_factors(np.ascontiguousarray(gamma, dtype=np.float64), self.design)

    def minimise(self, gamma0: np.ndarray, stats: ResponseStats):
        """Minimise every gene's objective from ``gamma0`` (projected Newton).

        Returns the minimisers ``(G, k)``, the objective, the residual variance
        and fixed effects (centred X) at them, convergence flags and iterations.
        """
        gamma, dev, r2, beta, converged, n_iter = minimise_batch(
            np.ascontiguousarray(gamma0, dtype=np.float64),
            *_contiguous(stats),
            self.design,
            self.options,
        )
        return gamma, dev, r2 / self.nu, beta, converged, n_iter

    @property
    def grid(self):
        """The design factorised at every point of the global search's grid.

        Computed on first use, then shared by every batch of genes.
        """
        if self._grid is None:
            self._grid = prepare_grid(
                variance_grid(self.k, self.grid_level()), self.design, self.thorough()
            )
        return self._grid

    def thorough(self) -> bool:
        """Whether to descend from every face's local minima.

        Else only from minima over closed faces. With fewer than
        :data:`_THOROUGH_PER_LEVEL` observations per random effect on average, the
        criterion is flat and optima separated by small ridges next to a face are
        common (tiny and bulk designs, where descents are cheap); with many
        observations per level it is sharply curved, and such candidates only lead
        back to the optimum already found.
        """
        return self.n < _THOROUGH_PER_LEVEL * (
            self.design.d.shape[0] + len(self.design.rest_factor)
        )

    def prepare(self) -> None:
        """Factorise the grid now (before batches of genes share it)."""
        _ = self.grid

    def grid_level(self) -> int:
        """The level of the global search's grid.

        Where the search is thorough: the finest grid whose screen costs at most
        :data:`_SCREEN_BUDGET` multiply-adds per gene (a point costs a triangular
        product of the size of the reduced system), at most level 3, so that tiny
        designs are searched finely. Otherwise the coarse level -1: with many
        observations per level, other basins lie far apart (one factor's variance
        against another's) and the moment estimates start next to the optimum.
        """
        if not self.thorough():
            return -1
        m2 = self.design.rest_factor.shape[0] + self.p
        per_point = m2 * (m2 + 1) // 2 + 16
        level = 0
        while level < 3 and grid_size(self.k, level + 1) * per_point <= _SCREEN_BUDGET:
            level += 1
        return level

    def search(self, stats: ResponseStats, gamma0: np.ndarray, f0: np.ndarray):
        """The global optimum of every gene (see :mod:`.search`).

        Also starting from ``gamma0`` (``G x k`` moment estimates, NaN rows for none),
        where the criterion is ``f0``.

        Returns the optima ``(G, k)``, the objective, the residual variance and
        fixed effects (centred X) at them, convergence flags, Newton iterations
        and the number of descents.
        """
        gamma, dev, r2, beta, converged, n_iter, descents = search_batch(
            self.grid,
            np.ascontiguousarray(gamma0, dtype=np.float64),
            np.ascontiguousarray(f0, dtype=np.float64),
            *_contiguous(stats),
            self.design,
            self.options,
        )
        return gamma, dev, r2 / self.nu, beta, converged, n_iter, descents
