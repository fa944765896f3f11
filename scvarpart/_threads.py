"""One BLAS thread inside the per-gene fits, so that ``n_jobs`` is the only parallelism.

The fits call BLAS on small matrices, gene after gene: a BLAS thread pool woken for each
costs more than it gains, and on a shared machine it competes with the worker processes.
"""

from __future__ import annotations

import functools

from threadpoolctl import ThreadpoolController

__all__ = ["one_blas_thread"]


@functools.cache
def _controller() -> ThreadpoolController:
    """The process's thread pools, found once.

    Scanning the loaded libraries costs milliseconds, and every batch of genes limits
    BLAS to one thread.
    """
    return ThreadpoolController()


def one_blas_thread():
    """A context in which BLAS runs single-threaded (in this process)."""
    return _controller().limit(limits=1, user_api="blas")
