"""Fit the same random-intercept LMM to every gene.

Genes are split into batches; each batch is one compiled call that fits its
genes one after the other, and batches run in parallel with joblib (threads by
default: the compiled code releases the GIL). A gene's result does not depend
on its batch or on ``n_jobs``.

Before fitting, genes that have no estimates are recognised from their
statistics (:mod:`.unfittable`): they get NaN estimates and a reason. Every
other gene is fitted in units of its own scale, a power of two near its
standard deviation, so that multiplying a gene by a power of two multiplies its
variances by the square exactly and changes nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
from joblib import Parallel, delayed

from .._threads import one_blas_thread
from ..suffstats import DesignGram, ResponseStats
from .blocked import BlockedDeviance
from .dense import DenseDeviance
from .general import GeneralDeviance
from .starts import Moments, moment_start, moments
from .terms import ReTerm
from .unfittable import unfittable_reasons

__all__ = ["LMMFit", "choose_engine", "fit_lmm", "make_engine", "relative_covariances"]

# Above this many random effects + fixed effects, eliminating the largest
# factor's diagonal block beats dense factorisation of the whole system.
_DENSE_MAX_SIZE = 200


@dataclass
class LMMFit:
    """Per-gene estimates of a random-intercept LMM.

    Attributes
    ----------
    gamma
        Variance ratios ``sigma_j^2 / sigma^2``, ``(G, k)``.
    sigma2
        Residual variance, ``(G,)``.
    beta
        Fixed effects for the columns of the (uncentred) design, ``(G, p)``.
    beta_cov
        Their covariance ``sigma^2 (X'V^-1 X)^-1`` given the variances (lme4's
        ``vcov``), ``(G, p, p)``.
    deviance
        Minimised ML deviance, or REML criterion, as lme4 reports them.
    converged
        The optimum is the best the global search found (:mod:`.search`) and a
        point where Newton's method met its convergence criterion (first-order
        optimality, with bound variances at exactly 0).
    n_iter
        Newton iterations, over all descents.
    descents
        Newton descents of the global search (1 where the first was enough).
    error
        Empty where the fit succeeded, otherwise why the gene has no estimates.
    reml
        Whether the REML criterion was optimised.
    """

    gamma: np.ndarray
    sigma2: np.ndarray
    beta: np.ndarray
    deviance: np.ndarray
    converged: np.ndarray
    n_iter: np.ndarray
    error: np.ndarray
    reml: bool
    descents: np.ndarray | None = None
    beta_cov: np.ndarray | None = None
    theta: np.ndarray | None = None
    terms: tuple[ReTerm, ...] = ()
    gradient: np.ndarray | None = None
    hessian: np.ndarray | None = None

    def subset(self, idx: np.ndarray) -> LMMFit:
        """The fit of the genes ``idx`` only."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return LMMFit(**{k: v[idx] if isinstance(v, np.ndarray) else v for k, v in values.items()})

    @property
    def variances(self) -> np.ndarray:
        """Random-effect variances ``sigma_j^2``, ``(G, k)``, of random intercepts."""
        return self.gamma * self.sigma2[:, None]

    def relative_covariances(self) -> list[np.ndarray]:
        """Each term's coefficient covariance over ``sigma^2`` (``T T'``), ``(G, r, r)``."""
        if self.theta is None or all(t.n_coef == 1 for t in self.terms):
            return [self.gamma[:, j, None, None] for j in range(self.gamma.shape[1])]
        return relative_covariances(self.theta, self.terms)

    def covariances(self) -> list[np.ndarray]:
        """Each term's coefficient covariance ``sigma^2 T T'``, ``(G, r, r)``."""
        return [c * self.sigma2[:, None, None] for c in self.relative_covariances()]

    @property
    def beta_se(self) -> np.ndarray:
        """Standard errors of the fixed effects, ``(G, p)``.

        As lme4's ``sqrt(diag(vcov))``.
        """
        if self.beta_cov is None:
            return np.full_like(self.beta, np.nan)
        return np.sqrt(np.diagonal(self.beta_cov, axis1=1, axis2=2))

    @property
    def singular(self) -> np.ndarray:
        """Some variance is on the boundary (exactly 0), as lme4's ``isSingular``."""
        if self.theta is None or all(t.scalar for t in self.terms):
            return (self.gamma == 0).any(axis=1)
        diag = np.concatenate([t.positions[:, 0] == t.positions[:, 1] for t in self.terms])
        return (self.theta[:, diag] == 0).any(axis=1)

    @property
    def loglik(self) -> np.ndarray:
        """Maximised log-likelihood (ML) or REML log-likelihood, as lme4's logLik."""
        return -0.5 * self.deviance


