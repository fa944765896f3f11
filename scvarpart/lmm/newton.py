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
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numba as nb
import numpy as np

from ._dense_kernel import derivatives, factorise, fixed_effects, held_at, workspace

__all__ = ["HELD_TOL", "NewtonOptions", "held_options", "minimise_batch", "minimise_callable"]

# Convergence of a descent held on a face (the global search's neighbouring faces): its
# end is the start of a free descent, which converges to the full tolerance, so it
# stops once the Newton decrement promises less than this (12-15% fewer Newton
# iterations per gene in every engine, the same optima).
HELD_TOL = 1e-3

# What a descent leaves at its end point for the next descent from there (the release
# of a neighbouring face's optimum): nothing; the factorisation there (in the
# workspace); or the objective's gradient and Hessian there (in the buffers passed; the
# workspace may hold another point). On benchmarks/fit_speed.py's design 38% of the
# held descents end with the derivatives and 62% with the factorisation only; their
# releases, 2.7 per gene, used to repeat that work. The search there takes 0.92-0.96
# times the time (paired runs); on the example design with a level left out no change
# shows.
UNKNOWN, FACTORISED, DIFFERENTIATED = 0, 1, 2

# Shortest step fraction tried by the line search.
_MIN_STEP = 1e-10
# Distance within which a descent counts as having rejoined an optimum found
# before: in log gamma above the threshold, in units of the threshold below it
# (where distinct optima can be a fraction of the threshold apart). Nearly every
# release of a neighbouring face's optimum returns to the optimum it started from;
# within a factor e^0.6 = 1.8 of it (e^0.2 before) such releases stop after 2.9 Newton
# iterations instead of 3.4: 11% fewer iterations per gene on benchmarks/fit_speed.py's
# design, 7.5% on the example design with a level left out, whose 41,600 fits (every
# level, two sizes, ML and REML, dense and blocked engines) reach the same optima.
_NEAR_LOG = 0.6
_NEAR_LINEAR = 0.15


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
def held_options(opt: NewtonOptions) -> NewtonOptions:
    """``opt`` for a held descent: the tolerance no finer than :data:`HELD_TOL`."""
    return NewtonOptions(
        opt.threshold,
        max(opt.tol, HELD_TOL),
        opt.stall_tol,
        opt.max_iter,
        opt.max_growth,
        opt.x_max,
        opt.eps_active,
    )


# Jacobi sweeps after which a small symmetric eigenproblem is given up as converged.
_MAX_SWEEPS = 60


@nb.njit(cache=True, nogil=True)
def _jacobi_rotation(A, V, p, q):
    """Zero ``A[p, q]`` by a rotation of rows and columns ``p`` and ``q`` of ``A`` and ``V``.

    Returns whether it rotated: not where ``A[p, q]`` is already 0 or below the
    rounding of both diagonal entries it couples (then it is set to 0).
    """
    apq = A[p, q]
    if apq == 0.0:
        return False
    app, aqq = A[p, p], A[q, q]
    g = 100.0 * abs(apq)
    if abs(app) + g == abs(app) and abs(aqq) + g == abs(aqq):
        A[p, q] = A[q, p] = 0.0
        return False
    # t: tangent of the smaller angle that zeroes A[p, q]
    theta = 0.5 * (aqq - app) / apq
    t = 1.0 / (abs(theta) + math.hypot(1.0, theta))
    if theta < 0.0:
        t = -t
    c = 1.0 / math.sqrt(1.0 + t * t)
    sn = t * c
    tau = sn / (1.0 + c)
    h = t * apq
    A[p, p] = app - h
    A[q, q] = aqq + h
    A[p, q] = A[q, p] = 0.0
    for r in range(A.shape[0]):
        if r != p and r != q:
            arp, arq = A[r, p], A[r, q]
            A[r, p] = A[p, r] = arp - sn * (arq + arp * tau)
            A[r, q] = A[q, r] = arq + sn * (arp - arq * tau)
        vrp, vrq = V[r, p], V[r, q]
        V[r, p] = vrp - sn * (vrq + vrp * tau)
        V[r, q] = vrq + sn * (vrp - vrq * tau)
    return True


