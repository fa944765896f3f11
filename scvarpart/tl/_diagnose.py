"""``svp.tl.diagnose``: the checks of a fitted model, gene by gene."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg

from .._cells import cell_filter, cell_lists
from .._docs import doc_adata_fitted, doc_key, doc_n_jobs, doc_params
from .._names import as_names
from ..design import Design
from ..get import result
from ..lmm.genes import fit_stats, group_statistics
from ..suffstats.leave_out import group_cross_products
from ..suffstats.residuals import residual_checks
from ..varpart import VarPartResult
from ..varpart.diagnostics import influence_summary, standardised_blups
from ._refit import chosen_genes, fitted_design, refit_options
from ._variance_partition import _expression, variance_partition

__all__ = ["diagnose"]


def _blup_table(fit, genes: pd.Index) -> pd.DataFrame:
    """Long table: gene, term, level, blup, cond_var, std_blup (one-coefficient terms)."""
    rows = []
    for term, b in (fit.blups or {}).items():
        column = f"{term}|(Intercept)"
        if fit.varcorr is None or column not in fit.varcorr.columns:
            continue  # terms with slopes: several coefficients per level
        std = standardised_blups(b, fit.blup_var[term], fit.varcorr[column])
        long = pd.DataFrame(
            {
                "gene": np.repeat(genes.to_numpy(), b.shape[1]),
                "term": term,
                "level": np.tile(b.columns.astype(str), len(genes)),
                "blup": b.to_numpy().ravel(),
                "cond_var": fit.blup_var[term].to_numpy().ravel(),
                "std_blup": std.to_numpy().ravel(),
            }
        )
        rows.append(long)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def _residuals(Y, adata: AnnData, design: Design, fit, names: pd.Index, n_jobs):
    """The residual checks of the refitted genes (:mod:`scvarpart.suffstats.residuals`)."""
    blups = []
    for f in design.factors:
        table = fit.blups[f.name]
        blups.append(table.to_numpy(dtype=float).reshape(len(names), f.n_levels, f.n_coef))
    return residual_checks(
        Y,
        design,
        fit.beta.to_numpy(dtype=float),
        blups,
        genes=adata.var_names.get_indexer(names),
        names=names,
        n_jobs=n_jobs,
    )


def _levels(adata: AnnData, column: str, cells) -> list:
    """The levels of ``column`` among the cells the fit used."""
    if column not in adata.obs.columns:
        raise KeyError(
            f"leave_out={column!r} is not a column of obs: leave-one-level-out refits need "
            "a grouping factor of its own (not an interaction such as 'a:b')."
        )
    keep = cell_filter(adata.obs, cells)
    values = adata.obs[column] if keep is None else adata.obs[column][keep]
    return list(pd.unique(values.dropna()))


def _by_statistics(Y, adata, design: Design, params, options, terms, names) -> pd.DataFrame | None:
    """Leave-one-level-out refits from one pass: each level's statistics subtracted.

    :mod:`scvarpart.suffstats.leave_out`; ``None`` where it does not apply (slopes, known
    covariances, weights, or a factor to leave out that is not a term of the model).
    """
    if not terms:
        return pd.DataFrame()
    factors = {f.name: f for f in design.factors}
    plain = all(f.n_coef == 1 and f.relfac is None for f in design.factors)
    if design.weights is not None or not plain or any(t not in factors for t in terms):
        return None
    cells = params.get("cells") or None
    groups, labels = [np.ones(design.n_obs, dtype=bool)], []
    for term in terms:
        f = factors[term]
        code_of = {str(level): code for code, level in enumerate(f.levels)}
        for level in _levels(adata, term, cells):
            groups.append(f.codes == code_of[str(level)])
            labels.append((term, str(level)))
    index = adata.var_names.get_indexer(names)
    cross = group_cross_products(Y, design, groups, genes=index, n_jobs=options["n_jobs"])
    rows = []
    for (term, level), part in zip(labels, cross[1:], strict=True):
        stats = group_statistics(cross[0] - part, design, names)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a factor with fewer levels, etc.
                fit = fit_stats(
                    stats, method=options["method"], batch=options["batch"],
                    signal=options["signal"], ci=None, n_jobs=options["n_jobs"],
                )  # fmt: skip
        except ValueError as err:
            logg.warning(f"without {term}={level}: no refit ({err})")
            continue
        rows.append(_refit_rows(fit, term, level))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def _refit_rows(fit, term: str, level: str) -> pd.DataFrame:
    """A refit's rows of the influence table: fractions, gene, term, level, rho."""
    table = fit.fractions.assign(gene=fit.genes, term=term, level=level)
    if "rho" in fit.per_gene:
        table["rho"] = fit.per_gene["rho"].to_numpy()
    return table.reset_index(drop=True)


