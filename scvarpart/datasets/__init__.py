"""Example datasets, generated deterministically (nothing is downloaded)."""

from ._crossed import EXAMPLE_FORMULA, crossed_example

__all__ = ["EXAMPLE_FORMULA", "crossed_example"]
