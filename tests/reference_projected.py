"""Projected Newton minimisation over parameters with lower bounds (lme4's ``theta``).

Bertsekas' projected Newton method (1982) for ``min f(theta)`` subject to
``theta_i >= lower_i`` (0 for the diagonal of a term's covariance factor, none for the
rest), one gene at a time, with the exact gradient and Hessian of the engine:

- parameters at (or within ``eps`` of) their bound with a positive gradient are held
  there (a step to the bound, exactly); the others take a Newton step, with the
  reduced Hessian's eigenvalues replaced by their absolute values (at least 1e-10 of
  the largest) where it is not positive definite;
- where the gradient vanishes but the reduced Hessian has a negative eigenvalue (a
  saddle: with a variance exactly 0 the criterion is flat in ``theta`` to first
  order, since it depends on ``theta^2``), the step follows the eigenvector of the
  most negative eigenvalue, downhill;
- an Armijo backtracking search runs along the projection arc.

Converged: the Newton decrement of the free parameters is below ``tol`` with a
positive definite reduced Hessian, or no step decreases the criterion any more while
the decrement is below ``stall_tol`` (rounding hides smaller decreases). Converged
parameters on their bound are exactly on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["BoxOptions", "minimise_box"]

Derivatives = Callable[[np.ndarray], tuple[float, np.ndarray, np.ndarray]]


class BoxOptions(NamedTuple):
    """Settings of :func:`minimise_box`."""

    tol: float = 1e-10
    stall_tol: float = 1e-6
    max_iter: int = 200
    max_step: float = 4.0  # longest step, relative to 1 + |theta|
    near: float = 0.05  # distance (relative to 1 + |theta|) of a descent to a known optimum


def _reduced_step(grad: np.ndarray, hess: np.ndarray, free: np.ndarray):
    """Newton step of the free parameters; decrement, and a negative-curvature direction.

    Returns the step (0 for the others), the decrement ``-g'step``, whether the reduced
    Hessian is positive definite, and the eigenvector of its most negative eigenvalue
    (``None`` where there is none).
    """
    k = len(grad)
    step = np.zeros(k)
    idx = np.flatnonzero(free)
    if len(idx) == 0:
        return step, 0.0, True, None
    w, V = np.linalg.eigh(hess[np.ix_(idx, idx)])
    scale = max(np.abs(w).max(), 1e-300)
    positive = bool(w[0] > 1e-10 * scale)
    wa = np.maximum(np.abs(w), 1e-10 * scale)
    g = grad[idx]
    step[idx] = -V @ ((V.T @ g) / wa)
    direction = None
    if w[0] < -1e-10 * scale:
        direction = np.zeros(k)
        direction[idx] = V[:, 0]
    return step, float(-g @ step[idx]), positive, direction


def _near(x: np.ndarray, known: Sequence[np.ndarray], tol: float) -> bool:
    return any(np.all(np.abs(x - y) <= tol * (1.0 + np.abs(y))) for y in known)


def _line_search(x, f, grad, step, lower, evaluate, max_step):
    """Armijo backtracking along the projection arc; the accepted point and value."""
    t = min(1.0, max_step / max(np.max(np.abs(step) / (1.0 + np.abs(x))), 1e-300))
    while t > 1e-10:
        trial = np.maximum(x + t * step, lower)
        ft = evaluate(trial)
        if np.isfinite(ft) and ft < f and ft <= f + 1e-4 * grad @ (trial - x):
            return trial, ft
        t *= 0.5
    return None, np.nan


_DEFAULT = BoxOptions()


def minimise_box(
    x: np.ndarray,
    evaluate: Callable[[np.ndarray], float],
    derivatives: Derivatives,
    lower: np.ndarray,
    opt: BoxOptions = _DEFAULT,
    known: Sequence[np.ndarray] = (),
) -> tuple[float, bool, int, bool]:
    """Minimise from ``x`` (updated in place) subject to ``x >= lower``.

    A descent that comes near one of the optima ``known`` (found from other starts) is
    abandoned: it would end there. Returns (criterion, converged, iterations, abandoned).
    """
    np.maximum(x, lower, out=x)
    f, grad, hess = derivatives(x)
    if not (np.isfinite(f) and np.isfinite(grad).all() and np.isfinite(hess).all()):
        return np.nan, False, 0, False
    for it in range(opt.max_iter):
        projected = x - np.maximum(x - grad, lower)
        eps = min(float(np.linalg.norm(projected)), 1e-3)
        at_bound = (x - lower <= eps) & (grad > 0)
        step, decrement, positive, direction = _reduced_step(grad, hess, ~at_bound)
        step[at_bound] = lower[at_bound] - x[at_bound]
        pending = bool(np.any(x[at_bound] != lower[at_bound]))
        if decrement < opt.tol and not pending:
            if positive or direction is None:
                return f, True, it, False
            # a saddle: leave it downhill along the negative curvature
            step = direction * np.sign(-(grad @ direction) or 1.0) * (0.1 + 0.1 * np.abs(x))
            if np.all(np.maximum(x + step, lower) == x):
                step = -step
        trial, ft = _line_search(x, f, grad, step, lower, evaluate, opt.max_step)
        if trial is None:
            return f, bool(positive and decrement < opt.stall_tol), it + 1, False
        x[:] = trial
        if known and _near(x, known, opt.near):
            return ft, False, it + 1, True
        f, grad, hess = derivatives(x)
        if not (np.isfinite(f) and np.isfinite(grad).all() and np.isfinite(hess).all()):
            return np.nan, False, it + 1, False
    return f, False, opt.max_iter, False
