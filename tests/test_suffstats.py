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


def _direct(Y, design):
    Z = indicator_matrix(design).toarray()
    Xc, _ = centred_fixed(design)
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
        sp.csr_array,
    ],
    ids=["dense64", "dense32", "csr", "csc", "coo", "csr32", "csr_array"],
)
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


def test_centred_sum_of_squares_survives_a_large_mean(design):
    """sum(y^2) - n mean^2 would lose every digit here; the chunked Chan update does not."""
    rng = np.random.default_rng(4)
    Y = 1e6 + rng.normal(0, 1e-2, (design.n_obs, 3))
    stats = response_stats(Y, indicator_matrix(design), centred_fixed(design)[0], chunk_rows=64)
    exact = ((Y - Y.mean(axis=0)) ** 2).sum(axis=0)
    np.testing.assert_allclose(stats.ss, exact, rtol=1e-6)
    naive = (Y**2).sum(axis=0) - len(Y) * Y.mean(axis=0) ** 2
    assert np.abs(naive / exact - 1).max() > 1e-2  # what the test guards against


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
    """Only the small per-gene products (genes x levels) may become dense arrays."""
    Y = sp.csr_matrix(_expression(design.n_obs, 8))
    shapes = []
    for cls in (sp.csr_matrix, sp.csc_matrix):
        orig = cls.toarray

        def spy(self, *a, _orig=orig, **k):
            shapes.append(self.shape)
            return _orig(self, *a, **k)

        monkeypatch.setattr(cls, "toarray", spy)
    response_stats(Y, indicator_matrix(design), centred_fixed(design)[0])
    assert shapes and all(design.n_obs not in shape for shape in shapes), shapes


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
@pytest.mark.parametrize("genes", [slice(5, 17), np.array([0, 3, 4, 20, 24])])
def test_gene_subsets_are_bitwise_identical_to_the_whole(design, fmt, genes):
    """A chunk of genes gets exactly the statistics it gets in a run on all genes:
    what makes a scatter over gene chunks reproduce the single run."""
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
