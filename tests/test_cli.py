"""The command line: fit, chunks and merge, report, plans, provenance, exit codes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scvarpart as svp
from scvarpart.cli import main
from scvarpart.provenance import file_fingerprint

FORMULA = svp.datasets.EXAMPLE_FORMULA
MODEL = [
    "--formula",
    FORMULA,
    "--batch",
    "chemistry,day,operator",
    "--signal",
    "patient",
]
PLAN = f"""formula = "{FORMULA}"
method = "ML"
batch = ["chemistry", "day", "operator"]
signal = ["patient"]

[filters]
min_cells = 0
"""


class Run(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def cli(*args, cwd=None) -> Run:
    """Run ``scvarpart ARGS`` in this process (fast: no new interpreter); the entry
    point itself is tested in a subprocess below."""
    import scanpy as sc

    out, err = io.StringIO(), io.StringIO()
    verbosity, here = sc.settings.verbosity, os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse
                code = exc.code
    finally:
        os.chdir(here)
        sc.settings.verbosity = verbosity
    return Run(code, out.getvalue(), err.getvalue())


def ok(proc: Run) -> Run:
    assert proc.returncode == 0, proc.stderr
    return proc


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    ok(cli("simulate", "--n-cells", 600, "--n-genes", 23, "-o", folder / "in.h5ad"))
    ok(cli("fit", folder / "in.h5ad", *MODEL, "--quiet", "-o", folder / "full.h5ad"))
    return folder


def test_fit_writes_a_copy_with_the_api_results(work):
    source = ad.read_h5ad(work / "in.h5ad")
    out = ad.read_h5ad(work / "full.h5ad")
    np.testing.assert_array_equal(out.X, source.X)  # the input's data, untouched
    expected = svp.tl.variance_partition(
        source, FORMULA, batch=["chemistry", "day", "operator"], signal="patient", inplace=False
    )
    pd.testing.assert_frame_equal(out.varm["varpart"], expected.fractions, check_exact=True)
    params = out.uns["varpart"]["params"]
    assert params["input"] == "in.h5ad"
    assert params["input_fingerprint"] == file_fingerprint(work / "in.h5ad")
    assert params["params_fingerprint"].startswith("blake2b:")
    assert params["plan"] is None and params["versions"]["scvarpart"] == svp.__version__


@pytest.mark.parametrize("n_chunks", [1, 3, 7])
def test_chunks_merge_into_exactly_the_single_run(work, tmp_path, n_chunks):
    before = _md5(work / "in.h5ad")
    chunks = []
    for i in range(1, n_chunks + 1):
        path = tmp_path / f"chunk{i}.h5ad"
        ok(
            cli(
                "fit", work / "in.h5ad", *MODEL, "--genes", f"{i}/{n_chunks}", "--quiet", "-o", path
            )
        )
        chunks.append(path)
    merged = tmp_path / "merged.h5ad"
    ok(cli("merge", *reversed(chunks), "--into", work / "in.h5ad", "-o", merged))
    assert _md5(work / "in.h5ad") == before  # the input is never modified
    single, combined = ad.read_h5ad(work / "full.h5ad"), ad.read_h5ad(merged)
    for key in ("varpart", "varpart_variance"):
        pd.testing.assert_frame_equal(combined.varm[key], single.varm[key], check_exact=True)
    pd.testing.assert_frame_equal(combined.var, single.var, check_exact=True)
    assert repr(combined.uns["varpart"]["summary"]) == repr(single.uns["varpart"]["summary"])
    assert repr(combined.uns["varpart"]["params"]) == repr(single.uns["varpart"]["params"])


def test_merge_refuses_inconsistent_or_incomplete_chunks(work, tmp_path):
    def chunk(i, n, *extra, source=work / "in.h5ad"):
        path = tmp_path / f"c{i}of{n}{len(extra)}{source.stem}.h5ad"
        ok(cli("fit", source, *MODEL, "--genes", f"{i}/{n}", "--quiet", *extra, "-o", path))
        return path

    c1, c2, c3 = chunk(1, 3), chunk(2, 3), chunk(3, 3)
    into = ["--into", work / "in.h5ad", "-o", tmp_path / "m.h5ad"]
    proc = cli("merge", c1, c3, *into)
    assert proc.returncode == 5 and "missing chunks 2/3" in proc.stderr
    proc = cli("merge", c1, c2, c2, c3, *into)
    assert proc.returncode == 5 and "duplicated chunks 2/3" in proc.stderr
    reml = chunk(2, 3, "--method", "REML")
    proc = cli("merge", c1, reml, c3, *into)
    assert proc.returncode == 5 and "different analysis parameters" in proc.stderr
    assert str(reml) in proc.stderr
    proc = cli("merge", c1, c2, chunk(3, 4), *into)
    assert proc.returncode == 5 and "different numbers of chunks" in proc.stderr
    # chunks of another input, and chunks merged into another input
    ok(cli("simulate", "--n-cells", 600, "--n-genes", 23, "--seed", 9, "-o", tmp_path / "o.h5ad"))
    other = chunk(2, 3, source=tmp_path / "o.h5ad")
    proc = cli("merge", c1, other, c3, *into)
    assert proc.returncode == 5 and "different inputs" in proc.stderr
    proc = cli("merge", c1, c2, c3, "--into", tmp_path / "o.h5ad", "-o", tmp_path / "m.h5ad")
    assert proc.returncode == 5 and "another input" in proc.stderr
    proc = cli("merge", work / "full.h5ad", *into)
    assert proc.returncode == 5 and "is not a chunk" in proc.stderr
    assert not (tmp_path / "m.h5ad").exists()


def test_plan_fixes_the_analysis_and_is_recorded(work, tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    out = tmp_path / "planned.h5ad"
    ok(cli("fit", work / "in.h5ad", "--plan", plan, "--quiet", "-o", out))
    result = ad.read_h5ad(out)
    params = result.uns["varpart"]["params"]
    assert params["plan"] == "plan.toml"
    assert params["plan_sha256"] == hashlib.sha256(plan.read_bytes()).hexdigest()
    single = ad.read_h5ad(work / "full.h5ad")
    pd.testing.assert_frame_equal(result.varm["varpart"], single.varm["varpart"], check_exact=True)
    # the same plan in YAML
    yaml_plan = tmp_path / "plan.yaml"
    yaml_plan.write_text(
        f'formula: "{FORMULA}"\nbatch: [chemistry, day, operator]\nsignal: patient\n'
    )
    ok(cli("fit", work / "in.h5ad", "--plan", yaml_plan, "--quiet", "-o", tmp_path / "y.h5ad"))
    pd.testing.assert_frame_equal(
        ad.read_h5ad(tmp_path / "y.h5ad").varm["varpart"], single.varm["varpart"]
    )
    # options that the plan fixes are refused
    proc = cli("fit", work / "in.h5ad", "--plan", plan, "--method", "REML", "-o", tmp_path / "x")
    assert proc.returncode == 2 and "--method: fixed by the plan" in proc.stderr


def test_plan_filters(work, tmp_path):
    plan = tmp_path / "filters.toml"
    plan.write_text(
        PLAN.replace("min_cells = 0", 'min_cells = 601\ncells = { chemistry = ["3p_v2", "3p_v3"] }')
    )
    out = tmp_path / "filtered.h5ad"
    ok(cli("fit", work / "in.h5ad", "--plan", plan, "--quiet", "-o", out))
    result = ad.read_h5ad(out)
    source = ad.read_h5ad(work / "in.h5ad")
    kept = source.obs["chemistry"].isin(["3p_v2", "3p_v3"]).sum()
    assert result.uns["varpart"]["params"]["n_obs"] == kept
    # dense Gaussian data: every gene is non-zero in every kept cell, fewer than 601
    reasons = result.uns["varpart"]["errors"]["reason"]
    assert len(reasons) == 23 and reasons.str.startswith("filtered: non-zero in").all()


@pytest.mark.parametrize(
    ("plan_text", "match"),
    [
        ('formula = "~ (1|patient)"\nbogus = 1\n', "Unknown keys \\['bogus'\\]"),
        ("method = 'ML'\n", "must give the formula"),
        ('formula = "~ (1|patient)"\nmethod = "MAP"\n', "'ML' or 'REML'"),
        ('formula = "~ (1|patient)"\n[filters]\nmin_cells = -1\n', "non-negative"),
        ("formula = [unclosed\n", "does not parse"),
    ],
)
def test_invalid_plans_exit_3(work, tmp_path, plan_text, match):
    plan = tmp_path / "bad.toml"
    plan.write_text(plan_text)
    proc = cli("fit", work / "in.h5ad", "--plan", plan, "-o", tmp_path / "out.h5ad")
    assert proc.returncode == 3
    assert re.search(match, proc.stderr), proc.stderr


def test_exit_codes_and_messages(work, tmp_path):
    out = tmp_path / "o.h5ad"
    proc = cli("fit", work / "in.h5ad", "-o", out)
    assert proc.returncode == 2 and "give the model" in proc.stderr
    proc = cli("fit", work / "in.h5ad", "--formula", "~ (1|nope)", "-o", out)
    assert proc.returncode == 3 and "'nope'" in proc.stderr
    proc = cli("fit", work / "missing.h5ad", *MODEL, "-o", out)
    assert proc.returncode == 3 and "does not exist" in proc.stderr
    proc = cli("fit", work / "in.h5ad", *MODEL, "--genes", "4/3", "-o", out)
    assert proc.returncode == 2 and "1 <= I <= N" in proc.stderr
    proc = cli("fit", work / "in.h5ad", *MODEL, "--genes", "1/24", "-o", out)
    assert proc.returncode == 3 and "more chunks than the 23 genes" in proc.stderr
    before = _md5(work / "full.h5ad")
    proc = cli("fit", work / "in.h5ad", *MODEL, "-o", work / "full.h5ad")
    assert proc.returncode == 4 and "--force" in proc.stderr
    assert _md5(work / "full.h5ad") == before
    before = _md5(work / "in.h5ad")
    proc = cli("fit", work / "in.h5ad", *MODEL, "--force", "-o", work / "in.h5ad")
    assert proc.returncode == 4 and "is an input" in proc.stderr
    assert _md5(work / "in.h5ad") == before
    proc = cli("fit", work / "in.h5ad", "--bogus")
    assert proc.returncode == 2
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written


def test_report_prints_a_summary_and_writes_a_tsv(work, tmp_path):
    proc = ok(cli("report", work / "full.h5ad", "--top", 3, cwd=tmp_path))
    assert "median fraction" in proc.stdout and "patient" in proc.stdout
    assert "most batch-dominated genes" in proc.stdout
    table = pd.read_csv(tmp_path / "full.varpart.tsv", sep="\t", index_col="gene")
    result = ad.read_h5ad(work / "full.h5ad")
    assert list(table.index) == list(result.var_names)
    np.testing.assert_allclose(table["fraction_patient"], result.varm["varpart"]["patient"])
    np.testing.assert_allclose(table["rho"], result.var["varpart_rho"])
    assert {"variance_Residual", "singular", "converged", "loglik", "error"} <= set(table)
    before = (tmp_path / "full.varpart.tsv").read_bytes()
    proc = ok(cli("report", work / "full.h5ad", cwd=tmp_path))  # a rerun: the same table
    assert "is up to date" in proc.stdout
    assert (tmp_path / "full.varpart.tsv").read_bytes() == before
    proc = cli("report", work / "full.h5ad", "--key", "other", cwd=tmp_path)
    assert proc.returncode == 3 and "results found: ['varpart']" in proc.stderr


@pytest.mark.parametrize("command", ["fit", "merge", "report", "simulate", "example"])
def test_help_documents_every_option_with_an_example(command):
    proc = ok(cli(command, "--help"))
    assert "example" in proc.stdout.lower() and "exit codes" in proc.stdout
    proc = ok(cli("--help"))
    for name in ("fit", "merge", "report"):
        assert name in proc.stdout


def test_entry_points_and_exit_code_in_a_real_process(work, tmp_path):
    """``scvarpart`` and ``python -m scvarpart`` run the same program."""
    proc = subprocess.run(
        [sys.executable, "-m", "scvarpart", "fit", str(work / "in.h5ad"), "-o", "x.h5ad"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "give the model" in proc.stderr
    import shutil

    exe = shutil.which("scvarpart")
    if exe is None:
        pytest.skip("the scvarpart console script is not on PATH (package not installed)")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert proc.stdout.strip() == f"scvarpart {svp.__version__}"


def test_results_do_not_depend_on_threads_or_blocks(work, tmp_path):
    single = ad.read_h5ad(work / "full.h5ad")
    threads = tmp_path / "threads.h5ad"
    ok(cli("fit", work / "in.h5ad", *MODEL, "--n-jobs", 2, "--quiet", "-o", threads))
    other = ad.read_h5ad(threads)
    pd.testing.assert_frame_equal(other.varm["varpart"], single.varm["varpart"], check_exact=True)
    assert repr(other.uns["varpart"]) == repr(single.uns["varpart"])
    # other blocks of cells sum the same numbers in another order: equal to rounding
    blocks = tmp_path / "blocks.h5ad"
    ok(cli("fit", work / "in.h5ad", *MODEL, "--chunk-size", 97, "--quiet", "-o", blocks))
    pd.testing.assert_frame_equal(
        ad.read_h5ad(blocks).varm["varpart"], single.varm["varpart"], rtol=1e-10, atol=1e-12
    )


# --- likelihood-ratio tests (--test lrt) ------------------------------------------------


def test_fit_with_test_lrt_stores_the_tests_of_the_api(work, tmp_path):
    out = tmp_path / "lrt.h5ad"
    ok(cli("fit", work / "in.h5ad", *MODEL, "--test", "lrt", "--quiet", "-o", out))
    result, single = ad.read_h5ad(out), ad.read_h5ad(work / "full.h5ad")
    expected = svp.tl.variance_partition(
        ad.read_h5ad(work / "in.h5ad"), FORMULA, batch=["chemistry", "day", "operator"],
        signal="patient", test="lrt", inplace=False, progress=False,
    )  # fmt: skip
    terms = ["patient", "chemistry", "day", "operator"]
    for name in ("lrt", "pvalue", "qvalue"):
        table = result.varm[f"varpart_{name}"]
        assert list(table.columns) == terms
        pd.testing.assert_frame_equal(table, getattr(expected, name), check_exact=True)
    assert result.uns["varpart"]["params"]["test"] == "lrt"
    assert "test" not in single.uns["varpart"]["params"]
    # the tests change nothing else
    pd.testing.assert_frame_equal(result.varm["varpart"], single.varm["varpart"], check_exact=True)
    assert (
        result.uns["varpart"]["params"]["params_fingerprint"]
        != (single.uns["varpart"]["params"]["params_fingerprint"])
    )
    # an unknown test is a usage error, refused before any fit
    proc = cli("fit", work / "in.h5ad", *MODEL, "--test", "wald", "-o", tmp_path / "x.h5ad")
    assert proc.returncode == 2 and "invalid choice: 'wald'" in proc.stderr
    assert not (tmp_path / "x.h5ad").exists()


def test_chunks_with_test_lrt_merge_into_the_single_run_with_qvalues_over_all_genes(work, tmp_path):
    """The q-values of a chunk are adjusted over its genes only: merge adjusts them again
    over all genes, so that the merged result is the single fit's, bit for bit."""
    single = tmp_path / "single.h5ad"
    ok(cli("fit", work / "in.h5ad", *MODEL, "--test", "lrt", "--quiet", "-o", single))
    chunks = []
    for i in (1, 2, 3):
        chunks.append(tmp_path / f"lrt{i}.h5ad")
        ok(cli("fit", work / "in.h5ad", *MODEL, "--test", "lrt", "--genes", f"{i}/3",
               "--quiet", "-o", chunks[-1]))  # fmt: skip
    merged = tmp_path / "merged.h5ad"
    ok(cli("merge", *reversed(chunks), "--into", work / "in.h5ad", "-o", merged))
    combined, expected = ad.read_h5ad(merged), ad.read_h5ad(single)
    assert_same_varm(combined, expected)
    assert {"varpart_lrt", "varpart_pvalue", "varpart_qvalue"} <= set(combined.varm)
    pd.testing.assert_frame_equal(combined.var, expected.var, check_exact=True)
    assert repr(combined.uns["varpart"]) == repr(expected.uns["varpart"])
    # which is not what the chunks hold
    q = expected.varm["varpart_qvalue"]
    in_chunks = pd.concat([ad.read_h5ad(c).varm["varpart_qvalue"] for c in chunks])
    assert not in_chunks.equals(q)
    pd.testing.assert_frame_equal(
        pd.concat([ad.read_h5ad(c).varm["varpart_pvalue"] for c in chunks]),
        expected.varm["varpart_pvalue"],
        check_exact=True,
    )
    # chunks fitted with and without the tests are not merged
    plain = tmp_path / "plain2.h5ad"
    ok(cli("fit", work / "in.h5ad", *MODEL, "--genes", "2/3", "--quiet", "-o", plain))
    proc = cli("merge", chunks[0], plain, chunks[2], "--into", work / "in.h5ad",
               "-o", tmp_path / "m.h5ad")  # fmt: skip
    assert proc.returncode == 5 and "different analysis parameters" in proc.stderr
    assert str(plain) in proc.stderr and not (tmp_path / "m.h5ad").exists()


