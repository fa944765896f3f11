"""Getters: tables from an AnnData holding :func:`scvarpart.tl.variance_partition`
results, as scanpy's ``sc.get``."""

from ._results import batch_dominated, beta_df, result, rho_df, varpart_df

__all__ = ["batch_dominated", "beta_df", "result", "rho_df", "varpart_df"]
