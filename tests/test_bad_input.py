"""Bad input to ``svp.tl.variance_partition``: a clear error (or warning) before any fit.

Every error case runs with ``fit_lmm`` replaced by a function that fails the test,
so an error that only surfaces during (or after) the fit is caught; and the input
AnnData must be left exactly as it was.
"""

from __future__ import annotations

import copy
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

import scvarpart as svp
from scvarpart.design import DesignError, FormulaError

FORMULA = "~ log_umi + (1|patient) + (1|chemistry) + (1|day) + (1|operator)"
BATCH = ["chemistry", "day", "operator"]
SIGNAL = ["patient"]
TERMS = ["patient", "chemistry", "day", "operator", "log_umi"]
N_CELLS, N_GENES = 200, 8


# --- helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def _base() -> AnnData:
    return svp.datasets.crossed_example(n_cells=N_CELLS, n_genes=N_GENES, seed=3)


@pytest.fixture
def adata(_base) -> AnnData:
    return _base.copy()


class FitCalled(Exception):
    """Raised by the stand-in of fit_lmm: the fit was reached."""


@pytest.fixture
def no_fit(monkeypatch):
    """Fail the test if fit_lmm is ever called."""

    def boom(*args, **kwargs):
        pytest.fail("fit_lmm was called: the bad input was not caught before fitting")

    monkeypatch.setattr("scvarpart.lmm.genes.fit_lmm", boom)


@pytest.fixture
def stop_at_fit(monkeypatch):
    """Stop (with FitCalled) when the fit is reached: for warnings, which must come first."""

    def stop(*args, **kwargs):
        raise FitCalled

    monkeypatch.setattr("scvarpart.lmm.genes.fit_lmm", stop)


def _dense(X):
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def _deep_equal(a, b) -> bool:
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(_deep_equal(a[k], b[k]) for k in a)
        )
    if isinstance(a, pd.DataFrame):
        return isinstance(b, pd.DataFrame) and a.equals(b)
    if isinstance(a, (np.ndarray, list, tuple)):
        return np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object))
    return a == b


def snapshot(adata: AnnData) -> dict:
    return {
        "obs": adata.obs.copy(deep=True),
        "var": adata.var.copy(deep=True),
        "X": None if adata.X is None else _dense(adata.X).copy(),
        "X_type": type(adata.X),
        "X_dtype": None if adata.X is None else adata.X.dtype,
        "uns": copy.deepcopy(dict(adata.uns)),
        "varm": {k: copy.deepcopy(v) for k, v in adata.varm.items()},
        "layers": {k: _dense(v).copy() for k, v in adata.layers.items()},
        "obs_names": adata.obs_names.copy(),
        "var_names": adata.var_names.copy(),
    }


def assert_unchanged(adata: AnnData, snap: dict) -> None:
    pd.testing.assert_index_equal(adata.obs_names, snap["obs_names"])
    pd.testing.assert_index_equal(adata.var_names, snap["var_names"])
    pd.testing.assert_frame_equal(adata.obs, snap["obs"])
    pd.testing.assert_frame_equal(adata.var, snap["var"])
    assert type(adata.X) is snap["X_type"]
    if snap["X"] is not None:
        assert adata.X.dtype == snap["X_dtype"]
        np.testing.assert_array_equal(_dense(adata.X), snap["X"])
    assert _deep_equal(dict(adata.uns), snap["uns"])
    assert set(adata.varm) == set(snap["varm"])
    for k, v in snap["varm"].items():
        assert _deep_equal(adata.varm[k], v)
    assert set(adata.layers) == set(snap["layers"])
    for k, v in snap["layers"].items():
        np.testing.assert_array_equal(_dense(adata.layers[k]), v)


def run(adata, formula=FORMULA, **kwargs):
    return svp.tl.variance_partition(adata, formula, **kwargs)


def _with_nan_genes(adata: AnnData, fmt: str) -> AnnData:
    X = np.asarray(adata.X, dtype=np.float64).copy()
    X[5, 2] = np.nan  # gene0003
    X[17, 5] = np.inf  # gene0006
    X[0, 6] = -np.inf  # gene0007
    adata.X = {"dense": X, "csr": sp.csr_matrix(X), "csc": sp.csc_matrix(X)}[fmt]
    return adata