# --- parametric bootstrap (--n-boot, --seed, --ci) -------------------------------------

BOOT = ["--n-boot", 20, "--seed", 3, "--ci", 0.9]
BOOT_TABLES = ("varpart_boot_low", "varpart_boot_high")
BOOT_RHO = ("varpart_rho_boot_low", "varpart_rho_boot_high")


@pytest.fixture(scope="module")
def boot(work):
    """One fit of the whole file with bootstrap intervals."""
    out = work / "boot.h5ad"
    ok(cli("fit", work / "in.h5ad", *MODEL, *BOOT, "--quiet", "-o", out))
    return out


def test_fit_with_n_boot_stores_the_intervals_of_the_api(work, boot, tmp_path):
    result, single = ad.read_h5ad(boot), ad.read_h5ad(work / "full.h5ad")
    expected = svp.tl.variance_partition(
        ad.read_h5ad(work / "in.h5ad"), FORMULA, batch=["chemistry", "day", "operator"],
        signal="patient", n_boot=20, seed=3, ci=0.9, inplace=False, progress=False,
    )  # fmt: skip
    for key, name in zip(BOOT_TABLES, ("boot_low", "boot_high"), strict=True):
        table = result.varm[key]
        assert list(table.columns) == list(result.varm["varpart"].columns)
        pd.testing.assert_frame_equal(table, getattr(expected, name), check_exact=True)
    for key, name in zip(BOOT_RHO, ("rho_boot_low", "rho_boot_high"), strict=True):
        np.testing.assert_array_equal(result.var[key], expected.per_gene[name])
    assert (result.varm[BOOT_TABLES[0]] <= result.varm[BOOT_TABLES[1]]).all().all()
    params = result.uns["varpart"]["params"]
    assert (params["n_boot"], params["seed"], params["ci"]) == (20, 3, 0.9)
    assert not {"n_boot", "seed"} & set(single.uns["varpart"]["params"])
    assert single.uns["varpart"]["params"]["ci"] == 0.95  # the delta-method intervals' level
    assert not set(BOOT_TABLES) & set(single.varm)
    # the intervals change nothing else
    pd.testing.assert_frame_equal(result.varm["varpart"], single.varm["varpart"], check_exact=True)
    assert params["params_fingerprint"] != single.uns["varpart"]["params"]["params_fingerprint"]


