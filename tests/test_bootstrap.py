"""The parametric bootstrap from simulated sufficient statistics (``n_boot=``).

The simulated statistics against statistics of responses simulated cell by cell from
the same model (their means and standard deviations, with and without weights, and a
model with a random slope); the intervals' determinism (seed, gene order, chunks,
``n_jobs``); their storage; and bad options refused before any data are read.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scvarpart as svp
from scvarpart.lmm.bootstrap import DesignFactor, simulate_statistics
from scvarpart.lmm.random_terms import scalar_infos

FORMULA = svp.datasets.EXAMPLE_FORMULA


def _obs(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "a": pd.Categorical(rng.integers(0, 6, n).astype(str)),
            "b": pd.Categorical(rng.integers(0, 4, n).astype(str)),
            "x": rng.normal(size=n),
            "w": rng.uniform(0.5, 2.0, n),
        }
    )


@pytest.mark.parametrize(
    ("formula", "weights", "theta"),
    [
        ("~ x + (1|a) + (1|b)", None, [0.8, 0.3]),
        ("~ x + (1|a) + (1|b)", "w", [0.8, 0.3]),
        ("~ x + (1 + x|a) + (1|b)", None, [0.7, 0.2, 0.4, 0.5]),
    ],
    ids=["intercepts", "weights", "slope"],
)
def test_simulated_statistics_have_the_moments_of_statistics_of_simulated_cells(
    formula, weights, theta
):
    obs = _obs()
    rng = np.random.default_rng(1)
    stats = svp.lmm.response_stats(np.zeros((len(obs), 1)), formula, obs=obs, weights=weights)
    gram = stats.gram
    terms = [t.term for t in stats.terms or scalar_infos(stats.factors, gram.factor_sizes)]
    beta_c, sigma2 = np.array([[1.0, 0.5]]), np.array([2.0])
    theta = np.array([theta])
    B = 4000
    sim = simulate_statistics(DesignFactor(gram), terms, beta_c, sigma2, theta, ["g"], B, 7)
    # the same model, cell by cell: y = X_c beta + Z Lambda u + e / sqrt(w)
    design = svp.design.build_design(formula, obs, weights=weights)
    Xc = design.X - np.r_[0.0, gram.x_mean[1:]]
    Z = design.random_matrix().toarray()
    blocks = []
    start = 0
    for t in terms:
        T = t.factor(theta[0, start : start + t.n_theta])
        start += t.n_theta
        blocks += [T] * t.n_levels
    Lam = np.zeros((Z.shape[1], Z.shape[1]))
    at = 0
    for T in blocks:
        r = T.shape[0]
        Lam[at : at + r, at : at + r] = T
        at += r
    w = obs["w"].to_numpy() if weights else np.ones(len(obs))
    noise = rng.standard_normal((len(obs), B)) / np.sqrt(w)[:, None]
    b = Lam @ rng.standard_normal((Z.shape[1], B))
    Y = (Xc @ beta_c[0])[:, None] + np.sqrt(sigma2[0]) * (Z @ b + noise)
    cells = svp.lmm.response_stats(Y, formula, obs=obs, weights=weights).response
    for name in ("ss", "mean", "ZtY", "XtY"):
        a = np.atleast_2d(getattr(sim, name).T).T
        c = np.atleast_2d(getattr(cells, name).T).T
        sd = np.maximum(c.std(axis=0), 1e-9)
        # means within 5 standard errors of the difference, spreads within 10%
        z = np.abs(a.mean(axis=0) - c.mean(axis=0)) / (sd * np.sqrt(2 / B))
        assert (z < 5).all(), (name, z.max())
        both = c.std(axis=0) > 1e-9
        np.testing.assert_allclose(a.std(axis=0)[both], c.std(axis=0)[both], rtol=0.1)


@pytest.fixture(scope="module")
def example():
    return svp.datasets.crossed_example(n_cells=1200, n_genes=8, seed=4)


def _boot(adata, genes=None, **kwargs):
    sub = adata if genes is None else adata[:, genes]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return svp.lmm.fit(
            FORMULA,
            sub.X,
            obs=sub.obs,
            var_names=sub.var_names,
            method="REML",
            batch=["chemistry", "day", "operator"],
            signal="patient",
            n_boot=40,
            seed=5,
            **kwargs,
        )


def test_intervals_are_deterministic_whatever_the_other_genes_order_or_n_jobs(example):
    full = _boot(example)
    assert full.boot_low.notna().all().all()
    assert (full.boot_low <= full.boot_high).all().all()
    assert ((full.boot_low >= 0) & (full.boot_high <= 1)).all().all()
    assert (full.per_gene["rho_boot_low"] <= full.per_gene["rho_boot_high"]).all()
    genes = list(example.var_names[[5, 2]])
    part = _boot(example, genes=genes, n_jobs=2, batch_size=3)
    pd.testing.assert_frame_equal(part.boot_low, full.boot_low.loc[genes])
    pd.testing.assert_frame_equal(part.boot_high, full.boot_high.loc[genes])
    pd.testing.assert_series_equal(
        part.per_gene["rho_boot_high"], full.per_gene["rho_boot_high"].loc[genes]
    )
    other = _boot(example, genes=genes[:1])
    other_seed = svp.lmm.fit(
        FORMULA, example[:, genes[:1]].X, obs=example.obs, method="REML", n_boot=40, seed=6
    )
    assert not np.array_equal(other.boot_low.to_numpy(), other_seed.boot_low.to_numpy())


def test_variance_partition_stores_the_intervals(tmp_path):
    adata = svp.datasets.crossed_example(n_cells=600, n_genes=4, seed=2)
    svp.tl.variance_partition(
        adata,
        FORMULA,
        method="REML",
        batch="chemistry",
        signal="patient",
        n_boot=25,
        seed=1,
        ci=0.9,
    )
    params = adata.uns["varpart"]["params"]
    assert (params["n_boot"], params["seed"], params["ci"]) == (25, 1, 0.9)
    low, high = adata.varm["varpart_boot_low"], adata.varm["varpart_boot_high"]
    assert list(low.columns) == list(adata.varm["varpart"].columns)
    assert (low.to_numpy() <= high.to_numpy()).all()
    assert {"varpart_rho_boot_low", "varpart_rho_boot_high"} <= set(adata.var.columns)
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = svp.varpart.VarPartResult.read(ad.read_h5ad(tmp_path / "a.h5ad"))
    pd.testing.assert_frame_equal(back.boot_high, high)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_boot": 5}, "too few"),
        ({"n_boot": -1}, "non-negative integer"),
        ({"n_boot": 2.5}, "non-negative integer"),
        ({"n_boot": 50, "seed": -3}, "seed=-3"),
        ({"n_boot": 50, "ci": 1.5}, "ci=1.5"),
    ],
)
def test_bad_bootstrap_options_are_refused_before_reading_the_data(options, message):
    adata = svp.datasets.crossed_example(n_cells=200, n_genes=2, seed=0)
    adata.X = np.full(adata.shape, np.nan)  # reading the data would fail differently
    with pytest.raises(ValueError, match=message):
        svp.tl.variance_partition(adata, FORMULA, **options)
