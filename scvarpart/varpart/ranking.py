"""Which genes are batch-dominated: one ranking, shared by every report and plot.

``rho`` (batch variance / signal variance) says whether a gene's technical variance
outweighs its biological variance, but ranked on its own it puts noise first: a gene
whose signal variance is exactly 0 has ``rho = inf`` however little batch variance it
has, and a gene with almost no variance of either kind can have a huge ratio of two tiny
numbers. The batch fraction (the batch components' share of the gene's total variance)
says how much of what is seen in the gene is technical, on a scale from 0 to 1 that does
not blow up.

So a gene is **batch-dominated** when ``rho >= min_rho`` (by default 1: at least as much
batch as signal variance, ``rho = inf`` included), and batch-dominated genes are ranked
by their batch fraction, largest first (ties: larger ``rho`` first, then by name). Genes
without estimates, and genes with ``rho`` NaN (neither batch nor signal variance), are
not ranked.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["batch_dominated"]


def batch_dominated(
    fractions: pd.DataFrame,
    rho: pd.Series,
    batch: Sequence[str],
    signal: Sequence[str] = (),
    *,
    min_rho: float = 1.0,
    n_top: int | None = None,
) -> pd.DataFrame:
    """The batch-dominated genes, most batch-dominated first.

    Parameters
    ----------
    fractions
        Genes x components variance fractions (rows sum to 1; NaN rows: no estimates).
    rho
        Batch-to-signal ratio of each gene (same index as ``fractions``).
    batch
        The technical components.
    signal
        The biological components (their fraction is reported beside).
    min_rho
        Smallest ``rho`` of a batch-dominated gene (``>= 0``).
    n_top
        Return only the first ``n_top`` genes (all by default).

    Returns
    -------
    DataFrame
        One row per batch-dominated gene, in rank order, with columns
        ``batch_fraction``, ``signal_fraction`` and ``rho``.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=500, n_genes=20, seed=1)
    >>> svp.tl.variance_partition(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, batch=["chemistry", "day", "operator"],
    ...     signal="patient", method="REML", progress=False,
    ... )
    >>> res = svp.get.result(adata)
    >>> top = svp.varpart.batch_dominated(
    ...     res.fractions, res.per_gene["rho"], batch=["chemistry", "day", "operator"],
    ...     signal=["patient"], n_top=3,
    ... )
    >>> top.columns.tolist()
    ['batch_fraction', 'signal_fraction', 'rho']
    """
    if not (isinstance(min_rho, int | float) and min_rho >= 0):
        raise ValueError(f"min_rho must be a number >= 0, got {min_rho!r}.")
    if n_top is not None and not (isinstance(n_top, int | np.integer) and n_top >= 0):
        raise ValueError(f"n_top must be a non-negative integer or None, got {n_top!r}.")
    batch, signal = list(batch), list(signal)
    missing = [c for c in batch + signal if c not in fractions.columns]
    if missing:
        raise KeyError(f"{missing} are not components; they are {list(fractions.columns)}.")
    if not rho.index.equals(fractions.index):
        raise ValueError("rho and fractions must have the same genes, in the same order.")
    table = pd.DataFrame(
        {
            # min_count=1: a gene without estimates stays NaN instead of summing to 0
            "batch_fraction": fractions[batch].sum(axis=1, min_count=1),
            "signal_fraction": fractions[signal].sum(axis=1, min_count=1) if signal else np.nan,
            "rho": rho.astype(float),
        },
        index=fractions.index,
    )
    ranked = table[(table["rho"] >= min_rho) & table["batch_fraction"].notna()]
    order = np.lexsort(
        (
            np.asarray(
                ranked.index.astype(str), dtype=str
            ),  # last key: the name, for a stable order
            -ranked["rho"].to_numpy(),
            -ranked["batch_fraction"].to_numpy(),  # primary key
        )
    )
    ranked = ranked.iloc[order]
    return ranked if n_top is None else ranked.iloc[:n_top]
