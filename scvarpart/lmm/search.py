"""The global search: every gene's criterion on a shared grid, then Newton's method.

Newton's method runs from the best start and from every other basin that could hold a
better optimum.

Per gene (compiled, genes of a batch in turn, without the GIL):

1. **Screen.** The criterion at every point of the :class:`~.grid.VarianceGrid`.
   The factorisation at a point does not depend on the gene, so it is computed
   once per fit (:func:`prepare_grid`): what is left per gene and point is a
   triangular product (``L^-1 diag(s)`` times the gene's reduced right-hand
   side), and the right-hand side itself is shared by every point with the same
   variance ratio of the eliminated factor. Genes are screened
   :data:`TILE` at a time.
2. **Descent.** Projected Newton (:mod:`.newton`) from the better of the grid's
   best point and the moment estimates (:mod:`.starts`).
3. **Other basins.** Optima of a criterion with few levels per factor often lie
   on different faces of the boundary (a variance exactly 0 at one, positive at
   the other), sometimes next to each other, separated by a small ridge. Grid
   points that are local minima among their neighbours are candidate basins,
   each with a bound on how low its basin may reach (:func:`candidate_bounds`:
   its value less twice the largest change of the criterion to a neighbour,
   which bounds how far below the grid a basin the grid resolves can lie). A
   candidate is descended from when its bound is below the best optimum found
   so far, most promising first, at most :data:`MAX_EXTRA_STARTS`; a descent
   that comes near an optimum found before stops there (it would end on it).
4. **Neighbouring faces.** Descents on the faces next to the best optimum: each
   positive variance moved onto each zero one, or, from an interior optimum, set
   to 0, and held there while the descent finds that face's optimum; then released
   (:func:`_swap_faces`). Factors that share their levels' structure (few
   levels, partly confounded) make optima on neighbouring faces that no grid
   coarse enough to screen every gene resolves.

How thorough step 3 is depends on the design (``thorough`` in
:class:`GridFactors`). With few observations per level (tiny, bulk and
pseudobulk designs), every face's local minima are candidates, with
uncapped bounds, and minima on the grid's edge (the smallest residual fraction:
the basin may extend beyond the grid) always are. With many observations per
level the criterion is sharply curved: only minima over closed faces are
candidates, and a bound's allowance is capped at :data:`SPREAD_CAP`, since the
criterion changes by hundreds between grid points there.

The optimum reported is the best of the descents (the earliest, on ties within
:data:`TIE`), and it is converged when its descent met Newton's convergence
criterion, a KKT point. Checked against an exhaustive search on thousands of
random tiny designs and on the example design with each level left out in turn
(``tests/test_global_optimum.py``), and against lme4 on every
gene of real datasets (``tests/test_real_data_lme4.py``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba as nb
import numpy as np

from ._dense_kernel import factor_design, workspace
from .grid import VarianceGrid
from .newton import UNKNOWN, _minimise_gene, batch_results, estimates_at, held_options

__all__ = [
    "MAX_EXTRA_STARTS",
    "SPREAD_CAP",
    "TIE",
    "GridFactors",
    "candidate_bounds",
    "face_buffers",
    "face_known",
    "prepare_grid",
    "search_batch",
    "swap_starts",
    "swap_starts_among",
    "zeroed",
]

# Deviance units: the most a candidate's neighbourhood spread may count, where
# the search is not thorough.
SPREAD_CAP = 15.0
# Descents from candidates beyond the first, per gene.
MAX_EXTRA_STARTS = 12
# Relative improvement of the criterion below which a later descent does not
# replace an earlier one.
TIE = 1e-10

_LOG_2PI = math.log(2 * math.pi)


class GridFactors(NamedTuple):
    """Gene-independent factorisations at every grid point.

    Points are grouped by the variance ratio of the eliminated factor
    (``g1[t]``, with ``1 / (1 + g1 d)`` in ``inv_a[t]``): group ``t`` is the
    points ``by_g1[t_ptr[t]:t_ptr[t + 1]]``.
    """

    gamma: np.ndarray  # (N, k)
    logdet: np.ndarray  # (N,) log|V| (ML) or log|V| + log|X'V^-1X| (REML); NaN if singular
    LS: np.ndarray  # (N, m2 (m2 + 1) / 2) L^-1 diag(s), lower triangle by rows
    g1: np.ndarray  # (T,)
    inv_a: np.ndarray  # (T, q1)
    Et: np.ndarray  # (m2, q1) E' of the design, rows contiguous
    t_ptr: np.ndarray  # (T + 1,)
    by_g1: np.ndarray  # (N,)
    face: np.ndarray  # (N,)
    edge: np.ndarray  # (N,)
    thorough: bool  # every face's local minima are candidates (else closed faces')
    nb_ptr: np.ndarray
    nb_idx: np.ndarray


@nb.njit(cache=True, nogil=True)
def _inverse_scaled(L, s, m2, out):
    """``L^-1 diag(s)`` of a lower-triangular ``L``, packed by rows into ``out``.

    Row ``i`` holds columns ``0..i`` at offset ``i (i + 1) / 2``.
    """
    col = np.empty(m2)
    for j in range(m2):
        col[j] = 1.0 / L[j, j]
        for i in range(j + 1, m2):
            acc = 0.0
            for t in range(j, i):
                acc -= L[i, t] * col[t]
            col[i] = acc / L[i, i]
        for i in range(j, m2):
            out[i * (i + 1) // 2 + j] = col[i] * s[j]


@nb.njit(cache=True, nogil=True)
def _factor_points(gamma, dz):
    N, k = gamma.shape
    m2 = dz.rest_factor.shape[0] + dz.p
    w = workspace(dz, k)
    logdet = np.empty(N)
    LS = np.zeros((N, m2 * (m2 + 1) // 2))
    for i in range(N):
        ld_v, ld_x = factor_design(gamma[i], dz, w)
        logdet[i] = ld_v + ld_x if dz.reml else ld_v
        if np.isfinite(logdet[i]):
            _inverse_scaled(w.L, w.s, m2, LS[i])
    return logdet, LS


def prepare_grid(grid: VarianceGrid, dz, thorough: bool) -> GridFactors:
    """Factorise the design at every point of ``grid`` (once per fit)."""
    gamma = np.ascontiguousarray(grid.gamma)
    logdet, LS = _factor_points(gamma, dz)
    g1_all = gamma[:, dz.big]
    g1, t_of = np.unique(g1_all, return_inverse=True)
    by_g1 = np.argsort(t_of, kind="stable").astype(np.int64)
    t_ptr = np.concatenate([[0], np.cumsum(np.bincount(t_of, minlength=len(g1)))]).astype(np.int64)
    inv_a = 1.0 / (1.0 + g1[:, None] * dz.d[None, :])
    return GridFactors(
        gamma=gamma,
        logdet=logdet,
        LS=LS,
        g1=g1,
        inv_a=np.ascontiguousarray(inv_a),
        Et=np.ascontiguousarray(dz.E.T),
        t_ptr=t_ptr,
        by_g1=by_g1,
        face=grid.face,
        edge=grid.edge,
        thorough=bool(thorough),
        nb_ptr=grid.nb_ptr,
        nb_idx=grid.nb_idx,
    )


# Genes screened together: the eight sums of every product run side by side in
# registers, each in its own fixed order (a gene's values do not depend on the
# others in its tile).
TILE = 8


@nb.njit(cache=True, nogil=True, inline="always")
def _dot_tile(coef, start, M, count):
    """``sum_t coef[start + t] * M[t, :TILE]`` for ``t < count``.

    Eight sums side by side, each accumulated in order.
    """
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    for t in range(count):
        c = coef[start + t]
        m = M[t]
        a0 += c * m[0]
        a1 += c * m[1]
        a2 += c * m[2]
        a3 += c * m[3]
        a4 += c * m[4]
        a5 += c * m[5]
        a6 += c * m[6]
        a7 += c * m[7]
    return a0, a1, a2, a3, a4, a5, a6, a7


@nb.njit(cache=True, nogil=True)
def _rhs_tile(gf, t, ZtY, XtY, ss, dz, B1, V, yy):
    """Reduced right-hand sides ``V = b2 - g1 E' (b1 / a)`` (``m2 x TILE``) and ``y'y``.

    Of the tile's genes, at the eliminated factor's ratio ``g1[t]``.
    """
    order = dz.order
    q1 = dz.d.shape[0]
    q2 = dz.rest_factor.shape[0]
    m2 = q2 + dz.p
    n = ZtY.shape[0]
    g1 = gf.g1[t]
    ia = gf.inv_a[t]
    for w in range(TILE):
        yy[w] = ss[w] if w < n else 1.0
        for lv in range(q1):
            z = ZtY[w, order[lv]] if w < n else 0.0
            B1[lv, w] = z * ia[lv]
            yy[w] -= g1 * z * B1[lv, w]
    for i in range(m2):
        acc = _dot_tile(gf.Et[i], 0, B1, q1)
        for w in range(TILE):
            if w < n:
                bi = ZtY[w, order[q1 + i]] if i < q2 else XtY[w, i - q2]
            else:
                bi = 0.0
            V[i, w] = bi - g1 * acc[w]


@nb.njit(cache=True, nogil=True)
def _residual_tile(LS, V, yy, r2):
    """``r2 = y'y - |L^-1 diag(s) v|^2`` of the tile's genes at one point."""
    m2 = V.shape[0]
    r0, r1, r2_, r3, r4, r5, r6, r7 = yy[0], yy[1], yy[2], yy[3], yy[4], yy[5], yy[6], yy[7]
    pos = 0
    for i in range(m2):
        a0, a1, a2, a3, a4, a5, a6, a7 = _dot_tile(LS, pos, V, i + 1)
        pos += i + 1
        r0 -= a0 * a0
        r1 -= a1 * a1
        r2_ -= a2 * a2
        r3 -= a3 * a3
        r4 -= a4 * a4
        r5 -= a5 * a5
        r6 -= a6 * a6
        r7 -= a7 * a7
    r2[0], r2[1], r2[2], r2[3] = r0, r1, r2_, r3
    r2[4], r2[5], r2[6], r2[7] = r4, r5, r6, r7


@nb.njit(cache=True, nogil=True)
def _screen_tile(gf, ZtY, XtY, ss, dz, values, B1, V, yy, r2):
    """The criterion of up to :data:`TILE` genes at every grid point.

    Written into rows of ``values`` (+inf where it cannot be evaluated).
    """
    nu = dz.nu
    const = nu * (1.0 + _LOG_2PI - math.log(nu))
    n = ZtY.shape[0]
    for t in range(gf.g1.shape[0]):
        _rhs_tile(gf, t, ZtY, XtY, ss, dz, B1, V, yy)
        for pi in range(gf.t_ptr[t], gf.t_ptr[t + 1]):
            p = gf.by_g1[pi]
            ld = gf.logdet[p]
            if not np.isfinite(ld):
                for w in range(n):
                    values[w, p] = np.inf
                continue
            _residual_tile(gf.LS[p], V, yy, r2)
            for w in range(n):
                values[w, p] = ld + const + nu * math.log(r2[w]) if r2[w] > 0.0 else np.inf


@nb.njit(cache=True, nogil=True)
def candidate_bounds(face, edge, nb_ptr, nb_idx, values, skip, thorough, bound):
    """How low the basin of every candidate grid point (but ``skip``) may reach.

    Written into ``bound`` (+inf for points that are no candidates).

    Thorough: the local minima among the neighbours on their own face, bounded
    by their value less twice the largest change of the criterion to a
    neighbour; on the grid's edge, where a basin may extend beyond the grid,
    -inf. Otherwise: the local minima among the neighbours on their face and
    the faces of its boundary, with the bound's allowance capped at
    :data:`SPREAD_CAP` (a sharply curved criterion changes by hundreds between
    grid points), the cap itself on the edge.
    """
    for i in range(values.shape[0]):
        bound[i] = np.inf
        vi = values[i]
        if i == skip or not np.isfinite(vi):
            continue
        spread = 0.0
        minimum = True
        for n in range(nb_ptr[i], nb_ptr[i + 1]):
            j = nb_idx[n]
            vj = values[j]
            if not np.isfinite(vj):
                continue
            spread = max(spread, abs(vj - vi))
            compared = face[j] == face[i] if thorough else (face[j] & face[i]) == face[j]
            if compared and vj < vi:
                minimum = False
        if not minimum:
            continue
        if thorough:
            bound[i] = -np.inf if edge[i] else vi - 2.0 * spread
        else:
            bound[i] = vi - (SPREAD_CAP if edge[i] else min(2.0 * spread, SPREAD_CAP))


@nb.njit(cache=True, nogil=True, inline="always")
def _search_gene(
    gf, zy, xy, ss, dz, w, opt, grad, hess, values, x, f_moment, trial, bound, cand, known
):
    """Global search for one gene; the optimum is written into ``x``.

    Starts from its criterion on the grid (``values``) and a moment estimate in ``x``
    (criterion ``f_moment``). Returns (deviance, converged, Newton iterations, descents).
    """
    i0 = int(np.argmin(values))
    # the grid point the first descent starts from (-1: the moment estimate,
    # which leaves the grid's best point a candidate: the two may lie in
    # different basins)
    first = -1
    if not (f_moment <= values[i0]):  # the grid's best point is the better start
        if not np.isfinite(values[i0]):
            x[:] = np.nan
            return np.nan, False, 0, 0
        x[:] = gf.gamma[i0]
        first = i0
    best, converged, n_iter, _, _ = _minimise_gene(
        x, zy, xy, ss, dz, w, opt, grad, hess, known, np.int64(0), np.int64(-1), np.nan,
        np.int64(UNKNOWN),
    )  # fmt: skip
    if not np.isfinite(best):
        best = np.inf
    descents = 1
    known[0] = x
    n_known = np.int64(1)
    # candidate basins, most promising first
    candidate_bounds(gf.face, gf.edge, gf.nb_ptr, gf.nb_idx, values, first, gf.thorough, bound)
    n_cand = 0
    for i in range(bound.shape[0]):
        if bound[i] < best:
            cand[n_cand] = i
            n_cand += 1
    for i in cand[:n_cand][np.argsort(bound[cand[:n_cand]], kind="mergesort")]:
        if descents > MAX_EXTRA_STARTS:
            break
        if not bound[i] < best:
            continue
        trial[:] = gf.gamma[i]
        best, converged, n_known, it = _further_descent(
            trial, x, best, converged, zy, xy, ss, dz, w, opt, grad, hess, known, n_known,
            np.nan, np.int64(UNKNOWN),
        )  # fmt: skip
        n_iter += it
        descents += 1
    best, converged, it, d = _swap_faces(
        x, best, converged, zy, xy, ss, dz, w, opt, grad, hess, trial, known, n_known
    )
    return best, converged, n_iter + it, descents + d


@nb.njit(cache=True, nogil=True)
def swap_starts(centre: np.ndarray) -> np.ndarray:
    """Starts on the faces next to the optimum ``centre``, one per row.

    When factors share their levels' structure (few levels, partly confounded, as
    technical factors assigned per library are), one factor's variance can stand in
    for another's: the criterion then has optima on neighbouring faces, a ridge
    apart, that a coarse grid does not resolve (a difference of up to 16 in the
    deviance on the example design, 0.3% of genes). From an optimum with variances
    at 0, each positive variance ``j`` is moved onto each zero one ``i`` (``x_i =
    x_j``, ``x_j = 0``); from an interior optimum, each is set to 0. At most
    ``k * k`` rows.
    """
    return swap_starts_among(centre, np.ones(centre.shape[0], dtype=np.bool_))


@nb.njit(cache=True, nogil=True)
def swap_starts_among(centre: np.ndarray, among: np.ndarray) -> np.ndarray:
    """:func:`swap_starts` over the coordinates ``among`` only, the others kept.

    For models with random slopes: the variances of terms with one coefficient swap
    (``among``), the coordinates of a term's covariance factor stay as they are.
    """
    k = centre.shape[0]
    n_zero = 0
    for j in range(k):
        if among[j] and centre[j] <= 0.0:
            n_zero += 1
    out = np.empty((k * k, k))
    n = 0
    for j in range(k):
        if not among[j] or centre[j] <= 0.0:
            continue
        for i in range(k):
            if not among[i]:
                continue
            if (n_zero and centre[i] > 0.0) or (not n_zero and i != j):
                continue  # onto each zero variance; or, interior, to 0 (i == j)
            out[n] = centre
            out[n, i] = centre[j]
            out[n, j] = 0.0
            n += 1
    return out[:n]


@nb.njit(cache=True, nogil=True, inline="always")
def _swap_faces(x, best, converged, zy, xy, ss, dz, w, opt, grad, hess, trial, known, n_known):
    """Descents on the faces next to the optimum ``x``; a better optimum replaces it.

    From each of :func:`swap_starts`, a descent first holds the variance the start set
    to 0 there: it ends on that face's optimum, which a free descent from the start
    misses when the criterion leads it back to ``x`` (on the example design with a level
    left out, 8 of 20,800 fits stopped short that way, by up to 0.43 deviance units).
    A free descent then continues from the face's optimum (ending there if the variance
    does not leave 0). Descents that come near an optimum found before are abandoned, and
    a held one also near a face optimum found before on its face (:func:`face_known`).

    Returns (deviance, converged, Newton iterations, descents).
    """
    centre = x.copy()
    starts = swap_starts(centre)
    faces, face_of, near = face_buffers(starts, known)
    hopt = held_options(opt)
    n_iter, n_faces = 0, np.int64(0)
    for s in range(starts.shape[0]):
        trial[:] = starts[s]
        held = zeroed(centre, trial)
        m = face_known(known, n_known, faces, face_of, n_faces, held, near)
        f, _, it, abandoned, left = _minimise_gene(
            trial, zy, xy, ss, dz, w, hopt, grad, hess, near, m, held, np.nan, np.int64(UNKNOWN)
        )
        n_iter += it
        if abandoned or not np.isfinite(f):
            continue
        faces[n_faces], face_of[n_faces] = trial, held
        n_faces += 1
        best, converged, n_known, it = _further_descent(
            trial, x, best, converged, zy, xy, ss, dz, w, opt, grad, hess, known, n_known, f, left
        )
        n_iter += it
    return best, converged, n_iter, starts.shape[0]


@nb.njit(cache=True, nogil=True)
def face_buffers(starts, known):
    """Room for :func:`_swap_faces`'s face optima, their faces, and :func:`face_known`'s."""
    k = starts.shape[1]
    n = starts.shape[0]
    return np.empty((n, k)), np.empty(n, dtype=np.int64), np.empty((known.shape[0] + n, k))


@nb.njit(cache=True, nogil=True)
def face_known(known, n_known, faces, face_of, n_faces, held, out):
    """The optima a descent held on face ``held`` is abandoned near, into ``out``.

    The optima ``known[:n_known]`` and the face optima found before on the same face
    (``faces[:n_faces]``, on the faces ``face_of``): a descent that comes near one of
    those would end on it, and its release would repeat the earlier one (about a tenth
    of the descents' iterations on the example design with a level left out). Returns
    their number.
    """
    n = 0
    for m in range(n_known):
        out[n] = known[m]
        n += 1
    for m in range(n_faces):
        if face_of[m] == held:
            out[n] = faces[m]
            n += 1
    return n


@nb.njit(cache=True, nogil=True)
def zeroed(centre: np.ndarray, start: np.ndarray) -> int:
    """The coordinate a start of :func:`swap_starts` set to 0 (-1 if none)."""
    for j in range(centre.shape[0]):
        if centre[j] > 0.0 and start[j] == 0.0:
            return j
    return -1


@nb.njit(cache=True, nogil=True, inline="always")
def _further_descent(
    trial,
    x,
    best,
    converged,
    zy,
    xy,
    ss,
    dz,
    w,
    opt,
    grad,
    hess,
    known,
    n_known,
    f0=np.nan,
    left=UNKNOWN,
):
    """A descent from ``trial`` after the first; its optimum replaces ``x`` if lower.

    ``f0`` and ``left``: what the descent that ended at ``trial`` left there (the
    release of a face's optimum; see :func:`~.newton._start_values`).

    Returns (best deviance, its convergence, number of optima known, iterations).
    """
    f, conv, it, abandoned, _ = _minimise_gene(
        trial, zy, xy, ss, dz, w, opt, grad, hess, known, n_known, np.int64(-1), f0, left
    )
    if abandoned or not np.isfinite(f):
        return best, converged, n_known, it
    known[n_known] = trial
    # a basin already found, reached again, must not replace it by rounding: which of
    # two descents to one optimum ends lower is noise
    if f < best - TIE * max(1.0, abs(best)):
        best, converged = f, conv
        x[:] = trial
    return best, converged, n_known + 1, it


@nb.njit(cache=True, nogil=True)
def search_batch(gf, X0, F0, ZtY, XtY, ss, dz, opt):
    """Global search for every gene of a batch.

    The moment estimates ``X0`` (``G x k``; NaN rows for none) and their criterion
    ``F0`` are further starting points.

    Returns the optima ``(G, k)``, deviance, residual sum of squares ``r2`` and
    fixed effects at them, convergence flags, Newton iterations and descents.
    """
    G = ZtY.shape[0]
    N, k = gf.gamma.shape
    m2 = dz.rest_factor.shape[0] + dz.p
    w = workspace(dz, k)
    X, dev, r2, beta, converged, n_iter = batch_results(X0, dz.p)
    descents = np.zeros(G, dtype=np.int64)
    grad = np.empty(k)
    hess = np.empty((k, k))
    values = np.empty((TILE, N))
    bound = np.empty(N)
    cand = np.empty(N, dtype=np.int64)
    B1 = np.empty((dz.d.shape[0], TILE))
    V = np.empty((m2, TILE))
    yy = np.empty(TILE)
    r2t = np.empty(TILE)
    trial = np.empty(k)
    # the optima of the first descent, the candidates' and the swaps'
    known = np.empty((MAX_EXTRA_STARTS + 1 + k * k, k))
    for g0 in range(0, G, TILE):
        g1 = min(G, g0 + TILE)
        _screen_tile(gf, ZtY[g0:g1], XtY[g0:g1], ss[g0:g1], dz, values, B1, V, yy, r2t)
        for g in range(g0, g1):
            _, converged[g], n_iter[g], descents[g] = _search_gene(
                gf,
                ZtY[g],
                XtY[g],
                ss[g],
                dz,
                w,
                opt,
                grad,
                hess,
                values[g - g0],
                X[g],
                F0[g],
                trial,
                bound,
                cand,
                known,
            )
            estimates_at(X[g], ZtY[g], XtY[g], ss[g], dz, w, dev, r2, beta, g)
    return X, dev, r2, beta, converged, n_iter, descents