def test_n_boot_alone_records_the_default_seed_and_level(work, tmp_path):
    """--n-boot N is --n-boot N --seed 0 --ci 0.95: the same parameters, fingerprint and
    intervals (one gene, to be quick)."""
    runs = {"alone": [], "explicit": ["--seed", 0, "--ci", 0.95]}
    chunks = {}
    for name, options in runs.items():
        chunks[name] = tmp_path / f"{name}.h5ad"
        ok(cli("fit", work / "in.h5ad", *MODEL, "--n-boot", 20, *options, "--genes", "1/23",
               "--quiet", "-o", chunks[name]))  # fmt: skip
    alone, explicit = (ad.read_h5ad(chunks[n]) for n in runs)
    assert repr(alone.uns["varpart"]["params"]) == repr(explicit.uns["varpart"]["params"])
    params = alone.uns["varpart"]["params"]
    assert (params["n_boot"], params["seed"], params["ci"]) == (20, 0, 0.95)
    for key in BOOT_TABLES:
        pd.testing.assert_frame_equal(alone.varm[key], explicit.varm[key], check_exact=True)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--n-boot", "10"], "argument --n-boot: must be 0 (none) or at least 20"),
        (["--n-boot", "-1"], "argument --n-boot: must be a non-negative integer"),
        (["--n-boot", "2.5"], "argument --n-boot: must be a non-negative integer"),
        (["--n-boot", "20", "--seed", "-3"], "argument --seed: must be a non-negative integer"),
        (["--n-boot", "20", "--seed", str(2**63)], "argument --seed: must be a non-negative"),
        (["--n-boot", "20", "--ci", "1.5"], "argument --ci: must be a level between 0 and 1"),
        (["--n-boot", "20", "--ci", "nan"], "argument --ci: must be a level between 0 and 1"),
        (["--n-boot", "20", "--ci", "95%"], "argument --ci: must be a level"),
        (["--seed", "3"], "--seed: used only with bootstrap replicates"),
        (["--n-boot", "0", "--seed", "3", "--ci", "0.9"], "--seed: used only with"),
        (["--n-boot", "20", "--ci", "none"], "bootstrap replicates need the intervals' level"),
    ],
)
def test_bad_bootstrap_options_exit_2_before_any_data_are_read(tmp_path, options, message):
    """Refused before the input is even looked at: it does not exist here."""
    out = tmp_path / "out.h5ad"
    proc = cli("fit", tmp_path / "missing.h5ad", *MODEL, *options, "-o", out)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not out.exists()


