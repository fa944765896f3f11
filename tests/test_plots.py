"""Plots render headless and show what they should: checked on their artists."""

from __future__ import annotations

import itertools
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib.collections import PolyCollection
from matplotlib.patches import Rectangle
from matplotlib.text import Text

import scvarpart as svp

BATCH = ["chemistry", "day", "operator"]


@pytest.fixture(scope="module")
def fitted():
    adata = svp.datasets.crossed_example(n_cells=1500, n_genes=120, seed=2)
    svp.tl.variance_partition(
        adata, svp.datasets.EXAMPLE_FORMULA, batch=BATCH, signal="patient", progress=False
    )
    return adata


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _synthetic(n_components: int, n_genes: int = 40, long: bool = False) -> AnnData:
    """Results with many components and long names, as a fit would store them."""
    rng = np.random.default_rng(0)
    stem = "a_rather_long_technical_factor_name_" if long else "f"
    comps = [f"{stem}{i}" for i in range(n_components - 1)] + ["Residual"]
    genes = [
        ("ENSG00000_very_long_gene_identifier_" if long else "g") + str(i) for i in range(n_genes)
    ]
    frac = rng.dirichlet(np.ones(n_components), size=n_genes)
    adata = AnnData(var=pd.DataFrame(index=genes))
    adata.varm["varpart"] = pd.DataFrame(frac, index=genes, columns=comps)
    adata.varm["varpart_variance"] = adata.varm["varpart"] * 2
    adata.var["varpart_rho"] = frac[:, 0] / frac[:, 1]
    adata.var["varpart_mean"] = rng.uniform(0, 3, n_genes)
    adata.uns["varpart"] = {
        "components": comps,
        "params": {"batch": [comps[0]], "signal": [comps[1]], "formula": "~ (1|x)"},
    }
    return adata


def _no_overlap(texts) -> None:
    fig = texts[0].figure
    renderer = fig.canvas.get_renderer()
    # the text's own box (an annotation's box would include its arrow)
    boxes = [Text.get_window_extent(t, renderer) for t in texts if t.get_text()]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), "labels overlap"


def _png(fig, tmp_path, name) -> None:
    path = tmp_path / f"{name}.png"
    fig.savefig(path, dpi=80)
    assert path.stat().st_size > 5_000


def test_variance_partition_violins(fitted, tmp_path):
    ax = svp.pl.variance_partition(fitted, show=False)
    comps = list(fitted.uns["varpart"]["components"])
    violins = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(violins) == len(comps)
    order = [t.get_text() for t in ax.get_xticklabels()]
    assert sorted(order) == sorted(comps) and order[-1] == "Residual"
    medians = fitted.varm["varpart"][order[:-1]].median()
    assert list(medians) == sorted(medians, reverse=True)
    assert ax.get_ylim() == (0, 100) and "%" in ax.get_ylabel()
    colors = svp.pl.component_colors(comps)
    for body in violins:
        comp = body.get_gid().split(":", 1)[1]
        assert matplotlib.colors.same_color(body.get_facecolor()[0][:3], colors[comp])
    _png(ax.figure, tmp_path, "violins")


@pytest.mark.parametrize("n_components", [3, 30])
def test_variance_partition_scales_and_labels_stay_apart(n_components, tmp_path):
    adata = _synthetic(n_components, long=True)
    ax = svp.pl.variance_partition(adata, show=False)
    ax.figure.canvas.draw()
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == n_components
    _no_overlap(ax.get_xticklabels())
    width = ax.figure.get_size_inches()[0]
    assert (width > 15) == (n_components == 30)
    _png(ax.figure, tmp_path, f"violins{n_components}")


def test_percent_bars(fitted, tmp_path):
    ax = svp.pl.percent_bars(fitted, n_top=12, show=False)
    comps = list(fitted.uns["varpart"]["components"])
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == 12 * len(comps)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == comps
    shown = [t.get_text() for t in ax.get_yticklabels()]
    rho = fitted.var["varpart_rho"]
    assert shown[0] == rho.idxmax() or np.isinf(rho[shown[0]])  # largest rho first
    # explicit genes, in the given order, stacked to 100%
    genes = list(fitted.var_names[[5, 1, 9]])
    ax = svp.pl.percent_bars(fitted, genes, show=False)
    assert [t.get_text() for t in ax.get_yticklabels()] == genes
    right = max(p.get_x() + p.get_width() for p in ax.patches if isinstance(p, Rectangle))
    assert right == pytest.approx(100)
    # one colour per component, as in the violins
    colors = svp.pl.component_colors(comps)
    by_label = {h.get_label(): h for h in ax.get_legend_handles_labels()[0]}
    for comp in comps:
        assert matplotlib.colors.same_color(by_label[comp].patches[0].get_facecolor(), colors[comp])
    _png(ax.figure, tmp_path, "bars")
    ax = svp.pl.percent_bars(fitted, sort_by="day", n_top=5, show=False)
    top_day = fitted.varm["varpart"]["day"].sort_values(ascending=False).index[:5]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(top_day)
    with pytest.raises(KeyError, match="sort_by='nope'"):
        svp.pl.percent_bars(fitted, sort_by="nope", show=False)


