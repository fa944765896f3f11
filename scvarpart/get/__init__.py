"""Getters: tables from an AnnData holding variance-partition results.

As scanpy's ``sc.get``, for the results of :func:`scvarpart.tl.variance_partition`.
"""

from ._results import (
    batch_dominated,
    batch_metrics_df,
    beta_df,
    blups,
    design,
    diagnostics,
    groups,
    result,
    rho_df,
    varcorr_df,
    varpart_df,
)

__all__ = [
    "batch_dominated",
    "batch_metrics_df",
    "beta_df",
    "blups",
    "design",
    "diagnostics",
    "groups",
    "result",
    "rho_df",
    "varcorr_df",
    "varpart_df",
]
