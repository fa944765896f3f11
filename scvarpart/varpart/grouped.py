"""Results of one model fitted to each group of cells (a cell type) separately.

``svp.tl.variance_partition(..., groupby=)`` fits each group on its own cells (and, for
pseudobulk data, its own expressed genes), so the groups' genes differ and their results
cannot share ``adata.var``. Each group's :class:`~.result.VarPartResult` is stored as it
would be stored alone, in ``uns[key]["groups"][i]`` (``i`` the group's row in the table of
the groups, as a string: a group's name may hold a ``/``, a path in a file), with its
per-gene table, its ``varm`` tables and its ``uns`` entry, next to a table of the groups:
which were fitted, on how many observations and genes, and why the others were not.
Reading a group back gives the same result object as an ungrouped fit, so every getter and
plot works on one group, and the long tables stack the groups with a ``group`` column.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from anndata import AnnData

from .result import VarPartResult, stored_keys

__all__ = [
    "group_names", "group_table", "grouped_params", "is_grouped", "read_group", "write_grouped",
]  # fmt: skip


def is_grouped(adata: AnnData, key: str) -> bool:
    """Whether ``uns[key]`` holds results per group."""
    entry = adata.uns.get(key)
    return isinstance(entry, Mapping) and "groups" in entry and "group_table" in entry


def grouped_params(groupby: str, results: Mapping[str, VarPartResult]) -> dict:
    """The parameters of a fit per group: ``groupby`` and what every group's fit shares.

    The analysis (formula, method, roles, options, provenance) is the same in every group;
    what differs (observations, the engine) stays in each group's own parameters.
    """
    firsts = [r.params for r in results.values()]
    shared = {
        k: v for k, v in firsts[0].items()
        if all(k in p and repr(p[k]) == repr(v) for p in firsts[1:])
    }  # fmt: skip
    for own in ("n_obs", "n_obs_dropped", "engine"):
        shared.pop(own, None)
    return {"groupby": groupby, **shared}


def write_grouped(
    adata: AnnData,
    results: Mapping[str, VarPartResult],
    table: pd.DataFrame,
    key: str,
    params: dict,
) -> None:
    """Store the groups' results and their table under ``uns[key]``.

    ``table``: one row per group (``group``, ``status``, ``reason``, ...). Replaces what
    was stored under ``key`` (a grouped or an ungrouped result).
    """
    # stored by the group's row of the table: a name may hold "/" (a path in h5ad and zarr)
    rows = {str(g): i for i, g in enumerate(table["group"])}
    groups = {}
    for group, res in results.items():
        holder = AnnData(var=pd.DataFrame(index=res.genes))
        res.write(holder, key)
        entry = {"var": holder.var, "varm": dict(holder.varm), "uns": holder.uns[key]}
        groups[str(rows[str(group)])] = entry
    stale = stored_keys(adata, key)  # an ungrouped result under key: its var and varm
    adata.var.drop(columns=stale["var"], inplace=True)
    for name in stale["varm"]:
        del adata.varm[name]
    adata.uns[key] = {"params": params, "group_table": table, "groups": groups}


def group_table(adata: AnnData, key: str) -> pd.DataFrame:
    """The table of the groups: fitted or skipped (with why), observations, genes."""
    if not is_grouped(adata, key):
        raise KeyError(f"uns[{key!r}] holds no results per group (fit with groupby=).")
    return pd.DataFrame(adata.uns[key]["group_table"]).reset_index(drop=True)


def group_names(adata: AnnData, key: str) -> list[str]:
    """The groups with results, in the order they were fitted."""
    return list(group_table(adata, key).query("status == 'fitted'")["group"].astype(str))


def read_group(adata: AnnData, key: str, group) -> VarPartResult:
    """The result of one group, as :meth:`VarPartResult.read` gives an ungrouped one."""
    groups = adata.uns[key]["groups"]
    table = group_table(adata, key)
    row = np.flatnonzero(table["group"].astype(str).to_numpy() == str(group))
    if not len(row):
        raise KeyError(f"No group {group!r} under {key!r}; groups: {group_names(adata, key)}.")
    if str(row[0]) not in groups:
        raise KeyError(f"Group {group!r} was not fitted: {table['reason'].iloc[row[0]]}.")
    stored = groups[str(row[0])]
    var = pd.DataFrame(stored["var"])
    varm = {name: pd.DataFrame(t).set_axis(var.index) for name, t in stored["varm"].items()}
    holder = AnnData(var=var, varm=varm, uns={key: stored["uns"]})
    return VarPartResult.read(holder, key)
