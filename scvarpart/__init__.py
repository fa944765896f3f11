"""scvarpart: exact per-gene variance partition of single-cell data with crossed random effects.

Use it like scanpy::

    import scvarpart as svp
    svp.tl.variance_partition(adata, "~ (1|patient) + (1|chemistry)", batch="chemistry",
                              signal="patient")
"""

from . import datasets, pl, tl
from ._version import __version__

__all__ = ["__version__", "datasets", "pl", "tl"]
