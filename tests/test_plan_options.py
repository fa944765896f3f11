"""Analysis plans with observation weights, kinship files, BLUPs, tests and the bootstrap:
``weights``, ``store_blups``, ``test``, ``n_boot``, ``seed``, ``ci`` and the
``[covariance]`` table (paths relative to the plan's folder), the options that may
complete a plan, and the plan's clear errors."""

from __future__ import annotations

import hashlib
import inspect

import anndata as ad
import pandas as pd
import pytest
from test_cli import KIN_FORMULA, assert_same_varm, cli, kinship_data, ok

import scvarpart as svp
from scvarpart.plan import BOOTSTRAP_DEFAULTS, PlanError, bootstrap_problem, read_plan
from scvarpart.provenance import file_fingerprint

MODEL = f"""formula = "{KIN_FORMULA}"
method = "REML"
batch = ["day"]
signal = ["patient"]
"""
FULL = (
    MODEL
    + """weights = "w"
store_blups = true

[covariance]
patient = "kinship.csv"
"""
)


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """Data, the API's result, and a plan with all three options fitted from another
    working folder (so that the kinship path is found from the plan's folder)."""
    folder = tmp_path_factory.mktemp("plan_options")
    K = kinship_data(folder)
    plans = folder / "plans"
    plans.mkdir()
    (plans / "kinship.csv").write_bytes((folder / "kinship.csv").read_bytes())
    (plans / "plan.toml").write_text(FULL)
    expected = ad.read_h5ad(folder / "in.h5ad")
    svp.tl.variance_partition(
        expected, KIN_FORMULA, method="REML", batch="day", signal="patient", weights="w",
        covariance={"patient": K}, store_blups=True, progress=False,
    )  # fmt: skip
    out = folder / "planned.h5ad"
    ok(cli("fit", folder / "in.h5ad", "--plan", "plans/plan.toml", "--quiet", "-o", out,
           cwd=folder))  # fmt: skip
    return {"folder": folder, "K": K, "expected": expected, "out": out}


def test_a_plan_with_weights_kinship_and_blups_equals_the_api(planned):
    result = ad.read_h5ad(planned["out"])
    assert_same_varm(result, planned["expected"])
    assert "varpart_blup_patient" in result.varm
    params = result.uns["varpart"]["params"]
    plan = planned["folder"] / "plans" / "plan.toml"
    assert params["plan"] == "plan.toml"
    assert params["plan_sha256"] == hashlib.sha256(plan.read_bytes()).hexdigest()
    assert params["weights"] == "w"
    assert params["covariance_files"] == {"patient": "kinship.csv"}
    kinship = plan.parent / "kinship.csv"
    assert params["covariance_fingerprints"] == {"patient": file_fingerprint(kinship)}
    # the plan's keyword arguments, covariance read, are the API's
    kwargs = read_plan(plan).as_kwargs()
    assert kwargs["weights"] == "w" and kwargs["store_blups"] is True
    pd.testing.assert_frame_equal(kwargs["covariance"]["patient"], planned["K"], check_exact=True)


def test_the_same_plan_in_yaml(planned):
    folder = planned["folder"]
    (folder / "plans" / "plan.yaml").write_text(
        f'formula: "{KIN_FORMULA}"\nmethod: REML\nbatch: [day]\nsignal: patient\n'
        "weights: w\nstore_blups: true\ncovariance:\n  patient: kinship.csv\n"
    )
    out = folder / "yaml.h5ad"
    ok(cli("fit", folder / "in.h5ad", "--plan", folder / "plans" / "plan.yaml", "--quiet",
           "-o", out))  # fmt: skip
    assert_same_varm(ad.read_h5ad(out), planned["expected"])


def test_options_complete_a_plan_that_does_not_set_them(planned, tmp_path):
    """How the workflow passes a staged kinship file: --covariance beside the plan."""
    folder = planned["folder"]
    (tmp_path / "model.toml").write_text(MODEL)
    out = tmp_path / "completed.h5ad"
    ok(
        cli(
            "fit", folder / "in.h5ad", "--plan", tmp_path / "model.toml", "--weights", "w",
            "--covariance", f"patient={folder / 'kinship.csv'}", "--store-blups", "--quiet",
            "-o", out,
        )
    )  # fmt: skip
    result = ad.read_h5ad(out)
    assert_same_varm(result, planned["expected"])
    assert result.uns["varpart"]["params"]["plan"] == "model.toml"


