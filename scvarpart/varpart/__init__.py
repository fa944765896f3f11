"""Variance-partition results.

Components, fractions, the batch-to-signal ratio, the ranking of batch-dominated genes,
and the result type that stores them.
"""

from .fractions import RESIDUAL, check_roles, component_variances, fractions, rho
from .ranking import batch_dominated
from .result import VarPartResult, component_order

__all__ = [
    "RESIDUAL",
    "VarPartResult",
    "batch_dominated",
    "check_roles",
    "component_order",
    "component_variances",
    "fractions",
    "rho",
]