def relative_covariances(theta: np.ndarray, terms: Sequence[ReTerm]) -> list[np.ndarray]:
    """Each term's coefficient covariance over ``sigma^2``, ``T T'``, at ``theta``."""
    out, start = [], 0
    for t in terms:
        th = theta[:, start : start + t.n_theta]
        T = np.zeros((len(th), t.n_coef, t.n_coef))
        a, b = t.positions.T
        T[:, a, b] = th
        out.append(np.einsum("gij,gkj->gik", T, T))
        start += t.n_theta
    return out


def choose_engine(
    gram: DesignGram, terms: list[ReTerm] | None = None
) -> Literal["dense", "blocked", "general"]:
    """``"dense"`` for designs with few levels, ``"blocked"`` for many.

    ``"general"`` for random slopes, known covariances between levels, or weights.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import scvarpart as svp
    >>> rng = np.random.default_rng(0)
    >>> obs = pd.DataFrame({"donor": rng.choice(list("abcdef"), 300)})
    >>> stats = svp.lmm.response_stats(rng.normal(size=(300, 4)), "~ (1|donor)", obs=obs)
    >>> svp.lmm.choose_engine(stats.gram)
    'dense'
    """
    if gram.weight_sum is not None or (terms is not None and not all(t.scalar for t in terms)):
        return "general"
    return "dense" if gram.n_levels + gram.n_fixed <= _DENSE_MAX_SIZE else "blocked"


def make_engine(gram: DesignGram, reml: bool, engine: str, terms: list[ReTerm]):
    """The engine ``engine`` (not ``"auto"``) for this design and terms."""
    scalar = all(t.scalar for t in terms) and gram.weight_sum is None
    if engine == "general":
        return GeneralDeviance(gram, terms, reml)
    if engine in ("dense", "blocked") and not scalar:
        raise ValueError(
            f"engine={engine!r} fits random intercepts without weights only; this model "
            "has random slopes, a known covariance or weights: use engine='general' (or "
            "'auto')."
        )
    if engine == "dense":
        return DenseDeviance(gram, reml)
    if engine == "blocked":
        return BlockedDeviance(gram, reml)
    raise ValueError(f"engine must be 'auto', 'dense', 'blocked' or 'general', got {engine!r}")


def _fit_batch(eng, m: Moments | None, stats: ResponseStats, strategy: str):
    """Fit one batch of genes, BLAS single-threaded.

    ``n_jobs`` is the only parallelism: many BLAS threads per worker would
    oversubscribe the cores. An engine may also return the gradient and Hessian in
    its parameters at the optima (``at_optima``), which saves evaluating them again.
    """
    with one_blas_thread():
        if m is None:  # no moment estimates in theta: the engine's own starts
            x0, f0 = np.full((len(stats), eng.n_params), np.nan), np.full(len(stats), np.nan)
        else:
            x0, f0 = moment_start(eng, m, stats)
        if strategy == "global":
            x, dev, sigma2, beta, converged, n_iter, descents, *at_optima = eng.search(
                stats, x0, f0
            )
        else:
            x, dev, sigma2, beta, converged, n_iter, *at_optima = eng.minimise(
                np.nan_to_num(x0, nan=1), stats
            )
            descents = np.ones(len(stats), dtype=int)
        bad = ~np.isfinite(x).all(axis=1) | ~np.isfinite(dev)
        x[bad], dev[bad] = np.nan, np.nan
        beta_cov = eng.fixed_covariance(x, sigma2)
        # in theta, scale-free: the same in the gene's own units
        grad, hess = eng.theta_derivatives(eng.to_theta(x), stats, *at_optima)
    return x, sigma2, beta, dev, converged, n_iter, descents, beta_cov, grad, hess


