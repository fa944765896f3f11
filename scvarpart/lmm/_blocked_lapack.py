"""The blocked engine's dense path: LAPACK on a Schur complement whose factor fills in.

Used by :class:`~scvarpart.lmm.blocked.BlockedDeviance` where a sparse factor of the
Schur complement ``S`` would be nearly dense anyway (lme4's InstEval: 1,143 levels
and fixed effects coupled through 2,972 students). The mathematics is that of
:mod:`scvarpart.lmm.blocked`; here the exact gradient uses the dense inverse of ``S``.
Python and NumPy, one gene at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np
import scipy.linalg
import scipy.sparse as sp

from ..suffstats import DesignGram, ResponseStats
from ._sparse_kernel import columns
from .grid import variance_grid
from .newton import NewtonOptions, held_options, minimise_callable
from .profiled import ProfiledDeviance
from .search import MAX_EXTRA_STARTS, TIE, candidate_bounds, swap_starts, zeroed

__all__ = ["LapackSchur"]


@nb.njit(cache=True, nogil=True)
def _upper_gram(Ep, Ei, Ex, Cp, Ci, Cx, Cu, weight, out):
    """The upper triangle of ``out = E' diag(weight) E``, from ``E`` by rows and by columns.

    ``E`` by columns is :func:`~._sparse_kernel.columns`'s; rows' columns ascend.
    Row ``b`` of the result: every product of column ``b`` with a later column, in
    order of ``E``'s rows. The strict lower triangle is left unset.
    """
    m = out.shape[0]
    for b in range(m):
        row = out[b]
        row[b:] = 0.0
        for t in range(Cp[b], Cp[b + 1]):
            lv = Ci[t]
            f = weight[lv] * Cx[t]
            for u in range(Cu[t], Ep[lv + 1]):
                row[Ei[u]] += f * Ex[u]


@nb.njit(cache=True, nogil=True)
def _schur(G22, K, kidx, t1, s, active, q2):
    """The lower triangle of ``S = s s' * (G22 - t1 K) + I`` (levels) on ``active`` rows.

    ``K``'s upper triangle is read at ``kidx`` (``active`` for a full ``K``, or
    ``0..n-1`` for ``K`` on the active rows only). Returned in Fortran order, which
    LAPACK factorises in place, with the upper triangle 0: LAPACK reads the lower one
    and leaves the upper as it is, so that the factor is a triangular matrix.
    """
    n = len(active)
    out = np.empty((n, n))  # out[j, i] is S's (i, j): out.T is S in Fortran order
    for j in range(n):
        a, ka = active[j], kidx[j]
        sa = s[a]
        out[j, :j] = 0.0
        for i in range(j, n):  # G22 symmetric, K by its upper triangle: rows a, ka
            b = active[i]
            out[j, i] = (G22[a, b] - t1 * K[ka, kidx[i]]) * sa * s[b]
        if a < q2:
            out[j, j] += 1.0
    return out.T


@nb.njit(cache=True, nogil=True)
def _symmetric_n(G22, K, t1):
    """``N = G22 - t1 K``, every entry, from ``K``'s upper triangle."""
    m = G22.shape[0]
    N = np.empty((m, m))
    for i in range(m):
        for j in range(i, m):
            N[i, j] = N[j, i] = G22[i, j] - t1 * K[i, j]
    return N


@nb.njit(cache=True, nogil=True)
def _rows_inner(Ep, Ei, Ex, weight, A, s, rows):
    """``<s s' * A, E' diag(weight) E>`` over the leading ``rows``, ``A`` by its lower triangle.

    Row by row of ``E`` (columns ascending): ``sum_l weight_l (s e_l)' A (s e_l)``,
    without forming ``E' diag(weight) E``.
    """
    total = 0.0
    for lv in range(len(Ep) - 1):
        acc = 0.0
        for u in range(Ep[lv], Ep[lv + 1]):
            a = Ei[u]
            if a >= rows:
                break
            va = Ex[u] * s[a]
            cross = 0.0
            for v in range(u + 1, Ep[lv + 1]):
                b = Ei[v]
                if b >= rows:
                    break
                cross += A[b, a] * Ex[v] * s[b]
            acc += va * (va * A[a, a] + 2.0 * cross)
        total += weight[lv] * acc
    return total


