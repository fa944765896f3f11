"""Conditional modes (BLUPs) of the random effects and their conditional variances.

At the optimum ``theta`` of a gene, the random effects' conditional modes are
``b = Lambda u`` with ``u`` the random-effect part of the solution of the penalised
system ``Omega [u; beta] = [Lambda'Z'y; X'y]`` (notation of :mod:`.general`), and their
conditional covariance given ``beta`` is ``sigma^2 Lambda Omega_uu^-1 Lambda'``, as lme4's
``ranef(condVar = TRUE)``. For a term with a known covariance ``K = R R'`` between its
levels the effects on the levels are ``R b`` (:mod:`scvarpart.design.relmat`).

Everything comes from the sufficient statistics. As the engines do, the largest term
with independent levels (``e``) is eliminated level by level: its block ``A`` of
``Omega`` is block diagonal (``r x r`` per level), which leaves the dense Schur
complement ``S = C - B' A^-1 B`` over the other terms' levels and the fixed effects.
Then ``Omega_uu^-1`` is ``S_RR^-1`` on the other levels (``S_RR`` the levels' block of
``S``) and, on level ``l`` of ``e``, ``A_l^-1 + A_l^-1 B_l S_RR^-1 B_l' A_l^-1`` with
``B_l`` that level's (sparse) rows of ``B``. The per-gene cost is a factorisation of
``S``: thousands of levels of one factor (cells' donors, InstEval's students) cost
nothing beyond their number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from ..suffstats import DesignGram, ResponseStats
from .terms import ReTerm

__all__ = ["MAX_DENSE_SIZE", "conditional_modes"]

#: Largest Schur complement (levels of the terms not eliminated plus fixed effects) for
#: which modes are computed: it is factorised densely, gene by gene.
MAX_DENSE_SIZE = 6000

# Rows of B S_RR^-1 formed at a time (dense, rows x levels): bounds the memory.
_CHUNK = 2048
# Random intercepts with at most this many levels plus fixed effects: every gene's system
# is solved densely, a batch of genes per call (no elimination needed).
_BATCHED_SIZE = 400
# Genes per batch of the dense path: bounds the memory of their systems.
_GENES_PER_BATCH = 512


def _term_blocks(terms: Sequence[ReTerm]) -> list[slice]:
    stops = np.cumsum([t.n_columns for t in terms])
    return [slice(int(b - t.n_columns), int(b)) for t, b in zip(terms, stops, strict=True)]


def _eliminated(terms: Sequence[ReTerm]) -> int | None:
    """The term with most columns among those with independent levels (``None``: none)."""
    free = [j for j, t in enumerate(terms) if t.diagonal]
    return max(free, key=lambda j: terms[j].n_columns) if free else None


def _lambda(terms: Sequence[ReTerm], theta: np.ndarray) -> sp.csr_matrix:
    """``Lambda`` (``q x q``, sparse block diagonal) at ``theta``."""
    blocks, start = [], 0
    for t in terms:
        T = t.factor(theta[start : start + t.n_theta])
        blocks.append(sp.kron(sp.identity(t.n_levels), T, format="csr"))
        start += t.n_theta
    return sp.block_diag(blocks, format="csr")


class _Split(NamedTuple):
    """The design's cross-products split into the eliminated term and the rest."""

    e: np.ndarray  # columns of Z in the eliminated term
    rest: np.ndarray  # the other columns of Z
    r: int  # coefficients per level of the eliminated term
    Zee: sp.csr_matrix  # Z_e'Z_e
    ZeR: sp.csr_matrix  # Z_e'Z_R
    G_rest: np.ndarray  # [[Z_R'Z_R, Z_R'X], [X'Z_R, X'X]], dense
    ZeX: np.ndarray  # Z_e'X


def _split(gram: DesignGram, terms: Sequence[ReTerm]) -> _Split:
    blocks = _term_blocks(terms)
    j = _eliminated(terms)
    q = gram.n_levels
    e = np.arange(q)[blocks[j]] if j is not None else np.arange(0)
    rest = np.setdiff1d(np.arange(q), e)
    m = len(rest) + gram.n_fixed
    if m > MAX_DENSE_SIZE:
        raise ValueError(
            f"BLUPs need a dense factorisation of {m} rows per gene (the levels of every "
            f"term but the largest, plus the fixed effects); at most {MAX_DENSE_SIZE} are "
            "supported. Fit without store_blups, or with fewer levels in the smaller terms."
        )
    ZtZ = gram.ZtZ.tocsr()
    ZRX = gram.ZtX[rest]
    G_rest = np.block([[ZtZ[rest][:, rest].toarray(), ZRX], [ZRX.T, gram.XtX]])
    r = terms[j].n_coef if j is not None else 1
    return _Split(e, rest, r, ZtZ[e][:, e], ZtZ[e][:, rest], G_rest, gram.ZtX[e])


