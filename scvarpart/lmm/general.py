"""Profiled deviance for any random-effect terms: slopes, known covariances, weights.

The model of one gene is ``y = X beta + Z b + e`` with ``b ~ N(0, sigma^2 Gamma)``,
``e ~ N(0, sigma^2 W^-1)``; ``Gamma = Lambda Lambda'`` is block diagonal, ``I_levels (x)
T T'`` for each term (:mod:`.terms`), and ``Lambda`` is linear in lme4's ``theta``. With
weights the cross-products are weighted (``Z'WZ``, ... from the one pass) and the
deviance gains ``-sum(log w)``. As in lme4 (Bates et al. 2015), with ``V = I + Z Gamma
Z'`` (in the weighted metric), ``P = V^-1 - V^-1 X (X'V^-1X)^-1 X'V^-1`` and ``r2 =
y'Py``, :mod:`.profiled` turns ``log|V|``, ``log|X'V^-1X|`` and ``r2`` into the ML
deviance or the REML criterion.

**Elimination.** One term with independent levels (its own block of ``Z'Z`` block
diagonal, ``r x r`` per level: the term with most columns) is eliminated level by
level, as MixedModels.jl does. With ``Z_1`` its columns, ``W = [Z_R X]`` the other
terms' columns and the fixed effects (``m2`` columns), ``C_l`` and ``E_l`` the rows of
level ``l`` in ``Z_1'Z_1`` and ``Z_1'W``, and ``T`` the term's factor::

    L_l L_l' = T'C_l T + I,   H_l = L_l^-1 T'                 (r x r, per level)
    Nt = W'V_1^-1 W = W'W - sum_l (H_l E_l)'(H_l E_l)        (V_1 = I + Z_1 Gamma_1 Z_1')
    S  = P_R' Nt P_R + diag(I, 0) = L L',  P_R = diag(Lambda_R, I_p)
    log|V| = sum_l log|L_l|^2 + log|L_RR|^2,   log|X'V^-1X| = log|L_XX|^2
    r2 = y'V_1^-1 y - |L^-1 P_R' W'V_1^-1 y|^2

so a factorisation costs ``O(levels m2^2)`` and a dense Cholesky of size ``m2``, however
many observations. Without such a term (only known covariances) nothing is eliminated.

**Derivatives** in ``Gamma`` (Harville 1977), with ``M = Z'V^-1 Z`` (ML) or ``Q =
Z'PZ`` (REML) and ``u = Z'Py``::

    d r2 = -u' dGamma u,            d2 r2 = 2 u' dGamma_i Q dGamma_j u - u' d2Gamma u
    d log|V| = tr(M dGamma),        d2 log|V| = tr(M d2Gamma) - tr(M dGamma_i M dGamma_j)

(REML: ``Q`` in place of ``M`` for ``log|V| + log|X'V^-1X|``), with ``dGamma_k = I (x)
(e_a t_b' + t_b e_a')`` for ``theta_k = T[a, b]`` (``t_b`` the column of ``T``). ``M`` and
``Q`` are ``K - Y'Y`` with ``K = Z'V_1^-1 Z`` (block diagonal on the eliminated term:
``F_l C_l`` with ``F_l = (I + C_l T T')^-1``) and ``Y = L^-1 U'``, ``U = Z'V_1^-1 W P_R``
(``m2`` rows; the first ``q2`` of them for ``M``). The sums over pairs of levels of the
eliminated term then reduce to per-level ``r x r`` products and ``m2 x m2`` matrices
``sum_l Y_l A Y_l'``: a gradient and Hessian cost ``O(levels m2^2)`` too. The loops are
compiled (:mod:`._general_kernel`); a batch of genes is one call without the GIL.

**Search** (:mod:`._general_search`): projected Newton (Bertsekas 1982) with the exact
Hessian, stepping in ``gamma = theta^2`` for a diagonal entry alone in its column of
``T`` (where the criterion is smooth at 0 with a derivative that need not vanish
there), in ``log theta`` for other diagonal entries above their scale, else in
``theta``; ``T``'s columns are turned and rotated where a diagonal entry at 0 would
otherwise stop a descent at a point that is no optimum of the covariance. With few
observations per random effect (``thorough``) it descends from moment estimates
(:mod:`._general_starts`), lme4's start and faces of it, best first, abandoning
descents that come near an optimum found before; with many, from the better of the
moment estimates and lme4's start, and from lme4's start too where a term of several
coefficients ends near rank-deficient (such optima often have a rival). Then, as every
engine, it descends on the faces next to the best optimum, each held until it reaches
that face's optimum, then released (:func:`.search.swap_starts_among`): over the
variances of the terms with one coefficient, a term with slopes keeping its factor.
"""

