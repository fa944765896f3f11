"""How much the variables of a design carry the same information.

For two variables, each coded as the columns of its model matrix (a categorical
one as indicators of its levels, a continuous one as itself), the association
is ``sqrt(mean(rho^2))`` over their canonical correlations ``rho``: the measure
of variancePartition's ``canCorPairs``. For two categorical variables it equals
Cramér's V. A value near 1 means the two are confounded, and their variances
cannot be told apart, unless one factor is nested in the other (each of its
levels within one level of the other, like libraries within patients): nested
factors are associated by construction and a mixed model separates them through
the several inner levels of each outer level.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .matrices import Design

__all__ = ["association", "canonical_association", "design_variables", "nesting"]


def design_variables(design: Design) -> dict[str, np.ndarray]:
    """Each model term's columns: indicators of a grouping factor's levels, or the
    fixed-effect columns of a term (observations x columns)."""
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


def nesting(design: Design) -> pd.DataFrame:
    """``table.loc[a, b]`` is true where grouping factor ``a`` is nested in ``b``:
    every level of ``a`` lies within a single level of ``b`` (and ``a`` has more
    levels, so the two are not the same grouping)."""
    names = [f.name for f in design.factors]
    table = pd.DataFrame(False, index=names, columns=names)
    for a in design.factors:
        for b in design.factors:
            if a is b or a.n_levels <= b.n_levels:
                continue
            pairs = np.unique(np.stack([a.codes, b.codes], axis=1), axis=0)
            table.loc[a.name, b.name] = len(pairs) == a.n_levels
    return table
