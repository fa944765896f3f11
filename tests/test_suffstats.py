"""The one pass over the data against direct dense computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scvarpart.design import build_design
from scvarpart.suffstats import design_gram, nonfinite_columns, response_stats
from scvarpart.suffstats.gram import centred_fixed, indicator_matrix


@pytest.fixture(scope="module")
def design():
    rng = np.random.default_rng(0)
    n = 300
    obs = pd.DataFrame(
        {
            "g": pd.Categorical(rng.integers(0, 7, n)),
            "h": pd.Categorical(rng.integers(0, 3, n)),
            "x": rng.normal(5, 1, n),
        }
    )
    return build_design("~ x + (1|g) + (1|h)", obs)


def _expression(n, G, seed=1, density=0.3):
    rng = np.random.default_rng(seed)
    Y = rng.gamma(1.0, 2.0, (n, G))
    Y[rng.random((n, G)) > density] = 0
    Y[:, 0] = 0.0  # an all-zero gene
    return Y


def _formats(Y):
    return {
        "dense": np.ascontiguousarray(Y),
        "fortran": np.asfortranarray(Y),
        "csr": sp.csr_matrix(Y),
        "csc": sp.csc_matrix(Y),
    }


def _direct(Y, design):
    Z = indicator_matrix(design).toarray()
    Xc, _ = centred_fixed(design)
    with np.errstate(invalid="ignore"):  # genes with NaN or inf
        Yc = Y - Y.mean(axis=0)
        return Y.mean(axis=0), (Yc**2).sum(axis=0), (Z.T @ Yc).T, (Xc.T @ Yc).T


@pytest.mark.parametrize(
    "convert",
    [
        np.asarray,
        lambda Y: Y.astype(np.float32),
        sp.csr_matrix,
        sp.csc_matrix,
        sp.coo_matrix,
        lambda Y: sp.csr_matrix(Y.astype(np.float32)),
        lambda Y: sp.csc_matrix(Y.astype(np.float32)),
        sp.csr_array,
        np.asfortranarray,
        lambda Y: np.asfortranarray(Y.astype(np.float32)),
        lambda Y: (Y * 100).astype(np.int32),
        lambda Y: sp.csr_matrix((Y * 100).astype(np.int64)),
        lambda Y: Y.astype(np.float16),
    ],
    ids=[
        "dense64", "dense32", "csr", "csc", "coo", "csr32", "csc32", "csr_array", "fortran64",
        "fortran32", "int32", "csr_int64", "float16",
    ],
)  # fmt: skip
@pytest.mark.parametrize("chunk_rows", [None, 1, 37])
def test_statistics_equal_direct_computation(design, convert, chunk_rows):
    Y = _expression(design.n_obs, 25)
    Yin = convert(Y)
    Y64 = (Yin.toarray() if sp.issparse(Yin) else np.asarray(Yin)).astype(np.float64)
    stats = response_stats(
        Yin, indicator_matrix(design), centred_fixed(design)[0], chunk_rows=chunk_rows
    )
    mean, ss, ZtY, XtY = _direct(Y64, design)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(stats.ss, ss, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.ZtY, ZtY, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(stats.XtY, XtY, rtol=1e-10, atol=1e-10)
    assert stats.ss[0] == 0.0


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_row_mask_selects_observations(design, fmt):
    n_extra = 17
    Y = _expression(design.n_obs + n_extra, 10, seed=2)
    keep = np.ones(len(Y), dtype=bool)
    keep[np.random.default_rng(3).choice(len(Y), n_extra, replace=False)] = False
    Yin = {"dense": Y, "csr": sp.csr_matrix(Y), "csc": sp.csc_matrix(Y)}[fmt]
    stats = response_stats(
        Yin, indicator_matrix(design), centred_fixed(design)[0], rows=keep, chunk_rows=50
    )
    _mean, ss, ZtY, _ = _direct(Y[keep], design)
    np.testing.assert_allclose(stats.ss, ss, rtol=1e-12)
    np.testing.assert_allclose(stats.ZtY, ZtY, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fmt", ["dense", "fortran", "csr", "csc"])
@pytest.mark.parametrize("chunk_rows", [None, 1, 64])
def test_centred_sum_of_squares_survives_a_large_mean(design, fmt, chunk_rows):
    """Shifted sums merged by Chan's update keep the digits of a large mean.

    ``sum(y^2) - n mean^2`` would lose every one of them here.
    """
    rng = np.random.default_rng(4)
    Y = 1e8 + rng.normal(0, 1e-2, (design.n_obs, 3))
    Y[:, 2] += 1e3 * (np.arange(design.n_obs) > 200)  # a jump between blocks
    Yin = _formats(Y)[fmt]
    stats = response_stats(
        Yin, indicator_matrix(design), centred_fixed(design)[0], chunk_rows=chunk_rows
    )
    exact = ((Y - Y.mean(axis=0)) ** 2).sum(axis=0)  # the two-pass algorithm
    np.testing.assert_allclose(stats.ss, exact, rtol=1e-9)
    np.testing.assert_allclose(stats.mean, Y.mean(axis=0), rtol=1e-15)
    naive = (Y**2).sum(axis=0) - len(Y) * Y.mean(axis=0) ** 2
    assert np.abs(naive / exact - 1).max() > 1e-2  # what the test guards against
    if fmt in ("dense", "fortran"):  # every value is read: the products are shifted too
        # centred products do not depend on a shift; Y - Y[0] is exact (Sterbenz)
        _, _, ZtY, XtY = _direct(Y - Y[0], design)
        scale = np.sqrt(exact)  # the products' natural size
        assert (np.abs(stats.ZtY - ZtY).max(axis=1) / scale < 1e-9).all()
        assert (np.abs(stats.XtY - XtY).max(axis=1) / scale < 1e-9).all()


def test_design_gram_matches_dense_products(design):
    gram = design_gram(design)
    Z = indicator_matrix(design).toarray()
    Xc, x_mean = centred_fixed(design)
    np.testing.assert_allclose(gram.ZtZ.toarray(), Z.T @ Z)
    np.testing.assert_allclose(gram.ZtX, Z.T @ Xc, atol=1e-12)
    np.testing.assert_allclose(gram.XtX, Xc.T @ Xc, atol=1e-10)
    assert gram.factor_sizes == (7, 3)
    assert x_mean[0] == 0 and x_mean[1] == pytest.approx(design.X[:, 1].mean())
    # each factor's own block of Z'Z is diagonal (the structure the engines exploit)
    block = gram.ZtZ.toarray()[:7, :7]
    assert np.count_nonzero(block - np.diag(np.diag(block))) == 0


def test_nonfinite_columns_finds_every_bad_gene():
    Y = np.ones((20, 6))
    Y[3, 1] = np.nan
    Y[19, 4] = np.inf
    for conv in (np.asarray, sp.csr_matrix, sp.csc_matrix):
        np.testing.assert_array_equal(nonfinite_columns(conv(Y), chunk_rows=4), [1, 4])
    assert len(nonfinite_columns(np.ones((3, 3)))) == 0


def test_sparse_input_is_never_densified(design, monkeypatch):
    """Not even a block: the kernels read the stored values where they are."""
    Y = sp.csr_matrix(_expression(design.n_obs, 8))
    for cls in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix):
        for method in ("toarray", "todense"):

            def refuse(self, *a, _m=method, **k):
                pytest.fail(f"{_m} of a {self.shape} matrix")

            monkeypatch.setattr(cls, method, refuse)
    response_stats(Y, indicator_matrix(design), centred_fixed(design)[0], chunk_rows=50)


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
@pytest.mark.parametrize("genes", [slice(5, 17), np.array([0, 3, 4, 20, 24])])
def test_gene_subsets_are_bitwise_identical_to_the_whole(design, fmt, genes):
    """A chunk of genes gets exactly the statistics it gets in a run on all genes.

    This is what makes a scatter over gene chunks reproduce the single run.
    """
    Y = _expression(design.n_obs, 25, seed=6)
    Yin = {"dense": Y, "csr": sp.csr_matrix(Y), "csc": sp.csc_matrix(Y)}[fmt]
    args = (indicator_matrix(design), centred_fixed(design)[0])
    whole = response_stats(Yin, *args, chunk_rows=70).subset(genes)
    part = response_stats(Yin, *args, chunk_rows=70, genes=genes)
    for field in ("mean", "ss", "ZtY", "XtY", "n_nonzero"):
        np.testing.assert_array_equal(getattr(part, field), getattr(whole, field))


def test_nonzero_counts(design):
    Y = _expression(design.n_obs, 10, seed=7)
    Ys = sp.csr_matrix(Y)
    Ys.data[:5] = 0.0  # explicitly stored zeros are not counted
    expected = (Ys.toarray() != 0).sum(axis=0)
    stats = response_stats(Ys, indicator_matrix(design), centred_fixed(design)[0], chunk_rows=40)
    np.testing.assert_array_equal(stats.n_nonzero, expected)


@pytest.fixture(scope="module")
def wide_design():
    """Five factors and four fixed-effect columns: more than one sweep of the kernels."""
    rng = np.random.default_rng(10)
    n = 260
    obs = pd.DataFrame(
        {
            **{
                f: pd.Categorical(rng.integers(0, k, n))
                for f, k in zip("abcde", (6, 3, 4, 5, 2), strict=True)
            },
            **{x: rng.normal(3, 1, n) for x in ("x1", "x2", "x3")},
        }
    )
    return build_design("~ x1 + x2 + x3 + (1|a) + (1|b) + (1|c) + (1|d) + (1|e)", obs)


def _reference(Y, design, keep):
    """Plain NumPy in float64 on the kept rows, with NaN where a gene has NaN or inf."""
    return _direct(np.asarray(Y, dtype=np.float64)[keep], design)


_LAYOUTS = {
    "csr": sp.csr_matrix,
    "csc": sp.csc_matrix,
    "dense": np.ascontiguousarray,
    "fortran": np.asfortranarray,
}


@pytest.mark.parametrize("layout", list(_LAYOUTS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("genes", [None, slice(3, 11), np.array([9, 1, 4])])
def test_kernels_equal_a_numpy_reference(wide_design, layout, dtype, genes):
    """Every layout and dtype, explicit zeros, left-out rows, gene subsets, NaN and inf."""
    n_extra = 23
    n = wide_design.n_obs + n_extra
    Y = _expression(n, 12, seed=11).astype(dtype)
    keep = np.ones(n, dtype=bool)
    keep[np.random.default_rng(12).choice(n, n_extra, replace=False)] = False
    Y[~keep, 5] = np.nan  # in left-out rows only: not a problem
    Y[np.flatnonzero(keep)[7], 6] = np.nan
    Y[np.flatnonzero(keep)[-1], 8] = -np.inf
    Yin = _LAYOUTS[layout](Y)
    if sp.issparse(Yin):  # explicitly stored zeros: values, but not non-zero ones
        some = np.arange(0, Yin.nnz, 7)
        Yin.data[some[np.isfinite(Yin.data[some])]] = 0.0
        Y = Yin.toarray()
    args = (indicator_matrix(wide_design), centred_fixed(wide_design)[0])
    stats = response_stats(Yin, *args, rows=keep, genes=genes, chunk_rows=40)
    cols = np.arange(12) if genes is None else np.arange(12)[genes]
    mean, ss, ZtY, XtY = (a[cols] for a in _reference(Y, wide_design, keep))
    bad = np.isin(cols, [6, 8])
    np.testing.assert_array_equal(stats.nonfinite(), bad)
    np.testing.assert_allclose(stats.mean[~bad], mean[~bad], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(stats.ss[~bad], ss[~bad], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.ZtY[~bad], ZtY[~bad], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(stats.XtY[~bad], XtY[~bad], rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(stats.n_nonzero, (Y[keep][:, cols] != 0).sum(axis=0))


@pytest.mark.parametrize("layout", list(_LAYOUTS))
def test_bitwise_identical_for_every_number_of_threads(wide_design, layout):
    Y = _LAYOUTS[layout](_expression(wide_design.n_obs, 30, seed=13).astype(np.float32))
    args = (indicator_matrix(wide_design), centred_fixed(wide_design)[0])
    runs = [response_stats(Y, *args, chunk_rows=17, n_jobs=k) for k in (1, 2, 3)]
    for other in runs[1:]:
        for field in ("mean", "ss", "ZtY", "XtY", "n_nonzero"):
            np.testing.assert_array_equal(getattr(other, field), getattr(runs[0], field))


def test_row_and_column_major_arrays_give_the_same_bits(wide_design):
    Y = _expression(wide_design.n_obs, 9, seed=14, density=0.8)
    args = (indicator_matrix(wide_design), centred_fixed(wide_design)[0])
    by_rows = response_stats(np.ascontiguousarray(Y), *args, chunk_rows=50)
    by_columns = response_stats(np.asfortranarray(Y), *args, chunk_rows=50)
    for field in ("mean", "ss", "ZtY", "XtY", "n_nonzero"):
        np.testing.assert_array_equal(getattr(by_rows, field), getattr(by_columns, field))


def test_duplicate_entries_are_summed(design):
    """A CSR matrix with duplicated entries means their sums, as scipy defines it."""
    Y = sp.csr_matrix(_expression(design.n_obs, 6, seed=15))
    rows = np.repeat(np.arange(Y.shape[0]), np.diff(Y.indptr))
    half = Y.data / 2
    dup = sp.csr_matrix(
        (np.concatenate([half, half]), (np.tile(rows, 2), np.tile(Y.indices, 2))), shape=Y.shape
    )
    dup.has_canonical_format = False
    args = (indicator_matrix(design), centred_fixed(design)[0])
    got, want = response_stats(dup, *args), response_stats(Y, *args)
    np.testing.assert_allclose(got.ss, want.ss, rtol=1e-13)
    np.testing.assert_allclose(got.ZtY, want.ZtY, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got.n_nonzero, want.n_nonzero)


@pytest.mark.parametrize("layout", ["csr", "dense", "fortran"])
def test_memory_is_read_in_place(design, layout):
    """float32 values are not converted nor copied: NumPy allocates next to nothing."""
    import tracemalloc

    rng = np.random.default_rng(16)
    Y = rng.gamma(1.0, 2.0, (design.n_obs * 10, 2000)).astype(np.float32)
    Y[rng.random(Y.shape) > 0.3] = 0
    Y = _LAYOUTS[layout](Y)
    size = Y.data.nbytes + Y.indices.nbytes if sp.issparse(Y) else Y.nbytes
    Z = sp.vstack([indicator_matrix(design)] * 10).tocsr()
    Xc = np.vstack([centred_fixed(design)[0]] * 10)
    response_stats(Y[:10], Z[:10], Xc[:10])  # compiled before measuring
    tracemalloc.start()
    response_stats(Y, Z, Xc, chunk_rows=1000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.1 * size, (peak, size)


def test_no_random_effects_and_empty_inputs(design):
    Y = _expression(design.n_obs, 5, seed=17)
    Xc = centred_fixed(design)[0]
    stats = response_stats(Y, sp.csr_matrix((design.n_obs, 0)), Xc)
    assert stats.ZtY.shape == (5, 0)
    _, ss, _, XtY = _direct(Y, design)
    np.testing.assert_allclose(stats.ss, ss, rtol=1e-12)
    np.testing.assert_allclose(stats.XtY, XtY, rtol=1e-10, atol=1e-10)
    none = response_stats(Y[:, :0], indicator_matrix(design), Xc)
    assert len(none) == 0 and none.ZtY.shape == (0, 10)
