"""The rows the Laplace kernel sees: observations, or classes of them for Poisson.

Every observation's random-effect columns come from the design's grouping factors
(random intercepts: one column per level of each term). A term with a known covariance
``K`` between its levels keeps its indicator columns; its prior carries ``K``
(:func:`row_prior`). For a Poisson model the
likelihood of the observations that share their fixed-effect row and their levels (a
*class*) depends on their counts only through the class's total ``y_c``, and on their
offsets only through ``E_c = sum exp(offset)``:

    sum_i [y_i (o_i + xi_c) - exp(o_i + xi_c) - log y_i!]
      = y_c (log E_c + xi_c) - E_c exp(xi_c) - log y_c!  +  const,

the first part a Poisson row with offset ``log E_c``, the constant
``sum_i (y_i o_i - log y_i!) - y_c log E_c + log y_c!`` free of the parameters. So a
Poisson gene is fitted on its class totals (for the example design, hundreds of classes
in place of thousands of cells) and the constant added back to its log-likelihood. NB2
counts do not aggregate: their rows are the observations, except that with few classes
a class's zero counts are summed in closed form (:mod:`._zero_tables`) and only the
non-zero counts remain rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy import special

from ..design import Design

__all__ = [
    "RowDesign",
    "check_intercepts",
    "independent_prior",
    "observation_rows",
    "row_design",
    "row_prior",
]

# A known covariance whose smallest eigenvalue is below this, relative to its largest, is
# refused: the prior's precision K^-1 would be dominated by rounding.
_SINGULAR = 1e-10


@dataclass(frozen=True)
class RowDesign:
    """The random-effect layout of a design and its Poisson classes, shared by every gene.

    Attributes
    ----------
    codes
        ``n x k``: each observation's column of ``u`` per term.
    term
        The term of each column of ``u``.
    n_terms
        ``k``.
    classes
        Each observation's class (rows with equal fixed-effect row and levels).
    class_X, class_codes
        The fixed-effect row and the columns of ``u`` of each class.
    prior
        The modes' prior as the kernel takes it (:func:`row_prior`).
    moment
        Per term, the mean over the observations of ``K[l_i, l_i]`` (1 without a known
        covariance): the term's variance over the observations is ``theta^2`` times it,
        as for a Gaussian fit (:class:`scvarpart.lmm.random_terms.TermInfo`).
    """

    codes: np.ndarray
    term: np.ndarray
    n_terms: int
    classes: np.ndarray
    class_X: np.ndarray
    class_codes: np.ndarray
    prior: tuple
    moment: np.ndarray

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.class_X)

    def class_sums(self, values: np.ndarray) -> np.ndarray:
        """Per class, the sum of ``values`` (one per observation)."""
        return np.bincount(self.classes, weights=values, minlength=self.n_classes)

    def poisson_rows(self, y: np.ndarray, offset: np.ndarray, log_e: np.ndarray | None = None):
        """The class totals, their offsets ``log E_c`` and the log-likelihood's constant.

        ``log_e``: the classes' offsets, if computed already (they are the same for every
        gene: a pass over the observations saved per gene).
        """
        yc = self.class_sums(y)
        if log_e is None:
            log_e = np.log(self.class_sums(np.exp(offset)))
        nz = y > 0
        const = (y[nz] * offset[nz]).sum() - special.gammaln(y[nz] + 1).sum()
        pos = yc > 0
        const -= (yc[pos] * log_e[pos]).sum() - special.gammaln(yc[pos] + 1).sum()
        return yc, log_e, float(const)


def observation_rows(n: int) -> tuple:
    """The kernel's description (``aux``) of ``n`` rows that are all observations."""
    return (
        np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(0), np.zeros(0, np.int64),
        np.zeros((0, 0, 4, 1)), np.zeros((0, 5)),
    )  # fmt: skip


