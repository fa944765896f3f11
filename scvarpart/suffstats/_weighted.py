"""Compiled kernels of the pass for a valued ``Z`` and for observation weights.

The same loops as :mod:`._kernels` (read that module first: shifts, sinks, sweeps,
bit-for-bit reproducibility), generalised in two ways:

* ``Z`` has any real values: each observation's stored entries of ``Z`` are given as
  ``codes`` (their columns, sink-padded) and ``zw`` (their values, 0 in the padding),
  so a random slope (the covariate at the observation's level) is one more entry;
* each observation ``i`` has a weight ``w_i > 0``: ``zw`` and ``x`` hold ``Z`` and
  ``X`` already multiplied by the weights (once per design row, not once per value),
  and the sums of squares are weighted.

Accumulated for every gene, in float64, over the values read:

* ``m``, ``zeros``, ``shift`` as in :mod:`._kernels`; ``mw``: the weights of the
  values read (what the implicit zeros of a sparse block weigh is the rest);
* ``s1``, ``s2``: ``sum w (y - shift)`` and ``sum w (y - shift)^2``;
* ``zy`` (``(q + 1) x G``): ``Z'W y``, and ``xy`` (``P x G``): ``X'W y``; dense blocks
  accumulate ``y - shift`` instead of ``y``, as in :mod:`._kernels`.

Without weights (``w`` all ones) every product by a weight is exact, and an
indicator ``Z`` gives the sums of :mod:`._kernels` bit for bit.

As there, every gene's accumulators see its values in row order, whatever other
genes the block holds; ``fastmath`` is off.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ._kernels import GROUP_COLUMNS, GROUP_FACTORS, _accumulators

__all__ = ["check_weights", "csc_block", "csr_block", "dense_block"]


def check_weights(weights, n: int) -> np.ndarray:
    """``weights`` as a float64 array of ``n`` positive finite values, or an error."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights must hold one value per observation ({n}), not shape {w.shape}.")
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise ValueError("weights must be positive and finite.")
    return w


# one loop with its unrolled groups, as in _kernels.csr_block (C901, complexity above 12):
# splitting it would cost a call per row
@nb.njit(cache=True, nogil=True)
def csr_block(  # noqa: C901
    indptr, indices, data, start, stop, row_of, codes, zw, w, x, n_levels, col_of, n_genes
):
    """Rows ``start:stop`` of a CSR matrix (its three arrays, used in place).

    ``row_of``, ``col_of`` as for :func:`._kernels.csr_block`; ``codes`` and ``zw``
    each design row's entries of ``Z`` (columns and weighted values), ``w`` the
    weights, ``x`` the weighted fixed-effect columns. Returns the rows kept and the
    accumulators ``m, zeros, shift, s1, s2, zy, xy, mw`` (``zy`` and ``xy`` of ``y``).
    """
    m, zeros, shift, s1, s2, zy, xy = _accumulators(n_levels, x.shape[1], n_genes)
    mw = np.zeros(n_genes)
    mapped = col_of.shape[0] > 0
    wide = x.shape[1] > 1
    n_kept = 0
    for r in range(start, stop):
        i = row_of[r - start]
        if i < 0:
            continue
        n_kept += 1
        a, b = indptr[r], indptr[r + 1]
        wi = w[i]
        l0, l1, l2, l3 = codes[i, 0], codes[i, 1], codes[i, 2], codes[i, 3]
        v0, v1, v2, v3 = zw[i, 0], zw[i, 1], zw[i, 2], zw[i, 3]
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
            mw[j] += wi
            if y == 0:
                zeros[j] += 1
            d = y - shift[j]
            wd = wi * d
            s1[j] += wd
            s2[j] += wd * d
            zy[l0, j] += v0 * y
            zy[l1, j] += v1 * y
            zy[l2, j] += v2 * y
            zy[l3, j] += v3 * y
            xy[0, j] += x0 * y
            if wide:
                xy[1, j] += x1 * y
        for g in range(GROUP_FACTORS, codes.shape[1], GROUP_FACTORS):
            l0, l1, l2, l3 = codes[i, g], codes[i, g + 1], codes[i, g + 2], codes[i, g + 3]
            v0, v1, v2, v3 = zw[i, g], zw[i, g + 1], zw[i, g + 2], zw[i, g + 3]
            for t in range(a, b):
                j = col_of[indices[t]] if mapped else indices[t]
                if j >= 0:
                    y = np.float64(data[t])
                    zy[l0, j] += v0 * y
                    zy[l1, j] += v1 * y
                    zy[l2, j] += v2 * y
                    zy[l3, j] += v3 * y
        for k in range(GROUP_COLUMNS, x.shape[1]):
            xk = x[i, k]
            for t in range(a, b):
                j = col_of[indices[t]] if mapped else indices[t]
                if j >= 0:
                    xy[k, j] += xk * np.float64(data[t])
    return n_kept, m, zeros, shift, s1, s2, zy, xy, mw


