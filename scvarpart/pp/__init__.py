"""Preprocessing: checks and preparations before a fit.

A design audit, pseudobulk samples and their precision weights.
"""

from ._check_design import check_design
from ._pseudobulk import pseudobulk
from ._voom_weights import voom_weights

__all__ = ["check_design", "pseudobulk", "voom_weights"]
