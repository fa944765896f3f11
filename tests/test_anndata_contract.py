"""The results contract of ``svp.tl.variance_partition``: what is written where, and
that it is the same whatever the form of the input."""

from __future__ import annotations

import copy
import warnings

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData, read_h5ad

import scvarpart as svp

FORMULA = "~ log_umi + (1|patient) + (1|chemistry) + (1|day) + (1|operator)"
BATCH = ["chemistry", "day", "operator"]
SIGNAL = ["patient"]
COMPONENTS = ["patient", "chemistry", "day", "operator", "log_umi", "Residual"]
RANDOM = ["patient", "chemistry", "day", "operator"]
N_CELLS, N_GENES = 600, 30
PER_GENE = [
    "varpart_rho",
    "varpart_rho_ci_low",
    "varpart_rho_ci_high",
    "varpart_mean",
    "varpart_singular",
    "varpart_converged",
    "varpart_loglik",
]


# --- helpers ------------------------------------------------------------------


def vp(adata, formula=FORMULA, **kwargs):
    kwargs.setdefault("batch", BATCH)
    kwargs.setdefault("signal", SIGNAL)
    return svp.tl.variance_partition(adata, formula, **kwargs)


def _dense(X):
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def one_hot(codes_of: pd.Series) -> np.ndarray:
    codes = pd.Categorical(codes_of.astype(str)).codes
    Z = np.zeros((len(codes), codes.max() + 1))
    Z[np.arange(len(codes)), codes] = 1.0
    return Z


def projected_noise(adata: AnnData, rng) -> np.ndarray:
    """Noise with the intercept, log_umi and every grouping factor projected out: all
    its random-effect variances are exactly 0 at the ML optimum."""
    M = np.column_stack(
        [np.ones(adata.n_obs), adata.obs["log_umi"].to_numpy(float)]
        + [one_hot(adata.obs[f]) for f in RANDOM]
    )
    e = rng.normal(size=adata.n_obs)
    return e - M @ np.linalg.lstsq(M, e, rcond=None)[0]


def insert_genes(adata: AnnData, genes: dict[str, tuple[int, np.ndarray]]) -> AnnData:
    """A float64 copy of ``adata`` with extra genes {name: (position, values)}."""
    X = _dense(adata.X).astype(np.float64)
    cols = [X[:, j] for j in range(X.shape[1])]
    names = list(adata.var_names)
    for name, (pos, values) in sorted(genes.items(), key=lambda kv: kv[1][0]):
        cols.insert(pos, np.asarray(values, dtype=np.float64))
        names.insert(pos, name)
    return AnnData(X=np.column_stack(cols), obs=adata.obs.copy(), var=pd.DataFrame(index=names))


def gls(adata: AnnData, gene: str, variances: pd.Series, fixed: np.ndarray, reml: bool):
    """Independent (dense, O(n^3)) log-likelihood and GLS fixed effects of one gene at
    the reported variance components."""
    y = _dense(adata[:, gene].X).ravel().astype(float)
    n = len(y)
    V = variances["Residual"] * np.eye(n)
    for f in RANDOM:
        if f in variances.index:
            Z = one_hot(adata.obs[f])
            V += variances[f] * Z @ Z.T
    _, logdetV = np.linalg.slogdet(V)
    ViX = np.linalg.solve(V, fixed)
    XViX = fixed.T @ ViX
    beta = np.linalg.solve(XViX, ViX.T @ y)
    r = y - fixed @ beta
    quad = r @ np.linalg.solve(V, r)
    p = fixed.shape[1]
    if reml:
        ll = -0.5 * ((n - p) * np.log(2 * np.pi) + logdetV + np.linalg.slogdet(XViX)[1] + quad)
    else:
        ll = -0.5 * (n * np.log(2 * np.pi) + logdetV + quad)
    return ll, beta


def snapshot(adata: AnnData) -> dict:
    return {
        "obs": adata.obs.copy(deep=True),
        "var": adata.var.copy(deep=True),
        "X": _dense(adata.X).copy(),
        "uns_keys": list(adata.uns.keys()),
        "uns": copy.deepcopy(dict(adata.uns)),
        "varm_keys": list(adata.varm.keys()),
        "layers_keys": list(adata.layers.keys()),
    }


