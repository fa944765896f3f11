"""The example dataset and the command line that runs the main job on it."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

import scvarpart as svp


def test_example_is_deterministic_and_documented():
    a = svp.datasets.crossed_example(n_cells=300, n_genes=10, seed=5)
    b = svp.datasets.crossed_example(n_cells=300, n_genes=10, seed=5)
    c = svp.datasets.crossed_example(n_cells=300, n_genes=10, seed=6)
    np.testing.assert_array_equal(a.X, b.X)
    assert not np.array_equal(a.X, c.X)
    assert a.X.dtype == np.float32
    assert list(a.obs.columns) == ["patient", "chemistry", "day", "operator", "log_umi"]
    assert [a.obs[f].nunique() for f in ("patient", "chemistry", "day", "operator")] == [
        12,
        3,
        6,
        4,
    ]
    assert list(a.varm["true_variance"].columns) == [
        "patient",
        "chemistry",
        "day",
        "operator",
        "log_umi",
        "Residual",
    ]
    assert a.uns["example"]["formula"] == svp.datasets.EXAMPLE_FORMULA


def test_example_fit_recovers_the_truth():
    adata = svp.datasets.crossed_example(n_cells=3000, n_genes=150, seed=0)
    svp.tl.variance_partition(adata, svp.datasets.EXAMPLE_FORMULA)
    est, truth = adata.varm["varpart_variance"], adata.varm["true_variance"]
    assert np.corrcoef(est["patient"], truth["patient"])[0, 1] > 0.85
    assert np.corrcoef(est["Residual"], truth["Residual"])[0, 1] > 0.99
    assert np.corrcoef(est["log_umi"], truth["log_umi"])[0, 1] > 0.95


def test_example_rejects_tiny_sizes():
    with pytest.raises(ValueError, match="n_cells >= 50"):
        svp.datasets.crossed_example(n_cells=10)


def test_donor_batch_is_deterministic_and_its_fit_recovers_the_truth():
    a = svp.datasets.donor_batch(2000, 60, n_donors=30, n_batches=4, seed=3)
    b = svp.datasets.donor_batch(2000, 60, n_donors=30, n_batches=4, seed=3)
    np.testing.assert_array_equal(a.X, b.X)
    assert [a.obs[f].nunique() for f in ("donor", "batch")] == [30, 4]
    truth = a.varm["true_variance"]
    assert list(truth.columns) == ["donor", "batch", "Residual"]
    assert ((truth[["donor", "batch"]] == 0).mean() > 0.05).all()  # a fifth at 0
    svp.tl.variance_partition(a, svp.datasets.DONOR_BATCH_FORMULA)
    est = a.varm["varpart_variance"]
    assert np.corrcoef(est["donor"], truth["donor"])[0, 1] > 0.9
    assert np.abs(est["Residual"] - 1).max() < 0.1
    with pytest.raises(ValueError, match="n_batches >= 2"):
        svp.datasets.donor_batch(n_batches=1)


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "scvarpart", *args], capture_output=True, text=True, cwd=cwd
    )


def test_cli_example_runs_and_writes_atomically(tmp_path):
    out = tmp_path / "example.h5ad"
    proc = _cli("example", "--n-cells", "400", "--n-genes", "12", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "fitted in" in proc.stdout and "patient" in proc.stdout
    result = ad.read_h5ad(out)
    assert result.varm["varpart"].shape == (12, 6)
    assert "varpart_rho" in result.var
    assert [p.name for p in tmp_path.iterdir()] == ["example.h5ad"]  # no temporary left

    # an existing output is not replaced without --force
    before = out.read_bytes()
    proc = _cli("example", "--n-cells", "400", "--n-genes", "5", "--output", str(out))
    assert proc.returncode == 4 and "--force" in proc.stderr
    assert out.read_bytes() == before
    proc = _cli("example", "--n-cells", "400", "--n-genes", "5", "-o", str(out), "--force")
    assert proc.returncode == 0, proc.stderr
    assert ad.read_h5ad(out).n_vars == 5


def test_cli_help_and_version():
    proc = _cli("example", "--help")
    assert proc.returncode == 0 and "--n-genes" in proc.stdout and "example:" in proc.stdout
    proc = _cli("--version")
    assert proc.stdout.strip() == f"scvarpart {svp.__version__}"
