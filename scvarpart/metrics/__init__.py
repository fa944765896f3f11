"""Batch-mixing and signal-conservation metrics, per embedding and per gene.

Plain arrays in and numbers out: :mod:`.embedding` scores an embedding of the cells (as
scIB does), :mod:`.genes` compares each gene's fits before and after a correction.
"""

from .embedding import (
    graph_connectivity,
    label_prediction,
    lisi,
    neighbours,
    pcr,
    pcr_comparison,
    scaled_clisi,
    scaled_ilisi,
    silhouette_batch,
)
from .genes import gene_changes

__all__ = [
    "gene_changes",
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
