"""``svp.tl.remove_batch_effects``: the fitted technical effects taken out of the data."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scanpy import logging as logg

from .._docs import doc_adata, doc_key, doc_n_jobs, doc_params
from .._io import OutputExistsError, check_input, reading, write_results_file
from .._names import as_names
from .._warn import warn
from ..design import Design
from ..design.predict import Effects
from ..get import result
from ..storage.matrix import default_chunk_rows, storage_format
from ..storage.select import select_expression
from ..storage.stores import dense_array, open_store
from ..varpart import RESIDUAL, VarPartResult
from ..varpart.correction import coefficient_arrays, corrected_blocks, corrected_values
from ._file import _lazy_matrix, partition_file
from ._refit import chosen_genes, fitted_design, refit_options
from ._variance_partition import _expression, variance_partition

__all__ = ["remove_batch_effects", "remove_batch_effects_file"]

# Dense output above which the size is a warning, not a note: the corrected values of a
# sparse matrix are dense (every cell of a corrected gene moves).
_LARGE_BYTES = 2 * 1024**3
# Stored values per chunk of a sparse layer written to a file block by block.
_SPARSE_CHUNK = 2**18


def _size(n_bytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:,.0f} {unit}" if unit == "bytes" else f"{n_bytes:,.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError  # pragma: no cover - the loop always returns


def _stored_fit(adata: AnnData, formula: str | None, key: str) -> VarPartResult | None:
    """The fit under ``key``; ``None`` when there is none and ``formula`` is given."""
    if key not in adata.uns:
        if formula is None:
            raise KeyError(
                f"No variance partition under key={key!r} (adata.uns[{key!r}]): run "
                "svp.tl.variance_partition(adata, formula, batch=[...]) first, or pass "
                "formula= (and terms=) to fit it here."
            )
        return None
    stored = result(adata, key=key)
    if formula is not None and formula.strip() != str(stored.params.get("formula")).strip():
        raise ValueError(
            f"adata.uns[{key!r}] holds a fit of {stored.params.get('formula')!r}, not of "
            f"{formula!r}. Leave out formula= to correct with the stored fit, or fit the "
            "new model under another key (variance_partition(..., key_added=...)) and "
            "pass key=."
        )
    return stored


def _technical_terms(terms, params: Mapping, key: str) -> list[str]:
    """The terms to remove: ``terms``, or by default the fit's batch terms."""
    chosen = as_names(terms, "terms") or as_names(params.get("batch"), "batch") or []
    if not chosen:
        raise ValueError(
            f"Which terms are technical? The fit under key={key!r} has no batch terms: "
            "pass terms=[...] (random or fixed terms of the model)."
        )
    return chosen


def _check_terms(terms: list[str], design: Design, params: Mapping) -> None:
    """Every term is a technical component of the model: not the residual or a signal."""
    known = [c for c in design.components if c != RESIDUAL]
    for t in terms:
        if t not in known:
            raise ValueError(
                f"terms={t!r} is not a term of the model {params.get('formula')!r}; its "
                f"random and fixed terms are {known}."
            )
    signal = [t for t in terms if t in (as_names(params.get("signal"), "signal") or [])]
    if signal:
        raise ValueError(
            f"terms={signal} are signal terms of the fit (signal=): removing them would "
            "remove the biology. Name only technical terms."
        )


def _full_layer(Y, columns: np.ndarray, values: np.ndarray, *, zeros: bool = False):
    """``values`` in the columns ``columns`` of a matrix shaped as ``Y``.

    The other columns are ``Y``'s (or zeros): sparse where ``Y`` is, so that a subset of
    corrected genes costs only its own dense columns.
    """
    n_rows, n_genes = Y.shape
    if len(columns) == n_genes and np.array_equal(columns, np.arange(n_genes)):
        return values
    if sp.issparse(Y) or zeros:
        rest = np.setdiff1d(np.arange(n_genes), columns)
        other = (
            sp.csc_matrix((n_rows, len(rest)), dtype=values.dtype)
            if zeros
            else sp.csc_matrix(Y)[:, rest].astype(values.dtype)
        )
        stacked = sp.hstack([other, sp.csc_matrix(values)], format="csc")
        order = np.argsort(np.concatenate([rest, columns]), kind="stable")
        return stacked[:, order].tocsr()
    out = np.array(Y, dtype=values.dtype)
    out[:, columns] = values
    return out