def test_chunks_with_n_boot_merge_into_the_single_run(work, boot, tmp_path):
    """Each gene's replicates depend on the seed and its name only: the chunks' intervals
    are the single fit's, and merging needs no recomputation."""
    chunks = []
    for i in (1, 2, 3):
        chunks.append(tmp_path / f"boot{i}.h5ad")
        ok(cli("fit", work / "in.h5ad", *MODEL, *BOOT, "--genes", f"{i}/3", "--quiet",
               "-o", chunks[-1]))  # fmt: skip
    merged = tmp_path / "merged.h5ad"
    ok(cli("merge", *reversed(chunks), "--into", work / "in.h5ad", "-o", merged))
    combined, expected = ad.read_h5ad(merged), ad.read_h5ad(boot)
    assert_same_varm(combined, expected)
    assert set(BOOT_TABLES) <= set(combined.varm) and set(BOOT_RHO) <= set(combined.var)
    pd.testing.assert_frame_equal(combined.var, expected.var, check_exact=True)
    assert repr(combined.uns["varpart"]) == repr(expected.uns["varpart"])
    # chunks with another seed, another level or without the bootstrap are not merged
    into = ["--into", work / "in.h5ad", "-o", tmp_path / "m.h5ad"]
    others = {
        "seed": ["--n-boot", 20, "--seed", 4, "--ci", 0.9],
        "ci": ["--n-boot", 20, "--seed", 3],
        "none": [],
    }
    for name, options in others.items():
        other = tmp_path / f"other_{name}.h5ad"
        ok(cli("fit", work / "in.h5ad", *MODEL, *options, "--genes", "2/3", "--quiet",
               "-o", other))  # fmt: skip
        proc = cli("merge", chunks[0], other, chunks[2], *into)
        assert proc.returncode == 5 and "different analysis parameters" in proc.stderr, name
        assert str(other) in proc.stderr
    assert not (tmp_path / "m.h5ad").exists()