@nb.njit(cache=True, nogil=True)
def _symmetric_eigen(A, V):
    """Eigendecomposition of a small symmetric matrix by cyclic Jacobi rotations.

    Reads the lower triangle of ``A``; on return its diagonal holds the eigenvalues and
    the columns of ``V`` the eigenvectors. For the few variance ratios of a model
    LAPACK's calls cost far more than the arithmetic; Jacobi's method is as accurate
    (Demmel & Veselic 1992). Sweeps end when no off-diagonal entry is above the
    rounding of the diagonal entries it couples.
    """
    k = A.shape[0]
    for i in range(k):
        for j in range(k):
            V[i, j] = 1.0 if i == j else 0.0
        for j in range(i + 1, k):
            A[i, j] = A[j, i]
    for _ in range(_MAX_SWEEPS):
        rotated = False
        for p in range(k - 1):
            for q in range(p + 1, k):
                rotated = _jacobi_rotation(A, V, p, q) or rotated
        if not rotated:
            return


@nb.njit(cache=True, nogil=True)
def _eigen_step(H, g, step):
    """``step = -V diag(1/|w|) V' g`` from the eigendecomposition ``H = V diag(w) V'``.

    Eigenvalues are kept at least ``1e-12`` of the largest. Returns whether every one
    was above that already (``H`` positive definite). Overwrites ``H``.
    """
    k = H.shape[0]
    V = np.empty((k, k))
    _symmetric_eigen(H, V)
    w = np.empty(k)
    for i in range(k):
        w[i] = H[i, i]
    scale = np.max(np.abs(w))
    positive = True
    for i in range(k):
        if not w[i] > 1e-12 * scale:
            positive = False
        w[i] = max(abs(w[i]), 1e-12 * scale + 1e-300)
    step[:] = 0.0
    for m in range(k):
        coef = 0.0
        for i in range(k):
            coef += V[i, m] * g[i]
        coef /= w[m]
        for i in range(k):
            step[i] -= V[i, m] * coef
    return positive


# |H|_F |H^-1|_F below which a Hessian's eigenvalues need no inspection: it bounds
# the ratio of the largest to the smallest, 10 times below the 1e12 that
# _eigen_step tolerates (room for the rounding of both).
_SAFE_CONDITION = 1e11


@nb.njit(cache=True, nogil=True)
def _cholesky(H, L):
    """Lower Cholesky factor of ``H`` (lower triangle read) into ``L``.

    Returns ``|H|_F^2``, or -1 where ``H`` is not positive definite.
    """
    k = H.shape[0]
    norm = 0.0
    for j in range(k):
        for i in range(j, k):
            acc = H[i, j]
            norm += acc * acc if i == j else 2.0 * acc * acc
            for t in range(j):
                acc -= L[i, t] * L[j, t]
            if i > j:
                L[i, j] = acc / L[j, j]
            elif acc > 0.0:
                L[j, j] = math.sqrt(acc)
            else:
                return -1.0
    return norm


@nb.njit(cache=True, nogil=True)
def _definite_step(H, g, step):
    """``step = -H^-1 g`` for a safely positive definite ``H`` (lower triangle read).

    Returns False, with ``step`` untouched, unless the Cholesky factorisation of ``H``
    exists and ``|H|_F |H^-1|_F < _SAFE_CONDITION``: then every eigenvalue is above
    ``1e-12`` of the largest, and this is the step of :func:`_eigen_step`, at a
    fraction of its cost.
    """
    k = H.shape[0]
    L = np.zeros((k, k))
    norm_h = _cholesky(H, L)
    if not norm_h >= 0.0:
        return False
    M = np.zeros((k, k))  # L^-1
    for j in range(k):
        M[j, j] = 1.0 / L[j, j]
        for i in range(j + 1, k):
            acc = 0.0
            for t in range(j, i):
                acc -= L[i, t] * M[t, j]
            M[i, j] = acc / L[i, i]
    inv = np.empty((k, k))  # H^-1 = M' M
    norm_inv = 0.0
    for i in range(k):
        for j in range(k):
            acc = 0.0
            for t in range(max(i, j), k):
                acc += M[t, i] * M[t, j]
            inv[i, j] = acc
            norm_inv += acc * acc
    if not norm_h * norm_inv < _SAFE_CONDITION * _SAFE_CONDITION:
        return False
    for i in range(k):
        acc = 0.0
        for j in range(k):
            acc -= inv[i, j] * g[j]
        step[i] = acc
    return True


@nb.njit(cache=True, nogil=True)
def _newton_step(x, g, H, logc, bound):
    """Newton step in mixed coordinates; returns step, decrement, positive.

    The Hessian is made positive definite by taking absolute values of its eigenvalues
    (none below ``1e-12`` of the largest); ``positive`` when none had to change.
    """
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
    step = np.empty(k)
    positive = _definite_step(Ht, gt, step) or _eigen_step(Ht, gt, step)
    decrement = 0.0
    for i in range(k):
        decrement -= gt[i] * step[i]
    return step, decrement, positive