def assert_unchanged(adata: AnnData, snap: dict) -> None:
    pd.testing.assert_frame_equal(adata.obs, snap["obs"])
    pd.testing.assert_frame_equal(adata.var, snap["var"])
    np.testing.assert_array_equal(_dense(adata.X), snap["X"])
    assert list(adata.uns.keys()) == snap["uns_keys"]
    assert adata.uns["example"] == snap["uns"]["example"]
    assert list(adata.varm.keys()) == snap["varm_keys"]
    assert list(adata.layers.keys()) == snap["layers_keys"]


def assert_same_results(a: AnnData, b: AnnData, key="varpart", rtol=0.0, atol=0.0):
    for k in (key, f"{key}_variance"):
        pd.testing.assert_frame_equal(
            a.varm[k], b.varm[k], rtol=rtol, atol=atol, check_exact=rtol == 0 and atol == 0
        )
    cols = [c for c in a.var.columns if c.startswith(f"{key}_")]
    assert cols == [c for c in b.var.columns if c.startswith(f"{key}_")]
    # intervals take derivatives by differences: a tiny change of the data moves them more
    loose = [c for c in cols if "_ci_" in c]
    for part, tol in (
        (loose, max(rtol, 1e-6) if rtol else 0.0),
        ([c for c in cols if c not in loose], rtol),
    ):
        pd.testing.assert_frame_equal(
            a.var[part], b.var[part], rtol=tol, atol=atol, check_exact=tol == 0 and atol == 0
        )


# --- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def base() -> AnnData:
    return svp.datasets.crossed_example(n_cells=N_CELLS, n_genes=N_GENES, seed=1)


@pytest.fixture(scope="module")
def fitted(base) -> AnnData:
    a = base.copy()
    vp(a)
    return a


@pytest.fixture(scope="module")
def with_special(base) -> AnnData:
    """The example plus a pure-noise gene with every random variance 0, a constant
    gene and an all-zero gene, in the middle of the gene list; fitted."""
    rng = np.random.default_rng(5)
    a = insert_genes(
        base,
        {
            "noise_only": (3, 1.5 + projected_noise(base, rng)),
            "constant": (10, np.full(base.n_obs, 2.5)),
            "all_zero": (20, np.zeros(base.n_obs)),
        },
    )
    vp(a)
    return a


# --- varm ---------------------------------------------------------------------


