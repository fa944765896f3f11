"""``svp.tl.variance_partition``: per-gene variance partition of an AnnData object."""

from __future__ import annotations

import functools
import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal, NamedTuple, cast

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg

from .. import glmm, lmm
from .._cells import cell_filter, cell_lists
from .._docs import (
    doc_adata,
    doc_batch_signal,
    doc_batch_size,
    doc_cells,
    doc_count_model,
    doc_covariance,
    doc_formula,
    doc_key_added,
    doc_layer,
    doc_method,
    doc_min_cells,
    doc_n_jobs,
    doc_params,
    doc_progress,
    doc_use_raw,
    doc_weights,
)
from .._groups import check_groupby
from .._names import as_names
from .._warn import warn
from ..design import Design, DesignAudit, DesignError, audit_design, build_design, parse_formula
from ..design.audit import FEW_LEVELS
from ..get._results import check_var_names
from ..lmm.genes import check_bootstrap
from ..lmm.lrt import check_test
from ..storage.matrix import value_sample
from ..storage.select import select_expression
from ..varpart import VarPartResult, check_roles
from ..varpart.grouped import grouped_params, write_grouped
from ._counts import (
    LIBRARY_SIZE,
    CountModel,
    check_count_design,
    check_count_options,
    offset_values,
)
from ._grouped import fit_groups
from ._progress import progress_bar

__all__ = ["check_options", "variance_partition", "write_results"]

_VERSIONED = ("scvarpart", "anndata", "numpy", "scipy", "pandas", "joblib", "scanpy")
# Rows (or, for a column-compressed matrix, genes) inspected to recognise raw counts.
_COUNT_CHECK_ROWS = 2000
_COUNT_CHECK_GENES = 100
# log1p of normalised counts stays below ~15 (log1p of a million CPM is 13.8): larger
# non-negative values have not been log-transformed (TPM, FPKM, normalised counts).
_UNLOGGED_MAX = 50.0


@functools.cache
def _versions() -> dict[str, str]:
    out = {}
    for pkg in _VERSIONED:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _expression(adata: AnnData, layer: str | None, use_raw: bool):
    """The observations x genes matrix to fit and its name in messages.

    The matrix is aligned with ``adata.var_names``.
    """
    expression = select_expression(adata, layer, use_raw)
    return expression.aligned(), expression.source


def _check_values(Y, source: str, var_names: pd.Index) -> None:
    """Refuse raw counts or unlogged values.

    Judged from the first rows (or, for a column-compressed matrix, genes). NaN and inf
    are found by the pass over the data itself (in the statistics they make non-finite)
    and reported before any gene is fitted.
    """
    values = value_sample(Y, _COUNT_CHECK_ROWS, _COUNT_CHECK_GENES)
    if not values.size or not (values >= 0).all():
        return
    if values.max() > 1 and (values % 1 == 0).all():
        warn(
            f"{source} looks like raw counts (non-negative integers). variance_partition "
            "models log-normalised expression: run sc.pp.normalize_total and "
            "sc.pp.log1p first, or pass layer= with log-normalised values."
        )
    elif values.max() > _UNLOGGED_MAX:
        warn(
            f"{source} has values up to {values.max():,.6g}: it looks like expression that "
            "was not log-transformed (TPM, FPKM or normalised counts; log-normalised values "
            "stay below about 15), in which a few large values dominate every variance. "
            "variance_partition models log-normalised expression: run sc.pp.log1p first "
            "(after sc.pp.normalize_total for counts), or pass layer= with log-normalised "
            "values."
        )


def _plain(cells: Mapping[str, Sequence] | None) -> dict[str, list] | None:
    """``cells`` as a plain dict of lists, to record in ``uns`` (h5ad-writable)."""
    return cell_lists(cells) if cells else None


_METHODS: dict[str, Literal["ML", "REML"]] = {"ML": "ML", "REML": "REML"}


class _Prepared(NamedTuple):
    design: Design
    method: Literal["ML", "REML"]
    batch: list[str] | None
    signal: list[str] | None
    model: dict  # the model's options besides the formula, as recorded in params
    audit: DesignAudit
    weights_layer: str | None = None  # gene-specific weights: the layer holding them
    count_model: CountModel | None = None  # family="poisson" or "nb": the count model


