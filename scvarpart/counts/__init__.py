"""Counts of pseudobulk samples: normalisation and edgeR's filter of lowly expressed genes."""

from .filters import filter_by_expr
from .normalise import log_cpm

__all__ = ["filter_by_expr", "log_cpm"]
