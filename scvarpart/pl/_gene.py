"""``svp.pl.gene``: one gene's expression by each term of the model."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from matplotlib.axes import Axes

from ..design import build_design
from ._common import component_colors, components_of, finish, get_results

__all__ = ["gene"]

_MAX_POINTS = 3000  # cells drawn per panel, sampled evenly


def _expression(adata: AnnData, name: str, layer: str | None, use_raw: bool) -> np.ndarray:
    if use_raw:
        values = adata.raw[:, name].X
    elif layer is not None:
        values = adata[:, name].layers[layer]
    else:
        values = adata[:, name].X
    values = values.toarray() if sp.issparse(values) else np.asarray(values)
    return values.ravel().astype(float)


def gene(
    adata: AnnData,
    gene: str,
    *,
    key: str = "varpart",
    layer: str | None = None,
    use_raw: bool = False,
    max_levels: int = 40,
    show: bool | None = None,
) -> list[Axes] | None:
    """A gene's expression stratified by each term of the model, with its fractions.

    One panel per term: a box (and a sample of the cells) per level of a grouping
    factor or categorical covariate, sorted by median; for more than
    ``max_levels`` levels, the level means, sorted; a scatter for a continuous
    covariate. Panel titles give the term's share of the gene's variance, the
    figure's title the gene's main components.

    Parameters
    ----------
    adata
        Annotated data with the results of :func:`scvarpart.tl.variance_partition`.
    gene
        A name of ``adata.var_names``.
    key
        The results' ``key_added``.
    layer, use_raw
        Where the expression values are (as given to the fit).
    max_levels
        Largest number of levels drawn as boxes.
    show
        Show the figure (scanpy's ``settings.autoshow`` by default); with
        ``False`` the Axes are returned.

    Returns
    -------
    One Axes per term, when ``show`` is false.
    """
    res = get_results(adata, key)
    if gene not in adata.var_names:
        raise KeyError(f"{gene!r} is not in adata.var_names.")
    dz = build_design(str(res.uns["params"]["formula"]), adata.obs, check=False)
    y = _expression(adata, gene, layer, use_raw)[dz.keep]
    obs = adata.obs.loc[dz.keep]
    frac = res.fractions.loc[gene]
    colors = component_colors(components_of(res))
    terms = [f.name for f in dz.factors] + list(dz.fixed_terms)
    ncols = min(len(terms), 3)
    nrows = -(-len(terms) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.6 * ncols, 3.9 * nrows), layout="constrained", squeeze=False
    )
    sample = np.linspace(0, len(y) - 1, min(len(y), _MAX_POINTS)).astype(int)
    rng = np.random.default_rng(0)
    for ax, term in zip(axes.ravel(), terms, strict=False):
        share = frac.get(term, np.nan)
        ax.set_title(f"{term}: {share:.1%} of variance", fontsize="small")
        ax.spines[["top", "right"]].set_visible(False)
        factor = next((f for f in dz.factors if f.name == term), None)
        if factor is not None:
            groups = pd.Series(factor.levels[factor.codes], index=obs.index)
        elif term in obs and not pd.api.types.is_numeric_dtype(obs[term]):
            groups = obs[term].astype(str)
        elif term in obs:
            ax.scatter(
                obs[term].to_numpy()[sample],
                y[sample],
                s=4,
                alpha=0.4,
                color=colors.get(term, "#555555"),
                linewidths=0,
            )
            ax.set_xlabel(term, fontsize="small")
            ax.set_ylabel(f"{gene} expression", fontsize="small")
            continue
        else:
            ax.text(
                0.5,
                0.5,
                "interaction term: not drawn",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize="small",
            )
            ax.set_axis_off()
            continue
        by_level = pd.Series(y, index=groups.index).groupby(groups.to_numpy(), observed=True)
        order = by_level.median().sort_values().index
        if len(order) <= max_levels:
            data = [by_level.get_group(level).to_numpy() for level in order]
            boxes = ax.boxplot(data, showfliers=False, patch_artist=True, widths=0.6)
            for patch in boxes["boxes"]:
                patch.set_facecolor(colors.get(term, "#cccccc"))
                patch.set_alpha(0.5)
            codes = pd.Index(order).get_indexer(groups.to_numpy()[sample])
            jitter = rng.uniform(-0.18, 0.18, len(sample))
            ax.scatter(
                codes + 1 + jitter, y[sample], s=2, color="#333333", alpha=0.25, linewidths=0
            )
            ax.set_xticks(np.arange(1, len(order) + 1), [str(v) for v in order])
            plt.setp(ax.get_xticklabels(), rotation=90, fontsize="x-small")
        else:
            means = by_level.mean().loc[order]
            ax.plot(np.arange(len(means)), means.to_numpy(), ".", color=colors.get(term, "#555"))
            ax.set_xlabel(f"{len(order)} levels, sorted", fontsize="small")
        ax.set_ylabel(f"{gene} expression", fontsize="small")
    for ax in axes.ravel()[len(terms) :]:
        ax.set_visible(False)
    main = frac.dropna().sort_values(ascending=False).head(3)
    fig.suptitle(
        f"{gene}: " + ", ".join(f"{c} {v:.0%}" for c, v in main.items()), fontsize="medium"
    )
    return finish(list(axes.ravel()[: len(terms)]), show)