@pytest.mark.parametrize(
    ("plan_text", "options", "match"),
    [
        (MODEL + 'weights = "w"\n', ["--weights", "log_umi"], "--weights: fixed by the plan"),
        (MODEL + "store_blups = false\n", ["--store-blups"], "--store-blups: fixed by the plan"),
        (MODEL + 'test = "lrt"\n', ["--test", "lrt"], "--test: fixed by the plan"),
        (MODEL + "n_boot = 20\n", ["--n-boot", "30"], "--n-boot: fixed by the plan"),
        (MODEL + "n_boot = 0\n", ["--n-boot", "30"], "--n-boot: fixed by the plan"),
        (MODEL + "seed = 1\n", ["--n-boot", "20", "--seed", "2"], "--seed: fixed by the plan"),
        (MODEL + "n_boot = 20\nci = 0.9\n", ["--ci", "0.8"], "--ci: fixed by the plan"),
        # --seed without replicates would do nothing; replicates need a level
        (MODEL + "n_boot = 0\n", ["--seed", "2"],
         "--seed: used only with bootstrap replicates, and none are asked for; the plan"),
        (MODEL + "n_boot = 20\n", ["--ci", "none"],
         "bootstrap replicates need the intervals' level"),
        (MODEL + 'ci = "none"\n', ["--n-boot", "20"],
         "bootstrap replicates need the intervals' level"),
        (FULL, ["--covariance", "patient=other.csv"], "--covariance patient=...: fixed by"),
    ],
)  # fmt: skip
def test_options_the_plan_sets_are_refused(planned, tmp_path, plan_text, options, match):
    folder = planned["folder"]
    (tmp_path / "kinship.csv").write_bytes((folder / "kinship.csv").read_bytes())
    (tmp_path / "plan.toml").write_text(plan_text)
    proc = cli("fit", folder / "in.h5ad", "--plan", tmp_path / "plan.toml", *options,
               "-o", tmp_path / "out.h5ad")  # fmt: skip
    assert proc.returncode == 2 and match in proc.stderr, proc.stderr
    assert not (tmp_path / "out.h5ad").exists()


@pytest.mark.parametrize(
    ("extra", "kinship", "match"),
    [
        ('weights = 3\n', None, "Plan weights must be the name of an obs column"),
        ("store_blups = 'yes'\n", None, "Plan store_blups must be true or false"),
        ('test = "wald"\n', None, "Plan test must be one of ['lrt']"),
        ("test = true\n", None, "Plan test must be one of ['lrt']"),
        ('test = ["lrt"]\n', None, "or left out for none; got ['lrt'] in"),
        ("n_boot = 10\n", None, "Plan n_boot must be 0 (none) or at least 20: fewer"),
        ("n_boot = -1\n", None, "Plan n_boot must be a non-negative integer (0: no bootstrap)"),
        ("n_boot = 200.0\n", None, "Plan n_boot must be a non-negative integer"),
        ("n_boot = true\n", None, "Plan n_boot must be a non-negative integer"),
        ('n_boot = "200"\n', None, "non-negative integer (0: no bootstrap); got '200' in"),
        ("n_boot = 20\nseed = -1\n", None, "Plan seed must be a non-negative integer"),
        ("n_boot = 20\nseed = 1.5\n", None, "Plan seed must be a non-negative integer"),
        ("n_boot = 20\nci = 1\n", None, "Plan ci must be a level between 0 and 1, e.g. 0.95"),
        ("n_boot = 20\nci = 0.0\n", None, "Plan ci must be a level between 0 and 1"),
        ('n_boot = 20\nci = "95%"\n', None, "Plan ci must be a level between 0 and 1"),
        ("seed = -1\n", None, "Plan seed must be"),  # checked even without replicates
        ('covariance = "kinship.csv"\n', None, "must be a table of random terms and covariance"),
        ('[covariance]\npatient = 1\n', None, "must be the path of a covariance file"),
        ('[covariance]\npatient = "nope.csv"\n', None,
         "nope.csv does not exist (relative paths are taken from the plan's folder)"),
        ('[covariance]\npatient = "k.csv"\n', ",P01\nP01,x\n",
         "plan.toml, [covariance] patient: the covariance file"),
        ('[covariance]\npatient = "k.csv"\n', ",P01,P02\nP01,1,0\n", "is not square"),
        ('[covariance]\npatient = "k.csv"\n', "asym",
         "is not symmetric: K['P01', 'P02'] = "),
    ],
)  # fmt: skip
def test_bad_plan_options_exit_3_naming_the_plan(planned, tmp_path, extra, kinship, match):
    folder = planned["folder"]
    if kinship == "asym":
        K = planned["K"].copy()
        K.iloc[0, 1] += 1.0
        K.to_csv(tmp_path / "k.csv")
    elif kinship is not None:
        (tmp_path / "k.csv").write_text(kinship)
    plan = tmp_path / "plan.toml"
    plan.write_text(MODEL + extra)
    before = hashlib.md5((folder / "in.h5ad").read_bytes()).hexdigest()
    out = tmp_path / "out" / "o.h5ad"
    out.parent.mkdir()
    proc = cli("fit", folder / "in.h5ad", "--plan", plan, "-o", out)
    assert proc.returncode == 3, proc.stderr
    assert match in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    if "k.csv" in extra:  # the file and where it was named
        assert str(tmp_path / "k.csv") in proc.stderr and "plan" in proc.stderr
    assert list(out.parent.iterdir()) == []
    assert hashlib.md5((folder / "in.h5ad").read_bytes()).hexdigest() == before


