"""What a plot needs from a fit: its design (formula and cells) and a gene's values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._cells import cell_filter
from ..design import Design, build_design
from ..storage.select import select_expression
from ..varpart import VarPartResult

__all__ = ["fitted_design", "gene_values"]


def fitted_design(
    adata: AnnData, key: str, *, formula: str | None = None, check: bool = False
) -> Design:
    """The design of ``formula``, or, by default, of the fit stored under ``key``.

    The fit's formula and the cells it modelled (``cells=`` and complete observations).
    """
    cells = None
    if formula is None:
        try:
            params = VarPartResult.read(adata, key).params
        except KeyError:
            raise KeyError(
                f"Give formula=, or run svp.tl.variance_partition first (no results under "
                f"key {key!r})."
            ) from None
        formula, cells = str(params["formula"]), params.get("cells")
    return build_design(formula, adata.obs, rows=cell_filter(adata.obs, cells), check=check)


def gene_values(adata: AnnData, name: str, layer: str | None, use_raw: bool) -> np.ndarray:
    """One gene's values over all cells, from ``X``, a layer or ``raw``."""
    if name not in adata.var_names:
        raise KeyError(f"{name!r} is not in adata.var_names.")
    expression = select_expression(adata, layer, use_raw, var_names=pd.Index([name]))
    column = adata.var_names.get_loc(name) if expression.columns is None else expression.columns[0]
    values = expression.matrix[:, column]
    values = values.toarray() if sp.issparse(values) else np.asarray(values)
    return values.ravel().astype(float)
