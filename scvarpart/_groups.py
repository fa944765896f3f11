"""The ``groupby=`` option: the groups of an ``obs`` column, and each group's genes."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

__all__ = ["check_groupby", "expressed_genes", "group_order"]


def check_groupby(obs: pd.DataFrame, groupby) -> None:
    """``groupby`` names a column of ``obs``."""
    if not isinstance(groupby, str) or groupby not in obs.columns:
        raise KeyError(
            f"groupby={groupby!r} is not a column of adata.obs. Available: "
            f"{list(obs.columns)[:20]}."
        )


def group_order(obs: pd.DataFrame, groupby: str) -> tuple[list, int]:
    """The groups in order (categories' order, else sorted) and the unlabelled cells."""
    check_groupby(obs, groupby)
    column = obs[groupby]
    present = set(column.dropna().unique())
    if isinstance(column.dtype, pd.CategoricalDtype):
        groups = [g for g in column.cat.categories if g in present]
    else:
        groups = sorted(present, key=str)
    return groups, int(column.isna().sum())


def expressed_genes(adata: AnnData, groupby: str, group) -> np.ndarray | None:
    """The genes pseudobulk's filter kept in ``group`` (None: every gene)."""
    made = adata.uns.get("pseudobulk", {}).get("params", {})
    table = adata.varm.get("expressed")
    if made.get("groupby") != groupby or table is None or str(group) not in table:
        return None
    return np.asarray(table[str(group)], dtype=bool)