@doc_params(doc_adata=doc_adata, doc_key=doc_key, doc_n_jobs=doc_n_jobs)
def remove_batch_effects(
    adata: AnnData,
    formula: str | None = None,
    *,
    terms: str | Sequence[str] | None = None,
    key: str = "varpart",
    genes: str | Sequence[str] | None = None,
    layer_added: str = "varpart_corrected",
    batch_layer: str | None = None,
    dtype: Any = np.float32,
    covariance: Mapping[str, pd.DataFrame] | None = None,
    n_jobs: int | None = 1,
    copy: bool = False,
    **fit_kwargs,
) -> AnnData | None:
    """Take each gene's fitted technical effects out of its values.

    For cell ``i`` and gene ``g`` the corrected value is ``y_ig - t_ig``, where ``t_ig`` is
    the gene's fitted technical effect at the cell: the BLUPs of the batch terms at the
    cell's levels (random intercepts and slopes, with the slope covariates' values) plus
    the fixed effects of technical covariates (e.g. ``log_umi``), centred on their mean
    over the cells so that every gene's mean is kept. The signal terms, the other fixed
    effects and the residual stay (:mod:`scvarpart.varpart.correction`).

    The fit under ``key`` is used; without one, the model ``formula`` is fitted first
    (:func:`~scvarpart.tl.variance_partition` with ``store_blups=True`` and, unless given,
    ``ci=None``) and stored under ``key``. A stored fit without the BLUPs is refitted for
    them (the same model, cells and options) without changing what is stored.

    Parameters
    ----------
    {doc_adata}
    formula
        The model, when ``adata`` has no fit under ``key`` yet.
    terms
        The technical terms to remove: random terms (their BLUPs) and fixed terms (their
        centred fixed effects). Default: the fit's ``batch``.
    {doc_key}
    genes
        Correct only these genes (default: all). The corrected values are dense (every
        cell of a corrected gene moves): for a sparse matrix the layer keeps the other
        genes sparse, as they are, so a subset (e.g. the highly variable genes) costs only
        its own columns.
    layer_added
        The layer of corrected values.
    batch_layer
        Also store the technical part itself in this layer (e.g. ``"varpart_batch"``); 0
        for the genes not corrected.
    dtype
        Of the layers (the arithmetic is in float64).
    covariance
        The known covariances between levels, when the fit had them (they are not stored).
    {doc_n_jobs}
    copy
        Return a modified copy instead of writing into ``adata``.
    **fit_kwargs
        Passed to :func:`~scvarpart.tl.variance_partition` when the model is fitted here
        (``batch`` defaults to ``terms``; e.g. ``signal=``, ``method=``, ``layer=``).

    Returns
    -------
    None, or the modified copy with ``copy=True``. Sets:

    ``adata.layers[layer_added]``
        The corrected values (of the matrix the fit read: ``X``, its layer or ``raw``),
        cells x genes; the genes not corrected and the cells the model did not use keep
        their values.
    ``adata.layers[batch_layer]``
        With ``batch_layer``: the technical parts removed.
    ``adata.var[layer_added]``
        Whether the gene was corrected (not: not asked for, or no estimates).
    ``adata.uns[layer_added]["params"]``
        ``key``, ``terms``, ``genes`` (``None`` for all), ``source`` (the matrix
        corrected), ``dtype``, ``batch_layer``; ``adata.uns[layer_added]["uncorrected"]``
        lists the genes asked for whose fit had no estimates.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=600, n_genes=5, seed=1)
    >>> svp.tl.remove_batch_effects(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, terms=["chemistry", "day", "operator"],
    ...     signal="patient", progress=False,
    ... )
    >>> adata.layers["varpart_corrected"].shape
    (600, 5)
    """
    if adata.isbacked:
        raise ValueError(
            "remove_batch_effects writes the corrected values into memory; for a backed "
            "object, correct its file with svp.tl.remove_batch_effects_file(path, output, "
            "...), which writes the layer block by block."
        )
    if copy:
        adata = adata.copy()
    names = chosen_genes(adata, genes)
    terms_l = as_names(terms, "terms")
    stored = _stored_fit(adata, formula, key)
    if stored is None:
        assert formula is not None  # _stored_fit raised otherwise
        fit_kwargs.setdefault("batch", terms_l)
        fit_kwargs.setdefault("ci", None)
        variance_partition(
            adata, formula, store_blups=True, covariance=covariance, key_added=key,
            n_jobs=n_jobs, **fit_kwargs,
        )  # fmt: skip
        stored = result(adata, key=key)
    elif fit_kwargs:
        raise TypeError(
            f"remove_batch_effects: {sorted(fit_kwargs)} apply to a new fit, but "
            f"adata.uns[{key!r}] holds one already; leave them out."
        )
    params = stored.params
    terms_l = _technical_terms(terms_l, params, key)
    design = fitted_design(adata, params, covariance)
    _check_terms(terms_l, design, params)
    Y, source = _expression(adata, params.get("layer"), bool(params.get("use_raw", False)))
    n_bytes = Y.shape[0] * len(names) * np.dtype(dtype).itemsize * (2 if batch_layer else 1)
    message = (
        f"remove_batch_effects: the corrected values of {len(names):,} genes x "
        f"{Y.shape[0]:,} cells are dense: {_size(n_bytes)} as {np.dtype(dtype).name}"
    )
    if n_bytes > _LARGE_BYTES:
        warn(f"{message}. To use less, pass genes= (e.g. the highly variable genes).")
    else:
        logg.info(message)
    fit = _with_blups_of(adata, stored, names, terms_l, design, covariance, n_jobs)
    beta, blups, failed = coefficient_arrays(fit, design, names, terms_l)
    if len(failed):
        warn(
            f"{len(failed)} genes have no estimates under key={key!r} (e.g. "
            f"{list(failed[:5])}; why: svp.get.result(adata, key={key!r}).errors): their "
            "values are left as they are."
        )
    effects = Effects.of(design, beta, blups, terms=terms_l, centred=True)
    columns = adata.var_names.get_indexer(names)
    corrected, parts = corrected_values(
        Y, effects, genes=columns, dtype=dtype, technical=batch_layer is not None, n_jobs=n_jobs
    )
    adata.layers[layer_added] = _full_layer(Y, columns, corrected)
    if parts is not None and batch_layer is not None:
        adata.layers[batch_layer] = _full_layer(Y, columns, parts, zeros=True)
    adata.var[layer_added] = adata.var_names.isin(names) & ~adata.var_names.isin(failed)
    adata.uns[layer_added] = _record(
        adata.var_names, names, failed, key=key, terms=list(terms_l), source=source,
        dtype=np.dtype(dtype).name, batch_layer=batch_layer,
    )  # fmt: skip
    return adata if copy else None


