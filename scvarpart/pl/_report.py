"""``svp.pl.report``: everything to look at after a fit, in one self-contained HTML file."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData

from .._io import atomic_output
from ..get import batch_metrics_df, result
from ..get._results import declared_checks
from ..varpart import VarPartResult
from ..varpart.grouped import group_names, group_table, is_grouped
from ._bars import percent_bars
from ._batch_metrics import batch_metrics
from ._design import design as design_plot
from ._html import figure_tag, page, preformatted, section, table
from ._rho import rho as rho_plot
from ._variance_partition import variance_partition as violin

__all__ = ["report"]

# the run parameters shown in the model's table, in this order, when present
_PARAMS = (
    "formula", "method", "batch", "signal", "layer", "use_raw", "cells", "min_cells",
    "weights", "covariance", "ci", "test", "n_boot", "seed", "n_obs", "n_obs_dropped",
    "engine", "plan", "plan_sha256", "path",
)  # fmt: skip


def _figure(axes) -> plt.Figure:
    first = axes[0] if isinstance(axes, list | tuple | np.ndarray) else axes
    return first.figure


def _shown(value) -> bool:
    """A parameter worth a row: set, and not an empty string, list or mapping."""
    return value is not None and not (hasattr(value, "__len__") and len(value) == 0)


def _text(value) -> str:
    return str(list(value)) if isinstance(value, np.ndarray) else str(value)


def _model(res: VarPartResult) -> str:
    params = res.params
    rows = {k: _text(params[k]) for k in _PARAMS if k in params and _shown(params[k])}
    versions = params.get("versions") or {}
    rows["versions"] = ", ".join(f"{k} {v}" for k, v in versions.items())
    frame = pd.DataFrame({"value": list(rows.values())}, index=list(rows))
    return table(frame)


def _fits(res: VarPartResult) -> str:
    s = res.summary
    counts = pd.DataFrame(
        {
            "genes": [s["n_genes"], s["n_genes"] - s["n_failed"], s["n_singular"],
                      s["n_not_converged"], s["n_failed"]],
        },
        index=["asked for", "fitted", "singular (a variance at 0)", "not converged",
               "failed (no estimates)"],
    )  # fmt: skip
    parts = [table(counts)]
    errors = res.errors
    if len(errors):
        by_reason = errors.rename_axis("gene").reset_index().groupby("reason", sort=False)["gene"]
        reasons = pd.DataFrame(
            {"genes": by_reason.size(), "e.g.": by_reason.agg(lambda g: ", ".join(map(str, g[:5])))}
        )
        parts += ["<h3>Why genes have no estimates</h3>", table(reasons)]
    return "\n".join(parts)


def _fractions(adata: AnnData, res: VarPartResult, key: str) -> str:
    medians = pd.Series(res.summary["median_fraction"], name="median fraction")
    roles = [
        "batch" if c in res.batch else "signal" if c in res.signal else "" for c in medians.index
    ]
    frame = pd.DataFrame({"median fraction": medians, "role": roles})
    plot = violin(adata, key=key, show=False)
    return figure_tag(_figure(plot), "fractions per component") + table(frame)


def _batch_dominated(adata: AnnData, res: VarPartResult, key: str, n_top: int) -> str:
    ranked = res.batch_dominated(n_top=n_top)
    if not len(ranked):
        return "<p>No gene has at least as much batch as signal variance (rho >= 1).</p>"
    bars = percent_bars(adata, key=key, n_top=n_top, show=False)
    return figure_tag(_figure(bars), "most batch-dominated genes") + table(ranked)


def _correction(adata: AnnData, metrics_key: str) -> str:
    entry = adata.uns[metrics_key]
    parts = [figure_tag(_figure(batch_metrics(adata, key=metrics_key, show=False)), "scores")]
    parts.append(table(batch_metrics_df(adata, key=metrics_key), index=False))
    coordinates = entry.get("coordinates")
    if coordinates is not None:
        parts.append(figure_tag(_scatter(adata, entry), "embeddings before and after"))
    return "\n".join(parts)


def _scatter(adata: AnnData, entry) -> plt.Figure:
    """The first two coordinates before and after, coloured by a batch and by a label."""
    params, coords = entry["params"], entry["coordinates"]
    obs = adata.obs.loc[[str(c) for c in coords["cells"]]]  # any string dtype of a file
    colour_by = [params["batch"][0], params["labels"][0]]
    fig, axes = plt.subplots(2, 2, figsize=(10, 9), layout="constrained")
    for row, column in enumerate(colour_by):
        codes = pd.Categorical(obs[column]).codes
        for col, which in enumerate(("before", "after")):
            ax, xy = axes[row, col], np.asarray(coords[which])
            ax.scatter(xy[:, 0], xy[:, 1], c=codes, cmap="tab20", s=3, linewidths=0)
            ax.set_title(f"{which} ({params[which]}), coloured by {column}", fontsize="medium")
            ax.set_xticks([])
            ax.set_yticks([])
    return fig


def _sections(adata: AnnData, res: VarPartResult, key: str, metrics_key: str, n_top: int):
    """The report's sections as ``(anchor, title, html)``, those that apply."""
    out = [
        ("model", "Model", section("model", "Model", _model(res))),
        ("fits", "Fits", section("fits", "Fits", _fits(res))),
    ]
    if res.design is not None:
        plot = design_plot(adata, res.params["formula"], key=key, show=False)
        body = preformatted(res.design.to_text()) + figure_tag(_figure(plot), "design")
        out.append(("design", "Design audit", section("design", "Design audit", body)))
    body = _fractions(adata, res, key)
    out.append(("fractions", "Fractions", section("fractions", "Variance fractions", body)))
    if "rho" in res.per_gene:
        body = _batch_dominated(adata, res, key, n_top)
        title = "Most batch-dominated genes"
        anchor = "batch-dominated"
        out.append((anchor, "Batch-dominated genes", section(anchor, title, body)))
        rho_fig = figure_tag(_figure(rho_plot(adata, key=key, show=False)), "rho")
        out.append(("rho", "rho", section("rho", "Batch-to-signal ratio rho", rho_fig)))
    checks = declared_checks(adata, res, key, n_top)
    if checks:
        body = preformatted("\n".join(line for line in checks if line))
        out.append(("checks", "Declared checks", section("checks", "The plan's checks", body)))
    if metrics_key in adata.uns:
        body = _correction(adata, metrics_key)
        out.append(("correction", "Correction", section("correction", "Batch correction", body)))
    return out


