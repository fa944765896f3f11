"""Gene-specific observation weights (a weights layer), and voom's precision weights.

References made by ``tests/data/voom/make_reference.R`` (lme4 1.1-31; see the README
there): voom's trend and weights with a mixed model, as variancePartition's
``voomWithDreamWeights`` computes them, and ``lmer(weights = w_g)`` fits of every gene
with its own weights. Property tests: on random tiny designs with random weights per gene,
an exhaustive search that shares no code with the package (on the dense likelihood of
``sqrt(w) y``) never beats a fit; weights of 1 give the unweighted fit, the same column
for every gene gives the shared-weights fit, and rescaling a gene's weights changes none
of its fractions.
"""

from __future__ import annotations

import json
import warnings
from functools import cache

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import DATA
from exhaustive import exhaustive_optimum
from test_global_optimum import _design as random_tiny_design

import scvarpart as svp
from scvarpart.design import build_design

REF = DATA / "voom"
FORMULA = "~ (1|donor) + (1|batch)"


@cache
def _reference() -> dict:
    return json.loads((REF / "reference.json").read_text())


def _bulk() -> ad.AnnData:
    """The reference's samples: counts in a layer, log CPM in ``X``."""
    obs = pd.read_csv(REF / "obs.csv", index_col=0)
    counts = pd.read_csv(REF / "counts.csv", index_col=0)
    bulk = ad.AnnData(
        X=np.array(_reference()["log_cpm"]), obs=obs, var=pd.DataFrame(index=counts.columns)
    )
    bulk.layers["counts"] = counts.to_numpy(dtype=float)
    return bulk


@pytest.mark.parametrize("case, weights", [("unweighted", None), ("sample_weights_w", "w")])
def test_voom_weights_are_voom_with_dream_weights(case, weights):
    ref = _reference()["voom"][case]
    bulk = _bulk()
    svp.pp.voom_weights(bulk, FORMULA, weights=weights, lib_size=None, key_added="voom")
    var = bulk.var
    np.testing.assert_allclose(var["voom_mean_log_count"], ref["sx"], rtol=0, atol=1e-12)
    # sigma of ML fits: ours are at least as good as lme4's tight ones, so ~1e-7 apart
    np.testing.assert_allclose(var["voom_sqrt_sd"] ** 2, ref["sigma"], rtol=1e-5)
    trend = bulk.uns["voom"]["trend"]
    np.testing.assert_allclose(trend["x"], ref["lowess_x"], atol=1e-12)
    np.testing.assert_allclose(trend["y"], ref["lowess_y"], rtol=1e-5)
    np.testing.assert_allclose(bulk.layers["voom"], ref["weights"], rtol=1e-5)
    assert bulk.uns["voom"]["params"]["weights"] == weights


@pytest.mark.filterwarnings("ignore:Under method='ML'")
@pytest.mark.parametrize("method", ["REML", "ML"])
def test_gene_weights_match_lmer_weights(method):
    """Every gene with its own weights: lme4's criterion or better, its variances."""
    bulk = _bulk()
    bulk.layers["voom"] = np.array(_reference()["voom"]["sample_weights_w"]["weights"])
    svp.tl.variance_partition(bulk, FORMULA, method=method, weights="voom", progress=False)
    fits = [f for f in _reference()["gene_weight_fits"] if f["REML"] == (method == "REML")]
    assert [f["gene"] for f in fits] == list(bulk.var_names)
    ours = -2 * bulk.var["varpart_loglik"].to_numpy()
    lme4 = np.array([f["objective"] for f in fits])
    assert np.all(ours <= lme4 + 1e-8 * np.abs(lme4)), np.max(ours - lme4)
    variance = bulk.varm["varpart_variance"]
    for f in fits:
        if f["isSingular"]:
            continue
        for term in ("donor", "batch"):
            assert variance.loc[f["gene"], term] == pytest.approx(f["vcov"][term], rel=1e-3)
    params = bulk.uns["varpart"]["params"]
    assert params["weights"] == "voom" and params["weights_per_gene"]


