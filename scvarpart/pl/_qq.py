"""``svp.pl.qq``: standardised BLUPs of a gene against the normal, with a band."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes

from .._docs import doc_params, doc_show_save
from ..varpart.diagnostics import normal_scores, qq_envelope
from ._common import axes_or_none, finish

__all__ = ["qq"]


@doc_params(doc_show_save=doc_show_save)
def qq(
    adata: AnnData,
    gene: str,
    *,
    terms: str | Sequence[str] | None = None,
    key: str = "varpart_diagnostics",
    n_sim: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    ax: Sequence[Axes] | Axes | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
) -> list[Axes] | None:
    """QQ plots of a gene's standardised BLUPs against the normal, one panel per term.

    The BLUPs of :func:`scvarpart.tl.diagnose` (each over its marginal standard deviation:
    standard normal when the model holds), sorted, against Blom's normal scores, with the
    pointwise ``level`` band of ``n_sim`` simulated standard normal samples of the same
    size. Levels outside the band are labelled: a patient or batch unlike the others.

    Parameters
    ----------
    adata
        Annotated data with the results of :func:`scvarpart.tl.diagnose`.
    gene
        The gene.
    terms
        The random terms to draw (default: every term with BLUPs for the gene).
    key
        Where :func:`~scvarpart.tl.diagnose` stored its results.
    n_sim, level, seed
        The band: simulated samples, its level and the simulation's seed.
    ax
        Axes to draw into, one per term; a new figure otherwise.
    {doc_show_save}

    Returns
    -------
    The Axes, one per term, when ``show`` is false.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=800, n_genes=2, seed=1)
    >>> svp.tl.variance_partition(adata, svp.datasets.EXAMPLE_FORMULA, progress=False)
    >>> svp.tl.diagnose(adata, leave_out=[])
    >>> axes = svp.pl.qq(adata, "gene0001", terms=["patient", "day"], show=False)
    >>> [ax.get_title() for ax in axes]
    ['patient', 'day']
    """
    if key not in adata.uns or "blups" not in adata.uns[key]:
        raise KeyError(
            f"No diagnostics under adata.uns[{key!r}]: run svp.tl.diagnose(adata) first "
            "(or pass its key_added as key=)."
        )
    table = adata.uns[key]["blups"]
    rows = table[table["gene"] == gene]
    if rows.empty:
        raise KeyError(f"No diagnostics of gene {gene!r}: run svp.tl.diagnose(adata, genes=...).")
    available = list(dict.fromkeys(rows["term"]))
    names = available if terms is None else [terms] if isinstance(terms, str) else list(terms)
    unknown = [t for t in names if t not in available]
    if unknown:
        raise KeyError(f"terms={unknown} have no BLUPs for {gene!r}; available: {available}.")
    axes = axes_or_none(ax, len(names), "qq", ", ".join(names))
    if axes is None:
        _, grid = plt.subplots(
            1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False, layout="constrained"
        )
        axes = list(grid[0])
    for a, term in zip(axes, names, strict=True):
        _panel(a, rows[rows["term"] == term], term, n_sim, level, seed)
    return finish(axes, show, save, "qq")


def _panel(ax: Axes, rows, term: str, n_sim: int, level: float, seed: int) -> None:
    values = rows["std_blup"].to_numpy(dtype=float)
    levels = rows["level"].to_numpy()
    ok = np.isfinite(values)
    ax.set_title(term)
    ax.set_xlabel("normal quantile")
    ax.set_ylabel("standardised BLUP")
    if ok.sum() < 2:
        ax.text(0.5, 0.5, "variance 0: no BLUPs", ha="center", va="center", transform=ax.transAxes)
        return
    order = np.argsort(values[ok])
    y, names = values[ok][order], levels[ok][order]
    x = normal_scores(len(y))
    low, high = qq_envelope(len(y), n_sim=n_sim, level=level, seed=seed)
    ax.fill_between(x, low, high, color="#dddddd", label=f"{level:.0%} band")
    ax.plot(x, x, color="#888888", lw=0.8)
    outside = (y < low) | (y > high)
    ax.scatter(x[~outside], y[~outside], s=14, color="#1f77b4")
    ax.scatter(x[outside], y[outside], s=18, color="#c0392b")
    for xi, yi, name in zip(x[outside], y[outside], names[outside], strict=True):
        ax.annotate(str(name), (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
