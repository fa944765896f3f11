"""Variance-partition results: components, fractions, the batch-to-signal ratio, and the
ranking of batch-dominated genes."""

from .fractions import RESIDUAL, component_variances, fractions, rho
from .ranking import batch_dominated

__all__ = ["RESIDUAL", "batch_dominated", "component_variances", "fractions", "rho"]
