"""Log counts per million, as limma's ``voom`` computes them."""

from __future__ import annotations

import numpy as np

__all__ = ["log_cpm"]


def log_cpm(counts: np.ndarray, lib_size: np.ndarray | None = None, prior_count: float = 0.5):
    """``log2((count + prior) / (library size + 2 prior) * 1e6)``, samples x genes.

    With the default ``prior_count=0.5`` this is limma's ``voom`` (Law et al. 2014), the
    values dreamlet models: ``log2((count + 0.5) / (library size + 1) * 1e6)``. The library
    size is each sample's total count (or ``lib_size``).
    """
    counts = np.asarray(counts, dtype=float)
    lib = counts.sum(axis=1) if lib_size is None else np.asarray(lib_size, dtype=float)
    return np.log2((counts + prior_count) / (lib[:, None] + 2 * prior_count) * 1e6)