def _fit_batches(eng, normed: ResponseStats, todo, strategy, batch_size, n_jobs, progress):
    """Fit the genes ``todo`` in batches, in parallel threads; the batches' results."""
    if strategy == "global":
        eng.prepare()  # a grid, factorised once here and shared by every batch
    # moment estimates of gamma, once; engines in theta make their own starts
    m = moments(eng.gram) if eng.coordinates == "gamma" else None
    batches = [todo[a : a + batch_size] for a in range(0, len(todo), batch_size)]
    jobs = ((eng, m, normed.subset(b), strategy) for b in batches)
    if n_jobs in (None, 1) or len(batches) <= 1:
        outputs = (_fit_batch(*job) for job in jobs)
    else:
        # threads by default: the kernels release the GIL and share the data
        outputs = Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator")(
            delayed(_fit_batch)(*job) for job in jobs
        )
    results = []
    for b, out in zip(batches, outputs, strict=True):
        results.append(out)
        if progress is not None:
            progress(len(b), len(todo))
    return results


def _unit_scale(stats: ResponseStats) -> np.ndarray:
    """A power of two near each gene's standard deviation (1 where it is 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(stats.ss / stats.n_obs)
    return np.where(np.isfinite(sd) & (sd > 0), np.ldexp(1.0, np.frexp(sd)[1]), 1.0)


def fit_lmm(
    gram: DesignGram,
    stats: ResponseStats,
    *,
    reml: bool = False,
    n_jobs: int | None = 1,
    batch_size: int = 256,
    engine: str = "auto",
    factor_names: list[str] | None = None,
    exclude: np.ndarray | None = None,
    progress: Callable[[int, int], object] | None = None,
    strategy: Literal["global", "local"] = "global",
    terms: list[ReTerm] | None = None,
) -> LMMFit:
    """Fit an LMM to every gene by ML or REML.

    Parameters
    ----------
    gram
        Cross-products of the design.
    stats
        Sufficient statistics of the genes.
    reml
        Optimise the REML criterion instead of the ML deviance.
    n_jobs
        Parallel workers (joblib); ``None`` or 1 runs in this process, -1 uses
        every core.
    batch_size
        Genes fitted in one compiled call (the unit of parallel work).
    engine
        ``"dense"``, ``"blocked"`` (many levels) or ``"auto"``.
    factor_names
        Names of the grouping factors, for error messages.
    exclude
        Per gene, why it is not to be fitted ('' to fit it): such genes get NaN
        estimates with that reason.
    progress
        Called after each batch with its number of genes and the total.
    strategy
        ``"global"``: the global search (:mod:`.search`). ``"local"``: Newton's
        method from the moment estimates only, which may stop at a local optimum;
        for measuring what the global search costs (``benchmarks/fit_speed.py``).
    terms
        The random-effect terms in the order of ``Z``'s columns (default: one random
        intercept per entry of ``gram.factor_sizes``).

    Returns
    -------
    An :class:`LMMFit`.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import scvarpart as svp
    >>> rng = np.random.default_rng(0)
    >>> obs = pd.DataFrame({"donor": rng.choice(list("abcdef"), 300)})
    >>> stats = svp.lmm.response_stats(rng.normal(size=(300, 4)), "~ (1|donor)", obs=obs)
    >>> fit = svp.lmm.fit_lmm(stats.gram, stats.response, reml=True)
    >>> fit.gamma.shape  # genes x grouping factors: variance ratios sigma_j^2 / sigma^2
    (4, 1)
    """
    if strategy not in ("global", "local"):
        raise ValueError(f"strategy must be 'global' or 'local', got {strategy!r}")
    if terms is None:
        terms = [ReTerm(f"factor {j}", s) for j, s in enumerate(gram.factor_sizes)]
    if engine == "auto":
        engine = choose_engine(gram, terms)
    G, p = len(stats), gram.n_fixed
    names = factor_names or [t.name for t in terms]
    error = np.full(G, "", dtype=object) if exclude is None else np.array(exclude, dtype=object)
    unit = _unit_scale(stats)
    # BLAS single-threaded throughout (and in _fit_batch, for process workers): n_jobs is
    # the only parallelism, and a BLAS pool woken by one call spins on a core the
    # workers need
    with one_blas_thread():
        eng = make_engine(gram, reml, engine, terms)
        rest = np.flatnonzero(error == "")
        error[rest] = unfittable_reasons(gram, stats.subset(rest), names)
        todo = np.flatnonzero(error == "")
        normed = stats.scaled(1.0 / unit)
        results = _fit_batches(eng, normed, todo, strategy, batch_size, n_jobs, progress)
    k = eng.n_params

    gamma = np.full((G, k), np.nan)
    sigma2 = np.full(G, np.nan)
    beta = np.full((G, p), np.nan)
    deviance = np.full(G, np.nan)
    converged = np.zeros(G, dtype=bool)
    n_iter = np.zeros(G, dtype=int)
    descents = np.zeros(G, dtype=int)
    beta_cov = np.full((G, p, p), np.nan)
    # in theta at each optimum: scale-free, the same in the gene's own units
    gradient, hessian = np.full((G, k), np.nan), np.full((G, k, k), np.nan)
    if results:  # batches are consecutive pieces of `todo`
        parts = [np.concatenate(column) for column in zip(*results, strict=True)]
        gamma[todo], sigma2[todo], beta[todo], deviance[todo] = parts[:4]
        converged[todo], n_iter[todo], descents[todo], beta_cov[todo] = parts[4:8]
        gradient[todo], hessian[todo] = parts[8:]
    # back to the gene's own units (exact: the units are powers of two)
    sigma2 *= unit**2
    beta *= unit[:, None]
    beta_cov *= (unit**2)[:, None, None]
    deviance += eng.nu * np.log(unit**2)

    failed = np.isin(np.arange(G), todo) & ~np.isfinite(deviance)
    error[failed] = "the likelihood cannot be evaluated at any tried variance ratios"
    bad = error != ""
    gamma[bad], sigma2[bad], beta[bad], deviance[bad] = np.nan, np.nan, np.nan, np.nan
    beta_cov[bad] = np.nan
    gradient[bad], hessian[bad] = np.nan, np.nan
    converged[bad] = False

    # back to the uncentred parametrisation: the intercept absorbs the means,
    # b_0 = b~_0 + mean(y) - x_mean' b, a linear map T of the centred estimates
    beta[:, 0] += stats.mean - np.einsum("gp,p->g", beta[:, 1:], gram.x_mean[1:])
    T = np.eye(p)
    T[0, 1:] = -gram.x_mean[1:]
    beta_cov = np.einsum("ij,gjk,lk->gil", T, beta_cov, T)
    fit = LMMFit(
        gamma=_ratios(gamma, terms) if eng.coordinates == "theta" else gamma,
        sigma2=sigma2,
        beta=beta,
        deviance=deviance,
        converged=converged,
        n_iter=n_iter,
        error=error,
        reml=reml,
        descents=descents,
        beta_cov=beta_cov,
        theta=eng.to_theta(gamma),
        terms=tuple(terms),
        gradient=gradient,
        hessian=hessian,
    )
    return fit


def _ratios(theta: np.ndarray, terms: list[ReTerm]) -> np.ndarray:
    """Variance ratios of random intercepts from ``theta`` (NaN for other terms)."""
    if all(t.n_theta == 1 for t in terms):
        return theta**2
    return np.full((len(theta), len(terms)), np.nan)
