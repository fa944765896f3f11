"""Progress bars that follow scanpy's verbosity and appear only for long steps."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from scanpy import settings

with warnings.catch_warnings():
    # tqdm.auto falls back to the text bar, with a warning, where ipywidgets is missing
    warnings.simplefilter("ignore")
    from tqdm.auto import tqdm

__all__ = ["progress_bar"]

# seconds before a bar appears: quick steps stay silent
_DELAY = 2.0


@contextmanager
def progress_bar(desc: str, show: bool | None) -> Iterator[Callable[[int, int], None]]:
    """Yield an ``update(done, total)`` callback driving a tqdm bar.

    ``show=None`` follows scanpy: bars are shown unless ``sc.settings.verbosity``
    is 0 (errors only).
    """
    if show is None:
        show = int(settings.verbosity) >= 1
    bar = tqdm(desc=desc, total=None, disable=not show, delay=_DELAY, leave=False, unit="")

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done)

    try:
        yield update
    finally:
        bar.close()
