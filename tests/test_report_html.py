"""svp.pl.report and ``scvarpart report --html``: one self-contained page, checked in a browser."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import warnings
from html.parser import HTMLParser

import matplotlib
import numpy as np
import pytest
from PIL import Image
from test_cli import cli, ok

import scvarpart as svp

matplotlib.use("Agg")

BATCH = ["chemistry", "day", "operator"]
SECTIONS = ("model", "fits", "design", "fractions", "batch-dominated", "rho", "correction")


class _Page(HTMLParser):
    """Every id, every link target, every image source and anything fetched."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.links: list[str] = []
        self.images: list[str] = []
        self.fetched: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "a":
            self.links.append(a.get("href", ""))
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "table":
            self.tables += 1
        if tag in ("script", "link", "iframe") or (tag != "img" and "src" in a):
            self.fetched.append(f"{tag} {a}")


def _parse(text: str) -> _Page:
    parsed = _Page()
    parsed.feed(text)
    return parsed


@pytest.fixture(scope="module")
def fitted():
    adata = svp.datasets.crossed_example(n_cells=1200, n_genes=40, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svp.tl.remove_batch_effects(
            adata, svp.datasets.EXAMPLE_FORMULA, terms=BATCH, signal="patient", method="REML"
        )
        svp.tl.batch_metrics(adata, n_comps=10, n_sample=800)
    return adata


@pytest.fixture(scope="module")
def page(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "report.html"
    assert svp.pl.report(fitted, path, n_top=10) == path
    return path


def test_the_page_has_every_section_and_needs_nothing_from_outside(page):
    text = page.read_text()
    parsed = _parse(text)
    assert [i for i in parsed.ids if i in SECTIONS] == list(SECTIONS)
    assert sorted(parsed.links) == sorted(f"#{s}" for s in SECTIONS)  # the navigation
    assert all(link[1:] in parsed.ids for link in parsed.links)  # no broken link
    assert parsed.fetched == [] and "http" not in text.replace("http-equiv", "")
    assert len(parsed.images) == 6 and parsed.tables == 5
    for src in parsed.images:  # every figure an inline PNG that decodes
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert image.format == "PNG" and min(image.size) > 100
    assert page.stat().st_size < 2_000_000
    assert "~ log_umi + (1|patient)" in text and "REML" in text


def test_a_fit_without_roles_or_metrics_reports_what_it_has(tmp_path):
    adata = svp.datasets.crossed_example(n_cells=400, n_genes=6, seed=1)
    X = np.asarray(adata.X).copy()
    X[:, 2] = 0.0
    adata.X = X
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svp.tl.variance_partition(adata, svp.datasets.EXAMPLE_FORMULA, min_cells=5, ci=None)
    path = svp.pl.report(adata, tmp_path / "plain.html", title="a <plain> fit")
    text = path.read_text()
    parsed = _parse(text)
    assert "rho" not in parsed.ids and "correction" not in parsed.ids
    assert "Why genes have no estimates" in text and "gene0003" in text
    assert "<title>a &lt;plain&gt; fit</title>" in text  # text is escaped
    with pytest.raises(FileExistsError, match="force=True"):
        svp.pl.report(adata, path)
    svp.pl.report(adata, path, force=True)


@pytest.mark.slow
def test_the_command_line_writes_the_page(fitted, tmp_path):
    result = tmp_path / "fitted.h5ad"
    fitted.write_h5ad(result)
    out = ok(cli("report", result, "--tsv", tmp_path / "t.tsv", "--html", tmp_path / "r.html"))
    assert "wrote" in out.stdout and (tmp_path / "r.html").exists()
    assert set(SECTIONS) <= set(_parse((tmp_path / "r.html").read_text()).ids)
    again = cli("report", result, "--tsv", tmp_path / "t.tsv", "--html", tmp_path / "r.html")
    assert again.returncode == 4 and "--force" in again.stderr
    ok(cli("report", result, "--tsv", tmp_path / "t.tsv", "--html", tmp_path / "r.html", "--force"))
    refused = cli("report", result, "--html", result, "--force")
    assert refused.returncode == 4
    # a .zarr store gives its strings back in numpy's own string dtype
    store = tmp_path / "fitted.zarr"
    fitted.write_zarr(store)
    ok(cli("report", store, "--tsv", tmp_path / "z.tsv", "--html", tmp_path / "z.html"))
    assert set(SECTIONS) <= set(_parse((tmp_path / "z.html").read_text()).ids)
    assert fitted.n_obs == svp.datasets.crossed_example(n_cells=1200, n_genes=40, seed=1).n_obs


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)",
)
def test_chromium_renders_the_page(page, tmp_path):
    """A real browser: the DOM it builds has every section and image, and it draws them."""
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    url = page.resolve().as_uri()
    dom = subprocess.run(
        [*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    parsed = _parse(dom)
    assert set(SECTIONS) <= set(parsed.ids) and len(parsed.images) == 6
    shot = tmp_path / "page.png"
    subprocess.run(
        [*base, "--window-size=1200,4000", f"--screenshot={shot}", url],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    image = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert image.shape == (4000, 1200)
    # drawn: dark text and figures on the white page, not a blank or error page
    assert (image < 100).mean() > 0.005 and image.std() > 20


def test_the_multiqc_table_is_custom_content(fitted, tmp_path):
    """The shape MultiQC's custom content reads (checked with MultiQC 1.35, which is not a
    dependency: it found the table and put it in its report)."""
    import yaml

    result = tmp_path / "cells.varpart.h5ad"
    fitted.write_h5ad(result)
    out = tmp_path / "cells.scvarpart_mqc.yaml"
    ok(cli("report", result, "--tsv", tmp_path / "t.tsv", "--multiqc", out))
    content = yaml.safe_load(out.read_text())
    assert content["plot_type"] == "table" and content["id"] == "scvarpart"
    row = content["data"]["cells"]
    assert row["genes"] == 40 and row["failed"] == 0
    assert 0 < row["median batch fraction"] < 1 and row["batch-dominated genes"] >= 0
    assert cli("report", result, "--multiqc", out).returncode == 4  # exists: --force


def test_the_multiqc_medians_leave_out_genes_without_estimates(tmp_path):
    import yaml

    adata = svp.datasets.crossed_example(n_cells=400, n_genes=8, seed=1)
    X = np.asarray(adata.X).copy()
    X[:, :3] = 0.0  # three genes without estimates (min_cells)
    adata.X = X
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svp.tl.variance_partition(
            adata, svp.datasets.EXAMPLE_FORMULA, batch=BATCH, signal="patient", min_cells=5,
            ci=None,
        )  # fmt: skip
    result = tmp_path / "cells.varpart.h5ad"
    adata.write_h5ad(result)
    out = tmp_path / "cells_mqc.yaml"
    ok(cli("report", result, "--tsv", tmp_path / "t.tsv", "--multiqc", out))
    row = yaml.safe_load(out.read_text())["data"]["cells"]
    rho = svp.get.rho_df(adata)
    assert row["failed"] == 3
    assert row["median batch fraction"] == pytest.approx(rho["batch_fraction"].median())
    assert row["median signal fraction"] == pytest.approx(rho["signal_fraction"].median())
