"""Each gene before and after a correction: whether the batch went and the biology stayed.

From two variance partitions of the same genes and model, one of the data and one of the
corrected values. A correction should take the batch fraction to about 0 and leave the
signal *variance* as it was: the signal *fraction* rises when the batch variance goes, so
it cannot tell whether biology was lost. A gene's signal counts as lost when its signal
variance fell by more than :data:`LOST_SHARE` of itself, and by more than
:data:`LOST_OF_TOTAL` of the gene's whole variance (so that a signal too small to matter
does not count). Both fits are of the same cells, so the change is not blurred by the
sampling error of either estimate (a patient variance from 12 patients has a standard error
of about 40% of itself, yet changes by a few percent under a correction that keeps it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..varpart import VarPartResult

__all__ = ["LOST_OF_TOTAL", "LOST_SHARE", "gene_changes"]

#: Fall of the signal variance, relative to itself, that counts as lost signal.
LOST_SHARE = 0.2
#: ... and relative to the gene's whole variance before the correction.
LOST_OF_TOTAL = 0.01


def gene_changes(
    before: VarPartResult, after: VarPartResult, *, batch: Sequence[str], signal: Sequence[str]
) -> pd.DataFrame:
    """Per gene: batch and signal fractions, ``rho`` and the signal variance, before/after.

    Returns
    -------
    DataFrame indexed by gene: ``batch_before``, ``batch_after``, ``signal_before``,
    ``signal_after`` (summed fractions), ``rho_before``, ``rho_after``,
    ``signal_variance_before``, ``signal_variance_after``, ``signal_ratio`` (after over
    before) and ``signal_lost``.
    """
    genes = before.fractions.index.intersection(after.fractions.index, sort=False)
    batch, signal = list(batch), list(signal)
    out = pd.DataFrame(index=genes)
    for name, fit in (("before", before), ("after", after)):
        fractions, variance = fit.fractions.loc[genes], fit.variance.loc[genes]
        out[f"batch_{name}"] = fractions[batch].sum(axis=1, min_count=1)
        out[f"signal_{name}"] = fractions[signal].sum(axis=1, min_count=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"rho_{name}"] = variance[batch].sum(axis=1) / variance[signal].sum(axis=1)
        out[f"signal_variance_{name}"] = variance[signal].sum(axis=1, min_count=1)
    fall = out["signal_variance_before"] - out["signal_variance_after"]
    with np.errstate(divide="ignore", invalid="ignore"):
        out["signal_ratio"] = out["signal_variance_after"] / out["signal_variance_before"]
    total = before.variance.loc[genes].sum(axis=1)
    out["signal_lost"] = (fall > LOST_SHARE * out["signal_variance_before"]) & (
        fall > LOST_OF_TOTAL * total
    )
    pairs = [
        f"{q}_{w}"
        for q in ("batch", "signal", "rho", "signal_variance")
        for w in ("before", "after")
    ]
    return out[[*pairs, "signal_ratio", "signal_lost"]]
