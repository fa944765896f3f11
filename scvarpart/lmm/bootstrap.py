"""The parametric bootstrap, from simulated sufficient statistics: no cell is touched.

A fit needs of a gene only ``u = A'Wy`` (``A = [Z, X_c]``, ``X_c`` the fixed design with
its columns but the intercept centred, ``W`` the observation weights) and ``y'Wy``. Under
the fitted model ``y* = X_c beta + Z b + e`` with ``b ~ N(0, sigma^2 Lambda Lambda')`` and
``e ~ N(0, sigma^2 W^-1)``, these have a joint distribution known from the design's
cross-products ``G = A'WA`` alone. Write ``G = F F'`` (``F`` of full column rank
``r``, from a pivoted Cholesky factorisation). Then

- ``u = F v`` with ``v = F'[b; beta] + sigma z``, ``z ~ N(0, I_r)``: the fixed and
  random effects seen through the design, and the part of the noise in its span;
- ``y'Wy = v'v + sigma^2 chi^2_{n - r}``: the noise orthogonal to the span, independent
  of the rest (``u'G^+u = v'v`` exactly).

So each replicate costs products with ``F`` (``(q + p) x r``) and a refit from the
statistics: per gene, nothing depends on the number of cells. The statistics are then
centred as the one pass centres them (:class:`~scvarpart.suffstats.ResponseStats`).

Each gene's random numbers come from the seed and the gene's name, so a gene's
replicates are the same whatever other genes are fitted with it, in any order or chunk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import scipy.linalg

from ..suffstats import DesignGram, ResponseStats
from .terms import ReTerm

__all__ = ["DesignFactor", "gene_rng", "simulate_statistics"]

# Pivots below this fraction of G's largest diagonal entry mark its null space.
_RANK_TOL = 1e-10


class DesignFactor:
    """``G = F F'`` for the bootstrap, shared by all genes.

    ``F' = U P'`` (``r x (q + p)``) and the rank ``r``.
    """

    def __init__(self, gram: DesignGram):
        G = np.block([[gram.ZtZ.toarray(), gram.ZtX], [gram.ZtX.T, gram.XtX]])
        tol = _RANK_TOL * max(float(G.diagonal().max()), np.finfo(float).tiny)
        U, piv, rank, info = scipy.linalg.lapack.dpstrf(G, lower=0, tol=tol)
        if info < 0:
            raise np.linalg.LinAlgError("dpstrf failed on the design's cross-products")
        Ft = np.zeros((rank, G.shape[0]))
        Ft[:, piv - 1] = np.triu(U[:rank])  # F' = U P': column piv_i of F' is U's column i
        self.Ft = Ft
        self.rank = int(rank)
        self.q = gram.n_levels
        self.n_obs = gram.n_obs
        self.weight_sum = float(gram.n_obs if gram.weight_sum is None else gram.weight_sum)
        self.ones_z = np.asarray(gram.ZtX[:, 0])  # Z'W1: the intercept is X_c's first column
        self.ones_x = np.asarray(gram.XtX[:, 0])  # X_c'W1


def gene_rng(seed: int, gene: str) -> np.random.Generator:
    """The random numbers of one gene: from ``seed`` and its name only."""
    digest = hashlib.sha256(str(gene).encode()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def _effects(rng, terms: Sequence[ReTerm], theta: np.ndarray, n_boot: int) -> np.ndarray:
    """``Lambda z`` for ``n_boot`` draws of ``z``: ``(n_boot, q)``, term by term, level-major."""
    parts = []
    start = 0
    for t in terms:
        T = t.factor(theta[start : start + t.n_theta])
        start += t.n_theta
        z = rng.standard_normal((n_boot, t.n_levels, t.n_coef))
        parts.append(np.einsum("ab,klb->kla", T, z).reshape(n_boot, -1))
    return np.concatenate(parts, axis=1)


def simulate_statistics(
    factor: DesignFactor,
    terms: Sequence[ReTerm],
    beta_c: np.ndarray,
    sigma2: np.ndarray,
    theta: np.ndarray,
    genes: Sequence[str],
    n_boot: int,
    seed: int,
) -> ResponseStats:
    """``n_boot`` replicates of the statistics of each gene under its fitted model.

    Parameters
    ----------
    factor
        :class:`DesignFactor` of the design.
    terms
        The random terms, in the order of ``Z``'s columns.
    beta_c
        Fixed effects per gene in the centred parametrisation (``G x p``).
    sigma2
        Residual variances (``G``).
    theta
        Covariance parameters per gene (``G x n_theta``), lme4's ``theta``.
    genes
        The genes' names, for their random numbers (:func:`gene_rng`).
    n_boot, seed
        Replicates per gene and the seed.

    Returns
    -------
    ResponseStats
        ``G * n_boot`` rows, gene by gene (gene ``g``'s replicates are rows
        ``g * n_boot`` to ``(g + 1) * n_boot - 1``), centred as the one pass centres.
    """
    Ft, q = factor.Ft, factor.q
    G = len(genes)
    U = np.empty((G * n_boot, Ft.shape[1]))
    yy = np.empty(G * n_boot)
    dof = factor.n_obs - factor.rank
    for g, gene in enumerate(genes):
        rng = gene_rng(seed, gene)
        sd = np.sqrt(sigma2[g])
        b = sd * _effects(rng, terms, theta[g], n_boot)
        coef = np.concatenate([b, np.broadcast_to(beta_c[g], (n_boot, len(beta_c[g])))], 1)
        v = coef @ Ft.T + sd * rng.standard_normal((n_boot, factor.rank))
        rows = slice(g * n_boot, (g + 1) * n_boot)
        U[rows] = v @ Ft  # u = F v
        yy[rows] = np.einsum("kr,kr->k", v, v) + sigma2[g] * rng.chisquare(dof, n_boot)
    mean = U[:, q] / factor.weight_sum  # 1'Wy: the intercept's cross-product
    return ResponseStats(
        n_obs=factor.n_obs,
        mean=mean,
        ss=yy - factor.weight_sum * mean**2,
        ZtY=U[:, :q] - mean[:, None] * factor.ones_z,
        XtY=U[:, q:] - mean[:, None] * factor.ones_x,
        n_nonzero=np.full(G * n_boot, factor.n_obs),
    )
