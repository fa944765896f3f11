"""voom's precision weights: a mean-variance trend of the log counts, applied per value.

Law et al. (2014): the variance of a log count falls with the count. voom fits each gene's
model to its log CPM values, then smooths the square root of each gene's residual standard
deviation against its mean log count (a lowess curve), and gives each value the weight
``1 / trend(fitted log count)^4``: the inverse of the variance the trend predicts at the
value's fitted count. variancePartition's ``voomWithDreamWeights`` does the same with a
mixed model's fitted values (fixed effects plus BLUPs) and residual deviation; these
functions take those from any fit.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from statsmodels.nonparametric.smoothers_lowess import lowess

__all__ = ["MeanVarianceTrend", "mean_variance_trend", "precision_weights"]


class MeanVarianceTrend(NamedTuple):
    """voom's trend: per gene its coordinates, and the smoothed curve.

    Attributes
    ----------
    mean_log_count
        Per gene, the mean log2 count: mean log CPM plus the mean ``log2(library + 1)``,
        less ``log2(1e6)``.
    sqrt_sd
        Per gene, the square root of the residual standard deviation.
    x, y
        The lowess curve through the genes with counts (sorted by ``x``).
    """

    mean_log_count: np.ndarray
    sqrt_sd: np.ndarray
    x: np.ndarray
    y: np.ndarray

    def __call__(self, log_count: np.ndarray) -> np.ndarray:
        """The curve at ``log_count``: linear between its points, constant beyond them."""
        return np.interp(log_count, self.x, self.y)


def _log_library(lib_size: np.ndarray) -> np.ndarray:
    """``log2(library + 1) - log2(1e6)``: log CPM plus this is a log count (voom's)."""
    return np.log2(np.asarray(lib_size, dtype=float) + 1) - np.log2(1e6)


def mean_variance_trend(
    log_cpm: np.ndarray,
    lib_size: np.ndarray,
    residual_sd: np.ndarray,
    *,
    has_counts: np.ndarray | None = None,
    span: float = 0.5,
) -> MeanVarianceTrend:
    """Voom's lowess trend of ``sqrt(residual sd)`` against the mean log count.

    Parameters
    ----------
    log_cpm
        Samples x genes, voom's log CPM (:func:`~scvarpart.counts.log_cpm`).
    lib_size
        The samples' library sizes used for ``log_cpm``.
    residual_sd
        Per gene, the fitted model's residual standard deviation (``sigma``, lme4's
        ``sigma(fit)``); genes with a non-finite one are left out of the curve.
    has_counts
        Per gene, whether any count is non-zero (genes of zeros only are left out of
        the curve, as voom leaves them out); default: all.
    span
        The lowess span, the fraction of genes in each local fit (voom's 0.5).

    Returns
    -------
    The :class:`MeanVarianceTrend`. The curve is R's ``lowess(x, y, f=span)``: three
    robustifying iterations, ``delta`` 1% of the range of ``x``.
    """
    if not 0 < span <= 1:
        raise ValueError(f"span={span!r} must be in (0, 1]: the fraction of genes per local fit.")
    x = np.asarray(log_cpm, dtype=float).mean(axis=0) + _log_library(lib_size).mean()
    y = np.sqrt(np.asarray(residual_sd, dtype=float))
    used = np.isfinite(x) & np.isfinite(y)
    if has_counts is not None:
        used &= np.asarray(has_counts, dtype=bool)
    if used.sum() < 2:
        raise ValueError(
            f"A mean-variance trend needs at least two genes with a fit, but {int(used.sum())} "
            "have one."
        )
    xs = x[used]
    curve = lowess(y[used], xs, frac=span, it=3, delta=0.01 * float(np.ptp(xs)))
    cx, cy = curve[:, 0], curve[:, 1]
    # tied x: one point each, at the mean of their values (R's approxfun, ties = mean)
    ux, first = np.unique(cx, return_index=True)
    if len(ux) < len(cx):
        sums = np.add.reduceat(cy, first)
        cy = sums / np.diff(np.append(first, len(cx)))
        cx = ux
    return MeanVarianceTrend(x, y, cx, cy)


def precision_weights(
    trend: MeanVarianceTrend, fitted_log_cpm: np.ndarray, lib_size: np.ndarray
) -> np.ndarray:
    """Voom's weights, ``1 / trend(fitted log count)^4``, samples x genes.

    ``fitted_log_cpm``: each value's fitted log CPM (samples x genes), with the samples'
    ``lib_size``.
    """
    log_count = np.asarray(fitted_log_cpm, dtype=float) + _log_library(lib_size)[:, None]
    return 1.0 / trend(log_count) ** 4
