"""Delta-method standard errors and intervals of a count model's fractions and rho.

From the Hessian of the Laplace criterion in every parameter at the optimum
(:mod:`.search`): ``Cov = 2 H^-1`` over the parameters off the boundary, and the
Jacobian of the components' variances, by central differences of the function that
computes them from the parameters (:mod:`.latent` through the fit's context). Fractions
are Wald intervals on the logit scale, as the Gaussian model's first step
(:func:`scvarpart.lmm.intervals.logit_interval`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import ndtri  # the normal quantile, without scipy.stats' overhead per call

from ..varpart.fractions import logit_interval
from .search import LOG_PHI_BOUNDS, GeneFit

__all__ = ["covariance", "free_parameters", "intervals", "jacobian"]


def jacobian(fn, x: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Central differences of ``fn`` in the ``free`` coordinates of ``x``.

    ``fn`` maps a stack of parameter vectors (rows) to a stack of results: every
    difference is taken in one call.
    """
    cols = np.flatnonzero(free)
    if not len(cols):
        return np.zeros((fn(x[None]).shape[1], 0))
    step = 1e-6 * np.maximum(1.0, np.abs(x[cols]))
    points = np.repeat(x[None], 2 * len(cols), axis=0)
    points[np.arange(len(cols)), cols] += step
    points[len(cols) + np.arange(len(cols)), cols] -= step
    values = fn(points)
    return ((values[: len(cols)] - values[len(cols) :]) / (2 * step[:, None])).T


def free_parameters(x: np.ndarray, k: int, dispersion: bool) -> np.ndarray:
    """The parameters off their bounds: all but a variance at 0 and ``log phi`` at a bound.

    ``x`` of a count fit: ``k`` variances first, ``log phi`` last with ``dispersion``.
    Those at a bound have no sampling variance in the delta method's ``2 H^-1``.
    """
    free = np.ones(len(x), bool)
    free[:k] = x[:k] > 0
    if dispersion and x[-1] in LOG_PHI_BOUNDS:
        free[-1] = False
    return free


def covariance(fit: GeneFit, k: int, dispersion: bool):
    """``(free, Cov, positive)``: the delta method's ``Cov = 2 H^-1`` over the free parameters.

    ``free`` from :func:`free_parameters`; ``Cov`` is ``None`` where ``H`` on them is
    singular; ``positive``: whether it is positive definite there.
    """
    free = free_parameters(fit.x, k, dispersion)
    H = fit.hessian[np.ix_(free, free)]
    try:
        cov = 2 * np.linalg.inv(H)
    except np.linalg.LinAlgError:
        return free, None, False
    try:
        return free, cov, bool(np.all(np.linalg.eigvalsh(H) > 0))
    except np.linalg.LinAlgError:
        return free, cov, False


def intervals(
    variances: Callable[[np.ndarray], np.ndarray],
    fit: GeneFit,
    k: int,
    level: float,
    roles,
    dispersion: bool = False,
    delta: tuple | None = None,
) -> dict[str, Any]:
    """Delta-method standard errors and intervals, one-sided for a variance at 0.

    ``Cov(x) = 2 H^-1`` over the coordinates off the boundary (a variance at 0 is held
    there). Fractions: Wald on the logit scale. A variance at 0: ``[0, u]``, ``u`` the
    fraction at ``theta = z sqrt(2 / D''(0))`` (the Wald bound of the 50:50 mixture at
    the boundary). Rho: Wald on the log scale, ``[0, u]`` when its batch variance is 0.

    ``variances``: the components' variances at each row of a stack of parameters
    (``theta`` first, ``k`` of them; ``log phi`` last with ``dispersion``); ``roles``:
    boolean masks of the batch and signal components, or ``None``; ``delta``:
    :func:`covariance` of the fit, if taken already.
    """
    x = fit.x
    at_zero = np.zeros(len(x), bool)
    at_zero[:k] = x[:k] == 0
    free, cov, ok = delta or covariance(fit, k, dispersion)
    V = variances(x[None])[0]
    C = len(V)
    if not ok:
        nan = np.full(C, np.nan)
        return {"variance_se": nan, "ci_low": nan, "ci_high": nan, "rho": (np.nan, np.nan)}
    JV = jacobian(variances, x, free)
    JF = (JV - (V / V.sum())[:, None] * JV.sum(axis=0)) / V.sum()  # of V / sum V
    se_v = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", JV, cov, JV), 0))
    se_f = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", JF, cov, JF), 0))
    f = V / V.sum()
    z2 = ndtri(0.5 + level / 2)
    low, high = logit_interval(f, se_f, z2)
    V_up = V.copy()
    for j in np.flatnonzero(at_zero[:k]):
        se_v[j] = np.nan
        curvature = fit.hessian[j, j]
        theta_u = ndtri(level) * np.sqrt(2 / curvature) if curvature > 0 else np.nan
        V_up[j] = theta_u**2
        low[j], high[j] = 0.0, V_up[j] / (V_up[j] + V.sum() - V[j])
    rho_ci = (np.nan, np.nan)
    if roles is not None:
        batch, signal = roles
        b, s = V[batch].sum(), V[signal].sum()
        if b > 0 and s > 0:
            g = (JV[batch].sum(axis=0) / b) - (JV[signal].sum(axis=0) / s)
            se = np.sqrt(max(g @ cov @ g, 0))
            rho_ci = (b / s * np.exp(-z2 * se), b / s * np.exp(z2 * se))
        elif b == 0 and s > 0:
            rho_ci = (0.0, V_up[batch].sum() / s)
    return {"variance_se": se_v, "ci_low": low, "ci_high": high, "rho": rho_ci}
