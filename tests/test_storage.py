"""Storage: which matrix is used, how stores are opened, how blocks are read."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scvarpart.pl._fitted import gene_values
from scvarpart.storage.matrix import (
    as_block,
    reduce_gene_blocks,
    reduce_row_blocks,
    row_bounds,
    storage_format,
)
from scvarpart.storage.select import select_expression
from scvarpart.storage.stores import is_zarr, open_store


@pytest.fixture
def adata():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 4))
    a = ad.AnnData(X=X, var=pd.DataFrame(index=[f"g{i}" for i in range(4)]))
    a.layers["lognorm"] = X + 1
    return a


def test_x_layer_and_raw(adata):
    chosen = select_expression(adata)
    assert chosen.matrix is adata.X and chosen.source == "adata.X"
    chosen = select_expression(adata, layer="lognorm")
    assert chosen.matrix is adata.layers["lognorm"]
    assert chosen.source == "adata.layers['lognorm']"
    full = adata.copy()
    adata.raw = full[:, ::-1].copy()  # raw holds the genes in another order
    chosen = select_expression(adata, use_raw=True)
    assert chosen.source == "adata.raw.X"
    np.testing.assert_array_equal(chosen.aligned(), full.X)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"layer": "lognorm", "use_raw": True}, ValueError, r"either layer= or use_raw=True"),
        ({"layer": "counts"}, KeyError, r"'counts' is not in adata\.layers.*'lognorm'"),
        ({"use_raw": True}, ValueError, r"adata\.raw is not set"),
    ],
)
def test_selection_errors(adata, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        select_expression(adata, **kwargs)


def test_raw_missing_genes_and_empty_x(adata):
    adata.raw = adata[:, :2].copy()
    with pytest.raises(ValueError, match=r"2 genes of adata.var_names are not in adata.raw"):
        select_expression(adata, use_raw=True)
    # one gene is enough for a plot of that gene
    np.testing.assert_array_equal(gene_values(adata, "g1", None, True), adata.X[:, 1])
    empty = ad.AnnData(obs=adata.obs, var=adata.var)
    with pytest.raises(ValueError, match=r"adata\.X is empty; pass layer="):
        select_expression(empty)


def test_plots_read_the_gene_from_the_selected_matrix(adata):
    adata.raw = adata[:, ::-1].copy()
    for layer, use_raw, want in (
        (None, False, adata.X),
        ("lognorm", False, adata.layers["lognorm"]),
        (None, True, adata.X),  # raw is X in another order: matched by name
    ):
        np.testing.assert_array_equal(gene_values(adata, "g2", layer, use_raw), want[:, 2])
    with pytest.raises(ValueError, match="either layer="):
        gene_values(adata, "g2", "lognorm", True)


def test_backed_raw_must_hold_the_genes_in_order(adata, tmp_path):
    adata.X = sp.csr_matrix(adata.X)
    adata.raw = adata[:, ::-1].copy()
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    chosen = select_expression(backed, use_raw=True)
    with pytest.raises(ValueError, match=r"backed object needs adata\.raw to hold exactly"):
        chosen.aligned()


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_stores_open_read_only_and_select_like_objects(adata, tmp_path, suffix):
    path = tmp_path / f"a{suffix}"
    adata.raw = adata.copy()
    if suffix == ".h5ad":
        adata.write_h5ad(path)
    else:
        with pytest.warns(UserWarning, match="zarr v2"):
            adata.write_zarr(path)
    assert is_zarr(path) == (suffix == ".zarr")
    with open_store(path) as root:
        var = ad.io.read_elem(root["var"])
        chosen = select_expression(root, "lognorm", False, var_names=var.index, path=path)
        assert chosen.source == f"layers['lognorm'] of {path}"
        np.testing.assert_array_equal(chosen.matrix[:], adata.layers["lognorm"])
        assert select_expression(root, var_names=var.index, path=path).source == f"X of {path}"
        raw = select_expression(root, use_raw=True, var_names=var.index, path=path)
        assert raw.source == f"raw.X of {path}"
        with pytest.raises(KeyError, match=rf"'nope' is not in {path}; available: \['lognorm'\]"):
            select_expression(root, "nope", var_names=var.index, path=path)
        with pytest.raises(ValueError, match="needs raw to hold exactly the genes of var"):
            select_expression(root, use_raw=True, var_names=var.index[::-1], path=path)
        with pytest.raises(Exception):  # noqa: B017 (h5py and zarr raise their own errors)
            root.create_group("written")


def test_in_memory_blocks_are_the_matrix_itself():
    X = sp.random(50, 8, density=0.3, format="csr", dtype=np.float32, random_state=0)
    assert as_block(X) is X
    dense = np.asfortranarray(X.toarray())
    assert as_block(dense) is dense
    seen = []
    reduce_row_blocks(
        X, lambda v, a, b, first: seen.append((v is X, a, b, first)), lambda x, y: x,
        bounds=row_bounds(50, 20),
    )  # fmt: skip
    assert seen == [(True, 0, 20, 0), (True, 20, 40, 20), (True, 40, 50, 40)]


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_blocks_are_merged_in_order_whatever_the_threads(n_jobs):
    X = np.arange(100.0).reshape(25, 4)
    order = reduce_row_blocks(
        X, lambda v, a, b, first: [first], lambda x, y: x + y,
        bounds=row_bounds(25, 3), n_jobs=n_jobs,
    )  # fmt: skip
    assert order == list(range(0, 25, 3))
    csc = sp.csc_matrix(X)
    parts = reduce_gene_blocks(
        csc, lambda v, cols: list(cols), columns=np.array([0, 2, 3]), size=2, n_jobs=n_jobs
    )
    assert parts == [[0, 2], [3]]


def test_blocks_of_files_are_read_one_at_a_time(tmp_path):
    X = np.arange(60.0).reshape(20, 3)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["X"] = X
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert storage_format(f["X"]) == "dense"
        blocks = reduce_row_blocks(
            f["X"], lambda v, a, b, first: [(v[a:b].copy(), first)], lambda x, y: x + y,
            bounds=row_bounds(20, 7),
        )  # fmt: skip
    assert [len(v) for v, _ in blocks] == [7, 7, 6]
    np.testing.assert_array_equal(np.vstack([v for v, _ in blocks]), X)
