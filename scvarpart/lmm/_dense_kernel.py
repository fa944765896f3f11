"""Compiled per-gene kernel of :class:`~scvarpart.lmm.dense.DenseDeviance`.

The mathematics is described in :mod:`scvarpart.lmm.dense`; this module is its
loop-level implementation. Small matrices (tens of rows) are handled far more
efficiently by compiled loops than by stacked NumPy calls, and the kernels
release the GIL, so threads fit genes in parallel without copying data.
Internal level order: the eliminated factor's levels first, then the others
grouped by factor (so every factor is a contiguous range ``bstart:bstop``).

The cubic parts (``K``, ``W'W``) run their inner loops along contiguous slices,
which the compiler vectorises, two output rows at a time; every entry still
accumulates its products one after the other in a fixed order, so its rounding
does not depend on the vector width or on alignment.
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
    "held_at",
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
def _scaled_gram(E, weight, K):
    """Upper triangle of ``K = E' diag(weight) E`` (and below it within 2 x 2 blocks).

    Each entry adds its products ``(E[l, i] weight[l]) E[l, j]`` in order of ``l``,
    as the plain triple loop does: the same rounding. Two rows of ``K`` at a time,
    along contiguous slices, so that the inner loop is vectorised and each load of
    ``E`` serves both.
    """
    q1, m2 = E.shape
    i = 0
    while i + 1 < m2:
        K0 = K[i, i:m2]
        K1 = K[i + 1, i:m2]
        K0[:] = 0.0
        K1[:] = 0.0
        for lv in range(q1):
            El = E[lv, i:m2]
            e0 = El[0] * weight[lv]
            e1 = El[1] * weight[lv]
            for t in range(El.shape[0]):
                x = El[t]
                K0[t] += e0 * x
                K1[t] += e1 * x
        i += 2
    if i < m2:
        Ki = K[i, i:m2]
        Ki[:] = 0.0
        for lv in range(q1):
            El = E[lv, i:m2]
            ei = El[0] * weight[lv]
            for t in range(El.shape[0]):
                Ki[t] += ei * El[t]


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
    w.held[0] = np.nan  # no gene's solution is held any more

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
    _scaled_gram(E, inv_a, K)
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
    k = gamma.shape[0]
    held = w.held
    held[:k] = gamma
    held[k] = f
    held[k + 1] = r2
    return f, r2


@nb.njit(cache=True, nogil=True)
def held_at(gamma, w):
    """Whether ``w`` holds a gene's factorisation by :func:`factorise` at exactly ``gamma``.

    Its deviance and ``r2`` are then ``w.held[k]`` and ``w.held[k + 1]``: factorising
    again would compute the same numbers.
    """
    held = w.held
    for j in range(gamma.shape[0]):
        if not held[j] == gamma[j]:
            return False
    return True


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def fixed_effects(dz, w, beta):
    """Fixed effects (centred X) from a factorisation: the last p of L'^-1 c.

    Back substitution from the last row stops after them: no earlier row enters.
    """
    L, c, sol = w.L, w.c, w.rhs
    m2 = c.shape[0]
    q2 = m2 - dz.p
    for i in range(m2 - 1, q2 - 1, -1):
        acc = c[i]
        for t in range(i + 1, m2):
            acc -= L[t, i] * sol[t]
        sol[i] = acc / L[i, i]
    for x in range(dz.p):
        beta[x] = sol[q2 + x]


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _subtract_gram(W, rows, D):
    """``D -= W[:rows]' W[:rows]`` on the upper triangle (and below it within 2 x 2 blocks).

    Each entry subtracts its products in order of the rows of ``W``, as the plain
    triple loop does; two rows of ``D`` at a time along contiguous slices, so the
    inner loop is vectorised and each element of ``W`` loaded serves both.
    """
    q = D.shape[0]
    a = 0
    while a + 1 < q:
        D0 = D[a, a:q]
        D1 = D[a + 1, a:q]
        for i in range(rows):
            Wi = W[i, a:q]
            w0 = Wi[0]
            w1 = Wi[1]
            for t in range(Wi.shape[0]):
                x = Wi[t]
                D0[t] -= w0 * x
                D1[t] -= w1 * x
        a += 2
    if a < q:
        Da = D[a, a:q]
        for i in range(rows):
            Wi = W[i, a:q]
            wa = Wi[0]
            for t in range(Wi.shape[0]):
                Da[t] -= wa * Wi[t]


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _block_sums(D, u, r0, r1, c0, c1):
    """``sum D[a, b]^2`` and ``sum u[a] D[a, b] u[b]`` over rows ``r0:r1``, columns ``c0:c1``.

    Summed row by row: each row's sums are separate chains of additions, which the
    processor overlaps, then added in order of the rows.
    """
    fr = 0.0
    ud = 0.0
    uc = u[c0:c1]
    for a in range(r0, r1):
        Da = D[a, c0:c1]
        rf = 0.0
        ru = 0.0
        for t in range(Da.shape[0]):
            v = Da[t]
            rf += v * v
            ru += v * uc[t]
        fr += rf
        ud += u[a] * ru
    return fr, ud


@nb.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _diagonal_block_sums(D, u, r0, r1):
    """As :func:`_block_sums` for the symmetric block ``r0:r1`` of ``D`` (upper triangle)."""
    fr = 0.0
    ud = 0.0
    for a in range(r0, r1):
        Da = D[a, a + 1 : r1]
        ub = u[a + 1 : r1]
        rf = 0.0
        ru = 0.0
        for t in range(Da.shape[0]):
            v = Da[t]
            rf += v * v
            ru += v * ub[t]
        v = D[a, a]
        fr += v * v + 2.0 * rf
        ud += u[a] * (v * u[a] + 2.0 * ru)
    return fr, ud


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
        Wi = W[i]
        for t in range(i):
            lit = L[i, t]
            Wt = W[t]
            for a in range(q):
                Wi[a] -= lit * Wt[a]
        inv = 1.0 / L[i, i]
        for a in range(q):
            Wi[a] *= inv

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
        Da = D[a, a:q]
        Ca = C[a, a:q]
        for b in range(Da.shape[0]):
            Da[b] = Ca[b]
    for lv in range(q1):
        D[lv, lv] -= g1 * d[lv] * d[lv] * inv_a[lv]
        f = g1 * d[lv] * inv_a[lv]
        Dl = D[lv, q1:q]
        Cl = C[lv, q1:q]
        for b in range(q2):
            Dl[b] -= f * Cl[b]
    for a in range(q2):
        Da = D[q1 + a, q1 + a : q]
        Ka = K[a, a:q2]
        for b in range(q2 - a):
            Da[b] -= g1 * Ka[b]
    rows = m2 if reml else q2
    _subtract_gram(W, rows, D)

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
            if fj == fi:
                fr, ud = _diagonal_block_sums(D, u, bstart[fi], bstop[fi])
            elif bstart[fj] > bstart[fi]:  # upper triangle: rows fi, columns fj
                fr, ud = _block_sums(D, u, bstart[fi], bstop[fi], bstart[fj], bstop[fj])
            else:
                fr, ud = _block_sums(D, u, bstart[fj], bstop[fj], bstart[fi], bstop[fi])
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
    held: np.ndarray  # gamma, deviance and r2 of the gene factorised last (NaN: none)


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
        np.full(k + 2, np.nan),
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
