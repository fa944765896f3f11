"""Cross-products of the design, computed once and shared by every gene."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..design import Design

__all__ = ["DesignGram", "centred_fixed", "design_gram", "indicator_matrix"]


@dataclass(frozen=True)
class DesignGram:
    """Cross-products of the random- and fixed-effect design matrices.

    The fixed-effect columns other than the intercept are centred, which leaves
    every slope (and the likelihood) unchanged but keeps the products free of
    cancellation; the intercept then absorbs the means.

    Attributes
    ----------
    n_obs
        Number of observations.
    factor_sizes
        Levels per grouping factor; the random effects are stacked factor by
        factor in this order.
    ZtZ
        ``Z'Z`` (sparse, ``q x q``): diagonal blocks hold level counts,
        off-diagonal blocks the cross-tabulation of two factors.
    ZtX
        ``Z'X_c`` (``q x p``).
    XtX
        ``X_c'X_c`` (``p x p``).
    x_mean
        Means of the columns of ``X`` (0 for the intercept), to map estimates
        back to the uncentred columns.
    """

    n_obs: int
    factor_sizes: tuple[int, ...]
    ZtZ: sp.csr_matrix
    ZtX: np.ndarray
    XtX: np.ndarray
    x_mean: np.ndarray

    @property
    def n_levels(self) -> int:
        """Number of random effects: levels summed over the grouping factors."""
        return int(sum(self.factor_sizes))

    @property
    def n_fixed(self) -> int:
        """Number of fixed-effect columns, the intercept included."""
        return self.XtX.shape[0]

    @property
    def level_factor(self) -> np.ndarray:
        """Index of the grouping factor of each random effect."""
        return np.repeat(np.arange(len(self.factor_sizes)), self.factor_sizes)

    @property
    def x_cov(self) -> np.ndarray:
        """Population covariance of the fixed-effect columns (0 for the intercept)."""
        cov = self.XtX / self.n_obs
        cov[0, :] = 0.0
        cov[:, 0] = 0.0
        return cov


def indicator_matrix(design: Design) -> sp.csr_matrix:
    """The random-effect design ``Z`` (``n x q``): one indicator column per level."""
    n = design.n_obs
    offsets = np.cumsum([0] + [f.n_levels for f in design.factors])
    rows = np.tile(np.arange(n), design.n_random)
    cols = np.concatenate([f.codes + o for f, o in zip(design.factors, offsets, strict=False)])
    data = np.ones(len(rows))
    return sp.csr_matrix((data, (rows, cols)), shape=(n, int(offsets[-1])))


def centred_fixed(design: Design) -> tuple[np.ndarray, np.ndarray]:
    """``X`` with every column but the intercept centred, and the column means."""
    x_mean = design.X.mean(axis=0)
    x_mean[0] = 0.0
    return design.X - x_mean, x_mean


def design_gram(design: Design, Z: sp.csr_matrix | None = None) -> DesignGram:
    """Compute the cross-products of a design.

    Parameters
    ----------
    design
        The model matrices from :func:`~scvarpart.design.build_design`.
    Z
        Its :func:`indicator_matrix`, if the caller has it already.

    Returns
    -------
    The :class:`DesignGram`.
    """
    Z = indicator_matrix(design) if Z is None else Z
    Xc, x_mean = centred_fixed(design)
    ZtZ = (Z.T @ Z).tocsr()
    return DesignGram(
        n_obs=design.n_obs,
        factor_sizes=tuple(f.n_levels for f in design.factors),
        ZtZ=ZtZ,
        ZtX=np.asarray(Z.T @ Xc),
        XtX=Xc.T @ Xc,
        x_mean=x_mean,
    )
