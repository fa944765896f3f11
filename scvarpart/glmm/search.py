"""The outer search: the Laplace criterion minimised over variances, fixed effects and dispersion.

lme4's ``glmer`` (``nAGQ = 1``) and glmmTMB minimise the Laplace approximation
``D(theta, beta, log phi)`` (:mod:`._laplace_kernel`) over all its parameters at once,
with the conditional modes found anew at every point. So does this module, with the
criterion's exact gradient and a compiled L-BFGS descent (:mod:`._descent`), under
bounds: ``theta >= 0`` (a variance at 0 is a boundary optimum, as lme4's), and
``log phi`` within :data:`LOG_PHI_BOUNDS`.

The criterion need not be convex in ``theta``: the search starts from two points
(every standard deviation at 0.2, and at 1) and keeps the best optimum. Each optimum is
polished with Newton steps on the exact gradient (a finite-difference Hessian of it),
which also gives the Hessian for standard errors; the second descent ends where it
reaches the first optimum's neighbourhood or its basin (:func:`._descent._in_basin`).
Then the search restarts away from every variance at 0 along which ``D`` falls. Both
starts are needed: on a reference gene of crossed patients and batches
(``tests/data/glmm``, g19) the start at 1 alone stops 2.3 log-likelihood units short, at
a second optimum that gives the batches more of the variance. The tests check the
optimum against a grid of ``4^k`` starts on random designs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ._descent import descend
from ._laplace_kernel import NB2, distinct_counts, laplace, row_layout
from .rows import independent_prior, observation_rows

__all__ = [
    "LOG_PHI_BOUNDS",
    "GeneFit",
    "RowProblem",
    "fit_rows",
    "glm_beta",
    "glm_start",
    "moment_log_phi",
]

#: Bounds of ``log phi`` (NB size ``phi`` from 4.5e-5 to 4.9e8): at the upper one the
#: counts show no overdispersion beyond the random effects (the Poisson limit); at the
#: lower one the dispersion is not identified.
LOG_PHI_BOUNDS = (-10.0, 20.0)
_THETA_MAX = 20.0  # a standard deviation of 20 on the log scale: e^20-fold between levels
MODE_TOL = 1e-14  # Newton decrement, relative, at which the conditional modes are converged
MODE_ITER = 100
_STARTS = (0.2, 1.0)  # every term's starting theta, one start each
_GRID = (0.05, 0.3, 1.0, 3.0)  # each term's starting theta, in every combination (tests)
_SNAP_BELOW = 1e-3  # a theta this small is tried at 0 (:func:`_snap_to_zero`)
_ROUNDING = 1e-13  # relative rounding of the criterion's evaluation
_STEP = 1e-6  # relative step of the Hessian's differences
_POLISHED = 1e-6  # a projected gradient below this needs no Newton step
_MOVED = 1e-4  # a polishing step this large (relative) takes the Hessian again
_NEAR = 1e-2  # a descent this close to a known optimum, in every coordinate, reaches it


@dataclass(frozen=True)
class RowProblem:
    """One gene's count model on rows (observations, or classes of them).

    ``codes`` holds each row's column of ``u`` per term (``n x k``, columns of term
    ``t`` contiguous), ``term`` the term of each column of ``u``; ``aux`` what kind of
    row each is (:func:`.rows.observation_rows` for observations, the default);
    ``classes`` groups rows with the same ``codes`` (by default the distinct rows of
    ``codes``; :func:`._laplace_kernel.row_layout`); ``layout``, if given, is their
    :func:`~._laplace_kernel.row_layout` (the same for every gene fitted on the
    observations: computed once); ``prior`` the modes' prior (:func:`.rows.row_prior`;
    by default independent levels).
    """

    family: int
    y: np.ndarray
    X: np.ndarray
    offset: np.ndarray
    codes: np.ndarray
    term: np.ndarray
    n_terms: int
    aux: tuple = ()
    classes: np.ndarray | None = None
    layout: tuple = ()
    prior: tuple = ()
    counts: tuple = field(init=False)

    def __post_init__(self) -> None:
        """Rows that are all observations unless ``aux`` says otherwise; the kernel's layout.

        ``y`` is made contiguous: a gene's column of a block is strided, and the compiled
        kernel would be compiled once more for that layout (minutes on a fresh install).
        """
        object.__setattr__(self, "y", np.ascontiguousarray(self.y, dtype=float))
        if not self.aux:
            object.__setattr__(self, "aux", observation_rows(len(self.y)))
        if not self.layout:
            object.__setattr__(self, "layout", row_layout(self.codes, self.classes))
        if not self.prior:
            object.__setattr__(self, "prior", independent_prior(self.term))
        object.__setattr__(self, "counts", distinct_counts(self.y, self.aux[0]))

    @property
    def n_params(self) -> int:
        """Length of the parameter vector ``(theta, beta[, log phi])``."""
        return self.n_terms + self.X.shape[1] + (1 if self.family == NB2 else 0)

    def criterion(self, x: np.ndarray, u: np.ndarray, gradient: bool = True):
        """``(D, grad, converged)`` at ``x``; ``u`` starts the modes and receives them."""
        k, p = self.n_terms, self.X.shape[1]
        log_phi = x[k + p] if self.family == NB2 else 0.0
        return laplace(
            self.family, self.y, self.X, self.offset, self.layout, self.term, self.prior,
            self.aux, self.counts, np.ascontiguousarray(x[:k]), np.ascontiguousarray(x[k:k + p]),
            log_phi, u, MODE_TOL, MODE_ITER, gradient,
        )  # fmt: skip

    def kernel_arguments(self) -> tuple:
        """The problem as the compiled descent takes it (:func:`._descent.descend`)."""
        return (
            self.family, self.y, self.X, self.offset, self.layout, self.term, self.prior,
            self.aux, self.counts, self.n_terms,
        )  # fmt: skip

    def bounds(self) -> list[tuple[float | None, float | None]]:
        """``theta >= 0`` (bounded above), ``beta`` free, ``log phi`` in its bounds."""
        out: list[tuple[float | None, float | None]] = [(0.0, _THETA_MAX)] * self.n_terms
        out += [(None, None)] * self.X.shape[1]
        return out + ([LOG_PHI_BOUNDS] if self.family == NB2 else [])


class _Point(NamedTuple):
    """A point of the search: ``x``, modes, ``D``, gradient, Hessian (once taken), convergence."""

    x: np.ndarray
    u: np.ndarray
    D: float
    g: np.ndarray
    H: np.ndarray | None
    converged: bool


@dataclass(frozen=True)
class GeneFit:
    """The optimum of one gene: parameters, criterion, modes and curvature."""

    x: np.ndarray
    deviance: float
    u: np.ndarray
    gradient: np.ndarray
    hessian: np.ndarray
    converged: bool


def glm_start(y: np.ndarray, X: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, float]:
    """The Poisson GLM's fixed effects (no random effects), and a moment estimate of ``log phi``.

    Of observations (:func:`glm_beta`, :func:`moment_log_phi`).
    """
    beta = glm_beta(y, X, off)
    return beta, moment_log_phi(y, np.exp(off + X @ beta))


def glm_beta(y: np.ndarray, X: np.ndarray, off: np.ndarray) -> np.ndarray:
    """The Poisson GLM's fixed effects (no random effects).

    Of observations, or of Poisson class totals, which give the same fixed effects: in
    closed form for an intercept alone, else iteratively reweighted least squares.
    """
    beta = np.zeros(X.shape[1])
    beta[0] = np.log(max(y.sum(), 0.5) / np.exp(off).sum())  # the intercept-only GLM's
    for _ in range(30 if X.shape[1] > 1 or not (X == 1).all() else 0):
        mu = np.exp(off + X @ beta)
        step = np.linalg.lstsq((X * mu[:, None]).T @ X, X.T @ (y - mu), rcond=None)[0]
        beta = beta + step
        if np.abs(step).max() < 1e-8:
            break
    return beta


def moment_log_phi(y: np.ndarray, mu: np.ndarray) -> float:
    """``log phi`` from ``Var y = mu + mu^2 / phi``, inside the bounds."""
    d = y - mu
    excess = d @ d - mu.sum()
    lo, hi = LOG_PHI_BOUNDS
    if not excess > 0:
        return hi - 1
    return min(max(math.log(mu @ mu / excess), lo + 1), hi - 1)


def _hessian(problem: RowProblem, x: np.ndarray, u: np.ndarray, g: np.ndarray):
    """Forward differences of the exact gradient ``g`` (at ``x``), symmetrised.

    Steps of ``1e-6`` relative: the gradient is exact to about 1e-12 of ``D``, so the
    Hessian is good to about 1e-6 relative, ample for Newton steps and standard errors.
    Steps go up, away from the lower bounds.
    """
    m = len(x)
    H = np.empty((m, m))
    for j in range(m):
        e = np.zeros(m)
        e[j] = _STEP * max(1.0, abs(x[j]))
        H[:, j] = (problem.criterion(x + e, u.copy())[1] - g) / e[j]
    return 0.5 * (H + H.T)


def _minimise(
    problem: RowProblem, x0: np.ndarray, u0: np.ndarray, known: GeneFit | None = None
) -> tuple[np.ndarray, float, np.ndarray]:
    """A compiled L-BFGS descent from ``x0`` (:mod:`._descent`); the modes warm-start each point.

    To moderate tolerances: Newton steps finish the optimum (:func:`_newton_polish`).
    ``known``: an optimum found already. A descent that comes within :data:`_NEAR` of it
    in every coordinate (``theta`` up to its sign), or into the region where its
    quadratic model holds, no lower, ends there: it would reach that optimum, and the
    rest of its evaluations is saved. Returns the optimum, its ``D`` and its modes (those
    of ``theta`` by its size: ``D`` is even in it).
    """
    k = problem.n_terms
    # theta free of sign: D is even in each theta, so theta = 0 is always stationary and a
    # search bounded at 0 stops there even where D falls away from it; from a signed
    # start, descent reaches 0 only where 0 is a minimum.
    lo, hi = _box(problem)
    lo[:k] = -_THETA_MAX
    if known is None:
        target = (np.empty(0), np.inf, np.empty(0), np.empty((0, 0)))
    else:
        target = (known.x, known.deviance, known.gradient, known.hessian)
    u = u0.copy()
    x, D, _, _ = descend(
        problem.kernel_arguments(), np.asarray(x0, dtype=float), u, lo, hi, target,
        _NEAR, MODE_TOL, MODE_ITER, 1e-12, 1e-6, 1000,
    )  # fmt: skip
    x = x.copy()
    u[x[problem.term] < 0] *= -1  # the modes of -theta are -u
    x[:k] = np.abs(x[:k])
    return x, float(D), u


def _box(problem: RowProblem) -> tuple[np.ndarray, np.ndarray]:
    """The bounds as arrays of lower and upper values (infinite where there are none)."""
    bounds = problem.bounds()
    lo = np.array([-np.inf if b[0] is None else b[0] for b in bounds])
    hi = np.array([np.inf if b[1] is None else b[1] for b in bounds])
    return lo, hi


def _newton_polish(problem: RowProblem, point: _Point, held: int | None = None) -> _Point:
    """Projected Newton steps from ``point`` while they lower ``D``; ``held``: a coordinate kept.

    Near an optimum ``D`` changes by less than its rounding (``1e-14`` relative): a step
    that leaves ``D`` within :data:`_ROUNDING` of where it was and shrinks the gradient
    is taken, not halved away. The Hessian is taken again only after a step of more than
    :data:`_MOVED` (relative) in some coordinate: near an optimum the steps are of the
    order of the gradient (below 1e-5), and so is the Hessian's relative change, far
    below what Newton steps and standard errors need. The point returned carries the
    Hessian last taken.
    """
    lo, hi = _box(problem)
    x, u, D, g, H, converged = point
    if H is None:
        H = _hessian(problem, x, u, g)
    for _ in range(8):
        free = ~(((x <= lo) & (g >= 0)) | ((x >= hi) & (g < 0)))
        if held is not None:
            free[held] = False
        if not free.any() or np.abs(g[free]).max() < _POLISHED:
            break
        try:
            step = -np.linalg.solve(H[np.ix_(free, free)], g[free])
        except np.linalg.LinAlgError:
            break
        if g[free] @ step >= 0:
            break
        taken = _newton_step(problem, x, u, D, g, free, step, lo, hi)
        if taken is None:
            break
        trial, ut, (Dt, gt, ct) = taken
        moved = np.abs(trial - x) > _MOVED * np.maximum(1.0, np.abs(x))
        polished = np.abs(gt[free]).max() < _POLISHED
        improved = D - Dt
        x, u, D, g, converged = trial, ut, Dt, gt, ct
        if polished or (improved < 1e-12 * (1 + abs(D)) and not moved.any()):
            break
        if moved.any():
            H = _hessian(problem, x, u, g)
    return _Point(x, u, D, g, H, converged)


def _newton_step(problem: RowProblem, x, u, D, g, free, step, lo, hi):
    """The Newton step from ``x``, halved until it lowers ``D``: ``(x, modes, criterion)``.

    Also taken: a step that leaves ``D`` within its rounding and shrinks the gradient.
    ``None`` where no step of at least ``1e-6`` of it does either.
    """
    within = D + _ROUNDING * (1 + abs(D))
    g_free = np.abs(g[free]).max()
    t = 1.0
    while t > 1e-6:
        trial = x.copy()
        trial[free] = np.clip(x[free] + t * step, lo[free], hi[free])
        ut = u.copy()
        out = problem.criterion(trial, ut)
        Dt, gt = out[0], out[1]
        if Dt <= D or (Dt <= within and np.abs(gt[free]).max() < g_free):
            return trial, ut, out
        t *= 0.5
    return None


def _snap_to_zero(problem: RowProblem, point: _Point) -> _Point:
    """Put at 0 every small ``theta`` where 0 is as good, within the criterion's rounding.

    ``D`` is even in each ``theta``: where its minimum is at 0, a search from a signed
    start ends a rounding error away from 0 (``|theta| ~ sqrt(eps / D'')``). Such a
    variance is 0 (a singular fit, as lme4 reports it) when ``D`` with it at 0, the
    other parameters polished again, is no larger than the optimum plus
    :data:`_ROUNDING` (far below the 1e-6 relative differences between engines).
    """
    for j in np.argsort(point.x[: problem.n_terms]):
        if not 0 < point.x[j] < _SNAP_BELOW:
            continue
        x = point.x.copy()
        x[j] = 0.0
        # D is even in theta_j: its Hessian at 0 is the one at |theta_j| < 1e-3 to 1e-6
        snapped = _evaluate(problem, x, point.u)._replace(H=point.H)
        trial = _newton_polish(problem, snapped, held=j)
        if trial.D <= point.D + _ROUNDING * (1 + abs(point.D)):
            point = trial
    return point


def _escape(problem: RowProblem, fit: GeneFit) -> list[np.ndarray]:
    """Starts away from each variance at 0 where ``D`` falls off 0 along it.

    ``D`` is even in each ``theta``, so a variance at 0 is always stationary; it is a
    minimum along its axis only where ``D'' >= 0`` there (the Hessian's diagonal).
    """
    out = []
    for j in range(problem.n_terms):
        if fit.x[j] == 0 and not fit.hessian[j, j] > 0:
            x0 = fit.x.copy()
            x0[j] = _STARTS[0]
            out.append(x0)
    return out


def _evaluate(problem: RowProblem, x: np.ndarray, u0: np.ndarray) -> _Point:
    """``D`` and its gradient at ``x``, the modes from ``u0`` (not modified)."""
    u = u0.copy()
    D, g, converged = problem.criterion(x, u)
    return _Point(x, u, float(D), g, None, bool(converged))


def _finish(problem: RowProblem, x: np.ndarray, u0: np.ndarray) -> GeneFit:
    """Polish an optimum, put negligible variances at 0; with its gradient and Hessian.

    ``u0``: the modes at ``x`` found by the descent, where the modes' Newton steps start.
    """
    point = _newton_polish(problem, _evaluate(problem, x, u0))
    point = _snap_to_zero(problem, point)
    assert point.H is not None
    return GeneFit(
        x=point.x, deviance=point.D, u=point.u, gradient=point.g, hessian=point.H,
        converged=point.converged,
    )  # fmt: skip


def fit_rows(
    problem: RowProblem,
    exhaustive: bool = False,
    start: tuple[np.ndarray, float] | None = None,
) -> GeneFit:
    """The best optimum of ``D`` over starts, polished, with its gradient and Hessian.

    Starts: every standard deviation at each of :data:`_STARTS` (``exhaustive``: every
    combination of 0.05, 0.3, 1 and 3 over the terms, ``4^k`` starts, for tests); then,
    from the best optimum, a start away from each variance at 0 that is not a minimum
    along its axis. ``start``: the fixed effects and ``log phi`` to start from (by
    default :func:`glm_start` of the rows, which must then be observations).
    """
    beta0, log_phi0 = start or glm_start(problem.y, problem.X, problem.offset)
    k = problem.n_terms
    tail = [beta0] + ([[log_phi0]] if problem.family == NB2 else [])
    combos = itertools.product(_GRID, repeat=k) if exhaustive else ((t,) * k for t in _STARTS)
    fit = None
    for thetas in combos:  # each descent ends where it meets the best optimum so far
        x0 = np.concatenate([thetas, *tail])
        x, D, u = _minimise(problem, x0, np.zeros(len(problem.term)), fit)
        if fit is None or D < fit.deviance - _ROUNDING * (1 + abs(fit.deviance)):
            candidate = _finish(problem, x, u)
            if fit is None or candidate.deviance < fit.deviance:
                fit = candidate
    assert fit is not None
    for _ in range(k):
        better = None
        for x0 in _escape(problem, fit):
            x, D, u = _minimise(problem, x0, fit.u, fit)
            if D < fit.deviance - _ROUNDING * (1 + abs(fit.deviance)):
                candidate = _finish(problem, x, u)
                if candidate.deviance < (better or fit).deviance:
                    better = candidate
        if better is None:
            break
        fit = better
    return fit
