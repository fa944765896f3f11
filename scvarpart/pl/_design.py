"""``svp.pl.design``: the experimental design at a glance."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TypedDict

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

from .._docs import doc_params, doc_show_save
from ..design import Design, GroupingFactor, association, within
from ._common import axes_or_none, component_colors, finish
from ._fitted import fitted_design

__all__ = ["design"]

_MAX_BARS = 30


class _Style(TypedDict, total=False):
    """Keyword arguments of the outline of an associated pair's cells."""

    edgecolor: str
    linewidth: float
    linestyle: str


# frames of the flagged pairs: a problem in bold, a structure the model handles dashed
_STYLES: dict[str, _Style] = {
    "confounded": {"edgecolor": "#1f4e79", "linewidth": 2.5},
    "nested": {"edgecolor": "#555555", "linewidth": 1.2, "linestyle": "--"},
    "within": {"edgecolor": "#555555", "linewidth": 1.2, "linestyle": "--"},
}


def _pair_kind(inside: pd.DataFrame, factors: set[str], a: str, b: str) -> tuple[str, str, str]:
    """How two strongly associated terms relate.

    ``("nested", inner, outer)`` for grouping factors, ``("within", covariate,
    factor)`` for a term constant within a grouping factor's levels, else
    ``("confounded", a, b)``.
    """
    for x, g in ((a, b), (b, a)):
        if g in inside.columns and inside.loc[x, g]:
            # x constant within g: g is the finer grouping
            return ("nested", g, x) if x in factors else ("within", x, g)
    return "confounded", a, b


def _classify(dz: Design, table: pd.DataFrame, threshold: float) -> dict[tuple[int, int], tuple]:
    """The kind of every strongly associated pair (i < j) of terms."""
    inside = within(dz)
    factors = {f.name for f in dz.factors}
    names = list(table.index)
    return {
        (i, j): _pair_kind(inside, factors, names[i], names[j])
        for i in range(len(names))
        for j in range(i + 1, len(names))
        if table.iloc[i, j] >= threshold
    }


def _title(kinds: dict, threshold: float) -> tuple[str, bool]:
    confounded = [f"{a} & {b}" for kind, a, b in kinds.values() if kind == "confounded"]
    nested = [f"{inner} in {outer}" for kind, inner, outer in kinds.values() if kind == "nested"]
    by_factor: dict[str, list[str]] = {}
    for kind, x, g in kinds.values():
        if kind == "within":
            by_factor.setdefault(g, []).append(x)
    lines = [f"confounded (>= {threshold:g}): " + ("; ".join(confounded) or "none")]
    if nested:
        lines.append("nested, fine for a mixed model: " + "; ".join(nested))
    if by_factor:
        lines.append(
            "constant within a grouping factor, fine for a mixed model: "
            + "; ".join(f"{', '.join(xs)} per {g}" for g, xs in by_factor.items())
        )
    return "\n".join(textwrap.fill(line, 70) for line in lines), bool(confounded)


def _draw_counts(ax: Axes, f: GroupingFactor, color: str) -> None:
    """Cells per level of one grouping factor (their distribution past 30 levels)."""
    counts = f.counts
    if f.n_levels <= _MAX_BARS:
        y = np.arange(f.n_levels)
        ax.barh(y, counts, color=color, height=0.8)
        ax.set_yticks(y, [str(v) for v in f.levels], fontsize="x-small")
        ax.invert_yaxis()
    else:
        ax.hist(counts, bins=30, color=color)
        ax.set_ylabel("levels", fontsize="small")
    ax.set_title(f"{f.name}: {f.n_levels} levels", fontsize="small", loc="left")
    ax.tick_params(axis="x", labelsize="x-small")
    ax.spines[["top", "right"]].set_visible(False)