def test_fractions_table(fitted):
    frac = fitted.varm["varpart"]
    assert isinstance(frac, pd.DataFrame)
    pd.testing.assert_index_equal(frac.index, fitted.var_names)
    assert frac.columns.tolist() == COMPONENTS
    assert frac.dtypes.eq(np.float64).all()
    assert frac.notna().all().all()
    np.testing.assert_allclose(frac.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert (frac.to_numpy() >= 0).all() and (frac.to_numpy() <= 1).all()


def test_variance_table(fitted):
    var = fitted.varm["varpart_variance"]
    frac = fitted.varm["varpart"]
    assert isinstance(var, pd.DataFrame)
    pd.testing.assert_index_equal(var.index, fitted.var_names)
    assert var.columns.tolist() == COMPONENTS
    assert (var.to_numpy() >= 0).all()
    expected = var.div(var.sum(axis=1), axis=0)
    pd.testing.assert_frame_equal(frac, expected, rtol=1e-12, atol=1e-15)
    # the total is about the variance of the gene (ML: population variance)
    total = var.sum(axis=1).to_numpy()
    observed = _dense(fitted.X).astype(float).var(axis=0)
    assert np.all(total > 0.5 * observed) and np.all(total < 2 * observed)


def test_loglik_is_the_likelihood_at_the_estimates(fitted):
    X = np.column_stack([np.ones(fitted.n_obs), fitted.obs["log_umi"].to_numpy(float)])
    var = fitted.varm["varpart_variance"]
    for gene in fitted.var_names[:4]:
        ll, beta = gls(fitted, gene, var.loc[gene], X, reml=False)
        np.testing.assert_allclose(fitted.var.loc[gene, "varpart_loglik"], ll, rtol=1e-9)
        # the log_umi component is the variance of its prediction (divisor n)
        pred_var = beta[1] ** 2 * fitted.obs["log_umi"].to_numpy(float).var()
        np.testing.assert_allclose(var.loc[gene, "log_umi"], pred_var, rtol=1e-6, atol=1e-12)


def test_estimates_are_a_maximum(fitted):
    X = np.column_stack([np.ones(fitted.n_obs), fitted.obs["log_umi"].to_numpy(float)])
    gene = fitted.var_names[1]
    v = fitted.varm["varpart_variance"].loc[gene]
    best = fitted.var.loc[gene, "varpart_loglik"]
    for comp in [*RANDOM, "Residual"]:
        for factor in (0.97, 1.03):
            w = v.copy()
            w[comp] *= factor
            if w[comp] == v[comp]:
                continue
            assert gls(fitted, gene, w, X, reml=False)[0] <= best + 1e-9


# --- var ----------------------------------------------------------------------


def test_per_gene_columns(fitted):
    for col in PER_GENE:
        assert col in fitted.var.columns
    assert fitted.var["varpart_singular"].dtype == bool
    assert fitted.var["varpart_converged"].dtype == bool
    assert fitted.var["varpart_loglik"].dtype == np.float64
    assert fitted.var["varpart_rho"].dtype == np.float64
    assert fitted.var["varpart_converged"].all()
    assert np.isfinite(fitted.var["varpart_loglik"]).all()
    # the example's original var column is kept
    assert "true_beta_log_umi" in fitted.var.columns


def test_singular_means_some_component_exactly_zero(with_special):
    var = with_special.varm["varpart_variance"]
    expected = (var == 0).any(axis=1)
    np.testing.assert_array_equal(with_special.var["varpart_singular"].to_numpy(), expected)
    assert expected.any() and not expected.all()  # both cases occur
    assert with_special.var.loc["noise_only", "varpart_singular"]


def test_rho_definition_including_inf_and_nan(with_special):
    var = with_special.varm["varpart_variance"]
    num = var[BATCH].sum(axis=1).to_numpy()
    den = var["patient"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = num / den
    expected[(den == 0) & (num > 0)] = np.inf
    expected[(den == 0) & (num == 0)] = np.nan
    rho = with_special.var["varpart_rho"].to_numpy()
    np.testing.assert_array_equal(rho, expected)  # NaN == NaN, inf == inf here
    # every case is exercised
    assert np.isinf(rho).any()
    assert np.isfinite(rho).any()
    assert (rho[np.isfinite(rho)] > 0).any()
    # the pure-noise gene has no batch and no patient variance: NaN
    assert (var.loc["noise_only", RANDOM] == 0).all()
    assert np.isnan(with_special.var.loc["noise_only", "varpart_rho"])
    # a gene with patient variance 0 and batch variance > 0: inf
    g = var.index[(var["patient"] == 0) & (var[BATCH].sum(axis=1) > 0)][0]
    assert with_special.var.loc[g, "varpart_rho"] == np.inf


def test_rho_absent_without_batch_or_signal(base, fitted):
    for kwargs in (
        {"batch": BATCH, "signal": None},
        {"batch": None, "signal": SIGNAL},
        {"batch": None, "signal": None},
    ):
        a = base.copy()
        vp(a, **kwargs)
        assert "varpart_rho" not in a.var.columns
        for col in PER_GENE[3:]:
            assert col in a.var.columns
        pd.testing.assert_frame_equal(a.varm["varpart"], fitted.varm["varpart"])
        assert a.uns["varpart"]["params"]["batch"] == kwargs["batch"]
        assert a.uns["varpart"]["params"]["signal"] == kwargs["signal"]


def test_batch_and_signal_accept_a_single_name(base, fitted):
    a = base.copy()
    vp(a, batch="chemistry", signal="patient")
    var = fitted.varm["varpart_variance"]
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = (var["chemistry"] / var["patient"]).to_numpy()
    expected[(var["patient"] == 0) & (var["chemistry"] == 0)] = np.nan
    np.testing.assert_allclose(a.var["varpart_rho"].to_numpy(), expected, rtol=1e-12)
    assert a.uns["varpart"]["params"]["batch"] == ["chemistry"]
    assert a.uns["varpart"]["params"]["signal"] == ["patient"]


# --- uns ----------------------------------------------------------------------


def test_uns_params(fitted):
    uns = fitted.uns["varpart"]
    assert {"params", "components", "summary", "errors"} <= set(uns)
    p = uns["params"]
    assert p["formula"] == FORMULA
    assert p["method"] == "ML"
    assert p["batch"] == BATCH
    assert p["signal"] == SIGNAL
    assert p["layer"] is None
    assert p["use_raw"] is False
    assert p["n_obs"] == N_CELLS
    assert p["versions"]["scvarpart"] == svp.__version__
    for pkg in ("anndata", "numpy", "scipy", "pandas"):
        assert isinstance(p["versions"][pkg], str) and p["versions"][pkg] != "unknown"
    assert list(uns["components"]) == COMPONENTS


def test_uns_summary(fitted):
    s = fitted.uns["varpart"]["summary"]
    frac = fitted.varm["varpart"]
    assert list(s["median_fraction"]) == COMPONENTS
    for c in COMPONENTS:
        assert s["median_fraction"][c] == pytest.approx(float(np.median(frac[c])), abs=1e-15)
    assert s["n_singular"] == int(fitted.var["varpart_singular"].sum())
    assert s["n_singular"] > 0
    assert s["n_failed"] == 0
    assert s["n_genes"] == N_GENES


def test_uns_errors_empty(fitted):
    errors = fitted.uns["varpart"]["errors"]
    assert isinstance(errors, pd.DataFrame)
    assert errors.columns.tolist() == ["reason"]
    assert len(errors) == 0


def test_key_added(base, fitted):
    a = base.copy()
    vp(a, key_added="other")
    assert "varpart" not in a.varm and "varpart_variance" not in a.varm
    assert "varpart" not in a.uns
    assert not [c for c in a.var.columns if c.startswith("varpart")]
    pd.testing.assert_frame_equal(a.varm["other"], fitted.varm["varpart"])
    pd.testing.assert_frame_equal(a.varm["other_variance"], fitted.varm["varpart_variance"])
    for col in PER_GENE:
        other = col.replace("varpart_", "other_")
        pd.testing.assert_series_equal(a.var[other], fitted.var[col], check_names=False)
    assert a.uns["other"]["params"]["formula"] == FORMULA
    assert list(a.uns["other"]["components"]) == COMPONENTS


def test_second_run_overwrites(fitted):
    a = fitted.copy()
    vp(a, "~ log_umi + (1|patient) + (1|chemistry)", batch="chemistry")
    assert a.varm["varpart"].columns.tolist() == ["patient", "chemistry", "log_umi", "Residual"]
    assert a.uns["varpart"]["params"]["formula"] == "~ log_umi + (1|patient) + (1|chemistry)"
    np.testing.assert_allclose(a.varm["varpart"].sum(axis=1), 1.0, atol=1e-12)


# --- failed genes -------------------------------------------------------------


def test_constant_and_zero_genes(with_special, fitted):
    a = with_special
    bad = ["constant", "all_zero"]
    for k in ("varpart", "varpart_variance"):
        assert a.varm[k].loc[bad].isna().all().all()
    assert a.var.loc[bad, "varpart_rho"].isna().all()
    assert a.var.loc[bad, "varpart_loglik"].isna().all()
    assert not a.var.loc[bad, "varpart_converged"].any()
    assert not a.var.loc[bad, "varpart_singular"].any()

    errors = a.uns["varpart"]["errors"]
    assert isinstance(errors, pd.DataFrame)
    assert sorted(errors.index) == sorted(bad)
    assert errors.columns.tolist() == ["reason"]
    assert "zero" in errors.loc["all_zero", "reason"]
    assert "constant" in errors.loc["constant", "reason"]

    s = a.uns["varpart"]["summary"]
    assert s["n_failed"] == 2
    assert s["n_genes"] == N_GENES + 3
    ok = a.var_names.difference(bad)
    for c in COMPONENTS:
        assert s["median_fraction"][c] == pytest.approx(
            float(np.median(a.varm["varpart"].loc[ok, c])), abs=1e-15
        )

    # the other genes are not affected
    genes = fitted.var_names
    for k in ("varpart", "varpart_variance"):
        pd.testing.assert_frame_equal(a.varm[k].loc[genes], fitted.varm[k], rtol=1e-12, atol=1e-15)
    pd.testing.assert_frame_equal(
        a.var.loc[genes, PER_GENE], fitted.var[PER_GENE], rtol=1e-12, atol=1e-15
    )


def test_only_failed_genes(base):
    """All genes without estimates: results are NaN, nothing crashes."""
    a = AnnData(
        X=np.column_stack([np.zeros(base.n_obs), np.full(base.n_obs, 1.25)]),
        obs=base.obs.copy(),
        var=pd.DataFrame(index=["z", "c"]),
    )
    vp(a)
    assert a.varm["varpart"].isna().all().all()
    assert a.uns["varpart"]["summary"]["n_failed"] == 2
    assert list(a.uns["varpart"]["errors"].index) == ["z", "c"]
    assert all(np.isnan(v) for v in a.uns["varpart"]["summary"]["median_fraction"].values())


# --- input forms ----------------------------------------------------------------


def test_layer(base, fitted):
    a = base.copy()
    a.layers["lognorm"] = _dense(a.X).copy()
    a.X = np.random.default_rng(0).normal(size=a.shape).astype(np.float32) * 100
    vp(a, layer="lognorm")
    assert_same_results(a, fitted, rtol=1e-12, atol=1e-15)
    assert a.uns["varpart"]["params"]["layer"] == "lognorm"
    assert a.uns["varpart"]["params"]["use_raw"] is False


def test_use_raw(base, fitted):
    full = base.copy()
    full.raw = full
    order = np.random.default_rng(3).permutation(N_GENES)[:20]  # shuffled subset
    a = full[:, order].copy()
    assert a.raw.n_vars == N_GENES
    a.X = np.random.default_rng(1).normal(size=a.shape).astype(np.float32) * 100
    vp(a, use_raw=True)
    assert a.varm["varpart"].shape == (20, len(COMPONENTS))
    pd.testing.assert_index_equal(a.varm["varpart"].index, a.var_names)
    for k in ("varpart", "varpart_variance"):
        pd.testing.assert_frame_equal(
            a.varm[k], fitted.varm[k].loc[a.var_names], rtol=1e-12, atol=1e-15
        )
    pd.testing.assert_frame_equal(
        a.var[PER_GENE], fitted.var.loc[a.var_names, PER_GENE], rtol=1e-12, atol=1e-15
    )
    assert a.uns["varpart"]["params"]["use_raw"] is True
    assert a.uns["varpart"]["summary"]["n_genes"] == 20


def test_copy(base, fitted):
    a = base.copy()
    snap = snapshot(a)
    out = vp(a, copy=True)
    assert isinstance(out, AnnData)
    assert out is not a
    assert_unchanged(a, snap)
    assert "varpart" not in a.varm and "varpart" not in a.uns
    assert_same_results(out, fitted)
    assert vp(base.copy()) is None  # inplace, no copy: returns None


def test_inplace_false(base, fitted):
    a = base.copy()
    snap = snapshot(a)
    res = vp(a, inplace=False)
    assert_unchanged(a, snap)
    assert isinstance(res, svp.varpart.VarPartResult)
    pd.testing.assert_frame_equal(res.fractions, fitted.varm["varpart"])
    pd.testing.assert_frame_equal(res.variance, fitted.varm["varpart_variance"])
    pd.testing.assert_frame_equal(res.beta, fitted.varm["varpart_beta"])
    pd.testing.assert_frame_equal(res.beta_se, fitted.varm["varpart_beta_se"])
    assert isinstance(res.per_gene, pd.DataFrame)
    assert res.per_gene.columns.tolist() == [c.removeprefix("varpart_") for c in PER_GENE]
    stored = fitted.var[PER_GENE].rename(columns=lambda c: c.removeprefix("varpart_"))
    pd.testing.assert_frame_equal(res.per_gene, stored, check_names=False)
    assert res.params["formula"] == FORMULA
    assert list(res.components) == COMPONENTS


ROUND_TRIP_FORMULA = "~ log_umi + (1|patient) + (1|chemistry) + (1|patient:chemistry) + (1|day)"


def _plain(x):
    """h5ad stores lists as arrays: compare as lists."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (np.ndarray, list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def test_h5ad_round_trip(with_special, tmp_path):
    a = with_special.copy()
    vp(a, ROUND_TRIP_FORMULA, batch=["chemistry", "day"], signal=["patient", "patient:chemistry"])
    assert a.varm["varpart"].columns.tolist() == [
        "patient",
        "chemistry",
        "patient:chemistry",
        "day",
        "log_umi",
        "Residual",
    ]
    assert len(a.uns["varpart"]["errors"]) == 2
    path = tmp_path / "fitted.h5ad"
    a.write_h5ad(path)
    b = read_h5ad(path)

    for k in ("varpart", "varpart_variance"):
        assert isinstance(b.varm[k], pd.DataFrame)
        pd.testing.assert_frame_equal(b.varm[k], a.varm[k], check_exact=True)
    pd.testing.assert_frame_equal(b.var, a.var, check_exact=True)
    ua, ub = a.uns["varpart"], b.uns["varpart"]
    assert set(ub) == set(ua)
    assert _plain(ub["params"]) == _plain(ua["params"])
    assert ub["params"]["layer"] is None
    assert _plain(ub["components"]) == _plain(ua["components"])
    sa, sb = _plain(ua["summary"]), _plain(ub["summary"])
    assert sb.keys() == sa.keys()
    assert sb == sa
    pd.testing.assert_frame_equal(ub["errors"], ua["errors"], check_dtype=False)
    assert ub["errors"].index.tolist() == ["constant", "all_zero"]


@pytest.mark.parametrize(
    "fmt, dtype",
    [
        ("dense", np.float32),
        ("csr", np.float32),
        ("csr", np.float64),
        ("csc", np.float32),
        ("csc", np.float64),
    ],
)
def test_sparse_and_dtypes_agree(base, fmt, dtype):
    X = _dense(base.X).astype(np.float32)
    X[X < 1.0] = 0  # a real share of zeros
    assert 0.1 < (X == 0).mean() < 0.9
    ref = base.copy()
    ref.X = X.astype(np.float64)
    vp(ref)
    a = base.copy()
    Xd = X.astype(dtype)
    a.X = {"dense": Xd, "csr": sp.csr_matrix(Xd), "csc": sp.csc_matrix(Xd)}[fmt]
    vp(a)
    assert_same_results(a, ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(a.var["varpart_singular"], ref.var["varpart_singular"])


def test_reml(base, fitted):
    a = base.copy()
    vp(a, method="REML")
    assert a.uns["varpart"]["params"]["method"] == "REML"
    frac = a.varm["varpart"]
    assert frac.columns.tolist() == COMPONENTS
    np.testing.assert_allclose(frac.sum(axis=1), 1.0, atol=1e-12)
    assert a.var["varpart_converged"].all()
    diff = np.abs(frac.to_numpy() - fitted.varm["varpart"].to_numpy())
    assert diff.max() > 1e-4
    assert not np.allclose(a.var["varpart_loglik"], fitted.var["varpart_loglik"])
    X = np.column_stack([np.ones(a.n_obs), a.obs["log_umi"].to_numpy(float)])
    var = a.varm["varpart_variance"]
    for gene in a.var_names[:3]:
        ll, _ = gls(a, gene, var.loc[gene], X, reml=True)
        np.testing.assert_allclose(a.var.loc[gene, "varpart_loglik"], ll, rtol=1e-9)
    # lower-case is accepted and recorded normalised
    b = base[:, :5].copy()
    vp(b, method="reml")
    assert b.uns["varpart"]["params"]["method"] == "REML"
    pd.testing.assert_frame_equal(b.varm["varpart"], frac.iloc[:5], rtol=1e-12, atol=1e-15)


def test_view_of_genes(base, fitted):
    parent = base.copy()
    v = parent[:, :20]
    assert v.is_view
    vp(v)
    assert v.varm["varpart"].shape == (20, len(COMPONENTS))
    for k in ("varpart", "varpart_variance"):
        pd.testing.assert_frame_equal(v.varm[k], fitted.varm[k].iloc[:20], rtol=1e-12, atol=1e-15)
    assert "varpart" not in parent.varm and "varpart" not in parent.uns
    assert "varpart_rho" not in parent.var.columns


def test_view_of_cells(base):
    cells = np.random.default_rng(4).permutation(base.n_obs)[:400]
    v = base[cells]
    assert v.is_view
    res = vp(v, inplace=False)
    assert v.is_view  # not modified
    c = base[cells].copy()
    vp(c)
    pd.testing.assert_frame_equal(res.variance, c.varm["varpart_variance"], rtol=1e-12, atol=1e-15)
    assert res.params["n_obs"] == 400


def test_categorical_fixed_effect_is_one_component(base):
    a = base.copy()
    a.obs["chemistry_fixed"] = a.obs["chemistry"].copy()
    formula = "~ log_umi + chemistry_fixed + (1|patient) + (1|day) + (1|operator)"
    vp(a, formula, batch=["chemistry_fixed", "day", "operator"])
    comps = ["patient", "day", "operator", "log_umi", "chemistry_fixed", "Residual"]
    assert a.varm["varpart"].columns.tolist() == comps
    assert list(a.uns["varpart"]["components"]) == comps
    assert not any(
        c.startswith("chemistry_fixed") and c != "chemistry_fixed"
        for c in a.varm["varpart"].columns
    )
    np.testing.assert_allclose(a.varm["varpart"].sum(axis=1), 1.0, atol=1e-12)
    assert (a.varm["varpart"]["chemistry_fixed"] > 0.05).any()

    # the fixed components: each term's prediction variance, scaled so that they sum
    # to the variance of the whole fixed prediction
    chem = a.obs["chemistry"].astype(str).to_numpy()
    levels = sorted(set(chem))
    X = np.column_stack(
        [np.ones(a.n_obs), a.obs["log_umi"].to_numpy(float)]
        + [(chem == lev).astype(float) for lev in levels[1:]]
    )
    var = a.varm["varpart_variance"]
    for gene in a.var_names[:4]:
        w = var.loc[gene].rename({"chemistry_fixed": "_"})
        _, beta = gls(a, gene, w, X, reml=False)
        p_umi = X[:, 1] * beta[1]
        p_chem = X[:, 2:] @ beta[2:]
        parts = np.array([p_umi.var(), p_chem.var()])
        scaled = parts * (p_umi + p_chem).var() / parts.sum()
        np.testing.assert_allclose(
            var.loc[gene, ["log_umi", "chemistry_fixed"]], scaled, rtol=1e-6, atol=1e-12
        )


def test_mean_expression_is_stored():
    adata = svp.datasets.crossed_example(n_cells=300, n_genes=6, seed=1)
    svp.tl.variance_partition(adata, FORMULA, progress=False)
    np.testing.assert_allclose(
        adata.var["varpart_mean"], np.asarray(adata.X, dtype=np.float64).mean(axis=0), rtol=1e-12
    )


# --- refits replace every result, and only results ------------------------------


def _result_state(a: AnnData, key: str = "varpart") -> dict:
    return {
        "var": a.var.copy(deep=True),
        "varm": {k: a.varm[k].copy() for k in a.varm if k.startswith(key)},
        "uns": copy.deepcopy(dict(a.uns[key])),
    }


def test_refit_with_another_model_leaves_nothing_stale(fitted):
    a = fitted.copy()
    a.var["varpart_notes"] = "checked by hand"  # a user's column with the key's prefix
    a.varm["varpart_umap"] = np.zeros((a.n_vars, 2))  # and a user's varm entry
    vp(a, "~ (1|patient) + (1|day)", batch=None, signal=None, method="REML")
    assert "varpart_rho" not in a.var.columns
    assert a.varm["varpart"].columns.tolist() == ["patient", "day", "Residual"]
    assert a.varm["varpart_variance"].columns.tolist() == ["patient", "day", "Residual"]
    assert (a.var["varpart_notes"] == "checked by hand").all()
    assert "varpart_umap" in a.varm and "true_beta_log_umi" in a.var.columns
    assert list(a.uns["varpart"]["result_keys"]["var"]) == PER_GENE[3:]
    assert list(a.uns["varpart"]["result_keys"]["varm"]) == [
        "varpart",
        "varpart_variance",
        "varpart_beta",
        "varpart_beta_se",
        "varpart_varcorr",
        "varpart_theta",
        "varpart_gradient",
        "varpart_hessian",
        "varpart_variance_se",
        "varpart_ci_low",
        "varpart_ci_high",
    ]
    assert a.varm["varpart_theta"].columns.tolist() == ["patient.(Intercept)", "day.(Intercept)"]
    # the plots follow the new model: no rho to plot, bars sorted by a component
    with pytest.raises(KeyError, match="No rho"):
        svp.pl.rho(a, show=False)
    ax = svp.pl.percent_bars(a, n_top=5, show=False)
    assert "by patient" in ax.get_title()
    with pytest.raises(KeyError, match="No rho"):
        svp.get.batch_dominated(a)


def test_refit_replaces_results_stored_before_keys_were_recorded(fitted):
    a = fitted.copy()
    del a.uns["varpart"]["result_keys"]  # as an earlier version stored them
    a.var["varpart_notes"] = "mine"
    vp(a, "~ (1|patient) + (1|day)", batch=None, signal=None, method="REML")
    assert "varpart_rho" not in a.var.columns
    assert "varpart_notes" in a.var.columns


def test_a_failing_refit_leaves_the_previous_results(fitted, monkeypatch):
    a = fitted.copy()
    before = _result_state(a)

    def fail(*args, **kwargs):
        raise RuntimeError("killed during the fit")

    monkeypatch.setattr("scvarpart.lmm.genes.fit_lmm", fail)
    with pytest.raises(RuntimeError, match="killed"):
        vp(a, "~ (1|patient) + (1|day)", batch=None, signal=None, method="REML")
    after = _result_state(a)
    pd.testing.assert_frame_equal(after["var"], before["var"])
    assert after["varm"].keys() == before["varm"].keys()
    for k in before["varm"]:
        pd.testing.assert_frame_equal(after["varm"][k], before["varm"][k])
    assert after["uns"]["params"] == before["uns"]["params"]


def test_refit_into_a_file_leaves_nothing_stale(fitted, tmp_path):
    a = fitted.copy()
    a.var["varpart_notes"] = "mine"
    source = tmp_path / "fitted.h5ad"
    a.write_h5ad(source)
    out = tmp_path / "refit.h5ad"
    result = svp.tl.variance_partition_file(
        source, "~ (1|patient) + (1|day)", method="REML", output=out
    )
    for b in (result, read_h5ad(out)):
        assert "varpart_rho" not in b.var.columns
        assert "varpart_notes" in b.var.columns
        assert b.varm["varpart"].columns.tolist() == ["patient", "day", "Residual"]


# --- warnings -----------------------------------------------------------------------


@pytest.mark.parametrize("subset", ["genes", "cells", "none"])
def test_fit_raises_no_warning_of_any_kind(base, subset):
    """No anndata ImplicitModificationWarning (writing into a view), nor anything else,
    on well-formed input (REML: no few-level warning)."""
    parent = base.copy()
    a = {"genes": parent[:, :10], "cells": parent[:300], "none": parent}[subset]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vp(a, method="REML", progress=False)
    assert not a.is_view
    assert a.varm["varpart"].shape == (a.n_vars, len(COMPONENTS))
    if subset != "none":
        assert "varpart" not in parent.varm and "varpart" not in parent.uns
