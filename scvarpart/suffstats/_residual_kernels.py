"""Compiled loop of the residual checks' pass: one fused sweep per row of a block.

For each observation the fitted values of every gene (``x' beta`` plus each factor's
BLUP at the observation's level) are formed once, the residuals ``r = y - fitted`` of
its row of values (sparse: zeros everywhere but the stored values), and every
accumulator is updated in the same sweep: the powers of ``r``, ``|r|`` and the fitted
value (``sums``, 8 x G), each level's sums of ``r`` and ``r^2`` (``by_level``, 2 x q x
G) and the zeros. No cells x genes temporary is formed. Random intercepts only (no
slope covariates): other designs use the array code of :mod:`.residuals`.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True)
def _accumulate(y, fitted, o, codes, sums, by_level, zeros):  # pragma: no cover - compiled
    G = y.shape[0]
    k = codes.shape[1]
    for g in range(G):
        f = fitted[g]
        r = y[g] - f
        a = abs(r)
        r2 = r * r
        sums[0, g] += r
        sums[1, g] += r2
        sums[2, g] += r2 * r
        sums[3, g] += r2 * r2
        sums[4, g] += a
        sums[5, g] += f
        sums[6, g] += f * f
        sums[7, g] += a * f
        if y[g] == 0.0:
            zeros[g] += 1
        for j in range(k):
            level = codes[o, j]
            by_level[0, level, g] += r
            by_level[1, level, g] += r2


@nb.njit(cache=True, nogil=True)
def _fitted(o, X, beta_t, codes, blups_t, out):  # pragma: no cover - compiled
    G = out.shape[0]
    for g in range(G):
        out[g] = 0.0
    for c in range(X.shape[1]):
        x = X[o, c]
        for g in range(G):
            out[g] += x * beta_t[c, g]
    for j in range(codes.shape[1]):
        row = codes[o, j]
        for g in range(G):
            out[g] += blups_t[row, g]


@nb.njit(cache=True, nogil=True)
def _accumulators(G, q):  # pragma: no cover - compiled
    """``sums``, ``by_level``, ``zeros`` and the row buffers ``fitted`` and ``y``."""
    return np.zeros((8, G)), np.zeros((2, q, G)), np.zeros(G), np.empty(G), np.zeros(G)


@nb.njit(cache=True, nogil=True)
def residual_sums_csr(
    indptr, indices, data, start, stop, obs, gene_of, X, beta_t, codes, blups_t, q
):  # pragma: no cover - compiled
    """Accumulators of rows ``start:stop`` of a CSR block (``obs``: -1 for rows dropped).

    ``gene_of`` maps a column of the block to its gene (-1: not checked); ``codes`` holds
    each observation's level of each factor, offset into the stacked levels (``q``).
    """
    sums, by_level, zeros, fitted, y = _accumulators(beta_t.shape[1], q)
    for row in range(start, stop):
        o = obs[row - start]
        if o < 0:
            continue
        _fitted(o, X, beta_t, codes, blups_t, fitted)
        for p in range(indptr[row], indptr[row + 1]):
            g = gene_of[indices[p]]
            if g >= 0:
                y[g] = data[p]
        _accumulate(y, fitted, o, codes, sums, by_level, zeros)
        for p in range(indptr[row], indptr[row + 1]):
            g = gene_of[indices[p]]
            if g >= 0:
                y[g] = 0.0
    return sums, by_level, zeros


@nb.njit(cache=True, nogil=True)
def residual_sums_dense(
    values, start, stop, obs, columns, X, beta_t, codes, blups_t, q
):  # pragma: no cover - compiled
    """As :func:`residual_sums_csr` for rows of a dense block (``columns``: the genes)."""
    G = beta_t.shape[1]
    sums, by_level, zeros, fitted, y = _accumulators(G, q)
    for row in range(start, stop):
        o = obs[row - start]
        if o < 0:
            continue
        _fitted(o, X, beta_t, codes, blups_t, fitted)
        for g in range(G):
            y[g] = values[row, columns[g]]
        _accumulate(y, fitted, o, codes, sums, by_level, zeros)
    return sums, by_level, zeros
