"""The grid of variance ratios that every gene's global search starts from.

The profiled criterion of a model with few levels per factor is often
multimodal, with optima on different faces of the boundary (one factor's
variance exactly 0 at one optimum, positive at another). Newton's method from a
single start finds one of them; the global search (:mod:`.search`) first
evaluates every gene's criterion on this grid, which is the same for all genes,
so each grid point's factorisation serves every gene (as in Grid-LMM, Runcie &
Crawford 2019) and a gene's grid costs a triangular product per point.

Points are variance fractions: a residual fraction ``r`` (the residual
variance over the random-effect and residual variances) on a scale that is
finer towards 0, times a share of the random-effect variance for every factor
on a simplex grid that includes every face (shares of 0). The variance ratios
are ``gamma_j = (1 - r) / r * share_j``; the point ``gamma = 0`` closes the grid.
Two points are neighbours when they differ by one step of ``r`` (same shares) or
by moving one step of share from one factor to another (same ``r``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["VarianceGrid", "grid_size", "variance_grid"]


def _residual_fractions(k: int, level: int) -> np.ndarray:
    """Residual fractions, evenly spaced in log-odds from 0.9 down to 0.003.

    Finer levels go further down. The spacing is even where the residual dominates and
    geometric towards 0, where optima with a small residual are sharply curved in
    gamma. A single factor has no shares to grid: three times as many instead.
    """
    per = 8 * 2 ** max(level, 0) if level >= 0 else 4
    if k == 1:
        per *= 3
    low = -5.8 - 1.2 * max(level, 0)
    return 1.0 / (1.0 + np.exp(-np.linspace(2.2, low, per + 1)))


def _share_steps(k: int, level: int) -> int:
    """Share resolution: 1/4 up to five factors, 1/3 beyond.

    Halved at each finer level (the grid grows as steps^(k-1)); halves at level -1.
    """
    if k == 1:
        return 1
    if level < 0:
        return 2
    return (4 if k <= 5 else 3) * 2**level


def grid_size(k: int, level: int) -> int:
    """Number of points of ``variance_grid(k, level)``."""
    steps = _share_steps(k, level)
    return 1 + len(_residual_fractions(k, level)) * math.comb(steps + k - 1, k - 1)


@dataclass(frozen=True)
class VarianceGrid:
    """Grid points with their neighbourhoods.

    Attributes
    ----------
    gamma
        Variance ratios of every point, ``(N, k)``.
    face
        The point's face: bit ``j`` set when ``gamma_j > 0``.
    edge
        The point has the smallest residual fraction of the grid: a basin seen
        there may extend beyond the grid.
    nb_ptr, nb_idx
        Neighbours of point ``i``: ``nb_idx[nb_ptr[i]:nb_ptr[i + 1]]``.
    """

    gamma: np.ndarray
    face: np.ndarray
    edge: np.ndarray
    nb_ptr: np.ndarray
    nb_idx: np.ndarray

    def __len__(self) -> int:
        """Number of grid points."""
        return len(self.gamma)

    def neighbours(self, i: int) -> np.ndarray:
        """Indices of the neighbours of point ``i``."""
        return self.nb_idx[self.nb_ptr[i] : self.nb_ptr[i + 1]]


def variance_grid(k: int, level: int = 0) -> VarianceGrid:
    """The grid for ``k`` grouping factors at resolution ``level``.

    Level 0 has 46 points for two factors, 136 for three, 316 for four, 631 for
    five (:func:`grid_size`); each finer level halves the steps of the shares
    and of the residual fractions (about 2^k times the points) and reaches
    smaller residual fractions. Level -1 (shares in halves, five residual
    fractions) is for engines whose factorisation at a point is costly.
    """
    steps = _share_steps(k, level)
    fractions = _residual_fractions(k, level)
    shares = np.array(
        [c for c in itertools.product(range(steps + 1), repeat=k) if sum(c) == steps], dtype=int
    )
    share_index = {tuple(s): i for i, s in enumerate(shares)}
    n_shares = len(shares)

    def point(ri: int, share: int) -> int:  # point 0 is gamma = 0
        return 1 + ri * n_shares + share

    gamma = np.zeros((1 + len(fractions) * n_shares, k))
    neighbours: list[list[int]] = [[] for _ in range(len(gamma))]
    for ri, r in enumerate(fractions):
        for si, s in enumerate(shares):
            i = point(ri, si)
            gamma[i] = (1 - r) / r * s / steps
            near = [point(ri - 1, si) if ri else 0]
            if ri + 1 < len(fractions):
                near.append(point(ri + 1, si))
            for a, b in itertools.permutations(range(k), 2):
                if s[b]:
                    moved = s.copy()
                    moved[a] += 1
                    moved[b] -= 1
                    near.append(point(ri, share_index[tuple(moved)]))
            neighbours[i] = near
            if ri == 0:
                neighbours[0].append(i)
    face = ((gamma > 0) * (1 << np.arange(k))).sum(axis=1).astype(np.int64)
    edge = np.zeros(len(gamma), dtype=bool)
    edge[point(len(fractions) - 1, 0) :] = True
    nb_ptr = np.concatenate([[0], np.cumsum([len(n) for n in neighbours])]).astype(np.int64)
    nb_idx = np.array([j for n in neighbours for j in n], dtype=np.int64)
    return VarianceGrid(gamma=gamma, face=face, edge=edge, nb_ptr=nb_ptr, nb_idx=nb_idx)
