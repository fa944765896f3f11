"""Variance-partition results: components, fractions and the batch-to-signal ratio."""

from .fractions import RESIDUAL, component_variances, fractions, rho

__all__ = ["RESIDUAL", "component_variances", "fractions", "rho"]
