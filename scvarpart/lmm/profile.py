"""Profile-likelihood intervals of the variance components (lme4's ``confint(method="profile")``).

The profile of a component's variance ``V_k`` is the criterion minimised over every
other parameter with ``V_k`` held at a value ``c``; its interval is where the profile
has risen above the optimum by less than a ``chi^2_1`` quantile (lme4 profiles the
standard deviation, ``sqrt(V_k)``, which gives the same interval). Unlike the bounds of
:mod:`.intervals`, which hold the other variance ratios at their estimates, the others
here move: a variance that another factor can stand in for gets the wider interval it
should.

**The profile from the engines' criterion.** The engines minimise the criterion
``P(theta)`` already profiled over ``sigma^2`` (``sigma^2(theta) = r2(theta) / nu``). A
random term's variance, and the residual's, are ``V_k = sigma^2 g_k(theta)``, so
holding ``V_k = c`` fixes ``sigma^2 = c / g_k(theta)``, and the criterion at that
``sigma^2``, from ``log|V| + r2 / sigma^2 + nu log(2 pi sigma^2)``, is::

    D(theta; c) = P(theta) + nu (t - 1 - log t),   t = sigma^2(theta) g_k(theta) / c

(the same for REML, with ``nu = n - p``). The profile is ``min_theta D``: a smooth
problem in the engine's own coordinates, minimised by projected Newton with the exact
Hessian of ``P`` and, for the penalty, the Gauss-Newton term ``nu t^-2 grad(t)
grad(t)'`` (``grad(t)`` by central differences of the engine's estimates). At ``c
= 0`` the profile is the fit without the term (its coordinates held at 0).

**The bounds.** Per bound, Illinois steps on the signed root of the rise, in ``log c``,
each profile started from the previous one's minimiser. From an estimate of 0 the lower
bound is 0 and the upper one is found from ``c`` of the order of ``sigma^2`` over the
observations per level upward; the critical value there is the caller's (lme4 uses the
two-sided one; the 50:50 boundary mixture would use the ``2 level - 1`` quantile).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as st

from ..suffstats import ResponseStats
from .profiled import ProfiledDeviance
from .roots import expand_bracket, illinois

__all__ = ["profile_bounds"]

#: ``f(theta, sigma2, beta) -> (G, C)``: the variance of every component.
VarianceFunction = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

# Inner minimisation: iterations, convergence on the Newton decrement, relative
# step of the differences of the ratio t.
_INNER_ITER, _INNER_TOL, _FD_STEP = 60, 1e-11, 1e-5
# Root finding: bracket expansions, Illinois iterations, tolerance on the root of the rise.
_MAX_EXPAND, _MAX_ITER, _TOL = 40, 60, 1e-7


class _Profile:
    """The profile of one component's variance for a set of genes (rows)."""

    def __init__(self, eng, stats, variances, comp, coords, x_hat, f_hat, scale):
        self.eng, self.stats, self.variances, self.comp = eng, stats, variances, comp
        self.coords = coords  # the component's coordinates (empty for the residual)
        self.lower = _lower_bounds(eng, x_hat.shape[1])
        self.x_hat, self.f_hat = x_hat, f_hat
        self.x_last = x_hat.copy()  # warm starts, per row
        # per row, the variance from which a bound's search starts on the log scale
        self.scale = scale

    def _component(self, x, rows):
        """Criterion and the component's variance at ``x``."""
        sub = self.stats.subset(rows)
        f, sigma2, beta = self.eng.estimates(x, sub)
        v = self.variances(self.eng.to_theta(x), sigma2, beta)[:, self.comp]
        return f, v

    def _objective(self, x, rows, c):
        f, v = self._component(x, rows)
        with np.errstate(all="ignore"):
            ratio = v / c
            return f + self.eng.nu * (ratio - 1 - np.log(ratio))

    def _start(self, rows, c):
        """Warm starts with the component rescaled to ``c``."""
        x = self.x_last[rows].copy()
        if len(self.coords) == 0:
            return x
        _, v = self._component(x, rows)
        with np.errstate(all="ignore"):
            ratio = c / v
        power = 1.0 if self.eng.coordinates == "gamma" else 0.5
        zero = ~(v > 0) | ~np.isfinite(ratio)
        scale = np.where(zero, 1.0, ratio**power)
        x[:, self.coords] *= scale[:, None]
        if zero.any():  # from 0: the variance per unit of the coordinates, at 1
            x0 = x[zero]
            x0[:, self.coords] = 1.0
            _, v1 = self._component(x0, rows[zero])
            x0[:, self.coords] = (c[zero] / v1)[:, None] ** power
            x[zero] = x0
        return x

    def variances_at(self, rows, c=None):
        """Every component's variance at the rows' last minimisers (of ``D(.; c)``).

        There ``sigma^2`` is the one that gives the profiled component the variance
        ``c``: the random and residual variances scale with it, the fixed ones do not.
        """
        x = self.x_last[rows]
        _, sigma2, beta = self.eng.estimates(x, self.stats.subset(rows))
        theta = self.eng.to_theta(x)
        if c is not None:
            v = self.variances(theta, sigma2, beta)[:, self.comp]
            sigma2 = sigma2 * c / v
        return self.variances(theta, sigma2, beta)

    def minimum(self, rows, c):
        """``min D`` per row at the variances ``c``; ``None``: the fit without the term."""
        fixed = np.zeros((len(rows), self.x_hat.shape[1]), dtype=bool)
        if c is None:  # the variance at 0: the term's coordinates held there
            x = self.x_last[rows].copy()
            x[:, self.coords] = 0.0
            fixed[:, self.coords] = True
        else:
            x = self._start(rows, c)
        x, f = _minimise(self, x, rows, c, fixed)
        self.x_last[rows] = np.where(np.isfinite(f)[:, None], x, self.x_last[rows])
        return f


