"""The simulated count data used by the benchmarks."""

from __future__ import annotations

import anndata as ad
import numpy as np

import scvarpart as svp


def test_reproducible_whatever_the_threads():
    a = svp.datasets.simulate_counts(900, 120, seed=3, chunk_cells=200)
    b = svp.datasets.simulate_counts(900, 120, seed=3, chunk_cells=200, n_jobs=2)
    c = svp.datasets.simulate_counts(900, 120, seed=4, chunk_cells=200)
    assert (a.X != b.X).nnz == 0
    assert (a.X != c.X).nnz > 0
    assert a.obs.equals(b.obs)


def test_log_normalised_counts_with_a_crossed_design():
    adata = svp.datasets.simulate_counts(2000, 400, seed=0)
    X = adata.X
    assert X.format == "csr" and X.dtype == np.float32
    assert 0.03 < X.nnz / np.prod(X.shape) < 0.15
    # normalize_total(target_sum=1e4) then log1p: each cell's expm1 sums to 1e4
    np.testing.assert_allclose(np.expm1(X.astype(np.float64)).sum(axis=1).A1, 1e4, rtol=1e-5)
    assert list(adata.obs.columns) == [
        "patient",
        "chemistry",
        "day",
        "operator",
        "library",
        "pct_mito",
        "log_umi",
        "log_size_factor",
    ]
    assert [adata.obs[f].nunique() for f in ("patient", "chemistry", "day", "operator")] == [
        24,
        3,
        8,
        6,
    ]
    # each library has one level of every factor: factors are crossed through libraries
    per_library = adata.obs.groupby("library", observed=True)[["chemistry", "day"]].nunique()
    assert (per_library == 1).all().all()
    assert {"sd_patient", "dispersion", "slope_pct_mito"} <= set(adata.var.columns)


def test_written_block_by_block_equals_in_memory(tmp_path):
    memory = svp.datasets.simulate_counts(700, 50, seed=5, chunk_cells=128)
    backed = svp.datasets.simulate_counts(
        700, 50, seed=5, chunk_cells=128, path=tmp_path / "s.h5ad"
    )
    assert backed.isbacked
    on_disk = ad.read_h5ad(tmp_path / "s.h5ad")
    assert (on_disk.X != memory.X).nnz == 0
    np.testing.assert_array_equal(on_disk.obs["log_umi"], memory.obs["log_umi"])
    assert on_disk.uns["simulation"]["formula"] == svp.datasets.SIMULATION_FORMULA
