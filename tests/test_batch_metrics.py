"""svp.tl.batch_metrics, svp.pl.batch_metrics and the metrics, against scib-metrics."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import scvarpart as svp
from scvarpart.metrics import embedding as em

matplotlib.use("Agg")

BATCH = ["chemistry", "day", "operator"]
REFERENCE = Path(__file__).parent / "data" / "scib" / "reference.npz"


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_the_metrics_are_scib_metrics_definitions():
    """Same inputs, same numbers as scib-metrics 0.5.10 (float32 in JAX: 1e-6)."""
    ref = np.load(REFERENCE)
    values = json.loads(str(ref["values"]))
    before, after, batch, labels = (ref[k] for k in ("before", "after", "batch", "labels"))
    indices, distances = ref["indices"], ref["distances"]
    close = {"rtol": 2e-6, "atol": 1e-7}
    np.testing.assert_allclose(em.pcr(before, batch), values["pcr_before"], **close)
    np.testing.assert_allclose(em.pcr(after, batch), values["pcr_after"], rtol=1e-5)
    np.testing.assert_allclose(
        em.pcr_comparison(before, after, batch), values["pcr_comparison"], **close
    )
    np.testing.assert_allclose(
        em.silhouette_batch(after, batch, labels), values["silhouette_batch"], **close
    )
    assert em.graph_connectivity(indices[:, :15], labels) == values["graph_connectivity"]
    lisi = em.lisi(indices, distances, batch)
    np.testing.assert_allclose(lisi[:10], values["lisi_batch_first10"], rtol=2e-6)
    np.testing.assert_allclose(em.scaled_ilisi(lisi, 3), values["ilisi"], rtol=2e-6)
    clisi = em.scaled_clisi(em.lisi(indices, distances, labels), 4)
    np.testing.assert_allclose(clisi, values["clisi"], rtol=2e-6)


def test_the_metrics_at_their_extremes():
    rng = np.random.default_rng(0)
    n = 300
    batch = np.repeat([0, 1, 2], n // 3)
    mixed = rng.normal(size=(n, 5))
    apart = mixed + 40.0 * np.eye(5)[batch]
    assert em.pcr(apart, batch) > 0.95 and em.pcr(mixed, batch) < 0.05
    assert em.pcr_comparison(apart, mixed, batch) > 0.95
    assert em.pcr_comparison(mixed, apart, batch) == 0.0  # grew: clipped
    one = np.zeros(n)
    assert em.silhouette_batch(mixed, batch, one) > 0.9
    assert em.silhouette_batch(apart, batch, one) < 0.1
    idx, dist = em.neighbours(apart, 30)
    assert np.allclose(em.lisi(idx, dist, batch), 1.0)  # every neighbour of its own batch
    idx, dist = em.neighbours(mixed, 90)
    assert np.median(em.lisi(idx, dist, batch)) > 2.5  # about 3 batches around each cell
    assert em.graph_connectivity(em.neighbours(mixed, 15)[0], one) == 1.0
    assert em.graph_connectivity(em.neighbours(apart, 15)[0], one) == pytest.approx(1 / 3)
    separable = em.label_prediction(apart, batch)
    assert separable["accuracy"] == 1.0 and separable["chance_balanced"] == pytest.approx(1 / 3)
    chance = em.label_prediction(mixed, batch, seed=1)
    assert abs(chance["balanced_accuracy"] - 1 / 3) < 0.12


@pytest.fixture(scope="module")
def scored():
    adata = svp.datasets.crossed_example(n_cells=2500, n_genes=50, seed=1)
    _quiet(
        svp.tl.remove_batch_effects, adata, svp.datasets.EXAMPLE_FORMULA, terms=BATCH,
        signal="patient", method="REML", ci=0.95,
    )  # fmt: skip
    _quiet(svp.tl.batch_metrics, adata, n_comps=15, n_sample=2000)
    return adata


def test_the_correction_mixes_batches_and_keeps_the_patients(scored):
    table = svp.get.batch_metrics_df(scored).set_index(["metric", "variable"])
    for b in BATCH:
        assert table.loc[("pcr", b), "after"] < 0.5 * table.loc[("pcr", b), "before"]
        assert table.loc[("ilisi", b), "after"] > table.loc[("ilisi", b), "before"] + 0.1
        assert (
            table.loc[("silhouette_batch", b), "after"]
            > table.loc[("silhouette_batch", b), "before"]
        )
        accuracy = table.loc[("balanced_accuracy", b)]
        assert accuracy["after"] < accuracy["before"] - 0.2 and accuracy["chance"] > 0
    kept = table.loc[("balanced_accuracy", "patient")]
    assert kept["after"] > kept["before"] - 0.03 and kept["after"] > 0.8
    assert set(table["role"]) == {"batch", "labels"}
    params = scored.uns["batch_metrics"]["params"]
    assert params["n_cells"] == 2000 and params["labels"] == ["patient"]


def test_each_gene_has_its_batch_removed_and_its_signal_kept(scored):
    genes = svp.get.batch_metrics_df(scored, "genes").set_index("gene")
    assert genes["batch_after"].max() < 1e-3 < genes["batch_before"].median()
    assert not genes["signal_lost"].any()
    clear = genes["signal_variance_before"] > 0.01
    assert genes.loc[clear, "signal_ratio"].median() > 0.97
    assert "varpart_varpart_corrected" in scored.uns  # the corrected layer's fit
    assert not scored.var["batch_metrics_signal_lost"].any()


def test_a_correction_that_removes_biology_is_caught(scored):
    """Each patient's mean subtracted too: the signal variance goes, and is flagged."""
    adata = scored.copy()
    corrected = pd.DataFrame(adata.layers["varpart_corrected"])
    by_patient = corrected.groupby(adata.obs["patient"].to_numpy())
    means = by_patient.transform("mean").to_numpy(dtype=np.float32)
    adata.layers["overdone"] = adata.layers["varpart_corrected"] - means
    _quiet(
        svp.tl.batch_metrics, adata, after="overdone", n_comps=10, n_sample=1000, key_added="bad"
    )
    genes = svp.get.batch_metrics_df(adata, "genes", key="bad")
    assert genes.loc[genes["signal_variance_before"] > 0.05, "signal_lost"].all()
    table = svp.get.batch_metrics_df(adata, key="bad").set_index(["metric", "variable"])
    assert table.loc[("balanced_accuracy", "patient"), "after"] < 0.5


