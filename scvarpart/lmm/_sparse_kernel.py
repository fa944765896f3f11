"""Compiled kernel of :class:`~scvarpart.lmm.blocked.BlockedDeviance`: a sparse Schur complement.

The mathematics is in :mod:`scvarpart.lmm.blocked`. The largest factor's diagonal
block is eliminated in closed form; the Schur complement ``S`` over the other
levels and the fixed effects is factorised by a sparse Cholesky factorisation
(left-looking, column by column) on a pattern found once per fit (:func:`analyse`):
a minimum-degree order of the levels, the fixed effects last. Everything runs
without the GIL, so threads fit batches of genes in parallel.

Storage: ``L`` by columns (``Lp``, ``Li``; the diagonal first in each column, rows
ascending), and the same positions hold ``N``, ``S`` and the selected inverse
``Z`` (the entries of ``S^-1`` on the pattern of ``L``). The inner loops index with
unsigned copies of the index arrays (:class:`Indices`), and where the columns of
``L`` are full to the last row (its dense trailing block) with contiguous loops.
``E' diag(w) E`` is summed from each row's products, precomputed with their
positions in ``L``. Every sum is accumulated in a fixed order: a gene's result does
not depend on its batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba as nb
import numpy as np

from .newton import (
    _MIN_STEP,
    _active_set,
    _final_step,
    _near,
    _newton_step,
    _step_length,
    _sufficient_decrease,
    _trial_point,
    batch_results,
    held_options,
)
from .search import (
    MAX_EXTRA_STARTS,
    TIE,
    candidate_bounds,
    face_buffers,
    face_known,
    swap_starts,
    zeroed,
)

__all__ = [
    "SparseDesign",
    "analyse",
    "columns",
    "evaluate_batch",
    "factor",
    "factor_points",
    "fixed_factors",
    "minimise_batch",
    "search_batch",
    "solve",
    "symbolic",
    "workspace",
]

_FASTMATH = {"contract"}
_LOG_2PI = math.log(2 * math.pi)


class Indices(NamedTuple):
    """Index arrays of :class:`SparseDesign` in unsigned integers, for the inner loops.

    Numba checks every signed index for a negative value (counting from the end);
    unsigned indices skip that, which makes the factorisation and the selected
    inverse about twice as fast.
    """

    Lp: np.ndarray
    Li: np.ndarray
    Rp: np.ndarray
    Rc: np.ndarray
    Rpos: np.ndarray
    Lend: np.ndarray  # (m2,) end of each column's rows below lim (levels for ML, all for REML)
    Ep: np.ndarray
    Ei: np.ndarray
    Pp: np.ndarray
    Ppos: np.ndarray


class SparseDesign(NamedTuple):
    """Design constants, levels in the factorisation's order (fixed effects last)."""

    d: np.ndarray  # (q1,) level counts of the eliminated factor
    Ep: np.ndarray  # (q1 + 1,) E = [Z_1'Z_R, Z_1'X] by rows, columns in L's order
    Ei: np.ndarray
    Ex: np.ndarray
    Lp: np.ndarray  # (m2 + 1,) pattern of L by columns
    Li: np.ndarray
    Rp: np.ndarray  # (m2 + 1,) pattern of L by rows, left of the diagonal
    Rc: np.ndarray  # column of each
    Rpos: np.ndarray  # position in Li
    G: np.ndarray  # G_RR on L's positions (0 on fill)
    Pp: np.ndarray  # (q1 + 1,) products E_li E_lj (i >= j) of row l: Pval[Pp[l]:Pp[l + 1]],
    Ppos: np.ndarray  # each one's position (i, j) in L's storage
    Pval: np.ndarray
    zy_col: np.ndarray  # (q1 + q2,) column of Z'y of each eliminated level, then each in L's order
    rest_factor: np.ndarray  # (q2,) factor of each remaining level (L's order)
    fstart: np.ndarray  # (k + 1,) remaining levels of factor j: members[fstart[j]:fstart[j + 1]]
    members: np.ndarray
    tau: np.ndarray  # (k,) below this variance ratio, a factor's trace is summed explicitly
    u: Indices
    dense: int  # columns from this one on are full to the last row (a dense trailing block)
    big: int
    p: int
    nu: float
    reml: bool


# -- symbolic analysis ---------------------------------------------------------------


@nb.njit(cache=True)
def _eliminate(adj, n_free, limit):  # noqa: C901 (one compiled loop nest, as in _dense_kernel)
    """Minimum-degree elimination of the first ``n_free`` nodes, then the rest in order.

    ``adj`` (dense, symmetric, no diagonal) is filled in place. Returns the order
    and the number of off-diagonal entries of ``L``, or an empty order once that
    exceeds ``limit`` (the factor is too dense for a sparse factorisation).
    """
    m = adj.shape[0]
    deg = np.zeros(m, dtype=np.int64)
    for i in range(m):
        for j in range(m):
            if adj[i, j]:
                deg[i] += 1
    done = np.zeros(m, dtype=np.bool_)
    order = np.empty(m, dtype=np.int64)
    nbrs = np.empty(m, dtype=np.int64)
    fill = 0
    for step in range(m):
        v = step
        if step < n_free:  # the free node of least degree (lowest index on ties)
            v, best = -1, m + 1
            for i in range(n_free):
                if not done[i] and deg[i] < best:
                    v, best = i, deg[i]
        order[step] = v
        done[v] = True
        n = 0
        for u in range(m):
            if adj[v, u] and not done[u]:
                nbrs[n] = u
                n += 1
        fill += n
        if fill > limit:
            return np.empty(0, dtype=np.int64), fill
        for a in range(n):
            ua = nbrs[a]
            adj[ua, v] = False
            for b in range(n):
                ub = nbrs[b]
                if a != b and not adj[ua, ub]:
                    adj[ua, ub] = True
                    deg[ua] += 1
            deg[ua] -= 1
    return order, fill


