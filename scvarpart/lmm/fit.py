"""Fit the same random-intercept LMM to every gene.

Genes are split into batches; each batch is one compiled call that fits its
genes one after the other, and batches run in parallel with joblib (threads by
default: the compiled code releases the GIL). A gene's result does not depend
on its batch or on ``n_jobs``.
Genes that cannot be fitted (constant, exactly explained by the fixed effects,
variance ratio without a finite optimum) get NaN estimates and a reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.optimize
from joblib import Parallel, delayed

from ..suffstats import DesignGram, ResponseStats
from .blocked import BlockedDeviance
from .dense import DenseDeviance

__all__ = ["LMMFit", "choose_engine", "fit_lmm"]

# Above this many random effects + fixed effects, eliminating the largest
# factor's diagonal block beats dense factorisation of the whole system.
_DENSE_MAX_SIZE = 200
# A variance ratio this large, or a residual variance this small a fraction of
# the gene's variance, means the residual variance is vanishing: r2 = y'y - |c|^2
# has then lost most of its digits to cancellation and no optimum can be trusted.
_GAMMA_DIVERGED = 1e10
_RESIDUAL_VANISHED = 1e-8


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
    deviance
        Minimised ML deviance, or REML criterion, as lme4 reports them.
    converged
        The optimiser met its convergence criterion.
    n_iter
        Optimiser iterations.
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

    @property
    def variances(self) -> np.ndarray:
        """Random-effect variances ``sigma_j^2``, ``(G, k)``."""
        return self.gamma * self.sigma2[:, None]

    @property
    def singular(self) -> np.ndarray:
        """Some variance is on the boundary (exactly 0)."""
        return (self.gamma == 0).any(axis=1)

    @property
    def loglik(self) -> np.ndarray:
        """Maximised log-likelihood (ML) or REML log-likelihood, as lme4's logLik."""
        return -0.5 * self.deviance


def choose_engine(gram: DesignGram) -> str:
    """``"dense"`` for designs with few levels, ``"blocked"`` for many."""
    return "dense" if gram.n_levels + gram.n_fixed <= _DENSE_MAX_SIZE else "blocked"


def _make_engine(gram: DesignGram, reml: bool, engine: str):
    if engine == "dense":
        return DenseDeviance(gram, reml)
    if engine == "blocked":
        return BlockedDeviance(gram, reml)
    raise ValueError(f"engine must be 'auto', 'dense' or 'blocked', got {engine!r}")