def test_any_embedding_or_layer_is_scored_and_the_results_round_trip(scored, tmp_path):
    adata = scored.copy()
    sc.pp.pca(adata, n_comps=10)
    combat = adata.copy()
    _quiet(sc.pp.combat, combat, key="chemistry")
    adata.obsm["X_combat"] = sc.pp.pca(np.asarray(combat.X, dtype=float), n_comps=10)
    _quiet(
        svp.tl.batch_metrics, adata, before="X_pca", after="X_combat", batch="chemistry",
        labels="patient", key_added="combat", n_sample=800,
    )  # fmt: skip
    assert "genes" not in adata.uns["combat"]  # an embedding has no genes
    table = svp.get.batch_metrics_df(adata, key="combat").set_index(["metric", "variable"])
    assert table.loc[("pcr", "chemistry"), "after"] < table.loc[("pcr", "chemistry"), "before"]
    adata.write_h5ad(tmp_path / "scored.h5ad")
    back = ad.read_h5ad(tmp_path / "scored.h5ad")
    for key in ("batch_metrics", "combat"):
        pd.testing.assert_frame_equal(
            svp.get.batch_metrics_df(back, key=key), svp.get.batch_metrics_df(adata, key=key),
            check_dtype=False,
        )  # fmt: skip
    pd.testing.assert_frame_equal(
        svp.get.batch_metrics_df(back, "genes"), svp.get.batch_metrics_df(adata, "genes"),
        check_dtype=False,
    )  # fmt: skip


def test_the_plot_draws_scores_and_genes(scored):
    axes = svp.pl.batch_metrics(scored, show=False)
    assert len(axes) == 2
    assert "pcr (chemistry" in axes[0].get_yticklabels()[0].get_text()
    assert axes[1].get_xlabel() == "signal variance before"
    with pytest.raises(ValueError, match="2 Axes"):
        svp.pl.batch_metrics(scored, ax=axes[0], show=False)


def test_bad_input_is_refused(scored):
    adata = scored.copy()
    with pytest.raises(KeyError, match="neither 'X', a layer"):
        svp.tl.batch_metrics(adata, after="nope")
    with pytest.raises(KeyError, match=r"not a column of adata\.obs"):
        svp.tl.batch_metrics(adata, labels="cell_type")
    with pytest.raises(ValueError, match="mask_var must be a boolean"):
        svp.tl.batch_metrics(adata, mask_var=np.zeros(adata.n_vars, dtype=bool))
    adata.layers["other"] = adata.layers["varpart_corrected"]
    with pytest.raises(ValueError, match="is a fit of 'varpart_corrected'"):
        svp.tl.batch_metrics(adata, after="other", key_after="varpart_varpart_corrected")
    plain = svp.datasets.crossed_example(n_cells=200, n_genes=5, seed=1)
    with pytest.raises(ValueError, match="Pass batch="):
        svp.tl.batch_metrics(plain, after="X")
    with pytest.raises(KeyError, match=r"run svp\.tl\.batch_metrics"):
        svp.get.batch_metrics_df(plain)


def test_the_corrected_layer_is_fitted_with_the_fits_known_covariance():
    """A kinship fit: the after layer is fitted with the same model, or refused without K."""
    adata = svp.datasets.crossed_example(n_cells=600, n_genes=8, seed=1)
    levels = [str(p) for p in adata.obs["patient"].cat.categories]
    G = np.random.default_rng(0).normal(size=(len(levels), 30))
    K = pd.DataFrame(G @ G.T / 30 + 0.5 * np.eye(len(levels)), index=levels, columns=levels)
    _quiet(
        svp.tl.remove_batch_effects, adata, svp.datasets.EXAMPLE_FORMULA, terms=BATCH,
        signal="patient", covariance={"patient": K},
    )  # fmt: skip
    with pytest.raises(ValueError, match="known covariances between levels"):
        svp.tl.batch_metrics(adata, n_comps=5, n_sample=400)
    _quiet(svp.tl.batch_metrics, adata, n_comps=5, n_sample=400, covariance={"patient": K})
    after = svp.get.result(adata, key="varpart_varpart_corrected").params
    assert after["layer"] == "varpart_corrected" and "patient" in after["covariance"]
