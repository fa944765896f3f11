"""Compiled kernels of the pass over the expression matrix: one fused loop per block.

Each kernel reads a block of the matrix once, in place (float32 or float64, any
integer type; never converted nor copied), and accumulates for every gene, in
float64:

* ``m``: values read (stored values, for a sparse block) and ``zeros`` the zeros among
  them (explicitly stored zeros, for a sparse block);
* ``shift``: the gene's first value read in the block (see below);
* ``s1``, ``s2``: sums of ``y - shift`` and ``(y - shift)^2`` over the values read;
* ``zy``: ``Z'y`` as one sum per level, ``(q + 1) x G`` (row ``q`` is a sink for
  padding), and ``xy``: ``X'y``, ``p x G``. Dense blocks accumulate ``y - shift``
  instead of ``y`` (every value is read, so the shift is exact); sparse blocks
  accumulate ``y``, since their implicit zeros are never visited.

Why shifted sums: ``sum((y - c)^2) - (sum(y - c))^2 / n`` is the centred sum of
squares for any ``c``, and its rounding error grows with ``(mean - c)^2 / var``.
With ``c`` one of the block's own values this ratio is at most ``n - 1``
(Samuelson's inequality), so the result is as accurate as the two-pass algorithm's
recursive sums (Chan, Golub & LeVeque 1983), however large the mean: a gene of
``1e8 + noise`` keeps its digits where ``sum(y^2) - n mean^2`` keeps none. It costs
one subtraction per value and no second look at the data, unlike a pass for the
means or Welford's update (a division per value). An implicit zero of a sparse
block is a value too, so the shift bound holds there as well.

Design: ``codes`` (``n x K``, K a multiple of 4) holds each observation's level of
each grouping factor, offset into the stacked levels, padded with the sink level
``q``; ``x`` (``n x P``, P at least 1) the fixed-effect columns that are not constant
(the intercept's products are known without reading anything), a zero column if
there are none. Four factors and two columns are updated in the loop over a row's
values; further ones in further sweeps over the same values, still in cache.

Every gene's accumulators see its values in row order, whatever other genes the
block holds, so a gene's statistics are bitwise the same in any subset of genes.
``fastmath`` is off: no reassociation, no contraction into fused multiply-adds.
"""

from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["GROUP_COLUMNS", "GROUP_FACTORS", "csc_block", "csr_block", "dense_block"]

#: Grouping factors and fixed-effect columns updated together in one sweep.
GROUP_FACTORS = 4
GROUP_COLUMNS = 2


@nb.njit(cache=True, nogil=True)
def _accumulators(n_levels, n_columns, n_genes):
    m = np.zeros(n_genes, dtype=np.int64)
    zeros = np.zeros(n_genes, dtype=np.int64)
    shift = np.zeros(n_genes)
    s1 = np.zeros(n_genes)
    s2 = np.zeros(n_genes)
    zy = np.zeros((n_levels + 1, n_genes))
    xy = np.zeros((n_columns, n_genes))
    return m, zeros, shift, s1, s2, zy, xy


# one loop with its unrolled groups (complexity above 12): splitting it would cost a call per row
@nb.njit(cache=True, nogil=True)
def csr_block(indptr, indices, data, start, stop, row_of, codes, x, n_levels, col_of, n_genes):
    """Rows ``start:stop`` of a CSR matrix (its three arrays, used in place).

    ``row_of[r - start]``: the design row of matrix row ``r``, or -1 for a row left
    out. ``col_of``: the output gene of each matrix column, or -1 to skip it; an
    empty array for all columns in order. Returns the rows kept and the
    accumulators ``m, zeros, shift, s1, s2, zy, xy`` (``zy`` and ``xy`` of ``y``).
    """
    m, zeros, shift, s1, s2, zy, xy = _accumulators(n_levels, x.shape[1], n_genes)
    mapped = col_of.shape[0] > 0
    wide = x.shape[1] > 1
    n_kept = 0
    for r in range(start, stop):
        i = row_of[r - start]
        if i < 0:
            continue
        n_kept += 1
        a, b = indptr[r], indptr[r + 1]
        l0, l1, l2, l3 = codes[i, 0], codes[i, 1], codes[i, 2], codes[i, 3]
        x0, x1 = x[i, 0], x[i, 1] if wide else 0.0
        for t in range(a, b):
            j = indices[t]
            if mapped:
                j = col_of[j]
                if j < 0:
                    continue
            y = np.float64(data[t])
            if m[j] == 0:
                shift[j] = y
            m[j] += 1
            if y == 0:  # rare in a sparse block: a branch, not a store per value
                zeros[j] += 1
            d = y - shift[j]
            s1[j] += d
            s2[j] += d * d
            zy[l0, j] += y
            zy[l1, j] += y
            zy[l2, j] += y
            zy[l3, j] += y
            xy[0, j] += x0 * y
            if wide:
                xy[1, j] += x1 * y
        for g in range(GROUP_FACTORS, codes.shape[1], GROUP_FACTORS):
            l0, l1, l2, l3 = codes[i, g], codes[i, g + 1], codes[i, g + 2], codes[i, g + 3]
            for t in range(a, b):
                j = col_of[indices[t]] if mapped else indices[t]
                if j >= 0:
                    y = np.float64(data[t])
                    zy[l0, j] += y
                    zy[l1, j] += y
                    zy[l2, j] += y
                    zy[l3, j] += y
        for k in range(GROUP_COLUMNS, x.shape[1]):
            xk = x[i, k]
            for t in range(a, b):
                j = col_of[indices[t]] if mapped else indices[t]
                if j >= 0:
                    xy[k, j] += xk * np.float64(data[t])
    return n_kept, m, zeros, shift, s1, s2, zy, xy


