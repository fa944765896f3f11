"""Random-effect terms as the likelihood sees them: columns and covariance parameters.

A term with ``r`` coefficients per level (an intercept, slopes) over ``l`` levels owns
``l * r`` columns of ``Z``, level by level, and a relative covariance factor
``Lambda_j = I_l (x) T`` with ``T`` lower triangular (``r x r``): the coefficients of a
level are ``b = sigma T u`` with ``u ~ N(0, I)``, so their covariance is
``sigma^2 T T'``. As in lme4 (Bates et al. 2015, section 2.2), ``T`` is parametrised by
``theta``, its lower triangle column by column, with the diagonal bounded below by 0
and the rest free. A random intercept has ``theta = sqrt(sigma_j^2 / sigma^2)``.

A known covariance between levels (a kinship matrix) is applied to the term's columns
before the likelihood sees them (:mod:`scvarpart.design.relmat`), so such a term is a
random intercept whose block of ``Z'Z`` is dense rather than diagonal: ``diagonal``
records which.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp

__all__ = ["ReTerm", "lambda_matrix", "theta_patterns", "theta_slices"]


@dataclass(frozen=True)
class ReTerm:
    """One random-effect term of the likelihood.

    Attributes
    ----------
    name
        The term's name, for messages and results.
    n_levels
        Number of levels of its grouping factor.
    n_coef
        Coefficients per level (1 for a random intercept).
    diagonal
        Whether its own block of ``Z'Z`` is block diagonal (one ``r x r`` block per
        level, as for any grouping factor); ``False`` after a known covariance between
        levels has been applied.
    coefficients
        Names of the coefficients, for reports.
    """

    name: str
    n_levels: int
    n_coef: int = 1
    diagonal: bool = True
    coefficients: tuple[str, ...] = ("(Intercept)",)

    @property
    def n_columns(self) -> int:
        """Columns of ``Z``: levels times coefficients."""
        return self.n_levels * self.n_coef

    @property
    def n_theta(self) -> int:
        """Covariance parameters: the lower triangle of ``T``."""
        return self.n_coef * (self.n_coef + 1) // 2

    @property
    def scalar(self) -> bool:
        """A random intercept with independent levels."""
        return self.n_coef == 1 and self.diagonal

    @cached_property
    def positions(self) -> np.ndarray:
        """``(row, column)`` in ``T`` of each parameter, column by column (lme4's order)."""
        r = self.n_coef
        return np.array([(a, b) for b in range(r) for a in range(b, r)], dtype=np.intp)

    @property
    def lower(self) -> np.ndarray:
        """Lower bounds of the parameters: 0 for the diagonal of ``T``, none elsewhere."""
        a, b = self.positions.T
        return np.where(a == b, 0.0, -np.inf)

    @property
    def theta0(self) -> np.ndarray:
        """lme4's starting point: ``T = I``."""
        a, b = self.positions.T
        return (a == b).astype(float)

    def factor(self, theta: np.ndarray) -> np.ndarray:
        """``T`` (``r x r``, lower triangular) from the term's parameters."""
        T = np.zeros((self.n_coef, self.n_coef))
        a, b = self.positions.T
        T[a, b] = theta
        return T

    def covariance(self, theta: np.ndarray) -> np.ndarray:
        """The coefficients' covariance relative to the residual variance, ``T T'``."""
        T = self.factor(theta)
        return T @ T.T


def theta_patterns(terms: list[ReTerm]) -> list[sp.csr_matrix]:
    """``d Lambda / d theta_k`` for every parameter: 0/1 matrices, ``q x q``.

    ``Lambda`` is linear in ``theta``, ``Lambda = sum_k theta_k D_k``.
    """
    q = sum(t.n_columns for t in terms)
    out = []
    offset = 0
    for t in terms:
        r = t.n_coef
        base = offset + np.arange(t.n_levels) * r
        for a, b in t.positions:
            out.append(
                sp.csr_matrix(
                    (np.ones(t.n_levels), (base + a, base + b)), shape=(q, q), dtype=float
                )
            )
        offset += t.n_columns
    return out


def theta_slices(terms: list[ReTerm]) -> list[slice]:
    """Each term's coordinates in ``theta`` (its parameters, in the terms' order)."""
    ends = np.cumsum([0, *(t.n_theta for t in terms)])
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(ends)]


def lambda_matrix(terms: list[ReTerm], theta: np.ndarray) -> np.ndarray:
    """``Lambda`` (``q x q``, dense, block diagonal) at ``theta``."""
    q = sum(t.n_columns for t in terms)
    lam = np.zeros((q, q))
    offset = start = 0
    for t in terms:
        T = t.factor(theta[start : start + t.n_theta])
        r = t.n_coef
        for lv in range(t.n_levels):
            s = offset + lv * r
            lam[s : s + r, s : s + r] = T
        offset += t.n_columns
        start += t.n_theta
    return lam
