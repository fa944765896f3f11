"""One pass over the expression matrix: per-gene sufficient statistics.

For every gene ``y`` (a column of the observations x genes matrix) the
likelihood of any random-intercept model with design ``Z``, ``X`` needs only
``Z'y``, ``X'y`` and ``y'y``. They are sums over observations, so the pass is a
sum of partial statistics of blocks of rows: each block is read once by a
compiled kernel (:mod:`._kernels`) that accumulates every statistic in the same
loop, in float64, reading float32 or float64 values where they are. How blocks
are read (memory, a file in backed mode, Dask) is :mod:`scvarpart.storage.matrix`'s
business; this module is the arithmetic.

Observation weights ``w`` (lme4's ``weights=``: residual variance ``sigma^2 / w``)
and a ``Z`` with any values (random slopes) take the same pass through other
kernels (:mod:`._weighted`): then the mean is the weighted mean ``mu``, the sum of
squares ``sum w (y - mu)^2`` and the products ``Z'W(y - mu)`` and ``X'W(y - mu)``.
Blocks are merged by the same update, with weight sums in place of counts.

Numerical care: each block's sums are taken around one of its own values (a
shifted sum: as accurate as centring around the block's mean, see
:mod:`._kernels`), and the blocks are merged with Chan et al.'s pairwise update,
every statistic centred around the merged mean. The centred sum of squares is never
formed as ``sum(y^2) - n * mean^2``, which loses every digit when the mean is
large relative to the spread.

Reproducibility: a gene's statistics are bitwise the same whichever other genes
are computed with it and whatever the number of threads (blocks have fixed
boundaries and are merged in order); other block sizes change them by rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from ..storage.matrix import (
    CHUNK_VALUES,
    default_chunk_rows,
    density,
    is_dask_array,
    readable,
    reduce_dask,
    reduce_gene_blocks,
    reduce_row_blocks,
    row_bounds,
    storage_format,
)
from . import _kernels, _weighted

__all__ = ["ResponseStats", "response_stats"]


@dataclass(frozen=True)
class ResponseStats:
    """Sufficient statistics of a set of responses (genes).

    With observation weights ``w`` the mean is the weighted mean, ``ss`` is
    ``sum(w (y - mean)^2)`` and the products are ``Z'W(y - mean)`` and
    ``X_c'W(y - mean)`` (``W = diag(w)``); ``n_obs`` and ``n_nonzero`` still count
    observations.

    Attributes
    ----------
    n_obs
        Number of observations.
    mean
        Mean of each gene, shape ``(G,)``.
    ss
        Centred sum of squares ``sum((y - mean)^2)``, shape ``(G,)``.
    ZtY
        ``Z'(y - mean)``, shape ``(G, q)``.
    XtY
        ``X_c'(y - mean)`` with the centred fixed design, shape ``(G, p)``.
    n_nonzero
        Observations with a non-zero value, shape ``(G,)``.
    """

    n_obs: int
    mean: np.ndarray
    ss: np.ndarray
    ZtY: np.ndarray
    XtY: np.ndarray
    n_nonzero: np.ndarray

    def __len__(self) -> int:
        """The number of genes."""
        return len(self.mean)

    def subset(self, idx) -> ResponseStats:
        """Statistics of the genes ``idx`` (an index array or slice)."""
        return ResponseStats(
            n_obs=self.n_obs,
            mean=self.mean[idx],
            ss=self.ss[idx],
            ZtY=self.ZtY[idx],
            XtY=self.XtY[idx],
            n_nonzero=self.n_nonzero[idx],
        )

    def scaled(self, c: np.ndarray) -> ResponseStats:
        """Statistics of the genes multiplied by ``c`` (one factor per gene)."""
        return ResponseStats(
            n_obs=self.n_obs,
            mean=self.mean * c,
            ss=self.ss * c**2,
            ZtY=self.ZtY * c[:, None],
            XtY=self.XtY * c[:, None],
            n_nonzero=self.n_nonzero,
        )

    def nonfinite(self) -> np.ndarray:
        """Genes whose statistics are not finite: their data hold NaN or inf."""
        return ~(
            np.isfinite(self.ss)
            & np.isfinite(self.mean)
            & np.isfinite(self.ZtY).all(axis=1)
            & np.isfinite(self.XtY).all(axis=1)
        )


class _Design(NamedTuple):
    """The design as the kernels read it, and which rows and columns of ``Y`` to use."""

    codes: np.ndarray  # (n, K) each row's columns of Z, K a multiple of 4, sink-padded
    x: np.ndarray  # (n, P >= 1) the columns of X that are not constant, or one of zeros
    x_cols: np.ndarray  # which columns of X those are
    X: np.ndarray  # (n, p) the centred fixed effects
    n_levels: int  # q; level q is the padding's sink
    row_of: np.ndarray  # (rows of Y,) design row of each row, -1 for a row left out
    col_of: np.ndarray  # (columns of Y,) output gene of each column or -1; empty: all
    cols: np.ndarray  # output gene -> column of Y; empty: all columns in order
    # The weighted path (a valued Z, or weights), None otherwise; then x and X above
    # are multiplied by the weights (X's column sums are X'w, what merges need)
    zw: np.ndarray | None = None  # (n, K) each row's values of Z times its weight
    w: np.ndarray | None = None  # (n,) the weights (all 1 for a valued Z without)

    def rows(self, first: int, count: int) -> np.ndarray:
        """Design rows of the rows ``first:first + count`` of ``Y`` (-1: left out)."""
        return self.row_of[first : first + count]

    @property
    def n_fixed(self) -> int:
        """Columns of ``X``."""
        return self.X.shape[1]

    @property
    def kernels(self):
        """The module of the kernels that read this design."""
        return _kernels if self.w is None else _weighted

    @property
    def arrays(self) -> tuple:
        """The design's arguments of the kernels, after ``row_of``."""
        if self.w is None:
            return self.codes, self.x, self.n_levels
        return self.codes, self.zw, self.w, self.x, self.n_levels