def _weights_kind(weights, obs: pd.DataFrame, layers: Sequence[str]) -> str | None:
    """Whether ``weights`` names an ``obs`` column (shared weights) or a layer (per gene).

    ``"obs"``, ``"layer"`` or ``None`` (no weights); a name that is neither, or both, is
    refused here, before anything is read.
    """
    if weights is None:
        return None
    if not isinstance(weights, str) or not weights:
        raise TypeError(f"weights= must name an obs column or a layer of weights, got {weights!r}.")
    in_obs, in_layers = weights in obs.columns, weights in layers
    if in_obs and in_layers:
        raise ValueError(
            f"weights={weights!r} names both an obs column and a layer; rename one of "
            "them (an obs column holds weights shared by every gene, a layer one weight "
            "per cell and gene)."
        )
    if not (in_obs or in_layers):
        raise DesignError(
            f"weights={weights!r} is not a column of obs, nor a layer. obs columns: "
            f"{list(obs.columns)[:20]}; layers: {list(layers)}. Compute precision weights "
            "with svp.pp.voom_weights, or pass the column of sample weights."
        )
    return "layer" if in_layers else "obs"


def _covariance_record(covariance: Mapping[str, pd.DataFrame] | None) -> dict[str, str] | None:
    """Per term with a known covariance, a SHA-256 of its matrix (levels and values).

    Recorded in params instead of the matrix, which can be large: enough to tell
    whether two results used the same one.
    """
    if not covariance:
        return None
    out = {}
    for term, K in covariance.items():
        frame = pd.DataFrame(K)
        digest = hashlib.sha256()
        digest.update("\x1f".join(map(str, frame.index)).encode())
        digest.update(np.ascontiguousarray(frame.to_numpy(dtype=float)).tobytes())
        out[str(term)] = digest.hexdigest()
    return out


def check_options(
    *, batch_size: int, chunk_size: int | None, n_jobs: int | None, min_cells: int
) -> None:
    """Execution options, checked before anything is read."""

    def whole(value) -> bool:
        return isinstance(value, int | np.integer) and not isinstance(value, bool)

    if not (whole(batch_size) and batch_size >= 1):
        raise ValueError(
            f"batch_size={batch_size!r}: the genes fitted per compiled call must be a "
            "positive integer (the default, 256, suits most data)."
        )
    if chunk_size is not None and not (whole(chunk_size) and chunk_size >= 1):
        raise ValueError(
            f"chunk_size={chunk_size!r}: the cells read per block must be a positive "
            "integer, or None for blocks of about 32 MB."
        )
    if n_jobs is not None and not (whole(n_jobs) and n_jobs != 0):
        raise ValueError(
            f"n_jobs={n_jobs!r}: give the number of workers (1, 2, ...), -1 for every core, "
            "or None."
        )
    if not (whole(min_cells) and min_cells >= 0):
        raise ValueError(f"min_cells={min_cells!r} must be a non-negative integer (0: no filter).")


def _warn_few_levels(design: Design, method: str) -> None:
    """ML shrinks the variance of a factor with few levels towards 0: say so, once."""
    few = [f for f in design.factors if f.n_levels < FEW_LEVELS]
    if method != "ML" or not few:
        return
    listing = ", ".join(f"{f.name!r} ({f.n_levels} levels)" for f in few)
    warn(
        "Under method='ML', the variance of a grouping factor with few levels is biased "
        "downwards (for k balanced levels, by about a factor (k-1)/k) and is more often "
        f"estimated as 0: {listing}. method='REML' corrects most of this bias; ML is "
        "variancePartition's default (see 'ML or REML' in the README)."
    )


def _warn_weak(audit: DesignAudit) -> None:
    """Components the design separates only weakly, besides few levels: say so, once.

    Few levels are the ML warning's (:func:`_warn_few_levels`); under REML they make an
    estimate imprecise, not biased, which its interval shows.
    """
    weak = [
        w for w, k in zip(audit.warnings, audit.warning_kinds, strict=True) if k != "few levels"
    ]
    if weak:
        warn(
            "The design separates some components only weakly (the whole audit: "
            "svp.pp.check_design, or svp.get.design after the fit):\n- " + "\n- ".join(weak)
        )