def _weighted_design(seed: int):
    """A random tiny design of the exhaustive search's tests, with random weights per gene."""
    made = random_tiny_design(seed, genes=2)
    if made is None:
        return None
    design, Zs, Y = made
    W = np.exp(np.random.default_rng([seed, 1]).normal(0, 1, size=Y.shape))  # e^±2 apart
    return design, Zs, Y, W


def _never_beaten(seeds) -> tuple[int, list[str]]:
    """On random designs, 2 genes each with their own weights, ML and REML: how many
    designs, and the fits an exhaustive search beat."""
    problems, designs = [], 0
    for seed in seeds:
        made = _weighted_design(seed)
        if made is None:
            continue
        designs += 1
        design, Zs, Y, W = made
        for method in ("ML", "REML"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = svp.lmm.fit_gene_weights(design, Y, W, method=method, ci=None)
            for g in range(Y.shape[1]):
                if fit.errors.index.isin([str(g)]).any():
                    continue  # an exact fit: no finite optimum (the exhaustive test's)
                s = np.sqrt(W[:, g])
                ml, reml = exhaustive_optimum(
                    s[:, None] * Y[:, [g]], s[:, None] * design.X, [s[:, None] * Z for Z in Zs]
                )
                # the criterion of y, not of sqrt(w) y: less the log-determinant of W
                best = (reml if method == "REML" else ml)[0] - np.log(W[:, g]).sum()
                ours = -2 * fit.per_gene["loglik"].iloc[g]
                if best < ours - 1e-8 * max(1.0, abs(ours)):
                    problems.append(f"seed {seed} gene {g} {method}: {ours:.10g} > {best:.10g}")
    return designs, problems


def test_gene_weights_never_beaten_by_an_exhaustive_search():
    designs, problems = _never_beaten(range(10))  # 520 in the slow suite
    assert designs >= 7
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_gene_weights_never_beaten_by_an_exhaustive_search_on_400_designs():
    designs, problems = _never_beaten(range(1_000, 1_520))
    assert designs >= 400, designs
    assert not problems, "\n".join(problems)


def _small(seed: int = 3):
    rng = np.random.default_rng(seed)
    n = 60
    obs = pd.DataFrame(
        {
            "donor": rng.choice([f"d{i}" for i in range(12)], n),
            "batch": rng.choice(list("abcd"), n),
            "x": rng.normal(size=n),
            "w": rng.uniform(0.2, 3, n),
        }
    )
    codes = obs["donor"].str[1:].astype(int).to_numpy()
    Y = rng.normal(size=(n, 12)) + rng.normal(size=(12, 12))[codes]
    return obs, Y, rng


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_weights_of_one_are_the_unweighted_fit(method):
    obs, Y, _ = _small()
    design = build_design("~ x + (1|donor) + (1|batch)", obs)
    ones = svp.lmm.fit_gene_weights(design, Y, np.ones_like(Y), method=method)
    plain = svp.lmm.fit(design, Y, method=method)
    np.testing.assert_allclose(ones.per_gene["loglik"], plain.per_gene["loglik"], rtol=1e-10)
    np.testing.assert_allclose(ones.fractions, plain.fractions, atol=1e-5)


def test_one_column_for_every_gene_is_the_shared_weights_fit():
    obs, Y, _ = _small()
    formula = "~ x + (1|donor) + (1|batch)"
    W = np.repeat(obs[["w"]].to_numpy(), Y.shape[1], axis=1)
    per_gene = svp.lmm.fit_gene_weights(build_design(formula, obs), Y, W, method="REML")
    shared = svp.lmm.fit(formula, Y, obs=obs, weights="w", method="REML")
    pd.testing.assert_frame_equal(per_gene.fractions, shared.fractions)
    pd.testing.assert_frame_equal(per_gene.ci_low, shared.ci_low)


def test_rescaled_weights_change_no_fraction():
    obs, Y, rng = _small()
    design = build_design("~ x + (1|donor) + (1|batch)", obs)
    W = rng.uniform(0.2, 3, Y.shape)
    a = svp.lmm.fit_gene_weights(design, Y, W, method="REML", ci=None)
    b = svp.lmm.fit_gene_weights(design, Y, W * rng.uniform(0.1, 10, Y.shape[1]), ci=None,
                                 method="REML")  # fmt: skip
    np.testing.assert_allclose(a.fractions, b.fractions, atol=1e-5)


def test_results_do_not_depend_on_blocks_or_workers():
    obs, Y, rng = _small()
    design = build_design("~ x + (1|donor) + (1|batch)", obs)
    W = rng.uniform(0.2, 3, Y.shape)
    a = svp.lmm.fit_gene_weights(design, Y, W, method="REML", test="lrt")
    b = svp.lmm.fit_gene_weights(design, Y, W, method="REML", test="lrt", chunk_genes=5, n_jobs=2)
    pd.testing.assert_frame_equal(a.fractions, b.fractions)
    pd.testing.assert_frame_equal(a.qvalue, b.qvalue)


def test_bad_weights_are_named_before_fitting():
    obs, Y, rng = _small()
    design = build_design("~ (1|donor)", obs)
    W = rng.uniform(0.2, 3, Y.shape)
    W[7, 4] = 0.0
    with pytest.raises(ValueError, match=r"gene '4', observation 7"):
        svp.lmm.fit_gene_weights(design, Y, W)
    with pytest.raises(ValueError, match="must have the shape of Y"):
        svp.lmm.fit_gene_weights(design, Y, W[:, :3])


def test_weights_name_an_obs_column_or_a_layer():
    obs, Y, rng = _small()
    adata = ad.AnnData(X=Y, obs=obs.set_axis([f"s{i}" for i in range(len(obs))]))
    adata.layers["w"] = rng.uniform(0.2, 3, Y.shape)
    with pytest.raises(ValueError, match="names both an obs column and a layer"):
        svp.tl.variance_partition(adata, "~ (1|donor)", weights="w")
    with pytest.raises(ValueError, match="is not a column of obs, nor a layer"):
        svp.tl.variance_partition(adata, "~ (1|donor)", weights="nope")
    adata.layers["precision"] = adata.layers.pop("w")
    svp.tl.variance_partition(adata, "~ (1|donor)", weights="precision", progress=False)
    assert adata.uns["varpart"]["params"]["weights_per_gene"]


def test_voom_weights_refuse_what_is_not_counts_and_keep_the_input():
    bulk = _bulk()
    with pytest.raises(KeyError, match="lib_size='lib_size' is not a column"):
        svp.pp.voom_weights(bulk, FORMULA)
    bulk.layers["logs"] = bulk.X - 20  # negative: not counts
    with pytest.raises(ValueError, match=r"layers\['logs'\] must hold non-negative counts"):
        svp.pp.voom_weights(bulk, FORMULA, layer="logs", lib_size=None)
    bulk.obs["lib_size"] = bulk.layers["counts"].sum(axis=1)
    before = bulk.copy()
    out = svp.pp.voom_weights(bulk, FORMULA, copy=True)
    assert "voom" in out.layers and "voom" not in bulk.layers
    np.testing.assert_array_equal(bulk.X, before.X)
    # the trend is drawn from what voom_weights stored
    import matplotlib

    matplotlib.use("Agg")
    ax = svp.pl.voom_trend(out, show=False)
    assert len(ax.lines) == 1 and ax.get_legend() is not None
    with pytest.raises(KeyError, match=r"run svp\.pp\.voom_weights"):
        svp.pl.voom_trend(bulk, show=False)


def test_a_weights_layer_from_a_file_and_the_command_line(tmp_path):
    """The file function and chunks of the command line give the in-memory fit."""
    from test_cli import cli, ok

    bulk = _bulk()
    bulk.layers["voom"] = np.array(_reference()["voom"]["sample_weights_w"]["weights"])
    path = tmp_path / "bulk.h5ad"
    bulk.write_h5ad(path)
    svp.tl.variance_partition(bulk, FORMULA, method="REML", weights="voom", progress=False)
    on_file = svp.tl.variance_partition_file(
        path, FORMULA, method="REML", weights="voom", progress=False
    )
    pd.testing.assert_frame_equal(on_file.varm["varpart"], bulk.varm["varpart"])
    model = ["--formula", FORMULA, "--method", "REML", "--weights", "voom"]
    ok(cli("fit", path, *model, "-o", tmp_path / "whole.h5ad"))
    for i in (1, 2):
        ok(cli("fit", path, *model, "--genes", f"{i}/2", "-o", tmp_path / f"c{i}.h5ad"))
    ok(cli("merge", tmp_path / "c1.h5ad", tmp_path / "c2.h5ad", "--into", path,
           "-o", tmp_path / "merged.h5ad"))  # fmt: skip
    whole, merged = ad.read_h5ad(tmp_path / "whole.h5ad"), ad.read_h5ad(tmp_path / "merged.h5ad")
    pd.testing.assert_frame_equal(whole.varm["varpart"], bulk.varm["varpart"])
    pd.testing.assert_frame_equal(merged.varm["varpart"], whole.varm["varpart"])
    assert whole.uns["varpart"]["params"]["weights_per_gene"]


def test_correcting_a_fit_with_a_weights_layer_refits_it_with_those_weights():
    bulk = _bulk()
    bulk.layers["voom"] = np.array(_reference()["voom"]["sample_weights_w"]["weights"])
    svp.tl.variance_partition(bulk, FORMULA, method="REML", weights="voom", progress=False)
    svp.tl.remove_batch_effects(bulk, terms=["batch"])
    with_blups = svp.tl.variance_partition(
        bulk, FORMULA, method="REML", weights="voom", store_blups=True, ci=None,
        inplace=False, progress=False,
    )  # fmt: skip
    # the corrected values: X less each sample's batch BLUP, fitted with the weights
    blups = with_blups.blups["batch"]
    codes = bulk.obs["batch"].astype(str).to_numpy()
    expected = bulk.X - blups[codes].to_numpy().T
    corrected = bulk.layers["varpart_corrected"]  # float32
    np.testing.assert_allclose(corrected, expected, rtol=1e-6)
    unweighted = svp.tl.variance_partition(
        bulk, FORMULA, method="REML", store_blups=True, ci=None, inplace=False, progress=False
    ).blups["batch"]
    assert np.abs(corrected - (bulk.X - unweighted[codes].to_numpy().T)).max() > 1e-3


def test_voom_weights_per_group_are_each_groups_own():
    """groupby=: each group's weights are voom of its samples and expressed genes alone."""
    import matplotlib

    matplotlib.use("Agg")
    cells = svp.datasets.simulate_counts(8000, 150, seed=4, counts=True)
    rng = np.random.default_rng(4)
    cells.obs["cell_type"] = rng.choice(["B", "T"], cells.n_obs, p=[0.35, 0.65])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bulk = svp.pp.pseudobulk(cells, "library", groupby="cell_type")
    model = "~ (1|patient) + (1|chemistry)"
    svp.pp.voom_weights(bulk, model, groupby="cell_type", weights="n_cells", method="REML")
    W = bulk.layers["voom"]
    for group in ("B", "T"):
        rows = (bulk.obs["cell_type"] == group).to_numpy()
        genes = bulk.varm["expressed"][group].to_numpy()
        alone = bulk[rows, genes].copy()
        svp.pp.voom_weights(alone, model, weights="n_cells", method="REML")
        np.testing.assert_array_equal(W[np.ix_(rows, genes)], alone.layers["voom"])
        assert np.isnan(W[np.ix_(rows, ~genes)]).all()
    trends = bulk.uns["voom"]["trend"]
    assert [t["group"] for t in trends.values()] == ["B", "T"]
    # and the fit per group with them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svp.tl.variance_partition(bulk, model, groupby="cell_type", weights="voom",
                                  method="REML", ci=None, progress=False)  # fmt: skip
    assert (svp.get.groups(bulk)["status"] == "fitted").all()
    axes = svp.pl.voom_trend(bulk, show=False)
    assert [a.get_title() for a in axes] == ["B", "T"]
