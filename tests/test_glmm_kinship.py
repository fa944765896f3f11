"""Count models with a known covariance between a term's levels (a kinship matrix).

The kernel keeps ``Z`` an indicator and puts ``K^-1`` in the modes' prior; lme4qtl's
``relmatGlmer`` multiplies ``Z`` by a factor of ``K`` instead. The tests check the two
agree: the criterion against a dense Laplace approximation on ``Z R`` written here in
numpy (the gradient against differences is in ``test_glmm.py``), ``K = I`` and
``K = c I`` against the fit without a covariance, and the optima against lme4 and
glmmTMB (tests/data/glmm, ``make_kinship_reference.R``).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_glmm import _random_problem

import scvarpart as svp
from scvarpart import glmm
from scvarpart.design import build_design, parse_formula
from scvarpart.glmm.search import RowProblem

DATA = Path(__file__).parent / "data"
FORMULA = "~ (1|donor) + (1|batch)"


@cache
def _kinship_data():
    obs = pd.read_csv(DATA / "lme4_terms" / "kinship_obs.csv", index_col="cell")
    K = pd.read_csv(DATA / "lme4_terms" / "kinship_K.csv", index_col=0)
    counts = pd.read_csv(DATA / "glmm" / "kinship_counts.csv", index_col="cell")
    return obs, K, counts


@cache
def _reference():
    return json.loads((DATA / "glmm" / "kinship_reference.json").read_text())


def _dense_laplace(problem: RowProblem, design, x: np.ndarray) -> float:
    """``-2 log p(y)`` by the Laplace approximation on ``M = Z Lambda R`` (``v ~ N(0, I)``).

    The modes by Newton's method in ``v``, everything dense: lme4qtl's construction.
    """
    k, p = problem.n_terms, problem.X.shape[1]
    theta, beta = x[:k], x[k : k + p]
    phi = np.exp(x[k + p]) if problem.family == 1 else None
    blocks = []
    for t, f in enumerate(design.factors):
        Z = np.zeros((len(f.codes), f.n_levels))
        Z[np.arange(len(f.codes)), f.codes] = 1.0
        R = np.eye(f.n_levels) if f.relfac is None else f.relfac
        blocks.append(theta[t] * Z @ R)
    M = np.hstack(blocks)
    base = problem.offset + problem.X @ beta
    y = problem.y

    def terms(v):
        eta = base + M @ v
        mu = np.exp(eta)
        if phi is None:
            return stats.poisson.logpmf(y, mu).sum(), y - mu, mu
        ll = stats.nbinom.logpmf(y, phi, phi / (phi + mu)).sum()
        return ll, y - (y + phi) * mu / (mu + phi), (y + phi) * mu * phi / (mu + phi) ** 2

    v = np.zeros(M.shape[1])
    for _ in range(200):  # Newton's method, steps halved until the objective rises
        f, g, w = terms(v)
        H = M.T @ (w[:, None] * M) + np.eye(len(v))
        step = np.linalg.solve(H, M.T @ g - v)
        t = 1.0
        with np.errstate(over="ignore", invalid="ignore"):
            while not terms(v + t * step)[0] - (v + t * step) @ (v + t * step) / 2 >= f - v @ v / 2:
                t /= 2
                if t < 1e-8:
                    break
        v += t * step
        if np.abs(t * step).max() < 1e-13:
            break
    ll, _, w = terms(v)
    H = M.T @ (w[:, None] * M) + np.eye(len(v))
    return -2.0 * ll + v @ v + np.linalg.slogdet(H)[1]


@pytest.mark.parametrize("family", [0, 1])
@pytest.mark.parametrize("seed", range(4))
def test_criterion_is_the_dense_laplace_on_z_r(family, seed):
    """D with ``K^-1`` in the prior is lme4qtl's Laplace criterion on ``Z R``."""
    problem, design, rng = _random_problem(family, seed, slope=True, kinship=True)
    for _ in range(3):
        x = np.concatenate(
            [rng.uniform(0.05, 1.2, 3), rng.normal(0, 0.3, problem.X.shape[1])]
            + ([[rng.uniform(-1, 3)]] if family else [])
        )
        D, _, converged = problem.criterion(x, np.zeros(len(problem.term)), gradient=False)
        assert converged
        assert D == pytest.approx(_dense_laplace(problem, design, x), rel=1e-10)


def _fit(family: str, K: pd.DataFrame | None, genes=("k3", "k4", "k6")):
    obs, _, counts = _kinship_data()
    covariance = None if K is None else {"donor": K}
    design = build_design(parse_formula(FORMULA), obs, covariance=covariance)
    return glmm.fit_counts(
        design, counts[list(genes)].to_numpy(float), family=family,
        offset=counts["offset"].to_numpy(), var_names=list(genes), ci=None,
    )  # fmt: skip


