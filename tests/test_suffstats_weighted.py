"""The pass with a valued Z (random slopes) and observation weights, against NumPy.

The reference is the definition in float64: the weighted mean ``mu = sum(w y) / sum(w)``,
``sum w (y - mu)^2``, ``Z'W(y - mu)`` and ``X'W(y - mu)``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scvarpart.design import build_design
from scvarpart.suffstats import design_gram, response_stats
from scvarpart.suffstats.gram import centred_fixed, indicator_matrix

FIELDS = ("mean", "ss", "ZtY", "XtY", "n_nonzero")


def _valued_design(n: int, seed: int = 0):
    """Z: three factors' indicators, a slope on the first (its covariate is sometimes 0),
    and a column of negative values; X: an intercept and three covariates.

    Up to five entries per row of Z and three non-constant columns of X: more than one
    sweep of the kernels' unrolled groups.
    """
    rng = np.random.default_rng(seed)
    sizes = (6, 3, 4)
    codes = [rng.integers(0, k, n) for k in sizes]
    offsets = np.cumsum((0, *sizes))
    Z = np.zeros((n, offsets[-1] + sizes[0] + 1))
    for c, o in zip(codes, offsets, strict=False):
        Z[np.arange(n), o + c] = 1.0
    slope = rng.normal(1.0, 2.0, n)
    slope[rng.random(n) < 0.1] = 0.0
    Z[np.arange(n), offsets[-1] + codes[0]] = slope
    Z[:, -1] = rng.normal(-2.0, 1.0, n)
    X = np.column_stack([np.ones(n), rng.normal(3.0, 1.0, (n, 3))])
    return Z, X


def _centred(X: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    w = np.ones(len(X)) if w is None else w
    mean = (X * w[:, None]).sum(axis=0) / w.sum()
    mean[0] = 0.0
    return X - mean


def _expression(n: int, G: int, seed: int = 1, density: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Y = rng.gamma(1.0, 2.0, (n, G))
    Y[rng.random((n, G)) > density] = 0
    Y[:, 0] = 0.0  # an all-zero gene
    return Y


def _direct(Y, Z, X, w):
    """The statistics by their definition, in float64."""
    Y = np.asarray(Y.toarray() if sp.issparse(Y) else Y, dtype=np.float64)
    w = np.ones(len(Y)) if w is None else w
    mu = w @ Y / w.sum()
    mu += w @ (Y - mu) / w.sum()  # a second pass: the mean to the last digit
    Yc = Y - mu
    WYc = w[:, None] * Yc
    return mu, (WYc * Yc).sum(axis=0), (Z.T @ WYc).T, (X.T @ WYc).T


def _check(stats, ref, rtol=1e-12):
    mean, ss, ZtY, XtY = ref
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(stats.ss, ss, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(stats.ZtY, ZtY, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(stats.XtY, XtY, rtol=1e-10, atol=1e-10)


def _same_bits(a, b):
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


_CONVERT = {
    "dense": np.ascontiguousarray,
    "fortran": np.asfortranarray,
    "dense32": lambda Y: Y.astype(np.float32),
    "csr": sp.csr_matrix,
    "csr32": lambda Y: sp.csr_matrix(Y.astype(np.float32)),
    "csc": sp.csc_matrix,
    "csc32": lambda Y: sp.csc_matrix(Y.astype(np.float32)),
    "coo": sp.coo_matrix,
}


@pytest.mark.parametrize("fmt", list(_CONVERT))
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("chunk_rows", [None, 1, 37])
def test_statistics_equal_the_definition(fmt, weighted, chunk_rows):
    """Left-out rows, explicitly stored zeros, float32 read as it is."""
    n_extra = 19
    Z, X = _valued_design(250)
    n = len(Z)
    rng = np.random.default_rng(2)
    w = rng.gamma(2.0, 1.0, n) if weighted else None
    Xc = _centred(X, w)
    keep = np.ones(n + n_extra, dtype=bool)
    keep[rng.choice(n + n_extra, n_extra, replace=False)] = False
    Yin = _CONVERT[fmt](_expression(n + n_extra, 14))
    if sp.issparse(Yin):  # explicitly stored zeros: values, but not non-zero ones
        Yin.data[::9] = 0.0
    Y = (Yin.toarray() if sp.issparse(Yin) else np.asarray(Yin)).astype(np.float64)[keep]
    stats = response_stats(Yin, sp.csr_matrix(Z), Xc, rows=keep, chunk_rows=chunk_rows, weights=w)
    assert stats.n_obs == n
    _check(stats, _direct(Y, Z, Xc, w))
    np.testing.assert_array_equal(stats.n_nonzero, (Y != 0).sum(axis=0))
    assert stats.ss[0] == 0.0 and not stats.ZtY[0].any()


def test_a_dense_z_and_weights_are_taken_as_arrays():
    Z, X = _valued_design(120, seed=3)
    w = list(np.random.default_rng(4).uniform(0.5, 2.0, len(Z)))
    Y = _expression(len(Z), 6, seed=5)
    stats = response_stats(Y, Z, _centred(X, np.array(w)), weights=w)
    _check(stats, _direct(Y, Z, _centred(X, np.array(w)), np.array(w)))


_LAYOUTS = {
    "dense": np.ascontiguousarray,
    "fortran": np.asfortranarray,
    "csr": sp.csr_matrix,
    "csc": sp.csc_matrix,
}


@pytest.mark.parametrize("layout", list(_LAYOUTS))
@pytest.mark.parametrize("genes", [slice(3, 11), np.array([9, 1, 4, 1, 9, 17])])
def test_bitwise_the_same_for_gene_subsets_and_threads(layout, genes):
    """A gene's statistics do not depend on the other genes computed, nor on n_jobs."""
    Z, X = _valued_design(260, seed=6)
    w = np.random.default_rng(7).gamma(2.0, 1.0, len(Z))
    Y = _LAYOUTS[layout](_expression(len(Z), 20, seed=8).astype(np.float32))
    args = (sp.csr_matrix(Z), _centred(X, w))
    whole = response_stats(Y, *args, chunk_rows=17, weights=w)
    for n_jobs in (1, 2):
        part = response_stats(Y, *args, chunk_rows=17, weights=w, genes=genes, n_jobs=n_jobs)
        _same_bits(part, whole.subset(genes))
        _same_bits(response_stats(Y, *args, chunk_rows=17, weights=w, n_jobs=n_jobs), whole)
    ref = _direct(Y, Z, args[1], w)
    _check(whole.subset(genes), tuple(a[genes] for a in ref))


