"""One pass over the expression matrix: per-gene sufficient statistics.

For every gene ``y`` (a column of the observations x genes matrix) the
likelihood of any random-intercept model with design ``Z``, ``X`` needs only
``Z'y``, ``X'y`` and ``y'y``. They are sums over observations, so the pass is a
sum of partial statistics of blocks of rows: each block is read once by a
compiled kernel (:mod:`._kernels`) that accumulates every statistic in the same
loop, in float64, reading float32 or float64 values where they are. How blocks
are read (memory, a file in backed mode, Dask) is :mod:`scvarpart.storage.matrix`'s
business; this module is the arithmetic.

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
from . import _kernels

__all__ = ["ResponseStats", "response_stats"]


@dataclass(frozen=True)
class ResponseStats:
    """Sufficient statistics of a set of responses (genes).

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

    codes: np.ndarray  # (n, K) level of each factor, K a multiple of 4, sink-padded
    x: np.ndarray  # (n, P >= 1) the columns of X that are not constant, or one of zeros
    x_cols: np.ndarray  # which columns of X those are
    X: np.ndarray  # (n, p) the centred fixed effects
    n_levels: int  # q; level q is the padding's sink
    row_of: np.ndarray  # (rows of Y,) design row of each row, -1 for a row left out
    col_of: np.ndarray  # (columns of Y,) output gene of each column or -1; empty: all
    cols: np.ndarray  # output gene -> column of Y; empty: all columns in order

    def rows(self, first: int, count: int) -> np.ndarray:
        """Design rows of the rows ``first:first + count`` of ``Y`` (-1: left out)."""
        return self.row_of[first : first + count]

    @property
    def n_fixed(self) -> int:
        """Columns of ``X``."""
        return self.X.shape[1]


