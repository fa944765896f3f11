"""Likelihood-ratio tests of variance components, from the sufficient statistics.

For each random term with one variance (a random intercept, or a term with a known
covariance between its levels), the model without the term is fitted to every gene
from the same statistics (its columns of ``Z`` dropped; without any random term left,
the linear model in closed form), and the statistic is twice the difference of the
maximised log-likelihoods, ML or REML, of the two models (``LRT = criterion_without -
criterion_with``; REML compares models with the same fixed effects, as here).

Under the null hypothesis the variance lies on the boundary of its parameter space,
so the statistic is not chi-squared with one degree of freedom: it is 0 with some
probability ``pi_0`` and otherwise about chi-squared(1), and the p-value is ``(1 - pi_0)
chi2.sf(LRT, 1)`` for ``LRT > 0``, 1 otherwise. Asymptotically ``pi_0 = 1/2`` (Self &
Liang 1987; Stram & Lee 1994); with few levels it is larger, and it is computed per gene
(:mod:`.zero_mass`, from the design and the smaller model's estimates).

A term with random slopes, ``(1 + x|g)`` with ``r`` correlated coefficients, is tested for
its last coefficient: the smaller model keeps the others (``(1|g)``), dropping that
coefficient's variance and its ``r - 1`` covariances. Under the null the statistic follows
the 50:50 mixture of chi-squared(r - 1) and chi-squared(r) (Stram & Lee 1994), and the
p-value is ``(chi2.sf(LRT, r - 1) + chi2.sf(LRT, r)) / 2`` (the weight 1/2 kept:
conservative with few levels). Crainiceanu & Ruppert (2004) give the exact finite-sample
distribution of the restricted LRT with one variance, which RLRsim simulates: ``pi_0``
is its point mass; the positive part's chi-squared(1) is an approximation (tending to
slightly larger p-values than RLRsim's).
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np
import scipy.stats

from ..suffstats import DesignGram, ResponseStats
from ..varpart.multiple import benjamini_hochberg
from .fitting import _unit_scale, choose_engine, fit_lmm, make_engine
from .intervals import theta_covariance
from .profiled import _LOG_2PI
from .starts import quadratic
from .terms import ReTerm, theta_slices
from .zero_mass import zero_mass

__all__ = [
    "LocalRefits",
    "VarianceTests",
    "benjamini_hochberg",
    "check_test",
    "linear_model_criterion",
    "mixture_pvalue",
    "variance_tests",
]


# Standard errors from 0 beyond which a term's local refit is not needed (z^2 = 25
# against the critical values 2.7-6.6 of 95-99% intervals).
_FAR = 5.0


class VarianceTests(NamedTuple):
    """Per gene and random term: the statistic, p-value and Benjamini-Hochberg q-value."""

    statistic: np.ndarray  # (G, k); NaN for a gene without estimates
    pvalue: np.ndarray
    qvalue: np.ndarray


def _smaller_design(gram: DesignGram, terms: list[ReTerm], j: int, *, slope: bool = False):
    """The design of the smaller model, the columns of ``Z`` it keeps, and its terms.

    Without term ``j``; with ``slope``, without only its last coefficient (Stram & Lee's
    smaller model of a term with slopes).
    """
    t, start = terms[j], int(sum(gram.factor_sizes[:j]))
    stop = start + gram.factor_sizes[j]
    sizes = list(gram.factor_sizes)
    if slope:
        own = np.arange(start, stop).reshape(t.n_levels, t.n_coef)[:, :-1].ravel()
        sizes[j] = len(own)
        smaller = replace(t, n_coef=t.n_coef - 1, coefficients=t.coefficients[:-1])
        rest = [*terms[:j], smaller, *terms[j + 1 :]]
    else:
        own = np.arange(0)
        del sizes[j]
        rest = [*terms[:j], *terms[j + 1 :]]
    keep = np.r_[0:start, own, stop : gram.n_levels]
    reduced = replace(
        gram, factor_sizes=tuple(sizes), ZtZ=gram.ZtZ.tocsr()[keep][:, keep], ZtX=gram.ZtX[keep]
    )
    return reduced, keep, rest


def _without(
    gram: DesignGram, response: ResponseStats, terms: list[ReTerm], j: int, *, slope: bool = False
):
    """The design, statistics and terms of the smaller model (:func:`_smaller_design`)."""
    reduced, keep, rest = _smaller_design(gram, terms, j, slope=slope)
    return reduced, replace(response, ZtY=np.ascontiguousarray(response.ZtY[:, keep])), rest


def check_test(test) -> None:
    """``test`` is ``None`` or ``"lrt"``: checked before any fit.

    Every kind of term is testable (a term with slopes for its last coefficient).

    Raises
    ------
    ValueError
        For another ``test``.
    """
    if test not in (None, "lrt"):
        raise ValueError(f"test must be None or 'lrt', got {test!r}.")


def linear_model_criterion(gram: DesignGram, response: ResponseStats, reml: bool) -> np.ndarray:
    """ML deviance or REML criterion of the model without random effects, per gene.

    The profiled criterion of the engines (:meth:`ProfiledDeviance.criterion`) with
    ``V = I``: ``log|V| = 0``, ``r2`` the residual sum of squares of least squares.
    """
    n, p = gram.n_obs, gram.n_fixed
    nu = n - p if reml else n
    r2 = response.ss - quadratic(response.XtY, np.linalg.inv(gram.XtX))
    logdet_x = np.linalg.slogdet(gram.XtX)[1] if reml else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        dev = logdet_x + nu * (1 + _LOG_2PI + np.log(r2 / nu)) - gram.log_weights
    return np.where(r2 > 0, dev, np.nan)


def mixture_pvalue(statistic: np.ndarray, df: int = 1, zero_weight=0.5) -> np.ndarray:
    """P-values of the mixture of chi-squared(df - 1) and chi-squared(df).

    ``df = 1``: a point mass at 0 (weight ``zero_weight``) and chi-squared(1), one variance
    on the boundary; ``df = r``: the last of ``r`` correlated coefficients (Stram & Lee
    1994). ``zero_weight`` is the first distribution's weight: 1/2 asymptotically, or per
    gene (:func:`~scvarpart.lmm.zero_mass.zero_mass`). 1 where the statistic is 0 (or
    below, by rounding); NaN stays NaN.
    """
    stat = np.asarray(statistic, dtype=float)
    w = np.asarray(zero_weight, dtype=float)
    with np.errstate(invalid="ignore"):
        lower = scipy.stats.chi2.sf(stat, df - 1) if df > 1 else 0.0
        p = np.where(stat > 0, w * lower + (1 - w) * scipy.stats.chi2.sf(stat, df), 1.0)
    return np.where(np.isnan(stat), np.nan, p)


def variance_tests(
    gram: DesignGram,
    response: ResponseStats,
    terms: list[ReTerm],
    deviance: np.ndarray,
    ratios: np.ndarray,
    *,
    reml: bool,
    n_jobs: int | None = 1,
    batch_size: int = 256,
) -> VarianceTests:
    """The likelihood-ratio test of each random term's variance = 0, for every gene.

    A term with slopes is tested for its last coefficient (see the module's notes).

    Parameters
    ----------
    gram, response
        The statistics the full model was fitted from.
    terms
        Its random terms, in the order of ``Z``'s columns.
    deviance
        The full model's criterion per gene (NaN for genes without estimates).
    ratios
        Its variance ratios ``sigma_j^2 / sigma^2`` per gene and term (NaN for terms with
        slopes): where a random intercept's is 0, the optimum lies in the smaller model,
        whose criterion is then the same and the statistic exactly 0 (a refit would differ
        by rounding only).
    reml
        The criterion: REML or ML (the full model's).
    n_jobs, batch_size
        As :func:`~scvarpart.lmm.fit_lmm`, for the refits.

    Returns
    -------
    A :class:`VarianceTests`, genes x terms.
    """
    G, k = len(response), len(terms)
    stat = np.full((G, k), np.nan)
    pvalue = np.full((G, k), np.nan)
    skip = np.where(np.isfinite(deviance), "", "no estimates in the full model")
    for j, t in enumerate(terms):
        slope = t.n_coef > 1
        if k == 1 and not slope:
            null = linear_model_criterion(gram, response, reml)
            theta0 = np.zeros((G, 0))
        else:
            reduced, stats, rest = _without(gram, response, terms, j, slope=slope)
            # a variance at 0: the optimum lies in the smaller model, nothing to refit
            at_zero = np.zeros(G, dtype=bool) if slope else ratios[:, j] == 0
            refit = fit_lmm(
                reduced,
                stats,
                reml=reml,
                n_jobs=n_jobs,
                batch_size=batch_size,
                terms=rest,
                exclude=np.where(at_zero & (skip == ""), "variance 0: statistic 0", skip),
            )
            assert refit.theta is not None  # fit_lmm always returns theta
            null, theta0 = refit.deviance, refit.theta
        # the full model contains the reduced one: a negative difference is rounding
        diff = np.maximum(null - deviance, 0.0)
        stat[:, j] = diff if slope else np.where(ratios[:, j] == 0, 0.0, diff)
        stat[np.isnan(deviance), j] = np.nan
        weight = np.full(G, 0.5)
        if not slope:  # the null's point mass at 0, where the statistic is not 0
            positive = np.flatnonzero(stat[:, j] > 0)
            weight[positive] = zero_mass(gram, terms, j, theta0[positive], reml=reml, n_jobs=n_jobs)
        pvalue[:, j] = mixture_pvalue(stat[:, j], t.n_coef, weight)
    return VarianceTests(stat, pvalue, benjamini_hochberg(pvalue))


class LocalRefits:
    """Each term's likelihood-ratio test from local refits, batch by batch of genes.

    As :func:`variance_tests`, but the model without the term is fitted by Newton's
    method from the full model's optimum (its other coordinates), not by the global
    search: a few steps per gene, for the intervals' question "is 0 inside?". A local
    optimum's criterion is at least the global one's, so the statistic is at least the
    global refit's. The engines of the smaller models are built once, here.

    Parameters
    ----------
    gram, terms
        The full model's design and random terms (of any kind).
    reml
        The criterion.
    """

    def __init__(self, gram: DesignGram, terms: list[ReTerm], *, reml: bool):
        self.gram, self.terms, self.reml = gram, list(terms), reml
        self.full = make_engine(gram, reml, choose_engine(gram, self.terms), self.terms)
        self.reduced: list = []
        if len(self.terms) > 1:
            for j in range(len(self.terms)):
                smaller, keep, rest = _smaller_design(gram, self.terms, j)
                engine = make_engine(smaller, reml, choose_engine(smaller, rest), rest)
                self.reduced.append((engine, keep))

    def pvalues(self, response: ResponseStats, fit, level: float) -> np.ndarray:
        """Each term's p-value where it decides whether 0 is inside a ``level`` interval.

        ``(G, k)``, from :meth:`statistics`. For a term with one variance, the null's point
        mass at 0 (:mod:`.zero_mass`, at the smaller model's local estimates) is computed
        where it decides, for statistics that reject at level ``1 - level`` under the
        50:50 mixture's weight 1/2 but may not under a larger one; elsewhere the weight is
        1/2, which gives the same decision (a larger weight only lowers the p-value). A
        term with slopes, dropped whole, keeps the 50:50 mixture of chi-squared(0) and
        chi-squared(1).
        """
        stat, theta0 = self.statistics(response, fit, with_estimates=True)
        pvalue = np.full_like(stat, np.nan)
        crit = float(scipy.stats.chi2.isf(2 * (1 - level), 1))
        for j, t in enumerate(self.terms):
            weight = np.full(len(stat), 0.5)
            decides = np.flatnonzero((stat[:, j] > 0) & (stat[:, j] < crit))
            if t.n_coef == 1 and len(decides):
                weight[decides] = zero_mass(
                    self.gram, self.terms, j, theta0[j][decides], reml=self.reml
                )
            pvalue[:, j] = mixture_pvalue(stat[:, j], 1, weight)
        return pvalue

    def statistics(self, response: ResponseStats, fit, *, with_estimates: bool = False):
        """The statistics of the genes of ``fit``, ``(G, k)``.

        0 where the term's variance is 0, NaN for genes without estimates, and ``inf``
        (not refitted) where the term's coordinates lie more than :data:`_FAR` standard
        errors from 0, which no likelihood-ratio statistic near the critical values goes
        with. ``with_estimates``: also, per term, the smaller model's ``theta`` (``(G,
        n_theta - its coordinates)``; NaN where not refitted).
        """
        terms, k = self.terms, len(self.terms)
        stat = np.where(np.isfinite(fit.deviance)[:, None], 0.0, np.nan) * np.ones((1, k))
        n_theta = fit.theta.shape[1]
        theta0 = [np.full((len(stat), n_theta - t.n_theta), np.nan) for t in terms]
        ok = np.flatnonzero(np.isfinite(fit.deviance))
        with np.errstate(all="ignore"):
            cov = theta_covariance(fit.theta[ok], fit.hessian[ok])
            far = fit.theta[ok] ** 2 > _FAR**2 * np.diagonal(cov, axis1=1, axis2=2)
        unit = _unit_scale(response.subset(ok))
        scaled = response.subset(ok).scaled(1.0 / unit)
        x = fit.theta[ok] ** 2 if self.full.coordinates == "gamma" else fit.theta[ok]
        base = self.full.deviance(np.ascontiguousarray(x), scaled)
        for j, coords in enumerate(theta_slices(terms)):
            distant = far[:, coords].any(axis=1)
            stat[ok[distant], j] = np.inf
            # a term at 0 is already the smaller model's optimum
            todo = np.flatnonzero(np.any(fit.theta[ok, coords] != 0, axis=1) & ~distant)
            if len(todo) == 0:
                continue
            sub = scaled.subset(todo)
            if k == 1:
                null = linear_model_criterion(self.gram, sub, self.reml)  # theta0[j]: none
            else:
                engine, keep = self.reduced[j]
                theta = np.delete(fit.theta[ok[todo]], coords, axis=1)
                x0 = theta**2 if engine.coordinates == "gamma" else theta
                smaller = replace(sub, ZtY=np.ascontiguousarray(sub.ZtY[:, keep]))
                local, null = engine.minimise(np.ascontiguousarray(x0), smaller)[:2]
                theta0[j][ok[todo]] = np.sqrt(local) if engine.coordinates == "gamma" else local
            stat[ok[todo], j] = np.maximum(null - base[todo], 0.0)
        return (stat, theta0) if with_estimates else stat
