"""Reading stored results: which keys a fit wrote, and the ranked batch-dominated genes."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from anndata import AnnData

from ..varpart import ranking

__all__ = ["batch_dominated", "check_var_names", "result_keys"]

# What variance_partition wrote into var before it recorded its keys in uns: read
# (and replaced on a refit) for results stored by earlier versions.
_LEGACY_VAR_SUFFIXES = ("rho", "mean", "singular", "converged", "loglik")


def check_var_names(
    var_names: pd.Index,
    source: str = "adata.var_names",
    fix: str = "run adata.var_names_make_unique() first",
) -> None:
    """Refuse duplicated gene names: results are stored and looked up by name."""
    if var_names.is_unique:
        return
    dups = var_names[var_names.duplicated()].unique()
    shown = ", ".join(map(repr, dups[:5])) + (f" and {len(dups) - 5} more" if len(dups) > 5 else "")
    raise ValueError(
        f"{source} has {len(dups)} duplicated gene name(s): {shown}. Results are stored and "
        f"looked up by gene name, so every name must be unique: {fix}."
    )


def _names(value) -> list[str]:
    """A list of names as stored in uns (a list, or an array after reading a file)."""
    return [] if value is None else [str(v) for v in np.atleast_1d(value)]


def result_keys(adata: AnnData, key: str) -> dict[str, list[str]]:
    """The ``var`` columns and ``varm`` keys the results under ``key`` occupy.

    Read from ``uns[key]["result_keys"]``, where :func:`scvarpart.tl.variance_partition`
    records them, so that a user's column that merely starts with the key (e.g.
    ``varpart_notes``) is never taken for a result; for results stored before that
    record existed, the fixed set of keys the fit wrote then.
    """
    entry = adata.uns.get(key)
    if not isinstance(entry, Mapping) or "params" not in entry:
        return {"var": [], "varm": []}  # not a variance partition: nothing of ours
    recorded = entry.get("result_keys")
    if isinstance(recorded, Mapping):
        var, varm = _names(recorded.get("var")), _names(recorded.get("varm"))
    else:
        var = [f"{key}_{s}" for s in _LEGACY_VAR_SUFFIXES]
        varm = [key, f"{key}_variance"]
    return {
        "var": [c for c in var if c in adata.var.columns],
        "varm": [k for k in varm if k in adata.varm],
    }


def batch_dominated(
    adata: AnnData, *, key: str = "varpart", n_top: int | None = None, min_rho: float = 1.0
) -> pd.DataFrame:
    """The batch-dominated genes, most batch-dominated first.

    A gene is batch-dominated when its batch-to-signal ratio ``rho`` is at least
    ``min_rho``; these genes are ranked by their batch fraction (the ``batch``
    components' share of the gene's variance), largest first. Ranking by ``rho`` itself
    would put noise first: a gene with no signal variance has ``rho = inf`` however
    little batch variance it has. This is the ranking of ``scvarpart report`` and
    :func:`scvarpart.pl.percent_bars` (see :mod:`scvarpart.varpart.ranking`).

    Parameters
    ----------
    adata
        Annotated data with the results of :func:`scvarpart.tl.variance_partition`,
        run with ``batch=`` and ``signal=``.
    key
        The results' ``key_added``.
    n_top
        Return only the first ``n_top`` genes (default: all batch-dominated genes).
    min_rho
        Smallest ``rho`` of a batch-dominated gene (1: at least as much batch as signal
        variance).

    Returns
    -------
    DataFrame indexed by gene, in rank order, with columns ``batch_fraction``,
    ``signal_fraction`` and ``rho``.

    Examples
    --------
    >>> import scvarpart as svp
    >>> adata = svp.datasets.crossed_example(n_cells=500, n_genes=40, seed=1)
    >>> svp.tl.variance_partition(
    ...     adata, svp.datasets.EXAMPLE_FORMULA, batch=["chemistry", "day", "operator"],
    ...     signal="patient", method="REML", progress=False,
    ... )
    >>> top = svp.get.batch_dominated(adata, n_top=5)
    >>> top.columns.tolist()
    ['batch_fraction', 'signal_fraction', 'rho']
    """
    if key not in adata.uns or key not in adata.varm:
        raise KeyError(
            f"No variance partition under key {key!r}: run svp.tl.variance_partition(adata, "
            f"..., key_added={key!r}) first."
        )
    check_var_names(adata.var_names)
    params = adata.uns[key]["params"]
    rho_col = f"{key}_rho"
    if rho_col not in result_keys(adata, key)["var"]:
        raise KeyError(
            f"No rho under key {key!r}: run svp.tl.variance_partition with batch= and signal=."
        )
    return ranking.batch_dominated(
        adata.varm[key],
        adata.var[rho_col],
        _names(params.get("batch")),
        _names(params.get("signal")),
        min_rho=min_rho,
        n_top=n_top,
    )