# --- observation weights, kinship files, BLUPs ------------------------------------------

KIN_FORMULA = "~ log_umi + (1|patient) + (1|day)"
KIN_MODEL = ["--formula", KIN_FORMULA, "--method", "REML", "--batch", "day", "--signal", "patient"]


def kinship_data(folder: Path, seed: int = 5) -> pd.DataFrame:
    """``in.h5ad`` with a weights column ``w``, and a kinship matrix over its patients
    written as ``kinship.csv`` and ``kinship.tsv``; returns the matrix."""
    adata = svp.datasets.crossed_example(n_cells=300, n_genes=6, seed=seed)
    rng = np.random.default_rng(seed)
    adata.obs["w"] = rng.uniform(0.5, 2, adata.n_obs)
    levels = adata.obs["patient"].cat.categories
    genotypes = rng.normal(size=(len(levels), 50))
    K = pd.DataFrame(
        genotypes @ genotypes.T / 50 + 0.5 * np.eye(len(levels)), index=levels, columns=levels
    )
    adata.write_h5ad(folder / "in.h5ad")
    K.to_csv(folder / "kinship.csv")
    K.to_csv(folder / "kinship.tsv", sep="\t")
    return K


@pytest.fixture(scope="module")
def kin(tmp_path_factory):
    """The data, the API's result with weights, kinship and BLUPs, and the CLI's."""
    folder = tmp_path_factory.mktemp("kinship")
    K = kinship_data(folder)
    expected = ad.read_h5ad(folder / "in.h5ad")
    svp.tl.variance_partition(
        expected,
        KIN_FORMULA,
        method="REML",
        batch="day",
        signal="patient",
        weights="w",
        covariance={"patient": K},
        store_blups=True,
        progress=False,
    )
    options = ["--weights", "w", "--covariance", f"patient={folder / 'kinship.csv'}"]
    out = folder / "cli.h5ad"
    ok(cli("fit", folder / "in.h5ad", *KIN_MODEL, *options, "--store-blups", "--quiet", "-o", out))
    return {"folder": folder, "K": K, "expected": expected, "cli": out, "options": options}


