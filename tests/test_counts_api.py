"""Count models as users call them: svp.tl.variance_partition(family=...), files, the CLI."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from test_cli import cli, ok

import scvarpart as svp
from scvarpart.design import DesignError

FORMULA = "~ (1|patient) + (1|chemistry) + (1|day) + (1|operator)"
ROLES = {"batch": ["chemistry", "day", "operator"], "signal": "patient"}


@pytest.fixture(scope="module")
def cells():
    """1,200 simulated cells, 400 genes' library sizes, the 6 most expressed genes kept."""
    adata = svp.datasets.simulate_counts(n_cells=1200, n_genes=400, seed=5, counts=True)
    counts = adata.layers["counts"]
    adata.obs["log_sf"] = np.log(np.asarray(counts.sum(axis=1)).ravel())
    top = np.argsort(-np.asarray((counts > 0).sum(axis=0)).ravel())[:6]
    return adata[:, np.sort(top)].copy()


@pytest.fixture(scope="module")
def fitted(cells):
    adata = cells.copy()
    svp.tl.variance_partition(adata, FORMULA, family="nb", layer="counts", offset="log_sf", **ROLES)
    return adata


def test_results_land_where_gaussian_ones_do(cells, fitted):
    params = fitted.uns["varpart"]["params"]
    assert params["family"] == "nb" and params["offset"] == "log_sf"
    assert params["approximation"] == "lognormal" and params["method"] == "Laplace"
    fractions = fitted.varm["varpart"]
    assert list(fractions.columns) == ["patient", "chemistry", "day", "operator", "Residual"]
    np.testing.assert_allclose(fractions.sum(axis=1), 1.0, atol=1e-12)
    assert (fitted.var["varpart_dispersion"] > 0).all()
    assert {"varpart_rho", "varpart_lambda", "varpart_loglik"} <= set(fitted.var.columns)
    assert list(fitted.varm["varpart_distribution"].columns) == ["lognormal", "trigamma"]
    # the same numbers as the array-level fit
    design = svp.design.build_design(FORMULA, cells.obs, residual=False)
    direct = svp.glmm.fit_counts(
        design, cells.layers["counts"], family="nb", offset=cells.obs["log_sf"].to_numpy(),
        var_names=cells.var_names, **ROLES,
    )  # fmt: skip
    pd.testing.assert_frame_equal(fitted.varm["varpart"], direct.fractions)
    # tables and plots read them as any fit
    tidy = svp.get.varpart_df(fitted)
    assert set(tidy["component"]) == set(fractions.columns)
    assert len(svp.get.rho_df(fitted)) == fitted.n_vars
    svp.pl.variance_partition(fitted, show=False)


def test_results_round_trip_through_h5ad(fitted, tmp_path):
    fitted.write_h5ad(tmp_path / "x.h5ad")
    back = ad.read_h5ad(tmp_path / "x.h5ad")
    a = svp.varpart.VarPartResult.read(fitted)
    b = svp.varpart.VarPartResult.read(back)
    pd.testing.assert_frame_equal(a.distribution, b.distribution)
    pd.testing.assert_frame_equal(a.per_gene, b.per_gene)
    assert b.params["family"] == "nb"


def test_default_offset_is_the_log_library_size(cells):
    cells = cells[np.asarray(cells.layers["counts"].sum(axis=1)).ravel() > 0].copy()
    result = svp.tl.variance_partition(
        cells, FORMULA, family="poisson", layer="counts", inplace=False, ci=None
    )
    assert result.params["offset"] == "log_library_size"
    counts = cells.layers["counts"]
    offset = np.log(np.asarray(counts.sum(axis=1)).ravel())
    design = svp.design.build_design(FORMULA, cells.obs, residual=False)
    direct = svp.glmm.fit_counts(
        design, counts, family="poisson", offset=offset, var_names=cells.var_names, ci=None
    )
    pd.testing.assert_frame_equal(result.fractions, direct.fractions)


