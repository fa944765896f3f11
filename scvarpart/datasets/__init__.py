"""Example datasets, generated deterministically (nothing is downloaded)."""

from ._crossed import EXAMPLE_FORMULA, crossed_example
from ._simulate import SIMULATION_FORMULA, simulate_counts

__all__ = ["EXAMPLE_FORMULA", "SIMULATION_FORMULA", "crossed_example", "simulate_counts"]
