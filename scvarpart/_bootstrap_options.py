"""The bootstrap's options: their names, defaults and checks, without the fitting code.

One definition for the library (:func:`scvarpart.lmm.genes.check_bootstrap`), analysis
plans and the command line, which check them before importing anything heavy.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import TypeGuard

__all__ = ["BOOTSTRAP_DEFAULTS", "BOOTSTRAP_KEYS", "bootstrap_problem"]

#: The bootstrap's parameters, as :func:`scvarpart.tl.variance_partition` names them,
#: and the defaults of ``seed`` and ``ci`` there.
BOOTSTRAP_KEYS = ("n_boot", "seed", "ci")
BOOTSTRAP_DEFAULTS = {"seed": 0, "ci": 0.95}
# Fewer replicates are refused; a seed is recorded with the results, and an HDF5 or
# Zarr attribute holds a 64-bit integer at most.
_MIN_BOOT = 20
_MAX_SEED = 2**63 - 1


def _whole(value: object) -> TypeGuard[int]:
    """An integer (Python's or NumPy's), not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def bootstrap_problem(key: str, value: object) -> str | None:
    """What is wrong with a bootstrap parameter's value, as "must be ..."; or ``None``.

    ``key``: ``n_boot``, ``seed`` or ``ci``. A seed must also be recordable in an
    ``.h5ad`` file.
    """
    if key == "n_boot":
        if not _whole(value) or value < 0:
            return "must be a non-negative integer (0: no bootstrap)"
        if 0 < value < _MIN_BOOT:
            return (
                f"must be 0 (none) or at least {_MIN_BOOT}: fewer replicates are too few for "
                "percentile intervals (hundreds for 95% intervals)"
            )
        return None
    if key == "seed":
        if not _whole(value) or not 0 <= value <= _MAX_SEED:
            return "must be a non-negative integer (below 2^63)"
        return None
    if key == "ci":
        if value is None:  # no intervals
            return None
        if not isinstance(value, Real) or isinstance(value, bool) or not 0 < float(value) < 1:
            return "must be a level between 0 and 1, e.g. 0.95, or None for no intervals"
        return None
    raise KeyError(key)
