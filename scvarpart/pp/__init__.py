"""Preprocessing: checks and preparations before a fit (a design audit, pseudobulk samples)."""

from ._check_design import check_design
from ._pseudobulk import pseudobulk

__all__ = ["check_design", "pseudobulk"]