def test_row_and_column_major_arrays_give_the_same_bits():
    Z, X = _valued_design(200, seed=9)
    w = np.random.default_rng(10).gamma(2.0, 1.0, len(Z))
    Y = _expression(len(Z), 9, seed=11, density=0.8)
    args = (sp.csr_matrix(Z), _centred(X, w))
    by_rows = response_stats(np.ascontiguousarray(Y), *args, chunk_rows=50, weights=w)
    by_columns = response_stats(np.asfortranarray(Y), *args, chunk_rows=50, weights=w)
    _same_bits(by_rows, by_columns)


@pytest.mark.parametrize("sparse", [False, True])
def test_dask_array(sparse):
    da = pytest.importorskip("dask.array")
    import dask

    Z, X = _valued_design(230, seed=12)
    w = np.random.default_rng(13).gamma(2.0, 1.0, len(Z))
    Xc = _centred(X, w)
    Y = _expression(len(Z), 11, seed=14)
    lazy = da.from_array(sp.csr_matrix(Y) if sparse else Y, chunks=(60, 4), asarray=False)
    genes = np.array([7, 2, 2, 10])
    with dask.config.set(scheduler="synchronous"):
        stats = response_stats(lazy, sp.csr_matrix(Z), Xc, weights=w)
        part = response_stats(lazy, sp.csr_matrix(Z), Xc, weights=w, genes=genes)
    ref = _direct(Y, Z, Xc, w)
    _check(stats, ref)
    _check(part, tuple(a[genes] for a in ref))


@pytest.mark.parametrize("kind", ["h5_dense", "h5_csr", "h5_csc", "zarr_dense"])
def test_files_read_block_by_block_give_the_bits_of_memory(kind, tmp_path):
    h5py = pytest.importorskip("h5py")
    from anndata.io import sparse_dataset, write_elem

    Z, X = _valued_design(210, seed=15)
    w = np.random.default_rng(16).gamma(2.0, 1.0, len(Z))
    args = (sp.csr_matrix(Z), _centred(X, w))
    Y = _expression(len(Z), 30, seed=17).astype(np.float32)
    in_memory = {"dense": Y, "csr": sp.csr_matrix(Y), "csc": sp.csc_matrix(Y)}[kind.split("_")[1]]
    genes = slice(5, 23)
    whole = response_stats(in_memory, *args, chunk_rows=40, weights=w).subset(genes)
    if kind == "zarr_dense":
        zarr = pytest.importorskip("zarr")
        on_disk = zarr.create_array(
            tmp_path / "y.zarr", shape=Y.shape, chunks=(50, 30), dtype=Y.dtype
        )
        on_disk[:] = Y
        handle = None
    else:
        handle = h5py.File(tmp_path / "y.h5", "w")
        write_elem(handle, "Y", in_memory)
        on_disk = handle["Y"] if kind == "h5_dense" else sparse_dataset(handle["Y"])
    try:
        for n_jobs in (1, 2):
            part = response_stats(
                on_disk, *args, chunk_rows=40, weights=w, genes=genes, n_jobs=n_jobs
            )
            _same_bits(part, whole)
    finally:
        if handle is not None:
            handle.close()