def _padded(a: np.ndarray, multiple: int, fill) -> np.ndarray:
    width = max(multiple, -(-a.shape[1] // multiple) * multiple)
    out = np.full((a.shape[0], width), fill, dtype=a.dtype)
    out[:, : a.shape[1]] = a
    return out


def _entries(Z) -> tuple[np.ndarray, np.ndarray | None]:
    """Each row's stored columns of ``Z`` (padded with the sink level ``q``) and values.

    The values (padded with 0) are ``None`` for an indicator matrix (all entries 1).
    """
    Z = sp.csr_matrix(Z, copy=True)
    Z.sum_duplicates()
    Z.eliminate_zeros()  # an entry 0 adds nothing: not a level of the row
    per_row = np.diff(Z.indptr)
    width = int(per_row.max()) if len(per_row) else 0
    codes = np.full((Z.shape[0], width), Z.shape[1], dtype=np.int64)
    slot = np.arange(Z.nnz) - np.repeat(Z.indptr[:-1], per_row)
    row = np.repeat(np.arange(Z.shape[0]), per_row)
    codes[row, slot] = Z.indices
    if np.all(Z.data == 1):
        return codes, None
    values = np.zeros(codes.shape)
    values[row, slot] = Z.data
    return codes, values


def _design(
    Z,
    Xc: np.ndarray,
    rows: np.ndarray | None,
    n_in: int,
    genes,
    n_cols: int,
    weights: np.ndarray | None = None,
):
    """The kernels' design, and where each gene asked for is among those computed.

    Columns asked for twice, or out of order, are computed once, in order; the second
    value returned then maps them back (``None`` otherwise). An indicator ``Z``
    without ``weights`` is read by :mod:`._kernels`, anything else by
    :mod:`._weighted`.
    """
    q = Z.shape[1]
    codes, values = _entries(Z)
    codes = _padded(codes, _kernels.GROUP_FACTORS, q)
    X = np.asarray(Xc, dtype=np.float64)
    # a constant column (the intercept) has X'W(y - mean) = 0: not accumulated
    x_cols = np.flatnonzero(~np.all(X == X[:1], axis=0)) if len(X) else np.arange(X.shape[1])
    zw = w = None
    if values is not None or weights is not None:
        w = np.ones(len(codes)) if weights is None else weights
        zw = _padded(
            np.ones(codes.shape) if values is None else values, _kernels.GROUP_FACTORS, 0.0
        )
        zw *= w[:, None]
        X = X * w[:, None]
    x = _padded(X[:, x_cols], 1, 0.0)
    if rows is None:
        row_of = np.arange(n_in, dtype=np.intp)
    else:
        row_of = np.full(n_in, -1, dtype=np.intp)
        row_of[rows] = np.arange(int(rows.sum()))
    empty = np.empty(0, dtype=np.intp)
    if genes is None:
        return _Design(codes, x, x_cols, X, q, row_of, empty, empty, zw, w), None
    wanted = np.arange(n_cols)[genes]
    cols, inverse = np.unique(wanted, return_inverse=True)
    col_of = np.full(n_cols, -1, dtype=np.intp)
    col_of[cols] = np.arange(len(cols))
    repeated = None if len(cols) == len(wanted) and np.all(cols == wanted) else inverse
    design = _Design(codes, x, x_cols, X, q, row_of, col_of, cols.astype(np.intp), zw, w)
    return design, repeated


@dataclass
class _Partial:
    """Statistics of a set of observations, all centred around their mean.

    The mean is kept as ``shift + offset``: ``shift`` one of the values (exact) and
    ``offset`` the small rest, so that moving between the means of two sets costs
    no digits, however large they are. ``zy`` (``q x G``) and ``xy`` (``p x G``) are
    ``Z'(y - mean)`` and ``X'(y - mean)``; ``counts`` and ``xsum`` the column sums of
    ``Z`` and ``X`` over the same observations, which is what moving the centre needs.

    Weighted (``weight`` not ``None``: the sum of the observations' weights), the mean
    is the weighted mean, ``m2``, ``zy`` and ``xy`` are ``sum w (y - mean)^2``,
    ``Z'W(y - mean)`` and ``X'W(y - mean)``, and ``counts`` and ``xsum`` are ``Z'w``
    and ``X'w``; ``n`` still counts the observations.
    """

    n: int
    shift: np.ndarray
    offset: np.ndarray
    m2: np.ndarray
    zy: np.ndarray
    xy: np.ndarray
    nnz: np.ndarray
    counts: np.ndarray
    xsum: np.ndarray
    weight: float | None = None

    @classmethod
    def empty(cls, G: int, q: int, p: int, weighted: bool = False) -> _Partial:
        """No observation."""
        zero = np.zeros(G)
        return cls(
            0, zero, zero, zero, np.zeros((q, G)), np.zeros((p, G)),
            np.zeros(G, dtype=np.int64), np.zeros(q), np.zeros(p),
            0.0 if weighted else None,
        )  # fmt: skip

    @property
    def size(self) -> float:
        """What the observations weigh: their count (an int, exact), or their weights."""
        return self.n if self.weight is None else self.weight

    def merge(self, other: _Partial) -> _Partial:
        """Chan et al. (1979): combine the statistics of two disjoint sets, in order.

        Weighted, the same update with weight sums in place of counts: with ``W_a``,
        ``W_b`` the sets' weights, ``delta`` the difference of their means and
        ``W = W_a + W_b``, the mean moves by ``delta W_b / W``, ``m2`` gains
        ``delta^2 W_a W_b / W``, and ``Z'W(y - mean)`` of each set moves to the merged
        mean by its ``Z'w`` times the move of its mean, in total
        ``(W_a Z_b'w_b - W_b Z_a'w_a) delta / W``.
        """
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        a, b = self.size, other.size
        s = a + b
        with np.errstate(invalid="ignore", over="ignore"):
            # the difference of the means: the shifts' difference is exact when they
            # are close (Sterbenz), the offsets are small
            delta = (other.shift - self.shift) + (other.offset - self.offset)
            # each side moves from its own mean to the merged one
            dz = (a * other.counts - b * self.counts) / s
            dx = (a * other.xsum - b * self.xsum) / s
            return _Partial(
                self.n + other.n,
                self.shift,
                self.offset + delta * (b / s),
                self.m2 + other.m2 + delta**2 * (a * b / s),
                self.zy + other.zy + dz[:, None] * delta[None, :],
                self.xy + other.xy + dx[:, None] * delta[None, :],
                self.nnz + other.nnz,
                self.counts + other.counts,
                self.xsum + other.xsum,
                None if self.weight is None else s,
            )


def _design_sums(design: _Design, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Level counts (``Z'w``) and fixed-effect column sums (``X'w``) over ``rows``."""
    q = design.n_levels
    codes = design.codes[rows].ravel()
    counts: np.ndarray
    if design.zw is None:
        counts = np.bincount(codes, minlength=q + 1)[:q].astype(np.float64)
    else:
        counts = np.bincount(codes, weights=design.zw[rows].ravel(), minlength=q + 1)[:q]
    return counts, design.X[rows].sum(axis=0)


def _partial(design: _Design, rows: np.ndarray, out, *, shifted: bool) -> _Partial:
    """A block's :class:`_Partial` from its kernel's accumulators.

    ``shifted``: ``zy`` and ``xy`` were accumulated of ``y - shift`` (dense blocks)
    rather than of ``y`` (sparse blocks).
    """
    n, m, zeros, shift, s1, s2, zy, xy = out[:8]
    q, p = design.n_levels, design.n_fixed
    weighted = design.w is not None
    if n == 0:
        return _Partial.empty(len(m), q, p, weighted)
    counts, xsum = _design_sums(design, rows)
    with np.errstate(invalid="ignore", over="ignore"):
        if design.w is not None:
            size = float(design.w[rows].sum())
            # what a sparse block's zeros that were never read weigh: exactly 0 for a
            # gene with every value stored, whatever the rounding of the two sums
            implicit = np.where(m == n, 0.0, size - out[8])
        else:
            size = n
            implicit = n - m  # a sparse block's zeros that were never read
        S1 = s1 - implicit * shift
        S2 = s2 + implicit * shift**2
        offset = S1 / size
        m2 = np.maximum(S2 - S1 * offset, 0.0)
        # to the block's mean: from its shift (no cancellation), or from 0 (sparse)
        move = offset if shifted else shift + offset
        zy = zy[:q] - counts[:, None] * move[None, :]
        xy_all = np.zeros((p, len(m)))
        cols = design.x_cols
        xy_all[cols] = xy[: len(cols)] - xsum[cols, None] * move[None, :]
    weight = size if weighted else None
    return _Partial(n, shift, offset, m2, zy, xy_all, m - zeros, counts, xsum, weight)


def _row_block(design: _Design, values, start: int, stop: int, first: int) -> _Partial:
    """The partial of rows ``start:stop`` of an in-memory block (rows ``first:`` of Y)."""
    row_of = design.rows(first, stop - start)
    args = (row_of, *design.arrays)
    if sp.issparse(values):
        if values.format == "csc":
            values = values.tocsr()  # a row block of a CSC matrix read by rows
        n_genes = len(design.cols) if len(design.col_of) else values.shape[1]
        out = design.kernels.csr_block(
            values.indptr, values.indices, values.data, start, stop, *args, design.col_of, n_genes
        )
        shifted = False
    else:
        out = design.kernels.dense_block(values, start, stop, *args, design.cols)
        shifted = True
    return _partial(design, row_of[row_of >= 0], out, shifted=shifted)


def _gene_block(design: _Design, values: sp.csc_matrix, cols: np.ndarray) -> _Partial:
    """The partial of the columns ``cols`` of an in-memory CSC block, every row."""
    out = design.kernels.csc_block(
        values.indptr, values.indices, values.data, np.asarray(cols, dtype=np.intp),
        design.row_of, *design.arrays,
    )  # fmt: skip
    n_kept = int((design.row_of >= 0).sum())
    return _partial(design, design.row_of[design.row_of >= 0], (n_kept, *out), shifted=False)


def _concat_genes(parts: list[_Partial]) -> _Partial:
    return _Partial(
        parts[0].n,
        np.concatenate([p.shift for p in parts]),
        np.concatenate([p.offset for p in parts]),
        np.concatenate([p.m2 for p in parts]),
        np.concatenate([p.zy for p in parts], axis=1),
        np.concatenate([p.xy for p in parts], axis=1),
        np.concatenate([p.nnz for p in parts]),
        parts[0].counts,
        parts[0].xsum,
        parts[0].weight,
    )


def _finish(part: _Partial | None, n: int, G: int, q: int, p: int) -> ResponseStats:
    if part is None or part.n == 0:  # no genes, or no rows
        part = _Partial.empty(G, q, p)  # all zero, weighted or not
    return ResponseStats(
        n_obs=n,
        mean=part.shift + part.offset,
        ss=part.m2,
        ZtY=np.ascontiguousarray(part.zy.T),
        XtY=np.ascontiguousarray(part.xy.T),
        n_nonzero=part.nnz.astype(np.int64),
    )


def response_stats(
    Y,
    Z: sp.spmatrix | sp.sparray | np.ndarray,
    Xc: np.ndarray,
    *,
    rows: np.ndarray | None = None,
    genes: slice | np.ndarray | None = None,
    chunk_rows: int | None = None,
    n_jobs: int | None = 1,
    progress: Callable[[int, int], object] | None = None,
    weights: np.ndarray | None = None,
) -> ResponseStats:
    """Accumulate per-gene sufficient statistics in one pass over ``Y``.

    Parameters
    ----------
    Y
        Observations x genes: a NumPy array, a SciPy sparse matrix (CSR, CSC or
        any format convertible to CSR), a dataset of a file opened in backed mode
        (anndata's sparse datasets, h5py or zarr arrays: read block by block), or
        a Dask array (its blocks become tasks of the active Dask scheduler). Any
        float or integer dtype, read as it is (float32 stays float32 in memory);
        never densified nor copied when in memory.
    Z
        Random-effect matrix of the kept observations (``n x q``, sparse or dense):
        an indicator matrix (entries 0 or 1: one level per grouping factor per row)
        or any real values (a random slope's columns hold its covariate at the
        observation's level).
    Xc
        Centred fixed-effect matrix of the kept observations (``n x p``); with
        ``weights``, centred as the caller wants (e.g. by the weighted means, see
        :func:`~scvarpart.suffstats.gram.centred_fixed`).
    rows
        Boolean mask over the rows of ``Y`` selecting the observations of the
        model (``n`` of them); all rows when ``None``.
    genes
        The columns to compute (a slice or index array); all when ``None``. Blocks
        are cut as for the whole matrix, so each gene's statistics are bitwise the
        same whichever other genes are computed with it.
    chunk_rows
        Rows per block (for a CSC matrix, genes per block); by default about 4
        million values. Other block sizes change the statistics by rounding only.
    n_jobs
        Threads reading and reducing blocks in parallel; the result does not
        depend on it, bit for bit.
    progress
        Called after each block with the number of its rows (for CSC input, its
        genes) and the total, e.g. to advance a progress bar.
    weights
        Observation weights, positive, one per kept observation (``n``), shared by
        every gene (lme4's ``weights=``: residual variance ``sigma^2 / w``). The
        statistics are then weighted (see :class:`ResponseStats`).

    Returns
    -------
    The :class:`ResponseStats` of the columns of ``Y`` (of ``genes``). Genes with
    NaN or infinite values have non-finite statistics
    (:meth:`ResponseStats.nonfinite`).

    Notes
    -----
    An indicator ``Z`` without ``weights`` is read by the kernels of
    :mod:`._kernels`; a valued ``Z`` or weights by those of :mod:`._weighted`, a few
    more operations per value. With weights all 1 and an indicator ``Z`` both give
    the same statistics, bit for bit: multiplying by a weight of 1 and summing ones
    are exact, and so are the merges' products of counts below about 10^8
    observations.
    """
    n = Z.shape[0]
    n_in = Y.shape[0]
    if rows is not None:
        rows = np.asarray(rows, dtype=bool)
        if rows.all():
            rows = None
    if (n_in if rows is None else int(rows.sum())) != n:
        raise ValueError("Y, rows and the design have different numbers of observations.")
    if weights is not None:
        weights = _weighted.check_weights(weights, n)
    Y = readable(Y)
    design, repeated = _design(Z, Xc, rows, n_in, genes, Y.shape[1], weights)
    G = Y.shape[1] if genes is None else len(design.cols)
    q, p = design.n_levels, design.n_fixed

    if is_dask_array(Y):
        if genes is not None:
            Y = Y[:, design.cols]
        whole = design._replace(col_of=design.col_of[:0], cols=design.cols[:0])
        part: _Partial | None = reduce_dask(
            Y, _row_block, _Partial.merge, whole, chunk_rows=chunk_rows
        )
    elif storage_format(Y) == "csc":  # column slices are cheap: blocks of whole genes
        size = chunk_rows or max(1, int(CHUNK_VALUES / max(n * density(Y), 1)))
        columns = np.arange(Y.shape[1]) if genes is None else design.cols
        parts = reduce_gene_blocks(
            Y,
            lambda values, cols: _gene_block(design, values, cols),
            columns=columns,
            size=size,
            n_jobs=n_jobs,
            progress=progress,
        )
        part = _concat_genes(parts) if parts else None
    else:
        fmt = storage_format(Y)
        size = chunk_rows or default_chunk_rows(Y.shape[1], density(Y) if fmt != "dense" else 1.0)
        part = reduce_row_blocks(
            Y,
            lambda values, start, stop, first: _row_block(design, values, start, stop, first),
            _Partial.merge,
            bounds=row_bounds(n_in, size),
            n_jobs=n_jobs,
            progress=progress,
        )
    stats = _finish(part, n, G, q, p)
    return stats if repeated is None else stats.subset(repeated)
