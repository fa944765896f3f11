"""Both engines, on random designs: the same optimum, and exact invariances.

The dense engine serves designs with few levels; the blocked engine (the
largest factor eliminated, LAPACK for the rest) those with hundreds or
thousands. On random designs with 214-340 levels both must reach the same
optimum; and for either engine, multiplying a gene by a power of two must
multiply its variances by the square exactly and leave every variance ratio
bitwise unchanged (genes are fitted in units of a power of two near their
standard deviation), multiplying it by any other constant must do so to the
optimiser's precision, and adding a constant must change nothing.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from exhaustive import random_design, random_responses

import scvarpart as svp
from scvarpart.design import DesignError, build_design
from scvarpart.lmm import choose_engine, fit_lmm
from scvarpart.suffstats import design_gram


def _large_design(seed: int):
    """214-340 levels: 170-250 x 40-80 x 2-12, crossed at random, a covariate."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(600, 2500))
    sizes = [int(rng.integers(170, 250)), int(rng.integers(40, 80)), int(rng.integers(2, 12))]
    frame = pd.DataFrame(
        {f"f{j}": pd.Categorical(rng.integers(0, s, n).astype(str)) for j, s in enumerate(sizes)}
    )
    frame["x"] = rng.normal(size=n)
    design = build_design("~ x + (1|f0) + (1|f1) + (1|f2)", frame)
    Zs = [np.eye(f.n_levels)[f.codes] for f in design.factors]
    return design, random_responses(rng, design.X, Zs, 3)


def _tiny_design(seed: int):
    rng = np.random.default_rng(seed)
    while True:
        frame, formula = random_design(rng)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                design = build_design(formula, frame)
        except DesignError:
            continue
        Zs = [np.eye(f.n_levels)[f.codes] for f in design.factors]
        return design, random_responses(rng, design.X, Zs, 3)


def _fit(design, Y, reml, engine="auto"):
    stats = svp.lmm.response_stats(Y, design).response
    return fit_lmm(design_gram(design), stats, reml=reml, engine=engine)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
def test_blocked_engine_reaches_the_dense_engines_optimum(seed, reml):
    design, Y = _large_design(seed)
    assert choose_engine(design_gram(design)) == "blocked"
    blocked = _fit(design, Y, reml)
    dense = _fit(design, Y, reml, engine="dense")
    assert blocked.converged.all() and dense.converged.all()
    np.testing.assert_allclose(blocked.deviance, dense.deviance, rtol=1e-10)
    # the same variances, up to directions in which the criterion is flat
    total = dense.variances.sum(axis=1, keepdims=True) + dense.sigma2[:, None]
    np.testing.assert_allclose(blocked.variances / total, dense.variances / total, atol=1e-5)


DESIGNS = [("tiny", s) for s in range(8)] + [("large", s) for s in range(3)]


def _make(kind, seed):
    return _tiny_design(seed) if kind == "tiny" else _large_design(100 + seed)


@pytest.mark.parametrize(("kind", "seed"), DESIGNS)
@pytest.mark.parametrize("c", [2.0, 0.5, 2.0**-20, 2.0**30])
def test_a_power_of_two_scales_variances_exactly(kind, seed, c):
    design, Y = _make(kind, seed)
    for reml in (False, True):
        ref, out = _fit(design, Y, reml), _fit(design, Y * c, reml)
        ok = ref.error == ""
        np.testing.assert_array_equal(out.error, ref.error)
        np.testing.assert_array_equal(out.gamma[ok], ref.gamma[ok])
        np.testing.assert_array_equal(out.variances[ok], ref.variances[ok] * c**2)
        np.testing.assert_array_equal(out.sigma2[ok], ref.sigma2[ok] * c**2)
        np.testing.assert_array_equal(out.beta[ok], ref.beta[ok] * c)
        nu = design.n_obs - (design.X.shape[1] if reml else 0)
        np.testing.assert_allclose(
            out.deviance[ok], ref.deviance[ok] + nu * np.log(c**2), rtol=1e-12, atol=1e-9
        )


