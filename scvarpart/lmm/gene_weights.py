"""Observation weights that differ from gene to gene (voom's precision weights).

Weights shared by every gene (an ``obs`` column) enter the design's cross-products once,
``Z'WZ``, ``Z'WX``, ``X'WX`` (:func:`.genes.response_stats` with ``weights=``), and every
gene is fitted from them. Precision weights such as voom's differ per gene and
observation: gene ``g`` has its own ``W_g`` and so its own cross-products. Each gene is
then fitted exactly as lme4's ``lmer(y_g ~ ..., weights = w_g)``: its statistics in the
weighted metric, then the same global search, intervals and tests as every other fit
(:func:`.genes.fit_stats`), one gene at a time. Forming ``Z'W_gZ`` costs ``O(n q)`` per
gene (``n`` observations, ``q`` random effects), which is small for pseudobulk data
(tens to hundreds of samples); at cell level the shared weights are the fast path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Literal

import numpy as np
import pandas as pd
from joblib import delayed

from .._names import as_names
from ..design import Design
from ..storage.matrix import column_block, map_column_blocks, row_bounds
from ..varpart.fractions import check_roles
from ..varpart.result import VarPartResult, gene_names
from .genes import fit_stats, response_stats

__all__ = ["check_gene_weights", "fit_gene_weights"]

Progress = Callable[[int, int], object] | None


def check_gene_weights(
    W, design: Design, var_names: pd.Index, source: str = "W", chunk_genes: int = 1024
) -> None:
    """Refuse weights that are not positive and finite where the model uses them.

    Read column block by column block, before anything is fitted; the message names the
    first gene and observation at fault and how many values are.
    """
    rows = np.flatnonzero(design.keep)
    for a, b in row_bounds(W.shape[1], chunk_genes):
        block = column_block(W, a, b)[rows]
        bad = ~(np.isfinite(block) & (block > 0))
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ValueError(
                f"{source} must be positive and finite where the model uses it, but "
                f"{int(bad.sum())} values in genes {a + 1}-{a + block.shape[1]} are not: the "
                f"first is {block[i, j]!r} (gene {var_names[a + j]!r}, observation "
                f"{int(rows[i])}). Give those observations a positive weight, or leave "
                "them out (cells=)."
            )


def _fit_chunk(design: Design, Y: np.ndarray, W: np.ndarray, names: Sequence[str], options):
    """The results of a few genes, each with its own weights (one result per gene)."""
    parts = []
    shared = 1.0 if design.weights is None else design.weights
    for j, name in enumerate(names):
        gene_design = replace(design, weights=W[:, j] * shared)
        stats = response_stats(Y[:, [j]], gene_design, var_names=[name], source=options["source"])
        parts.append(fit_stats(stats, **options["fit"]))
    return parts


def fit_gene_weights(
    design: Design,
    Y,
    W,
    *,
    var_names: Sequence[str] | None = None,
    method: Literal["ML", "REML"] = "ML",
    batch: str | Sequence[str] | None = None,
    signal: str | Sequence[str] | None = None,
    min_cells: int = 0,
    store_blups: bool = False,
    test: Literal["lrt"] | None = None,
    n_boot: int = 0,
    seed: int = 0,
    ci: float | None = 0.95,
    n_jobs: int | None = 1,
    chunk_genes: int = 64,
    progress: Progress = None,
    source: str = "Y",
    weights_source: str = "W",
) -> VarPartResult:
    """Fit every gene of ``Y`` with its own observation weights, the column of ``W``.

    Parameters
    ----------
    design
        The model (:func:`~scvarpart.design.build_design`). Its own weights, if any, are
        multiplied into every gene's.
    Y, W
        Observations x genes: the responses and their weights (residual variance of
        observation ``i`` in gene ``g`` is ``sigma_g^2 / W[i, g]``, lme4's ``weights=``),
        with the rows of the design's covariate table. NumPy, SciPy sparse, backed or
        Dask; read a block of genes at a time, never modified.
    var_names
        The genes' names (default ``"0"``, ``"1"``, ...).
    method, batch, signal, min_cells, store_blups, test, n_boot, seed, ci
        As :func:`~scvarpart.lmm.fit_stats`; a gene's result is the same whatever the
        other genes (q-values excepted, adjusted over all genes).
    n_jobs
        Worker processes over blocks of genes (the per-gene work is mostly Python, so
        processes rather than threads); results do not depend on it.
    chunk_genes
        Genes per block, the unit of parallel work.
    progress
        Called after each block with its size and the total.
    source, weights_source
        What ``Y`` and ``W`` are, in messages.

    Returns
    -------
    The :class:`~scvarpart.varpart.VarPartResult` of all genes, as one fit would give it.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import scvarpart as svp
    >>> from scvarpart.design import build_design, parse_formula
    >>> rng = np.random.default_rng(0)
    >>> obs = pd.DataFrame({"donor": rng.choice(list("abcdefgh"), 60)})
    >>> design = build_design(parse_formula("~ (1|donor)"), obs)
    >>> Y, W = rng.normal(size=(60, 3)), rng.uniform(0.5, 2, size=(60, 3))
    >>> result = svp.lmm.fit_gene_weights(design, Y, W, method="REML", ci=None)
    >>> result.fractions.columns.tolist()
    ['donor', 'Residual']
    """
    if Y.shape != W.shape:
        raise ValueError(
            f"{weights_source} has shape {W.shape}; it must have the shape of {source}, "
            f"{Y.shape}: one weight per observation and gene."
        )
    if Y.shape[0] != len(design.keep):
        raise ValueError(f"{source} has {Y.shape[0]} rows; the design has {len(design.keep)}.")
    if chunk_genes < 1:
        raise ValueError(f"chunk_genes must be a positive integer, got {chunk_genes!r}.")
    check_roles(as_names(batch, "batch"), as_names(signal, "signal"), design.components)
    names = gene_names(var_names, Y.shape[1])
    check_gene_weights(W, design, names, weights_source)
    fit_options = {
        "method": method, "batch": batch, "signal": signal, "min_cells": min_cells,
        "store_blups": store_blups, "test": test, "n_boot": n_boot, "seed": seed, "ci": ci,
    }  # fmt: skip
    options = {"source": source, "fit": fit_options}
    rows = np.flatnonzero(design.keep)

    def job(a: int, b: int):
        y = column_block(Y, a, b)  # every row: response_stats skips the design's dropped ones
        w = column_block(W, a, b)[rows]
        return delayed(_fit_chunk)(design, y, w, list(names[a:b]), options)

    parts = map_column_blocks(Y.shape[1], chunk_genes, job, n_jobs=n_jobs, progress=progress)
    if not parts:
        raise ValueError(f"{source} has no genes.")
    return VarPartResult.concat(parts)
