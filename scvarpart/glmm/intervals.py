"""Delta-method standard errors and intervals of count models' fractions and rho.

From the Hessian of the Laplace criterion in every parameter at each gene's optimum
(:mod:`.search`): ``Cov = 2 H^-1`` over the parameters off the boundary, and the
Jacobian of the components' variances, by central differences of the function that
computes them from the parameters (:mod:`.latent` through the fit's context). Fractions
are Wald intervals on the logit scale, as the Gaussian model's first step
(:func:`scvarpart.lmm.intervals.logit_interval`).

Every function takes a block of genes at once (parameters ``x`` of shape ``genes x m``,
Hessians ``genes x m x m``): per gene, the same few small products would cost more in
NumPy's per-call overhead than in arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import ndtri  # the normal quantile, without scipy.stats' overhead per call

from ..varpart.fractions import logit_interval
from .search import LOG_PHI_BOUNDS

__all__ = ["covariance", "free_parameters", "intervals", "jacobian"]


def jacobian(fn, x: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Central differences of ``fn`` in the ``free`` coordinates of each row of ``x``.

    ``fn`` maps a stack of parameter vectors (rows) to a stack of results: every
    difference of every gene is taken in one call. Returns ``genes x results x m``, 0 in
    the columns that are not free.
    """
    G, m = x.shape
    step = 1e-6 * np.maximum(1.0, np.abs(x))  # (G, m)
    shift = np.eye(m)[None] * step[:, None, :]  # (G, m, m): row j moves coordinate j
    points = np.concatenate([x[:, None] + shift, x[:, None] - shift], axis=1)
    values = fn(points.reshape(2 * G * m, m)).reshape(G, 2 * m, -1)
    J = (values[:, :m] - values[:, m:]) / (2 * step[:, :, None])  # (G, m, results)
    return np.swapaxes(J * free[:, :, None], 1, 2)


def free_parameters(x: np.ndarray, k: int, dispersion: bool) -> np.ndarray:
    """The parameters off their bounds: all but a variance at 0 and ``log phi`` at a bound.

    ``x`` (genes x parameters) of count fits: ``k`` variances first, ``log phi`` last
    with ``dispersion``. Those at a bound have no sampling variance in the delta
    method's ``2 H^-1``.
    """
    free = np.ones(x.shape, bool)
    free[:, :k] = x[:, :k] > 0
    if dispersion:
        free[:, -1] = ~np.isin(x[:, -1], LOG_PHI_BOUNDS)
    return free


def covariance(x: np.ndarray, hessian: np.ndarray, k: int, dispersion: bool):
    """``(free, Cov, positive)``: the delta method's ``Cov = 2 H^-1`` over the free parameters.

    Per gene: ``free`` from :func:`free_parameters`; ``Cov`` (genes x m x m) is 0 in the
    rows and columns of the parameters held at a bound, and NaN where ``H`` on the free
    ones is singular; ``positive``: whether ``H`` is positive definite there.
    """
    free = free_parameters(x, k, dispersion)
    both = free[:, :, None] & free[:, None, :]
    eye = np.broadcast_to(np.eye(x.shape[1]), hessian.shape)
    H = np.where(both, hessian, eye)  # the held parameters' rows and columns: the identity
    cov = np.full(H.shape, np.nan)
    positive = np.zeros(len(x), bool)
    try:
        cov[:] = 2 * np.linalg.inv(H)
        positive[:] = (np.linalg.eigvalsh(H) > 0).all(axis=1)
    except np.linalg.LinAlgError:  # some gene's H is singular: gene by gene
        for g in range(len(x)):
            try:
                cov[g] = 2 * np.linalg.inv(H[g])
                positive[g] = bool((np.linalg.eigvalsh(H[g]) > 0).all())
            except np.linalg.LinAlgError:
                pass
    return free, np.where(both, cov, 0.0), positive


def intervals(
    variances: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    hessian: np.ndarray,
    k: int,
    level: float,
    roles,
    delta: tuple,
) -> dict[str, Any]:
    """Delta-method standard errors and intervals, one-sided for a variance at 0.

    ``Cov(x) = 2 H^-1`` over the coordinates off the boundary (a variance at 0 is held
    there). Fractions: Wald on the logit scale. A variance at 0: ``[0, u]``, ``u`` the
    fraction at ``theta = z sqrt(2 / D''(0))`` (the Wald bound of the 50:50 mixture at
    the boundary). Rho: Wald on the log scale, ``[0, u]`` when its batch variance is 0.

    ``variances``: the components' variances at each row of a stack of parameters
    (``theta`` first, ``k`` of them); ``x``, ``hessian``: each gene's optimum and the
    criterion's Hessian there; ``roles``: boolean masks of the batch and signal
    components, or ``None``; ``delta``: :func:`covariance` of the genes. Returns per gene
    (rows) ``variance_se``, ``ci_low``, ``ci_high`` and ``rho`` (its two bounds), NaN
    where the Hessian is not positive definite.
    """
    free, cov, ok = delta
    V = variances(x)
    total = V.sum(axis=1, keepdims=True)
    JV = jacobian(variances, x, free)  # (G, C, m)
    JF = (JV - (V / total)[:, :, None] * JV.sum(axis=1, keepdims=True)) / total[:, :, None]
    se_v = np.sqrt(np.maximum(np.einsum("gij,gjk,gik->gi", JV, cov, JV), 0))
    se_f = np.sqrt(np.maximum(np.einsum("gij,gjk,gik->gi", JF, cov, JF), 0))
    z2 = ndtri(0.5 + level / 2)
    low, high = logit_interval(V / total, se_f, z2)
    # a variance at 0: one-sided, up to theta = z sqrt(2 / D''(0))
    at_zero = x[:, :k] == 0
    curvature = np.diagonal(hessian, axis1=1, axis2=2)[:, :k]
    with np.errstate(divide="ignore", invalid="ignore"):
        theta_u = np.where(curvature > 0, ndtri(level) * np.sqrt(2 / curvature), np.nan)
    V_up = V.copy()
    V_up[:, :k] = np.where(at_zero, theta_u**2, V[:, :k])
    se_v[:, :k][at_zero] = np.nan
    low[:, :k][at_zero] = 0.0
    with np.errstate(invalid="ignore"):
        one_sided = V_up[:, :k] / (V_up[:, :k] + total - V[:, :k])
    high[:, :k] = np.where(at_zero, one_sided, high[:, :k])
    rho = _rho_bounds(V, V_up, JV, cov, roles, z2)
    for a in (se_v, low, high, rho):
        a[~ok] = np.nan
    return {"variance_se": se_v, "ci_low": low, "ci_high": high, "rho": rho}


def _rho_bounds(V, V_up, JV, cov, roles, z2) -> np.ndarray:
    """Per gene, rho's interval: Wald on the log scale; ``[0, u]`` with no batch variance."""
    out = np.full((len(V), 2), np.nan)
    if roles is None:
        return out
    batch, signal = roles
    b, s = V[:, batch].sum(axis=1), V[:, signal].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = JV[:, batch].sum(axis=1) / b[:, None] - JV[:, signal].sum(axis=1) / s[:, None]
        se = np.sqrt(np.maximum(np.einsum("gi,gij,gj->g", g, cov, g), 0))
        wald = (b > 0) & (s > 0)
        ratio = b / s
        out[wald] = (ratio[:, None] * np.exp(np.multiply.outer(se, [-z2, z2])))[wald]
        none = (b == 0) & (s > 0)
        out[none, 0] = 0.0
        out[none, 1] = (V_up[:, batch].sum(axis=1) / s)[none]
    return out