@nb.njit(cache=True, nogil=True)
def csc_block(indptr, indices, data, cols, row_of, codes, zw, w, x, n_levels):
    """The columns ``cols`` of a CSC matrix (its arrays, in place), every row.

    As :func:`._kernels.csc_block` (each column a block of its own), with the design
    of :func:`csr_block`. Returns ``m, zeros, shift, s1, s2, zy, xy, mw``.
    """
    G = cols.shape[0]
    m, zeros, shift, s1, s2, zy, xy = _accumulators(n_levels, x.shape[1], G)
    mw = np.zeros(G)
    K, P = codes.shape[1], x.shape[1]
    for jj in range(G):
        j = cols[jj]
        c = 0.0
        mj = 0
        zj = 0
        wj = 0.0
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
            wi = w[i]
            wj += wi
            if y == 0:
                zj += 1
            d = y - c
            wd = wi * d
            a1 += wd
            a2 += wd * d
            for f in range(K):
                zy[codes[i, f], jj] += zw[i, f] * y
            for k in range(P):
                xy[k, jj] += x[i, k] * y
        m[jj], zeros[jj], shift[jj], s1[jj], s2[jj], mw[jj] = mj, zj, c, a1, a2, wj
    return m, zeros, shift, s1, s2, zy, xy, mw


@nb.njit(cache=True, nogil=True)
def _dense_rows(Y, start, stop, row_of, codes, zw, w, x, n_levels, cols):
    """Row by row (C order): the inner loop runs along a row, over contiguous genes."""
    mapped = cols.shape[0] > 0
    G = cols.shape[0] if mapped else Y.shape[1]
    m, zeros, shift, s1, s2, zy, xy = _accumulators(n_levels, x.shape[1], G)
    wide = x.shape[1] > 1
    n_kept = 0
    w_kept = 0.0
    for r in range(start, stop):
        i = row_of[r - start]
        if i < 0:
            continue
        if n_kept == 0:
            for jj in range(G):
                shift[jj] = np.float64(Y[r, cols[jj] if mapped else jj])
        n_kept += 1
        wi = w[i]
        w_kept += wi
        l0, l1, l2, l3 = codes[i, 0], codes[i, 1], codes[i, 2], codes[i, 3]
        v0, v1, v2, v3 = zw[i, 0], zw[i, 1], zw[i, 2], zw[i, 3]
        x0, x1 = x[i, 0], x[i, 1] if wide else 0.0
        for jj in range(G):
            y = np.float64(Y[r, cols[jj] if mapped else jj])
            if y == 0:
                zeros[jj] += 1
            d = y - shift[jj]
            wd = wi * d
            s1[jj] += wd
            s2[jj] += wd * d
            zy[l0, jj] += v0 * d
            zy[l1, jj] += v1 * d
            zy[l2, jj] += v2 * d
            zy[l3, jj] += v3 * d
            xy[0, jj] += x0 * d
            if wide:
                xy[1, jj] += x1 * d
        for g in range(GROUP_FACTORS, codes.shape[1], GROUP_FACTORS):
            l0, l1, l2, l3 = codes[i, g], codes[i, g + 1], codes[i, g + 2], codes[i, g + 3]
            v0, v1, v2, v3 = zw[i, g], zw[i, g + 1], zw[i, g + 2], zw[i, g + 3]
            for jj in range(G):
                d = np.float64(Y[r, cols[jj] if mapped else jj]) - shift[jj]
                zy[l0, jj] += v0 * d
                zy[l1, jj] += v1 * d
                zy[l2, jj] += v2 * d
                zy[l3, jj] += v3 * d
        for k in range(GROUP_COLUMNS, x.shape[1]):
            xk = x[i, k]
            for jj in range(G):
                xy[k, jj] += xk * (np.float64(Y[r, cols[jj] if mapped else jj]) - shift[jj])
    m[:] = n_kept
    mw = np.full(G, w_kept)
    return n_kept, m, zeros, shift, s1, s2, zy, xy, mw


@nb.njit(cache=True, nogil=True)
def _dense_columns(Y, start, stop, row_of, codes, zw, w, x, n_levels, cols):
    """Column by column (F order): the inner loop runs down a contiguous column.

    The same operations on each gene, in the same order, as :func:`_dense_rows`.
    """
    mapped = cols.shape[0] > 0
    G = cols.shape[0] if mapped else Y.shape[1]
    m, zeros, shift, s1, s2, zy, xy = _accumulators(n_levels, x.shape[1], G)
    K, P = codes.shape[1], x.shape[1]
    n_kept = 0
    w_kept = 0.0
    for r in range(start, stop):
        i = row_of[r - start]
        if i >= 0:
            n_kept += 1
            w_kept += w[i]
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
            wd = w[i] * d
            a1 += wd
            a2 += wd * d
            for f in range(K):
                zy[codes[i, f], jj] += zw[i, f] * d
            for k in range(P):
                xy[k, jj] += x[i, k] * d
        zeros[jj], shift[jj], s1[jj], s2[jj] = zj, c, a1, a2
    m[:] = n_kept
    mw = np.full(G, w_kept)
    return n_kept, m, zeros, shift, s1, s2, zy, xy, mw


def dense_block(Y, start, stop, row_of, codes, zw, w, x, n_levels, cols):
    """Rows ``start:stop`` of a dense array (in place), the columns ``cols``.

    As :func:`._kernels.dense_block` (``zy`` and ``xy`` of ``y - shift``), with the
    design of :func:`csr_block`. Returns the rows kept and
    ``m, zeros, shift, s1, s2, zy, xy, mw``.
    """
    kernel = _dense_columns if Y.flags.f_contiguous and not Y.flags.c_contiguous else _dense_rows
    return kernel(Y, start, stop, row_of, codes, zw, w, x, n_levels, cols)
