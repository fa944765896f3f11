"""Plotting: what a biologist looks at (matplotlib; ``ax=``/``show=`` as in scanpy)."""

from ._bars import percent_bars
from ._batch_metrics import batch_metrics
from ._common import component_colors
from ._design import design
from ._gene import gene
from ._qq import qq
from ._report import report
from ._rho import rho
from ._variance_partition import variance_partition
from ._voom_trend import voom_trend

__all__ = [
    "batch_metrics",
    "component_colors",
    "design",
    "gene",
    "percent_bars",
    "qq",
    "report",
    "rho",
    "variance_partition",
    "voom_trend",
]