@nb.njit(cache=True)
def symbolic(adj, order):
    """Pattern of ``L`` by columns for the elimination ``order`` of the graph ``adj``.

    ``adj`` is permuted to that order first. Returns (Lp, Li).
    """
    m = adj.shape[0]
    A = np.zeros((m, m), dtype=np.bool_)
    for i in range(m):
        for j in range(m):
            A[i, j] = adj[order[i], order[j]]
    count = 0
    Lp = np.zeros(m + 1, dtype=np.int64)
    rows = np.empty(m, dtype=np.int64)
    Li_all = np.empty(0, dtype=np.int64)
    parts = []
    for j in range(m):
        n = 0
        for i in range(j + 1, m):
            if A[i, j]:
                rows[n] = i
                n += 1
        for a in range(n):
            for b in range(a + 1, n):
                A[rows[b], rows[a]] = True
        col = np.empty(n + 1, dtype=np.int64)
        col[0] = j
        col[1:] = rows[:n]
        parts.append(col)
        count += n + 1
        Lp[j + 1] = count
    Li_all = np.empty(count, dtype=np.int64)
    for j in range(m):
        Li_all[Lp[j] : Lp[j + 1]] = parts[j]
    return Lp, Li_all


@nb.njit(cache=True)
def _find(Lp, Li, i, j):
    """Position of entry ``(i, j)``, ``i >= j``, in ``L``'s storage (-1 if not there)."""
    lo, hi = Lp[j], Lp[j + 1]
    while lo < hi:
        mid = (lo + hi) // 2
        if Li[mid] < i:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < Lp[j + 1] and Li[lo] == i else -1


@nb.njit(cache=True)
def _positions(Lp, Li, rows, cols):
    """Positions of the entries ``(rows[e], cols[e])``, ``rows >= cols``, in ``L``'s storage."""
    out = np.empty(rows.shape[0], dtype=np.int64)
    for e in range(rows.shape[0]):
        out[e] = _find(Lp, Li, rows[e], cols[e])
    return out


@nb.njit(cache=True)
def _row_pattern(Lp, Li, m):
    """The pattern of ``L`` by rows, left of the diagonal: (Rp, Rc, Rpos)."""
    Rp = np.zeros(m + 1, dtype=np.int64)
    for j in range(m):
        for t in range(Lp[j] + 1, Lp[j + 1]):
            Rp[Li[t] + 1] += 1
    for i in range(m):
        Rp[i + 1] += Rp[i]
    fill = Rp[:-1].copy()
    Rc = np.empty(Rp[m], dtype=np.int64)
    Rpos = np.empty(Rp[m], dtype=np.int64)
    for j in range(m):  # columns in order: each row's columns ascend
        for t in range(Lp[j] + 1, Lp[j + 1]):
            i = Li[t]
            Rc[fill[i]] = j
            Rpos[fill[i]] = t
            fill[i] += 1
    return Rp, Rc, Rpos


@nb.njit(cache=True)
def _row_pairs(Ep, Ei, Ex, Lp, Li):
    """Each row's products ``E_li E_lj`` (``i >= j``) and their positions in ``L``'s storage.

    ``E'E`` is on ``L``'s pattern (it is part of the graph of ``S``). Returns (Pp, Ppos, Pval).
    """
    q1 = Ep.shape[0] - 1
    Pp = np.zeros(q1 + 1, dtype=np.int64)
    for lv in range(q1):
        r = Ep[lv + 1] - Ep[lv]
        Pp[lv + 1] = Pp[lv] + r * (r + 1) // 2
    Ppos = np.empty(Pp[q1], dtype=np.int64)
    Pval = np.empty(Pp[q1])
    for lv in range(q1):
        n = Pp[lv]
        for a in range(Ep[lv], Ep[lv + 1]):  # column Ei[a], rows from it on
            for b in range(a, Ep[lv + 1]):
                Ppos[n] = _find(Lp, Li, Ei[b], Ei[a])
                Pval[n] = Ex[a] * Ex[b]
                n += 1
    return Pp, Ppos, Pval


def columns(Ep: np.ndarray, Ei: np.ndarray, Ex: np.ndarray, m2: int):
    """``E`` by columns, each entry with its position in the rows' storage."""
    rows = np.repeat(np.arange(len(Ep) - 1), np.diff(Ep))
    order = np.lexsort((rows, Ei))  # by column, then row
    Cp = np.concatenate([[0], np.cumsum(np.bincount(Ei, minlength=m2))]).astype(np.int64)
    return Cp, rows[order].astype(np.int64), Ex[order], order.astype(np.int64)


def analyse(adj: np.ndarray, n_free: int, max_fill: float):
    """A fill-reducing order and the pattern of ``L``, or ``None`` where ``L`` is dense.

    Dense: more than ``max_fill`` of its strict lower triangle is structurally
    non-zero under minimum degree. The better (fewer entries of ``L``) of minimum
    degree and the given order is taken; the last ``len(adj) - n_free`` nodes stay
    last.
    """
    m = adj.shape[0]
    md, fill_md = _eliminate(adj.copy(), n_free, int(max_fill * m * (m - 1) / 2))
    if not len(md):  # the given order is rarely better: not worth a second count
        return None
    natural, _ = _eliminate(adj.copy(), 0, fill_md - 1)  # stops once no better
    order = natural if len(natural) else md
    Lp, Li = symbolic(adj, order)
    return order, Lp, Li


