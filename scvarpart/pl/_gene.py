"""``svp.pl.gene``: one gene's expression by each term of the model."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes

from .._docs import doc_adata_fitted, doc_key, doc_layer_use_raw_fitted, doc_params, doc_show_save
from ..design import Design
from ..get import result
from ..storage.select import select_expression
from ..varpart import VarPartResult
from ._common import axes_or_none, component_colors, finish
from ._fitted import fitted_design, gene_values
from ._partial import count_partial_residuals, log_rates, partial_residuals

__all__ = ["gene"]

_MAX_POINTS = 3000  # cells drawn per panel, sampled evenly
_VIEWS = {
    True: "adjusted: each panel shows the expression minus the other terms' fitted effects",
    False: "marginal: raw expression, which also shows the effects of associated terms",
}


def _panel_values(
    res: VarPartResult,
    dz: Design,
    y: np.ndarray,
    gene: str,
    adjusted: bool,
    offset: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The values drawn in each term's panel: partial residuals, or ``y`` itself.

    ``offset``: a count fit's offset per observation; its panels are on the log scale of
    the model (:func:`._partial.log_rates`).
    """
    terms = [f.name for f in dz.factors] + list(dz.fixed_terms)
    if not adjusted:
        return dict.fromkeys(terms, y if offset is None else log_rates(y, offset))
    variances = res.variance.loc[gene]
    if variances.isna().any():
        reason = res.errors["reason"].get(gene, "no estimates")
        raise ValueError(
            f"{gene!r} has no variance estimates ({reason}), so its other terms' effects "
            "cannot be removed; draw the raw expression with adjusted=False."
        )
    if offset is not None:
        family, approximation = res.params["family"], res.params.get("approximation")
        return count_partial_residuals(dz, y, offset, family, approximation or "lognormal")
    return partial_residuals(dz, y, variances)


def _count_offset(adata: AnnData, params, dz: Design, layer, use_raw: bool) -> np.ndarray:
    """A count fit's offset per observation it kept: its column, or the log library size."""
    if params.get("offset"):
        return adata.obs[str(params["offset"])].to_numpy(dtype=float)[dz.keep]
    from ..tl._counts import library_offset  # as the fit computed it

    matrix = select_expression(adata, layer, use_raw).matrix
    return library_offset(matrix)[dz.keep]


def _draw_levels(ax, values, groups, color, max_levels, sample, rng) -> None:
    """A box and a sample of the cells per level, sorted by median.

    Past ``max_levels`` levels, the level means.
    """
    by_level = pd.Series(values).groupby(groups, observed=True)
    order = by_level.median().sort_values().index
    if len(order) > max_levels:
        means = by_level.mean().loc[order]
        ax.plot(np.arange(len(means)), means.to_numpy(), ".", color=color)
        ax.set_xlabel(f"{len(order)} levels, sorted", fontsize="small")
        return
    data = [by_level.get_group(level).to_numpy() for level in order]
    boxes = ax.boxplot(
        data,
        showfliers=False,
        patch_artist=True,
        widths=0.6,
        showmeans=True,  # the level means: what the model's effects describe
        meanprops={
            "marker": "D",
            "markersize": 3,
            "markerfacecolor": "black",
            "markeredgewidth": 0,
        },
    )
    for patch in boxes["boxes"]:
        patch.set_facecolor(color)
        patch.set_alpha(0.5)
    for mean in boxes["means"]:
        mean.set_gid("level-mean")
    codes = pd.Index(order).get_indexer(groups[sample])
    jitter = rng.uniform(-0.18, 0.18, len(sample))
    ax.scatter(codes + 1 + jitter, values[sample], s=2, color="#333333", alpha=0.25, linewidths=0)
    ax.set_xticks(np.arange(1, len(order) + 1), [str(v) for v in order])
    plt.setp(ax.get_xticklabels(), rotation=90, fontsize="x-small")


def _draw_term(ax, term, dz, obs, values, color, max_levels, sample, rng) -> bool:
    """One term's panel; False where nothing can be drawn (an interaction)."""
    factor = next((f for f in dz.factors if f.name == term), None)
    if factor is not None:
        groups = np.asarray(factor.levels[factor.codes])
    elif term in obs and not pd.api.types.is_numeric_dtype(obs[term]):
        groups = obs[term].astype(str).to_numpy()
    elif term in obs:
        x = obs[term].to_numpy()
        ax.scatter(x[sample], values[sample], s=4, alpha=0.4, color=color, linewidths=0)
        ax.set_xlabel(term, fontsize="small")
        return True
    else:
        return False
    _draw_levels(ax, values, groups, color, max_levels, sample, rng)
    return True


