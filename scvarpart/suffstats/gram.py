"""Cross-products of the design, computed once and shared by every gene."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..design import Design
from ._weighted import check_weights

__all__ = ["DesignGram", "centred_fixed", "design_gram", "indicator_matrix"]


@dataclass(frozen=True)
class DesignGram:
    """Cross-products of the random- and fixed-effect design matrices.

    The fixed-effect columns other than the intercept are centred, which leaves
    every slope (and the likelihood) unchanged but keeps the products free of
    cancellation; the intercept then absorbs the means.

    With observation weights ``w`` (``W = diag(w)``) the products are weighted,
    ``Z'WZ``, ``Z'WX_c`` and ``X_c'WX_c``, and the columns are centred by their
    weighted means.

    Attributes
    ----------
    n_obs
        Number of observations.
    factor_sizes
        Columns of ``Z`` per grouping factor (its levels, for a random intercept);
        the random effects are stacked factor by factor in this order.
    ZtZ
        ``Z'Z`` (sparse, ``q x q``): for an indicator ``Z``, diagonal blocks hold
        level counts, off-diagonal blocks the cross-tabulation of two factors.
    ZtX
        ``Z'X_c`` (``q x p``).
    XtX
        ``X_c'X_c`` (``p x p``).
    x_mean
        Means of the columns of ``X`` (0 for the intercept), to map estimates
        back to the uncentred columns; weighted means with weights.
    weight_sum
        ``sum(w)``, or ``None`` without weights (each observation weighs 1).
    log_weights
        ``sum(log(w))`` (0 without weights): the weights' term of the
        log-likelihood, whose residual covariance is ``sigma^2 W^-1``.
    """

    n_obs: int
    factor_sizes: tuple[int, ...]
    ZtZ: sp.csr_matrix
    ZtX: np.ndarray
    XtX: np.ndarray
    x_mean: np.ndarray
    weight_sum: float | None = None
    log_weights: float = 0.0

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
        """Population covariance of the fixed-effect columns (0 for the intercept).

        Weighted by the observation weights, if any.
        """
        cov = self.XtX / (self.n_obs if self.weight_sum is None else self.weight_sum)
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


def centred_fixed(
    design: Design, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``X`` with every column but the intercept centred, and the column means.

    With ``weights`` (one per observation), centred by the weighted means: then
    ``X_c'w = 0``, as the weighted products of :func:`design_gram` and
    :func:`~scvarpart.suffstats.response_stats` expect.
    """
    if weights is None:
        x_mean = design.X.mean(axis=0)
    else:
        w = check_weights(weights, design.n_obs)
        x_mean = (design.X * w[:, None]).sum(axis=0) / w.sum()
    x_mean[0] = 0.0
    return design.X - x_mean, x_mean


def _symmetric(A):
    """``(A + A') / 2``: a weighted product's two halves may differ by rounding."""
    return (A + A.T) * 0.5


def design_gram(
    design: Design,
    Z: sp.spmatrix | sp.sparray | np.ndarray | None = None,
    *,
    weights: np.ndarray | None = None,
    factor_sizes: Sequence[int] | None = None,
) -> DesignGram:
    """Compute the cross-products of a design.

    Parameters
    ----------
    design
        The model matrices from :func:`~scvarpart.design.build_design`.
    Z
        Its :func:`indicator_matrix`, if the caller has it already; or any
        random-effect matrix of its observations (``n x q``, e.g. with the columns of
        random slopes, which hold a covariate instead of 1).
    weights
        Observation weights (positive, one per observation): the products become
        ``Z'WZ``, ``Z'WX_c``, ``X_c'WX_c`` with ``X`` centred by its weighted means
        (:func:`centred_fixed` with the same weights gives that ``X_c``).
    factor_sizes
        Columns of ``Z`` per grouping factor, in order; by default each factor's
        levels, which is right for an indicator ``Z`` only.

    Returns
    -------
    The :class:`DesignGram`.
    """
    Z = indicator_matrix(design) if Z is None else Z
    if not sp.issparse(Z):
        Z = sp.csr_matrix(Z)
    sizes = (
        tuple(f.n_levels for f in design.factors)
        if factor_sizes is None
        else tuple(int(s) for s in factor_sizes)
    )
    if sum(sizes) != Z.shape[1] or Z.shape[0] != design.n_obs:
        raise ValueError(
            f"Z is {Z.shape[0]} x {Z.shape[1]}, the design has {design.n_obs} observations "
            f"and factors of {sum(sizes)} columns {sizes}; give factor_sizes for a Z with "
            "other columns than one per level."
        )
    if weights is None:
        Xc, x_mean = centred_fixed(design)
        ZtZ = (Z.T @ Z).tocsr()
        return DesignGram(
            n_obs=design.n_obs,
            factor_sizes=sizes,
            ZtZ=ZtZ,
            ZtX=np.asarray(Z.T @ Xc),
            XtX=Xc.T @ Xc,
            x_mean=x_mean,
        )
    w = check_weights(weights, design.n_obs)
    Xc, x_mean = centred_fixed(design, w)
    WXc = Xc * w[:, None]
    return DesignGram(
        n_obs=design.n_obs,
        factor_sizes=sizes,
        ZtZ=sp.csr_matrix(_symmetric(Z.T @ (sp.diags(w) @ Z))),
        ZtX=np.asarray(Z.T @ WXc),
        XtX=_symmetric(Xc.T @ WXc),
        x_mean=x_mean,
        weight_sum=float(w.sum()),
        log_weights=float(np.log(w).sum()),
    )
