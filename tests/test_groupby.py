"""Per-group fits (``groupby=``): each group as if fitted alone, stored, read and drawn."""

from __future__ import annotations

import warnings

import anndata as ad
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import scvarpart as svp

matplotlib.use("Agg")

FORMULA = "~ (1|patient) + (1|chemistry)"


def _cells(n_cells: int = 1200, n_genes: int = 8) -> ad.AnnData:
    adata = svp.datasets.crossed_example(n_cells=n_cells, n_genes=n_genes, seed=2)
    rng = np.random.default_rng(0)
    adata.obs["cell_type"] = pd.Categorical(
        rng.choice(["T", "B", "NK"], adata.n_obs), categories=["T", "B", "NK", "pDC"]
    )
    return adata


def _fit(adata, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return svp.tl.variance_partition(
            adata, FORMULA, groupby="cell_type", method="REML", progress=False, **kw
        )


def test_each_group_is_its_own_fit():
    adata = _cells()
    _fit(adata, batch="chemistry", signal="patient")
    for group in ("T", "B", "NK"):
        alone = adata[adata.obs["cell_type"] == group].copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            svp.tl.variance_partition(alone, FORMULA, method="REML", batch="chemistry",
                                      signal="patient", progress=False)  # fmt: skip
        pd.testing.assert_frame_equal(
            svp.get.result(adata, group=group).fractions, svp.get.result(alone).fractions
        )
        pd.testing.assert_frame_equal(svp.get.rho_df(adata, group=group), svp.get.rho_df(alone))
    table = svp.get.groups(adata)
    # categories' order; a category without cells is not a group
    assert table["group"].tolist() == ["T", "B", "NK"]
    assert (table["status"] == "fitted").all()
    assert (table["n_fitted_genes"] == 8).all()
    assert adata.uns["varpart"]["params"]["groupby"] == "cell_type"
    assert not any(c.startswith("varpart") for c in adata.var.columns)


def test_stacked_tables_and_errors():
    adata = _cells()
    _fit(adata, batch="chemistry", signal="patient")
    long = svp.get.varpart_df(adata)
    assert long.columns[0] == "group"
    assert list(long["group"].cat.categories) == ["T", "B", "NK"]
    assert len(long) == 3 * 8 * 3  # groups x genes x components
    rho = svp.get.rho_df(adata)
    assert rho.index.names == ["group", "gene"]
    with pytest.raises(KeyError, match=r"per group of 'cell_type': read one group's with group="):
        svp.get.result(adata)
    with pytest.raises(KeyError, match="No group 'X'"):
        svp.get.result(adata, group="X")
    plain = _cells()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svp.tl.variance_partition(plain, FORMULA, progress=False)
    with pytest.raises(ValueError, match="not fitted per group"):
        svp.get.varpart_df(plain, group="T")


def test_groups_that_cannot_be_fitted_are_skipped_with_their_reason():
    adata = _cells()
    # every NK cell in one chemistry: a grouping factor with one level in that group
    nk = adata.obs["cell_type"] == "NK"
    first = adata.obs["chemistry"].cat.categories[0]
    adata = adata[~nk | (adata.obs["chemistry"] == first)].copy()
    with pytest.warns(UserWarning, match=r"1 of 3 groups of 'cell_type' are not fitted: NK"):
        svp.tl.variance_partition(adata, FORMULA, groupby="cell_type", method="REML",
                                  progress=False)  # fmt: skip
    table = svp.get.groups(adata).set_index("group")
    assert table.loc["NK", "status"] == "skipped"
    assert "chemistry" in table.loc["NK", "reason"]
    with pytest.raises(KeyError, match="Group 'NK' was not fitted"):
        svp.get.result(adata, group="NK")
    assert svp.get.varpart_df(adata)["group"].unique().tolist() == ["T", "B"]


def test_no_group_fittable_is_an_error_before_any_fit():
    adata = _cells(300)
    adata.obs["cell_type"] = [f"c{i}" for i in range(adata.n_obs)]  # one cell each
    with pytest.raises(ValueError, match="No group of 'cell_type' can be fitted"):
        _fit(adata)
    with pytest.raises(KeyError, match="groupby='kind' is not a column"):
        svp.tl.variance_partition(adata, FORMULA, groupby="kind")


def test_round_trip_and_replacing_an_ungrouped_result(tmp_path):
    adata = _cells()
    # a name that is a path in a file
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.rename_categories({"NK": "T/NK"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svp.tl.variance_partition(adata, FORMULA, progress=False)
    assert "varpart" in adata.varm
    _fit(adata, test="lrt")
    assert "varpart" not in adata.varm and not any(c.startswith("varpart_") for c in adata.var)
    for path in (tmp_path / "a.h5ad", tmp_path / "a.zarr"):
        (adata.write_h5ad if path.suffix == ".h5ad" else adata.write_zarr)(path)
        back = (ad.read_h5ad if path.suffix == ".h5ad" else ad.read_zarr)(path)
        for group in ("T", "T/NK"):
            a, b = svp.get.result(adata, group=group), svp.get.result(back, group=group)
            pd.testing.assert_frame_equal(a.fractions, b.fractions)
            pd.testing.assert_frame_equal(a.qvalue, b.qvalue)
        pd.testing.assert_frame_equal(svp.get.groups(adata), svp.get.groups(back))


def test_inplace_false_and_copy():
    adata = _cells()
    out = _fit(adata, inplace=False)
    assert list(out) == ["T", "B", "NK"] and "varpart" not in adata.uns
    copy = _fit(adata, copy=True)
    assert "varpart" in copy.uns and "varpart" not in adata.uns


def test_pseudobulk_groups_use_their_expressed_genes():
    cells = svp.datasets.simulate_counts(8000, 120, seed=0, counts=True)
    rng = np.random.default_rng(1)
    cells.obs["cell_type"] = rng.choice(["B", "T"], cells.n_obs, p=[0.3, 0.7])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bulk = svp.pp.pseudobulk(cells, "library", groupby="cell_type")
    _fit(bulk)
    expressed = bulk.varm["expressed"]
    for group in ("B", "T"):
        genes = svp.get.result(bulk, group=group).genes
        assert list(genes) == list(bulk.var_names[expressed[group].to_numpy()])
    table = svp.get.groups(bulk).set_index("group")
    assert table.loc["B", "n_genes"] == expressed["B"].sum()


def test_faceted_plot():
    adata = _cells()
    _fit(adata, batch="chemistry", signal="patient")
    axes = svp.pl.variance_partition(adata, show=False)
    assert [a.get_title().split()[0] for a in axes] == ["T", "B", "NK"]
    ticks = {tuple(t.get_text() for t in a.get_xticklabels()) for a in axes}
    assert len(ticks) == 1  # one order of the components in every panel
    axes = svp.pl.variance_partition(adata, groups=["NK"], show=False)
    assert len(axes) == 1
    _, one = plt.subplots()
    with pytest.raises(ValueError, match=r"draws 3 panel\(s\) \(groups T, B, NK\)"):
        svp.pl.variance_partition(adata, ax=one, show=False)
