"""Projected Newton minimisation of each gene's deviance over ``gamma >= 0``.

Bertsekas' projected Newton method (1982), compiled and run gene by gene
(the loop over a batch releases the GIL, so threads fit batches in parallel):

- variables near the bound with a positive gradient (the epsilon-active set:
  within the projected gradient's norm, and ``eps_active`` times their log
  threshold, of 0) take a diagonally scaled gradient step, cut at the bound; a
  Newton step is taken in the others, with the Hessian made positive definite by
  taking absolute eigenvalues where it is not;
- the step is taken in ``log gamma`` where ``gamma`` exceeds a threshold and in
  ``gamma`` below it. Variance ratios enter the likelihood through terms like
  ``log(1 + gamma n)``, close to quadratic in ``log gamma`` for ``gamma n >> 1``
  but linear in ``gamma`` near 0, where the bound must be reachable;
- an Armijo backtracking search runs along the projection arc, with each step
  multiplying a parameter by at most ``max_growth``.

Convergence: the Newton decrement ``g' H^-1 g`` (twice the predicted remaining
decrease) of the free variables is below ``tol`` with a positive definite
reduced Hessian; or a full, unprojected Newton step was taken from a point whose
decrement was below ``sqrt(tol)`` (quadratic convergence leaves a decrement of
order ``tol``); or no step decreases the objective any more while the decrement
is below ``stall_tol`` (the objective's rounding noise, which grows with the
number of observations, hides smaller decreases). A converged variance on the
boundary is exactly 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba as nb
import numpy as np

from ._dense_kernel import derivatives, factorise, fixed_effects, workspace

__all__ = ["NewtonOptions", "minimise_batch"]

# Shortest step fraction tried by the line search.
_MIN_STEP = 1e-10


class NewtonOptions(NamedTuple):
    """Settings of the projected Newton method.

    Attributes
    ----------
    threshold
        Per variance ratio: above it the step is taken in ``log gamma``.
    tol
        Convergence on the Newton decrement.
    stall_tol
        Convergence when no step decreases the objective any more.
    max_iter
        Iteration limit per gene.
    max_growth
        Largest factor by which a step may multiply a parameter (plus 1 from 0).
    x_max
        Upper limit of every variance ratio.
    eps_active
        Epsilon-active set width, as a fraction of ``threshold``.
    """

    threshold: np.ndarray
    tol: float = 1e-10
    stall_tol: float = 1e-6
    max_iter: int = 100
    max_growth: float = 10.0
    x_max: float = 1e12
    eps_active: float = 1e-2


@nb.njit(cache=True, nogil=True)
def _newton_step(x, g, H, logc, bound):
    """Newton step in mixed coordinates; returns step, decrement, positive."""
    k = x.shape[0]
    Ht = np.empty((k, k))
    gt = np.empty(k)
    for i in range(k):
        ji = x[i] if logc[i] else 1.0
        gt[i] = 0.0 if bound[i] else ji * g[i]
        for j in range(k):
            jj = x[j] if logc[j] else 1.0
            Ht[i, j] = 0.0 if (bound[i] or bound[j]) else ji * H[i, j] * jj
        if bound[i]:
            Ht[i, i] = 1.0
        elif logc[i]:
            Ht[i, i] += x[i] * g[i]
    w, V = np.linalg.eigh(Ht)
    scale = np.max(np.abs(w))
    positive = True
    for i in range(k):
        if not w[i] > 1e-12 * scale:
            positive = False
        w[i] = max(abs(w[i]), 1e-12 * scale + 1e-300)
    step = np.zeros(k)
    for m in range(k):  # step = -V diag(1/w) V' gt
        coef = 0.0
        for i in range(k):
            coef += V[i, m] * gt[i]
        coef /= w[m]
        for i in range(k):
            step[i] -= V[i, m] * coef
    decrement = 0.0
    for i in range(k):
        decrement -= gt[i] * step[i]
    return step, decrement, positive


@nb.njit(cache=True, nogil=True)
def _value_and_derivatives(x, zy, xy, ss, dz, w, grad, hess):
    """Objective with gradient and Hessian; NaN if any of them is not finite."""
    f, r2 = factorise(x, zy, xy, ss, dz, w)
    if not np.isfinite(f):
        return f
    derivatives(x, zy, dz, w, r2, grad, hess)
    if not (np.all(np.isfinite(grad)) and np.all(np.isfinite(hess))):
        return np.nan
    return f


@nb.njit(cache=True, nogil=True)
def _minimise_gene(x, zy, xy, ss, dz, w, opt, grad, hess):
    """Minimise one gene's deviance from ``x`` (updated in place).

    Returns (deviance, converged, iterations)."""
    k = x.shape[0]
    f = _value_and_derivatives(x, zy, xy, ss, dz, w, grad, hess)
    if not np.isfinite(f):
        return f, False, 0
    logc = np.empty(k, dtype=np.bool_)
    bound = np.empty(k, dtype=np.bool_)
    trial = np.empty(k)
    threshold, tol, max_growth, x_max = opt.threshold, opt.tol, opt.max_growth, opt.x_max
    log_growth = math.log(max_growth)
    for it in range(opt.max_iter):
        eps = 0.0
        for j in range(k):
            eps += (x[j] - max(x[j] - grad[j], 0.0)) ** 2
        eps = math.sqrt(eps)
        pending_bound = False
        for j in range(k):
            logc[j] = x[j] > threshold[j]
            bound[j] = (
                (not logc[j]) and x[j] <= min(eps, opt.eps_active * threshold[j]) and grad[j] > 0.0
            )
            pending_bound = pending_bound or (bound[j] and x[j] > 0.0)
        step, decrement, positive = _newton_step(x, grad, hess, logc, bound)
        if positive and decrement < tol and not pending_bound:
            return f, True, it
        # cap the change of each parameter, keeping the direction
        t = 1.0
        for j in range(k):
            if bound[j]:  # a diagonally scaled gradient step, cut at the bound
                step[j] = -grad[j] / hess[j, j] if hess[j, j] > 0.0 else -x[j]
            if logc[j]:
                t = min(t, log_growth / max(abs(step[j]), 1e-300))
            elif step[j] > 0.0:
                t = min(t, (max_growth * x[j] + 1.0) / step[j])
        accepted = False
        ft = np.nan
        while t > _MIN_STEP:
            predicted = 0.0
            for j in range(k):
                if logc[j]:
                    trial[j] = x[j] * math.exp(t * step[j])
                else:
                    trial[j] = min(max(x[j] + t * step[j], 0.0), x_max)
                predicted += grad[j] * (trial[j] - x[j])
            ft, _ = factorise(trial, zy, xy, ss, dz, w)
            # a strict decrease: at the optimum rounding may leave f unchanged
            if np.isfinite(ft) and ft < f and ft <= f + 1e-4 * predicted:
                accepted = True
                break
            t *= 0.5
        if not accepted:
            # No decrease left that rounding lets the objective show (with n
            # observations the deviance carries ~n * eps of noise): converged if
            # what the Newton model still promises is below that noise too.
            return f, positive and decrement < opt.stall_tol, it + 1
        final = t == 1.0 and positive and decrement < math.sqrt(tol) and not pending_bound
        for j in range(k):
            if trial[j] == 0.0 and x[j] > 0.0:
                final = False  # the step was projected onto the bound
            x[j] = trial[j]
        f = ft
        if final:
            return f, True, it + 1
        f = _value_and_derivatives(x, zy, xy, ss, dz, w, grad, hess)
        if not np.isfinite(f):
            return f, False, it + 1
    return f, False, opt.max_iter


@nb.njit(cache=True, nogil=True)
def minimise_batch(X0, ZtY, XtY, ss, dz, opt):
    """Minimise the deviance of every gene of a batch from its row of ``X0``,
    with the settings ``opt`` (a :class:`NewtonOptions`).

    Returns the minimisers ``(G, k)``, deviance, residual sum of squares ``r2``
    and fixed effects at them, convergence flags and iteration counts.
    """
    G, k = X0.shape
    w = workspace(dz, k)
    X = X0.copy()
    dev = np.full(G, np.nan)
    r2 = np.full(G, np.nan)
    beta = np.full((G, dz.p), np.nan)
    converged = np.zeros(G, dtype=np.bool_)
    n_iter = np.zeros(G, dtype=np.int64)
    grad = np.empty(k)
    hess = np.empty((k, k))
    for g in range(G):
        _, converged[g], n_iter[g] = _minimise_gene(
            X[g], ZtY[g], XtY[g], ss[g], dz, w, opt, grad, hess
        )
        dev[g], r2[g] = factorise(X[g], ZtY[g], XtY[g], ss[g], dz, w)
        if np.isfinite(dev[g]):
            fixed_effects(dz, w, beta[g])
    return X, dev, r2, beta, converged, n_iter
