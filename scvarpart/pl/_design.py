"""``svp.pl.design``: the experimental design at a glance."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..design import association, build_design, nesting
from ._common import component_colors, finish

__all__ = ["design"]


def _nested(table, a: str, b: str) -> tuple[str, str] | None:
    """(inner, outer) where one grouping factor is nested in the other."""
    if a in table.index and b in table.columns:
        if table.loc[a, b]:
            return a, b
        if table.loc[b, a]:
            return b, a
    return None


_MAX_BARS = 30


def design(
    adata: AnnData,
    formula: str | None = None,
    *,
    key: str = "varpart",
    threshold: float = 0.95,
    show: bool | None = None,
) -> Figure | None:
    """Cells per level of every grouping factor, and how the model's terms associate.

    Left: the number of cells in each level of each random term (for more than 30
    levels, the distribution of those numbers). Right: the association of every
    pair of terms (canonical correlation of their model matrices, as
    variancePartition's ``canCorPairs``; Cramér's V for two factors). Pairs at or
    above ``threshold`` are framed and named in the title: as *nested* (dashed)
    where one grouping factor lies within the other, which a mixed model handles,
    and as *confounded* (bold) otherwise: their variances cannot be told apart.

    Parameters
    ----------
    adata
        Annotated data; its ``obs`` holds the design.
    formula
        The model; by default the one of the results under ``key``.
    key
        Results whose formula to use when ``formula`` is not given.
    threshold
        Association at which a pair is flagged as confounded.
    show
        Show the figure (scanpy's ``settings.autoshow`` by default); with
        ``False`` the Figure is returned.

    Returns
    -------
    The Figure, when ``show`` is false.
    """
    if formula is None:
        if key not in adata.uns:
            raise KeyError(f"Give formula=, or run svp.tl.variance_partition (key {key!r}).")
        formula = str(adata.uns[key]["params"]["formula"])
    dz = build_design(formula, adata.obs, check=False)
    table = association(dz)
    names = list(table.index)
    colors = component_colors([*names, "Residual"])
    factors = dz.factors
    rows = max(len(factors), 1)
    weights = [min(f.n_levels, _MAX_BARS) + 3 for f in factors] or [1]
    height = max(4.5, 0.16 * sum(weights) + 0.9 * rows)
    fig = plt.figure(figsize=(12, height), layout="constrained")
    grid = fig.add_gridspec(rows, 2, width_ratios=[1, 1.25], height_ratios=weights)
    for i, f in enumerate(factors):
        ax = fig.add_subplot(grid[i, 0])
        counts = f.counts
        if f.n_levels <= _MAX_BARS:
            y = np.arange(f.n_levels)
            ax.barh(y, counts, color=colors[f.name], height=0.8)
            ax.set_yticks(y, [str(v) for v in f.levels], fontsize="x-small")
            ax.invert_yaxis()
        else:
            ax.hist(counts, bins=30, color=colors[f.name])
            ax.set_ylabel("levels", fontsize="small")
        ax.set_title(f"{f.name}: {f.n_levels} levels", fontsize="small", loc="left")
        ax.tick_params(axis="x", labelsize="x-small")
        ax.spines[["top", "right"]].set_visible(False)
    ax_factors = fig.axes[-1] if factors else None
    if ax_factors is not None:
        ax_factors.set_xlabel("cells per level", fontsize="small")

    hm = fig.add_subplot(grid[:, 1])
    image = hm.imshow(table.to_numpy(), vmin=0, vmax=1, cmap="Reds")
    n = len(names)
    hm.set_xticks(range(n), names, rotation=45, ha="right", rotation_mode="anchor")
    hm.set_yticks(range(n), names)
    size = "small" if n <= 12 else "x-small"
    nested_in = nesting(dz)
    confounded, nested = [], []
    for i, j in ((i, j) for i in range(n) for j in range(n)):
        value = table.iloc[i, j]
        if n <= 15:
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
        if i == j or not value >= threshold:
            continue
        a, b = names[i], names[j]
        inner = _nested(nested_in, a, b)
        if inner is None:
            kind, style = "confounded", {"edgecolor": "#1f4e79", "linewidth": 2.5}
            if i < j:
                confounded.append(f"{a} & {b}")
        else:
            kind, style = "nested", {"edgecolor": "#555555", "linewidth": 1.2, "linestyle": "--"}
            if i < j:
                nested.append(f"{inner[0]} in {inner[1]}")
        hm.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, gid=kind, **style))
    fig.colorbar(
        image,
        ax=hm,
        shrink=0.5,
        aspect=30,
        label="association (canonical correlation; Cramér's V for two factors)",
    )
    lines = [f"confounded (>= {threshold:g}): " + ("; ".join(confounded) or "none")]
    if nested:
        lines.append("nested, fine for a mixed model: " + "; ".join(nested))
    hm.set_title(
        "\n".join(textwrap.fill(line, 70) for line in lines),
        fontsize="small",
        color="#1f4e79" if confounded else "black",
    )
    fig.suptitle(f"design of {dz.n_obs:,} cells: {formula}", fontsize="medium")
    return finish(fig, show)
