"""How to read blocks of any supported matrix type, and how to run a pass over them.

Supported: NumPy arrays (C or F order), SciPy sparse matrices and arrays (CSR, CSC;
other formats are converted to CSR), anndata's sparse datasets of a file opened in
backed mode, h5py and zarr arrays (anything sliceable by rows that returns one of
the above), and Dask arrays.

A pass is a reduction: a function computes a partial result from each block and the
partials are combined. For a matrix in memory a block is a range of rows of the
matrix itself (no copy); for a matrix on disk it is read, one block at a time. Row
blocks have the same boundaries whatever the number of threads and whichever genes
are computed, and partials are merged in block order, so the result is bitwise the
same for every ``n_jobs`` and gene subset. Column-compressed matrices are read in
blocks of whole genes instead (their column slices are cheap).

This module knows nothing of what is computed; the arithmetic is the caller's
(:mod:`scvarpart.suffstats.response`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp

__all__ = [
    "CHUNK_VALUES",
    "as_block",
    "default_chunk_rows",
    "dense_columns",
    "density",
    "few_blocks_rows",
    "is_backed_sparse",
    "is_dask_array",
    "map_column_blocks",
    "map_row_blocks",
    "nonfinite_columns",
    "readable",
    "reduce_dask",
    "reduce_gene_blocks",
    "reduce_row_blocks",
    "row_bounds",
    "storage_format",
    "value_sample",
]

#: Values (rows x genes; for sparse blocks, stored values) per block by default:
#: 2**22, about 32 MB as float64, bounding what a block read from disk holds.
CHUNK_VALUES = 2**22

P = TypeVar("P")

# dtypes the compiled kernels read as they are; others are converted block by block
_NATIVE = frozenset(np.dtype(t) for t in "f4 f8 i1 i2 i4 i8 u1 u2 u4 u8".split())


def is_dask_array(Y) -> bool:
    """Whether ``Y`` is a Dask array (without importing Dask)."""
    return type(Y).__module__.split(".")[0] == "dask" and hasattr(Y, "chunks")


def is_backed_sparse(Y) -> bool:
    """Whether ``Y`` is a sparse dataset of a file opened in backed mode (anndata)."""
    from anndata.abc import CSCDataset, CSRDataset

    return isinstance(Y, CSRDataset | CSCDataset)


def storage_format(Y) -> str:
    """How blocks of ``Y`` are best read: ``"csr"``, ``"csc"`` or ``"dense"``."""
    if sp.issparse(Y):
        return Y.format if Y.format in ("csr", "csc") else "csr"
    if is_backed_sparse(Y):
        return Y.format
    return "dense"


def density(Y) -> float:
    """Fraction of stored values (1 for a dense matrix)."""
    if sp.issparse(Y):
        return Y.nnz / max(Y.shape[0] * Y.shape[1], 1)
    if is_backed_sparse(Y):
        return Y.group["indices"].shape[0] / max(Y.shape[0] * Y.shape[1], 1)
    return 1.0


def default_chunk_rows(n_genes: int, density: float = 1.0) -> int:
    """Rows per block so that a block holds about :data:`CHUNK_VALUES` values."""
    return max(1, int(CHUNK_VALUES / (max(n_genes, 1) * max(density, 1e-3))))


def few_blocks_rows(Y, n_genes: int, n_blocks: int = 8) -> int:
    """Rows per block of a pass whose partial results are large (genes x levels).

    Every block's partial is allocated and merged, so over a matrix in memory (read in
    place, no copy) the rows are cut into about ``n_blocks`` blocks; a matrix read from
    disk keeps the default size, which bounds what a block holds.
    """
    size = default_chunk_rows(n_genes)
    if _in_place(Y) is not None:
        size = max(size, -(-Y.shape[0] // n_blocks))
    return size


def row_bounds(n_rows: int, size: int) -> list[tuple[int, int]]:
    """Blocks of ``size`` rows (the last one shorter)."""
    return [(a, min(a + size, n_rows)) for a in range(0, n_rows, size)]


def column_block(Y, a: int, b: int) -> np.ndarray:
    """Columns ``a:b`` of ``Y`` (NumPy, SciPy sparse, backed or Dask), every row, dense float.

    For column-wise work on matrices of few rows (pseudobulk samples).
    """
    block = Y[:, a:b]
    if is_dask_array(block):
        block = block.compute()
    if sp.issparse(block):
        block = block.toarray()
    return np.asarray(block, dtype=float)


def map_column_blocks(
    n_columns: int,
    size: int,
    job: Callable[[int, int], Any],
    *,
    n_jobs: int | None = 1,
    progress: Callable[[int, int], object] | None = None,
) -> list:
    """The results of every block of ``size`` columns, concatenated in column order.

    ``job(a, b)`` returns a joblib ``delayed`` call giving the list of results of columns
    ``a:b``, run in this process for ``n_jobs`` 1 (or a single block), otherwise in
    ``n_jobs`` worker processes (for per-gene work that is mostly Python). ``progress``
    is called after each block with its size and ``n_columns``.
    """
    from joblib import Parallel

    bounds = row_bounds(n_columns, size)
    if n_jobs in (None, 1) or len(bounds) <= 1:
        outputs = (fn(*args, **kw) for fn, args, kw in (job(a, b) for a, b in bounds))
    else:
        outputs = Parallel(n_jobs=n_jobs, return_as="generator")(job(a, b) for a, b in bounds)
    parts: list = []
    for (a, b), out in zip(bounds, outputs, strict=True):
        parts.extend(out)
        if progress is not None:
            progress(b - a, n_columns)
    return parts


def dense_columns(values, start: int, stop: int, cols: np.ndarray) -> np.ndarray:
    """Rows ``start:stop`` and columns ``cols`` of an in-memory block, as a float array."""
    block = values[start:stop]
    if sp.issparse(block):
        return np.asarray(block[:, cols].toarray(), dtype=float)
    return np.asarray(block[:, cols], dtype=float)


def value_sample(Y, rows: int = 2000, genes: int = 100) -> np.ndarray:
    """Some stored values of ``Y``, cheaply: its first rows, or first genes if CSC.

    For checks of what kind of values a matrix holds (counts, logs), before any pass.
    """
    sample = Y[:, :genes] if storage_format(Y) == "csc" else Y[:rows]
    if is_dask_array(sample):
        sample = sample.compute()
    return sample.data if sp.issparse(sample) else np.asarray(sample).ravel()


def readable(Y):
    """``Y`` as something whose blocks can be read.

    Sparse formats other than CSR and CSC become CSR, a sequence becomes an array;
    files and Dask arrays are kept.
    """
    if sp.issparse(Y):
        return Y if Y.format in ("csr", "csc") else Y.tocsr()
    if is_backed_sparse(Y) or is_dask_array(Y) or hasattr(Y, "shape"):
        return Y
    return np.asarray(Y)


def as_block(values):
    """An in-memory block as the kernels read it.

    A canonical CSR or CSC matrix (sorted, without duplicates, of a dtype the kernels
    read) or a C- or F-ordered array of such a dtype. Arrays and matrices that are so
    already are returned as they are (no copy).
    """
    if sp.issparse(values):
        if values.format not in ("csr", "csc"):
            values = values.tocsr()
        if values.dtype not in _NATIVE:
            values = values.astype(np.float64)
        if not values.has_canonical_format:
            values = values.copy()  # a duplicate entry is the sum of its parts
            values.sum_duplicates()
        return values
    values = np.asarray(values)
    if values.dtype not in _NATIVE:
        values = values.astype(np.float64)
    if not (values.flags.c_contiguous or values.flags.f_contiguous):
        values = np.ascontiguousarray(values)
    return values


def _in_place(Y):
    """``Y`` itself, if it is in memory and the kernels can read it as it is; else None."""
    if sp.issparse(Y):
        ok = Y.format in ("csr", "csc") and Y.dtype in _NATIVE and Y.has_canonical_format
        return Y if ok else None
    if isinstance(Y, np.ndarray):
        Y = np.asarray(Y)  # a np.matrix as an array (a view)
        if Y.dtype in _NATIVE and (Y.flags.c_contiguous or Y.flags.f_contiguous):
            return Y
    return None


def _read_rows(Y, a: int, b: int) -> tuple[Any, int, int]:
    """Rows ``a:b`` of ``Y`` as rows ``start:stop`` of in-memory ``values``.

    A matrix in memory is used in place whenever it can be.
    """
    values = _in_place(Y)
    if values is not None:
        return values, a, b
    return as_block(Y[a:b]), 0, b - a  # read from disk, or a block converted


def _parallel(tasks: Iterator[Callable[[], P]], n_jobs: int | None, n_tasks: int) -> Iterator[P]:
    """Results of ``tasks`` in order, computed by ``n_jobs`` threads."""
    if n_jobs in (None, 1) or n_tasks <= 1:
        return (task() for task in tasks)
    from joblib import Parallel, delayed

    # threads: the kernels release the GIL, and blocks of a backed file are read
    # through the same open handle
    return Parallel(n_jobs=n_jobs, backend="threading", return_as="generator")(
        delayed(task)() for task in tasks
    )


def map_row_blocks(
    Y,
    block: Callable[[Any, int, int, int], P],
    *,
    bounds: Sequence[tuple[int, int]],
    n_jobs: int | None = 1,
) -> Iterator[P]:
    """The results of ``block`` on each block of rows of ``Y``, in block order.

    ``block(values, start, stop, first)`` computes the result of rows ``start:stop`` of
    the in-memory ``values``, which are rows ``first:first + stop - start`` of ``Y``.
    With ``n_jobs`` threads, at most about that many results wait to be taken.
    """

    def task(a: int, b: int) -> Callable[[], P]:
        def run() -> P:
            values, start, stop = _read_rows(Y, a, b)
            return block(values, start, stop, a)

        return run

    return _parallel((task(a, b) for a, b in bounds), n_jobs, len(bounds))


def reduce_row_blocks(
    Y,
    block: Callable[[Any, int, int, int], P],
    merge: Callable[[P, P], P],
    *,
    bounds: Sequence[tuple[int, int]],
    n_jobs: int | None = 1,
    progress: Callable[[int, int], object] | None = None,
) -> P | None:
    """Reduce ``Y`` by blocks of rows (None when ``bounds`` is empty: no rows).

    The partials of :func:`map_row_blocks` are merged in block order by ``merge``,
    whatever ``n_jobs``. ``progress(rows, total)`` is called after each block.
    """
    outputs = map_row_blocks(Y, block, bounds=bounds, n_jobs=n_jobs)
    total: P | None = None
    for (a, b), part in zip(bounds, outputs, strict=True):
        total = part if total is None else merge(total, part)
        if progress is not None:
            progress(b - a, Y.shape[0])
    return total


def reduce_gene_blocks(
    Y,
    block: Callable[[Any, np.ndarray], P],
    *,
    columns: np.ndarray,
    size: int,
    n_jobs: int | None = 1,
    progress: Callable[[int, int], object] | None = None,
) -> list[P]:
    """Partials of blocks of whole genes of a column-compressed ``Y``, in order.

    ``block(values, cols)`` computes the partial of the columns ``cols`` of the
    in-memory CSC ``values`` (every row); ``columns`` are the genes wanted, cut into
    blocks of ``size``.
    """
    bounds = row_bounds(len(columns), size)

    def task(a: int, b: int) -> Callable[[], P]:
        def run() -> P:
            cols = columns[a:b]
            values = _in_place(Y)
            if values is not None:
                return block(values, cols)
            lo, hi = int(cols[0]), int(cols[-1]) + 1
            return block(as_block(Y[:, lo:hi]), cols - lo)

        return run

    outputs = _parallel((task(a, b) for a, b in bounds), n_jobs, len(bounds))
    parts = []
    for (a, b), part in zip(bounds, outputs, strict=True):
        parts.append(part)
        if progress is not None:
            progress(b - a, len(columns))
    return parts


def reduce_dask(
    Y,
    block: Callable[[Any, Any, int, int, int], P],
    merge: Callable[[P, P], P],
    context: Any,
    *,
    chunk_rows: int | None = None,
) -> P:
    """Reduce a Dask array by blocks of rows, as a Dask graph on the active scheduler.

    One task per block of rows computes ``block(context, values, 0, rows, first)``
    (``context`` is sent to each worker once, not with every task); partials are
    merged pairwise in a tree, in block order. ``chunk_rows`` rechunks the rows.
    """
    import dask

    if chunk_rows is not None:
        Y = Y.rechunk({0: chunk_rows, 1: -1})
    elif len(Y.chunks[1]) > 1:
        Y = Y.rechunk({1: -1})
    shared = dask.delayed(context)
    tasks = []
    first = 0
    for values, size in zip(Y.to_delayed().ravel(), Y.chunks[0], strict=True):
        tasks.append(dask.delayed(_dask_block)(block, shared, values, size, first))
        first += size
    while len(tasks) > 1:  # a pairwise tree: the graph's depth grows with log(blocks)
        pairs = zip(tasks[::2], tasks[1::2], strict=False)
        merged = [dask.delayed(merge)(x, y) for x, y in pairs]
        tasks = merged + ([tasks[-1]] if len(tasks) % 2 else [])
    return tasks[0].compute()


def _dask_block(block, context, values, size: int, first: int):
    return block(context, as_block(values), 0, size, first)


def nonfinite_columns(Y, chunk_rows: int | None = None) -> np.ndarray:
    """Indices of the columns of ``Y`` (in memory) that hold NaN or infinite values.

    :func:`scvarpart.suffstats.response_stats` finds them as a by-product of its pass
    (:meth:`~scvarpart.suffstats.ResponseStats.nonfinite`); this is for a matrix that
    is not passed over.
    """
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
