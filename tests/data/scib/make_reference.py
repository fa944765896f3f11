"""scib-metrics' values on shared inputs, for tests/test_batch_metrics.py.

Run in an environment with scib-metrics (it needs JAX, which scvarpart does not):

    pip install scib-metrics==0.5.10
    python tests/data/scib/make_reference.py

Writes ``tests/data/scib/reference.npz``: the inputs (two embeddings of 400 cells, a
batch and a label per cell, the exact 30-nearest-neighbour indices and distances of the
"after" embedding from scikit-learn) and scib-metrics' values on them. Nothing of
scib-metrics' code is in scvarpart; the test checks that scvarpart's own implementation
of the same definitions gives the same numbers.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import scib_metrics as sm
from scib_metrics.nearest_neighbors import NeighborsResults
from sklearn.neighbors import NearestNeighbors


def inputs(seed: int = 7):
    """Cells of 4 labels in 3 batches; "before" separates the batches, "after" less."""
    rng = np.random.default_rng(seed)
    n, d = 400, 8
    labels = rng.integers(0, 4, n)
    batch = rng.integers(0, 3, n)
    centres, shifts = rng.normal(0, 3, (4, d)), rng.normal(0, 2, (3, d))
    noise = rng.normal(size=(n, d))
    before = centres[labels] + shifts[batch] + noise
    after = centres[labels] + 0.2 * shifts[batch] + noise
    return before, after, batch, labels


def main() -> None:
    before, after, batch, labels = inputs()
    distances, indices = NearestNeighbors(n_neighbors=30).fit(after).kneighbors(after)
    nn = NeighborsResults(indices=indices, distances=distances)
    values = {
        "pcr_before": sm.utils.principal_component_regression(before, batch, categorical=True),
        "pcr_after": sm.utils.principal_component_regression(after, batch, categorical=True),
        "pcr_comparison": sm.pcr_comparison(before, after, batch, categorical=True),
        "silhouette_batch": sm.silhouette_batch(after, labels, batch),
        "graph_connectivity": sm.graph_connectivity(
            NeighborsResults(indices=indices[:, :15], distances=distances[:, :15]), labels
        ),
        "ilisi": sm.ilisi_knn(nn, batch),
        "clisi": sm.clisi_knn(nn, labels),
        "lisi_batch_first10": sm.lisi_knn(nn, batch)[:10].tolist(),
    }
    values = {k: v if isinstance(v, list) else float(v) for k, v in values.items()}
    out = Path(__file__).with_name("reference.npz")
    np.savez_compressed(
        out, before=before, after=after, batch=batch, labels=labels, indices=indices,
        distances=distances,
        values=json.dumps({**values, "scib_metrics": version("scib-metrics")}),
    )  # fmt: skip
    print(json.dumps(values, indent=1))


if __name__ == "__main__":
    main()
