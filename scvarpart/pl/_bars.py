"""``svp.pl.percent_bars``: the variance partition of chosen genes as stacked bars."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes

from ._common import component_colors, components_of, finish, get_results

__all__ = ["percent_bars"]


def percent_bars(
    adata: AnnData,
    genes: Sequence[str] | None = None,
    *,
    key: str = "varpart",
    sort_by: str | None = None,
    n_top: int = 20,
    ax: Axes | None = None,
    show: bool | None = None,
) -> Axes | None:
    """Stacked horizontal bars of the variance fractions of genes, in percent.

    As variancePartition's ``plotPercentBars``; one colour per component, the same
    as in every scvarpart plot.

    Parameters
    ----------
    adata
        Annotated data with the results of :func:`scvarpart.tl.variance_partition`.
    genes
        Genes to show, in this order (top to bottom). By default the ``n_top``
        genes with the largest ``sort_by``.
    key
        The results' ``key_added``.
    sort_by
        ``"rho"`` or a component name (default: ``"rho"`` when stored, else the
        first component).
    n_top
        Number of genes shown when ``genes`` is not given.
    ax
        Axes to draw into; a new figure sized to the genes otherwise.
    show
        Show the figure (scanpy's ``settings.autoshow`` by default); with
        ``False`` the Axes are returned.

    Returns
    -------
    The Axes, when ``show`` is false.
    """
    res = get_results(adata, key)
    comps = components_of(res)
    colors = component_colors(comps)
    if genes is None:
        if sort_by is None:
            sort_by = "rho" if "rho" in res.per_gene else comps[0]
        if sort_by == "rho":
            if "rho" not in res.per_gene:
                raise KeyError("No rho stored: give batch= and signal= to variance_partition.")
            # ties (rho = inf: no signal variance) broken by the batch fraction
            batch = [str(b) for b in np.atleast_1d(res.uns["params"]["batch"])]
            table = pd.DataFrame(
                {"rho": res.per_gene["rho"], "batch": res.fractions[batch].sum(axis=1)}
            ).dropna()
            ranked = table.sort_values(["rho", "batch"], ascending=False).index
        elif sort_by in comps:
            ranked = res.fractions[sort_by].dropna().sort_values(ascending=False).index
        else:
            raise KeyError(f"sort_by={sort_by!r}: use 'rho' or one of the components {comps}.")
        genes = list(ranked[:n_top])
    genes = list(genes)
    missing = [g for g in genes if g not in res.fractions.index]
    if missing:
        raise KeyError(f"Genes {missing[:5]} are not in adata.var_names.")
    frac = res.fractions.loc[genes, comps].fillna(0) * 100
    if ax is None:
        longest = max((len(str(g)) for g in genes), default=1)
        _, ax = plt.subplots(
            figsize=(6.5 + 0.06 * min(longest, 40), max(2.5, 0.32 * len(genes) + 1.3)),
            layout="constrained",
        )
    y = np.arange(len(genes))
    left = np.zeros(len(genes))
    for comp in comps:
        ax.barh(
            y,
            frac[comp].to_numpy(),
            left=left,
            color=colors[comp],
            label=comp,
            height=0.8,
            edgecolor="white",
            linewidth=0.4,
        )
        left += frac[comp].to_numpy()
    ax.set_yticks(y, genes)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("variance explained (%)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small")
    ax.spines[["top", "right"]].set_visible(False)
    if sort_by is not None:
        ax.set_title(f"top {len(genes)} genes by {sort_by}")
    return finish(ax, show)
