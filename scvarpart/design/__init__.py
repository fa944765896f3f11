"""Formulas and design matrices: what the model is, independent of the data values."""

from .association import (
    association,
    canonical_association,
    design_variables,
    nesting,
    within,
)
from .formula import Formula, FormulaError, RandomTerm, parse_formula
from .matrices import Design, DesignError, GroupingFactor, build_design

__all__ = [
    "Design",
    "DesignError",
    "Formula",
    "FormulaError",
    "GroupingFactor",
    "RandomTerm",
    "association",
    "build_design",
    "canonical_association",
    "design_variables",
    "nesting",
    "parse_formula",
    "within",
]
