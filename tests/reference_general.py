"""NumPy reference of :class:`~scvarpart.lmm.general.GeneralDeviance`: dense, gene by gene.

The engine before it was compiled, kept in the tests to check the compiled one against
and as the statement of the mathematics in its plainest form: every matrix has the
size of the whole penalised system. Its results were checked against lme4.

Profiled deviance for any random-effect terms: slopes, known covariances, weights.

The model of one gene is ``y = X beta + Z Lambda u + e`` with ``u ~ N(0, sigma^2 I)``,
``e ~ N(0, sigma^2 W^-1)`` and ``Lambda`` the block-diagonal relative covariance factor
of the terms (:mod:`scvarpart.lmm.terms`), linear in ``theta``. With weights the cross-products are
weighted (``Z'WZ``, ..., from the one pass) and the deviance gains ``-sum(log w)``.
Everything follows from the penalised system of Bates et al. (2015, lme4), with
``G = [[Z'Z, Z'X], [X'Z, X'X]]`` and ``P = diag(Lambda, I_p)``::

    Omega = P' G P + diag(I_q, 0)          (= L L', Cholesky)
    r2    = y'y - b' Omega^-1 b,   b = P' [Z'y; X'y]
    log|V| = log|Omega_uu|,   log|V| + log|X'V^-1X| = log|Omega|

(:mod:`scvarpart.lmm.profiled` turns them into the ML deviance or REML criterion.) With ``D_k = d
Lambda / d theta_k``, ``E_k = diag(D_k, 0)``, ``s = Omega^-1 b`` and ``M`` the matrix
whose log-determinant the criterion holds (``Omega_uu`` for ML, ``Omega`` for REML)::

    dM_k = E_k' G P + P' G E_k,             d2M_kl = E_k' G E_l + E_l' G E_k
    d log|M|        = tr(M^-1 dM_k)
    d2 log|M|       = tr(M^-1 d2M_kl) - tr(M^-1 dM_k M^-1 dM_l)
    d r2            = -2 b_k's + s' dOmega_k s,           b_k = E_k' [Z'y; X'y]
    d2 r2           = -2 v_k' Omega^-1 v_l + s' d2Omega_kl s,   v_k = b_k - dOmega_k s

(``b`` is linear in ``theta``, so ``b_k`` is constant; the ``r2`` derivatives follow
from ``ds = Omega^-1 v``.) The exact gradient and Hessian feed the projected Newton
method of :mod:`reference_projected`. Per gene and evaluation this costs dense products of the
size of ``Omega``: the engine for designs with up to a few hundred random effects.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import numpy as np
import scipy.linalg
from reference_projected import BoxOptions, minimise_box

from scvarpart.lmm.profiled import ProfiledDeviance
from scvarpart.lmm.terms import ReTerm, lambda_matrix, theta_patterns
from scvarpart.suffstats import DesignGram, ResponseStats

__all__ = ["ReferenceGeneralDeviance"]

# Relative improvement below which a later descent does not replace an earlier one.
_TIE = 1e-10


class _System(NamedTuple):
    """The gene-independent factorisation at one ``theta``."""

    theta: np.ndarray
    lam: np.ndarray  # Lambda (q x q)
    GP: np.ndarray  # G P (m x m)
    L: np.ndarray  # lower Cholesky factor of Omega
    logdet_v: float
    logdet_x: float


class ReferenceGeneralDeviance(ProfiledDeviance):
    """:class:`~scvarpart.lmm.general.GeneralDeviance`'s criterion and search, dense.

    Takes the same arguments; every matrix has the size of the whole system.
    """

    coordinates = "theta"

    def __init__(self, gram: DesignGram, terms: list[ReTerm], reml: bool):
        super().__init__(gram, reml)
        self.terms = list(terms)
        self.q = gram.n_levels
        self.k = sum(t.n_theta for t in terms)
        self.lower = np.concatenate([t.lower for t in terms])
        self.theta0 = np.concatenate([t.theta0 for t in terms])
        ZtZ = gram.ZtZ.toarray()
        self.G = np.block([[ZtZ, gram.ZtX], [gram.ZtX.T, gram.XtX]])
        self.D = theta_patterns(self.terms)
        self.options = BoxOptions()
        self._last: _System | None = None

    @property
    def n_params(self) -> int:
        """Number of covariance parameters ``theta``."""
        return self.k

    # -- the factorisation ------------------------------------------------------------

    def _system(self, theta: np.ndarray) -> _System | None:
        """Factorise at ``theta`` (the last factorisation is kept for the derivatives)."""
        last = self._last
        if last is not None and np.array_equal(last.theta, theta):
            return last
        q = self.q
        lam = lambda_matrix(self.terms, theta)
        GP = self.G.copy()
        GP[:, :q] = self.G[:, :q] @ lam
        omega = GP.copy()
        omega[:q] = lam.T @ GP[:q]
        omega[np.arange(q), np.arange(q)] += 1.0
        try:
            L = scipy.linalg.cholesky(omega, lower=True, check_finite=False)
        except (np.linalg.LinAlgError, ValueError):
            return None
        logd = 2 * np.log(np.diagonal(L))
        sys = _System(theta.copy(), lam, GP, L, float(logd[:q].sum()), float(logd[q:].sum()))
        self._last = sys
        return sys

    def _rhs(self, sys: _System, zy: np.ndarray, xy: np.ndarray) -> np.ndarray:
        return np.concatenate([sys.lam.T @ zy, xy])

    def _value(self, theta, zy, xy, ss) -> float:
        """The criterion of one gene at ``theta``."""
        return self._gene(theta, zy, xy, ss)[0]

    def _gene(self, theta, zy, xy, ss) -> tuple[float, float, np.ndarray | None]:
        """Criterion, ``r2`` and ``s = Omega^-1 b`` of one gene (NaN where undefined)."""
        sys = self._system(theta) if np.isfinite(theta).all() else None
        if sys is None:
            return np.nan, np.nan, None
        b = self._rhs(sys, zy, xy)
        c = scipy.linalg.solve_triangular(sys.L, b, lower=True, check_finite=False)
        r2 = float(ss - c @ c)
        with np.errstate(invalid="ignore", divide="ignore"):
            f = float(self.criterion(sys.logdet_v, sys.logdet_x, r2))
        s = scipy.linalg.solve_triangular(sys.L, c, lower=True, trans="T", check_finite=False)
        return f, r2, s

    def deviance(self, theta: np.ndarray, stats: ResponseStats) -> np.ndarray:
        """Deviance (ML) or REML criterion of each gene at ``theta`` (``G x k``)."""
        return np.array(
            [
                self._gene(theta[g], stats.ZtY[g], stats.XtY[g], stats.ss[g])[0]
                for g in range(len(stats))
            ]
        )

    def estimates(
        self, theta: np.ndarray, stats: ResponseStats
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Deviance, residual variance ``sigma^2`` and fixed effects (centred X)."""
        G = len(stats)
        dev, sigma2, beta = np.full(G, np.nan), np.full(G, np.nan), np.full((G, self.p), np.nan)
        for g in range(G):
            f, r2, s = self._gene(theta[g], stats.ZtY[g], stats.XtY[g], stats.ss[g])
            if s is not None and np.isfinite(f):
                dev[g], sigma2[g], beta[g] = f, r2 / self.nu, s[self.q :]
        return dev, sigma2, beta

    def fixed_factor(self, gamma: np.ndarray) -> np.ndarray:
        """Lower Cholesky factor of ``X'V^-1 X`` at each row (``G x p x p``, NaN if none)."""
        out = np.full((len(gamma), self.p, self.p), np.nan)
        for i, th in enumerate(gamma):
            sys = self._system(th) if np.isfinite(th).all() else None
            if sys is not None:
                out[i] = sys.L[self.q :, self.q :]
        return out

    # -- derivatives ------------------------------------------------------------------

    def derivatives(self, theta: np.ndarray, stats: ResponseStats):
        """Criterion, gradient and Hessian of every gene at its row of ``theta``."""
        parts = [
            self._derivatives(theta[g], stats.ZtY[g], stats.XtY[g], stats.ss[g])
            for g in range(len(stats))
        ]
        dev, grad, hess = (np.array(column) for column in zip(*parts, strict=True))
        return dev, grad.reshape(len(theta), self.k), hess.reshape(len(theta), self.k, self.k)

    def _derivatives(self, theta, zy, xy, ss):
        """Criterion, gradient and Hessian of one gene at ``theta``."""
        k, q = self.k, self.q
        f, r2, s = self._gene(theta, zy, xy, ss)
        if s is None or not np.isfinite(f):
            return np.nan, np.full(k, np.nan), np.full((k, k), np.nan)
        sys = self._system(theta)
        dld, d2ld = self._logdet_derivatives(sys)
        G, GP = self.G, sys.GP
        gy_u = zy
        GPs = GP @ s
        Ds = np.column_stack([D @ s[:q] for D in self.D])  # E_k s (levels part)
        # b_k's = (D_k' Z'y)'s_u = (Z'y)' D_k s_u; s'dOmega_k s = 2 (E_k s)' G P s
        dr2 = -2 * (gy_u @ Ds) + 2 * (Ds.T @ GPs[:q])
        GDs = G[:, :q] @ Ds  # G E_k s, m x k
        V = np.zeros((q + self.p, k))
        for j, D in enumerate(self.D):
            V[:q, j] = D.T @ (gy_u - GPs[:q])  # b_k - E_k' G P s
        V[:q] -= sys.lam.T @ GDs[:q]  # - P' G E_k s
        V[q:] -= GDs[q:]
        W = scipy.linalg.cho_solve((sys.L, True), V, check_finite=False)
        d2r2 = -2 * (V.T @ W) + 2 * (Ds.T @ GDs[:q])
        nu = self.nu
        grad = dld + nu * dr2 / r2
        hess = d2ld + nu * (d2r2 / r2 - np.outer(dr2, dr2) / r2**2)
        return f, grad, 0.5 * (hess + hess.T)

    def _logdet_derivatives(self, sys: _System) -> tuple[np.ndarray, np.ndarray]:
        """Gradient and Hessian of ``log|M|`` (gene-independent)."""
        q, k = self.q, self.k
        m = q + self.p if self.reml else q
        Minv = scipy.linalg.cho_solve((sys.L[:m, :m], True), np.eye(m), check_finite=False)
        GPm = sys.GP[:q, :m]  # rows of G P for the levels, restricted to M
        Y = []
        grad = np.empty(k)
        for j, D in enumerate(self.D):
            A = np.zeros((m, m))
            A[:q] = D.T @ GPm  # E_k' G P
            dM = A + A.T
            grad[j] = np.vdot(Minv, dM)
            Y.append(Minv @ dM)
        hess = np.empty((k, k))
        Guu = self.G[:q, :q]
        Mu = Minv[:q, :q]
        for i, Di in enumerate(self.D):
            DGi = Di.T @ Guu  # D_i' G_uu
            for j in range(i, k):
                second = 2 * np.vdot(Mu, (self.D[j].T @ DGi.T).T)  # tr(M^-1 E_i'G E_j) x2
                h = second - np.vdot(Y[i], Y[j].T)
                hess[i, j] = hess[j, i] = h
        return grad, hess

    # -- the search -------------------------------------------------------------------

    def _starts(self, x0: np.ndarray) -> list[np.ndarray]:
        """Starting points: the given one, lme4's, scaled versions, and every face."""
        base = self.theta0
        starts = [x0] if np.isfinite(x0).all() else []
        starts += [base.copy(), 0.3 * base, 3.0 * base]
        offset = 0
        for t in self.terms:  # each term at 0 in turn (variance on the boundary)
            x = base.copy()
            x[offset : offset + t.n_theta] = 0.0
            starts.append(x)
            offset += t.n_theta
        return starts

    def search(self, stats: ResponseStats, theta0: np.ndarray, f0: np.ndarray):
        """The best optimum of every gene over several starts (see :meth:`_starts`).

        Returns the optima ``(G, k)``, the objective, the residual variance and fixed
        effects (centred X) at them, convergence flags, iterations and descents.
        """
        G, k = len(stats), self.k
        X = np.full((G, k), np.nan)
        converged = np.zeros(G, dtype=bool)
        n_iter = np.zeros(G, dtype=int)
        descents = np.zeros(G, dtype=int)
        for g in range(G):
            zy, xy, ss = stats.ZtY[g], stats.XtY[g], stats.ss[g]
            best, known = np.inf, list[np.ndarray]()
            for start in self._starts(theta0[g]):
                x = start.copy()
                f, conv, it, abandoned = minimise_box(
                    x,
                    partial(self._value, zy=zy, xy=xy, ss=ss),
                    partial(self._derivatives, zy=zy, xy=xy, ss=ss),
                    self.lower,
                    self.options,
                    known,
                )
                n_iter[g] += it
                descents[g] += 1
                if abandoned or not np.isfinite(f):
                    continue
                known.append(x.copy())
                if not np.isfinite(best) or f < best - _TIE * max(1.0, abs(best)):
                    best, converged[g], X[g] = f, conv, x
        dev, sigma2, beta = self.estimates(np.nan_to_num(X, nan=1.0), stats)
        bad = ~np.isfinite(X).all(axis=1)
        dev[bad], sigma2[bad], beta[bad] = np.nan, np.nan, np.nan
        return X, dev, sigma2, beta, converged, n_iter, descents

    def minimise(self, theta0: np.ndarray, stats: ResponseStats):
        """Newton's method from ``theta0`` only (a local optimum)."""
        X = np.array(theta0, dtype=float)
        converged = np.zeros(len(stats), dtype=bool)
        n_iter = np.zeros(len(stats), dtype=int)
        for g in range(len(stats)):
            zy, xy, ss = stats.ZtY[g], stats.XtY[g], stats.ss[g]
            _, converged[g], n_iter[g], _ = minimise_box(
                X[g],
                partial(self._value, zy=zy, xy=xy, ss=ss),
                partial(self._derivatives, zy=zy, xy=xy, ss=ss),
                self.lower,
                self.options,
            )
        dev, sigma2, beta = self.estimates(X, stats)
        return X, dev, sigma2, beta, converged, n_iter