def build_design(
    d, E, G22, adj_order, Lp, Li, zy_idx1, zy_idx2, rest_factor, tau, big, p, nu, reml
) -> SparseDesign:
    """The kernel's constants from the design in natural order and the analysis.

    ``E`` (CSR, ``q1 x m2``) and ``G22`` (dense or sparse, ``m2 x m2``) in natural
    order; ``adj_order`` maps L's order to it.
    """
    import scipy.sparse as sp

    m2 = len(adj_order)
    q2 = m2 - p
    inv = np.empty(m2, dtype=np.int64)
    inv[adj_order] = np.arange(m2)
    Ec = sp.csr_matrix(E)
    Ec.sort_indices()
    Ei = inv[Ec.indices].astype(np.int64)
    Ep = Ec.indptr.astype(np.int64)
    Ex = Ec.data.astype(float)
    o = np.lexsort((Ei, np.repeat(np.arange(len(Ep) - 1), np.diff(Ep))))
    Ei, Ex = Ei[o], Ex[o]  # each row's columns ascending in L's order
    Rp, Rc, Rpos = _row_pattern(Lp, Li, m2)
    Gc = sp.coo_matrix(G22)
    i, j = inv[Gc.row], inv[Gc.col]
    G = np.zeros(len(Li))
    G[_positions(Lp, Li, i[i >= j], j[i >= j])] = Gc.data[i >= j]
    Pp, Ppos, Pval = _row_pairs(Ep, Ei, Ex, Lp, Li)
    rf = rest_factor[adj_order[:q2]]
    k = len(tau)
    lim = m2 if reml else q2
    column = np.repeat(np.arange(m2), np.diff(Lp))
    Lend = Lp[1:] - np.bincount(column[Li >= lim], minlength=m2)  # rows ascend
    partial = np.flatnonzero(np.diff(Lp) < m2 - np.arange(m2))
    index = (Lp, Li, Rp, Rc, Rpos, Lend, Ep, Ei, Pp, Ppos)
    unsigned = Indices(*(a.astype(np.uint64) for a in index))
    members = np.argsort(rf, kind="stable").astype(np.int64)
    fstart = np.searchsorted(rf[members], np.arange(k + 1)).astype(np.int64)
    return SparseDesign(
        d=np.ascontiguousarray(d, dtype=float),
        Ep=Ep,
        Ei=Ei,
        Ex=Ex,
        Lp=Lp,
        Li=Li,
        Rp=Rp,
        Rc=Rc,
        Rpos=Rpos,
        G=G,
        Pp=Pp,
        Ppos=Ppos,
        Pval=Pval,
        zy_col=np.concatenate([zy_idx1, zy_idx2[adj_order[:q2]]]).astype(np.int64),
        rest_factor=rf.astype(np.int64),
        fstart=fstart,
        members=members,
        tau=np.ascontiguousarray(tau, dtype=float),
        u=unsigned,
        dense=int(partial[-1] + 1) if len(partial) else 0,
        big=int(big),
        p=int(p),
        nu=float(nu),
        reml=bool(reml),
    )


# -- numeric factorisation -------------------------------------------------------------


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _weighted_gram(dz, weight, K):
    """``K = E' diag(weight) E`` on ``L``'s positions.

    Row by row, each row's products scaled and added at their positions: no index
    search, and each entry's sum runs over the rows in order.
    """
    Pp, Ppos = dz.u.Pp, dz.u.Ppos
    K[:] = 0.0
    for lv in range(Pp.shape[0] - 1):
        f = weight[lv]
        for t in range(Pp[lv], Pp[lv + 1]):
            K[Ppos[t]] += f * dz.Pval[t]


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _weighted_inner(dz, weight, T):
    """``<T, E' diag(weight) E>`` over ``L``'s positions (``T`` holds each pair's weight)."""
    Pp, Ppos = dz.u.Pp, dz.u.Ppos
    total = 0.0
    for lv in range(Pp.shape[0] - 1):
        acc = 0.0
        for t in range(Pp[lv], Pp[lv + 1]):
            acc += dz.Pval[t] * T[Ppos[t]]
        total += weight[lv] * acc
    return total


class _Work(NamedTuple):
    gamma: np.ndarray  # (k,) where the factorisation was made (NaN: none)
    ok: np.ndarray  # (1,) whether it exists
    logdet: np.ndarray  # (2,) log|V|, log|X'V^-1 X|
    w: np.ndarray  # (q1,) 1 / (1 + gamma_1 d)
    s: np.ndarray  # (m2,)
    N: np.ndarray  # (nnz,) N on L's positions
    L: np.ndarray  # (nnz,)
    Z: np.ndarray  # (nnz,) selected inverse
    K: np.ndarray  # (nnz,) E' diag(weight) E
    x: np.ndarray  # (m2,) scratch
    y: np.ndarray  # (m2,) scratch
    z: np.ndarray  # (m2,) scratch
    acc: np.ndarray  # (m2,) accumulator, 0 between uses
    c: np.ndarray  # (m2,) L^-1 rhs of the gene solved last
    b1: np.ndarray  # (q1,) the gene's Z_1'y
    b2: np.ndarray  # (m2,) its [Z_R'y, X'y]
    u1: np.ndarray  # (q1,) u = Z'Py, eliminated part
    uR: np.ndarray  # (m2,) remaining part
    v1: np.ndarray  # (q1,) scratch
    vR: np.ndarray  # (m2,) scratch
    uu: np.ndarray  # (k,) |u_j|^2 of each factor's part u_j
    F: np.ndarray  # (k, m2) F u_j (see derivatives)
    Fc: np.ndarray  # (k, m2) L^-1 (s * F u_j)