@pytest.mark.parametrize("fmt", ["dense", "fortran", "csr", "csc"])
@pytest.mark.parametrize("chunk_rows", [None, 1, 64])
def test_a_large_mean_keeps_its_digits(fmt, chunk_rows):
    """Weighted shifted sums merged by the weighted Chan update keep 8 digits and more.

    ``sum(w y^2) - W mu^2`` would lose every one of them here.
    """
    Z, X = _valued_design(240, seed=18)
    rng = np.random.default_rng(19)
    w = rng.gamma(2.0, 1.0, len(Z))
    Y = 1e8 + rng.normal(0, 1e-2, (len(Z), 3))
    Y[:, 2] += 1e3 * (np.arange(len(Z)) > 150)  # a jump between blocks
    Xc = _centred(X, w)
    stats = response_stats(_LAYOUTS[fmt](Y), sp.csr_matrix(Z), Xc, chunk_rows=chunk_rows, weights=w)
    mean, exact, _, _ = _direct(Y, Z, Xc, w)
    np.testing.assert_allclose(stats.ss, exact, rtol=1e-8)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-15)
    naive = (w @ Y**2) - w.sum() * mean**2
    assert np.abs(naive / exact - 1).max() > 1e-2  # what the test guards against
    if fmt in ("dense", "fortran"):  # every value is read: the products are shifted too
        # centred products do not depend on a shift; Y - Y[0] is exact (Sterbenz)
        _, _, ZtY, XtY = _direct(Y - Y[0], Z, Xc, w)
        scale = np.sqrt(exact)  # the products' natural size
        assert (np.abs(stats.ZtY - ZtY).max(axis=1) / scale < 1e-9).all()
        assert (np.abs(stats.XtY - XtY).max(axis=1) / scale < 1e-9).all()


@pytest.mark.parametrize("fmt", ["dense", "fortran", "csr", "csc"])
def test_weights_of_one_give_the_unweighted_indicator_statistics(fmt):
    """Unit weights and an indicator Z: the weighted kernels give the unweighted bits.

    Multiplying by a weight of 1 and summing ones are exact; 1e-12 is what matters.
    """
    Z, X = _valued_design(300, seed=20)
    Zi = sp.csr_matrix(Z[:, :13])  # the indicators only
    Xc = _centred(X, None)
    Y = _LAYOUTS[fmt](_expression(len(Z), 16, seed=21))
    keep = np.ones(len(Z), dtype=bool)
    keep[::7] = False
    args = (Zi[keep], Xc[keep])
    plain = response_stats(Y, *args, rows=keep, chunk_rows=41)
    ones = response_stats(Y, *args, rows=keep, chunk_rows=41, weights=np.ones(keep.sum()))
    for field in ("mean", "ss", "ZtY", "XtY"):
        np.testing.assert_allclose(
            getattr(ones, field), getattr(plain, field), rtol=1e-12, atol=1e-12, err_msg=field
        )
    _same_bits(ones, plain)


def test_valued_z_without_weights_equals_unit_weights():
    Z, X = _valued_design(150, seed=22)
    Y = sp.csr_matrix(_expression(len(Z), 8, seed=23))
    args = (sp.csr_matrix(Z), _centred(X, None))
    plain = response_stats(Y, *args, chunk_rows=30)
    _same_bits(plain, response_stats(Y, *args, chunk_rows=30, weights=np.ones(len(Z))))
    _check(plain, _direct(Y.toarray(), Z, args[1], None))


def test_nonfinite_values_give_nonfinite_statistics():
    Z, X = _valued_design(100, seed=24)
    w = np.random.default_rng(25).gamma(2.0, 1.0, len(Z))
    Y = _expression(len(Z), 5, seed=26)
    Y[10, 2] = np.nan
    Y[99, 4] = np.inf
    for layout in _LAYOUTS.values():
        stats = response_stats(layout(Y), sp.csr_matrix(Z), _centred(X, w), weights=w)
        np.testing.assert_array_equal(stats.nonfinite(), [False, False, True, False, True])


@pytest.mark.parametrize(
    "weights", [np.ones(5), -np.ones(50), np.zeros(50), np.full(50, np.nan), np.ones((50, 1))]
)
def test_bad_weights_are_refused(weights):
    Z, X = _valued_design(50, seed=27)
    with pytest.raises(ValueError, match="weights"):
        response_stats(np.ones((50, 2)), Z, X, weights=weights)


