"""Count models fitted gene by gene: Poisson and NB2 mixed models, latent-scale fractions.

:func:`fit_counts` fits every gene's counts with the design's random intercepts and
fixed effects, a log link and an offset (:mod:`.search`), and reports the variance
components on the latent scale (:mod:`.latent`) in the
:class:`~scvarpart.varpart.VarPartResult` every fit returns. The cost of a gene grows
with its rows (Poisson: the design's classes, :mod:`.rows`; NB2: the observations, or
its non-zero counts and the classes with :mod:`._zero_tables`) times the evaluations of
the search, and with the cube of the levels of every term but the largest
(:mod:`._blocked`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from joblib import delayed

from .._names import as_names
from .._threads import one_blas_thread
from ..design import Design
from ..storage.matrix import column_block, map_column_blocks, row_bounds
from ..varpart.fractions import check_roles, component_variances
from ..varpart.result import VarPartResult, gene_names
from ._blocked import diagonal_inverse
from ._laplace_kernel import DIFFERENCE, NB2, POISSON, ZEROS, conditional_modes, row_layout
from ._zero_tables import ZeroTables, zero_tables
from .intervals import covariance, intervals
from .latent import APPROXIMATIONS, distribution_variance, mean_count
from .rows import RowDesign, observation_rows, row_design
from .search import (
    LOG_PHI_BOUNDS,
    MODE_ITER,
    MODE_TOL,
    GeneFit,
    RowProblem,
    fit_rows,
    glm_beta,
    moment_log_phi,
)
from .tables import collect

__all__ = ["FAMILIES", "check_counts", "check_family", "fit_counts"]

#: The count families, by name: Poisson, and the negative binomial of glmmTMB's ``nbinom2``.
FAMILIES = {"poisson": POISSON, "nb": NB2}
Progress = Callable[[int, int], object] | None
# A log NB size this close to its lower bound is at the bound: the dispersion is not identified.
_AT_BOUND = 1e-6
# NB2 sums a class's zero counts from tables (:mod:`._zero_tables`) when its classes hold
# this many observations on average: below it, the observations are as cheap.
_CELLS_PER_CLASS = 8


def check_family(family: str, approximation: str = "lognormal") -> int:
    """The kernel's code of a count family; unknown names are refused."""
    if family not in FAMILIES:
        raise ValueError(
            f"family={family!r}: a count model is one of {list(FAMILIES)} ('gaussian' is "
            "the linear mixed model of log-normalised values)."
        )
    if approximation not in APPROXIMATIONS:
        raise ValueError(
            f"approximation={approximation!r}: the distribution-specific variance is "
            f"one of {list(APPROXIMATIONS)}."
        )
    return FAMILIES[family]


def check_counts(Y, design: Design, var_names: pd.Index, source: str, chunk_genes: int = 256):
    """Refuse values that are not non-negative whole numbers, before anything is fitted.

    The message names the first gene and observation at fault, and what to pass instead.
    """
    rows = np.flatnonzero(design.keep)
    for a, b in row_bounds(Y.shape[1], chunk_genes):
        block = column_block(Y, a, b)[rows]
        bad = ~(np.isfinite(block) & (block >= 0) & (block == np.round(block)))
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ValueError(
                f"{source} must hold counts (non-negative whole numbers) for a count model, "
                f"but {int(bad.sum())} values in genes {a + 1}-{b} are not: the first is "
                f"{block[i, j]!r} (gene {var_names[a + j]!r}, observation {int(rows[i])}). "
                "Pass the raw counts (layer='counts'), or use family='gaussian' for "
                "log-normalised values."
            )