@nb.njit(cache=True)
def workspace(dz, k):
    """Scratch arrays of one batch."""
    q1 = dz.d.shape[0]
    m2 = dz.Lp.shape[0] - 1
    nnz = dz.Li.shape[0]
    return _Work(
        np.full(k, np.nan),
        np.zeros(1, dtype=np.bool_),
        np.zeros(2),
        np.empty(q1),
        np.empty(m2),
        np.empty(nnz),
        np.empty(nnz),
        np.empty(nnz),
        np.empty(nnz),
        np.zeros(m2),
        np.zeros(m2),
        np.zeros(m2),
        np.zeros(m2),
        np.zeros(m2),
        np.empty(q1),
        np.empty(m2),
        np.empty(q1),
        np.empty(m2),
        np.empty(q1),
        np.empty(m2),
        np.empty(k),
        np.empty((k, m2)),
        np.empty((k, m2)),
    )


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _cholesky(u, dense, L, x):
    """Left-looking Cholesky factorisation in place of ``L`` (holding ``S``; pattern ``u``).

    Columns from ``dense`` on are full below the diagonal: there the update is a
    contiguous (vectorised) loop. Returns False where ``S`` is not positive definite.
    """
    Lp, Li, Rp, Rc, Rpos = u.Lp, u.Li, u.Rp, u.Rc, u.Rpos
    m2 = Lp.shape[0] - 1
    for j in range(m2):
        for t in range(Lp[j], Lp[j + 1]):
            x[Li[t]] = L[t]
        for r in range(Rp[j], Rp[j + 1]):
            k, pos = Rc[r], Rpos[r]
            ljk = L[pos]
            if k >= dense:  # rows j, j + 1, ... at pos, pos + 1, ...
                for o in range(Lp[k + 1] - pos):
                    x[j + o] -= L[pos + o] * ljk
                continue
            for t in range(pos, Lp[k + 1]):
                x[Li[t]] -= L[t] * ljk
        diag = x[j]
        if not diag > 0.0:
            return False
        ljj = math.sqrt(diag)
        L[Lp[j]] = ljj
        inv = 1.0 / ljj
        for t in range(Lp[j] + 1, Lp[j + 1]):
            L[t] = x[Li[t]] * inv
    return True


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def factor(gamma, dz, w):  # noqa: C901 (one compiled loop nest, as in _dense_kernel)
    """Factorise ``S`` at ``gamma`` into ``w`` (kept while ``gamma`` is unchanged).

    Returns whether it exists.
    """
    same = True
    for j in range(gamma.shape[0]):
        if not w.gamma[j] == gamma[j]:
            same = False
    if same:
        return w.ok[0]
    w.gamma[:] = gamma
    d, Lp, Li = dz.d, dz.u.Lp, dz.u.Li
    q1 = d.shape[0]
    m2 = Lp.shape[0] - 1
    q2 = m2 - dz.p
    g1 = gamma[dz.big]
    logdet_v = 0.0
    for lv in range(q1):
        w.w[lv] = 1.0 / (1.0 + g1 * d[lv])
        logdet_v -= math.log(w.w[lv])
    for i in range(m2):
        w.s[i] = math.sqrt(gamma[dz.rest_factor[i]]) if i < q2 else 1.0
    N, L, s = w.N, w.L, w.s
    _weighted_gram(dz, w.w, w.K)
    for t in range(N.shape[0]):
        N[t] = dz.G[t] - g1 * w.K[t]
    for j in range(m2):
        for t in range(Lp[j], Lp[j + 1]):
            L[t] = s[Li[t]] * s[j] * N[t]
        if j < q2:
            L[Lp[j]] += 1.0
    w.ok[0] = _cholesky(dz.u, dz.dense, L, w.x)
    if not w.ok[0]:
        return False
    logdet_x = 0.0
    for j in range(m2):
        if j < q2:
            logdet_v += 2.0 * math.log(L[Lp[j]])
        else:
            logdet_x += 2.0 * math.log(L[Lp[j]])
    w.logdet[0] = logdet_v
    w.logdet[1] = logdet_x
    return True


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _forward(u, dense, L, c, start):
    """``c = L^-1 c`` in place, for a ``c`` that is 0 before index ``start``.

    Pattern ``u``, full below the diagonal from column ``dense`` on (contiguous loops).
    """
    Lp, Li = u.Lp, u.Li
    m2 = Lp.shape[0] - 1
    for j in range(start, m2):
        cj = c[j]
        if cj == 0.0:
            continue
        cj /= L[Lp[j]]
        c[j] = cj
        if j >= dense:
            for o in range(Lp[j + 1] - Lp[j] - 1):
                c[j + 1 + o] -= L[Lp[j] + 1 + o] * cj
            continue
        for t in range(Lp[j] + 1, Lp[j + 1]):
            c[Li[t]] -= L[t] * cj


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _backward(Lp, Li, L, c, x):
    """``x = L'^-1 c``."""
    m2 = Lp.shape[0] - 1
    for j in range(m2 - 1, -1, -1):
        acc = c[j]
        for t in range(Lp[j] + 1, Lp[j + 1]):
            acc -= L[t] * x[Li[t]]
        x[j] = acc / L[Lp[j]]


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _gene(zy, xy, dz, w):
    """Load a gene's ``Z_1'y`` into ``w.b1`` and ``[Z_R'y, X'y]`` (L's order) into ``w.b2``."""
    q1 = dz.d.shape[0]
    m2 = dz.Lp.shape[0] - 1
    q2 = m2 - dz.p
    for lv in range(q1):
        w.b1[lv] = zy[dz.zy_col[lv]]
    for i in range(q2):
        w.b2[i] = zy[dz.zy_col[q1 + i]]
    for x in range(dz.p):
        w.b2[q2 + x] = xy[x]


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _reduced_rhs(g1, inv_a, b1, b2, ss, dz, out):
    """``out = b2 - g1 E' (b1 / a)``; returns ``y'y - g1 b1' (b1 / a)``."""
    q1 = dz.d.shape[0]
    out[:] = b2
    yy = ss
    for lv in range(q1):
        z = b1[lv] * inv_a[lv]
        yy -= g1 * b1[lv] * z
        f = g1 * z
        for t in range(dz.u.Ep[lv], dz.u.Ep[lv + 1]):
            out[dz.u.Ei[t]] -= f * dz.Ex[t]
    return yy


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _criterion(logdet_v, logdet_x, r2, dz):
    if not r2 > 0.0:
        return np.nan
    logdet = logdet_v + logdet_x if dz.reml else logdet_v
    return logdet + dz.nu * (1.0 + _LOG_2PI + math.log(r2 / dz.nu))


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def solve(gamma, ss, dz, w):
    """The gene in ``w.b1``, ``w.b2``: criterion and ``r2`` at ``gamma`` (``c`` in ``w``).

    NaN where the factorisation does not exist or no residual is left.
    """
    if not factor(gamma, dz, w):
        return np.nan, np.nan
    yy = _reduced_rhs(gamma[dz.big], w.w, w.b1, w.b2, ss, dz, w.c)
    c = w.c
    for i in range(c.shape[0]):
        c[i] *= w.s[i]
    _forward(dz.u, dz.dense, w.L, c, np.int64(0))
    r2 = yy
    for i in range(c.shape[0]):
        r2 -= c[i] * c[i]
    f = _criterion(w.logdet[0], w.logdet[1], r2, dz)
    if not np.isfinite(f):
        return np.nan, np.nan
    return f, r2


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def fixed_effects(dz, w, beta):
    """Fixed effects (centred X) from the last solve: the last ``p`` of ``L'^-1 c``.

    The fixed effects come last, so back substitution stops after them.
    """
    Lp, Li, L, c, x = dz.Lp, dz.Li, w.L, w.c, w.x
    m2 = Lp.shape[0] - 1
    q2 = m2 - dz.p
    for j in range(m2 - 1, q2 - 1, -1):
        acc = c[j]
        for t in range(Lp[j] + 1, Lp[j + 1]):
            acc -= L[t] * x[Li[t]]
        x[j] = acc / L[Lp[j]]
    for i in range(dz.p):
        beta[i] = x[q2 + i]


