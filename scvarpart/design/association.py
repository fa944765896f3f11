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

from .matrices import Design, GroupingFactor

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


def _factor_pair(a: GroupingFactor, b: GroupingFactor) -> float:
    """Canonical association of two factors' indicators, from their contingency table.

    The canonical correlations of two sets of indicators are the singular values of
    ``D_a^-1/2 (N - r c' / n) D_b^-1/2`` (``N`` the table, ``r``, ``c`` its margins):
    correspondence analysis. Cramér's V.
    """
    table = np.bincount(a.codes * b.n_levels + b.codes, minlength=a.n_levels * b.n_levels)
    N = table.reshape(a.n_levels, b.n_levels).astype(float)
    r, c = N.sum(axis=1), N.sum(axis=0)
    N, r, c = N[r > 0][:, c > 0], r[r > 0], c[c > 0]
    dims = min(len(r), len(c)) - 1  # the centred indicators' ranks, the smaller
    if dims < 1:
        return np.nan
    M = (N - np.outer(r, c) / r.sum()) / np.sqrt(np.outer(r, c))
    rho = np.clip(np.linalg.svd(M, compute_uv=False), 0.0, 1.0)
    return float(np.sqrt(np.sum(rho**2) / dims))


def _factor_columns(f: GroupingFactor, B: np.ndarray) -> float:
    """Canonical association of a factor's indicators and the columns ``B``.

    With ``Q`` an orthonormal basis of the centred ``B``, the squared canonical
    correlations are the eigenvalues of ``Q' P Q``, ``P`` the projection on the centred
    indicators: ``sum_l n_l g_l g_l'`` with ``g_l`` the level means of ``Q``.
    """
    Q = _basis(B)
    dims = min(int(np.count_nonzero(f.counts)) - 1, Q.shape[1])
    if dims < 1:
        return np.nan
    sums = np.zeros((f.n_levels, Q.shape[1]))
    np.add.at(sums, f.codes, Q)
    n = np.maximum(f.counts, 1).astype(float)
    between = (sums / n[:, None]).T @ sums  # sum_l n_l g_l g_l'
    rho2 = np.clip(np.linalg.eigvalsh(between), 0.0, 1.0)
    return float(np.sqrt(np.sort(rho2)[::-1][:dims].sum() / dims))


def association(design: Design) -> pd.DataFrame:
    """Pairwise association of all model terms (a symmetric table, 1 on the diagonal).

    From the factors' level codes and the fixed columns, never the indicator matrices
    (cells x levels): the cost grows with cells plus levels squared.
    """
    factors = {f.name: f for f in design.factors}
    columns = {name: design.X[:, cols] for name, cols in design.fixed_terms.items()}
    names = [*factors, *columns]
    table = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if a in factors and b in factors:
                value = _factor_pair(factors[a], factors[b])
            elif a in factors or b in factors:
                f, t = (factors[a], b) if a in factors else (factors[b], a)
                value = _factor_columns(f, columns[t])
            else:
                value = canonical_association(columns[a], columns[b])
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


def _levels_within(t: GroupingFactor, g: GroupingFactor) -> bool:
    """Whether each level of ``g`` holds a single level of ``t``."""
    return len(t.combinations(g)) == int(np.count_nonzero(g.counts))


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
    factors = {f.name: f for f in design.factors}
    columns = {name: design.X[:, cols] for name, cols in design.fixed_terms.items()}
    # dimensions once centred: levels present but one; the columns' rank
    ranks = {name: int(np.count_nonzero(f.counts)) - 1 for name, f in factors.items()}
    ranks.update({name: _basis(cols).shape[1] for name, cols in columns.items()})
    table = pd.DataFrame(False, index=[*factors, *columns], columns=list(factors))
    for t in table.index:
        for g, f in factors.items():
            if t != g and ranks[t] < ranks[g]:
                inside = (
                    _levels_within(factors[t], f)
                    if t in factors
                    else _constant_within(columns[t], f.codes, f.n_levels)
                )
                table.loc[t, g] = inside
    return table


def nesting(design: Design) -> pd.DataFrame:
    """Which grouping factors are nested in which.

    ``table.loc[a, b]`` is true where grouping factor ``a`` is nested in ``b``: every
    level of ``a`` lies within a single level of ``b`` (and ``a`` has more levels, so
    the two are not the same grouping).
    """
    names = [f.name for f in design.factors]
    return within(design).loc[names, names].T.rename_axis(index=None, columns=None)
