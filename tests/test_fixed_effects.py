"""Fixed effects and their standard errors: lme4's ``fixef`` and ``vcov``.

``vcov = sigma^2 (X'V^-1 X)^-1`` at the estimated variances. Checked against lme4 on
its bundled datasets (ML and REML, both engines), and against the definition, with
``V`` built explicitly, on random designs.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, read_reference_csv

import scvarpart as svp
from scvarpart.design import build_design
from scvarpart.suffstats.gram import indicator_matrix

REFERENCE = json.loads((DATA / "lme4_vcov" / "vcov.json").read_text())["fits"]
# every fit with the engine "auto" chooses, and the small designs also with the blocked
# engine (InstEval's "auto" is the blocked engine already)
CASES = [(f, "auto") for f in REFERENCE] + [
    (f, "blocked") for f in REFERENCE if f["dataset"] != "InstEval"
]
IDS = [f"{f['dataset']}-{'REML' if f['REML'] else 'ML'}-{engine}" for f, engine in CASES]


def _columns(ref) -> list[str]:
    cols = ref["columns"]
    return [cols] if isinstance(cols, str) else list(cols)


@pytest.mark.parametrize(("ref", "engine"), CASES, ids=IDS)
def test_standard_errors_match_lme4(ref, engine):
    frame = read_reference_csv(ref["dataset"])
    response, rhs = ref["formula"].split("~")
    stats = svp.lmm.response_stats(frame[[response.strip()]].to_numpy(float), "~" + rhs, obs=frame)
    res = svp.lmm.fit_stats(stats, method="REML" if ref["REML"] else "ML", engine=engine)
    cols = _columns(ref)
    # R names a 0/1 factor's column 'service1'; so does the design
    assert res.beta.columns.tolist() == cols
    # an optimum at least as good as lme4's (run to 1e-12 tolerances)
    criterion = -2 * res.per_gene["loglik"].iloc[0]
    assert criterion <= ref["criterion"] + 1e-9 * abs(ref["criterion"])
    # InstEval's likelihood is flat in dept's variance (14 levels): our optimum, 1.4e-6
    # lower in ML deviance than lme4's, moves the intercept's SE by 1.1e-4 relative
    rtol = 5e-4 if ref["dataset"] == "InstEval" else 1e-4
    np.testing.assert_allclose(
        res.beta.iloc[0], [ref["fixed_effects"][c] for c in cols], rtol=rtol, atol=1e-9
    )
    np.testing.assert_allclose(res.beta_se.iloc[0], [ref["se"][c] for c in cols], rtol=rtol)


def _random_case(rng: np.random.Generator):
    n = int(rng.integers(40, 300))
    k = int(rng.integers(1, 4))
    obs = pd.DataFrame(
        {f"g{j}": rng.integers(0, rng.integers(2, 12), n).astype(str) for j in range(k)}
    )
    obs["x"] = rng.normal(size=n) * rng.choice([1e-2, 1, 1e3]) + rng.normal() * 10
    obs["c"] = rng.choice(["u", "v", "w"], n)
    fixed = rng.choice(["1", "x", "x + c", "c"])
    formula = f"~ {fixed} + " + " + ".join(f"(1|g{j})" for j in range(k))
    effects = sum(
        rng.normal(size=20)[obs[f"g{j}"].astype(int)] * rng.exponential() for j in range(k)
    )
    Y = rng.normal(size=(n, 2)) * rng.exponential() + np.asarray(effects)[:, None] + 5
    return obs, formula, Y


@pytest.mark.parametrize("seed", range(12))
def test_covariance_is_the_gls_covariance(seed):
    """beta and vcov equal the GLS estimate and its covariance with V built explicitly,
    at the estimated variances, for both engines and both criteria."""
    rng = np.random.default_rng(seed)
    for _ in range(100):  # draw again where the design checks refuse a design
        obs, formula, Y = _random_case(rng)
        try:
            design = build_design(formula, obs)
            break
        except ValueError:
            continue
    else:
        pytest.fail("no fittable design in 100 draws")
    X, Z = design.X, indicator_matrix(design).toarray()
    sizes = [f.n_levels for f in design.factors]
    stats = svp.lmm.response_stats(Y, design)
    for method in ("ML", "REML"):
        for engine in ("dense", "blocked"):
            res = svp.lmm.fit_stats(stats, method=method, engine=engine)
            for g in range(Y.shape[1]):
                if res.failed[g]:
                    continue
                variances = res.variance.iloc[g]
                levels = np.repeat([variances[f.name] for f in design.factors], sizes)
                V = variances["Residual"] * np.eye(len(X)) + (Z * levels) @ Z.T
                info = X.T @ np.linalg.solve(V, X)
                cov = np.linalg.inv(info)
                beta = cov @ X.T @ np.linalg.solve(V, Y[:, g])
                scale = np.sqrt(np.diag(cov))
                np.testing.assert_allclose(res.beta_se.iloc[g], scale, rtol=1e-8)
                np.testing.assert_allclose(
                    res.beta.iloc[g], beta, rtol=1e-8, atol=1e-8 * scale.max()
                )


def test_failed_genes_have_no_standard_errors():
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"g": rng.choice(list("abcde"), 100), "x": rng.normal(size=100)})
    Y = np.column_stack([rng.normal(size=100), np.full(100, 3.0)])  # the second: constant
    res = svp.lmm.fit("~ x + (1|g)", Y, obs=obs)
    assert np.isfinite(res.beta_se.iloc[0]).all() and (res.beta_se.iloc[0] > 0).all()
    assert res.beta_se.iloc[1].isna().all() and res.beta.iloc[1].isna().all()
