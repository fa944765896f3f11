"""One pass over the expression matrix: per-gene sufficient statistics.

For every gene ``y`` (a column of the observations x genes matrix) the
likelihood of any random-intercept model with design ``Z``, ``X`` needs only
``Z'y``, ``X'y`` and ``y'y``. They are accumulated here in float64 over row
chunks (or gene chunks for CSC input) without ever densifying a sparse matrix.

Numerical care: the response is centred analytically. The centred sum of
squares is merged across chunks with Chan et al.'s pairwise update, never as
``sum(y^2) - n * mean^2``, which loses every digit when the mean is large
relative to the spread.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["ResponseStats", "default_chunk_rows", "nonfinite_columns", "response_stats"]

# Values (rows x genes) materialised as float64 per chunk: 2**23 ~ 64 MB.
_CHUNK_VALUES = 2**23


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
    """

    n_obs: int
    mean: np.ndarray
    ss: np.ndarray
    ZtY: np.ndarray
    XtY: np.ndarray

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
        )


def default_chunk_rows(n_genes: int) -> int:
    """Rows per chunk so that a float64 chunk stays near 64 MB."""
    return max(1, _CHUNK_VALUES // max(n_genes, 1))


def _as_matrix(Y):
    if sp.issparse(Y):
        return Y if Y.format in ("csr", "csc") else Y.tocsr()
    return np.asarray(Y)


def _row_chunks(Y, rows: np.ndarray | None, chunk: int) -> Iterator[tuple[int, object]]:
    """Yield (first kept index, float64 chunk of kept rows) over row blocks."""
    n_in = Y.shape[0]
    kept_before = 0
    for a in range(0, n_in, chunk):
        b = min(a + chunk, n_in)
        block = Y[a:b]
        if rows is not None:
            mask = rows[a:b]
            if not mask.all():
                block = block[mask]
            n_kept = int(mask.sum())
        else:
            n_kept = b - a
        if n_kept:
            yield kept_before, _float64(block)
        kept_before += n_kept


def _float64(block):
    if sp.issparse(block):
        block = sp.csr_matrix(block, dtype=np.float64)
        if not block.has_canonical_format:
            block.sum_duplicates()
        return block
    return np.asarray(block, dtype=np.float64)


def _centred_ss(block, mean: np.ndarray) -> np.ndarray:
    """sum((y - mean)^2) per column of a chunk, without cancellation."""
    if sp.issparse(block):
        cols = block.indices
        dev = block.data - mean[cols]
        nnz = np.bincount(cols, minlength=block.shape[1])
        return (
            np.bincount(cols, dev * dev, minlength=block.shape[1])
            + (block.shape[0] - nnz) * mean**2
        )
    dev = block - mean
    return np.einsum("ij,ij->j", dev, dev)


def _products(block, Zc: sp.csr_matrix, Xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Z'y and X'y of a chunk, gene-major: shapes (G, q) and (G, p)."""
    if sp.issparse(block):
        ZtY = (block.T @ Zc).toarray()
        XtY = np.asarray(block.T @ Xc)
    else:
        ZtY = np.asarray((Zc.T @ block).T)
        XtY = block.T @ Xc
    return ZtY, XtY


def response_stats(
    Y,
    Z: sp.csr_matrix,
    Xc: np.ndarray,
    *,
    rows: np.ndarray | None = None,
    chunk_rows: int | None = None,
) -> ResponseStats:
    """Accumulate per-gene sufficient statistics in one pass over ``Y``.

    Parameters
    ----------
    Y
        Observations x genes: a NumPy array or a SciPy sparse matrix (CSR, CSC or
        any format convertible to CSR), any float or integer dtype. Never
        densified; chunks are converted to float64.
    Z
        Random-effect indicator matrix of the kept observations (``n x q``).
    Xc
        Centred fixed-effect matrix of the kept observations (``n x p``).
    rows
        Boolean mask over the rows of ``Y`` selecting the observations of the
        model (``n`` of them); all rows when ``None``.
    chunk_rows
        Rows per chunk; by default about 64 MB of float64 values.

    Returns
    -------
    The :class:`ResponseStats` of every column of ``Y``.
    """
    Y = _as_matrix(Y)
    n = Z.shape[0]
    if (Y.shape[0] if rows is None else int(rows.sum())) != n:
        raise ValueError("Y, rows and the design have different numbers of observations.")
    G = Y.shape[1]
    Z = Z.tocsr()
    q, p = Z.shape[1], Xc.shape[1]

    if sp.issparse(Y) and Y.format == "csc":
        # column slices of CSC are cheap: each chunk holds whole genes
        gchunk = default_chunk_rows(n) if chunk_rows is None else max(1, chunk_rows)
        total = np.empty(G)
        ss = np.empty(G)
        ZtY = np.empty((G, q))
        XtY = np.empty((G, p))
        for a in range(0, G, gchunk):
            b = min(a + gchunk, G)
            block = Y[:, a:b]
            block = _float64(block[rows] if rows is not None else block)
            s = np.asarray(block.sum(axis=0)).ravel()
            total[a:b] = s
            ss[a:b] = _centred_ss(block, s / n)
            ZtY[a:b], XtY[a:b] = _products(block, Z, Xc)
    else:
        chunk = default_chunk_rows(G) if chunk_rows is None else max(1, chunk_rows)
        total = np.zeros(G)
        ss = np.zeros(G)
        ZtY = np.zeros((G, q))
        XtY = np.zeros((G, p))
        n_seen = 0
        for start, block in _row_chunks(Y, rows, chunk):
            m = block.shape[0]
            s = np.asarray(block.sum(axis=0)).ravel()
            m2 = _centred_ss(block, s / m)
            # Chan et al. (1979): merge centred sums of squares of two parts
            if n_seen:
                delta = s / m - total / n_seen
                ss += m2 + delta**2 * (n_seen * m / (n_seen + m))
            else:
                ss = m2
            total += s
            n_seen += m
            z, x = _products(block, Z[start : start + m], Xc[start : start + m])
            ZtY += z
            XtY += x

    mean = total / n
    counts = np.asarray(Z.sum(axis=0)).ravel()
    ZtY -= mean[:, None] * counts[None, :]
    XtY -= mean[:, None] * Xc.sum(axis=0)[None, :]
    return ResponseStats(n_obs=n, mean=mean, ss=np.maximum(ss, 0.0), ZtY=ZtY, XtY=XtY)


def nonfinite_columns(Y, chunk_rows: int | None = None) -> np.ndarray:
    """Indices of the columns of ``Y`` that hold NaN or infinite values."""
    Y = _as_matrix(Y)
    G = Y.shape[1]
    if sp.issparse(Y):
        bad = ~np.isfinite(Y.data)
        if not bad.any():
            return np.array([], dtype=np.intp)
        if Y.format == "csr":
            cols = Y.indices[bad]
        else:
            cols = np.repeat(np.arange(G), np.diff(Y.indptr))[bad]
        return np.unique(cols)
    chunk = default_chunk_rows(G) if chunk_rows is None else chunk_rows
    bad = np.zeros(G, dtype=bool)
    for a in range(0, Y.shape[0], chunk):
        bad |= ~np.isfinite(Y[a : a + chunk]).all(axis=0)
    return np.flatnonzero(bad)
