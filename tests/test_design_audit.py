"""The design audit (``svp.pp.check_design``): relations, problems, storage and reports.

Small designs whose structure is known by construction: each relation between two
terms, every refusal of ``build_design`` listed at once, each weak-identification
warning, and the audit's way through ``uns``, h5ad and zarr files, a fit, the result
type, ``svp.get`` and the command line's ``report``.
"""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scvarpart as svp
from scvarpart.design import DesignError, audit_design, build_design


def _obs(n_per: int = 6, seed: int = 0) -> pd.DataFrame:
    """10 patients x 2 samples each (nested), 3 days crossed with patients, an age."""
    rng = np.random.default_rng(seed)
    patients = np.repeat([f"p{i}" for i in range(10)], 2 * n_per)
    sample = [f"{p}s{j % 2}" for j, p in enumerate(patients)]
    obs = pd.DataFrame({"patient": patients, "sample": sample})
    obs["day"] = np.tile(["d0", "d1", "d2"], len(obs) // 3 + 1)[: len(obs)]
    obs["age"] = obs["patient"].str[1:].astype(float) * 3 + 20
    obs["x"] = rng.normal(size=len(obs))
    return obs.astype({"patient": "category", "sample": "category", "day": "category"})


def _pair(audit, a: str, b: str) -> pd.Series:
    rows = audit.pairs[
        ((audit.pairs["term"] == a) & (audit.pairs["other"] == b))
        | ((audit.pairs["term"] == b) & (audit.pairs["other"] == a))
    ]
    assert len(rows) == 1, audit.pairs
    return rows.iloc[0]


def test_relations_of_pairs_of_terms():
    obs = _obs()
    audit = audit_design(build_design("~ age + x + (1|patient) + (1|sample) + (1|day)", obs))
    nested = _pair(audit, "sample", "patient")
    assert (nested["term"], nested["other"], nested["relation"]) == ("sample", "patient", "nested")
    assert nested["combinations"] == 20
    assert _pair(audit, "patient", "day")["relation"] == "crossed"
    within = _pair(audit, "age", "patient")
    assert (within["term"], within["other"], within["relation"]) == ("age", "patient", "within")
    assert _pair(audit, "x", "patient")["relation"] == ""
    assert audit.ok and not audit.errors
    assert audit.terms.loc["patient", "levels"] == 10
    assert audit.terms.loc["sample", "median_per_level"] == 6
    assert audit.terms.loc["day", "kind"] == "random"
    assert np.isnan(audit.terms.loc["x", "levels"])
    # the association is the one svp.pl.design shows
    table = svp.design.association(build_design("~ (1|patient) + (1|day)", obs))
    assert _pair(audit, "patient", "day")["association"] == pytest.approx(
        table.loc["patient", "day"]
    )


def test_partially_crossed_and_a_categorical_fixed_term():
    obs = _obs()
    obs = obs[~((obs["patient"] == "p0") & (obs["day"] == "d0"))]
    obs["cond"] = np.where(obs["patient"].isin(["p0", "p1", "p2"]), "case", "ctl")
    audit = audit_design(build_design("~ cond + (1|patient) + (1|day)", obs))
    assert _pair(audit, "patient", "day")["relation"] == "partially crossed"
    assert _pair(audit, "patient", "day")["combinations"] == 29
    assert _pair(audit, "cond", "patient")["relation"] == "within"
    assert audit.terms.loc["cond", "levels"] == 2
    assert audit.terms.loc["cond", "min_per_level"] == (obs["cond"] == "case").sum()


def test_every_problem_is_listed_where_build_design_names_the_first():
    obs = _obs()
    obs["batch"] = obs["patient"].map(lambda p: f"b{p}")  # the patients under another name
    obs["site"] = "s1"  # a single level
    formula = "~ (1|patient) + (1|batch) + (1|site)"
    with pytest.raises(DesignError, match="single level"):
        build_design(formula, obs)
    audit = audit_design(build_design(formula, obs, check=False))
    assert not audit.ok
    assert len(audit.errors) == 2
    assert "'site' has a single level" in audit.errors[0]
    assert "'patient' and 'batch' define the same groups" in audit.errors[1]
    assert _pair(audit, "patient", "batch")["relation"] == "confounded"
    text = audit.to_text()
    assert "errors:" in text and "Keep only" in text


def test_weakly_identified_components_are_warnings_that_say_what_they_mean():
    obs = _obs()
    # 7 of 10 patients with one sample only: sample and patient barely separable
    one = obs["patient"].isin([f"p{i}" for i in range(7)])
    obs["sample"] = obs["sample"].astype(str).where(~one, obs["patient"].astype(str) + "s0")
    obs["cell"] = [f"c{i}" if i % 3 else "shared" for i in range(len(obs))]  # singletons
    audit = audit_design(build_design("~ (1|patient/sample) + (1|day) + (1|cell)", obs))
    assert audit.ok
    text = "\n".join(audit.warnings)
    assert "'day' has 3 levels" in text and "factor 2/3" in text
    assert "7 of 10 levels of 'patient' hold a single level of 'patient:sample'" in text
    assert "of 81 levels of 'cell' have a single observation" in text
    assert audit.warning_kinds == ("few levels", "singletons", "nested")
    # fewer levels than few_levels only
    assert len(audit_design(build_design("~ (1|day)", obs), few_levels=3).warnings) == 0


def test_check_design_prints_stores_and_returns(capsys):
    adata = svp.datasets.crossed_example(n_cells=400, n_genes=3, seed=2)
    formula = svp.datasets.EXAMPLE_FORMULA
    assert svp.pp.check_design(adata, formula) is None
    printed = capsys.readouterr().out
    assert printed.startswith("design of 400 observations: ~ log_umi")
    assert "pairs of terms" in printed and "'chemistry' has 3 levels" in printed
    stored = svp.get.design(adata)
    returned = svp.pp.check_design(adata, formula, show=False, inplace=False)
    assert capsys.readouterr().out == ""
    pd.testing.assert_frame_equal(stored.terms, returned.terms)
    pd.testing.assert_frame_equal(stored.pairs, returned.pairs)
    assert stored.warnings == returned.warnings
    # cells= selects the cells audited
    sub = svp.pp.check_design(
        adata, formula, cells={"chemistry": ["3p_v2", "3p_v3"]}, show=False, inplace=False
    )
    assert sub.terms.loc["chemistry", "levels"] == 2
    assert sub.n_obs == int(adata.obs["chemistry"].isin(["3p_v2", "3p_v3"]).sum())


def test_check_design_bad_input():
    adata = svp.datasets.crossed_example(n_cells=200, n_genes=2, seed=0)
    with pytest.raises(DesignError, match="'donor'"):
        svp.pp.check_design(adata, "~ (1|donor)", show=False)
    with pytest.raises(ValueError, match="few_levels=1"):
        svp.pp.check_design(adata, "~ (1|patient)", few_levels=1, show=False)
    with pytest.raises(KeyError, match="No design audit under key 'other'"):
        svp.get.design(adata, key="other")


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_the_audit_of_a_fit_round_trips_through_files(tmp_path, fmt):
    adata = svp.datasets.crossed_example(n_cells=400, n_genes=4, seed=3)
    svp.tl.variance_partition(adata, svp.datasets.EXAMPLE_FORMULA, method="REML", progress=False)
    fitted = svp.get.result(adata).design
    assert fitted is not None and fitted.formula == svp.datasets.EXAMPLE_FORMULA
    path = tmp_path / f"a.{fmt}"
    getattr(adata, f"write_{fmt}")(path)
    back = getattr(ad, f"read_{fmt}")(path)
    for audit in (svp.get.design(back), svp.varpart.VarPartResult.read(back).design):
        pd.testing.assert_frame_equal(audit.terms, fitted.terms)
        pd.testing.assert_frame_equal(audit.pairs, fitted.pairs)
        assert (audit.errors, audit.warnings, audit.n_obs) == (
            fitted.errors,
            fitted.warnings,
            fitted.n_obs,
        )


def test_report_prints_the_audit(tmp_path):
    adata = svp.datasets.crossed_example(n_cells=400, n_genes=4, seed=4)
    svp.tl.variance_partition(adata, svp.datasets.EXAMPLE_FORMULA, method="REML", progress=False)
    path = tmp_path / "fit.h5ad"
    adata.write_h5ad(path)
    out = subprocess.run(
        [sys.executable, "-m", "scvarpart", "report", str(path), "--tsv", str(tmp_path / "t.tsv")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "design of 400 observations" in out
    assert "partially crossed" in out and "'chemistry' has 3 levels" in out


def test_a_fit_warns_about_weak_components_other_than_few_levels_under_reml():
    obs = _obs(n_per=10)
    one = obs["patient"].isin([f"p{i}" for i in range(7)])
    obs["sample"] = obs["sample"].astype(str).where(~one, obs["patient"].astype(str) + "s0")
    adata = ad.AnnData(np.random.default_rng(0).normal(size=(len(obs), 3)), obs=obs)
    with pytest.warns(UserWarning, match="weakly") as record:
        svp.tl.variance_partition(adata, "~ (1|patient/sample) + (1|day)", method="REML")
    (message,) = [str(w.message) for w in record]
    assert "7 of 10 levels of 'patient'" in message and "'day' has" not in message
