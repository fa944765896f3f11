"""Sufficient statistics: everything the likelihood needs, from one pass over the data.

The design's cross-products (Z'Z, Z'X, X'X) are computed once; one pass over the
expression matrix gives Z'y, X'y and the centred sum of squares of every gene.
After that no per-gene computation depends on the number of observations.
"""

from ..storage.matrix import is_dask_array, nonfinite_columns, storage_format
from .gram import DesignGram, design_gram
from .response import ResponseStats, response_stats

__all__ = [
    "DesignGram",
    "ResponseStats",
    "design_gram",
    "is_dask_array",
    "nonfinite_columns",
    "response_stats",
    "storage_format",
]
