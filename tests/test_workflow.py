"""The Nextflow workflow: the exact commands of its processes, chained as it chains them.

Nextflow itself cannot be installed here (its launcher downloads the program), so
this test reads each process's ``script:`` block from ``workflows/modules``,
renders it as Nextflow would (its variables filled in, indentation stripped),
and runs it with bash in a task directory of its own where the inputs are
staged as symbolic links: SIMULATE -> FIT x N -> MERGE -> REPORT, as
``workflows/main.nf`` wires them. The merged result must equal one
``scvarpart fit`` of the whole file. A real ``nextflow run`` runs when
``nextflow`` is on PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest

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


def run_task(module: str, workdir: Path, inputs: list[Path], values: dict) -> dict[str, list]:
    """Run a process like Nextflow: its own directory, inputs staged as links."""
    workdir.mkdir(parents=True)
    for source in inputs:
        (workdir / source.name).symlink_to(source.resolve())
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
    chunks = []
    for chunk in range(1, n_chunks + 1):
        out = run_task(
            "fit",
            work / f"fit{chunk}",
            [h5ad, PLAN],
            {
                "h5ad": h5ad.name,
                "plan": PLAN.name,
                "chunk": chunk,
                "n_chunks": n_chunks,
                "task.cpus": 1,
                "args": "",
                "prefix": meta_id,
                "meta.id": meta_id,
            },
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


# the chain (simulate, three fits, merge, report, and a single fit to compare) takes
# ~35 s on 2 cores: run with -m slow, as .ci/run does
@pytest.mark.slow
def test_chain_reproduces_a_single_fit(chain, tmp_path):
    single = tmp_path / "single.h5ad"
    command = [sys.executable, "-m", "scvarpart", "fit", chain["input"], "--plan", PLAN]
    proc = subprocess.run(
        [*map(str, command), "--quiet", "-o", str(single)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    a, b = ad.read_h5ad(single), ad.read_h5ad(chain["merged"])
    for key in ("varpart", "varpart_variance"):
        pd.testing.assert_frame_equal(b.varm[key], a.varm[key], check_exact=True)
    pd.testing.assert_frame_equal(b.var, a.var, check_exact=True)
    assert repr(b.uns["varpart"]) == repr(a.uns["varpart"])


@pytest.mark.slow
def test_report_outputs(chain):
    tsv = chain["report"]["*.varpart.tsv"][0]
    table = pd.read_csv(tsv, sep="\t", index_col="gene")
    assert len(table) == 60 and "fraction_patient" in table
    text = chain["report"]["*.varpart_report.txt"][0].read_text()
    assert "median fraction" in text and "most batch-dominated genes" in text


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