def check_intercepts(design: Design) -> None:
    """Refuse random slopes, and known covariances that are singular.

    Raises
    ------
    ValueError
        Naming the term and the fix.
    """
    for f in design.factors:
        if f.values is not None or f.n_coef != 1:
            raise ValueError(
                f"The random term {f.name!r} has random slopes: count models "
                "(family='poisson' or 'nb') support random intercepts (1|g), with "
                "independent levels or a known covariance between them. Fit slopes with "
                "family='gaussian' on log-normalised values."
            )
        if f.relfac is not None:
            _check_definite(f.name, f.relfac @ f.relfac.T)


def _check_definite(name: str, K: np.ndarray) -> None:
    eig = np.linalg.eigvalsh(K)
    if not eig[0] > _SINGULAR * eig[-1]:
        raise ValueError(
            f"covariance[{name!r}] is singular or nearly so over the levels with "
            f"observations (smallest eigenvalue {eig[0]:.3g}, largest {eig[-1]:.3g}): count "
            "models need it positive definite, as their prior's precision is its inverse. "
            "Add a small ridge, K + 1e-6 * np.eye(len(K)) (relative to its diagonal), or "
            "drop the levels that duplicate others."
        )


def independent_prior(term: np.ndarray) -> tuple:
    """The prior of modes with independent levels: ``P = I``, the largest term eliminated."""
    return (
        int(np.argmax(np.bincount(term))), np.zeros(0, np.int64), np.zeros((0, 0)), 0.0
    )  # fmt: skip


def row_prior(design: Design, starts: np.ndarray) -> tuple:
    """The kernel's prior ``(first, cols, precision, logdet_K)`` of a design's modes.

    ``first``: the term of most levels among those without a known covariance (``-1``:
    none), eliminated first in ``H``'s factor; ``cols``: the columns of ``u`` (from
    ``starts``, each term's first) of the terms with one; ``precision``: ``K^-1`` of each,
    block diagonal over ``cols``; ``logdet_K``: the sum of their ``log det K``.
    """
    sizes = [f.n_levels if f.relfac is None else -1 for f in design.factors]
    first = int(np.argmax(sizes)) if max(sizes) >= 0 else -1
    cols, blocks, logdet = [], [], 0.0
    for t, f in enumerate(design.factors):
        if f.relfac is None:
            continue
        chol = scipy.linalg.cho_factor(f.relfac @ f.relfac.T, lower=True)
        cols.append(starts[t] + np.arange(f.n_levels))
        blocks.append(scipy.linalg.cho_solve(chol, np.eye(f.n_levels)))
        logdet += 2.0 * float(np.log(np.diag(chol[0])).sum())
    if not cols:
        return (first, np.zeros(0, np.int64), np.zeros((0, 0)), 0.0)
    precision = scipy.linalg.block_diag(*blocks)
    return (first, np.concatenate(cols).astype(np.int64), np.ascontiguousarray(precision), logdet)


def row_design(design: Design) -> RowDesign:
    """The layout of a design of random intercepts.

    Raises
    ------
    ValueError
        For random slopes or a singular known covariance (:func:`check_intercepts`).
    """
    check_intercepts(design)
    starts = np.cumsum([0] + [f.n_levels for f in design.factors])
    codes = np.stack(
        [f.codes.astype(np.int64) + starts[t] for t, f in enumerate(design.factors)], axis=1
    )
    term = np.repeat(np.arange(design.n_random), np.diff(starts)).astype(np.int64)
    key = np.concatenate([design.X, codes.astype(float)], axis=1)
    _, first, classes = np.unique(key, axis=0, return_index=True, return_inverse=True)
    return RowDesign(
        codes=np.ascontiguousarray(codes),
        term=term,
        n_terms=design.n_random,
        classes=classes.ravel().astype(np.int64),
        class_X=np.ascontiguousarray(design.X[first]),
        class_codes=np.ascontiguousarray(codes[first]),
        prior=row_prior(design, starts),
        moment=np.array([f.mean_relatedness for f in design.factors]),
    )