@doc_params(
    doc_adata=doc_adata_fitted,
    doc_key=doc_key,
    doc_layer_use_raw_fitted=doc_layer_use_raw_fitted,
    doc_show_save=doc_show_save,
)
def gene(
    adata: AnnData,
    gene: str,
    *,
    key: str = "varpart",
    adjusted: bool = True,
    layer: str | None = None,
    use_raw: bool | None = None,
    max_levels: int = 40,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
) -> list[Axes] | None:
    """A gene's expression by each term of the model, with its fractions.

    One panel per term: a box (and a sample of the cells) per level of a grouping
    factor or categorical covariate, sorted by median; for more than
    ``max_levels`` levels, the level means, sorted; a scatter for a continuous
    covariate. Panel titles give the term's share of the gene's variance, the
    figure's title the gene's main components and which view is drawn.

    By default (``adjusted=True``) each panel shows the gene's *partial residuals*
    for its term: the expression minus the fitted effects of all the other terms (the
    other grouping factors' conditional modes, or BLUPs, and the other fixed effects,
    at the gene's estimated variances). That is what the fractions describe: a
    factor with 0% of the variance has flat boxes even when it is associated with
    another factor. ``adjusted=False`` draws the raw expression (the marginal view),
    in which a factor also shows the effects of any factor confounded with it.

    For a count fit (``family="nb"`` or ``"poisson"``) both views are on the model's
    log scale: each cell's ``log((count + 1/2) / size factor)`` (the fit's offset), and
    the other terms' effects are the count model's (the gene fitted again, with its
    conditional modes).

    Parameters
    ----------
    {doc_adata}
    gene
        A name of ``adata.var_names``.
    {doc_key}
    adjusted
        Partial residuals (default) or raw expression.
    {doc_layer_use_raw_fitted}
    max_levels
        Largest number of levels drawn as boxes.
    ax
        One Axes per term of the model (random terms, then fixed terms, in formula
        order); a new figure otherwise.
    {doc_show_save}

    Returns
    -------
    One Axes per term, when ``show`` is false.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=500, n_genes=20, seed=1)
    >>> svp.tl.variance_partition(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, batch=["chemistry", "day", "operator"],
    ...     signal="patient", method="REML", progress=False,
    ... )
    >>> axes = svp.pl.gene(adata, "gene0001", show=False)
    >>> len(axes)  # one panel per term: 4 grouping factors and log_umi
    5
    """
    res = result(adata, key=key)
    if gene not in adata.var_names:
        raise KeyError(f"{gene!r} is not in adata.var_names.")
    params = res.params
    if layer is None and use_raw is None:
        layer, use_raw = params.get("layer"), bool(params.get("use_raw", False))
    with warnings.catch_warnings():  # the fit warned about the design already
        warnings.simplefilter("ignore", UserWarning)
        dz = fitted_design(adata, key)
    y = gene_values(adata, gene, layer, bool(use_raw))[dz.keep]
    count_fit = params.get("family", "gaussian") != "gaussian"
    offset = _count_offset(adata, params, dz, layer, bool(use_raw)) if count_fit else None
    panels = _panel_values(res, dz, y, gene, adjusted, offset)
    terms = list(panels)
    axes = axes_or_none(ax, len(terms), "svp.pl.gene", "one per term: " + ", ".join(terms))
    if axes is None:
        ncols = min(len(terms), 3)
        nrows = -(-len(terms) // ncols)
        _, grid = plt.subplots(
            nrows, ncols, figsize=(4.6 * ncols, 3.9 * nrows), layout="constrained", squeeze=False
        )
        for extra in grid.ravel()[len(terms) :]:
            extra.set_visible(False)
        axes = list(grid.ravel()[: len(terms)])
    frac = res.fractions.loc[gene]
    colors = component_colors(res.components)
    obs = adata.obs.loc[dz.keep]
    sample = np.linspace(0, len(y) - 1, min(len(y), _MAX_POINTS)).astype(int)
    rng = np.random.default_rng(0)
    ylabel = f"{gene}, adjusted" if adjusted else f"{gene} expression"
    if count_fit:  # the count model's scale: log((count + 1/2) / size factor)
        ylabel = f"{gene}, log rate" + (", adjusted" if adjusted else "")
    for a, term in zip(axes, terms, strict=True):
        a.set_title(f"{term}: {frac.get(term, np.nan):.1%} of variance", fontsize="small")
        a.spines[["top", "right"]].set_visible(False)
        color = colors.get(term, "#555555")
        if _draw_term(a, term, dz, obs, panels[term], color, max_levels, sample, rng):
            a.set_ylabel(ylabel, fontsize="small")
        else:
            a.text(
                0.5,
                0.5,
                "interaction term: not drawn",
                ha="center",
                va="center",
                transform=a.transAxes,
                fontsize="small",
            )
            a.set_axis_off()
    if ax is None:
        main = frac.dropna().sort_values(ascending=False).head(3)
        axes[0].figure.suptitle(
            f"{gene}: "
            + ", ".join(f"{c} {v:.0%}" for c, v in main.items())
            + f"\n{_VIEWS[bool(adjusted)]}",
            fontsize="medium",
        )
    return finish(axes, show, save, "gene")
