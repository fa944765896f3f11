"""svp.tl.remove_batch_effects and its out-of-core twin, against simulated truth."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scvarpart as svp
from scvarpart.design import build_design
from scvarpart.design.predict import Effects

BATCH = ["chemistry", "day", "operator"]
FORMULA = svp.datasets.EXAMPLE_FORMULA


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _fit(adata, **kwargs):
    options = {"batch": BATCH, "signal": "patient", "method": "REML", "progress": False}
    _quiet(svp.tl.variance_partition, adata, FORMULA, **{**options, **kwargs})
    return adata


def _dense(m):
    return m.toarray() if sp.issparse(m) else np.asarray(m)


@pytest.fixture(scope="module")
def corrected():
    """The example (known variances), fitted and corrected, then refitted corrected."""
    adata = svp.datasets.crossed_example(n_cells=4000, n_genes=40, seed=3)
    _quiet(
        svp.tl.remove_batch_effects, adata, FORMULA, terms=BATCH, signal="patient",
        method="REML", batch_layer="varpart_batch", ci=0.95,
    )  # fmt: skip
    return _fit(adata, layer="varpart_corrected", key_added="after", ci=None)


def test_refit_of_the_corrected_values_has_no_batch_and_the_same_signal(corrected):
    before, after = corrected.varm["varpart_variance"], corrected.varm["after_variance"]
    batch_before = corrected.varm["varpart"][BATCH].sum(axis=1)
    batch_after = corrected.varm["after"][BATCH].sum(axis=1)
    assert batch_before.median() > 0.05  # there was batch to remove
    assert batch_after.max() < 1e-3
    # the signal and the residual stay, within their standard errors (12 patients: the
    # patient variance is known to about 40%)
    se = corrected.varm["varpart_variance_se"]
    for term in ("patient", "Residual"):
        change = (after[term] - before[term]).abs()
        assert (change <= se[term].fillna(0) + 1e-9).all(), (change / se[term]).describe()
    clear = before["patient"] > 0.01
    assert clear.sum() >= 10
    assert (after.loc[clear, "patient"] / before.loc[clear, "patient"]).median() > 0.98
    # closer to the truth than not: signal over signal + residual, as simulated
    truth = corrected.varm["true_variance"]
    share = after["patient"] / (after["patient"] + after["Residual"])
    true_share = truth["patient"] / (truth["patient"] + truth["Residual"])
    assert np.median(np.abs(share - true_share)) < 0.02


def test_corrected_plus_removed_is_the_data(corrected):
    total = _dense(corrected.layers["varpart_corrected"]) + corrected.layers["varpart_batch"]
    np.testing.assert_allclose(total, corrected.X, rtol=0, atol=1e-5)
    params = corrected.uns["varpart_corrected"]["params"]
    assert params["terms"] == BATCH and params["source"] == "adata.X"
    assert params["genes"] is None and corrected.var["varpart_corrected"].all()


def test_the_technical_part_is_each_cells_blups():
    adata = _fit(svp.datasets.crossed_example(n_cells=500, n_genes=4, seed=2), store_blups=True)
    _quiet(svp.tl.remove_batch_effects, adata, batch_layer="tech")
    obs, gene = adata.obs, adata.var_names[2]
    blups = svp.get.result(adata).blups
    expect = sum(blups[t].loc[gene, obs[t].astype(str)].to_numpy() for t in BATCH)
    np.testing.assert_allclose(adata.layers["tech"][:, 2], expect, rtol=1e-5, atol=1e-6)


def test_a_fixed_covariate_is_removed_centred_keeping_the_means():
    adata = _fit(svp.datasets.crossed_example(n_cells=3000, n_genes=12, seed=4))
    _quiet(svp.tl.remove_batch_effects, adata, terms=["log_umi"], dtype=np.float64)
    corrected = adata.layers["varpart_corrected"]
    X = np.asarray(adata.X, dtype=float)
    np.testing.assert_allclose(corrected.mean(axis=0), X.mean(axis=0), rtol=0, atol=1e-12)
    beta = adata.varm["varpart_beta"]["log_umi"].to_numpy()
    x = adata.obs["log_umi"].to_numpy()
    np.testing.assert_allclose(X - corrected, np.outer(x - x.mean(), beta), rtol=1e-9, atol=1e-9)
    _fit(adata, layer="varpart_corrected", key_added="after", ci=None)
    assert adata.varm["after"]["log_umi"].max() < 1e-6


def test_random_slopes_are_removed_with_their_covariate():
    rng = np.random.default_rng(5)
    n, G = 3000, 6
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical(rng.choice([f"b{i}" for i in range(8)], n)),
            "donor": pd.Categorical(rng.choice([f"d{i}" for i in range(10)], n)),
            "depth": rng.normal(size=n),
        }
    )
    b_int, b_slope = rng.normal(0, 0.7, (8, G)), rng.normal(0, 0.5, (8, G))
    codes, donor = obs["batch"].cat.codes.to_numpy(), obs["donor"].cat.codes.to_numpy()
    Y = b_int[codes] + obs["depth"].to_numpy()[:, None] * b_slope[codes]
    Y += rng.normal(0, 0.6, (10, G))[donor] + rng.normal(size=(n, G))
    adata = ad.AnnData(Y, obs=obs)
    formula = "~ depth + (1 + depth|batch) + (1|donor)"
    _quiet(
        svp.tl.remove_batch_effects, adata, formula, terms="batch", signal="donor",
        method="REML", progress=False,
    )  # fmt: skip
    _quiet(
        svp.tl.variance_partition, adata, formula, batch="batch", signal="donor",
        method="REML", layer="varpart_corrected", key_added="after", ci=None, progress=False,
    )  # fmt: skip
    before, after = adata.varm["varpart"]["batch"], adata.varm["after"]["batch"]
    assert before.min() > 0.2 and after.max() < 0.01
    assert (adata.varm["after"]["donor"] / adata.varm["varpart"]["donor"]).median() > 1.0


def test_a_gene_subset_of_a_sparse_matrix_keeps_the_others_sparse():
    adata = svp.datasets.crossed_example(n_cells=600, n_genes=8, seed=1)
    adata.X = sp.csr_matrix(np.clip(adata.X, 0, None))
    _fit(adata, ci=None)
    full = adata.copy()
    _quiet(svp.tl.remove_batch_effects, full)
    genes = list(adata.var_names[[1, 4, 6]])
    _quiet(svp.tl.remove_batch_effects, adata, genes=genes, batch_layer="tech")
    layer = adata.layers["varpart_corrected"]
    assert sp.issparse(layer) and sp.issparse(adata.layers["tech"])
    np.testing.assert_array_equal(
        layer[:, [1, 4, 6]].toarray(), full.layers["varpart_corrected"][:, [1, 4, 6]]
    )
    others = [0, 2, 3, 5, 7]
    assert (layer[:, others] != adata.X[:, others]).nnz == 0
    assert adata.layers["tech"][:, others].nnz == 0
    assert adata.var["varpart_corrected"].tolist() == [i in (1, 4, 6) for i in range(8)]
    assert adata.uns["varpart_corrected"]["params"]["genes"] == genes


def test_the_stored_fit_is_used_and_left_as_it_was():
    adata = _fit(svp.datasets.crossed_example(n_cells=500, n_genes=5, seed=1))
    varm = {k: v.copy() for k, v in adata.varm.items()}
    uns = adata.uns["varpart"]["params"].copy()
    X = adata.X.copy()
    _quiet(svp.tl.remove_batch_effects, adata)  # refits for the BLUPs, stores nothing of it
    assert set(adata.varm) == set(varm)
    for k, v in varm.items():
        pd.testing.assert_frame_equal(adata.varm[k], v)
    assert adata.uns["varpart"]["params"] == uns
    np.testing.assert_array_equal(adata.X, X)
    assert adata.uns["varpart_corrected"]["params"]["terms"] == BATCH


def test_results_do_not_depend_on_threads_or_copy():
    adata = _fit(svp.datasets.crossed_example(n_cells=700, n_genes=6, seed=1), store_blups=True)
    one = _quiet(svp.tl.remove_batch_effects, adata, copy=True, n_jobs=1)
    two = _quiet(svp.tl.remove_batch_effects, adata, copy=True, n_jobs=2)
    assert "varpart_corrected" not in adata.layers
    np.testing.assert_array_equal(one.layers["varpart_corrected"], two.layers["varpart_corrected"])


def test_cells_the_model_did_not_use_keep_their_values():
    adata = svp.datasets.crossed_example(n_cells=800, n_genes=4, seed=1)
    keep = ["op_A", "op_B", "op_C"]
    _fit(adata, cells={"operator": keep}, ci=None)
    _quiet(svp.tl.remove_batch_effects, adata)
    out = ~adata.obs["operator"].isin(keep).to_numpy()
    layer = adata.layers["varpart_corrected"]
    assert out.any()
    np.testing.assert_array_equal(layer[out], np.asarray(adata.X, dtype=np.float32)[out])
    assert not np.allclose(layer[~out], adata.X[~out])


def test_genes_without_estimates_are_left_as_they_are():
    adata = svp.datasets.crossed_example(n_cells=600, n_genes=5, seed=1)
    X = np.asarray(adata.X).copy()
    X[:, 3] = 0.0
    X[:4, 3] = 1.0  # expressed in 4 cells: below min_cells
    adata.X = X
    _fit(adata, min_cells=10, ci=None)
    with pytest.warns(UserWarning, match="1 genes have no estimates"):
        svp.tl.remove_batch_effects(adata)
    np.testing.assert_array_equal(adata.layers["varpart_corrected"][:, 3], X[:, 3])
    assert adata.uns["varpart_corrected"]["uncorrected"] == [adata.var_names[3]]
    assert not adata.var["varpart_corrected"].iloc[3]


@pytest.mark.parametrize(
    ("kind", "subset"), [("h5ad", False), ("h5ad", True), ("zarr", True)]
)  # zarr: every element is slow to write, so one case
def test_the_file_is_corrected_block_by_block_as_in_memory(tmp_path, kind, subset):
    adata = svp.datasets.crossed_example(n_cells=700, n_genes=8, seed=1)
    adata.X = sp.csr_matrix(np.clip(adata.X, 0, None))
    _fit(adata, ci=None)
    path = tmp_path / f"in.{kind}"
    adata.write_h5ad(path) if kind == "h5ad" else adata.write_zarr(path)
    genes = list(adata.var_names[[1, 4, 6]]) if subset else None
    _quiet(svp.tl.remove_batch_effects, adata, genes=genes, batch_layer="tech")
    output = tmp_path / f"out.{kind}"
    result = _quiet(
        svp.tl.remove_batch_effects_file, path, output, genes=genes, batch_layer="tech",
        chunk_size=128,
    )  # fmt: skip
    back = ad.read_h5ad(output) if kind == "h5ad" else ad.read_zarr(output)
    for layer in ("varpart_corrected", "tech"):
        assert sp.issparse(back.layers[layer]) == subset
        np.testing.assert_array_equal(_dense(back.layers[layer]), _dense(adata.layers[layer]))
    assert (back.var["varpart_corrected"] == adata.var["varpart_corrected"]).all()
    assert result.uns["varpart_corrected"]["params"]["source"] == f"in.{kind}: X"
    with pytest.raises(FileExistsError, match="force=True"):
        svp.tl.remove_batch_effects_file(path, output)


def test_bad_input_is_refused_before_any_work(tmp_path):
    adata = svp.datasets.crossed_example(n_cells=400, n_genes=3, seed=1)
    with pytest.raises(KeyError, match=r"run svp\.tl\.variance_partition"):
        svp.tl.remove_batch_effects(adata)
    _fit(adata, ci=None)
    with pytest.raises(ValueError, match="'weekday' is not a term of the model"):
        svp.tl.remove_batch_effects(adata, terms=["chemistry", "weekday"])
    with pytest.raises(ValueError, match="signal terms of the fit"):
        svp.tl.remove_batch_effects(adata, terms=["patient"])
    with pytest.raises(ValueError, match="holds a fit of"):
        svp.tl.remove_batch_effects(adata, "~ (1|patient) + (1|day)")
    with pytest.raises(TypeError, match="apply to a new fit"):
        svp.tl.remove_batch_effects(adata, method="ML")
    with pytest.raises(KeyError, match=r"not in adata\.var_names"):
        svp.tl.remove_batch_effects(adata, genes=["nope"])
    assert "varpart_corrected" not in adata.layers
    path = tmp_path / "in.h5ad"
    svp.datasets.crossed_example(n_cells=300, n_genes=3).write_h5ad(path)
    with pytest.raises(KeyError, match="has no variance partition"):
        svp.tl.remove_batch_effects_file(path, tmp_path / "out.h5ad")
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match="remove_batch_effects_file"):
        svp.tl.remove_batch_effects(backed)
    with pytest.raises(FileExistsError):
        svp.tl.remove_batch_effects_file(path, path, force=True)


def test_effects_sum_the_chosen_parts_of_the_linear_predictor():
    adata = svp.datasets.crossed_example(n_cells=200, n_genes=3, seed=1)
    design = build_design(FORMULA, adata.obs)
    rng = np.random.default_rng(0)
    beta = rng.normal(size=(3, design.n_fixed))
    blups = {f.name: rng.normal(size=(3, f.n_levels, 1)) for f in design.factors}
    obs = np.arange(0, 200, 7)
    everything = Effects.of(design, beta, blups).at(obs)
    Z = design.random_matrix()[obs].toarray()
    b = np.concatenate([blups[f.name][:, :, 0] for f in design.factors], axis=1)
    np.testing.assert_allclose(everything, design.X[obs] @ beta.T + Z @ b.T)
    day = Effects.of(design, beta, blups, terms=["day"]).at(obs)
    codes = design.factors[[f.name for f in design.factors].index("day")].codes[obs]
    np.testing.assert_allclose(day, blups["day"][:, codes, 0].T)


def test_the_command_line_corrects_a_fitted_file(tmp_path):
    from test_cli import cli, ok

    adata = _fit(svp.datasets.crossed_example(n_cells=500, n_genes=6, seed=1), ci=None)
    result = tmp_path / "cells.varpart.h5ad"
    adata.write_h5ad(result)
    (tmp_path / "genes.txt").write_text("gene0002\ngene0005\n")
    out = tmp_path / "cells.corrected.h5ad"
    run = ok(
        cli(
            "correct", result, "-o", out, "--genes", tmp_path / "genes.txt", "--terms",
            "chemistry,day", "--batch-layer", "tech", "--chunk-size", "64",
        )
    )  # fmt: skip
    assert "2 genes corrected for chemistry, day" in run.stdout
    back = ad.read_h5ad(out)
    _quiet(
        svp.tl.remove_batch_effects,
        adata,
        terms=["chemistry", "day"],
        genes=["gene0002", "gene0005"],
    )
    np.testing.assert_array_equal(
        _dense(back.layers["varpart_corrected"]), _dense(adata.layers["varpart_corrected"])
    )
    assert cli("correct", result, "-o", out).returncode == 4  # exists: --force
    assert cli("correct", result, "-o", result, "--force").returncode == 4  # the input
    missing = cli("correct", result, "-o", tmp_path / "x.h5ad", "--genes", tmp_path / "no.txt")
    assert missing.returncode == 3 and "no.txt does not exist" in missing.stderr
    unknown = cli("correct", result, "-o", tmp_path / "x.h5ad", "--terms", "weekday")
    assert unknown.returncode == 3 and "'weekday' is not a term" in unknown.stderr
    assert not (tmp_path / "x.h5ad").exists()