def _lacks_blups(stored: VarPartResult, design: Design, terms) -> bool:
    """Whether the stored fit lacks the BLUPs of one of the random ``terms``."""
    blups = stored.blups or {}
    return any(f.name in terms and f.name not in blups for f in design.factors)


def _with_blups_of(adata, stored: VarPartResult, names, terms, design: Design, covariance, n_jobs):
    """A fit of ``names`` with the BLUPs of the random ``terms``: stored, or refitted."""
    if not _lacks_blups(stored, design, terms):
        return stored
    logg.info(f"remove_batch_effects: refitting {len(names):,} genes for their BLUPs")
    sub = adata if names.equals(adata.var_names) else adata[:, names]
    params = stored.params
    options = refit_options(params, covariance, n_jobs)
    return variance_partition(sub, params["formula"], cells=params.get("cells") or None, **options)


def _stored_file_fit(path: Path, key: str) -> AnnData:
    """The file's ``obs``, ``var``, ``varm`` and ``uns[key]``, without the matrices."""
    with reading(path), open_store(path) as root:
        if "uns" not in root or key not in root["uns"]:
            raise KeyError(
                f"{path} has no variance partition under key={key!r}: fit it first with "
                f"svp.tl.variance_partition_file({str(path)!r}, formula, batch=[...], "
                "output=...) (or `scvarpart fit`) and correct that output."
            )
        return AnnData(
            obs=ad.io.read_elem(root["obs"]),
            var=ad.io.read_elem(root["var"]),
            varm=ad.io.read_elem(root["varm"]) if "varm" in root else {},
            uns={key: ad.io.read_elem(root["uns"][key])},
        )