# --- errors: parametrised table -------------------------------------------------
# (id, prepare(adata) -> None, formula, kwargs, exception, regex the message must match)


def _noop(a):
    return None


def _one_level(a):
    a.obs["site"] = pd.Categorical(["siteA"] * a.n_obs)


def _per_cell(a):
    a.obs["cell_id"] = pd.Categorical(a.obs_names)


def _same_groups(a):
    a.obs["donor"] = pd.Categorical(["D_" + p for p in a.obs["patient"].astype(str)])


def _copy_covariate(a):
    a.obs["log_umi_x2"] = 2.0 * a.obs["log_umi"]


def _patient_level_covariate(a):
    codes = a.obs["patient"].cat.codes.to_numpy()
    a.obs["age"] = 30.0 + 2.0 * codes


def _constant_covariate(a):
    a.obs["const"] = 3.5


def _zero_covariate(a):
    a.obs["zero"] = 0.0


def _inf_covariate(a):
    a.obs["log_umi"] = a.obs["log_umi"].astype(float)
    a.obs.iloc[4, a.obs.columns.get_loc("log_umi")] = np.inf


def _lognorm_layer(a):
    a.layers["lognorm"] = np.asarray(a.X).copy()


def _raw(a):
    a.raw = a.copy()


def _duplicated_names(a):
    names = list(a.var_names)
    names[4], names[6] = names[1], names[1]  # three genes called gene0002
    names[7] = names[3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's own note on non-unique names
        a.var_names = names


def _single_level_fixed(a):
    a.obs["tissue"] = pd.Categorical(["blood"] * a.n_obs)


CASES = [
    (
        "missing-random-column",
        _noop,
        "~ log_umi + (1|patient) + (1|sample_id)",
        {},
        DesignError,
        r"'sample_id'.*not in",
    ),
    (
        "missing-fixed-column",
        _noop,
        "~ pct_mito + (1|patient)",
        {},
        DesignError,
        r"'pct_mito'.*not in",
    ),
    (
        "does-not-parse-unclosed",
        _noop,
        "~ log_umi + (1|patient",
        {},
        FormulaError,
        r"Expected '\)'",
    ),
    (
        "does-not-parse-double-plus",
        _noop,
        "~ log_umi + + (1|patient)",
        {},
        FormulaError,
        r"Unexpected '\+'",
    ),
    ("does-not-parse-no-tilde", _noop, "log_umi + (1|patient)", {}, FormulaError, r"'~'"),
    (
        "left-hand-side",
        _noop,
        "expr ~ log_umi + (1|patient)",
        {},
        ValueError,
        r"left-hand side.*'expr'",
    ),
    ("no-intercept-0+", _noop, "~ 0 + log_umi + (1|patient)", {}, DesignError, r"intercept"),
    ("no-intercept-minus-1", _noop, "~ log_umi - 1 + (1|patient)", {}, DesignError, r"intercept"),
    ("no-random-term", _noop, "~ log_umi + patient", {}, DesignError, r"no random term"),
    (
        "slope-constant-within-levels",
        _patient_level_covariate,
        "~ log_umi + (age|patient)",
        {},
        DesignError,
        r"'age' of \(1 \+ age\|patient\) is constant within every level of 'patient'",
    ),
    (
        "slope-categorical",
        _noop,
        "~ log_umi + (0 + chemistry|patient)",
        {},
        DesignError,
        r"needs a numeric covariate, but 'chemistry' is categorical",
    ),
    (
        "slope-and-intercept-twice",
        _noop,
        "~ log_umi + (1|patient) + (log_umi|patient)",
        {},
        FormulaError,
        r"both give 'patient' a random intercept",
    ),
    (
        "function-call",
        _noop,
        "~ log(log_umi) + (1|patient)",
        {},
        FormulaError,
        r"log\(\.\.\.\) (are|is) not supported",
    ),
    (
        "one-level",
        _one_level,
        "~ log_umi + (1|patient) + (1|site)",
        {},
        DesignError,
        r"'site'.*single level.*\(1\|site\)",
    ),
    (
        "level-per-observation",
        _per_cell,
        "~ log_umi + (1|patient) + (1|cell_id)",
        {},
        DesignError,
        rf"'cell_id'.*{N_CELLS} levels for {N_CELLS} observations",
    ),
    (
        "same-groups",
        _same_groups,
        "~ log_umi + (1|patient) + (1|donor)",
        {},
        DesignError,
        r"'patient' and 'donor' define the same groups",
    ),
    (
        "fixed-and-random",
        _noop,
        "~ log_umi + patient + (1|patient)",
        {},
        DesignError,
        r"'patient' is both a fixed effect and",
    ),
    (
        "rank-deficient-copy",
        _copy_covariate,
        "~ log_umi + log_umi_x2 + (1|patient)",
        {},
        DesignError,
        r"rank deficient.*'log_umi(_x2)?'",
    ),
    (
        "rank-deficient-constant",
        _constant_covariate,
        "~ log_umi + const + (1|patient)",
        {},
        DesignError,
        r"rank deficient.*'const'",
    ),
    (
        "rank-deficient-zero",
        _zero_covariate,
        "~ log_umi + zero + (1|patient)",
        {},
        DesignError,
        r"rank deficient.*'zero'",
    ),
    (
        "rank-deficient-categorical",
        _same_groups,
        "~ patient + donor + (1|chemistry)",
        {},
        DesignError,
        r"rank deficient.*'donor",
    ),
    (
        "infinite-covariate",
        _inf_covariate,
        FORMULA,
        {},
        DesignError,
        r"'log_umi' has infinite values",
    ),
    (
        "unknown-batch",
        _noop,
        FORMULA,
        {"batch": ["chem", "day"], "signal": SIGNAL},
        ValueError,
        r"\['chem'\] are not terms of the model.*" + r".*".join(f"'{t}'" for t in TERMS),
    ),
    (
        "unknown-signal",
        _noop,
        FORMULA,
        {"batch": BATCH, "signal": "donor"},
        ValueError,
        r"\['donor'\] are not terms of the model.*" + r".*".join(f"'{t}'" for t in TERMS),
    ),
    (
        "batch-and-signal-overlap",
        _noop,
        FORMULA,
        {"batch": ["chemistry", "patient"], "signal": ["patient"]},
        ValueError,
        r"\['patient'\].*both batch= and signal=",
    ),
    (
        "empty-batch",
        _noop,
        FORMULA,
        {"batch": [], "signal": SIGNAL},
        ValueError,
        r"batch= is empty",
    ),
    (
        "empty-signal",
        _noop,
        FORMULA,
        {"batch": BATCH, "signal": []},
        ValueError,
        r"signal= is empty",
    ),
    (
        "batch-not-strings",
        _noop,
        FORMULA,
        {"batch": [1, 2], "signal": SIGNAL},
        TypeError,
        r"batch must be",
    ),
    (
        "invalid-method",
        _noop,
        FORMULA,
        {"method": "REM"},
        ValueError,
        r"method must be 'ML' or 'REML', got 'REM'",
    ),
    (
        "layer-and-use-raw",
        _lognorm_layer,
        FORMULA,
        {"layer": "lognorm", "use_raw": True},
        ValueError,
        r"layer=.*use_raw=True",
    ),
    (
        "missing-layer",
        _lognorm_layer,
        FORMULA,
        {"layer": "logcounts"},
        KeyError,
        r"'logcounts'.*available.*'lognorm'",
    ),
    (
        "use-raw-without-raw",
        _noop,
        FORMULA,
        {"use_raw": True},
        ValueError,
        r"adata\.raw is not set",
    ),
    (
        "copy-and-not-inplace",
        _noop,
        FORMULA,
        {"copy": True, "inplace": False},
        ValueError,
        r"copy=True.*inplace=True",
    ),
    (
        "duplicated-var-names",
        _duplicated_names,
        FORMULA,
        {},
        ValueError,
        r"adata\.var_names has 2 duplicated gene name\(s\): 'gene0002', 'gene0004'.*"
        r"adata\.var_names_make_unique\(\)",
    ),
    (
        "single-level-categorical-fixed",
        _single_level_fixed,
        "~ log_umi + tissue + (1|patient)",
        {},
        DesignError,
        r"Fixed effect 'tissue' has a single level \('blood'\).*Remove 'tissue'",
    ),
    (
        "single-level-after-cell-filter",
        _noop,
        "~ log_umi + chemistry + (1|patient)",
        {"cells": {"chemistry": ["3p_v2"]}},
        DesignError,
        r"Fixed effect 'chemistry' has a single level \('3p_v2'\).*cell selection.*more than",
    ),
    ("batch-size-0", _noop, FORMULA, {"batch_size": 0}, ValueError, r"batch_size=0.*positive"),
    ("chunk-size-0", _noop, FORMULA, {"chunk_size": 0}, ValueError, r"chunk_size=0.*positive"),
    ("n-jobs-0", _noop, FORMULA, {"n_jobs": 0}, ValueError, r"n_jobs=0.*-1 for every core"),
    (
        "min-cells-negative",
        _noop,
        FORMULA,
        {"min_cells": -1},
        ValueError,
        r"min_cells=-1.*non-negative",
    ),
]


@pytest.mark.parametrize(
    "prepare, formula, kwargs, exc, match",
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_error_before_fit(adata, no_fit, prepare, formula, kwargs, exc, match):
    prepare(adata)
    snap = snapshot(adata)
    with pytest.raises(exc, match=re.compile(match, re.DOTALL)):
        run(adata, formula, **kwargs)
    assert_unchanged(adata, snap)


def test_no_cells_is_an_error_before_reading(_base, no_fit, monkeypatch):
    def no_read(*args, **kwargs):
        pytest.fail("the data were read")

    monkeypatch.setattr("scvarpart.suffstats.response_stats", no_read)
    empty = _base[:0].copy()
    with pytest.raises(ValueError, match=r"no cells \(n_obs = 0\).*subsetting"):
        run(empty)


def test_batch_size_is_checked_before_reading(adata, monkeypatch):
    def no_read(*args, **kwargs):
        pytest.fail("the data were read")

    monkeypatch.setattr("scvarpart.suffstats.response_stats", no_read)
    with pytest.raises(ValueError, match="batch_size=0"):
        run(adata, batch_size=0)


def test_file_with_duplicated_names_is_refused(adata, tmp_path, no_fit):
    _duplicated_names(adata)
    path = tmp_path / "dups.h5ad"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_h5ad(path)
    with pytest.raises(ValueError, match=r"duplicated gene name.*var_names_make_unique"):
        svp.tl.variance_partition_file(path, FORMULA)


def test_formula_error_is_value_error():
    assert issubclass(FormulaError, ValueError)
    assert issubclass(DesignError, ValueError)


def test_unparseable_formula_points_at_the_problem(adata, no_fit):
    with pytest.raises(FormulaError) as info:
        run(adata, "~ log_umi + (1|patient")
    msg = str(info.value)
    assert "~ log_umi + (1|patient" in msg  # the formula is echoed
    assert "^" in msg  # with a pointer at the position


def test_function_call_is_never_evaluated(adata, no_fit, tmp_path):
    target = tmp_path / "evaluated"
    formula = f"~ __import__('pathlib').Path({str(target)!r}).touch() + (1|patient)"
    snap = snapshot(adata)
    with pytest.raises(FormulaError, match=r"__import__\(\.\.\.\).*not supported"):
        run(adata, formula)
    assert not target.exists()
    assert_unchanged(adata, snap)


def test_missing_column_lists_available_columns(adata, no_fit):
    with pytest.raises(DesignError) as info:
        run(adata, "~ log_umi + (1|patient) + (1|Patient_ID)")
    msg = str(info.value)
    assert "'Patient_ID'" in msg
    for col in ("patient", "chemistry", "day", "operator", "log_umi"):
        assert f"'{col}'" in msg


def test_rank_deficient_copy_names_the_pair(adata, no_fit):
    """A proportional copy of a covariate: the error names a column of the pair and
    says how to fix it."""
    _copy_covariate(adata)
    with pytest.raises(DesignError) as info:
        run(adata, "~ log_umi + log_umi_x2 + (1|patient)")
    msg = str(info.value)
    assert re.search(r"'log_umi(_x2)?'", msg)
    assert "(Intercept)" not in msg
    assert re.search(r"[Rr]emove", msg)


def test_rank_deficient_constant_does_not_blame_intercept(adata, no_fit):
    _constant_covariate(adata)
    with pytest.raises(DesignError) as info:
        run(adata, "~ log_umi + const + (1|patient)")
    msg = str(info.value)
    assert "'const'" in msg
    assert "(Intercept)" not in msg


def test_too_few_observations(no_fit):
    rng = np.random.default_rng(0)
    n = 5
    obs = pd.DataFrame(
        {
            "g": pd.Categorical(["a", "a", "b", "b", "b"]),
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
        },
        index=[f"c{i}" for i in range(n)],
    )
    adata = AnnData(X=rng.normal(size=(n, 3)), obs=obs)
    snap = snapshot(adata)
    # 3 fixed effects + 1 random variance + residual = 5 parameters for 5 cells
    with pytest.raises(DesignError, match=r"5 observations are too few for 5 parameters"):
        run(adata, "~ x1 + x2 + (1|g)")
    assert_unchanged(adata, snap)


def test_too_few_observations_categorical(no_fit):
    rng = np.random.default_rng(1)
    n = 12
    obs = pd.DataFrame(
        {
            "g": pd.Categorical(np.repeat(["a", "b", "c"], 4)),
            "treat": pd.Categorical([f"t{i % 10}" for i in range(n)]),
        },
        index=[f"c{i}" for i in range(n)],
    )
    adata = AnnData(X=rng.normal(size=(n, 2)), obs=obs)
    with pytest.raises(DesignError, match=r"12 observations are too few for 12 parameters"):
        run(adata, "~ treat + (1|g)")


# --- NaN / inf in the expression values ----------------------------------------


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_nonfinite_expression_names_genes(adata, no_fit, fmt):
    _with_nan_genes(adata, fmt)
    snap = snapshot(adata)
    with pytest.raises(ValueError, match=r"NaN or infinite") as info:
        run(adata)
    msg = str(info.value)
    for gene in ("gene0003", "gene0006", "gene0007"):
        assert gene in msg
    for gene in ("gene0001", "gene0002", "gene0004", "gene0005", "gene0008"):
        assert gene not in msg
    assert "3 gene(s)" in msg
    assert "adata.X" in msg
    assert_unchanged(adata, snap)


def test_nonfinite_in_layer_names_layer_and_genes(adata, no_fit):
    X = np.asarray(adata.X, dtype=np.float64).copy()
    X[3, 4] = np.nan
    adata.layers["lognorm"] = X
    snap = snapshot(adata)
    with pytest.raises(ValueError, match=r"adata\.layers\['lognorm'\].*gene0005"):
        run(adata, layer="lognorm")
    assert_unchanged(adata, snap)


def test_many_nonfinite_genes_are_summarised(no_fit):
    adata = svp.datasets.crossed_example(n_cells=100, n_genes=15, seed=0)
    X = np.asarray(adata.X).copy()
    X[0, :] = np.nan
    adata.X = X
    with pytest.raises(ValueError, match=r"15 gene\(s\).*and 5 more"):
        run(adata)


# --- NaN in obs: cells dropped with a warning -------------------------------------


def test_missing_covariates_drop_cells_with_warning(adata):
    adata.obs["log_umi"] = adata.obs["log_umi"].astype(float)
    li = adata.obs.columns.get_loc("log_umi")
    pi = adata.obs.columns.get_loc("patient")
    adata.obs.iloc[[0, 1, 2], li] = np.nan
    adata.obs.iloc[[2, 3, 4, 5], pi] = np.nan  # cell 2 is missing both: 6 cells dropped
    keep = np.ones(adata.n_obs, dtype=bool)
    keep[:6] = False
    obs_before = adata.obs.copy()
    with pytest.warns(UserWarning, match=r"\b6\b.*\b200\b") as rec:
        run(adata, batch=BATCH, signal=SIGNAL)
    msgs = [str(w.message) for w in rec if "missing" in str(w.message)]
    assert len(msgs) == 1
    assert "'log_umi'" in msgs[0] and "'patient'" in msgs[0]
    pd.testing.assert_frame_equal(adata.obs, obs_before)

    params = adata.uns["varpart"]["params"]
    assert params["n_obs"] == N_CELLS - 6
    frac = adata.varm["varpart"]
    assert frac.notna().all().all()
    np.testing.assert_allclose(frac.sum(axis=1), 1.0, atol=1e-12)

    # the same as fitting the complete cells only
    sub = adata[keep].copy()
    del sub.uns["varpart"]
    run(sub, batch=BATCH, signal=SIGNAL)
    np.testing.assert_allclose(
        adata.varm["varpart_variance"].to_numpy(),
        sub.varm["varpart_variance"].to_numpy(),
        rtol=1e-10,
        atol=1e-12,
    )


def test_missing_values_in_unused_columns_are_ignored(adata):
    adata.obs["unused"] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        run(adata, method="REML")  # REML: no warning about the few-level factors
    assert adata.uns["varpart"]["params"]["n_obs"] == N_CELLS
    assert adata.uns["varpart"]["params"]["n_obs_dropped"] == 0


def test_all_cells_missing_is_an_error(adata, no_fit):
    adata.obs["log_umi"] = np.nan
    snap = snapshot(adata)
    with pytest.raises(DesignError, match=r"Every observation has a missing value.*'log_umi'"):
        run(adata)
    assert_unchanged(adata, snap)


# --- warnings, raised before the fit -------------------------------------------------


def _float_grouping(adata):
    rng = np.random.default_rng(7)
    pool = rng.normal(1.0, 0.2, size=60)
    adata.obs["depth"] = pool[np.arange(adata.n_obs) % 60]


def test_float_grouping_column_warns(adata, stop_at_fit):
    _float_grouping(adata)
    assert adata.obs["depth"].nunique() == 60
    with pytest.warns(UserWarning, match=r"'depth'.*float.*fixed effect.*\+ depth"):
        with pytest.raises(FitCalled):
            run(adata, "~ log_umi + (1|patient) + (1|depth)")


@pytest.mark.parametrize("dtype", [float, np.int64])
def test_integer_codes_as_grouping_do_not_warn(adata, stop_at_fit, dtype):
    """Plates numbered 0..59 (or 1..60), even stored as floats, are labels."""
    for start in (0, 1):
        adata.obs["plate"] = (np.arange(adata.n_obs) % 60 + start).astype(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            with pytest.raises(FitCalled):
                run(adata, "~ log_umi + (1|patient) + (1|plate)", method="REML")


def test_count_column_as_grouping_warns(adata, stop_at_fit):
    """A whole-number measurement such as n_genes gives hundreds of levels."""
    rng = np.random.default_rng(8)
    pool = rng.choice(np.arange(300, 3000), size=90, replace=False)
    adata.obs["n_genes"] = pool[np.arange(adata.n_obs) % 90].astype(np.int64)
    with pytest.warns(UserWarning) as rec, pytest.raises(FitCalled):
        run(adata, "~ log_umi + (1|patient) + (1|n_genes)", method="REML")
    (w,) = [w for w in rec if "'n_genes'" in str(w.message)]
    msg = str(w.message)
    assert "90 distinct values" in msg and "90 levels" in msg
    assert "fixed effect ('+ n_genes')" in msg
    assert "astype('category')" in msg
    assert w.filename == __file__


def test_float_grouping_with_few_values_warns(adata, stop_at_fit):
    adata.obs["dose"] = np.array([0.5, 1.5, 2.5])[np.arange(adata.n_obs) % 3]
    with pytest.warns(UserWarning, match=r"'dose' is a float column with 3 distinct.*\+ dose"):
        with pytest.raises(FitCalled):
            run(adata, "~ log_umi + (1|patient) + (1|dose)", method="REML")


def test_categorical_numbers_as_grouping_do_not_warn(adata, stop_at_fit):
    """The fix the warning suggests silences it."""
    adata.obs["n_genes"] = pd.Categorical(300 + 7 * (np.arange(adata.n_obs) % 90))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(FitCalled):
            run(adata, "~ log_umi + (1|patient) + (1|n_genes)", method="REML")


def _counts(adata, kind):
    rng = np.random.default_rng(11)
    counts = rng.poisson(3.0, size=adata.shape)
    adata.X = {
        "float": counts.astype(np.float32),
        "int": counts.astype(np.int64),
        "csr": sp.csr_matrix(counts.astype(np.float32)),
    }[kind]


@pytest.mark.parametrize("kind", ["float", "int", "csr"])
def test_raw_counts_warn(adata, stop_at_fit, kind):
    _counts(adata, kind)
    with pytest.warns(UserWarning, match=r"raw counts.*log"), pytest.raises(FitCalled):
        run(adata)


def test_raw_counts_in_layer_warning_names_layer(adata, stop_at_fit):
    adata.layers["counts"] = np.random.default_rng(2).poisson(3.0, adata.shape).astype(float)
    with pytest.warns(UserWarning, match=r"adata\.layers\['counts'\] looks like raw counts"):
        with pytest.raises(FitCalled):
            run(adata, layer="counts")


def test_lognormalised_data_does_not_warn(adata, stop_at_fit):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(FitCalled):
            run(adata, method="REML")


@pytest.mark.parametrize("kind", ["dense", "csr"])
def test_unlogged_values_warn(adata, stop_at_fit, kind):
    """TPM-like values: not integers, in the tens of thousands."""
    rng = np.random.default_rng(12)
    tpm = rng.gamma(0.3, 400.0, size=adata.shape) * (rng.random(adata.shape) < 0.6)
    tpm[0, 0] = 45_000.5
    adata.X = sp.csr_matrix(tpm) if kind == "csr" else tpm
    with pytest.warns(UserWarning, match=r"values up to 45,000\.5.*not log-transformed.*log1p"):
        with pytest.raises(FitCalled):
            run(adata, method="REML")


def test_few_levels_under_ml_warn_once_naming_them(adata, stop_at_fit):
    with pytest.warns(UserWarning) as rec, pytest.raises(FitCalled):
        run(adata)  # ML, the default
    (w,) = [w for w in rec if "method='ML'" in str(w.message)]
    msg = str(w.message)
    assert "'chemistry' (3 levels)" in msg and "'operator' (4 levels)" in msg
    assert "'patient'" not in msg and "'day'" not in msg  # 12 and 6 levels
    assert "method='REML'" in msg
    assert w.filename == __file__


def test_few_levels_do_not_warn_under_reml_or_with_many_levels(adata, stop_at_fit):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(FitCalled):
            run(adata, method="REML")
        with pytest.raises(FitCalled):
            run(adata, "~ log_umi + (1|patient) + (1|day)")  # ML, 12 and 6 levels


def _nan_obs(adata):
    adata.obs["log_umi"] = adata.obs["log_umi"].astype(float)
    adata.obs.iloc[0, adata.obs.columns.get_loc("log_umi")] = np.nan


@pytest.mark.parametrize(
    "prepare, formula, match",
    [
        (_float_grouping, "~ log_umi + (1|patient) + (1|depth)", r"'depth'"),
        (lambda a: _counts(a, "float"), FORMULA, r"raw counts"),
        (_nan_obs, FORMULA, r"Dropping 1 of"),
    ],
    ids=["float-grouping", "raw-counts", "missing-covariate"],
)
def test_warnings_point_at_the_callers_line(adata, stop_at_fit, prepare, formula, match):
    """A warning is attributed to the user's call, not to a line inside scvarpart."""
    prepare(adata)
    with pytest.warns(UserWarning, match=match) as rec, pytest.raises(FitCalled):
        run(adata, formula)
    w = next(w for w in rec if re.search(match, str(w.message)))
    assert w.filename == __file__, f"warning attributed to {w.filename}:{w.lineno}"


# --- known covariances between levels and observation weights ------------------------


def _kinship(adata: AnnData, change=None) -> pd.DataFrame:
    """A positive definite K over the patients, optionally broken by ``change``."""
    levels = [str(p) for p in adata.obs["patient"].cat.categories]
    rng = np.random.default_rng(0)
    G = rng.normal(size=(len(levels), 30))
    K = pd.DataFrame(G @ G.T / 30 + 0.5 * np.eye(len(levels)), index=levels, columns=levels)
    return K if change is None else change(K)


def _drop_level(K):
    return K.iloc[1:, 1:]


def _asymmetric(K):
    K = K.copy()
    K.iloc[0, 1] += 0.3
    return K


def _indefinite(K):
    return K - 2.0 * np.eye(len(K)) * K.to_numpy().diagonal().max()


def _nan_entry(K):
    K = K.copy()
    K.iloc[2, 2] = np.nan
    return K


COVARIANCE_CASES = [
    (
        "missing-level",
        _drop_level,
        FORMULA,
        ValueError,
        r"has no row for 1 level\(s\) of 'patient'",
    ),
    ("not-symmetric", _asymmetric, FORMULA, ValueError, r"is not symmetric: K\["),
    ("not-psd", _indefinite, FORMULA, ValueError, r"is not positive semi-definite"),
    ("nan", _nan_entry, FORMULA, ValueError, r"NaN or infinite entries"),
    ("array", lambda K: K.to_numpy(), FORMULA, TypeError, r"must be a pandas DataFrame"),
    (
        "slope-term",
        None,
        "~ log_umi + (log_umi|patient) + (1|chemistry)",
        DesignError,
        r"needs a random intercept \(1\|patient\)",
    ),
    (
        "unknown-term",
        None,
        "~ log_umi + (1|chemistry) + (1|day)",
        DesignError,
        r"covariance= names \['patient'\], which are not random terms",
    ),
]


@pytest.mark.parametrize(
    ("change", "formula", "exc", "match"),
    [c[1:] for c in COVARIANCE_CASES],
    ids=[c[0] for c in COVARIANCE_CASES],
)
def test_bad_covariance_is_refused_before_fit(adata, no_fit, change, formula, exc, match):
    K = _kinship(adata, change)
    snap = snapshot(adata)
    with pytest.raises(exc, match=match):
        run(adata, formula, covariance={"patient": K})
    assert_unchanged(adata, snap)


def _negative_weight(a):
    a.obs["w"] = 1.0
    a.obs.iloc[3, a.obs.columns.get_loc("w")] = -0.5


def _nan_weight(a):
    a.obs["w"] = 1.0
    a.obs.iloc[5, a.obs.columns.get_loc("w")] = np.nan


def _zero_weight(a):
    a.obs["w"] = 1.0
    a.obs.iloc[0, a.obs.columns.get_loc("w")] = 0.0


def _text_weight(a):
    a.obs["w"] = pd.Categorical(["high"] * a.n_obs)


WEIGHT_CASES = [
    ("negative", _negative_weight, "w", r"weights='w' must be positive and finite.*-0\.5"),
    ("nan", _nan_weight, "w", r"weights='w' must be positive and finite.*nan"),
    ("zero", _zero_weight, "w", r"weights='w' must be positive and finite.*0\.0"),
    ("categorical", _text_weight, "w", r"weights='w' must be numeric"),
    ("missing-column", _noop, "size_factor", r"weights='size_factor' is not a column"),
]


@pytest.mark.parametrize(
    ("prepare", "column", "match"), [c[1:] for c in WEIGHT_CASES], ids=[c[0] for c in WEIGHT_CASES]
)
def test_bad_weights_are_refused_before_fit(adata, no_fit, prepare, column, match):
    prepare(adata)
    snap = snapshot(adata)
    with pytest.raises(DesignError, match=re.compile(match, re.DOTALL)):
        run(adata, weights=column)
    assert_unchanged(adata, snap)
