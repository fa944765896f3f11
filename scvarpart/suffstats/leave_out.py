"""The statistics of groups of cells in one pass, for leave-one-level-out refits.

Leaving every cell of one level out (a patient, a day) changes a gene's sufficient
statistics by those of the level's cells: ``Z'y``, ``X'y`` and ``y'y`` over them, and the
design's cross-products. One pass over the expression matrix computes, for every group
(each level of the chosen factors, and all cells), the uncentred ``[Z, X]'y`` and ``y'y``
of its cells, as ``W'Y`` with ``W`` the cells' indicator of the group times ``[Z, X]``; the
statistics without a level are then the whole's minus the level's, and each refit costs a
fit from statistics, not another pass. For random intercepts with independent levels
(indicator columns of ``Z``) and no observation weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..design import Design
from ..storage.matrix import few_blocks_rows, readable, reduce_row_blocks, row_bounds
from ._group_kernels import group_sums_csc, group_sums_dense
from .gram import indicator_matrix

__all__ = ["GroupCrossProducts", "group_cross_products"]


@dataclass(frozen=True)
class GroupCrossProducts:
    """Uncentred cross-products of a group of cells (``A = [Z, X]``, ``q + p`` columns).

    Attributes
    ----------
    n_obs
        Cells in the group.
    AtA
        ``A'A`` over them, ``(q + p, q + p)``.
    AtY
        ``A'y`` of every gene, ``(G, q + p)``.
    yty
        ``y'y`` of every gene, ``(G,)``.
    """

    n_obs: int
    AtA: np.ndarray
    AtY: np.ndarray
    yty: np.ndarray

    def __sub__(self, other: GroupCrossProducts) -> GroupCrossProducts:
        """The cross-products of this group's cells that are not ``other``'s."""
        return GroupCrossProducts(
            self.n_obs - other.n_obs, self.AtA - other.AtA, self.AtY - other.AtY,
            self.yty - other.yty,
        )  # fmt: skip


def group_cross_products(
    Y,
    design: Design,
    groups: Sequence[np.ndarray],
    *,
    genes: np.ndarray,
    n_jobs: int | None = 1,
    chunk_rows: int | None = None,
) -> list[GroupCrossProducts]:
    """Each group's :class:`GroupCrossProducts`, in one pass over ``Y``.

    Parameters
    ----------
    Y
        Observations x genes, the rows of the design's covariate table (rows the design
        drops are skipped).
    design
        The model's design (random intercepts with independent levels).
    groups
        Masks over the design's observations, one per group.
    genes
        Column indices of the genes in ``Y``.
    n_jobs, chunk_rows
        Threads and rows per block.
    """
    Y = readable(Y)
    A = sp.hstack([indicator_matrix(design), sp.csr_matrix(design.X)], format="csr")
    q = sum(f.n_levels for f in design.factors)
    m, k, G = A.shape[1], len(groups), len(genes)
    member = np.column_stack(groups)  # observations x groups
    # each observation's groups, padded with -1
    H = max(int(member.sum(axis=1).max()), 1)
    ranked = np.argsort(~member, axis=1, kind="stable")[:, :H]
    held = np.take_along_axis(member, ranked, axis=1)
    group_ids = np.ascontiguousarray(np.where(held, ranked, -1), dtype=np.int64)
    offsets = np.cumsum([0, *(f.n_levels for f in design.factors)])
    levels = np.ascontiguousarray(
        np.column_stack([o + f.codes for o, f in zip(offsets, design.factors, strict=False)]),
        dtype=np.int64,
    )
    X = np.ascontiguousarray(design.X, dtype=np.float64)
    columns = np.asarray(genes, dtype=np.int64)
    rows_of = np.cumsum(design.keep) - 1  # input row -> observation
    size = chunk_rows or few_blocks_rows(Y, G)

    def block(values, start: int, stop: int, first: int):
        n = stop - start
        keep = design.keep[first : first + n]
        obs = np.where(keep, rows_of[first : first + n], -1).astype(np.int64)
        if sp.issparse(values):  # gene by gene: each gene's accumulator stays in cache
            block_csc = values[start:stop].tocsc()
            return group_sums_csc(
                block_csc.indptr, block_csc.indices, block_csc.data, obs, columns,
                group_ids, levels, X, q, k,
            )  # fmt: skip
        return group_sums_dense(
            np.asarray(values), start, stop, obs, columns, group_ids, levels, X, q, k
        )

    def merge(x, y):
        return x[0] + y[0], x[1] + y[1]

    total = reduce_row_blocks(Y, block, merge, bounds=row_bounds(Y.shape[0], size), n_jobs=n_jobs)
    if total is None:
        raise ValueError("No observations.")
    acc, sq = total
    out = []
    for j, mask in enumerate(groups):
        a = A[np.flatnonzero(mask)]
        AtA = np.asarray((a.T @ a).todense())
        out.append(GroupCrossProducts(int(mask.sum()), AtA, acc[:, j, :m].copy(), sq[:, j].copy()))
    return out


def _dense(M) -> np.ndarray:
    return np.asarray(M.todense()) if sp.issparse(M) else np.asarray(M)
