"""Which genes have counts enough to model: edgeR's ``filterByExpr`` (Chen et al. 2016)."""

from __future__ import annotations

import numpy as np

__all__ = ["filter_by_expr"]


def filter_by_expr(
    counts: np.ndarray,
    *,
    group=None,
    lib_size: np.ndarray | None = None,
    min_count: float = 10,
    min_total_count: float = 15,
    large_n: int = 10,
    min_prop: float = 0.7,
) -> np.ndarray:
    """The genes (columns of ``counts``, samples x genes) worth keeping, as a mask.

    edgeR's rule: a gene is kept when its CPM reaches ``min_count`` over the median library
    size (in CPM) in at least ``n`` samples, and its total count reaches
    ``min_total_count``. ``n`` is the number of samples, or with ``group`` the smallest
    group's; beyond ``large_n`` only ``min_prop`` of the excess counts
    (``large_n + (n - large_n) * min_prop``).
    """
    counts = np.asarray(counts, dtype=float)
    lib = counts.sum(axis=1) if lib_size is None else np.asarray(lib_size, dtype=float)
    if group is None:
        n = float(counts.shape[0])
    else:
        _, sizes = np.unique(np.asarray(group), return_counts=True)
        n = float(sizes.min())
    if n > large_n:
        n = large_n + (n - large_n) * min_prop
    tol = 1e-14
    cutoff = min_count / np.median(lib) * 1e6
    with np.errstate(divide="ignore", invalid="ignore"):
        cpm = counts / lib[:, None] * 1e6
    enough = (cpm >= cutoff).sum(axis=0) >= n - tol
    return enough & (counts.sum(axis=0) >= min_total_count - tol)
