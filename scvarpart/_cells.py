"""The ``cells=`` option: which cells a model uses, by their ``obs`` values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ._warn import warn

__all__ = ["cell_filter", "cell_lists"]


def cell_lists(cells: Mapping[str, Sequence]) -> dict[str, list]:
    """``cells`` as a plain dict of lists (a single value becomes a list of one)."""
    return {
        str(k): [v] if isinstance(v, str | int | float | bool) else list(v)
        for k, v in cells.items()
    }


def cell_filter(obs: pd.DataFrame, cells: Mapping[str, Sequence] | None) -> np.ndarray | None:
    """Mask of the cells whose obs values are among the allowed ones, per column."""
    if not cells:
        return None
    rows = np.ones(len(obs), dtype=bool)
    for column, allowed in cell_lists(cells).items():
        if column not in obs.columns:
            raise KeyError(
                f"cells= filters on {column!r}, which is not a column of obs; available: "
                f"{list(obs.columns)[:30]}."
            )
        values = obs[column]
        absent = [v for v in allowed if not (values == v).any()]
        if absent:
            warn(f"cells= keeps {column!r} values {absent}, which no cell has.")
        rows &= values.isin(allowed).to_numpy()
    if not rows.any():
        raise ValueError(f"cells={dict(cells)!r} keeps no cell.")
    return rows