def test_read_plan_resolves_covariance_files_against_its_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "k.csv").write_text(",a\na,1\n")
    plan = tmp_path / "plan.toml"
    plan.write_text('formula = "~ (1|a)"\n[covariance]\na = "sub/k.csv"\n')
    read = read_plan(plan)
    assert read.covariance == {"a": str(tmp_path / "sub" / "k.csv")}
    assert read.weights is None and read.store_blups is None and read.test is None
    assert read.as_kwargs()["store_blups"] is False and "test" not in read.as_kwargs()
    (tmp_path / "sub" / "k.csv").write_text(",a\na,x\n")
    with pytest.raises(PlanError, match="non-numeric"):
        read.as_kwargs()


def test_a_plan_with_test_lrt_and_the_option_completing_a_plan_fit_the_same(planned, tmp_path):
    """``test = "lrt"`` in the plan (TOML or YAML), and ``--test lrt`` beside a plan
    without it: the tests of the API, recorded as the plan and the option."""
    folder = planned["folder"]
    expected = svp.tl.variance_partition(
        ad.read_h5ad(folder / "in.h5ad"), KIN_FORMULA, method="REML", batch="day",
        signal="patient", test="lrt", inplace=False, progress=False,
    )  # fmt: skip
    (tmp_path / "lrt.toml").write_text(MODEL + 'test = "lrt"\n')
    (tmp_path / "lrt.yaml").write_text(
        f'formula: "{KIN_FORMULA}"\nmethod: REML\nbatch: [day]\nsignal: patient\ntest: lrt\n'
    )
    (tmp_path / "model.toml").write_text(MODEL)
    assert read_plan(tmp_path / "lrt.toml").as_kwargs()["test"] == "lrt"
    runs = {
        "toml": ["--plan", tmp_path / "lrt.toml"],
        "yaml": ["--plan", tmp_path / "lrt.yaml"],
        "option": ["--plan", tmp_path / "model.toml", "--test", "lrt"],
    }
    fingerprints = {}
    for name, options in runs.items():
        out = tmp_path / f"{name}.h5ad"
        ok(cli("fit", folder / "in.h5ad", *options, "--quiet", "-o", out))
        result = ad.read_h5ad(out)
        for table in ("lrt", "pvalue", "qvalue"):
            pd.testing.assert_frame_equal(
                result.varm[f"varpart_{table}"], getattr(expected, table), check_exact=True
            )
        params = result.uns["varpart"]["params"]
        assert params["test"] == "lrt"
        fingerprints[name] = params["params_fingerprint"]
    # the plans differ (their SHA-256 is part of the parameters)
    assert len(set(fingerprints.values())) == 3


def test_read_plan_bootstrap_keys_and_their_keyword_arguments(tmp_path):
    """``n_boot`` and ``seed`` reach the keyword arguments with replicates only, ``ci``
    always (``None`` for ``"none"``), the defaults filled in as the fit records them."""
    plan = tmp_path / "plan.toml"
    for text, expected in [
        ("", {"ci": 0.95}),
        ('ci = "none"\n', {"ci": None}),
        ("n_boot = 0\nseed = 4\n", {"ci": 0.95}),
        ("seed = 4\nci = 0.8\n", {"ci": 0.8}),
        ("n_boot = 50\n", {"n_boot": 50, "seed": 0, "ci": 0.95}),
        ("n_boot = 50\nseed = 4\nci = 0.8\n", {"n_boot": 50, "seed": 4, "ci": 0.8}),
    ]:
        plan.write_text('formula = "~ (1|a)"\n' + text)
        kwargs = read_plan(plan).as_kwargs()
        assert {k: kwargs[k] for k in ("n_boot", "seed", "ci") if k in kwargs} == expected
    read = read_plan(plan)
    assert (read.n_boot, read.seed, read.ci) == (50, 4, 0.8)
    # the defaults are the API's
    defaults = inspect.signature(svp.tl.variance_partition).parameters
    assert {k: defaults[k].default for k in BOOTSTRAP_DEFAULTS} == BOOTSTRAP_DEFAULTS
    assert defaults["n_boot"].default == 0