def _prepare(
    obs: pd.DataFrame,
    formula: str,
    method,
    batch,
    signal,
    cells=None,
    weights: str | None = None,
    covariance: Mapping[str, pd.DataFrame] | None = None,
    layers: Sequence[str] = (),
    counts: Mapping[str, Any] | None = None,
) -> _Prepared:
    """Every check that needs only the design, before any data are touched.

    ``layers``: the names of the layers, where ``weights`` may name gene-specific ones.
    ``counts``: ``family``, ``offset``, ``approximation``, ``test`` and ``n_boot``, for
    :func:`~._counts.check_count_options` (default: the Gaussian model).
    """
    method_u = _METHODS.get(str(method).upper())
    if method_u is None:
        raise ValueError(f"method must be 'ML' or 'REML', got {method!r}.")
    if len(obs) == 0:
        raise ValueError(
            "There are no cells (n_obs = 0): nothing to fit. Check the subsetting or "
            "filtering that produced the data."
        )
    batch_l = as_names(batch, "batch")
    signal_l = as_names(signal, "signal")
    parsed = parse_formula(formula)
    if parsed.response is not None:
        raise ValueError(
            f"The formula {formula!r} has a left-hand side ({parsed.response!r}); the "
            "response is each gene in turn. Write it as '~ ...'."
        )
    c = dict(counts or {})
    family = c.pop("family", "gaussian")
    count = check_count_options(
        family, obs=obs, method=method, weights=weights,
        **{"offset": None, "approximation": "lognormal", "test": None, "n_boot": 0, **c},
    )  # fmt: skip
    kind = _weights_kind(weights, obs, layers)
    design = build_design(
        parsed, obs, rows=cell_filter(obs, cells), weights=weights if kind == "obs" else None,
        covariance=covariance, residual=count is None,
    )  # fmt: skip
    check_roles(batch_l, signal_l, design.components)
    check_count_design(design, family)
    audit = audit_design(design, residual=count is None)
    if count is None:  # REML, its remedy, is not defined for count models
        _warn_few_levels(design, method_u)
    _warn_weak(audit)
    model = {
        "weights": weights, "weights_per_gene": kind == "layer" or None,
        "covariance": _covariance_record(covariance),
    }  # fmt: skip
    if count is not None:
        model.update(
            family=count.family, offset=count.offset or LIBRARY_SIZE,
            approximation=count.approximation,
        )  # fmt: skip
    layer = weights if kind == "layer" else None
    return _Prepared(design, method_u, batch_l, signal_l, model, audit, layer, count)