@pytest.mark.parametrize("family", ["poisson", "nb"])
@pytest.mark.parametrize("c", [1.0, 4.0])
def test_scaled_identity_is_the_fit_without_a_covariance(family, c):
    """``K = c I``: the same likelihood, the donors' theta divided by sqrt(c), and the same
    variances and fractions (the term's variance is ``theta^2 mean K[l, l]``)."""
    _, K, _ = _kinship_data()
    identity = pd.DataFrame(c * np.eye(len(K)), index=K.index, columns=K.columns)
    plain, kin = _fit(family, None), _fit(family, identity)
    ll = plain.per_gene["loglik"].to_numpy()
    np.testing.assert_allclose(kin.per_gene["loglik"], ll, rtol=1e-9)
    theta = kin.theta.to_numpy() * np.array([np.sqrt(c), 1.0])
    np.testing.assert_allclose(theta, plain.theta.to_numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(kin.variance, plain.variance, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(kin.fractions, plain.fractions, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(kin.varcorr.iloc[:, 0] * c, plain.varcorr.iloc[:, 0], rtol=2e-4)
    h2 = kin.variance["donor"] / (kin.variance["donor"] + kin.variance["Residual"])
    np.testing.assert_allclose(kin.heritability["donor"], h2)


@pytest.mark.parametrize("model", ["poisson", "poisson_glmmTMB", "nb"])
def test_kinship_optima_match_lme4_and_glmmtmb(model):
    """Per gene, the log-likelihood at least the reference's to 1e-6 relative, and the
    standard deviations and NB size within 1e-3: Poisson against glmer (relmatGlmer's
    construction) and glmmTMB, NB against glmmTMB (its donor term on the columns of
    ``Z R``). glmmTMB's NB fits of the two Poisson genes (k1, k2) have no log-likelihood
    (a size of 1e7, no positive definite Hessian): those genes are left out for NB."""
    _, K, _ = _kinship_data()
    ref = {g: f[model] for g, f in _reference()["fits"].items()}
    genes = [g for g, f in ref.items() if f["logLik"] is not None]
    assert len(genes) == (6 if model == "nb" else 8)
    result = _fit("nb" if model == "nb" else "poisson", K, genes)
    ours = result.per_gene["loglik"].to_numpy()
    theirs = np.array([ref[g]["logLik"] for g in genes])
    assert (ours >= theirs - 1e-6 * np.abs(theirs)).all(), ours - theirs
    for g in genes:
        for term, want in ref[g]["theta"].items():
            got = np.sqrt(result.variance.loc[g, term] / _moment(K, term))
            if want > 1e-2:
                assert got == pytest.approx(want, rel=1e-3), (g, term)
            else:
                assert got < 2e-2, (g, term)
        if model == "nb":
            got = result.per_gene.loc[g, "dispersion"]
            assert got == pytest.approx(ref[g]["phi"], rel=1e-3), g


def _moment(K: pd.DataFrame, term: str) -> float:
    """``mean_i K[l_i, l_i]`` over the cells for the kinship term (1 for the other)."""
    if term != "donor":
        return 1.0
    obs, _, _ = _kinship_data()
    return float(np.diag(K.loc[obs["donor"], obs["donor"]].to_numpy()).mean())


def _adata(genes=("k3", "k4")):
    obs, _, counts = _kinship_data()
    X = counts[list(genes)].to_numpy(float)
    return ad.AnnData(X=X, obs=obs.assign(log_sf=counts["offset"]), var=pd.DataFrame(index=genes))


def test_variance_partition_takes_a_kinship_for_counts():
    """``svp.tl.variance_partition(..., family='nb', covariance=...)``: fractions, BLUPs
    on the donors' levels, and the covariance's fingerprint in ``uns``."""
    _, K, _ = _kinship_data()
    adata = _adata()
    res = svp.tl.variance_partition(
        adata, FORMULA, family="nb", offset="log_sf", covariance={"donor": K},
        store_blups=True, copy=True,
    )  # fmt: skip
    table = svp.get.varpart_df(res)
    assert np.isfinite(table["fraction"]).all()
    assert set(table["component"]) == {"donor", "batch", "Residual"}
    blups = svp.get.blups(res, "donor")
    assert list(blups.columns) == list(K.index) and np.isfinite(blups.to_numpy()).all()
    params = res.uns["varpart"]["params"]
    assert params["family"] == "nb" and params["covariance"]["donor"]
    assert np.isfinite(svp.get.result(res).heritability["donor"]).all()


def test_singular_kinship_is_refused_for_counts_with_the_fix():
    """A singular K is refused before fitting, naming the term and the ridge to add."""
    _, K, _ = _kinship_data()
    G = K.to_numpy()[:, :5]
    singular = pd.DataFrame(G @ G.T, index=K.index, columns=K.columns)
    with pytest.raises(ValueError, match=r"covariance\['donor'\] is singular.*ridge"):
        svp.tl.variance_partition(
            _adata(), FORMULA, family="nb", offset="log_sf", covariance={"donor": singular},
            copy=True,
        )  # fmt: skip


def test_command_line_fits_a_kinship_count_model_as_the_api(tmp_path):
    """``scvarpart fit --family nb --covariance donor=K.csv``: the API's fit."""
    from test_cli import cli, ok

    _, K, _ = _kinship_data()
    adata = _adata()
    path, kpath = tmp_path / "cells.h5ad", tmp_path / "K.csv"
    adata.write_h5ad(path)
    K.to_csv(kpath)
    api = svp.tl.variance_partition(
        adata, FORMULA, family="nb", offset="log_sf", covariance={"donor": K}, copy=True
    )
    ok(cli(
        "fit", path, "--formula", FORMULA, "--family", "nb", "--offset", "log_sf",
        "--covariance", f"donor={kpath}", "--quiet", "-o", tmp_path / "out.h5ad",
    ))  # fmt: skip
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    pd.testing.assert_frame_equal(out.varm["varpart"], api.varm["varpart"])
    pd.testing.assert_frame_equal(out.varm["varpart_h2"], api.varm["varpart_h2"])