def _level_blocks(M: sp.csr_matrix, r: int) -> np.ndarray:
    """The ``r x r`` diagonal blocks of a block-diagonal sparse matrix, ``(l, r, r)``."""
    n = M.shape[0] // r
    out = np.empty((n, r, r))
    for a in range(r):
        for b in range(r):
            out[:, a, b] = M[a::r, b::r].diagonal()
    return out


def _gene_modes(sp_: _Split, terms, theta, zy, xy, relfacs, blocks):
    """Modes and conditional variances (over ``sigma^2``) of one gene, by term."""
    lam = _lambda(terms, theta)
    e, rest, r = sp_.e, sp_.rest, sp_.r
    le, lr = lam[e][:, e], lam[rest][:, rest]
    n_rest, p = len(rest), len(xy)
    # A = Lambda_e' Z_e'Z_e Lambda_e + I, level by level; B = Lambda_e' Z_e' [Z_R Lambda_R, X]
    A = _level_blocks((le.T @ sp_.Zee @ le).tocsr(), r) + np.eye(r)
    A_inv = np.linalg.inv(A)
    B = sp.hstack([le.T @ sp_.ZeR @ lr, sp.csr_matrix(le.T @ sp_.ZeX)]).tocsr()
    Ai = sp.block_diag(list(A_inv), format="csr") if len(e) else sp.csr_matrix((0, 0))
    scale = sp.block_diag([lr, sp.identity(p)], format="csr")
    C = scale.T @ (scale.T @ sp_.G_rest).T  # Lambda~' G_rest Lambda~ (symmetric), dense
    C[np.arange(n_rest), np.arange(n_rest)] += 1.0
    AiB = Ai @ B
    S = C - (B.T @ AiB).toarray() if len(e) else C
    L = scipy.linalg.cholesky(S, lower=True, check_finite=False)
    rhs_e = le.T @ zy[e]
    rhs = np.concatenate([lr.T @ zy[rest], xy]) - B.T @ (Ai @ rhs_e)
    x = scipy.linalg.cho_solve((L, True), rhs, check_finite=False)
    u = np.empty(len(zy))
    u[rest] = x[:n_rest]
    u[e] = Ai @ (rhs_e - B @ x)
    b = lam @ u
    W = _conditional_covariance(L[:n_rest, :n_rest], AiB[:, :n_rest], A_inv, r)
    return _by_term(b, W, le, lr, e, rest, relfacs, blocks, r)


