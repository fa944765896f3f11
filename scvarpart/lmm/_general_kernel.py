"""Compiled per-gene kernel of :class:`~scvarpart.lmm.general.GeneralDeviance`.

The mathematics is described in :mod:`scvarpart.lmm.general`; this module is its
loop-level implementation. Every function works on one gene at one ``theta``, on
matrices of the reduced size (the other terms' columns and the fixed effects, ``m2``)
and on the eliminated term's ``r x r`` blocks, one per level: the cost does not depend
on the number of observations and is linear in the eliminated term's levels.

Internal column order: the eliminated term's columns coefficient by coefficient
(column ``a * l1 + l`` is coefficient ``a`` of level ``l``), then the other terms'
columns in their own order (level by level, as
:func:`~scvarpart.lmm.terms.lambda_matrix`), then the fixed effects. Quantities of the
eliminated term are stored with the level last (``(r, r, l1)`` blocks, ``(m2, q1)``
products), so that the loops over its levels, the longest, run along contiguous
memory and are vectorised.

Fused multiply-adds only (no reassociation): a gene's result does not depend on how
its arrays happen to be aligned in memory. As in :mod:`._dense_kernel`, functions that
are one loop nest over a gene's small matrices keep their complexity (``noqa: C901``):
split up, they would make calls inside nopython loops and hide the algebra.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba as nb
import numpy as np

__all__ = [
    "DERIVATIVES",
    "DEVIANCE",
    "ESTIMATES",
    "GeneralDesign",
    "derivatives",
    "evaluate_gene",
    "factor_design",
    "factorise",
    "fixed_effects",
    "fixed_factor_gene",
    "held_at",
    "solve_gene",
    "workspace",
]

DEVIANCE, DERIVATIVES, ESTIMATES = 0, 1, 2

_FASTMATH = {"contract"}
_LOG_2PI = math.log(2 * math.pi)


class GeneralDesign(NamedTuple):
    """Design constants in the kernel's internal column order."""

    p: int
    l1: int  # levels of the eliminated term (0: none)
    r1: int  # its coefficients per level
    th1: int  # offset of its parameters in theta
    C1: np.ndarray  # (r1, r1, l1) its diagonal blocks of Z'Z
    E1t: np.ndarray  # (m2, q1) [Z_1'Z_R, Z_1'X]', column a * l1 + l
    GWW: np.ndarray  # (m2, m2) [[Z_R'Z_R, Z_R'X], [X'Z_R, X'X]]
    idx1: np.ndarray  # (q1,) column of Z of each internal column of the eliminated term
    idxR: np.ndarray  # (q2,) column of Z of each other column
    rt_col: np.ndarray  # (nR,) first column (of the q2) of each other term
    rt_lev: np.ndarray  # (nR,) its levels
    rt_r: np.ndarray  # (nR,) its coefficients per level
    rt_th: np.ndarray  # (nR,) offset of its parameters in theta
    par_slot: np.ndarray  # (k,) term of each parameter: other term j, or nR (eliminated)
    par_a: np.ndarray  # (k,) row of the parameter in its term's T
    par_b: np.ndarray  # (k,) column
    rmax: int
    nu: float  # n (ML) or n - p (REML)
    reml: bool
    log_weights: float  # sum(log w) of observation weights


class Work(NamedTuple):
    """Scratch arrays of one gene's evaluation, allocated once per batch."""

    T: np.ndarray  # (nR + 1, rmax, rmax) T of every term; slot nR: the eliminated one
    Lb: np.ndarray  # (r1, r1, l1) Cholesky factors of T'C_l T + I
    H: np.ndarray  # (r1, r1, l1) H_l = L_l^-1 T'
    HEt: np.ndarray  # (m2, q1) (H_l E_l)'
    HE: np.ndarray  # (q1, m2p) H_l E_l, columns padded with zeros to a multiple of 4
    GN: np.ndarray  # (m2p, m2p) HE' HE
    Nt: np.ndarray  # (m2, m2) [Z_R X]' V_1^-1 [Z_R X]
    NP: np.ndarray  # (m2, m2) Nt P
    L: np.ndarray  # (m2, m2) Cholesky factor of S = P' Nt P + diag(I, 0)
    z1: np.ndarray  # (q1,) Z_1'y in internal order
    hz: np.ndarray  # (q1,) H_l z_l; later z_l - E_l xhat
    wy: np.ndarray  # (m2,) [Z_R X]' V_1^-1 y
    c: np.ndarray  # (m2,) L^-1 P' wy
    sol: np.ndarray  # (m2,) L'^-1 c
    xhat: np.ndarray  # (m2,) P sol
    tmp: np.ndarray  # (m2,)
    F: np.ndarray  # (r1, r1, l1) F_l = (I + C_l T T')^-1
    K1: np.ndarray  # (r1, r1, l1) F_l C_l
    u: np.ndarray  # (q,) Z'Py
    EPt: np.ndarray  # (m2, q1) (E_1 P)'
    Y: np.ndarray  # (m2, q) L^-1 U', U = Z'V_1^-1 [Z_R X] P
    K1Rt: np.ndarray  # (q2, q1) (Z_1'V_1^-1 Z_R)'
    Q1Rt: np.ndarray  # (q2, q1) its block of M (ML) or Q (REML), transposed
    QRR: np.ndarray  # (q2, q2)
    YY: np.ndarray  # (r1, r1, l1) Y_l'Y_l
    QL: np.ndarray  # (r1, r1, l1) diagonal blocks K_l - Y_l'Y_l
    Gc: np.ndarray  # (r1, r1, m2p, m2p) sum_l Y_l[:, a] Y_l[:, c]' (a <= c)
    YT: np.ndarray  # (r1, l1, m2p) the eliminated term's columns of Y, transposed (padded)
    Rk: np.ndarray  # (k, m2, m2) sum_l Y_l A_k Y_l'
    PA: np.ndarray  # (k, r1, r1, l1) QL A_k per level
    PY: np.ndarray  # (k, r1, r1, l1) YY A_k per level
    A: np.ndarray  # (k, rmax, rmax) d(T T')/d theta_k of one level
    SQ: np.ndarray  # (nR + 1, rmax, rmax) sum over levels of the diagonal blocks of M or Q
    SU: np.ndarray  # (nR + 1, rmax, rmax) sum over levels of u_l u_l'
    V: np.ndarray  # (k, q) d Gamma_k u
    KV: np.ndarray  # (k, q) K d Gamma_k u
    YV: np.ndarray  # (k, m2) Y d Gamma_k u
    AQt: np.ndarray  # (k, q2, q1) (d Gamma_k Q1R)' (eliminated term's parameters)
    QAt: np.ndarray  # (k, q2, q1) (Q1R d Gamma_k)' (other terms' parameters)
    XR: np.ndarray  # (k, q2, q2) d Gamma_k QRR (other terms' parameters)
    sub: np.ndarray  # (k, k)
    dr2: np.ndarray  # (k,)
    held: np.ndarray  # (k + 2,) theta, criterion and r2 of the gene factorised last