def test_percent_bars_long_gene_names_stay_apart():
    ax = svp.pl.percent_bars(_synthetic(5, n_genes=30, long=True), n_top=30, show=False)
    ax.figure.canvas.draw()
    _no_overlap(ax.get_yticklabels())


def test_rho(fitted, tmp_path):
    hist, scatter = svp.pl.rho(fitted, n_labels=8, show=False)
    rho = fitted.var["varpart_rho"]
    n_inf = int(np.isinf(rho).sum())
    assert f"{n_inf} with rho = inf" in hist.get_title()
    assert "log10 rho" in hist.get_xlabel() and scatter.get_xlabel() == "mean expression"
    labels = [t for t in scatter.texts if t.get_gid() == "gene-label"]
    finite = rho[np.isfinite(rho) & (rho >= 1)].sort_values(ascending=False)
    assert [t.get_text() for t in labels] == list(finite.index[:8])
    scatter.figure.canvas.draw()
    _no_overlap(labels)
    n_points = sum(len(c.get_offsets()) for c in scatter.collections)
    assert n_points == rho.notna().sum()
    _png(hist.figure, tmp_path, "rho")
    fitted_no_rho = fitted.copy()
    del fitted_no_rho.var["varpart_rho"]
    with pytest.raises(KeyError, match="batch= and signal="):
        svp.pl.rho(fitted_no_rho, show=False)


def test_design_flags_confounded_pairs(fitted, tmp_path):
    fig = svp.pl.design(fitted, show=False)
    n_terms = 5  # patient, chemistry, day, operator, log_umi
    heatmap = fig.axes[4]
    values = [t for t in heatmap.texts if t.get_gid() == "association-value"]
    assert len(values) == n_terms**2
    assert heatmap.get_title() == "confounded (>= 0.95): none"
    assert [ax.get_title(loc="left") for ax in fig.axes[:4]] == [
        "patient: 12 levels",
        "chemistry: 3 levels",
        "day: 6 levels",
        "operator: 4 levels",
    ]
    _png(fig, tmp_path, "design")
    # a second name for the chemistry groups is confounded with chemistry
    confounded = fitted.copy()
    confounded.obs["kit"] = confounded.obs["chemistry"].cat.rename_categories(lambda c: "kit " + c)
    fig = svp.pl.design(confounded, "~ (1|patient) + (1|chemistry) + (1|kit)", show=False)
    heatmap = fig.axes[-2]  # the colorbar is last
    frames = [p for p in heatmap.patches if p.get_gid() == "confounded"]
    assert len(frames) == 2
    assert "confounded (>= 0.95): chemistry & kit" in heatmap.get_title()


def test_design_tells_nesting_from_confounding():
    adata = svp.datasets.simulate_counts(800, 5, seed=3)
    formula = "~ (1|patient/library) + (1|chemistry) + (1|day)"
    heatmap = svp.pl.design(adata, formula, show=False).axes[-2]
    title = heatmap.get_title().replace("\n", " ")
    assert "confounded (>= 0.95): none" in title
    # every library lies within one patient, chemistry and day
    for outer in ("patient", "chemistry", "day"):
        assert f"patient:library in {outer}" in title
    assert len([p for p in heatmap.patches if p.get_gid() == "nested"]) == 6
    assert not [p for p in heatmap.patches if p.get_gid() == "confounded"]


def test_gene_panels(fitted, tmp_path):
    gene = fitted.var_names[3]
    axes = svp.pl.gene(fitted, gene, show=False)
    assert len(axes) == 5
    assert axes[0].get_title().startswith("patient:") and "% of variance" in axes[0].get_title()
    assert len(axes[0].get_xticklabels()) == 12  # one box per patient
    assert axes[-1].get_xlabel() == "log_umi"  # a continuous covariate: a scatter
    suptitle = axes[0].figure.get_suptitle()
    assert suptitle.startswith(f"{gene}:") and "%" in suptitle
    _png(axes[0].figure, tmp_path, "gene")
    with pytest.raises(KeyError, match=r"not in adata\.var_names"):
        svp.pl.gene(fitted, "no-such-gene", show=False)


def test_show_true_returns_nothing_and_missing_results_are_explained(fitted):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Agg cannot show
        assert svp.pl.variance_partition(fitted, show=True) is None
    with pytest.raises(KeyError, match=r"run svp\.tl\.variance_partition"):
        svp.pl.variance_partition(fitted, key="other", show=False)
    _, ax = plt.subplots()
    assert svp.pl.variance_partition(fitted, ax=ax, show=False) is ax


def test_long_level_names_stay_apart(fitted):
    long_names = fitted.copy()
    for col in ("patient", "day"):
        long_names.obs[col] = long_names.obs[col].cat.rename_categories(
            lambda c, col=col: f"{col} with a long descriptive label {c}"
        )
    axes = svp.pl.gene(long_names, long_names.var_names[0], show=False)
    axes[0].figure.canvas.draw()
    for ax in axes[:4]:
        _no_overlap(ax.get_xticklabels())
    fig = svp.pl.design(long_names, show=False)
    fig.canvas.draw()
    for ax in fig.axes[:4]:
        _no_overlap(ax.get_yticklabels())