def test_no_rows_no_genes_no_random_effects():
    Z, X = _valued_design(40, seed=28)
    w = np.full(40, 2.0)
    Y = _expression(40, 3, seed=29)
    none = response_stats(Y[:, :0], Z, X, weights=w)
    assert len(none) == 0 and none.ZtY.shape == (0, Z.shape[1])
    stats = response_stats(Y, sp.csr_matrix((40, 0)), _centred(X, w), weights=w)
    assert stats.ZtY.shape == (3, 0)
    _check(stats, _direct(Y, np.zeros((40, 0)), _centred(X, w), w))


# the design's cross-products


@pytest.fixture(scope="module")
def design():
    rng = np.random.default_rng(30)
    n = 200
    obs = pd.DataFrame(
        {
            "g": pd.Categorical(rng.integers(0, 5, n)),
            "h": pd.Categorical(rng.integers(0, 3, n)),
            "x": rng.normal(5, 1, n),
            "t": rng.normal(0, 2, n),
        }
    )
    return build_design("~ x + t + (1|g) + (1|h)", obs)


def test_unweighted_gram_is_unchanged(design):
    gram = design_gram(design)
    assert gram.weight_sum is None and gram.log_weights == 0.0
    Z = indicator_matrix(design)
    Xc, x_mean = centred_fixed(design)
    np.testing.assert_array_equal(gram.ZtZ.toarray(), (Z.T @ Z).toarray())
    np.testing.assert_array_equal(gram.XtX, Xc.T @ Xc)
    np.testing.assert_array_equal(gram.x_mean, x_mean)
    np.testing.assert_array_equal(gram.x_cov, gram.XtX / design.n_obs * (gram.x_cov != 0))


def test_weighted_gram_of_a_valued_z_matches_dense_products(design):
    rng = np.random.default_rng(31)
    n = design.n_obs
    w = rng.gamma(2.0, 1.0, n)
    g = design.factors[0]
    slope = sp.csr_matrix((design.X[:, 2], (np.arange(n), g.codes)), shape=(n, g.n_levels))
    Z = sp.hstack([indicator_matrix(design), slope]).tocsr()
    sizes = (g.n_levels, design.factors[1].n_levels, g.n_levels)
    gram = design_gram(design, Z, weights=w, factor_sizes=sizes)
    Xc, x_mean = centred_fixed(design, w)
    np.testing.assert_allclose(x_mean[1:], np.average(design.X[:, 1:], axis=0, weights=w))
    assert x_mean[0] == 0.0
    np.testing.assert_allclose(w @ Xc[:, 1:], 0.0, atol=1e-9)
    Zd, W = Z.toarray(), np.diag(w)
    np.testing.assert_allclose(gram.ZtZ.toarray(), Zd.T @ W @ Zd, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(gram.ZtX, Zd.T @ W @ Xc, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(gram.XtX, Xc.T @ W @ Xc, rtol=1e-12, atol=1e-10)
    np.testing.assert_array_equal(gram.ZtZ.toarray(), gram.ZtZ.toarray().T)
    np.testing.assert_array_equal(gram.XtX, gram.XtX.T)
    assert gram.factor_sizes == sizes and gram.n_levels == Z.shape[1]
    assert gram.weight_sum == pytest.approx(w.sum(), rel=1e-14)
    assert gram.log_weights == pytest.approx(np.log(w).sum(), rel=1e-13)
    cov = np.cov(design.X[:, 1:], rowvar=False, aweights=w, bias=True)
    np.testing.assert_allclose(gram.x_cov[1:, 1:], cov, rtol=1e-12)
    assert not gram.x_cov[0].any()


def test_weighted_gram_and_pass_agree(design):
    """The gram's centring and the pass's: one design, one set of weights.

    For a response that is a column of X, X'W(y - mu) is a column of the gram's X'WX.
    """
    w = np.random.default_rng(32).gamma(2.0, 1.0, design.n_obs)
    Z = indicator_matrix(design)
    gram = design_gram(design, Z, weights=w)
    Xc, _ = centred_fixed(design, w)
    stats = response_stats(design.X[:, 1:], Z, Xc, weights=w)
    np.testing.assert_allclose(stats.XtY, gram.XtX[:, 1:].T, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(stats.ZtY, gram.ZtX[:, 1:].T, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(stats.ss, np.diag(gram.XtX)[1:], rtol=1e-12)


def test_gram_refuses_a_z_its_factors_do_not_describe(design):
    n = design.n_obs
    Z = sp.hstack([indicator_matrix(design), sp.csr_matrix(np.ones((n, 1)))]).tocsr()
    with pytest.raises(ValueError, match="factor_sizes"):
        design_gram(design, Z)
    with pytest.raises(ValueError, match="weights"):
        design_gram(design, weights=np.ones(n - 1))
