"""``svp.pp.pseudobulk``: one profile per sample (and cell type); filters that say what they did."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg

from .._docs import doc_n_jobs, doc_params
from .._warn import warn
from ..counts import filter_by_expr, log_cpm
from ..storage.matrix import value_sample
from ..storage.select import select_expression
from ..suffstats.aggregate import group_sums

__all__ = ["pseudobulk"]


def _check_counts(Y, source: str) -> None:
    """Counts: no negative values; non-integers are warned about (edgeR expects counts)."""
    values = value_sample(Y)
    if values.size and values.min() < 0:
        raise ValueError(
            f"{source} has negative values: pseudobulk sums raw counts. Pass the layer of "
            "counts (layer='counts'), not log-normalised or scaled values."
        )
    if values.size and not np.all(values % 1 == 0):
        warn(
            f"{source} has non-integer values; pseudobulk sums raw counts (edgeR's filter "
            "and log CPM assume counts). Pass layer= naming the counts if these are not."
        )


def _samples(obs: pd.DataFrame, sample: str, groupby: str | None):
    """Every cell's pseudobulk sample (-1: a missing label) and the samples' labels."""
    for column in (sample, groupby):
        if column is not None and column not in obs.columns:
            raise KeyError(f"{column!r} is not a column of adata.obs.")
    keys = [groupby, sample] if groupby else [sample]
    frame = obs[keys].astype("object")
    missing = frame.isna().any(axis=1).to_numpy()
    labels = frame[~missing].drop_duplicates().sort_values(keys).reset_index(drop=True)
    index = pd.MultiIndex.from_frame(labels)
    codes = np.full(len(obs), -1, dtype=np.int64)
    codes[~missing] = index.get_indexer(pd.MultiIndex.from_frame(frame[~missing]))
    return codes, labels, int(missing.sum())


def _sample_obs(obs: pd.DataFrame, codes: np.ndarray, labels: pd.DataFrame):
    """Per pseudobulk sample: the columns constant within it, means of numeric others.

    Returns the table and the columns dropped (not numeric and not constant).
    """
    used = codes >= 0
    grouped = obs[used].groupby(codes[used], sort=True, observed=True)
    table = labels.copy()
    dropped = []
    for column in obs.columns:
        if column in table.columns:
            continue
        values = obs[column]
        if grouped[column].nunique(dropna=False).max() <= 1:
            first = grouped[column].first()
            table[column] = first.to_numpy()
            if isinstance(values.dtype, pd.CategoricalDtype):
                table[column] = pd.Categorical(table[column], categories=values.cat.categories)
        elif pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            table[column] = grouped[column].mean().to_numpy()
        else:
            dropped.append(column)
    return table, dropped


def _filters(counts, n_cells, labels, groups, options) -> tuple:
    """Samples with too few cells, then each group's expressed genes (edgeR's rule).

    Returns the samples kept (mask), the table of samples removed, the genes expressed per
    group (groups x genes) and the per-group gene counts.
    """
    few = n_cells < options["min_cells"]
    removed = labels[few].assign(
        n_cells=n_cells[few], reason=f"fewer than {options['min_cells']} cells"
    )
    expressed, rows = {}, []
    for group in pd.unique(groups):
        members = np.flatnonzero((groups == group) & ~few)
        if len(members) == 0:
            keep = np.zeros(counts.shape[1], dtype=bool)
        else:
            keep = filter_by_expr(
                counts[members], min_count=options["min_count"],
                min_total_count=options["min_total_count"], large_n=options["large_n"],
                min_prop=options["min_prop"],
            )  # fmt: skip
        expressed[group] = keep
        rows.append(
            {"group": group, "n_samples": len(members), "n_genes_kept": int(keep.sum()),
             "n_genes_removed": int((~keep).sum())}
        )  # fmt: skip
    return ~few, removed, expressed, pd.DataFrame(rows)


def _say(removed: pd.DataFrame, genes: pd.DataFrame, n_missing: int, sample: str) -> None:
    """What the filters removed: a warning when they removed anything (never silent)."""
    lines = []
    if n_missing:
        lines.append(f"{n_missing} cells without a {sample!r} label were not summed")
    if len(removed):
        listed = ", ".join(removed[sample].astype(str).head(10))
        lines.append(f"{len(removed)} samples with too few cells removed ({listed})")
    for row in genes.itertuples():
        if row.n_genes_removed:
            where = "" if row.group == 0 and len(genes) == 1 else f" in {row.group}"
            lines.append(
                f"{row.n_genes_removed} genes not expressed enough{where} "
                f"({row.n_samples} samples; edgeR's filterByExpr)"
            )
    text = "pseudobulk: " + "; ".join(lines) if lines else "pseudobulk: nothing removed"
    if lines:
        warn(text)
    else:
        logg.info(text)


@doc_params(doc_n_jobs=doc_n_jobs)
def pseudobulk(
    adata: AnnData,
    sample: str,
    *,
    groupby: str | None = None,
    layer: str | None = "counts",
    use_raw: bool = False,
    min_cells: int = 5,
    min_count: float = 10,
    min_total_count: float = 15,
    large_n: int = 10,
    min_prop: float = 0.7,
    prior_count: float = 0.5,
    n_jobs: int | None = 1,
    chunk_size: int | None = None,
) -> AnnData:
    """Sum the counts of each sample's cells (per cell type), normalise and filter.

    The counts of the cells of each ``sample`` (within each ``groupby`` group, e.g. a cell
    type) are summed in one pass over the matrix, in memory, backed or on disk
    (:mod:`scvarpart.suffstats.aggregate`; the sums are those of ``sc.get.aggregate``).
    Then, per group:

    1. pseudobulk samples with fewer than ``min_cells`` cells are removed;
    2. genes are kept by edgeR's ``filterByExpr`` rule on the remaining samples
       (:func:`scvarpart.counts.filter_by_expr`: ``min_count`` counts per median library
       in enough samples, ``min_total_count`` in all; checked against edgeR 3.40);
    3. the values are limma ``voom``'s log counts per million,
       ``log2((count + prior_count) / (library size + 2 prior_count) * 1e6)``, with the
       library size summed over the group's kept genes, as edgeR's ``keep.lib.sizes=FALSE``
       (:func:`scvarpart.counts.log_cpm`). No further normalisation factors (TMM) are
       applied.

    Nothing is dropped silently: what each filter removed (which samples and why, how many
    genes per group) is said in a warning and stored.

    Parameters
    ----------
    adata
        Cells x genes with raw counts.
    sample
        ``obs`` column of the samples (a donor, a library).
    groupby
        ``obs`` column of the groups aggregated separately (a cell type); ``None``: one.
    layer, use_raw
        Where the counts are (default ``layers["counts"]``; ``layer=None`` for ``X``).
    min_cells
        Fewest cells of a pseudobulk sample.
    min_count, min_total_count, large_n, min_prop
        edgeR's ``filterByExpr`` settings (its defaults).
    prior_count
        Added to the counts before the log (voom's 0.5).
    {doc_n_jobs}
    chunk_size
        Cells per block of the pass.

    Returns
    -------
    AnnData, pseudobulk samples x genes kept (expressed in at least one group):

    ``X``
        The log CPM values.
    ``layers["counts"]``
        The summed counts.
    ``obs``
        The ``groupby`` and ``sample`` labels, ``n_cells``, ``lib_size`` (the library
        size of the log CPM: the counts of the group's kept genes), the columns constant within
        every pseudobulk sample (their value) and numeric others (their mean over the
        cells); ``uns["pseudobulk"]["params"]["dropped_columns"]`` names the others.
    ``varm["expressed"]``
        With ``groupby``: genes x groups, whether the gene passed the group's filter.
    ``uns["pseudobulk"]``
        ``params``, ``removed`` (the samples removed: labels, ``n_cells``, ``reason``) and
        ``genes`` (per group: samples, genes kept and removed).

    Examples
    --------
    >>> import scvarpart as svp
    >>> cells = svp.datasets.simulate_counts(3000, 200, seed=0, counts=True)
    >>> bulk = svp.pp.pseudobulk(cells, "patient")
    >>> bulk.obs[["patient", "n_cells"]].head(2)
          patient  n_cells
    pat01   pat01      112
    pat02   pat02      138
    """
    expression = select_expression(adata, layer, use_raw)
    Y, source = expression.aligned(), expression.source
    _check_counts(Y, source)
    codes, labels, n_missing = _samples(adata.obs, sample, groupby)
    counts = group_sums(Y, codes, len(labels), n_jobs=n_jobs, chunk_rows=chunk_size)
    n_cells = np.bincount(codes[codes >= 0], minlength=len(labels))
    options = {
        "min_cells": min_cells, "min_count": min_count, "min_total_count": min_total_count,
        "large_n": large_n, "min_prop": min_prop,
    }  # fmt: skip
    # each pseudobulk sample's group (one group, 0, without groupby)
    groups = labels[groupby].to_numpy() if groupby else np.zeros(len(labels), dtype=object)
    kept, removed, expressed, genes = _filters(counts, n_cells, labels, groups, options)
    any_group = np.logical_or.reduce(list(expressed.values()))
    obs, dropped = _sample_obs(adata.obs, codes, labels)
    obs["n_cells"] = n_cells
    values = np.empty((len(labels), int(any_group.sum())))
    library = np.zeros(len(labels))
    for group, keep in expressed.items():
        rows = groups == group
        library[rows] = counts[np.ix_(rows, keep)].sum(axis=1)
        values[rows] = log_cpm(counts[np.ix_(rows, any_group)], library[rows], prior_count)
    obs["lib_size"] = library
    obs = obs[kept].reset_index(drop=True)
    obs.index = pd.Index(obs[[c for c in (groupby, sample) if c]].astype(str).agg(":".join, axis=1))
    bulk = AnnData(X=values[kept], obs=obs, var=adata.var[any_group].copy())
    bulk.layers["counts"] = counts[np.ix_(kept, any_group)]
    if groupby:
        table = pd.DataFrame(expressed, index=adata.var_names)[any_group]
        bulk.varm["expressed"] = table.rename(columns=str)
    _say(removed, genes, n_missing, sample)
    bulk.uns["pseudobulk"] = {
        "params": {
            "sample": sample, "groupby": groupby, "source": source, **options,
            "prior_count": prior_count, "n_cells_unlabelled": n_missing,
            "dropped_columns": dropped,
        },
        "removed": removed.reset_index(drop=True).astype({sample: str}),
        "genes": genes.astype({"group": str}),
    }  # fmt: skip
    return bulk
