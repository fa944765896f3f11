"""The command line per group: ``fit --groupby``, ``groups``, one group's chunks, merge."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from test_cli import cli, ok

import scvarpart as svp
from scvarpart.varpart.grouped import group_names

MODEL = ["--formula", "~ (1|patient) + (1|chemistry)", "--method", "REML",
         "--groupby", "cell_type"]  # fmt: skip


@pytest.fixture(scope="module")
def bulk(tmp_path_factory) -> Path:
    """Pseudobulk samples of three cell types, one too rare to keep any gene."""
    cells = svp.datasets.simulate_counts(8000, 120, seed=0, counts=True)
    rng = np.random.default_rng(1)
    cells.obs["cell_type"] = rng.choice(["B", "T", "rare"], cells.n_obs, p=[0.3, 0.69, 0.01])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = svp.pp.pseudobulk(cells, "library", groupby="cell_type")
    path = tmp_path_factory.mktemp("groups") / "bulk.h5ad"
    data.write_h5ad(path)
    return path


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _same(a: ad.AnnData, b: ad.AnnData) -> None:
    assert a.uns["varpart"]["params"] == b.uns["varpart"]["params"]
    pd.testing.assert_frame_equal(svp.get.groups(a), svp.get.groups(b))
    for g in group_names(a, "varpart"):
        ra, rb = svp.get.result(a, group=g), svp.get.result(b, group=g)
        for table in ("fractions", "variance", "per_gene", "ci_low", "ci_high"):
            pd.testing.assert_frame_equal(getattr(ra, table), getattr(rb, table))
        assert ra.params == rb.params


def _chunks(bulk: Path, folder: Path, n: int) -> list[Path]:
    groups = ok(cli("groups", bulk, "--groupby", "cell_type")).stdout.split()
    assert groups == ["B", "T", "rare"]
    out = []
    for g in groups:
        for i in range(1, n + 1):
            path = folder / f"{g}.{i}.h5ad"
            ok(cli("fit", bulk, *MODEL, "--group", g, "--genes", f"{i}/{n}", "-o", path))
            out.append(path)
    return out


def test_group_chunks_merge_into_the_whole_run(bulk, tmp_path):
    before = _md5(bulk)
    ok(cli("fit", bulk, *MODEL, "-o", tmp_path / "whole.h5ad"))
    chunks = _chunks(bulk, tmp_path, 3)
    ok(cli("merge", *reversed(chunks), "--into", bulk, "-o", tmp_path / "merged.h5ad"))
    whole, merged = ad.read_h5ad(tmp_path / "whole.h5ad"), ad.read_h5ad(tmp_path / "merged.h5ad")
    _same(whole, merged)
    table = svp.get.groups(whole).set_index("group")
    assert table.loc["rare", "status"] == "skipped"
    assert table.loc["rare", "reason"] == "no gene passed the expression filter in this group"
    # the API on the same file gives the same fits
    data = ad.read_h5ad(bulk)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svp.tl.variance_partition(data, "~ (1|patient) + (1|chemistry)", method="REML",
                                  groupby="cell_type", progress=False)  # fmt: skip
    for g in ("B", "T"):
        pd.testing.assert_frame_equal(
            svp.get.result(data, group=g).fractions, svp.get.result(whole, group=g).fractions
        )
    assert _md5(bulk) == before


def test_merge_refuses_incomplete_or_mixed_chunks(bulk, tmp_path):
    chunks = _chunks(bulk, tmp_path, 2)
    out = tmp_path / "m.h5ad"
    missing = [c for c in chunks if c.name != "T.2.h5ad"]
    proc = cli("merge", *missing, "--into", bulk, "-o", out)
    assert proc.returncode == 5 and "group 'T' misses chunks 2/2" in proc.stderr
    no_group = [c for c in chunks if not c.name.startswith("B.")]
    proc = cli("merge", *no_group, "--into", bulk, "-o", out)
    assert proc.returncode == 5 and "group 'B' has no chunk" in proc.stderr
    other = tmp_path / "ml.h5ad"
    ok(cli("fit", bulk, *[m if m != "REML" else "ML" for m in MODEL], "--group", "B",
           "--genes", "1/2", "-o", other))  # fmt: skip
    proc = cli("merge", *chunks[1:], other, "--into", bulk, "-o", out)
    assert proc.returncode == 5 and "params_fingerprint" in proc.stderr
    plain = tmp_path / "plain.h5ad"
    ok(cli("fit", bulk, *MODEL[:4], "--genes", "1/2", "-o", plain))
    proc = cli("merge", *chunks, plain, "--into", bulk, "-o", out)
    assert proc.returncode == 5 and "without --groupby" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "options, code, words",
    [
        (["--formula", "~ (1|patient)", "--group", "B"], 2, "--group NAME needs --groupby"),
        ([*MODEL, "--genes", "1/2"], 2, "give --group NAME too"),
        ([*MODEL, "--group", "NK"], 3, "['NK'] are not groups of 'cell_type'"),
        (["--formula", "~ (1|patient)", "--groupby", "kind"], 3, "groupby='kind' is not a column"),
    ],
)
def test_bad_group_options_exit_with_one_clear_line(bulk, tmp_path, options, code, words):
    proc = cli("fit", bulk, *options, "-o", tmp_path / "o.h5ad")
    assert proc.returncode == code, proc.stderr
    assert words in proc.stderr
    assert not (tmp_path / "o.h5ad").exists()


def test_groups_lists_a_column(bulk):
    proc = cli("groups", bulk, "--groupby", "chemistry")
    assert proc.returncode == 0 and len(proc.stdout.split()) == 3
    proc = cli("groups", bulk, "--groupby", "nope")
    assert proc.returncode == 3 and "is not a column" in proc.stderr
