"""Profiled deviance of a random-intercept LMM for a batch of genes, with derivatives.

Model, for one gene: ``y = X beta + Z b + e``, ``b ~ N(0, sigma^2 Gamma)``,
``e ~ N(0, sigma^2 I)``, where ``Gamma`` is diagonal with the variance ratio
``gamma_j = sigma_j^2 / sigma^2`` repeated over the levels of factor ``j``.

For fixed ``gamma`` everything follows from the penalised least-squares system
of Bates et al. (2015, lme4)::

    Omega = [[L'Z'Z L + I, L'Z'X],      L = Lambda = diag(sqrt(gamma))
             [X'Z L,       X'X  ]]

whose Cholesky factor gives ``log|V|``, ``log|X'V^-1 X|`` and the penalised
residual sum of squares ``r2 = y'Py``, from which :mod:`.profiled` forms the ML
deviance or REML criterion (``nu = n`` or ``n - p`` below).

The model is parametrised by ``gamma >= 0`` rather than lme4's ``theta =
sqrt(gamma)``: the gradient in ``gamma`` does not vanish at 0, so a variance that
belongs on the boundary is recognised by the sign of its derivative instead of
being approached ever more slowly.

Derivatives (with ``Q = Z'PZ``, ``M = Z'V^-1 Z``, ``u = Z'Py``; blocks ``_j`` by factor)::

    d r2 / d gamma_j            = -|u_j|^2
    d^2 r2 / d gamma_i gamma_j  = 2 u_i' Q_ij u_j
    d log|V| / d gamma_j        = tr M_jj,     second derivative -|M_ij|_F^2
    d (log|V| + log|X'V^-1X|)   = tr Q_jj,     second derivative -|Q_ij|_F^2

Every quantity needs only Z'Z, Z'X, X'X (shared by all genes) and Z'y, X'y,
y'y (per gene): the cost per evaluation is O((q + p)^3), whatever the number
of observations. Genes are processed as a stack of small matrices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..suffstats import DesignGram, ResponseStats
from .profiled import ProfiledDeviance

__all__ = ["DenseDeviance"]


@dataclass
class _Factorisation:
    lam: np.ndarray  # (G, q) relative standard deviations per level
    Linv: np.ndarray  # (G, m, m) inverse Cholesky factor of Omega
    c: np.ndarray  # (G, m) L^-1 rhs
    r2: np.ndarray  # (G,) penalised residual sum of squares
    deviance: np.ndarray  # (G,)


class DenseDeviance(ProfiledDeviance):
    """Batched profiled deviance for designs with a moderate number of levels.

    Parameters
    ----------
    gram
        Cross-products of the design.
    reml
        REML criterion instead of the ML deviance.
    """

    def __init__(self, gram: DesignGram, reml: bool):
        super().__init__(gram, reml)
        self.q = gram.n_levels
        self.C = gram.ZtZ.toarray()
        self.ZX = gram.ZtX
        self.XX = gram.XtX
        self.level_factor = gram.level_factor
        # (k, q) indicator of which factor each random effect belongs to
        self.E = (self.level_factor[None, :] == np.arange(self.k)[:, None]).astype(float)

    # -- factorisation ------------------------------------------------------

    def _factor(self, gamma: np.ndarray, stats: ResponseStats) -> _Factorisation:
        G, q, p = gamma.shape[0], self.q, self.p
        m = q + p
        lam = np.sqrt(gamma)[:, self.level_factor]
        omega = np.empty((G, m, m))
        omega[:, :q, :q] = lam[:, :, None] * self.C[None] * lam[:, None, :]
        diag = np.arange(q)
        omega[:, diag, diag] += 1.0
        omega[:, :q, q:] = lam[:, :, None] * self.ZX[None]
        omega[:, q:, :q] = omega[:, :q, q:].transpose(0, 2, 1)
        omega[:, q:, q:] = self.XX
        L = _batched_cholesky(omega)
        ok = np.isfinite(L[:, 0, 0])
        Linv = np.full_like(L, np.nan)
        if ok.any():
            Linv[ok] = np.linalg.inv(L[ok])
        rhs = np.concatenate([lam * stats.ZtY, stats.XtY], axis=1)
        c = np.einsum("gij,gj->gi", Linv, rhs)
        r2 = stats.ss - np.einsum("gi,gi->g", c, c)
        logdiag = np.log(np.diagonal(L, axis1=1, axis2=2))
        dev = self.criterion(
            2 * logdiag[:, :q].sum(axis=1), 2 * logdiag[:, q:].sum(axis=1), np.where(ok, r2, 0.0)
        )
        return _Factorisation(lam=lam, Linv=Linv, c=c, r2=r2, deviance=dev)

    # -- public interface ---------------------------------------------------

    def deviance(self, gamma: np.ndarray, stats: ResponseStats) -> np.ndarray:
        """Deviance (ML) or REML criterion of each gene at ``gamma`` (``G x k``)."""
        return self._factor(gamma, stats).deviance

    def derivatives(
        self, gamma: np.ndarray, stats: ResponseStats
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Deviance, gradient (``G x k``) and Hessian (``G x k x k``) in ``gamma``."""
        f = self._factor(gamma, stats)
        q = self.q
        # T = L^-1 F with F = [Lambda C; X'Z]: then Q = C - T'T, M = C - T_Z'T_Z
        F = np.concatenate(
            [f.lam[:, :, None] * self.C[None], np.broadcast_to(self.ZX.T, (len(f.lam), self.p, q))],
            axis=1,
        )
        T = f.Linv @ F
        TZ = T[:, :q]
        M = self.C[None] - TZ.transpose(0, 2, 1) @ TZ
        TX = T[:, q:]
        Q = M - TX.transpose(0, 2, 1) @ TX
        u = stats.ZtY - np.einsum("giq,gi->gq", T, f.c)  # Z'Py
        D = Q if self.reml else M  # derivative of the log-determinant part

        E = self.E
        tr = np.einsum("gii->gi", D) @ E.T
        frob = E @ (D * D) @ E.T
        uu = (u * u) @ E.T
        uQu = E @ (u[:, :, None] * Q * u[:, None, :]) @ E.T
        r2 = f.r2[:, None]
        grad = tr - self.nu * uu / r2
        hess = -frob + self.nu * (
            2 * uQu / r2[:, :, None] - uu[:, :, None] * uu[:, None, :] / (r2**2)[:, :, None]
        )
        return f.deviance, grad, hess

    def estimates(
        self, gamma: np.ndarray, stats: ResponseStats
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Deviance, residual variance ``sigma^2`` and fixed effects (centred X)."""
        f = self._factor(gamma, stats)
        sol = np.einsum("gji,gj->gi", f.Linv, f.c)  # L^-T c
        return f.deviance, f.r2 / self.nu, sol[:, self.q :]


def _batched_cholesky(A: np.ndarray) -> np.ndarray:
    """Cholesky factors of a stack; matrices that are not positive definite give NaN."""
    try:
        return np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        out = np.full_like(A, np.nan)
        for i in range(A.shape[0]):
            try:
                out[i] = np.linalg.cholesky(A[i])
            except np.linalg.LinAlgError:
                pass
        return out
