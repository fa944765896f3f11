"""Profile-likelihood intervals of the variances against lme4's ``confint(method="profile")``.

References: ``tests/data/lme4_profile/reference.json`` (lme4 1.1-31, fine profiles; see
the README there), on lme4's Dyestuff, Dyestuff2 (a variance at 0), Penicillin (crossed),
Pastes (nested) and six genes of the simulated crossed single-cell design (four factors,
2,000 cells). lme4 profiles the ML deviance, also for REML fits (it refits them by ML
first), so the references are compared with ``svp.lmm.profile_confint(method="ML")``:
each standard deviation's bounds (the square roots of the variances') to 1e-3 relative,
and a lower bound of 0 exactly where lme4's is 0.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, read_reference_csv

import scvarpart as svp
from scvarpart.design import build_design, parse_formula

REFERENCE = DATA / "lme4_profile" / "reference.json"
RTOL = 1e-3


def _records():
    records = json.loads(REFERENCE.read_text())
    return [r for r in records if r["method"] == "ML"]


def _stats(record):
    if record["dataset"] == "synth_crossed":
        obs = pd.read_csv(DATA / "synth_crossed" / "obs.csv", index_col=0)
        for col in ("patient", "chemistry", "day", "operator"):
            obs[col] = obs[col].astype("category")
        expr = pd.read_csv(DATA / "synth_crossed" / "expr.csv.gz", index_col=0)
        frame = obs.assign(expr=expr[record["gene"]].to_numpy())
    else:
        frame = read_reference_csv(record["dataset"])
    parsed = parse_formula(record["formula"])
    design = build_design(parsed, frame)
    y = frame[[parsed.response]].to_numpy(float)
    return svp.lmm.response_stats(y, design)


def _component(parameter: str) -> str | None:
    """Our component of one of lme4's parameters (None for fixed effects)."""
    if parameter == "sigma":
        return "Residual"
    if parameter.startswith("sd_(Intercept)|"):
        return parameter.split("|", 1)[1]
    return None


RECORDS = _records()
IDS = [f"{r['dataset']}-{r.get('gene') or ''}-{r['level']}" for r in RECORDS]


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_profile_intervals_match_lme4(record):
    table = svp.lmm.profile_confint(_stats(record), method="ML", level=float(record["level"]))
    ours = table.set_index("component")
    checked = 0
    for parameter, lower, upper in zip(
        record["parameters"], record["lower"], record["upper"], strict=True
    ):
        component = _component(parameter)
        if component is None:
            continue
        row = ours.loc[component]  # a nested factor keeps lme4's name, "batch:cask"
        low, high = np.sqrt(row["low"]), np.sqrt(row["high"])
        where = f"{parameter}: ours [{low:.7g}, {high:.7g}], lme4 [{lower:.7g}, {upper:.7g}]"
        if lower == 0:
            assert low == 0, where
        else:
            assert low == pytest.approx(lower, rel=RTOL), where
        assert high == pytest.approx(upper, rel=RTOL), where
        checked += 1
    assert checked == len(ours)


def test_intervals_hold_the_estimate_and_widen_with_the_level():
    record = next(r for r in RECORDS if r["dataset"] == "Penicillin")
    stats = _stats(record)
    narrow = svp.lmm.profile_confint(stats, level=0.8)
    wide = svp.lmm.profile_confint(stats, level=0.99)
    assert (wide["low"] <= narrow["low"]).all() and (narrow["high"] <= wide["high"]).all()
    assert ((narrow["low"] < narrow["variance"]) & (narrow["variance"] < narrow["high"])).all()


def test_bad_level_and_method_are_refused():
    stats = _stats(next(r for r in RECORDS if r["dataset"] == "Dyestuff"))
    with pytest.raises(ValueError, match="level must be between 0 and 1"):
        svp.lmm.profile_confint(stats, level=95)
    with pytest.raises(ValueError, match="method must be 'ML' or 'REML'"):
        svp.lmm.profile_confint(stats, method="GLS")


def test_a_gene_has_the_same_intervals_alone_and_among_others():
    """Each gene's bounds depend on its own profile only: genes with a variance at 0
    among the others once made the lower bounds' root finding evaluate the profiles of
    other genes."""
    adata = svp.datasets.donor_batch(400, 12, n_donors=8, n_batches=4, seed=3)
    Y, obs, formula = adata.X, adata.obs, svp.datasets.DONOR_BATCH_FORMULA
    together = svp.lmm.profile_confint(svp.lmm.response_stats(Y, formula, obs=obs), method="REML")
    assert (together["variance"] == 0).any() and (together["variance"] > 0).any()
    for g in range(12):
        alone = svp.lmm.profile_confint(
            svp.lmm.response_stats(Y[:, [g]], formula, obs=obs), method="REML"
        )
        mine = together.iloc[3 * g : 3 * g + 3]
        np.testing.assert_array_equal(mine[["low", "high"]], alone[["low", "high"]])
