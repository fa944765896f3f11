"""Conditional modes (BLUPs) of the random effects and their conditional variances.

At the optimum ``theta`` of a gene, the random effects' conditional modes are
``b = Lambda u`` with ``u`` the random-effect part of the solution of the penalised
system ``Omega [u; beta] = P' [Z'y; X'y]`` (notation of :mod:`.general`), and their
conditional covariance given ``beta`` is ``sigma^2 Lambda Omega_uu^-1 Lambda'``, as lme4's
``ranef(condVar = TRUE)``. For a term with a known covariance ``K = R R'`` between its
levels the effects on the levels are ``R b`` (:mod:`scvarpart.design.relmat`). Everything
comes from the sufficient statistics; a dense factorisation of the size of ``Omega``
per gene.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg

from ..suffstats import DesignGram, ResponseStats
from .terms import ReTerm, lambda_matrix

__all__ = ["MAX_MODES_SIZE", "conditional_modes"]

#: Largest number of random effects for which modes are computed (dense algebra).
MAX_MODES_SIZE = 3000


def _term_blocks(terms: Sequence[ReTerm]) -> list[slice]:
    stops = np.cumsum([t.n_columns for t in terms])
    return [slice(int(b - t.n_columns), int(b)) for t, b in zip(terms, stops, strict=True)]


def _gene_modes(G, terms, theta, zy, xy, relfacs, blocks):
    """Modes and conditional variances (over ``sigma^2``) of one gene, by term."""
    q = len(zy)
    lam = lambda_matrix(list(terms), theta)
    GP = G.copy()
    GP[:, :q] = G[:, :q] @ lam
    omega = GP.copy()
    omega[:q] = lam.T @ GP[:q]
    omega[np.arange(q), np.arange(q)] += 1.0
    L = scipy.linalg.cholesky(omega, lower=True, check_finite=False)
    s = scipy.linalg.cho_solve((L, True), np.concatenate([lam.T @ zy, xy]), check_finite=False)
    b = lam @ s[:q]
    A = scipy.linalg.solve_triangular(L[:q, :q], lam.T, lower=True, check_finite=False)
    modes, variances = [], []
    for sl, R in zip(blocks, relfacs, strict=True):
        Ab = A[:, sl]
        if R is None:
            modes.append(b[sl])
            variances.append(np.einsum("ij,ij->j", Ab, Ab))
        else:  # effects on the levels: R b, with covariance R C R'
            RA = Ab @ R.T
            modes.append(R @ b[sl])
            variances.append(np.einsum("ij,ij->j", RA, RA))
    return modes, variances


def conditional_modes(
    gram: DesignGram,
    terms: Sequence[ReTerm],
    theta: np.ndarray,
    stats: ResponseStats,
    relfacs: Sequence[np.ndarray | None] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Conditional modes of every term's effects and their variances, gene by gene.

    Parameters
    ----------
    gram
        Cross-products of the design, ``Z`` in the columns of ``terms``.
    terms
        The random-effect terms.
    theta
        Each gene's covariance parameters (``G x k``); NaN rows give NaN.
    stats
        The genes' statistics.
    relfacs
        Per term, ``R`` of a known covariance between its levels (``None`` else).

    Returns
    -------
    Per term, the modes (``G x n_columns``, level by level) and their conditional
    variances over the residual variance (multiply by ``sigma^2``).

    Raises
    ------
    ValueError
        With more than :data:`MAX_MODES_SIZE` random effects.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import scvarpart as svp
    >>> rng = np.random.default_rng(0)
    >>> obs = pd.DataFrame({"donor": rng.choice(list("abcd"), 200), "t": rng.normal(size=200)})
    >>> stats = svp.lmm.response_stats(rng.normal(size=(200, 3)), "~ (1 + t|donor)", obs=obs)
    >>> terms = [info.term for info in stats.terms]
    >>> theta = np.tile([0.5, 0.1, 0.3], (3, 1))  # lme4's theta of (1 + t|donor), per gene
    >>> modes, variances = svp.lmm.conditional_modes(stats.gram, terms, theta, stats.response)
    >>> modes[0].shape  # genes x (levels x coefficients)
    (3, 8)
    """
    q = gram.n_levels
    if q > MAX_MODES_SIZE:
        raise ValueError(
            f"The model has {q} random effects; BLUPs are computed with dense algebra for "
            f"at most {MAX_MODES_SIZE}. Fit without store_blups, or with fewer levels."
        )
    relfacs = list(relfacs) if relfacs is not None else [None] * len(terms)
    blocks = _term_blocks(terms)
    G = np.block([[gram.ZtZ.toarray(), gram.ZtX], [gram.ZtX.T, gram.XtX]])
    n_genes = len(stats)
    modes = [np.full((n_genes, t.n_columns), np.nan) for t in terms]
    variances = [np.full((n_genes, t.n_columns), np.nan) for t in terms]
    for g in np.flatnonzero(np.isfinite(theta).all(axis=1)):
        m, v = _gene_modes(G, terms, theta[g], stats.ZtY[g], stats.XtY[g], relfacs, blocks)
        for j in range(len(terms)):
            modes[j][g], variances[j][g] = m[j], v[j]
    return modes, variances
