"""What every deviance engine shares: the profiled ML deviance and REML criterion.

With the residual variance profiled out, both objectives depend on the variance
ratios only through ``log|V|``, ``log|X'V^-1 X|`` and the penalised residual sum
of squares ``r2 = y'Py`` (Bates et al. 2015, lme4)::

    ML deviance    = log|V|                 + n      (1 + log(2 pi r2 / n))
    REML criterion = log|V| + log|X'V^-1X|  + (n - p)(1 + log(2 pi r2 / (n - p)))

The engines differ only in how they factorise the penalised system to get these.

**One interface.** Every engine (:class:`ProfiledDeviance`) evaluates, for a batch of
genes at one point each, the criterion (``deviance``), with its gradient and Hessian
(``derivatives``; the average information for the blocked engine, see
:attr:`ProfiledDeviance.hessian`), the estimates there (``estimates``: ``sigma^2``
and the fixed effects) and the factor of ``X'V^-1X`` (``fixed_factor``); it minimises
from given starts (``minimise``) and finds the global optimum (``search``). Each works
in its own coordinates (:attr:`ProfiledDeviance.coordinates`): the variance ratios
``gamma = theta^2`` for scalar random intercepts, where the criterion is smoother, or
lme4's ``theta``; :meth:`ProfiledDeviance.to_theta` and
:meth:`ProfiledDeviance.theta_derivatives` report every optimum in ``theta``.
"Converged" means the same for all: the point is the best the global search found and
one where projected Newton met first-order optimality, with every variance on its
bound exactly 0. The conditional modes are the same computation for every engine
(:mod:`.modes`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import numpy as np

from ..suffstats import DesignGram, ResponseStats

__all__ = ["ProfiledDeviance"]

_LOG_2PI = np.log(2 * np.pi)


class ProfiledDeviance(ABC):
    """Base of the deviance engines: what each computes, in its coordinates ``x``.

    Parameters
    ----------
    gram
        Cross-products of the design.
    reml
        REML criterion instead of the ML deviance.
    """

    #: The coordinates ``x`` of the engine's methods: ``"gamma"``, the variance ratios
    #: ``theta^2`` of scalar random intercepts, or lme4's ``"theta"``.
    coordinates: ClassVar[Literal["gamma", "theta"]] = "gamma"
    #: What ``derivatives`` returns as second derivatives: the ``"exact"`` Hessian or
    #: the ``"average information"`` (its expectation; positive semi-definite).
    hessian: ClassVar[Literal["exact", "average information"]] = "exact"

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
    def deviance(self, x: np.ndarray, stats: ResponseStats) -> np.ndarray:
        """The criterion of each gene at its row of ``x`` (``G``; NaN where none)."""

    @abstractmethod
    def derivatives(
        self, x: np.ndarray, stats: ResponseStats
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Criterion, gradient (``G x k``) and Hessian (``G x k x k``) in ``x``."""

    @abstractmethod
    def estimates(
        self, x: np.ndarray, stats: ResponseStats
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Criterion, residual variance ``sigma^2`` and fixed effects (centred X)."""

    @abstractmethod
    def minimise(self, x0: np.ndarray, stats: ResponseStats) -> tuple[np.ndarray, ...]:
        """Projected Newton from ``x0`` only (a local optimum).

        Returns the minimisers, criterion, ``sigma^2``, fixed effects, convergence flags
        and iterations.
        """

    @abstractmethod
    def search(
        self, stats: ResponseStats, x0: np.ndarray, f0: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """The global optimum of every gene, also starting from ``x0`` (criterion ``f0``).

        ``x0`` has NaN rows for no start. Returns what :meth:`minimise` returns and the
        number of descents; an engine that has them may append the gradient and Hessian
        at the optima (both methods), for :meth:`theta_derivatives`.
        """

    def prepare(self) -> None:
        """Compute what every batch of genes shares (a grid), before they run in threads.

        Nothing by default.
        """
        return

    def to_theta(self, x: np.ndarray) -> np.ndarray:
        """lme4's ``theta`` at the engine's points ``x``."""
        return np.sqrt(x) if self.coordinates == "gamma" else x

    def theta_derivatives(
        self, theta: np.ndarray, stats: ResponseStats, *at_optima: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The criterion's gradient and Hessian (or average information) in ``theta``.

        NaN for genes whose ``theta`` is not finite. ``at_optima``: the gradient and
        Hessian in the engine's coordinates at these points, where its search returned
        them; else they are evaluated here. From ``gamma = theta^2``: ``g_theta = 2
        theta g_gamma`` and ``H_theta = 4 theta theta' * H_gamma + diag(2 g_gamma)``.
        """
        G, k = theta.shape
        grad, hess = np.full((G, k), np.nan), np.full((G, k, k), np.nan)
        ok = np.flatnonzero(np.isfinite(theta).all(axis=1))
        t = theta[ok]
        if at_optima:
            g_x, h_x = (a[ok] for a in at_optima)
        else:
            x = t if self.coordinates == "theta" else t**2
            _, g_x, h_x = self.derivatives(x, stats.subset(ok))
        if self.coordinates == "theta":
            grad[ok], hess[ok] = g_x, h_x
            return grad, hess
        g_gamma, h_gamma = g_x, h_x
        grad[ok] = 2 * t * g_gamma
        hess[ok] = 4 * t[:, :, None] * t[:, None, :] * h_gamma
        hess[ok] += np.einsum("gi,ij->gij", 2 * g_gamma, np.eye(k))
        return grad, hess

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
