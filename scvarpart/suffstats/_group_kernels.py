"""Compiled loop of the groups' pass (:mod:`.leave_out`): ``[Z, X]'y`` and ``y'y`` per group.

For each stored value ``y`` of a gene in an observation's row, every group holding the
observation gets ``y`` in the columns of the observation's levels, ``y x`` in the fixed
columns and ``y^2``: a few dozen additions into the gene's own slab of the accumulator
(genes x groups x columns), so writes stay local. Random intercepts only (indicator
columns of ``Z``).
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True)
def _add(acc, sq, g, y, o, groups, levels, X, q):  # pragma: no cover - compiled
    for h in range(groups.shape[1]):
        grp = groups[o, h]
        if grp < 0:
            continue
        for c in range(levels.shape[1]):
            acc[g, grp, levels[o, c]] += y
        for c in range(X.shape[1]):
            acc[g, grp, q + c] += y * X[o, c]
        sq[g, grp] += y * y


@nb.njit(cache=True, nogil=True)
def group_sums_dense(
    values, start, stop, obs, columns, groups, levels, X, q, n_groups
):  # pragma: no cover - compiled
    """``acc`` (genes x groups x (q + p)) and ``sq`` (genes x groups) of rows ``start:stop``.

    ``obs``: each row's observation (-1: dropped); ``columns``: the genes' columns;
    ``groups``: each observation's groups (-1: padding); ``levels``: its columns of ``Z``.
    """
    G = columns.shape[0]
    acc = np.zeros((G, n_groups, q + X.shape[1]))
    sq = np.zeros((G, n_groups))
    for row in range(start, stop):
        o = obs[row - start]
        if o < 0:
            continue
        for g in range(G):
            y = np.float64(values[row, columns[g]])
            if y != 0.0:
                _add(acc, sq, g, y, o, groups, levels, X, q)
    return acc, sq


@nb.njit(cache=True, nogil=True)
def group_sums_csc(
    indptr, indices, data, obs, columns, groups, levels, X, q, n_groups
):  # pragma: no cover - compiled
    """As :func:`group_sums_dense` for a CSC block of rows, gene by gene.

    A gene's values are visited together, so its accumulator (groups x columns) stays in
    cache: much faster than row by row when the genes are many.
    """
    G = columns.shape[0]
    m = q + X.shape[1]
    acc = np.zeros((G, n_groups, m))
    sq = np.zeros((G, n_groups))
    local = np.zeros((1, n_groups, m))
    local_sq = np.zeros((1, n_groups))
    for g in range(G):
        local[:] = 0.0
        local_sq[:] = 0.0
        col = columns[g]
        for p in range(indptr[col], indptr[col + 1]):
            o = obs[indices[p]]
            if o >= 0:
                _add(local, local_sq, 0, np.float64(data[p]), o, groups, levels, X, q)
        acc[g] = local[0]
        sq[g] = local_sq[0]
    return acc, sq
