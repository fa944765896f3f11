"""Projected Newton minimisation over ``x >= 0`` for a batch of independent problems.

Each problem (gene) has its own few parameters (variance ratios). All problems
advance together, one vectorised derivative evaluation per iteration, and drop
out of the batch once converged. The method is Bertsekas' projected Newton
(1982): variables sitting on the bound with a positive gradient are held there,
a Newton step is taken in the others (the Hessian made positive definite by
taking absolute eigenvalues where it is not), and an Armijo backtracking search
runs along the projection arc. Converged iterates satisfy the bound
constraints' first-order conditions exactly: a variance on the boundary is 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["NewtonResult", "projected_newton"]

# Callables take (x, idx) where idx indexes the problems whose rows x holds.
ValueFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
DerivFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass
class NewtonResult:
    """Outcome per problem.

    Attributes
    ----------
    x
        Minimisers, ``(G, k)``.
    fun
        Objective at ``x``.
    converged
        The Newton decrement fell below tolerance with a positive definite
        reduced Hessian.
    n_iter
        Newton iterations taken.
    """

    x: np.ndarray
    fun: np.ndarray
    converged: np.ndarray
    n_iter: np.ndarray


def projected_newton(
    value: ValueFn,
    derivatives: DerivFn,
    x0: np.ndarray,
    *,
    tol: float = 1e-10,
    max_iter: int = 100,
    max_growth: float = 10.0,
    x_max: float = 1e12,
    eps_active: float = 1e-3,
) -> NewtonResult:
    """Minimise a batch of bound-constrained problems ``min f_g(x)``, ``x >= 0``.

    Parameters
    ----------
    value
        ``value(x, idx)`` -> objective of problems ``idx`` at rows ``x``;
        NaN where the objective cannot be evaluated.
    derivatives
        ``derivatives(x, idx)`` -> objective, gradient ``(n, k)`` and Hessian
        ``(n, k, k)``.
    x0
        Starting points, ``(G, k)``, non-negative.
    tol
        Convergence when the Newton decrement ``g' H^-1 g`` (twice the predicted
        decrease of the objective) in the free variables is below ``tol``.
    max_iter
        Iteration limit per problem.
    max_growth
        A step may multiply a parameter by at most this factor (plus 1): the
        objective is far from quadratic for large variance ratios.
    x_max
        Upper limit on every parameter; reaching it means the objective has no
        finite minimiser.
    eps_active
        Largest distance from the bound at which a variable with a positive
        gradient is moved onto the bound (Bertsekas' epsilon-active set; the
        distance shrinks with the projected gradient).

    Returns
    -------
    A :class:`NewtonResult`.
    """
    x = np.array(x0, dtype=float)
    G, k = x.shape
    fun = np.full(G, np.nan)
    converged = np.zeros(G, dtype=bool)
    n_iter = np.zeros(G, dtype=int)

    idx = np.arange(G)
    f, g, H = derivatives(x, idx)
    fun[:] = f
    alive = np.isfinite(f) & np.isfinite(g).all(axis=1) & np.isfinite(H).all(axis=(1, 2))
    idx, f, g, H = idx[alive], f[alive], g[alive], H[alive]
    eye = np.eye(k)

    for _ in range(max_iter):
        if idx.size == 0:
            break
        xa = x[idx]
        # epsilon-active set: near the bound with a positive gradient. These
        # variables step straight to the bound; the others take a Newton step.
        eps = np.minimum(eps_active, np.linalg.norm(xa - np.maximum(xa - g, 0.0), axis=1))
        bound = (xa <= eps[:, None]) & (g > 0.0)
        free = ~bound
        Hf = H * (free[:, :, None] & free[:, None, :]) + eye * bound[:, :, None]
        gf = np.where(free, g, 0.0)
        w, V = np.linalg.eigh(Hf)
        scale = np.abs(w).max(axis=1, keepdims=True)
        positive = (w > 1e-12 * scale).all(axis=1)
        w = np.maximum(np.abs(w), 1e-12 * scale + 1e-300)
        step = -np.einsum("gij,gj->gi", V, np.einsum("gji,gj->gi", V, gf) / w)
        decrement = -(gf * step).sum(axis=1)
        step = np.where(bound, -xa, step)

        done = positive & (decrement < tol) & ~(bound & (xa > 0)).any(axis=1)
        converged[idx[done]] = True

        # Cap growth of each parameter, keeping the direction.
        limit = np.where(step > 0, max_growth * xa + 1.0, np.inf) / np.where(step > 0, step, 1.0)
        t = np.minimum(1.0, limit.min(axis=1))
        todo = ~done
        accepted = np.zeros(idx.size, dtype=bool)
        x_new = xa.copy()
        f_new = f.copy()
        for _ls in range(40):
            pending = todo & ~accepted
            if not pending.any():
                break
            trial = np.clip(xa[pending] + t[pending, None] * step[pending], 0.0, x_max)
            ft = value(trial, idx[pending])
            predicted = (g[pending] * (trial - xa[pending])).sum(axis=1)
            ok = np.isfinite(ft) & (ft <= f[pending] + 1e-4 * predicted)
            where = np.flatnonzero(pending)
            x_new[where[ok]] = trial[ok]
            f_new[where[ok]] = ft[ok]
            accepted[where[ok]] = True
            t[where[~ok]] *= 0.5
        # A search that finds no decrease ends the problem: at a minimum the
        # remaining decrease is below what rounding lets the objective show.
        stalled = todo & ~accepted
        converged[idx[stalled]] = positive[stalled] & (decrement[stalled] < 1e3 * tol)

        moved = np.flatnonzero(accepted)
        n_iter[idx] += 1
        x[idx[moved]] = x_new[moved]
        fun[idx[moved]] = f_new[moved]

        idx = idx[moved]
        if idx.size:
            f, g, H = derivatives(x[idx], idx)
            fun[idx] = f
            ok = np.isfinite(f) & np.isfinite(g).all(axis=1) & np.isfinite(H).all(axis=(1, 2))
            idx, f, g, H = idx[ok], f[ok], g[ok], H[ok]
    return NewtonResult(x=x, fun=fun, converged=converged, n_iter=n_iter)
