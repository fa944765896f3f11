"""Backed, on-disk and Dask inputs give the in-memory results, reading block by block."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scvarpart as svp
from scvarpart.suffstats import response_stats
from scvarpart.tl import _progress

FORMULA = svp.datasets.SIMULATION_FORMULA
KW = {"batch": ["chemistry", "day", "operator"], "signal": "patient"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    adata = svp.datasets.simulate_counts(1500, 60, seed=4, chunk_cells=400)
    adata.layers["dense"] = adata.X.toarray()
    adata.raw = adata.copy()
    folder = tmp_path_factory.mktemp("ooc")
    adata.write_h5ad(folder / "data.h5ad")
    with pytest.warns(UserWarning, match="zarr v2"):
        adata.write_zarr(folder / "data.zarr")
    reference = svp.tl.variance_partition(adata, FORMULA, inplace=False, **KW)
    return adata, folder, reference


def _same(variance, reference):
    pd.testing.assert_frame_equal(
        pd.DataFrame(variance), reference.variance, rtol=1e-10, atol=1e-14
    )


@pytest.mark.parametrize("layer", [None, "dense"])
def test_backed_anndata(data, layer):
    _, folder, reference = data
    backed = ad.read_h5ad(folder / "data.h5ad", backed="r")
    svp.tl.variance_partition(backed, FORMULA, layer=layer, chunk_size=128, **KW)
    _same(backed.varm["varpart_variance"], reference)
    assert backed.isbacked  # still reading from the file


@pytest.mark.parametrize("store", ["data.h5ad", "data.zarr"])
@pytest.mark.parametrize("source", [{}, {"layer": "dense"}, {"use_raw": True}])
def test_file_entry_point(data, store, source, tmp_path):
    adata, folder, reference = data
    out = tmp_path / ("result" + Path(store).suffix)
    result = svp.tl.variance_partition_file(
        folder / store, FORMULA, chunk_size=300, output=out, **source, **KW
    )
    assert result.X is None and result.shape == adata.shape
    _same(result.varm["varpart_variance"], reference)
    assert result.uns["varpart"]["params"]["path"] == store  # the name: work dirs vary
    # the output is a copy of the input with the results added
    reread = ad.read_h5ad(out) if store.endswith(".h5ad") else ad.read_zarr(out)
    _same(reread.varm["varpart_variance"], reference)
    assert (reread.X != adata.X).nnz == 0
    assert reread.layers["dense"].shape == adata.shape
    with pytest.raises(FileExistsError, match="force=True"):
        svp.tl.variance_partition_file(folder / store, FORMULA, output=out, **KW)


def test_file_entry_point_errors(data, tmp_path):
    _, folder, _ = data
    with pytest.raises(FileNotFoundError):
        svp.tl.variance_partition_file(tmp_path / "missing.h5ad", FORMULA)
    with pytest.raises(KeyError, match="Layer 'nope'"):
        svp.tl.variance_partition_file(folder / "data.h5ad", FORMULA, layer="nope")
    with pytest.raises(svp.design.DesignError, match=r"\['nope'\]"):
        svp.tl.variance_partition_file(folder / "data.h5ad", "~ (1|patient) + (1|nope)")
    with pytest.raises(ValueError, match="either layer= or use_raw"):
        svp.tl.variance_partition_file(folder / "data.h5ad", FORMULA, layer="dense", use_raw=True)


class _Recorder:
    """A matrix that records which row blocks are read."""

    def __init__(self, X):
        self.X, self.shape, self.dtype, self.reads = X, X.shape, X.dtype, []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.X[key]


def test_blocks_bound_what_is_read(data):
    adata, _, _ = data
    design = svp.design.build_design(FORMULA, adata.obs)
    from scvarpart.suffstats.gram import centred_fixed, indicator_matrix

    rec = _Recorder(ad.read_h5ad(data[1] / "data.h5ad", backed="r").X)
    response_stats(rec, indicator_matrix(design), centred_fixed(design)[0], chunk_rows=100)
    sizes = [k.stop - k.start for k in rec.reads]
    assert max(sizes) == 100 and sum(sizes) == adata.n_obs


def test_nonfinite_values_on_disk_are_reported_after_the_pass(tmp_path, data):
    adata, _, _ = data
    bad = adata.copy()
    X = bad.X.toarray()
    X[7, [3, 11]] = np.nan
    bad.X = sp.csr_matrix(X)
    bad.write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(ValueError, match=r"2 gene\(s\): 'gene00004', 'gene00012'"):
        svp.tl.variance_partition_file(tmp_path / "bad.h5ad", FORMULA)


def test_dask_array_input_local_scheduler(data):
    da = pytest.importorskip("dask.array")
    adata, _, reference = data
    lazy = adata.copy()
    lazy.X = da.from_array(adata.X, chunks=(250, -1), asarray=False)
    svp.tl.variance_partition(lazy, FORMULA, **KW)
    _same(lazy.varm["varpart_variance"], reference)


def test_dask_distributed_cluster_reads_the_file(data):
    """Workers in their own processes read their blocks from the file."""
    distributed = pytest.importorskip("dask.distributed")
    _, folder, reference = data
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        result = svp.tl.variance_partition_file(
            folder / "data.h5ad", FORMULA, dask=True, chunk_size=300, **KW
        )
        # the per-gene fits can run on the cluster too, through joblib's dask backend
        from joblib import parallel_config

        with parallel_config(backend="dask"):
            fitted = svp.tl.variance_partition_file(
                folder / "data.h5ad", FORMULA, n_jobs=2, batch_size=16, **KW
            )
        assert client.run(lambda: 1)  # the cluster did the work and is alive
    _same(result.varm["varpart_variance"], reference)
    _same(fitted.varm["varpart_variance"], reference)


def test_progress_bars_follow_scanpy_verbosity(data, monkeypatch, capsys):
    import scanpy as sc

    adata, _, _ = data
    monkeypatch.setattr(_progress, "_DELAY", 0.0)
    svp.tl.variance_partition(adata, FORMULA, inplace=False, chunk_size=300)
    err = capsys.readouterr().err
    assert "reading data" in err and "fitting genes" in err
    before = sc.settings.verbosity
    sc.settings.verbosity = 0
    try:
        svp.tl.variance_partition(adata, FORMULA, inplace=False, chunk_size=300)
        assert capsys.readouterr().err == ""
        svp.tl.variance_partition(adata, FORMULA, inplace=False, progress=True)
        assert "fitting genes" in capsys.readouterr().err
    finally:
        sc.settings.verbosity = before


@pytest.mark.parametrize("layer", [None, "dense"])
def test_blocks_read_from_disk_give_the_bits_of_memory(data, layer):
    """A file read block by block, a gene chunk of it, any n_jobs: the in-memory bits."""
    from scvarpart.suffstats.gram import centred_fixed, indicator_matrix

    adata, folder, _ = data
    design = svp.design.build_design(FORMULA, adata.obs)
    args = (indicator_matrix(design), centred_fixed(design)[0])
    backed = ad.read_h5ad(folder / "data.h5ad", backed="r")
    on_disk = backed.X if layer is None else backed.layers[layer]
    in_memory = adata.X if layer is None else adata.layers[layer]
    genes = slice(13, 41)
    whole = response_stats(in_memory, *args, chunk_rows=200).subset(genes)
    for n_jobs in (1, 2):
        part = response_stats(on_disk, *args, chunk_rows=200, genes=genes, n_jobs=n_jobs)
        for field in ("mean", "ss", "ZtY", "XtY", "n_nonzero"):
            np.testing.assert_array_equal(getattr(part, field), getattr(whole, field))
