"""The plan's [checks]: declared in advance, run by ``scvarpart fit``, reported by
``scvarpart report`` (which says what ran and what it found)."""

from __future__ import annotations

import anndata as ad
import pandas as pd
import pytest
from test_cli import cli, ok

import scvarpart as svp
from scvarpart.plan import CHECKS, PlanError, read_plan

FORMULA = "~ log_umi + (1|patient) + (1|chemistry) + (1|day) + (1|operator)"
MODEL = f"""formula = "{FORMULA}"
method = "REML"
batch = ["chemistry", "day", "operator"]
signal = ["patient"]
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checks")
    svp.datasets.crossed_example(n_cells=1200, n_genes=8, seed=3).write_h5ad(folder / "in.h5ad")
    return folder


def test_read_plan_fills_the_checks_defaults_and_refuses_bad_values(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(MODEL + '[checks]\ndiagnose = true\nleave_out = "day"\n')
    checks = read_plan(plan).checks
    assert checks == {**{k: d for k, (_, d) in CHECKS.items()}, "diagnose": True,
                      "leave_out": ["day"]}  # fmt: skip
    plan.write_text(MODEL)
    assert read_plan(plan).checks is None
    for bad, match in (
        ("fdr = 1.5", "checks.fdr must be a number between 0 and 1"),
        ("diagnose = 1", "checks.diagnose must be true or false"),
        ("max_change = -1", "checks.max_change must be a positive number"),
        ("qq = true", r"\[checks\] may hold"),
    ):
        plan.write_text(MODEL + f"[checks]\n{bad}\n")
        with pytest.raises(PlanError, match=match):
            read_plan(plan)


def test_fit_runs_the_declared_diagnostics_and_report_states_them(data, tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(
        MODEL + 'test = "lrt"\n[checks]\ndiagnose = true\nleave_out = ["chemistry"]\n'
        "max_std_blup = 1.5\n"
    )
    out = tmp_path / "out.h5ad"
    ok(cli("fit", data / "in.h5ad", "--plan", plan, "--quiet", "-o", out))
    result = ad.read_h5ad(out)
    expected = ad.read_h5ad(data / "in.h5ad")
    svp.tl.variance_partition(
        expected, FORMULA, method="REML", batch=["chemistry", "day", "operator"],
        signal="patient", test="lrt", progress=False,
    )  # fmt: skip
    svp.tl.diagnose(expected, leave_out="chemistry")
    for table in ("influence", "blups", "residuals"):
        pd.testing.assert_frame_equal(
            svp.get.diagnostics(result, table), svp.get.diagnostics(expected, table)
        )
    columns = [c for c in expected.var if c.startswith("varpart_diagnostics_")]
    pd.testing.assert_frame_equal(result.var[columns], expected.var[columns])
    assert result.uns["varpart"]["params"]["checks"]["max_std_blup"] == 1.5
    report = ok(cli("report", out, "--tsv", tmp_path / "r.tsv")).stdout
    flagged = expected.var["varpart_diagnostics_max_std_blup"] > 1.5
    assert "declared checks (the plan's [checks]):" in report
    assert "intervals of the fractions and rho: ran (level 0.95)" in report
    assert "likelihood-ratio tests: ran; genes with q < 0.05: patient" in report
    assert "diagnostics: ran on 8 genes" in report
    assert f"a standardised BLUP beyond +-1.5: {int(flagged.sum())} genes" in report
    assert "without one level: " in report


def test_checks_not_declared_or_not_run_are_said_so(data, tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(MODEL + 'ci = "none"\n[checks]\nfdr = 0.1\n')
    out = tmp_path / "out.h5ad"
    ok(cli("fit", data / "in.h5ad", "--plan", plan, "--quiet", "-o", out))
    report = ok(cli("report", out, "--tsv", tmp_path / "r.tsv")).stdout
    assert 'intervals of the fractions and rho: not run (ci = "none")' in report
    assert 'likelihood-ratio tests: not run (the plan has no test = "lrt")' in report
    assert "diagnostics: not declared" in report
    # without a plan's checks the report has no such section
    plain = tmp_path / "plain.h5ad"
    ok(cli("fit", data / "in.h5ad", "--formula", FORMULA, "--quiet", "-o", plain))
    assert "declared checks" not in ok(cli("report", plain, "--tsv", tmp_path / "p.tsv")).stdout


def test_declared_diagnostics_of_gene_chunks_merge_into_the_single_run(data, tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(MODEL + '[checks]\ndiagnose = true\nleave_out = ["operator"]\n')
    single = tmp_path / "single.h5ad"
    ok(cli("fit", data / "in.h5ad", "--plan", plan, "--quiet", "-o", single))
    chunks = []
    for i in (1, 2, 3):
        chunks.append(tmp_path / f"c{i}.h5ad")
        ok(cli("fit", data / "in.h5ad", "--plan", plan, "--genes", f"{i}/3", "--quiet",
               "-o", chunks[-1]))  # fmt: skip
    merged = tmp_path / "merged.h5ad"
    ok(cli("merge", *reversed(chunks), "--into", data / "in.h5ad", "-o", merged))
    a, b = ad.read_h5ad(merged), ad.read_h5ad(single)
    for table in ("influence", "blups", "residuals"):
        pd.testing.assert_frame_equal(svp.get.diagnostics(a, table), svp.get.diagnostics(b, table))
    columns = [c for c in b.var if c.startswith("varpart_diagnostics_")]
    assert len(columns) == 10
    pd.testing.assert_frame_equal(a.var[columns], b.var[columns])
    assert list(a.uns["varpart_diagnostics"]["params"]["genes"]) == list(b.var_names)
    # chunks with and without diagnostics do not merge
    other = tmp_path / "other.toml"
    other.write_text(MODEL)
    ok(cli("fit", data / "in.h5ad", "--plan", other, "--genes", "1/3", "--quiet",
           "-o", tmp_path / "x1.h5ad"))  # fmt: skip
    run = cli("merge", tmp_path / "x1.h5ad", chunks[1], chunks[2], "--into", data / "in.h5ad",
              "-o", tmp_path / "bad.h5ad")  # fmt: skip
    assert run.returncode != 0 and not (tmp_path / "bad.h5ad").exists()