# -- derivatives ------------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _selected_inverse(dz, w):
    """Entries of ``S_lim^-1`` on ``L``'s pattern into ``w.Z`` (Takahashi's recurrences).

    ``S_lim`` is the leading ``lim x lim`` block of ``S`` (all of it for REML, the
    levels for ML); entries outside it are 0. Column ``j`` from the columns after
    it: ``Z_ij = -(sum_k L_kj Z_ik) / L_jj`` over ``k`` in the pattern of column
    ``j``, which is a clique of the filled graph, so every ``Z_ik`` is on the pattern.
    """
    Lp, Li, end = dz.u.Lp, dz.u.Li, dz.u.Lend
    L, Z, acc, lj = w.L, w.Z, w.x, w.acc
    lim = Lp.shape[0] - 1 if dz.reml else Lp.shape[0] - 1 - dz.p
    for t in range(Li.shape[0]):
        Z[t] = 0.0
    for j in range(lim - 1, -1, -1):
        ljj = L[Lp[j]]
        hi = end[j]
        for t in range(Lp[j] + 1, hi):
            acc[Li[t]] = 0.0
            lj[Li[t]] = L[t]  # 0 off the pattern of column j: adds nothing below
        for tk in range(Lp[j] + 1, hi):
            k = Li[tk]
            lkj = L[tk]
            a = acc[k] + lkj * Z[Lp[k]]
            for t in range(Lp[k] + 1, end[k]):
                i = Li[t]
                acc[i] += lkj * Z[t]  # Z_ik with i > k (rows off column j's pattern unused)
                a += lj[i] * Z[t]  # Z_ki = Z_ik for row k
            acc[k] = a
        diag = 1.0 / ljj
        for t in range(Lp[j] + 1, hi):
            zij = -acc[Li[t]] / ljj
            Z[t] = zij
            diag -= L[t] * zij
        Z[Lp[j]] = diag / ljj
        for t in range(Lp[j] + 1, hi):
            lj[Li[t]] = 0.0


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _n_product(dz, N, v, out):
    """``out = N v`` (``N`` symmetric, its lower triangle on ``L``'s positions)."""
    Lp, Li = dz.u.Lp, dz.u.Li
    m2 = Lp.shape[0] - 1
    out[:] = 0.0
    for j in range(m2):
        vj = v[j]
        acc = N[Lp[j]] * vj
        for t in range(Lp[j] + 1, Lp[j + 1]):
            i = Li[t]
            out[i] += N[t] * vj
            acc += N[t] * v[i]
        out[j] += acc


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _explicit_trace(dz, w, j, lim):
    """``sum_l N_ll - |L_lim^-1 (s * N[:, l])_lim|^2`` over the levels ``l`` of factor ``j``.

    The trace of ``M_jj`` (ML) or ``Q_jj`` (REML) without dividing by ``gamma_j``, for
    ratios near 0 (a sparse solve per level).
    """
    Lp, Li, Rp, Rc, Rpos = dz.Lp, dz.Li, dz.Rp, dz.Rc, dz.Rpos
    N, s, v = w.N, w.s, w.z
    m2 = Lp.shape[0] - 1
    total = 0.0
    v[:] = 0.0
    for m in range(dz.fstart[j], dz.fstart[j + 1]):
        lv = dz.members[m]
        start = lv
        for r in range(Rp[lv], Rp[lv + 1]):  # row lv, left of the diagonal
            v[Rc[r]] = s[Rc[r]] * N[Rpos[r]]
            start = min(start, Rc[r])
        for t in range(Lp[lv], Lp[lv + 1]):
            v[Li[t]] = s[Li[t]] * N[t]
        _forward(dz.u, dz.dense, w.L, v, start)
        acc = N[Lp[lv]]
        for i in range(start, m2):
            if i < lim:
                acc -= v[i] * v[i]
            v[i] = 0.0
        total += acc
    return total


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _traces(gamma, dz, w, tr):
    """``tr M_jj`` (ML) or ``tr Q_jj`` (REML) of every factor: ``d log|V| / d gamma_j``.

    For the eliminated factor ``sum_l d_l w_l - <s s' * Z, E' diag(w^2) E>``; for a
    remaining factor ``sum_l (1 - Z_ll) / gamma_j`` (``Lambda M Lambda = I - S^-1``
    on its levels), or the explicit sum near ``gamma_j = 0``.
    """
    m2 = dz.Lp.shape[0] - 1
    q2 = m2 - dz.p
    lim = m2 if dz.reml else q2
    _selected_inverse(dz, w)
    q1 = dz.d.shape[0]
    Lp, Li, s, Z, T = dz.u.Lp, dz.u.Li, w.s, w.Z, w.K
    w2 = w.v1
    acc = 0.0
    for lv in range(q1):
        w2[lv] = w.w[lv] * w.w[lv]
        acc += dz.d[lv] * w.w[lv]
    for j in range(m2):  # s s' * Z, off-diagonal entries twice (both triangles)
        T[Lp[j]] = s[j] * s[j] * Z[Lp[j]]
        for t in range(Lp[j] + 1, Lp[j + 1]):
            T[t] = 2.0 * s[Li[t]] * s[j] * Z[t]
    acc -= _weighted_inner(dz, w2, T)
    k = gamma.shape[0]
    for j in range(k):
        if j == dz.big:
            tr[j] = acc
        elif gamma[j] >= dz.tau[j]:
            t = 0.0
            for m in range(dz.fstart[j], dz.fstart[j + 1]):
                t += 1.0 - Z[dz.Lp[dz.members[m]]]
            tr[j] = t / gamma[j]
        else:
            tr[j] = _explicit_trace(dz, w, j, lim)


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _residual_vector(gamma, dz, w):
    """``u = Z'Py`` of the gene solved last, into ``w.u1`` and ``w.uR``."""
    q1 = dz.d.shape[0]
    m2 = dz.Lp.shape[0] - 1
    g1 = gamma[dz.big]
    xs, sc = w.x, w.y
    _backward(dz.u.Lp, dz.u.Li, w.L, w.c, xs)
    for i in range(m2):
        sc[i] = w.s[i] * xs[i]
    _n_product(dz, w.N, sc, w.uR)
    for i in range(m2):
        w.uR[i] = w.b2[i] - w.uR[i]
    for lv in range(q1):
        wb = w.w[lv] * w.b1[lv]
        acc = 0.0
        for t in range(dz.u.Ep[lv], dz.u.Ep[lv + 1]):
            acc += dz.Ex[t] * sc[dz.u.Ei[t]]
            w.uR[dz.u.Ei[t]] -= g1 * dz.Ex[t] * wb
        w.u1[lv] = wb - w.w[lv] * acc


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _f_product(dz, w, j, out):
    """``out = F v = [E' diag(w), N[:, R]] v`` of ``v = u`` on factor ``j``'s levels.

    ``s * out`` is ``F~ v`` (:mod:`scvarpart.lmm.dense`), and its first ``q2`` entries
    are ``C~ v`` on the remaining levels. Returns ``|v|^2``.
    """
    uu = 0.0
    if j == dz.big:
        out[:] = 0.0
        for lv in range(dz.d.shape[0]):
            f = w.w[lv] * w.u1[lv]
            uu += w.u1[lv] * w.u1[lv]
            for t in range(dz.u.Ep[lv], dz.u.Ep[lv + 1]):
                out[dz.u.Ei[t]] += dz.Ex[t] * f
        return uu
    vR = w.vR
    vR[:] = 0.0
    for m in range(dz.fstart[j], dz.fstart[j + 1]):
        lv = dz.members[m]
        vR[lv] = w.uR[lv]
        uu += vR[lv] * vR[lv]
    _n_product(dz, w.N, vR, out)
    return uu


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _level_product(dz, w, i, j):
    """``v_i' C~ v_j`` (``v_i = u`` on factor ``i``'s levels), from ``w.F[j] = C~ v_j``.

    On the eliminated levels ``C~ = diag(w d)``, where only ``i = j`` meets; any pair
    with it is taken from the other side.
    """
    total = 0.0
    if i == dz.big and j == i:
        for lv in range(dz.d.shape[0]):
            total += w.w[lv] * dz.d[lv] * w.u1[lv] * w.u1[lv]
        return total
    if i == dz.big:
        i, j = j, i
    for m in range(dz.fstart[i], dz.fstart[i + 1]):
        lv = dz.members[m]
        total += w.uR[lv] * w.F[j, lv]
    return total


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def derivatives(gamma, dz, w, r2, grad, hess):
    """Exact gradient and average information in ``gamma`` of the gene solved last.

    Average information: ``nu (u_i' Q_ij u_j / r2 - |u_i|^2 |u_j|^2 / r2^2)`` with
    ``u_i' Q_ij u_j = v_i' C~ v_j - c_i' c_j`` (``v_j = u`` on factor ``j``'s levels, 0
    elsewhere; ``c_j = W v_j = L^-1 (s * F v_j)``, :mod:`scvarpart.lmm.blocked`): a
    forward solve per factor.
    """
    k = gamma.shape[0]
    nu = dz.nu
    _traces(gamma, dz, w, grad)
    _residual_vector(gamma, dz, w)
    uu, F, c = w.uu, w.F, w.Fc
    for j in range(k):
        uu[j] = _f_product(dz, w, j, F[j])
        grad[j] -= nu * uu[j] / r2
        for i in range(c.shape[1]):
            c[j, i] = w.s[i] * F[j, i]
        _forward(dz.u, dz.dense, w.L, c[j], np.int64(0))
    for i in range(k):
        for j in range(i + 1):
            cc = 0.0
            for m in range(c.shape[1]):
                cc += c[i, m] * c[j, m]
            a = 0.5 * (_level_product(dz, w, i, j) + _level_product(dz, w, j, i))
            h = nu * ((a - cc) / r2 - uu[i] * uu[j] / (r2 * r2))
            hess[i, j] = h
            hess[j, i] = h


