"""The count models of ``svp.tl.variance_partition``: their options, offset and fits.

``family="poisson"`` or ``"nb"`` fits raw counts with :func:`scvarpart.glmm.fit_counts`
in place of the linear mixed model of log-normalised values. This module checks the
options that only count models have, before any data are read, and computes the
default offset: the log of each cell's library size.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from ..design import Design, DesignError
from ..glmm.genes import FAMILIES, check_counts, check_family
from ..glmm.rows import check_intercepts
from ..storage.matrix import default_chunk_rows, map_row_blocks, row_bounds

__all__ = [
    "LIBRARY_SIZE",
    "CountModel",
    "check_count_design",
    "check_count_options",
    "library_offset",
    "offset_values",
]

#: What the offset is when none is given, as recorded in ``params["offset"]``.
LIBRARY_SIZE = "log_library_size"


class CountModel(NamedTuple):
    """A count model's options: family, offset column (or ``None``), approximation."""

    family: str
    offset: str | None
    approximation: str


def check_count_options(
    family: str,
    *,
    offset: str | None,
    approximation: str,
    obs: pd.DataFrame,
    method: str,
    weights,
    test,
    n_boot: int,
) -> CountModel | None:
    """The count model asked for (``None`` for ``"gaussian"``), its options checked.

    What only the linear mixed model has (REML, weights, tests and the bootstrap) is
    refused for a count family, with what to do instead.
    """
    if family == "gaussian":
        if offset is not None:
            raise ValueError(
                f"offset={offset!r} is for count models: pass family='nb' or 'poisson' "
                "with the raw counts (layer='counts')."
            )
        return None
    check_family(family, approximation)
    refused = {
        "method='REML'": str(method).upper() == "REML",
        "weights=": weights is not None,
        "test='lrt'": test is not None,
        "n_boot=": bool(n_boot),
    }
    given = [k for k, v in refused.items() if v]
    if given:
        raise ValueError(
            f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} not available for "
            f"family={family!r}: count models are fitted by the Laplace approximation of "
            "the likelihood (as glmer and glmmTMB), without weights, tests or "
            "bootstrap. Leave them out, or use family='gaussian' on "
            "log-normalised values."
        )
    if offset is not None:
        _check_offset(obs, offset)
    return CountModel(family, offset, approximation)


def _check_offset(obs: pd.DataFrame, column: str) -> None:
    if column not in obs.columns:
        raise DesignError(
            f"offset={column!r} is not a column of obs (columns: {list(obs.columns)[:20]}). "
            "Give the column of each cell's log size factor, or leave offset out for the "
            "log library size."
        )
    values = obs[column]
    if not pd.api.types.is_numeric_dtype(values):
        raise DesignError(f"offset column {column!r} must be numeric (log size factors).")


def check_count_design(design: Design, family: str) -> None:
    """Refuse terms the count models do not support (slopes, singular known covariances)."""
    if family in FAMILIES:
        check_intercepts(design)


def offset_values(
    obs: pd.DataFrame, model: CountModel, Y, design: Design, var_names: pd.Index, source: str
) -> np.ndarray:
    """Per cell, the offset: the given column, or the log library size.

    The library size is each cell's total count over every gene of the matrix. Values
    that are not counts are refused first (naming the gene), then a cell the model uses
    with no count at all, or a missing offset (naming the cell).
    """
    check_counts(Y, design, var_names, source)
    rows = np.flatnonzero(design.keep)
    if model.offset is not None:
        values = obs[model.offset].to_numpy(dtype=float)
        bad = rows[~np.isfinite(values[rows])]
        what = f"offset column {model.offset!r} is not finite"
    else:
        values = library_offset(Y)
        bad = rows[~np.isfinite(values[rows])]
        what = "the cell has no counts (library size 0)"
    if len(bad):
        raise ValueError(
            f"{what} for {len(bad)} cells the model uses, e.g. {str(obs.index[bad[0]])!r}. "
            "Drop them (cells=), or pass offset= with a finite log size factor per cell."
        )
    return values


def library_offset(Y) -> np.ndarray:
    """``log`` of each row's sum (``-inf`` for an empty row), read in blocks of rows."""
    bounds = row_bounds(Y.shape[0], default_chunk_rows(Y.shape[1]))

    def block(values, start, stop, first):
        return np.asarray(values[start:stop].sum(axis=1), dtype=float).ravel()

    totals = np.concatenate(list(map_row_blocks(Y, block, bounds=bounds)))
    with np.errstate(divide="ignore"):
        return np.log(totals)
