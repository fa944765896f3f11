"""Known covariances between the levels of a random term: kinship matrices.

A random effect ``b ~ N(0, sigma^2 K)`` over the levels of a factor, with ``K`` known
(a genetic relationship matrix over donors), is the model of lme4qtl's ``relmatLmer``
(Ziyatdinov et al. 2018, BMC Bioinformatics 19:68). It is fitted as an ordinary
random intercept on transformed columns: with ``K = R R'``, ``b = R u`` and
``u ~ N(0, sigma^2 I)``, so ``Z b = (Z R) u``. This module checks ``K`` and computes
``R``; the fit applies it to the sufficient statistics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.linalg

__all__ = ["relationship_factor"]

# Relative tolerances: asymmetry against the largest entry, negative eigenvalues
# against the largest eigenvalue.
_SYMMETRY_TOL = 1e-8
_PSD_TOL = 1e-8


def _as_frame(term: str, K) -> pd.DataFrame:
    if not isinstance(K, pd.DataFrame):
        raise TypeError(
            f"covariance[{term!r}] must be a pandas DataFrame with the levels of {term!r} as "
            f"its index and columns, got {type(K).__name__}. Wrap a matrix as "
            "pd.DataFrame(K, index=levels, columns=levels)."
        )
    index = K.index.astype(str)
    if index.has_duplicates:
        dup = index[index.duplicated()].unique()[:5].tolist()
        raise ValueError(f"covariance[{term!r}] has duplicated levels in its index: {dup}.")
    if not index.equals(pd.Index(K.columns.astype(str))):
        raise ValueError(
            f"covariance[{term!r}] must have the same levels, in the same order, as index and "
            "columns (a symmetric levels x levels matrix)."
        )
    values = K.to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise ValueError(f"covariance[{term!r}] has NaN or infinite entries.")
    return pd.DataFrame(values, index=index, columns=index)


def relationship_factor(term: str, K, levels: pd.Index) -> np.ndarray:
    """Check a covariance between levels and return a factor ``R`` with ``K = R R'``.

    Parameters
    ----------
    term
        The random term, for messages.
    K
        Levels x levels positive semi-definite DataFrame indexed by level (extra levels
        without observations are dropped).
    levels
        The term's levels with observations, in the order of its codes.

    Returns
    -------
    numpy.ndarray
        ``R`` (``len(levels) x len(levels)``): the lower Cholesky factor where ``K`` is
        positive definite, else ``U diag(sqrt(lambda))`` from its eigendecomposition.

    Raises
    ------
    TypeError, ValueError
        ``K`` is not a DataFrame, misses levels, is not symmetric, or not positive
        semi-definite (within a relative tolerance of 1e-8).
    """
    frame = _as_frame(term, K)
    wanted = pd.Index(levels).astype(str)
    missing = wanted.difference(frame.index)
    if len(missing):
        shown = ", ".join(map(repr, missing[:10]))
        raise ValueError(
            f"covariance[{term!r}] has no row for {len(missing)} level(s) of {term!r} with "
            f"observations: {shown}. Add them to the matrix, or leave their cells out."
        )
    values = frame.loc[wanted, wanted].to_numpy()
    scale = np.abs(values).max()
    if not scale > 0:
        raise ValueError(f"covariance[{term!r}] is zero on the modelled levels.")
    asym = np.abs(values - values.T).max()
    if asym > _SYMMETRY_TOL * scale:
        i, j = np.unravel_index(np.argmax(np.abs(values - values.T)), values.shape)
        raise ValueError(
            f"covariance[{term!r}] is not symmetric: K[{wanted[i]!r}, {wanted[j]!r}] = "
            f"{values[i, j]:g} but K[{wanted[j]!r}, {wanted[i]!r}] = {values[j, i]:g}."
        )
    values = 0.5 * (values + values.T)
    try:
        return scipy.linalg.cholesky(values, lower=True)
    except np.linalg.LinAlgError:
        pass
    lam, U = np.linalg.eigh(values)
    if lam[0] < -_PSD_TOL * max(lam[-1], 0.0) or lam[-1] <= 0:
        raise ValueError(
            f"covariance[{term!r}] is not positive semi-definite: its smallest eigenvalue is "
            f"{lam[0]:.3g} (largest {lam[-1]:.3g}). A kinship matrix estimated from few "
            "markers can be indefinite: project it onto the nearest positive semi-definite "
            "matrix (clip negative eigenvalues at 0) or add a small ridge to its diagonal."
        )
    return U * np.sqrt(np.maximum(lam, 0.0))[None, :]