def _padded(a: np.ndarray, multiple: int, fill) -> np.ndarray:
    width = max(multiple, -(-a.shape[1] // multiple) * multiple)
    out = np.full((a.shape[0], width), fill, dtype=a.dtype)
    out[:, : a.shape[1]] = a
    return out


def _level_codes(Z: sp.csr_matrix) -> np.ndarray:
    """Each row's levels (columns of ``Z``), padded with the sink level ``q``."""
    Z = Z.tocsr(copy=True)
    Z.sum_duplicates()
    if Z.nnz and not np.all(Z.data == 1):
        raise ValueError("Z must be an indicator matrix (entries 0 or 1).")
    per_row = np.diff(Z.indptr)
    width = int(per_row.max()) if len(per_row) else 0
    codes = np.full((Z.shape[0], width), Z.shape[1], dtype=np.int64)
    slot = np.arange(Z.nnz) - np.repeat(Z.indptr[:-1], per_row)
    codes[np.repeat(np.arange(Z.shape[0]), per_row), slot] = Z.indices
    return codes


def _design(Z, Xc: np.ndarray, rows: np.ndarray | None, n_in: int, genes, n_cols: int):
    """The kernels' design, and where each gene asked for is among those computed.

    Columns asked for twice, or out of order, are computed once, in order; the second
    value returned then maps them back (``None`` otherwise).
    """
    q = Z.shape[1]
    codes = _padded(_level_codes(Z), _kernels.GROUP_FACTORS, q)
    X = np.asarray(Xc, dtype=np.float64)
    # a constant column (the intercept) has X'(y - mean) = 0: not accumulated
    x_cols = np.flatnonzero(~np.all(X == X[:1], axis=0)) if len(X) else np.arange(X.shape[1])
    x = _padded(X[:, x_cols], 1, 0.0)
    if rows is None:
        row_of = np.arange(n_in, dtype=np.intp)
    else:
        row_of = np.full(n_in, -1, dtype=np.intp)
        row_of[rows] = np.arange(int(rows.sum()))
    empty = np.empty(0, dtype=np.intp)
    if genes is None:
        return _Design(codes, x, x_cols, X, q, row_of, empty, empty), None
    wanted = np.arange(n_cols)[genes]
    cols, inverse = np.unique(wanted, return_inverse=True)
    col_of = np.full(n_cols, -1, dtype=np.intp)
    col_of[cols] = np.arange(len(cols))
    repeated = None if len(cols) == len(wanted) and np.all(cols == wanted) else inverse
    return _Design(codes, x, x_cols, X, q, row_of, col_of, cols.astype(np.intp)), repeated


@dataclass
class _Partial:
    """Statistics of a set of observations, all centred around their mean.

    The mean is kept as ``shift + offset``: ``shift`` one of the values (exact) and
    ``offset`` the small rest, so that moving between the means of two sets costs
    no digits, however large they are. ``zy`` (``q x G``) and ``xy`` (``p x G``) are
    ``Z'(y - mean)`` and ``X'(y - mean)``; ``counts`` and ``xsum`` the column sums of
    ``Z`` and ``X`` over the same observations, which is what moving the centre needs.
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

    @classmethod
    def empty(cls, G: int, q: int, p: int) -> _Partial:
        """No observation."""
        zero = np.zeros(G)
        return cls(
            0, zero, zero, zero, np.zeros((q, G)), np.zeros((p, G)),
            np.zeros(G, dtype=np.int64), np.zeros(q), np.zeros(p),
        )  # fmt: skip

    def merge(self, other: _Partial) -> _Partial:
        """Chan et al. (1979): combine the statistics of two disjoint sets, in order."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        with np.errstate(invalid="ignore", over="ignore"):
            # the difference of the means: the shifts' difference is exact when they
            # are close (Sterbenz), the offsets are small
            delta = (other.shift - self.shift) + (other.offset - self.offset)
            # each side moves from its own mean to the merged one
            dz = (self.n * other.counts - other.n * self.counts) / n
            dx = (self.n * other.xsum - other.n * self.xsum) / n
            return _Partial(
                n,
                self.shift,
                self.offset + delta * (other.n / n),
                self.m2 + other.m2 + delta**2 * (self.n * other.n / n),
                self.zy + other.zy + dz[:, None] * delta[None, :],
                self.xy + other.xy + dx[:, None] * delta[None, :],
                self.nnz + other.nnz,
                self.counts + other.counts,
                self.xsum + other.xsum,
            )


def _design_sums(design: _Design, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Level counts and fixed-effect column sums over the design rows ``rows``."""
    q = design.n_levels
    counts = np.bincount(design.codes[rows].ravel(), minlength=q + 1)[:q].astype(np.float64)
    return counts, design.X[rows].sum(axis=0)


def _partial(design: _Design, rows: np.ndarray, out, *, shifted: bool) -> _Partial:
    """A block's :class:`_Partial` from its kernel's accumulators.

    ``shifted``: ``zy`` and ``xy`` were accumulated of ``y - shift`` (dense blocks)
    rather than of ``y`` (sparse blocks).
    """
    n, m, zeros, shift, s1, s2, zy, xy = out
    q, p = design.n_levels, design.n_fixed
    if n == 0:
        return _Partial.empty(len(m), q, p)
    counts, xsum = _design_sums(design, rows)
    with np.errstate(invalid="ignore", over="ignore"):
        implicit = n - m  # a sparse block's zeros that were never read
        S1 = s1 - implicit * shift
        S2 = s2 + implicit * shift**2
        offset = S1 / n
        m2 = np.maximum(S2 - S1 * offset, 0.0)
        # to the block's mean: from its shift (no cancellation), or from 0 (sparse)
        move = offset if shifted else shift + offset
        zy = zy[:q] - counts[:, None] * move[None, :]
        xy_all = np.zeros((p, len(m)))
        cols = design.x_cols
        xy_all[cols] = xy[: len(cols)] - xsum[cols, None] * move[None, :]
    return _Partial(n, shift, offset, m2, zy, xy_all, m - zeros, counts, xsum)


def _row_block(design: _Design, values, start: int, stop: int, first: int) -> _Partial:
    """The partial of rows ``start:stop`` of an in-memory block (rows ``first:`` of Y)."""
    row_of = design.rows(first, stop - start)
    args = (row_of, design.codes, design.x, design.n_levels)
    if sp.issparse(values):
        if values.format == "csc":
            values = values.tocsr()  # a row block of a CSC matrix read by rows
        n_genes = len(design.cols) if len(design.col_of) else values.shape[1]
        out = _kernels.csr_block(
            values.indptr, values.indices, values.data, start, stop, *args, design.col_of, n_genes
        )
        shifted = False
    else:
        out = _kernels.dense_block(values, start, stop, *args, design.cols)
        shifted = True
    return _partial(design, row_of[row_of >= 0], out, shifted=shifted)


def _gene_block(design: _Design, values: sp.csc_matrix, cols: np.ndarray) -> _Partial:
    """The partial of the columns ``cols`` of an in-memory CSC block, every row."""
    out = _kernels.csc_block(
        values.indptr, values.indices, values.data, np.asarray(cols, dtype=np.intp),
        design.row_of, design.codes, design.x, design.n_levels,
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
    )


def _finish(part: _Partial | None, n: int, G: int, q: int, p: int) -> ResponseStats:
    if part is None or part.n == 0:  # no genes, or no rows
        part = _Partial.empty(G, q, p)
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
    Z: sp.csr_matrix,
    Xc: np.ndarray,
    *,
    rows: np.ndarray | None = None,
    genes: slice | np.ndarray | None = None,
    chunk_rows: int | None = None,
    n_jobs: int | None = 1,
    progress: Callable[[int, int], object] | None = None,
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
        Random-effect indicator matrix of the kept observations (``n x q``, entries
        0 or 1).
    Xc
        Centred fixed-effect matrix of the kept observations (``n x p``).
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

    Returns
    -------
    The :class:`ResponseStats` of the columns of ``Y`` (of ``genes``). Genes with
    NaN or infinite values have non-finite statistics
    (:meth:`ResponseStats.nonfinite`).
    """
    n = Z.shape[0]
    n_in = Y.shape[0]
    if rows is not None:
        rows = np.asarray(rows, dtype=bool)
        if rows.all():
            rows = None
    if (n_in if rows is None else int(rows.sum())) != n:
        raise ValueError("Y, rows and the design have different numbers of observations.")
    Y = readable(Y)
    design, repeated = _design(Z, Xc, rows, n_in, genes, Y.shape[1])
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
