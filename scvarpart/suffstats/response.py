"""One pass over the expression matrix: per-gene sufficient statistics.

For every gene ``y`` (a column of the observations x genes matrix) the
likelihood of any random-intercept model with design ``Z``, ``X`` needs only
``Z'y``, ``X'y`` and ``y'y``. They are sums over observations, so the pass is a
sum of partial statistics of row blocks: computed here block by block in
float64 without ever densifying a sparse matrix, from memory, from a file
opened in backed mode (only one block is read at a time), or as a Dask graph
(one task per block, merged by a tree reduction, locally or on a cluster).

Numerical care: the response is centred analytically. The centred sum of
squares of each block is computed around the block's own mean and blocks are
merged with Chan et al.'s pairwise update, never as ``sum(y^2) - n * mean^2``,
which loses every digit when the mean is large relative to the spread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = [
    "ResponseStats",
    "default_chunk_rows",
    "is_dask_array",
    "nonfinite_columns",
    "response_stats",
    "storage_format",
]

# Values (rows x genes) materialised as float64 per block: 2**22 ~ 32 MB; for
# sparse blocks, stored values.
_CHUNK_VALUES = 2**22


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


@dataclass
class _Partial:
    """Raw statistics of a block of rows: count, sums, centred sum of squares
    around the block mean, the uncentred products Z'y, X'y (gene-major) and the
    non-zero counts."""

    n: int
    total: np.ndarray
    m2: np.ndarray
    ZtY: np.ndarray
    XtY: np.ndarray
    nnz: np.ndarray

    def merge(self, other: _Partial) -> _Partial:
        """Chan et al. (1979): combine the statistics of two disjoint blocks."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        with np.errstate(invalid="ignore"):
            delta = other.total / other.n - self.total / self.n
            m2 = self.m2 + other.m2 + delta**2 * (self.n * other.n / n)
        return _Partial(
            n,
            self.total + other.total,
            m2,
            self.ZtY + other.ZtY,
            self.XtY + other.XtY,
            self.nnz + other.nnz,
        )


def default_chunk_rows(n_genes: int, density: float = 1.0) -> int:
    """Rows per block so that its float64 values stay near 32 MB."""
    return max(1, int(_CHUNK_VALUES / (max(n_genes, 1) * max(density, 1e-3))))


def is_dask_array(Y) -> bool:
    """Whether ``Y`` is a Dask array (without importing Dask)."""
    return type(Y).__module__.split(".")[0] == "dask" and hasattr(Y, "chunks")


def _is_backed_sparse(Y) -> bool:
    from anndata.abc import CSCDataset, CSRDataset

    return isinstance(Y, CSRDataset | CSCDataset)


def storage_format(Y) -> str:
    """ "csr", "csc" or "dense": how blocks of ``Y`` are best read."""
    if sp.issparse(Y):
        return Y.format if Y.format in ("csr", "csc") else "csr"
    if _is_backed_sparse(Y):
        return Y.format
    return "dense"


def _density(Y) -> float:
    if sp.issparse(Y):
        return Y.nnz / max(Y.shape[0] * Y.shape[1], 1)
    if _is_backed_sparse(Y):
        return Y.group["indices"].shape[0] / max(Y.shape[0] * Y.shape[1], 1)
    return 1.0


def _float64(block):
    if sp.issparse(block):
        block = sp.csr_matrix(block, dtype=np.float64)
        if not block.has_canonical_format:
            block.sum_duplicates()
        return block
    # column-major: every column is reduced on its own, in the same order whichever
    # other columns the block holds (a chunk of genes matches the whole run exactly)
    return np.asfortranarray(block, dtype=np.float64)


