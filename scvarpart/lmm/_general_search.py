"""Compiled projected Newton method and global search of the general engine.

The method of :mod:`.projected` (Bertsekas 1982), compiled over the kernel of
:mod:`._general_kernel`, so that a batch of genes is one call without the GIL. The
Newton loop and the reduced step keep their complexity (``noqa: C901``), as the
kernels do.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba as nb
import numpy as np

from ._general_kernel import (
    DERIVATIVES,
    ESTIMATES,
    derivatives,
    evaluate_gene,
    factorise,
    fixed_effects,
    fixed_factor_gene,
    held_at,
    workspace,
)
from .newton import HELD_TOL, _symmetric_eigen
from .search import face_buffers, face_known, swap_starts_among, zeroed

__all__ = ["FACTORS", "MINIMISE", "SEARCH", "Batch", "SearchOptions", "minimise_gene", "run_batch"]


class SearchOptions(NamedTuple):
    """Settings of the compiled search (as :class:`.projected.BoxOptions`)."""

    lower: np.ndarray  # (k,) lower bounds in theta
    below: np.ndarray  # (k,) parameters below a diagonal one in its column of T
    even: np.ndarray  # (k,) diagonal parameters alone in their column (criterion even)
    threshold: np.ndarray  # (k,) theta above which a diagonal parameter steps in log
    scale: np.ndarray  # (k,) theta at which its coefficient's variance starts to show
    nxt: np.ndarray  # (k,) of a diagonal parameter: the next diagonal one of its T (-1: none)
    tol: float = 1e-10
    stall_tol: float = 1e-6
    max_iter: int = 200
    max_step: float = 4.0  # longest step of a linear parameter, relative to 1 + |theta|
    max_growth: float = 10.0  # largest factor of a step in log or gamma
    # a descent within a factor e^(4 near) = 1.5 of an optimum found before in every
    # diagonal parameter above its threshold (1.2 before; the reasons of newton's
    # _NEAR_LOG) rejoins it; below, within near (scale + |theta|)
    near: float = 0.1


# How each parameter steps: theta itself, gamma = theta^2 (diagonal parameters alone in
# their column, near 0), or log(theta) (diagonal parameters above their threshold).
LINEAR, SQUARE, LOG = 0, 1, 2

# Curvature, relative to the largest, below which a direction counts as flat when no
# step decreases the criterion any more: rank-deficient covariances leave directions
# along which T changes but T T' does not (a flat criterion, singular Hessian).
_FLAT = 1e-6


class Scratch(NamedTuple):
    """Scratch arrays of one descent (``k`` parameters), allocated once per batch."""

    grad: np.ndarray  # in the mixed coordinates
    hess: np.ndarray
    step: np.ndarray
    trial: np.ndarray
    direction: np.ndarray
    at_bound: np.ndarray
    mode: np.ndarray
    square: np.ndarray
    y: np.ndarray  # the point in the mixed coordinates
    ylow: np.ndarray  # their lower bounds
    Hr: np.ndarray  # (k * k,): n x n C-contiguous views for any n (one compiled eigen)
    Vr: np.ndarray
    idx: np.ndarray
    coarse: np.ndarray  # (2,) see _reduced_step


@nb.njit(cache=True, nogil=True)
def scratch(k):
    """A :class:`Scratch` for ``k`` parameters."""
    return Scratch(
        np.empty(k),
        np.empty((k, k)),
        np.empty(k),
        np.empty(k),
        np.empty(k),
        np.empty(k, dtype=np.bool_),
        np.empty(k, dtype=np.int64),
        np.empty(k, dtype=np.bool_),
        np.empty(k),
        np.empty(k),
        np.empty(k * k),
        np.empty(k * k),
        np.empty(k, dtype=np.int64),
        np.zeros(2),
    )


@nb.njit(cache=True, nogil=True)
def _choose_modes(x, sc, opt):
    """The coordinates of each parameter at ``x`` (see :data:`LINEAR`)."""
    for j in range(x.shape[0]):
        if x[j] > opt.threshold[j]:
            mode = LOG
        elif opt.even[j]:
            mode = SQUARE
        else:
            mode = LINEAR
        sc.mode[j] = mode
        sc.square[j] = mode == SQUARE
        if mode == LOG:
            sc.y[j] = math.log(x[j])
            sc.ylow[j] = -np.inf
        elif mode == SQUARE:
            sc.y[j] = x[j] * x[j]
            sc.ylow[j] = 0.0
        else:
            sc.y[j] = x[j]
            sc.ylow[j] = opt.lower[j]


@nb.njit(cache=True, nogil=True)
def _to_log(x, sc):
    """Gradient and Hessian of the parameters stepping in ``log theta`` (chain rule)."""
    k = x.shape[0]
    for j in range(k):
        if sc.mode[j] != LOG:
            continue
        for m in range(k):
            sc.hess[j, m] *= x[j]
            sc.hess[m, j] *= x[j]
    for j in range(k):
        if sc.mode[j] == LOG:
            sc.grad[j] *= x[j]
            sc.hess[j, j] += sc.grad[j]


@nb.njit(cache=True, nogil=True)
def _reduced_step(sc):  # noqa: C901
    """Newton step of the free parameters (``~at_bound``) with absolute eigenvalues.

    Fills ``step`` (0 for the others) and, where the reduced Hessian has a negative
    eigenvalue, ``direction`` (its eigenvector). Returns (decrement, positive definite,
    negative direction found).
    """
    k = sc.grad.shape[0]
    n = 0
    for j in range(k):
        sc.step[j] = 0.0
        if not sc.at_bound[j]:
            sc.idx[n] = j
            n += 1
    if n == 0:
        return 0.0, True, False
    Hr = sc.Hr[: n * n].reshape((n, n))
    Vr = sc.Vr[: n * n].reshape((n, n))
    for a in range(n):
        for b in range(n):
            Hr[a, b] = sc.hess[sc.idx[a], sc.idx[b]]
    _symmetric_eigen(Hr, Vr)
    scale = 1e-300
    wmin = np.inf
    imin = 0
    for a in range(n):
        scale = max(scale, abs(Hr[a, a]))
        if Hr[a, a] < wmin:
            wmin = Hr[a, a]
            imin = a
    positive = wmin > 1e-10 * scale
    decrement = 0.0
    coarse = 0.0
    for m in range(n):
        wm = max(abs(Hr[m, m]), 1e-10 * scale)
        gm = 0.0
        for a in range(n):
            gm += Vr[a, m] * sc.grad[sc.idx[a]]
        coef = gm / wm
        decrement += coef * gm
        coarse += gm * gm / max(wm, _FLAT * scale)
        for a in range(n):
            sc.step[sc.idx[a]] -= Vr[a, m] * coef
    negative = wmin < -1e-10 * scale
    if negative:
        sc.direction[:] = 0.0
        for a in range(n):
            sc.direction[sc.idx[a]] = Vr[a, imin]
    # where the Hessian is (nearly) singular, the decrement of directions of curvature
    # below _FLAT of the largest, and whether none curves down more than that
    sc.coarse[0] = coarse
    sc.coarse[1] = 1.0 if wmin > -_FLAT * scale else 0.0
    return decrement, positive, negative


@nb.njit(cache=True, nogil=True)
def _near(x, y, opt):
    """Whether ``x`` is near ``y`` in every parameter.

    Relatively, in log, for diagonal entries above their threshold (those that step in
    log); otherwise within ``near`` times the parameter's scale plus its size.
    """
    for j in range(x.shape[0]):
        a, b, t = x[j], y[j], opt.threshold[j]
        if a > t and b > t:
            if abs(math.log(a / b)) > 4.0 * opt.near:
                return False
        elif abs(a - b) > opt.near * (opt.scale[j] + abs(b)):
            return False
    return True


@nb.njit(cache=True, nogil=True, inline="always")
def _value_derivatives(x, zy, xy, ss, dz, w, sc, opt):
    """Criterion with gradient and Hessian; NaN if any of them is not finite."""
    f, r2 = factorise(x, zy, xy, ss, dz, w)
    if not np.isfinite(f):
        return np.nan
    return _derivatives_at(x, dz, w, f, r2, sc, opt)


@nb.njit(cache=True, nogil=True, inline="always")
def _derivatives_at(x, dz, w, f, r2, sc, opt):
    """Derivatives in the mixed coordinates at ``x`` (factorised in ``w``)."""
    _choose_modes(x, sc, opt)
    derivatives(x, dz, w, r2, sc.grad, sc.hess, sc.square)
    _to_log(x, sc)
    if not (np.all(np.isfinite(sc.grad)) and np.all(np.isfinite(sc.hess))):
        return np.nan
    return f


@nb.njit(cache=True, nogil=True)
def _active_set(sc, opt, held):
    """The epsilon-active set into ``at_bound``; returns whether one is not yet at its bound.

    ``held``: a parameter held at its bound whatever its gradient, or -1 for none.
    """
    k = sc.y.shape[0]
    eps = 0.0
    for j in range(k):
        if j != held:
            eps += (sc.y[j] - max(sc.y[j] - sc.grad[j], sc.ylow[j])) ** 2
    eps = min(math.sqrt(eps), 1e-3)
    pending = False
    for j in range(k):
        width = eps
        if sc.mode[j] == SQUARE:  # gamma is small: within a fraction of its scale
            width = min(eps, 1e-2 * opt.scale[j] ** 2)
        sc.at_bound[j] = j == held or (sc.y[j] - sc.ylow[j] <= width and sc.grad[j] > 0.0)
        if sc.at_bound[j] and sc.y[j] != sc.ylow[j]:
            pending = True
    return pending


@nb.njit(cache=True, nogil=True)
def _flip_columns(x, sc, opt):
    """Turn a column of ``T`` whose diagonal is held at 0 the other way round.

    ``T`` and ``T D`` (``D`` negating a column) give the same covariance ``T T'``: with the
    diagonal entry at 0, its column's sign is free, and the bound is an artefact of the
    parametrisation. Where the gradient pushes the diagonal below 0 but the column has
    other entries, the criterion falls with the diagonal entry rising in the negated
    column: negate it (and the gradient and Hessian with it), so that the descent goes
    on there instead of stopping at a point that is no optimum of the covariance.
    """
    k = x.shape[0]
    for j in range(k):
        nb_ = opt.below[j]
        if nb_ <= 0 or x[j] != opt.lower[j] or not sc.grad[j] > 0.0:
            continue
        nonzero = False
        for i in range(j + 1, j + 1 + nb_):
            nonzero = nonzero or x[i] != 0.0
        if not nonzero:
            continue
        for i in range(j, j + 1 + nb_):
            x[i] = -x[i]
            sc.y[i] = -sc.y[i]
            sc.grad[i] = -sc.grad[i]
            for m in range(k):
                sc.hess[i, m] = -sc.hess[i, m]
            for m in range(k):
                sc.hess[m, i] = -sc.hess[m, i]
        x[j] = opt.lower[j]  # -0.0 back to 0.0
        sc.y[j] = opt.lower[j]


@nb.njit(cache=True, nogil=True)
def _rotate_columns(x, opt):
    """Rotate two columns of ``T`` where ``T[b, b]`` is 0 so that ``T[b+1, b+1]`` is 0.

    Returns whether it rotated any.
    With row ``b`` of ``T`` zero, ``T Q`` (``Q`` a rotation of columns ``b`` and ``b+1``)
    is lower triangular too, with the same ``T T'``. In the rotated form the criterion's
    first derivative in ``T[b, b]`` shows whether tilting the covariance's direction
    lowers it (``2 T[b+1, b] dC/dSigma[b, b+1]``); with ``T[b+1, b] = 0`` it is 0 whatever
    that derivative, and a descent stalls at a point that is no optimum.
    """
    rotated = False
    for j in range(x.shape[0]):
        n = opt.nxt[j]
        if n < 0 or x[j] != 0.0 or x[n] == 0.0:
            continue
        below = opt.below[j]  # T[b+1:, b] are x[j+1 : j+1+below]; T[b+1:, b+1]: x[n:]
        u0, v0 = x[j + 1], x[n]
        rho = math.hypot(u0, v0)
        c, s = u0 / rho, v0 / rho
        for i in range(below):  # row b+1+i: (T[., b], T[., b+1]) = (x[j+1+i], x[n+i])
            u, v = x[j + 1 + i], x[n + i]
            x[j + 1 + i] = c * u + s * v
            x[n + i] = -s * u + c * v
        x[n] = 0.0  # exactly
        rotated = True
    return rotated


@nb.njit(cache=True, nogil=True)
def _saddle_step(sc):
    """A step downhill along the negative curvature (leaving a saddle)."""
    k = sc.y.shape[0]
    slope = 0.0
    for j in range(k):
        slope += sc.grad[j] * sc.direction[j]
    sign = -1.0 if slope > 0.0 else 1.0
    for j in range(k):
        sc.step[j] = sign * sc.direction[j] * (0.1 + 0.1 * abs(sc.y[j]))
    moves = False
    for j in range(k):
        if max(sc.y[j] + sc.step[j], sc.ylow[j]) != sc.y[j]:
            moves = True
    if not moves:
        for j in range(k):
            sc.step[j] = -sc.step[j]


@nb.njit(cache=True, nogil=True)
def _step_length(sc, opt):
    """The longest step fraction (at most 1) within the growth limits of every parameter."""
    t = 1.0
    log_growth = math.log(opt.max_growth)
    for j in range(sc.y.shape[0]):
        s = abs(sc.step[j])
        if s == 0.0:
            continue
        if sc.mode[j] == LOG:
            t = min(t, log_growth / s)
        elif sc.mode[j] == SQUARE:
            if sc.step[j] > 0.0:
                t = min(t, (opt.max_growth * sc.y[j] + opt.scale[j] ** 2) / s)
        else:
            t = min(t, opt.max_step * (1.0 + abs(sc.y[j])) / s)
    return t


@nb.njit(cache=True, nogil=True)
def _trial_point(x, t, sc):
    """The point a fraction ``t`` along the projection arc into ``trial``.

    Returns the decrease the gradient predicts for it and whether a parameter was cut
    at its bound.
    """
    predicted = 0.0
    cut = False
    for j in range(x.shape[0]):
        target = sc.y[j] + t * sc.step[j]
        if sc.mode[j] == LOG:
            sc.trial[j] = x[j] * math.exp(t * sc.step[j])
            predicted += sc.grad[j] * t * sc.step[j]
            continue
        yt = max(target, sc.ylow[j])
        cut = cut or (yt > target and sc.y[j] > sc.ylow[j])
        sc.trial[j] = math.sqrt(yt) if sc.mode[j] == SQUARE else yt
        predicted += sc.grad[j] * (yt - sc.y[j])
    return predicted, cut


@nb.njit(cache=True, nogil=True, inline="always")
def _line_search(x, f, zy, xy, ss, dz, w, sc, opt):
    """Armijo backtracking along the projection arc.

    Returns (value, r2, step fraction, cut at a bound) at ``trial``; NaN if no point.
    """
    t = _step_length(sc, opt)
    while t > 1e-10:
        predicted, cut = _trial_point(x, t, sc)
        ft, r2t = factorise(sc.trial, zy, xy, ss, dz, w)
        if np.isfinite(ft) and ft < f and ft <= f + 1e-4 * predicted:
            return ft, r2t, t, cut
        t *= 0.5
    return np.nan, np.nan, 0.0, False


@nb.njit(cache=True, nogil=True)
def minimise_gene(x, zy, xy, ss, dz, w, sc, opt, known, n_known, held):  # noqa: C901
    """Minimise one gene's criterion from ``x`` (updated in place) subject to the bounds.

    A descent that comes near one of ``known[:n_known]`` is abandoned. ``held``: a
    parameter held at its lower bound (where ``x`` has it), or -1 for none. Returns
    (criterion, converged, iterations, abandoned).
    """
    k = x.shape[0]
    for j in range(k):
        x[j] = max(x[j], opt.lower[j])
    f = _value_derivatives(x, zy, xy, ss, dz, w, sc, opt)
    if not np.isfinite(f):
        return np.nan, False, 0, False
    for it in range(opt.max_iter):
        if _rotate_columns(x, opt):
            f = _value_derivatives(x, zy, xy, ss, dz, w, sc, opt)
            if not np.isfinite(f):
                return np.nan, False, it, False
        _flip_columns(x, sc, opt)
        pending = _active_set(sc, opt, held)
        decrement, positive, negative = _reduced_step(sc)
        for j in range(k):
            if sc.at_bound[j]:
                sc.step[j] = sc.ylow[j] - sc.y[j]
        saddle = decrement < opt.tol and not pending
        if saddle:
            if positive or not negative:
                return f, True, it, False
            _saddle_step(sc)
        ft, r2t, t, cut = _line_search(x, f, zy, xy, ss, dz, w, sc, opt)
        if not np.isfinite(ft):
            # no decrease that rounding lets the criterion show: converged if what the
            # Newton model still promises is below that noise too (along a negative
            # curvature left without any decrease, the criterion is flat), or would be
            # but for directions of next to no curvature
            flat = sc.coarse[1] > 0.0 and sc.coarse[0] < opt.stall_tol
            done = (positive or saddle) and decrement < opt.stall_tol
            return f, done or flat, it + 1, False
        # a full Newton step from a point whose decrement was below sqrt(tol) leaves
        # a decrement of order tol: converged without another factorisation
        final = t == 1.0 and positive and decrement < math.sqrt(opt.tol)
        final = final and not (pending or cut)
        x[:] = sc.trial
        if final:
            return ft, True, it + 1, False
        for m in range(n_known):
            if _near(x, known[m], opt):
                return ft, False, it + 1, True
        f = _derivatives_at(x, dz, w, ft, r2t, sc, opt)
        if not np.isfinite(f):
            return np.nan, False, it + 1, False
    return f, False, opt.max_iter, False


@nb.njit(cache=True, nogil=True, inline="always")
def estimates_at(x, zy, xy, ss, dz, w, dev, r2, beta, g):
    """Criterion, ``r2`` and fixed effects of gene ``g`` at ``x`` (NaN where not finite)."""
    if not np.all(np.isfinite(x)):
        return
    if held_at(x, w.held):  # the descent ended on its last factorisation
        k = x.shape[0]
        dev[g], r2[g] = w.held[k], w.held[k + 1]
    else:
        dev[g], r2[g] = factorise(x, zy, xy, ss, dz, w)
    if np.isfinite(dev[g]):
        fixed_effects(dz, w, beta[g])


# Fraction of its scale below which a diagonal entry of a term with several
# coefficients counts as (nearly) rank-deficient.
_DEGENERATE = 0.1

# Relative improvement of the criterion below which a later descent does not replace an
# earlier one (which of two descents to one optimum ends lower is rounding).
TIE = 1e-10


@nb.njit(cache=True, nogil=True)
def _candidates(gene_starts, fixed_starts, opt, cand):
    """The gene's finite starts, then the shared ones, cut at the bounds, into ``cand``.

    Returns (all, the gene's own).
    """
    n = 0
    for s in range(gene_starts.shape[0]):
        if np.all(np.isfinite(gene_starts[s])):
            for j in range(cand.shape[1]):
                cand[n, j] = max(gene_starts[s, j], opt.lower[j])
            n += 1
    own = n
    for s in range(fixed_starts.shape[0]):
        cand[n] = fixed_starts[s]
        n += 1
    return n, own


@nb.njit(cache=True, nogil=True)
def _held_options(opt):
    """``opt`` for a held descent: the tolerance no finer than :data:`.newton.HELD_TOL`."""
    return SearchOptions(
        opt.lower,
        opt.below,
        opt.even,
        opt.threshold,
        opt.scale,
        opt.nxt,
        max(opt.tol, HELD_TOL),
        opt.stall_tol,
        opt.max_iter,
        opt.max_step,
        opt.max_growth,
        opt.near,
    )


@nb.njit(cache=True, nogil=True)
def _one_coefficient(opt):
    """Which coordinates are the variances of terms with one coefficient."""
    return opt.even & (opt.threshold < np.inf)


@nb.njit(cache=True, nogil=True)
def _degenerate(x, opt):
    """Whether a diagonal entry of a term with several coefficients is below its scale."""
    for j in range(x.shape[0]):
        several = opt.nxt[j] >= 0 or (opt.even[j] and opt.threshold[j] == np.inf)
        if several and x[j] < _DEGENERATE * opt.scale[j]:
            return True
    return False


@nb.njit(cache=True, nogil=True, inline="always")
def _search_gene(gene_starts, fixed_starts, zy, xy, ss, dz, w, sc, opt, thorough, buf, x):
    """The best optimum of one gene over its candidate starts, into ``x``.

    Screens the candidates by their criterion (thorough: every one; otherwise the
    gene's own and the first shared one) and descends from them best first: thorough,
    from every one, abandoning descents that come near an optimum found before;
    otherwise until a descent converges, and once more from lme4's start (the first
    shared one) where a term of several coefficients ends near rank-deficient. Returns
    (criterion, converged, Newton iterations, descents).
    """
    cand, vals, known, trial = buf
    n, own = _candidates(gene_starts, fixed_starts, opt, cand)
    screened = n if thorough else min(n, own + 1)
    for i in range(n):
        vals[i] = np.inf
        if i < screened:
            f, _ = factorise(cand[i], zy, xy, ss, dz, w)
            if np.isfinite(f):
                vals[i] = f
    order = np.argsort(vals[:n], kind="mergesort")
    best = np.inf
    converged = np.bool_(False)
    n_iter = 0
    descents = 0
    n_known = np.int64(0)
    x[:] = np.nan
    second = False
    for i in order:
        if converged and not thorough:
            # a covariance of several coefficients near rank-deficient: such optima
            # often have a rival basin, which lme4's start finds
            if second or own == n or not _degenerate(x, opt):
                break
            second = True
            i = own
        trial[:] = cand[i]
        best, converged, n_known, it = _further_descent(
            trial, x, best, converged, zy, xy, ss, dz, w, sc, opt, known, n_known
        )
        n_iter += it
        descents += 1
    if not np.isfinite(best):
        return best, converged, n_iter, descents
    # the faces next to the optimum of the terms with one coefficient, each descended
    # on, then left (:func:`.search._swap_faces`); a term with slopes keeps its factor
    centre = x.copy()
    starts = swap_starts_among(centre, _one_coefficient(opt))
    hopt = _held_options(opt)
    faces, face_of, near = face_buffers(starts, known)
    n_faces = np.int64(0)
    for s in range(starts.shape[0]):
        trial[:] = starts[s]
        face = zeroed(centre, trial)
        m = face_known(known, n_known, faces, face_of, n_faces, face, near)
        f, _, it, abandoned = minimise_gene(trial, zy, xy, ss, dz, w, sc, hopt, near, m, face)
        n_iter += it
        if abandoned or not np.isfinite(f):
            continue
        faces[n_faces], face_of[n_faces] = trial, face
        n_faces += 1
        best, converged, n_known, it = _further_descent(
            trial, x, best, converged, zy, xy, ss, dz, w, sc, opt, known, n_known
        )
        n_iter += it
    return best, converged, n_iter, descents + starts.shape[0]


@nb.njit(cache=True, nogil=True, inline="always")
def _further_descent(trial, x, best, converged, zy, xy, ss, dz, w, sc, opt, known, n_known):
    """A descent from ``trial``; its optimum replaces ``x`` if lower (or the first).

    Returns (best criterion, its convergence, number of optima known, iterations).
    """
    f, conv, it, abandoned = minimise_gene(
        trial, zy, xy, ss, dz, w, sc, opt, known, n_known, np.int64(-1)
    )
    if abandoned or not np.isfinite(f):
        return best, converged, n_known, it
    known[n_known] = trial
    if not np.isfinite(best) or f < best - TIE * max(1.0, abs(best)):
        best, converged = f, conv
        x[:] = trial
    return best, converged, n_known + 1, it


# Tasks of :func:`run_batch` (after the kernel's DEVIANCE, DERIVATIVES, ESTIMATES).
FACTORS, MINIMISE, SEARCH = 3, 4, 5


class Batch(NamedTuple):
    """Results of :func:`run_batch`; what a task does not compute is left NaN or 0."""

    theta: np.ndarray  # (G, k) the optima (MINIMISE, SEARCH)
    dev: np.ndarray  # (G,)
    r2: np.ndarray  # (G,)
    grad: np.ndarray  # (G, k)
    hess: np.ndarray  # (G, k, k)
    beta: np.ndarray  # (G, p)
    converged: np.ndarray  # (G,)
    n_iter: np.ndarray  # (G,)
    descents: np.ndarray  # (G,)
    factors: np.ndarray  # (G, p, p) Cholesky factors of X'V^-1X (FACTORS)


@nb.njit(cache=True, nogil=True)
def _allocate(G, k, p, task):
    full = task in (DERIVATIVES, ESTIMATES, FACTORS)
    return Batch(
        np.full((G, k), np.nan),
        np.full(G, np.nan),
        np.full(G, np.nan),
        np.full((G if task == DERIVATIVES else 0, k), np.nan),
        np.full((G if task == DERIVATIVES else 0, k, k), np.nan),
        np.full((G, p), np.nan),
        np.zeros(G, dtype=np.bool_),
        np.zeros(G, dtype=np.int64),
        np.zeros(G, dtype=np.int64),
        np.full((G if full else 0, p, p), np.nan),
    )


@nb.njit(cache=True, nogil=True)
def run_batch(task, X0, gene_starts, fixed_starts, ZtY, XtY, ss, dz, opt, thorough):
    """Every compiled task of the general engine over a batch of genes: one entry point.

    ``task``: the kernel's ``DEVIANCE``, ``DERIVATIVES`` or ``ESTIMATES`` at the rows
    of ``X0``; :data:`FACTORS` (Cholesky factors of ``X'V^-1X`` at them);
    :data:`MINIMISE` (projected Newton from them); :data:`SEARCH` (the global search of
    :func:`_search_gene` from ``gene_starts``, ``G x S1 x k`` with NaN rows for none,
    and ``fixed_starts``, ``S2 x k``, shared by every gene). One function, so that it
    is compiled once: every entry point compiles all it calls anew. Returns a
    :class:`Batch`.
    """
    G, k = X0.shape
    w = workspace(dz, k)
    sc = scratch(k)
    out = _allocate(G, k, dz.p, task)
    S = gene_starts.shape[1] + fixed_starts.shape[0]
    # known optima: the candidates' and the swaps' (at most k * k)
    buf = (np.empty((S, k)), np.empty(S), np.empty((S + k * k, k)), np.empty(k))
    none = np.empty((0, k))
    grad, hess = np.empty(k), np.empty((k, k))
    for g in range(G):
        x = out.theta[g]
        if task == FACTORS:
            fixed_factor_gene(X0[g], dz, w, out.factors[g])
            continue
        zy, xy, s_ = ZtY[g], XtY[g], ss[g]
        if task < FACTORS:
            if task == DERIVATIVES:
                grad, hess = out.grad[g], out.hess[g]
            out.dev[g], out.r2[g] = evaluate_gene(
                X0[g], zy, xy, s_, task, dz, w, grad, hess, out.beta[g]
            )
            continue
        if task == MINIMISE:
            x[:] = X0[g]
            f, out.converged[g], out.n_iter[g], _ = minimise_gene(
                x, zy, xy, s_, dz, w, sc, opt, none, np.int64(0), np.int64(-1)
            )
            out.descents[g] = 1
            if not np.isfinite(f):
                x[:] = np.nan
        else:
            _, out.converged[g], out.n_iter[g], out.descents[g] = _search_gene(
                gene_starts[g], fixed_starts, zy, xy, s_, dz, w, sc, opt, thorough, buf, x
            )
        estimates_at(x, zy, xy, s_, dz, w, out.dev, out.r2, out.beta, g)
    return out
