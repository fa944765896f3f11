"""The Nextflow workflow: the exact commands of its processes, chained as it chains them.

Nextflow itself cannot be installed here (its launcher downloads the program), so
this test reads each process's ``script:`` block from ``workflows/modules``,
renders it as Nextflow would (its variables filled in, indentation stripped),
and runs it with bash in a task directory of its own where the inputs are
staged as symbolic links: SIMULATE -> FIT x N -> MERGE -> REPORT, as
``workflows/main.nf`` wires them. The merged result must equal one
``scvarpart fit`` of the whole file, also with a kinship file staged into
each FIT task, observation weights, BLUPs, likelihood-ratio tests (whose q-values
MERGE adjusts over all genes) and bootstrap intervals (which it combines as they
are). A real ``nextflow run`` runs when ``nextflow`` is on PATH.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scvarpart as svp

WORKFLOWS = Path(__file__).parent.parent / "workflows"
MODULES = WORKFLOWS / "modules" / "local" / "scvarpart"
PLAN = WORKFLOWS / "assets" / "example_plan.toml"


def _block(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def script_of(module: str, block: str = "script:") -> str:
    """The shell script of a process (the triple-quoted string after ``script:``)."""
    text = (MODULES / module / "main.nf").read_text()
    return text.split(f"    {block}\n", 1)[1].split('"""', 2)[1]


def render(script: str, values: dict[str, object]) -> str:
    r"""Fill ``${...}`` as Groovy would, unescape ``\$``, strip the indentation."""

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise AssertionError(f"the test does not know the script variable ${{{name}}}")
        value = values[name]
        return " ".join(map(str, value)) if isinstance(value, list) else str(value)

    text = re.sub(r"(?<!\\)\$\{([^}]+)\}", fill, script)
    return textwrap.dedent(text.replace("\\$", "$")).strip() + "\n"


def output_patterns(module: str) -> list[str]:
    """The file patterns of a process's ``output:`` declarations."""
    text = (MODULES / module / "main.nf").read_text()
    outputs = _block(text, "    output:\n", "    when:\n")
    return [a or b for a, b in re.findall(r'path\("([^"]+)"\)|path "([^"]+)"', outputs)]


def run_task(
    module: str, workdir: Path, inputs: list[Path], values: dict, staged: dict | None = None
) -> dict[str, list]:
    """Run a process like Nextflow: its own directory, inputs staged as links.

    ``staged`` maps a name in the task directory (``covariance1/kinship.csv`` for a
    ``stageAs: 'covariance?/*'`` input) to its source.
    """
    workdir.mkdir(parents=True)
    for source in inputs:
        (workdir / source.name).symlink_to(source.resolve())
    for name, source in (staged or {}).items():
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).symlink_to(source.resolve())
    script = render(script_of(module), {"task.process": f"SCVARPART_{module.upper()}", **values})
    (workdir / ".command.sh").write_text(script)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", "-ue", ".command.sh"], cwd=workdir, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, f"{module} failed:\n{script}\n{proc.stderr}"
    produced = {}
    for pattern in output_patterns(module):
        found = sorted(workdir.glob(pattern))
        assert found, f"{module} produced nothing matching its output {pattern!r}"
        produced[pattern] = found
    versions = (workdir / "versions.yml").read_text()
    assert f"SCVARPART_{module.upper()}" in versions and "scvarpart: 0." in versions
    return produced