@pytest.mark.parametrize(("kind", "seed"), DESIGNS)
def test_other_scales_and_shifts_change_variances_only_as_they_must(kind, seed):
    design, Y = _make(kind, seed)
    for reml in (False, True):
        ref = _fit(design, Y, reml)
        ok = ref.error == ""
        scaled = _fit(design, Y * 7.3, reml)
        np.testing.assert_allclose(scaled.gamma[ok], ref.gamma[ok], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(
            scaled.variances[ok], ref.variances[ok] * 7.3**2, rtol=1e-6, atol=1e-9
        )
        shifted = _fit(design, Y + 12.5, reml)
        np.testing.assert_allclose(shifted.gamma[ok], ref.gamma[ok], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(shifted.deviance[ok], ref.deviance[ok], rtol=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_many_cells_per_level_search_finds_the_best_of_many_descents(seed):
    """With many observations per level the search is not thorough (closed
    faces, a coarse grid): on partially confounded single-cell-like designs
    (cell types and batches following patients) it must still find the best of
    50 Newton descents from random starts."""
    from scvarpart.lmm.dense import DenseDeviance
    from scvarpart.lmm.fitting import _unit_scale

    rng = np.random.default_rng(seed)
    n = 3000
    patient = rng.integers(0, 8, n)
    ctype = np.where(rng.random(n) < 0.8, patient % 4, rng.integers(0, 4, n))
    batch = np.where(rng.random(n) < 0.9, patient % 3, rng.integers(0, 3, n))
    frame = pd.DataFrame(
        {
            "patient": pd.Categorical(patient.astype(str)),
            "ctype": pd.Categorical(ctype.astype(str)),
            "batch": pd.Categorical(batch.astype(str)),
            "x": rng.normal(size=n),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few levels under ML
        design = build_design("~ x + (1|patient) + (1|ctype) + (1|batch)", frame)
    Zs = [np.eye(f.n_levels)[f.codes] for f in design.factors]
    Y = random_responses(rng, design.X, Zs, 4) * 0.3
    stats = svp.lmm.response_stats(Y, design).response
    gram = design_gram(design)
    unit = _unit_scale(stats)
    for reml in (False, True):
        engine = DenseDeviance(gram, reml)
        assert not engine.thorough()
        fit = fit_lmm(gram, stats, reml=reml)
        for g in range(4):
            starts = np.exp(rng.uniform(np.log(1e-5), np.log(1e3), size=(50, 3)))
            starts[rng.random((50, 3)) < 0.3] = 0.0
            one = stats.scaled(1 / unit).subset([g] * 50)
            _, dev, *_ = engine.minimise(starts, one)
            best = np.nanmin(dev) + engine.nu * np.log(unit[g] ** 2)
            assert fit.deviance[g] <= best + 1e-9 * abs(best)
            assert fit.converged[g]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
def test_blocked_engines_lapack_path_matches_its_sparse_path(seed, reml, monkeypatch):
    """The LAPACK path (for Schur complements that fill in) on designs the sparse one fits.

    The same optima as the dense engine; the same gradient and average information as
    the sparse path at each optimum, including genes with variances at 0, where the
    LAPACK path factorises only the rows of ``S`` that are not the identity's.
    """
    from scvarpart.lmm import blocked

    design, Y = _large_design(seed)
    sparse = _fit(design, Y, reml)
    monkeypatch.setattr(blocked.sk, "analyse", lambda *args: None)
    assert blocked.BlockedDeviance(design_gram(design), reml).lapack is not None
    lapack = _fit(design, Y, reml)
    dense = _fit(design, Y, reml, engine="dense")
    assert lapack.converged.all()
    np.testing.assert_allclose(lapack.deviance, dense.deviance, rtol=1e-10)
    assert (lapack.gamma == 0).any(), "no gene with a variance at 0: the test needs one"
    # at the same point: the sparse path's derivatives at the LAPACK path's optima
    np.testing.assert_allclose(lapack.deviance, sparse.deviance, rtol=1e-10)
    at = np.isclose(lapack.gamma, sparse.gamma, rtol=1e-6, atol=1e-9).all(axis=1)
    assert at.sum() >= len(at) // 2
    np.testing.assert_allclose(lapack.gradient[at], sparse.gradient[at], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lapack.hessian[at], sparse.hessian[at], rtol=1e-5, atol=1e-5)
