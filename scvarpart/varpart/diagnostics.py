"""Model checks per gene from a fit: standardised BLUPs, QQ envelopes, influence.

Pure array code; :func:`scvarpart.tl.diagnose` applies it to an AnnData object.

**Standardised BLUPs.** Under the model a level's effect is ``b ~ N(0, sigma_b^2)`` and
its BLUP ``b^ = E(b | y)``; ``b^`` has variance ``sigma_b^2 - Var(b | y)`` (the
conditional variance lme4's ``condVar`` reports), so ``b^ / sqrt(sigma_b^2 - Var(b |
y))`` is standard normal when the model holds. A QQ plot of them against the normal
(:func:`qq_envelope` gives the pointwise band of samples of that size) shows skew, heavy
tails or a level far from the others; the largest absolute value per gene is a
genome-wide screen.

**Influence.** A leave-one-level-out refit (every cell of one level of a grouping factor
left out) shows how far each fraction and rho move without that patient, day or batch;
:func:`influence_summary` gives per gene the largest move of the batch fraction, the level
that causes it, and the range of the batch fraction over the refits (the
leave-one-batch-out stability).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as st

__all__ = ["influence_summary", "normal_scores", "qq_envelope", "standardised_blups"]


def standardised_blups(
    blups: pd.DataFrame, blup_var: pd.DataFrame, variance: pd.Series
) -> pd.DataFrame:
    """BLUPs over their marginal standard deviation, genes x levels.

    Parameters
    ----------
    blups, blup_var
        A term's BLUPs and conditional variances, genes x levels (one coefficient).
    variance
        Per gene, the term's variance ``sigma_b^2``.

    Returns
    -------
    DataFrame
        ``b^ / sqrt(sigma_b^2 - Var(b | y))``; NaN where the term's variance is 0 (every
        BLUP is then 0: nothing to standardise).

    Examples
    --------
    >>> import pandas as pd
    >>> import scvarpart as svp
    >>> b = pd.DataFrame({"d1": [0.3], "d2": [-0.3]})
    >>> v = pd.DataFrame({"d1": [0.07], "d2": [0.07]})
    >>> svp.varpart.diagnostics.standardised_blups(b, v, pd.Series([0.16])).round(3)
        d1   d2
    0  1.0 -1.0
    """
    var = np.asarray(variance, dtype=float)[:, None]
    marginal = var - blup_var.to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = blups.to_numpy(dtype=float) / np.sqrt(np.where(marginal > 0, marginal, np.nan))
    return pd.DataFrame(np.where(var > 0, out, np.nan), index=blups.index, columns=blups.columns)


def normal_scores(n: int) -> np.ndarray:
    """Blom's expected normal order statistics of a sample of ``n``."""
    return st.norm.ppf((np.arange(1, n + 1) - 0.375) / (n + 0.25))


def qq_envelope(
    n: int, *, n_sim: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise band of the sorted values of ``n`` standard normal draws.

    ``n_sim`` simulated samples, sorted; the ``(1 - level) / 2`` and ``(1 + level) / 2``
    quantiles of each order statistic. Deterministic given ``seed``.
    """
    rng = np.random.default_rng(seed)
    draws = np.sort(rng.standard_normal((n_sim, n)), axis=1)
    tail = (1 - level) / 2
    return np.quantile(draws, tail, axis=0), np.quantile(draws, 1 - tail, axis=0)


def influence_summary(
    influence: pd.DataFrame, full: pd.DataFrame, batch: Sequence[str]
) -> pd.DataFrame:
    """Per gene: the largest move of the batch fraction without one level, and its range.

    Parameters
    ----------
    influence
        The refits, one row per gene and left-out level: columns ``gene``, ``term``,
        ``level`` and one per component (the fractions).
    full
        The fit with every level: genes x components.
    batch
        The technical components (all components but the residual when empty).

    Returns
    -------
    DataFrame
        Indexed by gene: ``max_change`` (the largest absolute change of the summed batch
        fractions), ``influential`` (``"term=level"`` causing it) and ``batch_range``
        (max - min of the batch fraction over the refits and the full fit).
    """
    parts = list(batch) or [c for c in full.columns if c != "Residual"]
    base = full[parts].sum(axis=1)
    frac = influence[parts].sum(axis=1, min_count=len(parts))
    change = (frac - base.reindex(influence["gene"]).to_numpy()).abs()
    table = influence.assign(_frac=frac.to_numpy(), _change=change.to_numpy())
    valid = table.dropna(subset=["_change"])
    out = pd.DataFrame(index=full.index)
    if len(valid):
        top = valid.loc[valid.groupby("gene", sort=False)["_change"].idxmax()].set_index("gene")
        out["max_change"] = top["_change"]
        out["influential"] = top["term"].astype(str) + "=" + top["level"].astype(str)
        by_gene = valid.groupby("gene", sort=False)["_frac"]
        high = np.fmax(by_gene.max().reindex(full.index), base)
        low = np.fmin(by_gene.min().reindex(full.index), base)
        out["batch_range"] = (high - low).where(out["max_change"].notna())
    else:
        out["max_change"], out["influential"], out["batch_range"] = np.nan, "", np.nan
    out["influential"] = out["influential"].fillna("")
    return out