def fit_options(
    weights: str | None = None,
    covariance: dict[str, Path] | None = None,
    store_blups=False,
    test: str | None = None,
    n_boot: int = 0,
    seed: int | None = None,
    ci: float | None = None,
    groupby: str | None = None,
) -> tuple[dict[str, str], dict[str, Path]]:
    """The FIT script's model variables, as its Groovy lines compute them from its
    ``model`` and covariance inputs, and where the covariance files are staged.

    With ``groupby``, ``grouping`` and ``part`` hold ``{group}`` for :func:`group_values`.
    """
    files = list((covariance or {}).items())
    staged = {f"covariance{i + 1}/{path.name}": path for i, (_, path) in enumerate(files)}
    terms = [term for term, _ in files]
    values = {
        "weights": f"--weights '{weights}'" if weights else "",
        "store_blups": "--store-blups" if store_blups else "",
        "test": f"--test {test}" if test else "",
        "n_boot": f"--n-boot {n_boot}" if n_boot else "",
        "seed": f"--seed {seed}" if seed is not None else "",
        "ci": f"--ci {ci}" if ci is not None else "",
        "covariance": " ".join(
            f"--covariance '{t}={n}'" for t, n in zip(terms, staged, strict=True)
        ),
        "grouping": f"--groupby '{groupby}' --group '{{group}}'" if groupby else "",
        "part": "{part}" if groupby else "",
    }
    return values, staged


def group_values(values: dict[str, str], group: str) -> dict[str, str]:
    """The FIT variables of one group's task: its options and its file name's part."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", group)
    part = f"{safe}-{hashlib.md5(group.encode()).hexdigest()[:8]}."  # Groovy's md5().take(8)
    return {**values, "grouping": values["grouping"].replace("{group}", group),
            "part": values["part"].replace("{part}", part)}  # fmt: skip


def test_the_fit_script_computes_its_options_as_the_test_does():
    """The Groovy lines the chain tests emulate (fit_options) are the module's."""
    text = (MODULES / "fit" / "main.nf").read_text()
    assert "path(covariance_files, stageAs: 'covariance?/*')" in text
    assert "\"--covariance '${pair[0]}=covariance${i + 1}/${pair[1]}'\"" in text
    assert "def weights = model.weights ? \"--weights '${model.weights}'\" : ''" in text
    assert "def store_blups = model.store_blups ? '--store-blups' : ''" in text
    assert "def test = model.test ? \"--test ${model.test}\" : ''" in text
    assert "def n_boot = model.n_boot ? \"--n-boot ${model.n_boot}\" : ''" in text
    assert "def seed = model.seed != null ? \"--seed ${model.seed}\" : ''" in text
    assert "def ci = model.ci != null ? \"--ci ${model.ci}\" : ''" in text
    assert "${test} ${n_boot} ${seed} ${ci} ${grouping} --genes" in script_of("fit")
    assert "def grouping = group ? \"--groupby '${model.groupby}' --group '${group}'\" : ''" in text
    part = (
        "def part = group ? group.toString().replaceAll(/[^A-Za-z0-9_.-]/, '_') + '-' + "
        "group.toString().md5().take(8) + '.' : ''"
    )
    assert text.count(part) == 2  # the script's and the stub's
    assert "-o ${prefix}.${part}chunk${chunk}of${n_chunks}.h5ad" in script_of("fit")
    main = (WORKFLOWS / "main.nf").read_text()
    assert "SCVARPART_FIT(ch_chunks, ch_plan, ch_covariance, ch_model)" in main
    assert "covariance.keySet() as List, covariance_files*.name, covariance_files" in main
    assert "test       : params.test ? params.test.toString() : null," in main
    assert "n_boot     : params.n_boot.toString() as Long," in main
    assert "seed       : params.seed != null ? params.seed.toString() : null," in main
    assert "ci         : params.ci != null ? params.ci.toString() : null," in main
    assert "groupby    : params.groupby ? params.groupby.toString() : null" in main
    assert "SCVARPART_GROUPS(ch_input, params.groupby.toString())" in main
    assert (
        ".map { meta, h5ad, group, chunk -> [ meta, h5ad, group, chunk, params.chunks ] }" in main
    )
    assert "? SCVARPART_FIT.out.chunk.groupTuple()" in main
    assert "scvarpart groups ${h5ad} --groupby '${groupby}' ${args} > groups.txt" in script_of(
        "groups"
    )
    # only numbers reach the tasks' command lines (they are not quoted there)
    assert "if (!(params.n_boot.toString() ==~ /\\d+/)) {" in main
    assert "if (params.seed != null && !(params.seed.toString() ==~ /\\d+/)) {" in main
    assert "params.ci != null && !(params.ci.toString() ==~ /" in main
    config = (WORKFLOWS / "nextflow.config").read_text()
    for name in ("weights", "covariance", "store_blups", "test", "n_boot", "seed", "ci", "groupby"):
        assert re.search(rf"^\s+{name}\s+=", config, re.MULTILINE), name
    assert re.search(r"^\s+n_boot\s+= 0\s", config, re.MULTILINE)  # none unless asked
    for name in ("seed", "ci"):  # the plan's or scvarpart's unless given
        assert re.search(rf"^\s+{name}\s+= null\s", config, re.MULTILINE), name
    readme = (WORKFLOWS / "README.md").read_text()
    for row in ("| `--n_boot 200` | `--n-boot 200` |", "| `--seed 1` | `--seed 1` |",
                "| `--ci 0.9` | `--ci 0.9` |"):  # fmt: skip
        assert row in readme, row


