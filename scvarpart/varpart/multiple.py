"""Multiple testing over genes: Benjamini-Hochberg q-values.

Here, in the results layer, because a q-value depends on every gene's p-value: the
tests of :mod:`scvarpart.lmm.lrt` adjust the p-values of the genes they fit, and
:meth:`~scvarpart.varpart.VarPartResult.concat` adjusts again over all genes when it
combines chunks of genes (``scvarpart merge``), so that a chunked fit equals one fit
of every gene.
"""

from __future__ import annotations

import numpy as np

__all__ = ["benjamini_hochberg"]


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of each column over its finite p-values (NaN kept).

    The step-up adjustment of R's ``p.adjust(method = "BH")``.
    """
    P = np.atleast_2d(np.asarray(pvalues, dtype=float).T).T
    out = np.full(P.shape, np.nan)
    for c in range(P.shape[1]):
        ok = np.flatnonzero(np.isfinite(P[:, c]))
        m = len(ok)
        if not m:
            continue
        order = ok[np.argsort(P[ok, c], kind="stable")]
        scaled = P[order, c] * m / np.arange(1, m + 1)
        out[order, c] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return out.reshape(np.shape(pvalues))