def assert_same_varm(result: ad.AnnData, expected: ad.AnnData, keys=None) -> None:
    """Every result table of ``result`` bitwise equal to ``expected``'s."""
    keys = [k for k in expected.varm if k.startswith("varpart")] if keys is None else keys
    assert sorted(k for k in result.varm if k.startswith("varpart")) == sorted(keys)
    for key in keys:
        pd.testing.assert_frame_equal(result.varm[key], expected.varm[key], check_exact=True)


@pytest.mark.parametrize("kinship", ["kinship.csv", "kinship.tsv", "kinship.tsv.gz"])
def test_fit_with_weights_and_kinship_equals_the_api(kin, tmp_path, kinship):
    folder = kin["folder"]
    if kinship.endswith(".gz"):
        kin["K"].to_csv(tmp_path / kinship, sep="\t")  # compression inferred from the name
        path = tmp_path / kinship
    else:
        path = folder / kinship
    out = tmp_path / "out.h5ad"
    ok(
        cli(
            "fit", folder / "in.h5ad", *KIN_MODEL, "--weights", "w",
            "--covariance", f"patient={path}", "--store-blups", "--quiet", "-o", out,
        )
    )  # fmt: skip
    result = ad.read_h5ad(out)
    assert_same_varm(result, kin["expected"])
    pd.testing.assert_frame_equal(
        result.var.filter(like="varpart"), kin["expected"].var.filter(like="varpart")
    )
    params, api = result.uns["varpart"]["params"], kin["expected"].uns["varpart"]["params"]
    assert params["weights"] == "w" and params["covariance"] == api["covariance"]  # K's SHA-256
    assert params["covariance_files"] == {"patient": path.name}
    assert params["covariance_fingerprints"] == {"patient": file_fingerprint(path)}


