"""Formulas and design matrices: what the model is, independent of the data values."""

from .formula import Formula, FormulaError, RandomTerm, parse_formula
from .matrices import Design, DesignError, GroupingFactor, build_design

__all__ = [
    "Design",
    "DesignError",
    "Formula",
    "FormulaError",
    "GroupingFactor",
    "RandomTerm",
    "build_design",
    "parse_formula",
]
