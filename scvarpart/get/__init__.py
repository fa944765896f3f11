"""Getters: tables from an AnnData holding :func:`scvarpart.tl.variance_partition`
results, as scanpy's ``sc.get``."""

from ._results import batch_dominated

__all__ = ["batch_dominated"]
