"""The array-level API: svp.lmm.fit / response_stats / fit_stats, without AnnData."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scvarpart as svp
from scvarpart.design import build_design
from scvarpart.suffstats.gram import indicator_matrix

FORMULA = "~ log_umi + (1|patient) + (1|chemistry) + (1|day) + (1|operator)"


@pytest.fixture(scope="module")
def example():
    return svp.datasets.crossed_example(n_cells=500, n_genes=12, seed=7)


def _same(a, b, **tol):
    for name in ("fractions", "variance", "per_gene", "beta", "beta_se"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), **tol)


def test_fit_is_what_tl_stores(example):
    """The AnnData layer is a thin user of svp.lmm: the same numbers, bit for bit."""
    res = svp.lmm.fit(
        FORMULA,
        example.X,
        obs=example.obs,
        var_names=example.var_names,
        method="REML",
        batch=["chemistry", "day", "operator"],
        signal="patient",
    )
    stored = svp.tl.variance_partition(
        example,
        FORMULA,
        method="REML",
        batch=["chemistry", "day", "operator"],
        signal="patient",
        inplace=False,
        progress=False,
    )
    _same(res, stored, check_names=False)
    assert res.params["engine"] == stored.params["engine"] == "dense"


def test_design_object_sparse_input_and_default_names(example):
    design = build_design(FORMULA, example.obs)
    dense = svp.lmm.fit(design, np.asarray(example.X), method="REML")
    sparse = svp.lmm.fit(design, sp.csr_matrix(example.X), method="REML")
    assert dense.genes.tolist() == [str(j) for j in range(example.n_vars)]
    _same(dense, sparse, rtol=1e-10, atol=1e-12)


def test_from_cross_products_equals_the_pass(example):
    """Statistics computed elsewhere (uncentred products, as FLASH-MM takes them) give
    the fit of the pass over the data."""
    design = build_design(FORMULA, example.obs)
    X, Z, Y = design.X, indicator_matrix(design), np.asarray(example.X, dtype=float)
    stats = svp.lmm.GeneStatistics.from_cross_products(
        n_obs=len(X),
        factor_sizes=[f.n_levels for f in design.factors],
        XtX=X.T @ X,
        ZtX=Z.T @ X,
        ZtZ=Z.T @ Z,
        XtY=Y.T @ X,
        ZtY=(Z.T @ Y).T,
        yty=(Y * Y).sum(axis=0),
        genes=example.var_names,
        factors=[f.name for f in design.factors],
        columns=design.columns,
    )
    assert stats.components == design.components
    ours = svp.lmm.fit_stats(stats, method="ML")
    ref = svp.lmm.fit(FORMULA, Y, obs=example.obs, var_names=example.var_names, method="ML")
    _same(ours, ref, rtol=1e-7, atol=1e-10)


def test_from_cross_products_checks_its_input():
    rng = np.random.default_rng(0)
    Z = sp.csr_matrix(np.eye(3)[rng.integers(0, 3, 30)])
    X = np.column_stack([np.ones(30), rng.normal(size=30)])
    Y = rng.normal(size=(30, 2))
    good = {
        "n_obs": 30,
        "factor_sizes": [3],
        "XtX": X.T @ X,
        "ZtX": Z.T @ X,
        "ZtZ": Z.T @ Z,
        "XtY": Y.T @ X,
        "ZtY": (Z.T @ Y).T,
        "yty": (Y * Y).sum(axis=0),
    }
    svp.lmm.GeneStatistics.from_cross_products(**good)
    with pytest.raises(ValueError, match=r"XtY has shape \(2, 2\); expected \(3, 2\)"):
        svp.lmm.GeneStatistics.from_cross_products(**{**good, "yty": np.ones(3)})
    Xs = X[:, ::-1]
    with pytest.raises(ValueError, match="first column of X must be the intercept"):
        svp.lmm.GeneStatistics.from_cross_products(
            **{**good, "XtX": Xs.T @ Xs, "ZtX": Z.T @ Xs, "XtY": Y.T @ Xs}
        )


def test_bad_input_is_named(example):
    Y = np.asarray(example.X, dtype=float).copy()
    with pytest.raises(ValueError, match="needs obs="):
        svp.lmm.fit(FORMULA, Y)
    with pytest.raises(ValueError, match="left-hand side"):
        svp.lmm.fit("y ~ (1|patient)", Y, obs=example.obs)
    with pytest.raises(ValueError, match="Y has 499 rows; the design has 500"):
        svp.lmm.fit(FORMULA, Y[:-1], obs=example.obs)
    with pytest.raises(ValueError, match="var_names has 3 names for the 12 columns"):
        svp.lmm.fit(FORMULA, Y, obs=example.obs, var_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"batch=\['nope'\]: \['nope'\] are not terms"):
        svp.lmm.fit(FORMULA, Y, obs=example.obs, batch="nope", signal="patient")
    with pytest.raises(ValueError, match="method must be 'ML' or 'REML'"):
        svp.lmm.fit_stats(svp.lmm.response_stats(Y, FORMULA, obs=example.obs), method="GLS")
    Y[3, 5] = np.nan
    with pytest.raises(ValueError, match=r"Y has NaN or infinite values in 1 gene\(s\): 'g5'"):
        svp.lmm.fit(FORMULA, Y, obs=example.obs, var_names=[f"g{j}" for j in range(12)])