@pytest.mark.parametrize(
    ("key", "values"),
    [
        ("n_boot", [0, 1, 19, 20, 500, -1, 2.5, True, "20", None]),
        ("seed", [0, 7, 2**63 - 1, -1, 1.5, False, "3", None]),
        ("ci", [0.5, 0.95, 1e-9, 0, 1, 1.5, -0.1, float("nan"), float("inf"), True, "0.9"]),
    ],
)
def test_the_plan_and_the_cli_refuse_what_the_library_refuses(key, values):
    """bootstrap_problem (the plan's and the command line's checks, which do not import
    the fitting code) and the library's check_bootstrap accept the same values."""
    from scvarpart.lmm.genes import check_bootstrap

    valid = {"n_boot": 20, "seed": 0, "ci": 0.95}
    for value in values:
        try:
            check_bootstrap(**{**valid, key: value})
            library = True
        except ValueError:
            library = False
        assert (bootstrap_problem(key, value) is None) == library, (key, value)
    # a seed too large to record in an .h5ad file is refused before the fit, not after
    assert bootstrap_problem("seed", 2**63) is not None


def test_a_plan_with_the_bootstrap_and_the_options_completing_a_plan_fit_the_same(
    planned, tmp_path
):
    """``n_boot``, ``seed`` and ``ci`` in the plan (TOML or YAML); and ``--n-boot``
    beside a plan that sets ``seed`` and ``ci`` only: the intervals of the API."""
    folder = planned["folder"]
    expected = svp.tl.variance_partition(
        ad.read_h5ad(folder / "in.h5ad"), KIN_FORMULA, method="REML", batch="day",
        signal="patient", n_boot=20, seed=2, ci=0.8, inplace=False, progress=False,
    )  # fmt: skip
    (tmp_path / "boot.toml").write_text(MODEL + "n_boot = 20\nseed = 2\nci = 0.8\n")
    (tmp_path / "boot.yaml").write_text(
        f'formula: "{KIN_FORMULA}"\nmethod: REML\nbatch: [day]\nsignal: patient\n'
        "n_boot: 20\nseed: 2\nci: 0.8\n"
    )
    (tmp_path / "seeded.toml").write_text(MODEL + "seed = 2\nci = 0.8\n")
    (tmp_path / "model.toml").write_text(MODEL)
    runs = {
        "toml": ["--plan", tmp_path / "boot.toml"],
        "yaml": ["--plan", tmp_path / "boot.yaml"],
        "completed": ["--plan", tmp_path / "seeded.toml", "--n-boot", "20"],
        "options": ["--plan", tmp_path / "model.toml", "--n-boot", "20", "--seed", "2",
                    "--ci", "0.8"],
    }  # fmt: skip
    for name, options in runs.items():
        out = tmp_path / f"{name}.h5ad"
        ok(cli("fit", folder / "in.h5ad", *options, "--quiet", "-o", out))
        result = ad.read_h5ad(out)
        for table in ("boot_low", "boot_high"):
            pd.testing.assert_frame_equal(
                result.varm[f"varpart_{table}"], getattr(expected, table), check_exact=True
            )
        params = result.uns["varpart"]["params"]
        assert (params["n_boot"], params["seed"], params["ci"]) == (20, 2, 0.8), name
    # a plan's seed without replicates is unused: no bootstrap, nothing recorded of it;
    # its level is the delta-method intervals'
    out = tmp_path / "unused.h5ad"
    ok(cli("fit", folder / "in.h5ad", "--plan", tmp_path / "seeded.toml", "--quiet", "-o", out))
    result = ad.read_h5ad(out)
    assert "varpart_boot_low" not in result.varm
    assert not {"n_boot", "seed"} & set(result.uns["varpart"]["params"])
    assert result.uns["varpart"]["params"]["ci"] == 0.8
    direct = svp.tl.variance_partition(
        ad.read_h5ad(folder / "in.h5ad"), KIN_FORMULA, method="REML", batch="day",
        signal="patient", ci=0.8, inplace=False, progress=False,
    )  # fmt: skip
    for table in ("ci_low", "ci_high", "variance_se"):
        pd.testing.assert_frame_equal(
            result.varm[f"varpart_{table}"], getattr(direct, table), check_exact=True
        )
    # ci = "none": no intervals at all
    (tmp_path / "none.toml").write_text(MODEL + 'ci = "none"\n')
    out = tmp_path / "none.h5ad"
    ok(cli("fit", folder / "in.h5ad", "--plan", tmp_path / "none.toml", "--quiet", "-o", out))
    result = ad.read_h5ad(out)
    assert not {"varpart_ci_low", "varpart_variance_se"} & set(result.varm)
    assert "ci" not in result.uns["varpart"]["params"]
