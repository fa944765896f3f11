"""scvarpart: exact per-gene variance partition of single-cell data with crossed random effects.

Use it like scanpy::

    import scvarpart as svp
    svp.tl.variance_partition(adata, "~ (1|patient) + (1|chemistry)", batch="chemistry",
                              signal="patient")
"""

from __future__ import annotations

import importlib

from ._version import __version__

__all__ = ["__version__", "datasets", "get", "glmm", "lmm", "pl", "pp", "tl", "varpart"]

# ``pp``, ``tl``, ``pl``, ``get``, ``lmm``, ``glmm`` and ``datasets`` pull in anndata, scanpy,
# matplotlib and numba (seconds of imports): they are imported on first use (PEP 562),
# so that ``scvarpart --help`` and ``--version`` start at once. ``svp.tl`` and
# ``from scvarpart import tl`` work as with eager imports.
_LAZY = ("datasets", "get", "glmm", "lmm", "pl", "pp", "tl", "varpart")


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
