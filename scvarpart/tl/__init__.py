"""Tools: model fits that write their results into an AnnData object."""

from ._diagnose import diagnose
from ._file import variance_partition_file
from ._variance_partition import variance_partition

__all__ = ["diagnose", "variance_partition", "variance_partition_file"]
