"""Where a criterion has risen by a given amount: vectorised root finding, per row.

The intervals (:mod:`.intervals`) and the profiles (:mod:`.profile`) both look for the
point along a path where the criterion has risen by a quantile, one root per gene:
``gap(s, rows)`` is the signed root of the rise less the root of the quantile, at
``s[i]`` for row ``rows[i]``, increasing in ``s`` and NaN where the criterion cannot be
evaluated. The bracket's upper end is doubled until the rise is reached
(:func:`expand_bracket`), then Illinois steps (regula falsi that halves the stale
end's value when the same end moves twice) close it (:func:`illinois`): the signed root
of a rise is nearly linear in a well-chosen coordinate, so few evaluations are needed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["expand_bracket", "illinois"]

#: ``gap(s, rows) -> values``: the signed root of the rise less the target's, per row.
Gap = Callable[[np.ndarray, np.ndarray], np.ndarray]


def expand_bracket(
    gap: Gap, a: np.ndarray, fa: np.ndarray, b: np.ndarray, fb: np.ndarray, max_expand: int
) -> None:
    """Double the upper ends ``b`` (in place) until the rise is reached.

    Rows whose ``fb`` is short of 0 (or NaN) double ``b``; a finite short value becomes
    the lower end ``a`` (its value ``fa``). Rows that never reach 0 keep ``fb < 0`` or
    NaN.
    """
    every = np.arange(len(b))
    for _ in range(max_expand):
        short = every[~(fb >= 0)]  # NaN counts as short
        if len(short) == 0:
            return
        finite = short[np.isfinite(fb[short])]
        a[finite], fa[finite] = b[finite], fb[finite]
        b[short] *= 2
        fb[short] = gap(b[short], short)


def illinois(
    gap: Gap,
    a: np.ndarray,
    fa: np.ndarray,
    b: np.ndarray,
    fb: np.ndarray,
    max_iter: int,
    tol: float,
) -> np.ndarray:
    """The roots of ``gap`` between ``a`` (below 0) and ``b`` (at or above it), per row.

    Rows stop when ``|gap|`` is within ``tol`` or the bracket is 1e-12 wide; rows whose
    bracket holds no root (``fb`` short of 0) return ``b``. Returns the end closer to
    the root; ``a``, ``fa``, ``b`` and ``fb`` are updated in place.
    """
    side = np.zeros(len(a), dtype=int)
    active = np.isfinite(fa) & (fb >= 0) & (fa < 0)
    for _ in range(max_iter):
        if not active.any():
            break
        rows = np.flatnonzero(active)
        with np.errstate(all="ignore"):
            c = (a[rows] * fb[rows] - b[rows] * fa[rows]) / (fb[rows] - fa[rows])
        c = np.where(np.isfinite(c), c, (a[rows] + b[rows]) / 2)  # bisect from an infinite end
        fc = gap(c, rows)
        right, left = fc >= 0, fc < 0  # NaN: neither, and the row stops
        R, L = rows[right], rows[left]
        fa[R[side[R] == 1]] /= 2
        fb[L[side[L] == -1]] /= 2
        b[R], fb[R], a[L], fa[L] = c[right], fc[right], c[left], fc[left]
        side[R], side[L] = 1, -1
        active[rows] = (np.abs(fc) > tol) & (np.abs(b[rows] - a[rows]) > 1e-12)
    return np.where(np.abs(fa) < np.abs(fb), a, b)
