"""Getters: tables from an AnnData holding variance-partition results.

As scanpy's ``sc.get``, for the results of :func:`scvarpart.tl.variance_partition`.
"""

from ._results import batch_dominated, beta_df, result, rho_df, varpart_df

__all__ = ["batch_dominated", "beta_df", "result", "rho_df", "varpart_df"]
