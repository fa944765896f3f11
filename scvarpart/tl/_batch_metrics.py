"""``svp.tl.batch_metrics``: whether a correction removed the batch and kept the biology."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scanpy import logging as logg

from .._docs import doc_adata, doc_key, doc_n_jobs, doc_params
from .._names import as_names
from ..get import result
from ..metrics import embedding as em
from ..metrics.genes import gene_changes
from ._refit import refit_options
from ._variance_partition import variance_partition

__all__ = ["batch_metrics"]

# Neighbours per cell: 90 for the LISI (perplexity 30, as scIB), the first 15 of them for
# the graph's connectivity (scanpy's default graph).
_LISI_NEIGHBOURS = 90
_GRAPH_NEIGHBOURS = 15


def _matrix_or_embedding(adata: AnnData, name: str) -> tuple[Any, bool]:
    """``adata.X`` (``"X"``), a layer, or an ``obsm`` embedding; and whether it is one."""
    in_layers, in_obsm = name in adata.layers, name in adata.obsm
    if name == "X" and not in_layers:
        return adata.X, False
    if in_layers and in_obsm:
        raise ValueError(
            f"{name!r} is both a layer and an obsm key; rename one of them to say which to score."
        )
    if in_layers:
        return adata.layers[name], False
    if in_obsm:
        return np.asarray(adata.obsm[name], dtype=float), True
    raise KeyError(
        f"{name!r} is neither 'X', a layer ({list(adata.layers)}) nor an obsm key "
        f"({list(adata.obsm)}): name the matrix or the embedding to score."
    )


def _pca(values, cells: np.ndarray, genes: np.ndarray, n_comps: int, seed: int) -> np.ndarray:
    """The principal components of ``values`` (cells x genes) on the chosen rows and genes."""
    import scanpy as sc

    block = values[cells][:, genes]
    block = block.toarray() if sp.issparse(block) else np.asarray(block, dtype=float)
    n = min(n_comps, min(block.shape) - 1)
    return np.asarray(sc.pp.pca(block.astype(np.float64), n_comps=n, random_state=seed))


def _columns(adata: AnnData, names, what: str, fitted: list[str]) -> list[str]:
    """``obs`` columns of ``what`` (by default the fit's terms that are obs columns)."""
    columns = as_names(names, what) or [t for t in fitted if t in adata.obs.columns]
    if not columns:
        raise ValueError(
            f"Which obs columns hold the {what} labels? Pass {what}=[...] (the fit under "
            "key= names none that is an obs column)."
        )
    for c in columns:
        if c not in adata.obs.columns:
            raise KeyError(f"{what}={c!r} is not a column of adata.obs.")
    return columns


def _classifier_rows(before, after, column: str, values, better: str, seed: int) -> list:
    """The classifier's accuracy and balanced accuracy, before and after, with chance."""
    b, a = (em.label_prediction(x, values, seed=seed) for x in (before, after))
    return [
        ("accuracy", column, b["accuracy"], a["accuracy"], better, b["chance_accuracy"]),
        ("balanced_accuracy", column, b["balanced_accuracy"], a["balanced_accuracy"], better,
         b["chance_balanced"]),
    ]  # fmt: skip


def _embedding_rows(before, after, obs: pd.DataFrame, batch, labels, seed: int) -> pd.DataFrame:
    """The long table of the embedding metrics, before and after."""
    near = [em.neighbours(x, _LISI_NEIGHBOURS) for x in (before, after)]
    within = obs[labels[0]].to_numpy()
    rows: list = []
    for column in batch:
        values, n = obs[column].to_numpy(), obs[column].nunique()
        pcr = [em.pcr(x, values) for x in (before, after)]
        asw = [em.silhouette_batch(x, values, within) for x in (before, after)]
        ilisi = [em.scaled_ilisi(em.lisi(*nn, values), n) for nn in near]
        removed = em.pcr_comparison(before, after, values)
        rows += [
            ("pcr", column, *pcr, "lower", np.nan),
            ("pcr_comparison", column, np.nan, removed, "higher", np.nan),
            ("silhouette_batch", column, *asw, "higher", np.nan),
            ("ilisi", column, *ilisi, "higher", np.nan),
        ]
        rows += _classifier_rows(before, after, column, values, "lower", seed)
    for column in labels:
        values, n = obs[column].to_numpy(), obs[column].nunique()
        graph = [em.graph_connectivity(nn[0][:, :_GRAPH_NEIGHBOURS], values) for nn in near]
        clisi = [em.scaled_clisi(em.lisi(*nn, values), n) for nn in near]
        rows += [
            ("graph_connectivity", column, *graph, "higher", np.nan),
            ("clisi", column, *clisi, "higher", np.nan),
        ]
        rows += _classifier_rows(before, after, column, values, "higher", seed)
    columns = ["metric", "variable", "before", "after", "better", "chance"]
    table = pd.DataFrame(rows, columns=columns)
    table["role"] = np.where(table["variable"].isin(batch), "batch", "labels")
    return table


def _genes_scored(adata: AnnData, after: str, mask_var) -> np.ndarray:
    """Column indices of the genes the PCA uses: ``mask_var``, or those ``after`` corrected."""
    if mask_var is None:
        corrected = adata.var.get(after) if after in adata.layers else None
        if corrected is not None and corrected.dtype == bool and corrected.any():
            return np.flatnonzero(corrected.to_numpy())
        return np.arange(adata.n_vars)
    mask = adata.var[mask_var].to_numpy() if isinstance(mask_var, str) else np.asarray(mask_var)
    if mask.dtype != bool or len(mask) != adata.n_vars or not mask.any():
        raise ValueError(
            "mask_var must be a boolean var column (or array over the genes) with at least "
            "one gene, e.g. 'highly_variable'."
        )
    return np.flatnonzero(mask)


def _fit_after(adata: AnnData, after: str, key: str, key_after: str, covariance, n_jobs):
    """The variance partition of the corrected layer under ``key_after`` (fitted if missing).

    Fitted as the fit under ``key`` was (:func:`~scvarpart.tl._refit.refit_options`: the same
    model, cells, weights and known covariances), from the layer ``after``.
    """
    if key_after in adata.uns:
        stored = result(adata, key=key_after)
        if stored.params.get("layer") != after:
            raise ValueError(
                f"adata.uns[{key_after!r}] is a fit of {stored.params.get('layer') or 'X'!r}, "
                f"not of the layer {after!r}: pass key_after= naming the fit of {after!r}, or "
                "a new key to fit it there."
            )
        return stored
    params = result(adata, key=key).params
    options = refit_options(params, covariance, n_jobs)
    options |= {"layer": after, "use_raw": False, "store_blups": False, "inplace": True}
    logg.info(f"batch_metrics: fitting layer {after!r} as {key!r} was fitted, under {key_after!r}")
    variance_partition(
        adata, params["formula"], cells=params.get("cells") or None, key_added=key_after,
        **options,
    )  # fmt: skip
    return result(adata, key=key_after)


@doc_params(doc_adata=doc_adata, doc_key=doc_key, doc_n_jobs=doc_n_jobs)
def batch_metrics(
    adata: AnnData,
    *,
    before: str = "X",
    after: str = "varpart_corrected",
    batch: str | Sequence[str] | None = None,
    labels: str | Sequence[str] | None = None,
    key: str = "varpart",
    key_after: str | None = None,
    mask_var: str | np.ndarray | None = None,
    covariance: Mapping[str, pd.DataFrame] | None = None,
    n_comps: int = 30,
    n_sample: int | None = 5000,
    seed: int = 0,
    key_added: str = "batch_metrics",
    n_jobs: int | None = 1,
    copy: bool = False,
) -> AnnData | None:
    """Score a batch correction: batch removed, biology kept, per embedding and per gene.

    **Embedding.** ``before`` and ``after`` are each ``"X"``, a layer (its principal
    components are computed, with scanpy, on the same cells and genes) or an ``obsm``
    embedding (used as it is: scVI's latent space, Harmony's PCs...), so any correction
    can be scored with the same table. On a random subsample of ``n_sample`` cells (the
    same for both), per batch column: principal component regression of the batch and its
    reduction (scIB's ``pcr_comparison``), batch ASW within the first label column (scIB's
    ``silhouette_batch``), scaled iLISI, and how well a cross-validated classifier predicts
    the batch (accuracy and balanced accuracy, with chance); per label column: graph
    connectivity, scaled cLISI and the classifier, which should stay accurate
    (:mod:`scvarpart.metrics.embedding`, checked against scib-metrics).

    **Genes.** When ``adata`` holds a fit under ``key`` and ``after`` is a layer, the layer
    is fitted as that fit was (under ``key_after``, if not there yet) and each gene's batch
    and signal fractions, ``rho`` and signal variance are compared: a gene whose signal
    variance fell by more than a fifth, and by more than 1% of its whole variance, has lost
    biology (:mod:`scvarpart.metrics.genes`).

    Parameters
    ----------
    {doc_adata}
    before, after
        The uncorrected and corrected values: ``"X"``, a layer or an ``obsm`` key.
    batch
        ``obs`` columns of the batches (default: the fit's batch terms that are columns).
    labels
        ``obs`` columns of the biology (default: the fit's signal terms that are columns);
        the first one is the identity within which batches should mix (a cell type, or a
        patient).
    {doc_key}
    key_after
        Where the fit of the ``after`` layer is, or is to be stored (default
        ``f"{{key}}_{{after}}"``, e.g. ``"varpart_varpart_corrected"``).
    mask_var
        Genes for the principal components (a boolean var column such as
        ``"highly_variable"``): by default those ``after`` corrected, if
        :func:`remove_batch_effects` made it, else all.
    covariance
        The known covariances between levels, when the fit under ``key`` had them (they
        are not stored): the ``after`` layer is fitted with the same model.
    n_comps
        Principal components of a matrix.
    n_sample
        Cells scored (a random subsample of them; ``None``: all). The silhouette costs
        the square of the number of cells.
    seed
        Of the subsample and of the classifier's folds.
    key_added
        Where to store the results.
    {doc_n_jobs}
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    None, or the modified copy with ``copy=True``. Sets:

    ``adata.uns[key_added]["embedding"]``
        One row per metric and variable: ``metric``, ``variable``, ``before``, ``after``,
        ``better`` (``"higher"`` or ``"lower"``), ``chance`` (the classifier's), ``role``
        (``"batch"`` or ``"labels"``). Tidy with :func:`scvarpart.get.batch_metrics_df`.
    ``adata.uns[key_added]["genes"]``
        With the per-gene comparison: genes x (``batch_before``, ``batch_after``,
        ``signal_before``, ``signal_after``, ``rho_before``, ``rho_after``, the signal
        variances, ``signal_ratio``, ``signal_lost``); also
        ``adata.var[f"{{key_added}}_signal_lost"]``.
    ``adata.uns[key_added]["coordinates"]``
        ``cells`` (the names of the cells scored) and the first two coordinates of the
        ``before`` and ``after`` embeddings there (for :func:`scvarpart.pl.report`).
    ``adata.uns[key_added]["params"]``
        The arguments, and ``n_cells`` and ``n_genes`` scored.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=600, n_genes=20, seed=1)
    >>> svp.tl.remove_batch_effects(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, terms=["chemistry", "day", "operator"],
    ...     signal="patient", progress=False,
    ... )
    >>> svp.tl.batch_metrics(adata, n_comps=10)
    >>> pcr = svp.get.batch_metrics_df(adata).query("metric == 'pcr'")
    >>> bool((pcr["after"] < pcr["before"]).all())
    True
    """
    if copy:
        adata = adata.copy()
    fitted = result(adata, key=key).params if key in adata.uns else {}
    batch_l = _columns(adata, batch, "batch", as_names(fitted.get("batch"), "batch") or [])
    labels_l = _columns(adata, labels, "labels", as_names(fitted.get("signal"), "signal") or [])
    values = {name: _matrix_or_embedding(adata, name) for name in (before, after)}
    genes = _genes_scored(adata, after, mask_var)
    rng = np.random.default_rng(seed)
    cells = np.arange(adata.n_obs)
    if n_sample is not None and adata.n_obs > n_sample:
        cells = np.sort(rng.choice(adata.n_obs, n_sample, replace=False))
    before_x, after_x = (
        x[cells] if is_embedding else _pca(x, cells, genes, n_comps, seed)
        for x, is_embedding in (values[before], values[after])
    )
    table = _embedding_rows(before_x, after_x, adata.obs.iloc[cells], batch_l, labels_l, seed)
    # the first two coordinates of each, for the report's scatter plots
    coordinates = {"cells": np.asarray(adata.obs_names[cells], dtype=str)}
    coordinates |= {name: x[:, :2] for name, x in (("before", before_x), ("after", after_x))}
    out: dict = {"embedding": table, "coordinates": coordinates}
    if fitted and after in adata.layers:
        key_after = key_after or f"{key}_{after}"
        changes = gene_changes(
            result(adata, key=key), _fit_after(adata, after, key, key_after, covariance, n_jobs),
            batch=as_names(fitted.get("batch"), "batch") or [],
            signal=as_names(fitted.get("signal"), "signal") or [],
        )  # fmt: skip
        out["genes"] = changes
        lost = changes["signal_lost"].reindex(adata.var_names, fill_value=False)
        adata.var[f"{key_added}_signal_lost"] = lost.to_numpy(dtype=bool)
        logg.info(f"batch_metrics: {int(lost.sum())} genes lost signal variance")
    out["params"] = {
        "before": before, "after": after, "batch": batch_l, "labels": labels_l, "key": key,
        "key_after": key_after if "genes" in out else None, "n_comps": n_comps,
        "n_sample": n_sample, "seed": seed, "n_cells": len(cells), "n_genes": len(genes),
    }  # fmt: skip
    adata.uns[key_added] = out
    return adata if copy else None
