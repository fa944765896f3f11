"""Tools: model fits that write their results into an AnnData object."""

from ._variance_partition import variance_partition

__all__ = ["variance_partition"]