def _group_sections(adata: AnnData, key: str, n_top: int):
    """The sections of results per group: the model, the groups, then one per group."""
    params = adata.uns[key]["params"]
    rows = {k: _text(params[k]) for k in ("groupby", *_PARAMS) if k in params and _shown(params[k])}
    model = table(pd.DataFrame({"value": list(rows.values())}, index=list(rows)))
    groups = group_table(adata, key)
    names = group_names(adata, key)
    results = {g: result(adata, key=key, group=g) for g in names}
    medians = pd.DataFrame({g: r.summary["median_fraction"] for g, r in results.items()}).T
    plot = violin(adata, key=key, show=False)
    body = (
        table(groups, index=False)
        + figure_tag(_figure(plot), "fractions per group and component")
        + "<h3>Median fraction per group and component</h3>"
        + table(medians)
    )
    out = [
        ("model", "Model", section("model", "Model", model)),
        ("groups", "Groups", section("groups", f"Groups of {params['groupby']!r}", body)),
    ]
    for i, (g, res) in enumerate(results.items()):
        parts = [_fits(res)]
        if res.design is not None:
            parts.append(preformatted(res.design.to_text()))
        if "rho" in res.per_gene:
            ranked = res.batch_dominated(n_top=n_top)
            if len(ranked):
                bars = percent_bars(adata, key=key, group=g, n_top=n_top, show=False)
                parts += [figure_tag(_figure(bars), f"most batch-dominated genes of {g}"),
                          table(ranked)]  # fmt: skip
            else:
                parts.append("<p>No gene has at least as much batch as signal variance.</p>")
        anchor = f"group-{i + 1}"
        out.append((anchor, str(g), section(anchor, f"Group {g}", *parts)))
    return out


def report(
    adata: AnnData,
    path: str | os.PathLike,
    *,
    key: str = "varpart",
    metrics_key: str = "batch_metrics",
    n_top: int = 20,
    title: str | None = None,
    force: bool = False,
) -> Path:
    """Write one self-contained HTML report of a variance partition.

    Sections (those that apply): the model and its run parameters (the analysis plan and
    its SHA-256 when there was one, package versions); the fits (fitted, singular, not
    converged, failed, and why genes have no estimates); the design audit with
    :func:`design`; the variance fractions (:func:`variance_partition` and the median per
    component); the most batch-dominated genes (:func:`percent_bars` and their table) and
    ``rho`` (:func:`rho`); the analysis plan's declared checks and what they found; and,
    after :func:`scvarpart.tl.batch_metrics`, the correction's scores
    (:func:`batch_metrics`) and the embeddings before and after, coloured by a batch and
    by a label. For results per group (``groupby=``): the model, the table of the groups
    with their fractions side by side and the median per group, then per group its fits,
    design audit and most batch-dominated genes. Figures are embedded PNGs and the style
    is inline: the file opens in any browser, offline, and is mailed as it is. It is
    written under a temporary name and renamed into place.

    Parameters
    ----------
    adata
        Annotated data with the results of :func:`scvarpart.tl.variance_partition` (its
        matrices are not needed: a result file read without them will do).
    path
        The HTML file to write.
    key
        The results' key.
    metrics_key
        Where :func:`scvarpart.tl.batch_metrics` stored its scores, if it ran.
    n_top
        Batch-dominated genes shown.
    title
        The page's title (default: the formula).
    force
        Replace an existing file.

    Returns
    -------
    The path written.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=600, n_genes=30, seed=1)
    >>> svp.tl.variance_partition(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, batch=["chemistry", "day", "operator"],
    ...     signal="patient", progress=False,
    ... )
    >>> out = svp.pl.report(adata, Path(tempfile.mkdtemp()) / "report.html")
    >>> 'id="fractions"' in out.read_text()
    True
    """
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if is_grouped(adata, key):
        params = adata.uns[key]["params"]
        groups = group_table(adata, key)
        subtitle = (
            f"{len(groups)} groups of {params['groupby']!r}, {int(groups['n_obs'].sum()):,} "
            f"observations; written {stamp}"
        )
        sections = _group_sections(adata, key, n_top)
    else:
        res = result(adata, key=key)
        params = res.params
        n_cells = res.params.get("n_obs", adata.n_obs)
        subtitle = f"{res.summary['n_genes']:,} genes, {n_cells:,} cells; written {stamp}"
        sections = _sections(adata, res, key, metrics_key, n_top)
    text = page(title or f"scvarpart: {params['formula']}", subtitle, sections)
    path = Path(path)
    with atomic_output(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
