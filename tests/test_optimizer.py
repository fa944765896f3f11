"""The optimiser: independent of its starting point, exact on the boundary, and robust
to genes that cannot be fitted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import DATA

import scvarpart as svp
from scvarpart.design import build_design
from scvarpart.lmm import DenseDeviance, fit_lmm, projected_newton
from scvarpart.suffstats import design_gram, response_stats
from scvarpart.suffstats.gram import centred_fixed, indicator_matrix

FORMULA = "~ (1|patient) + (1|chemistry) + (1|day) + (1|operator)"


@pytest.fixture(scope="module")
def synth():
    expr = pd.read_csv(DATA / "synth_crossed" / "expr.csv.gz", index_col=0)
    obs = pd.read_csv(DATA / "synth_crossed" / "obs.csv", index_col=0)
    design = build_design(FORMULA, obs)
    stats = response_stats(expr.to_numpy(), indicator_matrix(design), centred_fixed(design)[0])
    return design_gram(design), stats


@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
def test_same_optimum_from_any_start(synth, reml):
    """Starting next to zero, where derivatives in lme4's theta = sqrt(gamma) vanish and
    variancePartition 1.39 gets stuck, must reach the same optimum as any other start."""
    gram, stats = synth
    engine = DenseDeviance(gram, reml)
    G = len(stats)
    results = []
    for start in (1e-10, 1e-4, 1.0, 50.0):
        res = projected_newton(
            lambda x, i: engine.deviance(x, stats.subset(i)),
            lambda x, i: engine.derivatives(x, stats.subset(i)),
            np.full((G, 4), start),
        )
        assert res.converged.all(), start
        results.append(res)
    for res in results[1:]:
        np.testing.assert_allclose(res.fun, results[0].fun, rtol=1e-12)
        np.testing.assert_allclose(res.x, results[0].x, rtol=1e-4, atol=1e-7)
        np.testing.assert_array_equal(res.x == 0, results[0].x == 0)


def test_analytic_derivatives_match_finite_differences(synth):
    gram, stats = synth
    rng = np.random.default_rng(0)
    for reml in (False, True):
        engine = DenseDeviance(gram, reml)
        x = rng.uniform(0.05, 2.0, (len(stats), 4))
        _, grad, hess = engine.derivatives(x, stats)
        h = 1e-6
        for j in range(4):
            e = np.zeros(4)
            e[j] = h
            fp = engine.deviance(x + e, stats)
            fm = engine.deviance(x - e, stats)
            np.testing.assert_allclose(grad[:, j], (fp - fm) / (2 * h), rtol=1e-5, atol=1e-4)
            _, gp, _ = engine.derivatives(x + e, stats)
            _, gm, _ = engine.derivatives(x - e, stats)
            np.testing.assert_allclose(hess[:, :, j], (gp - gm) / (2 * h), rtol=1e-4, atol=1e-2)


def test_projected_newton_on_a_bound_constrained_quadratic():
    # min (x - a)' A (x - a) over x >= 0, with the optimum of one coordinate on the bound
    A = np.array([[2.0, 0.5], [0.5, 1.0]])
    a = np.array([[1.0, -2.0], [3.0, 4.0]])

    def value(x, i):
        d = x - a[i]
        return np.einsum("gi,ij,gj->g", d, A, d)

    def derivs(x, i):
        d = x - a[i]
        return value(x, i), 2 * d @ A, np.broadcast_to(2 * A, (len(i), 2, 2))

    res = projected_newton(value, derivs, np.ones((2, 2)))
    assert res.converged.all()
    # first problem: x2 = 0 on the bound, x1 minimises the quadratic given x2 = 0
    assert res.x[0, 1] == 0.0
    # d/dx1 [2 (x1 - 1)^2 + 2 (x1 - 1) + 4] = 0  ->  x1 = 0.5
    assert res.x[0, 0] == pytest.approx(0.5, rel=1e-12)
    np.testing.assert_allclose(res.x[1], [3.0, 4.0])


def test_unfittable_genes_get_reasons_and_the_rest_go_on():
    adata = svp.datasets.crossed_example(n_cells=600, n_genes=6, seed=2)
    X = adata.X.astype(float)
    codes = adata.obs["patient"].cat.codes.to_numpy().astype(float)
    X[:, 0] = 3.0
    X[:, 1] = 0.0
    X[:, 2] = 2 * adata.obs["log_umi"].to_numpy() + 1  # exactly the fixed effects
    X[:, 3] = codes  # constant within patients: no residual variance
    adata.X = X
    res = svp.tl.variance_partition(adata, svp.datasets.EXAMPLE_FORMULA, inplace=False)
    reasons = res["uns"]["errors"]["reason"]
    assert list(reasons.index) == ["gene0001", "gene0002", "gene0003", "gene0004"]
    assert reasons["gene0001"] == "constant expression (no variance)"
    assert reasons["gene0002"] == "all values are zero"
    assert "fixed effects explain the gene exactly" in reasons["gene0003"]
    assert "constant within the levels of 'patient'" in reasons["gene0004"]
    assert res["variance"].iloc[:4].isna().all().all()
    assert not res["var"]["varpart_converged"].iloc[:4].any()

    alone = svp.tl.variance_partition(
        adata[:, 4:].copy(), svp.datasets.EXAMPLE_FORMULA, inplace=False
    )
    pd.testing.assert_frame_equal(res["variance"].iloc[4:], alone["variance"], rtol=1e-12)


def test_fit_lmm_validates_engine(synth):
    gram, stats = synth
    with pytest.raises(ValueError, match="engine must be"):
        fit_lmm(gram, stats.subset([0]), engine="magic")
