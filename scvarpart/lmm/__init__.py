"""The likelihood and its optimiser: linear mixed models fitted to many genes at once.

The array-level entry points are :func:`fit`, :func:`response_stats` and
:func:`fit_stats` (:mod:`.genes`); the engines below are their building blocks.
"""

from ..varpart.result import VarPartResult
from .blocked import BlockedDeviance
from .dense import DenseDeviance
from .fitting import LMMFit, choose_engine, fit_lmm
from .gene_weights import fit_gene_weights
from .general import GeneralDeviance
from .genes import GeneStatistics, fit, fit_stats, profile_confint, response_stats
from .modes import conditional_modes
from .newton import NewtonOptions, minimise_batch
from .profiled import ProfiledDeviance
from .terms import ReTerm

__all__ = [
    "BlockedDeviance",
    "DenseDeviance",
    "GeneStatistics",
    "GeneralDeviance",
    "LMMFit",
    "NewtonOptions",
    "ProfiledDeviance",
    "ReTerm",
    "VarPartResult",
    "choose_engine",
    "conditional_modes",
    "fit",
    "fit_gene_weights",
    "fit_lmm",
    "fit_stats",
    "minimise_batch",
    "profile_confint",
    "response_stats",
]
