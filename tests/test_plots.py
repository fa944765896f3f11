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
    # sortCols: by decreasing median fraction over all genes, the residual last
    medians = fitted.varm["varpart"].drop(columns="Residual").median()
    expected = [*medians.sort_values(ascending=False, kind="stable").index, "Residual"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == expected
    shown = [t.get_text() for t in ax.get_yticklabels()]
    # the one ranking of batch-dominated genes (svp.get, the report, the README)
    assert shown == list(svp.get.batch_dominated(fitted, n_top=12).index)
    assert "batch-dominated" in ax.get_title()
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


def test_percent_bars_do_not_put_noise_first():
    """rho = inf with almost no batch variance, or a huge ratio of two tiny variances:
    not the most batch-dominated genes."""
    adata = _synthetic(4, n_genes=6)
    frac = np.array(
        [
            [0.001, 0.000, 0.100, 0.899],  # g0: rho = inf, 0.1% batch
            [0.002, 0.00001, 0.100, 0.89799],  # g1: rho = 200, 0.2% batch
            [0.500, 0.200, 0.050, 0.250],  # g2: rho = 2.5, 50% batch
            [0.300, 0.100, 0.100, 0.500],  # g3: rho = 3, 30% batch
            [0.100, 0.400, 0.100, 0.400],  # g4: rho = 0.25: not batch-dominated
            [0.000, 0.000, 0.200, 0.800],  # g5: rho = NaN
        ]
    )
    comps = list(adata.varm["varpart"].columns)
    adata.varm["varpart"] = pd.DataFrame(frac, index=adata.var_names, columns=comps)
    with np.errstate(divide="ignore", invalid="ignore"):
        adata.var["varpart_rho"] = np.where(frac[:, 1] > 0, frac[:, 0] / frac[:, 1], np.inf)
    adata.var.loc["g5", "varpart_rho"] = np.nan
    ax = svp.pl.percent_bars(adata, show=False)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["g2", "g3", "g1", "g0"]
    ax = svp.pl.percent_bars(adata, min_rho=2.8, show=False)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["g3", "g1", "g0"]


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
    ranked = svp.get.batch_dominated(fitted, n_top=8, min_rho=1)
    assert [t.get_text() for t in labels] == list(ranked.index)
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
    axes = svp.pl.design(fitted, show=False)
    fig = axes[0].figure
    n_terms = 5  # patient, chemistry, day, operator, log_umi
    heatmap = axes[4]
    values = [t for t in heatmap.texts if t.get_gid() == "association-value"]
    assert len(values) == n_terms**2
    assert heatmap.get_title() == "confounded (>= 0.95): none"
    assert [ax.get_title(loc="left") for ax in axes[:4]] == [
        "patient: 12 levels",
        "chemistry: 3 levels",
        "day: 6 levels",
        "operator: 4 levels",
    ]
    _png(fig, tmp_path, "design")
    # a second name for the chemistry groups is confounded with chemistry
    confounded = fitted.copy()
    confounded.obs["kit"] = confounded.obs["chemistry"].cat.rename_categories(lambda c: "kit " + c)
    heatmap = svp.pl.design(confounded, "~ (1|patient) + (1|chemistry) + (1|kit)", show=False)[-1]
    frames = [p for p in heatmap.patches if p.get_gid() == "confounded"]
    assert len(frames) == 2
    assert "confounded (>= 0.95): chemistry & kit" in heatmap.get_title()


def test_design_tells_nesting_from_confounding():
    adata = svp.datasets.simulate_counts(800, 5, seed=3)
    formula = "~ (1|patient/library) + (1|chemistry) + (1|day)"
    heatmap = svp.pl.design(adata, formula, show=False)[-1]
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
    axes = svp.pl.design(long_names, show=False)
    axes[0].figure.canvas.draw()
    for ax in axes[:4]:
        _no_overlap(ax.get_yticklabels())


# --- a donor-level covariate is not confounding -----------------------------------------


def _donor_design(n_subjects: int = 12, cells: int = 40) -> AnnData:
    """Subjects with an age and a gender (constant within subject), cells under two
    conditions at five time points: ~ age + gender + condition + (1|subject) + (1|hours)."""
    rng = np.random.default_rng(4)
    subject = np.repeat(np.arange(n_subjects), cells)
    n = len(subject)
    obs = pd.DataFrame(
        {
            "subject": pd.Categorical([f"S{s:02d}" for s in subject]),
            "age": rng.uniform(25, 80, n_subjects).round(1)[subject],
            "gender": np.array(["F", "M"])[np.arange(n_subjects) % 2][subject],
            "condition": np.tile(["ctrl", "stim"], n // 2),
            "hours": pd.Categorical(np.tile(["0", "2", "4", "8", "24"], n // 5 + 1)[:n]),
        },
        index=[f"c{i}" for i in range(n)],
    )
    return AnnData(X=rng.normal(size=(n, 3)), obs=obs)


DONOR_FORMULA = "~ age + gender + condition + (1|subject) + (1|hours)"


def test_design_calls_donor_level_covariates_fine():
    adata = _donor_design()
    axes = svp.pl.design(adata, DONOR_FORMULA, show=False)
    heatmap = axes[-1]
    title = heatmap.get_title().replace("\n", " ")
    assert "confounded (>= 0.95): none" in title
    assert "constant within a grouping factor, fine for a mixed model: age, gender per subject" in (
        title
    )
    assert not [p for p in heatmap.patches if p.get_gid() == "confounded"]
    assert len([p for p in heatmap.patches if p.get_gid() == "within"]) == 4  # 2 pairs, both cells


def test_design_still_flags_a_covariate_that_is_the_grouping():
    """A subject-level covariate with as many values as subjects' groups, coded as a
    category: the same groups as (1|subject), confounded."""
    adata = _donor_design()
    adata.obs["subject_code"] = adata.obs["subject"].astype(str).str.lower()
    heatmap = svp.pl.design(adata, "~ subject_code + (1|subject) + (1|hours)", show=False)[-1]
    assert "confounded (>= 0.95): subject & subject_code" in heatmap.get_title()
    # and a grouping factor whose levels a fixed effect tells apart: its variance is absorbed
    adata.obs["pair"] = pd.Categorical((adata.obs["subject"].cat.codes // 2).astype(str))
    heatmap = svp.pl.design(adata, "~ subject + (1|pair) + (1|hours)", show=False)[-1]
    assert "confounded (>= 0.95): pair & subject" in heatmap.get_title()


# --- ax= and save= ---------------------------------------------------------------------------


def test_multi_panel_plots_take_a_sequence_of_axes(fitted):
    gene = fitted.var_names[3]
    _, grid = plt.subplots(1, 5)
    assert svp.pl.gene(fitted, gene, ax=grid, show=False) == list(grid)
    assert grid[0].get_title().startswith("patient:")
    _, grid = plt.subplots(1, 5)
    axes = svp.pl.design(fitted, ax=list(grid), show=False)
    assert axes == list(grid) and grid[-1].get_title().startswith("confounded")
    _, pair = plt.subplots(1, 2)
    assert svp.pl.rho(fitted, ax=pair, show=False) == list(pair)
    _, ax = plt.subplots()
    assert svp.pl.percent_bars(fitted, ax=ax, show=False) is ax
    with pytest.raises(ValueError, match=r"svp\.pl\.gene draws 5 panel\(s\).*sequence of 5 Axes"):
        svp.pl.gene(fitted, gene, ax=ax, show=False)
    with pytest.raises(ValueError, match=r"svp\.pl\.design draws 5 panel\(s\)"):
        svp.pl.design(fitted, ax=list(grid[:3]), show=False)
    with pytest.raises(ValueError, match=r"svp\.pl\.rho draws 2 panel\(s\)"):
        svp.pl.rho(fitted, ax=ax, show=False)


@pytest.mark.parametrize(
    "name, call",
    [
        ("variance_partition", lambda a, **kw: svp.pl.variance_partition(a, **kw)),
        ("percent_bars", lambda a, **kw: svp.pl.percent_bars(a, n_top=5, **kw)),
        ("rho", lambda a, **kw: svp.pl.rho(a, **kw)),
        ("design", lambda a, **kw: svp.pl.design(a, **kw)),
        ("gene", lambda a, **kw: svp.pl.gene(a, a.var_names[0], **kw)),
    ],
)
def test_save_writes_into_scanpys_figdir(fitted, tmp_path, name, call):
    import scanpy as sc

    before = sc.settings.figdir, sc.settings.file_format_figs
    sc.settings.figdir, sc.settings.file_format_figs = tmp_path / "figures", "png"
    try:
        call(fitted, show=False, save=True)
        call(fitted, show=False, save="_mine.pdf")
    finally:
        sc.settings.figdir, sc.settings.file_format_figs = before
    written = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert written == [f"{name}.png", f"{name}_mine.pdf"]
    assert all(p.stat().st_size > 3_000 for p in (tmp_path / "figures").iterdir())


# --- duplicated names ------------------------------------------------------------------------


def test_plots_refuse_duplicated_gene_names(fitted):
    dup = fitted.copy()
    names = list(dup.var_names)
    names[1] = names[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dup.var_names = names
    for call in (
        lambda: svp.pl.gene(dup, names[0], show=False),
        lambda: svp.pl.percent_bars(dup, show=False),
        lambda: svp.pl.variance_partition(dup, show=False),
        lambda: svp.pl.rho(dup, show=False),
    ):
        with pytest.raises(ValueError, match=r"'gene0001'.*var_names_make_unique\(\)"):
            call()


# --- the adjusted gene plot ------------------------------------------------------------------


def test_conditional_effects_match_the_dense_formulas():
    """beta (GLS) and b = D Z' V^-1 (y - X beta), with V = Z D Z' + sigma^2 I."""
    from scvarpart.design import build_design
    from scvarpart.pl._partial import conditional_effects
    from scvarpart.suffstats.gram import centred_fixed, indicator_matrix

    adata = svp.datasets.crossed_example(n_cells=150, n_genes=1, seed=5)
    dz = build_design(svp.datasets.EXAMPLE_FORMULA, adata.obs)
    y = np.asarray(adata.X[:, 0], dtype=float)
    variances = {"patient": 0.7, "chemistry": 0.0, "day": 0.2, "operator": 0.05, "Residual": 1.1}
    beta, modes = conditional_effects(dz, y, variances)
    X, _ = centred_fixed(dz)
    Z = indicator_matrix(dz).toarray()
    d = np.concatenate([np.full(f.n_levels, variances[f.name]) for f in dz.factors])
    V = Z @ np.diag(d) @ Z.T + variances["Residual"] * np.eye(len(y))
    Vi = np.linalg.inv(V)
    beta_ref = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ y)
    b_ref = d * (Z.T @ Vi @ (y - X @ beta_ref))
    np.testing.assert_allclose(beta, beta_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.concatenate(list(modes.values())), b_ref, atol=1e-10)
    assert not modes["chemistry"].any()  # variance 0: every effect exactly 0


def _confounded_gene() -> AnnData:
    """Patients nested two by two in batches; a gene with batch effects and noise whose
    patient means are exactly equal within each batch: the patient variance is 0."""
    rng = np.random.default_rng(9)
    n_batch, per_patient = 6, 60
    patient = np.repeat(np.arange(2 * n_batch), per_patient)
    batch = patient // 2
    noise = rng.normal(size=len(patient))
    noise -= pd.Series(noise).groupby(patient).transform("mean").to_numpy()
    y = 3.0 + rng.normal(0, 1.5, n_batch)[batch] + noise
    obs = pd.DataFrame(
        {
            "patient": pd.Categorical([f"P{p:02d}" for p in patient]),
            "batch": pd.Categorical([f"B{b}" for b in batch]),
        },
        index=[f"c{i}" for i in range(len(y))],
    )
    flat = np.full(len(y), 1.5)  # a gene without estimates
    adata = AnnData(X=np.column_stack([y, rng.normal(size=len(y)), flat]), obs=obs)
    adata.var_names = ["confounded", "other", "flat"]
    svp.tl.variance_partition(
        adata, "~ (1|patient) + (1|batch)", batch="batch", signal="patient", method="REML"
    )
    return adata


def _box_means(ax) -> np.ndarray:
    return np.array([line.get_ydata()[0] for line in ax.lines if line.get_gid() == "level-mean"])


def test_gene_adjusted_view_removes_the_confounded_factor():
    adata = _confounded_gene()
    assert adata.varm["varpart_variance"].loc["confounded", "patient"] == 0
    marginal = svp.pl.gene(adata, "confounded", adjusted=False, show=False)[0]
    adjusted = svp.pl.gene(adata, "confounded", show=False)[0]
    assert marginal.get_title() == adjusted.get_title() == "patient: 0.0% of variance"
    spread = {
        view: np.ptp(_box_means(ax))
        for view, ax in [("marginal", marginal), ("adjusted", adjusted)]
    }
    assert len(_box_means(adjusted)) == 12  # one per patient
    assert spread["marginal"] > 1.0  # the batch effects show through
    assert spread["adjusted"] < 0.02 * spread["marginal"]  # flat: equal centres
    suptitle = adjusted.figure.get_suptitle()
    assert "adjusted" in suptitle and "other terms' fitted effects" in suptitle
    assert "marginal" in marginal.figure.get_suptitle()
    assert adjusted.get_ylabel() == "confounded, adjusted"


def test_gene_without_estimates_has_only_the_marginal_view():
    adata = _confounded_gene()
    with pytest.raises(ValueError, match=r"'flat' has no variance estimates \(.*adjusted=False"):
        svp.pl.gene(adata, "flat", show=False)
    assert len(svp.pl.gene(adata, "flat", adjusted=False, show=False)) == 2


def test_gene_reads_the_values_the_fit_read():
    """By default the layer of the fit: the adjusted boxes do not depend on X then."""
    adata = _confounded_gene()
    expected = _box_means(svp.pl.gene(adata, "confounded", show=False)[0])
    layered = adata.copy()
    layered.layers["lognorm"] = layered.X.copy()
    layered.X = np.zeros(layered.shape)
    svp.tl.variance_partition(
        layered, "~ (1|patient) + (1|batch)", layer="lognorm", method="REML", progress=False
    )
    got = _box_means(svp.pl.gene(layered, "confounded", show=False)[0])
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
