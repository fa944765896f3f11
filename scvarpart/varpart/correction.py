"""Batch-corrected values: each gene's values less its fitted technical effects.

For cell ``i`` and gene ``g`` the technical part is ``t_ig``, the sum of the chosen terms'
parts of the fitted linear predictor (:class:`~scvarpart.design.predict.Effects`): the
BLUPs of the batch terms at the cell's levels (times the slope covariates of terms with
slopes) and the centred fixed effects of technical covariates. The corrected value is
``y_ig - t_ig``: the signal terms, the other fixed effects and the residual stay. Cells the
model did not use (a missing covariate, or left out by ``cells=``) have no technical part
the fit can vouch for: they keep their values.

One pass over blocks of rows, in memory, backed or on disk (:mod:`scvarpart.storage.matrix`):
:func:`corrected_blocks` yields each block's values in order, for a caller that writes
them to a file as they come; :func:`corrected_values` gathers them in memory. Neither
depends on the number of threads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ..design import Design
from ..design.predict import Effects
from ..storage.matrix import (
    default_chunk_rows,
    dense_columns,
    map_row_blocks,
    readable,
    row_bounds,
)

__all__ = ["CorrectedBlock", "coefficient_arrays", "corrected_blocks", "corrected_values"]


class CorrectedBlock(NamedTuple):
    """Rows ``start:stop`` of the corrected values, with what else a writer needs."""

    start: int
    stop: int
    corrected: np.ndarray  # rows x genes
    technical: np.ndarray  # rows x genes, 0 in the rows the model did not use
    values: Any  # the block as read (all genes), for writers that keep the others


def corrected_blocks(
    Y,
    effects: Effects,
    *,
    genes: np.ndarray,
    n_jobs: int | None = 1,
    chunk_rows: int | None = None,
) -> Iterator[CorrectedBlock]:
    """The corrected values of the columns ``genes`` of ``Y``, block by block of rows.

    Parameters
    ----------
    Y
        Observations x genes: the rows of the design's covariate table.
    effects
        The technical parts, for the genes ``genes`` in order.
    genes
        Column indices into ``Y``.
    n_jobs, chunk_rows
        Threads and rows per block (by default about 4 million values, as the
        corrected values of a block are dense).

    Yields
    ------
    A :class:`CorrectedBlock` per block of rows, in order (float64).
    """
    Y = readable(Y)
    design = effects.design
    rows_of = np.cumsum(design.keep) - 1  # input row -> observation

    def block(values, start: int, stop: int, first: int) -> CorrectedBlock:
        rows = slice(first, first + stop - start)
        y = dense_columns(values, start, stop, genes)
        keep = design.keep[rows]
        t = np.zeros_like(y)
        t[keep] = effects.at(rows_of[rows][keep])
        return CorrectedBlock(first, rows.stop, y - t, t, values[start:stop])

    size = chunk_rows or default_chunk_rows(len(genes))
    yield from map_row_blocks(Y, block, bounds=row_bounds(Y.shape[0], size), n_jobs=n_jobs)


def corrected_values(
    Y,
    effects: Effects,
    *,
    genes: np.ndarray,
    dtype=np.float32,
    technical: bool = False,
    n_jobs: int | None = 1,
    chunk_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The corrected values of the columns ``genes`` of ``Y``, every row, in memory.

    As :func:`corrected_blocks`, gathered into arrays of ``dtype``; with ``technical``,
    the technical parts too. Returns ``(corrected, technical parts or None)``.
    """
    out = np.empty((Y.shape[0], len(genes)), dtype=dtype)
    parts = np.empty((Y.shape[0], len(genes)), dtype=dtype) if technical else None
    for b in corrected_blocks(Y, effects, genes=genes, n_jobs=n_jobs, chunk_rows=chunk_rows):
        out[b.start : b.stop] = b.corrected
        if parts is not None:
            parts[b.start : b.stop] = b.technical
    return out, parts


def coefficient_arrays(fit, design: Design, names: pd.Index, terms: Sequence[str]):
    """The fixed effects and the BLUPs of ``terms`` of the genes ``names``, as arrays.

    ``fit``: a :class:`~scvarpart.varpart.VarPartResult` with BLUPs. Returns ``beta``
    (genes x columns of ``X``), the BLUPs per term (genes x levels x coefficients), for
    :meth:`~scvarpart.design.predict.Effects.of`, and the genes without estimates, whose
    coefficients are set to 0.
    """
    failed = names.isin(fit.errors.index) | fit.beta.loc[names].isna().any(axis=1).to_numpy()
    beta = fit.beta.loc[names, design.columns].to_numpy(dtype=float)
    blups = {}
    for f in design.factors:
        if f.name in terms:
            table = fit.blups[f.name].loc[names].to_numpy(dtype=float)
            blups[f.name] = table.reshape(len(names), f.n_levels, f.n_coef)
            failed |= np.isnan(blups[f.name]).any(axis=(1, 2))
    beta[failed] = 0.0
    for b in blups.values():
        b[failed] = 0.0
    return beta, blups, names[failed]