def _partition(
    prep: _Prepared,
    Y,
    source: str,
    var_names: pd.Index,
    *,
    params: dict,
    key_added: str,
    n_jobs: int | None,
    batch_size: int,
    chunk_size: int | None,
    progress: bool | None,
    genes: slice | None = None,
    min_cells: int = 0,
    store_blups: bool = False,
    test: Literal["lrt"] | None = None,
    bootstrap: tuple[int, int, float | None] = (0, 0, 0.95),
    W=None,
    offset: np.ndarray | None = None,
) -> VarPartResult:
    """The pass over the data and the fits (of ``genes``), through :mod:`scvarpart.lmm`.

    ``bootstrap``: ``n_boot``, ``seed`` and ``ci`` of :func:`scvarpart.lmm.fit_stats`.
    ``W``: the gene-specific weights (the layer ``prep.weights_layer``), shaped as ``Y``.
    ``offset``: a count model's offset per row (:func:`~._counts.offset_values`, which
    has checked that ``Y`` holds counts).
    """
    design = prep.design
    if Y.shape != (len(design.keep), len(var_names)):
        raise ValueError(
            f"{source} has shape {Y.shape}; expected {len(design.keep)} observations x "
            f"{len(var_names)} genes."
        )
    if genes is None and prep.count_model is None:
        _check_values(Y, source, var_names)
    n_genes = len(var_names) if genes is None else len(var_names[genes])
    how = prep.method if prep.count_model is None else f"{prep.count_model.family}, Laplace"
    start = logg.info(
        f"fitting {design.formula.text!r} ({how}) to {n_genes} genes x {design.n_obs} cells"
    )
    fit_options: dict[str, Any] = {
        "method": prep.method, "batch": prep.batch, "signal": prep.signal,
        "min_cells": min_cells, "store_blups": store_blups, "test": test,
        "n_boot": bootstrap[0], "seed": bootstrap[1], "ci": bootstrap[2],
    }  # fmt: skip
    if prep.count_model is not None:  # a count model, gene by gene
        cols = slice(None) if genes is None else genes
        with progress_bar("fitting genes", progress) as bar:
            result = glmm.fit_counts(
                design, Y[:, cols], family=prep.count_model.family, offset=offset,
                approximation=prep.count_model.approximation, var_names=var_names[cols],
                batch=prep.batch, signal=prep.signal, min_cells=min_cells,
                store_blups=store_blups, ci=bootstrap[2], n_jobs=n_jobs, progress=bar,
                source=source, check=False,  # offset_values checked the counts
            )  # fmt: skip
    elif W is not None:  # gene-specific weights: each gene its own weighted statistics
        cols = slice(None) if genes is None else genes
        with progress_bar("fitting genes", progress) as bar:
            result = lmm.fit_gene_weights(
                design, Y[:, cols], W[:, cols], var_names=var_names[cols], n_jobs=n_jobs,
                progress=bar, source=source, weights_source=f"layers[{prep.weights_layer!r}]",
                **fit_options,
            )  # fmt: skip
    else:
        with progress_bar("reading data", progress) as bar:
            stats = lmm.response_stats(
                Y, design, var_names=var_names, genes=genes, chunk_size=chunk_size,
                n_jobs=n_jobs, progress=bar, source=source,
            )  # fmt: skip
        logg.debug("    sufficient statistics computed", time=start)
        with progress_bar("fitting genes", progress) as bar:
            result = lmm.fit_stats(
                stats, n_jobs=n_jobs, batch_size=batch_size, progress=bar, **fit_options
            )
    fitted = result.params
    result = replace(
        result,
        params={
            "formula": fitted["formula"],
            "method": fitted["method"],
            "batch": prep.batch,
            "signal": prep.signal,
            **{k: v for k, v in prep.model.items() if v is not None},
            **params,
            "min_cells": min_cells,
            "store_blups": store_blups,
            **({"test": test} if test else {}),
            **({"n_boot": bootstrap[0], "seed": bootstrap[1]} if bootstrap[0] else {}),
            **({"ci": bootstrap[2]} if bootstrap[2] is not None else {}),
            "n_obs": design.n_obs,
            "n_obs_dropped": int((~design.keep).sum()),
            "engine": fitted["engine"],
            "versions": dict(_versions()),  # a copy: the cached record stays as it is
        },
        design=prep.audit,
    )
    summary = result.summary
    logg.info(
        f"    finished: {summary['n_genes'] - summary['n_failed']} genes fitted, "
        f"{summary['n_singular']} singular, {summary['n_failed']} without estimates",
        time=start,
    )
    if summary["n_not_converged"]:
        logg.warning(
            f"{summary['n_not_converged']} genes did not meet the convergence criterion; "
            f"see adata.var['{key_added}_converged']."
        )
    return result


def write_results(adata: AnnData, result: VarPartResult, key_added: str) -> None:
    """Store ``result`` in ``adata`` (see :meth:`VarPartResult.write`).

    Every result of an earlier fit under ``key_added`` is replaced.

    A view is made an actual object first, as anndata would do on the first
    assignment (without its warning).
    """
    check_var_names(adata.var_names)
    if not result.genes.equals(adata.var_names):
        raise ValueError(
            "The result is not indexed by this object's genes, in order: results computed "
            "from another object cannot be stored here."
        )
    if adata.is_view:
        logg.info("    the view was made an actual AnnData to store the results")
        adata._init_as_actual(adata.copy())
    result.write(adata, key_added)


