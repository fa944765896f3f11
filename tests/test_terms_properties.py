"""Guarantees of every fit that hold for slopes, kinship and weights too.

Results do not depend on ``n_jobs``, on the batches genes are fitted in, or on which
other genes are fitted; multiplying a gene by a power of two multiplies its variances
by the square exactly; a variance on the boundary is exactly 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import scvarpart as svp

N_CELLS, N_GENES = 400, 12


def _data(kind: str):
    rng = np.random.default_rng(7)
    obs = pd.DataFrame(
        {
            "patient": pd.Categorical(rng.integers(0, 8, N_CELLS).astype(str)),
            "batch": pd.Categorical(rng.integers(0, 3, N_CELLS).astype(str)),
            "time": rng.uniform(-1, 1, N_CELLS),
            "w": rng.uniform(0.5, 2.0, N_CELLS),
        }
    )
    p = obs["patient"].cat.codes.to_numpy()
    b = obs["batch"].cat.codes.to_numpy()
    Y = rng.normal(size=(N_CELLS, N_GENES))
    Y += rng.normal(size=(8, N_GENES))[p] * rng.choice([0, 0.5, 2], N_GENES)
    Y += (rng.normal(size=(8, N_GENES))[p] * obs["time"].to_numpy()[:, None]) * 0.7
    Y += rng.normal(size=(3, N_GENES))[b] * rng.choice([0, 1], N_GENES)
    options: dict = {}
    formula = "~ time + (1 + time|patient) + (1|batch)"
    if kind == "kinship":
        levels = list(obs["patient"].cat.categories)
        G = rng.normal(size=(8, 20))
        options["covariance"] = {
            "patient": pd.DataFrame(G @ G.T / 20 + 0.3 * np.eye(8), index=levels, columns=levels)
        }
        formula = "~ time + (1|patient) + (1|batch)"
    if kind == "weights":
        options["weights"] = "w"
        formula = "~ time + (0 + time|patient) + (1|batch)"
    return obs, Y, formula, options


KINDS = ["slopes", "kinship", "weights"]


def _fit(obs, Y, formula, options, **kw):
    return svp.lmm.fit(formula, Y, obs=obs, method="REML", store_blups=True, **options, **kw)


def _tables(res):
    tables = [res.fractions, res.variance, res.beta, res.beta_se, res.varcorr, res.theta]
    return tables + [res.blups[t] for t in res.blups] + [res.blup_var[t] for t in res.blup_var]


@pytest.mark.parametrize("kind", KINDS)
def test_results_do_not_depend_on_jobs_batches_or_other_genes(kind):
    obs, Y, formula, options = _data(kind)
    one = _fit(obs, Y, formula, options)
    many = _fit(obs, Y, formula, options, n_jobs=2, batch_size=3)
    alone = _fit(obs, Y[:, [5]], formula, options)
    for a, b in zip(_tables(one), _tables(many), strict=True):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    for a, b in zip(_tables(one), _tables(alone), strict=True):
        np.testing.assert_array_equal(a.to_numpy()[5], b.to_numpy()[0])


@pytest.mark.parametrize("kind", KINDS)
def test_scaling_a_gene_by_a_power_of_two_is_exact(kind):
    obs, Y, formula, options = _data(kind)
    a = _fit(obs, Y, formula, options)
    b = _fit(obs, Y * 8.0, formula, options)
    pd.testing.assert_frame_equal(a.fractions, b.fractions, check_exact=True)
    pd.testing.assert_frame_equal(a.variance * 64.0, b.variance, check_exact=True)
    pd.testing.assert_frame_equal(a.theta, b.theta, check_exact=True)


def test_boundary_variances_are_exactly_zero():
    obs, _, formula, options = _data("slopes")
    rng = np.random.default_rng(1)
    y = rng.normal(size=N_CELLS) + 0.8 * obs["time"].to_numpy()  # no patient, no batch
    res = _fit(obs, y[:, None], formula, options)
    assert res.per_gene["singular"].iloc[0]
    v = res.varcorr.iloc[0]
    assert (
        v["batch|(Intercept)"] == 0.0 or v["patient|time"] == 0.0 or v["patient|(Intercept)"] == 0.0
    )
    assert (res.theta.iloc[0] == 0.0).any()
