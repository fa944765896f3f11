"""Compiled per-gene kernel of :class:`~scvarpart.lmm.dense.DenseDeviance`.

The mathematics is described in :mod:`scvarpart.lmm.dense`; this module is its
loop-level implementation. Small matrices (tens of rows) are handled far more
efficiently by compiled loops than by stacked NumPy calls, and the kernels
release the GIL, so threads fit genes in parallel without copying data.
Internal level order: the eliminated factor's levels first, then the others
grouped by factor (so every factor is a contiguous range ``bstart:bstop``).
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
    "DenseDesign",
    "criterion",
    "derivatives",
    "evaluate_batch",
    "factor_design",
    "factorise",
    "fixed_effects",
    "fixed_factors",
    "solve_gene",
    "workspace",
]

DEVIANCE, DERIVATIVES, ESTIMATES = 0, 1, 2

# Fused multiply-adds only: no reassociation, so a gene's result does not depend
# on how its arrays happen to be aligned in memory (bitwise reproducible fits).
_FASTMATH = {"contract"}
_LOG_2PI = math.log(2 * math.pi)


class DenseDesign(NamedTuple):
    """Design constants in the kernels' internal level order."""

    d: np.ndarray  # (q1,) level counts of the eliminated factor
    E: np.ndarray  # (q1, m2) [Z_1'Z_R, Z_1'X]
    GRR: np.ndarray  # (m2, m2) [[Z_R'Z_R, Z_R'X], [X'Z_R, X'X]]
    C: np.ndarray  # (q, q) Z'Z
    order: np.ndarray  # (q,) original index of each internal level
    rest_factor: np.ndarray  # (q2,) factor of each remaining level
    bstart: np.ndarray  # (k,) first internal level of each factor
    bstop: np.ndarray  # (k,) one past its last
    big: int  # the eliminated factor
    p: int
    nu: float  # n (ML) or n - p (REML)
    reml: bool


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def factor_design(gamma, dz, w):
    """The part of a factorisation at ``gamma`` that no gene changes.

    That is ``L`` (in the workspace ``w``) and ``log|V|``, ``log|X'V^-1 X|``.

    Returns (logdet_v, logdet_x); NaN where the system is not positive definite.
    """
    d, E, GRR, rest_factor = dz.d, dz.E, dz.GRR, dz.rest_factor
    p = dz.p
    q1 = d.shape[0]
    q2 = rest_factor.shape[0]
    m2 = q2 + p
    inv_a, s, K, N, L = w.inv_a, w.s, w.K, w.N, w.L

    # the eliminated factor: Omega_11 = diag(a), a = 1 + gamma_1 d
    g1 = gamma[dz.big]
    logdet_v = 0.0
    for lv in range(q1):
        inv_a[lv] = 1.0 / (1.0 + g1 * d[lv])
        logdet_v -= math.log(inv_a[lv])
    for i in range(q2):
        s[i] = math.sqrt(gamma[rest_factor[i]])
    for i in range(q2, m2):
        s[i] = 1.0

    # K = E' diag(1/a) E; N = G_RR - gamma_1 K; S = s s' * N + I (levels)
    K[:, :] = 0.0
    for lv in range(q1):
        wl = inv_a[lv]
        for i in range(m2):
            ei = E[lv, i] * wl
            for j in range(i, m2):
                K[i, j] += ei * E[lv, j]
    for i in range(m2):
        for j in range(i, m2):
            K[j, i] = K[i, j]
            v = GRR[i, j] - g1 * K[i, j]
            N[i, j] = v
            N[j, i] = v
    for i in range(m2):
        for j in range(i + 1):
            L[i, j] = s[i] * s[j] * N[i, j]
        if i < q2:
            L[i, i] += 1.0

    # Cholesky S = L L' (lower triangle of L)
    for j in range(m2):
        acc = L[j, j]
        for t in range(j):
            acc -= L[j, t] * L[j, t]
        if not acc > 0.0:
            return np.nan, np.nan
        ljj = math.sqrt(acc)
        L[j, j] = ljj
        inv = 1.0 / ljj
        for i in range(j + 1, m2):
            acc = L[i, j]
            for t in range(j):
                acc -= L[i, t] * L[j, t]
            L[i, j] = acc * inv
    logdet_x = 0.0
    for i in range(m2):
        if i < q2:
            logdet_v += 2.0 * math.log(L[i, i])
        else:
            logdet_x += 2.0 * math.log(L[i, i])
    return logdet_v, logdet_x


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def solve_gene(gamma, zy, xy, ss, dz, w):
    """One gene's penalised residual sum of squares ``r2``.

    From a factorisation by :func:`factor_design` at the same ``gamma`` (fills ``c`` in
    ``w``).
    """
    d, E, order = dz.d, dz.E, dz.order
    q1 = d.shape[0]
    q2 = dz.rest_factor.shape[0]
    m2 = q2 + dz.p
    inv_a, s, L, b1a, rhs, c = w.inv_a, w.s, w.L, w.b1a, w.rhs, w.c
    g1 = gamma[dz.big]

    # reduced right-hand side and y'y
    yy = ss
    for lv in range(q1):
        z = zy[order[lv]]
        b1a[lv] = z * inv_a[lv]
        yy -= g1 * z * b1a[lv]
    rhs[:] = 0.0
    for lv in range(q1):
        bl = b1a[lv]
        for i in range(m2):
            rhs[i] += E[lv, i] * bl
    for i in range(m2):
        bi = zy[order[q1 + i]] if i < q2 else xy[i - q2]
        rhs[i] = s[i] * (bi - g1 * rhs[i])

    # c = L^-1 rhs
    r2 = yy
    for i in range(m2):
        acc = rhs[i]
        for t in range(i):
            acc -= L[i, t] * c[t]
        c[i] = acc / L[i, i]
        r2 -= c[i] * c[i]
    return r2


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def criterion(logdet_v, logdet_x, r2, dz):
    """The ML deviance or REML criterion from its parts; NaN without residual."""
    if not r2 > 0.0:
        return np.nan
    logdet = logdet_v + logdet_x if dz.reml else logdet_v
    return logdet + dz.nu * (1.0 + _LOG_2PI + math.log(r2 / dz.nu))


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def factorise(gamma, zy, xy, ss, dz, w):
    """Factorise one gene's reduced system at ``gamma`` into the workspace ``w``.

    Returns (deviance, r2); NaN where the system is not positive definite or no
    residual is left.
    """
    logdet_v, logdet_x = factor_design(gamma, dz, w)
    if not np.isfinite(logdet_v):
        return np.nan, np.nan
    r2 = solve_gene(gamma, zy, xy, ss, dz, w)
    f = criterion(logdet_v, logdet_x, r2, dz)
    if not np.isfinite(f):
        return np.nan, np.nan
    return f, r2


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def fixed_effects(dz, w, beta):
    """Fixed effects (centred X) from a factorisation: the last p of L'^-1 c."""
    L, c, sol = w.L, w.c, w.rhs
    m2 = c.shape[0]
    q2 = m2 - dz.p
    for i in range(m2 - 1, -1, -1):
        acc = c[i]
        for t in range(i + 1, m2):
            acc -= L[t, i] * sol[t]
        sol[i] = acc / L[i, i]
    for x in range(dz.p):
        beta[x] = sol[q2 + x]


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def derivatives(gamma, zy, dz, w, r2, grad, hess):
    """Gradient and Hessian in ``gamma`` from a factorisation.

    See module :mod:`scvarpart.lmm.dense` for the formulas.
    """
    d, E, C, order = dz.d, dz.E, dz.C, dz.order
    p, nu, reml = dz.p, dz.nu, dz.reml
    q1 = d.shape[0]
    q2 = dz.rest_factor.shape[0]
    m2 = q2 + p
    q = q1 + q2
    k = gamma.shape[0]
    g1 = gamma[dz.big]
    inv_a, s, K, N, L, b1a, c = w.inv_a, w.s, w.K, w.N, w.L, w.b1a, w.c

    # W = L^-1 F~ with F~ = [s * E' / a, s * N[:, levels]]
    W, u, D = w.W, w.u, w.D
    for i in range(m2):
        si = s[i]
        for a in range(q1):
            W[i, a] = si * E[a, i] * inv_a[a]
        for a in range(q2):
            W[i, q1 + a] = si * N[i, a]
    for i in range(m2):
        for t in range(i):
            lit = L[i, t]
            for a in range(q):
                W[i, a] -= lit * W[t, a]
        inv = 1.0 / L[i, i]
        for a in range(q):
            W[i, a] *= inv

    # u = Z'Py = Zy - W'c - gamma_1 F1' diag(1/a) b1
    for a in range(q):
        u[a] = zy[order[a]]
    for i in range(m2):
        ci = c[i]
        for a in range(q):
            u[a] -= W[i, a] * ci
    for lv in range(q1):
        u[lv] -= g1 * d[lv] * b1a[lv]
        bl = g1 * b1a[lv]
        for a in range(q2):
            u[q1 + a] -= bl * C[lv, q1 + a]

    # D = M (ML) or Q (REML): Cg - W'W over the level rows (and the fixed-effect
    # rows for Q); upper triangle. Cg = C - gamma_1 F1' diag(1/a) F1.
    for a in range(q):
        for b in range(a, q):
            D[a, b] = C[a, b]
    for lv in range(q1):
        D[lv, lv] -= g1 * d[lv] * d[lv] * inv_a[lv]
        f = g1 * d[lv] * inv_a[lv]
        for b in range(q1, q):
            D[lv, b] -= f * C[lv, b]
    for a in range(q2):
        for b in range(a, q2):
            D[q1 + a, q1 + b] -= g1 * K[a, b]
    rows = m2 if reml else q2
    for i in range(rows):
        for a in range(q):
            wa = W[i, a]
            for b in range(a, q):
                D[a, b] -= wa * W[i, b]

    # block sums by factor: traces, |D_ij|_F^2, u_i' D_ij u_j, |u_i|^2
    bstart, bstop = dz.bstart, dz.bstop
    frob, uDu, uu, tr = w.frob, w.uDu, w.uu, w.tr
    for fi in range(k):
        acc_uu = 0.0
        acc_tr = 0.0
        for a in range(bstart[fi], bstop[fi]):
            acc_uu += u[a] * u[a]
            acc_tr += D[a, a]
        uu[fi] = acc_uu
        tr[fi] = acc_tr
        for fj in range(fi, k):
            fr = 0.0
            ud = 0.0
            for a in range(bstart[fi], bstop[fi]):
                ua = u[a]
                if fj == fi:
                    v = D[a, a]
                    fr += v * v
                    ud += ua * v * ua
                    for b in range(a + 1, bstop[fj]):
                        v = D[a, b]
                        fr += 2.0 * v * v
                        ud += 2.0 * ua * v * u[b]
                elif bstart[fj] > bstart[fi]:
                    for b in range(bstart[fj], bstop[fj]):
                        v = D[a, b]  # upper triangle: a < b
                        fr += v * v
                        ud += ua * v * u[b]
                else:
                    for b in range(bstart[fj], bstop[fj]):
                        v = D[b, a]  # upper triangle: b < a
                        fr += v * v
                        ud += ua * v * u[b]
            frob[fi, fj] = fr
            frob[fj, fi] = fr
            uDu[fi, fj] = ud
            uDu[fj, fi] = ud
    if not reml:  # u'Qu = u'Mu - (W_X u)'(W_X u), blockwise
        XU = w.XU
        for x in range(p):
            for fi in range(k):
                acc = 0.0
                for a in range(bstart[fi], bstop[fi]):
                    acc += W[q2 + x, a] * u[a]
                XU[x, fi] = acc
        for i in range(k):
            for j in range(k):
                acc = 0.0
                for x in range(p):
                    acc += XU[x, i] * XU[x, j]
                uDu[i, j] -= acc
    for i in range(k):
        grad[i] = tr[i] - nu * uu[i] / r2
        for j in range(k):
            hess[i, j] = -frob[i, j] + nu * (2.0 * uDu[i, j] / r2 - uu[i] * uu[j] / (r2 * r2))