class _LayerWriter:
    """One layer of the output file, written block by block of rows as the blocks come.

    Dense when every gene is corrected or the matrix is dense; otherwise CSR, the other
    genes' values sparse as they are (appended block by block).
    """

    def __init__(self, group, name: str, shape, columns, *, sparse_input, dtype, rows, zeros):
        self.columns, self.dtype, self.zeros = columns, np.dtype(dtype), zeros
        n_genes = shape[1]
        self.full = len(columns) == n_genes and np.array_equal(columns, np.arange(n_genes))
        self.sparse = not self.full and (zeros or sparse_input)
        if name in group:
            del group[name]
        if self.sparse:
            empty = sp.csr_matrix((0, n_genes), dtype=self.dtype)
            # chunks sized for appending (an empty array's default is 1 value a chunk)
            ad.io.write_elem(group, name, empty, dataset_kwargs={"chunks": (_SPARSE_CHUNK,)})
            self.out = ad.io.sparse_dataset(group[name])
        else:
            self.out = dense_array(group, name, shape, self.dtype, rows)

    def write(self, start: int, stop: int, values: np.ndarray, block) -> None:
        """Rows ``start:stop``: ``values`` in the columns, ``block``'s (or 0) elsewhere."""
        values = values.astype(self.dtype)
        if self.full:
            self.out[start:stop] = values
            return
        part = _full_layer(block, self.columns, values, zeros=self.zeros)
        if self.sparse:
            self.out.append(sp.csr_matrix(part))
        else:
            self.out[start:stop] = part


def _refit_file(path: Path, params: Mapping, key: str, covariance, n_jobs, chunk_size):
    """The file's fit done again with the BLUPs (no intervals), as :func:`partition_file`."""
    options = refit_options(params, covariance, n_jobs)
    _, _, fit = partition_file(
        path, params["formula"], batch=options["batch"], signal=options["signal"],
        method=options["method"], layer=options["layer"], use_raw=options["use_raw"],
        cells=params.get("cells") or None, min_cells=options["min_cells"], key_added=key,
        n_jobs=n_jobs, batch_size=256, chunk_size=chunk_size, dask=False, progress=False,
        weights=options["weights"], covariance=covariance, store_blups=True,
        bootstrap=(0, 0, None),
    )  # fmt: skip
    return fit


def _record(var_names: pd.Index, names: pd.Index, failed: pd.Index, **params) -> dict:
    """``uns[layer_added]``: the parameters and the genes left as they were."""
    subset = len(names) < len(var_names)
    return {
        "params": {**params, "genes": list(map(str, names)) if subset else None},
        "uncorrected": list(map(str, failed)),
    }


