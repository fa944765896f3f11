"""svp.tl.diagnose, svp.pl.qq, svp.get.diagnostics and the math behind them."""

from __future__ import annotations

import warnings

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest

import scvarpart as svp
from scvarpart.varpart.diagnostics import normal_scores, qq_envelope

matplotlib.use("Agg")

BATCH = ["chemistry", "day", "operator"]


def _fitted(n_cells=1500, n_genes=30, seed=1):
    return _fit(svp.datasets.crossed_example(n_cells=n_cells, n_genes=n_genes, seed=seed))


def _fit(adata):
    """The example model fitted by REML into ``adata`` (returned)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svp.tl.variance_partition(
            adata, svp.datasets.EXAMPLE_FORMULA, batch=BATCH, signal="patient",
            method="REML", progress=False,
        )  # fmt: skip
    return adata


@pytest.fixture(scope="module")
def fitted():
    return _fitted()


def test_standardised_blups_are_standard_normal_under_the_model():
    """Simulated from the model: pooled over genes, the standardised BLUPs of the
    12 patients have mean 0 and variance 1."""
    adata = _fitted(n_cells=2000, n_genes=120, seed=3)
    out = svp.tl.diagnose(adata, leave_out=[], inplace=False)
    std = out["blups"].query("term == 'patient'")["std_blup"].dropna()
    assert len(std) > 500
    assert abs(std.mean()) < 0.1
    assert 0.85 < std.var() < 1.15


def test_a_shifted_level_is_the_influential_one(fitted):
    """One day's cells shifted in one gene: leaving that day out moves its batch
    fraction most, and the diagnosis names it."""
    adata = fitted.copy()
    day = adata.obs["day"].cat.categories[2]
    rows = (adata.obs["day"] == day).to_numpy()
    X = np.asarray(adata.X).copy()
    X[rows, 0] += 3.0
    adata.X = X
    _fit(adata)
    svp.tl.diagnose(adata, genes=adata.var_names[:3], leave_out="day")
    gene = adata.var_names[0]
    assert adata.var.loc[gene, "varpart_diagnostics_influential"] == f"day={day}"
    assert adata.var.loc[gene, "varpart_diagnostics_max_change"] > 0.3
    # genes not checked: NaN and empty
    assert adata.var["varpart_diagnostics_max_change"].iloc[3:].isna().all()
    assert (adata.var["varpart_diagnostics_influential"].iloc[3:] == "").all()


def test_leave_one_level_out_refits_are_fits_without_those_cells(fitted):
    out = svp.tl.diagnose(fitted, genes=fitted.var_names[:4], leave_out="operator", inplace=False)
    influence = out["influence"]
    level = influence["level"].iloc[0]
    keep = (fitted.obs["operator"].astype(str) != level).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = svp.tl.variance_partition(
            fitted[keep, :4].copy(), svp.datasets.EXAMPLE_FORMULA, batch=BATCH,
            signal="patient", method="REML", ci=None, progress=False, inplace=False,
        )  # fmt: skip
    rows = influence[influence["level"] == level].set_index("gene")
    # the same optimum (see the statistics test below) to the optimiser's tolerance
    pd.testing.assert_frame_equal(
        rows[direct.components], direct.fractions, check_names=False, rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(rows["rho"], direct.per_gene["rho"], rtol=1e-6)
    # one row per gene and level of the factor
    assert len(influence) == 4 * fitted.obs["operator"].nunique()


def test_results_are_stored_and_round_trip(fitted, tmp_path):
    adata = fitted.copy()
    svp.tl.diagnose(adata, genes=adata.var_names[:5])
    path = tmp_path / "d.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    for table in ("influence", "blups", "residuals"):
        pd.testing.assert_frame_equal(
            svp.get.diagnostics(back, table), svp.get.diagnostics(adata, table)
        )
    cols = [c for c in adata.var.columns if c.startswith("varpart_diagnostics_")]
    assert cols == [
        "varpart_diagnostics_max_std_blup",
        "varpart_diagnostics_max_change",
        "varpart_diagnostics_influential",
        "varpart_diagnostics_batch_range",
        "varpart_diagnostics_sigma",
        "varpart_diagnostics_skewness",
        "varpart_diagnostics_excess_kurtosis",
        "varpart_diagnostics_fitted_trend",
        "varpart_diagnostics_zero_fraction",
        "varpart_diagnostics_max_var_ratio",
    ]
    pd.testing.assert_frame_equal(back.var[cols], adata.var[cols])
    assert back.uns["varpart_diagnostics"]["params"]["leave_out"].tolist() == BATCH
    # the stored fit is untouched
    pd.testing.assert_frame_equal(back.varm["varpart"], fitted.varm["varpart"])


def test_bad_requests_are_refused_before_any_refit(fitted):
    with pytest.raises(KeyError, match="not a column of obs"):
        svp.tl.diagnose(fitted.copy(), leave_out="patient:day")
    with pytest.raises(KeyError, match=r"not in adata\.var_names"):
        svp.tl.diagnose(fitted.copy(), genes=["nope"])
    bare = svp.datasets.crossed_example(n_cells=200, n_genes=3, seed=1)
    with pytest.raises(KeyError):
        svp.tl.diagnose(bare)
    with pytest.raises(KeyError, match=r"run svp\.tl\.diagnose"):
        svp.pl.qq(fitted, fitted.var_names[0], show=False)
    with pytest.raises(KeyError, match=r"run svp\.tl\.diagnose"):
        svp.get.diagnostics(fitted)


def test_qq_draws_a_panel_per_term_with_its_band(fitted):
    adata = fitted.copy()
    svp.tl.diagnose(adata, genes=adata.var_names[:2], leave_out=[])
    axes = svp.pl.qq(adata, adata.var_names[0], show=False)
    assert [a.get_title() for a in axes] == ["patient", "chemistry", "day", "operator"]
    one = svp.pl.qq(adata, adata.var_names[0], terms="patient", show=False)
    assert len(one) == 1 and len(one[0].collections) >= 2  # the band and the points
    with pytest.raises(KeyError, match="available"):
        svp.pl.qq(adata, adata.var_names[0], terms="donor", show=False)


def test_the_qq_band_holds_standard_normal_samples_at_its_level():
    low, high = qq_envelope(12, n_sim=4000, level=0.9, seed=1)
    rng = np.random.default_rng(7)
    inside = [
        ((np.sort(s) >= low) & (np.sort(s) <= high)).mean() for s in rng.normal(size=(500, 12))
    ]
    assert 0.87 < np.mean(inside) < 0.93  # pointwise: each order statistic 90%
    assert np.all(np.diff(normal_scores(12)) > 0) and abs(normal_scores(12).sum()) < 1e-12


def _residuals_by_hand(adata, gene):
    """Conditional residuals of one gene from the stored fit with BLUPs, directly."""
    fit = svp.tl.variance_partition(
        adata, svp.datasets.EXAMPLE_FORMULA, batch=BATCH, signal="patient", method="REML",
        ci=None, store_blups=True, progress=False, inplace=False,
    )  # fmt: skip
    obs = adata.obs
    X = np.column_stack([np.ones(adata.n_obs), obs["log_umi"].to_numpy(float)])
    fitted = X @ fit.beta.loc[gene].to_numpy()
    for term in ["patient", "chemistry", "day", "operator"]:
        b = fit.blups[term].loc[gene]
        fitted += b.reindex(obs[term].astype(str)).to_numpy()
    return np.asarray(adata[:, gene].X).ravel() - fitted


def test_residual_checks_are_the_moments_and_bartlett_tests_of_the_residuals(fitted):
    import scipy.stats as st

    out = svp.tl.diagnose(fitted, genes=fitted.var_names[:3], leave_out=[], inplace=False)
    for gene in fitted.var_names[:3]:
        r = _residuals_by_hand(fitted, gene)
        row = out["summary"].loc[gene]
        np.testing.assert_allclose(row["sigma"], np.sqrt(np.mean(r**2)), rtol=1e-9)
        np.testing.assert_allclose(row["skewness"], st.skew(r), rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(row["excess_kurtosis"], st.kurtosis(r), rtol=1e-7, atol=1e-12)
        y = np.asarray(fitted[:, gene].X).ravel()
        np.testing.assert_allclose(
            row["fitted_trend"], np.corrcoef(np.abs(r), y - r)[0, 1], rtol=1e-7
        )
        for term in ["patient", "day"]:
            groups = [
                r[(fitted.obs[term] == lv).to_numpy()] for lv in fitted.obs[term].cat.categories
            ]
            expected = st.bartlett(*groups)
            got = out["residuals"].query("gene == @gene and term == @term").iloc[0]
            np.testing.assert_allclose(got["bartlett"], expected.statistic, rtol=1e-8)
            np.testing.assert_allclose(got["pvalue"], expected.pvalue, rtol=1e-6, atol=1e-300)


def test_residual_checks_flag_zero_inflated_and_heteroscedastic_genes():
    adata = svp.datasets.crossed_example(n_cells=3000, n_genes=12, seed=2)
    X = np.asarray(adata.X).copy()
    rng = np.random.default_rng(0)
    X[rng.uniform(size=adata.n_obs) < 0.6, 0] = 0  # zero-inflated
    day = (adata.obs["day"] == adata.obs["day"].cat.categories[0]).to_numpy()
    X[day, 1] += rng.normal(0, 3, day.sum())  # one day much noisier
    adata.X = X
    _fit(adata)
    out = svp.tl.diagnose(adata, leave_out=[], inplace=False)
    summary, by_factor = out["summary"], out["residuals"].set_index(["gene", "term"])
    zero, noisy, rest = adata.var_names[0], adata.var_names[1], adata.var_names[2:]
    assert summary.loc[zero, "zero_fraction"] > 0.5
    assert summary.loc[zero, "skewness"] > 5 * summary.loc[rest, "skewness"].abs().max()
    assert by_factor.loc[(noisy, "day"), "pvalue"] < 1e-10
    assert by_factor.loc[(noisy, "day"), "var_ratio"] > 5
    assert (summary.loc[rest, "max_var_ratio"] < 3).all()


def test_diagnose_on_a_backed_file_equals_in_memory(fitted, tmp_path):
    path = tmp_path / "f.h5ad"
    sparse = fitted.copy()
    import scipy.sparse as sp_

    sparse.X = sp_.csr_matrix(np.asarray(sparse.X))
    sparse.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    genes = fitted.var_names[:3]
    got = svp.tl.diagnose(backed, genes=genes, leave_out="chemistry", inplace=False)
    expected = svp.tl.diagnose(sparse, genes=genes, leave_out="chemistry", inplace=False)
    for name in ("summary", "influence", "residuals", "blups"):
        pd.testing.assert_frame_equal(got[name], expected[name], rtol=1e-10)
    backed.file.close()


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_statistics_without_a_level_are_those_of_the_other_cells(fitted, method, monkeypatch):
    """One pass gives every level's cross-products; the whole's minus a level's fit to
    the same optimum as the cells without that level, fitted directly. Both with the
    thorough search: the default one misses a boundary optimum on one of these genes."""
    import scvarpart.lmm.dense

    monkeypatch.setattr(scvarpart.lmm.dense, "_THOROUGH_PER_LEVEL", 10**9)
    from scvarpart.lmm.genes import group_statistics
    from scvarpart.suffstats.leave_out import group_cross_products
    from scvarpart.tl._refit import fitted_design

    design = fitted_design(fitted, fitted.uns["varpart"]["params"], None)
    day = next(f for f in design.factors if f.name == "day")
    groups = [np.ones(design.n_obs, dtype=bool), *(day.codes == c for c in range(3))]
    genes = np.arange(6)
    cross = group_cross_products(fitted.X, design, groups, genes=genes, chunk_rows=97)
    import scipy.sparse as sp_

    on_sparse = group_cross_products(sp_.csr_matrix(fitted.X), design, groups, genes=genes)
    for a, b in zip(cross, on_sparse, strict=True):
        np.testing.assert_allclose(a.AtY, b.AtY, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(a.yty, b.yty, rtol=1e-12)
    for code in range(3):
        stats = group_statistics(cross[0] - cross[1 + code], design, fitted.var_names[genes])
        fast = svp.lmm.fit_stats(stats, method=method, ci=None)
        keep = day.codes != code
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            direct = svp.lmm.fit(
                svp.datasets.EXAMPLE_FORMULA, fitted.X[keep][:, genes], obs=fitted.obs[keep],
                method=method, ci=None,
            )  # fmt: skip
        np.testing.assert_allclose(fast.per_gene["loglik"], direct.per_gene["loglik"], rtol=1e-10)
        np.testing.assert_allclose(fast.fractions, direct.fractions, atol=1e-6)


def test_the_compiled_residual_pass_equals_the_array_code(fitted, monkeypatch):
    """Random intercepts take the compiled loop; designs with slopes the array code: both
    give the same checks (here the array code forced on the same design), in blocks of
    any size, dense or sparse."""
    import scipy.sparse as sp_

    import scvarpart.suffstats.residuals as R

    genes = fitted.var_names[:5]
    compiled = svp.tl.diagnose(fitted, genes=genes, leave_out=[], inplace=False)
    monkeypatch.setattr(R, "_compiled_block", lambda *args: None)
    arrays = svp.tl.diagnose(fitted, genes=genes, leave_out=[], inplace=False)
    pd.testing.assert_frame_equal(compiled["summary"], arrays["summary"], rtol=1e-10)
    pd.testing.assert_frame_equal(compiled["residuals"], arrays["residuals"], rtol=1e-8)
    monkeypatch.undo()
    sparse = fitted.copy()
    sparse.X = sp_.csr_matrix(np.asarray(sparse.X))
    on_sparse = svp.tl.diagnose(sparse, genes=genes, leave_out=[], inplace=False)
    pd.testing.assert_frame_equal(compiled["summary"], on_sparse["summary"], rtol=1e-10)


def test_the_compiled_pass_over_sparse_and_dense_rows_gives_the_same_sums():
    """The CSR kernel fills each row from its stored values, the dense one reads it
    whole: each sum adds the same terms in the same order, so they agree bit for bit,
    with rows dropped, stored zeros and a permuted subset of the columns as genes."""
    import scipy.sparse as sp

    from scvarpart.suffstats._residual_kernels import residual_sums_csr, residual_sums_dense

    rng = np.random.default_rng(4)
    n, n_columns, G, p = 600, 90, 50, 3
    A = sp.random(n, n_columns, density=0.2, format="csr", random_state=4)
    A.data = np.round(A.data * 4) / 4  # some stored zeros
    columns = rng.permutation(n_columns)[:G].astype(np.int64)
    gene_of = np.full(n_columns, -1, dtype=np.int64)
    gene_of[columns] = np.arange(G)
    X = rng.normal(size=(n, p))
    codes = np.column_stack([rng.integers(7, size=n), 7 + rng.integers(4, size=n)])
    beta_t, blups_t = rng.normal(size=(p, G)), rng.normal(size=(11, G))
    start, stop = 40, n - 30
    obs = np.where(rng.random(stop - start) < 0.1, -1, np.arange(start, stop))
    args = (X, beta_t, codes.astype(np.int64), blups_t, 11)
    sparse = residual_sums_csr(
        A.indptr, A.indices, A.data, start, stop, obs.astype(np.int64), gene_of, *args
    )
    dense = residual_sums_dense(A.toarray(), start, stop, obs.astype(np.int64), columns, *args)
    for a, b in zip(sparse, dense, strict=True):
        np.testing.assert_array_equal(a, b)
