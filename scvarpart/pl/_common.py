"""Shared pieces of the plots: reading results, colours, showing."""

from __future__ import annotations

from typing import NamedTuple

import matplotlib.pyplot as plt
import pandas as pd
from anndata import AnnData

__all__ = ["RESIDUAL_COLOR", "Results", "component_colors", "finish", "get_results"]

RESIDUAL_COLOR = "#c8c8c8"


class Results(NamedTuple):
    fractions: pd.DataFrame
    variance: pd.DataFrame
    per_gene: pd.DataFrame
    uns: dict
    key: str


def get_results(adata: AnnData, key: str) -> Results:
    """The stored results of :func:`scvarpart.tl.variance_partition` under ``key``."""
    if key not in adata.varm or key not in adata.uns:
        raise KeyError(
            f"No variance partition under key {key!r}: run svp.tl.variance_partition(adata, "
            f"..., key_added={key!r}) first."
        )
    per_gene = adata.var[[c for c in adata.var.columns if c.startswith(f"{key}_")]]
    per_gene = per_gene.rename(columns=lambda c: c[len(key) + 1 :])
    return Results(
        fractions=adata.varm[key],
        variance=adata.varm[f"{key}_variance"],
        per_gene=per_gene,
        uns=adata.uns[key],
        key=key,
    )


def component_colors(components) -> dict[str, str]:
    """One colour per component, the same in every plot: scanpy's categorical
    palettes in the components' order, light grey for the residual."""
    from scanpy.plotting import palettes

    names = [str(c) for c in components if str(c) != "Residual"]
    palette = palettes.default_20 if len(names) <= 20 else palettes.default_102
    colors = {name: palette[i % len(palette)] for i, name in enumerate(names)}
    colors["Residual"] = RESIDUAL_COLOR
    return colors


def components_of(results: Results) -> list[str]:
    return [str(c) for c in results.uns["components"]]


def finish(artist, show: bool | None):
    """scanpy's convention: show the figure (settings.autoshow by default) and
    return nothing, or return the Axes (or Figure) with ``show=False``."""
    if show is None:
        from scanpy import settings

        show = settings.autoshow
    if show:
        plt.show()
        return None
    return artist
