"""``svp.pl.percent_bars``: the variance partition of chosen genes as stacked bars."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes

from .._docs import doc_adata_fitted, doc_group, doc_key, doc_min_rho, doc_params, doc_show_save
from ..get import result
from ._common import component_colors, finish

__all__ = ["percent_bars"]


@doc_params(
    doc_adata=doc_adata_fitted,
    doc_key=doc_key,
    doc_min_rho=doc_min_rho,
    doc_show_save=doc_show_save,
    doc_group=doc_group,
)
def percent_bars(
    adata: AnnData,
    genes: Sequence[str] | None = None,
    *,
    key: str = "varpart",
    group: str | None = None,
    sort_by: str | None = None,
    n_top: int = 20,
    min_rho: float = 1.0,
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
) -> Axes | None:
    """Stacked horizontal bars of the variance fractions of genes, in percent.

    As variancePartition's ``plotPercentBars``; one colour per component, the same
    as in every scvarpart plot.

    Parameters
    ----------
    {doc_adata}
    genes
        Genes to show, in this order (top to bottom). By default the first ``n_top``
        genes by ``sort_by``.
    {doc_key}
    {doc_group}
    sort_by
        ``"batch_dominated"`` (the default when ``rho`` is stored): the most
        batch-dominated genes, as :func:`scvarpart.get.batch_dominated` ranks them
        (``rho >= min_rho``, by batch fraction); ``"rho"`` is accepted for it too.
        Or a component name: the genes with the largest fraction of it (the default,
        with the first component, when no ``rho`` is stored).
    n_top
        Number of genes shown when ``genes`` is not given.
    {doc_min_rho}
    ax
        Axes to draw into; a new figure sized to the genes otherwise.
    {doc_show_save}

    Returns
    -------
    The Axes, when ``show`` is false.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=500, n_genes=20, seed=1)
    >>> svp.tl.variance_partition(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, batch=["chemistry", "day", "operator"],
    ...     signal="patient", method="REML", progress=False,
    ... )
    >>> ax = svp.pl.percent_bars(adata, n_top=5, show=False)
    >>> len(ax.get_yticklabels())
    5
    """
    res = result(adata, key=key, group=group)
    comps = res.component_order()  # sortCols: the bars stack in this order
    colors = component_colors(res.components)
    title = None
    if genes is None:
        if sort_by is None:
            sort_by = "batch_dominated" if "rho" in res.per_gene else res.components[0]
        if sort_by in ("batch_dominated", "rho"):
            ranked = res.batch_dominated(n_top=n_top, min_rho=min_rho).index
            title = f"top {len(ranked)} batch-dominated genes (rho >= {min_rho:g}, by batch %)"
        elif sort_by in comps:
            ranked = res.fractions[sort_by].dropna().sort_values(ascending=False).index
            title = f"top {min(n_top, len(ranked))} genes by {sort_by}"
        else:
            raise KeyError(
                f"sort_by={sort_by!r}: use 'batch_dominated' or one of the components {comps}."
            )
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
    if title is not None:
        ax.set_title(title)
    return finish(ax, show, save, "percent_bars")
