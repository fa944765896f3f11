"""``svp.pp.voom_weights``: precision weights of pseudobulk log counts, as dream's voom."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg

from .. import lmm
from .._docs import doc_n_jobs, doc_params
from .._groups import expressed_genes, group_order
from .._warn import warn
from ..counts import log_cpm
from ..counts.voom import mean_variance_trend, precision_weights
from ..design import build_design, parse_formula
from ..design.predict import Effects
from ..storage.select import select_expression
from ..varpart.correction import coefficient_arrays

__all__ = ["voom_weights"]

# variancePartition warns above this weight: a trend that fits badly at high counts.
_LARGE_WEIGHT = 1e8


def _library_sizes(obs: pd.DataFrame, counts: np.ndarray, lib_size: str | None) -> np.ndarray:
    """The samples' library sizes: an obs column, or the counts' row sums."""
    if lib_size is None:
        return counts.sum(axis=1)
    if lib_size not in obs.columns:
        raise KeyError(
            f"lib_size={lib_size!r} is not a column of adata.obs; svp.pp.pseudobulk writes "
            "'lib_size'. Pass lib_size=None to use each sample's total count."
        )
    lib = pd.to_numeric(obs[lib_size], errors="coerce").to_numpy(dtype=float)
    bad = ~(np.isfinite(lib) & (lib > 0))
    if bad.any():
        raise ValueError(
            f"obs[{lib_size!r}] must hold positive library sizes, but sample "
            f"{obs.index[np.argmax(bad)]!r} has {lib[np.argmax(bad)]!r}."
        )
    return lib


def _counts(adata: AnnData, layer: str | None) -> tuple[np.ndarray, str]:
    """The counts, dense (pseudobulk: few samples), checked to be counts."""
    expression = select_expression(adata, layer, False)
    values = expression.aligned()
    values = values.toarray() if hasattr(values, "toarray") else np.asarray(values)
    counts = np.asarray(values, dtype=float)
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(
            f"{expression.source} must hold non-negative counts (the summed counts of "
            "svp.pp.pseudobulk are in layers['counts'])."
        )
    return counts, expression.source


@doc_params(doc_n_jobs=doc_n_jobs)
def voom_weights(
    adata: AnnData,
    formula: str,
    *,
    layer: str | None = "counts",
    lib_size: str | None = "lib_size",
    weights: str | None = None,
    method: Literal["ML", "REML"] = "ML",
    span: float = 0.5,
    groupby: str | None = None,
    key_added: str = "voom",
    n_jobs: int | None = 1,
    copy: bool = False,
) -> AnnData | None:
    """Precision weights of log counts from their mean-variance trend (voom, with a mixed model).

    variancePartition's ``voomWithDreamWeights`` (Law et al. 2014; Hoffman & Roussos
    2021), for pseudobulk samples (:func:`scvarpart.pp.pseudobulk`):

    1. the counts become voom's log CPM, ``log2((count + 0.5) / (library + 1) * 1e6)``;
    2. ``formula`` is fitted to every gene (with the sample ``weights``, if given);
    3. the square root of each gene's residual standard deviation is smoothed against
       its mean log count (lowess with ``span``; genes of zeros only left out);
    4. each value's weight is ``1 / trend(fitted log count)^4``, the fitted value being
       the fixed effects plus the BLUPs at the sample's levels; times the sample weight.

    Fit with the weights afterwards: ``svp.tl.variance_partition(adata, formula,
    weights=key_added)`` fits each gene with its own weights (exactly, as
    ``lmer(weights=)``).

    Parameters
    ----------
    adata
        Samples x genes with counts (the output of :func:`scvarpart.pp.pseudobulk`).
    formula
        The model whose fitted values and residual deviations define the trend; the
        one fitted afterwards.
    layer
        Where the counts are (``None``: ``X``).
    lib_size
        ``obs`` column of the library sizes (pseudobulk's, over the genes kept); ``None``:
        each sample's total count in ``layer``.
    weights
        ``obs`` column of sample weights (e.g. ``n_cells``): used in the fit and
        multiplied into the precision weights, as ``voomWithDreamWeights(weights=)``.
    method
        ``"ML"`` (variancePartition's fit) or ``"REML"``.
    span
        The lowess span (voom's 0.5).
    groupby
        An ``obs`` column (a cell type): voom per group, on the group's samples and, for
        pseudobulk data made with the same ``groupby``, its expressed genes, with the
        group's own fit and trend (as dreamlet runs ``voomWithDreamWeights`` per cell
        type). The weights of a gene outside a group's genes are NaN in its samples; a
        group whose model cannot be fitted gets none, with a warning.
    key_added
        The weights are written to ``layers[key_added]``, the trend to ``uns[key_added]``.
    {doc_n_jobs}
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    With ``copy=True`` the modified copy, otherwise ``None``; writes

    ``layers[key_added]``
        The weights, samples x genes (NaN for samples the model does not use: a missing
        covariate).
    ``var[f"{{key_added}}_mean_log_count"]``, ``var[f"{{key_added}}_sqrt_sd"]``
        Without ``groupby``: the trend's coordinates of each gene.
    ``uns[key_added]``
        ``params``, and ``trend`` (the lowess curve's ``x`` and ``y``) for
        :func:`scvarpart.pl.voom_trend`; with ``groupby``, one per group (its ``group``,
        curve, genes and their coordinates) under the group's position.

    Examples
    --------
    >>> import scvarpart as svp
    >>> cells = svp.datasets.simulate_counts(4000, 200, seed=0, counts=True)
    >>> import warnings
    >>> with warnings.catch_warnings():  # the genes the expression filter removed
    ...     warnings.simplefilter("ignore")
    ...     bulk = svp.pp.pseudobulk(cells, "library")
    >>> svp.pp.voom_weights(bulk, "~ (1|patient) + (1|chemistry)", method="REML")
    >>> bulk.layers["voom"].shape == bulk.shape
    True
    """
    counts, source = _counts(adata, layer)
    lib = _library_sizes(adata.obs, counts, lib_size)
    options = {"formula": formula, "weights": weights, "method": method, "span": span,
               "n_jobs": n_jobs}  # fmt: skip
    start = logg.info(f"voom weights: fitting {formula!r} ({method}) to {counts.shape[1]} genes")
    if groupby is None:
        W, trend, notes = _voom(adata.obs, counts, lib, adata.var_names, **options)
        trends = {"x": trend.x, "y": trend.y}
    else:
        W, trends, notes = _voom_groups(adata, groupby, counts, lib, options)
    for note in notes:
        warn(f"voom_weights: {note}")
    logg.info("    finished", time=start)
    if copy:
        adata = adata.copy()
    adata.layers[key_added] = W
    if groupby is None:
        adata.var[f"{key_added}_mean_log_count"] = trend.mean_log_count
        adata.var[f"{key_added}_sqrt_sd"] = trend.sqrt_sd
    adata.uns[key_added] = {
        "params": {
            "formula": formula, "method": method, "layer": layer, "source": source,
            "lib_size": lib_size, "weights": weights, "span": span,
            **({"groupby": groupby} if groupby else {}),
        },
        "trend": trends,
    }  # fmt: skip
    return adata if copy else None


def _voom(obs, counts, lib, var_names, *, formula, weights, method, span, n_jobs):
    """The weights of one set of samples by voom, its trend, and what to warn of.

    The weights are NaN in the samples the model drops (a missing covariate).
    """
    design = build_design(parse_formula(formula), obs, weights=weights)
    E = log_cpm(counts, lib)
    fit = lmm.fit(
        design, E, method=method, var_names=var_names, store_blups=True, ci=None, n_jobs=n_jobs
    )
    sample_w = np.ones(design.n_obs) if design.weights is None else design.weights
    sigma = np.sqrt(fit.varcorr["Residual"].to_numpy())  # lme4's sigma (VarCorr's)
    rows = np.flatnonzero(design.keep)
    names = [f.name for f in design.factors]
    beta, blups, failed = coefficient_arrays(fit, design, pd.Index(var_names), names)
    fitted = Effects.of(design, beta, blups).at(np.arange(design.n_obs))
    gone = pd.Index(var_names).isin(failed)
    # genes without estimates: their mean as the fitted value (an intercept-only model)
    fitted[:, gone] = E[np.ix_(rows, gone)].mean(axis=0)
    trend = mean_variance_trend(
        E[rows], lib[rows], sigma, has_counts=counts[rows].sum(axis=0) > 0, span=span
    )
    W = np.full(E.shape, np.nan)
    W[rows] = precision_weights(trend, fitted, lib[rows]) * sample_w[:, None]
    notes = []
    if gone.any():
        notes.append(
            f"{int(gone.sum())} genes have no fit (e.g. {failed[0]!r}); their weights come "
            "from the trend at their mean"
        )
    if np.nanmax(W) > _LARGE_WEIGHT:
        notes.append(
            f"the largest precision weight is {np.nanmax(W):.3g}: the trend fits the highest "
            "counts badly (see svp.pl.voom_trend); try a smaller span"
        )
    return W, trend, notes


def _voom_groups(adata: AnnData, groupby: str, counts, lib, options):
    """The weights per group, as dreamlet runs voom per cell type.

    Each group's samples and genes get their own fit and trend. Returns the weights (NaN
    outside each group's genes), the trends per group (keyed by the group's position) and
    what to warn of.
    """
    groups, _ = group_order(adata.obs, groupby)
    labels = adata.obs[groupby].to_numpy()
    W = np.full(counts.shape, np.nan)
    trends, notes = {}, []
    for i, group in enumerate(groups):
        rows = np.flatnonzero(labels == group)
        genes = expressed_genes(adata, groupby, group)
        cols = np.arange(adata.n_vars) if genes is None else np.flatnonzero(genes)
        try:
            Wg, trend, said = _voom(
                adata.obs.iloc[rows], counts[np.ix_(rows, cols)], lib[rows],
                adata.var_names[cols], **options,
            )  # fmt: skip
        except ValueError as err:  # a design that cannot be fitted, too few genes
            notes.append(f"group {group!r} has no weights: {err}")
            continue
        W[np.ix_(rows, cols)] = Wg
        notes += [f"group {group!r}: {n}" for n in said]
        trends[str(i)] = {
            "group": str(group), "x": trend.x, "y": trend.y, "genes": np.asarray(
                adata.var_names[cols], dtype=str), "mean_log_count": trend.mean_log_count,
            "sqrt_sd": trend.sqrt_sd,
        }  # fmt: skip
    return W, trends, notes
