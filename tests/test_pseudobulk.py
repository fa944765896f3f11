"""svp.pp.pseudobulk, and the counts' filter and log CPM against edgeR and limma."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

import scvarpart as svp
from scvarpart.counts import filter_by_expr, log_cpm
from scvarpart.suffstats.aggregate import group_sums

EDGER = Path(__file__).parent / "data" / "edger"


def test_the_filter_and_log_cpm_are_edgers_and_limmas():
    """edgeR 3.40.2's filterByExpr and limma 3.54.1's voom on the same counts."""
    table = pd.read_csv(EDGER / "counts.csv", index_col=0)
    group = table.pop("group").to_numpy()
    counts = table.to_numpy()
    ref = json.loads((EDGER / "reference.json").read_text())
    np.testing.assert_array_equal(filter_by_expr(counts), ref["keep_default"])
    np.testing.assert_array_equal(filter_by_expr(counts, group=group), ref["keep_group"])
    custom = filter_by_expr(counts, min_count=5, min_total_count=10, large_n=4, min_prop=0.4)
    np.testing.assert_array_equal(custom, ref["keep_min5"])
    np.testing.assert_allclose(log_cpm(counts), ref["voom_E"], rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def cells():
    adata = svp.datasets.simulate_counts(3000, 120, seed=0, counts=True)
    rng = np.random.default_rng(0)
    types = rng.choice(["T", "B", "NK"], adata.n_obs, p=[0.6, 0.35, 0.05])
    adata.obs["cell_type"] = pd.Categorical(types)
    adata.obs["sex"] = adata.obs["patient"].cat.codes.map(lambda c: "F" if c % 2 else "M")
    adata.obs["qc"] = rng.choice(["pass", "low"], adata.n_obs)  # varies within a sample
    return adata


def _bulk(cells, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return svp.pp.pseudobulk(cells, "patient", **kwargs)


def test_the_sums_are_scanpys_aggregate(cells):
    bulk = _bulk(cells, groupby="cell_type", min_cells=0, min_count=0, min_total_count=0)
    agg = sc.get.aggregate(cells, by=["cell_type", "patient"], func="sum", layer="counts")
    agg.obs.index = agg.obs[["cell_type", "patient"]].astype(str).agg(":".join, axis=1)
    expected = pd.DataFrame(np.asarray(agg.layers["sum"]), index=agg.obs.index)
    got = pd.DataFrame(bulk.layers["counts"], index=bulk.obs.index)
    pd.testing.assert_frame_equal(got, expected.loc[got.index], check_names=False)
    assert len(got) == len(expected)  # every combination with cells
    assert bulk.obs["n_cells"].sum() == cells.n_obs


def test_the_samples_keep_their_constant_columns_and_average_the_others(cells):
    bulk = _bulk(cells)
    first = bulk.obs.loc["pat02"]
    mine = cells.obs[cells.obs["patient"] == "pat02"]
    assert first["sex"] == mine["sex"].iloc[0] and first["n_cells"] == len(mine)
    assert first["log_umi"] == pytest.approx(mine["log_umi"].mean())
    assert "qc" not in bulk.obs and "chemistry" not in bulk.obs  # vary within a patient
    assert set(bulk.uns["pseudobulk"]["params"]["dropped_columns"]) >= {"qc", "chemistry"}
    counts = bulk.layers["counts"]
    keep = filter_by_expr(group_sums(cells.layers["counts"], cells.obs["patient"].cat.codes, 24))
    np.testing.assert_allclose(bulk.X, log_cpm(counts, counts.sum(axis=1)))
    assert bulk.n_vars == keep.sum()


def test_what_the_filters_removed_is_said_and_stored(cells):
    with pytest.warns(UserWarning, match="samples with too few cells removed") as record:
        bulk = svp.pp.pseudobulk(cells, "patient", groupby="cell_type", min_cells=5)
    assert any("not expressed enough in NK" in str(w.message) for w in record)
    removed = bulk.uns["pseudobulk"]["removed"]
    assert (removed["cell_type"] == "NK").all() and (removed["n_cells"] < 5).all()
    assert not bulk.obs.index.isin(removed["cell_type"] + ":" + removed["patient"]).any()
    genes = bulk.uns["pseudobulk"]["genes"].set_index("group")
    expressed = bulk.varm["expressed"]
    for group in ("B", "NK", "T"):
        assert genes.loc[group, "n_genes_kept"] == expressed[group].sum()
    assert expressed.any(axis=1).all()  # every gene kept somewhere
    # each group's library size: its own kept genes (edgeR's keep.lib.sizes=FALSE)
    t_rows = (bulk.obs["cell_type"] == "T").to_numpy()
    t_genes = expressed["T"].to_numpy()
    library = bulk.layers["counts"][np.ix_(t_rows, t_genes)].sum(axis=1)
    np.testing.assert_allclose(bulk.X[t_rows], log_cpm(bulk.layers["counts"][t_rows], library))


def test_a_file_read_block_by_block_gives_the_same(cells, tmp_path):
    memory = _bulk(cells, groupby="cell_type")
    threads = _bulk(cells, groupby="cell_type", n_jobs=2, chunk_size=311)
    np.testing.assert_array_equal(memory.layers["counts"], threads.layers["counts"])
    counts_file = ad.AnnData(X=cells.layers["counts"], obs=cells.obs, var=cells.var)
    counts_file.write_h5ad(tmp_path / "counts.h5ad")
    backed = ad.read_h5ad(tmp_path / "counts.h5ad", backed="r")
    from_file = _bulk(backed, groupby="cell_type", layer=None, chunk_size=257)
    np.testing.assert_array_equal(from_file.layers["counts"], memory.layers["counts"])
    np.testing.assert_array_equal(from_file.X, memory.X)


def test_bad_input_is_refused(cells):
    with pytest.raises(KeyError, match="'donor' is not a column"):
        svp.pp.pseudobulk(cells, "donor")
    logged = cells.copy()
    with pytest.raises(ValueError, match="negative values"):
        logged.layers["scaled"] = sp.csr_matrix(-np.abs(logged.X.toarray()))
        svp.pp.pseudobulk(logged, "patient", layer="scaled")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        svp.pp.pseudobulk(cells, "patient", layer=None)  # X is log-normalised
    assert any("non-integer values" in str(w.message) for w in record)
    missing = cells.copy()
    missing.obs["patient"] = missing.obs["patient"].astype(object)
    missing.obs.iloc[:10, missing.obs.columns.get_loc("patient")] = np.nan
    bulk = _bulk(missing)
    assert bulk.uns["pseudobulk"]["params"]["n_cells_unlabelled"] == 10
    assert bulk.obs["n_cells"].sum() == cells.n_obs - 10
