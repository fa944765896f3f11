"""Standard errors and confidence intervals of the variance components, fractions and rho.

From the fit alone, without touching the data again (the parametric bootstrap of
:mod:`.bootstrap` is the other route):

**Covariance of the estimates.** The criterion is profiled over ``sigma^2`` (and, for ML,
``beta``), so the inverse of its Hessian in ``theta`` is exactly the ``theta`` block of
the inverse observed information: ``Cov(theta) = 2 H^-1`` (the criterion is ``-2 log L``).
The blocked engines keep the average information (its expectation) instead. A
coordinate at 0 is on the boundary: it is held there (a conditional covariance of the
others), and its component gets the one-sided interval below. ``sigma^2 = r2(theta) /
nu`` varies with ``theta`` and, given ``theta``, with variance ``2 sigma^4 / nu``; the
fixed effects given ``theta`` with lme4's ``vcov`` (their information is orthogonal to
the variances'). A component's variance is a function of all three; its Jacobian in
``theta`` (through ``sigma^2(theta)`` and ``beta(theta)`` too) is taken by central
differences of the engine's estimates, so every term kind (slopes, kinship, weights) is
covered by the same code that computes the estimates.

**Intervals.** A fraction ``V_j / (V_j + S_j)`` (``S_j``: the sum of the other
components) is ``1 / (1 + S_j / V_j)``; with ``V_j`` and ``S_j`` each a scaled
chi-squared of Satterthwaite's degrees of freedom, their ratio is a scaled F, which
gives each fraction's lower bound (Wald's on the logit scale where it is undefined):
the skew of ``S_j`` when a factor with few levels is in it makes the fraction's lower
tail long, which a Wald bound on any scale misses. A random term's lower bound is 0
where the likelihood-ratio test of its variance = 0 (:mod:`.lrt`, its p-value with the
null's point mass at 0 of :mod:`.zero_mass`, as the tests report it) does not reject at
level ``1 - level`` (0 is then inside the likelihood-ratio region: test inversion). A
random term's upper bound is the larger of the F bound and a likelihood-ratio bound: the
fraction at the variance above the estimate where the criterion, the other variance
ratios held at their estimates, has risen by the ``level`` quantile of ``chi^2_1`` (by
its ``2 * level - 1`` quantile from a variance at 0, under the 50:50 mixture of
``chi^2_0`` and ``chi^2_1`` on the boundary; Self & Liang 1987); with 3 or 4 levels it
lies many times above the estimate, as it should, while the F bound carries the other
components' uncertainty. Where the variance is well determined (Satterthwaite's
degrees of freedom ``2 V^2 / Var(V)`` at least :data:`_WALD_DOF`, as for terms with
hundreds of levels) the Wald bound stands in for the likelihood ratio's. Fixed terms'
upper bounds are the larger of the F and the logit-scale Wald bounds; their lower
bounds are 0 where the Wald test of the term's coefficients does not reject (test
inversion again: a covariate without effect gets an interval from 0). The residual's
bounds are the further of Satterthwaite's scaled chi-squared approximation of the sum of
the other variances (``sigma^2`` itself is estimated from every observation) and the
likelihood-ratio bounds along the ray that scales every random variance ratio together;
they reach its fraction with another component at a bound where the delta-method
variances behind Satterthwaite's interval miss that bound (:func:`_coherent_residual`;
the fractions sum to 1). Rho's interval is Wald's on the log scale, widened to rho at the
batch and signal terms' likelihood-ratio bounds: ``[0, u]`` when the batch variance is 0
(or may be), ``[l, inf]`` when the signal's is.
``benchmarks/interval_coverage.py`` measures the coverage.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from ..suffstats import ResponseStats
from ..varpart.fractions import logit_interval
from .profiled import ProfiledDeviance
from .roots import expand_bracket, illinois

__all__ = ["Intervals", "logit_interval", "theta_covariance", "wald_intervals"]

#: ``f(theta, sigma2, beta) -> (G, C)``: the variance of every component from the
#: parameters (centred or not: only the intercept differs, which adds no variance).
VarianceFunction = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

# Relative step of the central differences in theta, and its floor.
_STEP, _MIN_STEP = 1e-4, 1e-8
# Satterthwaite's degrees of freedom of a variance above which its Wald interval (on the
# logit scale of its fraction) stands in for the likelihood-ratio bound: a relative
# standard error below 0.2, where chi-squared's skew is small (many-level terms).
_WALD_DOF = 50.0
# Root finding of the likelihood-ratio bounds: iterations, and the tolerance on the
# square root of the criterion's rise.
_MAX_EXPAND, _MAX_ITER, _TOL = 60, 60, 1e-8


@dataclass(frozen=True)
class Intervals:
    """Per gene: standard errors of the component variances and intervals.

    Attributes
    ----------
    variance_se
        ``(G, C)`` standard errors of the variances (NaN for a variance at 0: its interval
        is one-sided).
    low, high
        ``(G, C)`` bounds of the fractions.
    rho_low, rho_high
        ``(G,)`` bounds of rho (``None`` without batch and signal).
    """

    variance_se: np.ndarray
    low: np.ndarray
    high: np.ndarray
    rho_low: np.ndarray | None = None
    rho_high: np.ndarray | None = None


def theta_covariance(theta: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """``2 H^-1`` over the coordinates not at 0, zero rows for those at 0.

    ``(G, K, K)``; NaN for genes whose free block is not positive definite (not a
    minimum, or a direction the data do not determine).
    """
    G, K = theta.shape
    free = (theta != 0) & np.isfinite(theta)
    pair = free[:, :, None] & free[:, None, :]
    H = np.where(pair, hessian, 0.0)
    H[:, np.arange(K), np.arange(K)] += ~free
    cov = np.full((G, K, K), np.nan)
    ok = np.flatnonzero(np.isfinite(H).all(axis=(1, 2)))
    if len(ok) == 0:
        return cov
    w, U = np.linalg.eigh(H[ok])
    scale = np.abs(w).max(axis=1, keepdims=True)
    definite = (w > 1e-12 * scale).all(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.einsum("gik,gk,gjk->gij", U, 1.0 / w, U)
    inv[~definite] = np.nan
    cov[ok] = 2.0 * np.where(pair[ok], inv, 0.0)
    cov[ok[~definite]] = np.nan
    return cov


def _engine_point(eng: ProfiledDeviance, theta: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(theta**2 if eng.coordinates == "gamma" else theta)


def _at(eng, stats: ResponseStats, theta: np.ndarray, variances: VarianceFunction):
    """The component variances at ``theta``, ``sigma^2`` and ``beta`` estimated there."""
    _, sigma2, beta = eng.estimates(_engine_point(eng, theta), stats)
    return variances(theta, sigma2, beta)


def _theta_jacobian(eng, stats, theta, variances: VarianceFunction) -> np.ndarray:
    """``dV / d theta``, ``(G, C, K)``, through ``sigma^2(theta)`` and ``beta(theta)``."""
    cols = []
    for i in range(theta.shape[1]):
        h = np.maximum(_STEP * np.abs(theta[:, i]), _MIN_STEP)
        up, down = theta.copy(), theta.copy()
        up[:, i] += h
        down[:, i] -= h
        diff = _at(eng, stats, up, variances) - _at(eng, stats, down, variances)
        cols.append(diff / (2 * h[:, None]))
    return np.stack(cols, axis=2)


def _variance_covariance(eng, stats, fit, variances: VarianceFunction) -> np.ndarray:
    """``Cov(V)`` of the component variances, ``(G, C, C)``."""
    theta, sigma2, beta = fit.theta, fit.sigma2, fit.beta
    J = _theta_jacobian(eng, stats, theta, variances)
    cov = np.einsum("gck,gkl,gdl->gcd", J, theta_covariance(theta, fit.hessian), J)
    # sigma^2 given theta: variance 2 sigma^4 / nu; V is linear in it
    v_up = variances(theta, sigma2 * 1.5, beta)
    v_down = variances(theta, sigma2 * 0.5, beta)
    ds = (v_up - v_down) / sigma2[:, None]
    cov += np.einsum("gc,gd->gcd", ds, ds) * (2 * sigma2**2 / eng.nu)[:, None, None]
    # beta given theta: lme4's vcov; V is at most quadratic in it, so differences are exact
    p = beta.shape[1]
    Jb = np.zeros((*ds.shape, p))
    for j in range(1, p):  # the intercept adds no variance
        h = np.maximum(np.abs(beta[:, j]), 1.0)
        up, down = beta.copy(), beta.copy()
        up[:, j] += h
        down[:, j] -= h
        Jb[:, :, j] = (variances(theta, sigma2, up) - variances(theta, sigma2, down)) / (
            2 * h[:, None]
        )
    cov += np.einsum("gcj,gjl,gdl->gcd", Jb, fit.beta_cov, Jb)
    return cov


def _rise_points(
    eng,
    stats,
    fit,
    directions: np.ndarray,
    genes: np.ndarray,
    crit: np.ndarray,
    base: np.ndarray | None = None,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """``theta`` where the criterion has risen by ``crit`` along each direction.

    From each gene's estimate, the other coordinates held (``directions``: ``(n, K)``
    rows of 0 and 1, one per entry of ``genes``). The square root of the rise is nearly
    linear in ``log theta`` from an estimate inside and in ``theta`` from one at 0 (where
    the rise is quadratic in ``theta``), so Illinois steps on it in that coordinate ``s``
    take few evaluations; the bracket starts from the quadratic model's guess, doubled
    until the rise is reached. ``base``: the criterion at the estimates of ``genes``.
    ``start``: the coordinates' common value at the estimate (the mean of those the
    directions move); with ``directions`` the estimates themselves and ``start`` 1, the
    path is the ray ``theta e^s``.
    """
    theta0 = fit.theta[genes]
    sub = stats.subset(genes)
    if base is None:
        base = eng.deviance(_engine_point(eng, theta0), sub)
    if start is None:
        start = np.einsum("nk,nk->n", theta0, directions) / directions.sum(axis=1)
    inside = start > 0
    root = np.sqrt(crit)

    def step(s: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The increment of ``theta`` along the directions ``rows`` at ``s``."""
        return np.where(inside[rows], start[rows] * np.expm1(s), s)

    def gap(s: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``sqrt(rise) - sqrt(crit)`` at ``s`` (NaN where the criterion failed)."""
        theta = theta0[rows] + step(s, rows)[:, None] * directions[rows]
        with np.errstate(all="ignore"):
            rise = eng.deviance(_engine_point(eng, theta), sub.subset(rows)) - base[rows]
            return np.sqrt(np.maximum(rise, 0.0)) - root[rows]

    curv = np.einsum("nk,nkl,nl->n", directions, fit.hessian[genes], directions)
    with np.errstate(all="ignore"):
        t = np.sqrt(2 * crit / curv)  # the quadratic model's increment
        guess = np.where(inside, np.log1p(t / start), t)
    hi = np.where(np.isfinite(guess) & (guess > 0), guess, 1.0)
    every = np.arange(len(genes))
    f_hi = gap(hi, every)
    a, fa = np.zeros_like(hi), -root  # the bracket's lower end: the rise not reached
    expand_bracket(gap, a, fa, hi, f_hi, _MAX_EXPAND)
    s_end = illinois(gap, a, fa, hi, f_hi, _MAX_ITER, _TOL)
    return theta0 + step(s_end, every)[:, None] * directions


def _residual_ray(eng, stats, fit, variances: VarianceFunction, base, crit):
    """The residual fraction's likelihood-ratio bounds along the ray ``c theta``.

    Every random variance ratio scaled together (``sigma^2 gamma_j`` with ``gamma`` ->
    ``c^2 gamma``: their shares held), up and down from the estimate, to where the
    criterion has risen by ``crit``; toward ``c = 0`` the rise may never get there, and
    the bound is then the fraction without random effects. Satterthwaite's interval of
    the random variances' sum holds the shape of a scaled chi-squared; this bound
    follows the criterion's own shape. ``(G,)`` lower and upper bounds, NaN for genes
    without a positive random variance.
    """
    low, high = np.full(len(base), np.nan), np.full(len(base), np.nan)
    genes = np.flatnonzero((fit.theta != 0).any(axis=1))
    if len(genes) == 0:
        return low, high
    theta0, sub, base0 = fit.theta[genes], stats.subset(genes), base[genes]
    ones = np.ones(len(genes))
    up = _rise_points(eng, stats, fit, theta0, genes, crit * ones, base0, start=ones)
    root = np.sqrt(crit)

    def gap(u: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``sqrt(rise) - sqrt(crit)`` at ``(1 - u) theta``."""
        theta = theta0[rows] * (1.0 - u)[:, None]
        with np.errstate(all="ignore"):
            rise = eng.deviance(_engine_point(eng, theta), sub.subset(rows)) - base0[rows]
            return np.sqrt(np.maximum(rise, 0.0)) - root

    every = np.arange(len(genes))
    a, b = np.zeros(len(genes)), ones.copy()
    u = illinois(gap, a, -root * ones, b, gap(b, every), _MAX_ITER, _TOL)  # 1 if not reached
    down = theta0 * (1.0 - u)[:, None]
    for bounds, theta in ((low, up), (high, down)):
        _, s_b, b_b = eng.estimates(_engine_point(eng, theta), sub)
        V_b = variances(theta, s_b, b_b)
        bounds[genes] = V_b[:, -1] / V_b.sum(axis=1)
    return low, high


def wald_intervals(
    eng: ProfiledDeviance,
    stats: ResponseStats,
    fit,
    variances: VarianceFunction,
    estimates: np.ndarray,
    term_coords: Sequence[np.ndarray],
    level: float,
    roles: tuple[np.ndarray, np.ndarray] | None = None,
    drop_pvalue: np.ndarray | None = None,
    fixed_columns: Sequence[np.ndarray] = (),
) -> Intervals:
    """Delta-method intervals of the fractions (and rho), one-sided at the boundary.

    Parameters
    ----------
    eng
        The engine the genes were fitted with.
    stats
        The genes' statistics, in the units of ``fit``.
    fit
        The :class:`~scvarpart.lmm.LMMFit` (its ``theta``, ``sigma2``, ``beta``,
        ``beta_cov`` and Hessian in ``theta``).
    variances
        The component variances from the parameters (the estimates' own function).
    estimates
        ``(G, C)`` the fitted component variances (random terms first, in ``theta``'s
        term order).
    term_coords
        Per random term, its diagonal coordinates in ``theta``.
    level
        The intervals' level.
    roles
        Boolean masks over the components of batch and signal, for rho.
    drop_pvalue
        ``(G, k)`` the p-value of each random term's likelihood-ratio test of variance = 0
        (:mod:`.lrt`, with the null's point mass at 0): where it is at least ``1 - level``,
        0 is inside the likelihood-ratio region and the interval starts at 0 (test
        inversion, consistent with the tests' p-values; a Wald interval on the logit scale
        never reaches 0).
    fixed_columns
        Per fixed term (the components after the random terms), its columns of
        ``beta``: where the Wald test of its coefficients = 0 does not reject at level
        ``1 - level``, its interval starts at 0 (test inversion, as for random terms).
    """
    G, C = estimates.shape
    se = np.full((G, C), np.nan)
    low, high = np.full((G, C), np.nan), np.full((G, C), np.nan)
    rho_low = rho_high = None
    if roles is not None:
        rho_low, rho_high = np.full(G, np.nan), np.full(G, np.nan)
    ok = np.flatnonzero(fit.error == "")
    if len(ok) == 0:
        return Intervals(se, low, high, rho_low, rho_high)
    sub = stats.subset(ok)
    part = fit.subset(ok)
    V = estimates[ok]
    cov_v = _variance_covariance(eng, sub, part, variances)
    f = V / V.sum(axis=1, keepdims=True)
    k = len(term_coords)
    lo, hi, f_hi, se_f = _closed_form_bounds(V, cov_v, level, k)
    z = float(st.norm.ppf(0.5 + level / 2))
    se_v = np.sqrt(np.clip(np.diagonal(cov_v, axis1=1, axis2=2), 0, None))
    zero = V == 0
    se_v[zero] = np.nan
    lo[zero], hi[zero] = 0.0, np.nan
    if drop_pvalue is not None:
        lo[:, :k][drop_pvalue[ok] >= 1 - level] = 0.0
    for i, cols in enumerate(fixed_columns):
        lo[_wald_holds_zero(part.beta, part.beta_cov, cols, level), k + i] = 0.0
    # one-sided bounds of the random terms at 0
    upper_v = np.full(V.shape, np.nan)  # each zero term's variance at its bound
    # rho with each random term at its upper bound (the others' ratios held)
    rho_at = np.full((len(V), k), np.nan)
    base = eng.deviance(_engine_point(eng, part.theta), sub)
    interior = float(st.chi2.ppf(level, 1))
    boundary = float(st.chi2.ppf(2 * level - 1, 1))  # the 50:50 mixture's
    with np.errstate(all="ignore"):
        dof = 2 * V**2 / np.diagonal(cov_v, axis1=1, axis2=2)  # Satterthwaite's
    for j, coords in enumerate(term_coords):
        # where the variance is well determined, the Wald bound is as good and cheaper
        genes = np.flatnonzero(np.isfinite(V[:, j]) & ~(dof[:, j] >= _WALD_DOF))
        if len(genes) == 0:
            continue
        d = np.zeros((len(genes), fit.theta.shape[1]))
        d[:, coords] = 1.0
        rise = np.where(zero[genes, j], boundary, interior)
        theta_b = _rise_points(eng, sub, part, d, genes, rise, base[genes])
        _, s_b, b_b = eng.estimates(_engine_point(eng, theta_b), sub.subset(genes))
        V_b = variances(theta_b, s_b, b_b)
        hi[genes, j] = V_b[:, j] / V_b.sum(axis=1)
        if roles is not None:
            with np.errstate(all="ignore"):
                rho_at[genes, j] = V_b[:, roles[0]].sum(axis=1) / V_b[:, roles[1]].sum(axis=1)
        at0 = zero[genes, j]
        upper_v[genes[at0], j] = (V_b[:, j] * V[genes].sum(axis=1) / V_b.sum(axis=1))[at0]
    # the likelihood-ratio bound holds the other variance ratios: Satterthwaite's F
    # bound adds their uncertainty in the denominator
    hi[:, :k] = np.fmax(hi[:, :k], np.where(zero[:, :k], np.nan, f_hi[:, :k]))
    ray_low, ray_high = _residual_ray(eng, sub, part, variances, base, interior)
    lo[:, -1], hi[:, -1] = np.fmin(lo[:, -1], ray_low), np.fmax(hi[:, -1], ray_high)
    _coherent_residual(lo, hi, f, se_f, z)
    se[ok], low[ok], high[ok] = se_v, lo, hi
    if roles is not None and rho_low is not None and rho_high is not None:
        rho_low[ok], rho_high[ok] = _rho_interval(V, cov_v, upper_v, roles, z, rho_at)
        # every batch variance may be 0: so may rho
        rho_low[ok[(lo[:, roles[0]] == 0).all(axis=1)]] = 0.0
    return Intervals(se, low, high, rho_low, rho_high)


def _closed_form_bounds(V, cov_v, level, k):
    """The bounds that need no further evaluation of the criterion.

    Lower bounds of every component but the residual: Satterthwaite's F
    (:func:`_ratio_intervals`), or Wald's on the logit scale where that is undefined.
    Upper bounds of the fixed terms: the larger of the two. The residual's: from
    Satterthwaite's interval of the sum of the others (:func:`_residual_interval`).
    Returns ``lo``, ``hi``, the F upper bounds (for the random terms, whose upper
    bound the caller makes from them and the likelihood ratio's) and the fractions'
    delta-method standard errors.
    """
    total = V.sum(axis=1)
    f = V / total[:, None]
    A = (np.eye(V.shape[1])[None] - f[:, :, None]) / total[:, None, None]
    cov_f = np.einsum("gij,gjk,glk->gil", A, cov_v, A)
    se_f = np.sqrt(np.clip(np.diagonal(cov_f, axis1=1, axis2=2), 0, None))
    lo, hi = logit_interval(f, se_f, float(st.norm.ppf(0.5 + level / 2)))
    f_lo, f_hi = _ratio_intervals(V, cov_v, level)
    lo[:, :-1] = np.where(np.isfinite(f_lo), f_lo, lo[:, :-1])
    hi[:, k:-1] = np.fmax(hi[:, k:-1], f_hi[:, k:])
    lo[:, -1], hi[:, -1] = _residual_interval(V, cov_v, level)
    return lo, hi, f_hi, se_f


def _wald_holds_zero(beta, beta_cov, cols, level) -> np.ndarray:
    """Where the Wald test of ``beta[:, cols] = 0`` does not reject at ``1 - level``."""
    b = beta[:, cols]
    cov = beta_cov[:, cols][:, :, cols]
    with np.errstate(all="ignore"):
        stat = np.einsum("gi,gi->g", b, np.linalg.solve(cov, b[:, :, None])[:, :, 0])
    return stat < st.chi2.ppf(level, len(cols))


def _ratio_intervals(V, cov_v, level):
    """Satterthwaite's F interval of every component's fraction but the residual's.

    The fraction ``V_j / (V_j + S_j)`` is ``1 / (1 + S_j / V_j)``, and with each of
    ``V_j`` and ``S_j`` (the sum of the others) a scaled chi-squared of Satterthwaite's
    degrees of freedom ``2 V^2 / Var(V)``, their ratio is a scaled F (the interval of
    an intraclass correlation, approximately; exact for a balanced one-way design).
    What it adds to a Wald interval is the skew of ``S_j``: a factor with few levels in
    the denominator makes the fraction's lower tail long. ``(G, C - 1)`` each, NaN
    where a variance or its sum is 0.
    """
    C = V.shape[1]
    low, high = np.full((len(V), C - 1), np.nan), np.full((len(V), C - 1), np.nan)
    tail = (1 - level) / 2
    total = V.sum(axis=1)
    var_total = np.einsum("gij->g", cov_v)
    for j in range(C - 1):
        S = total - V[:, j]
        with np.errstate(all="ignore"):
            var_s = var_total - 2 * cov_v[:, j].sum(axis=1) + cov_v[:, j, j]
            nu_j, nu_s = 2 * V[:, j] ** 2 / cov_v[:, j, j], 2 * S**2 / var_s
            ratio = S / V[:, j]
            ok = (V[:, j] > 0) & (S > 0) & (nu_j > 0) & (nu_s > 0)
            low[ok, j] = 1 / (1 + ratio[ok] * st.f.ppf(1 - tail, nu_s[ok], nu_j[ok]))
            high[ok, j] = 1 / (1 + ratio[ok] * st.f.ppf(tail, nu_s[ok], nu_j[ok]))
    return low, high


def _scaled_chi2(value, variance, level):
    """Satterthwaite's interval of a variance estimate (or a sum of them).

    ``value nu / true ~ chi^2_nu`` with ``nu = 2 value^2 / variance`` (Satterthwaite
    1946): with few levels, a variance estimate is skewed as a chi-squared with few
    degrees of freedom, which a normal approximation on any scale misses.
    """
    with np.errstate(all="ignore"):
        nu = 2 * value**2 / variance
        return (
            value * nu / st.chi2.ppf((1 + level) / 2, nu),
            value * nu / st.chi2.ppf((1 - level) / 2, nu),
        )


def _residual_interval(V, cov_v, level):
    """Bounds of the residual's fraction ``sigma^2 / (sigma^2 + S)``, ``(G,)`` each.

    ``sigma^2`` is estimated from every observation; the uncertainty is that of ``S``,
    the sum of the other components: Satterthwaite's interval of ``S``.
    """
    e, S = V[:, -1], V[:, :-1].sum(axis=1)
    rest = np.ones(V.shape[1])
    rest[-1] = 0.0
    s_low, s_high = _scaled_chi2(S, np.einsum("i,gij,j->g", rest, cov_v, rest), level)
    with np.errstate(all="ignore"):
        low, high = e / (e + s_high), e / (e + s_low)
    # S = 0 (every other variance at 0): the residual is all there is, and the lower
    # bound comes from the others' upper bounds (:func:`_coherent_residual`)
    return np.where(S > 0, low, np.nan), np.where(S > 0, high, 1.0)


def _coherent_residual(lo, hi, f, se_f, z):
    """The residual's bounds made coherent with the others' (last column; in place).

    The fractions sum to 1: where another component's fraction is at one of its bounds,
    the others keeping their shares of the rest, the residual's fraction is ``(1 -
    bound) f_e / (1 - f_j)``. Satterthwaite's interval of the others' sum carries their
    delta-method variances, so it misses what lies beyond them: the residual's lower
    bound reaches its fraction with a component at its upper bound where that bound
    lies beyond the component's Wald bound (``f_j + z se_j``: the long upper tail of a
    variance of few levels, or the one-sided bound of one at 0), and its upper bound its
    fraction with a component at 0 where that component's interval starts at 0 (a
    variance that may be 0, whose delta-method variance vanishes near 0). A lower bound
    beyond Wald's does not count: it is the long tail of the other components in the
    fraction's denominator, the residual among them. Where every other variance is 0,
    Satterthwaite's interval is undefined, and the lower bound is 1 minus the sum of
    their upper bounds. ``se_f``: the fractions' delta-method standard errors.
    """
    others_lo, others_hi, se = lo[:, :-1], hi[:, :-1], se_f[:, :-1]
    with np.errstate(all="ignore"):
        share = f[:, -1:] / (1.0 - f[:, :-1])
        may_vanish = others_lo == 0
        beyond = may_vanish | ~np.isfinite(se) | (others_hi - f[:, :-1] > z * se)
        at_low = np.where(may_vanish, share, np.nan)  # the component at 0
        at_high = np.where(beyond, (1.0 - others_hi) * share, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
        hi[:, -1] = np.fmax(hi[:, -1], np.nanmax(at_low, axis=1))
        lo[:, -1] = np.fmin(lo[:, -1], np.nanmin(at_high, axis=1))
    undefined = np.isnan(lo[:, -1]) | (f[:, -1] == 1.0)
    lo[undefined, -1] = np.clip(1.0 - np.nansum(hi[undefined, :-1], axis=1), 0.0, None)


def _rho_interval(V, cov_v, upper_v, roles, z, rho_at):
    """Rho's bounds: Wald on ``log rho``, one-sided where batch or signal is 0.

    Widened to rho at each batch term's likelihood-ratio upper bound (upward) and at
    each signal term's (downward), ``rho_at`` (``(G, k)``, per random term): a batch
    factor with few levels makes ``log rho`` skewed, which Wald's bound misses.
    ``upper_v``: the one-sided upper bound of each variance at 0 (rescaled to the
    estimate's total), NaN elsewhere.
    """
    batch, signal = roles
    vb, vs = V[:, batch].sum(axis=1), V[:, signal].sum(axis=1)
    g = (
        batch / np.where(vb > 0, vb, np.nan)[:, None]
        - signal / np.where(vs > 0, vs, np.nan)[:, None]
    )
    with np.errstate(all="ignore"):
        se = np.sqrt(np.einsum("gi,gij,gj->g", g, cov_v, g))
        r = vb / vs
        lo, hi = r * np.exp(-z * se), r * np.exp(z * se)
    # a term of few levels: its likelihood-ratio bound, as for its fraction
    k = rho_at.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
        if batch[:k].any():
            hi = np.fmax(hi, np.nanmax(rho_at[:, batch[:k]], axis=1))
        if signal[:k].any():
            lo = np.fmin(lo, np.nanmin(rho_at[:, signal[:k]], axis=1))
    # batch at 0: [0, u], u from the batch terms' one-sided bounds
    vb_up = np.where(np.isnan(upper_v), V, upper_v)[:, batch].sum(axis=1)
    vs_up = np.where(np.isnan(upper_v), V, upper_v)[:, signal].sum(axis=1)
    no_batch, no_signal = (vb == 0) & (vs > 0), (vs == 0) & (vb > 0)
    with np.errstate(all="ignore"):
        lo[no_batch], hi[no_batch] = 0.0, (vb_up / vs)[no_batch]
        lo[no_signal], hi[no_signal] = (vb / vs_up)[no_signal], np.inf
    lo[(vb == 0) & (vs == 0)] = hi[(vb == 0) & (vs == 0)] = np.nan
    return lo, hi
