"""A stored fit, done again the same way (its options, its design), and the genes asked for.

For the tools that need more of a fit than is stored (the BLUPs): ``svp.tl.diagnose``
and ``svp.tl.remove_batch_effects``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import pandas as pd
from anndata import AnnData

from .._names import as_names
from ..design import Design
from ._variance_partition import _prepare

__all__ = ["chosen_genes", "fitted_design", "refit_options"]


def _check_gaussian(params: Mapping) -> None:
    """Refuse a count model's fit, before anything is refitted.

    The model checks, the batch correction and the batch metrics work on the Gaussian
    model's residuals and BLUPs of log-normalised values.
    """
    family = params.get("family", "gaussian")
    if family != "gaussian":
        raise ValueError(
            f"This fit is a count model (family={family!r}); svp.tl.diagnose, "
            "remove_batch_effects and batch_metrics work on the Gaussian model of "
            "log-normalised values. Fit that too, under another key_added (e.g. "
            "svp.tl.variance_partition(adata, formula, key_added='varpart_log')), and pass "
            "that key."
        )


def refit_options(params: Mapping, covariance, n_jobs) -> dict:
    """The stored fit's options, to refit it the same way (no intervals, BLUPs kept)."""
    _check_gaussian(params)
    if params.get("covariance_files") or params.get("covariance"):
        if covariance is None:
            raise ValueError(
                "This fit used known covariances between levels (covariance=): pass the "
                "same matrices again (covariance=...)."
            )
    return {
        "batch": as_names(params.get("batch"), "batch"),
        "signal": as_names(params.get("signal"), "signal"),
        "method": str(params.get("method", "ML")),
        "layer": params.get("layer"),
        "use_raw": bool(params.get("use_raw", False)),
        "min_cells": int(params.get("min_cells", 0)),
        "weights": params.get("weights"),
        "covariance": covariance,
        "ci": None,
        "store_blups": True,
        "n_jobs": n_jobs,
        "progress": False,
        "inplace": False,
    }


def fitted_design(adata: AnnData, params: Mapping, covariance) -> Design:
    """The stored fit's design (checked and warned about when it was fitted)."""
    _check_gaussian(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prep = _prepare(
            adata.obs, params["formula"], params.get("method", "ML"), None, None,
            params.get("cells") or None, params.get("weights"), covariance, list(adata.layers),
        )  # fmt: skip
    return prep.design


def chosen_genes(adata: AnnData, genes: str | Sequence[str] | None) -> pd.Index:
    """The genes asked for (all by default), each checked to be in ``adata.var_names``."""
    if genes is None:
        return adata.var_names
    names = pd.Index(as_names(genes, "genes") or [])
    missing = names[~names.isin(adata.var_names)]
    if len(missing):
        raise KeyError(f"genes={list(missing[:10])} are not in adata.var_names.")
    return names