def test_trigamma_approximation_changes_only_the_residual(cells, fitted):
    other = svp.tl.variance_partition(
        cells, FORMULA, family="nb", layer="counts", offset="log_sf", approximation="trigamma",
        inplace=False, ci=None, **ROLES,
    )  # fmt: skip
    mine = svp.varpart.VarPartResult.read(fitted)
    pd.testing.assert_series_equal(
        other.variance["Residual"], mine.distribution["trigamma"], check_names=False
    )
    terms = ["patient", "chemistry", "day", "operator"]
    pd.testing.assert_frame_equal(other.variance[terms], mine.variance[terms])


@pytest.mark.parametrize(
    "options, match",
    [
        ({"method": "REML"}, "method='REML'"),
        ({"test": "lrt"}, "test='lrt'"),
        ({"n_boot": 5}, "n_boot="),
        ({"offset": "nope"}, "offset='nope' is not a column of obs"),
        ({"approximation": "delta"}, "approximation='delta'"),
        ({"family": "binomial"}, "family='binomial'"),
    ],
)
def test_options_are_checked_before_any_data(cells, options, match):
    kwargs = {"family": "nb", "layer": "counts", **options}
    with pytest.raises((ValueError, DesignError), match=match):
        svp.tl.variance_partition(cells, FORMULA, **kwargs)
    assert "varpart" not in cells.uns


def test_gaussian_with_an_offset_is_refused(cells):
    with pytest.raises(ValueError, match="offset='log_sf' is for count models"):
        svp.tl.variance_partition(cells, FORMULA, offset="log_sf")


def test_log_normalised_values_are_refused_naming_the_gene(cells):
    with pytest.raises(ValueError, match=r"non-negative whole numbers.*gene '"):
        svp.tl.variance_partition(cells, FORMULA, family="nb")  # X is log-normalised


def test_a_cell_without_counts_is_named(cells):
    adata = cells.copy()
    keep = np.ones(adata.n_obs)
    keep[3] = 0
    adata.layers["counts"] = sp.diags(keep) @ adata.layers["counts"]
    with pytest.raises(ValueError, match=rf"library size 0.*'{adata.obs_names[3]}'"):
        svp.tl.variance_partition(adata, FORMULA, family="poisson", layer="counts")


def test_slopes_are_refused_before_fitting(cells):
    with pytest.raises(ValueError, match=r"random term 'patient\.pct_mito'"):
        svp.tl.variance_partition(
            cells, "~ (1|chemistry) + (0 + pct_mito|patient)", family="nb", layer="counts"
        )


def test_an_observation_level_effect_is_allowed_for_counts(cells):
    adata = cells[:300].copy()
    adata.obs["cell"] = adata.obs_names
    result = svp.tl.variance_partition(
        adata[:, :2], "~ (1|patient) + (1|cell)", family="poisson", layer="counts",
        offset="log_sf", inplace=False, ci=None,
    )  # fmt: skip
    assert result.variance["cell"].notna().all()
    with pytest.raises(DesignError, match="different level for every observation"):
        svp.tl.variance_partition(adata, "~ (1|patient) + (1|cell)")


def test_per_cell_type(cells):
    adata = cells.copy()
    adata.obs["cell_type"] = np.where(np.arange(adata.n_obs) % 2, "T", "B")
    svp.tl.variance_partition(
        adata, FORMULA, family="poisson", layer="counts", offset="log_sf", groupby="cell_type",
        ci=None, **ROLES,
    )  # fmt: skip
    table = svp.get.groups(adata)
    assert list(table["status"]) == ["fitted", "fitted"]
    tidy = svp.get.varpart_df(adata, group="T")
    assert set(tidy["component"]) == {"patient", "chemistry", "day", "operator", "Residual"}


