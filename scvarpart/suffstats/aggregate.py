"""Sums of the cells of each group, in one pass: the counts of pseudobulk samples.

``S = W'Y`` with ``W`` the cells x groups indicator: one sparse product per block of rows,
in memory, backed or on disk (:mod:`scvarpart.storage.matrix`), the blocks' sums added in
block order (the result does not depend on the number of threads). Counts are summed in
float64, exact up to 2^53.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..storage.matrix import default_chunk_rows, density, readable, reduce_row_blocks, row_bounds

__all__ = ["group_sums"]


def group_sums(
    Y,
    codes: np.ndarray,
    n_groups: int,
    *,
    n_jobs: int | None = 1,
    chunk_rows: int | None = None,
) -> np.ndarray:
    """The sum over each group's cells of every column of ``Y``, ``n_groups x genes``.

    Parameters
    ----------
    Y
        Cells x genes.
    codes
        The group of every cell, ``0 .. n_groups - 1``; -1 for a cell in none.
    n_groups
        Number of groups.
    n_jobs, chunk_rows
        Threads and rows per block.
    """
    Y = readable(Y)
    codes = np.asarray(codes, dtype=np.int64)

    def block(values, start: int, stop: int, first: int) -> np.ndarray:
        rows = codes[first : first + stop - start]
        used = np.flatnonzero(rows >= 0)
        W = sp.csr_matrix((np.ones(len(used)), (rows[used], used)), shape=(n_groups, stop - start))
        part = W @ values[start:stop]
        return part.toarray() if sp.issparse(part) else np.asarray(part, dtype=float)

    size = chunk_rows or default_chunk_rows(Y.shape[1], density(Y))
    total = reduce_row_blocks(Y, block, np.add, bounds=row_bounds(Y.shape[0], size), n_jobs=n_jobs)
    return np.zeros((n_groups, Y.shape[1])) if total is None else np.asarray(total, dtype=float)
