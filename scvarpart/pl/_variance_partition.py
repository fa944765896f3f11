"""``svp.pl.variance_partition``: the distribution of each component's fraction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes

from .._docs import doc_adata_fitted, doc_key, doc_params, doc_show_save
from ..get import result
from ..varpart import component_order
from ..varpart.grouped import group_names, is_grouped
from ._common import axes_or_none, component_colors, finish, panel_grid

if TYPE_CHECKING:
    from matplotlib.collections import PolyCollection

__all__ = ["variance_partition"]


@doc_params(doc_adata=doc_adata_fitted, doc_key=doc_key, doc_show_save=doc_show_save)
def variance_partition(
    adata: AnnData,
    *,
    key: str = "varpart",
    components: Sequence[str] | None = None,
    genes: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
) -> Axes | list[Axes] | None:
    """Violin and box plot of each component's variance fraction across genes.

    As variancePartition's ``plotVarPart``: components sorted by their median
    fraction, the residual last, on a percent scale, each in the colour it has in
    every scvarpart plot.

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    components
        Components to show (default: all).
    genes
        Genes to include (default: all with estimates).
    groups
        For results fitted per group (``groupby=``): the groups to draw, one panel each
        (default: every fitted group), as dreamlet's ``plotVarPart``; the components in
        one order throughout.
    ax
        Axes to draw into (one per group for results per group); a new figure sized
        to the components otherwise.
    {doc_show_save}

    Returns
    -------
    The Axes (a list, one per group, for results per group), when ``show`` is false.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=500, n_genes=20, seed=1)
    >>> svp.tl.variance_partition(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, batch=["chemistry", "day", "operator"],
    ...     signal="patient", method="REML", progress=False,
    ... )
    >>> ax = svp.pl.variance_partition(adata, show=False)
    >>> [label.get_text() for label in ax.get_xticklabels()]
    ['patient', 'chemistry', 'day', 'operator', 'log_umi', 'Residual']
    """
    if is_grouped(adata, key):
        return _by_group(adata, key, components, genes, groups, ax, show, save)
    if groups is not None:
        raise ValueError(f"groups= needs results fitted per group (groupby=); {key!r} are not.")
    if ax is not None and not isinstance(ax, Axes):
        raise TypeError("ax= takes one Axes (a sequence of Axes is for results per group).")
    res = result(adata, key=key)
    fractions = _fractions(res, components, genes)
    order = component_order(fractions)  # variancePartition's sortCols over the genes shown
    if ax is None:
        longest = max((len(c) for c in order), default=1)
        _, ax = plt.subplots(
            figsize=(max(4.0, 0.55 * len(order) + 1.5), 4.0 + 0.07 * min(longest, 40)),
            layout="constrained",
        )
    _panel(ax, fractions, order, component_colors(res.components))
    ax.set_title(f"variance partition of {len(fractions):,} genes")
    return finish(ax, show, save, "variance_partition")


def _fractions(res, components, genes) -> pd.DataFrame:
    """The fractions (percent) of the genes with estimates, of the components asked for."""
    fractions = res.fractions if genes is None else res.fractions.loc[list(genes)]
    fractions = fractions.dropna() * 100
    comps = list(fractions.columns if components is None else components)
    unknown = [c for c in comps if c not in fractions.columns]
    if unknown:
        raise KeyError(f"{unknown} are not components; they are {list(fractions.columns)}.")
    return fractions[comps]


def _by_group(adata, key, components, genes, groups, ax, show, save):
    """One panel per group, the components in one order (sortCols over every group)."""
    names = group_names(adata, key) if groups is None else [str(g) for g in groups]
    results = {g: result(adata, key=key, group=g) for g in names}
    tables = {
        g: _fractions(r, components, None if genes is None else [x for x in genes if x in r.genes])
        for g, r in results.items()
    }
    order = component_order(pd.concat(tables.values()))
    colors = component_colors(next(iter(results.values())).components)
    axes = axes_or_none(ax, len(names), "variance_partition", "groups " + ", ".join(names))
    if axes is None:
        axes = panel_grid(len(names), (max(3.0, 0.45 * len(order) + 1.0), 3.6), sharey=True)
    for a, g in zip(axes, names, strict=True):
        _panel(a, tables[g], order, colors)
        a.set_title(f"{g} ({len(tables[g]):,} genes)")
        spec = a.get_subplotspec()
        if spec is not None and not spec.is_first_col():
            a.set_ylabel("")
    return finish(axes, show, save, "variance_partition")


def _panel(ax: Axes, fractions: pd.DataFrame, order: list[str], colors) -> None:
    """Violins and boxes of the fractions (percent) of ``order``'s components."""
    data = [fractions[c].to_numpy() for c in order]
    positions = np.arange(len(order))
    if len(fractions):
        parts = ax.violinplot(data, positions, widths=0.8, showextrema=False)
        # matplotlib annotates every entry as a Collection; "bodies" is a list of them
        bodies = cast("list[PolyCollection]", parts["bodies"])
        for body, comp in zip(bodies, order, strict=True):
            body.set_facecolor(colors[comp])
            body.set_edgecolor("#333333")
            body.set_linewidth(0.6)
            body.set_alpha(0.85)
            body.set_gid(f"violin:{comp}")
        ax.boxplot(
            data,
            positions=positions,
            widths=0.14,
            showfliers=False,
            patch_artist=True,
            boxprops={"facecolor": "white", "linewidth": 0.8},
            medianprops={"color": "black", "linewidth": 1.2},
            whiskerprops={"linewidth": 0.8},
            capprops={"linewidth": 0},
        )
    ax.set_xticks(positions, order)
    longest = max((len(c) for c in order), default=0)
    if longest > 12 or len(order) > 12:  # vertical: neighbours cannot collide
        plt.setp(ax.get_xticklabels(), rotation=90)
    elif longest > 6 or len(order) > 6:
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("variance explained (%)")
    ax.spines[["top", "right"]].set_visible(False)
