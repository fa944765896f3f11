"""``svp.pl.voom_trend``: voom's mean-variance trend, the genes and the lowess curve."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
from anndata import AnnData
from matplotlib.axes import Axes

from .._docs import doc_params, doc_show_save
from ._common import axes_or_none, finish, panel_grid

__all__ = ["voom_trend"]


@doc_params(doc_show_save=doc_show_save)
def voom_trend(
    adata: AnnData,
    *,
    key: str = "voom",
    groups: Sequence[str] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
) -> Axes | list[Axes] | None:
    """The mean-variance trend of voom: each gene's ``sqrt(sd)`` by mean log count, and the curve.

    The plot of limma's ``voom(plot=TRUE)``: the weights of :func:`scvarpart.pp.voom_weights`
    are ``1 / curve(fitted log count)^4``. A curve that misses the genes at the highest
    counts gives them huge weights: a smaller ``span`` follows them more closely.

    Parameters
    ----------
    adata
        Annotated data with the results of :func:`scvarpart.pp.voom_weights`.
    key
        Its ``key_added``.
    groups
        For weights per group (``groupby=``): the groups to draw, one panel each (default:
        every group with a trend).
    ax
        Axes to draw into (one per group for weights per group); a new figure otherwise.
    {doc_show_save}

    Returns
    -------
    The Axes (a list, one per group, for weights per group) when ``show`` is false.

    Examples
    --------
    >>> import warnings
    >>> import scvarpart as svp
    >>> cells = svp.datasets.simulate_counts(4000, 200, seed=0, counts=True)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     bulk = svp.pp.pseudobulk(cells, "library")
    >>> svp.pp.voom_weights(bulk, "~ (1|patient) + (1|chemistry)", method="REML")
    >>> svp.pl.voom_trend(bulk, show=False).get_xlabel()
    'log2(count size + 0.5)'
    """
    if key not in adata.uns or "trend" not in adata.uns[key]:
        raise KeyError(
            f"No voom trend under adata.uns[{key!r}]: run svp.pp.voom_weights(adata, formula) "
            "first (or pass its key_added as key=)."
        )
    entry = adata.uns[key]
    formula = entry["params"]["formula"]
    if "groupby" not in entry["params"]:
        if groups is not None:
            raise ValueError(f"groups= needs voom weights per group (groupby=); {key!r} are not.")
        if ax is not None and not isinstance(ax, Axes):
            raise TypeError("ax= takes one Axes (a sequence of Axes is for trends per group).")
        if ax is None:
            _, ax = plt.subplots(figsize=(4.5, 3.5), layout="constrained")
        x, y = adata.var[f"{key}_mean_log_count"], adata.var[f"{key}_sqrt_sd"]
        _panel(ax, x, y, entry["trend"], f"voom: mean-variance trend ({formula})")
        return finish(ax, show, save, "voom_trend")
    trends = {str(t["group"]): t for t in entry["trend"].values()}
    names = list(trends) if groups is None else [str(g) for g in groups]
    unknown = [g for g in names if g not in trends]
    if unknown:
        raise KeyError(f"groups={unknown} have no voom trend; groups with one: {list(trends)}.")
    axes = axes_or_none(ax, len(names), "voom_trend", "groups " + ", ".join(names))
    if axes is None:
        axes = panel_grid(len(names), (3.6, 3.0))
    for a, g in zip(axes, names, strict=True):
        t = trends[g]
        _panel(a, t["mean_log_count"], t["sqrt_sd"], t, str(g))
    return finish(axes, show, save, "voom_trend")


def _panel(ax: Axes, x, y, trend, title: str) -> None:
    """The genes' points and the lowess curve."""
    ax.scatter(x, y, s=4, color="#333333", lw=0)
    ax.plot(trend["x"], trend["y"], color="#c0392b", lw=1.5, label="lowess trend")
    ax.set_xlabel("log2(count size + 0.5)")
    ax.set_ylabel("sqrt(residual standard deviation)")
    ax.set_title(title, fontsize=9)
    ax.legend(frameon=False, fontsize=8)