def _lower_bounds(eng, K):
    if eng.coordinates == "theta":
        return np.asarray(eng.lower, dtype=float)
    return np.zeros(K)


def _ratio_gradient(prof: _Profile, x, rows, c):
    """``d t / dx``, ``t`` the variance at ``x`` over ``c``: central differences.

    Forward differences at a bound.
    """
    K = x.shape[1]
    out = np.empty(x.shape)
    for j in range(K):
        h = _FD_STEP * np.maximum(np.abs(x[:, j]), 1e-3)
        up, down = x.copy(), x.copy()
        up[:, j] += h
        down[:, j] = np.maximum(x[:, j] - h, prof.lower[j])
        _, vu = prof._component(up, rows)
        _, vd = prof._component(down, rows)
        out[:, j] = (vu - vd) / (up[:, j] - down[:, j]) / c
    return out


def _minimise(prof: _Profile, x, rows, c, fixed):
    """Projected Newton on ``D(x; c)`` (``P`` alone where ``c`` is None), per row."""
    eng, nu, lower = prof.eng, prof.eng.nu, prof.lower
    penalised = c is not None
    f = prof._objective(x, rows, c) if penalised else eng.deviance(x, prof.stats.subset(rows))
    active = np.flatnonzero(np.isfinite(f))
    for _ in range(_INNER_ITER):
        if len(active) == 0:
            break
        r = rows[active]
        xa = x[active]
        _, g, H = eng.derivatives(xa, prof.stats.subset(r))
        if penalised:
            _, v = prof._component(xa, r)
            ratio = v / c[active]
            d_ratio = _ratio_gradient(prof, xa, r, c[active])
            g = g + (nu * (1 - 1 / ratio))[:, None] * d_ratio
            H = H + (nu / ratio**2)[:, None, None] * np.einsum("gi,gj->gij", d_ratio, d_ratio)
        hold = fixed[active] | ((xa <= lower) & (g > 0))
        step, decrement = _newton_step(g, H, hold)
        done = ~(decrement > _INNER_TOL)
        t = np.ones(len(active))
        moving = ~done
        for _ in range(40):
            if not moving.any():
                break
            m = np.flatnonzero(moving)
            trial = np.maximum(xa[m] + t[m, None] * step[m], lower)
            ft = (
                prof._objective(trial, r[m], c[active][m])
                if penalised
                else eng.deviance(trial, prof.stats.subset(r[m]))
            )
            ok = np.isfinite(ft) & (ft <= f[active][m])
            accepted = m[ok]
            x[active[accepted]] = trial[ok]
            f[active[accepted]] = ft[ok]
            moving[accepted] = False
            t[m[~ok]] /= 2
            stalled = m[~ok][t[m[~ok]] < 1e-10]
            done[stalled] = True
            moving[stalled] = False
        active = active[~done]
    return x, f


def _newton_step(g, H, hold):
    """Newton step on the free coordinates (Hessian made positive definite)."""
    K = g.shape[1]
    free = ~hold
    pair = free[:, :, None] & free[:, None, :]
    Hf = np.where(pair, H, 0.0)
    Hf[:, np.arange(K), np.arange(K)] += hold
    gf = np.where(free, g, 0.0)
    w, U = np.linalg.eigh(np.nan_to_num(Hf))
    floor = 1e-10 * np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-300)
    w = np.maximum(np.abs(w), floor)
    proj = np.einsum("gki,gk->gi", U, gf)
    step = -np.einsum("gik,gk->gi", U, proj / w)
    decrement = np.einsum("gi,gi->g", proj**2, 1 / w)
    return np.where(free, step, 0.0), decrement