# -- Newton's method and the global search ------------------------------------------------


@nb.njit(cache=True, nogil=True, inline="always")
def _value_and_derivatives(x, ss, dz, w, grad, hess):
    """Criterion with gradient and average information; NaN if any is not finite."""
    f, r2 = solve(x, ss, dz, w)
    if not np.isfinite(f):
        return f
    return _derivatives_at(x, dz, w, f, r2, grad, hess)


@nb.njit(cache=True, nogil=True, inline="always")
def _derivatives_at(x, dz, w, f, r2, grad, hess):
    derivatives(x, dz, w, r2, grad, hess)
    if not (np.all(np.isfinite(grad)) and np.all(np.isfinite(hess))):
        return np.nan
    return f


@nb.njit(cache=True, nogil=True)
def minimise_gene(x, ss, dz, w, opt, grad, hess, known, n_known, held, f0=np.nan):
    """Projected Newton from ``x`` (updated in place) for the gene loaded in ``w``.

    The method of :func:`scvarpart.lmm.newton._minimise_gene` (``held``: a coordinate
    held at 0, or -1), with this engine's evaluations. A finite ``f0`` is the criterion
    at ``x``, where ``grad`` and ``hess`` already are its derivatives (a descent of the
    same gene ended there: the release of a face's optimum). Returns (criterion,
    converged, iterations, abandoned, whether ``grad`` and ``hess`` are those at ``x``).
    """
    k = x.shape[0]
    f = f0 if np.isfinite(f0) else _value_and_derivatives(x, ss, dz, w, grad, hess)
    if not np.isfinite(f):
        return f, False, 0, False, False
    logc = np.empty(k, dtype=np.bool_)
    bound = np.empty(k, dtype=np.bool_)
    trial = np.empty(k)
    for it in range(opt.max_iter):
        pending_bound = _active_set(x, grad, opt, logc, bound, held)
        step, decrement, positive = _newton_step(x, grad, hess, logc, bound)
        if positive and decrement < opt.tol and not pending_bound:
            return f, True, it, False, True
        t = _step_length(x, grad, hess, step, logc, bound, opt, held)
        accepted = False
        ft = r2t = np.nan
        while t > _MIN_STEP:
            predicted = _trial_point(x, grad, step, t, logc, opt, trial)
            ft, r2t = solve(trial, ss, dz, w)
            if _sufficient_decrease(f, ft, predicted):
                accepted = True
                break
            t *= 0.5
        if not accepted:
            return f, positive and decrement < opt.stall_tol, it + 1, False, True
        final = _final_step(x, trial, t, positive, decrement, pending_bound, opt)
        x[:] = trial
        f = ft
        if final:
            return f, True, it + 1, False, False
        for m in range(n_known):
            if _near(x, known[m], opt.threshold):
                return f, False, it + 1, True, False
        f = _derivatives_at(x, dz, w, ft, r2t, grad, hess)
        if not np.isfinite(f):
            return f, False, it + 1, False, False
    return f, False, opt.max_iter, False, True