@nb.njit(cache=True, nogil=True)
def workspace(dz, k):
    """Scratch arrays for a design and ``k`` parameters."""
    l1, r1, rmax = dz.l1, dz.r1, dz.rmax
    q1 = l1 * r1
    q2 = dz.idxR.shape[0]
    m2 = q2 + dz.p
    q = q1 + q2
    nR = dz.rt_col.shape[0]
    m2p = (m2 + 3) // 4 * 4  # for the 2 x 4 tiles of _gram_tiles
    return Work(
        np.zeros((nR + 1, rmax, rmax)),
        np.zeros((r1, r1, l1)),
        np.zeros((r1, r1, l1)),
        np.zeros((m2, q1)),
        np.zeros((q1, m2p)),
        np.zeros((m2p, m2p)),
        np.zeros((m2, m2)),
        np.zeros((m2, m2)),
        np.zeros((m2, m2)),
        np.zeros(q1),
        np.zeros(q1),
        np.zeros(m2),
        np.zeros(m2),
        np.zeros(m2),
        np.zeros(m2),
        np.zeros(m2),
        np.zeros((r1, r1, l1)),
        np.zeros((r1, r1, l1)),
        np.zeros(q),
        np.zeros((m2, q1)),
        np.zeros((m2, q)),
        np.zeros((q2, q1)),
        np.zeros((q2, q1)),
        np.zeros((q2, q2)),
        np.zeros((r1, r1, l1)),
        np.zeros((r1, r1, l1)),
        np.zeros((r1, r1, m2p, m2p)),
        np.zeros((r1, l1, m2p)),
        np.zeros((k, m2, m2)),
        np.zeros((k, r1, r1, l1)),
        np.zeros((k, r1, r1, l1)),
        np.zeros((k, rmax, rmax)),
        np.zeros((nR + 1, rmax, rmax)),
        np.zeros((nR + 1, rmax, rmax)),
        np.zeros((k, q)),
        np.zeros((k, q)),
        np.zeros((k, m2)),
        np.zeros((k, q2, q1)),
        np.zeros((k, q2, q1)),
        np.zeros((k, q2, q2)),
        np.zeros((k, k)),
        np.zeros(k),
        np.full(k + 2, np.nan),
    )


# -- small helpers: arrays in, arrays out (no design or workspace tuples, which make
# every function that takes them slow to compile) -------------------------------------