@doc_params(doc_key=doc_key, doc_n_jobs=doc_n_jobs)
def remove_batch_effects_file(
    path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    terms: str | Sequence[str] | None = None,
    key: str = "varpart",
    genes: str | Sequence[str] | None = None,
    layer_added: str = "varpart_corrected",
    batch_layer: str | None = None,
    dtype: Any = np.float32,
    covariance: Mapping[str, pd.DataFrame] | None = None,
    n_jobs: int | None = 1,
    chunk_size: int | None = None,
    force: bool = False,
) -> AnnData:
    """:func:`remove_batch_effects` of an ``.h5ad`` file or ``.zarr`` store, out of core.

    ``path`` must hold a fit under ``key`` (:func:`variance_partition_file` with
    ``output=``, or ``scvarpart fit``); without its BLUPs the genes are refitted from the
    file first. ``output`` is a copy of ``path`` (of the same kind; the matrices copied
    byte for byte) with the corrected layer added, written block by block of
    ``chunk_size`` cells as it is computed: memory holds a block, never the layer. The
    output is written under a temporary name and renamed into place; ``path`` is never
    modified.

    Parameters
    ----------
    path
        The file or store with the fit.
    output
        Where to write the corrected copy.
    terms, genes, layer_added, batch_layer, dtype, covariance
        As :func:`remove_batch_effects`.
    {doc_key}
    {doc_n_jobs}
    chunk_size
        Cells per block (by default about 4 million values).
    force
        Replace an existing ``output``.

    Returns
    -------
    AnnData
        The file's ``obs`` and ``var`` (with ``var[layer_added]``) and
        ``uns[layer_added]``, no matrices: the layers are in ``output``.

    Examples
    --------
    >>> import shutil, tempfile
    >>> from pathlib import Path
    >>> import anndata as ad
    >>> import scvarpart as svp
    >>> folder = Path(tempfile.mkdtemp())
    >>> adata = svp.datasets.crossed_example(n_cells=500, n_genes=6, seed=1)
    >>> adata.write_h5ad(folder / "cells.h5ad")
    >>> _ = svp.tl.variance_partition_file(
    ...     folder / "cells.h5ad", svp.datasets.EXAMPLE_FORMULA, batch=["chemistry", "day"],
    ...     store_blups=True, ci=None, output=folder / "fitted.h5ad", progress=False,
    ... )
    >>> _ = svp.tl.remove_batch_effects_file(
    ...     folder / "fitted.h5ad", folder / "corrected.h5ad", chunk_size=100
    ... )
    >>> ad.read_h5ad(folder / "corrected.h5ad").layers["varpart_corrected"].shape
    (500, 6)
    >>> shutil.rmtree(folder)
    """
    path = check_input(path)
    if Path(output).exists() and not force:
        raise OutputExistsError(f"{output} exists; pass force=True to replace it.")
    holder = _stored_file_fit(path, key)
    stored = result(holder, key=key)
    params = stored.params
    names = chosen_genes(holder, genes)
    terms_l = _technical_terms(terms, params, key)
    design = fitted_design(holder, params, covariance)
    _check_terms(terms_l, design, params)
    fit = stored
    if _lacks_blups(stored, design, terms_l):
        logg.info(f"remove_batch_effects_file: refitting {holder.n_vars:,} genes for their BLUPs")
        fit = _refit_file(path, params, key, covariance, n_jobs, chunk_size)
    beta, blups, failed = coefficient_arrays(fit, design, names, terms_l)
    effects = Effects.of(design, beta, blups, terms=terms_l, centred=True)
    columns = holder.var_names.get_indexer(names)
    rows = chunk_size or default_chunk_rows(len(columns))

    def write_layers(root) -> None:
        expression = select_expression(
            root, params.get("layer"), bool(params.get("use_raw", False)),
            var_names=holder.var_names, path=path,
        )  # fmt: skip
        Y = _lazy_matrix(expression.matrix, holder.n_vars, None, dask=False)
        raw = expression.columns  # raw's column of each gene, or None
        group = root.require_group("layers")
        layers = [(layer_added, False)] + ([(batch_layer, True)] if batch_layer else [])
        sparse_input = storage_format(Y) != "dense"
        shape = (Y.shape[0], holder.n_vars)
        writers = [
            _LayerWriter(
                group,
                name,
                shape,
                columns,
                sparse_input=sparse_input,
                dtype=dtype,
                rows=rows,
                zeros=zeros,
            )
            for name, zeros in layers
        ]
        genes_of_y = columns if raw is None else raw[columns]
        for b in corrected_blocks(Y, effects, genes=genes_of_y, n_jobs=n_jobs, chunk_rows=rows):
            block = b.values if raw is None else b.values[:, raw]
            for writer, values in zip(writers, (b.corrected, b.technical), strict=False):
                writer.write(b.start, b.stop, values, block)

    record = _record(
        holder.var_names, names, failed, key=key, terms=list(terms_l),
        source=f"{path.name}: {params.get('layer') or ('raw.X' if params.get('use_raw') else 'X')}",
        dtype=np.dtype(dtype).name, batch_layer=batch_layer,
    )  # fmt: skip
    corrected_genes = holder.var_names.isin(names) & ~holder.var_names.isin(failed)

    def add(target: AnnData) -> None:
        target.var[layer_added] = corrected_genes
        target.uns[layer_added] = record

    write_results_file(path, output, add, force=force, write_elements=write_layers)
    var = holder.var.assign(**{layer_added: corrected_genes})
    return AnnData(obs=holder.obs, var=var, uns={layer_added: record})
