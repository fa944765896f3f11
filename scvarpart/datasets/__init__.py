"""Example datasets, generated deterministically (nothing is downloaded)."""

from ._crossed import EXAMPLE_FORMULA, crossed_example
from ._donor_batch import DONOR_BATCH_FORMULA, donor_batch
from ._simulate import SIMULATION_FORMULA, simulate_counts

__all__ = [
    "DONOR_BATCH_FORMULA",
    "EXAMPLE_FORMULA",
    "SIMULATION_FORMULA",
    "crossed_example",
    "donor_batch",
    "simulate_counts",
]
