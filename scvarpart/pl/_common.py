"""Shared pieces of the plots.

Reading results, colours, Axes given by the user, saving and showing as scanpy does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = [
    "RESIDUAL_COLOR",
    "axes_or_none",
    "component_colors",
    "finish",
]

RESIDUAL_COLOR = "#c8c8c8"

# scanpy's save=: a suffix ending in one of these sets the file format
_EXTENSIONS = (".svg", ".pdf", ".png")


def component_colors(components) -> dict[str, str]:
    """One colour per component, the same in every plot.

    Scanpy's categorical palettes in the model's order of the components (not the
    order they are drawn in, which depends on the data), light grey for the residual.

    Parameters
    ----------
    components
        Component names in the model's order (``"Residual"`` may be among them).

    Returns
    -------
    Component name -> colour (a hex string), ``"Residual"`` included.

    Examples
    --------
    >>> import scvarpart as svp
    >>> svp.pl.component_colors(["patient", "chemistry", "Residual"])
    {'patient': '#1f77b4', 'chemistry': '#ff7f0e', 'Residual': '#c8c8c8'}
    """
    from scanpy.plotting import palettes

    names = [str(c) for c in components if str(c) != "Residual"]
    palette = palettes.default_20 if len(names) <= 20 else palettes.default_102
    colors = {name: palette[i % len(palette)] for i, name in enumerate(names)}
    colors["Residual"] = RESIDUAL_COLOR
    return colors


def axes_or_none(ax, n: int, what: str, panels: str) -> list[Axes] | None:
    """The ``n`` Axes a multi-panel plot draws into, from ``ax=`` (None: a new figure).

    Raises a ValueError naming how many Axes are needed, and for what, when ``ax`` is
    not a sequence of exactly ``n`` Axes.
    """
    if ax is None:
        return None
    if isinstance(ax, Axes):
        axes = [ax]
    elif isinstance(ax, np.ndarray):  # the array of plt.subplots
        axes = list(ax.ravel())
    elif isinstance(ax, Sequence):
        axes = list(ax)
    else:
        axes = None
    if axes is None or len(axes) != n or not all(isinstance(a, Axes) for a in axes):
        got = "one Axes" if isinstance(ax, Axes) else f"{type(ax).__name__} {ax!r}"[:80]
        raise ValueError(
            f"{what} draws {n} panel(s) ({panels}), so ax= must be a sequence of {n} Axes, "
            f"e.g. plt.subplots(1, {n})[1]; got {got}. Leave ax= out to get a new figure."
        )
    return axes


def panel_grid(n: int, size: tuple[float, float], **subplots) -> list[Axes]:
    """A new figure of ``n`` panels of ``size`` inches, up to four a row, the rest hidden.

    ``subplots``: more arguments of ``plt.subplots`` (``sharey=True``).
    """
    cols = min(4, n)
    rows = -(-n // cols)
    _, grid = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows),
                           squeeze=False, layout="constrained", **subplots)  # fmt: skip
    for extra in grid.ravel()[n:]:
        extra.set_visible(False)
    return list(grid.ravel()[:n])


def _save(figure: Figure, name: str, save: bool | str) -> Path:
    """Write ``figure`` as scanpy does.

    Into ``sc.settings.figdir / f"{name}{suffix}{plot_suffix}.{ext}"``, the format from
    ``save``'s extension or ``sc.settings.file_format_figs``.
    """
    from scanpy import logging as logg
    from scanpy import settings

    suffix, ext = ("", None) if save is True else (str(save), None)
    for candidate in _EXTENSIONS:
        if suffix.endswith(candidate):
            suffix, ext = suffix[: -len(candidate)], candidate[1:]
            break
    folder = Path(settings.figdir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{suffix}{settings.plot_suffix}.{ext or settings.file_format_figs}"
    logg.warning(f"saving figure to file {path}")  # scanpy's level for this message
    figure.savefig(path, bbox_inches="tight")
    return path


def finish(artist, show: bool | None, save: bool | str | None = None, name: str = ""):
    """Save, show or return a figure, as scanpy does.

    Save the figure (``save=True`` or a file name suffix, into ``sc.settings.figdir``;
    ``sc.settings.autosave`` by default), show it (``sc.settings.autoshow`` by default)
    and return nothing, or return the Axes (or list of Axes) with ``show=False``.
    """
    from scanpy import settings

    save = settings.autosave if save is None else save
    show = settings.autoshow if show is None else show
    first = artist[0] if isinstance(artist, list) else artist
    figure = first.figure
    while not isinstance(figure, Figure):  # an Axes, or a SubFigure, up to the Figure
        figure = figure.figure
    if save:
        _save(figure, name, save)
    if show:
        plt.show()
    if save:
        plt.close(figure)  # as scanpy: a saved figure is done
    return None if show else artist