from __future__ import annotations

import threading

import numpy as np
import scipy.sparse as sp

from ..suffstats import DesignGram, ResponseStats
from ._general_kernel import DERIVATIVES, DEVIANCE, ESTIMATES, GeneralDesign
from ._general_search import FACTORS, MINIMISE, SEARCH, Batch, SearchOptions, run_batch
from ._general_starts import MomentStarts
from .profiled import ProfiledDeviance
from .terms import ReTerm

__all__ = ["GeneralDeviance"]

# Observations per random effect below which the search descends from every start.
_THOROUGH_PER_LEVEL = 50


def _eliminated(terms: list[ReTerm]) -> int:
    """The term eliminated level by level (-1: none).

    The one with most columns among those whose own block of ``Z'Z`` is block diagonal.
    """
    candidates = [j for j, t in enumerate(terms) if t.diagonal]
    return max(candidates, key=lambda j: terms[j].n_columns) if candidates else -1


def _diagonal_blocks(ZtZ: sp.csr_matrix, idx1: np.ndarray, l1: int, r1: int) -> np.ndarray:
    """The eliminated term's ``r x r`` blocks of ``Z'Z``, ``(r, r, levels)``."""
    C1 = np.zeros((r1, r1, l1))
    if l1:
        block = ZtZ[idx1][:, idx1].tocoo()
        a_r, l_r = np.divmod(block.row, l1)
        a_c, l_c = np.divmod(block.col, l1)
        same = l_r == l_c
        C1[a_r[same], a_c[same], l_r[same]] = block.data[same]
    return C1


