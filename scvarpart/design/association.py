"""How much the variables of a design carry the same information.

For two variables, each coded as the columns of its model matrix (a categorical
one as indicators of its levels, a continuous one as itself), the association
is ``sqrt(mean(rho^2))`` over their canonical correlations ``rho``: the measure
of variancePartition's ``canCorPairs``. For two categorical variables it equals
Cramér's V. A value near 1 means the two are confounded, and their variances
cannot be told apart, unless one factor is nested in the other (each of its
levels within one level of the other, like libraries within patients): nested
factors are associated by construction and a mixed model separates them through
the several inner levels of each outer level. The same holds for a covariate that
is constant within the levels of a grouping factor (a donor's age or sex beside
``(1|donor)``): its fixed effect is estimated from the differences between donors
and the donor variance from what remains, so the two are told apart as long as the
grouping factor carries more information than the covariate (:func:`within`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .matrices import Design

__all__ = ["association", "canonical_association", "design_variables", "nesting", "within"]


def design_variables(design: Design) -> dict[str, np.ndarray]:
    """Each model term's columns (observations x columns).

    Indicators of a grouping factor's levels, or the fixed-effect columns of a term.
    """
    out: dict[str, np.ndarray] = {}
    for f in design.factors:
        out[f.name] = np.eye(f.n_levels)[f.codes]
    for name, cols in design.fixed_terms.items():
        out[name] = design.X[:, cols]
    return out


def _basis(A: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the centred columns of ``A`` (dropping dependent ones)."""
    A = A - A.mean(axis=0)
    if A.shape[1] == 0:
        return A
    Q, R, _ = _qr(A)
    diag = np.abs(np.diag(R))
    rank = int(np.sum(diag > diag.max(initial=0) * 1e-10)) if diag.size else 0
    return Q[:, :rank]


def _qr(A: np.ndarray):
    import scipy.linalg

    return scipy.linalg.qr(A, mode="economic", pivoting=True)


def canonical_association(A: np.ndarray, B: np.ndarray) -> float:
    """``sqrt(mean(rho^2))`` over the canonical correlations of ``A`` and ``B``."""
    qa, qb = _basis(A), _basis(B)
    if qa.shape[1] == 0 or qb.shape[1] == 0:
        return np.nan
    rho = np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), 0.0, 1.0)
    return float(np.sqrt(np.mean(rho**2)))


def association(design: Design) -> pd.DataFrame:
    """Pairwise association of all model terms (a symmetric table, 1 on the diagonal)."""
    variables = design_variables(design)
    names = list(variables)
    table = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            value = canonical_association(variables[a], variables[b])
            table.loc[a, b] = table.loc[b, a] = value
    return table


def _constant_within(A: np.ndarray, codes: np.ndarray, n_levels: int) -> bool:
    """Whether every column of ``A`` takes a single value within each level."""
    counts = np.bincount(codes, minlength=n_levels).astype(float)
    sums = np.zeros((n_levels, A.shape[1]))
    np.add.at(sums, codes, A)
    means = sums / np.maximum(counts, 1.0)[:, None]
    scale = max(float(np.abs(A).max(initial=0.0)), 1.0)
    return bool(np.abs(A - means[codes]).max(initial=0.0) <= 1e-9 * scale)


def within(design: Design) -> pd.DataFrame:
    """Which terms are constant within the levels of which grouping factors.

    ``table.loc[t, g]`` is true where term ``t`` is constant within each level of
    grouping factor ``g`` and carries less information (fewer dimensions once
    centred): a ``g``-level covariate such as a donor's age beside ``(1|donor)``, or
    an outer factor such as the patient of ``(1|patient:library)``.

    Rows: every term (grouping factors, then fixed terms); columns: the grouping
    factors. A term constant within ``g`` with as much information as ``g`` (the same
    groups under another name) is not within it: the two are confounded.
    """
    variables = design_variables(design)
    ranks = {name: _basis(cols).shape[1] for name, cols in variables.items()}
    factors = {f.name: f for f in design.factors}
    table = pd.DataFrame(False, index=list(variables), columns=list(factors))
    for t, cols in variables.items():
        for g, f in factors.items():
            if t != g and ranks[t] < ranks[g]:
                table.loc[t, g] = _constant_within(cols, f.codes, f.n_levels)
    return table


def nesting(design: Design) -> pd.DataFrame:
    """Which grouping factors are nested in which.

    ``table.loc[a, b]`` is true where grouping factor ``a`` is nested in ``b``: every
    level of ``a`` lies within a single level of ``b`` (and ``a`` has more levels, so
    the two are not the same grouping).
    """
    names = [f.name for f in design.factors]
    return within(design).loc[names, names].T.rename_axis(index=None, columns=None)