class _Work(NamedTuple):
    inv_a: np.ndarray
    s: np.ndarray
    K: np.ndarray
    N: np.ndarray
    L: np.ndarray
    b1a: np.ndarray
    rhs: np.ndarray
    c: np.ndarray
    W: np.ndarray
    u: np.ndarray
    D: np.ndarray
    frob: np.ndarray
    uDu: np.ndarray
    uu: np.ndarray
    tr: np.ndarray
    XU: np.ndarray


@nb.njit(cache=True, nogil=True)
def workspace(dz, k):
    """Scratch arrays of one gene's evaluation, allocated once per batch."""
    q1 = dz.d.shape[0]
    q2 = dz.rest_factor.shape[0]
    m2 = q2 + dz.p
    q = q1 + q2
    return _Work(
        np.empty(q1),
        np.empty(m2),
        np.empty((m2, m2)),
        np.empty((m2, m2)),
        np.empty((m2, m2)),
        np.empty(q1),
        np.empty(m2),
        np.empty(m2),
        np.empty((m2, q)),
        np.empty(q),
        np.empty((q, q)),
        np.empty((k, k)),
        np.empty((k, k)),
        np.empty(k),
        np.empty(k),
        np.empty((dz.p, k)),
    )


@nb.njit(cache=True, nogil=True)
def evaluate_batch(gammas, ZtY, XtY, ss, mode, dz):
    """Evaluate every gene of a batch at its ``gammas`` row.

    Returns deviance ``(G,)``, r2 ``(G,)``, gradient ``(G, k)``, Hessian
    ``(G, k, k)`` (filled for ``DERIVATIVES``) and fixed effects ``(G, p)``
    (filled for ``ESTIMATES``).
    """
    G, k = gammas.shape
    w = workspace(dz, k)
    dev = np.empty(G)
    r2 = np.empty(G)
    grad = np.full((G, k), np.nan)
    hess = np.full((G, k, k), np.nan)
    beta = np.full((G, dz.p), np.nan)
    for g in range(G):
        dev[g], r2[g] = factorise(gammas[g], ZtY[g], XtY[g], ss[g], dz, w)
        if not np.isfinite(dev[g]):
            continue
        if mode == DERIVATIVES:
            derivatives(gammas[g], ZtY[g], dz, w, r2[g], grad[g], hess[g])
        elif mode == ESTIMATES:
            fixed_effects(dz, w, beta[g])
    return dev, r2, grad, hess, beta


@nb.njit(cache=True, nogil=True)
def fixed_factors(gammas, dz):
    """Lower Cholesky factor of ``X'V^-1 X`` (unit residual variance) at each row of ``gammas``.

    The trailing ``p x p`` block of the factor of :func:`factor_design` (lme4's
    ``R_X'``). NaN where ``gammas`` is not finite or the system not positive definite.
    """
    G, k = gammas.shape
    p = dz.p
    q2 = dz.rest_factor.shape[0]
    w = workspace(dz, k)
    out = np.full((G, p, p), np.nan)
    for g in range(G):
        if not np.all(np.isfinite(gammas[g])):
            continue
        logdet_v, _ = factor_design(gammas[g], dz, w)
        if not np.isfinite(logdet_v):
            continue
        for i in range(p):
            for j in range(p):
                out[g, i, j] = w.L[q2 + i, q2 + j] if j <= i else 0.0
    return out
