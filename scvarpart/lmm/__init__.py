"""The likelihood and its optimiser: random-intercept LMMs fitted to many genes at once."""

from .blocked import BlockedDeviance
from .dense import DenseDeviance
from .fit import LMMFit, choose_engine, fit_lmm
from .newton import NewtonOptions, minimise_batch
from .profiled import ProfiledDeviance

__all__ = [
    "BlockedDeviance",
    "DenseDeviance",
    "LMMFit",
    "NewtonOptions",
    "ProfiledDeviance",
    "choose_engine",
    "fit_lmm",
    "minimise_batch",
]