def _moment_start(gram: DesignGram, stats: ResponseStats) -> np.ndarray:
    """One-way ANOVA estimate of each variance ratio, each factor on its own."""
    n = gram.n_obs
    counts = gram.ZtZ.diagonal()
    starts = []
    offset = 0
    for size in gram.factor_sizes:
        sl = slice(offset, offset + size)
        nl = counts[sl]
        between = (stats.ZtY[:, sl] ** 2 / nl).sum(axis=1)
        within = np.maximum(stats.ss - between, 0.0) / (n - size)
        n0 = (n - (nl**2).sum() / n) / (size - 1)
        sigma_a = np.maximum((between / (size - 1) - within) / n0, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            starts.append(np.where(within > 0, sigma_a / within, 1.0))
        offset += size
    return np.clip(np.stack(starts, axis=1), 1e-3, 1e3)


def _minque_start(gram: DesignGram, stats: ResponseStats) -> np.ndarray:
    """MINQUE(0) estimates of the variance ratios (Rao 1971), clipped at 0.

    The quadratic forms |Z_j'P_0 y|^2 of the fixed-effects-only projection P_0
    are equated to their expectations; the coefficients do not depend on the
    gene, so this is one (k + 1) x (k + 1) solve for all genes.
    """
    n, p, k = gram.n_obs, gram.n_fixed, len(gram.factor_sizes)
    C = gram.ZtZ.toarray()
    XXinv_XZ = np.linalg.solve(gram.XtX, gram.ZtX.T)
    Q0 = C - gram.ZtX @ XXinv_XZ
    B = (gram.level_factor[None, :] == np.arange(k)[:, None]).astype(float)
    A = np.empty((k + 1, k + 1))
    A[:k, :k] = B @ (Q0 * Q0) @ B.T
    A[:k, k] = A[k, :k] = B @ np.diag(Q0)
    A[k, k] = n - p
    # per-gene products with einsum, not BLAS: a gene's start must not depend on
    # which other genes share its batch (BLAS may block differently by size)
    u0 = stats.ZtY - np.einsum("gp,pq->gq", stats.XtY, XXinv_XZ)
    rss0 = stats.ss - _quadratic(stats.XtY, np.linalg.inv(gram.XtX))
    rhs = np.concatenate([np.einsum("gq,kq->gk", u0 * u0, B), rss0[:, None]], axis=1)
    sol = np.einsum("gj,ij->gi", rhs, np.linalg.inv(A))
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma = np.maximum(sol[:, :k], 0.0) / sol[:, k : k + 1]
    return np.where(np.isfinite(gamma) & (sol[:, k : k + 1] > 0), gamma, 1.0)


def _quadratic(V: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``v' M v`` for every row ``v`` of ``V``, row by row."""
    return np.einsum("gi,ij,gj->g", V, M, V)


def _starting_values(engine, gram: DesignGram, stats: ResponseStats) -> np.ndarray:
    """The better, by deviance, of two moment estimates for each gene; lme4's
    start (all ratios 1) where neither can be evaluated."""
    minque = _minque_start(gram, stats)
    moment = _moment_start(gram, stats)
    f_minque = engine.deviance(minque, stats)
    f_moment = engine.deviance(moment, stats)
    use_moment = np.isfinite(f_moment) & ~(f_minque <= f_moment)
    start = np.where(use_moment[:, None], moment, minque)
    neither = ~np.isfinite(f_minque) & ~np.isfinite(f_moment)
    start[neither] = 1.0
    return start


def _optimise_blocked(engine: BlockedDeviance, x0: np.ndarray, stats: ResponseStats):
    G, k = x0.shape
    x = np.full((G, k), np.nan)
    converged = np.zeros(G, dtype=bool)
    n_iter = np.zeros(G, dtype=int)
    for i in range(G):
        one = stats.subset([i])
        f0 = engine.deviance(x0[i : i + 1], one)[0]
        if not np.isfinite(f0):
            continue

        def objective(t, one=one, f0=f0):
            f = engine.deviance(t[None], one)[0]
            # a finite penalty keeps the line search inside the domain
            return f if np.isfinite(f) else abs(f0) * 10 + 1e6

        res = scipy.optimize.minimize(
            objective,
            x0[i],
            method="L-BFGS-B",
            bounds=[(0.0, None)] * k,
            options={"ftol": 1e-15, "gtol": 1e-9, "maxiter": 1000, "maxls": 50},
        )
        x[i] = res.x
        converged[i] = bool(res.success)
        n_iter[i] = res.nit
    return x, converged, n_iter


def _fit_batch(gram: DesignGram, stats: ResponseStats, reml: bool, engine: str):
    eng = _make_engine(gram, reml, engine)
    x0 = _starting_values(eng, gram, stats)
    if engine == "dense":
        x, dev, sigma2, beta, converged, n_iter = eng.minimise(x0, stats)
    else:
        x, converged, n_iter = _optimise_blocked(eng, x0, stats)
        dev, sigma2, beta = eng.estimates(np.nan_to_num(x, nan=1.0), stats)
    bad = ~np.isfinite(x).all(axis=1) | ~np.isfinite(dev)
    x[bad], dev[bad] = np.nan, np.nan
    return x, sigma2, beta, dev, converged, n_iter


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
) -> LMMFit:
    """Fit a random-intercept LMM to every gene by ML or REML.

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

    Returns
    -------
    An :class:`LMMFit`.
    """
    if engine == "auto":
        engine = choose_engine(gram)
    G, k, p = len(stats), len(gram.factor_sizes), gram.n_fixed
    names = factor_names or [f"factor {j}" for j in range(k)]

    error = np.full(G, "", dtype=object) if exclude is None else np.array(exclude, dtype=object)
    excluded = error != ""
    scale = np.maximum(np.abs(stats.mean), np.finfo(float).tiny)
    constant = ~excluded & (stats.ss <= stats.n_obs * (1e-12 * scale) ** 2)
    error[constant] = np.where(
        stats.mean[constant] == 0, "all values are zero", "constant expression (no variance)"
    )
    # Fixed effects alone leave no residual (an OLS fit, gamma = 0): no model can
    # be fitted, whatever the random effects.
    with np.errstate(invalid="ignore", divide="ignore"):
        ols_rss = stats.ss - _quadratic(stats.XtY, np.linalg.inv(gram.XtX))
        explained = ~excluded & ~constant & (ols_rss <= _RESIDUAL_VANISHED * stats.ss)
    error[explained] = "the fixed effects explain the gene exactly (zero residual sum of squares)"
    todo = np.flatnonzero(~excluded & ~constant & ~explained)

    batches = [todo[a : a + batch_size] for a in range(0, len(todo), batch_size)]
    jobs = ((gram, stats.subset(b), reml, engine) for b in batches)
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

    gamma = np.full((G, k), np.nan)
    sigma2 = np.full(G, np.nan)
    beta = np.full((G, p), np.nan)
    deviance = np.full(G, np.nan)
    converged = np.zeros(G, dtype=bool)
    n_iter = np.zeros(G, dtype=int)
    if results:  # batches are consecutive pieces of `todo`
        parts = [np.concatenate(column) for column in zip(*results, strict=True)]
        gamma[todo], sigma2[todo], beta[todo], deviance[todo], converged[todo], n_iter[todo] = parts

    failed = np.isin(np.arange(G), todo) & ~np.isfinite(deviance)
    error[failed] = "the likelihood cannot be evaluated at any tried variance ratios"
    with np.errstate(invalid="ignore", divide="ignore"):
        vanished = sigma2 <= _RESIDUAL_VANISHED * stats.ss / stats.n_obs
    diverged = np.isfinite(deviance) & ((gamma >= _GAMMA_DIVERGED).any(axis=1) | vanished)
    for g in np.flatnonzero(diverged):
        j = int(np.argmax(gamma[g]))
        error[g] = (
            f"no finite optimum: the residual variance vanishes because the gene is "
            f"(nearly) constant within the levels of {names[j]!r}"
        )
    bad = error != ""
    gamma[bad], sigma2[bad], beta[bad], deviance[bad] = np.nan, np.nan, np.nan, np.nan
    converged[bad] = False

    # back to the uncentred parametrisation: the intercept absorbs the means
    beta[:, 0] += stats.mean - np.einsum("gp,p->g", beta[:, 1:], gram.x_mean[1:])
    return LMMFit(
        gamma=gamma,
        sigma2=sigma2,
        beta=beta,
        deviance=deviance,
        converged=converged,
        n_iter=n_iter,
        error=error,
        reml=reml,
    )