def test_store_blups_writes_the_blups_that_get_reads(kin, tmp_path):
    result = ad.read_h5ad(kin["cli"])
    for term in ("patient", "day"):
        assert f"varpart_blup_{term}" in result.varm and f"varpart_blupvar_{term}" in result.varm
        blups = svp.get.blups(result, term)
        pd.testing.assert_frame_equal(blups, svp.get.blups(kin["expected"], term), check_exact=True)
        assert blups.shape == (6, result.obs[term].nunique())
    assert svp.get.blups(result, "patient", variance=True).notna().all().all()
    # without --store-blups: no BLUPs, the same fractions
    out = tmp_path / "no_blups.h5ad"
    ok(cli("fit", kin["folder"] / "in.h5ad", *KIN_MODEL, *kin["options"], "--quiet", "-o", out))
    plain = ad.read_h5ad(out)
    assert not [k for k in plain.varm if "_blup" in k]
    pd.testing.assert_frame_equal(plain.varm["varpart"], result.varm["varpart"], check_exact=True)
    # report works on a result with weights, kinship and BLUPs
    proc = ok(cli("report", kin["cli"], "--tsv", tmp_path / "r.tsv"))
    assert "with observation weights 'w'; known covariance of 'patient' (kinship.csv)" in (
        proc.stdout
    )
    assert len(pd.read_csv(tmp_path / "r.tsv", sep="\t")) == 6