@nb.njit(cache=True, nogil=True)
def _active_set(x, grad, opt, logc, bound, held):
    """Find the coordinates stepped in ``log gamma`` and the epsilon-active set.

    Fills ``logc`` and ``bound``; returns whether a bound variable is not yet at 0.
    ``held``: a coordinate held at 0 (bound whatever its gradient), or -1 for none.
    """
    k = x.shape[0]
    eps = 0.0
    for j in range(k):
        if j != held:
            eps += (x[j] - max(x[j] - grad[j], 0.0)) ** 2
    eps = math.sqrt(eps)
    pending = False
    for j in range(k):
        t = opt.threshold[j]
        logc[j] = x[j] > t and j != held
        free = (not logc[j]) and x[j] <= min(eps, opt.eps_active * t) and grad[j] > 0.0
        bound[j] = j == held or free
        pending = pending or (bound[j] and x[j] > 0.0)
    return pending


@nb.njit(cache=True, nogil=True)
def _step_length(x, grad, hess, step, logc, bound, opt, held):
    """Scale the step of bound variables and limit its length.

    Bound variables take a diagonally scaled gradient step (cut at the bound later), but
    ``held`` (-1 for none), which stays; returns the longest step fraction that changes
    no parameter by more than ``max_growth``, keeping the direction.
    """
    log_growth = math.log(opt.max_growth)
    t = 1.0
    for j in range(x.shape[0]):
        if j == held:
            step[j] = 0.0
        elif bound[j]:
            step[j] = -grad[j] / hess[j, j] if hess[j, j] > 0.0 else -x[j]
        if logc[j]:
            t = min(t, log_growth / max(abs(step[j]), 1e-300))
        elif step[j] > 0.0:
            t = min(t, (opt.max_growth * x[j] + 1.0) / step[j])
    return t


@nb.njit(cache=True, nogil=True)
def _trial_point(x, grad, step, t, logc, opt, trial):
    """The point a fraction ``t`` along the projection arc, into ``trial``.

    Returns the decrease the gradient predicts for it.
    """
    predicted = 0.0
    for j in range(x.shape[0]):
        if logc[j]:
            trial[j] = x[j] * math.exp(t * step[j])
        else:
            trial[j] = min(max(x[j] + t * step[j], 0.0), opt.x_max)
        predicted += grad[j] * (trial[j] - x[j])
    return predicted


@nb.njit(cache=True, nogil=True)
def _sufficient_decrease(f, ft, predicted):
    """Armijo's condition, with a strict decrease.

    At the optimum, rounding may leave the objective unchanged.
    """
    return np.isfinite(ft) and ft < f and ft <= f + 1e-4 * predicted


@nb.njit(cache=True, nogil=True)
def _final_step(x, trial, t, positive, decrement, pending_bound, opt):
    """Whether the step just accepted ends the descent.

    It does when it was a full, unprojected Newton step from a point whose decrement
    was below ``sqrt(tol)``.
    """
    if not (t == 1.0 and positive and decrement < math.sqrt(opt.tol) and not pending_bound):
        return False
    for j in range(x.shape[0]):
        if trial[j] == 0.0 and x[j] > 0.0:
            return False  # the step was projected onto the bound
    return True


@nb.njit(cache=True, nogil=True, inline="always")
def _value_and_derivatives(x, zy, xy, ss, dz, w, grad, hess):
    """Objective with gradient and Hessian; NaN if any of them is not finite."""
    f, r2 = factorise(x, zy, xy, ss, dz, w)
    if not np.isfinite(f):
        return f
    return _derivatives_at(x, zy, dz, w, f, r2, grad, hess)


@nb.njit(cache=True, nogil=True, inline="always")
def _derivatives_at(x, zy, dz, w, f, r2, grad, hess):
    """Gradient and Hessian from the factorisation at ``x`` held in ``w``.

    Returns ``f``, or NaN if any derivative is not finite.
    """
    derivatives(x, zy, dz, w, r2, grad, hess)
    if not (np.all(np.isfinite(grad)) and np.all(np.isfinite(hess))):
        return np.nan
    return f


@nb.njit(cache=True, nogil=True)
def _near(x, y, threshold):
    """Whether ``x`` is near ``y`` in every coordinate.

    Near means within :data:`_NEAR_LOG` in ``log gamma`` above the threshold, within
    :data:`_NEAR_LINEAR` in ``gamma / threshold`` below it.
    """
    for j in range(x.shape[0]):
        a, b, t = x[j], y[j], threshold[j]
        if a > t and b > t:
            if abs(math.log(a / b)) > _NEAR_LOG:
                return False
        elif abs(a - b) > _NEAR_LINEAR * t:
            return False
    return True


