"""Which matrix of an AnnData object, or of an ``.h5ad`` file or ``.zarr`` store, to use.

One rule for :func:`scvarpart.tl.variance_partition`, the plots and the command line
(through :func:`scvarpart.tl.variance_partition_file`): ``X`` by default, a layer
with ``layer=``, ``raw.X`` with ``use_raw=True`` (its columns matched to the genes by
name), never both; every check and message is written once, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Expression", "select_expression"]


@dataclass(frozen=True)
class Expression:
    """The selected matrix.

    Attributes
    ----------
    matrix
        The matrix as it is stored: in memory, a backed dataset, or a file's element.
    source
        How messages name it, e.g. ``"adata.layers['lognorm']"``.
    columns
        For ``raw``: the column of ``matrix`` of each gene asked for; ``None`` when the
        genes are the matrix's columns by definition (``X``, a layer).
    backed
        Whether ``matrix`` is read from a file (a reordered copy cannot be made).
    """

    matrix: Any
    source: str
    columns: np.ndarray | None = None
    backed: bool = False

    def aligned(self):
        """The matrix with exactly the genes asked for, in order.

        A copy if the columns must be subset or reordered, which a matrix read from a
        file cannot be.
        """
        columns = self.columns
        if columns is None or np.array_equal(columns, np.arange(self.matrix.shape[1])):
            return self.matrix
        if self.backed:
            raise ValueError(
                "use_raw=True on a backed object needs adata.raw to hold exactly the "
                "genes of adata.var_names; load the object into memory or subset raw."
            )
        return self.matrix[:, self.columns]


class _InMemory:
    """An AnnData object (in memory or backed): what selecting needs, and its names."""

    def __init__(self, adata) -> None:
        self.adata = adata
        self.layers_at = "adata.layers"

    def layer_names(self) -> list[str]:
        return list(self.adata.layers)

    def layer(self, name: str) -> Expression:
        return Expression(self.adata.layers[name], f"adata.layers[{name!r}]")

    def raw(self, var_names: pd.Index) -> Expression:
        raw = self.adata.raw
        if raw is None:
            raise ValueError("use_raw=True but adata.raw is not set.")
        missing = var_names.difference(raw.var_names)
        if len(missing):
            raise ValueError(
                f"use_raw=True: {len(missing)} genes of adata.var_names are not in "
                f"adata.raw (e.g. {list(missing[:5])})."
            )
        idx = raw.var_names.get_indexer(var_names)
        return Expression(raw.X, "adata.raw.X", idx, self.adata.isbacked)

    def X(self) -> Expression:
        if self.adata.X is None:
            raise ValueError("adata.X is empty; pass layer= to choose the expression values.")
        return Expression(self.adata.X, "adata.X")


class _Stored:
    """The root group of an ``.h5ad`` file or ``.zarr`` store, read lazily."""

    def __init__(self, root, path: Path) -> None:
        self.root, self.path = root, path
        self.layers_at = str(path)

    def layer_names(self) -> list[str]:
        return list(self.root["layers"]) if "layers" in self.root else []

    def layer(self, name: str) -> Expression:
        return Expression(self.root["layers"][name], f"layers[{name!r}] of {self.path}", None, True)

    def raw(self, var_names: pd.Index) -> Expression:
        import anndata as ad

        if "raw" not in self.root:
            raise ValueError(f"use_raw=True but {self.path} has no raw.")
        raw_var = ad.io.read_elem(self.root["raw"]["var"])
        if not raw_var.index.equals(var_names):
            raise ValueError(
                "use_raw=True reading from a file needs raw to hold exactly the genes "
                "of var; subset raw or load the object into memory."
            )
        return Expression(self.root["raw"]["X"], f"raw.X of {self.path}", None, True)

    def X(self) -> Expression:
        if "X" not in self.root:
            raise ValueError(f"{self.path} has no X; pass layer= to choose the expression values.")
        return Expression(self.root["X"], f"X of {self.path}", None, True)


def select_expression(
    data,
    layer: str | None = None,
    use_raw: bool = False,
    *,
    var_names: pd.Index | None = None,
    path: str | Path | None = None,
) -> Expression:
    """The expression matrix of ``data``: ``X``, ``layers[layer]`` or ``raw.X``.

    Parameters
    ----------
    data
        An AnnData object, or (with ``path``) the root group of an ``.h5ad`` file or
        ``.zarr`` store opened with :func:`scvarpart.storage.stores.open_store`.
    layer
        Use this layer.
    use_raw
        Use ``raw.X``, its columns matched to ``var_names`` by name.
    var_names
        The genes wanted from ``raw`` (by default all of ``adata.var_names``); for a
        file, its ``var`` index, which its ``raw`` must hold exactly.
    path
        The file or store ``data`` was opened from (named in messages).

    Returns
    -------
    The :class:`Expression`: the matrix as stored, how to name it, and for ``raw`` the
    column of each gene.

    Raises
    ------
    ValueError
        Both ``layer`` and ``use_raw``; ``use_raw`` without ``raw``, or with genes
        missing from it; no ``X``.
    KeyError
        An unknown layer, listing the available ones.
    """
    if layer is not None and use_raw:
        raise ValueError("Pass either layer= or use_raw=True, not both.")
    where = _InMemory(data) if path is None else _Stored(data, Path(path))
    if layer is not None:
        names = where.layer_names()
        if layer not in names:
            raise KeyError(f"Layer {layer!r} is not in {where.layers_at}; available: {names}.")
        return where.layer(layer)
    if use_raw:
        if var_names is None:
            var_names = data.var_names
        return where.raw(pd.Index(var_names))
    return where.X()