def test_file_and_command_line_give_the_api_fit(cells, fitted, tmp_path):
    path = tmp_path / "cells.h5ad"
    cells.write_h5ad(path)
    from_file = svp.tl.variance_partition_file(
        path, FORMULA, family="nb", layer="counts", offset="log_sf", progress=False, **ROLES
    )
    pd.testing.assert_frame_equal(from_file.varm["varpart"], fitted.varm["varpart"])
    model = ["--formula", FORMULA, "--batch", "chemistry,day,operator", "--signal", "patient"]
    count = ["--family", "nb", "--layer", "counts", "--offset", "log_sf", "--quiet"]
    ok(cli("fit", path, *model, *count, "-o", tmp_path / "out.h5ad"))
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    pd.testing.assert_frame_equal(out.varm["varpart"], fitted.varm["varpart"])
    assert out.uns["varpart"]["params"]["family"] == "nb"
    chunks = []
    for i in (1, 2):
        chunks.append(tmp_path / f"c{i}.h5ad")
        ok(cli("fit", path, *model, *count, "--genes", f"{i}/2", "-o", chunks[-1]))
    ok(cli("merge", *chunks, "--into", path, "-o", tmp_path / "merged.h5ad"))
    merged = ad.read_h5ad(tmp_path / "merged.h5ad")
    pd.testing.assert_frame_equal(merged.varm["varpart"], fitted.varm["varpart"])
    refused = cli("fit", path, *model, "--offset", "log_sf", "-o", tmp_path / "no.h5ad")
    assert refused.returncode == 2 and "are for count models" in refused.stderr


def test_a_plan_sets_the_count_model(cells, fitted, tmp_path):
    path = tmp_path / "cells.h5ad"
    cells.write_h5ad(path)
    plan = tmp_path / "plan.toml"
    plan.write_text(
        f'formula = "{FORMULA}"\nbatch = ["chemistry", "day", "operator"]\nsignal = ["patient"]\n'
        'layer = "counts"\nfamily = "nb"\noffset = "log_sf"\n'
    )
    ok(cli("fit", path, "--plan", plan, "--quiet", "-o", tmp_path / "out.h5ad"))
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    pd.testing.assert_frame_equal(out.varm["varpart"], fitted.varm["varpart"])
    plan.write_text(f'formula = "{FORMULA}"\noffset = "log_sf"\n')
    refused = cli("fit", path, "--plan", plan, "-o", tmp_path / "no.h5ad")
    assert refused.returncode != 0 and "for count models" in refused.stderr


def test_tools_built_on_the_gaussian_fit_refuse_a_count_fit(fitted):
    with pytest.raises(ValueError, match=r"count model.*key_added"):
        svp.tl.diagnose(fitted)
    with pytest.raises(ValueError, match="count model"):
        svp.tl.remove_batch_effects(fitted)


def test_gene_plot_of_a_count_fit_is_on_the_log_scale(cells, fitted):
    """``svp.pl.gene`` of a count fit: log rates, less the count model's effects.

    The adjusted panel of the gene's largest term, averaged by its levels, follows its
    conditional modes from the fit with BLUPs, and the marginal panels are
    ``log((y + 1/2) / size factor)``, not the counts.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scvarpart.design import build_design
    from scvarpart.pl._partial import count_partial_residuals, log_rates

    with_blups = cells.copy()
    svp.tl.variance_partition(
        with_blups, FORMULA, family="nb", layer="counts", offset="log_sf",
        store_blups=True, **ROLES,
    )  # fmt: skip
    res = svp.get.result(with_blups)
    gene = res.variance["patient"].idxmax()
    design = build_design(FORMULA, cells.obs)
    y = np.asarray(cells[:, gene].layers["counts"].todense(), dtype=float).ravel()[design.keep]
    offset = cells.obs["log_sf"].to_numpy()[design.keep]
    panels = count_partial_residuals(design, y, offset, "nb")
    patient = design.factors[0]  # the gene's largest term (log rates of sparse counts
    # are noisy: a term of three levels and a small variance need not show its modes)
    means = pd.Series(panels["patient"]).groupby(patient.codes).mean()
    modes = res.blups["patient"].loc[gene].to_numpy()[means.index]
    assert np.corrcoef(means, modes)[0, 1] > 0.9
    axes = svp.pl.gene(fitted, gene, show=False)
    assert all(a.get_ylabel() == f"{gene}, log rate, adjusted" for a in axes)
    marginal = svp.pl.gene(fitted, gene, adjusted=False, show=False)
    means = [line.get_ydata()[0] for line in marginal[0].lines if line.get_gid() == "level-mean"]
    z = pd.Series(log_rates(y, offset)).groupby(design.factors[0].codes).mean()
    np.testing.assert_allclose(sorted(means), sorted(z), rtol=1e-12)
    plt.close("all")
