"""The array-level entry point: one model, fitted to every gene of a matrix.

For people who have their own matrices (or only their cross-products), without
AnnData::

    stats = svp.lmm.response_stats(Y, design)        # the one pass over Y
    result = svp.lmm.fit_stats(stats, method="REML")  # every gene, from the statistics
    result = svp.lmm.fit(design, Y, method="REML")   # both steps at once

``design`` is a :class:`~scvarpart.design.Design` (``build_design(formula, obs)``)
or a formula with ``obs=``. :meth:`GeneStatistics.from_cross_products` takes
statistics computed elsewhere (as FLASH-MM's ``lmm(XX, XY, ZX, ZY, ZZ, ...)`` does),
e.g. summed over the shards of a dataset. Every function here returns the same
:class:`~scvarpart.varpart.VarPartResult` that ``svp.tl.variance_partition`` stores.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from joblib import Parallel, delayed

from .. import suffstats
from .._bootstrap_options import BOOTSTRAP_KEYS, bootstrap_problem
from .._names import as_names
from .._threads import one_blas_thread
from ..design import Design, build_design, parse_formula
from ..suffstats import DesignGram, ResponseStats, design_gram
from ..suffstats.gram import centred_fixed, indicator_matrix
from ..varpart import component_variances, fractions
from ..varpart.fractions import check_roles
from ..varpart.result import VarPartResult, assemble, gene_names
from .bootstrap import DesignFactor, simulate_statistics
from .fitting import choose_engine, fit_lmm, make_engine, relative_covariances
from .intervals import wald_intervals
from .lrt import LocalRefits, check_test
from .profile import profile_bounds
from .random_terms import TermInfo, apply_relfacs, scalar_infos, term_infos, term_variances
from .tables import (
    blup_tables,
    derivative_tables,
    heritability_table,
    lrt_tables,
    varcorr_table,
)
from .terms import theta_slices

__all__ = [
    "GeneStatistics",
    "fit",
    "fit_stats",
    "group_statistics",
    "profile_confint",
    "response_stats",
]

Progress = Callable[[int, int], object] | None


@dataclass(frozen=True)
class GeneStatistics:
    """Sufficient statistics of a model and a set of genes: all a fit needs.

    Attributes
    ----------
    gram
        Cross-products of the design (``Z'Z``, ``Z'X``, ``X'X``).
    response
        Per-gene statistics (``Z'y``, ``X'y``, sums of squares, means).
    genes
        The genes' names.
    factors
        The grouping factors (random terms), in the order of ``gram``.
    columns
        The fixed-effect columns, intercept first.
    fixed_terms
        Fixed term -> its columns (indices into ``columns``).
    formula
        The model, as written.
    source
        What the responses were read from, for messages (e.g. ``"adata.X"``).
    terms
        The random terms with their levels, known covariances and moments (empty:
        one random intercept per entry of ``gram.factor_sizes``).
    residual_scale
        The mean of ``1 / w`` over the observations (1 without weights): the residual
        variance over the observations is ``sigma^2`` times it.
    """

    gram: DesignGram
    response: ResponseStats
    genes: pd.Index
    factors: tuple[str, ...]
    columns: tuple[str, ...]
    fixed_terms: Mapping[str, np.ndarray]
    formula: str = ""
    source: str = "Y"
    terms: tuple[TermInfo, ...] = ()
    residual_scale: float = 1.0

    @property
    def components(self) -> list[str]:
        """Variance components: random terms, fixed terms, ``"Residual"``."""
        return [*self.factors, *self.fixed_terms, "Residual"]

    @classmethod
    def from_cross_products(
        cls,
        *,
        n_obs: int,
        factor_sizes: Sequence[int],
        XtX: np.ndarray,
        ZtX: np.ndarray,
        ZtZ,
        XtY: np.ndarray,
        ZtY: np.ndarray,
        yty: np.ndarray,
        genes: Sequence[str] | None = None,
        factors: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
    ) -> GeneStatistics:
        """Statistics from uncentred cross-products computed elsewhere.

        ``X`` is the fixed-effect design with the intercept as its first column, ``Z``
        the indicator matrix of the levels, factor by factor (``factor_sizes`` levels
        each); ``Y`` holds one gene per column. Each fixed column is one term.

        Parameters
        ----------
        n_obs
            Number of observations.
        factor_sizes
            Levels of each grouping factor.
        XtX, ZtX, ZtZ
            ``X'X`` (``p x p``), ``Z'X`` (``q x p``), ``Z'Z`` (``q x q``, dense or sparse).
        XtY, ZtY
            ``X'Y`` and ``Z'Y`` gene by gene: ``G x p`` and ``G x q``.
        yty
            ``y'y`` of each gene. Centred internally: for genes whose mean is large
            against their spread, digits are lost (the one pass of
            :func:`response_stats` computes centred sums instead).
        genes, factors, columns
            Names (default: numbers).

        Returns
        -------
        The :class:`GeneStatistics`, to pass to :func:`fit_stats`.
        """
        XtX, ZtX = np.asarray(XtX, float), np.asarray(ZtX, float)
        XtY, ZtY = np.atleast_2d(np.asarray(XtY, float)), np.atleast_2d(np.asarray(ZtY, float))
        yty = np.atleast_1d(np.asarray(yty, float))
        ZtZ = sp.csr_matrix(ZtZ, dtype=float)
        p, q, G = XtX.shape[0], int(sum(factor_sizes)), len(yty)
        shapes = {"XtX": (p, p), "ZtX": (q, p), "ZtZ": (q, q), "XtY": (G, p), "ZtY": (G, q)}
        for name, shape in shapes.items():
            got = locals()[name].shape
            if got != shape:
                raise ValueError(f"{name} has shape {got}; expected {shape} (G genes x ...).")
        counts = ZtZ.diagonal()
        if not (np.isclose(XtX[0, 0], n_obs) and np.allclose(ZtX[:, 0], counts)):
            raise ValueError(
                "The first column of X must be the intercept (all ones): X'X[0, 0] must be "
                "n_obs and Z'X[:, 0] the level counts (the diagonal of Z'Z)."
            )
        m = XtX[0] / n_obs  # column means; the intercept keeps its column
        m[0] = 0.0
        ones_x = XtX[:, 0]  # X'1
        xtx_c = XtX - np.outer(ones_x, m) - np.outer(m, ones_x) + n_obs * np.outer(m, m)
        mean = XtY[:, 0] / n_obs
        gram = DesignGram(
            n_obs=int(n_obs),
            factor_sizes=tuple(int(s) for s in factor_sizes),
            ZtZ=ZtZ,
            ZtX=ZtX - np.outer(counts, m),
            XtX=xtx_c,
            x_mean=m,
        )
        response = ResponseStats(
            n_obs=int(n_obs),
            mean=mean,
            ss=np.maximum(yty - n_obs * mean**2, 0.0),
            ZtY=ZtY - mean[:, None] * counts[None, :],
            XtY=XtY - mean[:, None] * ones_x[None, :],
            n_nonzero=np.full(G, int(n_obs)),
        )
        factors = tuple(factors or (f"factor{j}" for j in range(len(factor_sizes))))
        columns = tuple(columns or ("(Intercept)", *(f"x{j}" for j in range(1, p))))
        return cls(
            terms=scalar_infos(factors, gram.factor_sizes),
            gram=gram,
            response=response,
            genes=pd.Index(genes if genes is not None else [str(g) for g in range(G)]),
            factors=factors,
            columns=columns,
            fixed_terms={c: np.array([j]) for j, c in enumerate(columns) if j > 0},
        )


def group_statistics(cross, design: Design, genes: Sequence[str]) -> GeneStatistics:
    """The statistics of a group of cells from its uncentred cross-products.

    ``cross``: a :class:`~scvarpart.suffstats.leave_out.GroupCrossProducts` over ``[Z,
    X]`` of ``design`` (random intercepts with independent levels; a level without cells
    in the group integrates out of the likelihood).
    """
    q = sum(f.n_levels for f in design.factors)
    A, AtY = cross.AtA, cross.AtY
    stats = GeneStatistics.from_cross_products(
        n_obs=cross.n_obs,
        factor_sizes=[f.n_levels for f in design.factors],
        XtX=A[q:, q:],
        ZtX=A[:q, q:],
        ZtZ=A[:q, :q],
        XtY=AtY[:, q:],
        ZtY=AtY[:, :q],
        yty=cross.yty,
        genes=genes,
        factors=[f.name for f in design.factors],
        columns=design.columns,
    )
    return replace(
        stats,
        fixed_terms=design.fixed_terms,
        formula=design.formula.text,
        terms=term_infos(design),
    )


def _design(
    design: Design | str,
    obs: pd.DataFrame | None,
    weights: str | None = None,
    covariance: Mapping[str, pd.DataFrame] | None = None,
) -> Design:
    if isinstance(design, Design):
        if weights is not None or covariance is not None:
            raise ValueError(
                "weights= and covariance= go with a formula and obs=; a Design has them "
                "already (build_design(formula, obs, weights=..., covariance=...))."
            )
        return design
    if not isinstance(design, str):
        raise TypeError(f"design must be a Design or a formula, got {type(design).__name__}.")
    if obs is None:
        raise ValueError("A formula needs obs=: the table of the observations' covariates.")
    parsed = parse_formula(design)
    if parsed.response is not None:
        raise ValueError(
            f"The formula {design!r} has a left-hand side ({parsed.response!r}); the response "
            "is each gene in turn. Write it as '~ ...'."
        )
    return build_design(parsed, obs, weights=weights, covariance=covariance)


def response_stats(
    Y,
    design: Design | str,
    *,
    obs: pd.DataFrame | None = None,
    var_names: Sequence[str] | None = None,
    genes: slice | None = None,
    chunk_size: int | None = None,
    n_jobs: int | None = 1,
    progress: Progress = None,
    source: str = "Y",
    weights: str | None = None,
    covariance: Mapping[str, pd.DataFrame] | None = None,
) -> GeneStatistics:
    """The sufficient statistics of every gene of ``Y``, in one pass over it.

    Parameters
    ----------
    Y
        Observations x genes, with the rows of the design's covariate table (rows the
        design drops are skipped): NumPy, SciPy sparse, a backed dataset or a Dask
        array. Never densified or modified.
    design
        A :class:`~scvarpart.design.Design`, or a formula (lme4 syntax, ``"~ x +
        (1|g)"``) with ``obs``.
    obs
        The observations' covariates, for a formula.
    var_names
        The genes' names (default: ``"0"``, ``"1"``, ...).
    genes
        Only these columns (a slice); each gene's statistics are the same as in the
        pass over all genes.
    chunk_size
        Rows per block (default about 32 MB of values).
    n_jobs
        Threads of the pass.
    progress
        Called after each block with its size and the total.
    source
        What ``Y`` is, in messages (e.g. ``"adata.X"``).
    weights
        With a formula: a column of ``obs`` with observation weights (residual variance
        ``sigma^2 / w``, lme4's ``weights=``).
    covariance
        With a formula: known covariances between the levels of random intercepts,
        ``{"donor": K}`` (see :func:`~scvarpart.design.build_design`).

    Returns
    -------
    The :class:`GeneStatistics`.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import scvarpart as svp
    >>> rng = np.random.default_rng(0)
    >>> obs = pd.DataFrame({"donor": rng.choice(list("abcdef"), 300)})
    >>> Y = rng.normal(size=(300, 4))
    >>> stats = svp.lmm.response_stats(Y, "~ (1|donor)", obs=obs)
    >>> stats.components
    ['donor', 'Residual']
    """
    design = _design(design, obs, weights, covariance)
    w = design.weights
    Xc, _ = centred_fixed(design, weights=w)
    n_cols = Y.shape[1]
    names = gene_names(var_names, n_cols)
    if Y.shape[0] != len(design.keep):
        raise ValueError(
            f"Y has {Y.shape[0]} rows; the design has {len(design.keep)} observations."
        )
    # the plain indicators where every term is a random intercept: the fastest pass
    Z = indicator_matrix(design) if design.scalar else design.random_matrix()
    response = suffstats.response_stats(
        Y,
        Z,
        Xc,
        rows=design.keep,
        genes=genes,
        chunk_rows=chunk_size,
        n_jobs=n_jobs,
        progress=progress,
        weights=w,
    )
    sizes = [f.n_columns for f in design.factors]
    gram = design_gram(design, Z, weights=w, factor_sizes=sizes)
    infos = term_infos(design)
    gram, response = apply_relfacs(gram, response, infos)
    return GeneStatistics(
        gram=gram,
        response=response,
        genes=names if genes is None else names[genes],
        factors=tuple(f.name for f in design.factors),
        columns=tuple(design.columns),
        fixed_terms=design.fixed_terms,
        formula=design.formula.text,
        source=source,
        terms=infos,
        residual_scale=1.0 if w is None else float(np.mean(1.0 / w)),
    )


def _check_finite(stats: GeneStatistics) -> None:
    """Refuse genes whose statistics are not finite: their values hold NaN or inf."""
    bad = np.flatnonzero(stats.response.nonfinite())
    if len(bad):
        shown = ", ".join(map(repr, stats.genes[bad[:10]]))
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ValueError(
            f"{stats.source} has NaN or infinite values in {len(bad)} gene(s): "
            f"{shown}{more}. Fix the values, or leave these genes out."
        )


def check_bootstrap(n_boot: int, seed: int, ci: float | None) -> None:
    """``n_boot``, ``seed`` and ``ci`` are usable: checked before any data are read.

    The rules of :func:`scvarpart._bootstrap_options.bootstrap_problem`, which plans and
    the command line apply too; replicates need a level.
    """
    for key, value in zip(BOOTSTRAP_KEYS, (n_boot, seed, ci), strict=True):
        problem = bootstrap_problem(key, value)
        if problem:
            raise ValueError(f"{key}={value!r} {problem}.")
    if n_boot and ci is None:
        raise ValueError(
            f"n_boot={n_boot} needs the intervals' level: give ci=0.95 (or another level), "
            "or n_boot=0."
        )


def _with_fixed_and_residual(stats: GeneStatistics, random, sigma2, beta) -> np.ndarray:
    """Every component's variance: the random terms', the fixed terms' and the residual's."""
    residual = sigma2 * stats.residual_scale  # the residual variance over the observations
    return component_variances(random, residual, beta, stats.gram.x_cov, stats.fixed_terms)


def _variance_function(stats: GeneStatistics, infos: tuple[TermInfo, ...]):
    """The component variances from ``theta``, ``sigma^2`` and ``beta``.

    What :func:`fit_stats` computes from the estimates, for :mod:`.intervals`.
    """
    terms = [i.term for i in infos]
    scalar = all(t.scalar for t in terms)

    def variances(theta: np.ndarray, sigma2: np.ndarray, beta: np.ndarray) -> np.ndarray:
        if scalar:
            random = theta**2 * sigma2[:, None]
        else:
            rel = relative_covariances(theta, terms)
            random = term_variances([c * sigma2[:, None, None] for c in rel], infos)
        return _with_fixed_and_residual(stats, random, sigma2, beta)

    return variances


# Genes per chunk of the intervals, the unit of their parallel work.
_INTERVAL_CHUNK = 1024


def _intervals(stats, fit_, infos, variances, roles, level: float, pvalue, **options):
    """Standard errors and intervals (:mod:`.intervals`), as result fields.

    Tables ``variance_se``, ``ci_low`` and ``ci_high``; per-gene ``rho_ci_low`` and
    ``rho_ci_high`` with batch and signal. ``pvalue``: the tests' p-values when they were
    computed (global refits), else local refits' decide where intervals start at 0.
    ``options``: ``method``, ``engine`` and ``n_jobs`` (threads over chunks of genes; a
    gene's intervals do not depend on its chunk).
    """
    terms = [i.term for i in infos]
    reml = options["method"] == "REML"
    eng = make_engine(stats.gram, reml, options["engine"], terms)
    coords = [
        s.start + np.flatnonzero(t.positions[:, 0] == t.positions[:, 1])  # the diagonal's
        for t, s in zip(terms, theta_slices(terms), strict=True)
    ]
    comps = stats.components
    masks = None
    if roles[0] and roles[1]:
        masks = (np.isin(comps, roles[0]), np.isin(comps, roles[1]))
    of_parameters = _variance_function(stats, infos)
    refits = LocalRefits(stats.gram, terms, reml=reml) if pvalue is None else None

    def run(idx: np.ndarray):
        part, response = fit_.subset(idx), stats.response.subset(idx)
        with one_blas_thread():
            p = pvalue[idx] if refits is None else refits.pvalues(response, part, level)
            return wald_intervals(
                eng, response, part, of_parameters, variances[idx], coords, level, masks, p,
                fixed_columns=list(stats.fixed_terms.values()),
            )  # fmt: skip

    G = len(stats.genes)
    chunks = [np.arange(a, min(a + _INTERVAL_CHUNK, G)) for a in range(0, G, _INTERVAL_CHUNK)]
    if options["n_jobs"] in (None, 1) or len(chunks) <= 1:
        outs = [run(c) for c in chunks]
    else:
        outs = Parallel(n_jobs=options["n_jobs"], prefer="threads")(delayed(run)(c) for c in chunks)
    frame = functools.partial(pd.DataFrame, index=stats.genes, columns=comps)
    tables = {
        name: frame(np.concatenate([getattr(o, field) for o in outs]))
        for name, field in (("variance_se", "variance_se"), ("ci_low", "low"), ("ci_high", "high"))
    }
    per_gene = {}
    if masks is not None:
        per_gene = {
            "rho_ci_low": np.concatenate([o.rho_low for o in outs]),
            "rho_ci_high": np.concatenate([o.rho_high for o in outs]),
        }
    return tables, per_gene


def profile_confint(
    stats: GeneStatistics,
    *,
    method: Literal["ML", "REML"] = "ML",
    level: float = 0.95,
    engine: Literal["auto", "dense", "blocked", "general"] = "auto",
) -> pd.DataFrame:
    """Profile-likelihood intervals of every random term's variance and the residual's.

    lme4's ``confint(fit, method="profile")`` for the variance components, per gene:
    the other variances are re-estimated along each profile (:mod:`.profile`), so the
    intervals hold for factors that stand in for each other. lme4 profiles the ML
    deviance also for REML fits; here the profile is of the criterion fitted
    (``method``). Squared, lme4's standard-deviation intervals agree with these to
    1e-3 (``tests/test_profile.py``). A variance estimated at 0 has the lower bound 0,
    and so has one whose profile at 0 has not risen by the ``level`` quantile of
    ``chi^2_1``. About 30 times the cost of the default intervals of
    :func:`fit_stats`, whose fraction intervals hold the other ratios at their estimates.

    Parameters
    ----------
    stats
        From :func:`response_stats`.
    method
        ``"ML"`` (as lme4's profiles) or ``"REML"``.
    level
        Two-sided level of each interval.
    engine
        As in :func:`fit_stats`.

    Returns
    -------
    pandas.DataFrame
        One row per gene and component (random terms and ``"Residual"``): ``gene``,
        ``component``, ``variance`` and its bounds ``low`` and ``high`` (NaN for genes
        without a fit). For a term with random slopes, its variance (as in the
        fractions) is profiled with the shape of its covariance held.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import scvarpart as svp
    >>> rng = np.random.default_rng(0)
    >>> obs = pd.DataFrame({"donor": np.repeat(list("abcdefgh"), 20)})
    >>> Y = rng.normal(size=(160, 2)) + rng.normal(size=(8, 2)).repeat(20, axis=0)
    >>> stats = svp.lmm.response_stats(Y, "~ (1|donor)", obs=obs)
    >>> table = svp.lmm.profile_confint(stats)
    >>> table.columns.tolist()
    ['gene', 'component', 'variance', 'low', 'high']
    >>> inside = (table["low"] <= table["variance"]) & (table["variance"] <= table["high"])
    >>> bool(inside.all())
    True
    """
    method_u = str(method).upper()
    if method_u not in ("ML", "REML"):
        raise ValueError(f"method must be 'ML' or 'REML', got {method!r}.")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level!r}.")
    _check_finite(stats)
    infos = stats.terms or scalar_infos(stats.factors, stats.gram.factor_sizes)
    terms = [t.term for t in infos]
    engine = choose_engine(stats.gram, terms) if engine == "auto" else engine
    reml = method_u == "REML"
    fit_ = fit_lmm(stats.gram, stats.response, reml=reml, engine=engine, terms=terms)
    eng = make_engine(stats.gram, reml, engine, terms)
    of_parameters = _variance_function(stats, infos)
    # the components are the random terms, in order, the fixed ones, then the residual
    k, C = len(terms), len(stats.components)
    names = [*stats.components[:k], stats.components[-1]]
    columns = [*range(k), C - 1]
    coords = [np.arange(s.start, s.stop) for s in theta_slices(terms)]
    comps = list(zip(columns, [*coords, np.array([], dtype=int)], strict=True))
    with one_blas_thread():
        low, high = profile_bounds(eng, stats.response, fit_, of_parameters, comps, level)
    V = of_parameters(fit_.theta, fit_.sigma2, fit_.beta)
    G, P = len(stats.genes), len(comps)
    idx = np.arange(P)
    return pd.DataFrame(
        {
            "gene": np.repeat(np.asarray(stats.genes), P),
            "component": np.tile(names, G),
            "variance": V[:, columns].ravel(),
            "low": low[:, idx, columns].ravel(),
            "high": high[:, idx, columns].ravel(),
        }
    )


# Percentiles of the replicates without interpolation: rho may be inf in some
_EMPIRICAL: Literal["inverted_cdf"] = "inverted_cdf"


def _bootstrap(stats, fit_, terms, boot: tuple[int, int, float], **fit_options):
    """Percentile intervals of each gene's fractions and rho from refits of replicates.

    ``boot``: ``n_boot``, ``seed`` and ``ci``. Returns the tables ``boot_low`` and
    ``boot_high`` (genes x components) and the per-gene fields ``rho_boot_low`` and
    ``rho_boot_high`` (none without batch and signal).
    """
    n_boot, seed, ci = boot
    ok = np.flatnonzero(fit_.error == "")
    beta_c = fit_.beta[ok].copy()  # the centred parametrisation the statistics use
    beta_c[:, 0] += beta_c[:, 1:] @ stats.gram.x_mean[1:]
    genes = [str(g) for g in stats.genes[ok]]
    factor = DesignFactor(stats.gram)
    sim = simulate_statistics(
        factor, terms, beta_c, fit_.sigma2[ok], fit_.theta[ok], genes, n_boot, seed
    )
    names = pd.Index([f"{g}#{k}" for g in genes for k in range(n_boot)])
    boot_fit = fit_stats(replace(stats, response=sim, genes=names), ci=None, **fit_options)
    tail = (1 - ci) / 2

    def bounds(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per gene, the percentiles of its replicates (NaN for genes not fitted)."""
        R = values.reshape(len(ok), n_boot, -1)
        low = np.full((len(stats.genes), R.shape[2]), np.nan)
        high = low.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: none refitted
            low[ok] = np.nanquantile(R, tail, axis=1, method=_EMPIRICAL)
            high[ok] = np.nanquantile(R, 1 - tail, axis=1, method=_EMPIRICAL)
        return low, high

    low, high = bounds(boot_fit.fractions.to_numpy())
    comps = stats.components
    tables = {
        "boot_low": pd.DataFrame(low, index=stats.genes, columns=comps),
        "boot_high": pd.DataFrame(high, index=stats.genes, columns=comps),
    }
    if "rho" not in boot_fit.per_gene:
        return tables, {}
    rho_low, rho_high = bounds(boot_fit.per_gene["rho"].to_numpy())
    return tables, {"rho_boot_low": rho_low[:, 0], "rho_boot_high": rho_high[:, 0]}


def fit_stats(
    stats: GeneStatistics,
    *,
    method: Literal["ML", "REML"] = "ML",
    batch: str | Sequence[str] | None = None,
    signal: str | Sequence[str] | None = None,
    min_cells: int = 0,
    n_jobs: int | None = 1,
    batch_size: int = 256,
    engine: Literal["auto", "dense", "blocked", "general"] = "auto",
    progress: Progress = None,
    store_blups: bool = False,
    test: Literal["lrt"] | None = None,
    n_boot: int = 0,
    seed: int = 0,
    ci: float | None = 0.95,
) -> VarPartResult:
    """Fit the model to every gene from its sufficient statistics.

    Parameters
    ----------
    stats
        From :func:`response_stats` or :meth:`GeneStatistics.from_cross_products`.
    method
        ``"ML"`` or ``"REML"``.
    batch, signal
        The technical and the biological components; with both, ``rho`` is reported.
    min_cells
        Genes non-zero in fewer observations are not fitted (NaN, with the reason).
    n_jobs
        Parallel workers (threads) over batches of genes; results do not depend on it.
    batch_size
        Genes per compiled call.
    engine
        ``"dense"`` (few levels), ``"blocked"`` (many) or ``"auto"``.
    progress
        Called after each batch of genes with its size and the total.
    store_blups
        Also keep the conditional modes (BLUPs) of every random term's effects and
        their conditional variances (``blups``, ``blup_var`` of the result).
    test
        ``"lrt"``: the likelihood-ratio test of each random term's variance = 0 per
        gene, by refitting without the term from the same statistics
        (:mod:`scvarpart.lmm.lrt`): ``lrt``, ``pvalue`` and ``qvalue`` of the result
        (Benjamini-Hochberg over the genes, per term).
    n_boot
        Parametric bootstrap replicates per gene (0: none): the statistics are
        simulated from each gene's fitted model and refitted
        (:mod:`scvarpart.lmm.bootstrap`); percentile intervals of the fractions
        (``boot_low``, ``boot_high``) and of ``rho`` (per-gene fields
        ``rho_boot_low``, ``rho_boot_high``).
    seed
        The bootstrap's seed; with a gene's name, it fixes the gene's replicates.
    ci
        The intervals' level; ``None``: no intervals (nor standard errors). Per gene:
        standard errors of the component variances (``variance_se``) and delta-method
        intervals of the fractions (``ci_low``, ``ci_high``) and of rho (per-gene
        ``rho_ci_low``, ``rho_ci_high``), one-sided for a variance at 0
        (:mod:`scvarpart.lmm.intervals`); and the level of the bootstrap's.

    Returns
    -------
    VarPartResult
        The :class:`~scvarpart.varpart.VarPartResult` of every gene; ``params`` records
        the formula, method, batch, signal, number of observations and engine.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import scvarpart as svp
    >>> rng = np.random.default_rng(0)
    >>> obs = pd.DataFrame({"donor": rng.choice(list("abcdef"), 300)})
    >>> Y = rng.normal(size=(300, 4))
    >>> result = svp.lmm.fit_stats(svp.lmm.response_stats(Y, "~ (1|donor)", obs=obs))
    >>> result.fractions.columns.tolist()
    ['donor', 'Residual']
    """
    method_u = str(method).upper()
    if method_u not in ("ML", "REML"):
        raise ValueError(f"method must be 'ML' or 'REML', got {method!r}.")
    check_bootstrap(n_boot, seed, ci)
    batch_l, signal_l = as_names(batch, "batch"), as_names(signal, "signal")
    check_roles(batch_l, signal_l, stats.components)
    _check_finite(stats)
    response, gram = stats.response, stats.gram
    exclude = np.where(
        response.n_nonzero < min_cells,
        [
            f"filtered: non-zero in {c} cells, fewer than min_cells={min_cells}"
            for c in response.n_nonzero
        ],
        "",
    )
    infos = stats.terms or scalar_infos(stats.factors, gram.factor_sizes)
    terms = [t.term for t in infos]
    check_test(test)
    engine = choose_engine(gram, terms) if engine == "auto" else engine
    fit_ = fit_lmm(
        gram,
        response,
        reml=method_u == "REML",
        n_jobs=n_jobs,
        batch_size=batch_size,
        engine=engine,
        factor_names=list(stats.factors),
        exclude=exclude,
        progress=progress,
        terms=terms,
    )
    if all(t.scalar for t in terms):
        random_variances = fit_.variances  # every moment is 1
    else:
        random_variances = term_variances(fit_.covariances(), infos)
    variances = _with_fixed_and_residual(stats, random_variances, fit_.sigma2, fit_.beta)
    ok = fit_.error == ""
    extra = {"varcorr": varcorr_table(fit_, terms, stats.genes)}
    extra.update(derivative_tables(fit_, terms, stats.genes))
    components = pd.DataFrame(variances, index=stats.genes, columns=stats.components)
    extra["heritability"] = heritability_table(components, infos)
    if store_blups:
        extra.update(blup_tables(gram, response, infos, fit_, stats.genes))
    options = {"n_jobs": n_jobs, "batch_size": batch_size}
    if test == "lrt":
        extra.update(
            lrt_tables(gram, response, terms, fit_, stats.genes, reml=method_u == "REML", **options)
        )
    per_gene: dict[str, np.ndarray] = {}
    if ci is not None:
        roles_ = (batch_l, signal_l)
        # the tests drop whole terms, the intervals' question, unless a term has slopes
        whole = test == "lrt" and all(t.n_coef == 1 for t in terms)
        pvalue = extra["pvalue"].to_numpy() if whole else None
        tables, per_gene = _intervals(
            stats, fit_, infos, variances, roles_, ci, pvalue,
            method=method_u, engine=engine, n_jobs=n_jobs,
        )  # fmt: skip
        extra.update(tables)
    if n_boot:
        assert ci is not None  # check_bootstrap: replicates need a level
        boot = (n_boot, seed, ci)
        roles = {"method": method_u, "batch": batch_l, "signal": signal_l, "engine": engine}
        tables, boot_per_gene = _bootstrap(stats, fit_, terms, boot, **roles, **options)
        extra.update(tables)
        per_gene.update(boot_per_gene)
    return assemble(
        stats.genes,
        stats.components,
        variances,
        fractions(variances),
        {
            **per_gene,
            "mean": response.mean,
            "singular": fit_.singular & ok,
            "converged": fit_.converged,
            "loglik": fit_.loglik,
        },
        fit_.error,
        beta=fit_.beta,
        beta_se=fit_.beta_se,
        columns=stats.columns,
        params={
            "formula": stats.formula,
            "method": method_u,
            "batch": batch_l,
            "signal": signal_l,
            "n_obs": stats.gram.n_obs,
            "engine": engine,
        },
        extra=extra,
    )


def fit(
    design: Design | str,
    Y,
    *,
    obs: pd.DataFrame | None = None,
    method: Literal["ML", "REML"] = "ML",
    batch: str | Sequence[str] | None = None,
    signal: str | Sequence[str] | None = None,
    var_names: Sequence[str] | None = None,
    min_cells: int = 0,
    n_jobs: int | None = 1,
    batch_size: int = 256,
    chunk_size: int | None = None,
    weights: str | None = None,
    covariance: Mapping[str, pd.DataFrame] | None = None,
    store_blups: bool = False,
    test: Literal["lrt"] | None = None,
    n_boot: int = 0,
    seed: int = 0,
    ci: float | None = 0.95,
) -> VarPartResult:
    """Fit a linear mixed model to every gene (column) of ``Y``.

    :func:`response_stats` then :func:`fit_stats`: see them for the parameters.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import scvarpart as svp
    >>> rng = np.random.default_rng(0)
    >>> obs = pd.DataFrame({
    ...     "donor": rng.choice(list("abcdef"), 300),
    ...     "batch": rng.choice(["b1", "b2", "b3"], 300),
    ...     "umi": rng.normal(size=300),
    ... })
    >>> Y = rng.normal(size=(300, 5))
    >>> result = svp.lmm.fit("~ umi + (1|donor) + (1|batch)", Y, obs=obs, method="REML")
    >>> result.beta_se.columns.tolist()
    ['(Intercept)', 'umi']
    """
    design = _design(design, obs, weights, covariance)
    check_roles(
        as_names(batch, "batch"),
        as_names(signal, "signal"),
        design.components,
    )
    stats = response_stats(Y, design, var_names=var_names, chunk_size=chunk_size, n_jobs=n_jobs)
    return fit_stats(
        stats,
        method=method,
        batch=batch,
        signal=signal,
        min_cells=min_cells,
        n_jobs=n_jobs,
        batch_size=batch_size,
        store_blups=store_blups,
        test=test,
        n_boot=n_boot,
        seed=seed,
        ci=ci,
    )