def _draw_association(hm: Axes, dz: Design, table: pd.DataFrame, threshold: float) -> None:
    image = hm.imshow(table.to_numpy(), vmin=0, vmax=1, cmap="Reds")
    names = list(table.index)
    n = len(names)
    hm.set_xticks(range(n), names, rotation=45, ha="right", rotation_mode="anchor")
    hm.set_yticks(range(n), names)
    if n <= 15:
        size = "small" if n <= 12 else "x-small"
        for i, j in ((i, j) for i in range(n) for j in range(n)):
            value = table.iloc[i, j]
            hm.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=size,
                color="white" if value > 0.6 else "black",
                gid="association-value",
            )
    kinds = _classify(dz, table, threshold)
    for (i, j), (kind, _, _) in kinds.items():
        for r, c in ((i, j), (j, i)):
            hm.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, gid=kind, **_STYLES[kind]))
    hm.figure.colorbar(
        image,
        ax=hm,
        shrink=0.5,
        aspect=30,
        label="association (canonical correlation; Cramér's V for two factors)",
    )
    title, problem = _title(kinds, threshold)
    hm.set_title(title, fontsize="small", color="#1f4e79" if problem else "black")


def _new_figure(factors: list[GroupingFactor]) -> list[Axes]:
    rows = max(len(factors), 1)
    weights = [min(f.n_levels, _MAX_BARS) + 3 for f in factors] or [1]
    height = max(4.5, 0.16 * sum(weights) + 0.9 * rows)
    fig = plt.figure(figsize=(12, height), layout="constrained")
    grid = fig.add_gridspec(rows, 2, width_ratios=[1, 1.25], height_ratios=weights)
    axes = [fig.add_subplot(grid[i, 0]) for i in range(len(factors))]
    if axes:
        axes[-1].set_xlabel("cells per level", fontsize="small")
    return [*axes, fig.add_subplot(grid[:, 1])]


@doc_params(doc_show_save=doc_show_save)
def design(
    adata: AnnData,
    formula: str | None = None,
    *,
    key: str = "varpart",
    threshold: float = 0.95,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
) -> list[Axes] | None:
    """Cells per level of every grouping factor, and how the model's terms associate.

    Left: the number of cells in each level of each random term (for more than 30
    levels, the distribution of those numbers). Right: the association of every
    pair of terms (canonical correlation of their model matrices, as
    variancePartition's ``canCorPairs``; Cramér's V for two factors). Pairs at or
    above ``threshold`` are framed and named in the title, as one of:

    - *nested* (dashed): one grouping factor lies within the other, like libraries
      within patients;
    - *constant within a grouping factor* (dashed): a covariate that takes one value
      per level of a grouping factor, like a donor's age or sex beside ``(1|donor)``;
      its effect is estimated between donors, the donor variance from what remains;
    - *confounded* (bold): anything else, e.g. two names for the same groups, or a
      grouping factor whose levels a fixed effect already tells apart. Their variances
      cannot be told apart.

    The first two are fine for a mixed model; the last is a problem.

    Parameters
    ----------
    adata
        Annotated data; its ``obs`` holds the design.
    formula
        The model; by default the one of the results under ``key`` (and its cells).
    key
        Results whose formula to use when ``formula`` is not given.
    threshold
        Association at which a pair is flagged.
    ax
        One Axes per grouping factor (cells per level), then one for the heatmap, in
        formula order; a new figure otherwise.
    {doc_show_save}

    Returns
    -------
    The Axes (one per grouping factor, then the heatmap), when ``show`` is false.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=500, n_genes=20, seed=1)
    >>> axes = svp.pl.design(adata, svp.datasets.EXAMPLE_FORMULA, show=False)
    >>> axes[-1].get_title()
    'confounded (>= 0.95): none'
    """
    dz = fitted_design(adata, key, formula=formula, check=False)
    table = association(dz)
    colors = component_colors([*table.index, "Residual"])
    k = len(dz.factors)
    axes = axes_or_none(
        ax, k + 1, "svp.pl.design", f"cells per level of the {k} grouping factor(s), heatmap"
    )
    if axes is None:
        axes = _new_figure(dz.factors)
        axes[-1].figure.suptitle(
            f"design of {dz.n_obs:,} cells: {dz.formula.text}", fontsize="medium"
        )
    for a, f in zip(axes[:-1], dz.factors, strict=True):
        _draw_counts(a, f, colors[f.name])
    _draw_association(axes[-1], dz, table, threshold)
    return finish(axes, show, save, "design")
