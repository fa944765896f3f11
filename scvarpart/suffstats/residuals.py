"""One more pass over the cells: the conditional residuals' moments, per gene and level.

The residual of cell ``i`` and gene ``g`` is ``r = y - x_i' beta - sum_j z_ij' b_j`` with
the fit's fixed effects and BLUPs. A pass over row blocks (in memory, backed or on disk,
as :mod:`scvarpart.storage.matrix` reads them) sums, per gene, the powers of ``r``, of
``|r|`` and of the fitted value, and per level of each grouping factor the residual sum
of squares; :class:`ResidualChecks` turns them into the checks:

- ``skewness`` and ``excess_kurtosis`` of the residuals (0 and 0 for normal errors;
  zero-inflated genes at cell level are skewed);
- ``fitted_trend``: the correlation of ``|r|`` with the fitted value (0 when the spread
  does not grow with the mean);
- per factor, Bartlett's statistic and p-value for equal residual variances across its
  levels (each level's residuals about their own mean, as ``scipy.stats.bartlett``), and
  the ratio of the largest to the smallest level variance;
- ``zero_fraction``: the share of exact zeros among the gene's values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats as st

from ..design import Design
from ..design.predict import Effects
from ..storage.matrix import (
    dense_columns,
    few_blocks_rows,
    readable,
    reduce_row_blocks,
    row_bounds,
)
from ._residual_kernels import residual_sums_csr, residual_sums_dense

__all__ = ["ResidualChecks", "residual_checks"]

_MOMENTS = 8  # sums of 1... see _block: r, r^2, r^3, r^4, |r|, f, f^2, |r| f


@dataclass(frozen=True)
class ResidualChecks:
    """Per-gene residual checks (:mod:`.residuals`).

    Attributes
    ----------
    per_gene
        Genes x ``sigma`` (the residuals' root mean square), ``skewness``,
        ``excess_kurtosis``, ``fitted_trend``, ``zero_fraction``, ``max_var_ratio`` (the
        largest level-variance ratio over the factors).
    by_factor
        One row per gene and factor: ``gene``, ``term``, ``bartlett``, ``pvalue``,
        ``var_ratio``.
    """

    per_gene: pd.DataFrame
    by_factor: pd.DataFrame


def residual_checks(
    Y,
    design: Design,
    beta: np.ndarray,
    blups: Sequence[np.ndarray],
    *,
    genes: np.ndarray,
    names: Sequence[str],
    n_jobs: int | None = 1,
    chunk_rows: int | None = None,
) -> ResidualChecks:
    """The residual checks of the genes ``genes`` (columns of ``Y``), in one pass.

    Parameters
    ----------
    Y
        Observations x genes, the rows of the design's covariate table (rows the design
        drops are skipped).
    design
        The model's design.
    beta
        ``(G, p)`` fixed effects (uncentred columns) of the genes.
    blups
        Per grouping factor, ``(G, n_levels, n_coef)`` BLUPs (for a known covariance,
        of the levels themselves).
    genes
        Column indices of the genes in ``Y``.
    names
        The genes' names.
    n_jobs, chunk_rows
        Threads and rows per block.
    """
    Y = readable(Y)
    G = len(genes)
    rows_of = np.cumsum(design.keep) - 1  # input row -> observation
    size = chunk_rows or few_blocks_rows(Y, G)
    level_offsets = np.cumsum([0, *(f.n_levels for f in design.factors)])

    by_name = {f.name: b for f, b in zip(design.factors, blups, strict=True)}
    effects = Effects.of(design, beta, by_name)  # the whole linear predictor

    def block(values, start: int, stop: int, first: int):
        keep = design.keep[first : first + stop - start]
        y = dense_columns(values, start, stop, genes)[keep]
        obs = rows_of[first : first + stop - start][keep]
        fitted = effects.at(obs)
        r = y - fitted
        a = np.abs(r)
        r2 = r * r
        sums = np.stack(
            [r.sum(0), r2.sum(0), (r2 * r).sum(0), (r2 * r2).sum(0), a.sum(0),
             fitted.sum(0), (fitted * fitted).sum(0), (a * fitted).sum(0)]
        )  # fmt: skip
        # every factor's level indicators at once: levels x cells
        idx = np.concatenate(
            [level_offsets[j] + f.codes[obs] for j, f in enumerate(design.factors)]
        )
        cells = np.tile(np.arange(len(obs)), len(design.factors))
        Z = sp.csr_matrix((np.ones(len(idx)), (idx, cells)), shape=(level_offsets[-1], len(obs)))
        by_level = np.stack([Z @ r, Z @ r2])
        count = np.asarray(Z.sum(axis=1)).ravel()
        zeros = (y == 0).sum(0)
        return sums, by_level, count, zeros, len(obs)

    def merge(x, y):
        return tuple(a + b for a, b in zip(x, y, strict=True))

    if all(f.values is None for f in design.factors):  # random intercepts: compiled
        block = _compiled_block(design, beta, blups, genes, Y.shape[1], rows_of) or block

    total = reduce_row_blocks(Y, block, merge, bounds=row_bounds(Y.shape[0], size), n_jobs=n_jobs)
    if total is None:
        raise ValueError("No observations to check.")
    sums, by_level, count, zeros, n = total
    return _checks(sums, by_level, count, zeros, n, design, level_offsets, list(names))


def _compiled_block(design: Design, beta, blups, genes: np.ndarray, n_columns: int, rows_of):
    """The block function of the compiled loop (:mod:`._residual_kernels`)."""
    offsets = np.cumsum([0, *(f.n_levels for f in design.factors)])
    codes = np.ascontiguousarray(
        np.column_stack([o + f.codes for o, f in zip(offsets, design.factors, strict=False)]),
        dtype=np.int64,
    )
    stacked = np.concatenate([b[:, :, 0].T for b in blups], axis=0)  # levels x genes
    blups_t = np.ascontiguousarray(stacked, dtype=np.float64)
    X = np.ascontiguousarray(design.X, dtype=np.float64)
    beta_t = np.ascontiguousarray(beta.T, dtype=np.float64)
    gene_of = np.full(n_columns, -1, dtype=np.int64)
    gene_of[genes] = np.arange(len(genes))
    columns = np.asarray(genes, dtype=np.int64)
    q = int(offsets[-1])

    def block(values, start: int, stop: int, first: int):
        n = stop - start
        keep = design.keep[first : first + n]
        obs = np.where(keep, rows_of[first : first + n], -1).astype(np.int64)
        if sp.issparse(values) and values.format != "csr":
            values, start, stop = values[start:stop].tocsr(), 0, n
        if sp.issparse(values):
            sums, by_level, zeros = residual_sums_csr(
                values.indptr, values.indices, values.data, start, stop, obs, gene_of,
                X, beta_t, codes, blups_t, q,
            )  # fmt: skip
        else:
            sums, by_level, zeros = residual_sums_dense(
                np.asarray(values), start, stop, obs, columns, X, beta_t, codes, blups_t, q
            )
        used = obs[obs >= 0]
        level_count = np.bincount(codes[used].ravel(), minlength=q).astype(float)
        return sums, by_level, level_count, zeros, len(used)

    return block


def _checks(sums, by_level, count, zeros, n, design, offsets, names) -> ResidualChecks:
    s1, s2, s3, s4, a1, f1, f2, af = (v / n for v in sums)
    m2 = s2 - s1**2
    m3 = s3 - 3 * s1 * s2 + 2 * s1**3
    m4 = s4 - 4 * s1 * s3 + 6 * s1**2 * s2 - 3 * s1**4
    var_a = s2 - a1**2  # E|r|^2 = E r^2
    var_f = f2 - f1**2
    with np.errstate(all="ignore"):
        per_gene = pd.DataFrame(
            {
                "sigma": np.sqrt(s2),
                "skewness": m3 / m2**1.5,
                "excess_kurtosis": m4 / m2**2 - 3,
                "fitted_trend": (af - a1 * f1) / np.sqrt(var_a * var_f),
                "zero_fraction": zeros / n,
            },
            index=pd.Index(names),
        )
    rows, ratios = [], []
    for j, f in enumerate(design.factors):
        nl = count[offsets[j] : offsets[j + 1]]
        # sums of squares about each level's own mean, as Bartlett's test takes them
        s_r, s_rr = (
            by_level[0, offsets[j] : offsets[j + 1]],
            by_level[1, offsets[j] : offsets[j + 1]],
        )
        with np.errstate(all="ignore"):
            ss = s_rr - s_r**2 / nl[:, None]
        used = nl > 1
        k, N = int(used.sum()), nl[used].sum()
        with np.errstate(all="ignore"):
            var = ss[used] / (nl[used] - 1)[:, None]
            pooled = ss[used].sum(0) / (N - k)
            c = 1 + (np.sum(1 / (nl[used] - 1)) - 1 / (N - k)) / (3 * (k - 1))
            stat = ((N - k) * np.log(pooled) - ((nl[used] - 1)[:, None] * np.log(var)).sum(0)) / c
            ratio = var.max(0) / var.min(0)
        p = st.chi2.sf(stat, k - 1) if k > 1 else np.full(len(names), np.nan)
        ratios.append(ratio)
        rows.append(
            pd.DataFrame(
                {"gene": names, "term": f.name, "bartlett": stat, "pvalue": p, "var_ratio": ratio}
            )
        )
    if ratios:
        per_gene["max_var_ratio"] = np.nanmax(np.vstack(ratios), axis=0)
    by_factor = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return ResidualChecks(per_gene, by_factor)