class _Context:
    """What every gene's fit shares: the design, the offset, the options."""

    def __init__(self, design, offset, family, approximation, level, store_blups, min_cells):
        self.rows: RowDesign = row_design(design)
        self.X = np.ascontiguousarray(design.X)
        self.offset = np.ascontiguousarray(offset, dtype=float)
        self.family = family
        self.approximation = approximation
        self.level = level
        self.store_blups = store_blups
        self.min_cells = min_cells
        Xc = design.X - design.X.mean(axis=0)
        self.x_cov = Xc.T @ Xc / len(Xc)  # population covariance, as calcVarPart's
        self.fixed_terms = design.fixed_terms
        self.linear_mean = float(self.offset.mean())
        self.x_mean = design.X.mean(axis=0)
        # each class's log sum of exp(offset): the offset of its Poisson total
        self.class_log_e = np.log(self.rows.class_sums(np.exp(self.offset)))
        # the observations as the kernel's rows: the same for every gene
        self.observations = observation_rows(len(self.offset))
        self.layout = row_layout(self.rows.codes, self.rows.classes)
        self.tables: ZeroTables | None = None
        if family == NB2 and self.rows.n_classes * _CELLS_PER_CLASS <= len(self.offset):
            r = self.rows
            self.tables = zero_tables(self.offset, r.classes, r.n_classes)

    def problem(self, y: np.ndarray) -> tuple[RowProblem, float, tuple]:
        """The gene's rows, its log-likelihood's constant, and where its search starts.

        Poisson: the class totals. NB2: the observations, or with the zero tables, the
        non-zero counts and the classes' zeros (:mod:`._zero_tables`).
        """
        r = self.rows
        if self.family == POISSON:
            yc, log_e, const = r.poisson_rows(y, self.offset, self.class_log_e)
            problem = RowProblem(
                POISSON, yc, r.class_X, log_e, r.class_codes, r.term, r.n_terms,
                classes=np.arange(r.n_classes), prior=r.prior,
            )  # fmt: skip
            # the observations' Poisson GLM: the classes' totals give its fixed effects
            return problem, const, (glm_beta(yc, r.class_X, log_e), 0.0)
        beta0 = glm_beta(r.class_sums(y), r.class_X, self.class_log_e)
        log_phi0 = moment_log_phi(y, np.exp(self.offset + self.X @ beta0))
        if self.tables is None:
            problem = RowProblem(
                NB2, y, self.X, self.offset, r.codes, r.term, r.n_terms, self.observations,
                r.classes, self.layout, r.prior,
            )  # fmt: skip
            return problem, 0.0, (beta0, log_phi0)
        return self._aggregated(y), 0.0, (beta0, log_phi0)

    def _aggregated(self, y: np.ndarray) -> RowProblem:
        """NB2 rows: each non-zero count less its zero, then each class's zeros."""
        r, T = self.rows, self.tables
        assert T is not None
        nz = np.flatnonzero(y)
        m = r.n_classes
        kind = np.concatenate([np.full(len(nz), DIFFERENCE), np.full(m, ZEROS)])
        cls = np.concatenate([np.zeros(len(nz), np.int64), np.arange(m)])
        return RowProblem(
            NB2, np.concatenate([y[nz], np.zeros(m)]), np.concatenate([self.X[nz], r.class_X]),
            np.concatenate([self.offset[nz], np.zeros(m)]),
            np.concatenate([r.codes[nz], r.class_codes]), r.term, r.n_terms,
            (kind, cls, T.start, T.n_segments, T.coef, T.tails),
            classes=np.concatenate([r.classes[nz], np.arange(m)]), prior=r.prior,
        )  # fmt: skip

    def components(self, xs: np.ndarray) -> np.ndarray:
        """Every component's variance at each row of parameters ``xs`` (the chosen residual).

        Vectorised over the rows: the intervals' Jacobian takes all its differences at once.
        """
        k, p = self.rows.n_terms, self.X.shape[1]
        residual = distribution_variance(*self.latent(xs), self.approximation)
        return component_variances(
            self._random_variances(xs), residual, xs[:, k : k + p], self.x_cov, self.fixed_terms
        )

    def _random_variances(self, xs: np.ndarray) -> np.ndarray:
        """Each term's variance over the observations: ``theta^2``, times ``mean K[l, l]``."""
        return xs[:, : self.rows.n_terms] ** 2 * self.rows.moment

    def latent(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``lambda`` (Nakagawa 2017) and ``1 / phi`` (0 for Poisson) at each row of ``xs``."""
        k, p = self.rows.n_terms, self.X.shape[1]
        lam = mean_count(
            self.linear_mean + xs[:, k : k + p] @ self.x_mean, self._random_variances(xs).sum(1)
        )
        if self.family == NB2:
            return lam, np.exp(-xs[:, k + p])
        return lam, np.zeros(len(xs))


def _blups(ctx: _Context, problem: RowProblem, fit: GeneFit):
    """Each level's conditional mode ``theta u`` and its conditional variance."""
    k, p = ctx.rows.n_terms, ctx.X.shape[1]
    theta, beta = fit.x[:k], fit.x[k : k + p]
    phi = float(np.exp(fit.x[k + p])) if ctx.family == NB2 else 1.0
    u = fit.u.copy()
    base = problem.offset + problem.X @ beta
    _, _, factor, _ = conditional_modes(
        problem.family, problem.y, base, phi, theta, problem.layout, problem.term,
        problem.prior, problem.aux, u, MODE_TOL, MODE_ITER, 0.0,
    )  # fmt: skip
    scale = theta[problem.term]
    return scale * u, scale**2 * diagonal_inverse(factor)


class _Searched(NamedTuple):
    """A gene's optimum, its log-likelihood, and the rows it was fitted on (for its BLUPs).

    The rows are kept only with ``store_blups``: at cell level a gene's rows take
    megabytes, and a block holds its genes' optima until their tables are made.
    """

    fit: GeneFit
    loglik: float
    problem: RowProblem | None


def _search(ctx: _Context, y: np.ndarray) -> _Searched | str:
    """One gene's optimum, or the reason it has none."""
    n_nonzero = int((y > 0).sum())
    if n_nonzero == 0:
        return "every count is 0: no variance to partition"
    if n_nonzero < ctx.min_cells:
        return f"filtered: non-zero in {n_nonzero} cells, fewer than min_cells={ctx.min_cells}"
    problem, const, start = ctx.problem(y)
    fit = fit_rows(problem, start=start)
    k, p = ctx.rows.n_terms, ctx.X.shape[1]
    if not np.isfinite(fit.deviance):
        return "no finite optimum of the Laplace criterion (counts too extreme)"
    if ctx.family == NB2 and fit.x[k + p] <= LOG_PHI_BOUNDS[0] + _AT_BOUND:
        return (
            "the NB dispersion is at its bound (size "
            f"{np.exp(LOG_PHI_BOUNDS[0]):.2g}): overdispersion too large to estimate"
        )
    return _Searched(fit, -0.5 * fit.deviance + const, problem if ctx.store_blups else None)


def _records(ctx: _Context, found: list[_Searched], roles) -> list[dict]:
    """The records of a block's fitted genes: estimates, latent quantities, intervals.

    All the genes at once (:mod:`.intervals`): the variances and their derivatives are
    a few small products per gene.
    """
    if not found:
        return []
    k, p = ctx.rows.n_terms, ctx.X.shape[1]
    xs = np.stack([s.fit.x for s in found])
    hessians = np.stack([s.fit.hessian for s in found])
    V = ctx.components(xs)
    lam, inv_size = ctx.latent(xs)
    dist = {a: distribution_variance(lam, inv_size, a) for a in APPROXIMATIONS}
    delta = covariance(xs, hessians, k, ctx.family == NB2)
    beta_var = np.diagonal(delta[1], axis1=1, axis2=2)[:, k : k + p]
    with np.errstate(invalid="ignore"):  # NaN where H is singular
        beta_se = np.where(beta_var > 0, np.sqrt(np.abs(beta_var)), np.nan)
    iv = None
    if ctx.level is not None:
        iv = intervals(ctx.components, xs, hessians, k, ctx.level, roles, delta)
    out = []
    for g, (fit, loglik, problem) in enumerate(found):
        record = {
            "error": "", "theta": fit.x[:k], "beta": fit.x[k : k + p], "beta_se": beta_se[g],
            "variance": V[g], "loglik": loglik, "converged": fit.converged,
            "dispersion": float(np.exp(fit.x[k + p])) if ctx.family == NB2 else np.inf,
            "gradient": fit.gradient[:k], "hessian": fit.hessian[:k, :k].ravel(),
            "lambda": float(lam[g]), **{a: float(v[g]) for a, v in dist.items()},
        }  # fmt: skip
        if iv is not None:
            record["intervals"] = {name: v[g] for name, v in iv.items()}
        if problem is not None:
            record["blups"] = _blups(ctx, problem, fit)
        out.append(record)
    return out


def _fit_block(ctx: _Context, Y: np.ndarray, roles) -> list[dict]:
    """The records of a block's genes (each with its mean count): estimates or the reason."""
    Y = np.asfortranarray(Y, dtype=float)  # each gene's counts contiguous
    with one_blas_thread():
        searched = [_search(ctx, Y[:, j]) for j in range(Y.shape[1])]
        found = _records(ctx, [s for s in searched if not isinstance(s, str)], roles)
    fitted = iter(found)
    return [
        {**({"error": s} if isinstance(s, str) else next(fitted)), "mean": Y[:, j].mean()}
        for j, s in enumerate(searched)
    ]


def fit_counts(
    design: Design,
    Y,
    *,
    family: str = "nb",
    offset: np.ndarray | None = None,
    approximation: str = "lognormal",
    var_names: Sequence[str] | None = None,
    batch: str | Sequence[str] | None = None,
    signal: str | Sequence[str] | None = None,
    min_cells: int = 0,
    store_blups: bool = False,
    ci: float | None = 0.95,
    n_jobs: int | None = 1,
    chunk_genes: int = 64,
    progress: Progress = None,
    source: str = "Y",
    check: bool = True,
) -> VarPartResult:
    """Fit a Poisson or negative binomial mixed model to every gene's counts.

    Per gene ``g``: ``y_ig ~ NB2(mu_ig, phi_g)`` (or Poisson) with ``log mu_ig =
    offset_i + x_i beta_g + sum_t u_{t, level_t(i), g}`` and ``u_t ~ N(0, sigma_{tg}^2)``,
    fitted by maximising the Laplace approximation of the likelihood over ``sigma``,
    ``beta`` and ``phi`` (lme4's ``glmer``, ``nAGQ = 1``; glmmTMB's ``nbinom2``).

    Parameters
    ----------
    design
        The model (:func:`~scvarpart.design.build_design`): random intercepts ``(1|g)``
        with independent levels, and fixed effects.
    Y
        Observations x genes of counts (non-negative whole numbers), with the rows of
        the design's covariate table: NumPy, SciPy sparse, backed or Dask; read a block
        of genes at a time, never modified.
    family
        ``"nb"`` (negative binomial, dispersion per gene) or ``"poisson"``.
    offset
        Per row of the covariate table, the log of each observation's size factor
        (e.g. its library size); default 0.
    approximation
        The distribution-specific variance that is the ``"Residual"`` component:
        ``"lognormal"`` or ``"trigamma"`` (:mod:`scvarpart.glmm.latent`); both are
        reported in the result's ``distribution`` table.
    var_names
        The genes' names (default ``"0"``, ``"1"``, ...).
    batch, signal
        Technical and biological terms, for ``rho``.
    min_cells
        Genes with non-zero counts in fewer observations get no estimates.
    store_blups
        Also return each term's conditional modes (on the log scale) and conditional
        variances.
    ci
        The level of the delta-method intervals of the fractions and ``rho`` (``None``:
        none).
    n_jobs
        Worker processes over blocks of genes; results do not depend on it.
    chunk_genes
        Genes per block, the unit of parallel work.
    progress
        Called after each block with its size and the total.
    source
        What ``Y`` is, in messages.
    check
        Check that ``Y`` holds counts (:func:`check_counts`, a pass over it). ``False``
        where the caller has checked it already (``svp.tl`` does, before it computes the
        library sizes).

    Returns
    -------
    The :class:`~scvarpart.varpart.VarPartResult`: latent-scale variances and fractions
    (the residual is the distribution-specific variance), fixed effects, ``loglik``
    (the Laplace approximation, as lme4's and glmmTMB's ``logLik``), and per gene
    ``dispersion`` (the NB size; ``inf`` for Poisson) and ``lambda``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import scvarpart as svp
    >>> from scvarpart.design import build_design, parse_formula
    >>> rng = np.random.default_rng(0)
    >>> obs = pd.DataFrame({"donor": np.repeat(list("abcdefgh"), 25)})
    >>> design = build_design(parse_formula("~ (1|donor)"), obs)
    >>> donor = rng.normal(0, 0.5, 8).repeat(25)
    >>> Y = rng.poisson(np.exp(1 + donor)[:, None], size=(200, 2))
    >>> result = svp.glmm.fit_counts(design, Y, family="poisson", ci=None)
    >>> result.fractions.columns.tolist()
    ['donor', 'Residual']
    """
    code = check_family(family, approximation)
    if Y.shape[0] != len(design.keep):
        raise ValueError(f"{source} has {Y.shape[0]} rows; the design has {len(design.keep)}.")
    if chunk_genes < 1:
        raise ValueError(f"chunk_genes must be a positive integer, got {chunk_genes!r}.")
    batch_l, signal_l = as_names(batch, "batch"), as_names(signal, "signal")
    check_roles(batch_l, signal_l, design.components)
    names = gene_names(var_names, Y.shape[1])
    rows = np.flatnonzero(design.keep)
    off = np.zeros(len(design.keep)) if offset is None else np.asarray(offset, dtype=float)
    if off.shape != (len(design.keep),) or not np.isfinite(off[rows]).all():
        raise ValueError(
            f"offset must be one finite value per observation ({len(design.keep)}), the "
            "log of its size factor."
        )
    if check:
        check_counts(Y, design, names, source)
    ctx = _Context(design, off[rows], code, approximation, ci, store_blups, min_cells)
    comps = design.components
    roles = None
    if batch_l and signal_l:
        roles = (np.isin(comps, batch_l), np.isin(comps, signal_l))

    def job(a: int, b: int):
        return delayed(_fit_block)(ctx, column_block(Y, a, b)[rows], roles)

    parts = map_column_blocks(Y.shape[1], chunk_genes, job, n_jobs=n_jobs, progress=progress)
    if not parts:
        raise ValueError(f"{source} has no genes.")
    params = {
        "formula": design.formula.text, "method": "Laplace", "family": family,
        "approximation": approximation, "batch": batch_l, "signal": signal_l,
        "engine": "laplace",
    }  # fmt: skip
    return collect(design, pd.Index(names), parts, params, level=ci, store_blups=store_blups)