def _column_layout(terms: list[ReTerm], big: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns of ``Z`` of the eliminated term (coefficient by coefficient) and the rest."""
    offsets = np.concatenate([[0], np.cumsum([t.n_columns for t in terms])]).astype(np.int64)
    if big < 0:
        idx1 = np.zeros(0, dtype=np.int64)
    else:
        t = terms[big]
        lv = np.arange(t.n_levels)
        idx1 = np.concatenate([offsets[big] + lv * t.n_coef + a for a in range(t.n_coef)])
    rest = [np.arange(offsets[j], offsets[j + 1]) for j in range(len(terms)) if j != big]
    idxR = np.concatenate(rest).astype(np.int64) if rest else np.zeros(0, dtype=np.int64)
    return idx1.astype(np.int64), idxR


def _parameters(terms: list[ReTerm], big: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per parameter: its term's slot in the kernel, and its position ``(a, b)`` in ``T``.

    Slots: the other terms in order, then the eliminated one.
    """
    n_rest = len(terms) - (big >= 0)
    slot, a, b = [], [], []
    rank = 0
    for j, t in enumerate(terms):
        s = n_rest if j == big else rank
        rank += j != big
        slot += [s] * t.n_theta
        a += list(t.positions[:, 0])
        b += list(t.positions[:, 1])
    return (np.array(slot, np.int64), np.array(a, np.int64), np.array(b, np.int64))


def general_design(
    gram: DesignGram, terms: list[ReTerm], reml: bool, nu: float, log_weights: float
) -> GeneralDesign:
    """The design constants of the compiled kernel (:mod:`._general_kernel`)."""
    big = _eliminated(terms)
    idx1, idxR = _column_layout(terms, big)
    l1, r1 = (terms[big].n_levels, terms[big].n_coef) if big >= 0 else (0, 0)
    ZtZ = sp.csr_matrix(gram.ZtZ)
    E1 = np.hstack([ZtZ[idx1][:, idxR].toarray(), gram.ZtX[idx1]])
    CRR = ZtZ[idxR][:, idxR].toarray()
    GWW = np.block([[CRR, gram.ZtX[idxR]], [gram.ZtX[idxR].T, gram.XtX]])
    rest = [t for j, t in enumerate(terms) if j != big]
    theta_at = np.concatenate([[0], np.cumsum([t.n_theta for t in terms])]).astype(np.int64)
    slot, par_a, par_b = _parameters(terms, big)
    return GeneralDesign(
        p=gram.n_fixed,
        l1=l1,
        r1=r1,
        th1=int(theta_at[big]) if big >= 0 else 0,
        C1=np.ascontiguousarray(_diagonal_blocks(ZtZ, idx1, l1, r1)),
        E1t=np.ascontiguousarray(E1.T),
        GWW=np.ascontiguousarray(GWW),
        idx1=idx1,
        idxR=idxR,
        rt_col=np.cumsum([0] + [t.n_columns for t in rest])[:-1].astype(np.int64),
        rt_lev=np.array([t.n_levels for t in rest], dtype=np.int64),
        rt_r=np.array([t.n_coef for t in rest], dtype=np.int64),
        rt_th=np.array([theta_at[j] for j in range(len(terms)) if j != big], dtype=np.int64),
        par_slot=slot,
        par_a=par_a,
        par_b=par_b,
        rmax=max([t.n_coef for t in terms] + [1]),
        nu=float(nu),
        reml=bool(reml),
        log_weights=float(log_weights),
    )


def search_options(gram: DesignGram, terms: list[ReTerm]) -> SearchOptions:
    """Bounds and coordinates of every parameter for the search.

    The scale of coefficient ``a`` of a term is the ``theta`` at which its levels start
    to inform its variance, ``sqrt(levels / sum z_a^2)`` over the observations (for a
    random intercept ``sqrt(levels / observations)``; the sum of squares of ``Z R`` for
    a known covariance). A random intercept above its scale steps in ``log theta``.
    """
    diag = np.asarray(sp.csr_matrix(gram.ZtZ).diagonal())
    lower, below, even, threshold, scales, nxt = [], [], [], [], [], []
    offset = toff = 0
    for t in terms:
        r, pos = t.n_coef, [tuple(p) for p in t.positions]
        sums = [diag[offset + a : offset + t.n_columns : r].sum() for a in range(r)]
        for a, b in pos:
            diagonal = a == b
            scale = np.sqrt(t.n_levels / sums[a]) if sums[a] > 0 else 1.0
            lower.append(0.0 if diagonal else -np.inf)
            below.append(r - 1 - b if diagonal else 0)
            even.append(diagonal and b == r - 1)
            scales.append(scale)
            threshold.append(scale if diagonal and (r == 1 or b < r - 1) else np.inf)
            nxt.append(toff + pos.index((b + 1, b + 1)) if diagonal and b + 1 < r else -1)
        offset += t.n_columns
        toff += t.n_theta
    return SearchOptions(
        lower=np.array(lower),
        below=np.array(below, dtype=np.int64),
        even=np.array(even),
        threshold=np.array(threshold),
        scale=np.array(scales),
        nxt=np.array(nxt, dtype=np.int64),
    )


def _contiguous(stats: ResponseStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``Z'y``, ``X'y`` and the sums of squares as the kernels take them."""
    return (
        np.ascontiguousarray(stats.ZtY, dtype=np.float64),
        np.ascontiguousarray(stats.XtY, dtype=np.float64),
        np.ascontiguousarray(stats.ss, dtype=np.float64),
    )


class GeneralDeviance(ProfiledDeviance):
    """Profiled deviance, exact gradient and Hessian in lme4's ``theta``, batched.

    Parameters
    ----------
    gram
        Cross-products of the design (weighted, with weights), ``Z`` in the columns of
        ``terms``.
    terms
        The random-effect terms, in the order of the columns of ``Z``.
    reml
        REML criterion instead of the ML deviance.
    """

    coordinates = "theta"

    def __init__(self, gram: DesignGram, terms: list[ReTerm], reml: bool):
        super().__init__(gram, reml)
        self.terms = list(terms)
        self.q = sum(t.n_columns for t in terms)
        if self.q != gram.n_levels:
            raise ValueError(f"The terms have {self.q} columns; Z'Z has {gram.n_levels}.")
        self.k = sum(t.n_theta for t in terms)
        self.lower = np.concatenate([t.lower for t in terms])
        self.theta0 = np.concatenate([t.theta0 for t in terms])
        self.design = general_design(gram, self.terms, reml, self.nu, self.log_weights)
        self.options = search_options(gram, self.terms)
        self._moments: MomentStarts | None = None
        self._lock = threading.Lock()

    @property
    def n_params(self) -> int:
        """Number of covariance parameters ``theta``."""
        return self.k

    def thorough(self) -> bool:
        """Whether the search descends from every start, not only the best.

        With few observations per random effect the criterion is flat and separate
        optima are common (and descents cheap); with many, the moment estimates start
        next to the optimum.
        """
        return self.n < _THOROUGH_PER_LEVEL * self.q

    # -- evaluations ------------------------------------------------------------------

    def _run(
        self,
        task: int,
        theta: np.ndarray,
        stats: ResponseStats | None = None,
        gene_starts: np.ndarray | None = None,
    ) -> Batch:
        """One call of the compiled :func:`~._general_search.run_batch`."""
        X0 = np.ascontiguousarray(np.atleast_2d(theta), dtype=np.float64)
        k = self.k
        if gene_starts is None:
            gene_starts = np.empty((len(X0), 0, k))
        fixed = self._fixed_starts() if task == SEARCH else np.empty((0, k))
        if stats is None:
            arrays = (np.empty((0, self.q)), np.empty((0, self.p)), np.empty(0))
        else:
            arrays = _contiguous(stats)
        return run_batch(
            task,
            X0,
            np.ascontiguousarray(gene_starts, dtype=np.float64),
            fixed,
            *arrays,
            self.design,
            self.options,
            self.thorough(),
        )

    def deviance(self, theta: np.ndarray, stats: ResponseStats) -> np.ndarray:
        """Deviance (ML) or REML criterion of each gene at ``theta`` (``G x k``)."""
        return self._run(DEVIANCE, theta, stats).dev

    def derivatives(
        self, theta: np.ndarray, stats: ResponseStats
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Criterion, gradient (``G x k``) and Hessian (``G x k x k``) in ``theta``."""
        out = self._run(DERIVATIVES, theta, stats)
        return out.dev, out.grad, out.hess

    def _derivatives(self, theta, zy, xy, ss) -> tuple[float, np.ndarray, np.ndarray]:
        """Criterion, gradient and Hessian of one gene (its ``Z'y``, ``X'y``, ``y'y``)."""
        one = ResponseStats(
            n_obs=self.n,
            mean=np.zeros(1),
            ss=np.atleast_1d(float(ss)),
            ZtY=np.atleast_2d(zy),
            XtY=np.atleast_2d(xy),
            n_nonzero=np.full(1, self.n),
        )
        dev, grad, hess = self.derivatives(np.atleast_2d(theta), one)
        return float(dev[0]), grad[0], hess[0]

    def estimates(
        self, theta: np.ndarray, stats: ResponseStats
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Deviance, residual variance ``sigma^2`` and fixed effects (centred X)."""
        out = self._run(ESTIMATES, theta, stats)
        return out.dev, out.r2 / self.nu, out.beta

    def fixed_factor(self, gamma: np.ndarray) -> np.ndarray:
        """Lower Cholesky factor of ``X'V^-1 X`` at each row (``G x p x p``, NaN if none)."""
        return self._run(FACTORS, gamma).factors

    # -- the search -------------------------------------------------------------------

    def moment_starts(self, stats: ResponseStats) -> np.ndarray:
        """MINQUE(0) estimates in ``theta`` (``G x k``; NaN rows where they fail)."""
        with self._lock:  # computed once, by the first batch that needs it
            if self._moments is None:
                self._moments = MomentStarts(self.gram, self.terms)
        return self._moments.theta(stats)

    def _fixed_starts(self) -> np.ndarray:
        """Starts shared by every gene: lme4's, scaled versions, and every term at 0."""
        base = self.theta0
        starts = [base, 0.3 * base, 3.0 * base]
        offset = 0
        for t in self.terms:
            x = base.copy()
            x[offset : offset + t.n_theta] = 0.0
            starts.append(x)
            offset += t.n_theta
        return np.ascontiguousarray(starts, dtype=np.float64)

    def search(self, stats: ResponseStats, theta0: np.ndarray, f0: np.ndarray):
        """The best optimum of every gene over several starts.

        ``theta0`` (``G x k``, NaN rows for none) is a further start of each gene;
        ``f0`` is not used (every start is screened here). Returns the optima ``(G,
        k)``, the objective, the residual variance and fixed effects (centred X) at
        them, convergence flags, iterations and descents.
        """
        theta0 = np.atleast_2d(theta0)
        starts = np.stack([theta0, self.moment_starts(stats)], axis=1)
        out = self._run(SEARCH, np.zeros_like(theta0), stats, starts)
        return (
            out.theta,
            out.dev,
            out.r2 / self.nu,
            out.beta,
            out.converged,
            out.n_iter,
            out.descents,
        )

    def minimise(self, theta0: np.ndarray, stats: ResponseStats):
        """Newton's method from ``theta0`` only (a local optimum)."""
        out = self._run(MINIMISE, theta0, stats)
        return out.theta, out.dev, out.r2 / self.nu, out.beta, out.converged, out.n_iter