def run_chain(
    work: Path, h5ad: Path, plan: Path, n_chunks: int, options, meta_id: str, groupby=None
) -> dict:
    """[GROUPS ->] FIT x groups x n_chunks -> MERGE -> REPORT of ``h5ad``, as main.nf wires
    them."""
    values, staged = options
    groups = [""]
    if groupby:
        listed = run_task("groups", work / "groups", [h5ad],
                          {"h5ad": h5ad.name, "groupby": groupby, "args": "",
                           "meta.id": meta_id})["groups.txt"][0]  # fmt: skip
        groups = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
    chunks = []
    for g, group in enumerate(groups):
        for chunk in range(1, n_chunks + 1):
            out = run_task(
                "fit",
                work / f"fit{g}_{chunk}",
                [h5ad, plan],
                {
                    "h5ad": h5ad.name,
                    "plan": plan.name,
                    "chunk": chunk,
                    "n_chunks": n_chunks,
                    "task.cpus": 1,
                    "args": "",
                    "prefix": meta_id,
                    "meta.id": meta_id,
                    **(group_values(values, group) if group else values),
                },
                staged,
            )
            chunks += out["*.chunk*.h5ad"]
    merged = run_task(
        "merge",
        work / "merge",
        [*chunks, h5ad],
        {
            "chunks": [c.name for c in chunks],
            "h5ad": h5ad.name,
            "args": "",
            "prefix": meta_id,
            "meta.id": meta_id,
        },
    )["*.varpart.h5ad"][0]
    report = run_task(
        "report",
        work / "report",
        [merged],
        {"h5ad": merged.name, "args": "", "prefix": meta_id, "meta.id": meta_id},
    )
    return {"input": h5ad, "merged": merged, "report": report, "work": work}