def _bound(prof: _Profile, rows, v_hat, crit, direction):
    """Every variance where the profile has risen by ``crit`` (``direction`` +1 or -1).

    ``(rows, C)``, the profiled component's being the bound.
    """
    root = np.sqrt(crit[rows] if np.ndim(crit) else np.full(len(rows), crit))
    at0 = ~(v_hat[rows] > 0)
    origin = np.log(prof.scale[rows])
    prof.x_last[rows] = prof.x_hat[rows]

    def gap(s, i):
        """The root of the rise less the target's at ``s``, for ``rows[i]``."""
        c = np.exp(origin[i] + direction * s)
        with np.errstate(all="ignore"):
            rise = prof.minimum(rows[i], c) - prof.f_hat[rows[i]]
            return np.sqrt(np.maximum(rise, 0.0)) - root[i]

    # from 0: far below the scale, where the profile has not risen yet
    a, fa = np.where(at0, -15.0, 0.0), -root
    b = np.full(len(rows), 0.5)
    fb = gap(b, np.arange(len(rows)))
    expand_bracket(gap, a, fa, b, fb, _MAX_EXPAND)
    s = illinois(gap, a, fa, b, fb, _MAX_ITER, _TOL)
    out = np.exp(origin + direction * s)
    out[~(fb >= 0)] = np.nan  # not reached: NaN throughout
    prof.minimum(rows, out)  # the minimiser at the bound, for the other variances there
    return prof.variances_at(rows, out)


def profile_bounds(
    eng: ProfiledDeviance,
    stats: ResponseStats,
    fit,
    variances: VarianceFunction,
    components: Sequence[tuple[int, np.ndarray]],
    level: float = 0.95,
    *,
    boundary_level: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Profile-likelihood intervals of component variances.

    Parameters
    ----------
    eng
        The engine the genes were fitted with.
    stats
        The genes' statistics, in the units of ``fit``.
    fit
        The :class:`~scvarpart.lmm.LMMFit` (``theta``, ``deviance``, ``sigma2``).
    variances
        The component variances from the parameters (random terms and residual: each
        ``sigma^2`` times a function of ``theta``).
    components
        ``(column of variances, the term's coordinates in the engine's points)`` per
        component profiled; an empty array of coordinates for the residual.
    level
        Two-sided level of each interval: the profile's rise is below the ``level``
        quantile of ``chi^2_1`` inside it (lme4's convention).
    boundary_level
        For a variance estimated at 0, the upper bound's rise is the ``boundary_level``
        quantile of ``chi^2_1`` (default ``level``, as lme4; ``2 level - 1`` under the
        50:50 mixture of ``chi^2_0`` and ``chi^2_1``).

    Returns
    -------
    low, high
        ``(G, P, C)``: per component profiled (``P``), every component's variance where
        the profile reaches its lower and its upper bound (the profiled one's is the
        bound; the others are at their conditional optimum there). NaN where the fit
        failed or the bound was not found.
    """
    G = len(fit.theta)
    ok = np.flatnonzero(fit.error == "")
    if len(ok) == 0:
        n_comp = variances(fit.theta[:1], fit.sigma2[:1], fit.beta[:1]).shape[1]
        empty = np.full((G, len(components), n_comp), np.nan)
        return empty, empty.copy()
    sub = stats.subset(ok)
    x_hat = np.ascontiguousarray(
        fit.theta[ok] ** 2 if eng.coordinates == "gamma" else fit.theta[ok]
    )
    f_hat = eng.deviance(x_hat, sub)
    _, sigma2, beta = eng.estimates(x_hat, sub)
    V = variances(eng.to_theta(x_hat), sigma2, beta)
    low = np.full((G, len(components), V.shape[1]), np.nan)
    high = np.full((G, len(components), V.shape[1]), np.nan)
    interior = float(st.chi2.ppf(level, 1))
    at_bound = float(st.chi2.ppf(level if boundary_level is None else boundary_level, 1))
    rows = np.arange(len(ok))
    for i, (comp, coords) in enumerate(components):
        v_hat = V[:, comp]
        zero = ~(v_hat > 0)
        # from 0, a variance of sigma^2 over the observations per level
        scale = np.where(zero, sigma2 * _per_level_scale(eng, coords), v_hat)
        coords = np.asarray(coords, dtype=int)
        prof = _Profile(eng, sub, variances, comp, coords, x_hat, f_hat, scale)
        crit = np.where(zero, at_bound, interior)
        high[ok, i] = _bound(prof, rows, v_hat, crit, +1)
        # at c = 0 the profile is the fit without the term: 0 is inside if it has
        # not risen by the critical value there
        prof.x_last[:] = x_hat
        if len(prof.coords):
            f0 = prof.minimum(rows, None)
            zero |= f0 - f_hat < interior
        low[ok, i] = prof.variances_at(rows)  # the fit without the term, or the estimate
        inside = np.flatnonzero(~zero)
        if len(inside):
            low[ok[inside], i] = _bound(prof, inside, v_hat, interior, -1)
    return low, high


def _per_level_scale(eng, coords) -> float:
    """A variance ratio at which a term's level means start to inform its variance."""
    if len(coords) == 0:
        return 1.0
    scale = getattr(eng, "gamma_scale", None)
    if scale is None or eng.coordinates != "gamma":
        return 1e-3
    return float(np.min(np.asarray(scale)[np.asarray(coords)]))
