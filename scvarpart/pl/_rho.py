"""``svp.pl.rho``: the batch-to-signal ratio across genes."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from .._docs import doc_adata_rho, doc_group, doc_key, doc_params, doc_show_save
from ..get import result
from ._common import axes_or_none, finish

__all__ = ["rho"]

_ABOVE, _BELOW = "#c0392b", "#9e9e9e"


def _spread(values: np.ndarray, gap: float, low: float, high: float) -> np.ndarray:
    """Label placement without overlaps.

    Positions near ``values`` (sorted order kept) at least ``gap`` apart, within
    ``[low, high]``.
    """
    order = np.argsort(values)
    pos = np.clip(values[order].astype(float), low, high)
    for i in range(1, len(pos)):
        pos[i] = max(pos[i], pos[i - 1] + gap)
    overflow = pos[-1] - high if len(pos) else 0.0
    if overflow > 0:  # push the stack down, then space from the bottom again
        pos -= overflow
        for i in range(len(pos) - 2, -1, -1):
            pos[i] = min(pos[i], pos[i + 1] - gap)
    out = np.empty_like(pos)
    out[order] = pos
    return out


@doc_params(
    doc_adata=doc_adata_rho, doc_key=doc_key, doc_show_save=doc_show_save, doc_group=doc_group
)
def rho(
    adata: AnnData,
    *,
    key: str = "varpart",
    group: str | None = None,
    threshold: float = 1.0,
    n_labels: int = 10,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
) -> list[Axes] | None:
    """The batch-to-signal ratio ``rho`` across genes, and against mean expression.

    Left: the distribution of ``log10 rho`` with the threshold marked. Right:
    ``log10 rho`` against each gene's mean expression, genes past the threshold
    in red and the ``n_labels`` most batch-dominated genes labelled (those past the
    threshold with the largest batch fraction, as :func:`scvarpart.get.batch_dominated`
    ranks them). Genes with ``rho = inf`` (no signal variance) are drawn at the top
    edge, those with ``rho = 0`` at the bottom edge; both are counted in the titles.

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    {doc_group}
    threshold
        The ``rho`` past which a gene is batch-dominated (1: as much technical as
        biological variance).
    n_labels
        Genes labelled: the most batch-dominated ones.
    ax
        Two Axes to draw into (histogram, scatter); a new figure otherwise.
    {doc_show_save}

    Returns
    -------
    ``[histogram_axes, scatter_axes]``, when ``show`` is false.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=500, n_genes=20, seed=1)
    >>> svp.tl.variance_partition(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, batch=["chemistry", "day", "operator"],
    ...     signal="patient", method="REML", progress=False,
    ... )
    >>> ax_hist, ax_scatter = svp.pl.rho(adata, n_labels=5, show=False)
    >>> ax_scatter.get_xlabel()
    'mean expression'
    """
    res = result(adata, key=key, group=group)
    r = res.rho
    mean = res.per_gene["mean"]
    finite = r[np.isfinite(r) & (r > 0)]
    n_inf, n_zero = int(np.isinf(r).sum()), int((r == 0).sum())
    axes = axes_or_none(ax, 2, "svp.pl.rho", "histogram, scatter")
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4.3), layout="constrained")
    ax_hist, ax_scatter = axes
    log_r = np.log10(finite)
    cut = np.log10(threshold)

    ax_hist.hist(log_r, bins=40, color="#5b7fa3", edgecolor="white", linewidth=0.3)
    ax_hist.axvline(cut, color=_ABOVE, linestyle="--", linewidth=1)
    ax_hist.set_xlabel("log10 rho  (batch variance / signal variance)")
    ax_hist.set_ylabel("genes")
    ax_hist.set_title(
        f"{len(finite):,} genes; not shown: {n_inf} with rho = inf, {n_zero} with rho = 0",
        fontsize="medium",
    )
    ax_hist.spines[["top", "right"]].set_visible(False)
    ax_hist.yaxis.set_major_locator(MaxNLocator(integer=True))

    low, high = (log_r.min(), log_r.max()) if len(log_r) else (-1.0, 1.0)
    span = max(high - low, 1.0)
    top, bottom = high + 0.08 * span, low - 0.08 * span
    with np.errstate(divide="ignore"):
        y = np.log10(r)  # inf and 0 become +-inf: drawn at the edges
    y[np.isinf(r)] = top
    y[r == 0] = bottom
    shown = r.notna()
    above = shown & (r >= threshold)
    for mask, color in ((shown & ~above, _BELOW), (above, _ABOVE)):
        edge = mask & (np.isinf(r) | (r == 0))
        inside = mask & ~edge
        ax_scatter.scatter(mean[inside], y[inside], s=8, color=color, alpha=0.7, linewidths=0)
        ax_scatter.scatter(
            mean[edge], y[edge], s=14, color=color, marker="^", alpha=0.8, linewidths=0
        )
    ax_scatter.axhline(cut, color=_ABOVE, linestyle="--", linewidth=1)
    ax_scatter.set_ylim(bottom - 0.05 * span, top + 0.05 * span)
    ax_scatter.set_xlabel("mean expression")
    ax_scatter.set_ylabel("log10 rho  (inf at the top, 0 at the bottom)")
    ax_scatter.set_title(
        f"{int(above.sum()):,} genes with rho >= {threshold:g} (red); "
        f"the {n_labels} most batch-dominated labelled",
        fontsize="medium",
    )
    ax_scatter.spines[["top", "right"]].set_visible(False)

    # the ranking of svp.get.batch_dominated: a large ratio of two tiny variances (or
    # rho = inf: no signal variance at all) is not what makes a gene batch-dominated
    labelled = res.batch_dominated(n_top=n_labels, min_rho=threshold).index
    if len(labelled):
        ylim = ax_scatter.get_ylim()
        height = ylim[1] - ylim[0]
        wanted = y[labelled].to_numpy()
        placed = _spread(wanted, 0.055 * height, ylim[0] + 0.03 * height, ylim[1] - 0.03 * height)
        xlim = ax_scatter.get_xlim()
        x_text = xlim[1] + 0.02 * (xlim[1] - xlim[0])
        for gene, py, ty in zip(labelled, wanted, placed, strict=True):
            ax_scatter.annotate(
                str(gene),
                xy=(mean[gene], py),
                xytext=(x_text, ty),
                textcoords="data",
                fontsize="x-small",
                va="center",
                annotation_clip=False,
                arrowprops={"arrowstyle": "-", "color": "#777777", "linewidth": 0.5},
                gid="gene-label",
            )
        ax_scatter.set_xlim(xlim)
    return finish([ax_hist, ax_scatter], show, save, "rho")