def single_fit(h5ad: Path, plan: Path, output: Path, *options: object) -> ad.AnnData:
    """One ``scvarpart fit`` of the whole file, in a new process as the tasks run."""
    command = [sys.executable, "-m", "scvarpart", "fit", h5ad, "--plan", plan, *options]
    proc = subprocess.run(
        [*map(str, command), "--quiet", "-o", str(output)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return ad.read_h5ad(output)


def assert_same_result(merged: ad.AnnData, single: ad.AnnData) -> None:
    assert sorted(merged.varm) == sorted(single.varm)
    for key in single.varm:
        pd.testing.assert_frame_equal(merged.varm[key], single.varm[key], check_exact=True)
    pd.testing.assert_frame_equal(merged.var, single.var, check_exact=True)
    assert repr(merged.uns["varpart"]) == repr(single.uns["varpart"])


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """SIMULATE -> FIT x 3 -> MERGE -> REPORT, as main.nf with -profile test runs them."""
    work = tmp_path_factory.mktemp("nextflow_work")
    meta_id, n_chunks = "example", 3
    simulated = run_task(
        "simulate",
        work / "simulate",
        [],
        {"args": "--n-cells 1000 --n-genes 60", "prefix": meta_id, "meta.id": meta_id},
    )
    h5ad = simulated["*.h5ad"][0]
    return run_chain(work, h5ad, PLAN, n_chunks, fit_options(), meta_id)


# the chain (simulate, three fits, merge, report, and a single fit to compare) takes
# ~35 s on 2 cores: run with -m slow, as .ci/run does
@pytest.mark.slow
def test_chain_reproduces_a_single_fit(chain, tmp_path):
    single = single_fit(chain["input"], PLAN, tmp_path / "single.h5ad")
    assert_same_result(ad.read_h5ad(chain["merged"]), single)


KINSHIP_PLAN = """formula = "~ log_umi + (1|patient) + (1|day)"
method = "REML"
batch = ["day"]
signal = ["patient"]
"""


@pytest.fixture(scope="module")
def kinship_chain(tmp_path_factory):
    """FIT x 2 -> MERGE -> REPORT with a kinship file staged into each FIT task, weights,
    BLUPs, tests and the bootstrap (main.nf's params.covariance, params.weights,
    params.store_blups, params.test, params.n_boot, params.seed, params.ci)."""
    data = tmp_path_factory.mktemp("kinship_data")
    adata = svp.datasets.crossed_example(n_cells=300, n_genes=6, seed=3)
    rng = np.random.default_rng(3)
    adata.obs["w"] = rng.uniform(0.5, 2, adata.n_obs)
    levels = adata.obs["patient"].cat.categories
    genotypes = rng.normal(size=(len(levels), 50))
    kinship = genotypes @ genotypes.T / 50 + 0.5 * np.eye(len(levels))
    pd.DataFrame(kinship, index=levels, columns=levels).to_csv(data / "kinship.csv")
    adata.write_h5ad(data / "cells.h5ad")
    (data / "plan.toml").write_text(KINSHIP_PLAN)
    options = fit_options(
        "w", {"patient": data / "kinship.csv"}, store_blups=True, test="lrt", n_boot=20, seed=3,
        ci=0.9,
    )  # fmt: skip
    work = tmp_path_factory.mktemp("nextflow_kinship_work")
    return run_chain(work, data / "cells.h5ad", data / "plan.toml", 2, options, "cells")


# four processes of ~5 s each (two fits, merge, report) and a single fit to compare
@pytest.mark.slow
def test_chain_with_kinship_and_weights_reproduces_a_single_fit(kinship_chain, tmp_path):
    data = kinship_chain["input"].parent
    single = single_fit(
        kinship_chain["input"],
        data / "plan.toml",
        tmp_path / "single.h5ad",
        "--weights",
        "w",
        "--covariance",
        f"patient={data / 'kinship.csv'}",
        "--store-blups",
        "--test",
        "lrt",
        *("--n-boot", 20, "--seed", 3, "--ci", 0.9),
    )
    merged = ad.read_h5ad(kinship_chain["merged"])
    assert_same_result(merged, single)  # the q-values too: adjusted over all genes
    assert list(merged.varm["varpart_qvalue"].columns) == ["patient", "day"]
    assert merged.uns["varpart"]["params"]["test"] == "lrt"
    assert {"varpart_boot_low", "varpart_boot_high"} <= set(merged.varm)  # compared above
    assert merged.uns["varpart"]["params"]["seed"] == 3
    params = merged.uns["varpart"]["params"]
    assert params["weights"] == "w" and params["covariance_files"] == {"patient": "kinship.csv"}
    assert params["covariance_fingerprints"]["patient"].startswith("blake2b:")
    assert svp.get.blups(merged, "patient").shape == (6, 12)
    report = kinship_chain["report"]["*.varpart_report.txt"][0].read_text()
    assert "known covariance of 'patient' (kinship.csv)" in report
    assert "observation weights 'w'" in report


@pytest.mark.slow
def test_report_outputs(chain):
    tsv = chain["report"]["*.varpart.tsv"][0]
    table = pd.read_csv(tsv, sep="\t", index_col="gene")
    assert len(table) == 60 and "fraction_patient" in table
    text = chain["report"]["*.varpart_report.txt"][0].read_text()
    assert "median fraction" in text and "most batch-dominated genes" in text
    page = chain["report"]["*.varpart_report.html"][0].read_text()
    for anchor in ("model", "fits", "design", "fractions", "batch-dominated", "rho"):
        assert f'<section id="{anchor}">' in page
    assert 'src="http' not in page and "data:image/png;base64," in page


def test_every_process_has_a_stub_and_the_workflow_wiring_exists():
    main = (WORKFLOWS / "main.nf").read_text()
    for module in ("simulate", "fit", "merge", "report"):
        text = (MODULES / module / "main.nf").read_text()
        assert "    stub:\n" in text and "versions.yml" in text
        assert f"from './modules/local/scvarpart/{module}/main'" in main
        for name in ("meta.yml", "environment.yml"):
            assert (MODULES / module / name).exists()
    assert "--n-jobs ${task.cpus}" in script_of("fit")
    config = (WORKFLOWS / "nextflow.config").read_text()
    for profile in ("local {", "slurm {", "test {", "conda {"):
        assert profile in config
    assert PLAN.exists()


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("nextflow") is None,
    reason="nextflow is not installed: its launcher downloads the program from outside "
    "the package registries this machine can reach",
)
def test_nextflow_run_test_profile(tmp_path):
    outdir = tmp_path / "results"
    command = ["nextflow", "run", WORKFLOWS / "main.nf", "-profile", "test,local"]
    proc = subprocess.run(
        [*map(str, command), "--outdir", str(outdir)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (outdir / "example.varpart.h5ad").exists()
    assert (outdir / "example.varpart.tsv").exists()


GROUP_PLAN = """formula = "~ (1|patient) + (1|chemistry)"
method = "REML"
"""


@pytest.fixture(scope="module")
def group_chain(tmp_path_factory):
    """GROUPS -> FIT x 3 groups x 2 chunks -> MERGE -> REPORT (main.nf's params.groupby) on
    pseudobulk samples of cell types, one with a name that is no file name (a third, too
    rare, keeps no sample with 5 cells: no group)."""
    data = tmp_path_factory.mktemp("group_data")
    cells = svp.datasets.simulate_counts(6000, 80, seed=2, counts=True)
    rng = np.random.default_rng(2)
    kinds = ["B cell", "T/NK", "rare"]
    cells.obs["cell_type"] = rng.choice(kinds, cells.n_obs, p=[0.3, 0.69, 0.01])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bulk = svp.pp.pseudobulk(cells, "library", groupby="cell_type")
    bulk.write_h5ad(data / "bulk.h5ad")
    (data / "plan.toml").write_text(GROUP_PLAN)
    work = tmp_path_factory.mktemp("nextflow_group_work")
    options = fit_options(groupby="cell_type")
    return run_chain(work, data / "bulk.h5ad", data / "plan.toml", 2, options, "bulk",
                     groupby="cell_type")  # fmt: skip


# seven processes of ~5 s each (groups, four fits, merge, report) and a single fit
@pytest.mark.slow
def test_chain_per_group_reproduces_a_single_fit(group_chain, tmp_path):
    data = group_chain["input"].parent
    single = single_fit(group_chain["input"], data / "plan.toml", tmp_path / "single.h5ad",
                        "--groupby", "cell_type")  # fmt: skip
    merged = ad.read_h5ad(group_chain["merged"])
    assert repr(merged.uns["varpart"]) == repr(single.uns["varpart"])
    table = svp.get.groups(merged).set_index("group")
    assert list(table.index) == ["B cell", "T/NK"]
    assert list(table["status"]) == ["fitted", "fitted"]
    html = group_chain["report"]["*.varpart_report.html"][0].read_text()
    assert "Group T/NK" in html and "Groups of &#x27;cell_type&#x27;" in html
