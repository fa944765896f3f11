"""One ranking of batch-dominated genes: rho >= min_rho, by batch fraction. The pure
function, its accessor ``svp.get.batch_dominated``, and every place that lists them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import scvarpart as svp
from scvarpart.varpart import batch_dominated

COMPS = ["patient", "chemistry", "day", "Residual"]


def _table(rows: dict[str, list[float]]) -> tuple[pd.DataFrame, pd.Series]:
    frac = pd.DataFrame.from_dict(rows, orient="index", columns=COMPS)
    batch = frac[["chemistry", "day"]].sum(axis=1, min_count=1)
    signal = frac["patient"]
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = batch / signal
    rho[(signal == 0) & (batch > 0)] = np.inf
    return frac, rho


def test_noise_does_not_come_first():
    frac, rho = _table(
        {
            "inf_tiny": [0.0, 0.001, 0.0, 0.999],  # rho = inf, 0.1% batch
            "ratio_of_tiny": [1e-5, 0.002, 0.0, 0.99799],  # rho = 200
            "batchy": [0.2, 0.3, 0.2, 0.3],  # rho = 2.5, 50% batch
            "also": [0.1, 0.2, 0.1, 0.6],  # rho = 3, 30% batch
            "signal": [0.5, 0.05, 0.05, 0.4],  # rho = 0.2
            "nothing": [0.0, 0.0, 0.0, 1.0],  # rho = NaN
            "failed": [np.nan] * 4,
        }
    )
    ranked = batch_dominated(frac, rho, ["chemistry", "day"], ["patient"])
    assert ranked.index.tolist() == ["batchy", "also", "ratio_of_tiny", "inf_tiny"]
    assert ranked.columns.tolist() == ["batch_fraction", "signal_fraction", "rho"]
    np.testing.assert_allclose(ranked["batch_fraction"], [0.5, 0.3, 0.002, 0.001])
    assert ranked.loc["inf_tiny", "rho"] == np.inf
    # the threshold and the number of genes
    assert batch_dominated(frac, rho, ["chemistry", "day"], min_rho=2.8).index.tolist() == [
        "also",
        "ratio_of_tiny",
        "inf_tiny",
    ]
    assert batch_dominated(frac, rho, ["chemistry", "day"], n_top=1).index.tolist() == ["batchy"]
    # min_rho = 0 takes every gene with a ratio, never the NaN ones
    everything = batch_dominated(frac, rho, ["chemistry", "day"], min_rho=0)
    assert set(everything.index) == {"inf_tiny", "ratio_of_tiny", "batchy", "also", "signal"}


def test_ties_are_broken_by_rho_then_name():
    frac, rho = _table(
        {
            "b": [0.1, 0.2, 0.2, 0.5],
            "a": [0.1, 0.2, 0.2, 0.5],
            "c": [0.05, 0.2, 0.2, 0.55],
        }
    )
    assert batch_dominated(frac, rho, ["chemistry", "day"]).index.tolist() == ["c", "a", "b"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"min_rho": -1}, "min_rho"), ({"n_top": -2}, "n_top"), ({"batch": ["nope"]}, "'nope'")],
)
def test_bad_arguments(kwargs, match):
    frac, rho = _table({"g": [0.1, 0.2, 0.2, 0.5]})
    args = {"batch": ["chemistry"], **kwargs}
    with pytest.raises((ValueError, KeyError), match=match):
        batch_dominated(frac, rho, **args)


@pytest.fixture(scope="module")
def fitted_file(tmp_path_factory):
    adata = svp.datasets.crossed_example(n_cells=800, n_genes=80, seed=6)
    svp.tl.variance_partition(
        adata,
        svp.datasets.EXAMPLE_FORMULA,
        batch=["chemistry", "day", "operator"],
        signal="patient",
        method="REML",
        progress=False,
    )
    path = tmp_path_factory.mktemp("ranking") / "fitted.h5ad"
    adata.write_h5ad(path)
    return adata, path


def test_accessor_report_and_plots_agree(fitted_file, tmp_path, capsys):
    from scvarpart.cli import main

    adata, path = fitted_file
    top = svp.get.batch_dominated(adata, n_top=6)
    assert len(top) == 6
    rho = adata.var["varpart_rho"]
    assert np.isinf(rho).any()  # the case that used to come first
    assert (top["rho"] >= 1).all()
    assert list(top["batch_fraction"]) == sorted(top["batch_fraction"], reverse=True)

    assert main(["report", str(path), "--top", "6", "--tsv", str(tmp_path / "t.tsv")]) == 0
    out = capsys.readouterr().out
    section = out.split("most batch-dominated genes")[1].split("\n\n")[0]
    words = [line.split()[0] for line in section.splitlines()[1:] if line.strip()]
    listed = [w for w in words if w in adata.var_names]
    assert listed == list(top.index)

    ax = svp.pl.percent_bars(adata, n_top=6, show=False)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(top.index)
    plt.close("all")


def test_accessor_needs_rho(fitted_file):
    adata, _ = fitted_file
    other = adata.copy()
    svp.tl.variance_partition(
        other, "~ (1|patient) + (1|day)", method="REML", key_added="plain", progress=False
    )
    with pytest.raises(KeyError, match=r"No rho under key 'plain'.*batch= and signal="):
        svp.get.batch_dominated(other, key="plain")
    with pytest.raises(KeyError, match="No variance partition under key 'nope'"):
        svp.get.batch_dominated(other, key="nope")


def test_example_lists_the_same_ranking(capsys, monkeypatch, tmp_path):
    """`scvarpart example` lists batch-dominated genes by the shared ranking."""
    import anndata as ad

    from scvarpart.cli import main

    fitted = {}
    original = ad.AnnData.write_h5ad

    def keep(self, *args, **kwargs):  # the example's fitted object, as saved
        fitted["adata"] = self.copy()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ad.AnnData, "write_h5ad", keep)
    monkeypatch.chdir(tmp_path)
    assert main(["example", "--output", "example.h5ad"]) == 0
    out = capsys.readouterr().out
    section = out.split("batch-dominated genes")[1].split("\n\n")[0]
    listed = [line.split()[0] for line in section.splitlines()[1:] if line.strip()]
    top = svp.get.batch_dominated(fitted["adata"], n_top=5)
    assert listed == list(top.index)


def test_report_table_holds_only_the_fits_columns(fitted_file, tmp_path):
    """A user's var column that merely starts with the key is not a result."""
    from scvarpart.cli import main

    adata, _ = fitted_file
    mine = adata.copy()
    mine.var["varpart_notes"] = "checked"
    path = tmp_path / "mine.h5ad"
    mine.write_h5ad(path)
    assert main(["report", str(path), "--tsv", str(tmp_path / "t.tsv")]) == 0
    table = pd.read_csv(tmp_path / "t.tsv", sep="\t", index_col=0)
    assert "notes" not in table.columns and "rho" in table.columns