@dataclass(eq=False)
class _Factor:
    """The gene-independent factorisation at one ``gamma``.

    Levels whose variance ratio is 0 (``s = 0``) have rows of the identity in ``S``,
    and so in its factor: ``L`` is the factor of ``S`` on the other rows only,
    ``active``. The grid of the search has many such points, each a factorisation
    of a matrix much smaller than ``S``.
    """

    gamma: np.ndarray
    w: np.ndarray  # 1 / (1 + gamma_1 d), the eliminated factor's weights
    s: np.ndarray  # sqrt(gamma) of every remaining level, 1 for the fixed effects
    active: np.ndarray  # rows of S that are not rows of the identity, ascending
    L: np.ndarray  # lower Cholesky factor of S = s s' * N + I (levels) on `active`
    logdet_v: float
    logdet_x: float
    dense: tuple[np.ndarray, np.ndarray] | None = None  # (L on every row, N), on demand

    def solve(self, rhs: np.ndarray, trans: str = "N") -> np.ndarray:
        """``L^-1 rhs`` (or ``L^-T rhs``) of the factor on every row."""
        a = self.active
        if len(a) == len(rhs):  # every row: no gather and scatter
            return scipy.linalg.solve_triangular(
                self.L, rhs, lower=True, trans=trans, check_finite=False
            )
        out = np.array(rhs, dtype=float)
        out[a] = scipy.linalg.solve_triangular(
            self.L, out[a], lower=True, trans=trans, check_finite=False
        )
        return out


