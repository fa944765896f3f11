"""Compiled quasi-Newton descent of the Laplace criterion, within box bounds.

A limited-memory BFGS search (Nocedal & Wright 2006, algorithm 7.4 and 7.5), projected
onto the bounds: the coordinates at a bound whose gradient points out of the box are
held, the two-loop recursion gives the direction in the others, and each trial point is
clipped into the box. Steps backtrack (Armijo's condition, quadratic interpolation). It
stops where scipy's L-BFGS-B with the same tolerances stops: a projected gradient below
``gtol``, or a relative decrease of ``D`` below ``ftol``.

Why not scipy's L-BFGS-B: its Python wrapper costs about 100 microseconds per iteration,
as much as the criterion itself on a pseudobulk gene; compiled with the criterion, the
search costs only its evaluations. Bounds are active on few genes (``log phi`` at the
Poisson limit), where projection does what L-BFGS-B's generalised Cauchy point does.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ._laplace_kernel import NB2, laplace

__all__ = ["CONVERGED", "KNOWN", "STALLED", "descend"]

# How a descent ended.
CONVERGED = 0  # a tolerance met
KNOWN = 1  # near the known optimum or in its basin, no lower: that optimum is returned
STALLED = 2  # no step lowered D, or the iterations ran out
_MEMORY = 20  # correction pairs kept (scipy's maxcor as the search used it)
_ARMIJO = 1e-4
_BACKTRACKS = 30
# The rise above a known optimum within which its quadratic model is trusted (_in_basin):
# below the 2.3 units between the two optima of a reference gene (tests/data/glmm, g19).
_BASIN = 1.0


@nb.njit(cache=True, nogil=True, inline="always")
def _criterion(problem, x, u, tol, max_iter):
    """``(D, grad)`` of :func:`._laplace_kernel.laplace` at ``x``; ``D = inf`` without modes."""
    family, y, X, offset, layout, term, prior, aux, counts, k = problem
    p = X.shape[1]
    log_phi = x[k + p] if family == NB2 else 0.0
    theta = np.ascontiguousarray(x[:k])
    beta = np.ascontiguousarray(x[k : k + p])
    D, g, _ = laplace(
        family, y, X, offset, layout, term, prior, aux, counts, theta, beta, log_phi, u,
        tol, max_iter, np.bool_(True),
    )  # fmt: skip
    if not math.isfinite(D):
        return math.inf, np.zeros(len(x))
    return D, g


@nb.njit(cache=True, nogil=True)
def _rescale(u, term, x, trial, out):
    """Modes for ``trial`` from those at ``x``: each level's effect ``theta u`` kept.

    The effects, not ``u``, are what the counts pin down: the modes' Newton steps start
    nearer their solution (where a ``theta`` changes more than twofold, ``u`` is kept).
    """
    for c in range(len(u)):
        a, b = x[term[c]], trial[term[c]]
        ratio = a / b if b != 0.0 else 0.0
        out[c] = u[c] * ratio if 0.5 < abs(ratio) < 2.0 else u[c]


@nb.njit(cache=True, nogil=True)
def _near(x, k, known, near):
    """Whether ``x`` is within ``near`` of ``known`` in every coordinate (``theta`` by size)."""
    for j in range(len(x)):
        v = abs(x[j]) if j < k else x[j]
        if abs(v - known[j]) >= near:
            return False
    return True


@nb.njit(cache=True, nogil=True)
def _in_basin(x, D, g, k, known):
    """Whether ``D`` and its gradient at ``x`` are those of the known optimum's quadratic model.

    The model ``D* + g*'dx + dx'H*dx / 2`` (``theta`` by its size: ``D`` is even in each)
    must predict ``D`` to 10% of the rise and the gradient to 20% of its length, within
    :data:`_BASIN` of the optimum: the descent from ``x`` would end at that optimum.
    """
    x_k, D_k, g_k, H_k = known
    if H_k.shape[0] == 0:
        return False
    dx = x - x_k
    gs = g.copy()
    for j in range(k):  # theta by its size
        if x[j] < 0:
            dx[j] = -x[j] - x_k[j]
            gs[j] = -g[j]
    model_g = g_k + H_k @ dx
    rise = (g_k * dx).sum() + 0.5 * (dx * (H_k @ dx)).sum()
    if not 0.0 < rise <= _BASIN or abs(D - D_k - rise) > 0.1 * rise:
        return False
    return math.sqrt(((gs - model_g) ** 2).sum()) <= 0.2 * math.sqrt((gs * gs).sum())


@nb.njit(cache=True, nogil=True)
def _direction(g, free, S, Y, rho, n_pairs, newest):
    """``-B^-1 g`` on the free coordinates (two-loop recursion), 0 on the held ones."""
    m = S.shape[0]
    free = free.astype(np.float64)
    q = g * free
    alpha = np.zeros(m)
    for back in range(n_pairs):
        i = (newest - back) % m
        alpha[i] = rho[i] * (S[i] * q * free).sum()
        q -= alpha[i] * Y[i] * free
    if n_pairs > 0:
        i = newest % m
        yy = (Y[i] * Y[i] * free).sum()
        sy = (S[i] * Y[i] * free).sum()
        if yy > 0 and sy > 0:
            q *= sy / yy
    for fwd in range(n_pairs):
        i = (newest - n_pairs + 1 + fwd) % m
        b = rho[i] * (Y[i] * q * free).sum()
        q += (alpha[i] - b) * S[i] * free
    return -q


@nb.njit(cache=True, nogil=True)
def _free(x, g, lo, hi):
    """The coordinates a descent may move: not at a bound that the gradient pushes against."""
    return ~(((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0)))


@nb.njit(cache=True, nogil=True)
def descend(problem, x0, u, lo, hi, known, near, tol, max_iter, ftol, gtol, max_steps):
    """Minimise ``D`` from ``x0`` within ``[lo, hi]``; ``u`` warm-starts the modes, updated.

    ``problem``: ``(family, y, X, offset, layout, term, prior, aux, counts, k)``, the kernel's
    arguments. ``known``: a polished optimum ``(x, D, gradient, Hessian)`` (``x`` empty:
    none). A descent ends there when an evaluation, no lower than it, comes within
    ``near`` of it in every coordinate, or into its basin (:func:`_in_basin`).
    ``tol``, ``max_iter``: the modes' tolerance and iterations. Returns ``(x, D, status,
    evaluations)`` (:data:`CONVERGED`, :data:`KNOWN`, :data:`STALLED`), ``u`` the modes
    at ``x``.
    """
    k = problem[9]
    m = len(x0)
    x = np.minimum(np.maximum(x0, lo), hi)
    D, g = _criterion(problem, x, u, tol, max_iter)
    n_eval = 1
    S = np.zeros((_MEMORY, m))
    Y = np.zeros((_MEMORY, m))
    rho = np.zeros(_MEMORY)
    # (typed values, not literals: a literal argument compiles a callee once more)
    n_pairs = np.int64(0)
    newest = np.int64(-1)
    u_kept = u.copy()
    has_known = len(known[0]) > 0
    if not math.isfinite(D):
        return x, D, STALLED, n_eval
    for _ in range(max_steps):
        free = _free(x, g, lo, hi)
        if np.abs(np.where(free, g, 0.0)).max() < gtol:
            return x, D, CONVERGED, n_eval
        d = _direction(g, free, S, Y, rho, n_pairs, newest)
        slope = (g * d).sum()
        if not slope < 0:  # the memory misleads: start it again from steepest descent
            n_pairs = np.int64(0)
            d = -np.where(free, g, 0.0)
            slope = (g * d).sum()
        t = 1.0 if n_pairs > 0 else min(1.0, 1.0 / np.abs(d).max())
        u_kept[:] = u
        accepted = False
        for _ in range(_BACKTRACKS):
            trial = np.minimum(np.maximum(x + t * d, lo), hi)
            _rescale(u_kept, problem[5], x, trial, u)
            Dt, gt = _criterion(problem, trial, u, tol, max_iter)
            n_eval += 1
            if has_known and Dt >= known[1]:
                if _near(trial, k, known[0], near) or _in_basin(trial, Dt, gt, k, known):
                    u[:] = u_kept
                    return known[0].copy(), known[1], KNOWN, n_eval
            decrease = (g * (trial - x)).sum()
            if math.isfinite(Dt) and Dt <= D + _ARMIJO * decrease:
                accepted = True
                break
            # the minimum of the quadratic through D, the slope and D_t, kept in [0.1, 0.5] t
            curvature = Dt - D - slope * t
            t_new = -slope * t * t / (2.0 * curvature) if math.isfinite(Dt) else 0.1 * t
            t = min(max(t_new, 0.1 * t), 0.5 * t)
        if not accepted:
            u[:] = u_kept
            return x, D, STALLED, n_eval
        s, yv = trial - x, gt - g
        sy = (s * yv).sum()
        if sy > 1e-10 * (yv * yv).sum():
            newest = (newest + 1) % _MEMORY
            S[newest], Y[newest], rho[newest] = s, yv, 1.0 / sy
            n_pairs = min(n_pairs + 1, _MEMORY)
        previous = D
        x, D, g = trial, Dt, gt
        if previous - D <= ftol * max(abs(previous), abs(D), 1.0):
            return x, D, CONVERGED, n_eval
    return x, D, STALLED, n_eval