@nb.njit(cache=True, nogil=True)
def _fill_factor(theta, offset, r, T):
    """``T`` (lower triangular, ``r x r`` corner) from lme4's ``theta``."""
    i = offset
    for b in range(r):
        for a in range(b):
            T[a, b] = 0.0
        for a in range(b, r):
            T[a, b] = theta[i]
            i += 1


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _right_p(M, rt_col, rt_lev, rt_r, T):
    """``M = M P`` in place (``P = diag(Lambda_R, I_p)``, ``M`` with ``m2`` columns).

    In place: column ``b`` of a level's block takes columns ``a >= b`` (``T`` is lower
    triangular), which are still unchanged when columns are updated in order.
    """
    for j in range(rt_col.shape[0]):
        r = rt_r[j]
        Tj = T[j]
        for lv in range(rt_lev[j]):
            c0 = rt_col[j] + lv * r
            for i in range(M.shape[0]):
                Mi = M[i]
                for b in range(r):
                    acc = 0.0
                    for a in range(b, r):
                        acc += Mi[c0 + a] * Tj[a, b]
                    Mi[c0 + b] = acc


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _left_p(M, rt_col, rt_lev, rt_r, T):
    """``M = P' M`` in place, for a matrix with ``m2`` rows (row by row, as above)."""
    ncol = M.shape[1]
    for j in range(rt_col.shape[0]):
        r = rt_r[j]
        Tj = T[j]
        for lv in range(rt_lev[j]):
            c0 = rt_col[j] + lv * r
            for b in range(r):
                Mb = M[c0 + b]
                tb = Tj[b, b]
                for t in range(ncol):
                    Mb[t] *= tb
                for a in range(b + 1, r):
                    Ma = M[c0 + a]
                    ta = Tj[a, b]
                    for t in range(ncol):
                        Mb[t] += ta * Ma[t]


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _left_p_vec(v, rt_col, rt_lev, rt_r, T):
    """``v = P' v`` in place (equally ``v P`` for a row vector)."""
    for j in range(rt_col.shape[0]):
        r = rt_r[j]
        Tj = T[j]
        for lv in range(rt_lev[j]):
            c0 = rt_col[j] + lv * r
            for b in range(r):
                acc = 0.0
                for a in range(b, r):
                    acc += Tj[a, b] * v[c0 + a]
                v[c0 + b] = acc


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _p_vec(v, out, rt_col, rt_lev, rt_r, T):
    """``out = P v``."""
    out[:] = v
    for j in range(rt_col.shape[0]):
        r = rt_r[j]
        Tj = T[j]
        for lv in range(rt_lev[j]):
            c0 = rt_col[j] + lv * r
            for a in range(r):
                acc = 0.0
                for b in range(a + 1):
                    acc += Tj[a, b] * v[c0 + b]
                out[c0 + a] = acc


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _cholesky(L, n):
    """Lower Cholesky factor of ``L[:n, :n]`` in place (lower triangle read).

    Returns False where it is not positive definite.
    """
    for j in range(n):
        Lj = L[j]
        acc = Lj[j]
        for t in range(j):
            acc -= Lj[t] * Lj[t]
        if not acc > 0.0:
            return False
        ljj = math.sqrt(acc)
        Lj[j] = ljj
        inv = 1.0 / ljj
        for i in range(j + 1, n):
            Li = L[i]
            acc = Li[j]
            for t in range(j):
                acc -= Li[t] * Lj[t]
            Li[j] = acc * inv
    return True


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _dot(x, y):
    """``x'y`` in four interleaved sums, added in a fixed order.

    Independent chains of additions overlap in the processor (a single sum cannot be
    vectorised without reassociation, which would make the rounding depend on the
    compiler's choices); the order is fixed, so the result is reproducible.
    """
    n = x.shape[0]
    n4 = n - n % 4
    a0 = a1 = a2 = a3 = 0.0
    for i in range(0, n4, 4):
        a0 += x[i] * y[i]
        a1 += x[i + 1] * y[i + 1]
        a2 += x[i + 2] * y[i + 2]
        a3 += x[i + 3] * y[i + 3]
    for i in range(n4, n):
        a0 += x[i] * y[i]
    return (a0 + a1) + (a2 + a3)


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _axpy(alpha, x, y):
    """``y += alpha x``."""
    for i in range(x.shape[0]):
        y[i] += alpha * x[i]


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _gram_tiles(At, Bt, n, length, G, symmetric):
    """``G[i, j] = sum_t At[t, i] Bt[t, j]`` for ``i, j < n`` (``G`` at least ``n4 x n4``).

    ``At`` and ``Bt`` have their columns padded with zeros to ``n4``, a multiple of 4:
    the sums run in blocks of 2 x 4 entries, eight independent chains of products whose
    operands load together, each entry adding its products in the order of ``t`` (no
    reassociation). Where ``symmetric`` (``At`` is ``Bt``), only blocks on or above the
    diagonal are summed, and mirrored.
    """
    n4 = (n + 3) // 4 * 4
    for i0 in range(0, n4, 2):
        for j0 in range((i0 // 4) * 4 if symmetric else 0, n4, 4):
            c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = 0.0
            for t in range(length):
                a = At[t]
                b = Bt[t]
                u0 = a[i0]
                u1 = a[i0 + 1]
                v0 = b[j0]
                v1 = b[j0 + 1]
                v2 = b[j0 + 2]
                v3 = b[j0 + 3]
                c00 += u0 * v0
                c01 += u0 * v1
                c02 += u0 * v2
                c03 += u0 * v3
                c10 += u1 * v0
                c11 += u1 * v1
                c12 += u1 * v2
                c13 += u1 * v3
            G0 = G[i0]
            G1 = G[i0 + 1]
            G0[j0] = c00
            G0[j0 + 1] = c01
            G0[j0 + 2] = c02
            G0[j0 + 3] = c03
            G1[j0] = c10
            G1[j0 + 1] = c11
            G1[j0 + 2] = c12
            G1[j0 + 3] = c13
    if symmetric:
        for i in range(n):
            for j in range(i):
                G[i, j] = G[j, i]


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _apply_blocks(B, X, out, l1, r1):
    """``out[a-block] = sum_c B[a, c] * X[c-block]`` level by level (``(r1, r1, l1)`` B)."""
    for a in range(r1):
        o = out[a * l1 : (a + 1) * l1]
        o[:] = 0.0
        for c in range(r1):
            Bac = B[a, c]
            xc = X[c * l1 : (c + 1) * l1]
            for lv in range(l1):
                o[lv] += Bac[lv] * xc[lv]


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _apply_blocks_const(A, X, out, l1, r1):
    """``out[a-block] = sum_c A[a, c] X[c-block]`` (the same ``A`` for every level)."""
    for a in range(r1):
        o = out[a * l1 : (a + 1) * l1]
        o[:] = 0.0
        for c in range(r1):
            f = A[a, c]
            if f != 0.0:
                _axpy(f, X[c * l1 : (c + 1) * l1], o)


# -- the factorisation ----------------------------------------------------------------


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _level_factors(C, T, Lb, r1, l1):  # noqa: C901
    """Per level of the eliminated term, ``L_l``: Cholesky factor of ``T'C_l T + I``.

    Every level at once, the level the innermost index (``(r, r, levels)`` blocks).
    Returns ``sum_l log|T'C_l T + I|``, NaN where a block is not positive definite.
    """
    for a in range(r1):  # Lb = T'C T + I, lower triangle
        for b in range(a + 1):
            La = Lb[a, b]
            La[:] = 1.0 if a == b else 0.0
            for c in range(r1):
                for d in range(r1):
                    f = T[c, a] * T[d, b]
                    if f != 0.0:
                        _axpy(f, C[c, d], La)
    logdet = 0.0
    for j in range(r1):
        Ljj = Lb[j, j]
        for t in range(j):
            Ljt = Lb[j, t]
            for lv in range(l1):
                Ljj[lv] -= Ljt[lv] * Ljt[lv]
        for lv in range(l1):
            if not Ljj[lv] > 0.0:
                return np.nan
            Ljj[lv] = math.sqrt(Ljj[lv])
            logdet += 2.0 * math.log(Ljj[lv])
        for i in range(j + 1, r1):
            Lij = Lb[i, j]
            for t in range(j):
                Lit, Ljt = Lb[i, t], Lb[j, t]
                for lv in range(l1):
                    Lij[lv] -= Lit[lv] * Ljt[lv]
            for lv in range(l1):
                Lij[lv] /= Ljj[lv]
    return logdet


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _eliminate_levels(C1, E1t, T, Lb, H, HEt, r1, l1):
    """``L_l``, ``H_l = L_l^-1 T'`` and ``(H_l E_l)'`` of every level of the eliminated term.

    Returns ``sum_l log|T'C_l T + I|``, NaN where a block is not positive definite.
    """
    logdet = _level_factors(C1, T, Lb, r1, l1)
    if not np.isfinite(logdet):
        return logdet
    for j in range(r1):  # H[:, j] solves L h = T'[:, j] = T[j, :]
        for a in range(r1):
            Ha = H[a, j]
            Ha[:] = T[j, a]
            for t in range(a):
                Lat, Ht = Lb[a, t], H[t, j]
                for lv in range(l1):
                    Ha[lv] -= Lat[lv] * Ht[lv]
            Laa = Lb[a, a]
            for lv in range(l1):
                Ha[lv] /= Laa[lv]
    for i in range(E1t.shape[0]):  # (H_l E_l)': column (a, l) sums H[a, c, l] E[(c, l)]
        _apply_blocks(H, E1t[i], HEt[i], l1, r1)
    return logdet


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _reduced_gram(GWW, HEt, HE, GN, Nt):
    """``Nt = G_WW - HE' HE`` (``HE``, the transpose of ``HEt`` padded, filled here)."""
    m2, q1 = HEt.shape
    for i in range(m2):
        for t in range(q1):
            HE[t, i] = HEt[i, t]
    _gram_tiles(HE, HE, m2, q1, GN, np.bool_(True))
    for i in range(m2):
        for j in range(m2):
            Nt[i, j] = GWW[i, j] - GN[i, j]


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _schur_factor(Nt, NP, L, q2, rt_col, rt_lev, rt_r, T):
    """``NP = Nt P`` and ``L``, the Cholesky factor of ``S = P' Nt P + diag(I, 0)``.

    Returns (log|L_RR|^2, log|L_XX|^2); NaN where ``S`` is not positive definite.
    """
    m2 = Nt.shape[0]
    NP[:, :] = Nt
    _right_p(NP, rt_col, rt_lev, rt_r, T)
    L[:, :] = NP
    _left_p(L, rt_col, rt_lev, rt_r, T)
    for i in range(q2):
        L[i, i] += 1.0
    if not _cholesky(L, m2):
        return np.nan, np.nan
    logdet_v = 0.0
    logdet_x = 0.0
    for i in range(m2):
        if i < q2:
            logdet_v += 2.0 * math.log(L[i, i])
        else:
            logdet_x += 2.0 * math.log(L[i, i])
    return logdet_v, logdet_x


@nb.njit(cache=True, nogil=True)
def factor_design(theta, dz, w):
    """The gene-independent factorisation at ``theta`` into the workspace ``w``.

    Returns (logdet_v, logdet_x): ``log|V|`` and ``log|X'V^-1 X|``; NaN where the system
    is not positive definite.
    """
    w.held[0] = np.nan
    nR = dz.rt_col.shape[0]
    for j in range(nR):
        _fill_factor(theta, dz.rt_th[j], dz.rt_r[j], w.T[j])
    logdet_1 = 0.0
    if dz.l1 > 0:
        _fill_factor(theta, dz.th1, dz.r1, w.T[nR])
        logdet_1 = _eliminate_levels(dz.C1, dz.E1t, w.T[nR], w.Lb, w.H, w.HEt, dz.r1, dz.l1)
        if not np.isfinite(logdet_1):
            return np.nan, np.nan
    _reduced_gram(dz.GWW, w.HEt, w.HE, w.GN, w.Nt)
    q2 = dz.idxR.shape[0]
    logdet_v, logdet_x = _schur_factor(w.Nt, w.NP, w.L, q2, dz.rt_col, dz.rt_lev, dz.rt_r, w.T)
    return logdet_1 + logdet_v, logdet_x


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _gene_rhs(zy, xy, idx1, idxR, H, HEt, z1, hz, wy, l1, r1):
    """``z_1`` (the eliminated term's ``Z'y``), ``H_l z_l``, ``wy = [Z_R X]'V_1^-1 y``.

    Returns ``y'V_1^-1 y`` less ``y'y``.
    """
    q2 = idxR.shape[0]
    for i in range(idx1.shape[0]):
        z1[i] = zy[idx1[i]]
    _apply_blocks(H, z1, hz, l1, r1)
    for i in range(q2):
        wy[i] = zy[idxR[i]] - _dot(HEt[i], hz)
    for i in range(xy.shape[0]):
        wy[q2 + i] = xy[i] - _dot(HEt[q2 + i], hz)
    return -_dot(hz, hz)


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _forward(L, c):
    """``c = L^-1 c`` in place; returns ``|c|^2``."""
    total = 0.0
    for i in range(c.shape[0]):
        acc = c[i]
        Li = L[i]
        for t in range(i):
            acc -= Li[t] * c[t]
        c[i] = acc / Li[i]
        total += c[i] * c[i]
    return total


@nb.njit(cache=True, nogil=True)
def solve_gene(zy, xy, ss, dz, w):
    """One gene's penalised residual sum of squares ``r2``, after :func:`factor_design`."""
    yy = ss + _gene_rhs(zy, xy, dz.idx1, dz.idxR, w.H, w.HEt, w.z1, w.hz, w.wy, dz.l1, dz.r1)
    w.c[:] = w.wy
    _left_p_vec(w.c, dz.rt_col, dz.rt_lev, dz.rt_r, w.T)
    return yy - _forward(w.L, w.c)


@nb.njit(cache=True, nogil=True)
def criterion(logdet_v, logdet_x, r2, nu, reml, log_weights):
    """The ML deviance or REML criterion from its parts; NaN without residual."""
    if not r2 > 0.0:
        return np.nan
    logdet = logdet_v + logdet_x if reml else logdet_v
    return logdet + nu * (1.0 + _LOG_2PI + math.log(r2 / nu)) - log_weights


@nb.njit(cache=True, nogil=True)
def factorise(theta, zy, xy, ss, dz, w):
    """Factorise one gene's system at ``theta``; returns (criterion, r2), NaN if none."""
    logdet_v, logdet_x = factor_design(theta, dz, w)
    if not np.isfinite(logdet_v):
        return np.nan, np.nan
    r2 = solve_gene(zy, xy, ss, dz, w)
    f = criterion(logdet_v, logdet_x, r2, dz.nu, dz.reml, dz.log_weights)
    if not np.isfinite(f):
        return np.nan, np.nan
    k = theta.shape[0]
    w.held[:k] = theta
    w.held[k] = f
    w.held[k + 1] = r2
    return f, r2


@nb.njit(cache=True, nogil=True)
def held_at(theta, held):
    """Whether ``held`` (the workspace's) is a factorisation by :func:`factorise` at ``theta``."""
    for j in range(theta.shape[0]):
        if not held[j] == theta[j]:
            return False
    return True


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _backward(L, c, sol, stop):
    """``sol[stop:] = (L'^-1 c)[stop:]``: back substitution down to row ``stop``."""
    m2 = c.shape[0]
    for i in range(m2 - 1, stop - 1, -1):
        acc = c[i]
        for t in range(i + 1, m2):
            acc -= L[t, i] * sol[t]
        sol[i] = acc / L[i, i]


@nb.njit(cache=True, nogil=True)
def fixed_effects(dz, w, beta):
    """Fixed effects (centred X) from a factorisation: the last ``p`` of ``L'^-1 c``."""
    q2 = dz.idxR.shape[0]
    _backward(w.L, w.c, w.sol, q2)
    beta[:] = w.sol[q2:]


# -- derivatives ----------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _level_inverses(C, T, F, K1, r1, l1):  # noqa: C901
    """``F_l = (I + C_l T T')^-1`` and ``K_l = F_l C_l`` of every level.

    By Gauss-Jordan elimination with partial pivoting, level by level: the direct
    inverse keeps its relative accuracy where ``I - C_l H_l'H_l`` would cancel (large
    variances).
    """
    G = np.empty((r1, r1))
    M = np.empty((r1, r1))
    Fl = np.empty((r1, r1))
    for a in range(r1):
        for b in range(r1):
            acc = 0.0
            for c in range(r1):
                acc += T[a, c] * T[b, c]
            G[a, b] = acc  # T T'
    for lv in range(l1):
        for a in range(r1):
            for b in range(r1):
                acc = 1.0 if a == b else 0.0
                for c in range(r1):
                    acc += C[a, c, lv] * G[c, b]
                M[a, b] = acc
                Fl[a, b] = 1.0 if a == b else 0.0
        for col in range(r1):
            piv = col
            for a in range(col + 1, r1):
                if abs(M[a, col]) > abs(M[piv, col]):
                    piv = a
            if piv != col:
                for b in range(r1):
                    M[col, b], M[piv, b] = M[piv, b], M[col, b]
                    Fl[col, b], Fl[piv, b] = Fl[piv, b], Fl[col, b]
            inv = 1.0 / M[col, col]
            for b in range(r1):
                M[col, b] *= inv
                Fl[col, b] *= inv
            for a in range(r1):
                if a != col:
                    f = M[a, col]
                    for b in range(r1):
                        M[a, b] -= f * M[col, b]
                        Fl[a, b] -= f * Fl[col, b]
        for a in range(r1):
            for b in range(r1):
                F[a, b, lv] = Fl[a, b]
                acc = 0.0
                for c in range(r1):
                    acc += Fl[a, c] * C[c, b, lv]
                K1[a, b, lv] = acc


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _score_vector(E1t, F, Nt, z1, wy, xhat, resid, u, l1, r1):
    """``u = Z'Py`` (internal order) from the solution ``xhat``."""
    q1 = l1 * r1
    q2 = u.shape[0] - q1
    resid[:] = z1  # z_l - E_l xhat
    for i in range(E1t.shape[0]):
        _axpy(-xhat[i], E1t[i], resid)
    _apply_blocks(F, resid, u[:q1], l1, r1)
    for i in range(q2):
        u[q1 + i] = wy[i] - _dot(Nt[i], xhat)


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _projected_columns(E1t, F, NP, L, EPt, K1Rt, Y, l1, r1, rt_col, rt_lev, rt_r, T):
    """``Y = L^-1 U'`` with ``U = Z'V_1^-1 [Z_R X] P``; and ``K_1R = Z_1'V_1^-1 Z_R``."""
    q1 = l1 * r1
    m2 = E1t.shape[0]
    q2 = K1Rt.shape[0]
    EPt[:, :] = E1t
    _left_p(EPt, rt_col, rt_lev, rt_r, T)  # (E_1 P)' = P' E_1'
    for i in range(q2):
        _apply_blocks(F, E1t[i], K1Rt[i], l1, r1)
    for i in range(m2):
        _apply_blocks(F, EPt[i], Y[i, :q1], l1, r1)
        Y[i, q1:] = NP[:q2, i]  # U_R = Nt[:q2] P
    for i in range(m2):
        Yi = Y[i]
        for t in range(i):
            _axpy(-L[i, t], Y[t], Yi)
        inv = 1.0 / L[i, i]
        for a in range(Yi.shape[0]):
            Yi[a] *= inv


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _covariance_blocks(Y, K1Rt, Nt, rows, Q1Rt, QRR):
    """``Q1R`` (transposed) and ``QRR``: blocks of ``M`` (ML) or ``Q`` (REML).

    ``K - Y'Y`` over the first ``rows`` rows of ``Y``.
    """
    q2, q1 = K1Rt.shape
    Q1Rt[:, :] = K1Rt
    for i in range(q2):
        Qi = Q1Rt[i]
        for t in range(rows):
            _axpy(-Y[t, q1 + i], Y[t, :q1], Qi)
    for i in range(q2):
        for j in range(i, q2):
            acc = Nt[i, j]
            for t in range(rows):
                acc -= Y[t, q1 + i] * Y[t, q1 + j]
            QRR[i, j] = acc
            QRR[j, i] = acc


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _level_sums(Y, K1, u, QRR, rows, l1, r1, rt_col, rt_lev, rt_r, YY, QL, SQ, SU):
    """Per term, sums over its levels: ``SQ`` of the diagonal blocks of ``M`` (or ``Q``).

    And ``SU`` of ``u_l u_l'`` (slot ``nR``: the eliminated term); also the eliminated
    term's blocks ``YY = Y_l'Y_l`` and ``QL = K_l - Y_l'Y_l``.
    """
    nR = rt_col.shape[0]
    q1 = l1 * r1
    SQ[:, :, :] = 0.0
    SU[:, :, :] = 0.0
    for j in range(nR):
        r = rt_r[j]
        for lv in range(rt_lev[j]):
            c0 = rt_col[j] + lv * r
            for a in range(r):
                for b in range(r):
                    SQ[j, a, b] += QRR[c0 + a, c0 + b]
                    SU[j, a, b] += u[q1 + c0 + a] * u[q1 + c0 + b]
    for a in range(r1):
        for b in range(r1):
            YYab = YY[a, b]
            YYab[:] = 0.0
            for t in range(rows):
                Ya = Y[t, a * l1 : (a + 1) * l1]
                Yb = Y[t, b * l1 : (b + 1) * l1]
                for lv in range(l1):
                    YYab[lv] += Ya[lv] * Yb[lv]
            QLab = QL[a, b]
            for lv in range(l1):
                QLab[lv] = K1[a, b, lv] - YYab[lv]
            SQ[nR, a, b] = np.sum(QLab)
            SU[nR, a, b] = _dot(u[a * l1 : (a + 1) * l1], u[b * l1 : (b + 1) * l1])


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _pattern(T, a, b, r, square, A):
    """``d(T T')/d theta`` of one level for ``theta = T[a, b]``, into ``A``.

    ``e_a t_b' + t_b e_a'``; or ``e_a e_a'``, the derivative in ``gamma = theta^2``,
    where ``square`` (a diagonal parameter alone in its column of ``T``, whose column
    contributes ``gamma e_a e_a'`` to ``T T'``).
    """
    A[:, :] = 0.0
    if square:
        A[a, a] = 1.0
        return
    for i in range(r):
        A[a, i] += T[i, b]
        A[i, a] += T[i, b]


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _term_span(s, l1, r1, rt_col, rt_lev, rt_r):
    """(first internal column, levels, coefficients, stride of a level, of a coefficient).

    Column of coefficient ``a`` of level ``l`` of term ``s``: ``first + l * stride + a *
    step``; the eliminated term (slot ``nR``) is stored coefficient by coefficient.
    """
    if s == rt_col.shape[0]:
        return 0, l1, r1, 1, l1
    r = rt_r[s]
    return l1 * r1 + rt_col[s], rt_lev[s], r, r, 1


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _residual_parts(u, A, span, K1, K1Rt, Nt, Y, V, KV, YV, l1, r1):
    """``V = d Gamma u``, ``K V`` and ``Y V`` (all ``m2`` rows) of one parameter.

    ``A`` is its pattern and ``span`` its term's columns (:func:`_term_span`).
    """
    q1 = l1 * r1
    q2 = K1Rt.shape[0]
    first, n_lev, r, stride, step = span
    V[:] = 0.0
    for lv in range(n_lev):
        c0 = first + lv * stride
        for a in range(r):
            acc = 0.0
            for b in range(r):
                acc += A[a, b] * u[c0 + b * step]
            V[c0 + a * step] = acc
    # K V, over V's support: the eliminated term's (K_l blocks, K_1R) or another's
    lo = first if first >= q1 else 0
    hi = first + n_lev * r if first >= q1 else q1
    if first < q1:
        _apply_blocks(K1, V[:q1], KV[:q1], l1, r1)
        V1 = V[:q1]
        for i in range(q2):
            KV[q1 + i] = _dot(K1Rt[i], V1)
    else:
        KV[:q1] = 0.0
        for c in range(lo, hi):
            _axpy(V[c], K1Rt[c - q1], KV[:q1])
        for i in range(q2):
            KV[q1 + i] = _dot(Nt[i, lo - q1 : hi - q1], V[lo:hi])
    for t in range(Y.shape[0]):
        YV[t] = _dot(Y[t, lo:hi], V[lo:hi])


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _gram_blocks(Y, YT, Gc, rows, l1, r1):
    """``Gc[a, c] = sum_l Y_l[:, a] Y_l[:, c]'`` for ``a <= c`` (``rows x rows``).

    ``YT`` (the columns of ``Y``, transposed) keeps zeros beyond ``rows`` from its
    allocation: ``rows`` is the same at every call.
    """
    for c in range(r1):
        for i in range(rows):
            Yi = Y[i]
            for t in range(l1):
                YT[c, t, i] = Yi[c * l1 + t]
    for a in range(r1):
        for c in range(a, r1):
            _gram_tiles(YT[a], YT[c], rows, l1, Gc[a, c], a == c)


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _level_products(QL, A, out, r1):
    """``out = QL A`` level by level (``QL``: ``(r1, r1, l1)``, ``A``: ``r1 x r1``)."""
    for a in range(r1):
        for b in range(r1):
            o = out[a, b]
            o[:] = 0.0
            for c in range(r1):
                f = A[c, b]
                if f != 0.0:
                    _axpy(f, QL[a, c], o)


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _level_trace(P, R, r1):
    """``sum_l tr(P_l R_l)`` of two ``(r1, r1, l1)`` stacks."""
    acc = 0.0
    for a in range(r1):
        for c in range(r1):
            acc += _dot(P[a, c], R[c, a])
    return acc


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _pattern_gram(Gc, T, a, b, square, rows, r1, R):
    """``R = sum_l Y_l A Y_l'`` for the pattern ``A`` of ``theta = T[a, b]`` from ``Gc``."""
    for i in range(rows):
        for j in range(i, rows):
            if square:  # A = e_a e_a'
                acc = Gc[a, a, i, j]
            else:  # A = e_a t_b' + t_b e_a'
                acc = 0.0
                for c in range(r1):
                    if a <= c:
                        g = Gc[a, c, i, j] + Gc[a, c, j, i]
                    else:
                        g = Gc[c, a, j, i] + Gc[c, a, i, j]
                    acc += T[c, b] * g
            R[i, j] = acc
            R[j, i] = acc


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _eliminated_pairs(Rk, PA, PY, rows, nk, r1, out):
    """``tr(Q dG_k Q dG_m)`` over the eliminated term's own block (its ``nk`` parameters).

    ``Q_11 = blockdiag(K_l) - Y_1'Y_1``: per level ``tr(QL_l A_k QL_l A_m) -
    tr(YY_l A_k YY_l A_m)`` (``PA = QL A``, ``PY = YY A``), plus ``tr(R_k R_m)`` with
    ``R_k = sum_l Y_l A_k Y_l'``.
    """
    for x in range(nk):
        for y in range(x, nk):
            acc = 0.0
            for i in range(rows):
                acc += _dot(Rk[x, i, :rows], Rk[y, i, :rows])
            acc += _level_trace(PA[x], PA[y], r1)
            acc -= _level_trace(PY[x], PY[y], r1)
            out[x, y] = acc
            out[y, x] = acc


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _cross_other(Q1Rt, QRR, A, c0s, r, n_lev, QAt, XR):
    """``(Q1R d Gamma)'`` and ``d Gamma QRR`` on the rows of another term's parameter."""
    for lv in range(n_lev):
        c0 = c0s + lv * r
        for b in range(r):
            o = QAt[c0 + b]
            o[:] = 0.0
            x = XR[c0 + b]
            x[:] = 0.0
            for a in range(r):
                f = A[a, b]
                if f != 0.0:
                    _axpy(f, Q1Rt[c0 + a], o)
                    _axpy(f, QRR[c0 + a], x)


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _pair_sum(AQt, QAt, XR, j, m, c0j, nj, c0m, nm, eliminated):
    """``tr(Q dG_j Q dG_m)`` for another term's ``j`` and ``m`` (eliminated or another)."""
    acc = 0.0
    if eliminated:  # over q1 x J_j
        for i in range(c0j, c0j + nj):
            acc += _dot(AQt[m, i], QAt[j, i])
        return acc
    for x in range(c0j, c0j + nj):
        for y in range(c0m, c0m + nm):
            acc += XR[j, x, y] * XR[m, y, x]
    return acc


@nb.njit(cache=True, nogil=True)
def _logdet_hessian(dz, w, rows, square, out):  # noqa: C901
    """``tr(Q dG_k Q dG_m)`` for every pair of parameters into ``out`` (``k x k``).

    After :func:`_covariance_blocks` and :func:`_level_sums`; the patterns in ``w.A``.
    """
    k = out.shape[0]
    nR = dz.rt_col.shape[0]
    l1, r1 = dz.l1, dz.r1
    q2 = dz.idxR.shape[0]
    out[:, :] = 0.0
    ks = np.empty(k, dtype=np.int64)
    nk = np.int64(0)
    for j in range(k):
        if dz.par_slot[j] == nR:
            ks[nk] = j
            nk += 1
    if nk > 0:
        _gram_blocks(w.Y, w.YT, w.Gc, rows, l1, r1)
        for x in range(nk):
            j = ks[x]
            T = w.T[nR]
            _pattern_gram(w.Gc, T, dz.par_a[j], dz.par_b[j], square[j], rows, r1, w.Rk[x])
            _level_products(w.QL, w.A[j], w.PA[x], r1)
            _level_products(w.YY, w.A[j], w.PY[x], r1)
            for i in range(q2):
                _apply_blocks_const(w.A[j], w.Q1Rt[i], w.AQt[j, i], l1, r1)
        _eliminated_pairs(w.Rk, w.PA, w.PY, rows, nk, r1, w.sub)
        for x in range(nk):
            for y in range(nk):
                out[ks[x], ks[y]] = w.sub[x, y]
    for j in range(k):
        s = dz.par_slot[j]
        if s < nR:
            r = dz.rt_r[s]
            _cross_other(w.Q1Rt, w.QRR, w.A[j], dz.rt_col[s], r, dz.rt_lev[s], w.QAt[j], w.XR[j])
    for j in range(k):
        sj = dz.par_slot[j]
        if sj == nR:
            continue
        c0j, nj = dz.rt_col[sj], dz.rt_lev[sj] * dz.rt_r[sj]
        for m in range(k):
            sm = dz.par_slot[m]
            if sm != nR and m < j:
                continue
            c0m = dz.rt_col[sm] if sm < nR else 0
            nm = dz.rt_lev[sm] * dz.rt_r[sm] if sm < nR else 0
            acc = _pair_sum(w.AQt, w.QAt, w.XR, j, m, c0j, nj, c0m, nm, sm == nR)
            out[j, m] = acc
            out[m, j] = acc


@nb.njit(cache=True, nogil=True)
def derivatives(theta, dz, w, r2, grad, hess, square):
    """Gradient and Hessian from a factorisation by :func:`factorise`.

    In ``theta``, except that parameters flagged in ``square`` (diagonal entries alone in
    their column of ``T``) are replaced by ``gamma = theta^2``, in which the criterion is
    smooth at 0 with a gradient that does not vanish there. See
    :mod:`scvarpart.lmm.general` for the formulas.
    """
    k = theta.shape[0]
    q2 = dz.idxR.shape[0]
    rows = q2 + dz.p if dz.reml else q2
    nu = dz.nu
    nR = dz.rt_col.shape[0]
    l1, r1 = dz.l1, dz.r1
    _backward(w.L, w.c, w.sol, np.int64(0))
    _p_vec(w.sol, w.xhat, dz.rt_col, dz.rt_lev, dz.rt_r, w.T)
    _level_inverses(dz.C1, w.T[nR], w.F, w.K1, r1, l1)
    _score_vector(dz.E1t, w.F, w.Nt, w.z1, w.wy, w.xhat, w.hz, w.u, l1, r1)
    _projected_columns(
        dz.E1t, w.F, w.NP, w.L, w.EPt, w.K1Rt, w.Y, l1, r1, dz.rt_col, dz.rt_lev, dz.rt_r, w.T
    )
    _covariance_blocks(w.Y, w.K1Rt, w.Nt, rows, w.Q1Rt, w.QRR)
    _level_sums(
        w.Y, w.K1, w.u, w.QRR, rows, l1, r1, dz.rt_col, dz.rt_lev, dz.rt_r, w.YY, w.QL, w.SQ, w.SU
    )
    dr2 = w.dr2
    for j in range(k):
        s = dz.par_slot[j]
        r = r1 if s == nR else dz.rt_r[s]
        A = w.A[j]
        _pattern(w.T[s], dz.par_a[j], dz.par_b[j], r, square[j], A)
        dr2[j] = -_trace(w.SU[s], A, r)  # d r2 = -u' dGamma u
        grad[j] = _trace(w.SQ[s], A, r) + nu * dr2[j] / r2
    _logdet_hessian(dz, w, rows, square, hess)
    for j in range(k):
        span = _term_span(dz.par_slot[j], l1, r1, dz.rt_col, dz.rt_lev, dz.rt_r)
        _residual_parts(
            w.u, w.A[j], span, w.K1, w.K1Rt, w.Nt, w.Y, w.V[j], w.KV[j], w.YV[j], l1, r1
        )
    _second(w.V, w.KV, w.YV, w.SQ, w.SU, dr2, dz.par_slot, dz.par_a, dz.par_b, square, nu, r2, hess)


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _trace(S, A, r):
    """``tr(S A)`` of two ``r x r`` corners."""
    acc = 0.0
    for a in range(r):
        for b in range(r):
            acc += S[a, b] * A[b, a]
    return acc


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _second(V, KV, YV, SQ, SU, dr2, slot, pa, pb, square, nu, r2, hess):
    """Adds all but ``-tr(Q dG_j Q dG_m)`` to the Hessian (which holds that trace).

    ``tr(Q d2Gamma) + nu (d2 r2 / r2 - d r2_j d r2_m / r2^2)``, with ``d2 r2 = 2 v_j'Q v_m
    - u' d2Gamma u`` (``v = dGamma u``; ``d2Gamma`` is 0 in ``gamma`` and between
    different columns of ``T``).
    """
    k = V.shape[0]
    for j in range(k):
        for m in range(j, k):
            d2r2 = 2.0 * (_dot(V[j], KV[m]) - _dot(YV[j], YV[m]))
            h = -hess[j, m]
            s = slot[j]
            if slot[m] == s and pb[j] == pb[m] and not (square[j] or square[m]):
                h += 2.0 * SQ[s, pa[j], pa[m]]
                d2r2 -= 2.0 * SU[s, pa[j], pa[m]]
            h += nu * (d2r2 / r2 - dr2[j] * dr2[m] / (r2 * r2))
            hess[j, m] = h
            hess[m, j] = h


@nb.njit(cache=True, nogil=True, inline="always")
def evaluate_gene(theta, zy, xy, ss, mode, dz, w, grad, hess, beta):
    """Criterion and ``r2`` of one gene at ``theta`` (NaN where undefined).

    With :data:`DERIVATIVES` also the gradient and Hessian (in ``theta``), with
    :data:`ESTIMATES` the fixed effects, into ``grad``, ``hess``, ``beta``.
    """
    if not np.all(np.isfinite(theta)):
        return np.nan, np.nan
    f, r2 = factorise(theta, zy, xy, ss, dz, w)
    if not np.isfinite(f):
        return np.nan, np.nan
    if mode == DERIVATIVES:
        derivatives(theta, dz, w, r2, grad, hess, np.zeros(theta.shape[0], dtype=np.bool_))
    elif mode == ESTIMATES:
        fixed_effects(dz, w, beta)
    return f, r2


@nb.njit(cache=True, nogil=True, inline="always")
def fixed_factor_gene(theta, dz, w, out):
    """Lower Cholesky factor of ``X'V^-1 X`` at ``theta`` into ``out`` (``p x p``).

    The trailing ``p x p`` block of the factor of :func:`factor_design` (lme4's ``R_X'``);
    left NaN where ``theta`` is not finite or the system not positive definite.
    """
    if not np.all(np.isfinite(theta)):
        return
    logdet_v, _ = factor_design(theta, dz, w)
    if not np.isfinite(logdet_v):
        return
    p = dz.p
    q2 = dz.idxR.shape[0]
    for i in range(p):
        for j in range(p):
            out[i, j] = w.L[q2 + i, q2 + j] if j <= i else 0.0