def _conditional_covariance(L_RR, AiB_R, A_inv, r):
    """``Omega_uu^-1``: dense on the other levels, ``r x r`` blocks on the eliminated ones.

    ``L_RR`` factors ``S_RR``; ``A_l^-1 B_l S_RR^-1 B_l' A_l^-1`` is formed from the
    sparse rows of ``A^-1 B``, a chunk of levels at a time.
    """
    S_inv = scipy.linalg.cho_solve((L_RR, True), np.eye(len(L_RR)), check_finite=False)
    blocks = A_inv.copy()
    rows = AiB_R.tocsr()
    for a in range(0, rows.shape[0], _CHUNK * r):
        part = rows[a : a + _CHUNK * r]
        PS = np.asarray(part @ S_inv)  # (chunk x levels) dense
        for i in range(r):
            for j in range(r):
                prod = part[i::r].multiply(PS[j::r]).sum(axis=1)
                blocks[a // r : a // r + part.shape[0] // r, i, j] += np.asarray(prod).ravel()
    return S_inv, blocks


def _by_term(b, W, le, lr, e, rest, relfacs, blocks, r):
    """Split the modes and the diagonal of ``Lambda W Lambda'`` by term."""
    S_inv, W_e = W
    n = len(b)
    var = np.empty(n)
    if len(e):  # Lambda_e W_e Lambda_e', level block by level block (T W_l T')
        T = le[:r, :r].toarray()  # the eliminated term's T, the same on every level
        var[e] = np.einsum("ia,lab,ib->li", T, W_e, T).ravel()
    LW = (lr @ S_inv) if len(rest) else np.zeros((0, 0))
    var[rest] = np.einsum("ij,ij->i", LW, lr.toarray()) if len(rest) else 0.0
    where = np.empty(n, dtype=np.intp)
    where[rest] = np.arange(len(rest))
    modes, variances = [], []
    for sl, R in zip(blocks, relfacs, strict=True):
        if R is None:
            modes.append(b[sl])
            variances.append(var[sl])
        else:  # effects on the levels: R b, with covariance R C R' (C over the rest)
            idx = where[np.arange(n)[sl]]
            C = LW[np.ix_(idx, idx)] @ lr[idx][:, idx].T.toarray()
            modes.append(R @ b[sl])
            variances.append(np.einsum("ij,jk,ik->i", R, C, R))
    return modes, variances


def _batched_modes(gram: DesignGram, terms: Sequence[ReTerm], theta, stats: ResponseStats):
    """Random intercepts with few levels: each gene's whole system, densely, in batches.

    ``Omega = D G D + diag(1 [levels], 0 [fixed])`` with ``G`` the cross-products of
    ``[Z, X]`` and ``D = diag(lambda, 1)``; the modes are ``lambda u`` from ``Omega [u;
    beta] = D [Z'y; X'y]``, the variances ``lambda^2 diag(Omega_uu^-1)`` (given ``beta``).
    """
    q, p = gram.n_levels, gram.n_fixed
    ZtX = gram.ZtX
    G = np.block([[gram.ZtZ.toarray(), ZtX], [ZtX.T, gram.XtX]])
    per_level = np.repeat(np.arange(len(terms)), [t.n_columns for t in terms])
    n_genes = len(stats)
    modes, variances = np.full((n_genes, q), np.nan), np.full((n_genes, q), np.nan)
    todo = np.flatnonzero(np.isfinite(theta).all(axis=1))
    for a in range(0, len(todo), _GENES_PER_BATCH):
        genes = todo[a : a + _GENES_PER_BATCH]
        lam = theta[genes][:, per_level]  # (g, q)
        d = np.concatenate([lam, np.ones((len(genes), p))], axis=1)
        omega = d[:, :, None] * G[None] * d[:, None, :]
        omega[:, np.arange(q), np.arange(q)] += 1.0
        rhs = d * np.concatenate([stats.ZtY[genes], stats.XtY[genes]], axis=1)
        u = np.linalg.solve(omega, rhs[:, :, None])[:, :q, 0]
        modes[genes] = lam * u
        uu = np.linalg.inv(omega[:, :q, :q])
        variances[genes] = lam**2 * np.diagonal(uu, axis1=1, axis2=2)
    blocks = _term_blocks(terms)
    return [modes[:, b] for b in blocks], [variances[:, b] for b in blocks]


def conditional_modes(
    gram: DesignGram,
    terms: Sequence[ReTerm],
    theta: np.ndarray,
    stats: ResponseStats,
    relfacs: Sequence[np.ndarray | None] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Conditional modes of every term's effects and their variances, gene by gene.

    Parameters
    ----------
    gram
        Cross-products of the design, ``Z`` in the columns of ``terms``.
    terms
        The random-effect terms.
    theta
        Each gene's covariance parameters (``G x k``); NaN rows give NaN.
    stats
        The genes' statistics.
    relfacs
        Per term, ``R`` of a known covariance between its levels (``None`` else).

    Returns
    -------
    Per term, the modes (``G x n_columns``, level by level) and their conditional
    variances over the residual variance (multiply by ``sigma^2``).

    Raises
    ------
    ValueError
        Where the terms other than the largest one with independent levels have more
        than :data:`MAX_DENSE_SIZE` levels (with the fixed effects).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import scvarpart as svp
    >>> rng = np.random.default_rng(0)
    >>> obs = pd.DataFrame({"donor": rng.choice(list("abcd"), 200), "t": rng.normal(size=200)})
    >>> stats = svp.lmm.response_stats(rng.normal(size=(200, 3)), "~ (1 + t|donor)", obs=obs)
    >>> terms = [info.term for info in stats.terms]
    >>> theta = np.tile([0.5, 0.1, 0.3], (3, 1))  # lme4's theta of (1 + t|donor), per gene
    >>> modes, variances = svp.lmm.conditional_modes(stats.gram, terms, theta, stats.response)
    >>> modes[0].shape  # genes x (levels x coefficients)
    (3, 8)
    """
    relfacs = list(relfacs) if relfacs is not None else [None] * len(terms)
    scalar = all(t.n_coef == 1 for t in terms) and all(R is None for R in relfacs)
    if scalar and gram.n_levels + gram.n_fixed <= _BATCHED_SIZE:
        return _batched_modes(gram, terms, theta, stats)
    split = _split(gram, terms)
    blocks = _term_blocks(terms)
    n_genes = len(stats)
    modes = [np.full((n_genes, t.n_columns), np.nan) for t in terms]
    variances = [np.full((n_genes, t.n_columns), np.nan) for t in terms]
    for g in np.flatnonzero(np.isfinite(theta).all(axis=1)):
        m, v = _gene_modes(split, terms, theta[g], stats.ZtY[g], stats.XtY[g], relfacs, blocks)
        for j in range(len(terms)):
            modes[j][g], variances[j][g] = m[j], v[j]
    return modes, variances
