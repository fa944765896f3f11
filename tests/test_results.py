"""The result type: what a fit stores, how it is read back, and the tidy tables of svp.get."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scvarpart as svp
from scvarpart.tl._variance_partition import write_results
from scvarpart.varpart import VarPartResult, component_order

BATCH = ["chemistry", "day", "operator"]


@pytest.fixture(scope="module")
def fitted():
    adata = svp.datasets.crossed_example(n_cells=600, n_genes=30, seed=4)
    adata.X[:, 0] = 0.0  # a constant gene: no estimates
    svp.tl.variance_partition(
        adata,
        svp.datasets.EXAMPLE_FORMULA,
        batch=BATCH,
        signal="patient",
        method="REML",
        progress=False,
    )
    return adata


def _assert_same(a: VarPartResult, b: VarPartResult) -> None:
    for name in ("fractions", "variance", "per_gene", "beta", "beta_se"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_names=False)
    pd.testing.assert_frame_equal(a.errors, b.errors)
    assert a.components == b.components
    assert a.summary == b.summary


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_round_trip_through_files(fitted, tmp_path, suffix):
    res = svp.get.result(fitted)
    path = tmp_path / f"r{suffix}"
    (fitted.write_h5ad if suffix == ".h5ad" else fitted.write_zarr)(path)
    back = (ad.read_h5ad if suffix == ".h5ad" else ad.read_zarr)(path)
    read = svp.get.result(back)
    _assert_same(read, res)
    assert read.params["formula"] == svp.datasets.EXAMPLE_FORMULA
    assert read.batch == BATCH and read.signal == ["patient"]
    fields = svp.varpart.result.PER_GENE_FIELDS
    # the bootstrap's fields only with n_boot, the count model's only with a count family
    only = {"rho_boot_low", "rho_boot_high", "dispersion", "lambda"}
    assert set(fields) - set(read.per_gene) == only
    for field in read.per_gene:
        assert read.per_gene[field].dtype == fields[field], field


def test_errors_and_constant_genes(fitted):
    res = svp.get.result(fitted)
    gene = fitted.var_names[0]
    assert res.failed[0] and not res.failed[1:].any()
    assert gene in res.errors.index
    assert res.fractions.loc[gene].isna().all() and res.beta.loc[gene].isna().all()
    assert res.summary["n_failed"] == 1


def test_a_user_column_with_the_prefix_is_not_a_result(fitted):
    a = fitted.copy()
    a.var["varpart_notes"] = "mine"
    a.varm["varpart_mine"] = np.zeros((a.n_vars, 2))
    res = svp.get.result(a)
    assert "notes" not in res.per_gene and "varpart_notes" not in res.gene_table()
    svp.tl.variance_partition(a, "~ (1|patient) + (1|day)", method="REML", progress=False)
    assert (a.var["varpart_notes"] == "mine").all() and "varpart_mine" in a.varm
    assert "varpart_rho" not in a.var  # the earlier fit's rho is gone


def test_results_of_an_earlier_version_are_read(fitted):
    """Stored before result_keys and the fixed effects existed: the fixed set of keys."""
    a = fitted.copy()
    for k in ("varpart_beta", "varpart_beta_se"):
        del a.varm[k]
    del a.uns["varpart"]["result_keys"]
    res = svp.get.result(a)
    assert res.beta is None and res.per_gene.columns.tolist() == [
        "rho",
        "mean",
        "singular",
        "converged",
        "loglik",
    ]
    assert len(svp.get.varpart_df(a)) == a.n_vars * 6
    with pytest.raises(KeyError, match=r"without fixed effects.*fit again"):
        svp.get.beta_df(a)


def test_no_result_names_the_keys_found(fitted):
    a = fitted.copy()
    svp.tl.variance_partition(a, "~ (1|patient)", key_added="other", method="REML", progress=False)
    with pytest.raises(KeyError, match=r"No variance partition under key 'nope'.*'varpart'"):
        svp.get.varpart_df(a, key="nope")


def test_component_order_is_sortcols():
    frac = pd.DataFrame(
        {"a": [0.1, 0.2, 0.1], "b": [0.5, 0.4, 0.3], "c": [0.1, 0.2, 0.1], "Residual": 0.3}
    )
    # b has the largest median; a and c tie and keep the model's order; Residual last
    assert component_order(frac) == ["b", "a", "c", "Residual"]
    frac["d"] = np.nan  # a component without estimates goes after the others
    assert component_order(frac[["d", "a", "Residual"]]) == ["a", "d", "Residual"]


def test_varpart_df(fitted):
    res = svp.get.result(fitted)
    df = svp.get.varpart_df(fitted)
    order = res.component_order()
    assert df.columns.tolist() == ["gene", "component", "fraction", "variance"]
    assert len(df) == fitted.n_vars * len(order)
    assert list(df["component"].cat.categories) == order
    assert df["gene"].iloc[:: len(order)].tolist() == fitted.var_names.tolist()
    wide = df.pivot(index="gene", columns="component", values="fraction")
    np.testing.assert_array_equal(
        wide.loc[fitted.var_names, order].to_numpy(), fitted.varm["varpart"][order].to_numpy()
    )

    by = svp.get.varpart_df(fitted, sort_by="patient")
    genes = by["gene"].iloc[:: len(order)]
    patient = fitted.varm["varpart"]["patient"].loc[genes].to_numpy()
    fitted_genes = patient[~np.isnan(patient)]
    assert (np.diff(fitted_genes) <= 0).all() and np.isnan(patient[-1])

    two = svp.get.varpart_df(fitted, genes=[fitted.var_names[5], fitted.var_names[2]])
    assert two["gene"].unique().tolist() == [fitted.var_names[5], fitted.var_names[2]]
    with pytest.raises(KeyError, match="not in the result"):
        svp.get.varpart_df(fitted, genes=["no-such-gene"])
    with pytest.raises(KeyError, match="sort_by='nope'"):
        svp.get.varpart_df(fitted, sort_by="nope")


def test_rho_df(fitted):
    df = svp.get.rho_df(fitted)
    assert df.index.name == "gene"
    np.testing.assert_array_equal(df["rho"], fitted.var.loc[df.index, "varpart_rho"])
    var = fitted.varm["varpart_variance"].loc[df.index]
    np.testing.assert_allclose(df["batch_variance"], var[BATCH].sum(axis=1, min_count=1))
    np.testing.assert_allclose(df["signal_variance"], var["patient"])
    ranked = svp.get.batch_dominated(fitted)
    assert set(df.index[df["batch_dominated"]]) == set(ranked.index)
    assert df["rho"].dropna().is_monotonic_decreasing  # largest (inf) first
    assert df["rho"].iloc[-1:].isna().all()  # the gene without estimates last

    a = fitted.copy()
    svp.tl.variance_partition(a, "~ (1|patient) + (1|day)", method="REML", progress=False)
    with pytest.raises(KeyError, match="No rho under key 'varpart': fit with batch= and signal="):
        svp.get.rho_df(a)


def test_beta_df(fitted):
    df = svp.get.beta_df(fitted)
    assert df.columns.tolist() == ["gene", "coefficient", "estimate", "se"]
    assert list(df["coefficient"].cat.categories) == ["(Intercept)", "log_umi"]
    wide = df.pivot(index="gene", columns="coefficient", values="estimate")
    np.testing.assert_array_equal(
        wide.loc[fitted.var_names].to_numpy(), fitted.varm["varpart_beta"].to_numpy()
    )
    ok = df["gene"] != fitted.var_names[0]
    assert (df.loc[ok, "se"] > 0).all() and df.loc[~ok, "se"].isna().all()


def test_concat_of_gene_chunks_is_the_whole_result(fitted):
    """Fits of chunks of genes, combined, are the fit of all genes, bit for bit (what
    `scvarpart merge` relies on)."""
    obs = fitted.obs
    Y = fitted.X
    whole = svp.lmm.fit(
        svp.datasets.EXAMPLE_FORMULA, Y, obs=obs, var_names=fitted.var_names, method="REML"
    )
    parts = [
        svp.lmm.fit(
            svp.datasets.EXAMPLE_FORMULA,
            Y[:, a:b],
            obs=obs,
            var_names=fitted.var_names[a:b],
            method="REML",
        )
        for a, b in ((0, 7), (7, 20), (20, 30))
    ]
    _assert_same(VarPartResult.concat(parts), whole)
    other = svp.lmm.fit("~ (1|patient)", Y[:, :3], obs=obs, var_names=fitted.var_names[:3])
    with pytest.raises(ValueError, match="different analyses"):
        VarPartResult.concat([parts[0], other])


def test_concat_adjusts_the_qvalues_over_all_genes(fitted):
    """Each chunk's q-values are over its own genes: the combined result's are the
    Benjamini-Hochberg q-values of all p-values, those of one fit of every gene."""
    from scvarpart.lmm import lrt
    from scvarpart.varpart.multiple import benjamini_hochberg

    assert lrt.benjamini_hochberg is benjamini_hochberg  # one implementation
    formula, obs, Y = "~ log_umi + (1|patient) + (1|day)", fitted.obs, fitted.X

    def fit(a: int, b: int, **kw) -> VarPartResult:
        genes = fitted.var_names[a:b]
        return svp.lmm.fit(formula, Y[:, a:b], obs=obs, var_names=genes, method="REML", **kw)

    whole = fit(0, 30, test="lrt")
    parts = [fit(a, b, test="lrt") for a, b in ((0, 7), (7, 20), (20, 30))]
    combined = VarPartResult.concat(parts)
    _assert_same(combined, whole)
    for name in ("lrt", "pvalue", "qvalue"):
        pd.testing.assert_frame_equal(
            getattr(combined, name), getattr(whole, name), check_exact=True
        )
    assert np.isnan(combined.qvalue.iloc[0]).all()  # the constant gene: no test
    assert not pd.concat([p.qvalue for p in parts]).equals(whole.qvalue)
    # with and without tests: not one analysis
    with pytest.raises(ValueError, match=r"different analyses \(tests differ\)"):
        VarPartResult.concat([parts[0], fit(7, 30)])
    with pytest.raises(ValueError, match=r"different analyses \(test, tests differ\)"):
        VarPartResult.concat([fit(0, 7), parts[1].with_params(test="lrt")])


def test_concat_keeps_the_bootstrap_intervals_and_refuses_other_bootstrap_parameters(fitted):
    """Each gene's replicates depend on the seed and its name only: chunks' intervals are
    the whole fit's; n_boot, seed and ci are analysis parameters, which must agree."""
    formula = "~ log_umi + (1|patient) + (1|day)"

    def fit(a: int, b: int, **kw) -> VarPartResult:
        return svp.tl.variance_partition(
            fitted[:, a:b].copy(), formula, method="REML", batch="day", signal="patient",
            inplace=False, progress=False, **kw,
        )  # fmt: skip

    boot = {"n_boot": 20, "seed": 1, "ci": 0.9}
    whole = fit(0, 6, **boot)
    combined = VarPartResult.concat([fit(0, 2, **boot), fit(2, 6, **boot)])
    for name in ("boot_low", "boot_high", "per_gene"):
        pd.testing.assert_frame_equal(
            getattr(combined, name), getattr(whole, name), check_exact=True
        )
    assert combined.params["n_boot"] == 20
    first = fit(0, 2, **boot)
    with pytest.raises(ValueError, match=r"different analyses \(seed differ\)"):
        VarPartResult.concat([first, fit(2, 6, **{**boot, "seed": 2})])
    with pytest.raises(ValueError, match=r"different analyses \(ci differ\)"):
        VarPartResult.concat([first, fit(2, 6, **{**boot, "ci": 0.95})])
    with pytest.raises(ValueError, match=r"different analyses \(n_boot, seed, ci differ\)"):
        VarPartResult.concat([first, fit(2, 6)])


def test_subset_and_misaligned_tables(fitted):
    res = svp.get.result(fitted)
    genes = list(fitted.var_names[[4, 1]])
    sub = res.subset(genes)
    assert sub.genes.tolist() == genes and sub.beta.index.tolist() == genes
    with pytest.raises(ValueError, match="variance table is not indexed"):
        VarPartResult(res.fractions, res.variance.iloc[::-1], res.per_gene)
    with pytest.raises(ValueError, match="not indexed by this object's genes"):
        write_results(fitted[:, ::-1].copy(), res, "varpart")
