"""``svp.tl.variance_partition_file``: variance partition of a file larger than memory."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import anndata as ad
import pandas as pd
from anndata import AnnData

from .._docs import (
    doc_batch_signal,
    doc_batch_size,
    doc_cells,
    doc_count_model,
    doc_covariance,
    doc_formula,
    doc_key_added,
    doc_layer,
    doc_method,
    doc_min_cells,
    doc_n_jobs,
    doc_params,
    doc_use_raw,
    doc_weights,
)
from .._io import OutputExistsError, write_results_file
from ..get._results import check_var_names, result_keys
from ..lmm.genes import check_bootstrap
from ..lmm.lrt import check_test
from ..storage.matrix import default_chunk_rows
from ..storage.select import select_expression
from ..storage.stores import open_store
from ..varpart import VarPartResult
from ._counts import offset_values
from ._variance_partition import (
    _partition,
    _plain,
    _prepare,
    check_options,
    write_results,
)

__all__ = ["partition_file", "variance_partition_file"]


def _lazy_matrix(elem, n_genes: int, chunk_size: int | None, dask: bool):
    """An on-disk matrix that is read block by block (or a Dask array of blocks)."""
    encoding = elem.attrs.get("encoding-type", "array")
    if dask:
        sparse = encoding in ("csr_matrix", "csc_matrix")
        rows = chunk_size or default_chunk_rows(n_genes, 0.1 if sparse else 1.0)
        return ad.experimental.read_elem_lazy(elem, chunks=(rows, n_genes))
    if encoding in ("csr_matrix", "csc_matrix"):
        return ad.io.sparse_dataset(elem)
    return elem  # an h5py or zarr array: slicing reads only the requested rows


def _without_results(var: pd.DataFrame, root, key: str) -> pd.DataFrame:
    """The file's ``var`` without the columns of an earlier fit under ``key``.

    Those its ``uns[key]`` recorded: the fit's own results replace them.
    """
    if "uns" not in root or key not in root["uns"]:
        return var
    stored = AnnData(var=var, uns={key: ad.io.read_elem(root["uns"][key])})
    return var.drop(columns=result_keys(stored, key)["var"])


def partition_file(
    path: Path,
    formula: str,
    *,
    batch,
    signal,
    method,
    layer,
    use_raw,
    cells,
    min_cells,
    key_added,
    n_jobs,
    batch_size,
    chunk_size,
    dask,
    progress,
    genes: slice | None = None,
    weights: str | None = None,
    covariance: Mapping[str, pd.DataFrame] | None = None,
    store_blups: bool = False,
    test: Literal["lrt"] | None = None,
    bootstrap: tuple[int, int, float | None] = (0, 0, 0.95),
    family: str = "gaussian",
    offset: str | None = None,
    approximation: str = "lognormal",
) -> tuple[pd.DataFrame, pd.DataFrame, VarPartResult]:
    """The file's ``obs`` and ``var`` (of ``genes``) and the result.

    As :func:`variance_partition_file` computes them; ``genes`` restricts the fits to
    a slice of the genes (each gene's result does not depend on the others).
    """
    path = Path(path)
    check_options(batch_size=batch_size, chunk_size=chunk_size, n_jobs=n_jobs, min_cells=min_cells)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    with open_store(path) as root:
        obs = ad.io.read_elem(root["obs"])
        var = _without_results(ad.io.read_elem(root["var"]), root, key_added)
        check_var_names(
            var.index,
            f"The var names of {path}",
            "read it, run adata.var_names_make_unique() and write it again",
        )
        layers = list(root["layers"]) if "layers" in root else []
        count_options = {
            "family": family, "offset": offset, "approximation": approximation, "test": test,
            "n_boot": bootstrap[0],
        }  # fmt: skip
        prep = _prepare(
            obs, formula, method, batch, signal, cells, weights, covariance, layers, count_options
        )
        check_test(test)
        check_bootstrap(*bootstrap)
        expression = select_expression(root, layer, use_raw, var_names=var.index, path=path)
        elem, source = expression.matrix, expression.source
        W = None
        if prep.weights_layer is not None:
            # gene-specific weights are fitted gene by gene from columns: pseudobulk-sized
            # data, read into memory with their responses
            Y = ad.io.read_elem(elem)
            W = ad.io.read_elem(root["layers"][prep.weights_layer])
        else:
            Y = _lazy_matrix(elem, len(var), chunk_size, dask)
        offsets = None
        if prep.count_model is not None:
            offsets = offset_values(obs, prep.count_model, Y, prep.design, var.index, source)
        results = _partition(
            prep,
            Y,
            source,
            var.index,
            params={"layer": layer, "use_raw": use_raw, "cells": _plain(cells), "path": path.name},
            min_cells=min_cells,
            key_added=key_added,
            n_jobs=n_jobs,
            batch_size=batch_size,
            chunk_size=None if dask else chunk_size,
            progress=progress,
            genes=genes,
            store_blups=store_blups,
            test=test,
            bootstrap=bootstrap,
            W=W,
            offset=offsets,
        )
    return obs, (var if genes is None else var.iloc[genes]), results


@doc_params(
    doc_formula=doc_formula,
    doc_batch_signal=doc_batch_signal,
    doc_method=doc_method,
    doc_count_model=doc_count_model,
    doc_layer=doc_layer,
    doc_use_raw=doc_use_raw,
    doc_cells=doc_cells,
    doc_min_cells=doc_min_cells,
    doc_weights=doc_weights,
    doc_covariance=doc_covariance,
    doc_key_added=doc_key_added,
    doc_n_jobs=doc_n_jobs,
    doc_batch_size=doc_batch_size,
)
def variance_partition_file(
    path: str | os.PathLike,
    formula: str,
    *,
    batch: str | Sequence[str] | None = None,
    signal: str | Sequence[str] | None = None,
    method: Literal["ML", "REML"] = "ML",
    family: Literal["gaussian", "poisson", "nb"] = "gaussian",
    offset: str | None = None,
    approximation: Literal["lognormal", "trigamma"] = "lognormal",
    layer: str | None = None,
    use_raw: bool = False,
    cells: Mapping[str, Sequence] | None = None,
    min_cells: int = 0,
    weights: str | None = None,
    covariance: Mapping[str, pd.DataFrame] | None = None,
    store_blups: bool = False,
    test: Literal["lrt"] | None = None,
    n_boot: int = 0,
    seed: int = 0,
    ci: float | None = 0.95,
    key_added: str = "varpart",
    n_jobs: int | None = 1,
    batch_size: int = 256,
    chunk_size: int | None = None,
    dask: bool = False,
    progress: bool | None = None,
    output: str | os.PathLike | None = None,
    force: bool = False,
) -> AnnData:
    """Variance partition of an ``.h5ad`` file or ``.zarr`` store, out of core.

    The same computation as :func:`variance_partition`, reading the expression
    matrix one block of ``chunk_size`` cells at a time, so memory is bounded by
    one block plus what grows with genes x levels, however many cells the file
    holds. The file is opened read-only and never modified.

    Parameters
    ----------
    path
        An ``.h5ad`` file or a ``.zarr`` store written by anndata.
    {doc_formula}
    {doc_batch_signal}
    {doc_method}
    {doc_count_model}
    {doc_layer}
    {doc_use_raw}
    {doc_cells}
    {doc_min_cells}
    {doc_weights}
    {doc_covariance}
    store_blups
        Also store every random term's BLUPs, as :func:`variance_partition` does.
    test
        ``"lrt"``: test each random term's variance = 0, as :func:`variance_partition`.
    n_boot, seed, ci
        The parametric bootstrap and the intervals' level (``None``: no intervals), as
        :func:`variance_partition`.
    {doc_key_added}
    {doc_n_jobs}
    {doc_batch_size}
    chunk_size
        Cells per block (by default about 4 million stored values, 32 MB as float64).
    dask
        Run the pass over the cells as a Dask graph (one task per block) on the
        active scheduler: with a ``dask.distributed.Client`` open, on its
        workers, which read their blocks from ``path`` themselves.
    progress
        Progress bars, as for :func:`variance_partition`.
    output
        Also write a copy of the input with the results added to this path (of
        the input's kind, ``.h5ad`` or ``.zarr``): the matrices are copied byte
        for byte, the file is written under a temporary name and renamed into
        place. The input itself is never modified.
    force
        Replace an existing ``output``.

    Returns
    -------
    AnnData
        The file's ``obs`` and ``var``, no ``X``, and the results in ``varm``, ``var``
        and ``uns`` as :func:`variance_partition` stores them
        (``uns[key_added]["params"]["path"]`` records the input's file name).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import scvarpart as svp
    >>> folder = Path(tempfile.mkdtemp())
    >>> svp.datasets.crossed_example(n_cells=500, n_genes=20).write_h5ad(folder / "cells.h5ad")
    >>> result = svp.tl.variance_partition_file(
    ...     folder / "cells.h5ad", svp.datasets.EXAMPLE_FORMULA, method="REML",
    ...     chunk_size=100, output=folder / "cells.varpart.h5ad", progress=False,
    ... )
    >>> result.varm["varpart"].shape
    (20, 6)
    >>> sorted(p.name for p in folder.iterdir())
    ['cells.h5ad', 'cells.varpart.h5ad']
    >>> import shutil
    >>> shutil.rmtree(folder)
    """
    path = Path(path)
    if output is not None and Path(output).exists() and not force:
        raise OutputExistsError(f"{output} exists; pass force=True to replace it.")
    obs, var, results = partition_file(
        path,
        formula,
        batch=batch,
        signal=signal,
        method=method,
        layer=layer,
        use_raw=use_raw,
        cells=cells,
        min_cells=min_cells,
        key_added=key_added,
        n_jobs=n_jobs,
        batch_size=batch_size,
        chunk_size=chunk_size,
        dask=dask,
        progress=progress,
        weights=weights,
        covariance=covariance,
        store_blups=store_blups,
        test=test,
        bootstrap=(n_boot, seed, ci),
        family=family,
        offset=offset,
        approximation=approximation,
    )
    result = AnnData(obs=obs, var=var)
    write_results(result, results, key_added)
    if output is not None:
        write_results_file(
            path, output, lambda holder: write_results(holder, results, key_added), force=force
        )
    return result