def _centred_ss(block, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sum((y - mean)^2) per column of a block, without cancellation, and the
    number of non-zero values per column."""
    if sp.issparse(block):
        cols = block.indices
        dev = block.data - mean[cols]
        nnz = np.bincount(cols, minlength=block.shape[1])
        ss = (
            np.bincount(cols, dev * dev, minlength=block.shape[1])
            + (block.shape[0] - nnz) * mean**2
        )
        # explicitly stored zeros are values, but not non-zero ones
        stored_zeros = np.bincount(cols, block.data == 0, minlength=block.shape[1])
        return ss, nnz - stored_zeros.astype(nnz.dtype)
    dev = block - mean
    return np.einsum("ij,ij->j", dev, dev), np.count_nonzero(block, axis=0)


def _partial(block, Zc: sp.csr_matrix, Xc: np.ndarray) -> _Partial:
    """Statistics of one block of kept rows (``Zc``, ``Xc``: the same rows)."""
    block = _float64(block)
    n, G = block.shape
    if n == 0:
        return _Partial(
            0,
            np.zeros(G),
            np.zeros(G),
            np.zeros((G, Zc.shape[1])),
            np.zeros((G, Xc.shape[1])),
            np.zeros(G, dtype=np.int64),
        )
    total = np.asarray(block.sum(axis=0)).ravel()
    m2, nnz = _centred_ss(block, total / n)
    if sp.issparse(block):
        ZtY = (block.T @ Zc).toarray()
        XtY = np.asarray(block.T @ Xc)
    else:
        ZtY = np.asarray((Zc.T @ block).T)
        # a sparse-times-dense product, not BLAS: every gene is accumulated over the
        # observations in order, whichever other genes the block holds (BLAS would
        # switch kernels with the number of columns)
        XtY = np.asarray((sp.csr_matrix(Xc.T) @ block).T)
    return _Partial(n, total, m2, ZtY, XtY, nnz.astype(np.int64))


def _block_partial(Y, a: int, b: int, rows, Z, Xc, start: int, by_genes: bool, genes) -> _Partial:
    """Read rows (or, for CSC, genes) ``a:b`` of ``Y`` and compute their statistics.

    ``genes`` selects columns: a slice, an index array, or ``None`` for all.
    """
    if by_genes:
        cols = np.arange(Y.shape[1]) if genes is None else np.arange(Y.shape[1])[genes]
        lo, hi = cols[a], cols[b - 1] + 1
        block = Y[:, lo:hi]
        if hi - lo != b - a:
            block = block[:, cols[a:b] - lo]
        if rows is not None:
            block = block[rows]
        return _partial(block, Z, Xc)
    block = Y[a:b]
    if genes is not None:
        block = block[:, genes]
    n_kept = b - a
    if rows is not None:
        mask = rows[a:b]
        n_kept = int(mask.sum())
        if n_kept < b - a:
            block = block[mask]
    return _partial(block, Z[start : start + n_kept], Xc[start : start + n_kept])


def _finish(part: _Partial, Z: sp.csr_matrix, Xc: np.ndarray) -> ResponseStats:
    n = part.n
    with np.errstate(invalid="ignore"):
        mean = part.total / n
        counts = np.asarray(Z.sum(axis=0)).ravel()
        ZtY = part.ZtY - mean[:, None] * counts[None, :]
        XtY = part.XtY - mean[:, None] * Xc.sum(axis=0)[None, :]
    return ResponseStats(
        n_obs=n, mean=mean, ss=np.maximum(part.m2, 0.0), ZtY=ZtY, XtY=XtY, n_nonzero=part.nnz
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
        float or integer dtype; never densified, blocks are converted to float64.
    Z
        Random-effect indicator matrix of the kept observations (``n x q``).
    Xc
        Centred fixed-effect matrix of the kept observations (``n x p``).
    rows
        Boolean mask over the rows of ``Y`` selecting the observations of the
        model (``n`` of them); all rows when ``None``.
    genes
        The columns to compute (a slice or index array); all when ``None``. Blocks
        are cut as for the whole matrix, so each gene's statistics are the same
        whichever other genes are computed with it.
    chunk_rows
        Rows per block; by default about 32 MB of float64 values.
    n_jobs
        Threads reading and reducing blocks in parallel.
    progress
        Called after each block with the number of its rows (for CSC input, its
        genes) and the total, e.g. to advance a progress bar.

    Returns
    -------
    The :class:`ResponseStats` of the columns of ``Y`` (of ``genes``).
    """
    n = Z.shape[0]
    n_in = Y.shape[0]
    if rows is not None:
        rows = np.asarray(rows, dtype=bool)
        if rows.all():
            rows = None
    if (n_in if rows is None else int(rows.sum())) != n:
        raise ValueError("Y, rows and the design have different numbers of observations.")
    Z = Z.tocsr()
    if is_dask_array(Y):
        return _finish(_dask_pass(Y, Z, Xc, rows, chunk_rows, genes), Z, Xc)
    if sp.issparse(Y) and Y.format not in ("csr", "csc"):
        Y = Y.tocsr()
    elif not (sp.issparse(Y) or _is_backed_sparse(Y) or hasattr(Y, "shape")):
        Y = np.asarray(Y)

    fmt = storage_format(Y)
    G = Y.shape[1] if genes is None else len(np.arange(Y.shape[1])[genes])
    by_genes = fmt == "csc"  # column slices of CSC are cheap: blocks of whole genes
    if by_genes:
        size = chunk_rows or max(1, int(_CHUNK_VALUES / max(n * _density(Y), 1)))
        bounds = [(a, min(a + size, G)) for a in range(0, G, size)]
    else:
        size = chunk_rows or default_chunk_rows(Y.shape[1], _density(Y) if fmt != "dense" else 1.0)
        bounds = [(a, min(a + size, n_in)) for a in range(0, n_in, size)]
    starts = np.zeros(len(bounds), dtype=int)
    if not by_genes:  # first kept observation of each block
        kept = np.ones(n_in, dtype=bool) if rows is None else rows
        starts = np.concatenate([[0], np.cumsum([kept[a:b].sum() for a, b in bounds])[:-1]])

    jobs = (
        (Y, a, b, rows, Z, Xc, start, by_genes, genes)
        for (a, b), start in zip(bounds, starts, strict=True)
    )
    if n_jobs in (None, 1) or len(bounds) == 1:
        outputs = (_block_partial(*job) for job in jobs)
    else:
        from joblib import Parallel, delayed

        # threads: blocks of a backed file are read through the same open handle
        outputs = Parallel(n_jobs=n_jobs, backend="threading", return_as="generator")(
            delayed(_block_partial)(*job) for job in jobs
        )
    parts = []
    for (a, b), part in zip(bounds, outputs, strict=True):
        parts.append(part)
        if progress is not None:
            progress(b - a, G if by_genes else n_in)
    if by_genes:
        return _finish(_concat_genes(parts), Z, Xc)
    total = parts[0]
    for part in parts[1:]:
        total = total.merge(part)
    return _finish(total, Z, Xc)


def _concat_genes(parts: list[_Partial]) -> _Partial:
    return _Partial(
        parts[0].n,
        np.concatenate([p.total for p in parts]),
        np.concatenate([p.m2 for p in parts]),
        np.concatenate([p.ZtY for p in parts]),
        np.concatenate([p.XtY for p in parts]),
        np.concatenate([p.nnz for p in parts]),
    )


def _dask_pass(Y, Z, Xc, rows, chunk_rows, genes) -> _Partial:
    """The pass as a Dask graph: one task per row block, merged pairwise."""
    import dask

    if genes is not None:
        Y = Y[:, genes]
    if chunk_rows is not None:
        Y = Y.rechunk({0: chunk_rows, 1: -1})
    elif len(Y.chunks[1]) > 1:
        Y = Y.rechunk({1: -1})
    kept = np.ones(Y.shape[0], dtype=bool) if rows is None else rows
    tasks = []
    a = start = 0
    for block, size in zip(Y.to_delayed().ravel(), Y.chunks[0], strict=True):
        b = a + size
        mask = None if rows is None else kept[a:b]
        m = size if mask is None else int(mask.sum())
        tasks.append(
            dask.delayed(_dask_block)(block, mask, Z[start : start + m], Xc[start : start + m])
        )
        a, start = b, start + m
    while len(tasks) > 1:  # pairwise tree: the graph's depth grows with log(blocks)
        pairs = zip(tasks[::2], tasks[1::2], strict=False)
        merged = [dask.delayed(_Partial.merge)(x, y) for x, y in pairs]
        tasks = merged + ([tasks[-1]] if len(tasks) % 2 else [])
    return tasks[0].compute()


def _dask_block(block, mask, Zc, Xc):
    if mask is not None and not mask.all():
        block = block[mask]
    return _partial(block, Zc, Xc)


def nonfinite_columns(Y, chunk_rows: int | None = None) -> np.ndarray:
    """Indices of the columns of ``Y`` (in memory) that hold NaN or infinite values."""
    if sp.issparse(Y):
        if Y.format not in ("csr", "csc"):
            Y = Y.tocsr()
        bad = ~np.isfinite(Y.data)
        if not bad.any():
            return np.array([], dtype=np.intp)
        if Y.format == "csr":
            cols = Y.indices[bad]
        else:
            cols = np.repeat(np.arange(Y.shape[1]), np.diff(Y.indptr))[bad]
        return np.unique(cols)
    Y = np.asarray(Y)
    chunk = chunk_rows or default_chunk_rows(Y.shape[1])
    bad = np.zeros(Y.shape[1], dtype=bool)
    for a in range(0, Y.shape[0], chunk):
        bad |= ~np.isfinite(Y[a : a + chunk]).all(axis=0)
    return np.flatnonzero(bad)