@nb.njit(cache=True, nogil=True)
def csc_block(indptr, indices, data, cols, row_of, codes, x, n_levels):
    """The columns ``cols`` of a CSC matrix (its arrays, in place), every row.

    ``row_of[r]``: the design row of matrix row ``r``, or -1. Each column is a block
    of its own: its shift is its first kept stored value. Accumulators as for
    :func:`csr_block` (``zy`` and ``xy`` of ``y``), one column per entry of ``cols``.
    """
    G = cols.shape[0]
    m, zeros, shift, s1, s2, zy, xy = _accumulators(n_levels, x.shape[1], G)
    K, P = codes.shape[1], x.shape[1]
    for jj in range(G):
        j = cols[jj]
        c = 0.0
        mj = 0
        zj = 0
        a1 = 0.0
        a2 = 0.0
        for t in range(indptr[j], indptr[j + 1]):
            i = row_of[indices[t]]
            if i < 0:
                continue
            y = np.float64(data[t])
            if mj == 0:
                c = y
            mj += 1
            if y == 0:
                zj += 1
            d = y - c
            a1 += d
            a2 += d * d
            for f in range(K):
                zy[codes[i, f], jj] += y
            for k in range(P):
                xy[k, jj] += x[i, k] * y
        m[jj], zeros[jj], shift[jj], s1[jj], s2[jj] = mj, zj, c, a1, a2
    return m, zeros, shift, s1, s2, zy, xy


@nb.njit(cache=True, nogil=True)
def _dense_rows(Y, start, stop, row_of, codes, x, n_levels, cols):
    """Row by row (C order): the inner loop runs along a row, over contiguous genes."""
    mapped = cols.shape[0] > 0
    G = cols.shape[0] if mapped else Y.shape[1]
    m, zeros, shift, s1, s2, zy, xy = _accumulators(n_levels, x.shape[1], G)
    wide = x.shape[1] > 1
    n_kept = 0
    for r in range(start, stop):
        i = row_of[r - start]
        if i < 0:
            continue
        if n_kept == 0:
            for jj in range(G):
                shift[jj] = np.float64(Y[r, cols[jj] if mapped else jj])
        n_kept += 1
        l0, l1, l2, l3 = codes[i, 0], codes[i, 1], codes[i, 2], codes[i, 3]
        x0, x1 = x[i, 0], x[i, 1] if wide else 0.0
        for jj in range(G):
            y = np.float64(Y[r, cols[jj] if mapped else jj])
            if y == 0:
                zeros[jj] += 1
            d = y - shift[jj]
            s1[jj] += d
            s2[jj] += d * d
            zy[l0, jj] += d
            zy[l1, jj] += d
            zy[l2, jj] += d
            zy[l3, jj] += d
            xy[0, jj] += x0 * d
            if wide:
                xy[1, jj] += x1 * d
        for g in range(GROUP_FACTORS, codes.shape[1], GROUP_FACTORS):
            l0, l1, l2, l3 = codes[i, g], codes[i, g + 1], codes[i, g + 2], codes[i, g + 3]
            for jj in range(G):
                d = np.float64(Y[r, cols[jj] if mapped else jj]) - shift[jj]
                zy[l0, jj] += d
                zy[l1, jj] += d
                zy[l2, jj] += d
                zy[l3, jj] += d
        for k in range(GROUP_COLUMNS, x.shape[1]):
            xk = x[i, k]
            for jj in range(G):
                xy[k, jj] += xk * (np.float64(Y[r, cols[jj] if mapped else jj]) - shift[jj])
    m[:] = n_kept
    return n_kept, m, zeros, shift, s1, s2, zy, xy


@nb.njit(cache=True, nogil=True)
def _dense_columns(Y, start, stop, row_of, codes, x, n_levels, cols):
    """Column by column (F order): the inner loop runs down a contiguous column.

    The same operations on each gene, in the same order, as :func:`_dense_rows`.
    """
    mapped = cols.shape[0] > 0
    G = cols.shape[0] if mapped else Y.shape[1]
    m, zeros, shift, s1, s2, zy, xy = _accumulators(n_levels, x.shape[1], G)
    K, P = codes.shape[1], x.shape[1]
    n_kept = 0
    for r in range(start, stop):
        if row_of[r - start] >= 0:
            n_kept += 1
    for jj in range(G):
        j = cols[jj] if mapped else jj
        c = 0.0
        first = True
        zj = 0
        a1 = 0.0
        a2 = 0.0
        for r in range(start, stop):
            i = row_of[r - start]
            if i < 0:
                continue
            y = np.float64(Y[r, j])
            if first:
                c = y
                first = False
            if y == 0:
                zj += 1
            d = y - c
            a1 += d
            a2 += d * d
            for f in range(K):
                zy[codes[i, f], jj] += d
            for k in range(P):
                xy[k, jj] += x[i, k] * d
        zeros[jj], shift[jj], s1[jj], s2[jj] = zj, c, a1, a2
    m[:] = n_kept
    return n_kept, m, zeros, shift, s1, s2, zy, xy


def dense_block(Y, start, stop, row_of, codes, x, n_levels, cols):
    """Rows ``start:stop`` of a dense array (in place), the columns ``cols``.

    ``cols``: an empty array for every column in order; ``row_of`` as for
    :func:`csr_block`. Row by row for a C-ordered array, column by column for an F-ordered one; both
    give the same results. Accumulators as for :func:`csr_block`, but ``zy`` and
    ``xy`` of ``y - shift``.
    """
    kernel = _dense_columns if Y.flags.f_contiguous and not Y.flags.c_contiguous else _dense_rows
    return kernel(Y, start, stop, row_of, codes, x, n_levels, cols)