def _without_failed(influence: pd.DataFrame, fit) -> pd.DataFrame:
    """NaN rows for the genes the full refit could not fit (filtered or failed)."""
    failed = influence["gene"].isin(fit.errors.index).to_numpy()
    numeric = [c for c in influence.columns if c not in ("gene", "term", "level")]
    influence.loc[failed, numeric] = np.nan
    return influence


def _leave_one_out(sub: AnnData, formula, options, terms, cells, adata) -> pd.DataFrame:
    """One refit per level of each term in ``terms``, without that level's cells."""
    rows = []
    for term in terms:
        levels = _levels(adata, term, cells)
        allowed = cell_lists(cells or {}).get(term, levels)
        for level in levels:
            kept = {**cell_lists(cells or {}), term: [v for v in allowed if v != level]}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a factor with fewer levels, etc.
                    fit = variance_partition(
                        sub, formula, cells=kept, **{**options, "store_blups": False}
                    )
            except ValueError as err:
                logg.warning(f"without {term}={level}: no refit ({err})")
                continue
            rows.append(_refit_rows(fit, term, str(level)))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


@doc_params(doc_adata=doc_adata_fitted, doc_key=doc_key, doc_n_jobs=doc_n_jobs)
def diagnose(
    adata: AnnData,
    *,
    genes: str | Sequence[str] | None = None,
    key: str = "varpart",
    leave_out: str | Sequence[str] | None = None,
    residuals: bool = True,
    covariance: Mapping[str, pd.DataFrame] | None = None,
    key_added: str | None = None,
    n_jobs: int | None = 1,
    inplace: bool = True,
) -> dict[str, pd.DataFrame] | None:
    """Check the fitted model of each gene: its random effects and influential levels.

    Refits ``genes`` as the stored fit did (the same formula, method, cells, layer), keeping
    the BLUPs, then:

    - with ``residuals``, one more pass over the cells for the conditional residuals
      (``y - X beta - Z b``): their skewness and excess kurtosis (normality; zero-inflated
      genes are skewed), the correlation of their size with the fitted value, per
      grouping factor Bartlett's test of equal residual variance across levels, and the
      share of zeros (:mod:`scvarpart.suffstats.residuals`);
    - standardises every random intercept's BLUPs (each BLUP over its marginal standard
      deviation, ``sqrt(sigma_b^2 - condVar)``; standard normal when the model holds), for
      :func:`scvarpart.pl.qq` and a per-gene screen (the largest absolute value);
    - refits without each level of the ``leave_out`` factors (every cell of one patient,
      day or batch left out), recording each fraction and rho, and per gene the largest
      change of the batch fraction, the level causing it and the batch fraction's range
      (the leave-one-batch-out stability).

    Parameters
    ----------
    {doc_adata}
    genes
        Only these genes (default: all).
    {doc_key}
    leave_out
        Grouping factors (obs columns) whose levels are left out one at a time (default:
        the fit's batch terms that are obs columns; ``[]`` for none).
    residuals
        Check the residuals (one more pass over the cells).
    covariance
        The known covariances between levels, when the fit had them (they are not stored).
    key_added
        Where to store the results (default ``f"{{key}}_diagnostics"``).
    {doc_n_jobs}
    inplace
        Store the results; with ``False``, return the tables instead.

    Returns
    -------
    None, or with ``inplace=False`` a dict of the tables ``"blups"`` (gene, term, level,
    blup, cond_var, std_blup), ``"influence"`` (gene, term, level, one column per
    component's fraction, rho), ``"residuals"`` (gene, term, bartlett, pvalue, var_ratio)
    and ``"summary"`` (per gene). With ``inplace=True``:

    ``adata.uns[key_added]``
        ``blups``, ``influence``, ``residuals`` (per gene and factor: Bartlett's statistic,
        p-value, largest over smallest level variance) and ``params`` (genes, leave_out).
    ``adata.var[f"{{key_added}}_sigma"]``, ``..._skewness``, ``..._excess_kurtosis``
        With ``residuals``: the residuals' root mean square, skewness and excess kurtosis;
        also ``..._fitted_trend``, ``..._zero_fraction`` and ``..._max_var_ratio`` (see
        :mod:`scvarpart.suffstats.residuals`).
    ``adata.var[f"{{key_added}}_max_std_blup"]``
        The largest absolute standardised BLUP of the gene (NaN for genes not checked).
    ``adata.var[f"{{key_added}}_max_change"]``, ``..._influential``, ``..._batch_range``
        With ``leave_out``: the largest change of the batch fraction without one level,
        that level (``"term=level"``), and the batch fraction's range over the refits.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=800, n_genes=4, seed=1)
    >>> svp.tl.variance_partition(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, batch=["chemistry", "day", "operator"],
    ...     signal="patient", method="REML", progress=False,
    ... )
    >>> svp.tl.diagnose(adata, leave_out="chemistry")
    >>> adata.var["varpart_diagnostics_influential"].str.startswith("chemistry=").all()
    np.True_
    """
    stored = result(adata, key=key)
    params = stored.params
    names = chosen_genes(adata, genes)
    options = refit_options(params, covariance, n_jobs)
    cells = params.get("cells") or None
    if leave_out is None:
        terms = [t for t in options["batch"] or [] if t in adata.obs.columns]
    else:
        terms = as_names(leave_out, "leave_out") or []
    for t in terms:
        _levels(adata, t, cells)  # an unknown column is refused before any refit
    # every gene: the object itself (a view would copy the matrix to fit it)
    sub = adata if names.equals(adata.var_names) else adata[:, names]
    fit = variance_partition(sub, params["formula"], cells=cells, **options)
    assert isinstance(fit, VarPartResult)  # inplace=False
    blups = _blup_table(fit, names)
    design = fitted_design(adata, params, covariance)
    Y, _ = _expression(adata, options["layer"], options["use_raw"])
    influence = _by_statistics(Y, adata, design, params, options, terms, names)
    if influence is None:  # slopes, kinship or weights: refits without the cells
        influence = _leave_one_out(sub, params["formula"], options, terms, cells, adata)
    summary = pd.DataFrame(index=names)
    if len(blups):
        summary["max_std_blup"] = (
            blups.assign(a=blups["std_blup"].abs()).groupby("gene", sort=False)["a"].max()
        )
    if len(influence):
        influence = _without_failed(influence, fit)
        batch = options["batch"] or []
        summary = summary.join(influence_summary(influence, fit.fractions, batch))
    by_factor = pd.DataFrame()
    if residuals:
        checks = _residuals(Y, adata, design, fit, names, n_jobs)
        summary = summary.join(checks.per_gene)
        by_factor = checks.by_factor
    if not inplace:
        return {
            "blups": blups,
            "influence": influence,
            "residuals": by_factor,
            "summary": summary,
        }
    key_added = key_added or f"{key}_diagnostics"
    adata.uns[key_added] = {
        "blups": blups,
        "influence": influence,
        "residuals": by_factor,
        "params": {"key": key, "genes": list(map(str, names)), "leave_out": list(terms)},
    }
    for column in summary.columns:
        values = summary[column].reindex(adata.var_names)
        if values.dtype == object:
            values = values.fillna("").astype(str)
        adata.var[f"{key_added}_{column}"] = values.to_numpy()
    return None