@doc_params(
    doc_adata=doc_adata,
    doc_formula=doc_formula,
    doc_batch_signal=doc_batch_signal,
    doc_method=doc_method,
    doc_count_model=doc_count_model,
    doc_layer=doc_layer,
    doc_use_raw=doc_use_raw,
    doc_cells=doc_cells,
    doc_min_cells=doc_min_cells,
    doc_weights=doc_weights,
    doc_covariance=doc_covariance,
    doc_key_added=doc_key_added,
    doc_n_jobs=doc_n_jobs,
    doc_batch_size=doc_batch_size,
    doc_progress=doc_progress,
)
def variance_partition(
    adata: AnnData,
    formula: str,
    *,
    batch: str | Sequence[str] | None = None,
    signal: str | Sequence[str] | None = None,
    method: Literal["ML", "REML"] = "ML",
    family: Literal["gaussian", "poisson", "nb"] = "gaussian",
    offset: str | None = None,
    approximation: Literal["lognormal", "trigamma"] = "lognormal",
    layer: str | None = None,
    use_raw: bool = False,
    cells: Mapping[str, Sequence] | None = None,
    min_cells: int = 0,
    weights: str | None = None,
    covariance: Mapping[str, pd.DataFrame] | None = None,
    store_blups: bool = False,
    test: Literal["lrt"] | None = None,
    n_boot: int = 0,
    seed: int = 0,
    ci: float | None = 0.95,
    key_added: str = "varpart",
    n_jobs: int | None = 1,
    batch_size: int = 256,
    chunk_size: int | None = None,
    progress: bool | None = None,
    groupby: str | None = None,
    copy: bool = False,
    inplace: bool = True,
) -> AnnData | VarPartResult | None:
    """Partition each gene's variance into biological, technical and residual parts.

    Fits, for every gene, the linear mixed model of ``formula`` (lme4 syntax,
    without a left-hand side: the response is each gene in turn) and reports the
    fraction of variance explained by each term, as variancePartition's
    ``fitExtractVarPartModel`` does, and the batch-to-signal ratio ``rho``.
    The fit is exact (an optimum at least as good as lme4's); the data are read
    once, so the cost per gene does not grow with the number of cells.

    Parameters
    ----------
    {doc_adata}
    {doc_formula}
    {doc_batch_signal}
    {doc_method}
    {doc_count_model}
    {doc_layer}
    {doc_use_raw}
    {doc_cells}
    {doc_min_cells}
    {doc_weights}
    {doc_covariance}
    store_blups
        Also store the conditional modes (BLUPs) of every random term's effects, genes
        x levels, and their conditional variances (:func:`scvarpart.get.blups`).
    test
        ``"lrt"``: per gene, the likelihood-ratio test of each random term's variance
        = 0 (the null distribution a mixture of 0 and chi-squared with 1 degree of
        freedom, the weight of 0 computed per gene from the design, above the asymptotic
        1/2 for terms with few levels), refitting without the term from the same
        sufficient statistics; Benjamini-Hochberg q-values over the genes, per term. A
        term with ``r`` correlated coefficients (random slopes) is tested for its last
        one against the model without it, under the 50:50 mixture of chi-squared with
        ``r - 1`` and ``r`` degrees of freedom (Stram & Lee 1994).
    n_boot
        Parametric bootstrap replicates per gene (0: none): each gene's sufficient
        statistics are simulated from its fitted model (never touching the cells) and
        refitted, giving percentile intervals of the fractions and of ``rho``.
    seed
        The bootstrap's seed; with a gene's name it fixes the gene's replicates, so
        they do not depend on the other genes, ``n_jobs`` or chunks.
    ci
        The level of the intervals: per gene, standard errors of the component
        variances and delta-method intervals of the fractions and of ``rho``
        (one-sided, ``[0, u]``, for a variance at 0), and the bootstrap's. ``None``:
        none of them (and no bootstrap).
    {doc_key_added}
    {doc_n_jobs}
    {doc_batch_size}
    chunk_size
        Cells read per block in the pass over the data (by default about 4 million
        stored values, 32 MB as float64); bounds the memory used for a backed object.
    {doc_progress}
    groupby
        An ``obs`` column (a cell type): fit the model to each group on its own, as
        dreamlet fits each cell type. Every group's design is checked first; a group that
        cannot be fitted (too few observations, a factor with one level) is skipped with
        its reason. Pseudobulk data made with the same ``groupby`` are fitted on each
        group's expressed genes. The results are stored per group in ``uns[key_added]``
        (below); read them with :func:`scvarpart.get.varpart_df` and the other getters
        (a ``group`` column, or ``group=``), :func:`scvarpart.get.groups` and
        :func:`scvarpart.pl.variance_partition` (one panel per group).
    copy
        Return a modified copy instead of writing into ``adata``.
    inplace
        Write the results into ``adata``; with ``False``, return them instead (with
        ``groupby``, a dict of each group's result).

    Returns
    -------
    None or AnnData or VarPartResult or dict
        With ``inplace=True``, ``None`` (or the modified copy when ``copy=True``). With
        ``groupby``, ``adata.uns[key_added]`` holds ``params``, ``group_table`` (per
        group: ``status`` fitted or skipped, ``reason``, observations, genes, genes with
        estimates, the warnings about its design) and ``groups`` (each group's result as
        it would be stored alone). Without, these fields are set:

        ``adata.varm[key_added]``
            DataFrame of variance fractions, genes x components (random terms as
            written, fixed terms by name, ``"Residual"``); rows sum to 1.
        ``adata.varm[f"{key_added}_variance"]``
            The same table with variances.
        ``adata.var[f"{key_added}_rho"]``
            Batch-to-signal ratio (when ``batch`` and ``signal`` are given).
        ``adata.var[f"{key_added}_mean"]``
            Mean of the modelled values of each gene.
        ``adata.var[f"{key_added}_singular"]``, ``..._converged``, ``..._loglik``
            Some variance exactly 0; the optimiser converged; the maximised ML or
            REML log-likelihood (lme4's ``logLik``).
        ``adata.varm[f"{key_added}_beta"]``, ``adata.varm[f"{key_added}_beta_se"]``
            Fixed effects, genes x columns of the fixed design (``"(Intercept)"``,
            ...), and their standard errors (lme4's ``fixef`` and
            ``sqrt(diag(vcov))``).
        ``adata.varm[f"{{key_added}}_varcorr"]``
            Every random term's coefficient variances and covariances (lme4's
            ``VarCorr``; tidy with :func:`scvarpart.get.varcorr_df`).
        ``adata.varm[f"{{key_added}}_theta"]``, ``..._gradient``, ``..._hessian``
            lme4's covariance parameters at the optimum, with the criterion's gradient
            and Hessian there.
        ``adata.varm[f"{{key_added}}_blup_{{term}}"]``, ``..._blupvar_{{term}}``
            With ``store_blups``: each term's BLUPs and conditional variances.
        ``adata.varm[f"{{key_added}}_lrt"]``, ``..._pvalue``, ``..._qvalue``
            With ``test="lrt"``: genes x random terms, the test of each variance = 0.
        ``adata.varm[f"{{key_added}}_variance_se"]``
            Unless ``ci=None``: standard errors of the variances (genes x components;
            NaN for a variance at 0).
        ``adata.varm[f"{{key_added}}_ci_low"]``, ``..._ci_high``
            Unless ``ci=None``: the intervals of the fractions (genes x components);
            ``adata.var[f"{{key_added}}_rho_ci_low"]`` and ``..._rho_ci_high`` those of
            ``rho``.
        ``adata.varm[f"{{key_added}}_boot_low"]``, ``..._boot_high``
            With ``n_boot``: the bootstrap intervals of the fractions (genes x
            components); ``adata.var[f"{{key_added}}_rho_boot_low"]`` and
            ``..._rho_boot_high`` those of ``rho``.
        ``adata.uns[key_added]``
            ``params``, ``components``, ``summary``, ``errors`` (a DataFrame of the
            genes without estimates and why) and ``result_keys`` (the ``var``
            columns and ``varm`` keys written). A refit under the same
            ``key_added`` removes exactly the keys the earlier fit recorded, so
            nothing of another model is left; a fit that fails leaves the earlier
            results as they were.

        All of it is read back with :meth:`scvarpart.varpart.VarPartResult.read`,
        and as tidy tables with :func:`scvarpart.get.varpart_df`,
        :func:`scvarpart.get.rho_df` and :func:`scvarpart.get.beta_df`.

        With ``inplace=False``, the :class:`~scvarpart.varpart.VarPartResult` (the
        same tables, not stored).

    Raises
    ------
    ValueError
        Before any data are read: a formula or design that cannot be fitted (see
        :func:`scvarpart.design.build_design`), no cells, duplicated gene names,
        unknown ``batch``/``signal`` components, invalid ``batch_size``,
        ``chunk_size``, ``n_jobs`` or ``min_cells``. NaN or infinite values name
        the genes.

    Warns
    -----
    UserWarning
        Before fitting: raw counts, or values that were not log-transformed (TPM,
        FPKM); a numeric grouping column that looks like a measurement; under
        ``method="ML"``, grouping factors with fewer than 5 levels (their variances
        are biased downwards; ``"REML"`` corrects most of it); dropped observations.

    Notes
    -----
    Observations with a missing value in a model column are dropped with a
    warning (as variancePartition does). Genes that are constant, or cannot be
    fitted, get NaN results and a reason in ``uns[key_added]["errors"]``; the
    other genes are not affected. A view is made an actual AnnData to store the
    results (its parent is not modified). The most batch-dominated genes:
    :func:`scvarpart.get.batch_dominated`.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=1000, n_genes=50)
    >>> svp.tl.variance_partition(
    ...     adata,
    ...     "~ log_umi + (1|patient) + (1|chemistry) + (1|day) + (1|operator)",
    ...     batch=["chemistry", "day", "operator"],
    ...     signal="patient",
    ...     method="REML",
    ... )
    >>> adata.varm["varpart"].columns.tolist()
    ['patient', 'chemistry', 'day', 'operator', 'log_umi', 'Residual']
    """
    if copy and not inplace:
        raise ValueError("copy=True returns the modified copy; it needs inplace=True.")
    check_options(batch_size=batch_size, chunk_size=chunk_size, n_jobs=n_jobs, min_cells=min_cells)
    check_var_names(adata.var_names)
    with warnings.catch_warnings():
        if groupby is not None:  # the whole data's design is checked, each group's warned of
            check_groupby(adata.obs, groupby)
            warnings.simplefilter("ignore")
        counts = {
            "family": family, "offset": offset, "approximation": approximation,
            "test": test, "n_boot": n_boot,
        }  # fmt: skip
        prep = _prepare(
            adata.obs, formula, method, batch, signal, cells, weights, covariance,
            list(adata.layers), counts,
        )  # fmt: skip
    check_test(test)
    check_bootstrap(n_boot, seed, ci)
    if groupby is not None:
        return _by_group(adata, groupby, copy=copy, inplace=inplace, options=dict(
            formula=formula, batch=batch, signal=signal, method=method, family=family,
            offset=offset, approximation=approximation, layer=layer,
            use_raw=use_raw, cells=cells, min_cells=min_cells, weights=weights,
            covariance=covariance, store_blups=store_blups, test=test, n_boot=n_boot,
            seed=seed, ci=ci, n_jobs=n_jobs, batch_size=batch_size, chunk_size=chunk_size,
            progress=progress, key_added=key_added,
        ))  # fmt: skip
    Y, source = _expression(adata, layer, use_raw)
    W = None if prep.weights_layer is None else adata.layers[prep.weights_layer]
    off = None
    if prep.count_model is not None:
        off = offset_values(adata.obs, prep.count_model, Y, prep.design, adata.var_names, source)
    results = _partition(
        prep,
        Y,
        source,
        adata.var_names,
        params={"layer": layer, "use_raw": use_raw, "cells": _plain(cells)},
        min_cells=min_cells,
        store_blups=store_blups,
        test=test,
        bootstrap=(n_boot, seed, ci),
        key_added=key_added,
        n_jobs=n_jobs,
        batch_size=batch_size,
        chunk_size=chunk_size,
        progress=progress,
        W=W,
        offset=off,
    )
    if not inplace:
        return results
    if copy:
        adata = adata.copy()
    write_results(adata, results, key_added)
    return adata if copy else None


def _by_group(adata: AnnData, groupby: str, *, copy, inplace, options):
    """:func:`variance_partition` of each group of ``obs[groupby]`` (``options``: its arguments)."""
    layers = list(adata.layers)
    o = options

    def prepare(obs: pd.DataFrame) -> _Prepared:
        counts = {k: o[k] for k in ("family", "offset", "approximation", "test", "n_boot")}
        return _prepare(
            obs, o["formula"], o["method"], o["batch"], o["signal"], o["cells"],
            o["weights"], o["covariance"], layers, counts,
        )  # fmt: skip

    def fit(view: AnnData) -> VarPartResult:
        return cast(VarPartResult, variance_partition(view, inplace=False, **options))

    results, table = fit_groups(adata, groupby, prepare, fit)
    if not inplace:
        return results
    params = grouped_params(groupby, results)
    if copy:
        adata = adata.copy()
    write_grouped(adata, results, table, o["key_added"], params)
    return adata if copy else None