def test_chunks_with_kinship_merge_into_the_single_run_and_refuse_other_files(kin, tmp_path):
    folder, single = kin["folder"], ad.read_h5ad(kin["cli"])
    names = iter(range(100))

    def chunk(i: int, *options) -> Path:
        path = tmp_path / f"c{i}_{next(names)}.h5ad"
        ok(
            cli(
                "fit", folder / "in.h5ad", *KIN_MODEL, *options, "--genes", f"{i}/2",
                "--quiet", "-o", path,
            )
        )  # fmt: skip
        return path

    options = (*kin["options"], "--store-blups")
    c1, c2 = chunk(1, *options), chunk(2, *options)
    merged = tmp_path / "merged.h5ad"
    ok(cli("merge", c2, c1, "--into", folder / "in.h5ad", "-o", merged))
    combined = ad.read_h5ad(merged)
    assert_same_varm(combined, single, [k for k in single.varm if k.startswith("varpart")])
    assert repr(combined.uns["varpart"]["params"]) == repr(single.uns["varpart"]["params"])
    into = ["--into", folder / "in.h5ad", "-o", tmp_path / "m.h5ad"]
    # the same matrix from another file (TSV): another kinship file, refused
    tsv = chunk(2, "--weights", "w", "--covariance", f"patient={folder / 'kinship.tsv'}",
                "--store-blups")  # fmt: skip
    proc = cli("merge", c1, tsv, *into)
    assert proc.returncode == 5 and "different covariance files" in proc.stderr, proc.stderr
    assert str(tsv) in proc.stderr
    # no weights, or no BLUPs: other parameters
    for other in (chunk(2, *kin["options"][2:], "--store-blups"), chunk(2, *kin["options"])):
        proc = cli("merge", c1, other, *into)
        assert proc.returncode == 5 and "different analysis parameters" in proc.stderr
    assert not (tmp_path / "m.h5ad").exists()