@nb.njit(cache=True, nogil=True, inline="always")
def _start_values(x, zy, xy, ss, dz, w, grad, hess, f0, left):
    """The objective at a descent's start ``x``, with its gradient and Hessian.

    ``left`` says what an earlier descent of the same gene, which ended at ``x``, left
    there (:data:`UNKNOWN`, :data:`FACTORISED`, :data:`DIFFERENTIATED`); ``f0`` is its
    objective there. What it left is what a new evaluation would compute.
    """
    if left == DIFFERENTIATED:
        return f0
    if left == FACTORISED:
        return _derivatives_at(x, zy, dz, w, f0, w.held[x.shape[0] + 1], grad, hess)
    return _value_and_derivatives(x, zy, xy, ss, dz, w, grad, hess)


@nb.njit(cache=True, nogil=True)
def _minimise_gene(
    x, zy, xy, ss, dz, w, opt, grad, hess, known, n_known, held, f0=np.nan, left=UNKNOWN
):
    """Minimise one gene's deviance from ``x`` (updated in place).

    A descent from a further start is abandoned when it comes near one of the
    optima ``known[:n_known]`` found from other starts: it would end there.
    ``held``: a coordinate held at 0 (``x[held]`` must be 0), a descent on that face of
    the boundary; -1 for none. ``f0`` and ``left``: what a descent that ended at ``x``
    left there (:func:`_start_values`).

    Returns (deviance, converged, iterations, abandoned, what is left at the end: the
    next descent's ``left``).
    """
    k = x.shape[0]
    f = _start_values(x, zy, xy, ss, dz, w, grad, hess, f0, left)
    if not np.isfinite(f):
        return f, False, 0, False, UNKNOWN
    logc = np.empty(k, dtype=np.bool_)
    bound = np.empty(k, dtype=np.bool_)
    trial = np.empty(k)
    for it in range(opt.max_iter):
        pending_bound = _active_set(x, grad, opt, logc, bound, held)
        step, decrement, positive = _newton_step(x, grad, hess, logc, bound)
        if positive and decrement < opt.tol and not pending_bound:
            return f, True, it, False, DIFFERENTIATED
        t = _step_length(x, grad, hess, step, logc, bound, opt, held)
        accepted = False
        ft = r2t = np.nan
        while t > _MIN_STEP:
            predicted = _trial_point(x, grad, step, t, logc, opt, trial)
            ft, r2t = factorise(trial, zy, xy, ss, dz, w)
            if _sufficient_decrease(f, ft, predicted):
                accepted = True
                break
            t *= 0.5
        if not accepted:
            # No decrease left that rounding lets the objective show (with n
            # observations the deviance carries ~n * eps of noise): converged if
            # what the Newton model still promises is below that noise too. The
            # derivatives are still those at x (the workspace holds a trial point).
            return f, positive and decrement < opt.stall_tol, it + 1, False, DIFFERENTIATED
        final = _final_step(x, trial, t, positive, decrement, pending_bound, opt)
        x[:] = trial
        f = ft
        if final:
            return f, True, it + 1, False, FACTORISED
        for m in range(n_known):
            if _near(x, known[m], opt.threshold):
                return f, False, it + 1, True, FACTORISED
        # the workspace holds the factorisation at the accepted step
        f = _derivatives_at(x, zy, dz, w, ft, r2t, grad, hess)
        if not np.isfinite(f):
            return f, False, it + 1, False, UNKNOWN
    return f, False, opt.max_iter, False, DIFFERENTIATED


