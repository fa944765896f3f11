"""The likelihood and its optimiser: random-intercept LMMs fitted to many genes at once."""

from .blocked import BlockedDeviance
from .dense import DenseDeviance
from .fit import LMMFit, choose_engine, fit_lmm
from .newton import NewtonResult, projected_newton

__all__ = [
    "BlockedDeviance",
    "DenseDeviance",
    "LMMFit",
    "NewtonResult",
    "choose_engine",
    "fit_lmm",
    "projected_newton",
]
