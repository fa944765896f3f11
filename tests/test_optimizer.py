"""The optimiser: independent of its starting point, exact on the boundary, and robust
to genes that cannot be fitted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import DATA

import scvarpart as svp
from scvarpart.design import build_design
from scvarpart.lmm import DenseDeviance, fit_lmm
from scvarpart.suffstats import design_gram, response_stats
from scvarpart.suffstats.gram import centred_fixed, indicator_matrix

FORMULA = "~ (1|patient) + (1|chemistry) + (1|day) + (1|operator)"


@pytest.fixture(scope="module")
def synth():
    expr = pd.read_csv(DATA / "synth_crossed" / "expr.csv.gz", index_col=0)
    obs = pd.read_csv(DATA / "synth_crossed" / "obs.csv", index_col=0)
    design = build_design(FORMULA, obs)
    stats = svp.lmm.response_stats(expr.to_numpy(), design).response
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
        gamma, dev, _, _, converged, _ = engine.minimise(np.full((G, 4), start), stats)
        assert converged.all(), start
        results.append((gamma, dev))
    for gamma, dev in results[1:]:
        np.testing.assert_allclose(dev, results[0][1], rtol=1e-12)
        np.testing.assert_allclose(gamma, results[0][0], rtol=1e-4, atol=1e-7)
        np.testing.assert_array_equal(gamma == 0, results[0][0] == 0)


def _middle_factor_largest():
    """Three crossed factors, the largest (eliminated) one neither first nor last."""
    rng = np.random.default_rng(7)
    n = 400
    obs = pd.DataFrame(
        {
            "a": pd.Categorical(rng.integers(0, 5, n)),
            "b": pd.Categorical(rng.integers(0, 14, n)),
            "c": pd.Categorical(rng.integers(0, 3, n)),
            "x": rng.normal(size=n),
        }
    )
    design = build_design("~ x + (1|a) + (1|b) + (1|c)", obs)
    Y = rng.normal(size=(n, 6)) + rng.normal(size=(14, 6))[obs["b"].cat.codes]
    stats = svp.lmm.response_stats(Y, design).response
    return design_gram(design), stats


@pytest.mark.parametrize("case", ["synth", "middle"])
@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
def test_analytic_derivatives_match_finite_differences(synth, case, reml):
    gram, stats = synth if case == "synth" else _middle_factor_largest()
    k = len(gram.factor_sizes)
    rng = np.random.default_rng(0)
    engine = DenseDeviance(gram, reml)
    x = rng.uniform(0.05, 2.0, (len(stats), k))
    _, grad, hess = engine.derivatives(x, stats)
    h = 1e-6
    for j in range(k):
        e = np.zeros(k)
        e[j] = h
        fp = engine.deviance(x + e, stats)
        fm = engine.deviance(x - e, stats)
        np.testing.assert_allclose(grad[:, j], (fp - fm) / (2 * h), rtol=1e-5, atol=1e-4)
        _, gp, _ = engine.derivatives(x + e, stats)
        _, gm, _ = engine.derivatives(x - e, stats)
        np.testing.assert_allclose(hess[:, :, j], (gp - gm) / (2 * h), rtol=1e-4, atol=1e-2)
    # one-sided at the boundary: the gradient in gamma does not vanish at 0
    x[:, 0] = 0.0
    f0, grad0, _ = engine.derivatives(x, stats)
    e = np.zeros(k)
    e[0] = h
    np.testing.assert_allclose(grad0[:, 0], (engine.deviance(x + e, stats) - f0) / h, rtol=1e-3)


def test_boundary_optimum_satisfies_first_order_conditions(synth):
    """At a converged fit a variance is exactly 0 only where the derivative there is
    non-negative, and the free variances have a vanishing gradient."""
    gram, stats = synth
    for reml in (False, True):
        engine = DenseDeviance(gram, reml)
        gamma, _, _, _, converged, _ = engine.minimise(np.ones((len(stats), 4)), stats)
        assert converged.all()
        _, grad, hess = engine.derivatives(gamma, stats)
        at_zero = gamma == 0
        assert at_zero.any() and (~at_zero).any()
        assert (grad[at_zero] >= 0).all()
        # free gradient relative to the curvature: the Newton step left is tiny
        free = ~at_zero
        scaled = np.abs(grad) / np.sqrt(np.abs(np.einsum("gii->gi", hess)))
        assert (scaled[free] < 1e-4).all()


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
    reasons = res.errors["reason"]
    assert list(reasons.index) == ["gene0001", "gene0002", "gene0003", "gene0004"]
    assert reasons["gene0001"] == "constant expression (no variance)"
    assert reasons["gene0002"] == "all values are zero"
    assert "fixed effects explain the gene exactly" in reasons["gene0003"]
    assert "constant within the levels of 'patient'" in reasons["gene0004"]
    assert res.variance.iloc[:4].isna().all().all()
    assert not res.per_gene["converged"].iloc[:4].any()

    alone = svp.tl.variance_partition(
        adata[:, 4:].copy(), svp.datasets.EXAMPLE_FORMULA, inplace=False
    )
    pd.testing.assert_frame_equal(res.variance.iloc[4:], alone.variance, rtol=1e-12)


def test_fit_lmm_validates_engine(synth):
    gram, stats = synth
    with pytest.raises(ValueError, match="engine must be"):
        fit_lmm(gram, stats.subset([0]), engine="magic")


@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
def test_unbounded_likelihood_is_classified_stably(reml):
    """A gene the levels explain has no finite optimum however it is perturbed at
    rounding level; a gene with a small but real residual always has one."""
    adata = svp.datasets.crossed_example(n_cells=400, n_genes=2, seed=5)
    design = build_design(svp.datasets.EXAMPLE_FORMULA, adata.obs)
    gram = design_gram(design)
    Z = indicator_matrix(design)
    rng = np.random.default_rng(0)
    exact = Z @ rng.normal(size=Z.shape[1]) + design.X @ rng.normal(size=design.X.shape[1])
    noise = rng.normal(size=len(exact))
    for scale, unbounded in [
        (0.0, True),
        (1e-13, True),
        (1e-11, True),
        (1e-3, False),
        (3e-3, False),
    ]:
        reasons, variances = [], []
        for trial in range(5):
            jitter = scale * noise * (1 + trial) if scale else 0.0
            y = (exact + jitter)[:, None]
            stats = response_stats(y, Z, centred_fixed(design)[0])
            fit = fit_lmm(gram, stats, reml=reml)
            reasons.append(fit.error[0])
            variances.append(fit.sigma2[0])
        if unbounded:
            assert all(r.startswith("no finite optimum") for r in reasons), (scale, reasons)
            assert np.isnan(variances).all()
        else:
            assert reasons == [""] * 5, (scale, reasons)
            assert (np.asarray(variances) > 0).all()


def test_blas_runs_one_thread_inside_the_fits(synth, monkeypatch):
    """n_jobs is the only parallelism: BLAS threads are limited to one while the
    genes are fitted (many BLAS threads per worker oversubscribe the cores), and
    restored afterwards."""
    from threadpoolctl import threadpool_info

    import scvarpart.lmm.fitting as fit_module

    gram, stats = synth
    seen = []
    original = fit_module.moment_start

    def spy(*args, **kwargs):
        seen.extend(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
        return original(*args, **kwargs)

    before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    monkeypatch.setattr(fit_module, "moment_start", spy)
    fit_lmm(gram, stats.subset(np.arange(6)), n_jobs=2, batch_size=2)
    assert seen and set(seen) == {1}
    assert [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"] == before


@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
@pytest.mark.parametrize("j", [0, 2])
def test_a_held_variance_descends_on_its_face(synth, reml, j):
    """A descent holding variance ``j`` at 0 (the global search's neighbouring-face
    descents) keeps it exactly 0 and ends where the model without term ``j``, fitted
    from the same start, does: the same criterion, the same other variances."""
    from scvarpart.lmm._dense_kernel import workspace
    from scvarpart.lmm.lrt import _without
    from scvarpart.lmm.newton import _minimise_gene
    from scvarpart.lmm.terms import ReTerm

    gram, stats = synth
    engine = DenseDeviance(gram, reml)
    terms = [ReTerm(str(i), size) for i, size in enumerate(gram.factor_sizes)]
    smaller, smaller_stats, _ = _without(gram, stats, terms, j)
    reduced = DenseDeviance(smaller, reml)
    start = np.full(engine.k, 0.5)
    start[j] = 0.0
    zy, xy, ss = (np.ascontiguousarray(a) for a in (stats.ZtY, stats.XtY, stats.ss))
    w = workspace(engine.design, engine.k)
    grad, hess = np.empty(engine.k), np.empty((engine.k, engine.k))
    x_red, dev_red = reduced.minimise(np.full((len(stats), engine.k - 1), 0.5), smaller_stats)[:2]
    for g in range(len(stats)):
        x = start.copy()
        f, converged, _, abandoned, _ = _minimise_gene(
            x, zy[g], xy[g], ss[g], engine.design, w, engine.options, grad, hess,
            np.empty((0, engine.k)), 0, j,
        )  # fmt: skip
        assert converged and not abandoned
        assert x[j] == 0.0
        assert f == pytest.approx(dev_red[g], rel=1e-10)
        np.testing.assert_allclose(np.delete(x, j), x_red[g], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
def test_a_release_starts_from_what_its_held_descent_left(synth, reml):
    """The release of a face's optimum reuses the factorisation or derivatives its held
    descent ended with, and ends exactly where a release evaluated afresh does: the same
    optimum, criterion and iterations, bit for bit."""
    from scvarpart.lmm._dense_kernel import workspace
    from scvarpart.lmm.newton import UNKNOWN, _minimise_gene, held_options

    gram, stats = synth
    engine = DenseDeviance(gram, reml)
    dz, opt, k = engine.design, engine.options, engine.k
    zy, xy, ss = (np.ascontiguousarray(a) for a in (stats.ZtY, stats.XtY, stats.ss))
    none = np.empty((0, k))
    left_kinds = set()
    for g in range(len(stats)):
        for j in range(k):
            x = np.full(k, 0.3)
            x[j] = 0.0
            w = workspace(dz, k)
            grad, hess = np.empty(k), np.empty((k, k))
            f, _, _, abandoned, left = _minimise_gene(
                x, zy[g], xy[g], ss[g], dz, w, held_options(opt), grad, hess, none, 0, j
            )
            assert not abandoned and np.isfinite(f)
            left_kinds.add(int(left))
            fresh = x.copy()
            reused = _minimise_gene(
                x, zy[g], xy[g], ss[g], dz, w, opt, grad, hess, none, 0, -1, f, left
            )
            again = _minimise_gene(
                fresh, zy[g], xy[g], ss[g], dz, workspace(dz, k), opt, np.empty(k),
                np.empty((k, k)), none, 0, -1,
            )  # fmt: skip
            assert reused[:4] == again[:4]
            np.testing.assert_array_equal(x, fresh)
    assert UNKNOWN not in left_kinds and len(left_kinds) == 2  # both kinds were reused