class GridFactors(NamedTuple):
    """The factorisation of ``S`` at every grid point, shared by every gene."""

    gamma: np.ndarray  # (N, k)
    logdet: np.ndarray  # (N,) log|V| (ML) or log|V| + log|X'V^-1X| (REML); NaN if singular
    L: np.ndarray  # (N, nnz)
    s: np.ndarray  # (N, m2)
    g1: np.ndarray  # (T,) distinct ratios of the eliminated factor
    inv_a: np.ndarray  # (T, q1)
    t_ptr: np.ndarray  # (T + 1,) points of ratio g1[t]: by_g1[t_ptr[t]:t_ptr[t + 1]]
    by_g1: np.ndarray
    face: np.ndarray
    edge: np.ndarray
    nb_ptr: np.ndarray
    nb_idx: np.ndarray


@nb.njit(cache=True, nogil=True)
def factor_points(gamma, dz):
    """Factorise ``S`` at every row of ``gamma``: (logdet, L, s)."""
    n, k = gamma.shape
    w = workspace(dz, k)
    logdet = np.full(n, np.nan)
    L = np.zeros((n, dz.Li.shape[0]))
    s = np.zeros((n, dz.Lp.shape[0] - 1))
    for i in range(n):
        if factor(gamma[i], dz, w):
            logdet[i] = w.logdet[0] + w.logdet[1] if dz.reml else w.logdet[0]
            L[i] = w.L
            s[i] = w.s
    return logdet, L, s


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _screen(gf, ss, dz, w, values):
    """The criterion of the gene loaded in ``w`` at every grid point (+inf where none)."""
    nu = dz.nu
    const = nu * (1.0 + _LOG_2PI - math.log(nu))
    base, c = w.vR, w.c
    m2 = c.shape[0]
    for t in range(gf.g1.shape[0]):
        yy = _reduced_rhs(gf.g1[t], gf.inv_a[t], w.b1, w.b2, ss, dz, base)
        for pi in range(gf.t_ptr[t], gf.t_ptr[t + 1]):
            p = gf.by_g1[pi]
            ld = gf.logdet[p]
            values[p] = np.inf
            if not np.isfinite(ld):
                continue
            s = gf.s[p]
            for i in range(m2):
                c[i] = s[i] * base[i]
            _forward(dz.u, dz.dense, gf.L[p], c, np.int64(0))
            r2 = yy
            for i in range(m2):
                r2 -= c[i] * c[i]
            if r2 > 0.0:
                values[p] = ld + const + nu * math.log(r2)


@nb.njit(cache=True, nogil=True, inline="always")
def _search_gene(gf, ss, dz, w, opt, grad, hess, values, x, f_moment, trial, bound, known, at_x):
    """Global search for the gene loaded in ``w`` (as :func:`.search._search_gene`).

    The optimum is written into ``x``, and where the descent that found it ended with
    them, the gradient and average information there into ``at_x`` (gradient, then
    the matrix). Returns (converged, iterations, descents, whether ``at_x`` is set).
    """
    _screen(gf, ss, dz, w, values)
    i0 = int(np.argmin(values))
    # the grid point the first descent starts from (-1: the moment estimate, which
    # leaves the grid's best point a candidate: the two may lie in different basins)
    first = -1
    if not (f_moment <= values[i0]):
        if not np.isfinite(values[i0]):
            x[:] = np.nan
            return False, 0, 0, False
        x[:] = gf.gamma[i0]
        first = i0
    best, converged, n_iter, _, fresh = minimise_gene(
        x, ss, dz, w, opt, grad, hess, known, np.int64(0), np.int64(-1), np.nan
    )
    if not np.isfinite(best):
        best = np.inf
    held = fresh and _hold(grad, hess, at_x)
    descents = 1
    known[0] = x
    n_known = np.int64(1)
    no = np.bool_(False)
    candidate_bounds(gf.face, gf.edge, gf.nb_ptr, gf.nb_idx, values, first, no, bound)
    for i in np.argsort(bound, kind="mergesort"):
        if descents > MAX_EXTRA_STARTS or bound[i] == np.inf:
            break
        if not bound[i] < best:
            continue
        trial[:] = gf.gamma[i]
        best, converged, held, n_known, it = _further_descent(
            trial, x, best, converged, held, ss, dz, w, opt, grad, hess, known, n_known, at_x,
            np.nan,
        )  # fmt: skip
        n_iter += it
        descents += 1
    # the faces next to the optimum, each descended on, then left (:func:`.search._swap_faces`)
    centre = x.copy()
    starts = swap_starts(centre)
    faces, face_of, near = face_buffers(starts, known)
    hopt = held_options(opt)
    n_faces = np.int64(0)
    for s in range(starts.shape[0]):
        trial[:] = starts[s]
        face = zeroed(centre, trial)
        m = face_known(known, n_known, faces, face_of, n_faces, face, near)
        f, _, it, abandoned, fresh = minimise_gene(
            trial, ss, dz, w, hopt, grad, hess, near, m, face, np.nan
        )
        n_iter += it
        if abandoned or not np.isfinite(f):
            continue
        faces[n_faces], face_of[n_faces] = trial, face
        n_faces += 1
        f0 = f if fresh else np.nan  # the release starts from the descent's derivatives
        best, converged, held, n_known, it = _further_descent(
            trial, x, best, converged, held, ss, dz, w, opt, grad, hess, known, n_known, at_x, f0
        )
        n_iter += it
    return converged, n_iter, descents + starts.shape[0], held


