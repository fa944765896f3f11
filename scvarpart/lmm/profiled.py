"""What every deviance engine shares: the profiled ML deviance and REML criterion.

With the residual variance profiled out, both objectives depend on the variance
ratios only through ``log|V|``, ``log|X'V^-1 X|`` and the penalised residual sum
of squares ``r2 = y'Py`` (Bates et al. 2015, lme4)::

    ML deviance    = log|V|                 + n      (1 + log(2 pi r2 / n))
    REML criterion = log|V| + log|X'V^-1X|  + (n - p)(1 + log(2 pi r2 / (n - p)))

The engines differ only in how they factorise the penalised system to get these.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..suffstats import DesignGram

__all__ = ["ProfiledDeviance"]

_LOG_2PI = np.log(2 * np.pi)


class ProfiledDeviance(ABC):
    """Base of the deviance engines.

    Parameters
    ----------
    gram
        Cross-products of the design.
    reml
        REML criterion instead of the ML deviance.
    """

    def __init__(self, gram: DesignGram, reml: bool):
        self.gram = gram
        # sum(log w) of observation weights: the deviance of y, not of sqrt(W) y
        self.log_weights = float(gram.log_weights)
        self.n = gram.n_obs
        self.p = gram.n_fixed
        self.k = len(gram.factor_sizes)
        self.reml = reml
        # degrees of freedom of the residual variance estimate sigma^2 = r2 / nu
        self.nu = self.n - self.p if reml else self.n
        # variance ratio at which a factor's level means start to inform its
        # variance: 1 / (observations per level)
        self.gamma_scale = np.asarray(gram.factor_sizes, dtype=float) / self.n

    @property
    def n_params(self) -> int:
        """Number of variance ratios (one per grouping factor)."""
        return self.k

    @abstractmethod
    def fixed_factor(self, gamma: np.ndarray) -> np.ndarray:
        """Lower Cholesky factor ``L`` of ``X'V^-1 X`` at each row of ``gamma``.

        ``V = I + Z Gamma Z'`` is the covariance over ``sigma^2``; ``G x p x p``, a
        by-product of each engine's own factorisation.
        """

    def fixed_covariance(self, gamma: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
        """Covariance of the fixed effects (centred X) given the variances.

        ``sigma^2 (X'V^-1 X)^-1``, as lme4's ``vcov``: ``G x p x p``, NaN for genes
        without a factor.
        """
        L = self.fixed_factor(gamma)
        cov = np.full_like(L, np.nan)
        ok = np.isfinite(L).all(axis=(1, 2)) & np.isfinite(sigma2)
        if ok.any():
            inv = np.linalg.inv(L[ok])  # triangular and p x p: tiny, batched
            cov[ok] = np.einsum("gji,gjk->gik", inv, inv) * sigma2[ok, None, None]
        return cov

    def criterion(self, logdet_v, logdet_x, r2):
        """The objective from its parts; ``logdet_x`` is ignored for ML.

        NaN where ``r2 <= 0`` (no residual left to model).
        """
        logdet = logdet_v + logdet_x if self.reml else logdet_v
        with np.errstate(invalid="ignore", divide="ignore"):
            dev = logdet + self.nu * (1 + _LOG_2PI + np.log(r2 / self.nu)) - self.log_weights
        return np.where(r2 > 0, dev, np.nan)
