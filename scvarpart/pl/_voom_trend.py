"""``svp.pl.voom_trend``: voom's mean-variance trend, the genes and the lowess curve."""

from __future__ import annotations

import matplotlib.pyplot as plt
from anndata import AnnData
from matplotlib.axes import Axes

from .._docs import doc_params, doc_show_save
from ._common import finish

__all__ = ["voom_trend"]


@doc_params(doc_show_save=doc_show_save)
def voom_trend(
    adata: AnnData,
    *,
    key: str = "voom",
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
) -> Axes | None:
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
    ax
        Axes to draw into; a new figure otherwise.
    {doc_show_save}

    Returns
    -------
    The Axes when ``show`` is false.

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
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.5), layout="constrained")
    x = adata.var[f"{key}_mean_log_count"]
    y = adata.var[f"{key}_sqrt_sd"]
    ax.scatter(x, y, s=4, color="#333333", lw=0)
    trend = adata.uns[key]["trend"]
    ax.plot(trend["x"], trend["y"], color="#c0392b", lw=1.5, label="lowess trend")
    ax.set_xlabel("log2(count size + 0.5)")
    ax.set_ylabel("sqrt(residual standard deviation)")
    ax.set_title(f"voom: mean-variance trend ({adata.uns[key]['params']['formula']})", fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    return finish(ax, show, save, "voom_trend")
