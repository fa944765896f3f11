"""``svp.pl.batch_metrics``: a correction's scores, before and after."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes

from .._docs import doc_params, doc_show_save
from ..get import batch_metrics_df
from ._common import axes_or_none, finish

__all__ = ["batch_metrics"]

_BEFORE, _AFTER, _LOST, _KEPT = "#9e9e9e", "#1f77b4", "#c0392b", "#5b7fa3"


def _scores(ax: Axes, table) -> None:
    """Each metric as a line from its value before (grey) to after (blue), chance marked."""
    table = table.dropna(subset=["after"]).reset_index(drop=True)
    y = np.arange(len(table))[::-1]
    for yi, row in zip(y, table.itertuples(), strict=True):
        if np.isfinite(row.before):
            ax.plot([row.before, row.after], [yi, yi], color="#d0d0d0", zorder=1)
            ax.scatter(row.before, yi, color=_BEFORE, zorder=2, s=28)
        ax.scatter(row.after, yi, color=_AFTER, zorder=3, s=28)
        if np.isfinite(row.chance):
            ax.scatter(row.chance, yi, marker="|", color="black", s=90, zorder=2)
    labels = [
        f"{r.metric} ({r.variable}; {'higher' if r.better == 'higher' else 'lower'} is better)"
        for r in table.itertuples()
    ]
    ax.set_yticks(y, labels, fontsize="small")
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("score")
    ax.scatter([], [], color=_BEFORE, label="before")
    ax.scatter([], [], color=_AFTER, label="after")
    ax.scatter([], [], marker="|", color="black", label="chance (classifier)")
    ax.legend(loc="lower right", fontsize="small", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title("embedding: batch rows should mix, label rows stay apart", fontsize="medium")


def _genes(ax: Axes, genes) -> None:
    """Each gene's signal variance after against before; genes that lost signal in red."""
    lost = genes["signal_lost"].to_numpy(dtype=bool)
    x, y = genes["signal_variance_before"], genes["signal_variance_after"]
    ax.scatter(x[~lost], y[~lost], s=10, color=_KEPT, label="kept")
    ax.scatter(x[lost], y[lost], s=14, color=_LOST, label="lost signal")
    top = float(np.nanmax([x.max(), y.max(), 1e-12]))
    ax.plot([0, top], [0, top], color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("signal variance before")
    ax.set_ylabel("signal variance after")
    batch_after = float(np.nanmedian(genes["batch_after"]))
    ax.set_title(
        f"{len(genes):,} genes: {int(lost.sum())} lost signal; median batch fraction "
        f"{np.nanmedian(genes['batch_before']):.3f} -> {batch_after:.3f}",
        fontsize="medium",
    )
    ax.legend(loc="upper left", fontsize="small", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)


@doc_params(doc_show_save=doc_show_save)
def batch_metrics(
    adata: AnnData,
    *,
    key: str = "batch_metrics",
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
) -> list[Axes] | None:
    """The scores of :func:`scvarpart.tl.batch_metrics`, before and after the correction.

    Left: every embedding metric, from its value before (grey) to after (blue), the
    classifier's chance level marked; for the batch rows mixing should rise (and the PCR
    and the classifier's accuracy fall towards chance), for the label rows the scores should
    stay. Right (with the per-gene comparison): each gene's signal variance after against
    before, on the diagonal when the biology was kept; genes that lost signal in red.

    Parameters
    ----------
    adata
        Annotated data after :func:`~scvarpart.tl.batch_metrics`.
    key
        Where the metrics were stored.
    ax
        One Axes (the embedding metrics), or two with the per-gene comparison.
    {doc_show_save}

    Returns
    -------
    The list of Axes, when ``show`` is false.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=600, n_genes=12, seed=1)
    >>> svp.tl.remove_batch_effects(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, terms=["chemistry", "day", "operator"],
    ...     signal="patient", progress=False,
    ... )
    >>> svp.tl.batch_metrics(adata, n_comps=8)
    >>> axes = svp.pl.batch_metrics(adata, show=False)
    >>> len(axes)
    2
    """
    table = batch_metrics_df(adata, key=key)
    genes = batch_metrics_df(adata, "genes", key=key) if "genes" in adata.uns[key] else None
    n = 1 if genes is None else 2
    axes = axes_or_none(ax, n, "svp.pl.batch_metrics", "scores" + ("" if n == 1 else ", genes"))
    if axes is None:
        height = 1.2 + 0.28 * len(table)
        _, made = plt.subplots(1, n, figsize=(6.5 * n, height), layout="constrained", squeeze=False)
        axes = list(made[0])
    _scores(axes[0], table)
    if genes is not None:
        _genes(axes[1], genes)
    return finish(axes, show, save, "batch_metrics")
