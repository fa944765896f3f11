"""Invariances a correct fit must have, on the example dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scvarpart as svp

FORMULA = svp.datasets.EXAMPLE_FORMULA
N_GENES = 40


@pytest.fixture(scope="module")
def base():
    adata = svp.datasets.crossed_example(n_cells=800, n_genes=N_GENES, seed=3)
    res = svp.tl.variance_partition(adata, FORMULA, inplace=False)
    return adata, res


def _fit(adata, **kw):
    return svp.tl.variance_partition(adata, FORMULA, inplace=False, **kw)


def _same(a, b, rtol=1e-10, atol=1e-12):
    for key in ("fractions", "variance", "beta", "beta_se"):
        pd.testing.assert_frame_equal(getattr(a, key), getattr(b, key), rtol=rtol, atol=atol)
    np.testing.assert_allclose(a.per_gene["loglik"], b.per_gene["loglik"], rtol=rtol)
    np.testing.assert_array_equal(a.per_gene["singular"], b.per_gene["singular"])


def test_gene_order_does_not_matter(base):
    adata, res = base
    perm = np.random.default_rng(0).permutation(adata.n_vars)
    shuffled = _fit(adata[:, perm].copy())
    _same(shuffled.subset(adata.var_names), res)


def test_cell_order_does_not_matter(base):
    adata, res = base
    perm = np.random.default_rng(1).permutation(adata.n_obs)
    _same(_fit(adata[perm].copy()), res, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("c", [1e-3, 7.5, -2.0])
def test_scaling_scales_variances_by_c_squared(base, c):
    adata, _res = base
    scaled = _as64(adata)
    scaled.X = scaled.X * c
    ref = _fit(_as64(adata))
    out = _fit(scaled)
    pd.testing.assert_frame_equal(out.variance, ref.variance * c**2, rtol=1e-7, atol=1e-14)
    pd.testing.assert_frame_equal(out.fractions, ref.fractions, rtol=1e-7, atol=1e-10)
    # the log-likelihood shifts by -n log|c| (ML)
    np.testing.assert_allclose(
        out.per_gene["loglik"],
        ref.per_gene["loglik"] - adata.n_obs * np.log(abs(c)),
        rtol=1e-9,
    )


def _as64(adata):
    out = adata.copy()
    out.X = out.X.astype(np.float64)
    return out


@pytest.mark.parametrize("shift", [5.0, -1e4])
def test_adding_a_constant_changes_nothing(base, shift):
    adata, _ = base
    ref = _fit(_as64(adata))
    shifted = _as64(adata)
    shifted.X = shifted.X + shift
    out = _fit(shifted)
    # a shift of 1e4 costs ~4 digits of the float64 input: compare accordingly
    tol = 1e-9 if abs(shift) < 100 else 1e-6
    pd.testing.assert_frame_equal(out.variance, ref.variance, rtol=tol, atol=1e-10)
    np.testing.assert_allclose(out.per_gene["loglik"], ref.per_gene["loglik"], rtol=tol)


def test_relabelling_levels_changes_nothing(base):
    adata, res = base
    relabelled = adata.copy()
    for col in ("patient", "chemistry", "day", "operator"):
        cats = list(relabelled.obs[col].cat.categories)
        new = {c: f"L{len(cats) - i}_{col}" for i, c in enumerate(cats)}
        relabelled.obs[col] = relabelled.obs[col].cat.rename_categories(new)
        relabelled.obs[col] = relabelled.obs[col].cat.reorder_categories(sorted(new.values()))
    _same(_fit(relabelled), res, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize(
    "kw",
    [{"n_jobs": 2}, {"batch_size": 7}, {"batch_size": 1, "n_jobs": 2}, {"chunk_size": 97}],
)
def test_parallelism_and_batching_give_identical_results(base, kw):
    adata, res = base
    _same(_fit(adata, **kw), res)


def test_process_backend_gives_identical_results(base):
    from joblib import parallel_config

    adata, res = base
    with parallel_config(backend="loky"):
        _same(_fit(adata, n_jobs=2, batch_size=8), res)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_sparse_input_equals_dense(base, fmt):
    adata, _res = base
    sparse = adata.copy()
    dense = sparse.X.copy()
    dense[np.abs(dense) < 0.5] = 0  # make it genuinely sparse
    sparse.X = sp.csr_matrix(dense) if fmt == "csr" else sp.csc_matrix(dense)
    ref = adata.copy()
    ref.X = dense
    _same(_fit(sparse), _fit(ref))


def test_block_size_of_the_pass_changes_results_only_by_rounding():
    """chunk_size cuts the pass over the cells into other blocks, so the sums
    differ by rounding: fractions and rho must agree to 1e-9 (the global search
    is not thrown off by such perturbations)."""
    adata = svp.datasets.simulate_counts(3000, 120, seed=4)
    kw = dict(batch=["chemistry", "day", "operator"], signal=["patient"], method="REML")
    ref = svp.tl.variance_partition(
        adata, svp.datasets.SIMULATION_FORMULA, inplace=False, progress=False, **kw
    )
    for chunk_size in (97, 1000):
        out = svp.tl.variance_partition(
            adata,
            svp.datasets.SIMULATION_FORMULA,
            inplace=False,
            progress=False,
            chunk_size=chunk_size,
            **kw,
        )
        pd.testing.assert_frame_equal(out.fractions, ref.fractions, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(out.per_gene["rho"], ref.per_gene["rho"], rtol=1e-9, atol=1e-12)