@nb.njit(cache=True, nogil=True)
def minimise_batch(X0, ZtY, XtY, ss, dz, opt):
    """Minimise the deviance of every gene of a batch from its row of ``X0``.

    ``opt`` holds the settings (a :class:`NewtonOptions`).

    Returns the minimisers ``(G, k)``, deviance, residual sum of squares ``r2``
    and fixed effects at them, convergence flags and iteration counts.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import scvarpart as svp
    >>> rng = np.random.default_rng(0)
    >>> obs = pd.DataFrame({"donor": rng.choice(list("abcdef"), 300)})
    >>> stats = svp.lmm.response_stats(rng.normal(size=(300, 4)), "~ (1|donor)", obs=obs)
    >>> engine = svp.lmm.DenseDeviance(stats.gram, reml=False)
    >>> r = stats.response
    >>> gamma, dev, r2, beta, converged, n_iter = svp.lmm.minimise_batch(
    ...     np.full((4, 1), 0.1), *(np.ascontiguousarray(a) for a in (r.ZtY, r.XtY, r.ss)),
    ...     engine.design, engine.options,
    ... )
    >>> gamma.shape, bool(converged.all())
    ((4, 1), True)
    """
    G, k = X0.shape
    w = workspace(dz, k)
    X, dev, r2, beta, converged, n_iter = batch_results(X0, dz.p)
    grad = np.empty(k)
    hess = np.empty((k, k))
    none = np.empty((0, k))
    for g in range(G):
        _, converged[g], n_iter[g], _, _ = _minimise_gene(
            X[g], ZtY[g], XtY[g], ss[g], dz, w, opt, grad, hess, none, np.int64(0),
            np.int64(-1), np.nan, np.int64(UNKNOWN),
        )  # fmt: skip
        estimates_at(X[g], ZtY[g], XtY[g], ss[g], dz, w, dev, r2, beta, g)
    return X, dev, r2, beta, converged, n_iter


@nb.njit(cache=True, nogil=True)
def batch_results(X0, p):
    """Allocate the result arrays of a batch.

    Optima (starting as ``X0``), criterion, ``r2``, fixed effects, convergence flags and
    iterations.
    """
    G = X0.shape[0]
    return (
        X0.copy(),
        np.full(G, np.nan),
        np.full(G, np.nan),
        np.full((G, p), np.nan),
        np.zeros(G, dtype=np.bool_),
        np.zeros(G, dtype=np.int64),
    )


@nb.njit(cache=True, nogil=True)
def estimates_at(x, zy, xy, ss, dz, w, dev, r2, beta, g):
    """Criterion, ``r2`` and fixed effects of gene ``g`` at its optimum ``x``.

    They are left NaN where ``x`` is not finite.
    """
    if not np.all(np.isfinite(x)):
        return
    if held_at(x, w):  # the descent ended on its last factorisation
        k = x.shape[0]
        dev[g], r2[g] = w.held[k], w.held[k + 1]
    else:
        dev[g], r2[g] = factorise(x, zy, xy, ss, dz, w)
    if np.isfinite(dev[g]):
        fixed_effects(dz, w, beta[g])


def minimise_callable(
    x: np.ndarray,
    evaluate: Callable[[np.ndarray], float],
    derivatives: Callable[[np.ndarray], tuple[float, np.ndarray, np.ndarray]],
    opt: NewtonOptions,
    known: Sequence[np.ndarray] = (),
    held: int = -1,
) -> tuple[float, bool, int, bool]:
    """Run the projected Newton method of :func:`_minimise_gene` from Python.

    For engines whose evaluations are NumPy/BLAS calls (:mod:`.blocked`). ``held``: a
    coordinate held at 0, or -1.

    ``evaluate(x)`` returns the objective (NaN outside the domain),
    ``derivatives(x)`` the objective, gradient and Hessian (or a positive
    definite approximation of it). ``x`` is updated in place. Returns (deviance,
    converged, iterations, abandoned).
    """
    k = x.shape[0]
    f, grad, hess = derivatives(x)
    if not (np.isfinite(f) and np.isfinite(grad).all() and np.isfinite(hess).all()):
        return np.nan, False, 0, False
    logc = np.empty(k, dtype=bool)
    bound = np.empty(k, dtype=bool)
    trial = np.empty(k)
    for it in range(opt.max_iter):
        pending_bound = _active_set(x, grad, opt, logc, bound, held)
        step, decrement, positive = _newton_step(x, grad, hess, logc, bound)
        if positive and decrement < opt.tol and not pending_bound:
            return f, True, it, False
        t = _step_length(x, grad, hess, step, logc, bound, opt, held)
        ft = np.nan
        while t > _MIN_STEP:
            predicted = _trial_point(x, grad, step, t, logc, opt, trial)
            ft = evaluate(trial)
            if _sufficient_decrease(f, ft, predicted):
                break
            t *= 0.5
        else:
            return f, bool(positive and decrement < opt.stall_tol), it + 1, False
        final = _final_step(x, trial, t, positive, decrement, pending_bound, opt)
        x[:] = trial
        if final:
            return ft, True, it + 1, False
        if any(_near(x, y, opt.threshold) for y in known):
            return ft, False, it + 1, True
        f, grad, hess = derivatives(x)
        if not (np.isfinite(f) and np.isfinite(grad).all() and np.isfinite(hess).all()):
            return np.nan, False, it + 1, False
    return f, False, opt.max_iter, False
