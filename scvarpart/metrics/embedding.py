"""How well an embedding of the cells mixes the batches and keeps the biology.

The definitions are scIB's (Luecken et al. 2022), as scib-metrics computes them, with
NumPy, SciPy and scikit-learn (which scanpy already requires) instead of JAX;
``tests/test_batch_metrics.py`` checks them against scib-metrics' values on shared
inputs (``tests/data/scib_reference.json``):

- :func:`pcr`: the share of the embedding's variance that a categorical covariate
  explains, over its principal components (Büttner et al. 2018), and
  :func:`pcr_comparison`, how much of it a correction removed;
- :func:`silhouette_batch`: within each label, one minus the absolute silhouette width of
  the batches, averaged per label (1: batches indistinguishable);
- :func:`graph_connectivity`: within each label, the share of its cells in the largest
  strongly connected part of the k-nearest-neighbour graph, averaged over labels;
- :func:`lisi`: the local inverse Simpson index of labels around each cell (Korsunsky et
  al. 2019), with scIB's scalings :func:`scaled_ilisi` (batches: 1 well mixed) and
  :func:`scaled_clisi` (biological labels: 1 well separated);
- :func:`label_prediction`, not in scIB: how well a cross-validated classifier predicts a
  label from the embedding, against chance. Batches should become unpredictable, the
  biology should stay predictable.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

__all__ = [
    "graph_connectivity",
    "label_prediction",
    "lisi",
    "neighbours",
    "pcr",
    "pcr_comparison",
    "scaled_clisi",
    "scaled_ilisi",
    "silhouette_batch",
]


def _codes(labels) -> tuple[np.ndarray, int]:
    """Integer codes of ``labels`` and their number of distinct values."""
    cat = pd.Categorical(np.asarray(labels))
    return np.asarray(cat.codes, dtype=np.int64), len(cat.categories)


def pcr(X: np.ndarray, covariate) -> float:
    """Share of the variance of ``X`` explained by the categorical ``covariate``.

    Each principal component of ``X`` (cells x features, centred) is regressed on the
    covariate's levels; the R^2 values are averaged with the components' variances as
    weights (scIB's ``pcr`` with a categorical covariate).
    """
    X = np.asarray(X, dtype=float)
    centred = X - X.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    scores = u * s
    codes, n_levels = _codes(covariate)
    # the regression on the levels fits each level's mean: R^2 is the between-level sum
    # of squares over the total (the scores are centred)
    sums = np.zeros((n_levels, scores.shape[1]))
    np.add.at(sums, codes, scores)
    counts = np.bincount(codes, minlength=n_levels)[:, None]
    between = (sums**2 / np.maximum(counts, 1)).sum(axis=0)
    total = (scores**2).sum(axis=0)
    r2 = np.clip(np.divide(between, total, out=np.zeros_like(total), where=total > 0), 0, 1)
    variance = s**2
    return float(r2 @ variance / variance.sum()) if variance.sum() > 0 else 0.0


def pcr_comparison(before: np.ndarray, after: np.ndarray, covariate) -> float:
    """Share of the covariate's :func:`pcr` that a correction removed (0 if it grew)."""
    pre = pcr(before, covariate)
    if pre == 0:
        return 0.0
    return max(0.0, (pre - pcr(after, covariate)) / pre)


def silhouette_batch(X: np.ndarray, batch, labels) -> float:
    """Batch mixing within each label: scIB's batch ASW (1: batches indistinguishable).

    Per label, the silhouette width of every cell with respect to the batches (Euclidean),
    as ``1 - |s|``, averaged over the label's cells, then over the labels. Labels with a
    single batch, or with every cell its own batch, are skipped (NaN if all are).
    """
    from sklearn.metrics import silhouette_samples

    X = np.asarray(X, dtype=float)
    batch, labels = np.asarray(batch), np.asarray(labels)
    per_label = []
    for label in pd.unique(labels):
        mask = labels == label
        n_batches = len(pd.unique(batch[mask]))
        if n_batches == 1 or n_batches == mask.sum():
            continue
        s = silhouette_samples(X[mask], batch[mask])
        per_label.append(np.mean(1 - np.abs(s)))
    return float(np.mean(per_label)) if per_label else math.nan


def neighbours(X: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k nearest neighbours of every cell, itself first.

    Returns ``(indices, distances)``, each cells x ``n_neighbors``.
    """
    from sklearn.neighbors import NearestNeighbors

    X = np.asarray(X, dtype=float)
    k = min(n_neighbors, len(X))
    distances, indices = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(X)
    return indices, distances


def graph_connectivity(indices: np.ndarray, labels) -> float:
    """Mean over labels of the share of a label's cells in its largest connected part.

    Of the directed k-nearest-neighbour graph ``indices`` (cells x k; an edge from each cell
    to each of its neighbours) restricted to the label's cells, strongly connected.
    """
    n, k = indices.shape
    graph = sp.csr_matrix(
        (np.ones(n * k), indices.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n)
    )
    labels = np.asarray(labels)
    shares = []
    for label in pd.unique(labels):
        mask = labels == label
        _, parts = connected_components(graph[mask][:, mask], connection="strong")
        shares.append(np.bincount(parts).max() / mask.sum())
    return float(np.mean(shares))


def _neighbour_probabilities(distances, is_self, perplexity: float, tol: float = 1e-5):
    """Gaussian kernel weights of each cell's neighbours at the given perplexity.

    Per cell, the kernel's precision ``beta`` is found by bisection so that the entropy of
    the weights is ``log(perplexity)`` (Harmony's LISI; at most 50 steps). Returns the
    weights (rows summing to 1; 0 for the cell itself) and the entropies.
    """
    n = len(distances)
    beta = np.ones(n)
    lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
    target = math.log(perplexity)

    def entropy(rows, b):
        P = np.where(is_self[rows], 0.0, np.exp(-distances[rows] * b[:, None]))
        total = P.sum(axis=1)
        safe = np.where(total > 0, total, 1.0)
        H = np.where(total > 0, np.log(safe) + b * (distances[rows] * P).sum(axis=1) / safe, 0.0)
        return H, P / safe[:, None]

    H, P = entropy(np.arange(n), beta)
    diff = H - target
    for _ in range(50):
        rows = np.flatnonzero(np.abs(diff) >= tol)
        if len(rows) == 0:
            break
        b, up = beta[rows], diff[rows] > 0
        lo[rows] = np.where(up, b, lo[rows])
        hi[rows] = np.where(up, hi[rows], b)
        beta[rows] = np.where(
            up,
            np.where(np.isinf(hi[rows]), b * 2, (b + hi[rows]) / 2),
            np.where(np.isinf(lo[rows]), b / 2, (b + lo[rows]) / 2),
        )
        H[rows], P[rows] = entropy(rows, beta[rows])
        diff[rows] = H[rows] - target
    return P, H


def lisi(indices: np.ndarray, distances: np.ndarray, labels, perplexity: float | None = None):
    """The local inverse Simpson index of ``labels`` around every cell.

    The effective number of labels among a cell's neighbours (``indices`` and Euclidean
    ``distances``, cells x k, from :func:`neighbours`), weighted by a Gaussian kernel of
    the given ``perplexity`` (default ``k // 3``, as scib-metrics). A cell whose
    neighbours are all at distance 0 gets -1, as in scib-metrics.
    """
    codes, n_labels = _codes(labels)
    k = indices.shape[1]
    perplexity = perplexity or math.floor(k / 3)
    is_self = indices == np.arange(len(indices))[:, None]
    P, H = _neighbour_probabilities(np.asarray(distances, dtype=float), is_self, perplexity)
    neighbour_codes = codes[indices]
    simpson = np.zeros(len(indices))
    for label in range(n_labels):
        share = (P * (neighbour_codes == label)).sum(axis=1)
        simpson += share**2
    simpson = np.where(H == 0, -1.0, simpson)
    return 1.0 / simpson


def scaled_ilisi(values: np.ndarray, n_batches: int) -> float:
    """ScIB's iLISI: the median LISI of the batches, scaled to [0, 1] (1: well mixed)."""
    return float((np.nanmedian(values) - 1) / (n_batches - 1))


def scaled_clisi(values: np.ndarray, n_labels: int) -> float:
    """ScIB's cLISI: the median LISI of the labels, scaled to [0, 1] (1: well separated)."""
    return float((n_labels - np.nanmedian(values)) / (n_labels - 1))


def label_prediction(X: np.ndarray, labels, *, folds: int = 5, seed: int = 0) -> dict[str, float]:
    """How well ``labels`` are predicted from ``X``, cross-validated, against chance.

    A logistic regression on the standardised embedding, ``folds``-fold stratified
    cross-validation (fewer folds if a label has fewer cells; labels with a single cell
    are left out). Returns the ``accuracy`` and ``balanced_accuracy`` of the held-out
    predictions and their values by chance: the share of the most frequent label, and
    ``1 / number of labels``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    codes, _ = _codes(labels)
    counts = np.bincount(codes)
    keep = counts[codes] >= 2
    X, y = np.asarray(X, dtype=float)[keep], codes[keep]
    classes = np.unique(y)
    if len(classes) < 2:
        return dict.fromkeys(
            ("accuracy", "balanced_accuracy", "chance_accuracy", "chance_balanced"), math.nan
        )
    n_folds = int(min(folds, np.bincount(y)[classes].min()))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    split = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    predicted = cross_val_predict(model, X, y, cv=split)
    frequencies = np.bincount(y)[classes] / len(y)
    return {
        "accuracy": float(np.mean(predicted == y)),
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
        "chance_accuracy": float(frequencies.max()),
        "chance_balanced": 1.0 / len(classes),
    }
