"""Formulas and design matrices: what the model is, independent of the data values."""

from .association import (
    association,
    canonical_association,
    design_variables,
    nesting,
    within,
)
from .audit import DesignAudit, audit_design
from .formula import Formula, FormulaError, RandomTerm, parse_formula
from .matrices import Design, DesignError, GroupingFactor, build_design

__all__ = [
    "Design",
    "DesignAudit",
    "DesignError",
    "Formula",
    "FormulaError",
    "GroupingFactor",
    "RandomTerm",
    "association",
    "audit_design",
    "build_design",
    "canonical_association",
    "design_variables",
    "nesting",
    "parse_formula",
    "within",
]