class LapackSchur(ProfiledDeviance):
    """Profiled deviance, exact gradient and average information, one gene at a time.

    The largest factor is eliminated.

    Parameters
    ----------
    gram
        Cross-products of the design.
    reml
        REML criterion instead of the ML deviance.
    """

    hessian = "average information"

    def __init__(self, gram: DesignGram, reml: bool):
        super().__init__(gram, reml)
        sizes = np.asarray(gram.factor_sizes)
        self.big = int(np.argmax(sizes))
        level_factor = gram.level_factor
        self.idx1 = np.flatnonzero(level_factor == self.big)
        self.idx2 = np.flatnonzero(level_factor != self.big)
        self.rest_factor = level_factor[self.idx2]
        self.q2 = len(self.idx2)
        C = gram.ZtZ.tocsr()
        self.d = C.diagonal()[self.idx1]
        # E = [C12, Z1'X] (sparse, q1 x m); G22 = [[C22, Z2'X], [X'Z2, X'X]]
        C12 = C[self.idx1][:, self.idx2]
        self.E = sp.hstack([C12, sp.csr_matrix(gram.ZtX[self.idx1])]).tocsr()
        self.Et = self.E.T.tocsr()
        self.E_csc = self.E.tocsc()
        self.C1R = C12
        C22 = C[self.idx2][:, self.idx2].toarray()
        Z2X = gram.ZtX[self.idx2]
        self.G22 = np.block([[C22, Z2X], [Z2X.T, gram.XtX]])
        self.E.sort_indices()
        Ep, Ei = self.E.indptr.astype(np.int64), self.E.indices.astype(np.int64)
        Ex = self.E.data.astype(float)
        self._rows = (Ep, Ei, Ex)
        self._cols = columns(Ep, Ei, Ex, self.G22.shape[0])
        self.tau = 1e-6 * self.gamma_scale  # below: traces without dividing by gamma_j
        # levels of each remaining factor, as positions among the q2 levels
        self.rest_levels = [np.flatnonzero(self.rest_factor == j) for j in range(self.k)]
        self.options = NewtonOptions(threshold=np.ascontiguousarray(self.gamma_scale))
        self._held_options = held_options(self.options)  # of the held descents
        self._last: _Factor | None = None
        self._last_gram: tuple[float, np.ndarray] | None = None
        self._grid = None

    # -- the factorisation -------------------------------------------------------

    def _factor(self, gamma: np.ndarray) -> _Factor | None:
        """Factorise at ``gamma``.

        The last factorisation is kept: Newton's method asks for derivatives where it
        last evaluated.
        """
        last = self._last
        if last is not None and np.array_equal(last.gamma, gamma):
            return last
        t1 = gamma[self.big]
        w = 1.0 / (t1 * self.d + 1.0)
        s = np.concatenate([np.sqrt(gamma[self.rest_factor]), np.ones(self.p)])
        active = np.flatnonzero(s)
        K, kidx = self._active_gram(t1, w, active)
        S = _schur(self.G22, K, kidx, t1, s, active, self.q2)
        L, info = scipy.linalg.lapack.dpotrf(S, lower=1, overwrite_a=1, clean=0)
        if info != 0:
            return None
        logdiag = np.log(np.diagonal(L))
        n_levels = len(active) - self.p  # the fixed effects' rows are the last
        fac = _Factor(
            gamma=gamma.copy(),
            w=w,
            s=s,
            active=active,
            L=L,
            logdet_v=float(-np.log(w).sum() + 2 * logdiag[:n_levels].sum()),
            logdet_x=float(2 * logdiag[n_levels:].sum()),
        )
        self._last = fac
        return fac

    def _active_gram(self, t1: float, w: np.ndarray, active: np.ndarray):
        """``E' diag(w) E`` for ``S`` on the ``active`` rows, and where to read it.

        A few active rows (variance ratios of the large factors at 0) get a product
        of their own columns of ``E``; otherwise the whole product, kept for the
        next call.
        """
        if t1 == 0:  # K is multiplied by 0: G22 stands in for it (finite, its shape)
            return self.G22, active
        if 4 * len(active) > self.G22.shape[0]:
            return self._weighted_gram(t1, w), active
        Ea = self.E_csc[:, active]
        K = (Ea.T @ Ea.multiply(w[:, None])).toarray()
        return K, np.arange(len(active))

    def _weighted_gram(self, t1: float, w: np.ndarray) -> np.ndarray:
        """``E' diag(w) E`` (its upper triangle) for the ratio ``t1``, kept for the next call.

        Grid points that share ``t1`` share it: the screen visits them in a row.
        """
        last = self._last_gram  # one read: batches may run in threads
        if last is None or last[0] != t1:
            last = self._last_gram = (t1, self._gram(w))
        return last[1]

    def _dense(self, fac: _Factor) -> tuple[np.ndarray, np.ndarray]:
        """The factor on every row and ``N = G22 - t1 E' diag(w) E``, for derivatives."""
        if fac.dense is None:
            m = len(fac.s)
            if len(fac.active) == m:
                L = fac.L
            else:
                L = np.eye(m, order="F")
                L[np.ix_(fac.active, fac.active)] = fac.L
            t1 = fac.gamma[self.big]
            N = self.G22 if t1 == 0 else _symmetric_n(self.G22, self._weighted_gram(t1, fac.w), t1)
            fac.dense = (L, N)
        return fac.dense

    def _gram(self, weight: np.ndarray) -> np.ndarray:
        """The upper triangle of ``E' diag(weight) E``, dense."""
        m = self.G22.shape[0]
        out = np.empty((m, m))
        (Ep, Ei, Ex), (Cp, Ci, Cx, Cu) = self._rows, self._cols
        _upper_gram(Ep, Ei, Ex, Cp, Ci, Cx, Cu, np.ascontiguousarray(weight), out)
        return out

    def _residual(self, fac: _Factor, B1: np.ndarray, B2: np.ndarray, ss: np.ndarray):
        """``r2`` of genes (rows of ``B1``, ``B2``) and ``c = L^-1 rhs`` (columns)."""
        t1 = fac.gamma[self.big]
        wb1 = B1 * fac.w
        yy = ss - t1 * np.einsum("gl,gl->g", wb1, B1)
        rhs = (B2 - t1 * (self.Et @ wb1.T).T) * fac.s
        c = fac.solve(rhs.T)  # rows of the identity in L: rhs's, 0 as s is
        return yy - np.einsum("mg,mg->g", c, c), c

    def derivatives(self, gamma: np.ndarray, stats: ResponseStats):
        """Criterion, exact gradient and average information of every gene at ``gamma``."""
        B1, B2 = self._split(stats)
        parts = [self._derivatives(gamma[i], B1[i], B2[i], stats.ss[i]) for i in range(len(gamma))]
        dev = np.array([p[0] for p in parts])
        grad = np.array([p[1] for p in parts]).reshape(len(gamma), self.k)
        hess = np.array([p[2] for p in parts]).reshape(len(gamma), self.k, self.k)
        return dev, grad, hess

    def _split(self, stats: ResponseStats):
        return stats.ZtY[:, self.idx1], np.concatenate([stats.ZtY[:, self.idx2], stats.XtY], 1)

    def _objective(self, fac: _Factor, r2):
        return self.criterion(fac.logdet_v, fac.logdet_x, r2)

    def deviance(self, gamma: np.ndarray, stats: ResponseStats) -> np.ndarray:
        """Deviance (ML) or REML criterion of each gene at ``gamma`` (``G x k``)."""
        B1, B2 = self._split(stats)
        return np.array(
            [self._objective_at(gamma[i], B1[i], B2[i], stats.ss[i]) for i in range(len(stats))]
        )

    def estimates(
        self, gamma: np.ndarray, stats: ResponseStats
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Deviance, residual variance ``sigma^2`` and fixed effects (centred X)."""
        G = len(stats)
        dev = np.full(G, np.nan)
        sigma2 = np.full(G, np.nan)
        beta = np.full((G, self.p), np.nan)
        B1, B2 = self._split(stats)
        for i in range(G):
            fac = self._factor(gamma[i]) if np.isfinite(gamma[i]).all() else None
            if fac is None:
                continue
            r2, c = self._residual(fac, B1[i : i + 1], B2[i : i + 1], stats.ss[i : i + 1])
            dev[i] = self._objective(fac, r2)[0]
            sol = fac.solve(c[:, 0], trans="T")
            sigma2[i] = r2[0] / self.nu
            beta[i] = sol[self.q2 :]
        return dev, sigma2, beta

    def fixed_factor(self, gamma: np.ndarray) -> np.ndarray:
        """Lower Cholesky factor of ``X'V^-1 X`` at each row of ``gamma``.

        ``G x p x p``, NaN rows where it does not exist: the trailing block of the
        factor of the Schur complement.
        """
        out = np.full((len(gamma), self.p, self.p), np.nan)
        for i, g in enumerate(gamma):
            fac = self._factor(g) if np.isfinite(g).all() else None
            if fac is not None:
                out[i] = fac.L[-self.p :, -self.p :]
        return out

    # -- derivatives ---------------------------------------------------------------

    def _traces(self, fac: _Factor) -> np.ndarray:
        """``tr D_jj`` per factor (gene-independent), as in :mod:`.blocked`.

        From ``S_r^-1`` (``r`` the rows of ``D``): the eliminated factor's from
        ``<s s' * S_r^-1, E' diag(w^2) E>``, another's from the diagonal of ``S_r^-1``,
        or near ``gamma_j = 0`` from ``N_j' S_r^-1 N_j``.
        """
        m = len(fac.s)
        rows = m if self.reml else self.q2  # Q = Z'PZ (REML) or M = Z'V^-1 Z (ML)
        tr = np.empty(self.k)
        L, N = self._dense(fac)
        # S_r^-1 from the factor (LAPACK's dpotri: its lower triangle is set)
        A = scipy.linalg.lapack.dpotri(L[:rows, :rows], lower=1)[0]
        diag_inv = np.diagonal(A)[: self.q2].copy()
        Ep, Ei, Ex = self._rows
        tr[self.big] = np.dot(self.d, fac.w) - _rows_inner(Ep, Ei, Ex, fac.w**2, A, fac.s, rows)
        for j in range(self.k):
            lv = self.rest_levels[j] if j != self.big else None
            if lv is None:
                continue
            if fac.gamma[j] >= self.tau[j]:
                tr[j] = (len(lv) - diag_inv[lv].sum()) / fac.gamma[j]
                continue
            W = scipy.linalg.solve_triangular(  # L_r^-1 (s * N[:, lv])
                L[:rows, :rows], fac.s[:rows, None] * N[:rows, lv], lower=True
            )
            tr[j] = np.diagonal(N)[lv].sum() - np.einsum("rl,rl->", W, W)
        return tr

    def _q_product(self, fac: _Factor, U1: np.ndarray, UR: np.ndarray):
        """``Q u``, that is ``(C~ - F' S^-1 F) u``, of a vector ``u``.

        ``u`` is given by its eliminated-level part ``U1`` and its remaining-level part
        ``UR``.
        """
        s = fac.s
        L, N = self._dense(fac)
        wu = fac.w * U1
        Fu = s * (self.Et @ wu + N[:, : self.q2] @ UR)
        z = s * scipy.linalg.cho_solve((L, True), Fu, check_finite=False)
        out1 = self.d * wu + fac.w * (self.C1R @ UR) - fac.w * (self.E @ z)
        outR = (self.Et @ wu)[: self.q2] + N[: self.q2, : self.q2] @ UR - (N @ z)[: self.q2]
        return out1, outR

    def _derivatives(self, gamma: np.ndarray, b1, b2, ss):
        """Objective, exact gradient and average information of one gene."""
        fac = self._factor(gamma)
        if fac is None:
            return np.nan, np.full(self.k, np.nan), np.full((self.k, self.k), np.nan)
        r2, c = self._residual(fac, b1[None], b2[None], np.array([ss]))
        r2 = float(r2[0])
        f = float(self._objective(fac, np.array([r2]))[0])
        t1 = gamma[self.big]
        # u = Z'Py from c-hat = L^-T c
        sc = fac.s * fac.solve(c[:, 0], trans="T")
        N = self._dense(fac)[1]
        wb1 = fac.w * b1
        u1 = wb1 - fac.w * (self.E @ sc)
        uR = b2[: self.q2] - (N @ sc)[: self.q2] - t1 * (self.Et @ wb1)[: self.q2]
        parts = []
        for j in range(self.k):
            if j == self.big:
                parts.append((u1, np.zeros(self.q2)))
            else:
                v = np.zeros(self.q2)
                v[self.rest_levels[j]] = uR[self.rest_levels[j]]
                parts.append((np.zeros(len(u1)), v))
        uu = np.array([p1 @ p1 + pR @ pR for p1, pR in parts])
        Qu = [self._q_product(fac, p1, pR) for p1, pR in parts]
        uQu = np.array([[pi1 @ q1 + piR @ qR for (q1, qR) in Qu] for (pi1, piR) in parts])
        nu = self.nu
        grad = self._traces(fac) - nu * uu / r2
        ai = nu * (uQu / r2 - np.outer(uu, uu) / r2**2)
        return f, grad, 0.5 * (ai + ai.T)

    # -- the search ------------------------------------------------------------------

    @property
    def grid(self):
        """The coarse grid of the global search.

        A point costs a factorisation of ``S``, shared by all genes.
        """
        if self._grid is None:
            self._grid = variance_grid(self.k, level=-1)
        return self._grid

    def _screen(self, B1, B2, ss) -> np.ndarray:
        """Every gene's criterion at every grid point.

        ``G x N``, +inf where it cannot be evaluated.
        """
        grid = self.grid
        values = np.full((len(ss), len(grid)), np.inf)
        # points sharing the eliminated factor's ratio in a row: one E' diag(w) E each
        for p in np.argsort(grid.gamma[:, self.big], kind="stable"):
            fac = self._factor(grid.gamma[p])
            if fac is None:
                continue
            r2, _ = self._residual(fac, B1, B2, ss)
            with np.errstate(invalid="ignore", divide="ignore"):
                f = self._objective(fac, r2)
            values[:, p] = np.where(np.isfinite(f), f, np.inf)
        return values

    def _descend(self, x, b1, b2, ss, known=(), held=-1):
        return minimise_callable(
            x,
            lambda g: self._objective_at(g, b1, b2, ss),
            lambda g: self._derivatives(g, b1, b2, ss),
            self.options if held < 0 else self._held_options,
            known,
            held,
        )

    def _objective_at(self, gamma, b1, b2, ss) -> float:
        """One gene's criterion at ``gamma`` (NaN where it cannot be evaluated)."""
        fac = self._factor(gamma)
        if fac is None:
            return np.nan
        r2, _ = self._residual(fac, b1[None], b2[None], np.array([ss]))
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(self._objective(fac, r2)[0])

    def minimise(self, gamma0: np.ndarray, stats: ResponseStats):
        """Newton's method from ``gamma0`` only (a local optimum).

        Returns the minimisers, objective, residual variance, fixed effects,
        convergence flags and iterations.
        """
        B1, B2 = self._split(stats)
        X = np.array(gamma0, dtype=float)
        converged = np.zeros(len(stats), dtype=bool)
        n_iter = np.zeros(len(stats), dtype=int)
        for g in range(len(stats)):
            _, converged[g], n_iter[g], _ = self._descend(X[g], B1[g], B2[g], stats.ss[g])
        dev, sigma2, beta = self.estimates(X, stats)
        return X, dev, sigma2, beta, converged, n_iter

    def _further(self, trial, found, known, b1, b2, ss):
        """A descent from ``trial`` after the first.

        Returns ``found`` (criterion, convergence, optimum), replaced where the descent
        ends lower, and the descent's iterations.
        """
        f, c, it, abandoned = self._descend(trial, b1, b2, ss, known)
        if abandoned or not np.isfinite(f):
            return found, it
        known.append(trial.copy())
        # an optimum reached again must not replace the earlier one by rounding
        if f < found[0] - TIE * max(1.0, abs(found[0])):
            return (f, c, trial), it
        return found, it

    def search(self, stats: ResponseStats, gamma0: np.ndarray, f0: np.ndarray):
        """The global optimum of every gene.

        The strategy of :mod:`.search`, on a coarser grid, also starting from ``gamma0``
        (NaN rows for none), where the criterion is ``f0``.

        Returns the optima ``(G, k)``, the objective, the residual variance and
        fixed effects (centred X) at them, convergence flags, Newton iterations
        and the number of descents.
        """
        G, k = len(stats), self.k
        B1, B2 = self._split(stats)
        values = self._screen(B1, B2, stats.ss)
        grid = self.grid
        X = np.full((G, k), np.nan)
        converged = np.zeros(G, dtype=bool)
        n_iter = np.zeros(G, dtype=int)
        descents = np.zeros(G, dtype=int)
        bound = np.empty(len(grid))
        for g in range(G):
            b1, b2, ss = B1[g], B2[g], stats.ss[g]
            i0 = int(np.argmin(values[g]))
            x = gamma0[g].copy()
            # the grid point the first descent starts from (-1: the moment estimate,
            # which leaves the grid's best point a candidate)
            first = -1
            if not f0[g] <= values[g, i0]:
                if not np.isfinite(values[g, i0]):
                    continue
                x = grid.gamma[i0].copy()
                first = i0
            best, conv, it, _ = self._descend(x, b1, b2, ss)
            best = best if np.isfinite(best) else np.inf
            known = [x.copy()]
            total, count = it, 1
            candidate_bounds(
                grid.face, grid.edge, grid.nb_ptr, grid.nb_idx, values[g], first, False, bound
            )
            found = (best, conv, x)
            for i in np.argsort(bound, kind="mergesort"):
                if count > MAX_EXTRA_STARTS or bound[i] == np.inf:
                    break
                if not bound[i] < found[0]:
                    continue
                found, it = self._further(grid.gamma[i].copy(), found, known, b1, b2, ss)
                total, count = total + it, count + 1
            # the faces next to the optimum, each descended on, then left
            # (:func:`.search._swap_faces`)
            centre = found[2].copy()
            faces: list[tuple[int, np.ndarray]] = []  # face optima (:func:`.search.face_known`)
            for trial in swap_starts(centre):
                face = zeroed(centre, trial)
                near = known + [y for j, y in faces if j == face]
                f, _, it, abandoned = self._descend(trial, b1, b2, ss, near, face)
                total, count = total + it, count + 1
                if abandoned or not np.isfinite(f):
                    continue
                faces.append((face, trial.copy()))
                found, it = self._further(trial, found, known, b1, b2, ss)
                total += it
            _, converged[g], X[g] = found
            n_iter[g], descents[g] = total, count
        dev, sigma2, beta = self.estimates(np.nan_to_num(X, nan=1.0), stats)
        bad = ~np.isfinite(X).all(axis=1)
        dev[bad], sigma2[bad], beta[bad] = np.nan, np.nan, np.nan
        return X, dev, sigma2, beta, converged, n_iter, descents
