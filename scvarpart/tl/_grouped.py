"""One model fitted to each group of observations (a cell type) on its own.

Every group's design is checked before any group is fitted: a group whose design cannot
be fitted (too few observations, a grouping factor with one level, ...) is skipped with
its reason, logged and stored; the warnings about a group's design are kept with it
rather than repeated once per group. For pseudobulk data made with the same ``groupby``,
each group is fitted on the genes its expression filter kept
(``varm["expressed"]``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg

from .._groups import expressed_genes, group_order
from .._warn import warn
from ..varpart import VarPartResult

__all__ = [
    "check_groups",
    "count_fitted",
    "fit_group",
    "fit_groups",
    "say_skipped",
]


def _reason(err: Exception) -> str:
    return str(err.args[0]) if err.args else type(err).__name__


def check_groups(
    adata: AnnData,
    groupby: str,
    prepare: Callable[[pd.DataFrame], object],
    only: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, list[tuple[str, np.ndarray, np.ndarray | None]]]:
    """Each group's design, checked: the table of the groups and those to fit.

    ``prepare(obs)`` checks a group's design (raising ``ValueError`` when it cannot be
    fitted). ``only``: these groups (by name) instead of all. Returns the table (one row
    per group: ``group``, ``n_obs``, ``n_genes``, ``status``, ``reason``, ``warnings``) and,
    per group to fit, its name, its observations (mask) and its genes (mask, or ``None``
    for all).
    """
    groups, unlabelled = group_order(adata.obs, groupby)
    if only is not None:
        unknown = sorted(set(map(str, only)) - set(map(str, groups)))
        if unknown:
            raise KeyError(
                f"{unknown} are not groups of {groupby!r}; its groups are "
                f"{[str(g) for g in groups]}."
            )
        groups = [g for g in groups if str(g) in set(map(str, only))]
    labels = adata.obs[groupby].to_numpy()
    rows, ready = [], []
    for group in groups:
        mask = labels == group
        genes = expressed_genes(adata, groupby, group)
        row = {"group": str(group), "n_obs": int(mask.sum()),
               "n_genes": int(adata.n_vars if genes is None else genes.sum())}  # fmt: skip
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                if row["n_genes"] == 0:
                    raise ValueError("no gene passed the expression filter in this group")
                prepare(adata.obs[mask])
            except ValueError as err:  # DesignError included
                row.update(status="skipped", reason=_reason(err))
            else:
                row.update(status="fitted", reason="")
                ready.append((str(group), mask, genes))
        row["warnings"] = " | ".join(dict.fromkeys(str(w.message) for w in caught))
        rows.append(row)
    if unlabelled:
        logg.warning(f"{unlabelled} observations without a {groupby!r} label are not fitted.")
    return pd.DataFrame(rows), ready


def fit_group(
    adata: AnnData, table: pd.DataFrame, group: str, mask, genes, fit: Callable
) -> VarPartResult:
    """``fit`` of one group's observations and genes; its warnings go into its table row."""
    view = adata[mask] if genes is None else adata[mask, genes]  # one index: backed too
    logg.info(f"group {group!r}: {view.n_obs} observations x {view.n_vars} genes")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(view)
    at = table.index[table["group"] == group][0]
    said = [table.at[at, "warnings"], *(str(w.message) for w in caught)]
    table.at[at, "warnings"] = " | ".join(dict.fromkeys(t for t in said if t))
    return result


def say_skipped(table: pd.DataFrame, groupby: str) -> None:
    """Warn of the groups not fitted, with their reasons."""
    skipped = table[table["status"] == "skipped"]
    if len(skipped):
        reasons = zip(skipped["group"], skipped["reason"], strict=True)
        warn(
            f"{len(skipped)} of {len(table)} groups of {groupby!r} are not fitted: "
            + "; ".join(f"{g} ({r})" for g, r in reasons)
        )


def count_fitted(table: pd.DataFrame, results: Mapping[str, VarPartResult]) -> pd.DataFrame:
    """The table with each group's genes with estimates (0 for a skipped group)."""
    table = table.copy()
    table["n_fitted_genes"] = [
        results[g].summary["n_genes"] - results[g].summary["n_failed"] if g in results else 0
        for g in table["group"]
    ]
    return table


def fit_groups(
    adata: AnnData,
    groupby: str,
    prepare: Callable[[pd.DataFrame], object],
    fit: Callable[[AnnData], VarPartResult],
) -> tuple[dict[str, VarPartResult], pd.DataFrame]:
    """Fit each group of ``obs[groupby]``: its results and the table of the groups.

    Every group's design is checked (:func:`check_groups`) before any is fitted
    (``fit(view)`` of the group's observations and genes). Raises when no group can be
    fitted, with each group's reason.
    """
    table, ready = check_groups(adata, groupby, prepare)
    if not ready:
        listing = "; ".join(
            f"{g}: {r}" for g, r in zip(table["group"], table["reason"], strict=True)
        )
        raise ValueError(f"No group of {groupby!r} can be fitted ({listing}).")
    say_skipped(table, groupby)
    results = {g: fit_group(adata, table, g, mask, genes, fit) for g, mask, genes in ready}
    return results, count_fitted(table, results)