@nb.njit(cache=True, nogil=True, inline="always")
def _further_descent(
    trial, x, best, converged, held, ss, dz, w, opt, grad, hess, known, n_known, at_x, f0=np.nan
):
    """A descent from ``trial`` after the first; its optimum replaces ``x`` if lower.

    ``f0``: as :func:`minimise_gene`'s. Returns (best criterion, its convergence, whether
    ``at_x`` holds its derivatives, number of optima known, iterations).
    """
    f, conv, it, abandoned, fresh = minimise_gene(
        trial, ss, dz, w, opt, grad, hess, known, n_known, np.int64(-1), f0
    )
    if abandoned or not np.isfinite(f):
        return best, converged, held, n_known, it
    known[n_known] = trial
    # an optimum reached again must not replace the earlier one by rounding
    if f < best - TIE * max(1.0, abs(best)):
        best, converged = f, conv
        x[:] = trial
        held = fresh and _hold(grad, hess, at_x)
    return best, converged, held, n_known + 1, it


@nb.njit(cache=True, nogil=True, inline="always")
def _hold(grad, hess, at_x):
    """Copy ``grad`` and ``hess`` into ``at_x`` (``k + k * k``); returns True."""
    k = grad.shape[0]
    at_x[:k] = grad
    at_x[k:] = hess.ravel()
    return True


@nb.njit(cache=True, nogil=True, inline="always")
def _derivatives_into(x, ss, dz, w, grad, hess):
    """Gradient and average information at ``x`` (unchanged where no criterion)."""
    if not np.all(np.isfinite(x)):
        return
    f, r2 = solve(x, ss, dz, w)
    if np.isfinite(f):
        derivatives(x, dz, w, r2, grad, hess)


@nb.njit(cache=True, nogil=True, inline="always")
def _estimates_at(x, ss, dz, w, dev, r2, beta, g):
    if not np.all(np.isfinite(x)):
        return
    dev[g], r2[g] = solve(x, ss, dz, w)
    if np.isfinite(dev[g]):
        fixed_effects(dz, w, beta[g])


@nb.njit(cache=True, nogil=True)
def search_batch(gf, X0, F0, ZtY, XtY, ss, dz, opt):
    """Global search for every gene of a batch, from the moment estimates ``X0`` too.

    Returns the optima, criterion, ``r2``, fixed effects, convergence flags,
    iterations, descents, and the gradient and average information at the optima
    (taken from the search where its last Newton iteration was there).
    """
    G, k = X0.shape
    N = gf.gamma.shape[0]
    w = workspace(dz, k)
    X, dev, r2, beta, converged, n_iter = batch_results(X0, dz.p)
    descents = np.zeros(G, dtype=np.int64)
    grads, hessians = np.full((G, k), np.nan), np.full((G, k, k), np.nan)
    grad = np.empty(k)
    hess = np.empty((k, k))
    values = np.empty(N)
    bound = np.empty(N)
    trial = np.empty(k)
    # the optima of the first descent, the candidates' and the swaps'
    known = np.empty((MAX_EXTRA_STARTS + 1 + k * k, k))
    at_x = np.empty(k + k * k)
    for g in range(G):
        _gene(ZtY[g], XtY[g], dz, w)
        converged[g], n_iter[g], descents[g], held = _search_gene(
            gf, ss[g], dz, w, opt, grad, hess, values, X[g], F0[g], trial, bound, known, at_x
        )
        if held:
            grads[g] = at_x[:k]
            hessians[g] = at_x[k:].reshape(k, k)
        else:
            _derivatives_into(X[g], ss[g], dz, w, grads[g], hessians[g])
        _estimates_at(X[g], ss[g], dz, w, dev, r2, beta, g)
    return X, dev, r2, beta, converged, n_iter, descents, grads, hessians


@nb.njit(cache=True, nogil=True)
def minimise_batch(X0, ZtY, XtY, ss, dz, opt):
    """Newton's method from ``X0`` only, every gene of a batch.

    Returns as :func:`search_batch`, without the descents.
    """
    G, k = X0.shape
    w = workspace(dz, k)
    X, dev, r2, beta, converged, n_iter = batch_results(X0, dz.p)
    grads, hessians = np.full((G, k), np.nan), np.full((G, k, k), np.nan)
    grad = np.empty(k)
    hess = np.empty((k, k))
    none = np.empty((0, k))
    for g in range(G):
        _gene(ZtY[g], XtY[g], dz, w)
        _, converged[g], n_iter[g], _, fresh = minimise_gene(
            X[g], ss[g], dz, w, opt, grad, hess, none, np.int64(0), np.int64(-1), np.nan
        )
        if fresh:
            grads[g], hessians[g] = grad, hess
        else:
            _derivatives_into(X[g], ss[g], dz, w, grads[g], hessians[g])
        _estimates_at(X[g], ss[g], dz, w, dev, r2, beta, g)
    return X, dev, r2, beta, converged, n_iter, grads, hessians


@nb.njit(cache=True, nogil=True)
def evaluate_batch(gammas, ZtY, XtY, ss, dz, mode):
    """Criterion (mode 0), with gradient and average information (1) or estimates (2)."""
    G, k = gammas.shape
    w = workspace(dz, k)
    dev = np.full(G, np.nan)
    r2 = np.full(G, np.nan)
    grad = np.full((G, k), np.nan)
    hess = np.full((G, k, k), np.nan)
    beta = np.full((G, dz.p), np.nan)
    for g in range(G):
        if not np.all(np.isfinite(gammas[g])):
            continue
        _gene(ZtY[g], XtY[g], dz, w)
        dev[g], r2[g] = solve(gammas[g], ss[g], dz, w)
        if not np.isfinite(dev[g]):
            continue
        if mode == 1:
            derivatives(gammas[g], dz, w, r2[g], grad[g], hess[g])
        elif mode == 2:
            fixed_effects(dz, w, beta[g])
    return dev, r2, grad, hess, beta


@nb.njit(cache=True, nogil=True)
def fixed_factors(gammas, dz):
    """Lower Cholesky factor of ``X'V^-1 X`` at each row: the trailing block of ``L``."""
    G, k = gammas.shape
    p = dz.p
    m2 = dz.Lp.shape[0] - 1
    q2 = m2 - p
    w = workspace(dz, k)
    out = np.full((G, p, p), np.nan)
    for g in range(G):
        if not np.all(np.isfinite(gammas[g])) or not factor(gammas[g], dz, w):
            continue
        out[g] = 0.0
        for j in range(q2, m2):
            for t in range(dz.Lp[j], dz.Lp[j + 1]):
                out[g, dz.Li[t] - q2, j - q2] = w.L[t]
    return out
