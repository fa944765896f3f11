"""The zero counts of a class of cells, summed in closed form for every gene: NB2 at cell level.

At cell level most counts are 0. A zero count of an NB2 model with size ``phi`` and mean
``mu_i = exp(o_i + xi)`` contributes ``-phi log(1 + mu_i / phi)`` to the log-likelihood.
The cells of a class (:mod:`.rows`) share ``xi``, so their zeros contribute
``-phi F_c(xi - log phi)`` *as if every cell were 0*, with

    F_c(x) = sum_{i in c} softplus(x + o_i),

less the cells that are not 0, which are few and handled one by one (a row holding
``l(y) - l(0)``). ``F_c`` depends on the offsets only, not on the gene: it is tabulated
once per design and then costs ``O(1)`` per class and evaluation, so a gene's work per
evaluation grows with its non-zero counts and the number of classes, not with the cells.

``F_c`` and its first three derivatives (``sum sigma``, ``sum sigma (1 - sigma)``,
``sum sigma (1 - sigma)(1 - 2 sigma)``, ``sigma`` the logistic function) are analytic in
a strip of half-width ``pi`` about the real line; on unit intervals, Chebyshev
interpolants of degree :data:`DEGREE` reach rounding (checked against direct sums in the
tests). Outside ``[min o - SPAN, max o + SPAN]`` (shifted by ``-x``) every softplus is at
its asymptote to rounding: ``F = e^x S_1 - e^{2x} S_2 / 2`` on the left,
``n x + sum o + e^{-x} sum e^{-o}`` on the right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba as nb
import numpy as np

__all__ = ["DEGREE", "ZeroTables", "zero_tables", "zero_terms"]

DEGREE = 20  # Chebyshev degree per unit interval
SPAN = 40.0  # beyond |x + o| = SPAN, softplus(z) is e^z (or z + e^-z) to rounding


@dataclass(frozen=True)
class ZeroTables:
    """Per class: the interval tabulated, Chebyshev coefficients, and tail sums.

    ``coef[c, s, d, :]`` holds derivative ``d`` (0-3) of ``F_c`` on segment ``s``
    (``[start[c] + s, start[c] + s + 1]``); ``tails[c]`` holds ``n_c``, ``sum o``,
    ``sum e^o``, ``sum e^{2o}``, ``sum e^{-o}``.
    """

    start: np.ndarray
    n_segments: np.ndarray
    coef: np.ndarray
    tails: np.ndarray


@nb.njit(cache=True, nogil=True)
def _direct(x, offsets):
    """``F`` and its first three derivatives at ``x``, summed over ``offsets``."""
    f0 = f1 = f2 = f3 = 0.0
    for o in offsets:
        z = x + o
        e = math.exp(-abs(z))  # in (0, 1]: no overflow, and sigma(1 - sigma) without cancelling
        w = 1.0 + e
        v = e / (w * w)
        if z > 0:
            f0 += z + math.log1p(e)
            f1 += 1.0 / w
            f3 += v * (e - 1.0) / w
        else:
            f0 += math.log1p(e)
            f1 += e / w
            f3 += v * (1.0 - e) / w
        f2 += v
    return f0, f1, f2, f3


@nb.njit(cache=True, nogil=True)
def _fill(offsets, start, n_seg, out):
    """Chebyshev coefficients of ``F`` and its derivatives on each unit segment."""
    m = DEGREE + 1
    nodes = np.cos(np.pi * (np.arange(m) + 0.5) / m)
    values = np.empty((4, m))
    for s in range(n_seg):
        for j in range(m):
            f = _direct(start + s + 0.5 * (nodes[j] + 1.0), offsets)
            for d in range(4):
                values[d, j] = f[d]
        for d in range(4):
            for k in range(m):
                acc = 0.0
                for j in range(m):
                    acc += values[d, j] * math.cos(np.pi * k * (j + 0.5) / m)
                out[s, d, k] = (2.0 if k else 1.0) * acc / m


def zero_tables(offsets: np.ndarray, classes: np.ndarray, n_classes: int) -> ZeroTables:
    """The tables of every class's ``F_c`` (offsets: ``log`` of each cell's size factor)."""
    order = np.argsort(classes, kind="stable")
    bounds = np.searchsorted(classes[order], np.arange(n_classes + 1))
    lo, hi = np.empty(n_classes), np.empty(n_classes)
    groups = []
    for c in range(n_classes):
        o = np.ascontiguousarray(offsets[order[bounds[c] : bounds[c + 1]]])
        groups.append(o)
        lo[c], hi[c] = -SPAN - o.max(), SPAN - o.min()
    n_seg = np.ceil(hi - lo).astype(np.int64)
    coef = np.zeros((n_classes, int(n_seg.max()), 4, DEGREE + 1))
    tails = np.empty((n_classes, 5))
    for c, o in enumerate(groups):
        _fill(o, lo[c], int(n_seg[c]), coef[c])
        tails[c] = len(o), o.sum(), np.exp(o).sum(), np.exp(2 * o).sum(), np.exp(-o).sum()
    return ZeroTables(lo, n_seg, coef, tails)


@nb.njit(cache=True, nogil=True)
def _clenshaw(c, t):
    b1 = b2 = 0.0
    for k in range(len(c) - 1, 0, -1):
        b1, b2 = 2.0 * t * b1 - b2 + c[k], b1
    return t * b1 - b2 + c[0]


@nb.njit(cache=True, nogil=True)
def zero_terms(x, c, start, n_segments, coef, tails):
    """``F_c(x)`` and its first three derivatives, from the tables or the tails."""
    s = x - start[c]
    if s < 0.0:  # every softplus at e^z: F = e^x S1 - e^2x S2 / 2
        e = math.exp(x)
        a, b = e * tails[c, 2], e * e * tails[c, 3]
        return a - 0.5 * b, a - b, a - 2.0 * b, a - 4.0 * b
    if s >= n_segments[c]:  # every softplus at z + e^-z
        e = math.exp(-x) * tails[c, 4]
        return tails[c, 0] * x + tails[c, 1] + e, tails[c, 0] - e, e, -e
    j = int(s)
    t = 2.0 * (s - j) - 1.0
    seg = coef[c, j]
    return (
        _clenshaw(seg[0], t), _clenshaw(seg[1], t), _clenshaw(seg[2], t), _clenshaw(seg[3], t)
    )  # fmt: skip
