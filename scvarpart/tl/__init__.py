"""Tools: model fits that write their results into an AnnData object."""

from ._batch_metrics import batch_metrics
from ._diagnose import diagnose
from ._file import variance_partition_file
from ._remove_batch_effects import remove_batch_effects, remove_batch_effects_file
from ._variance_partition import variance_partition

__all__ = [
    "batch_metrics",
    "diagnose",
    "remove_batch_effects",
    "remove_batch_effects_file",
    "variance_partition",
    "variance_partition_file",
]
